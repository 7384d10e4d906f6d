//! Nested columns against real `quarry` processes: a read of one struct
//! field reads only that field's Parquet leaf, a filter on one prunes data
//! files by its zone maps, arrays, structs and JSON go
//! through COPY in PostgreSQL's text forms, `quarry load` makes nested
//! columns of NDJSON, the streaming API takes nested JSON rows, and nested
//! values cross a three-node shuffle.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use bytes::Bytes;
use futures::SinkExt;
use support::node::{TestNode, files_scanned, http_request, sqlstate, texts};
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
async fn filters_on_struct_fields_prune_data_files_by_the_fields_zone_maps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    // Three data files: ids 1-1000 in January, 1001-2000 in February,
    // 2001-3000 in March with every tenth struct NULL.
    client
        .batch_execute(
            "SET use_query_cache = off;
             CREATE TABLE events (id BIGINT, s STRUCT<a INT64, b STRUCT<day DATE, tag STRING>, tags ARRAY<STRING>>);
             INSERT INTO events SELECT v, STRUCT(v AS a, STRUCT(DATE '2026-01-15' AS day, 'x' AS tag) AS b, ['t'] AS tags)
               FROM generate_series(1, 1000) AS g(v);
             INSERT INTO events SELECT v, STRUCT(v AS a, STRUCT(DATE '2026-02-15' AS day, 'y' AS tag) AS b, ['t'] AS tags)
               FROM generate_series(1001, 2000) AS g(v);
             INSERT INTO events SELECT v, CASE WHEN v % 10 = 0 THEN NULL
                 ELSE STRUCT(v AS a, STRUCT(DATE '2026-03-15' AS day, 'z' AS tag) AS b, ['t'] AS tags) END
               FROM generate_series(2001, 3000) AS g(v);",
        )
        .await
        .expect("table");
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            let n: i64 = client.query_one(sql, &[]).await.expect(sql).get(0);
            n
        }
    };
    assert_eq!(files_scanned(&client, "SELECT id FROM events").await, 3);

    // A leaf under one struct, under two, a comparison each way, and IS NULL
    // (a NULL struct makes its leaves NULL).
    let cases: [(&str, usize, i64); 5] = [
        ("SELECT count(*) FROM events WHERE s.a > 2500", 1, 450),
        ("SELECT count(*) FROM events WHERE s.a <= 1000", 1, 1000),
        (
            "SELECT count(*) FROM events WHERE s.b.day = DATE '2026-02-15'",
            1,
            1000,
        ),
        (
            "SELECT count(*) FROM events WHERE s.b.tag IN ('x', 'z')",
            2,
            1900,
        ),
        ("SELECT count(*) FROM events WHERE s.a IS NULL", 1, 100),
    ];
    for (sql, files, rows) in cases {
        assert_eq!(files_scanned(&client, sql).await, files, "{sql}");
        assert_eq!(count(sql).await, rows, "{sql}");
    }
    // A field under an array has no zone map: every file is read.
    let through_array = "SELECT count(*) FROM events WHERE s.tags[1] = 'u'";
    assert_eq!(files_scanned(&client, through_array).await, 3);
    assert_eq!(count(through_array).await, 0);

    // Files written before a field was added have no zone map for it; a
    // filter on it reads them and finds the field NULL there.
    client
        .batch_execute(
            "ALTER TABLE events ALTER COLUMN s SET DATA TYPE
               STRUCT<a INT64, b STRUCT<day DATE, tag STRING>, tags ARRAY<STRING>, c INT64>;
             INSERT INTO events SELECT v, STRUCT(v AS a, STRUCT(DATE '2026-04-15' AS day, 'w' AS tag) AS b,
                 ['t'] AS tags, 7 AS c)
               FROM generate_series(3001, 4000) AS g(v);",
        )
        .await
        .expect("field added");
    let added = "SELECT count(*) FROM events WHERE s.c IS NULL";
    assert_eq!(files_scanned(&client, added).await, 3);
    assert_eq!(count(added).await, 3000);
    let added = "SELECT count(*) FROM events WHERE s.c = 7";
    assert_eq!(count(added).await, 1000);
    let old = "SELECT count(*) FROM events WHERE s.a > 3500";
    assert_eq!(files_scanned(&client, old).await, 1);
    assert_eq!(count(old).await, 500);
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

/// Runs `quarry load` of `file` into `table` of `node` with `flags`
/// (`--create`), asserting that it succeeds.
fn quarry_load(node: &TestNode, table: &str, flags: &[&str], file: &std::path::Path) {
    let done = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["load", "--table", table])
        .args(flags)
        .arg("--url")
        .arg(format!("http://{}:{}", node.ip, node.http_port))
        .arg("--pg")
        .arg(format!("{}:{}", node.ip, node.pg_port))
        .arg(file)
        .output()
        .expect("quarry load runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
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
    quarry_load(&node, "public.gh", &["--create"], &events);
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

/// Writes `lines` (NDJSON) as a Parquet file at `path`, in the nested
/// schema arrow-json infers from them (LIST and groups).
fn nested_parquet(path: &std::path::Path, lines: &str) {
    use datafusion::arrow::json::reader::{ReaderBuilder, infer_json_schema};
    let (schema, _) =
        infer_json_schema(std::io::Cursor::new(lines.as_bytes()), None).expect("schema");
    let schema = std::sync::Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(lines.as_bytes()))
        .expect("reader");
    let file = std::fs::File::create(path).expect("file");
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    for batch in reader {
        writer.write(&batch.expect("batch")).expect("write");
    }
    writer.close().expect("close");
}

#[tokio::test]
async fn nested_parquet_and_ndjson_files_load_into_nested_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: String = (0..400)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"actor\": {{\"login\": \"u{}\", \"org\": {{\"id\": {}}}}}, \
                 \"commits\": [{{\"sha\": \"a{i}\", \"files\": [\"f{}\", \"g\"]}}, {{\"sha\": \"b{i}\", \"files\": []}}]}}\n",
                i % 9,
                i % 4,
                i % 3
            )
        })
        .collect();
    let parquet = dir.path().join("events.parquet");
    nested_parquet(&parquet, &lines);
    let ndjson = dir.path().join("events.json");
    std::fs::write(&ndjson, &lines).expect("ndjson");
    let node = TestNode::start(&dir.path().join("data")).await;
    quarry_load(&node, "public.from_load", &["--create"], &parquet);
    let client = node.client().await;
    let declared = "(id bigint, actor STRUCT<login STRING, org STRUCT<id INT64>>, \
                    commits ARRAY<STRUCT<sha STRING, files ARRAY<STRING>>>)";
    client
        .batch_execute(&format!(
            "CREATE TABLE from_parquet {declared}; CREATE TABLE from_json {declared}; \
             CREATE TABLE as_documents (id bigint, actor JSON, commits JSON)"
        ))
        .await
        .expect("create");
    for (table, format, path) in [
        ("from_parquet", "PARQUET", &parquet),
        ("from_json", "JSON", &ndjson),
        ("as_documents", "JSON", &ndjson),
    ] {
        let loaded = client
            .execute(
                &format!(
                    "LOAD DATA INTO {table} FROM FILES (format = '{format}', uris = ['{}'])",
                    path.display()
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{format}: {e:?}"));
        assert_eq!(loaded, 400);
    }
    // Two files per row (its second commit has none), so each row's
    // org id is counted twice.
    let expected_files: usize = 400 * 2;
    let expected_org: i64 = (0..400).map(|i| i % 4).sum();
    for table in ["from_load", "from_parquet", "from_json"] {
        assert_eq!(
            texts(
                &client,
                &format!(
                    "SELECT count(DISTINCT e.actor.login), sum(e.actor.org.id), count(f) \
                     FROM {table} AS e, UNNEST(e.commits) AS c, UNNEST(c.files) AS f"
                )
            )
            .await,
            [format!("9|{}|{expected_files}", expected_org * 2)],
            "{table}"
        );
    }
    // Objects and arrays loaded into JSON columns are their documents.
    assert_eq!(
        texts(
            &client,
            "SELECT count(DISTINCT actor ->> 'login'), sum((actor #>> '{org,id}')::bigint), \
             max(commits -> 1 ->> 'sha'), max(jsonb_array_length(commits -> 0 -> 'files')) \
             FROM as_documents"
        )
        .await,
        [format!("9|{expected_org}|b99|2")]
    );
}

/// POSTs NDJSON `body` to channel `channel` of `table` at `offset`: the
/// status and the answer.
async fn append_ndjson(node: &TestNode, table: &str, offset: u64, body: &str) -> (u16, String) {
    let url = format!(
        "http://{}:{}/v1/tables/{table}/channels/c/rows?offset={offset}",
        node.ip, node.http_port
    );
    http_request("POST", &url, "application/x-ndjson", body.as_bytes()).await
}

#[tokio::test]
async fn streamed_ndjson_rows_fill_array_struct_and_json_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigint, tags text[], actor STRUCT<login STRING, id INT64>, \
             commits ARRAY<STRUCT<sha STRING, files ARRAY<STRING>>>, payload JSON)",
        )
        .await
        .expect("create");
    let rows = concat!(
        r#"{"id": 1, "tags": ["a", "b"], "actor": {"login": "ann", "id": "7"}, "#,
        r#""commits": [{"sha": "s1", "files": ["x.rs", "y.rs"]}, {"sha": "s2", "files": []}], "#,
        r#""payload": {"action": "opened", "n": [1, 2]}}"#,
        "\n",
        r#"{"id": 2, "tags": null, "actor": {"login": "bo"}, "commits": [], "payload": [true]}"#,
        "\n",
        r#"{"id": 3}"#,
        "\n",
    );
    let (status, answer) = append_ndjson(&node, "ev", 0, rows).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        texts(
            &client,
            "SELECT id, array_to_string(tags, ','), actor.login, actor.id, cardinality(commits), \
             payload->>'action', payload::text FROM ev ORDER BY id"
        )
        .await,
        [
            r#"1|a,b|ann|7|2|opened|{"action":"opened","n":[1,2]}"#,
            "2|NULL|bo|NULL|0|NULL|[true]",
            "3|NULL|NULL|NULL|NULL|NULL|NULL",
        ]
    );
    assert_eq!(
        texts(
            &client,
            "SELECT c.sha, f FROM ev AS e, UNNEST(e.commits) AS c, UNNEST(c.files) AS f ORDER BY f"
        )
        .await,
        ["s1|x.rs", "s1|y.rs"]
    );
    // A value that does not fit its column fails the request, naming its
    // row, and writes nothing.
    for (bad, problem) in [
        (
            r#"{"id": 9, "actor": {"login": "x", "nope": 1}}"#,
            "row 2, column actor",
        ),
        (r#"{"id": 9, "tags": [[1]]}"#, "row 2, column tags"),
        (
            r#"{"id": 9, "commits": {"sha": "s"}}"#,
            "row 2, column commits",
        ),
    ] {
        let body = format!("{{\"id\": 8}}\n{bad}\n");
        let (status, answer) = append_ndjson(&node, "ev", 3, &body).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer.contains("22P02") && answer.contains(problem),
            "{bad}: {answer}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM ev", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn quarry_load_writes_ndjson_objects_into_a_json_column_as_documents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.ndjson");
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"payload\": {{\"action\": \"{}\", \"pr\": {{\"number\": {i}, \"labels\": [\"l{}\"]}}{}}}}}\n",
                if i % 3 == 0 { "opened" } else { "closed" },
                i % 4,
                if i % 5 == 0 { ", \"extra\": 1" } else { "" }
            )
        })
        .collect();
    std::fs::write(&events, lines).expect("ndjson");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE gh (id bigint, payload JSON)")
        .await
        .expect("create");
    quarry_load(&node, "public.gh", &[], &events);
    assert_eq!(
        texts(
            &client,
            "SELECT count(*), sum((payload #>> '{pr,number}')::bigint) FROM gh \
             WHERE JSON_VALUE(payload, '$.action') = 'opened'"
        )
        .await,
        [format!(
            "100|{}",
            (0..300).filter(|i| i % 3 == 0).sum::<i64>()
        )]
    );
    assert_eq!(
        texts(
            &client,
            "SELECT payload::text FROM gh WHERE id IN (5, 6) ORDER BY id"
        )
        .await,
        [
            r#"{"action":"closed","pr":{"number":5,"labels":["l1"]},"extra":1}"#,
            // The reader's struct has `extra` for every row; the document
            // of an object without it has no `extra` key.
            r#"{"action":"opened","pr":{"number":6,"labels":["l2"]}}"#,
        ]
    );
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

    // A small table of nested values joined to ev: its side is built whole
    // (CollectLeft) in each task while ev's scan divides among the three
    // nodes, so its structs and arrays reach every node.
    client
        .batch_execute(
            "CREATE TABLE dim (k BIGINT, info STRUCT<label STRING, rank INT64>, aliases ARRAY<STRING>); \
             INSERT INTO dim SELECT v, STRUCT('label' || v AS label, v % 7 AS rank), \
             ['a' || v, 'b' || v] FROM generate_series(0, 999) AS g(v)",
        )
        .await
        .expect("dim");
    let sql = "SELECT d.info.rank, count(*), max(d.aliases[2]), min(e.s.name) \
               FROM ev AS e JOIN dim AS d ON e.s.k = d.k WHERE d.info.label LIKE 'label1%' \
               GROUP BY d.info.rank ORDER BY 1";
    client
        .batch_execute("SET distsql = on")
        .await
        .expect("distsql on");
    let plan = texts(&client, &format!("EXPLAIN {sql}")).await.join("\n");
    let ev_stages: Vec<&str> = plan
        .split("Stage ")
        .filter(|stage| stage.contains("get_field(s@1, k)"))
        .collect();
    assert!(
        plan.contains("CollectLeft")
            && !ev_stages.is_empty()
            && ev_stages
                .iter()
                .all(|stage| stage.contains("3 tasks on nodes [1, 2, 3]")),
        "dim is not built whole beside each ev scan:\n{plan}"
    );
    let distributed = texts(&client, sql).await;
    client
        .batch_execute("SET distsql = off")
        .await
        .expect("distsql off");
    assert_eq!(distributed, texts(&client, sql).await);
    assert_eq!(distributed.len(), 7);
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
    // Structs inside an array: array_out of record_out texts, as PostgreSQL
    // writes `ARRAY[ROW(1, NULL), ROW(2, '')]`; the column stays record[].
    assert_eq!(
        texts(
            &client,
            "SELECT [STRUCT(1 AS x, CAST(NULL AS text) AS t), STRUCT(2 AS x, '' AS t)]"
        )
        .await,
        ["{\"(1,)\",\"(2,\\\"\\\")\"}"]
    );
    let described = client
        .prepare("SELECT [STRUCT(1 AS x)] AS a")
        .await
        .expect("prepare");
    assert_eq!(
        described.columns()[0].type_().oid(),
        tokio_postgres::types::Type::RECORD_ARRAY.oid()
    );
}

#[tokio::test]
async fn a_field_access_names_its_result_column_by_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE o (id INT, c STRUCT<name STRING, addr STRUCT<city STRING>>, \
             items ARRAY<STRUCT<sku STRING>>); \
             INSERT INTO o VALUES (1, STRUCT('a' AS name, STRUCT('x' AS city) AS addr), \
             [STRUCT('k' AS sku)])",
        )
        .await
        .expect("table");
    let statement = client
        .prepare(
            "SELECT o.id, c.name, o.c.addr.city, public.o.c.addr, items[1].sku, i.sku AS own, i \
             FROM public.o, UNNEST(o.items) AS i",
        )
        .await
        .expect("prepare");
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "name", "city", "addr", "sku", "own", "i"]);
    assert_eq!(
        texts(
            &client,
            "SELECT c.name, o.c.addr.city, items[1].sku FROM public.o"
        )
        .await,
        ["a|x|k"]
    );
}

/// The oid of the type named `name` in pg_type.
async fn pg_type_oid(client: &Client, name: &str) -> u32 {
    let row = client
        .query_one(
            "SELECT oid::bigint FROM pg_type WHERE typname = $1",
            &[&name],
        )
        .await
        .expect("pg_type row");
    u32::try_from(row.get::<_, i64>(0)).expect("an oid")
}

#[tokio::test]
async fn a_named_composite_type_is_in_the_catalog_and_outlives_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TYPE address AS (street text, zip int);
             CREATE TABLE residents (id int, home address, past address[]);
             INSERT INTO residents VALUES (1, ROW('Main St', 12345), ARRAY[ROW('Old Rd', 1)::address]);",
        )
        .await
        .expect("type and table");
    let type_oid = pg_type_oid(&client, "address").await;

    // tokio-postgres looks the result's types up (pg_type.typtype read as
    // PostgreSQL's one-byte "char", then the composite's fields from
    // pg_attribute) to prepare the statement.
    let prepared = client
        .prepare("SELECT id, home, past FROM residents")
        .await
        .expect("tokio-postgres prepares over composite columns");
    let home = prepared.columns()[1].type_();
    assert_eq!((home.oid(), home.name()), (type_oid, "address"));
    match home.kind() {
        tokio_postgres::types::Kind::Composite(fields) => assert_eq!(
            fields
                .iter()
                .map(|f| (f.name(), f.type_().clone()))
                .collect::<Vec<_>>(),
            [
                ("street", tokio_postgres::types::Type::TEXT),
                ("zip", tokio_postgres::types::Type::INT4)
            ]
        ),
        other => panic!("home is described as {other:?}"),
    }
    assert!(matches!(
        prepared.columns()[2].type_().kind(),
        tokio_postgres::types::Kind::Array(element) if element == home
    ));
    // The type and the column's declaration are in the Raft log.
    drop(client);
    node.kill9();
    node.restart().await;
    let client = node.client().await;
    let described = texts(
        &client,
        "SELECT format_type(a.atttypid, NULL) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relname = 'residents' AND a.attnum > 0 ORDER BY a.attnum",
    )
    .await;
    assert_eq!(described, ["integer", "address", "address[]"]);
    let values = texts(&client, "SELECT home FROM residents").await;
    assert_eq!(values, ["(\"Main St\",12345)"]);
    assert_eq!(
        pg_type_oid(&client, "address").await,
        type_oid,
        "the oid is stable"
    );
    let refused = client
        .batch_execute("DROP TYPE address")
        .await
        .expect_err("in use");
    assert_eq!(sqlstate(&refused), "2BP01");
}
