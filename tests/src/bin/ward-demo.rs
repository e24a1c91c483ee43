//! The Ward demo: the example hospital in network namespaces, protected by two
//! real `wardd` gateways. Run as root through `tests/demo.sh`.

use std::time::Duration;

use ward_tests::harness::TempDir;
use ward_tests::peers::{dataset, make_dicom, stored_file};
use ward_tests::topology::{
    Hospital, capture, hl7_engine, mllp_send, pings, storescp_in, storescu_in, tcp_connects,
};

fn step(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

fn check(ok: bool, what: &str, failures: &mut u32) {
    if ok {
        println!("    \x1b[32mPASS\x1b[0m {what}");
    } else {
        println!("    \x1b[31mFAIL\x1b[0m {what}");
        *failures += 1;
    }
}

fn log_lines(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(|l| {
            l.split_once("  ")
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_owned()
        })
        .collect()
}

fn main() {
    let mut failures = 0;
    step(
        "1. build the hospital: CT scanner, two infusion pumps, a patient monitor behind edge-01; PACS and HL7 engine behind hub-dc-01",
    );
    let h = match Hospital::build("demo") {
        Ok(h) => h,
        Err(skip) => {
            eprintln!(
                "demo: cannot create network namespaces ({}); run as root",
                skip.0
            );
            std::process::exit(1);
        }
    };
    println!(
        "    namespaces: {} {} {} {} {} {} {} {}",
        h.ct.name(),
        h.pump1.name(),
        h.pump2.name(),
        h.monitor.name(),
        h.edge.name(),
        h.lan.name(),
        h.hub.name(),
        h.srv.name()
    );
    println!(
        "    site CA for st-mary.example; certificates for edge-01 and hub-dc-01 (SPIFFE ids)"
    );

    step(
        "2. start the gateways with policy/examples/hospital.toml (each applies its nftables ruleset)",
    );
    let hub = h.start_hub();
    let edge = h.start_edge("");
    for (name, w) in [("hub-dc-01", &hub), ("edge-01", &edge)] {
        for l in log_lines(&w.log(), "wardd ready") {
            println!(
                "    {name}: {}",
                l.find("wardd ready").map_or(l.as_str(), |i| &l[i..])
            );
        }
    }

    step(
        "3. a CT study to the PACS: storescu (CT) -> edge 198.51.100.1:104 -> QUIC tunnel -> hub -> storescp (PACS)",
    );
    let data = TempDir::new("demo-data");
    let study = make_dicom(&data, 512);
    let pacs_dir = data.join("pacs");
    let _pacs = storescp_in(&h.srv, 104, &pacs_dir, &[]);
    let _engine = hl7_engine(&h);
    let lan_pcap = h.dir.join("lan.pcap");
    let cap = capture(&h.lan, "br0", &lan_pcap);
    let sent = storescu_in(&h.ct, "198.51.100.1", 104, &study, &[]);
    check(
        sent.status.success(),
        "storescu: study stored",
        &mut failures,
    );
    let same = sent.status.success() && dataset(&study) == dataset(&stored_file(&pacs_dir));
    check(
        same,
        &format!(
            "the PACS holds the same {} bytes of image data",
            dataset(&study).len()
        ),
        &mut failures,
    );

    step(
        "4. an HL7 ORU^R01 result from infusion pump 1 (its flow allows nothing else): mllp_send -> edge 198.51.100.17:2575 -> TCP tunnel -> hub -> HL7 engine",
    );
    let ack = mllp_send(&h, &h.pump1, "198.51.100.17", "DEMO0001");
    check(
        ack.contains("MSA|AA|DEMO0001"),
        &format!("ACK received: {}", ack.trim().replace('\r', " | ")),
        &mut failures,
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    let lan = std::fs::read(&lan_pcap).unwrap_or_default();
    let clear = [&b"1.2.840.10008"[..], b"MSH|^~\\&|PUMP"]
        .iter()
        .any(|m| lan.windows(m.len()).any(|w| w == *m));
    check(
        !clear,
        &format!(
            "the LAN capture ({} bytes) holds no cleartext DICOM or HL7",
            lan.len()
        ),
        &mut failures,
    );

    step("5. what Ward refuses");
    let before = h.drops("ct-scanner-2");
    check(
        !pings(&h.ct, "192.0.2.50"),
        "CT -> workstation 192.0.2.50 (direct): dropped",
        &mut failures,
    );
    check(
        !tcp_connects(&h.ct, "192.0.2.50", 445),
        "CT -> workstation:445 (SMB, the WannaCry path): dropped",
        &mut failures,
    );
    check(
        !pings(&h.ct, "198.51.100.18"),
        "CT -> infusion pump 198.51.100.18 (lateral): dropped",
        &mut failures,
    );
    check(
        !tcp_connects(&h.ct, "198.51.100.17", 2575),
        "CT -> the pump's HL7 listener (not its flow): dropped",
        &mut failures,
    );
    check(
        !tcp_connects(&h.lan, "198.51.100.50", 24105),
        "LAN -> patient monitor (no tunnel, no certificate): dropped",
        &mut failures,
    );
    let after = h.drops("ct-scanner-2");
    check(
        after > before,
        &format!("CT drop counter: {before} -> {after} packets"),
        &mut failures,
    );
    // Inside its own flow: the CT's DICOM guard allows storing CT images
    // and C-ECHO; a query never leaves the edge.
    let query = ward_tests::topology::cmd_in(&h.ct, ward_tests::peers::dcmtk("findscu"))
        .args(["-S", "-aec", "PACS", "-aet", "CT-SCANNER-2"])
        .args(["-k", "QueryRetrieveLevel=STUDY", "198.51.100.1", "104"])
        .output()
        .expect("findscu");
    std::thread::sleep(Duration::from_millis(200));
    check(
        !query.status.success()
            && edge
                .log()
                .contains("Query/Retrieve Information Model - FIND) not allowed"),
        "CT C-FIND inside its PACS flow (guard: C-STORE of CT images, C-ECHO): no presentation context, refused by Ward",
        &mut failures,
    );

    step("6. what the gateways report (wardctl on edge-01's admin socket)");
    // Infusion pump 2 holds an HL7 link open, as interface engines do.
    let _link = ward_tests::topology::Bg(
        ward_tests::topology::cmd_in(&h.pump2, "sh")
            .args(["-c", "sleep 30 | nc 198.51.100.33 2575"])
            .spawn()
            .expect("nc"),
    );
    std::thread::sleep(Duration::from_millis(800));
    let sock = h.socket("edge-01");
    for args in [&["status"][..], &["device", "list"], &["flow", "list"]] {
        println!("    $ wardctl {}", args.join(" "));
        let out = std::process::Command::new(ward_tests::harness::binary("wardctl"))
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .expect("wardctl");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            println!("      {l}");
        }
        if !out.status.success() {
            println!(
                "      (wardctl failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            failures += 1;
        }
    }
    println!("    tunnels hub-dc-01 accepted (each authorized against its own plan):");
    for l in log_lines(&hub.log(), "tunnel opened") {
        println!(
            "      {}",
            l.find("tunnel{").map_or(l.as_str(), |i| &l[i..])
        );
    }

    // Each gateway's evidence, kept for the report at the end (as an
    // admin machine without the sockets gets it).
    let mut evidence = Vec::new();
    for gw in ["edge-01", "hub-dc-01"] {
        let out = std::process::Command::new(ward_tests::harness::binary("wardctl"))
            .arg("--socket")
            .arg(h.socket(gw))
            .arg("evidence")
            .output()
            .expect("wardctl");
        let file = h.dir.join(&format!("{gw}-evidence.json"));
        std::fs::write(&file, &out.stdout).expect("evidence");
        if !out.status.success() {
            failures += 1;
        }
        evidence.push(file);
    }

    step(
        "7. transparent insertion: edge-01 takes over as the devices' router (routed), the CT unchanged",
    );
    let ct_config = || {
        let addr =
            h.ct.exec(&["ip", "-br", "-4", "addr", "show", "eth0"])
                .stdout;
        let route = h.ct.exec(&["ip", "route"]).stdout;
        format!(
            "{}{}",
            String::from_utf8_lossy(&addr),
            String::from_utf8_lossy(&route)
        )
    };
    let before = ct_config();
    println!("    the CT's network configuration (its PACS is 203.0.113.5:104, the real address):");
    for l in before.lines() {
        println!("      {l}");
    }
    drop(edge);
    h.edit_policy(ward_tests::topology::routed_policy);
    println!(
        "    policy: edge-01 insertion = \"routed\", routers = the device segments' router addresses; the flows lose `listen`"
    );
    let edge = h.start_edge("");
    for l in log_lines(&edge.log(), "wardd ready") {
        println!(
            "    edge-01: {}",
            l.find("wardd ready").map_or(l.as_str(), |i| &l[i..])
        );
    }
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    check(
        sent.status.success(),
        "storescu 203.0.113.5 104 from the unchanged CT: stored through the QUIC tunnel",
        &mut failures,
    );
    let ack = mllp_send(&h, &h.pump1, "203.0.113.6", "DEMO0002");
    check(
        ack.contains("MSA|AA|DEMO0002"),
        "mllp_send 203.0.113.6 from the unchanged pump: ACK through the TCP tunnel",
        &mut failures,
    );
    check(
        ct_config() == before,
        "the CT's configuration after: unchanged",
        &mut failures,
    );
    for l in log_lines(&edge.log(), "far end connected") {
        println!(
            "      {}",
            l.find("tunnel{").map_or(l.as_str(), |i| &l[i..])
        );
    }

    step(
        "8. learning mode: monitor, observe, suggest, simulate, apply with commit-confirm (wardctl)",
    );
    drop(edge);
    learning_scene(&h, &study, &mut failures);

    step(
        "9. bump in the wire: a CT and a pump behind their router; the cable is split into edge-br's bridge, nothing else changes",
    );
    match ward_tests::segment::Segment::build() {
        None => {
            println!("    (cannot create the namespaces)");
            failures += 1;
        }
        Some(seg) => bridge_scene(&seg, &study, &data, &mut failures),
    }

    step(
        "10. the compensating-control report: wardctl report, with the gateways' evidence and advisory files",
    );
    let report = std::env::current_dir()
        .expect("cwd")
        .join("target/ward-report.html");
    let mut cmd = std::process::Command::new(ward_tests::harness::binary("wardctl"));
    cmd.args(["report", "--policy", "policy/examples/hospital.toml"])
        .args(["--kev", "tests/data/kev.json"])
        .args(["--csaf", "tests/data/csaf-acme-somascan.json"]);
    for e in &evidence {
        cmd.arg("--evidence").arg(e);
    }
    let out = cmd.arg("--out").arg(&report).output().expect("wardctl");
    check(
        out.status.success(),
        &format!(
            "{}: open it in a browser (it prints on A4)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        &mut failures,
    );

    step("done");
    if failures > 0 {
        println!(
            "    {failures} check(s) failed; logs in {}",
            h.dir.path().display()
        );
        std::process::exit(1);
    }
    println!("    all checks passed; namespaces and files are removed on exit");
}

/// Print a command's output indented, and return it.
fn show(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for l in text.lines() {
        println!("      {l}");
    }
    text
}

/// Demo step 8: learning mode on the routed hospital.
fn learning_scene(h: &Hospital, study: &std::path::Path, failures: &mut u32) {
    use ward_tests::topology::{ntp_responder, udp_datagrams, undeclared_service, wardctl};
    // The policy is the routed one of step 7; only the mode changes.
    let monitor = std::fs::read_to_string(&h.policy)
        .expect("policy")
        .replace("mode = \"enforce\"", "mode = \"monitor\"");
    std::fs::write(&h.policy, &monitor).expect("policy");
    let _ntp = ntp_responder(&h.lan);
    let _surprise = undeclared_service(&h.lan);
    let edge = h.start_edge("[observe]\npoll = \"1s\"");
    let sock = h.socket("edge-01");
    println!("    edge-01 restarted in monitor mode; the devices do what they always did:");
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, study, &[]);
    let ack = mllp_send(h, &h.pump1, "203.0.113.6", "DEMO0003");
    udp_datagrams(&h.ct, "192.0.2.123", 123, 5);
    let surprise = tcp_connects(&h.ct, "192.0.2.50", 8080);
    check(
        sent.status.success() && ack.contains("MSA|AA|DEMO0003") && surprise,
        "DICOM, HL7, 5 NTP datagrams, and a surprise: the CT talks to 192.0.2.50:8080, which nobody declared",
        failures,
    );
    std::thread::sleep(Duration::from_millis(2500));
    println!("    $ wardctl observe ct-scanner-2");
    let seen = show(&wardctl(&sock, &["observe", "ct-scanner-2"]));
    check(
        seen.contains("would-drop") && seen.contains("allowed (exception ntp)"),
        "observed: each flow with its packets, times and the verdict of the running policy",
        failures,
    );
    let obs = h.dir.join("observed.json");
    let obs_s = obs.to_str().expect("path");
    let _ = wardctl(&sock, &["observe", "export", obs_s]);
    let suggested = h.dir.join("suggested.toml");
    let out = wardctl(
        &sock,
        &[
            "policy",
            "suggest",
            "--observed",
            obs_s,
            "--policy",
            h.policy.to_str().expect("path"),
            "--deny",
            "192.0.2.50:8080",
        ],
    );
    std::fs::write(&suggested, &out.stdout).expect("write");
    println!(
        "    $ wardctl policy suggest --observed observed.json --policy policy.toml --deny 192.0.2.50:8080"
    );
    println!("      {}", String::from_utf8_lossy(&out.stderr).trim());
    let sug_s = suggested.to_str().expect("path");
    println!("    $ wardctl policy simulate suggested.toml --observed observed.json");
    let sim = wardctl(&sock, &["policy", "simulate", sug_s, "--observed", obs_s]);
    let said = show(&sim);
    check(
        sim.status.code() == Some(1)
            && said.contains("WOULD BREAK: ct-scanner-2 198.51.100.2 -> 192.0.2.50:8080/tcp"),
        "simulate: the surprise flow is the one thing the enforced suggestion would stop (exit 1)",
        failures,
    );
    println!("    $ wardctl policy apply suggested.toml --confirm-within 5m");
    show(&wardctl(
        &sock,
        &["policy", "apply", sug_s, "--confirm-within", "5m"],
    ));
    let status = show(&wardctl(&sock, &["status"]));
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, study, &[]);
    let ack = mllp_send(h, &h.pump1, "203.0.113.6", "DEMO0004");
    check(
        status.contains("PENDING")
            && sent.status.success()
            && ack.contains("MSA|AA|DEMO0004")
            && !tcp_connects(&h.ct, "192.0.2.50", 8080),
        "enforced, pending confirmation: DICOM and HL7 work, the surprise flow is dropped",
        failures,
    );
    println!("    $ wardctl policy confirm");
    let confirmed = wardctl(&sock, &["policy", "confirm"]);
    show(&confirmed);
    check(
        confirmed.status.success(),
        "confirmed: the enforced policy stays",
        failures,
    );
    drop(edge);
}

/// Demo step 9: bridge insertion on a segment set up before any gateway.
fn bridge_scene(
    seg: &ward_tests::segment::Segment,
    study: &std::path::Path,
    data: &TempDir,
    failures: &mut u32,
) {
    let view = |n: &ward_tests::netns::Netns| {
        let addr = n.exec(&["ip", "-br", "-4", "addr", "show", "eth0"]).stdout;
        let route = n.exec(&["ip", "route"]).stdout;
        format!(
            "{}{}",
            String::from_utf8_lossy(&addr),
            String::from_utf8_lossy(&route)
        )
    };
    let out = data.join("pacs-segment");
    let _pacs = storescp_in(&seg.srv, 104, &out, &[]);
    let before = view(&seg.ct);
    println!("    the CT, configured once (router 10.20.0.1, PACS 203.0.113.5:104):");
    for l in before.lines() {
        println!("      {l}");
    }
    let direct = storescu_in(&seg.ct, "203.0.113.5", 104, study, &[]);
    check(
        direct.status.success(),
        "before Ward: storescu straight through the router",
        failures,
    );
    seg.insert_bridge();
    for t in ["iptables", "ip6tables", "arptables"] {
        let _ = seg
            .edge
            .exec(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{t}=0")]);
    }
    println!(
        "    the CT's and the pump's cables now end in edge-br: dev0, dev1 and up0 (to the router) bridged as br-ward"
    );
    let _hub = seg.start("hub-dc-01", &seg.hub);
    let edge = seg.start("edge-br", &seg.edge);
    for l in log_lines(&edge.log(), "wardd ready") {
        println!(
            "    edge-br: {}",
            l.find("wardd ready").map_or(l.as_str(), |i| &l[i..])
        );
    }
    let sent = storescu_in(&seg.ct, "203.0.113.5", 104, study, &[]);
    check(
        sent.status.success(),
        "the same storescu, same arguments: diverted from the bridge into the QUIC tunnel",
        failures,
    );
    check(
        !pings(&seg.ct, "10.20.0.18"),
        "CT -> pump on the same segment (lateral): dropped on the bridge",
        failures,
    );
    check(
        view(&seg.ct) == before,
        "the CT's configuration: unchanged",
        failures,
    );
}
