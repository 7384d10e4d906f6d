//! Node configuration: a TOML file (`--config FILE`) and command-line flags, flags
//! winning. `deploy/quarry.toml.example` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default PostgreSQL listen address. 5433 rather than PostgreSQL's 5432, so a
/// Quarry node can run beside a PostgreSQL server on the same machine.
pub const DEFAULT_PG_LISTEN: &str = "127.0.0.1:5433";
/// Default HTTP listen address (health, metrics).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8433";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "quarry-data";

/// Default address for node-to-node traffic (internal RPC over TCP and gossip
/// over UDP share the port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";

/// Keys of the TOML config file, which are also the flags of `quarry start`
/// (`data_dir` is `--data-dir`); all optional.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory for all of the node's state (metadata, chunks) [default: ./quarry-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HOST:PORT for PostgreSQL clients [default: 127.0.0.1:5433].
    #[arg(long)]
    pub pg_listen: Option<SocketAddr>,
    /// HOST:PORT for HTTP (`/health`, `/metrics`) [default: 127.0.0.1:8433].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// HOST:PORT for node-to-node traffic: internal RPC (TCP) and gossip (UDP)
    /// on the same port; other nodes reach this node there [default: 127.0.0.1:7433].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Seed nodes' `listen` addresses (HOST:PORT, comma-separated) to join an
    /// existing cluster; without it a node with an empty data dir bootstraps a
    /// new cluster.
    #[arg(long, value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Failure domain label (rack, host, zone): Raft voters and the chunks of
    /// a stripe are spread over distinct domains first [default: the node's own].
    #[arg(long)]
    pub domain: Option<String>,
    /// Parallel partitions per query on this node [default: number of CPUs].
    #[arg(long)]
    pub target_partitions: Option<usize>,
    /// Threads query operators run on, apart from those serving clients,
    /// other nodes, Raft and gossip; 0 runs operators on those [default:
    /// number of CPUs].
    #[arg(long)]
    pub execution_threads: Option<usize>,
    /// Seconds to wait for running statements at shutdown before closing their
    /// connections [default: 10].
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds between runs of the collectors: snapshot retention and chunks
    /// no stripe places on this node [default: 60].
    #[arg(long)]
    pub retention_check_secs: Option<u64>,
    /// Seconds between runs of the compactor, which moves tables' ingest
    /// buffers into data files and merges their small data files on the
    /// Raft leader [default: 10].
    #[arg(long)]
    pub compaction_interval_secs: Option<u64>,
    /// Seconds a table's ingest buffer holds its oldest rows before the
    /// compactor moves them into data files even when the buffer is small
    /// (it moves sooner past 131,072 rows or 64 MiB) [default: 60].
    #[arg(long)]
    pub buffer_max_age_secs: Option<u64>,
    /// MiB of query results kept to answer repeats of a query over the same
    /// table snapshots (BigQuery's cached results); 0: none [default: 256].
    #[arg(long)]
    pub result_cache_mb: Option<u64>,
    /// Days of job history a node keeps (`quarry_system.jobs`) [default: 30].
    #[arg(long)]
    pub job_history_days: Option<u64>,
    /// A statement's data files with fewer rows than this go to the
    /// table's ingest buffer (their bytes in the Raft log) instead of
    /// stripes; 0: every file to stripes [default: 131072].
    #[arg(long)]
    pub buffer_file_rows: Option<u64>,
    /// Milliseconds after which a node that stops answering gossip probes is
    /// declared down (SWIM suspicion timeout) [default: 3000].
    #[arg(long)]
    pub down_after_ms: Option<u64>,
    /// Seconds a Raft voter may stay down before a live learner replaces it
    /// [default: 300].
    #[arg(long)]
    pub voter_replace_after_secs: Option<u64>,
    /// Seconds a node may stay down before its chunks are rebuilt on other
    /// nodes [default: 600].
    #[arg(long)]
    pub repair_after_secs: Option<u64>,
    /// Seconds after `ALTER NODE n DRAIN` (`quarry node drain`) during which
    /// the node, down for maintenance, is neither repaired nor replaced as
    /// a voter [default: 3600].
    #[arg(long)]
    pub maintenance_timeout_secs: Option<u64>,
    /// Seconds between passes of the scrubber over this node's chunks
    /// [default: 3600].
    #[arg(long)]
    pub scrub_interval_secs: Option<u64>,
    /// MiB a second that rebalancing may send to or take from each node
    /// (the leader makes one chunk move at a time and paces them); 0 turns
    /// rebalancing off, decommissioning included [default: 64].
    #[arg(long)]
    pub rebalance_mb_per_sec: Option<u64>,
    /// Seconds a node keeps its copy of a chunk that moved away (rebalance
    /// or repair), for queries planned before the move: the longest query
    /// window [default: 900].
    #[arg(long)]
    pub moved_chunk_grace_secs: Option<u64>,
    /// Seconds to keep trying the seeds before giving up on joining [default: 30].
    #[arg(long)]
    pub join_timeout_secs: Option<u64>,
    /// Memory one statement's sorts, aggregates and joins may hold, in MiB;
    /// past it they spill to `<data_dir>/spill`; at most one partition per
    /// 16 MiB [default: 2048].
    #[arg(long)]
    pub query_memory_mb: Option<u64>,
    /// Statements that run at once on this node (query slots); the others wait
    /// in arrival order [default: 4 per CPU].
    #[arg(long)]
    pub query_slots: Option<usize>,
    /// Largest body of a streaming API request (`POST
    /// /v1/tables/.../rows`), in MiB; a larger one gets 413 [default: 64].
    #[arg(long)]
    pub stream_body_limit_mb: Option<u64>,
    /// Memory for recently read data files (verified, whole), in MiB; 0 turns
    /// the pool off [default: a quarter of the machine's memory].
    #[arg(long)]
    pub data_cache_mb: Option<u64>,
    /// A query is distributed over the cluster (with `distsql = auto`) when
    /// its scans read at least this many MiB of data files; a smaller one
    /// runs on the node it arrives at, where the distributed run's fixed
    /// cost (starting fragments, exchanges) would outweigh sharing the scan
    /// [default: 64].
    #[arg(long)]
    pub distribute_min_mb: Option<u64>,
    /// The node's TLS certificate (PEM, e.g. `certs/node.crt` from `quarry
    /// cert create-node`): with --tls-key, PostgreSQL clients may connect
    /// with TLS (SSLRequest or direct TLS); read again on SIGHUP.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM, `certs/ca.crt`): with it, nodes
    /// talk to each other over mutual TLS, each showing a certificate this
    /// CA signed; a node without one (or with another CA's) cannot join or
    /// be dialled. Read again on SIGHUP with the certificate.
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// No TLS required and no authentication: any client may connect as any
    /// user (a user name with no role acts as a superuser). For a node on
    /// loopback while trying Quarry out; said in the log and by `SHOW
    /// quarry.security`. Without it, clients log in with SCRAM-SHA-256 and
    /// a node refuses to listen beyond loopback without TLS.
    #[arg(long)]
    #[serde(default)]
    pub insecure: bool,
    /// `/metrics` asks for a login (HTTP Basic or a bearer token, over
    /// HTTPS); by default it is open, as `/health` and `/ready` are.
    #[arg(long)]
    #[serde(default)]
    pub metrics_require_login: bool,
    /// File holding the password of the first superuser, `quarry`, set when
    /// this node bootstraps a cluster (or finds no `quarry` role); the
    /// environment variable QUARRY_INITIAL_PASSWORD may give it instead.
    #[arg(long)]
    pub initial_password_file: Option<PathBuf>,
}

/// The node's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for all of the node's state.
    pub data_dir: PathBuf,
    /// PostgreSQL listen address.
    pub pg_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Node-to-node address (RPC and gossip).
    pub listen: SocketAddr,
    /// Seeds to join through; empty: bootstrap or restart.
    pub join: Vec<String>,
    /// Failure domain; empty: the node is its own domain.
    pub domain: String,
    /// Parallel partitions per query.
    pub target_partitions: usize,
    /// Threads of the execution runtime (0: none, operators share the
    /// network's threads).
    pub execution_threads: usize,
    /// How long shutdown waits for running statements.
    pub shutdown_grace: Duration,
    /// How often the collectors run.
    pub retention_check: Duration,
    /// How often the compactor runs.
    pub compaction_interval: Duration,
    /// How long an ingest buffer holds its oldest rows at most.
    pub buffer_max_age: Duration,
    /// Rows under which a statement's files go to the ingest buffer.
    pub buffer_file_rows: u64,
    /// Bytes of query results kept for repeats.
    pub result_cache_bytes: u64,
    /// How long ended jobs are kept.
    pub job_history: Duration,
    /// SWIM suspicion timeout.
    pub down_after: Duration,
    /// How long a voter may be down before it is replaced.
    pub voter_replace_after: Duration,
    /// How long a node may be down before its chunks are rebuilt elsewhere.
    pub repair_after: Duration,
    /// How long a node in maintenance may be down without repair.
    pub maintenance_timeout: Duration,
    /// Time between scrubber passes.
    pub scrub_interval: Duration,
    /// Bytes a second rebalancing may move to or from each node (0: off).
    pub rebalance_rate: u64,
    /// How long a node keeps a chunk that moved away.
    pub moved_chunk_grace: Duration,
    /// How long joining keeps trying the seeds.
    pub join_timeout: Duration,
    /// Memory per statement before spilling, in bytes.
    pub query_memory_bytes: usize,
    /// Statements that run at once.
    pub query_slots: usize,
    /// Bytes of recently read data files kept in memory.
    pub data_cache_bytes: u64,
    /// Bytes of data files a query's scans read from which it is distributed.
    pub distribute_min_bytes: u64,
    /// The certificate of the PostgreSQL port's TLS and HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// The cluster CA, for node-to-node mutual TLS.
    pub tls_ca: Option<PathBuf>,
    /// `--insecure`: no authentication, TLS not required.
    pub insecure: bool,
    /// Where the first superuser's password is read from.
    pub initial_password_file: Option<PathBuf>,
    /// `/metrics` asks for a login.
    pub metrics_require_login: bool,
    /// Largest streaming API request body, in bytes.
    pub stream_body_limit_bytes: usize,
}

/// Errors reading the configuration (the operator's to fix).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`FileConfig`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
}

impl Config {
    /// The TLS certificate and key, if given.
    ///
    /// # Errors
    /// When only one of the two is given (by flag or config file).
    pub fn tls(&self) -> anyhow::Result<Option<crate::tls::TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.tls_ca.clone(),
            })),
            (None, None) if self.tls_ca.is_some() => {
                anyhow::bail!("tls_ca needs tls_cert and tls_key: the node's own certificate")
            }
            (None, None) => Ok(None),
            _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
        }
    }
}

impl Config {
    /// The first superuser's password: the file's first line, or
    /// QUARRY_INITIAL_PASSWORD; None if neither is given.
    ///
    /// # Errors
    /// When the file cannot be read or its password is empty.
    pub fn initial_password(&self) -> anyhow::Result<Option<String>> {
        let password = match &self.initial_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read --initial-password-file {}: {e}",
                        path.display()
                    )
                })?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            None => std::env::var("QUARRY_INITIAL_PASSWORD").ok(),
        };
        match password {
            Some(p) if p.is_empty() => anyhow::bail!("the initial password is empty"),
            other => Ok(other),
        }
    }

    /// Refuses to serve beyond loopback without TLS unless `--insecure`.
    ///
    /// # Errors
    /// Unless `--insecure`: when a client-facing address is not loopback
    /// and TLS is off, or the node-to-node address is not loopback and the
    /// cluster CA (mutual TLS) is not given.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.insecure {
            return Ok(());
        }
        if !self.listen.ip().is_loopback() && self.tls_ca.is_none() {
            anyhow::bail!(
                "listen {} is beyond loopback but nodes would talk in the clear: give --tls-cert, --tls-key and --tls-ca (the cluster CA, see `quarry cert`), or --insecure",
                self.listen
            );
        }
        if self.tls_cert.is_some() {
            return Ok(());
        }
        for (what, address) in [
            ("pg_listen", self.pg_listen),
            ("http_listen", self.http_listen),
        ] {
            if !address.ip().is_loopback() {
                anyhow::bail!(
                    "{what} {address} is beyond loopback but TLS is off: give --tls-cert and --tls-key (see `quarry cert`), or --insecure to serve in the clear without authentication"
                );
            }
        }
        Ok(())
    }
}

impl FileConfig {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`ConfigError`] if it cannot be read or parsed (unknown keys are errors).
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// This file's values with `flags` on top, and defaults for what neither sets.
    pub fn merge(self, flags: FileConfig) -> Config {
        let parse = |s: &str| s.parse().expect("default addresses are valid");
        let secs = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_secs(flag.or(file).unwrap_or(default).max(1))
        };
        Config {
            data_dir: flags
                .data_dir
                .or(self.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            pg_listen: flags
                .pg_listen
                .or(self.pg_listen)
                .unwrap_or_else(|| parse(DEFAULT_PG_LISTEN)),
            http_listen: flags
                .http_listen
                .or(self.http_listen)
                .unwrap_or_else(|| parse(DEFAULT_HTTP_LISTEN)),
            listen: flags
                .listen
                .or(self.listen)
                .unwrap_or_else(|| parse(DEFAULT_LISTEN)),
            join: flags.join.or(self.join).unwrap_or_default(),
            domain: flags.domain.or(self.domain).unwrap_or_default(),
            target_partitions: flags
                .target_partitions
                .or(self.target_partitions)
                .unwrap_or_else(cpus),
            execution_threads: flags
                .execution_threads
                .or(self.execution_threads)
                .unwrap_or_else(cpus),
            shutdown_grace: Duration::from_secs(
                flags
                    .shutdown_grace_secs
                    .or(self.shutdown_grace_secs)
                    .unwrap_or(10),
            ),
            retention_check: secs(flags.retention_check_secs, self.retention_check_secs, 60),
            compaction_interval: secs(
                flags.compaction_interval_secs,
                self.compaction_interval_secs,
                10,
            ),
            buffer_max_age: secs(flags.buffer_max_age_secs, self.buffer_max_age_secs, 60),
            result_cache_bytes: flags
                .result_cache_mb
                .or(self.result_cache_mb)
                .unwrap_or(256)
                << 20,
            job_history: Duration::from_secs(
                flags
                    .job_history_days
                    .or(self.job_history_days)
                    .unwrap_or(30)
                    .saturating_mul(86_400),
            ),
            buffer_file_rows: flags
                .buffer_file_rows
                .or(self.buffer_file_rows)
                .unwrap_or(quarry_exec::data_file::SMALL_FILE_ROWS),
            down_after: Duration::from_millis(
                flags
                    .down_after_ms
                    .or(self.down_after_ms)
                    .unwrap_or(3000)
                    .max(200),
            ),
            voter_replace_after: secs(
                flags.voter_replace_after_secs,
                self.voter_replace_after_secs,
                300,
            ),
            repair_after: secs(flags.repair_after_secs, self.repair_after_secs, 600),
            maintenance_timeout: secs(
                flags.maintenance_timeout_secs,
                self.maintenance_timeout_secs,
                3600,
            ),
            scrub_interval: secs(flags.scrub_interval_secs, self.scrub_interval_secs, 3600),
            rebalance_rate: flags
                .rebalance_mb_per_sec
                .or(self.rebalance_mb_per_sec)
                .unwrap_or(64)
                .saturating_mul(1 << 20),
            moved_chunk_grace: secs(
                flags.moved_chunk_grace_secs,
                self.moved_chunk_grace_secs,
                900,
            ),
            join_timeout: secs(flags.join_timeout_secs, self.join_timeout_secs, 30),
            query_memory_bytes: (flags
                .query_memory_mb
                .or(self.query_memory_mb)
                .unwrap_or(2048)
                .max(1) as usize)
                << 20,
            query_slots: flags
                .query_slots
                .or(self.query_slots)
                .unwrap_or_else(|| 4 * cpus())
                .max(1),
            data_cache_bytes: flags
                .data_cache_mb
                .or(self.data_cache_mb)
                .map_or_else(|| memory_total_bytes() / 4, |mb| mb << 20),
            distribute_min_bytes: flags
                .distribute_min_mb
                .or(self.distribute_min_mb)
                .unwrap_or(64)
                << 20,
            tls_cert: flags.tls_cert.or(self.tls_cert),
            tls_key: flags.tls_key.or(self.tls_key),
            tls_ca: flags.tls_ca.or(self.tls_ca),
            insecure: flags.insecure || self.insecure,
            initial_password_file: flags.initial_password_file.or(self.initial_password_file),
            metrics_require_login: flags.metrics_require_login || self.metrics_require_login,
            stream_body_limit_bytes: usize::try_from(
                flags
                    .stream_body_limit_mb
                    .or(self.stream_body_limit_mb)
                    .unwrap_or(64)
                    << 20,
            )
            .unwrap_or(usize::MAX),
        }
    }
}

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo, proc(5));
/// 4 GiB where it cannot be read.
fn memory_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb << 10)
}

/// CPUs this process may use (1 if unknown).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            r#"
            data_dir = "/var/lib/quarry"
            pg_listen = "0.0.0.0:6000"
            "#,
        )
        .expect("valid toml");
        let flags = FileConfig {
            pg_listen: Some("127.0.0.1:7000".parse().expect("addr")),
            ..Default::default()
        };
        let config = file.merge(flags);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/quarry"));
        assert_eq!(config.pg_listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let file: FileConfig = toml::from_str("tls_cert = \"certs/node.crt\"").expect("valid toml");
        let half = file.clone().merge(FileConfig::default());
        assert!(half.tls().is_err());
        let flags = FileConfig {
            tls_key: Some(PathBuf::from("certs/node.key")),
            ..Default::default()
        };
        let whole = file.merge(flags).tls().expect("both").expect("tls");
        assert_eq!(whole.cert, PathBuf::from("certs/node.crt"));
        assert_eq!(whole.key, PathBuf::from("certs/node.key"));
        assert!(
            FileConfig::default()
                .merge(FileConfig::default())
                .tls()
                .expect("neither")
                .is_none()
        );
    }

    #[test]
    fn a_node_beyond_loopback_needs_tls_or_insecure() {
        let open = |extra: &str| {
            toml::from_str::<FileConfig>(&format!("pg_listen = \"0.0.0.0:5433\"\n{extra}"))
                .expect("valid toml")
                .merge(FileConfig::default())
        };
        assert!(open("").check_exposure().is_err());
        assert!(open("insecure = true").check_exposure().is_ok());
        assert!(
            open("tls_cert = \"a\"\ntls_key = \"b\"")
                .check_exposure()
                .is_ok()
        );
        let loopback = FileConfig::default().merge(FileConfig::default());
        assert!(loopback.check_exposure().is_ok());
        let nodes_open = |extra: &str| {
            toml::from_str::<FileConfig>(&format!(
                "listen = \"10.0.0.1:7433\"\ntls_cert = \"a\"\ntls_key = \"b\"\n{extra}"
            ))
            .expect("valid toml")
            .merge(FileConfig::default())
        };
        assert!(nodes_open("").check_exposure().is_err());
        assert!(nodes_open("tls_ca = \"c\"").check_exposure().is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let result: Result<FileConfig, _> = toml::from_str("pg_port = 5");
        assert!(result.is_err());
    }
}
