//! The cron job as one library call: ingest the drop folder, file each file away (to the
//! archive, or to the rejected folder with its rejection report beside it), route every new
//! revision, deliver everything due (waiting for retries that fall due within
//! `[delivery] max_wait_seconds`), sign the trail's checkpoints, and count.
//!
//! Owns: the order of those steps and filing drop files away. May not touch: how any step
//! is done (intake, store, delivery, audit each own theirs) or how the result is printed
//! (the shells').

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod drop_folder;
pub use drop_folder::file_away;

use crate::deployment::{Deployment, DeploymentError};
use crate::pipeline::{self, Reporter};
use crate::report::{self, Conflict, ExceptionReport, Rejection, Summary};
use crate::store::deliveries::{DeliveryCount, DeliveryStore};
use crate::store::{DeliveryState, Store, StoreError};

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
    /// Drop files still being written (changed while watched or read), left for the next
    /// run.
    pub left: Vec<PathBuf>,
    /// Things that went wrong without failing the run (a drop file that could not be filed
    /// away or was left, a checkpoint not signed), one line each, for standard error.
    pub warnings: Vec<String>,
}

impl SyncReport {
    pub fn is_paused(&self, trust: &str, destination: &str) -> bool {
        self.paused
            .iter()
            .any(|(t, d)| t == trust && d == destination)
    }

    /// The deliveries across destinations, by where they stand.
    pub fn totals(&self) -> DeliveryTotals {
        let mut totals = DeliveryTotals::default();
        for c in &self.deliveries {
            match c.state {
                DeliveryState::Delivered => totals.delivered += c.count,
                DeliveryState::Dead => totals.dead += c.count,
                _ if self.is_paused(&c.trust, &c.destination) => totals.paused += c.count,
                DeliveryState::Retrying => totals.retrying += c.count,
                DeliveryState::Pending | DeliveryState::InFlight => totals.pending += c.count,
            }
        }
        totals
    }

    /// Nothing rejected or kept out, nothing left undelivered or dead (deliveries held by
    /// paused destinations do not count against a run).
    pub fn is_clean(&self) -> bool {
        let t = self.totals();
        self.intake.is_clean() && t.pending == 0 && t.retrying == 0 && t.dead == 0
    }
}

/// What taking the drop folder did.
#[derive(Debug, Default)]
pub struct DropFolderReport {
    pub intake: Summary,
    /// Files still being written, left for the next run.
    pub left: Vec<PathBuf>,
    /// Lines for standard error (a file not filed away, a file left).
    pub warnings: Vec<String>,
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
        let engine = self.engine()?.clone();
        let DropFolderReport {
            intake,
            left,
            mut warnings,
        } = self.take_drop_folder(store.as_ref(), reporter).await?;
        let routed = engine.route(store.as_ref()).await?;
        let ran = engine
            .run(store.clone(), Instant::now() + self.config().max_wait)
            .await;
        warnings.extend(self.sign_checkpoints(store.as_ref()).await);
        ran?;
        Ok(SyncReport {
            intake,
            routed: routed as u64,
            deliveries: store.delivery_counts().await?,
            paused: engine.paused(),
            left,
            warnings,
        })
    }

    /// The drop folder's part of a sync: files settled and read, each filed away (archive or
    /// rejected), those still being written left. `serve` sweeps with it too.
    pub async fn take_drop_folder<S: Store>(
        &self,
        store: &S,
        reporter: &mut dyn Reporter,
    ) -> Result<DropFolderReport, SyncError> {
        let config = self.config();
        let trusts = self.trusts()?.clone();
        let ready = drop_folder::list_settled(&config.drop_dir, config.settle).await;
        let mut left = ready.left;
        let mut sorting = Sorting {
            inner: reporter,
            rejected_files: BTreeMap::new(),
        };
        let files: Vec<PathBuf> = ready.files.iter().map(|f| f.path.clone()).collect();
        let intake = if files.is_empty() {
            Summary::default()
        } else {
            pipeline::ingest_files(store, files, trusts, &mut sorting).await?
        };
        let mut warnings = Vec::new();
        // Only regular files move (a missing drop folder is reported above, not moved); one
        // that changed while read is read again, whole, next run.
        for f in ready.files.iter().filter(|f| f.is_regular()) {
            if !f.unchanged() {
                left.push(f.path.clone());
                continue;
            }
            if !config.move_files {
                continue;
            }
            let moved = match sorting.rejected_files.get(&f.path.display().to_string()) {
                Some(rejections) => file_away(&f.path, &config.rejected_dir, Some(rejections)),
                None => file_away(&f.path, &config.archive_dir, None),
            };
            if let Err(e) = moved {
                warnings.push(e);
            }
        }
        for f in &left {
            tracing::warn!(file = %report::escaped(&f.display().to_string()), "drop file still being written: left for the next run");
            warnings.push(format!(
                "{}: still being written (changed within settle_seconds or while read): left in the drop folder for the next run",
                report::escaped(&f.display().to_string())
            ));
        }
        Ok(DropFolderReport {
            intake,
            left,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    //! `sync` as a library call, in process: the README's demo deployment (the shipped
    //! connectors and mappings, the example drop folder) in a temporary folder.
    use super::*;
    use crate::config::Config;
    use crate::store::SqliteStore;
    use std::path::Path;

    #[derive(Default)]
    struct Collect {
        rejections: usize,
        exceptions: usize,
        conflicts: usize,
    }

    impl Reporter for Collect {
        fn rejection(&mut self, _: &Rejection) {
            self.rejections += 1;
        }
        fn exception(&mut self, _: &ExceptionReport) {
            self.exceptions += 1;
        }
        fn conflict(&mut self, _: &Conflict) {
            self.conflicts += 1;
        }
    }

    fn demo(dir: &Path, move_files: bool) -> Deployment {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let drop = dir.join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        for f in std::fs::read_dir(repo.join("examples/drop")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, drop.join(f.file_name().unwrap())).unwrap();
        }
        // The example's own config, with its relative paths made to point into `dir`.
        let text = std::fs::read_to_string(repo.join("examples/doorstep.toml"))
            .unwrap()
            .replace(
                "\"../connectors\"",
                &format!("{:?}", repo.join("connectors")),
            )
            .replace("\"../mappings\"", &format!("{:?}", repo.join("mappings")))
            .replace("move_files = false", &format!("move_files = {move_files}"))
            .replace("max_wait_seconds = 30", "max_wait_seconds = 0")
            .replace("../", "");
        let path = dir.join("doorstep.toml");
        std::fs::write(&path, &text).unwrap();
        Deployment::from_config(Config::load(&path).unwrap())
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_deployment_syncs_from_a_library_call() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = demo(dir.path(), true);
        let store = Arc::new(
            SqliteStore::open(&deployment.config().sqlite_path)
                .await
                .unwrap(),
        );
        let mut seen = Collect::default();
        let report = deployment.sync(store.clone(), &mut seen).await.unwrap();

        assert!(report.intake.accepted > 0, "{report:?}");
        assert_eq!(report.intake.rejected, 0, "{report:?}");
        assert_eq!(seen.rejections, 0);
        assert_eq!(seen.exceptions as u64, report.intake.exceptions);
        assert!(report.routed > 0, "{report:?}");
        // The CSV logs are delivered; the paused webhooks and MIS write-backs hold theirs.
        let t = report.totals();
        assert!(t.delivered > 0 && t.paused > 0, "{report:?}");
        assert_eq!((t.pending, t.retrying, t.dead), (0, 0, 0), "{report:?}");
        assert_eq!(t.delivered + t.paused, report.routed, "{report:?}");
        assert!(report.is_paused("thrive", "cpoms") && !report.is_paused("thrive", "x"));
        assert!(report.is_clean(), "{report:?}");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let by_state: u64 = report.deliveries.iter().map(|c| c.count).sum();
        assert_eq!(by_state, report.routed);
        // Every drop file was filed away to the archive, none rejected; CSV rows written.
        assert!(files_in(&dir.path().join("drop")).is_empty());
        assert_eq!(files_in(&dir.path().join("var/archive")).len(), 2);
        assert!(files_in(&dir.path().join("var/rejected")).is_empty());
        let csv = files_in(&dir.path().join("out/thrive"));
        assert!(!csv.is_empty(), "no CSV logs written for thrive");

        // Nothing new: nothing ingested, routed or sent again.
        let again = deployment.sync(store.clone(), &mut seen).await.unwrap();
        assert_eq!(again.intake.accepted, 0, "{again:?}");
        assert_eq!(again.routed, 0, "{again:?}");
        assert_eq!(again.totals(), report.totals());
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_left_in_place_are_found_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = demo(dir.path(), false);
        let store = Arc::new(
            SqliteStore::open(&deployment.config().sqlite_path)
                .await
                .unwrap(),
        );
        let first = deployment
            .sync(store.clone(), &mut Collect::default())
            .await
            .unwrap();
        let second = deployment
            .sync(store.clone(), &mut Collect::default())
            .await
            .unwrap();
        assert_eq!(files_in(&dir.path().join("drop")).len(), 2);
        assert_eq!(second.intake.accepted, 0);
        assert_eq!(second.intake.unchanged, first.intake.accepted);
        assert_eq!(second.routed, 0);
        store.close().await;
    }
}
