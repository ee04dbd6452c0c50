//! Wake-ups across instances: a transaction that makes deliveries due (routing, a replay)
//! sends `NOTIFY doorstep_due` as it commits; each instance listens and wakes its own
//! destinations' drivers (the in-process `Notify`), at most once per [`DEBOUNCE`] however
//! many notifications arrive. Polling stays the fallback: a driver with nothing to do looks
//! again every few seconds anyway, so behind PgBouncer in transaction mode (where `LISTEN`
//! does not reach the session) or while the listener reconnects, work is still found — only
//! later.
//!
//! Owns: the channel's name and the listener task. May not touch: what a driver does.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::PgStore;

/// The channel every instance listens on.
pub const CHANNEL: &str = "doorstep_due";

/// Notifications closer together than this wake the drivers once.
pub const DEBOUNCE: Duration = Duration::from_millis(25);

/// Sends the wake-up when `conn`'s transaction commits (PostgreSQL also folds identical
/// notifications of one transaction into one).
pub(super) async fn announce(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// Wakes `wake`'s waiters whenever another instance (or this one) announces due work,
    /// until the store closes. A lost connection is retried every few seconds; meanwhile
    /// polling finds the work.
    pub fn listen_for_work(&self, wake: Arc<Notify>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                if pool.is_closed() {
                    return;
                }
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other instances' work; polling");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "cannot listen for other instances' work; polling");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => {
                            // Fold a burst into one wake-up.
                            tokio::time::sleep(DEBOUNCE).await;
                            while let Ok(Ok(Some(_))) =
                                tokio::time::timeout(Duration::ZERO, listener.try_recv()).await
                            {
                            }
                            wake.notify_waiters();
                        }
                        // The connection was lost (notifications meanwhile are lost too):
                        // wake once, in case one was missed, and listen again.
                        Ok(None) => wake.notify_waiters(),
                        Err(_) => break,
                    }
                }
            }
        });
    }
}
