//! First-seen events: NFLOG group `OBSERVE_GROUP`, one message per new flow
//! (the learning chain logs only keys not yet in the set), read over
//! netlink with `netlink-packet-netfilter` on a thread of its own.
//!
//! Loss is counted, not hidden: the instance numbers its messages
//! (`NFULNL_CFG_F_SEQ`), so a gap counts the messages the kernel dropped,
//! and a receive-buffer overrun (`ENOBUFS`) counts at least one. Messages
//! are batched in the kernel (queue threshold 64, flushed after 100 ms).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigFlags, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use tracing::{info, warn};
use ward_api::observed::FlowKey;
use ward_policy::nft::{OBSERVE_GROUP, OBSERVE_PREFIX};
use ward_policy::observe::ICMP;

use super::Observer;

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max` × 2).
const RCVBUF: usize = 8 << 20;
/// Bytes of each packet copied: the IPv4 header and the first 4 bytes of
/// the transport header (ports, or ICMP type and code).
const COPY: u32 = 64;

/// Why the NFLOG reader could not start.
#[derive(Debug, thiserror::Error)]
#[error("NFLOG group {group}: {reason}")]
pub struct NflogError {
    group: u16,
    reason: String,
}

impl From<std::io::Error> for NflogError {
    fn from(e: std::io::Error) -> Self {
        err(e)
    }
}

fn err(reason: impl ToString) -> NflogError {
    NflogError {
        group: OBSERVE_GROUP,
        reason: reason.to_string(),
    }
}

fn request(
    socket: &Socket,
    family: NetfilterProtoFamily,
    group: u16,
    nlas: Vec<ConfigNla>,
) -> Result<(), NflogError> {
    let msg = config_request(family, group, nlas);
    let mut buf = vec![0; msg.header.length as usize];
    msg.serialize(&mut buf[..]);
    socket.send(&buf, 0).map_err(err)?;
    let mut rx = vec![0; 4096];
    let n = socket.recv(&mut &mut rx[..], 0).map_err(err)?;
    match <NetlinkMessage<NetfilterMessage>>::deserialize(&rx[..n]) {
        Ok(m) => match m.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(err(format!(
                "the kernel refused the configuration: {}",
                std::io::Error::from_raw_os_error(-e.code.map_or(0, |c| c.get()))
            ))),
            _ => Ok(()),
        },
        Err(e) => Err(err(format!("unreadable answer: {e}"))),
    }
}

/// Bind NFLOG group `OBSERVE_GROUP` in this network namespace.
pub fn bind() -> Result<Socket, NflogError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err)?;
    socket.bind_auto().map_err(err)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(RCVBUF);
    // Another instance holding the group (a second wardd in this
    // namespace) makes Bind fail with EBUSY.
    request(
        &socket,
        NetfilterProtoFamily::IPv4,
        OBSERVE_GROUP,
        vec![
            ConfigCmd::Bind.into(),
            ConfigFlags::SEQ.into(),
            ConfigMode::new_packet(COPY).into(),
            ConfigNla::QThresh(64),
            Timeout::from(Duration::from_millis(100)).into(),
        ],
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(err)?;
    Ok(socket)
}

/// The flow key of a logged packet: its IPv4 header and the start of the
/// transport header. `None` for anything shorter or not IPv4.
pub fn key_of(payload: &[u8]) -> Option<FlowKey> {
    let first = *payload.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let l4 = payload.get(ihl..ihl + 4)?;
    let proto = payload[9];
    let ip = |at: usize| {
        std::net::Ipv4Addr::new(
            payload[at],
            payload[at + 1],
            payload[at + 2],
            payload[at + 3],
        )
    };
    let port = if proto == ICMP {
        u16::from_be_bytes([l4[0], l4[1]])
    } else {
        u16::from_be_bytes([l4[2], l4[3]])
    };
    Some(FlowKey {
        src: ip(12),
        dst: ip(16),
        proto,
        port,
    })
}

/// Read first-seen events into `observer` until `stop` is set.
pub fn spawn_reader(
    socket: Socket,
    observer: Arc<Observer>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ward-nflog".into())
        .spawn(move || {
            info!(group = OBSERVE_GROUP, "reading first-seen events (NFLOG)");
            let mut buf = vec![0u8; 1 << 16];
            let mut expected: Option<u32> = None;
            while !stop.load(Ordering::Relaxed) {
                let n = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                        observer.nflog_lost.fetch_add(1, Ordering::Relaxed);
                        warn!("NFLOG receive buffer overrun: first-seen events lost (counts stay exact)");
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "NFLOG reader stopped");
                        return;
                    }
                };
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let mut at = 0;
                while at < n {
                    let Ok(msg) = <NetlinkMessage<NetfilterMessage>>::deserialize(&buf[at..n]) else {
                        break;
                    };
                    let len = msg.header.length as usize;
                    if let NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                        ..
                    }) = &msg.payload
                    {
                        let mut key = None;
                        let mut ours = false;
                        for nla in nlas {
                            match nla {
                                PacketNla::Payload(p) => key = key_of(p),
                                PacketNla::Prefix(p) => ours = p.to_bytes() == OBSERVE_PREFIX.as_bytes(),
                                PacketNla::Seq(seq) => {
                                    if let Some(want) = expected
                                        && *seq > want
                                    {
                                        observer.nflog_lost.fetch_add(u64::from(seq - want), Ordering::Relaxed);
                                    }
                                    expected = Some(seq.wrapping_add(1));
                                }
                                _ => {}
                            }
                        }
                        if let (true, Some(key)) = (ours, key) {
                            observer.nflog_events.fetch_add(1, Ordering::Relaxed);
                            observer.first_seen(key, now);
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    at += len;
                }
            }
        })
}

/// `ENOBUFS` on Linux.
const ENOBUFS: i32 = 105;

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys come from the header alone: ports for TCP and UDP, type and
    /// code for ICMP; short or non-IPv4 payloads give none.
    #[test]
    fn keys_from_headers() {
        let mut udp = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 2, 192, 0, 2, 123,
        ];
        udp.extend([0x9c, 0x40, 0, 123]);
        let k = key_of(&udp).expect("udp");
        assert_eq!(k.to_string(), "198.51.100.2 -> 192.0.2.123:123/udp");
        let mut icmp = udp.clone();
        icmp[9] = 1;
        icmp[20..24].copy_from_slice(&[8, 0, 0xf7, 0xff]);
        assert_eq!(key_of(&icmp).expect("icmp").port, 8 << 8);
        assert_eq!(key_of(&udp[..22]), None);
        let mut v6 = udp.clone();
        v6[0] = 0x60;
        assert_eq!(key_of(&v6), None);
        let mut bad_ihl = udp;
        bad_ihl[0] = 0x41;
        assert_eq!(key_of(&bad_ihl), None);
    }

    proptest::proptest! {
        /// Any bytes: a key or none, never a panic; a key only from a
        /// payload holding the whole IPv4 header and 4 transport bytes.
        #[test]
        fn any_payload(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if key_of(&bytes).is_some() {
                let ihl = usize::from(bytes[0] & 0x0f) * 4;
                proptest::prop_assert!(bytes[0] >> 4 == 4 && ihl >= 20 && bytes.len() >= ihl + 4);
            }
        }
    }
}
