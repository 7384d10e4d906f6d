//! Distributed execution on three real nodes: TPC-H SF 0.01 loaded in three
//! parts per large table (so every node holds a share), the 22 queries equal
//! DuckDB's answers, more queries agree with the same queries run on one node
//! (`SET distsql = off`), EXPLAIN ANALYZE shows the stages, a cancelled query
//! stops its fragments on every node, and a node killed mid-query fails the
//! query with a retryable error.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;

    #[path = "tpch.rs"]
    pub mod tpch;
}

use std::process::Command;
use std::time::{Duration, Instant};

use support::cluster::{start_cluster, wait_for};
use support::node::{TestNode, sqlstate};
use tokio_postgres::{Client, NoTls};

async fn loaded_cluster(dir: &std::path::Path) -> Vec<TestNode> {
    // Queries reading under 1 MiB run where they arrive (distsql = auto).
    let nodes = start_cluster(dir, 3, &["--distribute-min-mb", "1"]).await;
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["load", "tpch", "--scale-factor", "0.01", "--parts", "3"])
        .args(["--pg", &format!("127.0.0.1:{}", nodes[0].pg_port)])
        .args(["--url", &format!("http://127.0.0.1:{}", nodes[0].http_port)])
        .output()
        .expect("quarry load runs");
    assert!(
        output.status.success(),
        "load failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    nodes
}

/// A client of the TPC-H schema whose every query is distributed.
async fn tpch_client(node: &TestNode) -> Client {
    let client = node.client().await;
    client
        .batch_execute("SET search_path = tpch; SET distsql = on")
        .await
        .expect("search_path, distsql");
    client
}

async fn text(client: &Client, sql: &str) -> String {
    support::tpch::rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .map(|r| r.join(" | "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The task sections of an EXPLAIN ANALYZE ("  task T on node N: ...") by node.
fn task_sections(plan: &str, node: u64) -> Vec<String> {
    let header = format!(" on node {node}: ");
    let mut sections = Vec::new();
    let mut current: Option<String> = None;
    for line in plan.lines() {
        if line.starts_with("  task ") || line.starts_with("Stage ") {
            if let Some(section) = current.take() {
                sections.push(section);
            }
            if line.starts_with("  task ") && line.contains(&header) {
                current = Some(String::new());
            }
        }
        if let Some(section) = &mut current {
            section.push_str(line);
            section.push('\n');
        }
    }
    sections.extend(current);
    sections
}

/// An EXPLAIN ANALYZE line's `output_rows` metric (DataFusion prints
/// `1.50 K` for 1,500).
fn output_rows(line: &str) -> Option<f64> {
    let rest = &line[line.find("output_rows=")? + "output_rows=".len()..];
    let value = &rest[..rest.find(',').unwrap_or(rest.len())];
    let (number, scale) = match value.split_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "B")) => (n, 1e9),
        _ => (value, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The scans in an EXPLAIN ANALYZE `plan` that read `columns` (as printed
/// in `projection=[…]`).
fn scans<'a>(plan: &'a str, columns: &str) -> Vec<&'a str> {
    let projection = format!("projection=[{columns}]");
    plan.lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains(&projection))
        .collect()
}

/// The rows `scans` read, together.
fn rows_read(scans: &[&str]) -> f64 {
    scans
        .iter()
        .map(|l| output_rows(l).unwrap_or_else(|| panic!("no output_rows in {l}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_three_nodes_tpch_matches_duckdb_and_queries_match_one_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = loaded_cluster(dir.path()).await;
    // A follower coordinates: nothing depends on the Raft leader.
    let client = tpch_client(&nodes[1]).await;
    let failures = support::tpch::mismatches(&client).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Q3 scans on every node and shuffles; Q1 aggregates partially before
    // its exchange.
    let q3 = support::tpch::query(3);
    let plan = text(&client, &format!("EXPLAIN ANALYZE {q3}")).await;
    assert!(plan.contains("shuffle by hash"), "{plan}");
    for node in 1..=3 {
        let scans = task_sections(&plan, node)
            .iter()
            .flat_map(|s| s.lines())
            .filter(|l| {
                l.contains("DataSourceExec")
                    && l.contains("output_rows=")
                    && !l.contains("output_rows=0,")
            })
            .count();
        assert!(scans > 0, "no scan with rows on node {node}:\n{plan}");
    }
    let q1 = support::tpch::query(1);
    let plan = text(&client, &format!("EXPLAIN ANALYZE {q1}")).await;
    let shuffle = plan
        .split("Stage ")
        .find(|s| s.contains("shuffle by hash"))
        .unwrap_or_else(|| panic!("Q1 has no shuffle:\n{plan}"));
    assert!(
        shuffle.contains("AggregateExec: mode=Partial"),
        "no partial aggregate below the shuffle:\n{plan}"
    );
    // Q18's IN subquery keeps 2 of 15,000 orders. The join that builds on it
    // runs in another stage than the scans of orders, which still read only
    // the matching rows: the join's dynamic filter reached them.
    let q18 = support::tpch::query(18);
    let plan = text(&client, &format!("EXPLAIN ANALYZE {q18}")).await;
    let orders_read = rows_read(&scans(
        &plan,
        "o_orderkey, o_custkey, o_totalprice, o_orderdate",
    ));
    assert!(
        orders_read > 0.0 && orders_read < 100.0,
        "orders scans read {orders_read} rows:\n{plan}"
    );
    assert!(
        plan.split("Stage ").any(|stage| stage.contains("RightSemi")
            && !stage.contains("projection=[o_orderkey, o_custkey")),
        "the semi join and the orders scans share a stage:\n{plan}"
    );
    // A fifth of the orders are urgent: some 3,000 keys, too many for
    // DataFusion's default key list (150 a join partition), spread over the
    // whole key range. With no join collected into one partition, both sides
    // are shuffled and the join runs in another stage than the lineitem
    // scans; its filter still reaches them as the keys themselves (their
    // bounds alone would pass every row), and the scans read about a fifth of
    // lineitem's 60,175 rows.
    let partitioned = tpch_client(&nodes[1]).await;
    partitioned
        .batch_execute(
            "SET datafusion.optimizer.hash_join_single_partition_threshold = 0; \
             SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
        )
        .await
        .expect("no join collected into one partition");
    let urgent = "SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey \
                  WHERE o_orderpriority = '1-URGENT'";
    let plan = text(&partitioned, &format!("EXPLAIN ANALYZE {urgent}")).await;
    let lineitem_read = rows_read(&scans(&plan, "l_orderkey"));
    assert!(
        lineitem_read > 0.0 && lineitem_read < 20_000.0,
        "lineitem scans read {lineitem_read} rows:\n{plan}"
    );
    assert!(
        plan.split("Stage ")
            .any(|stage| stage.contains("HashJoinExec")
                && !stage.contains("projection=[l_orderkey]")),
        "the join and the lineitem scans share a stage:\n{plan}"
    );
    // Three fifths of the orders: some 9,000 keys, more than a join
    // partition writes as a list. Each building task sends a Bloom filter of
    // its keys instead (bounds alone would pass every lineitem row), and the
    // scans read about three fifths of lineitem, and a hundredth of the rest.
    let common = "SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey \
                  WHERE o_orderpriority IN ('3-MEDIUM', '4-NOT SPECIFIED', '5-LOW')";
    let plan = text(&partitioned, &format!("EXPLAIN ANALYZE {common}")).await;
    let lineitem_scans = scans(&plan, "l_orderkey");
    let lineitem_read = rows_read(&lineitem_scans);
    assert!(
        lineitem_read > 30_000.0 && lineitem_read < 40_000.0,
        "lineitem scans read {lineitem_read} rows:\n{plan}"
    );
    assert!(
        !lineitem_scans.is_empty()
            && lineitem_scans
                .iter()
                .all(|scan| scan.contains("bloom_filter([")),
        "the lineitem scans do not test a Bloom filter:\n{plan}"
    );
    let one_node = tpch_client(&nodes[2]).await;
    one_node
        .batch_execute("SET distsql = off")
        .await
        .expect("distsql off");
    assert_eq!(
        text(&partitioned, common).await,
        text(&one_node, common).await
    );
    // All the orders: every lineitem row has its order, so no Bloom filter
    // is built (it would rule out nothing), and only the bounds travel.
    let all = "SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey";
    let plan = text(&partitioned, &format!("EXPLAIN ANALYZE {all}")).await;
    assert!(
        plan.contains("projection=[l_orderkey]") && !plan.contains("bloom_filter(["),
        "a Bloom filter of a whole table's keys:\n{plan}"
    );
    // Q10 joins lineitem with customers' orders, which are gathered from a
    // stage of their own: each task recomputes that side whole, so the
    // lineitem scans still divide among all three nodes.
    let q10 = support::tpch::query(10);
    let plan = text(&client, &format!("EXPLAIN {q10}")).await;
    let lineitem_stages: Vec<&str> = plan
        .split("Stage ")
        .filter(|stage| stage.contains("projection=[l_orderkey, l_extendedprice, l_discount]"))
        .collect();
    assert!(
        !lineitem_stages.is_empty()
            && lineitem_stages
                .iter()
                .all(|stage| stage.contains("3 tasks on nodes [1, 2, 3]")),
        "lineitem is not scanned on every node:\n{plan}"
    );
    let explain = text(&client, &format!("EXPLAIN {q1}")).await;
    assert!(
        explain.contains("distributed_plan") && explain.contains("3 tasks on nodes [1, 2, 3]"),
        "{explain}"
    );
    // By default (distsql = auto) a query is distributed only when its scans
    // read enough (here 1 MiB): Q1 reads lineitem, a count of nation does not.
    let auto = nodes[1].client().await;
    auto.batch_execute("SET search_path = tpch")
        .await
        .expect("search_path");
    assert_eq!(text(&auto, "SHOW distsql").await, "auto");
    let explain = text(&auto, &format!("EXPLAIN {q1}")).await;
    assert!(explain.contains("distributed_plan"), "{explain}");
    let explain = text(&auto, "EXPLAIN SELECT count(*) FROM nation").await;
    assert!(!explain.contains("distributed_plan"), "{explain}");
    let distsql = auto
        .batch_execute("SET distsql = sometimes")
        .await
        .expect_err("not a value of distsql");
    assert_eq!(sqlstate(&distsql), "22023", "{distsql:?}");

    // More shapes agree between three nodes and one.
    let local = tpch_client(&nodes[2]).await;
    local
        .batch_execute("SET distsql = off")
        .await
        .expect("distsql off");
    let queries = [
        // Three large tables joined.
        "SELECT c_nationkey, count(*), sum(l_extendedprice) FROM customer \
         JOIN orders ON c_custkey = o_custkey JOIN lineitem ON l_orderkey = o_orderkey \
         GROUP BY c_nationkey ORDER BY c_nationkey",
        // Window functions over a shuffle.
        "SELECT o_custkey, o_orderkey, rank() OVER (PARTITION BY o_custkey ORDER BY o_totalprice DESC, o_orderkey) \
         FROM orders WHERE o_custkey < 40 ORDER BY 1, 2",
        "SELECT l_orderkey, l_linenumber, sum(l_quantity) OVER (ORDER BY l_orderkey, l_linenumber) \
         FROM lineitem WHERE l_orderkey < 200 ORDER BY 1, 2",
        // Subqueries: correlated, IN, EXISTS, scalar.
        "SELECT count(*) FROM orders o WHERE o_totalprice > \
         (SELECT avg(o_totalprice) FROM orders WHERE o_custkey = o.o_custkey)",
        "SELECT count(*) FROM customer WHERE c_custkey IN (SELECT o_custkey FROM orders WHERE o_orderstatus = 'F')",
        "SELECT count(*) FROM part WHERE NOT EXISTS (SELECT 1 FROM partsupp WHERE ps_partkey = p_partkey AND ps_availqty < 100)",
        "SELECT count(*) FROM lineitem WHERE l_extendedprice > (SELECT avg(l_extendedprice) FROM lineitem)",
        // Outer joins whose unmatched rows come from either side.
        "SELECT count(*), count(o_orderkey) FROM customer LEFT JOIN orders ON c_custkey = o_custkey AND o_orderpriority = '1-URGENT'",
        "SELECT count(*) FROM orders FULL JOIN customer ON c_custkey = o_custkey WHERE c_custkey IS NULL OR o_orderkey IS NULL",
        // ORDER BY ... LIMIT, DISTINCT, UNION ALL with constants.
        "SELECT l_orderkey, l_extendedprice FROM lineitem ORDER BY l_extendedprice DESC, l_orderkey LIMIT 7",
        "SELECT count(DISTINCT l_suppkey), count(DISTINCT l_partkey) FROM lineitem",
        "SELECT * FROM (SELECT n_name FROM nation UNION ALL SELECT 'nowhere') ORDER BY 1",
    ];
    for sql in queries {
        assert_eq!(
            text(&client, sql).await,
            text(&local, sql).await,
            "three nodes and one disagree on {sql}"
        );
    }

    // Rows deleted by deletion vectors (a few of each lineitem file) stay
    // deleted in the scans of every node, which take the vectors from
    // their own replica of the catalog.
    let deleted = client
        .execute("DELETE FROM lineitem WHERE l_orderkey % 97 = 0", &[])
        .await
        .expect("delete");
    assert!(deleted > 0);
    // The follower that coordinates must have the commit before it plans.
    wait_for(
        Duration::from_secs(10),
        "the delete reaches every node",
        || async {
            text(
                &local,
                "SELECT count(*) FROM lineitem WHERE l_orderkey % 97 = 0",
            )
            .await
                == "0"
        },
    )
    .await;
    let deleted_rows = text(
        &client,
        "SELECT deleted_rows FROM quarry_system.tables WHERE table_name = 'lineitem'",
    )
    .await;
    assert_eq!(deleted_rows, deleted.to_string(), "not deleted by vector");
    for sql in [
        "SELECT count(*), sum(l_quantity) FROM lineitem",
        "SELECT l_returnflag, count(*), sum(l_extendedprice) FROM lineitem GROUP BY 1 ORDER BY 1",
        "SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey WHERE o_orderkey % 97 = 0",
    ] {
        assert_eq!(
            text(&client, sql).await,
            text(&local, sql).await,
            "three nodes and one disagree after the delete on {sql}"
        );
    }
    assert_eq!(
        text(&client, "SELECT count(*) FROM lineitem").await,
        (60_175 - deleted).to_string()
    );
}

/// The node's `quarry_fragments_running` gauge; None until the node has
/// started a fragment (so a node that never ran one cannot pass for one
/// that stopped them all).
async fn fragments_running(node: &TestNode) -> Option<f64> {
    node.metric("quarry_fragments_running").await
}

/// Waits until every one of `nodes` holds no fragment (having run one).
async fn all_stopped(nodes: &[TestNode]) {
    for (i, node) in nodes.iter().enumerate() {
        let waiting = Instant::now();
        loop {
            let running = fragments_running(node).await;
            if running == Some(0.0) {
                break;
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(15),
                "nodes[{i}] still holds {running:?} fragments after 15 s; its log:\n{}\n\
                 the coordinator's (nodes[0]) log:\n{}",
                node.log(),
                nodes[0].log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A query long enough to cancel or to kill a node under, busy on every node
/// to its end: an MD5 of each of 180 M pairs of lineitem rows (a minute on
/// three debug nodes), spread over the nodes by the join's shuffle. Every use
/// ends it early (cancel, timeout, a killed node). It must outlast the test's
/// reaction by far: a node whose share of the join is done and fetched is no
/// longer needed, and killing it then rightly fails nothing (with a query of
/// 36 M pairs that happened under load).
const LONG: &str = "SELECT count(*) FROM lineitem a \
                    JOIN lineitem b ON a.l_suppkey % 20 = b.l_suppkey % 20 \
                    WHERE md5(a.l_comment || b.l_comment) < '4'";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_fragments_everywhere_and_a_dead_node_fails_the_query_retryably() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = loaded_cluster(dir.path()).await;
    let client = tpch_client(&nodes[0]).await;

    // Cancel: the query fails with 57014 and no node keeps a fragment.
    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let error = client
        .simple_query(LONG)
        .await
        .expect_err("the query was cancelled");
    assert_eq!(sqlstate(&error), "57014", "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    canceller.await.expect("task").expect("cancel sent");
    all_stopped(&nodes).await;
    // The node still answers, and its query slot is free again.
    assert_eq!(text(&client, "SELECT count(*) FROM orders").await, "15000");

    // statement_timeout ends it the same way.
    client
        .batch_execute("SET statement_timeout = '1s'")
        .await
        .expect("set");
    let error = client.simple_query(LONG).await.expect_err("timed out");
    assert_eq!(sqlstate(&error), "57014", "{error:?}");
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");
    all_stopped(&nodes).await;

    // A node killed mid-query: a clear, retryable error within seconds. The
    // coordinator must see node 3 alive, or it plans around it.
    wait_for(
        Duration::from_secs(30),
        "node 1 sees all three nodes alive",
        || async {
            let rows = support::cluster::node_rows(&nodes[0]).await;
            rows.len() == 3 && rows.iter().all(|r| r.state == "alive")
        },
    )
    .await;
    let query = tokio::spawn({
        let client = client;
        async move {
            let started = Instant::now();
            let result = client.simple_query(LONG).await.map(|messages| {
                messages
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .unwrap_or_default()
            });
            (result, started.elapsed(), client)
        }
    });
    // Kill the node once its part is being fetched: the query is then past
    // its start (a node lost while the fragments start only makes the
    // coordinator run the query alone, reading around it).
    let fetches = || async {
        nodes[2]
            .metric("quarry_fragment_fetches_total")
            .await
            .unwrap_or(0.0)
    };
    let fetched_before = fetches().await;
    let waiting = Instant::now();
    while fetches().await <= fetched_before {
        if query.is_finished() {
            let (result, took, _) = query.await.expect("task");
            panic!(
                "the query ended after {took:?}, before node 3's part was fetched: {result:?}; \
                 node 1 sees {:?}",
                support::cluster::node_rows(&nodes[0]).await
            );
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "node 3's part was not fetched within 30 s; node 1 sees {:?}",
            support::cluster::node_rows(&nodes[0]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = Instant::now();
    nodes[2].kill9();
    let (result, took, client) = tokio::time::timeout(Duration::from_secs(60), query)
        .await
        .expect("the query ended")
        .expect("task");
    let Err(error) = result else {
        panic!(
            "a node died under the query, which still succeeded after {took:?} \
             ({:?} after the kill) with {result:?}; node 1 sees {:?}",
            killed_at.elapsed(),
            support::cluster::node_rows(&nodes[0]).await
        );
    };
    assert_eq!(sqlstate(&error), "40001", "{error:?}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "the failure took {:?}",
        killed_at.elapsed()
    );
    let message = error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("retry"), "{message}");
    // Retried after the node is known down, the query reads its chunks
    // through parity and succeeds on the two left.
    wait_for(
        Duration::from_secs(30),
        "the killed node seen down",
        || async {
            support::cluster::node_rows(&nodes[0])
                .await
                .iter()
                .any(|r| r.state == "down")
        },
    )
    .await;
    assert_eq!(
        text(&client, "SELECT count(*) FROM lineitem").await,
        "60175"
    );
    all_stopped(&nodes[..2]).await;
}

/// The running statement whose text contains `marker`, as node `observer`
/// sees it in pg_stat_activity: (pid, job id).
async fn running_backend(observer: &Client, marker: &str) -> (i32, String) {
    let waiting = Instant::now();
    loop {
        let rows = observer
            .query(
                "SELECT pid, job_id FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%' || $1 || '%' \
                 AND query NOT LIKE '%pg_stat_activity%'",
                &[&marker],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = rows.first() {
            return (row.get(0), row.get(1));
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "no active backend runs {marker}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_is_cancelled_from_any_node_and_its_job_is_seen_from_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = loaded_cluster(dir.path()).await;
    let client = tpch_client(&nodes[0]).await;
    let second = nodes[1].client().await;
    let third = nodes[2].client().await;
    for (round, canceller) in ["pg_cancel_backend", "CANCEL JOB"].iter().enumerate() {
        let marker = format!("round {round}");
        let query = format!("{LONG} /* {marker} */");
        let running = tokio::spawn({
            let client = tpch_client(&nodes[0]).await;
            async move { (client.simple_query(&query).await, client) }
        });
        // Node 2 sees the statement running on node 1 and its job.
        let (pid, job_id) = running_backend(&second, &marker).await;
        assert!(job_id.starts_with("1-"), "{job_id}");
        // What it reads is known, and shown, once it is planned and while
        // it runs.
        wait_for(
            Duration::from_secs(20),
            "the running job's bytes from node 3",
            || async {
                let row = third
                    .query_one(
                        "SELECT state, total_bytes_processed::bigint FROM quarry_system.jobs \
                         WHERE job_id = $1",
                        &[&job_id],
                    )
                    .await
                    .expect("the running job from node 3");
                assert_eq!(row.get::<_, String>(0), "RUNNING");
                row.get::<_, i64>(1) > 0
            },
        )
        .await;
        if round == 0 {
            let cancelled: bool = second
                .query_one(&format!("SELECT pg_cancel_backend({pid})"), &[])
                .await
                .expect("pg_cancel_backend")
                .get(0);
            assert!(cancelled);
        } else {
            third
                .batch_execute(&format!("CANCEL JOB '{job_id}'"))
                .await
                .expect("CANCEL JOB");
        }
        let (result, _client) = tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .unwrap_or_else(|_| panic!("{canceller} did not stop the statement"))
            .expect("task");
        let error = result.expect_err("cancelled");
        assert_eq!(sqlstate(&error), "57014", "{canceller}: {error:?}");
        all_stopped(&nodes).await;
        // The ended job, with what it read and did, from every node.
        for node in [&client, &second, &third] {
            let row = node
                .query_one(
                    "SELECT state, error_sqlstate, total_bytes_processed::bigint, \
                            total_slot_ms::bigint, statement_type \
                     FROM quarry_system.jobs WHERE job_id = $1",
                    &[&job_id],
                )
                .await
                .expect("the ended job");
            assert_eq!(row.get::<_, String>(0), "DONE");
            assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("57014"));
            assert!(row.get::<_, i64>(2) > 0, "bytes processed");
            assert_eq!(row.get::<_, String>(4), "SELECT");
        }
        // Cancelling it again: it is not running (55000).
        let error = third
            .batch_execute(&format!("CANCEL JOB '{job_id}'"))
            .await
            .expect_err("not running");
        assert_eq!(sqlstate(&error), "55000", "{error:?}");
    }
    // Slot time of a distributed query counts every node's operators.
    let done = "SELECT count(*) FROM lineitem a JOIN orders o ON a.l_orderkey = o.o_orderkey";
    text(&client, done).await;
    let slot_ms: i64 = second
        .query_one(
            "SELECT total_slot_ms::bigint FROM quarry_system.jobs WHERE query = $1",
            &[&done],
        )
        .await
        .expect("the join's job")
        .get(0);
    assert!(slot_ms > 0, "{slot_ms}");
    // An unknown job, and another role's.
    let error = third
        .batch_execute("CANCEL JOB '9-abc'")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&error), "42704", "{error:?}");
}
