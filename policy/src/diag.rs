//! Diagnostics: what is wrong with a policy, and exactly where.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// A byte range in the policy source.
pub type Span = Range<usize>;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy cannot be used.
    Error,
    /// The policy can be used, but an admin should look at this.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a policy, located by file, line, column and key path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file name the policy was read from (as given by the caller).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// Dotted key path, e.g. `flows[2].from` or `devices.ct-scanner-2.mac`.
    pub key: String,
    /// What is wrong, lower case, no trailing period.
    pub message: String,
    /// A suggestion, e.g. the nearest existing name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}: {}",
            self.file, self.line, self.column, self.severity, self.key, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one source text to lines and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMap {
    file: String,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    /// Index `text`, which was read from `file`.
    pub fn new(file: impl Into<String>, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap {
            file: file.into(),
            text: text.to_owned(),
            line_starts,
        }
    }

    /// The file name given at construction.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line and column of a byte offset.
    pub fn locate(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line as u32 + 1, column as u32 + 1)
    }
}

/// Collects diagnostics while a policy is read and checked.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    source: &'a SourceMap,
    items: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    /// A new, empty collection for `source`.
    pub fn new(source: &'a SourceMap) -> Self {
        Diagnostics {
            source,
            items: Vec::new(),
        }
    }

    /// Record an error at `span` about `key`.
    pub fn error(&mut self, span: &Span, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, span, key.into(), message.into(), None);
    }

    /// Record an error with a suggestion.
    pub fn error_help(
        &mut self,
        span: &Span,
        key: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(Severity::Error, span, key.into(), message.into(), help);
    }

    /// Record a warning at `span` about `key`.
    pub fn warning(&mut self, span: &Span, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, span, key.into(), message.into(), None);
    }

    fn push(
        &mut self,
        severity: Severity,
        span: &Span,
        key: String,
        message: String,
        help: Option<String>,
    ) {
        let (line, column) = self.source.locate(span.start);
        self.items.push(Diagnostic {
            severity,
            file: self.source.file().to_owned(),
            line,
            column,
            key,
            message,
            help,
        });
    }

    /// True when at least one error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// The diagnostics, in source order.
    pub fn into_vec(mut self) -> Vec<Diagnostic> {
        self.items.sort_by(|a, b| {
            (a.line, a.column, a.severity, &a.key).cmp(&(b.line, b.column, b.severity, &b.key))
        });
        self.items.dedup();
        self.items
    }
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("did you mean \"{c}\"?"))
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets map to 1-based lines and character columns.
    #[test]
    fn locate_lines_and_columns() {
        let map = SourceMap::new("p.toml", "a = 1\nbé = 2\n");
        assert_eq!(map.locate(0), (1, 1));
        assert_eq!(map.locate(6), (2, 1));
        assert_eq!(map.locate(9), (2, 3));
    }

    /// A one-letter typo is suggested; an unrelated name is not.
    #[test]
    fn suggestions() {
        let names = ["pump-icu-07", "ct-scanner-2"];
        assert_eq!(
            did_you_mean("pump-icu-7", names).as_deref(),
            Some("did you mean \"pump-icu-07\"?")
        );
        assert_eq!(did_you_mean("mri-1", names), None);
    }
}
