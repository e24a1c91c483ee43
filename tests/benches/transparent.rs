//! Transparent against explicit insertion, in the same run: a CT on a
//! device segment behind a bridge gateway (bridge insertion, in network
//! namespaces, as `tests/tests/bridge.rs` builds it) sends to a sink behind
//! the hub over two flows of the same TCP tunnel path, one intercepted at
//! the sink's own address (transparent), one through an explicit listener
//! on the gateway's address. Medians of interleaved runs: single-stream
//! bulk throughput with the CPU seconds both gateways spend per GiB, and
//! new connections per second (each a new tunnel, a new connection to the
//! sink and an answer back). Target: transparent within 10 % of explicit.
//!
//! `sudo cargo bench -p ward-tests --bench transparent` (root: namespaces)

use std::net::SocketAddr;
use std::time::Duration;

use ward_tests::load::{bulk, connects, cpu_seconds, median, sink};
use ward_tests::segment::{POLICY, Segment};
use ward_tests::topology::ip;

const RUNS: usize = 5;
const BULK_BYTES: u64 = 512 << 20;
const CONNECT_PERIOD: Duration = Duration::from_secs(3);
const CONNECT_THREADS: usize = 8;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(s) = Segment::build() else {
        eprintln!("transparent bench: needs root (network namespaces); skipped");
        return;
    };
    let policy = format!(
        "{POLICY}
[services.sink]
address = \"203.0.113.7:9000\"
via = \"hub-dc-01\"

[[flows]]
name = \"sink-transparent\"
from = \"ct\"
to = \"sink\"

[[flows]]
name = \"sink-explicit\"
from = \"ct\"
to = \"sink\"
listen = \"192.0.2.10:9000\"
"
    );
    std::fs::write(s.dir.join("policy.toml"), policy).expect("policy");
    ip(&s.srv, "addr add 203.0.113.7/24 dev eth0");
    sink(s.srv.name(), "203.0.113.7:9000".parse().expect("addr"));
    s.insert_bridge();
    for t in ["iptables", "ip6tables", "arptables"] {
        let _ = s
            .edge
            .exec(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{t}=0")]);
    }
    let hub = s.start("hub-dc-01", &s.hub);
    let edge = s.start("edge-br", &s.edge);
    let pids = [edge.pid(), hub.pid()];
    let paths: [(&str, SocketAddr); 2] = [
        ("explicit", "192.0.2.10:9000".parse().expect("addr")),
        ("transparent", "203.0.113.7:9000".parse().expect("addr")),
    ];
    let ct = s.ct.name().to_owned();
    // Warm up both paths (QUIC is not used: the flows are TCP tunnels).
    for (_, addr) in &paths {
        bulk(&ct, *addr, 16 << 20);
    }
    let mut gbps = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    let mut conns = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        // Alternate which path goes first, so drift hits both alike.
        let order: Vec<usize> = if run % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for &i in &order {
            let before = cpu_seconds(&pids);
            gbps[i].push(bulk(&ct, paths[i].1, BULK_BYTES));
            let gib = BULK_BYTES as f64 / (1u64 << 30) as f64;
            cpu[i].push((cpu_seconds(&pids) - before) / gib);
            conns[i].push(connects(&ct, paths[i].1, CONNECT_PERIOD, CONNECT_THREADS));
        }
    }
    println!(
        "bridge insertion, {RUNS} runs, medians; bulk {} MiB single stream, new connections {CONNECT_THREADS} at a time for {} s",
        BULK_BYTES >> 20,
        CONNECT_PERIOD.as_secs()
    );
    println!("| path | bulk Gb/s | CPU s/GiB (both gateways) | new conn/s |\n|---|---|---|---|");
    let m = |v: &Vec<f64>| median(v.clone());
    for (i, (name, _)) in paths.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} |",
            m(&gbps[i]),
            m(&cpu[i]),
            m(&conns[i])
        );
    }
    let bulk_ratio = m(&gbps[1]) / m(&gbps[0]);
    let conn_ratio = m(&conns[1]) / m(&conns[0]);
    let cpu_ratio = m(&cpu[1]) / m(&cpu[0]);
    println!(
        "transparent / explicit: bulk {bulk_ratio:.3}, new conn/s {conn_ratio:.3}, CPU per GiB {cpu_ratio:.3}"
    );
    let within = |r: f64| (0.9..).contains(&r);
    println!(
        "target (within 10 %): bulk {}, new connections {}",
        if within(bulk_ratio) { "met" } else { "MISSED" },
        if within(conn_ratio) { "met" } else { "MISSED" }
    );
    println!(
        "raw bulk Gb/s explicit {:?} transparent {:?}",
        gbps[0], gbps[1]
    );
}
