//! `wardd check`: exit codes and messages for bad configuration and policy,
//! before any port is bound.

use std::process::Command;

fn wardd(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wardd"));
    c.args(args)
        .env_remove("WARD_GATEWAY")
        .env("WARD_LOG", "error");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run wardd");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wardd-check-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy/examples/hospital.toml"
);

/// An unknown key in the config file is exit 78, naming the key and the file.
#[test]
fn unknown_config_key_is_78() {
    let d = temp("unknown");
    let cfg = d.join("ward.toml");
    std::fs::write(&cfg, "gateway = \"edge-01\"\n[tls]\ncrt = \"x\"\n").expect("write");
    let (code, out) = wardd(&["check", "--config", cfg.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("crt") && out.contains(cfg.to_str().expect("utf8")),
        "{out}"
    );
}

/// A bad duration from the environment names the key and the variable.
#[test]
fn bad_env_value_is_78() {
    let d = temp("env");
    let cfg = d.join("ward.toml");
    std::fs::write(&cfg, "gateway = \"edge-01\"\n").expect("write");
    let (code, out) = wardd(
        &["check", "--config", cfg.to_str().expect("utf8")],
        &[("WARD_LIMITS__DRAIN_TIMEOUT", "soon")],
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("limits.drain_timeout") && out.contains("WARD_LIMITS__DRAIN_TIMEOUT"),
        "{out}"
    );
}

/// A broken policy is exit 65 with file, line and key.
#[test]
fn bad_policy_is_65() {
    let d = temp("policy");
    let policy = d.join("policy.toml");
    let text = std::fs::read_to_string(EXAMPLE)
        .expect("example")
        .replace("to = \"pacs\"", "to = \"pac\"");
    std::fs::write(&policy, &text).expect("write");
    let cfg = d.join("ward.toml");
    std::fs::write(
        &cfg,
        format!("gateway = \"edge-01\"\npolicy = \"{}\"\n", policy.display()),
    )
    .expect("write");
    let (code, out) = wardd(&["check", "--config", cfg.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(65), "{out}");
    let line = text[..text.find("to = \"pac\"").expect("edit")]
        .matches('\n')
        .count()
        + 1;
    assert!(
        out.contains(&format!("policy.toml:{line}:"))
            && out.contains("flows[0].to")
            && out.contains("did you mean \"pacs\""),
        "{out}"
    );
}

/// A gateway name the policy lacks, and missing TLS files, are configuration errors.
#[test]
fn unknown_gateway_and_missing_tls_are_78() {
    let (code, out) = wardd(&["check", "--gateway", "edge-1", "--policy", EXAMPLE], &[]);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("did you mean \"edge-01\""), "{out}");
    let (code, out) = wardd(
        &["check", "--gateway", "edge-01", "--policy", EXAMPLE],
        &[("WARD_TLS__CERT", "/nonexistent/gw.crt")],
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("/nonexistent/gw.crt"), "{out}");
}

/// A worker count out of range stops `wardd` itself (not only `check`) with
/// exit 78 before it starts its runtime, naming the key and the file.
#[test]
fn bad_worker_count_is_78() {
    let d = temp("workers");
    let cfg = d.join("ward.toml");
    std::fs::write(&cfg, "gateway = \"edge-01\"\nworkers = 0\n").expect("write");
    for args in [&["check", "--config"][..], &["--config"][..]] {
        let mut args = args.to_vec();
        args.push(cfg.to_str().expect("utf8"));
        let (code, out) = wardd(&args, &[]);
        assert_eq!(code, Some(78), "{args:?}: {out}");
        assert!(
            out.contains("workers: 0 is not between 1 and 256")
                && out.contains(cfg.to_str().expect("utf8")),
            "{args:?}: {out}"
        );
    }
}

/// A service CA this gateway would use (here the TLS PACS behind the hub)
/// that is missing, or is not PEM, is exit 78 naming the policy file, line,
/// key and path; a gateway that does not use that service is not held to it.
#[test]
fn missing_or_bad_service_ca_is_78() {
    let d = temp("service-ca");
    let garbage = d.join("not-a-ca.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    for (ca, why) in [
        ("/nonexistent/pacs-ca.pem".to_owned(), "No such file"),
        (garbage.display().to_string(), "no certificate found"),
    ] {
        let policy = d.join("policy.toml");
        let text = std::fs::read_to_string(EXAMPLE).expect("example").replace(
            "via = \"hub-dc-01\"\nprotocol = \"dicom\"",
            &format!(
                "via = \"hub-dc-01\"\nprotocol = \"dicom\"\ntls = {{ ca = \"{ca}\", server_name = \"pacs.example\" }}"
            ),
        );
        let line = text
            .lines()
            .position(|l| l.contains("pacs.example"))
            .expect("tls line")
            + 1;
        std::fs::write(&policy, &text).expect("write");
        let policy = policy.to_str().expect("utf8");
        let (code, out) = wardd(
            &["check", "--gateway", "hub-dc-01", "--policy", policy],
            &[],
        );
        assert_eq!(code, Some(78), "{out}");
        let at = format!("{policy}:{line}:");
        for needle in [at.as_str(), "services.pacs.tls.ca", ca.as_str(), why] {
            assert!(out.contains(needle), "{needle:?} missing from: {out}");
        }
        // The edge reaches the PACS through the hub: the CA is not its file.
        let (_, out) = wardd(&["check", "--gateway", "edge-01", "--policy", policy], &[]);
        assert!(!out.contains("services.pacs.tls.ca"), "{out}");
    }
}
