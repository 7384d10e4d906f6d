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
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use quarry_common::catalog::Catalog;

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

/// DataFusion catalog over the session's current [`CatalogView`].
#[derive(Debug)]
pub struct QuarryCatalog {
    chunks: Arc<dyn DataFileStore>,
    view: RwLock<CatalogView>,
    system: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl QuarryCatalog {
    /// A catalog provider starting at `view`.
    pub fn new(chunks: Arc<dyn DataFileStore>, view: CatalogView) -> Self {
        QuarryCatalog {
            chunks,
            view: RwLock::new(view),
            system: RwLock::new(HashMap::new()),
        }
    }

    /// Pins `view` for the next statement.
    pub fn set_view(&self, view: CatalogView) {
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
            return Some(Arc::new(crate::system::SystemSchema::new(
                view.catalog,
                self.chunks.clone(),
            )));
        }
        if !view.catalog.schemas.contains_key(name) {
            return None;
        }
        Some(Arc::new(QuarrySchema {
            name: name.to_owned(),
            view,
            chunks: self.chunks.clone(),
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

/// One user schema in a [`CatalogView`]; tables are read at their current snapshot.
#[derive(Debug)]
struct QuarrySchema {
    name: String,
    view: CatalogView,
    chunks: Arc<dyn DataFileStore>,
}

#[async_trait]
impl SchemaProvider for QuarrySchema {
    fn table_names(&self) -> Vec<String> {
        self.view
            .catalog
            .tables_in(&self.name)
            .map(|t| t.name.clone())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.view.catalog.table(&self.name, name).map(|table| {
            Arc::new(SnapshotTable::new(
                table.clone(),
                table.current_snapshot().id,
                self.chunks.clone(),
                Some(self.view.writes.clone()),
            )) as Arc<dyn TableProvider>
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
        self.view.catalog.table(&self.name, name).is_some()
    }
}
