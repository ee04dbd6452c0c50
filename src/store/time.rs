//! Times as the store keeps them: RFC 3339 text in UTC with microseconds
//! (`2026-11-25T08:15:00.123456Z`). The interface carries `DateTime<Utc>`; these turn it back
//! into exactly that text wherever a time is printed, exported or serialised.

use chrono::{DateTime, SecondsFormat, Utc};

/// The stored text of a time.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A stored time read back.
pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// `serialize_with` for a time: its stored text.
pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

/// `serialize_with` for an optional time.
pub fn serialize_option<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&format(t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_time_reads_back_as_the_same_text() {
        for text in [
            "2026-11-25T08:15:00.123456Z",
            "2026-11-25T08:15:00.000000Z",
            "2026-11-25T08:15:00.120000Z",
        ] {
            assert_eq!(format(&parse(text).unwrap()), text);
        }
        #[derive(serde::Serialize)]
        struct Row {
            #[serde(serialize_with = "serialize")]
            at: DateTime<Utc>,
            #[serde(serialize_with = "serialize_option")]
            done: Option<DateTime<Utc>>,
        }
        let at = parse("2026-11-25T08:15:00.100000Z").unwrap();
        let row = Row { at, done: None };
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"at":"2026-11-25T08:15:00.100000Z","done":null}"#
        );
    }
}
