//! The cron job as one library call: ingest the drop folder, file each file away (to the
//! archive, or to the rejected folder with its rejection report beside it), route every new
//! revision, deliver everything due (waiting for retries that fall due within
//! `[delivery] max_wait_seconds`), sign the trail's checkpoints, and count.
//!
//! Owns: the order of those steps and filing drop files away. May not touch: how any step
//! is done (intake, store, delivery, audit each own theirs) or how the result is printed
//! (the shells').

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::deployment::{Deployment, DeploymentError};
use crate::pipeline::{self, Reporter};
use crate::report::{Conflict, ExceptionReport, Rejection, ReportLine, Summary};
use crate::store::deliveries::{DeliveryCount, DeliveryStore};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Deliveries by where they stand at the end of a run, across destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryTotals {
    pub delivered: u64,
    /// Due, or waiting for a later revision's turn, at an unpaused destination.
    pub pending: u64,
    pub retrying: u64,
    pub dead: u64,
    /// Waiting at a paused destination (not delivered, not failed).
    pub paused: u64,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub intake: Summary,
    /// Deliveries planned by this run's routing.
    pub routed: u64,
    /// Every destination's deliveries by state, after the run.
    pub deliveries: Vec<DeliveryCount>,
    /// Paused destinations, as (trust, destination).
    pub paused: Vec<(String, String)>,
    pub totals: DeliveryTotals,
    /// Things that went wrong without failing the run (a drop file that could not be filed
    /// away, a checkpoint not signed), one line each, for standard error.
    pub warnings: Vec<String>,
}

impl SyncReport {
    pub fn is_paused(&self, trust: &str, destination: &str) -> bool {
        self.paused
            .iter()
            .any(|(t, d)| t == trust && d == destination)
    }

    /// Nothing rejected or kept out, nothing left undelivered or dead (deliveries held by
    /// paused destinations do not count against a run).
    pub fn is_clean(&self) -> bool {
        let t = &self.totals;
        self.intake.is_clean() && t.pending == 0 && t.retrying == 0 && t.dead == 0
    }
}

/// Passes every report on, remembering which files had rejections.
struct Sorting<'a> {
    inner: &'a mut dyn Reporter,
    rejected_files: BTreeMap<String, Vec<Rejection>>,
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

impl Deployment {
    /// One sync run against `store` (see the module's header). Intake reports go to
    /// `reporter` as they are found; the rest comes back in the [`SyncReport`].
    pub async fn sync<S: Store + DeliveryStore + 'static>(
        &self,
        store: Arc<S>,
        reporter: &mut dyn Reporter,
    ) -> Result<SyncReport, SyncError> {
        let config = self.config();
        let trusts = self.trusts()?.clone();
        let engine = self.engine()?.clone();
        let files = crate::intake::expand_paths(std::slice::from_ref(&config.drop_dir));
        let mut sorting = Sorting {
            inner: reporter,
            rejected_files: BTreeMap::new(),
        };
        let intake = if files.is_empty() {
            Summary::default()
        } else {
            pipeline::ingest(store.as_ref(), files.clone(), trusts, &mut sorting).await?
        };
        let mut warnings = Vec::new();
        // Only real files move (a missing drop folder is reported above, not moved).
        for f in files.iter().filter(|f| config.move_files && f.is_file()) {
            let moved = match sorting.rejected_files.get(&f.display().to_string()) {
                Some(rejections) => file_away(f, &config.rejected_dir, Some(rejections)),
                None => file_away(f, &config.archive_dir, None),
            };
            if let Err(e) = moved {
                warnings.push(e);
            }
        }
        let routed = engine.route(store.as_ref()).await?;
        let ran = engine
            .run(store.clone(), Instant::now() + config.max_wait)
            .await;
        warnings.extend(self.sign_checkpoints(store.as_ref()).await);
        ran?;
        let deliveries = store.delivery_counts().await?;
        let paused = engine.paused();
        let mut report = SyncReport {
            intake,
            routed: routed as u64,
            paused,
            warnings,
            ..SyncReport::default()
        };
        let mut totals = DeliveryTotals::default();
        for c in &deliveries {
            match c.state.as_str() {
                "delivered" => totals.delivered += c.count,
                "dead" => totals.dead += c.count,
                _ if report.is_paused(&c.trust, &c.destination) => totals.paused += c.count,
                "retrying" => totals.retrying += c.count,
                _ => totals.pending += c.count,
            }
        }
        report.totals = totals;
        report.deliveries = deliveries;
        Ok(report)
    }
}

/// Moves an ingested file out of the drop folder, named with the time it was taken so
/// nothing is overwritten; a file with rejections gets its report beside it.
pub fn file_away(
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
