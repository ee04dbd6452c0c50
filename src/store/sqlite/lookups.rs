//! The look-up cache in SQLite: the `lookups` table.

use super::{Col, SqliteStore, now};
use crate::store::StoreError;
use crate::store::lookups::{Cached, LookupScope, LookupStore};

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
        .bind(now())
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db_err())?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(
            match row.col::<Option<String>, _>(0).map_err(self.undecoded())? {
                Some(v) => Cached::Found(v),
                None => Cached::NotFound,
            },
        ))
    }

    async fn lookup_forget_expired(&self, now: &str) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM lookups WHERE expires_at <= ?1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(done.rows_affected())
    }

    async fn lookup_put(
        &self,
        scope: &LookupScope,
        entries: &[(String, Cached)],
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
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
