//! One attempt at one delivery (or one batched request): look-ups made, body or row
//! rendered, method and URL worked out, the transport called.
//! Owns: preparing and sending. May not touch: when to retry (`retry`), claiming or
//! recording outcomes (`driver`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::connectors::http::Request;
use crate::connectors::{Attempt, Connectors, LostAnswer, UpdateBody};
use crate::mapping::{RaisedException, Rendered, Trusts};
use crate::store::deliveries::{AttemptOutcome, Claimed, DeliveryStore, Finished, WithoutRequest};

use super::destinations::{Dest, Transport};
use super::retry::conclude;
use super::{changes, lookup, plan, reconcile};

/// What the senders of one destination share.
pub(super) struct Env<S> {
    pub(super) dest: Arc<Dest>,
    pub(super) trusts: Arc<Trusts>,
    pub(super) connectors: Arc<Connectors>,
    pub(super) store: Arc<S>,
}

impl<S> Clone for Env<S> {
    fn clone(&self) -> Self {
        Env {
            dest: self.dest.clone(),
            trusts: self.trusts.clone(),
            connectors: self.connectors.clone(),
            store: self.store.clone(),
        }
    }
}

/// A delivery ready to go: what to send, and the school's `vars` for its URL.
struct Prepared {
    out: plan::Outgoing,
    vars: BTreeMap<String, String>,
}

/// Makes one attempt and decides what it comes to.
pub(super) async fn attempt<S: DeliveryStore>(env: &Env<S>, c: Claimed) -> Finished {
    let limits = &env.dest.connector.limits;
    let mut p = match prepare(env, &c).await {
        Err(a) => return conclude(limits, c, a),
        Ok(p) => p,
    };
    let endpoint = env.dest.endpoint(c.kind.as_str());
    let updates = endpoint.is_some_and(|e| e.update_method.is_some() && e.update_path.is_some())
        && c.prior_target.is_some();
    // With `update_body = "changed"`: what the target will have, field by field, and an
    // update that carries only what differs from what it has.
    let mut sent = None;
    if let (Some(e), Rendered::Body(body)) = (endpoint, &p.out.rendered)
        && e.update_body == UpdateBody::Changed
    {
        let now = changes::field_hashes(body, &e.fields_at);
        if let (true, Some(now), Some(before)) = (updates, &now, &c.prior_sent) {
            match changes::only_changed(body, &e.fields_at, now, before) {
                Some(smaller) => p.out.rendered = Rendered::Body(smaller),
                None => {
                    let target_id = c.prior_target.clone();
                    let sent = Some(now.clone());
                    return without_request(limits, c, target_id, WithoutRequest::Unchanged, sent);
                }
            }
        }
        sent = now;
    }
    // A create sent before without an answer may exist at the target.
    if c.unsure
        && !updates
        && let (Some(e), Transport::Http(transport), Rendered::Body(body)) =
            (endpoint, &env.dest.transport, &p.out.rendered)
    {
        match reconcile::before_resending(&env.dest, e, transport, body, &p.vars).await {
            Ok(None) => {}
            Ok(Some(id)) => {
                return without_request(limits, c, Some(id), WithoutRequest::Adopted, sent);
            }
            Err(a) => return conclude(limits, c, a),
        }
    }
    let prior = c.prior_target.clone();
    let result = send(&env.dest, &c, p).await;
    let mut f = conclude(limits, c, result);
    if let AttemptOutcome::Delivered { target_id, .. } = &mut f.outcome {
        f.sent = sent;
        // An update answered without an id updated the record the id names.
        if target_id.is_none() && updates {
            *target_id = prior;
        }
    }
    f
}

/// A delivery delivered without a request, and why; `sent` is what the target has of it.
fn without_request(
    limits: &crate::connectors::Limits,
    c: Claimed,
    target_id: Option<String>,
    why: WithoutRequest,
    sent: Option<crate::store::deliveries::SentFields>,
) -> Finished {
    let delivered = Attempt::Delivered {
        target_id,
        status: None,
    };
    let mut f = conclude(limits, c, delivered);
    f.without_request = Some(why);
    f.sent = sent;
    f
}

/// Sends several deliveries of one kind as few requests as the endpoint allows: bodies
/// for the same URL that agree at the endpoint's `batch_by` pointers share a request, their
/// items at `batch_pointer` gathered into the first body's array there. Every delivery of a
/// request gets its outcome; one whose body cannot be built goes dead on its own.
pub(super) async fn attempt_batch<S: DeliveryStore>(
    env: &Env<S>,
    batch: Vec<Claimed>,
) -> Vec<Finished> {
    let dest = &env.dest;
    let limits = &dest.connector.limits;
    let mut done = Vec::with_capacity(batch.len());
    // Members by (URL, batch_by values), in claim order.
    let mut groups: Vec<(String, Vec<Member>)> = Vec::new();
    for c in batch {
        // A create that may already exist is resolved on its own before it is sent again.
        let resend = dest
            .endpoint(c.kind.as_str())
            .is_none_or(|e| dest.connector.lost_answer(e) == LostAnswer::Resend);
        if c.unsure && !resend {
            done.push(attempt(env, c).await);
            continue;
        }
        match prepare(env, &c).await {
            Ok(Prepared {
                out:
                    plan::Outgoing {
                        rendered: Rendered::Body(body),
                        ..
                    },
                vars,
            }) => {
                let by = dest
                    .endpoint(c.kind.as_str())
                    .map(|e| e.batch_by.clone())
                    .unwrap_or_default();
                let group = match target_of(dest, &c, &vars) {
                    Ok((_, url, _)) => {
                        let values: Vec<String> = by
                            .iter()
                            .map(|p| body.pointer(p).map(Value::to_string).unwrap_or_default())
                            .collect();
                        format!("{url}\u{1f}{}", values.join("\u{1f}"))
                    }
                    Err(reason) => {
                        done.push(conclude(limits, c, permanent(reason)));
                        continue;
                    }
                };
                match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push((c, body, vars)),
                    None => groups.push((group, vec![(c, body, vars)])),
                }
            }
            Ok(_) => done.push(conclude(
                limits,
                c,
                permanent("the map's output does not fit the connector".into()),
            )),
            Err(a) => done.push(conclude(limits, c, a)),
        }
    }
    for (_, members) in groups {
        done.extend(send_batch(dest, members).await);
    }
    done
}

/// One delivery of a batch: its body and its school's `vars`.
type Member = (Claimed, Value, BTreeMap<String, String>);

/// One request for the bodies of one batch group.
async fn send_batch(dest: &Arc<Dest>, members: Vec<Member>) -> Vec<Finished> {
    let limits = &dest.connector.limits;
    let Some((first, _, vars)) = members.first() else {
        return Vec::new();
    };
    let pointer = dest
        .endpoint(first.kind.as_str())
        .and_then(|e| e.batch_pointer.clone())
        .unwrap_or_default();
    let merged = match merge_bodies(members.iter().map(|(_, b, _)| b), &pointer) {
        Ok(m) => m,
        Err(reason) => {
            return members
                .into_iter()
                .map(|(c, _, _)| conclude(limits, c, permanent(reason.clone())))
                .collect();
        }
    };
    // The batch's key: the same for the same members, whatever the attempt.
    let key = plan::idempotency_key(
        &first.trust,
        &first.destination,
        "batch",
        &members
            .iter()
            .map(|(c, _, _)| c.idempotency_key.as_str())
            .collect::<Vec<_>>()
            .join(","),
        1,
    );
    let mut lead = first.clone();
    lead.idempotency_key = key;
    let prepared = Prepared {
        out: plan::Outgoing {
            destination: lead.destination.clone(),
            connector: dest.connector.name.clone(),
            map: lead.map.clone(),
            rendered: Rendered::Body(merged),
            file: None,
        },
        vars: vars.clone(),
    };
    let result = send(dest, &lead, prepared).await;
    members
        .into_iter()
        .map(|(c, _, _)| {
            // The target's id for the request (Wonde's writeback_id) is each member's.
            conclude(limits, c, result.clone())
        })
        .collect()
}

fn permanent(reason: String) -> Attempt {
    Attempt::Permanent {
        reason,
        status: None,
        response: None,
    }
}

/// One body holding every body's items at `pointer` (an array there, or a single value).
fn merge_bodies<'a>(
    mut bodies: impl Iterator<Item = &'a Value>,
    pointer: &str,
) -> Result<Value, String> {
    let mut merged = bodies.next().cloned().unwrap_or(Value::Null);
    let mut items: Vec<Value> = Vec::new();
    let take = |b: &Value, items: &mut Vec<Value>| -> Result<(), String> {
        match b.pointer(pointer) {
            Some(Value::Array(a)) => items.extend(a.iter().cloned()),
            Some(v) => items.push(v.clone()),
            None => {
                return Err(format!(
                    "the map's body has nothing at the batch pointer {pointer}"
                ));
            }
        }
        Ok(())
    };
    take(&merged, &mut items)?;
    for b in bodies {
        take(b, &mut items)?;
    }
    match merged.pointer_mut(pointer) {
        Some(slot) => *slot = Value::Array(items),
        None => {
            return Err(format!(
                "the map's body has nothing at the batch pointer {pointer}"
            ));
        }
    }
    Ok(merged)
}

/// What to send: the record's look-ups made, then its body or row rendered; or what the
/// attempt comes to without sending (a map that cannot be built, a pupil the target does
/// not have: permanent, replayed after the fix; a look-up the target failed to answer:
/// retried).
async fn prepare<S: DeliveryStore>(env: &Env<S>, c: &Claimed) -> Result<Prepared, Attempt> {
    let dest = &env.dest;
    let trust = env.trusts.get(&c.trust).ok_or_else(|| {
        permanent(format!(
            "trust `{}` is no longer in the mappings folder",
            c.trust
        ))
    })?;
    let record: Value =
        serde_json::from_str(&c.canonical).map_err(|e| permanent(format!("stored record: {e}")))?;
    let raised: Vec<RaisedException> = c
        .exceptions
        .iter()
        .map(|(rule, severity)| RaisedException {
            rule: rule.clone(),
            severity: *severity,
        })
        .collect();
    let mut extras = plan::Extras {
        vars: dest.config.vars_for(&c.school),
        lookups: BTreeMap::new(),
        of_visit: None,
    };
    // An incident or flag of a visit: the visit report, current revision, beside it.
    if c.kind != crate::records::Kind::VisitReport
        && let Some(visit_id) = record.get("visit_id").and_then(Value::as_str)
    {
        let revisions = env
            .store
            .revisions(&c.trust, crate::records::Kind::VisitReport, visit_id)
            .await
            .map_err(|e| Attempt::Retry {
                reason: format!("reading the record's visit: {e}"),
                status: None,
                retry_after: None,
                response: None,
            })?;
        extras.of_visit = revisions
            .last()
            .and_then(|(_, canonical)| serde_json::from_str(canonical).ok());
    }
    let needs = plan::lookup_needs(
        trust,
        &env.connectors,
        &dest.name,
        &record,
        &raised,
        &extras,
    )
    .map_err(|e| permanent(format!("mapping: {e}")))?;
    for need in needs {
        let (Some(spec), Transport::Http(transport)) =
            (dest.connector.lookups.get(&need.name), &dest.transport)
        else {
            continue;
        };
        let scope = crate::store::lookups::LookupScope {
            trust: c.trust.clone(),
            destination: dest.lookup_scope.clone(),
            school: c.school.clone(),
            name: need.name.clone(),
        };
        let target = lookup::Target {
            transport,
            base_url: dest.url.as_deref().unwrap_or_default(),
            spec,
            vars: &extras.vars,
            limits: &dest.connector.limits,
        };
        match dest
            .lookups
            .resolve(env.store.as_ref(), &target, &scope, &need.key)
            .await
        {
            Ok(crate::store::lookups::Cached::Found(v)) => {
                extras.lookups.insert(need.name, v);
            }
            // Named by the record, never by the value looked up (a UPN, a name).
            Ok(crate::store::lookups::Cached::NotFound) => {
                return Err(permanent(format!(
                    "look-up `{}`: the target has no match for {} {} of school {} \
                     (replay once the target has it)",
                    need.name, c.kind, c.record_id, c.school
                )));
            }
            Err(Attempt::Retry {
                reason,
                status,
                retry_after,
                response,
            }) => {
                return Err(Attempt::Retry {
                    reason: format!("look-up `{}`: {reason}", need.name),
                    status,
                    retry_after,
                    response,
                });
            }
            Err(Attempt::Permanent {
                reason,
                status,
                response,
            }) => {
                return Err(Attempt::Permanent {
                    reason: format!("look-up `{}`: {reason}", need.name),
                    status,
                    response,
                });
            }
            Err(other) => return Err(other),
        }
    }
    let out = plan::render(
        trust,
        &env.connectors,
        &dest.name,
        &c.map,
        &record,
        &raised,
        &extras,
    )
    .map_err(|e| permanent(format!("mapping: {e}")))?;
    Ok(Prepared {
        out,
        vars: extras.vars,
    })
}

/// The method, full URL and target-id rule of a delivery: the endpoint's create, or its
/// update of the target's record when an earlier revision created one.
fn target_of<'a>(
    dest: &'a Dest,
    c: &Claimed,
    vars: &BTreeMap<String, String>,
) -> Result<
    (
        reqwest::Method,
        String,
        Option<&'a crate::connectors::TargetId>,
    ),
    String,
> {
    let endpoint = dest.endpoint(c.kind.as_str()).ok_or_else(|| {
        format!(
            "connector `{}` has no endpoint for {}",
            dest.connector.name, c.kind
        )
    })?;
    let (method, path) = match (
        &c.prior_target,
        &endpoint.update_method,
        &endpoint.update_path,
    ) {
        (Some(_), Some(m), Some(p)) => (m.as_str(), p.as_str()),
        _ => (endpoint.method.as_str(), endpoint.path.as_str()),
    };
    let base = dest.base_url(vars)?;
    // A target's id is data, never part of the URL's structure (SPEC §4).
    let whole = path.trim() == "{{ target_id }}";
    let id = c
        .prior_target
        .as_deref()
        .map(|id| id_in_path(id, whole))
        .transpose()?;
    let path = expand_path(path, vars, id.as_deref())?;
    let absolute = path.starts_with("https://") || path.starts_with("http://");
    let url = if absolute {
        path
    } else {
        format!("{base}{path}")
    };
    // Whatever the id, the request goes to the destination's scheme, host and port.
    let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
    let stays = match origin(&base) {
        Some(want) => origin(&url).as_ref() == Some(&want),
        // No URL to hold it to (a broken base fails when sent): no absolute id either.
        None => !absolute,
    };
    if !stays {
        return Err(if absolute {
            "the target id is a URL on another host than the destination's (rule: target-id-other-host)".into()
        } else {
            "the target id would send the request to another host (rule: target-id-other-host)"
                .into()
        });
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
    Ok((method, url, dest.connector.target_id(Some(endpoint))))
}

async fn send(dest: &Arc<Dest>, c: &Claimed, p: Prepared) -> Attempt {
    if let Some(l) = &dest.limiter {
        l.until_ready().await;
    }
    match (&dest.transport, p.out.rendered) {
        (Transport::Csv(transport), Rendered::Row { header, cells }) => {
            let file = p.out.file.unwrap_or_default();
            // CSV writes are blocking and one at a time per destination.
            let key = c.idempotency_key.clone();
            let transport = transport.clone();
            tokio::task::spawn_blocking(move || transport.append(&file, &header, &cells, &key))
                .await
                .unwrap_or_else(|e| Attempt::Retry {
                    reason: format!("CSV writer stopped: {e}"),
                    status: None,
                    retry_after: None,
                    response: None,
                })
        }
        (Transport::Http(transport), Rendered::Body(body)) => {
            let (method, url, target_id) = match target_of(dest, c, &p.vars) {
                Ok(t) => t,
                Err(reason) => return permanent(reason),
            };
            transport
                .send(&Request {
                    method,
                    url,
                    body: &body,
                    idempotency_key: &c.idempotency_key,
                    vars: &p.vars,
                    target_id,
                })
                .await
        }
        _ => permanent("the map's output does not fit the connector".into()),
    }
}

/// An endpoint path with `{{ vars.NAME }}` and `{{ target_id }}` filled in.
/// The longest target id taken into a URL.
const MAX_TARGET_ID: usize = 1024;

/// How a target's id stands in a request's path. Where the endpoint's update path is the id
/// alone (`{{ target_id }}`: an href or a `Location`), it must be a URL (whose host
/// [`target_of`] checks) or an absolute path of plain segments; anywhere else it is one
/// path segment, percent-encoded. Refusals name the rule; the id is shown escaped and cut.
fn id_in_path(id: &str, whole_path: bool) -> Result<String, String> {
    let shown = || {
        let cut: String = id.chars().take(64).collect();
        format!("{cut:?}{}", if cut.len() < id.len() { "…" } else { "" })
    };
    let refuse =
        |why: &str, rule: &str| Err(format!("the target id {} {why} (rule: {rule})", shown()));
    if id.is_empty() {
        return refuse("is empty", "target-id-not-a-path");
    }
    if id.len() > MAX_TARGET_ID {
        return refuse(
            &format!("is longer than {MAX_TARGET_ID} bytes"),
            "target-id-too-long",
        );
    }
    if id.chars().any(char::is_control) {
        return refuse("holds a control character", "target-id-not-a-path");
    }
    let dot_segment = |seg: &str| {
        let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    };
    if !whole_path {
        if dot_segment(id) {
            return refuse("is a dot segment", "target-id-not-a-path");
        }
        return Ok(percent_encoding::utf8_percent_encode(id, SEGMENT).to_string());
    }
    let lower = id.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(id.to_owned());
    }
    if !id.starts_with('/') || id.starts_with("//") {
        return refuse(
            "is neither a URL nor a path from the root",
            "target-id-not-a-path",
        );
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c);
    let escapes_ok = id.match_indices('%').all(|(i, _)| {
        id.get(i + 1..i + 3)
            .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    if !id.chars().all(plain) || !escapes_ok {
        return refuse(
            "holds a character a path may not (a query, a fragment, a space…)",
            "target-id-not-a-path",
        );
    }
    if id.split('/').any(dot_segment) {
        return refuse("holds a dot segment", "target-id-not-a-path");
    }
    Ok(id.to_owned())
}

/// What is escaped in an id that is one path segment: all but RFC 3986's unreserved.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(super) fn expand_path(
    path: &str,
    vars: &BTreeMap<String, String>,
    target_id: Option<&str>,
) -> Result<String, String> {
    let ctx = minijinja::context! {
        vars => crate::connectors::template::vars(vars),
        target_id => target_id.unwrap_or_default(),
    };
    crate::connectors::template::fill(path, ctx).map_err(|reason| {
        format!("`{path}`: {reason} (a school's values are in the destination's `schools`)")
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testkit::{claimed, connector, dest, vars};
    use super::*;

    #[test]
    fn expand_path_fills_vars_and_the_target_id() {
        let v = vars(&[("school_id", "42"), ("tenant", "thrive")]);
        for (path, target, want) in [
            ("/api/visits", None, "/api/visits"),
            (
                "/schools/{{ vars.school_id }}/notes",
                None,
                "/schools/42/notes",
            ),
            (
                "/{{ vars.tenant }}/schools/{{ vars.school_id }}",
                None,
                "/thrive/schools/42",
            ),
            ("/notes/{{ target_id }}", Some("T-9"), "/notes/T-9"),
            (
                "{{ target_id }}",
                Some("https://a.test/n/1"),
                "https://a.test/n/1",
            ),
            // No target id yet: empty, not an error (a create's path may not use it).
            ("/notes/{{ target_id }}", None, "/notes/"),
            (
                "/schools/{{ vars.school_id }}/notes/{{ target_id }}",
                Some("7"),
                "/schools/42/notes/7",
            ),
        ] {
            assert_eq!(
                expand_path(path, &v, target).as_deref(),
                Ok(want),
                "{path} {target:?}"
            );
        }
    }

    #[test]
    fn expand_path_refuses_a_var_the_school_lacks() {
        let err = expand_path("/schools/{{ vars.school_id }}", &vars(&[]), None).unwrap_err();
        assert!(
            err.starts_with("`/schools/{{ vars.school_id }}`: "),
            "{err}"
        );
        assert!(
            err.ends_with("(a school's values are in the destination's `schools`)"),
            "{err}"
        );
    }

    #[test]
    fn merge_bodies_gathers_items_into_the_first_body() {
        let cases = [
            (
                "arrays at the pointer",
                vec![
                    json!({"school": "A", "marks": [1, 2]}),
                    json!({"school": "B", "marks": [3]}),
                ],
                "/marks",
                json!({"school": "A", "marks": [1, 2, 3]}),
            ),
            (
                "single values at the pointer",
                vec![json!({"mark": {"a": 1}}), json!({"mark": {"a": 2}})],
                "/mark",
                json!({"mark": [{"a": 1}, {"a": 2}]}),
            ),
            (
                "a nested pointer",
                vec![
                    json!({"request": {"id": 1, "marks": [{"m": 1}]}}),
                    json!({"request": {"id": 2, "marks": [{"m": 2}, {"m": 3}]}}),
                ],
                "/request/marks",
                json!({"request": {"id": 1, "marks": [{"m": 1}, {"m": 2}, {"m": 3}]}}),
            ),
            (
                "one body: its value becomes an array",
                vec![json!({"mark": 5})],
                "/mark",
                json!({"mark": [5]}),
            ),
            (
                "an empty array adds nothing",
                vec![json!({"marks": [1]}), json!({"marks": []})],
                "/marks",
                json!({"marks": [1]}),
            ),
            (
                "the empty pointer: the bodies themselves",
                vec![json!({"a": 1}), json!({"a": 2})],
                "",
                json!([{"a": 1}, {"a": 2}]),
            ),
        ];
        for (case, bodies, pointer, want) in cases {
            assert_eq!(merge_bodies(bodies.iter(), pointer), Ok(want), "{case}");
        }
    }

    #[test]
    fn merge_bodies_refuses_a_body_without_the_pointer() {
        let want = Err("the map's body has nothing at the batch pointer /marks".to_owned());
        let first = [json!({"other": 1}), json!({"marks": [1]})];
        assert_eq!(merge_bodies(first.iter(), "/marks"), want);
        let later = [json!({"marks": [1]}), json!({"other": 1})];
        assert_eq!(merge_bodies(later.iter(), "/marks"), want);
        assert_eq!(merge_bodies([].iter(), "/marks"), want);
    }

    const CONNECTOR: &str = r#"
transport = "http_json"

[endpoints.visit_report]
path = "/schools/{{ vars.school_id }}/visits"
update_method = "PATCH"
update_path = "/schools/{{ vars.school_id }}/visits/{{ target_id }}"

[endpoints.incident]
method = "PUT"
path = "/incidents"

[endpoints.note]
path = "/notes"
update_method = "PUT"
update_path = "{{ target_id }}"
target_id = { header = "Location" }

[response]
target_id = { pointer = "/id" }
"#;

    /// (method, URL, the target-id rule's pointer and header).
    type Target = (String, String, Option<String>, Option<String>);

    fn target(
        url: &str,
        endpoint: Option<&str>,
        kind: &str,
        prior: Option<&str>,
    ) -> Result<Target, String> {
        let d = dest(connector("api", CONNECTOR), Some(url), endpoint);
        let v = vars(&[("school_id", "42")]);
        target_of(&d, &claimed(kind, prior), &v).map(|(m, u, t)| {
            (
                m.to_string(),
                u,
                t.and_then(|t| t.pointer.clone()),
                t.and_then(|t| t.header.clone()),
            )
        })
    }

    fn want(method: &str, url: &str, pointer: Option<&str>, header: Option<&str>) -> Target {
        (
            method.into(),
            url.into(),
            pointer.map(str::to_owned),
            header.map(str::to_owned),
        )
    }

    #[test]
    fn target_of_creates_then_updates() {
        let base = "https://api.test/v1/";
        let id = Some("/id");
        for (case, url, endpoint, kind, prior, expected) in [
            (
                "a create: the endpoint's method (POST unless given) and path",
                base,
                None,
                "visit_report",
                None,
                want("POST", "https://api.test/v1/schools/42/visits", id, None),
            ),
            (
                "an update of the record an earlier revision created",
                base,
                None,
                "visit_report",
                Some("T-7"),
                want(
                    "PATCH",
                    "https://api.test/v1/schools/42/visits/T-7",
                    id,
                    None,
                ),
            ),
            (
                "an endpoint without an update creates again",
                base,
                None,
                "incident",
                Some("T-7"),
                want("PUT", "https://api.test/v1/incidents", id, None),
            ),
            (
                "a base URL without the trailing slash",
                "https://api.test/v1",
                None,
                "incident",
                None,
                want("PUT", "https://api.test/v1/incidents", id, None),
            ),
            (
                "the destination's endpoint instead of the kind's",
                base,
                Some("incident"),
                "visit_report",
                None,
                want("PUT", "https://api.test/v1/incidents", id, None),
            ),
            (
                "vars in the destination's URL",
                "https://api.test/{{ vars.school_id }}/",
                None,
                "incident",
                None,
                want("PUT", "https://api.test/42/incidents", id, None),
            ),
            (
                "the endpoint's own target-id rule",
                base,
                Some("note"),
                "safeguarding_flag",
                None,
                want("POST", "https://api.test/v1/notes", None, Some("Location")),
            ),
            (
                "a target id that is a URL on the destination's host",
                base,
                Some("note"),
                "safeguarding_flag",
                Some("https://api.test/v1/notes/5"),
                want("PUT", "https://api.test/v1/notes/5", None, Some("Location")),
            ),
        ] {
            assert_eq!(target(url, endpoint, kind, prior), Ok(expected), "{case}");
        }
    }

    #[test]
    fn a_hostile_target_id_never_redirects_a_request() {
        let base = "https://api.test/v1/";
        // Where the update path is the id alone (an href): a path from the root or a URL on
        // the destination's host, nothing else.
        let href = |id: &str| target(base, Some("note"), "safeguarding_flag", Some(id));
        assert_eq!(
            href("/rest-v2/notes/5").map(|t| t.1),
            Ok("https://api.test/v1/rest-v2/notes/5".to_owned())
        );
        let long = format!("/{}", "a".repeat(2000));
        for (id, rule) in [
            (":18083/x", "target-id-not-a-path"),
            ("@other-host/x", "target-id-not-a-path"),
            ("//other-host/x", "target-id-not-a-path"),
            ("../x", "target-id-not-a-path"),
            ("/../x", "target-id-not-a-path"),
            ("/a/%2e%2e/x", "target-id-not-a-path"),
            ("/a/%2E./x", "target-id-not-a-path"),
            ("%2e%2e/x", "target-id-not-a-path"),
            ("?x", "target-id-not-a-path"),
            ("#x", "target-id-not-a-path"),
            ("/notes/5?admin=1", "target-id-not-a-path"),
            ("/notes/5#x", "target-id-not-a-path"),
            ("/notes/5 x", "target-id-not-a-path"),
            ("/notes/%zz", "target-id-not-a-path"),
            ("/notes/5\r\nHost: evil.test", "target-id-not-a-path"),
            ("", "target-id-not-a-path"),
            (long.as_str(), "target-id-too-long"),
            ("https://api.test:8443/v1/notes/5", "target-id-other-host"),
            ("https://other.test/v1/notes/5", "target-id-other-host"),
            ("https://api.test@other.test/x", "target-id-other-host"),
        ] {
            let err = href(id).unwrap_err();
            assert!(err.ends_with(&format!("(rule: {rule})")), "{id:?}: {err}");
            assert!(
                err.len() < 200,
                "{id:?}: the refusal quotes the id cut: {err}"
            );
            assert!(!err.contains('\r') && !err.contains('\n'), "{err}");
        }
        // Anywhere else the id is one path segment, percent-encoded: it cannot leave it.
        let segment = |id: &str| target(base, None, "visit_report", Some(id)).map(|t| t.1);
        let visits = "https://api.test/v1/schools/42/visits/";
        for (id, encoded) in [
            (":18083/x", "%3A18083%2Fx"),
            ("@other-host/x", "%40other-host%2Fx"),
            ("//other-host/x", "%2F%2Fother-host%2Fx"),
            ("../x", "..%2Fx"),
            ("?x", "%3Fx"),
            ("#x", "%23x"),
            ("%2e%2e%2fx", "%252e%252e%252fx"),
            ("T-7.v2~x_y", "T-7.v2~x_y"),
        ] {
            assert_eq!(segment(id), Ok(format!("{visits}{encoded}")), "{id:?}");
        }
        for id in ["..", ".", "%2e%2E", "a\nb", long.as_str()] {
            let err = segment(id).unwrap_err();
            assert!(err.contains("(rule: target-id-"), "{id:?}: {err}");
        }
    }

    #[test]
    fn target_of_refuses_what_it_cannot_send_to() {
        let base = "https://api.test/v1/";
        assert_eq!(
            target(base, None, "safeguarding_flag", None),
            Err("connector `api` has no endpoint for safeguarding_flag".into())
        );
        assert_eq!(
            target(
                base,
                Some("note"),
                "safeguarding_flag",
                Some("https://elsewhere.test/v1/notes/5")
            ),
            Err("the target id is a URL on another host than the destination's (rule: target-id-other-host)".into())
        );
        assert_eq!(
            target(
                base,
                Some("note"),
                "safeguarding_flag",
                Some("http://api.test/v1/notes/5")
            ),
            Err("the target id is a URL on another host than the destination's (rule: target-id-other-host)".into())
        );
        let d = dest(connector("api", CONNECTOR), Some(base), None);
        let Err(e) = target_of(&d, &claimed("visit_report", None), &vars(&[])) else {
            panic!("a school without its id made a URL");
        };
        assert!(
            e.starts_with("`/schools/{{ vars.school_id }}/visits`: "),
            "{e}"
        );
    }
}
