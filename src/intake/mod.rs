//! Intake from files (SPEC §6): `.json` (one record or an array) and `.jsonl` (a record a
//! line), streamed so memory does not grow with the file. Yields raw JSON values, or an
//! error naming the line and rule; never panics on input, and one bad record never stops
//! the others: a record over [`MAX_RECORD_BYTES`] is skipped without being held, in either
//! format; a syntax error inside one record of a `.json` array rejects that record, a broken
//! array (a missing comma, a truncated file) ends the file, keeping what came before.
//!
//! Owns: finding files, reading bytes, JSON syntax. May not touch: validation, the store.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::records::{DuplicateKey, FieldError, Rule, parse_json_value, record_id_hint};

mod document;
use document::read_json_document;

/// The largest record accepted on one JSON line; longer lines are skipped, not buffered.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One item read from a file: a JSON value to validate, or an error.
#[derive(Debug)]
pub enum Item {
    /// One JSON-lines line or `.json` array element, not parsed yet (parsing runs in
    /// parallel; see [`parse_text`]). `line` is known for JSON lines only.
    Text {
        line: Option<u64>,
        bytes: Vec<u8>,
    },
    Value {
        line: Option<u64>,
        value: Value,
    },
    Error {
        line: Option<u64>,
        record_id: Option<String>,
        error: FieldError,
    },
}

/// The files a list of paths names: folders are walked (sorted, hidden files and other
/// extensions skipped); a file named explicitly is always returned, whatever its type.
pub fn expand_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk_dir(p, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        out.push(dir.to_path_buf());
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // Not followed: a link (to a file, or a folder loop) is listed and refused when read.
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            walk_dir(&p, out);
        } else if meta.file_type().is_symlink() || FileFormat::of(&p).is_some() {
            out.push(p);
        }
    }
}

/// What a regular file looked like at one moment (size, modification time, identity): a
/// drop file whose stamp changes while it is read is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    device: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of a regular file (a link is not followed); `None` for anything else.
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.is_file().then(|| Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// How long ago the file last changed (zero when that is unknown or in the future).
    pub fn age(&self) -> std::time::Duration {
        self.modified
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    JsonLines,
}

impl FileFormat {
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Some(Self::Json),
            Some(e) if e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson") => {
                Some(Self::JsonLines)
            }
            _ => None,
        }
    }
}

/// Reads one file, handing every item to `sink` in order. The sink may stop the reading
/// early by returning `ControlFlow::Break` (the store behind it failed).
pub fn read_file(path: &Path, sink: &mut dyn FnMut(Item) -> ControlFlow<()>) {
    let mut sink = |item| sink(item).is_continue();
    read_file_until(path, &mut sink);
}

fn read_file_until(path: &Path, sink: &mut dyn FnMut(Item) -> bool) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        sink(file_error(Rule::UnreadableFile, "no such file or folder"));
        return;
    };
    if meta.file_type().is_symlink() {
        sink(file_error(
            Rule::UnreadableFile,
            "a symbolic link: not followed (put the file itself in the folder)",
        ));
        return;
    }
    if meta.is_dir() {
        sink(file_error(Rule::UnreadableFile, "cannot read the folder"));
        return;
    }
    if !meta.is_file() {
        // A FIFO would block the run for ever; a device or socket is no record file.
        sink(file_error(
            Rule::UnreadableFile,
            "not a regular file (a FIFO, socket or device): not read",
        ));
        return;
    }
    let Some(format) = FileFormat::of(path) else {
        sink(file_error(
            Rule::UnsupportedFileType,
            "only .json (one record or an array) and .jsonl (one record a line) files are read",
        ));
        return;
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            sink(file_error(
                Rule::UnreadableFile,
                format!("cannot open the file: {}", io_reason(&e)),
            ));
            return;
        }
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    match reader.fill_buf() {
        Ok(buf) if buf.starts_with(BOM) => {
            sink(file_error(
                Rule::Utf8Bom,
                "the file starts with a UTF-8 byte order mark; save it as UTF-8 without a BOM",
            ));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            sink(file_error(
                Rule::UnreadableFile,
                format!("cannot read the file: {}", io_reason(&e)),
            ));
            return;
        }
    }
    match format {
        FileFormat::JsonLines => read_json_lines(reader, sink),
        FileFormat::Json => read_json_document(reader, sink),
    }
}

/// Reads a request body as a file of `format` would be read: each record an item, judged on
/// its own (the HTTP API's `POST /v1/records`).
pub fn read_body(format: FileFormat, body: &[u8], sink: &mut dyn FnMut(Item) -> bool) {
    if body.starts_with(BOM) {
        sink(file_error(
            Rule::Utf8Bom,
            "the body starts with a UTF-8 byte order mark; send UTF-8 without a BOM",
        ));
        return;
    }
    match format {
        FileFormat::JsonLines => read_json_lines(body, sink),
        FileFormat::Json => read_json_document(body, sink),
    }
}

fn file_error(rule: Rule, message: impl Into<String>) -> Item {
    Item::Error {
        line: None,
        record_id: None,
        error: FieldError::whole(rule, message),
    }
}

fn io_reason(e: &io::Error) -> String {
    // The kind, not the OS text with a path in it.
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a folder".into(),
        k => k.to_string(),
    }
}

fn read_json_lines(mut reader: impl BufRead, sink: &mut dyn FnMut(Item) -> bool) {
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        line_no += 1;
        let limit = (MAX_RECORD_BYTES + 1) as u64;
        let n = match (&mut reader).take(limit).read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) => {
                sink(Item::Error {
                    line: Some(line_no),
                    record_id: None,
                    error: FieldError::whole(
                        Rule::UnreadableFile,
                        format!("reading stopped: {}", io_reason(&e)),
                    ),
                });
                return;
            }
        };
        if n == 0 {
            return;
        }
        if buf.len() > MAX_RECORD_BYTES && buf.last() != Some(&b'\n') {
            sink(Item::Error {
                line: Some(line_no),
                record_id: None,
                error: FieldError::whole(
                    Rule::RecordTooLarge,
                    format!("a record is at most {MAX_RECORD_BYTES} bytes"),
                ),
            });
            if skip_line(&mut reader).is_err() {
                return;
            }
            continue;
        }
        let mut line = buf.as_slice();
        while let Some((&last, rest)) = line.split_last() {
            if last == b'\n' || last == b'\r' {
                line = rest;
            } else {
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !sink(Item::Text {
            line: Some(line_no),
            bytes: line.to_vec(),
        }) {
            return;
        }
    }
}

fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        reader.consume(n);
    }
}

/// Parses one complete JSON text: a JSON-lines line (with its line number) or an HTTP
/// request body (without).
pub fn parse_text(bytes: &[u8], line: Option<u64>) -> Item {
    match parse_json_value(bytes) {
        Ok((value, dup)) => checked(value, dup, line),
        Err(_) if std::str::from_utf8(bytes).is_err() => Item::Error {
            line,
            record_id: None,
            error: FieldError::whole(Rule::InvalidUtf8, "the text is not valid UTF-8"),
        },
        Err(e) => Item::Error {
            line: line.map(|l| l + e.line().saturating_sub(1) as u64),
            record_id: None,
            error: json_error(&e),
        },
    }
}

fn checked(value: Value, dup: Option<DuplicateKey>, line: Option<u64>) -> Item {
    match dup {
        None => Item::Value { line, value },
        Some(d) => Item::Error {
            line,
            record_id: record_id_hint(&value),
            error: FieldError::new(
                d.pointer,
                Rule::DuplicateKey,
                "a key appears twice in one object; which one is meant cannot be known",
            ),
        },
    }
}

/// A serde_json syntax error as a rule and a message (its text names no values).
fn json_error(e: &serde_json::Error) -> FieldError {
    let text = e.to_string();
    let rule = if text.contains("recursion limit") {
        Rule::NestingTooDeep
    } else if text.contains("number out of range") {
        Rule::NumberOutOfRange
    } else if text.contains("trailing characters") {
        Rule::TrailingCharacters
    } else if text.contains("unicode") || text.contains("surrogate") || text.contains("UTF-8") {
        Rule::InvalidUtf8
    } else if e.classify() == serde_json::error::Category::Io {
        Rule::UnreadableFile
    } else {
        Rule::JsonSyntax
    };
    let message = match e.classify() {
        serde_json::error::Category::Eof => {
            format!("the JSON ends too soon (truncated?): {text}")
        }
        _ if rule == Rule::NestingTooDeep => {
            format!("nested more than 128 levels deep: {text}")
        }
        _ => text,
    };
    FieldError::whole(rule, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_bytes(name: &str, bytes: &[u8]) -> Vec<Item> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut items = Vec::new();
        read_file(&path, &mut |i| {
            items.push(match i {
                Item::Text { line, bytes } => parse_text(&bytes, line),
                other => other,
            });
            ControlFlow::Continue(())
        });
        items
    }

    fn rules(items: &[Item]) -> Vec<(Option<u64>, Option<Rule>)> {
        items
            .iter()
            .map(|i| match i {
                Item::Value { line, .. } => (*line, None),
                Item::Text { line, .. } => (*line, None),
                Item::Error { line, error, .. } => (*line, Some(error.rule)),
            })
            .collect()
    }

    #[test]
    fn json_lines_keep_going_after_bad_lines() {
        let items = read_bytes(
            "a.jsonl",
            b"{\"a\":1}\n{bad\n\n{\"a\":2,\"a\":3}\r\n\xff\xfe\n[1]\n{\"a\":",
        );
        assert_eq!(
            rules(&items),
            vec![
                (Some(1), None),
                (Some(2), Some(Rule::JsonSyntax)),
                (Some(4), Some(Rule::DuplicateKey)),
                (Some(5), Some(Rule::InvalidUtf8)),
                (Some(6), None),
                (Some(7), Some(Rule::JsonSyntax)),
            ]
        );
    }

    #[test]
    fn json_array_keeps_records_before_truncation() {
        let items = read_bytes("a.json", b"[{\"a\":1},\n{\"b\":2},\n{\"c\":");
        assert_eq!(
            rules(&items),
            vec![
                (None, None),
                (None, None),
                (Some(3), Some(Rule::JsonSyntax))
            ]
        );
    }

    #[test]
    fn bom_empty_and_scalars_are_rejected() {
        assert_eq!(
            rules(&read_bytes("a.json", b"\xEF\xBB\xBF{}")),
            vec![(None, Some(Rule::Utf8Bom))]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"[]")),
            vec![(None, Some(Rule::NoRecords))]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"  ")),
            vec![(Some(1), Some(Rule::JsonSyntax))]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"\"x\"")),
            vec![(None, Some(Rule::NotAnObject))]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"{} {}")),
            vec![(None, None), (Some(1), Some(Rule::TrailingCharacters))]
        );
        assert_eq!(
            rules(&read_bytes("a.txt", b"{}")),
            vec![(None, Some(Rule::UnsupportedFileType))]
        );
        assert_eq!(
            rules(&read_bytes("a.jsonl", b"[1e999]")),
            vec![(Some(1), Some(Rule::NumberOutOfRange))]
        );
    }

    #[test]
    fn a_json_array_is_split_into_records_each_judged_alone() {
        let items = read_bytes(
            "a.json",
            b"[ {\"a\":\"x]}\\\"\"},\n{\"b\":tru},\n[1],7, \"s\" ,{\"c\":{\"d\":[]}} ]\n",
        );
        assert_eq!(
            rules(&items),
            vec![
                (None, None),
                (None, Some(Rule::JsonSyntax)),
                (None, None),
                (None, None),
                (None, None),
                (None, None),
            ]
        );
        // A broken array ends the file where it broke, keeping what came before.
        let items = read_bytes("a.json", b"[{},\n{} {}]");
        assert_eq!(
            rules(&items),
            vec![
                (None, None),
                (None, None),
                (Some(2), Some(Rule::JsonSyntax))
            ]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"[{},]")),
            vec![(None, None), (Some(1), Some(Rule::JsonSyntax))]
        );
        assert_eq!(
            rules(&read_bytes("a.json", b"x")),
            vec![(Some(1), Some(Rule::JsonSyntax))]
        );
    }

    #[test]
    fn an_oversized_record_in_a_json_file_is_skipped_not_held() {
        // One record of 2 × the cap inside an array, between two good ones; another alone.
        let mut big = b"{\"note\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2 * MAX_RECORD_BYTES));
        big.extend_from_slice(b"\"}");
        let mut data = b"[{\"a\":1},".to_vec();
        data.extend_from_slice(&big);
        data.extend_from_slice(b",{\"b\":2}]");
        let items = read_bytes("big.json", &data);
        assert_eq!(
            rules(&items),
            vec![
                (None, None),
                (None, Some(Rule::RecordTooLarge)),
                (None, None)
            ]
        );
        assert_eq!(
            rules(&read_bytes("one.json", &big)),
            vec![(None, Some(Rule::RecordTooLarge))]
        );
    }

    #[test]
    fn a_sink_can_stop_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("a.jsonl", &b"{}\n{}\n{}\n"[..]),
            ("a.json", &b"[{},{},{}]"[..]),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let mut seen = 0;
            read_file(&path, &mut |_| {
                seen += 1;
                ControlFlow::Break(())
            });
            assert_eq!(seen, 1, "{name}");
        }
    }

    #[test]
    fn overlong_line_is_skipped_not_buffered() {
        let mut data = vec![b'"'; MAX_RECORD_BYTES + 10];
        data.extend_from_slice(b"\n{\"ok\":true}\n");
        let items = read_bytes("big.jsonl", &data);
        assert_eq!(
            rules(&items),
            vec![(Some(1), Some(Rule::RecordTooLarge)), (Some(2), None)]
        );
    }
}

#[cfg(test)]
mod drop_folder_tests {
    //! What a drop folder may hold besides record files: links, FIFOs, names with control
    //! characters. None may hang a run or be read through.
    use super::*;

    fn errors_of(path: &Path) -> Vec<String> {
        let mut out = Vec::new();
        read_file(path, &mut |item| {
            if let Item::Error { error, .. } = item {
                out.push(error.message);
            }
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn links_and_fifos_are_listed_and_refused_never_followed_or_opened() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(d.join("a.jsonl"), d.join("link.jsonl")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        // A folder loop: sub/loop → the drop folder itself.
        std::os::unix::fs::symlink(d, d.join("sub/loop")).unwrap();
        let fifo = d.join("pipe.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());

        let files = expand_paths(&[d.to_path_buf()]);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.jsonl", "link.jsonl", "pipe.jsonl", "sub/loop"]);
        assert!(errors_of(&d.join("a.jsonl")).len() <= 1);
        let link = errors_of(&d.join("link.jsonl"));
        assert_eq!(link.len(), 1);
        assert!(link[0].contains("symbolic link: not followed"), "{link:?}");
        assert!(errors_of(&d.join("sub/loop"))[0].contains("symbolic link"));
        // Returns at once: a FIFO is never opened.
        let pipe = errors_of(&fifo);
        assert!(pipe[0].contains("not a regular file"), "{pipe:?}");
    }

    #[test]
    fn a_file_name_cannot_forge_a_report_line() {
        let r = crate::report::Rejection::new(
            "day\nrejected other.jsonl: [x] forged\u{1b}[2J.jsonl",
            Some(1),
            Some("id\r\nx".into()),
            FieldError::new("", Rule::JsonSyntax, "bad"),
        );
        let line = r.to_string();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains("day\\nrejected") && line.contains("\\u{1b}"),
            "{line}"
        );
        assert!(line.contains("record id\\r\\nx"), "{line}");
    }
}
