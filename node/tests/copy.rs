//! COPY FROM STDIN / TO STDOUT against a real `quarry` process.

#[path = "support/node.rs"]
mod support;

use bytes::Bytes;
use futures::SinkExt;
use support::{TestNode, sqlstate};

async fn node_with_table() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    node.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id BIGINT NOT NULL, name TEXT, price NUMERIC(10,2), added DATE)",
        )
        .await
        .expect("create");
    (dir, node)
}

fn csv_rows(range: std::ops::Range<u64>) -> String {
    range
        .map(|i| {
            format!(
                "{i},\"item, number {i}\",{}.{:02},2026-01-{:02}\n",
                i % 1000,
                i % 100,
                i % 28 + 1
            )
        })
        .collect()
}

/// Rows per data file (exec's `FILE_ROWS_MAX`): a COPY of more writes a file
/// before it ends.
const FILE_ROWS: u64 = 1024 * 1024;

/// Waits (bounded) until a COPY in progress has written a data file, so the
/// test shows that a failed COPY deletes what it wrote.
async fn wait_for_a_data_file(node: &TestNode) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks")
        .count()
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the COPY wrote no data file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn copy_of_100k_csv_rows_commits_them_all() {
    let (_dir, node) = node_with_table().await;
    let client = node.client().await;
    let sink = client
        .copy_in::<_, Bytes>("COPY items FROM STDIN WITH (FORMAT csv)")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    for start in (0..100_000).step_by(10_000) {
        sink.send(Bytes::from(csv_rows(start..start + 10_000)))
            .await
            .expect("send");
    }
    let copied = sink.finish().await.expect("finish");
    assert_eq!(copied, 100_000);
    assert_eq!(count(&client).await, 100_000);
    let row = client
        .query_one(
            "SELECT name, CAST(price AS TEXT), CAST(added AS TEXT) FROM items WHERE id = 12345",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "item, number 12345");
    assert_eq!(row.get::<_, String>(1), "345.45");
    assert_eq!(row.get::<_, String>(2), "2026-01-26");
}

#[tokio::test]
async fn copy_text_format_with_nulls_and_a_column_list() {
    let (_dir, node) = node_with_table().await;
    let client = node.client().await;
    let sink = client
        .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\ttab\\there\n2\t\\N\n"))
        .await
        .expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);
    let rows = client
        .query(
            "SELECT id, name, CAST(price AS TEXT) FROM items ORDER BY id",
            &[],
        )
        .await
        .expect("select");
    assert_eq!(
        rows[0].get::<_, Option<String>>(1).as_deref(),
        Some("tab\there")
    );
    assert_eq!(rows[1].get::<_, Option<String>>(1), None);
    assert!(rows.iter().all(|r| r.get::<_, Option<String>>(2).is_none()));
}

#[tokio::test]
async fn a_malformed_csv_line_is_named_and_nothing_commits() {
    let (_dir, node) = node_with_table().await;
    let client = node.client().await;
    let sink = client
        .copy_in::<_, Bytes>("COPY items FROM STDIN WITH (FORMAT csv)")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    // More good rows than one data file holds, so a file is written before the
    // bad number on line GOOD + 1; the failed COPY must delete it.
    const GOOD: u64 = FILE_ROWS + 1_000;
    for start in (0..GOOD).step_by(100_000) {
        sink.send(Bytes::from(csv_rows(start..(start + 100_000).min(GOOD))))
            .await
            .expect("send");
    }
    wait_for_a_data_file(&node).await;
    sink.send(Bytes::from_static(b"oops,\"x\",1.00,2026-01-01\n"))
        .await
        .expect("send");
    sink.send(Bytes::from(csv_rows(GOOD..GOOD + 10)))
        .await
        .expect("send");
    let e = sink.finish().await.expect_err("bad line");
    assert_eq!(sqlstate(&e), "22P02");
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains(&format!("line {}", GOOD + 1)), "{detail}");
    assert!(detail.contains("column id"), "{detail}");
    assert_eq!(count(&client).await, 0);
    let chunks = std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks")
        .count();
    assert_eq!(chunks, 0, "the failed COPY left data files behind");

    // Wrong number of fields.
    let sink = client
        .copy_in::<_, Bytes>("COPY items FROM STDIN WITH (FORMAT csv)")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1,a,1.00,2026-01-01\n2,b\n"))
        .await
        .expect("send");
    let e = sink.finish().await.expect_err("short line");
    assert_eq!(sqlstate(&e), "22P04");
    assert_eq!(count(&client).await, 0);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_copy_leaves_nothing() {
    let (_dir, node) = node_with_table().await;
    {
        let client = node.client().await;
        let sink = client
            .copy_in::<_, Bytes>("COPY items FROM STDIN WITH (FORMAT csv)")
            .await
            .expect("copy in");
        futures::pin_mut!(sink);
        // More rows than one data file holds, so a file is on disk before the
        // client goes away.
        for start in (0..FILE_ROWS + 1_000).step_by(100_000) {
            sink.send(Bytes::from(csv_rows(start..start + 100_000)))
                .await
                .expect("send");
        }
        wait_for_a_data_file(&node).await;
        // Dropping the sink unfinished and the client closes the connection
        // without CopyDone.
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let client = node.client().await;
    assert_eq!(count(&client).await, 0);
    // The abandoned copy's data files are deleted once its connection is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let chunks = std::fs::read_dir(node.data_dir.join("chunks"))
            .expect("chunks")
            .count();
        if chunks == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{chunks} chunks of an abandoned COPY remain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn copy_to_stdout_round_trips_csv() {
    let (_dir, node) = node_with_table().await;
    let client = node.client().await;
    client
        .batch_execute("INSERT INTO items VALUES (1, 'a \"quoted\", name', 1.50, '2026-03-04'), (2, NULL, NULL, NULL)")
        .await
        .expect("insert");
    let stream = client
        .copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)")
        .await
        .expect("copy out");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        "id,name,price,added\n1,\"a \"\"quoted\"\", name\",1.50,2026-03-04\n2,,,\n"
    );
}

#[tokio::test]
async fn copy_of_a_table_to_stdout_takes_its_column_list() {
    let (_dir, node) = node_with_table().await;
    let client = node.client().await;
    client
        .batch_execute("INSERT INTO items VALUES (1, 'a', 1.50, '2026-03-04')")
        .await
        .expect("insert");
    let copy_out = |sql: &'static str| {
        let client = &client;
        async move {
            let stream = client.copy_out(sql).await?;
            futures::pin_mut!(stream);
            let mut out = Vec::new();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                out.extend_from_slice(&chunk?);
            }
            Ok::<_, tokio_postgres::Error>(String::from_utf8(out).expect("utf-8"))
        }
    };
    assert_eq!(
        copy_out("COPY items TO STDOUT").await.expect("whole table"),
        "1\ta\t1.50\t2026-03-04\n"
    );
    assert_eq!(
        copy_out("COPY public.items (added, ID) TO STDOUT (FORMAT csv)")
            .await
            .expect("two columns, in the list's order"),
        "2026-03-04,1\n"
    );
    for (sql, state) in [
        ("COPY items (nope) TO STDOUT", "42703"),
        ("COPY missing TO STDOUT", "42P01"),
    ] {
        let e = copy_out(sql).await.expect_err(sql);
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some(state),
            "{sql}: {e:?}"
        );
    }
}
