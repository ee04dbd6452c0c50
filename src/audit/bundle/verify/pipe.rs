//! A file read on its own thread and handed to `verify` in buffers, with used buffers sent
//! back to be filled again (never freed by another thread than their maker's: memory stays
//! flat), the file's SHA-256 at the end. `entries` and `records` read through one.
//! Owns: [`Pipe`], [`Outbox`], [`Reusable`]. May not touch: what a buffer holds.

use std::sync::mpsc;

use super::{VerifyFailure, fail};

/// A buffer that can be emptied and filled again.
pub(super) trait Reusable: Default + Send + 'static {
    fn clear(&mut self);
}

enum Msg<T> {
    Filled(T),
    Failed(VerifyFailure),
    /// The end of the file, with its SHA-256 (hex).
    Done(String),
}

/// The reading thread's side: where filled buffers go, and where empty ones come from.
pub(super) struct Outbox<T> {
    tx: mpsc::SyncSender<Msg<T>>,
    recycled: mpsc::Receiver<T>,
}

impl<T: Reusable> Outbox<T> {
    /// An empty buffer: a used one if any came back.
    pub(super) fn fresh(&self) -> T {
        let mut t = self.recycled.try_recv().unwrap_or_default();
        t.clear();
        t
    }

    /// Sends a filled buffer; false once `verify` has stopped listening.
    pub(super) fn send(&self, filled: T) -> bool {
        self.tx.send(Msg::Filled(filled)).is_ok()
    }
}

/// `verify`'s side.
pub(super) struct Pipe<T> {
    /// Which file, to name it when it cannot be read.
    name: &'static str,
    rx: mpsc::Receiver<Msg<T>>,
    recycle: mpsc::Sender<T>,
    hash: Option<String>,
}

impl<T: Reusable> Pipe<T> {
    /// Runs `read` on its own thread, at most `ahead` buffers ahead of `verify`. `read`
    /// returns the file's hash, or `None` when `verify` stopped listening.
    pub(super) fn spawn(
        name: &'static str,
        ahead: usize,
        read: impl FnOnce(&Outbox<T>) -> Result<Option<String>, VerifyFailure> + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(ahead);
        let (recycle, recycled) = mpsc::channel();
        std::thread::spawn(move || {
            let out = Outbox { tx, recycled };
            let msg = match read(&out) {
                Ok(Some(hash)) => Msg::Done(hash),
                Ok(None) => return,
                Err(f) => Msg::Failed(f),
            };
            let _ = out.tx.send(msg);
        });
        Self {
            name,
            rx,
            recycle,
            hash: None,
        }
    }

    /// The next filled buffer; `None` at the end of the file.
    pub(super) fn next(&mut self) -> Result<Option<T>, VerifyFailure> {
        if self.hash.is_some() {
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(Msg::Filled(t)) => Ok(Some(t)),
            Ok(Msg::Done(hash)) => {
                self.hash = Some(hash);
                Ok(None)
            }
            Ok(Msg::Failed(f)) => Err(f),
            Err(_) => Err(fail(self.name, "could not be read to its end")),
        }
    }

    /// Gives a buffer back to be filled again.
    pub(super) fn recycle(&self, used: T) {
        let _ = self.recycle.send(used);
    }

    /// The file's SHA-256 (hex), once every buffer was taken.
    pub(super) fn hash(&self) -> Result<String, VerifyFailure> {
        self.hash
            .clone()
            .ok_or_else(|| fail(self.name, "was not read to its end"))
    }
}
