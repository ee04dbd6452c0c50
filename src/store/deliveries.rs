//! The delivery half of the store (SPEC §4): which revisions are routed, one delivery per
//! destination per revision with its state, every attempt, and dead letters. Claiming marks
//! deliveries `in_flight` before anything is sent, and each outcome is committed with its
//! evidence-trail event, so a crash at any moment leaves every delivery either done or to
//! be sent again (with the same idempotency key).

use std::future::Future;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;

use super::sqlite::json_param;
use super::{SqliteStore, StoreError};
use crate::audit::{Event, EventType};
use crate::policy::Severity;

/// A stored revision not yet routed.
#[derive(Debug, Clone)]
pub struct Unrouted {
    pub trust: String,
    pub kind: String,
    pub id: String,
    pub revision: u32,
    pub school: String,
    pub urgency: Option<String>,
    pub canonical: String,
    /// The exceptions this revision raised: (rule, severity).
    pub exceptions: Vec<(String, Severity)>,
}

/// A delivery to create.
#[derive(Debug, Clone, Serialize)]
pub struct NewDelivery {
    pub trust: String,
    pub destination: String,
    pub kind: String,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub route: String,
    pub map: String,
    pub priority: u8,
    pub idempotency_key: String,
    /// Set when routing itself failed: the delivery starts dead, with this reason.
    pub dead: Option<String>,
}

/// A delivery claimed for sending, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub trust: String,
    pub destination: String,
    pub kind: String,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub map: String,
    pub idempotency_key: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub canonical: String,
    pub content_hash: String,
    pub exceptions: Vec<(String, Severity)>,
    /// The target's id for an earlier revision of the record at this destination.
    pub prior_target: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        target_id: Option<String>,
        status: Option<u16>,
    },
    Retry {
        next_at: String,
        error: String,
        status: Option<u16>,
    },
    Dead {
        error: String,
        status: Option<u16>,
        response: Option<String>,
    },
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Finished {
    pub claimed: Claimed,
    pub at: String,
    pub outcome: Outcome,
}

/// One delivery as `deadletter` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub trust: String,
    pub destination: String,
    pub record_kind: String,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub state: String,
    pub attempts: u32,
    pub next_at: String,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    pub target_id: Option<String>,
    pub delivered_at: Option<String>,
    pub idempotency_key: String,
    pub updated_at: String,
}

/// One attempt, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    pub attempt: u32,
    pub at: String,
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// One delivery in full: its row, the saved response, and every attempt.
pub type DeliveryDetail = (DeliveryRow, Option<String>, Vec<AttemptRow>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryCount {
    pub trust: String,
    pub destination: String,
    pub state: String,
    pub count: u64,
}

/// One row of an audit bundle's `deliveries.csv`: an attempt (or, for a delivery never
/// attempted, none) with the delivery's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptExport {
    pub destination: String,
    pub kind: String,
    pub record_id: String,
    pub revision: u32,
    pub attempt: Option<AttemptRow>,
    pub state: String,
    pub target_id: Option<String>,
}

pub trait DeliveryStore: super::lookups::LookupStore {
    /// Every delivery of the given record revisions with every attempt, in order.
    fn attempts_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> impl Future<Output = Result<Vec<AttemptExport>, StoreError>> + Send;

    /// Stored revisions not yet routed, oldest first.
    fn unrouted(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Unrouted>, StoreError>> + Send;

    /// Creates deliveries and marks the revisions routed, in one transaction.
    fn add_deliveries(
        &self,
        routed: &[(String, String, String, u32)],
        deliveries: &[NewDelivery],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deliveries left `in_flight` by a process that stopped go back to be sent again.
    fn release_in_flight(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Claims up to `limit` deliveries of one destination that are due, most urgent first,
    /// each the lowest revision of its record still to go, and marks them `in_flight`.
    fn claim(
        &self,
        trust: &str,
        destination: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Records outcomes and their trail events in one transaction.
    fn finish(&self, done: &[Finished]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// When the destination's next delivery falls due (RFC 3339), if any is waiting; now,
    /// while any is in flight.
    fn next_due(
        &self,
        trust: &str,
        destination: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    fn delivery_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<DeliveryCount>, StoreError>> + Send;

    /// Deliveries in a state (`dead` for the dead letters), oldest first.
    fn deliveries_in(
        &self,
        state: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeliveryRow>, StoreError>> + Send;

    /// One delivery with its saved response and every attempt.
    fn delivery(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<DeliveryDetail>, StoreError>> + Send;

    /// Puts dead deliveries back to be sent (all dead ones of a destination when `ids` is
    /// empty and `destination` is given), except one whose record has a later revision
    /// delivered there (it would overwrite newer with older); forgets the trust's "not found"
    /// look-ups (a replay follows a fix); returns the ids replayed.
    fn replay(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn severities(json: Option<String>) -> Vec<(String, Severity)> {
    let rows: Vec<(String, String)> = json
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    rows.into_iter()
        .filter_map(|(rule, sev)| {
            let s = match sev.as_str() {
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                "info" => Severity::Info,
                _ => return None,
            };
            Some((rule, s))
        })
        .collect()
}

const EXCEPTIONS_OF: &str = "(SELECT json_group_array(json_array(e.rule, e.severity)) FROM exceptions e \
     WHERE e.trust = r.trust AND e.kind = r.kind AND e.id = r.id AND e.revision = r.revision)";

fn row_of(r: &sqlx::sqlite::SqliteRow) -> DeliveryRow {
    DeliveryRow {
        id: r.get("seq"),
        trust: r.get("trust"),
        destination: r.get("destination"),
        record_kind: r.get("kind"),
        record_id: r.get("record_id"),
        revision: r.get::<i64, _>("revision") as u32,
        school: r.get("school_urn"),
        state: r.get("state"),
        attempts: r.get::<i64, _>("attempts") as u32,
        next_at: r.get("next_at"),
        last_error: r.get("last_error"),
        last_status: r.get::<Option<i64>, _>("last_status").map(|s| s as u16),
        target_id: r.get("target_id"),
        delivered_at: r.get("delivered_at"),
        idempotency_key: r.get("idempotency_key"),
        updated_at: r.get("updated_at"),
    }
}

fn event_for(c: &Claimed, event: EventType, state: &str, at: &str) -> Event {
    let mut e = Event::new(event, at, &c.trust);
    e.school = Some(c.school.clone());
    e.kind = Some(c.kind.clone());
    e.record_id = Some(c.record_id.clone());
    e.revision = Some(c.revision);
    e.destination = Some(c.destination.clone());
    e.state = Some(state.to_owned());
    e.content_hash = Some(c.content_hash.clone());
    e
}

impl DeliveryStore for SqliteStore {
    async fn attempts_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<AttemptExport>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(5000) {
            let rows = sqlx::query(
                "SELECT d.destination, d.kind, d.record_id, d.revision, d.state, d.target_id, \
                   a.attempt, a.at, a.outcome, a.status, a.error \
                 FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery = d.seq \
                 WHERE d.trust = ?1 AND (d.kind, d.record_id, d.revision) IN \
                   (SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each(?2) j) \
                 ORDER BY d.kind, d.record_id, d.revision, d.destination, a.seq",
            )
            .bind(trust)
            .bind(json_param(&chunk))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
            out.extend(rows.iter().map(|r| AttemptExport {
                destination: r.get(0),
                kind: r.get(1),
                record_id: r.get(2),
                revision: r.get::<i64, _>(3) as u32,
                state: r.get(4),
                target_id: r.get(5),
                attempt: r.get::<Option<i64>, _>(6).map(|n| AttemptRow {
                    attempt: n as u32,
                    at: r.get(7),
                    outcome: r.get(8),
                    status: r.get::<Option<i64>, _>(9).map(|s| s as u16),
                    error: r.get(10),
                }),
            }));
        }
        Ok(out)
    }

    async fn unrouted(&self, limit: usize) -> Result<Vec<Unrouted>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT r.trust, r.kind, r.id, r.revision, r.school_urn, r.urgency, r.content, {EXCEPTIONS_OF} AS ex \
             FROM records r WHERE r.routed = 0 ORDER BY r.rowid LIMIT ?1"
        )))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(rows
            .iter()
            .map(|r| Unrouted {
                trust: r.get(0),
                kind: r.get(1),
                id: r.get(2),
                revision: r.get::<i64, _>(3) as u32,
                school: r.get(4),
                urgency: r.get(5),
                canonical: r.get(6),
                exceptions: severities(r.get(7)),
            })
            .collect())
    }

    async fn add_deliveries(
        &self,
        routed: &[(String, String, String, u32)],
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        let err = self.db_err();
        let now = now();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;
        for chunk in deliveries.chunks(500) {
            sqlx::query(
                "INSERT OR IGNORE INTO deliveries (trust, destination, kind, record_id, revision, school_urn, \
                 route, map, priority, idempotency_key, state, attempts, next_at, created_at, updated_at, last_error) \
                 SELECT j.value ->> 'trust', j.value ->> 'destination', j.value ->> 'kind', \
                 j.value ->> 'record_id', j.value ->> 'revision', j.value ->> 'school', j.value ->> 'route', \
                 j.value ->> 'map', j.value ->> 'priority', j.value ->> 'idempotency_key', \
                 CASE WHEN j.value ->> 'dead' IS NULL THEN 'pending' ELSE 'dead' END, 0, ?2, ?2, ?2, j.value ->> 'dead' \
                 FROM json_each(?1) j",
            )
            .bind(json_param(&chunk))
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        for chunk in routed.chunks(500) {
            sqlx::query(
                "UPDATE records SET routed = 1 WHERE (trust, kind, id, revision) IN \
                 (SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3 FROM json_each(?1) j)",
            )
            .bind(json_param(&chunk))
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    async fn release_in_flight(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END, \
             updated_at = ?1 WHERE state = 'in_flight'",
        )
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(r.rows_affected())
    }

    async fn claim(
        &self,
        trust: &str,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let err = self.db_err();
        let now = now();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;
        let seqs: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET state = 'in_flight', updated_at = ?3 WHERE seq IN ( \
               SELECT d.seq FROM deliveries d \
               WHERE d.trust = ?1 AND d.destination = ?2 AND d.state IN ('pending', 'retrying') AND d.next_at <= ?3 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.trust = d.trust AND e.destination = d.destination \
                   AND e.kind = d.kind AND e.record_id = d.record_id AND e.revision < d.revision \
                   AND e.state IN ('pending', 'retrying', 'in_flight')) \
               ORDER BY d.priority, d.seq LIMIT ?4) \
             RETURNING seq",
        )
        .bind(trust)
        .bind(destination)
        .bind(&now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        if seqs.is_empty() {
            tx.commit().await.map_err(&err)?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.seq, d.trust, d.destination, d.kind, d.record_id, d.revision, d.school_urn, d.map, \
               d.idempotency_key, d.attempts, r.content, r.content_hash, {EXCEPTIONS_OF} AS ex, \
               (SELECT p.target_id FROM deliveries p WHERE p.trust = d.trust AND p.destination = d.destination \
                  AND p.kind = d.kind AND p.record_id = d.record_id AND p.revision < d.revision \
                  AND p.state = 'delivered' AND p.target_id IS NOT NULL ORDER BY p.revision DESC LIMIT 1) AS prior \
             FROM deliveries d JOIN records r ON r.trust = d.trust AND r.kind = d.kind AND r.id = d.record_id \
               AND r.revision = d.revision \
             WHERE d.seq IN (SELECT value FROM json_each(?1)) ORDER BY d.priority, d.seq"
        )))
        .bind(json_param(&seqs))
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(rows
            .iter()
            .map(|r| Claimed {
                seq: r.get(0),
                trust: r.get(1),
                destination: r.get(2),
                kind: r.get(3),
                record_id: r.get(4),
                revision: r.get::<i64, _>(5) as u32,
                school: r.get(6),
                map: r.get(7),
                idempotency_key: r.get(8),
                attempts: r.get::<i64, _>(9) as u32,
                canonical: r.get(10),
                content_hash: r.get(11),
                exceptions: severities(r.get(12)),
                prior_target: r.get(13),
            })
            .collect())
    }

    async fn finish(&self, done: &[Finished]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let err = self.db_err();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;
        let mut events = Vec::with_capacity(done.len());
        for f in done {
            let c = &f.claimed;
            let attempt = c.attempts + 1;
            let (outcome, status, error) = match &f.outcome {
                Outcome::Delivered { target_id, status } => {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'delivered', attempts = ?2, target_id = COALESCE(?3, target_id), \
                         delivered_at = ?4, last_status = ?5, last_error = NULL, response = NULL, updated_at = ?4 \
                         WHERE seq = ?1",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(target_id)
                    .bind(&f.at)
                    .bind(status.map(i64::from))
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    events.push(event_for(c, EventType::Delivered, "delivered", &f.at));
                    ("delivered", *status, None)
                }
                Outcome::Retry {
                    next_at,
                    error,
                    status,
                } => {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'retrying', attempts = ?2, next_at = ?3, last_error = ?4, \
                         last_status = ?5, updated_at = ?6 WHERE seq = ?1",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(next_at)
                    .bind(error)
                    .bind(status.map(i64::from))
                    .bind(&f.at)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    events.push(event_for(c, EventType::Failed, "retrying", &f.at));
                    ("failed", *status, Some(error.as_str()))
                }
                Outcome::Dead {
                    error,
                    status,
                    response,
                } => {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'dead', attempts = ?2, last_error = ?3, last_status = ?4, \
                         response = ?5, updated_at = ?6 WHERE seq = ?1",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(error)
                    .bind(status.map(i64::from))
                    .bind(response)
                    .bind(&f.at)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    events.push(event_for(c, EventType::DeadLettered, "dead", &f.at));
                    ("dead", *status, Some(error.as_str()))
                }
            };
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery, attempt, at, outcome, status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(c.seq)
            .bind(attempt as i64)
            .bind(&f.at)
            .bind(outcome)
            .bind(status.map(i64::from))
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        self.append_events(&mut tx, &events).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn next_due(&self, trust: &str, destination: &str) -> Result<Option<String>, StoreError> {
        // An `in_flight` delivery is due now: its outcome may not be committed yet, and a
        // retry may follow it.
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN state = 'in_flight' THEN ?3 ELSE next_at END) FROM deliveries \
             WHERE trust = ?1 AND destination = ?2 AND state IN ('pending', 'retrying', 'in_flight')",
        )
        .bind(trust)
        .bind(destination)
        .bind(now())
        .fetch_one(&self.pool)
        .await
        .map_err(self.db_err())
    }

    async fn delivery_counts(&self) -> Result<Vec<DeliveryCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT trust, destination, state, COUNT(*) FROM deliveries GROUP BY trust, destination, state \
             ORDER BY trust, destination, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(rows
            .iter()
            .map(|r| DeliveryCount {
                trust: r.get(0),
                destination: r.get(1),
                state: r.get(2),
                count: r.get::<i64, _>(3) as u64,
            })
            .collect())
    }

    async fn deliveries_in(
        &self,
        state: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deliveries WHERE state = ?1 ORDER BY seq LIMIT ?2")
            .bind(state)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(rows.iter().map(row_of).collect())
    }

    async fn delivery(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        let err = self.db_err();
        let Some(r) = sqlx::query("SELECT * FROM deliveries WHERE seq = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(&err)?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, at, outcome, status, error FROM delivery_attempts WHERE delivery = ?1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?
        .iter()
        .map(|a| AttemptRow {
            attempt: a.get::<i64, _>(0) as u32,
            at: a.get(1),
            outcome: a.get(2),
            status: a.get::<Option<i64>, _>(3).map(|s| s as u16),
            error: a.get(4),
        })
        .collect();
        Ok(Some((row_of(&r), r.get("response"), attempts)))
    }

    async fn replay(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
    ) -> Result<Vec<i64>, StoreError> {
        let err = self.db_err();
        let now = now();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;
        let (trust, dest) = destination.unwrap_or_default();
        let rows = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?1, last_error = NULL, \
             response = NULL, updated_at = ?1 \
             WHERE state = 'dead' AND (seq IN (SELECT value FROM json_each(?2)) OR (?5 AND trust = ?3 AND destination = ?4)) \
             AND NOT EXISTS (SELECT 1 FROM deliveries later WHERE later.trust = deliveries.trust \
                 AND later.destination = deliveries.destination AND later.kind = deliveries.kind \
                 AND later.record_id = deliveries.record_id AND later.revision > deliveries.revision \
                 AND later.state = 'delivered') \
             RETURNING seq, trust, school_urn, kind, record_id, revision, destination",
        )
        .bind(&now)
        .bind(json_param(&ids))
        .bind(trust)
        .bind(dest)
        .bind(ids.is_empty() && destination.is_some())
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        let mut replayed = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            replayed.push(r.get::<i64, _>(0));
            let mut e = Event::new(EventType::Replayed, &now, r.get::<&str, _>(1));
            e.school = Some(r.get(2));
            e.kind = Some(r.get(3));
            e.record_id = Some(r.get(4));
            e.revision = Some(r.get::<i64, _>(5) as u32);
            e.destination = Some(r.get(6));
            e.state = Some("pending".into());
            events.push(e);
        }
        self.append_events(&mut tx, &events).await.map_err(&err)?;
        // A replay is made after a fix, often "the target now has the pupil": what a
        // look-up did not find is asked again.
        for trust in rows
            .iter()
            .map(|r| r.get::<String, _>(1))
            .collect::<std::collections::BTreeSet<_>>()
        {
            sqlx::query("DELETE FROM lookups WHERE trust = ?1 AND value IS NULL")
                .bind(&trust)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        replayed.sort_unstable();
        Ok(replayed)
    }
}
