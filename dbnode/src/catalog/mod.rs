//! The catalog: namespaces and table definitions with their schema versions.
//!
//! Layout under `<data_dir>/catalog`:
//! ```text
//! {namespace}/namespace.json
//! {namespace}/{table}/schema_v{N}.json   one file per schema version (the columns)
//! {namespace}/{table}/manifest.json      the table; names the current schema version
//! storage_locations.json                 the rows of `system.storage_locations`
//! pending_purges.json                    dropped tables whose cold-tier files are not
//!                                        all removed yet (docs/adr/0013-drop-table-purge.md)
//! ```
//! Every file is written to a temporary name, synced and renamed, so a crash leaves either the
//! old or the new file. `namespace.json` and `manifest.json` are the commit points: a
//! directory without one is the leftover of an interrupted create or drop and is removed at
//! start-up. ALTER TABLE writes `schema_v{N+1}.json` first and then the manifest naming
//! N+1: a crash in between leaves a file no manifest names, which the next ALTER overwrites
//! (docs/adr/0011-schema-versions.md). Schema files are never deleted while the table lives:
//! rows and Parquet files of every version are read through them. The in-memory state is
//! the cache every query reads.

mod model;

pub use model::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::{KalamError, Result};
use crate::ids::{NamespaceId, TableId, TableName, SYSTEM_NAMESPACE};

const NAMESPACE_FILE: &str = "namespace.json";
const MANIFEST_FILE: &str = "manifest.json";
const LOCATIONS_FILE: &str = "storage_locations.json";
const PURGES_FILE: &str = "pending_purges.json";

#[derive(Debug, Default)]
struct NamespaceEntry {
    def: Option<NamespaceDef>,
    tables: BTreeMap<TableName, Arc<TableDef>>,
}

/// `manifest.json`: the table without its columns, which live in `schema_v{N}.json`.
#[derive(Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    table: serde_json::Value,
}

/// `schema_v{N}.json`. Files written before ALTER TABLE existed lack `created_at` and
/// `change`: they are version 1, made when the table was.
#[derive(Serialize, Deserialize)]
struct SchemaFile {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    change: Option<String>,
    columns: Vec<ColumnDef>,
}

fn schema_file_name(version: u32) -> String {
    format!("schema_v{version}.json")
}

#[derive(Debug)]
pub struct Catalog {
    root: PathBuf,
    state: RwLock<BTreeMap<NamespaceId, NamespaceEntry>>,
    locations: RwLock<BTreeMap<String, StorageLocationDef>>,
    /// Dropped tables whose files are still to be purged, by column family.
    purges: RwLock<BTreeMap<String, PendingPurge>>,
    /// Serialises DDL: file writes and the cache update happen as one step.
    ddl: Mutex<()>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> KalamError {
    KalamError::CatalogIo(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io_err(path, "no parent directory"))?;
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(path, e))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(KalamError::internal)
}

impl Catalog {
    /// Loads every namespace and table, removing leftovers of interrupted DDL.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        let mut state = BTreeMap::new();
        for ns_dir in subdirs(&root)? {
            if !exists(&ns_dir.join(NAMESPACE_FILE))? {
                tracing::warn!(dir = %ns_dir.display(), "removing catalog directory of an interrupted namespace DDL");
                fs::remove_dir_all(&ns_dir).map_err(|e| io_err(&ns_dir, e))?;
                continue;
            }
            let def: NamespaceDef = read_json(&ns_dir.join(NAMESPACE_FILE))?;
            let mut entry = NamespaceEntry {
                def: Some(def.clone()),
                tables: BTreeMap::new(),
            };
            for table_dir in subdirs(&ns_dir)? {
                match Self::load_table(&table_dir)? {
                    Some(t) => {
                        entry.tables.insert(t.name.clone(), Arc::new(t));
                    }
                    None => {
                        tracing::warn!(dir = %table_dir.display(), "removing catalog directory of an interrupted table DDL");
                        fs::remove_dir_all(&table_dir).map_err(|e| io_err(&table_dir, e))?;
                    }
                }
            }
            state.insert(def.name.clone(), entry);
        }
        let locations_path = root.join(LOCATIONS_FILE);
        let locations: Vec<StorageLocationDef> = if exists(&locations_path)? {
            read_json(&locations_path)?
        } else {
            Vec::new()
        };
        let purges_path = root.join(PURGES_FILE);
        let listed: Vec<PendingPurge> = if exists(&purges_path)? {
            read_json(&purges_path)?
        } else {
            Vec::new()
        };
        // A record of a table that is still here belongs to a DROP that failed or crashed
        // before its commit point: the table lives, its files are not garbage.
        let live: std::collections::HashSet<String> = state
            .values()
            .flat_map(|e| e.tables.values().map(|t| t.cf_name()))
            .collect();
        let mut purges = BTreeMap::new();
        let mut discarded = false;
        for p in listed {
            if live.contains(&p.cf) {
                tracing::warn!(table = %p.table_id(), "the DROP TABLE of a pending purge never committed; the table is kept with its files");
                discarded = true;
            } else {
                purges.insert(p.cf.clone(), p);
            }
        }
        let catalog = Self {
            root,
            state: RwLock::new(state),
            locations: RwLock::new(locations.into_iter().map(|l| (l.name.clone(), l)).collect()),
            purges: RwLock::new(BTreeMap::new()),
            ddl: Mutex::new(()),
        };
        if discarded {
            catalog.write_purges(&purges)?;
        }
        *catalog.purges.write() = purges;
        Ok(catalog)
    }

    fn write_purges(&self, all: &BTreeMap<String, PendingPurge>) -> Result<()> {
        let list: Vec<&PendingPurge> = all.values().collect();
        write_atomic(&self.root.join(PURGES_FILE), &to_json(&list)?)
    }

    /// Dropped tables whose cold-tier files are not all removed yet.
    pub fn pending_purges(&self) -> Vec<PendingPurge> {
        self.purges.read().values().cloned().collect()
    }

    /// The pending purge of a dropped table's column family.
    pub fn pending_purge(&self, cf: &str) -> Option<PendingPurge> {
        self.purges.read().get(cf).cloned()
    }

    /// Forgets a purge whose files are all gone (a missing record is not an error: a purge
    /// that completed and then was run again).
    pub fn finish_purge(&self, cf: &str) -> Result<()> {
        let _ddl = self.ddl.lock();
        let mut next = self.purges.read().clone();
        if next.remove(cf).is_none() {
            return Ok(());
        }
        self.write_purges(&next)?;
        *self.purges.write() = next;
        Ok(())
    }

    /// Storage locations added by admins (the built-in `local` one is not stored).
    pub fn locations(&self) -> Vec<StorageLocationDef> {
        self.locations.read().values().cloned().collect()
    }

    pub fn location(&self, name: &str) -> Option<StorageLocationDef> {
        self.locations.read().get(name).cloned()
    }

    /// Tables whose cold tier uses the named location, as `namespace.table`.
    pub fn location_users(&self, name: &str) -> Vec<String> {
        self.tables(None)
            .iter()
            .filter(|t| t.storage.as_ref().and_then(|s| s.location_name.as_deref()) == Some(name))
            .map(|t| t.id().to_string())
            .collect()
    }

    fn write_locations(&self, all: &BTreeMap<String, StorageLocationDef>) -> Result<()> {
        let list: Vec<&StorageLocationDef> = all.values().collect();
        write_atomic(&self.root.join(LOCATIONS_FILE), &to_json(&list)?)
    }

    /// Adds a location (`replace = false`) or replaces an existing one (`replace = true`).
    pub fn put_location(&self, def: StorageLocationDef, replace: bool) -> Result<()> {
        let _ddl = self.ddl.lock();
        let mut next = self.locations.read().clone();
        match (next.contains_key(&def.name), replace) {
            (true, false) => return Err(KalamError::StorageLocationAlreadyExists(def.name)),
            (false, true) => return Err(KalamError::StorageLocationNotFound(def.name)),
            _ => {}
        }
        next.insert(def.name.clone(), def);
        self.write_locations(&next)?;
        *self.locations.write() = next;
        Ok(())
    }

    /// Removes a location no table uses.
    pub fn delete_location(&self, name: &str) -> Result<()> {
        let _ddl = self.ddl.lock();
        let mut next = self.locations.read().clone();
        if next.remove(name).is_none() {
            return Err(KalamError::StorageLocationNotFound(name.to_string()));
        }
        let tables = self.location_users(name);
        if !tables.is_empty() {
            return Err(KalamError::StorageLocationInUse {
                name: name.to_string(),
                tables,
            });
        }
        self.write_locations(&next)?;
        *self.locations.write() = next;
        Ok(())
    }

    /// A table with every schema version up to the one its manifest names. A missing older
    /// version is an error, not a guess: rows written under it could not be read.
    fn load_table(dir: &Path) -> Result<Option<TableDef>> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !exists(&manifest_path)? {
            return Ok(None);
        }
        let Manifest { table: mut value } = read_json(&manifest_path)?;
        let version = value
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v >= 1)
            .ok_or_else(|| io_err(&manifest_path, "no valid schema_version"))?;
        // Not sized by `version`: a damaged manifest would ask for gigabytes before the
        // first missing file stops the loop.
        let mut files = Vec::new();
        for v in 1..=version {
            let path = dir.join(schema_file_name(v));
            let file: SchemaFile = read_json(&path)?;
            if file.schema_version != v {
                return Err(io_err(&path, "holds another schema version"));
            }
            files.push(file);
        }
        // The columns are set after parsing, not spliced into the JSON value: `serde_json`'s
        // `Value` cannot hold the `i128` of a DECIMAL `initial_default` beyond 64 bits.
        if let Some(obj) = value.as_object_mut() {
            obj.insert("columns".into(), serde_json::Value::Array(Vec::new()));
        }
        let mut def: TableDef =
            serde_json::from_value(value).map_err(|e| io_err(&manifest_path, e))?;
        def.columns = files.last().map(|f| f.columns.clone()).unwrap_or_default();
        if def.column(def.primary_key.as_str()).is_none() {
            return Err(io_err(
                &manifest_path,
                "the primary key names no column of the schema",
            ));
        }
        def.history = files
            .into_iter()
            .map(|f| SchemaVersion {
                version: f.schema_version,
                created_at: f.created_at.unwrap_or(def.created_at),
                change: f.change.unwrap_or_else(|| "CREATE TABLE".into()),
                columns: f.columns,
            })
            .collect();
        Ok(Some(def))
    }

    /// Writes one schema version's file (before the manifest that names it).
    fn write_schema(dir: &Path, version: &SchemaVersion) -> Result<()> {
        let file = SchemaFile {
            schema_version: version.version,
            created_at: Some(version.created_at),
            change: Some(version.change.clone()),
            columns: version.columns.clone(),
        };
        write_atomic(
            &dir.join(schema_file_name(version.version)),
            &to_json(&file)?,
        )
    }

    /// Writes the manifest: the table without its columns (the commit point). The columns
    /// are cleared before the detour through `serde_json::Value`, which cannot hold every
    /// `initial_default` (a DECIMAL beyond 64 bits).
    fn write_manifest(dir: &Path, def: &TableDef) -> Result<()> {
        let mut bare = def.clone();
        bare.columns.clear();
        bare.history.clear();
        let mut manifest = serde_json::to_value(&bare).map_err(KalamError::internal)?;
        if let Some(obj) = manifest.as_object_mut() {
            obj.remove("columns");
        }
        write_atomic(
            &dir.join(MANIFEST_FILE),
            &to_json(&Manifest { table: manifest })?,
        )
    }

    fn ns_dir(&self, ns: &NamespaceId) -> PathBuf {
        self.root.join(ns.as_str())
    }

    fn table_dir(&self, id: &TableId) -> PathBuf {
        self.ns_dir(&id.namespace).join(id.table.as_str())
    }

    fn reserved(ns: &NamespaceId) -> Result<()> {
        if ns.as_str() == SYSTEM_NAMESPACE {
            return Err(KalamError::InvalidIdentifier(format!(
                "namespace '{SYSTEM_NAMESPACE}' is reserved for the node's own tables"
            )));
        }
        Ok(())
    }

    /// Every namespace with its table count.
    pub fn namespaces(&self) -> Vec<(NamespaceDef, usize)> {
        self.state
            .read()
            .values()
            .filter_map(|e| e.def.clone().map(|d| (d, e.tables.len())))
            .collect()
    }

    pub fn namespace(&self, ns: &NamespaceId) -> Option<NamespaceDef> {
        self.state.read().get(ns).and_then(|e| e.def.clone())
    }

    /// Creates a namespace; `Ok(false)` when it exists and `if_not_exists` is set.
    pub fn create_namespace(&self, def: NamespaceDef, if_not_exists: bool) -> Result<bool> {
        Self::reserved(&def.name)?;
        let _ddl = self.ddl.lock();
        if self.state.read().contains_key(&def.name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(KalamError::NamespaceAlreadyExists(def.name.to_string()))
            };
        }
        write_atomic(
            &self.ns_dir(&def.name).join(NAMESPACE_FILE),
            &to_json(&def)?,
        )?;
        self.state.write().insert(
            def.name.clone(),
            NamespaceEntry {
                def: Some(def),
                tables: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    /// Commits a restored namespace with all its tables in one step
    /// (docs/adr/0015-backup-restore.md): every table's schema files and manifest are
    /// written first and `namespace.json` last, so a crash before that last write leaves a
    /// directory without `namespace.json`, which [`Catalog::open`] removes. The namespace
    /// then appears with all its tables, or not at all. Refused when the namespace exists.
    pub fn restore_namespace(&self, def: NamespaceDef, tables: &[Arc<TableDef>]) -> Result<()> {
        Self::reserved(&def.name)?;
        let _ddl = self.ddl.lock();
        if self.state.read().contains_key(&def.name) {
            return Err(KalamError::NamespaceAlreadyExists(def.name.to_string()));
        }
        for t in tables {
            if t.namespace != def.name {
                return Err(KalamError::internal(format!(
                    "restored table {} is not in namespace {}",
                    t.id(),
                    def.name
                )));
            }
            if let Some(name) = t.storage.as_ref().and_then(|s| s.location_name.as_deref()) {
                if name != crate::cold::LOCAL_LOCATION && !self.locations.read().contains_key(name)
                {
                    return Err(KalamError::StorageLocationNotFound(name.to_string()));
                }
            }
            if let Some(storage) = &t.storage {
                self.check_files_apart(storage)?;
                // A restored table names its next files from the backup's sequence on, as
                // the dropped original did after the backup: a purge of those must finish.
                self.check_no_purge_in_the_way(storage)?;
            }
        }
        let dir = self.ns_dir(&def.name);
        if exists(&dir)? {
            // A leftover of a drop or an interrupted restore: not a live namespace.
            fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        let written = (|| -> Result<()> {
            for t in tables {
                let table_dir = self.table_dir(&t.id());
                if t.history.is_empty() {
                    Self::write_schema(&table_dir, &t.initial_version())?;
                }
                for version in &t.history {
                    Self::write_schema(&table_dir, version)?;
                }
                Self::write_manifest(&table_dir, t)?;
            }
            write_atomic(&dir.join(NAMESPACE_FILE), &to_json(&def)?)
        })();
        if let Err(e) = written {
            remove_leftovers(&dir);
            return Err(e);
        }
        let entry = NamespaceEntry {
            def: Some(def.clone()),
            tables: tables.iter().map(|t| (t.name.clone(), t.clone())).collect(),
        };
        self.state.write().insert(def.name, entry);
        Ok(())
    }

    /// Merges `options` into the namespace's options (a JSON `null` removes a key).
    pub fn alter_namespace_options(
        &self,
        ns: &NamespaceId,
        options: serde_json::Map<String, serde_json::Value>,
    ) -> Result<NamespaceDef> {
        let _ddl = self.ddl.lock();
        let mut def = self
            .namespace(ns)
            .ok_or_else(|| KalamError::NamespaceNotFound(ns.to_string()))?;
        for (k, v) in options {
            if v.is_null() {
                def.options.remove(&k);
            } else {
                def.options.insert(k, v);
            }
        }
        write_atomic(&self.ns_dir(ns).join(NAMESPACE_FILE), &to_json(&def)?)?;
        if let Some(e) = self.state.write().get_mut(ns) {
            e.def = Some(def.clone());
        }
        Ok(def)
    }

    /// Drops an empty namespace; `Ok(false)` when missing and `if_exists` is set.
    pub fn drop_namespace(&self, ns: &NamespaceId, if_exists: bool) -> Result<bool> {
        Self::reserved(ns)?;
        let _ddl = self.ddl.lock();
        {
            let state = self.state.read();
            match state.get(ns) {
                None if if_exists => return Ok(false),
                None => return Err(KalamError::NamespaceNotFound(ns.to_string())),
                Some(e) if !e.tables.is_empty() => {
                    return Err(KalamError::NamespaceNotEmpty {
                        namespace: ns.to_string(),
                        tables: e.tables.keys().map(|t| t.to_string()).collect(),
                    })
                }
                Some(_) => {}
            }
        }
        let dir = self.ns_dir(ns);
        let commit = dir.join(NAMESPACE_FILE);
        fs::remove_file(&commit).map_err(|e| io_err(&commit, e))?;
        sync_dir(&dir)?;
        remove_leftovers(&dir);
        self.state.write().remove(ns);
        Ok(true)
    }

    pub fn table(&self, id: &TableId) -> Option<Arc<TableDef>> {
        self.state
            .read()
            .get(&id.namespace)
            .and_then(|e| e.tables.get(&id.table).cloned())
    }

    /// Tables of one namespace, or of all, ordered by namespace then name.
    /// Refuses a table stored at `storage` while a dropped table's files that could have the
    /// same paths are still being removed: the purge deletes by path.
    fn check_no_purge_in_the_way(&self, storage: &TableStorage) -> Result<()> {
        let purges = self.purges.read();
        match purges
            .values()
            .find(|p| crate::cold::location::may_share_files(&p.storage, storage))
        {
            Some(p) => Err(KalamError::LocationUnreachable(format!(
                "the files of the dropped table {} are still being removed from this location; \
                 see its cleanup job in system.jobs and try again once it completed",
                p.table_id()
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a table stored at `storage` when a live table's files could have the same
    /// paths: every table names its files `batch-{from}-{to}.parquet` from its own sequence,
    /// so two tables in one directory (an explicit LOCATION without the table in it, or a
    /// namespace restored under another name) would overwrite and read each other's files.
    fn check_files_apart(&self, storage: &TableStorage) -> Result<()> {
        let state = self.state.read();
        let other = state.values().flat_map(|e| e.tables.values()).find(|t| {
            t.storage
                .as_ref()
                .is_some_and(|s| crate::cold::location::may_share_files(s, storage))
        });
        match other {
            Some(t) => Err(KalamError::InvalidTableDefinition(format!(
                "LOCATION would put this table's files where table {}'s are; give each table a \
                 directory of its own (e.g. with the table's name in the path)",
                t.id()
            ))),
            None => Ok(()),
        }
    }

    pub fn tables(&self, ns: Option<&NamespaceId>) -> Vec<Arc<TableDef>> {
        let state = self.state.read();
        state
            .iter()
            .filter(|(name, _)| ns.is_none_or(|n| n == *name))
            .flat_map(|(_, e)| e.tables.values().cloned())
            .collect()
    }

    /// Persists a new table. Returns `None` when it exists and `if_not_exists` is set.
    pub fn create_table(
        &self,
        def: TableDef,
        if_not_exists: bool,
    ) -> Result<Option<Arc<TableDef>>> {
        Self::reserved(&def.namespace)?;
        let _ddl = self.ddl.lock();
        {
            let state = self.state.read();
            let entry = state
                .get(&def.namespace)
                .ok_or_else(|| KalamError::NamespaceNotFound(def.namespace.to_string()))?;
            if entry.tables.contains_key(&def.name) {
                return if if_not_exists {
                    Ok(None)
                } else {
                    Err(KalamError::TableAlreadyExists(def.id().to_string()))
                };
            }
        }
        // The location was resolved before this lock; it must not have been deleted since.
        if let Some(name) = def
            .storage
            .as_ref()
            .and_then(|s| s.location_name.as_deref())
        {
            if name != crate::cold::LOCAL_LOCATION && !self.locations.read().contains_key(name) {
                return Err(KalamError::StorageLocationNotFound(name.to_string()));
            }
        }
        // A dropped table's files still in the way: the new table's flushes could write the
        // same paths (`batch-{from}-{to}.parquet` restarts at 1), which the purge would then
        // delete. The caller lets pending purges finish first; this catches a race with it.
        if let Some(storage) = &def.storage {
            self.check_no_purge_in_the_way(storage)?;
        }
        if let Some(storage) = &def.storage {
            self.check_files_apart(storage)?;
        }
        let dir = self.table_dir(&def.id());
        if dir.exists() {
            // A leftover of a drop that crashed after its commit point: not a live table.
            fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        let mut def = def;
        if def.history.is_empty() {
            def.history = vec![def.initial_version()];
        }
        for version in &def.history {
            Self::write_schema(&dir, version)?;
        }
        Self::write_manifest(&dir, &def)?;
        let def = Arc::new(def);
        if let Some(e) = self.state.write().get_mut(&def.namespace) {
            e.tables.insert(def.name.clone(), def.clone());
        }
        Ok(Some(def))
    }

    /// Persists the next schema version of a table: `schema_v{N+1}.json`, then the manifest
    /// naming it (the commit point), then the cache. `next` must be the successor of the
    /// table's current definition (same creation, version + 1): a stale ALTER is refused.
    pub fn alter_table(&self, next: Arc<TableDef>) -> Result<()> {
        let _ddl = self.ddl.lock();
        let id = next.id();
        let current = self
            .table(&id)
            .filter(|t| t.uid == next.uid)
            .ok_or_else(|| KalamError::TableNotFound(id.to_string()))?;
        if next.schema_version != current.schema_version + 1 {
            return Err(KalamError::internal(format!(
                "ALTER of {id} to schema version {} from {}",
                next.schema_version, current.schema_version
            )));
        }
        let version = next
            .history
            .iter()
            .find(|v| v.version == next.schema_version)
            .ok_or_else(|| KalamError::internal("ALTER without its schema version"))?;
        let dir = self.table_dir(&id);
        Self::write_schema(&dir, version)?;
        Self::write_manifest(&dir, &next)?;
        if let Some(e) = self.state.write().get_mut(&id.namespace) {
            e.tables.insert(id.table.clone(), next);
        }
        Ok(())
    }

    /// Removes a table's definition (the commit point), then its directory. `purge` says,
    /// from the definition being dropped, which cold-tier files are left to remove (`None`:
    /// none); its record is written to `pending_purges.json` before the commit point, so a
    /// crash right after the commit still knows them. Returns the definition and the record.
    pub fn drop_table(
        &self,
        id: &TableId,
        purge: impl FnOnce(&TableDef) -> Option<PendingPurge>,
    ) -> Result<(Arc<TableDef>, Option<PendingPurge>)> {
        let _ddl = self.ddl.lock();
        let def = self
            .table(id)
            .ok_or_else(|| KalamError::TableNotFound(id.to_string()))?;
        let purge = purge(&def);
        let mut purges = self.purges.read().clone();
        if let Some(p) = &purge {
            purges.insert(p.cf.clone(), p.clone());
            self.write_purges(&purges)?;
        }
        let dir = self.table_dir(id);
        let commit = dir.join(MANIFEST_FILE);
        if let Err(e) = fs::remove_file(&commit) {
            if purge.is_some() {
                // The table stays: take its record back (a record left behind is discarded
                // at the next start, because its table is still there).
                if let Err(e2) = self.write_purges(&self.purges.read()) {
                    tracing::warn!(table = %id, error = %e2, "could not take back the purge record of a failed DROP TABLE");
                }
            }
            return Err(io_err(&commit, e));
        }
        sync_dir(&dir)?;
        remove_leftovers(&dir);
        *self.purges.write() = purges;
        if let Some(e) = self.state.write().get_mut(&id.namespace) {
            e.tables.remove(&id.table);
        }
        Ok((def, purge))
    }
}

/// Whether a commit-point file exists. An error (permissions, I/O) is not "absent": the
/// repair at start-up must never delete a directory it could not look into.
fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|e| io_err(path, e))
}

/// Removes a directory whose commit point is already gone. Past the commit point the DDL has
/// happened; a failure here only leaves files that the next start-up removes.
fn remove_leftovers(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dropped catalog directory; it is removed at the next start");
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if entry.file_type().map_err(|e| io_err(dir, e))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ColumnName;
    use chrono::Utc;

    fn ns(name: &str) -> NamespaceDef {
        NamespaceDef {
            name: NamespaceId::new(name).unwrap(),
            created_at: Utc::now(),
            options: Default::default(),
        }
    }

    /// `app.<name> (id BIGINT PRIMARY KEY)`, a USER table: [`TableDef::for_tests`] without
    /// its `body` column.
    fn table(name: &str) -> TableDef {
        let base = TableDef::for_tests();
        TableDef {
            name: TableName::new(name).unwrap(),
            kind: TableKind::User,
            columns: base.columns[..1].to_vec(),
            last_column_id: 1,
            ..base
        }
    }

    #[test]
    fn survives_reopen_and_enforces_rules() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            assert!(c.create_namespace(ns("app"), false).unwrap());
            assert!(!c.create_namespace(ns("app"), true).unwrap());
            assert!(matches!(
                c.create_namespace(ns("app"), false),
                Err(KalamError::NamespaceAlreadyExists(_))
            ));
            assert!(c.create_namespace(ns("system"), false).is_err());
            c.create_table(table("messages"), false).unwrap();
            let err = c
                .drop_namespace(&NamespaceId::new("app").unwrap(), false)
                .unwrap_err();
            assert!(
                matches!(err, KalamError::NamespaceNotEmpty { ref tables, .. } if tables == &["messages"])
            );
        }
        let c = Catalog::open(dir.path()).unwrap();
        let t = c.table(&table("messages").id()).unwrap();
        assert_eq!(*t, table("messages").clone_with_created(t.created_at));
        c.drop_table(&t.id(), |_| None).unwrap();
        assert!(c
            .drop_namespace(&NamespaceId::new("app").unwrap(), false)
            .unwrap());
        assert!(Catalog::open(dir.path()).unwrap().namespaces().is_empty());
    }

    fn purge_of(def: &TableDef) -> PendingPurge {
        PendingPurge {
            namespace: def.namespace.clone(),
            table: def.name.clone(),
            kind: def.kind,
            uid: def.uid.clone(),
            cf: def.cf_name(),
            storage: TableStorage {
                location_name: Some("local".into()),
                kind: LocationKind::Filesystem,
                root: "/srv/kalamdb/storage".into(),
                template: format!("{}/{}/${{user_id}}", def.namespace, def.name),
                credentials_ref: None,
            },
            dropped_at: Utc::now(),
        }
    }

    #[test]
    fn pending_purges_survive_reopen_and_block_a_colliding_create() {
        let dir = tempfile::tempdir().unwrap();
        let with_storage = |name: &str| {
            let mut t = table(name);
            t.storage = Some(purge_of(&t).storage);
            t
        };
        let c = Catalog::open(dir.path()).unwrap();
        c.create_namespace(ns("app"), false).unwrap();
        let t = c
            .create_table(with_storage("messages"), false)
            .unwrap()
            .unwrap();
        let (_, purge) = c.drop_table(&t.id(), |d| Some(purge_of(d))).unwrap();
        let purge = purge.unwrap();
        assert_eq!(c.pending_purges(), vec![purge.clone()]);
        // The same name in the same place waits for the purge; another name does not.
        assert!(matches!(
            c.create_table(with_storage("messages"), false),
            Err(KalamError::LocationUnreachable(_))
        ));
        c.create_table(with_storage("other"), false).unwrap();

        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.pending_purge(&purge.cf), Some(purge.clone()));
        c.finish_purge(&purge.cf).unwrap();
        c.finish_purge(&purge.cf).unwrap();
        assert!(c.pending_purges().is_empty());
        c.create_table(with_storage("messages"), false).unwrap();
        assert!(Catalog::open(dir.path())
            .unwrap()
            .pending_purges()
            .is_empty());
    }

    #[test]
    fn a_purge_record_of_a_live_table_is_discarded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        c.create_namespace(ns("app"), false).unwrap();
        let t = c.create_table(table("messages"), false).unwrap().unwrap();
        // As if DROP TABLE wrote its record and then died before the commit point.
        let record = vec![purge_of(&t)];
        fs::write(
            dir.path().join(PURGES_FILE),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert!(c.pending_purges().is_empty());
        assert!(c.table(&t.id()).is_some());
        assert!(Catalog::open(dir.path())
            .unwrap()
            .pending_purges()
            .is_empty());
    }

    #[test]
    fn interrupted_ddl_is_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        c.create_namespace(ns("app"), false).unwrap();
        // A table whose schema file was written but whose manifest never was.
        fs::create_dir_all(dir.path().join("app/half")).unwrap();
        fs::write(dir.path().join("app/half/schema_v1.json"), "{}").unwrap();
        // A namespace directory without namespace.json.
        fs::create_dir_all(dir.path().join("ghost")).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.namespaces().len(), 1);
        assert!(c.tables(None).is_empty());
        assert!(!dir.path().join("app/half").exists());
        assert!(!dir.path().join("ghost").exists());
    }

    #[test]
    fn schema_versions_survive_reopen_and_stale_alters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = table("messages").id();
        {
            let c = Catalog::open(dir.path()).unwrap();
            c.create_namespace(ns("app"), false).unwrap();
            let v1 = c.create_table(table("messages"), false).unwrap().unwrap();
            let mut v2 = (*v1).clone();
            v2.schema_version = 2;
            let new_id = v2.next_column_id();
            assert_eq!(new_id, 2);
            v2.columns.push(ColumnDef {
                id: new_id,
                name: ColumnName::new("priority").unwrap(),
                data_type: KalamType::Text,
                nullable: true,
                default: Some("'normal'".into()),
                initial_default: Some(crate::storage::Value::Text("normal".into())),
            });
            v2.last_column_id = 2;
            v2.history.push(SchemaVersion {
                version: 2,
                created_at: Utc::now(),
                change: "ADD COLUMN priority TEXT DEFAULT 'normal'".into(),
                columns: v2.columns.clone(),
            });
            c.alter_table(Arc::new(v2.clone())).unwrap();
            // The same successor again is stale now.
            assert!(c.alter_table(Arc::new(v2)).is_err());
            // A crash between the schema file and the manifest of version 3.
            fs::write(dir.path().join("app/messages/schema_v3.json"), "{}").unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        let t = c.table(&id).unwrap();
        assert_eq!(t.schema_version, 2);
        assert_eq!(t.columns.len(), 2);
        assert_eq!(t.history.len(), 2);
        assert_eq!(t.history[0].change, "CREATE TABLE");
        assert_eq!(t.columns_of(1).map(|c| c.len()), Some(1));
        assert_eq!(
            t.columns_of(2).and_then(|c| c[1].initial_default.clone()),
            Some(crate::storage::Value::Text("normal".into()))
        );
        assert!(t.columns_of(3).is_none());
        assert_eq!(t.next_column_id(), 3);
    }

    impl TableDef {
        fn clone_with_created(mut self, at: chrono::DateTime<Utc>) -> Self {
            self.created_at = at;
            self.history = vec![self.initial_version()];
            self
        }
    }
}
