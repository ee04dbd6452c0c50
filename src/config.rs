//! `doorstep.toml`: where the store, the drop folder, the archive, connectors and mappings
//! are, and where secrets come from. Relative paths are taken from the config file's own
//! folder. Secrets are references (`{ env = "NAME" }` or `{ file = "PATH" }`), never inline.
//!
//! Owns: reading and checking the deployment config. May not touch: the store, records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::toml_file::{self, FileError};

/// Where the config came from when none was named.
pub const DEFAULT_PATH: &str = "doorstep.toml";
pub const ENV_VAR: &str = "DOORSTEP_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {reason}")]
    Read { path: PathBuf, reason: String },
    /// Not valid TOML, or a value refused (`Parse` / `Invalid`).
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: secret `{key}`: {reason}")]
    Secret {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// A secret reference: exactly one of `env` or `file`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Set to `1` to use secret files that group or others can read (refused otherwise, as ssh
/// refuses an open private key).
pub const ALLOW_OPEN_SECRETS: &str = "DOORSTEP_ALLOW_OPEN_SECRETS";

impl SecretRef {
    /// The secret's value: the variable's value, or the file's contents without the final
    /// line break (a relative file is taken from `base`). A file readable by group or others
    /// is refused unless `DOORSTEP_ALLOW_OPEN_SECRETS=1`. The error names the variable or
    /// file, never the value.
    pub fn resolve(&self, base: &Path) -> Result<String, String> {
        let allow_open = std::env::var(ALLOW_OPEN_SECRETS).is_ok_and(|v| v == "1");
        self.resolve_with(base, allow_open)
    }

    /// [`SecretRef::resolve`], with whether open secret files are allowed given.
    pub fn resolve_with(&self, base: &Path, allow_open: bool) -> Result<String, String> {
        match (&self.env, &self.file) {
            (Some(name), _) => std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("environment variable `{name}` is not set")),
            (None, Some(file)) => {
                let path = base.join(file);
                let cannot =
                    |e: std::io::Error| format!("cannot read `{}`: {}", path.display(), e.kind());
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&path).map_err(cannot)?.permissions(),
                );
                if mode & 0o077 != 0 && !allow_open {
                    return Err(format!(
                        "`{}` is readable by group or others (mode {:o}): `chmod 600` it, or set {ALLOW_OPEN_SECRETS}=1",
                        path.display(),
                        mode & 0o777
                    ));
                }
                std::fs::read_to_string(&path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(cannot)
            }
            (None, None) => Err("neither `env` nor `file` is given".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: RawStore,
    #[serde(default)]
    intake: RawIntake,
    #[serde(default)]
    connectors: Option<PathBuf>,
    #[serde(default)]
    mappings: Option<PathBuf>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    delivery: RawDelivery,
    /// `[destinations.<trust>.<name>]`: the deployment's say over a mapping's destination.
    #[serde(default)]
    destinations: BTreeMap<String, BTreeMap<String, RawDestination>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    out: Option<PathBuf>,
    max_wait_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    allow_plain_http: bool,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    schools: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    username: Option<SecretRef>,
    #[serde(default)]
    password: Option<SecretRef>,
    #[serde(default)]
    token: Option<SecretRef>,
    #[serde(default)]
    client_id: Option<SecretRef>,
    #[serde(default)]
    client_secret: Option<SecretRef>,
    #[serde(default)]
    secrets: Option<Vec<SecretRef>>,
}

/// `[destinations.<trust>.<name>.limits]`: the connector's `[limits]`, replaced one by one
/// (checked by the same rules once applied).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub concurrency: Option<usize>,
    pub rate_per_second: Option<u32>,
    pub timeout_seconds: Option<f64>,
    pub max_attempts: Option<u32>,
    pub backoff_min_seconds: Option<f64>,
    pub backoff_max_seconds: Option<f64>,
}

/// Credentials the deployment gives a destination in place of the mapping's (each a
/// reference, never a value; files from the config's folder).
#[derive(Debug, Clone, Default)]
pub struct SecretOverrides {
    pub username: Option<SecretRef>,
    pub password: Option<SecretRef>,
    pub token: Option<SecretRef>,
    pub client_id: Option<SecretRef>,
    pub client_secret: Option<SecretRef>,
    /// Webhook signing secrets, all of them (the mapping's list is replaced).
    pub secrets: Option<Vec<SecretRef>>,
}

impl SecretOverrides {
    /// Each reference by its key, the list's as `secrets[i]`.
    fn each_mut(&mut self) -> Vec<(String, &mut SecretRef)> {
        let mut out: Vec<(String, &mut SecretRef)> = [
            ("username", &mut self.username),
            ("password", &mut self.password),
            ("token", &mut self.token),
            ("client_id", &mut self.client_id),
            ("client_secret", &mut self.client_secret),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.as_mut().map(|s| (k.to_owned(), s)))
        .collect();
        for (i, s) in self.secrets.iter_mut().flatten().enumerate() {
            out.push((format!("secrets[{i}]"), s));
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// Required unless `postgres` is given.
    sqlite: Option<PathBuf>,
    /// A URL without a password, or `{ env }` / `{ file }` holding one that has.
    postgres: Option<RawPostgres>,
    lease_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPostgres {
    Url(String),
    Secret(SecretRef),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntake {
    drop: Option<PathBuf>,
    /// `false`: `sync` leaves ingested files in the drop folder (a read-only share; each
    /// run re-reads them and finds them unchanged).
    move_files: Option<bool>,
    /// A drop file changed less than this many seconds ago is watched until it has been
    /// still that long; one that changes meanwhile is left for the next run.
    settle_seconds: Option<f64>,
    /// How often `serve` takes the drop folder.
    sweep_seconds: Option<f64>,
    archive: Option<PathBuf>,
    rejected: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    /// How long a client may take to send a request's head (slow-header clients).
    header_timeout_seconds: Option<f64>,
    /// How long a request may take from its head to its answer, body included.
    request_timeout_seconds: Option<f64>,
    /// Requests a second one API key may make, and the burst it may spend at once.
    key_requests_per_second: Option<u32>,
    key_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    signing_key: Option<SecretRef>,
    /// How often `serve` signs each trust's checkpoint.
    checkpoint_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    /// How often `serve` purges expired content (each trust's `[retention]` in its
    /// `trust.toml` says what expires).
    purge_seconds: Option<f64>,
}

/// What the deployment says about one destination beyond the mapping
/// (`[destinations.<trust>.<name>]`).
#[derive(Debug, Clone, Default)]
pub struct DestinationOverride {
    /// Deliveries wait (nothing is sent) until the destination is un-paused.
    pub paused: bool,
    /// Replaces the mapping's `url` (staging against production, a test receiver).
    pub url: Option<String>,
    /// Replaces the mapping's `token_url` (a staging system has its own token service).
    pub token_url: Option<String>,
    /// Lets the destination's URLs be plain `http://` beyond loopback (a test receiver on
    /// the school's network); each start warns.
    pub allow_plain_http: bool,
    /// Over the mapping's `vars`.
    pub vars: BTreeMap<String, String>,
    /// Over the mapping's `schools."URN"` vars, key by key.
    pub schools: BTreeMap<String, BTreeMap<String, String>>,
    pub limits: LimitOverrides,
    pub secrets: SecretOverrides,
}

/// The delivery engine's settings from `doorstep.toml`.
#[derive(Debug, Clone, Default)]
pub struct DeliverySettings {
    /// Where CSV destinations write: `<out>/<trust>/…`.
    pub out_dir: PathBuf,
    /// By (trust, destination).
    pub overrides: BTreeMap<(String, String), DestinationOverride>,
}

/// A checked config with every path made absolute against the config file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The SQLite store's file; with PostgreSQL, where the store's local files (an
    /// export's temporary folder) would go: `var/doorstep.db` unless given.
    pub sqlite_path: PathBuf,
    /// `[store] postgres`: the store is PostgreSQL, shared by several instances.
    pub postgres: Option<PostgresConfig>,
    pub drop_dir: PathBuf,
    pub archive_dir: PathBuf,
    pub rejected_dir: PathBuf,
    /// Whether `sync` moves ingested files to the archive or rejected folder.
    pub move_files: bool,
    /// How long a drop file must have been still before `sync` reads it.
    pub settle: std::time::Duration,
    /// How often `serve` takes the drop folder.
    pub sweep: std::time::Duration,
    /// How often `serve` signs each trust's checkpoint.
    pub checkpoint_every: std::time::Duration,
    /// How often `serve` purges expired content (at start, then this often).
    pub purge_every: std::time::Duration,
    pub connectors_dir: PathBuf,
    pub mappings_dir: PathBuf,
    pub time_zone: chrono_tz::Tz,
    pub listen: std::net::SocketAddr,
    /// `serve`: how long a client may take to send a request's head.
    pub header_timeout: std::time::Duration,
    /// `serve`: how long a request may take, body read and answer included (then 408).
    pub request_timeout: std::time::Duration,
    /// `serve`: requests a second one key may make, and the burst it may spend.
    pub key_rate: std::num::NonZeroU32,
    pub key_burst: std::num::NonZeroU32,
    pub signing_key: Option<SecretRef>,
    /// Where CSV destinations write (`<out>/<trust>/…`).
    pub out_dir: PathBuf,
    /// How long `sync` keeps waiting for retries that fall due.
    pub max_wait: std::time::Duration,
    pub delivery: DeliverySettings,
}

/// Where the PostgreSQL store is and how its instances share the work.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: PostgresUrl,
    /// How long a claimed delivery stays leased to the instance that claimed it (renewed
    /// while the instance lives); after that, another instance may take it.
    pub lease: std::time::Duration,
}

/// The connection URL: written in the config (no password allowed), or in a variable or file.
#[derive(Debug, Clone)]
pub enum PostgresUrl {
    Inline(String),
    Secret(SecretRef),
}

impl PostgresUrl {
    /// The URL itself (a secret's value read now). The error never carries the URL.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            PostgresUrl::Inline(url) => Ok(url.clone()),
            PostgresUrl::Secret(secret) => secret.resolve(Path::new("")),
        }
    }
}

/// Whether a connection URL carries a password (`user:password@`), without parsing it
/// loosely: everything between `://` and the last `@` of the authority is the user part.
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
        || url.contains("password=")
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.kind().to_string(),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml_file::parse(path, text)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let at = |p: &Path| base.join(p);
        let invalid = |key: &str, reason: String| FileError::invalid(path, key, reason);
        let time_zone = match raw.time_zone.as_deref() {
            None => chrono_tz::Europe::London,
            Some(name) => name
                .parse()
                .map_err(|_| invalid("time_zone", "not an IANA time zone name".into()))?,
        };
        let listen = raw
            .server
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .map_err(|_| invalid("server.listen", "not an address:port".into()))?;
        if let Some(key) = &raw.audit.signing_key {
            check_secret(path, "audit.signing_key", key)?;
        }
        let max_wait = raw.delivery.max_wait_seconds.unwrap_or(30.0);
        if !(0.0..=86_400.0).contains(&max_wait) {
            return Err(invalid("delivery.max_wait_seconds", "from 0 to 86400".into()).into());
        }
        let settle = raw.intake.settle_seconds.unwrap_or(2.0);
        if !(0.0..=3_600.0).contains(&settle) {
            return Err(invalid("intake.settle_seconds", "from 0 to 3600".into()).into());
        }
        let sweep = raw.intake.sweep_seconds.unwrap_or(30.0);
        if !(1.0..=86_400.0).contains(&sweep) {
            return Err(invalid("intake.sweep_seconds", "from 1 to 86400".into()).into());
        }
        let header_timeout = raw.server.header_timeout_seconds.unwrap_or(10.0);
        if !(0.1..=300.0).contains(&header_timeout) {
            return Err(invalid("server.header_timeout_seconds", "from 0.1 to 300".into()).into());
        }
        let request_timeout = raw.server.request_timeout_seconds.unwrap_or(30.0);
        if !(0.1..=3_600.0).contains(&request_timeout) {
            return Err(
                invalid("server.request_timeout_seconds", "from 0.1 to 3600".into()).into(),
            );
        }
        let positive = |key: &str, n: Option<u32>, default: u32| {
            std::num::NonZeroU32::new(n.unwrap_or(default))
                .ok_or_else(|| invalid(key, "at least 1".into()))
        };
        let key_rate = positive(
            "server.key_requests_per_second",
            raw.server.key_requests_per_second,
            100,
        )?;
        let key_burst = positive("server.key_burst", raw.server.key_burst, 200)?;
        let checkpoint_every = raw.audit.checkpoint_seconds.unwrap_or(300.0);
        if !(1.0..=86_400.0).contains(&checkpoint_every) {
            return Err(invalid("audit.checkpoint_seconds", "from 1 to 86400".into()).into());
        }
        let purge_every = raw.retention.purge_seconds.unwrap_or(86_400.0);
        if !(1.0..=604_800.0).contains(&purge_every) {
            return Err(invalid("retention.purge_seconds", "from 1 to 604800".into()).into());
        }
        let out_dir = at(raw.delivery.out.as_deref().unwrap_or(Path::new("out")));
        let postgres = Self::postgres(path, &raw.store, &at)?;
        let mut overrides = BTreeMap::new();
        for (trust, dests) in raw.destinations {
            for (name, d) in dests {
                let mut secrets = SecretOverrides {
                    username: d.username,
                    password: d.password,
                    token: d.token,
                    client_id: d.client_id,
                    client_secret: d.client_secret,
                    secrets: d.secrets,
                };
                for (key, secret) in secrets.each_mut() {
                    check_secret(path, &format!("destinations.{trust}.{name}.{key}"), secret)?;
                    secret.file = secret.file.as_deref().map(&at);
                }
                overrides.insert(
                    (trust.clone(), name),
                    DestinationOverride {
                        paused: d.paused,
                        url: d.url,
                        token_url: d.token_url,
                        allow_plain_http: d.allow_plain_http,
                        vars: d.vars,
                        schools: d.schools,
                        limits: d.limits,
                        secrets,
                    },
                );
            }
        }
        Ok(Config {
            move_files: raw.intake.move_files.unwrap_or(true),
            settle: std::time::Duration::from_secs_f64(settle),
            sweep: std::time::Duration::from_secs_f64(sweep),
            checkpoint_every: std::time::Duration::from_secs_f64(checkpoint_every),
            purge_every: std::time::Duration::from_secs_f64(purge_every),
            max_wait: std::time::Duration::from_secs_f64(max_wait),
            delivery: DeliverySettings {
                out_dir: out_dir.clone(),
                overrides,
            },
            out_dir,
            path: path.to_path_buf(),
            sqlite_path: at(raw
                .store
                .sqlite
                .as_deref()
                .unwrap_or(Path::new("var/doorstep.db"))),
            postgres,
            drop_dir: at(raw.intake.drop.as_deref().unwrap_or(Path::new("drop"))),
            archive_dir: at(raw
                .intake
                .archive
                .as_deref()
                .unwrap_or(Path::new("archive"))),
            rejected_dir: at(raw
                .intake
                .rejected
                .as_deref()
                .unwrap_or(Path::new("rejected"))),
            connectors_dir: at(raw.connectors.as_deref().unwrap_or(Path::new("connectors"))),
            mappings_dir: at(raw.mappings.as_deref().unwrap_or(Path::new("mappings"))),
            time_zone,
            listen,
            header_timeout: std::time::Duration::from_secs_f64(header_timeout),
            request_timeout: std::time::Duration::from_secs_f64(request_timeout),
            key_rate,
            key_burst,
            signing_key: raw.audit.signing_key.map(|s| SecretRef {
                env: s.env,
                file: s.file.map(|f| at(&f)),
            }),
        })
    }
}

impl Config {
    /// `[store] postgres` checked: one back end named, no password written in the file.
    fn postgres(
        path: &Path,
        store: &RawStore,
        at: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Option<PostgresConfig>, ConfigError> {
        let invalid = |key: &str, reason: String| FileError::invalid(path, key, reason);
        let lease = store.lease_seconds.unwrap_or(30.0);
        if !(1.0..=3600.0).contains(&lease) {
            return Err(invalid("store.lease_seconds", "from 1 to 3600".into()).into());
        }
        let url = match &store.postgres {
            None if store.sqlite.is_none() => {
                return Err(invalid(
                    "store",
                    "name the store: `sqlite = \"PATH\"` or `postgres = \"postgres://user@host/db\"`"
                        .into(),
                )
                .into());
            }
            None => return Ok(None),
            Some(RawPostgres::Url(url)) => {
                if url_has_password(url) {
                    return Err(ConfigError::Secret {
                        path: path.to_path_buf(),
                        key: "store.postgres".into(),
                        reason: "a URL carrying a password is not written in the config: \
                                 give `{ env = \"NAME\" }` or `{ file = \"PATH\" }`"
                            .into(),
                    });
                }
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        "store.postgres",
                        "a URL beginning postgres:// or postgresql://".into(),
                    )
                    .into());
                }
                PostgresUrl::Inline(url.clone())
            }
            Some(RawPostgres::Secret(secret)) => {
                check_secret(path, "store.postgres", secret)?;
                PostgresUrl::Secret(SecretRef {
                    env: secret.env.clone(),
                    file: secret.file.as_deref().map(at),
                })
            }
        };
        Ok(Some(PostgresConfig {
            url,
            lease: std::time::Duration::from_secs_f64(lease),
        }))
    }
}

pub fn check_secret(path: &Path, key: &str, s: &SecretRef) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Secret {
        path: path.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    };
    match (&s.env, &s.file) {
        (Some(_), Some(_)) => Err(err("give either `env` or `file`, not both")),
        (None, None) => Err(err("give `{ env = \"NAME\" }` or `{ file = \"PATH\" }`")),
        (Some(name), None) if name.is_empty() => Err(err("`env` names an empty variable")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-canary\n").unwrap();
        let secret = SecretRef {
            env: None,
            file: Some("token".into()),
        };
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = secret.resolve_with(dir.path(), false).unwrap_err();
            assert!(e.contains("readable by group or others"), "{e}");
            assert!(e.contains(&format!("{mode:o}")), "{e}");
            assert!(!e.contains("s3cret-canary"), "{e}");
            assert_eq!(
                secret.resolve_with(dir.path(), true).as_deref(),
                Ok("s3cret-canary")
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            secret.resolve_with(dir.path(), false).as_deref(),
            Ok("s3cret-canary")
        );
        let missing = SecretRef {
            env: None,
            file: Some("nope".into()),
        };
        let e = missing.resolve_with(dir.path(), false).unwrap_err();
        assert!(e.starts_with("cannot read `"), "{e}");
    }

    #[test]
    fn relative_paths_come_from_the_config_folder() {
        let c = Config::parse(
            Path::new("/etc/doorstep/doorstep.toml"),
            "[store]\nsqlite = \"var/d.db\"\n[intake]\ndrop = \"/srv/drop\"\n",
        )
        .unwrap();
        assert_eq!(c.sqlite_path, Path::new("/etc/doorstep/var/d.db"));
        assert_eq!(c.drop_dir, Path::new("/srv/drop"));
        assert_eq!(c.mappings_dir, Path::new("/etc/doorstep/mappings"));
    }

    #[test]
    fn the_store_is_sqlite_or_postgres_and_a_password_is_never_inline() {
        let parse = |t: &str| Config::parse(Path::new("/etc/doorstep/d.toml"), t);
        let c = parse("[store]\npostgres = \"postgres://app@db:5432/ds\"\n").unwrap();
        let pg = c.postgres.unwrap();
        assert!(matches!(&pg.url, PostgresUrl::Inline(u) if u == "postgres://app@db:5432/ds"));
        assert_eq!(pg.lease, std::time::Duration::from_secs(30));
        assert_eq!(c.sqlite_path, Path::new("/etc/doorstep/var/doorstep.db"));
        let c = parse("[store]\npostgres = { file = \"db-url\" }\nlease_seconds = 5\n").unwrap();
        let pg = c.postgres.unwrap();
        assert!(
            matches!(&pg.url, PostgresUrl::Secret(s) if s.file.as_deref() == Some(Path::new("/etc/doorstep/db-url")))
        );
        assert_eq!(pg.lease, std::time::Duration::from_secs(5));
        for bad in [
            "[store]\npostgres = \"postgres://app:canary-pw@db/ds\"\n",
            "[store]\npostgres = \"postgres://db/ds?password=canary-pw\"\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("store.postgres"), "{e}");
            assert!(!e.contains("canary-pw"), "{e}");
        }
        for (bad, key) in [
            ("[store]\n", "store"),
            ("[store]\npostgres = \"mysql://db/x\"\n", "store.postgres"),
            (
                "[store]\nsqlite = \"x\"\nlease_seconds = 0\n",
                "store.lease_seconds",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        assert!(
            parse("[store]\nsqlite = \"x\"\n")
                .unwrap()
                .postgres
                .is_none()
        );
    }

    #[test]
    fn unknown_keys_and_inline_secrets_are_errors() {
        let e = Config::parse(
            Path::new("d.toml"),
            "[store]\nsqlite = \"x\"\nsqlitee = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("d.toml") && e.contains("sqlitee"), "{e}");
        let e = Config::parse(
            Path::new("d.toml"),
            "[store]\nsqlite = \"x\"\n[audit]\nsigning_key = \"inline-secret\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("signing_key"), "{e}");
        assert!(
            !e.contains("inline-secret"),
            "a secret must not be echoed: {e}"
        );
        let e = Config::parse(
            Path::new("d.toml"),
            "[store]\nsqlite = \"x\"\ntime_zone = 1\n",
        );
        assert!(e.is_err());
    }
}
