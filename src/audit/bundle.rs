//! The auditor's bundle (SPEC §5): `audit export` writes it from the store; `audit verify`
//! checks it offline with nothing but the folder (and optionally a key).
//!
//! Files: `manifest.json`, `checkpoint`, `log.pub`, `entries.jsonl`, `records.json`,
//! `records.csv`, `deliveries.csv`, `exceptions.csv`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::note::{Checkpoint, NoteSigner, Verifier};
use super::tree::{self, Hash};
use super::{Event, EventType};
use crate::records::canonical_json;
use crate::store::{Store, StoreError, StoredRevision};

pub const FILES: [&str; 7] = [
    "checkpoint",
    "log.pub",
    "entries.jsonl",
    "records.json",
    "records.csv",
    "deliveries.csv",
    "exceptions.csv",
];

/// What every pseudonym starts with.
pub const PSEUDONYM_PREFIX: &str = "pseudonym:";

/// Keys whose values are personal data, wherever they sit in a record.
const PERSONAL_KEYS: &[&str] = &[
    "given_name",
    "family_name",
    "date_of_birth",
    "upn",
    "mis_id",
    "name",
    "vehicle_registration",
    "staff_mobiles",
    "address",
    "expected_to_see",
    "summary",
    "purpose_detail",
    "emergency_reason",
    "description",
    "reason",
    "unannounced_reason",
    "owner",
    "extensions",
];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("trust {0} has no evidence-trail log yet")]
    NoLog(String),
    #[error("the store lacks node {0:?} of trust {1}'s log")]
    MissingNode(tree::NodeId, String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// An entry line as `export` writes it (`verify` reads it as [`EntryRef`]).
#[derive(Debug, Serialize)]
struct Entry {
    index: u64,
    leaf: String,
    proof: Vec<String>,
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
        let rest = line.strip_prefix(br#"{"index":"#)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 1 && rest[0] == b'0' {
            return None; // not a JSON number: the parser says so
        }
        let index = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let rest = rest[digits..].strip_prefix(br#","leaf":""#)?;
        let end = memchr::memchr(b'"', rest)?;
        let leaf = ascii(&rest[..end])?;
        let mut rest = rest[end..].strip_prefix(br#"","proof":["#)?;
        let mut proof = Vec::with_capacity(40);
        while let Some(r) = rest.strip_prefix(b"\"") {
            let end = memchr::memchr(b'"', r)?;
            proof.push(std::borrow::Cow::Borrowed(ascii(&r[..end])?));
            rest = &r[end + 1..];
            rest = rest.strip_prefix(b",").unwrap_or(rest);
        }
        (rest == b"]}").then_some(Self {
            index,
            leaf: std::borrow::Cow::Borrowed(leaf),
            proof,
        })
    }
}

/// Bytes that are plain ASCII text with nothing JSON would escape.
fn ascii(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'\\') {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// The fields of a leaf `verify` checks.
#[derive(Deserialize)]
struct LeafRef<'a> {
    #[serde(borrow)]
    at: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    trust: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    school: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    record_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    revision: Option<u64>,
    #[serde(default, borrow)]
    content_hash: Option<std::borrow::Cow<'a, str>>,
}

/// Which revision a record in `records.json` is.
#[derive(Deserialize)]
struct RecordKey<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    revision: u64,
}

/// Told how far a long export or verification has gone (the CLI draws a bar in a terminal).
pub trait Progress: Sync {
    fn start(&self, _what: &'static str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {}

/// What to export.
pub struct ExportRequest {
    pub trust: String,
    pub school: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub time_zone: chrono_tz::Tz,
    pub out: PathBuf,
    pub pseudonymise: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub entries: u64,
    pub records: u64,
    pub tree_size: u64,
}

fn utc_start(day: NaiveDate, tz: chrono_tz::Tz) -> String {
    let local = day.and_time(NaiveTime::MIN);
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&local))
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A spreadsheet must not run a cell as a formula.
pub fn safe_cell(s: &str) -> String {
    match s.trim_start().chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

/// Keyed pseudonyms, consistent within one export; the key is never written.
struct Pseudonymiser {
    /// HMAC-SHA-256 keyed with a fresh random key, cloned for each value.
    mac: Hmac<Sha256>,
}

impl Pseudonymiser {
    fn new() -> Result<Self, ExportError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| ExportError::Io {
            path: PathBuf::from("(randomness)"),
            reason: "no randomness available for the pseudonym key".into(),
        })?;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|_| ExportError::Io {
            path: PathBuf::from("(randomness)"),
            reason: "the pseudonym key was refused".into(),
        })?;
        Ok(Self { mac })
    }

    fn pseudonym(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        format!(
            "{PSEUDONYM_PREFIX}{}",
            &hex::encode(mac.finalize().into_bytes())[..16]
        )
    }

    /// Replaces every string (and number) under a personal key.
    fn scrub(&self, v: &mut Value, personal: bool) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    let p = personal || PERSONAL_KEYS.contains(&k.as_str());
                    self.scrub(child, p);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.scrub(i, personal)),
            Value::String(s) if personal => *s = self.pseudonym(s),
            Value::Number(n) if personal => *v = Value::String(self.pseudonym(&n.to_string())),
            _ => {}
        }
    }
}

fn write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    hashes: &mut BTreeMap<String, String>,
) -> Result<(), ExportError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| ExportError::Io {
        path,
        reason: e.kind().to_string(),
    })?;
    hashes.insert(name.to_owned(), hex::encode(Sha256::digest(bytes)));
    Ok(())
}

/// (kind, record id, revision).
type RevisionKey = (String, String, u32);

/// A file written once, its SHA-256 taken on the way.
struct HashingWriter {
    name: &'static str,
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
}

impl HashingWriter {
    fn create(dir: &Path, name: &'static str) -> Result<Self, ExportError> {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(|e| ExportError::Io {
            path: path.clone(),
            reason: e.kind().to_string(),
        })?;
        Ok(Self {
            name,
            path,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.hasher.update(bytes);
        std::io::Write::write_all(&mut self.out, bytes).map_err(|e| ExportError::Io {
            path: self.path.clone(),
            reason: e.kind().to_string(),
        })
    }

    fn finish(mut self, hashes: &mut BTreeMap<String, String>) -> Result<(), ExportError> {
        std::io::Write::flush(&mut self.out).map_err(|e| ExportError::Io {
            path: self.path.clone(),
            reason: e.kind().to_string(),
        })?;
        hashes.insert(self.name.to_owned(), hex::encode(self.hasher.finalize()));
        Ok(())
    }
}

fn csv_bytes(header: &[&str], rows: Vec<Vec<String>>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(header);
    for row in rows {
        let _ = w.write_record(row.iter().map(|c| safe_cell(c)));
    }
    w.into_inner().unwrap_or_default()
}

/// Writes the bundle of one school's events in a period, signed at the log's current size.
pub async fn export<S: crate::store::DeliveryStore>(
    store: &S,
    signer: &NoteSigner,
    req: &ExportRequest,
    progress: &dyn Progress,
) -> Result<ExportSummary, ExportError> {
    let size = store
        .audit_sizes()
        .await?
        .into_iter()
        .find(|(t, _)| *t == req.trust)
        .map(|(_, s)| s)
        .filter(|&s| s > 0)
        .ok_or_else(|| ExportError::NoLog(req.trust.clone()))?;
    let checkpoint = checkpoint_at(store, signer, &req.trust, size).await?;
    let note = signer.sign(&checkpoint.to_text());
    store.audit_save_checkpoint(&req.trust, size, &note).await?;

    let period = Period {
        from: req.from.to_string(),
        to: req.to.to_string(),
        from_utc: utc_start(req.from, req.time_zone),
        to_utc: utc_start(req.to.succ_opt().unwrap_or(req.to), req.time_zone),
    };
    let entries = store
        .audit_entries(
            &req.trust,
            &req.school,
            &period.from_utc,
            &period.to_utc,
            size,
        )
        .await?;

    // Proofs: every node they need, fetched at once.
    let ranges: Vec<Vec<(u64, u64)>> = entries
        .iter()
        .map(|(i, _)| tree::inclusion_ranges(*i, size))
        .collect();
    let all_ranges: Vec<(u64, u64)> = ranges.iter().flatten().copied().collect();
    let nodes = store
        .audit_nodes(&req.trust, &tree::nodes_for(&all_ranges))
        .await?;
    // Each entry's line and the record it received, built on all cores a slice at a time and
    // written in order, so that memory holds one slice of lines, not the file.
    progress.start("entries", entries.len() as u64);
    std::fs::create_dir_all(&req.out).map_err(|e| ExportError::Io {
        path: req.out.clone(),
        reason: e.kind().to_string(),
    })?;
    let mut hashes = BTreeMap::new();
    let mut entries_out = HashingWriter::create(&req.out, "entries.jsonl")?;
    let mut keys: BTreeSet<RevisionKey> = BTreeSet::new();
    for (slice, slice_ranges) in entries
        .chunks(EXPORT_SLICE)
        .zip(ranges.chunks(EXPORT_SLICE))
    {
        let built: Vec<Result<(String, Option<RevisionKey>), ExportError>> = slice
            .par_iter()
            .zip(slice_ranges.par_iter())
            .map(|((index, leaf), ranges)| entry_line(*index, leaf, ranges, &nodes, &req.trust))
            .collect();
        for b in built {
            let (line, key) = b?;
            entries_out.write_all(line.as_bytes())?;
            keys.extend(key);
        }
        progress.advance(slice.len() as u64);
    }
    entries_out.finish(&mut hashes)?;
    let keys: Vec<(String, String, u32)> = keys.into_iter().collect();
    let revisions = store.revisions_by_key(&req.trust, &keys).await?;
    let exceptions = store.exceptions_by_key(&req.trust, &keys).await?;
    let attempts = store.attempts_by_key(&req.trust, &keys).await?;

    let out = &req.out;
    write(out, "checkpoint", note.as_bytes(), &mut hashes)?;
    write(
        out,
        "log.pub",
        format!("{}\n", signer.verifier().to_text()).as_bytes(),
        &mut hashes,
    )?;
    let mut records_json = HashingWriter::create(out, "records.json")?;
    let records_csv = records_files(&revisions, req.pseudonymise, &mut records_json)?;
    records_json.finish(&mut hashes)?;
    write(out, "records.csv", &records_csv, &mut hashes)?;
    let delivery_rows = attempts
        .into_iter()
        .map(|d| {
            let a = d.attempt.as_ref();
            vec![
                d.destination,
                d.kind,
                d.record_id,
                d.revision.to_string(),
                a.map(|a| a.attempt.to_string()).unwrap_or_default(),
                a.map(|a| crate::store::time::format(&a.at))
                    .unwrap_or_default(),
                a.map(|a| a.outcome.clone()).unwrap_or_default(),
                a.and_then(|a| a.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                a.and_then(|a| a.error.clone()).unwrap_or_default(),
                d.state,
                d.target_id.unwrap_or_default(),
            ]
        })
        .collect();
    write(
        out,
        "deliveries.csv",
        &csv_bytes(
            &[
                "destination",
                "kind",
                "record_id",
                "revision",
                "attempt",
                "at",
                "outcome",
                "status",
                "error",
                "state",
                "target_id",
            ],
            delivery_rows,
        ),
        &mut hashes,
    )?;
    let exception_rows = exceptions
        .into_iter()
        .map(|(kind, id, e)| {
            vec![
                kind,
                id,
                e.revision.to_string(),
                e.rule,
                e.severity,
                e.state,
                e.closed_by_revision
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                e.message,
            ]
        })
        .collect();
    write(
        out,
        "exceptions.csv",
        &csv_bytes(
            &[
                "kind",
                "record_id",
                "revision",
                "rule",
                "severity",
                "state",
                "closed_by_revision",
                "message",
            ],
            exception_rows,
        ),
        &mut hashes,
    )?;
    let manifest = Manifest {
        trust: req.trust.clone(),
        school: req.school.clone(),
        period,
        tree_size: size,
        entries: entries.len() as u64,
        generator: format!("doorstep {}", env!("CARGO_PKG_VERSION")),
        pseudonymised: req.pseudonymise,
        files: hashes,
    };
    let manifest_text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    std::fs::write(out.join("manifest.json"), manifest_text).map_err(|e| ExportError::Io {
        path: out.join("manifest.json"),
        reason: e.kind().to_string(),
    })?;

    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut exported = Event::new(EventType::Exported, &now, &req.trust);
    exported.school = Some(req.school.clone());
    exported.state = Some(
        if req.pseudonymise {
            "pseudonymised"
        } else {
            "plain"
        }
        .into(),
    );
    store.audit_append(&[exported]).await?;
    Ok(ExportSummary {
        entries: entries.len() as u64,
        records: revisions.len() as u64,
        tree_size: size,
    })
}

/// The checkpoint of a trust's log at `size`: its root from O(log n) stored nodes.
pub async fn checkpoint_at<S: Store>(
    store: &S,
    signer: &NoteSigner,
    trust: &str,
    size: u64,
) -> Result<Checkpoint, ExportError> {
    let ids = tree::root_nodes(size);
    let nodes = store.audit_nodes(trust, &ids).await?;
    let hashes: Option<Vec<Hash>> = ids.iter().map(|id| nodes.get(id).copied()).collect();
    let root = hashes
        .as_deref()
        .and_then(tree::fold_range)
        .ok_or_else(|| ExportError::MissingNode(ids[0], trust.to_owned()))?;
    Ok(Checkpoint {
        origin: origin(&signer.name, trust),
        size,
        root,
    })
}

/// A trust's log is named `<key name>/<trust>`.
pub fn origin(key_name: &str, trust: &str) -> String {
    format!("{key_name}/{trust}")
}

/// Entries built at once by `export`.
const EXPORT_SLICE: usize = 16_384;

/// An entry's line of `entries.jsonl`, with the revision it says was received.
fn entry_line(
    index: u64,
    leaf: &str,
    ranges: &[(u64, u64)],
    nodes: &HashMap<tree::NodeId, Hash>,
    trust: &str,
) -> Result<(String, Option<RevisionKey>), ExportError> {
    let proof = tree::assemble(ranges, nodes).ok_or_else(|| {
        let missing = tree::nodes_for(ranges)
            .into_iter()
            .find(|id| !nodes.contains_key(id));
        ExportError::MissingNode(
            missing.unwrap_or(tree::NodeId { level: 0, index }),
            trust.to_owned(),
        )
    })?;
    let entry = Entry {
        index,
        leaf: B64.encode(leaf.as_bytes()),
        proof: proof.iter().map(hex::encode).collect(),
    };
    let mut line = serde_json::to_string(&entry).unwrap_or_default();
    line.push('\n');
    let key = serde_json::from_str::<Value>(leaf).ok().and_then(|event| {
        (event["event"] == "received").then_some(())?;
        Some((
            event["kind"].as_str()?.to_owned(),
            event["record_id"].as_str()?.to_owned(),
            u32::try_from(event["revision"].as_u64()?).ok()?,
        ))
    });
    Ok((line, key))
}

/// Writes `records.json` (every revision as stored, or pseudonymised) and returns
/// `records.csv`.
fn records_files(
    revisions: &[StoredRevision],
    pseudonymise: bool,
    json: &mut HashingWriter,
) -> Result<Vec<u8>, ExportError> {
    let ps = if pseudonymise {
        Some(Pseudonymiser::new()?)
    } else {
        None
    };
    // Each revision's text and CSV row, built on all cores, then written in order: one
    // record a line, so that `verify` finds them without parsing the array.
    let built: Vec<(std::borrow::Cow<str>, Vec<String>)> = revisions
        .par_iter()
        .map(|r| {
            let mut value: Value = serde_json::from_str(&r.canonical).unwrap_or(Value::Null);
            let text = match ps.as_ref() {
                Some(p) => {
                    p.scrub(&mut value, false);
                    std::borrow::Cow::Owned(canonical_json(&value))
                }
                None => std::borrow::Cow::Borrowed(r.canonical.as_str()),
            };
            let first = |fields: &[&str]| {
                fields
                    .iter()
                    .find_map(|f| value.get(*f).and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_owned()
            };
            let row = vec![
                r.kind.clone(),
                r.id.clone(),
                r.revision.to_string(),
                r.school.clone(),
                r.received_at.clone(),
                r.content_hash.clone(),
                value
                    .pointer("/pupil/upn")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                first(&["purpose", "type", "category"]),
                first(&["outcome", "severity", "urgency"]),
            ];
            (text, row)
        })
        .collect();
    let mut rows = Vec::with_capacity(built.len());
    json.write_all(b"[")?;
    for (i, (text, row)) in built.into_iter().enumerate() {
        json.write_all(if i > 0 { b",\n" } else { b"\n" })?;
        json.write_all(text.as_bytes())?;
        rows.push(row);
    }
    json.write_all(if rows.is_empty() { b"]\n" } else { b"\n]\n" })?;
    let csv = csv_bytes(
        &[
            "kind",
            "record_id",
            "revision",
            "school",
            "received_at",
            "content_hash",
            "pupil_upn",
            "type",
            "outcome",
        ],
        rows,
    );
    Ok(csv)
}

/// The first thing in a bundle that does not verify: which entry or file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct VerifyFailure {
    pub what: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub records: u64,
    pub tree_size: u64,
    pub origin: String,
}

fn fail(what: impl Into<String>, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        what: what.into(),
        reason: reason.into(),
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, VerifyFailure> {
    std::fs::read(dir.join(name)).map_err(|e| fail(name, format!("cannot read: {}", e.kind())))
}

fn read_text(dir: &Path, name: &str) -> Result<String, VerifyFailure> {
    String::from_utf8(read(dir, name)?).map_err(|_| fail(name, "not UTF-8"))
}

/// Checks a bundle offline: the checkpoint's signature, every inclusion proof, every record
/// against the content hash its leaves carry, and every file against the manifest.
pub fn verify(
    dir: &Path,
    key: Option<&str>,
    progress: &dyn Progress,
) -> Result<VerifyReport, VerifyFailure> {
    let manifest: Manifest = serde_json::from_slice(&read(dir, "manifest.json")?)
        .map_err(|e| fail("manifest.json", format!("not a doorstep manifest: {e}")))?;
    let key_text = match key {
        Some(k) => k.to_owned(),
        None => read_text(dir, "log.pub")?,
    };
    let key_source = if key.is_some() { "--key" } else { "log.pub" };
    let verifier = Verifier::parse(&key_text).map_err(|e| fail(key_source, e.to_string()))?;
    let note = read_text(dir, "checkpoint")?;
    let text = verifier
        .open(&note)
        .map_err(|e| fail("checkpoint", e.to_string()))?;
    let checkpoint = Checkpoint::parse(text).map_err(|e| fail("checkpoint", e.to_string()))?;
    if checkpoint.origin != origin(&verifier.name, &manifest.trust) {
        return Err(fail(
            "checkpoint",
            format!(
                "origin {} is not the log of trust {}",
                checkpoint.origin, manifest.trust
            ),
        ));
    }
    if checkpoint.size != manifest.tree_size {
        return Err(fail(
            "manifest.json",
            "tree_size differs from the checkpoint's",
        ));
    }

    // Entries: in order, each leaf proven in the signed tree, each about this trust, school
    // and period. The file is mapped, not read, and checked on all cores; its hash is taken
    // alongside.
    let entries_map = map_file(dir, "entries.jsonl")?;
    let entries_bytes: &[u8] = entries_map.as_deref().unwrap_or_default();
    let records_map = map_file(dir, "records.json")?;
    let records_bytes: &[u8] = records_map.as_deref().unwrap_or_default();
    progress.start("entries", manifest.entries);
    let lines = split_lines(entries_bytes.strip_suffix(b"\n").unwrap_or(entries_bytes));
    // Every file's hash is taken on one core while the entries and records are checked.
    let (file_hashes, checked) = rayon::join(
        || hash_files(dir, entries_bytes, records_bytes),
        || {
            // Each worker keeps the last proof it verified across its run of neighbours.
            lines
                .par_chunks(RUN)
                .enumerate()
                .map(|(c, run)| {
                    let mut proofs = tree::ProofVerifier::new(checkpoint.root, checkpoint.size);
                    let checked = check_run(c * RUN + 1, run, &mut proofs, &manifest);
                    progress.advance(run.len() as u64);
                    checked
                })
                .collect::<Vec<Run>>()
        },
    );
    // Runs in order: the first failure in the file wins, the order checked across runs too.
    let mut received: Vec<Received> = Vec::new();
    let mut previous: Option<u64> = None;
    let mut count = 0u64;
    for run in checked {
        if let (Some(p), Some((line, index))) = (previous, run.first)
            && index <= p
        {
            return Err(fail(
                format!("entries.jsonl line {line} (entry {index})"),
                "entries are not in increasing index order",
            ));
        }
        if let Some(failure) = run.failure {
            return Err(failure);
        }
        previous = run.last.or(previous);
        received.extend(run.received);
        count += run.count;
    }
    if count != manifest.entries {
        return Err(fail(
            "entries.jsonl",
            format!("{count} entries; the manifest says {}", manifest.entries),
        ));
    }

    // Records: each matches the content hash its leaves carry (unless pseudonymised).
    let received = ReceivedIndex::new(received);
    let raws = split_records(records_bytes)?;
    let matched: Vec<Result<&[usize], VerifyFailure>> = raws
        .par_iter()
        .enumerate()
        .map(|(i, raw)| check_record(i, raw, &received, manifest.pseudonymised))
        .collect();
    let mut has_record = vec![false; received.all.len()];
    for m in matched {
        for &r in m? {
            has_record[r] = true;
        }
    }
    if let Some(r) = has_record.iter().position(|m| !m) {
        let (kind, id, rev) = &received.all[r].key;
        return Err(fail(
            "records.json",
            format!("{kind} {id} revision {rev} has an entry but no record"),
        ));
    }

    // Files: each as the manifest hashed it.
    let file_hashes = file_hashes?;
    for (name, got) in FILES.iter().zip(&file_hashes) {
        let want = manifest
            .files
            .get(*name)
            .ok_or_else(|| fail("manifest.json", format!("lists no hash for {name}")))?;
        if got != want {
            return Err(fail(*name, "its SHA-256 differs from the manifest's"));
        }
    }
    if let Some(extra) = manifest.files.keys().find(|k| !FILES.contains(&k.as_str())) {
        return Err(fail(
            "manifest.json",
            format!("lists an unknown file {extra}"),
        ));
    }
    Ok(VerifyReport {
        entries: count,
        records: raws.len() as u64,
        tree_size: checkpoint.size,
        origin: checkpoint.origin,
    })
}

/// The first personal field of a record that does not hold a pseudonym.
fn plain_personal_field(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String, personal: bool) -> Option<String> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, c)| {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                let found = walk(c, path, personal || PERSONAL_KEYS.contains(&k.as_str()));
                path.truncate(len);
                found
            }),
            Value::Array(items) => items.iter().find_map(|i| walk(i, path, personal)),
            Value::String(s) if personal && !s.starts_with(PSEUDONYM_PREFIX) => Some(path.clone()),
            Value::Number(_) if personal => Some(path.clone()),
            _ => None,
        }
    }
    walk(v, &mut String::new(), false)
}

/// Entries one worker checks in a row, remembering the nodes it has proven.
const RUN: usize = 512;

/// A bundle file mapped into memory (`None` for an empty file, which cannot be mapped).
fn map_file(dir: &Path, name: &str) -> Result<Option<memmap2::Mmap>, VerifyFailure> {
    let file = std::fs::File::open(dir.join(name))
        .map_err(|e| fail(name, format!("cannot read: {}", e.kind())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only and lives while the bundle is checked; a bundle changed
    // underneath by another process would at worst fail to verify.
    unsafe { memmap2::Mmap::map(&file) }
        .map(Some)
        .map_err(|e| fail(name, format!("cannot read: {}", e.kind())))
}

/// The SHA-256 (hex) of each of [`FILES`], in that order; the two large ones as mapped.
fn hash_files(dir: &Path, entries: &[u8], records: &[u8]) -> Result<Vec<String>, VerifyFailure> {
    FILES
        .iter()
        .map(|name| {
            Ok(hex::encode(match *name {
                "entries.jsonl" => Sha256::digest(entries),
                "records.json" => Sha256::digest(records),
                _ => Sha256::digest(map_file(dir, name)?.as_deref().unwrap_or_default()),
            }))
        })
        .collect()
}

/// The lines of a file (without their line feeds), found at memory speed.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut lines = Vec::with_capacity(bytes.len() / 1024);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        lines.push(&bytes[start..end]);
        start = end + 1;
    }
    lines.push(&bytes[start..]);
    lines
}

/// The records of `records.json`. As `export` writes it — one record a line between `[` and
/// `]` — its lines are the records, found without parsing (each is then checked against its
/// content hash, which only the exact canonical text meets). Any other layout of a JSON array
/// (a re-formatted file) is parsed.
fn split_records(bytes: &[u8]) -> Result<Vec<&[u8]>, VerifyFailure> {
    let body = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .strip_prefix(b"[\n")
        .and_then(|t| t.strip_suffix(b"\n]"));
    if let Some(body) = body {
        let lines = split_lines(body);
        let last = lines.len().saturating_sub(1);
        let records: Option<Vec<&[u8]>> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                if i < last {
                    line.strip_suffix(b",")
                } else {
                    Some(*line)
                }
            })
            .collect();
        if let Some(records) = records.filter(|r| r.iter().all(|l| !l.is_empty())) {
            return Ok(records);
        }
    }
    let raws: Vec<&RawValue> = serde_json::from_slice(bytes)
        .map_err(|e| fail("records.json", format!("not a JSON array of records: {e}")))?;
    Ok(raws.into_iter().map(|r| r.get().as_bytes()).collect())
}

/// An entry's proof as hex text: decoded only where the verifier must hash it.
struct HexProof<'a>(&'a [std::borrow::Cow<'a, str>]);

impl tree::ProofHashes for HexProof<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn hash(&self, k: usize) -> Option<Hash> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(self.0.get(k)?.as_bytes(), &mut hash).ok()?;
        Some(hash)
    }

    fn is(&self, k: usize, known: &Hash) -> bool {
        let mut text = [0u8; 64];
        let lower = hex::encode_to_slice(known, &mut text).is_ok()
            && self.0.get(k).is_some_and(|t| t.as_bytes() == text);
        // Upper-case hex is the same hash.
        lower || self.hash(k).as_ref() == Some(known)
    }
}

/// A record revision an entry says was received, with the content hash it carries.
struct Received {
    key: (String, String, u64),
    hash: Hash,
}

/// The received revisions, found by content hash (the fast path: a record as written) or by
/// kind, id and revision (a re-formatted or pseudonymised record).
struct ReceivedIndex {
    by_hash: HashMap<Hash, usize>,
    by_key: std::sync::OnceLock<HashMap<(String, String, u64), Vec<usize>>>,
    all: Vec<Received>,
}

impl ReceivedIndex {
    fn new(all: Vec<Received>) -> Self {
        let by_hash = all.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
        Self {
            by_hash,
            by_key: std::sync::OnceLock::new(),
            all,
        }
    }

    fn of_key(&self, key: &(String, String, u64)) -> &[usize] {
        self.by_key
            .get_or_init(|| {
                let mut m: HashMap<(String, String, u64), Vec<usize>> = HashMap::new();
                for (i, r) in self.all.iter().enumerate() {
                    m.entry(r.key.clone()).or_default().push(i);
                }
                m
            })
            .get(key)
            .map_or(&[], Vec::as_slice)
    }
}

/// What one worker found in a run of consecutive entries: where it starts and ends, and the
/// revisions it received — up to its first failure, if any.
struct Run {
    first: Option<(usize, u64)>,
    last: Option<u64>,
    count: u64,
    received: Vec<Received>,
    failure: Option<VerifyFailure>,
}

/// Checks consecutive entry lines, the first being line `first_line` of the file.
fn check_run(
    first_line: usize,
    lines: &[&[u8]],
    proofs: &mut tree::ProofVerifier,
    manifest: &Manifest,
) -> Run {
    let mut run = Run {
        first: None,
        last: None,
        count: 0,
        received: Vec::with_capacity(lines.len()),
        failure: None,
    };
    for (n, line) in (first_line..).zip(lines) {
        match check_entry(n, line, proofs, manifest) {
            Ok(c) if run.last.is_some_and(|p| c.index <= p) => {
                run.failure = Some(fail(
                    format!("entries.jsonl line {n} (entry {})", c.index),
                    "entries are not in increasing index order",
                ));
            }
            Ok(c) => {
                run.first.get_or_insert((n, c.index));
                run.last = Some(c.index);
                run.count += 1;
                run.received.extend(c.received);
                continue;
            }
            Err(f) => run.failure = Some(f),
        }
        break;
    }
    run
}

struct CheckedEntry {
    index: u64,
    received: Option<Received>,
}

fn check_entry(
    n: usize,
    line: &[u8],
    proofs: &mut tree::ProofVerifier,
    manifest: &Manifest,
) -> Result<CheckedEntry, VerifyFailure> {
    let entry = match EntryRef::exact(line) {
        Some(entry) => entry,
        None => serde_json::from_slice(line).map_err(|e| {
            fail(
                format!("entries.jsonl line {n}"),
                format!("not an entry: {e}"),
            )
        })?,
    };
    // Named only when something fails: this runs for every entry.
    let what = || format!("entries.jsonl line {n} (entry {})", entry.index);
    let leaf = B64
        .decode(entry.leaf.as_bytes())
        .map_err(|_| fail(what(), "leaf is not base64"))?;
    proofs
        .verify(entry.index, &leaf, &HexProof(&entry.proof))
        .map_err(|e| {
            fail(
                what(),
                format!("inclusion proof does not verify against the checkpoint ({e})"),
            )
        })?;
    let event: LeafRef =
        serde_json::from_slice(&leaf).map_err(|_| fail(what(), "leaf is not an event"))?;
    if event.trust != manifest.trust || event.school.as_deref() != Some(manifest.school.as_str()) {
        return Err(fail(
            what(),
            "event is not of the manifest's trust and school",
        ));
    }
    if *event.at < *manifest.period.from_utc || *event.at >= *manifest.period.to_utc {
        return Err(fail(what(), "event lies outside the manifest's period"));
    }
    let received = match (
        event.event.as_ref(),
        event.kind,
        event.record_id,
        event.revision,
        event.content_hash,
    ) {
        ("received", Some(kind), Some(id), Some(rev), Some(hash)) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash.as_bytes(), &mut bytes)
                .map_err(|_| fail(what(), "content_hash is not a SHA-256 hash"))?;
            Some(Received {
                key: (kind.into_owned(), id.into_owned(), rev),
                hash: bytes,
            })
        }
        _ => None,
    };
    Ok(CheckedEntry {
        index: entry.index,
        received,
    })
}

/// Which received revisions record `i` of `records.json` is.
fn check_record<'r>(
    i: usize,
    raw: &[u8],
    received: &'r ReceivedIndex,
    pseudonymised: bool,
) -> Result<&'r [usize], VerifyFailure> {
    // Fast path: a record written as its canonical text hashes to its leaf's hash as it stands.
    if !pseudonymised {
        let hash: Hash = Sha256::digest(raw).into();
        if let Some(r) = received.by_hash.get(&hash) {
            return Ok(std::slice::from_ref(r));
        }
    }
    let raw = std::str::from_utf8(raw)
        .map_err(|_| fail(format!("records.json record {i}"), "not UTF-8"))?;
    let head: RecordKey = serde_json::from_str(raw)
        .map_err(|e| fail(format!("records.json record {i}"), e.to_string()))?;
    let key = (head.kind.into_owned(), head.id.into_owned(), head.revision);
    let what = format!(
        "records.json record {i} ({} {} revision {})",
        key.0, key.1, key.2
    );
    let of_key = received.of_key(&key);
    if of_key.is_empty() {
        return Err(fail(what, "no entry of the bundle received this record"));
    }
    let record: Value = serde_json::from_str(raw).map_err(|e| fail(&what, e.to_string()))?;
    if pseudonymised {
        if let Some(field) = plain_personal_field(&record) {
            return Err(fail(
                what,
                format!("the manifest says pseudonymised but {field} is not"),
            ));
        }
        return Ok(of_key);
    }
    // Re-formatted, or altered: canonicalised and hashed again.
    let hash: Hash = Sha256::digest(canonical_json(&record).as_bytes()).into();
    match of_key.iter().find(|&&r| received.all[r].hash == hash) {
        Some(r) => Ok(std::slice::from_ref(r)),
        None => Err(fail(
            what,
            "its content hash differs from the one its entry carries",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_in_exports_layout_reads_as_json_does() {
        let entry = Entry {
            index: 42,
            leaf: B64.encode(br#"{"event":"received"}"#),
            proof: vec![hex::encode([7u8; 32]), hex::encode([9u8; 32])],
        };
        let line = serde_json::to_string(&entry).unwrap();
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
