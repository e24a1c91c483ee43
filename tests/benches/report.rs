//! `wardctl report` for a site of 1,000 devices (5 flows each, every device
//! with an inventory record, a KEV-listed CVE and the vendor's CSAF VEX
//! document), per output format: wall time of the whole command (read and
//! validate the policy, read the advisories, build, render, write),
//! medians of 7 runs. Target: HTML under 1 s.
//!
//! `cargo bench -p ward-tests --bench report`

use std::process::Command;
use std::time::{Duration, Instant};

use ward_tests::harness::{TempDir, binary};
use ward_tests::synthetic;

const DEVICES: usize = 1_000;
const RUNS: usize = 7;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = TempDir::new("report-bench");
    let text = synthetic::policy(DEVICES, 5).replace(
        "class = \"bench\"\n",
        "class = \"bench\"\nvendor = \"Acme Medical\"\nmodel = \"SomaScan 64\"\nfirmware = \"VA48C (Windows 7 embedded)\"\nsupport = { stage = \"end-of-support\", ends = \"2024-03-31\" }\nvulnerabilities = [\"CVE-2019-0708\"]\nsbom = \"urn:example:sbom\"\n",
    );
    assert_eq!(text.matches("vendor = ").count(), DEVICES);
    let policy = dir.join("site.toml");
    std::fs::write(&policy, text).expect("policy");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let wardctl = binary("wardctl");
    println!("wardctl report, {DEVICES} devices, medians of {RUNS} runs");
    println!("| format | wall time | output |\n|---|---|---|");
    for format in ["html", "json", "cyclonedx", "fhir"] {
        let out = dir.join(&format!("report.{format}"));
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let o = Command::new(&wardctl)
                .arg("report")
                .arg("--policy")
                .arg(&policy)
                .arg("--kev")
                .arg(data.join("kev.json"))
                .arg("--csaf")
                .arg(data.join("csaf-acme-somascan.json"))
                .args(["--today", "2026-12-05", "--format", format, "--out"])
                .arg(&out)
                .output()
                .expect("wardctl");
            times.push(t.elapsed());
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        times.sort();
        let m: Duration = times[RUNS / 2];
        let size = std::fs::metadata(&out).map_or(0, |m| m.len());
        let target = if format == "html" {
            if m < Duration::from_secs(1) {
                " (target < 1 s: met)"
            } else {
                " (target < 1 s: MISSED)"
            }
        } else {
            ""
        };
        println!(
            "| {format} | {:.0} ms{target} | {:.1} MB |",
            m.as_secs_f64() * 1e3,
            size as f64 / 1e6
        );
    }
}
