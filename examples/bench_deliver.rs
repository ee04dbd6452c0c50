//! Delivery benchmark (BENCHMARKS.md): records delivered to a local webhook fake that answers
//! in 5 ms, at connector concurrency 1, 8 and 64, against the bound concurrency ÷ latency;
//! and the latency of one `immediate` flag while 50,000 routine deliveries are queued.
//!
//! Run: `cargo run --release --example bench_deliver` (or scripts/bench-deliver.sh).
//! Options: `--records N` (at concurrency 64; 8 gets N/5, 1 gets N/50), `--queued N`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorstep::config::DeliverySettings;
use doorstep::connectors::Connectors;
use doorstep::delivery::Engine;
use doorstep::mapping::Trusts;
use doorstep::pipeline;
use doorstep::report::{Conflict, ExceptionReport, Rejection};
use doorstep::store::{DeliveryStore, SqliteStore};
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

// As the `doorstep` binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LATENCY: Duration = Duration::from_millis(5);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Quiet;
impl pipeline::Reporter for Quiet {
    fn rejection(&mut self, _: &Rejection) {}
    fn exception(&mut self, _: &ExceptionReport) {}
    fn conflict(&mut self, _: &Conflict) {}
}

/// Answers 200 after its latency; notes when the marked flag arrives.
struct Receiver {
    latency: Duration,
    flag_seen: Arc<Mutex<Option<Instant>>>,
}

impl Respond for Receiver {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.body.windows(10).any(|w| w == b"bench-flag") {
            let mut seen = self.flag_seen.lock().unwrap();
            seen.get_or_insert_with(Instant::now);
        }
        ResponseTemplate::new(200).set_delay(self.latency)
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deployment folder: one webhook connector at `concurrency`, thrive's trust file, and a
/// route sending every record through a small map.
fn deployment(dir: &Path, concurrency: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::create_dir_all(dir.join("mappings/thrive/maps")).unwrap();
    std::fs::write(
        dir.join("connectors/hook.toml"),
        format!(
            "transport = \"webhook\"\n[limits]\nconcurrency = {concurrency}\ntimeout_seconds = 10\n\
             [endpoints.default]\npath = \"/hook\"\n"
        ),
    )
    .unwrap();
    std::fs::copy(
        root.join("mappings/thrive/trust.toml"),
        dir.join("mappings/thrive/trust.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/thrive/routes.toml"),
        "[destinations.hook]\nconnector = \"hook\"\nurl = \"http://unused\"\n\
         secrets = [{ env = \"BENCH_SECRET\" }]\n\
         [[route]]\nname = \"all\"\nto = \"hook\"\nmap = \"record\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/thrive/maps/record.toml"),
        "[body]\nkind = { field = \"kind\" }\nid = { field = \"id\" }\nrevision = { field = \"revision\" }\n\
         school = { field = \"school.urn\" }\nupn = { field = \"pupil.upn\" }\n",
    )
    .unwrap();
}

fn records(n: usize, file: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let visit: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("fixtures/valid/thrive-attendance-illness.json"))
            .unwrap(),
    )
    .unwrap();
    let mut out = String::with_capacity(n * 2048);
    for i in 0..n {
        let mut v = visit.clone();
        v["id"] = format!("bench-visit-{i}").into();
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(file, out).unwrap();
}

fn flag(file: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("fixtures/valid/thrive-flag-disclosure.json")).unwrap(),
    )
    .unwrap();
    v["id"] = "bench-flag".into();
    v["urgency"] = "immediate".into();
    std::fs::write(file, v.to_string()).unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    engine: Engine,
    trusts: Arc<Trusts>,
    dir: std::path::PathBuf,
}

async fn setup(server: &MockServer, concurrency: usize, n: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    deployment(&path, concurrency);
    let trusts = Arc::new(Trusts::load(&path.join("mappings"), chrono_tz::Europe::London).unwrap());
    let connectors = Arc::new(Connectors::load(&path.join("connectors")).unwrap());
    let mut settings = DeliverySettings {
        out_dir: path.join("out"),
        ..Default::default()
    };
    settings.overrides.insert(
        ("thrive".into(), "hook".into()),
        doorstep::config::DestinationOverride {
            url: Some(server.uri()),
            ..Default::default()
        },
    );
    let engine = Engine::new(trusts.clone(), connectors, &settings).unwrap();
    let store = Arc::new(SqliteStore::open(&path.join("bench.db")).await.unwrap());
    records(n, &path.join("records.jsonl"));
    pipeline::ingest(
        store.as_ref(),
        vec![path.join("records.jsonl")],
        trusts.clone(),
        &mut Quiet,
    )
    .await
    .unwrap();
    engine.route(store.as_ref()).await.unwrap();
    Setup {
        _dir: dir,
        store,
        engine,
        trusts,
        dir: path,
    }
}

#[tokio::main]
async fn main() {
    // SAFETY: set before any thread reads the environment.
    unsafe { std::env::set_var("BENCH_SECRET", SECRET) };
    let n = arg("--records", 100_000);
    let queued = arg("--queued", 50_000);
    let flag_seen = Arc::new(Mutex::new(None));
    let server = MockServer::builder()
        .disable_request_recording()
        .start()
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Receiver {
            latency: LATENCY,
            flag_seen: flag_seen.clone(),
        })
        .mount(&server)
        .await;
    println!(
        "machine: {} cores; webhook fake on loopback answering in {} ms",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        LATENCY.as_millis()
    );
    // The loopback ceiling: the same fake answering at once.
    let instant = MockServer::builder()
        .disable_request_recording()
        .start()
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Receiver {
            latency: Duration::ZERO,
            flag_seen: Arc::new(Mutex::new(None)),
        })
        .mount(&instant)
        .await;
    let runs = [
        (&server, 1, n / 50),
        (&server, 8, n / 5),
        (&server, 64, n),
        (&instant, 64, n),
    ];
    for (fake, concurrency, count) in runs {
        let s = setup(fake, concurrency, count).await;
        let t = Instant::now();
        s.engine.run(s.store.clone(), Instant::now()).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let delivered: u64 = s
            .store
            .delivery_counts()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.state == "delivered")
            .map(|c| c.count)
            .sum();
        assert_eq!(delivered as usize, count, "every record delivered");
        let rate = count as f64 / secs;
        if std::ptr::eq(fake, &instant) {
            println!(
                "concurrency {concurrency:>2}: {count:>7} deliveries in {secs:7.2} s = {rate:8.0}/s to a fake answering at once (the loopback ceiling here)"
            );
        } else {
            let bound = concurrency as f64 / LATENCY.as_secs_f64();
            println!(
                "concurrency {concurrency:>2}: {count:>7} deliveries in {secs:7.2} s = {rate:8.0}/s; bound {bound:6.0}/s; {:5.1}% of it",
                100.0 * rate / bound
            );
        }
        s.store.close().await;
    }

    // One immediate flag while `queued` routine deliveries wait, at concurrency 8.
    let s = setup(&server, 8, queued).await;
    let store = s.store.clone();
    let engine = Arc::new(s.engine);
    let start = |engine: Arc<Engine>, store: Arc<SqliteStore>| {
        tokio::spawn(async move {
            engine
                .run(store, Instant::now() + Duration::from_secs(3600))
                .await
        })
    };
    let mut runner = start(engine.clone(), store.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    flag(&s.dir.join("flag.json"));
    let t = Instant::now();
    pipeline::ingest(
        store.as_ref(),
        vec![s.dir.join("flag.json")],
        s.trusts.clone(),
        &mut Quiet,
    )
    .await
    .unwrap();
    engine.route(store.as_ref()).await.unwrap();
    if runner.is_finished() {
        // The queue drained before the flag came (a small --queued): send it alone.
        runner = start(engine.clone(), store.clone());
    }
    let latency = loop {
        if let Some(seen) = *flag_seen.lock().unwrap() {
            break seen.saturating_duration_since(t);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let waiting: u64 = store
        .delivery_counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.state != "delivered")
        .map(|c| c.count)
        .sum();
    println!(
        "immediate flag: delivered {:.0} ms after its ingest began (from ingest through routing to the receiver), {waiting} routine deliveries still queued",
        latency.as_secs_f64() * 1000.0
    );
    runner.abort();
}
