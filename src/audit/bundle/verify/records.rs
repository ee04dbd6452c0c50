//! `records.json`, read on its own thread while `verify` checks entries: the file hashed as
//! it is read, its records handed over in batches in file order — by lines when it is in the
//! layout `export` writes, else parsed as a stream — through a `pipe::Pipe`, so used batches
//! are filled again and memory stays flat.
//! Owns: [`RecordStream`], [`Batch`], [`HashingReader`]. May not touch: what a record is
//! checked against (the parent's `check_record`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::pipe::{Outbox, Pipe, Reusable};
use super::{VerifyFailure, fail, open};

/// Records' texts in one buffer, one after another.
#[derive(Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(super) fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }
}

impl Reusable for Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// `records.json`, read and hashed on its own thread, taken a record at a time in file order.
pub(super) struct RecordStream {
    pipe: Pipe<Batch>,
    /// Batches received, each with the next record to take from it.
    ready: VecDeque<(Batch, usize)>,
}

/// Records sent at once by the records thread.
const RECORD_BATCH: usize = 512;

impl RecordStream {
    pub(super) fn spawn(dir: &Path) -> Result<Self, VerifyFailure> {
        let file = open(dir, "records.json")?;
        let pipe = Pipe::spawn("records.json", 2, move |out| {
            let mut reader = HashingReader {
                inner: BufReader::with_capacity(1 << 20, file),
                hash: Sha256::new(),
            };
            read_records(&mut reader, out)?;
            Ok(Some(hex::encode(reader.hash.finalize())))
        });
        Ok(Self {
            pipe,
            ready: VecDeque::new(),
        })
    }

    /// Up to `n` next records into `out` (fewer only at the end of the file).
    pub(super) fn take(&mut self, n: usize, out: &mut Batch) -> Result<(), VerifyFailure> {
        Reusable::clear(out);
        while out.len() < n {
            if let Some((batch, next)) = self.ready.front_mut() {
                while *next < batch.len() && out.len() < n {
                    out.push(batch.get(*next));
                    *next += 1;
                }
                if *next == batch.len()
                    && let Some((used, _)) = self.ready.pop_front()
                {
                    self.pipe.recycle(used);
                }
                continue;
            }
            match self.pipe.next()? {
                Some(batch) => self.ready.push_back((batch, 0)),
                None => break,
            }
        }
        Ok(())
    }

    /// Whether records are left over, and the file's hash.
    pub(super) fn finish(mut self) -> Result<(bool, String), VerifyFailure> {
        let mut one = Batch::default();
        self.take(1, &mut one)?;
        let extra = !one.is_empty();
        // Past a left-over record, read on to the end for the hash.
        while let Some(batch) = self.pipe.next()? {
            self.pipe.recycle(batch);
        }
        Ok((extra, self.pipe.hash()?))
    }
}

/// Sends a full batch and puts an empty one in its place; false once `verify` stopped.
fn send(out: &Outbox<Batch>, batch: &mut Batch) -> bool {
    let full = std::mem::replace(batch, out.fresh());
    out.send(full)
}

/// A reader that hashes what passes through it.
pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            self.hash.update(&buf[..amt.min(buf.len())]);
        }
        self.inner.consume(amt);
    }
}

/// Sends every record of the array in order. As `export` writes it — `[`, one record a
/// line, `]` — its lines are the records, found without parsing (each is then checked
/// against its content hash, which only the exact canonical text meets); any other layout of
/// a JSON array (a re-formatted file) is parsed as a stream.
fn read_records<R: BufRead>(
    reader: &mut HashingReader<R>,
    out: &Outbox<Batch>,
) -> Result<(), VerifyFailure> {
    let io = |e: std::io::Error| fail("records.json", format!("cannot read: {}", e.kind()));
    let head = reader.fill_buf().map_err(io)?;
    if !(head.starts_with(b"[\n{") || head == b"[]\n") {
        return parse_records(reader, out);
    }
    let mut line = Vec::with_capacity(4096);
    let mut batch = Batch::default();
    let mut n = 0usize;
    let mut first = true;
    let mut closed = false;
    let bad = |what: String| fail("records.json", what);
    loop {
        line.clear();
        let limit = super::MAX_LINE as u64;
        if std::io::Read::take(&mut *reader, limit)
            .read_until(b'\n', &mut line)
            .map_err(io)?
            == 0
        {
            break;
        }
        if line.len() as u64 >= limit && line.last() != Some(&b'\n') {
            return Err(bad(format!("record {n}: a line longer than 64 MiB")));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if closed {
            return Err(bad("text after the end of the array".into()));
        }
        if first {
            first = false;
            match text {
                b"[" => continue,
                b"[]" => {
                    closed = true;
                    continue;
                }
                _ => return Err(bad("not a JSON array of records".into())),
            }
        }
        if text == b"]" {
            closed = true;
            continue;
        }
        // A record line ends in a comma unless the array's end follows it.
        let record = match text.strip_suffix(b",") {
            Some(r) => r,
            None => {
                let next = reader.fill_buf().map_err(io)?;
                if !next.starts_with(b"]") {
                    return Err(bad(format!(
                        "record {n}: no comma after it, and the array does not end"
                    )));
                }
                text
            }
        };
        batch.push(record);
        n += 1;
        if batch.len() == RECORD_BATCH && !send(out, &mut batch) {
            return Ok(());
        }
    }
    if !closed {
        return Err(bad("the array does not end".into()));
    }
    if !batch.is_empty() {
        send(out, &mut batch);
    }
    Ok(())
}

/// Any layout of a JSON array, parsed as a stream: each element's text sent as it is read.
fn parse_records<R: BufRead>(
    reader: &mut HashingReader<R>,
    out: &Outbox<Batch>,
) -> Result<(), VerifyFailure> {
    struct Elements<'a>(&'a Outbox<Batch>);

    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of records")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut batch = Batch::default();
            while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                batch.push(raw.get().as_bytes());
                if batch.len() == RECORD_BATCH && !send(self.0, &mut batch) {
                    return Err(serde::de::Error::custom("the verifier stopped"));
                }
            }
            send(self.0, &mut batch);
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_reader(reader);
    serde::Deserializer::deserialize_seq(&mut de, Elements(out))
        .and_then(|()| de.end())
        .map_err(|e| fail("records.json", format!("not a JSON array of records: {e}")))
}
