//! A one-voter metadata group on a real redb file: writes, reads, restart, snapshots.

mod support;

use std::time::Duration;

use quarry_common::catalog::{ChunkId, DataFile};
use quarry_raft::network::Unconnected;
use quarry_raft::{Applied, CatalogError, Command, Error, Meta, MetaConfig, NodeAddr, TableChange};

use support::create_table;

fn config(snapshot_every_entries: u64) -> MetaConfig {
    let mut config = MetaConfig::new(1, NodeAddr::default());
    config.heartbeat_interval = Duration::from_millis(50);
    config.snapshot_every_entries = snapshot_every_entries;
    config
}

fn data_file(chunk: u128) -> DataFile {
    DataFile {
        chunk: ChunkId(chunk),
        size_bytes: 100,
        checksum_crc32c: 7,
        row_count: 10,
        column_stats: vec![],
    }
}

/// Opens the metadata store at `path` as a node without peers.
async fn open(path: &std::path::Path, snapshot_every_entries: u64) -> quarry_raft::Result<Meta> {
    Meta::open(
        path,
        config(snapshot_every_entries),
        Unconnected,
        std::sync::Arc::new(quarry_raft::NoLink),
    )
    .await
}

/// [`open`], then bootstrap (or restart) the one-node cluster.
async fn open_bootstrapped(path: &std::path::Path, snapshot_every_entries: u64) -> Meta {
    let meta = open(path, snapshot_every_entries).await.expect("open");
    meta.bootstrap(1).await.expect("bootstrap");
    meta
}

#[tokio::test]
async fn committed_catalog_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let meta = open_bootstrapped(&path, 1000).await;
    meta.write(create_table("t")).await.expect("create");
    let table = meta
        .read()
        .await
        .expect("read")
        .table("public", "t")
        .expect("t")
        .id;
    for chunk in 0..5 {
        let applied = meta
            .write(Command::Commit {
                changes: vec![TableChange {
                    table,
                    added: vec![data_file(chunk)],
                    removed: vec![],
                    stripes: vec![],
                }],
                read_set: vec![],
            })
            .await
            .expect("append");
        assert!(matches!(applied, Applied::Commit { .. }));
    }
    let before = meta.read().await.expect("read");
    meta.shutdown().await;
    drop(meta);

    let meta = open_bootstrapped(&path, 1000).await;
    let after = meta.read().await.expect("read");
    assert_eq!(after, before);
    assert_eq!(
        after
            .table("public", "t")
            .expect("t")
            .current_snapshot()
            .row_count,
        50
    );
    meta.shutdown().await;
}

#[tokio::test]
async fn restart_after_snapshots_and_log_purges_keeps_every_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let meta = open_bootstrapped(&path, 4).await;
    for i in 0..25 {
        meta.write(create_table(&format!("t{i}")))
            .await
            .expect("create");
    }
    let before = meta.read().await.expect("read");
    meta.shutdown().await;
    drop(meta);

    let meta = open_bootstrapped(&path, 4).await;
    assert_eq!(meta.read().await.expect("read"), before);
    assert_eq!(before.tables.len(), 25);
    meta.shutdown().await;
}

#[tokio::test]
async fn refused_commands_report_the_catalog_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = open_bootstrapped(&dir.path().join("meta.redb"), 1000).await;
    meta.write(create_table("t")).await.expect("create");
    let err = meta.write(create_table("t")).await.expect_err("duplicate");
    assert!(
        matches!(err, Error::Catalog(CatalogError::TableExists(ref n)) if n == "t"),
        "{err}"
    );
    meta.shutdown().await;
}

#[tokio::test]
async fn a_metadata_file_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    {
        let meta = open(&path, 1000).await.expect("open");
        meta.shutdown().await;
    }
    {
        let db = redb::Database::open(&path).expect("redb");
        let txn = db.begin_write().expect("txn");
        {
            let mut state = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("raft_state"))
                .expect("table");
            let version = postcard::to_allocvec(&99u32).expect("encode");
            state
                .insert("format_version", version.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let err = match open(&path, 1000).await {
        Ok(_) => panic!("a future format must not open"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("format version"), "{err}");
}

#[tokio::test]
async fn a_version_1_metadata_file_is_upgraded_to_version_2_and_keeps_its_catalog() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let state = redb::TableDefinition::<&str, &[u8]>::new("raft_state");
    let before = {
        let meta = open_bootstrapped(&path, 1000).await;
        meta.write(create_table("t")).await.expect("create");
        let catalog = meta.read().await.expect("read");
        meta.shutdown().await;
        catalog
    };
    let stamp = |version: u32| {
        let db = redb::Database::open(&path).expect("redb");
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn.open_table(state).expect("table");
            let bytes = postcard::to_allocvec(&version).expect("encode");
            table
                .insert("format_version", bytes.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    };
    stamp(1);
    let meta = open_bootstrapped(&path, 1000).await;
    assert_eq!(meta.read().await.expect("read"), before);
    meta.shutdown().await;
    drop(meta);
    let db = redb::Database::open(&path).expect("redb");
    let txn = redb::ReadableDatabase::begin_read(&db).expect("txn");
    let table = txn.open_table(state).expect("table");
    let version: u32 = postcard::from_bytes(
        table
            .get("format_version")
            .expect("get")
            .expect("stamped")
            .value(),
    )
    .expect("decode");
    assert_eq!(version, 2);
}
