//! `wardctl policy apply FILE [--confirm-within D]` and `policy confirm`:
//! commit-confirm, so an admin who loses contact (a policy that cuts their
//! own path, a bad night) gets the previous policy back without touching
//! the box.
//!
//! The candidate goes through the reload path (validated, listeners
//! unchanged, ruleset applied in one transaction, published, live
//! connections re-checked) after being written to
//! `state_dir/applied-policy.toml`, which overrides the configured policy
//! file from then on (status shows both). With a confirmation window, the
//! previous text (or "the configured file") and the deadline are written
//! first to `state_dir/pending-apply.json`, so a restart within the window
//! keeps the deadline and a restart after it rolls back before anything is
//! applied. A rollback is a reload of the previous policy: when it fails,
//! the pending policy's ruleset stays in force (nft replaces tables
//! atomically, so there is never no ruleset), the failure is audited, and
//! the rollback is retried every [`RETRY`]. Every step is audited.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use ward_api::audit::{AuditEvent, PolicyAction};
use ward_api::{ApplyRequest, ApplyResult, PendingConfirm};
use ward_policy::{Severity, ValidateOptions};

use super::{Control, ControlError, blocking, revision};
use crate::config::APPLIED_POLICY;

/// The pending apply's file in `state_dir`.
pub const PENDING: &str = "pending-apply.json";
/// A failed rollback is retried after this long.
pub const RETRY: Duration = Duration::from_secs(30);
/// The longest confirmation window.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What `pending-apply.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// For the API and status.
    pub pending: PendingConfirm,
    /// The applied policy before (none: the configured file was in force).
    pub previous: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The pending apply in `state_dir`, if any.
pub fn read_pending(state_dir: &Path) -> Option<Pending> {
    let bytes = std::fs::read(state_dir.join(PENDING)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            error!(file = %state_dir.join(PENDING).display(), error = %e, "unreadable pending apply");
            None
        }
    }
}

fn write_pending(state_dir: &Path, p: &Pending) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(p).expect("pending applies serialize");
    ward_pki::write_file(&state_dir.join(PENDING), &json, 0o600).map_err(std::io::Error::other)
}

/// Put the previous policy back in the state directory (the text, or no
/// applied policy at all) and drop the pending record.
fn restore_files(state_dir: &Path, previous: Option<&str>) -> std::io::Result<()> {
    let applied = state_dir.join(APPLIED_POLICY);
    match previous {
        Some(text) => {
            ward_pki::write_file(&applied, text.as_bytes(), 0o600).map_err(std::io::Error::other)?
        }
        None => match std::fs::remove_file(&applied) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    match std::fs::remove_file(state_dir.join(PENDING)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// At start, before the policy is loaded: a pending apply whose deadline
/// passed while wardd was down is rolled back in the files, so the start
/// applies the previous policy. Returns it, to audit once the trail is open.
pub fn settle_at_start(state_dir: &Path) -> std::io::Result<Option<Pending>> {
    match read_pending(state_dir) {
        Some(p) if now_secs() >= p.pending.confirm_by => {
            restore_files(state_dir, p.previous.as_deref())?;
            warn!(revision = %p.pending.revision, "pending apply not confirmed before its deadline: rolled back at start");
            Ok(Some(p))
        }
        Some(p) => {
            info!(confirm_by = p.pending.confirm_by, revision = %p.pending.revision, "pending apply: rolled back at its deadline unless confirmed");
            Ok(None)
        }
        None => Ok(None),
    }
}

/// The audit record of a commit-confirm step.
pub fn audit_event(
    action: PolicyAction,
    trigger: &str,
    revision: String,
    p: &PendingConfirm,
    error: Option<String>,
) -> AuditEvent {
    AuditEvent::Policy {
        action,
        trigger: trigger.to_owned(),
        revision,
        policy: Some(p.source.clone()),
        policy_sha256: None,
        nft: None,
        error,
        confirm_by: Some(p.confirm_by),
    }
}

impl Control {
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// `POST /v1/policy/apply`: put a candidate in force through the reload
    /// path; with a window, roll it back unless confirmed in time.
    pub async fn apply_policy(
        &self,
        req: ApplyRequest,
        uid: u32,
    ) -> Result<ApplyResult, ControlError> {
        let _one = self.apply_lock.lock().await;
        let dir = self.state_dir();
        if let Some(p) = read_pending(&dir) {
            return Err(ControlError::Pending(p.pending.confirm_by));
        }
        let window = req.confirm_within_secs.map(Duration::from_secs);
        if window.is_some_and(|w| w.is_zero() || w > MAX_WINDOW) {
            return Err(ControlError::Candidate(format!(
                "the confirmation window must be between 1s and {}",
                ward_policy::model::format_duration(MAX_WINDOW)
            )));
        }
        // Checked before any file changes: the reload checks again, with
        // the certificates and listeners.
        let gateway = self.plan().gateway.clone();
        let (source, text) = (req.source.clone(), req.policy.clone());
        blocking(move || {
            let (policy, _) = ward_policy::load(&source, &text, &ValidateOptions::default())
                .map_err(|d| {
                    d.iter()
                        .filter(|d| d.severity == Severity::Error)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            ward_policy::compile(&policy, &gateway)
                .map(drop)
                .map_err(|e| format!("{source}: {e}"))
        })
        .await?
        .map_err(ControlError::Candidate)?;

        let previous_revision = revision(&self.plan());
        let previous = std::fs::read_to_string(dir.join(APPLIED_POLICY)).ok();
        let state_err = |path: PathBuf| {
            move |e: std::io::Error| ControlError::State {
                path,
                reason: e.to_string(),
            }
        };
        let mut pending = window.map(|w| Pending {
            pending: PendingConfirm {
                confirm_by: now_secs() + w.as_secs(),
                revision: String::new(),
                previous_revision: previous_revision.clone(),
                source: req.source.clone(),
                applied_at: now_secs(),
                uid,
            },
            previous: previous.clone(),
        });
        std::fs::create_dir_all(&dir).map_err(state_err(dir.clone()))?;
        if let Some(p) = &pending {
            write_pending(&dir, p).map_err(state_err(dir.join(PENDING)))?;
        }
        ward_pki::write_file(&dir.join(APPLIED_POLICY), req.policy.as_bytes(), 0o600).map_err(
            |e| ControlError::State {
                path: dir.join(APPLIED_POLICY),
                reason: e.to_string(),
            },
        )?;
        let r = self.reload(&format!("apply uid={uid}")).await;
        if !r.ok {
            if let Err(e) = restore_files(&dir, previous.as_deref()) {
                error!(error = %e, "cannot restore the previous applied policy file");
            }
            return Err(ControlError::Candidate(r.error.unwrap_or_default()));
        }
        if let Some(p) = &mut pending {
            p.pending.revision = r.revision.clone();
            write_pending(&dir, p).map_err(state_err(dir.join(PENDING)))?;
            warn!(revision = %r.revision, confirm_by = p.pending.confirm_by, "policy applied; rolled back unless confirmed in time");
            self.proxy.audit.record(audit_event(
                PolicyAction::PendingConfirm,
                &format!("apply uid={uid}"),
                r.revision.clone(),
                &p.pending,
                None,
            ));
        }
        Ok(ApplyResult {
            revision: r.revision,
            previous_revision,
            confirm_by: pending.map(|p| p.pending.confirm_by),
        })
    }

    /// `POST /v1/policy/confirm`: keep the pending policy.
    pub async fn confirm(&self, uid: u32) -> Result<PendingConfirm, ControlError> {
        let _one = self.apply_lock.lock().await;
        let dir = self.state_dir();
        let Some(p) = read_pending(&dir) else {
            return Err(ControlError::NothingPending);
        };
        std::fs::remove_file(dir.join(PENDING)).map_err(|e| ControlError::State {
            path: dir.join(PENDING),
            reason: e.to_string(),
        })?;
        info!(revision = %p.pending.revision, uid, "pending policy confirmed");
        self.proxy.audit.record(audit_event(
            PolicyAction::Confirmed,
            &format!("confirm uid={uid}"),
            revision(&self.plan()),
            &p.pending,
            None,
        ));
        Ok(p.pending)
    }

    /// The pending apply, if any.
    pub fn pending(&self) -> Option<PendingConfirm> {
        read_pending(&self.state_dir).map(|p| p.pending)
    }

    /// Roll the pending apply back if its deadline passed.
    pub async fn rollback_if_due(&self) {
        let _one = self.apply_lock.lock().await;
        let dir = self.state_dir();
        let Some(mut p) = read_pending(&dir) else {
            return;
        };
        if now_secs() < p.pending.confirm_by {
            return;
        }
        let candidate = std::fs::read_to_string(dir.join(APPLIED_POLICY)).ok();
        if let Err(e) = restore_files(&dir, p.previous.as_deref()) {
            error!(error = %e, "rollback: cannot restore the previous policy file");
        }
        let r = self.reload("rollback").await;
        if r.ok {
            warn!(revision = %r.revision, from = %p.pending.revision, "pending policy not confirmed in time: rolled back");
            self.proxy.audit.record(audit_event(
                PolicyAction::RolledBack,
                "rollback",
                r.revision,
                &p.pending,
                None,
            ));
            return;
        }
        // The previous policy does not load (or nft refused it): the
        // pending policy's ruleset is still in force. Keep its file so
        // files and ruleset agree, and try again later.
        if let Some(text) = candidate
            && let Err(e) = ward_pki::write_file(&dir.join(APPLIED_POLICY), text.as_bytes(), 0o600)
        {
            error!(error = %e, "rollback failed and the pending policy file cannot be restored");
        }
        p.pending.confirm_by = now_secs() + RETRY.as_secs();
        if let Err(e) = write_pending(&dir, &p) {
            error!(error = %e, "cannot record the rollback retry");
        }
        error!(error = ?r.error, retry_in = ?RETRY, "rollback failed; the pending policy's ruleset stays in force");
        self.proxy.audit.record(audit_event(
            PolicyAction::RollbackFailed,
            "rollback",
            revision(&self.plan()),
            &p.pending,
            r.error,
        ));
    }
}

/// Roll a pending apply back at its deadline (checked every second).
pub fn spawn_confirm_watch(
    tracker: &TaskTracker,
    control: std::sync::Arc<Control>,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => control.rollback_if_due().await,
            }
        }
    });
}
