//! A guard in the relay: the device's direction passes through
//! [`GuardedUp`], which forwards whole allowed messages only and hands the
//! refusal it answers to the other direction; the server's direction passes
//! through [`Injecting`], which writes those refusals to the device between
//! the server's own messages, never inside one. Without a guard both are
//! plain pass-throughs.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use ward_policy::model::Hl7Guard;

use super::hl7::{self, EB, Framer, SB};
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
    guard: Hl7Guard,
    framer: Framer,
    monitor: bool,
    replies: mpsc::UnboundedSender<Bytes>,
    report: Report,
}

/// The server's direction of a guarded flow.
pub struct Injecting<S> {
    inner: S,
    replies: Option<mpsc::UnboundedReceiver<Bytes>>,
    /// Where the server's MLLP stream is: between messages, refusals may go.
    between: bool,
    in_frame: bool,
}

/// Wrap both directions; with `guard` none, they pass everything through.
/// `report` hears of every refusal; in `monitor` mode refused messages pass.
pub fn wrap<U: Source, D: Source>(
    up: U,
    down: D,
    guard: Option<(Hl7Guard, Report)>,
    monitor: bool,
) -> (GuardedUp<U>, Injecting<D>) {
    match guard {
        None => (
            GuardedUp {
                inner: up,
                guard: None,
            },
            Injecting {
                inner: down,
                replies: None,
                between: true,
                in_frame: false,
            },
        ),
        Some((guard, report)) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (
                GuardedUp {
                    inner: up,
                    guard: Some(Checker {
                        guard,
                        framer: Framer::default(),
                        monitor,
                        replies: tx,
                        report,
                    }),
                },
                Injecting {
                    inner: down,
                    replies: Some(rx),
                    between: true,
                    in_frame: false,
                },
            )
        }
    }
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

impl Checker {
    /// Judge the complete messages `data` finishes; allowed ones go to `out`.
    fn check(&mut self, data: &[u8], out: &mut Vec<Bytes>) -> std::io::Result<()> {
        let messages = self.framer.push(data).map_err(|e| {
            (self.report)(&format!("stream refused: {e}"));
            std::io::Error::new(std::io::ErrorKind::InvalidData, e)
        })?;
        for m in messages {
            let msh = match hl7::parse_msh(&m) {
                Ok(msh) => msh,
                Err(e) => {
                    (self.report)(&format!("stream refused: {e}"));
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
            };
            let refusal = self.guard.refuses(
                &msh.message_type,
                &msh.sending_application,
                &msh.sending_facility,
            );
            match refusal {
                None => out.push(framed(&m)),
                Some(reason) if self.monitor => {
                    (self.report)(&format!("{reason} (monitor mode: passed)"));
                    out.push(framed(&m));
                }
                Some(reason) => {
                    (self.report)(&reason);
                    let ack = hl7::reject_ack(&msh, &reason, &now_hl7());
                    // The other direction may be gone; the device then sees
                    // the connection end without an answer.
                    let _ = self.replies.send(Bytes::from(ack));
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

impl<S> Injecting<S> {
    fn track(&mut self, data: &[u8]) {
        for &b in data {
            match b {
                SB => {
                    self.in_frame = true;
                    self.between = false;
                }
                EB if self.in_frame => self.in_frame = false,
                b'\r' if !self.in_frame => self.between = true,
                _ => {}
            }
        }
    }
}

impl<S: Source> Source for Injecting<S> {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
        let Some(replies) = &mut self.replies else {
            return self.inner.next(out).await;
        };
        if self.between
            && let Ok(r) = replies.try_recv()
        {
            out.push(r);
            return Ok(true);
        }
        let before = out.len();
        let more = if self.between {
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
        let added: Vec<Bytes> = out[before..].to_vec();
        for c in &added {
            self.track(c);
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

    fn guard() -> Hl7Guard {
        Hl7Guard {
            message_types: vec!["ORU^R01".into()],
            ..Hl7Guard::default()
        }
    }

    /// The allowed message passes whole; the refused one never does, and
    /// its AR reaches the device side; each refusal is reported.
    #[tokio::test]
    async fn refused_messages_stay_and_are_answered() {
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let r = reports.clone();
        let (mut up, mut down) = wrap(
            Chunks(vec![&ORU[..10], &ORU[10..], ADT]),
            Chunks(vec![]),
            Some((
                guard(),
                Arc::new(move |s: &str| r.lock().expect("lock").push(s.to_owned())),
            )),
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
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let r = reports.clone();
        let (mut up, _down) = wrap(
            Chunks(vec![ADT]),
            Chunks(vec![]),
            Some((
                guard(),
                Arc::new(move |s: &str| r.lock().expect("lock").push(s.to_owned())),
            )),
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
            between: true,
            in_frame: false,
        };
        let mut out = Vec::new();
        assert!(down.next(&mut out).await.expect("first chunk"));
        tx.send(Bytes::from_static(b"AR")).expect("send");
        assert!(down.next(&mut out).await.expect("rest of the message"));
        assert!(down.next(&mut out).await.expect("the refusal"));
        assert_eq!(out.concat(), b"\x0bMSH|^~\\&|ENGINE\r\x1c\rAR");
    }

    /// Garbage ends the stream with an error, reported.
    #[tokio::test]
    async fn not_mllp_is_refused() {
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let r = reports.clone();
        let (mut up, _down) = wrap(
            Chunks(vec![b"GET / HTTP/1.0\r\n"]),
            Chunks(vec![]),
            Some((
                guard(),
                Arc::new(move |s: &str| r.lock().expect("lock").push(s.to_owned())),
            )),
            false,
        );
        let mut sent = Vec::new();
        assert!(up.next(&mut sent).await.is_err());
        assert!(sent.is_empty());
        assert!(reports.lock().expect("lock")[0].contains("outside an MLLP frame"));
    }
}
