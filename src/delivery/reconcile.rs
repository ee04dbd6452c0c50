//! A create whose answer was lost — sent, and then a timeout, a dropped connection, or a
//! run stopped while it was in flight — may exist at the target. Before it is sent again,
//! the endpoint's `lost_answer` decides: `resend` where the target makes no duplicate,
//! `reconcile` (read what the target has, match it against the create's body — a
//! reference doorstep wrote into the record — and adopt the id found), or `check` (a dead
//! letter naming rule `needs-check`, never a silent duplicate).
//!
//! Owns: finding what a lost create made. May not touch: sending the create, the store.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::connectors::http::HttpTransport;
use crate::connectors::{Attempt, Endpoint, LostAnswer, Reconcile};
use crate::store::rules::NEEDS_CHECK;

use super::destinations::Dest;

/// The dead letter of a create that may exist where the target offers no way to find it.
fn needs_check(dest: &Dest) -> Attempt {
    Attempt::Permanent {
        reason: format!(
            "an earlier attempt of this create got no answer and may have made the record; \
             connector `{}` offers no way to find it: check the target, then `doorstep \
             deadletter replay` sends it again (rule: {NEEDS_CHECK})",
            dest.connector.name
        ),
        status: None,
        response: None,
    }
}

/// Before a create that may exist at the target is sent again: `Ok(None)` send it,
/// `Ok(Some(id))` it is there as `id`, `Err` what the attempt comes to instead.
pub(super) async fn before_resending(
    dest: &Dest,
    endpoint: &Endpoint,
    transport: &HttpTransport,
    body: &Value,
    vars: &BTreeMap<String, String>,
) -> Result<Option<String>, Attempt> {
    match (dest.connector.lost_answer(endpoint), &endpoint.reconcile) {
        (LostAnswer::Resend, _) => Ok(None),
        (LostAnswer::Reconcile, Some(spec)) => find(dest, transport, spec, body, vars).await,
        (LostAnswer::Check | LostAnswer::Reconcile, _) => Err(needs_check(dest)),
    }
}

/// The target's id for what an earlier attempt of this create made, if the target has it.
async fn find(
    dest: &Dest,
    transport: &HttpTransport,
    spec: &Reconcile,
    body: &Value,
    vars: &BTreeMap<String, String>,
) -> Result<Option<String>, Attempt> {
    let permanent = |reason: String| Attempt::Permanent {
        reason,
        status: None,
        response: None,
    };
    let ctx = minijinja::context! {
        vars => crate::connectors::template::vars(vars),
        body => minijinja::Value::from(minijinja::value::Serde(body)),
    };
    let path = crate::connectors::template::fill(&spec.path, ctx)
        .map_err(|reason| permanent(format!("reconcile path: {reason}")))?;
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(permanent(
            "reconcile path must be a path on the destination's host".into(),
        ));
    }
    let base = dest.base_url(vars).map_err(permanent)?;
    let page = transport.get(&format!("{base}{path}"), vars).await?;
    let items = if spec.items.is_empty() {
        Some(&page)
    } else {
        page.pointer(&spec.items)
    };
    let items: &[Value] = match items {
        Some(Value::Array(a)) => a,
        _ => &[],
    };
    Ok(items
        .iter()
        .find(|item| matches(item, body, spec))
        .and_then(|item| match item.pointer(&spec.value)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }))
}

/// Every pair of the spec holds equal, present values in the item and the body.
fn matches(item: &Value, body: &Value, spec: &Reconcile) -> bool {
    spec.match_fields.iter().all(|(at_item, at_body)| {
        match (item.pointer(at_item), body.pointer(at_body)) {
            (Some(a), Some(b)) => !a.is_null() && a == b,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_item_matches_when_every_pair_is_equal_and_present() {
        let spec = Reconcile {
            path: "/x".into(),
            items: "/notes".into(),
            match_fields: BTreeMap::from([
                ("/summary".into(), "/request/note/summary".into()),
                ("/student/href".into(), "/request/note/student/href".into()),
            ]),
            value: "/href".into(),
        };
        let body = json!({"request": {"note": {"summary": "Visit [doorstep v-1 r1]", "student": {"href": "/s/12"}}}});
        let same = json!({"summary": "Visit [doorstep v-1 r1]", "student": {"href": "/s/12"}, "href": "/n/1"});
        let other_revision =
            json!({"summary": "Visit [doorstep v-1 r2]", "student": {"href": "/s/12"}});
        let other_pupil =
            json!({"summary": "Visit [doorstep v-1 r1]", "student": {"href": "/s/13"}});
        assert!(matches(&same, &body, &spec));
        assert!(!matches(&other_revision, &body, &spec));
        assert!(!matches(&other_pupil, &body, &spec));
        assert!(
            !matches(&json!({}), &json!({}), &spec),
            "absent is not equal"
        );
    }
}
