//! Messages of the fragment actor.

use quarry_exec::distributed::filters::FilterPart;
use quarry_exec::distributed::{ExchangeResponse, FragmentKey, FragmentReport};
use ractor::RpcReplyPort;

/// What a fragment actor is sent.
#[derive(Debug)]
pub enum FragmentMsg {
    /// Answer with the next batches of output `partition`. Sent by the query
    /// manager, for a consumer on any node.
    Fetch {
        /// The output partition.
        partition: u32,
        /// Where the batches go.
        reply: RpcReplyPort<ExchangeResponse>,
    },
    /// A building task's part of a dynamic filter came for this query. Sent
    /// by the query manager.
    FilterPartReceived {
        /// The filter's id.
        filter: u64,
        /// The task that built the part.
        from: FragmentKey,
        /// The part.
        part: FilterPart,
    },
    /// One of its fetches answered with this much. Sent by that fetch's task.
    BatchesSent {
        /// Rows sent.
        rows: u64,
        /// Bytes of Arrow IPC sent.
        bytes: u64,
        /// Whether the partition has no more rows.
        done: bool,
    },
    /// Answer with what it did so far. Sent by the query manager, for the
    /// coordinator's EXPLAIN ANALYZE.
    Report {
        /// Where the report goes.
        reply: RpcReplyPort<FragmentReport>,
    },
    /// Stop if no consumer has fetched for the idle limit. Sent by its own
    /// timer.
    CheckIdle,
}
