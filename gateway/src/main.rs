//! `wardd`: the Ward gateway daemon. Wiring only: arguments, logging, the
//! runtime, signals turned into a shutdown future and a reload stream, and
//! one exit point.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use ward_gateway::config::{self, Config, Overrides};
use ward_gateway::control::Sources;
use ward_gateway::daemon::Gateway;
use ward_gateway::ops::telemetry;

/// Ward gateway daemon.
#[derive(Debug, Parser)]
#[command(name = "wardd", version, about)]
struct Args {
    /// Configuration file (default /etc/ward/ward.toml, optional).
    #[arg(long, short, global = true, env = "WARD_CONFIG")]
    config: Option<PathBuf>,
    /// This gateway's name in the policy (overrides the configuration).
    #[arg(long, global = true)]
    gateway: Option<String>,
    /// Policy file (overrides the configuration).
    #[arg(long, global = true)]
    policy: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate configuration, policy and TLS files, then exit (78: bad configuration, 65: bad policy).
    Check,
}

/// A failure before or while starting, with its exit code.
struct Failure {
    message: String,
    code: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = Sources {
        config_file: args.config.clone(),
        overrides: Overrides {
            gateway: args.gateway,
            policy: args.policy,
        },
    };
    let result = match args.command {
        Some(Command::Check) => check(&sources),
        None => run(sources),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("wardd: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn check(sources: &Sources) -> Result<(), Failure> {
    let loaded =
        config::load(sources.config_file.as_deref(), &sources.overrides).map_err(|e| Failure {
            message: e.to_string(),
            code: e.exit_code(),
        })?;
    let plan = &loaded.plan;
    println!(
        "ok: gateway {} ({}), policy {}, {} listeners, tunnel server {}",
        plan.gateway,
        plan.identity,
        loaded.config.policy.display(),
        plan.listeners.len(),
        plan.tunnel_server
            .map_or("none".to_owned(), |a| a.to_string())
    );
    Ok(())
}

fn run(sources: Sources) -> Result<(), Failure> {
    let config =
        Config::load(sources.config_file.as_deref(), &sources.overrides).map_err(|e| Failure {
            message: e.to_string(),
            code: 78,
        })?;
    // Logging starts once the configuration says where spans go; errors
    // before this point go to stderr only.
    let guard =
        telemetry::init(config.otlp.as_ref()).map_err(|message| Failure { message, code: 78 })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
        .map_err(|e| Failure {
            message: format!("cannot start the runtime: {e}"),
            code: 1,
        })?;
    let result = runtime.block_on(async {
        let (shutdown, reloads) = signals()?;
        let gateway = Gateway::start(config, sources, &guard).await.map_err(|e| {
            tracing::error!(error = %e, "wardd cannot start");
            Failure {
                message: e.to_string(),
                code: e.exit_code(),
            }
        })?;
        gateway.serve(shutdown, reloads).await;
        Ok(())
    });
    drop(guard);
    result
}

/// SIGTERM or SIGINT → the shutdown future; SIGHUP → a reload trigger.
fn signals() -> Result<(impl Future<Output = ()>, mpsc::Receiver<String>), Failure> {
    let handler = |kind| {
        signal(kind).map_err(|e| Failure {
            message: format!("cannot handle signals: {e}"),
            code: 1,
        })
    };
    let (mut term, mut int, mut hup) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
        handler(SignalKind::hangup())?,
    );
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send("SIGHUP".to_owned()).await.is_err() {
                return;
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    Ok((shutdown, rx))
}
