//! Which fields of a record are personal data, and a record's non-personal projection: its
//! canonical JSON with every personal field removed, whose SHA-256 the evidence trail carries
//! beside the content hash, so that a pseudonymised export still proves every other field.
//! Owns: [`PERSONAL_KEYS`], [`PERSONAL_SUBTREES`], [`non_personal`], [`projection_text`],
//! [`projection_hash`].
//! May not touch: pseudonyms (the audit bundle makes those from this list).

use serde_json::Value;

use super::canonical::canonical_json_and_without;
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

/// Whether `key` is one of [`PERSONAL_KEYS`] (a `match`, the list's own order aside, so the
/// compiler compares lengths first: it runs on every key of every record).
fn is_personal(key: &str) -> bool {
    matches!(
        key,
        "given_name"
            | "family_name"
            | "date_of_birth"
            | "upn"
            | "mis_id"
            | "name"
            | "vehicle_registration"
            | "staff_mobiles"
            | "address"
            | "postcode"
            | "expected_to_see"
            | "summary"
            | "purpose_detail"
            | "emergency_reason"
            | "description"
            | "reason"
            | "unannounced_reason"
            | "owner"
            | "people_seen"
            | "extensions"
    )
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

/// The record's canonical text and its [`projection_text`], written in one walk.
pub fn canonical_and_projection_text(value: &Value) -> (String, String) {
    canonical_json_and_without(value, is_personal)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
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
        assert_eq!(
            canonical_and_projection_text(&record),
            (
                crate::records::canonical_json(&record),
                projection_text(&record)
            ),
            "one walk, the same two texts"
        );
        let mut renamed = record.clone();
        renamed["pupil"]["given_name"] = json!("pseudonym:0011");
        assert_eq!(projection_hash(&renamed), projection_hash(&record));
    }

    #[test]
    fn is_personal_says_exactly_the_list() {
        for key in PERSONAL_KEYS {
            assert!(is_personal(key), "{key}");
        }
        for key in [
            "",
            "kind",
            "Name",
            "name ",
            "names",
            "upn2",
            "extension",
            "id",
            "owners",
        ] {
            assert!(!is_personal(key), "{key}");
        }
    }

    proptest! {
        #[test]
        fn the_one_walk_projection_is_the_canonical_text_of_the_projection(
            keys in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(PERSONAL_KEYS.to_vec()).prop_map(str::to_owned),
                    "\\PC{0,8}",
                ],
                0..12,
            ),
            depth in 0usize..3,
        ) {
            // Nested objects and arrays whose keys are often personal.
            let mut v = serde_json::json!({"kind": "visit_report", "n": 1});
            for (i, k) in keys.iter().enumerate() {
                let leaf = if i % 3 == 0 { json!([i, {"name": "x", k.clone(): [true]}]) } else { json!(format!("v{i}\u{1}")) };
                let mut inner = leaf;
                for d in 0..depth {
                    inner = json!({k.clone(): inner, "d": d});
                }
                v[k.as_str()] = inner;
            }
            let (full, projection) = canonical_and_projection_text(&v);
            prop_assert_eq!(full, crate::records::canonical_json(&v));
            prop_assert_eq!(&projection, &crate::records::canonical_json(&non_personal(&v)));
            prop_assert_eq!(&projection, &projection_text(&v));
            prop_assert_eq!(
                &projection,
                &serde_json_canonicalizer::to_string(&non_personal(&v)).unwrap()
            );
        }
    }
}
