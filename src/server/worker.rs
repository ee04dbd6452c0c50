//! `serve`'s background work: routing as records arrive (urgent first, a batch at a time),
//! the delivery run beside it, the drop-folder sweep and periodic checkpoints.
//!
//! Owns: when each of these runs and what wakes it. May not touch: how routing, delivery or
//! signing are done (the library's), HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::deployment::Deployment;
use crate::store::AnyStore;

/// Revisions `serve` routes a transaction.
const ROUTE_BATCH: usize = 200;
/// How long routing waits, once woken, for more records to route with the first.
const ROUTE_GATHER: Duration = Duration::from_millis(20);

/// Takes the drop folder, routes and delivers in process until `stop` is notified. Two
/// halves run side by side: routing — at once when a request stores new work, every second
/// regardless, the drop folder every `[intake] sweep_seconds`, checkpoints signed every
/// `[audit] checkpoint_seconds` — wakes the delivery run, which keeps every destination's
/// slots busy with its most urgent due deliveries (an `immediate` flag routed mid-run is
/// claimed next) and waits when there are none. On `stop` the run claims nothing more,
/// sends what it has claimed and ends; what is still pending waits for the next start.
/// Beside them, retention purges expired content at start and every `[retention]
/// purge_seconds` (a day); a stop drops a purge between pages (each page is its own
/// transaction: a page cut short is rolled back whole).
/// `running` is true while delivery runs.
pub async fn delivery_loop(
    deployment: &Deployment,
    store: Arc<AnyStore>,
    work: Arc<Notify>,
    stop: Arc<Notify>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), crate::deployment::DeploymentError> {
    struct Running(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let engine = deployment.engine()?.clone();
    let config = deployment.config();
    let (stopping, until) = tokio::sync::watch::channel(false);
    let routed = Arc::new(Notify::new());
    // Other instances' new work wakes this one's drivers too (PostgreSQL's NOTIFY).
    store.listen_for_work(routed.clone());
    let routing = async {
        let (mut next_sweep, mut next_checkpoint) =
            (Instant::now(), Instant::now() + config.checkpoint_every);
        loop {
            let woken = work.notified();
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + config.sweep;
                match deployment
                    .take_drop_folder(store.as_ref(), &mut Quiet)
                    .await
                {
                    Ok(r) => {
                        for w in r.warnings {
                            tracing::warn!(warning = %w, "drop folder");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "taking the drop folder failed"),
                }
            }
            // A batch at a time, the delivery run told after each: under a steady stream
            // of records an urgent one waits for one small batch, not for the stream to end.
            loop {
                match engine.route_some(store.as_ref(), ROUTE_BATCH).await {
                    Ok(None) => break,
                    Ok(Some(0)) => {}
                    Ok(Some(_)) => routed.notify_waiters(),
                    Err(e) => {
                        tracing::error!(error = %e, "routing failed");
                        break;
                    }
                }
            }
            if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + config.checkpoint_every;
                for w in deployment.sign_checkpoints(store.as_ref()).await {
                    tracing::warn!(warning = %w, "checkpoint");
                }
            }
            tokio::select! {
                () = woken => {
                    // Let the requests arriving meanwhile be routed with this one: one
                    // routing transaction per moment, not one per request.
                    tokio::time::sleep(ROUTE_GATHER).await;
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.notified() => {
                    let _ = stopping.send(true);
                    return;
                }
            }
        }
    };
    let delivering = async {
        running.store(true, std::sync::atomic::Ordering::SeqCst);
        let _running = Running(running.clone());
        // A run ends on the stop; on a store error it starts again after a pause; with no
        // destination to drive (all paused) it ends at once, and there is nothing to do
        // until the next start.
        loop {
            let run = engine.run_until(
                store.clone(),
                crate::delivery::Until::Stopped(until.clone()),
                routed.clone(),
            );
            match run.await {
                Ok(()) => {
                    let mut until = until.clone();
                    let _ = until.wait_for(|stop| *stop).await;
                    return;
                }
                Err(e) => tracing::error!(error = %e, "delivery failed; starting again"),
            }
            if *until.borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // Retention on its own turn, so a long first purge holds up neither routing nor delivery
    // (its transactions take their turns with theirs).
    let purging = async {
        let mut stopped = until.clone();
        loop {
            tokio::select! {
                () = purge(deployment, store.as_ref()) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(config.purge_every) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    };
    tokio::join!(routing, delivering, purging);
    Ok(())
}

/// Retention: each trust's expired content purged (`retention::purge`); a failure is
/// logged and tried again at the next turn.
async fn purge(deployment: &Deployment, store: &AnyStore) {
    let trusts = match deployment.trusts() {
        Ok(t) => t.clone(),
        Err(e) => {
            tracing::error!(error = %e, "retention: the trusts cannot be read");
            return;
        }
    };
    if let Err(e) = crate::retention::purge(store, &trusts, None, None, chrono::Utc::now()).await {
        tracing::error!(error = %e, "retention: the purge failed");
    }
}

/// Reports of a sweep go to the store (rejections are kept there) and the log's counts.
struct Quiet;

impl crate::pipeline::Reporter for Quiet {
    fn rejection(&mut self, _: &crate::report::Rejection) {}
    fn exception(&mut self, _: &crate::report::ExceptionReport) {}
    fn conflict(&mut self, _: &crate::report::Conflict) {}
}
