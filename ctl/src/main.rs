//! `wardctl`: Ward's admin command line.
//!
//! Offline verbs (`policy check|compile|diff`, `ca`, `audit verify`) work on
//! files without a daemon; online verbs (`status`, `device`, `flow`,
//! `reload`) talk to `wardd`'s admin socket (`--socket`, `WARD_SOCKET`).
//! stdout carries data, stderr diagnostics; `--json` prints machine-readable
//! output. Exit codes (one exit point, [`Exit`]): 0 ok, 1 failure, 2 usage,
//! 65 invalid policy or data, 69 daemon unreachable, 78 invalid configuration.

#![forbid(unsafe_code)]

mod ca;
mod learn;
mod networkd;
mod online;
mod policy;
mod report;
mod sbom;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ward admin command line.
#[derive(Debug, Parser)]
#[command(name = "wardctl", version, about, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// The admin socket of the wardd to talk to.
    #[arg(long, global = true, env = "WARD_SOCKET", default_value = ward_api::DEFAULT_SOCKET)]
    socket: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, compile and compare site policy files (no daemon needed).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the site CA: init, issue, revoke, crl, show (offline).
    Ca(ca::CaArgs),
    /// The gateway's status: identity, mode, policy revision, last reload.
    Status,
    /// Devices behind the gateway; quarantine and release.
    #[command(subcommand)]
    Device(online::DeviceCommand),
    /// Live flows through the gateway.
    #[command(subcommand)]
    Flow(online::FlowCommand),
    /// Reload configuration, policy and certificates (like SIGHUP).
    Reload,
    /// What each device was seen talking to (learning mode); `observe export FILE` saves it.
    Observe(online::ObserveArgs),
    /// Read the audit trail (offline): check its chain, or show its records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `wardctl man | man -l -`.
    Man,
    /// The compensating controls Ward applies to each device, with evidence
    /// and residual risks (HTML, JSON, CycloneDX or FHIR).
    Report(report::ReportArgs),
    /// This gateway's evidence (JSON) for `wardctl report --evidence`.
    Evidence,
    /// Print the appliance's CycloneDX SBOM (or build one: `sbom generate`).
    Sbom {
        /// SBOM file to print.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        #[command(subcommand)]
        command: Option<sbom::SbomCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the chain and name the first record altered, removed or reordered.
    Verify {
        /// Audit trail (JSON lines).
        #[arg(default_value = "/var/lib/ward/audit.jsonl")]
        file: std::path::PathBuf,
    },
    /// Print the records, one line each (with --json, as the schema has them).
    Show {
        /// Audit trail (JSON lines).
        #[arg(default_value = "/var/lib/ward/audit.jsonl")]
        file: std::path::PathBuf,
        /// Only records of this kind: flow, handshake, policy, admin, certificate.
        #[arg(long)]
        kind: Option<String>,
    },
}

/// Process exit codes, from sysexits.h where one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any other failure.
    Failure = 1,
    /// Invalid policy or data (EX_DATAERR).
    DataErr = 65,
    /// The daemon cannot be reached (EX_UNAVAILABLE).
    Unavailable = 69,
}

fn audit_verify(file: &std::path::Path, json: bool) -> anyhow::Result<Exit> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading audit trail {}", file.display()))?;
    let result = ward_api::audit::verify(&text);
    if json {
        let v = match &result {
            Ok(n) => serde_json::json!({"file": file, "ok": true, "records": n}),
            Err(e) => serde_json::json!({"file": file, "ok": false, "error": e.to_string()}),
        };
        println!("{v}");
    }
    match result {
        Ok(n) => {
            if !json {
                println!("{}: {n} records, chain intact", file.display());
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("{}: chain broken: {e}", file.display());
            Ok(Exit::DataErr)
        }
    }
}

/// `wardctl audit show`: every record parsed with the trail's schema
/// (`ward_api::audit::Record`); records of 0.1.0 whose fields differ are
/// shown from their raw fields and marked.
fn audit_show(file: &std::path::Path, kind: Option<&str>, json: bool) -> anyhow::Result<Exit> {
    use anyhow::Context;
    use ward_api::audit::Record;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading audit trail {}", file.display()))?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (mut fields, typed) = match serde_json::from_str::<Record>(line) {
            Ok(r) => (serde_json::to_value(&r)?, true),
            Err(_) => (
                serde_json::from_str::<serde_json::Value>(line).with_context(|| {
                    format!("{}:{}: not an audit record", file.display(), n + 1)
                })?,
                false,
            ),
        };
        let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
        if kind.is_some_and(|k| field(&fields, "kind") != k) {
            continue;
        }
        if json {
            println!("{fields}");
            continue;
        }
        let head = format!(
            "{:>6} {} {:<11} {:<10}",
            fields["seq"],
            field(&fields, "time"),
            field(&fields, "kind"),
            field(&fields, "action")
        );
        let map = fields.as_object_mut().expect("a record is an object");
        for k in ["seq", "prev", "time", "kind", "action"] {
            map.remove(k);
        }
        let rest: Vec<String> = map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={v}"),
            })
            .collect();
        let mark = if typed { "" } else { " (0.1.0 record)" };
        println!("{head} {}{mark}", rest.join(" "));
    }
    Ok(Exit::Ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(policy::PolicyCommand::Apply {
            file,
            confirm_within,
        }) => online::run(
            online::Verb::Apply {
                file,
                confirm_within,
            },
            cli.socket,
            cli.json,
        ),
        Command::Policy(policy::PolicyCommand::Confirm) => {
            online::run(online::Verb::Confirm, cli.socket, cli.json)
        }
        Command::Policy(cmd) => policy::run(cmd, cli.json),
        Command::Ca(args) => ca::run(args, cli.json),
        Command::Status => online::run(online::Verb::Status, cli.socket, cli.json),
        Command::Device(c) => online::run(online::Verb::Device(c), cli.socket, cli.json),
        Command::Flow(c) => online::run(online::Verb::Flow(c), cli.socket, cli.json),
        Command::Reload => online::run(online::Verb::Reload, cli.socket, cli.json),
        Command::Observe(a) => online::run(online::Verb::Observe(a), cli.socket, cli.json),
        Command::Audit(AuditCommand::Verify { file }) => audit_verify(&file, cli.json),
        Command::Audit(AuditCommand::Show { file, kind }) => {
            audit_show(&file, kind.as_deref(), cli.json)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "wardctl",
                &mut std::io::stdout(),
            );
            Ok(Exit::Ok)
        }
        Command::Sbom { file, command } => sbom::run(command, file),
        Command::Report(args) => report::run(args, cli.json),
        Command::Evidence => online::run(online::Verb::Evidence, cli.socket, cli.json),
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => Ok(Exit::Ok),
                Err(e) => Err(e.into()),
            }
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wardctl: error: {e:#}");
            Exit::Failure
        }
    };
    ExitCode::from(code as u8)
}
