//! Recording a batch of delivery outcomes in PostgreSQL: one fenced `UPDATE … FROM unnest`
//! for every outcome, one `INSERT` of the attempts written, the trail events of those only,
//! appended last (the log heads taken then). Called by `deliveries.rs`, which retries a batch
//! the database rolled back.
//!
//! Owns: the outcome statement. May not touch: what an outcome is (`delivery::retry`).

use super::{PgStore, StoreError};
use crate::store::deliveries::{AttemptOutcome, FinishTrail, Finished};

/// Every outcome of a batch written in one statement, only where the claim's lease still
/// holds; returns the deliveries written. What each outcome sets is as in SQLite: delivered
/// keeps the target's id and what it received and clears the error; a retry sets when; a
/// dead letter keeps the response; unsure, once set, stays until delivered.
const FINISH: &str = "WITH f AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], \
       $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[]) \
       AS u(seq, lease, state, attempts, target_id, at, status, sent, next_at, error, response, unsure)) \
     UPDATE deliveries d SET state = f.state, attempts = f.attempts, updated_at = f.at, last_status = f.status, \
       target_id = CASE WHEN f.state = 'delivered' THEN COALESCE(f.target_id, d.target_id) ELSE d.target_id END, \
       delivered_at = CASE WHEN f.state = 'delivered' THEN f.at ELSE d.delivered_at END, \
       last_error = CASE WHEN f.state = 'delivered' THEN NULL ELSE f.error END, \
       response = CASE WHEN f.state = 'delivered' THEN NULL WHEN f.state = 'dead' THEN f.response ELSE d.response END, \
       next_at = CASE WHEN f.state = 'retrying' THEN f.next_at ELSE d.next_at END, \
       sent_fields = CASE WHEN f.state = 'delivered' THEN COALESCE(f.sent, d.sent_fields) ELSE d.sent_fields END, \
       unsure = CASE WHEN f.state = 'delivered' THEN d.unsure ELSE d.unsure OR f.unsure END, \
       lease_owner = NULL, lease_until = NULL \
     FROM f WHERE d.seq = f.seq AND d.lease_token = f.lease AND d.state = 'in_flight' \
     RETURNING d.seq";

/// A batch of outcomes as columns, for `unnest`.
struct Outcomes<'a> {
    seq: Vec<i64>,
    lease: Vec<i64>,
    state: Vec<&'static str>,
    attempts: Vec<i64>,
    target_id: Vec<Option<&'a str>>,
    at: Vec<&'a str>,
    status: Vec<Option<i64>>,
    sent: Vec<Option<String>>,
    next_at: Vec<Option<&'a str>>,
    error: Vec<Option<String>>,
    response: Vec<Option<&'a str>>,
    unsure: Vec<bool>,
    /// The attempt's outcome as the attempt log keeps it.
    outcome: Vec<&'static str>,
}

impl<'a> Outcomes<'a> {
    fn of(done: &'a [Finished]) -> Self {
        let mut o = Outcomes {
            seq: Vec::new(),
            lease: Vec::new(),
            state: Vec::new(),
            attempts: Vec::new(),
            target_id: Vec::new(),
            at: Vec::new(),
            status: Vec::new(),
            sent: Vec::new(),
            next_at: Vec::new(),
            error: Vec::new(),
            response: Vec::new(),
            unsure: Vec::new(),
            outcome: Vec::new(),
        };
        for f in done {
            let c = &f.claimed;
            o.seq.push(c.seq);
            o.lease.push(c.lease);
            o.state.push(f.outcome.state().as_str());
            o.attempts.push(i64::from(c.attempts + 1));
            o.at.push(f.at.as_str());
            o.unsure.push(f.unsure);
            o.outcome.push(
                f.without_request
                    .map_or(f.outcome.attempt_outcome(), |w| w.as_str()),
            );
            o.sent
                .push(f.sent.as_ref().map(super::super::sqlite::json_param));
            let (target, status, next_at, error, response) = match &f.outcome {
                AttemptOutcome::Delivered { target_id, status } => {
                    (target_id.as_deref(), *status, None, None, None)
                }
                AttemptOutcome::Retry {
                    next_at,
                    error,
                    status,
                } => (
                    None,
                    *status,
                    Some(next_at.as_str()),
                    Some(error.clone()),
                    None,
                ),
                AttemptOutcome::Dead {
                    error,
                    status,
                    response,
                } => (
                    None,
                    *status,
                    None,
                    Some(error.clone()),
                    response.as_deref(),
                ),
            };
            o.target_id.push(target);
            o.status.push(status.map(i64::from));
            o.next_at.push(next_at);
            o.error.push(error);
            o.response.push(response);
        }
        o
    }
}

impl PgStore {
    /// One try at [`DeliveryStore::finish_with_trail`].
    pub(super) async fn finish_once(
        &self,
        done: &[Finished],
        trail: FinishTrail<'_>,
    ) -> Result<Vec<usize>, StoreError> {
        let err = self.db_err();
        let outcomes = Outcomes::of(done);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        // Two statements for the whole batch; the log heads are taken last, by the append,
        // so one instance's outcomes do not wait on another's while they are written.
        let written: Vec<i64> = sqlx::query_scalar(FINISH)
            .bind(&outcomes.seq)
            .bind(&outcomes.lease)
            .bind(&outcomes.state)
            .bind(&outcomes.attempts)
            .bind(&outcomes.target_id)
            .bind(&outcomes.at)
            .bind(&outcomes.status)
            .bind(&outcomes.sent)
            .bind(&outcomes.next_at)
            .bind(&outcomes.error)
            .bind(&outcomes.response)
            .bind(&outcomes.unsure)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        let written: std::collections::HashSet<i64> = written.into_iter().collect();
        let (late, kept): (Vec<usize>, Vec<usize>) =
            (0..done.len()).partition(|&i| !written.contains(&done[i].claimed.seq));
        if !kept.is_empty() {
            let pick = |col: &[Option<String>]| -> Vec<Option<String>> {
                kept.iter().map(|&i| col[i].clone()).collect()
            };
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery, attempt, at, outcome, status, error) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[])",
            )
            .bind(kept.iter().map(|&i| outcomes.seq[i]).collect::<Vec<_>>())
            .bind(kept.iter().map(|&i| outcomes.attempts[i]).collect::<Vec<_>>())
            .bind(kept.iter().map(|&i| outcomes.at[i]).collect::<Vec<_>>())
            .bind(kept.iter().map(|&i| outcomes.outcome[i]).collect::<Vec<_>>())
            .bind(kept.iter().map(|&i| outcomes.status[i]).collect::<Vec<_>>())
            .bind(pick(&outcomes.error))
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        let events: Vec<_> = kept.iter().map(|&i| trail(&done[i])).collect();
        self.append_events(&mut tx, &events).await?;
        tx.commit().await.map_err(&err)?;
        Ok(late)
    }
}
