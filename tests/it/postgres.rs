//! A deployment on PostgreSQL through the CLI: the schema is made only when asked
//! (`migrate`, `serve --migrate`), an older or newer one is refused naming both versions, a
//! password never sits in the config nor reaches a message, and the same records give the
//! same counts as on SQLite. (The store contract runs on both back ends in
//! `store_contract.rs`; several instances killed at random in `crash_rounds.rs`.)

use serde_json::Value;
use sqlx::Connection;

use crate::harness::{Deployment, fixture, json_lines};
use crate::pg::Schemas;

const KNOWN: i64 = 13;

fn on_postgres(url: &str) -> Deployment {
    let mut d = Deployment::new();
    d.store(&format!("postgres = {url:?}\nlease_seconds = 5\n"));
    d
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_schema_is_made_when_asked_and_another_version_is_refused() {
    let schemas = Schemas::new("cli");
    let url = schemas.url("cli").await;
    let d = on_postgres(&url);

    // Nothing there yet: refused, saying what to run; nothing made.
    let out = d.command("status", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no doorstep schema yet") && err.contains(&format!("version {KNOWN}")),
        "{err}"
    );
    assert!(err.contains("doorstep migrate"), "{err}");

    let out = d.command("migrate", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("from version none to {KNOWN}")),
        "{said}"
    );
    let out = d
        .command("migrate", &["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = &json_lines(&out.stdout)[0];
    assert_eq!(v["from"], KNOWN);
    assert_eq!(v["to"], KNOWN);
    assert_eq!(v["store"], "postgres");
    d.run("status", &[]).code(0);

    // A newer doorstep migrated it: this one refuses, naming both versions.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let out = d.command("status", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("version 99") && err.contains(&format!("version {KNOWN}")),
        "{err}"
    );
    let out = d
        .command("serve", &["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "serve refuses it too");
    assert!(stderr(&out).contains("version 99"));
    let _ = conn.close().await;
}

#[test]
fn a_password_is_never_written_in_the_config_nor_shown() {
    let mut d = Deployment::new();
    d.store("postgres = \"postgres://app:s3cret-canary@127.0.0.1:5432/test\"\n");
    let out = d.command("status", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("store.postgres"), "{err}");
    assert!(!err.contains("s3cret-canary"), "{err}");

    // From the environment it is accepted; a failure to connect names the URL without it.
    let mut d = Deployment::new();
    d.store("postgres = { env = \"DOORSTEP_PG\" }\n").env(
        "DOORSTEP_PG",
        "postgres://app:s3cret-canary@127.0.0.1:1/test?connect_timeout=1",
    );
    let out = d.command("status", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("postgres://app@127.0.0.1:1/test"), "{err}");
    assert!(!err.contains("s3cret-canary"), "{err}");
}

/// The same files ingested on PostgreSQL and on SQLite: the same outcomes, the same
/// counts, the same evidence-trail size.
#[tokio::test]
async fn the_same_records_give_the_same_counts_on_both_stores() {
    let schemas = Schemas::new("same");
    let url = schemas.url("same").await;
    let pg = on_postgres(&url);
    pg.run("migrate", &[]).code(0);
    let lite = Deployment::new();
    let file = fixture("valid");
    let file = file.to_str().unwrap();
    let mut results = Vec::new();
    for d in [&lite, &pg] {
        let ingest = d
            .command("ingest", &["--format", "json", file])
            .output()
            .unwrap();
        let lines = json_lines(&ingest.stdout);
        let summary = lines.last().cloned().unwrap_or(Value::Null);
        assert!(summary["accepted"].as_u64().unwrap_or(0) > 0, "{summary}");
        // Again: unchanged, nothing new.
        let again = json_lines(
            &d.command("ingest", &["--format", "json", file])
                .output()
                .unwrap()
                .stdout,
        );
        let status = json_lines(
            &d.command("status", &["--format", "json"])
                .output()
                .unwrap()
                .stdout,
        );
        results.push((lines, again.last().cloned(), status));
    }
    assert_eq!(
        results[0].0, results[1].0,
        "the same outcomes, line for line"
    );
    assert_eq!(results[0].1, results[1].1, "the second ingest: unchanged");
    assert_eq!(results[0].2, results[1].2, "the same status");
}

/// `serve --migrate` on an empty schema makes it and serves; `/metrics` carries the dead
/// tuples of each table; `/readyz` is ready.
#[tokio::test]
async fn serve_migrates_on_request_and_reports_bloat() {
    use std::io::{BufRead, BufReader};
    let schemas = Schemas::new("serve");
    let url = schemas.url("serve").await;
    let d = on_postgres(&url);
    let mut child = d
        .command("serve", &["--listen", "127.0.0.1:0", "--migrate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("doorstep: listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("serve --migrate did not start");
    let client = reqwest::Client::new();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        metrics.contains("doorstep_store_dead_tuples{table=\"deliveries\"}"),
        "{metrics}"
    );
}
