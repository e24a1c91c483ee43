//! A guard in the relay: the device's direction passes through
//! [`GuardedUp`], which forwards whole allowed messages (HL7) or requests
//! (Modbus) only and hands the refusal it answers to the other direction;
//! the server's direction passes through [`Injecting`], which writes those
//! refusals to the device between the server's own messages, never inside
//! one. Without a guard both are plain pass-throughs.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use ward_policy::model::{Guard, Hl7Guard, ModbusGuard};

use super::hl7::{self, EB, SB};
use super::modbus;
use crate::transport::relay::Source;

/// What a guard tells the gateway about a message it refused (or, in
/// monitor mode, would refuse): the reason, naming only header facts.
pub type Report = Arc<dyn Fn(&str) + Send + Sync>;

/// The device's direction of a guarded flow.
pub struct GuardedUp<S> {
    inner: S,
    guard: Option<Checker>,
}

struct Checker {
    rules: Rules,
    answer: Answer,
}

/// How refusals are told and answered.
struct Answer {
    monitor: bool,
    replies: mpsc::UnboundedSender<Bytes>,
    report: Report,
}

enum Rules {
    Hl7(Hl7Guard, hl7::Framer),
    Modbus(ModbusGuard, modbus::Framer),
}

/// The server's direction of a guarded flow.
pub struct Injecting<S> {
    inner: S,
    replies: Option<mpsc::UnboundedReceiver<Bytes>>,
    /// Where the server's stream is: between messages, refusals may go.
    at: Boundary,
}

/// Where a server's stream is, message-wise.
enum Boundary {
    /// MLLP: between frames, and inside one.
    Mllp { between: bool, in_frame: bool },
    /// MBAP: header bytes seen of the next frame, body bytes still to come.
    Mbap {
        header: [u8; modbus::MBAP],
        have: usize,
        remaining: usize,
    },
}

impl Boundary {
    fn between(&self) -> bool {
        match self {
            Boundary::Mllp { between, .. } => *between,
            Boundary::Mbap {
                have, remaining, ..
            } => *have == 0 && *remaining == 0,
        }
    }

    fn track(&mut self, data: &[u8]) {
        match self {
            Boundary::Mllp { between, in_frame } => {
                for &b in data {
                    match b {
                        SB => {
                            *in_frame = true;
                            *between = false;
                        }
                        EB if *in_frame => *in_frame = false,
                        b'\r' if !*in_frame => *between = true,
                        _ => {}
                    }
                }
            }
            Boundary::Mbap {
                header,
                have,
                remaining,
            } => {
                let mut data = data;
                while !data.is_empty() {
                    if *remaining > 0 {
                        let take = (*remaining).min(data.len());
                        *remaining -= take;
                        data = &data[take..];
                    } else {
                        header[*have] = data[0];
                        *have += 1;
                        data = &data[1..];
                        if *have == modbus::MBAP {
                            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                            *remaining = len.saturating_sub(1);
                            *have = 0;
                        }
                    }
                }
            }
        }
    }
}

/// Wrap both directions; with `guard` none, they pass everything through.
/// `report` hears of every refusal; in `monitor` mode refused messages pass.
pub fn wrap<U: Source, D: Source>(
    up: U,
    down: D,
    guard: Option<(Guard, Report)>,
    monitor: bool,
) -> (GuardedUp<U>, Injecting<D>) {
    let Some((guard, report)) = guard else {
        return (
            GuardedUp {
                inner: up,
                guard: None,
            },
            Injecting {
                inner: down,
                replies: None,
                at: Boundary::Mllp {
                    between: true,
                    in_frame: false,
                },
            },
        );
    };
    let (rules, at) = match guard {
        Guard::Hl7(g) => (
            Rules::Hl7(g, hl7::Framer::default()),
            Boundary::Mllp {
                between: true,
                in_frame: false,
            },
        ),
        Guard::Modbus(g) => (
            Rules::Modbus(g, modbus::Framer::default()),
            Boundary::Mbap {
                header: [0; modbus::MBAP],
                have: 0,
                remaining: 0,
            },
        ),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    (
        GuardedUp {
            inner: up,
            guard: Some(Checker {
                rules,
                answer: Answer {
                    monitor,
                    replies: tx,
                    report,
                },
            }),
        },
        Injecting {
            inner: down,
            replies: Some(rx),
            at,
        },
    )
}

fn framed(message: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(message.len() + 3);
    v.push(SB);
    v.extend_from_slice(message);
    v.extend_from_slice(&[EB, b'\r']);
    Bytes::from(v)
}

fn now_hl7() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Answer {
    /// The stream is not the protocol: reported, and the connection ends.
    fn invalid(&self, e: impl std::fmt::Display) -> std::io::Error {
        (self.report)(&format!("stream refused: {e}"));
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }

    /// A refused message or request: reported; passed in monitor mode,
    /// else answered with `answer` (built only then).
    fn refuse(
        &self,
        reason: &str,
        pass: Bytes,
        answer: impl FnOnce() -> Vec<u8>,
        out: &mut Vec<Bytes>,
    ) {
        if self.monitor {
            (self.report)(&format!("{reason} (monitor mode: passed)"));
            out.push(pass);
        } else {
            (self.report)(reason);
            // The other direction may be gone; the device then sees the
            // connection end without an answer.
            let _ = self.replies.send(Bytes::from(answer()));
        }
    }
}

impl Checker {
    /// Judge the complete messages `data` finishes; allowed ones go to `out`.
    fn check(&mut self, data: &[u8], out: &mut Vec<Bytes>) -> std::io::Result<()> {
        let Checker { rules, answer } = self;
        match rules {
            Rules::Hl7(guard, framer) => {
                let messages = match framer.push(data) {
                    Ok(m) => m,
                    Err(e) => return Err(answer.invalid(e)),
                };
                for m in messages {
                    let msh = hl7::parse_msh(&m).map_err(|e| answer.invalid(e))?;
                    match guard.refuses(
                        &msh.message_type,
                        &msh.sending_application,
                        &msh.sending_facility,
                    ) {
                        None => out.push(framed(&m)),
                        Some(reason) => answer.refuse(
                            &reason,
                            framed(&m),
                            || hl7::reject_ack(&msh, &reason, &now_hl7()),
                            out,
                        ),
                    }
                }
            }
            Rules::Modbus(guard, framer) => {
                let requests = match framer.push(data) {
                    Ok(r) => r,
                    Err(e) => return Err(answer.invalid(e)),
                };
                for r in requests {
                    let ranges: Vec<(u16, u16)> =
                        r.ranges().iter().map(|x| (x.start, x.count)).collect();
                    match guard.refuses(r.unit, r.function, &ranges) {
                        None => out.push(r.raw.clone()),
                        Some((code, reason)) => {
                            answer.refuse(&reason, r.raw.clone(), || r.exception(code), out)
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl<S: Source> Source for GuardedUp<S> {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
        let Some(checker) = &mut self.guard else {
            return self.inner.next(out).await;
        };
        loop {
            let mut raw = Vec::new();
            if !self.inner.next(&mut raw).await? {
                // A message cut off by the end of the stream is never sent on.
                return Ok(false);
            }
            let before = out.len();
            for chunk in &raw {
                checker.check(chunk, out)?;
            }
            if out.len() > before {
                return Ok(true);
            }
            // Nothing complete and allowed yet: read on.
        }
    }
}

impl<S: Source> Source for Injecting<S> {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
        let Some(replies) = &mut self.replies else {
            return self.inner.next(out).await;
        };
        let between = self.at.between();
        if between && let Ok(r) = replies.try_recv() {
            out.push(r);
            return Ok(true);
        }
        let before = out.len();
        let more = if between {
            tokio::select! {
                more = self.inner.next(out) => more?,
                Some(r) = replies.recv() => {
                    out.push(r);
                    return Ok(true);
                }
            }
        } else {
            self.inner.next(out).await?
        };
        for c in &out[before..] {
            self.at.track(c);
        }
        Ok(more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A source of fixed chunks.
    struct Chunks(Vec<&'static [u8]>);

    impl Source for Chunks {
        async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
            if self.0.is_empty() {
                return Ok(false);
            }
            out.push(Bytes::from_static(self.0.remove(0)));
            Ok(true)
        }
    }

    const ORU: &[u8] =
        b"\x0bMSH|^~\\&|LVP200|ICU|ENGINE|HOSP|20261205||ORU^R01|C1|P|2.5\rOBX|1\r\x1c\r";
    const ADT: &[u8] =
        b"\x0bMSH|^~\\&|LVP200|ICU|ENGINE|HOSP|20261205||ADT^A08|C2|P|2.5\rPID|1||X\r\x1c\r";

    /// A report that records what it hears.
    fn recorder() -> (Arc<Mutex<Vec<String>>>, Report) {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        let report: Report = Arc::new(move |s: &str| r.lock().expect("lock").push(s.to_owned()));
        (reports, report)
    }

    fn guard() -> Guard {
        Guard::Hl7(Hl7Guard {
            message_types: vec!["ORU^R01".into()],
            ..Hl7Guard::default()
        })
    }

    /// The allowed message passes whole; the refused one never does, and
    /// its AR reaches the device side; each refusal is reported.
    #[tokio::test]
    async fn refused_messages_stay_and_are_answered() {
        let (reports, report) = recorder();
        let (mut up, mut down) = wrap(
            Chunks(vec![&ORU[..10], &ORU[10..], ADT]),
            Chunks(vec![]),
            Some((guard(), report)),
            false,
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        let sent: Vec<u8> = sent.concat();
        assert_eq!(sent, ORU, "only the allowed message goes on");
        let mut back = Vec::new();
        assert!(down.next(&mut back).await.expect("down"));
        let ack = String::from_utf8(back.concat()).expect("text");
        assert!(ack.contains("MSA|AR|C2|HL7 message type ADT"), "{ack}");
        assert_eq!(
            reports.lock().expect("lock").as_slice(),
            ["HL7 message type ADT^A08 not allowed"]
        );
    }

    /// Monitor mode passes the message and reports it.
    #[tokio::test]
    async fn monitor_mode_passes() {
        let (reports, report) = recorder();
        let (mut up, _down) = wrap(
            Chunks(vec![ADT]),
            Chunks(vec![]),
            Some((guard(), report)),
            true,
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        assert_eq!(sent.concat(), ADT);
        assert_eq!(reports.lock().expect("lock").len(), 1);
    }

    /// A refusal waits for the server's message in flight to end.
    #[tokio::test]
    async fn refusals_never_split_a_server_message() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut down = Injecting {
            inner: Chunks(vec![b"\x0bMSH|^~\\&|E", b"NGINE\r\x1c\r"]),
            replies: Some(rx),
            at: Boundary::Mllp {
                between: true,
                in_frame: false,
            },
        };
        let mut out = Vec::new();
        assert!(down.next(&mut out).await.expect("first chunk"));
        tx.send(Bytes::from_static(b"AR")).expect("send");
        assert!(down.next(&mut out).await.expect("rest of the message"));
        assert!(down.next(&mut out).await.expect("the refusal"));
        assert_eq!(out.concat(), b"\x0bMSH|^~\\&|ENGINE\r\x1c\rAR");
    }

    /// Modbus: an exception waits for the server's response in flight, by
    /// the MBAP length; a refused write never goes on.
    #[tokio::test]
    async fn modbus_exception_between_responses() {
        const RESP: &[u8] = &[0, 1, 0, 0, 0, 5, 1, 3, 2, 0, 7];
        let (tx, rx) = mpsc::unbounded_channel();
        let mut down = Injecting {
            inner: Chunks(vec![&RESP[..4], &RESP[4..9], &RESP[9..]]),
            replies: Some(rx),
            at: Boundary::Mbap {
                header: [0; modbus::MBAP],
                have: 0,
                remaining: 0,
            },
        };
        let mut out = Vec::new();
        assert!(down.next(&mut out).await.expect("first part"));
        tx.send(Bytes::from_static(b"EX")).expect("send");
        assert!(down.next(&mut out).await.expect("second part"));
        assert!(down.next(&mut out).await.expect("last part"));
        assert!(down.next(&mut out).await.expect("the exception"));
        assert_eq!(out.concat(), [RESP, b"EX"].concat());

        const WRITE: &[u8] = &[0, 2, 0, 0, 0, 6, 1, 6, 0, 10, 0, 7];
        const READ: &[u8] = &[0, 3, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1];
        let guard = Guard::Modbus(ModbusGuard {
            functions: vec![3],
            ..ModbusGuard::default()
        });
        let (mut up, mut down) = wrap(
            Chunks(vec![WRITE, READ]),
            Chunks(vec![]),
            Some((guard, Arc::new(|_: &str| {}))),
            false,
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        assert_eq!(sent.concat(), READ, "only the read goes on");
        let mut back = Vec::new();
        assert!(down.next(&mut back).await.expect("down"));
        assert_eq!(back.concat(), [0, 2, 0, 0, 0, 3, 1, 0x86, 1]);
    }

    /// Garbage ends the stream with an error, reported.
    #[tokio::test]
    async fn not_mllp_is_refused() {
        let (reports, report) = recorder();
        let (mut up, _down) = wrap(
            Chunks(vec![b"GET / HTTP/1.0\r\n"]),
            Chunks(vec![]),
            Some((guard(), report)),
            false,
        );
        let mut sent = Vec::new();
        assert!(up.next(&mut sent).await.is_err());
        assert!(sent.is_empty());
        assert!(reports.lock().expect("lock")[0].contains("outside an MLLP frame"));
    }
}
