//! `audit export`: writes the bundle of one school's events in a period from the store, signs
//! the log's checkpoint at its current size, and logs the export in the trail.
//! Owns: [`export`], [`checkpoint_at`], [`ExportError`] and the file writers. May not touch:
//! the verifier; the format it writes is the bundle module's, pseudonyms are `pseudonymise`'s.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pseudonymise::Pseudonymiser;
use super::{
    CONSISTENCY, ConsistencyFile, Entry, Manifest, PURGED, PURGED_CSV, Period, Progress, origin,
    safe_cell,
};
use crate::audit::checkpoint::Consistency;
use crate::audit::note::{Checkpoint, NoteSigner, checkpoint_note};
use crate::audit::tree::{self, Hash};
use crate::audit::{Event, EventType};
use crate::records::canonical_json;
use crate::store::{Store, StoreError, StoredRevision};
use crate::trail::sequence::compare;

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
    #[error("--prove-from: {0}")]
    ProveFrom(String),
}

/// What to export.
pub struct ExportRequest {
    pub trust: String,
    pub school: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub time_zone: chrono_tz::Tz,
    pub out: PathBuf,
    pub pseudonymise: bool,
    /// A signed checkpoint the auditor already holds (`--prove-from`): the bundle carries
    /// the consistency proof from it.
    pub prove_from: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub entries: u64,
    pub records: u64,
    pub tree_size: u64,
    /// Whether the export and its checkpoint were recorded in the store's trail (not on a
    /// read-only copy).
    pub recorded: bool,
    /// Whether the period is closed: by an entry after it, or by the tree's last leaf (the
    /// export's own event). Without, the bundle cannot prove completeness.
    pub closed: bool,
}

fn utc_start(day: NaiveDate, tz: chrono_tz::Tz) -> String {
    let local = day.and_time(NaiveTime::MIN);
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&local))
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn write(
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

fn owner_only_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

/// Writes the bundle of one school's events in a period: appends the school's `exported`
/// event, signs the checkpoint that includes it, and streams the school's entries of the
/// period — with the last entry before it and the first after it (or the `exported` event)
/// as boundaries — and their records, a slice at a time, so memory stays flat whatever the
/// size of the period.
pub async fn export<S: crate::store::DeliveryStore>(
    store: &S,
    signer: &NoteSigner,
    req: &ExportRequest,
    progress: &dyn Progress,
) -> Result<ExportSummary, ExportError> {
    let recorded = !store.is_read_only();
    let size = if recorded {
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
        store
            .audit_append(&[exported])
            .await?
            .get(&req.trust)
            .copied()
    } else {
        store
            .audit_sizes()
            .await?
            .into_iter()
            .find(|(t, _)| *t == req.trust)
            .map(|(_, s)| s)
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| ExportError::NoLog(req.trust.clone()))?;
    let period = Period {
        from: req.from.to_string(),
        to: req.to.to_string(),
        from_utc: utc_start(req.from, req.time_zone),
        to_utc: utc_start(req.to.succ_opt().unwrap_or(req.to), req.time_zone),
    };
    // A read-only copy cannot append the export's event to close the period: the tree is
    // signed where the school's last event is its last leaf instead, if nothing came after.
    let size = if recorded {
        size
    } else {
        closing_size(store, req, &period, size).await?
    };
    let checkpoint = checkpoint_at(store, signer, &req.trust, size).await?;
    let note = signer.sign(&checkpoint.to_text());
    if recorded {
        store.audit_save_checkpoint(&req.trust, size, &note).await?;
    }
    let consistency = match &req.prove_from {
        Some(old) => Some(consistency_from(store, signer, old, &checkpoint).await?),
        None => None,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&req.out)
        .map_err(|e| ExportError::Io {
            path: req.out.clone(),
            reason: e.kind().to_string(),
        })?;
    let mut out = Writers::create(&req.out, req.pseudonymise)?;
    let mut written = Written::default();
    progress.start("entries", 0);

    // The school's leaves in log order, a page at a time. Times never go back in a numbered
    // log, so the first numbered leaf after the period ends the scan.
    let mut before: Option<(u64, String)> = None;
    let mut after: Option<(u64, String)> = None;
    let mut slice: Vec<(u64, String)> = Vec::with_capacity(EXPORT_SLICE);
    let mut in_period = false;
    let mut start = 0;
    'scan: loop {
        let page = store
            .audit_leaves(&req.trust, Some(&req.school), start, size, EXPORT_SLICE)
            .await?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        start = last + 1;
        for (index, leaf) in page {
            let when = When::of(&req.trust, index, &leaf)?;
            if compare(&when.at, &period.from_utc).is_lt() {
                if !in_period {
                    before = Some((index, leaf));
                }
            } else if compare(&when.at, &period.to_utc).is_lt() {
                if !in_period {
                    in_period = true;
                    // The boundary before the period is the bundle's first entry.
                    out.entries(store, &req.trust, size, before.take(), false, &mut written)
                        .await?;
                }
                after = None;
                slice.push((index, leaf));
                if slice.len() == EXPORT_SLICE {
                    let full = std::mem::take(&mut slice);
                    progress.advance(full.len() as u64);
                    out.entries(store, &req.trust, size, full, true, &mut written)
                        .await?;
                }
            } else if after.is_none() {
                let numbered = when.school_seq.is_some();
                after = Some((index, leaf));
                if numbered {
                    break 'scan;
                }
            }
        }
    }
    progress.advance(slice.len() as u64);
    out.entries(store, &req.trust, size, before.take(), false, &mut written)
        .await?;
    out.entries(store, &req.trust, size, slice, true, &mut written)
        .await?;
    let closed_after = after.is_some();
    out.entries(store, &req.trust, size, after.take(), false, &mut written)
        .await?;
    let closed = closed_after || written.last_index == Some(size - 1);

    let mut hashes = out.finish()?;
    let dir = &req.out;
    write(dir, "checkpoint", note.as_bytes(), &mut hashes)?;
    write(
        dir,
        "log.pub",
        format!("{}\n", signer.verifier().to_text()).as_bytes(),
        &mut hashes,
    )?;
    if let Some(c) = &consistency {
        let text = serde_json::to_string_pretty(c).unwrap_or_default() + "\n";
        write(dir, CONSISTENCY, text.as_bytes(), &mut hashes)?;
    }
    let manifest = Manifest {
        trust: req.trust.clone(),
        school: req.school.clone(),
        period,
        tree_size: size,
        entries: written.entries,
        generator: format!("doorstep {}", env!("CARGO_PKG_VERSION")),
        pseudonymised: req.pseudonymise,
        files: hashes,
    };
    let manifest_text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    owner_only_write(&dir.join("manifest.json"), manifest_text.as_bytes()).map_err(|e| {
        ExportError::Io {
            path: dir.join("manifest.json"),
            reason: e.kind().to_string(),
        }
    })?;
    Ok(ExportSummary {
        entries: written.entries,
        records: written.records,
        tree_size: size,
        recorded,
        closed,
    })
}

/// The size at which the school's last event is the tree's last leaf, when that event lies
/// before the end of the period (nothing of the school after it could close the period);
/// else `size`.
async fn closing_size<S: Store>(
    store: &S,
    req: &ExportRequest,
    period: &Period,
    size: u64,
) -> Result<u64, ExportError> {
    let mut last: Option<(u64, String)> = None;
    let mut start = 0;
    loop {
        let page = store
            .audit_leaves(&req.trust, Some(&req.school), start, size, EXPORT_SLICE)
            .await?;
        match page.into_iter().last() {
            Some(l) => {
                start = l.0 + 1;
                last = Some(l);
            }
            None => break,
        }
    }
    let Some((index, leaf)) = last else {
        return Ok(size);
    };
    let when = When::of(&req.trust, index, &leaf)?;
    Ok(if compare(&when.at, &period.to_utc).is_lt() {
        index + 1
    } else {
        size
    })
}

/// The RFC 9162 consistency proof from a checkpoint the auditor holds (a signed note, checked
/// against the deployment's key) to the bundle's.
async fn consistency_from<S: Store>(
    store: &S,
    signer: &NoteSigner,
    old_note: &str,
    new: &Checkpoint,
) -> Result<ConsistencyFile, ExportError> {
    let refused = |reason: String| ExportError::ProveFrom(reason);
    let verifier = signer.verifier();
    let old_note = checkpoint_note(old_note, &verifier, &new.origin);
    let text = verifier
        .open(old_note)
        .map_err(|e| refused(e.to_string()))?;
    let old = Checkpoint::parse(text).map_err(|e| refused(e.to_string()))?;
    match crate::audit::checkpoint::consistency(store, &old, new)
        .await
        .map_err(|e| refused(e.to_string()))?
    {
        Consistency::Consistent { proof } => Ok(ConsistencyFile {
            from_size: old.size,
            from_root: B64.encode(old.root),
            proof: proof.iter().map(hex::encode).collect(),
        }),
        Consistency::DifferentLogs => Err(refused(format!(
            "it is a checkpoint of {}, not of {}",
            old.origin, new.origin
        ))),
        Consistency::SizesOutOfOrder => Err(refused(format!(
            "its size {} is not between 1 and the log's {}",
            old.size, new.size
        ))),
        Consistency::NotExtended => Err(refused(format!(
            "the log at size {} does not extend it (size {}): the log was rewritten",
            new.size, old.size
        ))),
    }
}

/// What a leaf says of where it falls.
#[derive(serde::Deserialize)]
struct When<'a> {
    #[serde(borrow)]
    at: std::borrow::Cow<'a, str>,
    #[serde(default)]
    school_seq: Option<u64>,
}

impl<'a> When<'a> {
    /// Leaf `index` of `trust`'s log read; one that does not read is a damaged store.
    fn of(trust: &str, index: u64, leaf: &'a str) -> Result<Self, ExportError> {
        serde_json::from_str(leaf).map_err(|e| ExportError::Io {
            path: PathBuf::from(format!("(the store's audit leaf {trust}/{index})")),
            reason: format!("not an event: {e}"),
        })
    }
}

/// What has been written so far.
#[derive(Default)]
struct Written {
    entries: u64,
    records: u64,
    /// The index of the last entry written.
    last_index: Option<u64>,
}

/// The bundle's streamed files, each hashed as it is written.
struct Writers {
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
    fn create(dir: &Path, pseudonymise: bool) -> Result<Self, ExportError> {
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
    async fn entries<S: crate::store::DeliveryStore>(
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
    fn finish(mut self) -> Result<BTreeMap<String, String>, ExportError> {
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

/// Entries built (and leaves read) at once by `export`: its memory is about this many
/// entries' lines and records.
const EXPORT_SLICE: usize = 1_024;

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
