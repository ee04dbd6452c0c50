//! Trust policy checks (SPEC §2): rules over accepted records that raise compliance
//! exceptions. A record that breaks policy is still stored and delivered.
//!
//! Owns: the rule ids and their evaluation. May not touch: the store, delivery.
//! Not built yet: the policy issue fills this in; until then no exceptions are raised.
