//! The drop folder as `sync` takes it: which files are ready (still for `[intake]
//! settle_seconds` before they are read, unchanged while they are read), and filing each away
//! afterwards. Filing renames first; across file systems the copy is written under a hidden
//! name, synced, renamed into place and removed on any failure, so a full disk leaves the drop
//! file where it was and nothing half-written beside it.
//!
//! Owns: listing, settling and filing drop files. May not touch: reading them (intake's).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::intake::{FileStamp, expand_paths};
use crate::report::{Rejection, ReportLine};

/// A drop file as listed: what it looked like before it was read.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: PathBuf,
    /// `None` for what is not a regular file (refused when read, never moved).
    stamp: Option<FileStamp>,
}

impl Listed {
    /// A regular file whose size, time and identity are what they were when listed: what
    /// was read is the whole file.
    pub fn unchanged(&self) -> bool {
        self.stamp.is_some() && FileStamp::of(&self.path) == self.stamp
    }

    pub fn is_regular(&self) -> bool {
        self.stamp.is_some()
    }
}

/// The drop folder's files to read, in order, and those left for the next run.
#[derive(Debug, Default)]
pub struct Ready {
    pub files: Vec<Listed>,
    /// Files still being written: changed while watched.
    pub left: Vec<PathBuf>,
}

/// Lists the drop folder. When a file changed less than `settle` ago, waits until the
/// youngest has been still that long, then leaves any that changed meanwhile.
pub async fn list_settled(drop_dir: &Path, settle: Duration) -> Ready {
    let files: Vec<Listed> = expand_paths(&[drop_dir.to_path_buf()])
        .into_iter()
        .map(|path| Listed {
            stamp: FileStamp::of(&path),
            path,
        })
        .collect();
    let young = |f: &Listed| f.stamp.is_some_and(|s| s.age() < settle);
    let watched: Vec<bool> = files.iter().map(young).collect();
    let Some(age) = files.iter().filter_map(|f| f.stamp).map(|s| s.age()).min() else {
        return Ready {
            files,
            left: Vec::new(),
        };
    };
    if age >= settle {
        return Ready {
            files,
            left: Vec::new(),
        };
    }
    tracing::info!(
        wait_ms = (settle - age).as_millis() as u64,
        "waiting for drop files changed within settle_seconds to settle"
    );
    tokio::time::sleep(settle - age).await;
    let mut ready = Ready::default();
    for (f, watched) in files.into_iter().zip(watched) {
        if watched && !f.unchanged() {
            ready.left.push(f.path);
        } else {
            ready.files.push(f);
        }
    }
    ready
}

/// Moves an ingested file out of the drop folder, named with the time it was taken so
/// nothing is overwritten; a file with rejections gets its report beside it. On failure the
/// drop file stays where it was and nothing is left half-written in `dir`.
pub fn file_away(
    file: &Path,
    dir: &Path,
    rejections: Option<&[Rejection]>,
) -> Result<PathBuf, String> {
    let fail = |what: &str, path: &Path, e: io::Error| {
        format!(
            "{}: {what} {}: {} (left in the drop folder)",
            file.display(),
            path.display(),
            e.kind()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", dir, e))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = free_name(dir, &format!("{stamp}-{name}"));
    let report = rejections.map(|rejections| {
        let mut text = String::new();
        for r in rejections {
            text.push_str(&serde_json::to_string(&ReportLine::Rejection(r)).unwrap_or_default());
            text.push('\n');
        }
        (
            PathBuf::from(format!("{}.rejections.jsonl", target.display())),
            text,
        )
    });
    if let Some((path, text)) = &report {
        place_durably(path, |out| out.write_all(text.as_bytes()))
            .map_err(|e| fail("cannot write", path, e))?;
    }
    let moved = match std::fs::rename(file, &target) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => place_durably(&target, |out| {
            io::copy(&mut File::open(file)?, out).map(|_| ())
        })
        .map_err(|e| fail("cannot copy to", dir, e))
        .and_then(|()| {
            std::fs::remove_file(file).map_err(|e| {
                format!(
                    "{}: copied to {} but cannot be removed: {} (the next run finds it unchanged)",
                    file.display(),
                    target.display(),
                    e.kind()
                )
            })
        }),
        Err(e) => Err(fail("cannot move to", dir, e)),
        Ok(()) => {
            sync_folder(dir);
            Ok(())
        }
    };
    if moved.is_err()
        && !target.exists()
        && let Some((path, _)) = &report
    {
        // No report without its file.
        let _ = std::fs::remove_file(path);
    }
    moved.map(|()| target)
}

/// `dir/name`, or `dir/name-2`, `-3`… when that is taken (two names that read alike once
/// made readable, taken in the same microsecond).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let mut target = dir.join(name);
    let mut n = 2;
    while std::fs::symlink_metadata(&target).is_ok() {
        target = dir.join(format!("{name}-{n}"));
        n += 1;
    }
    target
}

/// Writes a new file at `target` all or nothing: under a hidden name in the same folder,
/// synced, then renamed into place; the hidden file is removed if any step fails.
fn place_durably(target: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hidden = dir.join(format!(".{name}.partial"));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&hidden)?;
        fill(&mut out)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&hidden, target)
    })();
    match result {
        Ok(()) => {
            sync_folder(dir);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&hidden);
            Err(e)
        }
    }
}

/// Makes a rename in `dir` durable (best effort: not every file system can sync a folder).
fn sync_folder(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FieldError, Rule};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_file_with_rejections_is_filed_with_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("day.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        let r = Rejection::new(
            "day.jsonl",
            Some(1),
            None,
            FieldError::new("/kind", Rule::MissingField, "x"),
        );
        let moved = file_away(&file, &dir.path().join("rejected"), Some(&[r])).unwrap();
        assert!(!file.exists() && moved.exists());
        let report = std::fs::read_to_string(format!("{}.rejections.jsonl", moved.display()));
        let report = report.unwrap();
        assert!(report.contains("\"kind\":\"rejection\""), "{report}");
        assert_eq!(report.lines().count(), 1);
    }

    #[test]
    fn a_write_that_fails_midway_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.jsonl");
        let err = place_durably(&target, |out| {
            out.write_all(b"half a file")?;
            Err(io::Error::from(io::ErrorKind::StorageFull))
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        place_durably(&target, |out| out.write_all(b"whole")).unwrap();
        assert_eq!(names(dir.path()), ["copy.jsonl"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
    }

    #[test]
    fn a_failed_move_leaves_the_drop_file_and_no_report() {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir(&drop).unwrap();
        let file = drop.join("day.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        // A "folder" that is a file: nothing can be created inside it.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "").unwrap();
        let err = file_away(&file, &blocked.join("rejected"), Some(&[])).unwrap_err();
        assert!(err.contains("left in the drop folder"), "{err}");
        assert!(file.exists());
        // A folder the move cannot reach: the report written first is taken back.
        let rejected = dir.path().join("rejected");
        std::fs::create_dir(&rejected).unwrap();
        let gone = drop.join("gone.jsonl");
        assert!(file_away(&gone, &rejected, Some(&[])).is_err());
        assert!(names(&rejected).is_empty(), "{:?}", names(&rejected));
    }

    #[tokio::test]
    async fn a_file_changed_after_listing_is_seen_as_changed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("day.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        let ready = list_settled(dir.path(), Duration::ZERO).await;
        assert_eq!(ready.files.len(), 1);
        assert!(ready.files[0].unchanged());
        // Appended to while (say) it was being read.
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{}\n").unwrap();
        assert!(!ready.files[0].unchanged());
        // Replaced by another file of the same size under the same name.
        let ready = list_settled(dir.path(), Duration::ZERO).await;
        let other = dir.path().join("other");
        std::fs::write(&other, "{}\n{}\n").unwrap();
        std::fs::rename(&other, &file).unwrap();
        assert!(!ready.files[0].unchanged());
    }

    #[test]
    fn names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        assert_eq!(free_name(dir.path(), "a"), dir.path().join("a-2"));
        assert_eq!(free_name(dir.path(), "b"), dir.path().join("b"));
    }

    #[test]
    fn across_file_systems_the_copy_is_whole_and_the_drop_file_goes() {
        // /dev/shm is a tmpfs on Linux: another file system than the temp folder's.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(dir.path()) {
            return;
        }
        let file = dir.path().join("day.jsonl");
        std::fs::write(&file, "{\"a\":1}\n").unwrap();
        let moved = file_away(&file, shm.path(), None).unwrap();
        assert!(!file.exists());
        assert_eq!(std::fs::read(&moved).unwrap(), b"{\"a\":1}\n");
        assert_eq!(names(shm.path()).len(), 1, "{:?}", names(shm.path()));
    }
}
