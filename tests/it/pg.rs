//! PostgreSQL for the tests: the server at `DOORSTEP_TEST_POSTGRES` (default
//! `postgres://root@127.0.0.1:5432/test`, trust auth, on every development and CI machine).
//! Each test works in schemas of its own, made here and dropped when the [`Schemas`] goes —
//! also when the test fails. A server that does not answer fails the test loudly: nothing
//! is skipped.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// The server the tests use.
pub fn server_url() -> String {
    std::env::var("DOORSTEP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Schemas made for one test, dropped (with everything in them) when this is dropped.
pub struct Schemas {
    prefix: String,
    made: Mutex<Vec<String>>,
}

impl Schemas {
    pub fn new(test: &str) -> Schemas {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Schemas {
            prefix: format!("dt_{test}_{}_{nanos:x}", std::process::id()),
            made: Mutex::new(Vec::new()),
        }
    }

    /// The URL of a store in schema `<prefix>_<name>`, made if need be.
    pub async fn url(&self, name: &str) -> String {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let schema = format!("{}_{clean}", self.prefix);
        let mut conn = sqlx::PgConnection::connect(&server_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} does not answer ({e}): the tests need it (never skipped)",
                    server_url()
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        let mut made = self.made.lock().unwrap();
        if !made.contains(&schema) {
            made.push(schema.clone());
        }
        with_schema(&server_url(), &schema)
    }
}

/// `url` with its connections' `search_path` set to `schema`.
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        if made.is_empty() {
            return;
        }
        // Dropped from a thread of its own: this may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = sqlx::PgConnection::connect(&server_url()).await else {
                    return;
                };
                for schema in made {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
                let _ = conn.close().await;
            });
        })
        .join();
    }
}
