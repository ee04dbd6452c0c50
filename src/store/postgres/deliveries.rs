//! The delivery half of the store in PostgreSQL, shared by several instances. A claim takes
//! due deliveries with `FOR UPDATE SKIP LOCKED` (two instances never wait on, nor take, the
//! same row), most urgent first, and leases each: `lease_token` one higher (the fencing
//! token, carried in [`Claimed::lease`]), `lease_owner` this instance, `lease_until` a lease
//! from now on the database's clock. A batch of outcomes is written in one statement, each
//! only where the token still matches and the delivery is still in flight; a late one (its
//! instance lost the lease) changes nothing and is returned to be logged. A lease that ran out (its instance died)
//! is released before the next claim of its destination, marked `unsure` (the request may
//! have taken effect), and taken again with the same idempotency key.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;

use super::{Col, PgStore, Undecoded, now};
use crate::records::Kind;
use crate::records::severity::Severity;
use crate::store::StoreError;
use crate::store::deliveries::{
    AttemptExport, AttemptRow, Claimed, DeliveryCount, DeliveryDetail, DeliveryRow, DeliveryStore,
    ExceptionState, FinishTrail, Finished, LeaseCount, NewDelivery, QueueStat, RecordState,
    ReplayTrail, Replayed, RevisionState, Unrouted,
};
use crate::store::rules::{
    CLAIM_ORDER, CLAIMABLE, ClaimOrder, DeliveryState, REPLAY_BLOCKED_BY, REPLAYABLE, REPLAYED_TO,
    UNFINISHED, sql_list,
};

fn claim_order(alias: &str) -> String {
    CLAIM_ORDER
        .iter()
        .map(|o| match o {
            ClaimOrder::Priority => format!("{alias}.priority"),
            ClaimOrder::Age => format!("{alias}.seq"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deliveries of one destination whose lease ran out go back to be sent (unsure: the
/// request may have taken effect).
static RELEASE_EXPIRED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN '{tried}' ELSE '{untried}' END, \
         unsure = true, lease_owner = NULL, lease_until = NULL, updated_at = $3 \
         WHERE trust = $1 AND destination = $2 AND state = '{in_flight}' AND lease_until < now()",
        tried = crate::store::rules::released(1).as_str(),
        untried = crate::store::rules::released(0).as_str(),
        in_flight = DeliveryState::InFlight.as_str(),
    )
});

/// The claim. `OFFSET 0` keeps "an earlier revision is unfinished" a lookup per candidate
/// on the record's key: without it PostgreSQL may turn it into an anti-join, and on
/// statistics taken while the table was small (a backfill's first minute) it chose one that
/// read every unfinished delivery of the destination per candidate — 12 s a claim at 20,000.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH due AS ( \
           SELECT d.seq FROM deliveries d \
           WHERE d.trust = $1 AND d.destination = $2 AND d.state IN ({claimable}) AND d.next_at <= $3 \
             AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.trust = d.trust AND e.destination = d.destination \
               AND e.kind = d.kind AND e.record_id = d.record_id AND e.revision < d.revision \
               AND e.state IN ({unfinished}) OFFSET 0) \
           ORDER BY {order} LIMIT $4 FOR UPDATE SKIP LOCKED) \
         UPDATE deliveries d SET state = '{in_flight}', updated_at = $3, lease_token = d.lease_token + 1, \
           lease_owner = $5, lease_until = now() + make_interval(secs => $6) \
         FROM due WHERE d.seq = due.seq RETURNING d.seq",
        in_flight = DeliveryState::InFlight.as_str(),
        claimable = sql_list(&CLAIMABLE),
        unfinished = sql_list(&UNFINISHED),
        order = claim_order("d"),
    )
});

const EXCEPTIONS_OF: &str = "COALESCE((SELECT json_agg(json_build_array(e.rule, e.severity) ORDER BY e.rule)::text \
     FROM exceptions e WHERE e.trust = r.trust AND e.kind = r.kind AND e.id = r.id AND e.revision = r.revision), '[]')";

static CLAIMED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.seq, d.trust, d.destination, d.kind, d.record_id, d.revision, d.school_urn, d.map, \
           d.idempotency_key, d.attempts, r.content, r.content_hash, {EXCEPTIONS_OF} AS ex, \
           p.target_id AS prior, p.sent_fields AS prior_sent, d.unsure, d.lease_token \
         FROM deliveries d JOIN records r ON r.trust = d.trust AND r.kind = d.kind AND r.id = d.record_id \
           AND r.revision = d.revision \
         LEFT JOIN LATERAL (SELECT p.target_id, p.sent_fields FROM deliveries p WHERE p.trust = d.trust \
              AND p.destination = d.destination AND p.kind = d.kind AND p.record_id = d.record_id \
              AND p.revision < d.revision AND p.state = '{delivered}' AND p.target_id IS NOT NULL \
              ORDER BY p.revision DESC LIMIT 1) p ON true \
         WHERE d.seq = ANY($1) ORDER BY {order}",
        delivered = DeliveryState::Delivered.as_str(),
        order = claim_order("d"),
    )
});

/// When the destination's next delivery falls due: now for one this instance has in flight
/// (its outcome may bring a retry), the lease's end for one another instance has in flight
/// (it comes back only if that instance stops), else its `next_at` — so an idle instance
/// does not poll while another sends. Two lookups, each on its partial index (waiting; in
/// flight): one `state IN (…)` over all three states matched neither and read every delivery
/// of the destination, delivered ones included — a 30-minute soak saw it grow to 95 ms.
static NEXT_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT LEAST( \
           (SELECT MIN(next_at) FROM deliveries \
             WHERE trust = $1 AND destination = $2 AND state IN ({claimable})), \
           (SELECT MIN(CASE WHEN lease_owner = $4 OR lease_until IS NULL THEN $3 \
                ELSE to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END) \
             FROM deliveries WHERE trust = $1 AND destination = $2 AND state = '{in_flight}'))",
        in_flight = DeliveryState::InFlight.as_str(),
        claimable = sql_list(&CLAIMABLE),
    )
});

static REPLAY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET state = '{to}', attempts = 0, next_at = $1, last_error = NULL, \
         response = NULL, updated_at = $1, \
         unsure = CASE WHEN last_error LIKE '%(rule: {needs_check})%' THEN false ELSE unsure END \
         WHERE state = '{from}' AND (seq = ANY($2) OR ($5 AND trust = $3 AND destination = $4)) \
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

fn time_of(row: &PgRow, column: &str) -> Result<DateTime<Utc>, Undecoded> {
    let s: &str = row.col(column)?;
    crate::store::time::parse(s).map_err(|e| Undecoded {
        column: column.to_owned(),
        reason: format!("{s:?} is not an RFC 3339 time: {e}"),
    })
}

fn kind_of(row: &PgRow, column: &str) -> Result<Kind, Undecoded> {
    let s: &str = row.col(column)?;
    Kind::from_name(s).ok_or_else(|| Undecoded {
        column: column.to_owned(),
        reason: format!("unknown record kind {s:?}"),
    })
}

fn state_of(row: &PgRow, column: &str) -> Result<DeliveryState, Undecoded> {
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

fn row_of(r: &PgRow) -> Result<DeliveryRow, Undecoded> {
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

fn attempt_of(r: &PgRow) -> Result<AttemptExport, Undecoded> {
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

fn claimed_of(r: &PgRow) -> Result<Claimed, Undecoded> {
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
        prior_target: r.col(13)?,
        prior_sent: r
            .col::<Option<String>, _>(14)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| Undecoded {
                column: "sent_fields".into(),
                reason: e.to_string(),
            })?,
        unsure: r.col(15)?,
        lease: r.col(16)?,
    })
}

impl DeliveryStore for PgStore {
    async fn attempts_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<AttemptExport>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(5000) {
            let kinds: Vec<&str> = chunk.iter().map(|k| k.0.as_str()).collect();
            let ids: Vec<&str> = chunk.iter().map(|k| k.1.as_str()).collect();
            let revs: Vec<i64> = chunk.iter().map(|k| i64::from(k.2)).collect();
            let rows = sqlx::query(
                "SELECT d.destination, d.kind, d.record_id, d.revision, d.state, d.target_id, \
                   a.attempt, a.at, a.outcome, a.status, a.error \
                 FROM unnest($2::text[], $3::text[], $4::bigint[]) AS k(kind, id, revision) \
                 JOIN deliveries d ON d.trust = $1 AND d.kind = k.kind AND d.record_id = k.id \
                   AND d.revision = k.revision \
                 LEFT JOIN delivery_attempts a ON a.delivery = d.seq \
                 ORDER BY d.kind, d.record_id, d.revision, d.destination, a.seq",
            )
            .bind(trust)
            .bind(&kinds)
            .bind(&ids)
            .bind(&revs)
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
            // The most urgent first, with every earlier unrouted revision of the same
            // records, oldest first (migration 0012's index expression, written as there).
            "WITH picked AS (SELECT trust, kind, id, revision FROM records WHERE NOT routed \
               ORDER BY (CASE WHEN urgency = 'immediate' THEN 0 \
                              WHEN urgency = 'same_day' OR kind = 'incident' THEN 1 \
                              ELSE 2 END), seq \
               LIMIT $1) \
             SELECT r.trust, r.kind, r.id, r.revision, r.school_urn, r.urgency, r.content, {EXCEPTIONS_OF} AS ex \
             FROM records r WHERE NOT r.routed AND EXISTS (SELECT 1 FROM picked p \
               WHERE p.trust = r.trust AND p.kind = r.kind AND p.id = r.id AND r.revision <= p.revision) \
             ORDER BY r.seq"
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
        let mut tx = self.pool.begin().await.map_err(&err)?;
        for chunk in deliveries.chunks(super::INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO deliveries (trust, destination, kind, record_id, revision, school_urn, \
                 route, map, priority, idempotency_key, state, attempts, next_at, created_at, updated_at, last_error) ",
            );
            insert.push_values(chunk, |mut b, d| {
                b.push_bind(&d.trust)
                    .push_bind(&d.destination)
                    .push_bind(d.kind.as_str())
                    .push_bind(&d.record_id)
                    .push_bind(i64::from(d.revision))
                    .push_bind(&d.school)
                    .push_bind(&d.route)
                    .push_bind(&d.map)
                    .push_bind(i64::from(d.priority))
                    .push_bind(&d.idempotency_key)
                    .push_bind(crate::store::rules::initial(d.dead.is_some()).as_str())
                    .push_bind(0i64)
                    .push_bind(&now)
                    .push_bind(&now)
                    .push_bind(&now)
                    .push_bind(d.dead.as_deref());
            });
            // Two instances routing the same revision make the same deliveries: the first
            // stands.
            insert.push(" ON CONFLICT (trust, destination, kind, record_id, revision) DO NOTHING");
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        for chunk in routed.chunks(super::INSERT_ROWS) {
            let trusts: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
            let kinds: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
            let ids: Vec<&str> = chunk.iter().map(|r| r.2.as_str()).collect();
            let revs: Vec<i64> = chunk.iter().map(|r| i64::from(r.3)).collect();
            sqlx::query(
                "UPDATE records SET routed = true \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(trust, kind, id, revision) \
                 WHERE records.trust = k.trust AND records.kind = k.kind AND records.id = k.id \
                   AND records.revision = k.revision AND NOT records.routed",
            )
            .bind(&trusts)
            .bind(&kinds)
            .bind(&ids)
            .bind(&revs)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        if !deliveries.is_empty() {
            super::wake::announce(&mut tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    async fn release_in_flight(&self) -> Result<u64, StoreError> {
        // Only leases that ran out: another instance's deliveries in flight are its own.
        let r = sqlx::query(
            "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END, \
             unsure = true, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE state = 'in_flight' AND (lease_until < now() OR lease_owner = $2)",
        )
        .bind(now())
        .bind(&*self.instance)
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
        let released = sqlx::query(sqlx::AssertSqlSafe(RELEASE_EXPIRED.as_str()))
            .bind(trust)
            .bind(destination)
            .bind(&now)
            .execute(&self.pool)
            .await
            .map_err(&err)?;
        if released.rows_affected() > 0 {
            tracing::warn!(
                trust,
                destination,
                deliveries = released.rows_affected(),
                "leases ran out (an instance stopped or stalled): its deliveries are taken again"
            );
        }
        let mut tx = self.pool.begin().await.map_err(&err)?;
        let seqs: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(CLAIM.as_str()))
            .bind(trust)
            .bind(destination)
            .bind(&now)
            .bind(limit as i64)
            .bind(&*self.instance)
            .bind(self.lease.as_secs_f64())
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
        if seqs.is_empty() {
            tx.commit().await.map_err(&err)?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(CLAIMED.as_str()))
            .bind(&seqs)
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
        // A deadlock or serialisation failure rolled the whole batch back: nothing of it was
        // written, so it is written again (rather than the run restarting and re-sending).
        let mut tries = 0;
        loop {
            match self.finish_once(done, trail).await {
                Err(StoreError::Database { source, .. })
                    if tries < 3 && super::is_transient(&source) =>
                {
                    tries += 1;
                    tracing::warn!(error = %source, tries, "outcomes rolled back by the database; writing them again");
                }
                other => return other,
            }
        }
    }

    async fn next_due(&self, trust: &str, destination: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(NEXT_DUE.as_str()))
            .bind(trust)
            .bind(destination)
            .bind(now())
            .bind(&*self.instance)
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
                   COUNT(*) FILTER (WHERE state IN ({claimable}) AND next_at <= $1), \
                   MIN(next_at) FILTER (WHERE state IN ({claimable}) AND next_at <= $1), \
                   COALESCE(SUM(GREATEST(attempts - 1, 0)), 0)::bigint \
                 FROM deliveries GROUP BY trust, destination ORDER BY trust, destination"
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(QUERY.as_str()))
            .bind(crate::store::time::format(&now))
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
                    oldest_due: oldest.and_then(|t| crate::store::time::parse(&t).ok()),
                    retries: r.col::<i64, _>(5)?.max(0) as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn leases(&self) -> Result<Vec<LeaseCount>, StoreError> {
        let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
            "SELECT lease_owner, count(*), EXTRACT(EPOCH FROM max(lease_until) - now())::float8 \
             FROM deliveries WHERE state = 'in_flight' AND lease_owner IS NOT NULL \
             GROUP BY lease_owner ORDER BY lease_owner",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(rows
            .into_iter()
            .map(|(instance, n, left)| LeaseCount {
                instance,
                in_flight: n.max(0) as u64,
                expires_in_seconds: left,
            })
            .collect())
    }

    async fn deliveries_in(
        &self,
        state: DeliveryState,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deliveries WHERE state = $1 ORDER BY seq LIMIT $2")
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
             WHERE trust = $1 AND kind = $2 AND id = $3 ORDER BY revision",
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
                    current: r.col(3)?,
                })
            })
            .collect::<Result<Vec<_>, Undecoded>>()
            .map_err(self.undecoded())?;
        let exceptions = rows(
            "SELECT revision, rule, severity, message, state FROM exceptions \
             WHERE trust = $1 AND kind = $2 AND id = $3 ORDER BY revision, rule",
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
            "SELECT * FROM deliveries WHERE trust = $1 AND kind = $2 AND record_id = $3 \
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
        let Some(r) = sqlx::query("SELECT * FROM deliveries WHERE seq = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(&err)?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, at, outcome, status, error FROM delivery_attempts WHERE delivery = $1 ORDER BY seq",
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
        let mut tx = self.pool.begin().await.map_err(&err)?;
        let (trust, dest) = destination.unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(REPLAY.as_str()))
            .bind(&now)
            .bind(ids)
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
        let trusts: Vec<&str> = back
            .iter()
            .map(|r| r.trust.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // A replay is made after a fix, often "the target now has the pupil": what a
        // look-up did not find is asked again.
        sqlx::query("DELETE FROM lookups WHERE trust = ANY($1) AND value IS NULL")
            .bind(&trusts)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        let events = trail(&back, &now);
        self.append_events(&mut tx, &events).await?;
        if !back.is_empty() {
            super::wake::announce(&mut tx).await.map_err(&err)?;
        }
        let mut replayed: Vec<i64> = back.iter().map(|r| r.seq).collect();
        tx.commit().await.map_err(&err)?;
        replayed.sort_unstable();
        Ok(replayed)
    }
}
