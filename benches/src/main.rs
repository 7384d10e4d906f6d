//! `quarry-bench`: benchmarks against a running Quarry node, over the PostgreSQL
//! wire like any client.
//!
//! - `tpch --pg HOST:PORT` or `tpch --nodes K --scale-factor S --dir DIR`: runs
//!   the 22 TPC-H queries (tests/tpch/queries) against schema `tpch` of a
//!   running node (load it with `quarry load tpch`) or of a local cluster it
//!   starts and loads, one warm-up and `--runs` timed runs each, and prints the
//!   median per query; with Python's `duckdb`, DuckDB's times over Parquet of
//!   the same rows, the ratios and the geometric means.
//! - `tpch-csv --scale-factor N --out DIR [--tables a,b]`: writes the TPC-H tables as CSV (the same
//!   rows `quarry load tpch` loads) plus `schema.sql`, for loading into another
//!   engine such as DuckDB.
//! - `cluster --nodes N --scale-factor S`: starts N local nodes, loads TPC-H,
//!   and measures stripe storage overhead, crash detection time and repair
//!   rate.
//! - `commit-cost`: in-process, the Raft state machine's apply time for a
//!   one-row commit as the table's history and the number of tables grow.
//! - `write --baseline OLD_BIN`: COPY throughput and one-row commit latency
//!   on local clusters of 1 and 3 nodes, this build and another side by side.
//! - `rebalance --limits 8,64`: the rate at which rebalancing fills a node
//!   that joins a loaded cluster, per rate limit, against the disk's write
//!   speed, and TPC-H Q6's latency before and during.
//! - `layout --scale-factor 1`: bytes read and time per query over TPC-H
//!   lineitem as loaded, partitioned by month, and partitioned and
//!   clustered.

mod bank;
mod cluster;
mod commit_cost;
mod layout;
mod rebalance;
mod tpch;
mod write;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quarry-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time the 22 TPC-H queries on a running node or a local cluster.
    Tpch {
        /// A running node's PostgreSQL address (without --nodes).
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg: String,
        /// Start a local cluster of this many nodes and load TPC-H into it.
        #[arg(long)]
        nodes: Option<usize>,
        /// TPC-H scale factor (loaded with --nodes; DuckDB's data).
        #[arg(long, default_value_t = 1.0)]
        scale_factor: f64,
        /// Directory for the nodes' data (fresh) and DuckDB's files.
        #[arg(long, default_value = "/tmp/quarry-bench-tpch")]
        dir: PathBuf,
        /// Address of node 1 (with --nodes).
        #[arg(long, default_value = "127.0.80.1")]
        first_address: std::net::Ipv4Addr,
        /// Timed runs per query (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Directory of q01.sql … q22.sql.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tpch/queries"))]
        queries: PathBuf,
        /// Do not run DuckDB even if its Python package is installed.
        #[arg(long)]
        no_duckdb: bool,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
        /// A session setting for the queries, NAME=VALUE (e.g. distsql=on);
        /// may be repeated.
        #[arg(long, value_parser = setting)]
        set: Vec<(String, String)>,
        /// Each node's data cache in MiB (with --nodes); 0 makes every run
        /// read from the chunk stores [default: the node's default].
        #[arg(long)]
        data_cache_mb: Option<u64>,
        /// The nodes (with --nodes) serve TLS with certificates the bench
        /// makes, and every query runs over a plain and a TLS connection,
        /// side by side.
        #[arg(long)]
        tls: bool,
    },
    /// Write the TPC-H tables as CSV files and their DDL as schema.sql.
    TpchCsv {
        /// TPC-H scale factor.
        #[arg(long)]
        scale_factor: f64,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Only these tables (all eight when absent).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// Storage overhead, crash detection and repair rate on a local cluster.
    Cluster {
        /// Number of nodes (node i on 127.0.0.<first + i − 1>).
        #[arg(long, default_value_t = 6)]
        nodes: usize,
        /// TPC-H scale factor of the data loaded.
        #[arg(long, default_value_t = 0.1)]
        scale_factor: f64,
        /// A fresh directory for the nodes' data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address of node 1.
        #[arg(long, default_value = "127.0.70.1")]
        first_address: std::net::Ipv4Addr,
        /// The nodes' down_after_ms.
        #[arg(long, default_value_t = 3000)]
        down_after_ms: u64,
        /// The nodes' repair_after_secs.
        #[arg(long, default_value_t = 5)]
        repair_after_secs: u64,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
    },
    /// The state machine's cost of one commit as history and tables grow.
    CommitCost {
        /// Numbers of tables, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        tables: Vec<usize>,
        /// Numbers of snapshots of the committed table's history, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,20000")]
        history: Vec<usize>,
        /// Commits timed per case.
        #[arg(long, default_value_t = 500)]
        commits: usize,
    },
    /// Rebalancing onto a joining node: rate per limit, against the disk's
    /// speed, and query latency before and during.
    Rebalance {
        /// Nodes loaded before one more joins.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// TPC-H scale factor of the data loaded.
        #[arg(long, default_value_t = 0.1)]
        scale_factor: f64,
        /// Rate limits (rebalance_mb_per_sec), comma-separated; a fresh
        /// cluster each.
        #[arg(long, value_delimiter = ',', default_value = "8,64")]
        limits: Vec<u64>,
        /// Q6 runs timed before the join.
        #[arg(long, default_value_t = 20)]
        queries: usize,
        /// A fresh directory for the clusters' data.
        #[arg(long, default_value = "/tmp/quarry-bench-rebalance")]
        dir: PathBuf,
        /// Address of node 1.
        #[arg(long, default_value = "127.0.100.1")]
        first_address: std::net::Ipv4Addr,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
    },
    /// Bank transfers: commits/s and 40001 rate, Quarry (merge-on-read and
    /// copy-on-write DML) and PostgreSQL side by side.
    Bank {
        /// Concurrent sessions.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Rows of the accounts table.
        #[arg(long, default_value_t = 20)]
        accounts: u64,
        /// Seconds each engine runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// A fresh directory for the node's and PostgreSQL's data.
        #[arg(long, default_value = "/tmp/quarry-bench-bank")]
        dir: PathBuf,
        /// Address of the node.
        #[arg(long, default_value = "127.0.102.1")]
        first_address: std::net::Ipv4Addr,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
    },
    /// Bytes read and time per query over TPC-H lineitem in three layouts.
    Layout {
        /// TPC-H scale factor of the data loaded.
        #[arg(long, default_value_t = 1.0)]
        scale_factor: f64,
        /// Timed runs per query and layout.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// A fresh directory for the node's data.
        #[arg(long, default_value = "/tmp/quarry-bench-layout")]
        dir: PathBuf,
        /// Address of the node.
        #[arg(long, default_value = "127.0.101.1")]
        first_address: std::net::Ipv4Addr,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
    },
    /// COPY throughput and commit latency on local clusters, optionally side
    /// by side with another build.
    Write {
        /// The quarry binary measured [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
        /// Another quarry binary (e.g. the previous commit's) run the same way.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Cluster sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        nodes: Vec<usize>,
        /// Rows of the COPY.
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// One-row commits timed.
        #[arg(long, default_value_t = 300)]
        commits: usize,
        /// A fresh directory for the clusters' data.
        #[arg(long, default_value = "/tmp/quarry-bench-write")]
        dir: PathBuf,
        /// Address of node 1.
        #[arg(long, default_value = "127.0.90.1")]
        first_address: std::net::Ipv4Addr,
    },
}

/// A local cluster of `nodes` processes of `exe` under `dir`, node i on
/// `first_address` + i − 1 with the default ports, `extra` flags on each.
pub(crate) fn local_cluster(
    exe: &Path,
    nodes: usize,
    dir: &Path,
    first_address: std::net::Ipv4Addr,
    extra: Vec<String>,
) -> quarry_client::cluster::LocalCluster {
    quarry_client::cluster::LocalCluster {
        exe: exe.to_owned(),
        nodes,
        dir: dir.to_owned(),
        first_address,
        pg_port: 5433,
        http_port: 8433,
        listen_port: 7433,
        extra,
    }
}

/// Fails unless `dir` does not exist yet: a benchmark starts from nothing.
pub(crate) fn require_fresh(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        anyhow::bail!(
            "{} exists; the benchmark needs a fresh directory",
            dir.display()
        );
    }
    Ok(())
}

/// A `--set` argument, NAME=VALUE.
fn setting(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {arg:?}")),
    }
}

pub(crate) fn write_csv(scale_factor: f64, out: &Path, tables: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut schema = std::fs::File::create(out.join("schema.sql"))?;
    for (table, columns) in quarry_client::tpch::TABLES {
        if !tables.is_empty() && !tables.iter().any(|t| t == table) {
            continue;
        }
        writeln!(schema, "CREATE TABLE {table} ({columns});")?;
        let path = out.join(format!("{table}.csv"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut result = Ok(());
        quarry_client::tpch::generate_csv(table, scale_factor, 1, 1, |chunk| {
            result = file.write_all(&chunk);
            result.is_ok()
        });
        result.with_context(|| format!("writing {}", path.display()))?;
        file.flush()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tpch {
            pg,
            nodes,
            scale_factor,
            dir,
            first_address,
            runs,
            queries,
            no_duckdb,
            quarry,
            set,
            data_cache_mb,
            tls,
        } => {
            tpch::run(tpch::Settings {
                pg,
                nodes,
                scale_factor,
                dir,
                first_address,
                runs: runs.max(1),
                queries,
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                no_duckdb,
                set,
                data_cache_mb,
                tls,
            })
            .await
        }
        Command::TpchCsv {
            scale_factor,
            out,
            tables,
        } => write_csv(scale_factor, &out, &tables),
        Command::Bank {
            clients,
            accounts,
            seconds,
            dir,
            first_address,
            quarry,
        } => {
            bank::run(bank::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                dir,
                first_address,
                clients,
                accounts,
                seconds,
            })
            .await
        }
        Command::Layout {
            scale_factor,
            runs,
            dir,
            first_address,
            quarry,
        } => {
            layout::run(layout::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                scale_factor,
                runs,
                dir,
                first_address,
            })
            .await
        }
        Command::Rebalance {
            nodes,
            scale_factor,
            limits,
            queries,
            dir,
            first_address,
            quarry,
        } => {
            rebalance::run(rebalance::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                nodes,
                scale_factor,
                limits_mb: limits,
                queries,
                dir,
                first_address,
            })
            .await
        }
        Command::Cluster {
            nodes,
            scale_factor,
            data_dir,
            first_address,
            down_after_ms,
            repair_after_secs,
            quarry,
        } => {
            cluster::run(cluster::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                nodes,
                scale_factor,
                dir: data_dir,
                first_address,
                down_after_ms,
                repair_after_secs,
            })
            .await
        }
        Command::CommitCost {
            tables,
            history,
            commits,
        } => {
            commit_cost::run(commit_cost::Settings {
                tables,
                history,
                commits: commits.max(1),
            });
            Ok(())
        }
        Command::Write {
            quarry,
            baseline,
            nodes,
            rows,
            commits,
            dir,
            first_address,
        } => {
            write::run(write::Settings {
                quarry: match quarry {
                    Some(path) => path,
                    None => cluster::default_quarry()?,
                },
                baseline,
                nodes,
                rows,
                commits: commits.max(1),
                dir,
                first_address,
            })
            .await
        }
    }
}
