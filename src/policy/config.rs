//! `mappings/<trust>/policy.toml`: which rules a trust turns on, their severity and their
//! parameters. Unknown keys and bad values are errors naming the file, the key and why.

use std::path::Path;

use chrono::NaiveTime;
use serde::{Deserialize, Deserializer};

use super::{RuleId, Severity};
use crate::records::AuthoriserRole;
use crate::toml_file::{self, FileError};

/// A policy file's error: the file, and for a refused value the key `rules.<rule>.<key>`.
pub type PolicyError = FileError;

/// A local time of day written `"HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime(pub NaiveTime);

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map(LocalTime)
            .map_err(|_| serde::de::Error::custom("a local time is written HH:MM, e.g. 17:00"))
    }
}

/// Whether two staff are needed always, or unless the authoriser approved a lone visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairMode {
    Always,
    UnlessLoneApproved,
}

/// Sign-out fields a trust may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignOutField {
    LeftSchoolAt,
    VehicleRegistration,
    StaffMobiles,
    Address,
    ExpectedToSee,
    ExpectedArrival,
    ExpectedDeparture,
    ExpectedReturn,
}

impl SignOutField {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeftSchoolAt => "left_school_at",
            Self::VehicleRegistration => "vehicle_registration",
            Self::StaffMobiles => "staff_mobiles",
            Self::Address => "address",
            Self::ExpectedToSee => "expected_to_see",
            Self::ExpectedArrival => "expected_arrival",
            Self::ExpectedDeparture => "expected_departure",
            Self::ExpectedReturn => "expected_return",
        }
    }
}

fn yes() -> bool {
    true
}

macro_rules! rule_config {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[serde(default = "yes")]
            pub enabled: bool,
            #[serde(default)]
            pub severity: Option<Severity>,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// The severity to raise with, if the rule is on.
            pub fn active(&self, rule: RuleId) -> Option<Severity> {
                self.enabled.then(|| self.severity.unwrap_or(rule.default_severity()))
            }
        }
    };
}

rule_config!(AuthorisedCfg {
    roles: Vec<AuthoriserRole>,
    #[serde(default)]
    emergency_exempt: bool,
});
rule_config!(PairCfg { mode: PairMode });
rule_config!(PlainCfg {});
rule_config!(SignedOutCfg { fields: Vec<SignOutField> });
rule_config!(AfterDarkCfg {
    #[serde(default)]
    cutoff: Option<LocalTime>,
    #[serde(default)]
    sunset: bool,
    #[serde(default)]
    sunset_margin_minutes: i64,
});
rule_config!(ReturnedCfg { grace_minutes: i64 });
rule_config!(PromptCfg { within_hours: i64 });
rule_config!(SameDayCfg {
    working_day_ends: LocalTime
});
rule_config!(DslCfg {
    immediate_within_minutes: i64
});
rule_config!(TwoStaffCfg {
    #[serde(default = "two")]
    min_staff: u8,
});
rule_config!(CarSeatCfg {
    under_age: u8,
    under_height_cm: f64,
});

fn two() -> u8 {
    2
}

/// The `[rules.*]` tables of a policy file. A rule with no table is off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RulesFile {
    pub authorised_before_visit: Option<AuthorisedCfg>,
    pub pair_required: Option<PairCfg>,
    pub buddy_assigned: Option<PlainCfg>,
    pub signed_out: Option<SignedOutCfg>,
    pub after_dark: Option<AfterDarkCfg>,
    pub returned_or_phoned_in: Option<ReturnedCfg>,
    pub report_recorded_promptly: Option<PromptCfg>,
    pub incident_shared_same_day: Option<SameDayCfg>,
    pub incident_debriefed: Option<PlainCfg>,
    pub dsl_informed: Option<DslCfg>,
    pub immediate_danger_999: Option<PlainCfg>,
    pub no_one_home_note: Option<PlainCfg>,
    pub transport_two_staff: Option<TwoStaffCfg>,
    pub transport_rear_seat: Option<PlainCfg>,
    pub transport_car_seat: Option<CarSeatCfg>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Free text: where the policy comes from (title, version, date).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub rules: RulesFile,
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = toml_file::read(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml_file::parse(Path::new(path), text)?;
        file.check(path)?;
        Ok(file)
    }

    fn check(&self, path: &str) -> Result<(), PolicyError> {
        let invalid = |rule: RuleId, key: &'static str, reason: &str| {
            FileError::invalid(
                Path::new(path),
                format!("rules.{}.{key}", rule.as_str()),
                reason,
            )
        };
        let r = &self.rules;
        if let Some(c) = &r.authorised_before_visit
            && c.roles.is_empty()
        {
            return Err(invalid(
                RuleId::AuthorisedBeforeVisit,
                "roles",
                "name at least one role",
            ));
        }
        if let Some(c) = &r.signed_out
            && c.fields.is_empty()
        {
            return Err(invalid(
                RuleId::SignedOut,
                "fields",
                "name at least one sign-out field",
            ));
        }
        if let Some(c) = &r.after_dark
            && (c.cutoff.is_some() == c.sunset)
        {
            return Err(invalid(
                RuleId::AfterDark,
                "cutoff",
                "give either `cutoff = \"HH:MM\"` or `sunset = true`, not both or neither",
            ));
        }
        for (rule, key, value) in [
            (
                RuleId::ReturnedOrPhonedIn,
                "grace_minutes",
                r.returned_or_phoned_in.as_ref().map(|c| c.grace_minutes),
            ),
            (
                RuleId::ReportRecordedPromptly,
                "within_hours",
                r.report_recorded_promptly.as_ref().map(|c| c.within_hours),
            ),
            (
                RuleId::DslInformed,
                "immediate_within_minutes",
                r.dsl_informed.as_ref().map(|c| c.immediate_within_minutes),
            ),
        ] {
            if value.is_some_and(|v| v < 0) {
                return Err(invalid(rule, key, "must be 0 or more"));
            }
        }
        if let Some(c) = &r.transport_car_seat
            && !(c.under_height_cm.is_finite() && c.under_height_cm > 0.0)
        {
            return Err(invalid(
                RuleId::TransportCarSeat,
                "under_height_cm",
                "must be a height in centimetres",
            ));
        }
        Ok(())
    }
}
