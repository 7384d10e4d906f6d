//! A follower that joins after the log was purged catches up from the
//! leader's snapshot file, sent in chunks and installed as a file.
// openraft's RPCError is large and is the error type its traits require.
#![allow(clippy::result_large_err)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quarry_raft::{Meta, MetaConfig, NodeAddr, NodeId, Raft, TypeConfig};
use support::create_table;

/// Routes Raft RPCs between in-process nodes; counts snapshot chunks.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    snapshot_chunks: Arc<AtomicUsize>,
}

impl Router {
    fn add(&self, id: NodeId, raft: Raft) {
        self.nodes.lock().expect("router lock").insert(id, raft);
    }

    fn remove(&self, id: NodeId) {
        self.nodes.lock().expect("router lock").remove(&id);
    }

    fn get<E: std::error::Error>(&self, id: NodeId) -> Result<Raft, RPCError<NodeId, NodeAddr, E>> {
        self.nodes
            .lock()
            .expect("router lock")
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                let reason = std::io::Error::other(format!("node {id} is not running"));
                RPCError::Unreachable(Unreachable::new(&reason))
            })
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> Peer {
        Peer {
            target,
            router: self.clone(),
        }
    }
}

struct Peer {
    target: NodeId,
    router: Router,
}

impl Peer {
    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, NodeAddr, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.router.get(self.target)?;
        self.router.snapshot_chunks.fetch_add(1, Ordering::SeqCst);
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

fn addr(id: NodeId) -> NodeAddr {
    NodeAddr {
        rpc: format!("node-{id}"),
        ..NodeAddr::default()
    }
}

async fn open(dir: &std::path::Path, id: NodeId, router: &Router) -> Meta {
    let mut config = MetaConfig::new(id, addr(id));
    config.heartbeat_interval = Duration::from_millis(50);
    config.snapshot_every_entries = 5;
    // Small chunks, so the snapshot travels in many messages.
    config.snapshot_chunk_bytes = 256;
    let meta = Meta::open(
        &dir.join("meta.redb"),
        config,
        router.clone(),
        Arc::new(quarry_raft::NoLink),
    )
    .await
    .expect("open");
    router.add(id, meta.raft().clone());
    meta
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("meta.snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_follower_behind_the_purged_log_installs_the_snapshot_file_in_chunks() {
    let router = Router::default();
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let leader = open(leader_dir.path(), 1, &router).await;
    leader.bootstrap(7).await.expect("bootstrap");
    for i in 0..40 {
        leader
            .write(create_table(&format!("t{i}")))
            .await
            .expect("create");
    }
    // The log the follower would need has been purged: only a snapshot helps.
    let purged = leader
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 10), "log purged")
        .await
        .expect("the leader purges its log after snapshots")
        .purged;
    assert!(purged.is_some());

    let follower = open(follower_dir.path(), 2, &router).await;
    leader
        .raft()
        .add_learner(2, addr(2), true)
        .await
        .expect("the learner catches up");
    let expected = leader.read().await.expect("read");
    let index = leader.raft().metrics().borrow().last_applied;
    follower
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(index.map(|l| l.index), "caught up")
        .await
        .expect("the follower applies up to the leader");
    assert_eq!(follower.read_local(), expected);
    assert_eq!(follower.read_local().tables.len(), 40);
    let chunks = router.snapshot_chunks.load(Ordering::SeqCst);
    assert!(chunks > 4, "the snapshot came in {chunks} chunks");
    // The received file became a snapshot; the follower may meanwhile be
    // writing a snapshot of its own (a .partial file).
    let files = snapshot_files(follower_dir.path());
    assert!(files.iter().any(|f| f.ends_with(".qsnap")), "{files:?}");
    assert!(
        !files.iter().any(|f| f.starts_with("receiving-")),
        "{files:?}"
    );

    // After a restart the follower starts from its installed snapshot file.
    router.remove(2);
    follower.shutdown().await;
    drop(follower);
    leader.shutdown().await;
    let restarted = open(follower_dir.path(), 2, &router).await;
    let installed = restarted
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "snapshot loaded")
        .await
        .expect("the restarted follower reports its installed snapshot")
        .snapshot
        .expect("a snapshot");
    assert!(installed.index > 10, "{installed:?}");
    restarted
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(index.map(|l| l.index), "replayed")
        .await
        .expect("the restarted follower replays its log after the snapshot");
    assert_eq!(restarted.read_local(), expected);
    restarted.shutdown().await;
}
