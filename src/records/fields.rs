//! Field types shared by the three record kinds: identifiers, times, dates, UPNs, URNs.
//!
//! Each type validates itself while it is deserialised, so a bad value is caught with the
//! exact JSON path that serde reports. A failed check produces a [`RuleViolation`] whose
//! `Display` carries the rule id in front of the message (see [`RULE_SEPARATOR`]); the
//! validator in `parse.rs` splits them apart again. Messages never repeat the value itself:
//! a value in a wrong field may be a child's name.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Rule;

/// Separates the rule id from the message inside a serde custom error.
pub(crate) const RULE_SEPARATOR: char = '\u{1f}';

/// A field-level check that failed: the rule and a message free of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    pub rule: Rule,
    pub message: String,
}

impl RuleViolation {
    pub fn new(rule: Rule, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }
}

impl fmt::Display for RuleViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.rule, RULE_SEPARATOR, self.message)
    }
}

/// True when `s` is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_record_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = RuleViolation;
            fn try_from(s: String) -> Result<Self, RuleViolation> {
                let check: fn(&str) -> Result<(), RuleViolation> = $check;
                check(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A source's stable id: 1–128 characters of `[A-Za-z0-9._:-]`.
    RecordId,
    |s| {
        if is_valid_record_id(s) {
            Ok(())
        } else {
            Err(RuleViolation::new(
                Rule::IdFormat,
                "an id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            ))
        }
    }
);

string_newtype!(
    /// A staff member's id in the school's own system (same charset as record ids).
    StaffId,
    |s| {
        if is_valid_record_id(s) {
            Ok(())
        } else {
            Err(RuleViolation::new(
                Rule::IdFormat,
                "a staff id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            ))
        }
    }
);

string_newtype!(
    /// The trust's short name, matching its folder under `mappings/`: `[a-z0-9-]`, 1–64.
    TrustId,
    |s| {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(RuleViolation::new(
                Rule::TrustFormat,
                "a trust must be its short name: 1-64 characters of a-z 0-9 -",
            ))
        }
    }
);

string_newtype!(
    /// A school's Unique Reference Number: 6 or 7 digits.
    Urn,
    |s| {
        if (6..=7).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err(RuleViolation::new(Rule::UrnFormat, "a school URN is 6 or 7 digits"))
        }
    }
);

string_newtype!(
    /// A Unique Pupil Number: 13 characters, a DfE check letter first; a temporary UPN
    /// ends in a letter.
    Upn,
    check_upn
);

/// The 23 letters the DfE uses for check letters and temporary-UPN endings, by value.
const UPN_LETTERS: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

/// The check letter a UPN's characters 2–13 call for (None if they are malformed).
pub fn upn_check_letter(rest: &[u8]) -> Option<u8> {
    if rest.len() != 12 {
        return None;
    }
    let mut sum = 0u32;
    for (i, &c) in rest.iter().enumerate() {
        let value = if i < 11 || c.is_ascii_digit() {
            if !c.is_ascii_digit() {
                return None;
            }
            u32::from(c - b'0')
        } else {
            UPN_LETTERS.iter().position(|&l| l == c)? as u32
        };
        sum += value * (i as u32 + 2);
    }
    Some(UPN_LETTERS[(sum % 23) as usize])
}

fn check_upn(s: &str) -> Result<(), RuleViolation> {
    let b = s.as_bytes();
    if b.len() != 13 {
        return Err(RuleViolation::new(
            Rule::UpnFormat,
            "a UPN is 13 characters: a check letter, 11 digits, then a digit or (temporary UPN) a letter",
        ));
    }
    match upn_check_letter(&b[1..]) {
        None => Err(RuleViolation::new(
            Rule::UpnFormat,
            "a UPN is 13 characters: a check letter, 11 digits, then a digit or (temporary UPN) a letter other than I, O, S",
        )),
        Some(expected) if expected == b[0] => Ok(()),
        Some(_) => Err(RuleViolation::new(
            Rule::UpnCheckLetter,
            "the UPN's check letter (character 1) does not match its other 12 characters (DfE modulus 23)",
        )),
    }
}

/// A time with its UTC offset, exactly as RFC 3339 requires (`2026-03-02T09:15:00+00:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<FixedOffset>);

impl Timestamp {
    pub fn parse(s: &str) -> Result<Self, RuleViolation> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self(t));
        }
        let without_offset = [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S%.f",
        ]
        .iter()
        .any(|f| NaiveDateTime::parse_from_str(s, f).is_ok());
        if without_offset {
            Err(RuleViolation::new(
                Rule::TimeOffsetRequired,
                "a time must carry its UTC offset (RFC 3339), e.g. 2026-03-02T09:15:00+00:00 or ...Z",
            ))
        } else {
            Err(RuleViolation::new(
                Rule::TimeFormat,
                "not an RFC 3339 time with offset, e.g. 2026-03-02T09:15:00+00:00",
            ))
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 time with a UTC offset"
        })
    }
}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub NaiveDate);

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.format("%Y-%m-%d").to_string())
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .ok()
            .filter(|_| s.len() == 10)
            .map(Date)
            .ok_or_else(|| {
                serde::de::Error::custom(RuleViolation::new(
                    Rule::DateFormat,
                    "a date must be YYYY-MM-DD",
                ))
            })
    }
}

impl JsonSchema for Date {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Date".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date" })
    }
}

/// A record's revision: an integer, 1 or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Revision(pub u32);

impl<'de> Deserialize<'de> for Revision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u64(RevisionVisitor)
    }
}

struct RevisionVisitor;

impl RevisionVisitor {
    fn range<E: serde::de::Error>() -> E {
        E::custom(RuleViolation::new(
            Rule::RevisionRange,
            "revision must be an integer from 1 to 4294967295",
        ))
    }
}

impl serde::de::Visitor<'_> for RevisionVisitor {
    type Value = Revision;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer revision, 1 or more")
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Revision, E> {
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Revision(n)),
            _ => Err(Self::range()),
        }
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Revision, E> {
        u64::try_from(n)
            .map_err(|_| Self::range())
            .and_then(|n| self.visit_u64(n))
    }
}

impl JsonSchema for Revision {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Revision".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 1, "maximum": 4294967295u64 })
    }
}

macro_rules! schema_pattern {
    ($name:ident, $pattern:expr, $desc:expr) => {
        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $desc
                })
            }
        }
    };
}

schema_pattern!(
    RecordId,
    "^[A-Za-z0-9._:-]{1,128}$",
    "the source's stable id"
);
schema_pattern!(
    StaffId,
    "^[A-Za-z0-9._:-]{1,128}$",
    "the staff member's id in the school's system"
);
schema_pattern!(
    TrustId,
    "^[a-z0-9-]{1,64}$",
    "the trust's short name (its folder under mappings/)"
);
schema_pattern!(Urn, "^[0-9]{6,7}$", "the school's URN");
schema_pattern!(
    Upn,
    "^[ABCDEFGHJKLMNPQRTUVWXYZ][0-9]{11}[0-9ABCDEFGHJKLMNPQRTUVWXYZ]$",
    "Unique Pupil Number; the first letter is the DfE modulus-23 check letter"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upn_check_letters_from_dfe_examples() {
        // A support article gives Q for this one, but its own sum is off by one: 266 mod 23 = 13 = P.
        assert!(check_upn("P207000016049").is_ok());
        assert_eq!(
            check_upn("Q207000016049").unwrap_err().rule,
            Rule::UpnCheckLetter
        );
        assert!(check_upn("B801200005001").is_ok());
        assert_eq!(
            check_upn("B207000016049").unwrap_err().rule,
            Rule::UpnCheckLetter
        );
        assert_eq!(
            check_upn("A801200005001").unwrap_err().rule,
            Rule::UpnCheckLetter
        );
        assert_eq!(
            check_upn("X80120000A001").unwrap_err().rule,
            Rule::UpnFormat
        );
        assert_eq!(check_upn("B80120000500").unwrap_err().rule, Rule::UpnFormat);
    }

    #[test]
    fn temporary_upn_ends_in_a_letter() {
        let rest = b"80120000500A";
        let letter = upn_check_letter(rest).unwrap();
        let upn = format!("{}{}", letter as char, std::str::from_utf8(rest).unwrap());
        assert!(check_upn(&upn).is_ok());
        // I, O and S are never used.
        assert_eq!(
            check_upn("A80120000500I").unwrap_err().rule,
            Rule::UpnFormat
        );
    }

    #[test]
    fn times_need_an_offset() {
        assert!(Timestamp::parse("2026-03-02T09:15:00+00:00").is_ok());
        assert!(Timestamp::parse("2026-03-02T09:15:00Z").is_ok());
        assert_eq!(
            Timestamp::parse("2026-03-02T09:15:00").unwrap_err().rule,
            Rule::TimeOffsetRequired
        );
        assert_eq!(
            Timestamp::parse("yesterday").unwrap_err().rule,
            Rule::TimeFormat
        );
    }

    #[test]
    fn ids() {
        assert!(is_valid_record_id("visit:2026-03.A_1"));
        assert!(!is_valid_record_id(""));
        assert!(!is_valid_record_id("has space"));
        assert!(!is_valid_record_id(&"a".repeat(129)));
    }
}
