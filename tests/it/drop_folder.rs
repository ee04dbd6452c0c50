//! The drop folder under `sync` as cron meets it: files still being written, names that are
//! not UTF-8 or carry control characters, records too large for memory. Real processes,
//! real files.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Deployment, read_fixture};

/// A valid record with its own id.
fn record(id: &str) -> Value {
    let mut r = read_fixture("valid/celt-attendance-caring.json");
    r["id"] = id.into();
    r
}

fn line(id: &str) -> String {
    format!("{}\n", serde_json::to_string(&record(id)).unwrap())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A file appended to while `sync` watches it is left whole in the drop folder, none of it
/// read; once it is still, the next run takes all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_left_for_the_next_run() {
    let mut d = Deployment::new();
    d.settle_seconds(1.0);
    let path = d.path("drop/day.jsonl");
    std::fs::write(&path, line("celt-grow-0")).unwrap();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(3);
            let mut n = 1;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(150));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(line(&format!("celt-grow-{n}")).as_bytes())
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let first = d.sync().await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.count("accepted"), 0, "{:?}", first.lines);
    assert!(
        first.stderr.contains("day.jsonl: still being written"),
        "{}",
        first.stderr
    );
    assert_eq!(names(&d.path("drop")), ["day.jsonl"]);
    assert!(names(&d.path("archive")).is_empty());

    let written = writer.join().unwrap();
    let second = d.sync().await;
    assert_eq!(second.count("accepted"), written, "{}", second.stderr);
    assert!(names(&d.path("drop")).is_empty());
    assert_eq!(names(&d.path("archive")).len(), 1);
}

/// The default: a file written a moment before `sync` starts is waited for, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_written_just_before_sync_is_taken_once_still() {
    let mut d = Deployment::new();
    d.settle_seconds(0.5);
    std::fs::write(d.path("drop/day.jsonl"), line("celt-fresh-1")).unwrap();
    let run = d.sync().await;
    assert_eq!(run.count("accepted"), 1, "{}", run.stderr);
    assert!(
        !run.stderr.contains("still being written"),
        "{}",
        run.stderr
    );
    assert_eq!(names(&d.path("archive")).len(), 1);
}

/// A name that is not UTF-8 is one file among others: judged on its own, archived or
/// rejected by what it holds, never merging its report with another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_file_is_judged_on_its_own_whatever_its_name() {
    let d = Deployment::new();
    let drop = d.path("drop");
    for n in 0..4 {
        std::fs::write(
            drop.join(format!("good-{n}.jsonl")),
            line(&format!("celt-n-{n}")),
        )
        .unwrap();
    }
    let odd = |tail: &[u8]| drop.join(OsStr::from_bytes(&[b"caf\xe9-".as_slice(), tail].concat()));
    std::fs::write(odd(b"good.jsonl"), line("celt-n-latin1")).unwrap();
    std::fs::write(odd(b"bad.jsonl"), "{\"kind\": \n").unwrap();
    std::fs::write(drop.join("also-bad.jsonl"), "[1]\n").unwrap();
    let run = d.sync().await;
    assert_eq!(run.count("accepted"), 5, "{:?}", run.lines);
    assert_eq!(run.count("rejected"), 2, "{:?}", run.lines);
    assert!(names(&drop).is_empty(), "{:?}", names(&drop));
    assert_eq!(names(&d.path("archive")).len(), 5);
    let rejected = names(&d.path("rejected"));
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    let reports: Vec<String> = rejected
        .iter()
        .filter(|n| n.ends_with(".rejections.jsonl"))
        .map(|n| std::fs::read_to_string(d.path("rejected").join(n)).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    for r in reports {
        assert_eq!(r.lines().count(), 1, "one rejection a report: {r}");
    }
}

/// A file name with a newline or escape sequence cannot forge a line of the human output.
#[test]
fn a_file_name_cannot_forge_an_output_line() {
    let d = Deployment::new();
    let name = "day\nrejected forged.jsonl: [x] \u{1b}[2Jforged.jsonl";
    std::fs::write(d.path("drop").join(name), "{\"kind\": 1}\n").unwrap();
    let out = d.run("sync", &[]).get_output().clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    let rejection_lines: Vec<&str> = stdout.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(rejection_lines.len(), 1, "{stdout}");
    assert!(rejection_lines[0].contains("day\\nrejected"), "{stdout}");
}

/// A `.json` file holding a record over the 4 MiB cap between two good ones: that record is
/// rejected by rule, the others taken.
#[test]
fn an_oversized_record_in_a_json_file_is_rejected_the_rest_taken() {
    let d = Deployment::new();
    let mut big = record("celt-big");
    big["purpose_detail"] = "x".repeat(5 * 1024 * 1024).into();
    let text = serde_json::to_string(&Value::Array(vec![
        record("celt-small-1"),
        big,
        record("celt-small-2"),
    ]))
    .unwrap();
    std::fs::write(d.path("drop/day.json"), text).unwrap();
    let out = d
        .run("check", &["--format", "json", "drop"])
        .get_output()
        .clone();
    let lines = crate::harness::json_lines(&out.stdout);
    let rejections: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "rejection").collect();
    assert_eq!(rejections.len(), 1, "{lines:?}");
    assert_eq!(rejections[0]["rule"], "record-too-large");
    let summary = lines.last().unwrap();
    assert_eq!(
        (summary["accepted"].as_u64(), summary["rejected"].as_u64()),
        (Some(2), Some(1))
    );
}
