//! Jepsen-style consistency checking for Quarry: histories of client operations in
//! Jepsen's shape, and checkers that judge them.
//!
//! Layering: depends on no other Quarry crate; it observes a cluster only as its
//! clients do. The harness that starts nodes in network namespaces and injects
//! faults builds on these types.
//!
//! ```text
//!  workload clients ──► History (invoke / ok / fail / info ops) ──► checker ──► report
//! ```
#![deny(missing_docs)]

pub mod append;
pub mod bank;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod register;
pub mod runner;
pub mod set;
