//! Snapshot isolation under concurrency: random transfers between accounts in
//! BEGIN / UPDATE / UPDATE / COMMIT transactions, retried on 40001, while readers
//! sum the balances in their own transactions. Every read must see the initial
//! total, and the final balances must be exactly the committed transfers applied.

#[path = "support/node.rs"]
mod support;

#[path = "support/bank.rs"]
mod bank_workload;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{TestNode, sqlstate};

const ACCOUNTS: i64 = 20;
const INITIAL: i64 = 1_000;
const WRITERS: u64 = 8;
const TRANSFERS_PER_WRITER: u64 = 12;

#[tokio::test]
async fn concurrent_transfers_keep_the_total_and_lose_no_update() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir.path().join("data")).await;
    let setup = node.client().await;
    setup
        .batch_execute("CREATE TABLE accounts (id BIGINT NOT NULL, balance BIGINT NOT NULL)")
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

    let committed = Arc::new(Mutex::new(Vec::<(i64, i64, i64)>::new()));
    let conflicts = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = node.client().await;
        let (committed, conflicts) = (committed.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            // A small deterministic generator per writer.
            let mut state = writer
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = move || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 33) as i64
            };
            for _ in 0..TRANSFERS_PER_WRITER {
                let from = next() % ACCOUNTS;
                let to = (from + 1 + next() % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + next() % 50;
                loop {
                    let attempt = async {
                        client.batch_execute("BEGIN").await?;
                        bank_workload::transfer_and_commit(&client, from, to, amount).await
                    }
                    .await;
                    match attempt {
                        Ok(()) => {
                            committed.lock().expect("lock").push((from, to, amount));
                            break;
                        }
                        Err(e) if sqlstate(&e) == "40001" => {
                            *conflicts.lock().expect("lock") += 1;
                            let _ = client.batch_execute("ROLLBACK").await;
                        }
                        Err(e) => panic!("transfer failed: {e:?}"),
                    }
                }
            }
        }));
    }
    let reader_client = node.client().await;
    let reader = tokio::spawn(async move {
        let mut reads = 0;
        for _ in 0..40 {
            reader_client.batch_execute("BEGIN").await.expect("begin");
            let total: i64 = reader_client
                .query_one("SELECT CAST(sum(balance) AS BIGINT) FROM accounts", &[])
                .await
                .expect("sum")
                .get(0);
            reader_client.batch_execute("COMMIT").await.expect("commit");
            assert_eq!(
                total,
                ACCOUNTS * INITIAL,
                "a snapshot read saw a partial transfer"
            );
            reads += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reads
    });
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(240), task)
            .await
            .expect("writers finish in time")
            .expect("writer");
    }
    assert_eq!(reader.await.expect("reader"), 40);

    let mut expected = vec![INITIAL; ACCOUNTS as usize];
    for (from, to, amount) in committed.lock().expect("lock").iter() {
        expected[*from as usize] -= amount;
        expected[*to as usize] += amount;
    }
    let rows = setup
        .query("SELECT id, balance FROM accounts ORDER BY id", &[])
        .await
        .expect("final");
    let actual: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        rows.len(),
        ACCOUNTS as usize,
        "accounts were duplicated or lost"
    );
    assert_eq!(
        actual, expected,
        "final balances differ from the committed transfers"
    );
    assert_eq!(
        committed.lock().expect("lock").len() as u64,
        WRITERS * TRANSFERS_PER_WRITER
    );
    eprintln!("conflicts retried: {}", conflicts.lock().expect("lock"));
}

#[tokio::test]
async fn write_skew_is_allowed_by_snapshot_isolation_and_refused_by_serializable() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Files in stripes (none in the ingest buffer): a refused commit's
    // would be on disk.
    let node = TestNode::start_with(&dir.path().join("data"), &["--buffer-file-rows", "0"]).await;
    let setup = node.client().await;
    // Two doctors on call; each goes off call if the other is still on. Run
    // interleaved, snapshot isolation lets both go (write skew).
    setup
        .batch_execute(
            "CREATE TABLE alice (on_call BOOLEAN); CREATE TABLE bob (on_call BOOLEAN);
             INSERT INTO alice VALUES (true); INSERT INTO bob VALUES (true);",
        )
        .await
        .expect("setup");
    for (level, skew_allowed) in [("REPEATABLE READ", true), ("SERIALIZABLE", false)] {
        setup
            .batch_execute("UPDATE alice SET on_call = true; UPDATE bob SET on_call = true")
            .await
            .expect("reset");
        let a = node.client().await;
        let b = node.client().await;
        a.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}"))
            .await
            .expect("a begins");
        b.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}"))
            .await
            .expect("b begins");
        let on = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, bool>(0);
        assert!(on(a
            .query("SELECT on_call FROM bob", &[])
            .await
            .expect("a reads bob")));
        assert!(on(b
            .query("SELECT on_call FROM alice", &[])
            .await
            .expect("b reads alice")));
        a.batch_execute("UPDATE alice SET on_call = false")
            .await
            .expect("a updates");
        b.batch_execute("UPDATE bob SET on_call = false")
            .await
            .expect("b updates");
        a.batch_execute("COMMIT")
            .await
            .expect("first commit succeeds");
        let second = b.batch_execute("COMMIT").await;
        if skew_allowed {
            second.expect("snapshot isolation allows write skew");
        } else {
            assert_eq!(
                sqlstate(&second.expect_err("serializable refuses write skew")),
                "40001"
            );
        }
    }
    // The refused commit left no data file behind: every chunk on disk is one
    // some committed snapshot added.
    let committed: i64 = setup
        .query_one(
            "SELECT CAST(sum(files_added) AS BIGINT) FROM quarry_system.snapshots",
            &[],
        )
        .await
        .expect("files added")
        .get(0);
    let on_disk = std::fs::read_dir(node.data_dir.join("chunks"))
        .expect("chunks")
        .count() as i64;
    assert_eq!(on_disk, committed);
}

#[tokio::test]
async fn kill_9_during_commits_leaves_each_transaction_all_or_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut node = TestNode::start(&data).await;
    node.client()
        .await
        .batch_execute(
            "CREATE TABLE debits (tx BIGINT NOT NULL); CREATE TABLE credits (tx BIGINT NOT NULL)",
        )
        .await
        .expect("setup");
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let client = node.client().await;
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000i64 {
                let tx = w * 1_000_000 + i;
                let result = async {
                    client.batch_execute("BEGIN").await?;
                    client
                        .execute("INSERT INTO debits VALUES ($1)", &[&tx])
                        .await?;
                    client
                        .execute("INSERT INTO credits VALUES ($1)", &[&tx])
                        .await?;
                    client.batch_execute("COMMIT").await
                }
                .await;
                match result {
                    Ok(()) => acknowledged.lock().expect("lock").push(tx),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 10,
        "too few commits to test: {}",
        acknowledged.len()
    );

    let node = TestNode::start(&data).await;
    let client = node.client().await;
    let read = |table: &'static str| {
        let client = &client;
        async move {
            let rows = client
                .query(&format!("SELECT tx FROM {table} ORDER BY tx"), &[])
                .await
                .expect("read");
            rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
        }
    };
    let debits = read("debits").await;
    let credits = read("credits").await;
    assert_eq!(debits, credits, "a transaction was half applied");
    for tx in &acknowledged {
        assert!(
            debits.binary_search(tx).is_ok(),
            "acknowledged transaction {tx} lost"
        );
    }
}
