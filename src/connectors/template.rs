//! The small templates of connector and destination files — endpoint and look-up paths,
//! header values, token bodies — filled from a destination's `vars` (and a key, a target
//! id, a secret). One environment each way, built once: these are filled per request.
//!
//! Owns: filling those templates. May not touch: field maps (the mapping's own
//! environment, with its filters, renders those).

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};

fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env
}

/// `template` filled from `ctx`; a name it uses that `ctx` lacks is an error (a school
/// missing from a destination's `schools` must not make a path with a hole in it).
pub fn fill(template: &str, ctx: minijinja::Value) -> Result<String, String> {
    if !template.contains("{{") && !template.contains("{%") {
        return Ok(template.to_owned());
    }
    static STRICT: OnceLock<Environment<'static>> = OnceLock::new();
    STRICT
        .get_or_init(|| environment(UndefinedBehavior::Strict))
        .render_str(template, ctx)
        .map_err(|e| e.detail().unwrap_or("template failed").to_owned())
}

/// `template` filled from `ctx`, a name it lacks left empty (an optional header).
pub fn fill_or_empty(template: &str, ctx: minijinja::Value) -> String {
    if !template.contains("{{") && !template.contains("{%") {
        return template.to_owned();
    }
    static LENIENT: OnceLock<Environment<'static>> = OnceLock::new();
    LENIENT
        .get_or_init(|| environment(UndefinedBehavior::Chainable))
        .render_str(template, ctx)
        .unwrap_or_default()
}

/// A destination's `vars` as templates see them (`{{ vars.school_id }}`).
pub fn vars(vars: &std::collections::BTreeMap<String, String>) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(vars))
}
