//! `serve` benchmark (BENCHMARKS.md, issue 18): durable intake over HTTP under load, against
//! the HTTP ceiling of the same server on the same machine, and how fast an `immediate`
//! safeguarding flag posted under that load reaches the trust's webhook receiver.
//!
//! Run: `scripts/bench-serve.sh` (builds this and the release `doorstep`, needs `oha` on the
//! PATH: `cargo install oha`). Options: `--seconds S` (default 20) for each oha run,
//! `--clients C` (default 64), `--flags N` (default 100), `--doorstep PATH` (default: the
//! release binary beside this one), `--oha PATH` (default `oha`).
//!
//! What it does: a deployment in a temporary folder with the repository's connectors and
//! mappings; Thrive's CPOMS-style webhook pointed at a receiver in this process (answering
//! 200 at once, noting when each record arrives), Thrive's other destinations paused; one
//! API key for all Thrive's schools; `doorstep serve` started as a child process. Then:
//! 1. oha, C clients for S seconds, `GET /healthz`: the ceiling;
//! 2. oha, C clients for S seconds, `POST /v1/records`, each request one distinct Thrive
//!    record from `doorstep gen` (`-Z`: a body a line), all delivered to the receiver in
//!    process as they come — while this process posts N `immediate` flags, spread over the
//!    run, and times each from the POST's start to its arrival at the receiver.
//!
//! Figures: requests/s and p50/p99/p99.9 of each run, the answers by status, records stored
//! (`/metrics`), and the flags' arrival latency p50/p99/max.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::Value;

#[derive(Clone)]
struct Options {
    seconds: u64,
    clients: u32,
    flags: usize,
    doorstep: PathBuf,
    oha: String,
    /// Pause the webhook too: intake alone, nothing delivered (`--paused`).
    paused: bool,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 20,
        clients: 64,
        flags: 100,
        doorstep: std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("doorstep")))
            .unwrap_or_else(|| PathBuf::from("target/release/doorstep")),
        oha: "oha".to_owned(),
        paused: false,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--paused") {
        args.remove(i);
        o.paused = true;
    }
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--seconds" => o.seconds = value.parse().expect("--seconds N"),
            "--clients" => o.clients = value.parse().expect("--clients N"),
            "--flags" => o.flags = value.parse().expect("--flags N"),
            "--doorstep" => o.doorstep = value.into(),
            "--oha" => o.oha = value,
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// When each record id reached the receiver (first arrival).
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver(arrivals: Arrivals) -> String {
    let app = Router::new().route(
        "/cpoms",
        post(move |body: axum::body::Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<Value>(&body)
                    && let Some(id) = v["record_id"].as_str()
                {
                    arrivals.lock().unwrap().entry(id.to_owned()).or_insert(now);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cpoms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn doorstep(o: &Options, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(&o.doorstep);
    c.args(args)
        .arg("--config")
        .arg(dir.join("doorstep.toml"))
        .env(
            "THRIVE_CPOMS_WEBHOOK_SECRET",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env(
            "CELT_CPOMS_WEBHOOK_SECRET",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env(
            "CELT_DSL_WEBHOOK_SECRET",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("CELT_WONDE_TOKEN", "bench")
        .env("CELT_XPORTER_PASSWORD", "bench")
        .env("THRIVE_ARBOR_USERNAME", "bench")
        .env("THRIVE_ARBOR_PASSWORD", "bench")
        .env("DOORSTEP_LOG", "warn");
    c
}

/// oha's summary of one run.
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    statuses: String,
}

fn oha(o: &Options, extra: &[&str], url: &str) -> Run {
    let out = Command::new(&o.oha)
        .args(["-z", &format!("{}s", o.seconds)])
        .args(["-c", &o.clients.to_string()])
        .args(["--no-tui", "--output-format", "json"])
        .args(extra)
        .arg(url)
        .output()
        .expect("oha runs (cargo install oha)");
    assert!(
        out.status.success(),
        "oha: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("oha's JSON");
    let ms = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Run {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
        statuses: v["statusCodeDistribution"].to_string(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let o = options();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let arrivals: Arrivals = Arc::default();
    let hook = receiver(arrivals.clone()).await;
    std::fs::create_dir_all(dir.join("drop")).unwrap();
    std::fs::write(
        dir.join("doorstep.toml"),
        format!(
            "connectors = {:?}\nmappings = {:?}\n\
             [store]\nsqlite = \"store.db\"\n\
             [intake]\ndrop = \"drop\"\n\
             [server]\nkey_requests_per_second = 1000000\nkey_burst = 1000000\n\
             [delivery]\nout = \"out\"\n\
             [destinations.thrive.cpoms]\nurl = {hook:?}\npaused = {}\n\
             [destinations.thrive.arbor_notes]\npaused = true\n\
             [destinations.thrive.arbor_register]\npaused = true\n\
             [destinations.thrive.attendance_log]\npaused = true\n\
             [destinations.thrive.contact_log]\npaused = true\n",
            repo.join("connectors"),
            repo.join("mappings"),
            o.paused,
        ),
    )
    .unwrap();

    // Thrive's records, one a line, and a key for all its schools.
    let generated = doorstep(&o, dir, &["gen", "--count", "400000", "--seed", "18"])
        .output()
        .unwrap();
    let mut bodies = std::fs::File::create(dir.join("bodies.jsonl")).unwrap();
    let mut schools = std::collections::BTreeSet::new();
    let mut flag: Option<Value> = None;
    let mut lines = 0;
    for line in generated
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let v: Value = serde_json::from_slice(line).unwrap();
        if v["trust"] != "thrive" {
            continue;
        }
        schools.insert(v["school"]["urn"].as_str().unwrap().to_owned());
        if v["kind"] == "safeguarding_flag" && flag.is_none() {
            flag = Some(v.clone());
        }
        bodies.write_all(line).unwrap();
        bodies.write_all(b"\n").unwrap();
        lines += 1;
    }
    drop(bodies);
    let mut keys_args = vec!["keys", "create", "--trust", "thrive", "--format", "json"];
    for s in &schools {
        keys_args.extend(["--school", s.as_str()]);
    }
    let made = doorstep(&o, dir, &keys_args).output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();

    let mut server = doorstep(&o, dir, &["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let url = loop {
        let line = stderr.next().expect("serve ended").unwrap();
        if let Some(u) = line.strip_prefix("doorstep: listening on ") {
            break u.to_owned();
        }
        eprintln!("{line}");
    };
    std::thread::spawn(move || for _ in stderr.map_while(Result::ok) {});

    println!(
        "# serve: {} clients, {} s a run, {} distinct Thrive records available",
        o.clients, o.seconds, lines
    );
    let ceiling = oha(&o, &[], &format!("{url}/healthz"));

    // Intake under load, with the flags posted beside it.
    let flag = flag.expect("a Thrive flag in the generated records");
    let (flags, spacing) = (
        o.flags,
        Duration::from_secs(o.seconds) / (o.flags as u32 + 2),
    );
    let (posting_url, posting_key) = (url.clone(), key.clone());
    let server_url = url.clone();
    let posting = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut sent = HashMap::new();
        tokio::time::sleep(spacing).await;
        for i in 0..flags {
            let mut f = flag.clone();
            let id = format!("F-bench-{i:04}");
            f["id"] = id.clone().into();
            f["urgency"] = "immediate".into();
            let started = Instant::now();
            let r = client
                .post(format!("{posting_url}/v1/records"))
                .bearer_auth(&posting_key)
                .json(&f)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
            sent.insert(id, started);
            tokio::time::sleep(spacing).await;
        }
        sent
    });
    let auth = format!("Authorization: Bearer {key}");
    let body_file = dir.join("bodies.jsonl");
    let o2 = o.clone();
    let intake = tokio::task::spawn_blocking(move || {
        oha(
            &o2,
            &[
                "-m",
                "POST",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "-Z",
                body_file.to_str().unwrap(),
            ],
            &format!("{url}/v1/records"),
        )
    })
    .await
    .unwrap();
    let sent = posting.await.unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let all_in = {
            let got = arrivals.lock().unwrap();
            sent.keys().all(|id| got.contains_key(id))
        };
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies: Vec<f64> = {
        let got = arrivals.lock().unwrap();
        sent.iter()
            .filter_map(|(id, at)| {
                got.get(id)
                    .map(|t| t.duration_since(*at).as_secs_f64() * 1e3)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    // How intake grouped: transactions and records per transaction, from /metrics.
    let metrics = reqwest::get(format!("{}/metrics", server_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (commits, committed) = (
        metric("doorstep_intake_commit_records_count"),
        metric("doorstep_intake_commit_records_sum"),
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    println!("| run | requests/s | p50 ms | p99 ms | p99.9 ms | answers |");
    println!("|---|---:|---:|---:|---:|---|");
    for (name, r) in [
        ("GET /healthz (ceiling)", &ceiling),
        ("POST /v1/records, one record each", &intake),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.statuses
        );
    }
    println!(
        "\nimmediate flags: {} of {} reached the webhook receiver; from POST to arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        sent.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "records delivered to the receiver in all: {}",
        arrivals.lock().unwrap().len()
    );
    println!(
        "intake transactions: {commits:.0}, {:.1} records each on average",
        committed / commits
    );
}
