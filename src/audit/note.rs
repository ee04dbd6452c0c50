//! Signed checkpoints: the C2SP `tlog-checkpoint` body (origin, tree size, base64 root hash)
//! in a C2SP `signed-note` signed with Ed25519.
//!
//! Key id: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key). Verifier key:
//! `name+hexid+base64(0x01 ‖ public key)`. Signer key (as Go's `note` package writes it):
//! `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`. A signature line: `— name base64(id ‖ sig)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::tree::Hash;

const ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Note(&'static str),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("no signature by key {0} on the note")]
    NoSignature(String),
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['+', ' ', '\n', '\t'])
        && !name.chars().any(char::is_control)
}

/// A signing key with its name.
pub struct NoteSigner {
    pub name: String,
    key: SigningKey,
}

/// The verifier half: name, key id and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    pub id: [u8; 4],
    pub key: VerifyingKey,
}

impl NoteSigner {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name has no spaces, '+' or control characters",
            ));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| NoteError::Key("no randomness available"))?;
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("a signing key starts with PRIVATE+KEY+"))?;
        // base64 may itself hold '+': split off the name and id only.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected PRIVATE+KEY+name+id+key"));
        };
        let bytes = B64
            .decode(b64)
            .map_err(|_| NoteError::Key("key is not base64"))?;
        let seed: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, seed)) => seed
                .try_into()
                .map_err(|_| NoteError::Key("key has the wrong length"))?,
            _ => {
                return Err(NoteError::Key(
                    "only Ed25519 keys (type 0x01) are supported",
                ));
            }
        };
        let signer = Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        };
        if hex::encode(signer.verifier().id) != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// `PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)`.
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.verifier().id),
            B64.encode(bytes)
        )
    }

    pub fn verifier(&self) -> Verifier {
        let key = self.key.verifying_key();
        Verifier {
            name: self.name.clone(),
            id: key_id(&self.name, &key.to_bytes()),
            key,
        }
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        let sig: Signature = self.key.sign(text.as_bytes());
        let mut bytes = self.verifier().id.to_vec();
        bytes.extend_from_slice(&sig.to_bytes());
        format!("{text}\n{DASH}{} {}\n", self.name, B64.encode(bytes))
    }
}

impl Verifier {
    /// Parses `name+hexid+base64(0x01 ‖ public key)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected name+id+key"));
        };
        let bytes = B64
            .decode(b64)
            .map_err(|_| NoteError::Key("key is not base64"))?;
        let public: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, k)) => k
                .try_into()
                .map_err(|_| NoteError::Key("key has the wrong length"))?,
            _ => {
                return Err(NoteError::Key(
                    "only Ed25519 keys (type 0x01) are supported",
                ));
            }
        };
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::Key("not an Ed25519 public key"))?;
        let want = key_id(name, &public);
        if hex::encode(want) != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id: want,
            key,
        })
    }

    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(&self.key.to_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(bytes)
        )
    }

    /// Checks a signed note and returns its text (everything before the blank line).
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Note("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() || !note.ends_with('\n') {
            return Err(NoteError::Note("no signature lines"));
        }
        let mut found = false;
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(DASH)
                .ok_or(NoteError::Note("a signature line starts with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Note("a signature line is '— name signature'"))?;
            let bytes = B64
                .decode(b64)
                .map_err(|_| NoteError::Note("a signature is not base64"))?;
            if name != self.name || bytes.len() != 68 || bytes[..4] != self.id {
                continue;
            }
            found = true;
            let sig: [u8; 64] = bytes[4..]
                .try_into()
                .map_err(|_| NoteError::Note("bad signature length"))?;
            self.key
                .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| NoteError::BadSignature(self.to_short()))?;
        }
        if !found {
            return Err(NoteError::NoSignature(self.to_short()));
        }
        Ok(text)
    }

    /// `name+hexid`: which key, without the key.
    pub fn to_short(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.id))
    }
}

/// The signed notes of a text holding one or more as `audit checkpoint` prints them: each a
/// body, a blank line and its signature lines, with a blank line between notes.
pub fn split_notes(text: &str) -> Vec<&str> {
    let mut notes = Vec::new();
    let (mut start, mut pos, mut in_signatures) = (0, 0, false);
    for line in text.split_inclusive('\n') {
        let end = pos + line.len();
        if in_signatures && !line.starts_with(DASH) {
            notes.push(&text[start..pos]);
            in_signatures = false;
            start = if line == "\n" { end } else { pos };
        } else if !in_signatures && line == "\n" {
            in_signatures = true;
        }
        pos = end;
    }
    if start < text.len() {
        notes.push(&text[start..]);
    }
    notes
}

/// Of a text holding one or more signed checkpoints (`audit checkpoint` prints every
/// trust's), the one of log `origin` signed by `verifier`'s key; else the whole text, for
/// `open` to say what is wrong with it.
pub fn checkpoint_note<'a>(text: &'a str, verifier: &Verifier, origin: &str) -> &'a str {
    split_notes(text)
        .into_iter()
        .find(|n| {
            verifier
                .open(n)
                .ok()
                .and_then(|t| Checkpoint::parse(t).ok())
                .is_some_and(|c| c.origin == origin)
        })
        .unwrap_or(text)
}

/// A checkpoint body: origin, tree size, root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("no origin line"))?;
        let size = lines
            .next()
            .and_then(|s| (!(s.starts_with('+') || s.len() > 1 && s.starts_with('0'))).then_some(s))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(NoteError::Checkpoint("the second line is not a tree size"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or(NoteError::Checkpoint(
                "the third line is not a base64 SHA-256 root hash",
            ))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn notes_printed_one_after_another_are_split() {
        let signer = NoteSigner::generate("trail.example").unwrap();
        let a = signer.sign("trail.example/celt\n3\nAAAA\n");
        let b = signer.sign("trail.example/thrive\n9\nBBBB\n");
        let both = format!("{a}\n{b}");
        assert_eq!(split_notes(&both), [a.as_str(), b.as_str()]);
        assert_eq!(split_notes(&a), [a.as_str()]);
        for note in split_notes(&both) {
            signer.verifier().open(note).unwrap();
        }
    }

    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_tamper() {
        let signer = NoteSigner::generate("example.org/doorstep").unwrap();
        let again = NoteSigner::parse(&signer.to_text()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let verifier = Verifier::parse(&signer.verifier().to_text()).unwrap();
        let cp = Checkpoint {
            origin: "example.org/doorstep/celt".into(),
            size: 5,
            root: [7; 32],
        };
        let note = signer.sign(&cp.to_text());
        assert!(note.contains("\n\n\u{2014} example.org/doorstep "));
        let text = verifier.open(&note).unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), cp);
        let tampered = note.replace("\n5\n", "\n6\n");
        assert_eq!(
            verifier.open(&tampered),
            Err(NoteError::BadSignature(format!(
                "example.org/doorstep+{}",
                hex::encode(verifier.id)
            )))
        );
        let other = NoteSigner::generate("example.org/doorstep")
            .unwrap()
            .verifier();
        assert!(matches!(other.open(&note), Err(NoteError::NoSignature(_))));
    }

    /// The key id and verifier string of a fixed key, worked by hand from the C2SP rule.
    #[test]
    fn key_id_follows_the_c2sp_rule() {
        let seed = [1u8; 32];
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let mut h = Sha256::new();
        h.update(b"PeterNeumann\n\x01");
        h.update(public);
        let want = h.finalize();
        assert_eq!(
            key_id("PeterNeumann", &public),
            [want[0], want[1], want[2], want[3]]
        );
        // A published vector (golang.org/x/mod/sumdb/note): this verifier key parses and its
        // id matches its key.
        let v =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap();
        assert_eq!(hex::encode(v.id), "c74f20a3");
    }
}
