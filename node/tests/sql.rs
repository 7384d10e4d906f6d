//! SQL over the PostgreSQL wire against a real `quarry` process.

#[path = "support/node.rs"]
mod support;

use support::{TestNode, files_scanned, sqlstate};

async fn node() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    (dir, node)
}

#[tokio::test]
async fn ddl_insert_and_queries() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE SCHEMA shop;
             CREATE TABLE shop.customers (id BIGINT NOT NULL, name TEXT, country TEXT);
             CREATE TABLE shop.orders (id BIGINT NOT NULL, customer BIGINT, amount NUMERIC(12,2), placed DATE);",
        )
        .await
        .expect("ddl");
    let inserted = client
        .execute(
            "INSERT INTO shop.customers VALUES (1, 'Ada', 'UK'), (2, 'Grace', 'US'), (3, 'Linus', 'FI')",
            &[],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 3);
    client
        .batch_execute(
            "INSERT INTO shop.orders VALUES
               (10, 1, 12.50, '2026-01-01'), (11, 1, 7.25, '2026-01-02'),
               (12, 2, 100.00, '2026-01-02'), (13, 3, 1.00, '2026-02-01');",
        )
        .await
        .expect("insert orders");

    // Filter + aggregate + join.
    let rows = client
        .query(
            "SELECT c.name, count(*) AS n, CAST(sum(o.amount) AS TEXT) AS total
             FROM shop.orders o JOIN shop.customers c ON o.customer = c.id
             WHERE o.placed < DATE '2026-02-01'
             GROUP BY c.name ORDER BY c.name",
            &[],
        )
        .await
        .expect("join");
    let got: Vec<(String, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, String>(2)))
        .collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("Ada".into(), 2, "19.75".into()),
            ("Grace".into(), 1, "100.00".into())
        ]
    );

    // Window function.
    let rows = client
        .query(
            "SELECT id, sum(amount) OVER (PARTITION BY customer ORDER BY id) AS running::TEXT
             FROM shop.orders ORDER BY id",
            &[],
        )
        .await;
    // `AS running::TEXT` is not valid SQL: the error must be a syntax error.
    assert_eq!(sqlstate(&rows.expect_err("bad syntax")), "42601");
    let rows = client
        .query(
            "SELECT id, CAST(sum(amount) OVER (PARTITION BY customer ORDER BY id) AS TEXT) AS running
             FROM shop.orders ORDER BY id",
            &[],
        )
        .await
        .expect("window");
    let running: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(running, vec!["12.50", "19.75", "100.00", "1.00"]);

    // Result columns are named as PostgreSQL names them.
    let statement = client
        .prepare("SELECT count(*), max(amount), 1 FROM shop.orders")
        .await
        .expect("prepare");
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["count", "max", "?column?"]);

    // information_schema sees the tables.
    let rows = client
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'shop' ORDER BY 1",
            &[],
        )
        .await
        .expect("information_schema");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["customers", "orders"]);

    // DROP, and the table is gone.
    client
        .batch_execute("DROP TABLE shop.orders")
        .await
        .expect("drop");
    let e = client
        .query("SELECT * FROM shop.orders", &[])
        .await
        .expect_err("dropped");
    assert_eq!(sqlstate(&e), "42P01");
}

#[tokio::test]
async fn prepared_statements_bind_typed_parameters() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id INT NOT NULL, name TEXT, score DOUBLE PRECISION, day DATE)",
        )
        .await
        .expect("create");
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4)")
        .await
        .expect("prepare insert");
    for (id, name, score) in [(1, "a", 1.5), (2, "b", 2.5), (3, "c", 3.5)] {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, id as u32).expect("date");
        client
            .execute(&insert, &[&id, &name, &score, &day])
            .await
            .expect("insert with parameters");
    }
    let select = client
        .prepare("SELECT name, score FROM t WHERE id >= $1 AND name <> $2 ORDER BY id")
        .await
        .expect("prepare select");
    let rows = client.query(&select, &[&2i32, &"c"]).await.expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "b");
    assert_eq!(rows[0].get::<_, f64>(1), 2.5);
    let rows = client
        .query(
            "SELECT count(*) FROM t WHERE day > $1",
            &[&chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")],
        )
        .await
        .expect("date parameter");
    assert_eq!(rows[0].get::<_, i64>(0), 2);

    // Parameters typed as PostgreSQL types them: by their cast and by the
    // array they are compared with; `oid` stays `oid`, and an oid cast to
    // text is text.
    client
        .batch_execute("CREATE TABLE arr (v BIGINT[])")
        .await
        .expect("arr");
    let typed = client
        .prepare(
            "SELECT 5::oid AS o, $1::oid[] AS os, $2::date AS d, oid::text AS t \
             FROM pg_catalog.pg_type WHERE $3 = ANY(ARRAY[1, 2]::bigint[]) LIMIT 1",
        )
        .await
        .expect("prepare");
    use tokio_postgres::types::Type;
    assert_eq!(typed.params(), [Type::OID_ARRAY, Type::DATE, Type::INT8]);
    let columns: Vec<Type> = typed.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        columns,
        [Type::OID, Type::OID_ARRAY, Type::DATE, Type::TEXT]
    );
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).expect("date");
    let row = client
        .query_one(&typed, &[&vec![16u32, 20u32], &day, &2i64])
        .await
        .expect("bound");
    assert_eq!(row.get::<_, u32>(0), 5);
    assert_eq!(row.get::<_, Vec<u32>>(1), [16, 20]);
    assert_eq!(row.get::<_, chrono::NaiveDate>(2), day);
    // A parameter compared with an oid column is an oid (tokio-postgres's
    // own type lookup binds `t.oid = $1` so), in binary and in text.
    let by_oid = client
        .prepare("SELECT typname FROM pg_catalog.pg_type WHERE oid = $1")
        .await
        .expect("prepare by oid");
    assert_eq!(by_oid.params(), [Type::OID]);
    let row = client
        .query_one(&by_oid, &[&25u32])
        .await
        .expect("bound oid");
    assert_eq!(row.get::<_, &str>(0), "text");
    let texts = client
        .simple_query(
            "PREPARE by_oid AS SELECT typname FROM pg_type WHERE oid = $1; EXECUTE by_oid('23')",
        )
        .await
        .expect("EXECUTE with an oid");
    let names: Vec<&str> = texts
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["int4"]);

    // Counts DataFusion answers unsigned are bigints, not numerics.
    let counts = client
        .prepare(
            "SELECT cardinality(ARRAY[1, 2]), array_length(ARRAY[1, 2, 3], 1), \
             jsonb_array_length('[1]'::jsonb)",
        )
        .await
        .expect("prepare counts");
    assert!(counts.columns().iter().all(|c| *c.type_() == Type::INT8));
    let row = client.query_one(&counts, &[]).await.expect("counts");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (2, 3, 1)
    );
}

#[tokio::test]
async fn errors_carry_postgres_sqlstates() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (a INT, b TEXT)")
        .await
        .expect("create");
    let cases = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM missing", "42P01"),
        ("SELECT nope FROM t", "42703"),
        ("INSERT INTO t VALUES ('not a number', 'x')", "22P02"),
        ("CREATE TABLE t (a INT)", "42P07"),
        ("CREATE TABLE nowhere.t (a INT)", "3F000"),
        ("CREATE TABLE u (a frobnicator)", "42704"),
        ("SHOW no_such_setting", "42704"),
    ];
    for (sql, expected) in cases {
        let e = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), expected, "{sql}: {e:?}");
    }
    // The connection is still usable after errors.
    let rows = client
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("still works");
    assert_eq!(rows[0].get::<_, i64>(0), 0);
}

#[tokio::test]
async fn a_failed_insert_leaves_no_rows() {
    // Files in stripes (none in the ingest buffer), so that what a failed
    // statement wrote would be on disk.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("data"), &["--buffer-file-rows", "0"]).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (a INT NOT NULL, b INT); INSERT INTO t VALUES (1, 1)")
        .await
        .expect("setup");
    // The third row violates NOT NULL after two good rows were already produced.
    let e = client
        .batch_execute("INSERT INTO t VALUES (2, 2), (3, 3), (NULL, 4)")
        .await
        .expect_err("not null");
    assert_eq!(sqlstate(&e), "23502");
    // A bad cast in the middle of an INSERT ... SELECT.
    let e = client
        .batch_execute("INSERT INTO t SELECT CAST(v AS INT), 0 FROM (SELECT '5' AS v UNION ALL SELECT '6' UNION ALL SELECT 'x') AS s")
        .await
        .expect_err("bad cast");
    assert_eq!(sqlstate(&e), "22P02");
    let rows = client
        .query("SELECT a FROM t ORDER BY a", &[])
        .await
        .expect("select");
    let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, vec![1]);
    // No chunk of the failed statements stays on disk: only the one data file.
    let chunks = std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks dir")
        .count();
    assert_eq!(chunks, 1);
}

#[tokio::test]
async fn create_table_as_and_time_travel() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE src AS SELECT * FROM (VALUES (1, 'one'), (2, 'two')) AS v(n, word)",
        )
        .await
        .expect("ctas");
    let before: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT CAST(now() AS TIMESTAMP WITH TIME ZONE)", &[])
        .await
        .expect("now")
        .get(0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    client
        .batch_execute("INSERT INTO src VALUES (3, 'three')")
        .await
        .expect("insert");

    let now = client
        .query_one("SELECT count(*) FROM src", &[])
        .await
        .expect("count");
    assert_eq!(now.get::<_, i64>(0), 3);
    let at = before.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let then = client
        .query_one(
            &format!("SELECT count(*) FROM src FOR SYSTEM_TIME AS OF TIMESTAMP '{at}'"),
            &[],
        )
        .await
        .expect("time travel");
    assert_eq!(then.get::<_, i64>(0), 2);
    let e = client
        .query(
            "SELECT * FROM src FOR SYSTEM_TIME AS OF TIMESTAMP '2000-01-01 00:00:00'",
            &[],
        )
        .await
        .expect_err("before the table existed");
    assert_eq!(sqlstate(&e), "42P01");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("did not exist"), "{message}");
}

#[tokio::test]
async fn cancel_requests_and_statement_timeout_stop_a_running_query() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    let slow = "SELECT count(*) FROM generate_series(1, 2000000000) AS a(x) WHERE x % 7 = 3";

    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let e = client.simple_query(slow).await.expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    canceller.await.expect("join").expect("cancel sent");

    client
        .batch_execute("SET statement_timeout = '200ms'")
        .await
        .expect("set");
    let e = client.simple_query(slow).await.expect_err("timed out");
    assert_eq!(sqlstate(&e), "57014");
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");
    let rows = client
        .query("SELECT 1", &[])
        .await
        .expect("usable after cancel");
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn every_column_type_has_its_postgres_oid_and_round_trips() {
    use tokio_postgres::types::Type;
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE types (b BOOLEAN, i2 SMALLINT, i4 INTEGER, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION,
                                 n NUMERIC(10,3), t TEXT, d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, by BYTEA);
             INSERT INTO types VALUES (true, 2, 4, 8, 1.5, 2.25, 3.125, 'text', '2026-11-21',
                                       '2026-11-21 10:11:12.5', '2026-11-21 10:11:12+00', '\\x0102ff');",
        )
        .await
        .expect("setup");
    let statement = client
        .prepare("SELECT * FROM types")
        .await
        .expect("prepare");
    let types: Vec<Type> = statement
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    assert_eq!(
        types,
        vec![
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::DATE,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::BYTEA
        ]
    );
    let row = client.query_one(&statement, &[]).await.expect("row");
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i16>(1), 2);
    assert_eq!(row.get::<_, i32>(2), 4);
    assert_eq!(row.get::<_, i64>(3), 8);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert_eq!(row.get::<_, f64>(5), 2.25);
    assert_eq!(row.get::<_, String>(7), "text");
    assert_eq!(
        row.get::<_, chrono::NaiveDate>(8),
        chrono::NaiveDate::from_ymd_opt(2026, 11, 21).expect("date")
    );
    assert_eq!(
        row.get::<_, chrono::NaiveDateTime>(9).to_string(),
        "2026-11-21 10:11:12.500"
    );
    assert_eq!(
        row.get::<_, chrono::DateTime<chrono::Utc>>(10).to_rfc3339(),
        "2026-11-21T10:11:12+00:00"
    );
    assert_eq!(row.get::<_, Vec<u8>>(11), vec![1, 2, 255]);
    // NUMERIC in text form keeps its scale.
    let text = client
        .simple_query("SELECT n FROM types")
        .await
        .expect("simple");
    let value = text.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("3.125"));
}

/// The data files a plan's scan reads, from EXPLAIN's `file_groups`.
/// The text of `EXPLAIN query`'s physical plan.
async fn physical_plan(client: &tokio_postgres::Client, query: &str) -> String {
    let rows = client
        .simple_query(&format!("EXPLAIN {query}"))
        .await
        .expect("explain");
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("physical_plan") => {
                r.get(1).map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn zone_maps_prune_data_files_from_scans() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE events (id BIGINT NOT NULL, day DATE);
             INSERT INTO events SELECT v, DATE '2026-01-01' FROM generate_series(1, 1000) AS g(v);
             INSERT INTO events SELECT v, DATE '2026-02-01' FROM generate_series(1001, 2000) AS g(v);
             INSERT INTO events SELECT v, DATE '2026-03-01' FROM generate_series(2001, 3000) AS g(v);",
        )
        .await
        .expect("three inserts, three data files");
    assert_eq!(files_scanned(&client, "SELECT * FROM events").await, 3);
    assert_eq!(
        files_scanned(&client, "SELECT * FROM events WHERE id = 1500").await,
        1
    );
    assert_eq!(
        files_scanned(
            &client,
            "SELECT * FROM events WHERE day >= DATE '2026-02-15'"
        )
        .await,
        1
    );
    // Pruning never changes answers.
    let row = client
        .query_one(
            "SELECT count(*) FROM events WHERE id BETWEEN 990 AND 2010",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 1021);
}

#[tokio::test]
async fn join_filters_go_into_the_parquet_reader_and_static_filters_after_decoding() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE readings (id BIGINT NOT NULL, v BIGINT);
             INSERT INTO readings SELECT g, g % 7 FROM generate_series(1, 1000) AS t(g);
             CREATE TABLE kinds (k BIGINT, name TEXT);
             INSERT INTO kinds VALUES (1, 'one'), (3, 'three'), (5, 'five');",
        )
        .await
        .expect("tables");
    // A scan no dynamic filter reaches: its filter runs after decoding (a
    // FilterExec above it), and the scan still prunes with it.
    let alone = "SELECT count(*) FROM readings WHERE v = 3 AND id > 10";
    let plan = physical_plan(&client, alone).await;
    assert!(plan.contains("FilterExec: v@1 = 3 AND id@0 > 10"), "{plan}");
    assert!(plan.contains("predicate=v@1 = 3 AND id@0 > 10"), "{plan}");
    // The probe side of a join, which the build side's keys filter: its
    // static filter goes into the reader with the join's dynamic filter;
    // the build side filters after decoding.
    let joined = "SELECT count(*) FROM readings r JOIN kinds s ON r.v = s.k \
                  WHERE r.id > 10 AND s.name <> 'five'";
    let plan = physical_plan(&client, joined).await;
    assert!(!plan.contains("FilterExec: id@0 > 10"), "{plan}");
    assert!(
        plan.contains("predicate=id@0 > 10 AND DynamicFilter"),
        "{plan}"
    );
    assert!(plan.contains("FilterExec: name@1 != five"), "{plan}");
    let answers = [
        (11..=1000).filter(|g| g % 7 == 3).count() as i64,
        (11..=1000).filter(|g| [1, 3].contains(&(g % 7))).count() as i64,
    ];
    for (query, expected) in [alone, joined].into_iter().zip(answers) {
        let row = client.query_one(query, &[]).await.expect("count");
        assert_eq!(row.get::<_, i64>(0), expected, "{query}");
    }
    // DataFusion's setting puts every scan's filters in the reader.
    client
        .batch_execute("SET datafusion.execution.parquet.pushdown_filters = true")
        .await
        .expect("set");
    for (query, expected) in [alone, joined].into_iter().zip(answers) {
        let plan = physical_plan(&client, query).await;
        assert!(!plan.contains("FilterExec"), "{plan}");
        let row = client.query_one(query, &[]).await.expect("count");
        assert_eq!(row.get::<_, i64>(0), expected, "{query}");
    }
}

#[tokio::test]
async fn snapshot_statistics_feed_the_planner() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE big (id BIGINT, k INT);
             INSERT INTO big SELECT v, v % 10 FROM generate_series(1, 20000) AS g(v);
             CREATE TABLE small (k INT, name TEXT);
             INSERT INTO small VALUES (1, 'one'), (2, 'two');",
        )
        .await
        .expect("two tables");
    // The row count of the snapshot answers count(*) without a scan.
    let plan = physical_plan(&client, "SELECT count(*) FROM big").await;
    assert!(
        plan.contains("20000") && !plan.contains("DataSourceExec"),
        "count(*) from the snapshot's row count: {plan}"
    );
    // The smaller side builds the hash table, whichever side it is written on.
    for query in [
        "SELECT b.id, s.name FROM big b JOIN small s ON b.k = s.k",
        "SELECT b.id, s.name FROM small s JOIN big b ON b.k = s.k",
    ] {
        let plan = physical_plan(&client, query).await;
        let build = plan
            .lines()
            .skip_while(|l| !l.contains("HashJoinExec"))
            .find(|l| l.contains("DataSourceExec"))
            .unwrap_or_default()
            .to_owned();
        assert!(
            build.contains("projection=[k, name]"),
            "small is the build side of {query}: {plan}"
        );
    }
    // Exact counts stay exact through deletes and a transaction's own rows.
    client
        .batch_execute("DELETE FROM big WHERE id <= 100")
        .await
        .expect("delete");
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute("INSERT INTO big VALUES (0, 0)")
        .await
        .expect("insert");
    let row = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 19_901);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let row = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 19_900);
}

#[tokio::test]
async fn a_data_file_read_again_comes_from_memory() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE t AS SELECT v FROM generate_series(1, 1000) AS g(v); \
             SET use_query_cache = off",
        )
        .await
        .expect("ctas");
    // (The scan runs again rather than being answered from the result cache.)
    let sum = "SELECT sum(v) FROM t";
    let first = client.query_one(sum, &[]).await.expect("first read");
    let misses = node.metric("quarry_data_cache_misses_total").await;
    let second = client.query_one(sum, &[]).await.expect("second read");
    assert_eq!(first.get::<_, i64>(0), second.get::<_, i64>(0));
    assert!(
        node.metric("quarry_data_cache_hits_total")
            .await
            .is_some_and(|n| n >= 1.0),
        "the second scan is served from the pool"
    );
    assert_eq!(
        node.metric("quarry_data_cache_misses_total").await,
        misses,
        "and reads nothing from disk"
    );
}

#[tokio::test]
async fn a_transaction_reads_one_snapshot_plus_its_own_writes() {
    let (_dir, node) = node().await;
    let a = node.client().await;
    let b = node.client().await;
    a.batch_execute("CREATE TABLE t (v INT)")
        .await
        .expect("create");
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);

    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(
        count(
            a.query("SELECT count(*) FROM t", &[])
                .await
                .expect("a reads")
        ),
        0
    );
    b.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("b commits");
    assert_eq!(
        count(
            a.query("SELECT count(*) FROM t", &[])
                .await
                .expect("a reads again")
        ),
        0,
        "a transaction must not see commits made after its snapshot"
    );
    a.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("a writes");
    assert_eq!(
        count(
            a.query("SELECT count(*) FROM t", &[])
                .await
                .expect("own write")
        ),
        1
    );
    assert_eq!(
        count(
            b.query("SELECT count(*) FROM t", &[])
                .await
                .expect("b reads")
        ),
        1,
        "uncommitted rows must not be visible to others"
    );
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        count(b.query("SELECT count(*) FROM t", &[]).await.expect("after")),
        2
    );

    // tokio-postgres' own transaction API (BEGIN / COMMIT over the wire).
    let mut c = node.client().await;
    let transaction = c.transaction().await.expect("begin");
    transaction
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .expect("insert");
    transaction.rollback().await.expect("rollback");
    assert_eq!(
        count(
            b.query("SELECT count(*) FROM t", &[])
                .await
                .expect("after rollback")
        ),
        2
    );
}

/// DDL in a block applies at COMMIT on top of what others committed
/// meanwhile: a table created by both goes to the first committer (the
/// other COMMIT fails 42P07 and leaves nothing); a table another session
/// altered after the block altered it fails the block (40001) rather than
/// mixing the two schemas' field ids; a table created meanwhile under an
/// unrelated name does not disturb the block's own new table.
#[tokio::test]
async fn ddl_in_blocks_commits_over_concurrent_ddl() {
    let (_dir, node) = node().await;
    let a = node.client().await;
    let b = node.client().await;
    a.batch_execute("BEGIN; CREATE TABLE dup (v INT); INSERT INTO dup VALUES (1)")
        .await
        .expect("a creates");
    b.batch_execute("CREATE TABLE dup (w TEXT)")
        .await
        .expect("b creates the same name first");
    let err = a.batch_execute("COMMIT").await.expect_err("a must fail");
    assert_eq!(sqlstate(&err), "42P07", "{err}");
    let rows = b
        .query_one("SELECT count(*) FROM dup", &[])
        .await
        .expect("b's table");
    assert_eq!(rows.get::<_, i64>(0), 0, "nothing of a's block remains");

    b.batch_execute("CREATE TABLE t (v INT); INSERT INTO t VALUES (1)")
        .await
        .expect("t");
    a.batch_execute("BEGIN; ALTER TABLE t ADD COLUMN mine INT; INSERT INTO t VALUES (2, 20)")
        .await
        .expect("a alters");
    b.batch_execute("ALTER TABLE t ADD COLUMN theirs INT")
        .await
        .expect("b alters first");
    let err = a.batch_execute("COMMIT").await.expect_err("a must fail");
    assert_eq!(sqlstate(&err), "40001", "{err}");
    let rows = b.query("SELECT * FROM t", &[]).await.expect("t after");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].columns().len(), 2, "only b's column was added");

    a.batch_execute("BEGIN; CREATE TABLE mine (v INT); INSERT INTO mine VALUES (7)")
        .await
        .expect("a creates");
    b.batch_execute("CREATE TABLE theirs (v INT)")
        .await
        .expect("b creates another table, taking the next id");
    a.batch_execute("ALTER TABLE mine ADD COLUMN w INT; INSERT INTO mine VALUES (8, 80); COMMIT")
        .await
        .expect("a commits");
    let rows = b
        .query("SELECT v, w FROM mine ORDER BY v", &[])
        .await
        .expect("mine");
    let got: Vec<(i32, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(7, None), (8, Some(80))]);
    let theirs = b.query("SELECT * FROM theirs", &[]).await.expect("theirs");
    assert!(theirs.is_empty(), "a's rows went to its own table");
    let their_columns = b
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'theirs'",
            &[],
        )
        .await
        .expect("theirs' columns");
    assert_eq!(
        their_columns.get::<_, i64>(0),
        1,
        "a's ALTER went to its own table"
    );
}

#[tokio::test]
async fn time_travel_by_snapshot_id() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (v INT); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); DELETE FROM t")
        .await
        .expect("history");
    let rows = client
        .query(
            "SELECT CAST(snapshot_id AS BIGINT), CAST(row_count AS BIGINT) FROM quarry_system.snapshots
             WHERE table_name = 't' ORDER BY snapshot_id",
            &[],
        )
        .await
        .expect("snapshots");
    let history: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        history.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![0, 1, 2, 0]
    );
    for (id, rows) in history {
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM t VERSION AS OF {id}"), &[])
            .await
            .expect("versioned read")
            .get(0);
        assert_eq!(count, rows, "snapshot {id}");
    }
}

#[tokio::test]
async fn time_travel_reads_each_snapshot_with_its_own_columns() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE s (a INT, b TEXT); INSERT INTO s VALUES (1, 'x')")
        .await
        .expect("setup");
    let before = support::instant_between_commits();
    client
        .batch_execute(
            "ALTER TABLE s RENAME COLUMN b TO label;
             ALTER TABLE s DROP COLUMN a;
             ALTER TABLE s ADD COLUMN c BIGINT DEFAULT 5;
             INSERT INTO s VALUES ('y', 6)",
        )
        .await
        .expect("evolve");
    let now = client.prepare("SELECT * FROM s").await.expect("current");
    let names: Vec<&str> = now.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["label", "c"]);
    let rows = client
        .query("SELECT label, c FROM s ORDER BY label", &[])
        .await
        .expect("current rows");
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("x".into(), 5), ("y".into(), 6)]);

    let old = client
        .prepare(&format!(
            "SELECT * FROM s FOR SYSTEM_TIME AS OF TIMESTAMP '{before}'"
        ))
        .await
        .expect("old");
    let names: Vec<&str> = old.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["a", "b"]);
    let rows = client.query(&old, &[]).await.expect("old rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    assert_eq!(rows[0].get::<_, String>(1), "x");
}

#[tokio::test]
async fn a_clone_can_start_from_a_past_snapshot() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE src (v INT); INSERT INTO src VALUES (1), (2)")
        .await
        .expect("setup");
    let before = support::instant_between_commits();
    client
        .batch_execute("DELETE FROM src WHERE v = 1; ALTER TABLE src RENAME COLUMN v TO w")
        .await
        .expect("change the source");
    client
        .batch_execute(&format!(
            "CREATE TABLE restored CLONE src FOR SYSTEM_TIME AS OF TIMESTAMP '{before}'"
        ))
        .await
        .expect("clone as of");
    let rows = client
        .query("SELECT v FROM restored ORDER BY v", &[])
        .await
        .expect("the clone has the past columns and rows");
    let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, vec![1, 2]);
    let e = client
        .batch_execute("CREATE TABLE too_early CLONE src FOR SYSTEM_TIME AS OF TIMESTAMP '2000-01-01 00:00:00'")
        .await
        .expect_err("before the source existed");
    assert_eq!(sqlstate(&e), "42P01");
}

/// An extended-protocol Execute with a row limit returns that many rows and
/// suspends the portal (PortalSuspended); the next Execute goes on where it
/// stopped. JDBC's fetch size and asyncpg's cursors page this way.
#[tokio::test]
async fn a_portal_executed_with_max_rows_pages_through_the_result() {
    let (_dir, node) = node().await;
    let mut client = node.client().await;
    client
        .batch_execute("CREATE TABLE paged (id BIGINT NOT NULL)")
        .await
        .expect("create");
    let values: Vec<String> = (1..=250).map(|i| format!("({i})")).collect();
    client
        .batch_execute(&format!("INSERT INTO paged VALUES {}", values.join(", ")))
        .await
        .expect("insert");
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction
        .prepare("SELECT id FROM paged WHERE id > $1 ORDER BY id")
        .await
        .expect("prepare");
    let portal = transaction
        .bind(&statement, &[&100i64])
        .await
        .expect("bind");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let rows = transaction
            .query_portal(&portal, 60)
            .await
            .expect("execute");
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 60, "a page of {} rows", rows.len());
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        pages += 1;
    }
    assert_eq!(seen, (101..=250).collect::<Vec<i64>>());
    assert_eq!(pages, 3, "150 rows in pages of 60");
    transaction.commit().await.expect("commit");
}

/// An integer literal a query returns is int4 when it fits, int8 otherwise,
/// as PostgreSQL types them; count(*) stays bigint.
#[tokio::test]
async fn integer_literals_come_back_as_postgresql_types_them() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    let types = |sql: &'static str| {
        let client = &client;
        async move {
            let statement = client.prepare(sql).await.expect("prepare");
            statement
                .columns()
                .iter()
                .map(|c| c.type_().clone())
                .collect::<Vec<_>>()
        }
    };
    use tokio_postgres::types::Type;
    assert_eq!(types("SELECT 1").await, [Type::INT4]);
    assert_eq!(
        types("SELECT 1 AS one, 3000000000 AS big").await,
        [Type::INT4, Type::INT8]
    );
    assert_eq!(
        types("SELECT 7 AS n ORDER BY n LIMIT 1").await,
        [Type::INT4]
    );
    assert_eq!(
        types("SELECT count(*) FROM (VALUES (1)) AS v(x)").await,
        [Type::INT8]
    );
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_repeated_query_is_answered_from_the_result_cache_until_a_table_it_reads_changes() {
    // Without the data cache, a scan that runs reads the disk.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("data"), &["--data-cache-mb", "0"]).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t AS SELECT v FROM generate_series(1, 100000) AS g(v)")
        .await
        .expect("ctas");
    let metric = |name: &'static str| {
        let node = &node;
        async move { node.metric(name).await.unwrap_or(0.0) }
    };
    let state = || async {
        (
            metric("quarry_result_cache_hits_total").await,
            metric("quarry_result_cache_misses_total").await,
            metric("quarry_storage_chunk_read_bytes_total").await,
        )
    };
    let query = "SELECT sum(v), count(*) FROM t WHERE v > 10";
    let sum_count = |row: tokio_postgres::Row| (row.get::<_, i64>(0), row.get::<_, i64>(1));
    let (hits, misses, read) = state().await;
    let first = sum_count(client.query_one(query, &[]).await.expect("first"));
    let after_first = state().await;
    assert_eq!((after_first.0, after_first.1), (hits, misses + 1.0));
    assert!(after_first.2 > read, "the first run reads its data file");
    // Another session, the same query: the cached rows, no byte read.
    let other = node.client().await;
    let second = sum_count(other.query_one(query, &[]).await.expect("second"));
    assert_eq!(second, first);
    assert_eq!(state().await, (hits + 1.0, misses + 1.0, after_first.2));
    // Bound parameters are part of the query.
    let with = "SELECT count(*) FROM t WHERE v > $1";
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    assert_eq!(
        count(other.query_one(with, &[&99_990i64]).await.expect("p1")),
        10
    );
    assert_eq!(
        count(
            other
                .query_one(with, &[&99_990i64])
                .await
                .expect("p1 again")
        ),
        10
    );
    assert_eq!(
        count(other.query_one(with, &[&99_995i64]).await.expect("p2")),
        5
    );
    assert_eq!(state().await.0, hits + 2.0);
    // A commit to the table: a new snapshot, a miss, the new rows.
    client
        .batch_execute("INSERT INTO t VALUES (1000000)")
        .await
        .expect("insert");
    let (hits, misses, _) = state().await;
    let third = sum_count(client.query_one(query, &[]).await.expect("third"));
    assert_eq!(third, (first.0 + 1_000_000, first.1 + 1));
    assert_eq!((state().await.0, state().await.1), (hits, misses + 1.0));
    // now() and random() are never cached; nor is anything with the
    // setting off.
    for uncached in [
        "SELECT sum(v), now() IS NOT NULL FROM t",
        "SELECT sum(v) + CAST(random() * 0 AS BIGINT) FROM t",
    ] {
        client.query(uncached, &[]).await.expect("first");
        client.query(uncached, &[]).await.expect("second");
    }
    assert_eq!(state().await.0, hits);
    client
        .batch_execute("SET use_query_cache = off")
        .await
        .expect("off");
    client.query(query, &[]).await.expect("off, first");
    client.query(query, &[]).await.expect("off, second");
    assert_eq!(state().await.0, hits);
    let e = client
        .batch_execute("SET use_query_cache = sometimes")
        .await
        .expect_err("not a Boolean");
    assert_eq!(sqlstate(&e), "22023");
}

#[tokio::test]
async fn result_columns_may_share_a_name_as_in_postgresql() {
    let (_dir, node) = node().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (a int, b int); INSERT INTO t VALUES (1, 2)")
        .await
        .expect("setup");
    for (sql, names) in [
        ("SELECT 1 AS a, 2 AS a", vec!["a", "a"]),
        ("SELECT a, a, b AS a FROM t", vec!["a", "a", "a"]),
        (
            "SELECT count(*), count(a), sum(b) FROM t",
            vec!["count", "count", "sum"],
        ),
        (
            "SELECT (SELECT count(*) FROM t), (SELECT max(b) FROM t), (SELECT a FROM t)",
            vec!["count", "max", "a"],
        ),
    ] {
        // Both protocols: the simple one and a prepared statement.
        let rows = client.query(sql, &[]).await.expect(sql);
        let got: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
        assert_eq!(got, names, "{sql}");
        let statement = client.prepare(sql).await.expect(sql);
        let got: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
        assert_eq!(got, names, "{sql} prepared");
    }
    let row = client
        .query_one("SELECT a, a + 1 AS a FROM t", &[])
        .await
        .expect("values");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i64>(1)), (1, 2));
}

/// One job of `quarry_system.jobs` by its exact text: (bytes processed,
/// cache hit, rows, error SQLSTATE, state, referenced tables).
async fn job_of(
    client: &tokio_postgres::Client,
    query: &str,
) -> (i64, bool, i64, Option<String>, String, String) {
    let row = client
        .query_one(
            "SELECT total_bytes_processed::bigint, cache_hit, row_count::bigint, error_sqlstate, \
                    state, array_to_string(referenced_tables, ',') \
             FROM quarry_system.jobs WHERE query = $1 ORDER BY creation_time DESC LIMIT 1",
            &[&query],
        )
        .await
        .unwrap_or_else(|e| panic!("the job of {query}: {e}"));
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}

#[tokio::test]
async fn every_statement_is_a_job_with_the_bytes_its_scans_read_kept_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = TestNode::start(&dir.path().join("data")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE events (id BIGINT NOT NULL, note TEXT);
             INSERT INTO events SELECT v, md5(v::text) FROM generate_series(1, 5000) AS g(v);
             INSERT INTO events SELECT v, md5(v::text) FROM generate_series(5001, 10000) AS g(v);
             INSERT INTO events SELECT v, md5(v::text) FROM generate_series(10001, 15000) AS g(v);
             INSERT INTO events SELECT v, md5(v::text) FROM generate_series(15001, 20000) AS g(v);",
        )
        .await
        .expect("four inserts, four data files");
    let table_bytes: i64 = client
        .query_one(
            "SELECT (size_bytes + buffered_bytes)::bigint FROM quarry_system.tables \
             WHERE table_name = 'events'",
            &[],
        )
        .await
        .expect("table bytes")
        .get(0);
    // A full scan processes every data file's bytes; a pruned one a quarter.
    let all = "SELECT count(*), max(note) FROM events";
    client.query_one(all, &[]).await.expect("all");
    let pruned = "SELECT count(*), max(note) FROM events WHERE id > 19000";
    client.query_one(pruned, &[]).await.expect("pruned");
    let (all_bytes, hit, rows, error, state, tables) = job_of(&client, all).await;
    assert_eq!(all_bytes, table_bytes);
    assert_eq!((hit, rows, error, state.as_str()), (false, 1, None, "DONE"));
    assert!(tables.ends_with("events"), "{tables}");
    let pruned_bytes = job_of(&client, pruned).await.0;
    assert!(
        pruned_bytes > 0 && pruned_bytes * 3 < all_bytes,
        "{pruned_bytes} of {all_bytes}"
    );
    // A repeat is a cache hit that processes nothing; now() is never cached.
    client.query_one(all, &[]).await.expect("again");
    let (repeat_bytes, repeat_hit, ..) = job_of(&client, all).await;
    assert_eq!((repeat_bytes, repeat_hit), (0, true));
    let clock = "SELECT max(note), now() FROM events";
    client.query_one(clock, &[]).await.expect("now");
    client.query_one(clock, &[]).await.expect("now again");
    let (clock_bytes, clock_hit, ..) = job_of(&client, clock).await;
    assert_eq!((clock_bytes, clock_hit), (table_bytes, false));
    // An INSERT into the table makes the next run miss.
    client
        .batch_execute("INSERT INTO events VALUES (20001, 'x')")
        .await
        .expect("insert");
    client.query_one(all, &[]).await.expect("after insert");
    let (after, hit, ..) = job_of(&client, all).await;
    assert!(!hit && after > table_bytes, "{after} {hit}");
    let (_, _, inserted, ..) = job_of(&client, "INSERT INTO events VALUES (20001, 'x')").await;
    assert_eq!(inserted, 1);
    // A failed statement is a job with its SQLSTATE.
    let missing = "SELECT * FROM no_such_table";
    client.query(missing, &[]).await.expect_err("no table");
    let (_, _, _, error, state, _) = job_of(&client, missing).await;
    assert_eq!((error.as_deref(), state.as_str()), (Some("42P01"), "DONE"));
    // The statement reading the jobs is itself RUNNING while it reads them.
    let running: String = client
        .query_one(
            "SELECT state FROM quarry_system.jobs WHERE query LIKE '%running-marker%' AND state <> 'DONE'",
            &[],
        )
        .await
        .expect("itself")
        .get(0);
    assert_eq!(running, "RUNNING");
    // Kept across a restart.
    drop(client);
    assert!(node.terminate().success());
    node.restart().await;
    let client = node.client().await;
    assert_eq!(job_of(&client, pruned).await.0, pruned_bytes);
}
