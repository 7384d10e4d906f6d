//! The node supervisor: opens the data directory, joins or bootstraps the
//! cluster, starts Raft, gossip, the chunk store, the internal RPC, the
//! PostgreSQL and HTTP listeners and the background duties, and shuts them
//! down in order on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use quarry_exec::Engine;
use quarry_raft::{Meta, MetaConfig, NodeAddr};
use quarry_storage::stripe_store::ORPHAN_GRACE;
use quarry_storage::{ChunkStore, StripeStore};
use ractor::Actor;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

use crate::auth::{AuthMode, Authenticator};
use crate::cluster::{Duties, NodeHandler, RpcLeaderLink, ask_seeds, run_duties};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::http::{self, HttpState};
use crate::membership::{Identity, Membership};
use crate::peers::RpcPeers;
use crate::pg::Frontend;
use crate::query_manager::{QueryManager, QueryManagerArgs};
use crate::raft_network::RaftRpcNetwork;
use crate::rpc::{RpcRequest, RpcResponse, TcpTransport, Transport};
use crate::stripes::{ClusterFiles, ClusterView};

/// Node id of the node that bootstraps a new cluster.
const FIRST_NODE_ID: u64 = 1;

/// Runs a node until SIGTERM or SIGINT; returns after a clean shutdown.
///
/// # Errors
/// Startup failures (data directory locked or unreadable, ports in use, seeds
/// unreachable, a data dir of another cluster, a node id in use, metadata store
/// unreadable), each with what to fix. A node that fails before it has an
/// identity leaves its data dir as it found it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut data_dir = DataDir::open(&config.data_dir)?;
    let result = serve(config, &mut data_dir).await;
    if result.is_err() && data_dir.identity().is_none() {
        data_dir.abandon();
    }
    result
}

/// Where this node's identity comes from.
enum Start {
    /// A new cluster: this node bootstraps it.
    Bootstrap,
    /// The node's data dir already has it.
    Restart,
    /// Just joined through a seed.
    Joined,
}

/// Finds the node's id and cluster: from its data dir (checked with a seed,
/// if any answers), by joining through the seeds, or as the first node.
async fn identify(
    config: &Config,
    data_dir: &mut DataDir,
    transport: &dyn Transport,
    addr: &NodeAddr,
) -> anyhow::Result<(u64, u128, Start)> {
    if let Some((node_id, cluster_id)) = data_dir.identity() {
        if !config.join.is_empty() {
            let hello = RpcRequest::Hello {
                cluster_id,
                node_id,
                addr: addr.clone(),
            };
            let timeout = config.join_timeout.min(std::time::Duration::from_secs(5));
            match ask_seeds(transport, &config.join, hello, timeout).await {
                Ok(RpcResponse::Refused(reason)) => anyhow::bail!(reason),
                Ok(_) => {}
                // The seeds may be down too (a whole-cluster restart): go on
                // with the data dir's identity.
                Err(e) => tracing::warn!(error = %e, "no seed confirmed this node's identity"),
            }
        }
        return Ok((node_id, cluster_id, Start::Restart));
    }
    if config.join.is_empty() {
        let cluster_id = uuid::Uuid::now_v7().as_u128();
        data_dir.set_identity(FIRST_NODE_ID, cluster_id)?;
        return Ok((FIRST_NODE_ID, cluster_id, Start::Bootstrap));
    }
    let join = RpcRequest::Join { addr: addr.clone() };
    match ask_seeds(transport, &config.join, join, config.join_timeout).await? {
        RpcResponse::Joined {
            node_id,
            cluster_id,
        } => {
            data_dir.set_identity(node_id, cluster_id)?;
            Ok((node_id, cluster_id, Start::Joined))
        }
        RpcResponse::Refused(reason) => anyhow::bail!(reason),
        other => anyhow::bail!("unexpected answer to joining: {other:?}"),
    }
}

/// The tokio runtime query operators run on (`execution_threads` threads),
/// apart from the runtime serving the network (pg wire, RPC, Raft, gossip,
/// HTTP): a long poll of an operator holds an execution thread, never a
/// network one (see `quarry_exec::runtime`). Shut down without waiting when
/// dropped: what runs on it belongs to statements already ended or failed.
/// None with 0 threads: operators then run on the network's runtime.
struct ExecutionRuntime(Option<tokio::runtime::Runtime>);

impl ExecutionRuntime {
    fn start(threads: usize) -> anyhow::Result<Self> {
        if threads == 0 {
            return Ok(ExecutionRuntime(None));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("quarry-execution")
            .enable_all()
            .build()
            .context("cannot start the query execution runtime")?;
        Ok(ExecutionRuntime(Some(runtime)))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|runtime| runtime.handle().clone())
    }
}

impl Drop for ExecutionRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// PostgreSQL's limit on a startup packet's length (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_PACKET: u32 = 10_000;

/// Whether a new PostgreSQL connection's first bytes can start a session: a
/// TLS handshake (direct TLS), or a startup-phase packet whose length is
/// between 8 and PostgreSQL's limit. pgwire waits for the rest of a packet
/// of any stated length (until its 60 s startup timeout), so a client that
/// states 0 or 2^31 would hold the connection; PostgreSQL closes those at
/// once, and so does Quarry. Looks without consuming; gives up (false)
/// when no four bytes arrive within the startup timeout.
async fn plausible_first_packet(socket: &tokio::net::TcpStream) -> bool {
    const TLS_HANDSHAKE: u8 = 0x16;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut head = [0u8; 4];
    loop {
        let seen = match tokio::time::timeout_at(deadline, socket.peek(&mut head)).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(_)) | Err(_) => return false,
        };
        if seen == 0 {
            return false;
        }
        if head[0] == TLS_HANDSHAKE {
            return true;
        }
        if seen == head.len() {
            return (8..=MAX_STARTUP_PACKET).contains(&u32::from_be_bytes(head));
        }
        // Fewer than four bytes so far: peek returns at once while any are
        // waiting, so pause before looking again.
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Gives the cluster a gossip key if it has none (nodes over mutual TLS
/// authenticate their gossip with it): proposes a random one until the
/// catalog has one, this node's or another's.
async fn ensure_gossip_key(meta: Arc<Meta>) {
    while meta.read_local().gossip_key.is_none() {
        let key = quarry_common::catalog::GossipKey(rand::random());
        match meta.write(quarry_raft::Command::SetGossipKey { key }).await {
            Ok(_) => tracing::info!("gossip is authenticated with the cluster's key"),
            Err(e) => {
                tracing::debug!(error = %e, "the gossip key must wait");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Creates the first superuser, `quarry`, unless a role of that name exists:
/// with `password`, or (on an `--insecure` node) without one.
async fn create_first_superuser(meta: &Meta, password: Option<&str>) -> anyhow::Result<()> {
    let name = quarry_common::roles::BOOTSTRAP_SUPERUSER;
    if meta.read().await?.role(name).is_some() {
        return Ok(());
    }
    let command = quarry_raft::Command::CreateRole {
        name: name.to_owned(),
        options: quarry_raft::RoleOptions {
            superuser: Some(true),
            create_role: Some(true),
            login: Some(true),
            password: Some(password.map(quarry_exec::scram::verifier)),
            ..Default::default()
        },
    };
    match meta.write(command).await {
        Ok(_) | Err(quarry_raft::Error::Catalog(quarry_raft::CatalogError::RoleExists(_))) => {
            tracing::info!(role = name, "first superuser created");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn serve(config: Config, data_dir: &mut DataDir) -> anyhow::Result<()> {
    let started_at = SystemTime::now();
    config.check_exposure()?;
    let initial_password = config.initial_password()?;
    if config.insecure {
        tracing::warn!(
            "--insecure: no authentication and no TLS required; any client may connect as any user"
        );
    }
    // A certificate that cannot be read fails the start, before anything
    // else is opened.
    let tls = match config.tls()? {
        Some(files) => {
            tracing::info!(cert = %files.cert.display(), "PostgreSQL clients may connect with TLS");
            let tls = crate::tls::ReloadableTls::new(files)?;
            tls.reload_on_sighup()?;
            Some(tls)
        }
        None => None,
    };
    let rpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for nodes (TCP) on {}", config.listen))?;
    let gossip_socket = UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for gossip (UDP) on {}", config.listen))?;
    let pg_listener = TcpListener::bind(config.pg_listen).await.with_context(|| {
        format!(
            "cannot listen for PostgreSQL clients on {}",
            config.pg_listen
        )
    })?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    if tls.as_ref().is_some_and(|tls| tls.rpc().is_some()) {
        tracing::info!("nodes talk over mutual TLS (certificates of the cluster CA)");
    }
    let transport: Arc<dyn Transport> = Arc::new(TcpTransport::with_tls(tls.clone()));
    let addr = NodeAddr {
        rpc: config.listen.to_string(),
        pg: config.pg_listen.to_string(),
        domain: config.domain.clone(),
    };
    let (node_id, cluster_id, start) =
        identify(&config, data_dir, transport.as_ref(), &addr).await?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let chunks = ChunkStore::open(data_dir.path().join("chunks"))?;
    let cache = ChunkStore::open(data_dir.path().join("cache"))?;
    let meta = Meta::open(
        &data_dir.path().join("meta.redb"),
        MetaConfig::new(node_id, addr.clone()),
        RaftRpcNetwork::new(transport.clone()),
        Arc::new(RpcLeaderLink::new(transport.clone())),
    )
    .await?;
    let meta = Arc::new(meta);
    let membership = Membership::start(
        Identity {
            node_id,
            addr: config.listen,
            pg: addr.pg.clone(),
            domain: config.domain.clone(),
            incarnation: quarry_raft::now_micros() as u64,
        },
        gossip_socket,
        config.down_after,
        {
            let meta = meta.clone();
            Arc::new(move || meta.read_local().gossip_key)
        },
    );
    for seed in &config.join {
        if let Ok(addrs) = tokio::net::lookup_host(seed.as_str()).await {
            addrs.for_each(|a: SocketAddr| membership.announce(a));
        }
    }
    let view = Arc::new(ClusterView::new(
        meta.clone(),
        transport.clone(),
        membership.clone(),
    ));
    let stripes =
        StripeStore::new(chunks, cache, view.clone()).with_moved_grace(config.moved_chunk_grace);
    // Spill files of statements cut short by a crash are of no use.
    let spill_dir = config.data_dir.join("spill");
    let _ = std::fs::remove_dir_all(&spill_dir);
    std::fs::create_dir_all(&spill_dir)
        .with_context(|| format!("cannot create {}", spill_dir.display()))?;
    let execution = ExecutionRuntime::start(config.execution_threads)?;
    let peers = Arc::new(RpcPeers::new(view.clone(), transport.clone()));
    let engine = Engine::new(
        meta.clone(),
        Arc::new(quarry_exec::chunks::CachedFiles::new(
            Arc::new(ClusterFiles::new(stripes.clone(), view.clone())),
            config.data_cache_bytes,
        )),
        config.target_partitions,
        quarry_exec::QueryResources {
            memory_bytes: Some(config.query_memory_bytes),
            spill_dir: Some(spill_dir),
            runtime: execution.handle(),
            distribute_min_bytes: config.distribute_min_bytes,
            buffer_file_rows: Some(config.buffer_file_rows),
            result_cache_bytes: Some(config.result_cache_bytes),
        },
        Some(peers.clone()),
    );
    engine.set_audit_log(Arc::new(crate::audit::FileAuditLog::open(
        &data_dir.path().join("audit.jsonl"),
    )?));
    let jobs = crate::jobs::Jobs::open(
        node_id,
        &data_dir.path().join("jobs.redb"),
        config.job_history,
    )?;
    let cluster_jobs = Arc::new(crate::jobs::ClusterJobs::new(
        jobs.clone(),
        view.clone(),
        transport.clone(),
    ));
    engine.set_job_source(cluster_jobs.clone());
    let job_keeper = tokio::spawn(jobs.clone().keep());
    let (queries, _) = Actor::spawn(
        None,
        QueryManager,
        QueryManagerArgs {
            engine: Arc::downgrade(&engine),
            fragment_idle_max: crate::query_manager::FRAGMENT_IDLE_MAX,
        },
    )
    .await
    .context("cannot start the query manager")?;
    peers.answer_locally(queries.clone());
    let rpc_server = tokio::spawn(crate::rpc::serve(
        rpc_listener,
        Arc::new(NodeHandler::new(
            meta.clone(),
            stripes.clone(),
            view.clone(),
            membership.clone(),
            transport.clone(),
            queries.clone(),
            jobs.clone(),
        )),
        tls.clone(),
    ));
    let single = node_id == FIRST_NODE_ID && config.join.is_empty();
    let bootstrapping =
        matches!(start, Start::Bootstrap) || (single && !meta.is_initialized().await?);
    if bootstrapping && !config.insecure && initial_password.is_none() {
        anyhow::bail!(
            "a new cluster needs the password of its first superuser, quarry: give --initial-password-file FILE or set QUARRY_INITIAL_PASSWORD (or start with --insecure)"
        );
    }
    if bootstrapping {
        meta.bootstrap(cluster_id).await?;
    }
    if (bootstrapping || single) && (initial_password.is_some() || config.insecure) {
        create_first_superuser(&meta, initial_password.as_deref()).await?;
    }
    if (bootstrapping || single)
        && quarry_common::roles::PREDEFINED_ROLES
            .iter()
            .any(|name| meta.read_local().role(name).is_none())
    {
        meta.write(quarry_raft::Command::CreatePredefinedRoles)
            .await?;
    }
    if tls.as_ref().is_some_and(|tls| tls.rpc().is_some()) {
        tokio::spawn(ensure_gossip_key(meta.clone()));
    }
    collect_garbage(&meta, &stripes, started_at).await;
    let mode = if config.insecure {
        AuthMode::Insecure
    } else {
        AuthMode::Scram
    };
    let auth = Authenticator::new(mode, tls.clone());
    let drain = crate::drain::Drain::new();
    let frontend = Frontend::new(
        engine.clone(),
        auth.clone(),
        config.query_slots,
        jobs.clone(),
        drain.clone(),
    );
    let compaction_engine = engine.clone();
    let gauge_sources = crate::gauges::Sources {
        engine: engine.clone(),
        meta: meta.clone(),
        cluster: Arc::new(ClusterFiles::new(stripes.clone(), view.clone())),
        data_dir: config.data_dir.clone(),
        memory_limit_bytes: (config.query_slots as u64)
            .saturating_mul(config.query_memory_bytes as u64),
    };
    tracing::info!(
        node_id,
        cluster = %quarry_common::catalog::ChunkId(cluster_id),
        listen = %config.listen,
        pg = %config.pg_listen,
        http = %config.http_listen,
        data_dir = %config.data_dir.display(),
        "quarry node ready"
    );

    let http = http::serve_apart(
        http_listener,
        http::router(HttpState {
            metrics,
            meta: meta.clone(),
            login: http::HttpLogin {
                metrics: config.metrics_require_login,
                tls: tls.is_some(),
                insecure: config.insecure,
            },
            auth,
            engine,
            network: tokio::runtime::Handle::current(),
            stream_body_limit: config.stream_body_limit_bytes,
            queries: Some(crate::query_api::QueryApi::new(
                jobs.clone(),
                cluster_jobs.clone(),
                data_dir.path().join("results"),
                frontend.slots(),
            )?),
            drain: drain.clone(),
        }),
        tls.clone(),
    )?;

    let collector = tokio::spawn(collect_expired_snapshots(
        meta.clone(),
        stripes.clone(),
        config.retention_check,
    ));
    let scrubber = tokio::spawn(scrub(stripes.clone(), config.scrub_interval));
    // Subscriptions to PostgreSQL publications, applied on the leader.
    let subscriptions = tokio::spawn(crate::subscription::run(
        compaction_engine.clone(),
        meta.clone(),
        config.data_dir.join("spill"),
    ));
    let compactor = tokio::spawn(compact_tables(
        compaction_engine,
        meta.clone(),
        config.compaction_interval,
        config.buffer_max_age,
    ));
    let gauges = tokio::spawn(crate::gauges::publish(
        gauge_sources,
        Duration::from_secs(5),
    ));
    let duties = tokio::spawn(run_duties(
        meta.clone(),
        stripes.clone(),
        membership.clone(),
        Duties {
            voter_replace_after: config.voter_replace_after,
            repair_after: config.repair_after,
            maintenance_timeout: config.maintenance_timeout,
            rebalance_rate: config.rebalance_rate,
        },
    ));

    let drainer = tokio::spawn(crate::drain::follow(
        meta.clone(),
        node_id,
        drain.clone(),
        frontend.clone(),
        transport.clone(),
    ));
    let mut drain_state = drain.subscribe();
    crate::service::ready(&format!(
        "node {node_id} serving PostgreSQL on {} and HTTP on {}",
        config.pg_listen, config.http_listen
    ));
    // Fed from READY=1 on: started before it, its first WATCHDOG=1 could
    // reach systemd first.
    let watchdog = tokio::spawn(crate::service::watchdog(meta.clone(), queries.clone()));
    let mut connections = JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = pg_listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handlers = match frontend.connection() {
                    Ok(handlers) => handlers,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set up a session");
                        continue;
                    }
                };
                let tls = tls.as_ref().map(|tls| tls.pg_acceptor());
                connections.spawn(async move {
                    if !plausible_first_packet(&socket).await {
                        tracing::debug!(%peer, "invalid length of startup packet; connection closed");
                        return;
                    }
                    if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Ok(()) = drain_state.changed() => {
                if *drain_state.borrow_and_update() == crate::drain::DrainState::Drained {
                    // No client statement runs (or those past the deadline
                    // were cancelled): the sessions go, and their clients
                    // reconnect to other nodes.
                    tracing::info!(connections = connections.len(), "closing client connections of the drained node");
                    connections.abort_all();
                }
            }
        }
    }

    crate::service::stopping();
    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections"
    );
    drop(pg_listener);
    // Running statements may finish (their commits complete or fail cleanly);
    // idle connections are closed at once.
    if tokio::time::timeout(config.shutdown_grace, frontend.running().wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("statements still running after the grace period are cancelled");
    }
    connections.shutdown().await;
    http.stop();
    collector.abort();
    scrubber.abort();
    compactor.abort();
    subscriptions.abort();
    gauges.abort();
    duties.abort();
    job_keeper.abort();
    watchdog.abort();
    drainer.abort();
    if let Err(e) = jobs.write_ended() {
        tracing::warn!(error = %e, "cannot write the job history");
    }
    rpc_server.abort();
    // Ends every fragment still held for other nodes' queries.
    queries.stop(Some("the node is shutting down".to_owned()));
    meta.shutdown().await;
    tracing::info!("quarry node stopped");
    Ok(())
}

/// Deletes the local chunks written before this process started that no
/// stripe places on this node: data files of statements a crash interrupted
/// before their commit, and chunks repair moved elsewhere while this node was
/// down. Needs a fresh catalog (read-index); skipped if the cluster has no
/// leader yet — the periodic collector retries.
async fn collect_garbage(meta: &Meta, stripes: &StripeStore, started_at: SystemTime) {
    match meta.read().await {
        Ok(catalog) => match stripes.collect(&catalog, started_at) {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted chunks no stripe places on this node"),
            Err(e) => tracing::warn!(error = %e, "startup chunk collection failed"),
        },
        Err(e) => tracing::warn!(error = %e, "startup chunk collection skipped"),
    }
}

/// Every `interval`, re-verifies this node's chunks and repairs bad ones.
async fn scrub(stripes: StripeStore, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let repaired = stripes.scrub().await;
        if repaired > 0 {
            tracing::info!(repaired, "scrubber repaired chunks");
        }
    }
}

/// Every `interval`, expires each table's snapshots older than its retention
/// window (keeping the one current when the window began), deletes the data
/// files only they used, unless a clone or a live stripe still needs them, and
/// collects local chunks no stripe places here (after a grace period).
async fn collect_expired_snapshots(
    meta: Arc<Meta>,
    stripes: StripeStore,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if let Err(e) = expire_once(&meta, stripes.local()).await {
            tracing::warn!(error = %e, "snapshot retention collection failed; retrying later");
        }
        if let Ok(catalog) = meta.read().await
            && let Err(e) = stripes.collect(&catalog, SystemTime::now() - ORPHAN_GRACE)
        {
            tracing::warn!(error = %e, "chunk collection failed; retrying later");
        }
    }
}

/// Moves tables' ingest buffers into data files and merges their small data
/// files (`quarry_exec::compaction_due`) every `interval`, on the Raft leader only, one table at a time
/// (`docs/INGESTION.md`).
async fn compact_tables(
    engine: Arc<quarry_exec::Engine>,
    meta: Arc<Meta>,
    interval: Duration,
    buffer_max_age: Duration,
) {
    let max_age = buffer_max_age.as_micros() as i64;
    let mut ticker = tokio::time::interval(interval);
    // The first tick is immediate: the first run is one interval after
    // startup, so `compaction_interval_secs` is the time between runs on
    // whichever node leads.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let metrics = meta.raft().metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            continue;
        }
        let Ok(catalog) = meta.read().await else {
            continue;
        };
        let now = quarry_raft::now_micros();
        let due: Vec<_> = catalog
            .tables
            .values()
            .filter(|t| quarry_exec::compaction_due(t, now, max_age).is_some())
            .map(|t| (t.id, format!("{}.{}", t.schema, t.name)))
            .collect();
        for (id, name) in due {
            // Merges until the table has too few small files, so a table
            // fed faster than one merge per interval is kept up with.
            for _ in 0..MERGES_PER_TABLE_RUN {
                let compacted = match engine.session() {
                    Ok(mut session) => session.compact_table(id, max_age).await,
                    Err(e) => Err(e),
                };
                let merged = matches!(compacted, Ok(Some(_)));
                log_compaction(&name, compacted);
                if !merged {
                    break;
                }
            }
        }
    }
}

/// Most merges of one table in one compactor run (each merges up to a full
/// data file of rows).
const MERGES_PER_TABLE_RUN: usize = 64;

/// Counts and logs what one merge did.
fn log_compaction(name: &str, compacted: quarry_exec::Result<Option<quarry_exec::Compacted>>) {
    match compacted {
        Ok(Some(done)) if done.kind == quarry_exec::CompactionKind::Spill => {
            metrics::counter!("quarry_buffer_files_spilled_total")
                .increment(done.files_removed as u64);
            tracing::info!(
                table = %name,
                buffered_files = done.files_removed,
                "stored replaced buffered files in stripes"
            );
        }
        Ok(Some(done)) if done.kind == quarry_exec::CompactionKind::Expire => {
            metrics::counter!("quarry_partition_files_expired_total")
                .increment(done.files_removed as u64);
            tracing::info!(
                table = %name,
                files_removed = done.files_removed,
                rows = done.rows,
                "removed the files of expired partitions"
            );
        }
        Ok(Some(done)) if done.kind == quarry_exec::CompactionKind::Recluster => {
            metrics::counter!("quarry_recluster_rows_total").increment(done.rows);
            tracing::info!(
                table = %name,
                files_removed = done.files_removed,
                files_added = done.files_added,
                rows = done.rows,
                "re-clustered overlapping data files"
            );
        }
        Ok(Some(done)) if done.kind == quarry_exec::CompactionKind::Flush => {
            metrics::counter!("quarry_buffer_rows_moved_total").increment(done.rows);
            tracing::info!(
                table = %name,
                buffered_files = done.files_removed,
                files_added = done.files_added,
                rows = done.rows,
                "moved the ingest buffer into data files"
            );
        }
        Ok(Some(done)) => {
            metrics::counter!("quarry_compaction_files_removed_total")
                .increment(done.files_removed as u64);
            tracing::info!(
                table = %name,
                files_removed = done.files_removed,
                files_added = done.files_added,
                rows = done.rows,
                "compacted small data files"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(table = %name, error = %e, "compaction failed; retrying later"),
    }
}

/// How long a pending channel of the streaming API may go without an
/// append before its rows are discarded (an abandoned `quarry load`): a
/// week to resume it.
const PENDING_CHANNEL_MAX_AGE_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

async fn expire_once(meta: &Meta, chunks: &ChunkStore) -> anyhow::Result<()> {
    let catalog = meta.read().await?;
    let now = quarry_raft::now_micros();
    let leads =
        meta.raft().metrics().borrow().current_leader == Some(meta.raft().metrics().borrow().id);
    if !leads {
        return Ok(());
    }
    for table in catalog.tables.values() {
        let keep_from = table.retention_boundary(now).id;
        if table.snapshots[0].id < keep_from {
            let command = quarry_raft::Command::ExpireSnapshots {
                table: table.id,
                keep_from,
            };
            let deleted = expire(meta, chunks, command).await?;
            tracing::info!(table = %table.name, keep_from, deleted, "expired snapshots");
        }
    }
    for ((table, channel), pending) in &catalog.pending {
        if pending.appended_at < now - PENDING_CHANNEL_MAX_AGE_MICROS {
            let command = quarry_raft::Command::DiscardPending {
                table: *table,
                channel: channel.clone(),
            };
            let deleted = expire(meta, chunks, command).await?;
            tracing::info!(table, %channel, deleted, "discarded a pending channel left uncommitted");
        }
    }
    for dropped in &catalog.dropped {
        if dropped.dropped_at < now - dropped.table.retention() {
            let command = quarry_raft::Command::PurgeDropped {
                table: dropped.table.id,
            };
            let deleted = expire(meta, chunks, command).await?;
            tracing::info!(table = %dropped.table.name, deleted, "purged a dropped table past its window");
        }
    }
    Ok(())
}

/// Commits an expiry command and deletes the local chunks it released that
/// nothing else needs (a clone may share them); returns how many were deleted.
/// Other nodes' chunks go with their own collector.
async fn expire(
    meta: &Meta,
    chunks: &ChunkStore,
    command: quarry_raft::Command,
) -> anyhow::Result<usize> {
    let quarry_raft::Applied::Expired { chunks: released } = meta.write(command).await? else {
        return Ok(0);
    };
    let live = meta.read_local().live_chunks();
    let mut deleted = 0;
    for chunk in released.into_iter().filter(|c| !live.contains(c)) {
        chunks.delete(chunk)?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed at the call,
/// not at the first poll, so a signal that comes before the future is awaited
/// is still caught.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
