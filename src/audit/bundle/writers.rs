//! The bundle's files as `audit export` writes them: each created owner-only and hashed as
//! it is written (`HashingWriter`); the streamed ones (`Writers`: entries with their proofs,
//! records — a purged revision as a stub, listed in `purged.csv` —, the CSV files, pseudonyms
//! applied) a slice at a time.
//! Owns: the files' layout and rows. May not touch: which entries a bundle holds, the
//! checkpoint (the parent `export`'s).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::export::ExportError;
use super::pseudonymise::Pseudonymiser;
use super::{Entry, PURGED, PURGED_CSV, safe_cell};
use crate::audit::tree::{self, Hash};
use crate::records::canonical_json;
use crate::store::StoredRevision;

pub(super) fn write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    hashes: &mut BTreeMap<String, String>,
) -> Result<(), ExportError> {
    let path = dir.join(name);
    owner_only_write(&path, bytes).map_err(|e| ExportError::Io {
        path,
        reason: e.kind().to_string(),
    })?;
    hashes.insert(name.to_owned(), hex::encode(Sha256::digest(bytes)));
    Ok(())
}

/// A bundle file, created (or truncated) readable by its owner only: records are
/// child-protection data.
fn owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file that was there before keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

pub(super) fn owner_only_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    owner_only(path)?.write_all(bytes)
}

/// (kind, record id, revision).
type RevisionKey = (String, String, u32);

impl std::io::Write for HashingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

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
        let file = owner_only(&path).map_err(|e| ExportError::Io {
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

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(|e| ExportError::Io {
            path: self.path.clone(),
            reason: e.kind().to_string(),
        })
    }

    fn finish(mut self, hashes: &mut BTreeMap<String, String>) -> Result<(), ExportError> {
        self.out.flush().map_err(|e| ExportError::Io {
            path: self.path.clone(),
            reason: e.kind().to_string(),
        })?;
        hashes.insert(self.name.to_owned(), hex::encode(self.hasher.finalize()));
        Ok(())
    }
}

/// What has been written so far.
#[derive(Default)]
pub(super) struct Written {
    pub(super) entries: u64,
    pub(super) records: u64,
    /// The index of the last entry written.
    pub(super) last_index: Option<u64>,
}

/// The bundle's streamed files, each hashed as it is written.
pub(super) struct Writers {
    entries: HashingWriter,
    records_json: HashingWriter,
    records_csv: csv::Writer<HashingWriter>,
    deliveries: csv::Writer<HashingWriter>,
    exceptions: csv::Writer<HashingWriter>,
    purged: csv::Writer<HashingWriter>,
    pseudonyms: Option<Pseudonymiser>,
    any_record: bool,
}

impl Writers {
    pub(super) fn create(dir: &Path, pseudonymise: bool) -> Result<Self, ExportError> {
        let csv = |name: &'static str, header: &[&str]| -> Result<_, ExportError> {
            let mut w = csv::Writer::from_writer(HashingWriter::create(dir, name)?);
            w.write_record(header).map_err(|e| csv_err(dir, name, &e))?;
            Ok(w)
        };
        let mut records_json = HashingWriter::create(dir, "records.json")?;
        records_json.write_bytes(b"[")?;
        Ok(Self {
            entries: HashingWriter::create(dir, "entries.jsonl")?,
            records_json,
            records_csv: csv("records.csv", &RECORDS_CSV)?,
            deliveries: csv("deliveries.csv", &DELIVERIES_CSV)?,
            exceptions: csv("exceptions.csv", &EXCEPTIONS_CSV)?,
            purged: csv(PURGED, &PURGED_CSV)?,
            pseudonyms: if pseudonymise {
                Some(Pseudonymiser::new()?)
            } else {
                None
            },
            any_record: false,
        })
    }

    /// Writes entries' lines with their inclusion proofs; for entries of the period
    /// (`records`), also the revisions they received, those revisions' deliveries and
    /// exceptions.
    pub(super) async fn entries<S: crate::store::DeliveryStore>(
        &mut self,
        store: &S,
        trust: &str,
        size: u64,
        entries: impl IntoIterator<Item = (u64, String)>,
        records: bool,
        written: &mut Written,
    ) -> Result<(), ExportError> {
        let entries: Vec<(u64, String)> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Vec<(u64, u64)>> = entries
            .iter()
            .map(|(i, _)| tree::inclusion_ranges(*i, size))
            .collect();
        let all: Vec<(u64, u64)> = ranges.iter().flatten().copied().collect();
        let nodes = store.audit_nodes(trust, &tree::nodes_for(&all)).await?;
        let built: Vec<Result<(String, Option<RevisionKey>), ExportError>> = entries
            .par_iter()
            .zip(ranges.par_iter())
            .map(|((index, leaf), ranges)| entry_line(*index, leaf, ranges, &nodes, trust))
            .collect();
        let mut keys = Vec::new();
        for b in built {
            let (line, key) = b?;
            self.entries.write_bytes(line.as_bytes())?;
            keys.extend(key);
        }
        written.entries += entries.len() as u64;
        written.last_index = entries.last().map(|(i, _)| *i);
        if records && !keys.is_empty() {
            written.records += self.records(store, trust, &keys).await?;
        }
        Ok(())
    }

    /// Writes the revisions received by one slice's entries, in the entries' order, and their
    /// deliveries and exceptions; returns how many revisions.
    async fn records<S: crate::store::DeliveryStore>(
        &mut self,
        store: &S,
        trust: &str,
        keys: &[RevisionKey],
    ) -> Result<u64, ExportError> {
        let mut revisions: HashMap<RevisionKey, StoredRevision> = store
            .revisions_by_key(trust, keys)
            .await?
            .into_iter()
            .map(|r| ((r.kind.clone(), r.id.clone(), r.revision), r))
            .collect();
        let ordered: Vec<StoredRevision> =
            keys.iter().filter_map(|k| revisions.remove(k)).collect();
        let ps = self.pseudonyms.as_ref();
        let built: Vec<(String, Option<Vec<String>>)> = ordered
            .par_iter()
            .map(|r| match &r.purged_at {
                Some(at) => (purged_stub(r, at), None),
                None => {
                    let (text, row) = record_text_and_row(r, ps);
                    (text, Some(row))
                }
            })
            .collect();
        for ((text, row), r) in built.iter().zip(&ordered) {
            self.records_json
                .write_bytes(if self.any_record { b",\n" } else { b"\n" })?;
            self.records_json.write_bytes(text.as_bytes())?;
            self.any_record = true;
            match row {
                Some(row) => write_row(&mut self.records_csv, row)?,
                None => {
                    let row = [
                        r.kind.clone(),
                        r.id.clone(),
                        r.revision.to_string(),
                        r.school.clone(),
                        r.content_hash.clone(),
                        r.received_at.clone(),
                        r.purged_at.clone().unwrap_or_default(),
                    ];
                    write_row(&mut self.purged, &row)?;
                }
            }
        }
        for d in store.attempts_by_key(trust, keys).await? {
            let a = d.attempt.as_ref();
            let error = a.and_then(|a| a.error.clone()).unwrap_or_default();
            let row = [
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
                // A target's error text may quote the record: not in a pseudonymised pack.
                if ps.is_some() && !error.is_empty() {
                    WITHHELD.to_owned()
                } else {
                    error
                },
                d.state,
                d.target_id.unwrap_or_default(),
            ];
            write_row(&mut self.deliveries, &row)?;
        }
        for (kind, id, e) in store.exceptions_by_key(trust, keys).await? {
            let row = [
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
            ];
            write_row(&mut self.exceptions, &row)?;
        }
        Ok(built.len() as u64)
    }

    /// Closes every file; returns their hashes.
    pub(super) fn finish(mut self) -> Result<BTreeMap<String, String>, ExportError> {
        let mut hashes = BTreeMap::new();
        self.records_json
            .write_bytes(if self.any_record { b"\n]\n" } else { b"]\n" })?;
        self.entries.finish(&mut hashes)?;
        self.records_json.finish(&mut hashes)?;
        for w in [
            self.records_csv,
            self.deliveries,
            self.exceptions,
            self.purged,
        ] {
            let inner = w.into_inner().map_err(|e| ExportError::Io {
                path: PathBuf::from("(a CSV file of the bundle)"),
                reason: e.error().kind().to_string(),
            })?;
            inner.finish(&mut hashes)?;
        }
        Ok(hashes)
    }
}

/// What a pseudonymised bundle's `deliveries.csv` says in place of a target's error text.
const WITHHELD: &str = "(withheld: pseudonymised export)";

const RECORDS_CSV: [&str; 9] = [
    "kind",
    "record_id",
    "revision",
    "school",
    "received_at",
    "content_hash",
    "pupil_upn",
    "type",
    "outcome",
];

const DELIVERIES_CSV: [&str; 11] = [
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
];

const EXCEPTIONS_CSV: [&str; 8] = [
    "kind",
    "record_id",
    "revision",
    "rule",
    "severity",
    "state",
    "closed_by_revision",
    "message",
];

fn csv_err(dir: &Path, name: &str, e: &csv::Error) -> ExportError {
    ExportError::Io {
        path: dir.join(name),
        reason: e.to_string(),
    }
}

fn write_row<W: std::io::Write>(w: &mut csv::Writer<W>, row: &[String]) -> Result<(), ExportError> {
    w.write_record(row.iter().map(|c| safe_cell(c)))
        .map_err(|e| ExportError::Io {
            path: PathBuf::from("(a CSV file of the bundle)"),
            reason: e.to_string(),
        })
}

/// One revision's `records.json` text (as stored, or pseudonymised) and `records.csv` row.
/// A purged revision's place in `records.json`: what the store still holds of it — its key
/// and, under `purged`, when and the content hash its entry carries (no record has a
/// `purged` field: intake refuses unknown fields).
fn purged_stub(r: &StoredRevision, at: &str) -> String {
    canonical_json(&serde_json::json!({
        "kind": r.kind,
        "id": r.id,
        "revision": r.revision,
        "purged": { "at": at, "content_hash": r.content_hash },
    }))
}

fn record_text_and_row(r: &StoredRevision, ps: Option<&Pseudonymiser>) -> (String, Vec<String>) {
    // The record as it goes in the bundle, and the CSV's columns read from that.
    let (text, columns) = match ps {
        Some(p) => {
            let mut value: Value = serde_json::from_str(&r.canonical).unwrap_or(Value::Null);
            p.scrub(&mut value, false);
            let text = canonical_json(&value);
            let columns = serde_json::from_value(value).unwrap_or_default();
            (text, columns)
        }
        None => (
            r.canonical.clone(),
            serde_json::from_str(&r.canonical).unwrap_or_default(),
        ),
    };
    let Columns {
        pupil,
        purpose,
        r#type,
        category,
        outcome,
        severity,
        urgency,
    } = columns;
    let first = |fields: [Option<Value>; 3]| {
        fields
            .into_iter()
            .find_map(|f| f.and_then(|v| v.as_str().map(str::to_owned)))
            .unwrap_or_default()
    };
    let row = vec![
        r.kind.clone(),
        r.id.clone(),
        r.revision.to_string(),
        r.school.clone(),
        r.received_at.clone(),
        r.content_hash.clone(),
        first([pupil.and_then(|p| p.upn), None, None]),
        first([purpose, r#type, category]),
        first([outcome, severity, urgency]),
    ];
    (text, row)
}

/// The fields of a record `records.csv` shows; the rest is skipped unread.
#[derive(serde::Deserialize, Default)]
struct Columns {
    pupil: Option<PupilColumn>,
    purpose: Option<Value>,
    r#type: Option<Value>,
    category: Option<Value>,
    outcome: Option<Value>,
    severity: Option<Value>,
    urgency: Option<Value>,
}

#[derive(serde::Deserialize, Default)]
struct PupilColumn {
    upn: Option<Value>,
}

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
    let mut line = entry.line();
    line.push('\n');
    /// What a `received` leaf says was received.
    #[derive(serde::Deserialize)]
    struct Got<'a> {
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        record_id: Option<std::borrow::Cow<'a, str>>,
        revision: Option<u32>,
    }
    let key = serde_json::from_str::<Got>(leaf).ok().and_then(|got| {
        (got.event == "received").then_some(())?;
        Some((
            got.kind?.into_owned(),
            got.record_id?.into_owned(),
            got.revision?,
        ))
    });
    Ok((line, key))
}
