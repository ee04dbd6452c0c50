//! One writer per SQLite store: an exclusive advisory lock on `<store>.lock` beside it, held
//! by a `sync` or `ingest` for its whole run, so that a second one started by cron while
//! the first is still running waits (or gives up) and never touches the first one's
//! deliveries. Readers (`status`, `deadletter list`, `audit export`) take no lock.
//!
//! Owns: the lock file. May not touch: the database.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held while this process writes to the store; dropping it lets the next writer in.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path}: another doorstep sync or ingest is writing to this store; gave up after \
         waiting {waited} s (pass --wait SECONDS to wait longer)"
    )]
    Busy { path: PathBuf, waited: u64 },
    #[error("{path}: cannot lock the store: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// The lock file of the store at `db`: `<db>.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the store's writer lock, waiting up to `wait` for another writer to finish.
pub fn lock_writer(db: &Path, wait: Duration) -> Result<WriterLock, LockError> {
    let path = lock_path(db);
    let io = |e: std::io::Error| LockError::Io {
        path: path.clone(),
        reason: e.kind().to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(WriterLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(LockError::Busy {
                        path: db.to_path_buf(),
                        waited: waited.as_secs(),
                    });
                }
                std::thread::sleep((wait - waited).min(Duration::from_millis(100)));
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_waits_then_gives_up_and_gets_in_once_the_first_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("var/d.db");
        let first = lock_writer(&db, Duration::ZERO).unwrap();
        let started = Instant::now();
        let e = lock_writer(&db, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("--wait SECONDS"), "{e}");
        drop(first);
        lock_writer(&db, Duration::ZERO).unwrap();
        assert!(lock_path(&db).ends_with("d.db.lock"));
    }
}
