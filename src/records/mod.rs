//! Records (SPEC §1): the three kinds, how a JSON value becomes validated records, and
//! their canonical content hash.
//!
//! Owns: the record types, field validation, the rule ids of rejections, splitting embedded
//! incidents and flags out of visit reports, canonical JSON (RFC 8785) and its SHA-256.
//! May not touch: files, the store, policy (that judges records this module has accepted).

mod canonical;
mod fields;
mod kinds;
mod parse;
pub mod personal;
mod schema;
pub mod severity;
mod value;

use std::fmt;

use serde::Serialize;

pub(crate) use canonical::reads_back_equal;
pub use canonical::{ContentHash, canonical_json, canonical_json_without};
pub use fields::{
    Date, RecordId, Revision, RuleViolation, StaffId, Timestamp, TrustId, Upn, Urn,
    is_valid_record_id, upn_check_letter,
};
pub use kinds::*;
pub use parse::{FieldError, ParsedRecord, attribution_hint, parse_submission, record_id_hint};
pub use schema::records_schema;
pub use value::{DuplicateKey, escape_pointer_token, parse_json_value, value_from_map};

/// The three kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    VisitReport,
    Incident,
    SafeguardingFlag,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::VisitReport, Kind::Incident, Kind::SafeguardingFlag];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VisitReport => "visit_report",
            Kind::Incident => "incident",
            Kind::SafeguardingFlag => "safeguarding_flag",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated record of one of the three kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    VisitReport(Box<VisitReport>),
    Incident(Box<Incident>),
    SafeguardingFlag(Box<SafeguardingFlag>),
}

impl Record {
    pub fn kind(&self) -> Kind {
        match self {
            Record::VisitReport(_) => Kind::VisitReport,
            Record::Incident(_) => Kind::Incident,
            Record::SafeguardingFlag(_) => Kind::SafeguardingFlag,
        }
    }

    pub fn id(&self) -> &RecordId {
        match self {
            Record::VisitReport(r) => &r.id,
            Record::Incident(r) => &r.id,
            Record::SafeguardingFlag(r) => &r.id,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Record::VisitReport(r) => r.revision,
            Record::Incident(r) => r.revision,
            Record::SafeguardingFlag(r) => r.revision,
        }
    }

    pub fn trust(&self) -> &TrustId {
        match self {
            Record::VisitReport(r) => &r.trust,
            Record::Incident(r) => &r.trust,
            Record::SafeguardingFlag(r) => &r.trust,
        }
    }

    pub fn school(&self) -> &School {
        match self {
            Record::VisitReport(r) => &r.school,
            Record::Incident(r) => &r.school,
            Record::SafeguardingFlag(r) => &r.school,
        }
    }

    /// The visit a record belongs to (itself for a visit report).
    pub fn visit_id(&self) -> Option<&RecordId> {
        match self {
            Record::VisitReport(r) => Some(&r.id),
            Record::Incident(r) => Some(&r.visit_id),
            Record::SafeguardingFlag(r) => r.visit_id.as_ref(),
        }
    }

    /// The urgency that orders delivery: only flags carry one.
    pub fn urgency(&self) -> Option<Urgency> {
        match self {
            Record::SafeguardingFlag(r) => Some(r.urgency),
            _ => None,
        }
    }
}

/// The rule a rejected record broke. Stable ids: scripts and tests match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    // Reading the file.
    UnreadableFile,
    UnsupportedFileType,
    NoRecords,
    RecordTooLarge,
    InvalidUtf8,
    Utf8Bom,
    JsonSyntax,
    TrailingCharacters,
    NestingTooDeep,
    NumberOutOfRange,
    DuplicateKey,
    // Shape.
    NotAnObject,
    UnknownKind,
    UnknownField,
    MissingField,
    WrongType,
    UnknownEnumValue,
    InvalidValue,
    // Field formats.
    IdFormat,
    TrustFormat,
    UrnFormat,
    UpnFormat,
    UpnCheckLetter,
    TimeFormat,
    TimeOffsetRequired,
    DateFormat,
    RevisionRange,
    YearGroup,
    // Record rules.
    CodeWordForbidden,
    StaffRequired,
    OneLead,
    TimeOrder,
    VisitTimesRequired,
    CancellationRequired,
    EmbeddedMismatch,
    DuplicateId,
    // Against the store.
    RevisionConflict,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        use Rule::*;
        match self {
            UnreadableFile => "unreadable-file",
            UnsupportedFileType => "unsupported-file-type",
            NoRecords => "no-records",
            RecordTooLarge => "record-too-large",
            InvalidUtf8 => "invalid-utf8",
            Utf8Bom => "utf8-bom",
            JsonSyntax => "json-syntax",
            TrailingCharacters => "trailing-characters",
            NestingTooDeep => "nesting-too-deep",
            NumberOutOfRange => "number-out-of-range",
            DuplicateKey => "duplicate-key",
            NotAnObject => "not-an-object",
            UnknownKind => "unknown-kind",
            UnknownField => "unknown-field",
            MissingField => "missing-field",
            WrongType => "wrong-type",
            UnknownEnumValue => "unknown-enum-value",
            InvalidValue => "invalid-value",
            IdFormat => "id-format",
            TrustFormat => "trust-format",
            UrnFormat => "urn-format",
            UpnFormat => "upn-format",
            UpnCheckLetter => "upn-check-letter",
            TimeFormat => "time-format",
            TimeOffsetRequired => "time-offset-required",
            DateFormat => "date-format",
            RevisionRange => "revision-range",
            YearGroup => "year-group",
            CodeWordForbidden => "code-word-forbidden",
            StaffRequired => "staff-required",
            OneLead => "one-lead",
            TimeOrder => "time-order",
            VisitTimesRequired => "visit-times-required",
            CancellationRequired => "cancellation-required",
            EmbeddedMismatch => "embedded-mismatch",
            DuplicateId => "duplicate-id",
            RevisionConflict => "revision-conflict",
        }
    }

    /// Every rule, for documentation and for parsing ids back.
    pub const ALL: &'static [Rule] = &[
        Rule::UnreadableFile,
        Rule::UnsupportedFileType,
        Rule::NoRecords,
        Rule::RecordTooLarge,
        Rule::InvalidUtf8,
        Rule::Utf8Bom,
        Rule::JsonSyntax,
        Rule::TrailingCharacters,
        Rule::NestingTooDeep,
        Rule::NumberOutOfRange,
        Rule::DuplicateKey,
        Rule::NotAnObject,
        Rule::UnknownKind,
        Rule::UnknownField,
        Rule::MissingField,
        Rule::WrongType,
        Rule::UnknownEnumValue,
        Rule::InvalidValue,
        Rule::IdFormat,
        Rule::TrustFormat,
        Rule::UrnFormat,
        Rule::UpnFormat,
        Rule::UpnCheckLetter,
        Rule::TimeFormat,
        Rule::TimeOffsetRequired,
        Rule::DateFormat,
        Rule::RevisionRange,
        Rule::YearGroup,
        Rule::CodeWordForbidden,
        Rule::StaffRequired,
        Rule::OneLead,
        Rule::TimeOrder,
        Rule::VisitTimesRequired,
        Rule::CancellationRequired,
        Rule::EmbeddedMismatch,
        Rule::DuplicateId,
        Rule::RevisionConflict,
    ];

    pub fn from_id(s: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
