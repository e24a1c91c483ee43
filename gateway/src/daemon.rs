//! `wardd`'s lifecycle: validate everything before binding a port, apply the
//! ruleset, serve, reload on SIGHUP or when TLS files change, drain on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use ward_policy::{Plan, Severity, ValidateOptions};

use crate::config::{Config, ConfigError, Overrides};
use crate::control::Control;
use crate::nft::Nft;
use crate::server::{Clock, Gateway, Shared};
use crate::tls::{TlsError, TlsMaterial};

/// Why `wardd` could not start; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 78).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Bad TLS material (exit 78).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// Bad policy (exit 65): every diagnostic.
    #[error("invalid policy: {}", .0.join("; "))]
    Policy(Vec<String>),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// Process exit code, per STYLE §8.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Tls(_) => 78,
            StartError::Policy(_) => 65,
            StartError::Other(_) => 1,
        }
    }
}

/// Read, validate and compile the policy for `config.gateway`.
pub fn load_plan(config: &Config) -> Result<Plan, StartError> {
    let text = std::fs::read_to_string(&config.policy).map_err(|e| {
        StartError::Config(ConfigError(vec![format!(
            "policy: {}: {e}",
            config.policy.display()
        )]))
    })?;
    let name = config.policy.display().to_string();
    let (policy, warnings) = ward_policy::load(
        &name,
        &text,
        &ValidateOptions {
            today: Some(today()),
        },
    )
    .map_err(|d| {
        StartError::Policy(
            d.iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| d.to_string())
                .collect(),
        )
    })?;
    for w in warnings {
        warn!(diagnostic = %w, "policy warning");
    }
    ward_policy::compile(&policy, &config.gateway)
        .map_err(|e| StartError::Config(ConfigError(vec![format!("gateway: {e} ({name})")])))
}

fn today() -> ward_policy::model::Date {
    let now = time::OffsetDateTime::now_utc();
    ward_policy::model::Date {
        year: now.year() as u16,
        month: u8::from(now.month()),
        day: now.day(),
    }
}

/// Everything `wardd check` verifies, without binding or applying anything.
pub fn check(
    config_file: Option<&Path>,
    overrides: &Overrides,
) -> Result<(Config, Plan), StartError> {
    let config = Config::load(config_file, overrides)?;
    let plan = load_plan(&config)?;
    TlsMaterial::load(&config.tls, &plan.identity)?;
    Ok((config, plan))
}

/// Run the daemon until SIGTERM or SIGINT.
///
/// `config` is what `config_file` and `overrides` gave when the process
/// started (the runtime's worker count comes from it); reloads read them again.
pub async fn run(
    config: Config,
    config_file: Option<PathBuf>,
    overrides: Overrides,
) -> Result<(), StartError> {
    // Tracing starts once the configuration says where spans go; errors
    // before this point are printed by main.
    let telemetry = crate::telemetry::init(config.otlp.as_ref())
        .map_err(|e| StartError::Config(ConfigError(vec![e])))?;
    let plan = Arc::new(load_plan(&config)?);
    // Every tunnel holds two sockets; the default soft limit (1024) would cap
    // a gateway at a few hundred connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(nofile = n, "file descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let tls = Arc::new(TlsMaterial::load(&config.tls, &plan.identity)?);
    // Devices an admin quarantined before a restart stay quarantined.
    let runtime_quarantine = crate::control::load_runtime_quarantine(&config.state_dir);
    let base = plan.clone();
    let plan = Arc::new(plan.with_quarantine(runtime_quarantine.iter().map(String::as_str)));
    let nft = Nft::default();
    if config.apply_nft {
        let applied = nft
            .apply_json(&plan.to_nft_json())
            .map_err(|e| StartError::Other(format!("applying the ruleset: {e}")))?;
        info!(
            elapsed_ms = applied.elapsed.as_millis() as u64,
            revision = %crate::control::revision(&plan),
            "ruleset applied: table inet ward"
        );
    } else {
        warn!(
            "nft.apply = false: the ruleset is not applied (testing only); devices are not isolated"
        );
    }
    let clock = config.fake_now.map_or(Clock::System, Clock::Fixed);
    let reset_key = crate::quic::reset_key(&config.state_dir)
        .map_err(|e| StartError::Other(format!("state: {e}")))?;
    let admin = crate::admin::bind(&config.admin_socket).map_err(|e| {
        StartError::Other(format!(
            "admin socket {}: {e}",
            config.admin_socket.display()
        ))
    })?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("metrics listener {addr}: {e}")))?,
        ),
        None => None,
    };
    let audit_path = config.state_dir.join("audit.jsonl");
    let audit =
        Arc::new(crate::audit::Audit::open(&audit_path).map_err(|e| {
            StartError::Other(format!("audit trail {}: {e}", audit_path.display()))
        })?);
    audit.record(
        "policy",
        "applied",
        serde_json::json!({"trigger": "start", "revision": crate::control::revision(&plan), "policy": config.policy.display().to_string(), "nft": config.apply_nft}),
    );
    let gateway = Gateway::bind(
        plan.clone(),
        tls.clone(),
        config.limits,
        clock,
        config.quic_bind,
        &reset_key,
        audit.clone(),
    )
    .await
    .map_err(|e| StartError::Other(e.to_string()))?;
    let mut addrs: Vec<String> = gateway
        .local_addrs()
        .iter()
        .map(|(what, a)| format!("{what}={a}"))
        .collect();
    addrs.push(format!("admin={}", config.admin_socket.display()));
    if let Some(m) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
        addrs.push(format!("metrics={m}"));
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        gateway = %plan.gateway,
        identity = %plan.identity,
        mode = %plan.mode,
        workers = config.workers,
        listen = %addrs.join(" "),
        "wardd ready"
    );
    let shared = gateway.shared();
    crate::telemetry::register_metrics(&telemetry, shared.registry.clone());
    let shutdown = CancellationToken::new();
    let control = Arc::new(Control::new(
        shared.clone(),
        &config,
        config_file.clone(),
        overrides.clone(),
        base,
        runtime_quarantine,
        addrs,
    ));
    crate::admin::spawn_admin(admin, control.clone(), shutdown.clone());
    // systemd (Type=notify): ready only now, with every port bound and the
    // ruleset applied. Outside systemd these calls do nothing.
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    if let Some(m) = metrics {
        crate::metrics::spawn_metrics(m, control.clone(), shutdown.clone());
    }
    if let Some(target) = config.audit_forward.clone() {
        crate::forward::spawn_forwarder(
            shared.clone(),
            audit_path.clone(),
            config.state_dir.clone(),
            target,
            plan.gateway.clone(),
            audit.appended.clone(),
            shutdown.clone(),
        );
    }
    let serving = tokio::spawn(gateway.run(shutdown.clone()));
    spawn_tls_watch(shared.clone(), config.clone(), shutdown.clone());

    let mut term = signal(SignalKind::terminate()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| StartError::Other(e.to_string()))?;
    // The watchdog is pinged from this loop, so a wedged main loop gets the
    // service restarted (the ruleset stays meanwhile: fail closed).
    let watchdog = sd_notify::watchdog_enabled();
    let mut ping =
        tokio::time::interval(watchdog.map_or(std::time::Duration::from_secs(3600), |d| d / 2));
    loop {
        tokio::select! {
            _ = ping.tick(), if watchdog.is_some() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                let span = tracing::info_span!("reload", trigger = "SIGHUP");
                let _e = span.enter();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                let r = control.reload("SIGHUP");
                let status = if r.ok { "serving".to_owned() } else { format!("serving; last reload rejected: {}", r.error.unwrap_or_default()) };
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let _ = serving.await;
    let _ = std::fs::remove_file(&config.admin_socket);
    info!("wardd stopped; the ruleset stays in place (fail closed)");
    drop(telemetry);
    Ok(())
}

fn mtimes(config: &Config) -> Vec<Option<SystemTime>> {
    let mut paths = vec![&config.tls.ca, &config.tls.cert, &config.tls.key];
    if let Some(c) = &config.tls.crl {
        paths.push(c);
    }
    paths
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reload certificates and CRL when their files change, without dropping
/// tunnels (except those of a peer the new CRL revokes).
fn spawn_tls_watch(shared: Arc<Shared>, config: Config, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut seen = mtimes(&config);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(config.tls_watch) => {}
            }
            let now = mtimes(&config);
            if now == seen {
                continue;
            }
            seen = now;
            let identity = shared.plan().identity.clone();
            match TlsMaterial::load(&config.tls, &identity) {
                Ok(tls) => {
                    let revoked = tls.revoked.len();
                    shared.audit.record(
                        "certificate",
                        "reloaded",
                        serde_json::json!({"crl_entries": revoked, "not_after": tls.not_after}),
                    );
                    shared.set_tls(Arc::new(tls));
                    let closed = shared.close_revoked();
                    info!(
                        crl_entries = revoked,
                        closed, "tls files changed: certificates and CRL reloaded"
                    );
                }
                Err(e) => {
                    error!(error = %e, "tls files changed but do not load; keeping the previous ones")
                }
            }
        }
    });
}
