//! TOML text to [`Policy`], keeping the source span of every value.
//!
//! The document is read as a spanned TOML tree and walked by hand rather than
//! through `serde(deny_unknown_fields)`: that way every bad value and every
//! unknown key is reported in one pass, each with its line and key path, and a
//! misspelled key gets a did-you-mean.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Diagnostics, Severity, SourceMap, Span, did_you_mean};
use crate::model::*;

/// Longest id accepted for gateways, devices, services, clients, flows and
/// exceptions. They end up in nft chain, counter and log-prefix names, which
/// nft limits (a log prefix to 127 bytes).
pub const MAX_ID_LEN: usize = 48;

/// Default TCP/UDP port of the `ward/1` tunnel server.
pub const DEFAULT_TUNNEL_PORT: u16 = 4433;
/// Default loopback port of a routed gateway's transparent listener.
pub const DEFAULT_TRANSPARENT_PORT: u16 = 15001;
/// Default idle timeout of a flow. Clinical interfaces (HL7 links, DICOM
/// associations) idle for long stretches; one hour closes the forgotten ones
/// without cutting a working link in a quiet night shift.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default connect timeout towards the far end of a flow.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of concurrent connections per flow.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;

/// Parse a policy document. `file` only labels diagnostics; no file is read.
///
/// Returns every error found (syntax errors stop at the first, since the rest
/// of a broken document cannot be trusted).
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let (policy, diags) = parse_partial(file, text)?;
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(diags);
    }
    Ok(policy)
}

/// Read a policy as far as it goes: every key and value error, and the
/// policy without the items those errors left unreadable, so validation can
/// report its findings beside them. Fails only when the text is not TOML.
pub fn parse_partial(file: &str, text: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
    let source = SourceMap::new(file, text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut d = Diagnostics::new(&source);
            let span = e.span().unwrap_or(0..0);
            d.error(&span, "(syntax)", e.message().trim().to_owned());
            return Err(d.into_vec());
        }
    };
    let mut d = Diagnostics::new(&source);
    let policy = read_policy(&mut d, doc.get_ref(), source.clone());
    Ok((policy, d.into_vec()))
}

type Val<'i> = Spanned<DeValue<'i>>;

/// A TOML table being read: remembers which keys were asked for, so that the
/// remaining ones can be reported as unknown.
struct Obj<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Span,
    path: String,
    known: BTreeSet<&'static str>,
}

impl<'a, 'i> Obj<'a, 'i> {
    fn new(table: &'a DeTable<'i>, span: Span, path: String) -> Self {
        Obj {
            table,
            span,
            path,
            known: BTreeSet::new(),
        }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&mut self, k: &'static str) -> Option<&'a Val<'i>> {
        self.known.insert(k);
        self.table.get(k)
    }

    fn missing(&self, d: &mut Diagnostics, k: &str) {
        d.error(&self.span, self.key(k), "required key is missing");
    }

    fn string(&mut self, d: &mut Diagnostics, k: &'static str) -> Option<Item<String>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Item::new(s.to_string(), v.span())),
            other => {
                d.error(
                    &v.span(),
                    self.key(k),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn req_string(&mut self, d: &mut Diagnostics, k: &'static str) -> Option<Item<String>> {
        if self.table.get(k).is_none() {
            self.known.insert(k);
            self.missing(d, k);
            return None;
        }
        self.string(d, k)
    }

    /// A string converted by `f`; `what` names the expected form in errors.
    fn parsed<T>(
        &mut self,
        d: &mut Diagnostics,
        k: &'static str,
        what: &str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Option<Item<T>> {
        let s = self.string(d, k)?;
        match f(&s.value) {
            Some(v) => Some(Item::new(v, s.span)),
            None => {
                d.error(
                    &s.span,
                    self.key(k),
                    format!("\"{}\" is not {what}", s.value),
                );
                None
            }
        }
    }

    fn req_parsed<T>(
        &mut self,
        d: &mut Diagnostics,
        k: &'static str,
        what: &str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Option<Item<T>> {
        if self.table.get(k).is_none() {
            self.known.insert(k);
            self.missing(d, k);
            return None;
        }
        self.parsed(d, k, what, f)
    }

    fn int(
        &mut self,
        d: &mut Diagnostics,
        k: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<Item<i64>> {
        let v = self.get(k)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Some(Item::new(n, v.span())),
            Some(n) => {
                d.error(
                    &v.span(),
                    self.key(k),
                    format!("{n} is out of range {}..={}", range.start(), range.end()),
                );
                None
            }
            None => {
                d.error(
                    &v.span(),
                    self.key(k),
                    format!("expected an integer, found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    fn bool(&mut self, d: &mut Diagnostics, k: &'static str) -> Option<Item<bool>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Item::new(*b, v.span())),
            other => {
                d.error(
                    &v.span(),
                    self.key(k),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, d: &mut Diagnostics, k: &'static str) -> Vec<Item<String>> {
        let Some(v) = self.get(k) else {
            return Vec::new();
        };
        let key = self.key(k);
        let DeValue::Array(items) = v.get_ref() else {
            d.error(
                &v.span(),
                key,
                format!(
                    "expected an array of strings, found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Item::new(s.to_string(), item.span())),
                other => d.error(
                    &item.span(),
                    format!("{key}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    fn table(&mut self, d: &mut Diagnostics, k: &'static str) -> Option<Obj<'a, 'i>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Obj::new(t, v.span(), self.key(k))),
            other => {
                d.error(
                    &v.span(),
                    self.key(k),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// `[section.NAME]` entries, each as an object named by its key.
    fn named_tables(
        &mut self,
        d: &mut Diagnostics,
        k: &'static str,
    ) -> Vec<(Item<String>, Obj<'a, 'i>)> {
        let Some(section) = self.table(d, k) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, v) in section.table.iter() {
            let key = format!("{k}.{}", name.get_ref());
            match v.get_ref() {
                DeValue::Table(t) => {
                    let name = Item::new(name.get_ref().to_string(), name.span());
                    check_id(d, &name, &key);
                    out.push((name.clone(), Obj::new(t, name.span.clone(), key)));
                }
                other => d.error(
                    &v.span(),
                    key,
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// `[[section]]` entries.
    fn table_array(&mut self, d: &mut Diagnostics, k: &'static str) -> Vec<Obj<'a, 'i>> {
        let Some(v) = self.get(k) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            d.error(
                &v.span(),
                self.key(k),
                format!(
                    "expected an array of tables ([[{k}]]), found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Obj::new(t, item.span(), format!("{k}[{i}]"))),
                other => d.error(
                    &item.span(),
                    format!("{k}[{i}]"),
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// Report every key nobody asked for.
    fn finish(self, d: &mut Diagnostics) {
        for (k, _) in self.table.iter() {
            let name = k.get_ref();
            if !self.known.contains(name.as_ref()) {
                let help = did_you_mean(name, self.known.iter().copied());
                d.error_help(&k.span(), self.key(name), "unknown key", help);
            }
        }
    }
}

/// Ids become nft object names and log prefixes: keep them to a safe alphabet.
/// The items of array `k` of `g`, each with its key.
fn guard_array<'a, 'i>(
    g: &mut Obj<'a, 'i>,
    d: &mut Diagnostics,
    k: &'static str,
) -> Vec<(String, &'a Val<'i>)> {
    let key = g.key(k);
    match g.get(k) {
        None => Vec::new(),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{key}[{i}]"), v))
                .collect(),
            other => {
                d.error(
                    &v.span(),
                    key,
                    format!("expected an array, found {}", other.type_str()),
                );
                Vec::new()
            }
        },
    }
}

/// A flow's `guard` table: HL7 keys or Modbus keys, never both.
fn parse_guard(mut g: Obj, d: &mut Diagnostics) -> Option<Item<Guard>> {
    const HL7: [&str; 3] = [
        "message_types",
        "sending_applications",
        "sending_facilities",
    ];
    const MODBUS: [&str; 3] = ["functions", "unit_ids", "addresses"];
    const DICOM: [&str; 4] = [
        "calling_ae_titles",
        "called_ae_titles",
        "sop_classes",
        "commands",
    ];
    let span = g.span.clone();
    let has = |keys: &[&str]| keys.iter().any(|k| g.table.get(*k).is_some());
    let (hl7, modbus, dicom) = (has(&HL7), has(&MODBUS), has(&DICOM));
    if usize::from(hl7) + usize::from(modbus) + usize::from(dicom) > 1 {
        d.error(&span, g.path.clone(), "a guard is for one protocol: DICOM keys (calling_ae_titles, called_ae_titles, sop_classes, commands), HL7 keys (message_types, sending_applications, sending_facilities) or Modbus keys (functions, unit_ids, addresses)");
        return None;
    }
    if dicom {
        return parse_dicom_guard(g, d);
    }
    if modbus {
        let names: Vec<&str> = MODBUS_FUNCTIONS.iter().map(|(n, _)| *n).collect();
        let function = |d: &mut Diagnostics, key: String, v: &Val| -> Option<u8> {
            match v.get_ref() {
                DeValue::String(s) => match MODBUS_FUNCTIONS.iter().find(|(n, _)| *n == s.as_ref())
                {
                    Some((_, c)) => Some(*c),
                    None => {
                        d.error_help(
                            &v.span(),
                            key,
                            format!("\"{s}\" is not a Modbus function"),
                            did_you_mean(s, names.iter().copied()),
                        );
                        None
                    }
                },
                DeValue::Integer(i) => match i.as_str().parse::<u8>() {
                    Ok(c) if (1..=127).contains(&c) => Some(c),
                    _ => {
                        d.error(
                            &v.span(),
                            key,
                            format!("{} is not a Modbus function code (1 to 127)", i.as_str()),
                        );
                        None
                    }
                },
                other => {
                    d.error(
                        &v.span(),
                        key,
                        format!(
                            "expected a function name or code, found {}",
                            other.type_str()
                        ),
                    );
                    None
                }
            }
        };
        let functions: Vec<u8> = guard_array(&mut g, d, "functions")
            .into_iter()
            .filter_map(|(key, v)| function(d, key, v))
            .collect();
        let unit_ids: Vec<u8> = guard_array(&mut g, d, "unit_ids")
            .into_iter()
            .filter_map(|(key, v)| match v.get_ref() {
                DeValue::Integer(i) => match i.as_str().parse::<u8>() {
                    Ok(u) => Some(u),
                    Err(_) => {
                        d.error(
                            &v.span(),
                            key,
                            format!("{} is not a unit id (0 to 255)", i.as_str()),
                        );
                        None
                    }
                },
                other => {
                    d.error(
                        &v.span(),
                        key,
                        format!("expected a unit id, found {}", other.type_str()),
                    );
                    None
                }
            })
            .collect();
        let mut addresses: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
        for (key, v) in guard_array(&mut g, d, "addresses") {
            let DeValue::Table(t) = v.get_ref() else {
                d.error(
                    &v.span(),
                    key,
                    "expected { function = \"…\", from = N, to = N }",
                );
                continue;
            };
            let mut a = Obj::new(t, v.span(), key.clone());
            let f = a
                .get("function")
                .and_then(|fv| function(d, a.key("function"), fv));
            if a.table.get("function").is_none() {
                a.missing(d, "function");
            }
            let from = a.int(d, "from", 0..=65535);
            let to = a.int(d, "to", 0..=65535);
            let to_key = a.key("to");
            if a.table.get("from").is_none() {
                a.missing(d, "from");
            }
            if a.table.get("to").is_none() {
                a.missing(d, "to");
            }
            a.finish(d);
            if let (Some(f), Some(from), Some(to)) = (f, from, to) {
                if from.value > to.value {
                    d.error(
                        &to.span,
                        to_key,
                        format!(
                            "the range ends ({}) before it starts ({})",
                            to.value, from.value
                        ),
                    );
                    continue;
                }
                addresses
                    .entry(f)
                    .or_default()
                    .push((from.value as u16, to.value as u16));
            }
        }
        g.finish(d);
        return Some(Item::new(
            Guard::Modbus(ModbusGuard {
                functions,
                unit_ids,
                addresses,
            }),
            span,
        ));
    }
    if !hl7 {
        // Unknown keys only: `finish` names them.
        if g.table.is_empty() {
            d.error(&span, g.path.clone(), "an empty guard: name what the device may send (DICOM: calling_ae_titles, called_ae_titles, sop_classes, commands; HL7: message_types, sending_applications, sending_facilities; Modbus: functions, unit_ids, addresses)");
        }
        g.finish(d);
        return None;
    }
    let message_types = g.string_list(d, "message_types");
    for t in &message_types {
        if !is_hl7_message_type(&t.value) {
            d.error_help(
                &t.span,
                g.key("message_types"),
                format!("\"{}\" is not an HL7 message type", t.value),
                Some("write MSH-9's type and trigger event, e.g. \"ORU^R01\", \"ADT^A08\"".into()),
            );
        }
    }
    let list = |v: Vec<Item<String>>| v.into_iter().map(|i| i.value).collect::<Vec<_>>();
    let sending_applications = list(g.string_list(d, "sending_applications"));
    let sending_facilities = list(g.string_list(d, "sending_facilities"));
    g.finish(d);
    Some(Item::new(
        Guard::Hl7(Hl7Guard {
            message_types: list(message_types),
            sending_applications,
            sending_facilities,
        }),
        span,
    ))
}

fn parse_dicom_guard(mut g: Obj, d: &mut Diagnostics) -> Option<Item<Guard>> {
    let span = g.span.clone();
    let ae_titles = |g: &mut Obj, d: &mut Diagnostics, k: &'static str| -> Vec<String> {
        let key = g.key(k);
        g.string_list(d, k)
            .into_iter()
            .filter_map(|t| {
                let v = t.value.trim();
                let ok = !v.is_empty()
                    && v.len() <= 16
                    && v.chars().all(|c| c.is_ascii_graphic() && c != '\\' || c == ' ');
                if ok {
                    Some(v.to_owned())
                } else {
                    d.error(
                        &t.span,
                        key.clone(),
                        format!("\"{}\" is not an AE title: 1 to 16 printable ASCII characters, no backslash", t.value),
                    );
                    None
                }
            })
            .collect()
    };
    let calling_ae_titles = ae_titles(&mut g, d, "calling_ae_titles");
    let called_ae_titles = ae_titles(&mut g, d, "called_ae_titles");
    let key = g.key("sop_classes");
    let sop_classes: Vec<String> = g
        .string_list(d, "sop_classes")
        .into_iter()
        .filter_map(|c| match sop_class_uid(&c.value) {
            Some(uid) => Some(uid.to_owned()),
            // A UID the dictionary does not know (private SOP classes).
            None if is_uid(&c.value) => Some(c.value.clone()),
            None => {
                d.error_help(
                    &c.span,
                    key.clone(),
                    format!("\"{}\" is not a DICOM SOP class", c.value),
                    did_you_mean(&c.value, COMMON_SOP_CLASSES.iter().copied()).or_else(|| {
                        Some("write its standard name (\"CT Image Storage\"), keyword (\"CTImageStorage\") or UID (\"1.2.840.10008.5.1.4.1.1.2\")".into())
                    }),
                );
                None
            }
        })
        .collect();
    let key = g.key("commands");
    let names: Vec<&str> = DIMSE_COMMANDS.iter().map(|(n, _)| *n).collect();
    let commands: Vec<u16> = g
        .string_list(d, "commands")
        .into_iter()
        .filter_map(|c| {
            let found = DIMSE_COMMANDS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&c.value));
            if found.is_none() {
                d.error_help(
                    &c.span,
                    key.clone(),
                    format!("\"{}\" is not a DIMSE request command", c.value),
                    did_you_mean(&c.value.to_ascii_uppercase(), names.iter().copied()),
                );
            }
            found.map(|(_, f)| *f)
        })
        .collect();
    g.finish(d);
    Some(Item::new(
        Guard::Dicom(DicomGuard {
            calling_ae_titles,
            called_ae_titles,
            sop_classes,
            commands,
        }),
        span,
    ))
}

/// A DICOM UID: dot-separated numbers, at most 64 characters.
fn is_uid(s: &str) -> bool {
    s.len() <= 64
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn check_id(d: &mut Diagnostics, id: &Item<String>, key: &str) {
    let s = &id.value;
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_start || s.len() > MAX_ID_LEN {
        d.error(
            &id.span,
            key.to_owned(),
            format!(
                "\"{s}\" is not a valid name: use 1 to {MAX_ID_LEN} lower-case letters, digits, '-' or '_', starting with a letter or digit"
            ),
        );
    }
}

/// Parse `10m`, `30s`, `500ms`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

/// An optional `tz` key: an IANA time zone name the zone database knows.
fn parse_tz(o: &mut Obj, d: &mut Diagnostics) -> Option<Item<String>> {
    o.parsed(
        d,
        "tz",
        "an IANA time zone (e.g. \"Europe/Berlin\", \"Asia/Tokyo\", \"UTC\")",
        |s| jiff::tz::TimeZone::get(s).is_ok().then(|| s.to_owned()),
    )
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// An IPv4 address with a prefix length, e.g. `198.51.100.1/28`.
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr = a.parse::<std::net::Ipv4Addr>().ok()?;
    let prefix = p.parse::<u8>().ok()?;
    (prefix <= 32).then_some((IpAddr::V4(addr), prefix))
}

fn parse_target(s: &str) -> Option<ExceptionTarget> {
    if s == "gateway" {
        return Some(ExceptionTarget::Gateway);
    }
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(ExceptionTarget::Net { addr, prefix })
}

fn read_policy(d: &mut Diagnostics, doc: &DeTable, source: SourceMap) -> Policy {
    let mut top = Obj::new(doc, 0..0, String::new());

    let version = match top.int(d, "version", 1..=u32::MAX as i64) {
        Some(v) if v.value == 1 => 1,
        Some(v) => {
            d.error(
                &v.span,
                "version",
                format!(
                    "unsupported policy version {}; this Ward reads version 1",
                    v.value
                ),
            );
            1
        }
        None => {
            if doc.get("version").is_none() {
                d.error(
                    &(0..0),
                    "version",
                    "required key is missing (write `version = 1`)",
                );
            }
            1
        }
    };
    let trust_domain = top
        .req_parsed(
            d,
            "trust_domain",
            "a DNS name (e.g. \"st-mary.example\")",
            |s| {
                let ok = !s.is_empty()
                    && s.len() <= 253
                    && s.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    });
                ok.then(|| s.to_owned())
            },
        )
        .unwrap_or_else(|| Item::new(String::new(), 0..0));
    let mode = top
        .parsed(
            d,
            "mode",
            "a mode (\"enforce\" or \"monitor\")",
            |s| match s {
                "enforce" => Some(Mode::Enforce),
                "monitor" => Some(Mode::Monitor),
                _ => None,
            },
        )
        .map_or(Mode::Enforce, |m| m.value);
    let quarantine = top.string_list(d, "quarantine");
    let tz = parse_tz(&mut top, d);

    // Every gateway, device and service name declared, read or not.
    let mut declared = BTreeSet::new();
    let mut gateways = BTreeMap::new();
    for (name, mut o) in top.named_tables(d, "gateways") {
        declared.insert(name.value.clone());
        let device_interfaces = o.string_list(d, "device_interfaces");
        let lan_address = o.req_parsed(d, "lan_address", "an IP address", |s| s.parse().ok());
        let tunnel_port = o
            .int(d, "tunnel_port", 1..=65535)
            .map_or(DEFAULT_TUNNEL_PORT, |p| p.value as u16);
        let tz = parse_tz(&mut o, d);
        let insertion = o
            .parsed(
                d,
                "insertion",
                "an insertion mode (\"explicit\", \"routed\" or \"bridge\")",
                |s| match s {
                    "explicit" => Some(Insertion::Explicit),
                    "routed" => Some(Insertion::Routed),
                    "bridge" => Some(Insertion::Bridge),
                    _ => None,
                },
            )
            .map_or(Insertion::Explicit, |i| i.value);
        let routers: Vec<Item<(IpAddr, u8)>> = o
            .string_list(d, "routers")
            .into_iter()
            .filter_map(|r| match parse_prefix(&r.value) {
                Some(v) => Some(Item::new(v, r.span)),
                None => {
                    d.error(
                        &r.span,
                        o.key("routers"),
                        format!(
                            "\"{}\" is not a router address with prefix (e.g. \"198.51.100.1/28\")",
                            r.value
                        ),
                    );
                    None
                }
            })
            .collect();
        let transparent_port = o
            .int(d, "transparent_port", 1..=65535)
            .map_or(DEFAULT_TRANSPARENT_PORT, |p| p.value as u16);
        let observe = o.bool(d, "observe").is_none_or(|b| b.value);
        let bridge = o.table(d, "bridge").and_then(|mut b| {
            let span = b.span.clone();
            let name = b.req_string(d, "name");
            let uplink = b.req_string(d, "uplink");
            let mac = b.req_parsed(d, "mac", "a MAC address", |s| s.parse::<Mac>().ok());
            let router_mac =
                b.req_parsed(d, "router_mac", "a MAC address", |s| s.parse::<Mac>().ok());
            b.finish(d);
            Some(Item::new(
                Bridge {
                    name: name?.value,
                    uplink: uplink?.value,
                    mac: mac?.value,
                    router_mac: router_mac?.value,
                },
                span,
            ))
        });
        o.finish(d);
        if let Some(lan_address) = lan_address {
            gateways.insert(
                name.value.clone(),
                Gateway {
                    name,
                    device_interfaces,
                    lan_address,
                    tunnel_port,
                    tz,
                    insertion,
                    routers,
                    transparent_port,
                    observe,
                    bridge,
                },
            );
        }
    }

    let mut devices = BTreeMap::new();
    for (id, mut o) in top.named_tables(d, "devices") {
        declared.insert(id.value.clone());
        let name = o.string(d, "name").map(|s| s.value);
        let gateway = o.req_string(d, "gateway");
        let interface = o.req_string(d, "interface");
        let ip = o.req_parsed(d, "ip", "an IPv4 address", |s| {
            s.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
        });
        let mac = o.req_parsed(
            d,
            "mac",
            "a MAC address (e.g. \"02:00:00:00:00:17\")",
            |s| s.parse::<Mac>().ok(),
        );
        let class = o.string(d, "class").map(|s| s.value);
        let vendor = o.string(d, "vendor").map(|s| s.value);
        let model = o.string(d, "model").map(|s| s.value);
        let firmware = o.string(d, "firmware").map(|s| s.value);
        let support = o.table(d, "support").and_then(|mut s| {
            let stage = s.req_parsed(
                d,
                "stage",
                &format!(
                    "a support stage (one of {})",
                    SupportStage::NAMES.join(", ")
                ),
                SupportStage::parse,
            );
            let ends = s.parsed(d, "ends", "a date (YYYY-MM-DD)", |v| v.parse::<Date>().ok());
            let span = s.span.clone();
            s.finish(d);
            Some(Item::new(
                Support {
                    stage: stage?.value,
                    ends: ends.map(|e| e.value),
                },
                span,
            ))
        });
        let vulnerabilities = o
            .string_list(d, "vulnerabilities")
            .into_iter()
            .map(|v| v.value)
            .collect();
        let sbom = o.string(d, "sbom").map(|s| s.value);
        o.finish(d);
        if let (Some(gateway), Some(interface), Some(ip), Some(mac)) = (gateway, interface, ip, mac)
        {
            devices.insert(
                id.value.clone(),
                Device {
                    id,
                    name,
                    gateway,
                    interface,
                    ip,
                    mac,
                    class,
                    vendor,
                    model,
                    firmware,
                    support,
                    vulnerabilities,
                    sbom,
                },
            );
        }
    }

    let mut services = BTreeMap::new();
    for (name, mut o) in top.named_tables(d, "services") {
        declared.insert(name.value.clone());
        let address = o.req_parsed(
            d,
            "address",
            "an address with port (e.g. \"10.99.0.5:104\")",
            |s| s.parse::<SocketAddr>().ok(),
        );
        let protocol = o
            .parsed(
                d,
                "protocol",
                "a protocol (dicom, hl7, modbus or tcp)",
                Protocol::parse,
            )
            .map_or(Protocol::Tcp, |p| p.value);
        let via = o.string(d, "via");
        let tls = o.table(d, "tls").and_then(|mut t| {
            let ca = t.req_string(d, "ca");
            let server_name = t.req_string(d, "server_name");
            t.finish(d);
            let ca = ca?;
            Some(Item::new(
                TlsTarget {
                    ca: ca.value,
                    server_name: server_name?.value,
                },
                ca.span,
            ))
        });
        let had_tls = o.table.get("tls").is_some();
        let span = o.span.clone();
        let key = o.key("via");
        o.finish(d);
        let reach = if via.is_none() && !had_tls {
            d.error(&span, key, "a service needs `via = \"<hub gateway>\"`, a `tls = { ca, server_name }` table, or both: cleartext never crosses the LAN");
            None
        } else if had_tls && tls.is_none() {
            None
        } else {
            Some((via, tls))
        };
        if let (Some(address), Some((via, tls))) = (address, reach) {
            services.insert(
                name.value.clone(),
                Service {
                    name,
                    address,
                    protocol,
                    via,
                    tls,
                },
            );
        }
    }

    let mut clients = BTreeMap::new();
    for (name, mut o) in top.named_tables(d, "clients") {
        let _description = o.string(d, "description");
        o.finish(d);
        let identity = format!("spiffe://{}/client/{}", trust_domain.value, name.value);
        clients.insert(name.value.clone(), Client { name, identity });
    }

    let mut flows = Vec::new();
    for (index, mut o) in top.table_array(d, "flows").into_iter().enumerate() {
        let name = o.req_string(d, "name");
        if let Some(name) = &name {
            check_id(d, name, &o.key("name"));
        }
        let from = o.string(d, "from");
        let to = o.req_string(d, "to");
        let listen = o.parsed(
            d,
            "listen",
            "an address with port (e.g. \"10.20.0.1:104\")",
            |s| s.parse::<SocketAddr>().ok(),
        );
        let port = o.int(d, "port", 1..=65535);
        let device_target = o.parsed(
            d,
            "device_target",
            "an address with port (e.g. \"10.99.0.5:104\")",
            |s| s.parse::<SocketAddr>().ok(),
        );
        let transport = o
            .parsed(
                d,
                "transport",
                "a transport (\"tcp\" or \"quic\")",
                |s| match s {
                    "tcp" => Some(Transport::Tcp),
                    "quic" => Some(Transport::Quic),
                    _ => None,
                },
            )
            .map_or(Transport::Tcp, |t| t.value);
        let dur = |o: &mut Obj, d: &mut Diagnostics, k, default| {
            o.parsed(
                d,
                k,
                "a duration (e.g. \"30s\", \"10m\", \"2h\")",
                parse_duration,
            )
            .map_or(default, |v| v.value)
        };
        let idle_timeout = dur(&mut o, d, "idle_timeout", DEFAULT_IDLE_TIMEOUT);
        let connect_timeout = dur(&mut o, d, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
        let max_connections = o
            .int(d, "max_connections", 1..=1_000_000)
            .map_or(DEFAULT_MAX_CONNECTIONS, |v| v.value as u32);
        let window = o.table(d, "window").and_then(|mut w| {
            let days_key = w.key("days");
            let days: Vec<u8> = w
                .string_list(d, "days")
                .iter()
                .filter_map(|day| match day.value.as_str() {
                    "daily" => Some(vec![0, 1, 2, 3, 4, 5, 6]),
                    s => match DAYS.iter().position(|x| *x == s) {
                        Some(i) => Some(vec![i as u8]),
                        None => {
                            d.error_help(
                                &day.span,
                                days_key.clone(),
                                format!("\"{s}\" is not a day (mon … sun, or daily)"),
                                did_you_mean(s, DAYS),
                            );
                            None
                        }
                    },
                })
                .flatten()
                .collect::<BTreeSet<u8>>()
                .into_iter()
                .collect();
            if w.table.get("days").is_none() {
                w.missing(d, "days");
            }
            let start = w.req_parsed(d, "start", "a time of day (HH:MM)", parse_hhmm);
            let end = w.req_parsed(d, "end", "a time of day (HH:MM)", parse_hhmm);
            let tz = parse_tz(&mut w, d).map(|t| t.value);
            let warning = w
                .parsed(d, "warning", "a duration (e.g. \"5m\")", parse_duration)
                .map_or(DEFAULT_WINDOW_WARNING, |v| v.value);
            w.finish(d);
            Some(Window {
                days,
                start: start?.value,
                end: end?.value,
                tz,
                warning,
            })
        });
        let guard = o.table(d, "guard").and_then(|g| parse_guard(g, d));
        let had_window = o.table.get("window").is_some();
        let span = o.span.clone();
        let key = o.path.clone();
        o.finish(d);
        let (Some(name), Some(to)) = (name, to) else {
            continue;
        };
        let inbound_hint = port.is_some() || had_window;
        // Whether `to` names a device decides the direction; the references
        // themselves are checked in validation.
        let from_service = from
            .as_ref()
            .is_some_and(|f| services.contains_key(&f.value) && !devices.contains_key(&f.value));
        let kind = if from_service {
            let Some(port) = port else {
                d.error(
                    &span,
                    format!("{key}.port"),
                    format!(
                        "return flow \"{}\" needs the device port the server may reach: port = <n>",
                        name.value
                    ),
                );
                continue;
            };
            if had_window {
                d.error(&span, format!("{key}.window"), "windows limit client access; a return flow follows its service's own associations");
                continue;
            }
            FlowKind::Return {
                service: from.clone().expect("checked above"),
                device: to,
                port: port.value as u16,
            }
        } else if inbound_hint
            || (devices.contains_key(&to.value) && !services.contains_key(&to.value))
        {
            let Some(client) = from.clone() else {
                d.error(&span, format!("{key}.from"), format!("inbound flow \"{}\" to device \"{}\" needs a client identity: from = \"<client>\"", name.value, to.value));
                continue;
            };
            let Some(port) = port else {
                d.error(
                    &span,
                    format!("{key}.port"),
                    format!(
                        "inbound flow \"{}\" needs the device port it may reach: port = <n>",
                        name.value
                    ),
                );
                continue;
            };
            if window.is_none() && had_window {
                continue;
            }
            FlowKind::Inbound {
                client,
                device: to,
                port: port.value as u16,
                window,
            }
        } else {
            let Some(device) = from else {
                d.error(
                    &span,
                    format!("{key}.from"),
                    format!("flow \"{}\" needs from = \"<device>\"", name.value),
                );
                continue;
            };
            FlowKind::Outbound {
                device,
                service: to,
            }
        };
        let mut transparent = false;
        let listen = match (listen, &kind) {
            (Some(l), _) => {
                if let Some(t) = &device_target {
                    d.error(&t.span, format!("{key}.device_target"), "device_target is for flows without listen, intercepted on a routed gateway; this flow's device is pointed at its listen address");
                }
                l
            }
            // An inbound flow listens on the gateway's LAN address by default.
            (None, FlowKind::Inbound { device, port, .. }) => {
                let lan = devices
                    .get(&device.value)
                    .and_then(|dev: &Device| gateways.get(&dev.gateway.value))
                    .map(|g: &Gateway| g.lan_address.value);
                match lan {
                    Some(ip) => Item::new(SocketAddr::new(ip, *port), span.clone()),
                    None => continue, // the unknown device is reported in validation
                }
            }
            (None, FlowKind::Return { .. }) => {
                d.error(&span, format!("{key}.listen"), format!("return flow \"{}\" needs listen = \"<ip:port>\": the address on the hub the server connects to", name.value));
                continue;
            }
            (None, FlowKind::Outbound { device, service }) => {
                let gateway = devices
                    .get(&device.value)
                    .and_then(|dev: &Device| gateways.get(&dev.gateway.value));
                match gateway {
                    Some(g) if g.insertion != Insertion::Explicit => {
                        // Intercepted where the device has always connected.
                        let target = device_target.as_ref().map(|t| t.value).or_else(|| {
                            services
                                .get(&service.value)
                                .map(|s: &Service| s.address.value)
                        });
                        let Some(target) = target else {
                            continue; // the unknown service is reported in validation
                        };
                        transparent = true;
                        Item::new(target, device_target.map_or(span.clone(), |t| t.span))
                    }
                    Some(g) => {
                        d.error_help(&span, format!("{key}.listen"), format!("flow \"{}\" needs listen = \"<ip:port>\": the address the device is pointed at", name.value), Some(format!("or set insertion = \"routed\" on gateway \"{}\" to intercept the device's connections where they always went", g.name.value)));
                        continue;
                    }
                    None => continue, // the unknown device is reported in validation
                }
            }
        };
        flows.push(Flow {
            index,
            name,
            kind,
            listen,
            transparent,
            transport,
            idle_timeout,
            connect_timeout,
            max_connections,
            guard,
            span,
        });
    }

    let mut exceptions = Vec::new();
    for (index, mut o) in top.table_array(d, "exceptions").into_iter().enumerate() {
        let name = o.req_string(d, "name");
        if let Some(name) = &name {
            check_id(d, name, &o.key("name"));
        }
        let devs = o.string_list(d, "devices");
        if o.table.get("devices").is_none() {
            o.missing(d, "devices");
        }
        let to = o.req_parsed(
            d,
            "to",
            "\"gateway\", an IP address or a prefix (e.g. \"192.0.2.123\", \"192.0.2.0/24\")",
            parse_target,
        );
        let protocol = o.req_parsed(
            d,
            "protocol",
            "a protocol (tcp, udp or icmp)",
            |s| match s {
                "tcp" => Some(L4::Tcp),
                "udp" => Some(L4::Udp),
                "icmp" => Some(L4::Icmp),
                _ => None,
            },
        );
        let port = o.int(d, "port", 1..=65535).map(|p| p.value as u16);
        let justification = o.string(d, "justification");
        o.finish(d);
        if let (Some(name), Some(to), Some(protocol)) = (name, to, protocol) {
            exceptions.push(Exception {
                index,
                name,
                devices: devs,
                to,
                protocol: protocol.value,
                port,
                justification,
            });
        }
    }

    top.finish(d);
    let unreadable = declared
        .into_iter()
        .filter(|n| {
            !gateways.contains_key(n) && !devices.contains_key(n) && !services.contains_key(n)
        })
        .collect();
    Policy {
        source,
        version,
        trust_domain,
        mode,
        tz,
        quarantine,
        gateways,
        devices,
        services,
        clients,
        flows,
        exceptions,
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations take one unit suffix and reject zero and junk.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
    }

    /// A misspelled key is reported with its line, key path and a suggestion.
    #[test]
    fn unknown_key_suggests() {
        let text =
            "version = 1\ntrust_domain = \"a.example\"\n[gateways.g]\nlan_adress = \"192.0.2.1\"\n";
        let errs = parse("p.toml", text).unwrap_err();
        let typo = errs
            .iter()
            .find(|e| e.key == "gateways.g.lan_adress")
            .expect("typo reported");
        assert_eq!(typo.line, 4);
        assert_eq!(typo.help.as_deref(), Some("did you mean \"lan_address\"?"));
        assert!(
            errs.iter()
                .any(|e| e.key == "gateways.g.lan_address" && e.message.contains("missing"))
        );
    }

    /// Bad values are all reported in one pass, not only the first.
    #[test]
    fn all_value_errors_at_once() {
        let text = r#"version = 1
trust_domain = "a.example"
[gateways.g]
lan_address = "192.0.2.300"
[devices.d]
gateway = "g"
interface = "dev0"
ip = "10.0.0.1"
mac = "02:00:00:00:00"
"#;
        let errs = parse("p.toml", text).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["gateways.g.lan_address", "devices.d.mac"]);
        assert_eq!((errs[0].line, errs[1].line), (4, 9));
    }

    /// A TOML syntax error names its line.
    #[test]
    fn syntax_error_located() {
        let errs = parse("p.toml", "version = 1\ntrust_domain = \n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
    }
}
