//! Apply a ruleset with the real `nft`, in one transaction, reporting nft's
//! own error text.
//!
//! The `nftables` crate's apply helper drops nft's stderr, so `nft -j -f -` is
//! spawned here directly: when a batch is refused, the admin sees nft's reason.
//! nft applies a batch as one kernel transaction: if any command fails, nothing
//! of the batch takes effect and the previous table stays in place.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Applying or reading a ruleset failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// `nft` could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program.
        program: OsString,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the batch; the previous ruleset is unchanged.
    #[error("nft refused the ruleset (previous ruleset kept): {stderr}")]
    Refused {
        /// Exit status.
        status: std::process::ExitStatus,
        /// What nft said.
        stderr: String,
    },
    /// `nft` printed something that is not the JSON asked for.
    #[error("nft output is not valid JSON: {0}")]
    BadOutput(serde_json::Error),
    /// Routed insertion cannot intercept: the routing it needs could not be
    /// installed, or the gateway does not hold a router address the policy
    /// says it takes over.
    #[error("routed insertion: {0}")]
    Interception(String),
}

/// How to run `nft` (and `ip`, for interception routing): in this network
/// namespace, or in another through `ip netns exec` (tests).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    netns: Option<OsString>,
}

/// Outcome of a successful apply.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Wall time nft took, spawn to exit.
    pub elapsed: Duration,
}

impl Nft {
    /// Run `nft` inside network namespace `ns` (through `ip netns exec`).
    pub fn in_netns(ns: &str) -> Self {
        Nft {
            netns: Some(ns.into()),
        }
    }

    fn command_for(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec"]).arg(ns).arg(program);
                c
            }
        }
    }

    fn command(&self) -> Command {
        self.command_for("nft")
    }

    /// Run `ip args` (JSON output with `-j`), failing with its stderr.
    fn ip(&self, args: &[&str]) -> Result<Vec<u8>, ApplyError> {
        let out = self
            .command_for("ip")
            .args(args)
            .output()
            .map_err(|source| ApplyError::Spawn {
                program: "ip".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ApplyError::Interception(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// Before a plan is applied: prepare what its insertion needs, or say
    /// why it cannot work. Routed: every router address the policy takes
    /// over is on a device interface. Bridge: `br_netfilter` does not pass
    /// bridged frames to the IP hooks (with it on, tproxy on a bridge lets the
    /// device's frame through to the real server: fail open), the bridge
    /// exists with the policy's MAC and ports, IPv6 is off on it, and each
    /// device has a static neighbour entry and a host route on it (the
    /// gateway never ARPs for a device). Both: the fwmark rule and local
    /// route that hand tproxied packets to the local stack (added once).
    /// Nothing to do for a plan without intercepted flows.
    pub fn prepare_interception(&self, plan: &ward_policy::Plan) -> Result<(), ApplyError> {
        if let Some(br) = &plan.bridge {
            self.prepare_bridge(plan, br)?;
        }
        if plan.transparent_listener.is_none() {
            return Ok(());
        }
        self.check_routers(plan)?;
        self.install_tproxy_routing()
    }

    fn sysctl(&self, key: &str) -> Option<String> {
        let out = self.command_for("sysctl").args(["-n", key]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn prepare_bridge(
        &self,
        plan: &ward_policy::Plan,
        br: &ward_policy::model::Bridge,
    ) -> Result<(), ApplyError> {
        for table in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{table}");
            // Absent: br_netfilter is not loaded, bridged frames stay bridged.
            if let Some(v) = self.sysctl(&key)
                && v != "0"
            {
                return Err(ApplyError::Interception(format!(
                    "bridge insertion needs {key} = 0 (it is {v}): with it on, the IP hooks see bridged frames and a tproxied frame is still bridged to the real server, failing open; set it (sysctl -w {key}=0, as the appliance image does) and start again"
                )));
            }
        }
        let json = |args: &[&str]| -> Result<serde_json::Value, ApplyError> {
            serde_json::from_slice(&self.ip(args)?).map_err(ApplyError::BadOutput)
        };
        let link = json(&["-j", "link", "show", "dev", &br.name]).map_err(|_| {
            ApplyError::Interception(format!(
                "bridge {} does not exist: create it with the device ports and uplink as its ports (the appliance's systemd-networkd does)",
                br.name
            ))
        })?;
        let mac = link[0]["address"].as_str().unwrap_or_default().to_owned();
        if mac != br.mac.to_string() {
            return Err(ApplyError::Interception(format!(
                "bridge {} has MAC {mac}, the policy says {}: diverted frames are addressed to the policy's",
                br.name, br.mac
            )));
        }
        let ports = json(&["-j", "link", "show", "master", &br.name])?;
        let has = |port: &str| {
            ports
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["ifname"].as_str() == Some(port))
        };
        for port in plan.device_interfaces.iter().chain([&br.uplink]) {
            if !has(port) {
                return Err(ApplyError::Interception(format!(
                    "{port} is not a port of bridge {}",
                    br.name
                )));
            }
        }
        let _ = self
            .command_for("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", br.name)])
            .output();
        let lan = plan.lan_address.to_string();
        for d in plan.devices.values() {
            let ip = d.ip.to_string();
            self.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &d.mac.to_string(),
                "dev",
                &br.name,
                "nud",
                "permanent",
            ])?;
            self.ip(&[
                "route",
                "replace",
                &format!("{ip}/32"),
                "dev",
                &br.name,
                "src",
                &lan,
            ])?;
        }
        Ok(())
    }

    fn check_routers(&self, plan: &ward_policy::Plan) -> Result<(), ApplyError> {
        let addrs: serde_json::Value =
            serde_json::from_slice(&self.ip(&["-j", "-4", "addr", "show"])?)
                .map_err(ApplyError::BadOutput)?;
        let held = |ip: &str, prefix: u8| {
            addrs.as_array().into_iter().flatten().any(|link| {
                plan.device_interfaces
                    .iter()
                    .any(|i| link["ifname"].as_str() == Some(i.as_str()))
                    && link["addr_info"].as_array().into_iter().flatten().any(|a| {
                        a["local"].as_str() == Some(ip)
                            && a["prefixlen"].as_u64() == Some(u64::from(prefix))
                    })
            })
        };
        for (ip, prefix) in &plan.routers {
            if !held(&ip.to_string(), *prefix) {
                return Err(ApplyError::Interception(format!(
                    "router address {ip}/{prefix} is on none of the device interfaces ({}): the gateway must hold each segment's router address (ip addr add {ip}/{prefix} dev <port>), or the policy's `routers` is wrong",
                    plan.device_interfaces.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn install_tproxy_routing(&self) -> Result<(), ApplyError> {
        let mark = format!("{:#x}", ward_policy::nft::TPROXY_MARK);
        let table = ward_policy::nft::TPROXY_TABLE.to_string();
        let rules: serde_json::Value =
            serde_json::from_slice(&self.ip(&["-j", "-4", "rule", "show"])?)
                .map_err(ApplyError::BadOutput)?;
        let installed = rules.as_array().into_iter().flatten().any(|r| {
            r["fwmark"].as_str() == Some(mark.as_str()) && r["table"].as_str() == Some(&table)
        });
        if !installed {
            self.ip(&["-4", "rule", "add", "fwmark", &mark, "lookup", &table])?;
        }
        self.ip(&[
            "-4",
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ])?;
        Ok(())
    }

    /// Apply a JSON batch (`nft -j -f -`) as one transaction.
    pub fn apply_json(&self, batch: &str) -> Result<Applied, ApplyError> {
        let start = Instant::now();
        let mut child = self
            .command()
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ApplyError::Spawn {
                program: "nft".into(),
                source,
            })?;
        // nft reads all of stdin before it answers, so writing first cannot
        // deadlock on a full stderr pipe.
        let write = child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(batch.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|source| ApplyError::Spawn {
                program: "nft".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ApplyError::Refused {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        write.map_err(|source| ApplyError::Spawn {
            program: "nft".into(),
            source,
        })?;
        Ok(Applied {
            elapsed: start.elapsed(),
        })
    }

    /// `nft -j list table inet ward`, or `None` when the table does not exist.
    pub fn list_table(&self) -> Result<Option<serde_json::Value>, ApplyError> {
        self.list(&["list", "table", "inet", ward_policy::nft::TABLE])
    }

    /// Per-device drop counters: `nft -j list counters` of table `inet ward`,
    /// plus tables `bridge ward` (bridge insertion drops spoofed and lateral
    /// frames at layer 2) and `arp ward` (spoofed ARP to the gateway) where
    /// they exist, summed by name.
    pub fn list_counters(&self) -> Result<Vec<CounterValue>, ApplyError> {
        let mut all: Vec<CounterValue> = Vec::new();
        for family in ["inet", "bridge", "arp"] {
            let Some(v) =
                self.list(&["list", "counters", "table", family, ward_policy::nft::TABLE])?
            else {
                continue;
            };
            for o in v["nftables"].as_array().into_iter().flatten() {
                let Some(c) = o.get("counter") else { continue };
                let Some(name) = c["name"].as_str() else {
                    continue;
                };
                let (packets, bytes) = (
                    c["packets"].as_u64().unwrap_or(0),
                    c["bytes"].as_u64().unwrap_or(0),
                );
                match all.iter_mut().find(|x| x.name == name) {
                    Some(x) => {
                        x.packets += packets;
                        x.bytes += bytes;
                    }
                    None => all.push(CounterValue {
                        name: name.to_owned(),
                        packets,
                        bytes,
                    }),
                }
            }
        }
        Ok(all)
    }

    /// The elements of learning set `name` in table `inet ward` (none when
    /// the table or the set does not exist). Parsed straight into typed
    /// elements: a full set prints about 0.6 MB of JSON.
    pub fn list_observed(&self, name: &str) -> Result<Vec<SetElement>, ApplyError> {
        #[derive(serde::Deserialize)]
        struct Listing {
            nftables: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            set: Option<Listed>,
        }
        #[derive(serde::Deserialize)]
        struct Listed {
            #[serde(default)]
            elem: Vec<Wrapped>,
        }
        #[derive(serde::Deserialize)]
        struct Wrapped {
            elem: RawElement,
        }
        let Some(out) = self.output(&["list", "set", "inet", ward_policy::nft::TABLE, name])?
        else {
            return Ok(Vec::new());
        };
        let listing: Listing = serde_json::from_slice(&out).map_err(ApplyError::BadOutput)?;
        Ok(listing
            .nftables
            .into_iter()
            .filter_map(|i| i.set)
            .flat_map(|s| s.elem)
            .filter_map(|w| w.elem.into_element())
            .collect())
    }

    fn list(&self, args: &[&str]) -> Result<Option<serde_json::Value>, ApplyError> {
        let Some(out) = self.output(args)? else {
            return Ok(None);
        };
        serde_json::from_slice(&out)
            .map(Some)
            .map_err(ApplyError::BadOutput)
    }

    /// `nft -j ARGS`'s output; none when the table or object does not exist.
    fn output(&self, args: &[&str]) -> Result<Option<Vec<u8>>, ApplyError> {
        let out = self
            .command()
            .arg("-j")
            .args(args)
            .output()
            .map_err(|source| ApplyError::Spawn {
                program: "nft".into(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(ApplyError::Refused {
                status: out.status,
                stderr,
            });
        }
        Ok(Some(out.stdout))
    }
}

/// One element of a learning set, as `nft -j list set` prints it:
/// `{"val":{"concat":[src,dst,proto,port]},"expires":s,"counter":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    /// The flow.
    pub key: ward_policy::observe::FlowKey,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// Seconds until it expires (the set timeout after its last packet).
    pub expires: u64,
}

/// An element as nft prints it.
#[derive(serde::Deserialize)]
struct RawElement {
    val: RawVal,
    #[serde(default)]
    expires: u64,
    #[serde(default)]
    counter: Option<RawCounter>,
}

#[derive(serde::Deserialize)]
struct RawVal {
    concat: (String, String, RawProto, u64),
}

/// nft prints a protocol by name when it has one, else by number.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawProto {
    Name(String),
    Number(u8),
}

#[derive(serde::Deserialize)]
struct RawCounter {
    packets: u64,
    bytes: u64,
}

impl RawElement {
    fn into_element(self) -> Option<SetElement> {
        use ward_policy::observe::{FlowKey, ICMP, TCP, UDP};
        let (src, dst, proto, port) = self.val.concat;
        let proto = match proto {
            RawProto::Number(n) => n,
            RawProto::Name(p) => match p.as_str() {
                "tcp" => TCP,
                "udp" => UDP,
                "icmp" => ICMP,
                _ => return None,
            },
        };
        let counter = self.counter.unwrap_or(RawCounter {
            packets: 0,
            bytes: 0,
        });
        Some(SetElement {
            key: FlowKey {
                src: src.parse().ok()?,
                dst: dst.parse().ok()?,
                proto,
                port: u16::try_from(port).ok()?,
            },
            packets: counter.packets,
            bytes: counter.bytes,
            expires: self.expires,
        })
    }
}

/// One named nft counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// Counter name, e.g. `dev_ct-scanner-2`.
    pub name: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A learning set as nft 1.0.6 prints it: protocols by name, ICMP
    /// keyed by type × 256 + code, counters and seconds left per element.
    #[test]
    fn learning_set_elements_parse() {
        let json = r#"{"elem": {"val": {"concat": ["10.9.0.2", "10.9.0.1", "icmp", 2048]}, "expires": 3599, "counter": {"packets": 3, "bytes": 252}}}"#;
        let e: serde_json::Value = serde_json::from_str(json).expect("json");
        let raw: RawElement = serde_json::from_value(e["elem"].clone()).expect("element");
        let el = raw.into_element().expect("parsed");
        assert_eq!(
            el.key.to_string(),
            "10.9.0.2 -> 10.9.0.1 icmp type 8 code 0"
        );
        assert_eq!((el.packets, el.bytes, el.expires), (3, 252, 3599));
        let udp: RawElement = serde_json::from_str(
            r#"{"val": {"concat": ["10.9.0.2", "10.9.0.1", 17, 123]}, "expires": 10}"#,
        )
        .expect("element");
        let el = udp.into_element().expect("parsed");
        assert_eq!((el.key.proto, el.key.port, el.packets), (17, 123, 0));
        let sctp: RawElement =
            serde_json::from_str(r#"{"val": {"concat": ["10.9.0.2", "10.9.0.1", "sctp", 1]}}"#)
                .expect("element");
        assert!(sctp.into_element().is_none());
    }
}
