//! `wardctl report` on the example hospital, with evidence from its two
//! running gateways (the hub's over its admin socket, the edge's through a
//! file `wardctl evidence` wrote, as an offline admin machine gets it), the
//! KEV excerpt and the vendor's CSAF VEX document in `tests/data`:
//!
//! - JSON: every field the report promises, for the CT (KEV-listed
//!   vulnerabilities, past end of support, its guarded flow, evidence of
//!   the drops the test caused, residual risks) and the site summary;
//! - HTML in a real browser: headless Chromium (Debian's) loads it, prints
//!   it to PDF and takes a screenshot; no console message (a page that
//!   logs an error shows the check can fail), every device has its
//!   section, every table has header cells, nothing is fetched;
//! - CycloneDX 1.6 validated by cyclonedx-python-lib's strict JSON
//!   validator; FHIR R5 validated by `fhir.resources`.
//!
//! Needs root (namespaces); skips elsewhere, fails under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use ward_tests::harness::{TempDir, binary};
use ward_tests::peers::make_dicom;
use ward_tests::topology::{Hospital, pings, storescp_in, storescu_in};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

fn wardctl(args: &[&str]) -> Output {
    Command::new(binary("wardctl"))
        .args(args)
        .output()
        .expect("wardctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Debian's Chromium.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium (apt install chromium; tests/setup.sh does)")
}

/// Run headless Chromium on `page` with `args`; its output.
fn headless(page: &Path, args: &[&str]) -> Output {
    let profile = TempDir::new("chromium-profile");
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--no-first-run", "--disable-extensions"])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.join("p").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium")
}

/// Console messages Chromium logged while loading `page`.
fn console_messages(page: &Path) -> Vec<String> {
    let out = headless(page, &["--dump-dom"]);
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_owned)
        .collect()
}

/// The DOM after load, read with Python's HTML parser: device sections,
/// and tables without header cells.
const DOM_CHECK: &str = r#"
import json, sys
from html.parser import HTMLParser
class P(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.tables, self.stack, self.fetches = [], [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("id", "").startswith("device-"):
            self.sections.append(a["id"][7:])
        if tag == "table":
            self.tables.append(0)
            self.stack.append(len(self.tables) - 1)
        if tag == "th" and self.stack:
            self.tables[self.stack[-1]] += 1
        for k in ("src", "href"):
            if k in a and "://" in a[k]:
                self.fetches.append(a[k])
        if tag == "link":
            self.fetches.append(a.get("href", "link"))
    def handle_endtag(self, tag):
        if tag == "table" and self.stack:
            self.stack.pop()
p = P()
p.feed(sys.stdin.read())
print(json.dumps({"sections": p.sections, "tables": len(p.tables), "without_th": sum(1 for t in p.tables if t == 0), "fetches": p.fetches}))
"#;

fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

#[test]
fn report_of_the_example_hospital() {
    let Ok(h) = Hospital::build("rp") else {
        return;
    };
    let dir = TempDir::new("rp-out");
    let study_dir = TempDir::new("rp-data");
    let study = make_dicom(&study_dir, 32);
    let _pacs = storescp_in(&h.srv, 104, &study_dir.join("pacs"), &[]);
    let _hub = h.start_hub();
    let edge = h.start_edge("");
    let stored = storescu_in(&h.ct, "198.51.100.1", 104, &study, &[]);
    assert!(stored.status.success(), "{}", text(&stored));
    // Lateral attempts: dropped and counted for the CT.
    assert!(!pings(&h.ct, "198.51.100.18"));
    std::thread::sleep(Duration::from_millis(300));

    let edge_sock = h.socket("edge-01");
    let hub_sock = h.socket("hub-dc-01");
    let evidence = dir.join("edge-evidence.json");
    let ev = wardctl(&["--socket", edge_sock.to_str().expect("path"), "evidence"]);
    assert!(ev.status.success(), "{}\n{}", text(&ev), edge.log());
    std::fs::write(&evidence, &ev.stdout).expect("evidence");

    let policy = h.policy.to_str().expect("path").to_owned();
    let (kev, csaf) = (data("kev.json"), data("csaf-acme-somascan.json"));
    let report = |format: &str, out: &Path| {
        let o = wardctl(&[
            "report",
            "--policy",
            &policy,
            "--from",
            hub_sock.to_str().expect("path"),
            "--evidence",
            evidence.to_str().expect("path"),
            "--kev",
            kev.to_str().expect("path"),
            "--csaf",
            csaf.to_str().expect("path"),
            "--today",
            "2026-12-05",
            "--format",
            format,
            "--out",
            out.to_str().expect("path"),
        ]);
        assert!(o.status.success(), "report --format {format}: {}", text(&o));
    };

    // JSON: the fields, for the CT and the site.
    let json_file = dir.join("report.json");
    report("json", &json_file);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).expect("json")).expect("json");
    assert_eq!(r["format"], 1);
    assert_eq!(r["site"], "st-mary.example");
    let ct = r["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == "ct-scanner-2")
        .expect("the CT")
        .clone();
    assert_eq!(ct["vendor"], "Acme Medical");
    assert_eq!(ct["firmware"], "VA48C (Windows 7 embedded)");
    assert_eq!(ct["gateway"], "edge-01");
    assert_eq!(ct["interface"], "dev0");
    assert_eq!(ct["lifecycle"]["stage"], "end-of-support");
    assert_eq!(ct["lifecycle"]["ends"], "2024-03-31");
    assert_eq!(ct["lifecycle"]["days_left"], -979, "{ct}");
    assert_eq!(ct["lifecycle"]["past_end_of_support"], true);
    let vulns: Vec<(String, bool)> = ct["vulnerabilities"]
        .as_array()
        .expect("vulns")
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_owned(),
                v["kev"] == true,
            )
        })
        .collect();
    assert_eq!(
        vulns,
        [
            ("CVE-2017-0144".to_owned(), true),
            ("CVE-2019-0708".to_owned(), true)
        ]
    );
    assert!(ct["sbom"].as_str().is_some_and(|s| s.contains("somascan")));
    let flow = &ct["controls"]["flows"][0];
    assert_eq!(flow["name"], "ct2-to-pacs");
    assert_eq!(flow["transport"], "quic");
    assert!(
        flow["guard"]
            .as_str()
            .is_some_and(|g| g.contains("CT Image Storage") && g.contains("C-STORE")),
        "{flow}"
    );
    assert_eq!(ct["controls"]["exceptions"][0]["name"], "ntp");
    assert!(
        ct["controls"]["exceptions"][0]["justification"]
            .as_str()
            .is_some_and(|j| j.contains("NTP"))
    );
    let ev = &ct["evidence"];
    assert!(ev["drops"].as_u64() >= Some(1), "{ev}");
    assert!(ev["last_seen"].is_string(), "{ev}");
    let kinds: Vec<&str> = ct["residual_risks"]
        .as_array()
        .expect("risks")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"eos-with-kev"), "{kinds:?}");
    assert!(kinds.contains(&"exception-without-guard"), "{kinds:?}");
    assert!(!kinds.contains(&"no-evidence"), "{kinds:?}");
    assert!(!kinds.contains(&"monitor-mode"), "{kinds:?}");
    let monitor = r["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == "monitor-icu-3")
        .expect("monitor");
    assert_eq!(
        monitor["controls"]["flows"][0]["window"],
        "Tue, Thu 02:00-04:00 (Europe/Berlin)"
    );
    assert_eq!(r["summary"]["devices"], 4);
    assert_eq!(r["summary"]["by_stage"]["end-of-support"], 1);
    assert_eq!(r["summary"]["with_kev"], 1);
    assert_eq!(r["summary"]["gateways_with_evidence"], 2);
    for g in r["gateways"].as_array().expect("gateways") {
        let e = &g["evidence"];
        assert_eq!(e["policy_matches"], true, "{g}");
        assert_eq!(e["audit_intact"], true, "{g}");
        assert!(e["audit_records"].as_u64() >= Some(1), "{g}");
        // Test certificates live a day.
        assert_eq!(e["certificate_days_left"], 0, "{g}");
        assert!(
            e["certificate_not_after"]
                .as_str()
                .is_some_and(|t| t.starts_with("20")),
            "{g}"
        );
    }

    // HTML in Chromium.
    let html = dir.join("report.html");
    report("html", &html);
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(!page.contains("<script"), "the report runs no script");
    let control = dir.join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><title>x</title><script>console.error('ward-console-control')</script>",
    )
    .expect("control");
    let seen = console_messages(&control);
    assert!(
        seen.iter().any(|l| l.contains("ward-console-control")),
        "the console check sees nothing: {seen:?}"
    );
    assert_eq!(console_messages(&html), Vec::<String>::new());
    let dom = headless(&html, &["--dump-dom"]);
    let mut check = Command::new("python3")
        .arg("-c")
        .arg(DOM_CHECK)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(&dom.stdout)
            .expect("write");
    }
    let checked = check.wait_with_output().expect("dom check");
    let dom: Value = serde_json::from_slice(&checked.stdout).expect("dom json");
    assert_eq!(
        dom["sections"],
        serde_json::json!([
            "ct-scanner-2",
            "monitor-icu-3",
            "pump-icu-01",
            "pump-icu-02"
        ]),
        "{dom}"
    );
    assert!(dom["tables"].as_u64() >= Some(20), "{dom}");
    assert_eq!(dom["without_th"], 0, "{dom}");
    assert_eq!(dom["fetches"], serde_json::json!([]), "{dom}");
    let pdf = dir.join("report.pdf");
    let printed = headless(&html, &[&format!("--print-to-pdf={}", pdf.display())]);
    let bytes = std::fs::read(&pdf).unwrap_or_default();
    assert!(
        bytes.starts_with(b"%PDF") && bytes.len() > 20_000,
        "no PDF ({} bytes): {}",
        bytes.len(),
        text(&printed)
    );
    let pages = bytes.windows(10).filter(|w| w == b"/Type /Pag").count();
    assert!(
        pages >= 5,
        "the PDF has {pages} pages objects: one per device and the site"
    );
    let shot = dir.join("report.png");
    headless(
        &html,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 30_000,
        "no screenshot"
    );
    if let Ok(keep) = std::env::var("WARD_REPORT_DIR") {
        for f in [&html, &pdf, &shot] {
            std::fs::copy(f, Path::new(&keep).join(f.file_name().expect("name"))).expect("keep");
        }
    }

    // CycloneDX 1.6, strictly validated.
    let cdx = dir.join("report.cdx.json");
    report("cyclonedx", &cdx);
    let v = python(
        "import sys\nfrom cyclonedx.validation.json import JsonStrictValidator\nfrom cyclonedx.schema import SchemaVersion\ne = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\nprint(e)\nsys.exit(1 if e else 0)",
        &[cdx.to_str().expect("path")],
    );
    assert!(v.status.success(), "CycloneDX 1.6 schema: {}", text(&v));
    let bom: Value =
        serde_json::from_str(&std::fs::read_to_string(&cdx).expect("cdx")).expect("json");
    assert_eq!(bom["components"].as_array().map(Vec::len), Some(4));
    assert!(
        bom["components"]
            .as_array()
            .expect("components")
            .iter()
            .all(|c| c["type"] == "device")
    );
    let bluekeep = bom["vulnerabilities"]
        .as_array()
        .expect("vulnerabilities")
        .iter()
        .find(|v| v["id"] == "CVE-2019-0708")
        .expect("CVE-2019-0708");
    assert_eq!(bluekeep["affects"][0]["ref"], "device:ct-scanner-2");

    // FHIR R5 Devices, validated by fhir.resources.
    let fhir = dir.join("report.fhir.json");
    report("fhir", &fhir);
    let v = python(
        "import json, sys\nfrom fhir.resources.bundle import Bundle\nfrom fhir.resources.device import Device\ntext = open(sys.argv[1]).read()\nb = Bundle.model_validate_json(text)\ndevices = [Device.model_validate(e['resource']) for e in json.loads(text)['entry']]\nprint(len(devices), b.type, sorted(d.identifier[0].value for d in devices), devices[0].manufacturer, devices[0].modelNumber)",
        &[fhir.to_str().expect("path")],
    );
    assert!(v.status.success(), "FHIR R5: {}", text(&v));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(
        said.starts_with("4 collection ['ct-scanner-2', 'monitor-icu-3', 'pump-icu-01', 'pump-icu-02'] Acme Medical SomaScan 64"),
        "{said}"
    );
}
