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
use ward_tests::peers::{dataset, echoes, make_dicom};
use ward_tests::topology::{
    Hospital, assert_kill_fails_closed, assert_scan_finds_only_the_pacs_and_ntp, capture, cmd_in,
    echoscu_held_in, hl7_engine, mllp_send, ntp_responder, pings, routed_policy, storescp_in,
    storescu_in, tcp_connects, wardctl,
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

    // From the CT, a TCP connect scan and UDP probes find its flow and its
    // NTP exception (a time server answering on the LAN) only.
    let ntp = ntp_responder(&h.lan);
    assert_scan_finds_only_the_pacs_and_ntp(&h.ct);
    drop(ntp);

    // The admin view says how the gateway and each device are inserted.
    let sock = h.socket("edge-01");
    let wardctl_json = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = wardctl(&sock, &all);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert_eq!(wardctl_json(&["status"])["insertion"], "routed");
    let ct = wardctl_json(&["device", "show", "ct-scanner-2"]);
    assert_eq!(ct["insertion"], "transparent", "{ct}");

    // wardd killed: the device's flow gets no answer, nothing of it on the LAN.
    assert_kill_fails_closed(
        edge,
        &h.ct,
        &study,
        (&h.lan, "to-edge"),
        &h.dir.join("lan-dead.pcap"),
        "net 198.51.100.0/24",
    );
}

/// Routed insertion, the rest of the device's view: monitor mode passes and
/// counts lateral traffic, a reload to enforce drops it; lateral, spoofed
/// address, foreign MAC and IPv6 from the CT are dropped and counted; the
/// vendor's inbound maintenance flow reaches the monitor; a quarantine
/// silences the CT's intercepted association and refuses new ones, a
/// release restores them.
#[test]
fn routed_insertion_refuses_counts_and_quarantines() {
    let Ok(mut h) = Hospital::build("tr2") else {
        return;
    };
    h.edit_policy(|p| routed_policy(p).replace("mode = \"enforce\"", "mode = \"monitor\""));
    let vendor = h.client("vendor-vitalis");
    let data = TempDir::new("tr2-data");
    let _pacs = storescp_in(&h.srv, 104, &data.join("pacs"), &[]);
    let _monitor = storescp_in(&h.monitor, 24105, &data.join("monitor"), &[]);
    let _hub = h.start_hub();
    // Tuesday 03:00 in Berlin: inside the vendor's window.
    let mut edge = h.start_edge("fake_now = \"2026-11-24T02:00:00Z\"");
    let ct = "ct-scanner-2";
    let before = h.drops(ct);
    assert!(
        pings(&h.ct, "198.51.100.18"),
        "monitor mode dropped lateral ICMP"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        h.drops(ct) > before,
        "monitor mode did not count the lateral ICMP"
    );
    // The reload replaces the ruleset, and with it the counters.
    h.edit_policy(routed_policy);
    edge.signal("HUP");
    edge.wait_log("reload applied", Duration::from_secs(10));
    let mut last = h.drops(ct);
    let mut rose = |what: &str| {
        let start = std::time::Instant::now();
        let mut now = h.drops(ct);
        while now <= last && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            now = h.drops(ct);
        }
        assert!(
            now > last,
            "{what}: dev_{ct} did not rise ({last} -> {now})"
        );
        last = now;
    };
    assert!(!pings(&h.ct, "198.51.100.18"), "lateral ICMP passed");
    rose("lateral");
    assert!(
        !tcp_connects(&h.ct, "192.0.2.50", 445),
        "direct TCP to the LAN passed"
    );
    rose("direct tcp");
    h.ct.run(&["ip", "addr", "add", "198.51.100.18/32", "dev", "eth0"]);
    let _ = cmd_in(&h.ct, "sh")
        .args(["-c", "echo x | nc -u -w1 -s 198.51.100.18 192.0.2.123 123"])
        .output();
    rose("spoofed source");
    // ARP spoofing: the CT claims the pump's address to its router, the
    // gateway; the gateway's neighbour table does not learn it.
    let _ = h.ct.exec(&[
        "arping",
        "-c",
        "1",
        "-w",
        "1",
        "-s",
        "198.51.100.18",
        "-I",
        "eth0",
        "198.51.100.1",
    ]);
    rose("spoofed ARP");
    let neigh = h
        .edge
        .exec(&["ip", "neigh", "show", "198.51.100.18", "dev", "dev0"]);
    assert!(
        String::from_utf8_lossy(&neigh.stdout).trim().is_empty(),
        "the gateway learned the spoofed ARP: {}",
        String::from_utf8_lossy(&neigh.stdout)
    );
    h.ct.run(&["ip", "addr", "del", "198.51.100.18/32", "dev", "eth0"]);
    h.ct.run(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(
        !tcp_connects(&h.ct, "203.0.113.5", 104),
        "the CT's address from a foreign MAC reached its intercepted flow"
    );
    rose("foreign MAC");
    h.ct.run(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:02"]);
    h.ct.run(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
    let _ = h.ct.exec(&["ping", "-6", "-c1", "-W1", "ff02::1%eth0"]);
    h.ct.run(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    rose("IPv6");
    assert!(
        tcp_connects(&h.ct, "203.0.113.5", 104),
        "the CT's intercepted flow is unreachable after the checks"
    );

    // The vendor's inbound maintenance flow, unchanged by the insertion.
    let file = make_dicom(&data, 32);
    let tls = [
        "--enable-tls".to_owned(),
        vendor.key.display().to_string(),
        vendor.cert.display().to_string(),
        "--add-cert-file".to_owned(),
        h.ca.ca.cert_path().display().to_string(),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let serviced = storescu_in(&h.lan, "192.0.2.10", 24105, &file, &tls);
    assert!(
        serviced.status.success(),
        "vendor maintenance through a routed gateway: {}\n{}",
        String::from_utf8_lossy(&serviced.stderr),
        edge.log()
    );

    // Quarantine: the CT's intercepted association goes silent.
    let log = h.dir.join("echoscu.log");
    let assoc = echoscu_held_in(&h.ct, "203.0.113.5", 104, &log);
    let start = std::time::Instant::now();
    while echoes(&log) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no C-ECHO intercepted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock = h.socket("edge-01");
    let wardctl = |args: &[&str]| wardctl(&sock, args);
    assert!(
        wardctl(&["device", "quarantine", ct, "--yes"])
            .status
            .success()
    );
    edge.wait_log("device quarantined", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let after = echoes(&log);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        echoes(&log),
        after,
        "echoes still cross the quarantined association"
    );
    drop(assoc);
    assert!(
        !storescu_in(&h.ct, "203.0.113.5", 104, &file, &[])
            .status
            .success(),
        "a quarantined CT stored a study"
    );
    assert!(wardctl(&["device", "release", ct]).status.success());
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, &file, &[]);
    assert!(
        sent.status.success(),
        "released CT: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
}
