//! The `ward/1` tunnel protocol: one open frame from the opener, one answer
//! from the receiver, then the flow's bytes.
//!
//! ```text
//! frame   = len:u16be body[len]                  len ≤ MAX_FRAME
//! open    = version:u8 (1) type:u8 (1)
//!           flow_len:u8 flow[flow_len]           UTF-8, 1..=64 bytes
//!           device_len:u8 device[device_len]     UTF-8, 1..=64 bytes
//!           family:u8 (4 | 6) addr[4 | 16] port:u16be   original source
//! accept  = version:u8 (1) type:u8 (2)
//! deny    = version:u8 (1) type:u8 (3) code:u8   DenyReason::code
//! ```
//!
//! The receiver answers before any payload moves; the opener sends payload
//! only after an accept. Frames are parsed strictly: trailing bytes, unknown
//! versions or types and oversized lengths are errors, never guesses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version spoken here.
pub const VERSION: u8 = 1;
/// Largest frame body accepted. An open frame is at most 2+1+64+1+64+1+16+2 bytes.
pub const MAX_FRAME: usize = 256;
/// Longest flow or device name on the wire.
pub const MAX_NAME: usize = 64;

const TYPE_OPEN: u8 = 1;
const TYPE_ACCEPT: u8 = 2;
const TYPE_DENY: u8 = 3;

/// A malformed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame ended early.
    #[error("frame truncated")]
    Truncated,
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not version 1.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Unknown frame type, or not the type expected here.
    #[error("unexpected frame type {0}")]
    Type(u8),
    /// A name is empty, too long or not UTF-8.
    #[error("bad name field")]
    Name,
    /// Address family other than 4 or 6.
    #[error("bad address family {0}")]
    Family(u8),
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// The opener's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Flow name from the policy.
    pub flow: String,
    /// Source device id.
    pub device: String,
    /// The device's original source address.
    pub source: SocketAddr,
}

/// The receiver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Go ahead.
    Accept,
    /// Refused, with a reason.
    Deny(DenyReason),
}

/// Why a receiver refused a tunnel, with its stable wire code. Codes 1-99
/// are policy decisions, 100 and up the receiver's own conditions; a code
/// this version does not know is kept as [`DenyReason::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// No flow for this source and destination.
    #[error("no flow for this source and destination")]
    NoRoute,
    /// The device is quarantined.
    #[error("device is quarantined")]
    Quarantined,
    /// The receiver knows no such flow.
    #[error("flow is not known to the peer")]
    UnknownFlow,
    /// This gateway's identity may not open the flow there.
    #[error("peer identity may not open this flow")]
    WrongPeer,
    /// The device named does not match the flow.
    #[error("source device does not match the flow")]
    WrongDevice,
    /// Outside the flow's maintenance window.
    #[error("outside the flow's maintenance window")]
    OutsideWindow,
    /// The receiver could not connect the flow's target.
    #[error("peer could not reach the target")]
    TargetUnreachable,
    /// The receiver's connection limit for the flow was reached.
    #[error("peer's connection limit reached")]
    Limit,
    /// The receiver is shutting down and takes no new tunnels.
    #[error("peer is shutting down")]
    ShuttingDown,
    /// A code this version does not know.
    #[error("code {0}")]
    Unknown(u8),
}

impl DenyReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            DenyReason::NoRoute => 1,
            DenyReason::Quarantined => 2,
            DenyReason::UnknownFlow => 3,
            DenyReason::WrongPeer => 4,
            DenyReason::WrongDevice => 5,
            DenyReason::OutsideWindow => 6,
            DenyReason::TargetUnreachable => 100,
            DenyReason::Limit => 101,
            DenyReason::ShuttingDown => 102,
            DenyReason::Unknown(c) => c,
        }
    }

    /// The reason for a wire code.
    pub fn from_code(code: u8) -> DenyReason {
        match code {
            1 => DenyReason::NoRoute,
            2 => DenyReason::Quarantined,
            3 => DenyReason::UnknownFlow,
            4 => DenyReason::WrongPeer,
            5 => DenyReason::WrongDevice,
            6 => DenyReason::OutsideWindow,
            100 => DenyReason::TargetUnreachable,
            101 => DenyReason::Limit,
            102 => DenyReason::ShuttingDown,
            c => DenyReason::Unknown(c),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn name(&mut self) -> Result<String, FrameError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        if len == 0 || len > MAX_NAME {
            return Err(FrameError::Name);
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Name)
    }
}

fn header(c: &mut Cursor<'_>) -> Result<u8, FrameError> {
    let v = c.u8()?;
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    c.u8()
}

impl Open {
    /// Encode as a whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![VERSION, TYPE_OPEN];
        for name in [&self.flow, &self.device] {
            let b = name.as_bytes();
            debug_assert!(!b.is_empty() && b.len() <= MAX_NAME, "names are policy ids");
            body.push(b.len().min(MAX_NAME) as u8);
            body.extend_from_slice(&b[..b.len().min(MAX_NAME)]);
        }
        match self.source.ip() {
            IpAddr::V4(a) => {
                body.push(4);
                body.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                body.push(6);
                body.extend_from_slice(&a.octets());
            }
        }
        body.extend_from_slice(&self.source.port().to_be_bytes());
        frame(body)
    }

    /// Decode a frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Open, FrameError> {
        let mut c = Cursor { buf: body };
        let t = header(&mut c)?;
        if t != TYPE_OPEN {
            return Err(FrameError::Type(t));
        }
        let flow = c.name()?;
        let device = c.name()?;
        let ip = match c.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(c.take(4)?).expect("took 4"),
            )),
            6 => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(c.take(16)?).expect("took 16"),
            )),
            f => return Err(FrameError::Family(f)),
        };
        let port = u16::from_be_bytes(<[u8; 2]>::try_from(c.take(2)?).expect("took 2"));
        if !c.buf.is_empty() {
            return Err(FrameError::Trailing(c.buf.len()));
        }
        Ok(Open {
            flow,
            device,
            source: SocketAddr::new(ip, port),
        })
    }
}

impl Answer {
    /// Encode as a whole frame.
    pub fn encode(self) -> Vec<u8> {
        frame(match self {
            Answer::Accept => vec![VERSION, TYPE_ACCEPT],
            Answer::Deny(reason) => vec![VERSION, TYPE_DENY, reason.code()],
        })
    }

    /// Decode a frame body.
    pub fn decode(body: &[u8]) -> Result<Answer, FrameError> {
        let mut c = Cursor { buf: body };
        let answer = match header(&mut c)? {
            TYPE_ACCEPT => Answer::Accept,
            TYPE_DENY => Answer::Deny(DenyReason::from_code(c.u8()?)),
            t => return Err(FrameError::Type(t)),
        };
        if !c.buf.is_empty() {
            return Err(FrameError::Trailing(c.buf.len()));
        }
        Ok(answer)
    }
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or ended.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The frame is malformed.
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Read one frame body; the length is checked before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Write a whole frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    w.write_all(frame).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every deny code survives decoding and encoding, known to this version or not.
    #[test]
    fn deny_codes_round_trip() {
        for c in 0..=u8::MAX {
            assert_eq!(DenyReason::from_code(c).code(), c);
        }
        assert_eq!(DenyReason::from_code(4), DenyReason::WrongPeer);
    }

    fn open() -> Open {
        Open {
            flow: "ct2-to-pacs".into(),
            device: "ct-scanner-2".into(),
            source: "198.51.100.2:40000".parse().expect("addr"),
        }
    }

    /// An open frame survives encode and decode.
    #[test]
    fn roundtrip() {
        let f = open().encode();
        assert_eq!(usize::from(u16::from_be_bytes([f[0], f[1]])), f.len() - 2);
        assert_eq!(Open::decode(&f[2..]), Ok(open()));
        for a in [
            Answer::Accept,
            Answer::Deny(DenyReason::WrongPeer),
            Answer::Deny(DenyReason::Unknown(77)),
        ] {
            assert_eq!(Answer::decode(&a.encode()[2..]), Ok(a));
        }
    }

    /// Every prefix of a valid frame is reported as truncated.
    #[test]
    fn truncated() {
        let f = open().encode();
        for n in 0..f.len() - 2 {
            assert_eq!(
                Open::decode(&f[2..2 + n]),
                Err(FrameError::Truncated),
                "prefix {n}"
            );
        }
    }

    /// Wrong version, wrong type, bad family, empty name, trailing bytes.
    #[test]
    fn malformed() {
        let body = open().encode()[2..].to_vec();
        let mut v = body.clone();
        v[0] = 2;
        assert_eq!(Open::decode(&v), Err(FrameError::Version(2)));
        let mut t = body.clone();
        t[1] = 9;
        assert_eq!(Open::decode(&t), Err(FrameError::Type(9)));
        assert_eq!(
            Open::decode(&Answer::Accept.encode()[2..]),
            Err(FrameError::Type(2))
        );
        let mut empty = vec![1, 1, 0];
        empty.extend_from_slice(&body[3..]);
        assert_eq!(Open::decode(&empty), Err(FrameError::Name));
        let fam = body.len() - 7;
        let mut f = body.clone();
        f[fam] = 5;
        assert_eq!(Open::decode(&f), Err(FrameError::Family(5)));
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(Open::decode(&trailing), Err(FrameError::Trailing(1)));
        let mut bad_utf8 = body;
        bad_utf8[3] = 0xff;
        assert_eq!(Open::decode(&bad_utf8), Err(FrameError::Name));
    }

    /// A length prefix over the limit is refused before reading the body.
    #[tokio::test]
    async fn oversized_refused_early() {
        let mut data: &[u8] = &[0xff, 0xff, 1, 1];
        match read_frame(&mut data).await {
            Err(ReadError::Frame(FrameError::TooLarge(65535))) => {}
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Arbitrary bytes never panic the parsers.
        #[test]
        fn fuzz_decode(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Open::decode(&body);
            let _ = Answer::decode(&body);
        }

        /// Valid opens with arbitrary names and addresses round-trip.
        #[test]
        fn fuzz_roundtrip(flow in "[a-z0-9-]{1,64}", device in "[a-z0-9_-]{1,64}", v6 in any::<bool>(), a in any::<u128>(), port in any::<u16>()) {
            let ip = if v6 { IpAddr::V6(Ipv6Addr::from(a)) } else { IpAddr::V4(Ipv4Addr::from(a as u32)) };
            let o = Open { flow, device, source: SocketAddr::new(ip, port) };
            let f = o.encode();
            prop_assert!(f.len() - 2 <= MAX_FRAME);
            prop_assert_eq!(Open::decode(&f[2..]), Ok(o));
        }

        /// Single-byte corruptions of a valid frame are either rejected or
        /// decode to a well-formed open; never a panic.
        #[test]
        fn fuzz_mutate(pos in 0usize..40, byte in any::<u8>()) {
            let mut f = open().encode()[2..].to_vec();
            let pos = pos % f.len();
            f[pos] = byte;
            if let Ok(o) = Open::decode(&f) {
                prop_assert!(!o.flow.is_empty() && !o.device.is_empty());
            }
        }
    }
}
