//! Partitioned tables against a real `quarry` process: each data file holds
//! one partition, scans read only the partitions a filter can match, a
//! whole partition is deleted without rewriting a file, old partitions
//! expire, and the compactor keeps files within their partitions.

#[path = "support/node.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{TestNode, bigints, last_snapshot};
use tokio_postgres::Client;

/// 30 days of 2,000 rows each, the days interleaved in one INSERT (so a
/// table that is not partitioned holds them all in one file).
const ROWS: &str = "SELECT v AS id, DATE '2026-01-01' + (v % 30)::int AS day, repeat('x', 40) || v AS payload \
                    FROM generate_series(0, 59999) AS g(v)";

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Bytes of data files the job that ran `sql` (its exact text) read,
/// from the job history (its record lands within moments of the end).
async fn bytes_processed(client: &Client, sql: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = client
            .query(
                "SELECT total_bytes_processed::bigint FROM quarry_system.jobs \
                 WHERE query = $1 AND state = 'DONE' ORDER BY creation_time DESC LIMIT 1",
                &[&sql],
            )
            .await
            .expect("jobs");
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "no job record for {sql}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_filter_on_the_partitioning_column_reads_only_its_partitions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(&format!(
            "SET use_query_cache = off;
             CREATE TABLE flat (id BIGINT, day DATE, payload TEXT);
             CREATE TABLE events (id BIGINT, day DATE, payload TEXT) PARTITION BY day;
             INSERT INTO flat {ROWS};
             INSERT INTO events {ROWS};"
        ))
        .await
        .expect("tables");
    // One file per day.
    let partitions = client
        .query(
            "SELECT partition_id, total_rows::bigint, data_files::bigint, total_bytes::bigint \
             FROM quarry_system.partitions WHERE table_name = 'events' ORDER BY partition_id",
            &[],
        )
        .await
        .expect("partitions");
    assert_eq!(partitions.len(), 30);
    assert_eq!(partitions[0].get::<_, String>(0), "20260101");
    assert_eq!(partitions[29].get::<_, String>(0), "20260130");
    for p in &partitions {
        assert_eq!(p.get::<_, i64>(1), 2000);
        assert_eq!(p.get::<_, i64>(2), 1);
    }
    let jan_5_bytes: i64 = partitions[4].get(3);
    let all_bytes: i64 = partitions.iter().map(|p| p.get::<_, i64>(3)).sum();

    let day = "SELECT count(*), sum(id)::bigint FROM events WHERE day = DATE '2026-01-05'";
    let flat_day = "SELECT count(*), sum(id)::bigint FROM flat WHERE day = DATE '2026-01-05'";
    let answer = client.query_one(day, &[]).await.expect("day");
    let flat_answer = client.query_one(flat_day, &[]).await.expect("flat day");
    assert_eq!(answer.get::<_, i64>(0), 2000);
    assert_eq!(answer.get::<_, i64>(1), flat_answer.get::<_, i64>(1));
    assert_eq!(bytes_processed(&client, day).await, jan_5_bytes);
    let flat_bytes = bytes_processed(&client, flat_day).await;
    assert!(
        flat_bytes > 10 * jan_5_bytes,
        "the table that is not partitioned reads its one file: {flat_bytes} vs {jan_5_bytes}"
    );

    // A range reads its days; a filter on another column reads them all.
    let week =
        "SELECT count(*) FROM events WHERE day BETWEEN DATE '2026-01-10' AND DATE '2026-01-16'";
    assert_eq!(count(&client, week).await, 14_000);
    let week_bytes: i64 = partitions[9..16].iter().map(|p| p.get::<_, i64>(3)).sum();
    assert_eq!(bytes_processed(&client, week).await, week_bytes);
    let by_id = "SELECT count(*) FROM events WHERE id % 7 = 0";
    assert_eq!(count(&client, by_id).await, 8572);
    assert_eq!(bytes_processed(&client, by_id).await, all_bytes);
}

#[tokio::test]
async fn deleting_whole_partitions_rewrites_no_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE events (id BIGINT, day DATE, payload TEXT) PARTITION BY day;
             INSERT INTO events {ROWS};"
        ))
        .await
        .expect("table");
    let whole = "DELETE FROM events WHERE day >= DATE '2026-01-25'";
    let deleted = client.execute(whole, &[]).await.expect("delete");
    assert_eq!(deleted, 12_000);
    assert_eq!(
        bytes_processed(&client, whole).await,
        0,
        "whole partitions are deleted from metadata, unread"
    );
    assert_eq!(
        last_snapshot(&client, "events").await,
        (0, 6, 12_000),
        "six partitions' files removed, none written"
    );
    // A DELETE of part of a partition reads its file and deletes the rows
    // by the file's deletion vector (docs/DATA_LAYOUT.md): no file written.
    let partial = "DELETE FROM events WHERE day = DATE '2026-01-03' AND id < 1000";
    let deleted = client.execute(partial, &[]).await.expect("partial delete");
    assert_eq!(deleted, 34);
    assert!(bytes_processed(&client, partial).await > 0);
    assert_eq!(last_snapshot(&client, "events").await, (0, 0, 34));
    assert_eq!(
        count(&client, "SELECT count(*) FROM events").await,
        60_000 - 12_000 - 34
    );
    assert_eq!(
        bigints(
            &client,
            "SELECT count(*) FROM events WHERE day >= DATE '2026-01-25' OR (day = DATE '2026-01-03' AND id < 1000)"
        )
        .await,
        vec![0]
    );
}

#[tokio::test]
async fn old_partitions_expire_and_compaction_keeps_files_within_partitions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(
        &dir.path().join("data"),
        &[
            "--compaction-interval-secs",
            "1",
            "--buffer-max-age-secs",
            "1",
        ],
    )
    .await;
    let client = node.client().await;
    // Days from 2020 expire at once (a 30-day window); today's stay.
    client
        .batch_execute(
            "CREATE TABLE readings (at TIMESTAMPTZ, sensor BIGINT, value DOUBLE PRECISION)
               PARTITION BY DATE_TRUNC(at, DAY) WITH (partition_expiration_days = 30);
             CREATE TABLE hourly (at TIMESTAMP, sensor BIGINT) PARTITION BY DATE_TRUNC(at, HOUR);",
        )
        .await
        .expect("tables");
    // Many small appends, each spanning two hours.
    for i in 0..12 {
        client
            .batch_execute(&format!(
                "INSERT INTO readings SELECT TIMESTAMPTZ '2020-03-0{d} 12:00:00+00', v, v::float8 AS value FROM generate_series(1, 10) AS g(v);
                 INSERT INTO readings SELECT now(), v, v::float8 AS value FROM generate_series(1, 10) AS g(v);
                 INSERT INTO hourly SELECT CASE WHEN v % 2 = 0 THEN TIMESTAMP '2026-05-01 10:30:00' ELSE TIMESTAMP '2026-05-01 11:30:00' END, {i} FROM generate_series(1, 10) AS g(v);",
                d = 1 + i % 3
            ))
            .await
            .expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let old = count(
            &client,
            "SELECT count(*) FROM readings WHERE at < TIMESTAMPTZ '2021-01-01 00:00:00+00'",
        )
        .await;
        let files = count(
            &client,
            "SELECT coalesce(sum(data_files), 0)::bigint FROM quarry_system.partitions WHERE table_name = 'hourly'",
        )
        .await;
        if old == 0 && files == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after a minute: {old} expired rows left, hourly has {files} files"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 120);
    let hourly = client
        .query(
            "SELECT partition_id, total_rows::bigint FROM quarry_system.partitions \
             WHERE table_name = 'hourly' ORDER BY partition_id",
            &[],
        )
        .await
        .expect("partitions");
    let hourly: Vec<(String, i64)> = hourly.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        hourly,
        vec![("2026050110".to_owned(), 60), ("2026050111".to_owned(), 60)]
    );
    assert!(
        node.log()
            .contains("removed the files of expired partitions")
    );
}
