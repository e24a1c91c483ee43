//! Transparent insertion, routed: the devices of the example hospital keep
//! their configuration (their address, their default router, the PACS and
//! HL7 engine at their real addresses). First, with no Ward running, the
//! edge and hub namespaces are plain routers and the devices reach the
//! servers directly (the positive control). Then Ward takes over the same
//! router addresses and the same commands with the same arguments, and no
//! change inside the device namespaces, go through the tunnels (QUIC for
//! the CT, TCP for the pump), with nothing of the devices on the LAN; a
//! SIGKILL of the edge fails closed. Needs root; skips elsewhere, fails
//! under CI=true.

use std::time::Duration;

use ward_tests::harness::TempDir;
use ward_tests::peers::{dataset, make_dicom};
use ward_tests::topology::{
    Hospital, capture, cmd_in, hl7_engine, mllp_send, routed_policy, storescp_in, storescu_in,
};

/// Packets in a capture file matching a tcpdump filter.
fn packets(h: &Hospital, pcap: &std::path::Path, filter: &str) -> usize {
    let out = cmd_in(&h.lan, "tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .expect("tcpdump -r");
    assert!(
        out.status.success(),
        "tcpdump -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn routed_insertion_with_unchanged_devices() {
    let Ok(h) = Hospital::build("tr") else {
        return;
    };
    // Before Ward: plain routing between the device segments and the servers.
    h.edge
        .run(&["ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.20"]);
    h.hub
        .run(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.10"]);
    let data = TempDir::new("tr-data");
    let study = make_dicom(&data, 128);
    let out = data.join("pacs");
    let _pacs = storescp_in(&h.srv, 104, &out, &["+uf"]);
    let _engine = hl7_engine(&h);
    let ct_config = || h.ct.exec(&["ip", "-br", "addr"]).stdout;
    let ct_routes = || h.ct.exec(&["ip", "route"]).stdout;
    let before = (ct_config(), ct_routes());

    let direct = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        direct.status.success(),
        "positive control: the CT does not reach the PACS directly: {}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let ack = mllp_send(&h, &h.pump1, "203.0.113.6", "DIRECT01");
    assert!(ack.contains("MSA|AA|DIRECT01"), "positive control: {ack:?}");

    // A routed policy naming a router address the gateway does not hold is
    // refused at start, naming the address.
    h.edit_policy(|p| routed_policy(p).replace("198.51.100.49/28", "198.51.100.60/28"));
    let (code, log) = h.edge_start_fails();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("router address 198.51.100.60/28"), "{log}");

    // Ward goes in: same router addresses, the policy's edge routed.
    h.edit_policy(routed_policy);
    let _hub = h.start_hub();
    let edge = h.start_edge("");
    let lan_pcap = h.dir.join("lan.pcap");
    let cap = capture(&h.lan, "to-edge", &lan_pcap);
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "the unchanged CT through the QUIC tunnel: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    let ack = mllp_send(&h, &h.pump1, "203.0.113.6", "ROUTED01");
    assert!(
        ack.contains("MSA|AA|ROUTED01"),
        "the unchanged pump through the TCP tunnel: {ack:?}\n{}",
        edge.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(cap);
    assert_eq!(
        (ct_config(), ct_routes()),
        before,
        "the device's configuration changed"
    );
    let files: Vec<_> = std::fs::read_dir(&out)
        .expect("pacs dir")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(files.len(), 2, "the direct and the tunneled store");
    for f in &files {
        assert!(
            dataset(&study) == dataset(&f.path()),
            "stored study differs"
        );
    }
    assert!(
        edge.log().contains("ct2-to-pacs") && edge.log().contains("pump1-to-hl7"),
        "the connections did not go through the flows:\n{}",
        edge.log()
    );
    let from_devices = packets(&h, &lan_pcap, "net 198.51.100.0/24");
    assert_eq!(from_devices, 0, "device packets on the LAN");
    let tunnel = packets(&h, &lan_pcap, "host 192.0.2.10");
    assert!(
        tunnel > 10,
        "no tunnel traffic captured: {tunnel} packets of {} in all: {}",
        packets(&h, &lan_pcap, ""),
        String::from_utf8_lossy(
            &cmd_in(&h.lan, "tcpdump")
                .args(["-nn", "-e", "-r"])
                .arg(&lan_pcap)
                .output()
                .expect("tcpdump")
                .stdout
        )
    );
    let lan = std::fs::read(&lan_pcap).expect("lan capture");
    for marker in [&b"1.2.840.10008"[..], b"CT-SCANNER-2", b"ROUTED01"] {
        assert!(
            !contains(&lan, marker),
            "cleartext {:?} on the LAN",
            String::from_utf8_lossy(marker)
        );
    }

    // From the CT, a TCP connect scan and UDP probes of the LAN and the
    // server range find its flow and nothing else.
    let tcp = ward_tests::topology::nmap_open(
        &h.ct,
        &["192.0.2.1,10,20,50,123,200", "203.0.113.1,5,6"],
        "22,80,104,135,139,443,445,2575,3389,4433,8080",
        false,
    );
    assert_eq!(tcp, ["203.0.113.5:104/tcp"], "TCP scan from the CT");
    let udp = ward_tests::topology::nmap_open(
        &h.ct,
        &["192.0.2.1,10,20,50,123,200", "203.0.113.1,5,6"],
        "53,67,69,123,161,514,4433",
        true,
    );
    assert!(
        udp.is_empty(),
        "UDP probes from the CT got answers: {udp:?}"
    );

    // The admin view says how the gateway and each device are inserted.
    let wardctl = |args: &[&str]| {
        let out = std::process::Command::new(ward_tests::harness::binary("wardctl"))
            .arg("--socket")
            .arg(h.socket("edge-01"))
            .arg("--json")
            .args(args)
            .output()
            .expect("wardctl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert_eq!(wardctl(&["status"])["insertion"], "routed");
    let ct = wardctl(&["device", "show", "ct-scanner-2"]);
    assert_eq!(ct["insertion"], "transparent", "{ct}");

    // wardd killed: the device's flow gets no answer, nothing of it on the LAN.
    let mut edge = edge;
    edge.signal("KILL");
    edge.wait_exit(Duration::from_secs(5));
    let dead_pcap = h.dir.join("lan-dead.pcap");
    let cap = capture(&h.lan, "to-edge", &dead_pcap);
    let refused = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        !refused.status.success(),
        "the CT reached the PACS with wardd killed"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    assert_eq!(
        packets(&h, &dead_pcap, "net 198.51.100.0/24"),
        0,
        "with wardd killed, device packets reached the LAN"
    );
}
