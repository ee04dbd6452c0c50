//! `doorstep keys create | list | revoke`: API keys for `serve`, shown once at creation,
//! kept as a public id and a hash (the library's `keys` module).

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use doorstep::keys;
use doorstep::store::KeyStore;
use doorstep::store::keys::Scope;

use super::{Common, Fatal, Format, required_deployment, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysAction {
    /// Make a key for some of a trust's schools and print it once; only its public id and a
    /// hash are kept.
    Create {
        #[arg(long)]
        trust: String,
        /// A school's URN (repeat for several); the key reaches only these.
        #[arg(long = "school", value_name = "URN", required = true)]
        schools: Vec<String>,
        /// The key may read records' state but not post records.
        #[arg(long, conflicts_with = "export")]
        read_only: bool,
        /// The key may read and export records.
        #[arg(long)]
        export: bool,
        /// A name to know the key by (who or what uses it).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every key: id, name, trust, schools, scope, created, last used, revoked — never a
    /// secret.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a key by its public id (as `keys list` shows it); a running server refuses it
    /// within 5 seconds.
    Revoke {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

pub(crate) fn run(action: KeysAction) -> Result<ExitCode, Fatal> {
    let run = |e: doorstep::store::StoreError| Fatal::Run(e.to_string());
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    match action {
        KeysAction::Create {
            trust,
            schools,
            read_only,
            export,
            name,
            common,
        } => {
            let deployment = required_deployment(&common.config)?;
            keys::check_reach(deployment.trusts()?, &trust, &schools).map_err(Fatal::Config)?;
            let scope = match (read_only, export) {
                (true, _) => Scope::ReadOnly,
                (_, true) => Scope::Export,
                _ => Scope::Write,
            };
            let made = keys::make(&trust, schools, scope, name, &now())
                .map_err(|e| Fatal::Run(e.to_string()))?;
            runtime()?.block_on(async {
                let store = deployment.open_store().await?;
                let saved = store.key_insert(&made.stored).await;
                store.close().await;
                saved.map_err(run)
            })?;
            let k = &made.stored;
            if common.format == Format::Json {
                let line = serde_json::json!({
                    "kind": "key", "key": made.plain, "id": k.id, "trust": k.trust,
                    "schools": k.schools, "scope": k.scope, "name": k.name,
                });
                say!("{line}");
            } else {
                say!("{}", made.plain);
                eprintln!(
                    "doorstep: key {} ({}) for {} school(s) {}: shown once, kept only as a hash",
                    k.id,
                    k.scope.as_str(),
                    k.trust,
                    k.schools.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::List { common } => {
            let deployment = required_deployment(&common.config)?;
            let listed = runtime()?.block_on(async {
                let store = deployment.open_store_for_reading().await?;
                let listed = store.key_list().await;
                store.close().await;
                listed.map_err(run)
            })?;
            for k in listed {
                if common.format == Format::Json {
                    let mut line = serde_json::to_value(&k).unwrap_or_default();
                    line["kind"] = "key".into();
                    say!("{line}");
                } else {
                    say!(
                        "{}  {:<10} {} [{}] {}  created {}  last used {}{}",
                        k.id,
                        k.scope.as_str(),
                        k.trust,
                        k.schools.join(","),
                        k.name.as_deref().unwrap_or("-"),
                        k.created_at,
                        k.last_used_at.as_deref().unwrap_or("never"),
                        k.revoked_at
                            .as_deref()
                            .map(|r| format!("  REVOKED {r}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Revoke { id, common } => {
            let deployment = required_deployment(&common.config)?;
            let revoked = runtime()?.block_on(async {
                let store = deployment.open_store().await?;
                let revoked = store.key_revoke(&id, &now()).await;
                store.close().await;
                revoked.map_err(run)
            })?;
            if !revoked {
                return Err(Fatal::Run(format!(
                    "no key {id} to revoke (unknown, or revoked already)"
                )));
            }
            eprintln!("doorstep: key {id} revoked");
            Ok(ExitCode::SUCCESS)
        }
    }
}
