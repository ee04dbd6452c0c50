//! `mappings/<trust>/trust.toml` and the set of trusts a deployment serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{PolicyFile, RulesFile, SchoolPlace};
use crate::records::{TrustId, Urn};
use crate::toml_file::{self, FileError};

/// A mapping file's error (trust, policy, routes, maps, codes, test cases): the file, and
/// for a refused value its key.
pub type MappingError = FileError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchoolEntry {
    pub urn: Urn,
    pub name: String,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    /// Overrides the trust's time zone for this school.
    #[serde(default)]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    pub name: String,
    /// IANA name; default: the deployment's `time_zone` (itself `Europe/London` by default).
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub schools: Vec<SchoolEntry>,
    /// How long the store keeps a record's content once it is safely delivered.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// `[retention]` in `trust.toml` (SPEC §6): after `content_days` days delivered to every
/// destination, a revision's content is purged (`doorstep purge`, and daily in `serve`);
/// the trail keeps its kind, id, revision, content hash, school and times. Absent: kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub content_days: u32,
}

/// The longest retention a trust may set (a hundred years): beyond it, a date overflows.
pub const MAX_CONTENT_DAYS: u32 = 36_500;

/// One trust: its schools, each school's place, and its policy.
#[derive(Debug, Clone)]
pub struct Trust {
    pub id: String,
    pub folder: PathBuf,
    pub file: TrustFile,
    pub policy: PolicyFile,
    /// Routes, maps and codes; `None` when the trust has no `routes.toml`.
    pub mapping: Option<std::sync::Arc<super::Mapping>>,
    places: BTreeMap<String, SchoolPlace>,
    default_place: SchoolPlace,
}

impl Trust {
    /// Where a school is and which clock it keeps; a school missing from `trust.toml` gets
    /// the trust's time zone and no location.
    pub fn place(&self, urn: &str) -> SchoolPlace {
        self.places.get(urn).copied().unwrap_or(self.default_place)
    }

    pub fn rules(&self) -> &RulesFile {
        &self.policy.rules
    }
}

/// Every trust under a `mappings/` folder, by its short name.
#[derive(Debug, Clone, Default)]
pub struct Trusts {
    trusts: BTreeMap<String, Trust>,
}

impl Trusts {
    /// Loads `mappings/*/trust.toml` and `policy.toml`. A missing `mappings/` folder is an
    /// empty set; a folder without `trust.toml` is not a trust and is skipped.
    pub fn load(dir: &Path, default_tz: chrono_tz::Tz) -> Result<Trusts, MappingError> {
        let mut trusts = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Trusts { trusts });
        };
        let mut folders: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("trust.toml").is_file())
            .collect();
        folders.sort();
        for folder in folders {
            let trust = load_trust(&folder, default_tz)?;
            trusts.insert(trust.id.clone(), trust);
        }
        Ok(Trusts { trusts })
    }

    /// A set of one trust (for mapping tests).
    pub fn single(trust: Trust) -> Trusts {
        Trusts {
            trusts: BTreeMap::from([(trust.id.clone(), trust)]),
        }
    }

    pub fn get(&self, trust: &str) -> Option<&Trust> {
        self.trusts.get(trust)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Trust> {
        self.trusts.values()
    }
}

/// Reads and parses one TOML file of a mapping; errors name the file (and for a parse error
/// the line and key, never a value).
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MappingError> {
    toml_file::parse(path, &toml_file::read(path)?)
}

pub fn load_trust(folder: &Path, default_tz: chrono_tz::Tz) -> Result<Trust, MappingError> {
    let path = folder.join("trust.toml");
    let invalid = |key: String, reason: &str| MappingError::Invalid {
        path: path.clone(),
        key,
        reason: reason.to_owned(),
    };
    let id = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if TrustId::try_from(id.clone()).is_err() {
        return Err(invalid(
            "(folder name)".into(),
            "a trust's folder is its short name: 1-64 characters of a-z 0-9 -",
        ));
    }
    let file: TrustFile = read_toml(&path)?;
    if let Some(r) = file.retention
        && r.content_days > MAX_CONTENT_DAYS
    {
        return Err(invalid(
            "retention.content_days".into(),
            "at most 36500 days (0: purge as soon as delivered everywhere)",
        ));
    }
    let zone = |key: String, name: &Option<String>, fallback: chrono_tz::Tz| match name {
        None => Ok(fallback),
        Some(n) => n
            .parse::<chrono_tz::Tz>()
            .map_err(|_| invalid(key, "not an IANA time zone name")),
    };
    let trust_tz = zone("time_zone".into(), &file.time_zone, default_tz)?;
    let mut places = BTreeMap::new();
    for (i, s) in file.schools.iter().enumerate() {
        let time_zone = zone(format!("schools[{i}].time_zone"), &s.time_zone, trust_tz)?;
        let location = match (s.latitude, s.longitude) {
            (Some(lat), Some(lon)) if sunrise::Coordinates::new(lat, lon).is_some() => {
                Some((lat, lon))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    format!("schools[{i}].latitude"),
                    "give both latitude (-90..90) and longitude (-180..180), or neither",
                ));
            }
        };
        if places
            .insert(
                s.urn.to_string(),
                SchoolPlace {
                    time_zone,
                    location,
                },
            )
            .is_some()
        {
            return Err(invalid(
                format!("schools[{i}].urn"),
                "this URN is listed twice",
            ));
        }
    }
    let policy_path = folder.join("policy.toml");
    let policy = if policy_path.exists() {
        PolicyFile::load(&policy_path)?
    } else {
        PolicyFile::default()
    };
    let mapping = super::Mapping::load(folder)?.map(std::sync::Arc::new);
    Ok(Trust {
        id,
        folder: folder.to_path_buf(),
        file,
        policy,
        mapping,
        places,
        default_place: SchoolPlace {
            time_zone: trust_tz,
            location: None,
        },
    })
}
