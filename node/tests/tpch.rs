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
    loaded_node_with(&[]).await
}

/// A node started with `flags`, TPC-H SF 0.01 loaded into schema `tpch`.
async fn loaded_node_with(flags: &[&str]) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("data"), flags).await;
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["load", "tpch", "--scale-factor", "0.01", "--pg"])
        .arg(format!("127.0.0.1:{}", node.pg_port))
        .args(["--url", &format!("http://127.0.0.1:{}", node.http_port)])
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

/// A client of `node` whose search path is the TPC-H schema.
async fn tpch_client(node: &TestNode) -> tokio_postgres::Client {
    let client = node.client().await;
    client
        .batch_execute("SET search_path = tpch")
        .await
        .expect("search_path");
    client
}

#[tokio::test]
async fn the_22_queries_match_duckdb() {
    let (_dir, node) = loaded_node().await;
    let client = tpch_client(&node).await;
    let failures = tpch::mismatches(&client).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The plans of `EXPLAIN` of TPC-H Q15, as one text.
async fn explain_q15(client: &tokio_postgres::Client) -> String {
    let rows = client
        .query(&format!("EXPLAIN {}", tpch::query(15)), &[])
        .await
        .expect("explain q15");
    rows.iter()
        .map(|r| r.get::<_, String>(1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn with_share_subplans_q15_computes_its_cte_once_and_the_22_queries_still_match() {
    let (_dir, node) = loaded_node().await;
    let client = tpch_client(&node).await;
    let off = explain_q15(&client).await;
    assert!(!off.contains("SharedExec"), "shared while off:\n{off}");
    client
        .batch_execute("SET share_subplans = on")
        .await
        .expect("share_subplans on");
    // Q15's revenue CTE is read by the join and by the max subquery.
    let on = explain_q15(&client).await;
    assert!(on.contains("SharedExec") && on.contains("uses=2"), "{on}");
    let failures = tpch::mismatches(&client).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let bad = client
        .batch_execute("SET share_subplans = sometimes")
        .await
        .expect_err("not a Boolean");
    assert_eq!(
        bad.code().map(|c| c.code().to_owned()).as_deref(),
        Some("22023"),
        "{bad:?}"
    );
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
    psql("CREATE VIEW tpch.nation_names AS SELECT n_name FROM tpch.nation");
    let views = psql("\\dv tpch.*");
    assert!(
        views.contains("nation_names") && views.contains("view"),
        "{views}"
    );
    assert!(!views.contains("lineitem"), "\\dv lists tables:\n{views}");
    let databases = psql("\\l+");
    let quarry = databases
        .lines()
        .find(|l| l.trim_start().starts_with("quarry"))
        .unwrap_or_default();
    assert!(
        quarry.contains(" MB") || quarry.contains(" kB"),
        "{databases}"
    );
    let roles = psql("\\du");
    assert!(roles.contains("List of roles"), "{roles}");
    psql("CREATE ROLE analyst");
    psql("GRANT SELECT ON tpch.nation TO analyst");
    let privileges = psql("\\dp tpch.nation");
    assert!(
        privileges.contains("Access privileges") && privileges.contains("analyst=r/quarry"),
        "{privileges}"
    );
    let view = psql("\\d tpch.nation_names");
    assert!(
        view.contains("View \"tpch.nation_names\"") && view.contains("n_name"),
        "{view}"
    );
}

/// Reads go to the disk (no data cache), and the scrubber runs every second.
const DISK_READS_SCRUBBED: [&str; 6] = [
    "--data-cache-mb",
    "0",
    "--scrub-interval-secs",
    "1",
    "--buffer-file-rows",
    "0",
];

/// Every file of the load in a stripe: SF 0.01 lineitem's 60,175 rows
/// would otherwise wait in the ingest buffer (under 131,072 rows).
const STRIPES_ONLY: [&str; 2] = ["--buffer-file-rows", "0"];

/// Bytes read from this node's chunks so far.
async fn read_bytes(node: &TestNode) -> f64 {
    node.metric("quarry_storage_chunk_read_bytes_total")
        .await
        .unwrap_or(0.0)
}

/// The chunk file of lineitem's one data file, and its bytes' length (the
/// file also holds the block checksums and trailer of storage/FORMAT.md).
async fn lineitem_file(node: &TestNode) -> (std::path::PathBuf, u64) {
    let client = node.client().await;
    let row = client
        .query_one(
            "SELECT CAST(data_files AS BIGINT), CAST(size_bytes AS BIGINT) FROM quarry_system.tables \
             WHERE table_schema = 'tpch' AND table_name = 'lineitem'",
            &[],
        )
        .await
        .expect("lineitem's files");
    assert_eq!(row.get::<_, i64>(0), 1, "SF 0.01 lineitem is one data file");
    let size = row.get::<_, i64>(1) as u64;
    let blocks = size.div_ceil(64 * 1024);
    let path = std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::metadata(p).map(|m| m.len()).ok() == Some(size + 4 * blocks + 16))
        .expect("a chunk file of lineitem's size in layout 2");
    (path, size)
}

#[tokio::test]
async fn a_scan_of_4_of_lineitems_16_columns_reads_under_40_percent_of_its_bytes() {
    // TPC-H Q6's four columns, read cold: nothing of lineitem was read since
    // it was loaded, so the data cache holds none of it and what the scan
    // needs comes from disk (a range the scan asks for twice, such as the
    // footer, once).
    let (_dir, node) = loaded_node_with(&STRIPES_ONLY).await;
    let (_, size) = lineitem_file(&node).await;
    let client = node.client().await;
    let before = read_bytes(&node).await;
    client
        .query_one(
            "SELECT sum(l_extendedprice * l_discount), sum(l_quantity), max(l_shipdate) \
             FROM tpch.lineitem",
            &[],
        )
        .await
        .expect("scan");
    let read = read_bytes(&node).await - before;
    assert!(read > 0.0, "the scan read the disk");
    assert!(
        read < 0.4 * size as f64,
        "read {read} bytes of a {size}-byte file ({:.1}%)",
        100.0 * read / size as f64
    );
}

#[tokio::test]
async fn a_flipped_bit_in_an_unread_column_chunk_is_reported_only_where_it_is_read() {
    let (_dir, node) = loaded_node_with(&DISK_READS_SCRUBBED).await;
    let client = node.client().await;
    let quantity = "SELECT CAST(sum(l_quantity) AS TEXT) FROM tpch.lineitem";
    let expected: String = client.query_one(quantity, &[]).await.expect("sum").get(0);
    let (path, size) = lineitem_file(&node).await;
    let mut bytes = std::fs::read(&path).expect("read the chunk file");
    let data = bytes::Bytes::copy_from_slice(&bytes[..size as usize]);
    let metadata = datafusion::parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&data)
        .expect("the data file's footer");
    let comment = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "l_comment")
        .expect("l_comment");
    let (start, length) = metadata.row_group(0).column(comment).byte_range();
    assert!(
        length > 3 * 64 * 1024,
        "l_comment spans whole blocks: {length}"
    );
    bytes[(start + length / 2) as usize] ^= 0x04;
    std::fs::write(&path, &bytes).expect("flip a bit in l_comment's column chunk");

    let got: String = client
        .query_one(quantity, &[])
        .await
        .expect("a query that does not read l_comment is not affected")
        .get(0);
    assert_eq!(got, expected);

    let e = client
        .query_one(
            "SELECT count(*) FROM tpch.lineitem WHERE l_comment LIKE '%fluffily%'",
            &[],
        )
        .await
        .expect_err("a query that reads l_comment");
    assert_eq!(support::node::sqlstate(&e), "XX001", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("tpch.lineitem"), "{message}");

    // The scrubber (every second) reads every chunk whole and reports it too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reported = "scrubber found a bad chunk";
    while !node.log().contains(reported) {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber did not report the damage:\n{}",
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
