//! Rebalancing plans: which chunks to move so that every node holds a
//! similar share of the stripes' bytes, and so that nodes being
//! decommissioned hold none. The Raft leader plans, records the plan in
//! Raft and makes the moves (node/src/rebalance.rs).
//!
//! A plan is a list of moves, each of one chunk of a stripe from the node
//! holding it to another node, never to a node that already holds a chunk
//! of the same stripe (each chunk of a stripe on its own node is what lets
//! a stripe survive the loss of m nodes). Moves are chosen greedily: the
//! most loaded node gives the largest chunk that narrows its gap to the
//! least loaded node it may go to, until every node is within the
//! tolerance of the mean or no move narrows the spread; no move widens the
//! spread between the most and least loaded nodes. The mover applies
//! each move with the `MoveChunk` Raft command's compare-and-set
//! (raft/src/command.rs), so that a plan made on a catalog that changed
//! since is refused move by move, not misapplied. Failure domains are not
//! weighed yet.

use std::collections::{BTreeMap, HashSet};

use quarry_common::catalog::{NodeId, Stripe, StripeId};

/// One chunk to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Its stripe.
    pub stripe: StripeId,
    /// Its position in the stripe.
    pub index: u8,
    /// The node holding it now.
    pub from: NodeId,
    /// The node to hold it.
    pub to: NodeId,
    /// Its length.
    pub bytes: u64,
}

/// A plan and where it leaves each node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The moves, in the order they were chosen.
    pub moves: Vec<Move>,
    /// Bytes each node holds once the moves are made.
    pub bytes_after: BTreeMap<NodeId, u64>,
}

/// Bytes of `stripes`' chunks on each of `nodes` (chunks on other nodes,
/// such as down ones that repair will rebuild, are not counted).
pub fn bytes_by_node(nodes: &[NodeId], stripes: &[Stripe]) -> BTreeMap<NodeId, u64> {
    let mut bytes: BTreeMap<NodeId, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    for chunk in stripes.iter().flat_map(|s| &s.chunks) {
        if let Some(held) = bytes.get_mut(&chunk.node) {
            *held += chunk.size_bytes;
        }
    }
    bytes
}

/// Whether every node of `bytes` is within `tolerance` (0.10: ±10%) of
/// their mean.
pub fn is_balanced(bytes: &BTreeMap<NodeId, u64>, tolerance: f64) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let mean = bytes.values().sum::<u64>() as f64 / bytes.len() as f64;
    bytes
        .values()
        .all(|b| (*b as f64 - mean).abs() <= mean * tolerance)
}

/// The moves that empty the `leaving` nodes (being decommissioned) onto
/// `nodes` (the live members that may hold data), then bring the chunks of
/// `stripes` on `nodes` within `tolerance` of the mean, as nearly as whole
/// chunks allow. A chunk of a leaving node goes to the least loaded node
/// holding no chunk of its stripe, largest chunks first; one with no such
/// node stays where it is.
pub fn plan(nodes: &[NodeId], leaving: &[NodeId], stripes: &[Stripe], tolerance: f64) -> Plan {
    let mut bytes = bytes_by_node(nodes, stripes);
    // Where each stripe's chunks are, as the plan moves them.
    let mut holders: Vec<Vec<NodeId>> = stripes
        .iter()
        .map(|s| s.chunks.iter().map(|c| c.node).collect())
        .collect();
    let mut moved: HashSet<(usize, usize)> = HashSet::new();
    let mut moves = Vec::new();
    let record = |s: usize, i: usize, from: NodeId, to: NodeId, moves: &mut Vec<Move>| {
        moves.push(Move {
            stripe: stripes[s].id,
            index: u8::try_from(i).expect("a stripe has at most 255 chunks"),
            from,
            to,
            bytes: stripes[s].chunks[i].size_bytes,
        });
    };
    let mut evacuated: Vec<(usize, usize)> = stripes
        .iter()
        .enumerate()
        .flat_map(|(s, stripe)| {
            stripe
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| leaving.contains(&c.node))
                .map(move |(i, _)| (s, i))
        })
        .collect();
    evacuated.sort_by_key(|&(s, i)| std::cmp::Reverse(stripes[s].chunks[i].size_bytes));
    for (s, i) in evacuated {
        let target = bytes
            .iter()
            .filter(|(n, _)| !holders[s].contains(n) && !leaving.contains(n))
            .min_by_key(|(n, b)| (**b, **n))
            .map(|(n, _)| *n);
        let Some(to) = target else {
            continue;
        };
        let from = holders[s][i];
        *bytes.get_mut(&to).expect("a planned node") += stripes[s].chunks[i].size_bytes;
        holders[s][i] = to;
        moved.insert((s, i));
        record(s, i, from, to, &mut moves);
    }
    let chunk_count: usize = stripes.iter().map(|s| s.chunks.len()).sum();
    while moves.len() < chunk_count && !is_balanced(&bytes, tolerance) {
        let Some(step) = best_move(&bytes, stripes, &holders, &moved) else {
            break;
        };
        let (s, i, from, to) = step;
        let size = stripes[s].chunks[i].size_bytes;
        *bytes.get_mut(&from).expect("a planned node") -= size;
        *bytes.get_mut(&to).expect("a planned node") += size;
        holders[s][i] = to;
        moved.insert((s, i));
        record(s, i, from, to, &mut moves);
    }
    Plan {
        moves,
        bytes_after: bytes,
    }
}

/// The next move: from the most loaded node that has one, the largest
/// chunk whose move narrows the gap to the least loaded node it may go to
/// (one holding no chunk of its stripe). Each chunk moves at most once.
fn best_move(
    bytes: &BTreeMap<NodeId, u64>,
    stripes: &[Stripe],
    holders: &[Vec<NodeId>],
    moved: &HashSet<(usize, usize)>,
) -> Option<(usize, usize, NodeId, NodeId)> {
    let mut by_load: Vec<(NodeId, u64)> = bytes.iter().map(|(n, b)| (*n, *b)).collect();
    by_load.sort_by_key(|(n, b)| (*b, *n));
    for &(from, high) in by_load.iter().rev() {
        let mut best: Option<(u64, usize, usize, NodeId)> = None;
        for (s, stripe) in stripes.iter().enumerate() {
            for (i, chunk) in stripe.chunks.iter().enumerate() {
                if holders[s][i] != from || moved.contains(&(s, i)) {
                    continue;
                }
                let size = chunk.size_bytes;
                // The least loaded node this chunk may go to, if the move
                // narrows the gap (size < high - low leaves both nearer).
                let target = by_load.iter().find(|(to, low)| {
                    *to != from
                        && !holders[s].contains(to)
                        && size > 0
                        && size < high - low.min(&high)
                });
                if let Some(&(to, _)) = target
                    && best.is_none_or(|(b, ..)| size > b)
                {
                    best = Some((size, s, i, to));
                }
            }
        }
        if let Some((_, s, i, to)) = best {
            return Some((s, i, from, to));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quarry_common::catalog::{ChunkId, StripeChunk};

    fn stripe(id: u128, chunks: &[(NodeId, u64)]) -> Stripe {
        Stripe {
            id: ChunkId(id),
            data_chunks: u8::try_from(chunks.len() - 1).expect("small"),
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(i, (node, size))| StripeChunk {
                    chunk: ChunkId(id * 100 + i as u128),
                    node: *node,
                    size_bytes: *size,
                    checksum_crc32c: 0,
                })
                .collect(),
        }
    }

    /// `stripes` with `plan`'s moves made, checking each one's `from`.
    fn applied(stripes: &[Stripe], plan: &Plan) -> Vec<Stripe> {
        let mut stripes = stripes.to_vec();
        for m in &plan.moves {
            let s = stripes
                .iter_mut()
                .find(|s| s.id == m.stripe)
                .expect("stripe");
            let chunk = &mut s.chunks[usize::from(m.index)];
            assert_eq!(chunk.node, m.from, "a move starts where its chunk is");
            assert_eq!(chunk.size_bytes, m.bytes);
            chunk.node = m.to;
        }
        stripes
    }

    fn distinct_nodes(stripes: &[Stripe]) -> bool {
        stripes.iter().all(|s| {
            let nodes: HashSet<NodeId> = s.chunks.iter().map(|c| c.node).collect();
            nodes.len() == s.chunks.len()
        })
    }

    #[test]
    fn a_new_node_gets_its_share_within_ten_percent() {
        // 60 2+1 stripes of 1 MB chunks on nodes 1-3; node 4 joins empty.
        let stripes: Vec<Stripe> = (1..=60)
            .map(|id| stripe(id, &[(1, 1 << 20), (2, 1 << 20), (3, 1 << 20)]))
            .collect();
        let nodes = [1, 2, 3, 4];
        assert!(!is_balanced(&bytes_by_node(&nodes, &stripes), 0.10));
        let plan = plan(&nodes, &[], &stripes, 0.10);
        let after = applied(&stripes, &plan);
        assert!(distinct_nodes(&after));
        assert_eq!(bytes_by_node(&nodes, &after), plan.bytes_after);
        assert!(
            is_balanced(&plan.bytes_after, 0.10),
            "{:?}",
            plan.bytes_after
        );
        // Only what the new node needs moves, and each chunk once.
        assert!(plan.moves.iter().all(|m| m.to == 4));
        assert_eq!(plan.moves.len() as u64, plan.bytes_after[&4] >> 20);
    }

    #[test]
    fn a_balanced_cluster_moves_nothing() {
        let stripes: Vec<Stripe> = (1..=10)
            .map(|id| stripe(id, &[(1, 100), (2, 100), (3, 100)]))
            .collect();
        assert!(plan(&[1, 2, 3], &[], &stripes, 0.10).moves.is_empty());
    }

    #[test]
    fn a_chunk_never_joins_another_of_its_stripe() {
        // Three nodes, 2+1 stripes: node 4 may take any chunk, but nodes
        // 1-3 each hold one chunk of every stripe, so nothing can move
        // between them.
        let stripes: Vec<Stripe> = (1..=6)
            .map(|id| stripe(id, &[(1, 300), (2, 100), (3, 100)]))
            .collect();
        let plan = plan(&[1, 2, 3], &[], &stripes, 0.10);
        assert!(plan.moves.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_leaving_node_is_emptied_onto_the_others() {
        // 2+1 stripes on nodes 1-3, node 4 empty; node 2 leaves: each of its
        // chunks can only go to node 4 (nodes 1 and 3 hold its stripe).
        let stripes: Vec<Stripe> = (1..=8)
            .map(|id| stripe(id, &[(1, 100), (2, 100 + id as u64), (3, 100)]))
            .collect();
        let plan = plan(&[1, 3, 4], &[2], &stripes, 0.10);
        let after = applied(&stripes, &plan);
        assert!(distinct_nodes(&after));
        assert!(after.iter().flat_map(|s| &s.chunks).all(|c| c.node != 2));
        assert!(plan.moves.iter().all(|m| m.from == 2 && m.to == 4));
        // Largest first.
        assert_eq!(plan.moves[0].bytes, 108);
        // With only three nodes left for three-chunk stripes, nothing else fits.
        let stuck = super::plan(&[1, 3], &[2], &stripes, 0.10);
        assert!(stuck.moves.is_empty(), "{stuck:?}");
    }

    proptest! {
        #[test]
        fn plans_keep_stripes_spread_and_never_widen_the_spread(
            layout in proptest::collection::vec(
                (proptest::sample::subsequence(vec![1u64, 2, 3, 4, 5, 6], 3),
                 proptest::collection::vec(1u64..5_000, 3)),
                1..40,
            ),
            extra in 0usize..3,
        ) {
            let stripes: Vec<Stripe> = layout
                .iter()
                .enumerate()
                .map(|(id, (nodes, sizes))| {
                    let chunks: Vec<(NodeId, u64)> =
                        nodes.iter().copied().zip(sizes.iter().copied()).collect();
                    stripe(id as u128 + 1, &chunks)
                })
                .collect();
            let nodes: Vec<NodeId> = (1..=(6 + extra as u64)).collect();
            let before = bytes_by_node(&nodes, &stripes);
            let plan = plan(&nodes, &[], &stripes, 0.10);
            let after = applied(&stripes, &plan);
            prop_assert!(distinct_nodes(&after));
            prop_assert_eq!(bytes_by_node(&nodes, &after), plan.bytes_after.clone());
            let spread = |b: &BTreeMap<NodeId, u64>| {
                b.values().max().copied().unwrap_or(0) - b.values().min().copied().unwrap_or(0)
            };
            prop_assert!(spread(&plan.bytes_after) <= spread(&before));
            prop_assert_eq!(
                plan.bytes_after.values().sum::<u64>(),
                before.values().sum::<u64>()
            );
        }
    }
}
