//! One test run: start a cluster, run a workload's clients against every node
//! while the nemesis injects faults, heal, take the final read, write the
//! history and judge it.
//!
//! Outcome of a client operation (Jepsen's convention): `ok` it happened;
//! `fail` it certainly did not (SQLSTATE 40001, which Quarry returns only for
//! a statement or transaction that wrote nothing; or a transfer refused for
//! lack of funds); `info` anything else (timeouts, lost connections, other
//! errors): it may have happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::cluster::{Cluster, connect};
use crate::history::{Op, OpType};
use crate::nemesis::{Nemesis, NemesisLog};

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Unique inserts, one final read.
    Set,
    /// Transfers between accounts, snapshot reads.
    Bank,
    /// Reads, writes and compare-and-sets of single rows, checked for
    /// linearizability.
    Register,
    /// Transactions appending to and reading lists (Elle's list-append).
    Append,
    /// Writers of streaming API channels through random nodes, with
    /// offsets and retries; reads of every channel.
    Stream,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "set" => Ok(Workload::Set),
            "bank" => Ok(Workload::Bank),
            "register" => Ok(Workload::Register),
            "append" => Ok(Workload::Append),
            "stream" => Ok(Workload::Stream),
            other => Err(format!(
                "unknown workload {other:?} (set, bank, register, append, stream)"
            )),
        }
    }
}

/// Bank accounts and what each starts with.
const ACCOUNTS: i64 = 5;
const START_BALANCE: i64 = 100;
/// Registers (rows) of the register workload, each starting at 0.
const REGISTERS: i64 = 3;
/// Lists (rows) of the append workload, each starting empty.
const LISTS: i64 = 5;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `quarry` binary.
    pub quarry: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// The workload.
    pub workload: Workload,
    /// Faults to inject (none: a run without faults).
    pub nemeses: Vec<Nemesis>,
    /// How long clients run.
    pub time: Duration,
    /// Time between the starts of two faults.
    pub interval: Duration,
    /// Concurrent clients (client i talks to node i mod n).
    pub clients: usize,
    /// Directory for the history, logs and results (created; must not exist).
    pub dir: PathBuf,
    /// Deadline of one client operation.
    pub op_timeout: Duration,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// No anomaly.
    pub valid: bool,
    /// The results summary (also in `results.json`).
    pub summary: Value,
}

/// The history being recorded, shared by the clients.
#[derive(Clone)]
struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    start: Instant,
}

impl Recorder {
    fn record(&self, process: u64, op_type: OpType, f: &str, value: Value) {
        let op = Op {
            process,
            op_type,
            f: f.to_owned(),
            value,
            time: self.start.elapsed().as_nanos() as u64,
        };
        self.ops.lock().expect("history lock").push(op);
    }
}

/// How an operation ended, before it is recorded.
enum Completion {
    Ok(Value),
    Fail(Value),
    Info(Value),
}

fn classify(error: &anyhow::Error) -> &'static str {
    match error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
    {
        Some(code) if code.code() == "40001" => "fail",
        _ => "info",
    }
}

/// Runs one test.
///
/// # Errors
/// If the cluster cannot be started or the directory written; anomalies are
/// not errors but an invalid [`Outcome`].
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    if settings.dir.exists() {
        bail!(
            "{} exists; each run needs a new directory",
            settings.dir.display()
        );
    }
    std::fs::create_dir_all(&settings.dir)?;
    let flags = [
        "--down-after-ms",
        "1500",
        "--target-partitions",
        "1",
        "--shutdown-grace-secs",
        "2",
        // The corrupt nemesis damages a chunk every few intervals; the
        // scrubber must mend it before another chunk of its stripe is hit.
        "--scrub-interval-secs",
        "5",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut cluster =
        Cluster::start(&settings.quarry, settings.nodes, &settings.dir, flags).await?;
    setup(&cluster, settings.workload).await?;

    let start = Instant::now();
    let recorder = Recorder {
        ops: Arc::new(Mutex::new(Vec::new())),
        start,
    };
    let until = start + settings.time;
    let next_value = Arc::new(AtomicI64::new(0));
    let mut clients = Vec::new();
    let endpoints: Vec<crate::stream::Endpoint> = cluster
        .nodes
        .iter()
        .map(|n| crate::stream::Endpoint {
            pg: n.pg,
            http: std::net::SocketAddr::new(n.pg.ip(), crate::cluster::HTTP_PORT),
        })
        .collect();
    for process in 0..settings.clients {
        if settings.workload == Workload::Stream {
            let (recorder, endpoints) = (recorder.clone(), endpoints.clone());
            let ca = settings.dir.join("certs");
            let timeout = settings.op_timeout;
            clients.push(tokio::spawn(async move {
                let record = move |process, op_type, f: &str, value| {
                    recorder.record(process, op_type, f, value)
                };
                let ca = ca.join("ca.crt");
                crate::stream::client_loop(process as u64, endpoints, &ca, timeout, until, &record)
                    .await
                    .expect("the cluster's CA certificate reads");
            }));
            continue;
        }
        let pg = cluster.nodes[process % settings.nodes].pg;
        let recorder = recorder.clone();
        let next_value = next_value.clone();
        let (workload, timeout) = (settings.workload, settings.op_timeout);
        clients.push(tokio::spawn(async move {
            client_loop(
                process as u64,
                pg,
                workload,
                timeout,
                until,
                recorder,
                next_value,
            )
            .await
        }));
    }
    let mut nemesis_log = NemesisLog::create(&settings.dir.join("nemesis.jsonl"), start)?;
    let nemesis = crate::nemesis::run(
        &mut cluster,
        &settings.nemeses,
        settings.interval,
        until,
        &mut nemesis_log,
    )
    .await;
    for client in clients {
        client.await.context("a client task panicked")?;
    }
    nemesis?;
    cluster.heal_all()?;
    for node in &mut cluster.nodes {
        node.wait_ready(Duration::from_secs(90)).await?;
    }
    final_reads(&cluster, settings, &recorder).await;

    let history = recorder.ops.lock().expect("history lock").clone();
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(settings.dir.join("history.jsonl"))?);
    for op in &history {
        writeln!(out, "{}", serde_json::to_string(op)?)?;
    }
    out.flush()?;
    let (valid, checked) = judge(settings.workload, &history);
    let summary = json!({
        "workload": format!("{:?}", settings.workload).to_lowercase(),
        "nemeses": settings.nemeses.iter().map(|n| format!("{n:?}").to_lowercase()).collect::<Vec<_>>(),
        "nodes": settings.nodes,
        "clients": settings.clients,
        "seconds": settings.time.as_secs_f64(),
        "ops": counts(&history),
        "valid": valid,
        "checker": checked,
    });
    std::fs::write(
        settings.dir.join("results.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(Outcome { valid, summary })
}

/// Runs `workload`'s checker over `history`: whether it is valid, and the
/// checker's findings as JSON.
pub fn judge(workload: Workload, history: &[Op]) -> (bool, Value) {
    match workload {
        Workload::Set => {
            let report = crate::set::check(history);
            (
                report.valid(),
                json!({
                    "acknowledged": report.acknowledged,
                    "lost": report.lost,
                    "unexpected": report.unexpected,
                    "recovered": report.recovered.len(),
                    "final_read": report.read_found,
                }),
            )
        }
        Workload::Append => {
            let report = crate::append::check(history);
            let anomalies: BTreeMap<String, &Vec<String>> = report
                .anomalies
                .iter()
                .map(|(a, examples)| (format!("{a:?}"), examples))
                .collect();
            (
                report.valid_for_snapshot_isolation(),
                json!({
                    "transactions": report.transactions,
                    "counts": report
                        .counts
                        .iter()
                        .map(|(a, n)| (format!("{a:?}"), *n))
                        .collect::<BTreeMap<_, _>>(),
                    "anomalies": anomalies,
                    "forbidden_by_snapshot_isolation": report
                        .anomalies
                        .keys()
                        .filter(|a| a.forbidden_by_snapshot_isolation())
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>(),
                }),
            )
        }
        Workload::Stream => {
            let report = crate::stream::check(history);
            (
                report.valid(),
                json!({
                    "appends_acknowledged": report.acknowledged,
                    "rows_acknowledged": report.rows_acknowledged,
                    "appends_unknown": report.unknown,
                    "reads": report.reads,
                    "anomalies": report.anomalies,
                }),
            )
        }
        Workload::Register => {
            let report = crate::register::check(history, Some(0));
            (
                report.valid(),
                json!({
                    "keys": report.keys,
                    "operations": report.operations,
                    "violations": report.violations,
                }),
            )
        }
        Workload::Bank => {
            let report = crate::bank::check(history, ACCOUNTS as usize, ACCOUNTS * START_BALANCE);
            (
                report.valid(),
                json!({
                    "reads": report.reads,
                    "transfers_ok": report.transfers_ok,
                    "bad_reads": report.bad_reads.iter().take(20).map(|b| json!({
                        "index": b.index, "problem": b.problem, "balances": b.balances,
                    })).collect::<Vec<_>>(),
                }),
            )
        }
    }
}

/// Completed operations by function and type.
fn counts(history: &[Op]) -> Value {
    let mut by_f: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    for op in history {
        let kind = match op.op_type {
            OpType::Invoke => continue,
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        };
        *by_f
            .entry(op.f.clone())
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
    json!(by_f)
}

async fn setup(cluster: &Cluster, workload: Workload) -> anyhow::Result<()> {
    let client = connect(cluster.nodes[0].pg, Duration::from_secs(10)).await?;
    let ddl = match workload {
        Workload::Set => "create table jepsen_set (value bigint not null)".to_owned(),
        Workload::Stream => crate::stream::DDL.to_owned(),
        Workload::Bank => format!(
            "create table jepsen_bank (id bigint not null, balance bigint not null); \
             insert into jepsen_bank select value, {START_BALANCE} from generate_series(0, {})",
            ACCOUNTS - 1
        ),
        // One statement per row: each row its own data file, so writes to
        // different rows do not conflict.
        Workload::Append => {
            let mut ddl =
                "create table jepsen_append (k bigint not null, v text not null);".to_owned();
            for k in 0..LISTS {
                ddl.push_str(&format!("insert into jepsen_append values ({k}, '');"));
            }
            ddl
        }
        Workload::Register => {
            let mut ddl =
                "create table jepsen_register (k bigint not null, v bigint not null);".to_owned();
            for k in 0..REGISTERS {
                ddl.push_str(&format!("insert into jepsen_register values ({k}, 0);"));
            }
            ddl
        }
    };
    client
        .batch_execute(&ddl)
        .await
        .context("setting up the workload's table")?;
    Ok(())
}

async fn client_loop(
    process: u64,
    pg: std::net::SocketAddr,
    workload: Workload,
    timeout: Duration,
    until: Instant,
    recorder: Recorder,
    next_value: Arc<AtomicI64>,
) {
    let mut client: Option<Client> = None;
    while Instant::now() < until {
        if client.is_none() {
            client = connect(pg, timeout).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let c = client.as_ref().expect("connected above");
        let (f, value) = next_op(workload, &next_value);
        recorder.record(process, OpType::Invoke, f, value.clone());
        let completion = match tokio::time::timeout(timeout, perform(c, workload, f, &value)).await
        {
            Ok(completion) => completion,
            Err(_) => Completion::Info(value.clone()),
        };
        let keep = matches!(completion, Completion::Ok(_));
        match completion {
            Completion::Ok(v) => recorder.record(process, OpType::Ok, f, v),
            Completion::Fail(v) => recorder.record(process, OpType::Fail, f, v),
            Completion::Info(v) => recorder.record(process, OpType::Info, f, v),
        }
        if !keep {
            // A failed transaction may leave the session in an aborted block,
            // and a timed-out one may still run: start afresh.
            client = None;
        }
    }
}

fn next_op(workload: Workload, next_value: &AtomicI64) -> (&'static str, Value) {
    match workload {
        Workload::Stream => unreachable!("the stream workload runs its own clients"),
        Workload::Set => ("add", json!(next_value.fetch_add(1, Ordering::Relaxed))),
        Workload::Bank => {
            let mut rng = rand::rng();
            if rng.random_bool(0.3) {
                ("read", Value::Null)
            } else {
                let from = rng.random_range(0..ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                (
                    "transfer",
                    json!({"from": from, "to": to, "amount": rng.random_range(1..=10)}),
                )
            }
        }
        Workload::Append => {
            let mut rng = rand::rng();
            let micros: Vec<Value> = (0..rng.random_range(1..=3))
                .map(|_| {
                    let k = rng.random_range(0..LISTS);
                    if rng.random_bool(0.5) {
                        json!(["append", k, next_value.fetch_add(1, Ordering::Relaxed)])
                    } else {
                        json!(["r", k, null])
                    }
                })
                .collect();
            ("txn", Value::Array(micros))
        }
        Workload::Register => {
            let mut rng = rand::rng();
            let k = rng.random_range(0..REGISTERS);
            match rng.random_range(0..4) {
                0 | 1 => ("read", json!([k, null])),
                2 => ("write", json!([k, rng.random_range(0..5)])),
                _ => (
                    "cas",
                    json!([k, [rng.random_range(0..5), rng.random_range(0..5)]]),
                ),
            }
        }
    }
}

async fn perform(client: &Client, workload: Workload, f: &str, value: &Value) -> Completion {
    let result = match (workload, f) {
        (Workload::Set, "add") => add(client, value).await,
        (Workload::Bank, "transfer") => transfer(client, value).await,
        (Workload::Bank, "read") => read_balances(client).await,
        (Workload::Append, "txn") => append_txn(client, value).await,
        (Workload::Register, "read") => read_register(client, value).await,
        (Workload::Register, "write") => write_register(client, value).await,
        (Workload::Register, "cas") => cas_register(client, value).await,
        _ => unreachable!("next_op makes only these"),
    };
    match result {
        Ok(Ok(v)) => Completion::Ok(v),
        Ok(Err(v)) => Completion::Fail(v),
        // A read that failed changed nothing.
        Err(_) if f == "read" => Completion::Fail(Value::Null),
        Err(e) if classify(&e) == "fail" => Completion::Fail(value.clone()),
        Err(_) => Completion::Info(value.clone()),
    }
}

/// `Ok(Ok(v))` done, `Ok(Err(v))` refused without effect, `Err` error.
type Attempt = anyhow::Result<Result<Value, Value>>;

async fn add(client: &Client, value: &Value) -> Attempt {
    let v = value.as_i64().expect("set values are integers");
    client
        .execute("insert into jepsen_set values ($1)", &[&v])
        .await?;
    Ok(Ok(value.clone()))
}

async fn transfer(client: &Client, value: &Value) -> Attempt {
    let from = value["from"].as_i64().expect("from");
    let to = value["to"].as_i64().expect("to");
    let amount = value["amount"].as_i64().expect("amount");
    client.batch_execute("begin").await?;
    let balance: i64 = client
        .query_one("select balance from jepsen_bank where id = $1", &[&from])
        .await?
        .get(0);
    if balance < amount {
        client.batch_execute("rollback").await?;
        return Ok(Err(
            json!({"from": from, "to": to, "amount": amount, "refused": "insufficient funds"}),
        ));
    }
    client
        .execute(
            "update jepsen_bank set balance = balance - $2 where id = $1",
            &[&from, &amount],
        )
        .await?;
    client
        .execute(
            "update jepsen_bank set balance = balance + $2 where id = $1",
            &[&to, &amount],
        )
        .await?;
    client.batch_execute("commit").await?;
    Ok(Ok(value.clone()))
}

/// Runs a list-append transaction; returns it with the reads filled in.
/// Lists are stored as text, values separated by spaces.
async fn append_txn(client: &Client, value: &Value) -> Attempt {
    let mut done = Vec::new();
    client.batch_execute("begin").await?;
    for micro in value.as_array().expect("a transaction is a list") {
        let k = micro[1].as_i64().expect("key");
        if micro[0] == "append" {
            let v = micro[2].as_i64().expect("value");
            client
                .execute(
                    "update jepsen_append set v = v || $2 where k = $1",
                    &[&k, &format!(" {v}")],
                )
                .await?;
            done.push(micro.clone());
        } else {
            let list = read_list(client, k).await?;
            done.push(json!(["r", k, list]));
        }
    }
    client.batch_execute("commit").await?;
    Ok(Ok(Value::Array(done)))
}

async fn read_list(client: &Client, k: i64) -> anyhow::Result<Vec<i64>> {
    let row = client
        .query_opt("select v from jepsen_append where k = $1", &[&k])
        .await?;
    let text: String = row.map(|r| r.get(0)).unwrap_or_default();
    text.split_whitespace()
        .map(|v| v.parse().context("a list holds integers"))
        .collect()
}

async fn read_register(client: &Client, value: &Value) -> Attempt {
    let k = value[0].as_i64().expect("key");
    let row = client
        .query_opt("select v from jepsen_register where k = $1", &[&k])
        .await?;
    Ok(Ok(json!([k, row.map(|r| r.get::<_, i64>(0))])))
}

async fn write_register(client: &Client, value: &Value) -> Attempt {
    let (k, v) = (
        value[0].as_i64().expect("key"),
        value[1].as_i64().expect("value"),
    );
    client
        .execute("update jepsen_register set v = $2 where k = $1", &[&k, &v])
        .await?;
    Ok(Ok(value.clone()))
}

async fn cas_register(client: &Client, value: &Value) -> Attempt {
    let k = value[0].as_i64().expect("key");
    let (old, new) = (
        value[1][0].as_i64().expect("old"),
        value[1][1].as_i64().expect("new"),
    );
    let changed = client
        .execute(
            "update jepsen_register set v = $3 where k = $1 and v = $2",
            &[&k, &old, &new],
        )
        .await?;
    // No row changed: the register did not hold `old`; nothing happened.
    Ok(if changed == 1 {
        Ok(value.clone())
    } else {
        Err(value.clone())
    })
}

async fn read_balances(client: &Client) -> Attempt {
    let rows = client
        .query("select id, balance from jepsen_bank", &[])
        .await?;
    let balances: serde_json::Map<String, Value> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0).to_string(), json!(r.get::<_, i64>(1))))
        .collect();
    Ok(Ok(Value::Object(balances)))
}

/// After healing: a read through every node (retried for up to two minutes),
/// recorded as one more process.
async fn final_reads(cluster: &Cluster, settings: &Settings, recorder: &Recorder) {
    if settings.workload == Workload::Register {
        // Every read is judged as it happened; there is no final state.
        return;
    }
    let f = if settings.workload == Workload::Append {
        "txn"
    } else {
        "read"
    };
    let process = settings.clients as u64;
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            recorder.record(process, OpType::Invoke, f, Value::Null);
            let result = async {
                let client = connect(node.pg, Duration::from_secs(10)).await?;
                match settings.workload {
                    Workload::Set => {
                        let rows = client.query("select value from jepsen_set", &[]).await?;
                        Ok::<_, anyhow::Error>(json!(
                            rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
                        ))
                    }
                    Workload::Bank => match read_balances(&client).await? {
                        Ok(v) | Err(v) => Ok(v),
                    },
                    Workload::Append => {
                        let mut reads = Vec::new();
                        for k in 0..LISTS {
                            reads.push(json!(["r", k, read_list(&client, k).await?]));
                        }
                        Ok(Value::Array(reads))
                    }
                    Workload::Stream => crate::stream::read(&client).await,
                    Workload::Register => unreachable!("returned above"),
                }
            };
            match tokio::time::timeout(Duration::from_secs(20), result).await {
                Ok(Ok(v)) => {
                    recorder.record(process, OpType::Ok, f, v);
                    break;
                }
                _ => {
                    recorder.record(process, OpType::Fail, f, Value::Null);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The `quarry` binary next to `exe` (cargo builds both into one directory).
pub fn quarry_beside(exe: &Path) -> PathBuf {
    exe.with_file_name("quarry")
}
