//! Updates that carry only what changed (`update_body = "changed"`, Arbor's PUT to an
//! href): the fields of the object at the endpoint's `fields_at`, each hashed whole as the
//! target received it, compared with what the target has from the last delivered revision.
//! A field the new revision drops is sent as `null`; when nothing changed no request is made.
//!
//! Owns: field hashes and the changed-only body. May not touch: sending, the store.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::store::deliveries::SentFields;

/// Each field of the object at `at` in `body`, as the SHA-256 of its JSON; `None` when
/// there is no object there.
pub(super) fn field_hashes(body: &Value, at: &str) -> Option<SentFields> {
    let object = body.pointer(at)?.as_object()?;
    Some(
        object
            .iter()
            .map(|(k, v)| {
                let text = serde_json::to_vec(v).unwrap_or_default();
                (k.clone(), hex::encode(Sha256::digest(&text)))
            })
            .collect(),
    )
}

/// `body` with the object at `at` holding only the fields whose hash differs from
/// `before` (and `null` for fields `before` has and `body` no longer does); `None` when
/// nothing differs.
pub(super) fn only_changed(
    body: &Value,
    at: &str,
    now: &SentFields,
    before: &SentFields,
) -> Option<Value> {
    let object = body.pointer(at)?.as_object()?;
    let mut kept = Map::new();
    for (k, v) in object {
        if before.get(k) != now.get(k) {
            kept.insert(k.clone(), v.clone());
        }
    }
    for k in before.keys().filter(|k| !now.contains_key(*k)) {
        kept.insert(k.clone(), Value::Null);
    }
    if kept.is_empty() {
        return None;
    }
    let mut out = body.clone();
    *out.pointer_mut(at)? = Value::Object(kept);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AT: &str = "/request/pastoralNote";

    fn note(summary: &str, content: Option<&str>) -> Value {
        let mut n = json!({
            "student": {"entityType": "Student", "href": "/rest-v2/students/12"},
            "summary": summary,
            "noteDate": "2026-05-12",
        });
        if let Some(c) = content {
            n["content"] = c.into();
        }
        json!({"request": {"pastoralNote": n}})
    }

    #[test]
    fn only_the_fields_that_changed_are_sent() {
        let first = note("Seen.", Some("All well."));
        let before = field_hashes(&first, AT).unwrap();
        let second = note("Seen again.", Some("All well."));
        let now = field_hashes(&second, AT).unwrap();
        assert_eq!(
            only_changed(&second, AT, &now, &before).unwrap(),
            json!({"request": {"pastoralNote": {"summary": "Seen again."}}})
        );
        // A field dropped is cleared; nothing changed: nothing to send.
        let third = note("Seen.", None);
        let dropped = field_hashes(&third, AT).unwrap();
        assert_eq!(
            only_changed(&third, AT, &dropped, &before).unwrap(),
            json!({"request": {"pastoralNote": {"content": null}}})
        );
        assert_eq!(only_changed(&first, AT, &before, &before), None);
        // A reference changed is sent whole.
        let mut moved = first.clone();
        moved["request"]["pastoralNote"]["student"]["href"] = "/rest-v2/students/13".into();
        let m = field_hashes(&moved, AT).unwrap();
        assert_eq!(
            only_changed(&moved, AT, &m, &before).unwrap(),
            json!({"request": {"pastoralNote": {"student": {"entityType": "Student", "href": "/rest-v2/students/13"}}}})
        );
    }

    #[test]
    fn no_object_at_the_pointer_means_no_hashes() {
        assert_eq!(field_hashes(&json!({"a": 1}), "/request/x"), None);
        assert_eq!(field_hashes(&json!([1]), ""), None);
        assert_eq!(field_hashes(&json!({"a": 1}), "").unwrap().len(), 1);
    }
}
