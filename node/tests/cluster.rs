//! Real multi-node clusters: replication through Raft with forwarding and
//! read-index, leader failure during writes, erasure-coded stripes surviving
//! node losses, repair, the scrubber, and startup errors.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;
}

use std::collections::BTreeSet;
use std::time::Duration;

use support::cluster::{leader_index, start_cluster, wait_for};
use support::node::{TestNode, sqlstate};

/// Flags for tests of the read path through the disks: without a data file
/// pool, every read goes to the chunks (a file read once would otherwise be
/// served from memory, and a degraded or damaged read would never happen),
/// and every statement's files are in stripes (none in the ingest buffer,
/// whose bytes are in the Raft log).
const DISK_READS: [&str; 4] = ["--data-cache-mb", "0", "--buffer-file-rows", "0"];

/// Every statement's files in stripes, none in the ingest buffer: for
/// tests of stripes written by small statements.
const STRIPES_ONLY: [&str; 2] = ["--buffer-file-rows", "0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_keep_every_acknowledged_row_when_the_leader_dies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 3, &[]).await;

    // DDL and INSERT through node 1 are visible from node 3 at once.
    let one = nodes[0].client().await;
    one.batch_execute("create table t (id bigint not null, note text)")
        .await
        .expect("create");
    one.execute("insert into t values (0, 'first')", &[])
        .await
        .expect("insert");
    let three = nodes[2].client().await;
    let row = three
        .query_one("select count(*)::bigint from t", &[])
        .await
        .expect("read on node 3");
    assert_eq!(row.get::<_, i64>(0), 1);

    // A stream of INSERTs through a follower while the leader is killed.
    let leader = leader_index(&nodes, 0).await;
    let writer_node = (leader + 1) % 3;
    let conn = nodes[writer_node].conn_string();
    let writer = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let mut acknowledged = BTreeSet::new();
        let mut refused = BTreeSet::new();
        for id in 1..=120i64 {
            match client
                .execute("insert into t values ($1, 'stream')", &[&id])
                .await
            {
                Ok(_) => {
                    acknowledged.insert(id);
                }
                // 40001: certainly not written; anything else: unknown outcome.
                Err(e) if sqlstate(&e) == "40001" => {
                    refused.insert(id);
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (acknowledged, refused)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes[leader].kill9();
    let (acknowledged, refused) = tokio::time::timeout(Duration::from_secs(180), writer)
        .await
        .expect("the writer finishes")
        .expect("writer task");
    assert!(
        acknowledged.len() > 60,
        "the cluster kept accepting writes: {} acknowledged",
        acknowledged.len()
    );

    let survivor = nodes[writer_node].client().await;
    let rows = survivor
        .query("select id from t where note = 'stream'", &[])
        .await
        .expect("read after failover");
    let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(rows.len(), present.len(), "no row was written twice");
    let lost: Vec<_> = acknowledged.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let phantom: Vec<_> = present.intersection(&refused).collect();
    assert!(phantom.is_empty(), "refused rows present: {phantom:?}");
    assert!(present.iter().all(|id| (1..=120).contains(id)));

    // The old leader comes back as a follower and catches up.
    nodes[leader].restart().await;
    let back = nodes[leader].client().await;
    let row = back
        .query_one("select count(*)::bigint from t where note = 'stream'", &[])
        .await
        .expect("read on the restarted node");
    assert_eq!(row.get::<_, i64>(0) as usize, present.len());
}

/// Rows, sum and stripe health of table `t` as `node` sees them.
async fn table_state(node: &TestNode) -> (i64, i64) {
    let client = node.client().await;
    // A full read every time, not a repeat answered by the result cache.
    client
        .batch_execute("SET use_query_cache = off")
        .await
        .expect("no result cache");
    let row = client
        .query_one("select count(*)::bigint, sum(id)::bigint from t", &[])
        .await
        .expect("full read");
    (row.get(0), row.get(1))
}

async fn unhealthy_stripes(node: &TestNode) -> i64 {
    let client = node.client().await;
    client
        .query_one(
            "select count(*)::bigint from quarry_system.stripes where health <> 'healthy'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_nodes_with_4_plus_2_stripes_survive_two_losses_repair_and_a_third() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(
        dir.path(),
        6,
        &[
            "--repair-after-secs",
            "2",
            "--voter-replace-after-secs",
            "2",
            DISK_READS[0],
            DISK_READS[1],
            DISK_READS[2],
            DISK_READS[3],
        ],
    )
    .await;
    let client = nodes[0].client().await;
    client
        .batch_execute(
            "create table t (id bigint, pad text) with (data_chunks = 4, parity_chunks = 2)",
        )
        .await
        .expect("create");
    // Four INSERTs in one transaction: four data files, one 4+2 stripe.
    for round in 0..3i64 {
        let mut statements = String::from("begin;");
        for file in 0..4i64 {
            let base = (round * 4 + file) * 1000;
            statements.push_str(&format!(
                "insert into t select {base} + value, repeat('x', 50) from generate_series(1, 1000);"
            ));
        }
        statements.push_str("commit;");
        client.batch_execute(&statements).await.expect("load");
    }
    let layout = client
        .query(
            "select data_chunks::bigint, parity_chunks::bigint, nodes from quarry_system.stripes",
            &[],
        )
        .await
        .expect("stripes");
    assert_eq!(layout.len(), 3);
    for row in &layout {
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (4, 2));
        let holders: BTreeSet<&str> = row.get::<_, &str>(2).split(',').collect();
        assert_eq!(holders.len(), 6, "each chunk on its own node");
    }
    let expected = table_state(&nodes[0]).await;
    assert_eq!(expected.0, 12_000);

    // Lose two nodes that do not lead.
    let leader = leader_index(&nodes, 0).await;
    let mut victims = (0..6).filter(|i| *i != leader);
    let (a, b, c) = (
        victims.next().expect("a"),
        victims.next().expect("b"),
        victims.next().expect("c"),
    );
    nodes[a].kill9();
    nodes[b].kill9();
    assert_eq!(
        table_state(&nodes[leader]).await,
        expected,
        "degraded reads"
    );

    // Repair rebuilds the lost chunks on the live nodes (once gossip has
    // declared both down: until then their stripes still count as healthy).
    let observer = &nodes[leader];
    let (lost_a, lost_b) = (nodes[a].listen(), nodes[b].listen());
    wait_for(Duration::from_secs(30), "both losses noticed", || async {
        support::cluster::node_rows(observer)
            .await
            .iter()
            .filter(|r| r.state == "down")
            .filter(|r| r.rpc_address == lost_a || r.rpc_address == lost_b)
            .count()
            == 2
    })
    .await;
    wait_for(
        Duration::from_secs(120),
        "every stripe healthy again",
        || async { unhealthy_stripes(observer).await == 0 },
    )
    .await;

    // The learner replaced a dead voter, so the metadata survives one more loss.
    // (A dead learner shows the membership change finished: during its joint
    // phase both the old and the new voters count.)
    wait_for(Duration::from_secs(60), "a dead voter replaced", || async {
        let rows = support::cluster::node_rows(observer).await;
        rows.iter()
            .filter(|r| r.state == "alive" && r.raft_role != "learner")
            .count()
            == 4
            && rows
                .iter()
                .any(|r| r.state == "down" && r.raft_role == "learner")
    })
    .await;

    // And a third loss is survived too, even of a node that now holds two
    // chunks of a stripe (six chunks on four live nodes): exactly k are left.
    let placements: Vec<String> = observer
        .client()
        .await
        .query("select nodes from quarry_system.stripes", &[])
        .await
        .expect("stripes")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let rows = support::cluster::node_rows(observer).await;
    let c = (0..6)
        .filter(|i| *i != leader && nodes[*i].is_running())
        .find(|i| {
            let id = rows
                .iter()
                .find(|r| r.rpc_address == nodes[*i].listen())
                .map(|r| r.node_id.to_string())
                .expect("listed");
            placements
                .iter()
                .any(|p| p.split(',').filter(|n| *n == id).count() == 2)
        })
        .unwrap_or(c);
    nodes[c].kill9();
    let reader = nodes
        .iter()
        .position(|n| n.is_running())
        .expect("a live node");
    assert_eq!(
        table_state(&nodes[reader]).await,
        expected,
        "after a third loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_is_read_around_counted_and_repaired_by_the_scrubber() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = start_cluster(
        dir.path(),
        3,
        &[
            "--scrub-interval-secs",
            "2",
            DISK_READS[0],
            DISK_READS[1],
            DISK_READS[2],
            DISK_READS[3],
        ],
    )
    .await;
    let client = nodes[0].client().await;
    client
        .batch_execute(
            "create table t (id bigint); \
             insert into t select value from generate_series(1, 5000)",
        )
        .await
        .expect("load");
    let expected = table_state(&nodes[0]).await;
    // The one data chunk is on the first node its stripe lists, alone there
    // (the parity chunk is on another node).
    let placement = client
        .query_one("select nodes from quarry_system.stripes", &[])
        .await
        .expect("stripes");
    let holder_id: u64 = placement
        .get::<_, &str>(0)
        .split(',')
        .next()
        .expect("a node")
        .parse()
        .expect("node id");
    let holder = support::cluster::index_where(&nodes, 0, |r| r.node_id == holder_id).await;
    let files: Vec<_> = std::fs::read_dir(nodes[holder].data_dir.join("chunks"))
        .expect("chunks dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let path = files[0].clone();
    let original = std::fs::read(&path).expect("read chunk");
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&path, &damaged).expect("flip a byte");

    assert_eq!(
        table_state(&nodes[holder]).await,
        expected,
        "read around the damage"
    );
    let corruptions = nodes[holder]
        .metric("quarry_storage_chunk_corruptions_total")
        .await;
    assert!(
        corruptions.is_some_and(|n| n > 0.0),
        "corruption counted: {corruptions:?}"
    );
    wait_for(
        Duration::from_secs(60),
        "the scrubber to rewrite the chunk",
        || async { std::fs::read(&path).map(|b| b == original).unwrap_or(false) },
    )
    .await;
}

/// GET over a plain TCP connection (no HTTP client crate in the tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_starts_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Unreachable seeds.
    let lonely = dir.path().join("lonely");
    let port = support::node::free_port();
    let mut node = TestNode::spawn(
        &lonely,
        &[
            "--join",
            &format!("127.0.0.1:{port}"),
            "--join-timeout-secs",
            "2",
        ],
    );
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(node.log().contains("no seed answered"), "{}", node.log());
    assert!(
        !lonely.exists(),
        "nothing written for a node that never joined"
    );

    // A data dir from another cluster.
    let cluster_a = start_cluster(&dir.path().join("a"), 1, &[]).await;
    let mut other = TestNode::start_with(&dir.path().join("b-n1"), &[]).await;
    other.terminate();
    let before = std::fs::read(dir.path().join("b-n1/NODE_ID")).expect("node id");
    let mut stranger = TestNode::spawn(
        &dir.path().join("b-n1"),
        &["--join", &cluster_a[0].listen()],
    );
    let status = stranger.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        stranger.log().contains("belongs to cluster"),
        "{}",
        stranger.log()
    );
    assert_eq!(
        std::fs::read(dir.path().join("b-n1/NODE_ID")).expect("id"),
        before
    );

    // A duplicate node id: a copy of a live member's data dir.
    let joined = TestNode::start_with(
        &dir.path().join("a-n2"),
        &["--join", &cluster_a[0].listen()],
    )
    .await;
    let copy = dir.path().join("a-n2-copy");
    std::fs::create_dir_all(&copy).expect("copy dir");
    for name in ["NODE_ID", "CLUSTER_ID"] {
        std::fs::copy(joined.data_dir.join(name), copy.join(name)).expect("copy id");
    }
    wait_for(Duration::from_secs(30), "node 2 to be alive", || async {
        support::cluster::node_rows(&cluster_a[0])
            .await
            .iter()
            .any(|r| r.node_id == 2 && r.state == "alive")
    })
    .await;
    let mut duplicate = TestNode::spawn(&copy, &["--join", &cluster_a[0].listen()]);
    let status = duplicate.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        duplicate.log().contains("already in use"),
        "{}",
        duplicate.log()
    );
    assert!(!copy.join("meta.redb").exists(), "nothing written");
}

/// Inserts `id` through `node`, retrying on 40001 (certainly not written)
/// until `limit`; panics on any other error.
async fn insert_until_accepted(node: &TestNode, id: i64, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let client = node.client().await;
        match client
            .execute("insert into t values ($1, 'majority')", &[&id])
            .await
        {
            Ok(_) => return,
            Err(e) if sqlstate(&e) == "40001" && started.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("insert {id} through the majority failed: {e:?}"),
        }
    }
}

/// The ids in `t` as `node` sees them, or None if it cannot answer.
async fn ids(node: &TestNode) -> Option<BTreeSet<i64>> {
    let (client, connection) = tokio_postgres::connect(&node.conn_string(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let rows = client.query("select id from t", &[]).await.ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_isolating_the_leader_refuses_writes_there_and_heals_to_one_state() {
    let lan = quarry_jepsen::net::Lan::create(3)
        .expect("a test network of namespaces (the tests run as root with iproute2)");
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts: Vec<_> = lan.hosts().iter().map(Some).collect();
    let nodes = support::cluster::start_cluster_on(&hosts, dir.path(), &[]).await;
    let client = nodes[0].client().await;
    client
        .batch_execute(
            "create table t (id bigint not null, note text); insert into t values (0, 'before')",
        )
        .await
        .expect("load");
    let leader = leader_index(&nodes, 0).await;
    let majority: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    lan.partition(&[leader]).expect("isolate the leader");

    // The isolated old leader cannot confirm its leadership: a write there
    // fails with a retryable error and leaves nothing.
    let isolated = nodes[leader].client().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        isolated.execute("insert into t values (100, 'minority')", &[]),
    )
    .await
    .expect("the minority answers within its request timeout");
    let error = refused.expect_err("the minority refuses writes");
    assert_eq!(sqlstate(&error), "40001", "retryable: {error:?}");
    let message = error.as_db_error().expect("db error").message().to_owned();
    assert!(
        message.contains("retry"),
        "the message says what to do: {message}"
    );

    // The majority elects a leader and goes on.
    for id in 1..=10 {
        insert_until_accepted(
            &nodes[majority[id as usize % 2]],
            id,
            Duration::from_secs(60),
        )
        .await;
    }
    let expected: BTreeSet<i64> = (0..=10).collect();
    assert_eq!(ids(&nodes[majority[0]]).await, Some(expected.clone()));

    // After healing every node agrees, and the refused row is nowhere.
    lan.heal().expect("heal");
    for node in &nodes {
        wait_for(
            Duration::from_secs(60),
            "every node to agree after healing",
            || async { ids(node).await.as_ref() == Some(&expected) },
        )
        .await;
    }
    let rows = support::cluster::node_rows(&nodes[leader]).await;
    assert_eq!(rows.iter().filter(|r| r.raft_role == "leader").count(), 1);
    drop(nodes);
}

/// Pids of processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Arguments are NUL-separated; read them space-separated.
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Kills, when dropped, every process whose command line mentions its text.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_mentioning(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The first line `child` prints (within two minutes); the rest of its
/// output is read and dropped so that it never writes to a closed pipe.
fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    lines_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a first line")
}

/// SIGTERM to `child`; asserts it exits 0 within a minute.
async fn terminate_and_wait(mut child: std::process::Child) {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("no exit within a minute of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("waiter");
    assert!(exit.success(), "{exit}");
}

fn quarry(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .expect("quarry runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_local_starts_nodes_that_cluster_status_describes_and_sigterm_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("local");
    let data_text = data.display().to_string();
    let _cleanup = KillOnDrop(data_text.clone());
    // An address block of its own so fixed ports cannot collide with other tests.
    let block = 20 + std::process::id() % 200;
    let first = format!("127.0.{block}.1");
    let pg_port = support::node::free_port().to_string();
    let http_port = support::node::free_port().to_string();
    let listen_port = support::node::free_port().to_string();
    let ports = [
        "--pg-port",
        &pg_port,
        "--http-port",
        &http_port,
        "--listen-port",
        &listen_port,
    ];
    // Three nodes on `data`; returns once they all answer.
    let start = |node_flags: &[&str]| {
        let mut local = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["cluster", "local", "--nodes", "3", "--data-dir", &data_text])
            .args(["--first-address", &first])
            .args(ports)
            .arg("--")
            .args(node_flags)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cluster local starts");
        assert_eq!(
            first_line(&mut local),
            format!("3 nodes running, data under {data_text}")
        );
        local
    };
    let parent = start(&["--down-after-ms", "1000", STRIPES_ONLY[0], STRIPES_ONLY[1]]);
    assert_eq!(
        pids_mentioning(&data_text).len(),
        4,
        "the parent and three nodes"
    );

    let host = format!("127.0.{block}.2:{pg_port}");
    let status = quarry(&["cluster", "status", "--host", &host]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{text}");
    assert!(text.starts_with("nodes: 3, alive: 3\n"), "{text}");
    assert_eq!(text.matches(" leader ").count(), 1, "{text}");

    // A table written through node 2, then node 3 killed: status names the
    // node and the stripes that lost a chunk, and exits 1.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.{block}.2 port={pg_port} user=test dbname=quarry"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to node 2");
    tokio::spawn(connection);
    client
        .batch_execute("create table t (id bigint); insert into t values (1), (2), (3)")
        .await
        .expect("write");
    // A node holding a chunk, other than node 2 (`nI` runs on 127.0.B.I).
    let victim = client
        .query_one(
            "select split_part(n.pg_address, ':', 1) from quarry_system.stripes s \
             join quarry_system.nodes n \
               on strpos(',' || s.nodes || ',', ',' || n.node_id::text || ',') > 0 \
             where n.pg_address <> $1 limit 1",
            &[&host],
        )
        .await
        .expect("a chunk holder")
        .get::<_, String>(0);
    let index = victim.rsplit('.').next().expect("last octet");
    let pid = pids_mentioning(&format!("{data_text}/n{index} "));
    assert_eq!(pid.len(), 1, "the process of {victim}");
    std::process::Command::new("kill")
        .args(["-KILL", &pid[0].to_string()])
        .status()
        .expect("kill");
    let started = std::time::Instant::now();
    loop {
        let status = quarry(&["cluster", "status", "--host", &host]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if !status.status.success() && text.contains(" down ") && text.contains("degraded") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "status did not report the lost node:\n{text}{}",
            String::from_utf8_lossy(&status.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM stops the nodes left and exits 0.
    terminate_and_wait(parent).await;
    assert!(pids_mentioning(&data_text).is_empty(), "every node stopped");

    // Started again on the same data dir, the nodes keep their data.
    let again = start(&STRIPES_ONLY);
    wait_for(
        Duration::from_secs(120),
        "the restarted cluster to answer",
        || async {
            let Ok((client, connection)) = tokio_postgres::connect(
                &format!("host=127.0.{block}.1 port={pg_port} user=test dbname=quarry"),
                tokio_postgres::NoTls,
            )
            .await
            else {
                return false;
            };
            tokio::spawn(connection);
            client
                .query_one("select count(*)::bigint from t", &[])
                .await
                .map(|r| r.get::<_, i64>(0) == 3)
                .unwrap_or(false)
        },
    )
    .await;
    terminate_and_wait(again).await;
    assert!(pids_mentioning(&data_text).is_empty(), "every node stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_written_while_a_node_is_down_gets_its_full_parity_when_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 4, &DISK_READS).await;
    let client = nodes[0].client().await;
    client
        .batch_execute("create table t (id bigint) with (data_chunks = 1, parity_chunks = 3)")
        .await
        .expect("create");
    let leader = leader_index(&nodes, 0).await;
    let away = (0..4)
        .find(|i| *i != leader && *i != 0)
        .expect("a follower");
    let away_addr = nodes[away].listen();
    nodes[away].kill9();
    wait_for(
        Duration::from_secs(30),
        "the node declared down",
        || async {
            support::cluster::node_rows(&nodes[leader])
                .await
                .iter()
                .any(|r| r.rpc_address == away_addr && r.state == "down")
        },
    )
    .await;
    // Bounded, so a stuck write fails with the nodes' logs.
    tokio::time::timeout(
        Duration::from_secs(60),
        client.batch_execute("insert into t select value from generate_series(1, 3000)"),
    )
    .await
    .expect("the insert with a node down ends within 60 s")
    .expect("insert with a node down");
    let parity = |node: &TestNode| {
        let conn = node.conn_string();
        async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "select parity_chunks::bigint, nodes, health from quarry_system.stripes",
                    &[],
                )
                .await
                .ok()?;
            Some((
                row.get::<_, i64>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
            ))
        }
    };
    let narrow = parity(&nodes[leader]).await.expect("a stripe");
    assert_eq!(narrow.0, 2, "narrow while a node is down: {narrow:?}");
    assert_eq!(narrow.2, "healthy");

    nodes[away].restart().await;
    wait_for(Duration::from_secs(60), "the stripe widened", || async {
        parity(&nodes[leader])
            .await
            .is_some_and(|(m, holders, health)| {
                m == 3
                    && health == "healthy"
                    && holders.split(',').collect::<BTreeSet<_>>().len() == 4
            })
    })
    .await;
    let (count, sum) = table_state(&nodes[away]).await;
    assert_eq!((count, sum), (3000, 3000 * 3001 / 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narrow_stripes_of_small_statements_are_regrouped_to_the_full_width() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 6, &DISK_READS).await;
    let client = nodes[0].client().await;
    client
        .batch_execute("create table t (id bigint)")
        .await
        .expect("create");
    // Each statement writes one data file: a 1+2 stripe (default 4+2) whose
    // data chunk lands on a node its id picks. A full-width stripe needs four
    // on distinct nodes; a regroup made while statements still arrive may be
    // narrower and waits for one on a node it lacks, so statements continue
    // (up to 40) until a 4+2 stripe appears.
    let insert = |i: i64| {
        let client = &client;
        async move {
            client
                .execute(
                    "insert into t select $1 * 1000 + value from generate_series(1, 500)",
                    &[&i],
                )
                .await
                .expect("insert");
        }
    };
    let mut statements = 0i64;
    for _ in 0..8 {
        statements += 1;
        insert(statements).await;
    }
    let wide = || async {
        nodes[0]
            .client()
            .await
            .query(
                "select data_chunks::bigint, parity_chunks::bigint, health from quarry_system.stripes",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, String>(2)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let started = std::time::Instant::now();
    loop {
        let stripes = wide().await;
        if stripes.iter().any(|s| s.0 == 4 && s.1 == 2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for a stripe regrouped to 4+2 after {statements} statements: {stripes:?}"
        );
        if statements < 40 {
            statements += 1;
            insert(statements).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for(Duration::from_secs(60), "every stripe healthy", || async {
        wide().await.iter().all(|s| s.2 == "healthy")
    })
    .await;
    let stripes = wide().await;
    assert!(
        (stripes.len() as i64) < statements,
        "fewer stripes than statements ({statements}): {stripes:?}"
    );
    let expected = (
        500 * statements,
        (1..=statements)
            .map(|i| i * 1000 * 500 + 500 * 501 / 2)
            .sum::<i64>(),
    );
    assert_eq!(table_state(&nodes[0]).await, expected);

    // The new parity protects the regrouped data: lose two nodes.
    let leader = leader_index(&nodes, 0).await;
    let victims: Vec<usize> = (0..6).filter(|i| *i != leader && *i != 0).take(2).collect();
    for v in &victims {
        nodes[*v].kill9();
    }
    assert_eq!(
        table_state(&nodes[0]).await,
        expected,
        "after losing two nodes"
    );
}

/// Chunk files in `node`'s data directory.
fn chunk_files(node: &TestNode) -> usize {
    std::fs::read_dir(node.data_dir.join("chunks"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// How many chunks the catalog places on each of `nodes`, as `observer` sees it.
async fn placed_chunks(nodes: &[TestNode], observer: usize) -> Option<Vec<usize>> {
    let client = nodes[observer].client().await;
    let stripes = client
        .query("select nodes from quarry_system.stripes", &[])
        .await
        .ok()?;
    let members = support::cluster::node_rows(&nodes[observer]).await;
    let mut placed = vec![0; nodes.len()];
    for row in stripes {
        for id in row.get::<_, String>(0).split(',') {
            let member = members.iter().find(|m| m.node_id.to_string() == id)?;
            let index = nodes
                .iter()
                .position(|n| n.listen() == member.rpc_address)?;
            placed[index] += 1;
        }
    }
    Some(placed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_sends_each_file_once_to_its_holder_and_a_cut_copy_leaves_nothing() {
    use bytes::Bytes;
    use futures::SinkExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 3, &[]).await;
    let client = nodes[0].client().await;
    client
        .batch_execute("create table big (id bigint not null); insert into big values (-1)")
        .await
        .expect("setup");
    let before: Vec<usize> = nodes.iter().map(chunk_files).collect();

    // Three nodes: 2+1 stripes. Two data files' worth of rows (2 × 1,048,576)
    // complete one stripe while the COPY is still open: each file goes to its
    // holder as it is finished, and the parity follows, so every node gains a
    // chunk before anything commits. (Files used to be written on the node
    // running the COPY and sent to their holders at commit.)
    let sink = client
        .copy_in::<_, Bytes>("COPY big FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    let rows: String = (0..2_200_000).map(|i| format!("{i}\n")).collect();
    sink.send(Bytes::from(rows)).await.expect("send");
    let started = std::time::Instant::now();
    loop {
        let now: Vec<usize> = nodes.iter().map(chunk_files).collect();
        if now.iter().zip(&before).all(|(n, b)| *n == b + 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for a chunk of the open COPY on every node: \
             chunk files {now:?}, before the COPY {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count: i64 = nodes[1]
        .client()
        .await
        .query_one("select count(*) from big", &[])
        .await
        .expect("count during the copy")
        .get(0);
    assert_eq!(count, 1, "the open COPY's rows are not visible");

    // The node running the COPY dies: nothing commits, and every node's
    // collection deletes the orphans at its next start.
    nodes[0].kill9();
    wait_for(
        Duration::from_secs(60),
        "the cut COPY invisible",
        || async {
            match nodes[1]
                .client()
                .await
                .query_one("select count(*) from big", &[])
                .await
            {
                Ok(row) => row.get::<_, i64>(0) == 1,
                Err(_) => false,
            }
        },
    )
    .await;
    nodes[0].restart().await;
    for (i, node) in nodes.iter_mut().enumerate().skip(1) {
        let status = node.terminate();
        assert!(status.success(), "node {i} stops cleanly: {status}");
        node.restart().await;
    }
    wait_for(
        Duration::from_secs(90),
        "each node holding exactly the chunks the catalog places on it",
        || async {
            let held: Vec<usize> = nodes.iter().map(chunk_files).collect();
            placed_chunks(&nodes, 1).await.is_some_and(|p| p == held)
        },
    )
    .await;
    let count: i64 = nodes[2]
        .client()
        .await
        .query_one("select count(*) from big", &[])
        .await
        .expect("count after restarts")
        .get(0);
    assert_eq!(count, 1);
}
