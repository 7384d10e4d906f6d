//! TPC-H at SF 0.01 for tests: the 22 queries (tests/tpch/queries) and
//! DuckDB's answers to them (tests/tpch/answers, made by make_answers.py).

#![allow(dead_code)]

use std::path::PathBuf;

use tokio_postgres::{Client, SimpleQueryMessage};

/// tests/tpch.
pub fn tpch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tpch")
}

/// The text of query `q` (1..=22).
pub fn query(q: u32) -> String {
    std::fs::read_to_string(tpch_dir().join(format!("queries/q{q:02}.sql"))).expect("query")
}

/// DuckDB's answer to query `q`, as text values.
pub fn answer(q: u32) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(tpch_dir().join(format!("answers/q{q:02}.csv")))
        .expect("answer");
    reader
        .records()
        .map(|r| r.expect("csv record").iter().map(str::to_owned).collect())
        .collect()
}

/// The rows of `sql` as text values (simple query protocol).
pub async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Whether two printed values are equal: numbers within a relative 1e-5 (DuckDB
/// averages in binary floating point, Quarry in decimal), anything else exactly.
fn same_value(got: &str, expected: &str) -> bool {
    if got == expected {
        return true;
    }
    match (got.parse::<f64>(), expected.parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0),
        _ => false,
    }
}

fn same_rows(got: &[Vec<String>], expected: &[Vec<String>]) -> bool {
    got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(g, e)| g.len() == e.len() && g.iter().zip(e).all(|(a, b)| same_value(a, b)))
}

/// The queries of the 22 whose answers differ from DuckDB's, with why; the
/// client's search_path must be the TPC-H schema.
pub async fn mismatches(client: &Client) -> Vec<String> {
    let mut failures = Vec::new();
    for q in 1..=22 {
        let expected = answer(q);
        let mut got = match rows(client, &query(q)).await {
            Ok(rows) => rows,
            Err(e) => {
                failures.push(format!("q{q:02} failed: {e:?}"));
                continue;
            }
        };
        if !same_rows(&got, &expected) {
            // Rows that tie on the ORDER BY keys may come in any order.
            let mut sorted_expected = expected.clone();
            sorted_expected.sort();
            got.sort();
            if !same_rows(&got, &sorted_expected) {
                failures.push(format!(
                    "q{q:02}: {} rows, expected {}; first got {:?}, first expected {:?}",
                    got.len(),
                    expected.len(),
                    got.first(),
                    expected.first()
                ));
            }
        }
    }
    failures
}
