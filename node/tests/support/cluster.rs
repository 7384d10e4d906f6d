//! Multi-node clusters of real `quarry` processes on 127.0.0.1 for tests.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use super::node::TestNode;

/// Flags every test cluster node gets: fast failure detection.
pub const FAST: &[&str] = &["--down-after-ms", "1000", "--join-timeout-secs", "30"];

/// Starts `n` nodes under `dir`: node 1 bootstraps, the others join through
/// it; each gets `extra` flags. Waits until every node is a member.
pub async fn start_cluster(dir: &Path, n: usize, extra: &[&str]) -> Vec<TestNode> {
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend_from_slice(extra);
    let first = TestNode::start_with(&dir.join("n1"), &flags).await;
    let seed = first.listen();
    let mut nodes = vec![first];
    for i in 2..=n {
        let mut joined = flags.clone();
        joined.extend_from_slice(&["--join", seed.as_str()]);
        let node = TestNode::start_with(&dir.join(format!("n{i}")), &joined).await;
        nodes.push(node);
    }
    let voters = match n {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    };
    wait_for(
        Duration::from_secs(60),
        "every node alive with its voters",
        || async {
            let rows = node_rows(&nodes[0]).await;
            rows.len() == n
                && rows.iter().all(|r| r.1 == "alive")
                && rows.iter().filter(|r| r.2 != "learner").count() == voters
        },
    )
    .await;
    nodes
}

/// (node_id, state, raft_role) of every node, as `node` sees them.
pub async fn node_rows(node: &TestNode) -> Vec<(i64, String, String)> {
    let Ok((client, connection)) =
        tokio_postgres::connect(&node.conn_string(), tokio_postgres::NoTls).await
    else {
        return Vec::new();
    };
    tokio::spawn(connection);
    match client
        .query(
            "select node_id::bigint, state, raft_role from quarry_system.nodes order by node_id",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The index in `nodes` of the Raft leader, as the running `observer` sees it.
pub async fn leader_index(nodes: &[TestNode], observer: usize) -> usize {
    let client = nodes[observer].client().await;
    let row = client
        .query_one(
            "select rpc_address from quarry_system.nodes where raft_role = 'leader'",
            &[],
        )
        .await
        .expect("a leader");
    let address: &str = row.get(0);
    nodes
        .iter()
        .position(|n| n.listen() == address)
        .expect("the leader is one of the nodes")
}

/// The index in `nodes` of node `id`, as the running `observer` sees it.
pub async fn index_of(nodes: &[TestNode], observer: usize, id: i64) -> usize {
    let client = nodes[observer].client().await;
    let row = client
        .query_one(
            &format!("select rpc_address from quarry_system.nodes where node_id = {id}"),
            &[],
        )
        .await
        .expect("the node");
    let address: &str = row.get(0);
    nodes
        .iter()
        .position(|n| n.listen() == address)
        .expect("one of the nodes")
}

/// Polls `check` every 200 ms until it is true; fails the test after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
