//! Trust policy checks (SPEC §2): rules over accepted records that raise compliance
//! exceptions. A record that breaks policy is still stored and delivered — record keeping
//! comes first — but carries exceptions, each with a stable rule id, a severity and a
//! one-line reason that names fields and values, never personal data.
//!
//! Owns: the rule ids, `policy.toml`, and evaluation as pure functions of a record, the
//! trust's policy and the school's place and time zone.
//! May not touch: files other than `policy.toml`, the store, delivery.

mod config;
mod rules;

use std::fmt;

use serde::Serialize;

pub use config::{
    AfterDarkCfg, LocalTime, PairMode, PolicyError, PolicyFile, RulesFile, SignOutField,
};
pub use rules::{evaluate, rule_severity};

/// How serious an exception is (defined in `records`, below the store).
pub use crate::records::severity::Severity;

/// The policy rules of SPEC §2. Their ids are stable: routes, reports and auditors use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleId {
    AuthorisedBeforeVisit,
    PairRequired,
    BuddyAssigned,
    SignedOut,
    AfterDark,
    ReturnedOrPhonedIn,
    ReportRecordedPromptly,
    IncidentSharedSameDay,
    IncidentDebriefed,
    DslInformed,
    ImmediateDanger999,
    NoOneHomeNote,
    TransportTwoStaff,
    TransportRearSeat,
    TransportCarSeat,
}

impl RuleId {
    pub const ALL: [RuleId; 15] = [
        RuleId::AuthorisedBeforeVisit,
        RuleId::PairRequired,
        RuleId::BuddyAssigned,
        RuleId::SignedOut,
        RuleId::AfterDark,
        RuleId::ReturnedOrPhonedIn,
        RuleId::ReportRecordedPromptly,
        RuleId::IncidentSharedSameDay,
        RuleId::IncidentDebriefed,
        RuleId::DslInformed,
        RuleId::ImmediateDanger999,
        RuleId::NoOneHomeNote,
        RuleId::TransportTwoStaff,
        RuleId::TransportRearSeat,
        RuleId::TransportCarSeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::AuthorisedBeforeVisit => "authorised-before-visit",
            RuleId::PairRequired => "pair-required",
            RuleId::BuddyAssigned => "buddy-assigned",
            RuleId::SignedOut => "signed-out",
            RuleId::AfterDark => "after-dark",
            RuleId::ReturnedOrPhonedIn => "returned-or-phoned-in",
            RuleId::ReportRecordedPromptly => "report-recorded-promptly",
            RuleId::IncidentSharedSameDay => "incident-shared-same-day",
            RuleId::IncidentDebriefed => "incident-debriefed",
            RuleId::DslInformed => "dsl-informed",
            RuleId::ImmediateDanger999 => "immediate-danger-999",
            RuleId::NoOneHomeNote => "no-one-home-note",
            RuleId::TransportTwoStaff => "transport-two-staff",
            RuleId::TransportRearSeat => "transport-rear-seat",
            RuleId::TransportCarSeat => "transport-car-seat",
        }
    }

    /// The severity a rule has when its policy file does not set one.
    pub fn default_severity(self) -> Severity {
        match self {
            RuleId::AfterDark => Severity::Warning,
            _ => Severity::Error,
        }
    }

    pub fn from_id(s: &str) -> Option<RuleId> {
        RuleId::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One compliance exception raised on one record revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exception {
    pub rule: RuleId,
    pub severity: Severity,
    /// Names fields and values (times, counts, roles), never personal data.
    pub message: String,
}

/// Where a school is and which clock it keeps: what time rules need beyond the record.
#[derive(Debug, Clone, Copy)]
pub struct SchoolPlace {
    pub time_zone: chrono_tz::Tz,
    /// Latitude and longitude, for local sunset.
    pub location: Option<(f64, f64)>,
}

impl Default for SchoolPlace {
    fn default() -> Self {
        Self {
            time_zone: chrono_tz::Europe::London,
            location: None,
        }
    }
}
