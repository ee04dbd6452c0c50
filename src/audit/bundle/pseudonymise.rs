//! Personal data in a bundle: which keys hold it, the keyed pseudonyms `export` writes in its
//! place, and the check by which `verify` finds a personal value left plain.
//! Owns: [`PSEUDONYM_PREFIX`], the pseudonym key (never written); which keys are personal is
//! `records::personal`'s, so that a pseudonym stands only where the projection removes. May not
//! touch: files, the store or the trail; `export` and `verify` call it, it calls neither.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::ExportError;
use crate::records::personal::{PERSONAL_KEYS, PERSONAL_SUBTREES};

/// What every pseudonym starts with.
pub const PSEUDONYM_PREFIX: &str = "pseudonym:";

/// How much of a value is personal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Personal {
    No,
    /// Every value beneath (strings, numbers, booleans).
    Values,
    /// Every value and every key beneath.
    KeysAndValues,
}

impl Personal {
    /// What a child under `key` is.
    fn under(self, key: &str) -> Personal {
        if self == Personal::KeysAndValues || PERSONAL_SUBTREES.contains(&key) {
            Personal::KeysAndValues
        } else if self == Personal::Values || PERSONAL_KEYS.contains(&key) {
            Personal::Values
        } else {
            Personal::No
        }
    }
}

/// Keyed pseudonyms, consistent within one export; the key is never written.
pub(super) struct Pseudonymiser {
    /// HMAC-SHA-256 keyed with a fresh random key, cloned for each value.
    mac: Hmac<Sha256>,
}

impl Pseudonymiser {
    pub(super) fn new() -> Result<Self, ExportError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| ExportError::Io {
            path: PathBuf::from("(randomness)"),
            reason: "no randomness available for the pseudonym key".into(),
        })?;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|_| ExportError::Io {
            path: PathBuf::from("(randomness)"),
            reason: "the pseudonym key was refused".into(),
        })?;
        Ok(Self { mac })
    }

    fn pseudonym(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        format!(
            "{PSEUDONYM_PREFIX}{}",
            &hex::encode(mac.finalize().into_bytes())[..16]
        )
    }

    /// Replaces every value under a personal key (strings, numbers and booleans), and under
    /// `extensions` every key too.
    pub(super) fn scrub(&self, v: &mut Value, personal: bool) {
        let p = if personal {
            Personal::Values
        } else {
            Personal::No
        };
        self.scrub_as(v, p);
    }

    fn scrub_as(&self, v: &mut Value, personal: Personal) {
        match v {
            Value::Object(m) => {
                let entries = std::mem::take(m);
                for (k, mut child) in entries {
                    let p = personal.under(&k);
                    self.scrub_as(&mut child, p);
                    let key = if personal == Personal::KeysAndValues {
                        self.pseudonym(&k)
                    } else {
                        k
                    };
                    m.insert(key, child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.scrub_as(i, personal)),
            Value::String(s) if personal != Personal::No => *s = self.pseudonym(s),
            Value::Number(n) if personal != Personal::No => {
                *v = Value::String(self.pseudonym(&n.to_string()));
            }
            Value::Bool(b) if personal != Personal::No => {
                *v = Value::String(self.pseudonym(&b.to_string()));
            }
            _ => {}
        }
    }
}

/// The first personal field of a record that does not hold a pseudonym (or, under
/// `extensions`, a key that is not one).
pub(super) fn plain_personal_field(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String, personal: Personal) -> Option<String> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, c)| {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                let found =
                    if personal == Personal::KeysAndValues && !k.starts_with(PSEUDONYM_PREFIX) {
                        Some(path.clone())
                    } else {
                        walk(c, path, personal.under(k))
                    };
                path.truncate(len);
                found
            }),
            Value::Array(items) => items.iter().find_map(|i| walk(i, path, personal)),
            Value::String(s) if personal != Personal::No && !s.starts_with(PSEUDONYM_PREFIX) => {
                Some(path.clone())
            }
            Value::Number(_) | Value::Bool(_) if personal != Personal::No => Some(path.clone()),
            _ => None,
        }
    }
    walk(v, &mut String::new(), Personal::No)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every personal value goes — `people_seen` whole, `extensions` keys and values — and
    /// verify's check finds any left plain.
    #[test]
    fn people_seen_and_extensions_are_pseudonymised_keys_included() {
        let mut record = json!({
            "id": "V-1",
            "child_seen": true,
            "people_seen": [{"relationship": "mother", "parental_responsibility": true}],
            "extensions": {"social_worker": {"name": "A. Person", "visits": 3}},
            "pupil": {"given_name": "Zara", "year_group": 3},
        });
        assert_eq!(
            plain_personal_field(&record).as_deref(),
            Some("/extensions/social_worker")
        );
        let p = Pseudonymiser::new().unwrap();
        p.scrub(&mut record, false);
        let text = record.to_string();
        for leak in ["mother", "social_worker", "A. Person", "Zara", "visits"] {
            assert!(!text.contains(leak), "{leak} left in {text}");
        }
        assert_eq!(record["id"], "V-1");
        assert_eq!(record["child_seen"], true, "not personal: kept");
        assert_eq!(record["pupil"]["year_group"], 3);
        assert_eq!(plain_personal_field(&record), None, "{text}");
        // One plain value slipped back in is found, by its path.
        record["people_seen"][0]["relationship"] = "father".into();
        assert_eq!(
            plain_personal_field(&record).as_deref(),
            Some("/people_seen/relationship")
        );
    }
}
