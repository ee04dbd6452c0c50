//! API keys for `serve` (SPEC §6): made here, shown once, kept as a public id and a hash.
//! A key reads `dsk_<id>_<secret>`: the `dsk_` prefix so it is recognised (by people and by
//! secret scanners), a 12-character public id (what `keys list`, `keys revoke` and the logs
//! name), and 256 bits of secret from the operating system. The store keeps the SHA-256 of
//! the secret (a random 256-bit secret needs no slow hash); a presented key is checked by
//! comparing hashes in constant time.
//!
//! Owns: making, reading and checking keys; what a key reaches. May not touch: HTTP, SQL.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::StoreError;
use crate::store::keys::{KeyStore, Scope, StoredKey};

/// What every key starts with.
pub const PREFIX: &str = "dsk_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key, a key of the wrong form, an unknown id or a wrong secret: one answer for all,
    /// so a caller learns nothing about which.
    #[error("no valid API key")]
    Invalid,
    #[error("API key {0} is revoked")]
    Revoked(String),
    #[error("the operating system gave no randomness: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key just made: the key to show once, and what the store keeps.
pub struct NewKey {
    pub plain: String,
    pub stored: StoredKey,
}

/// Makes a key for `trust`'s `schools`.
pub fn make(
    trust: &str,
    schools: Vec<String>,
    scope: Scope,
    name: Option<String>,
    now: &str,
) -> Result<NewKey, KeyError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id).map_err(|e| KeyError::Random(e.to_string()))?;
    getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        plain: format!("{PREFIX}{id}_{secret}"),
        stored: StoredKey {
            secret_hash: hash(&secret),
            id,
            name,
            trust: trust.to_owned(),
            schools,
            scope,
            created_at: now.to_owned(),
            last_used_at: None,
            revoked_at: None,
        },
    })
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A presented key's public id and secret, if it has the form of a key.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.trim().strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let plain = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (plain(id, ID_BYTES * 2) && plain(secret, 43)).then_some((id, secret))
}

/// Whether `secret` is the one `stored` was made with (constant time).
pub fn matches(secret: &str, stored: &StoredKey) -> bool {
    hash(secret)
        .as_bytes()
        .ct_eq(stored.secret_hash.as_bytes())
        .into()
}

impl StoredKey {
    /// Whether this key reaches `school` of `trust`.
    pub fn reaches(&self, trust: &str, school: &str) -> bool {
        self.trust == trust && self.schools.iter().any(|s| s == school)
    }
}

/// Whether a key for `schools` of `trust` can be made: the trust has a folder under
/// `mappings/` and each school is in its `trust.toml`. The error says which is not.
pub fn check_reach(
    trusts: &crate::mapping::Trusts,
    trust: &str,
    schools: &[String],
) -> Result<(), String> {
    let t = trusts
        .get(trust)
        .ok_or_else(|| format!("no trust `{trust}` (no mappings/{trust}/ folder)"))?;
    if schools.is_empty() {
        return Err("a key reaches at least one school: give --school URN".into());
    }
    for s in schools {
        if !t.file.schools.iter().any(|e| e.urn.as_str() == s) {
            return Err(format!("school {s} is not in mappings/{trust}/trust.toml"));
        }
    }
    Ok(())
}

/// The key a request presents (`Authorization: Bearer <key>`), checked against the store:
/// known, the right secret, not revoked.
pub async fn authenticate<S: KeyStore>(store: &S, presented: &str) -> Result<StoredKey, KeyError> {
    let (id, secret) = parse(presented).ok_or(KeyError::Invalid)?;
    let stored = store.key_get(id).await?.ok_or(KeyError::Invalid)?;
    if !matches(secret, &stored) {
        return Err(KeyError::Invalid);
    }
    if stored.revoked_at.is_some() {
        return Err(KeyError::Revoked(stored.id));
    }
    Ok(stored)
}

/// Keys as the store held them a moment ago, for `serve`: a request's key is checked
/// against its hash here (constant time, as ever) without a store read each time; an entry
/// older than [`KeyCache::FRESH`] is read again, so a revoked key is refused within that.
#[derive(Default)]
pub struct KeyCache {
    keys: std::sync::Mutex<std::collections::HashMap<String, (StoredKey, std::time::Instant)>>,
}

impl KeyCache {
    /// How long a key read from the store is trusted (SPEC §6: a revoked key is refused
    /// within 5 seconds).
    pub const FRESH: std::time::Duration = std::time::Duration::from_secs(2);

    /// [`authenticate`], from the cache where the key was read within [`Self::FRESH`].
    pub async fn authenticate<S: KeyStore>(
        &self,
        store: &S,
        presented: &str,
    ) -> Result<StoredKey, KeyError> {
        let (id, secret) = parse(presented).ok_or(KeyError::Invalid)?;
        let cached = self.keys.lock().ok().and_then(|keys| {
            keys.get(id)
                .filter(|(_, at)| at.elapsed() < Self::FRESH)
                .map(|(k, _)| k.clone())
        });
        let stored = match cached {
            Some(k) => k,
            None => {
                let k = store.key_get(id).await?.ok_or(KeyError::Invalid)?;
                if let Ok(mut keys) = self.keys.lock() {
                    // Only keys that exist are kept: bounded by the keys the store holds.
                    keys.insert(id.to_owned(), (k.clone(), std::time::Instant::now()));
                }
                k
            }
        };
        if !matches(secret, &stored) {
            return Err(KeyError::Invalid);
        }
        if stored.revoked_at.is_some() {
            return Err(KeyError::Revoked(stored.id));
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_and_only_its_secret_matches() {
        let k = make("celt", vec!["136401".into()], Scope::Write, None, "now").unwrap();
        assert!(k.plain.starts_with("dsk_"));
        assert!(k.plain.len() >= 4 + 12 + 1 + 43, "{}", k.plain);
        let (id, secret) = parse(&k.plain).unwrap();
        assert_eq!(id, k.stored.id);
        assert!(matches(secret, &k.stored));
        assert!(!k.stored.secret_hash.contains(secret));
        let other = make("celt", vec![], Scope::Write, None, "now").unwrap();
        let (_, other_secret) = parse(&other.plain).unwrap();
        assert!(!matches(other_secret, &k.stored));
        assert_ne!(k.stored.id, other.stored.id);
        for bad in [
            "",
            "dsk_",
            "Bearer x",
            "dsk_abc_def",
            &k.plain.replace("dsk_", "dsx_"),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_key_reaches_only_its_trusts_named_schools() {
        let k = make("celt", vec!["136401".into()], Scope::ReadOnly, None, "now").unwrap();
        assert!(k.stored.reaches("celt", "136401"));
        assert!(!k.stored.reaches("celt", "136402"));
        assert!(!k.stored.reaches("thrive", "136401"));
    }
}
