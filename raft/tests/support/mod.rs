//! What the metadata tests share.

use quarry_common::catalog::ColumnType;
use quarry_raft::{ColumnDef, Command};

/// CREATE TABLE public.`name` (id BIGINT NOT NULL).
pub fn create_table(name: &str) -> Command {
    Command::CreateTable {
        schema: "public".into(),
        name: name.into(),
        columns: vec![ColumnDef {
            name: "id".into(),
            column_type: ColumnType::Int64,
            nullable: false,
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
