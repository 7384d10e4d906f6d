//! Change data capture from PostgreSQL against a real PostgreSQL server
//! (Debian's `postgresql`, started in a temporary directory): the pgoutput
//! messages a logical replication slot gives decode into Quarry's
//! messages.

mod support {
    #[path = "node.rs"]
    pub mod node;

    #[path = "postgres.rs"]
    pub mod postgres;
}

use bytes::Bytes;
use quarry_exec::pgoutput::{Message, Value, decode, parse_lsn};
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
