//! The catalog as DataFusion sees it during one statement.
//!
//! A session pins one [`Catalog`] version per statement ([`CatalogView`]), so every
//! table a statement reads is read at one consistent set of snapshots. System
//! schemas (`pg_catalog`) and the statement's time-travel tables sit beside the
//! user's schemas.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::chunks::DataFileStore;
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableSource};

use crate::privileges::Access;
use quarry_common::catalog::{Catalog, View};

use crate::data_file::WriteSet;
use crate::table::SnapshotTable;

/// Name of the catalog (database) in DataFusion; PostgreSQL clients connect to it.
pub const CATALOG_NAME: &str = "quarry";

/// The catalog version a statement runs against, and where its writes go.
#[derive(Debug, Clone)]
pub struct CatalogView {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The statement's pending data files.
    pub writes: Arc<WriteSet>,
}

/// The session's planner state, for planning the queries of views; None once
/// the session is gone.
pub type StateSource = Arc<dyn Fn() -> Option<SessionState> + Send + Sync>;

/// The table scans of the views a statement reads, already checked for the
/// views' owners when the views were planned: the statement's own checks
/// pass over them (DataFusion inlines a view's plan where it is named).
/// Scans are told apart by the identity of their table source, which each
/// planning of a relation makes anew and a user's SQL cannot share.
pub type CheckedScans = Arc<std::sync::Mutex<Vec<Arc<dyn TableSource>>>>;

/// DataFusion catalog over the session's current [`CatalogView`].
pub struct QuarryCatalog {
    audit: RwLock<Option<Arc<dyn crate::audit::AuditLog>>>,
    jobs: RwLock<Option<Arc<dyn crate::jobs::JobSource>>>,
    checked_scans: CheckedScans,
    /// The privilege checks of the statement being planned.
    access: RwLock<Option<Arc<Access>>>,
    chunks: Arc<dyn DataFileStore>,
    view: RwLock<CatalogView>,
    system: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
    state: RwLock<Option<StateSource>>,
    /// The session's settings (name, value), for pg_settings.
    settings: RwLock<Vec<(String, String)>>,
}

impl std::fmt::Debug for QuarryCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarryCatalog")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl QuarryCatalog {
    /// A catalog provider starting at `view`.
    pub fn new(chunks: Arc<dyn DataFileStore>, view: CatalogView) -> Self {
        QuarryCatalog {
            audit: RwLock::new(None),
            jobs: RwLock::new(None),
            checked_scans: CheckedScans::default(),
            access: RwLock::new(None),
            chunks,
            view: RwLock::new(view),
            system: RwLock::new(HashMap::new()),
            state: RwLock::new(None),
            settings: RwLock::new(Vec::new()),
        }
    }

    /// Records the session's settings (at start and after each SET).
    pub fn set_settings(&self, settings: &std::collections::BTreeMap<String, String>) {
        *self
            .settings
            .write()
            .expect("settings lock is never held across a panic") = settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// The session's settings, by name.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.settings
            .read()
            .expect("settings lock is never held across a panic")
            .clone()
    }

    /// Where the queries of views get planned: the session's planner state.
    pub fn set_state_source(&self, source: StateSource) {
        *self
            .state
            .write()
            .expect("state lock is never held across a panic") = Some(source);
    }

    /// Sets the node's audit log, which `quarry_system.audit` shows.
    pub fn set_audit_log(&self, audit: Option<Arc<dyn crate::audit::AuditLog>>) {
        *self
            .audit
            .write()
            .expect("audit lock is never held across a panic") = audit;
    }

    /// Sets where the cluster's jobs and connections are read from, for
    /// `quarry_system.jobs` and `pg_stat_activity`.
    pub fn set_jobs(&self, jobs: Option<Arc<dyn crate::jobs::JobSource>>) {
        *self
            .jobs
            .write()
            .expect("jobs lock is never held across a panic") = jobs;
    }

    /// Where the cluster's jobs are read from, if the node keeps them.
    pub fn jobs(&self) -> Option<Arc<dyn crate::jobs::JobSource>> {
        self.jobs
            .read()
            .expect("jobs lock is never held across a panic")
            .clone()
    }

    /// Whose jobs the statement being planned may see (None: everyone's).
    pub fn viewer(&self) -> crate::jobs::Viewer {
        self.access().and_then(|access| access.viewer())
    }

    fn audit_log(&self) -> Option<Arc<dyn crate::audit::AuditLog>> {
        self.audit
            .read()
            .expect("audit lock is never held across a panic")
            .clone()
    }

    /// The scans of views checked since the statement began.
    pub fn checked_scans(&self) -> CheckedScans {
        self.checked_scans.clone()
    }

    /// Sets the privilege checks of the statement about to be planned.
    pub fn set_access(&self, access: Option<Arc<Access>>) {
        *self
            .access
            .write()
            .expect("access lock is never held across a panic") = access;
    }

    /// The privilege checks of the statement being planned.
    pub fn access(&self) -> Option<Arc<Access>> {
        self.access
            .read()
            .expect("access lock is never held across a panic")
            .clone()
    }

    /// Pins `view` for the next statement.
    pub fn set_view(&self, view: CatalogView) {
        self.checked_scans
            .lock()
            .expect("checked scans lock is never held across a panic")
            .clear();
        *self
            .view
            .write()
            .expect("view lock is never held across a panic") = view;
    }

    /// The pinned view.
    pub fn view(&self) -> CatalogView {
        self.view
            .read()
            .expect("view lock is never held across a panic")
            .clone()
    }

    fn system(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn SchemaProvider>>> {
        self.system
            .read()
            .expect("system lock is never held across a panic")
    }

    /// Removes every system schema. pg_catalog's provider holds the catalog
    /// list, which holds this catalog: a session clears them when it ends to
    /// break that cycle.
    pub fn clear_system_schemas(&self) {
        self.system
            .write()
            .expect("system lock is never held across a panic")
            .clear();
    }

    /// Removes a system schema (the statement's time-travel schema when done).
    pub fn remove_system_schema(&self, name: &str) {
        self.system
            .write()
            .expect("system lock is never held across a panic")
            .remove(name);
    }
}

impl CatalogProvider for QuarryCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.view().catalog.schemas.keys().cloned().collect();
        names.push(crate::system::SYSTEM_SCHEMA.to_owned());
        names.extend(self.system().keys().cloned());
        names.sort();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(system) = self.system().get(name) {
            return Some(system.clone());
        }
        let view = self.view();
        if name == crate::system::SYSTEM_SCHEMA {
            return Some(Arc::new(
                crate::system::SystemSchema::new(view.catalog, self.chunks.clone())
                    .with_audit(self.audit_log())
                    .with_jobs(self.jobs(), self.viewer()),
            ));
        }
        if !view.catalog.schemas.contains_key(name) {
            return None;
        }
        Some(Arc::new(QuarrySchema {
            checked_scans: self.checked_scans.clone(),
            access: self.access(),
            name: name.to_owned(),
            view,
            chunks: self.chunks.clone(),
            state: self
                .state
                .read()
                .expect("state lock is never held across a panic")
                .clone(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .system
            .write()
            .expect("system lock is never held across a panic")
            .insert(name.to_owned(), schema))
    }
}

/// One user schema in a [`CatalogView`]; tables are read at their current
/// snapshot, views are planned from their query over the same view.
struct QuarrySchema {
    checked_scans: CheckedScans,
    access: Option<Arc<Access>>,
    name: String,
    view: CatalogView,
    chunks: Arc<dyn DataFileStore>,
    state: Option<StateSource>,
}

impl std::fmt::Debug for QuarrySchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarrySchema")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How deep views may name views: a view whose query names itself through
/// others (possible after CREATE OR REPLACE) fails instead of recursing.
const VIEW_DEPTH_MAX: usize = 32;

impl QuarrySchema {
    /// `view`'s query planned over this schema's catalog view, its columns
    /// named as the view says.
    async fn plan_view(&self, view: &View) -> DfResult<Arc<dyn TableProvider>> {
        let state = self
            .state
            .as_ref()
            .and_then(|source| source())
            .ok_or_else(|| {
                DataFusionError::Plan(format!("view \"{}\" cannot be planned here", view.name))
            })?;
        let depth = VIEW_DEPTH.try_with(|d| *d).unwrap_or(0);
        if depth >= VIEW_DEPTH_MAX {
            return Err(DataFusionError::Plan(format!(
                "infinite recursion detected in the rules of view \"{}\"",
                view.name
            )));
        }
        // Reading the view is checked for the role reading it (the
        // session's, or the owner of the view naming this one); what its
        // query reads, for its owner, as PostgreSQL does.
        let external = |e: crate::Error| DataFusionError::External(Box::new(e));
        let owner = match &self.access {
            Some(access) => {
                let reader = VIEW_ROLE.try_with(|r| *r).unwrap_or(access.role());
                Some(
                    access
                        .require_view(reader, &view.schema, &view.name)
                        .map_err(external)?,
                )
            }
            None => None,
        };
        let planning = VIEW_DEPTH.scope(depth + 1, state.create_logical_plan(&view.query));
        let plan = match owner {
            Some(owner) => VIEW_ROLE.scope(owner, planning).await?,
            None => planning.await?,
        };
        if let (Some(access), Some(owner)) = (&self.access, owner) {
            access.check_plan_as(owner, &plan).map_err(external)?;
            let mut checked = self
                .checked_scans
                .lock()
                .expect("checked scans lock is never held across a panic");
            plan.apply_with_subqueries(|node| {
                if let LogicalPlan::TableScan(scan) = node {
                    checked.push(scan.source.clone());
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
        }
        let fields = plan.schema().columns();
        if fields.len() != view.columns.len() {
            return Err(DataFusionError::Plan(format!(
                "view \"{}\" has {} columns but its query now gives {}: a table it reads changed",
                view.name,
                view.columns.len(),
                fields.len()
            )));
        }
        let named = fields
            .into_iter()
            .zip(&view.columns)
            .map(|(column, name)| Expr::Column(column).alias(name));
        let plan = LogicalPlanBuilder::from(plan).project(named)?.build()?;
        Ok(Arc::new(ViewTable::new(plan, Some(view.query.clone()))))
    }
}

tokio::task_local! {
    /// How many views deep the planning of the current statement is.
    static VIEW_DEPTH: usize;
    /// The role a view being planned is read as: the owner of the view
    /// whose query names it (unset at the statement's own level).
    static VIEW_ROLE: Option<quarry_common::roles::RoleId>;
}

#[async_trait]
impl SchemaProvider for QuarrySchema {
    fn table_names(&self) -> Vec<String> {
        let catalog = &self.view.catalog;
        catalog
            .tables_in(&self.name)
            .map(|t| t.name.clone())
            .chain(catalog.views_in(&self.name).map(|v| v.name.clone()))
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(view) = self.view.catalog.view(&self.name, name) {
            return self.plan_view(view).await.map(Some);
        }
        Ok(self.view.catalog.table(&self.name, name).map(|table| {
            if let Some(source) = self.view.catalog.external_source(table.id) {
                return Arc::new(crate::external::ExternalTable::new(
                    table.clone(),
                    source.clone(),
                )) as Arc<dyn TableProvider>;
            }
            let catalog = &self.view.catalog;
            let type_oids: Vec<(String, i32)> = table
                .columns
                .iter()
                .filter_map(|column| {
                    let oid = crate::pg_catalog::column_type_oid(catalog, table, column);
                    (oid != crate::pg_catalog::pg_type(&column.column_type).oid() as i32)
                        .then(|| (column.name.clone(), oid))
                })
                .collect();
            Arc::new(
                SnapshotTable::new(
                    table.clone(),
                    table.current_snapshot().id,
                    self.chunks.clone(),
                    Some(self.view.writes.clone()),
                )
                .with_type_oids(&type_oids),
            ) as Arc<dyn TableProvider>
        }))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::NotImplemented(format!(
            "tables are created with CREATE TABLE, not registered ({name})"
        )))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.view.catalog.relation_exists(&self.name, name)
    }
}
