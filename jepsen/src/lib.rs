//! Jepsen-style consistency checking for Quarry: histories of client operations in
//! Jepsen's shape, and checkers that judge them.
//!
//! Layering: depends on no other Quarry crate; it observes a cluster only as its
//! clients do, and starts the `quarry` binary as a separate process.
//!
//! ```text
//!  net (namespaces, bridge, routes, tc) ─► cluster (nodes by pid) ─► nemesis (faults on a schedule)
//!  runner: workload clients ──► history (invoke / ok / fail / info) ──► checker ──► results.json
//! ```
//!
//! Checkers: [`set`] (lost / unexpected / recovered adds), [`bank`] (sums and
//! overdrafts of snapshot reads), [`register`] (linearizability, Wing–Gong–
//! Lowe), [`append`] (Elle's list-append: dependency cycles by Adya's anomaly
//! classes), [`stream`] (streaming API channels: every acknowledged row
//! exactly once, each channel a gapless prefix at every read, nothing
//! visible then gone). Clock skew is not a nemesis: Linux time namespaces shift only the
//! monotonic and boot clocks, not the realtime clock Quarry stamps commits
//! with, and a per-process fake clock (LD_PRELOAD libfaketime) would not reach
//! Rust's `clock_gettime` calls made through the vDSO reliably.
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
pub mod stream;
