//! Leaves of the evidence trail: one event as the exact bytes of compact (RFC 8785) JSON.
//! A leaf carries ids, rule ids, states and the record's content hash — never names, dates of
//! birth, addresses, descriptions or summaries — so the trail can be kept and shown for years.

use serde::Serialize;

use crate::records::canonical_json;

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
}

/// One event of a trust's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub event: EventType,
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    pub trust: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// SHA-256 (hex) of the record's RFC 8785 canonical content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
}

impl Event {
    pub fn new(event: EventType, at: &str, trust: &str) -> Self {
        Self {
            event,
            at: at.to_owned(),
            trust: trust.to_owned(),
            school: None,
            kind: None,
            record_id: None,
            revision: None,
            destination: None,
            state: None,
            rules: Vec::new(),
            content_hash: None,
        }
    }

    /// The leaf: this event's canonical JSON bytes.
    pub fn leaf(&self) -> String {
        serde_json::to_value(self)
            .map(|v| canonical_json(&v))
            .unwrap_or_default()
    }
}
