//! Protocol guards' cost, in the same run on the same machine.
//!
//! Modbus/TCP: request round trips from the patient monitor's segment to a
//! PLC behind the hub, over two flows of the same TCP tunnel path, one
//! guarded (functions, unit ids, an address range), one not. One
//! connection per run, requests one at a time (read 4 holding registers),
//! interleaved runs, medians of p50 and p99. Target: guarded p99 within
//! 10 % of unguarded. The PLC is a minimal Modbus server written here (it
//! answers every read with zeros), so the server adds as little as possible.
//!
//! DICOM: a study of `IMAGES` CT images of 3 MiB each stored by dcmtk
//! `storescu` (one association) from the CT through the example's guarded
//! flow (AE titles, SOP classes, commands; QUIC tunnel) and through an
//! unguarded flow of the same path, to two dcmtk `storescp --ignore` (which
//! receive every byte and write nothing), interleaved runs, medians of
//! throughput and of the edge's CPU seconds per GiB. Target: guarded
//! throughput at least 0.95x unguarded.
//!
//! `sudo cargo bench -p ward-tests --bench guards` (root: namespaces)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ward_tests::harness::TempDir;
use ward_tests::load::{cpu_seconds, in_netns, median};
use ward_tests::peers::{dcmtk, make_dicom};
use ward_tests::topology::{Bg, Hospital, cmd_in, storescp_in};

const RUNS: usize = 5;
const REQUESTS: usize = 5_000;
/// Images of the DICOM study (each 1024 x 1024 RGB, 3 MiB).
const IMAGES: usize = 100;

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
    // An unguarded twin of the CT's guarded flow, to a second PACS port.
    let mut policy = std::fs::read_to_string(&h.policy).expect("policy");
    policy.push_str(
        "\n[services.pacs-plain]\naddress = \"203.0.113.5:105\"\nvia = \"hub-dc-01\"\nprotocol = \"dicom\"\n\n\
         [[flows]]\nname = \"ct2-to-pacs-plain\"\nfrom = \"ct-scanner-2\"\nto = \"pacs-plain\"\n\
         listen = \"198.51.100.1:105\"\ntransport = \"quic\"\n",
    );
    std::fs::write(&h.policy, policy).expect("policy");
    plc(h.srv.name(), "203.0.113.7:502".parse().expect("addr"));
    let data = TempDir::new("gb-data");
    let _pacs: Vec<Bg> = [104, 105]
        .iter()
        .map(|port| storescp_in(&h.srv, *port, &data.join("pacs"), &["--ignore"]))
        .collect();
    let _hub = h.start_hub();
    let edge = h.start_edge("");
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
    cstore(&h, &data, edge.pid());
}

/// The DICOM study through the unguarded and the guarded flow.
fn cstore(h: &Hospital, data: &TempDir, edge: u32) {
    let image = make_dicom(data, 1024);
    let bytes = std::fs::metadata(&image).expect("image").len() * IMAGES as u64;
    let store = |port: u16| -> (f64, f64) {
        let cpu = cpu_seconds(&[edge]);
        let start = Instant::now();
        let out = cmd_in(&h.ct, dcmtk("storescu"))
            .args(["-aec", "PACS", "-aet", "CT-SCANNER-2", "-R"])
            .args(["--repeat", &IMAGES.to_string()])
            .args(["198.51.100.1", &port.to_string()])
            .arg(&image)
            .output()
            .expect("storescu");
        let secs = start.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "storescu to port {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gib = bytes as f64 / (1u64 << 30) as f64;
        (
            bytes as f64 / secs / 1e6,
            (cpu_seconds(&[edge]) - cpu) / gib,
        )
    };
    let paths = [("unguarded", 105), ("guarded", 104)];
    for (_, port) in paths {
        store(port); // warm-up
    }
    let mut mbps = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (t, c) = store(paths[i].1);
            mbps[i].push(t);
            cpu[i].push(c);
        }
    }
    println!(
        "\nDICOM C-STORE of {IMAGES} CT images ({:.0} MB) on one association, CT -> edge -> QUIC tunnel -> hub -> storescp --ignore, {RUNS} runs, medians",
        bytes as f64 / 1e6
    );
    println!("| flow | MB/s | edge CPU s/GiB |\n|---|---|---|");
    let m = |v: &Vec<f64>| median(v.clone());
    for (i, (name, _)) in paths.iter().enumerate() {
        println!("| {name} | {:.0} | {:.2} |", m(&mbps[i]), m(&cpu[i]));
    }
    let ratio = m(&mbps[1]) / m(&mbps[0]);
    println!(
        "guarded / unguarded throughput {ratio:.3}; target (>= 0.95): {}",
        if ratio >= 0.95 { "met" } else { "MISSED" }
    );
    println!("raw MB/s unguarded {:?} guarded {:?}", mbps[0], mbps[1]);
}
