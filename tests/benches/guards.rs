//! Protocol guards' cost, in the same run on the same machine: Modbus/TCP
//! request round trips from the patient monitor's segment to a PLC behind
//! the hub, over two flows of the same TCP tunnel path, one guarded
//! (functions, unit ids, an address range), one not. One connection per
//! run, requests one at a time (read 4 holding registers), interleaved
//! runs, medians of p50 and p99. Target: guarded p99 within 10 % of
//! unguarded. The PLC is a minimal Modbus server written here (it answers
//! every read with zeros), so the server adds as little as possible.
//!
//! `sudo cargo bench -p ward-tests --bench guards` (root: namespaces)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ward_tests::load::{in_netns, median};
use ward_tests::topology::Hospital;

const RUNS: usize = 5;
const REQUESTS: usize = 5_000;

/// A Modbus server on `addr` in `ns`: every request gets a read response
/// of as many zero registers as it asked for.
fn plc(ns: &str, addr: SocketAddr) {
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind the PLC"));
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(s));
        }
    });
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut req = [0u8; 12];
    while s.read_exact(&mut req).is_ok() {
        let count = u16::from_be_bytes([req[10], req[11]]).min(125) as usize;
        let mut resp = vec![req[0], req[1], 0, 0];
        resp.extend(((3 + 2 * count) as u16).to_be_bytes());
        resp.extend([req[6], req[7], (2 * count) as u8]);
        resp.extend(std::iter::repeat_n(0u8, 2 * count));
        if s.write_all(&resp).is_err() {
            return;
        }
    }
}

/// `REQUESTS` reads one at a time over one connection; round trips in µs.
fn round_trips(ns: &str, addr: SocketAddr) -> Vec<f64> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut resp = [0u8; 17];
        let mut rtts = Vec::with_capacity(REQUESTS);
        for i in 0..REQUESTS {
            let t = (i as u16).to_be_bytes();
            let req = [t[0], t[1], 0, 0, 0, 6, 1, 3, 0, 10, 0, 4];
            let start = Instant::now();
            s.write_all(&req).expect("request");
            s.read_exact(&mut resp).expect("response");
            rtts.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(resp[7], 3, "an exception instead of registers: {resp:?}");
        }
        rtts
    })
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Ok(h) = Hospital::build("gb") else {
        eprintln!("guards bench: needs root (network namespaces); skipped");
        return;
    };
    h.with_plc(&[("plc-guarded", 502, true), ("plc-plain", 503, false)]);
    plc(h.srv.name(), "203.0.113.7:502".parse().expect("addr"));
    let _hub = h.start_hub();
    let _edge = h.start_edge("");
    let paths: [(&str, SocketAddr); 2] = [
        ("unguarded", "198.51.100.49:503".parse().expect("addr")),
        ("guarded", "198.51.100.49:502".parse().expect("addr")),
    ];
    let ns = h.monitor.name().to_owned();
    for (_, addr) in &paths {
        round_trips(&ns, *addr); // warm-up
    }
    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let rtts = round_trips(&ns, paths[i].1);
            p50[i].push(percentile(rtts.clone(), 0.50));
            p99[i].push(percentile(rtts, 0.99));
        }
    }
    println!(
        "Modbus/TCP read of 4 holding registers, monitor -> edge -> TCP tunnel -> hub -> PLC, {REQUESTS} requests one at a time per run, {RUNS} runs, medians"
    );
    println!("| flow | p50 µs | p99 µs |\n|---|---|---|");
    let m = |v: &Vec<f64>| median(v.clone());
    for (i, (name, _)) in paths.iter().enumerate() {
        println!("| {name} | {:.0} | {:.0} |", m(&p50[i]), m(&p99[i]));
    }
    let ratio = m(&p99[1]) / m(&p99[0]);
    println!(
        "guarded / unguarded: p50 {:.3}, p99 {ratio:.3}; target (p99 within 10 %): {}",
        m(&p50[1]) / m(&p50[0]),
        if ratio <= 1.10 { "met" } else { "MISSED" }
    );
    println!("raw p99 µs unguarded {:?} guarded {:?}", p99[0], p99[1]);
}
