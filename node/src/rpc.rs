//! Internal RPC between nodes (docs/ARCHITECTURE.md §8): tokio TCP, length-delimited frames,
//! typed request and response enums in postcard, a version byte in every frame,
//! a deadline on every call, pooled connections, and a [`Transport`] seam through
//! which tests drop, delay or partition messages between chosen nodes.
//!
//! Frame: `u32 length (big-endian) | u8 version | postcard(message)`; the length
//! counts the version byte and the message. One call at a time per connection; a
//! pool keeps idle connections per peer for reuse.
//!
//! Requests are idempotent or carry their own ids, so a caller may retry a call
//! that failed with [`RpcError::Unreachable`] or [`RpcError::DeadlineExceeded`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quarry_common::catalog::ChunkId;
use quarry_raft::{Applied, CatalogError, NodeAddr, NodeId, Proposal, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Version of the frame layout and message encodings; a peer with another
/// version is refused rather than misread. postcard is not self-describing,
/// so any change to a message type, including a new Raft command variant
/// (version 2: `ReplaceParity`, `Regroup`; version 3: `Exchange`; version 4:
/// dynamic filters between fragments; version 5: `GetChunkRange`; version 6:
/// `ChunkFailed`; version 7: `RemoteMetaError` keeps storage failures and
/// names the node; version 8: `CreateView`, `DropView`, `RenameView`; version
/// 9: `Comment`, `AddConstraint`, `DropConstraint`, `Batch`; version 11:
/// roles, privileges, owners, access tokens, `SetGossipKey`, and gossip
/// datagrams with an HMAC tag; version 14: `SetExternalSource`; version 15:
/// `skipped` in `Append` and `AppendBuffered`, `AppendPending`,
/// `CommitPending`, `DiscardPending`; version 16: `CommitBuffered`,
/// `SpillBuffered`; version 17: fragment reports carry their cost, and the
/// job and backend requests; version 18: `SetMaintenance` and the drain
/// requests; version 19: `StartRebalance`, `FinishRebalance`,
/// `Decommission`, `Restore`; version 20: `SetPartitioning`,
/// `SetFileLayout`; version 21: `CommitRows`, `SetDeletes`; version 22:
/// `CreateType`, `DropType`, `DeclareTypes` and the subscription
/// commands; version 23: a subscription's source WAL end, its tables'
/// copy positions and REFRESH PUBLICATION), needs a new version.
pub const WIRE_VERSION: u8 = 23;
/// Largest frame accepted, in bytes (bounds a peer's memory use per call).
pub const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Idle connections kept per peer.
pub const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Liveness probe; the peer echoes the payload.
    Ping {
        /// Echoed back.
        payload: u64,
    },
    /// Raft AppendEntries (log replication and heartbeats).
    RaftAppend(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    RaftVote(VoteRequest<NodeId>),
    /// Raft InstallSnapshot (one chunk).
    RaftSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A node with an empty data dir asks to join: the leader assigns it a node
    /// id and adds it as a Raft learner.
    Join {
        /// The joining node's addresses and failure domain.
        addr: NodeAddr,
    },
    /// A node that has a data dir checks that it belongs to this cluster and
    /// that its node id is not in use by another live node.
    Hello {
        /// The cluster id in its data dir.
        cluster_id: u128,
        /// Its node id.
        node_id: NodeId,
        /// Its addresses.
        addr: NodeAddr,
    },
    /// A write forwarded to the leader.
    Write(Proposal),
    /// A follower asks the leader for its read index.
    ReadIndex,
    /// Store a chunk on this node (stripe placement or repair).
    PutChunk {
        /// The chunk's id.
        chunk: ChunkId,
        /// Its bytes.
        data: Bytes,
    },
    /// A distributed query's fragments: start, fetch, metrics, stop.
    Exchange(quarry_exec::distributed::ExchangeRequest),
    /// Read a chunk this node holds, verified against `checksum_crc32c`.
    GetChunk {
        /// The chunk's id.
        chunk: ChunkId,
        /// Its recorded length.
        size_bytes: u64,
        /// Its recorded checksum.
        checksum_crc32c: u32,
    },
    /// Read bytes `start_bytes..end_bytes` of a chunk this node holds,
    /// verifying the blocks they cover.
    GetChunkRange {
        /// The chunk's id.
        chunk: ChunkId,
        /// Its recorded length.
        size_bytes: u64,
        /// Its recorded checksum.
        checksum_crc32c: u32,
        /// First byte.
        start_bytes: u64,
        /// End of the range (exclusive).
        end_bytes: u64,
    },
    /// The node's jobs and backends, and cancels ([`crate::jobs`]).
    Jobs(crate::jobs::JobRequest),
    /// A draining leader hands leadership over: the receiving voter starts
    /// an election at once (the Raft thesis's TimeoutNow, §3.10). Answered
    /// with `Ok` once the election is started.
    Elect,
}

/// A metadata error sent back to the node that forwarded a request: each
/// variant of [`quarry_raft::Error`], so the forwarding node reports what the
/// leader would have (the same SQLSTATE), naming the node that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteMetaError {
    /// The catalog refused the command.
    Catalog(CatalogError),
    /// The peer could not find a leader.
    NotLeader(Option<NodeId>),
    /// The outcome is unknown.
    Unavailable {
        /// The node that answered.
        node: NodeId,
        /// Its error.
        message: String,
    },
    /// The peer's metadata store failed.
    Storage {
        /// The node that answered.
        node: NodeId,
        /// Its error.
        message: String,
    },
}

impl RemoteMetaError {
    /// `error`, as node `node` sends it.
    pub fn new(node: NodeId, error: quarry_raft::Error) -> Self {
        match error {
            quarry_raft::Error::Catalog(e) => RemoteMetaError::Catalog(e),
            quarry_raft::Error::NotLeader { leader } => RemoteMetaError::NotLeader(leader),
            quarry_raft::Error::Unavailable(message) => {
                RemoteMetaError::Unavailable { node, message }
            }
            quarry_raft::Error::Storage(message) => RemoteMetaError::Storage { node, message },
        }
    }
}

impl From<RemoteMetaError> for quarry_raft::Error {
    fn from(e: RemoteMetaError) -> Self {
        match e {
            RemoteMetaError::Catalog(e) => quarry_raft::Error::Catalog(e),
            RemoteMetaError::NotLeader(leader) => quarry_raft::Error::NotLeader { leader },
            RemoteMetaError::Unavailable { node, message } => {
                quarry_raft::Error::Unavailable(format!("node {node}: {message}"))
            }
            RemoteMetaError::Storage { node, message } => {
                quarry_raft::Error::Storage(format!("node {node}: {message}"))
            }
        }
    }
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answer to `Ping`.
    Pong {
        /// The request's payload.
        payload: u64,
        /// The answering node.
        node_id: u64,
    },
    /// Answer to `RaftAppend`.
    RaftAppend(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `RaftVote`.
    RaftVote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `RaftSnapshot`.
    RaftSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// Answer to `Join`: the new node's id and the cluster's.
    Joined {
        /// The id assigned.
        node_id: NodeId,
        /// The cluster's id.
        cluster_id: u128,
    },
    /// Answer to `Hello` and `PutChunk`: accepted.
    Ok,
    /// The peer refuses the node (wrong cluster, node id in use); the text says
    /// why and what to do.
    Refused(String),
    /// Answer to `Write`.
    Written(Result<Applied, RemoteMetaError>),
    /// Answer to `ReadIndex`.
    ReadIndex(Result<u64, RemoteMetaError>),
    /// Answer to `GetChunk`: the verified bytes.
    Chunk(Bytes),
    /// Answer to `GetChunkRange`: the verified bytes and their CRC-32C, so
    /// the reader can tell they arrived as sent.
    ChunkRange {
        /// The bytes.
        data: Bytes,
        /// CRC-32C of `data`.
        checksum_crc32c: u32,
    },
    /// Answer to `Exchange`.
    Exchange(quarry_exec::distributed::ExchangeResponse),
    /// Answer to `Jobs`.
    Jobs(crate::jobs::JobResponse),
    /// The peer could not serve the request (its error, as text).
    Failed(String),
    /// Answer to `PutChunk`, `GetChunk` or `GetChunkRange`: the peer's chunk
    /// store failed; `fault` says how, so the asking node classifies it as
    /// its own (a corrupt copy there is XX001 here too).
    ChunkFailed {
        /// The kind of the error.
        fault: quarry_storage::Fault,
        /// The peer's error, as text.
        message: String,
    },
}

/// Why a call failed. Every variant leaves the caller free to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The request was not delivered: no connection could be made, or it broke
    /// while sending (peer down, network cut). The peer did not act on it.
    #[error("node at {0} is unreachable: {1}")]
    Unreachable(SocketAddr, String),
    /// The request was sent but the connection broke before the answer came:
    /// the peer may or may not have acted on it.
    #[error("connection to {0} lost before its answer: {1}")]
    AnswerLost(SocketAddr, String),
    /// No answer within the call's deadline; the peer may still act on it.
    #[error("no answer from {0} within {1:?}")]
    DeadlineExceeded(SocketAddr, Duration),
    /// The peer speaks another wire version.
    #[error("node at {peer} speaks wire version {theirs}, this node {WIRE_VERSION}")]
    Version {
        /// The peer.
        peer: SocketAddr,
        /// Its version.
        theirs: u8,
    },
    /// A frame did not decode (a bug or a foreign client).
    #[error("malformed message from {0}: {1}")]
    Protocol(SocketAddr, String),
}

fn encode<T: Serialize>(message: &T) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(WIRE_VERSION);
    frame
        .extend_from_slice(&postcard::to_allocvec(message).expect("encoding to a Vec cannot fail"));
    frame.freeze()
}

fn decode<T: for<'de> Deserialize<'de>>(peer: SocketAddr, frame: &[u8]) -> Result<T, RpcError> {
    let (&version, body) = frame
        .split_first()
        .ok_or_else(|| RpcError::Protocol(peer, "empty frame".to_owned()))?;
    if version != WIRE_VERSION {
        return Err(RpcError::Version {
            peer,
            theirs: version,
        });
    }
    postcard::from_bytes(body).map_err(|e| RpcError::Protocol(peer, e.to_string()))
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

/// A node-to-node connection: plain TCP, or mutual TLS over it.
#[derive(Debug)]
pub enum RpcStream {
    /// In the clear (`--insecure`, or no cluster CA given).
    Plain(TcpStream),
    /// Mutual TLS.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl RpcStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            RpcStream::Plain(s) => s,
            RpcStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for RpcStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            RpcStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for RpcStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            RpcStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            RpcStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            RpcStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            RpcStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How long a node may take to complete the TLS handshake of a node-to-node
/// connection before it is closed.
pub const RPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves RPC requests on this node.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(&self, request: RpcRequest) -> RpcResponse;
}

/// Accepts connections on `listener` and answers each request with `handler`,
/// until the task is dropped.
///
/// With `tls`, a connection is served only after a TLS handshake in which
/// the peer showed a certificate the cluster CA signed; one that does not is
/// logged and closed.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    tls: Option<Arc<crate::tls::ReloadableTls>>,
) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        let handler = handler.clone();
        let rpc_tls = tls.as_ref().and_then(|tls| tls.rpc());
        tokio::spawn(async move {
            let stream = match rpc_tls {
                None => RpcStream::Plain(socket),
                Some(rpc_tls) => {
                    let accepted = tokio::time::timeout(
                        RPC_HANDSHAKE_TIMEOUT,
                        rpc_tls.acceptor.accept(socket),
                    )
                    .await;
                    match accepted {
                        Ok(Ok(stream)) => RpcStream::Tls(Box::new(stream.into())),
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "refused a node connection: no certificate of this cluster's CA");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "refused a node connection: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let mut frames = Framed::new(stream, codec());
            while let Some(Ok(frame)) = frames.next().await {
                let response = match decode::<RpcRequest>(peer, &frame) {
                    Ok(request) => handler.handle(request).await,
                    Err(e) => RpcResponse::Failed(e.to_string()),
                };
                if frames.send(encode(&response)).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// How a node sends requests to others: the seam where tests inject faults.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to the node at `target` and waits at most `deadline`.
    ///
    /// # Errors
    /// [`RpcError`]; cancelling the future abandons the call.
    async fn call(
        &self,
        target: SocketAddr,
        request: RpcRequest,
        deadline: Duration,
    ) -> Result<RpcResponse, RpcError>;
}

/// TCP transport with a pool of idle connections per peer.
///
/// Every call runs on the runtime the transport was made on (the node's
/// network runtime), whichever runtime calls: a connection's readiness is
/// driven by the runtime that opened it, and one opened from the query
/// execution runtime would stall whenever its threads are busy in operators,
/// and with it any Raft heartbeat later sent over it from the pool.
#[derive(Debug)]
pub struct TcpTransport {
    pool: Arc<Pool>,
    network: tokio::runtime::Handle,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Idle connections per peer, and how new ones are made.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Framed<RpcStream, LengthDelimitedCodec>>>>,
    /// Mutual TLS for the connections it dials.
    tls: Option<Arc<crate::tls::ReloadableTls>>,
}

impl TcpTransport {
    /// A transport with an empty pool, calling from the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new() -> Self {
        TcpTransport::with_tls(None)
    }

    /// A transport dialling with the node's mutual TLS (when `tls` holds
    /// the cluster CA), calling from the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn with_tls(tls: Option<Arc<crate::tls::ReloadableTls>>) -> Self {
        TcpTransport {
            pool: Arc::new(Pool {
                idle: Mutex::default(),
                tls,
            }),
            network: tokio::runtime::Handle::current(),
        }
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport::new()
    }
}

impl Pool {
    /// An idle connection to `target` that the peer has not closed. A peer
    /// that restarted closed its end while the connection sat in the pool; a
    /// request written to it would be lost (read as [`RpcError::AnswerLost`]),
    /// so such connections are dropped here, before anything is sent.
    fn take_idle(&self, target: SocketAddr) -> Option<Framed<RpcStream, LengthDelimitedCodec>> {
        let mut idle = self
            .idle
            .lock()
            .expect("pool lock is never held across a panic");
        let connections = idle.get_mut(&target)?;
        while let Some(connection) = connections.pop() {
            // An idle connection has nothing to read: end of stream means the
            // peer closed it, and bytes nobody asked for mean it is out of step.
            let mut byte = [0u8; 1];
            // (Over TLS, bytes waiting are a close_notify or worse: the
            // connection is dropped either way.)
            match connection.get_ref().tcp().try_read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(connection),
                _ => tracing::debug!(%target, "dropped a pooled connection the peer closed"),
            }
        }
        None
    }

    fn put_idle(&self, target: SocketAddr, connection: Framed<RpcStream, LengthDelimitedCodec>) {
        let mut idle = self
            .idle
            .lock()
            .expect("pool lock is never held across a panic");
        let connections = idle.entry(target).or_default();
        if connections.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
            connections.push(connection);
        }
    }

    async fn exchange(
        &self,
        target: SocketAddr,
        request: &RpcRequest,
    ) -> Result<RpcResponse, RpcError> {
        let unreachable = |e: std::io::Error| RpcError::Unreachable(target, e.to_string());
        let mut connection = match self.take_idle(target) {
            Some(connection) => connection,
            None => {
                let socket = TcpStream::connect(target).await.map_err(unreachable)?;
                let _ = socket.set_nodelay(true);
                let stream = match self.tls.as_ref().and_then(|tls| tls.rpc()) {
                    None => RpcStream::Plain(socket),
                    Some(rpc_tls) => {
                        let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
                        let connected = tokio::time::timeout(
                            RPC_HANDSHAKE_TIMEOUT,
                            rpc_tls.connector.connect(name, socket),
                        )
                        .await
                        .map_err(|_| {
                            RpcError::Unreachable(target, "TLS handshake timed out".to_owned())
                        })?
                        .map_err(|e| {
                            tracing::warn!(%target, error = %e, "a node did not show a certificate of this cluster's CA");
                            RpcError::Unreachable(target, format!("TLS: {e}"))
                        })?;
                        RpcStream::Tls(Box::new(connected.into()))
                    }
                };
                Framed::new(stream, codec())
            }
        };
        connection
            .send(encode(request))
            .await
            .map_err(unreachable)?;
        let lost = |e: String| RpcError::AnswerLost(target, e);
        let frame = connection
            .next()
            .await
            .ok_or_else(|| lost("connection closed".to_owned()))?
            .map_err(|e| lost(e.to_string()))?;
        let response = decode(target, &frame)?;
        self.put_idle(target, connection);
        Ok(response)
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn call(
        &self,
        target: SocketAddr,
        request: RpcRequest,
        deadline: Duration,
    ) -> Result<RpcResponse, RpcError> {
        // A connection abandoned by the deadline is dropped, never reused, so a
        // late answer cannot be read as the answer to a later call. A caller
        // that gives up aborts the call (and so drops its connection).
        let pool = self.pool.clone();
        let call = self.network.spawn(async move {
            tokio::time::timeout(deadline, pool.exchange(target, &request))
                .await
                .map_err(|_| RpcError::DeadlineExceeded(target, deadline))?
        });
        match tokio_util::task::AbortOnDropHandle::new(call).await {
            Ok(result) => result,
            Err(e) => Err(RpcError::Unreachable(
                target,
                format!("the call was not run: {e}"),
            )),
        }
    }
}

/// A transport that passes calls to an inner one except where a test says
/// otherwise: links cut (partition) or slowed (delay).
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: T,
    cut: Mutex<HashSet<SocketAddr>>,
    delay: Mutex<HashMap<SocketAddr, Duration>>,
}

impl<T: Transport> FaultyTransport<T> {
    /// No faults yet.
    pub fn new(inner: T) -> Self {
        FaultyTransport {
            inner,
            cut: Mutex::new(HashSet::new()),
            delay: Mutex::new(HashMap::new()),
        }
    }

    /// Calls to `target` fail as unreachable until [`FaultyTransport::heal`].
    pub fn partition(&self, target: SocketAddr) {
        self.cut.lock().expect("fault lock").insert(target);
    }

    /// Calls to `target` take `delay` longer.
    pub fn delay(&self, target: SocketAddr, delay: Duration) {
        self.delay.lock().expect("fault lock").insert(target, delay);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.cut.lock().expect("fault lock").clear();
        self.delay.lock().expect("fault lock").clear();
    }
}

#[async_trait]
impl<T: Transport> Transport for FaultyTransport<T> {
    async fn call(
        &self,
        target: SocketAddr,
        request: RpcRequest,
        deadline: Duration,
    ) -> Result<RpcResponse, RpcError> {
        if self.cut.lock().expect("fault lock").contains(&target) {
            return Err(RpcError::Unreachable(
                target,
                "partitioned by the test".to_owned(),
            ));
        }
        let delay = self.delay.lock().expect("fault lock").get(&target).copied();
        tokio::time::timeout(deadline, async {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            self.inner.call(target, request, deadline).await
        })
        .await
        .map_err(|_| RpcError::DeadlineExceeded(target, deadline))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Echo {
        node_id: u64,
        delay: Duration,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Handler for Echo {
        async fn handle(&self, request: RpcRequest) -> RpcResponse {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            match request {
                RpcRequest::Ping { payload } => RpcResponse::Pong {
                    payload,
                    node_id: self.node_id,
                },
                other => RpcResponse::Failed(format!("echo cannot serve {other:?}")),
            }
        }
    }

    async fn server(delay: Duration) -> (SocketAddr, Arc<Echo>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (echo, task) = echo_on(listener, delay);
        (addr, echo, task)
    }

    /// Node 7 answering pings on `listener` after `delay`.
    fn echo_on(listener: TcpListener, delay: Duration) -> (Arc<Echo>, tokio::task::JoinHandle<()>) {
        let echo = Arc::new(Echo {
            node_id: 7,
            delay,
            calls: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, echo.clone(), None));
        (echo, task)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_forwarded_metadata_error_keeps_its_kind_and_names_the_node() {
        let cases = [
            quarry_raft::Error::Storage("disk full".into()),
            quarry_raft::Error::Unavailable("no quorum".into()),
            quarry_raft::Error::NotLeader { leader: Some(3) },
            quarry_raft::Error::Catalog(CatalogError::SerializationFailure("t".into())),
        ];
        for error in cases {
            let kind = std::mem::discriminant(&error);
            let text = error.to_string();
            let sent = RemoteMetaError::new(2, error);
            let bytes = postcard::to_allocvec(&sent).expect("encode");
            let received: RemoteMetaError = postcard::from_bytes(&bytes).expect("decode");
            let back = quarry_raft::Error::from(received);
            assert_eq!(std::mem::discriminant(&back), kind, "{text} became {back}");
            if let quarry_raft::Error::Storage(m) | quarry_raft::Error::Unavailable(m) = &back {
                assert!(m.starts_with("node 2: "), "{m}");
            }
        }
    }

    #[tokio::test]
    async fn calls_round_trip_and_reuse_pooled_connections() {
        let (addr, echo, task) = server(Duration::ZERO).await;
        let transport = TcpTransport::new();
        for payload in 0..5 {
            let response = transport
                .call(addr, RpcRequest::Ping { payload }, SECOND)
                .await
                .expect("call");
            assert_eq!(
                response,
                RpcResponse::Pong {
                    payload,
                    node_id: 7
                }
            );
        }
        assert_eq!(echo.calls.load(Ordering::SeqCst), 5);
        let pooled = transport
            .pool
            .idle
            .lock()
            .expect("lock")
            .get(&addr)
            .map(Vec::len);
        assert_eq!(pooled, Some(1), "sequential calls share one connection");
        task.abort();
    }

    #[tokio::test]
    async fn a_peer_that_restarted_is_called_on_a_new_connection() {
        // The first life of the peer answers one call, then closes its end
        // and its listener, as a killed process does.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let first_life = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut frames = Framed::new(socket, codec());
            let frame = frames.next().await.expect("a request").expect("a frame");
            let RpcRequest::Ping { payload } = decode(addr, &frame).expect("decodes") else {
                panic!("not a ping");
            };
            let pong = RpcResponse::Pong {
                payload,
                node_id: 1,
            };
            frames.send(encode(&pong)).await.expect("answer");
        });
        let transport = TcpTransport::new();
        let first = transport
            .call(addr, RpcRequest::Ping { payload: 1 }, SECOND)
            .await
            .expect("first call");
        assert_eq!(
            first,
            RpcResponse::Pong {
                payload: 1,
                node_id: 1
            }
        );
        first_life.await.expect("first life ends");
        // Its second life listens on the same address; the pooled connection
        // to the first must not carry the next call.
        let listener = TcpListener::bind(addr).await.expect("rebind");
        let (_echo, second_life) = echo_on(listener, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = transport
            .call(addr, RpcRequest::Ping { payload: 2 }, SECOND)
            .await;
        assert_eq!(
            second,
            Ok(RpcResponse::Pong {
                payload: 2,
                node_id: 7
            })
        );
        second_life.abort();
    }

    #[tokio::test]
    async fn a_slow_peer_fails_the_call_at_its_deadline() {
        let (addr, _echo, task) = server(Duration::from_secs(5)).await;
        let started = std::time::Instant::now();
        let result = TcpTransport::new()
            .call(
                addr,
                RpcRequest::Ping { payload: 1 },
                Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(result, Err(RpcError::DeadlineExceeded(..))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        task.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let result = TcpTransport::new()
            .call(addr, RpcRequest::Ping { payload: 1 }, SECOND)
            .await;
        assert!(
            matches!(result, Err(RpcError::Unreachable(..))),
            "{result:?}"
        );
    }

    #[test]
    fn a_chunk_error_keeps_its_kind_across_the_wire() {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        for fault in [
            quarry_storage::Fault::Missing,
            quarry_storage::Fault::Corrupt,
            quarry_storage::Fault::Io,
            quarry_storage::Fault::OutOfRange,
            quarry_storage::Fault::Internal,
        ] {
            let answer = RpcResponse::ChunkFailed {
                fault,
                message: "m".into(),
            };
            assert_eq!(decode::<RpcResponse>(peer, &encode(&answer)), Ok(answer));
        }
    }

    #[test]
    fn frames_of_another_version_are_refused() {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mut frame = encode(&RpcResponse::Failed("x".into())).to_vec();
        assert_eq!(
            decode::<RpcResponse>(peer, &frame),
            Ok(RpcResponse::Failed("x".into()))
        );
        frame[0] = WIRE_VERSION + 1;
        assert_eq!(
            decode::<RpcResponse>(peer, &frame),
            Err(RpcError::Version {
                peer,
                theirs: WIRE_VERSION + 1
            })
        );
    }

    /// The Raft commands wire version 10 carries (version 3's, since 8 the
    /// view commands, since 9 comments, constraints and batches, since 10
    /// transactions with DDL; 4 changed the exchange messages, 5 added
    /// `GetChunkRange`, 6 `ChunkFailed`, 7 the typed `RemoteMetaError`). A
    /// new command fails to compile here:
    /// a reminder that it changes the encoding of Raft entries (postcard is
    /// not self-describing) and needs a new [`WIRE_VERSION`].
    #[allow(dead_code)]
    fn commands_of_wire_version_11(command: &quarry_raft::Command) {
        use quarry_raft::Command as C;
        match command {
            C::CreateSchema { .. }
            | C::DropSchema { .. }
            | C::CreateTable { .. }
            | C::DropTable { .. }
            | C::Commit { .. }
            | C::UndropTable { .. }
            | C::PurgeDropped { .. }
            | C::AlterTable { .. }
            | C::ExpireSnapshots { .. }
            | C::InitCluster { .. }
            | C::AllocateNodeId
            | C::MoveChunk { .. }
            | C::ReplaceParity { .. }
            | C::Regroup { .. }
            | C::CreateView { .. }
            | C::DropView { .. }
            | C::RenameView { .. }
            | C::Comment { .. }
            | C::AddConstraint { .. }
            | C::DropConstraint { .. }
            | C::Batch(_)
            | C::Transaction { .. }
            | C::CreateRole { .. }
            | C::AlterRole { .. }
            | C::RenameRole { .. }
            | C::DropRole { .. }
            | C::SetMembership { .. }
            | C::SetPrivileges { .. }
            | C::SetOwner { .. }
            | C::SetGossipKey { .. }
            | C::CreateToken { .. }
            | C::DropToken { .. }
            | C::Owned { .. }
            | C::Append { .. }
            | C::AppendBuffered { .. }
            | C::MoveBuffered { .. }
            | C::SetExternalSource { .. }
            | C::AppendPending { .. }
            | C::CommitPending { .. }
            | C::DiscardPending { .. }
            | C::CommitBuffered { .. }
            | C::SpillBuffered { .. }
            | C::SetMaintenance { .. }
            | C::StartRebalance { .. }
            | C::FinishRebalance { .. }
            | C::Decommission { .. }
            | C::Restore { .. }
            | C::SetPartitioning { .. }
            | C::SetFileLayout { .. }
            | C::CommitRows { .. }
            | C::SetDeletes { .. }
            | C::CreateType { .. }
            | C::DropType { .. }
            | C::DeclareTypes { .. }
            | C::CreateSubscription(_)
            | C::DropSubscription { .. }
            | C::AlterSubscription { .. }
            | C::AdvanceSubscription(_)
            | C::SubscriptionFailed { .. }
            | C::CreatePredefinedRoles => {}
        }
        // Version 20: SetPartitioning, SetFileLayout; 21: CommitRows,
        // SetDeletes; 22: CreateType, DropType, DeclareTypes and the
        // subscription commands; 23: the subscription commands' new fields
        // (no new command).
        const _: () = assert!(WIRE_VERSION == 23, "update the list above");
    }

    #[tokio::test]
    async fn the_faulty_transport_partitions_delays_and_heals() {
        let (addr, echo, task) = server(Duration::ZERO).await;
        let transport = FaultyTransport::new(TcpTransport::new());
        transport.partition(addr);
        let cut = transport
            .call(addr, RpcRequest::Ping { payload: 1 }, SECOND)
            .await;
        assert!(matches!(cut, Err(RpcError::Unreachable(..))));
        assert_eq!(
            echo.calls.load(Ordering::SeqCst),
            0,
            "a cut link delivers nothing"
        );
        transport.heal();
        transport.delay(addr, Duration::from_millis(300));
        let slow = transport
            .call(
                addr,
                RpcRequest::Ping { payload: 2 },
                Duration::from_millis(100),
            )
            .await;
        assert!(matches!(slow, Err(RpcError::DeadlineExceeded(..))));
        transport.heal();
        let ok = transport
            .call(addr, RpcRequest::Ping { payload: 3 }, SECOND)
            .await;
        assert_eq!(
            ok,
            Ok(RpcResponse::Pong {
                payload: 3,
                node_id: 7
            })
        );
        task.abort();
    }
}
