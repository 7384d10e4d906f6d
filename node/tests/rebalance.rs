//! Rebalancing onto a joined node and decommissioning, on clusters of real
//! processes (docs/ARCHITECTURE.md, "Rebalancing").

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::cluster::{
    FAST, id_of, node_rows, quarry_node, start_cluster, unhealthy_stripes, wait_for,
};
use support::node::{TestNode, sqlstate};

/// Bytes of chunks each member holds, by node id.
async fn chunk_bytes(node: &TestNode) -> BTreeMap<u64, i64> {
    let Ok(rows) = node
        .client()
        .await
        .query(
            "select node_id::bigint, chunk_bytes::bigint from quarry_system.nodes",
            &[],
        )
        .await
    else {
        return BTreeMap::new();
    };
    rows.iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1)))
        .collect()
}

/// Whether every node of `bytes` is within ±10% of their mean.
fn within_ten_percent(bytes: &BTreeMap<u64, i64>) -> bool {
    let mean = bytes.values().sum::<i64>() as f64 / bytes.len().max(1) as f64;
    !bytes.is_empty()
        && bytes
            .values()
            .all(|b| (*b as f64 - mean).abs() <= mean * 0.10)
}

/// The newest rebalance: (planned_at as text, moves made, moves, finished).
async fn rebalance_state(node: &TestNode) -> Option<(String, i64, i64, bool)> {
    let client = node.client().await;
    let row = client
        .query_opt(
            "select planned_at::text, \
                    sum(case when state = 'moved' then 1 else 0 end)::bigint, \
                    count(*)::bigint, bool_or(finished_at is not null) \
             from quarry_system.rebalance group by planned_at",
            &[],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// Loads `statements` data files of `rows` hard-to-compress rows each into `t`.
async fn load(node: &TestNode, statements: i64, rows: i64) {
    let client = node.client().await;
    client
        .batch_execute("create table t (id bigint, payload text)")
        .await
        .expect("create");
    for s in 0..statements {
        client
            .batch_execute(&format!(
                "insert into t select i, md5(i::text) || md5((i * 7)::text) \
                 from generate_series({}, {}) as g(i)",
                s * rows + 1,
                (s + 1) * rows
            ))
            .await
            .expect("load");
    }
}

/// `select count(*), sum(id) from t`.
async fn answer(client: &tokio_postgres::Client) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one("select count(*)::bigint, sum(id)::bigint from t", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joined_node_gets_its_share_while_queries_and_writes_run_and_the_leader_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Slow moves (1 MiB/s) so the leader can be killed in the middle.
    // Statements of 1,000 rows or more write stripes (the single-row
    // writes go to the ingest buffer), and the compactor does not merge the
    // data files into a few large ones: whole chunks of 1/72 of the bytes
    // can reach ±10% of each node's share, a chunk larger than a node's
    // share could not.
    let rate = [
        "--rebalance-mb-per-sec",
        "1",
        "--buffer-file-rows",
        "1000",
        "--compaction-interval-secs",
        "3600",
    ];
    let mut nodes = start_cluster(dir.path(), 3, &rate).await;
    // 48 data files in 24 stripes of 2+1: 72 chunks, of which node 4 is to
    // take about 18 (a whole chunk is 1/72 of the bytes: ±10% of a node's
    // share is within reach).
    load(&nodes[0], 48, 4_000).await;
    let expected = answer(&nodes[0].client().await).await.expect("answer");
    assert_eq!(expected.0, 192_000);
    let before = chunk_bytes(&nodes[0]).await;
    assert_eq!(before.len(), 3);

    // Node 4 joins empty.
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend_from_slice(&rate);
    let seed = nodes[0].listen();
    flags.extend_from_slice(&["--join", seed.as_str()]);
    let mut joined = TestNode::spawn(&dir.path().join("n4"), &flags);
    joined.wait_ready().await;
    nodes.push(joined);
    let new_id = id_of(&nodes, 3).await;

    // A query loop (answers must never change) and a write loop (every
    // acknowledged row must be there at the end) on nodes 2 and 3.
    let stop = Arc::new(AtomicBool::new(false));
    let reader_conn = nodes[1].conn_string();
    let reader_stop = stop.clone();
    let reader = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, 0u64);
        while !reader_stop.load(Ordering::SeqCst) {
            let Ok((client, connection)) =
                tokio_postgres::connect(&reader_conn, tokio_postgres::NoTls).await
            else {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            tokio::spawn(connection);
            while !reader_stop.load(Ordering::SeqCst) {
                match answer(&client).await {
                    Ok(got) => {
                        assert_eq!(got, expected, "a query during rebalancing");
                        ok += 1;
                    }
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
        }
        (ok, failed)
    });
    nodes[2]
        .client()
        .await
        .batch_execute("create table w (id bigint)")
        .await
        .expect("create w");
    let writer_conn = nodes[2].conn_string();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut next = 0i64;
        while !writer_stop.load(Ordering::SeqCst) {
            let Ok((client, connection)) =
                tokio_postgres::connect(&writer_conn, tokio_postgres::NoTls).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            tokio::spawn(connection);
            while !writer_stop.load(Ordering::SeqCst) {
                next += 1;
                match client
                    .execute(&format!("insert into w values ({next})"), &[])
                    .await
                {
                    Ok(_) => acknowledged.push(next),
                    Err(e) if !sqlstate(&e).is_empty() => {}
                    Err(_) => break,
                }
            }
        }
        acknowledged
    });

    // A rebalance is planned onto node 4; kill the leader once some of its
    // moves are made and some are not.
    let began = std::time::Instant::now();
    let at_kill = loop {
        let state = rebalance_state(&nodes[1]).await;
        if let Some(state @ (_, moved, planned, false)) = state
            && moved >= 1
            && moved < planned
        {
            break state;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "timed out waiting for a rebalance part way"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (planned_at, moved_at_kill, planned, _) = at_kill;
    let leader = support::cluster::leader_index(&nodes, 1).await;
    assert_ne!(leader, 3, "the new node is a learner");
    nodes[leader].kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[leader].restart().await;

    // The new leader carries on with the same plan (held in Raft).
    let observer = (leader + 1) % 3;
    wait_for(
        Duration::from_secs(120),
        "the plan carried on after the leader died",
        || async {
            let state = rebalance_state(&nodes[observer]).await;
            // A new plan appears only after this one ends: seeing one
            // first would mean the plan was dropped, not carried on.
            if let Some((at, _, _, _)) = &state {
                assert_eq!(at, &planned_at, "the plan under way was replaced");
            }
            state.is_some_and(|(_, moved, _, _)| moved > moved_at_kill)
        },
    )
    .await;
    // Every node ends within ±10% of the mean.
    let began = std::time::Instant::now();
    loop {
        let bytes = chunk_bytes(&nodes[observer]).await;
        if bytes.len() == 4 && within_ten_percent(&bytes) {
            break;
        }
        if began.elapsed() > Duration::from_secs(150) {
            let client = nodes[observer].client().await;
            let stripes: Vec<String> = client
                .query(
                    "select table_name || ' ' || data_chunks::text || '+' || parity_chunks::text \
                            || ' ' || size_bytes::text || ' on ' || nodes \
                     from quarry_system.stripes order by size_bytes desc limit 5",
                    &[],
                )
                .await
                .expect("stripes")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let history: Vec<String> = client
                .query(
                    "select table_name || ' ' || operation from quarry_system.snapshots",
                    &[],
                )
                .await
                .expect("snapshots")
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!("not every node within ±10% of the mean: {bytes:?}; {stripes:?}; {history:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = chunk_bytes(&nodes[observer]).await;
    assert!(after[&new_id] > 0, "{after:?}");

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = reader.await.expect("reader");
    let acknowledged = writer.await.expect("writer");
    assert!(ok > 0, "queries ran during the rebalance ({failed} failed)");
    assert!(!acknowledged.is_empty(), "writes ran during the rebalance");
    let client = nodes[observer].client().await;
    assert_eq!(answer(&client).await.expect("answer"), expected);
    let stored: Vec<i64> = client
        .query("select id from w order by id", &[])
        .await
        .expect("w")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &acknowledged {
        assert!(
            stored.binary_search(id).is_ok(),
            "acknowledged row {id} lost"
        );
    }
    // Every stripe is whole, and a query on the new node reads its chunks.
    assert_eq!(unhealthy_stripes(&client).await, 0);
    assert_eq!(
        answer(&nodes[3].client().await).await.expect("answer"),
        expected
    );
    eprintln!(
        "rebalance: {planned} moves planned, {moved_at_kill} made when the leader died; \
         bytes before {before:?}, after {after:?}; {ok} queries ({failed} failed while \
         the leader was down), {} rows written",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decommissioned_node_can_be_stopped_without_losing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_cluster(
        dir.path(),
        4,
        &["--rebalance-mb-per-sec", "64", "--buffer-file-rows", "1000"],
    )
    .await;
    load(&nodes[0], 6, 20_000).await;
    let expected = answer(&nodes[0].client().await).await.expect("answer");
    let stripes = nodes[0]
        .client()
        .await
        .query_one("select count(*)::bigint from quarry_system.stripes", &[])
        .await
        .expect("stripes")
        .get::<_, i64>(0);
    assert!(stripes > 0, "the rows are in stripes");
    let leaving_bytes = chunk_bytes(&nodes[0]).await[&id_of(&nodes, 1).await];
    assert!(leaving_bytes > 0, "the node to decommission holds chunks");
    // A voter leaves: node 2.
    let leaving = id_of(&nodes, 1).await;
    let host = format!("127.0.0.1:{}", nodes[0].pg_port);
    let out = quarry_node(&["decommission", &leaving.to_string(), "--host", &host]);
    assert!(out.contains("has left the cluster"), "{out}");
    let rows = node_rows(&nodes[0]).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.node_id != leaving));
    assert_eq!(
        rows.iter().filter(|r| r.raft_role != "learner").count(),
        3,
        "a learner took the voter's place: {rows:?}"
    );
    let bytes = chunk_bytes(&nodes[0]).await;
    assert!(!bytes.contains_key(&leaving));
    // Stopping it loses nothing: every stripe healthy, same answers on every node.
    nodes[1].kill9();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != 1) {
        let client = node.client().await;
        assert_eq!(answer(&client).await.expect("answer"), expected, "node {i}");
        assert_eq!(unhealthy_stripes(&client).await, 0, "node {i}");
    }
    // Three nodes left for three-chunk stripes: another decommission is refused.
    let client = nodes[0].client().await;
    let other = id_of(&nodes, 2).await;
    let refused = client
        .batch_execute(&format!("ALTER NODE {other} DECOMMISSION"))
        .await
        .expect_err("too few nodes would stay");
    assert_eq!(sqlstate(&refused), "55000", "{refused}");
    assert!(
        refused.to_string().contains("distinct nodes")
            || format!("{refused:?}").contains("distinct nodes"),
        "{refused:?}"
    );
    let missing = client
        .batch_execute("ALTER NODE 99 DECOMMISSION")
        .await
        .expect_err("no such node");
    assert_eq!(sqlstate(&missing), "42704");
}
