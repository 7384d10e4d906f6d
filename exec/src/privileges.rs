//! Privilege checks: what a session's role may read, write and define, by
//! PostgreSQL's rules (<https://www.postgresql.org/docs/current/ddl-priv.html>).
//!
//! Reads and writes are checked on the planned statement, so every relation a
//! statement reaches is checked however it is reached: directly, in a
//! subquery, a CTE, a join, `EXPLAIN ANALYZE`, `COPY (query) TO` or a
//! time-travel read. A view is checked for the session's role; the relations
//! its query reads are checked for the view's owner, as PostgreSQL does.
//! Definitions (DDL, roles, grants) are checked on the catalog command before
//! it is proposed.
//!
//! Roles and grants are read from the newest catalog, not the statement's
//! snapshot, so a REVOKE applies to the next statement of every session on
//! every node, inside a transaction block too (PostgreSQL reads its catalogs
//! the same way).

use std::sync::Arc;

use datafusion::catalog::view::ViewTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use quarry_common::SqlState;
use quarry_common::catalog::Catalog;
use quarry_common::roles::{Privileges, RoleId, Securable};
use quarry_raft::Command;

use crate::catalog::CheckedScans;
use crate::error::{Error, Result, user_error};
use crate::table::SnapshotTable;

/// Who a session is: the role it logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    /// The name it logged in with (`session_user`).
    pub name: String,
    /// Its role's id; None for a name with no role, which only a node started
    /// with `--insecure` lets in, and which passes every check (as every
    /// session did before roles existed).
    pub role: Option<RoleId>,
}

impl SessionUser {
    /// A session of `name` with role `role`.
    pub fn new(name: impl Into<String>, role: Option<RoleId>) -> Self {
        SessionUser {
            name: name.into(),
            role,
        }
    }
}

/// The catalogs a check reads: the newest (roles, owners and grants) and the
/// statement's own (objects its transaction block created that nobody else
/// sees yet).
pub struct Access {
    latest: Arc<Catalog>,
    pinned: Arc<Catalog>,
    role: Option<RoleId>,
    default_schema: String,
    checked: CheckedScans,
}

fn denied(message: String) -> Error {
    user_error(SqlState::INSUFFICIENT_PRIVILEGE, message)
}

/// How PostgreSQL's messages name an object's kind and name.
fn describe(catalog: &Catalog, object: &Securable) -> (&'static str, String) {
    match object {
        Securable::Schema(name) => ("schema", name.clone()),
        Securable::Table(id) => (
            "table",
            catalog
                .table_by_id(*id)
                .map(|t| t.name.clone())
                .or_else(|| {
                    catalog
                        .dropped
                        .iter()
                        .find(|d| d.table.id == *id)
                        .map(|d| d.table.name.clone())
                })
                .unwrap_or_else(|| id.to_string()),
        ),
        Securable::View(_, name) => ("view", name.clone()),
    }
}

fn known(catalog: &Catalog, object: &Securable) -> bool {
    match object {
        Securable::Schema(name) => catalog.schemas.contains_key(name),
        Securable::Table(id) => {
            catalog.table_by_id(*id).is_some() || catalog.dropped.iter().any(|d| d.table.id == *id)
        }
        Securable::View(schema, name) => catalog.view(schema, name).is_some(),
    }
}

impl Access {
    /// Whose jobs and statements this role may see ([`crate::jobs::viewer`]).
    pub fn viewer(&self) -> crate::jobs::Viewer {
        crate::jobs::viewer(
            &self.latest,
            self.role,
            quarry_common::roles::READ_ALL_STATS,
        )
    }

    /// Checks for `role` against `latest`, falling back to `pinned` for
    /// objects only it has; unqualified names resolve in `default_schema`.
    pub fn new(
        latest: Arc<Catalog>,
        pinned: Arc<Catalog>,
        role: Option<RoleId>,
        default_schema: String,
    ) -> Self {
        Access {
            latest,
            pinned,
            role,
            default_schema,
            checked: CheckedScans::default(),
        }
    }

    /// The same checks, passing over the scans in `checked` (those of views,
    /// checked for their owners when planned).
    pub fn with_checked_scans(mut self, checked: CheckedScans) -> Self {
        self.checked = checked;
        self
    }

    /// The session's role.
    pub fn role(&self) -> Option<RoleId> {
        self.role
    }

    /// Checks that `role` may read view `schema.name`; its owner, whose
    /// privileges its query reads with.
    ///
    /// # Errors
    /// 42501 `permission denied for view v`.
    pub fn require_view(
        &self,
        role: Option<RoleId>,
        schema: &str,
        name: &str,
    ) -> Result<Option<RoleId>> {
        let object = Securable::View(schema.to_owned(), name.to_owned());
        self.require_as(
            role,
            &Securable::Schema(schema.to_owned()),
            Privileges::USAGE,
        )?;
        self.require_as(role, &object, Privileges::SELECT)?;
        Ok(self.catalog_for(&object).owner_of(&object))
    }

    fn is_checked(&self, scan: &datafusion::logical_expr::TableScan) -> bool {
        self.checked
            .lock()
            .expect("checked scans lock is never held across a panic")
            .iter()
            .any(|s| Arc::ptr_eq(s, &scan.source))
    }

    /// The catalog that knows `object`.
    fn catalog_for(&self, object: &Securable) -> &Catalog {
        if known(&self.latest, object) {
            &self.latest
        } else {
            &self.pinned
        }
    }

    /// Whether `role` holds `wanted` on `object`.
    fn holds(&self, role: Option<RoleId>, object: &Securable, wanted: Privileges) -> bool {
        let Some(role) = role else {
            return true;
        };
        self.catalog_for(object).has_privilege(role, object, wanted)
    }

    /// 42501 unless the session's role holds `wanted` on `object`.
    ///
    /// # Errors
    /// 42501 `permission denied for table t`.
    pub fn require(&self, object: &Securable, wanted: Privileges) -> Result<()> {
        self.require_as(self.role, object, wanted)
    }

    fn require_as(
        &self,
        role: Option<RoleId>,
        object: &Securable,
        wanted: Privileges,
    ) -> Result<()> {
        if self.holds(role, object, wanted) {
            return Ok(());
        }
        let (kind, name) = describe(self.catalog_for(object), object);
        Err(denied(format!("permission denied for {kind} {name}")))
    }

    /// 42501 unless the session's role may act as `object`'s owner.
    ///
    /// # Errors
    /// 42501 `must be owner of table t`.
    pub fn require_owner(&self, object: &Securable) -> Result<()> {
        let Some(role) = self.role else {
            return Ok(());
        };
        let catalog = self.catalog_for(object);
        if catalog.owns(role, object) {
            return Ok(());
        }
        let (kind, name) = describe(catalog, object);
        Err(denied(format!("must be owner of {kind} {name}")))
    }

    /// Whether the session's role is a superuser (or has no role).
    pub fn is_superuser(&self) -> bool {
        self.role.is_none_or(|r| self.latest.is_superuser(r))
    }

    /// Whether the session's role has CREATEROLE (or is a superuser).
    fn may_create_roles(&self) -> bool {
        self.is_superuser()
            || self
                .role
                .and_then(|r| self.latest.role_by_id(r))
                .is_some_and(|r| r.create_role)
    }

    fn table_object(&self, catalog: &Catalog, schema: &str, name: &str) -> Option<Securable> {
        if let Some(table) = catalog.table(schema, name) {
            return Some(Securable::Table(table.id));
        }
        catalog
            .view(schema, name)
            .map(|_| Securable::View(schema.to_owned(), name.to_owned()))
    }

    /// Checks every relation `plan` reads (and the table a DML node writes)
    /// for the session's role.
    ///
    /// # Errors
    /// 42501 naming the first relation the role may not use.
    pub fn check_plan(&self, plan: &LogicalPlan) -> Result<()> {
        self.check_plan_at(self.role, plan, 0)
    }

    /// Checks `plan` for `role` (a view's query, for its owner).
    ///
    /// # Errors
    /// As [`Self::check_plan`].
    pub fn check_plan_as(&self, role: Option<RoleId>, plan: &LogicalPlan) -> Result<()> {
        self.check_plan_at(role, plan, 0)
    }

    fn check_plan_at(&self, role: Option<RoleId>, plan: &LogicalPlan, depth: usize) -> Result<()> {
        if role.is_none() {
            return Ok(());
        }
        if depth > 64 {
            return Err(Error::Internal("views nest more than 64 deep".to_owned()));
        }
        let mut failure = None;
        // Scans of the target of an UPDATE or DELETE without a WHERE need no
        // SELECT (PostgreSQL asks SELECT only of columns a condition reads).
        let mut exempt: Option<String> = None;
        plan.apply_with_subqueries(|node| {
            let result = match node {
                LogicalPlan::Dml(dml) => {
                    let wanted = match dml.op {
                        WriteOp::Insert(_) | WriteOp::Ctas => Privileges::INSERT,
                        WriteOp::Update => Privileges::UPDATE,
                        WriteOp::Delete => Privileges::DELETE,
                        WriteOp::Truncate => Privileges::TRUNCATE,
                        // MERGE is Quarry's own plan (checked where it is
                        // made); anything newer needs every privilege.
                        _ => Privileges::ALL_TABLE,
                    };
                    if matches!(dml.op, WriteOp::Update | WriteOp::Delete)
                        && !has_filter(&dml.input)
                    {
                        exempt = Some(dml.table_name.to_string());
                    }
                    self.check_relation(role, &dml.table_name, wanted)
                }
                LogicalPlan::TableScan(scan) => {
                    if self.is_checked(scan)
                        || exempt.as_deref() == Some(scan.table_name.to_string().as_str())
                    {
                        Ok(())
                    } else {
                        self.check_scan(role, scan, depth)
                    }
                }
                _ => Ok(()),
            };
            match result {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(e) => {
                    failure = Some(e);
                    Ok(TreeNodeRecursion::Stop)
                }
            }
        })
        .map_err(Error::from_engine)?;
        failure.map_or(Ok(()), Err)
    }

    fn resolve(&self, reference: &datafusion::common::TableReference) -> (String, String) {
        let schema = reference
            .schema()
            .unwrap_or(self.default_schema.as_str())
            .to_owned();
        (schema, reference.table().to_owned())
    }

    fn check_relation(
        &self,
        role: Option<RoleId>,
        reference: &datafusion::common::TableReference,
        wanted: Privileges,
    ) -> Result<()> {
        let (schema, name) = self.resolve(reference);
        let Some(object) = self
            .table_object(&self.latest, &schema, &name)
            .or_else(|| self.table_object(&self.pinned, &schema, &name))
        else {
            // Not a table or view of Quarry's (pg_catalog and the like).
            return self.check_system(role, &schema, &name);
        };
        self.require_as(role, &Securable::Schema(schema), Privileges::USAGE)?;
        self.require_as(role, &object, wanted)
    }

    /// System relations: pg_catalog and information_schema are everyone's;
    /// quarry_system is for superusers (it shows every session's
    /// statements), but for `quarry_system.jobs`, where a role sees its own
    /// jobs (BigQuery's `INFORMATION_SCHEMA.JOBS_BY_USER`).
    fn check_system(&self, role: Option<RoleId>, schema: &str, name: &str) -> Result<()> {
        let Some(role) = role else {
            return Ok(());
        };
        if schema == crate::system::SYSTEM_SCHEMA
            && name != crate::system::JOBS
            && !self.latest.is_superuser(role)
        {
            return Err(denied(format!("permission denied for schema {schema}")));
        }
        Ok(())
    }

    fn check_scan(
        &self,
        role: Option<RoleId>,
        scan: &datafusion::logical_expr::TableScan,
        depth: usize,
    ) -> Result<()> {
        let provider = source_as_provider(&scan.source).map_err(Error::from_engine)?;
        // A table of Quarry's or an external table; time-travel reads have
        // their own schema name: check by id.
        let table = provider
            .downcast_ref::<SnapshotTable>()
            .map(SnapshotTable::table)
            .or_else(|| {
                provider
                    .downcast_ref::<crate::external::ExternalTable>()
                    .map(crate::external::ExternalTable::table)
            });
        if let Some(table) = table {
            self.require_as(
                role,
                &Securable::Schema(table.schema.clone()),
                Privileges::USAGE,
            )?;
            return self.require_as(role, &Securable::Table(table.id), Privileges::SELECT);
        }
        if let Some(view) = provider.downcast_ref::<ViewTable>() {
            // A scan DataFusion did not inline (one with filters).
            let (schema, name) = self.resolve(&scan.table_name);
            let owner = self.require_view(role, &schema, &name)?;
            return self.check_plan_at(owner, view.logical_plan(), depth + 1);
        }
        let (schema, name) = self.resolve(&scan.table_name);
        self.check_system(role, &schema, &name)
    }

    /// Checks a definition before it is proposed and returns it as it should
    /// be proposed: what it creates owned by the session's role.
    ///
    /// # Errors
    /// 42501 in PostgreSQL's wording.
    pub fn authorize(&self, command: Command) -> Result<Command> {
        self.check_command(&command)?;
        Ok(match self.role {
            Some(owner) => owned(command, owner),
            None => command,
        })
    }

    fn check_command(&self, command: &Command) -> Result<()> {
        let table = |schema: &str, name: &str| -> Result<Securable> {
            self.table_object(&self.pinned, schema, name)
                .or_else(|| self.table_object(&self.latest, schema, name))
                .ok_or_else(|| {
                    user_error(
                        SqlState::UNDEFINED_TABLE,
                        format!("relation \"{name}\" does not exist"),
                    )
                })
        };
        // Ownership checks of tables that exist; a missing one is left to
        // the command's own error.
        let owner_of_table = |schema: &str, name: &str| match table(schema, name) {
            Ok(object) => self.require_owner(&object),
            Err(_) => Ok(()),
        };
        match command {
            Command::CreateSchema { .. } => {
                if !self.is_superuser() {
                    return Err(denied(
                        "permission denied for database quarry (only superusers create schemas)"
                            .to_owned(),
                    ));
                }
                Ok(())
            }
            Command::DropSchema { name, .. } => {
                let object = Securable::Schema(name.clone());
                if known(&self.pinned, &object) {
                    self.require_owner(&object)?;
                }
                Ok(())
            }
            Command::CreateTable { schema, .. } => {
                self.require(&Securable::Schema(schema.clone()), Privileges::CREATE)
            }
            Command::CreateView { view, or_replace } => {
                let object = Securable::View(view.schema.clone(), view.name.clone());
                if *or_replace && known(&self.pinned, &object) {
                    self.require_owner(&object)?;
                }
                self.require(&Securable::Schema(view.schema.clone()), Privileges::CREATE)
            }
            Command::DropTable { schema, name, .. }
            | Command::Comment {
                schema,
                table: name,
                ..
            }
            | Command::AddConstraint {
                schema,
                table: name,
                ..
            }
            | Command::DropConstraint {
                schema,
                table: name,
                ..
            } => owner_of_table(schema, name),
            Command::DropView { schema, name, .. } | Command::RenameView { schema, name, .. } => {
                let object = Securable::View(schema.clone(), name.clone());
                if known(&self.pinned, &object) {
                    self.require_owner(&object)?;
                }
                Ok(())
            }
            Command::AlterTable { table, .. } => self.require_owner(&Securable::Table(*table)),
            Command::UndropTable { schema, name } => {
                // The table to restore is the newest dropped one of that name.
                let dropped = self
                    .pinned
                    .dropped
                    .iter()
                    .rev()
                    .find(|d| d.table.schema == *schema && d.table.name == *name);
                match dropped {
                    Some(d) => self.require_owner(&Securable::Table(d.table.id)),
                    None => Ok(()),
                }
            }
            Command::Batch(commands) => commands.iter().try_for_each(|c| self.check_command(c)),
            Command::CreateRole { options, .. } => {
                if !self.may_create_roles() {
                    return Err(denied("permission denied to create role".to_owned()));
                }
                if options.superuser == Some(true) && !self.is_superuser() {
                    return Err(denied(
                        "permission denied to create role: only superusers create superusers"
                            .to_owned(),
                    ));
                }
                Ok(())
            }
            Command::AlterRole { name, options } => {
                let target = self.latest.role(name);
                let own = target.is_some_and(|t| Some(t.id) == self.role);
                // A role may change its own password; anything else needs
                // CREATEROLE, and superusers alone touch superusers.
                let only_password = *options
                    == quarry_raft::RoleOptions {
                        password: options.password.clone(),
                        ..Default::default()
                    };
                if own && only_password {
                    return Ok(());
                }
                let touches_superuser =
                    target.is_some_and(|t| t.superuser) || options.superuser.is_some();
                if touches_superuser && !self.is_superuser() || !self.may_create_roles() {
                    return Err(denied("permission denied to alter role".to_owned()));
                }
                Ok(())
            }
            Command::RenameRole { name, .. } | Command::DropRole { name, .. } => {
                let target = self.latest.role(name);
                if target.is_some_and(|t| Some(t.id) == self.role) {
                    return Err(user_error(
                        SqlState::OBJECT_IN_USE,
                        "current user cannot be dropped or renamed",
                    ));
                }
                let superuser_target = target.is_some_and(|t| t.superuser);
                if superuser_target && !self.is_superuser() || !self.may_create_roles() {
                    return Err(denied(format!(
                        "permission denied to {} role",
                        if matches!(command, Command::DropRole { .. }) {
                            "drop"
                        } else {
                            "rename"
                        }
                    )));
                }
                Ok(())
            }
            Command::SetMembership { role, .. } => {
                let superuser_target = self.latest.role(role).is_some_and(|t| t.superuser);
                if superuser_target && !self.is_superuser() || !self.may_create_roles() {
                    return Err(denied(format!(
                        "permission denied to grant role \"{role}\""
                    )));
                }
                Ok(())
            }
            Command::SetPrivileges { objects, .. } => {
                objects.iter().try_for_each(|o| self.require_owner(o))
            }
            Command::SetOwner { object, owner } => {
                self.require_owner(object)?;
                // PostgreSQL: the new owner must be a role the changer is a
                // member of (superusers may give to anyone).
                let member = match (self.role, self.latest.role(owner)) {
                    (Some(me), Some(new)) => self.latest.member_closure(me).contains(&new.id),
                    _ => true,
                };
                if !member && !self.is_superuser() {
                    return Err(denied(format!("must be able to SET ROLE \"{owner}\"")));
                }
                Ok(())
            }
            Command::Owned { command, .. } => self.check_command(command),
            // An external table reads files of the node's file system:
            // superusers only, as PostgreSQL's server-side COPY.
            Command::SetExternalSource { .. } if !self.is_superuser() => Err(denied(
                "must be superuser to create an external table over files on the server".to_owned(),
            )),
            // Data commits are checked on their plans; the rest is the
            // cluster's own housekeeping.
            _ => Ok(()),
        }
    }
}

/// `command` with every CREATE of a schema, table or view in it owned by
/// `owner`.
fn owned(command: Command, owner: RoleId) -> Command {
    match command {
        Command::CreateSchema { .. } | Command::CreateTable { .. } | Command::CreateView { .. } => {
            Command::Owned {
                owner,
                command: Box::new(command),
            }
        }
        Command::Batch(commands) => {
            Command::Batch(commands.into_iter().map(|c| owned(c, owner)).collect())
        }
        other => other,
    }
}

/// Whether `plan` filters rows (an UPDATE's or DELETE's WHERE).
fn has_filter(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Filter(_)) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
