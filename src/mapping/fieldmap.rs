//! Field maps (`mappings/<trust>/maps/<name>.toml`): how a stored record becomes a target's
//! request body (a JSON value tree) or a CSV row. Never string concatenation of JSON: a body is
//! built value by value, and a field that is not mapped is not sent.
//!
//! A value in a map is one of:
//! - a string: a `minijinja` text template over the record (`"Visit {{ id }}"`);
//! - `{ field = "visit.arrived_at" }`: the record's own value at that path, typed, with
//!   optional `format` (strftime, in the school's time zone), `map` (a value map),
//!   `default`, `required`, `omit_empty`, `max_chars` (a longer text is cut to fit, ending
//!   with [`CUT_MARKER`]);
//! - `{ template = "...", omit_empty = true }`: a template whose empty result is left out;
//! - `{ const = ... }`: a constant; numbers and booleans are constants as they stand;
//! - a table or an array: built from its members.
//!
//! Owns: parsing and rendering maps. May not touch: HTTP, files, the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::MappingError;

/// Where a map's values are looked up: `map = "NAME"` names a table of the map file's
/// `[values]` or of the trust's `codes.toml`.
pub type ValueMaps = BTreeMap<String, BTreeMap<String, Value>>;

/// Ends a text cut to a target's limit (`max_chars`), so a reader knows there is more.
pub const CUT_MARKER: &str = "… [truncated]";

#[derive(Debug, Clone)]
pub enum Spec {
    Template {
        name: String,
        omit_empty: bool,
        max_chars: Option<usize>,
    },
    Field {
        path: Vec<String>,
        format: Option<String>,
        map: Option<String>,
        default: Option<Value>,
        required: bool,
        omit_empty: bool,
        max_chars: Option<usize>,
    },
    Const(Value),
    Object(Vec<(String, Spec)>),
    Array(Vec<Spec>),
}

/// What a map builds.
#[derive(Debug, Clone)]
pub enum Shape {
    /// A JSON request body.
    Body(Spec),
    /// A CSV row: (header, cell) in column order.
    Columns(Vec<(String, Spec)>),
}

#[derive(Debug, Clone)]
pub struct FieldMap {
    pub name: String,
    pub file: PathBuf,
    pub shape: Shape,
    pub values: ValueMaps,
}

/// A map's output for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    Body(Value),
    Row {
        header: Vec<String>,
        cells: Vec<String>,
    },
}

/// Why a record could not be rendered: the map, the output path and the reason. Never the
/// value itself, which may be personal data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("map `{map}` at `{path}`: {reason}")]
pub struct RenderError {
    pub map: String,
    pub path: String,
    pub reason: String,
}

/// Everything a render needs besides the map: the record merged with `exceptions`,
/// `destination` and `attendance_code`, and the school's clock.
pub struct RenderInput<'a> {
    pub context: &'a Value,
    pub time_zone: chrono_tz::Tz,
    pub codes: &'a ValueMaps,
    pub templates: &'a Environment<'static>,
}

impl FieldMap {
    /// Reads one map file, adding its templates to `env` under `<map>:<path>`.
    pub fn load(
        path: &Path,
        name: &str,
        env: &mut Environment<'static>,
    ) -> Result<FieldMap, MappingError> {
        let table: toml::Table = super::trust::read_toml(path)?;
        let invalid = |key: &str, reason: String| MappingError::Invalid {
            path: path.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        let mut loader = Loader {
            map: name,
            env,
            invalid: &invalid,
        };
        let mut body = None;
        let mut columns = None;
        let mut values = ValueMaps::new();
        for (key, value) in &table {
            match key.as_str() {
                "body" => body = Some(loader.spec("body", value)?),
                "column" => {
                    let toml::Value::Array(items) = value else {
                        return Err(invalid(
                            "column",
                            "must be an array of tables ([[column]])".into(),
                        ));
                    };
                    let mut cols = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("column[{i}]");
                        let t = item
                            .as_table()
                            .ok_or_else(|| invalid(&at, "must be a table".into()))?;
                        let header = t
                            .get("header")
                            .and_then(|h| h.as_str())
                            .ok_or_else(|| invalid(&at, "needs `header`, a string".into()))?;
                        let v = t
                            .get("value")
                            .ok_or_else(|| invalid(&at, "needs `value`".into()))?;
                        if let Some(k) =
                            t.keys().find(|k| !matches!(k.as_str(), "header" | "value"))
                        {
                            return Err(invalid(&format!("{at}.{k}"), "unknown key".into()));
                        }
                        cols.push((header.to_owned(), loader.spec(&format!("{at}.value"), v)?));
                    }
                    columns = Some(cols);
                }
                "values" => values = value_maps(value, "values", &invalid)?,
                other => {
                    return Err(invalid(
                        other,
                        "unknown key (expected body, column or values)".into(),
                    ));
                }
            }
        }
        let shape = match (body, columns) {
            (Some(b), None) => Shape::Body(b),
            (None, Some(c)) => Shape::Columns(c),
            _ => {
                return Err(invalid(
                    "(file)",
                    "a map has exactly one of [body] (JSON) or [[column]] (CSV)".into(),
                ));
            }
        };
        if let Some(codes) = values.get("attendance") {
            check_attendance(codes, "values.attendance", &invalid)?;
        }
        Ok(FieldMap {
            name: name.to_owned(),
            file: path.to_path_buf(),
            shape,
            values,
        })
    }

    fn has_templates(&self) -> bool {
        match &self.shape {
            Shape::Body(s) => s.has_templates(),
            Shape::Columns(c) => c.iter().any(|(_, s)| s.has_templates()),
        }
    }

    /// Value maps this map names that exist neither here nor in `codes`.
    pub fn missing_value_maps(&self, codes: &ValueMaps) -> Vec<String> {
        let mut names = Vec::new();
        match &self.shape {
            Shape::Body(s) => s.value_maps(&mut names),
            Shape::Columns(c) => c.iter().for_each(|(_, s)| s.value_maps(&mut names)),
        }
        names.retain(|n| !self.values.contains_key(n) && !codes.contains_key(n));
        names
    }

    pub fn render(&self, input: &RenderInput<'_>) -> Result<Rendered, RenderError> {
        let r = Renderer {
            map: self,
            input,
            // Converted only for maps that have templates.
            context: if self.has_templates() {
                minijinja::Value::from(minijinja::value::Serde(input.context))
            } else {
                minijinja::Value::UNDEFINED
            },
        };
        match &self.shape {
            Shape::Body(spec) => Ok(Rendered::Body(
                r.value(spec, "")?.unwrap_or(Value::Object(Map::new())),
            )),
            Shape::Columns(cols) => {
                let mut header = Vec::with_capacity(cols.len());
                let mut cells = Vec::with_capacity(cols.len());
                for (i, (h, spec)) in cols.iter().enumerate() {
                    header.push(h.clone());
                    let v = r.value(spec, &format!("/column/{i}"))?;
                    cells.push(match v {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s,
                        Some(other) => other.to_string(),
                    });
                }
                Ok(Rendered::Row { header, cells })
            }
        }
    }
}

/// The trust's `codes.toml`: value maps shared by every map, of which `attendance` (the
/// `absence_reason` → statutory code table) is checked against the August 2024 list.
pub fn load_codes(path: &Path) -> Result<ValueMaps, MappingError> {
    if !path.is_file() {
        return Ok(ValueMaps::new());
    }
    let value: toml::Value = super::trust::read_toml(path)?;
    let invalid = |key: &str, reason: String| MappingError::Invalid {
        path: path.to_path_buf(),
        key: key.to_owned(),
        reason,
    };
    let maps = value_maps(&value, "", &invalid)?;
    if let Some(codes) = maps.get("attendance") {
        check_attendance(codes, "attendance", &invalid)?;
    }
    Ok(maps)
}

fn check_attendance(
    codes: &BTreeMap<String, Value>,
    at: &str,
    invalid: &dyn Fn(&str, String) -> MappingError,
) -> Result<(), MappingError> {
    for (reason, code) in codes {
        let key = format!("{at}.{reason}");
        let Some(code) = code.as_str() else {
            return Err(invalid(&key, "an attendance code is a string".into()));
        };
        if let Some(problem) = super::codes::attendance_code_problem(code) {
            return Err(invalid(&key, problem));
        }
    }
    Ok(())
}

fn value_maps(
    value: &toml::Value,
    at: &str,
    invalid: &dyn Fn(&str, String) -> MappingError,
) -> Result<ValueMaps, MappingError> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    let toml::Value::Table(t) = value else {
        return Err(invalid(at, "must be a table of value maps".into()));
    };
    let mut maps = ValueMaps::new();
    for (name, table) in t {
        let toml::Value::Table(entries) = table else {
            return Err(invalid(
                &join(name),
                "a value map is a table of `from = to`".into(),
            ));
        };
        let mut m = BTreeMap::new();
        for (from, to) in entries {
            let to = serde_json::to_value(to)
                .map_err(|e| invalid(&format!("{}.{from}", join(name)), e.to_string()))?;
            m.insert(from.clone(), to);
        }
        maps.insert(name.clone(), m);
    }
    Ok(maps)
}

struct Loader<'a> {
    map: &'a str,
    env: &'a mut Environment<'static>,
    invalid: &'a dyn Fn(&str, String) -> MappingError,
}

impl Loader<'_> {
    fn template(
        &mut self,
        at: &str,
        source: &str,
        omit_empty: bool,
        max_chars: Option<usize>,
    ) -> Result<Spec, MappingError> {
        let name = format!("{}:{at}", self.map);
        self.env
            .add_template_owned(name.clone(), source.to_owned())
            .map_err(|e| {
                (self.invalid)(
                    at,
                    format!("template: {}", e.detail().unwrap_or("syntax error")),
                )
            })?;
        Ok(Spec::Template {
            name,
            omit_empty,
            max_chars,
        })
    }

    fn spec(&mut self, at: &str, value: &toml::Value) -> Result<Spec, MappingError> {
        let invalid = self.invalid;
        match value {
            toml::Value::String(s) => self.template(at, s, false, None),
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    out.push(self.spec(&format!("{at}[{i}]"), v)?);
                }
                Ok(Spec::Array(out))
            }
            toml::Value::Table(t) if t.contains_key("field") => {
                let mut path = Vec::new();
                let mut format = None;
                let mut map = None;
                let mut default = None;
                let mut required = false;
                let mut omit_empty = false;
                let mut max_chars = None;
                for (k, v) in t {
                    let key = format!("{at}.{k}");
                    match k.as_str() {
                        "field" => {
                            let f = v.as_str().filter(|f| !f.is_empty()).ok_or_else(|| {
                                invalid(
                                    &key,
                                    "a dotted path into the record, e.g. `pupil.upn`".into(),
                                )
                            })?;
                            path = f.split('.').map(str::to_owned).collect();
                        }
                        "format" => {
                            let f = v
                                .as_str()
                                .ok_or_else(|| invalid(&key, "a strftime string".into()))?;
                            if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
                                return Err(invalid(&key, "not a valid strftime format".into()));
                            }
                            format = Some(f.to_owned());
                        }
                        "map" => {
                            map = Some(
                                v.as_str()
                                    .ok_or_else(|| invalid(&key, "the name of a value map".into()))?
                                    .to_owned(),
                            )
                        }
                        "default" => {
                            default = Some(
                                serde_json::to_value(v)
                                    .map_err(|e| invalid(&key, e.to_string()))?,
                            )
                        }
                        "required" => {
                            required = v
                                .as_bool()
                                .ok_or_else(|| invalid(&key, "true or false".into()))?
                        }
                        "omit_empty" => {
                            omit_empty = v
                                .as_bool()
                                .ok_or_else(|| invalid(&key, "true or false".into()))?
                        }
                        "max_chars" => {
                            max_chars = Some(parse_max_chars(v).map_err(|r| invalid(&key, r))?)
                        }
                        _ => {
                            return Err(invalid(
                                &key,
                                "unknown key (field, format, map, default, required, omit_empty, max_chars)"
                                    .into(),
                            ));
                        }
                    }
                }
                Ok(Spec::Field {
                    path,
                    format,
                    map,
                    default,
                    required,
                    omit_empty,
                    max_chars,
                })
            }
            toml::Value::Table(t) if t.contains_key("template") => {
                let source = t["template"]
                    .as_str()
                    .ok_or_else(|| invalid(at, "`template` is a string".into()))?;
                let mut omit_empty = false;
                let mut max_chars = None;
                for (k, v) in t {
                    match k.as_str() {
                        "template" => {}
                        "omit_empty" => {
                            omit_empty = v.as_bool().ok_or_else(|| {
                                invalid(&format!("{at}.{k}"), "true or false".into())
                            })?
                        }
                        "max_chars" => {
                            max_chars = Some(
                                parse_max_chars(v).map_err(|r| invalid(&format!("{at}.{k}"), r))?,
                            )
                        }
                        _ => {
                            return Err(invalid(
                                &format!("{at}.{k}"),
                                "unknown key (template, omit_empty, max_chars)".into(),
                            ));
                        }
                    }
                }
                self.template(at, source, omit_empty, max_chars)
            }
            toml::Value::Table(t) if t.contains_key("const") => {
                if t.len() != 1 {
                    return Err(invalid(at, "`const` stands alone".into()));
                }
                Ok(Spec::Const(
                    serde_json::to_value(&t["const"]).map_err(|e| invalid(at, e.to_string()))?,
                ))
            }
            toml::Value::Table(t) => {
                let mut members = Vec::with_capacity(t.len());
                for (k, v) in t {
                    members.push((k.clone(), self.spec(&format!("{at}.{k}"), v)?));
                }
                Ok(Spec::Object(members))
            }
            other => Ok(Spec::Const(
                serde_json::to_value(other).map_err(|e| invalid(at, e.to_string()))?,
            )),
        }
    }
}

impl Spec {
    fn has_templates(&self) -> bool {
        match self {
            Spec::Template { .. } => true,
            Spec::Object(members) => members.iter().any(|(_, s)| s.has_templates()),
            Spec::Array(items) => items.iter().any(Spec::has_templates),
            Spec::Field { .. } | Spec::Const(_) => false,
        }
    }

    fn value_maps(&self, out: &mut Vec<String>) {
        match self {
            Spec::Field { map: Some(m), .. } => out.push(m.clone()),
            Spec::Object(members) => members.iter().for_each(|(_, s)| s.value_maps(out)),
            Spec::Array(items) => items.iter().for_each(|s| s.value_maps(out)),
            _ => {}
        }
    }
}

/// A `max_chars` value: room for the marker and a word at least.
fn parse_max_chars(v: &toml::Value) -> Result<usize, String> {
    let min = CUT_MARKER.chars().count() as i64 + 1;
    v.as_integer()
        .filter(|n| (min..=1_000_000).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| format!("a number of characters from {min} to 1000000"))
}

/// `text` in at most `max` characters: cut, ending with [`CUT_MARKER`], when longer.
///
/// Length is counted in UTF-16 code units, as .NET and SQL Server targets (SIMS, Ed-Fi)
/// count it: the same as characters for most text, and never less, so a text that fits
/// by this count fits by any.
pub fn cut(text: &str, max: usize) -> String {
    let units = |s: &str| s.encode_utf16().count();
    if units(text) <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub(units(CUT_MARKER));
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        if used + c.len_utf16() > room {
            break;
        }
        used += c.len_utf16();
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out.push_str(CUT_MARKER);
    out
}

struct Renderer<'a> {
    map: &'a FieldMap,
    input: &'a RenderInput<'a>,
    /// The context converted once for every template of the map.
    context: minijinja::Value,
}

impl Renderer<'_> {
    fn error(&self, path: &str, reason: impl Into<String>) -> RenderError {
        RenderError {
            map: self.map.name.clone(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_owned()
            },
            reason: reason.into(),
        }
    }

    /// `None`: left out of the output.
    fn value(&self, spec: &Spec, path: &str) -> Result<Option<Value>, RenderError> {
        match spec {
            Spec::Const(v) => Ok(Some(v.clone())),
            Spec::Template {
                name,
                omit_empty,
                max_chars,
            } => {
                let t = self
                    .input
                    .templates
                    .get_template(name)
                    .map_err(|e| self.error(path, e.to_string()))?;
                let text = t
                    .render(&self.context)
                    .map_err(|e| self.error(path, template_error(&e)))?;
                let text = match max_chars {
                    Some(max) => cut(&text, *max),
                    None => text,
                };
                Ok((!(text.is_empty() && *omit_empty)).then_some(Value::String(text)))
            }
            Spec::Field {
                path: field,
                format,
                map,
                default,
                required,
                omit_empty,
                max_chars,
            } => {
                let found = lookup(self.input.context, field)
                    .filter(|v| !v.is_null())
                    .cloned();
                let Some(mut v) = found.or_else(|| default.clone()) else {
                    return if *required {
                        Err(self.error(
                            path,
                            format!("required field `{}` is missing", field.join(".")),
                        ))
                    } else {
                        Ok(None)
                    };
                };
                if let Some(fmt) = format {
                    v = Value::String(self.format(&v, fmt, path)?);
                }
                if let Some(name) = map {
                    v = self.mapped(&v, name, path)?;
                }
                if *omit_empty && (v == Value::String(String::new()) || v.is_null()) {
                    return Ok(None);
                }
                if let (Some(max), Value::String(text)) = (max_chars, &v) {
                    v = Value::String(cut(text, *max));
                }
                Ok(Some(v))
            }
            Spec::Object(members) => {
                let mut out = Map::with_capacity(members.len());
                for (k, s) in members {
                    let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                    if let Some(v) = self.value(s, &p)? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            Spec::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, s) in items.iter().enumerate() {
                    if let Some(v) = self.value(s, &format!("{path}/{i}"))? {
                        out.push(v);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
        }
    }

    fn format(&self, v: &Value, fmt: &str, path: &str) -> Result<String, RenderError> {
        let s = v
            .as_str()
            .ok_or_else(|| self.error(path, "`format` applies to a date or a date-time"))?;
        format_time(s, fmt, self.input.time_zone)
            .ok_or_else(|| self.error(path, "`format` applies to a date or a date-time"))
    }

    fn mapped(&self, v: &Value, name: &str, path: &str) -> Result<Value, RenderError> {
        let table = self
            .map
            .values
            .get(name)
            .or_else(|| self.input.codes.get(name))
            .ok_or_else(|| self.error(path, format!("no value map `{name}`")))?;
        let key = match v {
            Value::String(s) => s.clone(),
            Value::Bool(_) | Value::Number(_) => v.to_string(),
            _ => {
                return Err(self.error(
                    path,
                    format!("value map `{name}` takes a string, number or boolean"),
                ));
            }
        };
        table
            .get(&key)
            .or_else(|| table.get("_default"))
            .cloned()
            .ok_or_else(|| {
                self.error(
                    path,
                    format!("value map `{name}` has no entry for `{key}` and no `_default`"),
                )
            })
    }
}

/// An RFC 3339 date-time in the school's time zone, or a plain date, by a strftime format.
/// `None` when it is neither, or when the format asks a date for a time (`%H` of a date).
pub fn format_time(s: &str, fmt: &str, tz: chrono_tz::Tz) -> Option<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let written = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        write!(out, "{}", t.with_timezone(&tz).format(fmt))
    } else {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        // chrono reports a time item it cannot fill as a formatting error; `to_string`
        // would panic on it.
        write!(out, "{}", d.format(fmt))
    };
    written.ok().map(|()| out)
}

fn lookup<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A template error without the rendered text: its kind and detail name the variable, never
/// a value.
fn template_error(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("template: {}: {d}", e.kind()),
        None => format!("template: {}", e.kind()),
    }
}

/// The template environment a trust's maps share: strict about undefined values, with the
/// `local(format)` filter (a date-time in the school's time zone, read from `time_zone`) and
/// `session` (AM before noon local time, else PM).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter(
        "local",
        |state: &minijinja::State,
         value: String,
         fmt: String|
         -> Result<String, minijinja::Error> {
            let tz = zone_of(state);
            if StrftimeItems::new(&fmt).any(|i| matches!(i, Item::Error)) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "`local` needs a valid strftime format",
                ));
            }
            format_time(&value, &fmt, tz).ok_or_else(|| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "`local` applies to a date or a date-time",
                )
            })
        },
    );
    env.add_filter(
        "session",
        |state: &minijinja::State, value: String| -> Result<String, minijinja::Error> {
            let tz = zone_of(state);
            let t = DateTime::parse_from_rfc3339(&value).map_err(|_| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "`session` applies to a date-time",
                )
            })?;
            let hour = t.with_timezone(&tz).format("%H").to_string();
            Ok(if hour.as_str() < "12" { "AM" } else { "PM" }.to_owned())
        },
    );
    env
}

fn zone_of(state: &minijinja::State) -> chrono_tz::Tz {
    state
        .lookup("time_zone")
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(chrono_tz::Europe::London)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_local_and_a_date_never_panics_on_a_time_format() {
        let tz = chrono_tz::Europe::London;
        assert_eq!(
            format_time("2026-06-17T23:20:00Z", "%Y-%m-%d %H:%M", tz).as_deref(),
            Some("2026-06-18 00:20")
        );
        assert_eq!(
            format_time("2026-03-02", "%d/%m/%Y", tz).as_deref(),
            Some("02/03/2026")
        );
        assert_eq!(format_time("2026-03-02", "%H:%M", tz), None);
        assert_eq!(format_time("yesterday", "%d", tz), None);
    }

    #[test]
    fn a_long_text_is_cut_to_max_chars_with_the_marker() {
        assert_eq!(cut("short", 20), "short");
        let long = "é".repeat(600);
        let c = cut(&long, 500);
        assert_eq!(c.chars().count(), 500);
        assert!(c.ends_with(CUT_MARKER));
        assert!(c.starts_with("éé"));
        // Counted as .NET counts: an emoji is two UTF-16 units.
        let c = cut(&"👍".repeat(300), 255);
        assert!(
            c.encode_utf16().count() <= 255,
            "{}",
            c.encode_utf16().count()
        );
        assert!(c.ends_with(CUT_MARKER));
        // Trailing space before the marker is dropped.
        let c = cut(&format!("{} {}", "a".repeat(486), "b".repeat(100)), 500);
        assert!(c.ends_with(&format!("a{CUT_MARKER}")), "{c}");
    }
}
