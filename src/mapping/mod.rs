//! Trusts and their mappings (SPEC §3, §6): `mappings/<trust>/` holds `trust.toml` (the trust's
//! schools with URN, time zone and location) and `policy.toml` (its rules); routes, field and
//! code maps and mapping tests join them with the delivery issue.
//!
//! Owns: reading and checking `mappings/<trust>/`. May not touch: HTTP, the store.

mod trust;

pub use trust::{MappingError, SchoolEntry, Trust, TrustFile, Trusts};
