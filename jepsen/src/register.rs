//! The register workload's checker: single-row reads, writes and
//! compare-and-sets on a few independent keys, each key's history checked for
//! linearizability (Herlihy & Wing 1990) with the Wing–Gong–Lowe search:
//! walk the history in real-time order, linearize a pending operation when
//! the register model allows it, backtrack when an operation returns before
//! it could be linearized, and remember (linearized set, state) pairs already
//! explored (Lowe, "Testing for linearizability", 2017).
//!
//! Values: `read` → `[key, value]` (value null before any write), `write` →
//! `[key, value]`, `cas` → `[key, [old, new]]`. Operations that `fail`
//! certainly did not happen and are left out; `info` operations may have
//! happened at any time after their invocation, or never.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Op, OpType};

/// One operation on one key, with its real-time interval.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    kind: Kind,
    /// Position of its invocation in the history.
    invoked: usize,
    /// Position of its completion; None for `info` (it never returned).
    returned: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Read(Option<i64>),
    Write(i64),
    Cas(i64, i64),
}

/// What the register checker found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterReport {
    /// Keys checked.
    pub keys: usize,
    /// Operations considered (ok and info).
    pub operations: usize,
    /// Keys whose history is not linearizable, with the last operation the
    /// search could not place.
    pub violations: BTreeMap<i64, String>,
}

impl RegisterReport {
    /// Every key's history is linearizable, and there was at least one read.
    pub fn valid(&self) -> bool {
        self.keys > 0 && self.violations.is_empty()
    }
}

/// Pairs invocations with completions per process, keeps ok and info, and
/// groups them by key.
fn calls_by_key(history: &[Op]) -> BTreeMap<i64, Vec<Call>> {
    let mut pending: BTreeMap<u64, (usize, &Op)> = BTreeMap::new();
    let mut by_key: BTreeMap<i64, Vec<Call>> = BTreeMap::new();
    let mut finish = |invoked: usize, invoke: &Op, done: &Op, returned: Option<usize>| {
        let key = invoke.value.get(0).and_then(|k| k.as_i64());
        let Some(key) = key else { return };
        let value = if done.op_type == OpType::Ok {
            &done.value
        } else {
            &invoke.value
        };
        let kind = match invoke.f.as_str() {
            "read" if done.op_type == OpType::Ok => {
                Kind::Read(value.get(1).and_then(|v| v.as_i64()))
            }
            // A read of unknown outcome says nothing.
            "read" => return,
            "write" => match value.get(1).and_then(|v| v.as_i64()) {
                Some(v) => Kind::Write(v),
                None => return,
            },
            "cas" => match (
                value.get(1).and_then(|p| p.get(0)).and_then(|v| v.as_i64()),
                value.get(1).and_then(|p| p.get(1)).and_then(|v| v.as_i64()),
            ) {
                (Some(old), Some(new)) => Kind::Cas(old, new),
                _ => return,
            },
            _ => return,
        };
        by_key.entry(key).or_default().push(Call {
            kind,
            invoked,
            returned,
        });
    };
    for (i, op) in history.iter().enumerate() {
        match op.op_type {
            OpType::Invoke => {
                pending.insert(op.process, (i, op));
            }
            OpType::Ok => {
                if let Some((invoked, invoke)) = pending.remove(&op.process) {
                    finish(invoked, invoke, op, Some(i));
                }
            }
            OpType::Info => {
                if let Some((invoked, invoke)) = pending.remove(&op.process) {
                    finish(invoked, invoke, op, None);
                }
            }
            OpType::Fail => {
                pending.remove(&op.process);
            }
        }
    }
    // Invoked and never completed: unknown, like info.
    for (invoked, invoke) in pending.into_values() {
        finish(invoked, invoke, invoke, None);
    }
    by_key
}

/// The register model: whether `kind` may take effect in `state`, and the
/// state after it.
fn step(state: Option<i64>, kind: &Kind) -> Option<Option<i64>> {
    match kind {
        Kind::Read(v) => (*v == state).then_some(state),
        Kind::Write(v) => Some(Some(*v)),
        Kind::Cas(old, new) => (state == Some(*old)).then_some(Some(*new)),
    }
}

/// Whether `calls` (one key, starting from `initial`) are linearizable;
/// on failure, the operation that could not be placed.
fn linearizable(calls: &[Call], initial: Option<i64>) -> Result<(), String> {
    // Events in real-time order: (position, call index, is_return). Returns
    // of info calls are at infinity, after everything.
    let mut events: Vec<(usize, usize, bool)> = Vec::with_capacity(calls.len() * 2);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.invoked, i, false));
        events.push((c.returned.unwrap_or(usize::MAX), i, true));
    }
    events.sort();
    // A doubly linked list over `events`, so linearized calls can be lifted
    // out and put back in O(1).
    let n = events.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut head = 0usize;
    let mut call_event = vec![0usize; calls.len()];
    let mut return_event = vec![0usize; calls.len()];
    for (e, (_, c, is_return)) in events.iter().enumerate() {
        if *is_return {
            return_event[*c] = e;
        } else {
            call_event[*c] = e;
        }
    }
    let unlink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, head: &mut usize| {
        if prev[e] == usize::MAX {
            *head = next[e];
        } else {
            next[prev[e]] = next[e];
        }
        if next[e] < n {
            prev[next[e]] = prev[e];
        }
    };
    let relink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, head: &mut usize| {
        if prev[e] == usize::MAX {
            *head = e;
        } else {
            next[prev[e]] = e;
        }
        if next[e] < n {
            prev[next[e]] = e;
        }
    };
    let words = calls.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state = initial;
    let mut entry = head;
    let mut deepest = 0usize;
    loop {
        if entry >= n {
            return Ok(());
        }
        let (position, c, is_return) = events[entry];
        if is_return && position == usize::MAX {
            // Only calls that never returned are left: they need not happen.
            return Ok(());
        }
        if !is_return {
            if let Some(after) = step(state, &calls[c].kind) {
                linearized[c / 64] |= 1 << (c % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((c, state));
                    deepest = deepest.max(stack.len());
                    state = after;
                    unlink(call_event[c], &mut next, &mut prev, &mut head);
                    unlink(return_event[c], &mut next, &mut prev, &mut head);
                    entry = head;
                    continue;
                }
                linearized[c / 64] &= !(1 << (c % 64));
            }
            entry = next[entry];
        } else {
            // Call c returned before it could be linearized: backtrack.
            let Some((undone, before)) = stack.pop() else {
                return Err(format!(
                    "no order of the operations fits a register; the search ran out at \
                     {:?} (history positions {}..{}) after placing at most {deepest} operations",
                    calls[c].kind,
                    calls[c].invoked,
                    calls[c].returned.map_or("∞".to_owned(), |r| r.to_string())
                ));
            };
            state = before;
            linearized[undone / 64] &= !(1 << (undone % 64));
            relink(return_event[undone], &mut next, &mut prev, &mut head);
            relink(call_event[undone], &mut next, &mut prev, &mut head);
            entry = next[call_event[undone]];
        }
    }
}

/// Checks a register history; every key starts at `initial`.
pub fn check(history: &[Op], initial: Option<i64>) -> RegisterReport {
    let by_key = calls_by_key(history);
    let mut report = RegisterReport {
        keys: by_key.len(),
        ..RegisterReport::default()
    };
    for (key, calls) in by_key {
        report.operations += calls.len();
        if let Err(problem) = linearizable(&calls, initial) {
            report.violations.insert(key, problem);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::parsed as history;

    #[test]
    fn accepts_concurrent_operations_in_some_order() {
        // The read overlaps the write, so it may see the old or the new value.
        let report = check(
            &history(
                r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
                   {"process":1,"type":"invoke","f":"read","value":[1,null],"time":2}
                   {"process":1,"type":"ok","f":"read","value":[1,5],"time":3}
                   {"process":0,"type":"ok","f":"write","value":[1,5],"time":4}
                   {"process":1,"type":"invoke","f":"cas","value":[1,[5,6]],"time":5}
                   {"process":1,"type":"ok","f":"cas","value":[1,[5,6]],"time":6}
                   {"process":2,"type":"invoke","f":"read","value":[1,null],"time":7}
                   {"process":2,"type":"ok","f":"read","value":[1,6],"time":8}"#,
            ),
            Some(0),
        );
        assert!(report.valid(), "{report:?}");
    }

    #[test]
    fn reports_a_stale_read() {
        // The write finished before the read began, yet the read saw 0.
        let report = check(
            &history(
                r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
                   {"process":0,"type":"ok","f":"write","value":[1,5],"time":2}
                   {"process":1,"type":"invoke","f":"read","value":[1,null],"time":3}
                   {"process":1,"type":"ok","f":"read","value":[1,0],"time":4}"#,
            ),
            Some(0),
        );
        assert!(!report.valid());
        assert!(report.violations.contains_key(&1), "{report:?}");
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let seen = history(
            r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
               {"process":0,"type":"info","f":"write","value":[1,5],"time":2}
               {"process":1,"type":"invoke","f":"read","value":[1,null],"time":3}
               {"process":1,"type":"ok","f":"read","value":[1,5],"time":4}
               {"process":1,"type":"invoke","f":"read","value":[1,null],"time":5}
               {"process":1,"type":"ok","f":"read","value":[1,5],"time":6}"#,
        );
        assert!(check(&seen, Some(0)).valid());
        let not_seen = history(
            r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
               {"process":0,"type":"info","f":"write","value":[1,5],"time":2}
               {"process":1,"type":"invoke","f":"read","value":[1,null],"time":3}
               {"process":1,"type":"ok","f":"read","value":[1,0],"time":4}"#,
        );
        assert!(check(&not_seen, Some(0)).valid());
        // But once seen, it cannot be unseen.
        let flicker = history(
            r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
               {"process":0,"type":"info","f":"write","value":[1,5],"time":2}
               {"process":1,"type":"invoke","f":"read","value":[1,null],"time":3}
               {"process":1,"type":"ok","f":"read","value":[1,5],"time":4}
               {"process":1,"type":"invoke","f":"read","value":[1,null],"time":5}
               {"process":1,"type":"ok","f":"read","value":[1,0],"time":6}"#,
        );
        assert!(!check(&flicker, Some(0)).valid());
    }

    #[test]
    fn a_failed_cas_did_not_happen_and_a_successful_one_must_fit() {
        let report = check(
            &history(
                r#"{"process":0,"type":"invoke","f":"cas","value":[2,[0,7]],"time":1}
                   {"process":0,"type":"fail","f":"cas","value":[2,[0,7]],"time":2}
                   {"process":1,"type":"invoke","f":"cas","value":[2,[3,4]],"time":3}
                   {"process":1,"type":"ok","f":"cas","value":[2,[3,4]],"time":4}"#,
            ),
            Some(0),
        );
        // cas 3→4 cannot succeed on a register holding 0.
        assert!(!report.valid());
        assert_eq!(report.violations.len(), 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let report = check(
            &history(
                r#"{"process":0,"type":"invoke","f":"write","value":[1,5],"time":1}
                   {"process":0,"type":"ok","f":"write","value":[1,5],"time":2}
                   {"process":1,"type":"invoke","f":"read","value":[2,null],"time":3}
                   {"process":1,"type":"ok","f":"read","value":[2,0],"time":4}"#,
            ),
            Some(0),
        );
        assert!(report.valid(), "{report:?}");
        assert_eq!(report.keys, 2);
    }
}
