//! The site policy as typed data, each value carrying where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::diag::{SourceMap, Span};

/// A value and the source span it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Item<T> {
    /// Wrap `value` read at `span`.
    pub fn new(value: T, span: Span) -> Self {
        Item { value, span }
    }
}

impl<T> std::ops::Deref for Item<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A whole site policy: one source of truth for every gateway of a site.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The source text and file name, for locating diagnostics.
    pub source: SourceMap,
    /// Schema version; only `1` exists.
    pub version: u32,
    /// SPIFFE trust domain, e.g. `st-mary.example`.
    pub trust_domain: Item<String>,
    /// Enforce or monitor.
    pub mode: Mode,
    /// The site's IANA time zone (e.g. `Europe/Berlin`): the default of
    /// every gateway's windows.
    pub tz: Option<Item<String>>,
    /// Devices whose traffic is dropped entirely.
    pub quarantine: Vec<Item<String>>,
    /// Gateways by name.
    pub gateways: BTreeMap<String, Gateway>,
    /// Protected devices by id.
    pub devices: BTreeMap<String, Device>,
    /// Services devices talk to, by name.
    pub services: BTreeMap<String, Service>,
    /// Client identities allowed inbound access, by name.
    pub clients: BTreeMap<String, Client>,
    /// Allowed flows, in file order.
    pub flows: Vec<Flow>,
    /// Raw, untunneled exceptions, in file order.
    pub exceptions: Vec<Exception>,
    /// Names declared (gateways, devices, services) whose tables had errors
    /// and were left out: references to them are not reported again.
    pub unreadable: std::collections::BTreeSet<String>,
}

/// Whether the policy drops or only records what it does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what is not allowed.
    Enforce,
    /// Allow everything, but count and log what enforce would deny.
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

/// One Ward gateway appliance.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Name, also its identity `spiffe://<trust-domain>/gateway/<name>`.
    pub name: Item<String>,
    /// Interfaces that face protected devices.
    pub device_interfaces: Vec<Item<String>>,
    /// Address on the hospital LAN where peers reach its tunnel server.
    pub lan_address: Item<IpAddr>,
    /// TCP and UDP port of the `ward/1` tunnel server.
    pub tunnel_port: u16,
    /// The gateway's IANA time zone, when not the site's.
    pub tz: Option<Item<String>>,
    /// How the gateway is inserted in front of its devices.
    pub insertion: Insertion,
    /// Routed insertion: the router addresses (with prefix) the gateway
    /// holds on its device ports, each the default router of a device segment.
    pub routers: Vec<Item<(IpAddr, u8)>>,
    /// Loopback port of the transparent listener (routed and bridge insertion).
    pub transparent_port: u16,
    /// Learning data: record every flow of its devices (`observe = false`
    /// turns it off; on by default, in monitor and enforce modes).
    pub observe: bool,
    /// Bridge insertion: the bridge the gateway puts in the cable.
    pub bridge: Option<Item<Bridge>>,
}

/// A bump-in-the-wire bridge: the device ports (`device_interfaces`) and
/// one uplink towards the segment's real router, bridged by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    /// The bridge interface (created by the system, e.g. systemd-networkd).
    pub name: String,
    /// The port towards the LAN and the segment's real router.
    pub uplink: String,
    /// The bridge's MAC address: diverted frames are addressed to it.
    pub mac: Mac,
    /// The real router's MAC: what the devices expect replies to come from.
    pub router_mac: Mac,
}

/// How a gateway is inserted in front of its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Insertion {
    /// Devices are pointed at the gateway's listeners (`listen` on each flow).
    Explicit,
    /// The gateway holds the device segments' router addresses; devices keep
    /// connecting to the addresses they always used, intercepted by tproxy.
    Routed,
    /// The gateway bridges each device port with an uplink to the real
    /// router (bump in the wire): nothing on the segment changes; flows are
    /// diverted from the bridge to tproxy, everything else is dropped.
    Bridge,
}

impl fmt::Display for Insertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Insertion::Explicit => "explicit",
            Insertion::Routed => "routed",
            Insertion::Bridge => "bridge",
        })
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or(())?;
            if p.len() != 2 {
                return Err(());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Lifecycle stage of a device, after IMDRF N70.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportStage {
    /// Fully supported by the manufacturer.
    Supported,
    /// Limited support: security patches may still come.
    LimitedSupport,
    /// End of support: no more patches. A legacy device.
    EndOfSupport,
    /// End of life.
    EndOfLife,
}

impl SupportStage {
    /// Parse the policy spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "supported" => SupportStage::Supported,
            "limited-support" => SupportStage::LimitedSupport,
            "end-of-support" => SupportStage::EndOfSupport,
            "end-of-life" => SupportStage::EndOfLife,
            _ => return None,
        })
    }

    /// The names accepted by [`SupportStage::parse`].
    pub const NAMES: [&'static str; 4] = [
        "supported",
        "limited-support",
        "end-of-support",
        "end-of-life",
    ];
}

/// A calendar date (no clock involved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub year: u16,
    /// Month, 1–12.
    pub month: u8,
    /// Day, 1–31.
    pub day: u8,
}

impl FromStr for Date {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.splitn(3, '-');
        let (y, m, d) = (
            it.next().ok_or(())?,
            it.next().ok_or(())?,
            it.next().ok_or(())?,
        );
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(());
        }
        let date = Date {
            year: y.parse().map_err(|_| ())?,
            month: m.parse().map_err(|_| ())?,
            day: d.parse().map_err(|_| ())?,
        };
        if !(1..=12).contains(&date.month) || !(1..=31).contains(&date.day) {
            return Err(());
        }
        Ok(date)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Manufacturer support of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Support {
    /// Lifecycle stage.
    pub stage: SupportStage,
    /// When support ends or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends: Option<Date>,
}

/// A protected device and its inventory record.
#[derive(Debug, Clone)]
pub struct Device {
    /// Identifier used everywhere else in the policy.
    pub id: Item<String>,
    /// Human-readable name.
    pub name: Option<String>,
    /// The gateway it sits behind.
    pub gateway: Item<String>,
    /// The gateway's interface it is attached to.
    pub interface: Item<String>,
    /// Its (IPv4) address.
    pub ip: Item<IpAddr>,
    /// Its MAC address.
    pub mac: Item<Mac>,
    /// Device class, e.g. `imaging`, `infusion`, `monitoring`.
    pub class: Option<String>,
    /// Manufacturer.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Manufacturer support stage.
    pub support: Option<Item<Support>>,
    /// Known vulnerabilities (CVE ids).
    pub vulnerabilities: Vec<String>,
    /// Reference to the device's SBOM (URL or document id).
    pub sbom: Option<String>,
}

impl Device {
    /// True when the device no longer receives security fixes, either by its
    /// declared stage or because its end-of-support date lies before `today`.
    pub fn past_end_of_support(&self, today: Option<Date>) -> bool {
        let Some(support) = &self.support else {
            return false;
        };
        match support.stage {
            SupportStage::EndOfSupport | SupportStage::EndOfLife => true,
            SupportStage::Supported | SupportStage::LimitedSupport => {
                matches!((support.ends, today), (Some(ends), Some(today)) if ends < today)
            }
        }
    }
}

/// Application protocol of a service, informational and for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// DICOM (PS3.8).
    Dicom,
    /// HL7 v2 over MLLP.
    Hl7,
    /// Modbus/TCP.
    Modbus,
    /// Any other TCP protocol.
    Tcp,
}

impl Protocol {
    /// Parse the policy spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "dicom" => Protocol::Dicom,
            "hl7" | "mllp" => Protocol::Hl7,
            "modbus" => Protocol::Modbus,
            "tcp" => Protocol::Tcp,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Dicom => "dicom",
            Protocol::Hl7 => "hl7",
            Protocol::Modbus => "modbus",
            Protocol::Tcp => "tcp",
        })
    }
}

/// TLS settings for a server that speaks TLS itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsTarget {
    /// PEM file with the CA that signs the server's certificate.
    pub ca: String,
    /// Name to verify in the server's certificate.
    pub server_name: String,
}

/// A server that devices talk to.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name used in flows.
    pub name: Item<String>,
    /// Address and port of the server.
    pub address: Item<SocketAddr>,
    /// Application protocol.
    pub protocol: Protocol,
    /// Through a `ward/1` tunnel to this hub gateway, which connects the
    /// server itself (in cleartext, or over TLS when `tls` is also set).
    pub via: Option<Item<String>>,
    /// The server speaks TLS itself: whoever connects it (the device's own
    /// gateway, or the hub named by `via`) verifies it with this CA and name
    /// and presents its gateway certificate. The span is the `ca` value's.
    pub tls: Option<Item<TlsTarget>>,
}

/// A client identity (a person's tool or a vendor's maintenance station).
#[derive(Debug, Clone)]
pub struct Client {
    /// Name used in flows.
    pub name: Item<String>,
    /// SPIFFE identity in its certificate.
    pub identity: String,
}

/// How a tunnel between gateways is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One TLS connection per flow.
    Tcp,
    /// One QUIC connection per peer gateway, one stream per flow.
    Quic,
}

/// Weekly time window, in a time zone's wall-clock time.
///
/// Each listed day opens one occurrence: from the first instant the zone's
/// wall clock reads `start` that day to the first instant it reads `end`
/// (the next day when `end` is before `start`). Across a DST change: a time
/// the clock skips (spring forward) is reached when the clock jumps past
/// it; a time the clock shows twice (fall back) is its first showing. So
/// `02:00`-`04:00` lasts one hour on the night the clock springs forward
/// over 02:00-03:00 and three on the night it falls back over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Days (0 = Monday … 6 = Sunday) on which the window opens.
    pub days: Vec<u8>,
    /// Minute of the day it opens.
    pub start: u16,
    /// Minute of the day it closes; before `start` means it closes the next day.
    pub end: u16,
    /// IANA time zone of `start` and `end`; `None` in a parsed policy means
    /// the default (the gateway's or site's `tz`), which compile fills in.
    pub tz: Option<String>,
    /// How long before the end open sessions are warned.
    #[serde(serialize_with = "crate::compile::ser_duration")]
    pub warning: Duration,
}

/// A duration as the policy writes it, in its largest exact unit (`30m`,
/// not `1800s`; `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| secs != 0 && secs.is_multiple_of(*u))
        .map_or((secs, "s"), |(u, unit)| (secs / u, unit));
    format!("{n}{unit}")
}

/// The time zone of windows that name none anywhere.
pub const DEFAULT_TZ: &str = "UTC";

/// Default warning period before a window ends.
pub const DEFAULT_WINDOW_WARNING: Duration = Duration::from_secs(300);

impl Window {
    /// If `at` lies inside an occurrence of the window, when that
    /// occurrence ends. An unknown zone is never open (fail closed; the
    /// name was checked when the policy was read).
    pub fn open_until(&self, at: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let tz = jiff::tz::TimeZone::get(self.tz.as_deref().unwrap_or(DEFAULT_TZ)).ok()?;
        let today = tz.to_datetime(at).date();
        let hm = |minute: u16| ((minute / 60) as i8, (minute % 60) as i8);
        let ((sh, sm), (eh, em)) = (hm(self.start), hm(self.end));
        // An occurrence that contains `at` opened today or (overnight) yesterday.
        for day in [today, today.yesterday().ok()?] {
            let weekday = day.weekday().to_monday_zero_offset() as u8;
            if !self.days.contains(&weekday) {
                continue;
            }
            let end_day = if self.end < self.start {
                day.tomorrow().ok()?
            } else {
                day
            };
            let start = first_instant(&tz, day.at(sh, sm, 0, 0))?;
            let end = first_instant(&tz, end_day.at(eh, em, 0, 0))?;
            if start <= at && at < end {
                return Some(end);
            }
        }
        None
    }

    /// Whether `at` lies inside the window.
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        self.open_until(at).is_some()
    }
}

/// The first instant at which the wall clock in `tz` reads `dt` or later:
/// the instant itself, its first showing when the clock falls back over
/// it, or the jump when the clock springs forward over it.
fn first_instant(tz: &jiff::tz::TimeZone, dt: jiff::civil::DateTime) -> Option<jiff::Timestamp> {
    use jiff::tz::AmbiguousOffset;
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // `dt` read with the later offset falls before the jump.
            let before_jump = after.to_timestamp(dt).ok()?;
            tz.following(before_jump).next().map(|t| t.timestamp())
        }
    }
}

/// Which way a flow goes.
#[derive(Debug, Clone)]
pub enum FlowKind {
    /// A device reaching a service.
    Outbound {
        /// Device id.
        device: Item<String>,
        /// Service name.
        service: Item<String>,
    },
    /// A server opening connections back to a device port (a PACS sending
    /// C-MOVE/C-GET results to a workstation): it connects `listen` on the
    /// hub named by the service's `via`, which tunnels to the device's gateway.
    Return {
        /// Service name (the server that connects).
        service: Item<String>,
        /// Device id.
        device: Item<String>,
        /// Device port.
        port: u16,
    },
    /// A client identity reaching a device port.
    Inbound {
        /// Client name.
        client: Item<String>,
        /// Device id.
        device: Item<String>,
        /// Device port.
        port: u16,
        /// Maintenance window, if access is limited in time.
        window: Option<Window>,
    },
}

/// One allowed flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Position in the `[[flows]]` array.
    pub index: usize,
    /// Unique name.
    pub name: Item<String>,
    /// Direction and endpoints.
    pub kind: FlowKind,
    /// Address the listener binds: for outbound flows the address the device
    /// is pointed at; for inbound flows the gateway's TLS listener. For a
    /// transparent flow, the original destination the device connects to
    /// (its `device_target`, or the service's address), intercepted.
    pub listen: Item<SocketAddr>,
    /// The flow is intercepted (no `listen`, on a routed gateway).
    pub transparent: bool,
    /// Tunnel transport (outbound flows through a hub).
    pub transport: Transport,
    /// Close the flow after this long without bytes in either direction.
    pub idle_timeout: Duration,
    /// Give up connecting the far end after this long.
    pub connect_timeout: Duration,
    /// Maximum concurrent connections of this flow.
    pub max_connections: u32,
    /// What may be said inside the flow.
    pub guard: Option<Item<Guard>>,
    /// The whole `[[flows]]` entry.
    pub span: Span,
}

/// What may be said inside a flow, by protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Guard {
    /// DICOM upper layer (PS3.8) and DIMSE (PS3.7).
    Dicom(DicomGuard),
    /// HL7 v2 over MLLP.
    Hl7(Hl7Guard),
    /// Modbus/TCP.
    Modbus(ModbusGuard),
}

impl Guard {
    /// The protocol the guard reads.
    pub fn protocol(&self) -> Protocol {
        match self {
            Guard::Dicom(_) => Protocol::Dicom,
            Guard::Hl7(_) => Protocol::Hl7,
            Guard::Modbus(_) => Protocol::Modbus,
        }
    }
}

/// DIMSE request commands by the names a guard uses, with their Command
/// Field values (PS3.7 E.1).
pub const DIMSE_COMMANDS: &[(&str, u16)] = &[
    ("C-STORE", 0x0001),
    ("C-GET", 0x0010),
    ("C-FIND", 0x0020),
    ("C-MOVE", 0x0021),
    ("C-ECHO", 0x0030),
    ("N-EVENT-REPORT", 0x0100),
    ("N-GET", 0x0110),
    ("N-SET", 0x0120),
    ("N-ACTION", 0x0130),
    ("N-CREATE", 0x0140),
    ("N-DELETE", 0x0150),
];

/// C-CANCEL-RQ: stops an operation already allowed, so always passes.
pub const DIMSE_CANCEL: u16 = 0x0fff;

/// The name of a DIMSE command field: requests by name, responses as
/// `C-STORE-RSP`, others in hex.
pub fn dimse_command_name(field: u16) -> String {
    let request = field & 0x7fff;
    match DIMSE_COMMANDS.iter().find(|(_, c)| *c == request) {
        Some((n, _)) if field & 0x8000 != 0 => format!("{n}-RSP"),
        Some((n, _)) => (*n).to_owned(),
        None if field == DIMSE_CANCEL => "C-CANCEL".to_owned(),
        None => format!("0x{field:04x}"),
    }
}

/// A DICOM flow's guard: the associations and requests the device (the
/// association requestor) may make. Each list, when not empty, must
/// contain the value.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DicomGuard {
    /// Calling AE titles (the device's own).
    pub calling_ae_titles: Vec<String>,
    /// Called AE titles (the server's).
    pub called_ae_titles: Vec<String>,
    /// Abstract syntaxes (SOP class UIDs) a presentation context may name.
    pub sop_classes: Vec<String>,
    /// DIMSE request Command Field values. Responses (the device answering
    /// the server's requests) and C-CANCEL always pass.
    pub commands: Vec<u16>,
}

/// Why an association is refused at its start: the A-ASSOCIATE-RJ reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeRefusal {
    /// Calling AE title not recognized (PS3.8 9.3.4, reason 3).
    Calling,
    /// Called AE title not recognized (reason 7).
    Called,
}

impl DicomGuard {
    /// Why an A-ASSOCIATE-RQ with these AE titles is refused, if it is.
    pub fn refuses_association(&self, calling: &str, called: &str) -> Option<(AeRefusal, String)> {
        let allowed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !allowed(&self.calling_ae_titles, calling) {
            return Some((
                AeRefusal::Calling,
                format!("DICOM calling AE title {calling:?} not allowed"),
            ));
        }
        if !allowed(&self.called_ae_titles, called) {
            return Some((
                AeRefusal::Called,
                format!("DICOM called AE title {called:?} not allowed"),
            ));
        }
        None
    }

    /// Why a presentation context for this abstract syntax is refused.
    pub fn refuses_sop_class(&self, uid: &str) -> Option<String> {
        if self.sop_classes.is_empty() || self.sop_classes.iter().any(|x| x == uid) {
            return None;
        }
        Some(match sop_class_name(uid) {
            Some(name) => format!("DICOM SOP class {uid} ({name}) not allowed"),
            None => format!("DICOM SOP class {uid} not allowed"),
        })
    }

    /// Why a DIMSE message with this Command Field is refused, if it is.
    pub fn refuses_command(&self, field: u16) -> Option<String> {
        if self.commands.is_empty()
            || field & 0x8000 != 0
            || field == DIMSE_CANCEL
            || self.commands.contains(&field)
        {
            return None;
        }
        Some(format!(
            "DICOM command {} not allowed",
            dimse_command_name(field)
        ))
    }
}

/// A standard SOP class's UID from its name ("CT Image Storage"), keyword
/// ("CTImageStorage") or UID, from the dicom-rs standard dictionary.
pub fn sop_class_uid(s: &str) -> Option<&'static str> {
    use dicom_core::dictionary::UidDictionary;
    use dicom_dictionary_std::StandardSopClassDictionary as D;
    if let Some(e) = D.by_uid(s) {
        return Some(e.uid);
    }
    if let Some(e) = D.by_keyword(s) {
        return Some(e.uid);
    }
    // A name gives its keyword: words capitalized and joined, without
    // " SOP Class" and " (Retired)" (FIND, MOVE and GET are written Find,
    // Move, Get in keywords). The entry found must carry that name.
    let base = s.trim_end_matches(" (Retired)").replace(" SOP Class", "");
    let keyword: String = base
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "FIND" | "MOVE" | "GET" => format!("{}{}", &w[..1], w[1..].to_ascii_lowercase()),
            _ => format!("{}{}", w[..1].to_ascii_uppercase(), &w[1..]),
        })
        .collect();
    let plain = |n: &str| -> String {
        n.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    D.by_keyword(&keyword)
        .filter(|e| plain(e.name) == plain(s))
        .map(|e| e.uid)
}

/// A standard SOP class's name from its UID.
pub fn sop_class_name(uid: &str) -> Option<&'static str> {
    use dicom_core::dictionary::UidDictionary;
    use dicom_dictionary_std::StandardSopClassDictionary as D;
    D.by_uid(uid).map(|e| e.name)
}

/// Names offered as suggestions for a SOP class the dictionary does not
/// know (the dictionary resolves every standard name, but cannot list them).
pub const COMMON_SOP_CLASSES: &[&str] = &[
    "Verification SOP Class",
    "CT Image Storage",
    "Enhanced CT Image Storage",
    "MR Image Storage",
    "Enhanced MR Image Storage",
    "Ultrasound Image Storage",
    "Ultrasound Multi-frame Image Storage",
    "Computed Radiography Image Storage",
    "Digital X-Ray Image Storage - For Presentation",
    "Digital Mammography X-Ray Image Storage - For Presentation",
    "Nuclear Medicine Image Storage",
    "Positron Emission Tomography Image Storage",
    "Secondary Capture Image Storage",
    "X-Ray Angiographic Image Storage",
    "RT Image Storage",
    "RT Dose Storage",
    "RT Structure Set Storage",
    "RT Plan Storage",
    "Basic Text SR Storage",
    "Enhanced SR Storage",
    "Comprehensive SR Storage",
    "Encapsulated PDF Storage",
    "12-lead ECG Waveform Storage",
    "Grayscale Softcopy Presentation State Storage",
    "Storage Commitment Push Model SOP Class",
    "Modality Performed Procedure Step SOP Class",
    "Modality Worklist Information Model - FIND",
    "Patient Root Query/Retrieve Information Model - FIND",
    "Patient Root Query/Retrieve Information Model - MOVE",
    "Patient Root Query/Retrieve Information Model - GET",
    "Study Root Query/Retrieve Information Model - FIND",
    "Study Root Query/Retrieve Information Model - MOVE",
    "Study Root Query/Retrieve Information Model - GET",
];

/// Modbus function codes by the names a guard uses.
pub const MODBUS_FUNCTIONS: &[(&str, u8)] = &[
    ("read-coils", 1),
    ("read-discrete-inputs", 2),
    ("read-holding-registers", 3),
    ("read-input-registers", 4),
    ("write-single-coil", 5),
    ("write-single-register", 6),
    ("write-multiple-coils", 15),
    ("write-multiple-registers", 16),
    ("mask-write-register", 22),
    ("read-write-multiple-registers", 23),
    ("read-device-identification", 43),
];

/// A Modbus/TCP flow's guard: the requests the client may send. Each list,
/// when not empty, must contain the request's value; `addresses` bounds the
/// functions it names (inclusive ranges), others are not bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModbusGuard {
    /// Function codes.
    pub functions: Vec<u8>,
    /// Unit identifiers.
    pub unit_ids: Vec<u8>,
    /// Per function code, the address ranges (first, last) it may touch.
    pub addresses: std::collections::BTreeMap<u8, Vec<(u16, u16)>>,
}

/// Modbus exception: illegal function.
pub const MODBUS_ILLEGAL_FUNCTION: u8 = 1;
/// Modbus exception: illegal data address.
pub const MODBUS_ILLEGAL_ADDRESS: u8 = 2;
/// Modbus exception: gateway path unavailable (a unit id not allowed).
pub const MODBUS_GATEWAY_PATH: u8 = 0x0a;

impl ModbusGuard {
    /// Why a request (unit, function, the (start, count) ranges it touches)
    /// is refused, if it is: the exception code to answer and the reason.
    pub fn refuses(&self, unit: u8, function: u8, ranges: &[(u16, u16)]) -> Option<(u8, String)> {
        let name =
            modbus_function_name(function).map_or_else(|| function.to_string(), str::to_owned);
        if !self.functions.is_empty() && !self.functions.contains(&function) {
            return Some((
                MODBUS_ILLEGAL_FUNCTION,
                format!("Modbus function {name} not allowed"),
            ));
        }
        if !self.unit_ids.is_empty() && !self.unit_ids.contains(&unit) {
            return Some((
                MODBUS_GATEWAY_PATH,
                format!("Modbus unit id {unit} not allowed"),
            ));
        }
        if let Some(allowed) = self.addresses.get(&function) {
            for &(start, count) in ranges {
                let last = u32::from(start) + u32::from(count.max(1)) - 1;
                if !allowed
                    .iter()
                    .any(|&(a, b)| u32::from(start) >= u32::from(a) && last <= u32::from(b))
                {
                    return Some((
                        MODBUS_ILLEGAL_ADDRESS,
                        format!("Modbus {name} of addresses {start}-{last} not allowed"),
                    ));
                }
            }
        }
        None
    }
}

/// The name of a Modbus function code, as a guard names it.
pub fn modbus_function_name(code: u8) -> Option<&'static str> {
    MODBUS_FUNCTIONS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(n, _)| *n)
}

/// An HL7 v2 flow's guard: the messages the device may send. Each list,
/// when not empty, must contain the message's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Hl7Guard {
    /// MSH-9 message types (`ORU^R01`, or an event-less `ACK`).
    pub message_types: Vec<String>,
    /// MSH-3 sending applications.
    pub sending_applications: Vec<String>,
    /// MSH-4 sending facilities.
    pub sending_facilities: Vec<String>,
}

impl Hl7Guard {
    /// Why a message with this type, MSH-3 and MSH-4 is refused, if it is.
    pub fn refuses(&self, message_type: &str, application: &str, facility: &str) -> Option<String> {
        let allowed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !allowed(&self.message_types, message_type) {
            return Some(format!("HL7 message type {message_type} not allowed"));
        }
        if !allowed(&self.sending_applications, application) {
            return Some(format!(
                "HL7 sending application (MSH-3) {application} not allowed"
            ));
        }
        if !allowed(&self.sending_facilities, facility) {
            return Some(format!(
                "HL7 sending facility (MSH-4) {facility} not allowed"
            ));
        }
        None
    }
}

/// Whether `s` is an HL7 message type as MSH-9 names it: `ORU^R01`, or a
/// type alone (`ACK`); three upper-case letters or digits each.
pub fn is_hl7_message_type(s: &str) -> bool {
    let part = |p: &str| {
        p.len() == 3
            && p.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    match s.split_once('^') {
        Some((t, e)) => part(t) && part(e),
        None => part(s),
    }
}

/// The justification `wardctl policy suggest` writes: validation warns
/// about it until a person writes theirs.
pub const TODO_JUSTIFICATION: &str = "TODO: say why this device must reach this address untunneled (written by wardctl policy suggest)";

/// Layer-4 protocol of a raw exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (echo and errors).
    Icmp,
}

/// Destination of a raw exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExceptionTarget {
    /// The gateway itself (e.g. DHCP relay, NTP served by the gateway).
    Gateway,
    /// An address prefix.
    Net {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
}

impl ExceptionTarget {
    /// The broadcast address DHCP discovery uses.
    pub const BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;
}

impl fmt::Display for ExceptionTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExceptionTarget::Gateway => f.write_str("gateway"),
            ExceptionTarget::Net { addr, prefix }
                if *prefix == if addr.is_ipv4() { 32 } else { 128 } =>
            {
                write!(f, "{addr}")
            }
            ExceptionTarget::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

impl Serialize for ExceptionTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Traffic allowed without a tunnel (NTP, DHCP), with a written reason.
#[derive(Debug, Clone)]
pub struct Exception {
    /// Position in the `[[exceptions]]` array.
    pub index: usize,
    /// Unique name.
    pub name: Item<String>,
    /// Devices it applies to.
    pub devices: Vec<Item<String>>,
    /// Destination.
    pub to: Item<ExceptionTarget>,
    /// Protocol.
    pub protocol: L4,
    /// Destination port (TCP/UDP); none means every port.
    pub port: Option<u16>,
    /// Why this is allowed; required.
    pub justification: Option<Item<String>>,
}

impl Policy {
    /// SPIFFE identity of a gateway.
    pub fn gateway_identity(&self, gateway: &str) -> String {
        format!("spiffe://{}/gateway/{}", self.trust_domain.value, gateway)
    }

    /// SPIFFE identity of a client by name.
    pub fn client_identity(&self, client: &str) -> String {
        format!("spiffe://{}/client/{}", self.trust_domain.value, client)
    }
}
