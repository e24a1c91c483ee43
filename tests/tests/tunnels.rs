//! The data path on loopback with real peers: DICOM and HL7 through an edge
//! and a hub `wardd`, over TCP and QUIC tunnels, native TLS both ways.

use std::time::Duration;

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

/// storescp speaking DICOM TLS itself, requiring a client certificate from
/// Ward's CA (the PACS vendor's server certificate, from the vendor's CA).
fn tls_pacs(site: &Site, out: &std::path::Path) -> ward_tests::peers::Peer {
    let pki = &site.pacs_pki;
    let key = pki.join("server.key");
    let cert = pki.join("server.crt");
    let ward_ca = site.ca.ca.cert_path();
    storescp(
        site.pacs_tls,
        out,
        &[
            "--enable-tls",
            key.to_str().expect("utf8"),
            cert.to_str().expect("utf8"),
            "--require-peer-cert",
            "--add-cert-file",
            ward_ca.to_str().expect("utf8"),
        ],
    )
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
    let _pacs = tls_pacs(&site, &out);
    let sent = storescu(site.dicom_native, &file, &[]);
    assert!(
        sent.status.success(),
        "storescu failed: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    assert!(dataset(&file) == dataset(&stored_file(&out)));
}

/// The data-centre layout: modality → edge → tunnel → hub → DICOM TLS PACS.
/// The hub's leg is TLS, the PACS verified by its vendor's CA and name and
/// the hub presenting its gateway certificate, which the PACS requires.
#[test]
fn dicom_through_hub_to_tls_pacs() {
    let site = Site::new("hub-tls", &SiteOptions::default());
    let hub = site.start_hub();
    let edge = site.start_edge("");
    let scratch = TempDir::new("hub-tls-data");
    let file = make_dicom(&scratch, 128);
    let out = scratch.join("received");
    let _pacs = tls_pacs(&site, &out);
    let sent = storescu(site.dicom_hub_tls, &file, &[]);
    assert!(
        sent.status.success(),
        "storescu failed: {}\n{}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log(),
        hub.log()
    );
    assert!(dataset(&file) == dataset(&stored_file(&out)));
}

/// The service CA is watched: a PACS CA file that does not sign the PACS's
/// certificate fails the association (the hub refuses, the edge audits it);
/// the renewed CA written at the same path is used within the watch
/// interval, with no reload by hand.
#[test]
fn renewed_service_ca_is_picked_up() {
    let site = Site::new("hub-tls-ca", &SiteOptions::default());
    let ca_file = site.pacs_pki.join("ca.crt");
    let right = std::fs::read(&ca_file).expect("pacs ca");
    // Another CA's certificate at the path: valid PEM, wrong issuer.
    std::fs::copy(site.ca.ca.cert_path(), &ca_file).expect("swap ca");
    let mut hub = site.start_hub();
    let _edge = site.start_edge("");
    let scratch = TempDir::new("hub-tls-ca-data");
    let file = make_dicom(&scratch, 64);
    let out = scratch.join("received");
    let _pacs = tls_pacs(&site, &out);
    let refused = storescu(site.dicom_hub_tls, &file, &[]);
    assert!(
        !refused.status.success(),
        "association passed an unverified PACS"
    );
    hub.wait_log("UnknownIssuer", Duration::from_secs(5));
    std::fs::write(&ca_file, right).expect("renew ca");
    hub.wait_log("tls-files", Duration::from_secs(10));
    let sent = storescu(site.dicom_hub_tls, &file, &[]);
    assert!(
        sent.status.success(),
        "storescu failed after the CA renewal: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        hub.log()
    );
    assert!(dataset(&file) == dataset(&stored_file(&out)));
    // The CA file gone: the reload it causes is rejected, naming the key and
    // the path, and the PACS stays reachable with the CA in force.
    std::fs::remove_file(&ca_file).expect("remove ca");
    hub.wait_log("reload rejected", Duration::from_secs(10));
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload rejected"))
        .expect("rejection line");
    assert!(
        line.contains("services.pacs-tls-hub.tls.ca")
            && line.contains(&ca_file.display().to_string()),
        "{line}"
    );
    let again = storescu(site.dicom_hub_tls, &file, &[]);
    assert!(
        again.status.success(),
        "the CA in force was dropped: {}",
        hub.log()
    );
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

/// C-MOVE through Ward both ways: a workstation (movescu, cleartext, behind
/// the edge) asks Orthanc (DICOM TLS, client certificates required, behind
/// the hub) for a study; Orthanc opens the return association over TLS to
/// the return flow's listener on the hub (its vendor certificate checked
/// against the service's CA and name), the hub tunnels it to the edge, the
/// edge connects the workstation's port, and the image arrives. The study
/// got into Orthanc the same way: storescu through edge and hub.
#[test]
fn cmove_from_orthanc_through_hub_and_edge() {
    let ws_port = ward_tests::harness::free_port("127.0.0.1");
    let return_port = ward_tests::harness::free_port("127.0.0.1");
    let extra = format!(
        "[[flows]]\nname = \"pacs-return\"\nfrom = \"pacs-tls-hub\"\nto = \"modality-1\"\nport = {ws_port}\nlisten = \"127.0.0.1:{return_port}\"\n"
    );
    let site = Site::new(
        "cmove",
        &SiteOptions {
            extra_policy: extra,
            ..Default::default()
        },
    );
    let hub = site.start_hub();
    let edge = site.start_edge("");
    let scratch = TempDir::new("cmove-data");
    let pki = &site.pacs_pki;
    let _pacs = peers::orthanc(&peers::OrthancSetup {
        dir: &scratch.join("orthanc"),
        port: site.pacs_tls.port(),
        cert: &pki.join("server.crt"),
        key: &pki.join("server.key"),
        trusted: &site.ca.ca.cert_path(),
        modalities: &[("WS", [127, 0, 0, 1].into(), return_port)],
    });
    let file = make_dicom(&scratch, 64);
    let logs = || {
        format!(
            "edge:\n{}\nhub:\n{}\northanc:\n{}",
            edge.log(),
            hub.log(),
            std::fs::read_to_string(scratch.join("orthanc/orthanc.log")).unwrap_or_default()
        )
    };
    let stored = storescu(site.dicom_hub_tls, &file, &["-aec", "ORTHANC"]);
    assert!(
        stored.status.success(),
        "storescu to Orthanc failed: {}\n{}",
        String::from_utf8_lossy(&stored.stderr),
        logs()
    );
    let study = peers::attribute(&file, "0020,000d");
    let out = scratch.join("retrieved");
    let moved = peers::movescu(site.dicom_hub_tls, "ORTHANC", "WS", ws_port, &study, &out);
    assert!(
        moved.status.success(),
        "movescu failed: {}{}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr),
        logs()
    );
    let got = stored_file(&out);
    assert_eq!(
        peers::attribute(&got, "0008,0018"),
        peers::attribute(&file, "0008,0018"),
        "another instance arrived"
    );
    assert!(
        dataset(&file) == dataset(&got),
        "the image changed on the way"
    );
    assert!(
        hub.log().contains("pacs-return"),
        "the return association did not use the return flow:\n{}",
        logs()
    );
}
