//! The audit trail: logins (successful and failed, with the client's
//! address), role and privilege changes, and DDL, as events a node writes to
//! its audit log (JSON lines, `node/src/audit.rs`) and superusers read as
//! `quarry_system.audit`.
//!
//! An event names what was done and to what, never a statement's text, so a
//! password given in `CREATE ROLE ... PASSWORD` never reaches the log.

use quarry_common::roles::Securable;
use quarry_raft::Command;
use serde::{Deserialize, Serialize};

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, in microseconds since the Unix epoch (UTC).
    pub at_micros: i64,
    /// `login`, `login_failed`, `ddl`, `role` or `privilege`.
    pub event: String,
    /// The user who did it (who tried to log in).
    pub user: String,
    /// The client's address, for logins.
    pub address: Option<String>,
    /// What happened: the statement kind and its object
    /// (`CREATE TABLE public.t`), or why a login failed.
    pub detail: String,
}

/// Where a node keeps its audit events.
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Records `event`. Never fails the caller: a log that cannot be written
    /// says so in the node's own log.
    fn record(&self, event: AuditEvent);
    /// The most recent events, oldest first (a bounded number).
    fn recent(&self) -> Vec<AuditEvent>;
}

fn object(object: &Securable) -> String {
    match object {
        Securable::Schema(name) => format!("schema {name}"),
        Securable::Table(id) => format!("table id {id}"),
        Securable::View(schema, name) => format!("view {schema}.{name}"),
    }
}

/// The kind (`ddl`, `role`, `privilege`) and description of a catalog
/// command a statement proposed; None for a data commit or the cluster's
/// own housekeeping, which are not audited.
pub fn describe(command: &Command) -> Option<(&'static str, String)> {
    Some(match command {
        Command::CreateSchema { name, .. } => ("ddl", format!("CREATE SCHEMA {name}")),
        Command::DropSchema { name, cascade, .. } => (
            "ddl",
            format!(
                "DROP SCHEMA {name}{}",
                if *cascade { " CASCADE" } else { "" }
            ),
        ),
        Command::CreateTable { schema, name, .. } => {
            ("ddl", format!("CREATE TABLE {schema}.{name}"))
        }
        Command::DropTable { schema, name, .. } => ("ddl", format!("DROP TABLE {schema}.{name}")),
        Command::UndropTable { schema, name } => ("ddl", format!("UNDROP TABLE {schema}.{name}")),
        Command::AlterTable { table, change } => (
            "ddl",
            format!("ALTER TABLE table id {table}: {}", change_name(change)),
        ),
        Command::CreateView { view, .. } => {
            ("ddl", format!("CREATE VIEW {}.{}", view.schema, view.name))
        }
        Command::DropView { schema, name, .. } => ("ddl", format!("DROP VIEW {schema}.{name}")),
        Command::RenameView { schema, name, to } => {
            ("ddl", format!("ALTER VIEW {schema}.{name} RENAME TO {to}"))
        }
        Command::Comment { schema, table, .. } => ("ddl", format!("COMMENT ON {schema}.{table}")),
        Command::AddConstraint { schema, table, .. } => (
            "ddl",
            format!("ALTER TABLE {schema}.{table} ADD CONSTRAINT"),
        ),
        Command::DropConstraint {
            schema,
            table,
            name,
            ..
        } => (
            "ddl",
            format!("ALTER TABLE {schema}.{table} DROP CONSTRAINT {name}"),
        ),
        Command::CreateRole { name, options } => (
            "role",
            format!(
                "CREATE ROLE {name}{}",
                if options.password.is_some() {
                    " (with password)"
                } else {
                    ""
                }
            ),
        ),
        Command::AlterRole { name, options } => (
            "role",
            format!(
                "ALTER ROLE {name}{}",
                if options.password.is_some() {
                    " (password changed)"
                } else {
                    ""
                }
            ),
        ),
        Command::RenameRole { name, to } => ("role", format!("ALTER ROLE {name} RENAME TO {to}")),
        Command::DropRole { name, .. } => ("role", format!("DROP ROLE {name}")),
        Command::SetMembership {
            role,
            member,
            granted,
        } => (
            "role",
            if *granted {
                format!("GRANT {role} TO {member}")
            } else {
                format!("REVOKE {role} FROM {member}")
            },
        ),
        Command::SetPrivileges {
            objects,
            grantees,
            privileges,
            granted,
        } => (
            "privilege",
            format!(
                "{} {} ON {} {} {}",
                if *granted { "GRANT" } else { "REVOKE" },
                privileges.letters(),
                objects.iter().map(object).collect::<Vec<_>>().join(", "),
                if *granted { "TO" } else { "FROM" },
                grantees.join(", ")
            ),
        ),
        Command::SetOwner { object: o, owner } => {
            ("privilege", format!("ALTER {} OWNER TO {owner}", object(o)))
        }
        Command::CreateToken { token } => ("role", format!("CREATE ACCESS TOKEN {}", token.name)),
        Command::DropToken { name, .. } => ("role", format!("DROP ACCESS TOKEN {name}")),
        Command::Owned { command, .. } => return describe(command),
        Command::Batch(commands) => {
            let parts: Vec<(&'static str, String)> = commands.iter().filter_map(describe).collect();
            let kind = parts.first()?.0;
            (
                kind,
                parts
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
        _ => return None,
    })
}

fn change_name(change: &quarry_raft::SchemaChange) -> String {
    use quarry_raft::SchemaChange as C;
    match change {
        C::AddColumn(column) => format!("ADD COLUMN {}", column.name),
        C::DropColumn(name) => format!("DROP COLUMN {name}"),
        C::RenameColumn { from, to } => format!("RENAME COLUMN {from} TO {to}"),
        C::RenameTable(to) => format!("RENAME TO {to}"),
        C::SetType { column, .. } => format!("ALTER COLUMN {column} TYPE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_with_a_password_is_described_without_it() {
        let command = Command::CreateRole {
            name: "alice".into(),
            options: quarry_raft::RoleOptions {
                password: Some(Some(crate::scram::verifier("Secret-1"))),
                ..Default::default()
            },
        };
        let (kind, detail) = describe(&command).expect("audited");
        assert_eq!(kind, "role");
        assert_eq!(detail, "CREATE ROLE alice (with password)");
        let data = Command::Commit {
            changes: vec![],
            read_set: vec![],
        };
        assert_eq!(describe(&data), None);
    }
}
