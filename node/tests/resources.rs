//! Query memory: a statement whose sort outgrows `--query-memory-mb` spills to
//! `<data_dir>/spill` and completes; the spill files are gone afterwards.

#[path = "support/node.rs"]
mod support;

use support::TestNode;

/// What a 2 M-row sort did on a node started with `flags`.
struct Sorted {
    /// The SortExec line of its EXPLAIN ANALYZE.
    line: String,
    /// Spill files left once it is done.
    left: usize,
    /// Its job's spilled bytes and peak memory (quarry_system.jobs).
    spilled_bytes: i64,
    peak_memory_bytes: i64,
}

async fn sort_metrics(flags: &[&str]) -> Sorted {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("n"), flags).await;
    let client = node.client().await;
    let sort = "select value, md5(value::text) h from generate_series(1, 2000000) order by h";
    let plan: Vec<String> = client
        .simple_query(&format!("explain analyze {sort}"))
        .await
        .expect("explain analyze")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .filter_map(|i| r.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let line = plan
        .iter()
        .flat_map(|p| p.lines())
        .find(|l| l.contains("SortExec"))
        .expect("a sort in the plan")
        .to_owned();
    // The sorted rows are all there, in order (checked as they stream).
    let rows = client
        .query_raw(sort, std::iter::empty::<i64>())
        .await
        .expect("sorted read");
    futures::pin_mut!(rows);
    let (mut count, mut previous) = (0u64, String::new());
    while let Some(row) = futures::StreamExt::next(&mut rows).await {
        let h: String = row.expect("row").get(1);
        assert!(h >= previous, "out of order at row {count}");
        previous = h;
        count += 1;
    }
    assert_eq!(count, 2_000_000);
    let job = client
        .query_one(
            "SELECT spilled_bytes::bigint, peak_memory_bytes::bigint FROM quarry_system.jobs \
             WHERE query = $1 AND state = 'DONE'",
            &[&sort],
        )
        .await
        .expect("the sort's job");
    Sorted {
        line,
        left: files_under(&node.data_dir.join("spill")),
        spilled_bytes: job.get(0),
        peak_memory_bytes: job.get(1),
    }
}

/// Regular files under `dir`, recursively (the session's temp directory
/// itself lives as long as the session).
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("spill dir")
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn spill_count(line: &str) -> u64 {
    line.split("spill_count=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_larger_than_the_memory_limit_spills_and_completes() {
    // Eight partitions sorting at once, as on an 8-core machine: their merges
    // and the merge of their outputs must all fit in the 96 MiB.
    let limited = sort_metrics(&["--query-memory-mb", "96", "--target-partitions", "8"]).await;
    let line = &limited.line;
    assert!(spill_count(line) > 0, "spilled under 96 MiB: {line}");
    assert_eq!(limited.left, 0, "no spill files remain");
    // Its job counts what it spilled, and its peak stays within the pool.
    assert!(limited.spilled_bytes > 0, "spilled bytes in the job");
    assert!(
        limited.peak_memory_bytes > 0 && limited.peak_memory_bytes <= 96 << 20,
        "peak {}",
        limited.peak_memory_bytes
    );
    // The same sort with the default limit stays in memory, above 96 MiB.
    let free = sort_metrics(&[]).await;
    let line = &free.line;
    assert_eq!(spill_count(line), 0, "in memory under the default: {line}");
    assert_eq!(free.spilled_bytes, 0);
    assert!(
        free.peak_memory_bytes > 96 << 20,
        "peak {} of a sort that needs more than 96 MiB",
        free.peak_memory_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_over_the_slot_count_wait_and_a_cancel_frees_the_slot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("n"), &["--query-slots", "1"]).await;
    // A holds the one slot with a long aggregate (it is cancelled below).
    let a = node.client().await;
    let cancel_a = a.cancel_token();
    let running = tokio::spawn(async move {
        a.simple_query("select count(distinct md5(value::text)) from generate_series(1, 100000000)")
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // B waits for the slot.
    let b = node.client().await;
    let waiting = tokio::spawn(async move { b.query_one("select 42::bigint", &[]).await });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "A still runs");
    assert!(!waiting.is_finished(), "B ran while A held the only slot");

    // C gives up waiting at its statement timeout, and takes no slot.
    let c = node.client().await;
    c.batch_execute("set statement_timeout = 300")
        .await
        .expect("set");
    let error = c
        .query_one("select 1::bigint", &[])
        .await
        .expect_err("timed out");
    assert_eq!(support::sqlstate(&error), "57014", "{error:?}");

    // Cancelling A frees its slot and B runs.
    cancel_a
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel a");
    let cancelled = running.await.expect("task").expect_err("A was cancelled");
    assert_eq!(support::sqlstate(&cancelled), "57014");
    let row = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("B runs once A is cancelled")
        .expect("task")
        .expect("B's row");
    assert_eq!(row.get::<_, i64>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_of_nested_values_spills_them_and_reads_them_back_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_with(&dir.path().join("n"), &["--query-memory-mb", "128"]).await;
    let client = node.client().await;
    // Batches of 1,024 rows: what the merges of sorted runs hold (they do
    // not spill) is a batch per run, and nested rows are wide; the rows
    // themselves still outgrow the pool and spill.
    client
        .batch_execute("SET datafusion.execution.batch_size = 1024")
        .await
        .expect("batch size");
    // Structs, arrays and JSON documents carried through a sort on another
    // key, larger than the memory limit.
    let sort = "SELECT v, STRUCT(v % 1000 AS k, 'name' || v AS name) AS s, \
                ['t' || (v % 3), md5(v::text)] AS tags, ('{\"v\": ' || v || '}')::json AS doc, \
                md5(v::text) AS h FROM generate_series(1, 600000) AS g(v) ORDER BY h";
    let plan: String = client
        .simple_query(&format!("EXPLAIN ANALYZE {sort}"))
        .await
        .expect("explain analyze")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
            _ => None,
        })
        .collect();
    let line = plan
        .lines()
        .find(|l| l.contains("SortExec"))
        .expect("a sort in the plan");
    assert!(spill_count(line) > 0, "spilled under 128 MiB: {line}");
    // Every row comes back in order with its nested values whole.
    let check = format!(
        "SELECT count(*), \
         count(*) FILTER (WHERE s.k <> v % 1000 OR s.name <> 'name' || v OR tags[1] <> 't' || (v % 3) \
                           OR tags[2] <> h OR (doc ->> 'v')::bigint <> v), \
         count(*) FILTER (WHERE h < previous) \
         FROM (SELECT *, lag(h, 1, '') OVER (ORDER BY h) AS previous FROM ({sort}) AS sorted) AS w"
    );
    let row = client.query_one(&check, &[]).await.expect("check");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (600_000, 0, 0)
    );
    assert_eq!(
        files_under(&node.data_dir.join("spill")),
        0,
        "no spill files remain"
    );
}
