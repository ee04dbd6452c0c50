//! Routing and mapping (SPEC §3): which destinations a stored record goes to, and how its
//! canonical fields become each target's body, codes and CSV rows.
//!
//! Owns: `mappings/<trust>/` files. May not touch: HTTP, the store's delivery states.
//! Not built yet: the delivery issue fills this in.
