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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
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
        tokio::time::sleep(Duration::from_millis(250)).await;
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (flushed, _) = confirmed().await;
        if flushed >= wal_end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stays at {flushed}, the source's WAL is at {wal_end}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
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

    // A column's type changed on the source stops the applier, with an
    // error that says so, rather than round its values into the old type.
    source
        .batch_execute(
            "ALTER TABLE ledger ALTER COLUMN amount TYPE numeric(14,4);
             INSERT INTO ledger VALUES (9, 1, 1.2345)",
        )
        .await
        .expect("type change");
    wait_shown(&quarry, "coalesce(last_error, '')", |error| {
        error.contains("column \"amount\" of \"public\".\"ledger\" changed type from numeric(12,2) to numeric(14,4)")
    })
    .await;
    assert_eq!(texts(&quarry, "SELECT count(*) FROM ledger").await, ["0"]);

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

/// The subscription `sub`'s columns `columns` in quarry_system.subscriptions.
async fn shown(quarry: &tokio_postgres::Client, columns: &str) -> String {
    shown_of(quarry, "sub", columns).await
}

/// Subscription `name`'s columns `columns` in quarry_system.subscriptions.
async fn shown_of(quarry: &tokio_postgres::Client, name: &str, columns: &str) -> String {
    texts(
        quarry,
        &format!(
            "SELECT {columns} FROM quarry_system.subscriptions WHERE subscription_name = '{name}'"
        ),
    )
    .await
    .concat()
}

/// Waits (up to two minutes) until `check` holds of `sub`'s `columns`.
async fn wait_shown(quarry: &tokio_postgres::Client, columns: &str, check: impl Fn(&str) -> bool) {
    wait_shown_of(quarry, "sub", columns, check).await
}

/// Waits (up to two minutes) until `check` holds of subscription `name`'s
/// `columns`.
async fn wait_shown_of(
    quarry: &tokio_postgres::Client,
    name: &str,
    columns: &str,
    check: impl Fn(&str) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let found = shown_of(quarry, name, columns).await;
        if check(&found) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{columns} of subscription {name} stays {found}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refresh_publication_copies_the_tables_added_and_applies_their_changes_once() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    source
        .batch_execute(
            "CREATE TABLE first (id bigint PRIMARY KEY, v text);
             CREATE TABLE events (id bigint PRIMARY KEY, n bigint, body text);
             INSERT INTO first VALUES (1, 'a');
             INSERT INTO events SELECT i, 0, md5(i::text) FROM generate_series(1, 5000) i;
             CREATE PUBLICATION quarry_pub FOR TABLE first;",
        )
        .await
        .expect("source tables");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    subscribe(&quarry, server.port).await;
    converge(&source, &quarry, "SELECT id, v FROM first ORDER BY id").await;

    // `events` joins the publication while a writer changes it: its
    // changes reach the applier, which ignores them until the refresh
    // copies the table; those before the copy's snapshot are in the copy,
    // those after it are applied, none twice.
    let writers = Writers::start(&server, 5000, 1).await;
    source
        .batch_execute("ALTER PUBLICATION quarry_pub ADD TABLE events")
        .await
        .expect("add table");
    while writers.committed() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = quarry.simple_query("SELECT count(*) FROM events").await;
    assert_eq!(
        missing
            .as_ref()
            .map_err(support::node::sqlstate)
            .err()
            .as_deref(),
        Some("42P01"),
        "not followed before the refresh"
    );
    quarry
        .batch_execute("ALTER SUBSCRIPTION sub REFRESH PUBLICATION")
        .await
        .expect("refresh");
    wait_shown(&quarry, "tables", |t| t == "2").await;
    while writers.committed() < 150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writers.stop().await;
    source
        .batch_execute("INSERT INTO first VALUES (2, 'b')")
        .await
        .expect("first");
    converge_events(&source, &quarry).await;
    converge(&source, &quarry, "SELECT id, v FROM first ORDER BY id").await;

    // A table dropped from the publication is no longer followed; its
    // rows stay.
    source
        .batch_execute("ALTER PUBLICATION quarry_pub DROP TABLE first")
        .await
        .expect("drop table");
    quarry
        .batch_execute("ALTER SUBSCRIPTION sub REFRESH PUBLICATION WITH (copy_data = false)")
        .await
        .expect("refresh");
    wait_shown(&quarry, "tables", |t| t == "1").await;
    assert_eq!(texts(&quarry, "SELECT count(*) FROM first").await, ["2"]);

    // Errors: an unknown option; a disabled subscription (as PostgreSQL).
    let error = quarry
        .batch_execute("ALTER SUBSCRIPTION sub REFRESH PUBLICATION WITH (origin = none)")
        .await
        .expect_err("unknown option");
    assert_eq!(support::node::sqlstate(&error), "22023");
    quarry
        .batch_execute("ALTER SUBSCRIPTION sub DISABLE")
        .await
        .expect("disable");
    let error = quarry
        .batch_execute("ALTER SUBSCRIPTION sub REFRESH PUBLICATION")
        .await
        .expect_err("disabled");
    assert_eq!(support::node::sqlstate(&error), "55000");
}

#[tokio::test]
async fn a_subscription_on_an_existing_slot_copies_at_a_snapshot_of_its_own() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 3000).await;
    // The slot exists before the subscription, and the source changes
    // after it was made: those changes are both in the slot's stream and
    // in the copy, and are applied once.
    source
        .batch_execute("SELECT pg_create_logical_replication_slot('existing', 'pgoutput')")
        .await
        .expect("slot");
    source
        .batch_execute(
            "INSERT INTO events SELECT i, 5, 'after the slot' FROM generate_series(3001, 3100) i;
             UPDATE events SET n = n + 1 WHERE id <= 100;
             DELETE FROM events WHERE id BETWEEN 200 AND 249;",
        )
        .await
        .expect("changes after the slot");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    quarry
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres'
               PUBLICATION quarry_pub WITH (create_slot = false, slot_name = 'existing')",
            server.port
        ))
        .await
        .expect("subscription");
    converge(&source, &quarry, EVENTS_HASH).await;
    source
        .batch_execute("UPDATE events SET body = 'later' WHERE id % 10 = 0")
        .await
        .expect("later change");
    converge(&source, &quarry, EVENTS_HASH).await;
    // The existing slot streams (its confirmed position moves); the copy's
    // temporary slot is gone.
    let slots = texts(
        &source,
        "SELECT slot_name, confirmed_flush_lsn > '0/0' FROM pg_replication_slots ORDER BY 1",
    )
    .await;
    assert_eq!(slots, ["existing|t"]);
    // Lag in bytes: the subscription is disabled while the source writes
    // 8 MB to a table it does not publish after a change it does; enabled
    // again, its commit of that change records the source's end of WAL
    // beyond it, until the idle source's position is applied too.
    quarry
        .batch_execute("ALTER SUBSCRIPTION sub DISABLE")
        .await
        .expect("disable");
    // Its applier lets go of the slot within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while texts(&source, "SELECT active FROM pg_replication_slots").await != ["f"] {
        assert!(std::time::Instant::now() < deadline, "the applier stops");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two transactions (one simple query would be one).
    for write in [
        "UPDATE events SET n = 0 WHERE id = 1",
        "CREATE TABLE bulk AS SELECT i, md5(i::text) AS h FROM generate_series(1, 100000) i",
    ] {
        source.batch_execute(write).await.expect(write);
    }
    quarry
        .batch_execute("ALTER SUBSCRIPTION sub ENABLE")
        .await
        .expect("enable");
    wait_shown(&quarry, "lag_bytes", |lag| {
        lag.parse::<u64>().expect("bytes") > 4_000_000
    })
    .await;
    converge(&source, &quarry, EVENTS_HASH).await;
    wait_shown(&quarry, "lag_bytes", |lag| lag == "0").await;
    // The same on /metrics.
    let rows_applied: f64 = shown(&quarry, "rows_applied").await.parse().expect("rows");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = (
            node.metric("quarry_subscription_rows_applied_total{subscription=\"sub\"}")
                .await,
            node.metric("quarry_subscription_lag_bytes{subscription=\"sub\"}")
                .await,
        );
        if shown == (Some(rows_applied), Some(0.0)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics shows {shown:?}, the system table {rows_applied} rows and no lag"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // DROP SUBSCRIPTION drops the slot it did not make, as PostgreSQL's.
    quarry
        .batch_execute("DROP SUBSCRIPTION sub")
        .await
        .expect("drop");
    assert_eq!(
        texts(&source, "SELECT count(*) FROM pg_replication_slots").await,
        ["0"]
    );
}

#[tokio::test]
async fn a_source_that_requires_tls_is_reached_over_tls_with_its_certificate_checked() {
    let certs = tempfile::tempdir().expect("temp dir");
    support::node::quarry_cert(certs.path(), &["create-ca"]);
    support::node::quarry_cert(certs.path(), &["create-node", "--host", "127.0.0.1"]);
    let other_ca = tempfile::tempdir().expect("temp dir");
    support::node::quarry_cert(other_ca.path(), &["create-ca"]);
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 2000).await;
    // TLS with a certificate for 127.0.0.1 signed by `certs`' CA; the role
    // `replicator` may log in (and replicate) over TLS only.
    let installed = server.install_files(&[
        &certs.path().join("node.crt"),
        &certs.path().join("node.key"),
    ]);
    // Each its own transaction (ALTER SYSTEM cannot be in one).
    for setting in [
        "CREATE ROLE replicator LOGIN REPLICATION SUPERUSER".to_owned(),
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            installed[0].display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            installed[1].display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
    ] {
        source.batch_execute(&setting).await.expect(&setting);
    }
    server.set_hba(
        "hostssl all replicator 127.0.0.1/32 trust
         hostssl replication replicator 127.0.0.1/32 trust
         hostnossl all replicator 0.0.0.0/0 reject
         host all postgres 127.0.0.1/32 trust
         local all all trust
",
    );
    source
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    let ca = certs.path().join("ca.crt");
    let subscribe = |name: &str, options: String| {
        let quarry = &quarry;
        let port = server.port;
        let name = name.to_owned();
        async move {
            quarry
                .batch_execute(&format!(
                    "CREATE SUBSCRIPTION {name}
                       CONNECTION 'port={port} user=replicator dbname=postgres {options}'
                       PUBLICATION quarry_pub WITH (slot_name = '{name}')"
                ))
                .await
                .expect("subscription");
        }
    };
    // verify-full: the chain to the CA and the host name.
    subscribe(
        "sub",
        format!(
            "host=127.0.0.1 sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
    )
    .await;
    converge(&source, &quarry, EVENTS_HASH).await;
    source
        .batch_execute("UPDATE events SET n = n + 1 WHERE id % 7 = 0")
        .await
        .expect("update");
    converge(&source, &quarry, EVENTS_HASH).await;
    // Its walsender and its other connection are encrypted.
    let encrypted = texts(
        &source,
        "SELECT count(*) FILTER (WHERE backend_type = 'walsender') > 0, bool_and(ssl)
         FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) WHERE usename = 'replicator'",
    )
    .await;
    assert_eq!(encrypted, ["t|t"]);
    // DROP SUBSCRIPTION reaches the source over TLS too, to drop the slot.
    quarry
        .batch_execute("DROP SUBSCRIPTION sub; DROP TABLE events")
        .await
        .expect("drop");
    assert_eq!(
        texts(&source, "SELECT count(*) FROM pg_replication_slots").await,
        ["0"]
    );

    // verify-ca: the chain only, so a host name the certificate does not
    // name is accepted; verify-full refuses it.
    subscribe(
        "by_ca",
        format!(
            "host=localhost sslmode=verify-ca sslrootcert={}",
            ca.display()
        ),
    )
    .await;
    converge(&source, &quarry, EVENTS_HASH).await;
    quarry
        .batch_execute("DROP SUBSCRIPTION by_ca")
        .await
        .expect("drop");
    subscribe(
        "wrong_name",
        format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
    )
    .await;
    // Another CA; no TLS where the source requires it.
    subscribe(
        "wrong_ca",
        format!(
            "host=127.0.0.1 sslmode=verify-full sslrootcert={}",
            other_ca.path().join("ca.crt").display()
        ),
    )
    .await;
    subscribe("plain", "host=127.0.0.1 sslmode=disable".to_owned()).await;
    for (name, error) in [
        ("wrong_name", "certificate not valid for name \"localhost\""),
        ("wrong_ca", "UnknownIssuer"),
        ("plain", "no encryption"),
    ] {
        wait_shown_of(&quarry, name, "coalesce(last_error, '')", |found| {
            found.contains(error)
        })
        .await;
        assert_eq!(shown_of(&quarry, name, "state").await, "copying");
    }
}

/// Writer `writer` of `writers` on the source's `events` (ids 1..=`rows`
/// to begin with): every few milliseconds a transaction that inserts two
/// rows, updates one and deletes one of the first rows (rows no other
/// writer touches), until `stop`; `committed` counts its transactions.
fn spawn_writer(
    client: tokio_postgres::Client,
    rows: i64,
    (writer, writers): (i64, i64),
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i: i64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let n = i * writers + writer;
            let next = 10_000_000 + 2 * n;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO events VALUES ({next}, 1, 'w'), ({}, 1, 'w');
                     UPDATE events SET n = n + 1 WHERE id = {};
                     DELETE FROM events WHERE id = {};
                     COMMIT",
                    next + 1,
                    (i * 7919) % (rows / writers) * writers + writer + 1,
                    rows - n,
                ))
                .await
                .expect("write");
            i += 1;
            committed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// `count` writers ([`spawn_writer`]) on the source's `events` of `rows`
/// rows, until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(server: &PgServer, rows: i64, count: i64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for writer in 0..count {
            handles.push(spawn_writer(
                server.client("postgres").await,
                rows,
                (writer, count),
                stop.clone(),
                committed.clone(),
            ));
        }
        Writers {
            stop,
            committed,
            handles,
        }
    }

    /// Transactions committed so far.
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stops them; returns the transactions they committed.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.handles {
            handle.await.expect("writer");
        }
        self.committed.load(Ordering::Relaxed)
    }
}

/// An ordered hash of every row of `events`, the same SQL on both sides.
const EVENTS_HASH: &str = "SELECT count(*), md5(string_agg(id::text || ':' || n::text || ':' || body, ',' ORDER BY id)) FROM events";

/// Waits until `events` is identical on both sides: its count, distinct
/// ids, sum and largest id first (a readable difference), then the
/// ordered hash of every row.
async fn converge_events(source: &tokio_postgres::Client, quarry: &tokio_postgres::Client) {
    converge(
        source,
        quarry,
        "SELECT count(*), count(DISTINCT id), sum(n), max(id) FROM events",
    )
    .await;
    converge(source, quarry, EVENTS_HASH).await;
}

/// The source's `events` with `rows` rows, published as `quarry_pub`.
async fn events_table(source: &tokio_postgres::Client, rows: i64) {
    source
        .batch_execute(&format!(
            "CREATE TABLE events (id bigint PRIMARY KEY, n bigint, body text);
             INSERT INTO events SELECT i, 0, md5(i::text) FROM generate_series(1, {rows}) i;
             CREATE PUBLICATION quarry_pub FOR TABLE events;"
        ))
        .await
        .expect("source table");
}

#[tokio::test]
async fn kill_9_of_the_applying_node_loses_and_repeats_no_transaction() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 20_000).await;
    // A writer runs through the copy and the kills.
    let writers = Writers::start(&server, 20_000, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    subscribe(&quarry, server.port).await;
    drop(quarry);
    // Killed three times while the writer runs: 150 ms after CREATE
    // SUBSCRIPTION (about when the applier starts its copy), then 1.5 s and
    // 2.5 s after each restart.
    for pause in [150, 1500, 2500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        node.kill9();
        node.restart().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        writers.stop().await > 50,
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

/// Waits (up to 3 minutes) for `node` to die at crash point `point`: by
/// SIGKILL, its log saying it reached that point.
fn died_at(node: &mut support::node::TestNode, point: &str) {
    let status = node.wait_exit(Duration::from_secs(180));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{point}: killed by SIGKILL"
    );
    assert!(
        node.log()
            .lines()
            .any(|l| l.contains("crash point reached") && l.contains(point)),
        "{point}: the node died at its crash point"
    );
}

/// Subscribes `quarry` to publication `quarry_pub` of the source on
/// `port`, as subscription `sub`.
async fn subscribe(quarry: &tokio_postgres::Client, port: u16) {
    quarry
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={port} user=postgres dbname=postgres'
               PUBLICATION quarry_pub"
        ))
        .await
        .expect("subscription");
}

/// Quarry's applied position and the source slot's `confirmed_flush_lsn`,
/// as numbers; the source's read first, so that it is never past the
/// other unless the source was told more than Quarry committed.
async fn positions(source: &tokio_postgres::Client, quarry: &tokio_postgres::Client) -> (u64, u64) {
    let confirmed = texts(
        source,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sub'",
    )
    .await;
    let applied = texts(
        quarry,
        "SELECT applied_lsn FROM quarry_system.subscriptions WHERE subscription_name = 'sub'",
    )
    .await;
    let lsn = |rows: Vec<String>| {
        rows.first()
            .map(|t| parse_lsn(t).expect("an LSN"))
            .unwrap_or(0)
    };
    (lsn(applied), lsn(confirmed))
}

#[tokio::test]
async fn kill_9_at_each_step_of_copy_and_apply_loses_and_repeats_no_transaction() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 50_000).await;
    let writers = Writers::start(&server, 50_000, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = support::node::TestNode::start(&dir.path().join("data")).await;
    // The node kills itself (SIGKILL) at each step in turn, by a fail
    // point (node/src/subscription.rs), and restarts: during the copy,
    // after the copy committed, in the middle of receiving a source
    // transaction, with a batch applied but not committed, and after the
    // commit before the source is told.
    let points = [
        "subscription-copying",
        "subscription-copied",
        "subscription-receiving",
        "subscription-applying",
        "subscription-committed",
    ];
    for (i, point) in points.iter().enumerate() {
        node.kill9();
        node.set_env(&[("FAILPOINTS", &format!("{point}=return"))]);
        if i == 0 {
            node.restart().await;
            subscribe(&node.client().await, server.port).await;
        } else {
            node.restart_unready();
        }
        let before = writers.committed();
        died_at(&mut node, point);
        // The writer goes on meanwhile.
        while writers.committed() < before + 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // After the acknowledgement: killed once the source confirmed a
    // position Quarry committed after this restart.
    node.set_env(&[]);
    node.restart().await;
    let quarry = node.client().await;
    let (at_restart, _) = positions(&source, &quarry).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (applied, confirmed) = positions(&source, &quarry).await;
        assert!(
            confirmed <= applied,
            "the source confirmed what Quarry did not commit"
        );
        if confirmed > at_restart {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the source never confirmed past {at_restart}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9();
    node.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writers.stop().await;
    let quarry = node.client().await;
    converge_events(&source, &quarry).await;
}

#[tokio::test]
async fn a_large_source_transaction_is_applied_as_it_arrives_and_once_across_a_kill() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 1000).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = support::node::TestNode::start(&dir.path().join("data")).await;
    subscribe(&node.client().await, server.port).await;
    converge(&source, &node.client().await, EVENTS_HASH).await;
    // A source transaction of some 100,600 changes (more than a batch):
    // the node applies its first part into a block of its own, and dies
    // there (a fail point).
    node.kill9();
    node.set_env(&[("FAILPOINTS", "subscription-applying-part=return")]);
    node.restart().await;
    source
        .batch_execute(
            "BEGIN;
             INSERT INTO events SELECT i, 1, 'large' FROM generate_series(100001, 200000) i;
             UPDATE events SET n = n + 10 WHERE id <= 500;
             DELETE FROM events WHERE id BETWEEN 600 AND 700;
             COMMIT",
        )
        .await
        .expect("large transaction");
    died_at(&mut node, "subscription-applying-part");
    // Restarted, it applies the whole transaction once; then a large
    // update between two small transactions, in order.
    node.set_env(&[]);
    node.restart().await;
    let quarry = node.client().await;
    converge(
        &source,
        &quarry,
        "SELECT count(*), count(DISTINCT id), sum(n), max(id) FROM events",
    )
    .await;
    for change in [
        "UPDATE events SET body = 'before' WHERE id = 1",
        "UPDATE events SET n = n + 1, body = 'updated' WHERE id > 100000",
        "UPDATE events SET body = 'after' WHERE id = 1",
    ] {
        source.batch_execute(change).await.expect(change);
    }
    converge(&source, &quarry, EVENTS_HASH).await;
}

/// The source's count of transactions it streamed while in progress on
/// slot `sub` (`pg_stat_replication_slots`, PostgreSQL 14 and later).
async fn streamed_transactions(source: &tokio_postgres::Client) -> i64 {
    source
        .query_opt(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'sub'",
            &[],
        )
        .await
        .expect("slot statistics")
        .map_or(0, |row| row.get(0))
}

/// Waits (up to a minute) until the source has streamed more than `than`
/// transactions while in progress on slot `sub`.
async fn wait_streamed(source: &tokio_postgres::Client, than: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while streamed_transactions(source).await <= than {
        assert!(
            std::time::Instant::now() < deadline,
            "the source never streamed a transaction in progress"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn transactions_streamed_in_progress_apply_once_at_their_commit_without_aborted_parts() {
    // 64 kB of decoded changes (the least PostgreSQL allows) and the
    // source streams the transaction to the subscriber while in progress:
    // pgoutput protocol version 2 (PostgreSQL manual, 55.5.3).
    let server = PgServer::start(&["wal_level=logical", "logical_decoding_work_mem=64kB"]);
    let source = server.client("postgres").await;
    events_table(&source, 1000).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = support::node::TestNode::start(&dir.path().join("data")).await;
    // Over the source's Unix socket: the replication connection's other
    // transport.
    let quarry = node.client().await;
    quarry
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host={} port={} user=postgres dbname=postgres'
               PUBLICATION quarry_pub",
            server.socket_dir().display(),
            server.port
        ))
        .await
        .expect("subscription");
    converge(&source, &quarry, EVENTS_HASH).await;
    let before = streamed_transactions(&source).await;

    // A transaction left open after 20,000 inserts, a subtransaction
    // rolled back and one released; other transactions commit meanwhile.
    let open = server.client("postgres").await;
    open.batch_execute(
        "BEGIN;
         INSERT INTO events SELECT i, 1, 'streamed' FROM generate_series(100001, 120000) i;
         SAVEPOINT a;
         INSERT INTO events SELECT i, 1, 'rolled back' FROM generate_series(200001, 205000) i;
         UPDATE events SET n = n + 1000 WHERE id <= 100;
         ROLLBACK TO SAVEPOINT a;
         SAVEPOINT b;
         UPDATE events SET n = n + 100 WHERE id <= 300;
         RELEASE SAVEPOINT b;
         INSERT INTO events SELECT i, 2, 'streamed later' FROM generate_series(120001, 125000) i;",
    )
    .await
    .expect("open transaction");
    wait_streamed(&source, before).await;
    // A transaction aborted after being streamed in part.
    let aborted = server.client("postgres").await;
    aborted
        .batch_execute(
            "BEGIN;
             INSERT INTO events SELECT i, 3, 'aborted' FROM generate_series(300001, 320000) i;",
        )
        .await
        .expect("aborted transaction");
    wait_streamed(&source, before + 1).await;
    aborted.batch_execute("ROLLBACK").await.expect("rollback");
    source
        .batch_execute(
            "UPDATE events SET body = 'committed meanwhile' WHERE id = 999;
             INSERT INTO events VALUES (500000, 5, 'committed meanwhile');",
        )
        .await
        .expect("small transactions");
    // (Row 999: the open transaction holds rows 1 to 300.) Those commit
    // in Quarry while the streamed one is still open there: none of its
    // rows shows.
    let sql = "SELECT count(*) FILTER (WHERE id = 500000), count(*) FILTER (WHERE id > 100000 AND id < 500000)
               FROM events";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while texts(&quarry, sql).await != ["1|0"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}: the small transactions never showed alone",
            texts(&quarry, sql).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open.batch_execute("COMMIT").await.expect("commit");
    converge_events(&source, &quarry).await;

    // Killed while receiving a streamed transaction, and again with part
    // of one applied at its commit (60,000 changes: more than a part):
    // each is applied once after the restart.
    for (point, first) in [
        ("subscription-receiving-streamed", 600_001),
        ("subscription-applying-part", 700_001),
    ] {
        node.kill9();
        node.set_env(&[("FAILPOINTS", &format!("{point}=return"))]);
        node.restart().await;
        let streamed = streamed_transactions(&source).await;
        source
            .batch_execute(&format!(
                "INSERT INTO events SELECT i, 7, 'large' FROM generate_series({first}, {}) i",
                first + 59_999
            ))
            .await
            .expect("large transaction");
        died_at(&mut node, point);
        node.set_env(&[]);
        node.restart().await;
        let quarry = node.client().await;
        converge(&source, &quarry, EVENTS_HASH).await;
        wait_streamed(&source, streamed).await;
        let (applied, confirmed) = positions(&source, &quarry).await;
        assert!(
            confirmed <= applied,
            "the source confirmed what Quarry did not commit"
        );
    }
}

#[tokio::test]
async fn a_million_row_copy_with_writers_running_ends_identical() {
    let server = PgServer::start(&["wal_level=logical"]);
    let source = server.client("postgres").await;
    events_table(&source, 1_000_000).await;
    let writers = Writers::start(&server, 1_000_000, 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = support::node::TestNode::start(&dir.path().join("data")).await;
    let quarry = node.client().await;
    let before = writers.committed();
    subscribe(&quarry, server.port).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while texts(
        &quarry,
        "SELECT state FROM quarry_system.subscriptions WHERE subscription_name = 'sub'",
    )
    .await
        != ["streaming"]
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = writers.committed() - before;
    assert!(during > 0, "the writers committed while the copy ran");
    tokio::time::sleep(Duration::from_secs(1)).await;
    writers.stop().await;
    converge(&source, &quarry, EVENTS_HASH).await;
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
    subscribe(&nodes[survivor].client().await, server.port).await;
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
