//! The SQLite store: one file, created readable by its owner only, WAL journal, full
//! fsync at commit, migrations embedded in the binary.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{IngestOutcome, IntakeBatch, RecordCount, RuleCount, StatusReport, Store, StoreError};
use crate::records::{Kind, Rule};
use crate::report::Conflict;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            .foreign_keys(true);
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

    fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            location: self.path.display().to_string(),
            source,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Store for SqliteStore {
    async fn ingest(&self, batch: &IntakeBatch) -> Result<Vec<IngestOutcome>, StoreError> {
        let err = self.db_err();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(&err)?;
        let mut outcomes = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            let rows = sqlx::query(
                "SELECT revision, content_hash, current FROM records \
                 WHERE trust = ?1 AND kind = ?2 AND id = ?3 AND (current = 1 OR revision = ?4)",
            )
            .bind(&r.trust)
            .bind(r.kind.as_str())
            .bind(&r.id)
            .bind(i64::from(r.revision))
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
            let hash = r.hash.to_hex();
            let mut latest: Option<u32> = None;
            let mut same_revision: Option<bool> = None;
            for row in &rows {
                let revision: i64 = row.get(0);
                let revision = u32::try_from(revision).unwrap_or(u32::MAX);
                if row.get::<i64, _>(2) == 1 {
                    latest = Some(revision);
                }
                if revision == r.revision {
                    same_revision = Some(row.get::<String, _>(1) == hash);
                }
            }
            let outcome = match (latest, same_revision) {
                (_, Some(true)) => IngestOutcome::Unchanged,
                (Some(l), _) if r.revision <= l => {
                    let message = if same_revision.is_some() {
                        format!(
                            "revision {} is already stored with different content; send a higher revision to change it",
                            r.revision
                        )
                    } else {
                        format!(
                            "revision {} is lower than the stored revision {l}; send a higher revision to change it",
                            r.revision
                        )
                    };
                    IngestOutcome::Conflict(Conflict {
                        file: r.file.clone(),
                        line: r.line,
                        record_id: r.id.clone(),
                        revision: r.revision,
                        rule: Rule::RevisionConflict,
                        message,
                    })
                }
                (latest, _) => {
                    if latest.is_some() {
                        sqlx::query(
                            "UPDATE records SET current = 0 \
                             WHERE trust = ?1 AND kind = ?2 AND id = ?3 AND current = 1",
                        )
                        .bind(&r.trust)
                        .bind(r.kind.as_str())
                        .bind(&r.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(&err)?;
                    }
                    let source = match r.line {
                        Some(l) => format!("{}:{l}", r.file),
                        None => r.file.clone(),
                    };
                    sqlx::query(
                        "INSERT INTO records (trust, kind, id, revision, school_urn, visit_id, urgency, \
                         content_hash, content, source, received_at, current) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)",
                    )
                    .bind(&r.trust)
                    .bind(r.kind.as_str())
                    .bind(&r.id)
                    .bind(i64::from(r.revision))
                    .bind(&r.school_urn)
                    .bind(r.visit_id.as_deref())
                    .bind(r.urgency)
                    .bind(&hash)
                    .bind(&r.canonical)
                    .bind(&source)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    IngestOutcome::Stored
                }
            };
            if let IngestOutcome::Conflict(c) = &outcome {
                sqlx::query(
                    "INSERT INTO intake_issues (at, issue, file, line, record_id, revision, pointer, rule, message) \
                     VALUES (?1, 'conflict', ?2, ?3, ?4, ?5, NULL, ?6, ?7)",
                )
                .bind(&now)
                .bind(&c.file)
                .bind(c.line.map(|l| l as i64))
                .bind(&c.record_id)
                .bind(i64::from(c.revision))
                .bind(c.rule.as_str())
                .bind(&c.message)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            }
            outcomes.push(outcome);
        }
        for rej in &batch.rejections {
            sqlx::query(
                "INSERT INTO intake_issues (at, issue, file, line, record_id, revision, pointer, rule, message) \
                 VALUES (?1, 'rejection', ?2, ?3, ?4, NULL, ?5, ?6, ?7)",
            )
            .bind(&now)
            .bind(&rej.file)
            .bind(rej.line.map(|l| l as i64))
            .bind(rej.record_id.as_deref())
            .bind(rej.path.as_deref())
            .bind(rej.rule.as_str())
            .bind(&rej.message)
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
                state: if row.get::<i64, _>(3) == 1 { "current" } else { "superseded" }.into(),
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
        Ok(StatusReport { records, issues })
    }

    async fn revisions(&self, trust: &str, kind: Kind, id: &str) -> Result<Vec<(u32, String)>, StoreError> {
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
