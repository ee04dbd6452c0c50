//! From one JSON value to validated records: the kind, the typed fields (with the JSON path
//! of the first bad one), the cross-field rules, and the split of a visit report's embedded
//! incidents and flags into records of their own.

use chrono::{DateTime, FixedOffset};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::canonical::ContentHash;
use super::fields::{RULE_SEPARATOR, Timestamp, TrustId, Urn, is_valid_record_id};
use super::kinds::{Incident, Pupil, SafeguardingFlag, VisitOutcome, VisitReport, YearGroup};
use super::value::escape_pointer_token;
use super::{Kind, Record, Rule};

/// One thing wrong with a record: where (RFC 6901 pointer), which rule, and why.
/// The message never repeats the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {rule}: {message}", pointer.as_deref().unwrap_or("(file)"))]
pub struct FieldError {
    pub pointer: Option<String>,
    pub rule: Rule,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            pointer: Some(pointer.into()),
            rule,
            message: message.into(),
        }
    }

    /// An error about the file or stream rather than a place in a record.
    pub fn whole(rule: Rule, message: impl Into<String>) -> Self {
        Self {
            pointer: None,
            rule,
            message: message.into(),
        }
    }

    fn prefixed(mut self, prefix: &str) -> Self {
        self.pointer = Some(format!("{prefix}{}", self.pointer.unwrap_or_default()));
        self
    }
}

/// A record that passed every §1 rule, with its stored form and content hash.
#[derive(Debug, Clone)]
pub struct ParsedRecord {
    pub record: Record,
    /// RFC 8785 text of the record as stored: the submitted JSON, with a visit report's
    /// embedded records split out and an embedded record's inherited fields filled in.
    pub canonical: String,
    pub hash: ContentHash,
    /// SHA-256 of the canonical text of the stored record without its personal fields.
    pub projection: ContentHash,
}

/// The record's id, if the value carries a well-formed one (for error reports).
pub fn record_id_hint(value: &Value) -> Option<String> {
    value
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| is_valid_record_id(s))
        .map(str::to_owned)
}

/// The trust and school URN a value names, if well-formed (to file a rejection under).
pub fn attribution_hint(value: &Value) -> (Option<String>, Option<String>) {
    let trust = value
        .get("trust")
        .and_then(Value::as_str)
        .filter(|s| TrustId::try_from(s.to_string()).is_ok())
        .map(str::to_owned);
    let school = value
        .pointer("/school/urn")
        .and_then(Value::as_str)
        .filter(|s| Urn::try_from(s.to_string()).is_ok())
        .map(str::to_owned);
    (trust, school)
}

/// Validates one submitted record. A visit report yields itself followed by its embedded
/// incidents and flags; an error anywhere rejects the submission as a whole.
pub fn parse_submission(value: Value) -> Result<Vec<ParsedRecord>, Vec<FieldError>> {
    let Value::Object(mut map) = value else {
        return Err(vec![FieldError::new(
            "",
            Rule::NotAnObject,
            "a record must be a JSON object",
        )]);
    };
    let mut errors = Vec::new();
    scan_code_words(&map, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let kind = take_kind(&mut map).map_err(|e| vec![e])?;
    match kind {
        Kind::VisitReport => parse_visit(map),
        Kind::Incident => parse_one::<Incident>(map, Kind::Incident, "").map(|r| vec![r]),
        Kind::SafeguardingFlag => {
            parse_one::<SafeguardingFlag>(map, Kind::SafeguardingFlag, "").map(|r| vec![r])
        }
    }
}

fn take_kind(map: &mut Map<String, Value>) -> Result<Kind, FieldError> {
    match map.remove("kind") {
        None => Err(FieldError::new(
            "/kind",
            Rule::MissingField,
            "missing field `kind` (visit_report, incident or safeguarding_flag)",
        )),
        Some(Value::String(s)) => Kind::from_name(&s).ok_or_else(|| {
            FieldError::new(
                "/kind",
                Rule::UnknownKind,
                "kind must be visit_report, incident or safeguarding_flag",
            )
        }),
        Some(_) => Err(FieldError::new(
            "/kind",
            Rule::WrongType,
            "kind must be a string: visit_report, incident or safeguarding_flag",
        )),
    }
}

/// Typed record types that know their own cross-field rules.
trait Checked: DeserializeOwned {
    fn check(&self, errors: &mut Vec<FieldError>);
    fn into_record(self) -> Record;
}

/// Deserialises `map` (without `kind`) as `T`, runs its checks, and builds the stored form.
/// Both canonical texts are written first, so that the typed record can take the strings of
/// `map` instead of copying them.
fn parse_one<T: Checked>(
    mut map: Map<String, Value>,
    kind: Kind,
    prefix: &str,
) -> Result<ParsedRecord, Vec<FieldError>> {
    map.insert("kind".into(), Value::String(kind.as_str().into()));
    let content = Value::Object(map);
    let (canonical, projection) = super::personal::canonical_and_projection_text(&content);
    let Value::Object(mut map) = content else {
        // Built as an object just above.
        return Err(vec![FieldError::new(
            prefix,
            Rule::NotAnObject,
            "a record must be a JSON object",
        )]);
    };
    map.remove("kind");
    // Kept only when the canonical text could not stand in for it to explain a failure.
    let kept = (!reads_back_equal_object(&map)).then(|| Value::Object(map.clone()));
    // The plain deserialiser is fast; the path-tracking one runs only to explain a failure.
    let typed: T = match T::deserialize(Value::Object(map)) {
        Ok(t) => t,
        Err(_) => {
            let value = kept.unwrap_or_else(|| value_without_kind(&canonical));
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Err(e) => classify_serde_error(e),
                Ok(_) => FieldError::new("", Rule::InvalidValue, "the record could not be read"),
            };
            return Err(vec![err.prefixed(prefix)]);
        }
    };
    let mut errors = Vec::new();
    typed.check(&mut errors);
    if !errors.is_empty() {
        return Err(errors.into_iter().map(|e| e.prefixed(prefix)).collect());
    }
    let hash = ContentHash::of_canonical(&canonical);
    let projection = ContentHash::of_canonical(&projection);
    Ok(ParsedRecord {
        record: typed.into_record(),
        canonical,
        hash,
        projection,
    })
}

fn reads_back_equal_object(map: &Map<String, Value>) -> bool {
    map.values().all(super::reads_back_equal)
}

/// The value a canonical text was written from (one that reads back equal), without the
/// `kind` added before writing it.
fn value_without_kind(canonical: &str) -> Value {
    let mut value: Value = serde_json::from_str(canonical).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("kind");
    }
    value
}

fn parse_visit(mut map: Map<String, Value>) -> Result<Vec<ParsedRecord>, Vec<FieldError>> {
    let incidents = take_array(&mut map, "incidents");
    let flags = take_array(&mut map, "safeguarding_flags");
    let mut errors = Vec::new();
    let incidents = incidents.unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    let flags = flags.unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    // What an embedded record inherits from its visit, taken before the visit is consumed.
    let inherited = Inherited {
        id: map.get("id").cloned(),
        revision: map.get("revision").cloned(),
        trust: map.get("trust").cloned(),
        school: map.get("school").cloned(),
        pupil: map.get("pupil").cloned(),
    };
    let mut out = Vec::with_capacity(1 + incidents.len() + flags.len());
    match parse_one::<VisitReport>(map, Kind::VisitReport, "") {
        Ok(r) => out.push(r),
        Err(e) => errors.extend(e),
    }
    let mut seen_ids = std::collections::HashSet::new();
    for (field, kind, items) in [
        ("incidents", Kind::Incident, incidents),
        ("safeguarding_flags", Kind::SafeguardingFlag, flags),
    ] {
        for (i, item) in items.into_iter().enumerate() {
            let prefix = format!("/{field}/{i}");
            match parse_embedded(item, kind, &inherited, &prefix) {
                Ok(r) => {
                    if seen_ids.insert((kind, r.record.id().clone())) {
                        out.push(r);
                    } else {
                        errors.push(FieldError::new(
                            format!("{prefix}/id"),
                            Rule::DuplicateId,
                            format!("two embedded {kind} records share this id"),
                        ));
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn take_array(map: &mut Map<String, Value>, field: &str) -> Result<Vec<Value>, FieldError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(FieldError::new(
            format!("/{field}"),
            Rule::WrongType,
            format!("`{field}` must be an array of records"),
        )),
    }
}

struct Inherited {
    id: Option<Value>,
    revision: Option<Value>,
    trust: Option<Value>,
    school: Option<Value>,
    pupil: Option<Value>,
}

/// An embedded record may leave out `kind`, `trust`, `school`, `revision` and `visit_id`
/// (and a flag its `pupil`): they come from the visit. Where given, they must agree.
fn parse_embedded(
    item: Value,
    kind: Kind,
    parent: &Inherited,
    prefix: &str,
) -> Result<ParsedRecord, Vec<FieldError>> {
    let Value::Object(mut map) = item else {
        return Err(vec![FieldError::new(
            prefix,
            Rule::NotAnObject,
            format!("an embedded {kind} must be a JSON object"),
        )]);
    };
    let mut errors = Vec::new();
    match map.remove("kind") {
        None => {}
        Some(Value::String(s)) if s == kind.as_str() => {}
        Some(_) => errors.push(FieldError::new(
            format!("{prefix}/kind"),
            Rule::EmbeddedMismatch,
            format!("an embedded record here must be of kind {kind}"),
        )),
    }
    let mut inherit = |field: &str, from: &Option<Value>, must_match: bool| {
        let Some(parent_value) = from else { return };
        match map.get(field) {
            None => {
                map.insert(field.to_owned(), parent_value.clone());
            }
            Some(own) if must_match && own != parent_value => errors.push(FieldError::new(
                format!("{prefix}/{field}"),
                Rule::EmbeddedMismatch,
                format!("`{field}` of an embedded record must match its visit report's"),
            )),
            Some(_) => {}
        }
    };
    inherit("trust", &parent.trust, true);
    inherit("school", &parent.school, true);
    inherit("visit_id", &parent.id, true);
    inherit("revision", &parent.revision, false);
    if kind == Kind::SafeguardingFlag {
        inherit("pupil", &parent.pupil, false);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    match kind {
        Kind::Incident => parse_one::<Incident>(map, kind, prefix),
        _ => parse_one::<SafeguardingFlag>(map, kind, prefix),
    }
}

/// Keys that would carry a code word, code phrase or password. Booleans saying that one was
/// agreed or used are fine; the word itself is never accepted, wherever it sits.
fn scan_code_words(map: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let mut path: Vec<Segment<'_>> = Vec::new();
    scan_object(&mut path, map, errors);
}

/// One step of the path to where the scan is: a key, or an array index.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn scan_object<'a>(
    path: &mut Vec<Segment<'a>>,
    map: &'a Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in map {
        if !value.is_boolean() && names_a_code_word(key) {
            let pointer: String = path
                .iter()
                .chain(std::iter::once(&Segment::Key(key)))
                .map(|s| match s {
                    Segment::Key(k) => format!("/{}", escape_pointer_token(k)),
                    Segment::Index(i) => format!("/{i}"),
                })
                .collect();
            errors.push(FieldError::new(
                pointer,
                Rule::CodeWordForbidden,
                "a code word, code phrase or password is never accepted or stored; record only `code_word_agreed: true`",
            ));
        }
        if value.is_object() || value.is_array() {
            scan_value(path, Segment::Key(key), value, errors);
        }
    }
}

fn scan_value<'a>(
    path: &mut Vec<Segment<'a>>,
    segment: Segment<'a>,
    value: &'a Value,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(m) => {
            path.push(segment);
            scan_object(path, m, errors);
            path.pop();
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            path.push(segment);
            for (i, item) in items.iter().enumerate() {
                if item.is_object() || item.is_array() {
                    scan_value(path, Segment::Index(i), item, errors);
                }
            }
            path.pop();
        }
        _ => {}
    }
}

fn names_a_code_word(key: &str) -> bool {
    const WORDS: [&str; 7] = [
        "codeword",
        "safeword",
        "codephrase",
        "safephrase",
        "password",
        "passphrase",
        "secretword",
    ];
    // Every pattern holds "word" or "phrase": most keys are ruled out without allocating.
    let lower_has = |needle: &[u8]| {
        key.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if key.len() < 8 || !(lower_has(b"word") || lower_has(b"phrase")) {
        return false;
    }
    let norm: String = key
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    WORDS.iter().any(|w| norm.contains(w))
}

/// Turns a serde error into a rule and a message that does not repeat the value.
fn classify_serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let mut pointer = String::new();
    for seg in err.path().iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            serde_path_to_error::Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer_token(key));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let msg = err.into_inner().to_string();
    if let Some((rule, message)) = msg.split_once(RULE_SEPARATOR)
        && let Some(rule) = Rule::from_id(rule)
    {
        return FieldError::new(pointer, rule, message);
    }
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_owned);
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let field = quoted(rest).unwrap_or_default();
        let token = format!("/{}", escape_pointer_token(&field));
        if !pointer.ends_with(&token) {
            pointer.push_str(&token);
        }
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', ""));
        let message = match expected {
            Some(e) => format!(
                "unknown field `{field}` (put data of your own under `extensions`); expected {e}"
            ),
            None => format!("unknown field `{field}`"),
        };
        return FieldError::new(pointer, Rule::UnknownField, message);
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let field = quoted(rest).unwrap_or_default();
        pointer.push('/');
        pointer.push_str(&escape_pointer_token(&field));
        return FieldError::new(
            pointer,
            Rule::MissingField,
            format!("missing field `{field}`"),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', ""))
            .unwrap_or_default();
        return FieldError::new(
            pointer,
            Rule::UnknownEnumValue,
            format!("not an allowed value; expected {expected}"),
        );
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let found = describe_found(rest);
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        return FieldError::new(
            pointer,
            Rule::WrongType,
            format!("expected {}, found {found}", friendly_expected(expected)),
        );
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        return FieldError::new(
            pointer,
            Rule::InvalidValue,
            format!(
                "value out of range; expected {}",
                friendly_expected(expected)
            ),
        );
    }
    if msg.starts_with("data did not match any variant of untagged enum YearGroup") {
        return FieldError::new(pointer, Rule::YearGroup, YEAR_GROUP_MESSAGE);
    }
    // Anything else serde says is about shape, never about a value.
    FieldError::new(pointer, Rule::InvalidValue, msg)
}

fn describe_found(rest: &str) -> &'static str {
    const FOUND: [(&str, &str); 8] = [
        ("string", "a string"),
        ("integer", "an integer"),
        ("floating point", "a number with a fraction"),
        ("boolean", "true/false"),
        ("map", "an object"),
        ("sequence", "an array"),
        ("null", "null"),
        ("unit", "null"),
    ];
    FOUND
        .iter()
        .find(|(p, _)| rest.starts_with(p))
        .map_or("another type", |(_, d)| d)
}

fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".into(),
        "u64" | "u32" => "a whole number of 0 or more".into(),
        "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        e => e.replace('`', ""),
    }
}

const YEAR_GROUP_MESSAGE: &str = "a year group is N1, N2, R, or 1 to 14";

fn check_year_group(pupil: &Pupil, prefix: &str, errors: &mut Vec<FieldError>) {
    let ok = match &pupil.year_group {
        None => true,
        Some(YearGroup::Number(n)) => (1..=14).contains(n),
        Some(YearGroup::Label(s)) => {
            matches!(s.as_str(), "N1" | "N2" | "R")
                || s.parse::<u8>()
                    .is_ok_and(|n| (1..=14).contains(&n) && !s.starts_with('0'))
        }
    };
    if !ok {
        errors.push(FieldError::new(
            format!("{prefix}/year_group"),
            Rule::YearGroup,
            YEAR_GROUP_MESSAGE,
        ));
    }
}

/// `later` must not be before `earlier`; the error points at `later`'s field.
fn not_before(
    earlier: Option<Timestamp>,
    later: Option<Timestamp>,
    later_pointer: &str,
    what: &str,
    errors: &mut Vec<FieldError>,
) {
    if let (Some(a), Some(b)) = (earlier, later)
        && b.0 < a.0
    {
        errors.push(FieldError::new(later_pointer, Rule::TimeOrder, what));
    }
}

fn utc(t: Option<Timestamp>) -> Option<DateTime<FixedOffset>> {
    t.map(|t| t.0)
}

impl Checked for VisitReport {
    fn check(&self, errors: &mut Vec<FieldError>) {
        check_year_group(&self.pupil, "/pupil", errors);
        if self.staff.is_empty() {
            errors.push(FieldError::new(
                "/staff",
                Rule::StaffRequired,
                "a visit report names at least one member of staff",
            ));
        } else {
            let leads: Vec<usize> = (0..self.staff.len())
                .filter(|&i| self.staff[i].lead)
                .collect();
            match leads.as_slice() {
                [_] => {}
                [] => errors.push(FieldError::new(
                    "/staff",
                    Rule::OneLead,
                    "exactly one member of staff must have `lead: true`; none has",
                )),
                [_, second, ..] => errors.push(FieldError::new(
                    format!("/staff/{second}/lead"),
                    Rule::OneLead,
                    "exactly one member of staff must have `lead: true`; this is a second",
                )),
            }
        }
        let visit = self.visit.clone().unwrap_or_default();
        if self.outcome == VisitOutcome::Cancelled {
            if self.cancellation.is_none() {
                errors.push(FieldError::new(
                    "/cancellation",
                    Rule::CancellationRequired,
                    "a cancelled visit gives `cancellation.reason`",
                ));
            }
        } else if self.visit.is_none() {
            errors.push(FieldError::new(
                "/visit",
                Rule::VisitTimesRequired,
                "a visit that took place gives `visit.arrived_at` and `visit.departed_at`",
            ));
        } else {
            for (field, value) in [
                ("arrived_at", visit.arrived_at),
                ("departed_at", visit.departed_at),
            ] {
                if value.is_none() {
                    errors.push(FieldError::new(
                        format!("/visit/{field}"),
                        Rule::VisitTimesRequired,
                        format!("a visit that took place gives `visit.{field}`"),
                    ));
                }
            }
        }
        not_before(
            visit.arrived_at,
            visit.departed_at,
            "/visit/departed_at",
            "departed_at is before arrived_at",
            errors,
        );
        not_before(
            visit.departed_at,
            visit.returned_at,
            "/visit/returned_at",
            "returned_at is before departed_at",
            errors,
        );
        not_before(
            visit.arrived_at,
            visit.phoned_in_at,
            "/visit/phoned_in_at",
            "phoned_in_at is before arrived_at",
            errors,
        );
        not_before(
            visit.arrived_at,
            Some(self.recorded_at),
            "/recorded_at",
            "recorded_at is before the visit's arrived_at",
            errors,
        );
        if let Some(s) = &self.sign_out {
            if let (Some(left), Some(arrived)) = (utc(s.left_school_at), utc(visit.arrived_at))
                && arrived < left
            {
                errors.push(FieldError::new(
                    "/sign_out/left_school_at",
                    Rule::TimeOrder,
                    "left_school_at is after the visit's arrived_at",
                ));
            }
            not_before(
                s.expected_arrival,
                s.expected_departure,
                "/sign_out/expected_departure",
                "expected_departure is before expected_arrival",
                errors,
            );
            not_before(
                s.expected_departure,
                s.expected_return,
                "/sign_out/expected_return",
                "expected_return is before expected_departure",
                errors,
            );
        }
        if let Some(t) = &self.transport
            && let Some(h) = t.child_height_cm
            && !(h.is_finite() && h > 0.0 && h < 300.0)
        {
            errors.push(FieldError::new(
                "/transport/child_height_cm",
                Rule::InvalidValue,
                "child_height_cm must be a height in centimetres (above 0, below 300)",
            ));
        }
    }

    fn into_record(self) -> Record {
        Record::VisitReport(Box::new(self))
    }
}

impl Checked for Incident {
    fn check(&self, errors: &mut Vec<FieldError>) {
        for (field, value) in [
            (
                "reported_to_line_manager_at",
                self.reported_to_line_manager_at,
            ),
            (
                "shared_with_headteacher_at",
                self.shared_with_headteacher_at,
            ),
            ("debrief_at", self.debrief_at),
        ] {
            not_before(
                Some(self.occurred_at),
                value,
                &format!("/{field}"),
                &format!("{field} is before occurred_at"),
                errors,
            );
        }
    }

    fn into_record(self) -> Record {
        Record::Incident(Box::new(self))
    }
}

impl Checked for SafeguardingFlag {
    fn check(&self, errors: &mut Vec<FieldError>) {
        check_year_group(&self.pupil, "/pupil", errors);
        not_before(
            Some(self.raised_at),
            self.reported_to_dsl_at,
            "/reported_to_dsl_at",
            "reported_to_dsl_at is before raised_at",
            errors,
        );
    }

    fn into_record(self) -> Record {
        Record::SafeguardingFlag(Box::new(self))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn visit() -> Value {
        json!({
            "kind": "visit_report", "id": "V-1", "revision": 1, "trust": "thrive",
            "school": {"urn": "117800", "name": "Stepney Primary School"},
            "pupil": {"upn": "X810229123728", "given_name": "Dylan", "year_group": 11},
            "purpose": "refusing_school", "outcome": "completed", "child_seen": true,
            "staff": [{"staff_id": "S800-099", "name": "Ellie Jenkin", "role": "pastoral_lead", "lead": true}],
            "visit": {"arrived_at": "2026-11-04T12:47:00+00:00", "departed_at": "2026-11-04T13:03:00+00:00"},
            "recorded_by": {"staff_id": "S800-099", "name": "Ellie Jenkin"},
            "recorded_at": "2026-11-04T17:02:00+00:00",
            "extensions": {"height": 150.0, "big": 12345678901234567890u64, "s": "a\u{1}\"b"},
        })
    }

    fn first_error(edit: impl FnOnce(&mut Value)) -> (Option<String>, Rule, String) {
        let mut v = visit();
        edit(&mut v);
        let e = parse_submission(v).unwrap_err().remove(0);
        (e.pointer, e.rule, e.message)
    }

    #[test]
    fn the_stored_texts_are_those_of_the_submitted_record() {
        let v = visit();
        let parsed = parse_submission(v.clone()).unwrap();
        assert_eq!(parsed[0].canonical, super::super::canonical_json(&v));
        assert_eq!(
            parsed[0].hash,
            ContentHash::of_canonical(&super::super::canonical_json(&v))
        );
        assert_eq!(
            parsed[0].projection,
            super::super::personal::projection_hash(&v)
        );
    }

    type Edit = fn(&mut Value);
    type Expected = (&'static str, Rule, &'static str);

    /// A failure is explained from the record as submitted, also where its canonical text
    /// would read back as another value (150.0 as 150, 2.0 as 2, big integers rounded).
    #[test]
    fn failures_are_explained_from_the_record_as_submitted() {
        let cases: [(Edit, Expected); 6] = [
            (
                |v| v["pupil"]["year_group"] = json!(7.0),
                ("/pupil/year_group", Rule::YearGroup, YEAR_GROUP_MESSAGE),
            ),
            (
                |v| v["revision"] = json!(2.0),
                (
                    "/revision",
                    Rule::WrongType,
                    "expected an integer revision, 1 or more, found a number with a fraction",
                ),
            ),
            (
                |v| v["revision"] = json!(12345678901234567890u64),
                (
                    "/revision",
                    Rule::RevisionRange,
                    "revision must be an integer from 1 to 4294967295",
                ),
            ),
            (
                |v| v["child_seen"] = json!(9007199254740993u64),
                (
                    "/child_seen",
                    Rule::WrongType,
                    "expected true or false, found an integer",
                ),
            ),
            (
                |v| v["staff"][0]["lead"] = json!("yes"),
                (
                    "/staff/0/lead",
                    Rule::WrongType,
                    "expected true or false, found a string",
                ),
            ),
            (
                |v| v["outcome"] = json!("gone"),
                (
                    "/outcome",
                    Rule::UnknownEnumValue,
                    "not an allowed value; expected one of completed, no_one_home, refused_entry, not_entered_unsafe, ended_for_safety, cancelled",
                ),
            ),
        ];
        for (edit, (pointer, rule, message)) in cases {
            assert_eq!(
                first_error(edit),
                (Some(pointer.to_owned()), rule, message.to_owned())
            );
            // The same with nothing that reads back differently.
            let plain = |v: &mut Value| {
                v["extensions"] = json!({"s": "x"});
                edit(v);
            };
            assert_eq!(
                first_error(plain),
                (Some(pointer.to_owned()), rule, message.to_owned())
            );
        }
    }
}
