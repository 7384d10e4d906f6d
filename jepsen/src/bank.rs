//! The bank workload's checker: clients transfer amounts between accounts in
//! transactions that refuse to overdraw, and read every balance in one
//! snapshot. Under snapshot isolation every successful read sees a state some
//! serial order of committed transfers produced: the balances sum to the
//! total and none is negative.
//!
//! Reads are `{"f":"read","value":{"0":100,"1":95,...}}` (account → balance);
//! transfers are `{"f":"transfer","value":{"from":0,"to":1,"amount":5}}`.

use std::collections::BTreeMap;

use crate::history::{Op, OpType};

/// One read that broke an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRead {
    /// Its position in the history.
    pub index: usize,
    /// What it read.
    pub balances: BTreeMap<String, i64>,
    /// Why it is wrong.
    pub problem: String,
}

/// What the bank checker found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BankReport {
    /// Successful reads checked.
    pub reads: usize,
    /// Transfers acknowledged.
    pub transfers_ok: usize,
    /// Reads with a wrong total, a negative balance or a missing account.
    pub bad_reads: Vec<BadRead>,
}

impl BankReport {
    /// Every read was consistent, and there was at least one.
    pub fn valid(&self) -> bool {
        self.reads > 0 && self.bad_reads.is_empty()
    }
}

/// Checks a bank history whose accounts always hold `total` together and
/// number `accounts`.
pub fn check(history: &[Op], accounts: usize, total: i64) -> BankReport {
    let mut report = BankReport::default();
    for (index, op) in history.iter().enumerate() {
        match (op.f.as_str(), op.op_type) {
            ("transfer", OpType::Ok) => report.transfers_ok += 1,
            ("read", OpType::Ok) => {
                report.reads += 1;
                let balances: BTreeMap<String, i64> = op
                    .value
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let sum: i64 = balances.values().sum();
                let problem = if balances.len() != accounts {
                    Some(format!(
                        "{} accounts read, {accounts} exist",
                        balances.len()
                    ))
                } else if sum != total {
                    Some(format!("balances sum to {sum}, not {total}"))
                } else if let Some((account, balance)) = balances.iter().find(|(_, b)| **b < 0) {
                    Some(format!("account {account} is negative: {balance}"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    report.bad_reads.push(BadRead {
                        index,
                        balances,
                        problem,
                    });
                }
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::parsed as history;

    #[test]
    fn accepts_reads_that_preserve_the_total() {
        let report = check(
            &history(
                r#"{"process":0,"type":"invoke","f":"transfer","value":{"from":0,"to":1,"amount":5},"time":1}
                   {"process":0,"type":"ok","f":"transfer","value":{"from":0,"to":1,"amount":5},"time":2}
                   {"process":1,"type":"invoke","f":"read","value":null,"time":3}
                   {"process":1,"type":"ok","f":"read","value":{"0":5,"1":15},"time":4}"#,
            ),
            2,
            20,
        );
        assert!(report.valid(), "{report:?}");
        assert_eq!(report.transfers_ok, 1);
    }

    #[test]
    fn reports_a_read_that_saw_half_a_transfer() {
        // A lost update or a torn (non-atomic) transfer shows as a wrong sum.
        let report = check(
            &history(
                r#"{"process":1,"type":"invoke","f":"read","value":null,"time":3}
                   {"process":1,"type":"ok","f":"read","value":{"0":5,"1":10},"time":4}"#,
            ),
            2,
            20,
        );
        assert!(!report.valid());
        assert_eq!(report.bad_reads[0].problem, "balances sum to 15, not 20");
    }

    #[test]
    fn reports_an_overdrawn_account_and_a_missing_one() {
        let report = check(
            &history(
                r#"{"process":1,"type":"ok","f":"read","value":{"0":-5,"1":25},"time":4}
                   {"process":1,"type":"ok","f":"read","value":{"0":20},"time":5}"#,
            ),
            2,
            20,
        );
        assert_eq!(report.bad_reads.len(), 2);
        assert!(report.bad_reads[0].problem.contains("negative"));
        assert!(report.bad_reads[1].problem.contains("1 accounts read"));
    }

    #[test]
    fn a_history_without_reads_is_not_valid() {
        assert!(!check(&[], 2, 20).valid());
    }
}
