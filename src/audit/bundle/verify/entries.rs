//! `entries.jsonl`, read and hashed on its own thread while `verify` checks what it has read:
//! blocks of whole lines, in file order, each block's buffer sent back to be filled again, so
//! reading, hashing and checking overlap and memory stays flat.
//! Owns: [`EntryBlocks`] (a `pipe::Pipe` of [`Block`]s), [`Block`]. May not touch: what an entry is checked for (the parent's
//! `check_entry`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::pipe::{Outbox, Pipe, Reusable};
use super::{VerifyFailure, fail, open};

/// About how many bytes a block holds (it ends at a line's end).
const BLOCK: usize = 2 << 20;
/// Bytes asked of the file at a time.
const READ: usize = 512 << 10;

/// Whole lines of the file: `bytes`, and where each line ends (its line feed, or the end of
/// the file for a last line without one).
#[derive(Default)]
pub(super) struct Block {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Block {
    /// The lines, without their line feeds.
    pub(super) fn lines(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let line = &self.bytes[start..end];
                start = end + 1;
                line
            })
            .collect()
    }
}

impl Reusable for Block {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// `entries.jsonl` as blocks of whole lines, read and hashed on their own thread.
pub(super) type EntryBlocks = Pipe<Block>;

/// Starts reading `entries.jsonl`.
pub(super) fn spawn(dir: &Path) -> Result<EntryBlocks, VerifyFailure> {
    let file = open(dir, "entries.jsonl")?;
    Ok(Pipe::spawn("entries.jsonl", 1, move |out| {
        read_blocks(file, out)
    }))
}

/// Reads the file in blocks of whole lines, hashing as it reads; the hash at the end, `None`
/// when the verifier stopped listening.
fn read_blocks(
    mut file: std::fs::File,
    out: &Outbox<Block>,
) -> Result<Option<String>, VerifyFailure> {
    let mut hash = Sha256::new();
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut block = out.fresh();
        // Room for a block and the reads that fill it, so it is never reallocated (a line
        // longer than that grows it).
        block.bytes.reserve_exact(BLOCK + 2 * READ + carry.len());
        block.bytes.append(&mut carry);
        let mut eof = false;
        // Read until the block is full and holds a line's end, or the file ends.
        while block.bytes.len() < BLOCK || memchr::memrchr(b'\n', &block.bytes).is_none() {
            let len = block.bytes.len();
            if len > super::MAX_LINE {
                return Err(fail(
                    "entries.jsonl",
                    "a line longer than 64 MiB: not an entry",
                ));
            }
            block.bytes.resize(len + READ, 0);
            let n = loop {
                match file.read(&mut block.bytes[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(fail("entries.jsonl", format!("cannot read: {}", e.kind())));
                    }
                }
            };
            block.bytes.truncate(len + n);
            hash.update(&block.bytes[len..]);
            if n == 0 {
                eof = true;
                break;
            }
        }
        let cut = if eof {
            block.bytes.len()
        } else {
            memchr::memrchr(b'\n', &block.bytes).map_or(block.bytes.len(), |i| i + 1)
        };
        carry.extend_from_slice(&block.bytes[cut..]);
        block.bytes.truncate(cut);
        block.ends.extend(memchr::memchr_iter(b'\n', &block.bytes));
        if block.ends.last().map_or(0, |&e| e + 1) < block.bytes.len() {
            block.ends.push(block.bytes.len()); // a last line without a line feed
        }
        if !block.ends.is_empty() && !out.send(block) {
            return Ok(None);
        }
        if eof {
            return Ok(Some(hex::encode(hash.finalize())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines come out whole and in order whatever the blocks' cuts, a last line without a
    /// line feed included, and the hash is the file's.
    #[test]
    fn blocks_hold_whole_lines_and_the_hash_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!(
                "{{\"line\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(i % 300)
            ));
        }
        text.push_str("last without a line feed");
        std::fs::write(dir.path().join("entries.jsonl"), &text).unwrap();
        let mut blocks = spawn(dir.path()).unwrap();
        let mut got = Vec::new();
        let mut count = 0;
        while let Some(b) = blocks.next().unwrap() {
            count += 1;
            got.extend(
                b.lines()
                    .iter()
                    .map(|l| String::from_utf8(l.to_vec()).unwrap()),
            );
            blocks.recycle(b);
        }
        assert!(count > 1, "several blocks");
        let want: Vec<&str> = text.split('\n').collect();
        assert_eq!(got, want);
        assert_eq!(
            blocks.hash().unwrap(),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }
}
