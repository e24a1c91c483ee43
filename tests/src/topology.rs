//! The example hospital in network namespaces, with the real policy
//! (`policy/examples/hospital.toml`), real `wardd` processes applying real
//! nftables rulesets, and real protocol peers.
//!
//! ```text
//!  ct   198.51.100.2/28  ─ dev0 ┐
//!  pump1 198.51.100.18/28 ─ dev1 ├ edge (edge-01) ─ lan0 192.0.2.10 ┐
//!  pump2 198.51.100.34/28 ─ dev2 │                                  ├ lan (bridge; hosts .50 .123 .200)
//!  mon  198.51.100.50/28  ─ dev3 ┘             hub (hub-dc-01) ─ lan0 192.0.2.20 ┘
//!                                              hub ─ srv0 203.0.113.1 ─ srv (PACS .5, HL7 engine .6)
//! ```
//!
//! Every namespace has a unique name and is deleted on drop, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ward_pki::{Issued, Kind};

use crate::harness::{TempDir, TestCa, Wardd, binary};
use crate::netns::{Netns, Skip};

/// The example policy.
pub const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy/examples/hospital.toml"
);

/// Namespaces and files of one hospital.
pub struct Hospital {
    /// Scratch directory (certificates, configs, logs, captures).
    pub dir: TempDir,
    /// Site CA (trust domain of the example).
    pub ca: TestCa,
    /// The policy file the gateways run (a copy of the example, editable).
    pub policy: PathBuf,
    /// CT scanner.
    pub ct: Netns,
    /// Infusion pump 1.
    pub pump1: Netns,
    /// Infusion pump 2.
    pub pump2: Netns,
    /// Patient monitor.
    pub monitor: Netns,
    /// Edge gateway.
    pub edge: Netns,
    /// The hospital LAN (a bridge, with LAN hosts on it).
    pub lan: Netns,
    /// Hub gateway.
    pub hub: Netns,
    /// Data-centre servers (PACS, HL7 engine).
    pub srv: Netns,
    edge_cert: Issued,
    hub_cert: Issued,
}

/// Run `ip ARGS` in `ns` (split on whitespace); panics on failure.
pub fn ip(ns: &Netns, args: &str) {
    let argv: Vec<&str> = std::iter::once("ip")
        .chain(args.split_whitespace())
        .collect();
    ns.run(&argv);
}

/// Connect `a:a_if` and `b:b_if` with a veth pair.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ])
        .output()
        .expect("ip link add");
    assert!(
        out.status.success(),
        "veth {a_if}/{b_if}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip(a, &format!("link set {a_if} up"));
    ip(b, &format!("link set {b_if} up"));
}

impl Hospital {
    /// Build the topology (nothing runs yet). Skips (or fails under CI=true)
    /// when namespaces cannot be created.
    pub fn build(tag: &str) -> Result<Hospital, Skip> {
        let ct = Netns::new(&format!("{tag}-ct"))?;
        let pump1 = Netns::new(&format!("{tag}-p1"))?;
        let pump2 = Netns::new(&format!("{tag}-p2"))?;
        let monitor = Netns::new(&format!("{tag}-mon"))?;
        let edge = Netns::new(&format!("{tag}-edge"))?;
        let lan = Netns::new(&format!("{tag}-lan"))?;
        let hub = Netns::new(&format!("{tag}-hub"))?;
        let srv = Netns::new(&format!("{tag}-srv"))?;

        for (dev, i, net, mac) in [
            (&ct, 0, "198.51.100.2/28", "02:00:00:00:00:02"),
            (&pump1, 1, "198.51.100.18/28", "02:00:00:00:00:12"),
            (&pump2, 2, "198.51.100.34/28", "02:00:00:00:00:22"),
            (&monitor, 3, "198.51.100.50/28", "02:00:00:00:00:32"),
        ] {
            veth(&edge, &format!("dev{i}"), dev, "eth0");
            ip(dev, &format!("link set eth0 address {mac}"));
            ip(dev, &format!("addr add {net} dev eth0"));
            let gw = match i {
                0 => "198.51.100.1",
                1 => "198.51.100.17",
                2 => "198.51.100.33",
                _ => "198.51.100.49",
            };
            ip(&edge, &format!("addr add {gw}/28 dev dev{i}"));
            ip(dev, &format!("route add default via {gw}"));
            // These legacy devices speak IPv4 only (as the policy requires);
            // without this, IPv6 autoconfiguration chatter would show up in
            // their drop counters.
            dev.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        }
        // The LAN: a bridge with the gateways' uplinks and a few LAN hosts.
        ip(&lan, "link add br0 type bridge");
        ip(&lan, "link set br0 up");
        veth(&edge, "lan0", &lan, "to-edge");
        veth(&hub, "lan0", &lan, "to-hub");
        ip(&lan, "link set to-edge master br0");
        ip(&lan, "link set to-hub master br0");
        ip(&edge, "addr add 192.0.2.10/24 dev lan0");
        ip(&hub, "addr add 192.0.2.20/24 dev lan0");
        for host in ["192.0.2.50/24", "192.0.2.123/24", "192.0.2.200/24"] {
            ip(&lan, &format!("addr add {host} dev br0"));
        }
        // LAN hosts would answer devices directly if the edge forwarded.
        ip(&lan, "route add 198.51.100.0/24 via 192.0.2.10");
        // The hub's protected server segment.
        veth(&hub, "srv0", &srv, "eth0");
        ip(&hub, "addr add 203.0.113.1/24 dev srv0");
        ip(&srv, "addr add 203.0.113.5/24 dev eth0");
        ip(&srv, "addr add 203.0.113.6/24 dev eth0");
        ip(&srv, "route add default via 203.0.113.1");
        for gw in [&edge, &hub] {
            gw.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }

        let dir = TempDir::new(tag);
        let mut ca = TestCa::new(&dir, "st-mary.example");
        let edge_cert = ca.issue(Kind::Gateway, "edge-01");
        let hub_cert = ca.issue(Kind::Gateway, "hub-dc-01");
        let policy = dir.join("policy.toml");
        std::fs::copy(EXAMPLE, &policy).expect("copy example policy");
        Ok(Hospital {
            dir,
            ca,
            policy,
            ct,
            pump1,
            pump2,
            monitor,
            edge,
            lan,
            hub,
            srv,
            edge_cert,
            hub_cert,
        })
    }

    /// Write gateway `name`'s configuration (its certificate, `extra` added).
    pub fn config(&self, name: &str, cert: &Issued, extra: &str) -> PathBuf {
        let path = self.dir.join(&format!("{name}.toml"));
        let text = format!(
            "gateway = \"{name}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = \"{}\"\nwatch_interval = \"1s\"\n\n[limits]\nhandshake_timeout = \"5s\"\ndrain_timeout = \"2s\"\n\n[nft]\napply = true\n",
            self.policy.display(),
            self.dir.join(&format!("state-{name}")).display(),
            self.socket(name).display(),
            self.ca.ca.cert_path().display(),
            cert.cert.display(),
            cert.key.display(),
            self.ca.ca.crl_path().display(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// The admin socket of gateway `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(&format!("{name}.sock"))
    }

    /// Start the hub in its namespace.
    pub fn start_hub(&self) -> Wardd {
        let cfg = self.config("hub-dc-01", &self.hub_cert, "");
        Wardd::start_in(self.hub.name(), &cfg, &self.dir.join("hub.log"))
    }

    /// Start the edge in its namespace; `extra` goes into its configuration.
    pub fn start_edge(&self, extra: &str) -> Wardd {
        let cfg = self.config("edge-01", &self.edge_cert, extra);
        Wardd::start_in(self.edge.name(), &cfg, &self.dir.join("edge.log"))
    }

    /// Start the edge where the start must fail: its exit code and stderr.
    /// Panics (after killing it) if it is still running after 15 s.
    pub fn edge_start_fails(&self) -> (Option<i32>, String) {
        let cfg = self.config("edge-01", &self.edge_cert, "");
        Wardd::start_fails_in(&self.edge, &cfg, &self.dir.join("edge-refused.log"))
    }

    /// Rewrite the running policy with `edit` applied to the example.
    pub fn edit_policy(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(EXAMPLE).expect("example");
        std::fs::write(&self.policy, edit(text)).expect("write policy");
    }

    /// Put a Modbus PLC behind the hub (service `plc` at 203.0.113.7:502 in
    /// `srv`, the address added there) and give the patient monitor flows
    /// to it: (name, listen port on 198.51.100.49, guarded with
    /// [`PLC_GUARD`] or not). Nothing listens yet.
    pub fn with_plc(&self, flows: &[(&str, u16, bool)]) {
        let mut add = "\n[services.plc]\naddress = \"203.0.113.7:502\"\nvia = \"hub-dc-01\"\nprotocol = \"modbus\"\n".to_owned();
        for (name, port, guarded) in flows {
            add.push_str(&format!(
                "\n[[flows]]\nname = \"{name}\"\nfrom = \"monitor-icu-3\"\nto = \"plc\"\nlisten = \"198.51.100.49:{port}\"\n"
            ));
            if *guarded {
                add.push_str(&format!("guard = {PLC_GUARD}\n"));
            }
        }
        self.edit_policy(|p| p + &add);
        ip(&self.srv, "addr add 203.0.113.7/24 dev eth0");
    }

    /// Issue a client certificate.
    pub fn client(&mut self, name: &str) -> Issued {
        self.ca.issue(Kind::Client, name)
    }

    /// The edge's per-device drop counter (packets).
    pub fn drops(&self, device: &str) -> u64 {
        let nft = ward_gateway::control::nft::Nft::in_netns(self.edge.name());
        nft.list_counters()
            .expect("list counters")
            .into_iter()
            .find(|c| c.name == format!("dev_{device}"))
            .map_or(0, |c| c.packets)
    }
}

/// The Modbus guard of [`Hospital::with_plc`]'s guarded flows: reading
/// holding registers 0-99 of unit 1, nothing else.
pub const PLC_GUARD: &str = "{ functions = [\"read-holding-registers\"], unit_ids = [1], addresses = [{ function = \"read-holding-registers\", from = 0, to = 99 }] }";

/// The example policy with the edge inserted routed: it holds the device
/// segments' router addresses (as it does in this topology), and the
/// outbound flows lose `listen`: each device's connections are intercepted
/// where they always went, the servers' real addresses.
pub fn routed_policy(example: String) -> String {
    example
        .replace(
            "device_interfaces = [\"dev0\", \"dev1\", \"dev2\", \"dev3\"]\n",
            "device_interfaces = [\"dev0\", \"dev1\", \"dev2\", \"dev3\"]\ninsertion = \"routed\"\nrouters = [\"198.51.100.1/28\", \"198.51.100.17/28\", \"198.51.100.33/28\", \"198.51.100.49/28\"]\n",
        )
        .replace("listen = \"198.51.100.1:104\"     # the CT's configured PACS address\n", "")
        .replace("listen = \"198.51.100.17:2575\"\n", "")
        .replace("listen = \"198.51.100.33:2575\"\n", "")
}

/// An MLLP server answering ACKs (the `hl7` package); argv: address, port,
/// and optionally a file to which it appends each message's MSH-9.
pub const MLLP_SERVER: &str = r#"
import asyncio, sys
from hl7.mllp import start_hl7_server
log = sys.argv[3] if len(sys.argv) > 3 else None
async def process(reader, writer):
    try:
        while not writer.is_closing():
            m = await reader.readmessage()
            if log:
                with open(log, "a") as f:
                    f.write(str(m.segment("MSH")[9]) + "\n")
            writer.writemessage(m.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        writer.close()
async def main():
    async with await start_hl7_server(process, sys.argv[1], int(sys.argv[2])) as s:
        await s.serve_forever()
asyncio.run(main())
"#;

/// The HL7 engine: an MLLP server (the `hl7` package) answering ACKs, at 203.0.113.6:2575.
pub fn hl7_engine(h: &Hospital) -> Bg {
    let script = h.dir.join("mllp_server.py");
    std::fs::write(&script, MLLP_SERVER).expect("write script");
    let child = cmd_in(&h.srv, "python3")
        .arg(&script)
        .args(["203.0.113.6", "2575"])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    wait_listen(&h.srv, 2575);
    Bg(child)
}

/// `mllp_send` from `ns` to `host:2575` with the tests' ORU^R01 result;
/// returns its stdout (the ACK).
pub fn mllp_send(h: &Hospital, ns: &Netns, host: &str, control: &str) -> String {
    mllp_send_message(h, ns, host, control, &crate::peers::hl7_message(control))
}

/// `mllp_send` from `ns` to `host:2575` with `message` (kept in a file
/// named after `name`); returns its stdout (the ACK).
pub fn mllp_send_message(
    h: &Hospital,
    ns: &Netns,
    host: &str,
    name: &str,
    message: &str,
) -> String {
    let file = h.dir.join(&format!("{name}.hl7"));
    std::fs::write(&file, format!("\x0b{message}\x1c\r")).expect("write message");
    let out = cmd_in(ns, "mllp_send")
        .args(["--port", "2575", "--file"])
        .arg(&file)
        .arg(host)
        .output()
        .expect("mllp_send");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tcpdump capture of `iface` in `ns` into `file`, stopped on drop.
pub fn capture(ns: &Netns, iface: &str, file: &std::path::Path) -> Bg {
    let mut child = cmd_in(ns, "tcpdump")
        // --immediate-mode: packets reach the file as they arrive, not when
        // a ring block retires (up to a second later): a capture stopped
        // right after a short exchange would otherwise miss it.
        .args(["-i", iface, "--immediate-mode", "-U", "-s", "0", "-w"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    // tcpdump reports "listening on" once the capture runs; on a busy
    // machine that can take longer than a fixed pause would allow.
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("tcpdump on {iface} in {} did not start", ns.name()));
    Bg(child)
}

/// A command run inside namespace `ns`.
pub fn cmd_in(ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()]).arg(program);
    c
}

/// A background process in a namespace, killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dcmtk `storescp` in `ns` on `port`, storing into `out`.
pub fn storescp_in(ns: &Netns, port: u16, out: &Path, extra: &[&str]) -> Bg {
    std::fs::create_dir_all(out).expect("storescp dir");
    let child = cmd_in(ns, crate::peers::dcmtk("storescp"))
        .arg("--output-directory")
        .arg(out)
        .arg("--bit-preserving")
        // No resolver answers inside the test namespaces: a reverse lookup
        // of each peer would stall the association.
        .arg("--disable-host-lookup")
        .args(extra)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn storescp");
    wait_listen(ns, port);
    Bg(child)
}

/// Wait until something listens on TCP `port` in `ns`.
pub fn wait_listen(ns: &Netns, port: u16) {
    for _ in 0..100 {
        let out = ns.exec(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} in {}", ns.name());
}

/// dcmtk `storescu` in `ns`.
pub fn storescu_in(ns: &Netns, host: &str, port: u16, file: &Path, extra: &[&str]) -> Output {
    cmd_in(ns, crate::peers::dcmtk("storescu"))
        .args(["-aec", "PACS", "-aet", "CT-SCANNER-2"])
        .args(["-to", "5", "-ta", "10", "-td", "10"])
        .args(extra)
        .arg(host)
        .arg(port.to_string())
        .arg(file)
        .output()
        .expect("run storescu")
}

/// What an nmap scan from `ns` finds open: `addr:port/proto` of each open
/// port among `ports` on `targets` (nmap syntax), TCP connect scan or UDP
/// probes. Filtered (dropped) ports are not listed; neither are UDP ports
/// that stay silent (nmap's open|filtered).
pub fn nmap_open(ns: &Netns, targets: &[&str], ports: &str, udp: bool) -> Vec<String> {
    let out = cmd_in(ns, "nmap")
        .args([
            "-n",
            "-Pn",
            "-T4",
            "--max-retries",
            "0",
            "--host-timeout",
            "60s",
        ])
        .arg(if udp { "-sU" } else { "-sT" })
        .args(["-p", ports, "--open", "-oG", "-"])
        .args(targets)
        .output()
        .expect("nmap (apt install nmap)");
    assert!(
        out.status.success(),
        "nmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut open = Vec::new();
    for line in text.lines().filter(|l| l.contains("Ports:")) {
        let host = line.split_whitespace().nth(1).unwrap_or("?");
        let ports = line.split("Ports:").nth(1).unwrap_or("");
        for p in ports.split(',') {
            let f: Vec<&str> = p.trim().split('/').collect();
            if f.len() > 2 && f[1] == "open" {
                open.push(format!("{host}:{}/{}", f[0], f[2]));
            }
        }
    }
    open.sort();
    open
}

/// A time server on the LAN (192.0.2.123:123 in `lan`, which must hold that
/// address): answers every datagram with `time:` and the datagram.
pub fn ntp_responder(lan: &Netns) -> Bg {
    let bg = Bg(cmd_in(lan, "python3")
        .args([
            "-c",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('192.0.2.123', 123))\nwhile True:\n    d, a = s.recvfrom(512)\n    s.sendto(b'time:' + d, a)",
        ])
        .spawn()
        .expect("python3"));
    std::thread::sleep(Duration::from_millis(500));
    bg
}

/// A LAN service nobody declared in the policy: TCP 192.0.2.50:8080 in
/// `lan` (which holds that address), answering one line. Learning mode's
/// surprise flow.
pub fn undeclared_service(lan: &Netns) -> Bg {
    let bg = Bg(cmd_in(lan, "socat")
        .args([
            "TCP-LISTEN:8080,bind=192.0.2.50,fork,reuseaddr",
            "SYSTEM:echo undeclared",
        ])
        .spawn()
        .expect("socat"));
    wait_listen(lan, 8080);
    bg
}

/// `count` UDP datagrams of 48 bytes from `ns` to `host:port`, from one socket.
pub fn udp_datagrams(ns: &Netns, host: &str, port: u16, count: usize) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range({count}):\n    s.sendto(b'x' * 48, ('{host}', {port}))\n"
    );
    let out = cmd_in(ns, "python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From the CT's namespace `ct`, with a time server answering on the LAN
/// ([`ntp_responder`]): a TCP connect scan and UDP probes of the LAN hosts
/// and the server range find the CT's flow (the PACS at 203.0.113.5:104)
/// and its NTP exception, and nothing else.
pub fn assert_scan_finds_only_the_pacs_and_ntp(ct: &Netns) {
    let targets = ["192.0.2.1,10,20,50,123,200", "203.0.113.1,5,6"];
    let tcp = nmap_open(
        ct,
        &targets,
        "22,80,104,135,139,443,445,2575,3389,4433,8080",
        false,
    );
    assert_eq!(tcp, ["203.0.113.5:104/tcp"], "TCP scan from the CT");
    let udp = nmap_open(ct, &targets, "53,67,69,123,161,514,4433", true);
    assert_eq!(udp, ["192.0.2.123:123/udp"], "UDP probes from the CT");
}

/// SIGKILL `gateway`, then check it failed closed: `storescu` from `ct` to
/// the PACS fails, and a capture on `iface` in `ns` sees no packet matching
/// `filter` (the devices' addresses).
pub fn assert_kill_fails_closed(
    mut gateway: Wardd,
    ct: &Netns,
    study: &Path,
    (ns, iface): (&Netns, &str),
    pcap: &Path,
    filter: &str,
) {
    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(5));
    let cap = capture(ns, iface, pcap);
    let refused = storescu_in(ct, "203.0.113.5", 104, study, &[]);
    assert!(
        !refused.status.success(),
        "the CT reached the PACS with wardd killed"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    let out = cmd_in(ns, "tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .expect("tcpdump -r");
    let seen = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        seen, 0,
        "with wardd killed, {seen} device packets got through ({filter})"
    );
}

/// A long DICOM association from `ns`: dcmtk `echoscu` repeating C-ECHO to
/// `host:port` on one association, its log in `log` (for `peers::echoes`).
pub fn echoscu_held_in(ns: &Netns, host: &str, port: u16, log: &Path) -> Bg {
    let file = std::fs::File::create(log).expect("echoscu log");
    Bg(cmd_in(ns, crate::peers::dcmtk("echoscu"))
        .args(["-v", "-aec", "PACS", "-aet", "CT-SCANNER-2"])
        .args(["--repeat", "100000000", "-td", "2"])
        .arg(host)
        .arg(port.to_string())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .spawn()
        .expect("echoscu"))
}

/// `wardctl --socket socket ARGS`.
pub fn wardctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(binary("wardctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("wardctl")
}

/// Whether `ns` can ping `addr` (one packet, one second).
pub fn pings(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c1", "-W1", addr]).status.success()
}

/// Whether a TCP connect from `ns` to `addr:port` succeeds within 2 s.
pub fn tcp_connects(ns: &Netns, addr: &str, port: u16) -> bool {
    ns.exec(&["nc", "-z", "-w2", addr, &port.to_string()])
        .status
        .success()
}

impl Wardd {
    /// Run `wardd --config config` in `ns` where it must refuse to start:
    /// its exit code and log. Panics, after killing it, if it is still
    /// running after 15 s.
    pub fn start_fails_in(ns: &Netns, config: &Path, log: &Path) -> (Option<i32>, String) {
        let mut child = cmd_in(ns, binary("wardd"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn wardd");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (
                    status.code(),
                    std::fs::read_to_string(log).unwrap_or_default(),
                );
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wardd started where it must refuse:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start `wardd` inside network namespace `ns`.
    pub fn start_in(ns: &str, config: &Path, log: &Path) -> Wardd {
        Wardd::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(binary("wardd"))
                .arg("--config")
                .arg(config),
            config,
            log,
            None,
        )
    }
}
