//! TPC-H at scale factor 0.01, loaded with `quarry load tpch`: the 22 queries
//! return DuckDB's answers (tests/tpch/answers, made by tests/tpch/make_answers.py),
//! and psql can list and describe the tables.

#[path = "support/node.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

use support::TestNode;
use tokio_postgres::SimpleQueryMessage;

fn tpch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tpch")
}

async fn loaded_node() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["load", "tpch", "--scale-factor", "0.01", "--pg"])
        .arg(format!("127.0.0.1:{}", node.pg_port))
        .output()
        .expect("quarry load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("tpch.lineitem: 60175 rows in"), "{stdout}");
    (dir, node)
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

#[tokio::test]
async fn the_22_queries_match_duckdb() {
    let (_dir, node) = loaded_node().await;
    let client = node.client().await;
    client
        .batch_execute("SET search_path = tpch")
        .await
        .expect("search_path");
    let mut failures = Vec::new();
    for q in 1..=22 {
        let sql = std::fs::read_to_string(tpch_dir().join(format!("queries/q{q:02}.sql")))
            .expect("query");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(tpch_dir().join(format!("answers/q{q:02}.csv")))
            .expect("answer");
        let expected: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.expect("csv record").iter().map(str::to_owned).collect())
            .collect();
        let messages = match client.simple_query(&sql).await {
            Ok(messages) => messages,
            Err(e) => {
                failures.push(format!("q{q:02} failed: {e:?}"));
                continue;
            }
        };
        let mut got: Vec<Vec<String>> = messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("").to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn psql_lists_and_describes_the_tables() {
    let (_dir, node) = loaded_node().await;
    let psql = |command: &str| {
        let output = Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &node.pg_port.to_string(),
                "-U",
                "test",
                "-d",
                "quarry",
                "-c",
            ])
            .arg(command)
            .output()
            .expect("psql is installed (.ci/run installs postgresql-client)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "psql {command} failed:\n{text}");
        text
    };
    let one = psql("select 1");
    assert!(one.contains("(1 row)"), "{one}");
    let tables = psql("\\dt tpch.*");
    for table in [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ] {
        assert!(tables.contains(table), "\\dt misses {table}:\n{tables}");
    }
    let lineitem = psql("\\d tpch.lineitem");
    assert!(lineitem.contains("Table \"tpch.lineitem\""), "{lineitem}");
    for column in ["l_orderkey", "l_shipdate", "l_comment"] {
        assert!(
            lineitem.contains(column),
            "\\d misses {column}:\n{lineitem}"
        );
    }
    assert!(
        lineitem.contains("bigint") && lineitem.contains("date"),
        "{lineitem}"
    );
}
