//! TPC-H at scale factor 0.01, loaded with `quarry load tpch`: the 22 queries
//! return DuckDB's answers (tests/tpch/answers, made by tests/tpch/make_answers.py),
//! and psql can list and describe the tables.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "tpch.rs"]
    pub mod tpch;
}

use std::process::Command;

use support::node::TestNode;
use support::tpch;

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

#[tokio::test]
async fn the_22_queries_match_duckdb() {
    let (_dir, node) = loaded_node().await;
    let client = node.client().await;
    client
        .batch_execute("SET search_path = tpch")
        .await
        .expect("search_path");
    let failures = tpch::mismatches(&client).await;
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
