//! The `csv_file` transport: rows appended to CSV files (UTF-8, RFC 4180, header from the
//! mapping) under one folder per destination. Each file has a journal beside it
//! (`.<name>.journal`, one line `key offset length` per row, synced before the row), so a row
//! is written whole and never twice: after a crash a torn last row is cut off, and a row
//! whose key the journal shows complete is not written again. Several processes (instances
//! sharing a PostgreSQL store) may write one folder: each append holds an exclusive lock on
//! `.<name>.lock` beside the file and reads the journal again if another process wrote to it
//! meanwhile, so a row is still written once, whole, whichever instance holds its delivery.
//! Cells a spreadsheet would run as a formula are neutralised.

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
    /// The journal file's length when last read or written by this process: a different
    /// length means another process appended, and the journal is read again.
    len: u64,
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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Held until the row is written: another process's append waits here.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_file_name(format!(".{}.lock", file_name(path))))?;
        lock.lock()?;
        let on_disk = std::fs::metadata(&journal_path).map_or(0, |m| m.len());
        let journal = match journals.entry(path.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(j) if j.get().len == on_disk => {
                j.into_mut()
            }
            std::collections::hash_map::Entry::Occupied(mut j) => {
                *j.get_mut() = recover(path, &journal_path)?;
                j.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
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
        let line = format!("{key} {len} {}\n", bytes.len());
        j.write_all(line.as_bytes())?;
        j.sync_data()?;
        journal.len += line.len() as u64;
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
        drop(lock);
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn journal_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{}.journal", file_name(path)))
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
    let mut j = Journal {
        len: std::fs::metadata(journal_path).map_or(0, |m| m.len()),
        ..Journal::default()
    };
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

    /// Two writers on one folder (as two instances sharing a PostgreSQL store: each its own
    /// transport and journal cache), appending the same keys at once from several threads:
    /// every row once, whole, and the journal agrees with the file.
    #[test]
    fn two_writers_on_one_folder_write_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            std::sync::Arc::new(CsvTransport::new(dir.path().to_path_buf(), false)),
            std::sync::Arc::new(CsvTransport::new(dir.path().to_path_buf(), false)),
        );
        let h = s(&["key", "value"]);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let sink = if t % 2 == 0 { a.clone() } else { b.clone() };
                let h = h.clone();
                scope.spawn(move || {
                    for i in 0..200 {
                        let key = format!("k{i}");
                        let got = sink.append("f.csv", &h, &s(&[&key, "v"]), &key);
                        assert!(matches!(got, Attempt::Delivered { .. }), "{got:?}");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(dir.path().join("f.csv")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "key,value");
        let mut rows: Vec<&str> = lines[1..].to_vec();
        assert_eq!(rows.len(), 200, "each key once");
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), 200);
        let journal = recover(
            &dir.path().join("f.csv"),
            &journal_path(&dir.path().join("f.csv")),
        )
        .unwrap();
        assert_eq!(journal.rows.len(), 200);
    }
}
