//! Unit tests of validation, compile and authorization. Each validation rule
//! has a test that breaks it and checks the diagnostic names line and key.

use std::net::{IpAddr, SocketAddr};

use crate::model::{Date, Mode, Window};
use crate::*;

const EXAMPLE: &str = include_str!("../examples/hospital.toml");
/// The example's DICOM guard line (on ct2-to-pacs).
const EXAMPLE_CT_GUARD: &str = "guard = { calling_ae_titles = [\"CT-SCANNER-2\"], called_ae_titles = [\"PACS\"], sop_classes = [\"CT Image Storage\", \"Verification SOP Class\"], commands = [\"C-STORE\", \"C-ECHO\"] }\n";

fn errors(text: &str) -> Vec<Diagnostic> {
    match load("p.toml", text, &ValidateOptions::default()) {
        Ok((_, warnings)) => panic!("policy accepted, warnings: {warnings:?}"),
        Err(d) => d
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

fn warnings(text: &str, today: Option<Date>) -> Vec<Diagnostic> {
    match load("p.toml", text, &ValidateOptions { today }) {
        Ok((_, w)) => w,
        Err(d) => panic!("policy rejected: {d:#?}"),
    }
}

/// The one error in `text`, asserted to be about `key`, with its line.
fn one_error(text: &str, key: &str) -> Diagnostic {
    let errs = errors(text);
    assert_eq!(
        errs.len(),
        1,
        "expected one error about {key}, got {errs:#?}"
    );
    assert_eq!(errs[0].key, key, "{errs:#?}");
    errs[0].clone()
}

fn line_of(text: &str, needle: &str) -> u32 {
    let at = text.find(needle).expect("needle in text");
    text[..at].matches('\n').count() as u32 + 1
}

fn example() -> Policy {
    load("hospital.toml", EXAMPLE, &ValidateOptions::default())
        .expect("example is valid")
        .0
}

/// The shipped example validates without errors.
#[test]
fn example_is_valid() {
    let (_, warnings) = load("hospital.toml", EXAMPLE, &ValidateOptions::default()).expect("valid");
    // The CT scanner is past end of support but tightly held: no warning.
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A flow naming an undefined device is an error with a did-you-mean.
#[test]
fn unknown_device_reference() {
    let text = EXAMPLE.replace("from = \"pump-icu-01\"", "from = \"pump-icu-1\"");
    let e = one_error(&text, "flows[1].from");
    assert_eq!(e.line, line_of(&text, "from = \"pump-icu-1\""));
    assert!(
        e.message.contains("device \"pump-icu-1\" is not defined"),
        "{e}"
    );
    assert_eq!(e.help.as_deref(), Some("did you mean \"pump-icu-01\"?"));
    assert!(e.to_string().starts_with(&format!("p.toml:{}:", e.line)));
}

/// A flow naming an undefined service is an error.
#[test]
fn unknown_service_reference() {
    let text = EXAMPLE.replace("to = \"pacs\"", "to = \"pac\"");
    let e = one_error(&text, "flows[0].to");
    assert_eq!(e.help.as_deref(), Some("did you mean \"pacs\"?"));
}

/// A device on an undefined gateway is an error.
#[test]
fn unknown_gateway_reference() {
    let text = EXAMPLE.replacen("gateway = \"edge-01\"", "gateway = \"edge-1\"", 1);
    let e = one_error(&text, "devices.ct-scanner-2.gateway");
    assert_eq!(e.help.as_deref(), Some("did you mean \"edge-01\"?"));
}

/// A service through an undefined hub is an error.
#[test]
fn unknown_via_reference() {
    let text = EXAMPLE.replacen("via = \"hub-dc-01\"", "via = \"hub-dc-02\"", 1);
    one_error(&text, "services.pacs.via");
}

/// Two devices with one IP address is an error naming the first.
#[test]
fn duplicate_ip() {
    let text = EXAMPLE.replace("ip = \"198.51.100.34\"", "ip = \"198.51.100.18\"");
    let e = one_error(&text, "devices.pump-icu-02.ip");
    assert!(e.message.contains("pump-icu-01"), "{e}");
}

/// Two devices with one MAC is an error.
#[test]
fn duplicate_mac() {
    let text = EXAMPLE.replace("mac = \"02:00:00:00:00:22\"", "mac = \"02:00:00:00:00:12\"");
    one_error(&text, "devices.pump-icu-02.mac");
}

/// A name used by a device and a service is an error.
#[test]
fn duplicate_id_across_kinds() {
    let text = EXAMPLE.replace(
        "[services.pacs]",
        "[services.pump-icu-01]\naddress = \"203.0.113.9:1\"\nvia = \"hub-dc-01\"\n[services.pacs]",
    );
    one_error(&text, "services.pump-icu-01");
}

/// Two flows with one name is an error.
#[test]
fn duplicate_flow_name() {
    let text = EXAMPLE.replace("name = \"pump2-to-hl7\"", "name = \"pump1-to-hl7\"");
    one_error(&text, "flows[2].name");
}

/// One device reaching two flows at one listen address is a clash.
#[test]
fn listen_clash_same_device() {
    let pump1 = "listen = \"198.51.100.17:2575\"\ntransport = \"tcp\"\nguard = { message_types = [\"ORU^R01\"] }";
    let text = EXAMPLE.replace(pump1, &format!("{pump1}\n[[flows]]\nname = \"pump1-again\"\nfrom = \"pump-icu-01\"\nto = \"pacs\"\nlisten = \"198.51.100.17:2575\""));
    let e = one_error(&text, "flows[2].listen");
    assert!(
        e.message.contains("clashes with flow \"pump1-to-hl7\""),
        "{e}"
    );
}

/// A TLS client listener and a device listener on one address clash.
#[test]
fn listen_clash_kinds() {
    let text = EXAMPLE.replace(
        "listen = \"192.0.2.10:24105\"",
        "listen = \"198.51.100.1:104\"",
    );
    let e = one_error(&text, "flows[3].listen");
    assert!(e.message.contains("both"), "{e}");
}

/// Two devices may share a listen address: the source tells them apart.
#[test]
fn shared_listen_for_different_devices_is_fine() {
    let text = EXAMPLE.replace(
        "listen = \"198.51.100.33:2575\"",
        "listen = \"198.51.100.17:2575\"",
    );
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let plan = compile(&p, "edge-01").expect("compiles");
    let dst: SocketAddr = "198.51.100.17:2575".parse().expect("addr");
    let pump1: IpAddr = "198.51.100.18".parse().expect("ip");
    let pump2: IpAddr = "198.51.100.34".parse().expect("ip");
    assert_eq!(plan.route(pump1, dst).expect("route").name, "pump1-to-hl7");
    assert_eq!(plan.route(pump2, dst).expect("route").name, "pump2-to-hl7");
    assert_eq!(plan.listeners.iter().filter(|l| l.addr == dst).count(), 1);
}

/// A device on an interface its gateway does not have is an error.
#[test]
fn device_interface_missing_on_gateway() {
    let text = EXAMPLE.replace("interface = \"dev3\"", "interface = \"dev4\"");
    let e = one_error(&text, "devices.monitor-icu-3.interface");
    assert!(
        e.message.contains("has no device interface \"dev4\""),
        "{e}"
    );
}

/// An inbound flow whose client is not a declared identity is an error.
#[test]
fn inbound_without_client_identity() {
    let text = EXAMPLE.replace("from = \"vendor-vitalis\"", "from = \"vendor-x\"");
    let e = one_error(&text, "flows[3].from");
    assert!(
        e.message
            .contains("client identity \"vendor-x\" is not defined"),
        "{e}"
    );
    let text = EXAMPLE.replace("from = \"vendor-vitalis\"\n", "");
    let errs = parse("p.toml", &text).expect_err("missing from");
    assert_eq!(errs[0].key, "flows[3].from");
    assert!(errs[0].message.contains("needs a client identity"));
}

/// A device-to-device flow is refused as lateral movement.
#[test]
fn lateral_flow_refused() {
    let text = format!(
        "{EXAMPLE}\n[[flows]]\nname = \"lat\"\nfrom = \"pump-icu-01\"\nto = \"monitor-icu-3\"\nport = 1\nlisten = \"198.51.100.17:1\"\n"
    );
    let e = one_error(&text, "flows[4].from");
    assert!(e.message.contains("lateral"), "{e}");
}

/// A raw exception without a justification is an error.
#[test]
fn exception_without_justification() {
    let start = EXAMPLE.find("justification = \"Devices").expect("present");
    let end = start + EXAMPLE[start..].find('\n').expect("eol");
    let text = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
    let e = one_error(&text, "exceptions[0].justification");
    assert_eq!(e.line, line_of(&text, "name = \"ntp\""));
    let short = EXAMPLE.replace(&EXAMPLE[start..end], "justification = \"ok\"");
    one_error(&short, "exceptions[0].justification");
}

/// A quarantine entry must name a device.
#[test]
fn unknown_quarantine_entry() {
    let text = EXAMPLE.replace("quarantine = []", "quarantine = [\"pump-icu-3\"]");
    one_error(&text, "quarantine");
}

/// A device past end of support that is loosely held draws a warning.
#[test]
fn legacy_device_without_restrictions_warns() {
    let monitor = EXAMPLE.replace("mode = \"enforce\"", "mode = \"monitor\"");
    let w = warnings(&monitor, None);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].key, "devices.ct-scanner-2.support");
    assert_eq!(w[0].severity, Severity::Warning);
    let any_port = EXAMPLE.replace("port = 123\n", "");
    let w = warnings(&any_port, None);
    assert!(w.iter().any(|w| w.message.contains("every port")), "{w:#?}");
    // A supported device whose end date has passed counts as past end of support.
    let w = warnings(
        &any_port,
        Some(Date {
            year: 2030,
            month: 1,
            day: 1,
        }),
    );
    assert_eq!(w.len(), 4, "{w:#?}");
}

/// Flows through the device's own gateway are refused: a tunnel needs a peer.
#[test]
fn via_own_gateway_refused() {
    let text = EXAMPLE.replacen("via = \"hub-dc-01\"", "via = \"edge-01\"", 1);
    one_error(&text, "flows[0].to");
}

/// QUIC only carries gateway tunnels, not native TLS services.
#[test]
fn quic_to_tls_service_refused() {
    let text = EXAMPLE.replace(
        "address = \"203.0.113.5:104\"\nvia = \"hub-dc-01\"",
        "address = \"203.0.113.5:2762\"\ntls = { ca = \"/etc/ward/pacs-ca.pem\", server_name = \"pacs.st-mary.example\" }",
    );
    one_error(&text, "flows[0].transport");
}

/// A service both behind a hub and speaking TLS: the edge still tunnels to
/// the hub (over QUIC here), the hub's leg to the server is TLS with the
/// service's CA and name, and only the hub names that CA as its file.
#[test]
fn via_and_tls_service() {
    let text = EXAMPLE.replace(
        "via = \"hub-dc-01\"\nprotocol = \"dicom\"",
        "via = \"hub-dc-01\"\nprotocol = \"dicom\"\ntls = { ca = \"/etc/ward/pacs-ca.pem\", server_name = \"pacs.st-mary.example\" }",
    );
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let hub = compile(&p, "hub-dc-01").expect("hub");
    let flow = &edge.outbound["ct2-to-pacs"];
    assert!(
        matches!(
            flow.target,
            Target::Tunnel {
                transport: model::Transport::Quic,
                ..
            }
        ),
        "{:?}",
        flow.target
    );
    let t = &hub.tunnels["ct2-to-pacs"];
    assert_eq!(
        t.tls,
        Some(model::TlsTarget {
            ca: "/etc/ward/pacs-ca.pem".into(),
            server_name: "pacs.st-mary.example".into()
        })
    );
    assert!(edge.service_cas().is_empty());
    assert_eq!(
        hub.service_cas().into_iter().collect::<Vec<_>>(),
        [("pacs", "/etc/ward/pacs-ca.pem")]
    );
    // Neither `via` nor `tls`: cleartext would cross the LAN.
    let text = EXAMPLE.replacen(
        "via = \"hub-dc-01\"\nprotocol = \"dicom\"",
        "protocol = \"dicom\"",
        1,
    );
    let e = one_error(&text, "services.pacs.via");
    assert!(e.message.contains("cleartext never crosses the LAN"), "{e}");
}

/// A return flow: the PACS (TLS, behind the hub) connects a listener on the
/// hub, which tunnels to the CT's gateway, which connects the CT's port.
#[test]
fn return_flow() {
    let text = EXAMPLE.replace(
        "via = \"hub-dc-01\"\nprotocol = \"dicom\"",
        "via = \"hub-dc-01\"\nprotocol = \"dicom\"\ntls = { ca = \"/etc/ward/pacs-ca.pem\", server_name = \"pacs.st-mary.example\" }",
    ) + "\n[[flows]]\nname = \"pacs-to-ct2\"\nfrom = \"pacs\"\nto = \"ct-scanner-2\"\nport = 11112\nlisten = \"203.0.113.1:11112\"\n";
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let hub = compile(&p, "hub-dc-01").expect("hub");
    let edge = compile(&p, "edge-01").expect("edge");
    let pacs: IpAddr = "203.0.113.5".parse().expect("ip");
    let f = hub
        .route(pacs, "203.0.113.1:11112".parse().expect("addr"))
        .expect("the PACS may connect back");
    assert_eq!(
        (f.name.as_str(), f.device.as_str()),
        ("pacs-to-ct2", "ct-scanner-2")
    );
    assert!(
        matches!(&f.target, Target::Tunnel { gateway, .. } if gateway == "edge-01"),
        "{:?}",
        f.target
    );
    assert_eq!(
        f.client_tls.as_ref().map(|t| t.server_name.as_str()),
        Some("pacs.st-mary.example")
    );
    let other: IpAddr = "203.0.113.6".parse().expect("ip");
    assert_eq!(
        hub.route(other, "203.0.113.1:11112".parse().expect("addr"))
            .unwrap_err(),
        Denied::NoRoute
    );
    let t = edge
        .authorize_tunnel(
            "spiffe://st-mary.example/gateway/hub-dc-01",
            "pacs-to-ct2",
            "ct-scanner-2",
        )
        .expect("the edge accepts the hub's tunnel for the CT");
    assert_eq!(t.target, "198.51.100.2:11112".parse().expect("addr"));
    assert!(edge.tunnel_server.is_some());
    // Without `via` there is no hub to come through.
    let direct = text.replace(
        "address = \"203.0.113.5:104\"\nvia = \"hub-dc-01\"\n",
        "address = \"203.0.113.5:104\"\n",
    );
    let errs = errors(&direct);
    assert!(
        errs.iter()
            .any(|e| e.message.contains("a return flow comes through the hub")),
        "{errs:#?}"
    );
}

/// Compile is deterministic: the same policy yields byte-identical output.
#[test]
fn compile_is_deterministic() {
    let a = compile(&example(), "edge-01").expect("compiles");
    let b = compile(&example(), "edge-01").expect("compiles");
    assert_eq!(crate::nft::render_json(&a), crate::nft::render_json(&b));
    assert_eq!(
        serde_json::to_string(&a).expect("json"),
        serde_json::to_string(&b).expect("json")
    );
}

/// The edge opens tunnels; the hub authorizes them against its own plan.
#[test]
fn both_ends_authorize() {
    let p = example();
    let edge = compile(&p, "edge-01").expect("edge");
    let hub = compile(&p, "hub-dc-01").expect("hub");
    let ct: IpAddr = "198.51.100.2".parse().expect("ip");
    let flow = edge
        .route(ct, "198.51.100.1:104".parse().expect("addr"))
        .expect("route");
    assert_eq!(flow.name, "ct2-to-pacs");
    match &flow.target {
        Target::Tunnel {
            identity,
            addr,
            transport,
            ..
        } => {
            assert_eq!(identity, "spiffe://st-mary.example/gateway/hub-dc-01");
            assert_eq!(*addr, "192.0.2.20:4433".parse().expect("addr"));
            assert_eq!(*transport, model::Transport::Quic);
        }
        t => panic!("unexpected target {t:?}"),
    }
    // A pump may not use the CT's listener.
    let pump: IpAddr = "198.51.100.18".parse().expect("ip");
    assert_eq!(
        edge.route(pump, "198.51.100.1:104".parse().expect("addr"))
            .unwrap_err(),
        Denied::NoRoute
    );

    let edge_id = "spiffe://st-mary.example/gateway/edge-01";
    let t = hub
        .authorize_tunnel(edge_id, "ct2-to-pacs", "ct-scanner-2")
        .expect("allowed");
    assert_eq!(t.target, "203.0.113.5:104".parse().expect("addr"));
    assert_eq!(
        hub.authorize_tunnel(
            "spiffe://st-mary.example/gateway/rogue",
            "ct2-to-pacs",
            "ct-scanner-2"
        )
        .unwrap_err(),
        Denied::WrongPeer
    );
    assert_eq!(
        hub.authorize_tunnel(edge_id, "ct2-to-pacs", "pump-icu-01")
            .unwrap_err(),
        Denied::WrongDevice
    );
    assert_eq!(
        hub.authorize_tunnel(edge_id, "nope", "ct-scanner-2")
            .unwrap_err(),
        Denied::UnknownFlow
    );
    // The edge terminates no tunnels.
    assert!(edge.tunnel_server.is_none());
    assert_eq!(
        hub.tunnel_server,
        Some("192.0.2.20:4433".parse().expect("addr"))
    );
}

/// Quarantine denies at both ends and fills the nft quarantine sets.
#[test]
fn quarantine_denies() {
    let text = EXAMPLE.replace("quarantine = []", "quarantine = [\"ct-scanner-2\"]");
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let hub = compile(&p, "hub-dc-01").expect("hub");
    let ct: IpAddr = "198.51.100.2".parse().expect("ip");
    assert_eq!(
        edge.route(ct, "198.51.100.1:104".parse().expect("addr"))
            .unwrap_err(),
        Denied::Quarantined
    );
    assert_eq!(
        hub.authorize_tunnel(
            "spiffe://st-mary.example/gateway/edge-01",
            "ct2-to-pacs",
            "ct-scanner-2"
        )
        .unwrap_err(),
        Denied::Quarantined
    );
    let json = crate::nft::render_json(&edge);
    assert!(
        json.contains(r#""name":"quarantine4","type":"ipv4_addr","elem":["198.51.100.2"]"#),
        "{json}"
    );
    assert!(
        json.contains(
            r#""name":"quarantine_mac","type":"ether_addr","elem":["02:00:00:00:00:02"]"#
        )
    );
}

/// Inbound access honours identity and the maintenance window (time injected).
#[test]
fn inbound_window() {
    let edge = compile(&example(), "edge-01").expect("edge");
    let listen: SocketAddr = "192.0.2.10:24105".parse().expect("addr");
    let vendor = "spiffe://st-mary.example/client/vendor-vitalis";
    // The example's windows are in Berlin time (UTC+1 in November).
    let tue_3am = ts("2026-11-24T02:00:00Z");
    let tue_5am = ts("2026-11-24T04:00:00Z");
    let rule = edge
        .authorize_client(vendor, listen, tue_3am)
        .expect("inside window");
    assert_eq!(rule.target, "198.51.100.50:24105".parse().expect("addr"));
    assert_eq!(
        edge.authorize_client(vendor, listen, tue_5am).unwrap_err(),
        Denied::OutsideWindow
    );
    assert_eq!(
        edge.authorize_client("spiffe://st-mary.example/client/clinician", listen, tue_3am)
            .unwrap_err(),
        Denied::WrongPeer
    );
}

/// Monitor mode accepts where enforce drops, in every per-device drop chain.
#[test]
fn monitor_mode_accepts_and_counts() {
    let enforce = compile(&example(), "edge-01").expect("edge");
    let text = EXAMPLE.replace("mode = \"enforce\"", "mode = \"monitor\"");
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    assert_eq!(p.mode, Mode::Monitor);
    let monitor = compile(&p, "edge-01").expect("edge");
    let verdicts = |plan: &Plan, v: &str| {
        diff::rule_lines(plan)
            .into_iter()
            .filter(|l| l.starts_with("rule drop_") && l.ends_with(&format!("[{{\"{v}\":null}}]")))
            .count()
    };
    // 4 devices + unknown
    assert_eq!(verdicts(&enforce, "drop"), 5);
    assert_eq!(verdicts(&enforce, "accept"), 0);
    assert_eq!(verdicts(&monitor, "accept"), 5);
    assert_eq!(verdicts(&monitor, "drop"), 0);
    // Quarantine still drops in monitor mode.
    assert!(
        crate::nft::render_json(&monitor)
            .contains(r#""right":"@quarantine4","op":"=="}},{"counter":null},{"drop":null}"#)
    );
}

/// The batch replaces the table: add, delete, add, before anything else.
#[test]
fn batch_replaces_table() {
    let json: serde_json::Value = serde_json::from_str(&crate::nft::render_json(
        &compile(&example(), "edge-01").expect("edge"),
    ))
    .expect("json");
    let cmds = json["nftables"].as_array().expect("array");
    let head: Vec<String> = cmds[..3].iter().map(|c| c.to_string()).collect();
    assert_eq!(
        head,
        [
            r#"{"add":{"table":{"family":"inet","name":"ward"}}}"#,
            r#"{"delete":{"table":{"family":"inet","name":"ward"}}}"#,
            r#"{"add":{"table":{"family":"inet","name":"ward"}}}"#,
        ]
    );
    // Every device has a counter; anti-spoofing binds each MAC to its address.
    for id in [
        "ct-scanner-2",
        "pump-icu-01",
        "pump-icu-02",
        "monitor-icu-3",
    ] {
        assert!(
            cmds.iter()
                .any(|c| c["add"]["counter"]["name"] == format!("dev_{id}")),
            "{id}"
        );
    }
}

/// Diff reports devices, flows and rules per gateway.
#[test]
fn diff_reports_changes() {
    let old = example();
    let text = EXAMPLE
        .replace("firmware = \"J.10.02\"", "firmware = \"J.10.03\"")
        .replace("port = 123\n", "port = 1234\n");
    let (new, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let d = diff::diff(&old, &new);
    let edge = d
        .gateways
        .iter()
        .find(|g| g.gateway == "edge-01")
        .expect("edge");
    assert_eq!(edge.status, "changed");
    assert_eq!(edge.devices.changed.len(), 1, "{:#?}", edge.devices);
    let device = &edge.devices.changed[0];
    assert_eq!(device.name, "monitor-icu-3");
    assert_eq!(
        device.fields,
        [diff::FieldChange {
            field: "inventory.firmware".into(),
            old: "J.10.02".into(),
            new: "J.10.03".into(),
        }]
    );
    assert!(edge.flows.is_empty());
    let ntp = &edge.exceptions.changed[0];
    assert_eq!(
        (ntp.fields[0].field.as_str(), &ntp.fields[0].new),
        ("port", &serde_json::json!(1234))
    );
    assert_eq!(edge.rules.added.len(), 1, "{:#?}", edge.rules);
    assert!(edge.rules.added[0].contains("1234"));
    let hub = d
        .gateways
        .iter()
        .find(|g| g.gateway == "hub-dc-01")
        .expect("hub");
    assert_eq!(hub.status, "unchanged");
    assert!(diff::diff(&old, &old).is_empty());
}

/// Asking for a gateway the policy lacks is an error with a suggestion.
#[test]
fn unknown_gateway_compile() {
    let e = compile(&example(), "edge-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "gateway \"edge-1\" is not defined in the policy (did you mean \"edge-01\"?)"
    );
}

/// A runtime quarantine marks the device, its tunnel flows and the ruleset,
/// exactly like the policy's quarantine list.
#[test]
fn runtime_quarantine_matches_policy_quarantine() {
    let edge = compile(&example(), "edge-01")
        .expect("edge")
        .with_quarantine(["ct-scanner-2"]);
    let text = EXAMPLE.replace("quarantine = []", "quarantine = [\"ct-scanner-2\"]");
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    assert_eq!(
        crate::nft::render_json(&edge),
        crate::nft::render_json(&compile(&p, "edge-01").expect("edge"))
    );
    let hub = compile(&example(), "hub-dc-01")
        .expect("hub")
        .with_quarantine(["ct-scanner-2"]);
    assert_eq!(
        hub.authorize_tunnel(
            "spiffe://st-mary.example/gateway/edge-01",
            "ct2-to-pacs",
            "ct-scanner-2"
        )
        .unwrap_err(),
        Denied::Quarantined
    );
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

fn window(days: &[u8], start: &str, end: &str, tz: &str) -> Window {
    let hm = |s: &str| {
        let (h, m) = s.split_once(':').expect("HH:MM");
        h.parse::<u16>().expect("h") * 60 + m.parse::<u16>().expect("m")
    };
    Window {
        days: days.to_vec(),
        start: hm(start),
        end: hm(end),
        tz: Some(tz.into()),
        warning: model::DEFAULT_WINDOW_WARNING,
    }
}

/// Overnight windows wrap to the next day; the end is exclusive.
#[test]
fn window_wraps_midnight() {
    // Tuesday 22:00 to Wednesday 02:00 UTC (2026-11-24 is a Tuesday).
    let w = window(&[1], "22:00", "02:00", "UTC");
    assert_eq!(
        w.open_until(ts("2026-11-24T23:00:00Z")),
        Some(ts("2026-11-25T02:00:00Z"))
    );
    assert!(w.contains(ts("2026-11-25T01:59:59Z")));
    assert!(!w.contains(ts("2026-11-25T02:00:00Z")));
    assert!(!w.contains(ts("2026-11-25T23:00:00Z")));
    assert!(!w.contains(ts("2026-11-24T01:00:00Z")));
}

/// Windows are in their zone's wall-clock time: Tuesday 02:00-04:00 in
/// Tokyo (UTC+9, no DST) is Monday 17:00-19:00 UTC.
#[test]
fn window_in_a_zone() {
    let w = window(&[1], "02:00", "04:00", "Asia/Tokyo");
    assert!(
        !w.contains(ts("2026-11-24T03:00:00Z")),
        "03:00 UTC is noon in Tokyo"
    );
    assert!(!w.contains(ts("2026-11-23T16:59:59Z")));
    assert_eq!(
        w.open_until(ts("2026-11-23T17:00:00Z")),
        Some(ts("2026-11-23T19:00:00Z"))
    );
    assert!(!w.contains(ts("2026-11-23T19:00:00Z")));
}

/// Across DST changes in Berlin: on 2026-03-29 the clock springs from 02:00
/// to 03:00 (01:00 UTC), on 2026-10-25 it falls from 03:00 back to 02:00
/// (01:00 UTC). A Sunday window 01:00-02:30 ends at the jump in spring (the
/// wall clock never shows 02:30), and 02:00-04:00 spans three real hours in
/// autumn, from the first 02:00.
#[test]
fn window_across_dst() {
    let spring = window(&[6], "01:00", "02:30", "Europe/Berlin");
    assert_eq!(
        spring.open_until(ts("2026-03-29T00:59:00Z")),
        Some(ts("2026-03-29T01:00:00Z")),
        "ends when the clock jumps past 02:30"
    );
    assert!(!spring.contains(ts("2026-03-29T01:00:00Z")));
    let spring_late = window(&[6], "02:30", "04:00", "Europe/Berlin");
    assert_eq!(
        spring_late.open_until(ts("2026-03-29T01:00:00Z")),
        Some(ts("2026-03-29T02:00:00Z")),
        "a start the clock skips opens at the jump; 04:00 CEST is 02:00 UTC"
    );
    assert!(!spring_late.contains(ts("2026-03-29T00:59:59Z")));
    let autumn = window(&[6], "02:00", "04:00", "Europe/Berlin");
    // First 02:00 is 02:00 CEST = 00:00 UTC; 04:00 CET = 03:00 UTC.
    assert!(!autumn.contains(ts("2026-10-24T23:59:59Z")));
    assert_eq!(
        autumn.open_until(ts("2026-10-25T00:00:00Z")),
        Some(ts("2026-10-25T03:00:00Z"))
    );
    assert!(
        autumn.contains(ts("2026-10-25T01:30:00Z")),
        "the second 02:30"
    );
    let autumn_end = window(&[6], "01:00", "02:30", "Europe/Berlin");
    assert_eq!(
        autumn_end.open_until(ts("2026-10-24T23:30:00Z")),
        Some(ts("2026-10-25T00:30:00Z")),
        "an end the clock shows twice is its first showing"
    );
    assert!(
        !autumn_end.contains(ts("2026-10-25T01:00:00Z")),
        "no reopening when the clock falls back into the window's hours"
    );
}

/// A window's zone is its own, else its gateway's, else the site's, else
/// UTC; an unknown zone is an error naming the key.
#[test]
fn window_zone_defaults() {
    let listen: SocketAddr = "192.0.2.10:24105".parse().expect("addr");
    let zone_of = |text: &str| {
        let (p, _) = load("p.toml", text, &ValidateOptions::default()).expect("valid");
        let edge = compile(&p, "edge-01").expect("edge");
        let rule = edge
            .access
            .iter()
            .find(|a| a.listen == listen)
            .expect("vendor rule");
        rule.window.as_ref().and_then(|w| w.tz.clone())
    };
    let utc = EXAMPLE.replacen("tz = \"Europe/Berlin\"\n", "", 1);
    assert_ne!(utc, EXAMPLE, "the example sets the site's zone");
    assert_eq!(zone_of(&utc).as_deref(), Some("UTC"));
    let site = EXAMPLE;
    assert_eq!(zone_of(site).as_deref(), Some("Europe/Berlin"));
    let gateway = site.replacen(
        "[gateways.edge-01]\n",
        "[gateways.edge-01]\ntz = \"Europe/London\"\n",
        1,
    );
    assert_eq!(zone_of(&gateway).as_deref(), Some("Europe/London"));
    let own = gateway.replacen("end = \"04:00\"", "end = \"04:00\", tz = \"Asia/Tokyo\"", 1);
    assert_eq!(zone_of(&own).as_deref(), Some("Asia/Tokyo"));
    let bad = EXAMPLE.replacen("end = \"04:00\"", "end = \"04:00\", tz = \"Asia/Tokio\"", 1);
    let e = one_error(&bad, "flows[3].window.tz");
    assert!(e.message.contains("IANA time zone"), "{e}");
}

/// The example with the edge routed: it holds the segments' routers and the
/// CT's flow loses `listen`.
fn routed_example() -> String {
    EXAMPLE
        .replace(
            "lan_address = \"192.0.2.10\"\n",
            "lan_address = \"192.0.2.10\"\ninsertion = \"routed\"\nrouters = [\"198.51.100.1/28\", \"198.51.100.17/28\", \"198.51.100.33/28\", \"198.51.100.49/28\"]\n",
        )
        .replace("listen = \"198.51.100.1:104\"     # the CT's configured PACS address\n", "")
}

/// A routed gateway intercepts a flow without `listen` at the service's
/// address (or the flow's `device_target`): no listener is bound for it,
/// the route is keyed by the original destination, and the transparent
/// listener is on loopback; flows that keep `listen` stay explicit.
#[test]
fn routed_insertion_compiles_transparent_routes() {
    let text = routed_example();
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let ct: IpAddr = "198.51.100.2".parse().expect("ip");
    let pacs: SocketAddr = "203.0.113.5:104".parse().expect("addr");
    let f = edge
        .route(ct, pacs)
        .expect("the CT's own PACS address routes");
    assert_eq!(f.name, "ct2-to-pacs");
    assert!(edge.routes.iter().any(|r| r.dst == pacs && r.transparent));
    assert!(!edge.listeners.iter().any(|l| l.addr == pacs));
    assert_eq!(
        edge.transparent_listener,
        Some("127.0.0.1:15001".parse().expect("addr"))
    );
    assert!(
        edge.routes
            .iter()
            .any(|r| r.flow == "pump1-to-hl7" && !r.transparent)
    );
    let nft = crate::nft::render_json(&edge);
    assert!(nft.contains("\"tproxy\""), "{nft}");
    // A device_target: the device's own view of its PACS.
    let own = text.replace(
        "to = \"pacs\"\n",
        "to = \"pacs\"\ndevice_target = \"10.1.2.3:4104\"\n",
    );
    let (p, _) = load("p.toml", &own, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    assert!(
        edge.route(ct, "10.1.2.3:4104".parse().expect("addr"))
            .is_ok()
    );
    assert!(edge.route(ct, pacs).is_err());
}

/// Routed insertion is validated with spans: a routed gateway names its
/// routers and every device sits behind one; routers on an explicit
/// gateway, and a flow without `listen` on an explicit gateway, are errors
/// that say what to do.
#[test]
fn routed_insertion_validation() {
    let no_routers = routed_example().replace(
        "routers = [\"198.51.100.1/28\", \"198.51.100.17/28\", \"198.51.100.33/28\", \"198.51.100.49/28\"]\n",
        "",
    );
    let e = one_error(&no_routers, "gateways.edge-01.routers");
    assert!(e.message.contains("router addresses"), "{e}");
    let short = routed_example().replace(", \"198.51.100.49/28\"]", "]");
    let e = one_error(&short, "devices.monitor-icu-3.ip");
    assert!(e.message.contains("no segment"), "{e}");
    let explicit = EXAMPLE.replace(
        "lan_address = \"192.0.2.10\"\n",
        "lan_address = \"192.0.2.10\"\nrouters = [\"198.51.100.1/28\"]\n",
    );
    one_error(&explicit, "gateways.edge-01.routers");
    let no_listen = EXAMPLE.replace(
        "listen = \"198.51.100.1:104\"     # the CT's configured PACS address\n",
        "",
    );
    let e = one_error(&no_listen, "flows[0].listen");
    assert!(
        e.help
            .as_deref()
            .is_some_and(|h| h.contains("insertion = \"routed\"")),
        "{e:?}"
    );
}

/// Learning data is judged with the plan's own decisions: a flow's
/// listener, an exception (protocol and port included), else denied; what
/// reaches a device directly is denied; a quarantined device's flows too.
#[test]
fn judge_observed_flows() {
    use crate::observe::{Direction, FlowKey, Judgement, TCP, UDP};
    let edge = compile(&example(), "edge-01").expect("edge");
    let key = |src: &str, dst: &str, proto, port| FlowKey {
        src: src.parse().expect("ip"),
        dst: dst.parse().expect("ip"),
        proto,
        port,
    };
    let ct = "198.51.100.2";
    for (k, want) in [
        (
            key(ct, "198.51.100.1", TCP, 104),
            Judgement::Flow("ct2-to-pacs".into()),
        ),
        (
            key(ct, "192.0.2.123", UDP, 123),
            Judgement::Exception("ntp".into()),
        ),
        (key(ct, "192.0.2.123", TCP, 123), Judgement::Denied),
        (key(ct, "192.0.2.123", UDP, 124), Judgement::Denied),
        (key(ct, "192.0.2.77", TCP, 8080), Judgement::Denied),
        (key(ct, "198.51.100.17", TCP, 2575), Judgement::Denied),
        (key("192.0.2.5", ct, TCP, 22), Judgement::Denied),
    ] {
        assert_eq!(edge.judge(&k), want, "{k}");
    }
    let (dev, dir) = edge
        .device_of(&key("192.0.2.5", ct, TCP, 22))
        .expect("a device's flow");
    assert_eq!((dev.id.as_str(), dir), ("ct-scanner-2", Direction::In));
    let q = edge.with_quarantine(["ct-scanner-2"]);
    assert_eq!(
        q.judge(&key(ct, "198.51.100.1", TCP, 104)),
        Judgement::Quarantined
    );
}

/// HL7 guards: compiled onto the device's flow; a message type that is not
/// one, an HL7 guard on a DICOM flow and a DICOM guard on an HL7 flow are
/// errors at their place; a client's flow carries its guard to the access
/// rule.
#[test]
fn hl7_guards() {
    // The example's pump flows carry HL7 guards: pump 1's is replaced here.
    let pump = "guard = { message_types = [\"ORU^R01\"] }";
    assert_eq!(EXAMPLE.matches(pump).count(), 2);
    let guarded = |line: &str, guard: &str| {
        assert!(EXAMPLE.contains(line), "{line}");
        EXAMPLE.replacen(line, &format!("{line}\nguard = {guard}"), 1)
    };
    let pump_guard = |guard: &str| EXAMPLE.replacen(pump, &format!("guard = {guard}"), 1);
    let text = pump_guard("{ message_types = [\"ORU^R01\"], sending_applications = [\"LVP200\"] }");
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let Some(crate::model::Guard::Hl7(g)) = edge.outbound["pump1-to-hl7"].guard.clone() else {
        panic!("guard not compiled");
    };
    assert_eq!(g.refuses("ORU^R01", "LVP200", "ICU"), None);
    assert_eq!(
        g.refuses("ADT^A08", "LVP200", "ICU").as_deref(),
        Some("HL7 message type ADT^A08 not allowed")
    );
    assert!(g.refuses("ORU^R01", "OTHER", "ICU").is_some());
    assert!(edge.outbound["pump2-to-hl7"].guard.is_some());
    assert!(matches!(
        edge.outbound["ct2-to-pacs"].guard,
        Some(crate::model::Guard::Dicom(_))
    ));

    let bad = pump_guard("{ message_types = [\"oru-r01\"] }");
    let e = one_error(&bad, "flows[1].guard.message_types");
    assert_eq!(e.line, line_of(&bad, "oru-r01"));
    assert!(
        e.help.as_deref().is_some_and(|h| h.contains("ORU^R01")),
        "{e:?}"
    );
    let on_dicom = EXAMPLE.replacen(
        EXAMPLE_CT_GUARD,
        "guard = { message_types = [\"ORU^R01\"] }\n",
        1,
    );
    let e = one_error(&on_dicom, "flows[0].guard");
    assert!(e.message.contains("speaks dicom"), "{e:?}");
    let dicom_on_hl7 = pump_guard("{ calling_ae_titles = [\"CT2\"] }");
    let e = one_error(&dicom_on_hl7, "flows[1].guard");
    assert!(e.message.contains("a dicom guard"), "{e:?}");
    // A client's flow to a device port: its guard's keys say the protocol,
    // and the access rule carries it.
    let inbound = guarded(
        "listen = \"192.0.2.10:24105\"",
        "{ calling_ae_titles = [\"VENDOR\"], commands = [\"C-ECHO\"] }",
    );
    let (p, _) = load("p.toml", &inbound, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    assert!(matches!(
        edge.access[0].guard,
        Some(crate::model::Guard::Dicom(_))
    ));
}

/// DICOM guards: AE titles, SOP classes by name, keyword or UID, DIMSE
/// commands; an unknown SOP class (with a suggestion), an unknown command
/// and an AE title too long are errors at their place.
#[test]
fn dicom_guards() {
    use crate::model::{AeRefusal, Guard, sop_class_name, sop_class_uid};
    assert_eq!(
        sop_class_uid("CT Image Storage"),
        Some("1.2.840.10008.5.1.4.1.1.2")
    );
    assert_eq!(
        sop_class_uid("CTImageStorage"),
        Some("1.2.840.10008.5.1.4.1.1.2")
    );
    assert_eq!(
        sop_class_uid("Verification SOP Class"),
        Some("1.2.840.10008.1.1")
    );
    assert_eq!(
        sop_class_uid("Study Root Query/Retrieve Information Model - FIND"),
        Some("1.2.840.10008.5.1.4.1.2.2.1")
    );
    assert_eq!(sop_class_uid("CT Image Store"), None);
    assert_eq!(
        sop_class_name("1.2.840.10008.5.1.4.1.1.4"),
        Some("MR Image Storage")
    );
    let flow = "listen = \"198.51.100.1:104\"     # the CT's configured PACS address";
    assert!(EXAMPLE.contains(flow));
    let with = |guard: &str| {
        let guarded = EXAMPLE.replacen(flow, &format!("{flow}\nguard = {guard}"), 1);
        // The example's own DICOM guard gives way to the one under test.
        guarded.replacen(EXAMPLE_CT_GUARD, "", 1)
    };
    let text = with(
        "{ calling_ae_titles = [\"CT2\"], sop_classes = [\"CT Image Storage\", \"1.2.840.10008.1.1\", \"1.2.3.4.5\"], commands = [\"C-STORE\", \"c-echo\"] }",
    );
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let Some(Guard::Dicom(g)) = edge.outbound["ct2-to-pacs"].guard.clone() else {
        panic!("guard not compiled");
    };
    assert_eq!(
        g.sop_classes,
        [
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.1",
            "1.2.3.4.5"
        ]
    );
    assert_eq!(g.commands, [0x0001, 0x0030]);
    assert_eq!(g.refuses_association("CT2", "ANY"), None);
    assert_eq!(
        g.refuses_association("CT9", "PACS").map(|r| r.0),
        Some(AeRefusal::Calling)
    );
    assert!(g.refuses_sop_class("1.2.840.10008.5.1.4.1.1.2").is_none());
    let find = g
        .refuses_sop_class("1.2.840.10008.5.1.4.1.2.2.1")
        .expect("refused");
    assert!(
        find.contains("Study Root Query/Retrieve Information Model - FIND"),
        "{find}"
    );
    assert_eq!(
        g.refuses_command(0x0020).as_deref(),
        Some("DICOM command C-FIND not allowed")
    );
    assert_eq!(g.refuses_command(0x8020), None, "responses pass");
    assert_eq!(g.refuses_command(0x0001), None);

    let typo = with("{ sop_classes = [\"CT Image Storag\"] }");
    let e = one_error(&typo, "flows[0].guard.sop_classes");
    assert_eq!(e.line, line_of(&typo, "CT Image Storag\""));
    assert!(
        e.help
            .as_deref()
            .is_some_and(|h| h.contains("\"CT Image Storage\"")),
        "{e:?}"
    );
    let e = one_error(
        &with("{ commands = [\"C-STOR\"] }"),
        "flows[0].guard.commands",
    );
    assert!(
        e.help.as_deref().is_some_and(|h| h.contains("C-STORE")),
        "{e:?}"
    );
    one_error(
        &with("{ called_ae_titles = [\"A-VERY-LONG-AE-TITLE\"] }"),
        "flows[0].guard.called_ae_titles",
    );
    one_error(
        &with("{ commands = [\"C-STORE\"], functions = [3] }"),
        "flows[0].guard",
    );
}

/// Modbus guards: names or codes, unit ids, ranges per function; refusals
/// carry the exception to answer; a mixed guard, an empty guard, an
/// unknown function (with a suggestion) and a backwards range are errors.
#[test]
fn modbus_guards() {
    use crate::model::{
        Guard, MODBUS_GATEWAY_PATH, MODBUS_ILLEGAL_ADDRESS, MODBUS_ILLEGAL_FUNCTION,
    };
    let with = |guard: &str| {
        format!(
            "{EXAMPLE}
[services.plc]
address = \"203.0.113.7:502\"
via = \"hub-dc-01\"
protocol = \"modbus\"

[[flows]]
name = \"monitor-to-plc\"
from = \"monitor-icu-3\"
to = \"plc\"
listen = \"198.51.100.49:502\"
guard = {guard}
"
        )
    };
    let text = with(
        "{ functions = [\"read-holding-registers\", 23], unit_ids = [1], addresses = [{ function = \"read-holding-registers\", from = 0, to = 99 }] }",
    );
    let (p, _) = load("p.toml", &text, &ValidateOptions::default()).expect("valid");
    let edge = compile(&p, "edge-01").expect("edge");
    let Some(Guard::Modbus(g)) = edge.outbound["monitor-to-plc"].guard.clone() else {
        panic!("guard not compiled");
    };
    assert_eq!(g.functions, [3, 23]);
    assert_eq!(g.refuses(1, 3, &[(0, 100)]), None);
    assert_eq!(
        g.refuses(1, 6, &[(5, 1)]).map(|r| r.0),
        Some(MODBUS_ILLEGAL_FUNCTION)
    );
    assert_eq!(
        g.refuses(2, 3, &[(5, 1)]).map(|r| r.0),
        Some(MODBUS_GATEWAY_PATH)
    );
    let past = g.refuses(1, 3, &[(99, 2)]).expect("past the range");
    assert_eq!(
        past,
        (
            MODBUS_ILLEGAL_ADDRESS,
            "Modbus read-holding-registers of addresses 99-100 not allowed".into()
        )
    );
    // Function 23 has no range: any address.
    assert_eq!(g.refuses(1, 23, &[(500, 4), (600, 1)]), None);

    let key = "flows[4].guard";
    let mixed = with("{ functions = [3], message_types = [\"ORU^R01\"] }");
    one_error(&mixed, key);
    one_error(&with("{}"), key);
    let typo = with("{ functions = [\"read-holding-register\"] }");
    let e = one_error(&typo, "flows[4].guard.functions[0]");
    assert!(
        e.help
            .as_deref()
            .is_some_and(|h| h.contains("read-holding-registers")),
        "{e:?}"
    );
    let backwards = with("{ addresses = [{ function = 3, from = 10, to = 5 }] }");
    one_error(&backwards, "flows[4].guard.addresses[0].to");
    let on_hl7 = EXAMPLE.replacen(
        "guard = { message_types = [\"ORU^R01\"] }",
        "guard = { functions = [3] }",
        1,
    );
    let e = one_error(&on_hl7, "flows[1].guard");
    assert!(
        e.message.contains("a modbus guard") && e.message.contains("speaks hl7"),
        "{e:?}"
    );
}
