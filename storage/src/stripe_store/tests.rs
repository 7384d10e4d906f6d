//! The stripe store over an in-process cluster: every node a chunk store
//! in a temporary directory, reached through a transport that can take a
//! node down, make it refuse chunks, or damage what it sends.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use quarry_common::catalog::{Catalog, DataFile, StripeLayout};

use super::*;
use crate::StripeWriter;
use crate::placement::Candidate;

/// What a fake node does when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Does not answer (a dead node).
    Down,
    /// Answers every put with an error (a full disk).
    RefusesPuts,
    /// Flips a bit of every chunk it sends.
    Damages,
}

#[derive(Debug)]
struct Net {
    _dirs: Vec<tempfile::TempDir>,
    stores: BTreeMap<NodeId, ChunkStore>,
    caches: BTreeMap<NodeId, ChunkStore>,
    faults: Mutex<BTreeMap<NodeId, Fault>>,
    catalog: Mutex<Arc<Catalog>>,
    puts: Mutex<Vec<(NodeId, ChunkId)>>,
}

impl Net {
    fn new(nodes: u64) -> Arc<Net> {
        let mut dirs = Vec::new();
        let mut stores = BTreeMap::new();
        let mut caches = BTreeMap::new();
        for node in 1..=nodes {
            let dir = tempfile::tempdir().expect("temp dir");
            stores.insert(
                node,
                ChunkStore::open(dir.path().join("chunks")).expect("store"),
            );
            caches.insert(
                node,
                ChunkStore::open(dir.path().join("cache")).expect("cache"),
            );
            dirs.push(dir);
        }
        Arc::new(Net {
            _dirs: dirs,
            stores,
            caches,
            faults: Mutex::new(BTreeMap::new()),
            catalog: Mutex::new(Arc::new(Catalog::default())),
            puts: Mutex::new(Vec::new()),
        })
    }

    fn fault(&self, node: NodeId) -> Fault {
        *self
            .faults
            .lock()
            .expect("lock")
            .get(&node)
            .unwrap_or(&Fault::None)
    }

    fn set(&self, node: NodeId, fault: Fault) {
        self.faults.lock().expect("lock").insert(node, fault);
    }

    fn commit(&self, stripes: &[Stripe]) {
        let mut catalog = self.catalog.lock().expect("lock");
        let mut next = (**catalog).clone();
        for stripe in stripes {
            next.add_stripe(stripe.clone());
        }
        *catalog = Arc::new(next);
    }

    /// Node `me`'s stripe store.
    fn store(self: &Arc<Net>, me: NodeId) -> StripeStore {
        StripeStore::new(
            self.stores[&me].clone(),
            self.caches[&me].clone(),
            Arc::new(View {
                me,
                net: self.clone(),
            }),
        )
    }
}

#[derive(Debug)]
struct View {
    me: NodeId,
    net: Arc<Net>,
}

#[async_trait]
impl ChunkTransport for View {
    fn node_id(&self) -> NodeId {
        self.me
    }

    fn live_nodes(&self) -> Vec<Candidate> {
        self.net
            .stores
            .keys()
            .filter(|n| self.net.fault(**n) != Fault::Down)
            .map(|n| (*n, String::new()))
            .collect()
    }

    fn maybe_up(&self, node: NodeId) -> bool {
        self.net.fault(node) != Fault::Down
    }

    fn cluster_size(&self) -> usize {
        self.net.stores.len()
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.net.catalog.lock().expect("lock").clone()
    }

    async fn get(&self, node: NodeId, chunk: ChunkRef) -> Result<Bytes> {
        let remote = |e: Error| Error::Remote {
            node,
            chunk: chunk.id,
            fault: e.fault(),
            message: e.to_string(),
        };
        match self.net.fault(node) {
            Fault::Down => Err(Error::Unreachable {
                node,
                chunk: chunk.id,
                reason: "connection refused".into(),
            }),
            fault => {
                let data = self.net.stores[&node].get(&chunk).map_err(remote)?;
                if fault != Fault::Damages {
                    return Ok(data);
                }
                let mut damaged = data.to_vec();
                damaged[0] ^= 1;
                Ok(Bytes::from(damaged))
            }
        }
    }

    async fn get_range(&self, node: NodeId, chunk: ChunkRef, range: Range<u64>) -> Result<Bytes> {
        let whole = self.get(node, chunk).await?;
        Ok(whole.slice(range.start as usize..range.end as usize))
    }

    async fn put(&self, node: NodeId, chunk: ChunkId, data: Bytes) -> Result<()> {
        match self.net.fault(node) {
            Fault::Down => Err(Error::Unreachable {
                node,
                chunk,
                reason: "connection refused".into(),
            }),
            Fault::RefusesPuts => Err(Error::Remote {
                node,
                chunk,
                fault: crate::Fault::Io,
                message: "no space left on device".into(),
            }),
            _ => {
                self.net.stores[&node].put_as(chunk, &data)?;
                self.net.puts.lock().expect("lock").push((node, chunk));
                Ok(())
            }
        }
    }
}

fn layout(data_chunks: u8, parity_chunks: u8) -> Option<StripeLayout> {
    Some(StripeLayout {
        data_chunks,
        parity_chunks,
    })
}

/// Writes `count` data files of distinct lengths from `store`'s node
/// through a stripe writer with `layout`; returns the files, their bytes
/// and the stripes, or the first error.
async fn write_files(
    store: &StripeStore,
    layout: Option<StripeLayout>,
    count: usize,
) -> Result<(Vec<DataFile>, Vec<Bytes>, Vec<Stripe>)> {
    let writer = StripeWriter::new(store.clone(), layout);
    let mut files = Vec::new();
    let mut contents = Vec::new();
    for i in 0..count {
        let bytes = Bytes::from(vec![i as u8 + 1; 1000 + 37 * i]);
        let chunk = writer.put(bytes.clone()).await?;
        files.push(DataFile {
            chunk: chunk.id,
            size_bytes: chunk.size_bytes,
            checksum_crc32c: chunk.checksum_crc32c,
            row_count: 0,
            column_stats: Vec::new(),
        });
        contents.push(bytes);
    }
    let stripes = writer.finish().await?;
    Ok((files, contents, stripes))
}

fn file_ref(file: &DataFile) -> ChunkRef {
    ChunkRef {
        id: file.chunk,
        size_bytes: file.size_bytes,
        checksum_crc32c: file.checksum_crc32c,
    }
}

#[tokio::test]
async fn sealed_stripes_hold_each_chunk_on_a_distinct_node_readable_everywhere() {
    let net = Net::new(4);
    let writer = net.store(1);
    let (files, contents, stripes) = write_files(&writer, layout(2, 1), 5).await.expect("write");
    assert_eq!(stripes.len(), 3, "5 files in stripes of 2");
    for stripe in &stripes {
        let nodes: HashSet<NodeId> = stripe.chunks.iter().map(|c| c.node).collect();
        assert_eq!(
            nodes.len(),
            stripe.chunks.len(),
            "distinct nodes: {stripe:?}"
        );
        assert_eq!(stripe.parity_chunks(), 1);
        for chunk in &stripe.chunks {
            net.stores[&chunk.node]
                .get(&reference(chunk))
                .expect("every chunk stored, verified, where the stripe says");
        }
        for chunk in stripe.data().iter().filter(|c| c.node != 1) {
            assert!(
                !net.stores[&1].list().expect("list").contains(&chunk.chunk),
                "a file placed elsewhere is never written on the writer's node"
            );
        }
    }
    net.commit(&stripes);
    for reader in 1..=4 {
        let store = net.store(reader);
        for (file, bytes) in files.iter().zip(&contents) {
            assert_eq!(&store.get(file_ref(file)).await.expect("read"), bytes);
            assert_eq!(
                store
                    .get_range(file_ref(file), 7..900)
                    .await
                    .expect("range"),
                bytes.slice(7..900)
            );
        }
    }
}

#[tokio::test]
async fn a_node_that_refuses_chunks_is_skipped_and_a_stripe_with_too_few_nodes_fails() {
    let net = Net::new(4);
    net.set(2, Fault::RefusesPuts);
    let writer = net.store(1);
    let (_, _, stripes) = write_files(&writer, layout(2, 1), 4)
        .await
        .expect("write around node 2");
    assert!(
        stripes.iter().all(|s| s.chunks.iter().all(|c| c.node != 2)),
        "nothing placed on the refusing node: {stripes:?}"
    );
    net.set(3, Fault::RefusesPuts);
    let e = write_files(&writer, layout(2, 1), 2)
        .await
        .expect_err("two of four nodes refuse a 3-chunk stripe");
    assert!(matches!(e, Error::Placement { needed: 3, .. }), "{e}");
}

#[tokio::test]
async fn a_chunk_on_a_down_node_is_rebuilt_from_its_stripe_and_cached() {
    let net = Net::new(3);
    let writer = net.store(1);
    let (files, contents, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
    net.commit(&stripes);
    let stripe = &stripes[0];
    let away = stripe
        .data()
        .iter()
        .find(|c| c.node != 1)
        .expect("a data chunk elsewhere");
    let index = stripe
        .chunks
        .iter()
        .position(|c| c.chunk == away.chunk)
        .expect("in stripe");
    let file = files
        .iter()
        .position(|f| f.chunk == away.chunk)
        .expect("a file");
    net.set(away.node, Fault::Down);
    let reader = net.store(1);
    assert_eq!(
        reader
            .get(file_ref(&files[file]))
            .await
            .expect("degraded read"),
        contents[file]
    );
    assert!(
        net.caches[&1]
            .get(&reference(&stripe.chunks[index]))
            .is_ok(),
        "the rebuilt chunk is cached"
    );
    assert_eq!(
        reader
            .get_range(file_ref(&files[file]), 3..40)
            .await
            .expect("range from the cache"),
        contents[file].slice(3..40)
    );
    // With a second node down, fewer than k chunks remain.
    let other = stripe
        .chunks
        .iter()
        .find(|c| c.node != away.node && c.node != 1)
        .expect("a third node");
    net.set(other.node, Fault::Down);
    let e = net
        .store(1)
        .rebuild(stripe, index)
        .await
        .expect_err("one of three chunks left");
    assert!(matches!(e, Error::StripeLost { .. }), "{e}");
}

#[tokio::test]
async fn bytes_damaged_in_transfer_are_refused_and_read_around() {
    let net = Net::new(3);
    let writer = net.store(1);
    let (files, contents, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
    net.commit(&stripes);
    let away = stripes[0]
        .data()
        .iter()
        .find(|c| c.node != 1)
        .expect("remote data chunk")
        .clone();
    net.set(away.node, Fault::Damages);
    let e = net
        .store(1)
        .fetch(&away)
        .await
        .expect_err("damaged bytes refused");
    assert!(
        matches!(e, Error::Damaged { node, .. } if node == away.node),
        "{e}"
    );
    // The read rebuilds the chunk from the stripe's other two chunks.
    let file = files
        .iter()
        .position(|f| f.chunk == away.chunk)
        .expect("a file");
    assert_eq!(
        net.store(1)
            .get(file_ref(&files[file]))
            .await
            .expect("read around"),
        contents[file]
    );
}

#[tokio::test]
async fn scrub_rewrites_a_corrupt_local_chunk_from_its_stripe() {
    let net = Net::new(3);
    let writer = net.store(1);
    let (_, _, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
    net.commit(&stripes);
    let (holder, chunk) = stripes[0]
        .chunks
        .iter()
        .map(|c| (c.node, c.clone()))
        .next()
        .expect("a chunk");
    let path = net.stores[&holder].path_of(chunk.chunk);
    let original = std::fs::read(&path).expect("read");
    let mut damaged = original.clone();
    damaged[original.len() / 2] ^= 0x40;
    std::fs::write(&path, &damaged).expect("damage");
    assert_eq!(net.store(holder).scrub().await, 1, "one chunk repaired");
    assert_eq!(std::fs::read(&path).expect("read"), original);
    assert_eq!(net.store(holder).scrub().await, 0, "nothing left to repair");
}

#[tokio::test]
async fn new_parity_goes_to_nodes_without_the_stripes_data() {
    let net = Net::new(5);
    let writer = net.store(1);
    let (_, _, stripes) = write_files(&writer, layout(2, 0), 2).await.expect("write");
    let data = stripes[0].data().to_vec();
    let holders: HashSet<NodeId> = data.iter().map(|c| c.node).collect();
    let parity = writer
        .new_parity(stripes[0].id, &data, 2)
        .await
        .expect("parity");
    assert_eq!(parity.len(), 2);
    let nodes: HashSet<NodeId> = parity.iter().map(|c| c.node).collect();
    assert_eq!(nodes.len(), 2, "distinct nodes");
    assert!(
        nodes.is_disjoint(&holders),
        "{nodes:?} vs data on {holders:?}"
    );
    // The parity rebuilds a lost data chunk.
    let mut stripe = stripes[0].clone();
    stripe.chunks.extend(parity);
    for node in &holders {
        net.set(*node, Fault::Down);
    }
    let reader = net.store(*nodes.iter().next().expect("a parity node"));
    let rebuilt = reader
        .rebuild(&stripe, 0)
        .await
        .expect("rebuilt from parity alone");
    assert_eq!(rebuilt.len() as u64, stripe.chunks[0].size_bytes);
}

#[tokio::test]
async fn collection_keeps_placed_chunks_and_young_orphans() {
    let net = Net::new(3);
    let writer = net.store(1);
    let (_, _, stripes) = write_files(&writer, layout(2, 1), 2).await.expect("write");
    net.commit(&stripes);
    let orphan = net.stores[&1].put(b"an uncommitted file").expect("put");
    let catalog = net.catalog.lock().expect("lock").clone();
    let before = net.stores[&1].list().expect("list").len();
    assert_eq!(
        writer
            .collect(&catalog, SystemTime::now() - ORPHAN_GRACE)
            .expect("collect"),
        0,
        "a young orphan stays"
    );
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(
        writer.collect(&catalog, later).expect("collect"),
        1,
        "an old orphan goes"
    );
    assert!(net.stores[&1].get(&orphan).is_err());
    assert_eq!(
        net.stores[&1].list().expect("list").len(),
        before - 1,
        "placed chunks stay"
    );
}

#[tokio::test]
async fn a_chunk_that_moved_away_stays_for_the_moved_grace() {
    let net = Net::new(4);
    let (_, _, stripes) = write_files(&net.store(1), layout(2, 1), 2)
        .await
        .expect("write");
    net.commit(&stripes);
    let catalog = net.catalog.lock().expect("lock").clone();
    let stripe = catalog.stripes.values().next().expect("a stripe").clone();
    let (node, chunk) = (stripe.chunks[0].node, stripe.chunks[0].chunk);
    let elsewhere = (1..=4)
        .find(|n| stripe.chunks.iter().all(|c| c.node != *n))
        .expect("a node without the stripe");
    let store = net.store(node);
    let later = SystemTime::now() + Duration::from_secs(1);
    let kept = store.clone().with_moved_grace(Duration::from_secs(3600));
    assert_eq!(
        kept.collect(&catalog, later).expect("collect"),
        0,
        "placed here"
    );
    // The chunk moves away (as a rebalance's MoveChunk does).
    let mut moved = (*catalog).clone();
    let mut placed = stripe.clone();
    placed.chunks[0].node = elsewhere;
    moved.stripes.insert(stripe.id, placed);
    assert_eq!(
        kept.collect(&moved, later).expect("collect"),
        0,
        "a chunk that moved away stays within the grace, however old its file"
    );
    assert!(net.stores[&node].list().expect("list").contains(&chunk));
    let gone = store.with_moved_grace(Duration::ZERO);
    assert_eq!(
        gone.collect(&moved, later).expect("collect"),
        1,
        "past the grace it goes"
    );
    assert!(!net.stores[&node].list().expect("list").contains(&chunk));
}

#[tokio::test]
async fn files_go_once_to_their_holders_and_parity_as_a_stripe_completes() {
    let net = Net::new(4);
    let store = net.store(1);
    let writer = StripeWriter::new(store.clone(), layout(2, 1));
    let first = writer.put(Bytes::from(vec![7u8; 3000])).await.expect("put");
    let held: Vec<NodeId> = net
        .stores
        .iter()
        .filter(|(_, s)| s.list().expect("list").contains(&first.id))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(held.len(), 1, "one copy, on its holder: {held:?}");
    assert_eq!(
        store.get(first).await.expect("an uncommitted file reads"),
        Bytes::from(vec![7u8; 3000])
    );
    assert_eq!(
        store.get_range(first, 10..20).await.expect("and by range"),
        Bytes::from(vec![7u8; 10])
    );
    let second = writer.put(Bytes::from(vec![9u8; 2000])).await.expect("put");
    let stored_before_finish: HashSet<ChunkId> = net
        .stores
        .values()
        .flat_map(|s| s.list().expect("list"))
        .collect();
    let stripes = writer.finish().await.expect("finish");
    assert_eq!(stripes.len(), 1);
    assert!(
        stored_before_finish.contains(&stripes[0].chunks[2].chunk),
        "the second file completes the stripe: its parity is sent with it"
    );
    let data: Vec<ChunkId> = stripes[0].data().iter().map(|c| c.chunk).collect();
    assert_eq!(data, vec![first.id, second.id]);
    drop(writer);
    assert!(
        store.pending().is_empty(),
        "a dropped writer forgets its files"
    );
}

#[tokio::test]
async fn a_discarded_file_leaves_an_open_stripe_and_stays_in_a_sealed_one() {
    let net = Net::new(4);
    let store = net.store(1);
    let writer = StripeWriter::new(store.clone(), layout(2, 1));
    let put = |n: u8| {
        let writer = &writer;
        async move {
            writer
                .put(Bytes::from(vec![n; 500 + usize::from(n)]))
                .await
                .expect("put")
        }
    };
    let (a, b) = (put(1).await, put(2).await);
    let c = put(3).await;
    writer.discard(c.id);
    let d = put(4).await;
    writer.discard(a.id);
    let stripes = writer.finish().await.expect("finish");
    let data: Vec<Vec<ChunkId>> = stripes
        .iter()
        .map(|s| s.data().iter().map(|c| c.chunk).collect())
        .collect();
    assert_eq!(
        data,
        vec![vec![a.id, b.id], vec![d.id]],
        "a stays for b's sake; c left the open stripe"
    );

    let writer = StripeWriter::new(store.clone(), layout(2, 1));
    let e = writer.put(Bytes::from_static(b"e")).await.expect("put");
    let f = writer.put(Bytes::from_static(b"f")).await.expect("put");
    writer.discard(e.id);
    writer.discard(f.id);
    assert!(
        writer.finish().await.expect("finish").is_empty(),
        "a stripe of only discarded files is not committed"
    );
}

#[tokio::test]
async fn a_damaged_copy_on_another_node_is_data_corruption_here_too() {
    let net = Net::new(4);
    let store = net.store(1);
    let writer = StripeWriter::new(store.clone(), layout(2, 1));
    let mut files = Vec::new();
    for i in 0..2u8 {
        files.push(writer.put(Bytes::from(vec![i; 3000])).await.expect("put"));
    }
    // Two files of an open stripe are on two distinct nodes: one is not this one.
    let (file, holder) = files
        .iter()
        .find_map(|f| {
            net.stores
                .iter()
                .find(|(n, s)| **n != 1 && s.list().expect("list").contains(&f.id))
                .map(|(n, _)| (*f, *n))
        })
        .expect("a file on another node");
    let path = net.stores[&holder].path_of(file.id);
    let mut damaged = std::fs::read(&path).expect("read");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&path, &damaged).expect("damage");
    let e = store.get(file).await.expect_err("a damaged copy");
    assert!(
        matches!(e, Error::Remote { node, fault: crate::Fault::Corrupt, .. } if node == holder),
        "{e:?}"
    );
    assert!(e.is_data_corruption(), "XX001, as for a local copy: {e}");
}
