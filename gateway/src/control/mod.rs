//! What changes a running gateway: reload, runtime quarantine and release,
//! and the views the admin API and the metrics page serve.
//!
//! [`Control`] owns the `watch` senders of the plan and the TLS material in
//! force; the data path, the audit forwarder and the metrics page hold
//! receivers. Every change goes through one lock: load off to the side (on
//! a blocking thread: file reads and `nft` never run on the async workers),
//! apply the ruleset, publish, then re-check every live connection with the
//! policy's own decision functions. The plan in force is always the
//! policy's plan plus the runtime quarantine set, which is kept only here
//! (and in `state_dir/quarantine.json` across restarts).

pub mod confirm;
pub mod evidence;
pub mod nft;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};
use ward_api::audit::{AdminAction, AuditEvent, CertificateAction, PolicyAction};
use ward_api::{Device, Flow, FlowWindow, ReloadResult, Status};
use ward_policy::Plan;

use crate::config::{self, Config, LoadError, Overrides};
use crate::observe::Observer;
use crate::proxy::ProxyState;
use crate::proxy::window::{WindowState, window_state};
use crate::transport::tls::TlsMaterial;
use nft::{ApplyError, Nft};

/// A change was refused; what was running stays as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Configuration, policy or TLS material do not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The new policy adds or removes listening addresses.
    #[error("the new policy changes this gateway's listening addresses; restart wardd to apply it")]
    ListenersChanged,
    /// nft refused the ruleset.
    #[error("applying the ruleset: {0}")]
    Apply(#[from] ApplyError),
    /// No such device behind this gateway.
    #[error("device {0:?} is not behind this gateway")]
    NoDevice(String),
    /// The policy itself quarantines the device; only the policy can lift it.
    #[error(
        "device {device:?} is quarantined by the policy ({policy}); remove it from `quarantine` there and reload"
    )]
    PolicyQuarantine {
        /// The device.
        device: String,
        /// The policy file.
        policy: String,
    },
    /// The runtime quarantine could not be recorded.
    #[error("cannot record the quarantine in {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A candidate policy (`wardctl policy apply`) was refused.
    #[error("{0}")]
    Candidate(String),
    /// An apply is waiting for confirmation.
    #[error(
        "an applied policy waits for confirmation until {0} (Unix seconds): confirm it or let it roll back first"
    )]
    Pending(u64),
    /// `policy confirm` with nothing pending.
    #[error("no applied policy is waiting for confirmation")]
    NothingPending,
    /// A blocking step could not run (the runtime is shutting down).
    #[error("internal: {0}")]
    Internal(String),
}

/// The revision of a plan: a SHA-256 prefix of the whole compiled plan
/// (its canonical JSON: maps sorted, lists in compile order), so every
/// change that changes a decision (a flow's client, a window, a target,
/// a quarantine) changes it, not only changes to the ruleset.
pub fn revision(plan: &Plan) -> String {
    let json = serde_json::to_vec(plan).expect("plans serialize");
    let d = ring::digest::digest(&ring::digest::SHA256, &json);
    hex::encode(&d.as_ref()[..6])
}

/// Devices quarantined at runtime, kept in the state directory so a restart
/// or a reload does not silently release them.
pub fn load_runtime_quarantine(state_dir: &Path) -> BTreeSet<String> {
    std::fs::read(state_dir.join(QUARANTINE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The runtime quarantine's file in `state_dir`.
const QUARANTINE_FILE: &str = "quarantine.json";

/// What the lock guards: the inputs of the plan in force.
struct InForce {
    /// The configuration the gateway runs with.
    config: Config,
    /// The policy's plan, before runtime quarantine.
    base: Arc<Plan>,
    /// SHA-256 of the policy file `base` was compiled from.
    policy_sha256: String,
    /// Devices an admin quarantined (sorted).
    quarantine: BTreeSet<String>,
}

/// Where the configuration is read from, again at every reload.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `--config`, when given.
    pub config_file: Option<PathBuf>,
    /// `--gateway`, `--policy`.
    pub overrides: Overrides,
}

/// The running gateway's control surface.
pub struct Control {
    proxy: Arc<ProxyState>,
    plan_tx: watch::Sender<Arc<Plan>>,
    tls_tx: watch::Sender<Arc<TlsMaterial>>,
    sources: Sources,
    nft: Option<Nft>,
    in_force: tokio::sync::Mutex<InForce>,
    started: Instant,
    listeners: Vec<String>,
    configured_policy: String,
    last_reload: Mutex<Option<ReloadResult>>,
    reloads_ok: AtomicU64,
    reloads_rejected: AtomicU64,
    observer: Arc<Observer>,
    /// One `policy apply`, `confirm` or rollback at a time.
    apply_lock: tokio::sync::Mutex<()>,
    state_dir: PathBuf,
    /// Drop counter samples for the evidence's 24-hour window.
    drops: Mutex<evidence::DropHistory>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))
}

/// What [`Control::new`] takes over.
pub struct Started {
    /// The configuration in force.
    pub config: Config,
    /// The policy's plan, before runtime quarantine.
    pub base: Arc<Plan>,
    /// SHA-256 of the policy file.
    pub policy_sha256: String,
    /// Devices quarantined at runtime.
    pub quarantine: BTreeSet<String>,
    /// Sender of the plan in force (base plus quarantine).
    pub plan_tx: watch::Sender<Arc<Plan>>,
    /// Sender of the TLS material in force.
    pub tls_tx: watch::Sender<Arc<TlsMaterial>>,
    /// Every bound address, for `wardctl status`.
    pub listeners: Vec<String>,
    /// The learning store.
    pub observer: Arc<Observer>,
}

impl Control {
    /// Take over a started gateway.
    pub fn new(proxy: Arc<ProxyState>, sources: Sources, s: Started) -> Control {
        Control {
            proxy,
            plan_tx: s.plan_tx,
            tls_tx: s.tls_tx,
            sources,
            nft: s.config.apply_nft.then(Nft::default),
            configured_policy: s.config.configured_policy.display().to_string(),
            state_dir: s.config.state_dir.clone(),
            apply_lock: tokio::sync::Mutex::new(()),
            in_force: tokio::sync::Mutex::new(InForce {
                config: s.config,
                base: s.base,
                policy_sha256: s.policy_sha256,
                quarantine: s.quarantine,
            }),
            started: Instant::now(),
            listeners: s.listeners,
            last_reload: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            observer: s.observer,
            drops: Mutex::new(evidence::DropHistory::loaded(now_secs())),
        }
    }

    /// The data path's state.
    pub fn proxy(&self) -> &Arc<ProxyState> {
        &self.proxy
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan_tx.borrow().clone()
    }

    /// The learning store.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// Apply `plan`'s ruleset on a blocking thread (nothing when nft is
    /// off). Replacing the table empties the learning sets: with
    /// `read_first` they are read before (a reload); a quarantine does not
    /// wait for that (up to one poll interval of counts is lost).
    async fn apply(&self, plan: &Arc<Plan>, read_first: bool) -> Result<(), ControlError> {
        if let Some(nft) = self.nft.clone() {
            let plan = plan.clone();
            let observer = self.observer.clone();
            blocking(move || {
                nft.prepare_interception(&plan)?;
                if let Err(e) = read_first.then(|| observer.poll()).transpose() {
                    warn!(error = %e, "cannot read the learning sets before replacing them");
                }
                nft.apply_json(&ward_policy::nft::render_json(&plan))?;
                observer.kernel_reset();
                Ok::<_, ApplyError>(())
            })
            .await??;
            self.ruleset_loaded();
        }
        Ok(())
    }

    /// Reload configuration, policy and TLS material (SIGHUP, `POST
    /// /v1/reload`, a changed certificate or CRL file): all loaded and
    /// validated off to the side, the ruleset applied, then published; on
    /// any error everything stays as it was. systemd sees RELOADING, then
    /// READY with the outcome. Live connections are re-checked afterwards.
    pub async fn reload(&self, trigger: &str) -> ReloadResult {
        let span = info_span!("reload", trigger);
        async {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
            let outcome = self.try_reload(trigger).await;
            let result = ReloadResult {
                ok: outcome.is_ok(),
                at: now_secs(),
                trigger: trigger.to_owned(),
                revision: revision(&self.plan()),
                error: outcome.as_ref().err().map(ToString::to_string),
            };
            let status = match &outcome {
                Ok(cut) => {
                    info!(revision = %result.revision, closed = cut, "reload applied");
                    "serving".to_owned()
                }
                Err(e) => {
                    error!(error = %e, "reload rejected; the running policy, ruleset and certificates stay");
                    format!("serving; last reload rejected: {e}")
                }
            };
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&status),
            ]);
            if result.ok { &self.reloads_ok } else { &self.reloads_rejected }
                .fetch_add(1, Ordering::Relaxed);
            self.proxy.audit.record(AuditEvent::Policy {
                action: if result.ok { PolicyAction::Applied } else { PolicyAction::Rejected },
                trigger: trigger.to_owned(),
                revision: result.revision.clone(),
                policy: None,
                policy_sha256: Some(self.policy_sha256().await),
                nft: None,
                error: result.error.clone(),
                confirm_by: None,
            });
            *self.last_reload.lock().expect("lock poisoned") = Some(result.clone());
            result
        }
        .instrument(span)
        .await
    }

    /// The reload itself; how many live connections it cut.
    async fn try_reload(&self, trigger: &str) -> Result<usize, ControlError> {
        let mut in_force = self.in_force.lock().await;
        let sources = self.sources.clone();
        let loaded =
            blocking(move || config::load(sources.config_file.as_deref(), &sources.overrides))
                .await??;
        let c = &loaded.config;
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if c.policy != c.configured_policy && modified(&c.configured_policy) > modified(&c.policy) {
            warn!(
                configured = %c.configured_policy.display(),
                applied = %c.policy.display(),
                "the configured policy file changed after `wardctl policy apply`; the applied policy stays in force (apply the file to put it in force)"
            );
        }
        let old = self.plan();
        if old.listeners != loaded.plan.listeners
            || old.tunnel_server != loaded.plan.tunnel_server
            || old.transparent_listener != loaded.plan.transparent_listener
        {
            return Err(ControlError::ListenersChanged);
        }
        let base = Arc::new(loaded.plan);
        let plan = Arc::new(base.with_quarantine(in_force.quarantine.iter().map(String::as_str)));
        self.apply(&plan, true).await?;
        let tls = Arc::new(loaded.tls);
        if trigger == TLS_FILES {
            info!(
                crl_entries = tls.revoked.len(),
                "certificates and CRL reloaded"
            );
            self.proxy.audit.record(AuditEvent::Certificate {
                action: CertificateAction::Reloaded,
                crl_entries: tls.revoked.len(),
                not_after: tls.not_after,
            });
        }
        in_force.config = loaded.config;
        in_force.base = base;
        in_force.policy_sha256 = loaded.policy_sha256;
        self.plan_tx.send_replace(plan);
        self.tls_tx.send_replace(tls);
        Ok(self.proxy.recheck().await)
    }

    /// Put a new runtime quarantine set in force: ruleset, file, plan, then
    /// re-check live connections. Returns the revision and how many were cut.
    async fn set_quarantine(
        &self,
        in_force: &mut InForce,
        set: BTreeSet<String>,
    ) -> Result<(String, usize), ControlError> {
        let plan = Arc::new(
            in_force
                .base
                .with_quarantine(set.iter().map(String::as_str)),
        );
        self.apply(&plan, false).await?;
        let path = in_force.config.state_dir.join(QUARANTINE_FILE);
        let json = serde_json::to_vec(&set).expect("a set of strings serializes");
        blocking({
            let path = path.clone();
            move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                ward_pki::write_file(&path, &json, 0o600).map_err(|e| e.to_string())
            }
        })
        .await?
        .map_err(|reason| ControlError::State { path, reason })?;
        in_force.quarantine = set;
        let rev = revision(&plan);
        self.plan_tx.send_replace(plan);
        Ok((rev, self.proxy.recheck().await))
    }

    /// Quarantine a device now: all its traffic dropped, its connections cut.
    pub async fn quarantine(&self, id: &str, uid: u32) -> Result<Device, ControlError> {
        let mut in_force = self.in_force.lock().await;
        if !in_force.base.devices.contains_key(id) {
            return Err(ControlError::NoDevice(id.to_owned()));
        }
        let mut set = in_force.quarantine.clone();
        set.insert(id.to_owned());
        let (revision, closed) = self.set_quarantine(&mut in_force, set).await?;
        drop(in_force);
        warn!(device = id, closed, "device quarantined");
        self.proxy.audit.record(AuditEvent::Admin {
            action: AdminAction::Quarantine,
            uid,
            device: Some(id.to_owned()),
            closed: Some(closed),
            revision: Some(revision),
        });
        self.device(id).await
    }

    /// Lift a runtime quarantine. A quarantine the policy itself declares
    /// stays until the policy changes.
    pub async fn release(&self, id: &str, uid: u32) -> Result<Device, ControlError> {
        let mut in_force = self.in_force.lock().await;
        let Some(d) = in_force.base.devices.get(id) else {
            return Err(ControlError::NoDevice(id.to_owned()));
        };
        if d.quarantined {
            return Err(ControlError::PolicyQuarantine {
                device: id.to_owned(),
                policy: self.configured_policy.clone(),
            });
        }
        let mut set = in_force.quarantine.clone();
        set.remove(id);
        let (revision, _) = self.set_quarantine(&mut in_force, set).await?;
        drop(in_force);
        info!(device = id, "device released");
        self.proxy.audit.record(AuditEvent::Admin {
            action: AdminAction::Release,
            uid,
            device: Some(id.to_owned()),
            closed: None,
            revision: Some(revision),
        });
        self.device(id).await
    }

    /// Reloads applied and rejected since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_rejected.load(Ordering::Relaxed),
        )
    }

    /// SHA-256 of the site policy file in force.
    pub async fn policy_sha256(&self) -> String {
        self.in_force.lock().await.policy_sha256.clone()
    }

    /// The policy file in force.
    pub async fn policy_in_force(&self) -> String {
        self.in_force
            .lock()
            .await
            .config
            .policy
            .display()
            .to_string()
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Status {
        let policy_sha256 = self.policy_sha256().await;
        let plan = self.plan();
        let tls = self.proxy.tls();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            gateway: plan.gateway.clone(),
            identity: plan.identity.clone(),
            mode: plan.mode.to_string(),
            insertion: plan.insertion.to_string(),
            policy_file: self.policy_in_force().await,
            configured_policy: self.configured_policy.clone(),
            pending_confirm: self.pending(),
            revision: revision(&plan),
            policy_sha256,
            uptime_secs: self.started.elapsed().as_secs(),
            last_reload: self.last_reload.lock().expect("lock poisoned").clone(),
            listeners: self.listeners.clone(),
            quarantined: plan
                .devices
                .values()
                .filter(|d| d.quarantined)
                .map(|d| d.id.clone())
                .collect(),
            connections: self.proxy.registry.snapshot().len(),
            certificate_not_after: tls.not_after,
        }
    }

    /// `GET /v1/devices/{id}`.
    pub async fn device(&self, id: &str) -> Result<Device, ControlError> {
        self.devices()
            .await
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ControlError::NoDevice(id.to_owned()))
    }

    /// `GET /v1/devices`: the plan's devices with their nft drop counters
    /// (read on a blocking thread) and live connections.
    pub async fn devices(&self) -> Vec<Device> {
        let plan = self.plan();
        let counters = match self.nft.clone() {
            Some(nft) => blocking(move || nft.list_counters())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let live = self.proxy.registry.snapshot();
        let stats = self.proxy.registry.flow_stats();
        plan.devices
            .values()
            .map(|d| {
                let flows: Vec<String> = plan
                    .outbound
                    .values()
                    .filter(|f| f.device == d.id)
                    .map(|f| f.name.clone())
                    .chain(
                        plan.access
                            .iter()
                            .filter(|a| a.device == d.id)
                            .map(|a| a.flow.clone()),
                    )
                    .collect();
                let last_seen = stats
                    .iter()
                    .filter(|(name, _)| flows.contains(name))
                    .map(|(_, s)| s.last_opened.load(Ordering::Relaxed))
                    .filter(|t| *t > 0)
                    .max();
                Device {
                    id: d.id.clone(),
                    ip: d.ip.to_string(),
                    mac: d.mac.to_string(),
                    interface: d.interface.clone(),
                    mode: plan.mode.to_string(),
                    insertion: {
                        let routes = plan.routes.iter().filter(|r| r.src == d.ip);
                        let (t, e): (Vec<_>, Vec<_>) = routes.partition(|r| r.transparent);
                        match (t.is_empty(), e.is_empty()) {
                            (false, true) => "transparent",
                            (false, false) => "mixed",
                            _ => "explicit",
                        }
                        .to_owned()
                    },
                    quarantined: d.quarantined,
                    drops: counters
                        .iter()
                        .find(|c| c.name == d.counter)
                        .map_or(0, |c| c.packets),
                    connections: live.iter().filter(|l| l.device == d.id).count(),
                    flows,
                    last_seen,
                    inventory: d.inventory.clone(),
                }
            })
            .collect()
    }

    /// `GET /v1/observed`: what each device was seen talking to since
    /// `since` (Unix seconds), judged by the plan in force.
    pub fn observed(&self, since: u64) -> ward_api::observed::Observed {
        self.observer.snapshot(since, revision(&self.plan()))
    }

    /// `GET /v1/flows`: live connections.
    pub fn flows(&self) -> Vec<Flow> {
        let now = SystemTime::now();
        let (plan, clock_now) = (self.proxy.plan(), self.proxy.clock.now());
        let mut v: Vec<Flow> = self
            .proxy
            .registry
            .snapshot()
            .into_iter()
            .map(|l| Flow {
                window: match window_state(&plan, &l, clock_now) {
                    ws @ WindowState::Open { end, .. } => Some(FlowWindow {
                        ends: end.to_string(),
                        seconds_left: ws.left(clock_now).unwrap_or_default().as_secs(),
                        warned: ws.warned(clock_now),
                    }),
                    _ => None,
                },
                leg: l.grant.leg(),
                flow: l.flow,
                peer: l.peer,
                source: l.source.to_string(),
                bytes_up: l.counters.up.load(Ordering::Relaxed),
                bytes_down: l.counters.down.load(Ordering::Relaxed),
                age_secs: now.duration_since(l.started).map_or(0, |d| d.as_secs()),
            })
            .collect();
        v.sort_by(|a, b| (&a.flow, &a.source).cmp(&(&b.flow, &b.source)));
        v
    }

    /// The TLS files in force, to watch: the gateway's own certificate,
    /// key, CA and CRL, and the CA of every service it connects over TLS.
    async fn tls_files(&self) -> (Vec<PathBuf>, std::time::Duration) {
        let in_force = self.in_force.lock().await;
        let t = &in_force.config.tls;
        let mut paths = vec![t.ca.clone(), t.cert.clone(), t.key.clone()];
        paths.extend(t.crl.clone());
        paths.extend(in_force.base.service_cas().into_values().map(PathBuf::from));
        paths.sort();
        paths.dedup();
        (paths, in_force.config.tls_watch)
    }
}

/// The trigger name of a reload caused by changed certificate or CRL files.
pub const TLS_FILES: &str = "tls-files";

fn mtimes(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reload when a certificate, key, CA or CRL file changes (checked every
/// `tls.watch_interval`), so renewed certificates and a new CRL take effect
/// without a SIGHUP. Tunnels stay, except those the new CRL revokes.
pub fn spawn_file_watch(tracker: &TaskTracker, control: Arc<Control>, shutdown: CancellationToken) {
    tracker.spawn(async move {
        let (mut watched, _) = control.tls_files().await;
        let mut seen = mtimes(&watched);
        loop {
            let (paths, every) = control.tls_files().await;
            if paths != watched {
                // A reload changed which files are in force (a service CA
                // added or removed): watch the new set from its state now.
                seen = mtimes(&paths);
                watched = paths.clone();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = match blocking(move || mtimes(&paths)).await {
                Ok(m) => m,
                Err(_) => return,
            };
            if now != seen {
                seen = now;
                control.reload(TLS_FILES).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../policy/examples/hospital.toml");

    fn plan(text: &str, gateway: &str) -> Plan {
        let (p, _) = ward_policy::load("hospital.toml", text, &Default::default()).expect("valid");
        ward_policy::compile(&p, gateway).expect("compiles")
    }

    /// Changes that change decisions but not one nft rule (the flow's
    /// client, a widened window, the PACS's address) each change the
    /// revision of the gateway they concern; a comment does not.
    #[test]
    fn revision_covers_the_whole_plan() {
        let base = |gw| plan(EXAMPLE, gw);
        for (gateway, from, to) in [
            (
                "edge-01",
                "[clients.vendor-vitalis]\ndescription = \"Vitalis remote service\"",
                "[clients.vendor-vitalis]\ndescription = \"Vitalis remote service\"\n[clients.other]",
            ),
            (
                "edge-01",
                "start = \"02:00\", end = \"04:00\"",
                "start = \"00:00\", end = \"23:59\"",
            ),
            ("hub-dc-01", "203.0.113.5:104", "203.0.113.9:104"),
        ] {
            assert!(EXAMPLE.contains(from), "{from}");
            let mut text = EXAMPLE.replace(from, to);
            if to.contains("[clients.other]") {
                text = text.replace("from = \"vendor-vitalis\"", "from = \"other\"");
            }
            let (old, new) = (base(gateway), plan(&text, gateway));
            assert_eq!(
                ward_policy::nft::render_json(&old),
                ward_policy::nft::render_json(&new),
                "{to}: the ruleset alone would not tell the revisions apart"
            );
            assert_ne!(revision(&old), revision(&new), "{gateway}: {from} -> {to}");
        }
        let commented = EXAMPLE.replace("[[exceptions]]", "# NTP\n[[exceptions]]");
        assert_eq!(
            revision(&base("edge-01")),
            revision(&plan(&commented, "edge-01"))
        );
    }
}
