//! `wardd`: the Ward gateway daemon. Wiring only: arguments, tracing, then
//! `ward_gateway::daemon`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ward_gateway::config::{Config, Overrides};
use ward_gateway::daemon::StartError;

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

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        gateway: args.gateway,
        policy: args.policy,
    };
    match args.command {
        Some(Command::Check) => {
            match ward_gateway::daemon::check(args.config.as_deref(), &overrides) {
                Ok((config, plan)) => {
                    println!(
                        "ok: gateway {} ({}), policy {}, {} listeners, tunnel server {}",
                        plan.gateway,
                        plan.identity,
                        config.policy.display(),
                        plan.listeners.len(),
                        plan.tunnel_server
                            .map_or("none".to_owned(), |a| a.to_string())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wardd: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        None => {
            let config = match Config::load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("wardd: {e}");
                    return ExitCode::from(StartError::from(e).exit_code());
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.workers)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("wardd: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(ward_gateway::daemon::run(config, args.config, overrides)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "wardd cannot start");
                    eprintln!("wardd: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
