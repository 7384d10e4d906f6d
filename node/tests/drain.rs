//! Draining a node for maintenance (`quarry node drain`, `ALTER NODE n
//! DRAIN`) and resuming it, on a cluster of real processes.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::time::Duration;

use support::cluster::{
    self as support_cluster, id_of, node_rows, quarry_node, ready_status, start_cluster, wait_for,
};
use support::node::{TestNode, sqlstate};

/// Waits until `observer` sees a generate_series statement running on node
/// `node`.
async fn wait_running(observer: &tokio_postgres::Client, node: u64) {
    wait_for(Duration::from_secs(20), "the statement running", || async {
        observer
            .query_one(
                &format!(
                    "select count(*)::bigint from pg_stat_activity \
                     where node_id = {node} and state = 'active' and query like '%generate_series%'"
                ),
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
}

/// Where each stripe's chunks are, by stripe.
async fn placements(node: &TestNode) -> Vec<(String, String)> {
    node.client()
        .await
        .query(
            "select stripe_id, nodes from quarry_system.stripes order by stripe_id",
            &[],
        )
        .await
        .expect("stripes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_finishes_running_work_refuses_new_and_is_not_repaired_while_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Four nodes: 2+1 stripes leave a node to rebuild a chunk on, and three
    // voters leave a learner to replace one with, so "not repaired, not
    // replaced" below is the maintenance mark's doing.
    let mut nodes = start_cluster(
        dir.path(),
        4,
        &[
            "--repair-after-secs",
            "1",
            "--voter-replace-after-secs",
            "1",
            // Every statement's files in stripes, none in the ingest buffer.
            "--buffer-file-rows",
            "0",
        ],
    )
    .await;
    let client = nodes[0].client().await;
    client
        .batch_execute(
            "create table t (id bigint, pad text) with (data_chunks = 2, parity_chunks = 1)",
        )
        .await
        .expect("create");
    // Two INSERTs in one transaction: two data files, one sealed 2+1 stripe.
    for round in 0..3i64 {
        let mut statements = String::from("begin;");
        for file in 0..2i64 {
            let base = (round * 2 + file) * 1000;
            statements.push_str(&format!(
                "insert into t select {base} + value, repeat('x', 40) from generate_series(1, 1000);"
            ));
        }
        statements.push_str("commit;");
        client.batch_execute(&statements).await.expect("load");
    }

    // Drain the Raft leader, with a statement running on it, a transaction
    // block open and an idle session.
    let d = support_cluster::leader_index(&nodes, 0).await;
    let other = (d + 1) % 4;
    let id = id_of(&nodes, d).await;
    let host = format!("127.0.0.1:{}", nodes[other].pg_port);
    let running = nodes[d].client().await;
    let idle = nodes[d].client().await;
    let in_block = nodes[d].client().await;
    in_block
        .batch_execute("begin; insert into t values (-1, 'in a block')")
        .await
        .expect("begin");
    let statement = tokio::spawn(async move {
        running
            .query_one(
                "select count(*)::bigint from generate_series(1, 300000000)",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
    });
    let observer = nodes[other].client().await;
    wait_running(&observer, id).await;
    let drain = tokio::task::spawn_blocking({
        let host = host.clone();
        move || {
            quarry_node(&[
                "drain",
                &id.to_string(),
                "--host",
                &host,
                "--deadline-secs",
                "120",
            ])
        }
    });
    wait_for(Duration::from_secs(20), "the node draining", || async {
        ready_status(&nodes[d]).await == 503
    })
    .await;
    // While it drains, a new statement outside a transaction block is
    // refused (57P01) and does not run; the open block goes on and commits.
    let refused = idle
        .batch_execute("insert into t values (-2, 'refused')")
        .await
        .expect_err("no new work while draining");
    assert_eq!(sqlstate(&refused), "57P01", "{refused}");
    in_block
        .batch_execute("insert into t values (-3, 'in a block'); commit")
        .await
        .expect("the open block finishes");
    let said = drain.await.expect("drain");
    assert!(said.contains(&format!("node {id} drained")), "{said}");
    // The statement that ran finished with its answer; the idle session
    // was closed; a new client is refused with 57P03; /ready fails.
    assert_eq!(
        statement
            .await
            .expect("join")
            .expect("finished, not cancelled"),
        300_000_000
    );
    assert!(idle.simple_query("select 1").await.is_err());
    let refused = tokio_postgres::connect(&nodes[d].conn_string(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a new client is refused");
    assert_eq!(sqlstate(&refused), "57P03", "{refused}");
    assert_eq!(ready_status(&nodes[d]).await, 503);
    let rows = node_rows(&nodes[other]).await;
    let row = rows.iter().find(|r| r.node_id == id).expect("row");
    assert!(row.maintenance);
    assert_ne!(row.raft_role, "leader", "leadership moved away");
    assert!(rows.iter().any(|r| r.raft_role == "leader"));
    // Another node's API requests are still served.
    assert_eq!(ready_status(&nodes[other]).await, 200);
    // Queries other nodes coordinate place no task on it: it is about to
    // stop, and a task there would fail the query when it does.
    let plan: String = observer
        .simple_query(
            "set distsql = on; explain analyze \
             select id % 7, count(*) from t group by 1",
        )
        .await
        .expect("explain")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains(" on node "), "distributed: {plan}");
    assert!(!plan.contains(&format!(" on node {id}:")), "{plan}");

    // Stopped for its maintenance (well past repair_after and
    // voter_replace_after), its chunks are not rebuilt elsewhere and it
    // stays a voter; reads are served degraded meanwhile.
    let before = placements(&nodes[other]).await;
    assert!(
        before
            .iter()
            .any(|(_, holders)| holders.split(',').any(|n| n.trim() == id.to_string())),
        "the drained node holds chunks: {before:?}"
    );
    nodes[d].kill9();
    let me = nodes[d].listen();
    wait_for(Duration::from_secs(20), "the node seen down", || async {
        node_rows(&nodes[other])
            .await
            .iter()
            .any(|r| r.rpc_address == me && r.state == "down")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // (Stripes the cluster writes after the kill are not compared.)
    let after: Vec<_> = placements(&nodes[other])
        .await
        .into_iter()
        .filter(|(stripe, _)| before.iter().any(|(b, _)| b == stripe))
        .collect();
    assert_eq!(after, before, "no repair");
    let rows = node_rows(&nodes[other]).await;
    assert_eq!(
        rows.iter()
            .find(|r| r.node_id == id)
            .expect("row")
            .raft_role,
        "voter"
    );
    let count: i64 = nodes[other]
        .client()
        .await
        .query_one("select count(*)::bigint from t", &[])
        .await
        .expect("degraded read")
        .get(0);
    assert_eq!(count, 6002, "the block's two rows, not the refused one");

    // Restarted, it is still in maintenance until resumed.
    nodes[d].restart_unready();
    wait_for(Duration::from_secs(60), "the node alive again", || async {
        ready_status(&nodes[d]).await == 503
    })
    .await;
    let refused = tokio_postgres::connect(&nodes[d].conn_string(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused while in maintenance");
    assert_eq!(sqlstate(&refused), "57P03");
    let said = quarry_node(&["resume", &id.to_string(), "--host", &host]);
    assert!(said.contains("takes clients again"), "{said}");
    nodes[d].wait_ready().await;
    assert_eq!(ready_status(&nodes[d]).await, 200);
    assert!(!node_rows(&nodes[d]).await.iter().any(|r| r.maintenance));

    // A drain whose deadline passes cancels the statements still running.
    let e = (d + 2) % 4;
    let id_e = id_of(&nodes, e).await;
    let long = nodes[e].client().await;
    let statement = tokio::spawn(async move {
        long.query_one(
            "select count(*)::bigint from generate_series(1, 100000000000)",
            &[],
        )
        .await
    });
    wait_running(&observer, id_e).await;
    let host_d = format!("127.0.0.1:{}", nodes[d].pg_port);
    tokio::task::spawn_blocking({
        let host_d = host_d.clone();
        move || {
            quarry_node(&[
                "drain",
                &id_e.to_string(),
                "--host",
                &host_d,
                "--deadline-secs",
                "1",
            ])
        }
    })
    .await
    .expect("drain");
    let cancelled = statement
        .await
        .expect("join")
        .expect_err("cancelled at the deadline");
    assert_eq!(sqlstate(&cancelled), "57014", "{cancelled}");
    quarry_node(&["resume", &id_e.to_string(), "--host", &host_d]);
    nodes[e].wait_ready().await;
}

#[tokio::test]
async fn alter_node_needs_a_superuser_and_a_member() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("n1")).await;
    let client = node.client().await;
    let unknown = client
        .batch_execute("ALTER NODE 7 DRAIN")
        .await
        .expect_err("no node 7");
    assert_eq!(sqlstate(&unknown), "42704", "{unknown}");
    let syntax = client
        .batch_execute("ALTER NODE 1 DRAIN WITH (deadline_seconds = soon)")
        .await
        .expect_err("syntax");
    assert_eq!(sqlstate(&syntax), "42601", "{syntax}");
    // The only voter cannot be drained: no leader could be elected.
    let alone = client
        .batch_execute("ALTER NODE 1 DRAIN")
        .await
        .expect_err("the last voter");
    assert_eq!(sqlstate(&alone), "55000", "{alone}");
    client
        .batch_execute("CREATE ROLE plain LOGIN")
        .await
        .expect("role");
    let (plain, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=plain dbname=quarry",
            node.pg_port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect as plain");
    tokio::spawn(connection);
    let denied = plain
        .batch_execute("ALTER NODE 1 DRAIN")
        .await
        .expect_err("not a superuser");
    assert_eq!(sqlstate(&denied), "42501", "{denied}");
    let rows = node_rows(&node).await;
    assert!(!rows[0].maintenance);
}

/// `quarry node` and `quarry cluster status` log in as `quarry load` does:
/// a password (QUARRY_PASSWORD) and TLS trusting the cluster's CA (--ca).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_with_a_password_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    support::node::quarry_cert(&certs, &["create-ca"]);
    support::node::quarry_cert(&certs, &["create-node", "--host", "127.0.0.1"]);
    let node = TestNode::start_secure(
        &dir.path().join("n1"),
        "s3cret-pw",
        &[
            "--tls-cert",
            certs.join("node.crt").to_str().expect("utf-8"),
            "--tls-key",
            certs.join("node.key").to_str().expect("utf-8"),
        ],
    )
    .await;
    let host = format!("127.0.0.1:{}", node.pg_port);
    let ca = certs.join("ca.crt");
    let cli = |args: &[&str], password: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"));
        cmd.args(args)
            .args(["--host", &host, "--ca"])
            .arg(&ca)
            .env_remove("QUARRY_PASSWORD")
            .env_remove("PGPASSWORD");
        if let Some(password) = password {
            cmd.env("QUARRY_PASSWORD", password);
        }
        let out = cmd.output().expect("run quarry");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, said) = cli(&["cluster", "status"], Some("s3cret-pw"));
    assert!(ok && said.contains("alive"), "{said}");
    // The connection is TLS verified against --ca: another CA is refused.
    let other = dir.path().join("other-ca");
    support::node::quarry_cert(&other, &["create-ca"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["cluster", "status", "--host", &host, "--ca"])
        .arg(other.join("ca.crt"))
        .env("QUARRY_PASSWORD", "s3cret-pw")
        .output()
        .expect("run quarry");
    assert!(
        !out.status.success(),
        "a node certificate from another CA is not trusted"
    );
    let (ok, said) = cli(&["cluster", "status"], Some("wrong"));
    assert!(!ok && said.contains("password"), "{said}");
    let (ok, said) = cli(&["node", "resume", "1"], Some("s3cret-pw"));
    assert!(ok && said.contains("takes clients again"), "{said}");
}

/// A COPY FROM STDIN under way when the drain begins counts as running: its
/// data may go on arriving, and it commits before the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_under_way_finishes_before_the_drain_closes_its_connection() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = start_cluster(dir.path(), 3, &[]).await;
    nodes[0]
        .client()
        .await
        .batch_execute("create table c (id bigint)")
        .await
        .expect("create");
    let id = id_of(&nodes, 1).await;
    let copier = nodes[1].client().await;
    let sink = copier
        .copy_in::<_, bytes::Bytes>("copy c from stdin")
        .await
        .expect("copy starts");
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .expect("data");
    nodes[0]
        .client()
        .await
        .batch_execute(&format!(
            "ALTER NODE {id} DRAIN WITH (deadline_seconds = 60)"
        ))
        .await
        .expect("drain");
    wait_for(Duration::from_secs(20), "the node draining", || async {
        ready_status(&nodes[1]).await == 503
    })
    .await;
    // Well past the drain's checks (every 50 ms): it waits for the COPY.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.send(bytes::Bytes::from_static(b"3\n"))
        .await
        .expect("more data");
    assert_eq!(sink.finish().await.expect("the COPY commits"), 3);
    let count: i64 = nodes[0]
        .client()
        .await
        .query_one("select count(*)::bigint from c", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 3);
    // Then the drain completes and closes the connection.
    wait_for(Duration::from_secs(20), "the connection closed", || async {
        copier.simple_query("select 1").await.is_err()
    })
    .await;
}
