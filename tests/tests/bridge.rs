//! Transparent insertion, bridge (bump in the wire): a device segment with
//! a CT scanner and an infusion pump behind their router, set up before any
//! gateway exists. First the devices reach the PACS and the HL7 engine
//! directly (the positive control). Then the cable is split: the devices'
//! ports move to the edge gateway, which bridges them with an uplink to the
//! same router port, and Ward takes the flows; the same commands with the
//! same arguments, no change in the device namespaces, go through the
//! tunnels (QUIC for the CT, TCP for the pump); no IPv4 frame of a device
//! reaches the router's side, lateral traffic is dropped and counted, and a
//! SIGKILL fails closed. `wardd` refuses to start while br_netfilter would
//! hand bridged frames to the IP hooks (the configuration that fails open).
//! Needs root; skips elsewhere, fails under CI=true.
//!
//! ```text
//!  ct   10.20.0.17 ─┐                         ┌ rtr seg 10.20.0.1 ─ lan0 192.0.2.1 ┐
//!  pump 10.20.0.18 ─┤ (before: rtr's ports)   │                                    ├ lan ─ hub ─ srv (PACS .5, HL7 .6)
//!                   └ edge dev0/dev1 ═ br-ward ═ up0 ┘        edge lan0 192.0.2.10 ┘
//! ```

use std::time::Duration;

use ward_tests::harness::TempDir;
use ward_tests::netns::Netns;
use ward_tests::peers::{dataset, make_dicom};
use ward_tests::segment::{POLICY, Segment};
use ward_tests::topology::{
    Bg, assert_kill_fails_closed, assert_scan_finds_only_the_pacs_and_ntp, capture, cmd_in,
    echoscu_held_in, ip, ntp_responder, storescp_in, storescu_in, wardctl,
};

fn packets(s: &Segment, pcap: &std::path::Path, filter: &str) -> usize {
    let out = cmd_in(&s.lan, "tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .expect("tcpdump -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn mllp(s: &Segment, control: &str) -> String {
    let file = s.dir.join(&format!("{control}.hl7"));
    std::fs::write(
        &file,
        format!("\x0b{}\x1c\r", ward_tests::peers::hl7_message(control)),
    )
    .expect("message");
    let out = cmd_in(&s.pump, "mllp_send")
        .args(["--port", "2575", "--file"])
        .arg(&file)
        .arg("203.0.113.6")
        .output()
        .expect("mllp_send");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bridge_insertion_with_unchanged_devices() {
    let Some(s) = Segment::build() else {
        return;
    };
    let data = TempDir::new("bridge-data");
    let study = make_dicom(&data, 128);
    let out = data.join("pacs");
    let _pacs = storescp_in(&s.srv, 104, &out, &["+uf"]);
    let script = s.dir.join("mllp_server.py");
    std::fs::write(&script, ward_tests::topology::MLLP_SERVER).expect("script");
    let _engine = Bg(cmd_in(&s.srv, "python3")
        .arg(&script)
        .args(["203.0.113.6", "2575"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3"));
    ward_tests::topology::wait_listen(&s.srv, 2575);
    let device_view = |n: &Netns| {
        (
            n.exec(&["ip", "-br", "addr"]).stdout,
            n.exec(&["ip", "route"]).stdout,
        )
    };
    let before = (device_view(&s.ct), device_view(&s.pump));

    // Positive control: straight through the router, and the LAN reaches
    // a device port (the pump's maintenance port) the same way.
    let maint = data.join("pump-maintenance");
    let _pump_port = storescp_in(&s.pump, 24105, &maint, &[]);
    assert!(
        storescu_in(&s.lan, "10.20.0.18", 24105, &study, &[])
            .status
            .success(),
        "positive control: the LAN does not reach the pump's port"
    );
    let direct = storescu_in(&s.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        direct.status.success(),
        "positive control: {}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let ack = mllp(&s, "DIRECT01");
    assert!(ack.contains("MSA|AA|DIRECT01"), "positive control: {ack:?}");

    // The cable is split and bridged. The bridge alone is transparent: the
    // same store crosses it in the clear, and the capture on the router's
    // side of the bridge sees the CT's packets (this capture's positive control).
    s.insert_bridge();
    let plain_pcap = s.dir.join("uplink-plain.pcap");
    let cap = capture(&s.rtr, "to-edge", &plain_pcap);
    let plain = storescu_in(&s.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        plain.status.success(),
        "through the plain bridge: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    assert!(
        packets(&s, &plain_pcap, "ip and net 10.20.0.0/24") > 10,
        "the capture on the router's side missed the CT's packets"
    );
    // Ward takes over; the hub goes first (its forward chain ends the
    // direct path to the servers).
    let _hub = s.start("hub-dc-01", &s.hub);
    // With br_netfilter handing bridged frames to the IP hooks, refuse.
    let on = s
        .edge
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    if on.status.success() {
        let (code, log) = s.start_fails("edge-br", &s.edge);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("bridge-nf-call-iptables = 0"), "{log}");
    }
    for t in ["iptables", "ip6tables", "arptables"] {
        let _ = s
            .edge
            .exec(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{t}=0")]);
    }
    let edge = s.start("edge-br", &s.edge);

    let uplink_pcap = s.dir.join("uplink.pcap");
    let cap = capture(&s.rtr, "to-edge", &uplink_pcap);
    let port_pcap = s.dir.join("dev0.pcap");
    let port_cap = capture(&s.edge, "dev0", &port_pcap);
    let sent = storescu_in(&s.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "the unchanged CT through the bridge and the QUIC tunnel: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
    let ack = mllp(&s, "BRIDGE01");
    assert!(
        ack.contains("MSA|AA|BRIDGE01"),
        "the unchanged pump through the TCP tunnel: {ack:?}\n{}",
        edge.log()
    );
    // What the bridge refuses, each counted against the CT.
    let nft = ward_gateway::control::nft::Nft::in_netns(s.edge.name());
    let drops = |id: &str| {
        nft.list_counters()
            .expect("counters")
            .into_iter()
            .find(|c| c.name == format!("dev_{id}"))
            .map_or(0, |c| c.packets)
    };
    let mut last = drops("ct");
    let mut rose = |what: &str| {
        let start = std::time::Instant::now();
        let mut now = drops("ct");
        while now <= last && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            now = drops("ct");
        }
        assert!(now > last, "{what}: dev_ct did not rise ({last} -> {now})");
        last = now;
    };
    assert!(
        !s.ct
            .exec(&["ping", "-c1", "-W1", "10.20.0.18"])
            .status
            .success(),
        "CT reached the pump"
    );
    rose("lateral");
    assert!(
        !s.ct
            .exec(&["nc", "-z", "-w2", "192.0.2.50", "445"])
            .status
            .success(),
        "CT reached a LAN host"
    );
    rose("direct tcp to the LAN");
    assert!(
        !s.ct
            .exec(&["ping", "-c1", "-W1", "10.20.0.1"])
            .status
            .success(),
        "CT pinged the router"
    );
    rose("icmp to the router");
    // Spoofed source address (the pump's): its ARP and IPv4 both dropped.
    ip(&s.ct, "addr add 10.20.0.18/32 dev eth0");
    let _ =
        s.ct.exec(&["ping", "-c1", "-W1", "-I", "10.20.0.18", "203.0.113.5"]);
    rose("spoofed address");
    ip(&s.ct, "addr del 10.20.0.18/32 dev eth0");
    // Spoofed MAC with the CT's own address, to its own flow.
    ip(&s.ct, "link set eth0 address 02:00:00:00:00:99");
    assert!(
        !s.ct
            .exec(&["nc", "-z", "-w2", "203.0.113.5", "104"])
            .status
            .success(),
        "the CT's flow answered a foreign MAC"
    );
    rose("spoofed MAC");
    ip(&s.ct, "link set eth0 address 02:00:00:00:00:17");
    // IPv6 (not part of any flow): dropped at the port.
    s.ct.run(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
    let _ = s.ct.exec(&["ping", "-6", "-c1", "-W1", "ff02::1%eth0"]);
    s.ct.run(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    rose("IPv6");
    assert!(
        s.ct.exec(&["nc", "-z", "-w2", "203.0.113.5", "104"])
            .status
            .success(),
        "the CT's own flow is unreachable after the spoofing checks"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    drop(port_cap);
    assert!(
        edge.log().contains("ct-to-pacs") && edge.log().contains("pump-to-hl7"),
        "the connections did not go through the flows:\n{}",
        edge.log()
    );
    // Stealth: on the CT's port, the answers came from the router's MAC;
    // the bridge's own MAC never showed, not even in an ARP request.
    assert!(
        packets(
            &s,
            &port_pcap,
            "ip and src 203.0.113.5 and ether src 02:00:00:00:01:01"
        ) > 5,
        "the PACS's answers did not carry the router's MAC"
    );
    assert_eq!(
        packets(&s, &port_pcap, "ether src 02:00:00:00:00:fe"),
        0,
        "the bridge's own MAC reached the device"
    );
    assert_eq!(
        (device_view(&s.ct), device_view(&s.pump)),
        before,
        "a device's configuration changed"
    );
    let files = std::fs::read_dir(&out).expect("pacs dir").count();
    assert_eq!(files, 3, "the direct, the plain-bridge and the Ward store");
    for f in std::fs::read_dir(&out)
        .expect("pacs dir")
        .filter_map(|e| e.ok())
    {
        assert!(
            dataset(&study) == dataset(&f.path()),
            "stored study differs"
        );
    }
    // The router's side of the bridge saw ARP, nothing IPv4 of a device.
    assert_eq!(
        packets(&s, &uplink_pcap, "ip and net 10.20.0.0/24"),
        0,
        "IPv4 from or to a device crossed the bridge"
    );
    // The vendor's inbound maintenance flow reaches the pump's port through
    // the bridge (the gateway connects it with the router's MAC; the answers
    // are diverted back to it).
    let vendor = s.certs.iter().find(|c| c.name == "vendor").expect("vendor");
    let tls = [
        "--enable-tls".to_owned(),
        vendor.key.display().to_string(),
        vendor.cert.display().to_string(),
        "--add-cert-file".to_owned(),
        s.ca.ca.cert_path().display().to_string(),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let serviced = storescu_in(&s.lan, "192.0.2.10", 24105, &study, &tls);
    assert!(
        serviced.status.success(),
        "the vendor's inbound flow to the pump: {}\n{}",
        String::from_utf8_lossy(&serviced.stderr),
        edge.log()
    );
    assert!(
        !storescu_in(&s.lan, "10.20.0.18", 24105, &study, &[])
            .status
            .success(),
        "the LAN reached the pump directly"
    );

    // The raw exception: NTP from the CT to its time server is bridged, and
    // the answer comes back; the pump has no such exception.
    let _ntp = ntp_responder(&s.lan);
    let ask = |n: &Netns| {
        String::from_utf8_lossy(
            &cmd_in(n, "sh")
                .args(["-c", "echo ask | nc -u -w2 192.0.2.123 123"])
                .output()
                .expect("nc")
                .stdout,
        )
        .into_owned()
    };
    assert!(
        ask(&s.ct).contains("time:ask"),
        "the CT's NTP exception is not bridged"
    );
    assert!(
        !ask(&s.pump).contains("time:"),
        "the pump reached NTP without an exception"
    );

    // From the CT, a TCP connect scan and UDP probes find its flow and its
    // exception only.
    assert_scan_finds_only_the_pacs_and_ntp(&s.ct);

    // wardd killed: the CT's flow gets no answer and nothing crosses.
    assert_kill_fails_closed(
        edge,
        &s.ct,
        &study,
        (&s.rtr, "to-edge"),
        &s.dir.join("uplink-dead.pcap"),
        "ip and net 10.20.0.0/24",
    );
}

/// On the bridge, monitor mode passes what enforce drops and counts it;
/// after a reload to enforce it is dropped; a quarantine cuts the CT's
/// held association and its new ones, a release restores them.
#[test]
fn bridge_monitor_mode_and_quarantine() {
    let Some(s) = Segment::build() else {
        return;
    };
    let policy = s.dir.join("policy.toml");
    std::fs::write(
        &policy,
        POLICY.replace(
            "trust_domain = \"st-mary.example\"\n",
            "trust_domain = \"st-mary.example\"\nmode = \"monitor\"\n",
        ),
    )
    .expect("policy");
    let data = TempDir::new("bridge-mq-data");
    let _pacs = storescp_in(&s.srv, 104, &data.join("pacs"), &[]);
    s.insert_bridge();
    for t in ["iptables", "ip6tables", "arptables"] {
        let _ = s
            .edge
            .exec(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{t}=0")]);
    }
    let _hub = s.start("hub-dc-01", &s.hub);
    let mut edge = s.start("edge-br", &s.edge);
    let nft = ward_gateway::control::nft::Nft::in_netns(s.edge.name());
    let drops = || {
        nft.list_counters()
            .expect("counters")
            .into_iter()
            .find(|c| c.name == "dev_ct")
            .map_or(0, |c| c.packets)
    };
    let lateral = || {
        s.ct.exec(&["ping", "-c1", "-W1", "10.20.0.18"])
            .status
            .success()
    };
    let before = drops();
    assert!(lateral(), "monitor mode dropped lateral ICMP on the bridge");
    assert!(
        drops() > before,
        "monitor mode did not count the lateral ICMP"
    );
    std::fs::write(&policy, POLICY).expect("policy");
    edge.signal("HUP");
    edge.wait_log("reload applied", Duration::from_secs(10));
    assert!(!lateral(), "enforce mode passed lateral ICMP on the bridge");

    let log = s.dir.join("echoscu.log");
    let assoc = echoscu_held_in(&s.ct, "203.0.113.5", 104, &log);
    let answered = || ward_tests::peers::echoes(&log);
    let start = std::time::Instant::now();
    while answered() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no C-ECHO through the bridge: {}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock = s.dir.join("edge-br.sock");
    let wardctl = |args: &[&str]| wardctl(&sock, args);
    assert!(
        wardctl(&["device", "quarantine", "ct", "--yes"])
            .status
            .success()
    );
    // The gateway cuts its side; the quarantine drops everything to and
    // from the CT, so the association just goes silent.
    edge.wait_log("device quarantined", Duration::from_secs(10));
    assert!(edge.log().contains("closed=1"), "{}", edge.log());
    std::thread::sleep(Duration::from_millis(500));
    let after = answered();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        answered(),
        after,
        "echoes still cross the quarantined association"
    );
    drop(assoc);
    let file = make_dicom(&data, 32);
    assert!(
        !storescu_in(&s.ct, "203.0.113.5", 104, &file, &[])
            .status
            .success(),
        "a quarantined CT stored a study"
    );
    assert!(wardctl(&["device", "release", "ct"]).status.success());
    let sent = storescu_in(&s.ct, "203.0.113.5", 104, &file, &[]);
    assert!(
        sent.status.success(),
        "released CT: {}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        edge.log()
    );
}
