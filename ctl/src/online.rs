//! Online verbs: `status`, `device`, `flow`, `reload`, over the admin socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use ward_api::{ApiError, Device, Flow, ReloadResult, Status};

use crate::Exit;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Devices behind this gateway: address, quarantine, drops, connections.
    List,
    /// One device with its inventory.
    Show {
        /// Device id.
        id: String,
    },
    /// Drop all traffic of a device now, established connections included.
    Quarantine {
        /// Device id.
        id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Lift a quarantine made with `device quarantine`.
    Release {
        /// Device id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Live connections: flow, peer, source, bytes each way, age.
    List {
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

/// A failure talking to `wardd`.
#[derive(Debug)]
pub enum CallError {
    /// The socket could not be reached (exit 69).
    Unreachable(String),
    /// `wardd` answered with an error.
    Api(StatusCode, String),
    /// Anything else.
    Other(anyhow::Error),
}

async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), CallError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        CallError::Unreachable(format!("cannot reach wardd at {}: {e}", socket.display()))
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            CallError::Unreachable(format!(
                "wardd at {} does not speak the admin API: {e}",
                socket.display()
            ))
        })?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "wardd")
        .body(Full::new(body))
        .map_err(|e| CallError::Other(e.into()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| CallError::Other(e.into()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Other(e.into()))?
        .to_bytes();
    Ok((status, body))
}

fn parse<T: serde::de::DeserializeOwned>(status: StatusCode, body: &Bytes) -> Result<T, CallError> {
    if !status.is_success() {
        let msg = serde_json::from_slice::<ApiError>(body)
            .map_or_else(|_| String::from_utf8_lossy(body).into_owned(), |e| e.error);
        return Err(CallError::Api(status, msg));
    }
    serde_json::from_slice(body)
        .map_err(|e| CallError::Other(anyhow::anyhow!("unexpected answer from wardd: {e}")))
}

fn get<T: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<(T, Bytes), CallError> {
    send(rt, socket, method, path, Bytes::new())
}

fn send<T: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(T, Bytes), CallError> {
    let (status, body) = rt.block_on(call(socket, method, path, body))?;
    let v = parse(status, &body)?;
    Ok((v, body))
}

/// Which online verb.
pub enum Verb {
    /// `status`.
    Status,
    /// `device ...`.
    Device(DeviceCommand),
    /// `flow ...`.
    Flow(FlowCommand),
    /// `reload`.
    Reload,
    /// `observe ...`.
    Observe(ObserveArgs),
    /// `policy apply FILE`.
    Apply {
        /// Policy file.
        file: PathBuf,
        /// Confirmation window.
        confirm_within: Option<Duration>,
    },
    /// `policy confirm`.
    Confirm,
    /// `evidence`: the gateway's evidence, as JSON, for `wardctl report
    /// --evidence` on another machine.
    Evidence,
}

/// GET `path` from the daemon at `socket`, decoded (for offline verbs that
/// take live data, like `report --from`).
pub fn fetch<T: serde::de::DeserializeOwned>(socket: &Path, path: &str) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match get(&rt, socket, Method::GET, path) {
        Ok((v, _)) => Ok(v),
        Err(CallError::Unreachable(m)) => Err(anyhow::anyhow!(m)),
        Err(CallError::Api(code, m)) => Err(anyhow::anyhow!(
            "wardd at {} answered {path} with {code}: {m}",
            socket.display()
        )),
        Err(CallError::Other(e)) => Err(e),
    }
}

/// `wardctl observe`: what each device was seen talking to.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ObserveArgs {
    /// Only this device.
    pub device: Option<String>,
    /// Only flows seen within this long (e.g. 10m, 24h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = since_parser)]
    pub since: Option<Duration>,
    #[command(subcommand)]
    pub command: Option<ObserveCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ObserveCommand {
    /// Write everything observed to FILE (JSON), for `policy suggest` and `policy simulate`.
    Export {
        /// Output file.
        file: PathBuf,
        /// Only flows seen within this long.
        #[arg(long, value_name = "DURATION", value_parser = since_parser)]
        since: Option<Duration>,
    },
}

pub fn since_parser(s: &str) -> Result<Duration, String> {
    ward_policy::parse_duration(s)
        .ok_or_else(|| format!("\"{s}\" is not a duration (e.g. 30s, 10m, 24h, 7d)"))
}

fn observed_path(since: Option<Duration>) -> String {
    match since {
        None => "/v1/observed".to_owned(),
        Some(d) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |n| n.as_secs());
            format!("/v1/observed?since={}", now.saturating_sub(d.as_secs()))
        }
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ`.
pub fn when(t: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64).map_or_else(
        |_| t.to_string(),
        |d| {
            format!(
                "{} {:02}:{:02}:{:02}Z",
                d.date(),
                d.hour(),
                d.minute(),
                d.second()
            )
        },
    )
}

/// What a flow's verdict says, for people.
pub fn verdict_text(v: &ward_api::observed::Verdict) -> String {
    use ward_api::observed::Judgement;
    match &v.by {
        Judgement::Flow(_) | Judgement::Exception(_) => format!("{} ({})", v.action, v.by),
        _ => v.action.clone(),
    }
}

fn print_observed(o: &ward_api::observed::Observed, device: Option<&str>) {
    use ward_api::observed::Direction;
    println!(
        "gateway {} ({} mode), observed at {}; first-seen events lost: {}",
        o.gateway,
        o.mode,
        when(o.at),
        o.nflog_lost
    );
    for d in o
        .devices
        .iter()
        .filter(|d| device.is_none_or(|id| id == d.id))
    {
        println!();
        println!(
            "{} ({}{}): {} flows, {} connection groups; set overflow {} packets, evicted {} flows",
            d.id,
            d.ip,
            d.class
                .as_deref()
                .map(|c| format!(", {c}"))
                .unwrap_or_default(),
            d.flows.len(),
            d.tunnels.len(),
            d.overflow_packets,
            d.evicted
        );
        if !d.flows.is_empty() {
            println!(
                "  {:<3} {:<15} {:<16} {:>9} {:>10}  {:<20} {:<20}  VERDICT",
                "DIR", "PEER", "PROTO/PORT", "PACKETS", "BYTES", "FIRST SEEN", "LAST SEEN"
            );
        }
        for f in &d.flows {
            let (dir, peer) = match f.direction {
                Direction::Out => ("out", f.key.dst),
                Direction::In => ("in", f.key.src),
            };
            let port = match f.key.proto {
                ward_policy::observe::ICMP => {
                    format!("icmp {}/{}", f.key.port >> 8, f.key.port & 0xff)
                }
                _ => format!("{}/{}", f.key.proto_name(), f.key.port),
            };
            println!(
                "  {:<3} {:<15} {:<16} {:>9} {:>10}  {:<20} {:<20}  {}",
                dir,
                peer.to_string(),
                port,
                f.packets,
                bytes(f.bytes),
                when(f.first_seen),
                when(f.last_seen),
                verdict_text(&f.verdict)
            );
        }
        for t in &d.tunnels {
            println!(
                "  carried: flow {} ({}) {} — {} connections, up {}, down {}, last {}",
                t.flow,
                t.leg,
                if t.peer.is_empty() { "-" } else { &t.peer },
                t.connections,
                bytes(t.bytes_up),
                bytes(t.bytes_down),
                when(t.last_seen)
            );
        }
    }
    if device.is_none() && !o.facts.is_empty() {
        println!();
        println!("protocol facts (what each flow said; `policy suggest` writes guards from them):");
        for f in &o.facts {
            let said: Vec<String> = f
                .values
                .iter()
                .map(|(k, v)| format!("{k} {}", v.join(", ")))
                .collect();
            println!("  {}: {}", f.flow, said.join("; "));
        }
    }
}

pub fn run(verb: Verb, socket: PathBuf, json: bool) -> anyhow::Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match run_inner(&rt, verb, &socket, json) {
        Ok(()) => Ok(Exit::Ok),
        Err(CallError::Unreachable(msg)) => {
            eprintln!("wardctl: {msg}");
            Ok(Exit::Unavailable)
        }
        Err(CallError::Api(status, msg)) => {
            eprintln!("wardctl: wardd refused ({status}): {msg}");
            Ok(if status == StatusCode::NOT_FOUND {
                Exit::DataErr
            } else {
                Exit::Failure
            })
        }
        Err(CallError::Other(e)) => Err(e),
    }
}

fn out(json: bool, body: &Bytes, human: impl FnOnce()) {
    if json {
        println!("{}", String::from_utf8_lossy(body).trim_end());
    } else {
        human();
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn print_devices(devices: &[Device]) {
    println!(
        "{:<16} {:<15} {:<18} {:<6} {:<11} {:<11} {:>8} {:>5}  flows",
        "DEVICE", "ADDRESS", "MAC", "PORT", "INSERTION", "STATE", "DROPS", "CONNS"
    );
    for d in devices {
        println!(
            "{:<16} {:<15} {:<18} {:<6} {:<11} {:<11} {:>8} {:>5}  {}",
            d.id,
            d.ip,
            d.mac,
            d.interface,
            d.insertion,
            if d.quarantined { "QUARANTINED" } else { "ok" },
            d.drops,
            d.connections,
            d.flows.join(",")
        );
    }
}

fn print_flows(flows: &[Flow]) {
    println!(
        "{:<22} {:<9} {:<22} {:<44} {:>10} {:>10} {:>6}  WINDOW",
        "FLOW", "LEG", "SOURCE", "PEER", "UP", "DOWN", "AGE"
    );
    for f in flows {
        let window = f.window.as_ref().map_or("-".to_owned(), |w| {
            format!(
                "ends {} (in {}s){}",
                w.ends,
                w.seconds_left,
                if w.warned {
                    ", WARNING: session will be cut"
                } else {
                    ""
                }
            )
        });
        println!(
            "{:<22} {:<9} {:<22} {:<44} {:>10} {:>10} {:>5}s  {window}",
            f.flow,
            f.leg,
            f.source,
            f.peer.as_deref().unwrap_or("-"),
            bytes(f.bytes_up),
            bytes(f.bytes_down),
            f.age_secs
        );
    }
    if flows.is_empty() {
        println!("(no live connections)");
    }
}

fn run_inner(
    rt: &tokio::runtime::Runtime,
    verb: Verb,
    socket: &Path,
    json: bool,
) -> Result<(), CallError> {
    match verb {
        Verb::Evidence => {
            let (_, body): (ward_api::Evidence, _) = get(rt, socket, Method::GET, "/v1/evidence")?;
            println!("{}", String::from_utf8_lossy(&body));
        }
        Verb::Status => {
            let (s, body): (Status, _) = get(rt, socket, Method::GET, "/v1/status")?;
            out(json, &body, || {
                println!("gateway      {} ({})", s.gateway, s.identity);
                println!("version      {}", s.version);
                println!("mode         {}", s.mode);
                println!("insertion    {}", s.insertion);
                println!("policy       {} (revision {})", s.policy_file, s.revision);
                if !s.configured_policy.is_empty() && s.configured_policy != s.policy_file {
                    println!(
                        "             applied with `wardctl policy apply`; configured: {}",
                        s.configured_policy
                    );
                }
                if let Some(p) = &s.pending_confirm {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    println!(
                        "PENDING      confirm by {} ({}s left) or it rolls back to revision {}",
                        when(p.confirm_by),
                        p.confirm_by.saturating_sub(now),
                        p.previous_revision
                    );
                }
                println!("site policy  sha256 {}", s.policy_sha256);
                println!("uptime       {}s", s.uptime_secs);
                println!("connections  {}", s.connections);
                println!(
                    "quarantined  {}",
                    if s.quarantined.is_empty() {
                        "none".to_owned()
                    } else {
                        s.quarantined.join(", ")
                    }
                );
                println!(
                    "certificate  expires {}",
                    time::OffsetDateTime::from_unix_timestamp(s.certificate_not_after)
                        .map_or("?".into(), |t| t.date().to_string())
                );
                match &s.last_reload {
                    Some(r) if r.ok => {
                        println!("last reload  ok ({}, revision {})", r.trigger, r.revision)
                    }
                    Some(r) => println!(
                        "last reload  REJECTED ({}): {}",
                        r.trigger,
                        r.error.as_deref().unwrap_or("")
                    ),
                    None => println!("last reload  none"),
                }
                println!("listening    {}", s.listeners.join(" "));
            });
        }
        Verb::Device(DeviceCommand::List) => {
            let (d, body): (Vec<Device>, _) = get(rt, socket, Method::GET, "/v1/devices")?;
            out(json, &body, || print_devices(&d));
        }
        Verb::Device(DeviceCommand::Show { id }) => {
            let (d, body): (Device, _) =
                get(rt, socket, Method::GET, &format!("/v1/devices/{id}"))?;
            out(json, &body, || {
                print_devices(std::slice::from_ref(&d));
                let i = &d.inventory;
                println!();
                for (k, v) in [
                    ("name", &i.name),
                    ("class", &i.class),
                    ("vendor", &i.vendor),
                    ("model", &i.model),
                    ("firmware", &i.firmware),
                    ("support", &i.support),
                    ("support ends", &i.support_ends),
                ] {
                    if let Some(v) = v {
                        println!("{k:<14} {v}");
                    }
                }
                if !i.vulnerabilities.is_empty() {
                    println!("{:<14} {}", "vulnerabilities", i.vulnerabilities.join(", "));
                }
            });
        }
        Verb::Device(DeviceCommand::Quarantine { id, yes }) => {
            if !yes
                && !crate::ca::confirm(&format!(
                    "quarantine {id:?}: drop all its traffic now, open connections included?"
                ))
                .map_err(CallError::Other)?
            {
                return Err(CallError::Other(anyhow::anyhow!("not quarantined")));
            }
            let (d, body): (Device, _) = get(
                rt,
                socket,
                Method::POST,
                &format!("/v1/devices/{id}/quarantine"),
            )?;
            out(json, &body, || {
                println!("{} quarantined: all its traffic is dropped", d.id)
            });
        }
        Verb::Device(DeviceCommand::Release { id }) => {
            let (d, body): (Device, _) = get(
                rt,
                socket,
                Method::POST,
                &format!("/v1/devices/{id}/release"),
            )?;
            out(json, &body, || println!("{} released", d.id));
        }
        Verb::Flow(FlowCommand::List { watch }) => loop {
            let (f, body): (Vec<Flow>, _) = get(rt, socket, Method::GET, "/v1/flows")?;
            if watch && !json {
                print!("\x1b[2J\x1b[H");
            }
            out(json, &body, || print_flows(&f));
            if !watch {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Verb::Observe(ObserveArgs {
            command: Some(ObserveCommand::Export { file, since }),
            ..
        }) => {
            let (o, _): (ward_api::observed::Observed, _) =
                get(rt, socket, Method::GET, &observed_path(since))?;
            let text = serde_json::to_vec_pretty(&o).map_err(|e| CallError::Other(e.into()))?;
            std::fs::write(&file, text)
                .with_context(|| format!("writing {}", file.display()))
                .map_err(CallError::Other)?;
            let flows: usize = o.devices.iter().map(|d| d.flows.len()).sum();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"file": file, "devices": o.devices.len(), "flows": flows})
                );
            } else {
                println!(
                    "{}: {} devices, {} flows observed by {}",
                    file.display(),
                    o.devices.len(),
                    flows,
                    o.gateway
                );
            }
        }
        Verb::Observe(ObserveArgs {
            device,
            since,
            command: None,
        }) => {
            let (o, body): (ward_api::observed::Observed, _) =
                get(rt, socket, Method::GET, &observed_path(since))?;
            if let Some(id) = &device
                && !o.devices.iter().any(|d| &d.id == id)
            {
                return Err(CallError::Api(
                    StatusCode::NOT_FOUND,
                    format!("nothing observed for device {id:?}"),
                ));
            }
            if json {
                match &device {
                    None => println!("{}", String::from_utf8_lossy(&body).trim_end()),
                    Some(id) => {
                        let mut o = o;
                        o.devices.retain(|d| &d.id == id);
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&o)
                                .map_err(|e| CallError::Other(e.into()))?
                        );
                    }
                }
            } else {
                print_observed(&o, device.as_deref());
            }
        }
        Verb::Apply {
            file,
            confirm_within,
        } => {
            let policy = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))
                .map_err(CallError::Other)?;
            let req = ward_api::ApplyRequest {
                policy,
                source: file.display().to_string(),
                confirm_within_secs: confirm_within.map(|d| d.as_secs().max(1)),
            };
            let body = serde_json::to_vec(&req).map_err(|e| CallError::Other(e.into()))?;
            let (r, body): (ward_api::ApplyResult, _) = send(
                rt,
                socket,
                Method::POST,
                "/v1/policy/apply",
                Bytes::from(body),
            )?;
            out(json, &body, || {
                println!(
                    "applied {}: revision {} (was {})",
                    file.display(),
                    r.revision,
                    r.previous_revision
                );
                if let Some(t) = r.confirm_by {
                    println!(
                        "rolled back to {} at {} unless `wardctl policy confirm` arrives first",
                        r.previous_revision,
                        when(t)
                    );
                }
            });
        }
        Verb::Confirm => {
            let (p, body): (ward_api::PendingConfirm, _) =
                get(rt, socket, Method::POST, "/v1/policy/confirm")?;
            out(json, &body, || {
                println!("confirmed: revision {} stays in force", p.revision)
            });
        }
        Verb::Reload => {
            let (r, body): (ReloadResult, _) = get(rt, socket, Method::POST, "/v1/reload")?;
            out(json, &body, || {
                println!("reload applied: revision {}", r.revision)
            });
        }
    }
    Ok(())
}
