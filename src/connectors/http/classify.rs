//! What an HTTP exchange comes to: a response (with the connector's `[response]` rules, an
//! exception in a 2xx, `Retry-After`) or a transport error turned into an [`Attempt`], and
//! what of the target's answer is kept for a dead letter or a log.
//! Owns: classifying. May not touch: sending, authentication, retrying (the engine's).

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{HttpTransport, Raw};
use crate::connectors::{Attempt, TargetId};

/// How much of a response is kept with a dead letter.
const KEEP_RESPONSE: usize = 64 * 1024;

impl HttpTransport {
    /// A 2xx whose body names an exception (`[response] exception_pointer`) stands for the
    /// status the connector gives that exception.
    pub(super) fn effective_status(&self, status: u16, body: &[u8]) -> (u16, Option<String>) {
        let rules = &self.connector.response;
        let Some(pointer) = rules.exception_pointer.as_deref() else {
            return (status, None);
        };
        if !(200..300).contains(&status) {
            return (status, None);
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return (status, None);
        };
        match json.pointer(pointer) {
            Some(v) if present(v) => {
                let name = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let stands_for = rules
                    .exception_status
                    .get(&name)
                    .copied()
                    .unwrap_or(rules.exception_default_status);
                (stands_for, Some(name))
            }
            _ => (status, None),
        }
    }

    pub(super) fn classify(&self, raw: Raw, target: Option<&TargetId>) -> Attempt {
        let rules = &self.connector.response;
        let Raw {
            status,
            effective,
            exception,
            retry_after,
            headers,
            body,
        } = raw;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let with_message = |mut reason: String| {
            if let Some(m) = rules.message_pointers.iter().find_map(|p| {
                json.as_ref()
                    .and_then(|j| j.pointer(p))
                    .filter(|v| present(v))
            }) {
                let m = match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                reason.push_str(TARGET_SAYS);
                reason.push_str(&m.chars().take(1000).collect::<String>());
            }
            reason
        };
        let what = match &exception {
            Some(name) => format!("{status} with exception {name} (stands for {effective})"),
            None => format!("{status} {}", reason_phrase(status)),
        };
        if (200..300).contains(&effective) {
            for p in &rules.error_pointers {
                if json
                    .as_ref()
                    .and_then(|j| j.pointer(p))
                    .is_some_and(present)
                {
                    return permanent(
                        format!("{status} whose body reports an error at {p}"),
                        Some(status),
                        kept(&body),
                    );
                }
            }
            let target_id = match target {
                Some(TargetId {
                    pointer: Some(p), ..
                }) => json
                    .as_ref()
                    .and_then(|j| j.pointer(p))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    }),
                Some(TargetId {
                    header: Some(h), ..
                }) => headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                _ => None,
            };
            return Attempt::Delivered {
                target_id,
                status: Some(status),
            };
        }
        if effective >= 500 || rules.retry_status.contains(&effective) {
            return Attempt::Retry {
                reason: with_message(what),
                status: Some(status),
                retry_after,
                response: kept(&body),
            };
        }
        permanent(with_message(what), Some(status), kept(&body))
    }
}

/// Separates our reason from the target's own message in a dead letter's reason. Logs
/// keep only what comes before it (the target's words may quote the record).
pub const TARGET_SAYS: &str = " — the target says: ";

/// A reason without the target's message, for logs.
pub fn loggable(reason: &str) -> &str {
    reason.split(TARGET_SAYS).next().unwrap_or(reason)
}

/// A value that says something: not null, false, "" or empty.
fn present(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) | Value::Bool(true) => true,
    }
}

/// What of a response is kept with a dead letter.
pub(super) fn kept(body: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(&body[..body.len().min(KEEP_RESPONSE)]).into_owned();
    (!s.is_empty()).then_some(s)
}

pub(super) fn permanent(reason: String, status: Option<u16>, response: Option<String>) -> Attempt {
    Attempt::Permanent {
        reason,
        status,
        response,
    }
}

pub(super) fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Timeouts and connection errors are retried; the message names the kind, never the URL's
/// query or a credential. A connection never made sent nothing; anything else may have
/// reached the target ([`Attempt::Unanswered`]).
pub(super) fn transport_error(e: &reqwest::Error) -> Attempt {
    if e.is_connect() {
        Attempt::Retry {
            reason: error_kind(e),
            status: None,
            retry_after: None,
            response: None,
        }
    } else {
        Attempt::Unanswered {
            reason: error_kind(e),
        }
    }
}

pub(super) fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "the response broke off".into()
    } else {
        "request failed".into()
    }
}

/// A response's `Retry-After`, if it gives one that reads.
pub(super) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// A token service that is down or busy, not one that refused: worth another try.
pub(super) fn token_service_busy(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v)
        .ok()
        .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;

    use super::*;
    use crate::connectors::Connector;
    use crate::connectors::http::Credentials;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn sink(connector: &str) -> HttpTransport {
        let c = Connector::parse(std::path::Path::new("t.toml"), "t", connector).unwrap();
        HttpTransport::new(std::sync::Arc::new(c), Credentials::default()).unwrap()
    }

    fn raw(status: u16, body: &str, s: &HttpTransport) -> Raw {
        let (effective, exception) = s.effective_status(status, body.as_bytes());
        Raw {
            status,
            effective,
            exception,
            retry_after: None,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn an_exception_in_a_200_is_classified_as_the_status_it_stands_for() {
        let s = sink(
            "transport = \"http_json\"\n[endpoints.default]\n[response]\n\
             exception_pointer = \"/ExceptionType\"\nmessage_pointers = [\"/ExceptionMessage\"]\n\
             exception_status = { ValidationException = 422, ThrottlingException = 429 }\n",
        );
        let ok = s.classify(raw(200, r#"{"ExceptionType": null, "Id": 1}"#, &s), None);
        assert!(matches!(ok, Attempt::Delivered { .. }), "{ok:?}");
        let invalid = s.classify(
            raw(200, r#"{"ExceptionType": "ValidationException", "ExceptionMessage": "Mark X is not valid"}"#, &s),
            None,
        );
        match invalid {
            Attempt::Permanent { reason, status, .. } => {
                assert_eq!(status, Some(200));
                assert!(
                    reason.contains("ValidationException (stands for 422)"),
                    "{reason}"
                );
                assert!(
                    reason.ends_with("the target says: Mark X is not valid"),
                    "{reason}"
                );
                assert_eq!(
                    loggable(&reason),
                    "200 with exception ValidationException (stands for 422)"
                );
            }
            other => panic!("{other:?}"),
        }
        let throttled = s.classify(
            raw(200, r#"{"ExceptionType": "ThrottlingException"}"#, &s),
            None,
        );
        assert!(matches!(throttled, Attempt::Retry { .. }), "{throttled:?}");
        // An exception type the connector does not list: a server error, retried.
        let unknown = s.classify(raw(200, r#"{"ExceptionType": "Whatever"}"#, &s), None);
        assert!(matches!(unknown, Attempt::Retry { .. }), "{unknown:?}");
    }
}
