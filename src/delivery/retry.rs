//! What an attempt's result comes to: delivered, retried after a backoff (or the
//! target's `Retry-After`), or dead once the connector's attempts run out.
//! Owns: the retry decision and the backoff. Pure: may not touch I/O, the store or
//! the clock (`conclude`, its thin wrapper, reads the time).

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::connectors::{Attempt, Limits};
use crate::store::deliveries::{AttemptOutcome, Claimed, Finished};

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// An attempt's result as the retry decision sees it: its kind, without its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Delivered,
    /// Worth trying again (5xx, 429, a timeout), with the target's `Retry-After` if any.
    Retryable {
        retry_after: Option<Duration>,
    },
    /// Will not succeed as it stands (a 4xx, a 401 after a new token, a map that fails).
    Permanent,
}

impl Class {
    pub(super) fn of(result: &Attempt) -> Class {
        match result {
            Attempt::Delivered { .. } => Class::Delivered,
            Attempt::Retry { retry_after, .. } => Class::Retryable {
                retry_after: *retry_after,
            },
            Attempt::Unanswered { .. } => Class::Retryable { retry_after: None },
            Attempt::Permanent { .. } => Class::Permanent,
        }
    }
}

/// What comes next for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    Delivered,
    /// Tried again after this delay.
    Retry(Duration),
    /// Dead-lettered: permanent, or retryable with the connector's attempts used up.
    Dead,
}

/// The retry decision: `attempts` made before this one, this one's class, the connector's
/// limits. A retryable failure on the last allowed attempt is dead; otherwise it waits for
/// the target's `Retry-After` (up to a day; a bigger one is not believed), else a backoff.
pub(super) fn decide(limits: &Limits, attempts: u32, class: Class) -> Next {
    match class {
        Class::Delivered => Next::Delivered,
        Class::Permanent => Next::Dead,
        Class::Retryable { .. } if attempts + 1 >= limits.max_attempts => Next::Dead,
        Class::Retryable { retry_after } => Next::Retry(
            retry_after
                .map(|d| d.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| backoff(limits, attempts)),
        ),
    }
}

/// When a retry falls due: `now` plus the delay (a day, if the delay does not fit).
pub(super) fn due_at(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::days(1))
}

/// What an attempt's result comes to: delivered, dead, or retried after a backoff (or the
/// target's `Retry-After`) until the connector's attempts run out. The decision is
/// `decide`'s; this puts the attempt's words and the time on it.
pub(super) fn conclude(limits: &Limits, c: Claimed, result: Attempt) -> Finished {
    let next = decide(limits, c.attempts, Class::of(&result));
    // The request may have taken effect: a create may exist at the target.
    let unsure = matches!(result, Attempt::Unanswered { .. });
    let outcome = match (result, next) {
        (Attempt::Unanswered { reason }, Next::Retry(delay)) => AttemptOutcome::Retry {
            next_at: due_at(Utc::now(), delay).to_rfc3339_opts(SecondsFormat::Micros, true),
            error: format!("{reason} (no answer: it may have taken effect)"),
            status: None,
        },
        (Attempt::Unanswered { reason }, _) => AttemptOutcome::Dead {
            error: format!(
                "gave up after {} attempts: {reason} (no answer: it may have taken effect)",
                c.attempts + 1
            ),
            status: None,
            response: None,
        },
        (Attempt::Delivered { target_id, status }, _) => {
            AttemptOutcome::Delivered { target_id, status }
        }
        (
            Attempt::Permanent {
                reason,
                status,
                response,
            },
            _,
        ) => AttemptOutcome::Dead {
            error: reason,
            status,
            response,
        },
        (Attempt::Retry { reason, status, .. }, Next::Retry(delay)) => AttemptOutcome::Retry {
            next_at: due_at(Utc::now(), delay).to_rfc3339_opts(SecondsFormat::Micros, true),
            error: reason,
            status,
        },
        (
            Attempt::Retry {
                reason,
                status,
                response,
                ..
            },
            Next::Dead | Next::Delivered,
        ) => AttemptOutcome::Dead {
            error: format!("gave up after {} attempts: {reason}", c.attempts + 1),
            status,
            response,
        },
    };
    Finished {
        claimed: c,
        at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        outcome,
        sent: None,
        without_request: None,
        unsure,
    }
}

/// The delay before retry number `attempts + 1`: exponential from the connector's minimum,
/// doubling to its maximum, with jitter (which adds up to as much again: the delay is in
/// `[d, 2d)` for the capped step `d`).
pub(super) fn backoff(limits: &Limits, attempts: u32) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a row expects.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        Delivered,
        Dead,
        /// Retried after a delay in `[lo, hi]` seconds.
        Retry(f64, f64),
    }

    fn limits(max_attempts: u32, min: f64, max: f64) -> Limits {
        Limits {
            max_attempts,
            backoff_min_seconds: min,
            backoff_max_seconds: max,
            ..Limits::default()
        }
    }

    fn delivered() -> Attempt {
        Attempt::Delivered {
            target_id: Some("t-1".into()),
            status: Some(201),
        }
    }

    fn retryable(status: u16, retry_after: Option<u64>) -> Attempt {
        Attempt::Retry {
            reason: format!("{status}"),
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            response: Some("busy".into()),
        }
    }

    fn timed_out() -> Attempt {
        Attempt::Retry {
            reason: "timed out".into(),
            status: None,
            retry_after: None,
            response: None,
        }
    }

    fn permanent(status: u16, reason: &str) -> Attempt {
        Attempt::Permanent {
            reason: reason.into(),
            status: Some(status),
            response: Some("no".into()),
        }
    }

    /// (case, attempt's result, attempts before it, limits, what comes next). The shipped
    /// defaults (no `[limits]`): 10 attempts, backoff from 1 s doubling to 600 s.
    fn table() -> Vec<(&'static str, Attempt, u32, Limits, Want)> {
        let absent = Limits::default();
        let day = 86_400.0;
        vec![
            (
                "delivered first time",
                delivered(),
                0,
                absent.clone(),
                Want::Delivered,
            ),
            (
                "delivered on the last attempt",
                delivered(),
                9,
                absent.clone(),
                Want::Delivered,
            ),
            (
                "delivered with no attempts allowed",
                delivered(),
                0,
                limits(0, 1.0, 600.0),
                Want::Delivered,
            ),
            (
                "permanent (422) is dead at once",
                permanent(422, "422"),
                0,
                absent.clone(),
                Want::Dead,
            ),
            (
                "unauthorized (401 again after a new token) is dead at once",
                permanent(401, "401 Unauthorized again after a new token"),
                0,
                absent.clone(),
                Want::Dead,
            ),
            (
                "permanent with attempts left is dead",
                permanent(400, "400"),
                3,
                absent.clone(),
                Want::Dead,
            ),
            // Exponential backoff: the step is min·2^n capped at max; jitter adds up to one step.
            (
                "503, first retry: the minimum",
                retryable(503, None),
                0,
                absent.clone(),
                Want::Retry(1.0, 2.0),
            ),
            (
                "timeout, first retry: the minimum",
                timed_out(),
                0,
                absent.clone(),
                Want::Retry(1.0, 2.0),
            ),
            (
                "503, second retry doubles",
                retryable(503, None),
                1,
                absent.clone(),
                Want::Retry(2.0, 4.0),
            ),
            (
                "503, fourth retry",
                retryable(503, None),
                3,
                absent.clone(),
                Want::Retry(8.0, 16.0),
            ),
            (
                "503, step reaches the cap",
                retryable(503, None),
                9,
                limits(100, 1.0, 600.0),
                Want::Retry(512.0, 1024.0),
            ),
            (
                "503, step capped",
                retryable(503, None),
                10,
                limits(100, 1.0, 600.0),
                Want::Retry(600.0, 1200.0),
            ),
            (
                "503, step capped long after",
                retryable(503, None),
                60,
                limits(100, 1.0, 600.0),
                Want::Retry(600.0, 1200.0),
            ),
            (
                "small limits capped",
                retryable(500, None),
                4,
                limits(10, 0.05, 0.2),
                Want::Retry(0.2, 0.4),
            ),
            (
                "min equal to max",
                retryable(500, None),
                3,
                limits(10, 5.0, 5.0),
                Want::Retry(5.0, 10.0),
            ),
            // The max-attempts boundary: attempts + 1 is this attempt's number.
            (
                "max 5: fourth attempt fails, one left",
                retryable(503, None),
                3,
                limits(5, 1.0, 600.0),
                Want::Retry(8.0, 16.0),
            ),
            (
                "max 5: fifth attempt fails, dead",
                retryable(503, None),
                4,
                limits(5, 1.0, 600.0),
                Want::Dead,
            ),
            (
                "max 5: past the last (attempts raised), dead",
                retryable(503, None),
                7,
                limits(5, 1.0, 600.0),
                Want::Dead,
            ),
            (
                "default max 10: ninth attempt fails, one left",
                retryable(503, None),
                8,
                absent.clone(),
                Want::Retry(256.0, 512.0),
            ),
            (
                "default max 10: tenth attempt fails, dead",
                timed_out(),
                9,
                absent.clone(),
                Want::Dead,
            ),
            (
                "max 1: no retries",
                retryable(503, None),
                0,
                limits(1, 1.0, 600.0),
                Want::Dead,
            ),
            // Retry-After.
            (
                "429 with Retry-After 30 s",
                retryable(429, Some(30)),
                0,
                absent.clone(),
                Want::Retry(30.0, 30.0),
            ),
            (
                "Retry-After shorter than the backoff",
                retryable(503, Some(1)),
                5,
                absent.clone(),
                Want::Retry(1.0, 1.0),
            ),
            (
                "Retry-After 0: at once",
                retryable(429, Some(0)),
                2,
                absent.clone(),
                Want::Retry(0.0, 0.0),
            ),
            (
                "Retry-After longer than the backoff cap",
                retryable(429, Some(3_600)),
                0,
                absent.clone(),
                Want::Retry(3_600.0, 3_600.0),
            ),
            (
                "Retry-After of exactly a day",
                retryable(429, Some(86_400)),
                0,
                absent.clone(),
                Want::Retry(day, day),
            ),
            (
                "Retry-After beyond a day: a day",
                retryable(429, Some(7 * 86_400)),
                0,
                absent.clone(),
                Want::Retry(day, day),
            ),
            (
                "Retry-After on the last attempt: dead",
                retryable(429, Some(30)),
                9,
                absent.clone(),
                Want::Dead,
            ),
            // Zero limits (refused when a connector is loaded; the decision still holds).
            (
                "max 0: a retryable failure is dead",
                retryable(503, None),
                0,
                limits(0, 1.0, 600.0),
                Want::Dead,
            ),
            (
                "max 0 with Retry-After: dead",
                retryable(429, Some(5)),
                0,
                limits(0, 1.0, 600.0),
                Want::Dead,
            ),
            (
                "zero backoff: at once",
                retryable(503, None),
                0,
                limits(10, 0.0, 0.0),
                Want::Retry(0.0, 0.0),
            ),
            (
                "zero backoff, later retry: at once",
                retryable(503, None),
                5,
                limits(10, 0.0, 0.0),
                Want::Retry(0.0, 0.0),
            ),
        ]
    }

    /// Within a millisecond of `[lo, hi]` (the backoff's factor is an f32).
    fn within(d: Duration, lo: f64, hi: f64) -> bool {
        let s = d.as_secs_f64();
        s >= lo - 1e-3 && s <= hi + 1e-3
    }

    #[test]
    fn decide_follows_the_table() {
        for (case, result, attempts, limits, want) in table() {
            // The jitter is random: each row a few times.
            for _ in 0..20 {
                let next = decide(&limits, attempts, Class::of(&result));
                let ok = match (want, next) {
                    (Want::Delivered, Next::Delivered) | (Want::Dead, Next::Dead) => true,
                    (Want::Retry(lo, hi), Next::Retry(d)) => within(d, lo, hi),
                    _ => false,
                };
                assert!(ok, "{case}: wanted {want:?}, got {next:?}");
            }
        }
    }

    fn claimed(attempts: u32) -> Claimed {
        Claimed {
            seq: 1,
            trust: "thrive".into(),
            destination: "api".into(),
            kind: crate::records::Kind::VisitReport,
            record_id: "V-1".into(),
            revision: 1,
            school: "117800".into(),
            map: "visit_json".into(),
            idempotency_key: "key-1".into(),
            attempts,
            canonical: "{}".into(),
            content_hash: "h".into(),
            exceptions: Vec::new(),
            prior_target: None,
            prior_sent: None,
            unsure: false,
            lease: 0,
        }
    }

    /// `conclude` gives every row the outcome `decide` does, with the attempt's words and
    /// a `next_at` the delay after now.
    #[test]
    fn conclude_wraps_the_decision() {
        for (case, result, attempts, limits, want) in table() {
            let before = Utc::now();
            let f = conclude(&limits, claimed(attempts), result.clone());
            let after = Utc::now();
            assert_eq!(f.claimed.attempts, attempts, "{case}");
            assert!(
                DateTime::parse_from_rfc3339(&f.at).is_ok(),
                "{case}: {}",
                f.at
            );
            match (want, &f.outcome, &result) {
                (
                    Want::Delivered,
                    AttemptOutcome::Delivered { target_id, status },
                    Attempt::Delivered {
                        target_id: t,
                        status: s,
                    },
                ) => assert_eq!((target_id, status), (t, s), "{case}"),
                (
                    Want::Dead,
                    AttemptOutcome::Dead {
                        error,
                        status,
                        response,
                    },
                    Attempt::Permanent {
                        reason,
                        status: s,
                        response: r,
                    },
                ) => assert_eq!((error, status, response), (reason, s, r), "{case}"),
                (
                    Want::Dead,
                    AttemptOutcome::Dead {
                        error,
                        status,
                        response,
                    },
                    Attempt::Retry {
                        reason,
                        status: s,
                        response: r,
                        ..
                    },
                ) => {
                    let gave_up = format!("gave up after {} attempts: {reason}", attempts + 1);
                    assert_eq!((error, status, response), (&gave_up, s, r), "{case}");
                }
                (
                    Want::Retry(lo, hi),
                    AttemptOutcome::Retry {
                        next_at,
                        error,
                        status,
                    },
                    Attempt::Retry {
                        reason, status: s, ..
                    },
                ) => {
                    assert_eq!((error, status), (reason, s), "{case}");
                    let at = DateTime::parse_from_rfc3339(next_at)
                        .unwrap()
                        .with_timezone(&Utc);
                    let lo = before
                        + chrono::Duration::from_std(Duration::from_secs_f64(lo)).unwrap()
                        - chrono::Duration::milliseconds(1);
                    let hi = after
                        + chrono::Duration::from_std(Duration::from_secs_f64(hi)).unwrap()
                        + chrono::Duration::milliseconds(1);
                    assert!(lo <= at && at <= hi, "{case}: {next_at} not in {lo}..{hi}");
                }
                (want, got, _) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn due_at_adds_the_delay_or_a_day() {
        let now = Utc::now();
        assert_eq!(
            due_at(now, Duration::from_secs(30)),
            now + chrono::Duration::seconds(30)
        );
        assert_eq!(due_at(now, Duration::ZERO), now);
        assert_eq!(due_at(now, Duration::MAX), now + chrono::Duration::days(1));
    }

    #[test]
    fn backoff_grows_to_its_cap_and_no_further() {
        let l = limits(100, 1.0, 600.0);
        for attempts in 0..40 {
            let step = (2f64.powi(attempts.min(30) as i32)).min(600.0);
            let d = backoff(&l, attempts);
            assert!(within(d, step, 2.0 * step), "attempt {attempts}: {d:?}");
        }
    }
}
