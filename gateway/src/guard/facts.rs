//! Protocol facts (issue 14, learning): what a flow's protocol said, by the
//! guard key that would allow it (`calling_ae_titles`, `called_ae_titles`,
//! `sop_classes`, `commands`, `message_types`, `sending_applications`,
//! `sending_facilities`, `functions`, `unit_ids`), so that a suggested
//! policy can carry guards. Header facts only, never contents; at most
//! [`MAX_PER_KIND`] values a kind per flow, the rest counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Values kept per kind and flow.
pub const MAX_PER_KIND: usize = 64;

/// One flow's facts.
#[derive(Debug, Default)]
pub struct Facts {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    values: BTreeMap<&'static str, BTreeSet<String>>,
    /// Values not kept because their kind was full.
    dropped: u64,
}

impl Facts {
    /// Note that the flow said `value` of `kind`.
    pub fn note(&self, kind: &'static str, value: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let set = seen.values.entry(kind).or_default();
        if set.contains(value) {
            return;
        }
        if set.len() >= MAX_PER_KIND {
            seen.dropped += 1;
            return;
        }
        set.insert(value.to_owned());
    }

    /// Everything noted, by kind; and how many values were not kept.
    pub fn snapshot(&self) -> (BTreeMap<String, Vec<String>>, u64) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (
            seen.values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().cloned().collect()))
                .collect(),
            seen.dropped,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_deduplicated() {
        let f = Facts::default();
        f.note("message_types", "ORU^R01");
        f.note("message_types", "ORU^R01");
        for i in 0..100 {
            f.note("unit_ids", &i.to_string());
        }
        let (values, dropped) = f.snapshot();
        assert_eq!(values["message_types"], ["ORU^R01"]);
        assert_eq!(values["unit_ids"].len(), MAX_PER_KIND);
        assert_eq!(dropped, 100 - MAX_PER_KIND as u64);
    }
}
