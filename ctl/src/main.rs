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
mod online;
mod policy;
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
    /// Check the audit trail's hash chain (offline).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `wardctl man | man -l -`.
    Man,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy::run(cmd, cli.json),
        Command::Ca(args) => ca::run(args, cli.json),
        Command::Status => online::run(online::Verb::Status, cli.socket, cli.json),
        Command::Device(c) => online::run(online::Verb::Device(c), cli.socket, cli.json),
        Command::Flow(c) => online::run(online::Verb::Flow(c), cli.socket, cli.json),
        Command::Reload => online::run(online::Verb::Reload, cli.socket, cli.json),
        Command::Audit(AuditCommand::Verify { file }) => audit_verify(&file, cli.json),
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
