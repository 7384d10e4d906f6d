//! The Raft state machine: the catalog, swapped atomically after each applied batch.
//!
//! The catalog lives in memory; durability comes from the Raft log plus the newest
//! state-machine snapshot, kept in the `sm_snapshot` table of `meta.redb`. On
//! restart the snapshot is loaded and openraft re-applies the committed log after it.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use quarry_common::catalog::Catalog;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::command::{self, Applied, CatalogError};
use crate::{NodeAddr, NodeId, TypeConfig};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const CURRENT: &str = "current";

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

/// A state-machine snapshot as stored in redb.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    /// postcard of the [`Catalog`].
    data: Vec<u8>,
}

/// The Raft state machine over a [`CatalogCell`].
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    cell: Arc<CatalogCell>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddr>,
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

fn write_stored(db: &Database, stored: &StoredSnapshot) -> StorageResult<()> {
    let signature = Some(stored.meta.signature());
    let err = |e: redb::Error| {
        io_error(
            ErrorSubject::Snapshot(signature.clone()),
            ErrorVerb::Write,
            e,
        )
    };
    let bytes = postcard::to_allocvec(stored).expect("encoding to a Vec cannot fail");
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        table
            .insert(CURRENT, bytes.as_slice())
            .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))
}

fn snapshot_of(stored: StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    }
}

impl StateMachine {
    /// Opens the state machine, loading the newest stored snapshot if any.
    pub fn open(db: Arc<Database>, cell: Arc<CatalogCell>) -> Result<Self, crate::Error> {
        let storage = |e: redb::Error| crate::Error::Storage(e.to_string());
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        txn.open_table(SNAPSHOT).map_err(|e| storage(e.into()))?;
        txn.commit().map_err(|e| storage(e.into()))?;
        let mut machine = StateMachine {
            db,
            cell,
            last_applied: None,
            last_membership: StoredMembership::default(),
        };
        if let Some(stored) = machine
            .read_stored()
            .map_err(|e| crate::Error::Storage(e.to_string()))?
        {
            let mut catalog: Catalog = postcard::from_bytes(&stored.data).map_err(|e| {
                crate::Error::Storage(format!("state-machine snapshot does not decode: {e}"))
            })?;
            catalog.reindex();
            machine.cell.set(Arc::new(catalog));
            machine.last_applied = stored.meta.last_log_id;
            machine.last_membership = stored.meta.last_membership;
        }
        Ok(machine)
    }

    fn read_stored(&self) -> StorageResult<Option<StoredSnapshot>> {
        let err = |e: redb::Error| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        let Some(bytes) = table.get(CURRENT).map_err(|e| err(e.into()))? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }
}

/// What one snapshot is built from: the catalog and the log position it
/// reflects, taken together when openraft asks for a builder. The builder runs
/// in its own task while entries keep being applied, so reading the catalog at
/// build time instead would store entries after `last_log_id`, and a restart
/// would apply them a second time.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    catalog: Arc<Catalog>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddr>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data =
            postcard::to_allocvec(self.catalog.as_ref()).expect("encoding to a Vec cannot fail");
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_owned(),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        write_stored(&self.db, &stored)?;
        Ok(snapshot_of(stored))
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
            catalog: self.cell.get(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let mut catalog: Catalog = postcard::from_bytes(&data).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        catalog.reindex();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_stored(&self.db, &stored)?;
        self.cell.set(Arc::new(catalog));
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_stored()?.map(snapshot_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Proposal};
    use openraft::{CommittedLeaderId, EntryPayload};

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

    #[tokio::test]
    async fn a_snapshot_holds_exactly_the_entries_up_to_its_last_log_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(Database::create(dir.path().join("meta.redb")).expect("redb"));
        let mut machine =
            StateMachine::open(db.clone(), Arc::new(CatalogCell::default())).expect("open");
        machine.apply([schema(1, "a")]).await.expect("apply");
        let mut builder = machine.get_snapshot_builder().await;
        // openraft builds in its own task; entries keep being applied meanwhile.
        machine.apply([schema(2, "b")]).await.expect("apply");
        let snapshot = builder.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(1));
        let stored: Catalog =
            postcard::from_bytes(snapshot.snapshot.get_ref()).expect("snapshot decodes");
        assert_eq!(
            stored.schemas.keys().collect::<Vec<_>>(),
            ["a"],
            "the snapshot must not hold entry 2, which a restart applies after it"
        );

        // A restart loads the snapshot and re-applies entry 2 exactly once.
        let mut restarted =
            StateMachine::open(db, Arc::new(CatalogCell::default())).expect("reopen");
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
}
