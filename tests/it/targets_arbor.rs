//! Arbor MIS end to end: the shipped Thrive mapping and the shipped `connectors/arbor.toml`
//! deliver through the real `doorstep` binary into a faithful fake of Arbor's REST API
//! (rest-v2), built from the facts in ../shared/TARGETS.md (Arbor section).
//!
//! The fake ([`Arbor`]) checks what Arbor documents: HTTP Basic authentication with the
//! application user, `/rest-v2/` resources in plural-dash form, the
//! `{"request": {"<entityNameLowerCamel>": {...}}}` envelope, references as
//! `{"entityType": "Student", "href": "/rest-v2/students/12"}`, date-times as
//! `{"entityType": "date", "date": "YYYY-MM-DD HH:MM:SS"}`, the attendance registration
//! `{"request": {"marks": [...]}}`, students found by `filters.upn.equals`. It answers as
//! documented: a create with the entity under the same key and its `href`; a PUT to that
//! href updates; errors in the `{"response": {"code", "reason", "errors": [{"exception",
//! "message"}]}}` envelope (422 for a validation failure). Where the fake has to guess (a fact
//! TARGETS.md marks not public), the guess is said beside it.
//!
//! Arbor authenticates with a user and password on every request: there is no token and so
//! no token expiry to test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fakes::{Answer, Seen};
use crate::harness::{Deployment, case_record};

const USER: &str = "doorstep-stepney";
const PASSWORD: &str = "c0rrect-h0rse";
/// The shipped Thrive visit's pupil (mappings/thrive/tests/01-illness-visit.toml).
const UPN: &str = "D810229121101";

// ---------------------------------------------------------------------------------------
// The fake Arbor.

/// A created note, as Arbor keeps it.
#[derive(Debug, Clone)]
struct Note {
    key: String,
    fields: Map<String, Value>,
}

#[derive(Default)]
struct ArborState {
    /// UPN → student id (`/rest-v2/students/{id}`).
    students: BTreeMap<String, u64>,
    /// Created notes by href.
    notes: BTreeMap<String, Note>,
    next_id: u64,
    /// The register: (student href, session start) → the attendance mark's href and note.
    register: BTreeMap<(String, String), (String, Option<String>)>,
    /// 429s still to answer to the next writes to a path.
    throttle: BTreeMap<String, usize>,
    /// Creates still to take effect with their answer lost (answered too late for the
    /// client), by path.
    lose: BTreeMap<String, usize>,
    seen: Vec<Seen>,
}

/// Arbor's REST API for one school, as TARGETS.md describes it.
#[derive(Clone)]
struct Arbor {
    user: String,
    password: String,
    state: Arc<Mutex<ArborState>>,
}

/// Arbor's attendance marks: (id, statutory code). Not public: the listing's shape; the
/// fake lists `{"attendanceMarks": [{"entityType", "href", "code", "description"}]}`, the
/// shape connectors/arbor.toml guesses (and says so).
const MARKS: &[(u64, &str, &str)] = &[
    (1, "/", "Present (AM)"),
    (2, "\\", "Present (PM)"),
    (3, "I", "Illness"),
    (4, "M", "Medical or dental appointment"),
    (5, "O", "Unauthorised absence"),
    (6, "N", "Reason not yet provided"),
    (7, "G", "Unauthorised holiday"),
    (8, "C", "Other authorised circumstances"),
];

/// The notes the fake takes: (resource, request key, entityType, date field, fields).
/// Not public: which fields are required; the fake requires the student, the summary and
/// the date (a note without them is of no use) and takes `content` as optional.
const NOTE_KINDS: &[(&str, &str, &str, &str)] = &[
    ("pastoral-notes", "pastoralNote", "PastoralNote", "noteDate"),
    (
        "safeguarding-notes",
        "safeguardingNote",
        "SafeguardingNote",
        "dateLogged",
    ),
];

fn arbor_error(code: u16, reason: &str, exception: &str, message: &str) -> Answer {
    Answer::json(
        code,
        json!({"response": {
            "code": code,
            "reason": reason,
            "errors": [{"exception": exception, "message": message}],
        }}),
    )
}

fn invalid(message: String) -> Answer {
    arbor_error(422, "Unprocessable Entity", "ValidationException", &message)
}

fn header_of(r: &Request, name: &str) -> Option<String> {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Arbor {
    fn new(user: &str, password: &str) -> Arbor {
        Arbor {
            user: user.to_owned(),
            password: password.to_owned(),
            state: Arc::new(Mutex::new(ArborState {
                next_id: 7,
                ..Default::default()
            })),
        }
    }

    /// A pupil Arbor knows, as student `id`.
    fn student(&self, upn: &str, id: u64) -> &Self {
        self.state
            .lock()
            .unwrap()
            .students
            .insert(upn.to_owned(), id);
        self
    }

    /// The next `n` creates (POST) to `path` take effect, and their answers come 3 s late:
    /// past a client's 1 s timeout, as if the connection dropped after the write.
    fn lose_answers(&self, path: &str, n: usize) {
        self.state.lock().unwrap().lose.insert(path.to_owned(), n);
    }

    /// The next `n` writes (POST, PUT) to `path` answer 429 with `Retry-After: 1`.
    fn throttle(&self, path: &str, n: usize) {
        self.state
            .lock()
            .unwrap()
            .throttle
            .insert(path.to_owned(), n);
    }

    async fn start(&self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests received for `method` and `path`.
    fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    fn notes(&self) -> BTreeMap<String, Note> {
        self.state.lock().unwrap().notes.clone()
    }

    fn register(&self) -> BTreeMap<(String, String), (String, Option<String>)> {
        self.state.lock().unwrap().register.clone()
    }

    /// The answer to one request; the state changes only on success.
    fn answer(&self, r: &Request, st: &mut ArborState) -> Answer {
        let expected = format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.user, self.password))
        );
        if header_of(r, "authorization").as_deref() != Some(expected.as_str()) {
            return arbor_error(
                401,
                "Unauthorized",
                "AuthenticationException",
                "Invalid application user credentials",
            )
            .header("WWW-Authenticate", "Basic realm=\"Arbor\"");
        }
        // The optional application id: absent, or a value (never sent empty).
        if header_of(r, "x-mis-application-id").is_some_and(|v| v.trim().is_empty()) {
            return arbor_error(
                400,
                "Bad Request",
                "InvalidHeaderException",
                "x-mis-application-id is empty",
            );
        }
        let path = r.url.path().to_owned();
        let method = r.method.as_str();
        if method == "POST" || method == "PUT" {
            if let Some(n) = st.throttle.get_mut(&path).filter(|n| **n > 0) {
                *n -= 1;
                // Not public: Arbor's rate limits and the body of a 429; the envelope is
                // the documented error envelope.
                return arbor_error(
                    429,
                    "Too Many Requests",
                    "RateLimitException",
                    "Too many requests",
                )
                .header("Retry-After", "1");
            }
            if !header_of(r, "content-type").is_some_and(|c| c.starts_with("application/json")) {
                return arbor_error(
                    415,
                    "Unsupported Media Type",
                    "InvalidRequestException",
                    "JSON expected",
                );
            }
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["rest-v2", "students"]) => self.students(r, st),
            ("GET", ["rest-v2", "attendance-marks"]) => {
                let marks: Vec<Value> = MARKS
                    .iter()
                    .map(|(id, code, description)| {
                        json!({
                            "entityType": "AttendanceMark",
                            "id": id,
                            "href": format!("/rest-v2/attendance-marks/{id}"),
                            "code": code,
                            "description": description,
                        })
                    })
                    .collect();
                Answer::json(200, json!({ "attendanceMarks": marks }))
            }
            ("POST", ["rest-v2", "attendance-registration"]) => self.registration(r, st),
            // Not public: how Arbor filters a listing of notes. The fake answers
            // `filters.student.equals=<student href>`, the guess connectors/arbor.toml makes.
            ("GET", ["rest-v2", resource]) if NOTE_KINDS.iter().any(|k| k.0 == *resource) => {
                let kind = NOTE_KINDS.iter().find(|k| k.0 == *resource).unwrap();
                let student: Option<String> = r
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "filters.student.equals")
                    .map(|(_, v)| v.into_owned());
                let Some(student) = student else {
                    return arbor_error(
                        400,
                        "Bad Request",
                        "InvalidFilterException",
                        "the fake lists notes by filters.student.equals only",
                    );
                };
                let notes: Vec<Value> = st
                    .notes
                    .iter()
                    .filter(|(_, n)| {
                        n.key == kind.1 && n.fields["student"]["href"] == student.as_str()
                    })
                    .map(|(href, n)| {
                        let mut out = n.fields.clone();
                        out.insert("entityType".into(), json!(kind.2));
                        out.insert("href".into(), json!(href));
                        Value::Object(out)
                    })
                    .collect();
                Answer::json(200, json!({ format!("{}s", kind.1): notes }))
            }
            ("POST", ["rest-v2", resource]) => match NOTE_KINDS.iter().find(|k| k.0 == *resource) {
                Some(kind) => self.create(r, st, kind),
                None => not_found(&path),
            },
            ("PUT", ["rest-v2", resource, id]) => {
                match NOTE_KINDS.iter().find(|k| k.0 == *resource) {
                    Some(kind) => self.update(r, st, kind, &format!("/rest-v2/{resource}/{id}")),
                    None => not_found(&path),
                }
            }
            _ => not_found(&path),
        }
    }

    /// `GET /rest-v2/students?filters.upn.equals=UPN`: the students with that UPN.
    fn students(&self, r: &Request, st: &ArborState) -> Answer {
        let filter: Vec<String> = r
            .url
            .query_pairs()
            .filter(|(k, _)| k == "filters.upn.equals")
            .map(|(_, v)| v.into_owned())
            .collect();
        // Arbor would list every student without a filter (paged); the fake refuses, so a
        // look-up that forgot its filter shows.
        let [upn] = filter.as_slice() else {
            return arbor_error(
                400,
                "Bad Request",
                "InvalidFilterException",
                "the fake lists students by filters.upn.equals only",
            );
        };
        let students: Vec<Value> = st
            .students
            .get(upn)
            .map(|id| {
                json!({
                    "entityType": "Student",
                    "id": id,
                    "href": format!("/rest-v2/students/{id}"),
                })
            })
            .into_iter()
            .collect();
        Answer::json(200, json!({ "students": students }))
    }

    /// `POST /rest-v2/{notes}`: a new note, answered with the entity and its href.
    fn create(
        &self,
        r: &Request,
        st: &mut ArborState,
        (resource, key, entity, date_field): &(&str, &str, &str, &str),
    ) -> Answer {
        let fields = match envelope(r, key) {
            Ok(f) => f,
            Err(e) => return e,
        };
        for required in ["student", "summary", date_field] {
            if !fields.contains_key(required) {
                return invalid(format!("{entity}.{required}: this field is required"));
            }
        }
        if let Err(e) = check_note(st, entity, date_field, &fields) {
            return e;
        }
        let id = st.next_id;
        st.next_id += 1;
        let href = format!("/rest-v2/{resource}/{id}");
        st.notes.insert(
            href.clone(),
            Note {
                key: (*key).to_owned(),
                fields: fields.clone(),
            },
        );
        let mut out = fields;
        out.insert("entityType".into(), json!(entity));
        out.insert("id".into(), json!(id));
        out.insert("href".into(), json!(href));
        Answer::json(201, json!({ *key: out }))
    }

    /// `PUT /rest-v2/{notes}/{id}`: the fields given replace the note's.
    fn update(
        &self,
        r: &Request,
        st: &mut ArborState,
        (_, key, entity, date_field): &(&str, &str, &str, &str),
        href: &str,
    ) -> Answer {
        if !st.notes.contains_key(href) {
            return not_found(href);
        }
        let fields = match envelope(r, key) {
            Ok(f) => f,
            Err(e) => return e,
        };
        if let Err(e) = check_note(st, entity, date_field, &fields) {
            return e;
        }
        let note = st.notes.get_mut(href).unwrap();
        // TARGETS.md: "PUT to the href with only changed fields". The fake holds the client
        // to it: a field sent with the value the note already has is refused.
        if let Some(k) = fields
            .keys()
            .find(|k| note.fields.get(*k) == fields.get(*k))
        {
            return invalid(format!("{entity}.{k}: unchanged; send only changed fields"));
        }
        note.fields.extend(fields);
        let mut out = note.fields.clone();
        out.insert("entityType".into(), json!(entity));
        out.insert("href".into(), json!(href));
        Answer::json(200, json!({ *key: out }))
    }

    /// `POST /rest-v2/attendance-registration`: marks for sessions. Not public: whether a
    /// second mark for a session replaces the first (the fake keeps the latest, as the
    /// connector assumes) and the answer's shape (the fake answers 200 with the marks).
    fn registration(&self, r: &Request, st: &mut ArborState) -> Answer {
        let body = match envelope(r, "marks") {
            Ok(_) => r.body_json::<Value>().unwrap(),
            Err(e) => return e,
        };
        let Some(marks) = body["request"]["marks"]
            .as_array()
            .filter(|m| !m.is_empty())
        else {
            return invalid("marks: a non-empty list is required".into());
        };
        let mut taken = Vec::new();
        for (i, m) in marks.iter().enumerate() {
            let Some(m) = m.as_object() else {
                return invalid(format!("marks[{i}]: an object is required"));
            };
            for (k, v) in m {
                let ok = match k.as_str() {
                    "student" => student_ref(st, v).map(|_| ()),
                    "attendanceMark" => mark_ref(v),
                    "sessionStartTime" => v
                        .as_str()
                        .ok_or("a string is required".to_owned())
                        .and_then(date_time),
                    "note" => text(v),
                    _ => Err("unknown field".into()),
                };
                if let Err(e) = ok {
                    return invalid(format!("marks[{i}].{k}: {e}"));
                }
            }
            for required in ["student", "attendanceMark", "sessionStartTime"] {
                if !m.contains_key(required) {
                    return invalid(format!("marks[{i}].{required}: this field is required"));
                }
            }
            taken.push((
                (
                    m["student"]["href"].as_str().unwrap().to_owned(),
                    m["sessionStartTime"].as_str().unwrap().to_owned(),
                ),
                (
                    m["attendanceMark"]["href"].as_str().unwrap().to_owned(),
                    m.get("note").and_then(Value::as_str).map(str::to_owned),
                ),
            ));
        }
        st.register.extend(taken);
        Answer::json(200, json!({ "marks": marks }))
    }
}

impl Respond for Arbor {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let mut st = self.state.lock().unwrap();
        let answer = self.answer(r, &mut st);
        let path = r.url.path().to_owned();
        let lost = r.method.as_str() == "POST"
            && answer.status == 201
            && st.lose.get(&path).is_some_and(|n| *n > 0);
        if lost {
            *st.lose.get_mut(&path).unwrap() -= 1;
        }
        st.seen.push(Seen {
            method: r.method.to_string(),
            path: r.url.path().to_owned(),
            query: r.url.query().map(str::to_owned),
            status: answer.status,
            at: Instant::now(),
            body: serde_json::from_slice(&r.body).ok(),
        });
        let template = answer.template();
        if lost {
            template.set_delay(Duration::from_secs(3))
        } else {
            template
        }
    }
}

fn not_found(path: &str) -> Answer {
    arbor_error(
        404,
        "Not Found",
        "NotFoundException",
        &format!("{path} does not exist"),
    )
}

/// The entity under `{"request": {key: ...}}`, the request's only member.
fn envelope(r: &Request, key: &str) -> Result<Map<String, Value>, Answer> {
    let bad = |m: String| arbor_error(400, "Bad Request", "InvalidRequestException", &m);
    let body: Value = r
        .body_json()
        .map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(request) = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("request"))
    else {
        return Err(bad("the body must be {\"request\": {...}}".into()));
    };
    match request.as_object() {
        Some(o) if o.len() == 1 && o.contains_key(key) => match &o[key] {
            Value::Object(fields) => Ok(fields.clone()),
            Value::Array(_) if key == "marks" => Ok(Map::new()),
            _ => Err(bad(format!("request.{key} must be an object"))),
        },
        _ => Err(bad(format!("the request must hold `{key}` only"))),
    }
}

/// A note's fields: only the entity's own, each in its documented form.
fn check_note(
    st: &ArborState,
    entity: &str,
    date_field: &str,
    fields: &Map<String, Value>,
) -> Result<(), Answer> {
    for (k, v) in fields {
        let ok = match k.as_str() {
            "student" => student_ref(st, v).map(|_| ()),
            "summary" => text(v),
            "content" => text(v),
            f if f == date_field => date_ref(v),
            _ => Err(format!("unknown field of {entity}")),
        };
        ok.map_err(|e| invalid(format!("{entity}.{k}: {e}")))?;
    }
    Ok(())
}

fn text(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(()),
        Some(_) => Err("must not be empty".into()),
        None => Err("a string is required".into()),
    }
}

fn date_time(s: &str) -> Result<(), String> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .map(|_| ())
        .map_err(|_| format!("`{s}` is not a date-time as YYYY-MM-DD HH:MM:SS"))
}

/// `{"entityType": "date", "date": "YYYY-MM-DD HH:MM:SS"}`.
fn date_ref(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("a date reference is required")?;
    if o.get("entityType") != Some(&json!("date")) || o.len() != 2 {
        return Err("must be {\"entityType\": \"date\", \"date\": ...}".into());
    }
    date_time(o["date"].as_str().ok_or("date must be a string")?)
}

/// `{"entityType": "Student", "href": "/rest-v2/students/N"}` of a known student.
fn student_ref(st: &ArborState, v: &Value) -> Result<u64, String> {
    let o = v.as_object().ok_or("a Student reference is required")?;
    if o.get("entityType") != Some(&json!("Student")) || o.len() != 2 {
        return Err("must be {\"entityType\": \"Student\", \"href\": ...}".into());
    }
    let href = o["href"].as_str().ok_or("href must be a string")?;
    href.strip_prefix("/rest-v2/students/")
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|id| st.students.values().any(|s| s == id))
        .ok_or_else(|| format!("no student {href}"))
}

/// `{"entityType": "AttendanceMark", "href": "/rest-v2/attendance-marks/N"}`.
fn mark_ref(v: &Value) -> Result<(), String> {
    let o = v
        .as_object()
        .ok_or("an AttendanceMark reference is required")?;
    if o.get("entityType") != Some(&json!("AttendanceMark")) || o.len() != 2 {
        return Err("must be {\"entityType\": \"AttendanceMark\", \"href\": ...}".into());
    }
    let href = o["href"].as_str().ok_or("href must be a string")?;
    href.strip_prefix("/rest-v2/attendance-marks/")
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|id| MARKS.iter().any(|m| m.0 == *id))
        .map(|_| ())
        .ok_or_else(|| format!("no attendance mark {href}"))
}

// ---------------------------------------------------------------------------------------
// The deployment and records.

/// The shipped mappings and connectors with Thrive's two Arbor destinations at `server`.
fn live(server: &MockServer, password: &str) -> Deployment {
    let mut live = Deployment::copy_of("mappings");
    live.destination("thrive", "arbor_notes", &server.uri())
        .destination("thrive", "arbor_register", &server.uri())
        .env("THRIVE_ARBOR_USERNAME", USER)
        .env("THRIVE_ARBOR_PASSWORD", password)
        .max_wait(3.0);
    live
}

/// A shipped Thrive case's record as `id`, `revision`, for pupil `upn`.
fn record(case: &str, id: &str, revision: u32, upn: &str) -> Value {
    let mut r = case_record("mappings/thrive", case);
    r["id"] = id.into();
    r["revision"] = revision.into();
    r["pupil"]["upn"] = upn.into();
    r
}

/// The shipped illness visit (2 March 2026, GMT) as `id`, `revision`, for pupil `upn`.
fn visit(id: &str, revision: u32, upn: &str) -> Value {
    record("01-illness-visit.toml", id, revision, upn)
}

/// The shipped visit of 2 March 2026 moved `days` later, every time in it.
fn on_day(v: Value, days: u32) -> Value {
    let day = format!("2026-03-{:02}", 2 + days);
    serde_json::from_str(&v.to_string().replace("2026-03-02", &day)).unwrap()
}

fn arbor_states(
    states: &BTreeMap<String, BTreeMap<String, u64>>,
    dest: &str,
) -> BTreeMap<String, u64> {
    states
        .get(&format!("thrive/{dest}"))
        .cloned()
        .unwrap_or_default()
}

fn state(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Create.

/// A visit becomes a PastoralNote on the pupil (POST /rest-v2/pastoral-notes, its href kept
/// as the target id) and a mark in the register (POST /rest-v2/attendance-registration),
/// exactly as Arbor takes them, in the school's local time (GMT in March, BST in June, the
/// PM session for an afternoon visit), with nothing of the pupil but the Arbor href.
#[tokio::test(flavor = "multi_thread")]
async fn a_visit_becomes_a_pastoral_note_and_a_register_mark() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor
        .student(UPN, 12)
        .student("M810229121116", 16)
        .student("Q810229121118", 18);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records(
        "visits.json",
        &[
            case_record("mappings/thrive", "01-illness-visit.toml"),
            case_record("mappings/thrive", "16-bst-morning-visit.toml"),
            case_record("mappings/thrive", "18-bst-afternoon-session.toml"),
        ],
    );

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let states = live.states().await;
    assert_eq!(
        arbor_states(&states, "arbor_notes"),
        state(&[("delivered", 3)])
    );
    assert_eq!(
        arbor_states(&states, "arbor_register"),
        state(&[("delivered", 3)])
    );

    // The notes, exactly.
    let notes: BTreeMap<String, Value> = arbor
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/rest-v2/pastoral-notes")
        .map(|s| {
            let b = s.body.clone().unwrap();
            let summary = b["request"]["pastoralNote"]["summary"].as_str().unwrap();
            let id = summary
                .split("doorstep ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            (id.to_owned(), b)
        })
        .collect();
    assert_eq!(notes.len(), 3, "one create per visit: {notes:?}");
    let note = |student: u64, date: &str, summary: &str, content: &str| {
        json!({"request": {"pastoralNote": {
            "student": {"entityType": "Student", "href": format!("/rest-v2/students/{student}")},
            "noteDate": {"entityType": "date", "date": date},
            "summary": summary,
            "content": content,
        }}})
    };
    assert_eq!(
        notes["thr-visit-101"],
        note(
            12,
            "2026-03-02 11:05:00",
            "Home visit (attendance): completed [doorstep thr-visit-101 r1]",
            "Pupil unwell with a temperature; mother to phone school each morning.\n\
             Action: Phone home tomorrow morning (due 2026-03-03)"
        )
    );
    assert_eq!(
        notes["thr-visit-116"]["request"]["pastoralNote"]["noteDate"]["date"],
        "2026-06-17 10:00:00",
        "10:00+01:00 is 10:00 on the school's clock"
    );
    assert_eq!(
        notes["thr-visit-118"]["request"]["pastoralNote"]["noteDate"]["date"],
        "2026-06-17 14:00:00",
        "13:00Z in June is 14:00 BST"
    );

    // The register: one request per run at most (the endpoint batches), each mark exact.
    let marks: Vec<Value> = arbor
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/rest-v2/attendance-registration")
        .flat_map(|s| {
            s.body.clone().unwrap()["request"]["marks"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    let mark = |student: u64, mark: u64, start: &str, note: &str| {
        json!({
            "student": {"entityType": "Student", "href": format!("/rest-v2/students/{student}")},
            "attendanceMark": {"entityType": "AttendanceMark", "href": format!("/rest-v2/attendance-marks/{mark}")},
            "sessionStartTime": start,
            "note": note,
        })
    };
    let mut want = vec![
        mark(
            12,
            3,
            "2026-03-02 08:50:00",
            "Home visit thr-visit-101: illness",
        ),
        mark(
            16,
            3,
            "2026-06-17 08:50:00",
            "Home visit thr-visit-116: illness",
        ),
        // 11:45Z is 12:45 BST: the afternoon session.
        mark(
            18,
            4,
            "2026-06-17 13:15:00",
            "Home visit thr-visit-118: medical",
        ),
    ];
    let mut got = marks.clone();
    let by_note = |v: &Value| v["note"].as_str().unwrap_or_default().to_owned();
    got.sort_by_key(by_note);
    want.sort_by_key(by_note);
    assert_eq!(got, want);
    assert_eq!(arbor.register().len(), 3);

    // The created note's href is the target id; the register's answer names no record.
    let d = live.delivery("arbor_notes", "thr-visit-101", 1).await;
    let href = arbor
        .notes()
        .into_iter()
        .find(|(_, n)| {
            n.fields["summary"]
                .as_str()
                .unwrap()
                .contains("thr-visit-101")
        })
        .map(|(h, _)| h)
        .unwrap();
    assert_eq!(d["target_id"], href.as_str(), "{d}");
    assert!(href.starts_with("/rest-v2/pastoral-notes/"));

    // Look-ups: one per pupil and destination, and the marks listing once.
    assert!(arbor.count("GET", "/rest-v2/students") <= 3 * 2);
    assert_eq!(arbor.count("GET", "/rest-v2/attendance-marks"), 1);
    for s in arbor.seen() {
        assert!(
            s.status < 300,
            "{} {} was answered {}",
            s.method,
            s.path,
            s.status
        );
        // Nothing of the pupil but the href found by UPN (the UPN only in the look-up).
        let text = s.body.map(|b| b.to_string()).unwrap_or_default();
        for personal in ["Ben", "Bolitho", "2017-02-11", "Beacon Close", "HU5", UPN] {
            assert!(
                !text.contains(personal),
                "`{personal}` sent to {}: {text}",
                s.path
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Update.

/// TARGETS.md: "Update: PUT to the href"; creates are not idempotent, so revision 2 of a
/// visit is a PUT to the note's stored href, never a second POST; the register takes the
/// session's mark again (the latest stands).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_revision_is_a_put_to_the_stored_href_never_a_second_create() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records("r1.json", &[visit("thr-upd-1", 1, UPN)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let href = live.delivery("arbor_notes", "thr-upd-1", 1).await["target_id"]
        .as_str()
        .expect("the href is kept")
        .to_owned();

    let mut r2 = visit("thr-upd-1", 2, UPN);
    r2["summary"] = "Mother phoned: a medical appointment, not illness.".into();
    r2["absence_reason"] = "medical".into();
    live.drop_records("r2.json", &[r2]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);

    let writes: Vec<(String, String)> = arbor
        .seen()
        .iter()
        .filter(|s| s.method != "GET" && s.path != "/rest-v2/attendance-registration")
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        writes,
        [
            ("POST".to_owned(), "/rest-v2/pastoral-notes".to_owned()),
            ("PUT".to_owned(), href.clone())
        ]
    );
    let put = arbor
        .seen()
        .into_iter()
        .find(|s| s.method == "PUT")
        .unwrap();
    assert_eq!(put.status, 200);
    let fields = &put.body.unwrap()["request"]["pastoralNote"];
    assert_eq!(
        fields["summary"],
        "Home visit (attendance): completed [doorstep thr-upd-1 r2]"
    );
    // Only what changed: the student and the note's date are as Arbor has them.
    let sent: Vec<&String> = fields.as_object().unwrap().keys().collect();
    assert_eq!(sent, ["content", "summary"], "{fields}");
    let notes = arbor.notes();
    assert_eq!(notes.len(), 1, "one note, updated");
    assert_eq!(notes[&href].key, "pastoralNote");
    assert!(
        notes[&href].fields["content"]
            .as_str()
            .unwrap()
            .starts_with("Mother phoned")
    );
    assert_eq!(
        live.delivery("arbor_notes", "thr-upd-1", 2).await["target_id"],
        href.as_str(),
        "the update keeps the href"
    );

    // The register took the mark twice; the session holds the latest (M, href 4).
    assert_eq!(arbor.count("POST", "/rest-v2/attendance-registration"), 2);
    let register = arbor.register();
    assert_eq!(register.len(), 1, "{register:?}");
    let (mark, note) = register.values().next().unwrap();
    assert_eq!(mark, "/rest-v2/attendance-marks/4");
    assert_eq!(note.as_deref(), Some("Home visit thr-upd-1: medical"));

    // Nothing more goes on another sync.
    let before = arbor.seen().len();
    let run = live.sync().await;
    assert_eq!(run.code, 0);
    assert_eq!(
        arbor.seen().len(),
        before,
        "a delivered revision is not sent again"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Credentials.

/// A wrong password: Arbor answers 401; the delivery is dead at once (a password does not
/// mend itself; there is no token to refresh and no expiry), not retried, and another sync
/// sends nothing. Once the password is fixed, a replay delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_dead_at_once_without_a_retry_loop() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    let server = arbor.start().await;
    let mut live = live(&server, "wrong-password");
    live.drop_records("v.json", &[visit("thr-pw-1", 1, UPN)]);

    let started = Instant::now();
    let run = live.sync().await;
    assert_eq!(run.code, 1, "a dead letter is exit 1: {}", run.stderr);
    assert_eq!(run.count("dead"), 2, "{}", run.summary());
    assert_eq!(run.count("retrying"), 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no waiting for retries"
    );
    let seen = arbor.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s.status == 401),
        "{seen:?}"
    );
    // One try per destination: its first request (the pupil's look-up) was refused.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.path == "/rest-v2/students"));

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d["last_status"], 401, "{d}");
        assert_eq!(d["attempts"], 1, "{d}");
        let reason = d["last_error"].as_str().unwrap();
        assert!(reason.contains("401"), "{reason}");
        assert!(
            reason.contains("Invalid application user credentials"),
            "Arbor's message is in the reason: {reason}"
        );
        assert!(
            !reason.contains("wrong-password"),
            "the password leaked: {reason}"
        );
    }

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(
        arbor.seen().len(),
        2,
        "a dead delivery is not retried by a sync"
    );

    // The password is fixed; the dead letters are replayed and delivered.
    live.env("THRIVE_ARBOR_PASSWORD", PASSWORD);
    for dest in ["thrive/arbor_notes", "thrive/arbor_register"] {
        let r = live
            .run_json("deadletter replay", &["--destination", dest])
            .await;
        assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    }
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(arbor.count("POST", "/rest-v2/pastoral-notes"), 1);
    assert_eq!(arbor.count("POST", "/rest-v2/attendance-registration"), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Pupils: not found, and looked up once.

/// A UPN Arbor does not know: the look-up lists no student, the delivery is dead (a note
/// without its pupil cannot be made), and the reason names the record, never the UPN or the
/// pupil's name (the dead-letter list is read by more staff than the record).
#[tokio::test(flavor = "multi_thread")]
async fn a_pupil_arbor_does_not_know_is_dead_naming_the_record_only() {
    let arbor = Arbor::new(USER, PASSWORD);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records("v.json", &[visit("thr-nf-1", 1, UPN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 2, "{}", run.summary());
    assert_eq!(arbor.count("POST", "/rest-v2/pastoral-notes"), 0);
    assert_eq!(arbor.count("POST", "/rest-v2/attendance-registration"), 0);
    let lookups: Vec<Seen> = arbor
        .seen()
        .into_iter()
        .filter(|s| s.path == "/rest-v2/students")
        .collect();
    assert!(!lookups.is_empty());
    for s in &lookups {
        assert_eq!(
            s.query.as_deref(),
            Some(format!("filters.upn.equals={UPN}").as_str())
        );
    }

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let id = d["id"].as_i64().unwrap();
        let shown = live.show(id).await;
        let reason = shown["last_error"].as_str().unwrap();
        assert!(reason.contains("thr-nf-1"), "the record is named: {reason}");
        assert!(reason.contains("student"), "the look-up is named: {reason}");
        let text = format!("{d} {shown}");
        for personal in [UPN, "Ben", "Bolitho", "2017-02-11"] {
            assert!(
                !text.contains(personal),
                "`{personal}` in the dead letter: {text}"
            );
        }
    }
}

/// TARGETS.md: "Finding a pupil: list students filtered by UPN; cache the href." Ten visits
/// for two pupils cost one look-up per pupil and destination (Thrive sends a visit to two
/// destinations on the same Arbor: its notes and its register), and the next run none.
#[tokio::test(flavor = "multi_thread")]
async fn ten_visits_for_two_pupils_look_each_pupil_up_once() {
    let arbor = Arbor::new(USER, PASSWORD);
    // Another shipped pupil's UPN (a valid check letter).
    let other = "M810229121116";
    arbor.student(UPN, 12).student(other, 13);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    let visits: Vec<Value> = (0..10)
        .map(|i| {
            on_day(
                visit(
                    &format!("thr-many-{i}"),
                    1,
                    if i % 2 == 0 { UPN } else { other },
                ),
                i,
            )
        })
        .collect();
    live.drop_records("many.json", &visits);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(arbor.count("POST", "/rest-v2/pastoral-notes"), 10);
    assert_eq!(arbor.register().len(), 10);
    let lookups: Vec<String> = arbor
        .seen()
        .into_iter()
        .filter(|s| s.path == "/rest-v2/students")
        .map(|s| s.query.unwrap_or_default())
        .collect();
    let per_pupil = |upn: &str| lookups.iter().filter(|q| q.ends_with(upn)).count();
    eprintln!(
        "student look-ups for 10 visits of 2 pupils: {}",
        lookups.len()
    );
    assert!(
        per_pupil(UPN) <= 2 && per_pupil(other) <= 2,
        "at most one look-up per pupil and destination: {lookups:?}"
    );
    assert_eq!(arbor.count("GET", "/rest-v2/attendance-marks"), 1);

    // Ten more visits of the same pupils: the hrefs are cached.
    let more: Vec<Value> = (10..20)
        .map(|i| {
            on_day(
                visit(
                    &format!("thr-many-{i}"),
                    1,
                    if i % 2 == 0 { UPN } else { other },
                ),
                i - 10,
            )
        })
        .collect();
    live.drop_records("more.json", &more);
    let before = lookups.len();
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        arbor.count("GET", "/rest-v2/students"),
        before,
        "the next run asks nothing"
    );
    assert_eq!(arbor.count("GET", "/rest-v2/attendance-marks"), 1);
}

// ---------------------------------------------------------------------------------------
// 5. Validation failure, fix, replay.

/// Arbor refuses a note (422): the delivery is dead at once with Arbor's own message in the
/// reason and the response saved; the map is fixed and the dead letter replayed: delivered,
/// under the same idempotency key, with one note in Arbor.
#[tokio::test(flavor = "multi_thread")]
async fn a_422_is_dead_with_arbors_message_and_a_replay_after_the_fix_delivers() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    // A mistake in the copied map: the note's date as RFC 3339, not Arbor's form.
    let map = "mappings/thrive/maps/arbor_pastoral_note.toml";
    let shipped = std::fs::read_to_string(live.path(map)).unwrap();
    let broken = shipped.replace(
        r#"date = { field = "recorded_at", format = "%Y-%m-%d %H:%M:%S" }"#,
        r#"date = { field = "recorded_at" }"#,
    );
    assert_ne!(broken, shipped, "the map's date field has moved");
    live.write(map, &broken);
    live.drop_records("v.json", &[visit("thr-422", 1, UPN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(
        arbor.count("POST", "/rest-v2/pastoral-notes"),
        1,
        "a 422 is not retried"
    );
    let states = live.states().await;
    assert_eq!(arbor_states(&states, "arbor_notes"), state(&[("dead", 1)]));
    assert_eq!(
        arbor_states(&states, "arbor_register"),
        state(&[("delivered", 1)])
    );

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let id = dead[0]["id"].as_i64().unwrap();
    let key = dead[0]["idempotency_key"].as_str().unwrap().to_owned();
    let shown = live.show(id).await;
    assert_eq!(shown["last_status"], 422);
    let reason = shown["last_error"].as_str().unwrap();
    assert!(reason.contains("422"), "{reason}");
    assert!(
        reason.contains(
            "PastoralNote.noteDate: `2026-03-02T11:05:00+00:00` is not a date-time as YYYY-MM-DD HH:MM:SS"
        ),
        "Arbor's message is in the reason: {reason}"
    );
    let saved: Value = serde_json::from_str(shown["response"].as_str().unwrap()).unwrap();
    assert_eq!(
        saved["response"]["code"], 422,
        "the response is saved: {saved}"
    );

    // The map is fixed and the dead letter replayed.
    live.write(map, &shipped);
    let r = live.run_json("deadletter replay", &[&id.to_string()]).await;
    assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(arbor.count("POST", "/rest-v2/pastoral-notes"), 2);
    let notes = arbor.notes();
    assert_eq!(notes.len(), 1, "one note made");
    let (href, note) = notes.into_iter().next().unwrap();
    assert_eq!(note.fields["noteDate"]["date"], "2026-03-02 11:05:00");
    let shown = live.show(id).await;
    assert_eq!(shown["state"], "delivered");
    assert_eq!(
        shown["idempotency_key"],
        key.as_str(),
        "a replay keeps its key"
    );
    assert_eq!(shown["target_id"], href.as_str());
    assert!(live.dead_letters().await.is_empty());
}

// ---------------------------------------------------------------------------------------
// 6. Rate limiting.

/// Arbor's rate limits are not public; a 429 with `Retry-After: 1` is retried no sooner
/// than a second later (the connector's backoff would wait 2 s or more; Retry-After replaces
/// it), and the note is created once.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_after_retry_after() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    arbor.throttle("/rest-v2/pastoral-notes", 1);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records("v.json", &[visit("thr-429", 1, UPN)]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let posts: Vec<Seen> = arbor
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path == "/rest-v2/pastoral-notes")
        .collect();
    assert_eq!(
        posts.iter().map(|s| s.status).collect::<Vec<_>>(),
        [429, 201],
        "{posts:?}"
    );
    let waited = posts[1].at - posts[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: retried after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "Retry-After replaces the 2 s backoff: {waited:?}"
    );
    assert_eq!(
        posts[0].body, posts[1].body,
        "the retry sends the same note"
    );
    assert_eq!(arbor.notes().len(), 1);
    let d = live.delivery("arbor_notes", "thr-429", 1).await;
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["attempt_log"][0]["status"], 429);
}

/// TARGETS.md: Arbor's creates are not idempotent. A create that takes effect but whose
/// answer is lost (the client times out) is not sent again blindly: the pupil's notes are
/// read, the note carrying this create's summary is found and its href adopted. One note,
/// one POST; a later revision updates that note.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_was_lost_is_found_not_made_twice() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    arbor.lose_answers("/rest-v2/pastoral-notes", 1);
    let server = arbor.start().await;
    let mut live = live(&server, PASSWORD);
    live.add_config(
        "[destinations.thrive.arbor_notes.limits]\ntimeout_seconds = 1\n\
         backoff_min_seconds = 0.1\nbackoff_max_seconds = 0.5\n",
    );
    live.drop_records("v.json", &[visit("thr-lost", 1, UPN)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        arbor.count("POST", "/rest-v2/pastoral-notes"),
        1,
        "one create"
    );
    let notes = arbor.notes();
    assert_eq!(notes.len(), 1, "one note: {notes:?}");
    let href = notes.keys().next().unwrap().clone();
    let d = live.delivery("arbor_notes", "thr-lost", 1).await;
    assert_eq!(d["target_id"], href.as_str());
    let outcomes: Vec<&str> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "adopted"], "{d}");
    // The adopted href is the note's: revision 2 updates it.
    let mut r2 = visit("thr-lost", 2, UPN);
    r2["summary"] = "Seen again.".into();
    live.drop_records("r2.json", &[r2]);
    assert_eq!(live.sync().await.code, 0);
    assert_eq!(arbor.count("PUT", &href), 1);
    assert_eq!(arbor.notes().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Probes beyond the six scenarios.

/// Two revisions of a visit in one drop: revision 2 waits for revision 1's note, then is a
/// PUT to its href, not a second create.
#[tokio::test(flavor = "multi_thread")]
async fn two_revisions_in_one_sync_are_a_create_then_a_put() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    let mut r2 = visit("thr-both", 2, UPN);
    r2["summary"] = "Second thoughts.".into();
    live.drop_records("both.json", &[visit("thr-both", 1, UPN), r2]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let notes = arbor.notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let (href, note) = notes.into_iter().next().unwrap();
    assert!(
        note.fields["content"]
            .as_str()
            .unwrap()
            .starts_with("Second thoughts."),
        "{note:?}"
    );
    assert_eq!(arbor.count("POST", "/rest-v2/pastoral-notes"), 1);
    assert_eq!(arbor.count("PUT", &href), 1);
}

/// A pupil Arbor did not have is added; the dead letter's reason says "replay once the
/// target has it": a replay then delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_arbor_gets_the_pupil_delivers() {
    let arbor = Arbor::new(USER, PASSWORD);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records("v.json", &[visit("thr-late-pupil", 1, UPN)]);
    let run = live.sync().await;
    assert_eq!(run.count("dead"), 2, "{}", run.summary());
    let reason = live.dead_letters().await[0]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("replay once the target has it"), "{reason}");

    arbor.student(UPN, 12);
    for dest in ["thrive/arbor_notes", "thrive/arbor_register"] {
        let r = live
            .run_json("deadletter replay", &["--destination", dest])
            .await;
        assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    }
    let run = live.sync().await;
    assert_eq!(
        (run.code, run.count("dead")),
        (0, 0),
        "the replay found the pupil cached as not found: {:?}\n{:?}",
        run.summary(),
        live.dead_letters().await
    );
    assert_eq!(arbor.notes().len(), 1);
}

/// Revision 1 is refused (a map mistake), the map is fixed, revision 2 arrives and is
/// created; then revision 1's dead letter is replayed: Arbor must still hold one note, with
/// revision 2's words (a superseded revision neither makes a second note nor overwrites).
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_older_revision_makes_no_second_note() {
    let arbor = Arbor::new(USER, PASSWORD);
    arbor.student(UPN, 12);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    let map = "mappings/thrive/maps/arbor_pastoral_note.toml";
    let shipped = std::fs::read_to_string(live.path(map)).unwrap();
    live.write(
        map,
        &shipped.replace(
            r#"date = { field = "recorded_at", format = "%Y-%m-%d %H:%M:%S" }"#,
            r#"date = { field = "recorded_at" }"#,
        ),
    );
    live.drop_records("r1.json", &[visit("thr-old", 1, UPN)]);
    let run = live.sync().await;
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    let id = live.dead_letters().await[0]["id"].as_i64().unwrap();

    live.write(map, &shipped);
    let mut r2 = visit("thr-old", 2, UPN);
    r2["summary"] = "Revision two.".into();
    live.drop_records("r2.json", &[r2]);
    live.sync().await;
    assert_eq!(
        live.delivery("arbor_notes", "thr-old", 2).await["state"],
        "delivered"
    );
    assert_eq!(arbor.notes().len(), 1);

    // The replay is refused: a later revision is already delivered there.
    let r = live.run_json("deadletter replay", &[&id.to_string()]).await;
    assert_eq!(r.code, 1, "{:?} {}", r.lines, r.stderr);
    assert_eq!(
        r.lines[0]["not_dead"],
        serde_json::json!([id]),
        "{:?}",
        r.lines
    );
    let run = live.sync().await;
    eprintln!("after the replay: {}", run.summary());
    let notes = arbor.notes();
    let writes: Vec<(String, String)> = arbor
        .seen()
        .iter()
        .filter(|s| s.method != "GET" && s.path != "/rest-v2/attendance-registration")
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(notes.len(), 1, "a second note was made: {writes:?}");
    let note = notes.values().next().unwrap();
    assert!(
        note.fields["content"]
            .as_str()
            .unwrap()
            .starts_with("Revision two."),
        "revision 1 overwrote revision 2: {writes:?}"
    );
}

/// Thrive routes incidents to Arbor as SafeguardingNotes (routes.toml `incidents-to-arbor`,
/// maps/arbor_safeguarding_note.toml). An incident names no pupil (the schema refuses one):
/// the note goes on the pupil of its visit, read from the store. Case 15 is a visit with an
/// embedded incident and flag.
#[tokio::test(flavor = "multi_thread")]
async fn an_incident_becomes_a_safeguarding_note() {
    let arbor = Arbor::new(USER, PASSWORD);
    let submission = case_record("mappings/thrive", "15-visit-with-incident-and-flag.toml");
    arbor.student(submission["pupil"]["upn"].as_str().unwrap(), 12);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    live.drop_records("i.json", &[submission]);
    let run = live.sync().await;
    let dead = live.dead_letters().await;
    assert_eq!(
        (run.code, run.count("dead")),
        (0, 0),
        "the incident is a dead letter: {dead:?}"
    );
    // What reached Arbor, if anything, passed the fake's checks (else it would be dead).
    assert!(
        arbor.seen().iter().all(|s| s.status < 300),
        "{:?}",
        arbor.seen()
    );
}

/// One Arbor host is two Thrive destinations (its notes and its register), with the same
/// application user: ten visits for two pupils could cost two student look-ups in all, not
/// two per destination (measured: 4).
#[tokio::test(flavor = "multi_thread")]
async fn one_arbor_host_is_asked_once_per_pupil_whatever_the_destination() {
    let arbor = Arbor::new(USER, PASSWORD);
    let other = "M810229121116";
    arbor.student(UPN, 12).student(other, 13);
    let server = arbor.start().await;
    let live = live(&server, PASSWORD);
    let visits: Vec<Value> = (0..10)
        .map(|i| {
            on_day(
                visit(
                    &format!("thr-once-{i}"),
                    1,
                    if i % 2 == 0 { UPN } else { other },
                ),
                i,
            )
        })
        .collect();
    live.drop_records("many.json", &visits);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert!(
        arbor.count("GET", "/rest-v2/students") <= 2,
        "{:?}",
        arbor
            .seen()
            .iter()
            .filter(|s| s.path == "/rest-v2/students")
            .map(|s| s.query.clone())
            .collect::<Vec<_>>()
    );
}
