//! doorstep: home-visit records, incidents and safeguarding flags from schools, checked
//! against the trust's policy and delivered into the systems each school already uses.
//!
//! Data flows one way, and each module owns one step:
//!
//! ```text
//! intake (files, HTTP) → records (validate) → store (durable) → policy (exceptions)
//!        → mapping (routes, field maps) → delivery (via connectors) → audit (evidence trail)
//! ```
//!
//! `cli` and `server` are thin shells over [`pipeline`], which strings the steps together.

pub mod audit;
pub mod config;
pub mod connectors;
pub mod delivery;
pub mod deployment;
pub mod intake;
pub mod mapping;
pub mod mapping_test;
pub mod pipeline;
pub mod policy;
pub mod records;
pub mod report;
pub mod server;
pub mod store;
pub mod sync;
pub mod synthetic;
pub mod toml_file;
