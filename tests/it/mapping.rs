//! The shipped trusts' mapping tests (`mappings/<trust>/tests/*.toml`) as a trust's IT runs
//! them: `doorstep mapping test` passes on both trusts, a changed expectation fails with a
//! diff naming the case, and a withdrawn attendance code is refused by `config check`.

use std::path::Path;

use crate::harness::{Deployment, doorstep, root};

/// Replaces exactly one occurrence of `from` in a file.
fn edit_once(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} should hold `{from}` exactly once",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// `(passed, failed)` from the runner's last line, `N case(s): P passed, F failed`.
fn summary(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" case(s): "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let count = |word: &str| -> usize {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"));
        words[i - 1].parse().unwrap()
    };
    (count("passed"), count("failed"))
}

/// `doorstep mapping test FOLDER` with no config (run from an empty folder).
fn mapping_test(folder: &Path) -> assert_cmd::assert::Assert {
    let cwd = tempfile::tempdir().unwrap();
    doorstep()
        .current_dir(cwd.path())
        .args(["mapping", "test"])
        .arg(folder)
        .assert()
}

#[test]
fn shipped_trusts_pass_their_mapping_tests() {
    for trust in ["thrive", "celt"] {
        let assert = mapping_test(&root().join("mappings").join(trust)).code(0);
        let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
        let (passed, failed) = summary(&stdout);
        assert_eq!(failed, 0, "{trust}:\n{stdout}");
        assert!(
            passed >= 15,
            "{trust}: only {passed} passing cases:\n{stdout}"
        );
        assert!(!stdout.contains("FAIL"), "{trust}:\n{stdout}");
    }
}

#[test]
fn a_changed_csv_cell_fails_with_a_diff_naming_the_case() {
    let d = Deployment::copy_of("mappings");
    let trust = d.path("mappings/thrive");
    // The attendance row's code: illness is I; say M instead.
    edit_once(
        &trust.join("tests/01-illness-visit.toml"),
        r#""Ben", "I", "illness""#,
        r#""Ben", "M", "illness""#,
    );
    let assert = mapping_test(&trust).code(1);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        stdout.contains("FAIL  01-illness-visit.toml"),
        "the failing case is named:\n{stdout}"
    );
    assert!(stdout.contains("row differs"), "{stdout}");
    assert!(
        stdout.contains("--- expected") && stdout.contains("+++ produced"),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"-M"),
        "the expected cell as a `-` line:\n{stdout}"
    );
    assert!(
        lines.contains(&"+I"),
        "the produced cell as a `+` line:\n{stdout}"
    );
    // The cells around it are context, not changes.
    assert!(
        lines.contains(&"Ben") && lines.contains(&"illness"),
        "{stdout}"
    );
    let (passed, failed) = summary(&stdout);
    assert_eq!(failed, 1, "only the changed case fails:\n{stdout}");
    assert!(passed >= 15, "{stdout}");
}

#[test]
fn a_changed_body_value_fails_with_a_json_diff_naming_the_case() {
    let d = Deployment::copy_of("mappings");
    let trust = d.path("mappings/celt");
    edit_once(
        &trust.join("tests/23-policy-errors-to-dsl.toml"),
        r#""alert": "policy exception: visit report","#,
        r#""alert": "policy exception","#,
    );
    let assert = mapping_test(&trust).code(1);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        stdout.contains("FAIL  23-policy-errors-to-dsl.toml"),
        "{stdout}"
    );
    assert!(stdout.contains("(dsl_alerts): body differs"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert!(
        lines.contains(&r#"-  "alert": "policy exception","#),
        "{stdout}"
    );
    assert!(
        lines.contains(&r#"+  "alert": "policy exception: visit report","#),
        "{stdout}"
    );
    assert_eq!(summary(&stdout).1, 1, "{stdout}");
}

#[test]
fn a_case_expecting_too_little_fails() {
    // An output no expectation names is a failure, not silently ignored.
    let d = Deployment::copy_of("mappings");
    let case = d.path("mappings/celt/tests/12-disclosure-flag-same-day.toml");
    let text = std::fs::read_to_string(&case).unwrap();
    let last = text.rfind("[[expect]]").unwrap();
    assert!(text[last..].contains(r#"destination = "dsl_alerts""#));
    std::fs::write(&case, &text[..last]).unwrap();
    let assert = mapping_test(&d.path("mappings/celt")).code(1);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        stdout.contains("record celt-flag-212 also went to `dsl_alerts`"),
        "{stdout}"
    );
}

#[test]
fn a_withdrawn_attendance_code_is_refused_by_config_check() {
    // A deployment over a copy of the mappings, the webhook destinations paused so no
    // secret is needed.
    let d = Deployment::copy_of("mappings");
    // The copy as shipped is a good config: what follows is down to the code alone.
    d.run("config check", &[]).code(0);

    // H (holiday authorised) was withdrawn in August 2024.
    edit_once(
        &d.path("mappings/thrive/codes.toml"),
        "illness = \"I\"",
        "illness = \"H\"",
    );
    let assert = d.run("config check", &[]).code(2);
    let out = assert.get_output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("codes.toml"), "names the file: {text}");
    assert!(text.contains("attendance.illness"), "names the key: {text}");
    assert!(text.contains("withdrawn"), "says why: {text}");

    // The mapping's own tests cannot run on it either.
    mapping_test(&d.path("mappings/thrive"))
        .code(2)
        .stderr(predicates::str::contains("withdrawn"));
}
