//! The one deployment harness of the integration tests: a throwaway deployment (its
//! `doorstep.toml`, SQLite store, drop folder and, where a test changes them, its own copies
//! of connectors and mappings), the `doorstep` binary run against it, and the fixtures.
//!
//! Three starting points, one type:
//! - [`Deployment::new`] / [`Deployment::with_mappings`]: the repository's shipped connectors
//!   and mappings, used where they are (CLI, policy, audit, privacy, store tests);
//! - [`Deployment::copy_of`]: copies of the shipped connectors and a mappings folder, so a
//!   test may change a map, with chosen destinations pointed at test servers (the
//!   target-system tests);
//! - [`Deployment::thrive_only`]: no connector and only Thrive's `trust.toml`: the test
//!   writes its own connectors, routes and maps (the delivery engine tests).
//!
//! `doorstep.toml` is written from the builder's settings when the deployment is made, after
//! each change of them, and before each run: every HTTP destination of the mappings that has
//! no test server is paused (except in [`Deployment::thrive_only`], whose tests choose).
//!
//! Every run is a child process given its environment through `Command::env`: no test
//! changes the environment, current folder or anything else of this shared process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `doorstep` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_doorstep");

/// The repository.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `doorstep` with no config or log level taken from the environment of `cargo test`.
pub fn doorstep() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(BIN);
    cmd.env_remove("DOORSTEP_CONFIG").env_remove("DOORSTEP_LOG");
    cmd
}

/// A deployment in a temporary folder.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// `connectors` and `mappings` as written in `doorstep.toml`.
    connectors: String,
    mappings: String,
    /// `[delivery]`: `out = "out"` and this `max_wait_seconds`; none: the defaults.
    max_wait_seconds: Option<f64>,
    /// `[intake] settle_seconds`: 0 unless a test sets it (a test's drop files are whole
    /// when written).
    settle_seconds: f64,
    /// Pause every HTTP destination of the mappings without a test server.
    pause_others: bool,
    /// (trust, destination) → URL of the test server.
    urls: BTreeMap<(String, String), String>,
    /// (trust, destination) → URL of the test token service.
    token_urls: BTreeMap<(String, String), String>,
    /// Added at the end of `doorstep.toml` (an `[audit]` table).
    extra: String,
    /// Added to `[store]` (`postgres = …`).
    store: String,
    /// Environment given to every run (the destinations' secrets).
    env: Vec<(String, String)>,
}

impl Deployment {
    fn empty(connectors: String, mappings: String) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("drop")).unwrap();
        Deployment {
            dir,
            connectors,
            mappings,
            max_wait_seconds: None,
            settle_seconds: 0.0,
            pause_others: true,
            urls: BTreeMap::new(),
            token_urls: BTreeMap::new(),
            extra: String::new(),
            store: String::new(),
            env: Vec::new(),
        }
    }

    /// With the repository's shipped `connectors/` and `mappings/` (both trusts' policies),
    /// where they are.
    pub fn new() -> Deployment {
        Self::with_mappings(root().join("mappings").to_str().unwrap())
    }

    /// With the repository's `connectors/` and `mappings` (relative to the deployment
    /// folder, or absolute).
    pub fn with_mappings(mappings: &str) -> Deployment {
        let d = Self::empty(
            root().join("connectors").to_str().unwrap().to_owned(),
            mappings.to_owned(),
        );
        d.write_config();
        d
    }

    /// With copies of the repository's `connectors/` and of `mappings` (a folder of trust
    /// folders, relative to the repository) in `connectors/` and `mappings/`; CSV logs go
    /// to `out/` and `sync` waits up to 3 s for retries.
    pub fn copy_of(mappings: &str) -> Deployment {
        let mut d = Self::empty("connectors".into(), "mappings".into());
        copy_dir(&root().join(mappings), &d.path("mappings"));
        copy_dir(&root().join("connectors"), &d.path("connectors"));
        d.max_wait_seconds = Some(3.0);
        d.write_config();
        d
    }

    /// No connector and one trust, `thrive`, with only the shipped `trust.toml`: the test
    /// writes the rest ([`Deployment::connector`], [`Deployment::routes`],
    /// [`Deployment::map`]). Nothing is paused; CSV logs go to `out/`.
    pub fn thrive_only() -> Deployment {
        let mut d = Self::empty("connectors".into(), "mappings".into());
        for folder in ["connectors", "mappings/thrive/maps"] {
            std::fs::create_dir_all(d.path(folder)).unwrap();
        }
        std::fs::copy(
            root().join("mappings/thrive/trust.toml"),
            d.path("mappings/thrive/trust.toml"),
        )
        .unwrap();
        d.pause_others = false;
        d.max_wait_seconds = Some(3.0);
        d.write_config();
        d
    }

    // ---- Settings (each rewrites `doorstep.toml`) -----------------------------------

    /// Environment given to every run (the destinations' secrets).
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends `trust`'s `destination` to `url` (a test server) instead of its own.
    pub fn destination(&mut self, trust: &str, destination: &str, url: &str) -> &mut Self {
        self.urls
            .insert((trust.to_owned(), destination.to_owned()), url.to_owned());
        self.write_config();
        self
    }

    /// Fetches `trust`'s `destination` tokens from `url` (a test server) instead.
    pub fn token_url(&mut self, trust: &str, destination: &str, url: &str) -> &mut Self {
        self.token_urls
            .insert((trust.to_owned(), destination.to_owned()), url.to_owned());
        self.write_config();
        self
    }

    /// How long a drop file must have been still before `sync` reads it.
    pub fn settle_seconds(&mut self, seconds: f64) -> &mut Self {
        self.settle_seconds = seconds;
        self.write_config();
        self
    }

    /// How long `sync` waits for retries falling due (`[delivery] max_wait_seconds`).
    pub fn max_wait(&mut self, seconds: f64) -> &mut Self {
        self.max_wait_seconds = Some(seconds);
        self.write_config();
        self
    }

    /// Lines added to `[store]`: `postgres = "…"` makes the deployment's store PostgreSQL.
    pub fn store(&mut self, toml: &str) -> &mut Self {
        self.store.push_str(toml);
        self.write_config();
        self
    }

    /// TOML added at the end of `doorstep.toml` (an `[audit]` table).
    pub fn add_config(&mut self, toml: &str) -> &mut Self {
        self.extra.push_str(toml);
        self.write_config();
        self
    }

    /// A signing key for the evidence trail: `[audit] signing_key` names `keys/log.key`,
    /// made by `audit keygen --name trail.example`; returns its verifier key.
    pub fn with_signing_key(&mut self) -> String {
        self.add_config("[audit]\nsigning_key = { file = \"keys/log.key\" }\n");
        let out = self
            .run(
                "audit keygen",
                &["--name", "trail.example", "--out", "keys/log.key"],
            )
            .code(0)
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    // ---- Files --------------------------------------------------------------------

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `doorstep.toml`.
    pub fn config(&self) -> PathBuf {
        self.path("doorstep.toml")
    }

    /// The SQLite store.
    pub fn db(&self) -> PathBuf {
        self.path("var/doorstep.db")
    }

    /// Writes a file of the deployment (a map, a connector), making its folder.
    pub fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `connectors/<name>.toml`.
    pub fn connector(&self, name: &str, text: &str) {
        self.write(&format!("connectors/{name}.toml"), text);
    }

    /// `mappings/thrive/routes.toml`.
    pub fn routes(&self, text: &str) {
        self.write("mappings/thrive/routes.toml", text);
    }

    /// `mappings/thrive/maps/<name>.toml`.
    pub fn map(&self, name: &str, text: &str) {
        self.write(&format!("mappings/thrive/maps/{name}.toml"), text);
    }

    /// One JSON file of records in the drop folder.
    pub fn drop_records(&self, file: &str, records: &[Value]) {
        self.write(
            &format!("drop/{file}"),
            &serde_json::to_string_pretty(&Value::Array(records.to_vec())).unwrap(),
        );
    }

    /// `doorstep.toml`: the store and drop folder, `[delivery]`, each test server's URL,
    /// every other HTTP destination of the mappings paused (unless `thrive_only`), then
    /// what was added.
    fn write_config(&self) {
        let mut text = format!(
            "connectors = {:?}\nmappings = {:?}\n\
             [store]\nsqlite = \"var/doorstep.db\"\n{}\
             [intake]\ndrop = \"drop\"\nsettle_seconds = {:?}\n",
            self.connectors, self.mappings, self.store, self.settle_seconds
        );
        if let Some(seconds) = self.max_wait_seconds {
            text.push_str(&format!(
                "[delivery]\nout = \"out\"\nmax_wait_seconds = {seconds:?}\n"
            ));
        }
        let mut overridden = self.urls.keys().collect::<Vec<_>>();
        overridden.extend(self.token_urls.keys());
        overridden.sort();
        overridden.dedup();
        for key @ (trust, name) in overridden {
            text.push_str(&format!("[destinations.{trust}.{name}]\n"));
            if let Some(url) = self.urls.get(key) {
                text.push_str(&format!("url = {url:?}\n"));
            }
            if let Some(t) = self.token_urls.get(key) {
                text.push_str(&format!("token_url = {t:?}\n"));
            }
        }
        if self.pause_others {
            for (trust, name, connector) in self.routed_destinations() {
                let key = (trust.clone(), name.clone());
                if !connector.starts_with("csv")
                    && !self.urls.contains_key(&key)
                    && !self.token_urls.contains_key(&key)
                {
                    text.push_str(&format!("[destinations.{trust}.{name}]\npaused = true\n"));
                }
            }
        }
        text.push_str(&self.extra);
        self.write("doorstep.toml", &text);
    }

    /// (trust, destination, connector) of every destination in the mappings' routes.
    fn routed_destinations(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let Ok(trusts) = std::fs::read_dir(self.dir.path().join(&self.mappings)) else {
            return out;
        };
        for entry in trusts {
            let folder = entry.unwrap().path();
            let Ok(text) = std::fs::read_to_string(folder.join("routes.toml")) else {
                continue;
            };
            let routes: toml::Table = toml::from_str(&text).unwrap();
            let trust = folder.file_name().unwrap().to_str().unwrap().to_owned();
            if let Some(toml::Value::Table(dests)) = routes.get("destinations") {
                for (name, d) in dests {
                    let connector = d
                        .get("connector")
                        .and_then(toml::Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    out.push((trust.clone(), name.clone(), connector));
                }
            }
        }
        out.sort();
        out
    }

    // ---- Runs ---------------------------------------------------------------------

    /// `doorstep VERB… --config <this> ARGS…` from the deployment folder, with the
    /// deployment's environment, not yet run. A verb may be two words (`audit export`).
    pub fn command(&self, verb: &str, args: &[&str]) -> Command {
        self.write_config();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("DOORSTEP_CONFIG")
            .env_remove("DOORSTEP_LOG")
            .args(verb.split_whitespace())
            .arg("--config")
            .arg(self.config())
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `doorstep VERB… --config <this> ARGS…` (blocking) for `assert_cmd`'s checks.
    pub fn run(&self, verb: &str, args: &[&str]) -> assert_cmd::assert::Assert {
        assert_cmd::Command::from_std(self.command(verb, args)).assert()
    }

    /// `doorstep VERB… --config <this> --format json ARGS…`, run off the async threads so
    /// the test servers keep serving; its output parsed.
    pub async fn run_json(&self, verb: &str, args: &[&str]) -> Run {
        let mut cmd = self.command(verb, &[]);
        cmd.args(["--format", "json"]).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        Run::parse(out)
    }

    /// `sync --format json`.
    pub async fn sync(&self) -> Run {
        self.run_json("sync", &[]).await
    }

    /// Delivery states by destination (`trust/destination` → state → count).
    pub async fn states(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let r = self.run_json("status", &[]).await;
        assert_eq!(r.code, 0, "status: {}", r.stderr);
        let mut by: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for l in r.lines.iter().filter(|l| l["kind"] == "deliveries") {
            by.entry(format!(
                "{}/{}",
                l["trust"].as_str().unwrap_or_default(),
                l["destination"].as_str().unwrap_or_default()
            ))
            .or_default()
            .insert(
                l["state"].as_str().unwrap().to_owned(),
                l["count"].as_u64().unwrap(),
            );
        }
        by
    }

    /// Delivery states by destination name alone (`destination` → state → count), for a
    /// deployment of one trust.
    pub async fn delivered(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let r = self.run_json("status", &[]).await;
        assert_eq!(r.code, 0, "status: {}", r.stderr);
        let mut by: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for l in r.lines.iter().filter(|l| l["kind"] == "deliveries") {
            by.entry(l["destination"].as_str().unwrap().to_owned())
                .or_default()
                .insert(
                    l["state"].as_str().unwrap().to_owned(),
                    l["count"].as_u64().unwrap(),
                );
        }
        by
    }

    /// The dead letters (`deadletter list`), one JSON line each.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let r = self.run_json("deadletter list", &[]).await;
        assert_eq!(r.code, 0, "deadletter list: {}", r.stderr);
        r.lines
    }

    /// Every delivery, shown as `deadletter show` shows one (ids are every delivery's, dead
    /// or not), in id order.
    pub async fn deliveries(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for id in 1.. {
            let r = self.run_json("deadletter show", &[&id.to_string()]).await;
            if r.code != 0 {
                break;
            }
            out.push(r.lines[0].clone());
        }
        out
    }

    /// The delivery of `record`, revision `revision`, to `destination`.
    pub async fn delivery(&self, destination: &str, record: &str, revision: u32) -> Value {
        self.deliveries()
            .await
            .into_iter()
            .find(|d| {
                d["destination"] == destination
                    && d["record_id"] == record
                    && d["revision"] == revision
            })
            .unwrap_or_else(|| panic!("no delivery of {record} r{revision} to {destination}"))
    }

    /// `deadletter show ID`: its one JSON line.
    pub async fn show(&self, id: i64) -> Value {
        let r = self.run_json("deadletter show", &[&id.to_string()]).await;
        assert_eq!(r.code, 0, "deadletter show {id}: {}", r.stderr);
        assert_eq!(r.lines.len(), 1, "{:?}", r.lines);
        r.lines[0].clone()
    }
}

/// What one `doorstep --format json` run printed and returned.
pub struct Run {
    pub code: i32,
    /// stdout's JSON lines.
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Run {
    pub fn parse(out: Output) -> Run {
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}\n{stderr}"))
            })
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            lines,
            stderr,
        }
    }

    /// The last line: the JSON summary.
    pub fn summary(&self) -> &Value {
        self.lines
            .last()
            .unwrap_or_else(|| panic!("no output; stderr: {}", self.stderr))
    }

    /// A count of the summary (`delivered`, `dead`, …).
    pub fn count(&self, key: &str) -> u64 {
        self.summary()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{key}` in {}", self.summary()))
    }
}

/// Parses `--format json` output into its lines.
pub fn json_lines(out: &[u8]) -> Vec<Value> {
    std::str::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

pub fn fixture(path: &str) -> PathBuf {
    root().join("fixtures").join(path)
}

pub fn read_fixture(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

/// A record from a mapping test case (`<mappings>/tests/<file>`, relative to the
/// repository), parsed.
pub fn case_record(trust_folder: &str, file: &str) -> Value {
    let text = std::fs::read_to_string(root().join(trust_folder).join("tests").join(file)).unwrap();
    let case: toml::Table = toml::from_str(&text).unwrap();
    serde_json::from_str(case["record"].as_str().unwrap()).unwrap()
}

/// Copies a folder and everything under it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
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
