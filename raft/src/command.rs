//! Catalog commands: what a Raft log entry asks of the state machine, and the pure
//! logic that applies one to a [`Catalog`].
//!
//! Applying is deterministic: the same command on the same catalog gives the same
//! result on every replica. The commit time comes from the proposer's clock
//! ([`Proposal::proposed_at`]) and is forced to increase strictly.

use std::sync::Arc;

use quarry_common::SqlState;
use quarry_common::catalog::{
    Catalog, ChunkId, Column, ColumnType, CompositeType, Constraint, ConstraintKind, DataFile,
    Datum, DroppedTable, ExternalSource, FieldId, GossipKey, Maintenance, NestedField, NodeId,
    Operation, PendingChannel, Rebalance, RowRange, SchemaVersion, SnapshotId, Stripe, StripeChunk,
    StripeId, StripeLayout, Table, TableId, TableNotes, TableSnapshot, TimestampMicros, View,
};
use quarry_common::partition::{FileLayout, MAX_CLUSTER_COLUMNS, Partitioning};
use quarry_common::roles::{AccessToken, Privileges, RoleId, Securable};
use quarry_common::subscription::{Progress, Subscription};
use serde::{Deserialize, Serialize};

mod roles;
pub use roles::{PUBLIC_NAME, RoleOptions};

/// A command with the time its proposer sent it: the Raft log entry payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The change.
    pub command: Command,
    /// Proposer's wall clock when proposing; commit times derive from it.
    pub proposed_at: TimestampMicros,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.command)
    }
}

/// A column of a table being created or altered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Value type.
    pub column_type: ColumnType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// DEFAULT value, also the value of existing rows for ADD COLUMN.
    pub default: Option<Datum>,
}

/// A change of a table's definition (ALTER TABLE). None rewrites data files:
/// columns are matched to data by field id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SchemaChange {
    /// ADD COLUMN: a new field id; older files read as its default.
    AddColumn(ColumnDef),
    /// DROP COLUMN: the field id is never reused.
    DropColumn(String),
    /// RENAME COLUMN.
    RenameColumn {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// RENAME TO.
    RenameTable(String),
    /// ALTER COLUMN ... TYPE, widening only: SMALLINT → INTEGER → BIGINT,
    /// REAL → DOUBLE PRECISION, NUMERIC(p,s) → NUMERIC(p',s) with p' >= p.
    SetType {
        /// The column.
        column: String,
        /// The wider type.
        column_type: ColumnType,
    },
}

/// A change to the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// CREATE SCHEMA.
    CreateSchema {
        /// Schema name.
        name: String,
        /// IF NOT EXISTS: an existing schema is not an error.
        if_not_exists: bool,
    },
    /// DROP SCHEMA.
    DropSchema {
        /// Schema name.
        name: String,
        /// IF EXISTS: a missing schema is not an error.
        if_exists: bool,
        /// CASCADE: drop its tables too (else a non-empty schema is an error).
        cascade: bool,
    },
    /// CREATE TABLE, optionally with its first data (CREATE TABLE AS).
    CreateTable {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// Columns in order; field ids are assigned 1, 2, ...
        columns: Vec<ColumnDef>,
        /// IF NOT EXISTS: an existing table is not an error (and `files` are not added).
        if_not_exists: bool,
        /// Data files of the first snapshot (empty for a plain CREATE TABLE).
        files: Vec<DataFile>,
        /// Time travel window; None: the default.
        retention_micros: Option<i64>,
        /// Field ids of `columns` (a clone keeps its source's, which its files
        /// carry); empty: 1, 2, ...
        field_ids: Vec<u32>,
        /// `WITH (data_chunks = k, parity_chunks = m)`; None: the cluster default.
        layout: Option<StripeLayout>,
        /// Placement of `files` (new stripes; a clone's files keep theirs).
        stripes: Vec<Stripe>,
    },
    /// DROP TABLE.
    DropTable {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// IF EXISTS: a missing table is not an error.
        if_exists: bool,
    },
    /// Commit a transaction: data changes to any number of tables, applied all
    /// together as one new snapshot of each changed table, or not at all.
    ///
    /// Conflicts follow first-committer-wins: a change that removes a data file
    /// some commit already removed fails, as does (for SERIALIZABLE) a table in
    /// `read_set` that changed since it was read. Pure appends never conflict.
    Commit {
        /// One entry per changed table.
        changes: Vec<TableChange>,
        /// Tables the transaction read, with the snapshot it read each at; empty
        /// unless the transaction is SERIALIZABLE.
        read_set: Vec<(TableId, SnapshotId)>,
    },
    /// UNDROP TABLE: restore the most recently dropped table of that name, with
    /// its history.
    UndropTable {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
    },
    /// Forget a dropped table for good (its window has passed).
    PurgeDropped {
        /// The dropped table's id.
        table: TableId,
    },
    /// ALTER TABLE: a new version of the columns and a snapshot that has it.
    AlterTable {
        /// The table.
        table: TableId,
        /// What changes.
        change: SchemaChange,
    },
    /// Forget a table's snapshots older than `keep_from` and the data files only
    /// they used (the retention collector; its clock decides `keep_from`).
    ExpireSnapshots {
        /// The table.
        table: TableId,
        /// The oldest snapshot kept.
        keep_from: SnapshotId,
    },
    /// The first command of a new cluster: its id. Node 1 (the bootstrapping
    /// node) exists from here on.
    InitCluster {
        /// The new cluster's id.
        cluster_id: u128,
    },
    /// Assign the next node id to a joining node.
    AllocateNodeId,
    /// Record that chunk `index` of `stripe` moved from node `from` to node
    /// `to` (repair rebuilt it there, or a rebalance copied it there).
    /// Refused if the chunk is no longer on `from`, so two movers cannot
    /// both move it.
    MoveChunk {
        /// The stripe.
        stripe: StripeId,
        /// Position of the chunk in the stripe.
        index: u8,
        /// Where it was.
        from: NodeId,
        /// Where it is now.
        to: NodeId,
    },
    /// Replace the parity chunks of `stripe` (widening a stripe formed
    /// narrow while nodes were down). Refused if its parity chunks are no
    /// longer `expected`, so two widenings cannot race.
    ReplaceParity {
        /// The stripe.
        stripe: StripeId,
        /// Its parity chunks as the proposer saw them.
        expected: Vec<ChunkId>,
        /// The new parity chunks, already stored on their nodes.
        parity: Vec<StripeChunk>,
    },
    /// Replace the stripes `old` by one stripe `new` whose data chunks are
    /// theirs (unmoved) and whose parity is new: narrow stripes regrouped to
    /// the full width. Refused unless the old stripes still exist and their
    /// data chunks are exactly `new`'s.
    Regroup {
        /// The stripes replaced.
        old: Vec<StripeId>,
        /// The stripe replacing them, parity already stored.
        new: Stripe,
    },
    /// CREATE [OR REPLACE] VIEW. A replacement keeps the view's columns in
    /// order and may add some at the end (PostgreSQL's rule).
    CreateView {
        /// The view.
        view: View,
        /// OR REPLACE: an existing view of that name is replaced.
        or_replace: bool,
    },
    /// DROP VIEW.
    DropView {
        /// Schema name.
        schema: String,
        /// View name.
        name: String,
        /// IF EXISTS: a missing view is not an error.
        if_exists: bool,
    },
    /// ALTER VIEW ... RENAME TO.
    RenameView {
        /// Schema name.
        schema: String,
        /// View name.
        name: String,
        /// The new name.
        to: String,
    },
    /// COMMENT ON TABLE / COLUMN; `comment` None removes it.
    Comment {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
        /// The column, for COMMENT ON COLUMN.
        column: Option<String>,
        /// The comment.
        comment: Option<String>,
    },
    /// ALTER TABLE ... ADD CONSTRAINT (and each constraint of CREATE TABLE).
    AddConstraint {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
        /// The constraint.
        constraint: ConstraintDef,
    },
    /// ALTER TABLE ... DROP CONSTRAINT.
    DropConstraint {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
        /// The constraint's name.
        name: String,
        /// IF EXISTS: a missing constraint is not an error.
        if_exists: bool,
        /// CASCADE: foreign keys that reference it are dropped too (else
        /// they make it an error).
        cascade: bool,
    },
    /// Several commands applied in order as one: all of them, or none (on
    /// the first error the catalog is unchanged). CREATE TABLE with its
    /// constraints; ALTER TABLE with several actions.
    Batch(Vec<Command>),
    /// COMMIT of a transaction block that changed definitions: its DDL, in
    /// the order it ran, then its data [`Command::Commit`], applied as one
    /// (all or none), as PostgreSQL's transactional DDL.
    ///
    /// The block ran its DDL on its own snapshot of the catalog, where each
    /// CREATE TABLE took an id (`provisional`, in order); here the tables
    /// take the catalog's next ids instead, and every later command naming a
    /// provisional id is rewritten to the real one. A CREATE TABLE that
    /// creates nothing here (or one more than the block saw) makes the
    /// whole transaction fail, so a provisional id never reaches another
    /// table.
    Transaction {
        /// Tables the block read and the snapshot it read each at, checked
        /// before anything applies; empty unless it is SERIALIZABLE.
        read_set: Vec<(TableId, SnapshotId)>,
        /// Tables that existed before the block and that its ALTER TABLEs
        /// changed, with the schema id they had then. Each must still have
        /// it: an ALTER committed meanwhile would give the block's new
        /// columns other field ids than the block's data files were
        /// written with (PostgreSQL makes the second ALTER wait for a lock;
        /// here the later COMMIT fails, 40001).
        altered: Vec<(TableId, u32)>,
        /// The DDL, then the data commit.
        commands: Vec<Command>,
        /// The ids the block's CREATE TABLEs took on its snapshot, in order.
        provisional: Vec<TableId>,
    },
    /// CREATE ROLE / CREATE USER.
    CreateRole {
        /// The new role's name.
        name: String,
        /// Its attributes.
        options: RoleOptions,
    },
    /// ALTER ROLE ... [WITH] options.
    AlterRole {
        /// The role.
        name: String,
        /// What changes.
        options: RoleOptions,
    },
    /// ALTER ROLE ... RENAME TO.
    RenameRole {
        /// The role.
        name: String,
        /// Its new name.
        to: String,
    },
    /// Creates the predefined roles the catalog lacks
    /// ([`quarry_common::roles::PREDEFINED_ROLES`]); proposed when the
    /// cluster starts.
    CreatePredefinedRoles,
    /// DROP ROLE: refused while it owns objects or holds privileges.
    DropRole {
        /// The role.
        name: String,
        /// IF EXISTS: a missing role is not an error.
        if_exists: bool,
    },
    /// GRANT role TO member (`granted`) or REVOKE role FROM member.
    SetMembership {
        /// The role granted.
        role: String,
        /// The role that becomes (or stops being) its member.
        member: String,
        /// GRANT (true) or REVOKE (false).
        granted: bool,
    },
    /// GRANT privileges ON objects TO grantees (`granted`), or REVOKE.
    SetPrivileges {
        /// The objects.
        objects: Vec<Securable>,
        /// Role names; `public` stands for PUBLIC.
        grantees: Vec<String>,
        /// The privileges.
        privileges: Privileges,
        /// GRANT (true) or REVOKE (false).
        granted: bool,
    },
    /// ALTER ... OWNER TO.
    SetOwner {
        /// The object.
        object: Securable,
        /// The new owner's name.
        owner: String,
    },
    /// Sets the cluster's gossip key, unless it has one (the first node to
    /// propose one wins; later proposals change nothing).
    SetGossipKey {
        /// The key.
        key: GossipKey,
    },
    /// CREATE ACCESS TOKEN: a bearer token of the HTTP API for its role.
    CreateToken {
        /// The token (its secret's hash only).
        token: AccessToken,
    },
    /// DROP ACCESS TOKEN.
    DropToken {
        /// The role whose token it is.
        role: RoleId,
        /// The token's name.
        name: String,
        /// IF EXISTS: a missing token is not an error.
        if_exists: bool,
    },
    /// A CREATE SCHEMA, TABLE or VIEW whose new object `owner` owns.
    Owned {
        /// The creating role.
        owner: RoleId,
        /// The CREATE.
        command: Box<Command>,
    },
    /// Rows of one channel of the streaming API: `change` (files added to
    /// one table, none removed) commits as an append if the channel's next
    /// offset is `offset`, and moves it past the rows added, in the same
    /// command; otherwise nothing changes ([`CatalogError::ChannelOffset`]).
    Append {
        /// The table's new files.
        change: TableChange,
        /// The channel, named by the writer.
        channel: String,
        /// The channel's row offset of the first row added.
        offset: u64,
        /// Rows the channel's offsets cover past the rows added: bad rows a
        /// load skipped (`max_bad_rows`), counted so that an offset stays
        /// the writer's position in its source.
        skipped: u64,
    },
    /// Rows of one channel of the streaming API held in the table's ingest
    /// buffer: `file` is added to table `table` with its Parquet bytes kept
    /// in the catalog (no stripe), if the channel's next offset is `offset`,
    /// which moves past the file's rows in the same command; otherwise
    /// nothing changes ([`CatalogError::ChannelOffset`]).
    AppendBuffered {
        /// The table.
        table: TableId,
        /// The buffered data file.
        file: DataFile,
        /// Its Parquet bytes.
        bytes: bytes::Bytes,
        /// The channel, named by the writer.
        channel: String,
        /// The channel's row offset of the first row added.
        offset: u64,
        /// Bad rows skipped, as [`Command::Append`]'s.
        skipped: u64,
    },
    /// The compactor's move of buffered files into data files: `change`
    /// adds the new files and removes the buffered ones, and `moved` says,
    /// for each buffered file removed, where its rows are now, so that the
    /// snapshots that still read it do not need its bytes. Refused when a
    /// removed file is not in the buffer or its rows are not all placed.
    MoveBuffered {
        /// The new data files and the buffered files they replace.
        change: TableChange,
        /// Each buffered file's rows, in order, in the new files.
        moved: Vec<(ChunkId, Vec<RowRange>)>,
    },
    /// Rows of a pending channel (BigQuery's PENDING write stream): the
    /// data files of `change` (added only, with their stripes) are kept
    /// with the channel, durable but in no snapshot, if the channel's next
    /// offset is `offset` ([`CatalogError::ChannelOffset`] otherwise); a
    /// channel that is not pending and has rows refuses them
    /// ([`CatalogError::ChannelState`]).
    AppendPending {
        /// The files and their stripes.
        change: TableChange,
        /// The channel, named by the writer.
        channel: String,
        /// The channel's row offset of the first row added.
        offset: u64,
        /// Bad rows skipped, as [`Command::Append`]'s.
        skipped: u64,
    },
    /// Commits every row of pending channels `channels` of table `table`
    /// in one snapshot (BigQuery's BatchCommitWriteStreams); each channel
    /// then holds its next offset as any other. A channel committed before
    /// (a retry) adds nothing; one never written refuses the whole commit
    /// ([`CatalogError::ChannelNotFound`]).
    CommitPending {
        /// The table.
        table: TableId,
        /// The channels.
        channels: Vec<String>,
    },
    /// Forgets pending channel `channel` of table `table` and releases its
    /// files' chunks ([`Applied::Expired`]); nothing for a channel that is
    /// not pending.
    DiscardPending {
        /// The table.
        table: TableId,
        /// The channel.
        channel: String,
    },
    /// Makes table `schema.name`, just created and holding no data file,
    /// an external table reading `source` (CREATE EXTERNAL TABLE: proposed
    /// in one batch with its CREATE TABLE). Its rows can then not be
    /// changed ([`CatalogError::ExternalTable`]).
    SetExternalSource {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// The files it reads.
        source: ExternalSource,
    },
    /// [`Command::Commit`] whose small added files are held in the tables'
    /// ingest buffers: `buffered` gives the Parquet bytes of some of the
    /// files `changes` adds (no stripe places them). Refused, with nothing
    /// changed, when a buffered chunk is not a file the changes add
    /// ([`CatalogError::BufferedFile`]).
    CommitBuffered {
        /// One entry per changed table, as [`Command::Commit`]'s.
        changes: Vec<TableChange>,
        /// As [`Command::Commit`]'s.
        read_set: Vec<(TableId, SnapshotId)>,
        /// The buffered files' bytes, by chunk.
        buffered: Vec<(ChunkId, bytes::Bytes)>,
    },
    /// Buffered files that no snapshot from now on reads (replaced by a
    /// DELETE, UPDATE or MERGE, kept for time travel) now in stripes: their
    /// bytes, stored under the same chunk ids, leave the catalog's memory.
    /// Refused, with nothing changed, unless each of `files` is in table
    /// `table`'s buffer and removed from its current snapshot
    /// ([`CatalogError::BufferMove`]).
    SpillBuffered {
        /// The table.
        table: TableId,
        /// The buffered files' chunks.
        files: Vec<ChunkId>,
        /// Where they are stored now.
        stripes: Vec<Stripe>,
    },
    /// `ALTER NODE n DRAIN` (Some) or `ALTER NODE n RESUME` (None): marks
    /// or clears node `node`'s maintenance ([`Catalog::maintenance`]).
    SetMaintenance {
        /// The node.
        node: NodeId,
        /// The mark; None clears it.
        maintenance: Option<Maintenance>,
    },
    /// Begin a rebalance the leader planned ([`Catalog::rebalance`]).
    /// Refused while another is under way, so two leaders cannot both
    /// plan; each `MoveChunk` that makes one of its moves marks it made.
    StartRebalance {
        /// The plan, no move made yet.
        rebalance: Rebalance,
    },
    /// End the rebalance planned at `planned_at` (its moves not made are
    /// given up). Refused if it is not the one under way.
    FinishRebalance {
        /// The rebalance's id.
        planned_at: TimestampMicros,
    },
    /// `ALTER NODE n DECOMMISSION`: node `node` takes no new chunks and its
    /// chunks are to move away ([`Catalog::decommissioning`]). Ends the
    /// rebalance under way, so that the next plan empties the node.
    Decommission {
        /// The node.
        node: NodeId,
    },
    /// `RESTORE FROM 'dir'`: the catalog of a backup, as a Raft snapshot
    /// file whose stripes are those the restore just wrote, replaces this
    /// cluster's objects (tables, snapshots, views, roles, ...); the
    /// cluster's own identity, node marks and gossip key stay. Refused
    /// unless the cluster holds no table, view or stripe.
    Restore {
        /// The catalog, in the Raft snapshot file format.
        snapshot: Vec<u8>,
    },
    /// Makes table `schema.name`, just created (it has one snapshot, whose
    /// files were written for this partitioning), a partitioned table
    /// (CREATE TABLE ... PARTITION BY: proposed in one batch with its
    /// CREATE TABLE). Set once; [`CatalogError::Partitioning`] otherwise.
    SetPartitioning {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// How its rows are divided.
        partitioning: Partitioning,
    },
    /// Gives table `schema.name`, just created (one snapshot, whose files
    /// were written for this layout), the order and indexes of its data
    /// files (CREATE TABLE ... CLUSTER BY; proposed in one batch with its
    /// CREATE TABLE). Set once; [`CatalogError::Partitioning`] otherwise.
    SetFileLayout {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// The layout.
        layout: FileLayout,
    },
    /// `commit` (a [`Command::Commit`] or [`Command::CommitBuffered`])
    /// that also deletes rows of committed data files by deletion vectors
    /// (merge-on-read DELETE and UPDATE), in the same new snapshot of each
    /// table, applied all together or not at all.
    ///
    /// Conflicts are decided per row: deleting a row some commit deleted
    /// first, or a row of a file some commit removed, fails
    /// ([`CatalogError::SerializationFailure`]); rows of one file that two
    /// transactions delete apart both go. A file `commit` removes must
    /// have no deletion vector newer than the snapshot its table was read
    /// at (`read_at`): the rewrite, made from the rows it read, would bring
    /// those rows back.
    CommitRows {
        /// The commit of the files added and removed; it names every table
        /// of `deletes` (with no files, if need be).
        commit: Box<Command>,
        /// The rows deleted.
        deletes: Vec<RowDeletes>,
        /// Each changed table and the snapshot the transaction read it at.
        read_at: Vec<(TableId, SnapshotId)>,
    },
    /// Gives table `schema.name`, just created as a CLONE, its source's
    /// deletion vectors as of the snapshot cloned, by chunk (each a roaring
    /// bitmap in its portable serialization), in its creation snapshot
    /// (proposed in one batch with its CREATE TABLE).
    /// [`CatalogError::Partitioning`] when the table has more than one
    /// snapshot or a chunk is not one of its files.
    SetDeletes {
        /// Schema name.
        schema: String,
        /// Table name.
        name: String,
        /// The deleted rows of each file.
        deletes: Vec<(ChunkId, bytes::Bytes)>,
    },
    /// CREATE TYPE `schema.name` AS (fields): a named composite type.
    /// [`CatalogError::TypeExists`] when a type or relation has the name.
    CreateType {
        /// Schema name.
        schema: String,
        /// Type name.
        name: String,
        /// Its fields in order.
        fields: Vec<NestedField>,
    },
    /// DROP TYPE; [`CatalogError::TypeInUse`] while a field of a table is
    /// declared as it.
    DropType {
        /// Schema name.
        schema: String,
        /// Type name.
        name: String,
        /// IF EXISTS: a missing type is not an error.
        if_exists: bool,
    },
    /// CREATE SUBSCRIPTION; [`CatalogError::SubscriptionExists`] for a
    /// name in use.
    CreateSubscription(Subscription),
    /// DROP SUBSCRIPTION (its applier stops and drops its slot first).
    DropSubscription {
        /// Its name.
        name: String,
        /// IF EXISTS: a missing subscription is not an error.
        if_exists: bool,
    },
    /// ALTER SUBSCRIPTION ... ENABLE | DISABLE | CONNECTION | REFRESH
    /// PUBLICATION.
    AlterSubscription {
        /// Its name.
        name: String,
        /// ENABLE (true) or DISABLE (false).
        enabled: Option<bool>,
        /// CONNECTION: the new connection string (without its password)
        /// and password.
        connection: Option<(String, Option<String>)>,
        /// REFRESH PUBLICATION with its `copy_data`: the applier adds the
        /// tables added to the publications (copied if `copy_data`) and
        /// follows them from then on.
        refresh: Option<bool>,
    },
    /// Moves a subscription's applied position (proposed in one batch with
    /// the commit of the source transaction's rows, so the rows and the
    /// position commit together or not at all);
    /// [`CatalogError::SubscriptionMoved`] when the position is no longer
    /// the one the applier read.
    AdvanceSubscription(Progress),
    /// Records the error that stopped a subscription's applier.
    SubscriptionFailed {
        /// Its name.
        name: String,
        /// The error (never the connection's password).
        error: String,
    },
    /// Declares fields of table `schema.table` as named composite types
    /// (proposed in one batch with the CREATE TABLE or ALTER TABLE that
    /// gives them their struct types).
    DeclareTypes {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
        /// Each field, as the names from its column down (an array's
        /// element is `item`), and the (schema, name) of its type.
        fields: Vec<(Vec<String>, String, String)>,
    },
}

/// Rows of one committed data file that a commit deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowDeletes {
    /// The table.
    pub table: TableId,
    /// The data file.
    pub chunk: ChunkId,
    /// The rows' positions in the file, as a roaring bitmap in its portable
    /// serialization (<https://github.com/RoaringBitmap/RoaringFormatSpec>).
    pub rows: bytes::Bytes,
}

/// A roaring bitmap in its portable serialization.
pub fn encode_rows(rows: &roaring::RoaringBitmap) -> bytes::Bytes {
    let mut out = Vec::with_capacity(rows.serialized_size());
    rows.serialize_into(&mut out)
        .expect("writing to a Vec does not fail");
    out.into()
}

/// The roaring bitmap `bytes` holds ([`encode_rows`]).
///
/// # Errors
/// [`CatalogError::BadRows`] when the bytes are not one.
pub fn decode_rows(bytes: &[u8]) -> Result<roaring::RoaringBitmap, CatalogError> {
    roaring::RoaringBitmap::deserialize_from(bytes)
        .map_err(|e| CatalogError::BadRows(e.to_string()))
}

impl Command {
    /// Rewrites the table ids this command names by `ids`; a provisional
    /// id with no real one yet (None) is a serialization failure.
    fn remap_tables(
        &mut self,
        ids: &std::collections::HashMap<TableId, Option<TableId>>,
    ) -> Result<(), CatalogError> {
        let map = |id: &mut TableId| -> Result<(), CatalogError> {
            match ids.get(id) {
                None => Ok(()),
                Some(Some(real)) => {
                    *id = *real;
                    Ok(())
                }
                Some(None) => Err(CatalogError::SerializationFailure(format!("table id {id}"))),
            }
        };
        match self {
            Command::AlterTable { table, .. }
            | Command::ExpireSnapshots { table, .. }
            | Command::PurgeDropped { table } => map(table),
            Command::Commit { changes, read_set }
            | Command::CommitBuffered {
                changes, read_set, ..
            } => {
                for change in changes {
                    map(&mut change.table)?;
                }
                for (table, _) in read_set {
                    map(table)?;
                }
                Ok(())
            }
            Command::Batch(commands) | Command::Transaction { commands, .. } => commands
                .iter_mut()
                .try_for_each(|command| command.remap_tables(ids)),
            // The tables an initial copy created in the same transaction.
            Command::AdvanceSubscription(progress) => progress
                .tables
                .iter_mut()
                .flatten()
                .try_for_each(|t| map(&mut t.table)),
            Command::CommitRows {
                commit,
                deletes,
                read_at,
            } => {
                commit.remap_tables(ids)?;
                for delete in deletes {
                    map(&mut delete.table)?;
                }
                for (table, _) in read_at {
                    map(table)?;
                }
                Ok(())
            }
            Command::Owned { command, .. } => command.remap_tables(ids),
            Command::Append { change, .. }
            | Command::MoveBuffered { change, .. }
            | Command::AppendPending { change, .. } => map(&mut change.table),
            Command::AppendBuffered { table, .. }
            | Command::SpillBuffered { table, .. }
            | Command::CommitPending { table, .. }
            | Command::DiscardPending { table, .. } => map(table),
            Command::SetPrivileges { objects, .. } => {
                for object in objects {
                    if let Securable::Table(id) = object {
                        map(id)?;
                    }
                }
                Ok(())
            }
            Command::SetOwner {
                object: Securable::Table(id),
                ..
            } => map(id),
            _ => Ok(()),
        }
    }
}

/// The tables `command` created, as `applied` reports it, in order (a
/// [`Command::Transaction`]'s `provisional`).
pub fn created_tables(command: &Command, applied: &Applied) -> Vec<TableId> {
    match (command, applied) {
        (Command::CreateTable { .. }, Applied::Snapshot { table, .. }) => vec![*table],
        (Command::Owned { command, .. }, applied) => created_tables(command, applied),
        (
            Command::Batch(commands) | Command::Transaction { commands, .. },
            Applied::Batch(applied),
        ) => commands
            .iter()
            .zip(applied)
            .flat_map(|(command, applied)| created_tables(command, applied))
            .collect(),
        _ => Vec::new(),
    }
}

/// A constraint as DDL declares it, by column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstraintDef {
    /// Its name; None: PostgreSQL's default (`t_pkey`, `t_a_key`, `t_a_fkey`).
    pub name: Option<String>,
    /// What it declares.
    pub kind: ConstraintDefKind,
}

/// The kinds of [`ConstraintDef`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConstraintDefKind {
    /// PRIMARY KEY (columns).
    PrimaryKey(Vec<String>),
    /// UNIQUE (columns).
    Unique(Vec<String>),
    /// FOREIGN KEY (columns) REFERENCES schema.table [(columns)].
    ForeignKey {
        /// The referencing columns.
        columns: Vec<String>,
        /// The referenced table's schema.
        schema: String,
        /// The referenced table.
        table: String,
        /// The referenced columns; empty: the referenced table's primary key.
        referenced: Vec<String>,
    },
}

/// The data change a commit makes to one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChange {
    /// The table, by id, so a table dropped and re-created meanwhile is not hit.
    pub table: TableId,
    /// New data files (INSERT, COPY, and the rewritten files of DELETE/UPDATE).
    pub added: Vec<DataFile>,
    /// Data files the change replaces (DELETE/UPDATE rewrite whole files).
    pub removed: Vec<ChunkId>,
    /// Placement of the `added` files.
    pub stripes: Vec<Stripe>,
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing changed (IF [NOT] EXISTS matched, or a Raft-internal entry).
    Nothing,
    /// A schema was created or dropped.
    Schema,
    /// A transaction committed: the snapshot id of every table it changed.
    Commit {
        /// The new snapshots' id.
        snapshot: SnapshotId,
        /// Their commit time.
        committed_at: TimestampMicros,
    },
    /// Snapshots expired; these data files left the table (their chunks may
    /// still belong to a clone).
    Expired {
        /// The chunks of the files removed from the table's history.
        chunks: Vec<ChunkId>,
    },
    /// A node id was assigned.
    NodeId(NodeId),
    /// A batch applied: what each of its commands did, in order.
    Batch(Vec<Applied>),
    /// A table was created or dropped: its new snapshot.
    Snapshot {
        /// The table.
        table: TableId,
        /// The snapshot the commit created (0 for DROP).
        snapshot: SnapshotId,
        /// Its commit time.
        committed_at: TimestampMicros,
    },
}

/// A command refused by the catalog; the catalog is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CatalogError {
    /// CREATE SCHEMA of an existing name.
    #[error("schema \"{0}\" already exists")]
    SchemaExists(String),
    /// A schema that does not exist.
    #[error("schema \"{0}\" does not exist")]
    SchemaNotFound(String),
    /// DROP SCHEMA without CASCADE of a schema with tables.
    #[error("cannot drop schema \"{0}\" because other objects depend on it")]
    SchemaNotEmpty(String),
    /// CREATE TABLE of an existing name.
    #[error("relation \"{0}\" already exists")]
    TableExists(String),
    /// A table that does not exist (or was dropped meanwhile).
    #[error("relation \"{0}\" does not exist")]
    TableNotFound(String),
    /// Two columns of one table with the same name.
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    /// A table needs at least one column.
    #[error("a table must have at least one column")]
    NoColumns,
    /// A concurrent commit changed what this one read or rewrote (retry the
    /// transaction).
    #[error("could not serialize access due to concurrent update of \"{0}\"")]
    SerializationFailure(String),
    /// UNDROP TABLE with no dropped table of that name left.
    #[error(
        "no dropped table \"{0}\" to restore (dropped tables are kept for their time travel window)"
    )]
    NothingToUndrop(String),
    /// A column that does not exist.
    #[error("column \"{0}\" does not exist")]
    ColumnNotFound(String),
    /// A type change that could lose data.
    #[error("column \"{column}\" cannot change from {from} to {to}: only widening is allowed")]
    NarrowingTypeChange {
        /// The column.
        column: String,
        /// Its type.
        from: ColumnType,
        /// The type asked for.
        to: ColumnType,
    },
    /// DROP COLUMN of the last column.
    #[error("cannot drop the last column of a table")]
    LastColumn,
    /// One commit named the same table twice (a bug in the proposer).
    #[error("one commit changes table \"{0}\" twice")]
    DuplicateChange(String),
    /// RESTORE into a cluster that holds objects.
    #[error("RESTORE needs an empty cluster: this one holds tables, views or data files")]
    RestoreIntoNonEmpty,
    /// A backup's catalog does not decode.
    #[error("the backup's catalog cannot be read: {0}")]
    BadBackup(String),
    /// A rebalance was planned while another was under way.
    #[error("the rebalance planned at {0} is still under way")]
    RebalanceUnderWay(TimestampMicros),
    /// The rebalance to finish is not the one under way.
    #[error("the rebalance planned at {0} is not under way")]
    RebalanceChanged(TimestampMicros),
    /// A placement change raced another (the chunk moved or its stripe is gone).
    #[error("chunk {index} of stripe {stripe} is no longer on node {from}")]
    PlacementChanged {
        /// The stripe.
        stripe: StripeId,
        /// The chunk's position.
        index: u8,
        /// The node the change expected.
        from: NodeId,
    },
    /// A parity change raced another (the stripe's parity changed or it is gone).
    #[error("the parity chunks of stripe {0} changed meanwhile")]
    ParityChanged(StripeId),
    /// A stripe layout out of range.
    #[error("invalid stripe layout {0}: data_chunks must be 1 to 32 and parity_chunks 0 to 16")]
    InvalidLayout(StripeLayout),
    /// A view that does not exist.
    #[error("view \"{0}\" does not exist")]
    ViewNotFound(String),
    /// A constraint name the table already uses.
    #[error("constraint \"{constraint}\" for relation \"{table}\" already exists")]
    ConstraintExists {
        /// The constraint.
        constraint: String,
        /// Its table.
        table: String,
    },
    /// A constraint that does not exist.
    #[error("constraint \"{constraint}\" of relation \"{table}\" does not exist")]
    ConstraintNotFound {
        /// The constraint.
        constraint: String,
        /// Its table.
        table: String,
    },
    /// A second PRIMARY KEY.
    #[error("multiple primary keys for table \"{0}\" are not allowed")]
    MultiplePrimaryKeys(String),
    /// A PRIMARY KEY column that allows NULL (ALTER TABLE ADD PRIMARY KEY).
    #[error("column \"{0}\" of a primary key must be NOT NULL")]
    PrimaryKeyNullable(String),
    /// A FOREIGN KEY whose referenced columns are not a key of their table.
    #[error("{0}")]
    InvalidForeignKey(String),
    /// A FOREIGN KEY column whose type differs from the column it references.
    #[error(
        "foreign key constraint \"{constraint}\" cannot be implemented: key columns \"{column}\" and \"{referenced}\" are of incompatible types"
    )]
    ForeignKeyTypes {
        /// The constraint.
        constraint: String,
        /// The referencing column.
        column: String,
        /// The referenced column.
        referenced: String,
    },
    /// DROP of a table or key that a foreign key of another table references.
    #[error("cannot drop {what} because {constraint} on table {table} depends on it")]
    Referenced {
        /// What was to be dropped.
        what: String,
        /// The foreign key.
        constraint: String,
        /// Its table.
        table: String,
    },
    /// CREATE OR REPLACE VIEW that drops or renames a column of the view.
    #[error(
        "cannot change the columns of view \"{view}\" from ({old}) to ({new}): a replacement may only add columns at the end"
    )]
    ViewColumnsChanged {
        /// The view.
        view: String,
        /// Its columns.
        old: String,
        /// The replacement's columns.
        new: String,
    },
    /// CREATE ROLE of a name in use.
    #[error("role \"{0}\" already exists")]
    RoleExists(String),
    /// A role that does not exist.
    #[error("role \"{0}\" does not exist")]
    RoleNotFound(String),
    /// A role name PostgreSQL reserves (`public`, `pg_*`).
    #[error("role name \"{0}\" is reserved")]
    ReservedRoleName(String),
    /// DROP ROLE of a role that owns objects or holds privileges.
    #[error(
        "role \"{role}\" cannot be dropped because some objects depend on it: it owns {owned} and holds privileges on {granted}"
    )]
    RoleInUse {
        /// The role.
        role: String,
        /// How many objects it owns.
        owned: usize,
        /// How many objects it holds privileges on.
        granted: usize,
    },
    /// CREATE ACCESS TOKEN of a name the role already uses.
    #[error("access token \"{0}\" already exists")]
    TokenExists(String),
    /// A token that does not exist.
    #[error("access token \"{0}\" does not exist")]
    TokenNotFound(String),
    /// GRANT role TO member that would make a role a member of itself.
    #[error("role \"{member}\" is a member of role \"{role}\"")]
    MembershipCycle {
        /// The role granted.
        role: String,
        /// The member.
        member: String,
    },
    /// An append to a channel at an offset other than its next one: rows
    /// already written (a retry) or a gap.
    #[error("channel \"{channel}\" is at offset {next_offset}, not {offset}")]
    ChannelOffset {
        /// The channel.
        channel: String,
        /// The offset the append gave.
        offset: u64,
        /// The channel's next offset.
        next_offset: u64,
    },
    /// An append or commit that does not fit the channel's kind: rows for
    /// a pending channel sent to be committed at once, or the reverse; a
    /// commit or discard of a channel that is not pending.
    #[error("channel \"{channel}\" {problem}")]
    ChannelState {
        /// The channel.
        channel: String,
        /// What is wrong, as the rest of a sentence.
        problem: String,
    },
    /// A commit or discard of a channel never written.
    #[error("channel \"{0}\" does not exist")]
    ChannelNotFound(String),
    /// An append that removes files.
    #[error("an append to a channel only adds rows")]
    AppendRemoves,
    /// A move of buffered files that does not account for them: a file not
    /// in the buffer, or rows not placed in the new files.
    #[error("buffered file {0} is not moved as a whole")]
    BufferMove(ChunkId),
    /// A change to the rows of an external table, or a source given to a
    /// table that has rows of its own.
    #[error("\"{0}\" is an external table: its rows are the files it reads")]
    ExternalTable(String),
    /// A partitioning or file layout given to a table that is not new, or
    /// that names a column it does not have.
    #[error("{0}")]
    Partitioning(String),
    /// Bytes for the ingest buffer of a file the commit does not add.
    #[error("buffered file {0} is not a file the commit adds")]
    BufferedFile(ChunkId),
    /// A deletion vector that is not a roaring bitmap, or a commit whose
    /// deletes do not fit its changes.
    #[error("invalid row deletes: {0}")]
    BadRows(String),
    /// CREATE TYPE of a name a type or relation has.
    #[error("type \"{0}\" already exists")]
    TypeExists(String),
    /// A type that does not exist.
    #[error("type \"{0}\" does not exist")]
    TypeNotFound(String),
    /// DROP TYPE of a type a table's field is declared as.
    #[error(
        "cannot drop type {name} because other objects depend on it (column {column} of table {table})"
    )]
    TypeInUse {
        /// The type.
        name: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// CREATE SUBSCRIPTION of a name in use.
    #[error("subscription \"{0}\" already exists")]
    SubscriptionExists(String),
    /// A subscription that does not exist.
    #[error("subscription \"{0}\" does not exist")]
    SubscriptionNotFound(String),
    /// A move of a subscription's applied position from a position that is
    /// no longer current (the transaction was applied already), or
    /// backwards.
    #[error("subscription \"{name}\" is at LSN {current}, not {from}")]
    SubscriptionMoved {
        /// The subscription.
        name: String,
        /// Its applied position.
        current: u64,
        /// The position the move started from.
        from: u64,
    },
    /// A field a declaration names that the table does not have, or whose
    /// type is not the named type's.
    #[error("column \"{column}\" is not of type {name}")]
    NotOfType {
        /// The column (and fields down to the one declared).
        column: String,
        /// The type.
        name: String,
    },
}

impl CatalogError {
    /// The SQLSTATE a client sees.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            CatalogError::SchemaExists(_) => SqlState::DUPLICATE_SCHEMA,
            CatalogError::SchemaNotFound(_) => SqlState::INVALID_SCHEMA_NAME,
            CatalogError::SchemaNotEmpty(_) => SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            CatalogError::TableExists(_) => SqlState::DUPLICATE_TABLE,
            CatalogError::TableNotFound(_) => SqlState::UNDEFINED_TABLE,
            CatalogError::DuplicateColumn(_) => SqlState::DUPLICATE_COLUMN,
            CatalogError::NoColumns => SqlState::SYNTAX_ERROR,
            CatalogError::SerializationFailure(_) => SqlState::SERIALIZATION_FAILURE,
            CatalogError::DuplicateChange(_) => SqlState::INTERNAL_ERROR,
            CatalogError::ColumnNotFound(_) => SqlState::UNDEFINED_COLUMN,
            CatalogError::NothingToUndrop(_) => SqlState::UNDEFINED_TABLE,
            CatalogError::NarrowingTypeChange { .. } => SqlState::DATATYPE_MISMATCH,
            CatalogError::LastColumn => SqlState::FEATURE_NOT_SUPPORTED,
            CatalogError::PlacementChanged { .. } => SqlState::SERIALIZATION_FAILURE,
            CatalogError::RestoreIntoNonEmpty => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            CatalogError::BadBackup(_) => SqlState::DATA_CORRUPTED,
            CatalogError::RebalanceUnderWay(_) | CatalogError::RebalanceChanged(_) => {
                SqlState::SERIALIZATION_FAILURE
            }
            CatalogError::ParityChanged(_) => SqlState::SERIALIZATION_FAILURE,
            CatalogError::InvalidLayout(_) => SqlState::INVALID_PARAMETER_VALUE,
            CatalogError::ViewNotFound(_) => SqlState::UNDEFINED_TABLE,
            CatalogError::ViewColumnsChanged { .. } => SqlState::INVALID_TABLE_DEFINITION,
            CatalogError::ConstraintExists { .. } => SqlState::DUPLICATE_OBJECT,
            CatalogError::ConstraintNotFound { .. } => SqlState::UNDEFINED_OBJECT,
            CatalogError::MultiplePrimaryKeys(_) => SqlState::INVALID_TABLE_DEFINITION,
            CatalogError::PrimaryKeyNullable(_) => SqlState::INVALID_TABLE_DEFINITION,
            CatalogError::InvalidForeignKey(_) => SqlState::INVALID_FOREIGN_KEY,
            CatalogError::ForeignKeyTypes { .. } => SqlState::DATATYPE_MISMATCH,
            CatalogError::Referenced { .. } => SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            CatalogError::RoleExists(_) => SqlState::DUPLICATE_OBJECT,
            CatalogError::TokenExists(_) => SqlState::DUPLICATE_OBJECT,
            CatalogError::TokenNotFound(_) => SqlState::UNDEFINED_OBJECT,
            CatalogError::RoleNotFound(_) => SqlState::UNDEFINED_OBJECT,
            CatalogError::ReservedRoleName(_) => SqlState::RESERVED_NAME,
            CatalogError::RoleInUse { .. } => SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            CatalogError::MembershipCycle { .. } => SqlState::INVALID_GRANT_OPERATION,
            CatalogError::ChannelOffset { .. } => SqlState::INVALID_PARAMETER_VALUE,
            CatalogError::ChannelState { .. } => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            CatalogError::ChannelNotFound(_) => SqlState::UNDEFINED_OBJECT,
            CatalogError::AppendRemoves => SqlState::INTERNAL_ERROR,
            CatalogError::BufferMove(_)
            | CatalogError::BufferedFile(_)
            | CatalogError::BadRows(_) => SqlState::INTERNAL_ERROR,
            CatalogError::ExternalTable(_) => SqlState::WRONG_OBJECT_TYPE,
            CatalogError::Partitioning(_) => SqlState::INVALID_TABLE_DEFINITION,
            CatalogError::TypeExists(_) => SqlState::DUPLICATE_OBJECT,
            CatalogError::TypeNotFound(_) => SqlState::UNDEFINED_OBJECT,
            CatalogError::TypeInUse { .. } => SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            CatalogError::NotOfType { .. } => SqlState::DATATYPE_MISMATCH,
            CatalogError::SubscriptionExists(_) => SqlState::DUPLICATE_OBJECT,
            CatalogError::SubscriptionNotFound(_) => SqlState::UNDEFINED_OBJECT,
            CatalogError::SubscriptionMoved { .. } => SqlState::SERIALIZATION_FAILURE,
        }
    }
}

/// A copy of subscription `name`, to change and put back.
fn subscription_named(catalog: &Catalog, name: &str) -> Result<Subscription, CatalogError> {
    catalog
        .subscriptions
        .get(name)
        .map(|s| s.as_ref().clone())
        .ok_or_else(|| CatalogError::SubscriptionNotFound(name.to_owned()))
}

/// The first live table and column with a field declared as `composite`.
fn type_user(catalog: &Catalog, composite: &CompositeType) -> Option<(String, String)> {
    catalog
        .typed_fields
        .iter()
        .filter(|(_, id)| **id == composite.id)
        .find_map(|((table, field), _)| {
            let (schema, name) = catalog.table_keys.get(table)?;
            let table = catalog.table(schema, name)?;
            catalog.composite_of(table, *field)?;
            let column = table
                .columns
                .iter()
                .find(|c| c.field_id == *field || c.column_type.field_type(*field).is_some())?;
            Some((name.clone(), column.name.clone()))
        })
}

/// The id and type of the field of `table` that `path` names: a column,
/// then field names down through structs (`item` for an array's element).
fn field_at<'a>(table: &'a Table, path: &[String]) -> Option<(FieldId, &'a ColumnType)> {
    let (first, rest) = path.split_first()?;
    let column = table.columns.iter().find(|c| &c.name == first)?;
    let mut found = (column.field_id, &column.column_type);
    for name in rest {
        let field = found.1.nested_fields().iter().find(|f| &f.name == name)?;
        found = (field.field_id, &field.column_type);
    }
    Some(found)
}

/// Marks the move of the rebalance under way that `MoveChunk` made, if it
/// is one of its moves.
fn mark_moved(
    catalog: &mut Catalog,
    at: TimestampMicros,
    stripe: StripeId,
    index: u8,
    from: NodeId,
    to: NodeId,
) {
    let Some(rebalance) = &mut catalog.rebalance else {
        return;
    };
    if rebalance.finished_at.is_some() {
        return;
    }
    let planned = rebalance.moves.iter().position(|m| {
        m.stripe == stripe
            && m.index == index
            && m.from == from
            && m.to == to
            && m.moved_at.is_none()
    });
    if let Some(n) = planned {
        Arc::make_mut(rebalance).moves[n].moved_at = Some(at);
    }
}

/// Applies `proposal` to `catalog`. On error the catalog is unchanged.
pub fn apply(catalog: &mut Catalog, proposal: &Proposal) -> Result<Applied, CatalogError> {
    if let Some(result) = roles::apply(catalog, &proposal.command) {
        return result;
    }
    match &proposal.command {
        Command::Owned { owner, command } => {
            let inner = Proposal {
                command: (**command).clone(),
                proposed_at: proposal.proposed_at,
            };
            let applied = apply(catalog, &inner)?;
            roles::record_owner(catalog, *owner, command, &applied);
            Ok(applied)
        }
        Command::SetMaintenance { node, maintenance } => {
            match maintenance {
                Some(mark) => {
                    catalog.maintenance.insert(*node, *mark);
                }
                None => {
                    catalog.maintenance.remove(node);
                }
            }
            Ok(Applied::Nothing)
        }
        Command::StartRebalance { rebalance } => {
            if let Some(current) = &catalog.rebalance
                && current.finished_at.is_none()
            {
                return Err(CatalogError::RebalanceUnderWay(current.planned_at));
            }
            catalog.rebalance = Some(Arc::new(rebalance.clone()));
            Ok(Applied::Nothing)
        }
        Command::FinishRebalance { planned_at } => match &mut catalog.rebalance {
            Some(current) if current.planned_at == *planned_at && current.finished_at.is_none() => {
                Arc::make_mut(current).finished_at = Some(proposal.proposed_at);
                Ok(Applied::Nothing)
            }
            _ => Err(CatalogError::RebalanceChanged(*planned_at)),
        },
        Command::Decommission { node } => {
            catalog
                .decommissioning
                .entry(*node)
                .or_insert(proposal.proposed_at);
            if let Some(current) = &mut catalog.rebalance
                && current.finished_at.is_none()
            {
                Arc::make_mut(current).finished_at = Some(proposal.proposed_at);
            }
            Ok(Applied::Nothing)
        }
        Command::Restore { snapshot } => {
            let empty = catalog.tables.is_empty()
                && catalog.dropped.is_empty()
                && catalog.views.is_empty()
                && catalog.stripes.is_empty();
            if !empty {
                return Err(CatalogError::RestoreIntoNonEmpty);
            }
            let mut restored = crate::snapshot_file::read(snapshot.as_slice())
                .map_err(|e| CatalogError::BadBackup(e.to_string()))?;
            restored.cluster_id = catalog.cluster_id;
            restored.next_node_id = catalog.next_node_id;
            restored.gossip_key = catalog.gossip_key;
            restored.maintenance = catalog.maintenance.clone();
            restored.decommissioning = catalog.decommissioning.clone();
            restored.rebalance = None;
            restored.next_id = restored.next_id.max(catalog.next_id);
            restored.last_commit_at = restored.last_commit_at.max(catalog.last_commit_at);
            *catalog = restored;
            catalog.reindex();
            Ok(Applied::Nothing)
        }
        Command::SetGossipKey { key } => {
            if catalog.gossip_key.is_none() {
                catalog.gossip_key = Some(*key);
            }
            Ok(Applied::Nothing)
        }
        Command::CreateRole { .. }
        | Command::AlterRole { .. }
        | Command::RenameRole { .. }
        | Command::DropRole { .. }
        | Command::CreatePredefinedRoles
        | Command::SetMembership { .. }
        | Command::SetPrivileges { .. }
        | Command::CreateToken { .. }
        | Command::DropToken { .. }
        | Command::SetOwner { .. } => unreachable!("roles::apply takes these"),
        Command::CreateSchema {
            name,
            if_not_exists,
        } => {
            if catalog.schemas.contains_key(name) {
                return if *if_not_exists {
                    Ok(Applied::Nothing)
                } else {
                    Err(CatalogError::SchemaExists(name.clone()))
                };
            }
            let id = next_id(catalog);
            catalog.schemas.insert(name.clone(), id);
            Ok(Applied::Schema)
        }
        Command::DropSchema {
            name,
            if_exists,
            cascade,
        } => {
            if !catalog.schemas.contains_key(name) {
                return if *if_exists {
                    Ok(Applied::Nothing)
                } else {
                    Err(CatalogError::SchemaNotFound(name.clone()))
                };
            }
            let has_relations = catalog.tables_in(name).next().is_some()
                || catalog.views_in(name).next().is_some()
                || catalog.types.keys().any(|(schema, _)| schema == name);
            if has_relations && !cascade {
                return Err(CatalogError::SchemaNotEmpty(name.clone()));
            }
            let gone: Vec<(String, String)> = catalog
                .types
                .keys()
                .filter(|(schema, _)| schema == name)
                .cloned()
                .collect();
            for key in gone {
                catalog.types.remove(&key);
            }
            let views: Vec<(String, String)> = catalog
                .views_in(name)
                .map(|v| (v.schema.clone(), v.name.clone()))
                .collect();
            for key in views {
                catalog.views.remove(&key);
                catalog.acls.remove(&Securable::View(key.0, key.1));
            }
            catalog.acls.remove(&Securable::Schema(name.clone()));
            let dropped_at = commit_time(catalog, proposal.proposed_at);
            let gone: Vec<(String, String)> = catalog
                .tables_in(name)
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect();
            for key in gone {
                let table = catalog.remove_table(&key).expect("listed just above");
                catalog.dropped.push(DroppedTable { table, dropped_at });
            }
            catalog.schemas.remove(name);
            Ok(Applied::Schema)
        }
        Command::CreateTable {
            schema,
            name,
            columns,
            if_not_exists,
            files,
            retention_micros,
            field_ids,
            layout,
            stripes,
        } => {
            if let Some(layout) = layout
                && !layout_in_range(*layout)
            {
                return Err(CatalogError::InvalidLayout(*layout));
            }
            if !catalog.schemas.contains_key(schema) {
                return Err(CatalogError::SchemaNotFound(schema.clone()));
            }
            if catalog.relation_exists(schema, name) {
                return if *if_not_exists {
                    Ok(Applied::Nothing)
                } else {
                    Err(CatalogError::TableExists(name.clone()))
                };
            }
            if columns.is_empty() {
                return Err(CatalogError::NoColumns);
            }
            for (i, column) in columns.iter().enumerate() {
                if columns[..i].iter().any(|c| c.name == column.name) {
                    return Err(CatalogError::DuplicateColumn(column.name.clone()));
                }
            }
            let id = next_id(catalog);
            let snapshot = next_id(catalog);
            let committed_at = commit_time(catalog, proposal.proposed_at);
            let rows: u64 = files.iter().map(|f| f.row_count).sum();
            let mut columns = columns_from_defs(columns);
            if field_ids.len() == columns.len() {
                for (column, id) in columns.iter_mut().zip(field_ids) {
                    column.field_id = *id;
                }
            }
            let mut next_field_id = columns.iter().map(|c| c.field_id).max().unwrap_or(0) + 1;
            // Nested fields are numbered after the columns; a table created
            // with its files' field ids (RESTORE, clone) keeps theirs.
            for column in &mut columns {
                if column.column_type.max_field_id() == Some(0) {
                    column.column_type.assign_field_ids(&mut next_field_id);
                }
            }
            let next_field_id = columns
                .iter()
                .filter_map(|c| c.column_type.max_field_id())
                .fold(next_field_id, |next, id| next.max(id + 1));
            let mut table = Table {
                id,
                schema: schema.clone(),
                name: name.clone(),
                next_field_id,
                columns,
                schema_id: 0,
                past_schemas: Vec::new(),
                snapshots: imbl::vector![TableSnapshot {
                    id: snapshot,
                    committed_at,
                    operation: Operation::Create,
                    row_count: rows,
                    rows_added: rows,
                    schema_id: 0,
                }],
                files: imbl::Vector::new(),
                live_files: imbl::OrdMap::new(),
                buffer: Default::default(),
                moved: Default::default(),
                deletes: Default::default(),
                retention_micros: *retention_micros,
                layout: *layout,
                partitioning: None,
                file_layout: None,
            };
            cloned_buffer(catalog, files, &mut table);
            table.add_files(files.iter().cloned(), snapshot);
            catalog.insert_table((schema.clone(), name.clone()), Arc::new(table));
            for stripe in stripes {
                catalog.add_stripe(stripe.clone());
            }
            Ok(Applied::Snapshot {
                table: id,
                snapshot,
                committed_at,
            })
        }
        Command::DropTable {
            schema,
            name,
            if_exists,
        } => {
            if let Some(table) = catalog.table(schema, name)
                && let Some((constraint, table_name)) = referencing(catalog, table.id, |_| true)
            {
                return Err(CatalogError::Referenced {
                    what: format!("table {name}"),
                    constraint,
                    table: table_name,
                });
            }
            match catalog.remove_table(&(schema.clone(), name.clone())) {
                Some(table) => {
                    let committed_at = commit_time(catalog, proposal.proposed_at);
                    let id = table.id;
                    catalog.dropped.push(DroppedTable {
                        table,
                        dropped_at: committed_at,
                    });
                    Ok(Applied::Snapshot {
                        table: id,
                        snapshot: 0,
                        committed_at,
                    })
                }
                None if *if_exists => Ok(Applied::Nothing),
                None => Err(CatalogError::TableNotFound(name.clone())),
            }
        }
        Command::Commit { changes, read_set } => {
            commit(catalog, proposal.proposed_at, changes, read_set)
        }
        Command::CommitBuffered {
            changes,
            read_set,
            buffered,
        } => {
            let added: std::collections::HashMap<ChunkId, TableId> = changes
                .iter()
                .flat_map(|c| c.added.iter().map(|f| (f.chunk, c.table)))
                .collect();
            let mut tables = Vec::with_capacity(buffered.len());
            for (chunk, _) in buffered {
                let table = added.get(chunk).ok_or(CatalogError::BufferedFile(*chunk))?;
                tables.push(*table);
            }
            let applied = commit(catalog, proposal.proposed_at, changes, read_set)?;
            for ((chunk, bytes), table) in buffered.iter().zip(tables) {
                committed_table(catalog, table)
                    .buffer
                    .insert(*chunk, bytes.clone());
            }
            Ok(applied)
        }
        Command::SpillBuffered {
            table,
            files,
            stripes,
        } => spill_buffered(catalog, *table, files, stripes),
        Command::Append {
            change,
            channel,
            offset,
            skipped,
        } => {
            if !change.removed.is_empty() {
                return Err(CatalogError::AppendRemoves);
            }
            commit_to_channel(
                catalog,
                proposal.proposed_at,
                change,
                channel,
                *offset,
                *skipped,
            )
        }
        Command::AppendBuffered {
            table,
            file,
            bytes,
            channel,
            offset,
            skipped,
        } => {
            let change = TableChange {
                table: *table,
                added: vec![file.clone()],
                removed: Vec::new(),
                stripes: Vec::new(),
            };
            let applied = commit_to_channel(
                catalog,
                proposal.proposed_at,
                &change,
                channel,
                *offset,
                *skipped,
            )?;
            committed_table(catalog, *table)
                .buffer
                .insert(file.chunk, bytes.clone());
            Ok(applied)
        }
        Command::AppendPending {
            change,
            channel,
            offset,
            skipped,
        } => append_pending(
            catalog,
            proposal.proposed_at,
            change,
            channel,
            *offset,
            *skipped,
        ),
        Command::CommitPending { table, channels } => {
            commit_pending(catalog, proposal.proposed_at, *table, channels)
        }
        Command::DiscardPending { table, channel } => {
            let Some(gone) = catalog.pending.remove(&(*table, channel.clone())) else {
                return Ok(Applied::Nothing);
            };
            let mut chunks: Vec<ChunkId> = gone.files.iter().map(|f| f.chunk).collect();
            chunks.extend(catalog.drop_dead_stripes());
            Ok(Applied::Expired { chunks })
        }
        Command::MoveBuffered { change, moved } => {
            if let Some(name) = catalog.table_key(change.table) {
                let table = &catalog.tables[name];
                let placed: std::collections::HashMap<ChunkId, u64> = moved
                    .iter()
                    .map(|(chunk, ranges)| (*chunk, ranges.iter().map(|r| r.rows).sum()))
                    .collect();
                for chunk in &change.removed {
                    // A move copies every row: one deleted by a vector
                    // meanwhile would come back.
                    if table.deletes.contains_key(chunk) {
                        return Err(CatalogError::SerializationFailure(table.name.clone()));
                    }
                    let whole = table.buffer.contains_key(chunk)
                        && table
                            .live_file(*chunk)
                            .is_some_and(|e| placed.get(chunk) == Some(&e.file.row_count));
                    if !whole {
                        return Err(CatalogError::BufferMove(*chunk));
                    }
                }
                if let Some((chunk, _)) = moved.iter().find(|(c, _)| !change.removed.contains(c)) {
                    return Err(CatalogError::BufferMove(*chunk));
                }
            }
            let applied = commit(
                catalog,
                proposal.proposed_at,
                std::slice::from_ref(change),
                &[],
            )?;
            let table = committed_table(catalog, change.table);
            for (chunk, ranges) in moved {
                table.buffer.remove(chunk);
                table.moved.insert(*chunk, ranges.clone());
            }
            Ok(applied)
        }
        Command::UndropTable { schema, name } => {
            if !catalog.schemas.contains_key(schema) {
                return Err(CatalogError::SchemaNotFound(schema.clone()));
            }
            if catalog.relation_exists(schema, name) {
                return Err(CatalogError::TableExists(name.clone()));
            }
            let index = catalog
                .dropped
                .iter()
                .rposition(|d| d.table.schema == *schema && d.table.name == *name)
                .ok_or_else(|| CatalogError::NothingToUndrop(name.clone()))?;
            let restored = catalog.dropped.remove(index).table;
            let id = restored.id;
            catalog.insert_table((schema.clone(), name.clone()), restored);
            Ok(Applied::Snapshot {
                table: id,
                snapshot: 0,
                committed_at: commit_time(catalog, proposal.proposed_at),
            })
        }
        Command::PurgeDropped { table } => {
            let Some(index) = catalog.dropped.iter().position(|d| d.table.id == *table) else {
                return Ok(Applied::Nothing);
            };
            let gone = catalog.dropped.remove(index);
            catalog.notes.remove(table);
            catalog.external.remove(table);
            catalog.acls.remove(&Securable::Table(*table));
            remove_channels_of(&mut catalog.channels, *table);
            remove_channels_of(&mut catalog.pending, *table);
            let mut chunks: Vec<ChunkId> = gone.table.files.iter().map(|e| e.file.chunk).collect();
            chunks.extend(catalog.drop_dead_stripes());
            Ok(Applied::Expired { chunks })
        }
        Command::AlterTable { table, change } => {
            // A dropped column takes its comment and the constraints over it
            // (PostgreSQL drops them with the column), here and in tables
            // whose foreign keys reference it.
            let dropped = match change {
                SchemaChange::DropColumn(name) => catalog
                    .table_by_id(*table)
                    .and_then(|t| t.column(name))
                    .map(|c| c.field_id),
                _ => None,
            };
            // The partitioning and clustering columns shape every data
            // file: they stay (BigQuery refuses dropping them too).
            if let (Some(field), Some(t)) = (dropped, catalog.table_by_id(*table)) {
                let partitions = t.partitioning.as_ref().is_some_and(|p| p.field_id == field);
                let clusters = t.file_layout.as_ref().is_some_and(|l| {
                    l.cluster_by.contains(&field) || l.bloom_filters.contains(&field)
                });
                if partitions || clusters {
                    return Err(CatalogError::Partitioning(format!(
                        "cannot drop column \"{}\" of \"{}\": the table is partitioned or clustered by it, or it has a bloom filter",
                        match change {
                            SchemaChange::DropColumn(name) => name.as_str(),
                            _ => "",
                        },
                        t.name
                    )));
                }
            }
            let applied = alter(catalog, proposal.proposed_at, *table, change)?;
            if let Some(field) = dropped {
                forget_column(catalog, *table, field);
            }
            Ok(applied)
        }
        Command::ExpireSnapshots { table, keep_from } => {
            let Some(key) = catalog.table_key(*table).cloned() else {
                return Ok(Applied::Nothing);
            };
            let entry = catalog
                .tables
                .get_mut(&key)
                .expect("the key was just found");
            if !entry.snapshots.iter().any(|s| s.id == *keep_from) {
                return Ok(Applied::Nothing);
            }
            let table = Arc::make_mut(entry);
            table.snapshots.retain(|s| s.id >= *keep_from);
            let used: Vec<u32> = table.snapshots.iter().map(|s| s.schema_id).collect();
            table.past_schemas.retain(|s| used.contains(&s.id));
            let mut expired = Vec::new();
            table.files.retain(|e| {
                let needed = e.removed_in.is_none_or(|removed| removed > *keep_from);
                if !needed {
                    expired.push(e.file.chunk);
                }
                needed
            });
            for chunk in &expired {
                table.buffer.remove(chunk);
                table.moved.remove(chunk);
            }
            table.reindex();
            table.expire_deletes(*keep_from);
            expired.extend(catalog.drop_dead_stripes());
            Ok(Applied::Expired { chunks: expired })
        }
        Command::InitCluster { cluster_id } => {
            catalog.cluster_id = *cluster_id;
            catalog.next_node_id = catalog.next_node_id.max(2);
            Ok(Applied::Nothing)
        }
        Command::AllocateNodeId => {
            let id = catalog.next_node_id.max(2);
            catalog.next_node_id = id + 1;
            Ok(Applied::NodeId(id))
        }
        Command::MoveChunk {
            stripe,
            index,
            from,
            to,
        } => {
            let moved = catalog
                .stripes
                .get_mut(stripe)
                .and_then(|s| s.chunks.get_mut(usize::from(*index)))
                .filter(|c| c.node == *from);
            match moved {
                Some(chunk) => {
                    chunk.node = *to;
                    mark_moved(catalog, proposal.proposed_at, *stripe, *index, *from, *to);
                    Ok(Applied::Nothing)
                }
                None => Err(CatalogError::PlacementChanged {
                    stripe: *stripe,
                    index: *index,
                    from: *from,
                }),
            }
        }
        Command::ReplaceParity {
            stripe,
            expected,
            parity,
        } => {
            let Some(current) = catalog.stripes.get_mut(stripe) else {
                return Err(CatalogError::ParityChanged(*stripe));
            };
            let k = usize::from(current.data_chunks);
            let unchanged = current.chunks[k..]
                .iter()
                .map(|c| c.chunk)
                .eq(expected.iter().copied());
            if !unchanged {
                return Err(CatalogError::ParityChanged(*stripe));
            }
            current.chunks.truncate(k);
            current.chunks.extend(parity.iter().cloned());
            Ok(Applied::Nothing)
        }
        Command::SetExternalSource {
            schema,
            name,
            source,
        } => {
            let table = catalog
                .table(schema, name)
                .ok_or_else(|| CatalogError::TableNotFound(name.clone()))?;
            if table.snapshots.len() != 1 || !table.files.is_empty() {
                return Err(CatalogError::ExternalTable(name.clone()));
            }
            let id = table.id;
            catalog.external.insert(id, Arc::new(source.clone()));
            Ok(Applied::Nothing)
        }
        Command::SetPartitioning {
            schema,
            name,
            partitioning,
        } => set_at_creation(
            catalog,
            schema,
            name,
            "partitioned",
            |table| {
                let column = table.columns.iter().any(|c| {
                    c.field_id == partitioning.field_id && c.column_type == partitioning.column_type
                });
                (table.partitioning.is_none() && column)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "has a partitioning already, or no column with field id {} of type {}",
                            partitioning.field_id, partitioning.column_type
                        )
                    })
            },
            |table| table.partitioning = Some(Arc::new(partitioning.clone())),
        ),
        Command::CommitRows {
            commit,
            deletes,
            read_at,
        } => commit_rows(catalog, proposal.proposed_at, commit, deletes, read_at),
        Command::SetDeletes {
            schema,
            name,
            deletes,
        } => {
            let decoded = deletes
                .iter()
                .map(|(chunk, rows)| Ok((*chunk, decode_rows(rows)?)))
                .collect::<Result<Vec<_>, CatalogError>>()?;
            set_at_creation(
                catalog,
                schema,
                name,
                "given deleted rows",
                |table| {
                    decoded
                        .iter()
                        .all(|(chunk, rows)| table.check_delete(*chunk, rows).is_ok())
                        .then_some(())
                        .ok_or_else(|| "has no such rows to delete".to_owned())
                },
                |table| {
                    let snapshot = table.current_snapshot().id;
                    let mut deleted = 0;
                    for (chunk, rows) in &decoded {
                        deleted += table.delete_rows(*chunk, rows, snapshot);
                    }
                    let creation = table.snapshots.back_mut().expect("one snapshot");
                    creation.row_count -= deleted;
                    creation.rows_added -= deleted;
                },
            )
        }
        Command::SetFileLayout {
            schema,
            name,
            layout,
        } => set_at_creation(
            catalog,
            schema,
            name,
            "clustered",
            |table| {
                let known = |id: &FieldId| table.columns.iter().any(|c| c.field_id == *id);
                let fits = layout.cluster_by.len() <= MAX_CLUSTER_COLUMNS
                    && layout
                        .cluster_by
                        .iter()
                        .chain(&layout.bloom_filters)
                        .all(known);
                (table.file_layout.is_none() && fits)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "has a file layout already, or more than {MAX_CLUSTER_COLUMNS} \
                         clustering columns, or a column it does not have"
                        )
                    })
            },
            |table| table.file_layout = Some(Arc::new(layout.clone())),
        ),
        Command::CreateSubscription(subscription) => {
            if catalog.subscriptions.contains_key(&subscription.name) {
                return Err(CatalogError::SubscriptionExists(subscription.name.clone()));
            }
            catalog
                .subscriptions
                .insert(subscription.name.clone(), Arc::new(subscription.clone()));
            Ok(Applied::Nothing)
        }
        Command::DropSubscription { name, if_exists } => match catalog.subscriptions.remove(name) {
            Some(_) => Ok(Applied::Nothing),
            None if *if_exists => Ok(Applied::Nothing),
            None => Err(CatalogError::SubscriptionNotFound(name.clone())),
        },
        Command::AlterSubscription {
            name,
            enabled,
            connection,
            refresh,
        } => {
            let mut subscription = subscription_named(catalog, name)?;
            if let Some(enabled) = enabled {
                subscription.enabled = *enabled;
            }
            if refresh.is_some() {
                subscription.refresh = *refresh;
            }
            if let Some((connection, password)) = connection {
                subscription.connection = connection.clone();
                subscription.password = password.clone();
            }
            catalog
                .subscriptions
                .insert(name.clone(), Arc::new(subscription));
            Ok(Applied::Nothing)
        }
        Command::AdvanceSubscription(progress) => {
            let name = &progress.subscription;
            let mut subscription = subscription_named(catalog, name)?;
            let now = commit_time(catalog, proposal.proposed_at);
            subscription
                .advance(progress, now)
                .map_err(|_| CatalogError::SubscriptionMoved {
                    name: name.clone(),
                    current: subscription.applied_lsn,
                    from: progress.from_lsn,
                })?;
            catalog
                .subscriptions
                .insert(name.clone(), Arc::new(subscription));
            Ok(Applied::Nothing)
        }
        Command::SubscriptionFailed { name, error } => {
            let mut subscription = subscription_named(catalog, name)?;
            subscription.last_error = Some(error.clone());
            catalog
                .subscriptions
                .insert(name.clone(), Arc::new(subscription));
            Ok(Applied::Nothing)
        }
        Command::CreateType {
            schema,
            name,
            fields,
        } => {
            if !catalog.schemas.contains_key(schema) {
                return Err(CatalogError::SchemaNotFound(schema.clone()));
            }
            let key = (schema.clone(), name.clone());
            if catalog.types.contains_key(&key) || catalog.relation_exists(schema, name) {
                return Err(CatalogError::TypeExists(name.clone()));
            }
            let id = catalog.next_id;
            catalog.next_id += 3;
            catalog.types.insert(
                key,
                Arc::new(CompositeType {
                    id,
                    schema: schema.clone(),
                    name: name.clone(),
                    fields: fields.clone(),
                }),
            );
            Ok(Applied::Nothing)
        }
        Command::DropType {
            schema,
            name,
            if_exists,
        } => {
            let key = (schema.clone(), name.clone());
            let Some(composite) = catalog.types.get(&key).cloned() else {
                return if *if_exists {
                    Ok(Applied::Nothing)
                } else {
                    Err(CatalogError::TypeNotFound(name.clone()))
                };
            };
            if let Some((table, column)) = type_user(catalog, &composite) {
                return Err(CatalogError::TypeInUse {
                    name: name.clone(),
                    table,
                    column,
                });
            }
            catalog.types.remove(&key);
            let users: Vec<(TableId, FieldId)> = catalog
                .typed_fields
                .iter()
                .filter(|(_, id)| **id == composite.id)
                .map(|(key, _)| *key)
                .collect();
            for key in users {
                catalog.typed_fields.remove(&key);
            }
            Ok(Applied::Nothing)
        }
        Command::DeclareTypes {
            schema,
            table,
            fields,
        } => {
            let Some(found) = catalog.table(schema, table) else {
                return Err(CatalogError::TableNotFound(table.clone()));
            };
            let found = found.clone();
            let mut declared = Vec::with_capacity(fields.len());
            for (path, type_schema, type_name) in fields {
                let Some(composite) = catalog.types.get(&(type_schema.clone(), type_name.clone()))
                else {
                    return Err(CatalogError::TypeNotFound(type_name.clone()));
                };
                let field = field_at(&found, path)
                    .filter(|(_, column_type)| composite.matches(column_type))
                    .ok_or_else(|| CatalogError::NotOfType {
                        column: path.join("."),
                        name: type_name.clone(),
                    })?;
                declared.push(((found.id, field.0), composite.id));
            }
            catalog.typed_fields.extend(declared);
            Ok(Applied::Nothing)
        }
        Command::CreateView { view, or_replace } => {
            if !catalog.schemas.contains_key(&view.schema) {
                return Err(CatalogError::SchemaNotFound(view.schema.clone()));
            }
            if catalog.table(&view.schema, &view.name).is_some() {
                return Err(CatalogError::TableExists(view.name.clone()));
            }
            let key = (view.schema.clone(), view.name.clone());
            if let Some(old) = catalog.views.get(&key) {
                if !or_replace {
                    return Err(CatalogError::TableExists(view.name.clone()));
                }
                if !view.columns.starts_with(&old.columns) {
                    return Err(CatalogError::ViewColumnsChanged {
                        view: view.name.clone(),
                        old: old.columns.join(", "),
                        new: view.columns.join(", "),
                    });
                }
            }
            let mut view = view.clone();
            view.created_at = commit_time(catalog, proposal.proposed_at);
            catalog.views.insert(key, Arc::new(view));
            Ok(Applied::Nothing)
        }
        Command::DropView {
            schema,
            name,
            if_exists,
        } => match catalog.views.remove(&(schema.clone(), name.clone())) {
            Some(_) => {
                catalog
                    .acls
                    .remove(&Securable::View(schema.clone(), name.clone()));
                Ok(Applied::Nothing)
            }
            None if *if_exists => Ok(Applied::Nothing),
            None => Err(CatalogError::ViewNotFound(name.clone())),
        },
        Command::RenameView { schema, name, to } => {
            if catalog.relation_exists(schema, to) {
                return Err(CatalogError::TableExists(to.clone()));
            }
            let Some(view) = catalog.views.remove(&(schema.clone(), name.clone())) else {
                return Err(CatalogError::ViewNotFound(name.clone()));
            };
            if let Some(acl) = catalog
                .acls
                .remove(&Securable::View(schema.clone(), name.clone()))
            {
                catalog
                    .acls
                    .insert(Securable::View(schema.clone(), to.clone()), acl);
            }
            let mut view = (*view).clone();
            view.name = to.clone();
            catalog
                .views
                .insert((schema.clone(), to.clone()), Arc::new(view));
            Ok(Applied::Nothing)
        }
        Command::Comment {
            schema,
            table,
            column,
            comment,
        } => {
            let table = catalog
                .table(schema, table)
                .ok_or_else(|| CatalogError::TableNotFound(table.clone()))?;
            let (id, field) = match column {
                Some(name) => (
                    table.id,
                    Some(
                        table
                            .column(name)
                            .ok_or_else(|| CatalogError::ColumnNotFound(name.clone()))?
                            .field_id,
                    ),
                ),
                None => (table.id, None),
            };
            update_notes(catalog, id, |notes| match (field, comment) {
                (Some(field), Some(text)) => {
                    notes.column_comments.insert(field, text.clone());
                }
                (Some(field), None) => {
                    notes.column_comments.remove(&field);
                }
                (None, text) => notes.comment = text.clone(),
            });
            Ok(Applied::Nothing)
        }
        Command::AddConstraint {
            schema,
            table,
            constraint,
        } => {
            let added = constraint_of(catalog, schema, table, constraint)?;
            let id = catalog
                .table(schema, table)
                .expect("checked by constraint_of")
                .id;
            update_notes(catalog, id, |notes| notes.constraints.push(added));
            Ok(Applied::Nothing)
        }
        Command::DropConstraint {
            schema,
            table,
            name,
            if_exists,
            cascade,
        } => {
            let table_ref = catalog
                .table(schema, table)
                .ok_or_else(|| CatalogError::TableNotFound(table.clone()))?;
            let id = table_ref.id;
            let found = catalog
                .notes
                .get(&id)
                .and_then(|n| n.constraints.iter().find(|c| c.name == *name).cloned());
            let Some(found) = found else {
                return if *if_exists {
                    Ok(Applied::Nothing)
                } else {
                    Err(CatalogError::ConstraintNotFound {
                        constraint: name.clone(),
                        table: table.clone(),
                    })
                };
            };
            // A key that foreign keys reference: only with CASCADE, which
            // drops them.
            let key_columns = match &found.kind {
                ConstraintKind::PrimaryKey(columns) | ConstraintKind::Unique(columns) => {
                    Some(columns.clone())
                }
                ConstraintKind::ForeignKey { .. } => None,
            };
            if let Some(key) = key_columns {
                let references = |c: &Constraint| same_columns(referenced_by(c, id), &key);
                if !cascade && let Some((constraint, on)) = referencing(catalog, id, references) {
                    return Err(CatalogError::Referenced {
                        what: format!("constraint {name} on table {table}"),
                        constraint,
                        table: on,
                    });
                }
                let ids: Vec<TableId> = catalog.notes.keys().copied().collect();
                for other in ids {
                    update_notes(catalog, other, |notes| {
                        notes.constraints.retain(|c| !references(c));
                    });
                }
            }
            update_notes(catalog, id, |notes| {
                notes.constraints.retain(|c| c.name != *name)
            });
            Ok(Applied::Nothing)
        }
        Command::Batch(commands) => {
            let mut scratch = catalog.clone();
            let mut applied = Vec::with_capacity(commands.len());
            for command in commands {
                let proposal = Proposal {
                    command: command.clone(),
                    proposed_at: proposal.proposed_at,
                };
                applied.push(apply(&mut scratch, &proposal)?);
            }
            *catalog = scratch;
            Ok(Applied::Batch(applied))
        }
        Command::Transaction {
            read_set,
            altered,
            commands,
            provisional,
        } => {
            check_reads(catalog, read_set)?;
            for (id, schema_id) in altered {
                match catalog.table_by_id(*id) {
                    Some(table) if table.schema_id == *schema_id => {}
                    Some(table) => {
                        return Err(CatalogError::SerializationFailure(table.name.clone()));
                    }
                    None => {
                        return Err(CatalogError::SerializationFailure(format!("table id {id}")));
                    }
                }
            }
            let mut ids: std::collections::HashMap<TableId, Option<TableId>> =
                provisional.iter().map(|id| (*id, None)).collect();
            let mut pending = provisional.iter();
            let mut scratch = catalog.clone();
            let mut applied = Vec::with_capacity(commands.len());
            for command in commands {
                let mut command = command.clone();
                command.remap_tables(&ids)?;
                let proposal = Proposal {
                    command,
                    proposed_at: proposal.proposed_at,
                };
                let result = apply(&mut scratch, &proposal)?;
                for real in created_tables(&proposal.command, &result) {
                    let Some(id) = pending.next() else {
                        return Err(CatalogError::SerializationFailure(format!(
                            "table id {real}"
                        )));
                    };
                    ids.insert(*id, Some(real));
                }
                applied.push(result);
            }
            if let Some(id) = pending.next() {
                return Err(CatalogError::SerializationFailure(format!("table id {id}")));
            }
            *catalog = scratch;
            Ok(Applied::Batch(applied))
        }
        Command::Regroup { old, new } => {
            let mut data: Vec<&StripeChunk> = Vec::new();
            for id in old {
                let Some(stripe) = catalog.stripes.get(id) else {
                    return Err(CatalogError::ParityChanged(*id));
                };
                data.extend(stripe.data());
            }
            let mut wanted: Vec<&StripeChunk> = new.data().iter().collect();
            data.sort_by_key(|c| c.chunk);
            wanted.sort_by_key(|c| c.chunk);
            if data != wanted || catalog.stripes.contains_key(&new.id) {
                return Err(CatalogError::ParityChanged(new.id));
            }
            for id in old {
                catalog.stripes.remove(id);
            }
            catalog.add_stripe(new.clone());
            Ok(Applied::Nothing)
        }
    }
}

/// Changes the notes of table `id`, forgetting them once empty.
fn update_notes(catalog: &mut Catalog, id: TableId, change: impl FnOnce(&mut TableNotes)) {
    let mut notes = catalog
        .notes
        .get(&id)
        .map(|n| (**n).clone())
        .unwrap_or_default();
    change(&mut notes);
    if notes.is_empty() {
        catalog.notes.remove(&id);
    } else {
        catalog.notes.insert(id, Arc::new(notes));
    }
}

/// The columns of table `id` that foreign key `constraint` references (empty
/// for any other constraint).
fn referenced_by(constraint: &Constraint, id: TableId) -> &[FieldId] {
    match &constraint.kind {
        ConstraintKind::ForeignKey {
            table, referenced, ..
        } if *table == id => referenced,
        _ => &[],
    }
}

fn same_columns(a: &[FieldId], b: &[FieldId]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    !a.is_empty() && a == b
}

/// The first foreign key of another live table that references table `id`
/// and passes `filter`: its name and table.
fn referencing(
    catalog: &Catalog,
    id: TableId,
    filter: impl Fn(&Constraint) -> bool,
) -> Option<(String, String)> {
    catalog.notes.iter().find_map(|(other, notes)| {
        if *other == id {
            return None;
        }
        let table = catalog.table_by_id(*other)?;
        notes
            .constraints
            .iter()
            .find(|c| !referenced_by(c, id).is_empty() && filter(c))
            .map(|c| (c.name.clone(), table.name.clone()))
    })
}

/// Forgets what refers to column `field` of table `id` (dropped).
fn forget_column(catalog: &mut Catalog, id: TableId, field: FieldId) {
    let ids: Vec<TableId> = catalog.notes.keys().copied().collect();
    for other in ids {
        update_notes(catalog, other, |notes| {
            if other == id {
                notes.column_comments.remove(&field);
                notes
                    .constraints
                    .retain(|c| !c.kind.columns().contains(&field));
            }
            notes
                .constraints
                .retain(|c| !referenced_by(c, id).contains(&field));
        });
    }
}

/// Checks `def` against `schema.table` and resolves it to field ids.
fn constraint_of(
    catalog: &Catalog,
    schema: &str,
    table_name: &str,
    def: &ConstraintDef,
) -> Result<Constraint, CatalogError> {
    let table = catalog
        .table(schema, table_name)
        .ok_or_else(|| CatalogError::TableNotFound(table_name.to_owned()))?;
    let existing: &[Constraint] = catalog
        .notes
        .get(&table.id)
        .map_or(&[], |n| n.constraints.as_slice());
    let fields = |table: &Table, names: &[String]| -> Result<Vec<FieldId>, CatalogError> {
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            let id = table
                .column(name)
                .ok_or_else(|| CatalogError::ColumnNotFound(name.clone()))?
                .field_id;
            if ids.contains(&id) {
                return Err(CatalogError::DuplicateColumn(name.clone()));
            }
            ids.push(id);
        }
        Ok(ids)
    };
    let (kind, default_name) = match &def.kind {
        ConstraintDefKind::PrimaryKey(columns) => {
            if existing
                .iter()
                .any(|c| matches!(c.kind, ConstraintKind::PrimaryKey(_)))
            {
                return Err(CatalogError::MultiplePrimaryKeys(table.name.clone()));
            }
            if let Some(column) = columns
                .iter()
                .find(|c| table.column(c).is_some_and(|c| c.nullable))
            {
                return Err(CatalogError::PrimaryKeyNullable(column.clone()));
            }
            (
                ConstraintKind::PrimaryKey(fields(table, columns)?),
                format!("{}_pkey", table.name),
            )
        }
        ConstraintDefKind::Unique(columns) => (
            ConstraintKind::Unique(fields(table, columns)?),
            format!("{}_{}_key", table.name, columns.join("_")),
        ),
        ConstraintDefKind::ForeignKey {
            columns,
            schema: referenced_schema,
            table: referenced_table,
            referenced,
        } => {
            let target = catalog
                .table(referenced_schema, referenced_table)
                .ok_or_else(|| CatalogError::TableNotFound(referenced_table.clone()))?;
            // The referenced table's keys: its own, or (referencing itself)
            // those declared so far.
            let keys: Vec<&Constraint> = catalog
                .notes
                .get(&target.id)
                .map(|n| n.constraints.iter().collect())
                .unwrap_or_default();
            let referenced_ids = if referenced.is_empty() {
                keys.iter()
                    .find_map(|c| match &c.kind {
                        ConstraintKind::PrimaryKey(columns) => Some(columns.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        CatalogError::InvalidForeignKey(format!(
                            "there is no primary key for referenced table \"{}\"",
                            target.name
                        ))
                    })?
            } else {
                fields(target, referenced)?
            };
            let column_ids = fields(table, columns)?;
            if column_ids.len() != referenced_ids.len() {
                return Err(CatalogError::InvalidForeignKey(
                    "number of referencing and referenced columns for foreign key disagree"
                        .to_owned(),
                ));
            }
            let is_key = keys.iter().any(|c| match &c.kind {
                ConstraintKind::PrimaryKey(key) | ConstraintKind::Unique(key) => {
                    same_columns(key, &referenced_ids)
                }
                ConstraintKind::ForeignKey { .. } => false,
            });
            if !is_key {
                return Err(CatalogError::InvalidForeignKey(format!(
                    "there is no unique constraint matching given keys for referenced table \"{}\"",
                    target.name
                )));
            }
            let name = def
                .name
                .clone()
                .unwrap_or_else(|| format!("{}_{}_fkey", table.name, columns.join("_")));
            for (column, referenced) in column_ids.iter().zip(&referenced_ids) {
                let column = table.columns.iter().find(|c| c.field_id == *column);
                let referenced = target.columns.iter().find(|c| c.field_id == *referenced);
                if let (Some(column), Some(referenced)) = (column, referenced)
                    && column.column_type != referenced.column_type
                {
                    return Err(CatalogError::ForeignKeyTypes {
                        constraint: name,
                        column: column.name.clone(),
                        referenced: referenced.name.clone(),
                    });
                }
            }
            (
                ConstraintKind::ForeignKey {
                    columns: column_ids,
                    table: target.id,
                    referenced: referenced_ids,
                },
                name,
            )
        }
    };
    let name = def.name.clone().unwrap_or(default_name);
    if existing.iter().any(|c| c.name == name) {
        return Err(CatalogError::ConstraintExists {
            constraint: name,
            table: table.name.clone(),
        });
    }
    Ok(Constraint { name, kind })
}

/// Whether a table's `WITH (data_chunks, parity_chunks)` is one Quarry can
/// store: 1–32 data chunks, 0–16 parity chunks.
fn layout_in_range(layout: StripeLayout) -> bool {
    (1..=32).contains(&layout.data_chunks) && layout.parity_chunks <= 16
}

/// Validates every part of a commit, then applies it; on error nothing changed.
fn commit(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    changes: &[TableChange],
    read_set: &[(TableId, SnapshotId)],
) -> Result<Applied, CatalogError> {
    check_reads(catalog, read_set)?;
    let mut keys = Vec::with_capacity(changes.len());
    for change in changes {
        let key = catalog
            .table_key(change.table)
            .cloned()
            .ok_or_else(|| CatalogError::TableNotFound(format!("table id {}", change.table)))?;
        let table = &catalog.tables[&key];
        if catalog.external.contains_key(&change.table) {
            return Err(CatalogError::ExternalTable(table.name.clone()));
        }
        for chunk in &change.removed {
            if table.live_file(*chunk).is_none() {
                return Err(CatalogError::SerializationFailure(table.name.clone()));
            }
        }
        if keys.contains(&key) {
            return Err(CatalogError::DuplicateChange(table.name.clone()));
        }
        keys.push(key);
    }
    let snapshot = next_id(catalog);
    let committed_at = commit_time(catalog, proposed_at);
    for (change, key) in changes.iter().zip(keys) {
        let table = Arc::make_mut(catalog.tables.get_mut(&key).expect("validated above"));
        let rows_removed = table.remove_files(&change.removed, snapshot);
        let rows_added: u64 = change.added.iter().map(|f| f.row_count).sum();
        let row_count = table.current_snapshot().row_count + rows_added - rows_removed;
        table.add_files(change.added.iter().cloned(), snapshot);
        table.snapshots.push_back(TableSnapshot {
            id: snapshot,
            committed_at,
            operation: if change.removed.is_empty() {
                Operation::Append
            } else {
                Operation::Rewrite
            },
            row_count,
            rows_added,
            schema_id: table.schema_id,
        });
    }
    for change in changes {
        for stripe in &change.stripes {
            catalog.add_stripe(stripe.clone());
        }
    }
    Ok(Applied::Commit {
        snapshot,
        committed_at,
    })
}

/// Applies [`Command::CommitRows`]: checks its deletes and removals
/// against the catalog, applies its commit, then records the deletes in
/// the commit's snapshot.
fn commit_rows(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    inner: &Command,
    deletes: &[RowDeletes],
    read_at: &[(TableId, SnapshotId)],
) -> Result<Applied, CatalogError> {
    let changes = match inner {
        Command::Commit { changes, .. } | Command::CommitBuffered { changes, .. } => changes,
        _ => {
            return Err(CatalogError::BadRows(
                "they go with a data commit only".to_owned(),
            ));
        }
    };
    let table_of = |id: TableId| {
        catalog
            .table_by_id(id)
            .ok_or_else(|| CatalogError::TableNotFound(format!("table id {id}")))
    };
    for (id, read) in read_at {
        let table = table_of(*id)?;
        let removed = changes
            .iter()
            .filter(|c| c.table == *id)
            .flat_map(|c| &c.removed);
        for chunk in removed {
            if table.deleted_since(*chunk).is_some_and(|at| at > *read) {
                return Err(CatalogError::SerializationFailure(table.name.clone()));
            }
        }
    }
    let mut decoded = Vec::with_capacity(deletes.len());
    for delete in deletes {
        let table = table_of(delete.table)?;
        let Some(change) = changes.iter().find(|c| c.table == delete.table) else {
            return Err(CatalogError::BadRows(format!(
                "the commit does not change \"{}\"",
                table.name
            )));
        };
        if change.removed.contains(&delete.chunk) {
            return Err(CatalogError::BadRows(format!(
                "data file {} is both removed and given deleted rows",
                delete.chunk
            )));
        }
        let rows = decode_rows(&delete.rows)?;
        table
            .check_delete(delete.chunk, &rows)
            .map_err(|_| CatalogError::SerializationFailure(table.name.clone()))?;
        decoded.push((delete.table, delete.chunk, rows));
    }
    let proposal = Proposal {
        command: inner.clone(),
        proposed_at,
    };
    if decoded.is_empty() {
        return apply(catalog, &proposal);
    }
    // Two deletes of one file in the list are checked against each other
    // as they apply, so they apply to a copy first.
    let mut scratch = catalog.clone();
    let applied = apply(&mut scratch, &proposal)?;
    let Applied::Commit { snapshot, .. } = applied else {
        return Err(CatalogError::BadRows(
            "they go with a data commit only".to_owned(),
        ));
    };
    for (id, chunk, rows) in &decoded {
        let table = committed_table(&mut scratch, *id);
        if table.check_delete(*chunk, rows).is_err() {
            return Err(CatalogError::SerializationFailure(table.name.clone()));
        }
        let deleted = table.delete_rows(*chunk, rows, snapshot);
        let current = table.snapshots.back_mut().expect("just committed");
        current.row_count -= deleted;
        current.operation = Operation::Rewrite;
    }
    *catalog = scratch;
    Ok(applied)
}

/// The buffered and moved files among `files` (a CLONE's, shared with its
/// source table) copied into `table`, so that the clone reads them as its
/// source does: their bytes are in the source's buffer, not in a stripe.
fn cloned_buffer(catalog: &Catalog, files: &[DataFile], table: &mut Table) {
    if files.is_empty() {
        return;
    }
    let sources: Vec<&Arc<Table>> = catalog
        .tables
        .values()
        .filter(|t| !t.buffer.is_empty() || !t.moved.is_empty())
        .collect();
    for file in files {
        for source in &sources {
            if let Some(bytes) = source.buffer.get(&file.chunk) {
                table.buffer.insert(file.chunk, bytes.clone());
                break;
            }
            if let Some(ranges) = source.moved.get(&file.chunk) {
                table.moved.insert(file.chunk, ranges.clone());
                break;
            }
        }
    }
}

/// [`Command::SpillBuffered`]: every file checked before any changes.
fn spill_buffered(
    catalog: &mut Catalog,
    table: TableId,
    files: &[ChunkId],
    stripes: &[Stripe],
) -> Result<Applied, CatalogError> {
    let key = catalog
        .table_key(table)
        .cloned()
        .ok_or_else(|| CatalogError::TableNotFound(format!("table id {table}")))?;
    let entry = catalog
        .tables
        .get_mut(&key)
        .expect("the key was just found");
    for chunk in files {
        let replaced = entry.buffer.contains_key(chunk)
            && entry.live_file(*chunk).is_none()
            && entry.files.iter().any(|e| e.file.chunk == *chunk);
        if !replaced {
            return Err(CatalogError::BufferMove(*chunk));
        }
    }
    let table = Arc::make_mut(entry);
    for chunk in files {
        table.buffer.remove(chunk);
    }
    for stripe in stripes {
        catalog.add_stripe(stripe.clone());
    }
    Ok(Applied::Nothing)
}

/// Commits `change` (files added only) as rows of `channel` at `offset`,
/// moving the channel past them and `skipped` bad rows, if `offset` is the
/// channel's next offset; [`CatalogError::ChannelOffset`] otherwise, and
/// [`CatalogError::ChannelState`] for a pending channel, changing nothing.
fn commit_to_channel(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    change: &TableChange,
    channel: &str,
    offset: u64,
    skipped: u64,
) -> Result<Applied, CatalogError> {
    let key = (change.table, channel.to_owned());
    if catalog.pending.contains_key(&key) {
        return Err(CatalogError::ChannelState {
            channel: channel.to_owned(),
            problem: "is pending: its rows are appended as pending and committed together"
                .to_owned(),
        });
    }
    let next_offset = catalog.channels.get(&key).copied().unwrap_or(0);
    at_next_offset(channel, offset, next_offset)?;
    let applied = commit(catalog, proposed_at, std::slice::from_ref(change), &[])?;
    let rows: u64 = change.added.iter().map(|f| f.row_count).sum();
    catalog.channels.insert(key, next_offset + rows + skipped);
    Ok(applied)
}

/// Removes the entries of table `table`'s channels from `channels`.
fn remove_channels_of<V: Clone>(channels: &mut imbl::OrdMap<(TableId, String), V>, table: TableId) {
    let keys: Vec<_> = channels
        .range((table, String::new())..)
        .take_while(|((id, _), _)| *id == table)
        .map(|(key, _)| key.clone())
        .collect();
    for key in keys {
        channels.remove(&key);
    }
}

/// [`CatalogError::ChannelOffset`] unless rows at `offset` are the next of
/// a channel at `next_offset`.
fn at_next_offset(channel: &str, offset: u64, next_offset: u64) -> Result<(), CatalogError> {
    if offset == next_offset {
        return Ok(());
    }
    Err(CatalogError::ChannelOffset {
        channel: channel.to_owned(),
        offset,
        next_offset,
    })
}

/// [`Command::AppendPending`].
fn append_pending(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    change: &TableChange,
    channel: &str,
    offset: u64,
    skipped: u64,
) -> Result<Applied, CatalogError> {
    if !change.removed.is_empty() {
        return Err(CatalogError::AppendRemoves);
    }
    let table = catalog
        .table_key(change.table)
        .map(|key| &catalog.tables[key])
        .ok_or_else(|| CatalogError::TableNotFound(format!("table id {}", change.table)))?;
    if catalog.external.contains_key(&change.table) {
        return Err(CatalogError::ExternalTable(table.name.clone()));
    }
    let key = (change.table, channel.to_owned());
    let pending = catalog.pending.get(&key);
    let next_offset = match (pending, catalog.channels.get(&key)) {
        (Some(pending), _) => pending.next_offset,
        (None, None) => 0,
        // A retry of rows a committed channel holds, told apart from new
        // rows by its offset.
        (None, Some(&next_offset)) if offset < next_offset => next_offset,
        (None, Some(_)) => {
            return Err(CatalogError::ChannelState {
                channel: channel.to_owned(),
                problem: "is not pending: its rows were committed".to_owned(),
            });
        }
    };
    at_next_offset(channel, offset, next_offset)?;
    let rows: u64 = change.added.iter().map(|f| f.row_count).sum();
    let mut files = pending.map(|p| p.files.clone()).unwrap_or_default();
    files.extend(change.added.iter().cloned());
    catalog.pending.insert(
        key,
        Arc::new(PendingChannel {
            files,
            next_offset: next_offset + rows + skipped,
            appended_at: proposed_at,
        }),
    );
    for stripe in &change.stripes {
        catalog.add_stripe(stripe.clone());
    }
    Ok(Applied::Nothing)
}

/// [`Command::CommitPending`].
fn commit_pending(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    table: TableId,
    channels: &[String],
) -> Result<Applied, CatalogError> {
    let mut added = Vec::new();
    let mut committing = Vec::new();
    for channel in channels {
        let key = (table, channel.clone());
        match catalog.pending.get(&key) {
            Some(pending) => {
                added.extend(pending.files.iter().cloned());
                committing.push((key, pending.next_offset));
            }
            None if catalog.channels.contains_key(&key) => {}
            None => return Err(CatalogError::ChannelNotFound(channel.clone())),
        }
    }
    if committing.is_empty() {
        return Ok(Applied::Nothing);
    }
    let change = TableChange {
        table,
        added,
        removed: Vec::new(),
        stripes: Vec::new(),
    };
    let applied = commit(catalog, proposed_at, std::slice::from_ref(&change), &[])?;
    for (key, next_offset) in committing {
        catalog.pending.remove(&key);
        catalog.channels.insert(key, next_offset);
    }
    Ok(applied)
}

/// Table `id`, which a commit has just changed, to change further.
fn committed_table(catalog: &mut Catalog, id: TableId) -> &mut Table {
    let name = catalog.table_key(id).cloned().expect("just committed");
    Arc::make_mut(catalog.tables.get_mut(&name).expect("just committed"))
}

/// The columns a new table gets for `defs`: field ids 1, 2, ... in order.
pub fn columns_from_defs(defs: &[ColumnDef]) -> Vec<Column> {
    defs.iter()
        .zip(1..)
        .map(|(c, field_id)| Column {
            field_id,
            name: c.name.clone(),
            column_type: c.column_type.clone(),
            nullable: c.nullable,
            default: c.default.clone(),
        })
        .collect()
}

/// Changes table `schema.name` by `set` if it was just created (its one
/// snapshot's files written for the change) and `fits` accepts it:
/// `Command::SetPartitioning` and `Command::SetFileLayout`, proposed in
/// one batch with the CREATE TABLE. [`CatalogError::Partitioning`]
/// otherwise, naming what it was to be (`partitioned`, `clustered`).
fn set_at_creation(
    catalog: &mut Catalog,
    schema: &str,
    name: &str,
    what: &str,
    fits: impl FnOnce(&Table) -> Result<(), String>,
    set: impl FnOnce(&mut Table),
) -> Result<Applied, CatalogError> {
    let table = catalog
        .table(schema, name)
        .ok_or_else(|| CatalogError::TableNotFound(name.to_owned()))?;
    if table.snapshots.len() != 1 {
        return Err(CatalogError::Partitioning(format!(
            "\"{name}\" can only be {what} when it is created"
        )));
    }
    fits(table).map_err(|why| CatalogError::Partitioning(format!("\"{name}\" {why}")))?;
    let key = (schema.to_owned(), name.to_owned());
    set(Arc::make_mut(
        catalog.tables.get_mut(&key).expect("found above"),
    ));
    Ok(Applied::Nothing)
}

/// Whether a column of type `from` may become `to` without rewriting or losing
/// data.
///
/// A struct widens to one that has each of its fields (by name, in the same
/// order, each widening) and more fields after them; an array to one whose
/// element widens. Nested field ids are not compared.
pub fn is_widening(from: &ColumnType, to: &ColumnType) -> bool {
    use ColumnType as T;
    match (from, to) {
        (a, b) if a == b => true,
        (T::Array(a), T::Array(b)) => is_widening(&a.column_type, &b.column_type),
        (T::Struct(a), T::Struct(b)) => {
            a.len() <= b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| a.name == b.name && is_widening(&a.column_type, &b.column_type))
        }
        (T::Int16, T::Int32 | T::Int64) | (T::Int32, T::Int64) | (T::Float32, T::Float64) => true,
        (
            T::Decimal {
                precision: p1,
                scale: s1,
            },
            T::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

fn alter(
    catalog: &mut Catalog,
    proposed_at: TimestampMicros,
    id: TableId,
    change: &SchemaChange,
) -> Result<Applied, CatalogError> {
    let key = catalog
        .table_key(id)
        .cloned()
        .ok_or_else(|| CatalogError::TableNotFound(format!("table id {id}")))?;
    let current = &catalog.tables[&key];
    let mut columns = current.columns.clone();
    let mut next_field_id = current.next_field_id;
    let mut new_key = key.clone();
    let find = |columns: &[Column], name: &str| {
        columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| CatalogError::ColumnNotFound(name.to_owned()))
    };
    match change {
        SchemaChange::AddColumn(def) => {
            if columns.iter().any(|c| c.name == def.name) {
                return Err(CatalogError::DuplicateColumn(def.name.clone()));
            }
            let field_id = next_field_id;
            next_field_id += 1;
            let mut column_type = def.column_type.clone();
            column_type.assign_field_ids(&mut next_field_id);
            columns.push(Column {
                field_id,
                name: def.name.clone(),
                column_type,
                nullable: def.nullable,
                default: def.default.clone(),
            });
        }
        SchemaChange::DropColumn(name) => {
            let index = find(&columns, name)?;
            if columns.len() == 1 {
                return Err(CatalogError::LastColumn);
            }
            columns.remove(index);
        }
        SchemaChange::RenameColumn { from, to } => {
            let index = find(&columns, from)?;
            if columns.iter().any(|c| c.name == *to) {
                return Err(CatalogError::DuplicateColumn(to.clone()));
            }
            columns[index].name = to.clone();
        }
        SchemaChange::RenameTable(to) => {
            new_key = (key.0.clone(), to.clone());
            if catalog.relation_exists(&new_key.0, &new_key.1) {
                return Err(CatalogError::TableExists(to.clone()));
            }
        }
        SchemaChange::SetType {
            column,
            column_type,
        } => {
            let index = find(&columns, column)?;
            let from = &columns[index].column_type;
            if !is_widening(from, column_type) {
                return Err(CatalogError::NarrowingTypeChange {
                    column: column.clone(),
                    from: from.clone(),
                    to: column_type.clone(),
                });
            }
            let mut to = column_type.clone();
            to.keep_field_ids(from, &mut next_field_id);
            columns[index].column_type = to;
        }
    }
    let snapshot = next_id(catalog);
    let committed_at = commit_time(catalog, proposed_at);
    let mut entry = catalog.remove_table(&key).expect("the key was just found");
    let table = Arc::make_mut(&mut entry);
    let old = std::mem::replace(&mut table.columns, columns);
    table.past_schemas.push(SchemaVersion {
        id: table.schema_id,
        columns: old,
    });
    table.schema_id += 1;
    table.next_field_id = next_field_id;
    table.name = new_key.1.clone();
    let row_count = table.current_snapshot().row_count;
    table.snapshots.push_back(TableSnapshot {
        id: snapshot,
        committed_at,
        operation: Operation::Alter,
        row_count,
        rows_added: 0,
        schema_id: table.schema_id,
    });
    catalog.insert_table(new_key, entry);
    Ok(Applied::Commit {
        snapshot,
        committed_at,
    })
}

fn next_id(catalog: &mut Catalog) -> u64 {
    catalog.next_id += 1;
    catalog.next_id
}

/// Refuses a SERIALIZABLE commit if a table it read changed (or went) since
/// the snapshot it read.
fn check_reads(catalog: &Catalog, read_set: &[(TableId, SnapshotId)]) -> Result<(), CatalogError> {
    for (table, read_at) in read_set {
        let current = catalog
            .table_by_id(*table)
            .map(|t| (t.name.clone(), t.current_snapshot().id));
        match current {
            Some((_, id)) if id == *read_at => {}
            Some((name, _)) => return Err(CatalogError::SerializationFailure(name)),
            None => {
                return Err(CatalogError::SerializationFailure(format!(
                    "table id {table}"
                )));
            }
        }
    }
    Ok(())
}

/// The commit time of a new commit: the proposer's time, but always after the
/// previous commit, so time travel by timestamp is unambiguous.
fn commit_time(catalog: &mut Catalog, proposed_at: TimestampMicros) -> TimestampMicros {
    let at = proposed_at.max(catalog.last_commit_at + 1);
    catalog.last_commit_at = at;
    at
}

#[cfg(test)]
pub(crate) mod tests;
