//! Load inside network namespaces, for benchmarks: a thread enters a
//! namespace (`setns` on `/run/netns/NAME`), and the sockets it makes stay
//! in that namespace whatever thread uses them later.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Move the calling thread into network namespace `ns`.
pub fn enter(ns: &str) {
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Run `f` on a thread inside `ns`.
pub fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A sink on `addr` inside `ns`, for as long as the process runs: each
/// connection is read to its end, then answered with one byte.
pub fn sink(ns: &str, addr: SocketAddr) {
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind the sink"));
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k");
            });
        }
    });
}

/// Send `bytes` to `addr` from inside `ns` on one connection and wait for
/// the sink's answer: Gb/s.
pub fn bulk(ns: &str, addr: SocketAddr, bytes: u64) -> f64 {
    in_netns(ns, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let buf = vec![0u8; 256 << 10];
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
        let _ = s.shutdown(Shutdown::Write);
        let mut k = [0u8; 1];
        s.read_exact(&mut k).expect("the sink's answer");
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
    })
}

/// New connections per second to `addr` from inside `ns` over `period`,
/// `threads` at a time; each connects, half-closes and waits for the
/// sink's byte, so every one crosses the whole path.
pub fn connects(ns: &str, addr: SocketAddr, period: Duration, threads: usize) -> f64 {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                enter(ns);
                while start.elapsed() < period {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.shutdown(Shutdown::Write);
                    let mut k = [0u8; 1];
                    if s.read_exact(&mut k).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The median of `v` (upper median for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// CPU time (user + system, including reaped children such as socat's
/// per-connection forks) of `pids` so far, in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|s| {
            // Fields after the parenthesised command name; utime is field 14.
            let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            (11..15)
                .filter_map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
                .sum::<f64>()
                / tick
        })
        .sum()
}

/// Resident memory of `pid` in bytes (VmRSS).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}
