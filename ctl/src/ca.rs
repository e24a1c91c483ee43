//! `wardctl ca init|issue|revoke|crl|show`: the site CA, offline.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use ward_pki::{Ca, Kind, Validity};

use crate::Exit;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// A Ward gateway: `spiffe://<trust-domain>/gateway/<name>`.
    Gateway,
    /// A client identity: `spiffe://<trust-domain>/client/<name>`.
    Client,
    /// A server that speaks TLS itself and connects out with the same
    /// certificate (a PACS's C-MOVE return associations): server and client
    /// auth, `--dns`/`--ip` required.
    Server,
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// CA directory.
    #[arg(
        long,
        global = true,
        env = "WARD_PKI_DIR",
        default_value = "/etc/ward/pki"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the site CA (ECDSA P-256; keys written 0600).
    Init {
        /// SPIFFE trust domain of the site, e.g. st-mary.example.
        #[arg(long)]
        trust_domain: String,
    },
    /// Issue a certificate and key for a gateway, a client identity, or a
    /// TLS server that is also a client (a PACS's return associations).
    Issue {
        /// What the certificate identifies.
        kind: KindArg,
        /// Gateway or client name, as in the policy.
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = ward_pki::DEFAULT_DAYS)]
        days: u32,
        /// A DNS name the certificate also carries (repeatable): for a
        /// gateway whose access listener standard TLS clients reach by name,
        /// or a server.
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// An IP address the certificate also carries (repeatable): for a
        /// gateway whose access listener standard TLS clients reach by
        /// address, or a server.
        #[arg(long, value_name = "ADDRESS")]
        ip: Vec<std::net::IpAddr>,
    },
    /// Revoke by serial (hex) or by name, and rewrite the CRL.
    Revoke {
        /// Serial number (hex) or gateway/client name.
        serial_or_name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Rewrite the CRL with a fresh validity (it lasts 30 days).
    Crl,
    /// Show the CA and every certificate it issued.
    Show,
}

pub fn run(args: CaArgs, json: bool) -> anyhow::Result<Exit> {
    let dir = args.dir;
    match args.command {
        CaCommand::Init { trust_domain } => {
            let ca = Ca::init(&dir, &trust_domain)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"dir": dir, "trust_domain": ca.trust_domain(), "ca": ca.cert_path(), "crl": ca.crl_path()})
                );
            } else {
                println!("site CA for {} in {}", ca.trust_domain(), dir.display());
                println!("  certificate {}", ca.cert_path().display());
                println!("  key         {} (0600)", dir.join("ca.key").display());
                println!("  crl         {}", ca.crl_path().display());
            }
        }
        CaCommand::Issue {
            kind,
            name,
            days,
            dns,
            ip,
        } => {
            let mut ca = Ca::open(&dir)?;
            let kind = match kind {
                KindArg::Gateway => Kind::Gateway,
                KindArg::Client => Kind::Client,
                KindArg::Server => Kind::Server,
            };
            let issued = ca.issue_with_names(
                kind,
                &name,
                Validity::days(days),
                &ward_pki::Names { dns, ip },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                println!("{} serial {}", issued.identity, issued.serial);
                println!("  valid {} .. {}", issued.not_before, issued.not_after);
                println!("  certificate {}", issued.cert.display());
                println!("  key         {} (0600)", issued.key.display());
            }
        }
        CaCommand::Revoke {
            serial_or_name,
            yes,
        } => {
            let mut ca = Ca::open(&dir)?;
            if !yes && !confirm(&format!("revoke {serial_or_name:?} in {}?", dir.display()))? {
                eprintln!("not revoked");
                return Ok(Exit::Failure);
            }
            let revoked = ca.revoke(&serial_or_name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&revoked)?);
            } else {
                for r in &revoked {
                    println!("revoked {} serial {}", r.identity, r.serial);
                }
                println!(
                    "CRL written to {}; copy it to the gateways (they reload it)",
                    ca.crl_path().display()
                );
            }
        }
        CaCommand::Crl => {
            let mut ca = Ca::open(&dir)?;
            let path = ca.write_crl()?;
            println!("{}", path.display());
        }
        CaCommand::Show => {
            let ca = Ca::open(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "dir": dir, "trust_domain": ca.trust_domain(), "ca": ca.cert_path(), "crl": ca.crl_path(), "issued": ca.issued(),
                    }))?
                );
            } else {
                println!("site CA for {} in {}", ca.trust_domain(), dir.display());
                println!(
                    "{:<48} {:<34} {:<22} status",
                    "identity", "serial", "not after"
                );
                for i in ca.issued() {
                    let status = i
                        .revoked
                        .as_ref()
                        .map_or("valid".to_owned(), |r| format!("revoked {r}"));
                    println!(
                        "{:<48} {:<34} {:<22} {status}",
                        i.identity, i.serial, i.not_after
                    );
                }
            }
        }
    }
    Ok(Exit::Ok)
}

pub fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} needs confirmation: pass --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
