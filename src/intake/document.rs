//! A `.json` file — one record, or an array of records — split into its records without
//! parsing them, in constant memory. A structural scan (strings, escapes, nesting depth)
//! finds where each top-level value ends; each is held only up to [`MAX_RECORD_BYTES`]
//! (a longer one is skipped to its end and rejected) and parsed later, on the worker
//! threads, by [`super::parse_text`]. A syntax error inside one record rejects that record;
//! a broken structure between records (a missing comma, a truncated file) ends the file,
//! keeping what came before.
//!
//! Owns: the top-level shape of a `.json` file. May not touch: what a record holds.

use std::io::{self, BufRead};

use super::{Item, MAX_RECORD_BYTES, file_error, io_reason};
use crate::records::{FieldError, Rule};

/// How a scanned value ended.
enum Scanned {
    /// Complete; its bytes are in the buffer unless it was longer than the cap.
    Whole { too_large: bool },
    /// The file ended inside it.
    Truncated,
}

struct Scanner<R> {
    reader: R,
    /// The line the scan is on (1-based), for errors between records.
    line: u64,
}

impl<R: BufRead> Scanner<R> {
    /// The next byte that is not JSON whitespace, left unread; `None` at the end.
    fn peek_past_whitespace(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let blank = buf
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
            let n = blank.unwrap_or(buf.len());
            self.line += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            if let Some(i) = blank {
                let b = buf[i];
                self.reader.consume(i);
                return Ok(Some(b));
            }
            self.reader.consume(n);
        }
    }

    /// Consumes one JSON value starting at the next byte (which is not whitespace), copying
    /// it into `out` while it fits under the cap.
    fn take_value(&mut self, out: &mut Vec<u8>) -> io::Result<Scanned> {
        out.clear();
        let mut too_large = false;
        let mut depth = 0u64;
        let mut in_string = false;
        let mut escaped = false;
        let mut first = true;
        // A bare scalar (number, true, null…) ends at a delimiter, which it leaves unread.
        let mut scalar = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(if scalar {
                    Scanned::Whole { too_large }
                } else {
                    Scanned::Truncated
                });
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if first {
                    first = false;
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth = 1,
                        _ => scalar = true,
                    }
                    continue;
                }
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    continue;
                }
                if scalar {
                    if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n') {
                        end = Some(i);
                        break;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let n = end.unwrap_or(buf.len());
            self.line += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            if !too_large && out.len() + n <= MAX_RECORD_BYTES {
                out.extend_from_slice(&buf[..n]);
            } else if !too_large {
                too_large = true;
                // Give the memory back: the rest is only scanned.
                *out = Vec::new();
            }
            self.reader.consume(n);
            if end.is_some() {
                return Ok(Scanned::Whole { too_large });
            }
        }
    }
}

fn syntax_error(line: u64, message: &str) -> Item {
    Item::Error {
        line: Some(line),
        record_id: None,
        error: FieldError::whole(Rule::JsonSyntax, message),
    }
}

const TRUNCATED: &str = "the JSON ends too soon (truncated?)";

/// Reads a `.json` file's records, handing each to `sink` (see the module's header).
pub(super) fn read_json_document(reader: impl BufRead, sink: &mut dyn FnMut(Item) -> bool) {
    let mut scanner = Scanner { reader, line: 1 };
    if let Err(e) = scan(&mut scanner, sink) {
        sink(Item::Error {
            line: Some(scanner.line),
            record_id: None,
            error: FieldError::whole(
                Rule::UnreadableFile,
                format!("reading stopped: {}", io_reason(&e)),
            ),
        });
    }
}

fn scan<R: BufRead>(s: &mut Scanner<R>, sink: &mut dyn FnMut(Item) -> bool) -> io::Result<()> {
    let mut buf = Vec::new();
    match s.peek_past_whitespace()? {
        None => {
            sink(syntax_error(
                s.line,
                "the file is empty: a .json file holds one record or an array of records",
            ));
            return Ok(());
        }
        Some(b'{') => {
            if !take_record(s, &mut buf, sink)? {
                return Ok(());
            }
        }
        Some(b'[') => {
            s.reader.consume(1);
            if !take_array(s, &mut buf, sink)? {
                return Ok(());
            }
        }
        Some(b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            sink(Item::Error {
                line: None,
                record_id: None,
                error: FieldError::new(
                    "",
                    Rule::NotAnObject,
                    "a .json file holds one record (an object) or an array of records",
                ),
            });
            return Ok(());
        }
        Some(_) => {
            sink(syntax_error(
                s.line,
                "expected one record (an object) or an array of records",
            ));
            return Ok(());
        }
    }
    if s.peek_past_whitespace()?.is_some() {
        sink(Item::Error {
            line: Some(s.line),
            record_id: None,
            error: FieldError::whole(
                Rule::TrailingCharacters,
                "more JSON after the file's record or array",
            ),
        });
    }
    Ok(())
}

/// Takes one value as a record and hands it on; `false` when the file ends here (truncated,
/// or the sink stopped).
fn take_record<R: BufRead>(
    s: &mut Scanner<R>,
    buf: &mut Vec<u8>,
    sink: &mut dyn FnMut(Item) -> bool,
) -> io::Result<bool> {
    let start = s.line;
    let item = match s.take_value(buf)? {
        Scanned::Truncated => {
            sink(syntax_error(s.line, TRUNCATED));
            return Ok(false);
        }
        Scanned::Whole { too_large: true } => Item::Error {
            line: None,
            record_id: None,
            error: FieldError::whole(
                Rule::RecordTooLarge,
                format!(
                    "a record is at most {MAX_RECORD_BYTES} bytes (the one starting on line {start})"
                ),
            ),
        },
        Scanned::Whole { too_large: false } => Item::Text {
            line: None,
            bytes: std::mem::take(buf),
        },
    };
    Ok(sink(item))
}

/// The records of an array whose `[` was read; `false` when the file ends inside it.
fn take_array<R: BufRead>(
    s: &mut Scanner<R>,
    buf: &mut Vec<u8>,
    sink: &mut dyn FnMut(Item) -> bool,
) -> io::Result<bool> {
    let mut count = 0u64;
    loop {
        match s.peek_past_whitespace()? {
            None => {
                sink(syntax_error(s.line, TRUNCATED));
                return Ok(false);
            }
            Some(b']') if count == 0 => {
                s.reader.consume(1);
                sink(file_error(
                    Rule::NoRecords,
                    "the file holds no record: a .json file holds one record or an array of records",
                ));
                return Ok(true);
            }
            Some(b',' | b']') => {
                sink(syntax_error(s.line, "expected a record before this , or ]"));
                return Ok(false);
            }
            Some(_) => {}
        }
        if !take_record(s, buf, sink)? {
            return Ok(false);
        }
        count += 1;
        match s.peek_past_whitespace()? {
            Some(b',') => s.reader.consume(1),
            Some(b']') => {
                s.reader.consume(1);
                return Ok(true);
            }
            None => {
                sink(syntax_error(s.line, TRUNCATED));
                return Ok(false);
            }
            Some(_) => {
                sink(syntax_error(s.line, "expected , or ] after a record"));
                return Ok(false);
            }
        }
    }
}
