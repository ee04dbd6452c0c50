//! The one redaction point. Every [`Attempt`] that leaves an [`HttpTransport`] — for the
//! store's attempt rows, a dead letter, a log line, an audit bundle, `config check --online`
//! — passes through [`HttpTransport::redacted`], which replaces every secret the destination
//! holds with `[redacted]`, in each form a target or token service may echo it: as is,
//! percent- or form-encoded, JSON-escaped, inside HTTP Basic's base64, and every token it has
//! been given. An id the target returns that quotes a secret is refused, never stored.
//!
//! Owns: what counts as a secret's echo. May not touch: classifying (what an answer means).

use base64::Engine as _;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Credentials, HttpTransport};
use crate::connectors::Attempt;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not searched for (they would match ordinary words); no real secret
/// is this short.
const SHORTEST: usize = 6;

/// Every form of a destination's secrets that could come back in an answer.
#[derive(Default)]
pub(super) struct Secrets {
    forms: Vec<String>,
}

impl Secrets {
    pub(super) fn of(c: &Credentials) -> Self {
        let mut s = Secrets::default();
        for secret in [&c.password, &c.token, &c.client_secret]
            .into_iter()
            .flatten()
        {
            s.add(secret);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        for key in &c.webhook_keys {
            s.add(&b64.encode(key));
        }
        // HTTP Basic: the destination's own, and OAuth2's client authentication (RFC 6749
        // §2.3.1: both halves form-encoded first).
        if let Some(password) = &c.password {
            let user = c.username.as_deref().unwrap_or_default();
            s.add(&b64.encode(format!("{user}:{password}")));
        }
        if let Some(secret) = &c.client_secret {
            let id = c.client_id.as_deref().unwrap_or_default();
            s.add(&b64.encode(format!("{}:{}", form_encoded(id), form_encoded(secret))));
            s.add(&b64.encode(format!("{id}:{secret}")));
        }
        s
    }

    /// Adds a secret in each of its echoed forms.
    fn add(&mut self, secret: &str) {
        if secret.len() < SHORTEST {
            return;
        }
        let json = serde_json::to_string(secret).unwrap_or_default();
        for form in [
            secret.to_owned(),
            utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
            form_encoded(secret),
            json.trim_matches('"').to_owned(),
        ] {
            if !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        // Longest first, so a form containing another is replaced whole.
        self.forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }

    /// `text` with every form replaced; `None` when it holds none.
    fn scrub(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for form in &self.forms {
            let current = out.as_deref().unwrap_or(text);
            if current.contains(form.as_str()) {
                out = Some(current.replace(form.as_str(), REDACTED));
            }
        }
        out
    }

    fn scrub_in_place(&self, text: &mut String) {
        if let Some(clean) = self.scrub(text) {
            *text = clean;
        }
    }

    fn scrub_all(&self, attempt: &mut Attempt) {
        match attempt {
            Attempt::Delivered { .. } => {}
            Attempt::Unanswered { reason } => self.scrub_in_place(reason),
            Attempt::Retry {
                reason, response, ..
            }
            | Attempt::Permanent {
                reason, response, ..
            } => {
                self.scrub_in_place(reason);
                if let Some(r) = response {
                    self.scrub_in_place(r);
                }
            }
        }
    }
}

/// `application/x-www-form-urlencoded`, as a token request's body and client
/// authentication carry a secret.
fn form_encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl HttpTransport {
    /// `attempt` with no secret of this destination's in it (see the module's header).
    pub(super) async fn redacted(&self, attempt: Attempt) -> Attempt {
        let tokens: Vec<String> = self
            .tokens
            .lock()
            .await
            .values()
            .map(|(t, _)| t.clone())
            .collect();
        redact(&self.secrets, &tokens, attempt)
    }
}

fn redact(secrets: &Secrets, tokens: &[String], mut attempt: Attempt) -> Attempt {
    let mut given = Secrets::default();
    for t in tokens {
        given.add(t);
    }
    for s in [secrets, &given] {
        if let Attempt::Delivered {
            target_id: Some(id),
            status,
        } = &attempt
            && s.scrub(id).is_some()
        {
            attempt = Attempt::Permanent {
                reason: "the target answered with an id that quotes a credential; not kept".into(),
                status: *status,
                response: None,
            };
        }
        s.scrub_all(&mut attempt);
    }
    attempt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            username: Some("user".into()),
            password: Some("pa ss/wörd\"+".into()),
            client_id: Some("client id".into()),
            client_secret: Some("cl&ient=secret".into()),
            token: Some("tok-123456".into()),
            webhook_keys: vec![vec![7u8; 24]],
            ..Credentials::default()
        }
    }

    #[test]
    fn every_echoed_form_is_replaced() {
        let s = Secrets::of(&credentials());
        let b64 = base64::engine::general_purpose::STANDARD;
        for echo in [
            "pa ss/wörd\"+".to_owned(),
            "pa%20ss%2Fw%C3%B6rd%22%2B".to_owned(),
            "pa+ss%2Fw%C3%B6rd%22%2B".to_owned(),
            "pa ss/wörd\\\"+".to_owned(),
            "cl%26ient%3Dsecret".to_owned(),
            b64.encode("user:pa ss/wörd\"+"),
            b64.encode("client+id:cl%26ient%3Dsecret"),
            b64.encode([7u8; 24]),
            "tok-123456".to_owned(),
        ] {
            let text = format!("the request was: {echo}!");
            let clean = s.scrub(&text).unwrap_or_else(|| panic!("{echo} not found"));
            assert_eq!(clean, format!("the request was: {REDACTED}!"), "{echo}");
        }
        assert_eq!(s.scrub("nothing secret here"), None);
    }

    #[test]
    fn short_values_are_not_searched_for() {
        let s = Secrets::of(&Credentials {
            password: Some("a".into()),
            ..Credentials::default()
        });
        assert_eq!(s.scrub("a sentence with a in it"), None);
    }

    #[test]
    fn attempts_lose_their_secrets() {
        let s = Secrets::of(&credentials());
        let mut a = Attempt::Retry {
            reason: "503 — the target says: bad token tok-123456".into(),
            status: Some(503),
            retry_after: None,
            response: Some("{\"echo\": \"Bearer tok-123456\"}".into()),
        };
        s.scrub_all(&mut a);
        match a {
            Attempt::Retry {
                reason, response, ..
            } => {
                assert!(!reason.contains("tok-123456"), "{reason}");
                assert_eq!(response.unwrap(), "{\"echo\": \"Bearer [redacted]\"}");
            }
            other => panic!("{other:?}"),
        }
    }
}
