//! Maintenance windows on live connections. An access connection whose
//! flow has a window is warned `warning` before the window ends (logged,
//! and shown by `wardctl flow list`) and cut when it ends, with the audited
//! reason, by the same re-check a reload runs. The gateway's clock is read
//! every [`WINDOW_CHECK`], so a cut lands within that of the end, whatever
//! the clock does (DST, or a clock set in a test).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use ward_policy::{Denied, Plan};

use super::registry::{Grant, Live};
use super::state::ProxyState;

/// How often windows are checked against the clock.
pub const WINDOW_CHECK: Duration = Duration::from_secs(1);

/// Where a live connection stands with its flow's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Its flow has no window (or it is not an access connection).
    Unbounded,
    /// Open until `end`; warned `warning` before it.
    Open {
        /// When the window in force ends.
        end: Timestamp,
        /// The warning period.
        warning: Duration,
    },
    /// The window has ended: the connection is to be cut.
    Ended,
}

impl WindowState {
    /// Seconds left, when the window is open.
    pub fn left(self, now: Timestamp) -> Option<Duration> {
        match self {
            WindowState::Open { end, .. } => {
                Some(now.duration_until(end).try_into().unwrap_or(Duration::ZERO))
            }
            _ => None,
        }
    }

    /// Whether the warning period has begun.
    pub fn warned(self, now: Timestamp) -> bool {
        match self {
            WindowState::Open { warning, .. } => self.left(now).is_some_and(|l| l <= warning),
            _ => false,
        }
    }
}

/// The window state of `live` under `plan` at `now`. Decisions other than
/// the window (a revoked identity, a removed flow) are a reload's re-check
/// to act on, not this one.
pub fn window_state(plan: &Plan, live: &Live, now: Timestamp) -> WindowState {
    let Grant::Access { listener, .. } = &live.grant else {
        return WindowState::Unbounded;
    };
    match plan.authorize_client(live.peer.as_deref().unwrap_or(""), *listener, now) {
        Ok(rule) => match rule
            .window
            .as_ref()
            .and_then(|w| Some((w.open_until(now)?, w)))
        {
            Some((end, w)) => WindowState::Open {
                end,
                warning: w.warning,
            },
            None => WindowState::Unbounded,
        },
        Err(Denied::OutsideWindow) => WindowState::Ended,
        Err(_) => WindowState::Unbounded,
    }
}

/// Warn open sessions before their window ends and cut them when it does.
pub fn spawn_window_watch(
    tracker: &TaskTracker,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        // Connections already warned, by source and start (unique per connection).
        let mut warned: HashSet<(SocketAddr, SystemTime)> = HashSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(WINDOW_CHECK) => {}
            }
            let (plan, now) = (state.plan(), state.clock.now());
            if plan.access.iter().all(|a| a.window.is_none()) {
                warned.clear();
                continue; // no windows: nothing to warn or cut, no snapshot taken
            }
            let live = state.registry.snapshot();
            let mut ended = false;
            for l in &live {
                let ws = window_state(&plan, l, now);
                if ws == WindowState::Ended {
                    ended = true;
                } else if ws.warned(now) && warned.insert((l.source, l.started)) {
                    let left = ws.left(now).unwrap_or_default().as_secs();
                    let WindowState::Open { end, .. } = ws else {
                        continue;
                    };
                    warn!(flow = %l.flow, src = %l.source, peer = l.peer.as_deref().unwrap_or(""), window_ends = %end, seconds_left = left, "maintenance window ends soon: the session will be cut");
                }
            }
            warned.retain(|k| live.iter().any(|l| (l.source, l.started) == *k));
            if ended {
                state.recheck().await;
            }
        }
    });
}
