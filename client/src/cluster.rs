//! `quarry cluster status` (members, Raft roles and stripes that are not
//! healthy, read from the system tables of any node) and `quarry cluster
//! local` (an N-node cluster of child processes on 127.0.0.x for trying
//! Quarry out, tests and benches).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::NOTHING};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

/// Connects to the node whose PostgreSQL address is `pg` (HOST:PORT).
///
/// # Errors
/// If the address is malformed or nothing answers within 10 s.
pub async fn connect(pg: &str) -> anyhow::Result<Client> {
    let (host, port) = pg
        .rsplit_once(':')
        .with_context(|| format!("{pg} is not HOST:PORT"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(
            port.parse()
                .with_context(|| format!("{pg}: invalid port"))?,
        )
        .user("quarry")
        .dbname("quarry")
        .connect_timeout(std::time::Duration::from_secs(10));
    // The superuser's password, where the node asks for one (PostgreSQL's
    // PGPASSWORD, or QUARRY_PASSWORD as `quarry load` reads it).
    if let Some(password) = ["QUARRY_PASSWORD", "PGPASSWORD"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
    {
        config.password(password);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to the node at {pg}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// One row of `quarry_system.nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub node_id: u64,
    /// Node-to-node address.
    pub rpc_address: String,
    /// PostgreSQL address.
    pub pg_address: String,
    /// Failure domain (empty: the node's own).
    pub domain: String,
    /// alive, suspect or down.
    pub state: String,
    /// leader, voter or learner.
    pub raft_role: String,
    /// Drained for maintenance (`quarry node drain`).
    pub maintenance: bool,
    /// Being decommissioned (`quarry node decommission`).
    pub decommissioning: bool,
}

/// The newest rebalance, from `quarry_system.rebalance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceProgress {
    /// Why it was planned.
    pub reason: String,
    /// Moves made.
    pub moved: i64,
    /// Moves planned.
    pub planned: i64,
    /// Bytes moved.
    pub moved_bytes: i64,
    /// Bytes of all planned moves.
    pub planned_bytes: i64,
    /// Whether it has ended (moves not made by then were given up).
    pub finished: bool,
}

/// What `quarry cluster status` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The members, by node id.
    pub nodes: Vec<Member>,
    /// How many stripes there are.
    pub stripes: i64,
    /// Stripes that are not healthy: (stripe id, table, layout k+m, available
    /// chunks, health).
    pub unhealthy: Vec<[String; 5]>,
    /// The newest rebalance, if there was one.
    pub rebalance: Option<RebalanceProgress>,
}

impl Status {
    /// Whether every node is alive and every stripe healthy.
    pub fn is_healthy(&self) -> bool {
        self.unhealthy.is_empty() && self.nodes.iter().all(|n| n.state == "alive")
    }
}

/// Every row of `quarry_system.nodes`, by node id, as the node behind
/// `client` sees them.
///
/// # Errors
/// If the node cannot answer (no Raft leader reachable from it).
pub async fn members(client: &Client) -> anyhow::Result<Vec<Member>> {
    Ok(client
        .query(
            "select node_id::bigint, rpc_address, pg_address, domain, state, raft_role, \
                    maintenance, decommissioning \
             from quarry_system.nodes order by node_id",
            &[],
        )
        .await
        .context("cannot read quarry_system.nodes")?
        .iter()
        .map(|r| Member {
            node_id: r.get::<_, i64>(0) as u64,
            rpc_address: r.get(1),
            pg_address: r.get(2),
            domain: r.get(3),
            state: r.get(4),
            raft_role: r.get(5),
            maintenance: r.get(6),
            decommissioning: r.get(7),
        })
        .collect())
}

/// The newest rebalance's progress, as the node behind `client` sees it.
///
/// # Errors
/// If the node cannot answer.
pub async fn rebalance(client: &Client) -> anyhow::Result<Option<RebalanceProgress>> {
    let rows = client
        .query(
            "select reason, \
                    sum(case when state = 'moved' then 1 else 0 end)::bigint, \
                    count(*)::bigint, \
                    sum(case when state = 'moved' then bytes else 0 end)::bigint, \
                    sum(bytes)::bigint, \
                    bool_or(finished_at is not null) \
             from quarry_system.rebalance group by reason",
            &[],
        )
        .await
        .context("cannot read quarry_system.rebalance")?;
    Ok(rows.first().map(|r| RebalanceProgress {
        reason: r.get(0),
        moved: r.get(1),
        planned: r.get(2),
        moved_bytes: r.get(3),
        planned_bytes: r.get(4),
        finished: r.get(5),
    }))
}

/// Decommissions node `node` through `client`, connected to the node at
/// `pg` (another one) (`ALTER NODE n DECOMMISSION`), then waits until the cluster has moved every chunk off
/// it and removed it, calling `progress` every few seconds with the
/// rebalance's progress. After it returns, stopping the node loses
/// nothing.
///
/// # Errors
/// If the statement is refused (the other nodes cannot hold the data) or
/// the cluster cannot be read.
pub async fn decommission(
    client: &Client,
    pg: &str,
    node: u64,
    mut progress: impl FnMut(&RebalanceProgress),
) -> anyhow::Result<()> {
    // The node leaves Raft without learning that it did: ask another.
    if members(client)
        .await?
        .iter()
        .any(|m| m.node_id == node && m.pg_address == pg)
    {
        anyhow::bail!("{pg} is node {node} itself; pass --host with another node's address");
    }
    client
        .batch_execute(&format!("ALTER NODE {node} DECOMMISSION"))
        .await
        .with_context(|| format!("cannot decommission node {node}"))?;
    loop {
        if !members(client).await?.iter().any(|m| m.node_id == node) {
            return Ok(());
        }
        if let Some(p) = rebalance(client).await? {
            progress(&p);
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Reads the cluster's status through `client`, connected to any node.
///
/// # Errors
/// If the node cannot be reached or cannot answer (no Raft leader reachable
/// from it).
pub async fn status(client: &Client) -> anyhow::Result<Status> {
    let nodes = members(client).await?;
    let stripes = client
        .query_one("select count(*)::bigint from quarry_system.stripes", &[])
        .await
        .context("cannot read quarry_system.stripes")?
        .get(0);
    let unhealthy = client
        .query(
            "select stripe_id::text, table_name, \
                    data_chunks::text || '+' || parity_chunks::text, \
                    available_chunks::text, health \
             from quarry_system.stripes where health <> 'healthy' \
             order by health desc, stripe_id",
            &[],
        )
        .await
        .context("cannot read quarry_system.stripes")?
        .iter()
        .map(|r| std::array::from_fn(|i| r.get::<_, String>(i)))
        .collect();
    Ok(Status {
        nodes,
        stripes,
        unhealthy,
        rebalance: rebalance(client).await?,
    })
}

/// How a drain ended (`quarry node drain`).
#[derive(Debug, Clone, PartialEq)]
pub struct Drained {
    /// Seconds from the mark to no client session left on the node.
    pub seconds: f64,
}

/// The cluster's status as the node at `pg` sees it, connecting as
/// [`connect`] does.
///
/// # Errors
/// As [`connect`] and [`status`].
pub async fn status_at(pg: &str) -> anyhow::Result<Status> {
    status(&connect(pg).await?).await
}

/// Drains node `node` through `client`, connected to the node at `pg`
/// (another one: the drained
/// node closes its client connections): marks it with `ALTER NODE n DRAIN
/// WITH (deadline_seconds = deadline_secs)`, then waits until the node has
/// no client session left and is not the Raft leader.
///
/// # Errors
/// If `pg` is the drained node's address, the statement fails, or the node
/// still has sessions 30 s past the deadline.
pub async fn drain(
    client: &Client,
    pg: &str,
    node: u64,
    deadline_secs: u32,
) -> anyhow::Result<Drained> {
    let before = members(client).await?;
    let member = before
        .iter()
        .find(|m| m.node_id == node)
        .with_context(|| format!("node {node} is not a member of the cluster"))?;
    anyhow::ensure!(
        member.pg_address != pg,
        "{pg} is node {node} itself, which closes its client connections as it drains: \
         give --host another node's PostgreSQL address"
    );
    let started = std::time::Instant::now();
    client
        .batch_execute(&format!(
            "ALTER NODE {node} DRAIN WITH (deadline_seconds = {deadline_secs})"
        ))
        .await
        .with_context(|| format!("cannot drain node {node}"))?;
    let limit = Duration::from_secs(u64::from(deadline_secs) + 30);
    loop {
        let sessions: i64 = client
            .query_one(
                &format!("select count(*)::bigint from pg_stat_activity where node_id = {node}"),
                &[],
            )
            .await
            .context("cannot read pg_stat_activity")?
            .get(0);
        let leads = members(client)
            .await?
            .iter()
            .any(|m| m.node_id == node && m.raft_role == "leader");
        if sessions == 0 && !leads {
            return Ok(Drained {
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "node {node} still has {sessions} client sessions{} {}s after the drain began",
            if leads { " and leads Raft" } else { "" },
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ends node `node`'s maintenance through `client` (`ALTER NODE n
/// RESUME`): it takes clients again and stands for Raft elections.
///
/// # Errors
/// If the statement fails.
pub async fn resume(client: &Client, node: u64) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("ALTER NODE {node} RESUME"))
        .await
        .with_context(|| format!("cannot resume node {node}"))
}

/// `status` as the text `quarry cluster status` prints.
pub fn render(status: &Status) -> String {
    let mut nodes = Table::new();
    nodes.load_preset(NOTHING).set_header([
        "node",
        "rpc address",
        "pg address",
        "domain",
        "state",
        "raft role",
        "maintenance",
    ]);
    for n in &status.nodes {
        nodes.add_row([
            n.node_id.to_string().as_str(),
            &n.rpc_address,
            &n.pg_address,
            &n.domain,
            &n.state,
            n.raft_role.as_str(),
            match (n.maintenance, n.decommissioning) {
                (_, true) => "decommissioning",
                (true, false) => "drained",
                (false, false) => "",
            },
        ]);
    }
    let alive = status.nodes.iter().filter(|n| n.state == "alive").count();
    let mut out = format!(
        "nodes: {}, alive: {alive}\n{nodes}\n\nstripes: {}",
        status.nodes.len(),
        status.stripes
    );
    if status.unhealthy.is_empty() {
        out.push_str(", all healthy\n");
    } else {
        let mut stripes = Table::new();
        stripes.load_preset(NOTHING).set_header([
            "stripe",
            "table",
            "layout",
            "available chunks",
            "health",
        ]);
        for row in &status.unhealthy {
            stripes.add_row(row.iter());
        }
        out.push_str(&format!(
            ", {} not healthy:\n{stripes}\n",
            status.unhealthy.len()
        ));
    }
    if let Some(r) = &status.rebalance {
        out.push_str(&format!("rebalance: {}\n", render_rebalance(r)));
    }
    out
}

/// One line of a rebalance's progress.
pub fn render_rebalance(r: &RebalanceProgress) -> String {
    let mb = |b: i64| b as f64 / (1 << 20) as f64;
    format!(
        "{} ({}): {} of {} moves, {:.1} of {:.1} MiB",
        if r.finished { "finished" } else { "under way" },
        r.reason,
        r.moved,
        r.planned,
        mb(r.moved_bytes),
        mb(r.planned_bytes)
    )
}

/// Settings of `quarry cluster local`.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    /// The `quarry` executable to start.
    pub exe: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// Parent of the nodes' data dirs (`n1`, `n2`, ...) and logs (`n1.log`, ...).
    pub dir: PathBuf,
    /// Node i listens on this address + (i − 1): 127.0.0.1, 127.0.0.2, ...
    pub first_address: Ipv4Addr,
    /// PostgreSQL port of every node.
    pub pg_port: u16,
    /// HTTP port of every node.
    pub http_port: u16,
    /// Node-to-node port of every node.
    pub listen_port: u16,
    /// More flags for every node's `quarry start`.
    pub extra: Vec<String>,
}

/// One started node.
#[derive(Debug)]
pub struct LocalNode {
    /// Its PostgreSQL address.
    pub pg: SocketAddr,
    /// Its node-to-node address.
    pub listen: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
    exited: bool,
}

impl LocalCluster {
    fn address(&self, i: usize) -> anyhow::Result<Ipv4Addr> {
        let base = u32::from(self.first_address);
        let ip = Ipv4Addr::from(base + i as u32);
        if ip.octets()[0] != 127 {
            bail!("node {} would get address {ip}, outside 127.0.0.0/8", i + 1);
        }
        Ok(ip)
    }

    /// Starts the nodes (node 1 bootstraps, or restarts; the others join it,
    /// or restart from their data dirs) and waits until each accepts clients.
    /// A node 1 that is not yet up when the others start is retried by them
    /// for their join timeout (30 s by default).
    ///
    /// # Errors
    /// If a node cannot be started or does not accept clients within 60 s;
    /// the nodes already started are stopped again.
    pub async fn start(&self) -> anyhow::Result<Vec<LocalNode>> {
        if self.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // All at once: restarted voters need each other for a quorum before
        // any of them answers clients (new joiners retry their seed).
        let mut started: Vec<LocalNode> = Vec::new();
        let seed = SocketAddr::from((self.address(0)?, self.listen_port));
        let mut failure = None;
        for i in 0..self.nodes {
            match self.spawn_node(i, seed) {
                Ok(node) => started.push(node),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            for node in &mut started {
                if let Err(e) = wait_ready(node).await {
                    failure = Some(e);
                    break;
                }
            }
        }
        for node in &started {
            if failure.is_none()
                && let Err(e) = self.wait_members(node).await
            {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            stop(&mut started, Duration::from_secs(10)).await;
            return Err(e);
        }
        Ok(started)
    }

    /// Waits until `observer` lists every node as alive, with as many Raft
    /// voters as the cluster keeps for its size (1, 3 from three nodes, 5 from
    /// five), so that the cluster survives a node loss once this returns.
    async fn wait_members(&self, observer: &LocalNode) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let voters = match self.nodes {
            0..=2 => 1,
            3 | 4 => 3,
            _ => 5,
        };
        loop {
            if let Ok(status) = status_at(&observer.pg.to_string()).await
                && status.nodes.len() == self.nodes
                && status.nodes.iter().all(|n| n.state == "alive")
                && status
                    .nodes
                    .iter()
                    .filter(|n| n.raft_role != "learner")
                    .count()
                    == voters
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the nodes did not all become members within 60 s; logs are in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts node `i + 1` (beyond the first `nodes`, on the next address)
    /// joining through node 1, and waits until it takes clients.
    ///
    /// # Errors
    /// If it cannot be started or does not become ready.
    pub async fn join_node(&self, i: usize) -> anyhow::Result<LocalNode> {
        let seed = SocketAddr::from((self.address(0)?, self.listen_port));
        let mut node = self.spawn_node(i, seed)?;
        wait_ready(&mut node).await?;
        Ok(node)
    }

    fn spawn_node(&self, i: usize, seed: SocketAddr) -> anyhow::Result<LocalNode> {
        let ip = self.address(i)?;
        let name = format!("n{}", i + 1);
        let log = self.dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let pg = SocketAddr::from((ip, self.pg_port));
        let listen = SocketAddr::from((ip, self.listen_port));
        let mut command = Command::new(&self.exe);
        command
            .arg("start")
            .arg("--data-dir")
            .arg(self.dir.join(&name))
            .args(["--pg-listen", &pg.to_string()])
            .args(["--http-listen", &format!("{ip}:{}", self.http_port)])
            .args(["--listen", &listen.to_string()])
            .arg("--insecure")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        if i > 0 {
            command.args(["--join", &seed.to_string()]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        Ok(LocalNode {
            pg,
            listen,
            log,
            child,
            exited: false,
        })
    }
}

async fn wait_ready(node: &mut LocalNode) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = connect(&node.pg.to_string()).await
            && client.simple_query("select 1").await.is_ok()
        {
            return Ok(());
        }
        if let Some(status) = node.child.try_wait()? {
            bail!(
                "the node on {} exited ({status}); its log is {}",
                node.pg,
                node.log.display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the node on {} did not accept clients within 60 s; its log is {}",
                node.pg,
                node.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl LocalNode {
    /// kill -9 (a crash), and reap the process.
    pub async fn kill9(&mut self) {
        if !self.exited {
            let _ = self.child.kill().await;
            self.exited = true;
        }
    }
}

/// Sends SIGTERM to every node, waits up to `grace` for each to exit, then
/// kills what is left.
pub async fn stop(nodes: &mut [LocalNode], grace: Duration) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(grace, node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}

/// Waits until a node that was running exits; returns its index and exit
/// status, or None (at once) when none is running.
pub async fn next_exit(nodes: &mut [LocalNode]) -> Option<(usize, String)> {
    let waits: Vec<_> = nodes
        .iter_mut()
        .enumerate()
        .filter(|(_, n)| !n.exited)
        .map(|(i, n)| Box::pin(async move { (i, n.child.wait().await) }))
        .collect();
    if waits.is_empty() {
        return None;
    }
    let ((index, status), _, _) = futures::future::select_all(waits).await;
    nodes[index].exited = true;
    let text = match status {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    };
    Some((index, text))
}

/// The lines `quarry cluster local` prints once the nodes are up.
pub fn describe(nodes: &[LocalNode], dir: &Path) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["node", "postgres", "node-to-node", "log"]);
    for (i, node) in nodes.iter().enumerate() {
        table.add_row([
            (i + 1).to_string(),
            node.pg.to_string(),
            node.listen.to_string(),
            node.log.display().to_string(),
        ]);
    }
    let first = &nodes[0].pg;
    format!(
        "{} nodes running, data under {}\n{table}\n\n\
         psql -h {} -p {} -U quarry quarry\n\
         quarry cluster status --host {first}\n\
         Ctrl-C stops every node.",
        nodes.len(),
        dir.display(),
        first.ip(),
        first.port()
    )
}
