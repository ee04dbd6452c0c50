//! The look-up cache (connectors' `[lookups]`): what a target's id for a record's value
//! was found to be, kept until it expires, so a run (and the next) asks each target once
//! per pupil or code, not once per record.
//!
//! Owns: the `lookups` table. May not touch: HTTP (the delivery engine reads the target).

use std::future::Future;

use chrono::{SecondsFormat, Utc};
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// Which cache: one system's look-up for one school of a trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupScope {
    pub trust: String,
    /// The system: its connector and URL (destinations on the same system share answers).
    pub destination: String,
    pub school: String,
    pub name: String,
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The target's id.
    Found(String),
    /// The target has no such entry.
    NotFound,
}

/// The key of the row marking a listing read whole.
pub const WHOLE_LISTING: &str = "";

pub trait LookupStore: Store {
    /// The unexpired answer for `key`, if any.
    fn lookup_get(
        &self,
        scope: &LookupScope,
        key: &str,
    ) -> impl Future<Output = Result<Option<Cached>, StoreError>> + Send;

    /// Keeps answers until `expires_at` (RFC 3339), replacing older ones.
    fn lookup_put(
        &self,
        scope: &LookupScope,
        entries: &[(String, Cached)],
        expires_at: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl LookupStore for SqliteStore {
    async fn lookup_get(
        &self,
        scope: &LookupScope,
        key: &str,
    ) -> Result<Option<Cached>, StoreError> {
        let row = sqlx::query(
            "SELECT value FROM lookups WHERE trust = ?1 AND destination = ?2 AND school_urn = ?3 \
             AND name = ?4 AND key = ?5 AND expires_at > ?6",
        )
        .bind(&scope.trust)
        .bind(&scope.destination)
        .bind(&scope.school)
        .bind(&scope.name)
        .bind(key)
        .bind(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(row.map(|r| match r.get::<Option<String>, _>(0) {
            Some(v) => Cached::Found(v),
            None => Cached::NotFound,
        }))
    }

    async fn lookup_put(
        &self,
        scope: &LookupScope,
        entries: &[(String, Cached)],
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.db_err())?;
        for chunk in entries.chunks(100) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT OR REPLACE INTO lookups (trust, destination, school_urn, name, key, value, expires_at) ",
            );
            q.push_values(chunk, |mut b, (key, cached)| {
                b.push_bind(&scope.trust)
                    .push_bind(&scope.destination)
                    .push_bind(&scope.school)
                    .push_bind(&scope.name)
                    .push_bind(key)
                    .push_bind(match cached {
                        Cached::Found(v) => Some(v.as_str()),
                        Cached::NotFound => None,
                    })
                    .push_bind(expires_at);
            });
            q.build().execute(&mut *tx).await.map_err(self.db_err())?;
        }
        tx.commit().await.map_err(self.db_err())
    }
}
