//! The `csv_file` transport: rows appended to CSV files (UTF-8, RFC 4180, header from the
//! mapping) under one folder per destination. Each file has a journal beside it
//! (`.<name>.journal`, one line `key offset length` per row, synced before the row), so a row
//! is written whole and never twice: after a crash a torn last row is cut off, and a row
//! whose key the journal shows complete is not written again. Cells a spreadsheet would run
//! as a formula are neutralised.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Attempt;

/// A cell a spreadsheet would take for a formula gets a leading `'`; numbers are left alone.
pub fn neutralise(cell: &str) -> String {
    let trimmed = cell.trim_start_matches([' ', '\u{a0}']);
    let risky = cell.starts_with(['\t', '\r', '\n'])
        || trimmed.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && cell.trim().parse::<f64>().is_err() {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

/// The bytes of one CSV line.
pub fn encode_row(cells: &[String]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_record(cells);
    w.into_inner().unwrap_or_default()
}

#[derive(Default)]
struct Journal {
    /// key → (offset, length) of its bytes in the file.
    rows: HashMap<String, (u64, u64)>,
}

/// One destination's folder of CSV files.
pub struct CsvTransport {
    root: PathBuf,
    bom: bool,
    journals: Mutex<HashMap<PathBuf, Journal>>,
}

impl CsvTransport {
    pub fn new(root: PathBuf, bom: bool) -> CsvTransport {
        CsvTransport {
            root,
            bom,
            journals: Mutex::new(HashMap::new()),
        }
    }

    /// Appends one row to `file` (relative to the destination's folder), unless the row of
    /// this `key` is already there. Blocking: call it off the async threads.
    pub fn append(&self, file: &str, header: &[String], cells: &[String], key: &str) -> Attempt {
        let path = self.root.join(file);
        let mut journals = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        match self.append_locked(&mut journals, &path, header, cells, key) {
            Ok(()) => Attempt::Delivered {
                target_id: Some(file.to_owned()),
                status: None,
            },
            Err(e) => Attempt::Retry {
                reason: format!("{}: {}", file, e.kind()),
                status: None,
                retry_after: None,
                response: None,
            },
        }
    }

    fn append_locked(
        &self,
        journals: &mut HashMap<PathBuf, Journal>,
        path: &Path,
        header: &[String],
        cells: &[String],
        key: &str,
    ) -> std::io::Result<()> {
        let journal_path = journal_path(path);
        let journal = match journals.entry(path.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(j) => j.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                slot.insert(recover(path, &journal_path)?)
            }
        };
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if let Some(&(offset, length)) = journal.rows.get(key)
            && offset + length <= len
        {
            return Ok(());
        }
        let row: Vec<String> = cells.iter().map(|c| neutralise(c)).collect();
        let mut bytes = Vec::new();
        if len == 0 {
            if self.bom {
                bytes.extend_from_slice("\u{feff}".as_bytes());
            }
            bytes.extend(encode_row(
                &header.iter().map(|h| neutralise(h)).collect::<Vec<_>>(),
            ));
        }
        bytes.extend(encode_row(&row));
        let mut j = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)?;
        j.write_all(format!("{key} {len} {}\n", bytes.len()).as_bytes())?;
        j.sync_data()?;
        let created = len == 0;
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        if created && let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        journal
            .rows
            .insert(key.to_owned(), (len, bytes.len() as u64));
        Ok(())
    }
}

fn journal_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.journal"))
}

/// Reads a file's journal. A last row that did not reach the file whole (a crash between the
/// journal line and the row's sync) is cut off the file and dropped from the journal.
fn recover(path: &Path, journal_path: &Path) -> std::io::Result<Journal> {
    let mut text = String::new();
    match File::open(journal_path) {
        Ok(mut f) => {
            f.read_to_string(&mut text)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
        Err(e) => return Err(e),
    }
    let mut entries: Vec<(String, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            let key = p.next()?.to_owned();
            let off = p.next()?.parse().ok()?;
            let len = p.next()?.parse().ok()?;
            Some((key, off, len))
        })
        .collect();
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let torn = text.lines().count() != entries.len() || !text.is_empty() && !text.ends_with('\n');
    if let Some(&(_, off, len)) = entries.last() {
        if off + len > file_len {
            // The row never reached the disk whole: cut it off, forget it.
            if file_len > off {
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(off)?;
                f.sync_data()?;
            }
            entries.pop();
            rewrite(journal_path, &entries)?;
        } else if torn {
            rewrite(journal_path, &entries)?;
        }
    } else if torn {
        rewrite(journal_path, &entries)?;
    }
    let mut j = Journal::default();
    for (k, off, len) in entries {
        j.rows.insert(k, (off, len));
    }
    Ok(j)
}

fn rewrite(journal_path: &Path, entries: &[(String, u64, u64)]) -> std::io::Result<()> {
    let tmp = journal_path.with_extension("journal.tmp");
    let mut f = File::create(&tmp)?;
    for (k, off, len) in entries {
        writeln!(f, "{k} {off} {len}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, journal_path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        assert_eq!(neutralise("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralise("  @SUM(A1)"), "'  @SUM(A1)");
        assert_eq!(neutralise("+44 1234"), "'+44 1234");
        assert_eq!(neutralise("\tx"), "'\tx");
        assert_eq!(neutralise("-5"), "-5");
        assert_eq!(neutralise("-1.5e3"), "-1.5e3");
        assert_eq!(neutralise("Ann-Marie"), "Ann-Marie");
    }

    #[test]
    fn a_row_is_written_once_and_a_torn_row_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let sink = CsvTransport::new(dir.path().to_path_buf(), false);
        let h = s(&["a", "b"]);
        assert!(matches!(
            sink.append("x/f.csv", &h, &s(&["1", "=2"]), "k1"),
            Attempt::Delivered { .. }
        ));
        assert!(matches!(
            sink.append("x/f.csv", &h, &s(&["1", "=2"]), "k1"),
            Attempt::Delivered { .. }
        ));
        let path = dir.path().join("x/f.csv");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\r\n1,'=2\r\n");
        // A crash after the journal line and half the row: a new process cuts it off and
        // writes the row whole when it is sent again.
        let jp = journal_path(&path);
        let mut j = OpenOptions::new().append(true).open(&jp).unwrap();
        writeln!(j, "k2 12 6").unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"3,").unwrap();
        let sink = CsvTransport::new(dir.path().to_path_buf(), false);
        sink.append("x/f.csv", &h, &s(&["3", "4"]), "k2");
        sink.append("x/f.csv", &h, &s(&["5", "6"]), "k3");
        let sink = CsvTransport::new(dir.path().to_path_buf(), false);
        sink.append("x/f.csv", &h, &s(&["3", "4"]), "k2");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a,b\r\n1,'=2\r\n3,4\r\n5,6\r\n"
        );
    }
}
