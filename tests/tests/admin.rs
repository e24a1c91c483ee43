//! The admin API through `wardctl`: status, devices, flows, reload,
//! quarantine and release, and exit 69 when the daemon is unreachable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ward_tests::harness::binary;
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions};

fn wardctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(binary("wardctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run wardctl")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "wardctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn echo(s: &mut TcpStream, what: &str) -> std::io::Result<()> {
    s.write_all(what.as_bytes())?;
    let mut buf = vec![0u8; what.len()];
    s.read_exact(&mut buf)?;
    Ok(())
}

#[test]
fn wardctl_against_a_running_gateway() {
    let site = Site::new("admin", &SiteOptions::default());
    echo_server(site.echo);
    let _hub = site.start_hub();
    let mut edge = site.start_edge("");
    let sock = site.dir.join("edge-01.sock");
    let mut tunnel = TcpStream::connect(site.echo_tcp).expect("connect");
    tunnel
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    echo(&mut tunnel, "hello through ward").expect("tunnel");

    let status = json(&wardctl(&sock, &["--json", "status"]));
    assert_eq!(status["gateway"], "edge-01");
    assert_eq!(status["mode"], "enforce");
    assert_eq!(status["connections"], 1);
    let text = String::from_utf8_lossy(&wardctl(&sock, &["status"]).stdout).into_owned();
    assert!(
        text.contains("spiffe://test.example/gateway/edge-01"),
        "{text}"
    );

    let devices = json(&wardctl(&sock, &["--json", "device", "list"]));
    let m = devices
        .as_array()
        .expect("array")
        .iter()
        .find(|d| d["id"] == "modality-1")
        .expect("modality-1");
    assert_eq!(m["connections"], 1);
    assert_eq!(m["mode"], "enforce");
    assert!(m["last_seen"].as_u64().is_some());
    let flows = json(&wardctl(&sock, &["--json", "flow", "list"]));
    let f = &flows[0];
    assert_eq!(f["flow"], "echo-tcp");
    assert_eq!(f["peer"], "spiffe://test.example/gateway/hub-dc-01");
    assert_eq!(f["bytes_up"], 18);
    assert_eq!(f["bytes_down"], 18);

    // Reload: ok, then rejected with the reason, and status records both.
    assert!(wardctl(&sock, &["reload"]).status.success());
    let good = std::fs::read_to_string(&site.policy).expect("policy");
    std::fs::write(&site.policy, good.replace("to = \"pacs\"", "to = \"pac\"")).expect("break");
    let rejected = wardctl(&sock, &["reload"]);
    assert_eq!(rejected.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rejected.stderr).contains("flows[0].to"));
    let status = json(&wardctl(&sock, &["--json", "status"]));
    assert_eq!(status["last_reload"]["ok"], false);
    std::fs::write(&site.policy, good).expect("restore");
    echo(&mut tunnel, "still here").expect("tunnel survives both reloads");

    // Quarantine cuts the live tunnel and refuses new ones; release restores.
    assert_eq!(
        wardctl(&sock, &["device", "quarantine", "modality-1"])
            .status
            .code(),
        Some(1),
        "quarantine without --yes on a pipe"
    );
    let q = json(&wardctl(
        &sock,
        &["--json", "device", "quarantine", "modality-1", "--yes"],
    ));
    assert_eq!(q["quarantined"], true);
    let mut buf = [0u8; 1];
    // Closed means end of stream or a reset, not a read timeout.
    let closed = match tunnel.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "the quarantined device's tunnel stayed open");
    let mut again = TcpStream::connect(site.echo_tcp).expect("connect");
    again
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert!(
        echo(&mut again, "x").is_err(),
        "a quarantined device opened a flow"
    );
    edge.wait_log("device is quarantined", Duration::from_secs(5));
    let r = json(&wardctl(
        &sock,
        &["--json", "device", "release", "modality-1"],
    ));
    assert_eq!(r["quarantined"], false);
    let mut after = TcpStream::connect(site.echo_tcp).expect("connect");
    after
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    echo(&mut after, "back").expect("release restores flows");

    // Unknown device: 404 → exit 65.
    assert_eq!(
        wardctl(&sock, &["device", "show", "nope"]).status.code(),
        Some(65)
    );
    // Unreachable daemon: exit 69 naming the socket.
    let gone = wardctl(Path::new("/nonexistent/ward.sock"), &["status"]);
    assert_eq!(gone.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("/nonexistent/ward.sock"));
}

/// The audit trail records flow decisions, policy and admin actions, and
/// `wardctl audit verify` accepts it, then names the first record altered,
/// removed or reordered in tampered copies.
#[test]
fn audit_trail_chain() {
    let site = Site::new("audit", &SiteOptions::default());
    echo_server(site.echo);
    let _hub = site.start_hub();
    let _edge = site.start_edge("");
    let sock = site.dir.join("edge-01.sock");
    for i in 0..3 {
        let mut s = TcpStream::connect(site.echo_tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        echo(&mut s, &format!("PATIENT-DATA-{i}")).expect("echo");
    }
    assert!(
        wardctl(&sock, &["device", "quarantine", "modality-1", "--yes"])
            .status
            .success()
    );
    assert!(
        wardctl(&sock, &["device", "release", "modality-1"])
            .status
            .success()
    );
    let trail = site.dir.join("state-edge-01/audit.jsonl");
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&trail).expect("audit trail");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    assert!(text.contains(r#""action":"allowed""#) && text.contains(r#""flow":"echo-tcp""#));
    assert!(
        text.contains(r#""kind":"admin""#)
            && text.contains(r#""action":"quarantine""#)
            && text.contains(r#""uid":"#)
    );
    assert!(
        !text.contains("PATIENT-DATA"),
        "payload bytes in the audit trail"
    );

    let verify = |name: &str, body: &str| {
        let p = site.dir.join(name);
        std::fs::write(&p, body).expect("write");
        Command::new(binary("wardctl"))
            .args(["audit", "verify"])
            .arg(&p)
            .output()
            .expect("wardctl")
    };
    let ok = verify("intact.jsonl", &text);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .contains(&format!("{} records, chain intact", lines.len()))
    );

    let mut altered = lines.clone();
    let changed = altered[1]
        .replace("edge-01", "edge-99")
        .replace("echo-tcp", "echo-xxx");
    altered[1] = &changed;
    let out = verify("altered.jsonl", &(altered.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 2 (line 2) was altered"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut removed = lines.clone();
    removed.remove(2);
    let out = verify("removed.jsonl", &(removed.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 3 is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    let out = verify("reordered.jsonl", &(reordered.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 3 (line 2) is out of order"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        key = s.name + "".join("|%s=%s" % kv for kv in sorted(s.labels.items()))
        out[key] = s.value
print(json.dumps(out))
"#;

/// The metrics page parses with Prometheus' own text parser and counts what
/// happened: tunnels per flow, bytes each way, handshake failures by reason,
/// reloads, certificate expiry.
#[test]
fn prometheus_metrics() {
    let site = Site::new("metrics", &SiteOptions::default());
    echo_server(site.echo);
    let mut hub = site.start_hub();
    let edge = site.start_edge("");
    for i in 0..3 {
        let mut s = TcpStream::connect(site.echo_tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        echo(&mut s, &format!("metric-{i}")).expect("echo");
    }
    // One handshake without a client certificate at the hub.
    let _ = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &site.hub_tunnel.to_string(),
            "-alpn",
            "ward/1",
            "-tls1_3",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    hub.wait_log("peer sent no certificates", Duration::from_secs(5));
    assert!(
        wardctl(&site.dir.join("edge-01.sock"), &["reload"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    // One flow over QUIC (after the reload, which starts new connections),
    // then time for path MTU discovery to probe upwards.
    let mut q = TcpStream::connect(site.echo_quic).expect("connect quic flow");
    q.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    echo(&mut q, "metric-quic").expect("echo over quic");
    std::thread::sleep(Duration::from_secs(1));

    let scrape = |w: &ward_tests::harness::Wardd| -> serde_json::Value {
        let addr = w.metrics_addr().expect("metrics address in the banner");
        let mut s = TcpStream::connect(addr).expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        let body = resp.split_once("\r\n\r\n").expect("http body").1.to_owned();
        let mut py = Command::new("python3")
            .arg("-c")
            .arg(PARSE_METRICS)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        py.stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write");
        let out = py.wait_with_output().expect("parser");
        assert!(
            out.status.success(),
            "prometheus parser rejected the page:\n{body}"
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let e = scrape(&edge);
    assert_eq!(e["ward_tunnels_opened_total|flow=echo-tcp"], 3.0, "{e}");
    assert_eq!(
        e["ward_flow_bytes_total|direction=up|flow=echo-tcp"], 24.0,
        "{e}"
    );
    assert_eq!(
        e["ward_flow_bytes_total|direction=down|flow=echo-tcp"], 24.0,
        "{e}"
    );
    assert_eq!(e["ward_reloads_total|result=ok"], 1.0, "{e}");
    assert!(
        e["ward_certificate_expiry_seconds"]
            .as_f64()
            .expect("expiry")
            > 3600.0,
        "{e}"
    );
    assert_eq!(
        e["ward_info|gateway=edge-01|mode=enforce|version=0.1.0"], 1.0,
        "{e}"
    );
    // The QUIC path to the hub: discovery has probed from quinn's initial
    // 1200 bytes up to its 1452-byte bound, which loopback carries.
    let quic = |name: &str| -> f64 {
        e.as_object()
            .expect("metrics object")
            .iter()
            .find(|(k, _)| k.starts_with(name) && k.contains("gateway/hub-dc-01"))
            .and_then(|(_, v)| v.as_f64())
            .unwrap_or_else(|| panic!("no {name} for the hub in {e}"))
    };
    assert_eq!(quic("ward_quic_path_mtu_bytes|"), 1452.0, "{e}");
    let rtt = quic("ward_quic_rtt_seconds|");
    assert!(rtt > 0.0 && rtt < 0.1, "loopback round trip {rtt} s");
    // Counters, present for the hub and whole numbers.
    for counter in [
        "ward_quic_lost_packets_total|",
        "ward_quic_congestion_events_total|",
    ] {
        assert_eq!(quic(counter).fract(), 0.0, "{counter} in {e}");
    }
    let h = scrape(&hub);
    assert_eq!(
        h["ward_handshake_failures_total|leg=tunnel|reason=no-certificate"], 1.0,
        "{h}"
    );
    assert_eq!(h["ward_tunnels_opened_total|flow=echo-tcp"], 3.0, "{h}");
}

/// WARD_LOG_FORMAT=json gives one JSON object per line; at debug level the
/// logs still carry no payload bytes and no key material.
#[test]
fn json_logs_without_payload_or_keys() {
    let site = Site::new("jsonlog", &SiteOptions::default());
    echo_server(site.echo);
    let _hub = site.start_hub();
    let cfg = site.dir.join("edge.toml");
    ward_tests::harness::write_config(
        &cfg,
        "edge-01",
        &site.policy,
        &site.edge_cert,
        &site.ca,
        "quic_bind = \"127.0.3.1\"",
    );
    let mut cmd = Command::new(binary("wardd"));
    cmd.arg("--config").arg(&cfg).env("WARD_LOG_FORMAT", "json");
    let edge = ward_tests::harness::Wardd::spawn(
        &mut cmd,
        &cfg,
        &site.dir.join("edge.log"),
        Some("trace"),
    );
    for flow in [site.echo_tcp, site.echo_quic] {
        let mut s = TcpStream::connect(flow).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        echo(&mut s, "PATIENT-DATA-12345").expect("echo");
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = edge.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 5, "{log}");
    assert!(log.contains("tunnel opened") || log.contains("far end connected"));
    assert!(!log.contains("PATIENT-DATA"), "payload bytes in the log");
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains("BEGIN"),
        "key material in the log"
    );
}
