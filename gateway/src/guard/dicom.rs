//! The DICOM upper layer (PS3.8) as a guard reads it, from the association
//! requestor (the device): association negotiation PDUs whole, parsed and
//! written by `dicom-ul`; P-DATA-TF PDUs item by item, with command PDVs
//! (PS3.7 command sets) gathered across their fragments and data PDVs
//! passed on as they arrive, never gathered or parsed.
//!
//! Every length is bounded before anything is gathered: a control PDU (an
//! association request, release or abort) at [`MAX_CONTROL`], a P-DATA-TF
//! PDU at [`MAX_PDATA`] (streamed, never held), a command set at
//! [`MAX_COMMAND`].

use bytes::{Buf, Bytes};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem,
};
use dicom_ul::{Pdu, read_pdu, write_pdu};

/// A PDU header: type, reserved, length (u32, big-endian).
pub const HEADER: usize = 6;
/// The longest association request, acceptance, release or abort PDU taken.
pub const MAX_CONTROL: u32 = 64 * 1024;
/// The longest P-DATA-TF PDU taken (it streams; the bound refuses nonsense).
pub const MAX_PDATA: u32 = 16 * 1024 * 1024;
/// The longest command set taken, over all its fragments.
pub const MAX_COMMAND: usize = 64 * 1024;

/// PDU types (PS3.8 9.3).
pub const ASSOCIATE_RQ: u8 = 0x01;
/// A-ASSOCIATE-AC.
pub const ASSOCIATE_AC: u8 = 0x02;
/// P-DATA-TF.
pub const P_DATA: u8 = 0x04;
/// A-RELEASE-RQ.
pub const RELEASE_RQ: u8 = 0x05;
/// A-RELEASE-RP.
pub const RELEASE_RP: u8 = 0x06;
/// A-ABORT.
pub const ABORT: u8 = 0x07;

/// Implicit VR Little Endian, the transfer syntax of a rejected context.
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// Ward's implementation class UID, in associations it answers itself (a
/// UUID-derived UID, PS3.5 B.2).
const IMPLEMENTATION_CLASS: &str = "2.25.208347093164532201823004185137623950413";

/// Why a stream is not DICOM as the guard expects it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    /// A PDU type the upper layer does not define.
    #[error("unknown PDU type 0x{0:02x}")]
    UnknownType(u8),
    /// A PDU longer than its kind may be.
    #[error("PDU type 0x{ty:02x} of {len} bytes (at most {max})")]
    TooLong {
        /// The PDU type.
        ty: u8,
        /// Its stated length.
        len: u32,
        /// The bound for its kind.
        max: u32,
    },
    /// A P-DATA item that does not fit its PDU, or is too short.
    #[error("PDV item of {0} bytes does not fit its P-DATA-TF PDU")]
    BadItem(u32),
    /// A command set longer than [`MAX_COMMAND`].
    #[error("command set over {MAX_COMMAND} bytes")]
    CommandTooLong,
    /// A data PDV while a command set is unfinished.
    #[error("data PDV inside an unfinished command set")]
    DataInCommand,
    /// A command set without a Command Field, or not implicit little endian.
    #[error("command set without a readable Command Field (0000,0100)")]
    NoCommandField,
    /// `dicom-ul` could not read the PDU.
    #[error("unreadable PDU: {0}")]
    Unreadable(String),
}

/// A piece of the requestor's stream, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes that pass as they are: P-DATA-TF PDU and item headers and data
    /// PDV contents.
    Pass(Bytes),
    /// A whole control PDU (not P-DATA-TF): its type and every byte.
    Control(u8, Bytes),
    /// A whole command set on presentation context `context`, and every
    /// byte of the stream that carried it (PDU and item headers included),
    /// to pass on if it is allowed.
    Command {
        /// The presentation context the command PDVs named.
        context: u8,
        /// The command set's bytes.
        set: Vec<u8>,
        /// The stream bytes that carried it.
        raw: Vec<u8>,
    },
}

/// Reads the requestor's stream into [`Piece`]s.
#[derive(Debug, Default)]
pub struct Reader {
    /// Header bytes of the PDU or PDV item being read.
    head: [u8; HEADER],
    have: usize,
    at: At,
    /// A control PDU being gathered.
    control: Vec<u8>,
    /// Bytes held while a command set is gathered (headers and command).
    held: Vec<u8>,
    /// The command set gathered so far, and its context.
    command: Option<(u8, Vec<u8>)>,
}

#[derive(Debug, Default, Clone, Copy)]
enum At {
    /// Reading a PDU header.
    #[default]
    Pdu,
    /// Gathering a control PDU of this many more bytes.
    Control { ty: u8, left: usize },
    /// Inside a P-DATA-TF PDU with this many bytes left: reading an item
    /// header.
    Item { pdu_left: u32 },
    /// Inside a PDV's value: `left` bytes of it, `pdu_left` of the PDU.
    Value {
        pdu_left: u32,
        left: u32,
        command: bool,
        last: bool,
    },
}

impl Reader {
    /// Read `data`; complete pieces go to `out`, in stream order.
    pub fn push(&mut self, mut data: Bytes, out: &mut Vec<Piece>) -> Result<(), Malformed> {
        while !data.is_empty() {
            match self.at {
                At::Pdu => {
                    if !self.fill_head(&mut data, HEADER) {
                        return Ok(());
                    }
                    let ty = self.head[0];
                    let len = u32::from_be_bytes([
                        self.head[2],
                        self.head[3],
                        self.head[4],
                        self.head[5],
                    ]);
                    let max = match ty {
                        P_DATA => MAX_PDATA,
                        ASSOCIATE_RQ..=ABORT => MAX_CONTROL,
                        _ => return Err(Malformed::UnknownType(ty)),
                    };
                    if len > max {
                        return Err(Malformed::TooLong { ty, len, max });
                    }
                    if ty == P_DATA {
                        // Held until its first item says command or data.
                        self.held.extend_from_slice(&self.head);
                        self.at = At::Item { pdu_left: len };
                    } else {
                        self.control.clear();
                        self.control.extend_from_slice(&self.head);
                        self.at = At::Control {
                            ty,
                            left: len as usize,
                        };
                    }
                }
                At::Control { ty, left } => {
                    let take = left.min(data.len());
                    self.control.extend_from_slice(&data.split_to(take));
                    self.at = At::Control {
                        ty,
                        left: left - take,
                    };
                }
                At::Item { pdu_left: 0 } => self.at = At::Pdu,
                At::Item { pdu_left } => {
                    if !self.fill_head(&mut data, HEADER) {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([
                        self.head[0],
                        self.head[1],
                        self.head[2],
                        self.head[3],
                    ]);
                    if len < 2 || u64::from(len) + 4 > u64::from(pdu_left) {
                        return Err(Malformed::BadItem(len));
                    }
                    let (context, control) = (self.head[4], self.head[5]);
                    let command = control & 1 == 1;
                    if command {
                        match &self.command {
                            Some((c, _)) if *c != context => {
                                return Err(Malformed::BadItem(len));
                            }
                            Some(_) => {}
                            None => self.command = Some((context, Vec::new())),
                        }
                    } else if self.command.is_some() {
                        return Err(Malformed::DataInCommand);
                    }
                    self.held.extend_from_slice(&self.head);
                    if self.held.len() > 2 * MAX_COMMAND {
                        // Headers of ever smaller fragments.
                        return Err(Malformed::CommandTooLong);
                    }
                    if !command {
                        out.push(Piece::Pass(Bytes::from(std::mem::take(&mut self.held))));
                    }
                    self.at = At::Value {
                        pdu_left: pdu_left - len - 4,
                        left: len - 2,
                        command,
                        last: control & 2 == 2,
                    };
                }
                At::Value {
                    pdu_left,
                    left,
                    command,
                    last,
                } => {
                    let take = (left as usize).min(data.len());
                    let part = data.split_to(take);
                    if command {
                        let Some((_, set)) = &mut self.command else {
                            unreachable!("a command value without a command set");
                        };
                        if set.len() + part.len() > MAX_COMMAND {
                            return Err(Malformed::CommandTooLong);
                        }
                        set.extend_from_slice(&part);
                        self.held.extend_from_slice(&part);
                    } else if self.held.is_empty() {
                        out.push(Piece::Pass(part));
                    } else {
                        self.held.extend_from_slice(&part);
                    }
                    self.at = At::Value {
                        pdu_left,
                        left: left - take as u32,
                        command,
                        last,
                    };
                }
            }
            self.finish_parts(out);
        }
        self.finish_parts(out);
        Ok(())
    }

    /// Close what the bytes read so far completed.
    fn finish_parts(&mut self, out: &mut Vec<Piece>) {
        match self.at {
            At::Control { ty, left: 0 } => {
                out.push(Piece::Control(
                    ty,
                    Bytes::from(std::mem::take(&mut self.control)),
                ));
                self.at = At::Pdu;
            }
            At::Value {
                pdu_left,
                left: 0,
                command,
                last,
            } => {
                if command
                    && last
                    && let Some((context, set)) = self.command.take()
                {
                    out.push(Piece::Command {
                        context,
                        set,
                        raw: std::mem::take(&mut self.held),
                    });
                }
                self.at = At::Item { pdu_left };
            }
            At::Item { pdu_left: 0 } => self.at = At::Pdu,
            _ => {}
        }
    }

    /// Take header bytes from `data` until `n` are had.
    fn fill_head(&mut self, data: &mut Bytes, n: usize) -> bool {
        let take = (n - self.have).min(data.len());
        self.head[self.have..self.have + take].copy_from_slice(&data.split_to(take));
        self.have += take;
        if self.have < n {
            return false;
        }
        self.have = 0;
        true
    }

    /// Bytes held (bounded: a command set and its headers).
    pub fn held(&self) -> usize {
        self.held.len() + self.control.len()
    }
}

/// What a command set says, as far as a guard reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0000,0100).
    pub field: u16,
    /// Affected (0000,0002) or Requested (0000,0003) SOP Class UID.
    pub sop_class: Option<String>,
}

/// Read a command set (implicit VR little endian, group 0000 only).
pub fn parse_command(set: &[u8]) -> Result<Command, Malformed> {
    let mut b = set;
    let mut field = None;
    let mut sop_class = None;
    while b.remaining() >= 8 {
        let group = b.get_u16_le();
        let element = b.get_u16_le();
        let len = b.get_u32_le() as usize;
        if len > b.remaining() {
            return Err(Malformed::NoCommandField);
        }
        let value = &b[..len];
        match (group, element) {
            (0x0000, 0x0100) if len == 2 => field = Some(u16::from_le_bytes([value[0], value[1]])),
            (0x0000, 0x0002 | 0x0003) => {
                let s = String::from_utf8_lossy(value);
                sop_class = Some(s.trim_end_matches(['\0', ' ']).to_owned());
            }
            _ => {}
        }
        b.advance(len);
    }
    Ok(Command {
        field: field.ok_or(Malformed::NoCommandField)?,
        sop_class,
    })
}

/// Parse a whole control PDU with `dicom-ul`.
pub fn parse_control(pdu: &[u8]) -> Result<Pdu, Malformed> {
    match read_pdu(pdu, dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Malformed::Unreadable("truncated".into())),
        Err(e) => Err(Malformed::Unreadable(e.to_string())),
    }
}

pub(crate) fn written(pdu: &Pdu) -> Vec<u8> {
    let mut v = Vec::new();
    // Writing to a Vec fails only on PDUs dicom-ul cannot encode, which
    // the guard never builds (AE titles and UIDs come from a parsed PDU).
    if let Err(e) = write_pdu(&mut v, pdu) {
        tracing::error!(error = %e, "could not encode a DICOM PDU");
    }
    v
}

/// An A-ASSOCIATE-RJ: rejected permanently by the service user, for a
/// calling or called AE title not recognized.
pub fn reject(calling: bool) -> Vec<u8> {
    written(&Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Permanent,
        source: AssociationRJSource::ServiceUser(if calling {
            AssociationRJServiceUserReason::CallingAETitleNotRecognized
        } else {
            AssociationRJServiceUserReason::CalledAETitleNotRecognized
        }),
    }))
}

/// An A-ABORT: from the service user (a refused command) or the service
/// provider (a stream that is not DICOM).
pub fn abort(provider: Option<AbortRQServiceProviderReason>) -> Vec<u8> {
    written(&Pdu::AbortRQ {
        source: provider.map_or(AbortRQSource::ServiceUser, AbortRQSource::ServiceProvider),
    })
}

/// An A-RELEASE-RP.
pub fn release_reply() -> Vec<u8> {
    written(&Pdu::ReleaseRP)
}

/// Write `rq` again with only the presentation contexts `keep` names.
pub fn without_contexts(rq: &AssociationRQ, keep: &[u8]) -> Vec<u8> {
    let mut rq = rq.clone();
    rq.presentation_contexts.retain(|c| keep.contains(&c.id));
    written(&Pdu::AssociationRQ(rq))
}

/// Ward's own A-ASSOCIATE-AC for a request none of whose presentation
/// contexts is allowed: each rejected, abstract syntax not supported.
pub fn accept_none(rq: &AssociationRQ) -> Vec<u8> {
    written(&Pdu::AssociationAC(AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: rq.application_context_name.clone(),
        presentation_contexts: rq
            .presentation_contexts
            .iter()
            .map(|c| rejected(c.id))
            .collect(),
        user_variables: vec![
            UserVariableItem::MaxLength(16_384),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS.into()),
            UserVariableItem::ImplementationVersionName("WARD".into()),
        ],
    }))
}

fn rejected(id: u8) -> PresentationContextResult {
    PresentationContextResult {
        id,
        reason: PresentationContextResultReason::AbstractSyntaxNotSupported,
        transfer_syntax: IMPLICIT_LE.into(),
    }
}

/// The server's A-ASSOCIATE-AC with the contexts Ward took out of the
/// request answered as rejected (abstract syntax not supported), in id
/// order; any other PDU unchanged.
pub fn with_rejected(pdu: &[u8], removed: &[u8]) -> Result<Vec<u8>, Malformed> {
    if removed.is_empty() || pdu.first() != Some(&ASSOCIATE_AC) {
        return Ok(pdu.to_vec());
    }
    let Pdu::AssociationAC(mut ac) = parse_control(pdu)? else {
        return Err(Malformed::Unreadable("not an A-ASSOCIATE-AC".into()));
    };
    ac.presentation_contexts
        .extend(removed.iter().map(|&id| rejected(id)));
    ac.presentation_contexts.sort_by_key(|c| c.id);
    Ok(written(&Pdu::AssociationAC(ac)))
}

/// The server's side: its first PDU gathered (to add the rejected contexts
/// to an acceptance), then everything passed.
#[derive(Debug, Default)]
pub struct Acceptance {
    first: Vec<u8>,
    done: bool,
}

impl Acceptance {
    /// The first PDU has gone by: nothing more to read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Take `chunk`; what may go to the device now is returned.
    pub fn push(&mut self, chunk: Bytes, removed: &[u8]) -> Result<Vec<Bytes>, Malformed> {
        if self.done {
            return Ok(vec![chunk]);
        }
        self.first.extend_from_slice(&chunk);
        if self.first.len() < HEADER {
            return Ok(Vec::new());
        }
        let len = u32::from_be_bytes([self.first[2], self.first[3], self.first[4], self.first[5]]);
        if len > MAX_CONTROL {
            // Not an association answer Ward reads: passed as it is (the
            // server's stream is never refused; the device judges it).
            self.done = true;
            return Ok(vec![Bytes::from(std::mem::take(&mut self.first))]);
        }
        let whole = HEADER + len as usize;
        if self.first.len() < whole {
            return Ok(Vec::new());
        }
        self.done = true;
        let rest = self.first.split_off(whole);
        let first = with_rejected(&self.first, removed)?;
        self.first = Vec::new();
        let mut out = vec![Bytes::from(first)];
        if !rest.is_empty() {
            out.push(Bytes::from(rest));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    pub(crate) fn rq(contexts: &[(u8, &str)]) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "CT-SCANNER-2".into(),
            called_ae_title: "PACS".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, a)| PresentationContextProposed {
                    id: *id,
                    abstract_syntax: (*a).into(),
                    transfer_syntaxes: vec![IMPLICIT_LE.into()],
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }
    }

    /// A server's A-ASSOCIATE-AC accepting `ids`.
    pub(crate) fn accept(ids: &[u8]) -> Vec<u8> {
        written(&Pdu::AssociationAC(AssociationAC {
            protocol_version: 1,
            calling_ae_title: "CT-SCANNER-2".into(),
            called_ae_title: "PACS".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: ids
                .iter()
                .map(|&id| PresentationContextResult {
                    id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: IMPLICIT_LE.into(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }))
    }

    /// A command set: Affected SOP Class UID and Command Field.
    pub(crate) fn command_set(field: u16, sop: &str) -> Vec<u8> {
        let mut uid = sop.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        let mut v = Vec::new();
        v.extend_from_slice(&[0, 0, 2, 0]);
        v.extend_from_slice(&(uid.len() as u32).to_le_bytes());
        v.extend_from_slice(&uid);
        v.extend_from_slice(&[0, 0, 0, 1, 2, 0, 0, 0]);
        v.extend_from_slice(&field.to_le_bytes());
        v
    }

    /// A P-DATA-TF PDU of PDVs (context, control header, value).
    pub(crate) fn pdata(items: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ctx, ctl, value) in items {
            body.extend_from_slice(&(value.len() as u32 + 2).to_be_bytes());
            body.extend_from_slice(&[*ctx, *ctl]);
            body.extend_from_slice(value);
        }
        let mut v = vec![P_DATA, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn read_all(r: &mut Reader, stream: &[u8], step: usize) -> Result<Vec<Piece>, Malformed> {
        let mut out = Vec::new();
        for chunk in stream.chunks(step.max(1)) {
            r.push(Bytes::copy_from_slice(chunk), &mut out)?;
        }
        Ok(out)
    }

    /// Pieces joined back: the stream, byte for byte, whatever the chunking.
    fn joined(pieces: &[Piece]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in pieces {
            match p {
                Piece::Pass(b) | Piece::Control(_, b) => v.extend_from_slice(b),
                Piece::Command { raw, .. } => v.extend_from_slice(raw),
            }
        }
        v
    }

    /// An association, a C-STORE command in two fragments, data in two
    /// PDUs, a release: read in any chunking, the pieces are the stream.
    #[test]
    fn reads_an_association_in_any_chunking() {
        let ct = "1.2.840.10008.5.1.4.1.1.2";
        let mut stream = written(&Pdu::AssociationRQ(rq(&[(1, ct)])));
        let set = command_set(0x0001, ct);
        let (a, b) = set.split_at(10);
        stream.extend(pdata(&[(1, 1, a)]));
        stream.extend(pdata(&[(1, 3, b), (1, 0, b"pixel data 1")]));
        stream.extend(pdata(&[(1, 2, b"pixel data 2")]));
        stream.extend(written(&Pdu::ReleaseRQ));
        for step in [1, 3, 7, 64, stream.len()] {
            let pieces = read_all(&mut Reader::default(), &stream, step).expect("reads");
            assert_eq!(joined(&pieces), stream, "step {step}");
            let commands: Vec<_> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Command { context, set, .. } => Some((*context, set.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(commands, [(1, set.clone())], "step {step}");
            let cmd = parse_command(&commands[0].1).expect("command");
            assert_eq!(cmd.field, 1);
            assert_eq!(cmd.sop_class.as_deref(), Some(ct));
            assert!(matches!(pieces[0], Piece::Control(ASSOCIATE_RQ, _)));
            assert!(matches!(pieces.last(), Some(Piece::Control(RELEASE_RQ, _))));
        }
    }

    /// Every malformed case is an error naming it, never a panic.
    #[test]
    fn malformed_streams() {
        let mut r = Reader::default();
        assert_eq!(
            read_all(&mut r, &[0x09, 0, 0, 0, 0, 4], 6),
            Err(Malformed::UnknownType(9))
        );
        let huge = [ASSOCIATE_RQ, 0, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_all(&mut Reader::default(), &huge, 6),
            Err(Malformed::TooLong { ty: 1, .. })
        ));
        // An item longer than its PDU.
        let mut bad = pdata(&[(1, 0, b"abc")]);
        bad[9] = 200;
        assert_eq!(
            read_all(&mut Reader::default(), &bad, 4),
            Err(Malformed::BadItem(200))
        );
        // Data inside an unfinished command.
        let mixed = pdata(&[(1, 1, b"cmd"), (1, 0, b"data")]);
        assert_eq!(
            read_all(&mut Reader::default(), &mixed, 5),
            Err(Malformed::DataInCommand)
        );
        // A command set that never ends.
        let mut r = Reader::default();
        let big = vec![0u8; 60_000];
        let mut err = None;
        for _ in 0..3 {
            if let Err(e) = read_all(&mut r, &pdata(&[(1, 1, &big)]), 4096) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(Malformed::CommandTooLong));
        // A truncated association request: nothing comes out yet.
        let rq = written(&Pdu::AssociationRQ(rq(&[(1, "1.2.840.10008.1.1")])));
        let pieces = read_all(&mut Reader::default(), &rq[..rq.len() - 1], 16).expect("partial");
        assert!(pieces.is_empty());
        // A garbled one fails in dicom-ul with a reason.
        let mut garbled = rq.clone();
        garbled.truncate(20);
        garbled[5] = 14;
        assert!(parse_control(&garbled).is_err());
        assert_eq!(parse_command(&[1, 2, 3]), Err(Malformed::NoCommandField));
        assert_eq!(
            parse_command(&[0, 0, 0, 1, 0xff, 0, 0, 0]),
            Err(Malformed::NoCommandField)
        );
    }

    /// Contexts Ward took out come back rejected in the server's AC.
    #[test]
    fn acceptance_gets_the_removed_contexts() {
        let ac = written(&Pdu::AssociationAC(AssociationAC {
            protocol_version: 1,
            calling_ae_title: "CT".into(),
            called_ae_title: "PACS".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![PresentationContextResult {
                id: 1,
                reason: PresentationContextResultReason::Acceptance,
                transfer_syntax: IMPLICIT_LE.into(),
            }],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }));
        let mut a = Acceptance::default();
        let mut out = Vec::new();
        for c in ac.chunks(5) {
            out.extend(a.push(Bytes::copy_from_slice(c), &[3]).expect("push"));
        }
        out.extend(a.push(Bytes::from_static(b"more"), &[3]).expect("push"));
        let Pdu::AssociationAC(got) = parse_control(&out[0]).expect("ac") else {
            panic!("not an AC");
        };
        let results: Vec<_> = got
            .presentation_contexts
            .iter()
            .map(|c| (c.id, c.reason.clone()))
            .collect();
        assert_eq!(
            results,
            [
                (1, PresentationContextResultReason::Acceptance),
                (
                    3,
                    PresentationContextResultReason::AbstractSyntaxNotSupported
                )
            ]
        );
        assert_eq!(&out[1][..], b"more");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
        ))]
        /// Any bytes in any chunking: the reader errs or gives pieces that
        /// are a prefix of the stream, holding at most its bounds.
        #[test]
        fn reader_never_panics(stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), step in 1usize..300) {
            let mut r = Reader::default();
            let mut out = Vec::new();
            let mut fed = 0;
            for chunk in stream.chunks(step) {
                if r.push(Bytes::copy_from_slice(chunk), &mut out).is_err() {
                    break;
                }
                fed += chunk.len();
                proptest::prop_assert!(r.held() <= 2 * MAX_COMMAND + MAX_CONTROL as usize + 64);
            }
            let j = joined(&out);
            proptest::prop_assert!(j.len() <= fed);
            proptest::prop_assert_eq!(&j[..], &stream[..j.len()]);
            for p in &out {
                if let Piece::Control(_, b) = p {
                    let _ = parse_control(b);
                }
                if let Piece::Command { set, .. } = p {
                    let _ = parse_command(set);
                }
            }
        }

        /// A valid association request in any chunking parses back.
        #[test]
        fn requests_round_trip(ids in proptest::collection::vec(1u8..=255, 1..20), step in 1usize..200) {
            let contexts: Vec<(u8, &str)> = ids.iter().map(|i| (*i | 1, "1.2.840.10008.5.1.4.1.1.2")).collect();
            let want = rq(&contexts);
            let bytes = written(&Pdu::AssociationRQ(want.clone()));
            let pieces = read_all(&mut Reader::default(), &bytes, step).expect("reads");
            let [Piece::Control(ASSOCIATE_RQ, b)] = &pieces[..] else {
                return Err(proptest::test_runner::TestCaseError::fail("one request"));
            };
            proptest::prop_assert_eq!(parse_control(b).expect("parses"), Pdu::AssociationRQ(want));
        }
    }
}
