//! `audit export`: writes the bundle of one school's events in a period from the store, signs
//! the log's checkpoint at its current size, and logs the export in the trail.
//! Owns: [`export`], [`checkpoint_at`], [`ExportError`] and the file writers. May not touch:
//! the verifier; the format it writes is the bundle module's, pseudonyms are `pseudonymise`'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pseudonymise::Pseudonymiser;
use super::{Entry, Manifest, Period, Progress, csv_bytes, origin};
use crate::audit::note::{Checkpoint, NoteSigner};
use crate::audit::tree::{self, Hash};
use crate::audit::{Event, EventType};
use crate::records::canonical_json;
use crate::store::{Store, StoreError, StoredRevision};

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
    /// Whether the export and its checkpoint were recorded in the store's trail (not on a
    /// read-only copy).
    pub recorded: bool,
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
    let recorded = !store.is_read_only();
    if recorded {
        store.audit_save_checkpoint(&req.trust, size, &note).await?;
    }

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
    if recorded {
        store.audit_append(&[exported]).await?;
    }
    Ok(ExportSummary {
        entries: entries.len() as u64,
        records: revisions.len() as u64,
        tree_size: size,
        recorded,
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
