//! Histories in Jepsen's shape: each operation is invoked, then completes as `ok`
//! (it happened), `fail` (it certainly did not) or `info` (unknown: it may have).
//! Written as JSON lines: `{"process":0,"type":"invoke","f":"add","value":3,"time":12}`.

use serde::{Deserialize, Serialize};

/// How an operation event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The client started the operation.
    Invoke,
    /// The operation took effect.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// Unknown outcome (timeout, connection lost): it may or may not have.
    Info,
}

/// One event of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The logical client process.
    pub process: u64,
    /// Invocation or completion kind.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The function, e.g. `add`, `read`, `transfer`.
    pub f: String,
    /// The argument or result.
    pub value: serde_json::Value,
    /// Nanoseconds since the start of the test.
    pub time: u64,
}

/// Parses a history from JSON lines; blank lines are skipped.
///
/// # Errors
/// The first line that is not a valid [`Op`], with its 1-based number.
pub fn parse_json_lines(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// A history from JSON lines written in a test; panics on a bad line.
#[cfg(test)]
pub(crate) fn parsed(lines: &str) -> Vec<Op> {
    parse_json_lines(lines).expect("valid history")
}
