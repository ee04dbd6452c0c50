//! Ed-Fi ODS/API v3: the shipped `connectors/edfi.toml` and the example deployment's mapping
//! (`examples/edfi/mappings`, trust `northfield`, destination `edfi`) against a fake of the
//! ODS/API's token endpoint and `studentSchoolAttendanceEvents` resource, through the real
//! `doorstep` binary.
//!
//! The fake follows the public facts (../shared/TARGETS.md, and the Ed-Fi data standard's
//! OpenAPI description):
//! - `POST {base}/oauth/token`, HTTP Basic with the client key and secret, form
//!   `grant_type=client_credentials`; answer `{access_token, token_type: "bearer",
//!   expires_in}`; then `Authorization: Bearer` on every call;
//! - `POST /data/v3/ed-fi/studentSchoolAttendanceEvents`: required
//!   `attendanceEventCategoryDescriptor` (a descriptor URI), `eventDate`,
//!   `schoolReference {schoolId}`, `sessionReference {schoolId, schoolYear, sessionName}`,
//!   `studentReference {studentUniqueId}`; optional `attendanceEventReason` (at most 255);
//!   `schoolId` and `schoolYear` are integers;
//! - an upsert by natural key (category, date, school, session, student): 201 with
//!   `Location` and `ETag` on create, 200 on a repeat;
//! - errors as problem details with `validationErrors` keyed by JSON path.
//!
//! Where the facts stop, the fake guesses (marked GUESS beside each): the problem details'
//! `type` and `title` strings (those of ODS/API 7), an unknown reference answered 409 with
//! `validationErrors` naming the reference's path, a 401 on an expired token, properties
//! outside the resource refused (stricter than an ODS/API may be, so that only what the map
//! names can pass), and 255 counted as .NET counts a string (UTF-16 code units).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fakes::requests;
use crate::harness::{Deployment, case_record};

const KEY: &str = "northfield-ods-key";
const SECRET: &str = "northfield-ods-secret";
const TOKEN_PATH: &str = "/oauth/token";
const EVENTS_PATH: &str = "/data/v3/ed-fi/studentSchoolAttendanceEvents";
const CATEGORY: &str = "uri://ed-fi.org/AttendanceEventCategoryDescriptor#";
/// Ed-Fi's default attendance event categories.
const CATEGORIES: &[&str] = &[
    "In Attendance",
    "Excused Absence",
    "Unexcused Absence",
    "Tardy",
    "Early departure",
    "Partial",
];
const SESSION: &str = "2025-2026 Summer Term";

// ---------------------------------------------------------------------------------------
// The fake.

struct Issued {
    token: String,
    until: Instant,
    uses: usize,
}

/// One stored studentSchoolAttendanceEvent.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    etag: u64,
    body: Value,
}

/// (category, eventDate, schoolId, schoolYear, sessionName, studentUniqueId).
type NaturalKey = (String, String, i64, i64, String, String);

struct State {
    /// Students the ODS has (studentUniqueId).
    students: BTreeSet<String>,
    /// Sessions: (schoolId, schoolYear, sessionName); their schools are the schools.
    sessions: BTreeSet<(i64, i64, String)>,
    issued: Vec<Issued>,
    /// `expires_in` of a new token, in seconds.
    token_life: u64,
    /// A token goes stale (server side) after this many calls.
    token_uses: Option<usize>,
    /// Answers forced on the next resource calls, after the token is checked.
    forced: VecDeque<ResponseTemplate>,
    /// Answers forced on the next token requests (the token service down, then busy).
    token_forced: VecDeque<ResponseTemplate>,
    /// When each token request came.
    token_calls: Vec<Instant>,
    events: BTreeMap<NaturalKey, Event>,
    created: usize,
    updated: usize,
    /// When each resource call came.
    calls: Vec<Instant>,
}

#[derive(Clone)]
struct EdFi {
    state: Arc<Mutex<State>>,
}

impl EdFi {
    fn new(students: &[&str]) -> EdFi {
        EdFi {
            state: Arc::new(Mutex::new(State {
                students: students.iter().map(|s| (*s).to_owned()).collect(),
                sessions: [255901001, 255901002]
                    .into_iter()
                    .map(|school| (school, 2026, SESSION.to_owned()))
                    .collect(),
                issued: Vec::new(),
                token_life: 1800,
                token_uses: None,
                forced: VecDeque::new(),
                token_forced: VecDeque::new(),
                token_calls: Vec::new(),
                events: BTreeMap::new(),
                created: 0,
                updated: 0,
                calls: Vec::new(),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// `POST /oauth/token`: client credentials, the client authenticated by HTTP Basic.
    fn token(&self, r: &Request) -> ResponseTemplate {
        {
            let mut s = self.state();
            s.token_calls.push(Instant::now());
            if let Some(answer) = s.token_forced.pop_front() {
                return answer;
            }
        }
        let oauth_error = |status: u16, error: &str| {
            ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
        };
        if !header(r, "content-type").starts_with("application/x-www-form-urlencoded") {
            return oauth_error(400, "invalid_request");
        }
        let form: BTreeMap<String, String> = url::form_urlencoded(&r.body);
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(400, "unsupported_grant_type");
        }
        if form.contains_key("client_secret") {
            // The secret belongs in the Basic header, not the form.
            return oauth_error(400, "invalid_request");
        }
        let expected = format!("Basic {}", B64.encode(format!("{KEY}:{SECRET}")));
        if header(r, "authorization") != expected {
            return oauth_error(401, "invalid_client");
        }
        let mut s = self.state();
        let token = format!("t{}", s.issued.len() + 1);
        let life = s.token_life;
        s.issued.push(Issued {
            token: token.clone(),
            until: Instant::now() + Duration::from_secs(life),
            uses: 0,
        });
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": life,
        }))
    }

    /// `POST /data/v3/ed-fi/studentSchoolAttendanceEvents`.
    fn post_event(&self, r: &Request) -> ResponseTemplate {
        let mut s = self.state();
        s.calls.push(Instant::now());
        let auth = header(r, "authorization");
        let uses_allowed = s.token_uses;
        let good = auth.strip_prefix("Bearer ").and_then(|t| {
            let issued = s.issued.iter_mut().find(|i| i.token == t)?;
            issued.uses += 1;
            (Instant::now() < issued.until && uses_allowed.is_none_or(|n| issued.uses <= n))
                .then_some(())
        });
        if good.is_none() {
            // GUESS: the problem details of an ODS/API 7 authentication failure.
            return problem(
                401,
                "urn:ed-fi:api:security:authentication",
                "Authentication Failed",
                "The caller could not be authenticated.",
                None,
            )
            .insert_header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
        }
        if let Some(forced) = s.forced.pop_front() {
            return forced;
        }
        if !header(r, "content-type").starts_with("application/json") {
            return ResponseTemplate::new(415);
        }
        let body: Value = match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(_) => {
                return problem(
                    400,
                    "urn:ed-fi:api:bad-request",
                    "Bad Request",
                    "The request could not be processed: the body is not JSON.",
                    None,
                );
            }
        };
        let key = match validate(&body) {
            Ok(k) => k,
            Err(errors) => {
                return problem(
                    400,
                    "urn:ed-fi:api:bad-request:data-validation-failed",
                    "Data Validation Failed",
                    "Data validation failed. See 'validationErrors' for details.",
                    Some(errors),
                );
            }
        };
        // References must resolve. GUESS: 409 naming the reference in validationErrors.
        let (_, _, school, year, session, student) = &key;
        let unresolved = if !s.sessions.iter().any(|(id, _, _)| id == school) {
            Some(("School", "$.schoolReference"))
        } else if !s.sessions.contains(&(*school, *year, session.clone())) {
            Some(("Session", "$.sessionReference"))
        } else if !s.students.contains(student) {
            Some(("Student", "$.studentReference"))
        } else {
            None
        };
        if let Some((entity, path)) = unresolved {
            return problem(
                409,
                "urn:ed-fi:api:conflict:unresolved-reference",
                "Unresolved Reference",
                &format!("The referenced '{entity}' item does not exist."),
                Some(json!({ path: [format!("{entity} reference could not be resolved.")] })),
            );
        }
        // The Location is built from the request's Host, as the ODS/API does.
        let origin = format!("http://{}", header(r, "host"));
        let n = s.events.len() + 1;
        let (status, event) = match s.events.get_mut(&key) {
            Some(existing) => {
                existing.etag += 1;
                existing.body = body;
                (200, existing.clone())
            }
            None => {
                let event = Event {
                    id: format!("{n:032x}"),
                    etag: 1,
                    body,
                };
                s.events.insert(key, event.clone());
                (201, event)
            }
        };
        if status == 201 {
            s.created += 1;
        } else {
            s.updated += 1;
        }
        ResponseTemplate::new(status)
            .insert_header("Location", format!("{origin}{EVENTS_PATH}/{}", event.id))
            .insert_header(
                "ETag",
                format!("\"{}\"", 5_250_000_000_000_000_000u64 + event.etag),
            )
    }
}

impl Respond for EdFi {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        match (r.method.as_str(), r.url.path()) {
            ("POST", TOKEN_PATH) => self.token(r),
            ("POST", EVENTS_PATH) => self.post_event(r),
            (_, TOKEN_PATH | EVENTS_PATH) => ResponseTemplate::new(405),
            _ => ResponseTemplate::new(404),
        }
    }
}

/// A problem details answer (RFC 7807, as the ODS/API writes it).
fn problem(
    status: u16,
    kind: &str,
    title: &str,
    detail: &str,
    errors: Option<Value>,
) -> ResponseTemplate {
    let mut body = json!({
        "detail": detail,
        "type": kind,
        "title": title,
        "status": status,
        "correlationId": "c0ffee00-0000-4000-8000-000000000000",
    });
    if let Some(e) = errors {
        body["validationErrors"] = e;
    }
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/problem+json")
        .set_body_json(body)
}

/// The resource's rules; its natural key, or `validationErrors` by JSON path.
fn validate(body: &Value) -> Result<NaturalKey, Value> {
    let mut errors: Map<String, Value> = Map::new();
    let mut fail = |path: &str, why: &str| {
        errors
            .entry(path.to_owned())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(why.into());
    };
    let Some(obj) = body.as_object() else {
        fail("$", "The request body must be an object.");
        return Err(Value::Object(errors));
    };
    let allowed = [
        "attendanceEventCategoryDescriptor",
        "eventDate",
        "schoolReference",
        "sessionReference",
        "studentReference",
        "attendanceEventReason",
        "educationalEnvironmentDescriptor",
        "eventDuration",
        "sectionAttendanceDuration",
        "arrivalTime",
        "departureTime",
    ];
    for k in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        fail(&format!("$.{k}"), "Is not a property of this resource.");
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let int = |v: Option<&Value>| v.and_then(Value::as_i64);
    let category = text(obj.get("attendanceEventCategoryDescriptor"));
    match &category {
        None => fail(
            "$.attendanceEventCategoryDescriptor",
            "attendanceEventCategoryDescriptor is required.",
        ),
        Some(c) => match c.strip_prefix(CATEGORY) {
            Some(code) if CATEGORIES.contains(&code) => {}
            Some(_) => fail(
                "$.attendanceEventCategoryDescriptor",
                "AttendanceEventCategoryDescriptor value does not exist.",
            ),
            None => fail(
                "$.attendanceEventCategoryDescriptor",
                "A descriptor is a URI: uri://ed-fi.org/AttendanceEventCategoryDescriptor#<code value>.",
            ),
        },
    }
    let date = text(obj.get("eventDate"));
    match &date {
        None => fail("$.eventDate", "eventDate is required."),
        Some(d) if d.len() != 10 || chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() => {
            fail("$.eventDate", "eventDate must be a date (YYYY-MM-DD).")
        }
        Some(_) => {}
    }
    let school = int(obj.get("schoolReference").and_then(|r| r.get("schoolId")));
    if school.is_none() {
        fail(
            "$.schoolReference.schoolId",
            "schoolId is required and must be an integer.",
        );
    }
    let session = obj.get("sessionReference");
    let session_school = int(session.and_then(|r| r.get("schoolId")));
    let year = int(session.and_then(|r| r.get("schoolYear")));
    let session_name = text(session.and_then(|r| r.get("sessionName")));
    if session_school.is_none() {
        fail(
            "$.sessionReference.schoolId",
            "schoolId is required and must be an integer.",
        );
    } else if school.is_some() && session_school != school {
        fail(
            "$.sessionReference.schoolId",
            "The session's schoolId must be the schoolReference's.",
        );
    }
    if year.is_none() {
        fail(
            "$.sessionReference.schoolYear",
            "schoolYear is required and must be an integer.",
        );
    }
    if session_name.is_none() {
        fail("$.sessionReference.sessionName", "sessionName is required.");
    }
    let student = text(
        obj.get("studentReference")
            .and_then(|r| r.get("studentUniqueId")),
    )
    .filter(|s| !s.is_empty() && s.chars().count() <= 32);
    if student.is_none() {
        fail(
            "$.studentReference.studentUniqueId",
            "studentUniqueId is required (at most 32 characters).",
        );
    }
    match obj.get("attendanceEventReason") {
        None => {}
        // GUESS: 255 as .NET counts a string.
        Some(Value::String(s)) if s.encode_utf16().count() <= 255 => {}
        Some(_) => fail(
            "$.attendanceEventReason",
            "attendanceEventReason must be a string of at most 255 characters.",
        ),
    }
    if !errors.is_empty() {
        return Err(Value::Object(errors));
    }
    Ok((
        category.unwrap_or_default(),
        date.unwrap_or_default(),
        school.unwrap_or_default(),
        year.unwrap_or_default(),
        session_name.unwrap_or_default(),
        student.unwrap_or_default(),
    ))
}

/// A form body's fields.
mod url {
    use std::collections::BTreeMap;

    pub fn form_urlencoded(body: &[u8]) -> BTreeMap<String, String> {
        String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((decode(k), decode(v)))
            })
            .collect()
    }

    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn header(r: &Request, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn body_of(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

// ---------------------------------------------------------------------------------------
// The deployment and its records.

const MAP: &str = "mappings/northfield/maps/edfi_attendance_event.toml";

/// A fake ODS/API knowing `students`, and the example deployment's mapping with `edfi`
/// (and its token endpoint) pointed at it.
async fn start(students: &[&str]) -> (MockServer, EdFi, Deployment) {
    let server = MockServer::start().await;
    let fake = EdFi::new(students);
    Mock::given(wiremock::matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut live = Deployment::copy_of("examples/edfi/mappings");
    // The token service is the deployment's override, as staging would give it.
    live.destination("northfield", "edfi", &server.uri())
        .token_url(
            "northfield",
            "edfi",
            &format!("{}{TOKEN_PATH}", server.uri()),
        )
        .env("NORTHFIELD_EDFI_KEY", KEY)
        .env("NORTHFIELD_EDFI_SECRET", SECRET)
        .max_wait(5.0);
    (server, fake, live)
}

const AMIRA: &str = "Z929410119001";
const OLIVER: &str = "A929410219004";

/// The example's illness visit at Northfield Academy (mapping case 01) as record `id`,
/// revision `revision`, with `summary`.
fn illness(id: &str, revision: u32, summary: &str) -> Value {
    let mut v = case_record(
        "examples/edfi/mappings/northfield",
        "01-illness-excused.toml",
    );
    v["id"] = id.into();
    v["revision"] = revision.into();
    v["summary"] = summary.into();
    v
}

/// The example's family-holiday visit at Riverside (mapping case 02).
fn holiday() -> Value {
    case_record(
        "examples/edfi/mappings/northfield",
        "02-family-holiday-unexcused.toml",
    )
}

/// The event the example's map builds for `illness(id, _, summary)`.
fn illness_event(id: &str, summary: &str) -> Value {
    json!({
        "attendanceEventCategoryDescriptor": "uri://ed-fi.org/AttendanceEventCategoryDescriptor#Excused Absence",
        "eventDate": "2026-05-12",
        "attendanceEventReason": format!("Home visit {id} (illness): {summary}"),
        "schoolReference": { "schoolId": 255901001 },
        "sessionReference": {
            "schoolId": 255901001,
            "schoolYear": 2026,
            "sessionName": SESSION,
        },
        "studentReference": { "studentUniqueId": AMIRA },
    })
}

const SEEN: &str =
    "Pupil in bed with a high temperature; mother will ring the office each morning.";

/// Deliveries to `edfi` by state.
async fn edfi_states(live: &Deployment) -> BTreeMap<String, u64> {
    live.states()
        .await
        .remove("northfield/edfi")
        .unwrap_or_default()
}

fn only(state: &str, n: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([(state.to_owned(), n)])
}

// ---------------------------------------------------------------------------------------
// 1. Create.

#[tokio::test(flavor = "multi_thread")]
async fn an_absence_visit_creates_an_attendance_event_with_exactly_the_mapped_body() {
    let (server, fake, live) = start(&[AMIRA]).await;
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1, "{}", run.summary());
    assert_eq!(edfi_states(&live).await, only("delivered", 1));

    let tokens = requests(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 1);
    let form = String::from_utf8_lossy(&tokens[0].body).into_owned();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(
        !form.contains(SECRET),
        "the secret goes in the Basic header"
    );

    let calls = requests(&server, EVENTS_PATH).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(header(&calls[0], "authorization"), "Bearer t1");
    assert!(header(&calls[0], "content-type").starts_with("application/json"));
    assert_eq!(
        body_of(&calls[0]),
        illness_event("nlt-visit-001", SEEN),
        "only what the map names is sent; schoolId and schoolYear are numbers"
    );

    let event = {
        let s = fake.state();
        assert_eq!((s.created, s.updated), (1, 0));
        s.events.values().next().unwrap().clone()
    };
    let show = &live.deliveries().await[0];
    assert_eq!(show["record_id"], "nlt-visit-001");
    assert_eq!(show["state"], "delivered");
    assert_eq!(
        show["target_id"],
        format!("{}{EVENTS_PATH}/{}", server.uri(), event.id),
        "the Location is kept as the target id"
    );
}

/// The example's drop folder as it ships: both schools, each with its own Ed-Fi schoolId.
#[tokio::test(flavor = "multi_thread")]
async fn the_examples_records_reach_both_schools() {
    let (server, fake, live) = start(&[AMIRA, OLIVER]).await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/edfi/drop/northfield-2026-05-13.json"),
    )
    .unwrap();
    live.write("drop/northfield-2026-05-13.json", &text);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 2));
    let mut got: Vec<(i64, String, String)> = requests(&server, EVENTS_PATH)
        .await
        .iter()
        .map(|r| {
            let b = body_of(r);
            (
                b["schoolReference"]["schoolId"].as_i64().unwrap(),
                b["eventDate"].as_str().unwrap().to_owned(),
                b["attendanceEventCategoryDescriptor"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                255901001,
                "2026-05-12".to_owned(),
                format!("{CATEGORY}Excused Absence")
            ),
            (
                255901002,
                "2026-05-13".to_owned(),
                format!("{CATEGORY}Unexcused Absence")
            ),
        ]
    );
    assert_eq!(fake.state().created, 2);
}

// ---------------------------------------------------------------------------------------
// 2. Update by a later revision.

/// The ODS's token endpoint down (503), then busy (429, `Retry-After: 1`): retried with the
/// destination's backoff and the endpoint's wait, never a dead letter; then the event goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_that_fails_first_is_retried() {
    let (_server, fake, mut live) = start(&[AMIRA]).await;
    live.max_wait(20.0);
    fake.state().token_forced.extend([
        ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"})),
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
    ]);
    live.drop_records("v.json", &[illness("nf-tok", 1, "Seen.")]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        edfi_states(&live).await,
        BTreeMap::from([("delivered".to_owned(), 1)])
    );
    let s = fake.state();
    assert_eq!(s.token_calls.len(), 3, "503, 429, then a token");
    assert!(
        s.token_calls[2] - s.token_calls[1] >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(s.created, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_revision_is_posted_again_and_the_ods_updates_the_event() {
    let (server, fake, live) = start(&[AMIRA]).await;
    live.drop_records("v1.json", &[illness("nlt-visit-001", 1, SEEN)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);

    let later = "Back in school tomorrow; GP letter to follow.";
    live.drop_records("v2.json", &[illness("nlt-visit-001", 2, later)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 2));

    let calls = requests(&server, EVENTS_PATH).await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].method.as_str(), "POST", "an upsert: posted again");
    assert_eq!(body_of(&calls[1]), illness_event("nlt-visit-001", later));
    let s = fake.state();
    assert_eq!(
        (s.created, s.updated),
        (1, 1),
        "the repeat was an update (200)"
    );
    assert_eq!(s.events.len(), 1);
    let event = s.events.values().next().unwrap();
    assert_eq!(event.etag, 2);
    assert_eq!(
        event.body["attendanceEventReason"],
        format!("Home visit nlt-visit-001 (illness): {later}")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Token expiry and renewal.

/// A token with `expires_in: 61` is renewed a minute before it expires: a retry two seconds
/// later asks for exactly one new token and is delivered with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_about_to_expire_is_renewed_once() {
    let (server, fake, live) = start(&[AMIRA]).await;
    {
        let mut s = fake.state();
        s.token_life = 61;
        s.forced
            .push_back(ResponseTemplate::new(503).insert_header("Retry-After", "2"));
    }
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 1));
    assert_eq!(requests(&server, TOKEN_PATH).await.len(), 2);
    let auth: Vec<String> = requests(&server, EVENTS_PATH)
        .await
        .iter()
        .map(|r| header(r, "authorization"))
        .collect();
    assert_eq!(auth, ["Bearer t1", "Bearer t2"]);
}

/// A 401 on a token the ODS no longer takes fetches exactly one new token; the request goes
/// again in the same attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_401_on_a_stale_token_fetches_one_new_token_and_delivers() {
    let (server, fake, live) = start(&[AMIRA, OLIVER]).await;
    fake.state().token_uses = Some(1);
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN), holiday()]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 2));
    assert_eq!(
        requests(&server, TOKEN_PATH).await.len(),
        2,
        "exactly one new token after the 401"
    );
    let auth: Vec<String> = requests(&server, EVENTS_PATH)
        .await
        .iter()
        .map(|r| header(r, "authorization"))
        .collect();
    assert_eq!(auth, ["Bearer t1", "Bearer t1", "Bearer t2"]);
    assert_eq!(fake.state().created, 2);
    for show in live.deliveries().await {
        assert_eq!(
            show["attempts"], 1,
            "the 401 and its retry are one attempt: {show}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. A student the ODS does not have.

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_student_is_a_dead_letter_with_the_problem_details_kept() {
    let (server, fake, live) = start(&[OLIVER]).await;
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1, "a dead letter is exit 1: {}", run.stderr);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(requests(&server, EVENTS_PATH).await.len(), 1, "not retried");
    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["record_id"], "nlt-visit-001");
    assert_eq!(dead[0]["destination"], "edfi");
    assert_eq!(dead[0]["last_status"], 409);
    let reason = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("409") && reason.contains("The referenced 'Student' item does not exist."),
        "the status and the ODS's detail: {reason}"
    );
    let show = live.show(dead[0]["id"].as_i64().unwrap()).await;
    let saved: Value = serde_json::from_str(show["response"].as_str().unwrap()).unwrap();
    assert_eq!(saved["type"], "urn:ed-fi:api:conflict:unresolved-reference");
    assert!(
        saved["validationErrors"]["$.studentReference"].is_array(),
        "validationErrors kept: {saved}"
    );
    assert!(fake.state().events.is_empty());
}

// ---------------------------------------------------------------------------------------
// 5. A validation failure, the map fixed, the dead letter replayed.

/// A map that sends the school id and year as the strings `vars` hold: the ODS refuses them
/// (400 with validationErrors); the shipped map (numbers through its `integer` value map)
/// is put back, the dead letter replayed, and the event created.
#[tokio::test(flavor = "multi_thread")]
async fn a_validation_failure_is_dead_then_replayed_after_the_map_is_fixed() {
    let (server, fake, live) = start(&[AMIRA]).await;
    let shipped = std::fs::read_to_string(live.path(MAP)).unwrap();
    let strings = shipped.replace(", map = \"integer\"", "");
    assert_ne!(strings, shipped);
    live.write(MAP, &strings);
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    let first = requests(&server, EVENTS_PATH).await;
    assert_eq!(
        body_of(&first[0])["schoolReference"]["schoolId"],
        "255901001"
    );
    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["last_status"], 400);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("Data validation failed"),
        "{}",
        dead[0]
    );
    let id = dead[0]["id"].as_i64().unwrap();
    let saved: Value =
        serde_json::from_str(live.show(id).await["response"].as_str().unwrap()).unwrap();
    let paths: BTreeSet<&str> = saved["validationErrors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "$.schoolReference.schoolId",
            "$.sessionReference.schoolId",
            "$.sessionReference.schoolYear",
        ])
    );

    live.write(MAP, &shipped);
    let replay = live.run_json("deadletter replay", &[&id.to_string()]).await;
    assert_eq!(replay.code, 0, "{:?} {}", replay.lines, replay.stderr);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 1));
    let calls = requests(&server, EVENTS_PATH).await;
    assert_eq!(calls.len(), 2);
    assert_eq!(body_of(&calls[1]), illness_event("nlt-visit-001", SEEN));
    assert!(live.dead_letters().await.is_empty());
    assert_eq!(fake.state().created, 1);
}

// ---------------------------------------------------------------------------------------
// 6. Rate limiting.

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_after_its_retry_after() {
    let (server, fake, live) = start(&[AMIRA]).await;
    fake.state().forced.push_back(
        problem(
            429,
            "urn:ed-fi:api:too-many-requests",
            "Too Many Requests",
            "Rate limit exceeded.",
            None,
        )
        .insert_header("Retry-After", "1"),
    );
    live.drop_records("v.json", &[illness("nlt-visit-001", 1, SEEN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(edfi_states(&live).await, only("delivered", 1));
    let calls = requests(&server, EVENTS_PATH).await;
    assert_eq!(calls.len(), 2, "one 429, one success");
    assert_eq!(calls[0].body, calls[1].body);
    let times = fake.state().calls.clone();
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "Retry-After: 1 honoured: retried after {waited:?}"
    );
    assert_eq!(fake.state().created, 1);
}

// ---------------------------------------------------------------------------------------
// Known gaps (see the report): run with `--run-ignored all`.

/// A revision that changes the absence reason changes the event's category, which is part
/// of its natural key: posting it again creates a second event and leaves the first, so the
/// ODS holds the pupil as both excused and unexcused absent on the day.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "product gap: a later revision changing the category leaves the old event in the ODS (connectors/edfi.toml has no delete of the stored Location)"]
async fn a_revision_changing_the_category_leaves_one_event() {
    let (_server, fake, live) = start(&[AMIRA]).await;
    live.drop_records("v1.json", &[illness("nlt-visit-001", 1, SEEN)]);
    assert_eq!(live.sync().await.code, 0);
    let mut v2 = illness("nlt-visit-001", 2, "Family away: not illness after all.");
    v2["absence_reason"] = "family_holiday".into();
    live.drop_records("v2.json", &[v2]);
    assert_eq!(live.sync().await.code, 0);
    let s = fake.state();
    let categories: Vec<&str> = s.events.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(
        categories,
        [format!("{CATEGORY}Unexcused Absence")],
        "one event for the pupil's day, of the latest revision's category"
    );
}

/// The ODS (.NET) counts UTF-16 code units, so a reason with characters outside the BMP
/// (emoji typed on a phone) must be cut by that count (`max_chars` counts so). GUESS: that
/// the ODS counts so.
#[tokio::test(flavor = "multi_thread")]
async fn a_reason_with_emoji_cut_to_255_is_taken() {
    let (_server, fake, live) = start(&[AMIRA]).await;
    live.drop_records(
        "v.json",
        &[illness(
            "nlt-visit-001",
            1,
            &"Mum sent a photo 👍 ".repeat(20),
        )],
    );
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}", live.dead_letters().await);
    assert_eq!(fake.state().created, 1);
}

// ---------------------------------------------------------------------------------------
// The fake itself holds to the ODS/API's rules (so the tests above mean something).

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_refuses_a_bare_descriptor_and_missing_fields() {
    let (server, fake, _live) = start(&[AMIRA]).await;
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}{TOKEN_PATH}", server.uri()))
        .basic_auth(KEY, Some(SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "bearer");
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let url = format!("{}{EVENTS_PATH}", server.uri());
    let mut body = illness_event("nlt-visit-001", SEEN);
    body["attendanceEventCategoryDescriptor"] = "Excused Absence".into();
    body.as_object_mut().unwrap().remove("eventDate");

    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401, "no bearer token");
    let r = http
        .post(&url)
        .header("Authorization", &bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    let paths: BTreeSet<&str> = problem["validationErrors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["$.attendanceEventCategoryDescriptor", "$.eventDate"])
    );
    let r = http
        .post(format!("{}{TOKEN_PATH}", server.uri()))
        .basic_auth(KEY, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(fake.state().events.is_empty());
}
