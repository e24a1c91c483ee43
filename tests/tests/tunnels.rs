//! The data path on loopback with real peers: DICOM and HL7 through an edge
//! and a hub `wardd`, over TCP and QUIC tunnels, native TLS both ways.

use ward_tests::harness::TempDir;
use ward_tests::peers::{self, dataset, make_dicom, stored_file, storescp, storescu};
use ward_tests::site::{Site, SiteOptions};

fn dicom_through(listen_of: impl Fn(&Site) -> std::net::SocketAddr, tag: &str) {
    let site = Site::new(tag, &SiteOptions::default());
    let _hub = site.start_hub();
    let edge = site.start_edge("");
    let scratch = TempDir::new(&format!("{tag}-data"));
    let file = make_dicom(&scratch, 512);
    let out = scratch.join("received");
    let _pacs = storescp(site.pacs, &out, &[]);
    let sent = storescu(listen_of(&site), &file, &[]);
    assert!(
        sent.status.success(),
        "storescu failed: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    let received = stored_file(&out);
    let (a, b) = (dataset(&file), dataset(&received));
    assert!(a.len() > 700_000, "test image is {} bytes", a.len());
    assert!(
        a == b,
        "dataset differs after the tunnel ({} vs {} bytes)",
        a.len(),
        b.len()
    );
}

/// storescu → edge (plain → tunnel over TLS/TCP) → hub → storescp: the stored
/// dataset is byte-identical.
#[test]
fn dicom_over_tcp_tunnel() {
    dicom_through(|s| s.dicom_tcp, "dicom-tcp");
}

/// The same over a QUIC tunnel.
#[test]
fn dicom_over_quic_tunnel() {
    dicom_through(|s| s.dicom_quic, "dicom-quic");
}

/// mllp_send → edge → hub → an MLLP receiver; the ACK comes back.
#[test]
fn hl7_mllp_ack() {
    let site = Site::new("hl7", &SiteOptions::default());
    let _hub = site.start_hub();
    let _edge = site.start_edge("");
    let _engine = peers::mllp_server(&site.dir, site.hl7);
    let out = peers::mllp_send(&site.dir, site.hl7_listen, &peers::hl7_message("MSG00042"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mllp_send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("MSA|AA|MSG00042"),
        "no ACK for MSG00042 came back: {stdout:?}"
    );
}

/// A cleartext storescu through the plain → tls listener to a storescp that
/// speaks TLS itself and requires Ward's client certificate.
#[test]
fn dicom_plain_to_native_tls() {
    let site = Site::new("native-tls", &SiteOptions::default());
    let edge = site.start_edge("");
    let scratch = TempDir::new("native-tls-data");
    let file = make_dicom(&scratch, 128);
    let out = scratch.join("received");
    let pki = &site.pacs_pki;
    let key = pki.join("server.key");
    let cert = pki.join("server.crt");
    let ward_ca = site.ca.ca.cert_path();
    let _pacs = storescp(
        site.pacs_tls,
        &out,
        &[
            "--enable-tls",
            key.to_str().expect("utf8"),
            cert.to_str().expect("utf8"),
            "--require-peer-cert",
            "--add-cert-file",
            ward_ca.to_str().expect("utf8"),
        ],
    );
    let sent = storescu(site.dicom_native, &file, &[]);
    assert!(
        sent.status.success(),
        "storescu failed: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    assert!(dataset(&file) == dataset(&stored_file(&out)));
}

/// storescu --enable-tls with the vendor's client certificate into the
/// tls → plain listener in front of the monitor's cleartext storescp.
#[test]
fn dicom_tls_client_to_plain_device() {
    let mut site = Site::new("tls-to-plain", &SiteOptions::default());
    let vendor = site.ca.issue(ward_pki::Kind::Client, "vendor");
    let edge = site.start_edge("");
    let scratch = TempDir::new("tls-to-plain-data");
    let file = make_dicom(&scratch, 128);
    let out = scratch.join("received");
    let _monitor = storescp(site.monitor, &out, &[]);
    let sent = storescu(
        site.access,
        &file,
        &[
            "--enable-tls",
            vendor.key.to_str().expect("utf8"),
            vendor.cert.to_str().expect("utf8"),
            "--add-cert-file",
            site.ca.ca.cert_path().to_str().expect("utf8"),
        ],
    );
    assert!(
        sent.status.success(),
        "storescu +tls failed: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    assert!(dataset(&file) == dataset(&stored_file(&out)));
}
