//! The SQLite store: one file, created readable by its owner only, WAL journal, full
//! fsync at commit, migrations embedded in the binary.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{
    ExceptionCount, IngestOutcome, IntakeBatch, NewRecord, RecordCount, RuleCount, StatusReport,
    Store, StoreError, StoredException, StoredRevision,
};
use crate::audit::{Event, EventType, tree};
use crate::policy::Exception;
use crate::records::{Kind, Rule};
use crate::report::Conflict;

/// Rows per INSERT statement: 12 parameters each, well under SQLite's 32766.
const INSERT_ROWS: usize = 500;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if need be, mode 0600) and migrates the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let io_err = |what: &str, e: std::io::Error| StoreError::Io {
            location: location.clone(),
            reason: format!("{what}: {}", e.kind()),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create its folder", e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err("cannot create the file", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("cannot make the file private", e))?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Database {
                location: location.clone(),
                source,
            })?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Checkpoint the write-ahead log every 64 MiB rather than 4 MiB: fewer, larger
            // copies into the database during a bulk ingest.
            .pragma("wal_autocheckpoint", "16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Database {
                location: location.clone(),
                source,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                location: location.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            location: self.path.display().to_string(),
            source,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What the store knows of one (trust, kind, id) while a batch is decided.
#[derive(Default)]
struct KeyState {
    /// The latest stored revision, before this batch.
    stored_latest: Option<u32>,
    /// The latest revision once this batch's records so far are taken.
    latest: Option<u32>,
    /// Content hashes of the revisions this batch asks about.
    hashes: HashMap<u32, String>,
}

type Key = (String, &'static str, String);

impl Store for SqliteStore {
    async fn ingest(&self, batch: &IntakeBatch) -> Result<Vec<IngestOutcome>, StoreError> {
        let err = self.db_err();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;

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
                let kind = Kind::from_name(row.get::<&str, _>(1)).map_or("", Kind::as_str);
                let key = (row.get::<String, _>(0), kind, row.get::<String, _>(2));
                let revision = u32::try_from(row.get::<i64, _>(3)).unwrap_or(u32::MAX);
                let entry = state.entry(key).or_default();
                if row.get::<i64, _>(5) == 1 {
                    entry.stored_latest = Some(revision);
                    entry.latest = Some(revision);
                }
                entry.hashes.insert(revision, row.get(4));
            }
        }

        // 2. Decide each record in order, as if written one by one.
        let mut outcomes = Vec::with_capacity(batch.records.len());
        let mut stored = Vec::new();
        for (i, r) in batch.records.iter().enumerate() {
            let hash = r.hash.to_hex();
            let entry = state
                .entry((r.trust.clone(), r.kind.as_str(), r.id.clone()))
                .or_default();
            let same = entry.hashes.get(&r.revision).map(|h| *h == hash);
            let outcome = match (entry.latest, same) {
                (_, Some(true)) => IngestOutcome::Unchanged,
                (Some(latest), _) if r.revision <= latest => {
                    IngestOutcome::Conflict(conflict(r, latest, same.is_some()))
                }
                _ => {
                    entry.latest = Some(r.revision);
                    entry.hashes.insert(r.revision, hash);
                    stored.push(i);
                    IngestOutcome::Stored
                }
            };
            outcomes.push(outcome);
        }

        // 3. Supersede what was current for keys that got a new revision, then insert.
        let superseded: Vec<(&str, &str, &str)> = state
            .iter()
            .filter(|(_, s)| s.stored_latest.is_some() && s.latest != s.stored_latest)
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
        // Multi-row VALUES with bound parameters: no JSON to encode here or decode there.
        for chunk in stored.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO records (trust, kind, id, revision, school_urn, visit_id, urgency, \
                 content_hash, content, source, received_at, current) ",
            );
            insert.push_values(chunk, |mut row, &i| {
                let r = &batch.records[i];
                let latest = state
                    .get(&(r.trust.clone(), r.kind.as_str(), r.id.clone()))
                    .and_then(|s| s.latest);
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
                    .push_bind(r.canonical.as_str())
                    .push_bind(source)
                    .push_bind(now.as_str())
                    .push_bind(i64::from(latest == Some(r.revision)));
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
        let raised: Vec<(usize, &Exception)> = stored
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
                    .push_bind(e.rule.as_str())
                    .push_bind(e.severity.as_str())
                    .push_bind(e.message.as_str())
                    .push_bind(now.as_str())
                    .push_bind("open");
            });
            insert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        let mut latest_stored: HashMap<(&str, &str, &str), (u32, String)> = HashMap::new();
        for &i in &stored {
            let r = &batch.records[i];
            let rules: Vec<&str> = r.exceptions.iter().map(|e| e.rule.as_str()).collect();
            latest_stored.insert(
                (r.trust.as_str(), r.kind.as_str(), r.id.as_str()),
                (r.revision, rules.join(",")),
            );
        }
        let closing: Vec<_> = latest_stored
            .iter()
            .map(|((t, k, id), (rev, rules))| serde_json::json!([t, k, id, rev, rules]))
            .collect();
        let closed = if !closing.is_empty() {
            sqlx::query(
                "UPDATE exceptions SET \
                   state = CASE WHEN instr(',' || k.rules || ',', ',' || exceptions.rule || ',') > 0 \
                           THEN 'superseded' ELSE 'resolved' END, \
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
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?
        } else {
            Vec::new()
        };

        // 5. The evidence trail, in the same transaction as what it records.
        let events = trail_events(batch, &outcomes, &stored, &closed, &now);
        append_events(&mut tx, &events).await.map_err(&err)?;

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
            "SELECT trust, school_urn, kind, current, count(*) FROM records \
             GROUP BY trust, school_urn, kind, current ORDER BY trust, school_urn, kind, current DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let records = rows
            .iter()
            .map(|row| RecordCount {
                trust: row.get(0),
                school: row.get(1),
                record_kind: row.get(2),
                state: if row.get::<i64, _>(3) == 1 {
                    "current"
                } else {
                    "superseded"
                }
                .into(),
                count: row.get::<i64, _>(4) as u64,
            })
            .collect();
        let rows = sqlx::query(
            "SELECT issue, rule, count(*) FROM intake_issues GROUP BY issue, rule ORDER BY issue, rule",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let issues = rows
            .iter()
            .map(|row| RuleCount {
                issue: row.get(0),
                rule: row.get(1),
                count: row.get::<i64, _>(2) as u64,
            })
            .collect();
        let rows = sqlx::query(
            "SELECT trust, school_urn, rule, severity, count(*) FROM exceptions WHERE state = 'open' \
             GROUP BY trust, school_urn, rule, severity ORDER BY trust, school_urn, rule, severity",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let exceptions = rows
            .iter()
            .map(|row| ExceptionCount {
                trust: row.get(0),
                school: row.get(1),
                rule: row.get(2),
                severity: row.get(3),
                count: row.get::<i64, _>(4) as u64,
            })
            .collect();
        Ok(StatusReport {
            records,
            issues,
            exceptions,
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
        Ok(rows
            .iter()
            .map(|row| StoredException {
                revision: row.get::<i64, _>(0) as u32,
                rule: row.get(1),
                severity: row.get(2),
                message: row.get(3),
                state: row.get(4),
                closed_by_revision: row.get::<Option<i64>, _>(5).map(|r| r as u32),
            })
            .collect())
    }

    async fn audit_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT trust, size FROM audit_logs ORDER BY trust")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<i64, _>(1)).unwrap_or(0)))
            .collect())
    }

    async fn audit_nodes(
        &self,
        trust: &str,
        ids: &[tree::NodeId],
    ) -> Result<HashMap<tree::NodeId, tree::Hash>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(self.db_err())?;
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(20_000) {
            out.extend(
                fetch_nodes(&mut conn, trust, chunk)
                    .await
                    .map_err(self.db_err())?,
            );
        }
        Ok(out)
    }

    async fn audit_entries(
        &self,
        trust: &str,
        school: &str,
        from: &str,
        to: &str,
        size: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Where<'a> {
            #[serde(borrow)]
            at: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            school: Option<std::borrow::Cow<'a, str>>,
        }
        let mut rows = sqlx::query(
            "SELECT idx, leaf FROM audit_leaves WHERE trust = ?1 AND idx < ?2 ORDER BY idx",
        )
        .bind(trust)
        .bind(size as i64)
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .map_err(self.db_err())?
        {
            let leaf: &str = row.get(1);
            // Every leaf is written by `Event::leaf`; one that does not read is a corrupt store.
            let w: Where = serde_json::from_str(leaf).map_err(|e| StoreError::Io {
                location: self.path.display().to_string(),
                reason: format!(
                    "audit leaf {trust}/{} is not an event: {e}",
                    row.get::<i64, _>(0)
                ),
            })?;
            if w.school.as_deref() == Some(school) && w.at.as_ref() >= from && w.at.as_ref() < to {
                out.push((
                    u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
                    leaf.to_owned(),
                ));
            }
        }
        Ok(out)
    }

    async fn audit_append(&self, events: &[Event]) -> Result<(), StoreError> {
        let err = self.db_err();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&err)?;
        append_events(&mut tx, events).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn audit_save_checkpoint(
        &self,
        trust: &str,
        size: u64,
        note: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO audit_checkpoints (trust, size, at, note) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(trust)
        .bind(size as i64)
        .bind(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))
        .bind(note)
        .execute(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(())
    }

    async fn revisions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<StoredRevision>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(20_000) {
            let rows = sqlx::query(
                "SELECT r.kind, r.id, r.revision, r.school_urn, r.content_hash, r.received_at, r.content \
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
            out.extend(rows.iter().map(|r| StoredRevision {
                kind: r.get(0),
                id: r.get(1),
                revision: u32::try_from(r.get::<i64, _>(2)).unwrap_or(0),
                school: r.get(3),
                content_hash: r.get(4),
                received_at: r.get(5),
                canonical: r.get(6),
            }));
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
            out.extend(rows.iter().map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    StoredException {
                        revision: u32::try_from(r.get::<i64, _>(2)).unwrap_or(0),
                        rule: r.get(3),
                        severity: r.get(4),
                        message: r.get(5),
                        state: r.get(6),
                        closed_by_revision: r
                            .get::<Option<i64>, _>(7)
                            .and_then(|v| u32::try_from(v).ok()),
                    },
                )
            }));
        }
        Ok(out)
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
        Ok(rows
            .iter()
            .map(|row| (row.get::<i64, _>(0) as u32, row.get(1)))
            .collect())
    }
}

pub(super) fn json_param<T: serde::Serialize>(rows: &T) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

fn conflict(r: &NewRecord, latest: u32, same_revision_stored: bool) -> Conflict {
    let message = if same_revision_stored {
        format!(
            "revision {} is already stored with different content; send a higher revision to change it",
            r.revision
        )
    } else {
        format!(
            "revision {} is lower than the stored revision {latest}; send a higher revision to change it",
            r.revision
        )
    };
    Conflict {
        file: r.file.clone(),
        line: r.line,
        record_id: r.id.clone(),
        revision: r.revision,
        rule: Rule::RevisionConflict,
        message,
    }
}

/// The evidence-trail events of one batch: what was stored (and the exceptions it raised),
/// exceptions resolved, conflicts, and rejections that name a well-formed trust.
fn trail_events(
    batch: &IntakeBatch,
    outcomes: &[IngestOutcome],
    stored: &[usize],
    closed: &[sqlx::sqlite::SqliteRow],
    now: &str,
) -> Vec<Event> {
    let about = |event: EventType, r: &NewRecord| {
        let mut e = Event::new(event, now, &r.trust);
        e.school = Some(r.school_urn.clone());
        e.kind = Some(r.kind.as_str().to_owned());
        e.record_id = Some(r.id.clone());
        e.revision = Some(r.revision);
        e
    };
    let mut events = Vec::new();
    for &i in stored {
        let r = &batch.records[i];
        let mut e = about(EventType::Received, r);
        e.content_hash = Some(r.hash.to_hex());
        events.push(e);
        if !r.exceptions.is_empty() {
            let mut e = about(EventType::ExceptionRaised, r);
            e.rules = r
                .exceptions
                .iter()
                .map(|x| x.rule.as_str().to_owned())
                .collect();
            events.push(e);
        }
    }
    // Resolved exceptions, one event per record revision that resolved them.
    let mut resolved: BTreeMap<(String, String, String, String, i64), Vec<String>> =
        BTreeMap::new();
    for row in closed.iter().filter(|r| r.get::<&str, _>(6) == "resolved") {
        resolved
            .entry((row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
            .or_default()
            .push(row.get(5));
    }
    for ((trust, kind, id, school, revision), mut rules) in resolved {
        rules.sort();
        let mut e = Event::new(EventType::ExceptionResolved, now, &trust);
        e.school = Some(school);
        e.kind = Some(kind);
        e.record_id = Some(id);
        e.revision = u32::try_from(revision).ok();
        e.rules = rules;
        events.push(e);
    }
    for (o, r) in outcomes.iter().zip(&batch.records) {
        if let IngestOutcome::Conflict(c) = o {
            let mut e = about(EventType::Conflict, r);
            e.rules = vec![c.rule.as_str().to_owned()];
            e.content_hash = Some(r.hash.to_hex());
            events.push(e);
        }
    }
    for rej in &batch.rejections {
        if let Some(trust) = &rej.trust {
            let mut e = Event::new(EventType::Rejected, now, trust);
            e.school.clone_from(&rej.school);
            e.record_id.clone_from(&rej.record_id);
            e.rules = vec![rej.rule.as_str().to_owned()];
            events.push(e);
        }
    }
    events
}

/// Appends events to their trusts' logs: leaves, the complete nodes they finish, new sizes.
pub(super) async fn append_events(
    conn: &mut SqliteConnection,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    let mut by_trust: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_trust.entry(e.trust.as_str()).or_default().push(e);
    }
    for (trust, events) in by_trust {
        let size: i64 = sqlx::query_scalar("SELECT size FROM audit_logs WHERE trust = ?1")
            .bind(trust)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0);
        let size = u64::try_from(size).unwrap_or(0);
        let frontier = fetch_nodes(conn, trust, &tree::root_nodes(size)).await?;
        let leaves: Vec<(String, tree::Hash)> = events
            .iter()
            .map(|e| {
                let leaf = e.leaf();
                let hash = tree::leaf_hash(leaf.as_bytes());
                (leaf, hash)
            })
            .collect();
        let hashes: Vec<tree::Hash> = leaves.iter().map(|l| l.1).collect();
        let (made, _) = tree::append(size, &frontier, &hashes);
        let rows: Vec<(u64, &Event, &(String, tree::Hash))> = leaves
            .iter()
            .zip(&events)
            .enumerate()
            .map(|(i, (l, e))| (size + i as u64, *e, l))
            .collect();
        for chunk in rows.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_leaves (trust, idx, leaf) ",
            );
            insert.push_values(chunk, |mut row, (idx, _, (leaf, _))| {
                row.push_bind(trust)
                    .push_bind(*idx as i64)
                    .push_bind(leaf.as_str());
            });
            insert.build().persistent(false).execute(&mut *conn).await?;
        }
        let inner: Vec<&(tree::NodeId, tree::Hash)> =
            made.iter().filter(|(id, _)| id.level > 0).collect();
        for chunk in inner.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_nodes (trust, level, idx, hash) ",
            );
            insert.push_values(chunk, |mut row, (id, hash)| {
                row.push_bind(trust)
                    .push_bind(i64::from(id.level))
                    .push_bind(id.index as i64)
                    .push_bind(hash.to_vec());
            });
            insert.build().persistent(false).execute(&mut *conn).await?;
        }
        sqlx::query(
            "INSERT INTO audit_logs (trust, size) VALUES (?1, ?2) \
             ON CONFLICT (trust) DO UPDATE SET size = excluded.size",
        )
        .bind(trust)
        .bind((size + events.len() as u64) as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The hashes of complete nodes of a trust's tree (level 0 from the leaves).
async fn fetch_nodes(
    conn: &mut SqliteConnection,
    trust: &str,
    ids: &[tree::NodeId],
) -> Result<HashMap<tree::NodeId, tree::Hash>, sqlx::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(out);
    }
    let wanted: Vec<(u32, u64)> = ids.iter().map(|id| (id.level, id.index)).collect();
    let rows = sqlx::query(
        // json_each drives (CROSS JOIN keeps it the outer loop): one primary-key lookup per
        // wanted node, whatever the size of the log.
        "SELECT 0, l.idx, l.leaf FROM json_each(?2) AS k CROSS JOIN audit_leaves AS l \
           WHERE k.value ->> 0 = 0 AND l.trust = ?1 AND l.idx = k.value ->> 1 \
         UNION ALL \
         SELECT n.level, n.idx, n.hash FROM json_each(?2) AS k CROSS JOIN audit_nodes AS n \
           WHERE k.value ->> 0 > 0 AND n.trust = ?1 AND n.level = k.value ->> 0 AND n.idx = k.value ->> 1",
    )
    .bind(trust)
    .bind(json_param(&wanted))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        // Level 0 comes back as the leaf's text, to hash; higher levels as stored hashes.
        let hash: Option<tree::Hash> = if row.get::<i64, _>(0) == 0 {
            Some(tree::leaf_hash(row.get::<&str, _>(2).as_bytes()))
        } else {
            <tree::Hash>::try_from(row.get::<&[u8], _>(2)).ok()
        };
        if let Some(hash) = hash {
            let id = tree::NodeId {
                level: u32::try_from(row.get::<i64, _>(0)).unwrap_or(0),
                index: u64::try_from(row.get::<i64, _>(1)).unwrap_or(0),
            };
            out.insert(id, hash);
        }
    }
    Ok(out)
}
