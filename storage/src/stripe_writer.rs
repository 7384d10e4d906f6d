//! [`StripeWriter`]: the write path of new data files (docs/ARCHITECTURE.md,
//! "Write path"). Each data file goes straight to its holder as the engine
//! finishes it, the next node of its open stripe's placement order; when the
//! stripe has k files its m parity chunks are computed from the bytes held
//! since, and sent to their nodes at once. A file is written once, on its
//! holder: never to this node's disk first to be read back at commit.
//!
//! ```text
//!  put(file) ──► open stripe: next node of placement_order(stripe) ──ChunkTransport::put──► holder
//!                 k files? ──► encode m parity ──place (concurrent)──► holders ──► sealed Stripe
//!  finish() ──► seal the open stripe (fewer than k files) ──► stripes for the commit
//! ```
//!
//! Until the commit records the stripes, the chunks are orphans to every node
//! but this one: a crash leaves no visible file, and each holder's collection
//! deletes them (at its next start, or after `ORPHAN_GRACE`). While the
//! writer lives, this node's reads of its files find them through the store's
//! pending locations.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use quarry_common::catalog::{ChunkId, NodeId, Stripe, StripeChunk, StripeLayout};
use tokio::sync::Mutex;

use crate::placement::{effective_layout, placement_order};
use crate::stripe_store::{StripeStore, blocking, new_chunk_id};
use crate::{ChunkRef, Error, Result};

/// Places the new data files of one table written by one transaction into
/// stripes as they arrive. Dropping it (after the commit, or instead of one)
/// forgets where its files are; it deletes nothing a commit may have recorded.
#[derive(Debug)]
pub struct StripeWriter {
    store: StripeStore,
    layout: StripeLayout,
    state: Mutex<State>,
    /// Files discarded since the state was last locked (discard never waits).
    discarded: std::sync::Mutex<Vec<ChunkId>>,
}

#[derive(Debug, Default)]
struct State {
    open: Option<OpenStripe>,
    sealed: Vec<Stripe>,
    /// Files of sealed stripes the transaction no longer adds.
    dropped: HashSet<ChunkId>,
    /// Every data file this writer stored, to forget at drop.
    written: Vec<ChunkId>,
}

/// The stripe files are going to now.
#[derive(Debug)]
struct OpenStripe {
    id: ChunkId,
    data_chunks: usize,
    parity_chunks: usize,
    /// Nodes not used yet, in placement order.
    spare: VecDeque<NodeId>,
    /// Data files placed: id, size, checksum, node; bytes kept for parity.
    files: Vec<(StripeChunk, Bytes)>,
}

impl StripeWriter {
    /// A writer of stripes with `layout` (None: the cluster's default) into `store`.
    pub fn new(store: StripeStore, layout: Option<StripeLayout>) -> Self {
        let layout =
            layout.unwrap_or_else(|| StripeLayout::for_cluster(store.cluster().cluster_size()));
        StripeWriter {
            store,
            layout,
            state: Mutex::new(State::default()),
            discarded: std::sync::Mutex::default(),
        }
    }

    /// Stores a new data file on its holder (the next node of the open
    /// stripe; the node after it if that one refuses) and, if it completes
    /// the stripe, the stripe's parity. Returns the file's reference.
    ///
    /// # Errors
    /// `Placement` when no node of the stripe's order accepts the file, or
    /// the parity; chunks already stored are orphans collection removes.
    pub async fn put(&self, bytes: Bytes) -> Result<ChunkRef> {
        self.put_as(new_chunk_id(), bytes).await
    }

    /// [`StripeWriter::put`] of a file with id `id` (a buffered file of the
    /// catalog, stored as it is).
    ///
    /// # Errors
    /// As [`StripeWriter::put`].
    pub async fn put_as(&self, id: ChunkId, bytes: Bytes) -> Result<ChunkRef> {
        let mut state = self.state.lock().await;
        self.apply_discards(&mut state);
        if state.open.is_none() {
            state.open = Some(self.open_stripe());
        }
        let open = state.open.as_mut().expect("just opened");
        let node = loop {
            let Some(node) = open.spare.pop_front() else {
                return Err(Error::Placement {
                    stripe: open.id,
                    needed: open.data_chunks + open.parity_chunks,
                    placed: open.files.len(),
                });
            };
            match self.store.store_on(node, id, bytes.clone()).await {
                Ok(()) => break node,
                Err(e) => {
                    tracing::warn!(node, chunk = %id, error = %e, "placing a data file failed; trying the next node")
                }
            }
        };
        self.store.note_pending(id, node);
        let chunk = StripeChunk {
            chunk: id,
            node,
            size_bytes: bytes.len() as u64,
            checksum_crc32c: crc32c::crc32c(&bytes),
        };
        let reference = ChunkRef {
            id,
            size_bytes: chunk.size_bytes,
            checksum_crc32c: chunk.checksum_crc32c,
        };
        let keep = if open.parity_chunks > 0 {
            bytes
        } else {
            Bytes::new()
        };
        open.files.push((chunk, keep));
        let full = open.files.len() == open.data_chunks;
        state.written.push(id);
        if full {
            let open = state.open.take().expect("open");
            let stripe = self.seal(open).await?;
            state.sealed.push(stripe);
        }
        Ok(reference)
    }

    /// Forgets data file `chunk`, which the transaction no longer adds: a file
    /// of the open stripe leaves it (its node takes the next file) and is
    /// deleted if it is on this node (elsewhere it is an orphan); a file of a
    /// sealed stripe stays, as its stripe's other files need it. Applied at
    /// the next [`StripeWriter::put`] or [`StripeWriter::finish`].
    pub fn discard(&self, chunk: ChunkId) {
        self.discarded
            .lock()
            .expect("discards are never locked across a panic")
            .push(chunk);
    }

    fn apply_discards(&self, state: &mut State) {
        let discarded = std::mem::take(
            &mut *self
                .discarded
                .lock()
                .expect("discards are never locked across a panic"),
        );
        for chunk in discarded {
            if let Some(open) = state.open.as_mut()
                && let Some(i) = open.files.iter().position(|(c, _)| c.chunk == chunk)
            {
                let (placed, _) = open.files.remove(i);
                open.spare.push_front(placed.node);
                self.store.discard(chunk);
            } else {
                state.dropped.insert(chunk);
            }
        }
    }

    /// Seals the open stripe (with fewer than k files) and returns every
    /// stripe with a file the transaction still adds, for its commit. The
    /// writer is then empty.
    ///
    /// # Errors
    /// As [`StripeWriter::put`], for the open stripe's parity.
    pub async fn finish(&self) -> Result<Vec<Stripe>> {
        let mut state = self.state.lock().await;
        self.apply_discards(&mut state);
        if let Some(open) = state.open.take()
            && !open.files.is_empty()
        {
            let stripe = self.seal(open).await?;
            state.sealed.push(stripe);
        }
        let dropped = std::mem::take(&mut state.dropped);
        Ok(std::mem::take(&mut state.sealed)
            .into_iter()
            .filter(|s| s.data().iter().any(|c| !dropped.contains(&c.chunk)))
            .collect())
    }

    fn open_stripe(&self) -> OpenStripe {
        let id = new_chunk_id();
        let live = self.store.cluster().live_nodes();
        let (data_chunks, parity_chunks) = effective_layout(self.layout, live.len());
        OpenStripe {
            id,
            data_chunks,
            parity_chunks,
            spare: placement_order(id, &live, &HashSet::new()).into(),
            files: Vec::new(),
        }
    }

    /// Computes and places `open`'s parity over the files it holds.
    async fn seal(&self, open: OpenStripe) -> Result<Stripe> {
        let OpenStripe {
            id,
            parity_chunks,
            spare,
            files,
            ..
        } = open;
        let (mut chunks, data): (Vec<StripeChunk>, Vec<Bytes>) = files.into_iter().unzip();
        let placed = chunks.len();
        if parity_chunks > 0 {
            let parity = blocking(move || {
                let refs: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
                crate::stripe::encode_parity(&refs, parity_chunks)
            })
            .await?;
            let parity: Vec<(ChunkId, Bytes)> = parity
                .into_iter()
                .map(|p| (new_chunk_id(), Bytes::from(p)))
                .collect();
            let nodes = self
                .store
                .place(id, &parity, spare.into(), &HashSet::new())
                .await
                .map_err(|e| match e {
                    Error::Placement { placed: p, .. } => Error::Placement {
                        stripe: id,
                        needed: placed + parity_chunks,
                        placed: placed + p,
                    },
                    e => e,
                })?;
            chunks.extend(parity.into_iter().zip(nodes).map(|((chunk, bytes), node)| {
                StripeChunk {
                    chunk,
                    node,
                    size_bytes: bytes.len() as u64,
                    checksum_crc32c: crc32c::crc32c(&bytes),
                }
            }));
        }
        let data_chunks = chunks.len() - parity_chunks;
        Ok(Stripe {
            id,
            data_chunks: data_chunks as u8,
            chunks,
        })
    }
}

impl Drop for StripeWriter {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        self.store.forget_pending(&state.written);
    }
}
