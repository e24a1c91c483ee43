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
