//! The durable store (SPEC §4 intake): every revision of every record with its content
//! hash, and the rejections and conflicts met at intake. Behind the [`Store`] trait so that
//! SQLite (one instance, nothing to install) and PostgreSQL (several instances) sit side by
//! side; callers are generic over it.
//!
//! Layout: this module and [`deliveries`], [`lookups`] declare the interface as plain data;
//! [`rules`] holds the product rules every back end shares (revision decisions, conflicts,
//! delivery states, claim and replay rules); [`sqlite`] is SQL only. The evidence-trail
//! events are made in `audit::events` and handed to a back end, which appends them in the
//! transaction of what they record.
//!
//! Owns: the schema, migrations and durability: a batch is acknowledged only after its
//! transaction commits.
//! May not touch: parsing, policy, delivery decisions.

mod any;
pub mod deliveries;
mod edges;
pub mod issues;
pub mod keys;
pub mod lookups;
pub mod postgres;
pub mod rules;
mod sqlite;
pub mod time;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use serde::Serialize;

use crate::records::severity::Severity;
use crate::records::{ContentHash, Kind};
use crate::trail::Event;
use crate::trail::tree::{Hash, NodeId};

pub use any::AnyStore;
pub use deliveries::DeliveryStore;
pub use issues::{Conflict, Rejection};
pub use keys::KeyStore;
pub use lookups::LookupStore;
pub use postgres::PgStore;
pub use rules::DeliveryState;
pub use sqlite::SqliteStore;
pub use sqlite::lock::{LockError, WriterLock, lock_writer as sqlite_lock_writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {location}: {source}")]
    Database {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store {location}: migration failed: {source}")]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("store {location}: {reason}")]
    Io { location: String, reason: String },
    /// The database's schema is not the one this build knows (PostgreSQL: migrated only
    /// when asked, by `doorstep migrate` or `serve --migrate`).
    #[error("store {location}: {}", schema_mismatch(*found, *known))]
    Schema {
        location: String,
        found: Option<i64>,
        known: i64,
    },
    /// A stored value does not read as what it should be: a damaged or foreign store.
    #[error("store {location}: column {column} does not read: {reason}")]
    Decode {
        location: String,
        column: String,
        reason: String,
    },
}

fn schema_mismatch(found: Option<i64>, known: i64) -> String {
    match found {
        None => format!(
            "holds no doorstep schema yet; this doorstep's schema is version {known}: run `doorstep migrate` (or `doorstep serve --migrate`) once"
        ),
        Some(v) if v > known => format!(
            "its schema is at version {v}, newer than this doorstep's version {known}: run the doorstep that migrated it"
        ),
        Some(v) => format!(
            "its schema is at version {v}, older than this doorstep's version {known}: run `doorstep migrate` (or `doorstep serve --migrate`) once"
        ),
    }
}

/// A policy exception a revision raises, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedException {
    /// The rule's stable id.
    pub rule: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// A validated record ready to be written, with where it came from.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub kind: Kind,
    pub id: String,
    pub revision: u32,
    pub trust: String,
    pub school_urn: String,
    pub visit_id: Option<String>,
    pub urgency: Option<&'static str>,
    pub hash: ContentHash,
    /// SHA-256 of the record's non-personal projection (`records::personal`).
    pub projection: ContentHash,
    /// The canonical text, shared rather than copied when it is bound to the insert.
    pub canonical: std::sync::Arc<str>,
    /// The file (or `request`) and line the record was read from.
    pub file: String,
    pub line: Option<u64>,
    /// Policy exceptions this revision raises.
    pub exceptions: Vec<RaisedException>,
}

// `NewRecord::from_parsed` (from a parsed record and its policy exceptions) is in `pipeline`.

/// What the store did with one record of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Stored as a new revision (the first, or one superseding a lower one).
    Stored,
    /// The same revision with the same content was already stored.
    Unchanged,
    /// Kept out: this revision is not above the latest and differs from what is stored.
    Conflict(Conflict),
}

/// A batch written in one transaction.
#[derive(Debug, Default)]
pub struct IntakeBatch {
    pub records: Vec<NewRecord>,
    pub rejections: Vec<Rejection>,
}

/// An exception of an earlier revision closed by a revision a batch stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedException {
    pub trust: String,
    pub kind: String,
    pub id: String,
    pub school: String,
    /// The revision that closed it.
    pub closed_by_revision: u32,
    pub rule: String,
    pub state: rules::ExceptionState,
}

/// What happened to a batch, for its evidence-trail events (`audit::events::intake`).
#[derive(Debug, Clone, Copy)]
pub struct IntakeFacts<'a> {
    pub batch: &'a IntakeBatch,
    /// One per record of the batch, in order.
    pub outcomes: &'a [IngestOutcome],
    pub closed: &'a [ClosedException],
    /// When the batch was written (RFC 3339 UTC, as stored).
    pub at: &'a str,
}

/// Makes a batch's evidence-trail events from what happened to it.
pub type IntakeTrail<'a> = &'a (dyn Fn(&IntakeFacts<'_>) -> Vec<Event> + Sync);

/// One row of `status`: how many records of a kind a school has, by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordCount {
    pub trust: String,
    pub school: String,
    pub record_kind: String,
    /// `current` (the latest revision) or `superseded`.
    pub state: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCount {
    pub issue: String,
    pub rule: String,
    pub count: u64,
}

/// Open policy exceptions of one rule at one school.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionCount {
    pub trust: String,
    pub school: String,
    pub rule: String,
    pub severity: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub records: Vec<RecordCount>,
    pub issues: Vec<RuleCount>,
    /// Open exceptions (on current revisions), by trust, school and rule.
    pub exceptions: Vec<ExceptionCount>,
    /// Revisions whose content retention purged (counted in `records` too).
    pub purged: u64,
}

/// An exception as stored: on which revision, and whether it still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredException {
    pub revision: u32,
    pub rule: String,
    pub severity: String,
    pub message: String,
    /// `open`, `resolved` (a later revision no longer raises it) or `superseded` (a later
    /// revision raises it again).
    pub state: String,
    pub closed_by_revision: Option<u32>,
}

/// One stored revision as the export needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRevision {
    pub kind: String,
    pub id: String,
    pub revision: u32,
    pub school: String,
    pub content_hash: String,
    pub received_at: String,
    /// Empty once purged.
    pub canonical: String,
    /// When retention purged its content (`None` while it is held).
    pub purged_at: Option<String>,
}

/// A revision whose content a purge emptied: what the trail still needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgedRevision {
    pub kind: String,
    pub id: String,
    pub revision: u32,
    pub school: String,
    pub content_hash: String,
}

/// One page of a purge: what it emptied, and where the next page starts (`None` once the
/// scan has reached the end of the trust's revisions).
#[derive(Debug, Clone, Default)]
pub struct PurgePage {
    pub purged: Vec<PurgedRevision>,
    pub next: Option<i64>,
}

/// Makes a purge page's evidence-trail events: (trust, what was purged, when).
pub type PurgeTrail<'a> = &'a (dyn Fn(&str, &[PurgedRevision], &str) -> Vec<Event> + Sync);

/// Where a revision was sent, as the exporter shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DeliveredTo {
    pub destination: String,
    pub state: String,
    pub delivered_at: Option<String>,
}

/// A record's current revision as the exporter reads it: the stored text (or `None` once
/// purged), where it was delivered, and the rules its exceptions name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRevision {
    /// The store's order of the row, to read on after it.
    pub seq: i64,
    pub kind: Kind,
    pub id: String,
    pub revision: u32,
    pub school: String,
    pub content_hash: String,
    pub received_at: String,
    pub canonical: Option<String>,
    pub deliveries: Vec<DeliveredTo>,
    /// Rule ids of the exceptions raised on this revision.
    pub exceptions: Vec<String>,
}

/// The store, whichever database is behind it.
pub trait Store: Send + Sync {
    /// Writes a batch in one transaction and returns, in order, what happened to each
    /// record (decided by [`rules::decide_batch`]), with the evidence-trail events `trail`
    /// makes of it appended in the same transaction. Nothing is acknowledged before the
    /// commit.
    fn ingest_with_trail(
        &self,
        batch: &IntakeBatch,
        trail: IntakeTrail<'_>,
    ) -> impl Future<Output = Result<Vec<IngestOutcome>, StoreError>> + Send;

    /// Counts by trust, school, kind and state; rejections and conflicts by rule; open
    /// exceptions by trust, school and rule.
    fn status(&self) -> impl Future<Output = Result<StatusReport, StoreError>> + Send;

    /// Every exception raised on a record, oldest revision first, with its state.
    fn exceptions_of(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> impl Future<Output = Result<Vec<StoredException>, StoreError>> + Send;

    /// The size of every trust's evidence-trail log.
    fn audit_sizes(&self) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Hashes of complete nodes of a trust's log (see `trail::tree`).
    fn audit_nodes(
        &self,
        trust: &str,
        ids: &[NodeId],
    ) -> impl Future<Output = Result<HashMap<NodeId, Hash>, StoreError>> + Send;

    /// Up to `limit` leaves of a trust's log from index `start` and below `size`, with their
    /// indices, in order — only `school`'s events when one is named. A caller pages through
    /// the log by starting the next page after the last index it got.
    fn audit_leaves(
        &self,
        trust: &str,
        school: Option<&str>,
        start: u64,
        size: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send;

    /// Appends events (made by `audit`) to their trusts' logs in one transaction, each
    /// school's event numbered (`school_seq`) and no time before the log's last (the log's
    /// `trail::Tail`); returns each log's size after it.
    fn audit_append(
        &self,
        events: &[Event],
    ) -> impl Future<Output = Result<BTreeMap<String, u64>, StoreError>> + Send;

    /// Keeps a signed checkpoint as issued.
    fn audit_save_checkpoint(
        &self,
        trust: &str,
        size: u64,
        note: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stored revisions by (kind, id, revision): the canonical JSON and when it was received.
    fn revisions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> impl Future<Output = Result<Vec<StoredRevision>, StoreError>> + Send;

    /// Every exception raised on the given record revisions.
    fn exceptions_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> impl Future<Output = Result<Vec<(String, String, StoredException)>, StoreError>> + Send;

    /// Empties the content of up to `limit` of `trust`'s revisions (after row `after`, in
    /// the store's order) that were received and routed before `cutoff` and each of whose
    /// deliveries was delivered before it — none pending, in flight, retrying or dead —
    /// keeping kind, id, revision, content hash, school and times; appends the events
    /// `trail` makes of them in the same transaction.
    fn purge_with_trail(
        &self,
        trust: &str,
        cutoff: &str,
        after: i64,
        limit: usize,
        trail: PurgeTrail<'_>,
    ) -> impl Future<Output = Result<PurgePage, StoreError>> + Send;

    /// Up to `limit` current revisions of one kind at one school, after row `after`, in the
    /// store's order.
    fn current_revisions(
        &self,
        trust: &str,
        school: &str,
        kind: Kind,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<CurrentRevision>, StoreError>> + Send;

    /// Every stored revision of a record, oldest first, as canonical JSON (empty text for
    /// a revision whose content was purged).
    fn revisions(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> impl Future<Output = Result<Vec<(u32, String)>, StoreError>> + Send;
}
