//! Learning mode's cost, in the same run on the same machine:
//!
//! 1. Packet rate through a monitor-mode gateway (the example hospital,
//!    routed, namespaces): one UDP sender on the CT's segment sends 64-byte
//!    datagrams as fast as one core allows to 64 ports of a LAN host, and
//!    the gateway forwards them (monitor mode lets them through). Observation
//!    on (the default) against `observe = false`, switched by reload in one
//!    wardd, interleaved runs, medians. Target: at most 10 % fewer packets
//!    per second with observation on. The sender's packets are forwarded in
//!    its own softirq, so both rates are CPU-bound and the CPU seconds per
//!    million packets (whole machine) are reported beside them.
//! 2. The daemon's CPU per poll per 10,000 observed flows: 10,000 distinct
//!    flows over three devices (each under its set bound), then wardd's CPU
//!    (user + system, `nft` children included) over polls of the full sets,
//!    less the same period with empty sets.
//! 3. Store memory per flow: wardd's resident memory after those flows were
//!    stored, less before, per flow (an upper bound: parse buffers and the
//!    allocator's retained memory count too).
//!
//! `sudo cargo bench -p ward-tests --bench learning` (root: namespaces)

use std::time::{Duration, Instant};

use ward_tests::load::{cpu_seconds, in_netns, median, rss};
use ward_tests::topology::{Hospital, routed_policy};

const RUNS: usize = 5;
const RUN: Duration = Duration::from_secs(3);
const PORTS: u16 = 64;
const POLL: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(10);

/// Whole-machine CPU seconds so far (all CPUs, from /proc/stat).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
    (cpu.iter().sum::<f64>() - cpu[3] - cpu[4]) / 100.0
}

fn forwarded(h: &Hospital) -> u64 {
    let out = h
        .edge
        .exec(&["cat", "/sys/class/net/lan0/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tx_packets")
}

/// Send for `RUN` from the CT as fast as one thread can; forwarded pps.
fn blast(h: &Hospital) -> (f64, f64) {
    let before = (forwarded(h), machine_cpu());
    let start = Instant::now();
    in_netns(h.ct.name(), move || {
        let s = std::net::UdpSocket::bind("198.51.100.2:0").expect("bind");
        let payload = [0u8; 64];
        let mut port = 0u16;
        while start.elapsed() < RUN {
            for _ in 0..256 {
                let _ = s.send_to(&payload, ("192.0.2.200", 30_000 + port));
                port = (port + 1) % PORTS;
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let packets = (forwarded(h) - before.0) as f64;
    (packets / secs, (machine_cpu() - before.1) / (packets / 1e6))
}

/// 10,000 distinct flows over three devices, one datagram each.
fn ten_thousand(h: &Hospital) {
    for (ns, src, n) in [
        (h.ct.name(), "198.51.100.2", 3334u16),
        (h.pump1.name(), "198.51.100.18", 3333),
        (h.pump2.name(), "198.51.100.34", 3333),
    ] {
        in_netns(ns, move || {
            let s = std::net::UdpSocket::bind((src, 0)).expect("bind");
            for p in 0..n {
                let _ = s.send_to(b"flow", ("192.0.2.200", 40_000 + p));
                if p % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Ok(h) = Hospital::build("lb") else {
        eprintln!("learning bench: needs root (network namespaces); skipped");
        return;
    };
    // The LAN host drops the datagrams itself (no ICMP answers to count).
    h.lan.run(&["nft", "add table inet sink"]);
    h.lan.run(&[
        "nft",
        "add chain inet sink input { type filter hook input priority 0; udp dport 30000-49999 drop; }",
    ]);
    let base = routed_policy(std::fs::read_to_string(&h.policy).expect("policy"))
        .replace("mode = \"enforce\"", "mode = \"monitor\"");
    let on = base.clone();
    let off = base.replace(
        "insertion = \"routed\"\n",
        "insertion = \"routed\"\nobserve = false\n",
    );
    assert_ne!(on, off);
    std::fs::write(&h.policy, &on).expect("policy");
    let edge = h.start_edge(&format!("[observe]\npoll = \"{}s\"", POLL.as_secs()));
    let set = |text: &str, n: usize| {
        std::fs::write(&h.policy, text).expect("policy");
        edge.signal("HUP");
        let start = Instant::now();
        while edge.count_log("reload applied") < n {
            assert!(start.elapsed() < Duration::from_secs(10), "{}", edge.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // 1. Packet rate, interleaved.
    let mut pps = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    let mut reloads = 0;
    let _ = blast(&h); // warm-up
    for run in 0..RUNS {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            reloads += 1;
            set(if i == 0 { &off } else { &on }, reloads);
            let (p, c) = blast(&h);
            pps[i].push(p);
            cpu[i].push(c);
        }
    }
    let m = |v: &Vec<f64>| median(v.clone());
    println!(
        "monitor-mode gateway, one UDP sender, 64-byte datagrams to {PORTS} ports, {RUNS} runs of {} s, medians",
        RUN.as_secs()
    );
    println!("| observation | forwarded kpps | CPU s per M packets (machine) |\n|---|---|---|");
    for (i, name) in ["off", "on"].iter().enumerate() {
        println!("| {name} | {:.0} | {:.2} |", m(&pps[i]) / 1e3, m(&cpu[i]));
    }
    let ratio = m(&pps[1]) / m(&pps[0]);
    println!(
        "on / off: packet rate {ratio:.3} (cost {:.1} %), CPU per packet {:.3}; target (cost at most 10 %): {}",
        (1.0 - ratio) * 100.0,
        m(&cpu[1]) / m(&cpu[0]),
        if ratio >= 0.9 { "met" } else { "MISSED" }
    );
    println!("raw kpps off {:?} on {:?}", pps[0], pps[1]);

    // 2 and 3. Daemon cost of 10,000 observed flows.
    reloads += 1;
    set(&on, reloads); // empty sets
    std::thread::sleep(POLL * 2);
    let pid = [edge.pid()];
    let idle0 = cpu_seconds(&pid);
    std::thread::sleep(MEASURE);
    let idle = cpu_seconds(&pid) - idle0;
    let rss0 = rss(edge.pid());
    ten_thousand(&h);
    std::thread::sleep(POLL * 3);
    let busy0 = cpu_seconds(&pid);
    let polls0 = edge.count_log("learning sets read");
    std::thread::sleep(MEASURE);
    let busy = cpu_seconds(&pid) - busy0;
    let polls = edge.count_log("learning sets read") - polls0;
    let rss1 = rss(edge.pid());
    let flows = String::from_utf8_lossy(
        &ward_tests::topology::wardctl(&h.socket("edge-01"), &["--json", "observe"]).stdout,
    )
    .matches("\"first_seen\"")
    .count();
    println!(
        "10,000 flows over 3 devices: {flows} stored; {polls} polls in {} s",
        MEASURE.as_secs()
    );
    println!(
        "wardd CPU (nft children included): {:.3} s per poll per 10,000 flows ({:.2} s over {} s with the flows, {:.2} s without)",
        (busy - idle) / polls.max(1) as f64 * 10_000.0 / flows.max(1) as f64,
        busy,
        MEASURE.as_secs(),
        idle
    );
    println!(
        "wardd resident memory: {} KiB -> {} KiB, {:.0} bytes per stored flow (upper bound)",
        rss0 / 1024,
        rss1 / 1024,
        rss1.saturating_sub(rss0) as f64 / flows.max(1) as f64
    );
}
