//! HL7 v2 over MLLP: frames (`0x0B` message `0x1C 0x0D`), the MSH header a
//! guard decides on (MSH-3/4 sending application and facility, MSH-9
//! message type, MSH-10 control id; nothing else is read, so no patient
//! data is ever looked at), and the `MSA|AR` acknowledgement Ward answers
//! a refused message with.

use bytes::BytesMut;

/// MLLP start block.
pub const SB: u8 = 0x0b;
/// MLLP end block (followed by a carriage return).
pub const EB: u8 = 0x1c;
/// Largest message accepted (bytes between the blocks).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Why a byte stream is not MLLP, or a message has no usable MSH.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7Error {
    /// Bytes outside a frame (MLLP allows none).
    #[error("byte 0x{0:02x} outside an MLLP frame")]
    OutsideFrame(u8),
    /// The end block is not followed by a carriage return.
    #[error("MLLP end block without its carriage return")]
    BadEnd,
    /// A message longer than [`MAX_MESSAGE`].
    #[error("HL7 message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// The message does not start with a valid MSH segment.
    #[error("no MSH segment: {0}")]
    NoMsh(&'static str),
}

/// Where a [`Framer`] is in the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: only a start block may come.
    #[default]
    Between,
    /// Inside a message.
    In,
    /// After an end block: its carriage return must come.
    Cr,
}

/// Splits a byte stream into MLLP messages, holding at most one partial
/// message (bounded by [`MAX_MESSAGE`]).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
    state: State,
}

impl Framer {
    /// Add received bytes; the complete messages they finish (without the
    /// blocks), in order. An error ends the stream.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, Hl7Error> {
        let mut out = Vec::new();
        while let Some(&first) = data.first() {
            match self.state {
                State::Between if first == SB => {
                    self.state = State::In;
                    data = &data[1..];
                }
                State::Between => return Err(Hl7Error::OutsideFrame(first)),
                State::In => {
                    let (body, end) = match data.iter().position(|&b| b == EB) {
                        Some(i) => (&data[..i], true),
                        None => (data, false),
                    };
                    if self.buf.len() + body.len() > MAX_MESSAGE {
                        return Err(Hl7Error::TooLong);
                    }
                    self.buf.extend_from_slice(body);
                    data = &data[body.len() + usize::from(end)..];
                    if end {
                        self.state = State::Cr;
                    }
                }
                State::Cr if first == b'\r' => {
                    data = &data[1..];
                    out.push(std::mem::take(&mut self.buf).to_vec());
                    self.state = State::Between;
                }
                State::Cr => return Err(Hl7Error::BadEnd),
            }
        }
        Ok(out)
    }
}

/// What a guard reads of a message: MSH-3, -4, -5, -6, -9 (first two
/// components, e.g. `ORU^R01`), -10, -11, -12.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msh {
    /// MSH-1.
    pub field_sep: char,
    /// MSH-2.
    pub encoding: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-9, its first two components joined by `^` (`ORU^R01`).
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11.
    pub processing_id: String,
    /// MSH-12.
    pub version: String,
}

/// Longest MSH read; the rest of the message is never looked at.
const MAX_MSH: usize = 1024;

/// Parse the MSH segment that starts `message`.
pub fn parse_msh(message: &[u8]) -> Result<Msh, Hl7Error> {
    let end = message
        .iter()
        .take(MAX_MSH)
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(message.len().min(MAX_MSH));
    let seg = std::str::from_utf8(&message[..end]).map_err(|_| Hl7Error::NoMsh("not text"))?;
    let rest = seg
        .strip_prefix("MSH")
        .ok_or(Hl7Error::NoMsh("does not start with MSH"))?;
    let field_sep = rest
        .chars()
        .next()
        .ok_or(Hl7Error::NoMsh("no field separator"))?;
    if field_sep.is_alphanumeric() || field_sep.is_whitespace() {
        return Err(Hl7Error::NoMsh("bad field separator"));
    }
    // fields[0] is MSH-2: MSH-1 is the separator itself.
    let fields: Vec<&str> = rest[field_sep.len_utf8()..].split(field_sep).collect();
    let encoding = fields[0];
    let component = encoding
        .chars()
        .next()
        .ok_or(Hl7Error::NoMsh("no encoding characters"))?;
    let field = |n: usize| fields.get(n - 2).copied().unwrap_or_default().to_owned();
    let msh9 = field(9);
    let mut parts = msh9.split(component);
    let message_type = match (parts.next(), parts.next()) {
        (Some(t), Some(e)) if !t.is_empty() => format!("{t}^{e}"),
        (Some(t), None) if !t.is_empty() => t.to_owned(),
        _ => return Err(Hl7Error::NoMsh("no message type (MSH-9)")),
    };
    Ok(Msh {
        field_sep,
        encoding: encoding.to_owned(),
        sending_application: field(3),
        sending_facility: field(4),
        receiving_application: field(5),
        receiving_facility: field(6),
        message_type,
        control_id: field(10),
        processing_id: field(11),
        version: field(12),
    })
}

/// The framed `MSA|AR` acknowledgement of a refused message: sender and
/// receiver swapped, Ward as the sending application, `reason` in the ERR
/// segment (HL7 error 207, application internal error, and the text).
/// `now` is the message time (`YYYYMMDDHHMMSS`).
pub fn reject_ack(msh: &Msh, reason: &str, now: &str) -> Vec<u8> {
    let f = msh.field_sep;
    let c = msh.encoding.chars().next().unwrap_or('^');
    // Delimiters inside the reason are escaped the HL7 way (\F\, \S\, \R\,
    // \E\, \T\); control characters become spaces.
    let enc: Vec<char> = msh.encoding.chars().collect();
    let esc = enc.get(2).copied().unwrap_or('\\');
    let mut clean = String::with_capacity(reason.len());
    for ch in reason.chars() {
        let code = if ch == f {
            Some('F')
        } else if Some(&ch) == enc.first() {
            Some('S')
        } else if Some(&ch) == enc.get(1) {
            Some('R')
        } else if Some(&ch) == enc.get(2) {
            Some('E')
        } else if Some(&ch) == enc.get(3) {
            Some('T')
        } else {
            None
        };
        match code {
            Some(c) => {
                clean.push(esc);
                clean.push(c);
                clean.push(esc);
            }
            None if ch.is_control() => clean.push(' '),
            None => clean.push(ch),
        }
    }
    let version = if msh.version.is_empty() {
        "2.5"
    } else {
        &msh.version
    };
    let processing = if msh.processing_id.is_empty() {
        "P"
    } else {
        &msh.processing_id
    };
    let trigger = msh.message_type.split('^').nth(1).unwrap_or_default();
    let text = format!(
        "MSH{f}{enc}{f}WARD{f}{fac}{f}{app}{f}{sfac}{f}{now}{f}{f}ACK{c}{trigger}{f}WARD{ctl}{f}{processing}{f}{version}\r\
         MSA{f}AR{f}{ctl}{f}{clean}\r\
         ERR{f}{f}{f}207{c}Application internal error{c}HL70357{f}E{f}{f}{clean}\r",
        enc = msh.encoding,
        fac = msh.receiving_facility,
        app = msh.sending_application,
        sfac = msh.sending_facility,
        ctl = msh.control_id,
    );
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(SB);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&[EB, b'\r']);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LVP200|ICU|ENGINE|HOSP|20261205120000||ORU^R01^ORU_R01|CTRL42|P|2.5\rPID|1||12345^^^H||DOE^JANE\rOBX|1|NM|rate||12|mL/h\r";

    fn framed(m: &str) -> Vec<u8> {
        let mut v = vec![SB];
        v.extend_from_slice(m.as_bytes());
        v.extend_from_slice(&[EB, b'\r']);
        v
    }

    /// Messages come out whole however the bytes are split, the blocks
    /// removed; two messages in one read come out as two.
    #[test]
    fn frames_across_reads() {
        let bytes = [framed(ORU), framed(ORU)].concat();
        for split in 0..bytes.len() {
            let mut f = Framer::default();
            let mut out = f.push(&bytes[..split]).expect("first part");
            out.extend(f.push(&bytes[split..]).expect("second part"));
            assert_eq!(out.len(), 2, "split at {split}");
            assert!(out.iter().all(|m| m == ORU.as_bytes()), "split at {split}");
        }
    }

    /// Bytes outside a frame, an end block without its carriage return and
    /// an oversized message end the stream, each with its reason.
    #[test]
    fn malformed_streams() {
        assert_eq!(
            Framer::default().push(b"MSH|"),
            Err(Hl7Error::OutsideFrame(b'M'))
        );
        assert_eq!(
            Framer::default().push(&[SB, b'x', EB, b'x']),
            Err(Hl7Error::BadEnd)
        );
        let mut f = Framer::default();
        assert!(f.push(&[SB, b'x', EB]).expect("partial").is_empty());
        assert_eq!(f.push(b"x"), Err(Hl7Error::BadEnd));
        let mut f = Framer::default();
        let big = vec![b'a'; MAX_MESSAGE];
        assert!(f.push(&[SB]).is_ok() && f.push(&big).is_ok());
        assert_eq!(f.push(b"a"), Err(Hl7Error::TooLong));
    }

    /// The header fields a guard reads, and nothing past MSH.
    #[test]
    fn msh_fields() {
        let m = parse_msh(ORU.as_bytes()).expect("msh");
        assert_eq!(m.message_type, "ORU^R01");
        assert_eq!(
            (m.sending_application.as_str(), m.sending_facility.as_str()),
            ("LVP200", "ICU")
        );
        assert_eq!(
            (m.control_id.as_str(), m.version.as_str()),
            ("CTRL42", "2.5")
        );
        assert_eq!(
            parse_msh(b"PID|1"),
            Err(Hl7Error::NoMsh("does not start with MSH"))
        );
        assert_eq!(
            parse_msh(b"MSH|^~\\&|A|B|C|D|20260101||"),
            Err(Hl7Error::NoMsh("no message type (MSH-9)"))
        );
        let other = parse_msh(b"MSH#$~\\&#A#B#C#D#1##ADT$A08#9#P#2.3").expect("other separators");
        assert_eq!(other.message_type, "ADT^A08");
    }

    /// The refusal is one frame, an ACK to the sender's control id with AR,
    /// and says why without breaking the segment.
    #[test]
    fn reject_ack_is_an_ar() {
        let m = parse_msh(ORU.as_bytes()).expect("msh");
        let ack = reject_ack(
            &m,
            "message type ORU^R01 not allowed | by guard",
            "20261205120001",
        );
        let mut f = Framer::default();
        let frames = f.push(&ack).expect("one frame");
        assert_eq!(frames.len(), 1);
        let text = String::from_utf8(frames[0].clone()).expect("text");
        let back = parse_msh(text.as_bytes()).expect("an ACK's MSH");
        assert_eq!(back.message_type, "ACK^R01");
        assert_eq!(back.sending_application, "WARD");
        assert_eq!(back.receiving_application, "LVP200");
        assert!(
            text.contains("\rMSA|AR|CTRL42|message type ORU\\S\\R01 not allowed \\F\\ by guard\r"),
            "{text}"
        );
        assert!(!text.contains("DOE"), "patient data in the ACK");
    }

    proptest::proptest! {
        /// Any bytes, split anywhere: messages or an error, never a panic,
        /// and never a message longer than the bound.
        #[test]
        fn any_stream(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..600) {
            let cut = cut.min(bytes.len());
            let mut f = Framer::default();
            if let Ok(a) = f.push(&bytes[..cut]) {
                for m in a.iter().chain(f.push(&bytes[cut..]).unwrap_or_default().iter()) {
                    proptest::prop_assert!(m.len() <= MAX_MESSAGE);
                    let _ = parse_msh(m);
                }
            }
        }
    }
}
