//! `quarry-bench bank`: commits per second and the share of commits that
//! fail with 40001 when `clients` sessions move money between `accounts`
//! rows of one table (each transfer: BEGIN ISOLATION LEVEL REPEATABLE
//! READ; two single-row UPDATEs; COMMIT), for a fixed time.
//!
//! Run side by side, one after the other, on one machine: Quarry on one
//! fresh node with `dml_mode` `merge-on-read` (deletion vectors, the
//! default) and `copy-on-write` (each UPDATE rewrites the data files it
//! touches), and PostgreSQL (Debian's server, started by the benchmark in a
//! temporary directory, fsync and synchronous_commit on, as Quarry's Raft
//! log is synced before a commit is acknowledged). A transfer that fails
//! with 40001 (or, in PostgreSQL, 40P01) is rolled back and not retried. At the end each table must still hold
//! `accounts` × 100 in all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

/// Settings of one run.
pub struct Settings {
    pub quarry: PathBuf,
    pub dir: PathBuf,
    pub first_address: std::net::Ipv4Addr,
    pub clients: usize,
    pub accounts: u64,
    pub seconds: u64,
}

/// What one engine did in the time given.
struct Outcome {
    engine: String,
    commits: u64,
    conflicts: u64,
    seconds: f64,
    /// Median and 99th percentile time of a committed transfer, ms.
    p50_ms: f64,
    p99_ms: f64,
}

/// A small xorshift generator: each client's own, seeded by its number.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Whether `e` is a serialization failure (40001) or, in PostgreSQL, a
/// deadlock between two transfers locking the same two rows in opposite
/// orders (40P01): a transaction to retry.
fn is_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

/// One transfer; Ok(false) when it failed with 40001 (rolled back).
async fn transfer(
    client: &Client,
    table: &str,
    from: u64,
    to: u64,
    amount: i64,
) -> anyhow::Result<bool> {
    let steps = [
        "BEGIN ISOLATION LEVEL REPEATABLE READ".to_owned(),
        format!("UPDATE {table} SET balance = balance - {amount} WHERE id = {from}"),
        format!("UPDATE {table} SET balance = balance + {amount} WHERE id = {to}"),
        "COMMIT".to_owned(),
    ];
    for step in &steps {
        if let Err(e) = client.batch_execute(step).await {
            if is_conflict(&e) {
                // After a failed COMMIT the transaction is over already.
                let _ = client.batch_execute("ROLLBACK").await;
                return Ok(false);
            }
            return Err(e).with_context(|| step.clone());
        }
    }
    Ok(true)
}

/// Runs the workload on `table` through `clients` (connected, with any
/// session settings made) for `seconds`.
async fn workload(
    engine: &str,
    clients: Vec<Client>,
    table: &str,
    accounts: u64,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let commits = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (n, client) in clients.into_iter().enumerate() {
        let (commits, conflicts) = (commits.clone(), conflicts.clone());
        let table = table.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let from = random.below(accounts);
                let to = (from + 1 + random.below(accounts - 1)) % accounts;
                let amount = 1 + random.below(5) as i64;
                let began = Instant::now();
                if transfer(&client, &table, from, to, amount).await? {
                    commits.fetch_add(1, Ordering::Relaxed);
                    times.push(began.elapsed().as_secs_f64() * 1000.0);
                } else {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>((client, times))
        }));
    }
    let mut times = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (client, mut t) = task.await??;
        times.append(&mut t);
        clients.push(client);
    }
    let seconds = started.elapsed().as_secs_f64();
    let total: i64 = clients[0]
        .query_one(&format!("SELECT sum(balance)::bigint FROM {table}"), &[])
        .await?
        .get(0);
    if total != accounts as i64 * 100 {
        bail!(
            "{engine}: the accounts hold {total} in all, not {}",
            accounts * 100
        );
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Outcome {
        engine: engine.to_owned(),
        commits: commits.load(Ordering::Relaxed),
        conflicts: conflicts.load(Ordering::Relaxed),
        seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

/// `clients` connections to PostgreSQL at `conninfo`.
async fn connect(conninfo: &str, clients: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(connection);
        out.push(client);
    }
    Ok(out)
}

/// The accounts table `table`: `accounts` rows holding 100 each.
async fn create_accounts(client: &Client, table: &str, accounts: u64) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id BIGINT NOT NULL, balance BIGINT NOT NULL);
             INSERT INTO {table} SELECT v, 100 FROM generate_series(0, {}) AS g(v);",
            accounts - 1
        ))
        .await?;
    Ok(())
}

/// A PostgreSQL server in `dir`, on a free port of 127.0.0.1; None when
/// Debian's server is not installed.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(program);
        let mut command = if running_as_root() {
            // PostgreSQL refuses to run as root.
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = command.args(args).output()?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn start(dir: &Path) -> anyhow::Result<Option<Postgres>> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let version = e.file_name().to_str()?.parse().ok()?;
                        let bin = e.path().join("bin");
                        bin.join("initdb").exists().then_some((version, bin))
                    })
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        let Some((_, bin)) = versions.pop() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir)
                .status()?;
            if !status.success() {
                bail!("chown postgres {} failed", dir.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Postgres {
            bin,
            data: dir.join("data"),
            port,
        };
        let data = pg.data.to_string_lossy().into_owned();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let log = dir.join("log").to_string_lossy().into_owned();
        let options = format!(
            "-k {} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=100",
            dir.display()
        );
        pg.run(
            "pg_ctl",
            &["-D", &data, "-w", "-l", &log, "-o", &options, "start"],
        )?;
        Ok(Some(pg))
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn stop(&self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = self.run("pg_ctl", &["-D", &data, "-w", "-m", "immediate", "stop"]);
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    crate::require_fresh(&settings.dir)?;
    if settings.accounts < 2 {
        bail!("a transfer needs two accounts");
    }
    let local = crate::local_cluster(
        &settings.quarry,
        1,
        &settings.dir.join("quarry"),
        settings.first_address,
        Vec::new(),
    );
    let mut nodes = local.start().await?;
    let quarry = async {
        let pg = nodes[0].pg.to_string();
        let admin = quarry_client::cluster::connect(&pg).await?;
        let mut outcomes = Vec::new();
        for mode in ["merge-on-read", "copy-on-write"] {
            let table = format!("accounts_{}", mode.replace('-', "_"));
            create_accounts(&admin, &table, settings.accounts).await?;
            let mut clients = Vec::with_capacity(settings.clients);
            for _ in 0..settings.clients {
                let client = quarry_client::cluster::connect(&pg).await?;
                client
                    .batch_execute(&format!("SET dml_mode = '{mode}'"))
                    .await?;
                clients.push(client);
            }
            outcomes.push(
                workload(
                    &format!("Quarry, dml_mode = {mode}"),
                    clients,
                    &table,
                    settings.accounts,
                    settings.seconds,
                )
                .await?,
            );
        }
        Ok::<_, anyhow::Error>(outcomes)
    }
    .await;
    quarry_client::cluster::stop(&mut nodes, Duration::from_secs(30)).await;
    let mut outcomes = quarry?;
    match Postgres::start(&settings.dir.join("postgres"))? {
        None => println!("(PostgreSQL is not installed: /usr/lib/postgresql/*/bin/initdb)"),
        Some(server) => {
            let result = async {
                let admin = connect(&server.conninfo(), 1).await?;
                create_accounts(&admin[0], "accounts", settings.accounts).await?;
                let version: String = admin[0].query_one("SHOW server_version", &[]).await?.get(0);
                let clients = connect(&server.conninfo(), settings.clients).await?;
                workload(
                    &format!("PostgreSQL {version}"),
                    clients,
                    "accounts",
                    settings.accounts,
                    settings.seconds,
                )
                .await
            }
            .await;
            server.stop();
            outcomes.push(result?);
        }
    }
    println!("{}", crate::tpch::machine());
    println!(
        "Bank transfers: {} clients, {} accounts, {} s per engine; each transfer BEGIN \
         ISOLATION LEVEL REPEATABLE READ, two single-row UPDATEs, COMMIT; a 40001 or \
         40P01 is rolled back, not retried\n",
        settings.clients, settings.accounts, settings.seconds
    );
    println!("| engine | commits | 40001/40P01 | commits/s | conflict rate % | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let attempts = (o.commits + o.conflicts).max(1);
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            o.engine,
            o.commits,
            o.conflicts,
            o.commits as f64 / o.seconds,
            100.0 * o.conflicts as f64 / attempts as f64,
            o.p50_ms,
            o.p99_ms
        );
    }
    Ok(())
}
