//! Delivery (SPEC §4): one tracked delivery per destination per record revision, with
//! retries, rate limits, idempotency keys and dead letters.
//!
//! Owns: sending mapped bodies through connectors and recording the outcome in the store.
//! May not touch: intake or validation. Not built yet: the delivery issue fills this in.
