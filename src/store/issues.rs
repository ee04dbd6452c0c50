//! What intake keeps out, as the store records it and `report` prints it: rejected
//! submissions and revision conflicts. Ids, pointers and rule ids only. The printed forms
//! (`Display`, `--format json`) live in `report`, which re-exports these types.

use serde::Serialize;

use crate::records::{FieldError, Rule};

/// A rejected record or an unreadable file (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// The file as given (or `request` for the HTTP API).
    pub file: String,
    /// 1-based line for JSON-lines files and syntax errors; `None` where unknown.
    pub line: Option<u64>,
    pub record_id: Option<String>,
    /// RFC 6901 pointer into the record; `None` for file-level errors.
    pub path: Option<String>,
    pub rule: Rule,
    pub message: String,
    /// The trust and school the rejected record named, when well-formed: which evidence
    /// trail the rejection goes to. Not part of the printed line.
    #[serde(skip)]
    pub trust: Option<String>,
    #[serde(skip)]
    pub school: Option<String>,
}

impl Rejection {
    pub fn new(file: &str, line: Option<u64>, record_id: Option<String>, e: FieldError) -> Self {
        Self {
            file: file.to_owned(),
            line,
            record_id,
            path: e.pointer,
            rule: e.rule,
            message: e.message,
            trust: None,
            school: None,
        }
    }

    /// Names the trust and school the record claimed.
    pub fn attributed(mut self, trust: Option<String>, school: Option<String>) -> Self {
        self.trust = trust;
        self.school = school;
        self
    }
}

/// A revision lower than or equal to a stored one, with different content: kept out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub file: String,
    pub line: Option<u64>,
    pub record_id: String,
    pub revision: u32,
    pub rule: Rule,
    pub message: String,
}
