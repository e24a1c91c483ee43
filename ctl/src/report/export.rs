//! The report's inventory for other tools: a CycloneDX 1.6 BOM (one
//! component of type `device` per device, lifecycle and controls as
//! `ward:` properties, vulnerabilities linked to the devices they affect)
//! and a FHIR R5 Bundle of `Device` resources (identifier, manufacturer,
//! model, version, status; lifecycle in `safety`, controls and residual
//! risks in `note`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{DeviceReport, Report};

/// A UUID (RFC 9562 version 8, name-based) from `name`: the same device
/// gets the same identifier in every report.
fn uuid(name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

fn prop(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn device_ref(d: &DeviceReport) -> String {
    format!("device:{}", d.id)
}

/// A CycloneDX 1.6 BOM of the site's devices.
pub fn cyclonedx(r: &Report) -> Value {
    let mut vulns: BTreeMap<String, (Value, Vec<String>)> = BTreeMap::new();
    let components: Vec<Value> = r
        .devices
        .iter()
        .map(|d| {
            let mut props = vec![
                prop("ward:device:id", &d.id),
                prop("ward:device:gateway", &d.gateway),
                prop("ward:device:ip", &d.ip),
                prop("ward:device:insertion", &d.insertion),
                prop("ward:lifecycle:stage", &d.lifecycle.stage),
                prop(
                    "ward:lifecycle:past-end-of-support",
                    d.lifecycle.past_end_of_support.to_string(),
                ),
                prop("ward:controls:mode", &d.controls.mode),
                prop("ward:controls:isolation", &d.controls.isolation),
            ];
            if let Some(c) = &d.class {
                props.push(prop("ward:device:class", c));
            }
            if let Some(e) = &d.lifecycle.ends {
                props.push(prop("ward:lifecycle:end-of-support", e));
            }
            for f in &d.controls.flows {
                props.push(prop(
                    "ward:controls:flow",
                    format!(
                        "{} {} {} {} via {}{}",
                        f.name,
                        f.direction,
                        f.peer,
                        f.protocol,
                        f.transport,
                        f.guard
                            .as_ref()
                            .map(|g| format!("; guard {g}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            for k in &d.residual_risks {
                props.push(prop(
                    "ward:residual-risk",
                    format!("{}: {}", k.kind, k.text),
                ));
            }
            for v in &d.vulnerabilities {
                let entry = vulns.entry(v.id.clone()).or_insert_with(|| {
                    let mut vp = Vec::new();
                    if v.kev {
                        vp.push(prop("ward:kev", "true"));
                        if let Some(a) = &v.kev_date_added {
                            vp.push(prop("ward:kev:date-added", a));
                        }
                        if v.ransomware {
                            vp.push(prop("ward:kev:ransomware", "known"));
                        }
                    }
                    let mut body = json!({
                        "bom-ref": format!("vulnerability:{}", v.id),
                        "id": v.id,
                        "source": {
                            "name": "NVD",
                            "url": format!("https://nvd.nist.gov/vuln/detail/{}", v.id),
                        },
                    });
                    if let Some(t) = &v.title {
                        body["description"] = json!(t);
                    }
                    if !vp.is_empty() {
                        body["properties"] = json!(vp);
                    }
                    (body, Vec::new())
                });
                entry.1.push(device_ref(d));
            }
            let mut c = json!({
                "type": "device",
                "bom-ref": device_ref(d),
                "name": d.model.clone().unwrap_or_else(|| d.id.clone()),
                "properties": props,
            });
            if let Some(f) = &d.firmware {
                c["version"] = json!(f);
            }
            if let Some(v) = &d.vendor {
                c["manufacturer"] = json!({ "name": v });
            }
            if let Some(n) = &d.name {
                c["description"] = json!(n);
            }
            if let Some(s) = &d.sbom {
                // An SBOM reference that is a URL or URN is linked; any
                // other reference is kept as a property.
                if s.contains(':') && !s.contains(char::is_whitespace) {
                    c["externalReferences"] = json!([{ "type": "bom", "url": s }]);
                } else {
                    c["properties"]
                        .as_array_mut()
                        .expect("properties")
                        .push(prop("ward:sbom", s));
                }
            }
            c
        })
        .collect();
    let vulnerabilities: Vec<Value> = vulns
        .into_values()
        .map(|(mut v, refs)| {
            v["affects"] = json!(refs.iter().map(|r| json!({ "ref": r })).collect::<Vec<_>>());
            v
        })
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid(&format!("{}/{}/{}", r.site, r.policy.sha256, r.generated_at))),
        "version": 1,
        "metadata": {
            "timestamp": r.generated_at,
            "tools": { "components": [{
                "type": "application",
                "name": "wardctl",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "properties": [
                prop("ward:site", &r.site),
                prop("ward:policy:sha256", &r.policy.sha256),
            ],
        },
        "components": components,
        "vulnerabilities": vulnerabilities,
    })
}

/// A FHIR R5 Bundle (type `collection`) of one `Device` per device.
pub fn fhir(r: &Report) -> Value {
    let entries: Vec<Value> = r
        .devices
        .iter()
        .map(|d| {
            let id = uuid(&format!("{}/device/{}", r.site, d.id));
            let mut dev = json!({
                "resourceType": "Device",
                "id": id,
                "identifier": [{
                    "system": format!("spiffe://{}/device", r.site),
                    "value": d.id,
                }],
                "status": if d.controls.quarantined { "inactive" } else { "active" },
            });
            if let Some(n) = &d.name {
                dev["displayName"] = json!(n);
            }
            if let Some(v) = &d.vendor {
                dev["manufacturer"] = json!(v);
            }
            if let Some(m) = &d.model {
                dev["modelNumber"] = json!(m);
            }
            if let Some(f) = &d.firmware {
                dev["version"] = json!([{ "value": f }]);
            }
            let mut safety = vec![json!({
                "text": format!(
                    "Lifecycle (IMDRF N70): {}{}{}",
                    d.lifecycle.stage,
                    d.lifecycle.ends.as_ref().map(|e| format!(", support ends {e}")).unwrap_or_default(),
                    if d.lifecycle.past_end_of_support { "; no more security fixes" } else { "" }
                )
            })];
            for v in &d.vulnerabilities {
                safety.push(json!({
                    "text": format!(
                        "{}{}{}",
                        v.id,
                        if v.kev { " (CISA KEV: exploited in the wild)" } else { "" },
                        v.status.as_ref().map(|s| format!(", {s}")).unwrap_or_default()
                    )
                }));
            }
            dev["safety"] = json!(safety);
            let mut notes = vec![json!({
                "text": format!(
                    "Compensating controls by Ward ({} mode): {}. {}",
                    d.controls.mode, d.controls.isolation, d.controls.anti_spoofing
                )
            })];
            for f in &d.controls.flows {
                notes.push(json!({
                    "text": format!(
                        "Allowed flow {} ({}, {} to {}, {}){}",
                        f.name,
                        f.direction,
                        f.protocol,
                        f.peer,
                        f.transport,
                        f.guard.as_ref().map(|g| format!("; guard {g}")).unwrap_or_default()
                    )
                }));
            }
            for k in &d.residual_risks {
                notes.push(json!({ "text": format!("Residual risk ({}): {}", k.kind, k.text) }));
            }
            dev["note"] = json!(notes);
            json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": dev })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid(&format!("{}/bundle/{}", r.site, r.generated_at)),
        "type": "collection",
        "timestamp": r.generated_at,
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid("x");
        assert_eq!(a, uuid("x"));
        assert_ne!(a, uuid("y"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
    }
}
