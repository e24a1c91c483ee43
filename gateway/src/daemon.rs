//! `wardd`'s lifecycle: the start order, serving, and the drain.
//!
//! Start: configuration, policy and TLS material loaded and validated →
//! every socket bound (QUIC reset key, audit trail, admin socket, metrics,
//! every listener, the QUIC endpoint) → the ruleset applied → "policy
//! applied" audited → READY. A failure before the ruleset is applied leaves
//! the previous ruleset, and the audit trail, as they were.
//!
//! Signals are not handled here: [`Gateway::serve`] takes a shutdown future
//! and a stream of reload triggers, so `main` wires signals to them and
//! tests run gateways inside the test process.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use ward_api::audit::{AuditEvent, PolicyAction};

use crate::audit::Audit;
use crate::audit::forward::{self, Forwarder};
use crate::config::{Config, LoadError};
use crate::control::nft::{ApplyError, Nft};
use crate::control::{self, Control, Sources, Started};
use crate::observe::{self, Observer};
use crate::ops::telemetry;
use crate::proxy::{BindError, Clock, Listeners, ProxyState, Serving};
use crate::transport::quic::{self, QuicPool};
use crate::transport::tls::TlsMaterial;

/// After the drain period, cut connections get this long to unwind.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// Why `wardd` could not start. Nothing was applied unless the variant
/// says so; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Configuration, policy or TLS material (exit 78, or 65 for the policy).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The state directory or the QUIC reset key in it (exit 73).
    #[error("state: {path}: {source}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit trail cannot be opened (exit 73).
    #[error("audit trail {path}: {source}")]
    Audit {
        /// The trail.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket cannot be bound (exit 69).
    #[error("admin socket {path}: {source}")]
    AdminSocket {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics listener cannot be bound (exit 69).
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A data-path listener cannot be bound (exit 69).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// nft refused the ruleset; the previous one stays (exit 1).
    #[error("applying the ruleset: {0}")]
    Nft(#[from] ApplyError),
}

impl StartError {
    /// Process exit code (sysexits): 78 configuration, 65 policy, 73 state
    /// files, 69 an address or socket not available, 1 nft refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Load(e) => e.exit_code(),
            StartError::State { .. } | StartError::Audit { .. } => 73,
            StartError::AdminSocket { .. } | StartError::Metrics { .. } | StartError::Bind(_) => 69,
            StartError::Nft(_) => 1,
        }
    }
}

/// A started gateway: every socket bound, the ruleset applied, READY sent;
/// nothing served until [`Gateway::serve`].
pub struct Gateway {
    control: Arc<Control>,
    proxy: Arc<ProxyState>,
    listeners: Option<Listeners>,
    admin: Option<tokio::net::UnixListener>,
    metrics: Option<tokio::net::TcpListener>,
    forwarder: Option<Forwarder>,
    config: Config,
    addrs: Vec<(String, String)>,
}

/// The address outgoing QUIC binds to.
fn quic_client_bind(config: &Config) -> SocketAddr {
    match config.quic_bind {
        Some(ip) => SocketAddr::new(ip, 0),
        None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

impl Gateway {
    /// Start a gateway with `config` (as `sources` gave it): load the policy
    /// and TLS material, bind everything, apply the ruleset, audit it.
    pub async fn start(
        mut config: Config,
        sources: Sources,
        telemetry: &telemetry::Guard,
    ) -> Result<Gateway, StartError> {
        // A pending apply whose deadline passed while wardd was down is
        // rolled back before the policy is read.
        let rolled_back =
            control::confirm::settle_at_start(&config.state_dir).map_err(|source| {
                StartError::State {
                    path: config.state_dir.join(control::confirm::PENDING),
                    source,
                }
            })?;
        config.policy = config.effective_policy();
        let (base, policy_sha256) = crate::config::load_plan(&config)?;
        let base = Arc::new(base);
        let tls =
            Arc::new(TlsMaterial::load(&config.tls, &base.identity).map_err(LoadError::from)?);
        // Every tunnel holds two sockets; the default soft limit (1024) would
        // cap a gateway at a few hundred connections.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => info!(nofile = n, "file descriptor limit"),
            Err(e) => warn!(error = %e, "cannot raise the file descriptor limit"),
        }
        // Devices an admin quarantined before a restart stay quarantined.
        let quarantine: BTreeSet<String> = control::load_runtime_quarantine(&config.state_dir);
        let plan = Arc::new(base.with_quarantine(quarantine.iter().map(String::as_str)));

        // Bind everything before touching the ruleset.
        let reset_key = quic::reset_key(&config.state_dir).map_err(|source| StartError::State {
            path: config.state_dir.join("quic-reset.key"),
            source,
        })?;
        let audit_path = config.state_dir.join("audit.jsonl");
        let audit = Arc::new(
            Audit::open(&audit_path).map_err(|source| StartError::Audit {
                path: audit_path.clone(),
                source,
            })?,
        );
        let admin = crate::ops::admin::bind(&config.admin_socket).map_err(|source| {
            StartError::AdminSocket {
                path: config.admin_socket.clone(),
                source,
            }
        })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let listeners = Listeners::bind(&plan, &tls, &reset_key).await?;

        if config.apply_nft {
            let batch = ward_policy::nft::render_json(&plan);
            let for_routing = plan.clone();
            let applied = tokio::task::spawn_blocking(move || {
                let nft = Nft::default();
                nft.prepare_interception(&for_routing)?;
                nft.apply_json(&batch)
            })
            .await
            .expect("the nft apply task does not panic")?;
            info!(
                elapsed_ms = applied.elapsed.as_millis() as u64,
                revision = %control::revision(&plan),
                "ruleset applied: table inet ward"
            );
        } else {
            warn!(
                "nft.apply = false: the ruleset is not applied (testing only); devices are not isolated"
            );
        }
        if let Some(p) = &rolled_back {
            audit.record(control::confirm::audit_event(
                PolicyAction::RolledBack,
                "start",
                control::revision(&plan),
                &p.pending,
                None,
            ));
        }
        audit.record(AuditEvent::Policy {
            action: PolicyAction::Applied,
            trigger: "start".into(),
            revision: control::revision(&plan),
            policy: Some(config.policy.display().to_string()),
            policy_sha256: Some(policy_sha256.clone()),
            nft: Some(config.apply_nft),
            error: None,
            confirm_by: None,
        });

        let mut addrs: Vec<(String, String)> = listeners
            .local_addrs()
            .into_iter()
            .map(|(what, a)| (what, a.to_string()))
            .collect();
        addrs.push(("admin".into(), config.admin_socket.display().to_string()));
        if let Some(a) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
            addrs.push(("metrics".into(), a.to_string()));
        }
        let (plan_tx, plan_rx) = watch::channel(plan.clone());
        let (tls_tx, tls_rx) = watch::channel(tls);
        let proxy = Arc::new(ProxyState::new(
            plan_rx,
            tls_rx.clone(),
            config.limits,
            config.fake_now.map_or(Clock::System, Clock::starting_at),
            QuicPool::new(quic_client_bind(&config), tls_rx.clone()),
            audit.clone(),
        ));
        telemetry::register_metrics(telemetry, proxy.registry.clone());
        let observer = Arc::new(Observer::new(
            config.state_dir.clone(),
            config.apply_nft.then(Nft::default),
            plan_tx.subscribe(),
            proxy.registry.clone(),
        ));
        let forwarder = config.audit_forward.clone().map(|target| Forwarder {
            trail: audit_path,
            state_dir: config.state_dir.clone(),
            target,
            hostname: plan.gateway.clone(),
            wake: audit.appended.clone(),
            tls: tls_rx,
        });
        let control = Arc::new(Control::new(
            proxy.clone(),
            sources,
            Started {
                config: config.clone(),
                base,
                policy_sha256,
                quarantine,
                plan_tx,
                tls_tx,
                listeners: addrs.iter().map(|(w, a)| format!("{w}={a}")).collect(),
                observer: observer.clone(),
            },
        ));
        info!(
            version = env!("CARGO_PKG_VERSION"),
            gateway = %plan.gateway,
            identity = %plan.identity,
            mode = %plan.mode,
            workers = config.workers,
            listen = %addrs.iter().map(|(w, a)| format!("{w}={a}")).collect::<Vec<_>>().join(" "),
            "wardd ready"
        );
        Ok(Gateway {
            control,
            proxy,
            listeners: Some(listeners),
            admin: Some(admin),
            metrics,
            forwarder,
            config,
            addrs,
        })
    }

    /// Every bound address with what it is (`outbound`, `transparent`, `access`,
    /// `tunnel-tls`, `tunnel-quic`, `admin`, `metrics`).
    pub fn addrs(&self) -> &[(String, String)] {
        &self.addrs
    }

    /// The control surface (reload, quarantine, views).
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Serve until `shutdown` completes; every item of `reloads` (its
    /// trigger name) reloads. Then stop accepting, give open connections
    /// `limits.drain_timeout` to finish, cut the rest, close the QUIC
    /// endpoints. The ruleset stays in place (fail closed).
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<String>,
    ) {
        let root = CancellationToken::new();
        let cut = CancellationToken::new();
        let tracker = TaskTracker::new();
        let serving: Serving = self.listeners.take().expect("serve runs once").spawn(
            &tracker,
            self.proxy.clone(),
            &root,
            &cut,
        );
        if let Some(admin) = self.admin.take() {
            crate::ops::admin::spawn_admin(&tracker, admin, self.control.clone(), root.clone());
        }
        if let Some(m) = self.metrics.take() {
            crate::ops::metrics::spawn_metrics(&tracker, m, self.control.clone(), root.clone());
        }
        if let Some(f) = self.forwarder.take() {
            forward::spawn_forwarder(&tracker, f, root.clone());
        }
        control::spawn_file_watch(&tracker, self.control.clone(), root.clone());
        control::confirm::spawn_confirm_watch(&tracker, self.control.clone(), root.clone());
        control::evidence::spawn_drop_sampler(&tracker, self.control.clone(), root.clone());
        let nflog_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let observer = self.control.observer().clone();
        // Started whenever nft is applied: a reload may turn observation on.
        if self.config.apply_nft {
            observe::spawn_poller(
                &tracker,
                observer.clone(),
                self.config.observe_poll,
                root.clone(),
            );
            match observe::nflog::bind().and_then(|s| {
                observe::nflog::spawn_reader(s, observer, nflog_stop.clone())
                    .map_err(observe::nflog::NflogError::from)
            }) {
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "first-seen events unavailable: flows are still counted, first seen at poll granularity")
                }
            }
        }
        crate::proxy::spawn_window_watch(&tracker, self.proxy.clone(), root.clone());
        // systemd (Type=notify): ready only now, with every port bound and
        // the ruleset applied. Outside systemd these calls do nothing.
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
        // The watchdog is pinged from this loop, so a wedged loop gets the
        // service restarted (the ruleset stays meanwhile: fail closed).
        let watchdog = sd_notify::watchdog_enabled();
        // Without a watchdog the branch is off and the period unused.
        let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ping.tick(), if watchdog.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                () = &mut shutdown => break,
                Some(trigger) = reloads.recv() => { self.control.reload(&trigger).await; }
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        nflog_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        root.cancel();
        tracker.close();
        let open = self.proxy.registry.snapshot().len();
        if open > 0 {
            info!(open, drain = ?self.config.limits.drain_timeout, "shutdown: draining open connections");
        }
        if timeout(self.config.limits.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            let left = self.proxy.registry.snapshot();
            warn!(cut = left.len(), flows = ?left.iter().map(|l| l.flow.as_str()).collect::<Vec<_>>(), "shutdown: drain period over, closing the remaining connections");
            cut.cancel();
            let _ = timeout(CUT_GRACE, tracker.wait()).await;
        }
        serving.close().await;
        let _ = std::fs::remove_file(&self.config.admin_socket);
        info!("wardd stopped; the ruleset stays in place (fail closed)");
    }
}
