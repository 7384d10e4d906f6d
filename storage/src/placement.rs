//! Where a stripe's chunks go, and the plans of the background work that keeps
//! stripes whole: repair (re-place the chunks of lost nodes), widening (give a
//! stripe the parity its layout asks for), regrouping (merge narrow stripes)
//! and collection (which local chunks to keep). Plain functions of the catalog
//! and the live nodes: no I/O, so every rule is tested with tables of cases.
//!
//! Placement is rendezvous (highest random weight) hashing, Thaler and Ravishankar,
//! "Using name-based mappings to increase hit rates" (IEEE/ACM ToN 1998): each
//! (stripe, node) pair gets a pseudo-random weight and the heaviest nodes hold
//! the stripe, so a node joining or leaving moves only the stripes it wins or
//! held. Failure domains come first: a node whose domain already holds a chunk
//! of the stripe ranks after every node of a new domain.

use std::collections::{HashMap, HashSet};

use quarry_common::catalog::{Catalog, ChunkId, NodeId, Stripe, StripeLayout};

/// A live node as placement sees it: its id and its failure domain label
/// (empty: the node is a domain of its own).
pub type Candidate = (NodeId, String);

/// A node's domain for spreading: its label, or its own name when unlabelled.
pub fn domain_of(node: NodeId, domain: &str) -> String {
    if domain.is_empty() {
        format!("node-{node}")
    } else {
        domain.to_owned()
    }
}

/// Rendezvous weight of `node` for `stripe` (splitmix64 of both ids): the
/// nodes with the highest weights hold the stripe's chunks.
fn weight(stripe: ChunkId, node: NodeId) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(stripe.0 as u64 ^ mix((stripe.0 >> 64) as u64 ^ mix(node)))
}

/// The nodes of `candidates` in placement order for `stripe`: rendezvous
/// order, except that a node whose domain is already used (by `taken_domains`
/// or an earlier pick) comes after all nodes of new domains.
pub fn placement_order(
    stripe: ChunkId,
    candidates: &[Candidate],
    taken_domains: &HashSet<String>,
) -> Vec<NodeId> {
    let mut ranked: Vec<&Candidate> = candidates.iter().collect();
    ranked.sort_by_key(|(node, _)| std::cmp::Reverse(weight(stripe, *node)));
    let mut used = taken_domains.clone();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for candidate in ranked {
        if used.insert(domain_of(candidate.0, &candidate.1)) {
            first.push(candidate.0);
        } else {
            rest.push(candidate.0);
        }
    }
    first.extend(rest);
    first
}

/// The stripe shape for `layout` when `live` nodes are up: as many parity
/// chunks as asked while there are nodes for them (at least one node must hold
/// data), then as many data chunks as the remaining nodes allow. With fewer
/// live nodes than k + m the stripe is narrower but still survives the loss of
/// min(m, live - 1) nodes; e.g. 4+2 on 3 live nodes is 1+2 (three copies).
pub fn effective_layout(layout: StripeLayout, live: usize) -> (usize, usize) {
    let live = live.max(1);
    let parity = usize::from(layout.parity_chunks).min(live - 1);
    let data = usize::from(layout.data_chunks).min(live - parity).max(1);
    (data, parity)
}

/// Where new chunks for `stripe` go when `holders` already hold some of its
/// chunks: the live nodes that hold none, in placement order, spreading over
/// domains the holders do not use.
pub fn order_without(
    stripe: ChunkId,
    live: &[Candidate],
    holders: &HashSet<NodeId>,
) -> Vec<NodeId> {
    let taken: HashSet<String> = live
        .iter()
        .filter(|(n, _)| holders.contains(n))
        .map(|(n, d)| domain_of(*n, d))
        .collect();
    let free: Vec<Candidate> = live
        .iter()
        .filter(|(n, _)| !holders.contains(n))
        .cloned()
        .collect();
    placement_order(stripe, &free, &taken)
}

/// One step of repair for `stripe`: the index of its first chunk on a lost
/// node and the live node to rebuild it on, or None when no chunk is lost or
/// no node is live. The target is a node without a chunk of the stripe
/// (spreading over domains the surviving chunks do not use); when every live
/// node has one, the live node with the fewest. One move per stripe per pass:
/// the next pass plans from the new placement.
pub fn repair_step(
    stripe: &Stripe,
    live: &[Candidate],
    lost: impl Fn(NodeId) -> bool,
) -> Option<(usize, NodeId)> {
    let index = stripe.chunks.iter().position(|c| lost(c.node))?;
    let holders: HashSet<NodeId> = stripe.chunks.iter().map(|c| c.node).collect();
    let fresh: Vec<Candidate> = live
        .iter()
        .filter(|(n, _)| !holders.contains(n))
        .cloned()
        .collect();
    let taken: HashSet<String> = stripe
        .chunks
        .iter()
        .filter(|c| !lost(c.node))
        .filter_map(|c| live.iter().find(|(n, _)| *n == c.node))
        .map(|(n, d)| domain_of(*n, d))
        .collect();
    if let Some(&node) = placement_order(stripe.id, &fresh, &taken).first() {
        return Some((index, node));
    }
    let load = |n: NodeId| stripe.chunks.iter().filter(|c| c.node == n).count();
    let target = placement_order(stripe.id, live, &HashSet::new())
        .into_iter()
        .min_by_key(|n| load(*n))?;
    Some((index, target))
}

/// The parity count `stripe` should be widened to, when it has fewer parity
/// chunks than `layout` asks for (nodes were down at its commit), all its
/// chunks are on `live` nodes, and enough live nodes hold none of its data.
/// Data chunks stay where they are; a narrow k is kept.
pub fn widen_to(stripe: &Stripe, layout: StripeLayout, live: &HashSet<NodeId>) -> Option<usize> {
    let want = usize::from(layout.parity_chunks);
    let data_nodes: HashSet<NodeId> = stripe.data().iter().map(|c| c.node).collect();
    let healthy = stripe.chunks.iter().all(|c| live.contains(&c.node));
    (stripe.parity_chunks() < want && healthy && live.len() >= data_nodes.len() + want)
        .then_some(want)
}

/// The layout each data chunk's table asks for (`default` for tables without
/// their own), keyed by the data file's chunk.
pub fn layouts_of(catalog: &Catalog, default: StripeLayout) -> HashMap<ChunkId, StripeLayout> {
    let mut layout_of = HashMap::new();
    for table in catalog.tables.values() {
        for entry in &table.files {
            layout_of.insert(entry.file.chunk, table.layout.unwrap_or(default));
        }
    }
    layout_of
}

/// Narrow stripes (fewer data chunks than `layout`'s k, because their
/// statement wrote fewer data files) to regroup into one wider stripe whose
/// data chunks stay where they are: at most k data chunks, on distinct nodes.
/// Only stripes of tables without their own layout (`own_layout` lists those
/// tables' data chunks), healthy on `live` nodes, with full parity, and data on
/// distinct nodes. A full-width group if any start gives one (members taken
/// widest first, so it needs the fewest), else the widest group of two or
/// more; None when no two stripes fit together. Each regroup leaves fewer
/// stripes.
pub fn regroup_plan<'a>(
    stripes: impl Iterator<Item = &'a Stripe>,
    layout: StripeLayout,
    live: &HashSet<NodeId>,
    own_layout: &HashSet<ChunkId>,
) -> Option<Vec<&'a Stripe>> {
    let (k, m) = (
        usize::from(layout.data_chunks),
        usize::from(layout.parity_chunks),
    );
    if k < 2 || live.len() < k + m {
        return None;
    }
    let mut candidates: Vec<&Stripe> = stripes
        .filter(|stripe| {
            let nodes: HashSet<NodeId> = stripe.data().iter().map(|c| c.node).collect();
            usize::from(stripe.data_chunks) < k
                && stripe.parity_chunks() >= m
                && nodes.len() == stripe.data().len()
                && stripe.chunks.iter().all(|c| live.contains(&c.node))
                && !stripe.data().iter().any(|c| own_layout.contains(&c.chunk))
        })
        .collect();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.data_chunks));
    // Greedy from each start (widest first): a full-width group wins at once,
    // else the widest group of two or more. Starting only from the widest
    // stripe would let one stripe whose nodes collide with every other
    // candidate block all regrouping.
    let mut best: Option<(usize, Vec<&Stripe>)> = None;
    for start in 0..candidates.len().min(REGROUP_STARTS_MAX) {
        let (width, group) = greedy_group(&candidates, start, k);
        if group.len() < 2 {
            continue;
        }
        if width == k {
            return Some(group);
        }
        if best.as_ref().is_none_or(|(w, _)| width > *w) {
            best = Some((width, group));
        }
    }
    // A narrower-than-k stripe is a candidate again, so each regroup leaves
    // fewer stripes and widths grow as new stripes arrive.
    best.map(|(_, group)| group)
}

/// How many starting stripes [`regroup_plan`] tries: bounds a call to
/// O(starts x candidates).
const REGROUP_STARTS_MAX: usize = 64;

/// `candidates[start]`, then every later-or-earlier candidate (in order) whose
/// data nodes are disjoint from those taken and that fits in width `k`.
fn greedy_group<'a>(candidates: &[&'a Stripe], start: usize, k: usize) -> (usize, Vec<&'a Stripe>) {
    let mut group: Vec<&Stripe> = Vec::new();
    let mut used: HashSet<NodeId> = HashSet::new();
    let mut width = 0;
    let order = std::iter::once(start).chain((0..candidates.len()).filter(|i| *i != start));
    for i in order {
        let stripe = candidates[i];
        let nodes: HashSet<NodeId> = stripe.data().iter().map(|c| c.node).collect();
        if width + nodes.len() > k || !nodes.is_disjoint(&used) {
            continue;
        }
        used.extend(nodes);
        width += stripe.data().len();
        group.push(stripe);
        if width == k {
            break;
        }
    }
    (width, group)
}

/// The chunks `node` must keep: those stripes place on it, and data files
/// without a stripe (written before stripes existed). Everything else in its
/// chunk store is an orphan once old enough (see `StripeStore::collect`).
pub fn chunks_to_keep(catalog: &Catalog, node: NodeId) -> HashSet<ChunkId> {
    let mut keep: HashSet<ChunkId> = catalog
        .chunks_on(node)
        .map(|(s, i)| s.chunks[i].chunk)
        .collect();
    keep.extend(
        catalog
            .referenced_chunks()
            .into_iter()
            .filter(|c| catalog.stripe_of(*c).is_none()),
    );
    keep
}

#[cfg(test)]
mod tests {
    use quarry_common::catalog::StripeChunk;

    use super::*;

    fn stripe(id: u128, data: &[NodeId], parity: &[NodeId]) -> Stripe {
        let chunk = |i: usize, node: NodeId| StripeChunk {
            chunk: ChunkId(id * 100 + i as u128),
            node,
            size_bytes: 10,
            checksum_crc32c: 0,
        };
        Stripe {
            id: ChunkId(id),
            data_chunks: data.len() as u8,
            chunks: data
                .iter()
                .chain(parity)
                .enumerate()
                .map(|(i, n)| chunk(i, *n))
                .collect(),
        }
    }

    fn nodes(ids: &[NodeId]) -> Vec<Candidate> {
        ids.iter().map(|n| (*n, String::new())).collect()
    }

    #[test]
    fn narrow_stripes_keep_as_much_parity_as_the_live_nodes_allow() {
        let layout = StripeLayout {
            data_chunks: 4,
            parity_chunks: 2,
        };
        assert_eq!(effective_layout(layout, 6), (4, 2));
        assert_eq!(effective_layout(layout, 8), (4, 2));
        assert_eq!(effective_layout(layout, 5), (3, 2));
        assert_eq!(effective_layout(layout, 3), (1, 2));
        assert_eq!(effective_layout(layout, 2), (1, 1));
        assert_eq!(effective_layout(layout, 1), (1, 0));
    }

    #[test]
    fn placement_spreads_over_domains_before_reusing_one() {
        let nodes: Vec<(NodeId, String)> = (1..=6)
            .map(|n| {
                (
                    n,
                    if n <= 3 {
                        "rack-a".to_owned()
                    } else {
                        "rack-b".to_owned()
                    },
                )
            })
            .collect();
        for stripe in 0..50u128 {
            let order = placement_order(ChunkId(stripe * 7919), &nodes, &HashSet::new());
            assert_eq!(order.len(), 6);
            let racks: HashSet<bool> = order[..2].iter().map(|n| *n <= 3).collect();
            assert_eq!(
                racks.len(),
                2,
                "the first two picks use both racks: {order:?}"
            );
        }
    }

    #[test]
    fn rendezvous_order_moves_little_when_a_node_leaves() {
        let all: Vec<(NodeId, String)> = (1..=6).map(|n| (n, String::new())).collect();
        let without_6: Vec<(NodeId, String)> = (1..=5).map(|n| (n, String::new())).collect();
        let mut same_first = 0;
        for stripe in 0..200u128 {
            let id = ChunkId(stripe.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            let before = placement_order(id, &all, &HashSet::new());
            let after = placement_order(id, &without_6, &HashSet::new());
            let expected: Vec<NodeId> = before.into_iter().filter(|n| *n != 6).collect();
            if after == expected {
                same_first += 1;
            }
        }
        assert_eq!(
            same_first, 200,
            "removing a node keeps every other node's rank"
        );
    }

    #[test]
    fn repair_moves_the_first_lost_chunk_to_a_node_without_one() {
        // (data nodes, parity nodes, lost nodes, live nodes, expected index, allowed targets)
        type Case = (
            &'static [NodeId],
            &'static [NodeId],
            &'static [NodeId],
            &'static [NodeId],
            Option<usize>,
            &'static [NodeId],
        );
        let cases: [Case; 5] = [
            // Nothing lost: no step.
            (&[1, 2], &[3], &[], &[1, 2, 3, 4], None, &[]),
            // Data chunk 1 lost: to the one live node without a chunk.
            (&[1, 2], &[3], &[2], &[1, 3, 4], Some(1), &[4]),
            // Parity lost, two free nodes: either.
            (&[1, 2], &[3], &[3], &[1, 2, 4, 5], Some(2), &[4, 5]),
            // Every live node holds a chunk: the least loaded live node.
            (&[1, 2], &[3], &[3], &[1, 2], Some(2), &[1, 2]),
            // Two lost: the first one first.
            (&[1, 2], &[3], &[1, 3], &[2, 4, 5], Some(0), &[4, 5]),
        ];
        for (data, parity, lost, live, index, targets) in cases {
            let s = stripe(7, data, parity);
            let step = repair_step(&s, &nodes(live), |n| lost.contains(&n));
            assert_eq!(step.map(|(i, _)| i), index, "lost {lost:?} live {live:?}");
            if let Some((_, target)) = step {
                assert!(targets.contains(&target), "target {target} of {targets:?}");
                assert!(!lost.contains(&target), "never a lost node");
            }
        }
    }

    #[test]
    fn repair_spreads_over_domains_the_survivors_do_not_use() {
        let s = stripe(9, &[1, 2], &[3]);
        let live: Vec<Candidate> = vec![
            (1, "a".into()),
            (2, "b".into()),
            (4, "a".into()),
            (5, "c".into()),
        ];
        let step = repair_step(&s, &live, |n| n == 3);
        assert_eq!(step, Some((2, 5)), "domain c is new; a is taken by node 1");
    }

    #[test]
    fn widening_waits_for_health_and_room() {
        let layout = StripeLayout {
            data_chunks: 2,
            parity_chunks: 1,
        };
        let live = |ids: &[NodeId]| ids.iter().copied().collect::<HashSet<_>>();
        let narrow = stripe(1, &[1, 2], &[]);
        assert_eq!(widen_to(&narrow, layout, &live(&[1, 2, 3])), Some(1));
        assert_eq!(widen_to(&narrow, layout, &live(&[1, 2])), None, "no room");
        assert_eq!(
            widen_to(&narrow, layout, &live(&[1, 3, 4])),
            None,
            "unhealthy"
        );
        let full = stripe(2, &[1, 2], &[3]);
        assert_eq!(widen_to(&full, layout, &live(&[1, 2, 3, 4])), None);
    }

    #[test]
    fn regrouping_joins_narrow_stripes_on_distinct_nodes() {
        let layout = StripeLayout {
            data_chunks: 2,
            parity_chunks: 1,
        };
        let live: HashSet<NodeId> = [1, 2, 3].into();
        let a = stripe(1, &[1], &[2]);
        let b = stripe(2, &[2], &[3]);
        let c = stripe(3, &[1], &[3]);
        let wide = stripe(4, &[1, 2], &[3]);
        let group = regroup_plan(
            [&a, &b, &c, &wide].into_iter(),
            layout,
            &live,
            &HashSet::new(),
        )
        .expect("a group");
        let ids: HashSet<ChunkId> = group.iter().map(|s| s.id).collect();
        assert_eq!(group.len(), 2);
        assert!(
            ids.contains(&ChunkId(2)),
            "b is the only one on node 2: {ids:?}"
        );
        assert!(!ids.contains(&ChunkId(4)), "a full stripe stays");
        // A table with its own layout keeps its stripes.
        let own: HashSet<ChunkId> = [ChunkId(200)].into();
        let group = regroup_plan([&a, &b].into_iter(), layout, &live, &own);
        assert!(group.is_none(), "b is excluded, a alone is no group");
        // Too few live nodes for a full stripe: nothing.
        let two: HashSet<NodeId> = [1, 2].into();
        assert!(regroup_plan([&a, &b].into_iter(), layout, &two, &HashSet::new()).is_none());
    }

    #[test]
    fn a_wide_stripe_whose_nodes_collide_with_every_other_does_not_block_regrouping() {
        let layout = StripeLayout {
            data_chunks: 4,
            parity_chunks: 2,
        };
        let live: HashSet<NodeId> = (1..=6).collect();
        let blocker = stripe(1, &[1, 2, 3], &[5, 6]);
        let on_3_4 = stripe(2, &[3, 4], &[5, 6]);
        let on_5_6 = stripe(3, &[5, 6], &[1, 2]);
        let group = regroup_plan(
            [&blocker, &on_3_4, &on_5_6].into_iter(),
            layout,
            &live,
            &HashSet::new(),
        )
        .expect("the two 2+2 stripes make a full 4+2");
        let ids: Vec<ChunkId> = group.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![ChunkId(2), ChunkId(3)]);

        // No full-width group: the widest of two or more, never the blocker alone.
        let on_1 = stripe(4, &[1], &[5, 6]);
        let on_2 = stripe(5, &[2], &[5, 6]);
        let group = regroup_plan(
            [&blocker, &on_1, &on_2].into_iter(),
            layout,
            &live,
            &HashSet::new(),
        )
        .expect("the 1+2 stripes on nodes 1 and 2 regroup");
        let ids: Vec<ChunkId> = group.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![ChunkId(4), ChunkId(5)]);

        // A new stripe on a node the wide one lacks completes it.
        let on_4 = stripe(6, &[4], &[5, 6]);
        let group = regroup_plan(
            [&blocker, &on_1, &on_4].into_iter(),
            layout,
            &live,
            &HashSet::new(),
        )
        .expect("3 + 1 data chunks");
        let ids: Vec<ChunkId> = group.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![ChunkId(1), ChunkId(6)]);
    }
}
