//! The list-append checker, after Elle (Kingsbury & Alvaro, "Elle: Inferring
//! Isolation Anomalies from Experimental Observations", VLDB 2020).
//!
//! Transactions (`f` = `txn`) append unique values to lists and read whole
//! lists: `[["append", k, v], ["r", k, null]]` invoked, `[["append", k, v],
//! ["r", k, [1, 2]]]` when ok. Because every appended value is unique and a
//! read returns the whole list, the longest read of a key gives that key's
//! version order, and every other read must be a prefix of it. From that:
//!
//! - ww: T1 appended the value just before T2's in a key's order;
//! - wr: T2 read a list whose last value T1 appended;
//! - rw: T1 read a list ending just before the value T2 appended (T2
//!   overwrote the state T1 saw).
//!
//! Cycles in the graph of committed transactions are classified (Adya):
//! G0 (ww only), G1c (ww and wr), G-single (exactly one rw), G2-item (two or
//! more rw). Also G1a (a read saw a value of a failed transaction), G1b (a
//! read saw a value that was not its transaction's last append to the key)
//! and incompatible orders (two reads of a key where neither is a prefix of
//! the other). Snapshot isolation forbids all but G2-item.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::history::{Op, OpType};

/// An anomaly class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anomaly {
    /// A write cycle.
    G0,
    /// A read of a failed transaction's write.
    G1a,
    /// A read of a value that was not its writer's final append to the key.
    G1b,
    /// A cycle of writes and reads.
    G1c,
    /// A cycle with exactly one anti-dependency.
    GSingle,
    /// A cycle with two or more anti-dependencies (write skew).
    G2Item,
    /// Two reads of one key that no single order of appends explains.
    IncompatibleOrder,
}

impl Anomaly {
    /// Whether snapshot isolation forbids it.
    pub fn forbidden_by_snapshot_isolation(self) -> bool {
        self != Anomaly::G2Item
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendReport {
    /// Committed transactions analysed.
    pub transactions: usize,
    /// Each anomaly found, with up to ten examples (positions in the
    /// history, or a description).
    pub anomalies: BTreeMap<Anomaly, Vec<String>>,
    /// How many times each anomaly was found.
    pub counts: BTreeMap<Anomaly, usize>,
}

impl AppendReport {
    /// No anomaly snapshot isolation forbids, and something was checked.
    pub fn valid_for_snapshot_isolation(&self) -> bool {
        self.transactions > 0
            && self
                .anomalies
                .keys()
                .all(|a| !a.forbidden_by_snapshot_isolation())
    }

    fn add(&mut self, anomaly: Anomaly, example: String) {
        *self.counts.entry(anomaly).or_default() += 1;
        let examples = self.anomalies.entry(anomaly).or_default();
        if examples.len() < 10 {
            examples.push(example);
        }
    }
}

/// One micro-operation of a completed transaction.
#[derive(Debug, Clone)]
enum Micro {
    Append(i64, i64),
    Read(i64, Vec<i64>),
}

fn micros(value: &Value) -> Vec<Micro> {
    let Some(ops) = value.as_array() else {
        return Vec::new();
    };
    ops.iter()
        .filter_map(|m| {
            let f = m.get(0)?.as_str()?;
            let k = m.get(1)?.as_i64()?;
            match f {
                "append" => Some(Micro::Append(k, m.get(2)?.as_i64()?)),
                // In a completed transaction a null read is an empty list
                // (Elle's histories write it so).
                "r" => Some(Micro::Read(
                    k,
                    m.get(2)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default(),
                )),
                _ => None,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Edge {
    Ww,
    Wr,
    Rw,
}

/// Checks a list-append history.
pub fn check(history: &[Op]) -> AppendReport {
    let mut report = AppendReport::default();
    // Transactions that committed (ok) or may have (info: their appends are
    // known from the invocation), and the appends of failed ones.
    let mut invoked: HashMap<u64, usize> = HashMap::new();
    let mut txns: Vec<(usize, Vec<Micro>, bool)> = Vec::new(); // (index, micros, committed)
    let mut failed_appends: HashMap<(i64, i64), usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.f != "txn" {
            continue;
        }
        match op.op_type {
            OpType::Invoke => {
                invoked.insert(op.process, i);
            }
            OpType::Ok => {
                invoked.remove(&op.process);
                txns.push((i, micros(&op.value), true));
            }
            OpType::Info => {
                if let Some(start) = invoked.remove(&op.process) {
                    let appends = micros(&history[start].value)
                        .into_iter()
                        .filter(|m| matches!(m, Micro::Append(..)))
                        .collect();
                    txns.push((i, appends, false));
                }
            }
            OpType::Fail => {
                if let Some(start) = invoked.remove(&op.process) {
                    for m in micros(&history[start].value) {
                        if let Micro::Append(k, v) = m {
                            failed_appends.insert((k, v), i);
                        }
                    }
                }
            }
        }
    }
    report.transactions = txns.iter().filter(|t| t.2).count();

    // Who appended each value, and which append was a transaction's last to
    // its key.
    let mut writer: HashMap<(i64, i64), usize> = HashMap::new();
    let mut last_append: HashSet<(i64, i64)> = HashSet::new();
    for (t, (_, ms, _)) in txns.iter().enumerate() {
        let mut last: HashMap<i64, i64> = HashMap::new();
        for m in ms {
            if let Micro::Append(k, v) = m {
                writer.insert((*k, *v), t);
                last.insert(*k, *v);
            }
        }
        last_append.extend(last);
    }

    // Version order per key: the longest read; others must be its prefixes.
    let mut order: HashMap<i64, Vec<i64>> = HashMap::new();
    for (t, (index, ms, committed)) in txns.iter().enumerate() {
        if !committed {
            continue;
        }
        for m in ms {
            if let Micro::Read(k, list) = m {
                let known = order.entry(*k).or_default();
                let (short, long) = if list.len() <= known.len() {
                    (list.as_slice(), known.as_slice())
                } else {
                    (known.as_slice(), list.as_slice())
                };
                if !long.starts_with(short) {
                    report.add(
                        Anomaly::IncompatibleOrder,
                        format!("key {k}: {list:?} (history {index}) vs {known:?}"),
                    );
                } else if list.len() > known.len() {
                    *known = list.clone();
                }
                for v in list {
                    if let Some(f) = failed_appends.get(&(*k, *v)) {
                        report.add(
                            Anomaly::G1a,
                            format!("history {index} read {v} of key {k}, appended by failed history {f}"),
                        );
                    }
                }
                // Reading one's own earlier append is fine; another's is not.
                if let Some(v) = list.last()
                    && writer.get(&(*k, *v)).is_some_and(|w| *w != t)
                    && !last_append.contains(&(*k, *v))
                {
                    report.add(
                        Anomaly::G1b,
                        format!(
                            "history {index} read key {k} ending at {v}, an intermediate append"
                        ),
                    );
                }
            }
        }
    }

    // A committed append no read saw comes after everything reads saw (each
    // read is a prefix of the final list); if it is the only one for its
    // key, its place is known: last.
    let mut unseen: HashMap<i64, Vec<i64>> = HashMap::new();
    for (k, v) in writer.keys() {
        let committed = txns[writer[&(*k, *v)]].2;
        if committed && !order.get(k).is_some_and(|o| o.contains(v)) {
            unseen.entry(*k).or_default().push(*v);
        }
    }
    for (k, values) in unseen {
        if let [v] = values.as_slice() {
            order.entry(k).or_default().push(*v);
        }
    }

    // The dependency graph over transactions.
    let mut edges: HashMap<usize, Vec<(usize, Edge)>> = HashMap::new();
    let mut add_edge = |a: usize, b: usize, e: Edge| {
        if a != b {
            edges.entry(a).or_default().push((b, e));
        }
    };
    for (k, list) in &order {
        for pair in list.windows(2) {
            if let (Some(&a), Some(&b)) = (writer.get(&(*k, pair[0])), writer.get(&(*k, pair[1]))) {
                add_edge(a, b, Edge::Ww);
            }
        }
    }
    for (t, (_, ms, committed)) in txns.iter().enumerate() {
        if !committed {
            continue;
        }
        for m in ms {
            let Micro::Read(k, list) = m else { continue };
            if let Some(&w) = list.last().and_then(|v| writer.get(&(*k, *v))) {
                add_edge(w, t, Edge::Wr);
            }
            // The append right after what this read saw overwrote its state.
            if let Some(next) = order.get(k).and_then(|o| o.get(list.len()))
                && let Some(&w) = writer.get(&(*k, *next))
            {
                add_edge(t, w, Edge::Rw);
            }
        }
    }
    for (anomaly, example) in classify_cycles(txns.len(), &edges) {
        let described: Vec<String> = example.iter().map(|t| txns[*t].0.to_string()).collect();
        report.add(
            anomaly,
            format!("cycle through history {}", described.join(" → ")),
        );
    }
    report
}

/// A path from `from` to `to` using only edges in `allowed`, as nodes.
fn path(
    edges: &HashMap<usize, Vec<(usize, Edge)>>,
    from: usize,
    to: usize,
    allowed: &[Edge],
    within: &HashSet<usize>,
) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(n) = queue.pop_front() {
        for (m, e) in edges.get(&n).into_iter().flatten() {
            if !allowed.contains(e) || !within.contains(m) {
                continue;
            }
            if *m == to {
                let mut nodes = vec![to, n];
                let mut at = n;
                while let Some(&p) = parent.get(&at) {
                    nodes.push(p);
                    at = p;
                }
                nodes.reverse();
                return Some(nodes);
            }
            if seen.insert(*m) {
                parent.insert(*m, n);
                queue.push_back(*m);
            }
        }
    }
    None
}

/// The strongest anomaly of every strongly connected component with a cycle.
fn classify_cycles(
    nodes: usize,
    edges: &HashMap<usize, Vec<(usize, Edge)>>,
) -> Vec<(Anomaly, Vec<usize>)> {
    let mut found = Vec::new();
    for component in strongly_connected(nodes, edges) {
        if component.len() < 2 {
            continue;
        }
        let within: HashSet<usize> = component.iter().copied().collect();
        let in_component = |a: &usize, b: &usize| within.contains(a) && within.contains(b);
        // G0: a cycle of ww edges; G1c: of ww and wr edges.
        let mut classified = None;
        for (allowed, anomaly) in [
            (&[Edge::Ww][..], Anomaly::G0),
            (&[Edge::Ww, Edge::Wr][..], Anomaly::G1c),
        ] {
            classified = edges.iter().find_map(|(a, out)| {
                out.iter()
                    .filter(|(b, e)| allowed.contains(e) && in_component(a, b))
                    .find_map(|(b, _)| path(edges, *b, *a, allowed, &within))
                    .map(|cycle| (anomaly, cycle))
            });
            if classified.is_some() {
                break;
            }
        }
        // G-single: one rw edge closed by ww/wr edges.
        if classified.is_none() {
            classified = edges.iter().find_map(|(a, out)| {
                out.iter()
                    .filter(|(b, e)| *e == Edge::Rw && in_component(a, b))
                    .find_map(|(b, _)| path(edges, *b, *a, &[Edge::Ww, Edge::Wr], &within))
                    .map(|cycle| (Anomaly::GSingle, cycle))
            });
        }
        found.push(classified.unwrap_or((Anomaly::G2Item, component)));
    }
    found
}

/// Tarjan's strongly connected components (iterative).
fn strongly_connected(nodes: usize, edges: &HashMap<usize, Vec<(usize, Edge)>>) -> Vec<Vec<usize>> {
    let mut index = vec![usize::MAX; nodes];
    let mut low = vec![0; nodes];
    let mut on_stack = vec![false; nodes];
    let mut stack = Vec::new();
    let mut components = Vec::new();
    let mut next_index = 0;
    let empty = Vec::new();
    for root in 0..nodes {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (n, ref mut child)) = work.last_mut() {
            if *child == 0 && index[n] == usize::MAX {
                index[n] = next_index;
                low[n] = next_index;
                next_index += 1;
                stack.push(n);
                on_stack[n] = true;
            }
            let out = edges.get(&n).unwrap_or(&empty);
            if *child < out.len() {
                let m = out[*child].0;
                *child += 1;
                if index[m] == usize::MAX {
                    work.push((m, 0));
                } else if on_stack[m] {
                    low[n] = low[n].min(index[m]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[n]);
            }
            if low[n] == index[n] {
                let mut component = Vec::new();
                while let Some(m) = stack.pop() {
                    on_stack[m] = false;
                    component.push(m);
                    if m == n {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::parsed as history;

    fn found(lines: &str) -> Vec<Anomaly> {
        check(&history(lines)).anomalies.into_keys().collect()
    }

    #[test]
    fn accepts_a_serial_history() {
        let report = check(&history(
            r#"{"process":0,"type":"invoke","f":"txn","value":[["append",1,1],["r",2,null]],"time":1}
               {"process":0,"type":"ok","f":"txn","value":[["append",1,1],["r",2,[]]],"time":2}
               {"process":1,"type":"invoke","f":"txn","value":[["r",1,null],["append",2,1]],"time":3}
               {"process":1,"type":"ok","f":"txn","value":[["r",1,[1]],["append",2,1]],"time":4}
               {"process":0,"type":"invoke","f":"txn","value":[["r",1,null],["r",2,null]],"time":5}
               {"process":0,"type":"ok","f":"txn","value":[["r",1,[1]],["r",2,[1]]],"time":6}"#,
        ));
        assert!(report.valid_for_snapshot_isolation(), "{report:?}");
        assert!(report.anomalies.is_empty());
    }

    #[test]
    fn write_skew_is_g2_item_and_allowed_by_snapshot_isolation() {
        // T1 reads key 2 empty and appends to 1; T2 reads key 1 empty and
        // appends to 2: each overwrote what the other read.
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["r",2,null],["append",1,1]],"time":1}
           {"process":1,"type":"invoke","f":"txn","value":[["r",1,null],["append",2,1]],"time":2}
           {"process":0,"type":"ok","f":"txn","value":[["r",2,[]],["append",1,1]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["r",1,[]],["append",2,1]],"time":4}
           {"process":2,"type":"invoke","f":"txn","value":[["r",1,null],["r",2,null]],"time":5}
           {"process":2,"type":"ok","f":"txn","value":[["r",1,[1]],["r",2,[1]]],"time":6}"#;
        assert_eq!(found(lines), vec![Anomaly::G2Item]);
        assert!(check(&history(lines)).valid_for_snapshot_isolation());
    }

    #[test]
    fn a_lost_update_is_g_single() {
        // Both read key 1 empty and append to it; the final read shows both,
        // so T2 overwrote the state T1 read after T1 wrote: rw + ww cycle.
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["r",1,null],["append",1,1]],"time":1}
           {"process":1,"type":"invoke","f":"txn","value":[["r",1,null],["append",1,2]],"time":2}
           {"process":0,"type":"ok","f":"txn","value":[["r",1,[]],["append",1,1]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["r",1,[]],["append",1,2]],"time":4}
           {"process":2,"type":"invoke","f":"txn","value":[["r",1,null]],"time":5}
           {"process":2,"type":"ok","f":"txn","value":[["r",1,[1,2]]],"time":6}"#;
        assert_eq!(found(lines), vec![Anomaly::GSingle]);
        assert!(!check(&history(lines)).valid_for_snapshot_isolation());
    }

    #[test]
    fn circular_information_flow_is_g1c() {
        // T1 reads T2's append and T2 reads T1's.
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["append",1,1],["r",2,null]],"time":1}
           {"process":1,"type":"invoke","f":"txn","value":[["append",2,1],["r",1,null]],"time":2}
           {"process":0,"type":"ok","f":"txn","value":[["append",1,1],["r",2,[1]]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["append",2,1],["r",1,[1]]],"time":4}"#;
        assert_eq!(found(lines), vec![Anomaly::G1c]);
    }

    #[test]
    fn write_cycles_are_g0() {
        // Key 1 orders T1 before T2, key 2 orders T2 before T1.
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["append",1,1],["append",2,2]],"time":1}
           {"process":1,"type":"invoke","f":"txn","value":[["append",1,2],["append",2,1]],"time":2}
           {"process":0,"type":"ok","f":"txn","value":[["append",1,1],["append",2,2]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["append",1,2],["append",2,1]],"time":4}
           {"process":2,"type":"invoke","f":"txn","value":[["r",1,null],["r",2,null]],"time":5}
           {"process":2,"type":"ok","f":"txn","value":[["r",1,[1,2]],["r",2,[1,2]]],"time":6}"#;
        assert_eq!(found(lines), vec![Anomaly::G0]);
    }

    /// Elle's `histories/si-without-g-single.edn` (jepsen-io/elle), in this
    /// crate's JSON: a cycle with two anti-dependencies that snapshot
    /// isolation allows. Its stated edges: T1 ww T3 and T1 wr T4 on key 9,
    /// T2 rw T1 on 9, T3 rw T2 on 8, T3 rw T4 on 6, T4 rw T3 on 9.
    #[test]
    fn elle_si_without_g_single() {
        let lines = r#"{"process":2,"type":"invoke","f":"txn","value":[["append",9,2]],"time":0}
           {"process":2,"type":"ok","f":"txn","value":[["append",9,2]],"time":0}
           {"process":4,"type":"invoke","f":"txn","value":[["append",8,1],["r",9,null]],"time":0}
           {"process":4,"type":"ok","f":"txn","value":[["append",8,1],["r",9,null]],"time":0}
           {"process":7,"type":"invoke","f":"txn","value":[["r",6,null],["r",8,null],["append",9,5]],"time":0}
           {"process":7,"type":"ok","f":"txn","value":[["r",6,null],["r",8,null],["append",9,5]],"time":0}
           {"process":9,"type":"invoke","f":"txn","value":[["append",6,2],["r",9,null]],"time":0}
           {"process":9,"type":"ok","f":"txn","value":[["append",6,2],["r",9,[2]]],"time":0}"#;
        let report = check(&history(lines));
        assert_eq!(
            report.anomalies.keys().copied().collect::<Vec<_>>(),
            vec![Anomaly::G2Item],
            "{report:?}"
        );
        assert!(report.valid_for_snapshot_isolation());
    }

    #[test]
    fn reading_ones_own_earlier_append_is_not_g1b() {
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["append",1,1],["r",1,null],["append",1,2]],"time":1}
           {"process":0,"type":"ok","f":"txn","value":[["append",1,1],["r",1,[1]],["append",1,2]],"time":2}
           {"process":1,"type":"invoke","f":"txn","value":[["r",1,null]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["r",1,[1,2]]],"time":4}"#;
        assert!(found(lines).is_empty(), "{:?}", found(lines));
    }

    #[test]
    fn aborted_and_intermediate_reads_and_incompatible_orders() {
        let lines = r#"{"process":0,"type":"invoke","f":"txn","value":[["append",1,9]],"time":1}
           {"process":0,"type":"fail","f":"txn","value":[["append",1,9]],"time":2}
           {"process":1,"type":"invoke","f":"txn","value":[["append",2,1],["append",2,2]],"time":3}
           {"process":1,"type":"ok","f":"txn","value":[["append",2,1],["append",2,2]],"time":4}
           {"process":2,"type":"invoke","f":"txn","value":[["r",1,null],["r",2,null]],"time":5}
           {"process":2,"type":"ok","f":"txn","value":[["r",1,[9]],["r",2,[1]]],"time":6}
           {"process":3,"type":"invoke","f":"txn","value":[["r",2,null]],"time":7}
           {"process":3,"type":"ok","f":"txn","value":[["r",2,[2,1]]],"time":8}"#;
        let anomalies = found(lines);
        for expected in [Anomaly::G1a, Anomaly::G1b, Anomaly::IncompatibleOrder] {
            assert!(
                anomalies.contains(&expected),
                "{expected:?} in {anomalies:?}"
            );
        }
    }
}
