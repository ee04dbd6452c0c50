//! Intake in PostgreSQL: a batch's records, exceptions, trail events and issues in one
//! transaction; status counts; stored revisions and exceptions read back. An intake
//! transaction takes its trusts' log heads first: two instances ingesting the same record
//! at once take turns, and each decides on what the other committed.

use std::collections::{BTreeMap, HashMap};

use super::{Col, INSERT_ROWS, PgStore, now};
use crate::records::Kind;
use crate::store::rules::{self, ExceptionState, Key, KeyState};
use crate::store::{
    ClosedException, CurrentRevision, ExceptionCount, IngestOutcome, IntakeBatch, IntakeFacts,
    IntakeTrail, PurgePage, PurgeTrail, RaisedException, RecordCount, RuleCount, StatusReport,
    Store, StoreError, StoredException, StoredRevision,
};
use crate::trail::Event;
use crate::trail::tree::{Hash, NodeId};

/// Columns of `keys` as arrays, for `unnest`.
fn columns3(keys: &[(String, String, u32)]) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
    let mut out = (
        Vec::with_capacity(keys.len()),
        Vec::with_capacity(keys.len()),
        Vec::with_capacity(keys.len()),
    );
    for (k, id, r) in keys {
        out.0.push(k.as_str());
        out.1.push(id.as_str());
        out.2.push(i64::from(*r));
    }
    out
}

impl Store for PgStore {
    async fn ingest_with_trail(
        &self,
        batch: &IntakeBatch,
        trail: IntakeTrail<'_>,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let err = self.db_err();
        let undecoded = self.undecoded();
        let now = now();
        let mut tx = self.pool.begin().await.map_err(&err)?;
        self.lock_heads(&mut tx, batch.records.iter().map(|r| r.trust.as_str()))
            .await?;

        // 1. What is stored for every key of the batch: its current revision, and the
        //    revisions the batch names.
        let mut state: HashMap<Key, KeyState> = HashMap::with_capacity(batch.records.len());
        if !batch.records.is_empty() {
            let trusts: Vec<&str> = batch.records.iter().map(|r| r.trust.as_str()).collect();
            let kinds: Vec<&str> = batch.records.iter().map(|r| r.kind.as_str()).collect();
            let ids: Vec<&str> = batch.records.iter().map(|r| r.id.as_str()).collect();
            let revs: Vec<i64> = batch
                .records
                .iter()
                .map(|r| i64::from(r.revision))
                .collect();
            let rows = sqlx::query(
                "SELECT DISTINCT r.trust, r.kind, r.id, r.revision, r.content_hash, r.current \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(trust, kind, id, revision) \
                 JOIN records AS r ON r.trust = k.trust AND r.kind = k.kind AND r.id = k.id \
                 WHERE r.current OR r.revision = k.revision",
            )
            .bind(&trusts)
            .bind(&kinds)
            .bind(&ids)
            .bind(&revs)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
            for row in &rows {
                let kind =
                    Kind::from_name(row.col(1).map_err(&undecoded)?).map_or("", Kind::as_str);
                let key = (
                    row.col(0).map_err(&undecoded)?,
                    kind,
                    row.col(2).map_err(&undecoded)?,
                );
                let revision =
                    u32::try_from(row.col::<i64, _>(3).map_err(&undecoded)?).unwrap_or(u32::MAX);
                let entry = state.entry(key).or_default();
                if row.col::<bool, _>(5).map_err(&undecoded)? {
                    entry.stored_latest = Some(revision);
                    entry.latest = Some(revision);
                }
                entry
                    .hashes
                    .insert(revision, row.col(4).map_err(&undecoded)?);
            }
        }

        // 2. Decide each record in order, as if written one by one (the shared rules).
        let (outcomes, stored) = rules::decide_batch(&batch.records, &mut state);

        // 3. Supersede what was current for keys that got a new revision, then insert.
        let (mut st, mut sk, mut si) = (Vec::new(), Vec::new(), Vec::new());
        for ((t, k, id), s) in &state {
            if s.supersedes() {
                st.push(t.as_str());
                sk.push(*k);
                si.push(id.as_str());
            }
        }
        if !st.is_empty() {
            sqlx::query(
                "UPDATE records SET current = false FROM unnest($1::text[], $2::text[], $3::text[]) AS k(trust, kind, id) \
                 WHERE records.current AND records.trust = k.trust AND records.kind = k.kind AND records.id = k.id",
            )
            .bind(&st)
            .bind(&sk)
            .bind(&si)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        for chunk in rules::with_current(&batch.records, &stored).chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO records (trust, kind, id, revision, school_urn, visit_id, urgency, \
                 content_hash, content, source, received_at, current) ",
            );
            insert.push_values(chunk, |mut row, &(i, current)| {
                let r = &batch.records[i];
                let source = match r.line {
                    Some(l) => format!("{}:{l}", r.file),
                    None => r.file.clone(),
                };
                row.push_bind(r.trust.as_str())
                    .push_bind(r.kind.as_str())
                    .push_bind(r.id.as_str())
                    .push_bind(i64::from(r.revision))
                    .push_bind(r.school_urn.as_str())
                    .push_bind(r.visit_id.as_deref())
                    .push_bind(r.urgency)
                    .push_bind(r.hash.to_hex())
                    .push_bind(&*r.canonical)
                    .push_bind(source)
                    .push_bind(now.as_str())
                    .push_bind(current);
            });
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }

        // 4. Exceptions of the new revisions; then earlier revisions' open exceptions are
        //    closed: `superseded` if raised again, else `resolved`.
        let raised: Vec<(usize, &RaisedException)> = stored
            .iter()
            .flat_map(|&i| batch.records[i].exceptions.iter().map(move |e| (i, e)))
            .collect();
        for chunk in raised.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO exceptions (trust, kind, id, revision, school_urn, rule, severity, \
                 message, raised_at, state) ",
            );
            insert.push_values(chunk, |mut row, &(i, e)| {
                let r = &batch.records[i];
                row.push_bind(r.trust.as_str())
                    .push_bind(r.kind.as_str())
                    .push_bind(r.id.as_str())
                    .push_bind(i64::from(r.revision))
                    .push_bind(r.school_urn.as_str())
                    .push_bind(e.rule)
                    .push_bind(e.severity.as_str())
                    .push_bind(e.message.as_str())
                    .push_bind(now.as_str())
                    .push_bind(ExceptionState::Open.as_str());
            });
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        let closing = rules::closing(&batch.records, &stored, &state);
        let closed = if !closing.is_empty() {
            let (mut ct, mut ck, mut ci, mut cr, mut cl) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for c in &closing {
                ct.push(c.trust);
                ck.push(c.kind);
                ci.push(c.id);
                cr.push(i64::from(c.revision));
                cl.push(c.rules.as_str());
            }
            // What an open exception becomes is `ExceptionState::closed(raised again)`.
            sqlx::query(
                "UPDATE exceptions SET \
                   state = CASE WHEN exceptions.rule = ANY(string_to_array(k.rules, ',')) \
                           THEN $7 ELSE $8 END, \
                   closed_at = $6, closed_by_revision = k.revision \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
                   AS k(trust, kind, id, revision, rules) \
                 WHERE exceptions.trust = k.trust AND exceptions.kind = k.kind AND exceptions.id = k.id \
                   AND exceptions.state = 'open' AND exceptions.revision < k.revision \
                 RETURNING exceptions.trust, exceptions.kind, exceptions.id, exceptions.school_urn, \
                   exceptions.closed_by_revision, exceptions.rule, exceptions.state",
            )
            .bind(&ct)
            .bind(&ck)
            .bind(&ci)
            .bind(&cr)
            .bind(&cl)
            .bind(&now)
            .bind(ExceptionState::closed(true).as_str())
            .bind(ExceptionState::closed(false).as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?
        } else {
            Vec::new()
        };
        let closed = closed
            .iter()
            .map(|row| {
                Ok(ClosedException {
                    trust: row.col(0)?,
                    kind: row.col(1)?,
                    id: row.col(2)?,
                    school: row.col(3)?,
                    closed_by_revision: u32::try_from(row.col::<i64, _>(4)?).unwrap_or(0),
                    rule: row.col(5)?,
                    state: if row.col::<&str, _>(6)? == ExceptionState::Superseded.as_str() {
                        ExceptionState::Superseded
                    } else {
                        ExceptionState::Resolved
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(&undecoded)?;

        // 5. Conflicts and rejections, for `status`: ids, pointers and rules only.
        let mut issues = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO intake_issues (at, issue, file, line, record_id, revision, pointer, rule, message) ",
        );
        /// (issue, file, line, record id, revision, pointer, rule, message)
        type Issue<'a> = (
            &'a str,
            &'a str,
            Option<i64>,
            Option<&'a str>,
            Option<i64>,
            Option<&'a str>,
            &'a str,
            &'a str,
        );
        let rows: Vec<Issue> = outcomes
            .iter()
            .filter_map(|o| match o {
                IngestOutcome::Conflict(c) => Some((
                    "conflict",
                    c.file.as_str(),
                    c.line.map(|l| l as i64),
                    Some(c.record_id.as_str()),
                    Some(i64::from(c.revision)),
                    None,
                    c.rule.as_str(),
                    c.message.as_str(),
                )),
                _ => None,
            })
            .chain(batch.rejections.iter().map(|r| {
                (
                    "rejection",
                    r.file.as_str(),
                    r.line.map(|l| l as i64),
                    r.record_id.as_deref(),
                    None,
                    r.path.as_deref(),
                    r.rule.as_str(),
                    r.message.as_str(),
                )
            }))
            .collect();
        for chunk in rows.chunks(INSERT_ROWS) {
            issues.reset();
            issues.push_values(chunk, |mut b, row| {
                b.push_bind(now.as_str())
                    .push_bind(row.0)
                    .push_bind(row.1)
                    .push_bind(row.2)
                    .push_bind(row.3)
                    .push_bind(row.4)
                    .push_bind(row.5)
                    .push_bind(row.6)
                    .push_bind(row.7);
            });
            issues
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }

        // 6. The evidence trail, made by `trail`, in the same transaction as what it records.
        let events = trail(&IntakeFacts {
            batch,
            outcomes: &outcomes,
            closed: &closed,
            at: &now,
        });
        self.append_events(&mut tx, &events).await?;
        tx.commit().await.map_err(&err)?;
        Ok(outcomes)
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        let err = self.db_err();
        let rows = sqlx::query(
            "SELECT trust, school_urn, kind, current, count(*), count(purged_at) FROM records \
             GROUP BY trust, school_urn, kind, current ORDER BY trust, school_urn, kind, current DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let mut purged = 0u64;
        for row in &rows {
            purged += row.col::<i64, _>(5).map_err(self.undecoded())? as u64;
        }
        let records = rows
            .iter()
            .map(|row| {
                Ok(RecordCount {
                    trust: row.col(0)?,
                    school: row.col(1)?,
                    record_kind: row.col(2)?,
                    state: if row.col::<bool, _>(3)? {
                        "current"
                    } else {
                        "superseded"
                    }
                    .into(),
                    count: row.col::<i64, _>(4)? as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())?;
        let rows = sqlx::query(
            "SELECT issue, rule, count(*) FROM intake_issues GROUP BY issue, rule ORDER BY issue, rule",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let issues = rows
            .iter()
            .map(|row| {
                Ok(RuleCount {
                    issue: row.col(0)?,
                    rule: row.col(1)?,
                    count: row.col::<i64, _>(2)? as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())?;
        let rows = sqlx::query(
            "SELECT trust, school_urn, rule, severity, count(*) FROM exceptions WHERE state = 'open' \
             GROUP BY trust, school_urn, rule, severity ORDER BY trust, school_urn, rule, severity",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let exceptions = rows
            .iter()
            .map(|row| {
                Ok(ExceptionCount {
                    trust: row.col(0)?,
                    school: row.col(1)?,
                    rule: row.col(2)?,
                    severity: row.col(3)?,
                    count: row.col::<i64, _>(4)? as u64,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())?;
        Ok(StatusReport {
            records,
            issues,
            exceptions,
            purged,
        })
    }

    async fn exceptions_of(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Vec<StoredException>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, rule, severity, message, state, closed_by_revision FROM exceptions \
             WHERE trust = $1 AND kind = $2 AND id = $3 ORDER BY revision, rule",
        )
        .bind(trust)
        .bind(kind.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        rows.iter()
            .map(|row| {
                Ok(StoredException {
                    revision: row.col::<i64, _>(0)? as u32,
                    rule: row.col(1)?,
                    severity: row.col(2)?,
                    message: row.col(3)?,
                    state: row.col(4)?,
                    closed_by_revision: row.col::<Option<i64>, _>(5)?.map(|r| r as u32),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    async fn audit_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.sql_audit_sizes().await
    }

    async fn audit_nodes(
        &self,
        trust: &str,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, Hash>, StoreError> {
        self.sql_audit_nodes(trust, ids).await
    }

    async fn audit_leaves(
        &self,
        trust: &str,
        school: Option<&str>,
        start: u64,
        size: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        self.sql_audit_leaves(trust, school, start, size, limit)
            .await
    }

    async fn audit_append(&self, events: &[Event]) -> Result<BTreeMap<String, u64>, StoreError> {
        self.sql_audit_append(events).await
    }

    async fn audit_save_checkpoint(
        &self,
        trust: &str,
        size: u64,
        note: &str,
    ) -> Result<(), StoreError> {
        self.sql_audit_save_checkpoint(trust, size, note).await
    }

    async fn revisions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<StoredRevision>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(20_000) {
            let (kinds, ids, revs) = columns3(chunk);
            let rows = sqlx::query(
                "SELECT r.kind, r.id, r.revision, r.school_urn, r.content_hash, r.received_at, r.content, r.purged_at \
                 FROM unnest($2::text[], $3::text[], $4::bigint[]) AS k(kind, id, revision) \
                 JOIN records AS r ON r.trust = $1 AND r.kind = k.kind AND r.id = k.id AND r.revision = k.revision \
                 ORDER BY r.kind, r.id, r.revision",
            )
            .bind(trust)
            .bind(&kinds)
            .bind(&ids)
            .bind(&revs)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
            for r in &rows {
                out.push(
                    (|| {
                        Ok(StoredRevision {
                            kind: r.col(0)?,
                            id: r.col(1)?,
                            revision: u32::try_from(r.col::<i64, _>(2)?).unwrap_or(0),
                            school: r.col(3)?,
                            content_hash: r.col(4)?,
                            received_at: r.col(5)?,
                            canonical: r.col(6)?,
                            purged_at: r.col(7)?,
                        })
                    })()
                    .map_err(self.undecoded())?,
                );
            }
        }
        Ok(out)
    }

    async fn exceptions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<(String, String, StoredException)>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(20_000) {
            let (kinds, ids, revs) = columns3(chunk);
            let rows = sqlx::query(
                "SELECT e.kind, e.id, e.revision, e.rule, e.severity, e.message, e.state, e.closed_by_revision \
                 FROM unnest($2::text[], $3::text[], $4::bigint[]) AS k(kind, id, revision) \
                 JOIN exceptions AS e ON e.trust = $1 AND e.kind = k.kind AND e.id = k.id AND e.revision = k.revision \
                 ORDER BY e.kind, e.id, e.revision, e.rule",
            )
            .bind(trust)
            .bind(&kinds)
            .bind(&ids)
            .bind(&revs)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
            for r in &rows {
                out.push(
                    (|| {
                        Ok((
                            r.col(0)?,
                            r.col(1)?,
                            StoredException {
                                revision: u32::try_from(r.col::<i64, _>(2)?).unwrap_or(0),
                                rule: r.col(3)?,
                                severity: r.col(4)?,
                                message: r.col(5)?,
                                state: r.col(6)?,
                                closed_by_revision: r
                                    .col::<Option<i64>, _>(7)?
                                    .and_then(|v| u32::try_from(v).ok()),
                            },
                        ))
                    })()
                    .map_err(self.undecoded())?,
                );
            }
        }
        Ok(out)
    }

    async fn purge_with_trail(
        &self,
        trust: &str,
        cutoff: &str,
        after: i64,
        limit: usize,
        trail: PurgeTrail<'_>,
    ) -> Result<PurgePage, StoreError> {
        self.sql_purge(trust, cutoff, after, limit, trail).await
    }

    async fn current_revisions(
        &self,
        trust: &str,
        school: &str,
        kind: Kind,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CurrentRevision>, StoreError> {
        self.sql_current_revisions(trust, school, kind, after, limit)
            .await
    }

    async fn revisions(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, content FROM records WHERE trust = $1 AND kind = $2 AND id = $3 ORDER BY revision",
        )
        .bind(trust)
        .bind(kind.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        rows.iter()
            .map(|row| Ok((row.col::<i64, _>(0)? as u32, row.col(1)?)))
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }
}
