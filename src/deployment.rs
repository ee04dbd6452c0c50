//! The composition root: one deployment — its `doorstep.toml`, the trusts under
//! `mappings/`, the connector files, the delivery engine, the store and the signing key —
//! assembled in one place, for every CLI verb and the server alike.
//!
//! Owns: loading and assembling the parts, and the library's entry points that need them
//! all (`Deployment::sync`, in the `sync` module, checkpoint signing). May not touch: what any
//! part does — each stays in its own module.
//!
//! Parts are loaded on first use and kept, so a verb that needs only the store (`status`)
//! does not fail on a broken mapping, and one that needs everything loads each part once.
//! [`Deployment::load_all`] loads every part at once, for a long-running process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::audit::{NoteError, NoteSigner};
use crate::config::{Config, ConfigError, SecretRef};
use crate::connectors::{ConnectorError, Connectors};
use crate::delivery::{DeliveryError, Engine};
use crate::mapping::{MappingError, Trusts};
use crate::store::postgres::Migrate;
use crate::store::{AnyStore, LockError, PgStore, SqliteStore, Store, StoreError, WriterLock};

/// Why a deployment, or one of its parts, cannot be had. Each names its file.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The connectors folder; its error names the file.
    #[error("{0}")]
    Connector(ConnectorError),
    /// A destination the engine cannot build (named by trust and destination).
    #[error("{config}: {source}")]
    Engine {
        config: String,
        #[source]
        source: DeliveryError,
    },
    #[error("{config}: {source}")]
    Store {
        config: String,
        #[source]
        source: StoreError,
    },
    /// No `[audit] signing_key`, or one that cannot be read or parsed (never its text).
    #[error("{0}")]
    Signer(String),
    /// Another process holds the store's writer lock (or the lock cannot be taken).
    #[error(transparent)]
    Locked(#[from] LockError),
}

/// One deployment, as `doorstep.toml` describes it.
pub struct Deployment {
    config: Config,
    trusts: OnceLock<Arc<Trusts>>,
    connectors: OnceLock<Arc<Connectors>>,
    engine: OnceLock<Arc<Engine>>,
}

/// The value in `cell`, made by `make` on first use (an error is returned, not kept).
fn get_or_load<T, E>(cell: &OnceLock<T>, make: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

impl Deployment {
    /// Reads and checks `doorstep.toml`; the other parts load on first use.
    pub fn load(config_path: &Path) -> Result<Self, DeploymentError> {
        Ok(Self::from_config(Config::load(config_path)?))
    }

    /// Reads the config and every part it names (trusts, connectors, the engine), so that a
    /// long-running process fails at start, not at its first request.
    pub fn load_all(config_path: &Path) -> Result<Self, DeploymentError> {
        let d = Self::load(config_path)?;
        d.engine()?;
        Ok(d)
    }

    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            trusts: OnceLock::new(),
            connectors: OnceLock::new(),
            engine: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The trusts under `mappings/` (trust, policy, routes, maps, codes).
    pub fn trusts(&self) -> Result<&Arc<Trusts>, DeploymentError> {
        get_or_load(&self.trusts, || {
            Trusts::load(&self.config.mappings_dir, self.config.time_zone).map(Arc::new)
        })
        .map_err(Into::into)
    }

    /// The connector files under `connectors/`.
    pub fn connectors(&self) -> Result<&Arc<Connectors>, DeploymentError> {
        get_or_load(&self.connectors, || {
            Connectors::load(&self.config.connectors_dir).map(Arc::new)
        })
        .map_err(DeploymentError::Connector)
    }

    /// Each route's map checked against its connector: one line per problem, naming the
    /// trust's file and key. Empty when every trust is sound.
    pub fn plan_problems(&self) -> Result<Vec<String>, DeploymentError> {
        let connectors = self.connectors()?;
        Ok(self
            .trusts()?
            .iter()
            .flat_map(|t| crate::delivery::plan::check_trust(t, connectors))
            .collect())
    }

    /// The delivery engine: every destination of every trust, built (secrets resolved).
    pub fn engine(&self) -> Result<&Arc<Engine>, DeploymentError> {
        let (trusts, connectors) = (self.trusts()?.clone(), self.connectors()?.clone());
        get_or_load(&self.engine, || {
            Engine::new(trusts, connectors, &self.config.delivery).map(Arc::new)
        })
        .map_err(|source| DeploymentError::Engine {
            config: self.config.path.display().to_string(),
            source,
        })
    }

    /// Opens the deployment's store: the SQLite file (created and migrated if need be), or
    /// the PostgreSQL database, which must be at this build's schema (`doorstep migrate`).
    pub async fn open_store(&self) -> Result<AnyStore, DeploymentError> {
        self.open(Migrate::Require, false).await
    }

    /// Opens the store bringing its schema up to date (`doorstep migrate`, `serve
    /// --migrate`).
    pub async fn open_store_migrating(&self) -> Result<AnyStore, DeploymentError> {
        self.open(Migrate::Apply, false).await
    }

    /// The store for a reading verb: read-only where it cannot be written (an auditor's
    /// copy of a SQLite file), never migrated there ([`SqliteStore::open_for_reading`]).
    pub async fn open_store_for_reading(&self) -> Result<AnyStore, DeploymentError> {
        self.open(Migrate::Require, true).await
    }

    /// The schema version the store is at (`None`: none yet), without changing it.
    pub async fn store_version(&self) -> Result<Option<i64>, DeploymentError> {
        match &self.config.postgres {
            Some(pg) => {
                let url = pg.url.resolve().map_err(|reason| {
                    self.store_error(StoreError::Io {
                        location: "[store] postgres".into(),
                        reason,
                    })
                })?;
                crate::store::postgres::version_at(&url).await
            }
            None => SqliteStore::version_at(&self.config.sqlite_path).await,
        }
        .map_err(|source| self.store_error(source))
    }

    async fn open(&self, migrate: Migrate, reading: bool) -> Result<AnyStore, DeploymentError> {
        let opened = match &self.config.postgres {
            Some(pg) => {
                let url = pg.url.resolve().map_err(|reason| {
                    self.store_error(StoreError::Io {
                        location: "[store] postgres".into(),
                        reason,
                    })
                })?;
                PgStore::open(&url, pg.lease, migrate)
                    .await
                    .map(AnyStore::Postgres)
            }
            None if reading => SqliteStore::open_for_reading(&self.config.sqlite_path)
                .await
                .map(AnyStore::Sqlite),
            None => SqliteStore::open(&self.config.sqlite_path)
                .await
                .map(AnyStore::Sqlite),
        };
        opened.map_err(|source| self.store_error(source))
    }

    fn store_error(&self, source: StoreError) -> DeploymentError {
        DeploymentError::Store {
            config: self.config.path.display().to_string(),
            source,
        }
    }

    /// The store's writer lock, for a run that writes (`sync`, `ingest`): one writer per
    /// SQLite store. Waits up to `wait` for another writer to finish; hold it for the run.
    /// PostgreSQL takes none: several instances share its work (leases, row locks).
    pub fn lock_writer(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<WriterLock>, DeploymentError> {
        if self.config.postgres.is_some() {
            return Ok(None);
        }
        Ok(Some(crate::store::sqlite_lock_writer(
            &self.config.sqlite_path,
            wait,
        )?))
    }

    /// The key that signs the trail's checkpoints, from the file or environment variable
    /// `[audit] signing_key` names (resolved as every secret is, by [`SecretRef::resolve`]).
    pub fn signer(&self) -> Result<NoteSigner, DeploymentError> {
        let Some(secret) = &self.config.signing_key else {
            return Err(DeploymentError::Signer(format!(
                "{}: no [audit] signing_key; make one with `doorstep audit keygen --out PATH` and set signing_key = {{ file = \"PATH\" }}",
                self.config.path.display()
            )));
        };
        let text = secret
            .resolve(Path::new(""))
            .map_err(|reason| DeploymentError::Signer(format!("signing key: {reason}")))?;
        let source = match secret {
            SecretRef {
                env: Some(name), ..
            } => format!("environment variable {name}"),
            SecretRef { file, .. } => file
                .as_deref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
        };
        // Never the key's text in an error.
        NoteSigner::parse(&text).map_err(|e: NoteError| {
            DeploymentError::Signer(format!("signing key from {source}: {e}"))
        })
    }

    /// Whether the deployment signs checkpoints and its key file exists yet (before
    /// `audit keygen` it does not, which is normal and only logged).
    pub fn signs_checkpoints(&self) -> bool {
        match &self.config.signing_key {
            None => false,
            Some(SecretRef {
                file: Some(path), ..
            }) if !path.exists() => {
                tracing::info!(key = %path.display(), "no signing key yet: no checkpoint signed");
                false
            }
            Some(_) => true,
        }
    }

    /// A fresh signed checkpoint of every trust's log (one per log size), when the
    /// deployment signs them. Returns what could not be signed, one line each: a failure
    /// here is reported, not fatal (the records are in).
    pub async fn sign_checkpoints<S: Store>(&self, store: &S) -> Vec<String> {
        if !self.signs_checkpoints() {
            return Vec::new();
        }
        let signer = match self.signer() {
            Ok(s) => s,
            Err(e) => return vec![format!("no checkpoint signed: {e}")],
        };
        match crate::audit::checkpoint::sign_all(store, &signer, None).await {
            Ok(signed) => signed
                .into_iter()
                .filter_map(|s| {
                    s.note
                        .err()
                        .map(|e| format!("no checkpoint signed for {}: {e}", s.trust))
                })
                .collect(),
            Err(e) => vec![format!("no checkpoint signed: {e}")],
        }
    }
}
