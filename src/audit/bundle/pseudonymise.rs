//! Personal data in a bundle: which keys hold it, the keyed pseudonyms `export` writes in its
//! place, and the check by which `verify` finds a personal value left plain.
//! Owns: [`PSEUDONYM_PREFIX`], the personal keys, the pseudonym key (never written). May not
//! touch: files, the store or the trail; `export` and `verify` call it, it calls neither.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::ExportError;

/// What every pseudonym starts with.
pub const PSEUDONYM_PREFIX: &str = "pseudonym:";

/// Keys whose values are personal data, wherever they sit in a record.
const PERSONAL_KEYS: &[&str] = &[
    "given_name",
    "family_name",
    "date_of_birth",
    "upn",
    "mis_id",
    "name",
    "vehicle_registration",
    "staff_mobiles",
    "address",
    "expected_to_see",
    "summary",
    "purpose_detail",
    "emergency_reason",
    "description",
    "reason",
    "unannounced_reason",
    "owner",
    "extensions",
];

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

    /// Replaces every string (and number) under a personal key.
    pub(super) fn scrub(&self, v: &mut Value, personal: bool) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    let p = personal || PERSONAL_KEYS.contains(&k.as_str());
                    self.scrub(child, p);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.scrub(i, personal)),
            Value::String(s) if personal => *s = self.pseudonym(s),
            Value::Number(n) if personal => *v = Value::String(self.pseudonym(&n.to_string())),
            _ => {}
        }
    }
}

/// The first personal field of a record that does not hold a pseudonym.
pub(super) fn plain_personal_field(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String, personal: bool) -> Option<String> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, c)| {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                let found = walk(c, path, personal || PERSONAL_KEYS.contains(&k.as_str()));
                path.truncate(len);
                found
            }),
            Value::Array(items) => items.iter().find_map(|i| walk(i, path, personal)),
            Value::String(s) if personal && !s.starts_with(PSEUDONYM_PREFIX) => Some(path.clone()),
            Value::Number(_) if personal => Some(path.clone()),
            _ => None,
        }
    }
    walk(v, &mut String::new(), false)
}
