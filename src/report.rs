//! What intake reports back, shared by the CLI (`--format json` lines, human text) and,
//! later, the HTTP API (problem JSON): rejections, conflicts, policy exceptions, a summary.
//! Ids, pointers and rule ids only: a report never carries a name, address or description.

use std::fmt;

use serde::Serialize;

use crate::policy::{Exception, RuleId, Severity};

pub use crate::store::issues::{Conflict, Rejection};

/// A policy exception raised on an accepted record (SPEC §2, §6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExceptionReport {
    pub record_id: String,
    pub revision: u32,
    pub rule: RuleId,
    pub severity: Severity,
    pub message: String,
}

impl ExceptionReport {
    pub fn new(record_id: &str, revision: u32, e: &Exception) -> Self {
        Self {
            record_id: record_id.to_owned(),
            revision,
            rule: e.rule,
            severity: e.severity,
            message: e.message.clone(),
        }
    }
}

impl fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exception record {} revision {}: {} [{}] {}",
            self.record_id, self.revision, self.severity, self.rule, self.message
        )
    }
}

/// Counts for one run of `check` or `ingest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records taken (checked, or stored as new revisions); embedded records count apiece.
    pub accepted: u64,
    /// Submissions rejected, and files that could not be read.
    pub rejected: u64,
    /// Policy exceptions raised on accepted records.
    pub exceptions: u64,
    /// Records already stored with the same content (a no-op).
    pub unchanged: u64,
    /// Revisions kept out because a revision as high or higher is stored with other content.
    pub conflicts: u64,
}

impl Summary {
    /// Exit status 1 when anything was rejected or kept out.
    pub fn is_clean(&self) -> bool {
        self.rejected == 0 && self.conflicts == 0
    }
}

/// One line of `--format json` output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportLine<'a> {
    Rejection(&'a Rejection),
    Exception(&'a ExceptionReport),
    Conflict(&'a Conflict),
    Summary(&'a Summary),
}

/// Text from outside (a file name, a record id) as one human line: control characters
/// escaped (`\n`, `\u{1b}`), so a name cannot forge a line of the report or a terminal code.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn location(f: &mut fmt::Formatter<'_>, file: &str, line: Option<u64>) -> fmt::Result {
    let file = escaped(file);
    match line {
        Some(l) => write!(f, "{file}:{l}"),
        None => write!(f, "{file}"),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected ")?;
        location(f, &self.file, self.line)?;
        if let Some(id) = &self.record_id {
            write!(f, " record {}", escaped(id))?;
        }
        if let Some(p) = &self.path {
            write!(f, " at {}", if p.is_empty() { "(whole record)" } else { p })?;
        }
        write!(f, ": [{}] {}", self.rule, self.message)
    }
}

impl std::error::Error for Rejection {}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("conflict ")?;
        location(f, &self.file, self.line)?;
        write!(
            f,
            " record {} revision {}: [{}] {}",
            self.record_id, self.revision, self.rule, self.message
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accepted, {} rejected, {} exceptions, {} unchanged, {} conflicts",
            self.accepted, self.rejected, self.exceptions, self.unchanged, self.conflicts
        )
    }
}
