//! `GET /v1/evidence`: what `wardctl report` shows of this gateway. Drop
//! counters live in the nftables ruleset and start at zero whenever it is
//! loaded; to say how many packets a device had dropped in the last 24
//! hours, their values are sampled every [`SAMPLE_EVERY`] and the sample
//! nearest 24 hours ago (or the load, if later) is the baseline.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ward_api::{AuditEvidence, DropWindow, EVIDENCE_FORMAT, Evidence, HandshakeRefusals};

use super::{Control, blocking, now_secs};

/// How often drop counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(600);
/// The window the report shows.
const WINDOW: u64 = 24 * 3600;

/// Drop counter samples since the ruleset was last loaded.
#[derive(Debug)]
pub struct DropHistory {
    loaded_at: u64,
    samples: VecDeque<(u64, BTreeMap<String, u64>)>,
}

impl DropHistory {
    /// A ruleset loaded at `at`: its counters start at zero.
    pub fn loaded(at: u64) -> DropHistory {
        DropHistory {
            loaded_at: at,
            samples: VecDeque::new(),
        }
    }

    fn push(&mut self, at: u64, drops: BTreeMap<String, u64>) {
        self.samples.push_back((at, drops));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| *t + WINDOW + SAMPLE_EVERY.as_secs() < at)
        {
            self.samples.pop_front();
        }
    }

    /// Drops of each device over the last 24 hours (or since the load),
    /// given the counters now.
    fn window(&self, now: u64, current: &BTreeMap<String, u64>) -> Vec<DropWindow> {
        let start = now.saturating_sub(WINDOW);
        let base = if self.loaded_at >= start {
            None
        } else {
            self.samples.iter().find(|(t, _)| *t >= start)
        };
        current
            .iter()
            .map(|(device, now_drops)| {
                let (since, before) = match base {
                    Some((t, m)) => (*t, m.get(device).copied().unwrap_or(0)),
                    None => (self.loaded_at, 0),
                };
                DropWindow {
                    device: device.clone(),
                    packets: now_drops.saturating_sub(before),
                    since,
                }
            })
            .collect()
    }
}

impl Control {
    /// The ruleset was (re)loaded: its counters start again.
    pub(super) fn ruleset_loaded(&self) {
        *self.drops.lock().expect("lock poisoned") = DropHistory::loaded(now_secs());
    }

    async fn drop_counters(&self) -> BTreeMap<String, u64> {
        self.devices()
            .await
            .into_iter()
            .map(|d| (d.id, d.drops))
            .collect()
    }

    /// `GET /v1/evidence`.
    pub async fn evidence(&self) -> Evidence {
        let devices = self.devices().await;
        let current: BTreeMap<String, u64> =
            devices.iter().map(|d| (d.id.clone(), d.drops)).collect();
        let now = now_secs();
        let drops_24h = self
            .drops
            .lock()
            .expect("lock poisoned")
            .window(now, &current);
        let path = self.proxy.audit.path().to_owned();
        let file = path.display().to_string();
        let audit = match blocking(move || std::fs::read_to_string(&path)).await {
            Ok(Ok(text)) => match ward_api::audit::verify(&text) {
                Ok(records) => AuditEvidence {
                    file,
                    records,
                    intact: true,
                    error: None,
                },
                Err(e) => AuditEvidence {
                    file,
                    records: 0,
                    intact: false,
                    error: Some(e.to_string()),
                },
            },
            Ok(Err(e)) => AuditEvidence {
                file,
                records: 0,
                intact: false,
                error: Some(format!("cannot read the trail: {e}")),
            },
            Err(e) => AuditEvidence {
                file,
                records: 0,
                intact: false,
                error: Some(e.to_string()),
            },
        };
        Evidence {
            format: EVIDENCE_FORMAT,
            at: now,
            status: self.status().await,
            devices,
            drops_24h,
            flows: self.flows(),
            handshake_refusals: self
                .proxy
                .registry
                .handshake_failures()
                .into_iter()
                .map(|((leg, reason), count)| HandshakeRefusals {
                    leg: leg.to_string(),
                    reason: reason.as_str().to_owned(),
                    count,
                })
                .collect(),
            audit,
        }
    }
}

/// Sample the drop counters every [`SAMPLE_EVERY`].
pub fn spawn_drop_sampler(
    tracker: &TaskTracker,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            let drops = control.drop_counters().await;
            control
                .drops
                .lock()
                .expect("lock poisoned")
                .push(now_secs(), drops);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([("ct".to_owned(), v)])
    }

    /// Younger than a day: everything since the load. Older: the sample
    /// nearest 24 hours ago is the baseline; old samples are dropped.
    #[test]
    fn windows() {
        let day = WINDOW;
        let mut h = DropHistory::loaded(1_000);
        assert_eq!(
            h.window(5_000, &m(7)),
            [DropWindow {
                device: "ct".into(),
                packets: 7,
                since: 1_000
            }]
        );
        for i in 1..=200u64 {
            h.push(1_000 + i * 600, m(i * 10));
        }
        let now = 1_000 + 200 * 600;
        let w = h.window(now, &m(2_000));
        let since = w[0].since;
        assert!(since >= now - day && since < now - day + 600, "{w:?}");
        assert_eq!(w[0].packets, 2_000 - ((since - 1_000) / 600) * 10);
        assert!(h.samples.len() <= (day / 600 + 2) as usize);
    }
}
