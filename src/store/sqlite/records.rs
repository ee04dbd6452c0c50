//! Intake in SQLite: a batch's records, exceptions, trail events and issues in one
//! transaction; status counts; stored revisions and exceptions read back.

use std::collections::{BTreeMap, HashMap};

use super::{Col, INSERT_ROWS, SqliteStore, json_param, now};
use crate::records::Kind;
use crate::store::rules::{self, ExceptionState, Key, KeyState};
use crate::store::{
    ClosedException, CurrentRevision, ExceptionCount, IngestOutcome, IntakeBatch, IntakeFacts,
    IntakeTrail, PurgePage, PurgeTrail, RaisedException, RecordCount, RuleCount, StatusReport,
    Store, StoreError, StoredException, StoredRevision,
};
use crate::trail::Event;
use crate::trail::tree::{Hash, NodeId};

impl Store for SqliteStore {
    async fn ingest_with_trail(
        &self,
        batch: &IntakeBatch,
        trail: IntakeTrail<'_>,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let err = self.db_err();
        let undecoded = self.undecoded();
        let now = now();
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;

        // 1. What is stored for every key of the batch: its current revision, and the
        //    revisions the batch names. One query, the keys passed as a JSON array.
        let keys: Vec<(&str, &str, &str, u32)> = batch
            .records
            .iter()
            .map(|r| (r.trust.as_str(), r.kind.as_str(), r.id.as_str(), r.revision))
            .collect();
        let mut state: HashMap<Key, KeyState> = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT r.trust, r.kind, r.id, r.revision, r.content_hash, r.current \
                 FROM (SELECT DISTINCT value ->> 0 AS trust, value ->> 1 AS kind, value ->> 2 AS id, \
                              value ->> 3 AS revision FROM json_each(?1)) AS k \
                 JOIN records AS r ON r.trust = k.trust AND r.kind = k.kind AND r.id = k.id \
                 WHERE r.current = 1 OR r.revision = k.revision",
            )
            .bind(json_param(&keys))
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
                if row.col::<i64, _>(5).map_err(&undecoded)? == 1 {
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
        let superseded: Vec<(&str, &str, &str)> = state
            .iter()
            .filter(|(_, s)| s.supersedes())
            .map(|((t, k, id), _)| (t.as_str(), *k, id.as_str()))
            .collect();
        if !superseded.is_empty() {
            sqlx::query(
                "UPDATE records SET current = 0 WHERE current = 1 AND (trust, kind, id) IN \
                 (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1))",
            )
            .bind(json_param(&superseded))
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        let rows = rules::with_current(&batch.records, &stored);
        // Multi-row VALUES with bound parameters: no JSON to encode here or decode there.
        for chunk in rows.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
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
                    .push_bind(r.canonical.clone())
                    .push_bind(source)
                    .push_bind(now.as_str())
                    .push_bind(i64::from(current));
            });
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }

        // 4. Exceptions of the new revisions; then, for each record, earlier revisions'
        //    open exceptions are closed: `superseded` if raised again, else `resolved`.
        let raised: Vec<(usize, &RaisedException)> = stored
            .iter()
            .flat_map(|&i| batch.records[i].exceptions.iter().map(move |e| (i, e)))
            .collect();
        for chunk in raised.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
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
        let closing: Vec<_> = rules::closing(&batch.records, &stored, &state)
            .iter()
            .map(|c| serde_json::json!([c.trust, c.kind, c.id, c.revision, c.rules]))
            .collect();
        // What an open exception becomes is `ExceptionState::closed(raised again)`.
        let closed = if !closing.is_empty() {
            sqlx::query(
                "UPDATE exceptions SET \
                   state = CASE WHEN instr(',' || k.rules || ',', ',' || exceptions.rule || ',') > 0 \
                           THEN ?3 ELSE ?4 END, \
                   closed_at = ?2, closed_by_revision = k.revision \
                 FROM (SELECT value ->> 0 AS trust, value ->> 1 AS kind, value ->> 2 AS id, \
                              value ->> 3 AS revision, value ->> 4 AS rules FROM json_each(?1)) AS k \
                 WHERE exceptions.trust = k.trust AND exceptions.kind = k.kind AND exceptions.id = k.id \
                   AND exceptions.state = 'open' AND exceptions.revision < k.revision \
                 RETURNING exceptions.trust, exceptions.kind, exceptions.id, exceptions.school_urn, \
                   exceptions.closed_by_revision, exceptions.rule, exceptions.state",
            )
            .bind(serde_json::Value::Array(closing).to_string())
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

        // 5. The evidence trail, made by `trail`, in the same transaction as what it records.
        let events = trail(&IntakeFacts {
            batch,
            outcomes: &outcomes,
            closed: &closed,
            at: &now,
        });
        self.append_events(&mut tx, &events).await?;

        // 6. Conflicts and rejections, for `status`: ids, pointers and rules only.
        let issues: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                IngestOutcome::Conflict(c) => Some(serde_json::json!([
                    "conflict",
                    c.file,
                    c.line,
                    c.record_id,
                    c.revision,
                    null,
                    c.rule.as_str(),
                    c.message
                ])),
                _ => None,
            })
            .chain(batch.rejections.iter().map(|r| {
                serde_json::json!([
                    "rejection",
                    r.file,
                    r.line,
                    r.record_id,
                    null,
                    r.path,
                    r.rule.as_str(),
                    r.message
                ])
            }))
            .collect();
        if !issues.is_empty() {
            sqlx::query(
                "INSERT INTO intake_issues (at, issue, file, line, record_id, revision, pointer, rule, message) \
                 SELECT ?2, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
                        value ->> 6, value ->> 7 FROM json_each(?1)",
            )
            .bind(serde_json::Value::Array(issues).to_string())
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
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
                    state: if row.col::<i64, _>(3)? == 1 {
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
             WHERE trust = ?1 AND kind = ?2 AND id = ?3 ORDER BY revision, rule",
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
            let rows = sqlx::query(
                "SELECT r.kind, r.id, r.revision, r.school_urn, r.content_hash, r.received_at, r.content, r.purged_at \
                 FROM (SELECT value ->> 0 AS kind, value ->> 1 AS id, value ->> 2 AS revision \
                   FROM json_each(?2)) AS k CROSS JOIN records AS r \
                 WHERE r.trust = ?1 AND r.kind = k.kind AND r.id = k.id AND r.revision = k.revision \
                 ORDER BY r.kind, r.id, r.revision",
            )
            .bind(trust)
            .bind(json_param(&chunk))
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
            let rows = sqlx::query(
                "SELECT e.kind, e.id, e.revision, e.rule, e.severity, e.message, e.state, e.closed_by_revision \
                 FROM (SELECT value ->> 0 AS kind, value ->> 1 AS id, value ->> 2 AS revision \
                   FROM json_each(?2)) AS k CROSS JOIN exceptions AS e \
                 WHERE e.trust = ?1 AND e.kind = k.kind AND e.id = k.id AND e.revision = k.revision \
                 ORDER BY e.kind, e.id, e.revision, e.rule",
            )
            .bind(trust)
            .bind(json_param(&chunk))
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
            "SELECT revision, content FROM records WHERE trust = ?1 AND kind = ?2 AND id = ?3 ORDER BY revision",
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
