//! Transaction blocks: BEGIN / COMMIT / ROLLBACK, isolation levels, the
//! catalog view a statement or transaction pins, and committing a write set as
//! one Raft command.

use quarry_common::catalog::{SnapshotId, TableId};

use crate::data_file::Taken;

use super::*;

/// Isolation levels. READ COMMITTED and REPEATABLE READ both run as snapshot
/// isolation (the SQL standard allows a stronger level than asked for);
/// SERIALIZABLE adds validation at commit that nothing the transaction read
/// changed meanwhile, which rules out write skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isolation {
    Snapshot,
    Serializable,
}

impl Isolation {
    pub(super) fn from_level(level: &ast::TransactionIsolationLevel) -> Isolation {
        match level {
            ast::TransactionIsolationLevel::Serializable => Isolation::Serializable,
            _ => Isolation::Snapshot,
        }
    }

    pub(super) fn from_setting(value: Option<&str>) -> Isolation {
        match value {
            Some(v) if v.eq_ignore_ascii_case("serializable") => Isolation::Serializable,
            _ => Isolation::Snapshot,
        }
    }

    /// PostgreSQL's name for the level actually provided.
    pub(super) fn name(self) -> &'static str {
        match self {
            Isolation::Snapshot => "repeatable read",
            Isolation::Serializable => "serializable",
        }
    }
}

/// An open BEGIN ... COMMIT block: one pinned catalog (its snapshot) and one
/// write set for all its statements.
///
/// DDL in the block (PostgreSQL's transactional DDL) applies to the block's
/// own copy of the catalog, which its later statements see and no other
/// session does; COMMIT sends it with the data as one
/// [`Command::Transaction`], ROLLBACK forgets it.
pub(super) struct Transaction {
    pub(super) view: CatalogView,
    /// The catalog as BEGIN pinned it, before the block's DDL.
    base: Arc<Catalog>,
    pub(super) isolation: Isolation,
    /// A statement failed: only ROLLBACK (or COMMIT, which rolls back) and
    /// ROLLBACK TO SAVEPOINT are accepted.
    pub(super) failed: bool,
    /// Savepoints, oldest first; a savepoint's position is its depth in the
    /// write set ([`WriteSet::savepoint`]). A name may repeat: the newest
    /// one is meant, as in PostgreSQL.
    savepoints: Vec<Savepoint>,
    /// The block's DDL, as applied to `view.catalog`, in order.
    ddl: Vec<Command>,
    /// The ids its CREATE TABLEs took in `view.catalog`, in order.
    provisional: Vec<TableId>,
}

/// What ROLLBACK TO restores besides the write set's depth.
struct Savepoint {
    name: String,
    catalog: Arc<Catalog>,
    ddl: usize,
    provisional: usize,
}

impl Transaction {
    fn new(view: CatalogView, isolation: Isolation) -> Transaction {
        Transaction {
            base: view.catalog.clone(),
            view,
            isolation,
            failed: false,
            savepoints: Vec::new(),
            ddl: Vec::new(),
            provisional: Vec::new(),
        }
    }

    /// Applies DDL `command` to the block's catalog (not yet to the
    /// cluster's): later statements of the block see it, COMMIT sends it.
    fn apply_ddl(&mut self, command: Command) -> Result<()> {
        let mut catalog = (*self.view.catalog).clone();
        let proposal = quarry_raft::Proposal {
            command,
            proposed_at: quarry_raft::now_micros(),
        };
        let applied = quarry_raft::command::apply(&mut catalog, &proposal)?;
        if applied == Applied::Nothing && catalog == *self.view.catalog {
            // IF [NOT] EXISTS matched: nothing to send. (Views, comments and
            // constraints report Nothing too, but change the catalog.)
            return Ok(());
        }
        let mut command = proposal.command;
        // What was created here must be created at COMMIT too: should a
        // concurrent commit have created it meanwhile, COMMIT fails (42P07)
        // instead of writing into that other table.
        definite(&mut command);
        self.provisional
            .extend(quarry_raft::created_tables(&command, &applied));
        self.ddl.push(command);
        self.view.catalog = Arc::new(catalog);
        Ok(())
    }

    /// The depth of the newest savepoint called `name`.
    fn savepoint_depth(&self, name: &str) -> Result<usize> {
        self.savepoints
            .iter()
            .rposition(|s| s.name == name)
            .ok_or_else(|| {
                user_error(
                    SqlState::INVALID_SAVEPOINT_SPECIFICATION,
                    format!("savepoint \"{name}\" does not exist"),
                )
            })
    }
}

/// Clears IF NOT EXISTS from the creations of `command`.
fn definite(command: &mut Command) {
    match command {
        Command::CreateTable { if_not_exists, .. }
        | Command::CreateSchema { if_not_exists, .. } => *if_not_exists = false,
        Command::Batch(commands) => commands.iter_mut().for_each(definite),
        Command::Owned { command, .. } => definite(command),
        _ => {}
    }
}

/// Whether a failed metadata write certainly did not commit, so the data files it
/// named are garbage now. An unknown outcome (`Unavailable`) keeps them; garbage
/// collection decides later.
pub(super) fn refused(e: &quarry_raft::Error) -> bool {
    matches!(
        e,
        quarry_raft::Error::Catalog(_) | quarry_raft::Error::NotLeader { .. }
    )
}

/// Commits everything `writes` holds as one Raft command; on a definite refusal
/// deletes the files it wrote. With `serializable`, the commit also fails if any
/// table the transaction read changed meanwhile.
pub(super) async fn commit_changes(
    meta: &dyn Metadata,
    writes: &WriteSet,
    serializable: bool,
) -> Result<()> {
    commit_changes_with(meta, writes, serializable, None).await
}

/// [`commit_changes`], with `extra` (if any) in the same Raft command: the
/// command commits whether or not there are changes.
async fn commit_changes_with(
    meta: &dyn Metadata,
    writes: &WriteSet,
    serializable: bool,
    extra: Option<Command>,
) -> Result<()> {
    let mut taken = writes.take().await?;
    if taken.changes.is_empty() {
        if let Some(extra) = extra {
            meta.write(extra).await?;
        }
        return Ok(());
    }
    let read_at = taken.reads.clone();
    let read_set = if serializable {
        std::mem::take(&mut taken.reads)
    } else {
        Vec::new()
    };
    let command = data_commit(&taken, read_set, read_at);
    let command = match extra {
        Some(extra) => Command::Batch(vec![command, extra]),
        None => command,
    };
    if let Err(e) = meta.write(command).await {
        if refused(&e) {
            writes.discard_taken(taken);
        }
        return Err(e.into());
    }
    Ok(())
}

/// The command committing `taken`'s changes: [`Command::CommitBuffered`]
/// when it holds small files for the ingest buffer, else
/// [`Command::Commit`]; within [`Command::CommitRows`] when it deletes
/// rows by deletion vectors or replaces files, with the snapshot each
/// changed table was read at (`reads`: a file whose rows a commit deleted
/// after that must not be replaced by what was read).
pub(super) fn data_commit(
    taken: &Taken,
    read_set: Vec<(TableId, SnapshotId)>,
    reads: Vec<(TableId, SnapshotId)>,
) -> Command {
    let commit = if taken.held.is_empty() {
        Command::Commit {
            changes: taken.changes.clone(),
            read_set,
        }
    } else {
        Command::CommitBuffered {
            changes: taken.changes.clone(),
            read_set,
            buffered: taken.held.clone(),
        }
    };
    if taken.deletes.is_empty() && taken.changes.iter().all(|c| c.removed.is_empty()) {
        return commit;
    }
    let read_at = reads
        .into_iter()
        .filter(|(table, _)| taken.changes.iter().any(|c| c.table == *table))
        .collect();
    Command::CommitRows {
        commit: Box::new(commit),
        deletes: taken.deletes.clone(),
        read_at,
    }
}

/// COMMIT of a transaction block with DDL: the DDL and the data changes of
/// the tables that still exist, as one [`Command::Transaction`].
async fn commit_with_ddl(
    meta: &dyn Metadata,
    transaction: Transaction,
    extra: Option<Command>,
) -> Result<()> {
    let writes = &transaction.view.writes;
    let Taken {
        changes,
        reads,
        held,
        deletes,
    } = writes.take().await?;
    // Rows written to a table the block dropped afterwards go with it.
    let (changes, gone): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|c| transaction.view.catalog.table_by_id(c.table).is_some());
    let kept: std::collections::HashSet<_> = changes
        .iter()
        .flat_map(|c| c.added.iter().map(|f| f.chunk))
        .collect();
    let (held, gone_held) = held
        .into_iter()
        .partition(|(chunk, _)| kept.contains(chunk));
    writes.discard_taken(Taken {
        changes: gone,
        reads: Vec::new(),
        held: gone_held,
        deletes: Vec::new(),
    });
    let deletes = deletes
        .into_iter()
        .filter(|d| changes.iter().any(|c| c.table == d.table))
        .collect();
    let taken = Taken {
        changes,
        reads: Vec::new(),
        held,
        deletes,
    };
    // The block read the tables that existed at BEGIN as BEGIN pinned them
    // (under its own changes); its own tables nobody else saw.
    let pinned: Vec<(TableId, SnapshotId)> = reads
        .into_iter()
        .filter_map(|(id, _)| {
            let table = transaction.base.table_by_id(id)?;
            Some((id, table.current_snapshot().id))
        })
        .collect();
    let read_set = match transaction.isolation {
        Isolation::Serializable => pinned.clone(),
        Isolation::Snapshot => Vec::new(),
    };
    let mut altered = Vec::new();
    for command in &transaction.ddl {
        altered_tables(command, &mut altered);
    }
    let altered = altered
        .into_iter()
        .filter_map(|id| Some((id, transaction.base.table_by_id(id)?.schema_id)))
        .collect();
    let mut commands = transaction.ddl;
    if !taken.changes.is_empty() {
        commands.push(data_commit(&taken, Vec::new(), pinned));
    }
    commands.extend(extra);
    let command = Command::Transaction {
        read_set,
        altered,
        commands,
        provisional: transaction.provisional,
    };
    if let Err(e) = meta.write(command).await {
        if refused(&e) {
            writes.discard_taken(taken);
        }
        return Err(e.into());
    }
    Ok(())
}

/// The tables `command` alters (ALTER TABLE), into `into` once each.
fn altered_tables(command: &Command, into: &mut Vec<TableId>) {
    match command {
        Command::AlterTable { table, .. } if !into.contains(table) => into.push(*table),
        Command::Batch(commands) => commands.iter().for_each(|c| altered_tables(c, into)),
        _ => {}
    }
}

impl Session {
    /// Pins the catalog and write set the next statement runs against: the open
    /// transaction's, or else the newest catalog and a fresh write set.
    pub(super) async fn begin_statement(&self) -> Result<CatalogView> {
        let view = match &self.transaction {
            Some(transaction) => transaction.view.clone(),
            None => self.fresh_view().await?,
        };
        let copy_on_write = self
            .setting("dml_mode")
            .is_some_and(|mode| mode.eq_ignore_ascii_case("copy-on-write"));
        view.writes.set_merge_on_read(!copy_on_write);
        self.catalog.set_view(view.clone());
        self.catalog.remove_system_schema(AS_OF_SCHEMA);
        // Views planned for this statement are checked as they are planned.
        let access = match self.user().role {
            Some(_) => Some(Arc::new(self.fresh_access().await?)),
            None => None,
        };
        self.catalog.set_access(access);
        Ok(view)
    }

    pub(super) async fn fresh_view(&self) -> Result<CatalogView> {
        Ok(CatalogView {
            catalog: self.engine.meta.read().await?,
            writes: Arc::new(WriteSet::holding(
                self.engine.chunks.clone(),
                self.engine
                    .resources
                    .buffer_file_rows
                    .unwrap_or(SMALL_FILE_ROWS),
            )),
        })
    }

    /// Whether a transaction block (BEGIN ... COMMIT) is open.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// Commits what an autocommit statement wrote; inside a transaction block the
    /// writes wait for COMMIT.
    pub(super) async fn commit_statement(&self, writes: &WriteSet) -> Result<()> {
        if self.transaction.is_some() {
            return Ok(());
        }
        commit_changes(self.engine.meta.as_ref(), writes, false).await
    }

    pub(super) async fn begin(&mut self, modes: &[ast::TransactionMode]) -> Result<Output> {
        if self.transaction.is_some() {
            tracing::debug!("BEGIN inside a transaction block is ignored, as in PostgreSQL");
            return Ok(Output::Command(CommandTag::new("BEGIN")));
        }
        let mut isolation = Isolation::from_setting(self.setting("default_transaction_isolation"));
        for mode in modes {
            match mode {
                ast::TransactionMode::IsolationLevel(level) => {
                    isolation = Isolation::from_level(level)
                }
                ast::TransactionMode::AccessMode(_) => {}
            }
        }
        self.transaction = Some(Transaction::new(self.fresh_view().await?, isolation));
        Ok(Output::Command(CommandTag::new("BEGIN")))
    }

    pub(super) async fn end(&mut self, commit: bool) -> Result<Output> {
        let committing = commit && self.transaction.as_ref().is_some_and(|t| !t.failed);
        if self.transaction.is_some() {
            self.close_transaction_cursors(committing);
        }
        let Some(transaction) = self.transaction.take() else {
            // PostgreSQL warns "there is no transaction in progress" and goes on.
            return Ok(Output::Command(CommandTag::new(if commit {
                "COMMIT"
            } else {
                "ROLLBACK"
            })));
        };
        if !commit || transaction.failed {
            transaction.view.writes.discard();
            return Ok(Output::Command(CommandTag::new("ROLLBACK")));
        }
        let serializable = transaction.isolation == Isolation::Serializable;
        if transaction.ddl.is_empty() {
            commit_changes(
                self.engine.meta.as_ref(),
                &transaction.view.writes,
                serializable,
            )
            .await?;
        } else {
            commit_with_ddl(self.engine.meta.as_ref(), transaction, None).await?;
        }
        Ok(Output::Command(CommandTag::new("COMMIT")))
    }

    /// COMMIT of the open transaction block with `extra` in the same Raft
    /// command, applied with the block's changes or not at all (a
    /// subscription's applied position with the rows of the source
    /// transaction it applied).
    ///
    /// # Errors
    /// 25P01 without a block; 25P02 for a failed block (rolled back); the
    /// commit's error, `extra`'s refusal included (nothing is committed).
    pub async fn commit_with(&mut self, extra: Command) -> Result<()> {
        let Some(transaction) = self.transaction.take() else {
            return Err(user_error(
                SqlState::NO_ACTIVE_SQL_TRANSACTION,
                "there is no transaction in progress",
            ));
        };
        self.transaction = Some(transaction);
        self.close_transaction_cursors(true);
        let transaction = self.transaction.take().expect("put back above");
        if transaction.failed {
            transaction.view.writes.discard();
            return Err(user_error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted",
            ));
        }
        let serializable = transaction.isolation == Isolation::Serializable;
        if transaction.ddl.is_empty() {
            commit_changes_with(
                self.engine.meta.as_ref(),
                &transaction.view.writes,
                serializable,
                Some(extra),
            )
            .await
        } else {
            commit_with_ddl(self.engine.meta.as_ref(), transaction, Some(extra)).await
        }
    }

    /// The id of table `schema.name` as the session sees it now (in a
    /// transaction block, its catalog: a table the block created has a
    /// provisional id until COMMIT).
    ///
    /// # Errors
    /// As reading the catalog.
    pub async fn table_id(&self, schema: &str, name: &str) -> Result<Option<TableId>> {
        Ok(self.ddl_catalog().await?.table(schema, name).map(|t| t.id))
    }

    /// The column names of table `schema.name` as the session sees it now
    /// (in a transaction block, after the block's own DDL).
    ///
    /// # Errors
    /// As reading the catalog.
    pub async fn table_columns(&self, schema: &str, name: &str) -> Result<Option<Vec<String>>> {
        Ok(self
            .ddl_catalog()
            .await?
            .table(schema, name)
            .map(|t| t.columns.iter().map(|c| c.name.clone()).collect()))
    }

    /// Writes DDL `command`: to the cluster at once, or inside a transaction
    /// block to the block's catalog until COMMIT.
    pub(super) async fn write_ddl(&mut self, command: Command) -> Result<()> {
        let command = self.authorize(command).await?;
        let audited = command.clone();
        match &mut self.transaction {
            None => {
                self.engine.meta.write(command).await?;
            }
            Some(transaction) => transaction.apply_ddl(command)?,
        }
        self.engine.audit_command(&self.user.name, &audited);
        Ok(())
    }

    /// `command` checked against the session's privileges, and what it
    /// creates owned by the session's role.
    pub(super) async fn authorize(&self, command: Command) -> Result<Command> {
        let pinned = self.ddl_catalog().await?;
        let latest = match &self.transaction {
            Some(_) if self.user.role.is_some() => self.engine.meta.read().await?,
            _ => pinned.clone(),
        };
        Access::new(latest, pinned, self.user.role, self.default_schema()).authorize(command)
    }

    /// The catalog DDL checks names against: the transaction block's (with
    /// its own DDL), or the newest.
    pub(super) async fn ddl_catalog(&self) -> Result<Arc<Catalog>> {
        match &self.transaction {
            Some(transaction) => Ok(transaction.view.catalog.clone()),
            None => Ok(self.engine.meta.read().await?),
        }
    }

    /// The open transaction, or 25P01 naming `what` (PostgreSQL's
    /// "... can only be used in transaction blocks").
    fn transaction_block(&mut self, what: &str) -> Result<&mut Transaction> {
        self.transaction.as_mut().ok_or_else(|| {
            user_error(
                SqlState::NO_ACTIVE_SQL_TRANSACTION,
                format!("{what} can only be used in transaction blocks"),
            )
        })
    }

    /// SAVEPOINT name: a point ROLLBACK TO can return the transaction to.
    pub(super) fn savepoint(&mut self, name: &Ident) -> Result<Output> {
        let transaction = self.transaction_block("SAVEPOINT")?;
        let depth = transaction.view.writes.savepoint();
        debug_assert_eq!(depth, transaction.savepoints.len());
        transaction.savepoints.push(Savepoint {
            name: normalize(name),
            catalog: transaction.view.catalog.clone(),
            ddl: transaction.ddl.len(),
            provisional: transaction.provisional.len(),
        });
        Ok(Output::Command(CommandTag::new("SAVEPOINT")))
    }

    /// RELEASE [SAVEPOINT] name: forgets the savepoint and every later one,
    /// keeping what was done since.
    pub(super) fn release_savepoint(&mut self, name: &Ident) -> Result<Output> {
        let transaction = self.transaction_block("RELEASE SAVEPOINT")?;
        let depth = transaction.savepoint_depth(&normalize(name))?;
        transaction.view.writes.release(depth);
        transaction.savepoints.truncate(depth);
        Ok(Output::Command(CommandTag::new("RELEASE")))
    }

    /// ROLLBACK TO [SAVEPOINT] name: undoes what was done since the
    /// savepoint, which stays; later savepoints are gone. A failed
    /// transaction can go on from there.
    pub(super) fn rollback_to_savepoint(&mut self, name: &Ident) -> Result<Output> {
        let transaction = self.transaction_block("ROLLBACK TO SAVEPOINT")?;
        let depth = transaction.savepoint_depth(&normalize(name))?;
        transaction.view.writes.rollback_to(depth);
        transaction.savepoints.truncate(depth + 1);
        let savepoint = &transaction.savepoints[depth];
        transaction.view.catalog = savepoint.catalog.clone();
        transaction.ddl.truncate(savepoint.ddl);
        transaction.provisional.truncate(savepoint.provisional);
        transaction.failed = false;
        Ok(Output::Command(CommandTag::new("ROLLBACK")))
    }

    /// The isolation level of the open transaction, or the default for new ones.
    pub(super) fn isolation_name(&self) -> &'static str {
        match &self.transaction {
            Some(t) => t.isolation.name(),
            None => Isolation::from_setting(self.setting("default_transaction_isolation")).name(),
        }
    }
}
