//! Protocol guards on the example hospital, with real peers.
//!
//! HL7: the pumps' flows
//! allow `ORU^R01` only (pump 1 over a TCP tunnel, pump 2 over QUIC).
//! `mllp_send` from the unchanged pump: an `ORU^R01` is ACKed by the HL7
//! engine; an `ADT^A08` gets `MSA|AR` from Ward and never reaches the engine
//! (its log of received message types says so); the refusal is audited
//! with the message type only and counted. In monitor mode the same ADT
//! passes and is audited as one the guard would refuse.
//!
//! Modbus: the patient monitor reads a PLC (pymodbus server) through a flow
//! that allows reading holding registers 0-99 of unit 1: a pymodbus client
//! reads, a write gets exception 01 (illegal function) and leaves the
//! register unchanged, a read past the range gets exception 02.
//!
//! Needs root; skips elsewhere, fails under CI=true.

use std::time::Duration;

use ward_tests::topology::{Bg, Hospital, MLLP_SERVER, cmd_in, wait_listen};

fn message(kind: &str, control: &str) -> String {
    [
        format!("MSH|^~\\&|LVP200|ICU|HIS|ST-MARY|20261205120000||{kind}|{control}|P|2.5"),
        "PID|1||4711^^^ST-MARY^MR||DOE^JANE||19600101|F".to_owned(),
        "OBX|1|NM|rate^Infusion rate||12|mL/h".to_owned(),
    ]
    .join("\r")
}

/// `mllp_send` from `ns` to `host:2575` with one message; its stdout (the ACK).
fn send(h: &Hospital, ns: &ward_tests::netns::Netns, host: &str, msg: &str, name: &str) -> String {
    let file = h.dir.join(&format!("{name}.hl7"));
    std::fs::write(&file, format!("\x0b{msg}\x1c\r")).expect("write message");
    let out = cmd_in(ns, "mllp_send")
        .args(["--port", "2575", "--file"])
        .arg(&file)
        .arg(host)
        .output()
        .expect("mllp_send");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit_reasons(h: &Hospital, action: &str) -> Vec<String> {
    std::fs::read_to_string(h.dir.join("state-edge-01/audit.jsonl"))
        .expect("audit trail")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "flow" && r["action"] == action)
        .map(|r| {
            format!(
                "{} {}",
                r["flow"].as_str().unwrap_or_default(),
                r["reason"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn hl7_guard_refuses_the_protocol_way() {
    let Ok(h) = Hospital::build("gd") else {
        return;
    };
    // The example's pump flows allow ORU^R01 only; pump 2's goes over QUIC here.
    h.edit_policy(|p| {
        p.replace(
            "listen = \"198.51.100.33:2575\"\ntransport = \"tcp\"\n",
            "listen = \"198.51.100.33:2575\"\ntransport = \"quic\"\n",
        )
    });
    let policy = std::fs::read_to_string(&h.policy).expect("policy");
    assert_eq!(policy.matches("guard = ").count(), 2, "{policy}");
    let log = h.dir.join("engine.log");
    let script = h.dir.join("engine.py");
    std::fs::write(&script, MLLP_SERVER).expect("script");
    let _engine = Bg(cmd_in(&h.srv, "python3")
        .arg(&script)
        .args(["203.0.113.6", "2575"])
        .arg(&log)
        .spawn()
        .expect("python3"));
    wait_listen(&h.srv, 2575);
    let _hub = h.start_hub();
    let mut edge = h.start_edge("");

    for (ns, listen, tag) in [
        (&h.pump1, "198.51.100.17", "tcp"),
        (&h.pump2, "198.51.100.33", "quic"),
    ] {
        let ok = send(
            &h,
            ns,
            listen,
            &message("ORU^R01", &format!("ORU-{tag}")),
            "oru",
        );
        assert!(
            ok.contains(&format!("MSA|AA|ORU-{tag}")),
            "{tag}: ORU not ACKed by the engine: {ok:?}\n{}",
            edge.log()
        );
        let refused = send(
            &h,
            ns,
            listen,
            &message("ADT^A08", &format!("ADT-{tag}")),
            "adt",
        );
        assert!(
            refused.contains(&format!("MSA|AR|ADT-{tag}")) && refused.contains("|WARD|"),
            "{tag}: ADT not refused by Ward: {refused:?}"
        );
        assert!(refused.contains("ADT\\S\\A08 not allowed"), "{refused:?}");
        assert!(
            !refused.contains("DOE"),
            "patient data in the refusal: {refused:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = std::fs::read_to_string(&log).expect("engine log");
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["ORU^R01", "ORU^R01"],
        "the engine saw: {seen}"
    );
    let refused = audit_reasons(&h, "guard-refused");
    assert_eq!(
        refused,
        [
            "pump1-to-hl7 HL7 message type ADT^A08 not allowed",
            "pump2-to-hl7 HL7 message type ADT^A08 not allowed"
        ]
    );
    let trail = std::fs::read_to_string(h.dir.join("state-edge-01/audit.jsonl")).expect("trail");
    assert!(
        !trail.contains("DOE") && !trail.contains("4711"),
        "patient data in the audit trail"
    );

    // Monitor mode: the ADT passes, and is audited as one the guard would refuse.
    h.edit_policy(|p| p.replace("mode = \"enforce\"", "mode = \"monitor\""));
    edge.signal("HUP");
    edge.wait_log("reload applied", Duration::from_secs(10));
    let passed = send(
        &h,
        &h.pump1,
        "198.51.100.17",
        &message("ADT^A08", "ADT-MON"),
        "adt-mon",
    );
    assert!(
        passed.contains("MSA|AA|ADT-MON"),
        "monitor mode refused: {passed:?}"
    );
    assert_eq!(
        audit_reasons(&h, "guard-would-refuse"),
        ["pump1-to-hl7 HL7 message type ADT^A08 not allowed (monitor mode: passed)"]
    );
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("ADT^A08")
    );
}

/// A Modbus/TCP server (pymodbus) with holding registers; argv: address, port.
const MODBUS_SERVER: &str = r#"
import asyncio, sys
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusDeviceContext, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer
hr = ModbusSequentialDataBlock(1, [100 + i for i in range(300)])
ctx = ModbusServerContext(devices=ModbusDeviceContext(hr=hr), single=True)
asyncio.run(StartAsyncTcpServer(context=ctx, address=(sys.argv[1], int(sys.argv[2]))))
"#;

/// A pymodbus client: a read, a write, a read past the allowed range, the
/// read again; prints what each got as JSON. argv: address, port.
const MODBUS_CLIENT: &str = r#"
import json, sys
from pymodbus.client import ModbusTcpClient
c = ModbusTcpClient(sys.argv[1], port=int(sys.argv[2]), timeout=3, retries=0)
assert c.connect(), "no connection"
def res(r):
    return {"exception": r.exception_code} if r.isError() else {"registers": getattr(r, "registers", [])}
out = {
    "read": res(c.read_holding_registers(10, count=4, device_id=1)),
    "write": res(c.write_register(10, 7, device_id=1)),
    "past": res(c.read_holding_registers(150, count=4, device_id=1)),
    "again": res(c.read_holding_registers(10, count=4, device_id=1)),
}
print(json.dumps(out))
"#;

#[test]
fn modbus_guard_answers_exceptions() {
    let Ok(h) = Hospital::build("gm") else {
        return;
    };
    h.with_plc(&[("monitor-to-plc", 502, true)]);
    let script = h.dir.join("plc.py");
    std::fs::write(&script, MODBUS_SERVER).expect("script");
    let _plc = Bg(cmd_in(&h.srv, "python3")
        .arg(&script)
        .args(["203.0.113.7", "502"])
        .spawn()
        .expect("python3"));
    wait_listen(&h.srv, 502);
    let _hub = h.start_hub();
    let _edge = h.start_edge("");
    let client = h.dir.join("client.py");
    std::fs::write(&client, MODBUS_CLIENT).expect("script");
    let out = cmd_in(&h.monitor, "python3")
        .arg(&client)
        .args(["198.51.100.49", "502"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pymodbus client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let read = got["read"]["registers"]
        .as_array()
        .expect("the read worked");
    assert_eq!(read.len(), 4, "{got}");
    assert_eq!(got["write"]["exception"], 1, "write not refused: {got}");
    assert_eq!(
        got["past"]["exception"], 2,
        "read past the range not refused: {got}"
    );
    assert_eq!(
        &got["again"]["registers"], &got["read"]["registers"],
        "the register changed: {got}"
    );
    let refused = audit_reasons(&h, "guard-refused");
    assert_eq!(
        refused,
        [
            "monitor-to-plc Modbus function write-single-register not allowed",
            "monitor-to-plc Modbus read-holding-registers of addresses 150-153 not allowed"
        ]
    );
}
