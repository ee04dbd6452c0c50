//! Reading the project's TOML files (the deployment config, a trust's `trust.toml`,
//! `policy.toml`, `routes.toml`, maps, connector files, mapping test cases) and the one error
//! type they share: which file, and where in it.
//!
//! Owns: reading a file, TOML syntax errors made safe to print. A leaf: imports nothing of
//! the crate, so every module may use it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A TOML file that cannot be read, is not valid TOML of the expected shape, or holds a
/// value its reader refuses. Every variant names the file; `Invalid` names the key too.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl FileError {
    /// A value the reader refuses, at `key` of `path`.
    pub fn invalid(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The file's text; the error names the file and the kind of failure (never its contents).
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| FileError::Read {
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    })
}

/// `text` (read from `path`) as a `T`; a syntax or shape error is made safe by [`message`].
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError::Parse {
        path: path.to_path_buf(),
        message: message(text, &e),
    })
}

/// A TOML error as "line L: message", without the source line or any quoted value (it may
/// be a secret written inline by mistake).
pub fn message(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::new();
    let mut in_quote = false;
    for c in e.message().trim_end().chars() {
        match c {
            '"' if in_quote => {
                in_quote = false;
                message.push_str("…\"");
            }
            '"' => {
                in_quote = true;
                message.push('"');
            }
            _ if in_quote => {}
            '\n' => message.push_str(" | "),
            c => message.push(c),
        }
    }
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            // The key on that line (never its value), when the line is `key = value`.
            let line_text = text.lines().nth(line - 1).unwrap_or_default();
            match line_text.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() => {
                    format!("line {line}, key `{}`: {message}", key.trim())
                }
                _ => format!("line {line}: {message}"),
            }
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_names_the_line_and_key_but_never_the_value() {
        let text = "a = 1\nsecret = \"hunter2\" x\n";
        let e = parse::<toml::Value>(Path::new("f.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml: line 2"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = read(Path::new("/nonexistent/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/x.toml: cannot read: "), "{e}");
    }
}
