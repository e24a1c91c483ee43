//! The hardened unit: `systemd-analyze security` exposure, and READY=1 sent
//! by wardd over a real notify socket only once it serves.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/wardd.service");

/// The unit's overall exposure stays at or below 2.0.
#[test]
fn unit_exposure_at_most_2() {
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", UNIT])
        .output()
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("systemd-analyze is missing");
        }
        eprintln!("SKIP: systemd-analyze not installed");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure figure:\n{text}"));
    let figure: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    eprintln!("{line}");
    assert!(figure <= 2.0, "exposure {figure} > 2.0:\n{text}");
}

/// wardd tells systemd READY=1 (after binding and applying), RELOADING=1
/// and READY=1 around every reload, whatever triggered it, and STOPPING=1.
#[test]
fn notify_ready_reloading_and_stopping() {
    use ward_tests::harness::Wardd;
    use ward_tests::site::{Site, SiteOptions};
    let site = Site::new("notify", &SiteOptions::default());
    let sock_path = site.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let cfg = site.dir.join("hub.toml");
    ward_tests::harness::write_config(
        &cfg,
        "hub-dc-01",
        &site.policy,
        &site.hub_cert,
        &site.ca,
        "",
    );
    let mut cmd = Command::new(ward_tests::harness::binary("wardd"));
    cmd.arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut hub = Wardd::spawn(&mut cmd, &cfg, &site.dir.join("hub.log"), None);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(hub.log().contains("wardd ready"), "READY before the banner");
    // Every reload trigger tells systemd: the admin API (`wardctl reload`)
    // as well as SIGHUP.
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let out = Command::new(ward_tests::harness::binary("wardctl"))
        .arg("reload")
        .arg("--socket")
        .arg(site.dir.join("hub-dc-01.sock"))
        .output()
        .expect("wardctl reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        next().contains("RELOADING=1"),
        "wardctl reload: no RELOADING"
    );
    assert!(
        next().contains("READY=1"),
        "wardctl reload: no READY after it"
    );
    hub.signal("HUP");
    assert!(next().contains("RELOADING=1"), "SIGHUP: no RELOADING");
    assert!(next().contains("READY=1"), "SIGHUP: no READY after it");
    hub.signal("TERM");
    let n = sock.recv(&mut buf).expect("stopping");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(hub.wait_exit(Duration::from_secs(10)), Some(0));
}
