//! The set workload's checker: clients add unique integers, then one final read
//! returns the set. Every acknowledged add must be in it (else *lost*); nothing
//! that was never attempted may be (else *unexpected*); adds of unknown outcome
//! that are present are *recovered*, and fine.

use std::collections::BTreeSet;

use crate::history::{Op, OpType};

/// What the set checker found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetReport {
    /// Adds acknowledged (`ok`).
    pub acknowledged: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: BTreeSet<i64>,
    /// Values in the final read that no add attempted.
    pub unexpected: BTreeSet<i64>,
    /// Adds of unknown outcome (`info`) found in the final read.
    pub recovered: BTreeSet<i64>,
    /// Whether the history had a successful final read to judge by.
    pub read_found: bool,
}

impl SetReport {
    /// No lost or unexpected values, and there was a read to check.
    pub fn valid(&self) -> bool {
        self.read_found && self.lost.is_empty() && self.unexpected.is_empty()
    }
}

/// Checks a set history (`f` = `add` with an integer value, `read` with the list
/// of integers read). The last successful read is the final read.
pub fn check(history: &[Op]) -> SetReport {
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut final_read: Option<BTreeSet<i64>> = None;
    for op in history {
        match (op.f.as_str(), op.op_type) {
            ("add", OpType::Invoke) => {
                if let Some(v) = op.value.as_i64() {
                    attempted.insert(v);
                }
            }
            ("add", OpType::Ok) => {
                if let Some(v) = op.value.as_i64() {
                    acknowledged.insert(v);
                }
            }
            ("add", OpType::Info) => {
                if let Some(v) = op.value.as_i64() {
                    unknown.insert(v);
                }
            }
            ("read", OpType::Ok) => {
                let values = op
                    .value
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_i64()).collect());
                final_read = values.or(final_read);
            }
            _ => {}
        }
    }
    let read_found = final_read.is_some();
    let read = final_read.unwrap_or_default();
    SetReport {
        acknowledged: acknowledged.len(),
        lost: acknowledged.difference(&read).copied().collect(),
        unexpected: read.difference(&attempted).copied().collect(),
        recovered: unknown.intersection(&read).copied().collect(),
        read_found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::parsed as history;

    #[test]
    fn accepts_a_history_where_every_acknowledged_add_is_read() {
        let report = check(&history(
            r#"{"process":0,"type":"invoke","f":"add","value":1,"time":1}
               {"process":0,"type":"ok","f":"add","value":1,"time":2}
               {"process":1,"type":"invoke","f":"add","value":2,"time":3}
               {"process":1,"type":"info","f":"add","value":2,"time":4}
               {"process":2,"type":"invoke","f":"read","value":null,"time":5}
               {"process":2,"type":"ok","f":"read","value":[1,2],"time":6}"#,
        ));
        assert!(report.valid(), "{report:?}");
        assert_eq!(report.recovered, BTreeSet::from([2]));
    }

    #[test]
    fn reports_a_lost_write_and_an_unexpected_value() {
        let report = check(&history(
            r#"{"process":0,"type":"invoke","f":"add","value":1,"time":1}
               {"process":0,"type":"ok","f":"add","value":1,"time":2}
               {"process":2,"type":"invoke","f":"read","value":null,"time":5}
               {"process":2,"type":"ok","f":"read","value":[7],"time":6}"#,
        ));
        assert!(!report.valid());
        assert_eq!(report.lost, BTreeSet::from([1]));
        assert_eq!(report.unexpected, BTreeSet::from([7]));
    }

    #[test]
    fn a_history_without_a_read_is_not_valid() {
        let report = check(&history(
            r#"{"process":0,"type":"invoke","f":"add","value":1,"time":1}"#,
        ));
        assert!(!report.valid());
    }
}
