//! `audit verify`: checks a bundle offline with nothing but its folder (and optionally a key) —
//! the checkpoint's signature, every inclusion proof, every record, every file's hash.
//! Owns: [`verify`], [`VerifyFailure`], [`VerifyReport`] and the verifier's internals. May not
//! touch: the store, or write anything; the format it reads is the bundle module's.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::pseudonymise::plain_personal_field;
use super::{EntryRef, FILES, Manifest, Progress, origin};
use crate::audit::note::{Checkpoint, Verifier};
use crate::audit::tree::{self, Hash};
use crate::records::canonical_json;

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
