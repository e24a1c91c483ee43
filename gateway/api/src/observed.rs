//! `GET /v1/observed`: what each device behind a gateway was seen talking
//! to (learning mode). The same document is what `wardctl observe export`
//! writes and what `wardctl policy suggest` and `policy simulate` read, so
//! it carries everything they need: the gateway, the mode, each device's
//! address and class, and per flow its key, counts, times and the verdict
//! the running policy gave.

use serde::{Deserialize, Serialize};
pub use ward_policy::observe::{Direction, FlowKey, Judgement};

/// Format version of [`Observed`].
pub const FORMAT: u32 = 1;

/// `GET /v1/observed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// [`FORMAT`].
    pub format: u32,
    /// The gateway that observed.
    pub gateway: String,
    /// Its mode when the document was made (`monitor` or `enforce`).
    pub mode: String,
    /// Revision of the plan the verdicts were given by.
    pub revision: String,
    /// When the document was made (Unix seconds).
    pub at: u64,
    /// First-seen events lost between the kernel and the daemon (NFLOG
    /// sequence gaps and receive-buffer overruns). Counts stay exact: the
    /// learning sets hold them; only first-seen times get coarser.
    pub nflog_lost: u64,
    /// First-seen events received since wardd started.
    #[serde(default)]
    pub nflog_events: u64,
    /// Per device.
    pub devices: Vec<ObservedDevice>,
    /// What each flow's protocol said, where the gateway read it (guarded
    /// flows; unguarded DICOM, HL7 and Modbus flows in monitor mode with
    /// learning on), kept in the learning store across restarts.
    #[serde(default)]
    pub facts: Vec<FlowFacts>,
}

/// The protocol facts of one flow, by the guard key that would allow them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFacts {
    /// The flow.
    pub flow: String,
    /// Guard key (`calling_ae_titles`, `called_ae_titles`, `sop_classes`
    /// (UIDs), `commands`, `message_types`, `sending_applications`,
    /// `sending_facilities`, `functions`, `unit_ids`) to the values seen.
    pub values: std::collections::BTreeMap<String, Vec<String>>,
    /// Values not kept (at most 64 a key).
    #[serde(default)]
    pub dropped: u64,
}

/// One device's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedDevice {
    /// Device id.
    pub id: String,
    /// Its address.
    pub ip: String,
    /// Its class in the inventory, if any (suggestions group by it).
    #[serde(default)]
    pub class: Option<String>,
    /// Flows seen at the packet level.
    pub flows: Vec<ObservedFlow>,
    /// Connections the gateway carried for the device (its tunnels and
    /// access legs).
    #[serde(default)]
    pub tunnels: Vec<ObservedTunnel>,
    /// Packets the full learning set could not record (exact).
    pub overflow_packets: u64,
    /// Flows the daemon's bounded store dropped (oldest last seen first).
    pub evicted: u64,
}

/// One flow of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    /// Source, destination, protocol, port (or ICMP type × 256 + code).
    pub key: FlowKey,
    /// Which way, seen from the device.
    pub direction: Direction,
    /// First seen (Unix seconds).
    pub first_seen: u64,
    /// Last seen (Unix seconds).
    pub last_seen: u64,
    /// Packets in the original direction.
    pub packets: u64,
    /// Bytes in the original direction (IP headers included).
    pub bytes: u64,
    /// What the policy in force did with it.
    pub verdict: Verdict,
}

/// What the policy in force did with a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `allowed`, `would-drop` (monitor mode), `dropped`, `quarantined`.
    pub action: String,
    /// The rule that decided.
    pub by: Judgement,
}

impl Verdict {
    /// The verdict of `by` in `mode` (`monitor` accepts what enforce drops).
    pub fn of(by: Judgement, monitor: bool) -> Verdict {
        let action = match &by {
            Judgement::Flow(_) | Judgement::Exception(_) => "allowed",
            Judgement::Quarantined => "quarantined",
            Judgement::Denied if monitor => "would-drop",
            Judgement::Denied => "dropped",
        };
        Verdict {
            action: action.to_owned(),
            by,
        }
    }
}

/// Connections the gateway carried for a device, per flow and peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTunnel {
    /// The flow.
    pub flow: String,
    /// The leg (`outbound`, `tunnel`, `access`).
    pub leg: String,
    /// The far end: the peer gateway or client identity, or the target.
    pub peer: String,
    /// Connections.
    pub connections: u64,
    /// Bytes towards the far end.
    pub bytes_up: u64,
    /// Bytes towards the device.
    pub bytes_down: u64,
    /// First connection (Unix seconds).
    pub first_seen: u64,
    /// Last connection ended or started (Unix seconds).
    pub last_seen: u64,
}
