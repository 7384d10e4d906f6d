//! The streaming API (`node/src/stream_api.rs`): appends to a channel at
//! an offset are written exactly once, refused requests write nothing,
//! acknowledged rows survive kill -9, and a writer may switch nodes.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use support::cluster::start_cluster;
use support::node::{TestNode, bigints, http_request};

const NDJSON: &str = "application/x-ndjson";
const ARROW: &str = "application/vnd.apache.arrow.stream";

/// POSTs `body` to channel `channel` of `table` on `node` at `offset`: the
/// status and the JSON answer.
async fn append(
    node: &TestNode,
    table: &str,
    channel: &str,
    offset: u64,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let path = format!("{table}/channels/{channel}/rows?offset={offset}");
    call(node, "POST", &path, content_type, body).await
}

/// `method` of `/v1/tables/{path}` on `node`: the status and the JSON
/// answer.
async fn call(
    node: &TestNode,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let url = format!("http://{}:{}/v1/tables/{path}", node.ip, node.http_port);
    let (status, body) = http_request(method, &url, content_type, body).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

/// GET of a channel: the status and the JSON answer.
async fn channel(node: &TestNode, table: &str, channel: &str) -> (u16, serde_json::Value) {
    let url = format!(
        "http://{}:{}/v1/tables/{table}/channels/{channel}",
        node.ip, node.http_port
    );
    let (status, body) = http_request("GET", &url, "text/plain", b"").await;
    (status, serde_json::from_str(&body).expect("json"))
}

async fn count(node: &TestNode, table: &str) -> i64 {
    node.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// An Arrow IPC stream of `ids` and `names` (fields id: int32, name: utf8).
fn arrow_body(ids: &[i32], names: &[&str]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names.to_vec())),
        ],
    )
    .expect("batch");
    let mut out = Vec::new();
    let mut writer =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).expect("writer");
    writer.write(&batch).expect("write");
    writer.finish().expect("finish");
    drop(writer);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_make_appends_exactly_once_and_refused_requests_write_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("n1"), &["--stream-body-limit-mb", "1"]).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE ev (id bigint NOT NULL, name text, amount double precision)")
        .await
        .expect("create");
    let (status, _) = channel(&node, "public.ev", "c1").await;
    assert_eq!(status, 404, "a channel never written");

    let rows = b"{\"id\": 1, \"name\": \"a\", \"amount\": 1.5}\n{\"id\": 2, \"name\": null}\n";
    let (status, answer) = append(&node, "public.ev", "c1", 0, NDJSON, rows).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(2))
    );
    // The retry of a request whose answer was lost: 409, written once.
    let (status, answer) = append(&node, "public.ev", "c1", 0, NDJSON, rows).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["next_offset"], 2);
    assert_eq!(answer["error"]["code"], "already_written");
    assert_eq!(count(&node, "ev").await, 2);
    // A gap: 400, nothing written.
    let (status, answer) = append(&node, "public.ev", "c1", 5, NDJSON, rows).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &serde_json::json!("offset_gap"))
    );
    assert_eq!(answer["next_offset"], 2);
    // Rows that do not fit: 400 naming the row and column; nothing of the
    // request is written, and the offset stays.
    for (body, code, detail) in [
        (
            &b"{\"id\": 3}\n{\"id\": \"x\"}\n"[..],
            "22P02",
            "row 2, column id",
        ),
        (b"{\"id\": 3, \"colour\": 1}\n", "42703", "row 1"),
        (b"{\"id\": 3}\n{\"name\": \"b\"}\n", "23502", "row 2"),
        (b"{\"id\": 3}\nnot json\n", "22P02", "row 2"),
        (b"{\"id\": [3]}\n", "42804", "row 1, column id"),
    ] {
        let (status, answer) = append(&node, "public.ev", "c1", 2, NDJSON, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        let shown = answer["error"]["detail"].as_str().unwrap_or_default();
        assert!(shown.starts_with(detail), "{answer}");
    }
    assert_eq!(count(&node, "ev").await, 2);
    let (status, answer) = append(&node, "public.nosuch", "c1", 0, NDJSON, rows).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &serde_json::json!("42P01"))
    );
    let (status, _) = append(&node, "public.ev", "c1", 2, "text/csv", b"3\n").await;
    assert_eq!(status, 415);
    let big = "{\"id\": 9}\n".repeat(200_000);
    let (status, answer) = append(&node, "public.ev", "c1", 2, NDJSON, big.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(count(&node, "ev").await, 2);

    // Arrow IPC: fields by name, cast to the columns' types; a missing
    // column is NULL.
    let body = arrow_body(&[3, 4, 5], &["c", "d", "e"]);
    let (status, answer) = append(&node, "public.ev", "c1", 2, ARROW, &body).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(5)),
        "{answer}"
    );
    let (status, answer) = append(&node, "public.ev", "c1", 2, ARROW, &body).await;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = append(&node, "public.ev", "c1", 5, ARROW, b"not arrow").await;
    assert_eq!(status, 400, "{answer}");
    // Channels are independent; each resumes from its own offset.
    let (status, answer) = append(&node, "public.ev", "c2", 0, NDJSON, b"{\"id\": 10}\n").await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(1))
    );
    let (status, answer) = channel(&node, "public.ev", "c1").await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(5))
    );

    let row = node
        .client()
        .await
        .query_one(
            "SELECT count(*), sum(id), count(name), sum(amount) FROM ev",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, f64>(3)
        ),
        (6, 25, 4, 1.5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_channel_shows_its_rows_only_when_committed_and_bad_rows_are_skipped_when_allowed()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("n1")).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE ev (id integer NOT NULL, name text)")
        .await
        .expect("create");
    let rows = b"{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n";
    let pending =
        |offset: u64| format!("public.ev/channels/load/rows?offset={offset}&pending=true");
    let (status, answer) = call(&node, "POST", &pending(0), NDJSON, rows).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(3)),
        "{answer}"
    );
    let body = arrow_body(&[4, 5], &["d", "e"]);
    let (status, answer) = call(&node, "POST", &pending(3), ARROW, &body).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(5)),
        "{answer}"
    );
    // Durable, not visible.
    assert_eq!(count(&node, "ev").await, 0);
    let (status, answer) = channel(&node, "public.ev", "load").await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        serde_json::json!({"next_offset": 5, "pending": true})
    );
    // A retry is told it was written; rows sent to be committed at once
    // are refused (409, 55000), nothing written.
    let (status, answer) = call(&node, "POST", &pending(3), ARROW, &body).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &serde_json::json!("already_written"))
    );
    let (status, answer) = append(&node, "public.ev", "load", 5, NDJSON, rows).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &serde_json::json!("55000")),
        "{answer}"
    );
    assert_eq!(count(&node, "ev").await, 0);
    // The commit shows them all at once; a retried commit answers the same.
    for _ in 0..2 {
        let (status, answer) = call(
            &node,
            "POST",
            "public.ev/channels/load/commit",
            "text/plain",
            b"",
        )
        .await;
        assert_eq!(
            (status, answer),
            (200, serde_json::json!({"next_offset": 5}))
        );
        assert_eq!(count(&node, "ev").await, 5);
    }
    let (_, answer) = channel(&node, "public.ev", "load").await;
    assert_eq!(
        answer,
        serde_json::json!({"next_offset": 5, "pending": false})
    );
    // A committed channel takes no more pending rows and is not discarded.
    let (status, _) = call(&node, "POST", &pending(5), NDJSON, rows).await;
    assert_eq!(status, 409);
    let (status, answer) = call(
        &node,
        "DELETE",
        "public.ev/channels/load",
        "text/plain",
        b"",
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &serde_json::json!("55000")),
        "{answer}"
    );
    // A discarded channel's rows are never seen; the channel is gone.
    let (status, _) = call(
        &node,
        "POST",
        "public.ev/channels/gone/rows?offset=0&pending=true",
        NDJSON,
        rows,
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = call(
        &node,
        "DELETE",
        "public.ev/channels/gone",
        "text/plain",
        b"",
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, serde_json::json!({"next_offset": 3}))
    );
    let (status, _) = channel(&node, "public.ev", "gone").await;
    assert_eq!(status, 404);
    let (status, answer) = call(
        &node,
        "POST",
        "public.ev/channels/never/commit",
        "text/plain",
        b"",
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &serde_json::json!("42704")),
        "{answer}"
    );
    assert_eq!(count(&node, "ev").await, 5);

    // max_bad_rows: two bad rows of five; one allowed refuses the request
    // naming one (columns are checked in order: the NULL id of row 4 is
    // met first, skipped, then row 2's id), two allowed skip both (they
    // keep their offsets) and list them by row.
    let mixed =
        b"{\"id\": 10}\n{\"id\": \"x\"}\n{\"id\": 12}\n{\"name\": \"no id\"}\n{\"id\": 14}\n";
    let skipping = |k: u64| format!("public.ev/channels/s/rows?offset=0&max_bad_rows={k}");
    let (status, answer) = call(&node, "POST", &skipping(1), NDJSON, mixed).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &serde_json::json!("22P02")),
        "{answer}"
    );
    assert_eq!(
        answer["error"]["detail"], "row 2, column id: \"x\"",
        "{answer}"
    );
    assert_eq!(count(&node, "ev").await, 5);
    let (status, answer) = call(&node, "POST", &skipping(2), NDJSON, mixed).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(5)),
        "{answer}"
    );
    let skipped = answer["skipped_rows"].as_array().expect("skipped rows");
    let listed: Vec<(u64, &str)> = skipped
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap_or(0),
                r["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(listed, [(2, "22P02"), (4, "23502")]);
    assert_eq!(skipped[0]["detail"], "row 2, column id: \"x\"");
    let sum = bigints(
        &node.client().await,
        "SELECT count(*), sum(id) FROM ev WHERE id >= 10",
    )
    .await;
    assert_eq!(sum, [3, 36]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_kill_9_and_a_writer_switches_nodes_with_its_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 3, &[]).await;
    nodes[0]
        .client()
        .await
        .batch_execute("CREATE TABLE clicks (id bigint, page text)")
        .await
        .expect("create");
    let rows = |from: u64, n: u64| -> Vec<u8> {
        (from..from + n)
            .map(|i| format!("{{\"id\": {i}, \"page\": \"/p{i}\"}}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let (status, answer) = append(&nodes[0], "public.clicks", "w", 0, NDJSON, &rows(0, 100)).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(100))
    );
    // The node that took the request dies at once after its answer.
    nodes[0].kill9();
    // The writer goes on through another node, from the offset it was given;
    // its retry of the first batch there is recognised.
    let (status, answer) = append(&nodes[1], "public.clicks", "w", 0, NDJSON, &rows(0, 100)).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (409, &serde_json::json!(100))
    );
    let (status, answer) =
        append(&nodes[1], "public.clicks", "w", 100, NDJSON, &rows(100, 50)).await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(150))
    );
    let (status, answer) = channel(&nodes[2], "public.clicks", "w").await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(150))
    );
    nodes[0].restart().await;
    for node in &nodes {
        let client = node.client().await;
        let row = bigints(
            &client,
            "SELECT count(*), count(DISTINCT id), max(id) FROM clicks",
        )
        .await;
        assert_eq!(row, [150, 150, 149]);
    }
}

/// Runs examples/stream_producer.py against `node`: its JSON summary.
fn producer(node: &TestNode, channel: &str, rows: u64, arrow: bool) -> serde_json::Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stream_producer.py");
    let mut command = std::process::Command::new("python3");
    command.arg(&script).args([
        "--url",
        &format!("http://{}:{}", node.ip, node.http_port),
        "--table",
        "public.events",
        "--channel",
        channel,
        "--rows",
        &rows.to_string(),
        "--batch",
        "1000",
    ]);
    if arrow {
        command.arg("--arrow");
    }
    let output = command
        .output()
        .expect("python3 runs (.ci/run installs requests and pyarrow into .ci/venv)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_resumes_where_its_channel_stands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("n1")).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE events (id bigint NOT NULL, name text, amount numeric(12, 2))")
        .await
        .expect("create");
    for (channel, arrow) in [("json", false), ("arrow", true)] {
        // A run that stops partway (its source had 1,500 rows then), and a
        // later one over the whole source: each row once.
        assert_eq!(producer(&node, channel, 1_500, arrow)["next_offset"], 1_500);
        assert_eq!(producer(&node, channel, 3_500, arrow)["next_offset"], 3_500);
        assert_eq!(producer(&node, channel, 3_500, arrow)["next_offset"], 3_500);
    }
    let row = node
        .client()
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT id), CAST(sum(amount) AS text) FROM events",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ),
        (7_000, 3_500, "3061625.00".to_owned())
    );
}

/// `quarry_system.tables`' data files, buffered files and buffered rows of
/// table `table`.
async fn files(node: &TestNode, table: &str) -> Vec<i64> {
    bigints(
        &node.client().await,
        &format!(
            "SELECT CAST(data_files AS BIGINT), CAST(buffered_files AS BIGINT), \
             CAST(buffered_rows AS BIGINT) FROM quarry_system.tables \
             WHERE table_schema = 'public' AND table_name = '{table}'"
        ),
    )
    .await
}

/// The id of table `table`'s newest snapshot.
async fn latest_snapshot(client: &tokio_postgres::Client, table: &str) -> i64 {
    bigints(
        client,
        &format!(
            "SELECT CAST(max(snapshot_id) AS BIGINT) FROM quarry_system.snapshots \
             WHERE table_name = '{table}'"
        ),
    )
    .await[0]
}

/// Kills `node` with -9 and starts it again with the compactor running
/// every second and moving buffered rows older than a second.
async fn kill_9_and_restart_with_a_short_buffer_age(node: &mut TestNode) {
    node.kill9();
    node.set_flags(&[
        "--compaction-interval-secs",
        "1",
        "--buffer-max-age-secs",
        "1",
    ]);
    node.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_in_the_buffer_and_move_into_one_data_file_that_old_snapshots_still_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node =
        TestNode::start_with(&dir.path().join("n1"), &["--compaction-interval-secs", "1"]).await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE ticks (id bigint, v text)")
        .await
        .expect("create");
    let mut offset = 0;
    for batch in 0..12u64 {
        let body: String = (0..10)
            .map(|i| format!("{{\"id\": {}, \"v\": \"b{batch}\"}}\n", batch * 10 + i))
            .collect();
        let (status, answer) =
            append(&node, "public.ticks", "w", offset, NDJSON, body.as_bytes()).await;
        assert_eq!(status, 200, "{answer}");
        offset = answer["next_offset"].as_u64().expect("offset");
    }
    // Held in the buffer (it is young and small), visible at once.
    assert_eq!(files(&node, "ticks").await, [0, 12, 120]);
    let everything = "SELECT count(*), count(DISTINCT id), sum(id), \
                      count(*) FILTER (WHERE v = 'b3' AND id BETWEEN 30 AND 39) FROM ticks";
    let expected = [120, 120, (0..120).sum::<i64>(), 10];
    assert_eq!(bigints(&client, everything).await, expected);
    let before = latest_snapshot(&client, "ticks").await;
    // The buffer is in the Raft log: it survives kill -9. Restarted with a
    // short buffer age, the compactor moves it into one data file.
    drop(client);
    kill_9_and_restart_with_a_short_buffer_age(&mut node).await;
    let client = node.client().await;
    assert_eq!(bigints(&client, everything).await, expected);
    support::cluster::wait_for(
        std::time::Duration::from_secs(60),
        "the compactor moves the buffer",
        || async { files(&node, "ticks").await == [1, 0, 0] },
    )
    .await;
    assert_eq!(bigints(&client, everything).await, expected);
    // The snapshot before the move still reads its 12 buffered files' rows,
    // now from the data file they moved to.
    let old = everything.replace("FROM ticks", &format!("FROM ticks VERSION AS OF {before}"));
    assert_eq!(bigints(&client, &old).await, expected);
    // Small INSERTs wait in the buffer too. Moved one at a time (each
    // older than the buffer's age before the next), they make small data
    // files, merged with the first once there are eight.
    for id in 120..127 {
        client
            .execute(&format!("INSERT INTO ticks VALUES ({id}, 'i')"), &[])
            .await
            .expect("insert");
        support::cluster::wait_for(
            std::time::Duration::from_secs(60),
            "the compactor moves the INSERT's row",
            || async { files(&node, "ticks").await[1] == 0 },
        )
        .await;
    }
    support::cluster::wait_for(
        std::time::Duration::from_secs(60),
        "the compactor merges the small files",
        || async { files(&node, "ticks").await == [1, 0, 0] },
    )
    .await;
    let row = bigints(
        &client,
        "SELECT count(*), count(DISTINCT id), sum(id) FROM ticks",
    )
    .await;
    assert_eq!(row, [127, 127, (0..127).sum::<i64>()]);
    assert_eq!(bigints(&client, &old).await, expected);
    // The channel goes on where it was.
    let (status, answer) =
        append(&node, "public.ticks", "w", 120, NDJSON, b"{\"id\": 120}\n").await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(121))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_buffer_moves_loses_and_repeats_no_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = [
        "--compaction-interval-secs",
        "1",
        "--buffer-max-age-secs",
        "1",
    ];
    let mut node = TestNode::start_with(&dir.path().join("n1"), &flags).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE events (id bigint, payload text)")
        .await
        .expect("create");
    let mut offset = 0u64;
    let mut moved_at_least_once = false;
    for round in 0..5u64 {
        // Enough rows for a move of a few hundred milliseconds.
        for _ in 0..4 {
            let body: String = (offset..offset + 20_000)
                .map(|i| format!("{{\"id\": {i}, \"payload\": \"event {i} of round {round}\"}}\n"))
                .collect();
            let (status, answer) =
                append(&node, "public.events", "w", offset, NDJSON, body.as_bytes()).await;
            assert_eq!(status, 200, "{answer}");
            offset = answer["next_offset"].as_u64().expect("offset");
        }
        // Killed at a different point of the compactor's second each round.
        tokio::time::sleep(std::time::Duration::from_millis(150 + 250 * round)).await;
        node.kill9();
        node.restart().await;
        let client = node.client().await;
        let total = offset as i64;
        assert_eq!(
            bigints(
                &client,
                "SELECT count(*), count(DISTINCT id), max(id) FROM events"
            )
            .await,
            [total, total, total - 1],
            "round {round}"
        );
        moved_at_least_once |= files(&node, "events").await[0] > 0;
    }
    support::cluster::wait_for(
        std::time::Duration::from_secs(60),
        "the compactor moves the buffer",
        || async { files(&node, "events").await[1] == 0 },
    )
    .await;
    assert!(moved_at_least_once || files(&node, "events").await[0] > 0);
    let total = offset as i64;
    assert_eq!(
        bigints(
            &node.client().await,
            "SELECT count(*), count(DISTINCT id), max(id) FROM events"
        )
        .await,
        [total, total, total - 1]
    );
    let (status, answer) = channel(&node, "public.events", "w").await;
    assert_eq!(
        (status, &answer["next_offset"]),
        (200, &serde_json::json!(offset))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_inserts_wait_in_the_buffer_a_transaction_reads_its_own_and_kill_9_keeps_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node =
        TestNode::start_with(&dir.path().join("n1"), &["--compaction-interval-secs", "1"]).await;
    let client = node.client().await;
    let other = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE acc (id bigint, v text); \
             INSERT INTO acc VALUES (1, 'a'), (2, 'b')",
        )
        .await
        .expect("create and insert");
    // The INSERT's file is in the ingest buffer, not in a stripe.
    assert_eq!(files(&node, "acc").await, [0, 1, 2]);
    let before_update = latest_snapshot(&client, "acc").await;
    client
        .batch_execute("INSERT INTO acc SELECT g, 'g' FROM generate_series(3, 10) AS s(g)")
        .await
        .expect("insert select");
    assert_eq!(files(&node, "acc").await, [0, 2, 10]);
    // A transaction reads, changes and rolls back its own held rows; no one
    // else sees them before COMMIT.
    let summary = "SELECT count(*), sum(id), count(*) FILTER (WHERE v = 'u') FROM acc";
    client
        .batch_execute(
            "BEGIN; \
             INSERT INTO acc SELECT g, 't' FROM generate_series(11, 20) AS s(g); \
             UPDATE acc SET v = 'u' WHERE id = 15; \
             DELETE FROM acc WHERE id = 16; \
             SAVEPOINT s; \
             INSERT INTO acc VALUES (100, 'r'); \
             ROLLBACK TO SAVEPOINT s",
        )
        .await
        .expect("transaction");
    let mine = [19, (1..=20).sum::<i64>() - 16, 1];
    assert_eq!(bigints(&client, summary).await, mine);
    assert_eq!(
        bigints(&other, summary).await,
        [10, (1..=10).sum::<i64>(), 0]
    );
    assert_eq!(files(&node, "acc").await, [0, 2, 10]);
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(bigints(&other, summary).await, mine);
    let [data_files, _, buffered_rows] = files(&node, "acc").await[..] else {
        panic!("three counts");
    };
    assert_eq!((data_files, buffered_rows), (0, 19));
    client
        .batch_execute("BEGIN; INSERT INTO acc VALUES (1000, 'x'); ROLLBACK")
        .await
        .expect("rolled back");
    assert_eq!(bigints(&other, summary).await, mine);
    // A file of many rows goes into a stripe.
    client
        .batch_execute("INSERT INTO acc SELECT g, 'big' FROM generate_series(1001, 201000) AS s(g)")
        .await
        .expect("large insert");
    assert_eq!(files(&node, "acc").await[..2], [1, 3]);
    // An UPDATE replaces a buffered file; the compactor stores the replaced
    // one in a stripe, where time travel still reads it.
    client
        .batch_execute("UPDATE acc SET v = 'w' WHERE id = 1")
        .await
        .expect("update");
    support::cluster::wait_for(
        std::time::Duration::from_secs(60),
        "the compactor spills the replaced buffered file",
        || async { node.metric("quarry_buffer_files_spilled_total").await == Some(1.0) },
    )
    .await;
    let old =
        format!("SELECT count(*) FILTER (WHERE v = 'a') FROM acc VERSION AS OF {before_update}");
    assert_eq!(bigints(&client, &old).await, [1]);
    let everything = "SELECT count(*), sum(id), count(*) FILTER (WHERE v = 'w') FROM acc";
    let expected = [
        19 + 200_000,
        (1..=20).sum::<i64>() - 16 + (1001..=201_000).sum::<i64>(),
        1,
    ];
    assert_eq!(bigints(&client, everything).await, expected);
    // The buffer is in the Raft log: kill -9 keeps every committed row.
    drop((client, other));
    kill_9_and_restart_with_a_short_buffer_age(&mut node).await;
    let client = node.client().await;
    assert_eq!(bigints(&client, everything).await, expected);
    assert_eq!(bigints(&client, &old).await, [1]);
    support::cluster::wait_for(
        std::time::Duration::from_secs(60),
        "the compactor moves the buffer",
        || async { files(&node, "acc").await[1..] == [0, 0] },
    )
    .await;
    assert_eq!(bigints(&client, everything).await, expected);
    assert_eq!(bigints(&client, &old).await, [1]);
}

/// libfaketime (Debian's `faketime` package), which shifts the realtime
/// clock of the process it is preloaded into.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_channel_left_for_seven_days_is_discarded_and_a_younger_one_kept() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = TestNode::start(&dir.path().join("n1")).await;
    node.client()
        .await
        .batch_execute("CREATE TABLE ev (id integer, name text)")
        .await
        .expect("create");
    let pending =
        |channel: &str| format!("public.ev/channels/{channel}/rows?offset=0&pending=true");
    let rows = b"{\"id\": 1}\n{\"id\": 2}\n";
    let (status, answer) = call(&node, "POST", &pending("old"), NDJSON, rows).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = append(&node, "public.ev", "kept", 0, NDJSON, rows).await;
    assert_eq!(status, 200, "{answer}");
    // Six days on, a second pending channel is written.
    node.kill9();
    fn faked(days: &str) -> [(&str, &str); 3] {
        [
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", days),
            ("DONT_FAKE_MONOTONIC", "1"),
        ]
    }
    node.set_env(&faked("+6d"));
    node.set_flags(&["--retention-check-secs", "1"]);
    node.restart().await;
    let (status, answer) = call(&node, "POST", &pending("young"), NDJSON, rows).await;
    assert_eq!(status, 200, "{answer}");
    // Eight days after the first: it is discarded, the second kept.
    node.kill9();
    node.set_env(&faked("+8d"));
    node.restart().await;
    support::cluster::wait_for(
        std::time::Duration::from_secs(30),
        "the collector discards the week-old pending channel",
        || async { channel(&node, "public.ev", "old").await.0 == 404 },
    )
    .await;
    let (status, answer) = channel(&node, "public.ev", "young").await;
    assert_eq!(
        (status, answer),
        (200, serde_json::json!({"next_offset": 2, "pending": true}))
    );
    // None of the discarded rows was ever visible; the committed ones stay.
    assert_eq!(count(&node, "ev").await, 2);
    let (status, answer) = call(
        &node,
        "POST",
        "public.ev/channels/young/commit",
        NDJSON,
        b"",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(count(&node, "ev").await, 4);
}

/// A JSON call of the query API: status and body.
async fn api(method: &str, url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, answer) =
        support::node::http_call(method, url, &[("Content-Type", "application/json")], &body).await;
    let json = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}: {}", String::from_utf8_lossy(&answer)));
    (status, json)
}

#[tokio::test]
async fn the_query_api_pages_a_million_rows_exactly_and_cancels_and_reports_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let base = format!("http://127.0.0.1:{}", node.http_port);
    let sql = "SELECT v, v * 2 AS w FROM generate_series(1, 1000000) AS g(v) ORDER BY v";
    let (status, first) = api(
        "POST",
        &format!("{base}/v1/queries"),
        &serde_json::json!({"sql": sql, "timeout_ms": 60000, "max_rows": 5}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["state"], "DONE");
    assert_eq!(first["total_rows"], 1_000_000);
    assert_eq!(first["schema"][1]["name"], "w");
    assert_eq!(first["rows"][4], serde_json::json!(["5", "10"]));
    assert_eq!(first["next_page_token"], "5");
    let job = first["job_id"].as_str().expect("job id").to_owned();
    // Every page, in order: exactly the query's rows.
    let mut token = Some("5".to_owned());
    let mut next_v = 6u64;
    while let Some(from) = token {
        let (status, page) = api(
            "GET",
            &format!("{base}/v1/jobs/{job}/results?page_token={from}&max_rows=100000"),
            &serde_json::Value::Null,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for row in page["rows"].as_array().expect("rows") {
            let v = next_v.to_string();
            let w = (next_v * 2).to_string();
            assert_eq!(row, &serde_json::json!([v, w]));
            next_v += 1;
        }
        token = page["next_page_token"].as_str().map(str::to_owned);
    }
    assert_eq!(next_v, 1_000_001);
    // The last rows as Arrow IPC.
    let (status, head, bytes) = support::node::http_call(
        "GET",
        &format!("{base}/v1/jobs/{job}/results?page_token=999990&max_rows=100"),
        &[("Accept", "application/vnd.apache.arrow.stream")],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-next-page-token"),
        "{head}"
    );
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
        .expect("an Arrow stream");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 10);
    // The job's statistics, from GET and from SQL.
    let (status, got) = api(
        "GET",
        &format!("{base}/v1/jobs/{job}"),
        &serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["statistics"]["row_count"], 1_000_000);
    assert_eq!(got["client"], "http");
    let client = node.client().await;
    let (state, rows) = {
        let row = client
            .query_one(
                "SELECT state, row_count::bigint FROM quarry_system.jobs WHERE job_id = $1",
                &[&job],
            )
            .await
            .expect("the API's job in SQL");
        (row.get::<_, String>(0), row.get::<_, i64>(1))
    };
    assert_eq!((state.as_str(), rows), ("DONE", 1_000_000));
    // Errors carry the SQLSTATE.
    let (status, failed) = api(
        "POST",
        &format!("{base}/v1/queries"),
        &serde_json::json!({"sql": "SELECT * FROM nowhere"}),
    )
    .await;
    assert_eq!(
        (status, &failed["error"]["code"]),
        (404, &serde_json::json!("42P01"))
    );
    let (status, _, _) = support::node::http_call(
        "POST",
        &format!("{base}/v1/queries"),
        &[("Content-Type", "application/json")],
        b"{\"query\": 1}",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(
        "GET",
        &format!("{base}/v1/jobs/1-ffff"),
        &serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    // A long job returns RUNNING, and DELETE cancels it.
    let (status, running) = api(
        "POST",
        &format!("{base}/v1/queries"),
        &serde_json::json!({
            "sql": "SELECT count(*) FROM generate_series(1, 10000000000) AS g(v) WHERE v % 7 = 3",
            "timeout_ms": 300
        }),
    )
    .await;
    assert_eq!(
        (status, &running["state"]),
        (202, &serde_json::json!("RUNNING"))
    );
    let long = running["job_id"].as_str().expect("id").to_owned();
    let (status, cancelled) = api(
        "DELETE",
        &format!("{base}/v1/jobs/{long}"),
        &serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    let waiting = std::time::Instant::now();
    loop {
        let (_, job) = api(
            "GET",
            &format!("{base}/v1/jobs/{long}"),
            &serde_json::Value::Null,
        )
        .await;
        if job["state"] == "DONE" {
            assert_eq!(job["error"]["code"], "57014", "{job}");
            break;
        }
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(30),
            "{job}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = api(
        "DELETE",
        &format!("{base}/v1/jobs/{long}"),
        &serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 409);
}
