//! `wardctl policy suggest` and `policy simulate`: offline, from a file
//! `wardctl observe export` wrote.
//!
//! Suggest allows what was observed and nothing more: for each device flow
//! no rule allows, a flow (TCP, to a service named after what is known of
//! the port) or an exception (UDP, ICMP: one destination address, one
//! protocol, one port; never a range, never "any"), with the counts and
//! first and last seen as comments, and devices of one class that share a
//! destination grouped under one heading (exceptions list them together).
//! An exception's justification is left for a person to write: validation
//! warns until they do. What cannot be suggested (a connection into a
//! device, which needs a client identity; a new TCP flow on an explicit
//! gateway, which needs a listen address the device is re-pointed at) is
//! written as a comment saying why.
//!
//! Simulate replays every observed flow against a candidate with the
//! daemon's own decision function (`Plan::judge`) and lists what would
//! break: flows the running policy allowed (or monitor mode let through)
//! that the candidate denies. Flows the running policy already dropped are
//! listed apart and do not fail the simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use ward_api::observed::{Direction, FlowKey, Judgement, Observed, ObservedFlow};
use ward_policy::model::{Insertion, Policy};
use ward_policy::observe::{ICMP, TCP, UDP};

use crate::Exit;
use crate::online::when;

/// Read an `observe export` file.
pub fn read_observed(file: &Path) -> anyhow::Result<Observed> {
    let text =
        std::fs::read(file).with_context(|| format!("reading observations {}", file.display()))?;
    let o: Observed = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not a `wardctl observe export` file (format {})",
            file.display(),
            ward_api::observed::FORMAT
        )
    })?;
    anyhow::ensure!(
        o.format == ward_api::observed::FORMAT,
        "{}: format {} (this wardctl reads format {})",
        file.display(),
        o.format,
        ward_api::observed::FORMAT
    );
    Ok(o)
}

/// The application protocol a well-known TCP port carries, as a service's
/// `protocol`.
fn protocol_of(port: u16) -> &'static str {
    match port {
        104 | 11112 | 4242 => "dicom",
        2575 => "hl7",
        502 => "modbus",
        _ => "tcp",
    }
}

/// A name for a UDP or ICMP exception.
fn exception_stem(key: &FlowKey) -> String {
    match (key.proto, key.port) {
        (UDP, 123) => "ntp".into(),
        (UDP, 53) => "dns".into(),
        (UDP, 67) => "dhcp".into(),
        (UDP, 69) => "tftp".into(),
        (UDP, 161) => "snmp".into(),
        (UDP, 162) => "snmp-trap".into(),
        (UDP, 514) => "syslog".into(),
        (ICMP, _) => format!("icmp-{}", key.port >> 8),
        (_, p) => format!("{}-{p}", key.proto_name()),
    }
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// `name`, shortened to a valid policy name if need be, with `-2`, `-3`, …
/// added until it is not `taken`.
fn unique(name: String, taken: &mut BTreeSet<String>) -> String {
    let fit = |n: &str, room: usize| {
        let cut = &n[..n.len().min(ward_policy::MAX_ID_LEN - room)];
        cut.trim_end_matches('-').to_owned()
    };
    let mut n = fit(&name, 0);
    let mut i = 2;
    while taken.contains(&n) {
        let suffix = format!("-{i}");
        n = format!("{}{suffix}", fit(&name, suffix.len()));
        i += 1;
    }
    taken.insert(n.clone());
    n
}

/// One observed flow of one device.
#[derive(Clone, Copy)]
struct Seen<'a> {
    device: &'a str,
    class: &'a str,
    flow: &'a ObservedFlow,
}

fn seen_comment(s: &[Seen<'_>]) -> String {
    let packets: u64 = s.iter().map(|x| x.flow.packets).sum();
    let first = s.iter().map(|x| x.flow.first_seen).min().unwrap_or(0);
    let last = s.iter().map(|x| x.flow.last_seen).max().unwrap_or(0);
    format!(
        "# seen: {packets} packets, first {}, last {}",
        when(first),
        when(last)
    )
}

/// Where `key` is excluded by a `--deny ADDR[:PORT]`.
fn denied_by<'d>(key: &FlowKey, deny: &'d [String]) -> Option<&'d String> {
    deny.iter().find(|d| {
        d.parse::<SocketAddr>()
            .map(|a| a.ip() == std::net::IpAddr::V4(key.dst) && a.port() == key.port)
            .or_else(|_| d.parse::<Ipv4Addr>().map(|ip| ip == key.dst))
            .unwrap_or(false)
    })
}

/// `wardctl policy suggest`.
pub fn suggest(
    observed_file: &Path,
    current: Option<&Path>,
    deny: &[String],
    json: bool,
) -> anyhow::Result<Exit> {
    let o = read_observed(observed_file)?;
    for d in deny {
        anyhow::ensure!(
            d.parse::<SocketAddr>().is_ok() || d.parse::<Ipv4Addr>().is_ok(),
            "--deny {d:?}: expected ADDR or ADDR:PORT"
        );
    }
    let (text, policy) = match current {
        Some(file) => {
            let text = crate::policy::read(file)?;
            let Some(policy) = crate::policy::load_or_report(file, json)? else {
                return Ok(Exit::DataErr);
            };
            (Some(text), Some(policy))
        }
        None => (None, None),
    };
    let plan = match &policy {
        Some(p) => match ward_policy::compile(p, &o.gateway) {
            Ok(plan) => Some(plan),
            Err(e) => {
                eprintln!("{}: {e}", current.map(Path::display).expect("a file"));
                return Ok(Exit::DataErr);
            }
        },
        None => None,
    };
    let out = render_suggestion(&o, observed_file, policy.as_ref(), plan.as_ref(), deny);
    let mut guards = 0;
    match (text, &policy) {
        (Some(t), Some(p)) => {
            let (t, n) = with_guards(&t, p, &o.facts);
            guards = n;
            print!("{}\n{}", enforce(&t), out.text);
        }
        _ => print!("{}", out.text),
    }
    eprintln!(
        "suggested {} flows, {} services, {} exceptions, {guards} guards; {} left out (--deny), {} not suggestable",
        out.flows, out.services, out.exceptions, out.left_out, out.unsuggestable
    );
    Ok(Exit::Ok)
}

/// The policy text with a guard on each flow that has none and whose
/// protocol said something the gateway read: exactly what was seen (AE
/// titles, SOP classes by name, DIMSE commands; HL7 message types and
/// senders; Modbus functions and unit ids), written after the flow's
/// `name`. Also how many guards were written.
fn with_guards(
    text: &str,
    policy: &Policy,
    facts: &[ward_api::observed::FlowFacts],
) -> (String, usize) {
    use ward_policy::model::{FlowKind, Protocol};
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    for f in facts {
        let Some(flow) = policy.flows.iter().find(|x| x.name.value == f.flow) else {
            continue;
        };
        let FlowKind::Outbound { service, .. } = &flow.kind else {
            continue;
        };
        let Some(svc) = policy.services.get(&service.value) else {
            continue;
        };
        if flow.guard.is_some() {
            continue;
        }
        let keys: &[&str] = match svc.protocol {
            Protocol::Dicom => &[
                "calling_ae_titles",
                "called_ae_titles",
                "sop_classes",
                "commands",
            ],
            Protocol::Hl7 => &[
                "message_types",
                "sending_applications",
                "sending_facilities",
            ],
            Protocol::Modbus => &["functions", "unit_ids"],
            Protocol::Tcp => continue,
        };
        let mut parts = Vec::new();
        for key in keys {
            let Some(values) = f.values.get(*key) else {
                continue;
            };
            let written: Vec<String> = values
                .iter()
                .map(|v| match *key {
                    "unit_ids" => v.clone(),
                    "functions" if v.parse::<u8>().is_ok() => v.clone(),
                    "sop_classes" => {
                        serde_json::to_string(ward_policy::model::sop_class_name(v).unwrap_or(v))
                            .expect("a string")
                    }
                    _ => serde_json::to_string(v).expect("a string"),
                })
                .collect();
            parts.push(format!("{key} = [{}]", written.join(", ")));
        }
        if !parts.is_empty() {
            lines.insert(
                f.flow.clone(),
                format!(
                    "# guard suggested by wardctl from what the flow said while observed\nguard = {{ {} }}\n",
                    parts.join(", ")
                ),
            );
        }
    }
    let n = lines.len();
    let mut out = String::new();
    let mut in_flow = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        let t = line.trim();
        if t.starts_with('[') {
            in_flow = t == "[[flows]]";
        }
        if in_flow
            && let Some(name) = t
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
                .map(|r| r.trim().trim_matches('"'))
            && let Some(g) = lines.remove(name)
        {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&g);
        }
    }
    (out, n - lines.len())
}

/// The policy text with its top-level `mode` set to enforce: a suggestion
/// is what to enforce.
fn enforce(text: &str) -> String {
    let mut out = String::new();
    let mut top = true;
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            top = false;
        }
        if top && !done && t.starts_with("mode") && t.contains("\"monitor\"") {
            out.push_str(&line.replacen("\"monitor\"", "\"enforce\"", 1));
            out.push_str("# (was \"monitor\": set by wardctl policy suggest)\n");
            done = true;
        } else {
            out.push_str(line);
        }
    }
    out
}

struct Suggestion {
    text: String,
    flows: usize,
    services: usize,
    exceptions: usize,
    left_out: usize,
    unsuggestable: usize,
}

fn render_suggestion(
    o: &Observed,
    observed_file: &Path,
    policy: Option<&Policy>,
    plan: Option<&ward_policy::Plan>,
    deny: &[String],
) -> Suggestion {
    let mut s = Suggestion {
        text: String::new(),
        flows: 0,
        services: 0,
        exceptions: 0,
        left_out: 0,
        unsuggestable: 0,
    };
    let mut taken: BTreeSet<String> = BTreeSet::new();
    if let Some(p) = policy {
        taken.extend(p.flows.iter().map(|f| f.name.value.clone()));
        taken.extend(p.services.keys().cloned());
        taken.extend(p.exceptions.iter().map(|e| e.name.value.clone()));
        taken.extend(p.devices.keys().cloned());
    }
    let explicit = plan.is_some_and(|p| p.insertion == Insertion::Explicit);
    // Not allowed now: judged by the current policy when given, else by
    // the verdicts recorded with the observations.
    let mut open: Vec<Seen<'_>> = Vec::new();
    for d in &o.devices {
        for f in &d.flows {
            let allowed = match plan {
                Some(p) => p.judge(&f.key).allowed(),
                None => f.verdict.by.allowed(),
            };
            if !allowed {
                open.push(Seen {
                    device: &d.id,
                    class: d.class.as_deref().unwrap_or("unclassified"),
                    flow: f,
                });
            }
        }
    }
    let t = &mut s.text;
    let _ = writeln!(
        t,
        "# ---- Suggested by `wardctl policy suggest` from {} ----",
        observed_file.display()
    );
    let _ = writeln!(
        t,
        "# Gateway {} ({} mode), observed until {}. Allows what was observed and nothing more;",
        o.gateway,
        o.mode,
        when(o.at)
    );
    let _ = writeln!(
        t,
        "# review every entry, then `wardctl policy simulate` and `wardctl policy apply --confirm-within`."
    );
    let mut left: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // TCP out: services and flows, grouped by (class, destination).
    let mut tcp: BTreeMap<(String, Ipv4Addr, u16), Vec<&Seen<'_>>> = BTreeMap::new();
    // UDP and ICMP out: exceptions, grouped by (class, destination, proto, port).
    let mut raw: BTreeMap<(String, Ipv4Addr, u8, u16), Vec<&Seen<'_>>> = BTreeMap::new();
    for x in &open {
        let k = &x.flow.key;
        if let Some(d) = denied_by(k, deny) {
            left.push(format!("{} {k} (--deny {d})", x.device));
            continue;
        }
        if x.flow.direction == Direction::In {
            notes.push(format!(
                "{} {k}: a connection into the device; it needs a client identity and a listener ([clients] and an inbound flow), not suggested",
                x.device
            ));
            continue;
        }
        if plan.is_some_and(|p| p.own_addresses().contains(&std::net::IpAddr::V4(k.dst)))
            && k.proto == TCP
        {
            notes.push(format!(
                "{} {k}: a TCP connection to the gateway itself, not suggested",
                x.device
            ));
            continue;
        }
        match k.proto {
            TCP => tcp
                .entry((x.class.to_owned(), k.dst, k.port))
                .or_default()
                .push(x),
            UDP | ICMP => raw
                .entry((x.class.to_owned(), k.dst, k.proto, k.port))
                .or_default()
                .push(x),
            _ => notes.push(format!(
                "{} {k}: protocol {} is not suggested",
                x.device, k.proto
            )),
        }
    }
    s.left_out = left.len();
    s.unsuggestable = notes.len();
    // Services: an existing one at the address, else a new one per address.
    let mut new_services: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let existing = |addr: SocketAddr| {
        policy.and_then(|p| {
            p.services
                .values()
                .find(|sv| sv.address.value == addr)
                .map(|sv| sv.name.value.clone())
        })
    };
    for (_, dst, port) in tcp.keys() {
        let addr = SocketAddr::new((*dst).into(), *port);
        if existing(addr).is_none() && !new_services.contains_key(&addr) {
            let name = unique(
                format!("{}-{}-{port}", protocol_of(*port), dashed(*dst)),
                &mut taken,
            );
            new_services.insert(addr, name);
        }
    }
    // Cleartext never crosses the LAN: a new service is reached through a
    // hub. The hub of the known services nearest the server (longest
    // common address prefix); with none known, the flow cannot be written
    // and the TCP destination becomes an exception for a person to judge.
    let hubs: Vec<(Ipv4Addr, String)> = policy
        .map(|p| {
            p.services
                .values()
                .filter_map(|sv| match (sv.address.value.ip(), &sv.via) {
                    (std::net::IpAddr::V4(ip), Some(via)) => Some((ip, via.value.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let hub_for = |dst: Ipv4Addr| {
        hubs.iter()
            .max_by_key(|(ip, _)| (u32::from(*ip) ^ u32::from(dst)).leading_zeros())
            .map(|(_, via)| via.clone())
    };
    for (addr, name) in &new_services {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            continue;
        };
        let Some(via) = hub_for(ip) else { continue };
        let _ = writeln!(t, "\n[services.{name}]");
        let _ = writeln!(t, "address = \"{addr}\"");
        let _ = writeln!(t, "protocol = \"{}\"", protocol_of(addr.port()));
        let _ = writeln!(
            t,
            "# through {via}, the hub nearest this server among the known services: check that it reaches {addr}"
        );
        let _ = writeln!(t, "via = \"{via}\"");
        s.services += 1;
    }
    for ((class, dst, port), group) in &tcp {
        let addr = SocketAddr::new((*dst).into(), *port);
        if existing(addr).is_none() && hub_for(*dst).is_none() {
            // No hub to carry it: left to the exceptions below.
            for x in group {
                raw.entry((class.clone(), *dst, TCP, *port))
                    .or_default()
                    .push(x);
            }
            continue;
        }
        let service = existing(addr)
            .or_else(|| new_services.get(&addr).cloned())
            .expect("every address has a service");
        let devices: BTreeSet<&str> = group.iter().map(|x| x.device).collect();
        let _ = writeln!(
            t,
            "\n# {class} → {service} ({addr}, {}): {}",
            protocol_of(*port),
            devices.iter().copied().collect::<Vec<_>>().join(", ")
        );
        for device in devices {
            let of: Vec<Seen<'_>> = group
                .iter()
                .filter(|x| x.device == device)
                .map(|x| **x)
                .collect();
            let name = unique(format!("{device}-to-{service}"), &mut taken);
            let prefix = if explicit { "# " } else { "" };
            if explicit {
                let _ = writeln!(
                    t,
                    "# {} is explicit: choose a listen address, re-point the device at it, then uncomment",
                    o.gateway
                );
            }
            let _ = writeln!(t, "{}", seen_comment(&of));
            let _ = writeln!(t, "{prefix}[[flows]]");
            let _ = writeln!(t, "{prefix}name = \"{name}\"");
            let _ = writeln!(t, "{prefix}from = \"{device}\"");
            let _ = writeln!(t, "{prefix}to = \"{service}\"");
            if !explicit {
                s.flows += 1;
            }
        }
    }
    for ((class, dst, proto, port), group) in &raw {
        let key = group[0].flow.key;
        let devices: BTreeSet<&str> = group.iter().map(|x| x.device).collect();
        let name = unique(
            format!("{}-{}", exception_stem(&key), dashed(*dst)),
            &mut taken,
        );
        let _ = writeln!(
            t,
            "\n# {class} → {dst} {}: {}",
            if *proto == ICMP {
                format!("icmp type {}", port >> 8)
            } else {
                format!("{}/{port}", key.proto_name())
            },
            devices.iter().copied().collect::<Vec<_>>().join(", ")
        );
        let owned: Vec<Seen<'_>> = group.iter().map(|x| **x).collect();
        let _ = writeln!(t, "{}", seen_comment(&owned));
        let _ = writeln!(t, "[[exceptions]]");
        let _ = writeln!(t, "name = \"{name}\"");
        let _ = writeln!(
            t,
            "devices = [{}]",
            devices
                .iter()
                .map(|d| format!("\"{d}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(t, "to = \"{dst}\"");
        let _ = writeln!(t, "protocol = \"{}\"", key.proto_name());
        if *proto != ICMP {
            let _ = writeln!(t, "port = {port}");
        }
        let _ = writeln!(
            t,
            "justification = \"{}\"",
            ward_policy::model::TODO_JUSTIFICATION
        );
        s.exceptions += 1;
    }
    if !left.is_empty() || !notes.is_empty() {
        let _ = writeln!(t, "\n# Observed but not allowed by this suggestion:");
        for l in left.iter().chain(&notes) {
            let _ = writeln!(t, "#   {l}");
        }
    }
    s
}

/// One row of a simulation.
#[derive(Debug, Clone, Serialize)]
struct Row {
    device: String,
    key: FlowKey,
    direction: Direction,
    packets: u64,
    first_seen: u64,
    last_seen: u64,
    /// What the running policy did (`allowed`, `would-drop`, `dropped`, ...).
    observed: String,
    /// What the candidate does.
    candidate: Judgement,
}

#[derive(Debug, Serialize)]
struct Simulation {
    gateway: String,
    candidate: String,
    flows: Vec<Row>,
    /// Allowed now (or let through by monitor mode), denied by the candidate.
    would_break: Vec<Row>,
    /// Carried connections whose flow the candidate no longer has.
    carried_would_break: Vec<String>,
    /// Dropped now and by the candidate.
    still_dropped: usize,
    allowed: usize,
    /// Candidate rules of this gateway no observed flow used.
    unused: Vec<String>,
}

/// `wardctl policy simulate`.
pub fn simulate(candidate: &Path, observed_file: &Path, json: bool) -> anyhow::Result<Exit> {
    let o = read_observed(observed_file)?;
    let Some(plan) = crate::policy::plan_for(candidate, &o.gateway, json)? else {
        return Ok(Exit::DataErr);
    };
    let mut sim = Simulation {
        gateway: o.gateway.clone(),
        candidate: candidate.display().to_string(),
        flows: Vec::new(),
        would_break: Vec::new(),
        carried_would_break: Vec::new(),
        still_dropped: 0,
        allowed: 0,
        unused: Vec::new(),
    };
    let mut used: BTreeSet<String> = BTreeSet::new();
    for d in &o.devices {
        for f in &d.flows {
            let candidate = plan.judge(&f.key);
            let row = Row {
                device: d.id.clone(),
                key: f.key,
                direction: f.direction,
                packets: f.packets,
                first_seen: f.first_seen,
                last_seen: f.last_seen,
                observed: f.verdict.action.clone(),
                candidate: candidate.clone(),
            };
            match &candidate {
                Judgement::Flow(n) | Judgement::Exception(n) => {
                    used.insert(n.clone());
                    sim.allowed += 1;
                }
                _ if matches!(f.verdict.action.as_str(), "dropped" | "quarantined") => {
                    sim.still_dropped += 1
                }
                _ => sim.would_break.push(row.clone()),
            }
            sim.flows.push(row);
        }
        for c in &d.tunnels {
            let kept = plan.outbound.get(&c.flow).is_some_and(|f| f.device == d.id)
                || plan.tunnels.contains_key(&c.flow)
                || plan.access.iter().any(|a| a.flow == c.flow);
            if kept {
                used.insert(c.flow.clone());
            } else {
                sim.carried_would_break.push(format!(
                    "{}: flow {} ({}, {} connections)",
                    d.id, c.flow, c.leg, c.connections
                ));
            }
        }
    }
    sim.unused = plan
        .outbound
        .keys()
        .map(|n| format!("flow {n}"))
        .filter(|n| !used.contains(&n["flow ".len()..]))
        .chain(
            plan.exceptions
                .iter()
                .filter(|e| !used.contains(&e.name))
                .map(|e| format!("exception {}", e.name)),
        )
        .collect();
    let breaks = !sim.would_break.is_empty() || !sim.carried_would_break.is_empty();
    if json {
        println!("{}", serde_json::to_string_pretty(&sim)?);
    } else {
        println!(
            "{:<16} {:<3} {:<34} {:>9}  {:<11} CANDIDATE",
            "DEVICE", "DIR", "FLOW", "PACKETS", "OBSERVED"
        );
        for r in &sim.flows {
            println!(
                "{:<16} {:<3} {:<34} {:>9}  {:<11} {}",
                r.device,
                match r.direction {
                    Direction::Out => "out",
                    Direction::In => "in",
                },
                r.key.to_string(),
                r.packets,
                r.observed,
                r.candidate
            );
        }
        println!();
        println!(
            "{}: {} observed flows: {} allowed, {} would break, {} dropped now and still dropped",
            sim.candidate,
            sim.flows.len(),
            sim.allowed,
            sim.would_break.len(),
            sim.still_dropped
        );
        for r in &sim.would_break {
            println!(
                "WOULD BREAK: {} {} ({} packets, last seen {}; now {})",
                r.device,
                r.key,
                r.packets,
                when(r.last_seen),
                r.observed
            );
        }
        for c in &sim.carried_would_break {
            println!("WOULD BREAK: carried connections of {c}");
        }
        if !sim.unused.is_empty() {
            println!("never observed: {}", sim.unused.join(", "));
        }
    }
    Ok(if breaks { Exit::Failure } else { Exit::Ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_api::observed::{ObservedDevice, Verdict};

    const EXAMPLE: &str = include_str!("../../policy/examples/hospital.toml");

    fn seen(src: &str, dst: &str, proto: u8, port: u16) -> ObservedFlow {
        ObservedFlow {
            key: FlowKey {
                src: src.parse().expect("ip"),
                dst: dst.parse().expect("ip"),
                proto,
                port,
            },
            direction: Direction::Out,
            first_seen: 1_000,
            last_seen: 2_000,
            packets: 3,
            bytes: 228,
            verdict: Verdict::of(Judgement::Denied, true),
        }
    }

    fn device(id: &str, ip: &str, class: &str, flows: Vec<ObservedFlow>) -> ObservedDevice {
        ObservedDevice {
            id: id.into(),
            ip: ip.into(),
            class: Some(class.into()),
            flows,
            tunnels: Vec::new(),
            overflow_packets: 0,
            evicted: 0,
        }
    }

    fn observed() -> Observed {
        let (p1, p2, ct) = ("198.51.100.18", "198.51.100.34", "198.51.100.2");
        Observed {
            format: ward_api::observed::FORMAT,
            gateway: "edge-01".into(),
            mode: "monitor".into(),
            revision: "r".into(),
            at: 3_000,
            nflog_lost: 0,
            nflog_events: 0,
            facts: Vec::new(),
            devices: vec![
                device(
                    "pump-icu-01",
                    p1,
                    "infusion",
                    vec![seen(p1, "192.0.2.53", UDP, 53)],
                ),
                device(
                    "pump-icu-02",
                    p2,
                    "infusion",
                    vec![seen(p2, "192.0.2.53", UDP, 53)],
                ),
                device(
                    "ct-scanner-2",
                    ct,
                    "imaging",
                    vec![
                        seen(ct, "192.0.2.50", TCP, 8080),
                        seen(ct, "192.0.2.123", UDP, 123),
                        seen(ct, "192.0.2.9", ICMP, 8 << 8),
                    ],
                ),
            ],
        }
    }

    fn suggest_for(policy_text: &str, deny: &[String]) -> (String, Suggestion) {
        let (policy, _) =
            ward_policy::load("p.toml", policy_text, &Default::default()).expect("valid");
        let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
        let s = render_suggestion(
            &observed(),
            Path::new("o.json"),
            Some(&policy),
            Some(&plan),
            deny,
        );
        let merged = format!("{}\n{}", enforce(policy_text), s.text);
        (merged, s)
    }

    /// One exception for the two pumps of one class sharing a destination,
    /// one exact address and port each, NTP already allowed left alone, a
    /// TCP flow through the hub on a routed gateway; the whole passes
    /// validation with one warning per unwritten justification.
    #[test]
    fn suggestion_groups_and_validates() {
        let routed = EXAMPLE.replace(
            "device_interfaces = [\"dev0\", \"dev1\", \"dev2\", \"dev3\"]\n",
            "device_interfaces = [\"dev0\", \"dev1\", \"dev2\", \"dev3\"]\ninsertion = \"routed\"\nrouters = [\"198.51.100.1/28\", \"198.51.100.17/28\", \"198.51.100.33/28\", \"198.51.100.49/28\"]\n",
        );
        let (merged, s) = suggest_for(&routed, &[]);
        assert_eq!((s.flows, s.services, s.exceptions), (1, 1, 2), "{merged}");
        assert!(
            merged.contains("devices = [\"pump-icu-01\", \"pump-icu-02\"]"),
            "{merged}"
        );
        assert!(merged.contains("name = \"dns-192-0-2-53\""), "{merged}");
        assert!(merged.contains("name = \"icmp-8-192-0-2-9\""), "{merged}");
        assert!(
            !merged.contains("ntp-192-0-2-123"),
            "NTP is already allowed: {merged}"
        );
        assert!(
            merged.contains("via = \"hub-dc-01\"")
                && merged.contains("to = \"tcp-192-0-2-50-8080\"")
        );
        let (policy, warnings) =
            ward_policy::load("merged.toml", &merged, &Default::default()).expect("valid");
        assert_eq!(policy.mode, ward_policy::model::Mode::Enforce);
        let todo = warnings
            .iter()
            .filter(|w| w.key.ends_with(".justification"))
            .count();
        assert_eq!(todo, 2, "{warnings:?}");
        let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
        for d in observed().devices {
            for f in d.flows {
                assert!(plan.judge(&f.key).allowed(), "{} not allowed", f.key);
            }
        }
        // --deny leaves one destination out, and says so.
        let (merged, s) = suggest_for(&routed, &["192.0.2.50:8080".into()]);
        assert_eq!((s.flows, s.left_out), (0, 1));
        assert!(merged.contains("(--deny 192.0.2.50:8080)"), "{merged}");
    }

    /// A flow without a guard gets one from its facts (SOP classes by
    /// name); a guarded flow keeps its own; the result is a valid policy
    /// whose compiled guard is what was seen.
    #[test]
    fn guards_from_facts() {
        let line = EXAMPLE
            .lines()
            .find(|l| l.starts_with("guard = { calling_ae_titles"))
            .expect("the CT's guard");
        let text = EXAMPLE.replacen(&format!("{line}\n"), "", 1);
        let (policy, _) = ward_policy::load("p.toml", &text, &Default::default()).expect("valid");
        let facts = |flow: &str, kv: &[(&str, &[&str])]| ward_api::observed::FlowFacts {
            flow: flow.into(),
            values: kv
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
            dropped: 0,
        };
        let (out, n) = with_guards(
            &text,
            &policy,
            &[
                facts(
                    "ct2-to-pacs",
                    &[
                        ("calling_ae_titles", &["CT-SCANNER-2"]),
                        ("sop_classes", &["1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"]),
                        ("commands", &["C-STORE"]),
                    ],
                ),
                facts("pump1-to-hl7", &[("message_types", &["ADT^A08"])]),
            ],
        );
        assert_eq!(n, 1, "{out}");
        assert!(
            out.contains("guard = { calling_ae_titles = [\"CT-SCANNER-2\"], sop_classes = [\"CT Image Storage\", \"1.2.3.4\"], commands = [\"C-STORE\"] }"),
            "{out}"
        );
        let (policy, _) = ward_policy::load("p.toml", &out, &Default::default()).expect("valid");
        let plan = ward_policy::compile(&policy, "edge-01").expect("compiles");
        let Some(ward_policy::model::Guard::Dicom(g)) = &plan.outbound["ct2-to-pacs"].guard else {
            panic!("no guard");
        };
        assert_eq!(g.commands, [1]);
        assert!(g.refuses_command(0x0020).is_some());
        let Some(ward_policy::model::Guard::Hl7(g)) = &plan.outbound["pump1-to-hl7"].guard else {
            panic!("the pump's guard");
        };
        assert_eq!(g.message_types, ["ORU^R01"], "kept as written");
    }

    /// Names stay valid policy names however long the device id.
    #[test]
    fn long_names_are_shortened() {
        let mut taken = BTreeSet::new();
        let long = format!("{}-to-tcp-192-0-2-50-8080", "a".repeat(40));
        let a = unique(long.clone(), &mut taken);
        let b = unique(long, &mut taken);
        assert!(a.len() <= ward_policy::MAX_ID_LEN && b.len() <= ward_policy::MAX_ID_LEN);
        assert_ne!(a, b);
        assert!(b.ends_with("-2"), "{b}");
    }

    /// On an explicit gateway a new TCP flow needs a listen address: it is
    /// written commented out, not allowed.
    #[test]
    fn explicit_gateway_flows_are_commented() {
        let (merged, s) = suggest_for(EXAMPLE, &[]);
        assert_eq!(s.flows, 0);
        assert!(
            merged.contains("# [[flows]]\n# name = \"ct-scanner-2-to-tcp-192-0-2-50-8080\""),
            "{merged}"
        );
        ward_policy::load("merged.toml", &merged, &Default::default()).expect("valid");
    }

    /// Without a policy, no hub is known: TCP becomes an exception too.
    #[test]
    fn fragment_without_policy() {
        let s = render_suggestion(&observed(), Path::new("o.json"), None, None, &[]);
        assert_eq!((s.flows, s.services), (0, 0));
        assert!(
            s.text.contains("name = \"tcp-8080-192-0-2-50\"") && s.text.contains("port = 8080"),
            "{}",
            s.text
        );
        // NTP's recorded verdict was would-drop: without a policy it is suggested.
        assert!(s.text.contains("name = \"ntp-192-0-2-123\""), "{}", s.text);
        let merged = format!("{EXAMPLE}\n{}", s.text);
        ward_policy::load("merged.toml", &merged, &Default::default()).expect("valid");
    }
}
