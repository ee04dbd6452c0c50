//! What an attempt's result comes to: delivered, retried after a backoff (or the
//! target's `Retry-After`), or dead once the connector's attempts run out.
//!
//! Owns: the retry decision and the backoff. Pure: no I/O, no store, no sending.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{SecondsFormat, Utc};

use crate::connectors::Attempt;
use crate::store::deliveries::{Claimed, Finished, Outcome};

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// What an attempt's result comes to: delivered, dead, or retried after a backoff (or the
/// target's `Retry-After`) until the connector's attempts run out.
pub(super) fn conclude(
    limits: &crate::connectors::Limits,
    c: Claimed,
    result: Attempt,
) -> Finished {
    let outcome = match result {
        Attempt::Delivered { target_id, status } => Outcome::Delivered { target_id, status },
        Attempt::Permanent {
            reason,
            status,
            response,
        } => Outcome::Dead {
            error: reason,
            status,
            response,
        },
        Attempt::Retry {
            reason,
            status,
            response,
            ..
        } if c.attempts + 1 >= limits.max_attempts => Outcome::Dead {
            error: format!("gave up after {} attempts: {reason}", c.attempts + 1),
            status,
            response,
        },
        Attempt::Retry {
            reason,
            status,
            retry_after,
            ..
        } => {
            // A target's Retry-After is honoured up to a day (a bigger one is not believed).
            let delay = retry_after
                .map(|d| d.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| backoff(limits, c.attempts));
            let next =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::days(1));
            Outcome::Retry {
                next_at: next.to_rfc3339_opts(SecondsFormat::Micros, true),
                error: reason,
                status,
            }
        }
    };
    Finished {
        claimed: c,
        at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        outcome,
    }
}

/// The delay before retry number `attempts + 1`: exponential from the connector's minimum,
/// doubling to its maximum, with jitter.
fn backoff(limits: &crate::connectors::Limits, attempts: u32) -> Duration {
    let min = Duration::from_secs_f64(limits.backoff_min_seconds);
    let max = Duration::from_secs_f64(limits.backoff_max_seconds);
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts as usize)
        .unwrap_or(max)
}
