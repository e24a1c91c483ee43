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
//! DICOM: the CT's flow to the PACS (a dcmtk `dcmqrscp`, which stores and
//! answers queries and retrievals) allows calling AE `CT-SCANNER-2`, called
//! AE `PACS`, CT Image Storage and Verification, C-STORE and C-ECHO (the
//! example hospital's guard). Over a QUIC and then a TCP tunnel: `storescu`
//! stores a CT image; `findscu` and `movescu` get no presentation context
//! and the PACS sees no association from them; a wrong calling AE title gets
//! an A-ASSOCIATE-RJ that `storescu` reports; a secondary capture image's
//! context is rejected while the CT image on the same association is
//! stored. A second flow allows any SOP class but only C-STORE and C-ECHO:
//! `findscu`'s association reaches the PACS and its C-FIND does not (Ward
//! aborts the association). The same `findscu` straight to the PACS shows
//! that the PACS would log one.
//!
//! Needs root; skips elsewhere, fails under CI=true.

use std::process::Output;
use std::time::Duration;

use ward_tests::harness::TempDir;
use ward_tests::peers::{dcmtk, make_dicom};
use ward_tests::topology::{Bg, Hospital, MLLP_SERVER, cmd_in, storescu_in, wait_listen};

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
    ward_tests::topology::mllp_send_message(h, ns, host, name, msg)
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
    assert_eq!(
        policy.matches("guard = { message_types").count(),
        2,
        "{policy}"
    );
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
        // A message without its end block never reaches the engine.
        let cut = format!("\x0b{}", message("ORU^R01", "CUT"));
        assert_eq!(
            raw_exchange(ns, listen, 2575, cut.as_bytes()),
            "closed with 0 bytes",
            "{tag}"
        );
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
    // The same guard over a QUIC tunnel, on port 504.
    let mut policy = std::fs::read_to_string(&h.policy).expect("policy");
    policy.push_str(&format!(
        "\n[[flows]]\nname = \"monitor-to-plc-quic\"\nfrom = \"monitor-icu-3\"\nto = \"plc\"\n\
         listen = \"198.51.100.49:504\"\ntransport = \"quic\"\nguard = {}\n",
        ward_tests::topology::PLC_GUARD
    ));
    std::fs::write(&h.policy, policy).expect("policy");
    let script = h.dir.join("plc.py");
    std::fs::write(&script, MODBUS_SERVER).expect("script");
    let _plc = Bg(cmd_in(&h.srv, "python3")
        .arg(&script)
        .args(["203.0.113.7", "502"])
        .spawn()
        .expect("python3"));
    wait_listen(&h.srv, 502);
    let _hub = h.start_hub();
    let edge = h.start_edge("");
    let client = h.dir.join("client.py");
    std::fs::write(&client, MODBUS_CLIENT).expect("script");
    for (port, flow) in [(502, "monitor-to-plc"), (504, "monitor-to-plc-quic")] {
        // An MBAP header whose length does not fit Modbus (and a second
        // one that lies about its body): the connection ends, nothing
        // reaches the PLC, and the next client is served.
        let malformed = raw_exchange(
            &h.monitor,
            "198.51.100.49",
            port,
            &[0, 1, 0, 0, 0x01, 0x00, 1, 3, 0, 10, 0, 4],
        );
        assert_eq!(malformed, "closed with 0 bytes", "{flow}");
        let out = cmd_in(&h.monitor, "python3")
            .arg(&client)
            .args(["198.51.100.49", &port.to_string()])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{flow}: pymodbus client: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            edge.log()
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let read = got["read"]["registers"]
            .as_array()
            .expect("the read worked");
        assert_eq!(read.len(), 4, "{flow}: {got}");
        assert_eq!(
            got["write"]["exception"], 1,
            "{flow}: write not refused: {got}"
        );
        assert_eq!(
            got["past"]["exception"], 2,
            "{flow}: read past the range not refused: {got}"
        );
        assert_eq!(
            &got["again"]["registers"], &got["read"]["registers"],
            "{flow}: the register changed: {got}"
        );
    }
    let refused = audit_reasons(&h, "guard-refused");
    let each = |flow: &str| {
        [
            format!("{flow} stream refused: MBAP length 256 outside 2..=254"),
            format!("{flow} Modbus function write-single-register not allowed"),
            format!("{flow} Modbus read-holding-registers of addresses 150-153 not allowed"),
        ]
    };
    assert_eq!(
        refused,
        [each("monitor-to-plc"), each("monitor-to-plc-quic")].concat()
    );
}

/// Send `bytes` from `ns` to `host:port`, half-close, and say what came
/// back before the connection ended ("closed with N bytes: HEX").
fn raw_exchange(ns: &ward_tests::netns::Netns, host: &str, port: u16, bytes: &[u8]) -> String {
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(bytes.fromhex(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
print(f"closed with {len(got)} bytes" + (": " + got.hex() if got else ""))
"#;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let out = cmd_in(ns, "python3")
        .args(["-c", script, host, &port.to_string(), &hex])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "raw exchange: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A dcmtk `dcmqrscp` PACS (AE `PACS`) in `srv` on `port`, logging each
/// association and DIMSE message to `log`. It forks a child per
/// association, which ends with it (dcmtk 3.6.7's single-process mode
/// crashes after the first association).
fn pacs(h: &Hospital, port: u16, log: &std::path::Path) -> Bg {
    let db = h.dir.join(&format!("pacs-{port}"));
    std::fs::create_dir_all(&db).expect("pacs dir");
    let cfg = h.dir.join(&format!("pacs-{port}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
             HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nPACS {} RW (200, 1024mb) ANY\nAETable END\n",
            db.display()
        ),
    )
    .expect("pacs config");
    let file = std::fs::File::create(log).expect("pacs log");
    let child = cmd_in(&h.srv, dcmtk("dcmqrscp"))
        .args(["-v", "--disable-host-lookup", "-c"])
        .arg(&cfg)
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("dcmqrscp");
    wait_listen(&h.srv, port);
    Bg(child)
}

/// A dcmtk query tool (`findscu` or `movescu`) from the CT to `host:port`,
/// study root, with a patient name among the keys (which must appear
/// nowhere in Ward's records).
fn query(h: &Hospital, tool: &str, host: &str, port: u16) -> Output {
    let mut c = cmd_in(&h.ct, dcmtk(tool));
    c.args([
        "-v",
        "-S",
        "-aec",
        "PACS",
        "-aet",
        "CT-SCANNER-2",
        "-to",
        "5",
    ]);
    c.args(["-ta", "10", "-td", "10"]);
    if tool == "movescu" {
        c.args(["-aem", "CT-SCANNER-2", "-k", "StudyInstanceUID=1.2.3"]);
    } else {
        c.args(["-k", "StudyInstanceUID"]);
    }
    c.args([
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=DOE^JANE",
    ])
    .arg(host)
    .arg(port.to_string())
    .output()
    .expect("dcmtk query tool")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn count(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[test]
fn dicom_guard_refuses_the_protocol_way() {
    let Ok(h) = Hospital::build("gdc") else {
        return;
    };
    let data = TempDir::new("gdc-data");
    let ct = make_dicom(&data, 64);
    // A secondary capture image (a new instance), which the guard refuses.
    let sc = data.join("sc.dcm");
    std::fs::copy(&ct, &sc).expect("copy");
    let out = std::process::Command::new(dcmtk("dcmodify"))
        .args(["-nb", "-gin", "-i", "(0008,0016)=1.2.840.10008.5.1.4.1.1.7"])
        .arg(&sc)
        .output()
        .expect("dcmodify");
    assert!(out.status.success(), "{}", text(&out));

    let log = h.dir.join("pacs.log");
    let query_log = h.dir.join("pacs-query.log");
    let _pacs = pacs(&h, 104, &log);
    let _pacs_query = pacs(&h, 11112, &query_log);
    // The direct query (inside the server segment) shows what the PACS
    // logs when a C-FIND arrives.
    let direct = cmd_in(&h.srv, dcmtk("findscu"))
        .args(["-S", "-aec", "PACS", "-k", "QueryRetrieveLevel=STUDY"])
        .args(["-k", "StudyInstanceUID", "203.0.113.5", "11112"])
        .output()
        .expect("findscu");
    assert!(direct.status.success(), "{}", text(&direct));
    assert_eq!(count(&query_log, "C-FIND RQ"), 1, "the PACS logs a C-FIND");

    for transport in ["quic", "tcp"] {
        h.edit_policy(|p| {
            let p = p.replace(
                "transport = \"quic\"\nidle_timeout = \"10m\"",
                &format!("transport = \"{transport}\"\nidle_timeout = \"10m\""),
            );
            format!(
                "{p}\n[services.pacs-query]\naddress = \"203.0.113.5:11112\"\nvia = \"hub-dc-01\"\nprotocol = \"dicom\"\n\n\
                 [[flows]]\nname = \"ct2-to-pacs-query\"\nfrom = \"ct-scanner-2\"\nto = \"pacs-query\"\n\
                 listen = \"198.51.100.1:11112\"\ntransport = \"{transport}\"\n\
                 guard = {{ commands = [\"C-STORE\", \"C-ECHO\"] }}\n"
            )
        });
        let _hub = h.start_hub();
        let edge = h.start_edge("");
        let (assoc0, store0) = (
            count(&log, "CT-SCANNER-2 -> PACS)"),
            count(&log, "C-STORE RQ"),
        );

        // Malformed streams: a P-DATA-TF before any association, a PDU
        // longer than its bound, a request cut off. The first two get an
        // A-ABORT from Ward (provider: unexpected PDU; invalid PDU
        // parameter); none reaches the PACS; the store after them works.
        let pdata_first = [4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 1, 3, 0, 0];
        assert_eq!(
            raw_exchange(&h.ct, "198.51.100.1", 104, &pdata_first),
            "closed with 10 bytes: 07000000000400000202",
            "{transport}"
        );
        assert_eq!(
            raw_exchange(
                &h.ct,
                "198.51.100.1",
                104,
                &[1, 0, 0x7f, 0xff, 0xff, 0xff, 0, 1]
            ),
            "closed with 10 bytes: 07000000000400000206",
            "{transport}"
        );
        assert_eq!(
            raw_exchange(
                &h.ct,
                "198.51.100.1",
                104,
                &[1, 0, 0, 0, 0, 200, 0, 1, 0, 0]
            ),
            "closed with 0 bytes",
            "{transport}"
        );
        let stored = storescu_in(&h.ct, "198.51.100.1", 104, &ct, &[]);
        assert!(
            stored.status.success(),
            "{transport}: storescu: {}\n{}",
            text(&stored),
            edge.log()
        );
        assert_eq!(count(&log, "C-STORE RQ"), store0 + 1, "{transport}");

        for tool in ["findscu", "movescu"] {
            let q = query(&h, tool, "198.51.100.1", 104);
            assert!(!q.status.success(), "{transport}: {tool} got through");
            assert!(
                text(&q).contains("No Acceptable Presentation Contexts"),
                "{transport}: {tool}: {}",
                text(&q)
            );
        }
        // Ward answered them itself: the PACS saw a connection open and
        // close, never an A-ASSOCIATE-RQ.
        assert_eq!(
            count(&log, "CT-SCANNER-2 -> PACS)"),
            assoc0 + 1,
            "{transport}: the PACS saw more than the store: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );

        let intruder = cmd_in(&h.ct, dcmtk("storescu"))
            .args(["-aec", "PACS", "-aet", "INTRUDER", "-to", "5", "-ta", "10"])
            .arg("198.51.100.1")
            .arg("104")
            .arg(&ct)
            .output()
            .expect("storescu");
        assert!(!intruder.status.success());
        let said = text(&intruder);
        assert!(
            said.contains("Association Rejected")
                && said.contains("Calling AE Title Not Recognized"),
            "{transport}: {said}"
        );
        assert_eq!(count(&log, "CT-SCANNER-2 -> PACS)"), assoc0 + 1);

        // Both images on one association, proposing their own classes only.
        let both = cmd_in(&h.ct, dcmtk("storescu"))
            .args([
                "-v",
                "-R",
                "-aec",
                "PACS",
                "-aet",
                "CT-SCANNER-2",
                "-to",
                "5",
            ])
            .args(["198.51.100.1", "104"])
            .arg(&ct)
            .arg(&sc)
            .output()
            .expect("storescu");
        let said = text(&both);
        assert!(
            said.contains("No presentation context for: (SC)"),
            "{transport}: {said}"
        );
        assert_eq!(
            count(&log, "C-STORE RQ"),
            store0 + 2,
            "{transport}: the CT image on the same association: {said}"
        );
        assert_eq!(count(&log, "SecondaryCaptureImageStorage"), 0);

        let assoc_q = count(&query_log, "CT-SCANNER-2 -> PACS)");
        let q = query(&h, "findscu", "198.51.100.1", 11112);
        // findscu exits 0 after a failed C-FIND; it reports the abort.
        assert!(
            text(&q).contains("Peer Aborted Association"),
            "{transport}: C-FIND got through: {}\n{}",
            text(&q),
            edge.log()
        );
        assert_eq!(
            count(&query_log, "CT-SCANNER-2 -> PACS)"),
            assoc_q + 1,
            "{transport}: the association reached the PACS"
        );
        assert_eq!(
            count(&query_log, "C-FIND RQ"),
            1,
            "{transport}: the C-FIND reached the PACS"
        );
    }
    let refused = audit_reasons(&h, "guard-refused");
    let kinds: Vec<&str> = refused
        .iter()
        .map(|r| {
            if r.contains("calling AE title \"INTRUDER\" not allowed: association rejected") {
                "calling AE"
            } else if r.contains("C-FIND not allowed: association aborted") {
                "C-FIND"
            } else if r.contains("(Secondary Capture Image Storage) not allowed") {
                "SC context"
            } else if r.contains("Query/Retrieve") && r.ends_with(": rejected") {
                "Q/R contexts"
            } else if r.contains("stream refused: a PDU before the A-ASSOCIATE-RQ out of order")
                || r.contains("stream refused: PDU type 0x01 of 2147483647 bytes")
            {
                "malformed"
            } else if r.contains("more SOP classes: rejected") {
                // storescu proposes every storage class it knows.
                "other storage contexts"
            } else {
                "unexpected"
            }
        })
        .collect();
    let each = [
        "malformed",
        "malformed",
        "other storage contexts",
        "Q/R contexts",
        "Q/R contexts",
        "calling AE",
        "SC context",
        "C-FIND",
    ];
    assert_eq!(kinds, [each, each].concat(), "{refused:#?}");
    let trail = std::fs::read_to_string(h.dir.join("state-edge-01/audit.jsonl")).expect("trail");
    assert!(!trail.contains("DOE"), "patient data in the audit trail");
}

/// The access leg: the vendor's TLS client reaches the monitor through the
/// edge's access listener with a DICOM guard on its flow (calling AE
/// `VENDOR`, C-ECHO only). `echoscu` over TLS works; `storescu` on the same
/// flow is aborted and nothing is stored; another calling AE is rejected.
#[test]
fn access_leg_guard() {
    let Ok(mut h) = Hospital::build("gac") else {
        return;
    };
    h.edit_policy(|p| {
        p.replace(
            "idle_timeout = \"30m\"\n",
            "idle_timeout = \"30m\"\nguard = { calling_ae_titles = [\"VENDOR\"], commands = [\"C-ECHO\"] }\n",
        )
    });
    let vendor = h.client("vendor-vitalis");
    let data = TempDir::new("gac-data");
    let stored = data.join("monitor");
    let _monitor = ward_tests::topology::storescp_in(&h.monitor, 24105, &stored, &[]);
    let file = make_dicom(&data, 32);
    let _hub = h.start_hub();
    // Tuesday 03:00 in Berlin: inside the vendor's window.
    let edge = h.start_edge("fake_now = \"2026-11-24T02:00:00Z\"");
    let tool = |name: &str, aet: &str, file: Option<&std::path::Path>| {
        let mut c = cmd_in(&h.lan, dcmtk(name));
        c.args([
            "-v", "-aec", "MONITOR", "-aet", aet, "-to", "5", "-ta", "10",
        ])
        .arg("--enable-tls")
        .arg(&vendor.key)
        .arg(&vendor.cert)
        .arg("--add-cert-file")
        .arg(h.ca.ca.cert_path())
        .args(["192.0.2.10", "24105"]);
        if let Some(f) = file {
            c.arg(f);
        }
        c.output().expect("dcmtk")
    };
    let echo = tool("echoscu", "VENDOR", None);
    assert!(
        echo.status.success(),
        "echoscu over the access leg: {}\n{}",
        text(&echo),
        edge.log()
    );
    let store = tool("storescu", "VENDOR", Some(&file));
    assert!(
        !store.status.success(),
        "C-STORE got through: {}",
        text(&store)
    );
    let files = std::fs::read_dir(&stored).map_or(0, |d| d.count());
    assert_eq!(files, 0, "the monitor stored an image");
    let other = tool("echoscu", "OTHER", None);
    assert!(
        text(&other).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&other)
    );
    assert_eq!(
        audit_reasons(&h, "guard-refused"),
        [
            "vendor-maint-monitor DICOM command C-STORE not allowed: association aborted",
            "vendor-maint-monitor DICOM calling AE title \"OTHER\" not allowed: association rejected"
        ]
    );
}
