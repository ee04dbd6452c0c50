//! Canonical content: RFC 8785 (JCS) serialisation of a record and its SHA-256, so anyone
//! holding a record can recompute the hash the evidence trail carries.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 of a record's canonical (RFC 8785) JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of_canonical(canonical: &str) -> Self {
        Self(Sha256::digest(canonical.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The RFC 8785 canonical JSON text of a value.
pub fn canonical_json(value: &Value) -> String {
    // Serialising a `Value` cannot fail: its keys are strings and its numbers finite.
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jcs_sorts_keys_and_formats_numbers() {
        let v: Value = serde_json::from_str(r#"{"b": 1.50, "a": [true, null, "é"], "c": 1e21}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":[true,null,"é"],"b":1.5,"c":1e+21}"#);
        let h = ContentHash::of_canonical("");
        assert_eq!(
            h.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
