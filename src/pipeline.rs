//! The intake pipeline both shells (CLI, server) call: read → validate → (store).
//!
//! `check` reads and validates, changing nothing. `ingest` does the same on a reader thread
//! and hands accepted records over a bounded channel to the store, which writes them in
//! batched transactions; nothing is reported as accepted before its batch commits.
//! Memory stays flat whatever the file size: the channel bounds what is in flight.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use rayon::prelude::*;

use crate::audit::TrailedStore;
use crate::intake::{Item, expand_paths, parse_text, read_file};
use crate::mapping::Trusts;
use crate::policy::{Exception, evaluate};
use crate::records::{ParsedRecord, Record, attribution_hint, parse_submission, record_id_hint};
use crate::report::{Conflict, ExceptionReport, Rejection, Summary};
use crate::store::{IngestOutcome, IntakeBatch, NewRecord, RaisedException, Store, StoreError};

/// Records written per transaction, about (whole chunks are taken).
pub const BATCH_RECORDS: usize = 1000;
/// Records (or rejected submissions) the reader thread hands over at a time.
const CHUNK_RECORDS: usize = 250;
/// Chunks in flight between the reader thread and the store: with the batch being written,
/// what memory holds stays a few thousand records whatever the file's size.
const CHANNEL_DEPTH: usize = 4;

/// Receives what a run finds, as it finds it.
pub trait Reporter {
    fn rejection(&mut self, rejection: &Rejection);
    fn exception(&mut self, exception: &ExceptionReport);
    fn conflict(&mut self, conflict: &Conflict);
}

/// An accepted record and the policy exceptions it raises.
#[derive(Debug)]
pub struct Checked {
    pub parsed: ParsedRecord,
    pub exceptions: Vec<Exception>,
}

/// One submission read from a file, validated.
pub enum Validated {
    Accepted {
        line: Option<u64>,
        records: Vec<Checked>,
    },
    Rejected(Vec<Rejection>),
}

/// The exceptions a record raises under its trust's policy (none for a trust with no
/// `mappings/<trust>/` folder, or with no config at all).
pub fn policy_exceptions(record: &Record, trusts: &Trusts) -> Vec<Exception> {
    match trusts.get(record.trust().as_str()) {
        Some(trust) => evaluate(
            record,
            trust.rules(),
            &trust.place(record.school().urn.as_str()),
        ),
        None => Vec::new(),
    }
}

impl NewRecord {
    /// The record to write for a parsed record and the policy exceptions it raises, read
    /// from `file` at `line`.
    pub fn from_parsed(
        p: ParsedRecord,
        exceptions: Vec<Exception>,
        file: &str,
        line: Option<u64>,
    ) -> Self {
        let r = &p.record;
        Self {
            kind: r.kind(),
            id: r.id().to_string(),
            revision: r.revision().0,
            trust: r.trust().to_string(),
            school_urn: r.school().urn.to_string(),
            visit_id: r.visit_id().map(ToString::to_string),
            urgency: r.urgency().map(|u| match u {
                crate::records::Urgency::Immediate => "immediate",
                crate::records::Urgency::SameDay => "same_day",
                crate::records::Urgency::Routine => "routine",
            }),
            hash: p.hash,
            projection: p.projection,
            canonical: p.canonical.into(),
            file: file.to_owned(),
            line,
            exceptions: exceptions
                .into_iter()
                .map(|e| RaisedException {
                    rule: e.rule.as_str(),
                    severity: e.severity,
                    message: e.message,
                })
                .collect(),
        }
    }
}

/// Validates one item read from `file` and runs its trust's policy.
pub fn validate(file: &str, item: Item, trusts: &Trusts) -> Validated {
    match item {
        // `parse_text` yields a value or an error, never text again.
        Item::Text { line, bytes } => validate(file, parse_text(&bytes, line), trusts),
        Item::Error {
            line,
            record_id,
            error,
        } => Validated::Rejected(vec![Rejection::new(file, line, record_id, error)]),
        Item::Value { line, value } => {
            let record_id = record_id_hint(&value);
            let (trust, school) = attribution_hint(&value);
            match parse_submission(value) {
                Ok(records) => {
                    for r in &records {
                        tracing::trace!(
                            file,
                            line,
                            kind = %r.record.kind(),
                            record_id = %r.record.id(),
                            revision = r.record.revision().0,
                            "record valid"
                        );
                    }
                    let records = records
                        .into_iter()
                        .map(|parsed| Checked {
                            exceptions: policy_exceptions(&parsed.record, trusts),
                            parsed,
                        })
                        .collect();
                    Validated::Accepted { line, records }
                }
                Err(errors) => {
                    tracing::debug!(
                        file,
                        line,
                        record_id,
                        errors = errors.len(),
                        "record rejected"
                    );
                    Validated::Rejected(
                        errors
                            .into_iter()
                            .map(|e| {
                                Rejection::new(file, line, record_id.clone(), e)
                                    .attributed(trust.clone(), school.clone())
                            })
                            .collect(),
                    )
                }
            }
        }
    }
}

/// Items validated together on the worker threads; results keep file order.
const CHUNK: usize = 512;

/// Reads and validates every file under `paths`, calling `each` per submission in file
/// order, until `each` breaks. Parsing and validation run on all cores, a chunk at a time.
pub fn read_and_validate(
    files: &[PathBuf],
    trusts: &Trusts,
    each: &mut dyn FnMut(&str, Validated) -> ControlFlow<()>,
) {
    for path in files {
        let file = path.display().to_string();
        tracing::info!(file = %file, "reading");
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut flush = |chunk: &mut Vec<Item>| -> ControlFlow<()> {
            let done: Vec<Validated> = std::mem::take(chunk)
                .into_par_iter()
                .map(|item| validate(&file, item, trusts))
                .collect();
            done.into_iter().try_for_each(|v| each(&file, v))
        };
        let mut stopped = false;
        read_file(path, &mut |item| {
            chunk.push(item);
            if chunk.len() == CHUNK && flush(&mut chunk).is_break() {
                stopped = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if stopped || flush(&mut chunk).is_break() {
            return;
        }
    }
}

/// `doorstep check`: validates, changes nothing.
pub fn check(paths: &[PathBuf], trusts: &Trusts, reporter: &mut dyn Reporter) -> Summary {
    let mut summary = Summary::default();
    read_and_validate(&expand_paths(paths), trusts, &mut |_, v| {
        match v {
            Validated::Accepted { records, .. } => {
                summary.accepted += records.len() as u64;
                for c in &records {
                    let (id, revision) =
                        (c.parsed.record.id().as_str(), c.parsed.record.revision().0);
                    for e in &c.exceptions {
                        summary.exceptions += 1;
                        reporter.exception(&ExceptionReport::new(id, revision, e));
                    }
                }
            }
            Validated::Rejected(rejections) => {
                summary.rejected += 1;
                for r in &rejections {
                    reporter.rejection(r);
                }
            }
        }
        ControlFlow::Continue(())
    });
    summary
}

/// What the reader thread hands the store, a few hundred records at a time: only what is
/// written, not the parsed trees.
#[derive(Default)]
struct Chunk {
    /// Records to write, each with the exceptions it raises as reported once stored.
    accepted: Vec<(NewRecord, Vec<ExceptionReport>)>,
    /// Rejected submissions, each with its rejections.
    rejected: Vec<Vec<Rejection>>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }
}

/// `doorstep ingest`: validates and stores durably, in batched transactions. Folders among
/// `paths` are walked (`intake::expand_paths`).
pub async fn ingest<S: Store>(
    store: &S,
    paths: Vec<PathBuf>,
    trusts: Arc<Trusts>,
    reporter: &mut dyn Reporter,
) -> Result<Summary, StoreError> {
    ingest_from(store, Source::Paths(paths), trusts, reporter).await
}

/// [`ingest`] of files already listed (a drop folder's, by `intake::expand_paths`): each is
/// read as it is, never walked again, so a link listed there is refused, not followed.
pub async fn ingest_files<S: Store>(
    store: &S,
    files: Vec<PathBuf>,
    trusts: Arc<Trusts>,
    reporter: &mut dyn Reporter,
) -> Result<Summary, StoreError> {
    ingest_from(store, Source::Files(files), trusts, reporter).await
}

/// What an ingest reads: paths to expand, or files already listed.
enum Source {
    Paths(Vec<PathBuf>),
    Files(Vec<PathBuf>),
}

async fn ingest_from<S: Store>(
    store: &S,
    source: Source,
    trusts: Arc<Trusts>,
    reporter: &mut dyn Reporter,
) -> Result<Summary, StoreError> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
    let reader = std::thread::spawn(move || {
        let files = match source {
            Source::Paths(paths) => expand_paths(&paths),
            Source::Files(files) => files,
        };
        let mut chunk = Chunk::default();
        read_and_validate(&files, &trusts, &mut |file, v| {
            match v {
                Validated::Accepted { line, records } => {
                    chunk.accepted.extend(records.into_iter().map(|c| {
                        let (id, revision) =
                            (c.parsed.record.id().as_str(), c.parsed.record.revision().0);
                        let reports = c
                            .exceptions
                            .iter()
                            .map(|e| ExceptionReport::new(id, revision, e))
                            .collect();
                        (
                            NewRecord::from_parsed(c.parsed, c.exceptions, file, line),
                            reports,
                        )
                    }))
                }
                Validated::Rejected(r) => chunk.rejected.push(r),
            }
            if chunk.len() < CHUNK_RECORDS {
                return ControlFlow::Continue(());
            }
            // The receiver only goes away when the store failed: stop reading; the error is
            // reported there.
            match tx.blocking_send(std::mem::take(&mut chunk)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        });
        if chunk.len() > 0 {
            let _ = tx.blocking_send(chunk);
        }
    });

    let mut summary = Summary::default();
    let mut result = Ok(());
    while let Some(first) = rx.recv().await {
        let mut batch = IntakeBatch::default();
        let mut raised: Vec<Vec<ExceptionReport>> = Vec::new();
        let mut rejected = 0u64;
        let mut add = |chunk: Chunk, batch: &mut IntakeBatch| {
            for (record, reports) in chunk.accepted {
                batch.records.push(record);
                raised.push(reports);
            }
            for r in chunk.rejected {
                rejected += 1;
                batch.rejections.extend(r);
            }
        };
        add(first, &mut batch);
        while batch.records.len() < BATCH_RECORDS && batch.rejections.len() < BATCH_RECORDS {
            match rx.try_recv() {
                Ok(chunk) => add(chunk, &mut batch),
                Err(_) => break,
            }
        }
        match store.ingest(&batch).await {
            Ok(outcomes) => {
                tracing::debug!(
                    records = batch.records.len(),
                    rejections = batch.rejections.len(),
                    "batch committed"
                );
                summary.rejected += rejected;
                for r in &batch.rejections {
                    reporter.rejection(r);
                }
                for (o, reports) in outcomes.into_iter().zip(&raised) {
                    match o {
                        IngestOutcome::Stored => {
                            summary.accepted += 1;
                            for e in reports {
                                summary.exceptions += 1;
                                reporter.exception(e);
                            }
                        }
                        IngestOutcome::Unchanged => summary.unchanged += 1,
                        IngestOutcome::Conflict(c) => {
                            summary.conflicts += 1;
                            reporter.conflict(&c);
                        }
                    }
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(rx);
    // The reader thread ends once the channel closes; a panic there is a bug, not input.
    let _ = reader.join();
    result.map(|()| {
        tracing::info!(
            accepted = summary.accepted,
            rejected = summary.rejected,
            unchanged = summary.unchanged,
            conflicts = summary.conflicts,
            "ingest finished"
        );
        summary
    })
}
