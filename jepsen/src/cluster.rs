//! The `quarry` nodes under test: one process per host of a [`Lan`], each in
//! its own network namespace with its own data dir and log file. Node 1
//! bootstraps, the others join it. Every process is stopped by pid when the
//! [`Cluster`] is dropped, also when the run fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use crate::net::Lan;

/// Port of every node's PostgreSQL listener (each node has its own address).
pub const PG_PORT: u16 = 5433;
/// Port of every node's node-to-node listener.
pub const LISTEN_PORT: u16 = 7433;
/// Port of every node's HTTP listener.
pub const HTTP_PORT: u16 = 8433;

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Its PostgreSQL address.
    pub pg: SocketAddr,
    /// Its node-to-node address.
    pub listen: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    netns: String,
    child: Option<Child>,
    /// Whether it is stopped with SIGSTOP.
    paused: bool,
}

/// The nodes and their network.
pub struct Cluster {
    /// The network (dropped after the nodes).
    pub nodes: Vec<Node>,
    quarry: PathBuf,
    /// Flags every node gets.
    flags: Vec<String>,
    lan: Lan,
}

/// A connection to `pg`, or an error after `timeout`.
pub async fn connect(pg: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
    let config = format!(
        "host={} port={} user=jepsen dbname=quarry connect_timeout={}",
        pg.ip(),
        pg.port(),
        timeout.as_secs().max(1)
    );
    let (client, connection) =
        tokio::time::timeout(timeout, tokio_postgres::connect(&config, NoTls))
            .await
            .with_context(|| format!("no connection to {pg} within {timeout:?}"))??;
    tokio::spawn(connection);
    Ok(client)
}

impl Node {
    fn spawn(
        &mut self,
        quarry: &Path,
        flags: &[String],
        seed: Option<SocketAddr>,
    ) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(quarry)
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--pg-listen", &self.pg.to_string()])
            .args([
                "--http-listen",
                &SocketAddr::new(self.pg.ip(), HTTP_PORT).to_string(),
            ])
            .args(["--listen", &self.listen.to_string()])
            .arg("--insecure")
            .args(flags)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(seed) = seed {
            command.args(["--join", &seed.to_string()]);
        }
        // `ip netns exec` execs quarry: the child's pid is the node's.
        self.child = Some(command.spawn().context("cannot start quarry")?);
        self.paused = false;
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process stays, but answers nothing.
    pub fn pause(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        self.paused = self.is_running();
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.paused = false;
    }

    /// Waits until the node answers `select 1`, failing after `limit` or if
    /// the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(client) = connect(self.pg, Duration::from_secs(2)).await
                && client.simple_query("select 1").await.is_ok()
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "the node on {} exited ({status}); see {}",
                    self.pg,
                    self.log.display()
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "the node on {} did not answer within {limit:?}; see {}",
                    self.pg,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Cluster {
    /// Creates a network of `n` hosts and starts a node on each, with its
    /// data dir and log under `dir`; waits until each answers clients.
    ///
    /// # Errors
    /// If the network cannot be made (needs root) or a node does not start.
    pub async fn start(
        quarry: &Path,
        n: usize,
        dir: &Path,
        flags: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let lan =
            Lan::create(n).context("cannot create the test network (needs root and iproute2)")?;
        let nodes = lan
            .hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| Node {
                pg: SocketAddr::new(host.addr.into(), PG_PORT),
                listen: SocketAddr::new(host.addr.into(), LISTEN_PORT),
                data_dir: dir.join(format!("n{}", i + 1)),
                log: dir.join(format!("n{}.log", i + 1)),
                netns: host.netns.clone(),
                child: None,
                paused: false,
            })
            .collect();
        // The nodes talk over mutual TLS, as a production cluster does:
        // certificates of one CA, made by `quarry cert`.
        let certs = dir.join("certs");
        if !certs.join("ca.crt").exists() {
            let mut hosts = vec!["localhost".to_owned()];
            hosts.extend(lan.hosts().iter().map(|h| h.addr.to_string()));
            let cert = |args: &[String]| -> anyhow::Result<()> {
                let output = std::process::Command::new(quarry)
                    .arg("cert")
                    .args(args)
                    .arg("--certs-dir")
                    .arg(&certs)
                    .output()
                    .context("cannot run quarry cert")?;
                anyhow::ensure!(
                    output.status.success(),
                    "quarry cert {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Ok(())
            };
            cert(&["create-ca".to_owned()])?;
            let mut node = vec!["create-node".to_owned()];
            for host in hosts {
                node.extend(["--host".to_owned(), host]);
            }
            cert(&node)?;
        }
        let mut flags = flags;
        for (flag, file) in [
            ("--tls-cert", "node.crt"),
            ("--tls-key", "node.key"),
            ("--tls-ca", "ca.crt"),
        ] {
            flags.extend([flag.to_owned(), certs.join(file).display().to_string()]);
        }
        let mut cluster = Cluster {
            nodes,
            quarry: quarry.to_owned(),
            flags,
            lan,
        };
        let seed = cluster.nodes[0].listen;
        for i in 0..n {
            let join = (i > 0).then_some(seed);
            let (quarry, flags) = (cluster.quarry.clone(), cluster.flags.clone());
            cluster.nodes[i].spawn(&quarry, &flags, join)?;
            cluster.nodes[i].wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(cluster)
    }

    /// The network, for partitions.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// Starts node `i` again on its data dir (after [`Node::kill9`]).
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_running() {
            return Ok(());
        }
        let (quarry, flags) = (self.quarry.clone(), self.flags.clone());
        self.nodes[i].spawn(&quarry, &flags, None)
    }

    /// Undoes every fault: resumes paused nodes, restarts killed ones, heals
    /// the network.
    ///
    /// # Errors
    /// If a node cannot be restarted or a route removed.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_paused() {
                self.nodes[i].resume();
            }
            self.restart(i)?;
        }
        self.lan.heal()?;
        Ok(())
    }

    /// The index of the node the Raft leader is, as any answering node says.
    pub async fn leader(&self) -> Option<usize> {
        for node in &self.nodes {
            if !node.is_running() || node.is_paused() {
                continue;
            }
            let Ok(client) = connect(node.pg, Duration::from_secs(2)).await else {
                continue;
            };
            let query = client.query_opt(
                "select rpc_address from quarry_system.nodes where raft_role = 'leader'",
                &[],
            );
            if let Ok(Ok(Some(row))) = tokio::time::timeout(Duration::from_secs(3), query).await {
                let addr: String = row.get(0);
                return self.nodes.iter().position(|n| n.listen.to_string() == addr);
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.resume();
            node.kill9();
        }
    }
}
