//! Connectors (SPEC §3): one declarative file per target system under `connectors/`,
//! describing transport, authentication, endpoints and how responses are classified.
//!
//! Owns: reading and checking connector files. May not touch: routing, the store.
//! Not built yet: the delivery issue fills this in.
