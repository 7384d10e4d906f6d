//! The rebalance mover (docs/ARCHITECTURE.md, "Rebalancing"): on the Raft
//! leader, once a second, after repair.
//!
//! - With no rebalance under way, it plans one
//!   ([`quarry_storage::rebalance::plan`]) when a node is outside ±10% of
//!   the mean bytes or a node being decommissioned holds chunks, and records
//!   the plan in Raft (`StartRebalance`).
//! - It makes the plan's moves one at a time, make-before-break: read the
//!   chunk (verified against its CRC-32C; rebuilt from its stripe if its
//!   holder is down), store it on the target, read it back there verified,
//!   then switch the placement with `MoveChunk`, a compare-and-set that also
//!   marks the move made in the plan. The old copy stays on its node for
//!   `moved_chunk_grace_secs` (queries planned before the move read it).
//! - Moves are paced so no node sends or receives more than
//!   `rebalance_mb_per_sec`; a pass stops after [`PASS_BUDGET`] so the
//!   leader's other duties keep running, and the next pass (on whichever
//!   node leads then) carries on with the moves not yet made.
//! - A move that can no longer be made (its chunk moved, its target is down
//!   or holds a chunk of the stripe) is given up; when every move is made or
//!   given up, `FinishRebalance` ends the plan and the next pass plans again
//!   if the cluster is still unbalanced.
//! - Nothing is planned while a stripe has a chunk on a node that is down:
//!   repair goes first.
//! - Nothing is planned or moved while a member node is in maintenance
//!   (drained, within `maintenance_timeout_secs`): it is expected to go
//!   down and come back with its chunks, so moving them, or balancing
//!   around it, is churn that a down node would also turn into a repair.
//!   A plan under way resumes when the maintenance ends.
//! - A node being decommissioned that holds no chunk any more is removed
//!   from Raft (a voter is replaced by a live learner in the same change).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use quarry_common::catalog::{Catalog, NodeId, PlannedMove, Rebalance};
use quarry_raft::{Command, Meta};
use quarry_storage::StripeStore;
use quarry_storage::rebalance::{bytes_by_node, is_balanced, plan};
use tokio::time::Instant;

use crate::cluster::{Duties, in_maintenance};

/// How far each node's bytes may be from the mean before a rebalance is
/// planned (and what a plan aims for).
pub const TOLERANCE: f64 = 0.10;
/// Longest a pass makes moves before yielding to the other duties.
pub const PASS_BUDGET: Duration = Duration::from_secs(3);

/// One pass of the mover on the leader; `duties.rebalance_rate` is bytes a
/// second per node (0: rebalancing is off).
pub async fn run_pass(meta: &Meta, stripes: &StripeStore, duties: &Duties) {
    let rate = duties.rebalance_rate;
    if rate == 0 {
        return;
    }
    let catalog = meta.read_local();
    let members = raft_members(meta);
    if members
        .iter()
        .any(|n| in_maintenance(&catalog, *n, duties.maintenance_timeout))
    {
        return;
    }
    let live: HashSet<NodeId> = stripes
        .cluster()
        .live_nodes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let leaving: Vec<NodeId> = catalog
        .decommissioning
        .keys()
        .copied()
        .filter(|n| members.contains(n))
        .collect();
    // Repair first: a stripe with a chunk on a down node.
    let degraded = catalog.stripes.values().any(|s| {
        s.chunks
            .iter()
            .any(|c| !live.contains(&c.node) && !leaving.contains(&c.node))
    });
    if degraded {
        return;
    }
    let under_way = catalog
        .rebalance
        .as_ref()
        .filter(|r| r.finished_at.is_none())
        .cloned();
    let rebalance = match under_way {
        Some(r) => r,
        None => match start(meta, &catalog, &live, &leaving).await {
            Some(r) => r,
            None => {
                remove_emptied(meta, &catalog, &leaving, &live).await;
                return;
            }
        },
    };
    make_moves(meta, stripes, &rebalance, rate, &live).await;
}

/// The Raft membership's node ids (voters and learners).
fn raft_members(meta: &Meta) -> HashSet<NodeId> {
    meta.raft()
        .metrics()
        .borrow()
        .membership_config
        .nodes()
        .map(|(id, _)| *id)
        .collect()
}

/// Plans a rebalance and records it, if one is needed.
async fn start(
    meta: &Meta,
    catalog: &Catalog,
    live: &HashSet<NodeId>,
    leaving: &[NodeId],
) -> Option<Arc<Rebalance>> {
    let nodes: Vec<NodeId> = live.iter().copied().collect();
    let all: Vec<_> = catalog.stripes.values().cloned().collect();
    let holding_leaving = all
        .iter()
        .flat_map(|s| &s.chunks)
        .any(|c| leaving.contains(&c.node));
    let before = bytes_by_node(&nodes, &all);
    if !holding_leaving && is_balanced(&before, TOLERANCE) {
        return None;
    }
    let planned = plan(&nodes, leaving, &all, TOLERANCE);
    if planned.moves.is_empty() {
        return None;
    }
    let reason = if holding_leaving {
        format!("decommissioning node(s) {leaving:?}")
    } else {
        format!(
            "a node's bytes are more than {:.0}% from the mean",
            TOLERANCE * 100.0
        )
    };
    let rebalance = Rebalance {
        planned_at: quarry_raft::now_micros(),
        reason,
        moves: planned
            .moves
            .iter()
            .map(|m| PlannedMove {
                stripe: m.stripe,
                index: m.index,
                from: m.from,
                to: m.to,
                bytes: m.bytes,
                moved_at: None,
            })
            .collect(),
        finished_at: None,
    };
    let moves = rebalance.moves.len();
    let bytes = rebalance.total_bytes();
    tracing::debug!(?before, after = ?planned.bytes_after, "rebalance plan");
    match meta
        .write(Command::StartRebalance {
            rebalance: rebalance.clone(),
        })
        .await
    {
        Ok(_) => {
            tracing::info!(moves, bytes, ?before, reason = %rebalance.reason, "rebalance planned");
            Some(Arc::new(rebalance))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record a rebalance plan");
            None
        }
    }
}

/// Makes the moves of `rebalance` not yet made, paced to `rate`, for up to
/// [`PASS_BUDGET`]; ends the plan when none is left.
async fn make_moves(
    meta: &Meta,
    stripes: &StripeStore,
    rebalance: &Rebalance,
    rate: u64,
    live: &HashSet<NodeId>,
) {
    let began = Instant::now();
    for planned in rebalance.moves.iter().filter(|m| m.moved_at.is_none()) {
        if began.elapsed() >= PASS_BUDGET {
            return;
        }
        // Each move sends `bytes` from one node and receives them on
        // another: at `rate`, the mover waits bytes / rate before it, so
        // that the bytes moved since the plan began never exceed rate ×
        // the time since (a move copies its chunk at full speed).
        tokio::time::sleep(Duration::from_secs_f64(planned.bytes as f64 / rate as f64)).await;
        match make_move(meta, stripes, planned, live).await {
            Ok(()) => {
                metrics::counter!("quarry_rebalance_moved_bytes_total").increment(planned.bytes);
                metrics::counter!("quarry_rebalance_moves_total").increment(1);
            }
            Err(why) => {
                tracing::info!(stripe = %planned.stripe, index = planned.index, why, "rebalance move given up");
                continue;
            }
        }
    }
    match meta
        .write(Command::FinishRebalance {
            planned_at: rebalance.planned_at,
        })
        .await
    {
        Ok(_) => {
            let catalog = meta.read_local();
            let (moved, bytes) = catalog.rebalance.as_ref().map_or((0, 0), |r| r.progress());
            tracing::info!(
                moved,
                bytes,
                planned = rebalance.moves.len(),
                "rebalance finished"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot record the end of a rebalance"),
    }
}

/// One move, make-before-break; the reason it cannot be made.
async fn make_move(
    meta: &Meta,
    stripes: &StripeStore,
    planned: &PlannedMove,
    live: &HashSet<NodeId>,
) -> Result<(), String> {
    let catalog = meta.read_local();
    let stripe = catalog
        .stripes
        .get(&planned.stripe)
        .ok_or("the stripe is gone")?;
    let index = usize::from(planned.index);
    let chunk = stripe.chunks.get(index).ok_or("no such chunk")?;
    if chunk.node != planned.from {
        return Err("the chunk moved since the plan".into());
    }
    if !live.contains(&planned.to) || stripe.chunks.iter().any(|c| c.node == planned.to) {
        return Err("the target is down or holds a chunk of the stripe".into());
    }
    let data =
        if live.contains(&planned.from) || catalog.decommissioning.contains_key(&planned.from) {
            match stripes.fetch(chunk).await {
                Ok(data) => data,
                Err(_) => stripes
                    .rebuild(stripe, index)
                    .await
                    .map_err(|e| e.to_string())?,
            }
        } else {
            stripes
                .rebuild(stripe, index)
                .await
                .map_err(|e| e.to_string())?
        };
    stripes
        .store_on(planned.to, chunk.chunk, data)
        .await
        .map_err(|e| format!("cannot store the copy: {e}"))?;
    // Read the copy back where it now is: its holder verifies the CRC-32C
    // of what it stored before sending, and `fetch` what arrived.
    let mut copy = chunk.clone();
    copy.node = planned.to;
    stripes
        .fetch(&copy)
        .await
        .map_err(|e| format!("the copy does not verify: {e}"))?;
    meta.write(Command::MoveChunk {
        stripe: planned.stripe,
        index: planned.index,
        from: planned.from,
        to: planned.to,
    })
    .await
    .map_err(|e| format!("the placement change was refused: {e}"))?;
    Ok(())
}

/// Removes from Raft the decommissioning nodes that hold no chunk; a voter
/// is replaced by a live learner in the same change when there is one.
async fn remove_emptied(
    meta: &Meta,
    catalog: &Catalog,
    leaving: &[NodeId],
    live: &HashSet<NodeId>,
) {
    let raft = meta.raft();
    for &node in leaving {
        if catalog.chunks_on(node).next().is_some() {
            continue;
        }
        let config = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<NodeId> = config.voter_ids().collect();
        let result = if voters.contains(&node) {
            let mut new_voters = voters.clone();
            new_voters.remove(&node);
            let learner = config
                .nodes()
                .map(|(id, _)| *id)
                .find(|id| !voters.contains(id) && live.contains(id) && !leaving.contains(id));
            new_voters.extend(learner);
            raft.change_membership(new_voters, false).await
        } else {
            raft.change_membership(
                openraft::ChangeMembers::RemoveNodes(BTreeSet::from([node])),
                false,
            )
            .await
        };
        match result {
            Ok(_) => tracing::info!(node, "decommissioned node removed from the cluster"),
            Err(e) => tracing::warn!(node, error = %e, "cannot remove a decommissioned node yet"),
        }
    }
}
