//! The HTTP transports `http_json` and `webhook`: [`HttpTransport`], [`Request`] and the send
//! path (headers, authentication applied, one exchange, once more after a 401 with a token).
//! TLS is verified (rustls); redirects are not followed. May not touch: retrying, recording
//! (the delivery engine's); tokens, signing, classifying (`auth`, `signing`, `classify`).

mod auth;
mod classify;
mod redact;
mod signing;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Attempt, AuthScheme, Connector, TargetId, TransportKind};
use auth::Unauthorized;
use classify::{kept, permanent, transport_error};

pub use auth::Credentials;
pub use classify::{TARGET_SAYS, loggable, parse_retry_after};
pub use redact::REDACTED;
pub use signing::{webhook_key, webhook_signature};

/// One request to send.
pub struct Request<'a> {
    pub method: reqwest::Method,
    /// The full URL.
    pub url: String,
    pub body: &'a Value,
    pub idempotency_key: &'a str,
    /// The destination's `vars` for the record's school (token bodies, header templates).
    pub vars: &'a BTreeMap<String, String>,
    /// Where the created id is, for this endpoint.
    pub target_id: Option<&'a TargetId>,
}

/// A response as it came, before it is classified.
struct Raw {
    status: u16,
    /// The status the body stands for: the response's own, or an exception's in a 2xx.
    effective: u16,
    exception: Option<String>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// One destination's HTTP client, with its connector, credentials and token cache.
pub struct HttpTransport {
    client: reqwest::Client,
    connector: std::sync::Arc<Connector>,
    credentials: Credentials,
    /// The credentials' echoed forms, taken out of every attempt (`redact`).
    secrets: redact::Secrets,
    /// Tokens by scope (OAuth2: one; a token exchange: one per distinct body), with when
    /// they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl HttpTransport {
    pub fn new(
        connector: std::sync::Arc<Connector>,
        credentials: Credentials,
    ) -> Result<HttpTransport, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(connector.limits.timeout())
            .connect_timeout(connector.limits.timeout().min(Duration::from_secs(10)))
            .user_agent(concat!("doorstep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpTransport {
            client,
            connector,
            secrets: redact::Secrets::of(&credentials),
            credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Sends one record (or batch); with a token, a 401 fetches a new token and tries once
    /// more. What comes back holds no secret (`redact`).
    pub async fn send(&self, req: &Request<'_>) -> Attempt {
        let attempt = self.send_unredacted(req).await;
        self.redacted(attempt).await
    }

    async fn send_unredacted(&self, req: &Request<'_>) -> Attempt {
        let body = match serde_json::to_vec(req.body) {
            Ok(b) => b,
            Err(e) => return permanent(format!("cannot serialise the body: {e}"), None, None),
        };
        match self
            .exchange(
                req.method.clone(),
                &req.url,
                Some(&body),
                Some(req.idempotency_key),
                req.vars,
            )
            .await
        {
            Ok(raw) => self.classify(raw, req.target_id),
            Err(a) => a,
        }
    }

    /// Reads one JSON document (a look-up's page, `config check --online`): the body of a
    /// 2xx, or what the failure comes to (holding no secret, `redact`).
    pub async fn get(&self, url: &str, vars: &BTreeMap<String, String>) -> Result<Value, Attempt> {
        match self.get_unredacted(url, vars).await {
            Ok(v) => Ok(v),
            // A read changes nothing: a lost answer is only worth another try.
            Err(Attempt::Unanswered { reason }) => Err(self
                .redacted(Attempt::Retry {
                    reason,
                    status: None,
                    retry_after: None,
                    response: None,
                })
                .await),
            Err(a) => Err(self.redacted(a).await),
        }
    }

    async fn get_unredacted(
        &self,
        url: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<Value, Attempt> {
        let raw = self
            .exchange(reqwest::Method::GET, url, None, None, vars)
            .await?;
        if (200..300).contains(&raw.effective) {
            return serde_json::from_slice(&raw.body).map_err(|_| {
                permanent(
                    format!("{} whose body is not JSON", raw.status),
                    Some(raw.status),
                    kept(&raw.body),
                )
            });
        }
        Err(self.classify(raw, None))
    }

    /// One request with the connector's headers and authentication; a 401 (or an exception
    /// standing for one) with a token fetches a new token and tries once more.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<Raw, Attempt> {
        let first = self
            .exchange_once(method.clone(), url, body, idempotency_key, vars, None)
            .await?;
        match first {
            Ok(raw) => Ok(raw),
            Err(Unauthorized(refused)) => match self
                .exchange_once(method, url, body, idempotency_key, vars, Some(&refused))
                .await?
            {
                Ok(raw) => Ok(raw),
                Err(Unauthorized(_)) => Err(permanent(
                    "401 Unauthorized again after a new token".into(),
                    Some(401),
                    None,
                )),
            },
        }
    }

    async fn exchange_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
        vars: &BTreeMap<String, String>,
        refused_token: Option<&str>,
    ) -> Result<Result<Raw, Unauthorized>, Attempt> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.connector.request.headers {
            let v = fill_header(v, vars);
            if v.is_empty() {
                continue;
            }
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
                headers.insert(k, v);
            }
        }
        if let (Some(h), Some(key)) = (&self.connector.request.idempotency_header, idempotency_key)
            && let (Ok(k), Ok(v)) = (HeaderName::try_from(h.as_str()), HeaderValue::try_from(key))
        {
            headers.insert(k, v);
        }
        if let (TransportKind::Webhook, Some(key), Some(body)) =
            (self.connector.transport, idempotency_key, body)
        {
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let sig = webhook_signature(&self.credentials.webhook_keys, key, ts, body);
            for (k, v) in [
                ("webhook-id", key.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ] {
                if let Ok(v) = HeaderValue::try_from(v) {
                    headers.insert(k, v);
                }
            }
        }
        let mut builder = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            builder = builder.body(body.to_vec());
        }
        let c = &self.credentials;
        let mut used_token = None;
        match self.connector.auth {
            AuthScheme::None => {}
            AuthScheme::Basic => {
                builder =
                    builder.basic_auth(c.username.clone().unwrap_or_default(), c.password.clone());
            }
            AuthScheme::Bearer => {
                builder = builder.bearer_auth(c.token.clone().unwrap_or_default())
            }
            AuthScheme::Oauth2ClientCredentials => {
                let t = self.oauth_token(refused_token).await?;
                builder = builder.bearer_auth(&t);
                used_token = Some(t);
            }
            AuthScheme::TokenExchange => {
                let t = self.exchanged_token(vars, refused_token).await?;
                let scheme = self
                    .connector
                    .token
                    .as_ref()
                    .map(|t| t.scheme.as_str())
                    .unwrap_or("Bearer");
                builder = builder.header(reqwest::header::AUTHORIZATION, format!("{scheme} {t}"));
                used_token = Some(t);
            }
        }
        let response = builder.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = classify::retry_after_of(&response);
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        let (effective, exception) = self.effective_status(status, &body);
        if effective == 401
            && refused_token.is_none()
            && let Some(t) = used_token
        {
            return Ok(Err(Unauthorized(t)));
        }
        Ok(Ok(Raw {
            status,
            effective,
            exception,
            retry_after,
            headers,
            body,
        }))
    }
}

/// A header value with `{{ vars.X }}` filled in; empty when a var is not given (the
/// header is then left out).
fn fill_header(template: &str, vars: &BTreeMap<String, String>) -> String {
    super::template::fill_or_empty(
        template,
        minijinja::context! { vars => super::template::vars(vars) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_templates_take_vars_and_drop_when_missing() {
        let mut vars = BTreeMap::new();
        assert_eq!(fill_header("{{ vars.app }}", &vars), "");
        vars.insert("app".to_owned(), "doorstep".to_owned());
        assert_eq!(fill_header("{{ vars.app }}", &vars), "doorstep");
        assert_eq!(fill_header("fixed", &vars), "fixed");
    }
}
