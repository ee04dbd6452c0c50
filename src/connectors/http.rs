//! The HTTP transports: `http_json` (a JSON API, with Basic, Bearer or OAuth2
//! client-credentials authentication) and `webhook` (JSON signed per Standard Webhooks).
//! One request per call, classified into [`Attempt`]; retrying and recording are the
//! delivery engine's. TLS is verified (rustls); redirects are not followed.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Attempt, AuthScheme, Connector, Transport};

/// How much of a response is kept with a dead letter.
const KEEP_RESPONSE: usize = 64 * 1024;
/// A cached OAuth2 token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// A token that states no lifetime is kept this long.
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(300);

/// Credentials resolved from the destination's secret references.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub token_url: Option<String>,
    pub scopes: Vec<String>,
    /// Webhook secrets, `whsec_<base64>` (or bare base64), decoded.
    pub webhook_keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

/// Decodes a Standard Webhooks secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(b64.trim())
        .map_err(|_| "a webhook secret is `whsec_` followed by base64".to_owned())
        .and_then(|k| {
            if k.len() >= 24 {
                Ok(k)
            } else {
                Err("a webhook secret holds at least 24 bytes".to_owned())
            }
        })
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
/// one per key, separated by spaces.
pub fn webhook_signature(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(k)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request to send.
pub struct Request<'a> {
    pub method: reqwest::Method,
    /// The full URL.
    pub url: String,
    pub body: &'a Value,
    pub idempotency_key: &'a str,
}

/// One destination's HTTP client, with its connector, credentials and token cache.
pub struct HttpSink {
    client: reqwest::Client,
    connector: std::sync::Arc<Connector>,
    credentials: Credentials,
    token: Mutex<Option<(String, Instant)>>,
}

impl HttpSink {
    pub fn new(
        connector: std::sync::Arc<Connector>,
        credentials: Credentials,
    ) -> Result<HttpSink, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(connector.limits.timeout())
            .connect_timeout(connector.limits.timeout().min(Duration::from_secs(10)))
            .user_agent(concat!("doorstep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            client,
            connector,
            credentials,
            token: Mutex::new(None),
        })
    }

    /// Sends one request; with OAuth2, a 401 fetches a new token and tries once more.
    pub async fn send(&self, req: &Request<'_>) -> Attempt {
        let body = match serde_json::to_vec(req.body) {
            Ok(b) => b,
            Err(e) => return permanent(format!("cannot serialise the body: {e}"), None, None),
        };
        let first = self.send_once(req, &body, None).await;
        match first {
            Ok(a) => a,
            Err(Unauthorized(refused)) => match self.send_once(req, &body, Some(&refused)).await {
                Ok(a) => a,
                Err(Unauthorized(_)) => permanent(
                    "401 Unauthorized again after a new token".into(),
                    Some(401),
                    None,
                ),
            },
        }
    }

    async fn send_once(
        &self,
        req: &Request<'_>,
        body: &[u8],
        refused_token: Option<&str>,
    ) -> Result<Attempt, Unauthorized> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.connector.request.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.insert(k, v);
            }
        }
        if let Some(h) = &self.connector.request.idempotency_header
            && let (Ok(k), Ok(v)) = (
                HeaderName::try_from(h.as_str()),
                HeaderValue::try_from(req.idempotency_key),
            )
        {
            headers.insert(k, v);
        }
        if self.connector.transport == Transport::Webhook {
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let sig = webhook_signature(
                &self.credentials.webhook_keys,
                req.idempotency_key,
                ts,
                body,
            );
            for (k, v) in [
                ("webhook-id", req.idempotency_key.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ] {
                if let Ok(v) = HeaderValue::try_from(v) {
                    headers.insert(k, v);
                }
            }
        }
        let mut builder = self
            .client
            .request(req.method.clone(), &req.url)
            .headers(headers)
            .body(body.to_vec());
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
            AuthScheme::Oauth2ClientCredentials => match self.oauth_token(refused_token).await {
                Ok(t) => {
                    builder = builder.bearer_auth(&t);
                    used_token = Some(t);
                }
                Err(a) => return Ok(a),
            },
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Ok(transport_error(&e)),
        };
        let status = response.status().as_u16();
        if status == 401
            && refused_token.is_none()
            && let Some(t) = used_token
        {
            return Err(Unauthorized(t));
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let target_header = self
            .connector
            .response
            .target_id
            .as_ref()
            .and_then(|t| t.header.as_ref())
            .and_then(|h| response.headers().get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(transport_error(&e)),
        };
        Ok(self.classify(status, &text, retry_after, target_header))
    }

    fn classify(
        &self,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
        target_header: Option<String>,
    ) -> Attempt {
        let rules = &self.connector.response;
        let kept = || {
            let s = String::from_utf8_lossy(&body[..body.len().min(KEEP_RESPONSE)]).into_owned();
            (!s.is_empty()).then_some(s)
        };
        if (200..300).contains(&status) {
            let json: Option<Value> = serde_json::from_slice(body).ok();
            for p in &rules.error_pointers {
                let reported = json
                    .as_ref()
                    .and_then(|j| j.pointer(p))
                    .is_some_and(|v| match v {
                        Value::Null | Value::Bool(false) => false,
                        Value::String(s) => !s.is_empty(),
                        Value::Array(a) => !a.is_empty(),
                        Value::Object(o) => !o.is_empty(),
                        Value::Number(_) | Value::Bool(true) => true,
                    });
                if reported {
                    return permanent(
                        format!("{status} whose body reports an error at {p}"),
                        Some(status),
                        kept(),
                    );
                }
            }
            let target_id = match rules.target_id.as_ref() {
                Some(t) if t.pointer.is_some() => json
                    .as_ref()
                    .and_then(|j| j.pointer(t.pointer.as_deref().unwrap_or_default()))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    }),
                Some(_) => target_header,
                None => None,
            };
            return Attempt::Delivered {
                target_id,
                status: Some(status),
            };
        }
        if status >= 500 || rules.retry_status.contains(&status) {
            return Attempt::Retry {
                reason: format!("{status} {}", reason_phrase(status)),
                status: Some(status),
                retry_after,
                response: kept(),
            };
        }
        permanent(
            format!("{status} {}", reason_phrase(status)),
            Some(status),
            kept(),
        )
    }

    /// A token from the cache, or a new one from the token endpoint. After a 401, the token
    /// refused is given: a new one is fetched unless another request already replaced it
    /// (so a burst of 401s costs one token request).
    async fn oauth_token(&self, refused: Option<&str>) -> Result<String, Attempt> {
        use oauth2::basic::BasicClient;
        use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() + TOKEN_MARGIN < *until
            && refused.is_none_or(|r| r != t)
        {
            return Ok(t.clone());
        }
        let c = &self.credentials;
        let url = TokenUrl::new(c.token_url.clone().unwrap_or_default()).map_err(|_| {
            permanent(
                "the destination's token_url is not a URL".into(),
                None,
                None,
            )
        })?;
        let mut client = BasicClient::new(ClientId::new(c.client_id.clone().unwrap_or_default()))
            .set_token_uri(url);
        if let Some(s) = &c.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.clone()));
        }
        let http = |request: oauth2::HttpRequest| {
            let client = self.client.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let mut out = http::Response::builder().status(response.status().as_u16());
                for (k, v) in response.headers() {
                    out = out.header(k.as_str(), v.as_bytes());
                }
                let bytes = response.bytes().await?;
                Ok::<_, reqwest::Error>(out.body(bytes.to_vec()).unwrap_or_default())
            }
        };
        let mut request = client.exchange_client_credentials();
        for s in &c.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        match request.request_async(&http).await {
            Ok(token) => {
                let life = token.expires_in().unwrap_or(TOKEN_DEFAULT_LIFE);
                let secret = token.access_token().secret().clone();
                *cached = Some((secret.clone(), Instant::now() + life));
                Ok(secret)
            }
            Err(oauth2::RequestTokenError::ServerResponse(e)) => Err(permanent(
                format!(
                    "the token endpoint refused the client credentials ({})",
                    e.error()
                ),
                None,
                None,
            )),
            Err(oauth2::RequestTokenError::Request(e)) => Err(Attempt::Retry {
                reason: format!("token endpoint: {}", error_kind(&e)),
                status: None,
                retry_after: None,
                response: None,
            }),
            Err(_) => Err(Attempt::Retry {
                reason: "token endpoint: unreadable answer".into(),
                status: None,
                retry_after: None,
                response: None,
            }),
        }
    }
}

/// A 401 with this OAuth2 token.
struct Unauthorized(String);

fn permanent(reason: String, status: Option<u16>, response: Option<String>) -> Attempt {
    Attempt::Permanent {
        reason,
        status,
        response,
    }
}

fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Timeouts and connection errors are retried; the message names the kind, never the URL's
/// query or a credential.
fn transport_error(e: &reqwest::Error) -> Attempt {
    Attempt::Retry {
        reason: error_kind(e),
        status: None,
        retry_after: None,
        response: None,
    }
}

fn error_kind(e: &reqwest::Error) -> String {
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
    use super::*;

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

    #[test]
    fn signature_matches_the_standard_webhooks_reference() {
        // The reference crate signs and verifies; ours must produce what it accepts.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = webhook_key(secret).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = webhook_signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        let expected = wh
            .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
            .unwrap();
        assert_eq!(sig, expected);
    }
}
