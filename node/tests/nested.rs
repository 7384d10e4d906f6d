//! Nested columns against real `quarry` processes: a read of one struct
//! field reads only that field's Parquet leaf, arrays, structs and JSON go
//! through COPY in PostgreSQL's text forms, `quarry load` makes nested
//! columns of NDJSON, and nested values cross a three-node shuffle.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use bytes::Bytes;
use futures::SinkExt;
use support::node::{TestNode, sqlstate};
use tokio_postgres::Client;

/// Bytes the node's chunk store read (its counter on /metrics).
async fn chunk_bytes_read(node: &TestNode) -> f64 {
    node.metric("quarry_storage_chunk_read_bytes_total")
        .await
        .unwrap_or(0.0)
}

async fn copy_out(client: &Client, sql: &str) -> String {
    let stream = client.copy_out(sql).await.expect("copy out");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&chunk.expect("copy data"));
    }
    String::from_utf8(out).expect("utf-8")
}

#[tokio::test]
async fn reading_one_struct_field_reads_only_its_leaf() {
    // Without the data cache every scan reads the chunk store.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("data"), &["--data-cache-mb", "0"]).await;
    let client = node.client().await;
    // 200,000 rows in one INSERT go to data files, not the ingest buffer;
    // `a` is a small integer, `b` and `c` 32 characters of hex each.
    client
        .batch_execute(
            "SET use_query_cache = off;
             CREATE TABLE events (id BIGINT, s STRUCT<a INT64, b STRING, c STRING>);
             INSERT INTO events SELECT v, STRUCT(v % 100 AS a, md5(v::text) AS b, md5((v + 1)::text) AS c)
               FROM generate_series(1, 200000) AS g(v);",
        )
        .await
        .expect("table");
    let files: i64 = client
        .query_one(
            "SELECT data_files::bigint FROM quarry_system.tables WHERE table_name = 'events'",
            &[],
        )
        .await
        .expect("files")
        .get(0);
    assert!(files >= 1, "the rows are in data files");

    let before = chunk_bytes_read(&node).await;
    let sum: i64 = client
        .query_one("SELECT sum(s.a)::bigint FROM events", &[])
        .await
        .expect("one field")
        .get(0);
    let one_field = chunk_bytes_read(&node).await - before;
    assert_eq!(sum, (1..=200_000_i64).map(|v| v % 100).sum::<i64>());

    let before = chunk_bytes_read(&node).await;
    let total: i64 = client
        .query_one(
            "SELECT sum(s.a + length(s.b) + length(s.c))::bigint FROM events",
            &[],
        )
        .await
        .expect("all fields")
        .get(0);
    let all_fields = chunk_bytes_read(&node).await - before;
    assert_eq!(total, sum + 200_000 * 64);

    eprintln!("chunk-store bytes read: s.a {one_field}, s.a + s.b + s.c {all_fields}");
    // The two hex leaves are ~12.8 MB before compression; `a` is a
    // dictionary of 100 values.
    assert!(one_field > 0.0, "the scan read the chunk store");
    assert!(
        one_field * 10.0 < all_fields,
        "s.a read {one_field} bytes, all of s {all_fields}"
    );
}

#[tokio::test]
async fn arrays_structs_and_json_copy_in_and_out_as_postgresql_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE docs (id BIGINT, tags TEXT[], scores BIGINT[], doc JSONB)")
        .await
        .expect("table");
    let sink = client
        .copy_in::<_, Bytes>("COPY docs FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(
        b"1\t{a,\"b c\",NULL,\"q\\\\\"u\"}\t{1,2}\t{\"k\": [1, 2]}\n2\t{}\t\\N\t[]\n",
    ))
    .await
    .expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);
    let row = client
        .query_one(
            "SELECT tags[2], tags[4], cardinality(tags)::int, scores[2], doc -> 'k' ->> 1 FROM docs WHERE id = 1",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "b c");
    assert_eq!(row.get::<_, String>(1), "q\"u");
    assert_eq!(row.get::<_, i32>(2), 4);
    assert_eq!(row.get::<_, i64>(3), 2);
    assert_eq!(row.get::<_, String>(4), "2");

    // Out as they came in (array_out's quoting, COPY's backslash escape).
    assert_eq!(
        copy_out(&client, "COPY (SELECT * FROM docs ORDER BY id) TO STDOUT").await,
        "1\t{a,\"b c\",NULL,\"q\\\\\"u\"}\t{1,2}\t{\"k\": [1, 2]}\n2\t{}\t\\N\t[]\n"
    );
    assert_eq!(
        copy_out(
            &client,
            "COPY (SELECT scores, tags FROM docs ORDER BY id) TO STDOUT WITH (FORMAT csv)"
        )
        .await,
        "\"{1,2}\",\"{a,\"\"b c\"\",NULL,\"\"q\\\"\"u\"\"}\"\n,{}\n"
    );
    // Structs as record_out writes them: a NULL field empty, quoted where
    // a field holds a delimiter, a quote doubled.
    assert_eq!(
        copy_out(
            &client,
            "COPY (SELECT STRUCT(1 AS x, 'a b' AS y, NULL AS z, 'say \"hi\"' AS w), \
             [STRUCT(2 AS k, 'v' AS l)], STRUCT(['p', 'q r'] AS list)) TO STDOUT"
        )
        .await,
        "(1,\"a b\",,\"say \"\"hi\"\"\")\t{\"(2,v)\"}\t(\"{p,\"\"q r\"\"}\")\n"
    );

    // A malformed array fails the COPY with the line and column, and
    // nothing of it is kept.
    let sink = client
        .copy_in::<_, Bytes>("COPY docs FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"3\t{x}\t{1}\t{}\n4\t{y\t{2}\t{}\n"))
        .await
        .expect("send");
    let e = sink.finish().await.expect_err("malformed array");
    assert_eq!(sqlstate(&e), "22P02");
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
    assert!(detail.contains("line 2, column tags"), "{detail}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM docs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_load_creates_nested_columns_from_ndjson_objects_and_arrays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.ndjson");
    let lines: String = (0..500)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"actor\": {{\"login\": \"user{}\", \"site_admin\": {}}}, \
                 \"labels\": [\"l{}\", \"all\"], \"commits\": [{{\"sha\": \"s{i}\", \"size\": {}}}]}}\n",
                i % 7,
                i % 2 == 0,
                i % 3,
                i % 5
            )
        })
        .collect();
    std::fs::write(&events, lines).expect("ndjson");
    let node = TestNode::start(&dir.path().join("data")).await;
    let url = format!("http://{}:{}", node.ip, node.http_port);
    let pg = format!("{}:{}", node.ip, node.pg_port);
    let done = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "load",
            "--table",
            "public.gh",
            "--create",
            "--url",
            &url,
            "--pg",
            &pg,
        ])
        .arg(&events)
        .output()
        .expect("quarry load runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let client = node.client().await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT actor.login), sum(cardinality(labels))::bigint FROM gh",
            &[],
        )
        .await
        .expect("counts");
    assert_eq!(row.get::<_, i64>(0), 500);
    assert_eq!(row.get::<_, i64>(1), 7);
    assert_eq!(row.get::<_, i64>(2), 1000);
    let admins: i64 = client
        .query_one("SELECT count(*) FROM gh WHERE actor.site_admin", &[])
        .await
        .expect("admins")
        .get(0);
    assert_eq!(admins, 250);
    let size: i64 = client
        .query_one(
            "SELECT sum(c.size)::bigint FROM gh AS g, UNNEST(g.commits) AS c WHERE 'l1' IN UNNEST(g.labels)",
            &[],
        )
        .await
        .expect("unnest")
        .get(0);
    let expected: i64 = (0..500).filter(|i| i % 3 == 1).map(|i| i % 5).sum();
    assert_eq!(size, expected);
}

/// The rows of `sql` as text, in order.
async fn texts(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_values_cross_a_shuffle_on_three_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = support::cluster::start_cluster(dir.path(), 3, &["--distribute-min-mb", "1"]).await;
    let client = nodes[1].client().await;
    client
        .batch_execute("CREATE TABLE ev (id BIGINT, s STRUCT<k INT64, name STRING>, tags ARRAY<STRING>, doc JSON)")
        .await
        .expect("table");
    // Three INSERTs of 150,000 rows: data files, placed across the nodes.
    for part in 0..3 {
        client
            .batch_execute(&format!(
                "INSERT INTO ev SELECT v, STRUCT(v % 1000 AS k, 'n' || v AS name), \
                 ['t' || (v % 3), md5(v::text)], '{{\"v\": ' || v || '}}' \
                 FROM generate_series({}, {}) AS g(v)",
                part * 150_000,
                part * 150_000 + 149_999
            ))
            .await
            .expect("insert");
    }
    // A self-join on the struct's key moves structs, arrays and JSON
    // through a hash shuffle; the answer equals the one node's.
    let sql = "SELECT a.s.k, count(*), min(b.s.name), max(b.tags[1]), max(cardinality(a.tags)), \
               sum((b.doc ->> 'v')::bigint) \
               FROM ev AS a JOIN ev AS b ON a.id = b.id WHERE a.s.k < 5 GROUP BY a.s.k ORDER BY 1";
    client
        .batch_execute("SET distsql = on")
        .await
        .expect("distsql on");
    let plan = texts(&client, &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .join("\n");
    assert!(plan.contains("shuffle by hash"), "{plan}");
    let distributed = texts(&client, sql).await;
    client
        .batch_execute("SET distsql = off")
        .await
        .expect("distsql off");
    let local = texts(&client, sql).await;
    assert_eq!(distributed, local);
    assert_eq!(distributed.len(), 5);
    let sum: i64 = (0..450_000_i64).filter(|v| v % 1000 == 0).sum();
    assert_eq!(distributed[0], format!("0|450|n0|t2|2|{sum}"));
}

#[tokio::test]
async fn a_struct_in_a_text_result_writes_a_null_field_empty_and_an_empty_string_quoted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    // record_out: NULL is nothing between the commas, '' is "".
    assert_eq!(
        texts(
            &client,
            "SELECT STRUCT(1 AS x, NULL AS z, '' AS e, 'a \"b\"' AS q), ['a', NULL]"
        )
        .await,
        ["(1,,\"\",\"a \"\"b\"\"\")|{a,NULL}"]
    );
}
