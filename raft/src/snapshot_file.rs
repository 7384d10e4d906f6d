//! The state-machine snapshot as a file, written and read record by record.
//!
//! A snapshot is the whole [`Catalog`] at one log position. It is written as a
//! sequence of records (one per table, dropped table and stripe) so that
//! neither building, sending nor installing it ever holds more than one record's
//! encoding in memory: openraft streams the file to a lagging follower in chunks
//! (`snapshot_max_chunk_size`), and the follower writes the chunks to a file
//! before decoding it.
//!
//! Layout (all integers little-endian; see `storage/FORMAT.md` §"Raft snapshot file"):
//!
//! ```text
//! magic "QSNP" | u32 format version (1)
//! record*      : u32 length | u32 crc32c of the body | body (postcard of `Record`)
//! ```
//!
//! The first record is `Header`, then one record per table, dropped table,
//! stripe, view, table notes, role and object ACL, the gossip key, token, channel,
//! buffered file, external source, partitioned table and file layout; the last is `End` with the number of records
//! before it, so a truncated file is refused rather than read as a smaller
//! catalog.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use quarry_common::catalog::{
    Catalog, ChunkId, CompositeType, DeletionVector, DroppedTable, ExternalSource, FieldId,
    GossipKey, Maintenance, NodeId, PendingChannel, Rebalance, RowRange, SchemaId, SnapshotId,
    Stripe, Table, TableId, TableNotes, View,
};
use quarry_common::partition::{FileLayout, Partitioning};
use quarry_common::roles::{AccessToken, Acl, Role, Securable};
use quarry_common::subscription::Subscription;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"QSNP";
const VERSION: u32 = 1;
/// Largest record accepted when reading (a table with a very long history is
/// the biggest record); guards the allocation against a corrupt length.
const RECORD_BYTES_MAX: usize = 1 << 30;

/// One record of the file. Writing borrows from the catalog; reading owns.
/// One record exists at a time, so the header's size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum Record<'a> {
    Header {
        schemas: Cow<'a, BTreeMap<String, SchemaId>>,
        next_id: u64,
        last_commit_at: i64,
        cluster_id: u128,
        next_node_id: NodeId,
    },
    Table {
        schema: Cow<'a, str>,
        name: Cow<'a, str>,
        table: Cow<'a, Table>,
    },
    Dropped(Cow<'a, DroppedTable>),
    Stripe(Cow<'a, Stripe>),
    End {
        records: u64,
    },
    /// Written before `End`; new variants go last, so files written before
    /// views existed still read.
    View(Cow<'a, View>),
    /// The comments and constraints of one table (or dropped table).
    Notes {
        table: TableId,
        notes: Cow<'a, TableNotes>,
    },
    /// A role.
    Role(Cow<'a, Role>),
    /// The owner and grants of one object.
    Acl {
        object: Cow<'a, Securable>,
        acl: Cow<'a, Acl>,
    },
    /// The cluster's gossip key.
    GossipKey(GossipKey),
    /// An access token of the HTTP API (its secret's hash only).
    Token(Cow<'a, AccessToken>),
    /// The next row offset of one channel of a table's streaming API.
    Channel {
        table: TableId,
        channel: Cow<'a, str>,
        next_offset: u64,
    },
    /// The Parquet bytes of one file in a table's ingest buffer.
    Buffered {
        table: TableId,
        chunk: ChunkId,
        bytes: bytes::Bytes,
    },
    /// Where the rows of one buffered file moved by the compactor are.
    Moved {
        table: TableId,
        chunk: ChunkId,
        ranges: Cow<'a, [RowRange]>,
    },
    /// The source of one external table (live or dropped).
    External {
        table: TableId,
        source: Cow<'a, ExternalSource>,
    },
    /// One pending channel of a table's streaming API.
    Pending {
        table: TableId,
        channel: Cow<'a, str>,
        pending: Cow<'a, PendingChannel>,
    },
    /// One node's maintenance mark.
    Maintenance {
        node: NodeId,
        mark: Maintenance,
    },
    /// The newest rebalance.
    Rebalance(Cow<'a, Rebalance>),
    /// One node being decommissioned, since when.
    Decommissioning {
        node: NodeId,
        since: quarry_common::catalog::TimestampMicros,
    },
    /// How one table (live or dropped) is partitioned.
    Partitioning {
        table: TableId,
        partitioning: Cow<'a, Partitioning>,
    },
    /// How one table's (live or dropped) data files are laid out.
    FileLayout {
        table: TableId,
        layout: Cow<'a, FileLayout>,
    },
    /// One deletion vector of one data file of a table (live or dropped),
    /// a roaring bitmap in its portable serialization; a file's vectors
    /// are written oldest first.
    Deletes {
        table: TableId,
        chunk: ChunkId,
        snapshot: SnapshotId,
        rows: bytes::Bytes,
    },
    /// A named composite type.
    Type(Cow<'a, CompositeType>),
    /// A field of a table (live or dropped) declared as a named composite
    /// type, by the type's id.
    TypedField {
        table: TableId,
        field: FieldId,
        type_id: u64,
    },
    /// A subscription (its password included: the snapshot file, as the
    /// Raft log, holds the catalog whole).
    Subscription(Cow<'a, Subscription>),
}

/// A table's ingest buffer and moved buffered files, as read from their
/// records (applied to the table once all tables are read).
type BufferRecords = BTreeMap<TableId, TableRecords>;

/// The records of one table's fields kept outside its own record.
#[derive(Default)]
struct TableRecords {
    buffered: Vec<(ChunkId, bytes::Bytes)>,
    moved: Vec<(ChunkId, Vec<RowRange>)>,
    partitioning: Option<Arc<Partitioning>>,
    file_layout: Option<Arc<FileLayout>>,
    deletes: Vec<(ChunkId, DeletionVector)>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

struct RecordWriter<W: Write> {
    out: W,
    records: u64,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    fn put(&mut self, record: &Record<'_>) -> io::Result<()> {
        self.buf.clear();
        let body = postcard::to_io(record, &mut self.buf)
            .map_err(|e| invalid(format!("snapshot record does not encode: {e}")))?;
        let len = u32::try_from(body.len())
            .map_err(|_| invalid("a snapshot record is larger than 4 GiB"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc32c::crc32c(body).to_le_bytes())?;
        self.out.write_all(body)?;
        self.records += 1;
        Ok(())
    }
}

/// Writes `catalog` to `out` in the snapshot file layout.
///
/// # Errors
/// Any error of `out`.
pub fn write(catalog: &Catalog, out: impl Write) -> io::Result<()> {
    // Destructured whole so that a field added to `Catalog` does not compile
    // until it is written here (and read back in `read`).
    let Catalog {
        schemas,
        tables,
        table_keys: _,
        next_id,
        last_commit_at,
        dropped,
        cluster_id,
        next_node_id,
        stripes,
        stripe_of: _,
        views,
        notes,
        roles,
        acls,
        gossip_key,
        tokens,
        channels,
        pending,
        external,
        maintenance,
        rebalance,
        decommissioning,
        types,
        typed_fields,
        subscriptions,
    } = catalog;
    let mut out = BufWriter::new(out);
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    let mut writer = RecordWriter {
        out,
        records: 0,
        buf: Vec::new(),
    };
    writer.put(&Record::Header {
        schemas: Cow::Borrowed(schemas),
        next_id: *next_id,
        last_commit_at: *last_commit_at,
        cluster_id: *cluster_id,
        next_node_id: *next_node_id,
    })?;
    for ((schema, name), table) in tables {
        writer.put(&Record::Table {
            schema: Cow::Borrowed(schema),
            name: Cow::Borrowed(name),
            table: Cow::Borrowed(table.as_ref()),
        })?;
    }
    for table in dropped {
        writer.put(&Record::Dropped(Cow::Borrowed(table)))?;
    }
    for stripe in stripes.values() {
        writer.put(&Record::Stripe(Cow::Borrowed(stripe)))?;
    }
    for view in views.values() {
        writer.put(&Record::View(Cow::Borrowed(view.as_ref())))?;
    }
    for (table, table_notes) in notes {
        writer.put(&Record::Notes {
            table: *table,
            notes: Cow::Borrowed(table_notes.as_ref()),
        })?;
    }
    for role in roles.values() {
        writer.put(&Record::Role(Cow::Borrowed(role.as_ref())))?;
    }
    for (object, acl) in acls {
        writer.put(&Record::Acl {
            object: Cow::Borrowed(object),
            acl: Cow::Borrowed(acl.as_ref()),
        })?;
    }
    if let Some(key) = gossip_key {
        writer.put(&Record::GossipKey(*key))?;
    }
    for token in tokens.values() {
        writer.put(&Record::Token(Cow::Borrowed(token.as_ref())))?;
    }
    for ((table, channel), next_offset) in channels {
        writer.put(&Record::Channel {
            table: *table,
            channel: Cow::Borrowed(channel),
            next_offset: *next_offset,
        })?;
    }
    for ((table, channel), channel_pending) in pending {
        writer.put(&Record::Pending {
            table: *table,
            channel: Cow::Borrowed(channel),
            pending: Cow::Borrowed(channel_pending.as_ref()),
        })?;
    }
    for (table, source) in external {
        writer.put(&Record::External {
            table: *table,
            source: Cow::Borrowed(source.as_ref()),
        })?;
    }
    for (node, mark) in maintenance {
        writer.put(&Record::Maintenance {
            node: *node,
            mark: *mark,
        })?;
    }
    if let Some(rebalance) = rebalance {
        writer.put(&Record::Rebalance(Cow::Borrowed(rebalance.as_ref())))?;
    }
    for (node, since) in decommissioning {
        writer.put(&Record::Decommissioning {
            node: *node,
            since: *since,
        })?;
    }
    for composite in types.values() {
        writer.put(&Record::Type(Cow::Borrowed(composite.as_ref())))?;
    }
    for subscription in subscriptions.values() {
        writer.put(&Record::Subscription(Cow::Borrowed(subscription.as_ref())))?;
    }
    for ((table, field), type_id) in typed_fields {
        writer.put(&Record::TypedField {
            table: *table,
            field: *field,
            type_id: *type_id,
        })?;
    }
    let every_table = tables
        .values()
        .map(|t| t.as_ref())
        .chain(dropped.iter().map(|d| d.table.as_ref()));
    for table in every_table {
        for (chunk, bytes) in &table.buffer {
            writer.put(&Record::Buffered {
                table: table.id,
                chunk: *chunk,
                bytes: bytes.clone(),
            })?;
        }
        for (chunk, ranges) in &table.moved {
            writer.put(&Record::Moved {
                table: table.id,
                chunk: *chunk,
                ranges: Cow::Borrowed(ranges),
            })?;
        }
        if let Some(partitioning) = &table.partitioning {
            writer.put(&Record::Partitioning {
                table: table.id,
                partitioning: Cow::Borrowed(partitioning.as_ref()),
            })?;
        }
        if let Some(layout) = &table.file_layout {
            writer.put(&Record::FileLayout {
                table: table.id,
                layout: Cow::Borrowed(layout.as_ref()),
            })?;
        }
        for (chunk, history) in &table.deletes {
            for vector in history {
                writer.put(&Record::Deletes {
                    table: table.id,
                    chunk: *chunk,
                    snapshot: vector.snapshot,
                    rows: crate::command::encode_rows(&vector.rows),
                })?;
            }
        }
    }
    let records = writer.records;
    writer.put(&Record::End { records })?;
    writer.out.flush()
}

/// Reads a catalog written by [`write`], with its derived indexes rebuilt.
///
/// # Errors
/// `InvalidData` if the file is not a snapshot of a known version, a record's
/// checksum does not match, or the file ends before its `End` record.
pub fn read(input: impl Read) -> io::Result<Catalog> {
    let mut input = BufReader::new(input);
    let mut head = [0u8; 8];
    input.read_exact(&mut head)?;
    if &head[..4] != MAGIC {
        return Err(invalid("not a Quarry Raft snapshot file"));
    }
    let version = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(invalid(format!(
            "Raft snapshot file version {version}; this build reads version {VERSION}"
        )));
    }
    let mut catalog = Catalog::default();
    let mut records = 0u64;
    let mut header = false;
    let mut body = Vec::new();
    let mut buffers = BufferRecords::new();
    loop {
        let mut frame = [0u8; 8];
        input.read_exact(&mut frame).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                invalid("the snapshot file ends before its last record")
            }
            _ => e,
        })?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len > RECORD_BYTES_MAX {
            return Err(invalid(format!(
                "snapshot record {records} claims {len} bytes"
            )));
        }
        body.resize(len, 0);
        input.read_exact(&mut body)?;
        if crc32c::crc32c(&body) != crc {
            return Err(invalid(format!(
                "snapshot record {records} does not match its checksum"
            )));
        }
        let record: Record<'static> = postcard::from_bytes(&body)
            .map_err(|e| invalid(format!("snapshot record {records} does not decode: {e}")))?;
        match record {
            Record::Header {
                schemas,
                next_id,
                last_commit_at,
                cluster_id,
                next_node_id,
            } if records == 0 => {
                catalog.schemas = schemas.into_owned();
                catalog.next_id = next_id;
                catalog.last_commit_at = last_commit_at;
                catalog.cluster_id = cluster_id;
                catalog.next_node_id = next_node_id;
                header = true;
            }
            Record::Header { .. } => return Err(invalid("a second snapshot header")),
            _ if !header => return Err(invalid("the snapshot file has no header")),
            Record::Table {
                schema,
                name,
                table,
            } => catalog.insert_table(
                (schema.into_owned(), name.into_owned()),
                Arc::new(table.into_owned()),
            ),
            Record::Dropped(table) => catalog.dropped.push(table.into_owned()),
            Record::Stripe(stripe) => catalog.add_stripe(stripe.into_owned()),
            Record::View(view) => {
                let view = view.into_owned();
                catalog
                    .views
                    .insert((view.schema.clone(), view.name.clone()), Arc::new(view));
            }
            Record::Notes { table, notes } => {
                catalog.notes.insert(table, Arc::new(notes.into_owned()));
            }
            Record::Role(role) => {
                let role = role.into_owned();
                catalog.roles.insert(role.name.clone(), Arc::new(role));
            }
            Record::Acl { object, acl } => {
                catalog
                    .acls
                    .insert(object.into_owned(), Arc::new(acl.into_owned()));
            }
            Record::GossipKey(key) => catalog.gossip_key = Some(key),
            Record::Maintenance { node, mark } => {
                catalog.maintenance.insert(node, mark);
            }
            Record::Rebalance(rebalance) => {
                catalog.rebalance = Some(Arc::new(rebalance.into_owned()));
            }
            Record::Decommissioning { node, since } => {
                catalog.decommissioning.insert(node, since);
            }
            Record::Token(token) => {
                let token = token.into_owned();
                catalog.tokens.insert(token.id.clone(), Arc::new(token));
            }
            Record::Channel {
                table,
                channel,
                next_offset,
            } => {
                catalog
                    .channels
                    .insert((table, channel.into_owned()), next_offset);
            }
            Record::Buffered {
                table,
                chunk,
                bytes,
            } => buffers
                .entry(table)
                .or_default()
                .buffered
                .push((chunk, bytes)),
            Record::Moved {
                table,
                chunk,
                ranges,
            } => buffers
                .entry(table)
                .or_default()
                .moved
                .push((chunk, ranges.into_owned())),
            Record::Partitioning {
                table,
                partitioning,
            } => {
                buffers.entry(table).or_default().partitioning =
                    Some(Arc::new(partitioning.into_owned()));
            }
            Record::FileLayout { table, layout } => {
                buffers.entry(table).or_default().file_layout = Some(Arc::new(layout.into_owned()));
            }
            Record::Deletes {
                table,
                chunk,
                snapshot,
                rows,
            } => {
                let rows = crate::command::decode_rows(&rows)
                    .map_err(|e| invalid(format!("table {table}, data file {chunk}: {e}")))?;
                buffers.entry(table).or_default().deletes.push((
                    chunk,
                    DeletionVector {
                        snapshot,
                        rows: Arc::new(rows),
                    },
                ));
            }
            Record::Type(composite) => {
                let composite = composite.into_owned();
                catalog.types.insert(
                    (composite.schema.clone(), composite.name.clone()),
                    Arc::new(composite),
                );
            }
            Record::TypedField {
                table,
                field,
                type_id,
            } => {
                catalog.typed_fields.insert((table, field), type_id);
            }
            Record::Subscription(subscription) => {
                let subscription = subscription.into_owned();
                catalog
                    .subscriptions
                    .insert(subscription.name.clone(), Arc::new(subscription));
            }
            Record::External { table, source } => {
                catalog
                    .external
                    .insert(table, Arc::new(source.into_owned()));
            }
            Record::Pending {
                table,
                channel,
                pending,
            } => {
                catalog.pending.insert(
                    (table, channel.into_owned()),
                    Arc::new(pending.into_owned()),
                );
            }
            Record::End { records: written } => {
                if written != records {
                    return Err(invalid(format!(
                        "the snapshot file says {written} records, it holds {records}"
                    )));
                }
                restore_buffers(&mut catalog, buffers);
                catalog.reindex();
                return Ok(catalog);
            }
        }
        records += 1;
    }
}

/// Puts the ingest buffers, moved buffered files and partitionings read
/// from their records back into their tables (live or dropped).
fn restore_buffers(catalog: &mut Catalog, mut buffers: BufferRecords) {
    if buffers.is_empty() {
        return;
    }
    let mut restore = |table: &mut Arc<Table>| {
        if let Some(records) = buffers.remove(&table.id) {
            let table = Arc::make_mut(table);
            table.buffer.extend(records.buffered);
            table.moved.extend(records.moved);
            table.partitioning = records.partitioning;
            table.file_layout = records.file_layout;
            for (chunk, vector) in records.deletes {
                table.deletes.entry(chunk).or_default().push_back(vector);
            }
        }
    };
    let keys: Vec<(String, String)> = catalog.tables.keys().cloned().collect();
    for key in keys {
        restore(catalog.tables.get_mut(&key).expect("a key just listed"));
    }
    for dropped in &mut catalog.dropped {
        restore(&mut dropped.table);
    }
}

/// Writes `catalog` to `path` and makes it durable (the file, then its
/// directory entry).
///
/// # Errors
/// Any I/O error.
pub fn write_file(catalog: &Catalog, path: &Path) -> io::Result<()> {
    let file = std::fs::File::create(path)?;
    write(catalog, &file)?;
    file.sync_all()?;
    sync_dir(path)
}

/// Reads the catalog of the snapshot file at `path`.
///
/// # Errors
/// As [`read`], naming the file.
pub fn read_file(path: &Path) -> io::Result<Catalog> {
    let file = std::fs::File::open(path)?;
    read(file).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Makes the directory entry of `path` durable.
///
/// # Errors
/// Any I/O error opening or syncing the directory.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::{create, run, with_public};
    use crate::command::{Command, TableChange};
    use quarry_common::catalog::{DataFile, StripeChunk};

    fn ok(catalog: &mut Catalog, command: Command) {
        run(catalog, command).expect("command applies");
    }

    /// Three tables (one with a data file in a stripe), one dropped table,
    /// one view.
    fn catalog() -> Catalog {
        let mut catalog = with_public();
        for name in ["t0", "t1", "t2", "gone"] {
            ok(&mut catalog, create(name));
        }
        ok(
            &mut catalog,
            Command::SetFileLayout {
                schema: "public".into(),
                name: "t0".into(),
                layout: FileLayout {
                    cluster_by: vec![1],
                    bloom_filters: vec![1],
                },
            },
        );
        // A partitioned table, and a dropped one.
        for name in ["t2", "gone"] {
            ok(
                &mut catalog,
                Command::SetPartitioning {
                    schema: "public".into(),
                    name: name.into(),
                    partitioning: crate::command::tests::range_partitioning(),
                },
            );
        }
        let chunk = |id: u128| StripeChunk {
            chunk: ChunkId(id),
            node: 1,
            size_bytes: 10,
            checksum_crc32c: 1,
        };
        let t1 = catalog.table("public", "t1").expect("t1").id;
        ok(
            &mut catalog,
            Command::Commit {
                changes: vec![TableChange {
                    table: t1,
                    added: vec![DataFile {
                        chunk: ChunkId(101),
                        size_bytes: 10,
                        checksum_crc32c: 1,
                        row_count: 3,
                        column_stats: vec![],
                    }],
                    removed: vec![],
                    stripes: vec![Stripe {
                        id: ChunkId(100),
                        data_chunks: 1,
                        chunks: vec![chunk(101), chunk(102)],
                    }],
                }],
                read_set: vec![],
            },
        );
        ok(
            &mut catalog,
            Command::DropTable {
                schema: "public".into(),
                name: "gone".into(),
                if_exists: false,
            },
        );
        ok(
            &mut catalog,
            Command::CreateView {
                view: View {
                    schema: "public".into(),
                    name: "v".into(),
                    query: "SELECT a FROM t1".into(),
                    columns: vec!["a".into()],
                    created_at: 0,
                },
                or_replace: false,
            },
        );
        ok(
            &mut catalog,
            Command::Comment {
                schema: "public".into(),
                table: "t1".into(),
                column: None,
                comment: Some("kept in its own record".into()),
            },
        );
        ok(
            &mut catalog,
            Command::CreateRole {
                name: "alice".into(),
                options: crate::command::RoleOptions {
                    login: Some(true),
                    password: Some(Some(quarry_common::roles::ScramVerifier {
                        iterations: 4096,
                        salt: vec![1; 16],
                        stored_key: [2; 32],
                        server_key: [3; 32],
                    })),
                    ..Default::default()
                },
            },
        );
        ok(
            &mut catalog,
            Command::SetPrivileges {
                objects: vec![quarry_common::roles::Securable::Table(t1)],
                grantees: vec!["alice".into()],
                privileges: quarry_common::roles::Privileges::SELECT,
                granted: true,
            },
        );
        ok(
            &mut catalog,
            Command::CreateSubscription({
                let mut s = quarry_common::subscription::Subscription::new(
                    "sub",
                    "alice",
                    "host=127.0.0.1".into(),
                    Some("kept".into()),
                    vec!["p".into()],
                );
                s.phase = quarry_common::subscription::SubscriptionPhase::Streaming;
                s.tables = vec![quarry_common::subscription::SubscribedTable {
                    source_schema: "public".into(),
                    source_name: "t1".into(),
                    table: t1,
                    copied_at: 40,
                    columns: vec![quarry_common::subscription::SourceColumn {
                        name: "a".into(),
                        type_oid: 1700,
                        type_modifier: (12 << 16 | 2) + 4,
                    }],
                }];
                s.applied_lsn = 42;
                s.source_wal_end = 50;
                s.refresh = Some(true);
                s.rows_applied = 3;
                s
            }),
        );
        // A composite type, and a column of t1 declared as it.
        let fields = vec![quarry_common::catalog::NestedField {
            field_id: 0,
            name: "zip".into(),
            column_type: quarry_common::catalog::ColumnType::Int32,
        }];
        ok(
            &mut catalog,
            Command::CreateType {
                schema: "public".into(),
                name: "address".into(),
                fields: fields.clone(),
            },
        );
        ok(
            &mut catalog,
            Command::Batch(vec![
                Command::AlterTable {
                    table: t1,
                    change: crate::command::SchemaChange::AddColumn(crate::command::ColumnDef {
                        name: "home".into(),
                        column_type: quarry_common::catalog::ColumnType::Struct(fields),
                        nullable: true,
                        default: None,
                    }),
                },
                Command::DeclareTypes {
                    schema: "public".into(),
                    table: "t1".into(),
                    fields: vec![(vec!["home".into()], "public".into(), "address".into())],
                },
            ]),
        );
        catalog
    }

    #[test]
    fn a_catalog_reads_back_equal_with_its_indexes() {
        let catalog = catalog();
        assert_eq!(catalog.tables.len(), 3);
        assert_eq!(catalog.dropped.len(), 1);
        assert!(
            catalog
                .table("public", "t2")
                .expect("t2")
                .partitioning
                .is_some()
        );
        assert!(catalog.dropped[0].table.partitioning.is_some());
        assert!(
            catalog
                .table("public", "t0")
                .expect("t0")
                .file_layout
                .is_some()
        );
        assert_eq!(catalog.views.len(), 1);
        assert_eq!(catalog.notes.len(), 1);
        assert_eq!(catalog.roles.len(), 1);
        assert_eq!(catalog.acls.len(), 1);
        assert_eq!(catalog.types.len(), 1);
        let t1 = catalog.table("public", "t1").expect("t1");
        let home = t1.column("home").expect("home").field_id;
        assert!(catalog.composite_of(t1, home).is_some());
        let mut catalog = catalog;
        ok(
            &mut catalog,
            Command::SetGossipKey {
                key: GossipKey([9; 32]),
            },
        );
        let t1 = catalog.table("public", "t1").expect("t1").id;
        ok(
            &mut catalog,
            Command::Append {
                change: TableChange {
                    table: t1,
                    added: vec![DataFile {
                        chunk: ChunkId(103),
                        size_bytes: 10,
                        checksum_crc32c: 1,
                        row_count: 4,
                        column_stats: vec![],
                    }],
                    removed: vec![],
                    stripes: vec![],
                },
                channel: "writer-1".into(),
                offset: 0,
                skipped: 0,
            },
        );
        assert_eq!(catalog.channels.len(), 1);
        // Two buffered files, the first then moved into a data file.
        let buffered = |chunk: u128| DataFile {
            chunk: ChunkId(chunk),
            size_bytes: 3,
            checksum_crc32c: 7,
            row_count: 2,
            column_stats: vec![],
        };
        for (chunk, offset) in [(104, 4), (105, 6)] {
            ok(
                &mut catalog,
                Command::AppendBuffered {
                    table: t1,
                    file: buffered(chunk),
                    bytes: bytes::Bytes::from(vec![chunk as u8; 3]),
                    channel: "writer-1".into(),
                    offset,
                    skipped: 0,
                },
            );
        }
        let range = RowRange {
            chunk: ChunkId(106),
            size_bytes: 10,
            checksum_crc32c: 1,
            first_row: 0,
            rows: 2,
        };
        ok(
            &mut catalog,
            Command::MoveBuffered {
                change: TableChange {
                    table: t1,
                    added: vec![DataFile {
                        chunk: ChunkId(106),
                        size_bytes: 10,
                        checksum_crc32c: 1,
                        row_count: 2,
                        column_stats: vec![],
                    }],
                    removed: vec![ChunkId(104)],
                    stripes: vec![],
                },
                moved: vec![(ChunkId(104), vec![range])],
            },
        );
        // A pending channel.
        ok(
            &mut catalog,
            Command::AppendPending {
                change: TableChange {
                    table: t1,
                    added: vec![DataFile {
                        chunk: ChunkId(107),
                        size_bytes: 10,
                        checksum_crc32c: 1,
                        row_count: 5,
                        column_stats: vec![],
                    }],
                    removed: vec![],
                    stripes: vec![],
                },
                channel: "load-1".into(),
                offset: 0,
                skipped: 1,
            },
        );
        assert_eq!(catalog.pending.len(), 1);
        // An external table.
        ok(&mut catalog, crate::command::tests::create("ext"));
        ok(
            &mut catalog,
            Command::SetExternalSource {
                schema: "public".into(),
                name: "ext".into(),
                source: ExternalSource {
                    format: quarry_common::catalog::FileFormat::Csv,
                    uris: vec!["/data/*.csv".into()],
                    skip_leading_rows: 1,
                },
            },
        );
        // A node in maintenance.
        let mark = Maintenance {
            since: 5,
            deadline_secs: 60,
        };
        ok(
            &mut catalog,
            Command::SetMaintenance {
                node: 2,
                maintenance: Some(mark),
            },
        );
        // A rebalance under way and a node being decommissioned.
        ok(
            &mut catalog,
            Command::StartRebalance {
                rebalance: Rebalance {
                    planned_at: 7,
                    reason: "test".into(),
                    moves: vec![quarry_common::catalog::PlannedMove {
                        stripe: ChunkId(1),
                        index: 0,
                        from: 1,
                        to: 2,
                        bytes: 10,
                        moved_at: None,
                    }],
                    finished_at: None,
                },
            },
        );
        ok(&mut catalog, Command::Decommission { node: 3 });
        let table = catalog.table("public", "t1").expect("t1");
        assert_eq!(table.buffer.keys().collect::<Vec<_>>(), [&ChunkId(105)]);
        assert_eq!(table.moved.len(), 1);
        let mut bytes = Vec::new();
        write(&catalog, &mut bytes).expect("write");
        let back = read(bytes.as_slice()).expect("read");
        assert_eq!(back, catalog);
        assert_eq!(back.table_keys, catalog.table_keys);
        assert_eq!(back.types, catalog.types);
        assert_eq!(back.typed_fields, catalog.typed_fields);
        assert_eq!(back.subscriptions, catalog.subscriptions);
        assert_eq!(back.subscriptions.len(), 1);
        assert_eq!(back.maintenance.get(&2), Some(&mark));
        assert_eq!(back.rebalance.as_ref().map(|r| r.moves.len()), Some(1));
        assert!(back.decommissioning.contains_key(&3));
        let t1 = back.table("public", "t1").expect("t1");
        assert_eq!(
            t1.live_files,
            catalog.table("public", "t1").expect("t1").live_files
        );
        assert_eq!(t1.buffer[&ChunkId(105)], bytes::Bytes::from(vec![105u8; 3]));
        assert_eq!(t1.moved[&ChunkId(104)], vec![range]);
        // The committed file, the channel's, the buffered one and the one
        // the other moved into.
        assert_eq!(t1.live_files.len(), 4);
        assert_eq!(back.channels, catalog.channels);
        assert_eq!(back.pending, catalog.pending);
        assert_eq!(back.external.len(), 1);
        assert_eq!(back.external, catalog.external);
        assert_eq!(
            back.stripe_of(ChunkId(101)).map(|s| s.id),
            Some(ChunkId(100))
        );
    }

    #[test]
    fn a_truncated_or_damaged_file_is_refused() {
        let mut bytes = Vec::new();
        write(&catalog(), &mut bytes).expect("write");
        for cut in [4, 8, 20, bytes.len() - 1] {
            let error = read(&bytes[..cut]).expect_err("a cut file");
            assert!(
                matches!(
                    error.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "cut at {cut}: {error}"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 12;
        flipped[last] ^= 1;
        let error = read(flipped.as_slice()).expect_err("a flipped bit");
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
