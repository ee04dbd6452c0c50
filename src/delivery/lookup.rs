//! Look-ups at delivery time (connectors' `[lookups]`): the target's id for one of the
//! record's values — the pupil with this UPN, the code with this letter — read from the
//! target once and cached: in memory for the run (one request however many deliveries
//! ask at once) and in the store until it expires (so the next run asks nothing).
//!
//! A listing is read by one delivery at a time per (school, look-up), however many wait for
//! it. A page that fails with something worth retrying stops the read where it is: what was
//! read is kept, nobody asks again before the destination's backoff (or the target's
//! `Retry-After`) has passed, and the next read resumes at the page that failed.
//!
//! Owns: reading look-ups from a target and caching them. May not touch: rendering (the
//! values go to the map through `plan::Extras`), delivery outcomes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};

use crate::connectors::http::HttpTransport;
use crate::connectors::{Attempt, Limits, Lookup};
use crate::store::lookups::{Cached, LookupScope, LookupStore, WHOLE_LISTING};

/// Pages of one listing read at most (a guard against a `next` that never ends).
const MAX_PAGES: usize = 1000;

/// One listing read whole: key → id.
type Listing = Arc<HashMap<String, String>>;
/// An answer being read (or read), shared by every delivery asking for it.
type Slot<T> = Arc<OnceCell<(T, Instant)>>;

/// One destination's look-ups in memory, with the count of requests made.
#[derive(Default)]
pub struct Lookups {
    /// By (school, look-up, key).
    answers: Mutex<HashMap<(String, String, String), Slot<Cached>>>,
    /// By (school, look-up); a delivery holds one's lock while it reads the listing.
    listings: Mutex<HashMap<(String, String), ListingSlot>>,
    requests: AtomicU64,
}

/// One listing's state, locked by the delivery reading it.
type ListingSlot = Arc<Mutex<ListingState>>;

/// One listing in memory: read whole, or stopped at a page that failed.
#[derive(Default)]
struct ListingState {
    read: Option<(Listing, Instant)>,
    /// What a read that stopped had, and the page to resume at.
    partial: Option<Partial>,
    /// Failed reads in a row, and no request before this.
    failures: u32,
    not_before: Option<Instant>,
}

struct Partial {
    found: HashMap<String, String>,
    next: reqwest::Url,
    pages: usize,
}

/// A page that failed: what it came to, its URL, and how many pages came before it.
struct PageFailure {
    attempt: Attempt,
    at: reqwest::Url,
    pages: usize,
}

/// Where and how to read one look-up.
pub struct Target<'a> {
    pub transport: &'a HttpTransport,
    /// The destination's base URL (a template of `vars`).
    pub base_url: &'a str,
    pub spec: &'a Lookup,
    pub vars: &'a BTreeMap<String, String>,
    /// The destination's limits: the backoff after a failed page.
    pub limits: &'a Limits,
}

impl Lookups {
    /// Requests made to targets for look-ups.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The target's id for `key`, or that it has none; a failure to read is what the
    /// delivery's attempt comes to (a 5xx is retried, a 401 is not).
    pub async fn resolve<S: LookupStore>(
        &self,
        store: &S,
        target: &Target<'_>,
        scope: &LookupScope,
        key: &str,
    ) -> Result<Cached, Attempt> {
        if target.spec.all {
            self.in_listing(store, target, scope, key).await
        } else {
            self.by_query(store, target, scope, key).await
        }
    }

    async fn by_query<S: LookupStore>(
        &self,
        store: &S,
        target: &Target<'_>,
        scope: &LookupScope,
        key: &str,
    ) -> Result<Cached, Attempt> {
        let cell = {
            let mut answers = self.answers.lock().await;
            let slot = answers
                .entry((scope.school.clone(), scope.name.clone(), key.to_owned()))
                .or_default();
            if slot
                .get()
                .is_some_and(|(_, until)| *until <= Instant::now())
            {
                *slot = Arc::default();
            }
            slot.clone()
        };
        let (answer, _) = cell
            .get_or_try_init(|| async {
                let spec = target.spec;
                if let Some(c) = store.lookup_get(scope, key).await.map_err(store_failed)? {
                    return Ok((c.clone(), Instant::now() + life(spec, &c)));
                }
                let url = page_url(target, Some(key))?;
                let mut answer = Cached::NotFound;
                let pages = self.read_pages(target, url, 0, |item| {
                    let matches = match &spec.match_pointer {
                        Some(p) => text_at(item, p).is_some_and(|v| v == key),
                        None => true,
                    };
                    if matches
                        && let Some(v) = text_at(item, &spec.value)
                        && answer == Cached::NotFound
                    {
                        answer = Cached::Found(v);
                    }
                });
                match pages.await.map_err(|f| f.attempt) {
                    Ok(()) => {}
                    // A filtered read answering 404 has found nothing.
                    Err(Attempt::Permanent {
                        status: Some(404), ..
                    }) => {}
                    Err(a) => return Err(a),
                }
                let life = life(spec, &answer);
                store
                    .lookup_put(scope, &[(key.to_owned(), answer.clone())], &expiry(life))
                    .await
                    .map_err(store_failed)?;
                Ok((answer, Instant::now() + life))
            })
            .await?;
        Ok(answer.clone())
    }

    async fn in_listing<S: LookupStore>(
        &self,
        store: &S,
        target: &Target<'_>,
        scope: &LookupScope,
        key: &str,
    ) -> Result<Cached, Attempt> {
        let spec = target.spec;
        let slot = self
            .listings
            .lock()
            .await
            .entry((scope.school.clone(), scope.name.clone()))
            .or_default()
            .clone();
        // Held while reading: every other delivery wanting this listing waits here.
        let mut state = slot.lock().await;
        if let Some((listing, read)) = &state.read {
            // A key missing from a listing read a while ago may have been added since.
            let stale = !listing.contains_key(key) && read.elapsed() > not_found_life(spec)
                || read.elapsed() > found_life(spec);
            if !stale {
                return Ok(answer_in(listing, key));
            }
            state.read = None;
        }
        // Not read in this run: the store may hold it from an earlier one.
        if let Some(c) = store.lookup_get(scope, key).await.map_err(store_failed)? {
            return Ok(c);
        }
        if store
            .lookup_get(scope, WHOLE_LISTING)
            .await
            .map_err(store_failed)?
            .is_some()
        {
            return Ok(Cached::NotFound);
        }
        if let Some(wait) = state
            .not_before
            .and_then(|t| t.checked_duration_since(Instant::now()))
        {
            return Err(Attempt::Retry {
                reason: "look-up: its listing failed a moment ago; waiting before reading on"
                    .into(),
                status: None,
                retry_after: Some(wait),
                response: None,
            });
        }
        let (mut found, start, pages) = match state.partial.take() {
            Some(p) => (p.found, p.next, p.pages),
            None => (HashMap::new(), page_url(target, None)?, 0),
        };
        let match_pointer = spec.match_pointer.as_deref().unwrap_or_default();
        let read = self
            .read_pages(target, start, pages, |item| {
                if let (Some(k), Some(v)) =
                    (text_at(item, match_pointer), text_at(item, &spec.value))
                {
                    found.entry(k).or_insert(v);
                }
            })
            .await;
        match read {
            Ok(()) => {}
            Err(PageFailure {
                attempt:
                    Attempt::Retry {
                        reason,
                        status,
                        retry_after,
                        response,
                    },
                at,
                pages,
            }) => {
                state.failures += 1;
                let wait = super::retry::backoff(target.limits, state.failures - 1)
                    .max(retry_after.unwrap_or_default());
                state.not_before = Some(Instant::now() + wait);
                state.partial = Some(Partial {
                    found,
                    next: at,
                    pages,
                });
                return Err(Attempt::Retry {
                    reason,
                    status,
                    retry_after: Some(wait),
                    response,
                });
            }
            Err(f) => {
                state.failures = 0;
                state.not_before = None;
                return Err(f.attempt);
            }
        }
        state.failures = 0;
        state.not_before = None;
        let entries: Vec<(String, Cached)> = found
            .iter()
            .map(|(k, v)| (k.clone(), Cached::Found(v.clone())))
            .collect();
        store
            .lookup_put(scope, &entries, &expiry(found_life(spec)))
            .await
            .map_err(store_failed)?;
        // The mark that the listing was read whole lasts as long as "not found".
        store
            .lookup_put(
                scope,
                &[(WHOLE_LISTING.to_owned(), Cached::NotFound)],
                &expiry(not_found_life(spec)),
            )
            .await
            .map_err(store_failed)?;
        let answer = answer_in(&found, key);
        state.read = Some((Arc::new(found), Instant::now()));
        Ok(answer)
    }

    /// Reads a page and every `next` page after it, giving each result to `each`;
    /// `pages` were read before `first`. A page that fails says where the read stopped.
    async fn read_pages(
        &self,
        target: &Target<'_>,
        first: reqwest::Url,
        mut pages: usize,
        mut each: impl FnMut(&Value),
    ) -> Result<(), PageFailure> {
        let spec = target.spec;
        let mut url = Some(first);
        while let Some(u) = url.take() {
            let stop = |attempt| PageFailure {
                attempt,
                at: u.clone(),
                pages,
            };
            if pages >= MAX_PAGES {
                return Err(stop(permanent(format!(
                    "a look-up read more than {MAX_PAGES} pages"
                ))));
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let page = target
                .transport
                .get(u.as_str(), target.vars)
                .await
                .map_err(stop)?;
            pages += 1;
            let items = if spec.items.is_empty() {
                Some(&page)
            } else {
                page.pointer(&spec.items)
            };
            match items {
                Some(Value::Array(items)) => items.iter().for_each(&mut each),
                Some(Value::Null) | None => {}
                Some(item) => each(item),
            }
            if let Some(next) = spec
                .next
                .as_deref()
                .and_then(|p| page.pointer(p))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                url = Some(same_origin(&u, next).map_err(|a| PageFailure {
                    attempt: a,
                    at: u.clone(),
                    pages,
                })?);
            }
        }
        Ok(())
    }
}

/// The first page's URL: the destination's URL and the look-up's path, filled in.
fn page_url(target: &Target<'_>, key: Option<&str>) -> Result<reqwest::Url, Attempt> {
    let ctx = minijinja::context! {
        vars => crate::connectors::template::vars(target.vars),
        key => key.unwrap_or_default(),
    };
    let text = format!(
        "{}{}",
        target.base_url.trim_end_matches('/'),
        target.spec.path
    );
    let url = crate::connectors::template::fill(&text, ctx)
        .map_err(|reason| permanent(format!("look-up path: {reason}")))?;
    reqwest::Url::parse(&url).map_err(|_| permanent("look-up URL is not a URL".into()))
}

/// A `next` link: a path on the same host, or a URL on it; never another host (the
/// credentials would go with it).
fn same_origin(current: &reqwest::Url, next: &str) -> Result<reqwest::Url, Attempt> {
    let url = current
        .join(next)
        .map_err(|_| permanent("a look-up's next page is not a URL".into()))?;
    if url.origin() != current.origin() {
        return Err(permanent(
            "a look-up's next page is on another host; not followed".into(),
        ));
    }
    Ok(url)
}

fn answer_in(listing: &HashMap<String, String>, key: &str) -> Cached {
    listing
        .get(key)
        .map_or(Cached::NotFound, |v| Cached::Found(v.clone()))
}

/// A string or number at `pointer` in `item`, as text.
fn text_at(item: &Value, pointer: &str) -> Option<String> {
    match item.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// When an answer kept for `life` expires, as the store keeps it (RFC 3339).
fn expiry(life: Duration) -> String {
    (Utc::now() + chrono::Duration::from_std(life).unwrap_or(chrono::Duration::hours(1)))
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn found_life(spec: &Lookup) -> Duration {
    Duration::from_secs_f64(spec.ttl_hours * 3600.0)
}

fn not_found_life(spec: &Lookup) -> Duration {
    Duration::from_secs_f64(spec.not_found_minutes * 60.0)
}

fn life(spec: &Lookup, c: &Cached) -> Duration {
    match c {
        Cached::Found(_) => found_life(spec),
        Cached::NotFound => not_found_life(spec),
    }
}

fn permanent(reason: String) -> Attempt {
    Attempt::Permanent {
        reason,
        status: None,
        response: None,
    }
}

/// The store failing is worth another try.
fn store_failed(e: crate::store::StoreError) -> Attempt {
    Attempt::Retry {
        reason: format!("look-up cache: {e}"),
        status: None,
        retry_after: None,
        response: None,
    }
}
