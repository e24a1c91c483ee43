//! End to end in network namespaces: the example hospital policy applied by
//! real `wardd` processes with real nftables, real DICOM and HL7 peers.
//! Needs root; skips elsewhere, fails under CI=true.

use std::time::Duration;

use ward_tests::harness::TempDir;
use ward_tests::peers::{dataset, echoes, make_dicom, stored_file};
use ward_tests::topology::{
    Bg, Hospital, capture, cmd_in, hl7_engine, mllp_send, pings, storescp_in, storescu_in,
    tcp_connects,
};

macro_rules! hospital {
    ($tag:expr) => {
        match Hospital::build($tag) {
            Ok(h) => h,
            Err(_) => return,
        }
    };
}

/// A long DICOM association: echoscu repeating C-ECHO, its log in `log`.
fn association(h: &Hospital, log: &std::path::Path) -> Bg {
    let file = std::fs::File::create(log).expect("log");
    Bg(cmd_in(&h.ct, ward_tests::peers::dcmtk("echoscu"))
        .args([
            "-v",
            "-aec",
            "PACS",
            "-aet",
            "CT-SCANNER-2",
            "--repeat",
            "100000000",
            "-td",
            "2",
            "198.51.100.1",
            "104",
        ])
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("echoscu"))
}

/// The device's drop counter once it exceeds `last` (packets may still be
/// in flight through the veth when the sender returns), or after 2 s.
fn drops_above(h: &Hospital, device: &str, last: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let now = h.drops(device);
        if now > last || start.elapsed() > Duration::from_secs(2) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// a, b, h: a DICOM study from the CT over QUIC, then over TCP (after a
/// reload switches the flow's transport), and HL7 from a pump, arrive intact;
/// the LAN capture holds no cleartext DICOM or HL7, while the capture on the
/// device port (the positive control) does.
#[test]
fn dicom_and_hl7_through_tunnels_nothing_cleartext_on_lan() {
    let h = hospital!("e2e");
    let _hub = h.start_hub();
    let mut edge = h.start_edge("");
    let data = TempDir::new("e2e-data");
    let study = make_dicom(&data, 256);
    let out = data.join("pacs");
    let _pacs = storescp_in(&h.srv, 104, &out, &["+uf"]);
    let _engine = hl7_engine(&h);
    let lan_pcap = h.dir.join("lan.pcap");
    let dev_pcap = h.dir.join("dev0.pcap");
    let lan_cap = capture(&h.lan, "br0", &lan_pcap);
    let dev_cap = capture(&h.edge, "dev0", &dev_pcap);

    let sent = storescu_in(&h.ct, "198.51.100.1", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "storescu over QUIC: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    let ack = mllp_send(&h, &h.pump1, "198.51.100.17", "PUMP0001");
    assert!(ack.contains("MSA|AA|PUMP0001"), "no HL7 ACK: {ack:?}");

    h.edit_policy(|p| p.replace("transport = \"quic\"", "transport = \"tcp\""));
    edge.signal("HUP");
    edge.wait_log("reload applied", Duration::from_secs(10));
    let sent = storescu_in(&h.ct, "198.51.100.1", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "storescu over TCP: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(lan_cap);
    drop(dev_cap);

    let files: Vec<_> = std::fs::read_dir(&out)
        .expect("pacs dir")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(files.len(), 2, "two stores expected");
    for f in files {
        assert!(
            dataset(&study) == dataset(&f.path()),
            "stored study differs"
        );
    }
    let lan = std::fs::read(&lan_pcap).expect("lan capture");
    let dev = std::fs::read(&dev_pcap).expect("device capture");
    assert!(
        lan.len() > 200_000,
        "the LAN capture saw the transfers ({} bytes)",
        lan.len()
    );
    // Markers long enough that ciphertext cannot contain them by chance
    // (a 3-byte string turns up in ~5% of 750 kB captures).
    for marker in [
        &b"1.2.840.10008"[..],
        b"CT-SCANNER-2",
        b"MSH|^~\\&|PUMP",
        b"PUMP0001",
    ] {
        assert!(
            !contains(&lan, marker),
            "cleartext {:?} on the LAN",
            String::from_utf8_lossy(marker)
        );
    }
    assert!(
        contains(&dev, b"1.2.840.10008"),
        "positive control: the device port carries cleartext DICOM"
    );
}

/// c: direct (TCP, UDP, ICMP), lateral, a foreign gateway port, spoofed
/// source, and the right address from the wrong MAC are all dropped, and the
/// device's drop counter rises with each.
#[test]
fn blocked_traffic_is_dropped_and_counted() {
    let h = hospital!("block");
    let _hub = h.start_hub();
    let _edge = h.start_edge("");
    let ct = "ct-scanner-2";
    let mut last = h.drops(ct);
    let mut rose = |what: &str| {
        let now = drops_above(&h, ct, last);
        assert!(
            now > last,
            "{what}: counter dev_{ct} did not rise ({last} -> {now})"
        );
        last = now;
    };
    assert!(
        !tcp_connects(&h.ct, "192.0.2.50", 445),
        "direct TCP to the LAN passed"
    );
    rose("direct tcp");
    let _ = cmd_in(&h.ct, "sh")
        .args(["-c", "echo x | nc -u -w1 192.0.2.50 514"])
        .output();
    rose("direct udp");
    assert!(!pings(&h.ct, "192.0.2.50"), "direct ICMP passed");
    rose("direct icmp");
    assert!(
        !pings(&h.ct, "198.51.100.18"),
        "lateral ICMP to the pump passed"
    );
    rose("lateral");
    assert!(
        !tcp_connects(&h.ct, "198.51.100.1", 22),
        "a gateway port outside the CT's flows answered"
    );
    rose("gateway port");
    assert!(
        !tcp_connects(&h.ct, "198.51.100.17", 2575),
        "the pump's listener answered the CT"
    );
    rose("another device's listener");
    // Spoofing: the CT sends NTP (allowed for the pump) with the pump's address.
    h.ct.run(&["ip", "addr", "add", "198.51.100.18/32", "dev", "eth0"]);
    let _ = cmd_in(&h.ct, "sh")
        .args(["-c", "echo x | nc -u -w1 -s 198.51.100.18 192.0.2.123 123"])
        .output();
    rose("spoofed source");
    h.ct.run(&["ip", "addr", "del", "198.51.100.18/32", "dev", "eth0"]);
    // The right address from the wrong MAC, to the CT's own listener.
    h.ct.run(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(
        !tcp_connects(&h.ct, "198.51.100.1", 104),
        "the CT's address from a foreign MAC reached its listener"
    );
    rose("wrong MAC");
    h.ct.run(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:02"]);
    // Sanity: the listener is reachable with the right MAC (wardd answers).
    assert!(
        tcp_connects(&h.ct, "198.51.100.1", 104),
        "the CT's own listener is unreachable"
    );
}

/// d: in monitor mode the same traffic passes and is counted as would-drop.
#[test]
fn monitor_mode_passes_and_counts() {
    let h = hospital!("monitor");
    h.edit_policy(|p| p.replace("mode = \"enforce\"", "mode = \"monitor\""));
    let _hub = h.start_hub();
    let _edge = h.start_edge("");
    // LAN services for the direct attempts to reach.
    let _tcp = Bg(cmd_in(&h.lan, "nc")
        .args(["-l", "-k", "192.0.2.50", "8080"])
        .spawn()
        .expect("nc"));
    let udp_log = h.dir.join("udp.txt");
    let _udp = Bg(cmd_in(&h.lan, "nc")
        .args(["-u", "-l", "192.0.2.50", "514"])
        .stdout(std::fs::File::create(&udp_log).expect("udp log"))
        .spawn()
        .expect("nc -u"));
    ward_tests::topology::wait_listen(&h.lan, 8080);
    let mut last = h.drops("ct-scanner-2");
    let mut counted = |what: &str| {
        let now = drops_above(&h, "ct-scanner-2", last);
        assert!(
            now > last,
            "{what} passed but was not counted as would-drop ({last} -> {now})"
        );
        last = now;
    };
    assert!(
        tcp_connects(&h.ct, "192.0.2.50", 8080),
        "monitor mode dropped direct TCP"
    );
    counted("direct tcp");
    let _ = cmd_in(&h.ct, "sh")
        .args(["-c", "echo would-drop | nc -u -w1 192.0.2.50 514"])
        .output();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read_to_string(&udp_log)
            .unwrap_or_default()
            .contains("would-drop"),
        "monitor mode dropped direct UDP"
    );
    counted("direct udp");
    assert!(
        pings(&h.ct, "192.0.2.50"),
        "monitor mode dropped direct ICMP"
    );
    counted("direct icmp");
    assert!(
        pings(&h.ct, "198.51.100.18"),
        "monitor mode dropped lateral ICMP"
    );
    counted("lateral");
    // A spoofed source cannot get answers back (they route to the real
    // owner), so check that the datagram arrives.
    let spoof_log = h.dir.join("spoof.txt");
    let _spoof = Bg(cmd_in(&h.lan, "nc")
        .args(["-u", "-l", "192.0.2.50", "515"])
        .stdout(std::fs::File::create(&spoof_log).expect("spoof log"))
        .spawn()
        .expect("nc -u"));
    std::thread::sleep(Duration::from_millis(300));
    h.ct.run(&["ip", "addr", "add", "198.51.100.18/32", "dev", "eth0"]);
    let _ = cmd_in(&h.ct, "sh")
        .args([
            "-c",
            "echo spoofed | nc -u -w1 -s 198.51.100.18 192.0.2.50 515",
        ])
        .output();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read_to_string(&spoof_log)
            .unwrap_or_default()
            .contains("spoofed"),
        "monitor mode dropped a spoofed source"
    );
    counted("spoofed source");
    let log = h
        .edge
        .exec(&["nft", "list", "chain", "inet", "ward", "drop_ct-scanner-2"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("accept"));
}

/// e: quarantine cuts an established DICOM association and refuses new
/// ones; release restores them.
#[test]
fn quarantine_cuts_and_release_restores() {
    let h = hospital!("quar");
    let _hub = h.start_hub();
    let mut edge = h.start_edge("");
    let data = TempDir::new("quar-data");
    let _pacs = storescp_in(&h.srv, 104, &data.join("pacs"), &[]);
    let log = h.dir.join("echoscu.log");
    let _assoc = association(&h, &log);
    std::thread::sleep(Duration::from_secs(1));
    let a = echoes(&log);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        echoes(&log) > a && a > 0,
        "the association does not carry echoes before the quarantine"
    );

    h.edit_policy(|p| p.replace("quarantine = []", "quarantine = [\"ct-scanner-2\"]"));
    edge.signal("HUP");
    edge.wait_log("closed=1", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let cut = echoes(&log);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        echoes(&log),
        cut,
        "echoes still cross the quarantined association"
    );
    let file = make_dicom(&data, 32);
    assert!(
        !storescu_in(&h.ct, "198.51.100.1", 104, &file, &[])
            .status
            .success(),
        "a new association passed the quarantine"
    );

    h.edit_policy(|p| p);
    edge.signal("HUP");
    edge.wait_log("closed=0", Duration::from_secs(10));
    let sent = storescu_in(&h.ct, "198.51.100.1", 104, &file, &[]);
    assert!(
        sent.status.success(),
        "release did not restore DICOM: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
}

/// f: SIGKILL leaves the ruleset: the CT still cannot reach the LAN; after
/// a restart the tunnels work again.
#[test]
fn killed_wardd_fails_closed() {
    let h = hospital!("kill");
    let _hub = h.start_hub();
    let edge = h.start_edge("");
    edge.signal("KILL");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !pings(&h.ct, "192.0.2.50"),
        "the CT reached the LAN after wardd died"
    );
    assert!(
        !tcp_connects(&h.ct, "192.0.2.50", 445),
        "the CT reached the LAN after wardd died"
    );
    let table = h.edge.exec(&["nft", "list", "table", "inet", "ward"]);
    assert!(table.status.success(), "the ruleset vanished with wardd");
    drop(edge);
    let _edge = h.start_edge("");
    let data = TempDir::new("kill-data");
    let _pacs = storescp_in(&h.srv, 104, &data.join("pacs"), &[]);
    let file = make_dicom(&data, 32);
    let sent = storescu_in(&h.ct, "198.51.100.1", 104, &file, &[]);
    assert!(
        sent.status.success(),
        "tunnels did not come back after the restart: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(dataset(&file) == dataset(&stored_file(&data.join("pacs"))));
}

/// g: a bad policy on reload keeps the old ruleset and the running tunnel,
/// and the error names file, line and key.
#[test]
fn bad_reload_keeps_ruleset_and_tunnels() {
    let h = hospital!("badreload");
    let _hub = h.start_hub();
    let mut edge = h.start_edge("");
    let data = TempDir::new("badreload-data");
    let _pacs = storescp_in(&h.srv, 104, &data.join("pacs"), &[]);
    let echo_log = h.dir.join("echoscu.log");
    let _assoc = association(&h, &echo_log);
    std::thread::sleep(Duration::from_millis(1000));
    let before = h.edge.run(&["nft", "list", "table", "inet", "ward"]);
    let text = std::fs::read_to_string(ward_tests::topology::EXAMPLE).expect("example");
    let broken = text.replace("interface = \"dev1\"", "interface = \"dev7\"");
    std::fs::write(&h.policy, &broken).expect("write");
    edge.signal("HUP");
    edge.wait_log("reload rejected", Duration::from_secs(10));
    let line = broken[..broken.find("interface = \"dev7\"").expect("edit")]
        .matches('\n')
        .count()
        + 1;
    let log = edge.log();
    let rejected = log
        .lines()
        .find(|l| l.contains("reload rejected"))
        .expect("logged");
    assert!(
        rejected.contains(&format!("policy.toml:{line}:"))
            && rejected.contains("devices.pump-icu-01.interface"),
        "{rejected}"
    );
    let a = echoes(&echo_log);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        echoes(&echo_log) > a && a > 0,
        "the running association stopped on a rejected reload"
    );
    let after = h.edge.run(&["nft", "list", "table", "inet", "ward"]);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("packets"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "the ruleset changed on a rejected reload"
    );
}

/// i: the vendor reaches the monitor's port through the TLS listener inside
/// its window (injected clock), not outside; a clinician identity is refused.
#[test]
fn inbound_maintenance_window() {
    let mut h = hospital!("maint");
    let vendor = h.client("vendor-vitalis");
    let clinician = h.client("clinician");
    let _hub = h.start_hub();
    let data = TempDir::new("maint-data");
    let _mon = storescp_in(&h.monitor, 24105, &data.join("monitor"), &[]);
    let file = make_dicom(&data, 32);
    let tls = |c: &ward_pki::Issued| {
        vec![
            "--enable-tls".to_owned(),
            c.key.display().to_string(),
            c.cert.display().to_string(),
            "--add-cert-file".to_owned(),
            h.ca.ca.cert_path().display().to_string(),
        ]
    };
    let send = |c: &ward_pki::Issued| {
        let args = tls(c);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        storescu_in(&h.lan, "192.0.2.10", 24105, &file, &args)
    };
    // Tuesday 03:00 in Berlin (02:00 UTC): inside the window.
    let mut edge = h.start_edge("fake_now = \"2026-11-24T02:00:00Z\"");
    let ok = send(&vendor);
    assert!(
        ok.status.success(),
        "vendor inside the window refused: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        edge.log()
    );
    assert!(!send(&clinician).status.success(), "clinician got through");
    edge.wait_log(
        "peer identity may not open this flow",
        Duration::from_secs(5),
    );
    assert!(
        !storescu_in(&h.lan, "198.51.100.50", 24105, &file, &[])
            .status
            .success(),
        "the LAN reached the monitor directly"
    );
    drop(edge);
    // Tuesday 06:00 in Berlin: outside.
    let mut edge = h.start_edge("fake_now = \"2026-11-24T05:00:00Z\"");
    assert!(
        !send(&vendor).status.success(),
        "vendor outside the window got through"
    );
    edge.wait_log(
        "outside the flow's maintenance window",
        Duration::from_secs(5),
    );
}
