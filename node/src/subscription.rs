//! The applier of a subscription to a PostgreSQL publication
//! (`quarry_common::subscription`): a logical replication subscriber that
//! copies the published tables and then applies the source's transactions,
//! each as one Quarry commit holding its rows and the subscription's new
//! applied position (docs/CDC.md).
//!
//! - **Copy and hand-off.** On a replication connection
//!   (`quarry_exec::replication`), `CREATE_REPLICATION_SLOT ... (SNAPSHOT
//!   'export')` makes the slot and exports the snapshot of its consistent
//!   point; a second, ordinary connection copies each published table in a
//!   transaction that imports that snapshot (`SET TRANSACTION SNAPSHOT`).
//!   The tables (created in Quarry with mapped types where missing), their
//!   rows and the position (the consistent point) commit in one Quarry
//!   transaction; then the replication connection streams from the slot.
//!   Every source transaction is in the copy or in the stream, not both. A
//!   copy that did not commit is redone from a new slot.
//! - **Apply.** pgoutput messages (`quarry_exec::pgoutput`) are gathered
//!   per source transaction; the transactions received (up to
//!   [`BATCH_TRANSACTIONS`]) are applied in order in one Quarry transaction
//!   block, each table's inserts, deletes and updates as their net effect
//!   (one DELETE by replica identity, one COPY), an update that left a
//!   TOASTed value unchanged as an UPDATE of the columns sent, committed
//!   with the position ([`quarry_exec::Session::commit_with`]). The source is told the
//!   position only after that commit; a transaction at or below the
//!   committed position is skipped.
//! - **Streamed transactions** (pgoutput protocol 2): spooled while in
//!   progress and applied at their commit ([`streamed`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quarry_common::subscription::{
    Lsn, Progress, SourceColumn, SubscribedTable, Subscription, SubscriptionPhase,
};
use quarry_exec::pgoutput::{self, Message, Relation, Value};
use quarry_exec::replication::{
    LogicalOptions, ReplicationConnection, ReplicationEvent, ReplicationStream,
};
use quarry_exec::source::SourceConfig;
use quarry_exec::{Output, Session};
use quarry_raft::Command;

use quarry_raft::Meta;

mod streamed;
use streamed::Streamed;

/// A point the crash tests kill the applying node at (docs/CDC.md): with
/// fail points compiled in (test builds; node/Cargo.toml) and
/// `FAILPOINTS=<name>=return`, the process sends itself SIGKILL here, as
/// `kill -9` would, at exactly this step. In a release build it is nothing.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            tracing::warn!(point = $name, "crash point reached: SIGKILL");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL returned")
        })
    };
}

/// Why an applier stopped (recorded as the subscription's last error).
type ApplyError = String;

/// How often the leader looks for subscriptions to start or stop.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs an applier for each enabled subscription while this node leads
/// Raft; stops them when it no longer does, or when a subscription is
/// disabled or dropped. An applier that fails is restarted after a pause.
pub async fn run(engine: Arc<quarry_exec::Engine>, meta: Arc<Meta>, spool_dir: PathBuf) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut ticker = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        ticker.tick().await;
        let metrics = meta.raft().metrics().borrow().clone();
        let leading = metrics.current_leader == Some(metrics.id);
        let wanted: Vec<String> = match meta.read().await {
            Ok(catalog) if leading => catalog
                .subscriptions
                .values()
                .filter(|s| s.enabled)
                .map(|s| s.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        running.retain(|name, task| {
            let keep = wanted.contains(name) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for name in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let (engine, meta, spool_dir) = (engine.clone(), meta.clone(), spool_dir.clone());
            let task_name = name.clone();
            running.insert(
                name,
                tokio::spawn(async move {
                    if let Err(error) = Box::pin(apply(&engine, &meta, &task_name, spool_dir)).await
                    {
                        tracing::warn!(subscription = %task_name, %error, "subscription stopped");
                        let _ = meta
                            .write(Command::SubscriptionFailed {
                                name: task_name.clone(),
                                error,
                            })
                            .await;
                        // Retried by the next supervision after a pause.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }),
            );
        }
    }
}

/// The subscription `name` as the catalog holds it now.
async fn current(meta: &Meta, name: &str) -> Result<Arc<Subscription>, ApplyError> {
    let catalog = meta.read().await.map_err(|e| e.to_string())?;
    catalog
        .subscriptions
        .get(name)
        .cloned()
        .ok_or_else(|| format!("subscription \"{name}\" was dropped"))
}

/// Copies (if the copy has not committed) and then streams.
async fn apply(
    engine: &Arc<quarry_exec::Engine>,
    meta: &Meta,
    name: &str,
    spool_dir: PathBuf,
) -> Result<(), ApplyError> {
    let subscription = current(meta, name).await?;
    let source = Source::of(&subscription)?;
    let wal_end = SourceWalEnd::watch(&source).await?;
    let replication = match subscription.phase {
        SubscriptionPhase::Copying => {
            Box::pin(copy(engine, &subscription, &source, &wal_end)).await?
        }
        SubscriptionPhase::Streaming => {
            let applied = subscription.applied_lsn;
            let connection = source.replication().await?;
            Source::start(connection, &subscription, applied).await?
        }
    };
    let streamed = Streamed::new(spool_dir);
    Box::pin(stream(
        engine,
        meta,
        name,
        (&source, &wal_end),
        (replication, streamed),
    ))
    .await
}

/// The source's current end of WAL, polled every second on an ordinary
/// connection (`pg_current_wal_lsn()`, or the replay position of a
/// standby) while the applier runs: the commits record it, for lag in
/// bytes. The replication stream alone does not tell it: a logical
/// walsender's messages carry the position it has decoded up to.
struct SourceWalEnd {
    lsn: Arc<std::sync::atomic::AtomicU64>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl SourceWalEnd {
    /// Polls once now, then every second.
    async fn watch(source: &Source) -> Result<SourceWalEnd, ApplyError> {
        let client = source.sql().await?;
        let lsn = Arc::new(std::sync::atomic::AtomicU64::new(0));
        poll_wal_end(&client, &lsn).await?;
        let (polled, source) = (lsn.clone(), source.clone());
        let task = tokio::spawn(async move {
            let mut client = Some(client);
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                if client.is_none() {
                    client = source.sql().await.ok();
                }
                if let Some(connected) = &client
                    && poll_wal_end(connected, &polled).await.is_err()
                {
                    client = None;
                }
            }
        });
        Ok(SourceWalEnd {
            lsn,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    /// The end last polled, or `seen` (a position the stream showed) if
    /// that is further.
    fn at_least(&self, seen: Lsn) -> Lsn {
        self.lsn
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(seen)
    }
}

/// Reads the source's current end of WAL into `into` (which only grows).
async fn poll_wal_end(
    client: &tokio_postgres::Client,
    into: &std::sync::atomic::AtomicU64,
) -> Result<(), ApplyError> {
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                     ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read the source's WAL position: {e}"))?;
    let end = pgoutput::parse_lsn(row.get::<_, &str>(0)).map_err(|e| e.to_string())?;
    into.fetch_max(end, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Where a subscription's source is and how to reach it (over TLS as its
/// `sslmode` says: `quarry_exec::source`).
#[derive(Clone)]
struct Source(SourceConfig);

impl Source {
    fn of(subscription: &Subscription) -> Result<Source, ApplyError> {
        SourceConfig::parse(&subscription.connection, subscription.password.as_deref()).map(Source)
    }

    /// An ordinary connection.
    async fn sql(&self) -> Result<tokio_postgres::Client, ApplyError> {
        self.0.connect("quarry subscription").await
    }

    /// A replication connection, not yet streaming.
    async fn replication(&self) -> Result<ReplicationConnection, ApplyError> {
        ReplicationConnection::connect(&self.0, "quarry subscription")
            .await
            .map_err(|e| format!("cannot open a replication connection: {e}"))
    }

    /// Starts streaming `subscription`'s slot on `connection` from
    /// `position` (0: the slot's confirmed position), reporting it as
    /// applied. Large transactions are streamed while in progress
    /// (pgoutput protocol 2) when the source can (version 14 and later).
    async fn start(
        connection: ReplicationConnection,
        subscription: &Subscription,
        position: Lsn,
    ) -> Result<ReplicationStream, ApplyError> {
        let options = LogicalOptions {
            publications: subscription.publications.clone(),
            streaming: connection.server_version() >= 140000,
        };
        connection
            .start(&subscription.slot_name, position, &options, position)
            .await
    }
}

/// A published table as the source describes it.
struct SourceTable {
    schema: String,
    name: String,
    /// Its columns as the source declares them.
    columns: Vec<SourceColumn>,
}

/// The Quarry column type of a source column of type `oid` with modifier
/// `typmod`, or None for a type Quarry cannot hold.
fn quarry_type(oid: u32, typmod: i32) -> Option<String> {
    let numeric = |typmod: i32| {
        if typmod < 4 {
            "numeric".to_owned()
        } else {
            let m = typmod - 4;
            format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff)
        }
    };
    Some(match oid {
        16 => "boolean".to_owned(),
        17 => "bytea".to_owned(),
        20 => "bigint".to_owned(),
        21 => "smallint".to_owned(),
        23 => "integer".to_owned(),
        // text, varchar, char, name, uuid: text.
        25 | 1043 | 1042 | 19 | 2950 => "text".to_owned(),
        114 | 3802 => "jsonb".to_owned(),
        700 => "real".to_owned(),
        701 => "double precision".to_owned(),
        1082 => "date".to_owned(),
        1114 => "timestamp".to_owned(),
        1184 => "timestamptz".to_owned(),
        1700 => numeric(typmod),
        1000 => "boolean[]".to_owned(),
        1001 => "bytea[]".to_owned(),
        1005 => "smallint[]".to_owned(),
        1007 => "integer[]".to_owned(),
        1016 => "bigint[]".to_owned(),
        1009 | 1015 | 1014 | 2951 => "text[]".to_owned(),
        1021 => "real[]".to_owned(),
        1022 => "double precision[]".to_owned(),
        1182 => "date[]".to_owned(),
        1115 => "timestamp[]".to_owned(),
        1185 => "timestamptz[]".to_owned(),
        1231 => "numeric[]".to_owned(),
        _ => return None,
    })
}

/// The Quarry column type of source column `name` of type `oid` with
/// modifier `typmod` in table `table`; an error naming them for a type
/// Quarry cannot hold.
fn column_type(table: &str, name: &str, oid: u32, typmod: i32) -> Result<String, ApplyError> {
    quarry_type(oid, typmod).ok_or_else(|| {
        format!("column \"{name}\" of table {table} has a type Quarry cannot hold (type oid {oid})")
    })
}

/// The tables of `publications` on the source, with their columns.
async fn published_tables(
    client: &tokio_postgres::Client,
    publications: &[String],
) -> Result<Vec<SourceTable>, ApplyError> {
    let rows = client
        .query(
            "SELECT DISTINCT schemaname::text, tablename::text FROM pg_publication_tables
             WHERE pubname = ANY($1) ORDER BY 1, 2",
            &[&publications],
        )
        .await
        .map_err(|e| format!("cannot list the published tables: {e}"))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let relation = format!("{}.{}", quote(&schema), quote(&name));
        let columns = client
            .query(
                "SELECT attname::text, atttypid, atttypmod FROM pg_attribute
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
                 ORDER BY attnum",
                &[&relation],
            )
            .await
            .map_err(|e| format!("cannot read the columns of {relation}: {e}"))?;
        tables.push(SourceTable {
            schema,
            name,
            columns: columns
                .iter()
                .map(|column| SourceColumn {
                    name: column.get(0),
                    type_oid: column.get(1),
                    type_modifier: column.get(2),
                })
                .collect(),
        });
    }
    Ok(tables)
}

/// `name` as a quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs one statement of SQL text on `session`, draining any rows.
async fn execute(session: &mut Session, sql: &str) -> Result<Output, ApplyError> {
    let mut statements = session.parse(sql).map_err(|e| e.to_string())?;
    let statement = statements
        .pop()
        .ok_or_else(|| format!("no statement in {sql}"))?;
    // Boxed: a statement's future is large, and deep on the stack of a
    // debug build it overflows it (as the PostgreSQL wire's handler boxes
    // it too).
    Box::pin(session.execute(statement, None))
        .await
        .map_err(|e| format!("{e} (in: {})", sql.chars().take(200).collect::<String>()))
}

/// A slot made with its snapshot exported: the replication connection
/// that holds it (the snapshot can be imported while that connection does
/// nothing else), the slot's consistent point and the snapshot's name.
struct Exported {
    connection: ReplicationConnection,
    consistent_point: Lsn,
    snapshot: String,
}

/// Makes `subscription`'s slot, or with `temporary` a temporary slot of a
/// name of its own (gone with its connection; for a copy alone), and
/// exports its snapshot.
async fn export_snapshot(
    source: &Source,
    subscription: &Subscription,
    temporary: bool,
) -> Result<Exported, ApplyError> {
    let mut connection = source.replication().await?;
    let command = if temporary {
        format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')",
            quote(&format!("quarry_copy_{:016x}", rand::random::<u64>()))
        )
    } else {
        format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
            quote(&subscription.slot_name)
        )
    };
    let created = connection
        .simple_query(&command)
        .await
        .map_err(|e| format!("cannot create a replication slot: {e}"))?;
    let text = |i: usize| -> Result<String, ApplyError> {
        created
            .first()
            .and_then(|row| row.get(i).cloned().flatten())
            .ok_or_else(|| "CREATE_REPLICATION_SLOT answered no row".to_owned())
    };
    Ok(Exported {
        consistent_point: pgoutput::parse_lsn(&text(1)?).map_err(|e| e.to_string())?,
        snapshot: text(2)?,
        connection,
    })
}

/// Creates in `session`'s open block the Quarry tables of `tables` it
/// lacks (schemas too) and, with `copy_data`, copies their rows through
/// `client` (in the transaction the caller began on it); returns them as
/// followed tables copied at `copied_at`, and the rows copied.
async fn create_tables(
    client: &tokio_postgres::Client,
    session: &mut Session,
    tables: &[&SourceTable],
    copy_data: bool,
    copied_at: Lsn,
) -> Result<(Vec<SubscribedTable>, u64), ApplyError> {
    let mut followed = Vec::with_capacity(tables.len());
    let mut rows = 0;
    for table in tables {
        let target = format!("{}.{}", quote(&table.schema), quote(&table.name));
        execute(
            session,
            &format!("CREATE SCHEMA IF NOT EXISTS {}", quote(&table.schema)),
        )
        .await?;
        let columns = table
            .columns
            .iter()
            .map(|c| {
                let column_type = column_type(&target, &c.name, c.type_oid, c.type_modifier)?;
                Ok(format!("{} {column_type}", quote(&c.name)))
            })
            .collect::<Result<Vec<String>, ApplyError>>()?;
        execute(
            session,
            &format!(
                "CREATE TABLE IF NOT EXISTS {target} ({})",
                columns.join(", ")
            ),
        )
        .await?;
        let names: Vec<String> = table.columns.iter().map(|c| quote(&c.name)).collect();
        if copy_data {
            rows += copy_table(client, session, &target, &names).await?;
        }
        let id = session
            .table_id(&table.schema, &table.name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("table {target} is gone"))?;
        followed.push(SubscribedTable {
            source_schema: table.schema.clone(),
            source_name: table.name.clone(),
            table: id,
            copied_at,
            columns: table.columns.clone(),
        });
    }
    Ok((followed, rows))
}

/// Begins, on `client`, the read-only transaction that sees `snapshot`.
async fn import_snapshot(
    client: &tokio_postgres::Client,
    snapshot: &str,
) -> Result<(), ApplyError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            literal(snapshot)
        ))
        .await
        .map_err(|e| format!("cannot import the slot's snapshot: {e}"))
}

/// Makes the slot (unless the subscription uses one that exists), copies
/// the tables at an exported snapshot into Quarry and commits them with
/// the snapshot's consistent point; returns the replication connection,
/// started there.
///
/// With `create_slot = false` the snapshot is a temporary slot's, and the
/// existing slot streams from its consistent point (the source skips the
/// transactions committed before it, which the copy holds); without
/// `copy_data` either, the tables are created empty and the slot streams
/// from its own confirmed position.
async fn copy(
    engine: &Arc<quarry_exec::Engine>,
    subscription: &Subscription,
    source: &Source,
    wal_end: &SourceWalEnd,
) -> Result<ReplicationStream, ApplyError> {
    let client = source.sql().await?;
    if subscription.create_slot {
        // A slot left by a copy that did not commit: its snapshot is gone.
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&subscription.slot_name],
            )
            .await;
    }
    let exported = if subscription.create_slot || subscription.copy_data {
        Some(export_snapshot(source, subscription, !subscription.create_slot).await?)
    } else {
        None
    };
    let consistent_point = exported.as_ref().map_or(0, |e| e.consistent_point);
    let tables = published_tables(&client, &subscription.publications).await?;
    let mut session = engine.session().map_err(|e| e.to_string())?;
    execute(&mut session, "BEGIN").await?;
    let copying = match &exported {
        Some(exported) if subscription.copy_data => {
            import_snapshot(&client, &exported.snapshot).await?;
            true
        }
        _ => false,
    };
    let (subscribed, rows) = create_tables(
        &client,
        &mut session,
        &tables.iter().collect::<Vec<_>>(),
        copying,
        consistent_point,
    )
    .await?;
    if copying {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| e.to_string())?;
    }
    Box::pin(session.commit_with(Command::AdvanceSubscription(Progress {
        subscription: subscription.name.clone(),
        from_lsn: subscription.applied_lsn,
        to_lsn: consistent_point,
        rows,
        source_commit_at: 0,
        source_wal_end: wal_end.at_least(consistent_point),
        phase: SubscriptionPhase::Streaming,
        tables: Some(subscribed),
        refreshed: true,
    })))
    .await
    .map_err(|e| format!("cannot commit the copy: {e}"))?;
    crash_point!("subscription-copied");
    tracing::info!(
        subscription = %subscription.name,
        tables = tables.len(),
        rows,
        lsn = %pgoutput::lsn_text(consistent_point),
        "copied the published tables"
    );
    let connection = match exported {
        Some(exported) if subscription.create_slot => exported.connection,
        // A temporary slot goes with its connection.
        _ => source.replication().await?,
    };
    Source::start(connection, subscription, consistent_point).await
}

/// Does the REFRESH PUBLICATION `subscription` asks for, if it asks one;
/// `tables` (those followed) become the tables followed after it.
async fn refresh_if_asked(
    engine: &Arc<quarry_exec::Engine>,
    subscription: &Subscription,
    source: &Source,
    tables: &mut Vec<SubscribedTable>,
    applied: Lsn,
) -> Result<(), ApplyError> {
    if let Some(copy_data) = subscription.refresh {
        *tables = Box::pin(refresh(
            engine,
            subscription,
            (source, tables),
            copy_data,
            applied,
        ))
        .await?;
    }
    Ok(())
}

/// ALTER SUBSCRIPTION ... REFRESH PUBLICATION, done by the applier between
/// two source transactions with all it received applied (at `applied`):
/// the tables now published and not followed yet are created in Quarry
/// and, with `copy_data`, copied at the exported snapshot of a temporary
/// slot made now (the stream's changes to them from transactions committed
/// before its consistent point are in the copy and are skipped); the
/// tables no longer published are no longer followed (their rows stay).
/// `followed` are the tables followed so far. Commits the new list of
/// tables and returns it.
async fn refresh(
    engine: &Arc<quarry_exec::Engine>,
    subscription: &Subscription,
    (source, followed): (&Source, &[SubscribedTable]),
    copy_data: bool,
    applied: Lsn,
) -> Result<Vec<SubscribedTable>, ApplyError> {
    let client = source.sql().await?;
    let published = published_tables(&client, &subscription.publications).await?;
    let followed = |table: &SourceTable| {
        followed
            .iter()
            .find(|t| t.is(&table.schema, &table.name))
            .cloned()
    };
    let mut tables: Vec<SubscribedTable> = published.iter().filter_map(followed).collect();
    let added: Vec<&SourceTable> = published.iter().filter(|t| followed(t).is_none()).collect();
    let mut session = engine.session().map_err(|e| e.to_string())?;
    execute(&mut session, "BEGIN").await?;
    // Held until the copy is done: the temporary slot and its snapshot.
    let exported = if copy_data && !added.is_empty() {
        let exported = export_snapshot(source, subscription, true).await?;
        import_snapshot(&client, &exported.snapshot).await?;
        Some(exported)
    } else {
        None
    };
    let copied_at = exported.as_ref().map_or(0, |e| e.consistent_point);
    let (created, rows) =
        create_tables(&client, &mut session, &added, exported.is_some(), copied_at).await?;
    if exported.is_some() {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| e.to_string())?;
    }
    tables.extend(created);
    Box::pin(session.commit_with(Command::AdvanceSubscription(Progress {
        subscription: subscription.name.clone(),
        from_lsn: applied,
        to_lsn: applied,
        rows,
        source_commit_at: 0,
        source_wal_end: 0,
        phase: SubscriptionPhase::Streaming,
        tables: Some(tables.clone()),
        refreshed: true,
    })))
    .await
    .map_err(|e| format!("cannot commit the refresh: {e}"))?;
    tracing::info!(
        subscription = %subscription.name,
        added = added.len(),
        rows,
        lsn = %pgoutput::lsn_text(copied_at),
        "refreshed the publications' tables"
    );
    Ok(tables)
}

/// Copies the rows of source table `target` (of columns `names`) into the
/// same table of `session`'s transaction block; returns how many.
async fn copy_table(
    client: &tokio_postgres::Client,
    session: &mut Session,
    target: &str,
    names: &[String],
) -> Result<u64, ApplyError> {
    use futures::StreamExt;
    let columns = names.join(", ");
    let stream = client
        .copy_out(&format!("COPY (SELECT {columns} FROM {target}) TO STDOUT"))
        .await
        .map_err(|e| format!("cannot copy {target}: {e}"))?;
    futures::pin_mut!(stream);
    // Fed to Quarry as they arrive.
    let mut copy_in = start_copy(session, target, &columns).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("copying {target}: {e}"))?;
        copy_in.feed(&chunk).await;
        crash_point!("subscription-copying");
    }
    finish_copy(copy_in, target).await
}

/// Starts `COPY target (columns) FROM STDIN` (text format) in `session`.
async fn start_copy(
    session: &mut Session,
    target: &str,
    columns: &str,
) -> Result<Box<quarry_exec::CopyIn>, ApplyError> {
    match execute(session, &format!("COPY {target} ({columns}) FROM STDIN")).await? {
        Output::CopyIn(copy_in) => Ok(copy_in),
        _ => Err("COPY FROM STDIN did not start".to_owned()),
    }
}

/// Ends a copy into `target`; returns the rows it wrote.
async fn finish_copy(copy_in: Box<quarry_exec::CopyIn>, target: &str) -> Result<u64, ApplyError> {
    let tag = Box::pin(copy_in.finish())
        .await
        .map_err(|e| format!("copying rows into {target}: {e}"))?;
    Ok(tag.rows.unwrap_or(0))
}

/// One change of a source transaction.
enum Change {
    /// A relation's shape (before its first change, and after it changed
    /// on the source): Quarry's table follows an added column.
    Relation(Relation),
    Insert(u32, Vec<Value>),
    Update(u32, Option<Vec<Value>>, Vec<Value>),
    Delete(u32, Vec<Value>),
    Truncate(Vec<u32>),
}

impl Change {
    /// The change `message` is, if it is one.
    fn of(message: Message) -> Option<Change> {
        Some(match message {
            Message::Relation(relation) => Change::Relation(relation),
            Message::Insert { relation, new } => Change::Insert(relation, new),
            Message::Update { relation, old, new } => Change::Update(relation, old, new),
            Message::Delete { relation, old } => Change::Delete(relation, old),
            Message::Truncate { relations, .. } => Change::Truncate(relations),
            _ => return None,
        })
    }
}

/// Most source transactions, and most changes, one Quarry commit applies
/// together when the applier is behind (group commit: the batch's rows
/// and its last transaction's end LSN commit at once, or none of them).
const BATCH_TRANSACTIONS: usize = 1_000;
const BATCH_CHANGES: usize = 50_000;

/// Source transactions received and not yet applied: their changes in
/// order, and the last one's end LSN and commit time.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    transactions: usize,
    end_lsn: Lsn,
    commit_time: i64,
}

/// Streams from the slot and applies the transactions, each batch of
/// those already received in one Quarry commit; between transactions, does
/// a REFRESH PUBLICATION when one is asked.
async fn stream(
    engine: &Arc<quarry_exec::Engine>,
    meta: &Meta,
    name: &str,
    (source, wal_end): (&Source, &SourceWalEnd),
    (replication, streamed): (ReplicationStream, Streamed),
) -> Result<(), ApplyError> {
    let subscription = current(meta, name).await?;
    let mut applier = Applier {
        engine,
        name,
        wal_end,
        replication,
        streamed,
        applied: subscription.applied_lsn,
        tables: subscription.tables.clone(),
        wal_end_seen: subscription.applied_lsn,
        relations: HashMap::new(),
        names: HashMap::new(),
        open: Vec::new(),
        commit_time: 0,
        final_lsn: 0,
        large: None,
        in_transaction: false,
        in_stream: None,
        batch: Batch::default(),
        last_idle_advance: std::time::Instant::now(),
    };
    loop {
        // With transactions waiting, apply them once nothing more is
        // ready at once (or the batch is full).
        let batch = &applier.batch;
        let full = batch.transactions >= BATCH_TRANSACTIONS || batch.changes.len() >= BATCH_CHANGES;
        let between = !applier.in_transaction && applier.in_stream.is_none();
        let event = if batch.transactions > 0 && between {
            match tokio::time::timeout(Duration::ZERO, applier.replication.recv()).await {
                Ok(event) if !full => event,
                ready => {
                    let subscription = current(meta, name).await?;
                    applier.apply_batch().await?;
                    let applied = applier.applied;
                    refresh_if_asked(engine, &subscription, source, &mut applier.tables, applied)
                        .await?;
                    match ready {
                        Ok(event) => event,
                        Err(_) => continue,
                    }
                }
            }
        } else if between {
            // Nothing pending: a REFRESH PUBLICATION asked is done within
            // a second.
            match tokio::time::timeout(Duration::from_secs(1), applier.replication.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    let subscription = current(meta, name).await?;
                    let applied = applier.applied;
                    refresh_if_asked(engine, &subscription, source, &mut applier.tables, applied)
                        .await?;
                    continue;
                }
            }
        } else {
            applier.replication.recv().await
        };
        match event? {
            ReplicationEvent::XLogData {
                data,
                wal_end: data_end,
                ..
            } => {
                applier.wal_end_seen = applier.wal_end_seen.max(data_end);
                Box::pin(applier.message(&data)).await?;
            }
            ReplicationEvent::KeepAlive {
                wal_end: keepalive_end,
            } => {
                applier.wal_end_seen = applier.wal_end_seen.max(keepalive_end);
                applier.keepalive(meta, keepalive_end).await?;
            }
        }
    }
}

/// A streaming applier's state.
struct Applier<'a> {
    engine: &'a Arc<quarry_exec::Engine>,
    name: &'a str,
    wal_end: &'a SourceWalEnd,
    replication: ReplicationStream,
    /// Transactions streamed while in progress (protocol 2).
    streamed: Streamed,
    /// The position committed: the end of the last source transaction
    /// applied.
    applied: Lsn,
    /// The tables followed.
    tables: Vec<SubscribedTable>,
    /// The furthest position the stream showed.
    wal_end_seen: Lsn,
    relations: HashMap<u32, Relation>,
    /// Each relation's schema and name, as its Relation messages came.
    names: HashMap<u32, (String, String)>,
    /// The changes of the source transaction being received.
    open: Vec<Change>,
    commit_time: i64,
    /// The open source transaction's commit LSN (its Begin says).
    final_lsn: Lsn,
    /// A large source transaction's block, applied into as it arrives.
    large: Option<Block>,
    /// Between a Begin and its Commit.
    in_transaction: bool,
    /// Inside a block of streamed transaction (Stream Start ... Stop).
    in_stream: Option<u32>,
    /// Complete transactions received and not yet applied.
    batch: Batch,
    last_idle_advance: std::time::Instant,
}

impl Applier<'_> {
    /// The source's WAL end as far as known.
    fn source_wal_end(&self) -> Lsn {
        self.wal_end.at_least(self.wal_end_seen)
    }

    /// The position moved to `end`, committed: the source is told.
    fn moved(&mut self, end: Lsn) {
        self.applied = end;
        self.replication.update_applied(end);
        self.last_idle_advance = std::time::Instant::now();
    }

    /// Applies the complete transactions received, if any.
    async fn apply_batch(&mut self) -> Result<(), ApplyError> {
        if self.batch.transactions == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let positions = (self.applied, self.source_wal_end());
        let end = Box::pin(apply_batch(
            self.engine,
            self.name,
            &mut self.tables,
            &mut self.relations,
            batch,
            positions,
        ))
        .await?;
        self.moved(end);
        Ok(())
    }

    /// Takes in one pgoutput message.
    async fn message(&mut self, data: &Bytes) -> Result<(), ApplyError> {
        let message =
            pgoutput::decode(data, self.in_stream.is_some()).map_err(|e| e.to_string())?;
        if let Message::Relation(relation) = &message {
            self.names.insert(
                relation.oid,
                (relation.namespace.clone(), relation.name.clone()),
            );
        }
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                ..
            } => {
                self.open.clear();
                self.in_transaction = true;
                self.commit_time = commit_time;
                self.final_lsn = final_lsn;
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => Box::pin(self.commit(commit_lsn, end_lsn)).await?,
            Message::StreamStart { xid, first } => {
                self.streamed.start(xid, first)?;
                self.in_stream = Some(xid);
            }
            Message::StreamStop => self.in_stream = None,
            Message::StreamAbort { xid, subxid } => self.streamed.abort(xid, subxid),
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
            } => Box::pin(self.stream_commit(xid, (commit_lsn, end_lsn), commit_time)).await?,
            message => {
                if let Some(xid) = self.in_stream {
                    crash_point!("subscription-receiving-streamed");
                    return self.streamed.keep(xid, data);
                }
                if self.in_transaction {
                    crash_point!("subscription-receiving");
                }
                if let Some(change) = Change::of(message) {
                    self.open.push(change);
                }
                if self.in_transaction && self.open.len() >= BATCH_CHANGES {
                    Box::pin(self.apply_part()).await?;
                }
            }
        }
        Ok(())
    }

    /// A large source transaction: applied as it arrives into a Quarry
    /// block of its own, committed at its commit (as PostgreSQL's
    /// subscriber applies), so that the applier holds at most a batch of
    /// it. The complete transactions before it commit first.
    async fn apply_part(&mut self) -> Result<(), ApplyError> {
        self.apply_batch().await?;
        let mut part = std::mem::take(&mut self.open);
        if self.final_lsn < self.applied {
            // Applied before a restart (its commit ends at or before the
            // position): only the relations' shapes count.
            keep_shapes(part, &mut self.relations);
            return Ok(());
        }
        retain_followed(&mut part, &self.names, &self.tables, self.final_lsn);
        if self.large.is_none() {
            self.large = Some(Block::begin(self.engine, &self.tables).await?);
        }
        if let Some(block) = self.large.as_mut() {
            block.apply(&mut self.relations, part).await?;
        }
        crash_point!("subscription-applying-part");
        Ok(())
    }

    /// The open source transaction committed at `commit_lsn`, ending at
    /// `end`.
    async fn commit(&mut self, commit_lsn: Lsn, end: Lsn) -> Result<(), ApplyError> {
        self.in_transaction = false;
        self.wal_end_seen = self.wal_end_seen.max(end);
        if end <= self.applied {
            // Applied before a restart: the source resent it. Its
            // relations' shapes still hold for what follows.
            keep_shapes(std::mem::take(&mut self.open), &mut self.relations);
            self.replication.update_applied(self.applied);
            return Ok(());
        }
        retain_followed(&mut self.open, &self.names, &self.tables, commit_lsn);
        if let Some(mut block) = self.large.take() {
            block
                .apply(&mut self.relations, std::mem::take(&mut self.open))
                .await?;
            let positions = (self.applied, end, self.source_wal_end());
            block
                .commit(self.name, &mut self.tables, positions, self.commit_time)
                .await?;
            self.moved(end);
            return Ok(());
        }
        self.batch.changes.append(&mut self.open);
        self.batch.transactions += 1;
        self.batch.end_lsn = end;
        self.batch.commit_time = self.commit_time;
        Ok(())
    }

    /// Streamed transaction `xid` committed at `commit_lsn`, ending at
    /// `end`: applied, after the complete transactions before it, from its
    /// spool in parts into one Quarry block, committed with the position.
    async fn stream_commit(
        &mut self,
        xid: u32,
        (commit_lsn, end): (Lsn, Lsn),
        commit_time: i64,
    ) -> Result<(), ApplyError> {
        self.wal_end_seen = self.wal_end_seen.max(end);
        let mut changes = self.streamed.commit(xid)?;
        if end <= self.applied {
            // Applied before a restart: only the relations' shapes count.
            loop {
                let part = changes.next_part(BATCH_CHANGES)?;
                if part.is_empty() {
                    break;
                }
                keep_shapes(part, &mut self.relations);
            }
            return Ok(());
        }
        self.apply_batch().await?;
        let mut block = Block::begin(self.engine, &self.tables).await?;
        loop {
            let mut part = changes.next_part(BATCH_CHANGES)?;
            if part.is_empty() {
                break;
            }
            retain_followed(&mut part, &self.names, &self.tables, commit_lsn);
            block.apply(&mut self.relations, part).await?;
            crash_point!("subscription-applying-part");
        }
        let positions = (self.applied, end, self.source_wal_end());
        block
            .commit(self.name, &mut self.tables, positions, commit_time)
            .await?;
        self.moved(end);
        Ok(())
    }

    /// A keepalive showing the source's WAL end `end`. With nothing
    /// pending, the source's WAL up to it holds no change of the
    /// publication (only other tables'), so the position moves there, once
    /// committed, and the slot's confirmed position with it.
    async fn keepalive(&mut self, meta: &Meta, end: Lsn) -> Result<(), ApplyError> {
        if self.in_transaction
            || self.in_stream.is_some()
            || self.streamed.any_open()
            || self.batch.transactions > 0
            || end <= self.applied
            || self.last_idle_advance.elapsed() < Duration::from_secs(1)
        {
            return Ok(());
        }
        meta.write(Command::AdvanceSubscription(Progress {
            subscription: self.name.to_owned(),
            from_lsn: self.applied,
            to_lsn: end,
            rows: 0,
            source_commit_at: 0,
            source_wal_end: self.source_wal_end(),
            phase: SubscriptionPhase::Streaming,
            tables: None,
            refreshed: false,
        }))
        .await
        .map_err(|e| format!("cannot record the position: {e}"))?;
        self.moved(end);
        Ok(())
    }
}

/// Keeps the relations' shapes of `changes`, a source transaction not to
/// be applied (they hold for what follows).
fn keep_shapes(changes: Vec<Change>, relations: &mut HashMap<u32, Relation>) {
    for change in changes {
        if let Change::Relation(relation) = change {
            relations.insert(relation.oid, relation);
        }
    }
}

/// The followed table that source relation `relation` is, by the name its
/// Relation message gave.
fn followed_table<'a>(
    names: &HashMap<u32, (String, String)>,
    tables: &'a [SubscribedTable],
    relation: u32,
) -> Option<&'a SubscribedTable> {
    let (schema, name) = names.get(&relation)?;
    tables.iter().find(|t| t.is(schema, name))
}

/// Keeps of `changes`, a source transaction committed at `commit`, those
/// to be applied: not the changes of tables the subscription does not
/// follow (added to a publication and not yet refreshed, as PostgreSQL's
/// subscriber ignores them), nor those a table's copy already holds (the
/// transaction committed before the copy's snapshot).
fn retain_followed(
    changes: &mut Vec<Change>,
    names: &HashMap<u32, (String, String)>,
    tables: &[SubscribedTable],
    commit: Lsn,
) {
    let applies = |relation: &u32| {
        followed_table(names, tables, *relation).is_some_and(|t| commit >= t.copied_at)
    };
    changes.retain_mut(|change| match change {
        Change::Relation(_) => true,
        Change::Insert(relation, _)
        | Change::Update(relation, _, _)
        | Change::Delete(relation, _) => applies(relation),
        Change::Truncate(relations) => {
            relations.retain(applies);
            !relations.is_empty()
        }
    });
}

/// A Quarry transaction block that source changes are applied into, to
/// commit with the move of the subscription's position.
struct Block {
    session: Session,
    /// The followed tables as the changes leave them (their source
    /// columns).
    followed: Vec<SubscribedTable>,
    /// Whether the changes changed `followed`.
    reshaped: bool,
    /// Rows the changes inserted, updated or deleted.
    rows: u64,
}

impl Block {
    async fn begin(
        engine: &Arc<quarry_exec::Engine>,
        tables: &[SubscribedTable],
    ) -> Result<Block, ApplyError> {
        let mut session = engine.session().map_err(|e| e.to_string())?;
        execute(&mut session, "BEGIN").await?;
        Ok(Block {
            session,
            followed: tables.to_vec(),
            reshaped: false,
            rows: 0,
        })
    }

    /// Applies `changes` (in order, after those applied before).
    async fn apply(
        &mut self,
        relations: &mut HashMap<u32, Relation>,
        changes: Vec<Change>,
    ) -> Result<(), ApplyError> {
        self.rows += changes
            .iter()
            .filter(|c| !matches!(c, Change::Relation(_)))
            .count() as u64;
        self.reshaped |= Box::pin(apply_changes(
            &mut self.session,
            &mut self.followed,
            relations,
            changes,
        ))
        .await?;
        Ok(())
    }

    /// Commits the block with the move of `subscription`'s position from
    /// `applied` to `end` (the last source transaction's end, committed at
    /// `commit_time`, the source's WAL end then `source_wal_end`); `tables`
    /// become the followed tables as the changes left them.
    async fn commit(
        self,
        subscription: &str,
        tables: &mut Vec<SubscribedTable>,
        (applied, end, source_wal_end): (Lsn, Lsn, Lsn),
        commit_time: i64,
    ) -> Result<(), ApplyError> {
        crash_point!("subscription-applying");
        let Block {
            mut session,
            followed,
            reshaped,
            rows,
        } = self;
        Box::pin(session.commit_with(Command::AdvanceSubscription(Progress {
            subscription: subscription.to_owned(),
            from_lsn: applied,
            to_lsn: end,
            rows,
            source_commit_at: postgres_epoch_to_unix(commit_time),
            source_wal_end,
            phase: SubscriptionPhase::Streaming,
            tables: reshaped.then(|| followed.clone()),
            refreshed: false,
        })))
        .await
        .map_err(|e| format!("cannot commit source transactions: {e}"))?;
        *tables = followed;
        crash_point!("subscription-committed");
        Ok(())
    }
}

/// Applies `batch` in one Quarry transaction committed with the move of
/// `subscription`'s position from `applied` to its end (and the source's WAL end as
/// seen); returns the new position.
async fn apply_batch(
    engine: &Arc<quarry_exec::Engine>,
    subscription: &str,
    tables: &mut Vec<SubscribedTable>,
    relations: &mut HashMap<u32, Relation>,
    batch: Batch,
    (applied, source_wal_end): (Lsn, Lsn),
) -> Result<Lsn, ApplyError> {
    let mut block = Block::begin(engine, tables).await?;
    block.apply(relations, batch.changes).await?;
    block
        .commit(
            subscription,
            tables,
            (applied, batch.end_lsn, source_wal_end),
            batch.commit_time,
        )
        .await?;
    Ok(batch.end_lsn)
}

/// PostgreSQL's microseconds since 2000-01-01 as microseconds since 1970.
fn postgres_epoch_to_unix(micros: i64) -> i64 {
    const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    micros + POSTGRES_EPOCH_UNIX_MICROS
}

/// Whether the subscription follows the source table `relation`.
fn follows(tables: &[SubscribedTable], relation: &Relation) -> bool {
    tables
        .iter()
        .any(|t| t.is(&relation.namespace, &relation.name))
}

/// The Quarry table of source relation `relation` and its shape.
fn target_of<'a>(
    tables: &[SubscribedTable],
    relations: &'a HashMap<u32, Relation>,
    relation: u32,
) -> Result<(String, &'a Relation), ApplyError> {
    let found = relations
        .get(&relation)
        .ok_or_else(|| format!("a change to relation {relation} before its Relation message"))?;
    if !follows(tables, found) {
        // Unreachable: such changes are dropped when received.
        return Err(format!(
            "a change to table {}.{}, which the subscription does not follow",
            found.namespace, found.name
        ));
    }
    Ok((
        format!("{}.{}", quote(&found.namespace), quote(&found.name)),
        found,
    ))
}

/// The net effect of a run of changes to one table: the rows that were
/// there before it and are gone or replaced (by their replica identity),
/// and the rows there after it that it wrote, by replica identity.
#[derive(Default)]
struct NetChanges {
    deleted: BTreeMap<String, Vec<(String, Value)>>,
    rows: BTreeMap<String, Vec<Value>>,
}

impl NetChanges {
    /// A row written with replica identity `key`; for a table without a
    /// key (`full`), identical rows are kept apart by `n`.
    fn write(&mut self, key: String, row: Vec<Value>, full: bool, n: u64) {
        let key = if full { format!("{key}\u{2}{n}") } else { key };
        self.rows.insert(key, row);
    }

    /// The row of replica identity `key` removed: one written earlier in
    /// the run if there is one, else the row that was there before it.
    fn remove(&mut self, key: String, columns: Vec<(String, Value)>, full: bool) {
        let earlier = if full {
            let first = self
                .rows
                .range(format!("{key}\u{2}")..format!("{key}\u{3}"))
                .next()
                .map(|(k, _)| k.clone());
            first.and_then(|k| self.rows.remove(&k))
        } else {
            self.rows.remove(&key)
        };
        if earlier.is_none() {
            self.deleted.insert(key, columns);
        }
    }
}

/// The replica identity of `values` (the key columns of `relation`; every
/// column for REPLICA IDENTITY FULL): a text that tells rows apart, and
/// the columns with their values.
fn identity(
    relation: &Relation,
    values: &[Value],
) -> Result<(String, Vec<(String, Value)>), ApplyError> {
    let mut text = String::new();
    let mut key = Vec::new();
    for (column, value) in relation.columns.iter().zip(values) {
        if !(column.key || relation.replica_identity == b'f') {
            continue;
        }
        match value {
            Value::Null => text.push_str("\u{1}N"),
            Value::UnchangedToast => continue,
            Value::Text(bytes) | Value::Binary(bytes) => {
                text.push_str("\u{1}V");
                text.push_str(&text_of(bytes));
            }
        }
        key.push((column.name.clone(), value.clone()));
    }
    if key.is_empty() {
        return Err(format!(
            "table {}.{} has no replica identity: its updates and deletes cannot be applied",
            relation.namespace, relation.name
        ));
    }
    Ok((text, key))
}

/// Applies `changes`, in order, in `session`'s open transaction block:
/// each run of inserts, deletes and whole-row updates as its net effect
/// per table (one DELETE of the rows replaced, one COPY of the rows
/// written); an update that left a TOASTed value unchanged, a TRUNCATE and
/// a change of a relation's shape after what came before them (which
/// updates `tables`' record of the source's columns; true if it did).
async fn apply_changes(
    session: &mut Session,
    tables: &mut [SubscribedTable],
    relations: &mut HashMap<u32, Relation>,
    changes: Vec<Change>,
) -> Result<bool, ApplyError> {
    let mut reshaped = false;
    let mut net: BTreeMap<u32, NetChanges> = BTreeMap::new();
    // Rows written so far: tells apart identical rows of a table without
    // a key (REPLICA IDENTITY FULL).
    let mut written = 0u64;
    for change in changes {
        match change {
            Change::Relation(relation) => {
                flush(session, tables, relations, &mut net).await?;
                let oid = relation.oid;
                let followed = tables
                    .iter_mut()
                    .find(|t| t.is(&relation.namespace, &relation.name));
                if let Some(followed) = followed {
                    reshaped |= follow_columns(session, &relation, followed).await?;
                }
                relations.insert(oid, relation);
            }
            Change::Insert(relation, new) => {
                let (_, shape) = target_of(tables, relations, relation)?;
                let full = shape.replica_identity == b'f';
                let (key, _) = identity(shape, &new)?;
                written += 1;
                net.entry(relation)
                    .or_default()
                    .write(key, new, full, written);
            }
            Change::Delete(relation, old) => {
                let (_, shape) = target_of(tables, relations, relation)?;
                let full = shape.replica_identity == b'f';
                let (key, columns) = identity(shape, &old)?;
                net.entry(relation).or_default().remove(key, columns, full);
            }
            Change::Update(relation, old, new) if !new.contains(&Value::UnchangedToast) => {
                let (_, shape) = target_of(tables, relations, relation)?;
                let full = shape.replica_identity == b'f';
                let (old_key, old_columns) = identity(shape, old.as_ref().unwrap_or(&new))?;
                let (new_key, _) = identity(shape, &new)?;
                let table = net.entry(relation).or_default();
                table.remove(old_key, old_columns, full);
                written += 1;
                table.write(new_key, new, full, written);
            }
            Change::Update(relation, old, new) => {
                // The unchanged TOASTed values are only in Quarry's row:
                // an UPDATE of the columns sent, after what came before.
                flush(session, tables, relations, &mut net).await?;
                let (target, shape) = target_of(tables, relations, relation)?;
                let (_, key) = identity(shape, old.as_ref().unwrap_or(&new))?;
                let sets: Vec<String> = shape
                    .columns
                    .iter()
                    .zip(&new)
                    .filter_map(|(column, value)| {
                        Some(format!("{} = {}", quote(&column.name), sql_value(value)?))
                    })
                    .collect();
                execute(
                    session,
                    &format!(
                        "UPDATE {target} SET {} WHERE {}",
                        sets.join(", "),
                        key_condition(&key)
                    ),
                )
                .await?;
            }
            Change::Truncate(truncated) => {
                flush(session, tables, relations, &mut net).await?;
                for relation in truncated {
                    let (target, _) = target_of(tables, relations, relation)?;
                    execute(session, &format!("DELETE FROM {target}")).await?;
                }
            }
        }
    }
    flush(session, tables, relations, &mut net).await?;
    Ok(reshaped)
}

/// Most rows one DELETE statement of a flush names.
const DELETE_ROWS: usize = 500;

/// Writes the net changes gathered so far into the block and forgets them.
async fn flush(
    session: &mut Session,
    tables: &[SubscribedTable],
    relations: &HashMap<u32, Relation>,
    net: &mut BTreeMap<u32, NetChanges>,
) -> Result<(), ApplyError> {
    for (relation, changes) in std::mem::take(net) {
        let (target, shape) = target_of(tables, relations, relation)?;
        let deleted: Vec<Vec<(String, Value)>> = changes.deleted.into_values().collect();
        for rows in deleted.chunks(DELETE_ROWS) {
            let condition: Vec<String> = rows
                .iter()
                .map(|key| format!("({})", key_condition(key)))
                .collect();
            execute(
                session,
                &format!("DELETE FROM {target} WHERE {}", condition.join(" OR ")),
            )
            .await?;
        }
        if changes.rows.is_empty() {
            continue;
        }
        let mut text = Vec::new();
        for row in changes.rows.values() {
            copy_line(&mut text, row);
        }
        let columns: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
        let mut copy_in = start_copy(session, &target, &columns.join(", ")).await?;
        copy_in.feed(&text).await;
        finish_copy(copy_in, &target).await?;
    }
    Ok(())
}

/// Follows a Relation message of followed table `followed`: adds to its
/// Quarry table the columns the source's relation `shape` has and it lacks
/// (an `ALTER TABLE ... ADD COLUMN` on the source), in the block; a column
/// the source no longer has (dropped or renamed), or that has another type
/// than before, stops the applier rather than guess. Returns whether the
/// source's columns changed (recorded in `followed`).
async fn follow_columns(
    session: &mut Session,
    shape: &Relation,
    followed: &mut SubscribedTable,
) -> Result<bool, ApplyError> {
    let target = format!("{}.{}", quote(&shape.namespace), quote(&shape.name));
    let columns = session
        .table_columns(&shape.namespace, &shape.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("table {target} no longer exists in Quarry"))?;
    if let Some(gone) = columns
        .iter()
        .find(|name| !shape.columns.iter().any(|c| &c.name == *name))
    {
        return Err(format!(
            "incompatible change on the source: column \"{gone}\" of {target} is gone (or renamed); the subscription stops rather than guess"
        ));
    }
    let type_name =
        |oid: u32, typmod: i32| quarry_exec::pg_signatures::format_type(oid as i32, Some(typmod));
    for column in &shape.columns {
        if let Some(known) = followed.columns.iter().find(|k| k.name == column.name)
            && (known.type_oid, known.type_modifier) != (column.type_oid, column.type_modifier)
        {
            return Err(format!(
                "incompatible change on the source: column \"{}\" of {target} changed type from {} to {}; the subscription stops rather than guess",
                column.name,
                type_name(known.type_oid, known.type_modifier),
                type_name(column.type_oid, column.type_modifier),
            ));
        }
    }
    for column in shape.columns.iter().filter(|c| !columns.contains(&c.name)) {
        let column_type =
            column_type(&target, &column.name, column.type_oid, column.type_modifier)?;
        execute(
            session,
            &format!(
                "ALTER TABLE {target} ADD COLUMN {} {column_type}",
                quote(&column.name)
            ),
        )
        .await?;
        tracing::info!(table = %target, column = %column.name, "followed a column added on the source");
    }
    let now: Vec<SourceColumn> = shape
        .columns
        .iter()
        .map(|c| SourceColumn {
            name: c.name.clone(),
            type_oid: c.type_oid,
            type_modifier: c.type_modifier,
        })
        .collect();
    if now == followed.columns {
        return Ok(false);
    }
    followed.columns = now;
    Ok(true)
}

/// Appends `values` as one line of COPY's text format.
fn copy_line(out: &mut Vec<u8>, values: &[Value]) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match value {
            Value::Text(bytes) | Value::Binary(bytes) => {
                for byte in bytes.iter() {
                    match byte {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        other => out.push(*other),
                    }
                }
            }
            Value::Null | Value::UnchangedToast => out.extend_from_slice(b"\\N"),
        }
    }
    out.push(b'\n');
}

/// `value` as a SQL literal; None for an unchanged TOASTed value.
fn sql_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("NULL".to_owned()),
        Value::UnchangedToast => None,
        Value::Text(bytes) | Value::Binary(bytes) => Some(literal(&text_of(bytes))),
    }
}

fn text_of(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The condition that finds the row of replica identity `key`.
fn key_condition(key: &[(String, Value)]) -> String {
    key.iter()
        .map(|(column, value)| match sql_value(value) {
            Some(literal) if *value != Value::Null => format!("{} = {literal}", quote(column)),
            _ => format!("{} IS NULL", quote(column)),
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_escape_as_copy_text_reads_them() {
        let mut out = Vec::new();
        copy_line(
            &mut out,
            &[
                Value::Text(Bytes::from_static(b"a\tb\\c\nd")),
                Value::Null,
                Value::Text(Bytes::from_static(b"")),
            ],
        );
        assert_eq!(out, b"a\\tb\\\\c\\nd\t\\N\t\n");
    }

    #[test]
    fn source_types_map_to_quarry_types() {
        assert_eq!(
            quarry_type(1700, (10 << 16 | 2) + 4).as_deref(),
            Some("numeric(10,2)")
        );
        assert_eq!(quarry_type(1700, -1).as_deref(), Some("numeric"));
        assert_eq!(quarry_type(2950, -1).as_deref(), Some("text"));
        assert_eq!(quarry_type(1016, -1).as_deref(), Some("bigint[]"));
        // point
        assert_eq!(quarry_type(600, -1), None);
    }
}
