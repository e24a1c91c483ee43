//! Generated site policies of any size.

use std::fmt::Write as _;

/// Device interfaces on the synthetic edge gateway.
pub const INTERFACES: usize = 16;
/// Services on the synthetic hub.
pub const SERVICES: usize = 5;

/// A valid policy with one edge gateway holding `devices` devices, each with
/// `flows_per_device` flows (at most [`SERVICES`]) to services behind one hub,
/// and one NTP exception for all devices.
pub fn policy(devices: usize, flows_per_device: usize) -> String {
    assert!(flows_per_device <= SERVICES, "one flow per service at most");
    assert!(devices < 1 << 20, "addresses run out");
    let mut s = String::with_capacity(devices * (300 + flows_per_device * 120));
    s.push_str("version = 1\ntrust_domain = \"bench.example\"\n\n[gateways.edge-01]\ndevice_interfaces = [");
    for i in 0..INTERFACES {
        let _ = write!(s, "{}\"dev{i}\"", if i > 0 { ", " } else { "" });
    }
    s.push_str(
        "]\nlan_address = \"192.0.2.10\"\n\n[gateways.hub-01]\nlan_address = \"192.0.2.20\"\n\n",
    );
    for k in 0..SERVICES {
        let _ = writeln!(
            s,
            "[services.svc-{k}]\naddress = \"203.0.113.{}:{}\"\nvia = \"hub-01\"\nprotocol = \"tcp\"\n",
            k + 1,
            1000 + k
        );
    }
    for i in 0..devices {
        let n = i + 1;
        let _ = writeln!(
            s,
            "[devices.d{i}]\ngateway = \"edge-01\"\ninterface = \"dev{}\"\nip = \"10.{}.{}.{}\"\nmac = \"02:00:00:{:02x}:{:02x}:{:02x}\"\nclass = \"bench\"\n",
            i % INTERFACES,
            n >> 16,
            (n >> 8) & 255,
            n & 255,
            n >> 16,
            (n >> 8) & 255,
            n & 255
        );
    }
    for i in 0..devices {
        for k in 0..flows_per_device {
            let _ = writeln!(
                s,
                "[[flows]]\nname = \"d{i}-svc-{k}\"\nfrom = \"d{i}\"\nto = \"svc-{k}\"\nlisten = \"100.64.{}.1:{}\"\n",
                i % INTERFACES,
                1000 + k
            );
        }
    }
    s.push_str("[[exceptions]]\nname = \"ntp\"\ndevices = [");
    for i in 0..devices {
        let _ = write!(s, "{}\"d{i}\"", if i > 0 { ", " } else { "" });
    }
    s.push_str("]\nto = \"192.0.2.123\"\nprotocol = \"udp\"\nport = 123\njustification = \"time for clinical records\"\n");
    s
}

#[cfg(test)]
mod tests {
    /// The generator's output is a valid policy of the asked size.
    #[test]
    fn synthetic_policy_is_valid() {
        let text = super::policy(300, 5);
        let (p, _) =
            ward_policy::load("synthetic.toml", &text, &Default::default()).expect("valid");
        assert_eq!(p.devices.len(), 300);
        assert_eq!(p.flows.len(), 1500);
        let plan = ward_policy::compile(&p, "edge-01").expect("compiles");
        assert_eq!(plan.routes.len(), 1500);
    }
}
