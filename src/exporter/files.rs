//! The exporter's output files: created owner-only (0600) under a temporary name beside
//! where they go, and put in place only once complete and once the export's `exported`
//! event is in the trail — a failed export leaves no file behind, and no file is there
//! without its event.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ExportError;

/// A file being written, removed on drop unless put in place.
pub(super) struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

fn io_err(path: &Path, e: &std::io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl PendingFile {
    pub(super) fn create(path: &Path) -> Result<Self, ExportError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, &e))?;
        Ok(Self {
            tmp,
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        match self.out.as_mut() {
            Some(out) => out.write_all(bytes).map_err(|e| io_err(&self.tmp, &e)),
            None => Ok(()),
        }
    }

    /// Flushed and synced, still under its temporary name.
    pub(super) fn complete(&mut self) -> Result<(), ExportError> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| io_err(&self.tmp, e.error()))?;
            file.sync_all().map_err(|e| io_err(&self.tmp, &e))?;
        }
        Ok(())
    }

    /// Put in place (replacing a file of that name); returns where.
    pub(super) fn place(mut self) -> Result<PathBuf, ExportError> {
        self.complete()?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, &e))?;
        self.tmp = PathBuf::new();
        Ok(self.path.clone())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.out.as_mut() {
            Some(out) => out.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// A folder for a CSV export: created owner-only if it is not there.
pub(super) fn folder(path: &Path) -> Result<(), ExportError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_err(path, &e))
}
