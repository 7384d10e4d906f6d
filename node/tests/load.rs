//! `LOAD DATA INTO | OVERWRITE t FROM FILES (...)` over Parquet, CSV and
//! NDJSON files on the node: every row in one commit, or nothing.

mod support {
    #[path = "node.rs"]
    pub mod node;
}

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use support::node::{TestNode, bigints, quarry_cert, sqlstate};

fn write_parquet(path: &std::path::Path, ids: std::ops::Range<i64>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let names: Vec<String> = ids.clone().map(|i| format!("p{i}")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .expect("batch");
    let file = std::fs::File::create(path).expect("file");
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

/// The files both LOAD DATA and external tables read: two Parquet files
/// (ids 0..150), two CSV files with a header, one with a bad value, NDJSON.
fn sample_files(files: &std::path::Path) {
    std::fs::create_dir_all(files).expect("files dir");
    write_parquet(&files.join("a.parquet"), 0..100);
    write_parquet(&files.join("b.parquet"), 100..150);
    std::fs::write(
        files.join("c1.csv"),
        "id,name,amount\n1,x,1.5\n2,\"y, z\",\n",
    )
    .expect("csv");
    std::fs::write(files.join("c2.csv"), "id,name,amount\n3,w,2.25\n").expect("csv");
    std::fs::write(files.join("bad.csv"), "id,name,amount\n4,v,1\nfive,u,2\n").expect("csv");
    std::fs::write(
        files.join("e.ndjson"),
        "{\"id\": 7, \"name\": \"j\"}\n{\"id\": 8, \"amount\": 0.5}\n",
    )
    .expect("json");
}

/// The rows of c1.csv, c2.csv and e.ndjson of [`sample_files`] as
/// `(id, name, amount as text)` of a `(id int, name text, amount
/// numeric(10, 2))` table, by id.
fn sample_rows() -> Vec<(i32, Option<String>, Option<String>)> {
    vec![
        (1, Some("x".into()), Some("1.50".into())),
        (2, Some("y, z".into()), None),
        (3, Some("w".into()), Some("2.25".into())),
        (7, Some("j".into()), None),
        (8, None, Some("0.50".into())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_reads_parquet_csv_and_json_files_in_one_commit_or_not_at_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    sample_files(&files);
    let node = TestNode::start(&dir.path().join("n1")).await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE p (id bigint NOT NULL, name text);
             CREATE TABLE c (id int, name text, amount numeric(10, 2))",
        )
        .await
        .expect("create");
    let dir = files.display();
    let loaded = client
        .execute(
            &format!(
                "LOAD DATA INTO p FROM FILES (format = 'PARQUET', uris = ['{dir}/*.parquet'])"
            ),
            &[],
        )
        .await
        .expect("parquet");
    assert_eq!(loaded, 150);
    let row = client
        .query_one("SELECT count(*), count(DISTINCT id), max(name) FROM p", &[])
        .await
        .expect("p");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ),
        (150, 150, "p99".to_owned())
    );
    // OVERWRITE replaces the rows in the same commit.
    client
        .execute(
            &format!(
                "LOAD DATA OVERWRITE p FROM FILES (format = 'PARQUET', uris = ['{dir}/b.parquet'])"
            ),
            &[],
        )
        .await
        .expect("overwrite");
    let count: i64 = client
        .query_one("SELECT count(*) FROM p", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 50);

    client
        .execute(
            &format!(
                "LOAD DATA INTO c FROM FILES (format = 'CSV', uris = ['{dir}/c1.csv', '{dir}/c2.csv'], skip_leading_rows = 1)"
            ),
            &[],
        )
        .await
        .expect("csv");
    client
        .execute(
            &format!("LOAD DATA INTO c FROM FILES (format = 'JSON', uris = ['{dir}/e.ndjson'])"),
            &[],
        )
        .await
        .expect("json");
    let rows = client
        .query(
            "SELECT id, name, CAST(amount AS text) FROM c ORDER BY id",
            &[],
        )
        .await
        .expect("c");
    let rows: Vec<(i32, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows, sample_rows());

    // A bad value in any file loads nothing of the statement.
    let e = client
        .execute(
            &format!(
                "LOAD DATA INTO c FROM FILES (format = 'CSV', uris = ['{dir}/c2.csv', '{dir}/bad.csv'], skip_leading_rows = 1)"
            ),
            &[],
        )
        .await
        .expect_err("a bad value");
    assert_eq!(sqlstate(&e), "22P02", "{e:?}");
    // The file, its row and the column are named.
    let db = e.as_db_error().expect("a database error");
    assert!(db.message().contains("\"five\""), "{db:?}");
    assert_eq!(
        db.detail(),
        Some(format!("file {dir}/bad.csv, row 2, column id").as_str()),
        "{db:?}"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 5);
    // With max_bad_records the bad row is skipped, the rest loaded, and
    // each skipped row is a NOTICE naming it, as COPY ... ON_ERROR ignore.
    let (notices, loaded) = with_notices(
        &node,
        &format!(
            "LOAD DATA INTO c FROM FILES (format = 'CSV', uris = ['{dir}/bad.csv'], skip_leading_rows = 1, max_bad_records = 1)"
        ),
    )
    .await;
    assert_eq!(loaded, 1);
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].0.contains("\"five\""), "{notices:?}");
    assert_eq!(
        notices[0].1.as_deref(),
        Some(format!("file {dir}/bad.csv, row 2, column id").as_str())
    );
    assert!(notices[1].0.starts_with("1 row was skipped"), "{notices:?}");
    let ids: Vec<i32> = client
        .query("SELECT id FROM c WHERE id = 4", &[])
        .await
        .expect("c")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [4]);
    // A missing file, and a relative path.
    let e = client
        .execute(
            &format!("LOAD DATA INTO c FROM FILES (format = 'CSV', uris = ['{dir}/none.csv'])"),
            &[],
        )
        .await
        .expect_err("missing");
    assert_eq!(sqlstate(&e), "58P01", "{e:?}");
    let e = client
        .execute(
            "LOAD DATA INTO c FROM FILES (format = 'CSV', uris = ['files/c1.csv'])",
            &[],
        )
        .await
        .expect_err("relative");
    assert_eq!(sqlstate(&e), "22023", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tables_read_parquet_csv_and_json_files_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    sample_files(&files);
    let mut node = TestNode::start(&dir.path().join("n1")).await;
    let client = node.client().await;
    let dir = files.display();
    // Parquet, its columns taken from the files.
    client
        .batch_execute(&format!(
            "CREATE EXTERNAL TABLE ep OPTIONS (format = 'PARQUET', uris = ['{dir}/*.parquet'])"
        ))
        .await
        .expect("parquet");
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_name = 'ep' ORDER BY ordinal_position",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        columns,
        [
            ("id".to_owned(), "bigint".to_owned()),
            ("name".to_owned(), "text".to_owned())
        ]
    );
    let row = client
        .query_one(
            "SELECT count(*), CAST(sum(id) AS text), max(name) FROM ep",
            &[],
        )
        .await
        .expect("ep");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (150, "11175".to_owned(), "p99".to_owned())
    );
    // The files are read at each scan: a new file the pattern matches is
    // seen by the next query.
    write_parquet(&files.join("c.parquet"), 150..200);
    let count: i64 = client
        .query_one("SELECT count(*) FROM ep WHERE id >= 100", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 100);
    // CSV and NDJSON with declared columns.
    client
        .batch_execute(&format!(
            "CREATE EXTERNAL TABLE ec (id int, name text, amount numeric(10, 2)) \
               OPTIONS (format = 'CSV', uris = ['{dir}/c1.csv', '{dir}/c2.csv'], skip_leading_rows = 1);
             CREATE EXTERNAL TABLE ej (id int, name text, amount numeric(10, 2)) \
               OPTIONS (format = 'JSON', uris = ['{dir}/e.ndjson'])"
        ))
        .await
        .expect("csv and json");
    let rows: Vec<(i32, Option<String>, Option<String>)> = client
        .query(
            "SELECT id, name, CAST(amount AS text) FROM ec \
             UNION ALL SELECT id, name, CAST(amount AS text) FROM ej ORDER BY id",
            &[],
        )
        .await
        .expect("ec and ej")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows, sample_rows());
    // Joined with a table of Quarry's own, and copied into one.
    client
        .batch_execute(
            "CREATE TABLE owned AS SELECT * FROM ep WHERE id % 10 = 0;
             CREATE TABLE names (id bigint, label text);
             INSERT INTO names VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        )
        .await
        .expect("ctas");
    let row = client
        .query_one(
            "SELECT count(*), string_agg(n.label, ',' ORDER BY n.label) \
             FROM ec JOIN names n ON n.id = ec.id",
            &[],
        )
        .await
        .expect("join");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (3, "one,three,two".to_owned())
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM owned", &[])
        .await
        .expect("owned")
        .get(0);
    assert_eq!(count, 20);
    // Its rows are the files': changes are refused with 42809.
    for sql in [
        "INSERT INTO ec VALUES (9, 'n', 1)",
        "DELETE FROM ec WHERE id = 1",
        "UPDATE ec SET name = 'q'",
        "TRUNCATE ec",
        "CREATE TABLE cl CLONE ec",
        "SELECT * FROM ec FOR SYSTEM_TIME AS OF now()",
    ] {
        let e = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "42809", "{sql}: {e:?}");
    }
    // A file that does not exist: nothing is created.
    for uri in ["none.parquet", "*.orc"] {
        let e = client
            .batch_execute(&format!(
                "CREATE EXTERNAL TABLE missing OPTIONS (format = 'PARQUET', uris = ['{dir}/{uri}'])"
            ))
            .await
            .expect_err(uri);
        assert_eq!(sqlstate(&e), "58P01", "{uri}: {e:?}");
        let message = e.as_db_error().expect("a database error").message();
        assert!(message.contains(uri), "{message}");
    }
    let e = client
        .query("SELECT * FROM missing", &[])
        .await
        .expect_err("not created");
    assert_eq!(sqlstate(&e), "42P01", "{e:?}");
    // A file removed after creation fails the scan clearly.
    std::fs::remove_file(files.join("e.ndjson")).expect("remove");
    let e = client
        .query("SELECT * FROM ej", &[])
        .await
        .expect_err("file gone");
    assert_eq!(sqlstate(&e), "58P01", "{e:?}");
    let message = e.as_db_error().expect("a database error").message();
    assert!(message.contains("e.ndjson"), "{message}");
    // The definition is replicated metadata: it survives a restart.
    drop(client);
    assert!(node.terminate().success());
    node.restart().await;
    let client = node.client().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM ep", &[])
        .await
        .expect("after restart")
        .get(0);
    assert_eq!(count, 200);
    client.batch_execute("DROP TABLE ep").await.expect("drop");
}

/// The quarry binary the tests run.
/// Runs `statement` on a connection of its own: the NOTICEs it raised
/// (message, detail) and the rows it reports.
async fn with_notices(node: &TestNode, statement: &str) -> (Vec<(String, Option<String>)>, u64) {
    use futures::StreamExt;
    let (client, mut connection) =
        tokio_postgres::connect(&node.conn_string(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(messages.for_each(move |message| {
        if let Ok(tokio_postgres::AsyncMessage::Notice(notice)) = message {
            let _ = sender.send((
                notice.message().to_owned(),
                notice.detail().map(str::to_owned),
            ));
        }
        async {}
    }));
    let rows = client.execute(statement, &[]).await.expect(statement);
    drop(client);
    let mut notices = Vec::new();
    while let Some(notice) = receiver.recv().await {
        notices.push(notice);
    }
    (notices, rows)
}

fn quarry() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_quarry"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_load_creates_the_table_and_a_rerun_after_kill_sends_each_row_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    write_parquet(&files.join("a.parquet"), 0..10_000);
    let csv: String = std::iter::once("id,name\n".to_owned())
        .chain((10_000..20_000).map(|i| format!("{i},c{i}\n")))
        .collect();
    std::fs::write(files.join("b.csv"), csv).expect("csv");
    let node = TestNode::start(&dir.path().join("n1")).await;
    let url = format!("http://{}:{}", node.ip, node.http_port);
    let pg = format!("{}:{}", node.ip, node.pg_port);
    let run = |batch: &str| {
        let mut command = std::process::Command::new(quarry());
        command
            .args([
                "load",
                "--table",
                "public.loaded",
                "--create",
                "--url",
                &url,
                "--pg",
                &pg,
            ])
            .args(["--batch-rows", batch])
            .arg(&files)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    // A first run, killed once some rows are in.
    let mut first = run("10").spawn().expect("quarry load runs");
    let mut stderr = std::io::BufReader::new(first.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("the first line");
    // Two files: two pending channels, sent at once.
    let channels: Vec<String> = line
        .split_whitespace()
        .skip_while(|w| *w != "channels")
        .skip(1)
        .take_while(|w| *w != "from")
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect();
    assert_eq!(channels.len(), 2, "{line:?}");
    let client = node.client().await;
    let channel_urls: Vec<String> = channels
        .iter()
        .map(|c| format!("{url}/v1/tables/public.loaded/channels/{c}"))
        .collect();
    let offsets = async || {
        let mut sum = 0;
        for channel_url in &channel_urls {
            let (status, body) =
                support::node::http_request("GET", channel_url, "text/plain", b"").await;
            if status == 200 {
                let answer = serde_json::from_str::<serde_json::Value>(&body).expect("json");
                assert_eq!(answer["pending"], true, "{answer}");
                sum += answer["next_offset"].as_u64().expect("offset");
            }
        }
        sum
    };
    let started = std::time::Instant::now();
    let at_kill = loop {
        let offset = offsets().await;
        if offset > 0 {
            break offset;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no rows arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    first.kill().expect("kill");
    first.wait().expect("reaped");
    assert!(at_kill < 20_000, "the first run ended before it was killed");
    // The rows it sent wait in its pending channels: none is visible.
    assert!(offsets().await >= at_kill);
    let row = bigints(&client, "SELECT count(*) FROM loaded").await;
    assert_eq!(row, [0]);
    // The rerun resumes where the channel stands.
    let second = run("4096").output().expect("quarry load runs");
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        out.contains("channel") && out.contains("committed at 20000"),
        "{out}"
    );
    // It resumed where the first run stopped, sending only the rest.
    let earlier: u64 = out
        .split(" row(s) were sent by an earlier run")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no earlier rows in {out}"));
    assert!(
        earlier >= at_kill && earlier > 0,
        "{earlier} < {at_kill}: {out}"
    );
    assert!(
        out.starts_with(&format!("loaded {} rows", 20_000 - earlier)),
        "{out}"
    );
    let row = bigints(
        &client,
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM loaded",
    )
    .await;
    assert_eq!(row, [20_000, 20_000, 0, 19_999]);
    // Both channels committed together, in one snapshot.
    let appends = bigints(
        &client,
        "SELECT count(*) FROM quarry_system.snapshots WHERE table_name = 'loaded' AND rows_added > 0",
    )
    .await;
    assert_eq!(appends, [1]);
    // Once more: nothing left to send.
    let third = run("4096").output().expect("quarry load runs");
    let out = String::from_utf8_lossy(&third.stdout);
    assert!(out.starts_with("loaded 0 rows"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarry_load_the_node_refuses_leaves_nothing_and_max_bad_rows_skips_and_lists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.csv");
    // Row 2,501 of 3,000 has an id that is no integer; each row is some
    // 500 bytes, 1.5 MB in all.
    let csv: String = std::iter::once("id,name\n".to_owned())
        .chain((0..3_000).map(|i| match i {
            2_500 => "x,bad\n".to_owned(),
            i => format!("{i},{}\n", "n".repeat(500)),
        }))
        .collect();
    std::fs::write(&file, csv).expect("csv");
    let node = TestNode::start_with(&dir.path().join("n1"), &["--stream-body-limit-mb", "1"]).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE events (id integer NOT NULL, name text)")
        .await
        .expect("create");
    let url = format!("http://{}:{}", node.ip, node.http_port);
    let run = |batch_rows: &str, max_bad_rows: &str| {
        std::process::Command::new(quarry())
            .args(["load", "--table", "public.events", "--url", &url])
            .args(["--batch-rows", batch_rows, "--max-bad-rows", max_bad_rows])
            .arg(&file)
            .output()
            .expect("quarry load runs")
    };
    // Five requests are held before the sixth is refused: the load fails
    // naming the row, and none of its rows is visible, then or later.
    let failed = run("500", "0");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{err}");
    assert!(err.contains("nothing was loaded"), "{err}");
    assert!(
        err.contains("invalid input syntax for type integer"),
        "{err}"
    );
    assert_eq!(bigints(&client, "SELECT count(*) FROM events").await, [0]);
    // Its channel was discarded: the same load starts again from row 1.
    // All 3,000 rows in one request pass the node's 1 MiB limit (413):
    // they go as halves.
    let loaded = run("3000", "1");
    let out = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(out.starts_with("loaded 2999 rows"), "{out}");
    assert!(out.contains("1 bad row(s) skipped"), "{out}");
    assert!(
        out.contains(&format!(
            "skipped: file {}, row 2501: invalid input syntax for type integer: \"x\"",
            file.display()
        )),
        "{out}"
    );
    assert_eq!(
        bigints(
            &client,
            "SELECT count(*), count(DISTINCT id), min(id)::bigint, max(id)::bigint FROM events"
        )
        .await,
        [2_999, 2_999, 0, 2_999]
    );
    // All in one snapshot: the table's history has one append of them.
    let appends = bigints(
        &client,
        "SELECT count(*) FROM quarry_system.snapshots WHERE table_name = 'events' AND rows_added > 0",
    )
    .await;
    assert_eq!(appends, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_load_reads_gzip_and_zstd_files_named_by_a_glob() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    let csv: String = std::iter::once("id,name\n".to_owned())
        .chain((0..300).map(|i| format!("{i},c{i}\n")))
        .collect();
    let ndjson: String = (300..500)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"j{i}\"}}\n"))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(files.join("part-1.csv.gz")).expect("file"),
        flate2::Compression::default(),
    );
    gz.write_all(csv.as_bytes()).expect("gzip");
    gz.finish().expect("gzip");
    std::fs::write(
        files.join("part-2.ndjson.zst"),
        zstd::encode_all(ndjson.as_bytes(), 3).expect("zstd"),
    )
    .expect("file");
    std::fs::write(files.join("other.txt"), "not matched").expect("file");
    let node = TestNode::start(&dir.path().join("n1")).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE l (id bigint, name text)")
        .await
        .expect("create");
    let load = |pattern: String| {
        std::process::Command::new(quarry())
            .args(["load", &pattern, "--table", "public.l"])
            .args(["--url", &format!("http://127.0.0.1:{}", node.http_port)])
            .args(["--pg", &format!("127.0.0.1:{}", node.pg_port)])
            .output()
            .expect("quarry load runs")
    };
    let done = load(files.join("part-*").display().to_string());
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let row = bigints(
        &node.client().await,
        "SELECT count(*), count(DISTINCT id), sum(id), \
         count(*) FILTER (WHERE name = 'c' || id OR name = 'j' || id) FROM l",
    )
    .await;
    assert_eq!(row, [500, 500, (0..500).sum::<i64>(), 500]);
    // A pattern that matches nothing, and a compressed Parquet file: clear
    // refusals, nothing loaded.
    let none = load(files.join("nothing-*.csv").display().to_string());
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no file matches"));
    std::fs::write(files.join("x.parquet.gz"), b"whatever").expect("file");
    let parquet = load(files.join("x.parquet.gz").display().to_string());
    assert!(!parquet.status.success());
    assert!(String::from_utf8_lossy(&parquet.stderr).contains("compressed Parquet"));
    let row = bigints(&node.client().await, "SELECT count(*) FROM l").await;
    assert_eq!(row, [500]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_load_logs_in_over_https_with_a_password_or_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    write_parquet(&files.join("a.parquet"), 0..1_000);
    let certs = dir.path().join("certs");
    quarry_cert(&certs, &["create-ca"]);
    quarry_cert(
        &certs,
        &["create-node", "--host", "localhost", "--host", "127.0.0.1"],
    );
    let password = "load-pw";
    let node = TestNode::start_secure(
        &dir.path().join("n1"),
        password,
        &[
            "--tls-cert",
            certs.join("node.crt").to_str().expect("utf-8"),
            "--tls-key",
            certs.join("node.key").to_str().expect("utf-8"),
        ],
    )
    .await;
    let url = format!("https://127.0.0.1:{}", node.http_port);
    let pg = format!("127.0.0.1:{}", node.pg_port);
    let ca = certs.join("ca.crt");
    let load = |table: &str, env: &[(&str, &str)], with_ca: bool| {
        let mut command = std::process::Command::new(quarry());
        command
            .arg("load")
            .arg(&files)
            .args(["--table", table, "--create", "--url", &url, "--pg", &pg])
            .env_remove("QUARRY_PASSWORD")
            .env_remove("QUARRY_TOKEN");
        if with_ca {
            command.arg("--ca").arg(&ca);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("quarry load runs")
    };
    // A password: --create over TLS, rows over HTTPS with HTTP Basic.
    let out = load("public.by_password", &[("QUARRY_PASSWORD", password)], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No credentials, or a CA the node's certificate is not from: refused,
    // nothing loaded.
    let out = load("public.refused", &[], true);
    assert!(!out.status.success());
    let out = load("public.untrusted", &[("QUARRY_PASSWORD", password)], false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("TLS") || stderr.contains("tls"),
        "{stderr}"
    );
    // An access token.
    let client = node.client().await;
    let token: String = client
        .query_one("CREATE ACCESS TOKEN loader", &[])
        .await
        .expect("token")
        .get(0);
    client
        .batch_execute("CREATE TABLE by_token (id bigint, name text)")
        .await
        .expect("table");
    let to_by_token = |token: Option<&str>| {
        let mut command = std::process::Command::new(quarry());
        command
            .arg("load")
            .arg(&files)
            .args(["--table", "public.by_token", "--url", &url, "--ca"])
            .arg(&ca)
            .env_remove("QUARRY_PASSWORD")
            .env_remove("QUARRY_TOKEN");
        if let Some(token) = token {
            command.env("QUARRY_TOKEN", token);
        }
        command.output().expect("quarry load runs")
    };
    // Over HTTPS without credentials: the node asks for a login.
    let out = to_by_token(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    let out = to_by_token(Some(&token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (table, rows) in [("by_password", 1_000i64), ("by_token", 1_000)] {
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(count, rows, "{table}");
    }
    let e = client
        .query("SELECT * FROM refused", &[])
        .await
        .expect_err("no table");
    assert_eq!(sqlstate(&e), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_load_tpch_through_the_streaming_api_gives_the_rows_copy_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("n1")).await;
    let pg = format!("127.0.0.1:{}", node.pg_port);
    let url = format!("http://127.0.0.1:{}", node.http_port);
    let load = |via: &str, schema: &str| {
        let output = std::process::Command::new(quarry())
            .args(["load", "tpch", "--scale-factor", "0.01", "--parts", "3"])
            .args(["--via", via, "--schema", schema, "--pg", &pg, "--url", &url])
            .output()
            .expect("quarry load runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let streamed = load("stream", "tpch_s");
    assert!(
        streamed.contains("tpch_s.lineitem: 60175 rows"),
        "{streamed}"
    );
    load("copy", "tpch_c");
    let client = node.client().await;
    // Every table holds the same rows both ways (types, decimals, dates
    // and strings as COPY parses them), and as many as TPC-H specifies.
    for (table, rows) in [
        ("region", 5),
        ("nation", 25),
        ("supplier", 100),
        ("customer", 1_500),
        ("part", 2_000),
        ("partsupp", 8_000),
        ("orders", 15_000),
        ("lineitem", 60_175),
    ] {
        let differ = format!(
            "SELECT (SELECT count(*) FROM tpch_s.{table}) AS n, \
             (SELECT count(*) FROM (SELECT * FROM tpch_s.{table} \
              EXCEPT SELECT * FROM tpch_c.{table}) AS d) AS differ"
        );
        assert_eq!(bigints(&client, &differ).await, [rows, 0], "{table}");
    }
    // Each table's rows came in one snapshot (its channels committed at once).
    let snapshots = "SELECT count(*) FROM quarry_system.snapshots \
                     WHERE table_schema = 'tpch_s' AND table_name = 'lineitem' \
                     AND operation <> 'create'";
    assert_eq!(bigints(&client, snapshots).await, [1]);
    // Run again, it leaves the loaded tables as they are.
    let again = load("stream", "tpch_s");
    assert!(!again.contains("tpch_s.lineitem:"), "{again}");
    assert_eq!(
        bigints(&client, "SELECT count(*) FROM tpch_s.lineitem").await,
        [60_175]
    );
}
