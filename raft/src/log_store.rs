//! The Raft log, vote and committed log id in redb.
//!
//! Tables of `meta.redb`:
//! - `raft_log`: log index → postcard of the entry.
//! - `raft_state`: `"vote"`, `"committed"`, `"last_purged"` → postcard values.
//!
//! Every write is one redb transaction committed with immediate durability (fsync),
//! so an append is on disk before openraft is told it is flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");

/// Version of the layout and encodings of `meta.redb` (storage/FORMAT.md).
/// Version 2 keeps the state-machine snapshot in a file; a version 1 store
/// (snapshot inside redb) is upgraded when it opens, and older builds refuse
/// a version 2 store rather than miss its snapshot.
pub const FORMAT_VERSION: u32 = 2;

/// The version before the snapshot file, upgraded in place.
const FORMAT_VERSION_SNAPSHOT_IN_REDB: u32 = 1;

const FORMAT: &str = "format_version";
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl Fn(redb::Error) -> StorageError<NodeId> {
    move |e| StorageError::IO {
        source: StorageIOError::new(subject.clone(), verb, AnyError::new(&e)),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to a Vec cannot fail")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::IO {
        source: StorageIOError::new(subject, ErrorVerb::Read, AnyError::new(&e)),
    })
}

/// Raft log storage over a shared redb database. Cloning shares the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens the log tables of `db`, creating them (stamped with
    /// [`FORMAT_VERSION`]) if absent.
    ///
    /// # Errors
    /// [`crate::Error::Storage`] if redb fails or the file has another format version.
    pub fn open(db: Arc<Database>) -> Result<Self, crate::Error> {
        let storage = |e: redb::Error| crate::Error::Storage(e.to_string());
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        txn.open_table(LOG).map_err(|e| storage(e.into()))?;
        {
            let mut state = txn.open_table(STATE).map_err(|e| storage(e.into()))?;
            let found = state
                .get(FORMAT)
                .map_err(|e| storage(e.into()))?
                .map(|v| postcard::from_bytes::<u32>(v.value()));
            match found {
                None | Some(Ok(FORMAT_VERSION_SNAPSHOT_IN_REDB)) => {
                    state
                        .insert(FORMAT, encode(&FORMAT_VERSION).as_slice())
                        .map_err(|e| storage(e.into()))?;
                }
                Some(Ok(FORMAT_VERSION)) => {}
                Some(other) => {
                    return Err(crate::Error::Storage(format!(
                        "meta.redb has format version {other:?}; this quarry reads version {FORMAT_VERSION}"
                    )));
                }
            }
        }
        txn.commit().map_err(|e| storage(e.into()))?;
        Ok(LogStore { db })
    }

    fn read_state<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let err = storage_error(ErrorSubject::Store, ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(STATE).map_err(|e| err(e.into()))?;
        match table.get(key).map_err(|e| err(e.into()))? {
            Some(bytes) => decode(bytes.value(), ErrorSubject::Store).map(Some),
            None => Ok(None),
        }
    }

    fn write_state<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let err = storage_error(subject, ErrorVerb::Write);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(STATE).map_err(|e| err(e.into()))?;
            table
                .insert(key, encode(value).as_slice())
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let err = storage_error(ErrorSubject::Logs, ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(LOG).map_err(|e| err(e.into()))?;
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in table
            .range::<u64>((start, end))
            .map_err(|e| err(e.into()))?
        {
            let (_, value) = item.map_err(|e| err(e.into()))?;
            entries.push(decode(value.value(), ErrorSubject::Logs)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_state(LAST_PURGED)?;
        let err = storage_error(ErrorSubject::Logs, ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(LOG).map_err(|e| err(e.into()))?;
        let last = match table.last().map_err(|e| err(e.into()))? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = decode(value.value(), ErrorSubject::Logs)?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_state(VOTE, vote, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_state(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_state(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let err = storage_error(ErrorSubject::Logs, ErrorVerb::Write);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(LOG).map_err(|e| err(e.into()))?;
            for entry in entries {
                table
                    .insert(entry.log_id.index, encode(&entry).as_slice())
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let err = storage_error(ErrorSubject::Logs, ErrorVerb::Delete);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(LOG).map_err(|e| err(e.into()))?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let err = storage_error(ErrorSubject::Logs, ErrorVerb::Delete);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut state = txn.open_table(STATE).map_err(|e| err(e.into()))?;
            state
                .insert(LAST_PURGED, encode(&log_id).as_slice())
                .map_err(|e| err(e.into()))?;
            let mut table = txn.open_table(LOG).map_err(|e| err(e.into()))?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}
