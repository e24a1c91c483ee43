//! Learning mode on the example hospital, routed, with real peers: the
//! devices run in monitor mode and send DICOM (dcmtk), HL7 (`mllp_send`),
//! NTP and DNS-like datagrams, and one surprise flow (TCP to a LAN port
//! nobody declared). `wardctl observe` shows each with its verdict and
//! exact datagram counts; `policy suggest` writes a policy `policy check`
//! accepts; `policy simulate` passes it and fails the running policy
//! naming the surprise flow; the suggestion without the surprise flow,
//! applied in enforce mode with a confirmation window, keeps DICOM and HL7
//! working and drops the surprise flow, which is then observed dropped.
//! Commit-confirm rolls back without a confirm, at the deadline, across a
//! restart within the window, and at start after a deadline that passed
//! while wardd was down; a rollback that fails keeps the pending policy's
//! ruleset in force and is retried. A device with
//! 10,000 distinct flows (explicit insertion) fills its learning set to the
//! bound, the overflow is counted exactly, and the daemon stays bounded. Needs root; skips
//! elsewhere, fails under CI=true.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ward_tests::harness::TempDir;
use ward_tests::peers::make_dicom;
use ward_tests::topology::{
    Hospital, hl7_engine, mllp_send, ntp_responder, routed_policy, storescp_in, storescu_in,
    tcp_connects, udp_datagrams, undeclared_service, wardctl,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The metrics page of a wardd running in namespace `ns`.
fn scrape(ns: &str, w: &ward_tests::harness::Wardd) -> String {
    use std::io::{Read, Write};
    let addr = w.metrics_addr().expect("metrics address in the banner");
    ward_tests::load::in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        resp
    })
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "wardctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A device's observed flow with this key, if any.
fn flow<'a>(o: &'a Value, device: &str, dst: &str, proto: u8, port: u16) -> Option<&'a Value> {
    o["devices"]
        .as_array()?
        .iter()
        .find(|d| d["id"] == device)?["flows"]
        .as_array()?
        .iter()
        .find(|f| f["key"]["dst"] == dst && f["key"]["proto"] == proto && f["key"]["port"] == port)
}

/// `wardctl --json observe` until `ready` holds (the poll runs every second).
fn observe_until(sock: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let o = json_of(&wardctl(sock, &["--json", "observe"]));
        if ready(&o) {
            return o;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} not observed: {}",
            serde_json::to_string_pretty(&o).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn status(sock: &Path) -> Value {
    json_of(&wardctl(sock, &["--json", "status"]))
}

fn audit_actions(h: &Hospital) -> Vec<(String, String)> {
    std::fs::read_to_string(h.dir.join("state-edge-01/audit.jsonl"))
        .expect("audit trail")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "policy")
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["trigger"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Wait until the edge's mode is `mode`; panics after `within`.
fn wait_mode(sock: &Path, mode: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let s = status(sock);
        if s["mode"] == mode {
            return s;
        }
        assert!(
            start.elapsed() < within,
            "mode still {} after {within:?}: {s}",
            s["mode"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_ctl(args: &[&str]) -> Output {
    wardctl(Path::new("/nonexistent"), args)
}

#[test]
fn observe_suggest_simulate_apply_confirm() {
    let Ok(h) = Hospital::build("lm") else {
        return;
    };
    // A site starts learning without guards: the suggestion writes them.
    let monitor = routed_policy(std::fs::read_to_string(&h.policy).expect("policy"))
        .replace("mode = \"enforce\"", "mode = \"monitor\"")
        .lines()
        .filter(|l| !l.starts_with("guard = "))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&h.policy, &monitor).expect("policy");
    let data = TempDir::new("lm-data");
    let study = make_dicom(&data, 64);
    let _pacs = storescp_in(&h.srv, 104, &data.join("pacs"), &[]);
    let _engine = hl7_engine(&h);
    let _ntp = ntp_responder(&h.lan);
    // The surprise: a LAN service nobody declared, which the CT uses.
    let _surprise = undeclared_service(&h.lan);
    let _hub = h.start_hub();
    let observe = "[observe]\npoll = \"1s\"";
    let mut edge = h.start_edge(observe);
    let sock = h.socket("edge-01");
    let t0 = now();

    // Monitor mode: everything passes, declared or not.
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "DICOM in monitor mode: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let ack = mllp_send(&h, &h.pump1, "203.0.113.6", "LEARN01");
    assert!(
        ack.contains("MSA|AA|LEARN01"),
        "HL7 in monitor mode: {ack:?}"
    );
    udp_datagrams(&h.ct, "192.0.2.123", 123, 7);
    udp_datagrams(&h.pump1, "192.0.2.200", 53, 3);
    assert!(
        tcp_connects(&h.ct, "192.0.2.50", 8080),
        "monitor mode refused the surprise flow"
    );

    // observe: each flow, its verdict, exact datagram counts (IP length 76).
    let (ct, pump) = ("ct-scanner-2", "pump-icu-01");
    let o = observe_until(&sock, "the four kinds of flows", |o| {
        flow(o, ct, "192.0.2.50", 6, 8080).is_some()
            && flow(o, ct, "192.0.2.123", 17, 123).is_some_and(|f| f["packets"] == 7)
            && flow(o, pump, "192.0.2.200", 17, 53).is_some_and(|f| f["packets"] == 3)
            && flow(o, ct, "203.0.113.5", 6, 104).is_some()
            && flow(o, pump, "203.0.113.6", 6, 2575).is_some()
    });
    let ntp = flow(&o, ct, "192.0.2.123", 17, 123).expect("ntp");
    assert_eq!(ntp["bytes"], 7 * 76, "{ntp}");
    assert_eq!(ntp["verdict"]["action"], "allowed", "{ntp}");
    assert_eq!(ntp["verdict"]["by"]["by"], "exception");
    assert_eq!(ntp["verdict"]["by"]["rule"], "ntp");
    let dicom = flow(&o, ct, "203.0.113.5", 6, 104).expect("dicom");
    assert_eq!(dicom["verdict"]["by"]["rule"], "ct2-to-pacs", "{dicom}");
    let hl7 = flow(&o, pump, "203.0.113.6", 6, 2575).expect("hl7");
    assert_eq!(hl7["verdict"]["by"]["rule"], "pump1-to-hl7", "{hl7}");
    let surprise = flow(&o, ct, "192.0.2.50", 6, 8080).expect("surprise");
    assert_eq!(surprise["verdict"]["action"], "would-drop", "{surprise}");
    assert_eq!(
        flow(&o, pump, "192.0.2.200", 17, 53).expect("dns")["verdict"]["action"],
        "would-drop"
    );
    for f in [ntp, dicom, hl7, surprise] {
        let (first, last) = (
            f["first_seen"].as_u64().expect("first"),
            f["last_seen"].as_u64().expect("last"),
        );
        assert!(
            t0 <= first && first <= last && last <= now(),
            "times out of order: {f}"
        );
    }
    let carried = o["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == ct)
        .expect("ct")["tunnels"]
        .as_array()
        .expect("tunnels")
        .iter()
        .find(|t| t["flow"] == "ct2-to-pacs")
        .cloned()
        .unwrap_or_default();
    assert!(
        carried["connections"].as_u64() >= Some(1) && carried["bytes_up"].as_u64() > Some(10_000),
        "the tunnel of the CT's DICOM flow is not recorded: {carried}"
    );
    assert_eq!(o["nflog_lost"], 0);
    // The protocol facts of the unguarded DICOM and HL7 flows.
    let facts = |flow: &str| {
        o["facts"]
            .as_array()
            .expect("facts")
            .iter()
            .find(|f| f["flow"] == flow)
            .map(|f| f["values"].clone())
            .unwrap_or_default()
    };
    let ct_facts = facts("ct2-to-pacs");
    assert_eq!(
        ct_facts["calling_ae_titles"],
        serde_json::json!(["CT-SCANNER-2"]),
        "{o}"
    );
    assert_eq!(ct_facts["commands"], serde_json::json!(["C-STORE"]), "{o}");
    assert_eq!(
        ct_facts["sop_classes"],
        serde_json::json!(["1.2.840.10008.5.1.4.1.1.2"]),
        "{o}"
    );
    assert_eq!(
        facts("pump1-to-hl7")["message_types"],
        serde_json::json!(["ORU^R01"]),
        "{o}"
    );
    // One first-seen event per new flow (the DICOM store and the HL7
    // message, the NTP and DNS sockets, the surprise connection), not one
    // per packet.
    let events = o["nflog_events"].as_u64().expect("nflog events");
    assert!((5..=12).contains(&events), "first-seen events: {events}");
    let human = wardctl(&sock, &["observe", ct]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("192.0.2.50")
            && text.contains("would-drop")
            && text.contains("allowed (exception ntp)"),
        "{text}"
    );
    assert!(
        !text.contains("pump-icu-01"),
        "observe DEVICE shows others: {text}"
    );

    // export → suggest → check → simulate.
    let obs = h.dir.join("observed.json");
    assert!(
        wardctl(&sock, &["observe", "export", obs.to_str().expect("path")])
            .status
            .success()
    );
    let suggest = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "suggest",
            "--observed",
            obs.to_str().expect("path"),
            "--policy",
            h.policy.to_str().expect("path"),
        ];
        args.extend_from_slice(extra);
        let out = run_ctl(&args);
        assert!(
            out.status.success(),
            "suggest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let suggested = suggest(&[]);
    let sfile = h.dir.join("suggested.toml");
    std::fs::write(&sfile, &suggested).expect("write");
    assert!(suggested.contains("mode = \"enforce\""), "{suggested}");
    assert!(
        suggested.contains("guard = { calling_ae_titles = [\"CT-SCANNER-2\"], called_ae_titles = [\"PACS\"], sop_classes = [\"CT Image Storage\"], commands = [\"C-STORE\"] }")
            && suggested.contains("guard = { message_types = [\"ORU^R01\"]"),
        "no guards suggested: {suggested}"
    );
    assert!(
        suggested.contains("address = \"192.0.2.50:8080\"")
            && suggested.contains("from = \"ct-scanner-2\"")
            && suggested.contains("to = \"192.0.2.200\"")
            && suggested.contains("port = 53"),
        "{suggested}"
    );
    assert!(
        !suggested.contains("0.0.0.0/0") && !suggested.contains("any"),
        "{suggested}"
    );
    let check = run_ctl(&["policy", "check", sfile.to_str().expect("path")]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.status.success(),
        "suggested policy invalid: {said}\n{suggested}"
    );
    assert!(
        said.contains("warning") && said.contains("justification"),
        "the suggested exception's justification is not flagged: {said}"
    );
    let simulate = |candidate: &Path| {
        run_ctl(&[
            "policy",
            "simulate",
            candidate.to_str().expect("path"),
            "--observed",
            obs.to_str().expect("path"),
        ])
    };
    let ok = simulate(&sfile);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "simulate suggested: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let current = simulate(&h.policy);
    let said = String::from_utf8_lossy(&current.stdout);
    assert_eq!(current.status.code(), Some(1), "{said}");
    assert!(
        said.contains("WOULD BREAK: ct-scanner-2 198.51.100.2 -> 192.0.2.50:8080/tcp"),
        "{said}"
    );
    let sim_json = json_of(&run_ctl(&[
        "--json",
        "policy",
        "simulate",
        sfile.to_str().expect("path"),
        "--observed",
        obs.to_str().expect("path"),
    ]));
    assert_eq!(sim_json["would_break"].as_array().map(Vec::len), Some(0));

    // The admin leaves the surprise flow out; simulate names it, apply
    // enforces with a confirmation window.
    let candidate = h.dir.join("candidate.toml");
    std::fs::write(&candidate, suggest(&["--deny", "192.0.2.50:8080"])).expect("write");
    let sim = simulate(&candidate);
    let said = String::from_utf8_lossy(&sim.stdout);
    assert_eq!(sim.status.code(), Some(1), "{said}");
    assert!(
        said.contains("192.0.2.50:8080/tcp") && !said.contains("WOULD BREAK: pump-icu-01"),
        "{said}"
    );
    let applied = wardctl(
        &sock,
        &[
            "policy",
            "apply",
            candidate.to_str().expect("path"),
            "--confirm-within",
            "5m",
        ],
    );
    assert!(
        applied.status.success(),
        "apply: {}{}",
        String::from_utf8_lossy(&applied.stderr),
        edge.log()
    );
    let s = wait_mode(&sock, "enforce", Duration::from_secs(5));
    let deadline = s["pending_confirm"]["confirm_by"]
        .as_u64()
        .expect("pending deadline");
    assert!((now() + 280..=now() + 300).contains(&deadline), "{s}");
    let human = String::from_utf8_lossy(&wardctl(&sock, &["status"]).stdout).into_owned();
    assert!(
        human.contains("PENDING") && human.contains("confirm by"),
        "{human}"
    );
    let sent = storescu_in(&h.ct, "203.0.113.5", 104, &study, &[]);
    assert!(
        sent.status.success(),
        "DICOM under the applied policy: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let ack = mllp_send(&h, &h.pump1, "203.0.113.6", "LEARN02");
    assert!(
        ack.contains("MSA|AA|LEARN02"),
        "HL7 under the applied policy: {ack:?}"
    );
    assert!(
        !tcp_connects(&h.ct, "192.0.2.50", 8080),
        "the surprise flow passed in enforce mode"
    );
    // Enforce mode observes too: the refused attempts are counted, dropped.
    let before = surprise["packets"].as_u64().expect("packets");
    observe_until(&sock, "the dropped surprise flow", |o| {
        flow(o, ct, "192.0.2.50", 6, 8080).is_some_and(|f| {
            f["verdict"]["action"] == "dropped" && f["packets"].as_u64() > Some(before)
        })
    });
    // A second apply while one is pending is refused.
    let again = wardctl(
        &sock,
        &["policy", "apply", candidate.to_str().expect("path")],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("waits for confirmation"));
    assert!(wardctl(&sock, &["policy", "confirm"]).status.success());
    assert!(status(&sock)["pending_confirm"].is_null());
    let actions = audit_actions(&h);
    assert!(
        actions.contains(&("pending-confirm".into(), "apply uid=0".into()))
            && actions.contains(&("confirmed".into(), "confirm uid=0".into())),
        "{actions:?}"
    );

    // No confirm: rolled back at the deadline to the confirmed candidate.
    let back = |p: &Path, within: &str| {
        let out = wardctl(
            &sock,
            &[
                "policy",
                "apply",
                p.to_str().expect("path"),
                "--confirm-within",
                within,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    back(&h.policy, "3s");
    wait_mode(&sock, "monitor", Duration::from_secs(5));
    let start = Instant::now();
    wait_mode(&sock, "enforce", Duration::from_secs(10));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "rolled back before the deadline"
    );
    assert!(status(&sock)["pending_confirm"].is_null());
    assert!(
        audit_actions(&h).contains(&("rolled-back".into(), "rollback".into())),
        "{:?}",
        audit_actions(&h)
    );
    assert!(
        !tcp_connects(&h.ct, "192.0.2.50", 8080),
        "rolled back to the wrong policy"
    );

    // A restart within the window keeps the deadline, and rolls back at it.
    back(&h.policy, "8s");
    wait_mode(&sock, "monitor", Duration::from_secs(5));
    edge.signal("TERM");
    edge.wait_exit(Duration::from_secs(15));
    let mut edge = h.start_edge(observe);
    let s = status(&sock);
    assert_eq!(s["mode"], "monitor", "{s}");
    assert!(
        s["pending_confirm"]["confirm_by"].is_u64(),
        "pending lost in the restart: {s}"
    );
    wait_mode(&sock, "enforce", Duration::from_secs(15));

    // A deadline that passes while wardd is down: rolled back at start.
    back(&h.policy, "2s");
    wait_mode(&sock, "monitor", Duration::from_secs(5));
    edge.signal("TERM");
    edge.wait_exit(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(3));
    let edge = h.start_edge(observe);
    let s = status(&sock);
    assert_eq!(s["mode"], "enforce", "{s}");
    assert!(s["pending_confirm"].is_null(), "{s}");
    assert!(
        audit_actions(&h).contains(&("rolled-back".into(), "start".into())),
        "{:?}",
        audit_actions(&h)
    );
    // A rollback that fails (the configuration no longer loads) leaves the
    // pending policy's ruleset in force, is audited, and is retried.
    back(&h.policy, "2s");
    wait_mode(&sock, "monitor", Duration::from_secs(5));
    let cfg = h.dir.join("edge-01.toml");
    let good = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{good}\nbogus = 1\n")).expect("break config");
    let start = Instant::now();
    while !audit_actions(&h).contains(&("rollback-failed".into(), "rollback".into())) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            audit_actions(&h)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = status(&sock);
    assert_eq!(s["mode"], "monitor", "{s}");
    assert!(
        s["pending_confirm"]["confirm_by"].as_u64() > Some(now()),
        "no retry pending: {s}"
    );
    assert!(
        tcp_connects(&h.ct, "192.0.2.50", 8080),
        "the pending policy's ruleset is not in force after the failed rollback"
    );
    std::fs::write(&cfg, good).expect("restore config");
    assert!(wardctl(&sock, &["policy", "confirm"]).status.success());
    assert!(
        ward_api::audit::verify(
            &std::fs::read_to_string(h.dir.join("state-edge-01/audit.jsonl")).expect("trail")
        )
        .is_ok(),
        "audit chain broken"
    );
    drop(edge);
}

/// CPU seconds (user + system, `nft` children included) and resident
/// memory of a process.
fn usage(pid: u32) -> (f64, u64) {
    (
        ward_tests::load::cpu_seconds(&[pid]),
        ward_tests::load::rss(pid),
    )
}

#[test]
fn ten_thousand_flows_stay_bounded() {
    let Ok(h) = Hospital::build("lk") else {
        return;
    };
    // Explicit insertion (the example as it is): the same learning chain.
    let monitor = std::fs::read_to_string(&h.policy)
        .expect("policy")
        .replace("mode = \"enforce\"", "mode = \"monitor\"");
    std::fs::write(&h.policy, &monitor).expect("policy");
    let edge = h.start_edge("[observe]\npoll = \"2s\"");
    let sock = h.socket("edge-01");
    std::thread::sleep(Duration::from_secs(3));
    let before = usage(edge.pid());
    // 10,000 distinct flows from the CT, 2 datagrams each.
    let flows = 10_000u16;
    ward_tests::load::in_netns(h.ct.name(), move || {
        let s = std::net::UdpSocket::bind("198.51.100.2:0").expect("bind");
        // Paced, so no queue on the way to the gateway overflows: the
        // counts must be exact.
        for _ in 0..2 {
            for p in 0..flows {
                s.send_to(b"0123456789abcdef", ("192.0.2.200", 20_000 + p))
                    .expect("send");
                if p % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(3));
                }
            }
        }
    });
    let set = ward_policy::nft::OBSERVE_SET_SIZE as u64;
    let o = observe_until(&sock, "the full set", |o| {
        o["devices"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["id"] == "ct-scanner-2"
                    && d["flows"].as_array().map(Vec::len) == Some(set as usize)
                    && d["overflow_packets"] == 2 * (u64::from(flows) - set)
            })
        })
    });
    let ct = o["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == "ct-scanner-2")
        .expect("ct");
    let counted: u64 = ct["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["packets"].as_u64().expect("packets"))
        .sum();
    assert_eq!(counted, 2 * set, "every recorded flow counted exactly");
    // Three more polls of the full set, then the daemon's cost.
    std::thread::sleep(Duration::from_secs(6));
    let after = usage(edge.pid());
    let cpu = after.0 - before.0;
    let rss_growth = after.1.saturating_sub(before.1);
    eprintln!(
        "10,000 flows: {} recorded, overflow {} packets; wardd CPU {cpu:.2} s over {}s of 2 s polls (nft children included), RSS {} -> {} KiB (+{} KiB)",
        set,
        ct["overflow_packets"],
        6 + 3,
        before.1 / 1024,
        after.1 / 1024,
        rss_growth / 1024
    );
    assert!(
        rss_growth < 64 << 20,
        "wardd grew by {} KiB",
        rss_growth / 1024
    );
    assert!(cpu < 10.0, "wardd used {cpu:.2} CPU seconds");
    let metrics = scrape(h.edge.name(), &edge);
    assert!(
        metrics.contains(&format!(
            "ward_observe_overflow_packets_total{{device=\"ct-scanner-2\"}} {}",
            2 * (u64::from(flows) - set)
        )),
        "{metrics}"
    );
}
