//! Learning mode, the daemon's side (DESIGN §5.2,
//! `shared/notes/learning-mode.md`): what each device behind this gateway
//! talks to, in monitor and enforce modes alike.
//!
//! Three sources, each exact in what it gives:
//! - each device's learning set (`obs_<id>`, see `ward_policy::nft`):
//!   packets and bytes per (source, destination, protocol, port), and last
//!   seen from the element's expiry, read every `observe.poll` (and before
//!   every ruleset replacement, which empties the sets);
//! - NFLOG, one message per new flow ([`nflog`]): the first-seen time,
//!   with lost messages counted from the sequence numbers (a lost message
//!   only makes a first-seen time coarser: the next poll finds the flow);
//! - the registry: connections the gateway carried per flow and peer.
//!
//! The store is bounded: at most [`MAX_FLOWS`] flows and [`MAX_TUNNELS`]
//! carried aggregates per device; when full, the flow seen longest ago is
//! evicted and counted. One flow costs about 150 bytes (measured by the
//! learning benchmark), so a device costs at most about 0.6 MiB and 100
//! devices about 60 MiB. The store is written to `state_dir/observed.json`
//! after every poll and read back at start.

pub mod nflog;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use ward_api::observed::{
    FORMAT, FlowKey, Observed, ObservedDevice, ObservedFlow, ObservedTunnel, Verdict,
};
use ward_policy::Plan;
use ward_policy::model::Mode;
use ward_policy::nft::{OBSERVE_SET_SIZE, OBSERVE_TIMEOUT_SECS, observe_full_counter, observe_set};

use crate::control::nft::{ApplyError, Nft, SetElement};
use crate::proxy::registry::Registry;

/// Most flows kept per device: as many as its learning set holds.
pub const MAX_FLOWS: usize = OBSERVE_SET_SIZE as usize;
/// Most carried-connection aggregates kept per device.
pub const MAX_TUNNELS: usize = 256;
/// The store's file in `state_dir`.
pub const FILE: &str = "observed.json";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One flow's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    first: u64,
    last: u64,
    packets: u64,
    bytes: u64,
    /// The kernel element's counters at the last read (reset when the
    /// ruleset is replaced, and not kept across restarts: the start
    /// replaces the ruleset).
    #[serde(skip)]
    seen_packets: u64,
    #[serde(skip)]
    seen_bytes: u64,
}

/// Connections carried in earlier runs, per (flow, leg, peer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TunnelRec {
    flow: String,
    leg: String,
    peer: String,
    connections: u64,
    bytes_up: u64,
    bytes_down: u64,
    first: u64,
    last: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DevStore {
    #[serde(with = "pairs")]
    flows: HashMap<FlowKey, Rec>,
    /// Carried connections of earlier runs (this run's are in the registry).
    tunnels: Vec<TunnelRec>,
    overflow_packets: u64,
    evicted: u64,
    #[serde(skip)]
    seen_overflow: u64,
}

/// A map with struct keys as a JSON list of pairs.
mod pairs {
    use super::{FlowKey, HashMap, Rec};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &HashMap<FlowKey, Rec>, s: S) -> Result<S::Ok, S::Error> {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by_key(|(k, _)| **k);
        s.collect_seq(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<FlowKey, Rec>, D::Error> {
        Ok(Vec::<(FlowKey, Rec)>::deserialize(d)?.into_iter().collect())
    }
}

impl DevStore {
    /// Merge one read of the device's learning set (`full`: its overflow
    /// counter) at `now`: counts are added as deltas from the last read.
    fn merge(&mut self, elements: Vec<SetElement>, full: u64, now: u64) {
        for e in elements {
            // nft prints whole seconds left, rounded down: the last packet
            // came between `timeout - expires - 1` and `timeout - expires`
            // seconds ago; the nearer bound never puts it before a
            // first-seen event of the same packet.
            let ago = u64::from(OBSERVE_TIMEOUT_SECS).saturating_sub(e.expires + 1);
            let last = now.saturating_sub(ago);
            if !self.flows.contains_key(&e.key) {
                self.make_room();
            }
            let r = self.flows.entry(e.key).or_insert(Rec {
                first: last,
                last,
                packets: 0,
                bytes: 0,
                seen_packets: 0,
                seen_bytes: 0,
            });
            // A counter below the last read: the element expired and came
            // back, counting from zero.
            let (dp, db) = if e.packets >= r.seen_packets {
                (
                    e.packets - r.seen_packets,
                    e.bytes.saturating_sub(r.seen_bytes),
                )
            } else {
                (e.packets, e.bytes)
            };
            r.packets += dp;
            r.bytes += db;
            r.seen_packets = e.packets;
            r.seen_bytes = e.bytes;
            r.last = r.last.max(last);
            r.first = r.first.min(r.last);
        }
        self.overflow_packets += full.checked_sub(self.seen_overflow).unwrap_or(full);
        self.seen_overflow = full;
    }

    /// Make room for one more flow: evict the one seen longest ago.
    fn make_room(&mut self) {
        if self.flows.len() < MAX_FLOWS {
            return;
        }
        if let Some(oldest) = self
            .flows
            .iter()
            .min_by_key(|(_, r)| r.last)
            .map(|(k, _)| *k)
        {
            self.flows.remove(&oldest);
            self.evicted += 1;
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Store {
    format: u32,
    devices: BTreeMap<String, DevStore>,
    nflog_lost: u64,
    /// Protocol facts of earlier runs, per flow and guard key (this run's
    /// are in the registry until the next write).
    #[serde(default)]
    facts: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// Add `values` (per guard key) to `flow`'s facts, at most
/// [`crate::guard::facts::MAX_PER_KIND`] a key.
fn merge_facts(
    into: &mut BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    flow: &str,
    values: BTreeMap<String, Vec<String>>,
) {
    let kept = into.entry(flow.to_owned()).or_default();
    for (key, vs) in values {
        let set = kept.entry(key).or_default();
        for v in vs {
            if set.len() >= crate::guard::facts::MAX_PER_KIND {
                break;
            }
            set.insert(v);
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Polled {
    /// Elements read from the kernel.
    pub elements: usize,
    /// Flows in the store after it.
    pub flows: usize,
}

/// The learning store and its sources.
pub struct Observer {
    store: Mutex<Store>,
    path: PathBuf,
    nft: Option<Nft>,
    plan: watch::Receiver<Arc<Plan>>,
    registry: Arc<Registry>,
    /// First-seen events received.
    pub nflog_events: AtomicU64,
    /// First-seen events lost (sequence gaps, buffer overruns).
    pub nflog_lost: AtomicU64,
    /// Polls that failed (nft could not be read).
    pub poll_errors: AtomicU64,
    /// One writer of the store's file at a time.
    persist_lock: Mutex<()>,
}

impl Observer {
    /// An observer for the plan `plan` gives, keeping its store in
    /// `state_dir`; reads the kernel through `nft` (none: no kernel data,
    /// e.g. `nft.apply = false`). An unreadable store file is set aside
    /// (renamed `.corrupt`) and learning starts afresh, with a warning.
    pub fn new(
        state_dir: PathBuf,
        nft: Option<Nft>,
        plan: watch::Receiver<Arc<Plan>>,
        registry: Arc<Registry>,
    ) -> Observer {
        let path = state_dir.join(FILE);
        let store = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<Store>(&b) {
                Ok(s) => s,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "learning store unreadable; set aside, starting afresh");
                    let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                    Store::default()
                }
            },
            Err(_) => Store::default(),
        };
        let lost = store.nflog_lost;
        Observer {
            store: Mutex::new(store),
            path,
            nft,
            plan,
            registry,
            nflog_events: AtomicU64::new(0),
            nflog_lost: AtomicU64::new(lost),
            poll_errors: AtomicU64::new(0),
            persist_lock: Mutex::new(()),
        }
    }

    /// Whether the plan in force records flows.
    pub fn enabled(&self) -> bool {
        self.plan.borrow().observe
    }

    /// A first-seen event (NFLOG) for `key` at `at`.
    pub fn first_seen(&self, key: FlowKey, at: u64) {
        let plan = self.plan.borrow().clone();
        let Some((device, _)) = plan.device_of(&key) else {
            return;
        };
        let mut store = self.store.lock().expect("store lock poisoned");
        let dev = store.devices.entry(device.id.clone()).or_default();
        if !dev.flows.contains_key(&key) {
            dev.make_room();
            dev.flows.insert(
                key,
                Rec {
                    first: at,
                    last: at,
                    packets: 0,
                    bytes: 0,
                    seen_packets: 0,
                    seen_bytes: 0,
                },
            );
        }
    }

    /// Read every learning set and merge it (blocking: runs `nft`).
    pub fn poll(&self) -> Result<Polled, ApplyError> {
        let Some(nft) = &self.nft else {
            return Ok(Polled::default());
        };
        let plan = self.plan.borrow().clone();
        if !plan.observe {
            return Ok(Polled::default());
        }
        let mut read = Vec::new();
        for d in plan.devices.values() {
            read.push((d.id.clone(), nft.list_observed(&observe_set(&d.id))?));
        }
        let counters = nft.list_counters()?;
        let now = now_secs();
        let mut polled = Polled::default();
        let mut store = self.store.lock().expect("store lock poisoned");
        for (id, elements) in read {
            polled.elements += elements.len();
            let full = counters
                .iter()
                .find(|c| c.name == observe_full_counter(&id))
                .map_or(0, |c| c.packets);
            store
                .devices
                .entry(id)
                .or_default()
                .merge(elements, full, now);
        }
        store.nflog_lost = self.nflog_lost.load(Ordering::Relaxed);
        polled.flows = store.devices.values().map(|d| d.flows.len()).sum();
        let copy = Store {
            format: FORMAT,
            devices: store.devices.clone(),
            nflog_lost: store.nflog_lost,
            facts: store.facts.clone(),
        };
        // Written without holding the store: first-seen events and the API
        // do not wait for the disk.
        drop(store);
        self.persist(copy);
        Ok(polled)
    }

    /// The ruleset was replaced: the kernel's sets and counters start from
    /// zero. Call after a successful apply, with a [`Observer::poll`] just before it.
    pub fn kernel_reset(&self) {
        let mut store = self.store.lock().expect("store lock poisoned");
        for dev in store.devices.values_mut() {
            dev.seen_overflow = 0;
            for r in dev.flows.values_mut() {
                r.seen_packets = 0;
                r.seen_bytes = 0;
            }
        }
    }

    fn persist(&self, mut copy: Store) {
        let _one = self.persist_lock.lock().expect("persist lock poisoned");
        // Connections carried in this run join those of earlier runs.
        for ((device, flow, leg, peer), c) in self.registry.carried() {
            let dev = copy.devices.entry(device).or_default();
            merge_tunnel(&mut dev.tunnels, &flow, leg.as_str(), &peer, &c);
        }
        for (flow, stats) in self.registry.flow_stats() {
            merge_facts(&mut copy.facts, &flow, stats.facts.snapshot().0);
        }
        let json = serde_json::to_vec(&copy).expect("the store serializes");
        if let Err(e) = ward_pki::write_file(&self.path, &json, 0o600) {
            warn!(file = %self.path.display(), error = %e, "cannot write the learning store");
        }
    }

    /// `GET /v1/observed`: every device's flows seen at or after `since`
    /// (Unix seconds), judged by the plan in force.
    pub fn snapshot(&self, since: u64, revision: String) -> Observed {
        let plan = self.plan.borrow().clone();
        let monitor = plan.mode == Mode::Monitor;
        let store = self.store.lock().expect("store lock poisoned");
        let mut tunnels: BTreeMap<String, Vec<TunnelRec>> = store
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), d.tunnels.clone()))
            .collect();
        for ((device, flow, leg, peer), c) in self.registry.carried() {
            merge_tunnel(
                tunnels.entry(device).or_default(),
                &flow,
                leg.as_str(),
                &peer,
                &c,
            );
        }
        let mut ids: Vec<&String> = store.devices.keys().chain(tunnels.keys()).collect();
        ids.sort();
        ids.dedup();
        let devices = ids
            .into_iter()
            .map(|id| {
                let dev = store.devices.get(id).cloned().unwrap_or_default();
                let d = plan.devices.get(id);
                let mut flows: Vec<ObservedFlow> = dev
                    .flows
                    .iter()
                    .filter(|(_, r)| r.last >= since)
                    .map(|(k, r)| ObservedFlow {
                        key: *k,
                        direction: plan
                            .device_of(k)
                            .map_or(ward_api::observed::Direction::Out, |(_, dir)| dir),
                        first_seen: r.first,
                        last_seen: r.last,
                        packets: r.packets,
                        bytes: r.bytes,
                        verdict: Verdict::of(plan.judge(k), monitor),
                    })
                    .collect();
                flows.sort_by_key(|f| f.key);
                ObservedDevice {
                    id: id.clone(),
                    ip: d.map_or_else(String::new, |d| d.ip.to_string()),
                    class: d.and_then(|d| d.inventory.class.clone()),
                    flows,
                    tunnels: tunnels
                        .get(id)
                        .into_iter()
                        .flatten()
                        .filter(|t| t.last >= since)
                        .map(|t| ObservedTunnel {
                            flow: t.flow.clone(),
                            leg: t.leg.clone(),
                            peer: t.peer.clone(),
                            connections: t.connections,
                            bytes_up: t.bytes_up,
                            bytes_down: t.bytes_down,
                            first_seen: t.first,
                            last_seen: t.last,
                        })
                        .collect(),
                    overflow_packets: dev.overflow_packets,
                    evicted: dev.evicted,
                }
            })
            .collect();
        Observed {
            format: FORMAT,
            gateway: plan.gateway.clone(),
            mode: plan.mode.to_string(),
            revision,
            at: now_secs(),
            nflog_lost: self.nflog_lost.load(Ordering::Relaxed),
            nflog_events: self.nflog_events.load(Ordering::Relaxed),
            devices,
            facts: {
                // Earlier runs' facts and this run's.
                let mut all = store.facts.clone();
                let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
                for (flow, stats) in self.registry.flow_stats() {
                    let (values, d) = stats.facts.snapshot();
                    merge_facts(&mut all, &flow, values);
                    dropped.insert(flow, d);
                }
                all.into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(flow, values)| ward_api::observed::FlowFacts {
                        dropped: dropped.get(&flow).copied().unwrap_or(0),
                        flow,
                        values: values
                            .into_iter()
                            .map(|(k, v)| (k, v.into_iter().collect()))
                            .collect(),
                    })
                    .collect()
            },
        }
    }

    /// Per device, for the metrics page: (id, flows kept, overflow
    /// packets, flows evicted).
    pub fn counts(&self) -> Vec<(String, u64, u64, u64)> {
        let store = self.store.lock().expect("store lock poisoned");
        store
            .devices
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    d.flows.len() as u64,
                    d.overflow_packets,
                    d.evicted,
                )
            })
            .collect()
    }
}

fn merge_tunnel(
    into: &mut Vec<TunnelRec>,
    flow: &str,
    leg: &str,
    peer: &str,
    c: &crate::proxy::registry::Carried,
) {
    let full = into.len() >= MAX_TUNNELS;
    match into
        .iter_mut()
        .find(|t| t.flow == flow && t.leg == leg && t.peer == peer)
    {
        Some(t) => {
            t.connections += c.connections;
            t.bytes_up += c.bytes_up;
            t.bytes_down += c.bytes_down;
            t.first = t.first.min(c.first);
            t.last = t.last.max(c.last);
        }
        None if !full => into.push(TunnelRec {
            flow: flow.to_owned(),
            leg: leg.to_owned(),
            peer: peer.to_owned(),
            connections: c.connections,
            bytes_up: c.bytes_up,
            bytes_down: c.bytes_down,
            first: c.first,
            last: c.last,
        }),
        None => {}
    }
}

/// Read the learning sets every `every` until `shutdown`, and once more
/// then, so what the last interval saw is kept.
pub fn spawn_poller(
    tracker: &TaskTracker,
    observer: Arc<Observer>,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let o = observer.clone();
            match tokio::task::spawn_blocking(move || o.poll()).await {
                Ok(Ok(p)) => debug!(elements = p.elements, flows = p.flows, "learning sets read"),
                Ok(Err(e)) => {
                    observer.poll_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "cannot read the learning sets");
                }
                Err(_) => return,
            }
            if stop {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: "198.51.100.2".parse().expect("ip"),
            dst: "192.0.2.123".parse().expect("ip"),
            proto: ward_policy::observe::UDP,
            port,
        }
    }

    fn el(port: u16, packets: u64, expires: u64) -> SetElement {
        SetElement {
            key: key(port),
            packets,
            bytes: packets * 76,
            expires,
        }
    }

    /// Reads add deltas; an element that expired and came back counts from
    /// zero; a ruleset replacement resets the baselines; the overflow
    /// counter accumulates the same way; last seen comes from the expiry.
    #[test]
    fn merges_count_deltas() {
        let t = 1_000_000;
        let full_timeout = u64::from(OBSERVE_TIMEOUT_SECS);
        let mut d = DevStore::default();
        d.merge(vec![el(123, 3, full_timeout - 1)], 5, t);
        d.merge(vec![el(123, 7, full_timeout - 11)], 9, t + 20);
        let r = d.flows[&key(123)];
        assert_eq!((r.packets, r.bytes), (7, 7 * 76));
        assert_eq!((r.first, r.last), (t, t + 10), "last seen from the expiry");
        assert_eq!(d.overflow_packets, 9);
        // Expired and back: 2 new packets, not 2 - 7.
        d.merge(vec![el(123, 2, full_timeout - 1)], 9, t + 4000);
        assert_eq!(d.flows[&key(123)].packets, 9);
        assert_eq!(d.flows[&key(123)].last, t + 4000);
        // The ruleset was replaced: the kernel counts from zero again.
        d.seen_overflow = 0;
        for r in d.flows.values_mut() {
            r.seen_packets = 0;
            r.seen_bytes = 0;
        }
        d.merge(vec![el(123, 4, full_timeout - 1)], 1, t + 4010);
        assert_eq!(d.flows[&key(123)].packets, 13);
        assert_eq!(d.overflow_packets, 10);
    }

    /// The store keeps MAX_FLOWS per device, evicting the flow seen
    /// longest ago and counting it.
    #[test]
    fn store_is_bounded() {
        let mut d = DevStore::default();
        let n = u16::try_from(MAX_FLOWS).expect("fits") + 10;
        let timeout = u64::from(OBSERVE_TIMEOUT_SECS);
        for p in 0..n {
            d.merge(vec![el(p, 1, timeout - 1)], 0, 1_000 + u64::from(p));
        }
        assert_eq!(d.flows.len(), MAX_FLOWS);
        assert_eq!(d.evicted, 10);
        assert!(!d.flows.contains_key(&key(0)) && d.flows.contains_key(&key(n - 1)));
    }

    /// Facts noted in one run come back from the file in the next, joined
    /// with what the new run notes, bounded per key.
    #[test]
    fn facts_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("ward-facts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (p, _) = ward_policy::load(
            "p.toml",
            include_str!("../../../policy/examples/hospital.toml"),
            &Default::default(),
        )
        .expect("valid");
        let plan = Arc::new(ward_policy::compile(&p, "edge-01").expect("plan"));
        let (_tx, rx) = watch::channel(plan);
        let run = |note: &[(&'static str, &str)]| {
            let registry = Arc::new(Registry::default());
            let o = Observer::new(dir.clone(), None, rx.clone(), registry.clone());
            let facts = registry.flow("ct2-to-pacs").facts.clone();
            for (k, v) in note {
                facts.note(k, v);
            }
            let seen = o.snapshot(0, "r".into()).facts;
            o.persist(Store {
                format: FORMAT,
                ..o.store.lock().expect("lock").clone()
            });
            seen
        };
        run(&[
            ("commands", "C-STORE"),
            ("calling_ae_titles", "CT-SCANNER-2"),
        ]);
        let after = run(&[("commands", "C-ECHO")]);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].flow, "ct2-to-pacs");
        assert_eq!(after[0].values["commands"], ["C-ECHO", "C-STORE"]);
        assert_eq!(after[0].values["calling_ae_titles"], ["CT-SCANNER-2"]);
        let mut big = BTreeMap::new();
        merge_facts(
            &mut big,
            "f",
            BTreeMap::from([(
                "unit_ids".to_owned(),
                (0..100).map(|i| i.to_string()).collect(),
            )]),
        );
        assert_eq!(
            big["f"]["unit_ids"].len(),
            crate::guard::facts::MAX_PER_KIND
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The file keeps flows and counts, not the kernel baselines (the start
    /// replaces the ruleset, so the kernel counts from zero).
    #[test]
    fn store_file_round_trip() {
        let mut store = Store::default();
        store
            .devices
            .entry("ct-scanner-2".into())
            .or_default()
            .merge(vec![el(123, 7, 3599)], 2, 1_000);
        let json = serde_json::to_vec(&store).expect("serializes");
        let back: Store = serde_json::from_slice(&json).expect("reads back");
        let d = &back.devices["ct-scanner-2"];
        let r = d.flows[&key(123)];
        assert_eq!(
            (
                r.packets,
                r.seen_packets,
                d.overflow_packets,
                d.seen_overflow
            ),
            (7, 0, 2, 0)
        );
    }
}
