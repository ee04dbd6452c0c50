//! Crash rounds (SPEC §4): real `doorstep` processes deliver `doorstep gen` records to a
//! fault-injecting webhook receiver (`faulty_target`) over loopback and are killed with
//! SIGKILL at random moments, round after round; then a last run finishes the work. After
//! it, nothing acknowledged is lost and nothing is created twice:
//!
//! - every revision handed over is stored, exactly those (checked after every kill too:
//!   what was acknowledged by then is stored by then);
//! - every delivery is `delivered`, every stored revision was routed to its trust's CPOMS
//!   webhook, and no dead letter is left;
//! - the receiver saw every delivery's idempotency key take effect exactly once, at the
//!   destination's own path, never with two different bodies (a different create for one
//!   revision), and no key that the store does not know; every request was signed, carried
//!   `webhook-id` = `Idempotency-Key`, and waited out a `Retry-After` (unless the run that
//!   got it was killed); a record's revisions took effect in order;
//! - the evidence trail of every school exports and verifies (`audit export`, `audit verify
//!   --require-content`), with one `received` leaf per revision and one `delivered` leaf per
//!   delivery.
//!
//! The deployment is the two shipped trusts with only their webhook destinations (every
//! route elsewhere removed), each pointed at its own path on the receiver, with retry limits
//! small enough for a round to take seconds. One round function runs every variant, chosen
//! by the store (SQLite today, PostgreSQL once its store lands) and how the work is run:
//! `sync` processes taking chunks from the drop folder (the cron job), or `serve`
//! instances taking chunks over `POST /v1/records`.
//!
//! Sizes come from the environment so CI runs small and a benchmark run large:
//! `DOORSTEP_ROUNDS` (kills before the last run; default 3, 10 for PostgreSQL),
//! `DOORSTEP_ROUND_RECORDS` (records from `gen`; default 1500), `DOORSTEP_FAULT_RATE` (the
//! receiver's share of faults; default 0.3) and `DOORSTEP_CRASH_SEED` (default: from the
//! clock; every failure message names the seed to run it again with).
//!
//! Privacy: record content is never printed — failures name ids, keys and states only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::faulty_target::{self, FaultyTarget, Options, XorShift};
use crate::harness;

/// The Standard Webhooks secret of every webhook destination (and of the receiver).
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The schools `gen` writes for: (trust, URN).
const SCHOOLS: [(&str, &str); 4] = [
    ("thrive", "117800"),
    ("celt", "136401"),
    ("celt", "136402"),
    ("celt", "136403"),
];

/// A kill comes this long after a start, at the earliest and latest.
const KILL_AFTER_MS: (u64, u64) = (50, 1500);

/// Records a `POST /v1/records` carries at most.
const POST_BATCH: usize = 500;

// ---- The variants ------------------------------------------------------------------------

#[test]
fn sqlite_sync_rounds_lose_nothing_and_create_nothing_twice() {
    crash_rounds(Plan {
        store: Store::Sqlite,
        mode: Mode::Sync,
        rounds: env_count("DOORSTEP_ROUNDS", 3),
        records: env_count("DOORSTEP_ROUND_RECORDS", 1500),
    });
}

#[test]
fn sqlite_serve_rounds_lose_nothing_and_create_nothing_twice() {
    crash_rounds(Plan {
        store: Store::Sqlite,
        mode: Mode::Serve { instances: 1 },
        rounds: env_count("DOORSTEP_ROUNDS", 3),
        records: env_count("DOORSTEP_ROUND_RECORDS", 1500),
    });
}

/// Three `serve` instances sharing one PostgreSQL store (leases of 2 s); one of them, chosen
/// at random each round, killed and restarted.
#[test]
fn postgres_three_instances_lose_nothing_and_create_nothing_twice() {
    crash_rounds(Plan {
        store: Store::Postgres(Schema::create()),
        mode: Mode::Serve { instances: 3 },
        rounds: env_count("DOORSTEP_ROUNDS", 10),
        records: env_count("DOORSTEP_ROUND_RECORDS", 1500),
    });
}

/// The `doorstep` under test: this build's, or `DOORSTEP_ROUND_BIN` (a release build, for a
/// full-size run).
fn bin() -> String {
    std::env::var("DOORSTEP_ROUND_BIN").unwrap_or_else(|_| harness::BIN.to_owned())
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a count, not {v:?}")),
        Err(_) => default,
    }
}

fn env_rate(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or_else(|| panic!("{name} must be from 0.0 to 1.0, not {v:?}")),
        Err(_) => default,
    }
}

fn seed() -> u64 {
    match std::env::var("DOORSTEP_CRASH_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DOORSTEP_CRASH_SEED must be a number, not {v:?}")),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_secs() ^ u64::from(now.subsec_nanos()) ^ u64::from(std::process::id())
        }
    }
}

// ---- The round logic, one function for every store and mode -----------------------------

struct Plan {
    store: Store,
    mode: Mode,
    /// Kills before the last run.
    rounds: usize,
    /// Records from `gen` (each 20th of a chunk also gets a revision 2 in the next).
    records: usize,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `sync` runs, one at a time, each taking the drop folder (SQLite's one writer).
    Sync,
    /// `serve` instances, records posted to them.
    Serve { instances: usize },
}

fn crash_rounds(plan: Plan) {
    let seed = seed();
    let fault_rate = env_rate("DOORSTEP_FAULT_RATE", faulty_target::DEFAULT_FAULT_RATE);
    let ctx = format!(
        "{} {:?}, {} rounds, {} records, fault rate {fault_rate}, DOORSTEP_CRASH_SEED={seed}",
        plan.store.name(),
        plan.mode,
        plan.rounds,
        plan.records
    );
    eprintln!("crash rounds: {ctx}");
    let started = Instant::now();
    let target = FaultyTarget::start_with(Options {
        seed,
        fault_rate,
        max_latency: Duration::from_millis(10),
        webhook_secret: Some(SECRET.into()),
    });
    let rig = Rig::new(plan.store, &target.url(), ctx.clone());
    if matches!(rig.store, Store::Postgres(_)) {
        rig.run_ok("migrate", &[]);
    }
    let work = Workload::generate(plan.records, plan.rounds + 1, seed);
    let mut rng = XorShift::new(seed.rotate_left(17));
    let mut seen = Delivered::default();
    let kills = match plan.mode {
        Mode::Sync => sync_rounds(&rig, &target, &work, &mut rng, &mut seen),
        Mode::Serve { instances } => {
            serve_rounds(&rig, &target, &work, instances, &mut rng, &mut seen)
        }
    };
    check(&rig, &target, &work);
    seen.check(rig.ctx.as_str(), &target);
    eprintln!(
        "crash rounds: {ctx}: {kills} kills, {} revisions, {} requests, answers {:?}, {:.1} s",
        work.expected.len(),
        target.requests(),
        target.answers(),
        started.elapsed().as_secs_f64()
    );
}

/// `sync` runs over the drop folder: each round drops the next chunk, starts a `sync` and
/// kills it at a random moment (unless it ended first); the last chunk's run finishes.
/// After each kill, every record of every file the runs have archived is stored. Returns
/// the number of kills.
fn sync_rounds(
    rig: &Rig,
    target: &FaultyTarget,
    work: &Workload,
    rng: &mut XorShift,
    seen: &mut Delivered,
) -> usize {
    let (last, rounds) = work.chunks.split_last().unwrap();
    let mut kills = 0;
    for (round, chunk) in rounds.iter().enumerate() {
        rig.drop_chunk(round, chunk);
        target.next_epoch();
        let mut child = rig
            .command("sync", &["--format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(rig.log_file(&format!("sync-{round}"))))
            .spawn()
            .unwrap();
        let moment = kill_moment(rng);
        std::thread::sleep(moment);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        seen.note(
            rig,
            target,
            &format!("round {round}: sync {status} after {moment:?}"),
        );
        let archived = rig.archived();
        let stored = rig.stored();
        let lost: Vec<&Rev> = archived.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "{}: after round {round}, {} revisions of archived files are not stored, e.g. {}",
            rig.ctx,
            lost.len(),
            show_revs(&lost)
        );
    }
    rig.drop_chunk(rounds.len(), last);
    target.next_epoch();
    let out = rig.command("sync", &["--format", "json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: the last sync did not finish cleanly; its summary: {}\n{}",
        rig.ctx,
        stdout.lines().last().unwrap_or_default(),
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    let left: Vec<String> = std::fs::read_dir(rig.path("drop"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "{}: left in the drop folder: {left:?}",
        rig.ctx
    );
    let rejected = std::fs::read_dir(rig.path("rejected"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(rejected, 0, "{}: files were rejected", rig.ctx);
    kills
}

/// `serve` instances: each round posts the next chunk (a thread, retrying on another
/// instance or after the restart until each batch is answered 200) while one instance,
/// chosen at random, is killed at a random moment and started again. After each kill,
/// everything acknowledged by then is stored. Then every instance runs until the store
/// shows every revision routed and delivered, and stops on SIGTERM with exit 0.
fn serve_rounds(
    rig: &Rig,
    target: &FaultyTarget,
    work: &Workload,
    instances: usize,
    rng: &mut XorShift,
    seen: &mut Delivered,
) -> usize {
    let keys: BTreeMap<String, String> = ["thrive", "celt"]
        .into_iter()
        .map(|trust| (trust.to_owned(), rig.api_key(trust)))
        .collect();
    let live = Arc::new(Mutex::new(vec![None::<String>; instances]));
    let mut running: Vec<Instance> = (0..instances)
        .map(|i| {
            let instance = Instance::start(rig, &format!("serve-{i}-0"));
            live.lock().unwrap()[i] = Some(instance.url.clone());
            instance
        })
        .collect();
    target.next_epoch();
    let acked: Arc<Mutex<BTreeSet<Rev>>> = Arc::default();
    let mut kills = 0;
    let (last, rounds) = work.chunks.split_last().unwrap();
    for (round, chunk) in rounds.iter().enumerate() {
        let poster = post_in_background(rig, &keys, chunk, &live, &acked);
        let moment = kill_moment(rng);
        std::thread::sleep(moment);
        let victim = rng.below(instances as u64) as usize;
        live.lock().unwrap()[victim] = None;
        running[victim].kill();
        kills += 1;
        seen.note(
            rig,
            target,
            &format!("round {round}: instance {victim} killed after {moment:?}"),
        );
        // What was acknowledged before this read must be stored.
        let acknowledged = acked.lock().unwrap().clone();
        let stored = rig.stored();
        let lost: Vec<&Rev> = acknowledged.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "{}: after the kill of round {round}, {} acknowledged revisions are not stored, e.g. {}",
            rig.ctx,
            lost.len(),
            show_revs(&lost)
        );
        target.next_epoch();
        running[victim] = Instance::start(rig, &format!("serve-{victim}-{}", round + 1));
        live.lock().unwrap()[victim] = Some(running[victim].url.clone());
        poster
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: round {round}: {e}", rig.ctx));
    }
    post_in_background(rig, &keys, last, &live, &acked)
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: the last chunk: {e}", rig.ctx));
    // Every instance runs until the work is done: two minutes, and more for a large run
    // (debug binaries on two cores deliver a few hundred a second through 30 % faults).
    let allowed = Duration::from_secs(120) + Duration::from_millis(20) * work.expected.len() as u32;
    let deadline = Instant::now() + allowed;
    loop {
        let (stored, deliveries) = (rig.stored(), rig.deliveries());
        if stored.len() >= work.expected.len()
            && all_routed(&stored, &deliveries)
            && deliveries.iter().all(|d| d.state == "delivered")
        {
            break;
        }
        if Instant::now() > deadline {
            let open: Vec<String> = deliveries
                .iter()
                .filter(|d| d.state != "delivered")
                .take(10)
                .map(StoredDelivery::show)
                .collect();
            panic!(
                "{}: after {} s, {} of {} revisions stored, {} deliveries not delivered, e.g. {open:#?}\n{}",
                rig.ctx,
                allowed.as_secs(),
                stored.len(),
                work.expected.len(),
                deliveries.iter().filter(|d| d.state != "delivered").count(),
                running
                    .iter()
                    .map(Instance::log_tail)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (i, instance) in running.iter_mut().enumerate() {
        let code = instance.terminate();
        assert_eq!(
            code,
            Some(0),
            "{}: instance {i} did not stop cleanly on SIGTERM\n{}",
            rig.ctx,
            instance.log_tail()
        );
    }
    kills
}

/// Deliveries seen `delivered` after a kill, with the requests their key had had by then:
/// a delivered delivery is never sent again, whatever is killed afterwards.
#[derive(Default)]
struct Delivered {
    requests: BTreeMap<String, u64>,
}

impl Delivered {
    /// Says what the store holds now (the kill's catch: deliveries left in flight) and
    /// notes the keys delivered so far.
    fn note(&mut self, rig: &Rig, target: &FaultyTarget, what: &str) {
        // The store first: a request that delivered a key ended before the store said so.
        let (stored, deliveries) = (rig.stored(), rig.deliveries());
        let sent = target.requests_by_key();
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &deliveries {
            *states.entry(d.state.as_str()).or_default() += 1;
            if d.state == "delivered" {
                self.requests
                    .entry(d.key.clone())
                    .or_insert_with(|| sent.get(&d.key).copied().unwrap_or(0));
            }
        }
        eprintln!(
            "{what}: {} revisions stored, deliveries {states:?}",
            stored.len()
        );
    }

    fn check(&self, ctx: &str, target: &FaultyTarget) {
        let sent = target.requests_by_key();
        let again: Vec<String> = self
            .requests
            .iter()
            .filter(|(key, then)| sent.get(*key).copied().unwrap_or(0) != **then)
            .map(|(key, then)| {
                format!(
                    "key {key}: {then} requests when it was seen delivered, {} in the end",
                    sent.get(key).copied().unwrap_or(0)
                )
            })
            .collect();
        assert!(
            again.is_empty(),
            "{ctx}: {} deliveries were sent again after they were delivered: {:#?}",
            again.len(),
            &again[..again.len().min(20)]
        );
    }
}

fn kill_moment(rng: &mut XorShift) -> Duration {
    let (from, to) = KILL_AFTER_MS;
    Duration::from_millis(from + rng.below(to - from + 1))
}

/// Every stored revision has its delivery to its trust's CPOMS webhook (every route of the
/// shipped mappings sends every record there).
fn all_routed(stored: &BTreeSet<Rev>, deliveries: &[StoredDelivery]) -> bool {
    unrouted(stored, deliveries).is_empty()
}

fn unrouted<'a>(stored: &'a BTreeSet<Rev>, deliveries: &[StoredDelivery]) -> Vec<&'a Rev> {
    let to_cpoms: BTreeSet<Rev> = deliveries
        .iter()
        .filter(|d| d.destination == "cpoms")
        .map(|d| d.rev.clone())
        .collect();
    stored.iter().filter(|r| !to_cpoms.contains(*r)).collect()
}

/// Posts a chunk, a batch per trust at a time, each until it is answered 200 (on whichever
/// instance is up); what was acknowledged goes into `acked`.
fn post_in_background(
    rig: &Rig,
    keys: &BTreeMap<String, String>,
    chunk: &[Line],
    live: &Arc<Mutex<Vec<Option<String>>>>,
    acked: &Arc<Mutex<BTreeSet<Rev>>>,
) -> std::thread::JoinHandle<Result<(), String>> {
    let mut batches: Vec<(String, Vec<Line>)> = Vec::new();
    for trust in ["thrive", "celt"] {
        let lines: Vec<Line> = chunk.iter().filter(|l| l.rev.0 == trust).cloned().collect();
        for batch in lines.chunks(POST_BATCH) {
            batches.push((keys[trust].clone(), batch.to_vec()));
        }
    }
    let (live, acked) = (live.clone(), acked.clone());
    let runtime = rig.runtime.handle().clone();
    std::thread::spawn(move || {
        let _inside = runtime.enter();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        for (key, batch) in batches {
            let body: String = batch.iter().map(|l| format!("{}\n", l.text)).collect();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut turn = 0usize;
            loop {
                if Instant::now() > deadline {
                    return Err("a batch was not acknowledged in 120 s".into());
                }
                let up: Vec<String> = live.lock().unwrap().iter().flatten().cloned().collect();
                turn += 1;
                let Some(url) = up.get(turn % up.len().max(1)).cloned() else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let sent = runtime.block_on(
                    client
                        .post(format!("{url}/v1/records"))
                        .bearer_auth(&key)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send(),
                );
                match sent {
                    Ok(r) if r.status() == 200 => {
                        acked
                            .lock()
                            .unwrap()
                            .extend(batch.iter().map(|l| l.rev.clone()));
                        break;
                    }
                    // Killed or starting: another try.
                    Ok(r) if r.status().is_server_error() => {}
                    Err(_) => {}
                    Ok(r) => {
                        return Err(format!(
                            "a batch of {} records was answered {} (rules: {})",
                            batch.len(),
                            r.status(),
                            rules_of(runtime.block_on(r.text()).unwrap_or_default())
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    })
}

/// The rule ids an answer of `POST /v1/records` names (never its other words).
fn rules_of(body: String) -> String {
    let mut rules = BTreeSet::new();
    fn walk(v: &Value, rules: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("rule") {
                    rules.insert(r.clone());
                }
                m.values().for_each(|v| walk(v, rules));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, rules)),
            _ => {}
        }
    }
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        walk(&v, &mut rules);
    }
    rules.into_iter().collect::<Vec<_>>().join(", ")
}

// ---- After the last run ------------------------------------------------------------------

fn check(rig: &Rig, target: &FaultyTarget, work: &Workload) {
    let ctx = &rig.ctx;
    // Nothing handed over is lost; nothing else appears.
    let stored = rig.stored();
    let missing: Vec<&Rev> = work.expected.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{ctx}: {} revisions handed over are not stored, e.g. {}",
        missing.len(),
        show_revs(&missing)
    );
    let extra: Vec<&Rev> = stored.difference(&work.expected).collect();
    assert!(
        extra.is_empty(),
        "{ctx}: {} revisions stored that were never handed over, e.g. {}",
        extra.len(),
        show_revs(&extra)
    );

    // Every revision routed, every delivery delivered.
    let deliveries = rig.deliveries();
    let never = unrouted(&stored, &deliveries);
    assert!(
        never.is_empty(),
        "{ctx}: {} revisions have no delivery to their trust's cpoms, e.g. {}",
        never.len(),
        show_revs(&never)
    );
    let open: Vec<String> = deliveries
        .iter()
        .filter(|d| d.state != "delivered")
        .map(StoredDelivery::show)
        .collect();
    assert!(
        open.is_empty(),
        "{ctx}: {} deliveries are not delivered: {:#?}",
        open.len(),
        &open[..open.len().min(20)]
    );

    // The receiver: each key took effect once, with one body, where it belongs; no key the
    // store does not know.
    let effects = target.took_effect();
    let mut wrong = Vec::new();
    for d in &deliveries {
        let at = format!("/{}/{}", d.rev.0, d.destination);
        match effects.get(&d.key) {
            None => wrong.push(format!(
                "{}: delivered, but its key never took effect at the target",
                d.show()
            )),
            Some(e) if e.count != 1 || e.bodies != 1 => wrong.push(format!(
                "{}: took effect {} times, sent with {} different bodies in {} requests",
                d.show(),
                e.count,
                e.bodies,
                e.requests
            )),
            Some(e) if e.path != at => {
                wrong.push(format!("{}: took effect at {}, not {at}", d.show(), e.path))
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{ctx}: {} deliveries are wrong at the target: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
    let known: BTreeSet<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
    let strangers: Vec<String> = target
        .keys_seen()
        .into_iter()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    assert!(
        strangers.is_empty(),
        "{ctx}: the target was sent keys no stored delivery has: {strangers:?}"
    );
    let problems = target.problems();
    assert!(
        problems.is_empty(),
        "{ctx}: {} requests were wrong: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );

    // A record's revisions took effect in order, at each destination.
    let mut by_record: BTreeMap<String, Vec<(u32, Instant)>> = BTreeMap::new();
    for d in &deliveries {
        if let Some(e) = effects.get(&d.key) {
            let (trust, kind, id, revision) = &d.rev;
            by_record
                .entry(format!("{trust}/{} {kind} {id}", d.destination))
                .or_default()
                .push((*revision, e.first_at));
        }
    }
    let mut revised = 0;
    for (record, mut revs) in by_record {
        revs.sort();
        revised += usize::from(revs.len() > 1);
        for pair in revs.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "{ctx}: {record}: revision {} took effect before revision {}",
                pair[1].0,
                pair[0].0
            );
        }
    }
    assert!(
        work.chunks.len() < 2 || revised > 0,
        "{ctx}: no record had two revisions delivered"
    );

    // The faults all happened (or the round proved less than it says).
    let answers = target.answers();
    if target.requests() >= 300 {
        for name in faulty_target::fault_names() {
            assert!(
                answers.get(name).copied().unwrap_or(0) > 0,
                "{ctx}: the target never answered `{name}`: {answers:?}"
            );
        }
    }

    // The CLI agrees: every revision counted, every delivery delivered, no dead letter.
    let status = json_lines(&rig.run_ok("status", &["--format", "json"]).stdout);
    let summary = status.last().unwrap();
    assert_eq!(
        summary["revisions"].as_u64(),
        Some(work.expected.len() as u64),
        "{ctx}: status: {summary}"
    );
    for line in status.iter().filter(|l| l["kind"] == "deliveries") {
        assert_eq!(line["state"], "delivered", "{ctx}: status: {line}");
    }
    let dead = json_lines(&rig.run_ok("deadletter list", &["--format", "json"]).stdout);
    assert!(dead.is_empty(), "{ctx}: dead letters: {}", dead.len());

    check_trail(rig, &stored, &deliveries);
}

/// Each school's bundle exports and verifies in full; across them, one `received` leaf per
/// stored revision and one `delivered` leaf per delivery.
fn check_trail(rig: &Rig, stored: &BTreeSet<Rev>, deliveries: &[StoredDelivery]) {
    let ctx = &rig.ctx;
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive();
    let (from, to) = (
        (today - chrono::Days::new(1)).to_string(),
        (today + chrono::Days::new(1)).to_string(),
    );
    let verifier = std::fs::read_to_string(rig.path("keys/log.key.pub")).unwrap();
    let mut received: BTreeMap<Rev, usize> = BTreeMap::new();
    let mut delivered: BTreeMap<(String, Rev), usize> = BTreeMap::new();
    for (trust, school) in SCHOOLS {
        let out = format!("bundles/{trust}-{school}");
        rig.run_ok(
            "audit export",
            &[
                "--trust", trust, "--school", school, "--from", &from, "--to", &to, "--out", &out,
            ],
        );
        let verified = Command::new(bin())
            .args(["audit", "verify", "--require-content", "--key"])
            .arg(verifier.trim())
            .arg(rig.path(&out))
            .output()
            .unwrap();
        assert_eq!(
            verified.status.code(),
            Some(0),
            "{ctx}: audit verify of {trust} {school}:\n{}{}",
            String::from_utf8_lossy(&verified.stdout),
            String::from_utf8_lossy(&verified.stderr)
        );
        for leaf in crate::audit_complete::leaves(&rig.path(&out)) {
            if leaf["trust"] != trust || leaf["school"] != school {
                continue;
            }
            let rev = || {
                (
                    trust.to_owned(),
                    leaf["kind"].as_str().unwrap_or_default().to_owned(),
                    leaf["record_id"].as_str().unwrap_or_default().to_owned(),
                    leaf["revision"].as_u64().unwrap_or_default() as u32,
                )
            };
            match leaf["event"].as_str() {
                Some("received") => *received.entry(rev()).or_default() += 1,
                Some("delivered") => {
                    let dest = leaf["destination"].as_str().unwrap_or_default().to_owned();
                    *delivered.entry((dest, rev())).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    let wrong: Vec<String> = stored
        .iter()
        .filter(|r| received.get(*r) != Some(&1))
        .map(|r| {
            format!(
                "{}: {} received leaves",
                show_rev(r),
                received.get(r).unwrap_or(&0)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{ctx}: {} revisions have not exactly one received leaf: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
    let wrong: Vec<String> = deliveries
        .iter()
        .filter_map(|d| {
            let n = delivered
                .get(&(d.destination.clone(), d.rev.clone()))
                .copied()
                .unwrap_or(0);
            (n != 1).then(|| format!("{}: {n} delivered leaves", d.show()))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{ctx}: {} deliveries have not exactly one delivered leaf: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

// ---- The workload --------------------------------------------------------------------------

/// (trust, kind, id, revision).
type Rev = (String, String, String, u32);

fn show_rev(r: &Rev) -> String {
    format!("{}/{} {} r{}", r.0, r.1, r.2, r.3)
}

fn show_revs(revs: &[&Rev]) -> String {
    revs.iter()
        .take(10)
        .map(|r| show_rev(r))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One record as a JSON line, and which revision it is.
#[derive(Clone)]
struct Line {
    rev: Rev,
    text: String,
}

impl Line {
    fn of(v: &Value) -> Line {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Line {
            rev: (
                s("trust"),
                s("kind"),
                s("id"),
                v["revision"].as_u64().unwrap_or_default() as u32,
            ),
            text: v.to_string(),
        }
    }
}

struct Workload {
    /// One chunk per round, and the last run's.
    chunks: Vec<Vec<Line>>,
    /// Every revision in them.
    expected: BTreeSet<Rev>,
}

impl Workload {
    /// `gen --count records --seed seed`, in `parts` chunks; every 20th record of a chunk
    /// also comes again in the next as revision 2 (an `extensions` mark its only change).
    fn generate(records: usize, parts: usize, seed: u64) -> Workload {
        let out = Command::new(bin())
            .args([
                "gen",
                "--count",
                &records.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let values: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            values
                .iter()
                .all(|v| v.get("incidents").is_none() && v.get("safeguarding_flags").is_none()),
            "gen now embeds records: count them here too"
        );
        let size = values.len().div_ceil(parts.max(1)).max(1);
        let mut chunks: Vec<Vec<Line>> = values
            .chunks(size)
            .map(|c| c.iter().map(Line::of).collect())
            .collect();
        chunks.resize_with(parts.max(1), Vec::new);
        for (k, chunk) in chunks.iter_mut().enumerate().skip(1) {
            let again: Vec<Line> = values
                .chunks(size)
                .nth(k - 1)
                .unwrap_or_default()
                .iter()
                .step_by(20)
                .map(|v| {
                    let mut v = v.clone();
                    v["revision"] = 2.into();
                    v["extensions"]["crash_round"] = k.into();
                    Line::of(&v)
                })
                .collect();
            chunk.extend(again);
        }
        let expected = chunks.iter().flatten().map(|l| l.rev.clone()).collect();
        Workload { chunks, expected }
    }
}

// ---- The deployment ------------------------------------------------------------------------

/// Where the store is.
enum Store {
    Sqlite,
    Postgres(Schema),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "SQLite",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    /// The `[store]` table's body.
    fn toml(&self) -> String {
        match self {
            Store::Sqlite => "sqlite = \"var/doorstep.db\"\n".into(),
            Store::Postgres(schema) => {
                format!("postgres = {:?}\nlease_seconds = 2\n", schema.url())
            }
        }
    }
}

/// A schema of its own in the test database, dropped with everything in it at the end,
/// failed or not.
struct Schema {
    name: String,
}

impl Schema {
    fn create() -> Schema {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let mut rng = XorShift::new(now.as_nanos() as u64 ^ u64::from(std::process::id()));
        let schema = Schema {
            name: format!("doorstep_t_{:016x}", rng.next()),
        };
        schema.psql(&[&format!("CREATE SCHEMA {}", schema.name)], false);
        schema
    }

    fn url(&self) -> String {
        crate::pg::with_schema(&crate::pg::server_url(), &self.name)
    }

    /// Runs statements with `psql` in this schema; rows of unit-separated fields.
    fn psql(&self, statements: &[&str], in_schema: bool) -> Vec<Vec<String>> {
        let mut cmd = Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-d",
            &crate::pg::server_url(),
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\x1f",
            "-R",
            "\x1e",
        ]);
        if in_schema {
            cmd.env("PGOPTIONS", format!("-csearch_path={}", self.name));
        }
        for s in statements {
            cmd.args(["-c", s]);
        }
        let out = cmd.output().expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split('\x1e')
            .map(|r| r.trim_matches('\n'))
            .filter(|r| !r.is_empty())
            .map(|r| r.split('\x1f').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-d", &crate::pg::server_url()])
            .args([
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .output();
    }
}

/// One delivery as the store has it.
#[derive(Debug, Clone)]
struct StoredDelivery {
    seq: i64,
    /// The revision delivered (its trust is the delivery's).
    rev: Rev,
    destination: String,
    key: String,
    state: String,
    attempts: i64,
    last_error: Option<String>,
}

impl StoredDelivery {
    /// Ids, state and our reason — never what a target said.
    fn show(&self) -> String {
        format!(
            "delivery {} {}/{} {} {} r{} key {}: {} after {} attempts{}",
            self.seq,
            self.rev.0,
            self.destination,
            self.rev.1,
            self.rev.2,
            self.rev.3,
            self.key,
            self.state,
            self.attempts,
            self.last_error
                .as_deref()
                .map(|e| format!(" ({})", doorstep::connectors::http::loggable(e)))
                .unwrap_or_default()
        )
    }
}

const RECORDS_SQL: &str = "SELECT trust, kind, id, revision FROM records";
const DELIVERIES_SQL: &str = "SELECT seq, trust, destination, kind, record_id, revision, \
     idempotency_key, state, attempts, last_error FROM deliveries ORDER BY seq";

/// A throwaway deployment: copies of the shipped connectors and of both trusts' mappings
/// with only their webhook destinations, each pointed at the receiver.
struct Rig {
    dir: tempfile::TempDir,
    store: Store,
    /// For reading SQLite and posting records.
    runtime: tokio::runtime::Runtime,
    /// Said with every failure: the variant and the seed.
    ctx: String,
    /// The environment variables the destinations' secrets are read from.
    secret_envs: Vec<String>,
}

impl Rig {
    fn new(store: Store, target: &str, ctx: String) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = harness::root();
        harness::copy_dir(&root.join("connectors"), &dir.path().join("connectors"));
        harness::copy_dir(&root.join("mappings"), &dir.path().join("mappings"));
        let mut destinations = String::new();
        let mut secret_envs = Vec::new();
        for trust in ["thrive", "celt"] {
            let path = dir.path().join(format!("mappings/{trust}/routes.toml"));
            let (routes, hooks, envs) = webhooks_only(&std::fs::read_to_string(&path).unwrap());
            std::fs::write(&path, routes).unwrap();
            secret_envs.extend(envs);
            for name in hooks {
                destinations.push_str(&format!(
                    "[destinations.{trust}.{name}]\n\
                     url = \"{target}/{trust}/{name}\"\n\
                     limits = {{ concurrency = 8, timeout_seconds = 5.0, max_attempts = 40, \
                     backoff_min_seconds = 0.05, backoff_max_seconds = 0.5 }}\n"
                ));
            }
        }
        for folder in [
            "drop", "archive", "rejected", "var", "keys", "logs", "bundles",
        ] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        let config = format!(
            "connectors = \"connectors\"\nmappings = \"mappings\"\n\
             [store]\n{}\
             [intake]\ndrop = \"drop\"\narchive = \"archive\"\nrejected = \"rejected\"\n\
             settle_seconds = 0.0\n\
             [audit]\nsigning_key = {{ file = \"keys/log.key\" }}\n\
             [delivery]\nout = \"out\"\nmax_wait_seconds = 60.0\n\
             {destinations}",
            store.toml()
        );
        std::fs::write(dir.path().join("crash.toml"), config).unwrap();
        let rig = Rig {
            dir,
            store,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            ctx,
            secret_envs,
        };
        rig.run_ok(
            "audit keygen",
            &["--name", "crash.example", "--out", "keys/log.key"],
        );
        rig
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `doorstep VERB… --config crash.toml ARGS…` in the deployment's folder, with the
    /// destinations' secrets.
    fn command(&self, verb: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path())
            .env_remove("DOORSTEP_CONFIG")
            .env_remove("DOORSTEP_LOG")
            .args(verb.split_whitespace())
            .arg("--config")
            .arg(self.path("crash.toml"))
            .args(args);
        for name in &self.secret_envs {
            cmd.env(name, SECRET);
        }
        cmd
    }

    fn run_ok(&self, verb: &str, args: &[&str]) -> Output {
        let out = self.command(verb, args).output().unwrap();
        assert!(
            out.status.success(),
            "{}: doorstep {verb}: {}\n{}",
            self.ctx,
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        );
        out
    }

    /// A file for a process's standard error, kept with the deployment.
    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.path(&format!("logs/{name}.log"))).unwrap()
    }

    /// An API key for every school of `trust` (its records are posted with it).
    fn api_key(&self, trust: &str) -> String {
        let mut args = vec!["--trust", trust, "--format", "json"];
        for (t, school) in SCHOOLS {
            if t == trust {
                args.extend(["--school", school]);
            }
        }
        let out = self.run_ok("keys create", &args);
        json_lines(&out.stdout)[0]["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Writes a chunk into the drop folder under a hidden name, then renames it.
    fn drop_chunk(&self, n: usize, chunk: &[Line]) {
        let text: String = chunk.iter().map(|l| format!("{}\n", l.text)).collect();
        let hidden = self.path(&format!("drop/.chunk-{n:04}.jsonl"));
        std::fs::write(&hidden, text).unwrap();
        std::fs::rename(hidden, self.path(&format!("drop/chunk-{n:04}.jsonl"))).unwrap();
    }

    /// Every revision in the files `sync` has archived.
    fn archived(&self) -> BTreeSet<Rev> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(self.path("archive")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                out.insert(Line::of(&serde_json::from_str(line).unwrap()).rev);
            }
        }
        out
    }

    /// Every stored revision, read from the store itself.
    fn stored(&self) -> BTreeSet<Rev> {
        self.rows(RECORDS_SQL)
            .into_iter()
            .map(|r| {
                (
                    r[0].clone(),
                    r[1].clone(),
                    r[2].clone(),
                    r[3].parse().unwrap(),
                )
            })
            .collect()
    }

    /// Every delivery, read from the store itself.
    fn deliveries(&self) -> Vec<StoredDelivery> {
        self.rows(DELIVERIES_SQL)
            .into_iter()
            .map(|r| StoredDelivery {
                seq: r[0].parse().unwrap(),
                rev: (
                    r[1].clone(),
                    r[3].clone(),
                    r[4].clone(),
                    r[5].parse().unwrap(),
                ),
                destination: r[2].clone(),
                key: r[6].clone(),
                state: r[7].clone(),
                attempts: r[8].parse().unwrap(),
                last_error: Some(r[9].clone()).filter(|e| !e.is_empty()),
            })
            .collect()
    }

    /// A query's rows, every field as text (NULL as ""): SQLite opened read-only, or psql.
    fn rows(&self, sql: &'static str) -> Vec<Vec<String>> {
        match &self.store {
            Store::Postgres(schema) => schema.psql(&[sql], true),
            Store::Sqlite => {
                let db = self.path("var/doorstep.db");
                if !db.exists() {
                    return Vec::new();
                }
                self.runtime.block_on(sqlite_rows(&db, sql))
            }
        }
    }
}

async fn sqlite_rows(db: &Path, sql: &'static str) -> Vec<Vec<String>> {
    use sqlx::{ConnectOptions, Row, ValueRef};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
    let out = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    let raw = row.try_get_raw(i).unwrap();
                    if raw.is_null() {
                        return String::new();
                    }
                    row.try_get::<String, _>(i)
                        .or_else(|_| row.try_get::<i64, _>(i).map(|n| n.to_string()))
                        .unwrap()
                })
                .collect()
        })
        .collect();
    let _ = sqlx::Connection::close(conn).await;
    out
}

/// A trust's `routes.toml` with only its webhook destinations and the routes to them; the
/// destinations' names and the environment variables of their secrets.
fn webhooks_only(text: &str) -> (String, Vec<String>, Vec<String>) {
    let mut routes: toml::Table = toml::from_str(text).unwrap();
    let mut names = Vec::new();
    let mut envs = Vec::new();
    if let Some(toml::Value::Table(dests)) = routes.get_mut("destinations") {
        dests.retain(|_, d| d.get("connector").and_then(toml::Value::as_str) == Some("webhook"));
        for (name, d) in dests.iter() {
            names.push(name.clone());
            for s in d
                .get("secrets")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(env) = s.get("env").and_then(toml::Value::as_str) {
                    envs.push(env.to_owned());
                }
            }
        }
    }
    if let Some(toml::Value::Array(list)) = routes.get_mut("route") {
        list.retain(|r| {
            r.get("to")
                .and_then(toml::Value::as_str)
                .is_some_and(|to| names.iter().any(|n| n == to))
        });
    }
    assert!(!names.is_empty(), "a trust without a webhook destination");
    (toml::to_string(&routes).unwrap(), names, envs)
}

/// A running `doorstep serve`; killed when dropped.
struct Instance {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Instance {
    fn start(rig: &Rig, name: &str) -> Instance {
        let mut child = rig
            .command("serve", &["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(format!("---- {name}\n")));
        let (tx, rx) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (Some(url), Some(t)) = (line.strip_prefix("doorstep: listening on "), &tx) {
                    let _ = t.send(url.to_owned());
                    tx = None;
                }
                let mut l = kept.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "{}: {name} did not start listening\n{}",
                    rig.ctx,
                    tail(&log.lock().unwrap())
                )
            });
        Instance { child, url, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit code (None: still running after 30 s).
    fn terminate(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn log_tail(&self) -> String {
        tail(&self.log.lock().unwrap())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log (doorstep's logs carry ids and rules, never content).
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    harness::json_lines(out)
}
