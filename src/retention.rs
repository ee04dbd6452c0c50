//! Retention (SPEC §6, `[retention] content_days` in a trust's `trust.toml`): the content of
//! a revision delivered to every destination longer ago than that leaves the store; what the
//! trail needs to prove it later stays (kind, id, revision, content hash, school, times), and
//! a `purged` event per revision goes into the trail in the purge's own transaction.
//!
//! Expired look-up answers (the cache of a target's id for a pupil's UPN or a code) are
//! deleted on the same turn, whatever the trust's setting: an expired answer is never used.
//!
//! Owns: when a trust's revisions expire ([`cutoff`]) and the purge's pages ([`purge`]).
//! May not touch: which revisions qualify beyond that — the store decides inside its write
//! transaction (nothing pending, in flight, retrying or dead), so a delivery cannot change
//! under a purge.

use chrono::{DateTime, Duration, Utc};

use crate::audit::events::TrailedStore;
use crate::mapping::Trusts;
use crate::store::{LookupStore, StoreError};

/// Revisions emptied per transaction: large enough to be quick, small enough that intake
/// and delivery never wait long behind a purge.
pub const PURGE_PAGE: usize = 2_000;

/// What one trust's purge did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustPurge {
    pub trust: String,
    pub content_days: u32,
    /// Revisions delivered everywhere before this instant were purged (RFC 3339, UTC).
    pub cutoff: String,
    pub purged: u64,
}

/// The instant before which a trust's delivered revisions expire, `now` less its days.
pub fn cutoff(now: DateTime<Utc>, content_days: u32) -> DateTime<Utc> {
    now - Duration::days(i64::from(content_days))
}

/// Purges every trust that sets `[retention]` (or only `only`), a page per transaction;
/// trusts without it are left alone and not listed. `days` (an operator's explicit
/// `purge --content-days N`) stands in for each chosen trust's own setting.
pub async fn purge<S: LookupStore>(
    store: &S,
    trusts: &Trusts,
    only: Option<&str>,
    days: Option<u32>,
    now: DateTime<Utc>,
) -> Result<Vec<TrustPurge>, StoreError> {
    let mut done = Vec::new();
    for trust in trusts.iter() {
        if only.is_some_and(|o| o != trust.id) {
            continue;
        }
        let Some(content_days) = days.or(trust.file.retention.map(|r| r.content_days)) else {
            continue;
        };
        let cutoff = crate::store::time::format(&cutoff(now, content_days));
        let mut purged = 0u64;
        let mut after = 0i64;
        loop {
            let page = store.purge(&trust.id, &cutoff, after, PURGE_PAGE).await?;
            purged += page.purged.len() as u64;
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        tracing::info!(trust = %trust.id, purged, cutoff = %cutoff, "retention purge");
        done.push(TrustPurge {
            trust: trust.id.clone(),
            content_days,
            cutoff,
            purged,
        });
    }
    // Look-up answers past their time (often a pupil's UPN and a target's id for it): never
    // used again, so not kept.
    let forgotten = store
        .lookup_forget_expired(&crate::store::time::format(&now))
        .await?;
    if forgotten > 0 {
        tracing::info!(forgotten, "retention: expired look-ups deleted");
    }
    Ok(done)
}
