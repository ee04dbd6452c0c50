//! Helpers shared by the integration tests: a throwaway deployment and the binary.
#![allow(dead_code)]

pub use crate::fakes as fake;
pub use crate::live;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A deployment in a temporary folder: `doorstep.toml`, an SQLite store and a drop folder.
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

/// The shipped trusts' webhook destinations have no receiver in tests: paused.
pub const PAUSED: &str = "[destinations.thrive.cpoms]\npaused = true\n\
    [destinations.thrive.arbor_notes]\npaused = true\n\
    [destinations.thrive.arbor_register]\npaused = true\n\
    [destinations.celt.cpoms]\npaused = true\n[destinations.celt.dsl_alerts]\npaused = true\n\
    [destinations.celt.wonde]\npaused = true\n[destinations.celt.xporter]\npaused = true\n";

impl Deployment {
    /// With the repository's shipped `mappings/` (both trusts' policies).
    pub fn new() -> Self {
        Self::with_mappings(root().join("mappings").to_str().unwrap())
    }

    /// With `mappings` (relative to the deployment folder, or absolute).
    pub fn with_mappings(mappings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("drop")).unwrap();
        std::fs::write(
            dir.path().join("doorstep.toml"),
            format!(
                "mappings = {mappings:?}\nconnectors = {:?}\n[store]\nsqlite = \"var/doorstep.db\"\n\
                 [intake]\ndrop = \"drop\"\n{PAUSED}",
                root().join("connectors").to_str().unwrap()
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("doorstep.toml")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("var/doorstep.db")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `doorstep VERB --config <this deployment> ARGS…`, run from the deployment folder.
    /// A verb may be two words (`audit export`).
    pub fn run(&self, verb: &str, args: &[&str]) -> assert_cmd::assert::Assert {
        let mut cmd = doorstep();
        cmd.current_dir(self.dir.path())
            .args(verb.split_whitespace())
            .arg("--config")
            .arg(self.config());
        cmd.args(args).assert()
    }
}

pub fn doorstep() -> Command {
    let mut cmd = Command::cargo_bin("doorstep").unwrap();
    cmd.env_remove("DOORSTEP_CONFIG").env_remove("DOORSTEP_LOG");
    cmd
}

/// Parses `--format json` output into its lines.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

pub fn fixture(path: &str) -> PathBuf {
    root().join("fixtures").join(path)
}

pub fn read_fixture(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

/// Collects what a pipeline run reports.
#[derive(Default)]
pub struct Collect {
    pub rejections: Vec<doorstep::report::Rejection>,
    pub exceptions: Vec<doorstep::report::ExceptionReport>,
    pub conflicts: Vec<doorstep::report::Conflict>,
}

impl doorstep::pipeline::Reporter for Collect {
    fn rejection(&mut self, r: &doorstep::report::Rejection) {
        self.rejections.push(r.clone());
    }
    fn exception(&mut self, e: &doorstep::report::ExceptionReport) {
        self.exceptions.push(e.clone());
    }
    fn conflict(&mut self, c: &doorstep::report::Conflict) {
        self.conflicts.push(c.clone());
    }
}
