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
