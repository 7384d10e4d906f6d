//! Row-level DELETE and UPDATE against a real `quarry` process: a change
//! that touches few rows of a data file writes a deletion vector instead of
//! rewriting the file, transactions changing different rows of one file
//! both commit while the same row conflicts, time travel reads the rows a
//! vector deleted later, and the compactor folds vectors into new files
//! without changing any answer.

#[path = "support/node.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{TestNode, bigints, instant_between_commits, last_snapshot, sqlstate};
use tokio_postgres::Client;

/// 300,000 rows: one data file (more rows than the ingest buffer holds).
const ROWS: &str =
    "INSERT INTO t SELECT v, v * 2, repeat('x', 30) || v FROM generate_series(0, 299999) AS g(v)";

/// 600,000 rows: one data file, half of which is still more than the
/// ingest buffer holds (so its rewrite is written to the chunk store).
const MORE_ROWS: &str =
    "INSERT INTO t SELECT v, v * 2, repeat('x', 30) || v FROM generate_series(0, 599999) AS g(v)";

/// count(*), sum(id), sum(v) of `t` (as `from` says: a table, or one read
/// as of a time).
async fn answers(client: &Client, from: &str) -> Vec<i64> {
    bigints(
        client,
        &format!("SELECT count(*)::bigint, sum(id)::bigint, sum(v)::bigint FROM {from}"),
    )
    .await
}

/// The first column of every row `sql` answers, a bigint.
async fn column(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Rows of `t`'s current data files deleted by their deletion vectors.
async fn deleted_rows(client: &Client) -> i64 {
    bigints(
        client,
        "SELECT deleted_rows::bigint FROM quarry_system.tables WHERE table_name = 't'",
    )
    .await[0]
}

/// Runs `first_sql` in a transaction on `first` and `second_sql` in one on
/// `second`, both before either commits; commits `first`'s, then returns
/// what committing `second`'s gives.
async fn commit_both(
    first: &Client,
    first_sql: &str,
    second: &Client,
    second_sql: &str,
) -> Result<(), tokio_postgres::Error> {
    first
        .batch_execute(&format!("BEGIN; {first_sql}"))
        .await
        .expect(first_sql);
    second
        .batch_execute(&format!("BEGIN; {second_sql}"))
        .await
        .expect(second_sql);
    first
        .batch_execute("COMMIT")
        .await
        .expect("the first commits");
    second.batch_execute("COMMIT").await
}

/// Bytes the node's chunk store wrote so far.
async fn bytes_written(node: &TestNode) -> f64 {
    node.metric("quarry_storage_chunk_written_bytes_total")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_small_change_writes_a_deletion_vector_instead_of_rewriting_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(&format!(
            "SET use_query_cache = off;
             CREATE TABLE t (id BIGINT, v BIGINT, payload TEXT);
             {MORE_ROWS};"
        ))
        .await
        .expect("table");
    let file_bytes: i64 = bigints(
        &client,
        "SELECT size_bytes::bigint FROM quarry_system.tables WHERE table_name = 't'",
    )
    .await[0];
    let before_delete = instant_between_commits();

    // 600 rows of the one file: a vector, no data file written.
    let written = bytes_written(&node).await;
    let deleted = client
        .execute("DELETE FROM t WHERE id % 1000 = 7", &[])
        .await
        .expect("delete");
    assert_eq!(deleted, 600);
    let vector_bytes = bytes_written(&node).await - written;
    assert_eq!(last_snapshot(&client, "t").await, (0, 0, 600));
    assert_eq!(deleted_rows(&client).await, 600);
    assert!(
        vector_bytes < file_bytes as f64 / 100.0,
        "a 600-row delete wrote {vector_bytes} bytes; the file is {file_bytes}"
    );
    let sum_ids: i64 = (0..600_000).filter(|v| v % 1000 != 7).sum();
    assert_eq!(
        answers(&client, "t").await,
        vec![599_400, sum_ids, 2 * sum_ids]
    );
    // The deleted rows are gone from every way of reading the table.
    assert_eq!(
        bigints(&client, "SELECT count(*)::bigint FROM t WHERE id = 1007").await,
        vec![0]
    );
    assert_eq!(
        column(
            &client,
            "SELECT id FROM t WHERE id BETWEEN 1005 AND 1009 ORDER BY id"
        )
        .await,
        vec![1005, 1006, 1008, 1009]
    );
    // Time travel reads them as they were.
    assert_eq!(
        answers(
            &client,
            &format!("t FOR SYSTEM_TIME AS OF TIMESTAMP '{before_delete}'")
        )
        .await[0],
        600_000
    );

    // UPDATE of 99 rows (id 7 is gone): a vector, and only the changed
    // rows written.
    let written = bytes_written(&node).await;
    let updated = client
        .execute("UPDATE t SET v = -1 WHERE id < 100", &[])
        .await
        .expect("update");
    assert_eq!(updated, 99);
    assert!(bytes_written(&node).await - written < file_bytes as f64 / 100.0);
    let (files_added, files_removed, _) = last_snapshot(&client, "t").await;
    assert_eq!((files_added, files_removed), (1, 0));
    let low: i64 = (0..100).sum::<i64>() - 7;
    assert_eq!(
        answers(&client, "t").await,
        vec![599_400, sum_ids, 2 * (sum_ids - low) - 99]
    );
    // A row deleted twice in one transaction, and the transaction's own
    // reads see its deletes.
    client
        .batch_execute("BEGIN; DELETE FROM t WHERE id = 200000")
        .await
        .expect("begin");
    assert_eq!(
        bigints(
            &client,
            "SELECT count(*)::bigint FROM t WHERE id >= 199999 AND id <= 200001"
        )
        .await,
        vec![2]
    );
    assert_eq!(
        client
            .execute("DELETE FROM t WHERE id >= 200000 AND id <= 200001", &[])
            .await
            .expect("second delete"),
        1
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(answers(&client, "t").await[0], 599_400);

    // Most of the file: rewritten, as before.
    let written = bytes_written(&node).await;
    client
        .execute("DELETE FROM t WHERE id >= 300000", &[])
        .await
        .expect("big delete");
    let (files_added, files_removed, _) = last_snapshot(&client, "t").await;
    assert_eq!(files_removed, 1);
    assert!(files_added >= 1);
    let rewrite_bytes = bytes_written(&node).await - written;
    assert!(
        rewrite_bytes > 10.0 * vector_bytes.max(1.0),
        "the rewrite wrote {rewrite_bytes} bytes, the vector {vector_bytes}"
    );
    let kept: i64 = (0..300_000).filter(|v| v % 1000 != 7).sum();
    // A session asking for copy-on-write rewrites the file for one row.
    client
        .batch_execute("SET dml_mode = 'copy-on-write'; DELETE FROM t WHERE id = 299999")
        .await
        .expect("copy-on-write delete");
    let (files_added, files_removed, _) = last_snapshot(&client, "t").await;
    assert_eq!(files_removed, 1);
    assert!(files_added >= 1);
    assert_eq!(answers(&client, "t").await[0], 299_699);
    client
        .batch_execute("INSERT INTO t VALUES (299999, 599998, 'x'); SET dml_mode = 'merge-on-read'")
        .await
        .expect("put it back");
    let err = client
        .batch_execute("SET dml_mode = 'sometimes'")
        .await
        .expect_err("bad mode");
    assert_eq!(sqlstate(&err), "22023", "{err}");
    assert_eq!(
        answers(&client, "t").await,
        vec![299_700, kept, 2 * (kept - low) - 99]
    );
}

#[tokio::test]
async fn transactions_changing_different_rows_of_one_file_both_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let setup = node.client().await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE t (id BIGINT, v BIGINT, payload TEXT); {ROWS};"
        ))
        .await
        .expect("table");
    let a = node.client().await;
    let b = node.client().await;
    // Different rows: both commit.
    commit_both(
        &a,
        "UPDATE t SET v = v + 1 WHERE id = 1",
        &b,
        "UPDATE t SET v = v + 10 WHERE id = 2",
    )
    .await
    .expect("b commits too");
    assert_eq!(
        column(&setup, "SELECT v FROM t WHERE id IN (1, 2) ORDER BY id").await,
        vec![3, 14]
    );
    // A DELETE and an UPDATE of other rows of the same file.
    commit_both(
        &b,
        "UPDATE t SET v = 0 WHERE id BETWEEN 20 AND 29",
        &a,
        "DELETE FROM t WHERE id BETWEEN 10 AND 19",
    )
    .await
    .expect("the delete commits too");
    assert_eq!(
        bigints(
            &setup,
            "SELECT count(*)::bigint, sum(v)::bigint FROM t WHERE id BETWEEN 10 AND 29"
        )
        .await,
        vec![10, 0]
    );
    // The same row: the later commit fails with 40001 and leaves nothing.
    let err = commit_both(
        &a,
        "UPDATE t SET v = 100 WHERE id = 3",
        &b,
        "UPDATE t SET v = 200 WHERE id = 3",
    )
    .await
    .expect_err("b conflicts");
    assert_eq!(sqlstate(&err), "40001", "{err}");
    assert_eq!(
        bigints(&setup, "SELECT v FROM t WHERE id = 3").await,
        vec![100]
    );
    assert_eq!(
        bigints(&setup, "SELECT count(*)::bigint FROM t").await,
        vec![299_990]
    );
    // A rewrite of the whole file (most rows) after another transaction
    // deleted rows of it conflicts too: it would bring them back.
    let err = commit_both(
        &b,
        "DELETE FROM t WHERE id = 5",
        &a,
        "DELETE FROM t WHERE id >= 100000",
    )
    .await
    .expect_err("the rewrite conflicts");
    assert_eq!(sqlstate(&err), "40001", "{err}");
    assert_eq!(
        bigints(&setup, "SELECT count(*)::bigint FROM t").await,
        vec![299_989]
    );
}

#[tokio::test]
async fn the_compactor_folds_deletion_vectors_without_changing_any_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(
        &dir.path().join("data"),
        &["--compaction-interval-secs", "1"],
    )
    .await;
    let client = node.client().await;
    client
        .batch_execute(&format!(
            "SET use_query_cache = off;
             CREATE TABLE t (id BIGINT, v BIGINT, payload TEXT);
             {ROWS};
             DELETE FROM t WHERE id % 4 = 1;
             UPDATE t SET v = 7 WHERE id % 100 = 0;"
        ))
        .await
        .expect("table");
    let after_changes = instant_between_commits();
    let expected = answers(&client, "t").await;
    assert_eq!(expected[0], 225_000);
    // 25% of the file's rows are deleted: the compactor rewrites it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while deleted_rows(&client).await > 0 {
        assert!(Instant::now() < deadline, "the vector was not folded");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (files_added, files_removed, _) = last_snapshot(&client, "t").await;
    assert!(files_added >= 1 && files_removed >= 1);
    assert_eq!(answers(&client, "t").await, expected);
    assert_eq!(
        answers(
            &client,
            &format!("t FOR SYSTEM_TIME AS OF TIMESTAMP '{after_changes}'")
        )
        .await,
        expected
    );
    // The rows are still changed one at a time afterwards.
    assert_eq!(
        client
            .execute("DELETE FROM t WHERE id = 0", &[])
            .await
            .expect("delete"),
        1
    );
    assert_eq!(answers(&client, "t").await[0], 224_999);
}

#[tokio::test]
async fn merge_deletes_the_target_rows_it_changes_by_deletion_vector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(&format!(
            "SET use_query_cache = off;
             CREATE TABLE t (id BIGINT, v BIGINT, payload TEXT);
             {ROWS};
             CREATE TABLE changes (id BIGINT, v BIGINT);
             INSERT INTO changes VALUES (10, -1), (11, 5), (12, 6), (300000, 7), (300001, 8);"
        ))
        .await
        .expect("tables");
    let file_bytes: i64 = bigints(
        &client,
        "SELECT size_bytes::bigint FROM quarry_system.tables WHERE table_name = 't'",
    )
    .await[0];
    let written = bytes_written(&node).await;
    let affected = client
        .execute(
            "MERGE INTO t USING changes s ON t.id = s.id \
             WHEN MATCHED AND s.v < 0 THEN DELETE \
             WHEN MATCHED THEN UPDATE SET v = s.v \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v, 'new')",
            &[],
        )
        .await
        .expect("merge");
    assert_eq!(affected, 5);
    // One new file (the two updated and two inserted rows), none removed:
    // the three target rows changed are deleted by the file's vector.
    assert_eq!(last_snapshot(&client, "t").await, (1, 0, 3));
    assert_eq!(deleted_rows(&client).await, 3);
    assert!(bytes_written(&node).await - written < file_bytes as f64 / 100.0);
    assert_eq!(
        column(
            &client,
            "SELECT v FROM t WHERE id BETWEEN 9 AND 13 OR id >= 300000 ORDER BY id"
        )
        .await,
        vec![18, 5, 6, 26, 7, 8]
    );
    let sum_ids: i64 = (0..300_000).sum::<i64>() - 10 + 300_000 + 300_001;
    let sum_v: i64 = 2 * (0..300_000).sum::<i64>() - 20 - 22 - 24 + 5 + 6 + 7 + 8;
    assert_eq!(answers(&client, "t").await, vec![300_001, sum_ids, sum_v]);
    // A target row matched twice is still an error, and leaves nothing.
    client
        .batch_execute("INSERT INTO changes VALUES (11, 9)")
        .await
        .expect("duplicate source row");
    let err = client
        .batch_execute(
            "MERGE INTO t USING changes s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET v = s.v",
        )
        .await
        .expect_err("matched twice");
    assert_eq!(sqlstate(&err), "21000", "{err}");
    assert_eq!(answers(&client, "t").await, vec![300_001, sum_ids, sum_v]);
}
