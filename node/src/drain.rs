//! Draining a node for maintenance (`ALTER NODE n DRAIN`, `quarry node
//! drain`), and serving again (`ALTER NODE n RESUME`, `quarry node resume`).
//!
//! The mark lives in the Raft catalog ([`Catalog::maintenance`]), so every
//! node sees it and it outlives a restart. The marked node, on seeing it:
//! 1. stops taking clients: `/ready` answers 503 and a new PostgreSQL
//!    connection is refused with 57P03 (`cannot_connect_now`, what
//!    PostgreSQL answers while it shuts down);
//! 2. stops standing for Raft elections and, if it leads, hands leadership
//!    to a caught-up voter (which starts an election at once: the Raft
//!    thesis's TimeoutNow, §3.10);
//! 3. runs no new statement outside a transaction block (57P01: the client
//!    knows it did not run and may retry it on another node), lets running
//!    statements and open transaction blocks finish until the mark's
//!    deadline, then cancels what still runs (57014) and closes every client
//!    connection.
//!
//! While a marked node is down (stopped for an upgrade), the leader neither
//! rebuilds its chunks elsewhere nor replaces it as a voter, for up to
//! `maintenance_timeout_secs` after the mark ([`crate::cluster`]).
//!
//! [`Catalog::maintenance`]: quarry_common::catalog::Catalog::maintenance

use std::sync::Arc;
use std::time::Duration;

use quarry_common::catalog::NodeId;
use quarry_raft::Meta;
use tokio::sync::watch;

use crate::pg::Frontend;
use crate::rpc::{RpcRequest, RpcResponse, Transport};

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    /// Takes clients.
    Serving,
    /// Marked: refuses new clients and new statements outside transaction
    /// blocks; running statements and open transaction blocks may finish.
    Draining,
    /// Marked, and no statement of a client runs: client connections are
    /// closed.
    Drained,
}

/// The node's drain state, shared by the listeners that refuse clients.
#[derive(Debug)]
pub struct Drain {
    state: watch::Sender<DrainState>,
}

impl Drain {
    /// A node that serves.
    pub fn new() -> Arc<Self> {
        Arc::new(Drain {
            state: watch::channel(DrainState::Serving).0,
        })
    }

    /// Where the node stands now.
    pub fn state(&self) -> DrainState {
        *self.state.borrow()
    }

    /// Whether the node takes new clients.
    pub fn is_serving(&self) -> bool {
        self.state() == DrainState::Serving
    }

    /// Follows the state as it changes.
    pub fn subscribe(&self) -> watch::Receiver<DrainState> {
        self.state.subscribe()
    }

    fn set(&self, state: DrainState) {
        self.state.send_if_modified(|now| {
            let changed = *now != state;
            *now = state;
            changed
        });
    }
}

/// How often the node looks at its mark.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Runs forever: drains node `me` while the catalog marks it, serves again
/// once the mark is cleared.
pub async fn follow(
    meta: Arc<Meta>,
    me: NodeId,
    drain: Arc<Drain>,
    frontend: Arc<Frontend>,
    transport: Arc<dyn Transport>,
) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mark = meta.read_local().maintenance.get(&me).copied();
        match (mark, drain.state()) {
            (None, DrainState::Serving) => {}
            (None, _) => {
                meta.raft().runtime_config().elect(true);
                frontend.running().open();
                drain.set(DrainState::Serving);
                crate::service::status("serving again after maintenance");
                tracing::info!("maintenance ended: taking clients again");
            }
            (Some(mark), DrainState::Serving) => {
                tracing::info!(
                    deadline_secs = mark.deadline_secs,
                    "draining for maintenance: refusing new clients"
                );
                drain.set(DrainState::Draining);
                frontend.running().close();
                crate::service::status("draining for maintenance");
                meta.raft().runtime_config().elect(false);
                hand_off_leadership(&meta, me, transport.as_ref()).await;
                let deadline = mark_deadline(mark);
                let finished = loop {
                    let running = frontend.running();
                    if running.count() == 0 && running.open_transactions() == 0 {
                        break true;
                    }
                    if tokio::time::Instant::now() >= deadline
                        || !meta.read_local().maintenance.contains_key(&me)
                    {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                if !meta.read_local().maintenance.contains_key(&me) {
                    continue;
                }
                if !finished {
                    let cancelled = frontend.cancel_all();
                    tracing::warn!(
                        cancelled,
                        "statements still running at the drain deadline are cancelled"
                    );
                    // Their cancellation ends them within moments.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        frontend.running().wait_idle(),
                    )
                    .await;
                }
                drain.set(DrainState::Drained);
                crate::service::status("drained for maintenance");
                tracing::info!("drained: client connections closed");
            }
            (Some(_), _) => {
                // Re-elected before it stopped standing (or a vote raced
                // the hand-off): hand leadership over again.
                hand_off_leadership(&meta, me, transport.as_ref()).await;
            }
        }
    }
}

/// When the statements of a drain marked by `mark` must have finished.
fn mark_deadline(mark: quarry_common::catalog::Maintenance) -> tokio::time::Instant {
    let since_secs = (quarry_raft::now_micros() - mark.since).max(0) as u64 / 1_000_000;
    let left = u64::from(mark.deadline_secs).saturating_sub(since_secs);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// If node `me` leads, asks the most caught-up other voter to start an
/// election (it wins: its log is as long as the leader's, and `me` no
/// longer stands). Waits up to two seconds for the new leader.
async fn hand_off_leadership(meta: &Meta, me: NodeId, transport: &dyn Transport) {
    let metrics = meta.raft().metrics().borrow().clone();
    if metrics.current_leader != Some(me) {
        return;
    }
    let membership = metrics.membership_config.membership();
    let matched = |id: &NodeId| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(id))
            .and_then(|m| m.as_ref())
            .map_or(0, |m| m.index)
    };
    let mut voters: Vec<(NodeId, String)> = membership
        .voter_ids()
        .filter(|id| *id != me)
        .filter_map(|id| membership.get_node(&id).map(|a| (id, a.rpc.clone())))
        .collect();
    voters.sort_by_key(|(id, _)| std::cmp::Reverse(matched(id)));
    for (id, rpc) in voters {
        let Ok(addr) = rpc.parse() else { continue };
        match transport
            .call(addr, RpcRequest::Elect, Duration::from_secs(2))
            .await
        {
            Ok(RpcResponse::Ok) => {
                let mut watch = meta.raft().metrics();
                let moved = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        if watch
                            .borrow()
                            .current_leader
                            .is_some_and(|leader| leader != me)
                        {
                            return;
                        }
                        if watch.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                if moved.is_ok() {
                    tracing::info!(to = id, "handed Raft leadership over for maintenance");
                    return;
                }
            }
            Ok(other) => tracing::warn!(voter = id, ?other, "a voter did not start an election"),
            Err(e) => {
                tracing::warn!(voter = id, error = %e, "cannot reach a voter to hand leadership over")
            }
        }
    }
}
