//! The store a deployment names: SQLite or PostgreSQL, behind one type, so that the CLI,
//! `sync` and `serve` are written once. Every method hands over to the back end; nothing
//! here decides anything.
//!
//! Owns: choosing the back end from the config. May not touch: SQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::deliveries::{
    AttemptExport, Claimed, DeliveryCount, DeliveryDetail, DeliveryRow, FinishTrail, Finished,
    LeaseCount, NewDelivery, QueueStat, RecordState, ReplayTrail, Unrouted,
};
use super::keys::StoredKey;
use super::lookups::{Cached, LookupScope};
use super::{
    CurrentRevision, DeliveryState, DeliveryStore, IngestOutcome, IntakeBatch, IntakeTrail,
    KeyStore, LookupStore, PgStore, PurgePage, PurgeTrail, SqliteStore, StatusReport, Store,
    StoreError, StoredException, StoredRevision,
};
use crate::records::Kind;
use crate::trail::Event;
use crate::trail::tree::{Hash, NodeId};

/// The deployment's store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl AnyStore {
    /// Which back end, for messages: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }

    /// Where the store is (a file, or the URL without its password).
    pub fn location(&self) -> String {
        match self {
            AnyStore::Sqlite(s) => s.path().display().to_string(),
            AnyStore::Postgres(s) => s.location().to_owned(),
        }
    }

    pub async fn close(&self) {
        each!(self, s => s.close().await)
    }

    /// Gives space back after a purge (`VACUUM`).
    pub async fn vacuum(&self) -> Result<(), StoreError> {
        each!(self, s => s.vacuum().await)
    }

    /// Whether the store answers and has every migration this build knows.
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        each!(self, s => s.migrations_current().await)
    }

    /// Wakes `wake`'s waiters when another instance makes work due (PostgreSQL's
    /// `NOTIFY`); one SQLite writer has no one else to hear from.
    pub fn listen_for_work(&self, wake: Arc<Notify>) {
        if let AnyStore::Postgres(s) = self {
            s.listen_for_work(wake);
        }
    }

    /// Dead row versions by table, where the database keeps such a count (PostgreSQL).
    pub async fn dead_tuples(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            AnyStore::Sqlite(_) => Ok(Vec::new()),
            AnyStore::Postgres(s) => s.dead_tuples().await,
        }
    }
}

impl Store for AnyStore {
    async fn ingest_with_trail(
        &self,
        batch: &IntakeBatch,
        trail: IntakeTrail<'_>,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        each!(self, s => s.ingest_with_trail(batch, trail).await)
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        each!(self, s => s.status().await)
    }

    async fn exceptions_of(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Vec<StoredException>, StoreError> {
        each!(self, s => s.exceptions_of(trust, kind, id).await)
    }

    async fn audit_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        each!(self, s => s.audit_sizes().await)
    }

    async fn audit_nodes(
        &self,
        trust: &str,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, Hash>, StoreError> {
        each!(self, s => s.audit_nodes(trust, ids).await)
    }

    async fn audit_leaves(
        &self,
        trust: &str,
        school: Option<&str>,
        start: u64,
        size: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        each!(self, s => s.audit_leaves(trust, school, start, size, limit).await)
    }

    async fn audit_append(&self, events: &[Event]) -> Result<BTreeMap<String, u64>, StoreError> {
        each!(self, s => s.audit_append(events).await)
    }

    async fn audit_save_checkpoint(
        &self,
        trust: &str,
        size: u64,
        note: &str,
    ) -> Result<(), StoreError> {
        each!(self, s => s.audit_save_checkpoint(trust, size, note).await)
    }

    async fn revisions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<StoredRevision>, StoreError> {
        each!(self, s => s.revisions_by_key(trust, keys).await)
    }

    async fn exceptions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<(String, String, StoredException)>, StoreError> {
        each!(self, s => s.exceptions_by_key(trust, keys).await)
    }

    async fn purge_with_trail(
        &self,
        trust: &str,
        cutoff: &str,
        after: i64,
        limit: usize,
        trail: PurgeTrail<'_>,
    ) -> Result<PurgePage, StoreError> {
        each!(self, s => s.purge_with_trail(trust, cutoff, after, limit, trail).await)
    }

    async fn current_revisions(
        &self,
        trust: &str,
        school: &str,
        kind: Kind,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CurrentRevision>, StoreError> {
        each!(self, s => s.current_revisions(trust, school, kind, after, limit).await)
    }

    async fn revisions(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        each!(self, s => s.revisions(trust, kind, id).await)
    }
}

impl LookupStore for AnyStore {
    async fn lookup_get(
        &self,
        scope: &LookupScope,
        key: &str,
    ) -> Result<Option<Cached>, StoreError> {
        each!(self, s => s.lookup_get(scope, key).await)
    }

    async fn lookup_forget_expired(&self, now: &str) -> Result<u64, StoreError> {
        each!(self, s => s.lookup_forget_expired(now).await)
    }

    async fn lookup_put(
        &self,
        scope: &LookupScope,
        entries: &[(String, Cached)],
        expires_at: &str,
    ) -> Result<(), StoreError> {
        each!(self, s => s.lookup_put(scope, entries, expires_at).await)
    }
}

impl DeliveryStore for AnyStore {
    fn is_read_only(&self) -> bool {
        each!(self, s => s.is_read_only())
    }

    async fn attempts_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> Result<Vec<AttemptExport>, StoreError> {
        each!(self, s => s.attempts_by_key(trust, keys).await)
    }

    async fn unrouted(&self, limit: usize) -> Result<Vec<Unrouted>, StoreError> {
        each!(self, s => s.unrouted(limit).await)
    }

    async fn add_deliveries(
        &self,
        routed: &[(String, Kind, String, u32)],
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        each!(self, s => s.add_deliveries(routed, deliveries).await)
    }

    async fn release_in_flight(&self) -> Result<u64, StoreError> {
        each!(self, s => s.release_in_flight().await)
    }

    async fn claim(
        &self,
        trust: &str,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        each!(self, s => s.claim(trust, destination, limit).await)
    }

    async fn finish_with_trail(
        &self,
        done: &[Finished],
        trail: FinishTrail<'_>,
    ) -> Result<Vec<usize>, StoreError> {
        each!(self, s => s.finish_with_trail(done, trail).await)
    }

    async fn leases(&self) -> Result<Vec<LeaseCount>, StoreError> {
        each!(self, s => s.leases().await)
    }

    async fn next_due(&self, trust: &str, destination: &str) -> Result<Option<String>, StoreError> {
        each!(self, s => s.next_due(trust, destination).await)
    }

    async fn delivery_counts(&self) -> Result<Vec<DeliveryCount>, StoreError> {
        each!(self, s => s.delivery_counts().await)
    }

    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<Vec<QueueStat>, StoreError> {
        each!(self, s => s.queue_stats(now).await)
    }

    async fn deliveries_in(
        &self,
        state: DeliveryState,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        each!(self, s => s.deliveries_in(state, limit).await)
    }

    async fn record_state(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Option<RecordState>, StoreError> {
        each!(self, s => s.record_state(trust, kind, id).await)
    }

    async fn delivery(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        each!(self, s => s.delivery(id).await)
    }

    async fn replay_with_trail(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
        trail: ReplayTrail<'_>,
    ) -> Result<Vec<i64>, StoreError> {
        each!(self, s => s.replay_with_trail(ids, destination, trail).await)
    }
}

impl KeyStore for AnyStore {
    async fn key_insert(&self, key: &StoredKey) -> Result<(), StoreError> {
        each!(self, s => s.key_insert(key).await)
    }

    async fn key_list(&self) -> Result<Vec<StoredKey>, StoreError> {
        each!(self, s => s.key_list().await)
    }

    async fn key_get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        each!(self, s => s.key_get(id).await)
    }

    async fn key_revoke(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        each!(self, s => s.key_revoke(id, at).await)
    }

    async fn key_used(&self, id: &str, at: &str) -> Result<(), StoreError> {
        each!(self, s => s.key_used(id, at).await)
    }
}
