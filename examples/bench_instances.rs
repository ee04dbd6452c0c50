//! Several instances on one PostgreSQL (BENCHMARKS.md): records delivered per second by 1, 2
//! and 3 `doorstep sync` processes sharing one store, to a local webhook fake answering in
//! `--latency-ms` (default 20) at connector concurrency `--concurrency` (default 8) per
//! instance; and `doorstep ingest` of the same file on PostgreSQL beside SQLite.
//!
//! Real processes (the release `doorstep` binary beside this example, or `DOORSTEP_BIN`),
//! real PostgreSQL (`DOORSTEP_TEST_POSTGRES`, default `postgres://root@127.0.0.1:5432/test`;
//! a schema of its own per run, dropped after).
//!
//! Run: scripts/bench-instances.sh [RECORDS] (default 20000).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn server_url() -> String {
    std::env::var("DOORSTEP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("DOORSTEP_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("doorstep")
}

/// Answers 200 after its latency; keeps when each idempotency key first arrived.
#[derive(Clone)]
struct Receiver {
    latency: Duration,
    seen: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

impl Respond for Receiver {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(key) = request.headers.get("webhook-id") {
            let key = key.to_str().unwrap_or_default().to_owned();
            self.seen
                .lock()
                .unwrap()
                .entry(key)
                .or_insert_with(Instant::now);
        }
        ResponseTemplate::new(200).set_delay(self.latency)
    }
}

/// A deployment folder: one webhook connector at `concurrency`, thrive's trust file, every
/// record routed through a small map; the store as `store` says.
fn deployment(dir: &Path, concurrency: usize, store: &str, url: &str) {
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
    std::fs::write(
        dir.join("doorstep.toml"),
        format!(
            "connectors = \"connectors\"\nmappings = \"mappings\"\n[store]\n{store}\n\
             [intake]\ndrop = \"drop\"\n[delivery]\nmax_wait_seconds = 5.0\n\
             [destinations.thrive.hook]\nurl = {url:?}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("drop")).unwrap();
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

fn doorstep(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir)
        .args(args)
        .arg("--config")
        .arg(dir.join("doorstep.toml"))
        .env("BENCH_SECRET", SECRET)
        .env(
            "DOORSTEP_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null());
    cmd
}

/// Runs to the end; its wall time.
fn timed(dir: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = doorstep(dir, args).output().unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "doorstep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// A schema of its own, dropped when this goes.
struct Schema(String);

impl Schema {
    async fn create(name: &str) -> Schema {
        let schema = format!("bench_{name}_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Schema(schema)
    }

    fn url(&self) -> String {
        format!("{}?options=-csearch_path%3D{}", server_url(), self.0)
    }

    async fn drop_now(self) {
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.0
        )))
        .execute(&mut conn)
        .await;
    }
}

#[tokio::main]
async fn main() {
    let n = arg("--records", 20_000);
    let concurrency = arg("--concurrency", 8);
    let latency = Duration::from_millis(arg("--latency-ms", 20) as u64);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("records.jsonl");
    records(n, &file);
    let file = file.to_str().unwrap().to_owned();
    println!(
        "machine: {} cores; {n} records; webhook fake on loopback answering in {} ms; \
         connector concurrency {concurrency} per instance; PostgreSQL {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        latency.as_millis(),
        server_url()
    );

    // Ingest: the same file into SQLite and into PostgreSQL.
    let lite = work.path().join("sqlite");
    deployment(&lite, concurrency, "sqlite = \"store.db\"", "http://unused");
    let t = timed(&lite, &["ingest", &file]);
    println!(
        "ingest on SQLite:     {:6.2} s = {:7.0} records/s",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    let schema = Schema::create("ingest").await;
    let pg = work.path().join("pg-ingest");
    deployment(
        &pg,
        concurrency,
        &format!("postgres = {:?}", schema.url()),
        "http://unused",
    );
    timed(&pg, &["migrate"]);
    let t = timed(&pg, &["ingest", &file]);
    println!(
        "ingest on PostgreSQL: {:6.2} s = {:7.0} records/s",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    schema.drop_now().await;

    let mut one = None;
    for instances in [1usize, 2, 3] {
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let receiver = Receiver {
            latency,
            seen: Arc::default(),
        };
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(receiver.clone())
            .mount(&server)
            .await;
        let schema = Schema::create(&format!("x{instances}")).await;
        let dir = work.path().join(format!("pg-{instances}"));
        deployment(
            &dir,
            concurrency,
            &format!("postgres = {:?}\nlease_seconds = 30", schema.url()),
            &server.uri(),
        );
        timed(&dir, &["migrate"]);
        // Ingested and routed before the clock starts (the destination paused meanwhile):
        // the instances only deliver.
        let config = dir.join("doorstep.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}paused = true\n")).unwrap();
        timed(&dir, &["ingest", &file]);
        timed(&dir, &["sync"]);
        std::fs::write(&config, text).unwrap();
        let started = Instant::now();
        let mut children: Vec<_> = (0..instances)
            .map(|_| doorstep(&dir, &["sync"]).spawn().unwrap())
            .collect();
        let waited = tokio::task::spawn_blocking(move || {
            for c in &mut children {
                c.wait().unwrap();
            }
        });
        waited.await.unwrap();
        let wall = started.elapsed();
        let seen = receiver.seen.lock().unwrap().clone();
        let first = seen.values().min().copied();
        let last = seen.values().max().copied();
        let span = match (first, last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
            _ => f64::NAN,
        };
        let rate = seen.len() as f64 / span;
        let ratio = match one {
            None => {
                one = Some(rate);
                String::new()
            }
            Some(base) => format!("  = {:.2}x one instance", rate / base),
        };
        println!(
            "{instances} instance(s): {} of {n} delivered; {:7.0} deliveries/s from the first to the last \
             arrival ({span:.1} s; {:.1} s with start-up){ratio}",
            seen.len(),
            rate,
            wall.as_secs_f64()
        );
        assert_eq!(seen.len(), n, "every record delivered once");
        schema.drop_now().await;
    }
}
