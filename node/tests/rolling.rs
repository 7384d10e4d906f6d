//! A rolling restart (docs/INSTALL.md, "Upgrade"): every node of a
//! three-node cluster is drained, stopped, started again and resumed in
//! turn while bank transfers and a streaming writer run, as an operator
//! upgrades a cluster one machine at a time.
//!
//! What a client sees is checked, not only the end state: no statement
//! fails other than with 40001 (retried), and the only refusals are those
//! that say the work did not run on the draining node (57P01 for a new
//! statement, 57P03 or a closed connection for a new or idle session; an
//! HTTP 503 or an unreachable node for an append), which the client takes
//! to another node. No acknowledged transfer or row is lost, and every
//! stripe is back to its full redundancy soon after its node returns.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;

    #[path = "bank.rs"]
    pub mod bank;
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::cluster::{id_of, node_rows, quarry_node, ready_status, start_cluster, wait_for};
use support::node::{bigints, sqlstate, try_http_request};
use tokio_postgres::{Client, NoTls};

const ACCOUNTS: i64 = 8;
const INITIAL: i64 = 1_000;
const BANK_WRITERS: usize = 2;
/// Rows per streaming append.
const BATCH: u64 = 20;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Statements that failed otherwise than the rolling restart allows.
    failures: Vec<String>,
    /// 40001, retried.
    conflicts: u64,
    /// Work refused by a draining or stopped node and taken elsewhere.
    rerouted: u64,
    /// Acknowledged transfers: from, to, amount.
    transfers: Vec<(i64, i64, i64)>,
    /// Sums of the balances read in one snapshot.
    reads: u64,
}

/// A client connected to one of `conns`, trying each in turn from `*next`
/// (a draining node refuses new sessions; a stopped one is not there).
async fn connect_any(conns: &[String], next: &mut usize) -> Client {
    let started = std::time::Instant::now();
    loop {
        let conn = &conns[*next % conns.len()];
        *next += 1;
        if let Ok((client, connection)) = tokio_postgres::connect(conn, NoTls).await {
            tokio::spawn(connection);
            return client;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no node took a client for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `e`, met by the first statement of a unit of work, says the work
/// did not run here and may go to another node: 57P01 (a draining node runs
/// no new statement) or a connection the node closed while it was idle.
fn not_run_here(e: &tokio_postgres::Error) -> bool {
    sqlstate(e) == "57P01" || e.as_db_error().is_none()
}

/// Transfers between accounts until `stop`, taking its session to another
/// node when its node drains.
async fn bank_writer(
    writer: u64,
    conns: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = writer as usize;
    let mut client = connect_any(&conns, &mut next).await;
    let mut state = writer
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut random = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        (state >> 33) as i64
    };
    while !stop.load(Ordering::SeqCst) {
        let from = random() % ACCOUNTS;
        let to = (from + 1 + random() % (ACCOUNTS - 1)) % ACCOUNTS;
        let amount = 1 + random() % 20;
        loop {
            if let Err(e) = client.batch_execute("BEGIN").await {
                if not_run_here(&e) {
                    seen.lock().expect("lock").rerouted += 1;
                    client = connect_any(&conns, &mut next).await;
                    continue;
                }
                seen.lock()
                    .expect("lock")
                    .failures
                    .push(format!("BEGIN: {e:?}"));
                return;
            }
            // The block is open: the node's drain waits for it to end.
            let block = support::bank::transfer_and_commit(&client, from, to, amount).await;
            match block {
                Ok(()) => {
                    seen.lock()
                        .expect("lock")
                        .transfers
                        .push((from, to, amount));
                    break;
                }
                Err(e) if sqlstate(&e) == "40001" => {
                    seen.lock().expect("lock").conflicts += 1;
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                Err(e) => {
                    seen.lock()
                        .expect("lock")
                        .failures
                        .push(format!("transfer {from}->{to}: {e:?}"));
                    return;
                }
            }
        }
    }
}

/// Sums the balances in single statements until `stop`: every sum is the
/// total (a snapshot never shows half a transfer).
async fn bank_reader(conns: Vec<String>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut next = 2;
    let mut client = connect_any(&conns, &mut next).await;
    while !stop.load(Ordering::SeqCst) {
        match client
            .query_one("SELECT CAST(sum(balance) AS BIGINT) FROM accounts", &[])
            .await
        {
            Ok(row) => {
                let total: i64 = row.get(0);
                let mut seen = seen.lock().expect("lock");
                seen.reads += 1;
                if total != ACCOUNTS * INITIAL {
                    seen.failures.push(format!("a read saw a total of {total}"));
                    return;
                }
            }
            Err(e) if not_run_here(&e) => {
                seen.lock().expect("lock").rerouted += 1;
                client = connect_any(&conns, &mut next).await;
            }
            Err(e) => {
                seen.lock()
                    .expect("lock")
                    .failures
                    .push(format!("read: {e:?}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends batches of rows to channel `w` of table `clicks` until `stop`,
/// each at its offset, through whichever node answers; returns the offset
/// reached (every row below it acknowledged).
async fn stream_writer(apis: Vec<String>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) -> u64 {
    let mut offset = 0u64;
    let mut next = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let body: String = (offset..offset + BATCH)
            .map(|i| format!("{{\"id\": {i}, \"page\": \"/p{i}\"}}\n"))
            .collect();
        let url = format!(
            "{}/v1/tables/public.clicks/channels/w/rows?offset={offset}",
            apis[next % apis.len()]
        );
        match try_http_request("POST", &url, "application/x-ndjson", body.as_bytes()).await {
            // Written; or written before (a retry after a lost answer),
            // which the offset recognises.
            Ok((200 | 409, answer)) => {
                let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
                offset = answer["next_offset"].as_u64().expect("next_offset");
            }
            // Draining (503) or not there: the same offset elsewhere.
            Ok((503, _)) | Err(_) => {
                seen.lock().expect("lock").rerouted += 1;
                next += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok((status, answer)) => {
                seen.lock()
                    .expect("lock")
                    .failures
                    .push(format!("append at {offset}: {status} {answer}"));
                break;
            }
        }
    }
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_rolled_in_turn_under_load_fails_no_statement_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = start_cluster(dir.path(), 3, &[]).await;
    let setup = nodes[0].client().await;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id BIGINT NOT NULL, balance BIGINT NOT NULL); \
             CREATE TABLE clicks (id BIGINT, page TEXT)",
        )
        .await
        .expect("create");
    let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, {INITIAL})")).collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO accounts VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("accounts");
    drop(setup);

    let conns: Vec<String> = nodes.iter().map(|n| n.conn_string()).collect();
    let apis: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.http_port))
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bank = Vec::new();
    for writer in 0..BANK_WRITERS as u64 {
        bank.push(tokio::spawn(bank_writer(
            writer,
            conns.clone(),
            seen.clone(),
            stop.clone(),
        )));
    }
    bank.push(tokio::spawn(bank_reader(
        conns.clone(),
        seen.clone(),
        stop.clone(),
    )));
    let stream = tokio::spawn(stream_writer(apis, seen.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for i in 0..nodes.len() {
            ids.push(id_of(&nodes, i).await);
        }
        ids
    };
    for i in 0..nodes.len() {
        let id = ids[i].to_string();
        let via = format!("127.0.0.1:{}", nodes[(i + 1) % nodes.len()].pg_port);
        // Drain, stop (SIGTERM, as systemctl stop), start, resume.
        let said = tokio::task::spawn_blocking({
            let (id, via) = (id.clone(), via.clone());
            move || quarry_node(&["drain", &id, "--host", &via, "--deadline-secs", "30"])
        })
        .await
        .expect("drain");
        assert!(said.contains("drained"), "{said}");
        let status = tokio::task::block_in_place(|| nodes[i].terminate());
        assert!(status.success(), "a drained node stops cleanly: {status}");
        // Down for a moment, as a binary is replaced.
        tokio::time::sleep(Duration::from_secs(1)).await;
        nodes[i].restart_unready();
        wait_for(
            Duration::from_secs(60),
            "the node back, in maintenance",
            || async { ready_status(&nodes[i]).await == 503 },
        )
        .await;
        let said = tokio::task::spawn_blocking({
            let (id, via) = (id.clone(), via.clone());
            move || quarry_node(&["resume", &id, "--host", &via])
        })
        .await
        .expect("resume");
        assert!(said.contains("takes clients again"), "{said}");
        nodes[i].wait_ready().await;
        let observer = &nodes[(i + 1) % nodes.len()];
        wait_for(Duration::from_secs(60), "every node alive", || async {
            let rows = node_rows(observer).await;
            rows.len() == 3
                && rows.iter().all(|r| r.state == "alive" && !r.maintenance)
                && rows.iter().any(|r| r.raft_role == "leader")
        })
        .await;
        // Stripes written while it was away regain their full redundancy.
        wait_for(Duration::from_secs(60), "every stripe healthy", || async {
            let Ok((client, connection)) =
                tokio_postgres::connect(&observer.conn_string(), NoTls).await
            else {
                return false;
            };
            tokio::spawn(connection);
            client
                .query_one(
                    "select count(*)::bigint from quarry_system.stripes where health <> 'healthy'",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 0)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    stop.store(true, Ordering::SeqCst);
    for task in bank {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("bank clients stop")
            .expect("bank client");
    }
    let acknowledged = tokio::time::timeout(Duration::from_secs(60), stream)
        .await
        .expect("the writer stops")
        .expect("writer");

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(seen.failures.is_empty(), "failed: {:#?}", seen.failures);
    assert!(
        seen.transfers.len() > 10 && seen.reads > 10 && acknowledged > 10 * BATCH,
        "the load ran throughout: {} transfers, {} reads, {acknowledged} rows",
        seen.transfers.len(),
        seen.reads
    );
    assert!(
        seen.rerouted > 0,
        "some work was refused by a draining node"
    );
    eprintln!(
        "{} transfers ({} conflicts retried), {} reads, {acknowledged} streamed rows, \
         {} units of work taken to another node",
        seen.transfers.len(),
        seen.conflicts,
        seen.reads,
        seen.rerouted
    );
    let mut expected = vec![INITIAL; ACCOUNTS as usize];
    for (from, to, amount) in &seen.transfers {
        expected[*from as usize] -= amount;
        expected[*to as usize] += amount;
    }
    for node in &nodes {
        let client = node.client().await;
        let balances: Vec<i64> = client
            .query("SELECT balance FROM accounts ORDER BY id", &[])
            .await
            .expect("balances")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(balances, expected, "every acknowledged transfer, once");
        let acknowledged = acknowledged as i64;
        assert_eq!(
            bigints(
                &client,
                "SELECT count(*), count(DISTINCT id), coalesce(max(id), -1) FROM clicks"
            )
            .await,
            [acknowledged, acknowledged, acknowledged - 1],
            "every acknowledged streamed row, once"
        );
    }
}
