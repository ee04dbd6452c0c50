//! `audit verify`: checks a bundle offline with nothing but its folder (and optionally a key
//! and a checkpoint the auditor trusts) — the checkpoint's signature, every inclusion proof,
//! every record, every file's hash, that the school's sequence has no gap and the period is
//! closed on both sides, and that the bundle's tree extends the trusted checkpoint — and says
//! in plain words what that proves.
//! Owns: [`verify`], [`VerifyOptions`], [`VerifyFailure`], checking one entry and one record.
//! Its parts: `walk` (completeness along the entries), `anchor` (the trusted checkpoint and
//! consistency proof), `report` (what was proven, in words), `entries` and `records` (the two
//! large files, read on their own threads). May not touch: the store, or write anything; the
//! format it reads is the bundle module's.
//!
//! It streams: entries are read and hashed in blocks on their own thread (`entries`) and
//! checked on all cores; `records.json` is read alongside on its own thread (`records`) in the
//! same order (export writes each record in the order of the entry that received it), so
//! memory stays flat whatever the bundle's size.

use std::io::BufReader;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod anchor;
mod entries;
mod pipe;
mod records;
mod report;
mod walk;

use anchor::check_anchor;
use records::RecordStream;
pub use report::{Anchor, Completeness, ContentChecks, TreeEnd, VerifyReport};
use walk::{CheckedEntry, Place, Walk};

use super::pseudonymise::plain_personal_field;
use super::{
    CONSISTENCY, ConsistencyFile, EntryRef, FILES, Manifest, PURGED, Period, Progress, origin,
};
use crate::audit::note::{Checkpoint, Verifier};
use crate::audit::tree::{self, Hash};
use crate::records::canonical_json;
use crate::records::personal::projection_text;
use crate::trail::sequence::compare;

/// What `verify` is given beside the bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The verifier key to check the checkpoint with, instead of the bundle's `log.pub`.
    pub key: Option<&'a str>,
    /// A signed checkpoint the auditor already trusts: the bundle's tree must extend it.
    pub trusted_checkpoint: Option<&'a str>,
    /// Fail a bundle whose records were not all checked in full (a pseudonymised one).
    pub require_content: bool,
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
    #[serde(default)]
    school_seq: Option<u64>,
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
    #[serde(default, borrow)]
    projection_hash: Option<std::borrow::Cow<'a, str>>,
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

/// The first thing in a bundle that does not verify: which entry or file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct VerifyFailure {
    pub what: String,
    pub reason: String,
}

fn fail(what: impl Into<String>, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        what: what.into(),
        reason: reason.into(),
    }
}

/// The longest line `entries.jsonl` or `records.json` may hold: far above any entry or record
/// (4 MiB at intake), so that a hostile file cannot make verify hold gigabytes.
const MAX_LINE: usize = 64 << 20;

/// A small file of the bundle (manifest, checkpoint, key), refused above 1 MiB so that a
/// hostile one cannot fill memory.
fn read(dir: &Path, name: &str) -> Result<Vec<u8>, VerifyFailure> {
    let cannot = |e: std::io::Error| fail(name, format!("cannot read: {}", e.kind()));
    let file = std::fs::File::open(dir.join(name)).map_err(cannot)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, (1 << 20) + 1), &mut bytes)
        .map_err(cannot)?;
    if bytes.len() > 1 << 20 {
        return Err(fail(
            name,
            "larger than 1 MiB: not a file of a doorstep bundle",
        ));
    }
    Ok(bytes)
}

fn read_text(dir: &Path, name: &str) -> Result<String, VerifyFailure> {
    String::from_utf8(read(dir, name)?).map_err(|_| fail(name, "not UTF-8"))
}

/// A file's SHA-256 (hex), read a buffer at a time.
fn hash_file(dir: &Path, name: &str) -> Result<String, VerifyFailure> {
    let mut reader = records::HashingReader {
        inner: BufReader::with_capacity(1 << 16, open(dir, name)?),
        hash: Sha256::new(),
    };
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| fail(name, format!("cannot read: {}", e.kind())))?;
    Ok(hex::encode(reader.hash.finalize()))
}

fn open(dir: &Path, name: &str) -> Result<std::fs::File, VerifyFailure> {
    std::fs::File::open(dir.join(name))
        .map_err(|e| fail(name, format!("cannot read: {}", e.kind())))
}

/// Purged revisions a report names one by one (the rest are counted).
const PURGED_NAMED: usize = 20;

/// Entries one worker checks in a row, remembering the nodes it has proven.
const RUN: usize = 512;

/// Checks a bundle offline; see the module's header.
pub fn verify(
    dir: &Path,
    options: &VerifyOptions<'_>,
    progress: &dyn Progress,
) -> Result<VerifyReport, VerifyFailure> {
    let manifest: Manifest = serde_json::from_slice(&read(dir, "manifest.json")?)
        .map_err(|e| fail("manifest.json", format!("not a doorstep manifest: {e}")))?;
    check_period(&manifest.period)?;
    let key_text = match options.key {
        Some(k) => k.to_owned(),
        None => read_text(dir, "log.pub")?,
    };
    let key_source = if options.key.is_some() {
        "--key"
    } else {
        "log.pub"
    };
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
    let (anchor, consistency_hash) =
        check_anchor(dir, &verifier, &checkpoint, options.trusted_checkpoint)?;

    // Entries and records, streamed side by side.
    let mut records = RecordStream::spawn(dir)?;
    let mut raws = records::Batch::default();
    let mut entries = entries::spawn(dir)?;
    let mut walk = Walk::new(&checkpoint);
    let mut content = ContentChecks::default();
    let mut purged: Vec<String> = Vec::new();
    let mut record_count = 0usize;
    let mut first_line = 1;
    progress.start("entries", manifest.entries);
    while let Some(block) = entries.next()? {
        let lines = block.lines();
        // Checked on all cores while the next block is read and hashed.
        let checked: Vec<_> = lines
            .par_chunks(RUN)
            .enumerate()
            .map(|(c, run)| {
                let mut proofs = tree::ProofVerifier::new(checkpoint.root, checkpoint.size);
                let mut out = Vec::with_capacity(run.len());
                for (n, line) in (first_line + c * RUN..).zip(run.iter()) {
                    match check_entry(n, line, &mut proofs, &manifest) {
                        Ok(e) => out.push(e),
                        Err(f) => return (out, Some(f)),
                    }
                }
                (out, None)
            })
            .collect();
        // In order: the first failure in the file wins.
        let mut received = Vec::new();
        for (run, failure) in checked {
            for entry in run {
                walk.step(&entry)?;
                received.extend(entry.received);
            }
            if let Some(f) = failure {
                return Err(f);
            }
        }
        first_line += lines.len();
        progress.advance(lines.len() as u64);
        drop(lines);
        entries.recycle(block);

        // Each received revision of the period has its record, next in records.json.
        records.take(received.len(), &mut raws)?;
        if raws.len() < received.len() {
            let (kind, id, rev) = &received[raws.len()].key;
            return Err(fail(
                "records.json",
                format!("{kind} {id} revision {rev} has an entry but no record"),
            ));
        }
        let checks: Vec<Result<Checked, VerifyFailure>> = received
            .par_iter()
            .enumerate()
            .map(|(i, want)| check_record(record_count + i, raws.get(i), want, &manifest))
            .collect();
        for c in checks {
            match c? {
                Checked::Full => content.full += 1,
                Checked::Purged(key) => {
                    content.purged += 1;
                    if purged.len() < PURGED_NAMED {
                        purged.push(key);
                    }
                }
                Checked::NonPersonal => content.non_personal += 1,
                Checked::Unchecked => content.unchecked += 1,
            }
        }
        record_count += raws.len();
    }
    let completeness = walk.finish()?;
    if walk.count != manifest.entries {
        return Err(fail(
            "entries.jsonl",
            format!(
                "{} entries; the manifest says {}",
                walk.count, manifest.entries
            ),
        ));
    }
    let (extra, records_hash) = records.finish()?;
    if extra {
        return Err(fail(
            format!("records.json record {record_count}"),
            "no entry of the bundle received this record",
        ));
    }

    // Files: each as the manifest hashed it.
    let mut hashes: Vec<(&str, String)> = vec![
        ("entries.jsonl", entries.hash()?),
        ("records.json", records_hash),
    ];
    for name in FILES {
        if name != "entries.jsonl" && name != "records.json" {
            hashes.push((name, hash_file(dir, name)?));
        }
    }
    if let Some(h) = consistency_hash {
        hashes.push((CONSISTENCY, h));
    }
    // Bundles from before retention have no list of purged revisions.
    if manifest.files.contains_key(PURGED) {
        hashes.push((PURGED, hash_file(dir, PURGED)?));
    }
    for (name, got) in &hashes {
        let want = manifest
            .files
            .get(*name)
            .ok_or_else(|| fail("manifest.json", format!("lists no hash for {name}")))?;
        if got != want {
            return Err(fail(*name, "its SHA-256 differs from the manifest's"));
        }
    }
    if let Some(extra) = manifest
        .files
        .keys()
        .find(|k| !hashes.iter().any(|(n, _)| n == k))
    {
        return Err(fail(
            "manifest.json",
            format!("lists a file that is not in the bundle: {extra}"),
        ));
    }
    if options.require_content && (content.non_personal > 0 || content.unchecked > 0) {
        return Err(fail(
            "records.json",
            format!(
                "--require-content: {} of {} records were not checked in full (the bundle is \
                 pseudonymised: only their non-personal fields can be)",
                content.non_personal + content.unchecked,
                record_count
            ),
        ));
    }
    if options.require_content && content.purged > 0 {
        return Err(fail(
            "records.json",
            format!(
                "--require-content: {} of {} records are purged from the store under retention: \
                 the bundle cannot show their content (their leaves verify)",
                content.purged, record_count
            ),
        ));
    }
    Ok(VerifyReport {
        entries: walk.count,
        records: record_count as u64,
        tree_size: checkpoint.size,
        origin: checkpoint.origin,
        school: manifest.school,
        period: manifest.period,
        completeness,
        anchor,
        content,
        purged,
        key: verifier.to_short(),
        key_given: options.key.is_some(),
    })
}

/// The manifest's UTC instants must be the starts of its local days in some time zone
/// (within 14 hours of midnight UTC) and in order.
fn check_period(p: &Period) -> Result<(), VerifyFailure> {
    let bad = |why: &str| fail("manifest.json", format!("period: {why}"));
    let day = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let instant = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let (Some(from), Some(to), Some(from_utc), Some(to_utc)) = (
        day(&p.from),
        day(&p.to),
        instant(&p.from_utc),
        instant(&p.to_utc),
    ) else {
        return Err(bad("not dates and RFC 3339 times"));
    };
    let near = |day: chrono::NaiveDate, t: chrono::DateTime<chrono::FixedOffset>| {
        let midnight = day.and_time(chrono::NaiveTime::MIN).and_utc();
        (t.with_timezone(&chrono::Utc) - midnight).num_hours().abs() <= 14
    };
    let next = to.succ_opt().unwrap_or(to);
    if to < from || !near(from, from_utc) || !near(next, to_utc) {
        return Err(bad(
            "its UTC instants are not the starts of its first day and of the day after its last",
        ));
    }
    Ok(())
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

/// A record revision an entry of the period says was received, with the hashes it carries.
pub(super) struct Received {
    key: (String, String, u64),
    hash: Hash,
    projection: Option<Hash>,
}

fn hex_hash(what: &dyn Fn() -> String, name: &str, text: &str) -> Result<Hash, VerifyFailure> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.as_bytes(), &mut bytes)
        .map_err(|_| fail(what(), format!("{name} is not a SHA-256 hash")))?;
    Ok(bytes)
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
    let place = if compare(&event.at, &manifest.period.from_utc).is_lt() {
        Place::Before
    } else if compare(&event.at, &manifest.period.to_utc).is_lt() {
        Place::In
    } else {
        Place::After
    };
    let received = match (
        place,
        event.event.as_ref(),
        event.kind,
        event.record_id,
        event.revision,
        event.content_hash,
    ) {
        (Place::In, "received", Some(kind), Some(id), Some(rev), Some(hash)) => Some(Received {
            key: (kind.into_owned(), id.into_owned(), rev),
            hash: hex_hash(&what, "content_hash", &hash)?,
            projection: event
                .projection_hash
                .map(|p| hex_hash(&what, "projection_hash", &p))
                .transpose()?,
        }),
        _ => None,
    };
    Ok(CheckedEntry {
        line: n,
        index: entry.index,
        at: event.at.into_owned(),
        seq: event.school_seq,
        exported: event.event == "exported",
        place,
        received,
    })
}

/// How one record was checked.
enum Checked {
    Full,
    /// A stub for a revision whose content the store purged: its hash matched the entry's.
    Purged(String),
    NonPersonal,
    Unchecked,
}

/// Record `i` of `records.json` against the revision the entry in its place received.
fn check_record(
    i: usize,
    raw: &[u8],
    want: &Received,
    manifest: &Manifest,
) -> Result<Checked, VerifyFailure> {
    // Fast path: a record written as its canonical text hashes to its leaf's hash as it stands.
    if !manifest.pseudonymised && Sha256::digest(raw)[..] == want.hash[..] {
        return Ok(Checked::Full);
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
    if key != want.key {
        return Err(fail(
            what,
            format!(
                "the entry in its place received {} {} revision {}: a record is missing, \
                 added or out of order",
                want.key.0, want.key.1, want.key.2
            ),
        ));
    }
    let record: Value = serde_json::from_str(raw).map_err(|e| fail(&what, e.to_string()))?;
    if let Some(stub) = record.get("purged") {
        // No record has a `purged` field (intake refuses unknown fields): a stub.
        let hash = stub.get("content_hash").and_then(Value::as_str);
        return if hash.is_some_and(|h| h.eq_ignore_ascii_case(&hex::encode(want.hash))) {
            Ok(Checked::Purged(format!(
                "{} {} revision {}",
                key.0, key.1, key.2
            )))
        } else {
            Err(fail(
                what,
                "a purged stub whose content hash is not the one its entry carries",
            ))
        };
    }
    if manifest.pseudonymised {
        if let Some(field) = plain_personal_field(&record) {
            return Err(fail(
                what,
                format!("the manifest says pseudonymised but {field} is not"),
            ));
        }
        let Some(projection) = &want.projection else {
            return Ok(Checked::Unchecked);
        };
        let hash: Hash = Sha256::digest(projection_text(&record).as_bytes()).into();
        return if hash == *projection {
            Ok(Checked::NonPersonal)
        } else {
            Err(fail(
                what,
                "its non-personal fields differ from those its entry's projection hash proves",
            ))
        };
    }
    // Re-formatted, or altered: canonicalised and hashed again.
    let hash: Hash = Sha256::digest(canonical_json(&record).as_bytes()).into();
    if hash == want.hash {
        Ok(Checked::Full)
    } else {
        Err(fail(
            what,
            "its content hash differs from the one its entry carries",
        ))
    }
}
