//! Multi-node clusters of real `quarry` processes on 127.0.0.1 for tests.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use quarry_jepsen::net::Host;

use super::node::TestNode;

/// Flags every test cluster node gets: fast failure detection.
pub const FAST: &[&str] = &["--down-after-ms", "1000", "--join-timeout-secs", "30"];

/// Starts `n` nodes under `dir`: node 1 bootstraps, the others join through
/// it; each gets `extra` flags. Waits until every node is a member.
pub async fn start_cluster(dir: &Path, n: usize, extra: &[&str]) -> Vec<TestNode> {
    start_cluster_on(&vec![None; n], dir, extra).await
}

/// Starts one node on each of `hosts` (a host of a test network, or `None`
/// for 127.0.0.1) as [`start_cluster`] does.
pub async fn start_cluster_on(
    hosts: &[Option<&Host>],
    dir: &Path,
    extra: &[&str],
) -> Vec<TestNode> {
    let n = hosts.len();
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend_from_slice(extra);
    let mut first = TestNode::spawn_on(hosts[0], &dir.join("n1"), &flags);
    first.wait_ready().await;
    let seed = first.listen();
    let mut nodes = vec![first];
    for (i, host) in hosts.iter().enumerate().skip(1) {
        let mut joined = flags.clone();
        joined.extend_from_slice(&["--join", seed.as_str()]);
        let mut node = TestNode::spawn_on(*host, &dir.join(format!("n{}", i + 1)), &joined);
        node.wait_ready().await;
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
                && rows.iter().all(|r| r.state == "alive")
                && rows.iter().filter(|r| r.raft_role != "learner").count() == voters
        },
    )
    .await;
    nodes
}

/// One row of `quarry_system.nodes`.
pub use quarry_client::cluster::Member as NodeRow;

/// Every node as `node` sees it (empty if it cannot answer).
pub async fn node_rows(node: &TestNode) -> Vec<NodeRow> {
    let Ok((client, connection)) =
        tokio_postgres::connect(&node.conn_string(), tokio_postgres::NoTls).await
    else {
        return Vec::new();
    };
    tokio::spawn(connection);
    quarry_client::cluster::members(&client)
        .await
        .unwrap_or_default()
}

/// The index in `nodes` of the first node `observer` lists that matches `which`.
pub async fn index_where(
    nodes: &[TestNode],
    observer: usize,
    which: impl Fn(&NodeRow) -> bool,
) -> usize {
    let rows = node_rows(&nodes[observer]).await;
    let row = rows.iter().find(|r| which(r)).expect("a matching node");
    nodes
        .iter()
        .position(|n| n.listen() == row.rpc_address)
        .expect("one of the nodes")
}

/// The index in `nodes` of the Raft leader, as `observer` sees it.
pub async fn leader_index(nodes: &[TestNode], observer: usize) -> usize {
    index_where(nodes, observer, |r| r.raft_role == "leader").await
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

/// Node `node`'s id in the cluster.
pub async fn id_of(nodes: &[TestNode], node: usize) -> u64 {
    node_rows(&nodes[0])
        .await
        .iter()
        .find(|r| r.rpc_address == nodes[node].listen())
        .expect("a member")
        .node_id
}

/// `quarry node ARGS...`; its output, failing the test unless it succeeds.
pub fn quarry_node(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("node")
        .args(args)
        .output()
        .expect("run quarry node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quarry node {args:?}: {text}");
    text
}

/// The status of the node's `/ready` (0 while it does not answer).
pub async fn ready_status(node: &TestNode) -> u16 {
    super::node::try_http_request(
        "GET",
        &format!("http://127.0.0.1:{}/ready", node.http_port),
        "text/plain",
        &[],
    )
    .await
    .map_or(0, |(status, _)| status)
}

/// Stripes not healthy, as `client`'s node sees them.
pub async fn unhealthy_stripes(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "select count(*)::bigint from quarry_system.stripes where health <> 'healthy'",
            &[],
        )
        .await
        .expect("quarry_system.stripes")
        .get(0)
}
