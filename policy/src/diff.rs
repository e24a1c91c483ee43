//! What changes between two policies, per gateway: devices, flows, and the
//! nftables objects and rules each gateway would load.

use std::collections::{BTreeMap, BTreeSet};

use nftables::schema::{NfCmd, NfListObject, NfObject};
use serde::Serialize;

use crate::compile::{Plan, compile};
use crate::model::Policy;

/// Added, removed and changed names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Present only in the new policy.
    pub added: Vec<String>,
    /// Present only in the old policy.
    pub removed: Vec<String>,
    /// Present in both, different.
    pub changed: Vec<String>,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Self {
        let mut c = Changes::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c
    }
}

/// The difference for one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayDiff {
    /// Gateway name.
    pub gateway: String,
    /// `added`, `removed`, `changed` or `unchanged`.
    pub status: &'static str,
    /// Devices behind it (address, MAC, interface, inventory, quarantine).
    pub devices: Changes,
    /// Flows it opens, terminates or grants inbound.
    pub flows: Changes,
    /// nftables objects and rules (rules have no identity: only added and removed).
    pub rules: Changes,
}

/// The difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Mode before and after, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<(String, String)>,
    /// Per gateway, sorted by name.
    pub gateways: Vec<GatewayDiff>,
}

impl PolicyDiff {
    /// True when the two policies compile to the same thing everywhere.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.gateways.iter().all(|g| g.status == "unchanged")
    }
}

fn device_view(p: &Policy, plan: &Plan) -> BTreeMap<String, serde_json::Value> {
    plan.devices
        .iter()
        .map(|(id, d)| {
            let inv = p.devices.get(id);
            let v = serde_json::json!({
                "net": d,
                "vendor": inv.and_then(|i| i.vendor.clone()),
                "model": inv.and_then(|i| i.model.clone()),
                "firmware": inv.and_then(|i| i.firmware.clone()),
                "support": inv.and_then(|i| i.support.as_ref().map(|s| s.value.clone())),
                "vulnerabilities": inv.map(|i| i.vulnerabilities.clone()),
            });
            (id.clone(), v)
        })
        .collect()
}

fn flow_view(plan: &Plan) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (k, f) in &plan.outbound {
        out.insert(k.clone(), serde_json::json!({ "outbound": f }));
    }
    for (k, f) in &plan.tunnels {
        out.entry(k.clone())
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .expect("built as an object")
            .insert("tunnel".into(), serde_json::json!(f));
    }
    for a in &plan.access {
        out.insert(a.flow.clone(), serde_json::json!({ "access": a }));
    }
    out
}

/// One line per nft object or rule, comparable as text.
pub fn rule_lines(plan: &Plan) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for o in crate::nft::render(plan).objects.iter() {
        let NfObject::CmdObject(NfCmd::Add(obj)) = o else {
            continue;
        };
        match obj {
            NfListObject::Rule(r) => {
                let expr = serde_json::to_string(&r.expr).unwrap_or_default();
                let comment = r
                    .comment
                    .as_deref()
                    .map(|c| format!(" /* {c} */"))
                    .unwrap_or_default();
                lines.insert(format!("rule {}{comment}: {expr}", r.chain));
            }
            NfListObject::Chain(c) => {
                lines.insert(format!("chain {}", c.name));
            }
            NfListObject::Counter(c) => {
                lines.insert(format!("counter {}", c.name));
            }
            NfListObject::Set(set) => {
                lines.insert(format!("set {}", set.name));
                for e in set.elem.iter().flat_map(|e| e.iter()) {
                    let e = serde_json::to_string(e).unwrap_or_default();
                    lines.insert(format!("set {} element {e}", set.name));
                }
            }
            _ => {}
        }
    }
    lines
}

/// Compare `old` and `new` for every gateway either of them names.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let names: BTreeSet<&String> = old.gateways.keys().chain(new.gateways.keys()).collect();
    let empty = BTreeMap::new();
    let mut gateways = Vec::new();
    for name in names {
        let a = compile(old, name).ok();
        let b = compile(new, name).ok();
        let devices = Changes::between(
            &a.as_ref()
                .map_or_else(|| empty.clone(), |p| device_view(old, p)),
            &b.as_ref()
                .map_or_else(|| empty.clone(), |p| device_view(new, p)),
        );
        let flows = Changes::between(
            &a.as_ref().map_or_else(|| empty.clone(), flow_view),
            &b.as_ref().map_or_else(|| empty.clone(), flow_view),
        );
        let ra = a.as_ref().map(rule_lines).unwrap_or_default();
        let rb = b.as_ref().map(rule_lines).unwrap_or_default();
        let rules = Changes {
            added: rb.difference(&ra).cloned().collect(),
            removed: ra.difference(&rb).cloned().collect(),
            changed: Vec::new(),
        };
        let status = match (&a, &b) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ if devices.is_empty() && flows.is_empty() && rules.is_empty() => "unchanged",
            _ => "changed",
        };
        gateways.push(GatewayDiff {
            gateway: name.clone(),
            status,
            devices,
            flows,
            rules,
        });
    }
    PolicyDiff {
        mode: (old.mode != new.mode).then(|| (old.mode.to_string(), new.mode.to_string())),
        gateways,
    }
}
