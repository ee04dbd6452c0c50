//! The auditor's bundle (SPEC §5) and its format: the files (`manifest.json` and [`FILES`]),
//! the [`Manifest`], the entry line's layout, and what `export` and `verify` share.
//! Owns: the format and the re-exports. May not touch: the store or the filesystem — writing a
//! bundle is `export`'s, checking one is `verify`'s, personal data `pseudonymise`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod export;
mod pseudonymise;
mod verify;
mod writers;

pub use export::{ExportError, ExportRequest, ExportSummary, checkpoint_at, export};
pub use pseudonymise::PSEUDONYM_PREFIX;
pub use verify::{
    Anchor, Completeness, ContentChecks, TreeEnd, VerifyFailure, VerifyOptions, VerifyReport,
    verify,
};

pub const FILES: [&str; 7] = [
    "checkpoint",
    "log.pub",
    "entries.jsonl",
    "records.json",
    "records.csv",
    "deliveries.csv",
    "exceptions.csv",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// First and last day, inclusive, in the deployment's time zone.
    pub from: String,
    pub to: String,
    /// The same period as UTC instants, `[from_utc, to_utc)`.
    pub from_utc: String,
    pub to_utc: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub trust: String,
    pub school: String,
    pub period: Period,
    pub tree_size: u64,
    pub entries: u64,
    pub generator: String,
    pub pseudonymised: bool,
    /// SHA-256 (hex) of every other file of the bundle.
    pub files: BTreeMap<String, String>,
}

/// The revisions of the period whose content the store purged under retention: listed by
/// content hash (their place in `records.json` holds a stub; their leaves still verify).
/// Optional for `verify`: bundles from before retention have none.
pub const PURGED: &str = "purged.csv";

pub const PURGED_CSV: [&str; 7] = [
    "kind",
    "record_id",
    "revision",
    "school",
    "content_hash",
    "received_at",
    "purged_at",
];

/// The optional file holding the RFC 9162 consistency proof from a checkpoint the auditor
/// already held (`audit export --prove-from`).
pub const CONSISTENCY: &str = "consistency.json";

/// `consistency.json`: the earlier checkpoint's size and root (base64, as in a checkpoint)
/// and the proof's hashes (hex, as in an entry's proof), in RFC 9162 order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyFile {
    pub from_size: u64,
    pub from_root: String,
    pub proof: Vec<String>,
}

/// An entry line as `export` writes it (`verify` reads it as [`EntryRef`]).
#[derive(Debug, Serialize)]
struct Entry {
    index: u64,
    leaf: String,
    proof: Vec<String>,
}

impl Entry {
    /// The line as compact JSON, written directly: base64 and hex need no escaping, so it is
    /// what `serde_json` writes (a test checks it), without its escaping pass.
    fn line(&self) -> String {
        let mut line = String::with_capacity(self.leaf.len() + self.proof.len() * 67 + 48);
        line.push_str(r#"{"index":"#);
        line.push_str(&self.index.to_string());
        line.push_str(r#","leaf":""#);
        line.push_str(&self.leaf);
        line.push_str(r#"","proof":["#);
        for (i, h) in self.proof.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push('"');
            line.push_str(h);
            line.push('"');
        }
        line.push_str("]}");
        line
    }
}

/// An entry line as read by `verify`, borrowing from the line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRef<'a> {
    index: u64,
    #[serde(borrow)]
    leaf: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    proof: Vec<std::borrow::Cow<'a, str>>,
}

impl<'a> EntryRef<'a> {
    /// The line read in the exact layout `export` writes — `{"index":N,"leaf":"…","proof":
    /// ["…",…]}` with base64 and hex strings, which need no unescaping — without a JSON
    /// parser; `None` for anything else, which is then parsed as JSON.
    fn exact(line: &'a [u8]) -> Option<Self> {
        // Plain ASCII without a backslash: no string of the line needs unescaping (checked
        // once for the whole line, at memory speed).
        if !line.is_ascii() || memchr::memchr(b'\\', line).is_some() {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?;
        let rest = line.strip_prefix(r#"{"index":"#)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 1 && rest.starts_with('0') {
            return None; // not a JSON number: the parser says so
        }
        let index = rest[..digits].parse().ok()?;
        let rest = rest[digits..].strip_prefix(r#","leaf":""#)?;
        let end = memchr::memchr(b'"', rest.as_bytes())?;
        let leaf = &rest[..end];
        let mut rest = rest[end..].strip_prefix(r#"","proof":["#)?;
        let mut proof = Vec::with_capacity(40);
        while let Some(r) = rest.strip_prefix('"') {
            let end = memchr::memchr(b'"', r.as_bytes())?;
            proof.push(std::borrow::Cow::Borrowed(&r[..end]));
            rest = &r[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        (rest == "]}").then_some(Self {
            index,
            leaf: std::borrow::Cow::Borrowed(leaf),
            proof,
        })
    }
}

/// Told how far a long export or verification has gone (the CLI draws a bar in a terminal).
pub trait Progress: Sync {
    /// A step begins; `total` 0 when it is not known ahead.
    fn start(&self, _what: &'static str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {}

/// A spreadsheet must not run a cell as a formula.
pub fn safe_cell(s: &str) -> String {
    match s.trim_start().chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

/// A trust's log is named `<key name>/<trust>`.
pub fn origin(key_name: &str, trust: &str) -> String {
    format!("{key_name}/{trust}")
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::*;

    #[test]
    fn an_entry_in_exports_layout_reads_as_json_does() {
        let entry = Entry {
            index: 42,
            leaf: B64.encode(br#"{"event":"received"}"#),
            proof: vec![hex::encode([7u8; 32]), hex::encode([9u8; 32])],
        };
        let line = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            entry.line(),
            line,
            "written by hand as serde_json writes it"
        );
        let empty = Entry {
            proof: Vec::new(),
            ..entry
        };
        assert_eq!(empty.line(), serde_json::to_string(&empty).unwrap());
        let fast = EntryRef::exact(line.as_bytes()).expect("export's own layout");
        let parsed: EntryRef = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (fast.index, &fast.leaf, &fast.proof),
            (parsed.index, &parsed.leaf, &parsed.proof)
        );
        // Anything else goes to the JSON parser, which accepts or refuses it.
        let spaced = line.replace(",\"leaf\"", ", \"leaf\"");
        assert!(EntryRef::exact(spaced.as_bytes()).is_none());
        assert!(serde_json::from_str::<EntryRef>(&spaced).is_ok());
        let zero = line.replace(":42,", ":042,");
        assert!(EntryRef::exact(zero.as_bytes()).is_none());
        assert!(serde_json::from_str::<EntryRef>(&zero).is_err());
        let escaped = line.replace("\"proof\":[\"", "\"proof\":[\"\\u0030");
        assert!(EntryRef::exact(escaped.as_bytes()).is_none());
    }
}
