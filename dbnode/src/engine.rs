//! The node's data state: the catalog, the hot tier, and one runtime per table (its store,
//! Arrow schema and compiled DEFAULT expressions). DDL goes through here so that the catalog
//! and RocksDB never disagree for longer than a crash; `open` repairs what a crash left.
//!
//! A runtime belongs to one schema version. ALTER TABLE builds a new runtime over the same
//! store and swaps it in; statements that planned with the old one finish with it (the
//! store reads and writes rows in whatever version its caller planned with).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{lit, Expr, ExprSchemable};
use parking_lot::RwLock;

use crate::catalog::{
    Catalog, ColumnDef, KalamType, LocationKind, LocationSpec, NamespaceDef, PendingPurge,
    TableDef, TableKind, TableStorage, DELETED_COLUMN, UPDATED_COLUMN,
};
use crate::cold::ColdStorage;
use crate::config::Config;
use crate::error::{KalamError, Result};
use crate::ids::{ColumnName, NamespaceId, Role, TableId, TableName, UserId, SYSTEM_NAMESPACE};
use crate::jobs::Jobs;
use crate::live::query::ColumnUse;
use crate::live::{LiveHub, LiveSettings};
use crate::sql::ddl::{self, Alteration};
use crate::sql::fast_insert::{fast_default, FastDefault};
use crate::sql::hot_cache::HotCache;
use crate::sql::literals::exact_expr_text;
use crate::storage::table::ChangeSink;
use crate::storage::table::{ColdVersions, Inserted};
use crate::storage::table::{RowValidator, TableStore};
use crate::storage::Partition;
use crate::storage::{Storage, StorageOptions, Value};

/// A table ready for queries: its store, schema and the DEFAULT expressions INSERT uses, all
/// of one schema version.
#[derive(Debug)]
pub struct TableRuntime {
    pub store: Arc<TableStore>,
    /// The definition this runtime was built from (the store may hold a newer one).
    def: Arc<TableDef>,
    pub schema: SchemaRef,
    /// Column name -> DEFAULT, including `_updated`/`_deleted` placeholders the sink replaces.
    pub defaults: HashMap<String, Expr>,
    /// Per user column, its DEFAULT as the literal-INSERT fast path computes it.
    pub fast_defaults: Vec<Option<FastDefault>>,
    /// Where the table's Parquet files go.
    pub location: TableStorage,
}

impl TableRuntime {
    pub fn def(&self) -> &Arc<TableDef> {
        &self.def
    }
}

/// What DROP TABLE leaves behind for the purge of its cold-tier files.
#[derive(Debug)]
pub struct DroppedTable {
    pub def: Arc<TableDef>,
    /// The pending purge record (USER and SHARED tables; STREAM tables have no files).
    pub purge: Option<PendingPurge>,
    /// The dropped table's store: the purge waits for a flush of it that still runs.
    pub store: Option<Arc<TableStore>>,
}

#[derive(Debug)]
pub struct Engine {
    pub catalog: Catalog,
    pub storage: Arc<Storage>,
    pub cold: Arc<ColdStorage>,
    pub jobs: Arc<Jobs>,
    /// Live queries: every commit of a namespace table is published here.
    pub live: Arc<LiveHub>,
    /// `default_location` of the config when it names a row of `system.storage_locations`
    /// (not the built-in `local`): where tables created without `LOCATION` go.
    pub default_location: Option<String>,
    /// Hot partitions kept decoded between scans (docs/adr/0017-hot-partition-cache.md).
    pub hot_cache: Arc<HotCache>,
    tables: RwLock<HashMap<TableId, Arc<TableRuntime>>>,
    users: Arc<TableRuntime>,
}

/// `system.users`: a SHARED table of the node's own, written by admins.
fn users_table_def() -> Result<TableDef> {
    let col =
        |id: u32, name: &str, data_type, nullable, default: Option<&str>| -> Result<ColumnDef> {
            Ok(ColumnDef {
                id,
                name: ColumnName::new(name)?,
                data_type,
                nullable,
                default: default.map(String::from),
                initial_default: None,
            })
        };
    Ok(TableDef {
        namespace: NamespaceId::new(SYSTEM_NAMESPACE)?,
        name: TableName::new("users")?,
        kind: TableKind::Shared,
        uid: "builtin".into(),
        created_at: chrono::DateTime::UNIX_EPOCH,
        schema_version: 1,
        columns: vec![
            col(1, "user_id", KalamType::Text, false, None)?,
            col(2, "username", KalamType::Text, true, None)?,
            col(3, "email", KalamType::Text, true, None)?,
            col(4, "role", KalamType::Text, false, Some("'user'"))?,
            col(5, "created_at", KalamType::Timestamp, false, Some("NOW()"))?,
        ],
        primary_key: ColumnName::new("user_id")?,
        location: LocationSpec::Default,
        flush_policy: Default::default(),
        deleted_retention_secs: None,
        stream: None,
        storage: None,
        last_column_id: 5,
        history: Vec::new(),
    })
}

/// `system.users` rows: a valid user id and a known role.
fn validate_user_row(_: &TableDef, values: &[Value]) -> Result<()> {
    if let Some(Value::Text(id)) = values.first() {
        UserId::new(id.clone()).map_err(|_| {
            KalamError::InvalidValue("user_id must match ^[A-Za-z0-9_.@-]{1,128}$".into())
        })?;
    }
    match values.get(3) {
        Some(Value::Text(r)) if r == Role::User.as_str() || r == Role::Admin.as_str() => Ok(()),
        _ => Err(KalamError::InvalidValue(
            "role must be 'user' or 'admin'".into(),
        )),
    }
}

impl Engine {
    /// Opens the hot tier and the catalog, and repairs any disagreement between them: a
    /// table without a column family gets an empty one (crash after the catalog write), a
    /// column family without a table is dropped (crash during CREATE or DROP).
    pub fn open(config: &Config, planner: &SessionState) -> Result<Self> {
        let runtime = planner.runtime_env().clone();
        let storage = Arc::new(Storage::open(
            &config.data_dir.join("rocksdb"),
            &StorageOptions {
                sync_writes: config.sync_writes,
                write_buffer_bytes: config.rocksdb_write_buffer_bytes,
                max_open_files: config.rocksdb_max_open_files,
            },
        )?);
        let catalog = Catalog::open(config.data_dir.join("catalog"))?;
        let cold = Arc::new(ColdStorage::open(
            &storage,
            config.storage_dir(),
            config.credentials_dir(),
            runtime,
            config.cold_metadata_cache_bytes,
            config.cold_read_in_memory_bytes,
            config.cold_decoded_cache_bytes,
        )?);
        let jobs = Arc::new(Jobs::open(storage.clone(), config.node_id.clone())?);
        let live = LiveHub::new(LiveSettings {
            node_id: config.node_id.clone(),
            retention: config.live_log_retention(),
            max_log_bytes: config.live_log_max_bytes,
            queue_messages: config.ws_max_queued_messages,
            queue_bytes: config.ws_max_queued_bytes,
            max_subscriptions: config.ws_max_subscriptions,
            max_dispatch_bytes: config.live_dispatch_max_bytes,
        })?;
        let users_def = Arc::new(users_table_def()?);
        let users = Arc::new(Self::runtime(
            &storage,
            &cold,
            users_def,
            Some(validate_user_row as RowValidator),
            None,
            planner,
        )?);
        let mut tables = HashMap::new();
        for def in catalog.tables(None) {
            let rt = Self::runtime(
                &storage,
                &cold,
                def.clone(),
                None,
                Some(live.clone()),
                planner,
            )?;
            tables.insert(def.id(), Arc::new(rt));
        }
        let known: std::collections::HashSet<String> = tables
            .values()
            .chain(std::iter::once(&users))
            .map(|rt| rt.store.cf_name().to_string())
            .collect();
        // Only data of a namespace the catalog still has is dropped: that is what a crash
        // inside DROP TABLE leaves. Data of namespaces the catalog does not know (a catalog
        // directory lost or restored from elsewhere) is kept, never deleted on a guess.
        let namespaces: std::collections::HashSet<String> = catalog
            .namespaces()
            .into_iter()
            .map(|(d, _)| d.name.to_string())
            .collect();
        // Tables dropped before their files were all removed: the purge resumes once the node
        // runs (`purge::Purger::resume`), from the manifests kept in `meta`.
        let purging: std::collections::HashSet<String> =
            catalog.pending_purges().into_iter().map(|p| p.cf).collect();
        for cf in &purging {
            cold.forget_table(cf);
        }
        // Column families a RESTORE staged and never committed (a crash in the middle):
        // their data is not a table's, and the backup still holds it.
        let prefix = crate::backup::RESTORE_PENDING_PREFIX.as_bytes();
        let pending: std::collections::BTreeSet<String> = storage
            .meta_scan_prefix(prefix)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect();
        for cf in &pending {
            if !known.contains(cf) {
                tracing::warn!(column_family = %cf, "dropping the data staged by an interrupted RESTORE NAMESPACE");
                storage.drop_cf(cf)?;
                storage.drop_cold_meta(cf)?;
                cold.forget_table(cf);
            }
            storage.meta_delete(&crate::backup::restore_pending_key(cf))?;
        }
        for cf in storage.table_cfs(&config.data_dir.join("rocksdb"))? {
            if known.contains(&cf) || pending.contains(&cf) {
                continue;
            }
            if purging.contains(&cf) {
                tracing::warn!(column_family = %cf, "dropping the data of a dropped table (DROP TABLE interrupted after its commit point)");
                storage.drop_cf(&cf)?;
            } else if of_known_namespace(&cf, &namespaces) {
                tracing::warn!(column_family = %cf, "dropping the data of a table that is not in the catalog (interrupted CREATE or DROP)");
                storage.drop_cf(&cf)?;
                storage.drop_cold_meta(&cf)?;
            } else {
                tracing::warn!(column_family = %cf, "keeping data of a table whose namespace is not in the catalog, or may not be; restore the catalog, or drop it by hand");
            }
        }
        Ok(Self {
            catalog,
            storage,
            cold,
            jobs,
            live,
            default_location: config.default_location().map(str::to_string),
            hot_cache: Arc::new(
                HotCache::new(config.hot_cache_bytes).map_err(KalamError::internal)?,
            ),
            tables: RwLock::new(tables),
            users,
        })
    }

    fn runtime(
        storage: &Arc<Storage>,
        cold: &ColdStorage,
        def: Arc<TableDef>,
        validator: Option<RowValidator>,
        sink: Option<Arc<LiveHub>>,
        planner: &SessionState,
    ) -> Result<TableRuntime> {
        // Tables created before the cold tier existed live in the built-in location.
        let location = match &def.storage {
            Some(s) => s.clone(),
            None => crate::cold::location::local_storage(cold.storage_dir(), &def.id(), def.kind),
        };
        let hub = sink;
        let sink = hub.clone().map(|hub| hub as Arc<dyn ChangeSink>);
        let store = Arc::new(TableStore::open(
            storage.clone(),
            def.clone(),
            validator,
            sink,
        )?);
        if let Some(hub) = hub {
            hub.track(&def, store.last_seq());
        }
        Self::runtime_of(store, def, location, planner)
    }

    /// The runtime of one schema version over an open store (start-up, CREATE, ALTER).
    fn runtime_of(
        store: Arc<TableStore>,
        def: Arc<TableDef>,
        location: TableStorage,
        planner: &SessionState,
    ) -> Result<TableRuntime> {
        let schema = def.arrow_schema();
        let mut defaults = HashMap::new();
        for col in &def.columns {
            if let Some(text) = &col.default {
                defaults.insert(
                    col.name.to_string(),
                    compile_default(planner, text, col.data_type)?,
                );
            }
        }
        if def.kind.has_system_columns() {
            // Placeholders so INSERT plans carry non-NULL system columns; the sink sets the
            // real values at commit.
            defaults.insert(
                UPDATED_COLUMN.to_string(),
                lit(ScalarValue::TimestampMicrosecond(
                    Some(0),
                    Some("UTC".into()),
                )),
            );
            defaults.insert(DELETED_COLUMN.to_string(), lit(false));
        }
        let fast_defaults = def
            .columns
            .iter()
            .map(|c| {
                c.default
                    .as_deref()
                    .and_then(|d| fast_default(d, c.data_type, c.name.as_str()))
            })
            .collect();
        Ok(TableRuntime {
            store,
            def,
            schema,
            defaults,
            fast_defaults,
            location,
        })
    }

    pub fn table(&self, id: &TableId) -> Option<Arc<TableRuntime>> {
        if id.namespace.as_str() == SYSTEM_NAMESPACE {
            return (id.table.as_str() == "users").then(|| self.users.clone());
        }
        self.tables.read().get(id).cloned()
    }

    /// Persists the definition (the commit point), then opens its column family.
    pub fn create_table(
        &self,
        def: TableDef,
        if_not_exists: bool,
        planner: &SessionState,
    ) -> Result<bool> {
        let Some(def) = self.catalog.create_table(def, if_not_exists)? else {
            return Ok(false);
        };
        let rt = Self::runtime(
            &self.storage,
            &self.cold,
            def.clone(),
            None,
            Some(self.live.clone()),
            planner,
        )?;
        self.tables.write().insert(def.id(), Arc::new(rt));
        Ok(true)
    }

    /// Removes the definition (the commit point, preceded by the pending purge record of a
    /// USER or SHARED table), then the column family; the table's Parquet files and segment
    /// manifests are left to the purge job the caller starts (`purge::Purger`). Refused while
    /// live queries use the table: their clients would silently stop hearing anything.
    ///
    /// Past the commit point the table is gone for SQL whatever else fails: a column family
    /// that cannot be dropped now is dropped at the next start.
    pub fn drop_table(&self, id: &TableId) -> Result<DroppedTable> {
        let storage_dir = self.cold.storage_dir().to_path_buf();
        let commit = || {
            self.catalog.drop_table(id, |def| {
                // STREAM tables are never flushed: they have no files.
                if !def.kind.has_system_columns() {
                    return None;
                }
                let storage = def.storage.clone().unwrap_or_else(|| {
                    crate::cold::location::local_storage(&storage_dir, &def.id(), def.kind)
                });
                Some(PendingPurge {
                    namespace: def.namespace.clone(),
                    table: def.name.clone(),
                    kind: def.kind,
                    uid: def.uid.clone(),
                    cf: def.cf_name(),
                    storage,
                    dropped_at: chrono::Utc::now(),
                })
            })
        };
        // Checked and committed under the lock subscriptions register under: none can
        // register between the check and the drop (it would hear nothing, ever).
        let (def, purge) = match self.catalog.table(id) {
            Some(def) => {
                let last_seq = self
                    .tables
                    .read()
                    .get(id)
                    .map_or(0, |rt| rt.store.last_seq());
                self.live.while_table_unused(&def, last_seq, commit)?
            }
            None => commit()?,
        };
        let removed = {
            let mut tables = self.tables.write();
            let same = tables.get(id).is_some_and(|rt| rt.def().uid == def.uid);
            if same {
                tables.remove(id)
            } else {
                None
            }
        };
        crash_point!("drop-after-commit");
        // No flush of the dropped table takes a snapshot or commits a file from here on.
        let store = removed.map(|rt| rt.store.clone());
        if let Some(store) = &store {
            store.mark_dropped();
            self.hot_cache.forget_store(store.id());
        }
        let cf = def.cf_name();
        if let Err(e) = self.storage.drop_cf(&cf) {
            tracing::warn!(table = %id, column_family = %cf, error = %e, "could not drop the column family of a dropped table; it is dropped at the next start");
        }
        if purge.is_none() {
            if let Err(e) = self.storage.drop_cold_meta(&cf) {
                tracing::warn!(table = %id, error = %e, "could not remove the cold-tier metadata of a dropped table");
            }
        }
        self.cold.forget_table(&cf);
        self.live.forget_table(&def);
        Ok(DroppedTable { def, purge, store })
    }

    /// Drops an empty namespace (the catalog's commit point and directory), then its
    /// directory in the built-in `local` location when that holds nothing but empty
    /// directories and files of dropped tables whose purge is still pending.
    pub fn drop_namespace(&self, ns: &NamespaceId, if_exists: bool) -> Result<bool> {
        if !self.catalog.drop_namespace(ns, if_exists)? {
            return Ok(false);
        }
        let root = self.cold.storage_dir().display().to_string();
        let leftovers: Vec<String> = self
            .catalog
            .pending_purges()
            .into_iter()
            .filter(|p| p.storage.kind == LocationKind::Filesystem && p.storage.root == root)
            .map(|p| crate::cold::location::static_prefix(&p.storage.template))
            .filter(|prefix| !prefix.is_empty())
            .collect();
        // Past the commit point: a directory that cannot be removed is only logged.
        match self.cold.remove_namespace_dir(ns.as_str(), &leftovers) {
            Ok(true) => {
                tracing::info!(namespace = %ns, "removed the namespace's directory of the local storage location")
            }
            Ok(false) => {
                if self.cold.storage_dir().join(ns.as_str()).exists() {
                    tracing::warn!(namespace = %ns, "kept the namespace's directory of the local storage location: it holds files of no dropped table");
                }
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "could not remove the namespace's directory of the local storage location")
            }
        }
        Ok(true)
    }

    /// ALTER TABLE (docs/adr/0011-schema-versions.md), all under the table's write lock
    /// ([`TableStore::alter`]): the next schema version is built from the current one and
    /// its runtime compiled; a DROP COLUMN (or a MODIFY COLUMN) is refused while a live query
    /// selects or filters on (filters on) the column; the catalog commits the version
    /// (schema file, then manifest); it becomes current for writers, and its runtime for new
    /// statements. Returns the new definition, or `None` when nothing changed (`IF [NOT]
    /// EXISTS`, a MODIFY to the type the column has).
    pub fn alter_table(
        &self,
        id: &TableId,
        change: &Alteration,
        planner: &SessionState,
    ) -> Result<Option<Arc<TableDef>>> {
        let rt = self
            .table(id)
            .filter(|_| id.namespace.as_str() != SYSTEM_NAMESPACE)
            .ok_or_else(|| KalamError::TableNotFound(id.to_string()))?;
        rt.store.alter(|current, make_current| {
            let Some(next) = ddl::apply_alter(current, change, chrono::Utc::now())? else {
                return Ok(None);
            };
            let next = Arc::new(next);
            let runtime = Arc::new(Self::runtime_of(
                rt.store.clone(),
                next.clone(),
                rt.location.clone(),
                planner,
            )?);
            // Current for writers (and for subscriptions registering) as soon as committed.
            let commit = || -> Result<()> {
                self.catalog.alter_table(next.clone())?;
                make_current(next.clone());
                Ok(())
            };
            let guarded = match change {
                Alteration::DropColumn { name, .. } => Some((name.as_str(), ColumnUse::Any)),
                Alteration::ModifyColumn { name, .. } => Some((name.as_str(), ColumnUse::Filter)),
                Alteration::AddColumn { .. } => None,
            };
            match guarded {
                Some((column, usage)) => self.live.while_column_unused(
                    current,
                    rt.store.last_seq(),
                    column,
                    usage,
                    commit,
                )?,
                None => commit()?,
            }
            // A DROP TABLE racing this ALTER may have removed the table already.
            if let Some(slot) = self.tables.write().get_mut(id) {
                if slot.def().uid == next.uid {
                    *slot = runtime;
                }
            }
            Ok(Some(next))
        })
    }

    /// Makes a staged RESTORE NAMESPACE visible (docs/adr/0015-backup-restore.md). The
    /// tables' column families already hold their hot rows and sequences, and their
    /// cold-tier manifests are written and published. The runtimes are built first (nothing
    /// is visible yet), then the catalog commits the namespace with all its tables
    /// (`namespace.json` last), then the runtimes are registered in one step. The tables'
    /// restore-pending marks go last: a crash before that leaves marks of tables the
    /// catalog holds, which start-up only removes.
    pub fn restore_namespace(
        &self,
        namespace: NamespaceDef,
        tables: Vec<Arc<TableDef>>,
        planner: &SessionState,
    ) -> Result<()> {
        let mut runtimes = Vec::with_capacity(tables.len());
        for def in &tables {
            runtimes.push(Arc::new(Self::runtime(
                &self.storage,
                &self.cold,
                def.clone(),
                None,
                Some(self.live.clone()),
                planner,
            )?));
        }
        self.catalog.restore_namespace(namespace, &tables)?;
        {
            let mut registered = self.tables.write();
            for rt in runtimes {
                registered.insert(rt.def().id(), rt);
            }
        }
        for def in &tables {
            let key = crate::backup::restore_pending_key(&def.cf_name());
            if let Err(e) = self.storage.meta_delete(&key) {
                tracing::warn!(table = %def.id(), error = %e, "could not remove a restore mark; it is removed at the next start");
            }
        }
        Ok(())
    }

    /// Every table runtime (for the flush scheduler).
    pub fn runtimes(&self) -> Vec<Arc<TableRuntime>> {
        self.tables.read().values().cloned().collect()
    }

    /// Inserts rows into a partition, refusing keys that are live in either tier. The cold
    /// lookup runs before the table's lock; a flush committing meanwhile makes it run again.
    pub async fn insert_rows(
        &self,
        rt: &TableRuntime,
        partition: &Partition,
        mut rows: Vec<Vec<Value>>,
    ) -> Result<u64> {
        loop {
            let generation = rt.store.cold_generation();
            let segments = self.cold.segments(rt.store.cf_name(), partition);
            let mut cold = ColdVersions {
                generation,
                ..Default::default()
            };
            if !segments.is_empty() {
                let keys = TableStore::row_keys(rt.def(), &rows)?;
                let (_, store) = self.cold.store(&rt.location)?;
                cold.versions =
                    crate::cold::parquet::lookup_versions(&store, rt.def(), &segments, &keys)
                        .await?;
            }
            let inserted = if rt.store.storage().syncs_writes() && rt.store.is_committing() {
                // Another commit is writing (with its fsync): wait for it off the runtime's
                // workers, queued with the other INSERTs that arrive meanwhile, to share the
                // next write (group commit, ADR 0024). Uncontended, the INSERT commits on
                // this worker without the hand-off to a blocking thread.
                let (store, def, partition) =
                    (rt.store.clone(), rt.def().clone(), partition.clone());
                tokio::task::spawn_blocking(move || store.insert(&def, &partition, rows, cold))
                    .await
                    .map_err(KalamError::internal)??
            } else {
                rt.store.insert(rt.def(), partition, rows, cold)?
            };
            match inserted {
                Inserted::Rows(n) => return Ok(n),
                Inserted::ColdChanged(back) => rows = back,
            }
        }
    }
}

/// Compiles a DEFAULT expression's SQL text for a column type, with the node's functions.
pub fn compile_default(planner: &SessionState, text: &str, t: KalamType) -> Result<Expr> {
    let expr = planner
        .create_logical_expr(&exact_expr_text(text), &DFSchema::empty())
        .map_err(|e| {
            KalamError::InvalidTableDefinition(format!("DEFAULT {text}: {}", KalamError::from(e)))
        })?;
    if expr.any_column_refs() {
        return Err(KalamError::InvalidTableDefinition(format!(
            "DEFAULT {text} may not refer to columns"
        )));
    }
    expr.cast_to(&t.arrow(), &DFSchema::empty()).map_err(|e| {
        KalamError::InvalidTableDefinition(format!("DEFAULT {text}: {}", KalamError::from(e)))
    })
}

/// Whether column family `cf` (`t_{namespace}_{table}_{uid}`) certainly belongs to one of
/// `namespaces`. Names may hold `_`, so `t_app_x_notes_…` is table `x_notes` of `app` or
/// table `notes` of `app_x`: it belongs to a known namespace only when every namespace it
/// could name is known. Data is dropped only on that certainty, never on a guess.
fn of_known_namespace(cf: &str, namespaces: &std::collections::HashSet<String>) -> bool {
    let Some(rest) = cf.strip_prefix(crate::storage::TABLE_CF_PREFIX) else {
        return false;
    };
    // The uid is hex, without `_`.
    let Some((qualified, _uid)) = rest.rsplit_once('_') else {
        return false;
    };
    // Every `_` with a name on both sides could end the namespace.
    let mut candidates = qualified
        .match_indices('_')
        .map(|(at, _)| &qualified[..at])
        .filter(|ns| !ns.is_empty())
        .peekable();
    candidates.peek().is_some() && candidates.all(|ns| namespaces.contains(ns))
}

#[cfg(test)]
mod cf_ownership_tests {
    use super::of_known_namespace;

    fn known(names: &[&str]) -> std::collections::HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_column_family_is_of_a_known_namespace_only_when_no_other_reading_exists() {
        let app = known(&["app"]);
        assert!(of_known_namespace("t_app_notes_18f3a2b4c5d6e7f8", &app));
        // Table `x_notes` of `app`, or table `notes` of an unknown `app_x`: kept.
        assert!(!of_known_namespace("t_app_x_notes_18f3a2b4c5d6e7f8", &app));
        assert!(of_known_namespace(
            "t_app_x_notes_18f3a2b4c5d6e7f8",
            &known(&["app", "app_x"])
        ));
        assert!(!of_known_namespace("t_other_notes_18f3a2b4c5d6e7f8", &app));
        assert!(!of_known_namespace("t_app_18f3a2b4c5d6e7f8", &app));
        assert!(!of_known_namespace("meta", &app));
    }
}
