//! How DataFusion finds tables: one catalog `kalam` whose schemas are the namespaces plus
//! `system`. Providers are built from the engine's table runtimes; which partition a
//! provider touches is decided per request (see `provider`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;

use crate::engine::Engine;
use crate::error::KalamError;
use crate::ids::{NamespaceId, TableId, TableName, SYSTEM_NAMESPACE};
use crate::sql::provider::KalamTableProvider;
use crate::sql::system_tables;

/// The only catalog name; SQL never spells it (tables are `namespace.table`).
pub const CATALOG: &str = "kalam";

#[derive(Debug)]
pub struct KalamCatalogList {
    catalog: Arc<KalamCatalog>,
}

impl KalamCatalogList {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            catalog: Arc::new(KalamCatalog { engine }),
        }
    }
}

impl CatalogProviderList for KalamCatalogList {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec![CATALOG.to_string()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        (name == CATALOG).then(|| self.catalog.clone() as Arc<dyn CatalogProvider>)
    }
}

#[derive(Debug)]
struct KalamCatalog {
    engine: Arc<Engine>,
}

impl CatalogProvider for KalamCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .catalog
            .namespaces()
            .into_iter()
            .map(|(d, _)| d.name.to_string())
            .collect();
        names.push(SYSTEM_NAMESPACE.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM_NAMESPACE {
            return Some(Arc::new(SystemSchema {
                engine: self.engine.clone(),
            }));
        }
        let ns = NamespaceId::new(name).ok()?;
        self.engine.catalog.namespace(&ns)?;
        Some(Arc::new(NamespaceSchema {
            engine: self.engine.clone(),
            ns,
        }))
    }
}

#[derive(Debug)]
struct NamespaceSchema {
    engine: Arc<Engine>,
    ns: NamespaceId,
}

impl NamespaceSchema {
    fn id(&self, name: &str) -> Option<TableId> {
        TableName::new(name)
            .ok()
            .map(|t| TableId::new(self.ns.clone(), t))
    }
}

#[async_trait]
impl SchemaProvider for NamespaceSchema {
    fn table_names(&self) -> Vec<String> {
        self.engine
            .catalog
            .tables(Some(&self.ns))
            .iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .id(name)
            .and_then(|id| self.engine.table(&id))
            .map(|rt| {
                Arc::new(KalamTableProvider::new(self.engine.clone(), rt)) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.id(name)
            .is_some_and(|id| self.engine.table(&id).is_some())
    }
}

#[derive(Debug)]
struct SystemSchema {
    engine: Arc<Engine>,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        system_tables::ALL.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let catalog = &self.engine.catalog;
        let provider = match name {
            system_tables::NAMESPACES => system_tables::namespaces(catalog),
            system_tables::TABLES => system_tables::tables(catalog),
            system_tables::JOBS => {
                let jobs = self.engine.jobs.clone();
                system_tables::jobs(&jobs, None).map(|admin_view| {
                    Arc::new(system_tables::PerRequest::new(admin_view, move |ctx| {
                        let viewer = (!ctx.principal.is_admin()).then_some(&ctx.principal.user_id);
                        system_tables::jobs(&jobs, viewer)
                    })) as Arc<dyn TableProvider>
                })
            }
            system_tables::LIVE_QUERIES => {
                let hub = self.engine.live.clone();
                system_tables::live_queries(&hub, None).map(|admin_view| {
                    Arc::new(system_tables::PerRequest::new(admin_view, move |ctx| {
                        let viewer = (!ctx.principal.is_admin()).then_some(&ctx.principal.user_id);
                        system_tables::live_queries(&hub, viewer)
                    })) as Arc<dyn TableProvider>
                })
            }
            system_tables::STORAGE_LOCATIONS => {
                let engine = self.engine.clone();
                system_tables::storage_locations(catalog, engine.cold.storage_dir()).map(
                    |admin_view| {
                        Arc::new(system_tables::PerRequest::new(admin_view, move |ctx| {
                            if !ctx.principal.is_admin() {
                                return Err(KalamError::Forbidden(
                                    "system.storage_locations is readable by admins only".into(),
                                ));
                            }
                            system_tables::storage_locations(
                                &engine.catalog,
                                engine.cold.storage_dir(),
                            )
                        })) as Arc<dyn TableProvider>
                    },
                )
            }
            system_tables::USERS => {
                let id = TableId::new(
                    NamespaceId::new(SYSTEM_NAMESPACE).map_err(KalamError::into_datafusion)?,
                    TableName::new(system_tables::USERS).map_err(KalamError::into_datafusion)?,
                );
                return Ok(self.engine.table(&id).map(|rt| {
                    Arc::new(KalamTableProvider::new(self.engine.clone(), rt))
                        as Arc<dyn TableProvider>
                }));
            }
            _ => return Ok(None),
        };
        provider.map(Some).map_err(KalamError::into_datafusion)
    }

    fn table_exist(&self, name: &str) -> bool {
        system_tables::ALL.contains(&name)
    }
}
