//! A guard in the relay: the device's direction passes through
//! [`GuardedUp`], which forwards whole allowed messages (HL7) or requests
//! (Modbus) only and hands the refusal it answers to the other direction;
//! the server's direction passes through [`Injecting`], which writes those
//! refusals to the device between the server's own messages, never inside
//! one. Without a guard both are plain pass-throughs.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dicom_ul::pdu::AbortRQServiceProviderReason;
use tokio::sync::mpsc;
use ward_policy::model::{AeRefusal, DicomGuard, Guard, Hl7Guard, ModbusGuard};

use super::dicom::{self, Piece};
use super::facts::Facts;
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
    /// The guard ended the stream (a refused or aborted association).
    ended: bool,
}

struct Checker {
    rules: Rules,
    answer: Answer,
    /// Learning only: the stream passes as it is; a copy is read for facts.
    tee: bool,
}

/// How refusals are told and answered, and where facts go.
struct Answer {
    monitor: bool,
    replies: mpsc::UnboundedSender<Bytes>,
    report: Report,
    facts: Option<Arc<Facts>>,
}

impl Answer {
    fn note(&self, kind: &'static str, value: &str) {
        if let Some(f) = &self.facts
            && !value.is_empty()
        {
            f.note(kind, value);
        }
    }
}

enum Rules {
    Dicom(Box<Association>),
    Hl7(Hl7Guard, hl7::Framer),
    Modbus(ModbusGuard, modbus::Framer, Box<[bool; 512]>),
}

/// One DICOM association as its guard follows it.
struct Association {
    guard: DicomGuard,
    reader: dicom::Reader,
    state: Session,
    /// Presentation contexts taken out of the request, for the server's
    /// side to answer as rejected.
    removed: Arc<Mutex<Vec<u8>>>,
}

/// Where an association is.
enum Session {
    /// Before the A-ASSOCIATE-RQ.
    Start,
    /// Forwarded to the server with these presentation contexts.
    Open(Vec<u8>),
    /// Answered by Ward itself (no context allowed): only a release or an
    /// abort may follow.
    Answered,
}

/// The server's direction of a guarded flow.
pub struct Injecting<S> {
    inner: S,
    replies: Option<mpsc::UnboundedReceiver<Bytes>>,
    /// Where the server's stream is: between messages, refusals may go.
    at: Boundary,
    /// DICOM: the server's association answer, completed with the
    /// contexts Ward removed from the request.
    acceptance: Option<(dicom::Acceptance, Arc<Mutex<Vec<u8>>>)>,
    /// The server's stream ended.
    ended: bool,
}

/// Where a server's stream is, message-wise.
enum Boundary {
    /// MLLP: between frames, and inside one.
    Mllp { between: bool, in_frame: bool },
    /// Length-prefixed frames: header bytes seen of the next, body bytes
    /// still to come.
    Framed {
        framing: Framing,
        header: [u8; 8],
        have: usize,
        remaining: u64,
    },
}

/// How a length-prefixed protocol frames its messages.
#[derive(Clone, Copy)]
enum Framing {
    /// Modbus MBAP: 7 header bytes; the length (bytes 4-5) counts the unit
    /// id, the header's last byte.
    Mbap,
    /// DICOM PDU: 6 header bytes; the length (bytes 2-5) counts the body.
    Pdu,
}

impl Framing {
    fn header_len(self) -> usize {
        match self {
            Framing::Mbap => modbus::MBAP,
            Framing::Pdu => dicom::HEADER,
        }
    }

    fn body_len(self, h: &[u8; 8]) -> u64 {
        match self {
            Framing::Mbap => u64::from(u16::from_be_bytes([h[4], h[5]])).saturating_sub(1),
            Framing::Pdu => u64::from(u32::from_be_bytes([h[2], h[3], h[4], h[5]])),
        }
    }

    fn start(self) -> Boundary {
        Boundary::Framed {
            framing: self,
            header: [0; 8],
            have: 0,
            remaining: 0,
        }
    }
}

impl Boundary {
    fn between(&self) -> bool {
        match self {
            Boundary::Mllp { between, .. } => *between,
            Boundary::Framed {
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
            Boundary::Framed {
                framing,
                header,
                have,
                remaining,
            } => {
                let mut data = data;
                while !data.is_empty() {
                    if *remaining > 0 {
                        let take = (*remaining).min(data.len() as u64);
                        *remaining -= take;
                        data = &data[take as usize..];
                    } else {
                        header[*have] = data[0];
                        *have += 1;
                        data = &data[1..];
                        if *have == framing.header_len() {
                            *remaining = framing.body_len(header);
                            *have = 0;
                        }
                    }
                }
            }
        }
    }
}

/// Learning on a flow without a guard: both directions pass everything as
/// it is, and a copy of the device's is read (as `protocol`'s guard, which
/// allows everything, reads it) for the facts it states. A stream the
/// reader does not understand is simply no longer read.
pub fn learn<U: Source, D: Source>(
    up: U,
    down: D,
    protocol: Guard,
    facts: Arc<Facts>,
) -> (GuardedUp<U>, Injecting<D>) {
    let Parts { mut checker, .. } = parts(protocol, Arc::new(|_: &str| {}), true, Some(facts));
    checker.tee = true;
    let (_, down) = plain((), down);
    (
        GuardedUp {
            inner: up,
            guard: Some(checker),
            ended: false,
        },
        down,
    )
}

/// Both directions passing everything through.
fn plain<U, D>(up: U, down: D) -> (GuardedUp<U>, Injecting<D>) {
    (
        GuardedUp {
            inner: up,
            guard: None,
            ended: false,
        },
        Injecting {
            inner: down,
            replies: None,
            at: Boundary::Mllp {
                between: true,
                in_frame: false,
            },
            acceptance: None,
            ended: false,
        },
    )
}

/// What a guard puts in each direction.
struct Parts {
    checker: Checker,
    replies: mpsc::UnboundedReceiver<Bytes>,
    at: Boundary,
    acceptance: Option<(dicom::Acceptance, Arc<Mutex<Vec<u8>>>)>,
}

fn parts(guard: Guard, report: Report, monitor: bool, facts: Option<Arc<Facts>>) -> Parts {
    let mut acceptance = None;
    let (rules, at) = match guard {
        Guard::Dicom(guard) => {
            let removed = Arc::new(Mutex::new(Vec::new()));
            acceptance = Some((dicom::Acceptance::default(), removed.clone()));
            (
                Rules::Dicom(Box::new(Association {
                    guard,
                    reader: dicom::Reader::default(),
                    state: Session::Start,
                    removed,
                })),
                Framing::Pdu.start(),
            )
        }
        Guard::Hl7(g) => (
            Rules::Hl7(g, hl7::Framer::default()),
            Boundary::Mllp {
                between: true,
                in_frame: false,
            },
        ),
        Guard::Modbus(g) => (
            Rules::Modbus(g, modbus::Framer::default(), Box::new([false; 512])),
            Framing::Mbap.start(),
        ),
    };
    let (tx, replies) = mpsc::unbounded_channel();
    Parts {
        checker: Checker {
            rules,
            answer: Answer {
                monitor,
                replies: tx,
                report,
                facts,
            },
            tee: false,
        },
        replies,
        at,
        acceptance,
    }
}

/// Wrap both directions; with `guard` none, they pass everything through.
/// `report` hears of every refusal; in `monitor` mode refused messages
/// pass; `facts` hears what the device's messages state.
pub fn wrap<U: Source, D: Source>(
    up: U,
    down: D,
    guard: Option<(Guard, Report)>,
    monitor: bool,
    facts: Option<Arc<Facts>>,
) -> (GuardedUp<U>, Injecting<D>) {
    let Some((guard, report)) = guard else {
        return plain(up, down);
    };
    let p = parts(guard, report, monitor, facts);
    (
        GuardedUp {
            inner: up,
            guard: Some(p.checker),
            ended: false,
        },
        Injecting {
            inner: down,
            replies: Some(p.replies),
            at: p.at,
            acceptance: p.acceptance,
            ended: false,
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
    /// Judge the complete messages `data` finishes; allowed ones go to
    /// `out`. `false`: the guard ended the stream (after `out`).
    fn check(&mut self, data: &Bytes, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
        let Checker { rules, answer, .. } = self;
        match rules {
            Rules::Dicom(a) => return Ok(a.check(answer, data.clone(), out)),
            Rules::Hl7(guard, framer) => {
                let messages = match framer.push(data) {
                    Ok(m) => m,
                    Err(e) => return Err(answer.invalid(e)),
                };
                for m in messages {
                    let msh = hl7::parse_msh(&m).map_err(|e| answer.invalid(e))?;
                    answer.note("message_types", &msh.message_type);
                    answer.note("sending_applications", &msh.sending_application);
                    answer.note("sending_facilities", &msh.sending_facility);
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
            Rules::Modbus(guard, framer, noted) => {
                let requests = match framer.push(data) {
                    Ok(r) => r,
                    Err(e) => return Err(answer.invalid(e)),
                };
                for r in requests {
                    // Each function and unit noted once a connection.
                    let first = !std::mem::replace(&mut noted[usize::from(r.unit)], true)
                        | !std::mem::replace(&mut noted[256 + usize::from(r.function)], true);
                    if first && answer.facts.is_some() {
                        answer.note(
                            "functions",
                            ward_policy::model::modbus_function_name(r.function)
                                .unwrap_or(&r.function.to_string()),
                        );
                        answer.note("unit_ids", &r.unit.to_string());
                    }
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
        Ok(true)
    }
}

impl Association {
    /// Follow the association through `data`. `false`: it ended here
    /// (rejected, aborted, or released with Ward); what the device is told
    /// went to the replies.
    fn check(&mut self, answer: &Answer, data: Bytes, out: &mut Vec<Bytes>) -> bool {
        let mut pieces = Vec::new();
        let read = self.reader.push(data, &mut pieces);
        for piece in pieces {
            match self.piece(answer, piece, out) {
                Ok(true) => {}
                Ok(false) => return false,
                Err((reason, why)) => return self.abort(answer, &reason, why, out),
            }
        }
        match read {
            Ok(()) => true,
            Err(e) => self.abort(
                answer,
                &e.to_string(),
                AbortRQServiceProviderReason::InvalidPduParameter,
                out,
            ),
        }
    }

    /// The stream is not an association as the standard has it: reported,
    /// both sides get an A-ABORT from the provider (Ward), and it ends.
    fn abort(
        &self,
        answer: &Answer,
        reason: &str,
        why: AbortRQServiceProviderReason,
        out: &mut Vec<Bytes>,
    ) -> bool {
        (answer.report)(&format!("stream refused: {reason}"));
        let abort = Bytes::from(dicom::abort(Some(why)));
        if matches!(self.state, Session::Open(_)) {
            out.push(abort.clone());
        }
        let _ = answer.replies.send(abort);
        false
    }

    fn piece(
        &mut self,
        answer: &Answer,
        piece: Piece,
        out: &mut Vec<Bytes>,
    ) -> Result<bool, (String, AbortRQServiceProviderReason)> {
        let unexpected = |what: &str| {
            Err((
                format!("{what} out of order"),
                AbortRQServiceProviderReason::UnexpectedPdu,
            ))
        };
        match (&self.state, piece) {
            (Session::Start, Piece::Control(dicom::ASSOCIATE_RQ, bytes)) => {
                self.associate(answer, bytes, out)
            }
            (Session::Start, _) => unexpected("a PDU before the A-ASSOCIATE-RQ"),
            (_, Piece::Control(dicom::ASSOCIATE_RQ, _)) => unexpected("a second A-ASSOCIATE-RQ"),
            (Session::Answered, Piece::Control(dicom::RELEASE_RQ, _)) => {
                let _ = answer.replies.send(Bytes::from(dicom::release_reply()));
                Ok(false)
            }
            (Session::Answered, Piece::Control(dicom::ABORT, _)) => Ok(false),
            (Session::Answered, _) => unexpected("data on an association without contexts"),
            (Session::Open(_), Piece::Control(ty, bytes)) => {
                if !matches!(ty, dicom::RELEASE_RQ | dicom::RELEASE_RP | dicom::ABORT) {
                    return unexpected(&format!("PDU type 0x{ty:02x} from the requestor"));
                }
                out.push(bytes);
                Ok(ty != dicom::ABORT)
            }
            (Session::Open(_), Piece::Pass(bytes)) => {
                out.push(bytes);
                Ok(true)
            }
            (Session::Open(contexts), Piece::Command { context, set, raw }) => {
                if !contexts.contains(&context) {
                    return Err((
                        format!("a command on presentation context {context}, not negotiated"),
                        AbortRQServiceProviderReason::UnexpectedPduParameter,
                    ));
                }
                let command = dicom::parse_command(&set).map_err(|e| {
                    (
                        e.to_string(),
                        AbortRQServiceProviderReason::InvalidPduParameter,
                    )
                })?;
                if command.field & 0x8000 == 0 && command.field != ward_policy::model::DIMSE_CANCEL
                {
                    answer.note(
                        "commands",
                        &ward_policy::model::dimse_command_name(command.field),
                    );
                    if let Some(uid) = &command.sop_class {
                        answer.note("sop_classes", uid);
                    }
                }
                let refusal = self.guard.refuses_command(command.field).or_else(|| {
                    command
                        .sop_class
                        .as_deref()
                        .filter(|_| command.field & 0x8000 == 0)
                        .and_then(|uid| self.guard.refuses_sop_class(uid))
                });
                match refusal {
                    None => {
                        out.push(Bytes::from(raw));
                        Ok(true)
                    }
                    Some(reason) if answer.monitor => {
                        (answer.report)(&format!("{reason} (monitor mode: passed)"));
                        out.push(Bytes::from(raw));
                        Ok(true)
                    }
                    Some(reason) => {
                        // The server never sees the command; both sides
                        // see the association aborted.
                        (answer.report)(&format!("{reason}: association aborted"));
                        let abort = Bytes::from(dicom::abort(None));
                        out.push(abort.clone());
                        let _ = answer.replies.send(abort);
                        Ok(false)
                    }
                }
            }
        }
    }

    /// An A-ASSOCIATE-RQ: AE titles, then presentation contexts.
    fn associate(
        &mut self,
        answer: &Answer,
        bytes: Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<bool, (String, AbortRQServiceProviderReason)> {
        let rq = match dicom::parse_control(&bytes) {
            Ok(dicom_ul::Pdu::AssociationRQ(rq)) => rq,
            Ok(_) => unreachable!("the reader typed it A-ASSOCIATE-RQ"),
            Err(e) => {
                return Err((
                    e.to_string(),
                    AbortRQServiceProviderReason::InvalidPduParameter,
                ));
            }
        };
        let all: Vec<u8> = rq.presentation_contexts.iter().map(|c| c.id).collect();
        answer.note("calling_ae_titles", rq.calling_ae_title.trim());
        answer.note("called_ae_titles", rq.called_ae_title.trim());
        if let Some((which, reason)) = self
            .guard
            .refuses_association(rq.calling_ae_title.trim(), rq.called_ae_title.trim())
        {
            if answer.monitor {
                (answer.report)(&format!("{reason} (monitor mode: passed)"));
            } else {
                (answer.report)(&format!("{reason}: association rejected"));
                let rj = dicom::reject(which == AeRefusal::Calling);
                let _ = answer.replies.send(Bytes::from(rj));
                return Ok(false);
            }
        }
        // One report per association for its refused contexts: each SOP
        // class once, with the contexts that named it.
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        let mut refused: Vec<(String, Vec<u8>)> = Vec::new();
        for c in &rq.presentation_contexts {
            match self.guard.refuses_sop_class(&c.abstract_syntax) {
                None => kept.push(c.id),
                Some(reason) => {
                    match refused.iter_mut().find(|(r, _)| *r == reason) {
                        Some((_, ids)) => ids.push(c.id),
                        None => refused.push((reason, vec![c.id])),
                    }
                    if answer.monitor {
                        kept.push(c.id);
                    } else {
                        removed.push(c.id);
                    }
                }
            }
        }
        if !refused.is_empty() {
            // A storage SCU may propose a hundred classes: the first few
            // are named, the rest counted.
            const NAMED: usize = 8;
            let mut list = refused
                .iter()
                .take(NAMED)
                .map(|(reason, ids)| {
                    let ids: Vec<String> = ids.iter().map(u8::to_string).collect();
                    format!("{reason} (presentation context {})", ids.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ");
            if refused.len() > NAMED {
                list.push_str(&format!("; and {} more SOP classes", refused.len() - NAMED));
            }
            (answer.report)(&if answer.monitor {
                format!("{list} (monitor mode: passed)")
            } else {
                format!("{list}: rejected")
            });
        }
        if removed.is_empty() {
            out.push(bytes);
        } else if kept.is_empty() {
            let _ = answer.replies.send(Bytes::from(dicom::accept_none(&rq)));
            self.state = Session::Answered;
            return Ok(true);
        } else {
            out.push(Bytes::from(dicom::without_contexts(&rq, &kept)));
            *self.removed.lock().unwrap_or_else(|p| p.into_inner()) = removed;
        }
        self.state = Session::Open(if kept.is_empty() { all } else { kept });
        Ok(true)
    }
}

impl<S: Source> Source for GuardedUp<S> {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
        let Some(checker) = &mut self.guard else {
            return self.inner.next(out).await;
        };
        if checker.tee {
            let before = out.len();
            if !self.inner.next(out).await? {
                return Ok(false);
            }
            let mut ignored = Vec::new();
            for chunk in &out[before..] {
                if !matches!(checker.check(chunk, &mut ignored), Ok(true)) {
                    // Not understood, or over: read no further.
                    self.guard = None;
                    break;
                }
                ignored.clear();
            }
            return Ok(true);
        }
        loop {
            if self.ended {
                return Ok(false);
            }
            let mut raw = Vec::new();
            if !self.inner.next(&mut raw).await? {
                // A message cut off by the end of the stream is never sent on.
                return Ok(false);
            }
            let before = out.len();
            for chunk in &raw {
                if !checker.check(chunk, out)? {
                    self.ended = true;
                    break;
                }
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
        loop {
            let between = self.at.between();
            if (between || self.ended)
                && let Ok(r) = replies.try_recv()
            {
                out.push(r);
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
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
            if let Some((acceptance, removed)) = &mut self.acceptance {
                let chunks: Vec<Bytes> = out.drain(before..).collect();
                let removed = removed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for c in chunks {
                    let passed = acceptance.push(c, &removed).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                    })?;
                    out.extend(passed);
                }
                // Past the server's first PDU: its stream passes as it comes.
                if acceptance.done() {
                    self.acceptance = None;
                }
            }
            for c in &out[before..] {
                self.at.track(c);
            }
            // At the end, refusals still queued go out before it.
            self.ended = !more;
            if out.len() > before {
                return Ok(true);
            }
        }
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
            None,
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
            None,
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
            acceptance: None,
            ended: false,
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
            at: Framing::Mbap.start(),
            acceptance: None,
            ended: false,
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
            None,
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        assert_eq!(sent.concat(), READ, "only the read goes on");
        let mut back = Vec::new();
        assert!(down.next(&mut back).await.expect("down"));
        assert_eq!(back.concat(), [0, 2, 0, 0, 0, 3, 1, 0x86, 1]);
    }

    /// A source of owned chunks.
    struct Owned(Vec<Vec<u8>>);

    impl Source for Owned {
        async fn next(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<bool> {
            if self.0.is_empty() {
                return Ok(false);
            }
            out.push(Bytes::from(self.0.remove(0)));
            Ok(true)
        }
    }

    fn dicom_guard() -> Guard {
        Guard::Dicom(DicomGuard {
            calling_ae_titles: vec!["CT-SCANNER-2".into()],
            sop_classes: vec![CT.into(), "1.2.840.10008.1.1".into()],
            commands: vec![0x0001, 0x0030],
            ..DicomGuard::default()
        })
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

    /// Run the device's `stream` and the server's `server` through a DICOM
    /// guard: what the server got, what the device got, the reports.
    async fn dicom_run(
        stream: Vec<Vec<u8>>,
        server: Vec<Vec<u8>>,
        monitor: bool,
    ) -> (Vec<u8>, Vec<u8>, Vec<String>) {
        let (reports, report) = recorder();
        let (mut up, mut down) = wrap(
            Owned(stream),
            Owned(server),
            Some((dicom_guard(), report)),
            monitor,
            None,
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        let mut back = Vec::new();
        while down.next(&mut back).await.expect("down") {}
        let r = reports.lock().expect("lock").clone();
        (sent.concat(), back.concat(), r)
    }

    /// A wrong calling AE title: A-ASSOCIATE-RJ (calling AE not
    /// recognized), nothing reaches the server.
    #[tokio::test]
    async fn dicom_wrong_calling_ae_is_rejected() {
        let mut rq = dicom::tests::rq(&[(1, CT)]);
        rq.calling_ae_title = "INTRUDER".into();
        let rq = dicom::written(&dicom_ul::Pdu::AssociationRQ(rq));
        let (sent, back, reports) = dicom_run(vec![rq], vec![], false).await;
        assert!(sent.is_empty());
        // A-ASSOCIATE-RJ: result 1 (permanent), source 1 (user), reason 3.
        assert_eq!(back, [3, 0, 0, 0, 0, 4, 0, 1, 1, 3]);
        assert!(
            reports[0].contains("calling AE title \"INTRUDER\""),
            "{reports:?}"
        );
    }

    /// A refused context leaves the request; the server's AC gets it back
    /// as rejected; a C-FIND on an allowed context aborts both sides and
    /// never reaches the server; a C-STORE before it passes.
    #[tokio::test]
    async fn dicom_contexts_and_commands() {
        let rq = dicom::written(&dicom_ul::Pdu::AssociationRQ(dicom::tests::rq(&[
            (1, CT),
            (3, FIND),
        ])));
        let store = dicom::tests::pdata(&[(1, 3, &dicom::tests::command_set(0x0001, CT))]);
        let data = dicom::tests::pdata(&[(1, 2, b"pixels")]);
        let find = dicom::tests::pdata(&[(1, 3, &dicom::tests::command_set(0x0020, CT))]);
        let ac = dicom::tests::accept(&[1]);
        let (reports, report) = recorder();
        let (mut up, mut down) = wrap(
            Owned(vec![rq, store.clone(), data.clone(), find]),
            Owned(vec![ac]),
            Some((dicom_guard(), report)),
            false,
            None,
        );
        // The request goes first, then the server's answer comes back.
        let mut sent = Vec::new();
        assert!(up.next(&mut sent).await.expect("request"));
        let mut back = Vec::new();
        assert!(down.next(&mut back).await.expect("answer"));
        while up.next(&mut sent).await.expect("up") {}
        while down.next(&mut back).await.expect("down") {}
        let (sent, back, reports) = (
            sent.concat(),
            back.concat(),
            reports.lock().expect("lock").clone(),
        );
        let forwarded = dicom::written(&dicom_ul::Pdu::AssociationRQ(dicom::tests::rq(&[(1, CT)])));
        let abort = dicom::abort(None);
        assert_eq!(sent, [forwarded, store, data, abort.clone()].concat());
        let ac_len = back.len() - abort.len();
        let dicom_ul::Pdu::AssociationAC(got) = dicom::parse_control(&back[..ac_len]).expect("ac")
        else {
            panic!("not an AC");
        };
        assert_eq!(got.presentation_contexts.len(), 2);
        assert_eq!(got.presentation_contexts[1].id, 3);
        assert_eq!(
            got.presentation_contexts[1].reason,
            dicom_ul::pdu::PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        assert_eq!(&back[ac_len..], abort);
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(
            reports[0].contains(FIND) && reports[0].ends_with("(presentation context 3): rejected"),
            "{reports:?}"
        );
        assert!(reports[1].contains("C-FIND not allowed"), "{reports:?}");
    }

    /// No allowed context: Ward answers the association and its release.
    #[tokio::test]
    async fn dicom_no_context_left_is_answered_by_ward() {
        let rq = dicom::written(&dicom_ul::Pdu::AssociationRQ(dicom::tests::rq(&[(
            1, FIND,
        )])));
        let release = dicom::written(&dicom_ul::Pdu::ReleaseRQ);
        let (sent, back, _) = dicom_run(vec![rq, release], vec![], false).await;
        assert!(sent.is_empty(), "nothing reaches the server");
        let n = back.len() - 10;
        let dicom_ul::Pdu::AssociationAC(ac) = dicom::parse_control(&back[..n]).expect("ac") else {
            panic!("not an AC");
        };
        assert_eq!(
            ac.presentation_contexts[0].reason,
            dicom_ul::pdu::PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        assert_eq!(&back[n..], dicom::release_reply());
    }

    /// Monitor mode: all passes, each refusal reported.
    #[tokio::test]
    async fn dicom_monitor_mode_passes() {
        let mut rq = dicom::tests::rq(&[(1, CT), (3, FIND)]);
        rq.calling_ae_title = "OTHER".into();
        let rq = dicom::written(&dicom_ul::Pdu::AssociationRQ(rq));
        let find = dicom::tests::pdata(&[(3, 3, &dicom::tests::command_set(0x0020, FIND))]);
        let (sent, _, reports) = dicom_run(vec![rq.clone(), find.clone()], vec![], true).await;
        assert_eq!(sent, [rq, find].concat());
        assert_eq!(reports.len(), 3, "{reports:?}");
        assert!(
            reports
                .iter()
                .all(|r| r.ends_with("(monitor mode: passed)")),
            "{reports:?}"
        );
    }

    /// Not DICOM: both sides aborted by the provider, reported.
    #[tokio::test]
    async fn dicom_garbage_is_aborted() {
        let (sent, back, reports) =
            dicom_run(vec![b"GET / HTTP/1.1\r\n".to_vec()], vec![], false).await;
        assert!(sent.is_empty());
        assert_eq!(
            back,
            dicom::abort(Some(AbortRQServiceProviderReason::InvalidPduParameter))
        );
        assert!(reports[0].starts_with("stream refused: unknown PDU type 0x47"));
    }

    /// Learning: everything passes as it is, even what a guard would
    /// refuse and what is not the protocol; facts are noted until the
    /// reader stops understanding.
    #[tokio::test]
    async fn learning_notes_facts_and_passes_all() {
        let facts = Arc::new(Facts::default());
        let (mut up, _) = learn(
            Chunks(vec![ORU, ADT, b"not mllp", ORU]),
            Chunks(vec![]),
            Guard::Hl7(Hl7Guard::default()),
            facts.clone(),
        );
        let mut sent = Vec::new();
        while up.next(&mut sent).await.expect("up") {}
        assert_eq!(sent.concat(), [ORU, ADT, b"not mllp", ORU].concat());
        let (values, _) = facts.snapshot();
        assert_eq!(values["message_types"], ["ADT^A08", "ORU^R01"]);
        assert_eq!(values["sending_applications"], ["LVP200"]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(500)
        ))]
        /// A valid association request, then any bytes (P-DATA headers and
        /// command sets among them), in any chunking: the DICOM guard
        /// never panics and passes on at most what it was given plus its
        /// own A-ABORT.
        #[test]
        fn dicom_guard_never_panics(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            commands in proptest::collection::vec((0u16..0x200, 0u8..4), 0..4),
            step in 1usize..200,
        ) {
            let mut stream = dicom::written(&dicom_ul::Pdu::AssociationRQ(dicom::tests::rq(&[(1, CT), (3, FIND)])));
            for (field, ctl) in commands {
                stream.extend(dicom::tests::pdata(&[(1, ctl | 1, &dicom::tests::command_set(field, CT))]));
            }
            stream.extend(tail);
            let chunks: Vec<Vec<u8>> = stream.chunks(step).map(<[u8]>::to_vec).collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let sent = rt.block_on(async {
                let (mut up, _down) = wrap(Owned(chunks), Owned(vec![]), Some((dicom_guard(), Arc::new(|_: &str| {}))), false, None);
                let mut sent = Vec::new();
                while let Ok(true) = up.next(&mut sent).await {}
                sent.concat()
            });
            proptest::prop_assert!(sent.len() <= stream.len() + 10);
        }
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
            None,
        );
        let mut sent = Vec::new();
        assert!(up.next(&mut sent).await.is_err());
        assert!(sent.is_empty());
        assert!(reports.lock().expect("lock")[0].contains("outside an MLLP frame"));
    }
}
