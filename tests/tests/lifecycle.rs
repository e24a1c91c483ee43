//! Certificates and CRL reloaded without dropping tunnels, revocation closing
//! open tunnels, inbound access rules, limits, reload, and graceful shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ward_pki::Kind;
use ward_tests::harness::{TempDir, binary};
use ward_tests::peers::{echo_server, echoes, echoscu_held, make_dicom, storescp, storescu};
use ward_tests::site::{Site, SiteOptions};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Echo `what` through `s`; Err if the tunnel is gone.
fn echo(s: &mut TcpStream, what: &str) -> std::io::Result<()> {
    s.write_all(what.as_bytes())?;
    let mut buf = vec![0u8; what.len()];
    s.read_exact(&mut buf)?;
    assert_eq!(buf, what.as_bytes());
    Ok(())
}

/// Wait until `s` is closed by the far side.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

/// A CRL rewrite that revokes nothing keeps tunnels up; the CRL that revokes
/// the edge's certificate closes its open tunnels (TCP and QUIC), and the
/// edge is refused at its next connect.
#[test]
fn revocation_closes_open_tunnels() {
    let mut site = Site::new("revoke", &SiteOptions::default());
    echo_server(site.echo);
    let mut hub = site.start_hub();
    let edge = site.start_edge("");
    let mut tcp = connect(site.echo_tcp);
    let mut quic = connect(site.echo_quic);
    echo(&mut tcp, "one").expect("tcp tunnel up");
    echo(&mut quic, "one").expect("quic tunnel up");

    // A fresh CRL with nothing new: certificates reload, tunnels stay.
    site.ca.ca.write_crl().expect("rewrite crl");
    hub.wait_log("certificates and CRL reloaded", Duration::from_secs(10));
    echo(&mut tcp, "two").expect("tcp tunnel survives a reload");
    echo(&mut quic, "two").expect("quic tunnel survives a reload");

    // Revoke the edge's certificate: the hub closes what the edge has open.
    let serial = site.edge_cert.serial.clone();
    site.ca.ca.revoke(&serial).expect("revoke edge");
    hub.wait_log("peer certificate revoked", Duration::from_secs(10));
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)),
        "tcp tunnel of a revoked peer stayed open"
    );
    assert!(
        closed_within(&mut quic, Duration::from_secs(5)),
        "quic tunnel of a revoked peer stayed open"
    );

    // The next connect is refused in the handshake.
    let mut again = connect(site.echo_tcp);
    assert!(
        echo(&mut again, "three").is_err(),
        "revoked edge opened a new tunnel"
    );
    hub.wait_log("Revoked", Duration::from_secs(5));
    drop(edge);
}

/// The vendor reaches the monitor only inside its window (injected clock);
/// a clinician identity without that flow, and a client without a
/// certificate, are refused.
#[test]
fn inbound_access_rules() {
    // 2026-11-24 is a Tuesday.
    let window = r#"{ days = ["tue"], start = "02:00", end = "04:00" }"#;
    let mut site = Site::new(
        "access",
        &SiteOptions {
            window: Some(window.into()),
            ..Default::default()
        },
    );
    let vendor = site.ca.issue(Kind::Client, "vendor");
    let clinician = site.ca.issue(Kind::Client, "clinician");
    let scratch = TempDir::new("access-data");
    let file = make_dicom(&scratch, 64);
    let out = scratch.join("received");
    let _monitor = storescp(site.monitor, &out, &[]);
    let tls_args = |c: &ward_pki::Issued| {
        vec![
            "--enable-tls".to_owned(),
            c.key.display().to_string(),
            c.cert.display().to_string(),
            "--add-cert-file".to_owned(),
            site.ca.ca.cert_path().display().to_string(),
        ]
    };
    let send = |c: &ward_pki::Issued| {
        let args = tls_args(c);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        storescu(site.access, &file, &args)
    };

    let mut inside = site.start_edge("fake_now = \"2026-11-24T03:00:00Z\"");
    assert!(
        send(&vendor).status.success(),
        "vendor inside its window was refused:\n{}",
        inside.log()
    );
    let refused = send(&clinician);
    assert!(
        !refused.status.success(),
        "clinician without a flow got through"
    );
    inside.wait_log(
        "peer identity may not open this flow",
        Duration::from_secs(5),
    );
    let plain = storescu(site.access, &file, &[]);
    assert!(!plain.status.success(), "a client without TLS got through");
    drop(inside);

    let mut outside = site.start_edge("fake_now = \"2026-11-24T05:00:00Z\"");
    assert!(
        !send(&vendor).status.success(),
        "vendor outside its window got through"
    );
    outside.wait_log(
        "outside the flow's maintenance window",
        Duration::from_secs(5),
    );
}

/// A vendor's DICOM association held open through the access listener,
/// with the edge's clock started `lead` seconds before `window_ends`: the
/// session is warned (log, and `wardctl flow list` shows the end and the
/// warning), then cut when the window ends, with the reason audited, and
/// the association is over.
fn held_session_cut_at_window_end(tag: &str, window: &str, fake_now: &str, window_ends: &str) {
    let mut site = Site::new(
        tag,
        &SiteOptions {
            window: Some(window.into()),
            ..Default::default()
        },
    );
    let vendor = site.ca.issue(Kind::Client, "vendor");
    let scratch = TempDir::new(&format!("{tag}-data"));
    let _monitor = storescp(site.monitor, &scratch.join("received"), &[]);
    let mut edge = site.start_edge(&format!("fake_now = \"{fake_now}\""));
    let log = scratch.join("echoscu.log");
    let (key, cert, ca) = (
        vendor.key.display().to_string(),
        vendor.cert.display().to_string(),
        site.ca.ca.cert_path().display().to_string(),
    );
    let mut assoc = echoscu_held(
        site.access,
        &log,
        &["--enable-tls", &key, &cert, "--add-cert-file", &ca],
    );
    let start = Instant::now();
    while echoes(&log) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10) && assoc.running(),
            "no C-ECHO inside the window:\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock = site.dir.join("edge-01.sock");
    let flows = || {
        let out = Command::new(binary("wardctl"))
            .args([
                "--socket",
                sock.to_str().expect("utf8"),
                "--json",
                "flow",
                "list",
            ])
            .output()
            .expect("wardctl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("flow list json")
    };
    let listed = flows();
    let session = &listed.as_array().expect("flows")[0];
    assert_eq!(session["flow"], "vendor-maintenance", "{listed}");
    assert_eq!(session["window"]["ends"], window_ends, "{listed}");
    edge.wait_log("maintenance window ends soon", Duration::from_secs(15));
    let listed = flows();
    assert_eq!(listed[0]["window"]["warned"], true, "{listed}");
    let text = Command::new(binary("wardctl"))
        .args(["--socket", sock.to_str().expect("utf8"), "flow", "list"])
        .output()
        .expect("wardctl");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("WARNING: session will be cut"), "{text}");
    assert!(assoc.running(), "cut before the window ended");
    edge.wait_log("closing connection", Duration::from_secs(15));
    let cut_at = Instant::now();
    while assoc.running() {
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "the association outlived its window:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let trail = std::fs::read_to_string(site.dir.join("state-edge-01/audit.jsonl")).expect("trail");
    let closed = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("record"))
        .find(|r| r["kind"] == "flow" && r["action"] == "closed")
        .unwrap_or_else(|| panic!("no closed record:\n{trail}"));
    assert_eq!(closed["flow"], "vendor-maintenance", "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("maintenance window")),
        "{closed}"
    );
}

/// Tuesday 02:00-04:00 in Tokyo (UTC+9) ends at 19:00 UTC on Monday: a
/// session held from 03:59:48 Tokyo time is warned, then cut at 04:00.
#[test]
fn window_end_cuts_held_session() {
    held_session_cut_at_window_end(
        "window-tokyo",
        r#"{ days = ["tue"], start = "02:00", end = "04:00", tz = "Asia/Tokyo", warning = "6s" }"#,
        "2026-11-23T18:59:48Z",
        "2026-11-23T19:00:00Z",
    );
}

/// The night DST begins in Berlin (2026-03-29: 01:59:59 CET, then 03:00
/// CEST, 01:00 UTC), a Sunday window 01:00-02:30 ends at the jump, as the
/// wall clock never shows 02:30: the session is cut at 01:00 UTC, not half
/// an hour later as a fixed-offset or shift-forward reading would have it.
#[test]
fn window_end_across_dst_change() {
    held_session_cut_at_window_end(
        "window-dst",
        r#"{ days = ["sun"], start = "01:00", end = "02:30", tz = "Europe/Berlin", warning = "6s" }"#,
        "2026-03-29T00:59:48Z",
        "2026-03-29T01:00:00Z",
    );
}

/// A flow's connection limit refuses the connection over it and leaves the
/// open ones alone.
#[test]
fn flow_connection_limit() {
    let site = Site::new(
        "limit",
        &SiteOptions {
            extra_policy: String::new(),
            ..Default::default()
        },
    );
    // Limit the echo flow to one connection by editing the policy.
    let text = std::fs::read_to_string(&site.policy)
        .expect("policy")
        .replace(
            "name = \"echo-tcp\"",
            "name = \"echo-tcp\"\nmax_connections = 1",
        );
    std::fs::write(&site.policy, text).expect("write policy");
    echo_server(site.echo);
    let _hub = site.start_hub();
    let mut edge = site.start_edge("");
    let mut first = connect(site.echo_tcp);
    echo(&mut first, "first").expect("first connection");
    let mut second = connect(site.echo_tcp);
    assert!(
        echo(&mut second, "second").is_err(),
        "second connection exceeded max_connections = 1"
    );
    edge.wait_log("flow connection limit reached", Duration::from_secs(5));
    echo(&mut first, "still").expect("the open connection is untouched");
}

/// SIGHUP with a broken policy keeps everything running and says why;
/// SIGTERM stops accepting, drains for the grace period, then cuts.
#[test]
fn reload_rejects_bad_policy_and_shutdown_drains() {
    let site = Site::new("reload", &SiteOptions::default());
    echo_server(site.echo);
    let _hub = site.start_hub();
    let mut edge = site.start_edge("");
    let mut tunnel = connect(site.echo_tcp);
    echo(&mut tunnel, "before").expect("tunnel up");

    let good = std::fs::read_to_string(&site.policy).expect("policy");
    std::fs::write(&site.policy, good.replace("to = \"pacs\"", "to = \"pac\""))
        .expect("break policy");
    edge.signal("HUP");
    edge.wait_log("reload rejected", Duration::from_secs(5));
    let log = edge.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload rejected"))
        .expect("rejection logged");
    let at = format!(
        "policy.toml:{}:",
        good[..good.find("to = \"pacs\"").expect("flow")]
            .matches('\n')
            .count()
            + 1
    );
    assert!(
        line.contains(&at) && line.contains("flows[0].to") && line.contains("did you mean"),
        "reload error lacks file, line and key: {line}"
    );
    echo(&mut tunnel, "after bad reload").expect("tunnel survives a rejected reload");
    let dicom = storescu(
        site.dicom_tcp,
        &make_dicom(&TempDir::new("reload-data"), 16),
        &[],
    );
    // No PACS runs here: the connection is accepted and the flow fails at the
    // far end, which proves the listener still serves the old plan.
    assert!(!dicom.status.success());
    edge.wait_log("flow not opened", Duration::from_secs(5));

    std::fs::write(&site.policy, &good).expect("restore policy");
    edge.signal("HUP");
    edge.wait_log("reload applied", Duration::from_secs(5));
    echo(&mut tunnel, "after good reload").expect("tunnel survives a reload");

    // Graceful shutdown: the open tunnel works during the drain, is cut after it.
    edge.signal("TERM");
    edge.wait_log("draining open connections", Duration::from_secs(5));
    echo(&mut tunnel, "during drain").expect("tunnel works while draining");
    assert!(
        TcpStream::connect_timeout(&site.echo_tcp, Duration::from_secs(1)).is_err(),
        "new connections accepted during shutdown"
    );
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(6)),
        "tunnel not cut after the drain period"
    );
    assert_eq!(edge.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(edge.log().contains("closing the remaining connections"));
}

/// The hub restarts: the edge's pooled QUIC connection is dead, its next
/// flow reconnects (the hub's stateless reset, keyed from its state
/// directory, tells the edge at once).
#[test]
fn quic_reconnects_after_hub_restart() {
    let site = Site::new("quic-restart", &SiteOptions::default());
    echo_server(site.echo);
    let hub = site.start_hub();
    let mut edge = site.start_edge("");
    let mut first = connect(site.echo_quic);
    echo(&mut first, "before").expect("quic flow up");
    drop(first);
    drop(hub);
    let _hub = site.start_hub();
    let start = Instant::now();
    let mut again = connect(site.echo_quic);
    echo(&mut again, "after")
        .unwrap_or_else(|e| panic!("no quic flow after the hub restart: {e}\n{}", edge.log()));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "reconnect took {:?}",
        start.elapsed()
    );
    edge.wait_log("quic connection lost; reconnecting", Duration::from_secs(1));
}
