//! The SQLite store: revision rules, batches, durability across a reopen and a kill -9.

use std::process::Stdio;
use std::time::Duration;

use doorstep::audit::TrailedStore;
use doorstep::records::{Kind, parse_submission};
use doorstep::store::{IngestOutcome, IntakeBatch, NewRecord, SqliteStore, Store};
use serde_json::{Value, json};

use crate::harness;

fn record(revision: u32, summary: &str) -> NewRecord {
    let mut v = harness::read_fixture("valid/thrive-attendance-illness.json");
    v["revision"] = json!(revision);
    v["summary"] = json!(summary);
    let parsed = parse_submission(v).unwrap().remove(0);
    NewRecord::from_parsed(parsed, Vec::new(), "test.jsonl", Some(u64::from(revision)))
}

fn outcomes_of(outcomes: &[IngestOutcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            IngestOutcome::Stored => "stored",
            IngestOutcome::Unchanged => "unchanged",
            IngestOutcome::Conflict(_) => "conflict",
        })
        .collect()
}

async fn ingest(store: &SqliteStore, records: Vec<NewRecord>) -> Vec<&'static str> {
    let batch = IntakeBatch {
        records,
        rejections: vec![],
    };
    outcomes_of(&store.ingest(&batch).await.unwrap())
}

#[tokio::test]
async fn revisions_supersede_repeat_as_no_ops_and_conflict_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    assert_eq!(ingest(&store, vec![record(2, "b")]).await, ["stored"]);
    assert_eq!(ingest(&store, vec![record(2, "b")]).await, ["unchanged"]);
    assert_eq!(
        ingest(&store, vec![record(2, "other")]).await,
        ["conflict"],
        "equal revision, other content"
    );
    assert_eq!(
        ingest(&store, vec![record(1, "a")]).await,
        ["conflict"],
        "lower revision, not stored"
    );
    // Within one batch: later revisions supersede earlier ones, in order.
    assert_eq!(
        ingest(
            &store,
            vec![
                record(3, "c"),
                record(4, "d"),
                record(3, "c"),
                record(3, "x")
            ]
        )
        .await,
        ["stored", "stored", "unchanged", "conflict"]
    );
    let revs = store
        .revisions("thrive", Kind::VisitReport, "thr-visit-001")
        .await
        .unwrap();
    assert_eq!(revs.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 4]);
    let latest: Value = serde_json::from_str(&revs[2].1).unwrap();
    assert_eq!(latest["summary"], "d");
    let status = store.status().await.unwrap();
    let current: u64 = status
        .records
        .iter()
        .filter(|r| r.state == "current")
        .map(|r| r.count)
        .sum();
    let superseded: u64 = status
        .records
        .iter()
        .filter(|r| r.state == "superseded")
        .map(|r| r.count)
        .sum();
    assert_eq!((current, superseded), (1, 2));
    let conflicts: u64 = status
        .issues
        .iter()
        .filter(|i| i.issue == "conflict")
        .map(|i| i.count)
        .sum();
    assert_eq!(conflicts, 3);
}

#[tokio::test]
async fn stored_content_is_canonical_and_hashes_to_its_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let r = record(1, "a");
    let hash = r.hash;
    ingest(&store, vec![r]).await;
    store.close().await;
    // Reopened: what was committed is there.
    let store = SqliteStore::open(&path).await.unwrap();
    let revs = store
        .revisions("thrive", Kind::VisitReport, "thr-visit-001")
        .await
        .unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(
        doorstep::records::ContentHash::of_canonical(&revs[0].1),
        hash
    );
    let value: Value = serde_json::from_str(&revs[0].1).unwrap();
    assert_eq!(doorstep::records::canonical_json(&value), revs[0].1);
}

/// Kill -9 an ingest part-way, more than once; then a full ingest finds every record either
/// already there (unchanged) or new, never in conflict, and the database is sound.
#[test]
fn a_killed_ingest_loses_nothing_it_committed_and_recovers() {
    let d = harness::Deployment::new();
    let count = 40_000u64;
    let records = harness::doorstep()
        .args(["gen", "--count", &count.to_string(), "--seed", "77"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(d.path("big.jsonl"), &records).unwrap();
    // Kill once the store (database plus write-ahead log) has grown by 2 MiB, twice.
    let wal = d.db().with_extension("db-wal");
    let size = || {
        [d.db(), wal.clone()]
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
    };
    for grow_by in [2u64 << 20, 2 << 20] {
        let before = size();
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("doorstep"))
            .current_dir(d.dir.path())
            .args(["ingest", "--config"])
            .arg(d.config())
            .arg("big.jsonl")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while size() < before + grow_by
            && started.elapsed() < Duration::from_secs(60)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = d
        .run("ingest", &["--format", "json", "big.jsonl"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let summary = harness::json_lines(&out).pop().unwrap();
    assert!(
        summary["unchanged"].as_u64().unwrap() > 0,
        "what the killed runs committed is kept"
    );
    assert!(
        summary["accepted"].as_u64().unwrap() > 0,
        "the kills came part-way"
    );
    assert_eq!(summary["conflicts"], 0);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(
        summary["accepted"].as_u64().unwrap() + summary["unchanged"].as_u64().unwrap(),
        count
    );
    let out = d
        .run("status", &["--format", "json"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(harness::json_lines(&out).pop().unwrap()["records"], count);
}

/// Reading verbs on a read-only copy of a store (an auditor's copy; SPEC §4): `status`,
/// `deadletter list` / `show` and `audit export` work, write nothing, and `audit export`
/// says its export is not recorded there. A verb that writes is refused cleanly.
#[test]
fn reading_verbs_work_on_a_read_only_copy() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = harness::Deployment::new();
    d.add_config("[audit]\nsigning_key = { file = \"keys/log.key\" }\n");
    d.run(
        "audit keygen",
        &["--name", "trail.example", "--out", "keys/log.key"],
    )
    .code(0);
    d.run("ingest", &[harness::fixture("valid").to_str().unwrap()])
        .code(0);
    d.run("sync", &[]).code(0);
    // The copy: the store alone (its log checkpointed into it), file and folder read-only.
    let ro = d.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::copy(d.db(), ro.join("doorstep.db")).unwrap();
    let config = std::fs::read_to_string(d.config())
        .unwrap()
        .replace("var/doorstep.db", "ro/doorstep.db");
    std::fs::write(d.path("ro.toml"), config).unwrap();
    let set_mode = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(&ro.join("doorstep.db"), 0o444);
    set_mode(&ro, 0o555);
    let before = std::fs::read(ro.join("doorstep.db")).unwrap();
    let run = |args: &[&str]| {
        harness::doorstep()
            .current_dir(d.dir.path())
            .args(args)
            .args(["--config", "ro.toml"])
            .assert()
    };
    let status = run(&["status", "--format", "json"]).code(0);
    let lines = harness::json_lines(&status.get_output().stdout);
    assert!(!lines.is_empty());
    run(&["deadletter", "list"]).code(0);
    run(&["deadletter", "show", "1"]).code(0);
    let export = run(&[
        "audit",
        "export",
        "--trust",
        "celt",
        "--school",
        "136401",
        "--from",
        "2026-01-01",
        "--to",
        "2030-12-31",
        "--out",
        "ro-bundle",
    ])
    .code(0);
    let stderr = String::from_utf8_lossy(&export.get_output().stderr).into_owned();
    assert!(stderr.contains("not recorded"), "{stderr}");
    let key = d.path("keys/log.key.pub");
    harness::doorstep()
        .args(["audit", "verify"])
        .arg(d.path("ro-bundle"))
        .arg("--key")
        .arg(&key)
        .assert()
        .code(0);
    // A writing verb is refused, naming the store; nothing changed.
    run(&["ingest", harness::fixture("valid").to_str().unwrap()]).code(predicates::ord::ne(0));
    assert_eq!(std::fs::read(ro.join("doorstep.db")).unwrap(), before);
    set_mode(&ro, 0o755);
}
