//! The delivery half of the store in SQLite. The states a statement claims, holds back,
//! releases or replays come from `store::rules`, written into the SQL as literals (so the
//! partial index on due deliveries still applies).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;

use super::{Col, SqliteStore, Undecoded, json_param, now};
use crate::records::Kind;
use crate::records::severity::Severity;
use crate::store::StoreError;
use crate::store::deliveries::{
    AttemptExport, AttemptOutcome, AttemptRow, Claimed, DeliveryCount, DeliveryDetail, DeliveryRow,
    DeliveryStore, ExceptionState, FinishTrail, Finished, LeaseCount, NewDelivery, QueueStat,
    RecordState, ReplayTrail, Replayed, RevisionState, Unrouted,
};
use crate::store::rules::{
    CLAIM_ORDER, CLAIMABLE, ClaimOrder, DeliveryState, REPLAY_BLOCKED_BY, REPLAYABLE, REPLAYED_TO,
    UNFINISHED, sql_list,
};

/// `ORDER BY` of the claim order, on deliveries aliased `d`.
fn claim_order() -> String {
    CLAIM_ORDER
        .iter()
        .map(|o| match o {
            ClaimOrder::Priority => "d.priority",
            ClaimOrder::Age => "d.seq",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET state = '{in_flight}', updated_at = ?3, lease_token = lease_token + 1, \
           lease_owner = ?5 WHERE seq IN ( \
           SELECT d.seq FROM deliveries d \
           WHERE d.trust = ?1 AND d.destination = ?2 AND d.state IN ({claimable}) AND d.next_at <= ?3 \
             AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.trust = d.trust AND e.destination = d.destination \
               AND e.kind = d.kind AND e.record_id = d.record_id AND e.revision < d.revision \
               AND e.state IN ({unfinished})) \
           ORDER BY {order} LIMIT ?4) \
         RETURNING seq",
        in_flight = DeliveryState::InFlight.as_str(),
        claimable = sql_list(&CLAIMABLE),
        unfinished = sql_list(&UNFINISHED),
        order = claim_order(),
    )
});

static CLAIMED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.seq, d.trust, d.destination, d.kind, d.record_id, d.revision, d.school_urn, d.map, \
           d.idempotency_key, d.attempts, r.content, r.content_hash, {EXCEPTIONS_OF} AS ex, \
           (SELECT p.target_id FROM deliveries p WHERE p.trust = d.trust AND p.destination = d.destination \
              AND p.kind = d.kind AND p.record_id = d.record_id AND p.revision < d.revision \
              AND p.state = '{delivered}' AND p.target_id IS NOT NULL ORDER BY p.revision DESC LIMIT 1) AS prior, \
           (SELECT p.sent_fields FROM deliveries p WHERE p.trust = d.trust AND p.destination = d.destination \
              AND p.kind = d.kind AND p.record_id = d.record_id AND p.revision < d.revision \
              AND p.state = '{delivered}' AND p.target_id IS NOT NULL ORDER BY p.revision DESC LIMIT 1) AS prior_sent, \
           d.unsure, d.lease_token \
         FROM deliveries d JOIN records r ON r.trust = d.trust AND r.kind = d.kind AND r.id = d.record_id \
           AND r.revision = d.revision \
         WHERE d.seq IN (SELECT value FROM json_each(?1)) ORDER BY {order}",
        delivered = DeliveryState::Delivered.as_str(),
        order = claim_order(),
    )
});

static RELEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN '{tried}' ELSE '{untried}' END, \
         unsure = 1, lease_owner = NULL, updated_at = ?1 WHERE state = '{in_flight}'",
        tried = crate::store::rules::released(1).as_str(),
        untried = crate::store::rules::released(0).as_str(),
        in_flight = DeliveryState::InFlight.as_str(),
    )
});

static NEXT_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT MIN(CASE WHEN state = '{in_flight}' THEN ?3 ELSE next_at END) FROM deliveries \
         WHERE trust = ?1 AND destination = ?2 AND state IN ({unfinished})",
        in_flight = DeliveryState::InFlight.as_str(),
        unfinished = sql_list(&UNFINISHED),
    )
});

static ADD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT OR IGNORE INTO deliveries (trust, destination, kind, record_id, revision, school_urn, \
         route, map, priority, idempotency_key, state, attempts, next_at, created_at, updated_at, last_error) \
         SELECT j.value ->> 'trust', j.value ->> 'destination', j.value ->> 'kind', \
         j.value ->> 'record_id', j.value ->> 'revision', j.value ->> 'school', j.value ->> 'route', \
         j.value ->> 'map', j.value ->> 'priority', j.value ->> 'idempotency_key', \
         CASE WHEN j.value ->> 'dead' IS NULL THEN '{routed}' ELSE '{unroutable}' END, 0, ?2, ?2, ?2, j.value ->> 'dead' \
         FROM json_each(?1) j",
        routed = crate::store::rules::initial(false).as_str(),
        unroutable = crate::store::rules::initial(true).as_str(),
    )
});

static REPLAY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET state = '{to}', attempts = 0, next_at = ?1, last_error = NULL, \
         response = NULL, updated_at = ?1, \
         unsure = CASE WHEN last_error LIKE '%(rule: {needs_check})%' THEN 0 ELSE unsure END \
         WHERE state = '{from}' AND (seq IN (SELECT value FROM json_each(?2)) OR (?5 AND trust = ?3 AND destination = ?4)) \
         AND NOT EXISTS (SELECT 1 FROM deliveries later WHERE later.trust = deliveries.trust \
             AND later.destination = deliveries.destination AND later.kind = deliveries.kind \
             AND later.record_id = deliveries.record_id AND later.revision > deliveries.revision \
             AND later.state = '{blocked_by}') \
         RETURNING seq, trust, school_urn, kind, record_id, revision, destination",
        to = REPLAYED_TO.as_str(),
        from = REPLAYABLE.as_str(),
        blocked_by = REPLAY_BLOCKED_BY.as_str(),
        needs_check = crate::store::rules::NEEDS_CHECK,
    )
});

/// This process as the holder of the leases it claims: `sqlite/<pid>`.
fn lease_owner() -> String {
    format!("sqlite/{}", std::process::id())
}

/// A time as stored (RFC 3339 text).
fn time_of(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, Undecoded> {
    let s: &str = row.col(column)?;
    crate::store::time::parse(s).map_err(|e| Undecoded {
        column: column.to_owned(),
        reason: format!("{s:?} is not an RFC 3339 time: {e}"),
    })
}

/// A record kind as stored.
fn kind_of(row: &SqliteRow, column: &str) -> Result<Kind, Undecoded> {
    let s: &str = row.col(column)?;
    Kind::from_name(s).ok_or_else(|| Undecoded {
        column: column.to_owned(),
        reason: format!("unknown record kind {s:?}"),
    })
}

/// A delivery state as stored.
fn state_of(row: &SqliteRow, column: &str) -> Result<DeliveryState, Undecoded> {
    let s: &str = row.col(column)?;
    s.parse()
        .map_err(|e: crate::store::rules::UnknownState| Undecoded {
            column: column.to_owned(),
            reason: e.to_string(),
        })
}

fn severities(json: Option<String>) -> Vec<(String, Severity)> {
    let rows: Vec<(String, String)> = json
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    rows.into_iter()
        .filter_map(|(rule, sev)| Some((rule, Severity::from_name(&sev)?)))
        .collect()
}

const EXCEPTIONS_OF: &str = "(SELECT json_group_array(json_array(e.rule, e.severity)) FROM exceptions e \
     WHERE e.trust = r.trust AND e.kind = r.kind AND e.id = r.id AND e.revision = r.revision)";

fn row_of(r: &SqliteRow) -> Result<DeliveryRow, Undecoded> {
    Ok(DeliveryRow {
        id: r.col("seq")?,
        trust: r.col("trust")?,
        destination: r.col("destination")?,
        record_kind: kind_of(r, "kind")?,
        record_id: r.col("record_id")?,
        revision: r.col::<i64, _>("revision")? as u32,
        school: r.col("school_urn")?,
        state: state_of(r, "state")?,
        attempts: r.col::<i64, _>("attempts")? as u32,
        next_at: time_of(r, "next_at")?,
        last_error: r.col("last_error")?,
        last_status: r.col::<Option<i64>, _>("last_status")?.map(|s| s as u16),
        target_id: r.col("target_id")?,
        delivered_at: match r.col::<Option<&str>, _>("delivered_at")? {
            Some(_) => Some(time_of(r, "delivered_at")?),
            None => None,
        },
        idempotency_key: r.col("idempotency_key")?,
        updated_at: time_of(r, "updated_at")?,
    })
}

fn attempt_of(r: &SqliteRow) -> Result<AttemptExport, Undecoded> {
    Ok(AttemptExport {
        destination: r.col(0)?,
        kind: r.col(1)?,
        record_id: r.col(2)?,
        revision: r.col::<i64, _>(3)? as u32,
        state: r.col(4)?,
        target_id: r.col(5)?,
        attempt: match r.col::<Option<i64>, _>(6)? {
            Some(n) => Some(AttemptRow {
                attempt: n as u32,
                at: time_of(r, "at")?,
                outcome: r.col(8)?,
                status: r.col::<Option<i64>, _>(9)?.map(|s| s as u16),
                error: r.col(10)?,
            }),
            None => None,
        },
    })
}

fn claimed_of(r: &SqliteRow) -> Result<Claimed, Undecoded> {
    Ok(Claimed {
        seq: r.col(0)?,
        trust: r.col(1)?,
        destination: r.col(2)?,
        kind: kind_of(r, "kind")?,
        record_id: r.col(4)?,
        revision: r.col::<i64, _>(5)? as u32,
        school: r.col(6)?,
        map: r.col(7)?,
        idempotency_key: r.col(8)?,
        attempts: r.col::<i64, _>(9)? as u32,
        canonical: r.col(10)?,
        content_hash: r.col(11)?,
        exceptions: severities(r.col(12)?),
        unsure: r.col::<i64, _>(15)? != 0,
        lease: r.col(16)?,
        prior_target: r.col(13)?,
        prior_sent: r
            .col::<Option<String>, _>(14)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| Undecoded {
                column: "sent_fields".into(),
                reason: e.to_string(),
            })?,
    })
}

impl DeliveryStore for SqliteStore {
    fn is_read_only(&self) -> bool {
        self.read_only
    }

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
            for r in &rows {
                out.push(attempt_of(r).map_err(self.undecoded())?);
            }
        }
        Ok(out)
    }

    async fn unrouted(&self, limit: usize) -> Result<Vec<Unrouted>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            // The most urgent first (an immediate flag is not routed behind a backlog), with
            // every earlier unrouted revision of the same records, oldest first: a revision
            // is never routed before the one it follows.
            // (The order is migration 0009's index expression, written as it is there.) The
            // earlier revisions are found from the picked ones by key (migration 0013), so a
            // call reads what it returns, not every unrouted revision.
            "WITH picked AS (SELECT trust, kind, id, revision FROM records WHERE routed = 0 \
               ORDER BY (CASE WHEN urgency = 'immediate' THEN 0 \
                              WHEN urgency = 'same_day' OR kind = 'incident' THEN 1 \
                              ELSE 2 END), rowid \
               LIMIT ?1) \
             SELECT r.trust, r.kind, r.id, r.revision, r.school_urn, r.urgency, r.content, {EXCEPTIONS_OF} AS ex \
             FROM records r WHERE r.rowid IN (SELECT e.rowid FROM picked p JOIN records e \
               ON e.trust = p.trust AND e.kind = p.kind AND e.id = p.id AND e.revision <= p.revision \
               WHERE e.routed = 0) \
             ORDER BY r.rowid"
        )))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        rows.iter()
            .map(|r| {
                Ok(Unrouted {
                    trust: r.col(0)?,
                    kind: kind_of(r, "kind")?,
                    id: r.col(2)?,
                    revision: r.col::<i64, _>(3)? as u32,
                    school: r.col(4)?,
                    urgency: r.col(5)?,
                    canonical: r.col(6)?,
                    exceptions: severities(r.col(7)?),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn add_deliveries(
        &self,
        routed: &[(String, Kind, String, u32)],
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        let err = self.db_err();
        let now = now();
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        for chunk in deliveries.chunks(500) {
            sqlx::query(sqlx::AssertSqlSafe(ADD.as_str()))
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
        let _turn = self.write_turn().await;
        let r = sqlx::query(sqlx::AssertSqlSafe(RELEASE.as_str()))
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
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let seqs: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(CLAIM.as_str()))
            .bind(trust)
            .bind(destination)
            .bind(&now)
            .bind(limit as i64)
            .bind(lease_owner())
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        if seqs.is_empty() {
            tx.commit().await.map_err(&err)?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(CLAIMED.as_str()))
            .bind(json_param(&seqs))
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        rows.iter()
            .map(claimed_of)
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn finish_with_trail(
        &self,
        done: &[Finished],
        trail: FinishTrail<'_>,
    ) -> Result<Vec<usize>, StoreError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let mut late = Vec::new();
        let mut events = Vec::with_capacity(done.len());
        let err = self.db_err();
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        for (i, f) in done.iter().enumerate() {
            let c = &f.claimed;
            let attempt = c.attempts + 1;
            let (outcome, status, error, written) = match &f.outcome {
                AttemptOutcome::Delivered { target_id, status } => {
                    let r = sqlx::query(
                        "UPDATE deliveries SET state = ?6, attempts = ?2, target_id = COALESCE(?3, target_id), \
                         delivered_at = ?4, last_status = ?5, last_error = NULL, response = NULL, updated_at = ?4, \
                         sent_fields = COALESCE(?7, sent_fields), lease_owner = NULL \
                         WHERE seq = ?1 AND lease_token = ?8 AND state = 'in_flight'",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(target_id)
                    .bind(&f.at)
                    .bind(status.map(i64::from))
                    .bind(f.outcome.state().as_str())
                    .bind(f.sent.as_ref().map(json_param))
                    .bind(c.lease)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    (
                        f.outcome.attempt_outcome(),
                        *status,
                        None,
                        r.rows_affected(),
                    )
                }
                AttemptOutcome::Retry {
                    next_at,
                    error,
                    status,
                } => {
                    let r = sqlx::query(
                        "UPDATE deliveries SET state = ?7, attempts = ?2, next_at = ?3, last_error = ?4, \
                         last_status = ?5, updated_at = ?6, unsure = MAX(unsure, ?8), lease_owner = NULL \
                         WHERE seq = ?1 AND lease_token = ?9 AND state = 'in_flight'",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(next_at)
                    .bind(error)
                    .bind(status.map(i64::from))
                    .bind(&f.at)
                    .bind(f.outcome.state().as_str())
                    .bind(i64::from(f.unsure))
                    .bind(c.lease)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    (
                        f.outcome.attempt_outcome(),
                        *status,
                        Some(error.as_str()),
                        r.rows_affected(),
                    )
                }
                AttemptOutcome::Dead {
                    error,
                    status,
                    response,
                } => {
                    let r = sqlx::query(
                        "UPDATE deliveries SET state = ?7, attempts = ?2, last_error = ?3, last_status = ?4, \
                         response = ?5, updated_at = ?6, unsure = MAX(unsure, ?8), lease_owner = NULL \
                         WHERE seq = ?1 AND lease_token = ?9 AND state = 'in_flight'",
                    )
                    .bind(c.seq)
                    .bind(attempt as i64)
                    .bind(error)
                    .bind(status.map(i64::from))
                    .bind(response)
                    .bind(&f.at)
                    .bind(f.outcome.state().as_str())
                    .bind(i64::from(f.unsure))
                    .bind(c.lease)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    (
                        f.outcome.attempt_outcome(),
                        *status,
                        Some(error.as_str()),
                        r.rows_affected(),
                    )
                }
            };
            if written == 0 {
                late.push(i);
                continue;
            }
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery, attempt, at, outcome, status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(c.seq)
            .bind(attempt as i64)
            .bind(&f.at)
            .bind(f.without_request.map_or(outcome, |w| w.as_str()))
            .bind(status.map(i64::from))
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
            events.push(trail(f));
        }
        self.append_events(&mut tx, &events).await?;
        tx.commit().await.map_err(&err)?;
        Ok(late)
    }

    async fn leases(&self) -> Result<Vec<LeaseCount>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT lease_owner, count(*) FROM deliveries WHERE state = 'in_flight' \
             AND lease_owner IS NOT NULL GROUP BY lease_owner ORDER BY lease_owner",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        // One writer holds a SQLite store: its leases last as long as it runs.
        Ok(rows
            .into_iter()
            .map(|(instance, n)| LeaseCount {
                instance,
                in_flight: n.max(0) as u64,
                expires_in_seconds: None,
            })
            .collect())
    }

    async fn next_due(&self, trust: &str, destination: &str) -> Result<Option<String>, StoreError> {
        // An `in_flight` delivery is due now: its outcome may not be committed yet, and a
        // retry may follow it.
        sqlx::query_scalar(sqlx::AssertSqlSafe(NEXT_DUE.as_str()))
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
        rows.iter()
            .map(|r| {
                Ok(DeliveryCount {
                    trust: r.col(0)?,
                    destination: r.col(1)?,
                    state: state_of(r, "state")?,
                    count: r.col::<i64, _>(3)? as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<Vec<QueueStat>, StoreError> {
        static QUERY: LazyLock<String> = LazyLock::new(|| {
            let claimable = sql_list(&CLAIMABLE);
            format!(
                "SELECT trust, destination, \
                   COUNT(*) FILTER (WHERE state IN ({claimable})), \
                   COUNT(*) FILTER (WHERE state IN ({claimable}) AND next_at <= ?1), \
                   MIN(next_at) FILTER (WHERE state IN ({claimable}) AND next_at <= ?1), \
                   SUM(MAX(attempts - 1, 0)) \
                 FROM deliveries GROUP BY trust, destination ORDER BY trust, destination"
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(QUERY.as_str()))
            .bind(super::super::time::format(&now))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| {
                let oldest: Option<String> = r.col(4)?;
                Ok(QueueStat {
                    trust: r.col(0)?,
                    destination: r.col(1)?,
                    waiting: r.col::<i64, _>(2)?.max(0) as u64,
                    due: r.col::<i64, _>(3)?.max(0) as u64,
                    oldest_due: oldest.and_then(|t| super::super::time::parse(&t).ok()),
                    retries: r.col::<i64, _>(5)?.max(0) as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn deliveries_in(
        &self,
        state: DeliveryState,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deliveries WHERE state = ?1 ORDER BY seq LIMIT ?2")
            .bind(state.as_str())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        rows.iter()
            .map(row_of)
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn record_state(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Option<RecordState>, StoreError> {
        let rows = |sql: &'static str| {
            sqlx::query(sql)
                .bind(trust)
                .bind(kind.as_str())
                .bind(id)
                .fetch_all(&self.pool)
        };
        let err = self.db_err();
        let revisions = rows(
            "SELECT revision, received_at, content_hash, current, school_urn FROM records \
             WHERE trust = ?1 AND kind = ?2 AND id = ?3 ORDER BY revision",
        )
        .await
        .map_err(&err)?;
        let Some(last) = revisions.last() else {
            return Ok(None);
        };
        let school: String = last.col(4).map_err(self.undecoded())?;
        let revisions = revisions
            .iter()
            .map(|r| {
                Ok(RevisionState {
                    revision: r.col::<i64, _>(0)? as u32,
                    received_at: r.col(1)?,
                    content_hash: r.col(2)?,
                    current: r.col::<i64, _>(3)? != 0,
                })
            })
            .collect::<Result<Vec<_>, Undecoded>>()
            .map_err(self.undecoded())?;
        let exceptions = rows(
            "SELECT revision, rule, severity, message, state FROM exceptions \
             WHERE trust = ?1 AND kind = ?2 AND id = ?3 ORDER BY revision, rule",
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| {
            Ok(ExceptionState {
                revision: r.col::<i64, _>(0)? as u32,
                rule: r.col(1)?,
                severity: r.col(2)?,
                message: r.col(3)?,
                state: r.col(4)?,
            })
        })
        .collect::<Result<Vec<_>, Undecoded>>()
        .map_err(self.undecoded())?;
        let deliveries = rows(
            "SELECT * FROM deliveries WHERE trust = ?1 AND kind = ?2 AND record_id = ?3 \
             ORDER BY revision, destination",
        )
        .await
        .map_err(&err)?
        .iter()
        .map(row_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.undecoded())?;
        Ok(Some(RecordState {
            trust: trust.to_owned(),
            kind,
            id: id.to_owned(),
            school,
            revisions,
            exceptions,
            deliveries,
        }))
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
        .map(|a| {
            Ok(AttemptRow {
                attempt: a.col::<i64, _>(0)? as u32,
                at: time_of(a, "at")?,
                outcome: a.col(2)?,
                status: a.col::<Option<i64>, _>(3)?.map(|s| s as u16),
                error: a.col(4)?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(self.undecoded())?;
        let row = row_of(&r).map_err(self.undecoded())?;
        let response = r.col("response").map_err(self.undecoded())?;
        Ok(Some((row, response, attempts)))
    }

    async fn replay_with_trail(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
        trail: ReplayTrail<'_>,
    ) -> Result<Vec<i64>, StoreError> {
        let err = self.db_err();
        let now = now();
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let (trust, dest) = destination.unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(REPLAY.as_str()))
            .bind(&now)
            .bind(json_param(&ids))
            .bind(trust)
            .bind(dest)
            .bind(ids.is_empty() && destination.is_some())
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        let back: Vec<Replayed> = rows
            .iter()
            .map(|r| {
                Ok(Replayed {
                    seq: r.col(0)?,
                    trust: r.col(1)?,
                    school: r.col(2)?,
                    kind: r.col(3)?,
                    record_id: r.col(4)?,
                    revision: r.col::<i64, _>(5)? as u32,
                    destination: r.col(6)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())?;
        let events = trail(&back, &now);
        self.append_events(&mut tx, &events).await?;
        // A replay is made after a fix, often "the target now has the pupil": what a
        // look-up did not find is asked again.
        for trust in back
            .iter()
            .map(|r| r.trust.as_str())
            .collect::<std::collections::BTreeSet<_>>()
        {
            sqlx::query("DELETE FROM lookups WHERE trust = ?1 AND value IS NULL")
                .bind(trust)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        let mut replayed: Vec<i64> = back.iter().map(|r| r.seq).collect();
        tx.commit().await.map_err(&err)?;
        replayed.sort_unstable();
        Ok(replayed)
    }
}
