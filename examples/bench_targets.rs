//! Target-system benchmark (BENCHMARKS.md, issue 7): an end-to-end sync of N visit reports
//! for one trust into fakes of Arbor, Wonde, Xporter and Ed-Fi (each answering in 10 ms),
//! with the shipped connector files: records/s, deliveries/s per destination, requests each
//! fake received (creates, look-ups, tokens) and the engine's look-up count against the
//! bound the pupils set; then the same records routed to one CSV destination alone.
//!
//! Run: `cargo run --release --example bench_targets` (or scripts/bench-targets.sh).
//! Options: `--records N` (default 50,000), `--pupils N` (default 500, spread over 4 schools).
//!
//! `--faults PERCENT` (issue 17; default 0, today's run): each fake answers that share of the
//! requests it gets (tokens, look-up and listing pages, reconcile reads, writes alike) with a
//! fault, chosen evenly from a seeded RNG (`--fault-seed N`, default 7): a 503 with
//! `Retry-After: 0`; a 429 with `Retry-After: 1`; or, for a write (POST/PUT), the write done
//! and its answer held back 3 s, past the client's timeout (a lost answer; a read gets the
//! 503 instead). Every HTTP destination then gets the limits override `timeout_seconds = 1`,
//! `backoff_min_seconds = 0.2`, `backoff_max_seconds = 2`, `max_attempts = 30`, and the run a
//! 10-minute deadline. The fakes keep what they were written (Arbor's notes, with their
//! fields, listed back for a lost create's reconcile read; Wonde's, Xporter's and Ed-Fi's
//! marks by natural key), and a section after the table counts per target the deliveries by
//! state, the duplicates (Arbor: notes per `[doorstep <id> r<rev>]`), the writes sent again,
//! the requests by kind and the faults by kind. Given at all (`--faults 0` too), the flag
//! prints that section; without it the output is as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use doorstep::config::{DeliverySettings, DestinationOverride, LimitOverrides};
use doorstep::connectors::Connectors;
use doorstep::delivery::Engine;
use doorstep::mapping::Trusts;
use doorstep::pipeline;
use doorstep::report::{Conflict, ExceptionReport, Rejection};
use doorstep::store::{DeliveryStore, SqliteStore};
use doorstep::synthetic::{GenOptions, write_records};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

// As the `doorstep` binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LATENCY: Duration = Duration::from_millis(10);
const TRUST: &str = "celt";
const ARBOR_USER: &str = "bench-arbor";
const ARBOR_PASSWORD: &str = "bench-arbor-password";
const WONDE_TOKEN: &str = "bench-wonde-token";
const XPORTER_TOKEN_PATH: &str = "/idaas/sts/STS/GetToken";
const WONDE_PAGE: usize = 100;
/// The statutory codes celt's codes.toml produces: Wonde's attendance-codes listing.
const CODES: &[&str] = &["I", "M", "O", "G", "C", "Y1", "E", "N"];

/// The four schools: celt's three and a fourth (Ed-Fi's), with the DfE LA and establishment
/// numbers their UPNs are made of.
struct School {
    urn: &'static str,
    name: &'static str,
    estab: &'static str,
    /// Which system takes its absence visits.
    system: &'static str,
}

const SCHOOLS: &[School] = &[
    School {
        urn: "136401",
        name: "Penmorvah Academy",
        estab: "4012",
        system: "wonde (A1930499544)",
    },
    School {
        urn: "136402",
        name: "Trevarno Primary Academy",
        estab: "2107",
        system: "wonde (A2032141745)",
    },
    School {
        urn: "136403",
        name: "St Keverne Community School",
        estab: "4150",
        system: "xporter (estab 9084123)",
    },
    School {
        urn: "136404",
        name: "Lanner Primary Academy",
        estab: "2050",
        system: "edfi (schoolId 255901001)",
    },
];
const WONDE_SCHOOLS: &[(&str, &str)] = &[("136401", "A1930499544"), ("136402", "A2032141745")];

struct Quiet;
impl pipeline::Reporter for Quiet {
    fn rejection(&mut self, _: &Rejection) {}
    fn exception(&mut self, _: &ExceptionReport) {}
    fn conflict(&mut self, _: &Conflict) {}
}

/// The value after the last `name` (so a later one wins: scripts/bench-targets.sh passes
/// `--records` first), or `default`.
fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn has_arg(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A lost answer comes this late: past the 1 s timeout fault mode gives every destination.
const LOST_DELAY: Duration = Duration::from_secs(3);
/// The run's deadline in fault mode: long enough for every retry.
const FAULT_DEADLINE: Duration = Duration::from_secs(600);

/// `--faults`: the percentage of requests faulted, and the seed of the draws.
#[derive(Clone, Copy)]
struct FaultPlan {
    percent: f64,
    seed: u64,
}

/// A fault, chosen evenly.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// 503, `Retry-After: 0`.
    Unavailable,
    /// 429, `Retry-After: 1`.
    Throttled,
    /// A write done, its answer `LOST_DELAY` late (a read: `Unavailable`).
    Lost,
}
const FAULT_NAMES: [&str; 3] = ["503", "429", "lost"];

/// What a request to a fake is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Token,
    Lookup,
    Reconcile,
    Create,
    Update,
    Other,
}
const KINDS: [Kind; 6] = [
    Kind::Token,
    Kind::Lookup,
    Kind::Reconcile,
    Kind::Create,
    Kind::Update,
    Kind::Other,
];
const KIND_NAMES: [&str; 6] = [
    "tokens",
    "look-ups",
    "reconcile",
    "creates",
    "updates",
    "other",
];

struct Pupil {
    school: usize,
    upn: String,
    mis_id: String,
}

/// `n` pupils spread evenly over the schools, each with a UPN valid per the DfE check
/// letter (as src/synthetic.rs makes them: LA 908, the school's establishment number).
fn pupils(n: usize) -> Vec<Pupil> {
    (0..n)
        .map(|i| {
            let school = i % SCHOOLS.len();
            let seq = i / SCHOOLS.len();
            let rest = format!(
                "908{}{:02}{:03}",
                SCHOOLS[school].estab,
                14 + seq / 1000 % 11,
                seq % 1000
            );
            let letter = doorstep::records::upn_check_letter(rest.as_bytes()).unwrap() as char;
            Pupil {
                school,
                upn: format!("{letter}{rest}"),
                mis_id: format!("{}", 10_000 + i),
            }
        })
        .collect()
}

/// `n` visit reports from `doorstep gen`'s generator (its celt visit reports, with their
/// mix of purposes, outcomes and absence reasons), each re-addressed to one of `pupils`
/// (round robin) at that pupil's school, with an id of its own. Returns how many carry an
/// absence reason and are not cancelled.
fn records(n: usize, pupils: &[Pupil], file: &Path) -> usize {
    let mut out = String::with_capacity(n * 1400);
    let mut made = 0;
    let mut absences = 0;
    let mut seed = 42;
    while made < n {
        let mut raw = Vec::new();
        write_records(
            GenOptions {
                count: 20_000,
                seed,
                invalid_share: 0.0,
            },
            &mut raw,
        )
        .unwrap();
        seed += 1;
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if made == n {
                break;
            }
            let mut v: Value = serde_json::from_slice(line).unwrap();
            if v["kind"] != "visit_report" || v["trust"] != TRUST {
                continue;
            }
            let p = &pupils[made % pupils.len()];
            let s = &SCHOOLS[p.school];
            v["id"] = format!("V-bench-{made:07}").into();
            v["school"] = json!({ "urn": s.urn, "name": s.name });
            v["pupil"]["upn"] = p.upn.clone().into();
            v["pupil"]["mis_id"] = p.mis_id.clone().into();
            if v.get("absence_reason").is_some() && v["outcome"] != "cancelled" {
                absences += 1;
            }
            out.push_str(&v.to_string());
            out.push('\n');
            made += 1;
        }
    }
    std::fs::write(file, out).unwrap();
    absences
}

/// Requests one fake received, by kind, and when its last create came.
#[derive(Default)]
struct Counts {
    creates: AtomicU64,
    /// Marks carried by the creates (Wonde's and Xporter's batches).
    items: AtomicU64,
    lookups: AtomicU64,
    tokens: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    /// Nanoseconds after `Fake::base` of the last create.
    last_create: AtomicU64,
    /// Every request received, by `Kind` (faulted ones too).
    received: [AtomicU64; 6],
    /// Faults answered, by `Fault` and `Kind`.
    faults: [[AtomicU64; 6]; 3],
    /// What the fake was written.
    stored: Mutex<Stored>,
}

impl Counts {
    fn reset(&self) {
        for c in [
            &self.creates,
            &self.items,
            &self.lookups,
            &self.tokens,
            &self.refused,
            &self.other,
            &self.last_create,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for c in self.received.iter().chain(self.faults.iter().flatten()) {
            c.store(0, Ordering::Relaxed);
        }
        *self.stored.lock().unwrap() = Stored::default();
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One Arbor note as created (its fields as sent, later PUTs merged in).
struct Note {
    /// `pastoral-notes` or `safeguarding-notes`.
    resource: String,
    fields: serde_json::Map<String, Value>,
}

/// One entity of a create-or-update target (Wonde's and Xporter's marks, Ed-Fi's events),
/// by its natural key.
struct Entity {
    /// Its number (Ed-Fi's Location).
    id: u64,
    /// The visit reports whose writes set it (from `Home visit <id>` in its comment).
    records: BTreeSet<String>,
}

/// What a fake was written.
#[derive(Default)]
struct Stored {
    /// Arbor: note number → note (its href `/rest-v2/<resource>/<number>`).
    notes: BTreeMap<u64, Note>,
    /// Arbor: student href → its notes' numbers.
    by_student: HashMap<String, Vec<u64>>,
    /// The others: natural key → entity.
    entities: HashMap<String, Entity>,
    /// The others: items (marks, events) written, and how many of them were written before
    /// (same key, same visit report): sent again.
    item_writes: u64,
    resent: u64,
    next: u64,
}

impl Stored {
    /// One item written to a create-or-update target: its entity's number, and whether
    /// the write made it.
    fn upsert(&mut self, key: String, record: String) -> (u64, bool) {
        self.item_writes += 1;
        let next = self.next + 1;
        let mut created = false;
        let e = self.entities.entry(key).or_insert_with(|| {
            created = true;
            Entity {
                id: next,
                records: BTreeSet::new(),
            }
        });
        let id = e.id;
        if !e.records.insert(record) {
            self.resent += 1;
        }
        if created {
            self.next = next;
        }
        (id, created)
    }
}

/// The visit report an item names: `Home visit <id>: …` or `Home visit <id> (…`.
fn visit_of(text: Option<&Value>) -> String {
    text.and_then(Value::as_str)
        .and_then(|t| t.strip_prefix("Home visit "))
        .map(|t| t.split([' ', ':']).next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// The `[doorstep <id> r<rev>]` reference in an Arbor note's summary.
fn reference_of(note: &Note) -> Option<String> {
    let summary = note.fields.get("summary")?.as_str()?;
    let at = summary.rfind("[doorstep ")?;
    let end = summary[at..].find(']')?;
    Some(summary[at..at + end + 1].to_owned())
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Arbor,
    Wonde,
    Xporter,
    Edfi,
}

/// One target system's fake: what the connector files' guesses and TARGETS.md say it
/// answers, after `LATENCY`; a request without the right credentials gets a 401. With
/// `--faults`, a share of the requests get a `Fault` instead.
struct Fake {
    system: System,
    uri: String,
    base: Instant,
    counts: Arc<Counts>,
    /// Arbor: UPN → student number.
    students: Arc<HashMap<String, usize>>,
    /// Wonde: school id → its pupils' (Wonde id, UPN).
    wonde: Arc<HashMap<String, Vec<(String, String)>>>,
    arbor_auth: String,
    /// The percentage of requests faulted, and the draws.
    faults: f64,
    rng: Mutex<ChaCha8Rng>,
}

fn ok(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(body)
        .set_delay(LATENCY)
}

/// A fault's answer: `status` with `Retry-After`, in Arbor's error envelope.
fn busy(status: u16, retry_after: &str) -> ResponseTemplate {
    ok(
        status,
        json!({ "response": { "code": status, "reason": "injected fault" } }),
    )
    .insert_header("Retry-After", retry_after)
}

/// Arbor's entity key for a notes resource.
fn note_key(resource: &str) -> Option<&'static str> {
    match resource {
        "pastoral-notes" => Some("pastoralNote"),
        "safeguarding-notes" => Some("safeguardingNote"),
        _ => None,
    }
}

impl Fake {
    fn create(&self) -> u64 {
        let n = self.counts.creates.fetch_add(1, Ordering::Relaxed) + 1;
        self.counts
            .last_create
            .fetch_max(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        n
    }

    fn items(&self, body: &[u8], pointer: &str) {
        let n = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.pointer(pointer).and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        self.counts.items.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn refuse(&self) -> ResponseTemplate {
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(401).set_delay(LATENCY)
    }

    fn unknown(&self) -> ResponseTemplate {
        self.counts.other.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(404).set_delay(LATENCY)
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.counts.stored.lock().unwrap()
    }

    /// This request's fault, if it draws one.
    fn draw(&self) -> Option<Fault> {
        if self.faults <= 0.0 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        if rng.random_range(0.0..100.0) >= self.faults {
            return None;
        }
        Some(match rng.random_range(0..3u8) {
            0 => Fault::Unavailable,
            1 => Fault::Throttled,
            _ => Fault::Lost,
        })
    }

    /// What the request is, by method and path.
    fn kind(&self, r: &Request) -> Kind {
        let path = r.url.path();
        let method = r.method.as_str();
        match self.system {
            System::Arbor => {
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match (method, segments.as_slice()) {
                    ("GET", ["rest-v2", "students"]) => Kind::Lookup,
                    ("GET", ["rest-v2", res]) if note_key(res).is_some() => Kind::Reconcile,
                    ("POST", ["rest-v2", res]) if note_key(res).is_some() => Kind::Create,
                    ("PUT", ["rest-v2", res, _]) if note_key(res).is_some() => Kind::Update,
                    _ => Kind::Other,
                }
            }
            System::Wonde => match method {
                "GET" if path.ends_with("/students") || path.ends_with("/attendance-codes") => {
                    Kind::Lookup
                }
                "POST" if path.ends_with("/attendance/session/") => Kind::Create,
                _ => Kind::Other,
            },
            System::Xporter => match (method, path) {
                ("POST", XPORTER_TOKEN_PATH) => Kind::Token,
                ("POST", "/api/v1/Attendance/9084123/") => Kind::Create,
                _ => Kind::Other,
            },
            System::Edfi => match (method, path) {
                ("POST", "/oauth/token") => Kind::Token,
                ("POST", "/data/v3/ed-fi/studentSchoolAttendanceEvents") => Kind::Create,
                _ => Kind::Other,
            },
        }
    }

    /// Arbor: the notes listing (a lost create's reconcile read), a create, an update.
    fn arbor_notes(&self, r: &Request, resource: &str, number: Option<&str>) -> ResponseTemplate {
        let Some(key) = note_key(resource) else {
            return self.unknown();
        };
        let invalid = |message: &str| {
            ok(
                422,
                json!({ "response": { "code": 422, "reason": "Unprocessable Entity",
                    "errors": [{ "exception": "ValidationException", "message": message }] } }),
            )
        };
        let fields = || {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.pointer(&format!("/request/{key}")).cloned())
                .and_then(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
        };
        match (r.method.as_str(), number) {
            // Not public: how Arbor filters a listing of notes; connectors/arbor.toml's guess.
            ("GET", None) => {
                let Some(student) = r
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "filters.student.equals")
                    .map(|(_, v)| v.into_owned())
                else {
                    return ok(
                        400,
                        json!({ "response": { "code": 400, "reason": "the fake lists notes by filters.student.equals only" } }),
                    );
                };
                let st = self.stored();
                let notes: Vec<Value> = st
                    .by_student
                    .get(&student)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| {
                        let note = st.notes.get(n)?;
                        (note.resource == resource).then(|| {
                            let mut out = note.fields.clone();
                            out.insert("href".into(), json!(format!("/rest-v2/{resource}/{n}")));
                            Value::Object(out)
                        })
                    })
                    .collect();
                ok(200, json!({ format!("{key}s"): notes }))
            }
            ("POST", None) => {
                let Some(fields) = fields() else {
                    return invalid("no entity in the request");
                };
                self.create();
                let student = fields
                    .get("student")
                    .and_then(|s| s.get("href"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let mut st = self.stored();
                st.next += 1;
                let n = st.next;
                st.notes.insert(
                    n,
                    Note {
                        resource: resource.to_owned(),
                        fields,
                    },
                );
                st.by_student.entry(student).or_default().push(n);
                ok(
                    200,
                    json!({ key: { "href": format!("/rest-v2/{resource}/{n}") } }),
                )
            }
            ("PUT", Some(number)) => {
                let Some(changed) = fields() else {
                    return invalid("no entity in the request");
                };
                let mut st = self.stored();
                let Some(note) = number
                    .parse()
                    .ok()
                    .and_then(|n: u64| st.notes.get_mut(&n))
                    .filter(|note| note.resource == resource)
                else {
                    drop(st);
                    return self.unknown();
                };
                note.fields.extend(changed);
                ok(
                    200,
                    json!({ key: { "href": format!("/rest-v2/{resource}/{number}") } }),
                )
            }
            _ => self.unknown(),
        }
    }

    /// The answer without a fault (the fake's state changes here).
    fn answer(&self, r: &Request) -> ResponseTemplate {
        let auth = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let path = r.url.path();
        let post = r.method.as_str() == "POST";
        let query = |name: &str| {
            r.url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        match self.system {
            System::Arbor => {
                if auth != self.arbor_auth {
                    return self.refuse();
                }
                if !post && path == "/rest-v2/students" {
                    self.counts.lookups.fetch_add(1, Ordering::Relaxed);
                    let found = query("filters.upn.equals").and_then(|u| self.students.get(&u));
                    let students: Vec<Value> = found
                        .map(|n| json!({ "href": format!("/rest-v2/students/{n}") }))
                        .into_iter()
                        .collect();
                    return ok(200, json!({ "students": students }));
                }
                match path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
                    ["rest-v2", resource] => self.arbor_notes(r, resource, None),
                    ["rest-v2", resource, n] => self.arbor_notes(r, resource, Some(n)),
                    _ => self.unknown(),
                }
            }
            System::Wonde => {
                if auth != format!("Bearer {WONDE_TOKEN}") {
                    return self.refuse();
                }
                let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
                let (school, what) = match parts.as_slice() {
                    ["v1.0", "schools", s, rest @ ..] => (*s, rest.join("/")),
                    _ => return self.unknown(),
                };
                let Some(students) = self.wonde.get(school) else {
                    return self.unknown();
                };
                match (post, what.as_str()) {
                    (false, "students") => {
                        self.counts.lookups.fetch_add(1, Ordering::Relaxed);
                        let page: usize = query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                        let data: Vec<Value> = students
                            .iter()
                            .skip((page - 1) * WONDE_PAGE)
                            .take(WONDE_PAGE)
                            .map(|(id, upn)| json!({ "id": id, "upn": upn }))
                            .collect();
                        let next = (page * WONDE_PAGE < students.len()).then(|| {
                            format!(
                                "{}/v1.0/schools/{school}/students?per_page={WONDE_PAGE}&page={}",
                                self.uri,
                                page + 1
                            )
                        });
                        ok(
                            200,
                            json!({ "data": data, "meta": { "pagination": { "next": next } } }),
                        )
                    }
                    (false, "attendance-codes") => {
                        self.counts.lookups.fetch_add(1, Ordering::Relaxed);
                        let data: Vec<Value> = CODES
                            .iter()
                            .map(|c| json!({ "id": format!("code-{c}"), "code": c }))
                            .collect();
                        ok(
                            200,
                            json!({ "data": data, "meta": { "pagination": { "next": null } } }),
                        )
                    }
                    (true, "attendance/session") => {
                        self.create();
                        self.items(&r.body, "/attendance");
                        // A mark per pupil, date and session: a write sets it again.
                        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        let mut st = self.stored();
                        for m in body["attendance"].as_array().into_iter().flatten() {
                            let key = format!(
                                "{school} {} {} {}",
                                m["student_id"], m["date"], m["session"]
                            );
                            st.upsert(key, visit_of(m.get("comment")));
                        }
                        ok(200, json!({ "writeback_id": "W1" }))
                    }
                    _ => self.unknown(),
                }
            }
            System::Xporter => {
                if post && path == XPORTER_TOKEN_PATH {
                    self.counts.tokens.fetch_add(1, Ordering::Relaxed);
                    return ok(200, json!({ "token": "t", "expires": 3600 }));
                }
                if auth != "Idaas t" {
                    return self.refuse();
                }
                if post && path == "/api/v1/Attendance/9084123/" {
                    self.create();
                    self.items(&r.body, "/Marks");
                    // Create-or-update per pupil, date and session.
                    let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    let mut st = self.stored();
                    for m in body["Marks"].as_array().into_iter().flatten() {
                        let key = format!("{} {} {}", m["StudentId"], m["Date"], m["Session"]);
                        st.upsert(key, visit_of(m.get("Notes")));
                    }
                    return ok(200, json!({ "ExceptionType": null }));
                }
                self.unknown()
            }
            System::Edfi => {
                if post && path == "/oauth/token" {
                    if !auth.starts_with("Basic ") {
                        return self.refuse();
                    }
                    self.counts.tokens.fetch_add(1, Ordering::Relaxed);
                    return ok(
                        200,
                        json!({ "access_token": "t", "token_type": "bearer", "expires_in": 3600 }),
                    );
                }
                if !auth.eq_ignore_ascii_case("bearer t") {
                    return self.refuse();
                }
                if post && path == "/data/v3/ed-fi/studentSchoolAttendanceEvents" {
                    self.create();
                    // An upsert by natural key: 201 when it made the event, 200 when it
                    // updated it.
                    let e: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    let key = format!(
                        "{} {} {} {} {} {}",
                        e["studentReference"]["studentUniqueId"],
                        e["schoolReference"]["schoolId"],
                        e["sessionReference"]["schoolYear"],
                        e["sessionReference"]["sessionName"],
                        e["eventDate"],
                        e["attendanceEventCategoryDescriptor"]
                    );
                    let (n, created) = self
                        .stored()
                        .upsert(key, visit_of(e.get("attendanceEventReason")));
                    return ResponseTemplate::new(if created { 201 } else { 200 })
                        .insert_header(
                            "Location",
                            format!(
                                "{}/data/v3/ed-fi/studentSchoolAttendanceEvents/{n:032x}",
                                self.uri
                            ),
                        )
                        .set_delay(LATENCY);
                }
                self.unknown()
            }
        }
    }
}

impl Respond for Fake {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let kind = self.kind(r);
        self.counts.received[kind as usize].fetch_add(1, Ordering::Relaxed);
        let write = matches!(r.method.as_str(), "POST" | "PUT");
        let fault = match self.draw() {
            // A read changes nothing: its lost answer is a 503.
            Some(Fault::Lost) if !write => Some(Fault::Unavailable),
            f => f,
        };
        if let Some(f) = fault {
            self.counts.faults[f as usize][kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            None => self.answer(r),
            // Done, and answered after the client stopped waiting.
            Some(Fault::Lost) => self.answer(r).set_delay(LOST_DELAY),
            Some(Fault::Unavailable) => busy(503, "0"),
            Some(Fault::Throttled) => busy(429, "1"),
        }
    }
}

struct Fakes {
    servers: Vec<(System, &'static str, MockServer, Arc<Counts>)>,
}

impl Fakes {
    async fn start(pupils: &[Pupil], base: Instant, faults: Option<FaultPlan>) -> Fakes {
        let students: Arc<HashMap<String, usize>> = Arc::new(
            pupils
                .iter()
                .enumerate()
                .map(|(i, p)| (p.upn.clone(), 1000 + i))
                .collect(),
        );
        let wonde: Arc<HashMap<String, Vec<(String, String)>>> = Arc::new(
            WONDE_SCHOOLS
                .iter()
                .map(|(urn, id)| {
                    let list = pupils
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| SCHOOLS[p.school].urn == *urn)
                        .map(|(i, p)| (format!("B{i:09}"), p.upn.clone()))
                        .collect();
                    ((*id).to_owned(), list)
                })
                .collect(),
        );
        let arbor_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{ARBOR_USER}:{ARBOR_PASSWORD}"))
        );
        let mut servers = Vec::new();
        for (i, (system, name)) in [
            (System::Arbor, "arbor"),
            (System::Wonde, "wonde"),
            (System::Xporter, "xporter"),
            (System::Edfi, "edfi"),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = faults.map_or(0, |f| f.seed);
            let server = MockServer::builder()
                .disable_request_recording()
                .start()
                .await;
            let counts = Arc::new(Counts::default());
            Mock::given(wiremock::matchers::any())
                .respond_with(Fake {
                    system,
                    uri: server.uri(),
                    base,
                    counts: counts.clone(),
                    students: students.clone(),
                    wonde: wonde.clone(),
                    arbor_auth: arbor_auth.clone(),
                    faults: faults.map_or(0.0, |f| f.percent),
                    // Each fake draws on its own: one's traffic does not shift another's.
                    rng: Mutex::new(ChaCha8Rng::seed_from_u64(
                        seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
                    )),
                })
                .mount(&server)
                .await;
            servers.push((system, name, server, counts));
        }
        Fakes { servers }
    }

    fn uri(&self, system: System) -> String {
        self.servers
            .iter()
            .find(|(s, ..)| *s == system)
            .map(|(_, _, server, _)| server.uri())
            .unwrap()
    }
}

/// The deployment: the shipped connectors, celt's trust (a fourth school added), policy
/// and codes, secrets in files, and `routes` with the maps it names.
fn deployment(dir: &Path, routes: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let trust = dir.join("mappings").join(TRUST);
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::create_dir_all(trust.join("maps")).unwrap();
    std::fs::create_dir_all(trust.join("secrets")).unwrap();
    for entry in std::fs::read_dir(root.join("connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(
                &path,
                dir.join("connectors").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let celt = root.join("mappings/celt");
    let mut trust_toml = std::fs::read_to_string(celt.join("trust.toml")).unwrap();
    trust_toml.push_str(
        "\n# Added for the benchmark: a fourth school, its absence visits to Ed-Fi.\n\
         [[schools]]\nurn = \"136404\"\nname = \"Lanner Primary Academy\"\n\
         latitude = 50.2150\nlongitude = -5.1950\n",
    );
    std::fs::write(trust.join("trust.toml"), trust_toml).unwrap();
    for f in ["policy.toml", "codes.toml"] {
        std::fs::copy(celt.join(f), trust.join(f)).unwrap();
    }
    for (from, name) in [
        (
            "mappings/thrive/maps/arbor_pastoral_note.toml",
            "arbor_pastoral_note",
        ),
        ("mappings/celt/maps/wonde_mark.toml", "wonde_mark"),
        ("mappings/celt/maps/xporter_mark.toml", "xporter_mark"),
        (
            "examples/edfi/mappings/northfield/maps/edfi_attendance_event.toml",
            "edfi_attendance_event",
        ),
        ("mappings/celt/maps/contact_row.toml", "contact_row"),
    ] {
        std::fs::copy(
            root.join(from),
            trust.join("maps").join(format!("{name}.toml")),
        )
        .unwrap();
    }
    for (file, secret) in [
        ("arbor_user", ARBOR_USER),
        ("arbor_password", ARBOR_PASSWORD),
        ("wonde_token", WONDE_TOKEN),
        ("xporter_password", "bench-xporter-password"),
        ("edfi_key", "bench-edfi-key"),
        ("edfi_secret", "bench-edfi-secret"),
    ] {
        // Readable by the owner alone: doorstep refuses a secret others can read.
        let path = trust.join("secrets").join(file);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    std::fs::write(trust.join("routes.toml"), routes).unwrap();
}

/// Visit reports to Arbor pastoral notes; absence visits to Wonde (two schools), Xporter
/// (one) and Ed-Fi (one): as celt's and thrive's shipped routes, pointed at the fakes.
fn target_routes(f: &Fakes) -> String {
    let (arbor, wonde, xporter, edfi) = (
        f.uri(System::Arbor),
        f.uri(System::Wonde),
        f.uri(System::Xporter),
        f.uri(System::Edfi),
    );
    format!(
        r#"[destinations.arbor_notes]
connector = "arbor"
url = "{arbor}"
username = {{ file = "secrets/arbor_user" }}
password = {{ file = "secrets/arbor_password" }}
holds = "safeguarding"

[destinations.wonde]
connector = "wonde"
url = "{wonde}"
token = {{ file = "secrets/wonde_token" }}
holds = "attendance"

[destinations.wonde.schools."136401"]
wonde_school_id = "A1930499544"

[destinations.wonde.schools."136402"]
wonde_school_id = "A2032141745"

[destinations.xporter]
connector = "xporter"
url = "{xporter}"
token_url = "{xporter}{XPORTER_TOKEN_PATH}"
password = {{ file = "secrets/xporter_password" }}
holds = "attendance"
vars = {{ relying_party = "https://xporter.groupcall.com/", third_party_id = "doorstep" }}

[destinations.xporter.schools."136403"]
estab = "9084123"

[destinations.edfi]
connector = "edfi"
url = "{edfi}"
token_url = "{edfi}/oauth/token"
client_id = {{ file = "secrets/edfi_key" }}
client_secret = {{ file = "secrets/edfi_secret" }}
holds = "attendance"
vars = {{ school_year = "2026", session_name = "2025-2026 Summer Term" }}

[destinations.edfi.schools."136404"]
school_id = "255901001"

[[route]]
name = "visits-to-arbor"
kinds = ["visit_report"]
to = "arbor_notes"
map = "arbor_pastoral_note"

[[route]]
name = "absence-to-wonde"
kinds = ["visit_report"]
schools = ["136401", "136402"]
when = "attendance_code is defined and outcome != 'cancelled'"
to = "wonde"
map = "wonde_mark"

[[route]]
name = "absence-to-xporter"
kinds = ["visit_report"]
schools = ["136403"]
when = "attendance_code is defined and outcome != 'cancelled'"
to = "xporter"
map = "xporter_mark"

[[route]]
name = "absence-to-edfi"
kinds = ["visit_report"]
schools = ["136404"]
when = "attendance_code is defined and outcome != 'cancelled'"
to = "edfi"
map = "edfi_attendance_event"
"#
    )
}

/// Every visit report to one CSV contact log.
const CSV_ROUTES: &str = r#"[destinations.contact_log]
connector = "csv_log"
file = "{{ school.urn }}/contact-log-{{ date }}.csv"
holds = "contacts"

[[route]]
name = "visits-to-contact-log"
kinds = ["visit_report"]
to = "contact_log"
map = "contact_row"
"#;

struct Timings {
    ingest: f64,
    route: f64,
    run: f64,
    deliveries: usize,
    /// destination → state → count.
    states: Vec<(String, String, u64)>,
    lookups: u64,
    dead: Vec<String>,
    /// From the store after the run, for `--faults`' report.
    attempts: Attempts,
}

/// What the store recorded of the run's attempts.
#[derive(Default)]
struct Attempts {
    /// destination → attempt outcome (delivered, failed, dead, adopted, unchanged) → count.
    by_outcome: BTreeMap<String, BTreeMap<String, u64>>,
    /// destination → (deliveries marked unsure, most attempts of one delivery).
    unsure_max: BTreeMap<String, (u64, u64)>,
    /// Arbor's delivered deliveries: (record id, revision, target id).
    arbor: Vec<(String, i64, Option<String>)>,
}

/// Reads the attempts of a closed store.
async fn attempts_in(db: &Path) -> Attempts {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(db)
                .read_only(true),
        )
        .await
        .unwrap();
    let mut a = Attempts::default();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT d.destination, a.outcome, COUNT(*) FROM delivery_attempts a \
         JOIN deliveries d ON d.seq = a.delivery GROUP BY d.destination, a.outcome",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (dest, outcome, n) in rows {
        a.by_outcome
            .entry(dest)
            .or_default()
            .insert(outcome, n as u64);
    }
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT destination, SUM(unsure), MAX(attempts) FROM deliveries GROUP BY destination",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (dest, unsure, max) in rows {
        a.unsure_max.insert(dest, (unsure as u64, max as u64));
    }
    a.arbor = sqlx::query_as(
        "SELECT record_id, revision, target_id FROM deliveries \
         WHERE destination = 'arbor_notes' AND state = 'delivered'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    a
}

/// Fault mode's limits for every HTTP destination: a 1 s timeout (a lost answer's 3 s is
/// past it), a short backoff and room for many attempts.
fn fault_overrides() -> BTreeMap<(String, String), DestinationOverride> {
    ["arbor_notes", "wonde", "xporter", "edfi"]
        .into_iter()
        .map(|name| {
            (
                (TRUST.to_owned(), name.to_owned()),
                DestinationOverride {
                    limits: LimitOverrides {
                        timeout_seconds: Some(1.0),
                        backoff_min_seconds: Some(0.2),
                        backoff_max_seconds: Some(2.0),
                        max_attempts: Some(30),
                        ..LimitOverrides::default()
                    },
                    ..DestinationOverride::default()
                },
            )
        })
        .collect()
}

/// Ingests the records into a fresh store of a deployment with `routes`, routes them and
/// runs the engine until nothing is due; `run_started` is told the instant the run begins.
/// With `faults`, the HTTP destinations get fault mode's limits and the run its deadline.
async fn sync(
    routes: &str,
    records: &Path,
    faults: Option<FaultPlan>,
    run_started: impl FnOnce(),
) -> Timings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    deployment(path, routes);
    let trusts = Arc::new(Trusts::load(&path.join("mappings"), chrono_tz::Europe::London).unwrap());
    let connectors = Arc::new(Connectors::load(&path.join("connectors")).unwrap());
    let settings = DeliverySettings {
        out_dir: path.join("out"),
        overrides: if faults.is_some_and(|f| f.percent > 0.0) {
            fault_overrides()
        } else {
            BTreeMap::new()
        },
    };
    let engine = Engine::new(trusts.clone(), connectors, &settings).unwrap();
    let store = Arc::new(SqliteStore::open(&path.join("bench.db")).await.unwrap());
    let t = Instant::now();
    let summary = pipeline::ingest(
        store.as_ref(),
        vec![records.to_path_buf()],
        trusts.clone(),
        &mut Quiet,
    )
    .await
    .unwrap();
    let ingest = t.elapsed().as_secs_f64();
    assert_eq!(summary.rejected, 0, "every record valid");
    let t = Instant::now();
    let deliveries = engine.route(store.as_ref()).await.unwrap();
    let route = t.elapsed().as_secs_f64();
    run_started();
    let t = Instant::now();
    let deadline = if faults.is_some_and(|f| f.percent > 0.0) {
        Instant::now() + FAULT_DEADLINE
    } else {
        Instant::now()
    };
    engine.run(store.clone(), deadline).await.unwrap();
    let run = t.elapsed().as_secs_f64();
    let states = store
        .delivery_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.destination, c.state.to_string(), c.count))
        .collect();
    let dead = store
        .deliveries_in(doorstep::store::DeliveryState::Dead, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            format!(
                "{} {}: {}",
                d.destination,
                d.record_id,
                d.last_error.unwrap_or_default()
            )
        })
        .collect();
    let lookups = engine.lookup_requests();
    store.close().await;
    let attempts = if faults.is_some() {
        attempts_in(&path.join("bench.db")).await
    } else {
        Attempts::default()
    };
    Timings {
        ingest,
        route,
        run,
        deliveries,
        states,
        lookups,
        dead,
        attempts,
    }
}

fn delivered(t: &Timings, destination: &str) -> u64 {
    t.states
        .iter()
        .filter(|(d, s, _)| d == destination && s == "delivered")
        .map(|(.., n)| n)
        .sum()
}

fn not_delivered(t: &Timings) -> Vec<String> {
    t.states
        .iter()
        .filter(|(_, s, _)| s != "delivered")
        .map(|(d, s, n)| format!("{d} {s}: {n}"))
        .collect()
}

async fn bench(n: usize, pupil_count: usize, faults: Option<FaultPlan>) {
    let base = Instant::now();
    let pupils = pupils(pupil_count);
    let fakes = Fakes::start(&pupils, base, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.jsonl");
    let absences = records(n, &pupils, &file);
    println!(
        "machine: {} cores; {n} visit reports for {} pupils at {} schools of one trust ({absences} absence visits); \
         four fakes in this process, each answering in {} ms",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        pupils.len(),
        SCHOOLS.len(),
        LATENCY.as_millis()
    );
    for s in SCHOOLS {
        println!(
            "  school {} ({}): absence visits to {}",
            s.urn, s.name, s.system
        );
    }

    // The four target systems.
    let mut run_start = 0u64;
    let t = sync(&target_routes(&fakes), &file, faults, || {
        for (.., c) in &fakes.servers {
            c.reset();
        }
        run_start = base.elapsed().as_nanos() as u64;
    })
    .await;
    let sync_secs = t.route + t.run;
    println!();
    println!(
        "four target systems: ingest {:.2} s; route {:.2} s ({} deliveries); run {:.2} s",
        t.ingest, t.route, t.deliveries, t.run
    );
    println!(
        "  sync (route + run): {n} records in {sync_secs:.2} s = {:.0} records/s ({:.0} records/s with the ingest)",
        n as f64 / sync_secs,
        n as f64 / (t.ingest + sync_secs)
    );
    println!(
        "  {:<12} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9} {:>13}",
        "destination",
        "delivered",
        "creates",
        "marks",
        "look-ups",
        "tokens",
        "refused",
        "other",
        "busy (s)",
        "deliveries/s"
    );
    let mut fake_lookups = 0;
    for (system, name, _, c) in &fakes.servers {
        let dest = match system {
            System::Arbor => "arbor_notes",
            _ => name,
        };
        let d = delivered(&t, dest);
        let last = c.last_create.load(Ordering::Relaxed);
        // From the run's start to the last create answered.
        let busy = if last > run_start {
            (last - run_start) as f64 / 1e9 + LATENCY.as_secs_f64()
        } else {
            0.0
        };
        let items = c.items.load(Ordering::Relaxed);
        fake_lookups += c.lookups.load(Ordering::Relaxed);
        println!(
            "  {:<12} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9.2} {:>13.0}",
            dest,
            d,
            c.creates.load(Ordering::Relaxed),
            if items > 0 {
                items.to_string()
            } else {
                "-".into()
            },
            c.lookups.load(Ordering::Relaxed),
            c.tokens.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.other.load(Ordering::Relaxed),
            busy,
            if busy > 0.0 { d as f64 / busy } else { 0.0 }
        );
    }
    let wonde_pupils = pupils
        .iter()
        .filter(|p| {
            WONDE_SCHOOLS
                .iter()
                .any(|(u, _)| *u == SCHOOLS[p.school].urn)
        })
        .count();
    let wonde_pages: usize = WONDE_SCHOOLS
        .iter()
        .map(|(urn, _)| {
            let at = pupils
                .iter()
                .filter(|p| SCHOOLS[p.school].urn == *urn)
                .count();
            at.div_ceil(WONDE_PAGE).max(1) + 1
        })
        .sum();
    let bound = pupils.len() as u64 + wonde_pages as u64;
    println!(
        "  look-ups: engine.lookup_requests() = {} (the fakes saw {fake_lookups}); bound {bound} = \
         {} pupils by UPN at Arbor + {wonde_pages} Wonde listing pages (students of {wonde_pupils} pupils at \
         {} schools, 100 a page, and one attendance-codes page each); {}",
        t.lookups,
        pupils.len(),
        WONDE_SCHOOLS.len(),
        if t.lookups <= bound {
            "within it"
        } else if faults.is_some_and(|f| f.percent > 0.0) {
            "above it, faulted ones included: see the faults section"
        } else {
            "ABOVE IT"
        }
    );
    let missing = not_delivered(&t);
    if !missing.is_empty() {
        println!("  NOT DELIVERED: {}", missing.join("; "));
        for d in &t.dead {
            println!("    dead: {d}");
        }
    }
    if let Some(plan) = faults {
        fault_report(&fakes, &t, plan, bound);
    }

    // The same records to one CSV destination alone.
    let c = sync(CSV_ROUTES, &file, None, || {}).await;
    let csv_secs = c.route + c.run;
    println!();
    println!(
        "CSV alone (csv_log, one contact log): ingest {:.2} s; route {:.2} s ({} deliveries); run {:.2} s",
        c.ingest, c.route, c.deliveries, c.run
    );
    println!(
        "  sync (route + run): {n} records in {csv_secs:.2} s = {:.0} records/s ({:.0} records/s with the ingest); \
         {} rows written; look-ups {}",
        n as f64 / csv_secs,
        n as f64 / (c.ingest + csv_secs),
        delivered(&c, "contact_log"),
        c.lookups
    );
    let missing = not_delivered(&c);
    if !missing.is_empty() {
        println!("  NOT DELIVERED: {}", missing.join("; "));
        for d in &c.dead {
            println!("    dead: {d}");
        }
    }
}

/// `--faults`' report: per target, the deliveries by state and their attempts as the store
/// recorded them; what the fake holds (Arbor: notes per `[doorstep <id> r<rev>]`, and
/// whether each delivered delivery's target id is its own note; the others: entities by
/// natural key, and the writes sent again); the requests by kind and the faults by kind;
/// and the engine's look-ups against the bound once the faulted ones are taken out.
fn fault_report(fakes: &Fakes, t: &Timings, plan: FaultPlan, bound: u64) {
    println!();
    println!(
        "faults: {}% of the requests at each fake (seed {}), evenly a 503 (Retry-After: 0), a 429 \
         (Retry-After: 1) or a write done and its answer {} s late (a read: the 503)",
        plan.percent,
        plan.seed,
        LOST_DELAY.as_secs()
    );
    if plan.percent > 0.0 {
        println!(
            "  every HTTP destination's limits: timeout 1 s, backoff 0.2-2 s, 30 attempts; the run's \
             deadline {} s; the run took {:.2} s",
            FAULT_DEADLINE.as_secs(),
            t.run
        );
    }
    let dest_of = |system: &System, name: &'static str| match system {
        System::Arbor => "arbor_notes",
        _ => name,
    };
    let state = |dest: &str, s: &str| -> u64 {
        t.states
            .iter()
            .filter(|(d, st, _)| d == dest && st == s)
            .map(|(.., n)| n)
            .sum()
    };
    println!(
        "  {:<12} {:>9} {:>8} {:>5} {:>6} | {:>8} {:>7} {:>7} {:>7} {:>7}",
        "deliveries",
        "delivered",
        "retrying",
        "dead",
        "other",
        "attempts",
        "failed",
        "adopted",
        "unsure",
        "most"
    );
    for (system, name, ..) in &fakes.servers {
        let dest = dest_of(system, name);
        let total: u64 = t
            .states
            .iter()
            .filter(|(d, ..)| d == dest)
            .map(|(.., n)| n)
            .sum();
        let (delivered, retrying, dead) = (
            state(dest, "delivered"),
            state(dest, "retrying"),
            state(dest, "dead"),
        );
        let outcomes = t.attempts.by_outcome.get(dest);
        let outcome = |o: &str| outcomes.and_then(|m| m.get(o)).copied().unwrap_or(0);
        let (unsure, most) = t.attempts.unsure_max.get(dest).copied().unwrap_or((0, 0));
        println!(
            "  {:<12} {:>9} {:>8} {:>5} {:>6} | {:>8} {:>7} {:>7} {:>7} {:>7}",
            dest,
            delivered,
            retrying,
            dead,
            total - delivered - retrying - dead,
            outcomes.map_or(0, |m| m.values().sum::<u64>()),
            outcome("failed"),
            outcome("adopted"),
            unsure,
            most
        );
    }
    println!(
        "  (attempts: as the store recorded them; failed: retried after; adopted: a lost create \
         found by the reconcile read, nothing sent; unsure: deliveries with an attempt whose \
         answer was lost; most: attempts of the delivery that took the most)"
    );

    println!("  what each target holds:");
    for (system, name, _, c) in &fakes.servers {
        let dest = dest_of(system, name);
        let st = c.stored.lock().unwrap();
        if *system == System::Arbor {
            let mut by_ref: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut by_record: BTreeMap<String, u64> = BTreeMap::new();
            let mut unreferenced = 0;
            for (n, note) in &st.notes {
                match reference_of(note) {
                    Some(r) => {
                        let record = r
                            .trim_start_matches("[doorstep ")
                            .rsplit_once(' ')
                            .map_or(r.as_str(), |(id, _)| id)
                            .to_owned();
                        *by_record.entry(record).or_default() += 1;
                        by_ref.entry(r).or_default().push(*n);
                    }
                    None => unreferenced += 1,
                }
            }
            let dup_refs: Vec<(&String, &Vec<u64>)> =
                by_ref.iter().filter(|(_, ns)| ns.len() > 1).collect();
            let dup_records = by_record.values().filter(|n| **n > 1).count();
            // Each delivered delivery's target id is the note of its own revision; a note
            // no delivered delivery names was made and lost track of.
            let mut named = BTreeSet::new();
            let mut wrong = Vec::new();
            for (id, rev, target) in &t.attempts.arbor {
                let n = target
                    .as_deref()
                    .and_then(|h| h.rsplit('/').next())
                    .and_then(|n| n.parse::<u64>().ok());
                let own = n.and_then(|n| st.notes.get(&n)).and_then(reference_of)
                    == Some(format!("[doorstep {id} r{rev}]"));
                match n {
                    Some(n) if own => {
                        named.insert(n);
                    }
                    _ => wrong.push(format!("{id} r{rev} -> {target:?}")),
                }
            }
            let orphans: Vec<u64> = st
                .notes
                .keys()
                .filter(|n| !named.contains(*n))
                .copied()
                .collect();
            println!(
                "    {dest}: {} notes for {} references ({} records); DUPLICATES: {} references \
                 with more than one note, {} records with more than one note; {} notes without \
                 a reference; delivered deliveries whose target id is not their own note: {}; \
                 notes no delivered delivery names: {}",
                st.notes.len(),
                by_ref.len(),
                by_record.len(),
                dup_refs.len(),
                dup_records,
                unreferenced,
                wrong.len(),
                orphans.len()
            );
            for (r, ns) in dup_refs.iter().take(10) {
                println!("      duplicate {r}: notes {ns:?}");
            }
            for w in wrong.iter().take(10) {
                println!("      not its own note: {w}");
            }
            for n in orphans.iter().take(10) {
                let r = st.notes.get(n).and_then(reference_of).unwrap_or_default();
                println!("      orphan note {n}: {r}");
            }
        } else {
            let records: BTreeSet<&String> =
                st.entities.values().flat_map(|e| &e.records).collect();
            let shared = st.entities.values().filter(|e| e.records.len() > 1).count();
            println!(
                "    {dest}: {} entities by natural key (create-or-update: a second write of a \
                 key updates it, so no duplicate can be made) for {} visits; {} items written, \
                 {} of them sent again (same key, same visit); keys written by two visits \
                 (same pupil, date and session; not a fault's doing): {shared}",
                st.entities.len(),
                records.len(),
                st.item_writes,
                st.resent
            );
        }
    }

    println!(
        "  {:<12} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} | {:>6} {:>6} {:>6}",
        "requests",
        KIND_NAMES[0],
        KIND_NAMES[1],
        KIND_NAMES[2],
        KIND_NAMES[3],
        KIND_NAMES[4],
        KIND_NAMES[5],
        FAULT_NAMES[0],
        FAULT_NAMES[1],
        FAULT_NAMES[2]
    );
    let mut faulted_lookups = 0;
    for (system, name, _, c) in &fakes.servers {
        let cells: Vec<String> = KINDS
            .iter()
            .map(|k| {
                let i = *k as usize;
                let faulted: u64 = c.faults.iter().map(|f| Counts::get(&f[i])).sum();
                format!("{} ({faulted})", Counts::get(&c.received[i]))
            })
            .collect();
        faulted_lookups += c
            .faults
            .iter()
            .map(|f| Counts::get(&f[Kind::Lookup as usize]))
            .sum::<u64>();
        let by_fault: Vec<u64> = c
            .faults
            .iter()
            .map(|f| f.iter().map(Counts::get).sum())
            .collect();
        println!(
            "  {:<12} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} | {:>6} {:>6} {:>6}",
            dest_of(system, name),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            by_fault[0],
            by_fault[1],
            by_fault[2]
        );
    }
    println!("  (requests received by kind, the faulted ones in brackets; then faults by kind)");
    let answered = t.lookups.saturating_sub(faulted_lookups);
    println!(
        "  look-ups: engine.lookup_requests() = {}, of which {faulted_lookups} faulted at the fakes; \
         the {answered} answered against the bound {bound}: {}",
        t.lookups,
        if answered <= bound {
            "within it"
        } else {
            "ABOVE IT"
        }
    );
}

fn main() {
    let n = arg("--records", 50_000);
    let pupil_count = arg("--pupils", 500).max(SCHOOLS.len());
    let faults = has_arg("--faults").then(|| FaultPlan {
        percent: arg("--faults", 0.0_f64).clamp(0.0, 100.0),
        seed: arg("--fault-seed", 7),
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(n, pupil_count, faults));
}
