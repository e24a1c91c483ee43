//! `wardctl policy check|compile|networkd|diff`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use ward_policy::diag::Diagnostic;
use ward_policy::model::{Date, Policy};
use ward_policy::{Plan, Severity, Target, ValidateOptions};

use crate::Exit;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; prints every error and warning with file:line:column and key.
    Check {
        /// Policy file (TOML).
        file: PathBuf,
        /// Judge end-of-support dates as of this day (YYYY-MM-DD) instead of today.
        #[arg(long, value_name = "DATE")]
        today: Option<String>,
    },
    /// Show what one gateway runs: listeners, routes, authorization, nftables.
    Compile {
        /// Policy file (TOML).
        file: PathBuf,
        /// The gateway whose part to compile.
        #[arg(long, short)]
        gateway: String,
        /// Print the nftables JSON batch (input of `nft -j -f -`) instead of the plan.
        #[arg(long)]
        nft: bool,
    },
    /// Write the systemd-networkd files one gateway's insertion needs (bridge:
    /// the bridge and its ports; routed: the router addresses on the device
    /// ports) into a directory, e.g. /etc/systemd/network.
    Networkd {
        /// Policy file (TOML).
        file: PathBuf,
        /// The gateway.
        #[arg(long, short)]
        gateway: String,
        /// Where to write the files.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Suggest a policy from observed traffic (`wardctl observe export`):
    /// allows what was observed and nothing more. With --policy, the whole
    /// policy (mode set to enforce) with the additions; without, the
    /// additions alone, to append to the site policy.
    Suggest {
        /// Observations (`wardctl observe export FILE`).
        #[arg(long, value_name = "FILE")]
        observed: PathBuf,
        /// The policy in force.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Leave out flows to this address (ADDR or ADDR:PORT); repeatable.
        #[arg(long, value_name = "ADDR[:PORT]")]
        deny: Vec<String>,
    },
    /// Replay observed traffic against a candidate policy: each flow's
    /// verdict and rule, what would break, what was never used. Exit 0 when
    /// nothing observed would break, 1 otherwise.
    Simulate {
        /// Candidate policy.
        candidate: PathBuf,
        /// Observations (`wardctl observe export FILE`).
        #[arg(long, value_name = "FILE")]
        observed: PathBuf,
    },
    /// Put a policy in force on the running gateway (through its reload
    /// path); with --confirm-within, rolled back automatically unless
    /// `wardctl policy confirm` arrives in time (a restart does not cancel it).
    Apply {
        /// Policy file.
        file: PathBuf,
        /// Roll back unless confirmed within this long (e.g. 5m).
        #[arg(long, value_name = "DURATION", value_parser = crate::online::since_parser)]
        confirm_within: Option<std::time::Duration>,
    },
    /// Keep the policy a `policy apply --confirm-within` put in force.
    Confirm,
    /// Compare two policy files: services, and per gateway devices, flows,
    /// exceptions (each changed field, old -> new) and nftables rules.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
        /// List the nftables objects and rules added and removed (otherwise
        /// only counted).
        #[arg(long)]
        nft: bool,
    },
}

pub fn run(cmd: PolicyCommand, json: bool) -> anyhow::Result<Exit> {
    match cmd {
        PolicyCommand::Check { file, today } => {
            let today =
                match today {
                    Some(t) => Some(t.parse::<Date>().map_err(|()| {
                        anyhow::anyhow!("--today {t:?} is not a date (YYYY-MM-DD)")
                    })?),
                    None => Some(today_utc()),
                };
            check(&file, today, json)
        }
        PolicyCommand::Networkd { file, gateway, dir } => {
            let Some(plan) = plan_for(&file, &gateway, json)? else {
                return Ok(Exit::DataErr);
            };
            let files = match crate::networkd::files(&plan) {
                Ok(f) => f,
                Err(why) => {
                    eprintln!("{why}");
                    return Ok(Exit::DataErr);
                }
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in files {
                let path = dir.join(&name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(Exit::Ok)
        }
        PolicyCommand::Compile { file, gateway, nft } => {
            let Some(plan) = plan_for(&file, &gateway, json)? else {
                return Ok(Exit::DataErr);
            };
            if nft {
                let v: serde_json::Value =
                    serde_json::from_str(&ward_policy::nft::render_json(&plan))?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", render_plan(&plan));
            }
            Ok(Exit::Ok)
        }
        PolicyCommand::Suggest {
            observed,
            policy,
            deny,
        } => crate::learn::suggest(&observed, policy.as_deref(), &deny, json),
        PolicyCommand::Simulate {
            candidate,
            observed,
        } => crate::learn::simulate(&candidate, &observed, json),
        PolicyCommand::Apply { .. } | PolicyCommand::Confirm => {
            unreachable!("online policy verbs are run by online::run")
        }
        PolicyCommand::Diff { old, new, nft } => {
            let (Some(a), Some(b)) = (load_or_report(&old, json)?, load_or_report(&new, json)?)
            else {
                return Ok(Exit::DataErr);
            };
            let d = ward_policy::diff::diff(&a, &b);
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", render_diff(&d, nft));
            }
            Ok(Exit::Ok)
        }
    }
}

/// The plan of `gateway` in the policy `file`, or `None` after reporting
/// why there is none (invalid policy, unknown gateway).
pub fn plan_for(file: &Path, gateway: &str, json: bool) -> anyhow::Result<Option<Plan>> {
    let Some(policy) = load_or_report(file, json)? else {
        return Ok(None);
    };
    match ward_policy::compile(&policy, gateway) {
        Ok(plan) => Ok(Some(plan)),
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            Ok(None)
        }
    }
}

/// Today's date in UTC, from the system clock.
fn today_utc() -> Date {
    let now = time::OffsetDateTime::now_utc();
    Date {
        year: now.year() as u16,
        month: u8::from(now.month()),
        day: now.day(),
    }
}

pub fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading policy {}", file.display()))
}

#[derive(Serialize)]
struct CheckReport<'a> {
    file: String,
    ok: bool,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [Diagnostic],
}

fn check(file: &Path, today: Option<Date>, json: bool) -> anyhow::Result<Exit> {
    let text = read(file)?;
    let name = file.display().to_string();
    let (policy, diags) = match ward_policy::load(&name, &text, &ValidateOptions { today }) {
        Ok((p, w)) => (Some(p), w),
        Err(d) => (None, d),
    };
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    if json {
        let report = CheckReport {
            file: name.clone(),
            ok: errors == 0,
            errors,
            warnings,
            diagnostics: &diags,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &diags {
            eprintln!("{d}");
        }
    }
    match policy {
        Some(p) => {
            if !json {
                println!(
                    "{name}: ok: {} gateways, {} devices, {} flows, {} exception(s), mode {}, {warnings} warning{}",
                    p.gateways.len(),
                    p.devices.len(),
                    p.flows.len(),
                    p.exceptions.len(),
                    p.mode,
                    if warnings == 1 { "" } else { "s" }
                );
            }
            Ok(Exit::Ok)
        }
        None => {
            if !json {
                eprintln!(
                    "{name}: invalid: {errors} error{}, {warnings} warning{}",
                    if errors == 1 { "" } else { "s" },
                    if warnings == 1 { "" } else { "s" }
                );
            }
            Ok(Exit::DataErr)
        }
    }
}

/// Load a policy; on errors print them (stderr) and return `None`.
pub fn load_or_report(file: &Path, json: bool) -> anyhow::Result<Option<Policy>> {
    let text = read(file)?;
    let name = file.display().to_string();
    match ward_policy::load(&name, &text, &ValidateOptions::default()) {
        Ok((p, _)) => Ok(Some(p)),
        Err(diags) => {
            if json {
                eprintln!("{}", serde_json::to_string_pretty(&diags)?);
            } else {
                for d in &diags {
                    eprintln!("{d}");
                }
            }
            Ok(None)
        }
    }
}

fn render_plan(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "gateway {} ({}), mode {}",
        plan.gateway, plan.identity, plan.mode
    );
    if let Some(t) = plan.tunnel_server {
        let _ = writeln!(o, "tunnel server: {t} (tls/tcp and quic/udp, alpn ward/1)");
    }
    let _ = writeln!(o, "\nlisteners:");
    for l in &plan.listeners {
        let kind = match l.leg {
            ward_policy::Leg::Outbound => "plain (devices)",
            ward_policy::Leg::Access => "tls, client certificate required",
            ward_policy::Leg::Tunnel => "tunnel server",
        };
        let _ = writeln!(o, "  {:<24} {kind}", l.addr.to_string());
    }
    let _ = writeln!(o, "\noutbound flows:");
    for f in plan.outbound.values() {
        let target = match &f.target {
            Target::Tunnel {
                gateway,
                addr,
                transport,
                ..
            } => {
                format!(
                    "tunnel over {} to {gateway} ({addr})",
                    serde_json::to_value(transport)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            }
            Target::Tls {
                addr, server_name, ..
            } => format!("tls to {addr} ({server_name})"),
        };
        let _ = writeln!(
            o,
            "  {:<20} {} {} -> {} => {} => {}",
            f.name, f.device, f.source, f.listen, target, f.service
        );
        if let Some(g) = &f.guard {
            let text = crate::report::guard_text(g);
            let _ = writeln!(o, "  {:<20} guard: {text}", "");
        }
    }
    let _ = writeln!(o, "\ntunnels accepted here:");
    for t in plan.tunnels.values() {
        let _ = writeln!(
            o,
            "  {:<20} from {} for {} -> {}",
            t.name, t.peer, t.device, t.target
        );
    }
    let _ = writeln!(o, "\ninbound access:");
    for a in &plan.access {
        let window = a.window.as_ref().map_or("always".to_owned(), |w| {
            let days: Vec<&str> = w
                .days
                .iter()
                .map(|d| ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][*d as usize])
                .collect();
            format!(
                "{} {:02}:{:02}-{:02}:{:02} {}, warned {} before the end",
                days.join(","),
                w.start / 60,
                w.start % 60,
                w.end / 60,
                w.end % 60,
                w.tz.as_deref().unwrap_or(ward_policy::model::DEFAULT_TZ),
                ward_policy::model::format_duration(w.warning),
            )
        });
        let _ = writeln!(
            o,
            "  {:<20} {} at {} -> {} ({}), {window}",
            a.flow, a.identity, a.listen, a.target, a.device
        );
    }
    let _ = writeln!(o, "\ndevices:");
    for d in plan.devices.values() {
        let _ = writeln!(
            o,
            "  {:<16} {:<15} {} on {}{}",
            d.id,
            d.ip.to_string(),
            d.mac,
            d.interface,
            if d.quarantined { "  QUARANTINED" } else { "" }
        );
    }
    if !plan.exceptions.is_empty() {
        let _ = writeln!(o, "\nexceptions:");
        for e in &plan.exceptions {
            let port = e.port.map(|p| format!(":{p}")).unwrap_or_default();
            let proto = serde_json::to_value(e.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:<16} {} devices -> {}{port}/{proto}",
                e.name,
                e.sources.len(),
                e.to
            );
        }
    }
    let lines = ward_policy::diff::rule_lines(plan);
    let count = |p: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(p) && !l.contains(" element "))
            .count()
    };
    let _ = writeln!(
        o,
        "\nnftables: table inet ward, {} chains, {} rules, {} counters (print with --nft)",
        count("chain "),
        count("rule "),
        count("counter ")
    );
    o
}

fn render_diff(d: &ward_policy::diff::PolicyDiff, nft: bool) -> String {
    use ward_policy::diff::Changes;
    fn items(o: &mut String, what: &str, c: &Changes) {
        for x in &c.added {
            let _ = writeln!(o, "  + {what} {x}");
        }
        for x in &c.removed {
            let _ = writeln!(o, "  - {what} {x}");
        }
        for x in &c.changed {
            let _ = writeln!(o, "  ~ {what} {}", x.name);
            for f in &x.fields {
                let _ = writeln!(o, "      {}: {} -> {}", f.field, f.old, f.new);
            }
        }
    }
    let mut o = String::new();
    if let Some((a, b)) = &d.mode {
        let _ = writeln!(o, "mode: {a} -> {b}");
    }
    if !d.services.is_empty() {
        let _ = writeln!(o, "site:");
        items(&mut o, "service", &d.services);
    }
    for g in &d.gateways {
        let _ = writeln!(o, "gateway {}: {}", g.gateway, g.status);
        items(&mut o, "device", &g.devices);
        items(&mut o, "flow", &g.flows);
        items(&mut o, "exception", &g.exceptions);
        let (added, removed) = (g.rules.added.len(), g.rules.removed.len());
        if nft {
            for x in &g.rules.added {
                let _ = writeln!(o, "  + {x}");
            }
            for x in &g.rules.removed {
                let _ = writeln!(o, "  - {x}");
            }
        } else if added + removed > 0 {
            let _ = writeln!(
                o,
                "  nftables: {added} object(s) and rule(s) added, {removed} removed (list them with --nft)"
            );
        }
    }
    if d.is_empty() {
        let _ = writeln!(o, "no changes");
    }
    o
}
