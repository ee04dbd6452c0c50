//! `audit export`: writes the bundle of one school's events in a period from the store, signs
//! the log's checkpoint at its current size, and logs the export in the trail.
//! Owns: [`export`], [`checkpoint_at`], [`ExportError`]: which entries a bundle holds and
//! its checkpoint. May not touch: the verifier; the files' layout is `writers`', the format
//! the bundle module's, pseudonyms `pseudonymise`'s.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};

use super::writers::{Writers, Written, owner_only_write, write};
use super::{CONSISTENCY, ConsistencyFile, Manifest, Period, Progress, origin};
use crate::audit::checkpoint::Consistency;
use crate::audit::note::{Checkpoint, NoteSigner, checkpoint_note};
use crate::audit::tree::{self, Hash};
use crate::audit::{Event, EventType};
use crate::store::{Store, StoreError};
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
