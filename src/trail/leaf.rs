//! Leaves of the evidence trail: one event as the exact bytes of compact (RFC 8785) JSON.
//! A leaf carries ids, rule ids, states and the record's content hash — never names, dates of
//! birth, addresses, descriptions or summaries — so the trail can be kept and shown for years.

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A record revision was stored.
    Received,
    /// A submission was rejected (§1.4).
    Rejected,
    /// A revision was kept out: not above the stored one, other content.
    Conflict,
    /// Policy exceptions were raised on a stored revision.
    ExceptionRaised,
    /// Exceptions of earlier revisions no longer hold.
    ExceptionResolved,
    /// An audit bundle was exported.
    Exported,
    /// A record revision reached a destination.
    Delivered,
    /// An attempt failed and will be retried.
    Failed,
    /// A delivery gave up: the dead letters hold it with the response.
    DeadLettered,
    /// A dead letter was put back to be sent.
    Replayed,
    /// A revision's content left the store under the trust's retention (`purge`): its
    /// kind, id, revision, content hash and times stay.
    Purged,
}

/// One event of a trust's log. The fields are declared in the order RFC 8785 sorts their
/// names, so plain compact serialisation is already canonical (a test checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// Who ran a records export: `os:<user>` or `key:<public id>` (never a name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// SHA-256 (hex) of the record's RFC 8785 canonical content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// A records export's counts, by record kind.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counts: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub event: EventType,
    /// A records export's format (`jsonl`, `csv`, `chronology`, `html`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// SHA-256 (hex) of the record's non-personal projection (`records::personal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection_hash: Option<String>,
    /// Why records were exported: a reason code (`referral`, `subject_access`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school: Option<String>,
    /// The school's own sequence number in the trust's log (0, 1, 2, … in log order); set
    /// by the log as it appends (`sequence`), never by whoever makes the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub trust: String,
}

impl Event {
    pub fn new(event: EventType, at: &str, trust: &str) -> Self {
        Self {
            event,
            at: at.to_owned(),
            trust: trust.to_owned(),
            school: None,
            school_seq: None,
            kind: None,
            record_id: None,
            revision: None,
            destination: None,
            state: None,
            rules: Vec::new(),
            content_hash: None,
            projection_hash: None,
            by: None,
            counts: std::collections::BTreeMap::new(),
            format: None,
            reason: None,
        }
    }

    /// The leaf: this event's canonical JSON bytes. Every value is an ASCII id, rule, state,
    /// time or small integer, for which compact JSON with sorted keys is RFC 8785.
    pub fn leaf(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::canonical_json;
    #[test]
    fn a_leaf_is_canonical_json() {
        let mut e = Event::new(
            EventType::ExceptionRaised,
            "2026-11-24T22:02:02.621799Z",
            "celt",
        );
        assert_eq!(
            canonical_json(&serde_json::from_str(&e.leaf()).unwrap()),
            e.leaf()
        );
        e.school = Some("136401".into());
        e.kind = Some("visit_report".into());
        e.record_id = Some("celt-visit-030".into());
        e.revision = Some(2);
        e.destination = Some("cpoms".into());
        e.state = Some("delivered".into());
        e.rules = vec!["pair-required".into(), "buddy-assigned".into()];
        e.content_hash = Some("ab".repeat(32));
        e.projection_hash = Some("cd".repeat(32));
        e.school_seq = Some(7);
        e.by = Some("os:dsl1".into());
        e.counts = [("incident".to_owned(), 2), ("visit_report".to_owned(), 3)].into();
        e.format = Some("chronology".into());
        e.reason = Some("referral".into());
        let leaf = e.leaf();
        assert_eq!(canonical_json(&serde_json::from_str(&leaf).unwrap()), leaf);
        assert!(
            leaf.starts_with(
                r#"{"at":"2026-11-24T22:02:02.621799Z","by":"os:dsl1","content_hash":"#
            )
        );
    }
}
