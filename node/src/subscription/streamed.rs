//! Source transactions streamed while still in progress (pgoutput protocol
//! version 2 with `streaming 'on'`: PostgreSQL manual, section 55.5.3,
//! "Streaming of Large Transactions for Logical Decoding"). The source
//! sends such a transaction in blocks (Stream Start ... Stream Stop),
//! between which other transactions may commit, and ends it with Stream
//! Commit or Stream Abort; a Stream Abort may also abort one of its
//! subtransactions, whose changes were already sent.
//!
//! As PostgreSQL's own subscriber does (without parallel apply), each
//! streamed transaction's messages are spooled to a file of its own in the
//! node's spill directory, and read back at its commit in parts, so that
//! the applier holds at most a part in memory. The spools belong to one
//! replication connection: after a reconnection the source streams any
//! transaction still in progress again from its first block.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use quarry_exec::pgoutput;

use super::{ApplyError, Change};

/// The spools of the transactions being streamed.
pub(super) struct Streamed {
    dir: PathBuf,
    open: HashMap<u32, Spool>,
}

/// One streamed transaction's messages, as received.
pub(super) struct Spool {
    file: BufWriter<std::fs::File>,
    /// Its subtransactions that aborted: their changes are not applied.
    aborted: HashSet<u32>,
}

impl Streamed {
    /// Spools in `dir` (files without names, gone when closed).
    pub(super) fn new(dir: PathBuf) -> Streamed {
        Streamed {
            dir,
            open: HashMap::new(),
        }
    }

    /// Whether a streamed transaction is open: begun and neither committed
    /// nor aborted.
    pub(super) fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// A block of transaction `xid` starts; `first`: its first block.
    pub(super) fn start(&mut self, xid: u32, first: bool) -> Result<(), ApplyError> {
        if first {
            let file = tempfile::tempfile_in(&self.dir)
                .map_err(|e| format!("cannot spool a streamed transaction: {e}"))?;
            self.open.insert(
                xid,
                Spool {
                    file: BufWriter::with_capacity(256 * 1024, file),
                    aborted: HashSet::new(),
                },
            );
            Ok(())
        } else if self.open.contains_key(&xid) {
            Ok(())
        } else {
            Err(format!(
                "the source streamed a block of transaction {xid} without its first"
            ))
        }
    }

    /// Keeps `data`, a pgoutput message of a block of transaction `xid`.
    pub(super) fn keep(&mut self, xid: u32, data: &[u8]) -> Result<(), ApplyError> {
        let spool = self
            .open
            .get_mut(&xid)
            .ok_or_else(|| format!("a message of transaction {xid} outside its stream"))?;
        let length = u32::try_from(data.len()).map_err(|_| "a message over 4 GiB".to_owned())?;
        spool
            .file
            .write_all(&length.to_be_bytes())
            .and_then(|()| spool.file.write_all(data))
            .map_err(|e| format!("cannot spool a streamed transaction: {e}"))
    }

    /// Transaction `xid`'s subtransaction `subxid` aborted (or, when they
    /// are equal, the whole transaction).
    pub(super) fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            self.open.remove(&xid);
        } else if let Some(spool) = self.open.get_mut(&xid) {
            spool.aborted.insert(subxid);
        }
    }

    /// Transaction `xid` committed: its spool, to be read back.
    pub(super) fn commit(&mut self, xid: u32) -> Result<Changes, ApplyError> {
        let spool = self
            .open
            .remove(&xid)
            .ok_or_else(|| format!("the source committed transaction {xid}, never streamed"))?;
        let failed = |e: std::io::Error| format!("cannot read a spooled transaction: {e}");
        let mut file = spool
            .file
            .into_inner()
            .map_err(|e| failed(e.into_error()))?;
        std::io::Seek::rewind(&mut file).map_err(failed)?;
        Ok(Changes {
            file: BufReader::with_capacity(256 * 1024, file),
            aborted: spool.aborted,
        })
    }
}

/// A committed streamed transaction's changes, read back in order.
pub(super) struct Changes {
    file: BufReader<std::fs::File>,
    aborted: HashSet<u32>,
}

impl Changes {
    /// The next up to `most` changes (empty at the end), without those of
    /// aborted subtransactions. Relation messages are all kept: a
    /// relation's shape sent within an aborted subtransaction still holds
    /// for what follows, as the source will not send it again.
    pub(super) fn next_part(&mut self, most: usize) -> Result<Vec<Change>, ApplyError> {
        let failed = |e: std::io::Error| format!("cannot read a spooled transaction: {e}");
        let mut part = Vec::new();
        let mut length = [0u8; 4];
        while part.len() < most {
            match self.file.read_exact(&mut length) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(failed(e)),
            }
            let mut data = vec![0u8; u32::from_be_bytes(length) as usize];
            self.file.read_exact(&mut data).map_err(failed)?;
            let message = pgoutput::decode(&data, true).map_err(|e| e.to_string())?;
            let aborted = pgoutput::streamed_xid(&data).is_some_and(|x| self.aborted.contains(&x));
            if let Some(change) = Change::of(message)
                && (!aborted || matches!(change, Change::Relation(_)))
            {
                part.push(change);
            }
        }
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-stream Insert of `value` into relation 7 by (sub)transaction
    /// `xid`.
    fn insert(xid: u32, value: &str) -> Vec<u8> {
        let mut data = vec![b'I'];
        data.extend_from_slice(&xid.to_be_bytes());
        data.extend_from_slice(&7u32.to_be_bytes());
        data.push(b'N');
        data.extend_from_slice(&1u16.to_be_bytes());
        data.push(b't');
        data.extend_from_slice(&(value.len() as u32).to_be_bytes());
        data.extend_from_slice(value.as_bytes());
        data
    }

    fn values(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::Insert(7, row) => format!("{row:?}"),
                _ => "other".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_committed_stream_reads_back_in_parts_without_aborted_subtransactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut streamed = Streamed::new(dir.path().to_path_buf());
        assert!(
            streamed.start(100, false).is_err(),
            "a block without its first"
        );
        streamed.start(100, true).unwrap();
        streamed.keep(100, &insert(100, "a")).unwrap();
        streamed.keep(100, &insert(101, "aborted")).unwrap();
        streamed.start(200, true).unwrap();
        streamed
            .keep(200, &insert(200, "other transaction"))
            .unwrap();
        streamed.start(100, false).unwrap();
        streamed.keep(100, &insert(102, "b")).unwrap();
        streamed.keep(100, &insert(100, "c")).unwrap();
        streamed.abort(100, 101);
        streamed.abort(200, 200);
        assert!(streamed.any_open());
        let mut changes = streamed.commit(100).unwrap();
        assert!(!streamed.any_open(), "transaction 200 aborted whole");
        let first = changes.next_part(2).unwrap();
        let second = changes.next_part(2).unwrap();
        assert_eq!(values(&first), ["[Text(b\"a\")]", "[Text(b\"b\")]"]);
        assert_eq!(values(&second), ["[Text(b\"c\")]"]);
        assert!(changes.next_part(2).unwrap().is_empty());
        assert!(streamed.commit(200).is_err(), "aborted, not committable");
    }
}
