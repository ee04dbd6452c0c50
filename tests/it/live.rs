//! A deployment of the shipped connectors and a shipped mappings folder (copied, so a test
//! may change a map), with chosen destinations pointed at test servers and every other
//! HTTP destination paused: for the target-system tests (`tests/targets_*.rs`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_doorstep");

/// What one `doorstep` run printed and returned.
pub struct Run {
    pub code: i32,
    /// stdout's JSON lines (`--format json`).
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Run {
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

pub struct Live {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// (trust, destination) → URL of the test server.
    urls: BTreeMap<(String, String), String>,
    /// (trust, destination) → URL of the test token service.
    token_urls: BTreeMap<(String, String), String>,
    max_wait_seconds: f64,
}

impl Live {
    /// A deployment of `mappings` (a folder of trust folders, relative to the repository),
    /// with the repository's `connectors/`.
    pub fn new(mappings: &str) -> Live {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_dir(&root.join(mappings), &dir.path().join("mappings"));
        copy_dir(&root.join("connectors"), &dir.path().join("connectors"));
        std::fs::create_dir_all(dir.path().join("drop")).unwrap();
        Live {
            dir,
            env: Vec::new(),
            urls: BTreeMap::new(),
            token_urls: BTreeMap::new(),
            max_wait_seconds: 3.0,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes a file of the deployment (a map, a connector), making its folder.
    pub fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Environment given to every run (the destinations' secrets).
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends `trust`'s `destination` to `url` (a test server) instead of its own.
    pub fn destination(&mut self, trust: &str, destination: &str, url: &str) -> &mut Self {
        self.urls
            .insert((trust.to_owned(), destination.to_owned()), url.to_owned());
        self
    }

    /// Fetches `trust`'s `destination` tokens from `url` (a test server) instead.
    pub fn token_url(&mut self, trust: &str, destination: &str, url: &str) -> &mut Self {
        self.token_urls
            .insert((trust.to_owned(), destination.to_owned()), url.to_owned());
        self
    }

    /// How long `sync` waits for retries falling due (default 3 s).
    pub fn max_wait(&mut self, seconds: f64) -> &mut Self {
        self.max_wait_seconds = seconds;
        self
    }

    /// `doorstep.toml`: the store, drop and out folders, each test server's URL, and
    /// every other HTTP destination of the mappings paused. Written before each run.
    fn write_config(&self) {
        let mut text = format!(
            "connectors = \"connectors\"\nmappings = \"mappings\"\n\
             [store]\nsqlite = \"var/doorstep.db\"\n\
             [intake]\ndrop = \"drop\"\n\
             [delivery]\nout = \"out\"\nmax_wait_seconds = {:?}\n",
            self.max_wait_seconds
        );
        for (trust, name, connector) in self.shipped_destinations() {
            let csv = connector.starts_with("csv");
            let key = (trust.clone(), name.clone());
            match self.urls.get(&key) {
                Some(url) => {
                    text.push_str(&format!("[destinations.{trust}.{name}]\nurl = {url:?}\n"));
                    if let Some(t) = self.token_urls.get(&key) {
                        text.push_str(&format!("token_url = {t:?}\n"));
                    }
                }
                None if !csv => {
                    text.push_str(&format!("[destinations.{trust}.{name}]\npaused = true\n"))
                }
                None => {}
            }
        }
        self.write("doorstep.toml", &text);
    }

    /// (trust, destination, connector) of every destination in the mappings' routes.
    fn shipped_destinations(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.path("mappings")).unwrap() {
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
        out
    }

    /// One JSON file of records in the drop folder.
    pub fn drop_records(&self, file: &str, records: &[Value]) {
        self.write(
            &format!("drop/{file}"),
            &serde_json::to_string_pretty(&Value::Array(records.to_vec())).unwrap(),
        );
    }

    /// `doorstep VERB… --config <this> --format json ARGS…`, run off the async threads so
    /// the test servers keep serving.
    pub async fn run(&self, verb: &str, args: &[&str]) -> Run {
        self.write_config();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("DOORSTEP_CONFIG")
            .env_remove("DOORSTEP_LOG")
            .args(verb.split_whitespace())
            .arg("--config")
            .arg(self.path("doorstep.toml"))
            .args(["--format", "json"])
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
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

    pub async fn sync(&self) -> Run {
        self.run("sync", &[]).await
    }

    /// Delivery states by destination (`trust/destination` → state → count).
    pub async fn states(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let r = self.run("status", &[]).await;
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

    /// The dead letters (`deadletter list`), one JSON line each.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let r = self.run("deadletter list", &[]).await;
        assert_eq!(r.code, 0, "deadletter list: {}", r.stderr);
        r.lines
    }

    /// Every delivery, shown as `deadletter show` shows one (ids are every delivery's, dead
    /// or not), in id order.
    pub async fn deliveries(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for id in 1.. {
            let r = self.run("deadletter show", &[&id.to_string()]).await;
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

    /// `deadletter show ID`.
    pub async fn show(&self, id: i64) -> Value {
        let r = self.run("deadletter show", &[&id.to_string()]).await;
        assert_eq!(r.code, 0, "deadletter show {id}: {}", r.stderr);
        r.lines[0].clone()
    }
}

/// A record from a mapping test case (`mappings/<trust>/tests/<file>`), parsed.
pub fn case_record(trust_folder: &str, file: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(trust_folder).join("tests").join(file)).unwrap();
    let case: toml::Table = toml::from_str(&text).unwrap();
    serde_json::from_str(case["record"].as_str().unwrap()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
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
