//! doorstep: home-visit records, incidents and safeguarding flags from schools, checked
//! against the trust's policy and delivered into the systems each school already uses.
//!
//! Data flows one way, and each module owns one step:
//!
//! ```text
//! intake (files, HTTP) → records (validate) → policy (exceptions, before anything is written)
//!        → store (durable: the revision and its exceptions in one transaction)
//!        → mapping (routes, field maps) → delivery (via connectors) → audit (evidence trail)
//! ```
//!
//! [`pipeline`] strings intake → store together, [`sync`] runs the whole cron job, and
//! [`deployment`] assembles the parts from `doorstep.toml`. The command line (`src/cli/`,
//! in the binary) and the coming server are thin shells over this public API. The module
//! map, glossary and one record's path are in `docs/architecture.md`.

pub mod audit;
pub mod config;
pub mod connectors;
pub mod delivery;
pub mod deployment;
pub mod exporter;
pub mod intake;
pub mod keys;
pub mod mapping;
pub mod mapping_test;
pub mod pipeline;
pub mod policy;
pub mod records;
pub mod report;
pub mod retention;
pub mod server;
pub mod store;
pub mod sync;
pub mod synthetic;
pub mod toml_file;
pub mod trail;
