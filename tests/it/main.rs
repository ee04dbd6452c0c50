//! The integration tests: one binary, one module per area, the shared deployment harness and
//! the pieces the target-system fakes share. Tests run in parallel threads of this one
//! process, so none may change process-wide state (environment variables, the current
//! folder, a global subscriber): what a run of `doorstep` needs goes to that child process.

mod fakes;
mod faulty_target;
mod harness;
mod pg;

mod audit;
mod audit_complete;
mod cli;
mod crash_rounds;
mod delivery;
mod demo;
mod drop_folder;
mod exporter;
mod fixtures;
mod keys;
mod mapping;
mod never_panic;
mod online_check;
mod overrides;
mod policy;
mod postgres;
mod privacy;
mod schema;
mod secret_canaries;
mod serve;
mod store;
mod store_contract;
mod target_privacy;
mod targets_arbor;
mod targets_edfi;
mod targets_wonde;
mod targets_xporter;
