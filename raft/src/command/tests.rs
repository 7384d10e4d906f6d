//! Tests of the catalog commands: applying each to a catalog, and what it refuses.

use super::*;
use quarry_common::catalog::ChunkId;

pub(crate) fn run(catalog: &mut Catalog, command: Command) -> Result<Applied, CatalogError> {
    apply(
        catalog,
        &Proposal {
            command,
            proposed_at: 1_000,
        },
    )
}

pub(crate) fn with_public() -> Catalog {
    let mut catalog = Catalog::default();
    run(
        &mut catalog,
        Command::CreateSchema {
            name: "public".into(),
            if_not_exists: false,
        },
    )
    .expect("create schema");
    catalog
}

pub(crate) fn create(name: &str) -> Command {
    Command::CreateTable {
        schema: "public".into(),
        name: name.into(),
        columns: vec![ColumnDef {
            name: "a".into(),
            column_type: ColumnType::Int64,
            nullable: true,
            default: None,
        }],
        if_not_exists: false,
        files: vec![],
        retention_micros: None,
        field_ids: vec![],
        layout: None,
        stripes: vec![],
    }
}

/// Integer-range partitioning of column `a` (field id 1) of [`create`]'s
/// tables.
pub(crate) fn range_partitioning() -> quarry_common::partition::Partitioning {
    quarry_common::partition::Partitioning {
        field_id: 1,
        column_type: ColumnType::Int64,
        scheme: quarry_common::partition::PartitionScheme::IntegerRange {
            start: 0,
            end: 100,
            interval: 10,
        },
        expiration_micros: None,
        require_filter: true,
    }
}

#[test]
fn a_table_is_partitioned_once_and_only_when_new() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let set = |name: &str, field_id| Command::SetPartitioning {
        schema: "public".into(),
        name: name.into(),
        partitioning: quarry_common::partition::Partitioning {
            field_id,
            ..range_partitioning()
        },
    };
    // A column the table does not have.
    assert!(matches!(
        run(&mut catalog, set("t", 9)),
        Err(CatalogError::Partitioning(_))
    ));
    assert!(matches!(
        run(&mut catalog, set("missing", 1)),
        Err(CatalogError::TableNotFound(_))
    ));
    run(&mut catalog, set("t", 1)).expect("partitioned");
    assert_eq!(
        catalog
            .table("public", "t")
            .expect("t")
            .partitioning
            .as_deref(),
        Some(&range_partitioning())
    );
    // Not twice, and not once the table has a second snapshot.
    assert!(matches!(
        run(&mut catalog, set("t", 1)),
        Err(CatalogError::Partitioning(_))
    ));
    run(&mut catalog, create("u")).expect("create");
    let u = catalog.table("public", "u").expect("u").id;
    run(&mut catalog, append(u, vec![])).expect("append");
    assert!(matches!(
        run(&mut catalog, set("u", 1)),
        Err(CatalogError::Partitioning(_))
    ));
}

fn append(table: TableId, added: Vec<DataFile>) -> Command {
    Command::Commit {
        changes: vec![TableChange {
            table,
            added,
            removed: vec![],
            stripes: vec![],
        }],
        read_set: vec![],
    }
}

pub(crate) fn file(rows: u64) -> DataFile {
    DataFile {
        chunk: ChunkId(rows as u128),
        size_bytes: 10,
        checksum_crc32c: 1,
        row_count: rows,
        column_stats: vec![],
    }
}

fn channel_append(table: TableId, channel: &str, offset: u64, rows: u64) -> Command {
    Command::Append {
        change: TableChange {
            table,
            added: vec![DataFile {
                chunk: ChunkId(1_000 + u128::from(offset) * 10 + rows as u128),
                ..file(rows)
            }],
            removed: vec![],
            stripes: vec![],
        },
        channel: channel.into(),
        offset,
        skipped: 0,
    }
}

fn pending_append(table: TableId, channel: &str, offset: u64, rows: u64, skipped: u64) -> Command {
    match channel_append(table, channel, offset, rows) {
        Command::Append { change, .. } => Command::AppendPending {
            change,
            channel: channel.into(),
            offset,
            skipped,
        },
        _ => unreachable!(),
    }
}

#[test]
fn a_pending_channel_is_invisible_until_committed_at_once() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let id = catalog.table("public", "t").expect("t").id;
    let rows = |catalog: &Catalog| {
        catalog
            .table("public", "t")
            .expect("t")
            .current_snapshot()
            .row_count
    };
    run(&mut catalog, pending_append(id, "load", 0, 3, 0)).expect("first");
    // Two bad rows skipped: the offsets still count them.
    run(&mut catalog, pending_append(id, "load", 3, 2, 2)).expect("second");
    assert_eq!(rows(&catalog), 0);
    assert!(catalog.channels.is_empty());
    let pending = &catalog.pending[&(id, "load".to_owned())];
    assert_eq!(pending.next_offset, 7);
    assert_eq!(pending.files.len(), 2);
    // Its files are kept: referenced, not garbage.
    assert!(
        catalog
            .referenced_chunks()
            .contains(&pending.files[0].chunk)
    );
    let before = catalog.clone();
    // A retry, a gap, and rows to be committed as they come: refused.
    for (command, check) in [
        (
            pending_append(id, "load", 3, 2, 0),
            (|e: &CatalogError| matches!(e, CatalogError::ChannelOffset { next_offset: 7, .. }))
                as fn(&CatalogError) -> bool,
        ),
        (pending_append(id, "load", 9, 1, 0), |e| {
            matches!(e, CatalogError::ChannelOffset { next_offset: 7, .. })
        }),
        (channel_append(id, "load", 7, 1), |e| {
            matches!(e, CatalogError::ChannelState { .. })
        }),
    ] {
        let error = run(&mut catalog, command).expect_err("refused");
        assert!(check(&error), "{error:?}");
        assert_eq!(catalog, before);
    }
    // The commit: every row in one snapshot.
    let snapshots = catalog.table("public", "t").expect("t").snapshots.len();
    assert!(matches!(
        run(
            &mut catalog,
            Command::CommitPending {
                table: id,
                channels: vec!["load".into()]
            }
        ),
        Ok(Applied::Commit { .. })
    ));
    assert_eq!(rows(&catalog), 5);
    assert_eq!(
        catalog.table("public", "t").expect("t").snapshots.len(),
        snapshots + 1
    );
    assert!(catalog.pending.is_empty());
    assert_eq!(catalog.channels.get(&(id, "load".to_owned())), Some(&7));
    // A retried commit does nothing; a retried append is told it was
    // written; more rows are refused.
    assert!(matches!(
        run(
            &mut catalog,
            Command::CommitPending {
                table: id,
                channels: vec!["load".into()]
            }
        ),
        Ok(Applied::Nothing)
    ));
    assert!(matches!(
        run(&mut catalog, pending_append(id, "load", 3, 2, 2)),
        Err(CatalogError::ChannelOffset { next_offset: 7, .. })
    ));
    assert!(matches!(
        run(&mut catalog, pending_append(id, "load", 7, 1, 0)),
        Err(CatalogError::ChannelState { .. })
    ));
    assert!(matches!(
        run(
            &mut catalog,
            Command::CommitPending {
                table: id,
                channels: vec!["load".into(), "never".into()]
            }
        ),
        Err(CatalogError::ChannelNotFound(_))
    ));
    // Two channels commit together, in one snapshot.
    run(&mut catalog, pending_append(id, "p1", 0, 2, 0)).expect("p1");
    run(&mut catalog, pending_append(id, "p2", 0, 3, 0)).expect("p2");
    let snapshots = catalog.table("public", "t").expect("t").snapshots.len();
    run(
        &mut catalog,
        Command::CommitPending {
            table: id,
            channels: vec!["p1".into(), "p2".into(), "load".into()],
        },
    )
    .expect("both");
    assert_eq!(rows(&catalog), 10);
    assert_eq!(
        catalog.table("public", "t").expect("t").snapshots.len(),
        snapshots + 1
    );
    assert_eq!(catalog.channels.get(&(id, "p2".to_owned())), Some(&3));
    // A discarded channel's files are released, its rows never seen.
    run(&mut catalog, pending_append(id, "other", 0, 4, 0)).expect("other");
    let chunk = catalog.pending[&(id, "other".to_owned())].files[0].chunk;
    match run(
        &mut catalog,
        Command::DiscardPending {
            table: id,
            channel: "other".into(),
        },
    ) {
        Ok(Applied::Expired { chunks }) => assert_eq!(chunks, vec![chunk]),
        other => panic!("{other:?}"),
    }
    assert!(!catalog.referenced_chunks().contains(&chunk));
    assert_eq!(rows(&catalog), 10);
    // A purged table's pending channels go with it.
    run(&mut catalog, pending_append(id, "third", 0, 1, 0)).expect("third");
    run(
        &mut catalog,
        Command::DropTable {
            schema: "public".into(),
            name: "t".into(),
            if_exists: false,
        },
    )
    .expect("drop");
    assert!(matches!(
        run(
            &mut catalog,
            Command::CommitPending {
                table: id,
                channels: vec!["third".into()]
            }
        ),
        Err(CatalogError::TableNotFound(_))
    ));
    run(&mut catalog, Command::PurgeDropped { table: id }).expect("purge");
    assert!(catalog.pending.is_empty());
}

#[test]
fn a_channel_append_commits_only_at_the_channels_next_offset() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let id = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, channel_append(id, "w", 0, 3)).expect("first");
    run(&mut catalog, channel_append(id, "w", 3, 2)).expect("second");
    run(&mut catalog, channel_append(id, "other", 0, 1)).expect("another channel");
    let before = catalog.clone();
    // A retry of rows written, and a gap: refused, the catalog unchanged.
    for (offset, rows) in [(0, 3), (3, 2), (9, 1)] {
        match run(&mut catalog, channel_append(id, "w", offset, rows)) {
            Err(CatalogError::ChannelOffset { next_offset, .. }) => assert_eq!(next_offset, 5),
            other => panic!("offset {offset}: {other:?}"),
        }
        assert_eq!(catalog, before);
    }
    assert_eq!(catalog.channels.get(&(id, "w".to_owned())), Some(&5));
    assert_eq!(catalog.channels.get(&(id, "other".to_owned())), Some(&1));
    assert_eq!(
        catalog
            .table("public", "t")
            .expect("t")
            .current_snapshot()
            .row_count,
        6
    );
    // An append only adds.
    let mut removing = channel_append(id, "w", 5, 1);
    if let Command::Append { change, .. } = &mut removing {
        change.removed.push(ChunkId(1_003));
    }
    assert!(matches!(
        run(&mut catalog, removing),
        Err(CatalogError::AppendRemoves)
    ));
    // A purged table's channels go with it.
    run(
        &mut catalog,
        Command::DropTable {
            schema: "public".into(),
            name: "t".into(),
            if_exists: false,
        },
    )
    .expect("drop");
    run(&mut catalog, Command::PurgeDropped { table: id }).expect("purge");
    assert!(catalog.channels.is_empty());
}

#[test]
fn an_external_table_takes_no_rows_and_its_source_goes_when_it_is_purged() {
    let mut catalog = with_public();
    let source = ExternalSource {
        format: quarry_common::catalog::FileFormat::Parquet,
        uris: vec!["/data/*.parquet".into()],
        skip_leading_rows: 0,
    };
    let external = |name: &str| Command::SetExternalSource {
        schema: "public".into(),
        name: name.into(),
        source: source.clone(),
    };
    run(&mut catalog, create("e")).expect("create");
    run(&mut catalog, external("e")).expect("external");
    let id = catalog.table("public", "e").expect("e").id;
    assert_eq!(
        catalog.external_source(id).map(|s| s.as_ref()),
        Some(&source)
    );
    // Its rows are the files': commits and appends are refused.
    let before = catalog.clone();
    for command in [append(id, vec![file(3)]), channel_append(id, "w", 0, 2)] {
        match run(&mut catalog, command) {
            Err(e @ CatalogError::ExternalTable(_)) => {
                assert_eq!(e.sqlstate(), SqlState::WRONG_OBJECT_TYPE)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(catalog, before);
    }
    // A table with rows of its own cannot become one.
    run(&mut catalog, create("t")).expect("create t");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(3)])).expect("rows");
    assert!(matches!(
        run(&mut catalog, external("t")),
        Err(CatalogError::ExternalTable(_))
    ));
    // Dropped, it stays external (UNDROP); purged, its source goes.
    run(
        &mut catalog,
        Command::DropTable {
            schema: "public".into(),
            name: "e".into(),
            if_exists: false,
        },
    )
    .expect("drop");
    assert!(catalog.external_source(id).is_some());
    run(&mut catalog, Command::PurgeDropped { table: id }).expect("purge");
    assert!(catalog.external.is_empty());
}

#[test]
fn appends_create_snapshots_with_growing_ids_times_and_rows() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let id = catalog.table("public", "t").expect("t").id;
    for rows in [3, 4] {
        run(&mut catalog, append(id, vec![file(rows)])).expect("append");
    }
    let t = catalog.table("public", "t").expect("t");
    let ids: Vec<_> = t.snapshots.iter().map(|s| s.id).collect();
    let times: Vec<_> = t.snapshots.iter().map(|s| s.committed_at).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert_eq!(t.current_snapshot().row_count, 7);
    assert_eq!(t.files_at(ids[1]).count(), 1);
    assert_eq!(t.files_at(ids[2]).count(), 2);
}

/// The derived indexes (tables by id, each table's live files by chunk)
/// equal what `reindex` rebuilds from the serialized state, after every
/// kind of command that changes tables or files; and a catalog survives
/// a postcard round trip (what Raft snapshots store) once reindexed.
#[test]
fn derived_indexes_stay_in_step_with_every_command() {
    fn check(catalog: &Catalog, after: &str) {
        let mut rebuilt = catalog.clone();
        rebuilt.reindex();
        assert_eq!(
            rebuilt.table_keys, catalog.table_keys,
            "table keys after {after}"
        );
        for (key, table) in &catalog.tables {
            assert_eq!(
                rebuilt.tables[key].live_files, table.live_files,
                "live files of {key:?} after {after}"
            );
        }
        let bytes = postcard::to_allocvec(catalog).expect("encode");
        let mut decoded: Catalog = postcard::from_bytes(&bytes).expect("decode");
        assert!(decoded.table_keys.is_empty(), "indexes are not serialized");
        decoded.reindex();
        assert_eq!(&decoded, catalog, "round trip after {after}");
    }
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    run(&mut catalog, create("u")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(1), file(2), file(3)])).expect("append");
    check(&catalog, "append");
    let rewrite = Command::Commit {
        changes: vec![TableChange {
            table: t,
            added: vec![file(4)],
            removed: vec![ChunkId(2)],
            stripes: vec![],
        }],
        read_set: vec![],
    };
    run(&mut catalog, rewrite).expect("rewrite");
    check(&catalog, "rewrite");
    let t_now = catalog.table("public", "t").expect("t");
    assert!(t_now.live_file(ChunkId(2)).is_none(), "removed");
    assert_eq!(t_now.current_snapshot().row_count, 1 + 3 + 4);
    let rename = Command::AlterTable {
        table: t,
        change: SchemaChange::RenameTable("t2".into()),
    };
    run(&mut catalog, rename).expect("rename");
    check(&catalog, "rename");
    assert_eq!(
        catalog.table_by_id(t).map(|t| t.name.as_str()),
        Some("t2"),
        "found by id under its new name"
    );
    let keep_from = catalog.table_by_id(t).expect("t2").current_snapshot().id;
    run(
        &mut catalog,
        Command::ExpireSnapshots {
            table: t,
            keep_from,
        },
    )
    .expect("expire");
    check(&catalog, "expire");
    let drop = Command::DropTable {
        schema: "public".into(),
        name: "t2".into(),
        if_exists: false,
    };
    run(&mut catalog, drop).expect("drop");
    check(&catalog, "drop");
    assert!(catalog.table_by_id(t).is_none());
    let undrop = Command::UndropTable {
        schema: "public".into(),
        name: "t2".into(),
    };
    run(&mut catalog, undrop).expect("undrop");
    check(&catalog, "undrop");
    let cascade = Command::DropSchema {
        name: "public".into(),
        if_exists: false,
        cascade: true,
    };
    run(&mut catalog, cascade).expect("drop schema");
    check(&catalog, "drop schema");
    assert!(catalog.table_keys.is_empty());
}

#[test]
fn refused_commands_leave_the_catalog_unchanged() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let before = catalog.clone();
    let cases = [
        (create("t"), CatalogError::TableExists("t".into())),
        (
            Command::CreateSchema {
                name: "public".into(),
                if_not_exists: false,
            },
            CatalogError::SchemaExists("public".into()),
        ),
        (
            Command::DropTable {
                schema: "public".into(),
                name: "nope".into(),
                if_exists: false,
            },
            CatalogError::TableNotFound("nope".into()),
        ),
        (
            Command::DropSchema {
                name: "public".into(),
                if_exists: false,
                cascade: false,
            },
            CatalogError::SchemaNotEmpty("public".into()),
        ),
        (
            append(999, vec![file(1)]),
            CatalogError::TableNotFound("table id 999".into()),
        ),
    ];
    for (command, expected) in cases {
        assert_eq!(run(&mut catalog, command), Err(expected));
        assert_eq!(catalog, before);
    }
}

#[test]
fn the_second_of_two_rewrites_of_one_file_fails_and_changes_nothing() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    run(&mut catalog, create("u")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    let u = catalog.table("public", "u").expect("u").id;
    run(&mut catalog, append(t, vec![file(10)])).expect("append");
    let rewrite = |rows| Command::Commit {
        changes: vec![TableChange {
            table: t,
            added: vec![file(rows)],
            removed: vec![ChunkId(10)],
            stripes: vec![],
        }],
        read_set: vec![],
    };
    run(&mut catalog, rewrite(7)).expect("first rewrite wins");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.current_snapshot().row_count, 7);
    assert_eq!(table.current_snapshot().operation, Operation::Rewrite);
    let before = catalog.clone();
    // The second rewrite of the same file also appends to another table: all
    // of it must fail.
    let Command::Commit { mut changes, .. } = rewrite(8) else {
        unreachable!("rewrite builds a commit");
    };
    changes.push(TableChange {
        table: u,
        added: vec![file(3)],
        removed: vec![],
        stripes: vec![],
    });
    let result = run(
        &mut catalog,
        Command::Commit {
            changes,
            read_set: vec![],
        },
    );
    assert_eq!(result, Err(CatalogError::SerializationFailure("t".into())));
    assert_eq!(catalog, before);
}

#[test]
fn expiring_snapshots_drops_files_only_older_snapshots_used() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(10)])).expect("append");
    let rewrite = Command::Commit {
        changes: vec![TableChange {
            table: t,
            added: vec![file(7)],
            removed: vec![ChunkId(10)],
            stripes: vec![],
        }],
        read_set: vec![],
    };
    run(&mut catalog, rewrite).expect("rewrite");
    let keep_from = catalog
        .table("public", "t")
        .expect("t")
        .current_snapshot()
        .id;
    let applied = run(
        &mut catalog,
        Command::ExpireSnapshots {
            table: t,
            keep_from,
        },
    )
    .expect("expire");
    assert_eq!(
        applied,
        Applied::Expired {
            chunks: vec![ChunkId(10)]
        }
    );
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.snapshots.len(), 1);
    assert_eq!(
        table
            .files_at(keep_from)
            .map(|f| f.chunk)
            .collect::<Vec<_>>(),
        vec![ChunkId(7)]
    );
}

#[test]
fn concurrent_appends_both_commit() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(1)])).expect("first");
    run(&mut catalog, append(t, vec![file(2)])).expect("second");
    assert_eq!(
        catalog
            .table("public", "t")
            .expect("t")
            .current_snapshot()
            .row_count,
        3
    );
}

#[test]
fn a_serializable_commit_fails_when_a_table_it_read_changed() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    run(&mut catalog, create("u")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    let u = catalog.table("public", "u").expect("u").id;
    let read_at = catalog
        .table("public", "t")
        .expect("t")
        .current_snapshot()
        .id;
    run(&mut catalog, append(t, vec![file(1)])).expect("concurrent write to t");
    let result = run(
        &mut catalog,
        Command::Commit {
            changes: vec![TableChange {
                table: u,
                added: vec![file(2)],
                removed: vec![],
                stripes: vec![],
            }],
            read_set: vec![(t, read_at)],
        },
    );
    assert_eq!(result, Err(CatalogError::SerializationFailure("t".into())));
}

#[test]
fn duplicate_column_names_are_refused() {
    let mut catalog = with_public();
    let column = ColumnDef {
        name: "a".into(),
        column_type: ColumnType::Int32,
        nullable: true,
        default: None,
    };
    let result = run(
        &mut catalog,
        Command::CreateTable {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![column.clone(), column],
            if_not_exists: false,
            files: vec![],
            retention_micros: None,
            field_ids: vec![],
            layout: None,
            stripes: vec![],
        },
    );
    assert_eq!(result, Err(CatalogError::DuplicateColumn("a".into())));
}

#[test]
fn drop_schema_cascade_drops_its_tables() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    run(
        &mut catalog,
        Command::DropSchema {
            name: "public".into(),
            if_exists: false,
            cascade: true,
        },
    )
    .expect("drop");
    assert!(catalog.tables.is_empty());
    assert!(catalog.schemas.is_empty());
}

fn chunk(id: u128, node: NodeId) -> StripeChunk {
    StripeChunk {
        chunk: ChunkId(id),
        node,
        size_bytes: 10,
        checksum_crc32c: 0,
    }
}

#[test]
fn replacing_parity_checks_what_the_proposer_saw() {
    let mut catalog = with_public();
    let id = ChunkId(100);
    catalog.add_stripe(Stripe {
        id,
        data_chunks: 1,
        chunks: vec![chunk(1, 1), chunk(2, 2)],
    });
    let widen = |expected: Vec<ChunkId>| Command::ReplaceParity {
        stripe: id,
        expected,
        parity: vec![chunk(3, 2), chunk(4, 3)],
    };
    assert_eq!(
        run(&mut catalog, widen(vec![ChunkId(9)])),
        Err(CatalogError::ParityChanged(id)),
        "stale view refused"
    );
    assert_eq!(catalog.stripes[&id].chunks.len(), 2, "unchanged");
    run(&mut catalog, widen(vec![ChunkId(2)])).expect("widen");
    let stripe = &catalog.stripes[&id];
    assert_eq!(stripe.parity_chunks(), 2);
    assert_eq!(stripe.chunks[0], chunk(1, 1), "data chunks kept");
    assert_eq!(
        run(&mut catalog, widen(vec![ChunkId(2)])),
        Err(CatalogError::ParityChanged(id)),
        "a second widening from the same view is refused"
    );
}

#[test]
fn a_rebalance_records_its_moves_as_they_are_made_and_one_runs_at_a_time() {
    let mut catalog = with_public();
    let id = ChunkId(100);
    catalog.add_stripe(Stripe {
        id,
        data_chunks: 1,
        chunks: vec![chunk(1, 1), chunk(2, 2)],
    });
    let planned = |index: u8, from: NodeId, to: NodeId| quarry_common::catalog::PlannedMove {
        stripe: id,
        index,
        from,
        to,
        bytes: 10,
        moved_at: None,
    };
    let plan = |planned_at, moves| Command::StartRebalance {
        rebalance: Rebalance {
            planned_at,
            reason: "test".into(),
            moves,
            finished_at: None,
        },
    };
    run(
        &mut catalog,
        plan(5, vec![planned(0, 1, 3), planned(1, 2, 4)]),
    )
    .expect("plan");
    assert_eq!(
        run(&mut catalog, plan(6, vec![])),
        Err(CatalogError::RebalanceUnderWay(5)),
        "a second plan while one is under way"
    );
    // A move that is not the plan's (repair) changes nothing in it.
    run(
        &mut catalog,
        Command::MoveChunk {
            stripe: id,
            index: 1,
            from: 2,
            to: 5,
        },
    )
    .expect("repair's move");
    run(
        &mut catalog,
        Command::MoveChunk {
            stripe: id,
            index: 0,
            from: 1,
            to: 3,
        },
    )
    .expect("the plan's move");
    let rebalance = catalog.rebalance.clone().expect("plan");
    assert_eq!(rebalance.moves[0].moved_at, Some(1_000));
    assert_eq!(rebalance.moves[1].moved_at, None);
    assert_eq!(rebalance.progress(), (1, 10));
    assert_eq!(
        run(&mut catalog, Command::FinishRebalance { planned_at: 6 }),
        Err(CatalogError::RebalanceChanged(6))
    );
    run(&mut catalog, Command::FinishRebalance { planned_at: 5 }).expect("finish");
    assert_eq!(
        catalog.rebalance.as_ref().and_then(|r| r.finished_at),
        Some(1_000)
    );
    // A finished plan marks no more moves; a new one may start.
    run(&mut catalog, plan(7, vec![planned(0, 3, 1)])).expect("a new plan");
    // A decommission ends the plan under way, so the next plan empties the node.
    run(&mut catalog, Command::Decommission { node: 3 }).expect("decommission");
    assert!(catalog.decommissioning.contains_key(&3));
    assert!(
        catalog
            .rebalance
            .as_ref()
            .is_some_and(|r| r.finished_at.is_some())
    );
}

#[test]
fn a_restore_replaces_an_empty_catalog_and_keeps_the_cluster_identity() {
    // The backup: a table.
    let mut backed_up = with_public();
    run(&mut backed_up, create("t")).expect("create");
    backed_up.cluster_id = 7;
    let mut snapshot = Vec::new();
    crate::snapshot_file::write(&backed_up, &mut snapshot).expect("encode");
    let restore = || Command::Restore {
        snapshot: snapshot.clone(),
    };
    // The target: another cluster, empty.
    let mut target = with_public();
    target.cluster_id = 9;
    target.next_node_id = 5;
    run(&mut target, restore()).expect("restore");
    assert!(target.table("public", "t").is_some());
    assert_eq!(target.cluster_id, 9, "the cluster keeps its own id");
    assert_eq!(target.next_node_id, 5);
    assert_eq!(
        run(&mut target, restore()),
        Err(CatalogError::RestoreIntoNonEmpty),
        "a cluster that holds a table"
    );
    let mut damaged = with_public();
    assert!(matches!(
        run(
            &mut damaged,
            Command::Restore {
                snapshot: b"QSNP nonsense".to_vec()
            }
        ),
        Err(CatalogError::BadBackup(_))
    ));
    assert!(
        damaged.tables.is_empty(),
        "a refused restore changes nothing"
    );
}

#[test]
fn regrouping_replaces_narrow_stripes_only_as_they_were_seen() {
    let mut catalog = with_public();
    for (id, data, parity) in [(100, 1, 11), (200, 2, 12)] {
        catalog.add_stripe(Stripe {
            id: ChunkId(id),
            data_chunks: 1,
            chunks: vec![chunk(data, data as NodeId), chunk(parity, 3)],
        });
    }
    let new = Stripe {
        id: ChunkId(300),
        data_chunks: 2,
        chunks: vec![chunk(1, 1), chunk(2, 2), chunk(21, 3)],
    };
    let moved = Stripe {
        chunks: vec![chunk(1, 4), chunk(2, 2), chunk(21, 3)],
        ..new.clone()
    };
    let regroup = |new: &Stripe| Command::Regroup {
        old: vec![ChunkId(100), ChunkId(200)],
        new: new.clone(),
    };
    assert_eq!(
        run(&mut catalog, regroup(&moved)),
        Err(CatalogError::ParityChanged(ChunkId(300))),
        "a data chunk placed elsewhere than the catalog says"
    );
    run(&mut catalog, regroup(&new)).expect("regroup");
    assert_eq!(catalog.stripes.len(), 1);
    assert_eq!(
        catalog.stripe_of(ChunkId(1)).map(|s| s.id),
        Some(ChunkId(300))
    );
    assert_eq!(
        catalog.stripe_of(ChunkId(2)).map(|s| s.id),
        Some(ChunkId(300))
    );
    assert!(
        run(&mut catalog, regroup(&new)).is_err(),
        "the old stripes are gone"
    );
}

fn view(name: &str, columns: &[&str]) -> Command {
    Command::CreateView {
        view: quarry_common::catalog::View {
            schema: "public".into(),
            name: name.into(),
            query: "SELECT 1".into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            created_at: 0,
        },
        or_replace: false,
    }
}

#[test]
fn views_share_the_table_namespace_and_go_with_their_schema() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    run(&mut catalog, view("v", &["a"])).expect("view");
    assert_eq!(
        run(&mut catalog, view("t", &["a"])),
        Err(CatalogError::TableExists("t".into()))
    );
    assert_eq!(
        run(&mut catalog, create("v")),
        Err(CatalogError::TableExists("v".into()))
    );
    let Command::CreateView {
        view: mut wider, ..
    } = view("v", &["a", "b"])
    else {
        unreachable!("view builds CreateView");
    };
    let replace = |view: quarry_common::catalog::View| Command::CreateView {
        view,
        or_replace: true,
    };
    run(&mut catalog, replace(wider.clone())).expect("a replacement adds a column");
    wider.columns = vec!["b".into()];
    assert!(matches!(
        run(&mut catalog, replace(wider)),
        Err(CatalogError::ViewColumnsChanged { .. })
    ));
    run(
        &mut catalog,
        Command::RenameView {
            schema: "public".into(),
            name: "v".into(),
            to: "w".into(),
        },
    )
    .expect("rename");
    assert!(catalog.view("public", "w").is_some() && catalog.view("public", "v").is_none());
    let drop_schema = |cascade| Command::DropSchema {
        name: "public".into(),
        if_exists: false,
        cascade,
    };
    run(
        &mut catalog,
        Command::DropTable {
            schema: "public".into(),
            name: "t".into(),
            if_exists: false,
        },
    )
    .expect("drop table");
    assert_eq!(
        run(&mut catalog, drop_schema(false)),
        Err(CatalogError::SchemaNotEmpty("public".into())),
        "a view keeps its schema"
    );
    run(&mut catalog, drop_schema(true)).expect("cascade");
    assert!(catalog.views.is_empty());
}

fn two_columns(name: &str) -> Command {
    let mut command = create(name);
    if let Command::CreateTable { columns, .. } = &mut command {
        let column = |name: &str, nullable| ColumnDef {
            name: name.into(),
            column_type: ColumnType::Int64,
            nullable,
            default: None,
        };
        *columns = vec![column("id", false), column("other", true)];
    }
    command
}

fn add(table: &str, name: Option<&str>, kind: ConstraintDefKind) -> Command {
    Command::AddConstraint {
        schema: "public".into(),
        table: table.into(),
        constraint: ConstraintDef {
            name: name.map(Into::into),
            kind,
        },
    }
}

fn foreign_key(columns: &[&str], table: &str, referenced: &[&str]) -> ConstraintDefKind {
    ConstraintDefKind::ForeignKey {
        columns: columns.iter().map(|c| (*c).into()).collect(),
        schema: "public".into(),
        table: table.into(),
        referenced: referenced.iter().map(|c| (*c).into()).collect(),
    }
}

#[test]
fn constraints_are_kept_by_field_id_with_postgresql_s_names_and_rules() {
    let mut catalog = with_public();
    run(&mut catalog, two_columns("parent")).unwrap();
    run(&mut catalog, two_columns("child")).unwrap();
    let pk = ConstraintDefKind::PrimaryKey(vec!["id".into()]);
    run(&mut catalog, add("parent", None, pk.clone())).unwrap();
    let parent = catalog.table("public", "parent").unwrap().clone();
    let notes = catalog.notes.get(&parent.id).unwrap();
    assert_eq!(notes.constraints[0].name, "parent_pkey");
    assert_eq!(
        notes.constraints[0].kind,
        ConstraintKind::PrimaryKey(vec![1])
    );
    // One primary key; its columns NOT NULL; names unique per table.
    assert_eq!(
        run(&mut catalog, add("parent", Some("again"), pk.clone())),
        Err(CatalogError::MultiplePrimaryKeys("parent".into()))
    );
    let nullable = ConstraintDefKind::PrimaryKey(vec!["other".into()]);
    assert_eq!(
        run(&mut catalog, add("child", None, nullable)),
        Err(CatalogError::PrimaryKeyNullable("other".into()))
    );
    let unique = ConstraintDefKind::Unique(vec!["other".into()]);
    run(&mut catalog, add("parent", None, unique.clone())).unwrap();
    assert!(matches!(
        run(
            &mut catalog,
            add("parent", Some("parent_other_key"), unique)
        ),
        Err(CatalogError::ConstraintExists { .. })
    ));
    // A foreign key names a key of the referenced table; without columns,
    // its primary key.
    assert!(matches!(
        run(
            &mut catalog,
            add("child", None, foreign_key(&["id"], "nope", &[]))
        ),
        Err(CatalogError::TableNotFound(_))
    ));
    run(
        &mut catalog,
        add("child", None, foreign_key(&["other"], "parent", &[])),
    )
    .unwrap();
    let child = catalog.table("public", "child").unwrap().clone();
    assert_eq!(
        catalog.notes.get(&child.id).unwrap().constraints[0],
        Constraint {
            name: "child_other_fkey".into(),
            kind: ConstraintKind::ForeignKey {
                columns: vec![2],
                table: parent.id,
                referenced: vec![1],
            },
        }
    );
    run(&mut catalog, two_columns("keyless")).unwrap();
    assert!(matches!(
        run(
            &mut catalog,
            add("child", None, foreign_key(&["id"], "keyless", &[]))
        ),
        Err(CatalogError::InvalidForeignKey(_))
    ));
    assert!(matches!(
        run(
            &mut catalog,
            add("child", None, foreign_key(&["id"], "keyless", &["id"]))
        ),
        Err(CatalogError::InvalidForeignKey(_))
    ));
    // The referenced table and key cannot go while the foreign key is there.
    let drop_parent = Command::DropTable {
        schema: "public".into(),
        name: "parent".into(),
        if_exists: false,
    };
    assert!(matches!(
        run(&mut catalog, drop_parent.clone()),
        Err(CatalogError::Referenced { .. })
    ));
    let drop_pk = |cascade| Command::DropConstraint {
        schema: "public".into(),
        table: "parent".into(),
        name: "parent_pkey".into(),
        if_exists: false,
        cascade,
    };
    assert!(matches!(
        run(&mut catalog, drop_pk(false)),
        Err(CatalogError::Referenced { .. })
    ));
    run(&mut catalog, drop_pk(true)).unwrap();
    assert!(
        !catalog.notes.contains_key(&child.id),
        "CASCADE dropped the foreign key"
    );
    run(&mut catalog, drop_parent).unwrap();
    // The dropped table keeps its notes for UNDROP until it is purged.
    assert!(catalog.notes.contains_key(&parent.id));
    run(&mut catalog, Command::PurgeDropped { table: parent.id }).unwrap();
    assert!(!catalog.notes.contains_key(&parent.id));
}

#[test]
fn comments_follow_columns_and_a_dropped_column_takes_its_notes() {
    let mut catalog = with_public();
    run(&mut catalog, two_columns("t")).unwrap();
    let comment = |column: Option<&str>, text: Option<&str>| Command::Comment {
        schema: "public".into(),
        table: "t".into(),
        column: column.map(Into::into),
        comment: text.map(Into::into),
    };
    run(&mut catalog, comment(None, Some("the table"))).unwrap();
    run(&mut catalog, comment(Some("other"), Some("a column"))).unwrap();
    assert_eq!(
        run(&mut catalog, comment(Some("nope"), Some("x"))),
        Err(CatalogError::ColumnNotFound("nope".into()))
    );
    let id = catalog.table("public", "t").unwrap().id;
    run(
        &mut catalog,
        add("t", None, ConstraintDefKind::Unique(vec!["other".into()])),
    )
    .unwrap();
    let notes = catalog.notes.get(&id).unwrap().clone();
    assert_eq!(notes.comment.as_deref(), Some("the table"));
    assert_eq!(
        notes.column_comments.get(&2).map(String::as_str),
        Some("a column")
    );
    run(
        &mut catalog,
        Command::AlterTable {
            table: id,
            change: SchemaChange::DropColumn("other".into()),
        },
    )
    .unwrap();
    let notes = catalog.notes.get(&id).unwrap();
    assert!(notes.column_comments.is_empty() && notes.constraints.is_empty());
    run(&mut catalog, comment(None, None)).unwrap();
    assert!(
        !catalog.notes.contains_key(&id),
        "empty notes are forgotten"
    );
}

#[test]
fn a_batch_applies_all_of_its_commands_or_none() {
    let mut catalog = with_public();
    let pk = || add("t", None, ConstraintDefKind::PrimaryKey(vec!["id".into()]));
    let before = catalog.clone();
    let failed = run(
        &mut catalog,
        Command::Batch(vec![
            two_columns("t"),
            pk(),
            add("t", None, ConstraintDefKind::Unique(vec!["nope".into()])),
        ]),
    );
    assert_eq!(failed, Err(CatalogError::ColumnNotFound("nope".into())));
    assert_eq!(catalog, before, "nothing of a failed batch is applied");
    let applied = run(&mut catalog, Command::Batch(vec![two_columns("t"), pk()])).unwrap();
    assert!(matches!(&applied, Applied::Batch(each) if each.len() == 2));
    let id = catalog.table("public", "t").unwrap().id;
    assert_eq!(catalog.notes.get(&id).unwrap().constraints.len(), 1);
}

fn transaction(commands: Vec<Command>, provisional: Vec<TableId>) -> Command {
    Command::Transaction {
        read_set: vec![],
        altered: vec![],
        commands,
        provisional,
    }
}

/// A block's CREATE TABLE took an id on its own snapshot; a table created
/// meanwhile took that id for real, so at COMMIT the block's table gets the
/// next one and its later commands follow it there, not to the other table.
#[test]
fn a_transaction_moves_its_provisional_tables_onto_real_ids() {
    let mut catalog = with_public();
    let mut block = catalog.clone();
    run(&mut block, create("mine")).unwrap();
    let provisional = block.table("public", "mine").unwrap().id;
    run(&mut catalog, create("theirs")).unwrap();
    let theirs = catalog.table("public", "theirs").unwrap().id;
    assert_eq!(theirs, provisional, "the ids collide, as the test needs");
    let add_column = Command::AlterTable {
        table: provisional,
        change: SchemaChange::AddColumn(ColumnDef {
            name: "b".into(),
            column_type: ColumnType::Int32,
            nullable: true,
            default: None,
        }),
    };
    let applied = run(
        &mut catalog,
        transaction(
            vec![
                create("mine"),
                add_column,
                append(provisional, vec![file(5)]),
            ],
            vec![provisional],
        ),
    )
    .unwrap();
    assert!(matches!(&applied, Applied::Batch(each) if each.len() == 3));
    let mine = catalog.table("public", "mine").unwrap();
    assert_ne!(mine.id, theirs);
    assert_eq!(mine.columns.len(), 2);
    assert_eq!(mine.current_snapshot().row_count, 5);
    let theirs = catalog.table("public", "theirs").unwrap();
    assert_eq!(theirs.columns.len(), 1, "the other table is untouched");
    assert_eq!(theirs.current_snapshot().row_count, 0);
}

/// Nothing of a block applies when any part fails: a name taken meanwhile
/// (42P07 as PostgreSQL reports it at CREATE), a write conflict, or a
/// CREATE that creates a different number of tables than the block saw.
#[test]
fn a_transaction_applies_all_of_its_commands_or_none() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).unwrap();
    let t = catalog.table("public", "t").unwrap().id;
    let mut block = catalog.clone();
    run(&mut block, create("u")).unwrap();
    let u = block.table("public", "u").unwrap().id;
    run(&mut catalog, create("u")).unwrap();
    let before = catalog.clone();
    let taken = run(
        &mut catalog,
        transaction(
            vec![
                append(t, vec![file(1)]),
                create("u"),
                append(u, vec![file(2)]),
            ],
            vec![u],
        ),
    );
    assert!(
        matches!(taken, Err(CatalogError::TableExists(_))),
        "{taken:?}"
    );
    assert_eq!(catalog, before, "nothing of a failed transaction applies");
    let missing = run(&mut catalog, transaction(vec![create("v")], vec![]));
    assert!(
        matches!(missing, Err(CatalogError::SerializationFailure(_))),
        "{missing:?}"
    );
    let unmatched = run(
        &mut catalog,
        transaction(vec![append(t, vec![file(3)])], vec![u]),
    );
    assert!(
        matches!(unmatched, Err(CatalogError::SerializationFailure(_))),
        "{unmatched:?}"
    );
    assert_eq!(catalog, before);
    let read = Command::Transaction {
        read_set: vec![(t, 0)],
        altered: vec![],
        commands: vec![create("w")],
        provisional: vec![u],
    };
    let stale = run(&mut catalog, read);
    assert!(matches!(stale, Err(CatalogError::SerializationFailure(name)) if name == "t"));
    assert_eq!(catalog, before);
}

/// A block that altered a table commits only if nobody altered it since the
/// block saw it: the block's data files carry the field ids of its schema.
#[test]
fn a_transaction_fails_when_a_table_it_altered_was_altered_meanwhile() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).unwrap();
    let t = catalog.table("public", "t").unwrap().id;
    let seen = catalog.table("public", "t").unwrap().schema_id;
    let add = |name: &str| Command::AlterTable {
        table: t,
        change: SchemaChange::AddColumn(ColumnDef {
            name: name.into(),
            column_type: ColumnType::Int32,
            nullable: true,
            default: None,
        }),
    };
    let block = Command::Transaction {
        read_set: vec![],
        altered: vec![(t, seen)],
        commands: vec![add("mine"), append(t, vec![file(1)])],
        provisional: vec![],
    };
    run(&mut catalog, add("theirs")).unwrap();
    let before = catalog.clone();
    let failed = run(&mut catalog, block.clone());
    assert_eq!(failed, Err(CatalogError::SerializationFailure("t".into())));
    assert_eq!(catalog, before);
    let mut unaltered = with_public();
    run(&mut unaltered, create("t")).unwrap();
    run(&mut unaltered, block).unwrap();
    let columns: Vec<_> = unaltered
        .table("public", "t")
        .unwrap()
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["a", "mine"]);
}

fn role(name: &str, options: RoleOptions) -> Command {
    Command::CreateRole {
        name: name.into(),
        options,
    }
}

#[test]
fn a_created_object_is_owned_by_its_creator_and_a_view_rename_keeps_its_grants() {
    let mut catalog = with_public();
    run(&mut catalog, role("alice", RoleOptions::default())).unwrap();
    let alice = catalog.role("alice").unwrap().id;
    run(
        &mut catalog,
        Command::Owned {
            owner: alice,
            command: Box::new(create("t")),
        },
    )
    .unwrap();
    let t = Securable::Table(catalog.table("public", "t").unwrap().id);
    assert_eq!(catalog.owner_of(&t), Some(alice));
    let view = View {
        schema: "public".into(),
        name: "v".into(),
        query: "SELECT a FROM t".into(),
        columns: vec!["a".into()],
        created_at: 0,
    };
    run(
        &mut catalog,
        Command::Owned {
            owner: alice,
            command: Box::new(Command::CreateView {
                view,
                or_replace: false,
            }),
        },
    )
    .unwrap();
    run(&mut catalog, role("bob", RoleOptions::default())).unwrap();
    run(
        &mut catalog,
        Command::SetPrivileges {
            objects: vec![Securable::View("public".into(), "v".into())],
            grantees: vec!["bob".into()],
            privileges: Privileges::SELECT,
            granted: true,
        },
    )
    .unwrap();
    run(
        &mut catalog,
        Command::RenameView {
            schema: "public".into(),
            name: "v".into(),
            to: "w".into(),
        },
    )
    .unwrap();
    let bob = catalog.role("bob").unwrap().id;
    let w = Securable::View("public".into(), "w".into());
    assert!(catalog.has_privilege(bob, &w, Privileges::SELECT));
    assert_eq!(catalog.owner_of(&w), Some(alice));
}

#[test]
fn drop_role_is_refused_while_it_owns_or_holds_privileges() {
    let mut catalog = with_public();
    run(&mut catalog, role("alice", RoleOptions::default())).unwrap();
    run(&mut catalog, create("t")).unwrap();
    let t = Securable::Table(catalog.table("public", "t").unwrap().id);
    let grant = |granted| Command::SetPrivileges {
        objects: vec![t.clone()],
        grantees: vec!["alice".into()],
        privileges: Privileges::SELECT,
        granted,
    };
    run(&mut catalog, grant(true)).unwrap();
    let drop = Command::DropRole {
        name: "alice".into(),
        if_exists: false,
    };
    let refused = run(&mut catalog, drop.clone()).unwrap_err();
    assert_eq!(refused.sqlstate(), SqlState::DEPENDENT_OBJECTS_STILL_EXIST);
    run(&mut catalog, grant(false)).unwrap();
    run(&mut catalog, drop.clone()).unwrap();
    assert!(catalog.role("alice").is_none());
    assert_eq!(
        run(&mut catalog, drop).unwrap_err(),
        CatalogError::RoleNotFound("alice".into())
    );
}

#[test]
fn membership_may_not_cycle_and_reserved_names_are_refused() {
    let mut catalog = with_public();
    run(&mut catalog, role("a", RoleOptions::default())).unwrap();
    run(
        &mut catalog,
        role(
            "b",
            RoleOptions {
                in_role: vec!["a".into()],
                ..Default::default()
            },
        ),
    )
    .unwrap();
    let cycle = run(
        &mut catalog,
        Command::SetMembership {
            role: "b".into(),
            member: "a".into(),
            granted: true,
        },
    )
    .unwrap_err();
    assert_eq!(cycle.sqlstate(), SqlState::INVALID_GRANT_OPERATION);
    for name in ["public", "pg_monitor"] {
        assert_eq!(
            run(&mut catalog, role(name, RoleOptions::default()))
                .unwrap_err()
                .sqlstate(),
            SqlState::RESERVED_NAME
        );
    }
    let missing = run(
        &mut catalog,
        Command::SetPrivileges {
            objects: vec![Securable::Schema("public".into())],
            grantees: vec!["nobody".into()],
            privileges: Privileges::USAGE,
            granted: true,
        },
    )
    .unwrap_err();
    assert_eq!(missing, CatalogError::RoleNotFound("nobody".into()));
}

#[test]
fn revoking_from_public_on_schema_public_removes_its_implicit_usage() {
    let mut catalog = with_public();
    run(&mut catalog, role("alice", RoleOptions::default())).unwrap();
    let alice = catalog.role("alice").unwrap().id;
    let public = Securable::Schema("public".into());
    assert!(catalog.has_privilege(alice, &public, Privileges::USAGE));
    run(
        &mut catalog,
        Command::SetPrivileges {
            objects: vec![public.clone()],
            grantees: vec!["public".into()],
            privileges: Privileges::USAGE,
            granted: false,
        },
    )
    .unwrap();
    assert!(!catalog.has_privilege(alice, &public, Privileges::USAGE));
}

fn buffered_append(table: TableId, offset: u64, rows: u64) -> Command {
    Command::AppendBuffered {
        table,
        file: DataFile {
            chunk: ChunkId(2_000 + u128::from(offset)),
            ..file(rows)
        },
        bytes: bytes::Bytes::from(vec![offset as u8; 4]),
        channel: "w".into(),
        offset,
        skipped: 0,
    }
}

fn range(chunk: u128, first_row: u64, rows: u64) -> RowRange {
    RowRange {
        chunk: ChunkId(chunk),
        size_bytes: 10,
        checksum_crc32c: 1,
        first_row,
        rows,
    }
}

#[test]
fn buffered_rows_are_held_until_moved_whole_and_forgotten_when_they_expire() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let id = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, buffered_append(id, 0, 3)).expect("first");
    run(&mut catalog, buffered_append(id, 3, 2)).expect("second");
    let before = catalog.clone();
    assert!(matches!(
        run(&mut catalog, buffered_append(id, 0, 3)),
        Err(CatalogError::ChannelOffset { next_offset: 5, .. })
    ));
    assert_eq!(catalog, before);
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.buffer.len(), 2);
    assert_eq!(table.current_snapshot().row_count, 5);
    assert_eq!(catalog.channels.get(&(id, "w".to_owned())), Some(&5));

    let merged = DataFile {
        chunk: ChunkId(3_000),
        ..file(5)
    };
    let move_to = |moved: Vec<(ChunkId, Vec<RowRange>)>| Command::MoveBuffered {
        change: TableChange {
            table: id,
            added: vec![merged.clone()],
            removed: vec![ChunkId(2_000), ChunkId(2_003)],
            stripes: vec![],
        },
        moved,
    };
    // Rows not all placed, a file left out, a file not in the buffer: refused.
    for moved in [
        vec![
            (ChunkId(2_000), vec![range(3_000, 0, 2)]),
            (ChunkId(2_003), vec![range(3_000, 3, 2)]),
        ],
        vec![(ChunkId(2_000), vec![range(3_000, 0, 3)])],
        vec![
            (ChunkId(2_000), vec![range(3_000, 0, 3)]),
            (ChunkId(2_003), vec![range(3_000, 3, 2)]),
            (ChunkId(9), vec![]),
        ],
    ] {
        assert!(matches!(
            run(&mut catalog, move_to(moved)),
            Err(CatalogError::BufferMove(_))
        ));
        assert_eq!(catalog, before);
    }
    run(
        &mut catalog,
        move_to(vec![
            (ChunkId(2_000), vec![range(3_000, 0, 3)]),
            (ChunkId(2_003), vec![range(3_000, 3, 2)]),
        ]),
    )
    .expect("move");
    let table = catalog.table("public", "t").expect("t");
    assert!(table.buffer.is_empty());
    assert_eq!(table.moved.len(), 2);
    assert_eq!(table.current_snapshot().row_count, 5);
    let keep_from = table.current_snapshot().id;
    run(
        &mut catalog,
        Command::ExpireSnapshots {
            table: id,
            keep_from,
        },
    )
    .expect("expire");
    let table = catalog.table("public", "t").expect("t");
    assert!(table.moved.is_empty());
    assert_eq!(table.live_files.len(), 1);
}

#[test]
fn a_commit_holds_its_small_files_in_the_buffer_and_replaced_ones_are_spilled_and_cloned() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let id = catalog.table("public", "t").expect("t").id;
    let small = |chunk: u128, rows: u64| DataFile {
        chunk: ChunkId(chunk),
        ..file(rows)
    };
    let commit = |added: Vec<DataFile>, removed: Vec<ChunkId>, buffered: Vec<u128>| {
        Command::CommitBuffered {
            changes: vec![TableChange {
                table: id,
                added,
                removed,
                stripes: vec![],
            }],
            read_set: vec![],
            buffered: buffered
                .into_iter()
                .map(|c| (ChunkId(c), bytes::Bytes::from(vec![c as u8; 3])))
                .collect(),
        }
    };
    // Bytes for a file the commit does not add: refused, nothing changed.
    let before = catalog.clone();
    assert!(matches!(
        run(&mut catalog, commit(vec![small(10, 2)], vec![], vec![11])),
        Err(CatalogError::BufferedFile(ChunkId(11)))
    ));
    assert_eq!(catalog, before);
    // One file buffered, one in a stripe, in one snapshot.
    run(
        &mut catalog,
        commit(vec![small(10, 2), small(20, 5)], vec![], vec![10]),
    )
    .expect("commit");
    let table = catalog.table("public", "t").expect("t").clone();
    assert_eq!(
        table.buffer.keys().copied().collect::<Vec<_>>(),
        [ChunkId(10)]
    );
    assert_eq!(table.current_snapshot().row_count, 7);
    assert_eq!(table.buffered_files().count(), 1);
    // A clone shares the buffered file's bytes.
    let mut clone = create("c");
    if let Command::CreateTable { files, .. } = &mut clone {
        *files = table
            .files_at(table.current_snapshot().id)
            .cloned()
            .collect();
    }
    run(&mut catalog, clone).expect("clone");
    let cloned = catalog.table("public", "c").expect("c");
    assert_eq!(
        cloned.buffer.get(&ChunkId(10)),
        table.buffer.get(&ChunkId(10))
    );
    assert_eq!(cloned.current_snapshot().row_count, 7);
    // A live buffered file is not spilled.
    let spill = Command::SpillBuffered {
        table: id,
        files: vec![ChunkId(10)],
        stripes: vec![],
    };
    let before = catalog.clone();
    assert!(matches!(
        run(&mut catalog, spill.clone()),
        Err(CatalogError::BufferMove(ChunkId(10)))
    ));
    assert_eq!(catalog, before);
    // Rewritten by an UPDATE, it is kept for time travel and may be spilled.
    run(
        &mut catalog,
        commit(vec![small(30, 2)], vec![ChunkId(10)], vec![30]),
    )
    .expect("rewrite");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.buffer.len(), 2);
    assert_eq!(table.buffered_files().count(), 1);
    run(&mut catalog, spill.clone()).expect("spill");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(
        table.buffer.keys().copied().collect::<Vec<_>>(),
        [ChunkId(30)]
    );
    assert!(table.files.iter().any(|e| e.file.chunk == ChunkId(10)));
    // The clone keeps its own bytes; a second spill finds nothing to spill.
    assert!(
        catalog
            .table("public", "c")
            .expect("c")
            .buffer
            .contains_key(&ChunkId(10))
    );
    assert!(matches!(
        run(&mut catalog, spill),
        Err(CatalogError::BufferMove(ChunkId(10)))
    ));
}

/// The id of table `name`'s current snapshot.
fn current(catalog: &Catalog, name: &str) -> SnapshotId {
    catalog
        .table("public", name)
        .expect("the table")
        .current_snapshot()
        .id
}

/// A commit of table `table` deleting `rows` of file `chunk` (adding
/// `added`), having read the table at snapshot `read`.
fn delete_rows(
    table: TableId,
    chunk: u128,
    rows: &[u32],
    added: Vec<DataFile>,
    read: SnapshotId,
) -> Command {
    Command::CommitRows {
        commit: Box::new(append(table, added)),
        deletes: vec![RowDeletes {
            table,
            chunk: ChunkId(chunk),
            rows: encode_rows(&rows.iter().copied().collect()),
        }],
        read_at: vec![(table, read)],
    }
}

#[test]
fn deletes_of_different_rows_of_one_file_both_commit_and_of_one_row_conflict() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(10)])).expect("append");
    let read = current(&catalog, "t");
    // Two transactions read the same snapshot; each updates other rows.
    run(
        &mut catalog,
        delete_rows(t, 10, &[1, 2], vec![file(2)], read),
    )
    .expect("first");
    let after_first = current(&catalog, "t");
    run(&mut catalog, delete_rows(t, 10, &[5], vec![file(1)], read)).expect("second");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.current_snapshot().row_count, 10 - 3 + 2 + 1);
    assert_eq!(table.current_snapshot().operation, Operation::Rewrite);
    let deleted: Vec<u32> = table
        .deleted_rows(ChunkId(10), table.current_snapshot().id)
        .expect("vector")
        .iter()
        .collect();
    assert_eq!(deleted, vec![1, 2, 5]);
    // Time travel: each snapshot reads the vector it had.
    assert_eq!(table.deleted_count(ChunkId(10), read), 0);
    assert_eq!(table.deleted_count(ChunkId(10), after_first), 2);
    // A third deletes row 2 again: the later one loses, and nothing of its
    // commit (its added file) stays.
    let before = catalog.clone();
    let result = run(
        &mut catalog,
        delete_rows(t, 10, &[2, 7], vec![file(3)], read),
    );
    assert_eq!(result, Err(CatalogError::SerializationFailure("t".into())));
    assert_eq!(catalog, before);
    // Rows past the file's end are refused too.
    assert!(run(&mut catalog, delete_rows(t, 10, &[10], vec![], read)).is_err());
}

#[test]
fn a_rewrite_of_a_file_that_lost_rows_after_it_was_read_conflicts() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(10)])).expect("append");
    let read = current(&catalog, "t");
    run(&mut catalog, delete_rows(t, 10, &[4], vec![], read)).expect("delete");
    let rewrite = |read| Command::CommitRows {
        commit: Box::new(Command::Commit {
            changes: vec![TableChange {
                table: t,
                added: vec![file(9)],
                removed: vec![ChunkId(10)],
                stripes: vec![],
            }],
            read_set: vec![],
        }),
        deletes: vec![],
        read_at: vec![(t, read)],
    };
    // Read before the delete: its new file would bring row 4 back.
    assert_eq!(
        run(&mut catalog, rewrite(read)),
        Err(CatalogError::SerializationFailure("t".into()))
    );
    // Read after it (the compactor folding the vector): fine, and the
    // rows removed are those still there.
    let now = current(&catalog, "t");
    run(&mut catalog, rewrite(now)).expect("fold");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.current_snapshot().row_count, 9);
}

#[test]
fn deletion_vectors_expire_with_their_snapshots_and_survive_the_snapshot_file() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, append(t, vec![file(10), file(20)])).expect("append");
    let read = current(&catalog, "t");
    run(&mut catalog, delete_rows(t, 10, &[1], vec![], read)).expect("first");
    run(&mut catalog, delete_rows(t, 10, &[3], vec![], read)).expect("second");
    run(&mut catalog, delete_rows(t, 20, &[0, 19], vec![], read)).expect("third");
    let mut bytes = Vec::new();
    crate::snapshot_file::write(&catalog, &mut bytes).expect("write");
    let read_back = crate::snapshot_file::read(&bytes[..]).expect("read");
    assert_eq!(read_back, catalog);
    let keep_from = current(&catalog, "t");
    run(
        &mut catalog,
        Command::ExpireSnapshots {
            table: t,
            keep_from,
        },
    )
    .expect("expire");
    let table = catalog.table("public", "t").expect("t");
    assert_eq!(table.deletes[&ChunkId(10)].len(), 1);
    assert_eq!(table.deleted_count(ChunkId(10), keep_from), 2);
    assert_eq!(table.deleted_count(ChunkId(20), keep_from), 2);
}

#[test]
fn a_buffer_move_of_a_file_with_deleted_rows_is_refused() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("create");
    let t = catalog.table("public", "t").expect("t").id;
    run(&mut catalog, buffered_append(t, 0, 10)).expect("buffered");
    let chunk = catalog
        .table("public", "t")
        .expect("t")
        .buffered_files()
        .next()
        .expect("one")
        .chunk;
    let read = current(&catalog, "t");
    run(&mut catalog, delete_rows(t, chunk.0, &[0], vec![], read)).expect("delete");
    let moved = Command::MoveBuffered {
        change: TableChange {
            table: t,
            added: vec![file(10)],
            removed: vec![chunk],
            stripes: vec![],
        },
        moved: vec![(chunk, vec![range(10, 0, 10)])],
    };
    assert_eq!(
        run(&mut catalog, moved),
        Err(CatalogError::SerializationFailure("t".into()))
    );
}

fn subscription(name: &str) -> quarry_common::subscription::Subscription {
    quarry_common::subscription::Subscription::new(
        name,
        "quarry",
        "host=127.0.0.1 dbname=shop".into(),
        Some("secret".into()),
        vec!["orders".into()],
    )
}

fn advance(from_lsn: u64, to_lsn: u64) -> Command {
    Command::AdvanceSubscription(quarry_common::subscription::Progress {
        subscription: "sub".into(),
        from_lsn,
        to_lsn,
        rows: 1,
        source_commit_at: 0,
        source_wal_end: 0,
        phase: quarry_common::subscription::SubscriptionPhase::Streaming,
        tables: None,
        refreshed: false,
    })
}

#[test]
fn a_source_transaction_commits_with_its_position_exactly_once() {
    let mut catalog = with_public();
    run(&mut catalog, create("t")).expect("table");
    run(
        &mut catalog,
        Command::CreateSubscription(subscription("sub")),
    )
    .expect("subscription");
    assert_eq!(
        run(
            &mut catalog,
            Command::CreateSubscription(subscription("sub"))
        ),
        Err(CatalogError::SubscriptionExists("sub".into()))
    );
    let table = catalog.table("public", "t").expect("t").id;
    let rows = |catalog: &Catalog| {
        catalog
            .table("public", "t")
            .expect("t")
            .current_snapshot()
            .row_count
    };
    // The rows and the position in one batch.
    let transaction = || Command::Batch(vec![append(table, vec![file(3)]), advance(0, 100)]);
    run(&mut catalog, transaction()).expect("applied");
    assert_eq!(rows(&catalog), 3);
    assert_eq!(catalog.subscriptions["sub"].applied_lsn, 100);
    // The same transaction again adds nothing: its position moved.
    assert_eq!(
        run(&mut catalog, transaction()),
        Err(CatalogError::SubscriptionMoved {
            name: "sub".into(),
            current: 100,
            from: 0
        })
    );
    assert_eq!(rows(&catalog), 3, "the refused batch wrote no rows");
    run(&mut catalog, advance(100, 150)).expect("an empty transaction moves the position alone");
    run(
        &mut catalog,
        Command::SubscriptionFailed {
            name: "sub".into(),
            error: "source gone".into(),
        },
    )
    .expect("failure recorded");
    assert_eq!(
        catalog.subscriptions["sub"].last_error.as_deref(),
        Some("source gone")
    );
    run(
        &mut catalog,
        Command::AlterSubscription {
            name: "sub".into(),
            enabled: Some(false),
            connection: None,
            refresh: None,
        },
    )
    .expect("disabled");
    assert!(!catalog.subscriptions["sub"].enabled);
    assert_eq!(catalog.subscriptions["sub"].refresh, None);
    run(
        &mut catalog,
        Command::AlterSubscription {
            name: "sub".into(),
            enabled: None,
            connection: None,
            refresh: Some(false),
        },
    )
    .expect("refresh asked");
    assert_eq!(catalog.subscriptions["sub"].refresh, Some(false));
    run(
        &mut catalog,
        Command::DropSubscription {
            name: "sub".into(),
            if_exists: false,
        },
    )
    .expect("dropped");
    assert_eq!(
        run(
            &mut catalog,
            Command::DropSubscription {
                name: "sub".into(),
                if_exists: false,
            },
        ),
        Err(CatalogError::SubscriptionNotFound("sub".into()))
    );
}
