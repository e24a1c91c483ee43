//! Policy benchmark: compile+render time for 1,000 and 10,000 devices (5 flows
//! each), and nft apply time for 1,000 devices in a network namespace beside a
//! plain `nft -j -f` of the same JSON, in the same run. Prints medians and ratios.
//!
//! `sudo cargo bench -p ward-tests --bench policy` (apply needs root; without it
//! that part is skipped).

use std::process::Command;
use std::time::{Duration, Instant};

use ward_gateway::control::nft::Nft;
use ward_tests::netns::Netns;
use ward_tests::synthetic;

const FLOWS_PER_DEVICE: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    println!("ward policy benchmark ({FLOWS_PER_DEVICE} flows per device, medians)");
    println!(
        "{:<10} {:>14} {:>16} {:>12} {:>10} {:>10}",
        "devices", "parse+validate", "compile+render", "nft bytes", "rules", "target"
    );
    for (devices, runs) in [(1_000, 21), (10_000, 9)] {
        let text = synthetic::policy(devices, FLOWS_PER_DEVICE);
        let t = Instant::now();
        let (policy, _) = ward_policy::load("synthetic.toml", &text, &Default::default())
            .expect("valid synthetic policy");
        let load = t.elapsed();
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut rules = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
            let batch = ward_policy::nft::render(&plan);
            let json = serde_json::to_string(&batch).expect("nft batch serializes");
            times.push(t.elapsed());
            bytes = json.len();
            rules = batch.objects.len();
            std::hint::black_box(json);
        }
        let m = median(times);
        let target = if devices == 10_000 {
            if m <= Duration::from_millis(100) {
                "<=100ms ok"
            } else {
                "<=100ms MISS"
            }
        } else {
            ""
        };
        println!(
            "{devices:<10} {:>14} {:>16} {bytes:>12} {rules:>10} {target:>10}",
            ms(load),
            ms(m)
        );
    }

    apply_bench(1_000);
}

fn apply_bench(devices: usize) {
    let ns = match Netns::new("bench") {
        Ok(ns) => ns,
        Err(skip) => {
            println!("apply: skipped ({})", skip.0);
            return;
        }
    };
    let text = synthetic::policy(devices, FLOWS_PER_DEVICE);
    let (policy, _) =
        ward_policy::load("synthetic.toml", &text, &Default::default()).expect("valid");
    let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
    let path = std::env::temp_dir().join(format!("ward-bench-{}.json", std::process::id()));
    std::fs::write(&path, ward_policy::nft::render_json(&plan)).expect("write batch");
    let nft = Nft::in_netns(ns.name());

    let runs = 11;
    let mut ward = Vec::new();
    let mut plain = Vec::new();
    // Alternate the two so drift on the machine hits both alike. Every run
    // replaces a loaded table (after the first), as a reload does.
    for _ in 0..runs {
        let t = Instant::now();
        nft.apply_json(&ward_policy::nft::render_json(&plan))
            .expect("ward apply");
        ward.push(t.elapsed());

        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "-j", "-f"])
            .arg(&path)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "plain nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        plain.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    let (w, p) = (median(ward), median(plain));
    let ratio = w.as_secs_f64() / p.as_secs_f64();
    println!(
        "apply {devices} devices: ward (render + nft -j -f -) {} | plain nft -j -f FILE {} | ratio {ratio:.2} (target <= 1.20: {})",
        ms(w),
        ms(p),
        if ratio <= 1.2 { "ok" } else { "MISS" }
    );
}
