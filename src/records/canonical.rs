//! Canonical content: RFC 8785 (JCS) serialisation of a record and its SHA-256, so anyone
//! holding a record can recompute the hash the evidence trail carries.
//!
//! Records are mostly ASCII keys, strings and small integers, for which JCS output is
//! plain compact JSON with sorted keys; that path is written directly (it is the hot path
//! of intake). Anything else — fractions, integers beyond 2^53, non-ASCII keys whose
//! UTF-16 order differs — goes through `serde_json_canonicalizer`, and a property test
//! checks the two agree.

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
    let mut out = String::with_capacity(2048);
    write_canonical(value, &mut out, None);
    out
}

/// Which object keys to leave out (with everything beneath them), at any depth.
pub type Dropped = fn(&str) -> bool;

/// The RFC 8785 text of `value` with every key `dropped` says (and what it holds) left out,
/// at any depth — written directly, without copying the value.
pub fn canonical_json_without(value: &Value, dropped: Dropped) -> String {
    let mut out = String::with_capacity(2048);
    write_canonical(value, &mut out, Some(dropped));
    out
}

/// A copy of `value` with every key `dropped` says left out, at any depth.
pub fn without(value: &Value, dropped: Dropped) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !dropped(k))
                .map(|(k, v)| (k.clone(), without(v, dropped)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| without(v, dropped)).collect()),
        other => other.clone(),
    }
}

/// Integers within ±2^53 print the same in JCS (ECMAScript numbers) as in plain JSON.
const EXACT_INT: u64 = 1 << 53;

fn write_canonical(value: &Value, out: &mut String, dropped: Option<Dropped>) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u <= EXACT_INT => out.push_str(&u.to_string()),
            (_, Some(i)) if i.unsigned_abs() <= EXACT_INT => out.push_str(&i.to_string()),
            _ => out.push_str(&jcs_by_crate(value)),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out, dropped);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's map iterates in UTF-8 byte order; JCS wants UTF-16 code unit
            // order. They agree unless a key holds characters above U+FFFF.
            if map.keys().any(|k| k.chars().any(|c| c as u32 > 0xFFFF)) {
                match dropped {
                    Some(d) => out.push_str(&jcs_by_crate(&without(value, d))),
                    None => out.push_str(&jcs_by_crate(value)),
                }
                return;
            }
            out.push('{');
            let mut first = true;
            for (k, v) in map {
                if dropped.is_some_and(|d| d(k)) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(k, out);
                out.push(':');
                write_canonical(v, out, dropped);
            }
            out.push('}');
        }
    }
}

/// JCS string escaping: `"`, `\` and control characters only, `\u00xx` in lower case.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            0x00..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn jcs_by_crate(value: &Value) -> String {
    // Serialising a `Value` cannot fail: keys are strings and numbers finite.
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn jcs_sorts_keys_and_formats_numbers() {
        let v: Value = serde_json::from_str(
            r#"{"b": 1.50, "a": [true, null, "é\u0001\n"], "c": 1e21, "d": -7}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":[true,null,"é\u0001\n"],"b":1.5,"c":1e+21,"d":-7}"#
        );
        let h = ContentHash::of_canonical("");
        assert_eq!(
            h.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x7f]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_implementation(v in arb_json()) {
            prop_assert_eq!(canonical_json(&v), serde_json_canonicalizer::to_string(&v).unwrap());
        }
    }
}
