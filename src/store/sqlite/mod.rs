//! The SQLite store: one file, created readable by its owner only, WAL journal, full
//! fsync at commit, migrations embedded in the binary. SQL only: what a revision means,
//! which deliveries go and which trail events are made is decided in `store::rules` and
//! `audit::events`.
//!
//! `mod.rs` opens, migrates and closes; `records.rs` intake and status; `deliveries.rs`
//! the delivery half; `audit.rs` the evidence trail's log; `lookups.rs` the look-up cache.

mod audit;
mod deliveries;
mod keys;
pub mod lock;
mod lookups;
mod records;
mod retention;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Row, SqlitePool};

use super::StoreError;
use audit::Edges;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Whether every migration of this build has been applied to the store behind `pool`.
async fn migrations_current(pool: &sqlx::SqlitePool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await?;
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads, and single-statement writes.
    pub(super) pool: SqlitePool,
    /// The one connection write transactions run on: its page cache stays warm from one
    /// batch to the next (a connection's cache is dropped when another one writes).
    writer: SqlitePool,
    path: PathBuf,
    edges: Arc<Edges>,
    /// Opened read-only (an auditor's copy, a read-only file system): nothing is written.
    pub(super) read_only: bool,
    /// Taken by every write of this process, in the order asked: writers queue here, first
    /// come first served, rather than in SQLite's busy handler, which sleeps and lets a
    /// late comer in first (seconds of tail latency under load). Another process's writes
    /// still meet the busy timeout.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// Opens (creating if need be, mode 0600) and migrates the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let io_err = |what: &str, e: std::io::Error| StoreError::Io {
            location: location.clone(),
            reason: format!("{what}: {}", e.kind()),
        };
        if !writable(path) {
            return Err(StoreError::Io {
                location,
                reason: "read-only (the file or its folder cannot be written); status, deadletter list/show and audit export read it as it is".into(),
            });
        }
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
            // A record (~1.5 KiB stored) fills 4 KiB pages only two to a page; 8 KiB pages
            // take five. Only a new store takes it: an existing one keeps its page size.
            .page_size(8192)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Checkpoint the write-ahead log every 64 MiB rather than 4 MiB: fewer, larger
            // copies into the database during a bulk ingest.
            .pragma("wal_autocheckpoint", "16384")
            // Content a purge removes is overwritten in the pages it is written to anyway,
            // rather than left readable in free space (no extra I/O; `docs/privacy.md`).
            .pragma("secure_delete", "fast")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(|source| StoreError::Database {
                location: location.clone(),
                source,
            })?;
        // Two processes opening a store not yet created both migrate; SQLite serialises
        // them and the loser fails on a migration the winner applied. Running the migrator
        // again then finds it applied: migrations are safe to race.
        let mut tries = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        location: location.clone(),
                        source,
                    });
                }
            }
        }
        // SQLite's default page cache (2 MiB) each: 16 MiB for the writer was measured no
        // faster on a 100,000-record ingest, and costs its size in resident memory.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Database {
                location: location.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            writer,
            path: path.to_path_buf(),
            edges: Arc::new(Edges::new()),
            read_only: false,
            writing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Opens the store for a reading verb (`status`, `deadletter list/show`, `audit
    /// export`): as [`open`](Self::open) when it can be written, else read-only — a file or
    /// folder without write permission, or on a read-only file system (an auditor's copy).
    /// A read-only store must already be at this version's schema.
    pub async fn open_for_reading(path: &Path) -> Result<Self, StoreError> {
        if writable(path) {
            return Self::open(path).await;
        }
        Self::open_read_only(path).await
    }

    /// Opens the file read-only, whatever its schema.
    async fn open_read_only_unchecked(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let db_err = |source| StoreError::Database {
            location: location.clone(),
            source,
        };
        if !path.is_file() {
            return Err(StoreError::Io {
                location,
                reason: "no store here (a reading verb does not create one)".into(),
            });
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_err)?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let connect = |options: SqliteConnectOptions| {
            SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options)
        };
        // A write-ahead-log store needs its shared-memory file; where that cannot be made (a
        // read-only folder), the file is read as it stands.
        let pool = match connect(options.clone()).await {
            Ok(pool) if sqlx::query("SELECT 1").execute(&pool).await.is_ok() => pool,
            _ => connect(options.immutable(true)).await.map_err(db_err)?,
        };
        Ok(Self {
            writer: pool.clone(),
            pool,
            path: path.to_path_buf(),
            edges: Arc::new(Edges::new()),
            read_only: true,
            writing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_read_only_unchecked(path).await?;
        let location = path.display().to_string();
        if !migrations_current(&store.pool)
            .await
            .map_err(|source| StoreError::Database {
                location: location.clone(),
                source,
            })?
        {
            return Err(StoreError::Io {
                location,
                reason: "read-only, and made by an earlier doorstep: open it once where it can be written to bring it up to date".into(),
            });
        }
        tracing::info!("store opened read-only");
        Ok(store)
    }

    /// The schema version of the store at `path` (`None`: no store there yet), read
    /// without migrating it.
    pub async fn version_at(path: &Path) -> Result<Option<i64>, StoreError> {
        if !path.is_file() {
            return Ok(None);
        }
        let store = Self::open_read_only_unchecked(path).await?;
        let version: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&store.pool)
                .await;
        store.close().await;
        Ok(version.unwrap_or(None))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction (`BEGIN IMMEDIATE`) on the writer connection. Take
    /// [`write_turn`](Self::write_turn) first.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.db_err())
    }

    /// This process's turn to write; hold it until the write commits.
    pub(super) async fn write_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writing.lock().await
    }

    /// Whether the store answers and has every migration this build knows (`readyz`).
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        migrations_current(&self.pool).await.map_err(self.db_err())
    }

    pub(super) fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            location: self.path.display().to_string(),
            source,
        }
    }

    /// Names the store in a column that did not read.
    pub(super) fn undecoded(&self) -> impl Fn(Undecoded) -> StoreError + '_ {
        move |u| StoreError::Decode {
            location: self.path.display().to_string(),
            column: u.column,
            reason: u.reason,
        }
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Rewrites the file without its free pages (`VACUUM`), then truncates the write-ahead
    /// log: after a purge, the space comes back and no emptied content is left in free
    /// pages. Takes the write lock for as long as it runs.
    pub async fn vacuum(&self) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("VACUUM")
            .execute(&self.pool)
            .await
            .map_err(self.db_err())?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(())
    }
}
/// Whether a store (and its folder, where SQLite keeps its journal files) may be written,
/// by permission bits and by trying: a missing store is created, so counts as writable.
fn writable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return true;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_writable = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o222 != 0);
    !meta.permissions().readonly()
        && dir_writable
        && std::fs::OpenOptions::new().append(true).open(path).is_ok()
}

/// Rows per INSERT statement: 12 parameters each, well under SQLite's 32766.
pub(super) const INSERT_ROWS: usize = 500;

/// Now, as every time is stored: RFC 3339 UTC with microseconds.
pub(super) fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn json_param<T: serde::Serialize>(rows: &T) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

/// A column that did not read as the type asked for.
#[derive(Debug)]
pub(super) struct Undecoded {
    pub column: String,
    pub reason: String,
}

/// Reads a column without panicking: a value of the wrong type (or a missing column) is an
/// error naming the column.
pub(super) trait Col {
    fn col<'r, T, I>(&'r self, index: I) -> Result<T, Undecoded>
    where
        T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
        I: ColumnIndex<SqliteRow> + Copy + std::fmt::Debug;
}

impl Col for SqliteRow {
    fn col<'r, T, I>(&'r self, index: I) -> Result<T, Undecoded>
    where
        T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
        I: ColumnIndex<SqliteRow> + Copy + std::fmt::Debug,
    {
        self.try_get(index).map_err(|e| {
            let column = match index.index(self) {
                Ok(i) => sqlx::Column::name(&self.columns()[i]).to_owned(),
                Err(_) => format!("{index:?}"),
            };
            let reason = match e {
                sqlx::Error::ColumnDecode { source, .. } => source.to_string(),
                e => e.to_string(),
            };
            Undecoded { column, reason }
        })
    }
}
