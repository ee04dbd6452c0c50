//! Logs carry ids, never names, addresses, descriptions or summaries: ingest records full of
//! unmistakable canaries with every log line on (DOORSTEP_LOG=trace, the store's own
//! logging included) and find none of them in anything doorstep prints.

use serde_json::json;

use crate::harness::{self, Deployment, read_fixture};

const CANARY: &str = "CANARYq7Zx";

fn canaried(mut v: serde_json::Value, n: usize) -> serde_json::Value {
    let c = |what: &str| json!(format!("{CANARY}-{what}-{n}"));
    if v.get("pupil").is_some() {
        v["pupil"]["given_name"] = c("given");
        v["pupil"]["family_name"] = c("family");
    }
    for field in [
        "summary",
        "description",
        "purpose_detail",
        "emergency_reason",
    ] {
        if v.get(field).is_some() {
            v[field] = c(field);
        }
    }
    if let Some(staff) = v.get_mut("staff").and_then(|s| s.as_array_mut()) {
        for s in staff {
            s["name"] = c("staff");
        }
    }
    if v.get("sign_out").is_some() {
        v["sign_out"]["address"] =
            json!({"lines": [format!("1 {CANARY} Street")], "postcode": format!("{CANARY}-PC")});
        v["sign_out"]["staff_mobiles"] = json!([format!("{CANARY}-0770")]);
    }
    for who in ["recorded_by", "raised_by"] {
        if v.get(who).is_some() {
            v[who]["name"] = c("recorder");
        }
    }
    v
}

#[test]
fn no_personal_data_in_logs_or_output() {
    let d = Deployment::new();
    let mut lines = Vec::new();
    for (n, f) in [
        "valid/thrive-visit-with-embedded-incident-and-flag.json",
        "valid/celt-transport-car-seat.json",
        "valid/celt-incident-prevented-leaving-999.json",
        "valid/celt-flag-immediate-danger-999.json",
    ]
    .iter()
    .enumerate()
    {
        lines.push(canaried(read_fixture(f), n).to_string());
    }
    // Rejected records whose bad values are themselves personal data.
    let mut bad = canaried(read_fixture("valid/thrive-attendance-illness.json"), 10);
    bad["child_seen"] = json!(format!("{CANARY}-wrong-type"));
    lines.push(bad.to_string());
    let mut bad = canaried(read_fixture("valid/celt-attendance-caring.json"), 11);
    bad["purpose"] = json!(format!("{CANARY}-enum"));
    lines.push(bad.to_string());
    let mut bad = canaried(read_fixture("valid/celt-attendance-caring.json"), 12);
    bad["buddy"]["code_word"] = json!(format!("{CANARY}-codeword"));
    lines.push(bad.to_string());
    let mut bad = canaried(read_fixture("valid/celt-attendance-caring.json"), 13);
    bad["pupil"]["upn"] = json!(format!("{CANARY}-upn"));
    lines.push(bad.to_string());
    std::fs::write(d.path("canary.jsonl"), lines.join("\n")).unwrap();

    for verb in ["check", "ingest"] {
        for format in ["human", "json"] {
            let out = harness::doorstep()
                .current_dir(d.dir.path())
                .env("DOORSTEP_LOG", "trace")
                .arg(verb)
                .arg("--config")
                .arg(d.config())
                .args(["--format", format, "canary.jsonl"])
                .assert()
                .code(1)
                .get_output()
                .clone();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stderr.lines().count() > 5,
                "{verb}: trace logging is on and writes lines: {stderr}"
            );
            assert!(
                !stderr.contains(CANARY),
                "{verb} {format}: a log line carries personal data:\n{stderr}"
            );
            assert!(
                !stdout.contains(CANARY),
                "{verb} {format}: output carries personal data:\n{stdout}"
            );
            // Ids are what logs carry.
            assert!(
                stderr.contains("thr-visit-022"),
                "{verb}: logs name records by id"
            );
        }
    }
    // The cron job: intake, routing and delivery (CSV logs in the deployment's `out/`; the
    // webhooks are paused), with every log line on.
    for format in ["human", "json"] {
        // `sync` moves the file away (to rejected/, with its report): drop it again.
        std::fs::copy(d.path("canary.jsonl"), d.path("drop/canary.jsonl")).unwrap();
        let out = harness::doorstep()
            .current_dir(d.dir.path())
            .env("DOORSTEP_LOG", "trace")
            .arg("sync")
            .arg("--config")
            .arg(d.config())
            .args(["--format", format])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stderr.contains(CANARY),
            "sync {format}: a log line carries personal data:\n{stderr}"
        );
        assert!(
            !stdout.contains(CANARY),
            "sync {format}: output carries personal data:\n{stdout}"
        );
    }
    let logs: Vec<_> = walk(&d.path("out"));
    assert!(
        logs.iter().any(|f| std::fs::read_to_string(f)
            .unwrap()
            .contains("thr-visit-022")),
        "sync delivered the visit to its contact log: the checks above saw a real delivery"
    );
    let status = d.run("status", &[]).code(0).get_output().stdout.clone();
    assert!(!String::from_utf8_lossy(&status).contains(CANARY));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
