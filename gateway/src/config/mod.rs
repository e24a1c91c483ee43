//! `wardd` configuration: defaults < `/etc/ward/ward.toml` (or `--config`) <
//! `WARD_*` environment variables (`__` splits nesting, e.g. `WARD_TLS__CERT`)
//! < command-line flags. Read into a raw struct that refuses unknown keys, then
//! converted into strong types, collecting every error with its key and source.
//!
//! [`load`] is the one entry point for start, `wardd check` and every reload:
//! configuration, then the policy compiled for this gateway, then the TLS
//! material, all validated and nothing applied.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use ward_policy::{Plan, Severity, ValidateOptions};

use crate::transport::tls::{self, TlsError, TlsMaterial, TlsPaths};

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

/// One problem with one configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}, from {origin}")]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `limits.drain_timeout`.
    pub key: String,
    /// Where the value came from: a file (with its path), an environment
    /// variable, a command-line flag, or `default`.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

/// The configuration is unusable; every problem is listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration: {}", issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// Every problem found, in key order of discovery.
    pub issues: Vec<ConfigIssue>,
}

/// Loading configuration, policy or TLS material failed. Nothing was bound
/// or applied; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Bad configuration (exit 78).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy file could not be read (exit 78).
    #[error("policy: {path}: {source}")]
    PolicyRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy is invalid (exit 65): every error diagnostic, rendered
    /// with file, line, column and key.
    #[error("invalid policy: {}", diagnostics.join("; "))]
    Policy {
        /// Rendered diagnostics.
        diagnostics: Vec<String>,
    },
    /// The policy has no such gateway (exit 78: `gateway` is configuration).
    #[error("gateway: {source} ({path})")]
    Gateway {
        /// Policy file.
        path: PathBuf,
        /// Why.
        source: ward_policy::CompileError,
    },
    /// Bad TLS material (exit 78).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// A CA file named by a service this gateway connects over TLS is
    /// missing or unusable (exit 78: the file belongs on this gateway).
    /// Each diagnostic names the policy file, line, key and path.
    #[error("service CA: {}", diagnostics.join("; "))]
    ServiceCa {
        /// Rendered diagnostics.
        diagnostics: Vec<String>,
    },
}

impl LoadError {
    /// Process exit code, per STYLE §8: 65 invalid policy, 78 invalid configuration.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Policy { .. } => 65,
            _ => 78,
        }
    }
}

/// Configuration, this gateway's plan and its TLS material: everything a
/// start or a reload validates before it binds or applies anything.
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The policy compiled for `config.gateway`, before runtime quarantine.
    pub plan: Plan,
    /// SHA-256 (hex) of the policy file's text.
    pub policy_sha256: String,
    /// Certificates, key, CA and CRL.
    pub tls: TlsMaterial,
}

/// Load and validate configuration, policy and TLS material.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Loaded, LoadError> {
    let config = Config::load(file, overrides)?;
    let (plan, policy_sha256) = load_plan(&config)?;
    let tls = TlsMaterial::load(&config.tls, &plan.identity)?;
    Ok(Loaded {
        config,
        plan,
        policy_sha256,
        tls,
    })
}

/// Read, validate and compile the policy for `config.gateway`, with the
/// SHA-256 (hex) of the file's text; policy warnings are logged.
pub fn load_plan(config: &Config) -> Result<(Plan, String), LoadError> {
    let text = std::fs::read_to_string(&config.policy).map_err(|source| LoadError::PolicyRead {
        path: config.policy.clone(),
        source,
    })?;
    let name = config.policy.display().to_string();
    let (policy, warnings) = ward_policy::load(
        &name,
        &text,
        &ValidateOptions {
            today: Some(today()),
        },
    )
    .map_err(|d| LoadError::Policy {
        diagnostics: d
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    })?;
    for w in warnings {
        tracing::warn!(diagnostic = %w, "policy warning");
    }
    let plan =
        ward_policy::compile(&policy, &config.gateway).map_err(|source| LoadError::Gateway {
            path: config.policy.clone(),
            source,
        })?;
    check_service_cas(&policy, &plan)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    Ok((plan, hex::encode(digest.as_ref())))
}

/// Every service CA file this gateway will use (an outbound flow's direct
/// TLS server, or the TLS server behind this hub) must read as PEM
/// certificates now, not at the first connection.
fn check_service_cas(policy: &ward_policy::model::Policy, plan: &Plan) -> Result<(), LoadError> {
    let used = plan.service_cas();
    let diagnostics: Vec<String> = used
        .into_keys()
        .filter_map(|name| {
            let tls = policy.services.get(name)?.tls.as_ref()?;
            let e = tls::check_ca(Path::new(&tls.ca)).err()?;
            let (line, column) = policy.source.locate(tls.span.start);
            Some(format!(
                "{}:{line}:{column}: error: services.{name}.tls.ca: {e}",
                policy.source.file()
            ))
        })
        .collect();
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(LoadError::ServiceCa { diagnostics })
    }
}

fn today() -> ward_policy::model::Date {
    let now = time::OffsetDateTime::now_utc();
    ward_policy::model::Date {
        year: now.year() as u16,
        month: u8::from(now.month()),
        day: now.day(),
    }
}

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
    /// Testing only: the clock of maintenance windows starts at this time
    /// (RFC 3339) and runs from there. Never set in production.
    fake_now: Option<String>,
    /// Loopback address to use as the source for outgoing QUIC (defaults to unspecified).
    quic_bind: Option<String>,
    /// Admin API socket.
    admin_socket: String,
    /// Prometheus metrics listener (loopback); empty disables it.
    metrics_listen: String,
    audit: RawAudit,
    telemetry: RawTelemetry,
    observe: RawObserve,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObserve {
    /// How often the learning sets are read.
    poll: String,
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
            observe: RawObserve { poll: "30s".into() },
        }
    }
}

/// `telemetry.metrics_interval` when not set.
const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(30);

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

/// Where the audit trail is forwarded (`[audit]`): syslog over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditForward {
    /// Receiver address (`audit.forward`).
    pub addr: SocketAddr,
    /// CA file that signs the receiver's certificate (`audit.forward_ca`).
    pub ca: PathBuf,
    /// Name the receiver's certificate must carry (`audit.forward_server_name`).
    pub server_name: String,
}

/// OTLP export settings (`[telemetry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// Collector base URL, e.g. `http://127.0.0.1:4318`.
    pub endpoint: String,
    /// How often metrics are exported (default 30 s).
    pub metrics_interval: Duration,
    /// The gateway name, sent as the resource attribute `ward.gateway`.
    pub gateway: String,
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
    /// Worker threads of the runtime that carries every connection (1-256;
    /// default one per CPU).
    pub workers: usize,
    /// This gateway's name in the policy (`gateway`, `WARD_GATEWAY` or `--gateway`).
    pub gateway: String,
    /// Policy file in force: `state_dir/applied-policy.toml` when
    /// `wardctl policy apply` put one there, else `configured_policy`.
    pub policy: PathBuf,
    /// Policy file of the configuration (`policy` or `--policy`).
    pub configured_policy: PathBuf,
    /// Directory of the QUIC reset key, audit trail, forwarder position and
    /// runtime quarantine.
    pub state_dir: PathBuf,
    /// TLS files (`[tls]` ca, cert, key, crl).
    pub tls: TlsPaths,
    /// How often TLS files are checked for a changed modification time.
    pub tls_watch: Duration,
    /// How often the learning sets are read (`observe.poll`).
    pub observe_poll: Duration,
    /// `[limits]`.
    pub limits: Limits,
    /// Apply the nftables ruleset (false only for unprivileged tests).
    pub apply_nft: bool,
    /// Testing only: the time (Unix seconds) the clock of maintenance
    /// windows reads at start; it runs from there.
    pub fake_now: Option<i64>,
    /// Source address of outgoing QUIC (default: unspecified).
    pub quic_bind: Option<IpAddr>,
    /// Admin API socket (mode 0660).
    pub admin_socket: PathBuf,
    /// Prometheus metrics listener; `None` when `metrics_listen = ""`.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to forward the audit trail, when `[audit] forward` is set.
    pub audit_forward: Option<AuditForward>,
    /// OTLP export, when `[telemetry] otlp_endpoint` is set.
    pub otlp: Option<Otlp>,
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
            return Err(ConfigError {
                issues: vec![ConfigIssue {
                    key: "config".into(),
                    origin: "--config".into(),
                    message: format!("{}: file not found", path.display()),
                }],
            });
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
        let origin_of = |m: Option<&figment::Metadata>, key: &str| -> String {
            match m {
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
        let raw: Raw = figment.extract().map_err(|e| ConfigError {
            issues: e
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    ConfigIssue {
                        origin: origin_of(e.metadata.as_ref(), &key),
                        message: e.kind.to_string(),
                        key: if key.is_empty() {
                            "(top level)".into()
                        } else {
                            key
                        },
                    }
                })
                .collect(),
        })?;
        let mut issues = Vec::new();
        let mut issue = |key: &str, message: String| {
            issues.push(ConfigIssue {
                key: key.to_owned(),
                origin: origin_of(figment.find_metadata(key), key),
                message,
            });
        };
        let duration = |issue: &mut dyn FnMut(&str, String), key: &str, v: &str| -> Duration {
            ward_policy::parse_duration(v).unwrap_or_else(|| {
                issue(key, format!("{v:?} is not a duration (e.g. \"10s\")"));
                Duration::from_secs(1)
            })
        };
        let handshake_timeout = duration(
            &mut issue,
            "limits.handshake_timeout",
            &raw.limits.handshake_timeout,
        );
        let drain_timeout = duration(
            &mut issue,
            "limits.drain_timeout",
            &raw.limits.drain_timeout,
        );
        let tls_watch = duration(&mut issue, "tls.watch_interval", &raw.tls.watch_interval);
        let observe_poll = duration(&mut issue, "observe.poll", &raw.observe.poll);
        let most = Duration::from_secs(u64::from(ward_policy::nft::OBSERVE_TIMEOUT_SECS) / 4);
        if observe_poll.is_zero() || observe_poll > most {
            issue(
                "observe.poll",
                format!(
                    "must be between 1s and {} (well inside the learning sets' element timeout)",
                    ward_policy::model::format_duration(most)
                ),
            );
        }
        let gateway = raw.gateway.clone().unwrap_or_else(|| {
            issue("gateway", "required: the name of this gateway in the policy (gateway = \"edge-01\", WARD_GATEWAY or --gateway)".into());
            String::new()
        });
        if raw.limits.max_handshakes == 0 {
            issue("limits.max_handshakes", "must be at least 1".into());
        }
        if raw.limits.max_connections_per_source == 0 {
            issue(
                "limits.max_connections_per_source",
                "must be at least 1".into(),
            );
        }
        let workers = match raw.workers {
            None => default_workers(),
            Some(n @ 1..=MAX_WORKERS) => n,
            Some(n) => {
                issue("workers", format!("{n} is not between 1 and {MAX_WORKERS}"));
                1
            }
        };
        let fake_now = raw.fake_now.as_deref().and_then(|s| {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => Some(t.unix_timestamp()),
                Err(e) => {
                    issue("fake_now", format!("{s:?} is not an RFC 3339 time: {e}"));
                    None
                }
            }
        });
        let quic_bind = raw.quic_bind.as_deref().and_then(|s| match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                issue("quic_bind", format!("{s:?} is not an IP address"));
                None
            }
        });
        let metrics_listen = if raw.metrics_listen.is_empty() {
            None
        } else {
            match raw.metrics_listen.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    issue(
                        "metrics_listen",
                        format!("{:?} is not an address with port", raw.metrics_listen),
                    );
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
                Ok(addr) => Some(AuditForward {
                    addr,
                    ca: ca.into(),
                    server_name: name.clone(),
                }),
                Err(_) => {
                    issue(
                        "audit.forward",
                        format!("{addr:?} is not an address with port"),
                    );
                    None
                }
            },
            (Some(_), _, _) => {
                issue("audit.forward", "needs audit.forward_ca and audit.forward_server_name (the receiver is verified)".into());
                None
            }
        };
        let otlp = raw.telemetry.otlp_endpoint.as_ref().and_then(|ep| {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                issue(
                    "telemetry.otlp_endpoint",
                    format!("{ep:?} is not an http(s) URL"),
                );
                return None;
            }
            let interval = raw
                .telemetry
                .metrics_interval
                .as_deref()
                .map_or(Some(DEFAULT_METRICS_INTERVAL), ward_policy::parse_duration);
            let Some(metrics_interval) = interval else {
                issue(
                    "telemetry.metrics_interval",
                    "not a duration (e.g. \"30s\")".into(),
                );
                return None;
            };
            Some(Otlp {
                endpoint: ep.clone(),
                metrics_interval,
                gateway: raw.gateway.clone().unwrap_or_default(),
            })
        });
        if !issues.is_empty() {
            return Err(ConfigError { issues });
        }
        let mut config = Config {
            workers,
            gateway,
            policy: raw.policy.clone().into(),
            configured_policy: raw.policy.into(),
            state_dir: raw.state_dir.into(),
            tls: TlsPaths {
                ca: raw.tls.ca.into(),
                cert: raw.tls.cert.into(),
                key: raw.tls.key.into(),
                crl: raw.tls.crl.map(Into::into),
            },
            tls_watch,
            observe_poll,
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
        };
        config.policy = config.effective_policy();
        Ok(config)
    }

    /// The policy file in force: the one `wardctl policy apply` left in
    /// the state directory, else the configured one.
    pub fn effective_policy(&self) -> PathBuf {
        let applied = self.state_dir.join(APPLIED_POLICY);
        if applied.exists() {
            applied
        } else {
            self.configured_policy.clone()
        }
    }
}

/// The policy `wardctl policy apply` put in force, in `state_dir`; it
/// overrides the configured policy file until another apply replaces it.
pub const APPLIED_POLICY: &str = "applied-policy.toml";
