//! The `doorstep` command line, part of the binary (not the library): a thin shell over
//! the library's public API — [`doorstep::deployment::Deployment`] and what hangs off it.
//! Parses arguments, loads the deployment, prints human or `--format json` output, and maps
//! outcomes to exit codes: 0 success, 1 some records rejected or undelivered, 2 bad usage
//! or config. Holds no product logic: what a verb does is a library call.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `println!` that does not panic when standard output is closed (`doorstep … | head`).
macro_rules! say {
    () => {{
        let _ = std::io::Write::write_all(&mut std::io::stdout(), b"\n");
    }};
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that does not panic when standard output is closed.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod audit;
mod deliver;
mod keys;
mod records_out;

use doorstep::config;
use doorstep::deployment::{Deployment, DeploymentError};
use doorstep::mapping::Trusts;
use doorstep::pipeline::{self, Reporter};
use doorstep::policy::RuleId;
use doorstep::report::{Conflict, ExceptionReport, Rejection, ReportLine, Summary};
use doorstep::store::{LockError, StatusReport, Store, WriterLock};
use doorstep::synthetic::{GenOptions, write_records};

const ABOUT: &str = "doorstep: home-visit reports, incidents and safeguarding flags, checked \
against the trust's policy and delivered into each school's own systems, with a \
tamper-evident evidence trail.";

const AFTER_HELP: &str = "Exit codes: 0 success, 1 some records rejected or undelivered, \
2 bad usage or config, 75 another sync or ingest is writing to the store (try again later, \
or pass --wait SECONDS).\nEvery verb takes --config PATH after the verb name (default \
./doorstep.toml, or the DOORSTEP_CONFIG environment variable). Logs go to standard error \
(level from DOORSTEP_LOG, e.g. DOORSTEP_LOG=debug) and carry ids only.";

#[derive(Debug, Parser)]
#[command(name = "doorstep", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate record files (.json: one record or an array; .jsonl: one a line); change
    /// nothing. Works with no config at all (the record rules only).
    Check {
        /// Files or folders (folders are walked for .json and .jsonl files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Validate record files and store them durably; a record is acknowledged only once
    /// its transaction commits. With no PATH, ingests the config's drop folder.
    Ingest {
        /// Files or folders; none means the config's drop folder.
        paths: Vec<PathBuf>,
        #[command(flatten)]
        writer: Writer,
        #[command(flatten)]
        common: Common,
    },
    /// Counts of stored records by trust, school, kind and state; rejections and
    /// conflicts by rule; open policy exceptions; deliveries by destination and state.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Ingest the drop folder (each file then moved to the archive, or to the rejected
    /// folder with its rejection report), route what is new, and deliver everything due;
    /// exit 1 if anything is rejected, left undelivered or dead. The cron job.
    Sync {
        #[command(flatten)]
        writer: Writer,
        #[command(flatten)]
        common: Common,
    },
    /// Take records over HTTP (POST /v1/records with an API key from `keys create`) and
    /// deliver in process, woken by each request; stop on SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on; default: the config's `[server] listen`.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Bring the store's schema up to date first (as `doorstep migrate`); without it an
        /// instance refuses a PostgreSQL schema older or newer than its own.
        #[arg(long)]
        migrate: bool,
        #[command(flatten)]
        writer: Writer,
        #[command(flatten)]
        common: Common,
    },
    /// Bring the store's schema up to this doorstep's version (PostgreSQL: instances refuse
    /// to start on a schema older or newer than theirs; SQLite migrates itself on open).
    /// Several instances may run it at once: they take turns.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Deliveries that gave up: list them, show one with its saved response, replay them.
    Deadletter {
        #[command(subcommand)]
        action: deliver::DeadletterAction,
    },
    /// API keys for `serve`: create (shown once), list, revoke.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// A trust's mapping: run its test cases.
    Mapping {
        #[command(subcommand)]
        action: MappingAction,
    },
    /// Check the config file (and the files it points to).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write N synthetic records of all three kinds and both trusts as JSON lines to
    /// standard output; the same seed gives the same records. Every name is invented.
    Gen {
        #[arg(long, default_value_t = 100)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of records (0.0 to 1.0) made invalid, one fault each.
        #[arg(long, default_value_t = 0.0)]
        invalid_share: f64,
        /// Accepted like every verb's; `gen` needs no config.
        #[command(flatten)]
        _config: ConfigArg,
    },
    /// Write records out: current revisions as JSON lines, one CSV per kind, a chronology
    /// in date order, or that chronology as one printable HTML page. Every export is an
    /// `exported` event in the trail (who, why, counts).
    Export(records_out::ExportArgs),
    /// Retention: empty the stored content of revisions delivered everywhere longer ago
    /// than their trust's `[retention] content_days`; the trail keeps what proves them.
    Purge(records_out::PurgeArgs),
    /// The evidence trail: signed checkpoints, the auditor's bundle and its offline check.
    Audit {
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// Print the JSON Schema (draft 2020-12) of the three record kinds.
    Schema {
        /// Accepted like every verb's; `schema` needs no config.
        #[command(flatten)]
        _config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum MappingAction {
    /// Run the test cases in `<folder>/tests/`: each input record against the exact
    /// bodies, rows and destinations it must produce. Exit 1 if any case fails.
    Test {
        /// The trust's mapping folder, e.g. mappings/thrive.
        folder: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Load and check the config; exit 0 if it is good, 2 with the reason if not.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also reach every destination (paused ones too): fetch its token and make one
        /// read, per school; a line each. Exit 1 if any cannot be reached.
        #[arg(long)]
        online: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArg {
    /// The deployment config [default: ./doorstep.toml]
    #[arg(long, env = config::ENV_VAR, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// A verb that writes to the store: one at a time per SQLite store.
#[derive(Debug, Args)]
pub(crate) struct Writer {
    /// How long to wait for another sync or ingest on the same store to finish before
    /// giving up with exit code 75 (nothing is touched meanwhile).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    wait: f64,
}

impl Writer {
    /// The store's writer lock, held until dropped.
    pub(crate) fn lock(&self, deployment: &Deployment) -> Result<Option<WriterLock>, Fatal> {
        if !(0.0..=86_400.0).contains(&self.wait) {
            return Err(Fatal::Config(
                "--wait must be from 0 to 86400 seconds".into(),
            ));
        }
        deployment
            .lock_writer(std::time::Duration::from_secs_f64(self.wait))
            .map_err(|e| match e {
                DeploymentError::Locked(LockError::Busy { .. }) => Fatal::Busy(e.to_string()),
                e => Fatal::from(e),
            })
    }
}

#[derive(Debug, Args)]
pub(crate) struct Common {
    #[command(flatten)]
    config: ConfigArg,
    /// Output: human text, or one JSON object a line for scripts.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Human,
    Json,
}

/// A failure that ends the command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    /// Bad usage or config: exit 2.
    #[error("{0}")]
    Config(String),
    /// Something went wrong while working: exit 1.
    #[error("{0}")]
    Run(String),
    /// Another process is writing to the store: exit 75 (EX_TEMPFAIL: try again later).
    #[error("{0}")]
    Busy(String),
}

impl From<DeploymentError> for Fatal {
    /// A deployment that cannot be loaded, or a store that cannot be opened, is a config
    /// error (exit 2).
    fn from(e: DeploymentError) -> Self {
        Fatal::Config(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(Fatal::Config(m)) => {
            eprintln!("doorstep: {m}");
            ExitCode::from(2)
        }
        Err(Fatal::Run(m)) => {
            eprintln!("doorstep: {m}");
            ExitCode::from(1)
        }
        Err(Fatal::Busy(m)) => {
            eprintln!("doorstep: {m}");
            ExitCode::from(75)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOORSTEP_LOG")
        // sqlx reports slow statements at warn: routine for a bulk export, noise for cron.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fatal::Run(format!("cannot start the runtime: {e}")))
}

fn run(cli: Cli) -> Result<ExitCode, Fatal> {
    match cli.command {
        Command::Check { paths, common } => {
            // The config is optional for `check`; named explicitly, it must load.
            let deployment = load_deployment(&common.config, false)?;
            let no_trusts = Trusts::default();
            let trusts = match &deployment {
                Some(d) => d.trusts()?.as_ref(),
                None => &no_trusts,
            };
            let mut out = Output::new(common.format);
            let summary = pipeline::check(&paths, trusts, &mut out);
            out.finish(&summary)
        }
        Command::Ingest {
            paths,
            writer,
            common,
        } => {
            let deployment = required_deployment(&common.config)?;
            let trusts = deployment.trusts()?.clone();
            let _lock = writer.lock(&deployment)?;
            let paths = if paths.is_empty() {
                vec![deployment.config().drop_dir.clone()]
            } else {
                paths
            };
            runtime()?.block_on(async {
                let store = deployment.open_store().await?;
                let mut out = Output::new(common.format);
                let result = pipeline::ingest(&store, paths, trusts, &mut out).await;
                if result.is_ok() {
                    for w in deployment.sign_checkpoints(&store).await {
                        eprintln!("doorstep: {w}");
                    }
                }
                store.close().await;
                let summary = result.map_err(|e| Fatal::Run(e.to_string()))?;
                out.finish(&summary)
            })
        }
        Command::Migrate { common } => {
            let deployment = required_deployment(&common.config)?;
            runtime()?.block_on(migrate(&deployment, common.format))
        }
        Command::Status { common } => {
            let deployment = required_deployment(&common.config)?;
            let config = deployment.config();
            runtime()?.block_on(async {
                let store = deployment.open_store_for_reading().await?;
                let report = store.status().await.map_err(|e| Fatal::Run(e.to_string()));
                let deliveries = doorstep::store::DeliveryStore::delivery_counts(&store)
                    .await
                    .map_err(|e| Fatal::Run(e.to_string()));
                let leases = doorstep::store::DeliveryStore::leases(&store)
                    .await
                    .map_err(|e| Fatal::Run(e.to_string()));
                store.close().await;
                let paused = |t: &str, d: &str| {
                    config
                        .delivery
                        .overrides
                        .get(&(t.to_owned(), d.to_owned()))
                        .is_some_and(|o| o.paused)
                };
                print_status(&report?, &deliveries?, &leases?, &paused, common.format);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Config {
            action: ConfigAction::Check { config, online },
        } => {
            if let Some(deployment) = load_deployment(&config, true)? {
                let problems = deployment.plan_problems()?;
                if !problems.is_empty() {
                    return Err(Fatal::Config(problems.join("\n")));
                }
                let (trusts, connectors) = (deployment.trusts()?, deployment.connectors()?);
                let engine = deployment.engine()?;
                say!("{}: ok", deployment.config().path.display());
                say!("  {} connector(s)", connectors.iter().count());
                for t in trusts.iter() {
                    let on = RuleId::ALL
                        .iter()
                        .filter(|r| doorstep::policy::rule_severity(t.rules(), **r).is_some())
                        .count();
                    let (routes, dests) = t
                        .mapping
                        .as_deref()
                        .map(|m| (m.routes.routes.len(), m.routes.destinations.len()))
                        .unwrap_or_default();
                    say!(
                        "  trust {}: {} school(s), {on} policy rule(s) on, {routes} route(s) to {dests} destination(s)",
                        t.id,
                        t.file.schools.len()
                    );
                }
                for (t, d) in engine.paused() {
                    say!("  destination {t}/{d} is paused: its deliveries wait");
                }
                if online {
                    return deliver::check_online(&deployment);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen {
            count,
            seed,
            invalid_share,
            ..
        } => {
            if !(0.0..=1.0).contains(&invalid_share) {
                return Err(Fatal::Config(
                    "--invalid-share must be from 0.0 to 1.0".into(),
                ));
            }
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 16, stdout.lock());
            match write_records(
                GenOptions {
                    count,
                    seed,
                    invalid_share,
                },
                &mut w,
            ) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                // A closed pipe (`doorstep gen | head`) is not an error.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(Fatal::Run(format!("writing records: {e}"))),
            }
        }
        Command::Audit { action } => audit::run(action),
        Command::Export(args) => records_out::export(args),
        Command::Purge(args) => records_out::purge(args),
        Command::Sync { writer, common } => deliver::sync(writer, common),
        Command::Deadletter { action } => deliver::deadletter(action),
        Command::Serve {
            listen,
            migrate,
            writer,
            common,
        } => deliver::serve(listen, migrate, writer, common),
        Command::Keys { action } => keys::run(action),
        Command::Mapping {
            action: MappingAction::Test { folder, config },
        } => deliver::mapping_test(&folder, &config),
        Command::Schema { .. } => {
            let schema = doorstep::records::records_schema();
            say!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Finds and loads the deployment's config: `--config`, else `DOORSTEP_CONFIG` (both via
/// clap), else `./doorstep.toml` if present. `required` makes a missing config an error.
/// The deployment's other parts load when a verb first needs them.
pub(crate) fn load_deployment(
    arg: &ConfigArg,
    required: bool,
) -> Result<Option<Deployment>, Fatal> {
    let path = match &arg.config {
        Some(p) => p.clone(),
        None => {
            let default = Path::new(config::DEFAULT_PATH);
            if default.exists() {
                default.to_path_buf()
            } else if required {
                return Err(Fatal::Config(format!(
                    "no config: pass --config PATH, set {}, or create ./{} (see examples/doorstep.toml)",
                    config::ENV_VAR,
                    config::DEFAULT_PATH
                )));
            } else {
                return Ok(None);
            }
        }
    };
    Ok(Some(Deployment::load(&path)?))
}

/// The deployment, which this verb cannot do without.
pub(crate) fn required_deployment(arg: &ConfigArg) -> Result<Deployment, Fatal> {
    load_deployment(arg, true)?.ok_or_else(|| Fatal::Config("no config".into()))
}

/// Prints reports as they come, human or JSON lines, to standard output.
struct Output {
    format: Format,
    out: io::BufWriter<io::Stdout>,
}

impl Output {
    fn new(format: Format) -> Self {
        Self {
            format,
            out: io::BufWriter::new(io::stdout()),
        }
    }

    fn line(&mut self, human: &dyn std::fmt::Display, json: ReportLine<'_>) {
        // Output errors (a closed pipe) must not stop intake: the store is the record.
        let _ = match self.format {
            Format::Human => writeln!(self.out, "{human}"),
            Format::Json => serde_json::to_writer(&mut self.out, &json)
                .map_err(io::Error::other)
                .and_then(|()| self.out.write_all(b"\n")),
        };
    }

    /// One line that is not an intake report: `human`, or `json` as one JSON line
    /// (nothing for a JSON null).
    fn raw_line(&mut self, human: &dyn std::fmt::Display, json: &impl serde::Serialize) {
        let _ = match self.format {
            Format::Human => writeln!(self.out, "{human}"),
            Format::Json => match serde_json::to_value(json) {
                Ok(serde_json::Value::Null) | Err(_) => Ok(()),
                Ok(v) => writeln!(self.out, "{v}"),
            },
        };
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn finish(mut self, summary: &Summary) -> Result<ExitCode, Fatal> {
        self.line(summary, ReportLine::Summary(summary));
        let _ = self.out.flush();
        Ok(if summary.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

impl Reporter for Output {
    fn rejection(&mut self, r: &Rejection) {
        self.line(r, ReportLine::Rejection(r));
    }
    fn exception(&mut self, e: &ExceptionReport) {
        self.line(e, ReportLine::Exception(e));
    }
    fn conflict(&mut self, c: &Conflict) {
        self.line(c, ReportLine::Conflict(c));
    }
}

/// `doorstep migrate`: the schema version before and after, one line (or JSON object).
async fn migrate(deployment: &Deployment, format: Format) -> Result<ExitCode, Fatal> {
    let before = deployment.store_version().await?;
    let store = deployment.open_store_migrating().await?;
    let after = deployment.store_version().await?;
    let location = store.location();
    store.close().await;
    let show = |v: Option<i64>| v.map_or("none".to_owned(), |v| v.to_string());
    match format {
        Format::Json => say!(
            "{}",
            serde_json::json!({
                "kind": "migrate", "store": store.backend(), "from": before, "to": after,
            })
        ),
        Format::Human if before == after => say!(
            "{location}: schema at version {} already; nothing to do",
            show(after)
        ),
        Format::Human => say!(
            "{location}: schema migrated from version {} to {}",
            show(before),
            show(after)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(
    report: &StatusReport,
    deliveries: &[doorstep::store::deliveries::DeliveryCount],
    leases: &[doorstep::store::deliveries::LeaseCount],
    paused: &dyn Fn(&str, &str) -> bool,
    format: Format,
) {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let records: u64 = report
        .records
        .iter()
        .filter(|r| r.state == "current")
        .map(|r| r.count)
        .sum();
    let revisions: u64 = report.records.iter().map(|r| r.count).sum();
    let count_of = |issue: &str| -> u64 {
        report
            .issues
            .iter()
            .filter(|i| i.issue == issue)
            .map(|i| i.count)
            .sum()
    };
    let (rejected, conflicts) = (count_of("rejection"), count_of("conflict"));
    let open_exceptions: u64 = report.exceptions.iter().map(|e| e.count).sum();
    let _ = match format {
        Format::Json => (|| -> io::Result<()> {
            for r in &report.records {
                let mut v = serde_json::to_value(r)?;
                v["kind"] = "records".into();
                writeln!(out, "{v}")?;
            }
            for i in &report.issues {
                let v = serde_json::json!({ "kind": i.issue, "rule": i.rule, "count": i.count });
                writeln!(out, "{v}")?;
            }
            for e in &report.exceptions {
                let mut v = serde_json::to_value(e)?;
                v["kind"] = "exceptions".into();
                writeln!(out, "{v}")?;
            }
            for d in deliveries {
                let mut v = serde_json::to_value(d)?;
                v["kind"] = "deliveries".into();
                v["paused"] = paused(&d.trust, &d.destination).into();
                writeln!(out, "{v}")?;
            }
            for l in leases {
                let mut v = serde_json::to_value(l)?;
                v["kind"] = "leases".into();
                writeln!(out, "{v}")?;
            }
            let v = serde_json::json!({
                "kind": "summary", "records": records, "revisions": revisions,
                "rejected": rejected, "conflicts": conflicts, "exceptions": open_exceptions,
                "purged": report.purged,
            });
            writeln!(out, "{v}")
        })(),
        Format::Human => (|| -> io::Result<()> {
            writeln!(
                out,
                "{:<10} {:<8} {:<18} {:<11} {:>8}",
                "trust", "school", "kind", "state", "count"
            )?;
            for r in &report.records {
                writeln!(
                    out,
                    "{:<10} {:<8} {:<18} {:<11} {:>8}",
                    r.trust, r.school, r.record_kind, r.state, r.count
                )?;
            }
            if !report.issues.is_empty() {
                writeln!(out, "\nintake issues by rule:")?;
                for i in &report.issues {
                    writeln!(out, "  {:<10} {:<24} {:>8}", i.issue, i.rule, i.count)?;
                }
            }
            if !report.exceptions.is_empty() {
                writeln!(out, "\nopen policy exceptions by rule:")?;
                for e in &report.exceptions {
                    writeln!(
                        out,
                        "  {:<10} {:<8} {:<26} {:<8} {:>8}",
                        e.trust, e.school, e.rule, e.severity, e.count
                    )?;
                }
            }
            if !deliveries.is_empty() {
                writeln!(out, "\ndeliveries by destination:")?;
                for d in deliveries {
                    let note = if paused(&d.trust, &d.destination) {
                        "  (paused)"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "  {:<10} {:<22} {:<10} {:>8}{note}",
                        d.trust, d.destination, d.state, d.count
                    )?;
                }
            }
            if !leases.is_empty() {
                writeln!(out, "\ndeliveries in flight by instance:")?;
                for l in leases {
                    let until = match l.expires_in_seconds {
                        Some(s) if s < 0.0 => format!("  (lease ran out {:.0} s ago)", -s),
                        Some(s) => format!("  (leased for {s:.0} s more)"),
                        None => String::new(),
                    };
                    writeln!(out, "  {:<40} {:>8}{until}", l.instance, l.in_flight)?;
                }
            }
            let purged = match report.purged {
                0 => String::new(),
                n => format!(", {n} revisions' content purged under retention"),
            };
            writeln!(
                out,
                "\n{records} records ({revisions} revisions), {rejected} rejections, {conflicts} conflicts, {open_exceptions} open exceptions{purged}"
            )
        })(),
    };
}
