//! Modbus/TCP requests: MBAP frames (7-byte header, length bounded by the
//! protocol), the function code and the address range a request touches
//! (never the values written), and the exception response Ward answers a
//! refused request with.

use bytes::{Bytes, BytesMut};

/// MBAP header length (transaction, protocol, length, unit id).
pub const MBAP: usize = 7;
/// Largest MBAP length field: unit id + a PDU of at most 253 bytes.
pub const MAX_LENGTH: usize = 254;

/// Why a stream is not Modbus/TCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModbusError {
    /// The protocol identifier is not 0.
    #[error("MBAP protocol id {0} (Modbus is 0)")]
    Protocol(u16),
    /// The length field is outside 2..=254.
    #[error("MBAP length {0} outside 2..=254")]
    Length(u16),
}

/// One request: header fields and the PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction id.
    pub transaction: u16,
    /// Unit id.
    pub unit: u8,
    /// Function code.
    pub function: u8,
    /// The PDU after the function code.
    pub data: Vec<u8>,
    /// The whole frame as it came.
    pub raw: Bytes,
}

/// An address range a request reads or writes: `start .. start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u16,
    /// How many.
    pub count: u16,
    /// Whether it is written.
    pub write: bool,
}

/// Splits a byte stream into requests, holding at most one partial frame
/// (bounded by the MBAP length field).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    /// Add received bytes; the complete requests they finish, in order. An
    /// error ends the stream.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Request>, ModbusError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() >= MBAP {
            let h = &self.buf[..MBAP];
            let protocol = u16::from_be_bytes([h[2], h[3]]);
            if protocol != 0 {
                return Err(ModbusError::Protocol(protocol));
            }
            let length = u16::from_be_bytes([h[4], h[5]]);
            if !(2..=MAX_LENGTH as u16).contains(&length) {
                return Err(ModbusError::Length(length));
            }
            let total = MBAP - 1 + usize::from(length);
            if self.buf.len() < total {
                break;
            }
            let frame = self.buf.split_to(total).freeze();
            out.push(Request {
                transaction: u16::from_be_bytes([frame[0], frame[1]]),
                unit: frame[6],
                function: frame[7],
                data: frame[8..].to_vec(),
                raw: frame,
            });
        }
        Ok(out)
    }
}

impl Request {
    /// The ranges the request touches, for the functions that address
    /// data (1-6, 15, 16, 22, 23); none for the others, or when the PDU
    /// is too short to say.
    pub fn ranges(&self) -> Vec<Range> {
        let word = |at: usize| {
            self.data
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        let range = |at: usize, write: bool| {
            Some(Range {
                start: word(at)?,
                count: word(at + 2)?,
                write,
            })
        };
        let one = |write: bool| {
            Some(Range {
                start: word(0)?,
                count: 1,
                write,
            })
        };
        match self.function {
            1..=4 => range(0, false).into_iter().collect(),
            5 | 6 | 22 => one(true).into_iter().collect(),
            15 | 16 => range(0, true).into_iter().collect(),
            23 => range(0, false).into_iter().chain(range(4, true)).collect(),
            _ => Vec::new(),
        }
    }

    /// The exception response to this request (`code`: 1 illegal function,
    /// 2 illegal data address, 0x0a gateway path unavailable).
    pub fn exception(&self, code: u8) -> Vec<u8> {
        let t = self.transaction.to_be_bytes();
        vec![
            t[0],
            t[1],
            0,
            0,
            0,
            3,
            self.unit,
            self.function | 0x80,
            code,
        ]
    }
}

/// Modbus function names, as a guard names them.
pub fn function_name(code: u8) -> Option<&'static str> {
    ward_policy::model::modbus_function_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut v = tid.to_be_bytes().to_vec();
        v.extend([0, 0]);
        v.extend(((pdu.len() + 1) as u16).to_be_bytes());
        v.push(unit);
        v.extend_from_slice(pdu);
        v
    }

    /// Requests come out whole however the bytes are split; ranges by
    /// function; the exception answers the same transaction and unit.
    #[test]
    fn requests_and_ranges() {
        let read = frame(7, 1, &[3, 0, 10, 0, 4]);
        let write = frame(8, 1, &[6, 0, 20, 0x12, 0x34]);
        let rw = frame(9, 2, &[23, 0, 1, 0, 2, 0, 30, 0, 1, 2, 0, 0]);
        let bytes = [read.clone(), write, rw].concat();
        for split in 0..bytes.len() {
            let mut f = Framer::default();
            let mut out = f.push(&bytes[..split]).expect("first part");
            out.extend(f.push(&bytes[split..]).expect("second part"));
            assert_eq!(out.len(), 3, "split at {split}");
        }
        let out = Framer::default().push(&bytes).expect("all");
        assert_eq!(
            out[0].ranges(),
            [Range {
                start: 10,
                count: 4,
                write: false
            }]
        );
        assert_eq!(
            out[1].ranges(),
            [Range {
                start: 20,
                count: 1,
                write: true
            }]
        );
        assert_eq!(
            out[2].ranges(),
            [
                Range {
                    start: 1,
                    count: 2,
                    write: false
                },
                Range {
                    start: 30,
                    count: 1,
                    write: true
                }
            ]
        );
        assert_eq!(out[1].exception(1), [0, 8, 0, 0, 0, 3, 1, 0x86, 1]);
        for (r, raw) in out
            .iter()
            .zip([&read, &frame(8, 1, &[6, 0, 20, 0x12, 0x34])])
        {
            assert_eq!(&r.raw[..], &raw[..], "passed on as sent");
        }
        assert_eq!(
            function_name(out[0].function),
            Some("read-holding-registers")
        );
    }

    /// A wrong protocol id and a length the protocol does not allow end the
    /// stream before anything is buffered for them.
    #[test]
    fn malformed_headers() {
        assert_eq!(
            Framer::default().push(&[0, 1, 0, 9, 0, 6, 1]),
            Err(ModbusError::Protocol(9))
        );
        assert_eq!(
            Framer::default().push(&[0, 1, 0, 0, 0xff, 0xff, 1]),
            Err(ModbusError::Length(0xffff))
        );
        assert_eq!(
            Framer::default().push(&[0, 1, 0, 0, 0, 1, 1]),
            Err(ModbusError::Length(1))
        );
        // Too short a PDU to name its range: none.
        let short = Framer::default()
            .push(&frame(1, 1, &[3, 0]))
            .expect("frame");
        assert!(short[0].ranges().is_empty());
    }

    proptest::proptest! {
        /// Any bytes: requests or an error, never a panic; the buffer never
        /// holds more than one frame's worth.
        #[test]
        fn any_stream(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut f = Framer::default();
            if let Ok(reqs) = f.push(&bytes) {
                proptest::prop_assert!(f.buf.len() < MBAP - 1 + MAX_LENGTH);
                for r in reqs {
                    let _ = r.ranges();
                    proptest::prop_assert!(r.data.len() < MAX_LENGTH);
                }
            }
        }
    }
}
