//! `doorstep audit …`: keygen, checkpoint, consistency, export, verify, prove — thin shells over
//! `doorstep::audit`. `verify` needs no config and no database.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::Subcommand;

use super::{ConfigArg, Fatal, required_deployment, runtime};
use doorstep::audit::bundle;
use doorstep::audit::checkpoint::{self, Consistency};
use doorstep::audit::{Checkpoint, NoteSigner, Verifier};

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Make an Ed25519 signing key: PATH (private, mode 0600) and PATH.pub (verifier key).
    Keygen {
        /// The key's name, which also names each trust's log (`NAME/<trust>`).
        #[arg(long, default_value = "doorstep")]
        name: String,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[command(flatten)]
        _config: ConfigArg,
    },
    /// Print the latest signed checkpoint of each trust's log (or one trust's).
    Checkpoint {
        #[arg(long)]
        trust: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prove that the log of checkpoint NEW extends the log of checkpoint OLD (RFC 9162).
    Consistency {
        old: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the evidence bundle of one school and period to a new folder.
    Export {
        #[arg(long)]
        trust: String,
        #[arg(long)]
        school: String,
        /// First day (YYYY-MM-DD), in the deployment's time zone.
        #[arg(long)]
        from: NaiveDate,
        /// Last day, inclusive.
        #[arg(long)]
        to: NaiveDate,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace personal fields in records.* with keyed pseudonyms (consistent within
        /// this export; the key is not kept). The leaves are unchanged and still verify.
        #[arg(long)]
        pseudonymise: bool,
        /// A signed checkpoint the auditor already holds: the bundle carries the RFC 9162
        /// consistency proof from it to the bundle's checkpoint.
        #[arg(long, value_name = "CHECKPOINT_FILE")]
        prove_from: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prove that a record text you hold (from the MIS, a printout's JSON) is exactly a
    /// revision the log received: its content hash, the leaf, the leaf's inclusion proof and
    /// a checkpoint signed now. Exit 0 if proven, 1 if no leaf carries its hash.
    Prove {
        #[arg(long, value_name = "FILE")]
        record: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a bundle offline: manifest hashes, the checkpoint signature, every inclusion
    /// proof, every record's content hash, that no event of the school and period is missing,
    /// and (with --trusted-checkpoint) that the log extends a checkpoint you already hold.
    /// Says what was proven; exit 0 if all verifies, 1 naming the first failure.
    Verify {
        dir: PathBuf,
        /// The verifier key (`name+id+base64`), or a file holding it; default: the bundle's
        /// log.pub.
        #[arg(long)]
        key: Option<String>,
        /// A signed checkpoint you already trust (published, or handed to a witness): the
        /// bundle's tree must extend it.
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Option<PathBuf>,
        /// Fail unless every record was checked in full (a pseudonymised bundle's are checked
        /// on their non-personal fields only).
        #[arg(long)]
        require_content: bool,
        #[command(flatten)]
        _config: ConfigArg,
    },
}

pub fn run(action: AuditAction) -> Result<ExitCode, Fatal> {
    match action {
        AuditAction::Keygen { name, out, .. } => keygen(&name, &out),
        AuditAction::Verify {
            dir,
            key,
            trusted_checkpoint,
            require_content,
            ..
        } => {
            let key = key.map(|k| read_key_arg(&k)).transpose()?;
            let trusted = trusted_checkpoint
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map_err(|e| Fatal::Config(format!("{}: {}", p.display(), e.kind())))
                })
                .transpose()?;
            let options = bundle::VerifyOptions {
                key: key.as_deref(),
                trusted_checkpoint: trusted.as_deref(),
                require_content,
            };
            let bar = Bar::new();
            let result = bundle::verify(&dir, &options, &bar);
            bar.done();
            match result {
                Ok(r) => {
                    for line in r.statements() {
                        say!("{line}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    say!("FAIL {f}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditAction::Prove { record, config } => prove(&record, &config),
        AuditAction::Checkpoint { trust, config } => {
            let deployment = required_deployment(&config)?;
            let signer = deployment.signer()?;
            runtime()?.block_on(async {
                let store = deployment.open_store().await?;
                let signed = checkpoint::sign_all(&store, &signer, trust.as_deref()).await;
                store.close().await;
                let signed = signed.map_err(|e| Fatal::Run(e.to_string()))?;
                for (i, s) in signed.iter().enumerate() {
                    let note = s.note.as_ref().map_err(|e| Fatal::Run(e.to_string()))?;
                    if i > 0 {
                        say!();
                    }
                    say_raw!("{note}");
                }
                if signed.is_empty() {
                    return Err(Fatal::Run(
                        "no evidence-trail log yet: ingest something first".into(),
                    ));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        AuditAction::Consistency { old, new, config } => {
            let deployment = required_deployment(&config)?;
            let verifier = deployment.signer()?.verifier();
            let open = |p: &Path| -> Result<Checkpoint, Fatal> {
                let note = std::fs::read_to_string(p)
                    .map_err(|e| Fatal::Config(format!("{}: {}", p.display(), e.kind())))?;
                let text = verifier
                    .open(&note)
                    .map_err(|e| Fatal::Run(format!("{}: {e}", p.display())))?;
                Checkpoint::parse(text).map_err(|e| Fatal::Run(format!("{}: {e}", p.display())))
            };
            let (a, b) = (open(&old)?, open(&new)?);
            let found = runtime()?.block_on(async {
                let store = deployment.open_store().await?;
                let found = checkpoint::consistency(&store, &a, &b).await;
                store.close().await;
                found.map_err(|e| Fatal::Run(e.to_string()))
            })?;
            match found {
                Consistency::DifferentLogs => {
                    say!(
                        "FAIL: the checkpoints are of different logs ({} and {})",
                        a.origin,
                        b.origin
                    );
                }
                Consistency::SizesOutOfOrder => {
                    say!(
                        "FAIL: the old checkpoint's size {} is not between 1 and the new one's {}",
                        a.size,
                        b.size
                    );
                }
                Consistency::NotExtended => {
                    say!(
                        "FAIL: {} at size {} does not extend size {}",
                        a.origin,
                        b.size,
                        a.size
                    );
                }
                Consistency::Consistent { proof } => {
                    say!(
                        "consistent: {} size {} extends size {}",
                        a.origin,
                        b.size,
                        a.size
                    );
                    for h in &proof {
                        say!("{}", hex::encode(h));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(ExitCode::from(1))
        }
        AuditAction::Export {
            trust,
            school,
            from,
            to,
            out,
            pseudonymise,
            prove_from,
            config,
        } => {
            let deployment = required_deployment(&config)?;
            let config = deployment.config();
            let signer = deployment.signer()?;
            if to < from {
                return Err(Fatal::Config("--to is before --from".into()));
            }
            if std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) {
                return Err(Fatal::Config(format!(
                    "{}: the folder exists and is not empty",
                    out.display()
                )));
            }
            let req = bundle::ExportRequest {
                trust,
                school,
                from,
                to,
                time_zone: config.time_zone,
                out: out.clone(),
                pseudonymise,
                prove_from: prove_from
                    .map(|p| {
                        std::fs::read_to_string(&p)
                            .map_err(|e| Fatal::Config(format!("{}: {}", p.display(), e.kind())))
                    })
                    .transpose()?,
            };
            runtime()?.block_on(async {
                let store = deployment.open_store_for_reading().await?;
                let bar = Bar::new();
                let result = bundle::export(&store, &signer, &req, &bar).await;
                bar.done();
                store.close().await;
                let s = result.map_err(|e| Fatal::Run(e.to_string()))?;
                say!(
                    "exported {} entries and {} records of {} school {} (log size {}) to {}",
                    s.entries,
                    s.records,
                    req.trust,
                    req.school,
                    s.tree_size,
                    out.display()
                );
                if !s.recorded {
                    eprintln!(
                        "doorstep: the store is read-only: this export and its checkpoint are not recorded in its trail"
                    );
                }
                if !s.closed {
                    eprintln!(
                        "doorstep: nothing closes the period (the store is read-only and the school has no event after it): this bundle cannot prove it is complete"
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// `audit prove --record FILE`.
fn prove(record: &Path, config: &ConfigArg) -> Result<ExitCode, Fatal> {
    let deployment = required_deployment(config)?;
    let signer = deployment.signer()?;
    let text = read_small(record, 16 << 20)?;
    runtime()?.block_on(async {
        let store = deployment.open_store_for_reading().await?;
        let found = doorstep::audit::prove::prove(&store, &signer, &text).await;
        store.close().await;
        match found {
            Err(doorstep::audit::prove::ProveError::NotJson(e)) => Err(Fatal::Config(format!(
                "{}: the record is not JSON: {e}",
                record.display()
            ))),
            Err(e) => Err(Fatal::Run(e.to_string())),
            Ok(None) => {
                say!(
                    "not proven: no leaf of the log carries this record's content hash — it is not a revision doorstep received (one byte of it differs, or it was never sent)"
                );
                Ok(ExitCode::from(1))
            }
            Ok(Some(p)) => {
                say!(
                    "proven: {} is a revision the log of {} received: leaf {} of {}",
                    record.display(),
                    p.trust,
                    p.index,
                    p.size
                );
                say!("content hash (SHA-256 of its RFC 8785 text): {}", p.content_hash);
                say!("leaf {}: {}", p.index, p.leaf);
                say!("inclusion proof (RFC 9162), leaf to root:");
                for h in &p.proof {
                    say!("{}", hex::encode(h));
                }
                say!("checkpoint:");
                say_raw!("{}", p.checkpoint);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// A file read whole, refused above `limit` bytes.
fn read_small(path: &Path, limit: u64) -> Result<String, Fatal> {
    let cannot = |e: std::io::Error| Fatal::Config(format!("{}: {}", path.display(), e.kind()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, limit + 1), &mut text)
        .map_err(cannot)?;
    if text.len() as u64 > limit {
        return Err(Fatal::Config(format!(
            "{}: larger than {} MiB: not one record",
            path.display(),
            limit >> 20
        )));
    }
    Ok(text)
}

/// `--key`: a verifier key, or a file holding one.
fn read_key_arg(k: &str) -> Result<String, Fatal> {
    if Verifier::parse(k).is_ok() {
        return Ok(k.to_owned());
    }
    std::fs::read_to_string(k)
        .map_err(|e| Fatal::Config(format!("--key {k}: not a verifier key, and {}", e.kind())))
}

fn keygen(name: &str, out: &Path) -> Result<ExitCode, Fatal> {
    let signer = NoteSigner::generate(name).map_err(|e| Fatal::Config(e.to_string()))?;
    // PATH.pub, as documented: `log.key` → `log.key.pub` (not `log.pub`).
    let mut public = out.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    let write_new = |path: &Path, text: &str, mode: u32| -> Result<(), Fatal> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| Fatal::Config(format!("{}: {}", path.display(), e.kind())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Fatal::Run(format!("{}: {}", path.display(), e.kind())))
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Fatal::Config(format!("{}: {}", dir.display(), e.kind())))?;
    }
    write_new(out, &format!("{}\n", signer.to_text()), 0o600)?;
    write_new(
        &public,
        &format!("{}\n", signer.verifier().to_text()),
        0o644,
    )?;
    say!("{}", signer.verifier().to_text());
    eprintln!(
        "signing key written to {} (mode 0600), verifier key to {}",
        out.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on standard error, drawn only in a terminal (indicatif hides it otherwise).
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {pos}/{len} ({per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self(bar)
    }

    fn done(&self) {
        self.0.finish_and_clear();
    }
}

impl bundle::Progress for Bar {
    fn start(&self, what: &'static str, total: u64) {
        self.0.set_message(what);
        // 0: not known ahead (an export learns its entries as it pages through the log).
        if total == 0 {
            self.0.unset_length();
        } else {
            self.0.set_length(total);
        }
        self.0.set_position(0);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}
