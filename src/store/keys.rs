//! API keys as the store keeps them: a public id, a hash of the secret, the trust and
//! schools the key reaches, its scope, and when it was made, last used and revoked.
//!
//! Owns: the `api_keys` table (SQL in `sqlite/keys.rs`). May not touch: making or checking
//! keys (`crate::keys`).

use std::future::Future;

use super::{Store, StoreError};

/// What a key may do (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Post records and read their state.
    Write,
    /// Read records' state only.
    ReadOnly,
    /// Read, and export records.
    Export,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::ReadOnly => "read-only",
            Scope::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        [Scope::Write, Scope::ReadOnly, Scope::Export]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A key as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredKey {
    pub id: String,
    pub name: Option<String>,
    pub trust: String,
    pub schools: Vec<String>,
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

pub trait KeyStore: Store {
    fn key_insert(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every key, newest first.
    fn key_list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send;

    fn key_get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send;

    /// Revokes a key not yet revoked; whether it did.
    fn key_revoke(
        &self,
        id: &str,
        at: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Notes that a key was used.
    fn key_used(&self, id: &str, at: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}
