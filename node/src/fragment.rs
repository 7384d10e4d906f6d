//! The fragment actor: one task of one stage of a distributed query, run on
//! this node for its coordinator and fetched from by its consumers
//! (docs/ARCHITECTURE.md §4). Its work is [`quarry_exec::distributed::fragment::Fragment`];
//! the actor owns one, answers the messages the query manager forwards to
//! it, and runs each fetch as a task of its own, so that a fetch waiting for
//! a batch never holds up another partition's fetch, a filter part or a
//! report.
//!
//! ```text
//!  QueryManager ──Fetch──────────────► FragmentActor ──spawns──► fetch task
//!               ──FilterPartReceived─►   (Fragment)   ◄─BatchesSent─┘ └─► reply
//!               ──Report─────────────►        ▲
//!                                  CheckIdle ─┘ (its own timer)
//! ```
//!
//! It ends when the query manager stops it (the query ended), when no
//! consumer has fetched from it for the idle limit (its coordinator is gone),
//! or when it cannot start; ending drops its fetch tasks, and with them its
//! operators' streams, at once.

mod actor;
mod msg;
mod state;

pub use actor::{FragmentActor, FragmentArgs};
pub use msg::FragmentMsg;
