//! `sync`, `deadletter list|show|replay`, `mapping test` and `config check --online`:
//! thin shells over `Deployment::sync`, the store and the mapping test runner.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use serde::Serialize;

use super::{
    Common, ConfigArg, Fatal, Format, Output, Writer, load_deployment, required_deployment, runtime,
};
use doorstep::audit::TrailedDeliveries;
use doorstep::connectors::Connectors;
use doorstep::deployment::Deployment;
use doorstep::report::Summary;
use doorstep::store::AnyStore;
use doorstep::store::deliveries::{DeliveryCount, DeliveryStore};
use doorstep::sync::{DeliveryTotals, SyncError};

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

/// `config check --online`: a line per destination (and school); exit 1 if any failed.
pub(crate) fn check_online(deployment: &Deployment) -> Result<ExitCode, Fatal> {
    use doorstep::delivery::online::Reach;
    let engine = deployment.engine()?;
    let reached = runtime()?.block_on(engine.check_online(&deployment.config().delivery.out_dir));
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

#[derive(Debug, Default, Serialize)]
struct SyncSummary {
    kind: &'static str,
    #[serde(flatten)]
    intake: Summary,
    routed: u64,
    #[serde(flatten)]
    totals: DeliveryTotals,
}

pub(crate) fn serve(
    listen: Option<std::net::SocketAddr>,
    migrate: bool,
    writer: Writer,
    common: Common,
) -> Result<ExitCode, Fatal> {
    let deployment = required_deployment(&common.config)?;
    deployment.engine()?;
    // `serve` does the cron job's writing: one writer per store.
    let _lock = writer.lock(&deployment)?;
    let addr = listen.unwrap_or(deployment.config().listen);
    runtime()?.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        if migrate {
            deployment.open_store_migrating().await?.close().await;
        }
        // Taken over before the first line says the server is up: a SIGTERM from then on
        // stops it cleanly, never by the default action.
        let no_signal = |e: std::io::Error| Fatal::Run(format!("cannot take signals: {e}"));
        let mut term = signal(SignalKind::terminate()).map_err(no_signal)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(no_signal)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fatal::Config(format!("cannot listen on {addr}: {}", e.kind())))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Fatal::Run(e.to_string()))?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            eprintln!("doorstep: stopping: finishing requests and deliveries in flight");
        };
        eprintln!("doorstep: listening on http://{bound}");
        let warnings = doorstep::server::serve(&deployment, listener, shutdown)
            .await
            .map_err(|doorstep::server::ServeError::Deployment(e)| Fatal::from(e))?;
        for w in warnings {
            eprintln!("doorstep: {w}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn sync(writer: Writer, common: Common) -> Result<ExitCode, Fatal> {
    let deployment = required_deployment(&common.config)?;
    // Fails before the store is touched when a part of the deployment is broken.
    deployment.engine()?;
    // One writer per store: held until this run ends.
    let _lock = writer.lock(&deployment)?;
    runtime()?.block_on(async {
        let store = Arc::new(deployment.open_store().await?);
        let mut out = Output::new(common.format);
        let ran = deployment.sync(store.clone(), &mut out).await;
        store.close().await;
        let report = ran.map_err(|e| match e {
            SyncError::Deployment(e) => Fatal::from(e),
            SyncError::Store(e) => Fatal::Run(e.to_string()),
        })?;
        for w in &report.warnings {
            eprintln!("doorstep: {w}");
        }
        print_counts(&mut out, &report.deliveries, &report.paused);
        let s = SyncSummary {
            kind: "summary",
            intake: report.intake,
            routed: report.routed,
            totals: report.totals(),
        };
        let t = &s.totals;
        let human = format!(
            "{}; {} deliveries planned, {} delivered in all, {} waiting, {} retrying, {} dead, {} held by paused destinations",
            s.intake, s.routed, t.delivered, t.pending, t.retrying, t.dead, t.paused
        );
        out.raw_line(&human, &s);
        out.flush();
        Ok(if report.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
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

pub(crate) fn deadletter(action: DeadletterAction) -> Result<ExitCode, Fatal> {
    let common = match &action {
        DeadletterAction::List { common }
        | DeadletterAction::Show { common, .. }
        | DeadletterAction::Replay { common, .. } => common,
    };
    let format = common.format;
    let deployment = required_deployment(&common.config)?;
    runtime()?.block_on(async {
        let store = match action {
            DeadletterAction::Replay { .. } => deployment.open_store().await?,
            _ => deployment.open_store_for_reading().await?,
        };
        let result = deadletter_in(&store, &action, format).await;
        store.close().await;
        result
    })
}

async fn deadletter_in(
    store: &AnyStore,
    action: &DeadletterAction,
    format: Format,
) -> Result<ExitCode, Fatal> {
    let run = |e: doorstep::store::StoreError| Fatal::Run(e.to_string());
    let mut out = Output::new(format);
    match action {
        DeadletterAction::List { .. } => {
            let rows = store
                .deliveries_in(doorstep::store::DeliveryState::Dead, 100_000)
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
                            doorstep::store::time::format(&a.at),
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
    let deployment = load_deployment(config, false)?;
    let (connectors, tz) = match &deployment {
        Some(d) => (d.connectors()?.clone(), d.config().time_zone),
        None => {
            let dir = folder
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join("connectors");
            let c = Connectors::load(&dir).map_err(|e| Fatal::Config(e.to_string()))?;
            (Arc::new(c), chrono_tz::Europe::London)
        }
    };
    let results = doorstep::mapping_test::run(folder, &connectors, tz)
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
