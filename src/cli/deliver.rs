//! `sync`, `deadletter list|show|replay` and `mapping test`: thin shells over the delivery
//! engine, the store and the mapping test runner.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Subcommand;
use serde::Serialize;

use super::{
    Common, ConfigArg, Fatal, Format, Output, load_config, load_trusts, open_store, runtime,
};
use crate::config::Config;
use crate::connectors::Connectors;
use crate::delivery::Engine;
use crate::mapping::Trusts;
use crate::pipeline::{self, Reporter};
use crate::report::{Conflict, ExceptionReport, Rejection, ReportLine, Summary};
use crate::store::SqliteStore;
use crate::store::deliveries::{DeliveryCount, DeliveryStore};

#[derive(Debug, Subcommand)]
pub(crate) enum DeadletterAction {
    /// Deliveries that gave up, oldest first: id, destination, record, attempts, last error.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One delivery: its state, every attempt, and the saved response.
    Show {
        id: i64,
        #[command(flatten)]
        common: Common,
    },
    /// Put dead deliveries back to be sent (after fixing the mapping, the record or the
    /// target); the next `sync` sends them with the same idempotency key.
    Replay {
        /// Delivery ids (from `deadletter list`).
        ids: Vec<i64>,
        /// Every dead delivery of one destination: TRUST/DESTINATION.
        #[arg(long, value_name = "TRUST/DESTINATION", conflicts_with = "ids")]
        destination: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

pub(crate) fn load_connectors(config: &Config) -> Result<Connectors, Fatal> {
    Connectors::load(&config.connectors_dir).map_err(|e| Fatal::Config(e.to_string()))
}

pub(crate) fn engine(config: &Config, trusts: Arc<Trusts>) -> Result<Engine, Fatal> {
    let connectors = Arc::new(load_connectors(config)?);
    Engine::new(trusts, connectors, &config.delivery)
        .map_err(|e| Fatal::Config(format!("{}: {e}", config.path.display())))
}

/// `config check --online`: a line per destination (and school); exit 1 if any failed.
pub(crate) fn check_online(config: &Config, engine: &Engine) -> Result<ExitCode, Fatal> {
    use crate::delivery::online::Reach;
    let reached = runtime()?.block_on(engine.check_online(&config.delivery.out_dir));
    let mut failed = 0;
    for r in &reached {
        let school = r
            .school
            .as_deref()
            .map(|s| format!(" school {s}"))
            .unwrap_or_default();
        let (word, text) = match &r.outcome {
            Reach::Ok(t) => ("ok", t),
            Reach::Skipped(t) => ("not reached", t),
            Reach::Failed(t) => {
                failed += 1;
                ("FAILED", t)
            }
        };
        say!(
            "  online {}/{}{school}: {word}: {text}",
            r.trust,
            r.destination
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        say!("  {failed} destination(s) could not be reached");
        ExitCode::from(1)
    })
}

/// Remembers which files had rejections while passing every report on.
struct Sorting<'a> {
    inner: &'a mut Output,
    rejected_files: std::collections::BTreeMap<String, Vec<Rejection>>,
}

impl Reporter for Sorting<'_> {
    fn rejection(&mut self, r: &Rejection) {
        self.rejected_files
            .entry(r.file.clone())
            .or_default()
            .push(r.clone());
        self.inner.rejection(r);
    }
    fn exception(&mut self, e: &ExceptionReport) {
        self.inner.exception(e);
    }
    fn conflict(&mut self, c: &Conflict) {
        self.inner.conflict(c);
    }
}

#[derive(Debug, Default, Serialize)]
struct SyncSummary {
    kind: &'static str,
    #[serde(flatten)]
    intake: Summary,
    routed: u64,
    delivered: u64,
    pending: u64,
    retrying: u64,
    dead: u64,
    paused: u64,
}

pub(crate) fn sync(common: Common) -> Result<ExitCode, Fatal> {
    let config =
        load_config(&common.config, true)?.ok_or_else(|| Fatal::Config("no config".into()))?;
    let trusts = Arc::new(load_trusts(&config)?);
    let engine = engine(&config, trusts.clone())?;
    let files = crate::intake::expand_paths(std::slice::from_ref(&config.drop_dir));
    runtime()?.block_on(async {
        let store = Arc::new(open_store(&config).await?);
        let mut out = Output::new(common.format);
        let mut sorting = Sorting {
            inner: &mut out,
            rejected_files: Default::default(),
        };
        let intake = if files.is_empty() {
            Summary::default()
        } else {
            pipeline::ingest(store.as_ref(), files.clone(), trusts.clone(), &mut sorting)
                .await
                .map_err(|e| Fatal::Run(e.to_string()))?
        };
        let rejected_files = std::mem::take(&mut sorting.rejected_files);
        // Only real files move (a missing drop folder is reported above, not moved).
        for f in files.iter().filter(|f| config.move_files && f.is_file()) {
            let key = f.display().to_string();
            let moved = match rejected_files.get(&key) {
                Some(rejections) => file_away(f, &config.rejected_dir, Some(rejections)),
                None => file_away(f, &config.archive_dir, None),
            };
            if let Err(e) = moved {
                eprintln!("doorstep: {e}");
            }
        }
        let routed = engine.route(store.as_ref()).await.map_err(|e| Fatal::Run(e.to_string()))?;
        let ran = engine.run(store.clone(), Instant::now() + config.max_wait).await;
        if config.signing_key.is_some() {
            super::audit::sign_checkpoints(&config, &store).await;
        }
        let counts = store.delivery_counts().await.map_err(|e| Fatal::Run(e.to_string()));
        store.close().await;
        ran.map_err(|e| Fatal::Run(e.to_string()))?;
        let counts = counts?;
        let paused = engine.paused();
        let mut s = SyncSummary {
            kind: "summary",
            intake,
            routed: routed as u64,
            ..Default::default()
        };
        for c in &counts {
            let is_paused = paused.iter().any(|(t, d)| *t == c.trust && *d == c.destination);
            match c.state.as_str() {
                "delivered" => s.delivered += c.count,
                "dead" => s.dead += c.count,
                _ if is_paused => s.paused += c.count,
                "retrying" => s.retrying += c.count,
                _ => s.pending += c.count,
            }
        }
        print_counts(&mut out, &counts, &paused);
        let clean = s.intake.is_clean() && s.pending == 0 && s.retrying == 0 && s.dead == 0;
        let human = format!(
            "{}; {} deliveries planned, {} delivered in all, {} waiting, {} retrying, {} dead, {} held by paused destinations",
            s.intake, s.routed, s.delivered, s.pending, s.retrying, s.dead, s.paused
        );
        out.raw_line(&human, &s);
        out.flush();
        Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

fn print_counts(out: &mut Output, counts: &[DeliveryCount], paused: &[(String, String)]) {
    for c in counts {
        let p = paused
            .iter()
            .any(|(t, d)| *t == c.trust && *d == c.destination);
        let human = format!(
            "  {:<10} {:<20} {:<10} {:>8}{}",
            c.trust,
            c.destination,
            c.state,
            c.count,
            if p { "  (paused)" } else { "" }
        );
        let mut v = serde_json::to_value(c).unwrap_or_default();
        v["kind"] = "deliveries".into();
        v["paused"] = p.into();
        out.raw_line(&human, &v);
    }
}

/// Moves an ingested file out of the drop folder, named with the time it was taken so
/// nothing is overwritten; a file with rejections gets its report beside it.
fn file_away(
    file: &Path,
    dir: &Path,
    rejections: Option<&Vec<Rejection>>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: cannot create: {}", dir.display(), e.kind()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = dir.join(format!("{stamp}-{name}"));
    if let Some(rejections) = rejections {
        let report = dir.join(format!("{stamp}-{name}.rejections.jsonl"));
        let mut text = String::new();
        for r in rejections {
            text.push_str(&serde_json::to_string(&ReportLine::Rejection(r)).unwrap_or_default());
            text.push('\n');
        }
        std::fs::write(&report, text)
            .map_err(|e| format!("{}: cannot write: {}", report.display(), e.kind()))?;
    }
    if std::fs::rename(file, &target).is_err() {
        std::fs::copy(file, &target)
            .and_then(|_| std::fs::remove_file(file))
            .map_err(|e| {
                format!(
                    "{}: cannot move to {}: {}",
                    file.display(),
                    dir.display(),
                    e.kind()
                )
            })?;
    }
    Ok(target)
}

pub(crate) fn deadletter(action: DeadletterAction) -> Result<ExitCode, Fatal> {
    let common = match &action {
        DeadletterAction::List { common }
        | DeadletterAction::Show { common, .. }
        | DeadletterAction::Replay { common, .. } => common,
    };
    let format = common.format;
    let config =
        load_config(&common.config, true)?.ok_or_else(|| Fatal::Config("no config".into()))?;
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        let result = deadletter_in(&store, &action, format).await;
        store.close().await;
        result
    })
}

async fn deadletter_in(
    store: &SqliteStore,
    action: &DeadletterAction,
    format: Format,
) -> Result<ExitCode, Fatal> {
    let run = |e: crate::store::StoreError| Fatal::Run(e.to_string());
    let mut out = Output::new(format);
    match action {
        DeadletterAction::List { .. } => {
            let rows = store
                .deliveries_in(crate::store::DeliveryState::Dead, 100_000)
                .await
                .map_err(run)?;
            for r in &rows {
                let human = format!(
                    "{:>6}  {}/{}  {} {} r{}  attempts {}  {}",
                    r.id,
                    r.trust,
                    r.destination,
                    r.record_kind,
                    r.record_id,
                    r.revision,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                );
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["kind"] = "dead_letter".into();
                out.raw_line(&human, &v);
            }
            if format == Format::Human && rows.is_empty() {
                out.raw_line(&"no dead letters", &serde_json::Value::Null);
            }
            out.flush();
            Ok(ExitCode::SUCCESS)
        }
        DeadletterAction::Show { id, .. } => {
            let Some((row, response, attempts)) = store.delivery(*id).await.map_err(run)? else {
                return Err(Fatal::Config(format!("no delivery {id}")));
            };
            match format {
                Format::Json => {
                    let mut v = serde_json::to_value(&row).unwrap_or_default();
                    v["kind"] = "delivery".into();
                    v["response"] = response.into();
                    v["attempt_log"] = serde_json::to_value(&attempts).unwrap_or_default();
                    out.raw_line(&"", &v);
                }
                Format::Human => {
                    let mut text = format!(
                        "delivery {}: {} {} revision {} to {}/{}\n  state {}, {} attempt(s), school {}\n  idempotency key {}\n",
                        row.id,
                        row.record_kind,
                        row.record_id,
                        row.revision,
                        row.trust,
                        row.destination,
                        row.state,
                        row.attempts,
                        row.school,
                        row.idempotency_key
                    );
                    if let Some(t) = &row.target_id {
                        text.push_str(&format!("  target id {t}\n"));
                    }
                    for a in &attempts {
                        text.push_str(&format!(
                            "  attempt {} at {}: {}{}{}\n",
                            a.attempt,
                            crate::store::time::format(&a.at),
                            a.outcome,
                            a.status.map(|s| format!(" ({s})")).unwrap_or_default(),
                            a.error
                                .as_deref()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        ));
                    }
                    if let Some(r) = &response {
                        text.push_str("  saved response:\n");
                        text.push_str(r);
                    }
                    out.raw_line(&text.trim_end(), &serde_json::Value::Null);
                }
            }
            out.flush();
            Ok(ExitCode::SUCCESS)
        }
        DeadletterAction::Replay {
            ids, destination, ..
        } => {
            let dest =
                match destination {
                    Some(d) => Some(d.split_once('/').ok_or_else(|| {
                        Fatal::Config("--destination is TRUST/DESTINATION".into())
                    })?),
                    None if ids.is_empty() => {
                        return Err(Fatal::Config(
                            "name delivery ids, or --destination TRUST/DESTINATION".into(),
                        ));
                    }
                    None => None,
                };
            let replayed = store.replay(ids, dest).await.map_err(run)?;
            let missing: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|i| !replayed.contains(i))
                .collect();
            let human = format!(
                "{} dead letter(s) put back to be sent: {:?}{}",
                replayed.len(),
                replayed,
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; not replayed (not dead, or a later revision of the record is \
                         already delivered there, which an older one must not overwrite): {missing:?}"
                    )
                }
            );
            out.raw_line(
                &human,
                &serde_json::json!({"kind": "replayed", "ids": replayed, "not_dead": missing}),
            );
            out.flush();
            Ok(if missing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `doorstep mapping test mappings/<trust>`.
pub(crate) fn mapping_test(folder: &Path, config: &ConfigArg) -> Result<ExitCode, Fatal> {
    // The connectors come from the config when there is one, else `connectors/` beside
    // the `mappings/` folder the trust sits in.
    let (connectors, tz) = match load_config(config, false)? {
        Some(c) => (load_connectors(&c)?, c.time_zone),
        None => {
            let dir = folder
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join("connectors");
            let c = Connectors::load(&dir).map_err(|e| Fatal::Config(e.to_string()))?;
            (c, chrono_tz::Europe::London)
        }
    };
    let results = crate::mapping::test::run(folder, &connectors, tz)
        .map_err(|e| Fatal::Config(e.to_string()))?;
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for r in &results {
        let name = r
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if r.failures.is_empty() {
            let _ = writeln!(out, "ok    {name}  {}", r.description);
        } else {
            failed += 1;
            let _ = writeln!(out, "FAIL  {name}  {}", r.description);
            for f in &r.failures {
                let _ = writeln!(out, "      {}", f.replace('\n', "\n      "));
            }
        }
    }
    let _ = writeln!(
        out,
        "{} case(s): {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if results.is_empty() {
        let _ = writeln!(out, "no test cases in {}", folder.join("tests").display());
        return Ok(ExitCode::from(1));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
