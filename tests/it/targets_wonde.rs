//! Wonde end to end: the shipped CELT mapping and the shipped `connectors/wonde.toml` write
//! session attendance back through the real `doorstep` binary into a faithful fake of
//! Wonde's API, built from the facts in ../shared/TARGETS.md (Wonde section).
//!
//! The fake ([`Wonde`]) checks what Wonde documents: the app's token as
//! `Authorization: Bearer TOKEN` (or Basic with the token as user name and an empty
//! password), the school's Wonde id in the path, session attendance as
//! `POST /v1.0/schools/{school_id}/attendance/session/` with `{"attendance": [{date, session,
//! student_id, attendance_code_id, comment?, employee_id?}]}` (optional keys left out when
//! empty), reads paged as `{"data": [...], "meta": {"pagination": {"next": URL|null}}}`
//! (really paged: a school's students span three pages, `next` an absolute URL on the fake),
//! attendance codes listed with their statutory letter, a write-back answered with its
//! `writeback_id`, 422 for a validation error. Where the fake has to guess (TARGETS.md: not
//! public: rate limits, idempotency keys, the error body's shape), the guess is said beside it.
//!
//! Wonde's token is a long-lived per-app token: there is no expiry or refresh to test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fakes::{Answer, Seen};
use crate::harness::{Deployment, case_record};

const TOKEN: &str = "wonde-app-token-3f9a";
/// The Wonde ids of CELT's two Wonde schools (mappings/celt/routes.toml).
const PENMORVAH: &str = "A1930499544";
const TREVARNO: &str = "A2032141745";
/// The shipped CELT illness visit's pupil (mappings/celt/tests/01-illness-visit.toml).
const UPN: &str = "V908401221201";
/// Trevarno's pupil (mappings/celt/tests/28-phoned-in-trevarno.toml).
const TREVARNO_UPN: &str = "V908401221228";
/// Another shipped Penmorvah pupil (mappings/celt/tests/02-medical-absence.toml).
const OTHER_UPN: &str = "J908401221202";
/// Students each school has in Wonde: three pages of 100.
const STUDENTS: usize = 230;

// ---------------------------------------------------------------------------------------
// The fake Wonde.

/// Marks written back: (school, student id, date, session) → (code id, comment).
type Register = BTreeMap<(String, String, String, String), (String, Option<String>)>;

#[derive(Default)]
struct WondeState {
    /// School id → its students in listing order: (Wonde id, UPN).
    students: BTreeMap<String, Vec<(String, String)>>,
    register: Register,
    writebacks: u64,
    /// 429s still to answer to write-backs.
    throttle: usize,
    /// (page of a student listing, 503s still to answer to it).
    failing_page: Option<(usize, usize)>,
    seen: Vec<Seen>,
}

/// Wonde's API for CELT's two schools, as TARGETS.md describes it.
#[derive(Clone)]
struct Wonde {
    token: String,
    state: Arc<Mutex<WondeState>>,
}

/// Wonde's attendance codes: (Wonde's id, statutory letter, description). Wonde's ids are
/// its own; the fake's are made up.
const CODES: &[(&str, &str, &str)] = &[
    ("C1", "/", "Present (AM)"),
    ("C2", "\\", "Present (PM)"),
    ("C4", "M", "Medical or dental appointment"),
    ("C5", "O", "Unauthorised absence"),
    ("C6", "N", "Reason not yet provided"),
    ("C7", "G", "Unauthorised holiday"),
    ("C8", "C", "Other authorised circumstances"),
    ("C9", "I", "Illness"),
];

/// The keys a session mark may have.
const MARK_KEYS: &[&str] = &[
    "date",
    "session",
    "student_id",
    "attendance_code_id",
    "comment",
    "employee_id",
];

/// An error. Not public: the error body's shape; the fake answers Laravel's
/// `{"message": ...}` (Wonde's API is a Laravel application), which the connector's
/// `message_pointers` read.
fn wonde_error(status: u16, message: &str) -> Answer {
    Answer::json(status, json!({ "message": message }))
}

/// A validation error, as Laravel words it: the first message, and every one by field.
fn invalid(errors: Vec<(String, String)>) -> Answer {
    let first = errors[0].1.clone();
    let message = match errors.len() {
        1 => first,
        n => format!("{first} (and {} more errors)", n - 1),
    };
    let by_field: serde_json::Map<String, Value> =
        errors.into_iter().map(|(k, m)| (k, json!([m]))).collect();
    Answer::json(422, json!({ "message": message, "errors": by_field }))
}

fn header_of(r: &Request, name: &str) -> Option<String> {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Wonde {
    /// The two schools, each with `STUDENTS` students; `pupils` are (school, UPN, Wonde id)
    /// put among them at rows 150 and on (pages 2 and 3).
    fn new(token: &str, pupils: &[(&str, &str, &str)]) -> Wonde {
        let mut students = BTreeMap::new();
        for (n, school) in [PENMORVAH, TREVARNO].into_iter().enumerate() {
            let mut list: Vec<(String, String)> = (0..STUDENTS)
                .map(|i| (format!("A{}{i:05}", 100 + n), format!("Z{n}{i:011}")))
                .collect();
            for (j, (_, upn, id)) in pupils.iter().filter(|p| p.0 == school).enumerate() {
                list[150 + 35 * j] = ((*id).to_owned(), (*upn).to_owned());
            }
            students.insert(school.to_owned(), list);
        }
        Wonde {
            token: token.to_owned(),
            state: Arc::new(Mutex::new(WondeState {
                students,
                ..Default::default()
            })),
        }
    }

    /// The next `n` write-backs answer 429 with `Retry-After: 1`.
    fn throttle(&self, n: usize) {
        self.state.lock().unwrap().throttle = n;
    }

    /// Page `page` of every student listing answers 503 with `Retry-After: 1`, `times` times.
    fn fail_page(&self, page: usize, times: usize) {
        self.state.lock().unwrap().failing_page = Some((page, times));
    }

    /// A pupil Wonde gets later (as the MIS syncs it).
    fn add_student(&self, school: &str, upn: &str, id: &str) {
        self.state
            .lock()
            .unwrap()
            .students
            .get_mut(school)
            .unwrap()
            .push((id.to_owned(), upn.to_owned()));
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

    fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    fn register(&self) -> Register {
        self.state.lock().unwrap().register.clone()
    }

    fn answer(&self, r: &Request, st: &mut WondeState) -> Answer {
        let bearer = format!("Bearer {}", self.token);
        let basic = format!("Basic {}", B64.encode(format!("{}:", self.token)));
        let auth = header_of(r, "authorization").unwrap_or_default();
        if auth != bearer && auth != basic {
            return wonde_error(401, "Unauthenticated.");
        }
        let path = r.url.path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), segments.as_slice()) {
            ("GET", ["v1.0", "schools", school, "students"])
                if st.students.contains_key(*school) && failing(st, r) =>
            {
                wonde_error(503, "Service Unavailable").header("Retry-After", "1")
            }
            ("GET", ["v1.0", "schools", school, "students"]) => match st.students.get(*school) {
                Some(list) => {
                    let rows: Vec<Value> = list
                        .iter()
                        .map(|(id, upn)| {
                            // Wonde's student has more (names, dates of birth …); the
                            // look-up reads only `id` and `upn`.
                            json!({"id": id, "upn": upn, "forename": "Test", "surname": "Pupil"})
                        })
                        .collect();
                    page(r, rows)
                }
                None => wonde_error(404, "School not found."),
            },
            ("GET", ["v1.0", "schools", school, "attendance-codes"]) => {
                if !st.students.contains_key(*school) {
                    return wonde_error(404, "School not found.");
                }
                let rows: Vec<Value> = CODES
                    .iter()
                    .map(|(id, code, description)| {
                        json!({"id": id, "code": code, "description": description})
                    })
                    .collect();
                page(r, rows)
            }
            // The path ends with a slash, as documented.
            ("POST", ["v1.0", "schools", school, "attendance", "session", ""]) => {
                self.write_back(r, st, school)
            }
            _ => wonde_error(404, "Not Found."),
        }
    }

    /// `POST /v1.0/schools/{school}/attendance/session/`.
    fn write_back(&self, r: &Request, st: &mut WondeState, school: &str) -> Answer {
        if st.throttle > 0 {
            st.throttle -= 1;
            // Not public: Wonde's rate limits; Laravel's throttle answers this way.
            return wonde_error(429, "Too Many Attempts.").header("Retry-After", "1");
        }
        let Some(students) = st.students.get(school) else {
            return wonde_error(404, "School not found.");
        };
        if !header_of(r, "content-type").is_some_and(|c| c.starts_with("application/json")) {
            return wonde_error(415, "JSON expected.");
        }
        let body: Value = match r.body_json() {
            Ok(b) => b,
            Err(_) => return wonde_error(400, "The body is not JSON."),
        };
        let Some(marks) = body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("attendance"))
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        else {
            return invalid(vec![(
                "attendance".into(),
                "The attendance field is required and must be a list.".into(),
            )]);
        };
        let mut errors = Vec::new();
        let mut taken = Vec::new();
        for (i, m) in marks.iter().enumerate() {
            let at = |k: &str| format!("attendance.{i}.{k}");
            let Some(m) = m.as_object() else {
                errors.push((at(""), format!("The attendance.{i} must be an object.")));
                continue;
            };
            for k in m.keys().filter(|k| !MARK_KEYS.contains(&k.as_str())) {
                errors.push((at(k), format!("The {} field is not allowed.", at(k))));
            }
            let text = |k: &str| m.get(k).and_then(Value::as_str);
            for k in ["date", "session", "student_id", "attendance_code_id"] {
                if text(k).is_none() {
                    errors.push((at(k), format!("The {} field is required.", at(k))));
                }
            }
            // Optional keys are left out when empty: an empty one is refused. (Not public
            // how Wonde takes an empty string; Laravel would read it as null, not a string.)
            for k in ["comment", "employee_id"] {
                if m.contains_key(k) && text(k).is_none_or(|s| s.trim().is_empty()) {
                    errors.push((at(k), format!("The {} field must be a string.", at(k))));
                }
            }
            if let Some(d) = text("date")
                && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()
            {
                errors.push((
                    at("date"),
                    format!("The {} field must match the format Y-m-d.", at("date")),
                ));
            }
            if let Some(s) = text("session")
                && s != "AM"
                && s != "PM"
            {
                errors.push((
                    at("session"),
                    format!("The selected {} is invalid.", at("session")),
                ));
            }
            if let Some(s) = text("student_id")
                && !students.iter().any(|(id, _)| id == s)
            {
                errors.push((
                    at("student_id"),
                    format!("The selected {} is invalid.", at("student_id")),
                ));
            }
            if let Some(c) = text("attendance_code_id")
                && !CODES.iter().any(|(id, _, _)| id == &c)
            {
                errors.push((
                    at("attendance_code_id"),
                    format!("The selected {} is invalid.", at("attendance_code_id")),
                ));
            }
            if let (Some(d), Some(s), Some(p), Some(c)) = (
                text("date"),
                text("student_id"),
                text("session"),
                text("attendance_code_id"),
            ) {
                taken.push((
                    (school.to_owned(), s.to_owned(), d.to_owned(), p.to_owned()),
                    (c.to_owned(), text("comment").map(str::to_owned)),
                ));
            }
        }
        if !errors.is_empty() {
            return invalid(errors);
        }
        // A write-back of the same pupil, date and session sets the same mark again.
        st.register.extend(taken);
        st.writebacks += 1;
        // Not public: the status of a write-back's answer (200 taken here).
        Answer::json(
            200,
            json!({ "writeback_id": format!("W{}", st.writebacks) }),
        )
    }
}

/// Whether this listing page is to fail now (and one failure fewer is left).
fn failing(st: &mut WondeState, r: &Request) -> bool {
    let page: usize = r
        .url
        .query_pairs()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1);
    match &mut st.failing_page {
        Some((p, left)) if *p == page && *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

/// One page of a listing: `per_page` (Wonde's default 50, at most 200; the fake's guess)
/// rows from `page`, and the next page's absolute URL on this server.
fn page(r: &Request, rows: Vec<Value>) -> Answer {
    let q: BTreeMap<String, String> = r.url.query_pairs().into_owned().collect();
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 200);
    let current: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let from = (current - 1) * per_page;
    let data: Vec<Value> = rows.iter().skip(from).take(per_page).cloned().collect();
    let more = from + per_page < rows.len();
    // An absolute URL on this server (wiremock's `url` names no real host: the request's
    // `Host` header does).
    let host = header_of(r, "host").unwrap_or_default();
    let link = |n: usize| format!("http://{host}{}?per_page={per_page}&page={n}", r.url.path());
    Answer::json(
        200,
        json!({
            "data": data,
            "meta": {"pagination": {
                "next": if more { json!(link(current + 1)) } else { Value::Null },
                "previous": if current > 1 { json!(link(current - 1)) } else { Value::Null },
                "more": more,
                "per_page": per_page,
                "current_page": current,
            }},
        }),
    )
}

impl Respond for Wonde {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let mut st = self.state.lock().unwrap();
        let answer = self.answer(r, &mut st);
        st.seen.push(Seen {
            method: r.method.to_string(),
            path: r.url.path().to_owned(),
            query: r.url.query().map(str::to_owned),
            status: answer.status,
            at: Instant::now(),
            body: serde_json::from_slice(&r.body).ok(),
        });
        answer.template()
    }
}

// ---------------------------------------------------------------------------------------
// The deployment and records.

/// The shipped mappings and connectors with CELT's Wonde destination at `server`.
fn live(server: &MockServer, token: &str) -> Deployment {
    let mut live = Deployment::copy_of("mappings");
    live.destination("celt", "wonde", &server.uri())
        .env("CELT_WONDE_TOKEN", token)
        .max_wait(3.0);
    live
}

fn session_path(school: &str) -> String {
    format!("/v1.0/schools/{school}/attendance/session/")
}

fn students_path(school: &str) -> String {
    format!("/v1.0/schools/{school}/students")
}

fn codes_path(school: &str) -> String {
    format!("/v1.0/schools/{school}/attendance-codes")
}

/// A shipped CELT case's record as `id`, `revision`.
fn record(case: &str, id: &str, revision: u32) -> Value {
    let mut r = case_record("mappings/celt", case);
    r["id"] = id.into();
    r["revision"] = revision.into();
    r
}

/// The shipped illness visit (Penmorvah, 12 May 2026, BST) as `id`, `revision`.
fn visit(id: &str, revision: u32) -> Value {
    record("01-illness-visit.toml", id, revision)
}

/// `v` moved `days` later, every time in it.
fn on_day(v: Value, days: u32) -> Value {
    let day = format!("2026-05-{:02}", 12 + days);
    serde_json::from_str(&v.to_string().replace("2026-05-12", &day)).unwrap()
}

fn wonde_states(live_states: &BTreeMap<String, BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    live_states.get("celt/wonde").cloned().unwrap_or_default()
}

fn state(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Create.

/// Absence visits at Penmorvah and Trevarno become session marks written back to each
/// school through its own Wonde id, exactly as Wonde takes them: the pupil's and the code's
/// Wonde ids (found in the paged listings), the date and session on the school's clock, the
/// comment naming the visit only; no `employee_id` (not mapped: left out, not empty).
#[tokio::test(flavor = "multi_thread")]
async fn absence_visits_are_written_back_as_session_marks() {
    let wonde = Wonde::new(
        TOKEN,
        &[
            (PENMORVAH, UPN, "A1000000201"),
            (TREVARNO, TREVARNO_UPN, "A2000000228"),
        ],
    );
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records(
        "visits.json",
        &[
            case_record("mappings/celt", "01-illness-visit.toml"),
            case_record("mappings/celt", "28-phoned-in-trevarno.toml"),
        ],
    );

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        wonde_states(&live.states().await),
        state(&[("delivered", 2)])
    );

    let posts: Vec<Seen> = wonde
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "one write-back per school: {posts:?}");
    let body_for = |school: &str| {
        posts
            .iter()
            .find(|s| s.path == session_path(school))
            .unwrap_or_else(|| panic!("nothing posted for {school}: {posts:?}"))
            .body
            .clone()
            .unwrap()
    };
    assert_eq!(
        body_for(PENMORVAH),
        json!({"attendance": [{
            "date": "2026-05-12",
            "session": "AM",
            "student_id": "A1000000201",
            "attendance_code_id": "C9",
            "comment": "Home visit celt-visit-201: illness",
        }]})
    );
    let trevarno = body_for(TREVARNO);
    assert_eq!(trevarno["attendance"][0]["student_id"], "A2000000228");
    assert_eq!(trevarno["attendance"][0]["attendance_code_id"], "C9");
    assert_eq!(trevarno["attendance"][0]["date"], "2026-05-12");
    assert!(posts.iter().all(|p| p.status == 200));
    assert_eq!(wonde.register().len(), 2);

    // Each school's students read once, page by page (three pages of 100), and its codes.
    for school in [PENMORVAH, TREVARNO] {
        let pages: Vec<String> = wonde
            .seen()
            .into_iter()
            .filter(|s| s.path == students_path(school))
            .map(|s| s.query.unwrap_or_default())
            .collect();
        assert_eq!(
            pages,
            ["per_page=100", "per_page=100&page=2", "per_page=100&page=3"],
            "{school}"
        );
        assert_eq!(wonde.count("GET", &codes_path(school)), 1);
    }
    for s in wonde.seen() {
        let text = s.body.map(|b| b.to_string()).unwrap_or_default();
        for personal in [UPN, TREVARNO_UPN, "Grace", "Gilbert", "2017-04-10", "40201"] {
            assert!(!text.contains(personal), "`{personal}` sent: {text}");
        }
    }
}

/// The answer's `writeback_id` is the created record's id (connectors/wonde.toml:
/// `target_id = { pointer = "/writeback_id" }`), kept so that the write-back's progress can
/// be looked up (GET /v1.0/writebacks/{id}).
#[tokio::test(flavor = "multi_thread")]
async fn the_writeback_id_is_kept() {
    let wonde = Wonde::new(TOKEN, &[(PENMORVAH, UPN, "A1000000201")]);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records("v.json", &[visit("celt-wb", 1)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        live.delivery("wonde", "celt-wb", 1).await["target_id"],
        "W1"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Update.

/// Wonde's write-back sets the session's mark: revision 2 of a visit (the reason now
/// medical) is written back again, for the same pupil, date and session, with the new code;
/// the school's register holds one mark, the latest.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_revision_is_written_back_again_and_sets_the_same_mark() {
    let wonde = Wonde::new(TOKEN, &[(PENMORVAH, UPN, "A1000000201")]);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records("r1.json", &[visit("celt-upd", 1)]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);

    let mut r2 = visit("celt-upd", 2);
    r2["absence_reason"] = "medical".into();
    r2["summary"] = "Mother phoned: a hospital appointment.".into();
    live.drop_records("r2.json", &[r2]);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);

    let posts: Vec<Value> = wonde
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.body.unwrap())
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0]["attendance"][0]["attendance_code_id"], "C9");
    assert_eq!(
        posts[1],
        json!({"attendance": [{
            "date": "2026-05-12",
            "session": "AM",
            "student_id": "A1000000201",
            "attendance_code_id": "C4",
            "comment": "Home visit celt-upd: medical",
        }]})
    );
    let register = wonde.register();
    assert_eq!(register.len(), 1, "{register:?}");
    assert_eq!(register.values().next().unwrap().0, "C4");
    // The listings were read once (the ids are cached in the store).
    assert_eq!(wonde.count("GET", &students_path(PENMORVAH)), 3);
    assert_eq!(wonde.count("GET", &codes_path(PENMORVAH)), 1);

    let before = wonde.seen().len();
    assert_eq!(live.sync().await.code, 0);
    assert_eq!(wonde.seen().len(), before, "nothing is sent twice");
}

// ---------------------------------------------------------------------------------------
// 3. Credentials.

/// A token Wonde refuses: 401; the delivery is dead at once (a per-app token does not
/// expire or refresh; a new one has to be issued), not retried, and another sync sends
/// nothing. With the right token, a replay delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_dead_at_once_without_a_retry_loop() {
    let wonde = Wonde::new(TOKEN, &[(PENMORVAH, UPN, "A1000000201")]);
    let server = wonde.start().await;
    let mut live = live(&server, "revoked-token");
    live.drop_records("v.json", &[visit("celt-tok", 1)]);

    let started = Instant::now();
    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(run.count("retrying"), 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    let seen = wonde.seen();
    assert_eq!(seen.len(), 1, "one request, refused: {seen:?}");
    assert_eq!(seen[0].status, 401);
    assert_eq!(seen[0].path, students_path(PENMORVAH));

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["last_status"], 401);
    let reason = dead[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("401"), "{reason}");
    assert!(
        reason.contains("Unauthenticated."),
        "Wonde's message: {reason}"
    );
    assert!(
        !reason.contains("revoked-token"),
        "the token leaked: {reason}"
    );

    live.sync().await;
    assert_eq!(
        wonde.seen().len(),
        1,
        "a dead delivery is not retried by a sync"
    );

    live.env("CELT_WONDE_TOKEN", TOKEN);
    let r = live
        .run_json("deadletter replay", &["--destination", "celt/wonde"])
        .await;
    assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(wonde.count("POST", &session_path(PENMORVAH)), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Pupils: not found, and one listing.

/// A UPN the school's Wonde listing does not have: dead, the reason naming the record and
/// never the UPN or the pupil's name; nothing is written back.
#[tokio::test(flavor = "multi_thread")]
async fn a_pupil_wonde_does_not_list_is_dead_naming_the_record_only() {
    let wonde = Wonde::new(TOKEN, &[]);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records("v.json", &[visit("celt-nf", 1)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(wonde.count("POST", &session_path(PENMORVAH)), 0);
    assert_eq!(
        wonde.count("GET", &students_path(PENMORVAH)),
        3,
        "the whole listing was read"
    );

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let shown = live.show(dead[0]["id"].as_i64().unwrap()).await;
    let reason = shown["last_error"].as_str().unwrap();
    assert!(reason.contains("celt-nf"), "the record is named: {reason}");
    assert!(reason.contains("student"), "the look-up is named: {reason}");
    let record = visit("celt-nf", 1);
    let text = format!("{} {shown}", dead[0]);
    for personal in [
        UPN,
        record["pupil"]["given_name"].as_str().unwrap(),
        record["pupil"]["family_name"].as_str().unwrap(),
        record["pupil"]["date_of_birth"].as_str().unwrap(),
    ] {
        assert!(
            !text.contains(personal),
            "`{personal}` in the dead letter: {text}"
        );
    }
}

/// connectors/wonde.toml: "a run costs one listing per school however many pupils it writes
/// for". Ten visits for two pupils read the students' listing once (its three pages) and the
/// codes once; the next run reads nothing.
#[tokio::test(flavor = "multi_thread")]
async fn ten_visits_for_two_pupils_cost_one_listing() {
    let wonde = Wonde::new(
        TOKEN,
        &[
            (PENMORVAH, UPN, "A1000000201"),
            (PENMORVAH, OTHER_UPN, "A1000000202"),
        ],
    );
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    let visits: Vec<Value> = (0..10)
        .map(|i| {
            let v = if i % 2 == 0 {
                record("01-illness-visit.toml", &format!("celt-many-{i}"), 1)
            } else {
                record("02-medical-absence.toml", &format!("celt-many-{i}"), 1)
            };
            on_day(v, i)
        })
        .collect();
    live.drop_records("many.json", &visits);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let listing = wonde.count("GET", &students_path(PENMORVAH));
    let first_pages = wonde
        .seen()
        .iter()
        .filter(|s| {
            s.path == students_path(PENMORVAH) && s.query.as_deref() == Some("per_page=100")
        })
        .count();
    let posts = wonde.count("POST", &session_path(PENMORVAH));
    eprintln!(
        "10 visits of 2 pupils: {first_pages} listing(s), {listing} page request(s), \
         {} code listing(s), {posts} write-back(s)",
        wonde.count("GET", &codes_path(PENMORVAH))
    );
    assert_eq!(first_pages, 1, "one listing");
    assert_eq!(listing, 3, "its three pages, once each");
    assert_eq!(wonde.count("GET", &codes_path(PENMORVAH)), 1);
    assert!(posts <= 10, "{posts}");
    let register = wonde.register();
    assert_eq!(register.len(), 10, "{register:?}");
    let students: std::collections::BTreeSet<&str> =
        register.keys().map(|k| k.1.as_str()).collect();
    assert_eq!(
        students,
        ["A1000000201", "A1000000202"].into_iter().collect()
    );

    let more: Vec<Value> = (10..20)
        .map(|i| {
            on_day(
                record("01-illness-visit.toml", &format!("celt-many-{i}"), 1),
                i - 10,
            )
        })
        .collect();
    live.drop_records("more.json", &more);
    let before = wonde.seen().iter().filter(|s| s.method == "GET").count();
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        wonde.seen().iter().filter(|s| s.method == "GET").count(),
        before,
        "the next run reads no listing"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Validation failure, fix, replay.

/// Wonde refuses a write-back (422): dead at once with Wonde's message in the reason and the
/// response saved; the map is fixed and the dead letter replayed: delivered, the delivery's
/// idempotency key unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_422_is_dead_with_wondes_message_and_a_replay_after_the_fix_delivers() {
    let wonde = Wonde::new(TOKEN, &[(PENMORVAH, UPN, "A1000000201")]);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    // A mistake in the copied map: the session in lower case.
    let map = "mappings/celt/maps/wonde_mark.toml";
    let shipped = std::fs::read_to_string(live.path(map)).unwrap();
    let broken = shipped.replace(
        "{{ visit.arrived_at | session }}",
        "{{ visit.arrived_at | session | lower }}",
    );
    assert_ne!(broken, shipped, "the map's session has moved");
    live.write(map, &broken);
    live.drop_records("v.json", &[visit("celt-422", 1)]);

    let run = live.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(
        wonde.count("POST", &session_path(PENMORVAH)),
        1,
        "a 422 is not retried"
    );

    let dead = live.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let id = dead[0]["id"].as_i64().unwrap();
    let key = dead[0]["idempotency_key"].as_str().unwrap().to_owned();
    let shown = live.show(id).await;
    assert_eq!(shown["last_status"], 422);
    let reason = shown["last_error"].as_str().unwrap();
    assert!(
        reason.contains("The selected attendance.0.session is invalid."),
        "Wonde's message is in the reason: {reason}"
    );
    let saved: Value = serde_json::from_str(shown["response"].as_str().unwrap()).unwrap();
    assert!(
        saved["errors"]["attendance.0.session"].is_array(),
        "{saved}"
    );

    live.write(map, &shipped);
    let r = live.run_json("deadletter replay", &[&id.to_string()]).await;
    assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let posts: Vec<Seen> = wonde
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(
        posts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [422, 200]
    );
    assert_eq!(
        posts[1].body.as_ref().unwrap()["attendance"][0]["session"],
        "AM"
    );
    let shown = live.show(id).await;
    assert_eq!(shown["state"], "delivered");
    assert_eq!(shown["idempotency_key"], key.as_str());
    assert!(live.dead_letters().await.is_empty());
}

// ---------------------------------------------------------------------------------------
// 6. Rate limiting.

/// Wonde's rate limits are not public; a 429 with `Retry-After: 1` is retried no sooner
/// than a second later (not after the connector's 2 s backoff), and the mark written once.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_after_retry_after() {
    let wonde = Wonde::new(TOKEN, &[(PENMORVAH, UPN, "A1000000201")]);
    wonde.throttle(1);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records("v.json", &[visit("celt-429", 1)]);

    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let posts: Vec<Seen> = wonde
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(
        posts.iter().map(|s| s.status).collect::<Vec<_>>(),
        [429, 200],
        "{posts:?}"
    );
    let waited = posts[1].at - posts[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: retried after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(posts[0].body, posts[1].body);
    assert_eq!(wonde.register().len(), 1);
    let d = live.delivery("wonde", "celt-429", 1).await;
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["attempt_log"][0]["status"], 429);
}

/// A listing page that fails (503, `Retry-After: 1`) twice while ten deliveries wait for the
/// listing: nobody starts the listing again from page 1; the read resumes at the failed page
/// after the wait, so the pages are read once each plus the two failures, and every visit
/// is written back.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_listing_page_is_resumed_after_its_wait_not_restarted() {
    let wonde = Wonde::new(
        TOKEN,
        &[
            (PENMORVAH, UPN, "A1000000201"),
            (PENMORVAH, OTHER_UPN, "A1000000202"),
        ],
    );
    wonde.fail_page(2, 2);
    let server = wonde.start().await;
    let mut live = live(&server, TOKEN);
    live.max_wait(30.0);
    let visits: Vec<Value> = (0..10)
        .map(|i| on_day(visit(&format!("celt-resume-{i}"), 1), i))
        .collect();
    live.drop_records("many.json", &visits);
    let run = live.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("dead"), 0);
    let pages: Vec<Seen> = wonde
        .seen()
        .into_iter()
        .filter(|s| s.path == students_path(PENMORVAH))
        .collect();
    let first_pages = pages
        .iter()
        .filter(|s| s.query.as_deref() == Some("per_page=100"))
        .count();
    assert_eq!(first_pages, 1, "the listing was started again: {pages:?}");
    assert_eq!(pages.len(), 5, "3 pages and 2 failures: {pages:?}");
    let failed: Vec<&Seen> = pages.iter().filter(|s| s.status == 503).collect();
    assert_eq!(failed.len(), 2);
    for w in pages.windows(2).filter(|w| w[0].status == 503) {
        assert!(
            w[1].at - w[0].at >= Duration::from_millis(950),
            "Retry-After: 1 was not honoured: {pages:?}"
        );
    }
    assert_eq!(wonde.register().len(), 10);
}

// ---------------------------------------------------------------------------------------
// Probes beyond the six scenarios.

/// A pupil Wonde did not list is added (the MIS synced); the dead letter's reason says
/// "replay once the target has it": a replay then delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_wonde_lists_the_pupil_delivers() {
    let wonde = Wonde::new(TOKEN, &[]);
    let server = wonde.start().await;
    let live = live(&server, TOKEN);
    live.drop_records("v.json", &[visit("celt-late", 1)]);
    let run = live.sync().await;
    assert_eq!(run.count("dead"), 1, "{}", run.summary());

    wonde.add_student(PENMORVAH, UPN, "A1000000201");
    let r = live
        .run_json("deadletter replay", &["--destination", "celt/wonde"])
        .await;
    assert_eq!(r.code, 0, "{:?} {}", r.lines, r.stderr);
    let run = live.sync().await;
    assert_eq!(
        (run.code, run.count("dead")),
        (0, 0),
        "the replay found the listing cached without the pupil: {:?}",
        live.dead_letters().await
    );
    assert_eq!(wonde.register().len(), 1);
}
