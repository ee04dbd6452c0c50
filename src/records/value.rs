//! Reading raw JSON into a `serde_json::Value` while catching what serde_json lets through:
//! duplicate keys (the last would silently win). The first duplicate's RFC 6901 pointer is
//! reported; parsing carries on so the rest of a stream stays readable.

use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Where the first duplicate key of a value was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// RFC 6901 pointer to the duplicated member.
    pub pointer: String,
}

/// Collects path segments of the first duplicate, innermost first, while unwinding.
#[derive(Default)]
struct DupTrace {
    segments: Vec<String>,
    found: bool,
}

/// Deserialises any JSON into a `Value`, noting the first duplicate key.
pub struct ValueSeed<'a> {
    trace: &'a mut DupTrace,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor { trace: self.trace })
    }
}

struct ValueVisitor<'a> {
    trace: &'a mut DupTrace,
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let before = self.trace.found;
            let Some(v) = seq.next_element_seed(ValueSeed { trace: self.trace })? else {
                break;
            };
            if !before && self.trace.found {
                self.trace.segments.push(out.len().to_string());
            }
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let before = self.trace.found;
            let v = map.next_value_seed(ValueSeed { trace: self.trace })?;
            if !before && self.trace.found {
                self.trace.segments.push(key.clone());
            }
            if out.contains_key(&key) {
                if !self.trace.found {
                    self.trace.found = true;
                    self.trace.segments.push(key);
                }
            } else {
                out.insert(key, v);
            }
        }
        Ok(Value::Object(out))
    }
}

/// Escapes one RFC 6901 reference token.
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl DupTrace {
    fn into_duplicate(self) -> Option<DuplicateKey> {
        self.found.then(|| DuplicateKey {
            pointer: self
                .segments
                .iter()
                .rev()
                .map(|s| format!("/{}", escape_pointer_token(s)))
                .collect(),
        })
    }
}

/// Parses one complete JSON text (a JSON-lines line, a request body). Valid UTF-8 is
/// checked once for the whole text, not string by string; a text that is not is parsed as
/// bytes, for serde_json's own error.
pub fn parse_json_value(bytes: &[u8]) -> Result<(Value, Option<DuplicateKey>), serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_complete(serde_json::Deserializer::from_str(text)),
        Err(_) => parse_complete(serde_json::Deserializer::from_slice(bytes)),
    }
}

fn parse_complete<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<(Value, Option<DuplicateKey>), serde_json::Error> {
    let mut trace = DupTrace::default();
    let v = ValueSeed { trace: &mut trace }.deserialize(&mut de)?;
    de.end()?;
    Ok((v, trace.into_duplicate()))
}

/// Builds a value from a map a visitor was handed (a `.json` file holding one record).
pub fn value_from_map<'de, A: MapAccess<'de>>(
    map: A,
) -> Result<(Value, Option<DuplicateKey>), A::Error> {
    let mut trace = DupTrace::default();
    let v = ValueVisitor { trace: &mut trace }.visit_map(map)?;
    Ok((v, trace.into_duplicate()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_duplicate_with_pointer() {
        let (_, dup) = parse_json_value(br#"{"a":{"b":[1,{"c":1,"c":2}]},"d":1}"#).unwrap();
        assert_eq!(dup.unwrap().pointer, "/a/b/1/c");
        let (_, dup) = parse_json_value(br#"{"a/b":1,"a/b":2}"#).unwrap();
        assert_eq!(dup.unwrap().pointer, "/a~1b");
        let (v, dup) = parse_json_value(br#"{"a":1,"b":[1,2]}"#).unwrap();
        assert!(dup.is_none());
        assert_eq!(v["b"][1], 2);
    }

    #[test]
    fn text_checked_once_for_utf8_reads_as_bytes_do() {
        let texts: [&[u8]; 10] = [
            br#"{"a":1,"b":[true,null,"x\u00e9"]}"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\ud83d\ude00","b":1e400}"#,
            br#"{"a":1} x"#,
            br#"{"a":[1,2,}"#,
            "{\"a\":\"caf\u{e9}\n\"}".as_bytes(),
            "{\"\u{1F600}\":1,\"b\":\"\u{1}\"}".as_bytes(),
            br#"{"a":"\q"}"#,
            br#"{"a":12345678901234567890123}"#,
            br#"{"a":-0.0,"b":1.50,"c":"#,
        ];
        for text in texts {
            let mut de = serde_json::Deserializer::from_slice(text);
            let mut trace = DupTrace::default();
            let as_bytes = ValueSeed { trace: &mut trace }
                .deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v));
            let ours = parse_json_value(text).map(|(v, _)| v);
            assert_eq!(
                format!("{:?}", ours),
                format!("{:?}", as_bytes),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn rejects_trailing_and_deep() {
        assert!(parse_json_value(b"{} x").is_err());
        let deep = "[".repeat(10_000);
        assert!(parse_json_value(deep.as_bytes()).is_err());
    }
}
