//! The SQLite store: one file, created readable by its owner only, WAL journal, full
//! fsync at commit, migrations embedded in the binary.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
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
    edges: Arc<Edges>,
}

/// The right edge of each trust's log as this store last appended it, so that the next append
/// need not read it back. It is used only while the log still holds this store's mark (its
/// size and this store's random writer id, set by every append): after a rollback or another
/// writer's append the mark differs and the edge is read from the database again.
#[derive(Debug)]
struct Edges {
    writer: i64,
    last: Mutex<HashMap<String, tree::Edge>>,
}

impl Edges {
    fn new() -> Self {
        let mut id = [0u8; 8];
        // Without randomness the clock is unique enough: a mismatch only costs a read.
        if getrandom::fill(&mut id).is_err() {
            id = Utc::now()
                .timestamp_nanos_opt()
                .unwrap_or_default()
                .to_le_bytes();
        }
        Self {
            writer: i64::from_le_bytes(id),
            last: Mutex::default(),
        }
    }

    fn take(&self, trust: &str) -> Option<tree::Edge> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(trust)
    }

    fn keep(&self, trust: &str, edge: tree::Edge) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(trust.to_owned(), edge);
    }
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
            edges: Arc::new(Edges::new()),
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
        self.append_events(&mut tx, &events).await.map_err(&err)?;

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
        let tiles = read_tiles(&mut conn, trust, &tree::tiles_for(ids))
            .await
            .map_err(self.db_err())?;
        Ok(tree::nodes_from_tiles(ids, &tiles))
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
            "SELECT n, leaves FROM audit_bundles WHERE trust = ?1 AND n < ?2 ORDER BY n",
        )
        .bind(trust)
        .bind(size.div_ceil(tree::TILE_WIDTH) as i64)
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .map_err(self.db_err())?
        {
            let first = u64::try_from(row.get::<i64, _>(0)).unwrap_or(0) * tree::TILE_WIDTH;
            for (idx, leaf) in (first..size).zip(row.get::<&str, _>(1).split('\n')) {
                // Every leaf is written by `Event::leaf`; one that does not read is a corrupt store.
                let w: Where = serde_json::from_str(leaf).map_err(|e| StoreError::Io {
                    location: self.path.display().to_string(),
                    reason: format!("audit leaf {trust}/{idx} is not an event: {e}"),
                })?;
                if w.school.as_deref() == Some(school)
                    && w.at.as_ref() >= from
                    && w.at.as_ref() < to
                {
                    out.push((idx, leaf.to_owned()));
                }
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
        self.append_events(&mut tx, events).await.map_err(&err)?;
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

impl SqliteStore {
    /// Appends events to their trusts' logs: leaves into their bundles, the stored-level nodes
    /// they complete, new sizes. Two statements per trust once the edge is known.
    pub(super) async fn append_events(
        &self,
        conn: &mut SqliteConnection,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        let mut by_trust: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in events {
            by_trust.entry(e.trust.as_str()).or_default().push(e);
        }
        for (trust, events) in by_trust {
            let added = events.len() as i64;
            // The edge this store left, if the log still bears its mark; else read back.
            let mut edge = match self.edges.take(trust) {
                Some(edge) if self.claim(conn, trust, &edge, added).await? => edge,
                _ => {
                    let edge = read_edge(conn, trust).await?;
                    sqlx::query(
                        "INSERT INTO audit_logs (trust, size, writer) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (trust) DO UPDATE SET size = excluded.size, writer = excluded.writer",
                    )
                    .bind(trust)
                    .bind(edge.size() as i64 + added)
                    .bind(self.edges.writer)
                    .execute(&mut *conn)
                    .await?;
                    edge
                }
            };
            let size = edge.size();
            // Leaves joined into their bundles; the first may continue the last stored bundle.
            let mut made = Vec::new();
            let mut bundles: Vec<(i64, String)> = Vec::new();
            for (idx, event) in (size..).zip(&events) {
                let leaf = event.leaf();
                edge.push(tree::leaf_hash(leaf.as_bytes()), &mut made);
                let n = (idx / tree::TILE_WIDTH) as i64;
                match bundles.last_mut() {
                    Some((last, text)) if *last == n => {
                        text.push('\n');
                        text.push_str(&leaf);
                    }
                    _ => bundles.push((n, leaf)),
                }
            }
            for chunk in bundles.chunks(INSERT_ROWS) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO audit_bundles (trust, n, leaves) ",
                );
                insert.push_values(chunk, |mut row, (n, leaves)| {
                    row.push_bind(trust)
                        .push_bind(*n)
                        .push_bind(leaves.as_str());
                });
                insert.push(
                    " ON CONFLICT (trust, n) DO UPDATE \
                     SET leaves = audit_bundles.leaves || char(10) || excluded.leaves",
                );
                insert.build().persistent(false).execute(&mut *conn).await?;
            }
            for chunk in made.chunks(INSERT_ROWS) {
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
            self.edges.keep(trust, edge);
        }
        Ok(())
    }

    /// Moves the log's size on by `added` if it still bears this store's mark at the edge's
    /// size: then the edge in memory is the log's.
    async fn claim(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
        edge: &tree::Edge,
        added: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE audit_logs SET size = size + ?2 WHERE trust = ?1 AND size = ?3 AND writer = ?4",
        )
        .bind(trust)
        .bind(added)
        .bind(edge.size() as i64)
        .bind(self.edges.writer)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The right edge of a trust's log, read from the store.
async fn read_edge(conn: &mut SqliteConnection, trust: &str) -> Result<tree::Edge, sqlx::Error> {
    let size: i64 = sqlx::query_scalar("SELECT size FROM audit_logs WHERE trust = ?1")
        .bind(trust)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0);
    let size = u64::try_from(size).unwrap_or(0);
    let tiles: Vec<tree::TileId> = tree::Edge::tiles(size).into_iter().map(|t| t.0).collect();
    let read = read_tiles(conn, trust, &tiles).await?;
    tree::Edge::new(size, read).map_err(|tile| {
        sqlx::Error::Protocol(format!(
            "the evidence trail of trust {trust} lacks nodes of tile {}/{} below size {size}: \
             the store is damaged",
            tile.level, tile.index
        ))
    })
}

/// The stored nodes of `tiles`, each from its first: leaf hashes from a bundle's leaves
/// (level 0), stored hashes above. A tile comes back short where the store has fewer.
async fn read_tiles(
    conn: &mut SqliteConnection,
    trust: &str,
    tiles: &[tree::TileId],
) -> Result<HashMap<tree::TileId, Vec<tree::Hash>>, sqlx::Error> {
    let mut out = HashMap::with_capacity(tiles.len());
    let bundles: Vec<i64> = tiles
        .iter()
        .filter(|t| t.level == 0)
        .map(|t| t.index as i64)
        .collect();
    if !bundles.is_empty() {
        // json_each drives (CROSS JOIN keeps it the outer loop): one primary-key lookup per
        // wanted bundle, whatever the size of the log.
        let rows = sqlx::query(
            "SELECT b.n, b.leaves FROM json_each(?2) AS k CROSS JOIN audit_bundles AS b \
             WHERE b.trust = ?1 AND b.n = k.value",
        )
        .bind(trust)
        .bind(json_param(&bundles))
        .fetch_all(&mut *conn)
        .await?;
        out.extend(rows.iter().map(|row| {
            let tile = tree::TileId {
                level: 0,
                index: u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
            };
            let leaves: &str = row.get(1);
            let hashes = leaves
                .split('\n')
                .map(|leaf| tree::leaf_hash(leaf.as_bytes()))
                .collect();
            (tile, hashes)
        }));
    }
    let spans: Vec<(u32, u64, u64)> = tiles
        .iter()
        .filter(|t| t.level > 0)
        .map(|t| {
            let first = t.index * tree::TILE_WIDTH;
            (t.level, first, first + tree::TILE_WIDTH)
        })
        .collect();
    if !spans.is_empty() {
        let rows = sqlx::query(
            "SELECT n.level, n.idx, n.hash FROM json_each(?2) AS k CROSS JOIN audit_nodes AS n \
             WHERE n.trust = ?1 AND n.level = k.value ->> 0 \
               AND n.idx >= k.value ->> 1 AND n.idx < k.value ->> 2 \
             ORDER BY n.level, n.idx",
        )
        .bind(trust)
        .bind(json_param(&spans))
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let level = u32::try_from(row.get::<i64, _>(0)).unwrap_or(0);
            let idx = u64::try_from(row.get::<i64, _>(1)).unwrap_or(0);
            let Ok(hash) = <tree::Hash>::try_from(row.get::<&[u8], _>(2)) else {
                continue;
            };
            let tile = out
                .entry(tree::TileId {
                    level,
                    index: idx / tree::TILE_WIDTH,
                })
                .or_insert_with(Vec::new);
            // Only an unbroken run from the tile's first node counts.
            if tile.len() as u64 == idx % tree::TILE_WIDTH {
                tile.push(hash);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn event(i: u64) -> Event {
        let mut e = Event::new(EventType::Received, "2026-11-25T00:00:00Z", "celt");
        e.record_id = Some(format!("V-{i}"));
        e.school = Some("136401".into());
        e
    }

    /// A store written before the tiles (migration 0006) — one row per leaf, every interior
    /// node — reads the same tree after migrating, and appends continue it.
    #[tokio::test]
    async fn a_store_from_before_the_tiles_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        MIGRATOR.run_to(5, &pool).await.unwrap();
        let old: Vec<String> = (0..600).map(|i| event(i).leaf()).collect();
        let hashes: Vec<tree::Hash> = old.iter().map(|l| tree::leaf_hash(l.as_bytes())).collect();
        for (idx, leaf) in old.iter().enumerate() {
            sqlx::query("INSERT INTO audit_leaves (trust, idx, leaf) VALUES ('celt', ?1, ?2)")
                .bind(idx as i64)
                .bind(leaf)
                .execute(&pool)
                .await
                .unwrap();
        }
        let levels = tree::levels_above(hashes.clone(), 64);
        for (level, nodes) in levels.iter().enumerate().skip(1) {
            for (idx, hash) in nodes.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO audit_nodes (trust, level, idx, hash) VALUES ('celt', ?1, ?2, ?3)",
                )
                .bind(level as i64)
                .bind(idx as i64)
                .bind(hash.to_vec())
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        sqlx::query("INSERT INTO audit_logs (trust, size) VALUES ('celt', 600)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let mut want = tree::MemoryTree::default();
        want.append(&hashes).unwrap();
        let ids = tree::nodes_for(&tree::inclusion_ranges(300, 600));
        let got = store.audit_nodes("celt", &ids).await.unwrap();
        assert_eq!(got, want.nodes(&ids));
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_nodes")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 2, "only level-8 nodes are kept");

        // Appends go on from the migrated edge, in memory and after reopening.
        let more: Vec<Event> = (600..900).map(event).collect();
        store.audit_append(&more[..100]).await.unwrap();
        store.audit_append(&more[100..]).await.unwrap();
        let reopened = SqliteStore::open(&path).await.unwrap();
        reopened.audit_append(&[event(900)]).await.unwrap();
        let added: Vec<tree::Hash> = (600..=900)
            .map(|i| tree::leaf_hash(event(i).leaf().as_bytes()))
            .collect();
        want.append(&added).unwrap();
        let root = tree::root_nodes(901);
        let got = reopened.audit_nodes("celt", &root).await.unwrap();
        assert_eq!(got, want.nodes(&root));
        let entries = reopened
            .audit_entries("celt", "136401", "2026", "2027", 901)
            .await
            .unwrap();
        assert_eq!(entries.len(), 901);
        assert_eq!(entries[599].1, old[599]);
    }

    /// A rolled-back append leaves the next one to read the edge back rather than trust the
    /// edge it kept in memory.
    #[tokio::test]
    async fn an_append_rolled_back_is_not_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        store.audit_append(&[event(0), event(1)]).await.unwrap();
        let mut tx = store.pool.begin().await.unwrap();
        store.append_events(&mut tx, &[event(99)]).await.unwrap();
        tx.rollback().await.unwrap();
        store.audit_append(&[event(2)]).await.unwrap();
        let mut want = tree::MemoryTree::default();
        let hashes: Vec<tree::Hash> = (0..3)
            .map(|i| tree::leaf_hash(event(i).leaf().as_bytes()))
            .collect();
        want.append(&hashes).unwrap();
        let root = tree::root_nodes(3);
        assert_eq!(
            store.audit_nodes("celt", &root).await.unwrap(),
            want.nodes(&root)
        );
        assert_eq!(store.audit_sizes().await.unwrap(), vec![("celt".into(), 3)]);
    }
}
