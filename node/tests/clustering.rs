//! Clustered tables and bloom filters against a real `quarry` process: each
//! data file's rows are sorted by the clustering columns, the compactor
//! re-clusters files that overlap, scans skip files and row groups by them,
//! the planner knows the files' order, and bloom filters skip row groups
//! for `=` on columns zone maps cannot help with.

#[path = "support/node.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{TestNode, explain, files_scanned};
use tokio_postgres::Client;

/// What a pruning metric of an EXPLAIN ANALYZE (`name=T total → M
/// matched`) pruned: T - M.
fn pruned(plan: &str, name: &str) -> Option<u64> {
    let rest = plan.split(&format!("{name}=")).nth(1)?;
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (total, rest) = rest.split_once(" total → ")?;
    let matched = rest.split_once(" matched")?.0;
    Some(number(total)? - number(matched)?)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn clustered_files_are_sorted_re_clustered_and_pruned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(
        &dir.path().join("data"),
        &["--compaction-interval-secs", "1"],
    )
    .await;
    let client = node.client().await;
    client
        .batch_execute(
            "SET use_query_cache = off;
             CREATE TABLE events (k BIGINT, v TEXT) CLUSTER BY k;
             CREATE TABLE plain (k BIGINT, v TEXT);",
        )
        .await
        .expect("tables");
    // Four INSERTs, each a file spanning the whole key range in no order.
    for i in 0..4 {
        for table in ["events", "plain"] {
            client
                .batch_execute(&format!(
                    "INSERT INTO {table} SELECT (v * 7919 + {i}) % 1200000, 'row ' || v \
                     FROM generate_series({start}, {end}) AS g(v)",
                    start = i * 300_000,
                    end = i * 300_000 + 299_999
                ))
                .await
                .expect("insert");
        }
    }
    let plain_files = files_scanned(&client, "SELECT * FROM plain").await;
    assert!(plain_files >= 4, "{plain_files} files");
    // The compactor rewrites the four overlapping files in one sort: two
    // files (1,048,576 rows and the rest) that do not overlap.
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_scanned(&client, "SELECT * FROM events").await != 2 {
        assert!(
            Instant::now() < deadline,
            "not re-clustered after two minutes:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(node.log().contains("re-clustered overlapping data files"));
    let point = "SELECT count(*) FROM events WHERE k = 600001";
    assert_eq!(files_scanned(&client, point).await, 1);
    assert_eq!(
        files_scanned(&client, "SELECT count(*) FROM plain WHERE k = 600001").await,
        plain_files
    );
    // Sorted within the file: row groups are pruned by their statistics.
    let analyzed = explain(&client, point, true).await;
    // The scan reports the bytes its reader fetched.
    assert!(
        !analyzed.contains("bytes_scanned=0,"),
        "no bytes_scanned recorded:\n{analyzed}"
    );
    let skipped = pruned(&analyzed, "row_groups_pruned_statistics");
    assert!(
        skipped.is_some_and(|p| p > 0),
        "no row group pruned by statistics:\n{analyzed}"
    );
    // One INSERT makes one file (nothing to re-cluster), already sorted:
    // its row groups are pruned where those of the same rows unsorted are
    // not.
    client
        .batch_execute(
            "CREATE TABLE once (k BIGINT, v TEXT) CLUSTER BY k;
             INSERT INTO once SELECT (v * 7919) % 300000, 'row ' || v FROM generate_series(0, 299999) AS g(v);
             CREATE TABLE once_plain (k BIGINT, v TEXT);
             INSERT INTO once_plain SELECT (v * 7919) % 300000, 'row ' || v FROM generate_series(0, 299999) AS g(v);",
        )
        .await
        .expect("one file each");
    for (table, expect_pruned) in [("once", true), ("once_plain", false)] {
        let analyzed = explain(
            &client,
            &format!("SELECT count(*) FROM {table} WHERE k = 1234"),
            true,
        )
        .await;
        let skipped = pruned(&analyzed, "row_groups_pruned_statistics").unwrap_or(0);
        assert_eq!(skipped > 0, expect_pruned, "{table}:\n{analyzed}");
    }
    // The planner knows the files' order: ORDER BY the clustering column
    // merges the sorted files instead of sorting.
    let order = "SELECT k FROM {t} ORDER BY k LIMIT 5 OFFSET 600000";
    let sorted_plan = explain(&client, &order.replace("{t}", "events"), false).await;
    assert!(
        !sorted_plan.contains("SortExec"),
        "a clustered table's scan is sorted again:\n{sorted_plan}"
    );
    assert!(
        explain(&client, &order.replace("{t}", "plain"), false)
            .await
            .contains("SortExec")
    );
    let keys = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
    };
    let events_keys = keys(
        client
            .query(&order.replace("{t}", "events"), &[])
            .await
            .expect("events"),
    );
    let plain_keys = keys(
        client
            .query(&order.replace("{t}", "plain"), &[])
            .await
            .expect("plain"),
    );
    assert_eq!(events_keys.len(), 5);
    assert_eq!(events_keys, plain_keys);
    // Same answers as the table that is not clustered.
    for query in [
        "SELECT count(*), sum(k)::bigint FROM {t}",
        "SELECT count(*), sum(k)::bigint FROM {t} WHERE k BETWEEN 1000 AND 5000",
        "SELECT count(*), sum(k)::bigint FROM {t} WHERE k = 600001",
    ] {
        let a = client
            .query_one(&query.replace("{t}", "events"), &[])
            .await
            .expect("events");
        let b = client
            .query_one(&query.replace("{t}", "plain"), &[])
            .await
            .expect("plain");
        assert_eq!(
            (a.get::<_, i64>(0), a.get::<_, i64>(1)),
            (b.get::<_, i64>(0), b.get::<_, i64>(1)),
            "{query}"
        );
    }
    assert_eq!(
        count(&client, "SELECT count(*) FROM events").await,
        1_200_000
    );
}

#[tokio::test]
async fn a_bloom_filter_skips_row_groups_for_an_absent_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    // Names in no order: every row group's min and max span them all.
    let rows = "SELECT v AS id, md5(v::text) AS name FROM generate_series(1, 400000) AS g(v)";
    client
        .batch_execute(&format!(
            "SET use_query_cache = off;
             CREATE TABLE users (id BIGINT, name TEXT) WITH (bloom_filter_columns = 'name');
             CREATE TABLE users_plain (id BIGINT, name TEXT);
             INSERT INTO users {rows};
             INSERT INTO users_plain {rows};"
        ))
        .await
        .expect("tables");
    // Within every row group's min and max (hex digits), but no md5.
    let absent = "name = '8000000000000000000000000000zzzz'";
    let with = explain(
        &client,
        &format!("SELECT count(*) FROM users WHERE {absent}"),
        true,
    )
    .await;
    let without = explain(
        &client,
        &format!("SELECT count(*) FROM users_plain WHERE {absent}"),
        true,
    )
    .await;
    let by_bloom = |plan: &str| pruned(plan, "row_groups_pruned_bloom_filter");
    assert!(
        by_bloom(&with).is_some_and(|p| p > 0),
        "the bloom filter pruned nothing:\n{with}"
    );
    assert!(
        by_bloom(&without).is_none_or(|p| p == 0),
        "a table without bloom filters pruned by them:\n{without}"
    );
    // A present value is still found.
    let present = client
        .query_one("SELECT id FROM users WHERE name = md5('123456')", &[])
        .await
        .expect("present");
    assert_eq!(present.get::<_, i64>(0), 123_456);
}
