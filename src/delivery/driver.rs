//! One destination's loop: claims its due deliveries, keeps its slots busy (its own
//! concurrency and rate limit, batches where the endpoint batches), hands outcomes on.
//! Owns: the `Driver` and how outcomes are logged. May not touch: what one attempt does
//! (`attempt`) or what its result comes to (`retry`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::connectors::Connectors;
use crate::connectors::http::loggable;
use crate::mapping::Trusts;
use crate::store::StoreError;
use crate::store::deliveries::{AttemptOutcome, Claimed, DeliveryStore, Finished};

use super::attempt::{Env, attempt, attempt_batch};
use super::destinations::Dest;

/// How many claimed deliveries a destination keeps ahead of its senders, per slot: enough
/// to keep sending while the next chunk is claimed, few enough that an urgent flag claimed
/// next waits only for this queue to drain.
const AHEAD: usize = 4;

/// Logs an outcome by ids and status: the target's own words (which may quote the record)
/// stay in the store, never in the log.
pub(super) fn log_outcome(f: &Finished) {
    let c = &f.claimed;
    match &f.outcome {
        AttemptOutcome::Delivered { .. } if f.without_request.is_some() => tracing::info!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, why = f.without_request.map(|w| w.as_str()),
            "delivered without a request"
        ),
        AttemptOutcome::Delivered { status, .. } => tracing::info!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, status, "delivered"
        ),
        AttemptOutcome::Retry { error, next_at, .. } => tracing::warn!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, error = %loggable(error), next_at = %next_at, "delivery failed; will retry"
        ),
        AttemptOutcome::Dead { error, .. } => tracing::error!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, error = %loggable(error), "delivery dead-lettered"
        ),
    }
}

/// Logs an outcome the store did not write: the delivery's lease was lost (this instance
/// stalled past it, and another took the delivery), so another attempt decides it.
pub(super) fn log_late(f: &Finished) {
    let c = &f.claimed;
    tracing::warn!(
        trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
        revision = c.revision, lease = c.lease, outcome = f.outcome.attempt_outcome(),
        "late outcome not recorded: this instance no longer holds the delivery's lease"
    );
}

pub(super) struct Driver<S> {
    pub(super) dest: Arc<Dest>,
    pub(super) trusts: Arc<Trusts>,
    pub(super) connectors: Arc<Connectors>,
    pub(super) store: Arc<S>,
    pub(super) tx: mpsc::Sender<Finished>,
    pub(super) wake: Arc<Notify>,
    pub(super) until: super::Until,
}

impl<S: DeliveryStore + 'static> Driver<S> {
    /// One destination's loop: keep its slots busy with the most urgent due deliveries.
    /// Claiming runs beside the sending (the next chunk is claimed while the current one is
    /// sent), so the store's commits are not on the senders' path.
    pub(super) async fn drive(self) -> Result<(), StoreError> {
        let slots = self.dest.connector.limits.concurrency;
        // Room for full batches, where the connector batches.
        let batch = self
            .dest
            .connector
            .endpoints
            .values()
            .map(|e| e.batch_size)
            .max()
            .unwrap_or(1);
        let ahead = slots * AHEAD * batch;
        let mut queue: VecDeque<Claimed> = VecDeque::new();
        let mut sending: JoinSet<()> = JoinSet::new();
        let mut claiming: Option<tokio::task::JoinHandle<Result<Vec<Claimed>, StoreError>>> = None;
        // The last claim found nothing due: wait for an outcome or a moment before the next.
        let mut dry = false;
        let mut stop = match &self.until {
            super::Until::Stopped(rx) => Some(rx.clone()),
            super::Until::Deadline(_) => None,
        };
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while sending.try_join_next().is_some() {}
            if self.tx.is_closed() {
                // The outcome writer stopped (its store error ends the run): send no more.
                return Ok(());
            }
            // Told to stop: claim nothing more, send what is claimed, then end.
            let stopping = stop
                .as_ref()
                .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err());
            if stopping && queue.is_empty() && sending.is_empty() && claiming.is_none() {
                return Ok(());
            }
            if claiming.is_none() && !dry && !stopping && queue.len() <= ahead / 2 {
                let (store, trust, name) = (
                    self.store.clone(),
                    self.dest.trust.clone(),
                    self.dest.name.clone(),
                );
                let limit = ahead - queue.len();
                claiming = Some(tokio::spawn(async move {
                    store.claim(&trust, &name, limit).await
                }));
            }
            while sending.len() < slots {
                let Some(c) = queue.pop_front() else { break };
                let env = Env {
                    dest: self.dest.clone(),
                    trusts: self.trusts.clone(),
                    connectors: self.connectors.clone(),
                    store: self.store.clone(),
                };
                let tx = self.tx.clone();
                let size = self.dest.batch_size(&c);
                if size > 1 {
                    // The next deliveries of the same kind and school (a school's URL may
                    // differ) that are creates too.
                    let mut batch = vec![c];
                    while batch.len() < size
                        && let Some(i) = queue.iter().position(|q| {
                            q.kind == batch[0].kind
                                && q.school == batch[0].school
                                && self.dest.batch_size(q) > 1
                        })
                    {
                        batch.extend(queue.remove(i));
                    }
                    sending.spawn(async move {
                        for finished in attempt_batch(&env, batch).await {
                            let _ = tx.send(finished).await;
                        }
                    });
                    continue;
                }
                sending.spawn(async move {
                    let finished = attempt(&env, c).await;
                    let _ = tx.send(finished).await;
                });
            }
            if queue.is_empty() && sending.is_empty() && claiming.is_none() {
                // Nothing claimed and nothing in flight: wait for the next retry, if it
                // falls before the deadline, or for an outcome elsewhere (a revision waiting
                // on its predecessor), else stop.
                let next = self
                    .store
                    .next_due(&self.dest.trust, &self.dest.name)
                    .await?;
                let wait = next.map(|next| {
                    chrono::DateTime::parse_from_rfc3339(&next)
                        .map(|t| {
                            (t.with_timezone(&Utc) - Utc::now())
                                .to_std()
                                .unwrap_or_default()
                        })
                        .unwrap_or_default()
                });
                let wait = match (&self.until, wait) {
                    (super::Until::Deadline(deadline), Some(wait))
                        if Instant::now() + wait <= *deadline =>
                    {
                        wait
                    }
                    (super::Until::Deadline(_), _) => return Ok(()),
                    // Until stopped: wait for the next retry, new work or the stop, looking
                    // again at least every few seconds.
                    (super::Until::Stopped(_), wait) => wait.unwrap_or(IDLE).min(IDLE),
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                    _ = &mut notified => {}
                    _ = stopped(&mut stop) => {}
                }
                dry = false;
                continue;
            }
            tokio::select! {
                got = async {
                    match claiming.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if claiming.is_some() => {
                    claiming = None;
                    let got = got.map_err(|e| StoreError::Io { location: "claim".into(), reason: e.to_string() })??;
                    dry = got.is_empty();
                    queue.extend(got);
                }
                _ = sending.join_next(), if !sending.is_empty() => {}
                _ = &mut notified => { dry = false; }
                _ = tokio::time::sleep(Duration::from_millis(100)), if dry => { dry = false; }
                _ = stopped(&mut stop), if dry => {}
            }
        }
    }
}

/// A run until stopped looks for due work at least this often when it has none.
const IDLE: Duration = Duration::from_secs(5);

/// Completes when the stop signal changes (or its sender is gone); never, for a run with a
/// deadline.
async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(rx) if rx.has_changed().is_ok() => {
            let _ = rx.changed().await;
        }
        _ => std::future::pending().await,
    }
}
