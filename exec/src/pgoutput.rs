//! Decoding of PostgreSQL's `pgoutput` logical replication messages, the
//! payload of each XLogData message a logical replication slot streams
//! (PostgreSQL 16 documentation, section 55.9, "Logical Replication Message
//! Formats"). Protocol version 1 messages, and the in-stream forms and
//! stream control messages of version 2 (a transaction streamed while still
//! in progress: its messages carry its xid).

use bytes::{Buf, Bytes};

/// A log sequence number: a byte position in the source's write-ahead log.
pub type Lsn = u64;

/// The text PostgreSQL writes for an LSN: two hexadecimal halves, `16/B374D848`.
pub fn lsn_text(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The LSN of PostgreSQL's text form (`16/B374D848`).
///
/// # Errors
/// When `text` is not two hexadecimal numbers separated by `/`.
pub fn parse_lsn(text: &str) -> Result<Lsn, DecodeError> {
    let bad = || DecodeError(format!("invalid LSN \"{text}\""));
    let (high, low) = text.split_once('/').ok_or_else(bad)?;
    let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
    let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
    Ok((u64::from(high) << 32) | u64::from(low))
}

/// A message that does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// One column's value in a row of an Insert, Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the change left as it was, which the message does
    /// not carry: the row's existing value stands.
    UnchangedToast,
    /// The value in the type's text format.
    Text(Bytes),
    /// The value in the type's binary format (`binary` publication option).
    Binary(Bytes),
}

/// A column of a relation as a Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key that
    /// Update and Delete messages name old rows by).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// The column type's oid on the source.
    pub type_oid: u32,
    /// Its type modifier (`atttypmod`; -1 for none).
    pub type_modifier: i32,
}

/// A relation's shape, sent before the first change to it in a session
/// and again after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid on the source.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `relreplident`: `d` (primary key), `n` (nothing), `f` (all columns)
    /// or `i` (an index).
    pub replica_identity: u8,
    /// Its columns in order.
    pub columns: Vec<RelationColumn>,
}

/// A pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction's start.
    Begin {
        /// The LSN of its commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Its transaction id.
        xid: u32,
    },
    /// A transaction's end.
    Commit {
        /// The LSN of its commit record.
        commit_lsn: Lsn,
        /// The LSN just past it: where a subscriber that applied it resumes.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// The origin of the transaction's changes (a transaction replicated
    /// into the source from elsewhere).
    Origin {
        /// The origin's commit LSN.
        lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// A relation's shape.
    Relation(Relation),
    /// A type's name, for a column of a type that is not built in.
    Type {
        /// The type's oid.
        oid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A new row.
    Insert {
        /// The relation's oid.
        relation: u32,
        /// The row.
        new: Vec<Value>,
    },
    /// A changed row.
    Update {
        /// The relation's oid.
        relation: u32,
        /// The old row's replica identity columns (`K`, when the key
        /// changed) or whole old row (`O`, replica identity FULL); None when
        /// the key did not change.
        old: Option<Vec<Value>>,
        /// The row as it is now (unchanged TOASTed values left out).
        new: Vec<Value>,
    },
    /// A deleted row.
    Delete {
        /// The relation's oid.
        relation: u32,
        /// Its replica identity columns, or the whole row (FULL).
        old: Vec<Value>,
    },
    /// TRUNCATE of one or more relations.
    Truncate {
        /// The relations' oids.
        relations: Vec<u32>,
        /// CASCADE was given.
        cascade: bool,
        /// RESTART IDENTITY was given.
        restart_identity: bool,
    },
    /// A message of `pg_logical_emit_message`.
    LogicalMessage {
        /// Whether it was emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// Protocol 2: the start of a block of an in-progress transaction's
    /// changes.
    StreamStart {
        /// The transaction.
        xid: u32,
        /// Whether this is its first block.
        first: bool,
    },
    /// Protocol 2: the end of a block.
    StreamStop,
    /// Protocol 2: a streamed transaction committed.
    StreamCommit {
        /// The transaction.
        xid: u32,
        /// The LSN of its commit record.
        commit_lsn: Lsn,
        /// The LSN just past it.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// Protocol 2: a streamed transaction, or one of its subtransactions,
    /// aborted.
    StreamAbort {
        /// The transaction.
        xid: u32,
        /// The (sub)transaction that aborted; `xid` when the whole did.
        subxid: u32,
    },
}

/// The (sub)transaction id a message inside a stream block carries
/// (protocol 2: Relation, Type, Insert, Update, Delete, Truncate and
/// transactional logical messages), or None for one that carries none.
pub fn streamed_xid(data: &[u8]) -> Option<u32> {
    match data.first()? {
        b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' => {
            Some(u32::from_be_bytes(data.get(1..5)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// Decodes one pgoutput message. `in_stream`: the message is inside a
/// StreamStart/StreamStop block (protocol 2), where change messages carry
/// the transaction's xid first; the decoder keeps no other state.
///
/// # Errors
/// [`DecodeError`] for an unknown message type or a message cut short.
pub fn decode(data: &[u8], in_stream: bool) -> Result<Message, DecodeError> {
    let mut buf = Reader(data);
    let tag = buf.u8()?;
    // Change and shape messages inside a stream carry the xid first.
    let streamed_xid = |buf: &mut Reader<'_>| -> Result<(), DecodeError> {
        if in_stream {
            buf.u32()?;
        }
        Ok(())
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: buf.u64()?,
            commit_time: buf.i64()?,
            xid: buf.u32()?,
        },
        b'C' => {
            let _flags = buf.u8()?;
            Message::Commit {
                commit_lsn: buf.u64()?,
                end_lsn: buf.u64()?,
                commit_time: buf.i64()?,
            }
        }
        b'O' => Message::Origin {
            lsn: buf.u64()?,
            name: buf.string()?,
        },
        b'R' => {
            streamed_xid(&mut buf)?;
            let oid = buf.u32()?;
            let namespace = buf.string()?;
            let name = buf.string()?;
            let replica_identity = buf.u8()?;
            let count = buf.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let flags = buf.u8()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: buf.string()?,
                    type_oid: buf.u32()?,
                    type_modifier: buf.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            streamed_xid(&mut buf)?;
            Message::Type {
                oid: buf.u32()?,
                namespace: buf.string()?,
                name: buf.string()?,
            }
        }
        b'I' => {
            streamed_xid(&mut buf)?;
            let relation = buf.u32()?;
            buf.expect(b'N')?;
            Message::Insert {
                relation,
                new: buf.tuple()?,
            }
        }
        b'U' => {
            streamed_xid(&mut buf)?;
            let relation = buf.u32()?;
            let mut old = None;
            let mut marker = buf.u8()?;
            if marker == b'K' || marker == b'O' {
                old = Some(buf.tuple()?);
                marker = buf.u8()?;
            }
            if marker != b'N' {
                return Err(DecodeError(format!(
                    "Update: expected 'N', found {:?}",
                    char::from(marker)
                )));
            }
            Message::Update {
                relation,
                old,
                new: buf.tuple()?,
            }
        }
        b'D' => {
            streamed_xid(&mut buf)?;
            let relation = buf.u32()?;
            let marker = buf.u8()?;
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError(format!(
                    "Delete: expected 'K' or 'O', found {:?}",
                    char::from(marker)
                )));
            }
            Message::Delete {
                relation,
                old: buf.tuple()?,
            }
        }
        b'T' => {
            streamed_xid(&mut buf)?;
            let count = buf.u32()?;
            let options = buf.u8()?;
            let relations = (0..count).map(|_| buf.u32()).collect::<Result<_, _>>()?;
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            streamed_xid(&mut buf)?;
            let transactional = buf.u8()? & 1 == 1;
            let lsn = buf.u64()?;
            let prefix = buf.string()?;
            let length = buf.u32()? as usize;
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: Bytes::copy_from_slice(buf.take(length)?),
            }
        }
        b'S' => Message::StreamStart {
            xid: buf.u32()?,
            first: buf.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = buf.u32()?;
            let _flags = buf.u8()?;
            Message::StreamCommit {
                xid,
                commit_lsn: buf.u64()?,
                end_lsn: buf.u64()?,
                commit_time: buf.i64()?,
            }
        }
        b'A' => Message::StreamAbort {
            xid: buf.u32()?,
            subxid: buf.u32()?,
        },
        other => {
            return Err(DecodeError(format!(
                "unknown message type {:?}",
                char::from(other)
            )));
        }
    };
    Ok(message)
}

/// A cursor over a message's bytes, each read checked against its length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "cut short: {n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(self.take(2)?.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.take(4)?.get_u32())
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.take(4)?.get_i32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(self.take(8)?.get_u64())
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.take(8)?.get_i64())
    }

    fn expect(&mut self, marker: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            found if found == marker => Ok(()),
            found => Err(DecodeError(format!(
                "expected {:?}, found {:?}",
                char::from(marker),
                char::from(found)
            ))),
        }
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("a string without its NUL".to_owned()))?;
        let text = String::from_utf8(self.0[..end].to_vec())
            .map_err(|e| DecodeError(format!("a string that is not UTF-8: {e}")))?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }

    /// TupleData: a column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let count = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let length = self.u32()? as usize;
                    let bytes = Bytes::copy_from_slice(self.take(length)?);
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown column kind {:?}",
                        char::from(other)
                    )));
                }
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_print_as_postgresql_writes_them() {
        assert_eq!(parse_lsn("16/B374D848"), Ok(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_text(0), "0/0");
        assert!(parse_lsn("16B374D848").is_err());
        assert!(parse_lsn("x/1").is_err());
    }

    #[test]
    fn a_message_cut_short_or_of_an_unknown_type_is_an_error() {
        // An Insert whose text value claims 5 bytes and has 2.
        let mut insert = vec![b'I', 0, 0, 0, 7, b'N', 0, 1, b't', 0, 0, 0, 5];
        insert.extend_from_slice(b"ab");
        assert!(decode(&insert, false).is_err());
        assert!(decode(b"Z", false).is_err());
        assert!(decode(b"", false).is_err());
        // An Update whose new row lacks its 'N'.
        assert!(decode(&[b'U', 0, 0, 0, 7, b'X', 0, 0], false).is_err());
    }

    #[test]
    fn streamed_changes_carry_their_xid_first() {
        // Insert of (NULL, unchanged TOAST) into relation 7 by xid 9.
        let message = [b'I', 0, 0, 0, 9, 0, 0, 0, 7, b'N', 0, 2, b'n', b'u'];
        assert_eq!(
            decode(&message, true),
            Ok(Message::Insert {
                relation: 7,
                new: vec![Value::Null, Value::UnchangedToast],
            })
        );
        assert!(
            decode(&message, false).is_err(),
            "read as unstreamed, 'N' is missing"
        );
        assert_eq!(streamed_xid(&message), Some(9));
        assert_eq!(streamed_xid(b"E"), None, "Stream Stop carries none");
        assert_eq!(streamed_xid(&[b'I', 0, 0]), None, "cut short");
    }
}
