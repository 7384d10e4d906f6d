//! Messages of the query manager.

use quarry_exec::distributed::{ExchangeRequest, ExchangeResponse};
use ractor::RpcReplyPort;

/// What the query manager is sent.
#[derive(Debug)]
pub enum QueryManagerMsg {
    /// Answer a request about the fragments of a distributed query: start,
    /// fetch, filter part, metrics, stop. Sent by the RPC server (for a
    /// coordinator or consumer on another node) and by this node's
    /// `RpcPeers` (for its own queries).
    Answer {
        /// The request.
        request: ExchangeRequest,
        /// Where the answer goes.
        reply: RpcReplyPort<ExchangeResponse>,
    },
    /// Answer with the number of fragment actors alive (what the gauge
    /// `quarry_fragments_running` shows). Sent by tests, and by the systemd
    /// watchdog as its probe that the manager still answers.
    CountFragments {
        /// Where the count goes.
        reply: RpcReplyPort<usize>,
    },
}
