//! A fault-injecting webhook receiver over loopback, for the crash rounds (`crash_rounds`):
//! a real HTTP/1.1 server (keep-alive, `Content-Length` bodies) on its own small tokio
//! runtime, so a test driving processes may block its own thread freely.
//!
//! It takes the `webhook` connector's POSTs and, per request, with a seeded xorshift and a
//! fault rate, either answers like a healthy Standard Webhooks receiver or fails in one of
//! the ways a real one does: 500, 503, 429 with `Retry-After: 0` or `1`, the connection
//! dropped without an answer BEFORE the request takes effect, or the request taking effect
//! and THEN the connection dropped (the answer lost after the create happened).
//!
//! Like a real receiver it dedupes by idempotency key: a key seen again with the same body
//! answers the first answer and creates nothing; a key seen again with a DIFFERENT body is
//! a second, different create for one revision — counted (it is what the tests look for)
//! and answered 422. Per key it keeps how many times a create took effect, how many
//! distinct bodies it was sent with, and the path it came to. It also checks every request
//! (the `webhook-id` and `Idempotency-Key` headers agree; the Standard Webhooks signature
//! verifies, with the reference crate, when given the secret; a 429's `Retry-After: 1` is
//! waited out by the same run of the sender) and lists what broke as `problems`.
//!
//! Nothing here keeps or prints a body: only its SHA-256.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The share of requests that fail when a test does not choose.
pub const DEFAULT_FAULT_RATE: f64 = 0.3;

/// What the receiver is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Share of requests (0.0 to 1.0) answered with a fault.
    pub fault_rate: f64,
    pub seed: u64,
    /// Each request waits a random time up to this before it is answered (a real target's
    /// latency: it keeps requests in flight long enough for a kill to catch some).
    pub max_latency: Duration,
    /// The Standard Webhooks secret (`whsec_…`) every request must be signed with.
    pub webhook_secret: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_rate: DEFAULT_FAULT_RATE,
            seed: 1,
            max_latency: Duration::ZERO,
            webhook_secret: None,
        }
    }
}

/// What became of one idempotency key at the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// How many times a create with this key took effect: 1 for the first, plus one per
    /// later request carrying a body other than the first's (a second, different create).
    pub count: u64,
    /// Distinct bodies (by SHA-256) this key was sent with, over every request.
    pub bodies: usize,
    /// The path the key came to (the first, if several).
    pub path: String,
    /// Requests that carried the key.
    pub requests: u64,
    /// When the first create took effect.
    pub first_at: Instant,
}

/// How one request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Ok,
    Status(u16),
    TooMany { retry_after: u64 },
    DropBefore,
    EffectThenDrop,
}

/// The faults, drawn from with equal weight.
const FAULTS: [Choice; 6] = [
    Choice::Status(500),
    Choice::Status(503),
    Choice::TooMany { retry_after: 0 },
    Choice::TooMany { retry_after: 1 },
    Choice::DropBefore,
    Choice::EffectThenDrop,
];

impl Choice {
    /// The name the tally keeps it under.
    fn name(self) -> &'static str {
        match self {
            Choice::Ok => "ok",
            Choice::Status(500) => "500",
            Choice::Status(503) => "503",
            Choice::Status(_) => "other status",
            Choice::TooMany { retry_after: 0 } => "429 retry-after 0",
            Choice::TooMany { .. } => "429 retry-after 1",
            Choice::DropBefore => "dropped before effect",
            Choice::EffectThenDrop => "dropped after effect",
        }
    }
}

/// The names [`FaultyTarget::answers`] tallies the faults under.
pub fn fault_names() -> Vec<&'static str> {
    FAULTS.iter().map(|c| c.name()).collect()
}

/// xorshift64*: small, seeded, good enough to pick faults (and the rounds' kill moments).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One key's story.
struct KeyState {
    /// The first body that took effect, and the answer it got.
    first: Option<(String, u16, String)>,
    count: u64,
    first_at: Option<Instant>,
    bodies: BTreeSet<String>,
    path: String,
    requests: u64,
    /// A 429 with `Retry-After: 1` answered at this epoch: the sender's same run may not
    /// send the key again before this instant.
    not_before: Option<(Instant, u64)>,
}

struct State {
    rng: XorShift,
    fault_rate: f64,
    max_latency: Duration,
    requests: u64,
    created: u64,
    epoch: u64,
    keys: BTreeMap<String, KeyState>,
    answers: BTreeMap<&'static str, u64>,
    problems: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    secret: Option<String>,
}

/// A parsed request: what the receiver looks at.
struct Incoming {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
    keep_alive: bool,
}

/// What goes back on the connection.
enum Reply {
    Send(Vec<u8>),
    Drop,
}

/// The running receiver; stopped when dropped.
pub struct FaultyTarget {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultyTarget {
    /// A receiver failing `fault_rate` of requests, choices drawn from `seed`.
    pub fn start(fault_rate: f64, seed: u64) -> FaultyTarget {
        Self::start_with(Options {
            fault_rate,
            seed,
            ..Options::default()
        })
    }

    pub fn start_with(options: Options) -> FaultyTarget {
        assert!(
            (0.0..=1.0).contains(&options.fault_rate),
            "a fault rate is from 0.0 to 1.0"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("faulty-target")
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: XorShift::new(options.seed),
                fault_rate: options.fault_rate,
                max_latency: options.max_latency,
                requests: 0,
                created: 0,
                epoch: 0,
                keys: BTreeMap::new(),
                answers: BTreeMap::new(),
                problems: Vec::new(),
            }),
            secret: options.webhook_secret,
        });
        let accepting = shared.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(connection(accepting.clone(), socket));
            }
        });
        FaultyTarget {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`; any path is taken.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Per idempotency key, what took effect.
    pub fn took_effect(&self) -> BTreeMap<String, Effect> {
        let state = self.shared.state.lock().unwrap();
        state
            .keys
            .iter()
            .filter_map(|(key, k)| {
                Some((
                    key.clone(),
                    Effect {
                        count: k.count,
                        bodies: k.bodies.len(),
                        path: k.path.clone(),
                        requests: k.requests,
                        first_at: k.first_at?,
                    },
                ))
            })
            .collect()
    }

    /// Every key a request carried, whether or not anything took effect.
    pub fn keys_seen(&self) -> BTreeSet<String> {
        self.shared
            .state
            .lock()
            .unwrap()
            .keys
            .keys()
            .cloned()
            .collect()
    }

    /// Per key, the requests that carried it.
    pub fn requests_by_key(&self) -> BTreeMap<String, u64> {
        let state = self.shared.state.lock().unwrap();
        state
            .keys
            .iter()
            .map(|(key, k)| (key.clone(), k.requests))
            .collect()
    }

    /// Requests read whole.
    pub fn requests(&self) -> u64 {
        self.shared.state.lock().unwrap().requests
    }

    /// How requests were answered, by kind (`took effect`, `deduped`, `500`, …; a create
    /// dropped after it took effect counts under both names).
    pub fn answers(&self) -> BTreeMap<&'static str, u64> {
        self.shared.state.lock().unwrap().answers.clone()
    }

    /// What a request did wrong (a header missing or disagreeing, a signature that does not
    /// verify, a `Retry-After` not waited out): ids only.
    pub fn problems(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().problems.clone()
    }

    /// Says that every sender running so far has stopped and new ones start: a key sent
    /// again after this is not held to an earlier `Retry-After` (a killed run could not
    /// record it).
    pub fn next_epoch(&self) {
        self.shared.state.lock().unwrap().epoch += 1;
    }
}

impl Drop for FaultyTarget {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One connection: requests read and answered in turn until either side closes it or the
/// receiver drops it on purpose.
async fn connection(shared: Arc<Shared>, mut socket: TcpStream) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let req = match read_request(&mut socket, &mut buf).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                let _ = socket
                    .write_all(&response(status, &[], br#"{"error":"bad request"}"#))
                    .await;
                return;
            }
        };
        let keep_alive = req.keep_alive;
        match answer(&shared, req).await {
            Reply::Drop => return,
            Reply::Send(bytes) => {
                if socket.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
        if !keep_alive {
            return;
        }
    }
}

/// Reads one request from `socket` (bytes already read in `buf`); `Ok(None)` when the peer
/// closed between requests, `Err(status)` for a request this receiver will not take.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Incoming>, u16> {
    const MAX_HEAD: usize = 64 * 1024;
    const MAX_BODY: usize = 16 * 1024 * 1024;
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        let mut chunk = [0u8; 8192];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| 400u16)?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let version = first.next().unwrap_or_default().to_owned();
    let mut headers = http::HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        let name = http::HeaderName::try_from(name.trim()).map_err(|_| 400u16)?;
        let value = http::HeaderValue::try_from(value.trim()).map_err(|_| 400u16)?;
        headers.append(name, value);
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(411);
    }
    let length: usize = match headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()).ok_or(400u16)?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(413);
    }
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 16 * 1024];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    let close = headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some(Incoming {
        method,
        path,
        headers,
        body,
        keep_alive: version == "HTTP/1.1" && !close,
    }))
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decides, records and says what one request comes to.
async fn answer(shared: &Shared, req: Incoming) -> Reply {
    let latency = {
        let mut state = shared.state.lock().unwrap();
        let max = state.max_latency.as_micros() as u64;
        Duration::from_micros(state.rng.below(max + 1))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let now = Instant::now();
    let mut guard = shared.state.lock().unwrap();
    let state: &mut State = &mut guard;
    state.requests += 1;
    let Some(key) = header(&req.headers, "idempotency-key").map(str::to_owned) else {
        state
            .problems
            .push(format!("a request to {} without Idempotency-Key", req.path));
        return tally(state, "refused", Reply::Send(response(400, &[], b"{}")));
    };
    let webhook_id = header(&req.headers, "webhook-id");
    if webhook_id != Some(key.as_str()) {
        state.problems.push(format!(
            "key {key}: webhook-id {webhook_id:?} is not the Idempotency-Key"
        ));
    }
    if req.method != "POST" {
        state.problems.push(format!(
            "key {key}: method {} (a create is a POST)",
            req.method
        ));
        return tally(state, "refused", Reply::Send(response(405, &[], b"{}")));
    }
    if let Some(secret) = &shared.secret {
        let verified = standardwebhooks::Webhook::new(secret)
            .map_err(|e| e.to_string())
            .and_then(|w| w.verify(&req.body, &req.headers).map_err(|e| e.to_string()));
        if let Err(e) = verified {
            state
                .problems
                .push(format!("key {key}: the signature does not verify: {e}"));
            return tally(state, "refused", Reply::Send(response(401, &[], b"{}")));
        }
    }
    let hash = hex::encode(Sha256::digest(&req.body));
    let choice = if state.rng.unit() < state.fault_rate {
        FAULTS[state.rng.below(FAULTS.len() as u64) as usize]
    } else {
        Choice::Ok
    };
    let k = state.keys.entry(key.clone()).or_insert_with(|| KeyState {
        first: None,
        count: 0,
        first_at: None,
        bodies: BTreeSet::new(),
        path: req.path.clone(),
        requests: 0,
        not_before: None,
    });
    k.requests += 1;
    k.bodies.insert(hash.clone());
    if let Some((until, at_epoch)) = k.not_before.take()
        && at_epoch == state.epoch
        && now + Duration::from_millis(50) < until
    {
        state.problems.push(format!(
            "key {key}: sent again {} ms before the 429's Retry-After: 1 ran out",
            (until - now).as_millis()
        ));
    }
    if k.path != req.path {
        state
            .problems
            .push(format!("key {key}: came to {} after {}", req.path, k.path));
    }
    let (name, reply) = match choice {
        Choice::Status(status) => (
            choice.name(),
            Reply::Send(response(status, &[], br#"{"error":"unavailable"}"#)),
        ),
        Choice::TooMany { retry_after } => {
            if retry_after > 0 {
                k.not_before = Some((now + Duration::from_secs(retry_after), state.epoch));
            }
            (
                choice.name(),
                Reply::Send(response(
                    429,
                    &[("retry-after", retry_after.to_string())],
                    br#"{"error":"slow down"}"#,
                )),
            )
        }
        Choice::DropBefore => (choice.name(), Reply::Drop),
        Choice::Ok | Choice::EffectThenDrop => {
            let (status, body, what) = match &k.first {
                None => {
                    state.created += 1;
                    let body = format!(r#"{{"id":"evt_{:06}","received":true}}"#, state.created);
                    k.first = Some((hash, 200, body.clone()));
                    k.count = 1;
                    k.first_at = Some(now);
                    (200, body, "took effect")
                }
                Some((first, status, body)) if *first == hash => (*status, body.clone(), "deduped"),
                Some(_) => {
                    // A second, different create for one revision: what the rounds look for.
                    k.count += 1;
                    let body = r#"{"error":"idempotency key reused with a different body"}"#;
                    (422, body.to_owned(), "different body under one key")
                }
            };
            if choice == Choice::EffectThenDrop {
                *state.answers.entry(what).or_default() += 1;
                (choice.name(), Reply::Drop)
            } else {
                (what, Reply::Send(response(status, &[], body.as_bytes())))
            }
        }
    };
    tally(state, name, reply)
}

fn tally(state: &mut State, name: &'static str, reply: Reply) -> Reply {
    *state.answers.entry(name).or_default() += 1;
    reply
}

fn response(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

// ---- The receiver's own checks: it can see what the rounds look for --------------------

const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A POST as the webhook connector sends it: `key` as Idempotency-Key, `webhook_id`, and a
/// Standard Webhooks signature over `webhook_id` (or `signature` as given).
fn post(
    client: &reqwest::Client,
    url: &str,
    (key, webhook_id): (&str, &str),
    body: &str,
    signature: Option<&str>,
) -> reqwest::RequestBuilder {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = match signature {
        Some(s) => s.to_owned(),
        None => standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .sign(webhook_id, ts, body.as_bytes())
            .unwrap(),
    };
    client
        .post(url)
        .header("idempotency-key", key)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_owned())
}

fn signed(client: &reqwest::Client, url: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
    post(client, url, (key, key), body, None)
}

fn healthy() -> FaultyTarget {
    FaultyTarget::start_with(Options {
        fault_rate: 0.0,
        webhook_secret: Some(SECRET.into()),
        ..Options::default()
    })
}

#[tokio::test]
async fn a_repeated_key_is_deduped_and_a_different_body_under_it_is_counted() {
    let target = healthy();
    let client = reqwest::Client::new();
    let url = format!("{}/hooks/a", target.url());
    let first = signed(&client, &url, "k1", r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first = first.text().await.unwrap();
    let again = signed(&client, &url, "k1", r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.text().await.unwrap(),
        first,
        "the first answer, again"
    );
    let effects = target.took_effect();
    assert_eq!((effects["k1"].count, effects["k1"].bodies), (1, 1));

    let other = signed(&client, &url, "k1", r#"{"n":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let effects = target.took_effect();
    assert_eq!(
        (effects["k1"].count, effects["k1"].bodies),
        (2, 2),
        "a different create under one key is what the rounds look for"
    );
    assert_eq!(effects["k1"].path, "/hooks/a");
    assert_eq!(target.requests(), 3);
    assert!(target.problems().is_empty(), "{:?}", target.problems());
}

#[tokio::test]
async fn a_bad_signature_or_disagreeing_ids_are_problems() {
    let target = healthy();
    let client = reqwest::Client::new();
    let url = format!("{}/h", target.url());
    let forged = post(&client, &url, ("k2", "k2"), "{}", Some("v1,AAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let mismatched = post(&client, &url, ("k3", "k4"), "{}", None)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), 200, "signed well, under another id");
    let problems = target.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("k2") && p.contains("signature")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("k3") && p.contains("webhook-id")),
        "{problems:?}"
    );
    assert_eq!(
        target.took_effect().keys().collect::<Vec<_>>(),
        ["k3"],
        "nothing refused took effect"
    );
}

/// Every fault happens, near its share; a dropped connection is an error to the client;
/// an early retry after `Retry-After: 1` is a problem, and not after a new epoch.
#[tokio::test]
async fn faults_come_at_their_rate_and_retry_after_is_checked() {
    let target = FaultyTarget::start(1.0, 7);
    let client = reqwest::Client::new();
    let url = format!("{}/h", target.url());
    let (mut errors, mut statuses) = (0, BTreeMap::new());
    for i in 0..600 {
        let key = format!("f{i}");
        let r = client
            .post(&url)
            .header("idempotency-key", &key)
            .header("webhook-id", &key)
            .body("{}")
            .send()
            .await;
        match r {
            Ok(r) => *statuses.entry(r.status().as_u16()).or_insert(0) += 1,
            Err(_) => errors += 1,
        }
    }
    let answers = target.answers();
    for name in fault_names() {
        let n = answers.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{name}: {n} of 600 ({answers:?})");
    }
    assert_eq!(
        answers.get("took effect"),
        answers.get("dropped after effect"),
        "a fault rate of 1 answers nothing well: only the drops after effect made anything"
    );
    assert_eq!(
        errors,
        answers["dropped before effect"] + answers["dropped after effect"],
        "each drop is an error to the client"
    );
    assert!(
        statuses.keys().all(|s| [429, 500, 503].contains(s)),
        "{statuses:?}"
    );
    // Only the drops after effect made anything.
    assert_eq!(
        target.took_effect().len() as u64,
        answers["dropped after effect"]
    );

    // A key answered 429 with Retry-After: 1, sent again at once: a problem.
    let key = answers_429_1(&target, &client, &url).await;
    let _ = client
        .post(&url)
        .header("idempotency-key", &key)
        .header("webhook-id", &key)
        .body("{}")
        .send()
        .await;
    assert!(
        target
            .problems()
            .iter()
            .any(|p| p.contains(&key) && p.contains("Retry-After")),
        "{:?}",
        target.problems()
    );
    // After a new epoch (the sender was killed), not a problem.
    let before = target.problems().len();
    let key = answers_429_1(&target, &client, &url).await;
    target.next_epoch();
    let _ = client
        .post(&url)
        .header("idempotency-key", &key)
        .header("webhook-id", &key)
        .body("{}")
        .send()
        .await;
    assert_eq!(target.problems().len(), before, "{:?}", target.problems());
}

/// Sends new keys until one is answered 429 with `Retry-After: 1`; that key.
async fn answers_429_1(target: &FaultyTarget, client: &reqwest::Client, url: &str) -> String {
    for i in 0..1000 {
        let key = format!("ra-{}-{i}", target.requests());
        let r = client
            .post(url)
            .header("idempotency-key", &key)
            .header("webhook-id", &key)
            .body("{}")
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 429
            && r.headers().get("retry-after").map(|v| v.as_bytes()) == Some(b"1")
        {
            return key;
        }
    }
    panic!("no 429 with Retry-After: 1 in 1000 requests");
}
