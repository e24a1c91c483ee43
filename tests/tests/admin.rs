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
    assert!(
        matches!(tunnel.read(&mut buf), Ok(0) | Err(_)),
        "the quarantined device's tunnel stayed open"
    );
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
