//! Change data capture from PostgreSQL against a real PostgreSQL server
//! (Debian's `postgresql`, started in a temporary directory): the pgoutput
//! messages a logical replication slot gives decode into Quarry's
//! messages.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "cluster.rs"]
    pub mod cluster;

    #[path = "postgres.rs"]
    pub mod postgres;
}

use bytes::Bytes;
use quarry_exec::pgoutput::{Message, Value, decode, parse_lsn};
use support::node::texts;
use support::postgres::PgServer;

fn text(value: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(value.as_bytes()))
}

#[tokio::test]
async fn pgoutput_messages_of_a_real_server_decode() {
    let server = PgServer::start(&["wal_level=logical"]);
    let client = server.client("postgres").await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, big text);
             CREATE TABLE other (id bigint);
             CREATE PUBLICATION quarry_pub FOR TABLE items;",
        )
        .await
        .expect("tables and publication");
    // A slot is created outside a transaction that wrote.
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('quarry_slot', 'pgoutput')")
        .await
        .expect("slot");
    // `big` is stored out of line (TOAST): 12,800 hex digits.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO items VALUES
               (1, 'a', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)),
               (2, NULL, 'small');
             INSERT INTO other VALUES (1);
             COMMIT;",
        )
        .await
        .expect("inserts");
    // Each in a transaction of its own.
    for change in [
        "UPDATE items SET name = 'b' WHERE id = 1",
        "UPDATE items SET id = 3 WHERE id = 2",
        "DELETE FROM items WHERE id = 1",
        "TRUNCATE items",
    ] {
        client.batch_execute(change).await.expect(change);
    }
    let rows = client
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('quarry_slot', NULL, NULL,
               'proto_version', '1', 'publication_names', 'quarry_pub')",
            &[],
        )
        .await
        .expect("changes of the slot");
    let messages: Vec<Message> = rows
        .iter()
        .map(|row| {
            parse_lsn(row.get::<_, &str>(0)).expect("an LSN");
            decode(row.get::<_, &[u8]>(1), false).expect("decodes")
        })
        .collect();

    // Five transactions, each Begin ... Commit; `other` is not published.
    let begins = messages
        .iter()
        .filter(|m| matches!(m, Message::Begin { .. }))
        .count();
    let commits: Vec<(u64, u64)> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => Some((*commit_lsn, *end_lsn)),
            _ => None,
        })
        .collect();
    assert_eq!((begins, commits.len()), (5, 5));
    assert!(
        commits.windows(2).all(|w| w[0].1 <= w[1].0) && commits.iter().all(|(c, e)| c < e),
        "commit LSNs increase: {commits:?}"
    );
    let relation = messages
        .iter()
        .find_map(|m| match m {
            Message::Relation(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a Relation message");
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "items")
    );
    assert_eq!(relation.replica_identity, b'd');
    let columns: Vec<(&str, bool, u32)> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.key, c.type_oid))
        .collect();
    assert_eq!(
        columns,
        [("id", true, 20), ("name", false, 25), ("big", false, 25)]
    );

    let changes: Vec<&Message> = messages
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. }
            )
        })
        .collect();
    let Message::Insert { relation: r, new } = changes[0] else {
        panic!("an Insert first: {:?}", changes[0]);
    };
    assert_eq!(*r, relation.oid);
    assert_eq!(new[..2], [text("1"), text("a")]);
    assert!(matches!(&new[2], Value::Text(big) if big.len() == 12_800));
    assert_eq!(
        changes[1],
        &Message::Insert {
            relation: relation.oid,
            new: vec![text("2"), Value::Null, text("small")],
        }
    );
    // The TOASTed value an UPDATE left alone is not sent.
    assert_eq!(
        changes[2],
        &Message::Update {
            relation: relation.oid,
            old: None,
            new: vec![text("1"), text("b"), Value::UnchangedToast],
        }
    );
    // A changed key sends the old key.
    assert_eq!(
        changes[3],
        &Message::Update {
            relation: relation.oid,
            old: Some(vec![text("2"), Value::Null, Value::Null]),
            new: vec![text("3"), Value::Null, text("small")],
        }
    );
    assert_eq!(
        changes[4],
        &Message::Delete {
            relation: relation.oid,
            old: vec![text("1"), Value::Null, Value::Null],
        }
    );
    assert_eq!(
        changes[5],
        &Message::Truncate {
            relations: vec![relation.oid],
            cascade: false,
            restart_identity: false,
        }
    );
    assert_eq!(changes.len(), 6);
}

/// Waits (up to a minute) until `sql` gives the same rows on the source
/// and on Quarry; panics with both otherwise.
async fn converge(source: &tokio_postgres::Client, quarry: &tokio_postgres::Client, sql: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let expected = texts(source, sql).await;
        let found = match quarry.simple_query(sql).await {
            Ok(_) => texts(quarry, sql).await,
            Err(e) => vec![format!("error: {e:?}")],
        };
        if expected == found {
            return;
        }
        if std::time::Instant::now() > deadline {
            let show = |rows: &[String]| rows.iter().take(5).cloned().collect::<Vec<_>>();
            panic!(
                "{sql}: the source has {} rows ({:?}...), Quarry {} ({:?}...)",
                expected.len(),
                show(&expected),
                found.len(),
                show(&found)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_subscription_copies_the_tables_then_applies_each_transaction() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    source
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2),
                 opened date, note text);
             CREATE TABLE ledger (id bigint PRIMARY KEY, account bigint, amount numeric(12,2));
             CREATE TABLE unpublished (id bigint);
             CREATE TABLE tags (account bigint, tag text);
             ALTER TABLE tags REPLICA IDENTITY FULL;
             INSERT INTO accounts SELECT i, 'owner ' || i, i * 10, DATE '2026-01-01' + i, NULL
               FROM generate_series(1, 1000) i;
             CREATE PUBLICATION quarry_pub FOR TABLE accounts, ledger, tags;",
        )
        .await
        .expect("source tables");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    quarry
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub
               CONNECTION 'host=127.0.0.1 port={} user=postgres password=not-shown dbname=postgres'
               PUBLICATION quarry_pub",
            server.port
        ))
        .await
        .expect("subscription");
    let accounts =
        "SELECT id, owner, balance, opened, md5(coalesce(note, '-')) FROM accounts ORDER BY id";
    let ledger = "SELECT id, account, amount FROM ledger ORDER BY id";
    converge(&source, &quarry, accounts).await;

    // A transaction over two tables; a delete; a key change; a value
    // stored out of line (TOAST), then an update that leaves it as it was.
    for change in [
        "BEGIN; UPDATE accounts SET balance = balance - 5 WHERE id = 1;
         INSERT INTO ledger VALUES (1, 1, -5), (2, 1, 0.25); COMMIT",
        "DELETE FROM accounts WHERE id = 2",
        "UPDATE accounts SET id = 2000 WHERE id = 3",
        "UPDATE accounts SET note = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)
           WHERE id = 4",
        "UPDATE accounts SET balance = 1 WHERE id = 4",
        "INSERT INTO unpublished VALUES (1)",
        "BEGIN; INSERT INTO accounts VALUES (3001, 'new', 0, NULL, 'tab\there'); DELETE FROM ledger WHERE id = 2; COMMIT",
    ] {
        source.batch_execute(change).await.expect(change);
    }
    converge(&source, &quarry, accounts).await;
    converge(&source, &quarry, ledger).await;
    // A table without a key (REPLICA IDENTITY FULL): identical rows in one
    // transaction stay two; a delete of a row written in the same
    // transaction removes one.
    source
        .batch_execute(
            "BEGIN; INSERT INTO tags VALUES (1, 'a'), (1, 'a'), (2, 'b'), (3, 'c');
             DELETE FROM tags WHERE account = 3; UPDATE tags SET tag = 'B' WHERE account = 2;
             COMMIT",
        )
        .await
        .expect("tags");
    converge(
        &source,
        &quarry,
        "SELECT account, tag FROM tags ORDER BY account, tag",
    )
    .await;

    // The subscription's state; the slot's confirmed position is never
    // past what Quarry committed, and follows it also when only an
    // unpublished table changes.
    let confirmed = || async {
        let row = source
            .query_one(
                "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text FROM pg_replication_slots",
                &[],
            )
            .await
            .expect("slot");
        (
            quarry_exec::pgoutput::parse_lsn(row.get(0)).expect("lsn"),
            quarry_exec::pgoutput::parse_lsn(row.get(1)).expect("lsn"),
        )
    };
    let shown = texts(
        &quarry,
        "SELECT state, tables, applied_lsn, rows_applied > 1000, last_error,
                connection LIKE '%password%'
         FROM quarry_system.subscriptions",
    )
    .await;
    let fields: Vec<&str> = shown[0].split('|').collect();
    assert_eq!(
        (fields[0], fields[1], fields[3], fields[4], fields[5]),
        ("streaming", "3", "t", "NULL", "f"),
        "{shown:?}"
    );
    let applied = parse_lsn(fields[2]).expect("applied_lsn");
    let (flushed, _) = confirmed().await;
    assert!(
        flushed <= applied,
        "confirmed {flushed} is past applied {applied}"
    );
    for i in 0..20 {
        source
            .batch_execute(&format!("INSERT INTO unpublished VALUES ({i})"))
            .await
            .expect("unpublished");
    }
    let (_, wal_end) = confirmed().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (flushed, _) = confirmed().await;
        if flushed >= wal_end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stays at {flushed}, the source's WAL is at {wal_end}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // A column added on the source appears; rows from before it read its
    // value as the source has it (NULL without a default).
    for change in [
        "ALTER TABLE accounts ADD COLUMN tier integer",
        "UPDATE accounts SET tier = 7 WHERE id = 5",
        "INSERT INTO accounts VALUES (3002, 'tiered', 1, NULL, NULL, 3)",
    ] {
        source.batch_execute(change).await.expect(change);
    }
    converge(
        &source,
        &quarry,
        "SELECT id, owner, balance, tier FROM accounts WHERE id IN (5, 6, 3002) ORDER BY id",
    )
    .await;

    source
        .batch_execute("TRUNCATE ledger")
        .await
        .expect("truncate");
    converge(&source, &quarry, ledger).await;

    // DROP SUBSCRIPTION drops the slot on the source.
    quarry
        .batch_execute("DROP SUBSCRIPTION sub")
        .await
        .expect("drop");
    let slots: i64 = source
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 0, "the slot is gone");
}

#[tokio::test]
async fn kill_9_of_the_applying_node_loses_and_repeats_no_transaction() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    source
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, n bigint, body text);
             INSERT INTO events SELECT i, 0, md5(i::text) FROM generate_series(1, 20000) i;
             CREATE PUBLICATION quarry_pub FOR TABLE events;",
        )
        .await
        .expect("source table");
    // A writer runs through the copy and the kills: each transaction
    // inserts two rows and updates one.
    let writer_client = server.client("postgres").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut next = 100_000;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            writer_client
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO events VALUES ({next}, 1, 'w'), ({}, 1, 'w');
                     UPDATE events SET n = n + 1 WHERE id = {};
                     COMMIT",
                    next + 1,
                    next % 20_000 + 1
                ))
                .await
                .expect("write");
            next += 2;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        next
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    quarry
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres'
               PUBLICATION quarry_pub",
            server.port
        ))
        .await
        .expect("subscription");
    drop(quarry);
    // Killed three times while the writer runs: 150 ms after CREATE
    // SUBSCRIPTION (about when the applier starts its copy), then 1.5 s and
    // 2.5 s after each restart.
    for pause in [150, 1500, 2500] {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        node.kill9();
        node.restart().await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(
        written > 100_100,
        "the writer wrote while the node was killed"
    );
    let quarry = node.client().await;
    // Every row once, with every update: no transaction lost or repeated.
    converge(
        &source,
        &quarry,
        "SELECT count(*), count(DISTINCT id), sum(n), max(id) FROM events",
    )
    .await;
    converge(
        &source,
        &quarry,
        "SELECT id, n, body FROM events ORDER BY id",
    )
    .await;
}

#[tokio::test]
async fn the_subscription_moves_to_the_new_leader_when_the_applying_node_dies() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    source
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, n bigint);
             INSERT INTO events SELECT i, 0 FROM generate_series(1, 1000) i;
             CREATE PUBLICATION quarry_pub FOR TABLE events;",
        )
        .await
        .expect("source table");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = support::cluster::start_cluster(dir.path(), 3, &[]).await;
    let leader = support::cluster::leader_index(&nodes, 0).await;
    let survivor = (leader + 1) % nodes.len();
    nodes[survivor]
        .client()
        .await
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres'
               PUBLICATION quarry_pub",
            server.port
        ))
        .await
        .expect("subscription");
    let quarry = nodes[survivor].client().await;
    let all = "SELECT count(*), count(DISTINCT id), sum(n) FROM events";
    converge(&source, &quarry, all).await;
    // The leader applies; it dies between two of the source's
    // transactions, and the next leader carries on from the position.
    let writes = |from: i64| {
        let source = &source;
        async move {
            for i in from..from + 50 {
                source
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO events VALUES ({}, 1); UPDATE events SET n = n + 1 WHERE id = {};
                         COMMIT",
                        10_000 + i,
                        i % 1000 + 1
                    ))
                    .await
                    .expect("write");
            }
        }
    };
    writes(0).await;
    nodes[leader].kill9();
    writes(50).await;
    converge(&source, &quarry, all).await;
    converge(&source, &quarry, "SELECT id, n FROM events ORDER BY id").await;
}
