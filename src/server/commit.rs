//! Group commit for `POST /v1/records`: a short queue in front of the store. Requests hand
//! their batch to one committer task and wait for its answer; the committer takes every
//! batch waiting when it is free and writes them in one transaction, so many concurrent
//! single-record POSTs share one fsync instead of queueing for one each. Each request is
//! still answered only once its records are durable, and each gets its own outcomes, in its
//! own order, as if it had been written alone (the store decides a batch in order).
//!
//! Owns: the queue, the grouping and the split of outcomes. May not touch: what a batch
//! holds (the handler's) or how it is stored (the store's).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::TrailedStore;
use crate::store::{AnyStore, IngestOutcome, IntakeBatch, StoreError};

/// Batches waiting at most; a request finding the queue full waits for room.
const QUEUE: usize = 1024;
/// Records one transaction takes at most (a first batch larger than this is taken whole).
const GROUP_RECORDS: usize = 4096;

type Answer = Result<Vec<IngestOutcome>, Arc<StoreError>>;

struct Job {
    batch: IntakeBatch,
    answer: oneshot::Sender<Answer>,
}

/// The way in to the committer task; cloned into every request.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the committer has stopped")]
    Stopped,
}

impl Committer {
    /// Starts the committer over `store`; it runs until every `Committer` is dropped, then
    /// the handle completes. `committed` is told each transaction's record count.
    pub fn start(
        store: Arc<AnyStore>,
        committed: impl Fn(usize) + Send + Sync + 'static,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, rx, committed));
        (Committer { jobs }, task)
    }

    /// Stores `batch` (in a group with whatever else is waiting); its outcomes, one per
    /// record in order, once durable.
    pub async fn ingest(&self, batch: IntakeBatch) -> Result<Vec<IngestOutcome>, CommitError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { batch, answer })
            .await
            .map_err(|_| CommitError::Stopped)?;
        answered
            .await
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::Store)
    }
}

async fn run(store: Arc<AnyStore>, mut rx: mpsc::Receiver<Job>, committed: impl Fn(usize) + Sync) {
    while let Some(first) = rx.recv().await {
        let mut records = first.batch.records.len();
        let mut group = vec![first];
        while records < GROUP_RECORDS {
            match rx.try_recv() {
                Ok(job) => {
                    records += job.batch.records.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        commit(store.as_ref(), group, &committed).await;
    }
}

/// Writes `group` in one transaction and answers each job its part. Should that fail with
/// more than one job in it, each is written alone, so one batch's failure is its own.
async fn commit(store: &AnyStore, mut group: Vec<Job>, committed: &(impl Fn(usize) + Sync)) {
    if group.len() == 1 {
        if let Some(job) = group.pop() {
            alone(store, job, committed).await;
        }
        return;
    }
    let mut merged = IntakeBatch::default();
    let mut parts = Vec::with_capacity(group.len());
    for job in group {
        parts.push((
            job.batch.records.len(),
            job.batch.rejections.len(),
            job.answer,
        ));
        merged.records.extend(job.batch.records);
        merged.rejections.extend(job.batch.rejections);
    }
    match store.ingest(&merged).await {
        Ok(mut outcomes) => {
            committed(merged.records.len());
            for (records, _, answer) in parts.into_iter().rev() {
                let mine = outcomes.split_off(outcomes.len().saturating_sub(records));
                let _ = answer.send(Ok(mine));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = parts.len(), "a group commit failed; writing its batches one by one");
            // Take the merged batch apart again, last part first.
            let mut jobs = Vec::with_capacity(parts.len());
            for (records, rejections, answer) in parts.into_iter().rev() {
                let batch = IntakeBatch {
                    records: merged
                        .records
                        .split_off(merged.records.len().saturating_sub(records)),
                    rejections: merged
                        .rejections
                        .split_off(merged.rejections.len().saturating_sub(rejections)),
                };
                jobs.push(Job { batch, answer });
            }
            for job in jobs.into_iter().rev() {
                alone(store, job, committed).await;
            }
        }
    }
}

/// Writes one job's batch in a transaction of its own.
async fn alone(store: &AnyStore, job: Job, committed: &(impl Fn(usize) + Sync)) {
    let written = store.ingest(&job.batch).await;
    if written.is_ok() {
        committed(job.batch.records.len());
    }
    let _ = job.answer.send(written.map_err(Arc::new));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::records::{ContentHash, Kind};
    use crate::store::NewRecord;

    fn record(id: &str, content: &str) -> NewRecord {
        let canonical = format!(r#"{{"id":"{id}","note":"{content}","revision":1}}"#);
        NewRecord {
            kind: Kind::VisitReport,
            id: id.to_owned(),
            revision: 1,
            trust: "celt".to_owned(),
            school_urn: "136401".to_owned(),
            visit_id: None,
            urgency: None,
            hash: ContentHash::of_canonical(&canonical),
            projection: ContentHash::of_canonical(&canonical),
            canonical: canonical.into(),
            file: "api:test".to_owned(),
            line: None,
            exceptions: Vec::new(),
        }
    }

    fn names(outcomes: &[IngestOutcome]) -> Vec<&'static str> {
        outcomes
            .iter()
            .map(|o| match o {
                IngestOutcome::Stored => "stored",
                IngestOutcome::Unchanged => "unchanged",
                IngestOutcome::Conflict(_) => "conflict",
            })
            .collect()
    }

    /// Concurrent requests share transactions, and each gets its own outcomes as if it
    /// had been written alone, in the order they were queued.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_batches_share_a_transaction_and_keep_their_own_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::AnyStore::Sqlite(
            crate::store::SqliteStore::open(&dir.path().join("s.db"))
                .await
                .unwrap(),
        ));
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let (committer, task) = Committer::start(store.clone(), move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut requests = Vec::new();
        for i in 0..40 {
            let committer = committer.clone();
            // Request 2i holds V-i and S-i; request 2i+1 repeats V-i, then a conflicting
            // S-i (same revision, other content), then one of its own.
            let first = vec![
                record(&format!("V-{i}"), "a"),
                record(&format!("S-{i}"), "a"),
            ];
            let second = vec![
                record(&format!("V-{i}"), "a"),
                record(&format!("S-{i}"), "b"),
                record(&format!("W-{i}"), "a"),
            ];
            for records in [first, second] {
                let committer = committer.clone();
                requests.push(tokio::spawn(async move {
                    let batch = IntakeBatch {
                        records,
                        rejections: Vec::new(),
                    };
                    committer.ingest(batch).await.unwrap()
                }));
            }
        }
        drop(committer);
        let mut answers = Vec::new();
        for r in requests {
            answers.push(names(&r.await.unwrap()));
        }
        task.await.unwrap();
        for pair in answers.chunks(2) {
            assert_eq!(pair[0], ["stored", "stored"]);
            assert_eq!(pair[1], ["unchanged", "conflict", "stored"]);
        }
        let commits = commits.load(Ordering::SeqCst);
        assert!(commits < 20, "80 requests took {commits} transactions");
        let status = crate::store::Store::status(store.as_ref()).await.unwrap();
        let stored: u64 = status.records.iter().map(|c| c.count).sum();
        assert_eq!(stored, 120);
    }
}
