//! The store's product rules, whatever database is behind it (SPEC §1 revisions, §4
//! delivery): pure functions and data that each back end's SQL implements. A back end reads
//! and writes; what a revision means, which deliveries may go and in what order, and which
//! may be replayed, is decided (or declared) here.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::issues::Conflict;
use super::{IngestOutcome, NewRecord};
use crate::records::Rule;

// ---- Revisions -------------------------------------------------------------------------

/// What becomes of one record revision, given what is stored of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A new revision: the first, or above the latest.
    Store,
    /// The same revision with the same content is stored: a no-op.
    Unchanged,
    /// Kept out: not above the latest, and other content than what is stored.
    Conflict {
        /// The latest revision stored (or taken earlier in the same batch).
        latest: u32,
        /// Whether this very revision is stored (with other content).
        same_revision_stored: bool,
    },
}

/// Decides one revision. `latest` is the record's latest revision; `stored_hash` the content
/// hash stored for this same revision, if any; `hash` the new content's.
pub fn decide(
    latest: Option<u32>,
    revision: u32,
    stored_hash: Option<&str>,
    hash: &str,
) -> Decision {
    let same = stored_hash.map(|h| h == hash);
    match (latest, same) {
        (_, Some(true)) => Decision::Unchanged,
        (Some(latest), _) if revision <= latest => Decision::Conflict {
            latest,
            same_revision_stored: same.is_some(),
        },
        _ => Decision::Store,
    }
}

/// The conflict reported (and kept for `status`) for a revision kept out.
pub fn conflict(r: &NewRecord, latest: u32, same_revision_stored: bool) -> Conflict {
    let message = if same_revision_stored {
        format!(
            "revision {} is already stored with different content; send a higher revision to change it",
            r.revision
        )
    } else {
        format!(
            "revision {} is lower than the stored revision {latest}; send a higher revision to change it",
            r.revision
        )
    };
    Conflict {
        file: r.file.clone(),
        line: r.line,
        record_id: r.id.clone(),
        revision: r.revision,
        rule: Rule::RevisionConflict,
        message,
    }
}

/// A record's key: (trust, kind, id).
pub type Key = (String, &'static str, String);

/// What is known of one record while a batch is decided.
#[derive(Debug, Default)]
pub struct KeyState {
    /// The latest stored revision, before this batch.
    pub stored_latest: Option<u32>,
    /// The latest revision once this batch's records so far are taken.
    pub latest: Option<u32>,
    /// Content hashes (hex) of the revisions this batch asks about.
    pub hashes: HashMap<u32, String>,
}

impl KeyState {
    /// Whether this batch gave the record a new latest revision, superseding a stored one.
    pub fn supersedes(&self) -> bool {
        self.stored_latest.is_some() && self.latest != self.stored_latest
    }
}

/// Decides every record of a batch in order, as if written one by one, from what the back
/// end read of the store (`state`: for each key of the batch, its latest revision and the
/// hashes of the revisions the batch names). Updates `state` with what is taken, and returns
/// the outcomes and the indices of the records to write.
pub fn decide_batch(
    records: &[NewRecord],
    state: &mut HashMap<Key, KeyState>,
) -> (Vec<IngestOutcome>, Vec<usize>) {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut stored = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let hash = r.hash.to_hex();
        let entry = state
            .entry((r.trust.clone(), r.kind.as_str(), r.id.clone()))
            .or_default();
        let decision = decide(
            entry.latest,
            r.revision,
            entry.hashes.get(&r.revision).map(String::as_str),
            &hash,
        );
        outcomes.push(match decision {
            Decision::Unchanged => IngestOutcome::Unchanged,
            Decision::Conflict {
                latest,
                same_revision_stored,
            } => IngestOutcome::Conflict(conflict(r, latest, same_revision_stored)),
            Decision::Store => {
                entry.latest = Some(r.revision);
                entry.hashes.insert(r.revision, hash);
                stored.push(i);
                IngestOutcome::Stored
            }
        });
    }
    (outcomes, stored)
}

/// The records a batch stores (`stored`, in order), each with whether it is its record's
/// current revision once the batch is written: the last revision the batch stores of it.
pub fn with_current(records: &[NewRecord], stored: &[usize]) -> Vec<(usize, bool)> {
    let mut seen = std::collections::HashSet::new();
    let mut rows: Vec<(usize, bool)> = stored
        .iter()
        .rev()
        .map(|&i| {
            let r = &records[i];
            (i, seen.insert((r.trust.as_str(), r.kind, r.id.as_str())))
        })
        .collect();
    rows.reverse();
    rows
}

/// One record whose earlier revisions' open exceptions a batch closes: the latest revision
/// the batch stored of it, and the rules that revision raised (comma-joined).
#[derive(Debug, PartialEq, Eq)]
pub struct Closing<'a> {
    pub trust: &'a str,
    pub kind: &'a str,
    pub id: &'a str,
    pub revision: u32,
    pub rules: String,
}

/// The records of a batch that may have open exceptions of an earlier revision: those
/// stored before the batch, and those of which the batch itself stored more than one
/// revision. A record seen for the first time has none, so is not looked for.
pub fn closing<'a>(
    records: &'a [NewRecord],
    stored: &[usize],
    state: &HashMap<Key, KeyState>,
) -> Vec<Closing<'a>> {
    let mut latest: HashMap<(&str, &str, &str), (usize, usize)> = HashMap::new();
    for &i in stored {
        let r = &records[i];
        let seen = latest
            .entry((r.trust.as_str(), r.kind.as_str(), r.id.as_str()))
            .or_insert((i, 0));
        *seen = (i, seen.1 + 1);
    }
    let mut out: Vec<Closing<'a>> = latest
        .into_values()
        .filter_map(|(i, revisions)| {
            let r = &records[i];
            let earlier_stored = state
                .get(&(r.trust.clone(), r.kind.as_str(), r.id.clone()))
                .is_some_and(|s| s.stored_latest.is_some());
            (earlier_stored || revisions > 1).then(|| Closing {
                trust: &r.trust,
                kind: r.kind.as_str(),
                id: &r.id,
                revision: r.revision,
                rules: r
                    .exceptions
                    .iter()
                    .map(|e| e.rule)
                    .collect::<Vec<_>>()
                    .join(","),
            })
        })
        .collect();
    out.sort_by(|a, b| (a.trust, a.kind, a.id).cmp(&(b.trust, b.kind, b.id)));
    out
}

// ---- Exceptions ------------------------------------------------------------------------

/// The state of a stored policy exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionState {
    /// Raised by the record's latest revision.
    Open,
    /// A later revision no longer raises it.
    Resolved,
    /// A later revision raises it again.
    Superseded,
}

impl ExceptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionState::Open => "open",
            ExceptionState::Resolved => "resolved",
            ExceptionState::Superseded => "superseded",
        }
    }

    /// What an open exception becomes when a later revision is stored.
    pub fn closed(raised_again: bool) -> Self {
        if raised_again {
            ExceptionState::Superseded
        } else {
            ExceptionState::Resolved
        }
    }
}

// ---- Deliveries ------------------------------------------------------------------------

/// Where one delivery stands (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet attempted.
    Pending,
    /// Claimed by a sender; its outcome is not recorded yet.
    InFlight,
    /// An attempt failed; it goes again at `next_at`.
    Retrying,
    /// The target has it.
    Delivered,
    /// Given up: a dead letter, with why.
    Dead,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 5] = [
        DeliveryState::Pending,
        DeliveryState::InFlight,
        DeliveryState::Retrying,
        DeliveryState::Delivered,
        DeliveryState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryState {
    /// The name, padded as asked (`{:<10}` in tables).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Compares with a state's name, as callers comparing `"dead"` did before the enum.
impl PartialEq<str> for DeliveryState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeliveryState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A state name that is not a [`DeliveryState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for DeliveryState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// States a delivery may be claimed from, once due.
pub const CLAIMABLE: [DeliveryState; 2] = [DeliveryState::Pending, DeliveryState::Retrying];

/// States of a delivery still to go: one of them on an earlier revision of the same record
/// at the same destination holds a later revision back (revisions go in order).
pub const UNFINISHED: [DeliveryState; 3] = [
    DeliveryState::Pending,
    DeliveryState::Retrying,
    DeliveryState::InFlight,
];

/// The claim order: most urgent first (the delivery's priority, lower first), then oldest
/// (the order deliveries were added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOrder {
    Priority,
    Age,
}

pub const CLAIM_ORDER: [ClaimOrder; 2] = [ClaimOrder::Priority, ClaimOrder::Age];

/// What a delivery left in flight by a process that stopped becomes: retried if it had been
/// attempted, else pending.
pub fn released(attempts: u32) -> DeliveryState {
    if attempts > 0 {
        DeliveryState::Retrying
    } else {
        DeliveryState::Pending
    }
}

/// The state a delivery starts in: dead when routing itself failed.
pub fn initial(routing_failed: bool) -> DeliveryState {
    if routing_failed {
        DeliveryState::Dead
    } else {
        DeliveryState::Pending
    }
}

/// A delivery in this state may be replayed…
pub const REPLAYABLE: DeliveryState = DeliveryState::Dead;
/// …back to this one (attempts reset)…
pub const REPLAYED_TO: DeliveryState = DeliveryState::Pending;
/// …unless a later revision of its record is in this state at the same destination: sending
/// the older one again would overwrite newer with older.
pub const REPLAY_BLOCKED_BY: DeliveryState = DeliveryState::Delivered;

/// The states as an SQL list of string literals, for back ends to build their statements
/// from (literals, not parameters, so that partial indexes still apply).
pub fn sql_list(states: &[DeliveryState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rule a dead letter names when a create's answer was lost and its connector offers no
/// way to find what it made: a person checks the target, then replays (which sends again).
pub const NEEDS_CHECK: &str = "needs-check";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_decided() {
        assert_eq!(decide(None, 1, None, "a"), Decision::Store);
        assert_eq!(decide(Some(1), 2, None, "a"), Decision::Store);
        assert_eq!(decide(Some(2), 2, Some("a"), "a"), Decision::Unchanged);
        // An older revision stored with the same content is a no-op too.
        assert_eq!(decide(Some(3), 2, Some("a"), "a"), Decision::Unchanged);
        assert_eq!(
            decide(Some(2), 2, Some("a"), "b"),
            Decision::Conflict {
                latest: 2,
                same_revision_stored: true
            }
        );
        assert_eq!(
            decide(Some(3), 1, None, "b"),
            Decision::Conflict {
                latest: 3,
                same_revision_stored: false
            }
        );
    }

    #[test]
    fn only_records_with_an_earlier_revision_have_exceptions_to_close() {
        let record = |id: &str, revision: u32, rules: &[&'static str]| NewRecord {
            kind: crate::records::Kind::Incident,
            id: id.into(),
            revision,
            trust: "t".into(),
            school_urn: "100000".into(),
            visit_id: None,
            urgency: None,
            hash: crate::records::ContentHash([0; 32]),
            projection: crate::records::ContentHash([0; 32]),
            canonical: "{}".into(),
            file: "f".into(),
            line: None,
            exceptions: rules
                .iter()
                .map(|&rule| super::super::RaisedException {
                    rule,
                    severity: crate::records::severity::Severity::Warning,
                    message: String::new(),
                })
                .collect(),
        };
        // "new" is seen for the first time; "old" is stored already; "twice" comes twice.
        let records = vec![
            record("new", 1, &["a"]),
            record("old", 3, &["a", "b"]),
            record("twice", 1, &["a"]),
            record("twice", 2, &[]),
        ];
        let mut state = HashMap::new();
        state.insert(
            ("t".to_owned(), "incident", "old".to_owned()),
            KeyState {
                stored_latest: Some(2),
                ..KeyState::default()
            },
        );
        let (_, stored) = decide_batch(&records, &mut state);
        let closing = closing(&records, &stored, &state);
        let got: Vec<_> = closing
            .iter()
            .map(|c| (c.id, c.revision, c.rules.as_str()))
            .collect();
        assert_eq!(got, [("old", 3, "a,b"), ("twice", 2, "")]);
        // Only the last revision the batch stores of a record is current.
        let current: Vec<bool> = with_current(&records, &stored)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(current, [true, true, false, true]);
    }

    #[test]
    fn delivery_states_read_back_as_written() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(
                serde_json::from_str::<DeliveryState>(&format!("\"{s}\"")).unwrap(),
                s
            );
        }
        assert!("sent".parse::<DeliveryState>().is_err());
        assert_eq!(format!("[{:<10}]", DeliveryState::Dead), "[dead      ]");
        assert_eq!(sql_list(&CLAIMABLE), "'pending', 'retrying'");
        assert_eq!(released(0), DeliveryState::Pending);
        assert_eq!(released(2), DeliveryState::Retrying);
    }
}
