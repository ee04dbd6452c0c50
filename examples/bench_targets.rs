//! Target-system benchmark (BENCHMARKS.md, issue 7): an end-to-end sync of N visit reports
//! for one trust into fakes of Arbor, Wonde, Xporter and Ed-Fi (each answering in 10 ms),
//! with the shipped connector files: records/s, deliveries/s per destination, requests each
//! fake received (creates, look-ups, tokens) and the engine's look-up count against the
//! bound the pupils set; then the same records routed to one CSV destination alone.
//!
//! Run: `cargo run --release --example bench_targets` (or scripts/bench-targets.sh).
//! Options: `--records N` (default 50,000), `--pupils N` (default 500, spread over 4 schools).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use doorstep::config::DeliverySettings;
use doorstep::connectors::Connectors;
use doorstep::delivery::Engine;
use doorstep::mapping::Trusts;
use doorstep::pipeline;
use doorstep::report::{Conflict, ExceptionReport, Rejection};
use doorstep::store::{DeliveryStore, SqliteStore};
use doorstep::synthetic::{GenOptions, write_records};
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

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    }
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Arbor,
    Wonde,
    Xporter,
    Edfi,
}

/// One target system's fake: what the connector files' guesses and TARGETS.md say it
/// answers, after `LATENCY`; a request without the right credentials gets a 401.
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
}

fn ok(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(body)
        .set_delay(LATENCY)
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
}

impl Respond for Fake {
    fn respond(&self, r: &Request) -> ResponseTemplate {
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
                if post && path == "/rest-v2/pastoral-notes" {
                    let n = self.create();
                    return ok(
                        200,
                        json!({ "pastoralNote": { "href": format!("/rest-v2/pastoral-notes/{n}") } }),
                    );
                }
                self.unknown()
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
                    let n = self.create();
                    return ResponseTemplate::new(201)
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

struct Fakes {
    servers: Vec<(System, &'static str, MockServer, Arc<Counts>)>,
}

impl Fakes {
    async fn start(pupils: &[Pupil], base: Instant) -> Fakes {
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
        for (system, name) in [
            (System::Arbor, "arbor"),
            (System::Wonde, "wonde"),
            (System::Xporter, "xporter"),
            (System::Edfi, "edfi"),
        ] {
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
        std::fs::write(trust.join("secrets").join(file), secret).unwrap();
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
}

/// Ingests the records into a fresh store of a deployment with `routes`, routes them and
/// runs the engine until nothing is due; `run_started` is told the instant the run begins.
async fn sync(routes: &str, records: &Path, run_started: impl FnOnce()) -> Timings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    deployment(path, routes);
    let trusts = Arc::new(Trusts::load(&path.join("mappings"), chrono_tz::Europe::London).unwrap());
    let connectors = Arc::new(Connectors::load(&path.join("connectors")).unwrap());
    let settings = DeliverySettings {
        out_dir: path.join("out"),
        ..Default::default()
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
    engine.run(store.clone(), Instant::now()).await.unwrap();
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
    Timings {
        ingest,
        route,
        run,
        deliveries,
        states,
        lookups,
        dead,
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

async fn bench(n: usize, pupil_count: usize) {
    let base = Instant::now();
    let pupils = pupils(pupil_count);
    let fakes = Fakes::start(&pupils, base).await;
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
    let t = sync(&target_routes(&fakes), &file, || {
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

    // The same records to one CSV destination alone.
    let c = sync(CSV_ROUTES, &file, || {}).await;
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

fn main() {
    let n = arg("--records", 50_000);
    let pupil_count = arg("--pupils", 500).max(SCHOOLS.len());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(n, pupil_count));
}
