//! Certificates as third-party TLS clients see them: a gateway certificate
//! with `--ip`/`--dns` names passes Python's default TLS checks at the
//! access listener, one without them does not.

use std::process::Command;
use std::time::Duration;

use ward_pki::{Kind, Names};
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions};

/// Python's `ssl` with its defaults (CA verification and name check) as the
/// vendor's station: connect to `host:port` by address, echo five bytes.
fn python_client(site: &Site, vendor: &ward_pki::Issued, host: &str, port: u16) -> (bool, String) {
    let script = r#"
import socket, ssl, sys
ca, cert, key, host, port = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection((host, int(port)), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(b"hello")
        print(s.recv(5).decode())
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(site.ca.ca.cert_path())
        .arg(&vendor.cert)
        .arg(&vendor.key)
        .arg(host)
        .arg(port.to_string())
        .output()
        .expect("python3");
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "hello",
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Without an IP name the default checks refuse the gateway ("IP address
/// mismatch"); after `ca issue gateway --ip` (picked up by the certificate
/// file watch, no restart) the same client gets through.
#[test]
fn standard_client_accepts_a_gateway_certificate_with_ip_names() {
    let mut site = Site::new("pki-names", &SiteOptions::default());
    echo_server(site.monitor);
    let mut edge = site.start_edge("");
    let vendor = site.ca.issue(Kind::Client, "vendor");
    let host = site.access.ip().to_string();

    let (ok, out) = python_client(&site, &vendor, &host, site.access.port());
    assert!(
        !ok,
        "a certificate without names passed the name check: {out}"
    );
    assert!(out.contains("IP address mismatch"), "{out}");

    let named = site.ca.issue_with_names(
        Kind::Gateway,
        "edge-01",
        &Names {
            dns: vec!["edge-01.test.example".into()],
            ip: vec![site.access.ip()],
        },
    );
    std::fs::copy(&named.key, &site.edge_cert.key).expect("install key");
    std::fs::copy(&named.cert, &site.edge_cert.cert).expect("install certificate");
    edge.wait_log("certificates and CRL reloaded", Duration::from_secs(10));

    let (ok, out) = python_client(&site, &vendor, &host, site.access.port());
    assert!(
        ok,
        "Python's default TLS checks refused the named certificate: {out}"
    );
}

/// pynetdicom as the vendor's DICOM TLS client, with Python's default checks
/// (CA and name): a C-ECHO through the access listener to the monitor's
/// storescp succeeds against a gateway certificate issued with `--ip`.
#[test]
fn pynetdicom_tls_client_through_the_access_listener() {
    let mut site = Site::new("pki-pynetdicom", &SiteOptions::default());
    let named = site.ca.issue_with_names(
        Kind::Gateway,
        "edge-01",
        &Names {
            dns: vec![],
            ip: vec![site.access.ip()],
        },
    );
    std::fs::copy(&named.key, &site.edge_cert.key).expect("install key");
    std::fs::copy(&named.cert, &site.edge_cert.cert).expect("install certificate");
    let vendor = site.ca.issue(Kind::Client, "vendor");
    let scratch = ward_tests::harness::TempDir::new("pki-pynetdicom-data");
    let _monitor = ward_tests::peers::storescp(site.monitor, &scratch.join("rx"), &[]);
    let edge = site.start_edge("");
    let script = r#"
import ssl, sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ca, cert, key, host, port = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ae = AE(ae_title="VENDOR")
ae.add_requested_context(Verification)
assoc = ae.associate(host, int(port), ae_title="MONITOR", tls_args=(ctx, host))
if not assoc.is_established:
    sys.exit("association not established")
status = assoc.send_c_echo()
assoc.release()
print("C-ECHO status 0x%04x" % status.Status)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(site.ca.ca.cert_path())
        .arg(&vendor.cert)
        .arg(&vendor.key)
        .arg(site.access.ip().to_string())
        .arg(site.access.port().to_string())
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("C-ECHO status 0x0000"),
        "pynetdicom over TLS failed: {text}\n{}",
        edge.log()
    );
}
