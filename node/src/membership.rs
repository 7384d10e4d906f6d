//! Gossip membership (docs/ARCHITECTURE.md §2): foca's SWIM over UDP on the node's listen
//! port. Every node learns every other's id, addresses and failure domain, and
//! whether it is alive, suspect or down; Raft voter management, stripe
//! placement and repair read that view. Raft stays the source of truth for who
//! belongs to the cluster; gossip only says who is up.
//!
//! Datagram: `u8 wire version | foca message (postcard)`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use foca::{Foca, PostcardCodec, Timer};
use quarry_raft::NodeId;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::rpc::WIRE_VERSION;
use quarry_common::catalog::GossipKey;

/// What gossip spreads about a node: who it is and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's id.
    pub node_id: NodeId,
    /// Its node-to-node address (RPC over TCP, gossip over UDP).
    pub addr: SocketAddr,
    /// Its PostgreSQL address.
    pub pg: String,
    /// Its failure domain (empty: its own).
    pub domain: String,
    /// Bumped on every start and every rejoin, so a restarted node wins over
    /// the memory of its previous run.
    pub incarnation: u64,
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// A member's liveness as SWIM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared down (or not heard of since it left the membership).
    Down,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        })
    }
}

/// One node as this node's gossip sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its identity.
    pub identity: Identity,
    /// Its state.
    pub state: MemberState,
    /// When it entered `state`.
    pub since: Instant,
}

/// This node's view of the membership, and the way to talk to the gossip task.
#[derive(Clone)]
pub struct Membership {
    me: Identity,
    view: Arc<RwLock<BTreeMap<NodeId, Member>>>,
    input: mpsc::Sender<Input>,
}

enum Input {
    Data(Bytes),
    Timer(Timer<Identity>),
    Announce(SocketAddr),
}

/// How often a node probes a random member, from the time after which a silent
/// node is declared down.
fn probe_period(down_after: Duration) -> Duration {
    (down_after / 6).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

impl Membership {
    /// Starts gossip as `me` on `socket` (bound to `me.addr`), declaring a
    /// silent node down after about `down_after`.
    ///
    /// `key` gives the cluster's gossip key whenever asked (None until the
    /// cluster has one): with a key, every datagram sent carries its
    /// HMAC-SHA-256 tag, and one received without the right tag is dropped,
    /// so only nodes that learnt the key (over Raft, over mutual TLS) take
    /// part.
    pub fn start(
        me: Identity,
        socket: UdpSocket,
        down_after: Duration,
        key: GossipKeySource,
    ) -> Membership {
        let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("non-zero"));
        config.probe_period = probe_period(down_after);
        config.probe_rtt = config.probe_period / 2;
        config.suspect_to_down_after = down_after;
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: std::num::NonZeroUsize::new(1).expect("non-zero"),
        });
        let (input, inputs) = mpsc::channel(1024);
        let view = Arc::new(RwLock::new(BTreeMap::from([(
            me.node_id,
            Member {
                identity: me.clone(),
                state: MemberState::Alive,
                since: Instant::now(),
            },
        )])));
        let membership = Membership {
            me: me.clone(),
            view: view.clone(),
            input: input.clone(),
        };
        let socket = Arc::new(socket);
        tokio::spawn(receive(socket.clone(), input.clone(), key.clone()));
        tokio::spawn(run(me, config, socket, inputs, input, view, key));
        membership
    }

    /// This node's identity.
    pub fn me(&self) -> &Identity {
        &self.me
    }

    /// Asks the node at `addr` to let this node into its membership (seeds at
    /// start, Raft peers when this node hears from nobody).
    pub fn announce(&self, addr: SocketAddr) {
        let _ = self.input.try_send(Input::Announce(addr));
    }

    /// Every node gossip has heard of, this one included, by id.
    pub fn members(&self) -> Vec<Member> {
        self.view
            .read()
            .expect("membership lock is never held across a panic")
            .values()
            .cloned()
            .collect()
    }

    /// The member `node`, if gossip has heard of it.
    pub fn member(&self, node: NodeId) -> Option<Member> {
        self.view
            .read()
            .expect("membership lock is never held across a panic")
            .get(&node)
            .cloned()
    }

    /// Whether `node` is alive (answering probes); this node always is.
    pub fn is_alive(&self, node: NodeId) -> bool {
        node == self.me.node_id
            || self
                .member(node)
                .is_some_and(|m| m.state == MemberState::Alive)
    }

    /// Whether `node` may be reachable: not declared down (suspects and nodes
    /// gossip has not heard of yet are worth a try).
    pub fn maybe_up(&self, node: NodeId) -> bool {
        self.member(node)
            .is_none_or(|m| m.state != MemberState::Down)
    }

    /// How long `node` has been down, if it is down (never heard of counts as
    /// down since this node started).
    pub fn down_for(&self, node: NodeId, started: Instant) -> Option<Duration> {
        match self.member(node) {
            Some(m) if m.state == MemberState::Down => Some(m.since.elapsed()),
            Some(_) => None,
            None => Some(started.elapsed()),
        }
    }

    /// Whether gossip knows of no other live member.
    pub fn is_alone(&self) -> bool {
        !self
            .view
            .read()
            .expect("membership lock is never held across a panic")
            .values()
            .any(|m| m.identity.node_id != self.me.node_id && m.state != MemberState::Down)
    }
}

/// Where the gossip key comes from (the locally applied catalog).
pub type GossipKeySource = Arc<dyn Fn() -> Option<GossipKey> + Send + Sync>;

/// Bytes of a datagram's tag: HMAC-SHA-256 of the message (zeros while the
/// cluster has no key).
const TAG_BYTES: usize = 32;

/// `WIRE_VERSION | tag | message`.
fn seal(key: Option<GossipKey>, message: &[u8]) -> BytesMut {
    let mut datagram = BytesMut::with_capacity(1 + TAG_BYTES + message.len());
    datagram.put_u8(WIRE_VERSION);
    match key {
        Some(key) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.0);
            datagram.extend_from_slice(ring::hmac::sign(&key, message).as_ref());
        }
        None => datagram.extend_from_slice(&[0; TAG_BYTES]),
    }
    datagram.extend_from_slice(message);
    datagram
}

/// The message of `datagram` if it is of this wire version and, when the
/// cluster has a key, its tag is right.
fn open(key: Option<GossipKey>, datagram: &[u8]) -> Option<&[u8]> {
    let (&version, rest) = datagram.split_first()?;
    if version != WIRE_VERSION || rest.len() < TAG_BYTES {
        return None;
    }
    let (tag, message) = rest.split_at(TAG_BYTES);
    match key {
        Some(key) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.0);
            ring::hmac::verify(&key, message, tag).ok()?;
            Some(message)
        }
        None => Some(message),
    }
}

async fn receive(socket: Arc<UdpSocket>, input: mpsc::Sender<Input>, key: GossipKeySource) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        match open(key(), &buffer[..len]) {
            Some(message) => {
                if input
                    .send(Input::Data(Bytes::copy_from_slice(message)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            None => {
                metrics::counter!("quarry_node_gossip_rejected_total").increment(1);
                tracing::debug!(%peer, "dropped a gossip datagram of another wire version or without this cluster's key");
            }
        }
    }
}

/// The gossip task: feeds foca its inputs and carries out what it asks for.
async fn run(
    me: Identity,
    config: foca::Config,
    socket: Arc<UdpSocket>,
    mut inputs: mpsc::Receiver<Input>,
    input: mpsc::Sender<Input>,
    view: Arc<RwLock<BTreeMap<NodeId, Member>>>,
    key: GossipKeySource,
) {
    let rng: rand10::rngs::StdRng = rand10::make_rng();
    let mut foca = Foca::new(me.clone(), config, rng, PostcardCodec);
    let mut runtime = foca::AccumulatingRuntime::new();
    while let Some(next) = inputs.recv().await {
        let result = match next {
            Input::Data(data) => foca.handle_data(&data, &mut runtime),
            Input::Timer(timer) => foca.handle_timer(timer, &mut runtime),
            Input::Announce(addr) => {
                // foca addresses members by identity; a seed's is not known yet,
                // so announce to a placeholder with its address.
                let seed = Identity {
                    node_id: 0,
                    addr,
                    pg: String::new(),
                    domain: String::new(),
                    incarnation: 0,
                };
                foca.announce(seed, &mut runtime)
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip input ignored");
        }
        while let Some((to, data)) = runtime.to_send() {
            let datagram = seal(key(), &data);
            let _ = socket.send_to(&datagram, to.addr).await;
        }
        while let Some((delay, timer)) = runtime.to_schedule() {
            let input = input.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = input.send(Input::Timer(timer)).await;
            });
        }
        while runtime.to_notify().is_some() {}
        let states: Vec<(Identity, foca::State)> = foca
            .iter_membership_state()
            .map(|m| (m.id().clone(), m.state()))
            .collect();
        refresh(&states, &me, &view);
    }
}

/// Brings the shared view in line with foca's membership.
fn refresh(
    states: &[(Identity, foca::State)],
    me: &Identity,
    view: &RwLock<BTreeMap<NodeId, Member>>,
) {
    let mut view = view
        .write()
        .expect("membership lock is never held across a panic");
    let now = Instant::now();
    let mut seen = std::collections::BTreeSet::from([me.node_id]);
    for (identity, state) in states {
        if identity.node_id == 0 || identity.node_id == me.node_id {
            continue;
        }
        let state = match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        };
        // A newer incarnation of a node replaces the older one's entry.
        let entry = view.entry(identity.node_id).or_insert_with(|| Member {
            identity: identity.clone(),
            state,
            since: now,
        });
        if identity.incarnation < entry.identity.incarnation {
            continue;
        }
        if identity.incarnation > entry.identity.incarnation {
            entry.identity = identity.clone();
        }
        if identity.incarnation == entry.identity.incarnation && entry.state != state {
            entry.state = state;
            entry.since = now;
        }
        seen.insert(identity.node_id);
    }
    for (node, member) in view.iter_mut() {
        if !seen.contains(node) && member.state != MemberState::Down {
            member.state = MemberState::Down;
            member.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_opens_only_with_the_key_it_was_sealed_with() {
        let key = Some(GossipKey([7; 32]));
        let sealed = seal(key, b"probe");
        assert_eq!(open(key, &sealed), Some(&b"probe"[..]));
        assert_eq!(open(Some(GossipKey([8; 32])), &sealed), None);
        // A node that has the key drops what a node without it sends.
        assert_eq!(open(key, &seal(None, b"probe")), None);
        // Until a node learns the key, it takes what others send.
        assert_eq!(open(None, &sealed), Some(&b"probe"[..]));
        let mut tampered = sealed.to_vec();
        *tampered.last_mut().expect("not empty") ^= 1;
        assert_eq!(open(key, &tampered), None);
        assert_eq!(open(key, &[WIRE_VERSION, 1, 2]), None);
        assert_eq!(open(None, &[]), None);
    }
}
