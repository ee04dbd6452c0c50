//! Which fields of a record are personal data, and a record's non-personal projection: its
//! canonical JSON with every personal field removed, whose SHA-256 the evidence trail carries
//! beside the content hash, so that a pseudonymised export still proves every other field.
//! Owns: [`PERSONAL_KEYS`], [`PERSONAL_SUBTREES`], [`non_personal`], [`projection_text`],
//! [`projection_hash`].
//! May not touch: pseudonyms (the audit bundle makes those from this list).

use serde_json::Value;

use super::{ContentHash, canonical_json_without};

/// Keys whose values are personal data, wherever they sit in a record: names, dates of
/// birth, UPN and MIS id, addresses and postcodes, mobiles, vehicle registrations, summaries,
/// descriptions, reasons, action owners, people seen, and everything under `extensions`.
pub const PERSONAL_KEYS: &[&str] = &[
    "given_name",
    "family_name",
    "date_of_birth",
    "upn",
    "mis_id",
    "name",
    "vehicle_registration",
    "staff_mobiles",
    "address",
    "postcode",
    "expected_to_see",
    "summary",
    "purpose_detail",
    "emergency_reason",
    "description",
    "reason",
    "unannounced_reason",
    "owner",
    "people_seen",
    "extensions",
];

/// Keys under which the keys too are personal (a school's own fields, named as it likes).
pub const PERSONAL_SUBTREES: &[&str] = &["extensions"];

fn is_personal(key: &str) -> bool {
    PERSONAL_KEYS.contains(&key)
}

/// The record with every personal key (and all beneath it) removed, at any depth.
pub fn non_personal(value: &Value) -> Value {
    super::canonical::without(value, is_personal)
}

/// The RFC 8785 text of the record's [`non_personal`] projection, written without copying it.
pub fn projection_text(value: &Value) -> String {
    canonical_json_without(value, is_personal)
}

/// SHA-256 of the record's [`projection_text`].
pub fn projection_hash(value: &Value) -> ContentHash {
    ContentHash::of_canonical(&projection_text(value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_projection_drops_personal_fields_at_any_depth_and_keeps_the_rest() {
        let record = json!({
            "kind": "visit_report", "id": "V-1", "revision": 2, "child_seen": true,
            "pupil": {"upn": "A123", "given_name": "Zara", "year_group": 3},
            "sign_out": {"address": {"lines": ["1 Road"], "postcode": "TR1 1AA"},
                          "left_school_at": "2026-01-05T09:00:00Z"},
            "actions": [{"description": "call mum", "owner": "Mr X", "due": "2026-01-06"}],
            "people_seen": [{"relationship": "mother"}],
            "extensions": {"anything": 1},
        });
        let p = non_personal(&record);
        assert_eq!(
            p,
            json!({
                "kind": "visit_report", "id": "V-1", "revision": 2, "child_seen": true,
                "pupil": {"year_group": 3},
                "sign_out": {"left_school_at": "2026-01-05T09:00:00Z"},
                "actions": [{"due": "2026-01-06"}],
            })
        );
        // A non-personal field changed changes the hash; a personal one does not.
        let mut flipped = record.clone();
        flipped["child_seen"] = json!(false);
        assert_ne!(projection_hash(&flipped), projection_hash(&record));
        assert_eq!(
            projection_text(&record),
            crate::records::canonical_json(&p),
            "written directly, the same text"
        );
        let mut renamed = record.clone();
        renamed["pupil"]["given_name"] = json!("pseudonym:0011");
        assert_eq!(projection_hash(&renamed), projection_hash(&record));
    }
}
