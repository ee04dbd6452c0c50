//! `doorstep export` and `doorstep purge`: thin shells over `doorstep::exporter` and
//! `doorstep::retention`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::Args;

use super::{Common, ConfigArg, Fatal, Format, Writer, required_deployment, runtime};
use doorstep::exporter::{self, ExportError, ExportRequest};
use doorstep::records::Kind;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    trust: String,
    /// A school's URN (repeat for several); default: every school of the trust.
    #[arg(long = "school", value_name = "URN")]
    schools: Vec<String>,
    /// Only this pupil's records, by UPN (an incident by the pupil of its visit).
    #[arg(long, value_name = "UPN")]
    pupil: Option<String>,
    /// Only this kind (repeat for several): visit_report, incident, safeguarding_flag.
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
    kinds: Vec<Kind>,
    /// First day (YYYY-MM-DD), by each record's own time in its school's zone.
    #[arg(long)]
    from: NaiveDate,
    /// Last day, inclusive.
    #[arg(long)]
    to: NaiveDate,
    /// jsonl (current revisions as stored), csv (one file per kind into the folder --out),
    /// chronology (CSV, one row per visit, incident and flag in date order) or html (that
    /// chronology as one printable page).
    #[arg(long, value_name = "FORMAT")]
    format: exporter::Format,
    /// The file to write (a folder for csv); created owner-only (0600).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Why: referral, case_review, subject_access, migration or audit (kept in the trail).
    #[arg(long, value_name = "REASON")]
    reason: exporter::Reason,
    #[command(flatten)]
    config: ConfigArg,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_name(s)
        .ok_or_else(|| "not a record kind: use visit_report, incident or safeguarding_flag".into())
}

pub fn export(args: ExportArgs) -> Result<ExitCode, Fatal> {
    let deployment = required_deployment(&args.config)?;
    let trusts = deployment.trusts()?.clone();
    let trust = trusts.get(&args.trust).ok_or_else(|| {
        Fatal::Config(format!(
            "--trust {}: no such trust under {}",
            args.trust,
            deployment.config().mappings_dir.display()
        ))
    })?;
    let req = ExportRequest {
        trust: args.trust.clone(),
        schools: args.schools,
        pupil: args.pupil,
        kinds: args.kinds,
        from: args.from,
        to: args.to,
        format: args.format,
        reason: args.reason,
        out: args.out,
        by: exporter::os_user(),
    };
    runtime()?.block_on(async {
        let store = deployment.open_store().await?;
        let result = exporter::export(&store, trust, &req).await;
        if result.is_ok() {
            for w in deployment.sign_checkpoints(&store).await {
                eprintln!("doorstep: {w}");
            }
        }
        store.close().await;
        let summary = result.map_err(|e| match e {
            ExportError::Request(m) => Fatal::Config(m),
            e => Fatal::Run(e.to_string()),
        })?;
        let mut out = std::io::stdout().lock();
        let counts = Kind::ALL
            .iter()
            .map(|k| {
                let n = summary.counts.get(k.as_str()).copied().unwrap_or(0);
                format!("{n} {}", k.as_str())
            })
            .collect::<Vec<_>>()
            .join(", ");
        for f in &summary.files {
            let _ = writeln!(out, "wrote {}", f.display());
        }
        let _ = writeln!(
            out,
            "{counts}; reason {}; recorded in trust {}'s evidence trail",
            req.reason.as_str(),
            req.trust
        );
        if summary.purged > 0 {
            let _ = writeln!(
                out,
                "{} record(s) received in the period are purged under retention and not in the export (their leaves still prove them: audit prove)",
                summary.purged
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Only this trust; default: every trust whose trust.toml sets [retention].
    #[arg(long)]
    trust: Option<String>,
    /// Use this many days instead of the trusts' own `content_days` (0: every revision
    /// already delivered everywhere), e.g. before a trust's retention is first set.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(0..=36_500))]
    content_days: Option<u32>,
    /// Then rewrite the store without its free pages (SQLite `VACUUM`): the space comes
    /// back and no emptied content stays in free pages. Takes as long as copying the store.
    #[arg(long)]
    vacuum: bool,
    #[command(flatten)]
    writer: Writer,
    #[command(flatten)]
    common: Common,
}

pub fn purge(args: PurgeArgs) -> Result<ExitCode, Fatal> {
    let deployment = required_deployment(&args.common.config)?;
    let trusts = deployment.trusts()?.clone();
    if let Some(t) = &args.trust
        && trusts.get(t).is_none()
    {
        return Err(Fatal::Config(format!("--trust {t}: no such trust")));
    }
    let _lock = args.writer.lock(&deployment)?;
    runtime()?.block_on(async {
        let store = deployment.open_store().await?;
        let result =
            doorstep::retention::purge(
            &store,
            &trusts,
            args.trust.as_deref(),
            args.content_days,
            chrono::Utc::now(),
        )
        .await;
        let result = match result {
            Ok(done) if args.vacuum => store.vacuum().await.map(|()| done),
            other => other,
        };
        if result.is_ok() {
            for w in deployment.sign_checkpoints(&store).await {
                eprintln!("doorstep: {w}");
            }
        }
        store.close().await;
        let done = result.map_err(|e| Fatal::Run(e.to_string()))?;
        let mut out = std::io::stdout().lock();
        if done.is_empty() && args.common.format == Format::Human {
            let _ = writeln!(
                out,
                "no trust sets [retention] content_days in its trust.toml: nothing to purge"
            );
        }
        for t in &done {
            let _ = match args.common.format {
                Format::Human => writeln!(
                    out,
                    "trust {}: purged the content of {} revision(s) delivered everywhere before {} (content_days = {})",
                    t.trust, t.purged, t.cutoff, t.content_days
                ),
                Format::Json => {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["kind"] = "purged".into();
                    writeln!(out, "{v}")
                }
            };
        }
        Ok(ExitCode::SUCCESS)
    })
}
