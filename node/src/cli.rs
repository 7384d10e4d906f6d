//! The `quarry` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, FileConfig};

/// Quarry: a distributed analytical database speaking the PostgreSQL protocol.
#[derive(Debug, Parser)]
#[command(name = "quarry", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("QUARRY_COMMIT"), ")"), about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run a node until SIGTERM or SIGINT.
    Start(Box<StartArgs>),
    /// Load files into a table of a running node (through its streaming
    /// API, resumable), or sample data (`quarry load tpch`).
    Load(Box<LoadArgs>),
    /// Take a node out of service for maintenance (drain), or back
    /// (resume): the rolling restart of docs/INSTALL.md.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Look at or start a cluster.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make the cluster's TLS certificates (PEM files in --certs-dir).
    Cert {
        /// Which certificate.
        #[command(subcommand)]
        command: CertCommand,
        /// Directory of the CA and the certificates it signs.
        #[arg(long, global = true, default_value = "certs")]
        certs_dir: PathBuf,
        /// Days a new CA is valid.
        #[arg(long, global = true, default_value_t = 3650)]
        ca_lifetime_days: u32,
        /// Days a new node or client certificate is valid.
        #[arg(long, global = true, default_value_t = 1825)]
        lifetime_days: u32,
    },
    /// Back up the cluster into a directory, or check a backup.
    Backup {
        /// What to do.
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore the newest backup in --from into an empty cluster (`RESTORE
    /// FROM`): the same tables, time-travel history, views and roles. The
    /// directory is read by the node at --host.
    Restore {
        /// The backup directory: an absolute path on the node at --host.
        #[arg(long)]
        from: PathBuf,
        /// A node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Print the manual page (roff), as the Debian package installs it
    /// (deploy/debian/quarry.1).
    #[command(hide = true)]
    Man,
}

/// Sub-commands of `quarry backup`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a backup (`BACKUP TO`): the catalog as of now and every data
    /// file it lists, into --to on the node at --host; files an earlier
    /// backup in --to holds are not copied again.
    Create {
        /// The backup directory: an absolute path on the node at --host (a
        /// mounted backup disk).
        #[arg(long)]
        to: PathBuf,
        /// A node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Check the newest backup in DIR (on this machine): its catalog, and
    /// every data file's SHA-256, length and CRC-32C. Exits 1 at the first
    /// problem, naming it.
    Verify {
        /// The backup directory.
        dir: PathBuf,
    },
}

/// Sub-commands of `quarry cert`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// A new certificate authority: ca.crt and ca.key.
    CreateCa,
    /// A node's certificate, signed by the CA: node.crt and node.key, for
    /// the names and addresses it is reached by.
    CreateNode {
        /// A DNS name or IP address of the node (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// A user's client certificate, signed by the CA: client.USER.crt and
    /// client.USER.key.
    CreateClient {
        /// The user (the certificate's common name).
        user: String,
    },
}

/// Sub-commands of `quarry node`. They connect as the superuser `quarry`,
/// with the password in QUARRY_PASSWORD or PGPASSWORD where the node asks
/// for one.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Drain node NODE: it refuses new clients (57P03, /ready fails), hands
    /// Raft leadership over, lets running statements finish until the
    /// deadline (then cancels them) and closes its client connections;
    /// while it is down for maintenance its chunks are not rebuilt
    /// elsewhere. Waits until it is drained.
    Drain {
        /// The node's id (`quarry cluster status`).
        node: u64,
        /// Another node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// Seconds running statements may take before they are cancelled.
        #[arg(long, default_value_t = 60)]
        deadline_secs: u32,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Decommission node NODE: it takes no new chunks, the cluster moves
    /// every chunk off it (paced by rebalance_mb_per_sec) and then removes it
    /// from Raft. Waits until it is removed, printing progress; after that,
    /// stopping the node loses nothing. Refused when the other nodes are too
    /// few to hold every stripe's chunks on distinct nodes.
    Decommission {
        /// The node's id (`quarry cluster status`).
        node: u64,
        /// Another node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
    /// End node NODE's maintenance: it takes clients again.
    Resume {
        /// The node's id.
        node: u64,
        /// A node's PostgreSQL address, HOST:PORT (any node).
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
}

/// Sub-commands of `quarry cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print the members with their state and Raft role, and every stripe that
    /// is not healthy, as the node at --host sees them. Exits 1 when a node is
    /// not alive or a stripe not healthy.
    Status {
        /// A node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        host: String,
        /// How to log in.
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Start an N-node cluster on this machine (node i on 127.0.0.i, same ports
    /// on every address) for trying Quarry out; Ctrl-C or SIGTERM stops it.
    /// Started again on the same --data-dir, the nodes restart with their data.
    Local {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Parent of the nodes' data dirs and log files.
        #[arg(long, default_value = "quarry-cluster")]
        data_dir: PathBuf,
        /// Address of node 1; node i gets this address + (i − 1).
        #[arg(long, default_value = "127.0.0.1")]
        first_address: std::net::Ipv4Addr,
        /// PostgreSQL port of every node.
        #[arg(long, default_value_t = 5433)]
        pg_port: u16,
        /// HTTP port of every node.
        #[arg(long, default_value_t = 8433)]
        http_port: u16,
        /// Node-to-node port of every node.
        #[arg(long, default_value_t = 7433)]
        listen_port: u16,
        /// More flags for every node's `quarry start` (after `--`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
}

/// Flags of `quarry start`; each overrides the config file's key of the same name.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// TOML config file (see deploy/quarry.toml.example).
    #[arg(long, env = "QUARRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub flags: FileConfig,
}

/// `quarry load`: files, or a sample data set.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadArgs {
    /// A sample data set instead of files.
    #[command(subcommand)]
    pub dataset: Option<Dataset>,
    /// Files and directories to load (Parquet, CSV with a header line,
    /// NDJSON); a directory's files with those extensions, by name.
    pub paths: Vec<PathBuf>,
    /// The table, schema.table.
    #[arg(long)]
    pub table: Option<String>,
    /// The files' format [default: by each file's extension].
    #[arg(long, value_enum)]
    pub format: Option<crate::load_files::LoadFormat>,
    /// Create the table from the first file's columns if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// The node's HTTP address.
    #[arg(long, default_value = concat!("http://", "127.0.0.1:8433"))]
    pub url: String,
    /// The node's PostgreSQL address (for --create).
    #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
    pub pg: String,
    /// Rows per request (a request past 32 MiB is split).
    #[arg(long, default_value_t = 262_144)]
    pub batch_rows: usize,
    /// Files sent at once, each through a pending channel of its own; all
    /// commit together. A rerun resumes with the same number.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Most rows that do not fit the table to skip, each listed at the end,
    /// before the load fails and nothing of it is loaded (BigQuery's
    /// max_bad_records).
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: u64,
    /// How to log in.
    #[command(flatten)]
    pub login: LoginArgs,
}

/// How `quarry load`, `quarry node` and `quarry cluster status` log in to
/// a node that asks for it (not --insecure).
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// The role to log in as (HTTP Basic over HTTPS, and the PostgreSQL
    /// connection of --create and of tpch) when the node is not --insecure.
    #[arg(long, default_value = "quarry")]
    pub user: String,
    /// Its password.
    #[arg(long, env = "QUARRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// An access token (CREATE ACCESS TOKEN) to send instead of a password.
    #[arg(long, env = "QUARRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA certificates to trust for https:// URLs and the
    /// PostgreSQL connection's TLS (`quarry cert create-ca` writes ca.crt).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

impl LoginArgs {
    fn login(self) -> crate::load_files::Login {
        crate::load_files::Login {
            user: Some(self.user),
            password: self.password,
            token: self.token,
            ca: self.ca,
        }
    }
}

/// Sample data sets.
#[derive(Debug, Subcommand)]
pub enum Dataset {
    /// The eight TPC-H tables, generated by the tpchgen crate.
    Tpch {
        /// TPC-H scale factor (1 ≈ 8.7 M rows, ~1 GiB of CSV).
        #[arg(long, default_value_t = 1.0)]
        scale_factor: f64,
        /// The node's PostgreSQL address, HOST:PORT.
        #[arg(long, default_value = crate::config::DEFAULT_PG_LISTEN)]
        pg: String,
        /// Schema to create the tables in.
        #[arg(long, default_value = "tpch")]
        schema: String,
        /// Generate and load each large table in this many parts (dbgen's
        /// -C), one COPY and at least one data file each: spreads every
        /// large table over a cluster's nodes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
        parts: i32,
        /// How the rows travel: Arrow batches through the streaming API's
        /// pending channels (the node's HTTP listener, --url; resumable,
        /// each table committed at once), or CSV through COPY FROM STDIN
        /// (the PostgreSQL listener, --pg).
        #[arg(long, value_enum, default_value_t = TpchPath::Stream)]
        via: TpchPath,
        /// The node's HTTP address (--via stream).
        #[arg(long, default_value = concat!("http://", "127.0.0.1:8433"))]
        url: String,
        /// Parts of a table sent at once (--via stream), each through a
        /// pending channel of its own; a table's commit together.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// How to log in (--via stream).
        #[command(flatten)]
        login: LoginArgs,
    },
}

/// The ways `quarry load tpch` sends rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TpchPath {
    /// The streaming API (`docs/INGESTION.md`).
    Stream,
    /// COPY FROM STDIN, CSV.
    Copy,
}

impl StartArgs {
    /// The effective configuration: the file (if any) under the flags.
    ///
    /// # Errors
    /// If the config file cannot be read or parsed.
    pub fn config(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Ok(file.merge(self.flags.clone()))
    }
}

/// Writes `quarry`'s manual page (roff): the command, its options and its
/// sub-commands, from the same definitions as `--help`.
///
/// # Errors
/// If writing fails.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    // The package version alone: the page does not change with each commit.
    clap_mangen::Man::new(Cli::command().version(env!("CARGO_PKG_VERSION"))).render(out)
}

/// Runs the command line; the process exit code follows the result.
///
/// # Errors
/// Whatever the sub-command fails with.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        CliCommand::Start(args) => crate::server::run(args.config()?).await,
        CliCommand::Cluster { command } => cluster(command).await,
        CliCommand::Node { command } => match command {
            NodeCommand::Drain {
                node,
                host,
                deadline_secs,
                login,
            } => {
                let client = login.login().connect(&host).await?;
                let drained =
                    quarry_client::cluster::drain(&client, &host, node, deadline_secs).await?;
                println!(
                    "node {node} drained in {:.1} s: no client sessions, not the Raft leader; \
                     `quarry node resume {node}` ends its maintenance",
                    drained.seconds
                );
                Ok(())
            }
            NodeCommand::Decommission { node, host, login } => {
                let client = login.login().connect(&host).await?;
                quarry_client::cluster::decommission(&client, &host, node, |p| {
                    eprintln!("{}", quarry_client::cluster::render_rebalance(p));
                })
                .await?;
                println!("node {node} holds no chunk and has left the cluster; it may be stopped");
                Ok(())
            }
            NodeCommand::Resume { node, host, login } => {
                let client = login.login().connect(&host).await?;
                quarry_client::cluster::resume(&client, node).await?;
                println!("node {node} takes clients again");
                Ok(())
            }
        },
        CliCommand::Backup { command } => match command {
            BackupCommand::Create { to, host, login } => {
                let client = login.login().connect(&host).await?;
                let row = one_row(&client, &format!("BACKUP TO {}", quote_literal(&to)))
                    .await
                    .map_err(|e| failed("the backup", &e))?;
                println!(
                    "{}: {} data files, {} copied now ({} bytes), catalog {} bytes",
                    row[0], row[1], row[2], row[3], row[4],
                );
                Ok(())
            }
            BackupCommand::Verify { dir } => {
                let verified = quarry_exec::backup::verify(&dir)?;
                println!(
                    "{}: catalog and {} data files verified, {} tables, recovery point {} µs",
                    verified.manifest.backup_id,
                    verified.manifest.files.len(),
                    verified.tables,
                    verified.manifest.last_commit_at,
                );
                Ok(())
            }
        },
        CliCommand::Restore { from, host, login } => {
            let client = login.login().connect(&host).await?;
            let row = one_row(&client, &format!("RESTORE FROM {}", quote_literal(&from)))
                .await
                .map_err(|e| failed("the restore", &e))?;
            println!(
                "restored {}: {} tables, {} data files ({} bytes)",
                row[0], row[1], row[2], row[3],
            );
            Ok(())
        }
        CliCommand::Cert {
            command,
            certs_dir,
            ca_lifetime_days,
            lifetime_days,
        } => {
            let lifetimes = crate::tls::Lifetimes {
                ca_days: ca_lifetime_days,
                cert_days: lifetime_days,
            };
            let made = match command {
                CertCommand::CreateCa => {
                    crate::tls::create_ca(&certs_dir, lifetimes)?;
                    "ca.crt, ca.key".to_owned()
                }
                CertCommand::CreateNode { hosts } => {
                    crate::tls::create_node(&certs_dir, &hosts, lifetimes)?;
                    "node.crt, node.key".to_owned()
                }
                CertCommand::CreateClient { user } => {
                    crate::tls::create_client(&certs_dir, &user, lifetimes)?;
                    format!("client.{user}.crt, client.{user}.key")
                }
            };
            println!("wrote {made} in {}", certs_dir.display());
            Ok(())
        }
        CliCommand::Load(args) => load(*args).await,
        CliCommand::Man => {
            use std::io::Write as _;
            let mut page = Vec::new();
            man_page(&mut page)?;
            std::io::stdout().write_all(&page)?;
            Ok(())
        }
    }
}

/// `quarry load`.
async fn load(args: LoadArgs) -> anyhow::Result<()> {
    match args.dataset {
        None => {
            let Some(table) = args.table else {
                anyhow::bail!("quarry load PATH... needs --table schema.table");
            };
            if args.paths.is_empty() {
                anyhow::bail!("quarry load needs files or directories, or a data set (tpch)");
            }
            let started = std::time::Instant::now();
            let summary = crate::load_files::load(&crate::load_files::LoadRequest {
                paths: args.paths,
                table: table.clone(),
                format: args.format,
                create: args.create,
                url: args.url,
                pg: args.pg,
                batch_rows: args.batch_rows.max(1),
                max_bad_rows: args.max_bad_rows,
                parallel: args.parallel.max(1),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                login: args.login.login(),
            })
            .await?;
            let seconds = started.elapsed().as_secs_f64();
            let skipped = summary.skipped.len() as u64;
            println!(
                "loaded {} rows from {} file(s) into {table} in {seconds:.1} s ({:.0} rows/s); \
                 {} row(s) were sent by an earlier run; {skipped} bad row(s) skipped; \
                 channels {}-* committed at {}",
                summary.rows_sent - skipped,
                summary.files,
                summary.rows_sent as f64 / seconds.max(1e-9),
                summary.resumed_at,
                summary.channel,
                summary.next_offset
            );
            for line in &summary.skipped {
                println!("skipped: {line}");
            }
            Ok(())
        }
        Some(Dataset::Tpch {
            scale_factor,
            pg,
            schema,
            parts,
            via,
            url,
            parallel,
            login,
        }) => match via {
            TpchPath::Stream => {
                let started = std::time::Instant::now();
                let request = crate::load_files::LoadRequest {
                    paths: Vec::new(),
                    table: String::new(),
                    format: None,
                    create: false,
                    url,
                    pg,
                    batch_rows: args.batch_rows.max(1),
                    max_bad_rows: 0,
                    parallel: parallel.max(1),
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    login: login.login(),
                };
                let loaded =
                    crate::load_files::load_tpch(&request, &schema, scale_factor, parts).await?;
                let mut total = 0;
                for (table, summary, elapsed) in &loaded {
                    println!(
                        "{schema}.{table}: {} rows in {:.1} s ({:.0} rows/s)",
                        summary.next_offset,
                        elapsed.as_secs_f64(),
                        summary.rows_sent as f64 / elapsed.as_secs_f64().max(1e-9)
                    );
                    total += summary.next_offset;
                }
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "loaded {total} rows through the streaming API in {seconds:.1} s: {:.0} rows/s",
                    total as f64 / seconds.max(1e-9)
                );
                Ok(())
            }
            TpchPath::Copy => {
                let summary =
                    quarry_client::tpch::load(&pg, scale_factor, parts, &schema, true).await?;
                let seconds = summary.elapsed.as_secs_f64();
                for (table, rows, elapsed) in &summary.rows {
                    println!(
                        "{schema}.{table}: {rows} rows in {:.1} s ({:.0} rows/s)",
                        elapsed.as_secs_f64(),
                        *rows as f64 / elapsed.as_secs_f64().max(1e-9)
                    );
                }
                println!(
                    "loaded {} rows ({:.1} MiB of CSV) in {:.1} s: {:.0} rows/s",
                    summary.total_rows(),
                    summary.csv_bytes as f64 / (1024.0 * 1024.0),
                    seconds,
                    summary.total_rows() as f64 / seconds.max(1e-9)
                );
                Ok(())
            }
        },
    }
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    use quarry_client::cluster;
    match command {
        ClusterCommand::Status { host, login } => {
            let client = login.login().connect(&host).await?;
            let status = cluster::status(&client).await?;
            print!("{}", cluster::render(&status));
            if !status.is_healthy() {
                anyhow::bail!("the cluster is not fully healthy");
            }
            Ok(())
        }
        ClusterCommand::Local {
            nodes,
            data_dir,
            first_address,
            pg_port,
            http_port,
            listen_port,
            extra,
        } => {
            let local = cluster::LocalCluster {
                exe: std::env::current_exe()?,
                nodes,
                dir: data_dir,
                first_address,
                pg_port,
                http_port,
                listen_port,
                extra,
            };
            let shutdown = crate::server::shutdown_signal();
            tokio::pin!(shutdown);
            // Interrupted while starting, the nodes started so far are killed
            // (their handles kill on drop).
            let mut started = tokio::select! {
                started = local.start() => started?,
                () = &mut shutdown => return Ok(()),
            };
            println!("{}", cluster::describe(&started, &local.dir));
            let grace = std::time::Duration::from_secs(30);
            // A node that dies is reported and the others keep running, so
            // failures can be tried out; the command ends with the last node.
            loop {
                tokio::select! {
                    () = &mut shutdown => {
                        cluster::stop(&mut started, grace).await;
                        return Ok(());
                    }
                    exited = cluster::next_exit(&mut started) => match exited {
                        Some((index, status)) => eprintln!(
                            "node {} exited ({status}); its log is {}; the others keep running",
                            index + 1,
                            started[index].log.display()
                        ),
                        None => anyhow::bail!("every node has exited"),
                    },
                }
            }
        }
    }
}

/// `path` as a SQL string literal.
fn quote_literal(path: &std::path::Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// A statement's error for the terminal: the server's message and SQLSTATE.
fn failed(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow::anyhow!(
            "{what} failed: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ),
        None => anyhow::anyhow!("{what} failed: {e}"),
    }
}

/// The one row `sql` answers, as text, over the simple query protocol.
async fn one_row(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default())
}
