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

/// Both texts a record is hashed by, in one walk of the value: its RFC 8785 text, and that of
/// the value with every key `dropped` says left out (as [`canonical_json_without`] writes it).
pub fn canonical_json_and_without(value: &Value, dropped: Dropped) -> (String, String) {
    let mut full = String::with_capacity(2048);
    let mut kept = String::with_capacity(1024);
    write_both(value, &mut full, &mut kept, dropped);
    (full, kept)
}

/// Whether reading `value`'s canonical text back gives a value equal to it. It does unless
/// a number is not a whole number within ±2^53: JCS writes 150.0 as `150` (read back as an
/// integer) and integers beyond 2^53 as the nearest double.
pub fn reads_back_equal(value: &Value) -> bool {
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u <= EXACT_INT,
            (_, Some(i)) => i.unsigned_abs() <= EXACT_INT,
            _ => false,
        },
        Value::Array(items) => items.iter().all(reads_back_equal),
        Value::Object(map) => map.values().all(reads_back_equal),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

/// Writes `value` to `full` and, leaving out the keys `dropped` says, to `kept`. A scalar's
/// text is written once and copied; a dropped key's member goes to `full` only.
fn write_both(value: &Value, full: &mut String, kept: &mut String, dropped: Dropped) {
    match value {
        Value::Array(items) => {
            full.push('[');
            kept.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    full.push(',');
                    kept.push(',');
                }
                write_both(item, full, kept, dropped);
            }
            full.push(']');
            kept.push(']');
        }
        Value::Object(map) => {
            if map.keys().any(|k| has_astral(k)) {
                // As `write_canonical` does for each text.
                full.push_str(&jcs_by_crate(value));
                kept.push_str(&jcs_by_crate(&without(value, dropped)));
                return;
            }
            full.push('{');
            kept.push('{');
            let mut first_kept = true;
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    full.push(',');
                }
                if dropped(k) {
                    write_string(k, full);
                    full.push(':');
                    write_canonical(v, full, None);
                    continue;
                }
                if !first_kept {
                    kept.push(',');
                }
                first_kept = false;
                let start = full.len();
                write_string(k, full);
                full.push(':');
                kept.push_str(&full[start..]);
                write_both(v, full, kept, dropped);
            }
            full.push('}');
            kept.push('}');
        }
        scalar => {
            let start = full.len();
            write_canonical(scalar, full, None);
            kept.push_str(&full[start..]);
        }
    }
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
            (Some(u), _) if u <= EXACT_INT => write_u64(u, out),
            (_, Some(i)) if i.unsigned_abs() <= EXACT_INT => {
                if i < 0 {
                    out.push('-');
                }
                write_u64(i.unsigned_abs(), out);
            }
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
            if map.keys().any(|k| has_astral(k)) {
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

/// Whether a key holds a character above U+FFFF: in UTF-8, exactly those start with a byte
/// of 0xF0 or more.
fn has_astral(key: &str) -> bool {
    key.bytes().any(|b| b >= 0xF0)
}

/// Writes a whole number in decimal, without allocating.
fn write_u64(mut n: u64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Does this byte need escaping in JCS: `"`, `\` or a control character?
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte at or after `i` that needs escaping (`bytes.len()` if none).
/// Eight bytes at a time while none does: whether any byte of a word is below 0x20 or
/// equal to `"` or `\` is exact with these bit tricks (which byte is not, so the byte
/// loop finds it).
fn next_escape(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_ne_bytes(w);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = has_zero(x ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && !needs_escape(bytes[i]) {
        i += 1;
    }
    i
}

/// JCS string escaping: `"`, `\` and control characters only, `\u00xx` in lower case.
/// Runs needing no escape are copied whole.
fn write_string(s: &str, out: &mut String) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    let mut start = 0;
    loop {
        let i = next_escape(bytes, start);
        // `i` is at an ASCII byte or the end: a character boundary.
        out.push_str(&s[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0C => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
        }
        start = i + 1;
    }
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

    #[test]
    fn every_ascii_byte_at_every_place_is_escaped_as_the_reference_does() {
        for b in 0u8..0x80 {
            for at in 0..20 {
                let mut s: String = "abcdefghijklmnopqrs".into();
                s.insert(at, char::from(b));
                s.push_str("é😀");
                let v = Value::String(s);
                assert_eq!(
                    canonical_json(&v),
                    serde_json_canonicalizer::to_string(&v).unwrap(),
                    "byte {b:#x} at {at}"
                );
            }
        }
    }

    #[test]
    fn whole_numbers_at_the_edges_print_as_the_reference_does() {
        let edge = 1i64 << 53;
        let mut values: Vec<Value> = [0, 1, -1, 9, 10, -10, edge - 1, edge, edge + 1]
            .into_iter()
            .flat_map(|i| [Value::from(i), Value::from(-i)])
            .collect();
        values.extend([i64::MIN, i64::MAX].map(Value::from));
        values.extend([u64::MAX, 1 << 53, (1 << 53) + 1].map(Value::from));
        for v in values {
            assert_eq!(
                canonical_json(&v),
                serde_json_canonicalizer::to_string(&v).unwrap(),
                "{v}"
            );
        }
    }

    /// Objects whose keys are often ones `dropped_in_tests` drops.
    fn arb_json_with_dropped_keys() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            "\\PC{0,6}",
            Just("name".to_owned()),
            Just("secret".to_owned()),
            Just("x".to_owned()),
            Just("\u{1F600}".to_owned()),
        ];
        arb_json().prop_recursive(3, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn dropped_in_tests(key: &str) -> bool {
        key == "name" || key == "secret"
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_implementation(v in arb_json()) {
            prop_assert_eq!(canonical_json(&v), serde_json_canonicalizer::to_string(&v).unwrap());
        }

        #[test]
        fn a_value_said_to_read_back_equal_does(v in arb_json()) {
            let back: Value = serde_json::from_str(&canonical_json(&v)).unwrap();
            if reads_back_equal(&v) {
                prop_assert_eq!(back, v);
            }
        }

        #[test]
        fn one_walk_writes_both_texts_as_the_reference_does(v in arb_json_with_dropped_keys()) {
            let (full, kept) = canonical_json_and_without(&v, dropped_in_tests);
            let reference_kept =
                serde_json_canonicalizer::to_string(&without(&v, dropped_in_tests)).unwrap();
            prop_assert_eq!(&full, &serde_json_canonicalizer::to_string(&v).unwrap());
            prop_assert_eq!(&kept, &reference_kept);
            prop_assert_eq!(&kept, &canonical_json(&without(&v, dropped_in_tests)));
            prop_assert_eq!(&kept, &canonical_json_without(&v, dropped_in_tests));
        }
    }
}
