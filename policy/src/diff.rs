//! What changes between two policies, per gateway: devices, flows, and the
//! nftables objects and rules each gateway would load.

use std::collections::{BTreeMap, BTreeSet};

use nftables::schema::{NfCmd, NfListObject, NfObject};
use serde::Serialize;
use serde_json::Value;

use crate::compile::{Plan, compile};
use crate::model::Policy;

/// Added, removed and changed items, each changed one with its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Present only in the new policy.
    pub added: Vec<String>,
    /// Present only in the old policy.
    pub removed: Vec<String>,
    /// Present in both, different.
    pub changed: Vec<Changed>,
}

/// An item present in both policies, and what changed in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// Its name.
    pub name: String,
    /// Each field that differs (dotted path inside the item), old → new.
    pub fields: Vec<FieldChange>,
}

/// One field's old and new value (`null`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// Dotted path, e.g. `outbound.target.addr`.
    pub field: String,
    /// Value in the old policy.
    pub old: Value,
    /// Value in the new policy.
    pub new: Value,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Self {
        let mut c = Changes::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => {
                    let mut fields = Vec::new();
                    field_changes("", o, v, &mut fields);
                    c.changed.push(Changed {
                        name: k.clone(),
                        fields,
                    });
                }
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

/// The leaves that differ between `a` and `b`, by dotted path; lists and
/// values of different shapes are compared whole.
fn field_changes(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                field_changes(&sub, va, vb, out);
            }
        }
        _ if a != b => out.push(FieldChange {
            field: path.to_owned(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
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
    /// Raw exceptions of its devices.
    pub exceptions: Changes,
    /// nftables objects and rules (rules have no identity: only added and removed).
    pub rules: Changes,
}

/// The difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Mode before and after, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<(String, String)>,
    /// Services, site-wide (address, protocol, how they are reached).
    pub services: Changes,
    /// Per gateway, sorted by name.
    pub gateways: Vec<GatewayDiff>,
}

impl PolicyDiff {
    /// True when the two policies compile to the same thing everywhere.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.services.is_empty()
            && self.gateways.iter().all(|g| g.status == "unchanged")
    }
}

fn device_view(plan: &Plan) -> BTreeMap<String, Value> {
    plan.devices
        .iter()
        .map(|(id, d)| (id.clone(), serde_json::json!(d)))
        .collect()
}

fn service_view(p: &Policy) -> BTreeMap<String, Value> {
    p.services
        .iter()
        .map(|(name, s)| {
            let v = serde_json::json!({
                "address": s.address.value,
                "protocol": s.protocol,
                "via": s.via.as_ref().map(|v| v.value.clone()),
                "tls": s.tls.as_ref().map(|t| t.value.clone()),
            });
            (name.clone(), v)
        })
        .collect()
}

fn exception_view(plan: &Plan) -> BTreeMap<String, Value> {
    plan.exceptions
        .iter()
        .map(|e| (e.name.clone(), serde_json::json!(e)))
        .collect()
}

fn flow_view(plan: &Plan) -> BTreeMap<String, Value> {
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
            &a.as_ref().map_or_else(|| empty.clone(), device_view),
            &b.as_ref().map_or_else(|| empty.clone(), device_view),
        );
        let flows = Changes::between(
            &a.as_ref().map_or_else(|| empty.clone(), flow_view),
            &b.as_ref().map_or_else(|| empty.clone(), flow_view),
        );
        let exceptions = Changes::between(
            &a.as_ref().map_or_else(|| empty.clone(), exception_view),
            &b.as_ref().map_or_else(|| empty.clone(), exception_view),
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
            _ if devices.is_empty()
                && flows.is_empty()
                && exceptions.is_empty()
                && rules.is_empty() =>
            {
                "unchanged"
            }
            _ => "changed",
        };
        gateways.push(GatewayDiff {
            gateway: name.clone(),
            status,
            devices,
            flows,
            exceptions,
            rules,
        });
    }
    PolicyDiff {
        mode: (old.mode != new.mode).then(|| (old.mode.to_string(), new.mode.to_string())),
        services: Changes::between(&service_view(old), &service_view(new)),
        gateways,
    }
}
