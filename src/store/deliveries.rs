//! The delivery half of the store (SPEC §4): which revisions are routed, one delivery per
//! destination per revision with its state, every attempt, and dead letters. Claiming marks
//! deliveries `in_flight` before anything is sent, and each outcome is committed with its
//! evidence-trail event, so a crash at any moment leaves every delivery either done or to
//! be sent again (with the same idempotency key).
//!
//! The interface only: which states may be claimed or replayed, and in what order, is in
//! [`super::rules`]; the SQL in `sqlite/deliveries.rs`.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StoreError;
use super::rules::DeliveryState;
use crate::records::Kind;
use crate::records::severity::Severity;
use crate::trail::Event;

/// A stored revision not yet routed.
#[derive(Debug, Clone)]
pub struct Unrouted {
    pub trust: String,
    pub kind: Kind,
    pub id: String,
    pub revision: u32,
    pub school: String,
    pub urgency: Option<String>,
    pub canonical: String,
    /// The exceptions this revision raised: (rule, severity).
    pub exceptions: Vec<(String, Severity)>,
}

/// A delivery to create.
#[derive(Debug, Clone, Serialize)]
pub struct NewDelivery {
    pub trust: String,
    pub destination: String,
    pub kind: Kind,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub route: String,
    pub map: String,
    pub priority: u8,
    pub idempotency_key: String,
    /// Set when routing itself failed: the delivery starts dead, with this reason.
    pub dead: Option<String>,
}

/// A delivery claimed for sending, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub trust: String,
    pub destination: String,
    pub kind: Kind,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub map: String,
    pub idempotency_key: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub canonical: String,
    pub content_hash: String,
    pub exceptions: Vec<(String, Severity)>,
    /// The target's id for an earlier revision of the record at this destination.
    pub prior_target: Option<String>,
    /// What the target last received of the record, field by field (see [`SentFields`]),
    /// when its connector updates with changed fields only.
    pub prior_sent: Option<SentFields>,
    /// An earlier attempt was sent and no answer came (or the run stopped while it was in
    /// flight): it may have taken effect.
    pub unsure: bool,
    /// The lease's fencing token: the outcome is written only while the delivery still
    /// holds it (no other claim since).
    pub lease: i64,
}

/// Field name → SHA-256 (hex) of the field's value as a target received it: enough to tell
/// which fields a later revision changes, without keeping the values twice.
pub type SentFields = std::collections::BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Delivered {
        target_id: Option<String>,
        status: Option<u16>,
    },
    Retry {
        next_at: String,
        error: String,
        status: Option<u16>,
    },
    Dead {
        error: String,
        status: Option<u16>,
        response: Option<String>,
    },
}

impl AttemptOutcome {
    /// The state the delivery is left in.
    pub fn state(&self) -> DeliveryState {
        match self {
            AttemptOutcome::Delivered { .. } => DeliveryState::Delivered,
            AttemptOutcome::Retry { .. } => DeliveryState::Retrying,
            AttemptOutcome::Dead { .. } => DeliveryState::Dead,
        }
    }

    /// The attempt's outcome as the attempt log keeps it.
    pub fn attempt_outcome(&self) -> &'static str {
        match self {
            AttemptOutcome::Delivered { .. } => "delivered",
            AttemptOutcome::Retry { .. } => "failed",
            AttemptOutcome::Dead { .. } => "dead",
        }
    }
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Finished {
    pub claimed: Claimed,
    pub at: String,
    pub outcome: AttemptOutcome,
    /// On delivery: what the target now has of the record, field by field (kept for the
    /// next revision's update; connectors with `update_body = "changed"` only).
    pub sent: Option<SentFields>,
    /// Delivered without a request, and why (recorded as the attempt's outcome).
    pub without_request: Option<WithoutRequest>,
    /// The attempt was sent and no answer came: it may have taken effect (a create may
    /// exist). Kept on the delivery until it is delivered or replayed.
    pub unsure: bool,
}

/// One record as `GET /v1/records/{trust}/{kind}/{id}` shows it: never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordState {
    pub trust: String,
    pub kind: Kind,
    pub id: String,
    /// The school of its latest revision.
    pub school: String,
    pub revisions: Vec<RevisionState>,
    pub exceptions: Vec<ExceptionState>,
    /// Every revision's delivery to each destination.
    pub deliveries: Vec<DeliveryRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionState {
    pub revision: u32,
    pub received_at: String,
    pub content_hash: String,
    pub current: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionState {
    pub revision: u32,
    pub rule: String,
    pub severity: String,
    pub message: String,
    /// open, resolved or superseded.
    pub state: String,
}

/// Why a delivery was delivered without a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutRequest {
    /// Nothing the target sees changed since the revision it has (`update_body = "changed"`).
    Unchanged,
    /// A create whose answer was lost was found at the target; its id was adopted.
    Adopted,
}

impl WithoutRequest {
    /// The attempt's outcome as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            WithoutRequest::Unchanged => "unchanged",
            WithoutRequest::Adopted => "adopted",
        }
    }
}

/// One delivery as `deadletter` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub trust: String,
    pub destination: String,
    pub record_kind: Kind,
    pub record_id: String,
    pub revision: u32,
    pub school: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(serialize_with = "super::time::serialize")]
    pub next_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    pub target_id: Option<String>,
    #[serde(serialize_with = "super::time::serialize_option")]
    pub delivered_at: Option<DateTime<Utc>>,
    pub idempotency_key: String,
    #[serde(serialize_with = "super::time::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// One attempt, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    pub attempt: u32,
    #[serde(serialize_with = "super::time::serialize")]
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// One delivery in full: its row, the saved response, and every attempt.
pub type DeliveryDetail = (DeliveryRow, Option<String>, Vec<AttemptRow>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryCount {
    pub trust: String,
    pub destination: String,
    pub state: DeliveryState,
    pub count: u64,
}

/// One destination's queue, for `/metrics`: what waits, what is due, since when, and how
/// many retries its deliveries have taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStat {
    pub trust: String,
    pub destination: String,
    /// Pending or retrying, due or not.
    pub waiting: u64,
    /// Pending or retrying and due now.
    pub due: u64,
    /// When the longest-waiting due delivery fell due.
    #[serde(serialize_with = "super::time::serialize_option")]
    pub oldest_due: Option<DateTime<Utc>>,
    /// Attempts beyond each delivery's first, over all its deliveries.
    pub retries: u64,
}

/// One row of an audit bundle's `deliveries.csv`: an attempt (or, for a delivery never
/// attempted, none) with the delivery's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptExport {
    pub destination: String,
    pub kind: String,
    pub record_id: String,
    pub revision: u32,
    pub attempt: Option<AttemptRow>,
    pub state: String,
    pub target_id: Option<String>,
}

/// A dead letter put back to be sent, for its trail event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub seq: i64,
    pub trust: String,
    pub school: String,
    pub kind: String,
    pub record_id: String,
    pub revision: u32,
    pub destination: String,
}

/// Makes the trail event of an outcome the store accepted.
pub type FinishTrail<'a> = &'a (dyn Fn(&Finished) -> Event + Sync);

/// Deliveries in flight, by the process holding their leases (`status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseCount {
    /// `host/pid/random` on PostgreSQL; `sqlite/pid` for the one SQLite writer.
    pub instance: String,
    pub in_flight: u64,
    /// Seconds until its latest lease runs out (negative: ran out, not yet taken back;
    /// none on SQLite, where the one writer holds its leases while it runs).
    pub expires_in_seconds: Option<f64>,
}

/// Makes the trail events of deliveries replayed at a time (RFC 3339 UTC).
pub type ReplayTrail<'a> = &'a (dyn Fn(&[Replayed], &str) -> Vec<Event> + Sync);

pub trait DeliveryStore: super::lookups::LookupStore {
    /// Opened read-only (an auditor's copy): a reading verb writes nothing, not even the
    /// trail's record of itself.
    fn is_read_only(&self) -> bool {
        false
    }

    /// Every delivery of the given record revisions with every attempt, in order.
    fn attempts_by_key(
        &self,
        trust: &str,
        keys: &[(String, String, u32)],
    ) -> impl Future<Output = Result<Vec<AttemptExport>, StoreError>> + Send;

    /// Stored revisions not yet routed: about `limit`, the most urgent first (immediate,
    /// then same-day and incidents, then the rest), each with every earlier unrouted
    /// revision of its record; returned oldest first.
    fn unrouted(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Unrouted>, StoreError>> + Send;

    /// Creates deliveries and marks the revisions routed, in one transaction.
    fn add_deliveries(
        &self,
        routed: &[(String, Kind, String, u32)],
        deliveries: &[NewDelivery],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deliveries left `in_flight` by a process that stopped go back to be sent again.
    fn release_in_flight(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Claims up to `limit` deliveries of one destination that are due, most urgent first,
    /// each the lowest revision of its record still to go, and marks them `in_flight`.
    fn claim(
        &self,
        trust: &str,
        destination: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Records outcomes, each with the trail event `trail` makes of it, in one transaction
    /// — only those whose delivery still holds the claim's lease ([`Claimed::lease`]) and is
    /// in flight. Returns the indices in `done` of the late ones, which changed nothing.
    fn finish_with_trail(
        &self,
        done: &[Finished],
        trail: FinishTrail<'_>,
    ) -> impl Future<Output = Result<Vec<usize>, StoreError>> + Send;

    /// Deliveries in flight by the instance leasing them.
    fn leases(&self) -> impl Future<Output = Result<Vec<LeaseCount>, StoreError>> + Send;

    /// When the destination's next delivery falls due (RFC 3339), if any is waiting; now,
    /// while this process has one in flight; the end of its lease while another instance
    /// has one in flight (PostgreSQL).
    fn next_due(
        &self,
        trust: &str,
        destination: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    fn delivery_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<DeliveryCount>, StoreError>> + Send;

    /// Each destination's queue as of `now`.
    fn queue_stats(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<QueueStat>, StoreError>> + Send;

    /// Deliveries in a state (`dead` for the dead letters), oldest first.
    fn deliveries_in(
        &self,
        state: DeliveryState,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeliveryRow>, StoreError>> + Send;

    /// One record's revisions, exceptions and deliveries — ids, states and times, never its
    /// content; `None` when the trust has no such record.
    fn record_state(
        &self,
        trust: &str,
        kind: Kind,
        id: &str,
    ) -> impl Future<Output = Result<Option<RecordState>, StoreError>> + Send;

    /// One delivery with its saved response and every attempt.
    fn delivery(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<DeliveryDetail>, StoreError>> + Send;

    /// Puts deliveries in [`rules::REPLAYABLE`](super::rules::REPLAYABLE) back to
    /// [`rules::REPLAYED_TO`](super::rules::REPLAYED_TO) (all of a destination when `ids` is
    /// empty and `destination` is given), except one whose record has a later revision in
    /// [`rules::REPLAY_BLOCKED_BY`](super::rules::REPLAY_BLOCKED_BY) there (it would
    /// overwrite newer with older); appends the events `trail` makes of those replayed;
    /// forgets the trust's "not found" look-ups (a replay follows a fix); returns the ids
    /// replayed, in order.
    fn replay_with_trail(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
        trail: ReplayTrail<'_>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
}
