//! Re-authorization of live DICOM associations on reload, one test step per
//! kind of policy change: the target service moves, the flow names another
//! device, the flow is removed, the access flow names another client, the
//! maintenance window no longer covers now. Each step holds a real dcmtk
//! association open (`echoscu` repeating C-ECHO), changes the policy file,
//! reloads both gateways with SIGHUP, and checks the association is cut and
//! the reason audited, while the change left the rest working.

use std::path::Path;
use std::time::{Duration, Instant};

use ward_pki::Kind;
use ward_tests::harness::{TempDir, Wardd, free_port};
use ward_tests::peers::{Peer, echoes, echoscu_held, storescp};
use ward_tests::site::{Site, SiteOptions};

/// Reload `w` with SIGHUP and wait until it says the reload applied.
fn reload(w: &mut Wardd) {
    let before = w.count_log("reload applied");
    w.signal("HUP");
    let start = Instant::now();
    while w.count_log("reload applied") == before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reload not applied:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the association logging to `log` has had a C-ECHO answered.
fn answered(assoc: &mut Peer, log: &Path, what: &str) {
    let start = Instant::now();
    while echoes(log) == 0 {
        assert!(
            assoc.running() && start.elapsed() < Duration::from_secs(10),
            "{what}: no C-ECHO answered:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until the association has been cut (echoscu exits).
fn cut(assoc: &mut Peer, log: &Path, what: &str) {
    let start = Instant::now();
    while assoc.running() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: the association survived the reload:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Closed records of `flow` in a gateway's audit trail, with their reasons.
fn closed_reasons(site: &Site, gateway: &str, flow: &str) -> Vec<String> {
    let trail = std::fs::read_to_string(site.dir.join(&format!("state-{gateway}/audit.jsonl")))
        .unwrap_or_default();
    trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "flow" && r["action"] == "closed" && r["flow"] == flow)
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn edit(site: &Site, from: &str, to: &str) {
    let text = std::fs::read_to_string(&site.policy).expect("policy");
    assert!(text.contains(from), "{from:?} not in the policy");
    std::fs::write(&site.policy, text.replacen(from, to, 1)).expect("write policy");
}

#[test]
fn reload_cuts_live_associations_per_kind_of_change() {
    // 2026-11-24 is a Tuesday: the vendor's window is open.
    let window = r#"{ days = ["tue"], start = "02:00", end = "04:00" }"#;
    let mut site = Site::new(
        "reauth",
        &SiteOptions {
            window: Some(window.into()),
            ..Default::default()
        },
    );
    let vendor = site.ca.issue(Kind::Client, "vendor");
    let scratch = TempDir::new("reauth-data");
    let _pacs = storescp(site.pacs, &scratch.join("pacs"), &[]);
    let moved = std::net::SocketAddr::new(site.pacs.ip(), free_port("127.0.0.1"));
    let _pacs_moved = storescp(moved, &scratch.join("pacs-moved"), &[]);
    let _monitor = storescp(site.monitor, &scratch.join("monitor"), &[]);
    let mut hub = site.start_hub();
    let mut edge = site.start_edge("fake_now = \"2026-11-24T03:00:00Z\"");
    let reload_both = |hub: &mut Wardd, edge: &mut Wardd| {
        reload(hub);
        reload(edge);
    };
    let (key, cert, ca) = (
        vendor.key.display().to_string(),
        vendor.cert.display().to_string(),
        site.ca.ca.cert_path().display().to_string(),
    );
    let tls = ["--enable-tls", &key, &cert, "--add-cert-file", &ca];

    // 1. The service moves: the hub cuts the tunnel to the old address; a
    //    new association reaches the new one.
    let log = scratch.join("1.log");
    let mut assoc = echoscu_held(site.dicom_tcp, &log, &[]);
    answered(&mut assoc, &log, "before the move");
    edit(
        &site,
        &format!(
            "address = \"{}\"\nvia = \"hub-dc-01\"\nprotocol = \"dicom\"",
            site.pacs
        ),
        &format!("address = \"{moved}\"\nvia = \"hub-dc-01\"\nprotocol = \"dicom\""),
    );
    reload_both(&mut hub, &mut edge);
    cut(&mut assoc, &log, "service moved");
    let reasons = closed_reasons(&site, "hub-dc-01", "dicom-tcp");
    assert!(
        reasons.iter().any(|r| r.contains("target moved")),
        "{reasons:?}"
    );
    let log = scratch.join("1b.log");
    let mut after = echoscu_held(site.dicom_tcp, &log, &[]);
    answered(&mut after, &log, "to the moved service");
    drop(after);

    // 2. The flow names another device: the edge cuts the modality's association.
    let log = scratch.join("2.log");
    let mut assoc = echoscu_held(site.dicom_tcp, &log, &[]);
    answered(&mut assoc, &log, "before the device change");
    edit(
        &site,
        "name = \"dicom-tcp\"\nfrom = \"modality-1\"",
        "name = \"dicom-tcp\"\nfrom = \"monitor-1\"",
    );
    reload_both(&mut hub, &mut edge);
    cut(&mut assoc, &log, "flow names another device");
    // Whichever end re-checks first cuts it: the hub (wrong device) or the
    // edge (no flow for the modality's address).
    let mut reasons = closed_reasons(&site, "edge-01", "dicom-tcp");
    reasons.extend(closed_reasons(&site, "hub-dc-01", "dicom-tcp"));
    assert!(
        reasons.iter().any(|r| r.contains("no longer allowed")),
        "{reasons:?}"
    );

    // 3. The flow is removed: its association ends, the device's other flows stay.
    let log = scratch.join("3.log");
    let mut assoc = echoscu_held(site.dicom_quic, &log, &[]);
    answered(&mut assoc, &log, "before the flow removal");
    edit(
        &site,
        "name = \"dicom-quic\"",
        "name = \"dicom-quic-renamed\"",
    );
    reload_both(&mut hub, &mut edge);
    cut(&mut assoc, &log, "flow removed");
    let mut reasons = closed_reasons(&site, "edge-01", "dicom-quic");
    reasons.extend(closed_reasons(&site, "hub-dc-01", "dicom-quic"));
    assert!(!reasons.is_empty(), "no audited close for the removed flow");

    // 4. The access flow names another client: the vendor's session ends.
    let log = scratch.join("4.log");
    let mut assoc = echoscu_held(site.access, &log, &tls);
    answered(&mut assoc, &log, "vendor before the client change");
    edit(
        &site,
        "name = \"vendor-maintenance\"\nfrom = \"vendor\"",
        "name = \"vendor-maintenance\"\nfrom = \"clinician\"",
    );
    reload(&mut edge);
    cut(&mut assoc, &log, "flow names another client");
    let reasons = closed_reasons(&site, "edge-01", "vendor-maintenance");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("peer identity may not open this flow")),
        "{reasons:?}"
    );

    // 5. The window no longer covers now (Wednesday instead of Tuesday).
    edit(
        &site,
        "name = \"vendor-maintenance\"\nfrom = \"clinician\"",
        "name = \"vendor-maintenance\"\nfrom = \"vendor\"",
    );
    reload(&mut edge);
    let log = scratch.join("5.log");
    let mut assoc = echoscu_held(site.access, &log, &tls);
    answered(&mut assoc, &log, "vendor inside the window");
    edit(&site, "days = [\"tue\"]", "days = [\"wed\"]");
    reload(&mut edge);
    cut(&mut assoc, &log, "window no longer covers now");
    let reasons = closed_reasons(&site, "edge-01", "vendor-maintenance");
    assert!(
        reasons.iter().any(|r| r.contains("maintenance window")),
        "{reasons:?}"
    );
}
