//! What admins act on: reload, runtime quarantine and release, and the views
//! the admin API serves. SIGHUP and `POST /v1/reload` share [`Control::reload`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};
use ward_api::{Device, Flow, ReloadResult, Status};
use ward_policy::Plan;

use crate::admin::AdminError;
use crate::config::{Config, Overrides};
use crate::daemon::{StartError, load_plan};
use crate::nft::Nft;
use crate::server::Shared;
use crate::tls::TlsMaterial;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short fingerprint of a plan's ruleset, to tell revisions apart.
pub fn revision(plan: &Plan) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, plan.to_nft_json().as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Runtime state around the data path.
pub struct Control {
    /// The data path's shared state.
    pub shared: Arc<Shared>,
    config_file: Option<PathBuf>,
    overrides: Overrides,
    nft: Nft,
    apply_nft: bool,
    /// The plan as the policy compiles, before runtime quarantine.
    base: Mutex<Arc<Plan>>,
    runtime_quarantine: Mutex<BTreeSet<String>>,
    state_file: PathBuf,
    started: Instant,
    listeners: Vec<String>,
    policy_file: String,
    last_reload: Mutex<Option<ReloadResult>>,
    // Serializes reload, quarantine and release: each applies a ruleset.
    apply_lock: Mutex<()>,
    reloads_ok: std::sync::atomic::AtomicU64,
    reloads_rejected: std::sync::atomic::AtomicU64,
}

/// Devices quarantined at runtime, kept in the state directory so a restart
/// or a reload does not silently release them.
pub fn load_runtime_quarantine(state_dir: &Path) -> BTreeSet<String> {
    let path = state_dir.join("quarantine.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Control {
    /// Wrap a running gateway.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        config: &Config,
        config_file: Option<PathBuf>,
        overrides: Overrides,
        base: Arc<Plan>,
        runtime_quarantine: BTreeSet<String>,
        listeners: Vec<String>,
    ) -> Control {
        Control {
            shared,
            config_file,
            overrides,
            nft: Nft::default(),
            apply_nft: config.apply_nft,
            base: Mutex::new(base),
            runtime_quarantine: Mutex::new(runtime_quarantine),
            state_file: config.state_dir.join("quarantine.json"),
            started: Instant::now(),
            listeners,
            policy_file: config.policy.display().to_string(),
            last_reload: Mutex::new(None),
            apply_lock: Mutex::new(()),
            reloads_ok: Default::default(),
            reloads_rejected: Default::default(),
        }
    }

    fn apply(&self, plan: &Plan) -> Result<(), String> {
        if self.apply_nft {
            self.nft
                .apply_json(&plan.to_nft_json())
                .map_err(|e| format!("applying the ruleset: {e}"))?;
        }
        Ok(())
    }

    /// Load configuration, policy and TLS off to the side; swap them in only
    /// when all are valid and the ruleset applied. Records the outcome.
    pub fn reload(&self, trigger: &str) -> ReloadResult {
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        let result = match self.try_reload() {
            Ok(()) => {
                let r = ReloadResult {
                    ok: true,
                    at: now_secs(),
                    trigger: trigger.to_owned(),
                    revision: revision(&self.shared.plan()),
                    error: None,
                };
                info!(trigger, revision = %r.revision, "reload applied");
                r
            }
            Err(e) => {
                error!(trigger, error = %e, "reload rejected; the running policy, ruleset and certificates stay");
                ReloadResult {
                    ok: false,
                    at: now_secs(),
                    trigger: trigger.to_owned(),
                    revision: revision(&self.shared.plan()),
                    error: Some(e.to_string()),
                }
            }
        };
        if result.ok {
            &self.reloads_ok
        } else {
            &self.reloads_rejected
        }
        .fetch_add(1, Ordering::Relaxed);
        self.shared.audit.record(
            "policy",
            if result.ok { "applied" } else { "rejected" },
            serde_json::json!({"trigger": trigger, "revision": result.revision, "error": result.error}),
        );
        *self.last_reload.lock().expect("lock poisoned") = Some(result.clone());
        result
    }

    fn try_reload(&self) -> Result<(), StartError> {
        let config = Config::load(self.config_file.as_deref(), &self.overrides)?;
        let base = load_plan(&config)?;
        let tls = TlsMaterial::load(&config.tls, &base.identity)?;
        let old = self.shared.plan();
        if old.listeners != base.listeners || old.tunnel_server != base.tunnel_server {
            return Err(StartError::Other(
                "the new policy changes this gateway's listening addresses; restart wardd to apply it".into(),
            ));
        }
        let runtime = self
            .runtime_quarantine
            .lock()
            .expect("lock poisoned")
            .clone();
        let plan = Arc::new(base.with_quarantine(runtime.iter().map(String::as_str)));
        self.apply(&plan).map_err(StartError::Other)?;
        *self.base.lock().expect("lock poisoned") = Arc::new(base);
        self.shared.set_plan(plan.clone());
        self.shared.set_tls(Arc::new(tls));
        let revoked = self.shared.close_revoked();
        let isolated = self.close_quarantined(&plan);
        let gone = self.shared.registry.cancel_where(|l| {
            !(plan.outbound.contains_key(&l.flow)
                || plan.tunnels.contains_key(&l.flow)
                || plan.access.iter().any(|a| a.flow == l.flow))
        });
        for l in &gone {
            warn!(flow = %l.flow, src = %l.source, "closing connection: flow no longer in the policy");
        }
        info!(
            closed_revoked = revoked,
            closed_quarantined = isolated,
            closed_removed = gone.len(),
            "connections after reload"
        );
        Ok(())
    }

    /// Close every live connection of a quarantined device; returns how many.
    fn close_quarantined(&self, plan: &Plan) -> usize {
        let quarantined = |device: &str| plan.devices.get(device).is_some_and(|d| d.quarantined);
        let cut: BTreeSet<&str> = plan
            .outbound
            .values()
            .filter(|f| quarantined(&f.device))
            .map(|f| f.name.as_str())
            .chain(
                plan.tunnels
                    .values()
                    .filter(|t| t.quarantined)
                    .map(|t| t.name.as_str()),
            )
            .chain(
                plan.access
                    .iter()
                    .filter(|a| quarantined(&a.device))
                    .map(|a| a.flow.as_str()),
            )
            .collect();
        let closed = self
            .shared
            .registry
            .cancel_where(|l| cut.contains(l.flow.as_str()));
        for l in &closed {
            warn!(flow = %l.flow, src = %l.source, "closing connection: device quarantined");
        }
        closed.len()
    }

    fn save_runtime_quarantine(&self, set: &BTreeSet<String>) -> Result<(), AdminError> {
        let json = serde_json::to_vec(set).expect("a set of strings serializes");
        if let Some(dir) = self.state_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        ward_pki::write_file(&self.state_file, &json, 0o600)
            .map_err(|e| AdminError::Rejected(format!("cannot record the quarantine: {e}")))
    }

    /// Quarantine a device now: all its traffic dropped, its connections cut.
    pub fn quarantine(&self, id: &str, uid: u32) -> Result<Device, AdminError> {
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        if !self.shared.plan().devices.contains_key(id) {
            return Err(AdminError::NoDevice(id.to_owned()));
        }
        let mut set = self
            .runtime_quarantine
            .lock()
            .expect("lock poisoned")
            .clone();
        set.insert(id.to_owned());
        let base = self.base.lock().expect("lock poisoned").clone();
        let plan = Arc::new(base.with_quarantine(set.iter().map(String::as_str)));
        self.apply(&plan).map_err(AdminError::Rejected)?;
        self.save_runtime_quarantine(&set)?;
        *self.runtime_quarantine.lock().expect("lock poisoned") = set;
        self.shared.set_plan(plan.clone());
        let closed = self.close_quarantined(&plan);
        warn!(device = id, closed, "device quarantined");
        self.shared.audit.record("admin", "quarantine", serde_json::json!({"device": id, "uid": uid, "closed": closed, "revision": revision(&plan)}));
        self.device(id)
    }

    /// Lift a runtime quarantine. A quarantine the policy itself declares
    /// stays until the policy changes.
    pub fn release(&self, id: &str, uid: u32) -> Result<Device, AdminError> {
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        let base = self.base.lock().expect("lock poisoned").clone();
        let Some(d) = base.devices.get(id) else {
            return Err(AdminError::NoDevice(id.to_owned()));
        };
        if d.quarantined {
            return Err(AdminError::Rejected(format!(
                "device {id:?} is quarantined by the policy ({}); remove it from `quarantine` there and reload",
                self.policy_file
            )));
        }
        let mut set = self
            .runtime_quarantine
            .lock()
            .expect("lock poisoned")
            .clone();
        set.remove(id);
        let plan = Arc::new(base.with_quarantine(set.iter().map(String::as_str)));
        self.apply(&plan).map_err(AdminError::Rejected)?;
        self.save_runtime_quarantine(&set)?;
        *self.runtime_quarantine.lock().expect("lock poisoned") = set;
        self.shared.audit.record(
            "admin",
            "release",
            serde_json::json!({"device": id, "uid": uid, "revision": revision(&plan)}),
        );
        self.shared.set_plan(plan);
        info!(device = id, "device released");
        self.device(id)
    }

    fn device(&self, id: &str) -> Result<Device, AdminError> {
        self.devices()
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| AdminError::NoDevice(id.to_owned()))
    }

    /// Reloads applied and rejected since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_rejected.load(Ordering::Relaxed),
        )
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Status {
        let plan = self.shared.plan();
        let tls = self.shared.tls();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            gateway: plan.gateway.clone(),
            identity: plan.identity.clone(),
            mode: plan.mode.to_string(),
            policy_file: self.policy_file.clone(),
            revision: revision(&plan),
            uptime_secs: self.started.elapsed().as_secs(),
            last_reload: self.last_reload.lock().expect("lock poisoned").clone(),
            listeners: self.listeners.clone(),
            quarantined: plan
                .devices
                .values()
                .filter(|d| d.quarantined)
                .map(|d| d.id.clone())
                .collect(),
            connections: self.shared.registry.snapshot().len(),
            certificate_not_after: tls.not_after,
        }
    }

    /// `GET /v1/devices`.
    pub fn devices(&self) -> Vec<Device> {
        let plan = self.shared.plan();
        let counters = if self.apply_nft {
            self.nft.list_counters().unwrap_or_default()
        } else {
            Vec::new()
        };
        let live = self.shared.registry.snapshot();
        let stats = self.shared.registry.flow_stats();
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
                    quarantined: d.quarantined,
                    drops: counters
                        .iter()
                        .find(|c| c.name == d.counter)
                        .map_or(0, |c| c.packets),
                    connections: live.iter().filter(|l| flows.contains(&l.flow)).count(),
                    flows,
                    last_seen,
                    inventory: d.inventory.clone(),
                }
            })
            .collect()
    }

    /// `GET /v1/flows`: live connections.
    pub fn flows(&self) -> Vec<Flow> {
        let now = SystemTime::now();
        let mut v: Vec<Flow> = self
            .shared
            .registry
            .snapshot()
            .into_iter()
            .map(|l| Flow {
                flow: l.flow,
                leg: l.leg.as_str().to_owned(),
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
}
