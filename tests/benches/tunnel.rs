//! Tunnel benchmark: a two-hop Ward tunnel (TCP and QUIC transports) against
//! a two-hop `stunnel4` mutual-TLS tunnel and a two-hop cleartext `socat`
//! relay, in the same run on the same machine.
//!
//! `cargo bench -p ward-tests --bench tunnel`
//!
//! Every TLS hop uses ECDSA P-256 certificates from one CA, TLS 1.3,
//! TLS_AES_256_GCM_SHA384, mutual authentication and no session resumption.
//! Measured: bulk throughput (1 and 8 streams), 64-byte round trips (p50/p99)
//! on one connection, new connections per second with full handshakes (for
//! QUIC: new flows over the established connection), and RSS per hop with
//! 1,000 idle connections. Besides, the CPU time both hops spend per GiB of
//! single-stream bulk (user + system): a per-byte cost that does not depend
//! on how the scheduler shares the two cores between the hops and the load
//! generator. Each figure is the median of the runs; ratios are
//! Ward over stunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ward_pki::Kind;
use ward_tests::harness::{TempDir, TestCa, Wardd, binary, free_port, wait_tcp, write_config};
use ward_tests::load::{cpu_seconds, median};

const RUNS: usize = 5;
const BULK_BYTES: u64 = 512 << 20;
const RTT_ROUNDS: usize = 5000;
const CONNECT_SECONDS: u64 = 3;
const CONNECT_CONCURRENCY: usize = 16;
const IDLE_TUNNELS: usize = 1000;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One system under test: where clients connect, which processes are its hops.
struct Path2 {
    name: &'static str,
    echo: SocketAddr,
    drain: SocketAddr,
    pids: Vec<u32>,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

async fn sink_servers() -> (SocketAddr, SocketAddr) {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let drain = TcpListener::bind("127.0.0.1:0").await.expect("bind drain");
    let (ea, da) = (
        echo.local_addr().expect("addr"),
        drain.local_addr().expect("addr"),
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = drain.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        let _ = s.write_all(b"K").await;
                        break;
                    }
                }
            });
        }
    });
    (ea, da)
}

/// Throughput in Gb/s, and the hops' CPU seconds per GiB moved.
async fn bulk(addr: SocketAddr, streams: usize, pids: &[u32]) -> (f64, f64) {
    let per = BULK_BYTES / streams as u64;
    let cpu = cpu_seconds(pids);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect drain");
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = per;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..n]).await.expect("write");
                left -= n as u64;
            }
            s.shutdown().await.expect("half-close");
            let mut k = [0u8; 1];
            s.read_exact(&mut k)
                .await
                .expect("the drain's ack after all bytes");
        }));
    }
    for t in tasks {
        t.await.expect("stream");
    }
    let bytes = (per * streams as u64) as f64;
    let gbps = bytes * 8.0 / start.elapsed().as_secs_f64() / 1e9;
    // socat's per-connection children count once their parent has reaped them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (
        gbps,
        (cpu_seconds(pids) - cpu) / (bytes / f64::from(1u32 << 30)),
    )
}

async fn rtt(addr: SocketAddr) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).await.expect("connect echo");
    s.set_nodelay(true).expect("nodelay");
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut samples = Vec::with_capacity(RTT_ROUNDS);
    for i in 0..RTT_ROUNDS + 200 {
        let t = Instant::now();
        s.write_all(&msg).await.expect("write");
        s.read_exact(&mut back).await.expect("read");
        if i >= 200 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

async fn connects(addr: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(CONNECT_SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..CONNECT_CONCURRENCY {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ok = async {
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    s.write_all(b"x").await.ok()?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.ok()?;
                    Some(())
                }
                .await;
                match ok {
                    Some(()) => done.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.expect("task");
    }
    let f = failed.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("  ({f} connections failed)");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64().max(CONNECT_SECONDS as f64)
}

async fn idle_rss(p: &Path2) -> Vec<f64> {
    let before: Vec<u64> = p.pids.iter().map(|pid| rss_kib(*pid)).collect();
    let mut conns = Vec::with_capacity(IDLE_TUNNELS);
    for _ in 0..IDLE_TUNNELS {
        let mut s = TcpStream::connect(p.echo).await.expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("echo");
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<u64> = p.pids.iter().map(|pid| rss_kib(*pid)).collect();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / IDLE_TUNNELS as f64)
        .collect()
}

fn stunnel_conf(
    dir: &TempDir,
    name: &str,
    client: bool,
    cert: &Path,
    key: &Path,
    ca: &Path,
    services: &[(SocketAddr, SocketAddr)],
) -> std::path::PathBuf {
    let mut conf = format!(
        "foreground = yes\npid =\ndebug = 3\noutput = {}\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
        dir.join(&format!("{name}.log")).display()
    );
    for (i, (accept, connect)) in services.iter().enumerate() {
        conf.push_str(&format!(
            "[s{i}]\nclient = {}\naccept = {accept}\nconnect = {connect}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\nciphersuites = TLS_AES_256_GCM_SHA384\ncurves = prime256v1\n{}",
            if client { "yes" } else { "no" },
            cert.display(),
            key.display(),
            ca.display(),
            if client { "sessionResume = no\n" } else { "options = NO_TICKET\nsessionCacheSize = 1\n" }
        ));
    }
    let path = dir.join(&format!("{name}.conf"));
    std::fs::write(&path, conf).expect("write stunnel conf");
    path
}

fn spawn(cmd: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e} (install it: tests/setup.sh)")),
    )
}

fn main() {
    if rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0) < 8 * IDLE_TUNNELS as u64 {
        println!("tunnel bench: cannot raise the file descriptor limit; skipped");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = TempDir::new("bench-tunnel");
    let mut ca = TestCa::new(&dir, "bench.example");
    let edge = ca.issue(Kind::Gateway, "edge-01");
    let hub = ca.issue(Kind::Gateway, "hub-dc-01");
    let (echo, drain) = sink_servers().await;

    // Ward: edge and hub, four flows (echo and drain, each over TCP and QUIC).
    let hub_tunnel = SocketAddr::new("127.0.2.1".parse().expect("ip"), free_port("127.0.2.1"));
    let l = || SocketAddr::new("127.0.1.1".parse().expect("ip"), free_port("127.0.1.1"));
    let (we_t, wd_t, we_q, wd_q) = (l(), l(), l(), l());
    let flow = |name: &str, to: &str, listen: SocketAddr, transport: &str| {
        format!(
            "[[flows]]\nname = \"{name}\"\nfrom = \"client\"\nto = \"{to}\"\nlisten = \"{listen}\"\ntransport = \"{transport}\"\nmax_connections = 100000\n\n"
        )
    };
    let policy = format!(
        "version = 1\ntrust_domain = \"bench.example\"\n\n[gateways.edge-01]\ndevice_interfaces = [\"lo\"]\nlan_address = \"127.0.3.1\"\n\n[gateways.hub-dc-01]\nlan_address = \"{}\"\ntunnel_port = {}\n\n[devices.client]\ngateway = \"edge-01\"\ninterface = \"lo\"\nip = \"127.0.0.1\"\nmac = \"02:00:00:00:00:01\"\n\n[services.echo]\naddress = \"{echo}\"\nvia = \"hub-dc-01\"\n\n[services.drain]\naddress = \"{drain}\"\nvia = \"hub-dc-01\"\n\n[services.echo-q]\naddress = \"{echo}\"\nvia = \"hub-dc-01\"\n\n[services.drain-q]\naddress = \"{drain}\"\nvia = \"hub-dc-01\"\n\n{}{}{}{}",
        hub_tunnel.ip(),
        hub_tunnel.port(),
        flow("echo-tcp", "echo", we_t, "tcp"),
        flow("drain-tcp", "drain", wd_t, "tcp"),
        flow("echo-quic", "echo-q", we_q, "quic"),
        flow("drain-quic", "drain-q", wd_q, "quic"),
    );
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).expect("write policy");
    let hub_conf = dir.join("hub.toml");
    write_config(&hub_conf, "hub-dc-01", &policy_path, &hub, &ca, "");
    let edge_conf = dir.join("edge.toml");
    write_config(
        &edge_conf,
        "edge-01",
        &policy_path,
        &edge,
        &ca,
        "quic_bind = \"127.0.3.1\"",
    );
    for conf in [&hub_conf, &edge_conf] {
        let text = std::fs::read_to_string(conf).expect("config").replace(
            "[limits]\n",
            "[limits]\nmax_connections_per_source = 100000\nmax_handshakes = 4096\n",
        );
        std::fs::write(conf, text).expect("config");
    }
    let wardd_bin = binary("wardd");
    println!("wardd: {}", wardd_bin.display());
    let start_ward = || {
        let hub_d = Wardd::start_with(&hub_conf, &dir.join("hub.log"), "info");
        let edge_d = Wardd::start_with(&edge_conf, &dir.join("edge.log"), "info");
        (edge_d, hub_d)
    };

    // stunnel: client hop and server hop, two services each.
    let s_mid_e = SocketAddr::new([127, 0, 0, 1].into(), free_port("127.0.0.1"));
    let s_mid_d = SocketAddr::new([127, 0, 0, 1].into(), free_port("127.0.0.1"));
    let s_in_e = SocketAddr::new([127, 0, 0, 1].into(), free_port("127.0.0.1"));
    let s_in_d = SocketAddr::new([127, 0, 0, 1].into(), free_port("127.0.0.1"));
    let ca_path = ca.ca.cert_path();
    let server_conf = stunnel_conf(
        &dir,
        "stunnel-server",
        false,
        &hub.cert,
        &hub.key,
        &ca_path,
        &[(s_mid_e, echo), (s_mid_d, drain)],
    );
    let client_conf = stunnel_conf(
        &dir,
        "stunnel-client",
        true,
        &edge.cert,
        &edge.key,
        &ca_path,
        &[(s_in_e, s_mid_e), (s_in_d, s_mid_d)],
    );
    let start_stunnel = || {
        let server = spawn("stunnel4", &[server_conf.to_str().expect("utf8")]);
        let client = spawn("stunnel4", &[client_conf.to_str().expect("utf8")]);
        for a in [s_mid_e, s_mid_d, s_in_e, s_in_d] {
            wait_tcp(a, Duration::from_secs(10));
        }
        (client, server)
    };

    // socat: two cleartext hops.
    let at = |p: u16| SocketAddr::new([127, 0, 0, 1].into(), p);
    let c_mid_e = free_port("127.0.0.1");
    let c_mid_d = free_port("127.0.0.1");
    let c_in_e = free_port("127.0.0.1");
    let c_in_d = free_port("127.0.0.1");
    let socat = |listen: u16, to: String| {
        spawn(
            "socat",
            &[
                &format!("TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=1024"),
                &format!("TCP:{to},nodelay"),
            ],
        )
    };
    let c1 = socat(c_mid_e, echo.to_string());
    let c2 = socat(c_mid_d, drain.to_string());
    let c3 = socat(c_in_e, format!("127.0.0.1:{c_mid_e}"));
    let c4 = socat(c_in_d, format!("127.0.0.1:{c_mid_d}"));
    for p in [c_mid_e, c_mid_d, c_in_e, c_in_d] {
        wait_tcp(at(p), Duration::from_secs(10));
    }

    // Idle memory first, each path in freshly started processes, so no path
    // reuses memory another path's connections left behind.
    let mut rss: Vec<(&str, Vec<f64>)> = Vec::new();
    let skip_rss = std::env::var_os("WARD_BENCH_NO_RSS").is_some();
    for (name, echo_addr) in [("ward tcp", we_t), ("ward quic", we_q)]
        .into_iter()
        .filter(|_| !skip_rss)
    {
        let (e, h) = start_ward();
        let p = Path2 {
            name,
            echo: echo_addr,
            drain: echo_addr,
            pids: vec![e.pid(), h.pid()],
        };
        let _ = rtt(p.echo).await;
        rss.push((name, idle_rss(&p).await));
    }
    if !skip_rss {
        let (c, s) = start_stunnel();
        let p = Path2 {
            name: "stunnel",
            echo: s_in_e,
            drain: s_in_d,
            pids: vec![c.0.id(), s.0.id()],
        };
        let _ = rtt(p.echo).await;
        rss.push(("stunnel", idle_rss(&p).await));
    }

    let (edge_d, hub_d) = start_ward();
    let (st_client, st_server) = start_stunnel();
    let ward_pids = vec![edge_d.pid(), hub_d.pid()];
    let paths = [
        Path2 {
            name: "ward tcp",
            echo: we_t,
            drain: wd_t,
            pids: ward_pids.clone(),
        },
        Path2 {
            name: "ward quic",
            echo: we_q,
            drain: wd_q,
            pids: ward_pids,
        },
        Path2 {
            name: "stunnel",
            echo: s_in_e,
            drain: s_in_d,
            pids: vec![st_client.0.id(), st_server.0.id()],
        },
        Path2 {
            name: "socat",
            echo: at(c_in_e),
            drain: at(c_in_d),
            pids: [&c1, &c2, &c3, &c4].iter().map(|c| c.0.id()).collect(),
        },
    ];
    // Warm up each path once (and open the QUIC connection).
    for p in &paths {
        let _ = rtt(p.echo).await;
    }

    let runs = std::env::var("WARD_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS);
    println!(
        "\ntwo-hop tunnels, medians of {runs} runs ({} MiB bulk, {RTT_ROUNDS} round trips, {CONNECT_SECONDS} s of connects x {CONNECT_CONCURRENCY})",
        BULK_BYTES >> 20
    );
    println!(
        "{:<10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12} {:>22}",
        "path",
        "1 stream",
        "8 streams",
        "CPU s/GiB",
        "p50 rtt",
        "p99 rtt",
        "new conn/s",
        "idle KiB/conn per hop"
    );
    let only = std::env::var("WARD_BENCH_PATHS").ok();
    let selected: Vec<&Path2> = paths
        .iter()
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == p.name))
        })
        .collect();
    let metrics = std::env::var("WARD_BENCH_METRICS").unwrap_or_else(|_| "bulk,rtt,connect".into());
    let on = |m: &str| metrics.split(',').any(|x| x == m);
    // samples[path] = (t1, t8, p50, p99, cps, cpu per GiB over both hops,
    // single stream); runs interleave the paths so drift on the machine
    // reaches every path alike.
    let mut samples: Vec<[Vec<f64>; 6]> = selected.iter().map(|_| Default::default()).collect();
    for _ in 0..runs {
        for (i, p) in selected.iter().enumerate() {
            let s = &mut samples[i];
            if on("bulk") {
                let (gbps, cpu) = bulk(p.drain, 1, &p.pids).await;
                s[0].push(gbps);
                s[5].push(cpu);
                s[1].push(bulk(p.drain, 8, &p.pids).await.0);
            }
            if on("rtt") {
                let (a, b) = rtt(p.echo).await;
                s[2].push(a);
                s[3].push(b);
            }
            if on("connect") {
                s[4].push(connects(p.echo).await);
            }
        }
    }
    let mut rows = Vec::new();
    for (i, p) in selected.iter().enumerate() {
        let m = |k: usize| {
            if samples[i][k].is_empty() {
                0.0
            } else {
                median(samples[i][k].clone())
            }
        };
        let rss = rss
            .iter()
            .find(|r| r.0 == p.name)
            .map(|r| r.1.clone())
            .unwrap_or_default();
        let row = (m(0), m(1), m(2), m(3), m(4), rss, m(5));
        let rss_s = if row.5.is_empty() {
            "n/a (process per conn)".to_owned()
        } else {
            row.5
                .iter()
                .map(|k| format!("{k:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "{:<10} {:>7.2} Gb/s {:>7.2} Gb/s {:>10.2} {:>7.0} us {:>7.0} us {:>12.0} {:>22}",
            p.name, row.0, row.1, row.6, row.2, row.3, row.4, rss_s
        );
        rows.push((p.name, row));
    }
    if rows.len() < paths.len() {
        return;
    }
    let get = |n: &str| &rows.iter().find(|r| r.0 == n).expect("row").1;
    let (wt, wq, st) = (get("ward tcp"), get("ward quic"), get("stunnel"));
    println!("\nratios against stunnel (target):");
    println!(
        "  throughput 1 stream: tcp {:.2}x, quic {:.2}x (>= 1.5)",
        wt.0 / st.0,
        wq.0 / st.0
    );
    println!(
        "  throughput 8 streams: tcp {:.2}x, quic {:.2}x (>= 1.5)",
        wt.1 / st.1,
        wq.1 / st.1
    );
    println!(
        "  p99 round trip: tcp {:.2}x, quic {:.2}x (<= 1.0)",
        wt.3 / st.3,
        wq.3 / st.3
    );
    println!(
        "  new tunnels/s: tcp {:.2}x (>= 2), quic flows {:.2}x (>= 10)",
        wt.4 / st.4,
        wq.4 / st.4
    );
    let max_rss = |r: &[f64]| r.iter().cloned().fold(0.0, f64::max);
    println!(
        "  idle RSS per tunnel per hop: ward tcp {:.1} KiB, ward quic {:.1} KiB, stunnel {:.1} KiB (ward <= 40)",
        max_rss(&wt.5),
        max_rss(&wq.5),
        max_rss(&st.5)
    );
    drop(edge_d);
    drop(hub_d);
}
