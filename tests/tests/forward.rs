//! Audit forwarding as RFC 5424 syslog over TLS (RFC 5425) to a real rsyslog
//! with a TLS listener, stopped and restarted mid-test: every record arrives.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_tests::harness::{Wardd, binary, free_port, wait_tcp, write_config};
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions};

struct Rsyslog(Child);
impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rsyslog(dir: &Path, pki: &Path, port: u16) -> Option<Rsyslog> {
    if Command::new("rsyslogd").arg("-v").output().is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("rsyslogd is not installed");
        }
        eprintln!("SKIP: rsyslogd not installed");
        return None;
    }
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).expect("work dir");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{pki}/ca.crt" DefaultNetstreamDriverCertFile="{pki}/server.crt" DefaultNetstreamDriverKeyFile="{pki}/server.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="msgonly" type="string" string="%msg%\n")
action(type="omfile" file="{out}" template="msgonly")
"#,
            work = work.display(),
            pki = pki.display(),
            out = dir.join("received.log").display(),
        ),
    )
    .expect("write rsyslog.conf");
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsyslogd");
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    Some(Rsyslog(child))
}

fn seqs(text: &str) -> BTreeSet<u64> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

fn traffic(site: &Site, n: usize) {
    for i in 0..n {
        let mut s = TcpStream::connect(site.echo_tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(format!("x{i}").as_bytes()).expect("write");
        let mut b = [0u8; 2];
        let _ = s.read_exact(&mut b);
    }
}

fn wait_all(received: &Path, trail: &Path, within: Duration) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let start = Instant::now();
    loop {
        let want = seqs(&std::fs::read_to_string(trail).unwrap_or_default());
        let got = seqs(&std::fs::read_to_string(received).unwrap_or_default());
        if !want.is_empty() && want.is_subset(&got) || start.elapsed() > within {
            return (want, got);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn audit_forwarding_survives_a_receiver_restart() {
    let site = Site::new("forward", &SiteOptions::default());
    let port = free_port("127.0.0.1");
    let Some(first) = rsyslog(site.dir.path(), &site.pacs_pki, port) else {
        return;
    };
    echo_server(site.echo);
    let _hub = site.start_hub();
    let cfg = site.dir.join("edge.toml");
    let forward = format!(
        "quic_bind = \"127.0.3.1\"\n[audit]\nforward = \"127.0.0.1:{port}\"\nforward_ca = \"{}\"\nforward_server_name = \"pacs.test\"\n",
        site.pacs_pki.join("ca.crt").display()
    );
    write_config(
        &cfg,
        "edge-01",
        &site.policy,
        &site.edge_cert,
        &site.ca,
        &forward,
    );
    let mut cmd = Command::new(binary("wardd"));
    cmd.arg("--config").arg(&cfg);
    let mut edge = Wardd::spawn(&mut cmd, &cfg, &site.dir.join("edge.log"), None);
    edge.wait_log("audit forwarding connected", Duration::from_secs(10));
    let trail = site.dir.join("state-edge-01/audit.jsonl");
    let received = site.dir.join("received.log");

    traffic(&site, 3);
    let (want, got) = wait_all(&received, &trail, Duration::from_secs(15));
    assert!(
        want.is_subset(&got),
        "before the restart: missing {:?}",
        want.difference(&got).collect::<Vec<_>>()
    );

    // The receiver goes away; records keep coming and wait in the trail.
    drop(first);
    traffic(&site, 5);
    edge.wait_log("records stay in the local trail", Duration::from_secs(20));
    traffic(&site, 2);
    let _second = rsyslog(site.dir.path(), &site.pacs_pki, port).expect("rsyslog again");
    let (want, got) = wait_all(&received, &trail, Duration::from_secs(30));
    assert!(
        want.len() >= 10,
        "expected at least 10 records, trail has {}",
        want.len()
    );
    assert!(
        want.is_subset(&got),
        "records lost across the receiver restart: {:?}\n{}",
        want.difference(&got).collect::<Vec<_>>(),
        edge.log()
    );
}
