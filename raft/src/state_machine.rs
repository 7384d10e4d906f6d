//! The Raft state machine: the catalog, swapped atomically after each applied batch.
//!
//! The catalog lives in memory; durability comes from the Raft log plus the newest
//! state-machine snapshot. The snapshot is a file in the snapshot directory
//! (`meta.snapshots/` beside `meta.redb`, layout in [`crate::snapshot_file`]);
//! the `sm_snapshot` table of `meta.redb` names the current one with its
//! metadata. On restart the snapshot is loaded and openraft re-applies the
//! committed log after it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use quarry_common::catalog::Catalog;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::command::{self, Applied, CatalogError};
use crate::snapshot_file;
use crate::{NodeAddr, NodeId, TypeConfig};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
/// Key of the current snapshot file's [`SnapshotIndex`].
const CURRENT_FILE: &str = "current_file";
/// Key of a snapshot stored whole in redb ([`LegacySnapshot`]), as builds
/// before the snapshot file kept it; moved to a file when the store opens.
const LEGACY: &str = "current";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The catalog as readers see it: replaced whole after every applied batch.
#[derive(Debug, Default)]
pub struct CatalogCell {
    catalog: RwLock<Arc<Catalog>>,
}

impl CatalogCell {
    /// The newest applied catalog.
    pub fn get(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .expect("catalog lock is never held across a panic")
            .clone()
    }

    fn set(&self, catalog: Arc<Catalog>) {
        *self
            .catalog
            .write()
            .expect("catalog lock is never held across a panic") = catalog;
    }
}

/// Which snapshot file is current, and what it reflects.
#[derive(Serialize, Deserialize)]
struct SnapshotIndex {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    /// File name inside the snapshot directory.
    file: String,
}

/// A snapshot as older builds stored it: one value in redb.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    /// postcard of the [`Catalog`].
    data: Vec<u8>,
}

/// The Raft state machine over a [`CatalogCell`].
#[derive(Debug)]
pub struct StateMachine {
    db: Arc<Database>,
    cell: Arc<CatalogCell>,
    /// The snapshot directory.
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddr>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&e)),
    }
}

/// Nanoseconds since the Unix epoch: what makes a file name unique.
fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A new snapshot file name: ordered by log index, unique per build.
fn file_name(last_applied: Option<LogId<NodeId>>) -> String {
    format!(
        "{:020}-{}.qsnap",
        last_applied.map(|id| id.index).unwrap_or(0),
        nanos_now()
    )
}

/// Makes `file` the current snapshot in redb, then deletes every other file
/// of the snapshot directory (older snapshots, abandoned receptions). A
/// follower still streaming an older file keeps its open handle.
fn make_current(db: &Database, dir: &Path, index: &SnapshotIndex) -> StorageResult<()> {
    let signature = Some(index.meta.signature());
    let err = |e: redb::Error| {
        io_error(
            ErrorSubject::Snapshot(signature.clone()),
            ErrorVerb::Write,
            e,
        )
    };
    let bytes = postcard::to_allocvec(index).expect("encoding to a Vec cannot fail");
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        table
            .insert(CURRENT_FILE, bytes.as_slice())
            .map_err(|e| err(e.into()))?;
        table.remove(LEGACY).map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))?;
    remove_all_but(dir, Some(&index.file));
    Ok(())
}

/// Deletes every file of `dir` except `keep`; failures are logged, the files
/// are deleted again next time.
fn remove_all_but(dir: &Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if keep.is_some_and(|keep| entry.file_name() == keep) {
            continue;
        }
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot delete an old snapshot file");
        }
    }
}

/// Writes `catalog` as snapshot file `path`, durably: a partial file is never
/// under a snapshot's name.
fn write_snapshot_file(catalog: &Catalog, path: &Path) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    snapshot_file::write_file(catalog, &partial)?;
    std::fs::rename(&partial, path)?;
    snapshot_file::sync_dir(path)
}

async fn open_snapshot_file(
    dir: &Path,
    index: SnapshotIndex,
) -> StorageResult<Snapshot<TypeConfig>> {
    let file = tokio::fs::File::open(dir.join(&index.file))
        .await
        .map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(index.meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
    Ok(Snapshot {
        meta: index.meta,
        snapshot: Box::new(file),
    })
}

impl StateMachine {
    /// Opens the state machine, loading the newest stored snapshot if any.
    /// `dir` is the snapshot directory (created if missing).
    pub fn open(
        db: Arc<Database>,
        dir: PathBuf,
        cell: Arc<CatalogCell>,
    ) -> Result<Self, crate::Error> {
        let storage = |e: redb::Error| crate::Error::Storage(e.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| crate::Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        txn.open_table(SNAPSHOT).map_err(|e| storage(e.into()))?;
        txn.commit().map_err(|e| storage(e.into()))?;
        let mut machine = StateMachine {
            db,
            cell,
            dir,
            last_applied: None,
            last_membership: StoredMembership::default(),
            receiving: None,
        };
        let unreadable = |e: &dyn std::fmt::Display| {
            crate::Error::Storage(format!("state-machine snapshot does not decode: {e}"))
        };
        let meta = if let Some(index) = machine.read_index().map_err(|e| unreadable(&e))? {
            let catalog = snapshot_file::read_file(&machine.dir.join(&index.file))
                .map_err(|e| unreadable(&e))?;
            remove_all_but(&machine.dir, Some(&index.file));
            machine.cell.set(Arc::new(catalog));
            Some(index.meta)
        } else if let Some(legacy) = machine.read_legacy().map_err(|e| unreadable(&e))? {
            let mut catalog: Catalog =
                postcard::from_bytes(&legacy.data).map_err(|e| unreadable(&e))?;
            catalog.reindex();
            let catalog = Arc::new(catalog);
            let index = SnapshotIndex {
                file: file_name(legacy.meta.last_log_id),
                meta: legacy.meta,
            };
            write_snapshot_file(&catalog, &machine.dir.join(&index.file)).map_err(|e| {
                crate::Error::Storage(format!("cannot move the snapshot to a file: {e}"))
            })?;
            make_current(&machine.db, &machine.dir, &index)
                .map_err(|e| crate::Error::Storage(e.to_string()))?;
            machine.cell.set(catalog);
            Some(index.meta)
        } else {
            remove_all_but(&machine.dir, None);
            None
        };
        if let Some(meta) = meta {
            machine.last_applied = meta.last_log_id;
            machine.last_membership = meta.last_membership;
        }
        Ok(machine)
    }

    fn read_value<T: serde::de::DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let err = |e: redb::Error| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        let Some(bytes) = table.get(key).map_err(|e| err(e.into()))? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }

    fn read_index(&self) -> StorageResult<Option<SnapshotIndex>> {
        self.read_value(CURRENT_FILE)
    }

    fn read_legacy(&self) -> StorageResult<Option<LegacySnapshot>> {
        self.read_value(LEGACY)
    }
}

/// What one snapshot is built from: the catalog and the log position it
/// reflects, taken together when openraft asks for a builder. The builder runs
/// in its own task while entries keep being applied, so reading the catalog at
/// build time instead would store entries after `last_log_id`, and a restart
/// would apply them a second time.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    dir: PathBuf,
    catalog: Arc<Catalog>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddr>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_owned(),
        };
        let index = SnapshotIndex {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            file: file_name(self.last_applied),
        };
        let catalog = self.catalog.clone();
        let path = self.dir.join(&index.file);
        tokio::task::spawn_blocking(move || write_snapshot_file(&catalog, &path))
            .await
            .expect("writing a snapshot file does not panic")
            .map_err(|e| {
                io_error(
                    ErrorSubject::Snapshot(Some(index.meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })?;
        make_current(&self.db, &self.dir, &index)?;
        open_snapshot_file(&self.dir, index).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Result<Applied, CatalogError>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // O(1): the catalog's maps and vectors share structure with the
        // version readers hold; applying copies only what changes.
        let mut catalog = (*self.cell.get()).clone();
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Ok(Applied::Nothing),
                EntryPayload::Normal(proposal) => command::apply(&mut catalog, &proposal),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Applied::Nothing)
                }
            };
            responses.push(response);
        }
        self.cell.set(Arc::new(catalog));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            catalog: self.cell.get(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.dir.join(format!("receiving-{}.partial", nanos_now()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        if let Some(abandoned) = self.receiving.replace(path) {
            let _ = tokio::fs::remove_file(abandoned).await;
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        snapshot
            .flush()
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        snapshot
            .sync_all()
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        drop(snapshot);
        let Some(received) = self.receiving.take() else {
            let missing = std::io::Error::other("no snapshot is being received");
            return Err(io_error(subject(), ErrorVerb::Read, missing));
        };
        let index = SnapshotIndex {
            meta: meta.clone(),
            file: file_name(meta.last_log_id),
        };
        let path = self.dir.join(&index.file);
        let catalog = tokio::task::spawn_blocking(move || {
            let catalog = snapshot_file::read_file(&received)?;
            std::fs::rename(&received, &path)?;
            snapshot_file::sync_dir(&path)?;
            Ok::<_, std::io::Error>(catalog)
        })
        .await
        .expect("reading a snapshot file does not panic")
        .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        make_current(&self.db, &self.dir, &index)?;
        self.cell.set(Arc::new(catalog));
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        match self.read_index()? {
            Some(index) => open_snapshot_file(&self.dir, index).await.map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Proposal};
    use openraft::{CommittedLeaderId, EntryPayload};
    use tokio::io::AsyncReadExt;

    fn schema(index: u64, name: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                command: Command::CreateSchema {
                    name: name.into(),
                    if_not_exists: false,
                },
                proposed_at: 1_000,
            }),
        }
    }

    fn open(dir: &Path) -> (Arc<Database>, StateMachine) {
        let db = Arc::new(Database::create(dir.join("meta.redb")).expect("redb"));
        let machine = StateMachine::open(
            db.clone(),
            dir.join("meta.snapshots"),
            Arc::new(CatalogCell::default()),
        )
        .expect("open");
        (db, machine)
    }

    async fn catalog_of(snapshot: &mut Snapshot<TypeConfig>) -> Catalog {
        let mut bytes = Vec::new();
        snapshot
            .snapshot
            .read_to_end(&mut bytes)
            .await
            .expect("snapshot file reads");
        snapshot_file::read(bytes.as_slice()).expect("snapshot decodes")
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("snapshot dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_snapshot_holds_exactly_the_entries_up_to_its_last_log_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, mut machine) = open(dir.path());
        machine.apply([schema(1, "a")]).await.expect("apply");
        let mut builder = machine.get_snapshot_builder().await;
        // openraft builds in its own task; entries keep being applied meanwhile.
        machine.apply([schema(2, "b")]).await.expect("apply");
        let mut snapshot = builder.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(1));
        let stored = catalog_of(&mut snapshot).await;
        assert_eq!(
            stored.schemas.keys().collect::<Vec<_>>(),
            ["a"],
            "the snapshot must not hold entry 2, which a restart applies after it"
        );
        drop((db, machine, builder));

        // A restart loads the snapshot and re-applies entry 2 exactly once.
        let (_db, mut restarted) = open(dir.path());
        let (applied, _) = restarted.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(1));
        let replay = restarted.apply([schema(2, "b")]).await.expect("replay");
        assert!(
            replay[0].is_ok(),
            "entry 2 replays cleanly: {:?}",
            replay[0]
        );
        assert_eq!(
            restarted.cell.get().schemas.keys().collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[tokio::test]
    async fn a_received_snapshot_replaces_the_catalog_and_older_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let snapshots = dir.path().join("meta.snapshots");
        // The leader's snapshot: schemas a and b at index 2.
        let leader_dir = tempfile::tempdir().expect("temp dir");
        let (_leader_db, mut leader) = open(leader_dir.path());
        leader
            .apply([schema(1, "a"), schema(2, "b")])
            .await
            .expect("apply");
        let mut sent = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let mut bytes = Vec::new();
        sent.snapshot.read_to_end(&mut bytes).await.expect("read");

        // The follower has its own older snapshot, then receives in chunks.
        let (_db, mut follower) = open(dir.path());
        follower.apply([schema(1, "a")]).await.expect("apply");
        follower
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        assert_eq!(files_in(&snapshots).len(), 1);
        let mut receiving = follower.begin_receiving_snapshot().await.expect("begin");
        for chunk in bytes.chunks(7) {
            receiving.write_all(chunk).await.expect("chunk");
        }
        follower
            .install_snapshot(&sent.meta, receiving)
            .await
            .expect("install");
        assert_eq!(
            follower.cell.get().schemas.keys().collect::<Vec<_>>(),
            ["a", "b"]
        );
        let (applied, _) = follower.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(2));
        let files = files_in(&snapshots);
        assert_eq!(
            files.len(),
            1,
            "only the installed snapshot stays: {files:?}"
        );
        assert!(files[0].ends_with(".qsnap"), "{files:?}");
        let mut current = follower
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta, sent.meta);
        assert_eq!(catalog_of(&mut current).await, *follower.cell.get());
    }

    #[tokio::test]
    async fn a_damaged_received_snapshot_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_db, mut machine) = open(dir.path());
        machine.apply([schema(1, "a")]).await.expect("apply");
        let before = machine.cell.get();
        let mut receiving = machine.begin_receiving_snapshot().await.expect("begin");
        receiving.write_all(b"QSNP\x01\0\0\0").await.expect("write");
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "damaged".into(),
        };
        machine
            .install_snapshot(&meta, receiving)
            .await
            .expect_err("a snapshot without records");
        assert_eq!(machine.cell.get(), before);
        let (applied, _) = machine.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(1));
    }

    #[tokio::test]
    async fn a_snapshot_kept_in_redb_by_version_1_moves_to_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut catalog = Catalog::default();
        command::apply(
            &mut catalog,
            &Proposal {
                command: Command::CreateSchema {
                    name: "old".into(),
                    if_not_exists: false,
                },
                proposed_at: 1_000,
            },
        )
        .expect("create schema");
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-5".into(),
        };
        {
            let db = Database::create(dir.path().join("meta.redb")).expect("redb");
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(SNAPSHOT).expect("table");
                let legacy = LegacySnapshot {
                    meta: meta.clone(),
                    data: postcard::to_allocvec(&catalog).expect("encode"),
                };
                let bytes = postcard::to_allocvec(&legacy).expect("encode");
                table.insert(LEGACY, bytes.as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let (db, mut machine) = open(dir.path());
        assert_eq!(*machine.cell.get(), catalog);
        let (applied, _) = machine.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(5));
        let mut current = machine
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta, meta);
        assert_eq!(catalog_of(&mut current).await, catalog);
        let txn = db.begin_read().expect("txn");
        let table = txn.open_table(SNAPSHOT).expect("table");
        assert!(
            table.get(LEGACY).expect("get").is_none(),
            "moved, not copied"
        );
    }
}
