//! API keys in PostgreSQL: the `api_keys` table.

use sqlx::postgres::PgRow;

use super::{Col, PgStore, Undecoded};
use crate::store::StoreError;
use crate::store::keys::{KeyStore, Scope, StoredKey};

const COLUMNS: &str =
    "id, name, trust, schools, scope, secret_hash, created_at, last_used_at, revoked_at";

fn key_of(r: &PgRow) -> Result<StoredKey, Undecoded> {
    let undecoded = |column: &str, reason: String| Undecoded {
        column: column.into(),
        reason,
    };
    let schools: String = r.col(3)?;
    let scope: String = r.col(4)?;
    Ok(StoredKey {
        id: r.col(0)?,
        name: r.col(1)?,
        trust: r.col(2)?,
        schools: serde_json::from_str(&schools).map_err(|e| undecoded("schools", e.to_string()))?,
        scope: Scope::parse(&scope).ok_or_else(|| undecoded("scope", format!("`{scope}`")))?,
        secret_hash: r.col(5)?,
        created_at: r.col(6)?,
        last_used_at: r.col(7)?,
        revoked_at: r.col(8)?,
    })
}

impl KeyStore for PgStore {
    async fn key_insert(&self, k: &StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, trust, schools, scope, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.trust)
        .bind(serde_json::to_string(&k.schools).unwrap_or_else(|_| "[]".into()))
        .bind(k.scope.as_str())
        .bind(&k.secret_hash)
        .bind(&k.created_at)
        .execute(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(())
    }

    async fn key_list(&self) -> Result<Vec<StoredKey>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at DESC, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| key_of(r).map_err(self.undecoded()))
            .collect()
    }

    async fn key_get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db_err())?;
        row.as_ref()
            .map(|r| key_of(r).map_err(self.undecoded()))
            .transpose()
    }

    async fn key_revoke(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(self.db_err())?;
        Ok(done.rows_affected() == 1)
    }

    async fn key_used(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(())
    }
}
