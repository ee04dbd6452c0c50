//! The look-up cache (connectors' `[lookups]`): what a target's id for a record's value
//! was found to be, kept until it expires, so a run (and the next) asks each target once
//! per pupil or code, not once per record.
//!
//! Owns: the `lookups` table (SQL in `sqlite/lookups.rs`). May not touch: HTTP (the delivery
//! engine reads the target).

use std::future::Future;

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

    /// Deletes every answer that expired before `now` (RFC 3339; an expired answer is never
    /// used, so nothing is lost): a value looked up is often a pupil's UPN, kept no longer
    /// than it is useful (retention). Returns how many.
    fn lookup_forget_expired(
        &self,
        now: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Keeps answers until `expires_at` (RFC 3339), replacing older ones.
    fn lookup_put(
        &self,
        scope: &LookupScope,
        entries: &[(String, Cached)],
        expires_at: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
