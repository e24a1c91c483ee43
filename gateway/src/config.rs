//! `wardd` configuration: defaults < `/etc/ward/ward.toml` (or `--config`) <
//! `WARD_*` environment variables (`__` splits nesting, e.g. `WARD_TLS__CERT`)
//! < command-line flags. Read into a raw struct that refuses unknown keys, then
//! converted into strong types, collecting every error with its key and source.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::tls::TlsPaths;

/// Top-level keys that `WARD_*` environment variables may set.
const ENV_KEYS: [&str; 9] = [
    "gateway",
    "workers",
    "policy",
    "state_dir",
    "tls",
    "limits",
    "nft",
    "fake_now",
    "quic_bind",
];

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/ward/ward.toml";

/// The configuration is unusable; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gateway: Option<String>,
    /// Threads running the data path; absent: one per CPU.
    workers: Option<usize>,
    policy: String,
    state_dir: String,
    tls: RawTls,
    limits: RawLimits,
    nft: RawNft,
    /// Testing only: pretend the clock reads this (RFC 3339) when judging
    /// maintenance windows. Never set in production.
    fake_now: Option<String>,
    /// Loopback address to use as the source for outgoing QUIC (defaults to unspecified).
    quic_bind: Option<String>,
    /// Admin API socket.
    admin_socket: String,
    /// Prometheus metrics listener (loopback); empty disables it.
    metrics_listen: String,
    audit: RawAudit,
    telemetry: RawTelemetry,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    metrics_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    forward: Option<String>,
    forward_ca: Option<String>,
    forward_server_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
    crl: Option<String>,
    watch_interval: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: String,
    max_handshakes: u32,
    max_connections_per_source: u32,
    drain_timeout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNft {
    apply: bool,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            gateway: None,
            workers: None,
            policy: "/etc/ward/policy.toml".into(),
            state_dir: "/var/lib/ward".into(),
            tls: RawTls {
                ca: "/etc/ward/pki/ca.crt".into(),
                cert: "/etc/ward/tls/gateway.crt".into(),
                key: "/etc/ward/tls/gateway.key".into(),
                crl: None,
                watch_interval: "5s".into(),
            },
            limits: RawLimits {
                handshake_timeout: "10s".into(),
                max_handshakes: 256,
                max_connections_per_source: 256,
                drain_timeout: "30s".into(),
            },
            nft: RawNft { apply: true },
            fake_now: None,
            quic_bind: None,
            admin_socket: ward_api::DEFAULT_SOCKET.into(),
            metrics_listen: "127.0.0.1:9464".into(),
            audit: RawAudit::default(),
            telemetry: RawTelemetry::default(),
        }
    }
}

/// Most worker threads `workers` may ask for.
const MAX_WORKERS: usize = 256;

/// One per CPU. Fewer threads spend less CPU per relayed byte (fewer
/// cross-thread wake-ups: on the 2-CPU reference machine one worker moves a
/// byte for 10-20% less CPU than two) but carry less when many flows stream
/// at once (8 concurrent TLS streams: about 7.5 Gb/s with one worker per
/// gateway, about 9 with two); a gateway shares its box with nothing else.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TLS or QUIC handshake, or an open frame, must complete within this.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; more are refused until one finishes.
    pub max_handshakes: u32,
    /// Open connections per source address.
    pub max_connections_per_source: u32,
    /// On shutdown, open connections get this long to finish.
    pub drain_timeout: Duration,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads of the runtime that carries every connection.
    pub workers: usize,
    /// This gateway's name in the policy.
    pub gateway: String,
    /// Policy file.
    pub policy: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// TLS files.
    pub tls: TlsPaths,
    /// How often TLS files are checked for changes.
    pub tls_watch: Duration,
    /// Limits.
    pub limits: Limits,
    /// Apply the nftables ruleset (off only for unprivileged tests).
    pub apply_nft: bool,
    /// Testing only: fixed wall-clock time (Unix seconds) for maintenance windows.
    pub fake_now: Option<i64>,
    /// Source address for outgoing QUIC.
    pub quic_bind: Option<IpAddr>,
    /// Admin API socket.
    pub admin_socket: PathBuf,
    /// Prometheus metrics listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where to forward the audit trail (syslog over TLS).
    pub audit_forward: Option<crate::forward::Target>,
    /// OTLP export.
    pub otlp: Option<crate::telemetry::Otlp>,
}

/// Command-line values that override every other layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--gateway`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `--policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Config {
    /// Load from `file` (the default file may be absent; an explicit one must
    /// exist), the environment and `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let path = file.unwrap_or(Path::new(DEFAULT_CONFIG));
        if file.is_some() && !path.exists() {
            return Err(ConfigError(vec![format!(
                "{}: file not found",
                path.display()
            )]));
        }
        let figment = Figment::from(Serialized::defaults(Raw::default()))
            .merge(Toml::file(path))
            .merge(
                // Only the configuration's own keys: WARD_LOG, WARD_SOCKET and
                // friends belong to other parts of Ward.
                Env::prefixed("WARD_")
                    .filter(|k| {
                        let top = k.as_str().split("__").next().unwrap_or("");
                        ENV_KEYS.iter().any(|known| top.eq_ignore_ascii_case(known))
                    })
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let raw: Raw = figment
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(|e| e.to_string()).collect()))?;
        let mut errs = Vec::new();
        let source = |key: &str| -> String {
            match figment.find_metadata(key) {
                Some(m) if m.name.contains("environment") => {
                    format!(
                        "environment variable WARD_{}",
                        key.replace('.', "__").to_uppercase()
                    )
                }
                Some(m) => match &m.source {
                    Some(s) => format!("{} ({s})", m.name),
                    None => m.name.to_string(),
                },
                None => "default".into(),
            }
        };
        let mut duration = |key: &str, v: &str| -> Duration {
            ward_policy::parse_duration(v).unwrap_or_else(|| {
                errs.push(format!(
                    "{key}: {v:?} is not a duration (e.g. \"10s\"), from {}",
                    source(key)
                ));
                Duration::from_secs(1)
            })
        };
        let handshake_timeout = duration("limits.handshake_timeout", &raw.limits.handshake_timeout);
        let drain_timeout = duration("limits.drain_timeout", &raw.limits.drain_timeout);
        let tls_watch = duration("tls.watch_interval", &raw.tls.watch_interval);
        let gateway = raw.gateway.clone().unwrap_or_else(|| {
            errs.push("gateway: required: the name of this gateway in the policy (gateway = \"edge-01\", WARD_GATEWAY or --gateway)".into());
            String::new()
        });
        if raw.limits.max_handshakes == 0 {
            errs.push(format!(
                "limits.max_handshakes: must be at least 1, from {}",
                source("limits.max_handshakes")
            ));
        }
        if raw.limits.max_connections_per_source == 0 {
            errs.push(format!(
                "limits.max_connections_per_source: must be at least 1, from {}",
                source("limits.max_connections_per_source")
            ));
        }
        let workers = match raw.workers {
            None => default_workers(),
            Some(n @ 1..=MAX_WORKERS) => n,
            Some(n) => {
                errs.push(format!(
                    "workers: {n} is not between 1 and {MAX_WORKERS}, from {}",
                    source("workers")
                ));
                1
            }
        };
        let fake_now = raw.fake_now.as_deref().and_then(|s| {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => Some(t.unix_timestamp()),
                Err(e) => {
                    errs.push(format!("fake_now: {s:?} is not an RFC 3339 time: {e}"));
                    None
                }
            }
        });
        let quic_bind = raw.quic_bind.as_deref().and_then(|s| match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errs.push(format!(
                    "quic_bind: {s:?} is not an IP address, from {}",
                    source("quic_bind")
                ));
                None
            }
        });
        let metrics_listen = if raw.metrics_listen.is_empty() {
            None
        } else {
            match raw.metrics_listen.parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errs.push(format!(
                        "metrics_listen: {:?} is not an address with port, from {}",
                        raw.metrics_listen,
                        source("metrics_listen")
                    ));
                    None
                }
            }
        };
        let audit_forward = match (
            &raw.audit.forward,
            &raw.audit.forward_ca,
            &raw.audit.forward_server_name,
        ) {
            (None, _, _) => None,
            (Some(addr), Some(ca), Some(name)) => match addr.parse() {
                Ok(addr) => Some(crate::forward::Target {
                    addr,
                    ca: ca.into(),
                    server_name: name.clone(),
                }),
                Err(_) => {
                    errs.push(format!(
                        "audit.forward: {addr:?} is not an address with port, from {}",
                        source("audit.forward")
                    ));
                    None
                }
            },
            (Some(_), _, _) => {
                errs.push("audit.forward needs audit.forward_ca and audit.forward_server_name (the receiver is verified)".into());
                None
            }
        };
        let otlp = raw.telemetry.otlp_endpoint.as_ref().and_then(|ep| {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                errs.push(format!(
                    "telemetry.otlp_endpoint: {ep:?} is not an http(s) URL, from {}",
                    source("telemetry.otlp_endpoint")
                ));
                return None;
            }
            let interval = raw
                .telemetry
                .metrics_interval
                .as_deref()
                .map_or(Some(Duration::from_secs(30)), ward_policy::parse_duration);
            let Some(metrics_interval) = interval else {
                errs.push("telemetry.metrics_interval: not a duration (e.g. \"30s\")".into());
                return None;
            };
            Some(crate::telemetry::Otlp {
                endpoint: ep.clone(),
                metrics_interval,
                gateway: raw.gateway.clone().unwrap_or_default(),
            })
        });
        if !errs.is_empty() {
            return Err(ConfigError(errs));
        }
        Ok(Config {
            workers,
            gateway,
            policy: raw.policy.into(),
            state_dir: raw.state_dir.into(),
            tls: TlsPaths {
                ca: raw.tls.ca.into(),
                cert: raw.tls.cert.into(),
                key: raw.tls.key.into(),
                crl: raw.tls.crl.map(Into::into),
            },
            tls_watch,
            limits: Limits {
                handshake_timeout,
                max_handshakes: raw.limits.max_handshakes,
                max_connections_per_source: raw.limits.max_connections_per_source,
                drain_timeout,
            },
            apply_nft: raw.nft.apply,
            fake_now,
            quic_bind,
            admin_socket: raw.admin_socket.into(),
            metrics_listen,
            audit_forward,
            otlp,
        })
    }
}
