//! The PostgreSQL store: several `doorstep` instances share one database. SQL only, as the
//! SQLite store: what a revision means, which deliveries go and which trail events are made
//! is decided in `store::rules` and `audit::events`.
//!
//! What several instances need, and where it is:
//! - deliveries are leased (`deliveries.rs`): claimed with `FOR UPDATE SKIP LOCKED`, a
//!   lease expiry on the database's clock (renewed by [`PgStore`]'s heartbeat while this
//!   process lives) and a fencing token one higher per claim; an outcome is written only
//!   while the token matches;
//! - each trust's log is appended under a row lock on its head (`audit.rs`), so positions
//!   follow commit order and a rolled-back transaction leaves no gap;
//! - new deliveries are announced with `NOTIFY` (`wake.rs`); polling is the fallback.
//!
//! `mod.rs` connects, checks the schema version and migrates (only when asked); the other
//! files mirror `store/sqlite/`.
//!
//! Owns: the PostgreSQL schema and its migrations. May not touch: parsing, policy,
//! delivery decisions.

mod audit;
mod deliveries;
mod finish;
mod keys;
mod lookups;
mod records;
mod retention;
pub mod wake;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ColumnIndex, PgPool, Row};

use super::StoreError;
use super::edges::Edges;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Whether opening may bring the schema up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// `doorstep migrate`, `serve --migrate`: apply what is missing (under the migrator's
    /// advisory lock: two instances migrating at once take turns).
    Apply,
    /// Every other verb: refuse a schema older or newer than this build's.
    Require,
}

/// The schema version of this build: its highest migration (both back ends share it).
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// The URL without its password, to name the store in errors.
    location: String,
    pub(super) edges: Arc<Edges>,
    /// This process, as a lease's holder: `host/pid/random`.
    pub(super) instance: Arc<str>,
    pub(super) lease: Duration,
}

/// A URL fit for a log or an error: any password replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres".into();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = tail
        .split('&')
        .map(|p| {
            if p.trim_start_matches('?').starts_with("password=") {
                let q = if p.starts_with('?') { "?" } else { "" };
                format!("{q}password=…")
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{authority}{tail}")
}

impl PgStore {
    /// Connects to the store at `url`, checks (or, with [`Migrate::Apply`], brings up to
    /// date) its schema, and starts renewing this process's leases every third of `lease`.
    pub async fn open(url: &str, lease: Duration, migrate: Migrate) -> Result<Self, StoreError> {
        let location = redact(url);
        let db_err = |source| StoreError::Database {
            location: location.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(db_err)?
            .application_name("doorstep");
        // One connection first: a wrong address or a refused login fails at once, not
        // after the pool's wait for a connection.
        sqlx::Connection::close(
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
                .await
                .map_err(db_err)?,
        )
        .await
        .map_err(db_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let applied = applied_versions(&pool).await.map_err(db_err)?;
        let version = applied.iter().copied().max();
        let ours = schema_version();
        match migrate {
            Migrate::Apply => {
                MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|source| StoreError::Migrate {
                        location: location.clone(),
                        source,
                    })?;
            }
            Migrate::Require => {
                let missing = MIGRATOR.iter().any(|m| !applied.contains(&m.version));
                if version.is_some_and(|v| v > ours) || missing {
                    return Err(StoreError::Schema {
                        location,
                        found: version,
                        known: ours,
                    });
                }
            }
        }
        // The hot tables are tuned for autovacuum; without it their dead rows only grow.
        let autovacuum: Option<String> =
            sqlx::query_scalar("SELECT current_setting('autovacuum', true)")
                .fetch_one(&pool)
                .await
                .ok()
                .flatten();
        if autovacuum.as_deref() == Some("off") {
            tracing::warn!(
                "PostgreSQL runs without autovacuum: dead rows of deliveries and records grow \
                 until a VACUUM; turn autovacuum on or schedule `doorstep purge --vacuum`"
            );
        }
        let store = Self {
            pool,
            location,
            edges: Arc::new(Edges::new()),
            instance: instance_name().into(),
            lease,
        };
        store.renew_leases_while_open();
        Ok(store)
    }

    /// The schema version the database is at (`None`: no doorstep schema there yet).
    pub async fn version(&self) -> Result<Option<i64>, StoreError> {
        Ok(applied_versions(&self.pool)
            .await
            .map_err(self.db_err())?
            .into_iter()
            .max())
    }

    /// This process's name as a lease holder.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the store answers and has every migration this build knows (`readyz`).
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied = applied_versions(&self.pool).await.map_err(self.db_err())?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `VACUUM (ANALYZE)` of the tables a purge empties, giving their space back to the
    /// tables (autovacuum does this on its own; this is for right after a large purge).
    pub async fn vacuum(&self) -> Result<(), StoreError> {
        for table in ["records", "deliveries", "lookups"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
                .execute(&self.pool)
                .await
                .map_err(self.db_err())?;
        }
        Ok(())
    }

    /// Dead row versions waiting for vacuum, by table (`/metrics`: bloat watched).
    pub async fn dead_tuples(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() ORDER BY relname",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(rows
            .into_iter()
            .map(|(t, n)| (t, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Renews the leases this process holds, every third of a lease, until the pool closes:
    /// a delivery that waits in this process's queue or takes long to send is not taken by
    /// another instance while this one lives. A process that dies stops renewing; its
    /// leases run out and another instance takes the work.
    fn renew_leases_while_open(&self) {
        let (pool, instance, lease) = (self.pool.clone(), self.instance.clone(), self.lease);
        let every = (lease / 3).max(Duration::from_millis(200));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    return;
                }
                // Rows another transaction holds (this instance's outcome being written, a
                // release) are skipped, never waited on: a renewal stuck behind a lock would
                // let the other leases run out under a living instance.
                let renewed = sqlx::query(
                    "UPDATE deliveries SET lease_until = now() + make_interval(secs => $2) \
                     WHERE seq IN (SELECT seq FROM deliveries WHERE lease_owner = $1 \
                       AND state = 'in_flight' FOR UPDATE SKIP LOCKED)",
                )
                .bind(&*instance)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await;
                if let Err(e) = renewed {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "could not renew this instance's delivery leases");
                }
            }
        });
    }

    pub(super) fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            location: self.location.clone(),
            source,
        }
    }

    /// Names the store in a column that did not read.
    pub(super) fn undecoded(&self) -> impl Fn(Undecoded) -> StoreError + '_ {
        move |u| StoreError::Decode {
            location: self.location.clone(),
            column: u.column,
            reason: u.reason,
        }
    }

    /// Takes the heads of the trusts' logs (in name order, so two writers never wait on
    /// each other crosswise), creating a head not yet there: every transaction that appends
    /// events holds them until it commits.
    pub(super) async fn lock_heads<'t>(
        &self,
        conn: &mut sqlx::PgConnection,
        trusts: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), StoreError> {
        let mut trusts: Vec<&str> = trusts.into_iter().collect();
        trusts.sort_unstable();
        trusts.dedup();
        if trusts.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit_logs (trust, size) SELECT t, 0 FROM unnest($1::text[]) AS t \
             ON CONFLICT (trust) DO NOTHING",
        )
        .bind(&trusts)
        .execute(&mut *conn)
        .await
        .map_err(self.db_err())?;
        sqlx::query("SELECT trust FROM audit_logs WHERE trust = ANY($1) ORDER BY trust FOR UPDATE")
            .bind(&trusts)
            .fetch_all(&mut *conn)
            .await
            .map_err(self.db_err())?;
        Ok(())
    }
}

/// The schema version of the database at `url` (`None`: no doorstep schema yet), read on
/// one connection of its own; nothing is changed.
pub async fn version_at(url: &str) -> Result<Option<i64>, StoreError> {
    let location = redact(url);
    let db_err = |source| StoreError::Database {
        location: location.clone(),
        source,
    };
    let options = PgConnectOptions::from_str(url).map_err(db_err)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(db_err)?;
    let versions = applied_versions(&pool).await.map_err(db_err);
    pool.close().await;
    Ok(versions?.into_iter().max())
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
}

/// `host/pid/random`: unique among the instances sharing a database, readable in `status`.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let mut id = [0u8; 3];
    let _ = getrandom::fill(&mut id);
    format!(
        "{host}/{}/{:02x}{:02x}{:02x}",
        std::process::id(),
        id[0],
        id[1],
        id[2]
    )
}

/// Whether a failed statement's transaction was rolled back by the database for its own
/// reasons and may simply run again: a deadlock (40P01) or a serialisation failure (40001).
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// Rows per multi-row INSERT: well under PostgreSQL's 65535 parameters.
pub(super) const INSERT_ROWS: usize = 1000;

pub(super) use super::sqlite::now;

/// A column that did not read as the type asked for.
#[derive(Debug)]
pub(super) struct Undecoded {
    pub column: String,
    pub reason: String,
}

/// Reads a column without panicking: a value of the wrong type is an error naming the column.
pub(super) trait Col {
    fn col<'r, T, I>(&'r self, index: I) -> Result<T, Undecoded>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        I: ColumnIndex<PgRow> + Copy + std::fmt::Debug;
}

impl Col for PgRow {
    fn col<'r, T, I>(&'r self, index: I) -> Result<T, Undecoded>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        I: ColumnIndex<PgRow> + Copy + std::fmt::Debug,
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

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/doorstep?sslmode=require"),
            "postgres://app@db.example:5432/doorstep?sslmode=require"
        );
        assert_eq!(
            redact("postgres://db/x?user=a&password=s3cret"),
            "postgres://db/x?user=a&password=…"
        );
        assert_eq!(
            redact("postgres://root@127.0.0.1/test"),
            "postgres://root@127.0.0.1/test"
        );
    }
}
