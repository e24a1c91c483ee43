//! `wardctl report`: the compensating controls Ward applies to each device
//! of a site, with evidence that they work, for a device's risk file and a
//! vendor's customers (IMDRF N70/N73, FDA premarket cybersecurity).
//!
//! The report is built from the site policy (inventory, lifecycle, flows,
//! guards, windows, exceptions), optionally enriched offline from advisory
//! files (CISA KEV, CSAF 2.0/VEX: [`advisories`]) and joined with evidence
//! from running gateways (`GET /v1/evidence` over each admin socket given,
//! or a file `wardctl evidence` wrote). One model ([`Report`], format
//! [`FORMAT`]) is written as HTML for people ([`html`]), JSON for tools,
//! a CycloneDX 1.6 inventory or a FHIR R5 Bundle of Devices ([`export`]).

pub mod advisories;
pub mod export;
pub mod html;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use ward_api::{Evidence, HandshakeRefusals};
use ward_policy::model::{
    Date, ExceptionTarget, FlowKind, Guard, Insertion, Mode, Policy, SupportStage,
};

use crate::Exit;
use advisories::{Advisories, Finding};

/// Version of the report's JSON.
pub const FORMAT: u32 = 1;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML file.
    Html,
    /// The report model, versioned.
    Json,
    /// CycloneDX 1.6 inventory of the devices and their vulnerabilities.
    Cyclonedx,
    /// FHIR R5 Bundle of Device resources.
    Fhir,
}

/// `wardctl report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The site policy.
    #[arg(long, default_value = "/etc/ward/policy.toml")]
    pub policy: PathBuf,
    /// A gateway's admin socket to take evidence from (repeat per gateway).
    #[arg(long = "from", value_name = "SOCKET")]
    pub from: Vec<PathBuf>,
    /// A file `wardctl evidence` wrote on a gateway (repeat per gateway).
    #[arg(long, value_name = "FILE")]
    pub evidence: Vec<PathBuf>,
    /// CISA's Known Exploited Vulnerabilities catalogue (its JSON feed).
    #[arg(long, value_name = "FILE")]
    pub kev: Vec<PathBuf>,
    /// A CSAF 2.0 advisory or VEX document (repeat).
    #[arg(long, value_name = "FILE")]
    pub csaf: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "html")]
    pub format: Format,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The day the report is made for (YYYY-MM-DD; default today, UTC):
    /// days to end of support count from it.
    #[arg(long, value_name = "DATE")]
    pub today: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`FORMAT`].
    pub format: u32,
    /// When it was made (RFC 3339, UTC).
    pub generated_at: String,
    /// The day lifecycle dates count from.
    pub today: String,
    /// The site's trust domain.
    pub site: String,
    /// The policy it was made from.
    pub policy: PolicyRef,
    /// Advisory files used.
    pub advisories: Vec<advisories::Source>,
    /// Site totals.
    pub summary: Summary,
    /// Gateways.
    pub gateways: Vec<GatewayReport>,
    /// Devices, by id.
    pub devices: Vec<DeviceReport>,
    /// Services and clients the devices' flows reach (for the flow map).
    pub peers: Vec<PeerReport>,
}

/// The policy a report was made from.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRef {
    /// File.
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// `enforce` or `monitor`.
    pub mode: String,
}

/// Site totals.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Devices.
    pub devices: usize,
    /// Devices per lifecycle stage (`unknown` without one).
    pub by_stage: BTreeMap<String, usize>,
    /// Devices per residual risk kind.
    pub by_risk: BTreeMap<String, usize>,
    /// Devices with a KEV-listed vulnerability.
    pub with_kev: usize,
    /// Devices past end of support.
    pub past_end_of_support: usize,
    /// Gateways that gave evidence, of all.
    pub gateways_with_evidence: usize,
}

/// A gateway.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    /// Name.
    pub name: String,
    /// Identity.
    pub identity: String,
    /// LAN address.
    pub lan_address: String,
    /// `edge` (devices behind it), `hub` (services behind it), or both.
    pub role: String,
    /// `explicit`, `routed` or `bridge`.
    pub insertion: String,
    /// Devices behind it.
    pub devices: usize,
    /// What it said about itself, if asked.
    pub evidence: Option<GatewayEvidence>,
}

/// A running gateway's own word.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayEvidence {
    /// When it answered (RFC 3339).
    pub at: String,
    /// Mode in force.
    pub mode: String,
    /// Revision of the plan in force.
    pub revision: String,
    /// SHA-256 of the policy file in force.
    pub policy_sha256: String,
    /// The same policy as the report's.
    pub policy_matches: bool,
    /// Up for.
    pub uptime_secs: u64,
    /// Certificate expiry (RFC 3339) and days left.
    pub certificate_not_after: String,
    /// Days until the certificate expires (negative: expired).
    pub certificate_days_left: i64,
    /// Live connections.
    pub connections: usize,
    /// TLS handshakes refused since start, by leg and reason.
    pub handshake_refusals: Vec<HandshakeRefusals>,
    /// Audit trail: records verified and whether the hash chain holds.
    pub audit_records: u64,
    /// The chain holds up to the last record.
    pub audit_intact: bool,
    /// Why not.
    pub audit_error: Option<String>,
}

/// A service or client a flow reaches.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// `service` or `client`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Address (services) or identity (clients).
    pub address: String,
    /// Protocol (services).
    pub protocol: Option<String>,
    /// The hub in front of it (services).
    pub via: Option<String>,
}

/// One device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Gateway.
    pub gateway: String,
    /// Port on the gateway.
    pub interface: String,
    /// Address.
    pub ip: String,
    /// MAC.
    pub mac: String,
    /// `explicit`, `routed` or `bridge`.
    pub insertion: String,
    /// Class.
    pub class: Option<String>,
    /// Manufacturer.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Firmware.
    pub firmware: Option<String>,
    /// IMDRF N70 lifecycle.
    pub lifecycle: Lifecycle,
    /// Known vulnerabilities.
    pub vulnerabilities: Vec<Finding>,
    /// SBOM reference.
    pub sbom: Option<String>,
    /// Controls in force.
    pub controls: Controls,
    /// What its gateway said.
    pub evidence: Option<DeviceEvidence>,
    /// Residual risks, plainly.
    pub residual_risks: Vec<Risk>,
}

/// A device's lifecycle.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    /// `supported`, `limited-support`, `end-of-support`, `end-of-life`, or
    /// `unknown`.
    pub stage: String,
    /// End of support.
    pub ends: Option<String>,
    /// Days from `today` to `ends` (negative: past).
    pub days_left: Option<i64>,
    /// No more security fixes.
    pub past_end_of_support: bool,
}

/// The controls Ward applies to a device.
#[derive(Debug, Clone, Serialize)]
pub struct Controls {
    /// `enforce` or `monitor`.
    pub mode: String,
    /// Quarantined by policy.
    pub quarantined: bool,
    /// How it is isolated.
    pub isolation: String,
    /// Anti-spoofing.
    pub anti_spoofing: String,
    /// Flows it may use.
    pub flows: Vec<FlowControl>,
    /// Raw exceptions that include it.
    pub exceptions: Vec<ExceptionControl>,
}

/// One allowed flow of a device.
#[derive(Debug, Clone, Serialize)]
pub struct FlowControl {
    /// Flow name.
    pub name: String,
    /// `outbound` (device to service) or `inbound` (client to device).
    pub direction: String,
    /// The service or client.
    pub peer: String,
    /// Its address, or the device port for inbound flows.
    pub address: String,
    /// Protocol.
    pub protocol: String,
    /// Tunnel transport (`tcp`, `quic`), `tls` for inbound clients, or
    /// `local`.
    pub transport: String,
    /// The guard, in words; none when unguarded.
    pub guard: Option<String>,
    /// Maintenance window of inbound access, in words.
    pub window: Option<String>,
}

/// A raw exception.
#[derive(Debug, Clone, Serialize)]
pub struct ExceptionControl {
    /// Name.
    pub name: String,
    /// Destination.
    pub to: String,
    /// `udp`, `tcp`, `icmp`.
    pub protocol: String,
    /// Port.
    pub port: Option<u16>,
    /// Why.
    pub justification: Option<String>,
}

/// What a device's gateway reported.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceEvidence {
    /// Gateway.
    pub gateway: String,
    /// Packets dropped (would-drop in monitor mode) in the window.
    pub drops: u64,
    /// Start of the window (RFC 3339): 24 h ago, or the last ruleset load.
    pub drops_since: String,
    /// Live connections.
    pub connections: usize,
    /// Live connections, by flow.
    pub live_flows: Vec<String>,
    /// Last connection (RFC 3339).
    pub last_seen: Option<String>,
    /// Quarantined at runtime.
    pub quarantined: bool,
}

/// A residual risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    /// Stable kind: `monitor-mode`, `exception-without-guard`,
    /// `flow-without-guard`, `past-end-of-support`, `eos-with-kev`,
    /// `no-sbom`, `inbound-without-window`, `no-evidence`.
    pub kind: String,
    /// In words.
    pub text: String,
}

fn name_of<T: Serialize>(t: &T) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn days_between(from: Date, to: Date) -> Option<i64> {
    let d = |x: Date| {
        time::Date::from_calendar_date(
            i32::from(x.year),
            time::Month::try_from(x.month).ok()?,
            x.day,
        )
        .ok()
    };
    Some((d(to)? - d(from)?).whole_days())
}

/// A guard in words.
pub fn guard_text(g: &Guard) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "any".to_owned()
        } else {
            v.join(", ")
        }
    };
    match g {
        Guard::Dicom(g) => format!(
            "DICOM: calling AE {}; called AE {}; SOP classes {}; commands {}",
            list(&g.calling_ae_titles),
            list(&g.called_ae_titles),
            list(
                &g.sop_classes
                    .iter()
                    .map(|u| ward_policy::model::sop_class_name(u)
                        .unwrap_or(u)
                        .to_owned())
                    .collect::<Vec<_>>()
            ),
            list(
                &g.commands
                    .iter()
                    .map(|c| ward_policy::model::dimse_command_name(*c))
                    .collect::<Vec<_>>()
            )
        ),
        Guard::Hl7(g) => format!(
            "HL7: message types {}; sending applications {}; facilities {}",
            list(&g.message_types),
            list(&g.sending_applications),
            list(&g.sending_facilities)
        ),
        Guard::Modbus(g) => {
            let functions: Vec<String> = g
                .functions
                .iter()
                .map(|f| {
                    ward_policy::model::modbus_function_name(*f)
                        .map_or_else(|| f.to_string(), str::to_owned)
                })
                .collect();
            let ranges: Vec<String> = g
                .addresses
                .iter()
                .flat_map(|(f, r)| {
                    r.iter().map(move |(a, b)| {
                        format!(
                            "{} {a}-{b}",
                            ward_policy::model::modbus_function_name(*f).unwrap_or("function")
                        )
                    })
                })
                .collect();
            format!(
                "Modbus: functions {}; unit ids {}; addresses {}",
                list(&functions),
                list(&g.unit_ids.iter().map(u8::to_string).collect::<Vec<_>>()),
                list(&ranges)
            )
        }
    }
}

fn window_text(w: &ward_policy::model::Window, tz: &str) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let days: Vec<&str> = w
        .days
        .iter()
        .filter_map(|d| DAYS.get(usize::from(*d)).copied())
        .collect();
    format!(
        "{} {:02}:{:02}-{:02}:{:02} ({})",
        days.join(", "),
        w.start / 60,
        w.start % 60,
        w.end / 60,
        w.end % 60,
        w.tz.as_deref().unwrap_or(tz)
    )
}

/// Evidence of each gateway, by name.
pub type Evidences = BTreeMap<String, Evidence>;

/// Build the report.
pub fn build(
    policy: &Policy,
    policy_file: &Path,
    policy_bytes: &[u8],
    evidence: &Evidences,
    adv: &Advisories,
    today: Date,
    now: i64,
) -> Report {
    let sha256 = {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(policy_bytes))
    };
    let mode = policy.mode;
    let mut devices = Vec::new();
    for (id, d) in &policy.devices {
        let gw = policy.gateways.get(&d.gateway.value);
        let insertion = gw.map_or_else(String::new, |g| g.insertion.to_string());
        let support = d.support.as_ref().map(|s| &s.value);
        let lifecycle = Lifecycle {
            stage: support.map_or_else(|| "unknown".to_owned(), |s| name_of(&s.stage)),
            ends: support.and_then(|s| s.ends).map(|e| e.to_string()),
            days_left: support
                .and_then(|s| s.ends)
                .and_then(|e| days_between(today, e)),
            past_end_of_support: d.past_end_of_support(Some(today)),
        };
        let vulnerabilities = adv.findings(
            &d.vulnerabilities,
            d.vendor.as_deref(),
            d.model.as_deref(),
            d.firmware.as_deref(),
        );
        let mut flows = Vec::new();
        for f in &policy.flows {
            match &f.kind {
                FlowKind::Outbound { device, service } if device.value == *id => {
                    let svc = policy.services.get(&service.value);
                    let local = svc.is_none_or(|s| s.via.is_none());
                    flows.push(FlowControl {
                        name: f.name.value.clone(),
                        direction: "outbound".into(),
                        peer: service.value.clone(),
                        address: svc.map_or_else(String::new, |s| s.address.value.to_string()),
                        protocol: svc.map_or_else(String::new, |s| s.protocol.to_string()),
                        transport: if local {
                            "local".into()
                        } else {
                            name_of(&f.transport)
                        },
                        guard: f.guard.as_ref().map(|g| guard_text(&g.value)),
                        window: None,
                    });
                }
                FlowKind::Inbound {
                    client,
                    device,
                    port,
                    window,
                } if device.value == *id => flows.push(FlowControl {
                    name: f.name.value.clone(),
                    direction: "inbound".into(),
                    peer: client.value.clone(),
                    address: format!("{}:{port}", d.ip.value),
                    protocol: f
                        .guard
                        .as_ref()
                        .map_or_else(|| "tcp".to_owned(), |g| g.value.protocol().to_string()),
                    transport: "tls".into(),
                    guard: f.guard.as_ref().map(|g| guard_text(&g.value)),
                    // The window's own zone, else the gateway's, else the site's.
                    window: window.as_ref().map(|w| {
                        let tz = gw
                            .and_then(|g| g.tz.as_ref())
                            .or(policy.tz.as_ref())
                            .map_or(ward_policy::model::DEFAULT_TZ, |t| t.value.as_str());
                        window_text(w, tz)
                    }),
                }),
                _ => {}
            }
        }
        let exceptions: Vec<ExceptionControl> = policy
            .exceptions
            .iter()
            .filter(|e| e.devices.iter().any(|x| x.value == *id))
            .map(|e| ExceptionControl {
                name: e.name.value.clone(),
                to: match e.to.value {
                    ExceptionTarget::Gateway => "the gateway".to_owned(),
                    t => t.to_string(),
                },
                protocol: name_of(&e.protocol),
                port: e.port,
                justification: e.justification.as_ref().map(|j| j.value.clone()),
            })
            .collect();
        let quarantined = policy.quarantine.iter().any(|q| q.value == *id);
        let controls = Controls {
            mode: mode.to_string(),
            quarantined,
            isolation: match gw.map(|g| g.insertion) {
                Some(Insertion::Bridge) => format!(
                    "bump in the wire: port {} of {}'s bridge; only its allowed flows are diverted to Ward, everything else is dropped",
                    d.interface.value, d.gateway.value
                ),
                Some(Insertion::Routed) => format!(
                    "own port {} of {} (the gateway is its router); default deny, no lateral traffic",
                    d.interface.value, d.gateway.value
                ),
                _ => format!(
                    "own port {} of {}; default deny, no lateral traffic; the device is pointed at the gateway's listeners",
                    d.interface.value, d.gateway.value
                ),
            },
            anti_spoofing: format!(
                "source address {} and MAC {} pinned to port {}; anything else from the port is dropped",
                d.ip.value, d.mac.value, d.interface.value
            ),
            flows,
            exceptions,
        };
        let ev = evidence.get(&d.gateway.value);
        let dev_evidence = ev.and_then(|e| {
            let live = e.devices.iter().find(|x| x.id == *id)?;
            let window = e.drops_24h.iter().find(|w| w.device == *id);
            let flows: Vec<String> = live.flows.clone();
            Some(DeviceEvidence {
                gateway: d.gateway.value.clone(),
                drops: window.map_or(live.drops, |w| w.packets),
                drops_since: rfc3339(window.map_or(e.at as i64, |w| w.since as i64)),
                connections: live.connections,
                live_flows: e
                    .flows
                    .iter()
                    .filter(|f| flows.contains(&f.flow))
                    .map(|f| format!("{} ({}, {}s)", f.flow, f.leg, f.age_secs))
                    .collect(),
                last_seen: live.last_seen.map(|t| rfc3339(t as i64)),
                quarantined: live.quarantined,
            })
        });
        let mut risks = Vec::new();
        let mut risk = |kind: &str, text: String| {
            risks.push(Risk {
                kind: kind.to_owned(),
                text,
            });
        };
        let running_mode = ev.map(|e| e.status.mode.clone());
        if mode == Mode::Monitor || running_mode.as_deref() == Some("monitor") {
            risk(
                "monitor-mode",
                format!(
                    "{} runs in monitor mode: nothing is blocked, traffic is only observed and counted.",
                    d.gateway.value
                ),
            );
        }
        for e in &controls.exceptions {
            risk(
                "exception-without-guard",
                format!(
                    "Exception {} lets {} to {}{} through unread: no protocol guard checks it.",
                    e.name,
                    e.protocol.to_uppercase(),
                    e.to,
                    e.port.map(|p| format!(":{p}")).unwrap_or_default()
                ),
            );
        }
        for f in &controls.flows {
            if f.guard.is_none() {
                risk(
                    "flow-without-guard",
                    format!(
                        "Flow {} carries any {} the {} sends: no protocol guard.",
                        f.name,
                        if f.protocol == "tcp" {
                            "bytes".to_owned()
                        } else {
                            format!("{} message", f.protocol.to_uppercase())
                        },
                        if f.direction == "inbound" {
                            "client"
                        } else {
                            "device"
                        }
                    ),
                );
            }
            if f.direction == "inbound" && f.window.is_none() {
                risk(
                    "inbound-without-window",
                    format!(
                        "Client {} may reach the device at any time (flow {}): no maintenance window.",
                        f.peer, f.name
                    ),
                );
            }
        }
        if lifecycle.past_end_of_support {
            let kev: Vec<&str> = vulnerabilities
                .iter()
                .filter(|v| v.kev && v.status.as_deref() != Some("known_not_affected"))
                .map(|v| v.id.as_str())
                .collect();
            if kev.is_empty() {
                risk(
                    "past-end-of-support",
                    format!(
                        "Past end of support{}: the manufacturer ships no more security fixes.",
                        lifecycle
                            .ends
                            .as_ref()
                            .map(|e| format!(" since {e}"))
                            .unwrap_or_default()
                    ),
                );
            } else {
                risk(
                    "eos-with-kev",
                    format!(
                        "Past end of support with vulnerabilities exploited in the wild (CISA KEV: {}): they will never be fixed; only the network controls stand between them and an attacker.",
                        kev.join(", ")
                    ),
                );
            }
        }
        if d.sbom.is_none() {
            risk(
                "no-sbom",
                "No SBOM: its software components, and so its exposure to new vulnerabilities, are unknown.".to_owned(),
            );
        }
        if ev.is_none() {
            risk(
                "no-evidence",
                format!(
                    "No evidence from {}: the controls are as configured, not verified on the running gateway.",
                    d.gateway.value
                ),
            );
        }
        devices.push(DeviceReport {
            id: id.clone(),
            name: d.name.clone(),
            gateway: d.gateway.value.clone(),
            interface: d.interface.value.clone(),
            ip: d.ip.value.to_string(),
            mac: d.mac.value.to_string(),
            insertion,
            class: d.class.clone(),
            vendor: d.vendor.clone(),
            model: d.model.clone(),
            firmware: d.firmware.clone(),
            lifecycle,
            vulnerabilities,
            sbom: d.sbom.clone(),
            controls,
            evidence: dev_evidence,
            residual_risks: risks,
        });
    }
    let gateways: Vec<GatewayReport> = policy
        .gateways
        .values()
        .map(|g| {
            let name = g.name.value.clone();
            let n = devices.iter().filter(|d| d.gateway == name).count();
            let hub = policy
                .services
                .values()
                .any(|s| s.via.as_ref().is_some_and(|v| v.value == name));
            GatewayReport {
                identity: policy.gateway_identity(&name),
                lan_address: g.lan_address.value.to_string(),
                role: match (n > 0, hub) {
                    (true, true) => "edge and hub",
                    (false, true) => "hub",
                    _ => "edge",
                }
                .to_owned(),
                insertion: g.insertion.to_string(),
                devices: n,
                evidence: evidence.get(&name).map(|e| GatewayEvidence {
                    at: rfc3339(e.at as i64),
                    mode: e.status.mode.clone(),
                    revision: e.status.revision.clone(),
                    policy_sha256: e.status.policy_sha256.clone(),
                    policy_matches: e.status.policy_sha256 == sha256,
                    uptime_secs: e.status.uptime_secs,
                    certificate_not_after: rfc3339(e.status.certificate_not_after),
                    certificate_days_left: (e.status.certificate_not_after - now)
                        .div_euclid(86_400),
                    connections: e.status.connections,
                    handshake_refusals: e.handshake_refusals.clone(),
                    audit_records: e.audit.records,
                    audit_intact: e.audit.intact,
                    audit_error: e.audit.error.clone(),
                }),
                name,
            }
        })
        .collect();
    let mut peers: Vec<PeerReport> = policy
        .services
        .values()
        .map(|s| PeerReport {
            kind: "service".into(),
            name: s.name.value.clone(),
            address: s.address.value.to_string(),
            protocol: Some(s.protocol.to_string()),
            via: s.via.as_ref().map(|v| v.value.clone()),
        })
        .collect();
    peers.extend(policy.clients.keys().map(|c| PeerReport {
        kind: "client".into(),
        name: c.clone(),
        address: policy.client_identity(c),
        protocol: None,
        via: None,
    }));
    let mut by_stage: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_risk: BTreeMap<String, usize> = BTreeMap::new();
    for d in &devices {
        *by_stage.entry(d.lifecycle.stage.clone()).or_default() += 1;
        let mut kinds: Vec<&str> = d.residual_risks.iter().map(|r| r.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for k in kinds {
            *by_risk.entry(k.to_owned()).or_default() += 1;
        }
    }
    let summary = Summary {
        devices: devices.len(),
        by_stage,
        by_risk,
        with_kev: devices
            .iter()
            .filter(|d| d.vulnerabilities.iter().any(|v| v.kev))
            .count(),
        past_end_of_support: devices
            .iter()
            .filter(|d| d.lifecycle.past_end_of_support)
            .count(),
        gateways_with_evidence: gateways.iter().filter(|g| g.evidence.is_some()).count(),
    };
    Report {
        format: FORMAT,
        generated_at: rfc3339(now),
        today: today.to_string(),
        site: policy.trust_domain.value.clone(),
        policy: PolicyRef {
            file: policy_file.display().to_string(),
            sha256,
            mode: mode.to_string(),
        },
        advisories: adv.sources.clone(),
        summary,
        gateways,
        devices,
        peers,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Stage names in lifecycle order, `unknown` last.
pub fn stages() -> Vec<&'static str> {
    let mut v = SupportStage::NAMES.to_vec();
    v.push("unknown");
    v
}

/// Run `wardctl report`.
pub fn run(args: ReportArgs, json_errors: bool) -> anyhow::Result<Exit> {
    let bytes = std::fs::read(&args.policy)
        .with_context(|| format!("reading policy {}", args.policy.display()))?;
    let Some(policy) = crate::policy::load_or_report(&args.policy, json_errors)? else {
        return Ok(Exit::DataErr);
    };
    let adv = Advisories::read(&args.kev, &args.csaf)?;
    let mut evidence: Evidences = BTreeMap::new();
    for file in &args.evidence {
        let text =
            std::fs::read(file).with_context(|| format!("reading evidence {}", file.display()))?;
        let e: Evidence = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a `wardctl evidence` file", file.display()))?;
        evidence.insert(e.status.gateway.clone(), e);
    }
    for socket in &args.from {
        let e: Evidence = crate::online::fetch(socket, "/v1/evidence")?;
        evidence.insert(e.status.gateway.clone(), e);
    }
    for name in evidence.keys() {
        anyhow::ensure!(
            policy.gateways.contains_key(name),
            "evidence from gateway {name:?}, which the policy {} does not name",
            args.policy.display()
        );
    }
    let now = time::OffsetDateTime::now_utc();
    let today = match &args.today {
        Some(t) => t
            .parse::<Date>()
            .map_err(|()| anyhow::anyhow!("--today {t:?}: expected YYYY-MM-DD"))?,
        None => Date {
            year: now.year() as u16,
            month: u8::from(now.month()),
            day: now.day(),
        },
    };
    let report = build(
        &policy,
        &args.policy,
        &bytes,
        &evidence,
        &adv,
        today,
        now.unix_timestamp(),
    );
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Html => html::render(&report)?,
        Format::Cyclonedx => serde_json::to_string_pretty(&export::cyclonedx(&report))? + "\n",
        Format::Fhir => serde_json::to_string_pretty(&export::fhir(&report))? + "\n",
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "report of {} devices, {} gateways ({} with evidence) written to {}",
                report.summary.devices,
                report.gateways.len(),
                report.summary.gateways_with_evidence,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../policy/examples/hospital.toml");

    /// Two unguarded client flows without a window: the monitor's risks
    /// name both, interleaved, and the site counts the device once per
    /// kind; without evidence every device says so; days count from
    /// `today`.
    #[test]
    fn risks_per_device_and_site() {
        let window = "window = { days = [\"tue\", \"thu\"], start = \"02:00\", end = \"04:00\" }\n";
        assert!(EXAMPLE.contains(window));
        let text = format!(
            "{}\n[[flows]]\nname = \"vendor-any-time\"\nfrom = \"vendor-vitalis\"\nto = \"monitor-icu-3\"\nport = 24106\nlisten = \"192.0.2.10:24106\"\n",
            EXAMPLE.replacen(window, "", 1)
        );
        let (p, _) = ward_policy::load("p.toml", &text, &Default::default()).expect("valid");
        let today = Date {
            year: 2026,
            month: 12,
            day: 5,
        };
        let r = build(
            &p,
            Path::new("p.toml"),
            text.as_bytes(),
            &BTreeMap::new(),
            &Advisories::default(),
            today,
            0,
        );
        let monitor = r
            .devices
            .iter()
            .find(|d| d.id == "monitor-icu-3")
            .expect("monitor");
        let kinds: Vec<&str> = monitor
            .residual_risks
            .iter()
            .map(|k| k.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "exception-without-guard",
                "flow-without-guard",
                "inbound-without-window",
                "flow-without-guard",
                "inbound-without-window",
                "no-sbom",
                "no-evidence"
            ]
        );
        assert_eq!(r.summary.by_risk["flow-without-guard"], 1);
        assert_eq!(r.summary.by_risk["no-evidence"], 4);
        assert_eq!(r.summary.by_risk["inbound-without-window"], 1);
        let ct = &r.devices[0];
        assert_eq!(ct.id, "ct-scanner-2");
        assert_eq!(ct.lifecycle.days_left, Some(-979));
        assert!(
            ct.residual_risks
                .iter()
                .any(|k| k.kind == "past-end-of-support")
        );
        assert_eq!(r.summary.gateways_with_evidence, 0);
    }
}
