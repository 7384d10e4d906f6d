//! Three metadata replicas in one process, talking over the real internal RPC
//! (TCP on 127.0.0.1) through fault-injecting transports: replication, leader
//! failover under a partition, and catch-up after healing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quarry_node::raft_network::{RaftHandler, RaftRpcNetwork};
use quarry_node::rpc::{FaultyTransport, TcpTransport, serve};
use quarry_raft::{Command, Meta, MetaConfig, NodeAddr, NodeId};
use tokio::net::TcpListener;

struct Replica {
    id: NodeId,
    addr: std::net::SocketAddr,
    meta: Meta,
    transport: Arc<FaultyTransport<TcpTransport>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn replicas(n: u64) -> Vec<Replica> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let mut replicas = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let dir = tempfile::tempdir().expect("temp dir");
        let transport = Arc::new(FaultyTransport::new(TcpTransport::new()));
        let mut config = MetaConfig::new(
            id,
            NodeAddr {
                rpc: addrs[i].to_string(),
                pg: String::new(),
                domain: String::new(),
            },
        );
        config.heartbeat_interval = Duration::from_millis(50);
        let meta = Meta::open(
            &dir.path().join("meta.redb"),
            config,
            RaftRpcNetwork::new(transport.clone()),
            Arc::new(quarry_raft::NoLink),
        )
        .await
        .expect("open");
        let server = tokio::spawn(serve(
            listener,
            Arc::new(RaftHandler::new(meta.raft().clone(), id)),
            None,
        ));
        replicas.push(Replica {
            id,
            addr: addrs[i],
            meta,
            transport,
            server,
            _dir: dir,
        });
    }
    let members: BTreeMap<NodeId, NodeAddr> = replicas
        .iter()
        .map(|r| {
            (
                r.id,
                NodeAddr {
                    rpc: r.addr.to_string(),
                    pg: String::new(),
                    domain: String::new(),
                },
            )
        })
        .collect();
    replicas[0]
        .meta
        .raft()
        .initialize(members)
        .await
        .expect("initialize");
    replicas
}

async fn leader(replicas: &[Replica], among: &[NodeId]) -> NodeId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for r in replicas.iter().filter(|r| among.contains(&r.id)) {
            let metrics = r.meta.raft().metrics().borrow().clone();
            if metrics.current_leader == Some(r.id) {
                return r.id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader elected among {among:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn schema(name: &str) -> Command {
    Command::CreateSchema {
        name: name.to_owned(),
        if_not_exists: false,
    }
}

async fn wait_for_schema(replica: &Replica, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !replica.meta.read_local().schemas.contains_key(name) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never applied schema {name}",
            replica.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_replicates_and_survives_a_partitioned_leader() {
    let replicas = replicas(3).await;
    let all = [1, 2, 3];
    let first = leader(&replicas, &all).await;
    let by_id = |id: NodeId| &replicas[(id - 1) as usize];
    by_id(first)
        .meta
        .write(schema("one"))
        .await
        .expect("write on the leader");
    for r in &replicas {
        wait_for_schema(r, "one").await;
    }

    // Cut the leader off in both directions.
    for r in &replicas {
        if r.id == first {
            for other in &replicas {
                r.transport.partition(other.addr);
            }
        } else {
            r.transport.partition(by_id(first).addr);
        }
    }
    let rest: Vec<NodeId> = all.iter().copied().filter(|id| *id != first).collect();
    let second = leader(&replicas, &rest).await;
    by_id(second)
        .meta
        .write(schema("two"))
        .await
        .expect("the majority keeps accepting writes");
    let minority = tokio::time::timeout(
        Duration::from_secs(2),
        by_id(first).meta.write(schema("lost")),
    )
    .await;
    assert!(
        !matches!(minority, Ok(Ok(_))),
        "the isolated old leader must not commit: {minority:?}"
    );

    // Heal: the old leader learns what it missed, and its lone write is gone.
    for r in &replicas {
        r.transport.heal();
    }
    for r in &replicas {
        wait_for_schema(r, "two").await;
    }
    let final_leader = leader(&replicas, &all).await;
    let catalog = by_id(final_leader).meta.read().await.expect("read");
    assert!(!catalog.schemas.contains_key("lost"));
    for r in &replicas {
        r.server.abort();
        r.meta.shutdown().await;
    }
}
