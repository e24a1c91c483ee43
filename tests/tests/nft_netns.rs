//! The compiled ruleset against the real `nft`, inside namespaces these tests
//! create. Needs root; skips elsewhere, fails under CI=true.

use ward_gateway::control::nft::{ApplyError, Nft};
use ward_tests::netns_or_skip;

const EXAMPLE: &str = include_str!("../../policy/examples/hospital.toml");

fn plan(gateway: &str) -> ward_policy::Plan {
    let (policy, _) =
        ward_policy::load("hospital.toml", EXAMPLE, &Default::default()).expect("valid example");
    ward_policy::compile(&policy, gateway).expect("compiles")
}

fn objects<'a>(table: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    table["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get(kind))
        .collect()
}

/// The example's edge ruleset loads in a fresh namespace and reads back with
/// its base chains, per-device counters and listener set.
#[test]
fn example_ruleset_applies_and_reads_back() {
    let ns = netns_or_skip!("apply");
    let nft = Nft::in_netns(ns.name());
    assert!(
        nft.list_table().expect("list").is_none(),
        "fresh namespace has no ward table"
    );
    let edge = plan("edge-01");
    nft.apply_json(&ward_policy::nft::render_json(&edge))
        .expect("edge ruleset applies");

    let table = nft.list_table().expect("list").expect("table exists");
    let chains: Vec<(&str, Option<&str>, Option<&str>)> = objects(&table, "chain")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name"),
                c["hook"].as_str(),
                c["policy"].as_str(),
            )
        })
        .collect();
    for base in [
        ("prerouting", "accept"),
        ("input", "accept"),
        ("forward", "drop"),
        ("output", "accept"),
    ] {
        assert!(
            chains.contains(&(base.0, Some(base.0), Some(base.1))),
            "{base:?} in {chains:?}"
        );
    }
    for id in [
        "ct-scanner-2",
        "pump-icu-01",
        "pump-icu-02",
        "monitor-icu-3",
    ] {
        assert!(
            chains.iter().any(|c| c.0 == format!("drop_{id}")),
            "drop chain of {id}"
        );
    }
    let counters: Vec<String> = nft
        .list_counters()
        .expect("counters")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        counters,
        [
            "dev_ct-scanner-2",
            "dev_monitor-icu-3",
            "dev_pump-icu-01",
            "dev_pump-icu-02",
            "unknown_src",
            "obs_full_ct-scanner-2",
            "obs_full_monitor-icu-3",
            "obs_full_pump-icu-01",
            "obs_full_pump-icu-02",
        ]
    );
    // Each device's learning set, bounded, with a counter per element.
    let obs = objects(&table, "set")
        .into_iter()
        .find(|s| s["name"] == "obs_pump-icu-01")
        .expect("learning set of pump-icu-01");
    assert_eq!(obs["size"], ward_policy::nft::OBSERVE_SET_SIZE, "{obs}");
    assert_eq!(
        obs["stmt"],
        serde_json::json!([{ "counter": null }]),
        "{obs}"
    );
    let listen4 = objects(&table, "set")
        .into_iter()
        .find(|s| s["name"] == "listen4")
        .expect("listen4 set");
    assert_eq!(
        listen4["elem"].as_array().map(Vec::len),
        Some(3),
        "{listen4}"
    );
    let rules = objects(&table, "rule");
    assert!(
        rules
            .iter()
            .any(|r| r["comment"] == "lateral movement: device to device")
    );
}

/// Replacing the table drops stale objects (add+delete+add, not flush), and a
/// batch nft refuses leaves the previous ruleset exactly as it was.
#[test]
fn replace_is_atomic_and_failure_keeps_previous() {
    let ns = netns_or_skip!("atomic");
    let nft = Nft::in_netns(ns.name());
    nft.apply_json(&ward_policy::nft::render_json(&plan("edge-01")))
        .expect("edge applies");

    // Replace with the hub's ruleset: the edge's device objects must be gone.
    let hub = plan("hub-dc-01");
    nft.apply_json(&ward_policy::nft::render_json(&hub))
        .expect("hub applies over edge");
    let table = nft.list_table().expect("list").expect("table");
    assert!(
        objects(&table, "counter")
            .iter()
            .all(|c| !c["name"].as_str().unwrap_or("").starts_with("dev_")),
        "stale device counters survived the replacement"
    );
    assert!(
        objects(&table, "chain")
            .iter()
            .all(|c| c["name"] != "drop_ct-scanner-2")
    );
    let before = ns.run(&["nft", "list", "table", "inet", "ward"]);

    // A batch that replaces the table and then fails half-way.
    let mut broken: serde_json::Value =
        serde_json::from_str(&ward_policy::nft::render_json(&plan("edge-01"))).expect("json");
    broken["nftables"].as_array_mut().expect("array").push(serde_json::json!(
        {"add": {"rule": {"family": "inet", "table": "ward", "chain": "no-such-chain", "expr": [{"accept": null}]}}}
    ));
    match nft.apply_json(&broken.to_string()) {
        Err(ApplyError::Refused { stderr, .. }) => assert!(
            stderr.contains("No such file or directory"),
            "nft's reason is reported: {stderr}"
        ),
        other => panic!("broken batch was not refused: {other:?}"),
    }
    let after = ns.run(&["nft", "list", "table", "inet", "ward"]);
    assert_eq!(before, after, "a refused batch changed the running ruleset");
}

/// Monitor mode and quarantine render rulesets nft accepts.
#[test]
fn monitor_and_quarantine_variants_apply() {
    let ns = netns_or_skip!("variants");
    let nft = Nft::in_netns(ns.name());
    let text = EXAMPLE
        .replace("mode = \"enforce\"", "mode = \"monitor\"")
        .replace("quarantine = []", "quarantine = [\"pump-icu-02\"]");
    let (policy, _) = ward_policy::load("p.toml", &text, &Default::default()).expect("valid");
    let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
    nft.apply_json(&ward_policy::nft::render_json(&plan))
        .expect("applies");
    let listing = ns.run(&["nft", "list", "set", "inet", "ward", "quarantine4"]);
    assert!(listing.contains("198.51.100.34"), "{listing}");
    let chain = ns.run(&["nft", "list", "chain", "inet", "ward", "drop_pump-icu-01"]);
    assert!(
        chain.contains("accept") && !chain.contains("drop\n"),
        "monitor mode accepts: {chain}"
    );
}

/// Start order: every socket is bound before the ruleset is touched. With
/// one listener's port already taken, `wardd` exits non-zero naming the
/// address, the namespace's previous ruleset is byte-identical afterwards,
/// and the audit trail holds no "policy applied" record. With the port
/// free (the positive control), the same start applies its own ruleset and
/// records it.
#[test]
fn taken_port_leaves_the_previous_ruleset_and_no_applied_record() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use ward_tests::harness::{Wardd, binary, write_config};
    use ward_tests::site::{Site, SiteOptions};
    use ward_tests::topology::Bg;

    let ns = netns_or_skip!("startorder");
    let site = Site::new("startorder", &SiteOptions::default());
    let policy = std::fs::read_to_string(&site.policy).expect("policy");
    let (p, _) = ward_policy::load("policy.toml", &policy, &Default::default()).expect("valid");
    let previous = ward_policy::compile(&p, "hub-dc-01").expect("hub plan");
    let nft = Nft::in_netns(ns.name());
    nft.apply_json(&ward_policy::nft::render_json(&previous))
        .expect("previous ruleset applies");
    let ruleset = || ns.run(&["nft", "list", "ruleset"]);
    let before = ruleset();

    let config = site.dir.join("edge.toml");
    write_config(
        &config,
        "edge-01",
        &site.policy,
        &site.edge_cert,
        &site.ca,
        "quic_bind = \"127.0.3.1\"",
    );
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("apply = false", "apply = true")).expect("config");
    let audit = site.dir.join("state-edge-01").join("audit.jsonl");
    let applied_records = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(r#""kind":"policy""#) && l.contains(r#""action":"applied""#))
            .count()
    };

    // Something else holds one of the edge's listener addresses.
    let taken = site.echo_tcp;
    let mut holder = Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3", "-c"])
        .arg(format!(
            "import socket, time\ns = socket.socket()\ns.bind(('{}', {}))\ns.listen()\nprint('bound', flush=True)\ntime.sleep(60)",
            taken.ip(),
            taken.port()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("port holder");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder output");
    assert_eq!(line.trim(), "bound");
    let holder = Bg(holder);

    let mut wardd = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(binary("wardd"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wardd");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = wardd.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "wardd kept running with its port taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut wardd.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&taken.to_string()),
        "the error names {taken}: {stderr}"
    );
    assert_eq!(ruleset(), before, "a failed start changed the ruleset");
    assert_eq!(
        applied_records(),
        0,
        "a failed start recorded a policy as applied"
    );

    // Positive control: with the port free the same start applies and records.
    drop(holder);
    let _edge = Wardd::start_in(ns.name(), &config, &site.dir.join("edge.log"));
    assert_ne!(
        ruleset(),
        before,
        "the edge's start did not apply its ruleset"
    );
    assert_eq!(applied_records(), 1);
}
