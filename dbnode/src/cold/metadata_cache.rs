//! The node's cache of Parquet footers (and page indexes), shared by every table.
//!
//! Opening a file costs a query two or three reads of the store before any row: the footer
//! length, the footer, the page index. On a filesystem each read is a trip through a blocking
//! thread; on S3 it is a request. Cold files never change once a flush or a cleanup has
//! written them, so their metadata is read once and kept, LRU, within a byte budget.
//!
//! DataFusion's cache is keyed by the object path alone, but two incarnations of a table (a
//! DROP TABLE, then a CREATE TABLE of the same name) or two tables whose path templates
//! overlap can write the same path with other contents. Entries here are keyed by the
//! table's creation uid and the path ([`TableScopedPath`]); a table's scans see the cache
//! through a [`TableMetadataCache`] that adds the uid to every key.

use std::sync::Arc;
use std::time::Duration;

use datafusion::common::{HashMap, TableReference};
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::execution::cache::cache_manager::{CachedFileMetadataEntry, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheEntryInfo, TableScopedPath};
use object_store::path::Path;
use object_store::ObjectStore;
use prometheus::core::Collector;

use super::cache_usage::CacheUsage;

type Shared = DefaultCache<TableScopedPath, CachedFileMetadataEntry>;

/// Parquet metadata of the files of every table, within `limit_bytes`.
pub struct MetadataCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MetadataCache({} files, {} bytes)",
            self.shared.len(),
            self.shared.memory_used()
        )
    }
}

impl MetadataCache {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared::new(limit_bytes).with_name("kalamdb_parquet_metadata")),
        }
    }

    /// The reader factory of a scan of the table created as `table_uid`, reading `store`.
    pub fn reader_factory(
        &self,
        table_uid: &str,
        store: Arc<dyn ObjectStore>,
    ) -> Arc<dyn ParquetFileReaderFactory> {
        let scoped: Arc<FileMetadataCache> = Arc::new(TableMetadataCache {
            table: TableReference::bare(table_uid),
            shared: self.shared.clone(),
        });
        Arc::new(CachedParquetFileReaderFactory::new(store, scoped))
    }

    /// `kalamdb_cold_metadata_cache_files` and `_bytes`, read from the cache when scraped.
    pub fn collectors(&self) -> Result<Vec<Box<dyn Collector>>, prometheus::Error> {
        Ok(vec![Box::new(CacheUsage::new(
            self.shared.clone(),
            "kalamdb_cold_metadata_cache",
            "Parquet files whose footer is cached",
            "Memory held by cached Parquet footers and page indexes",
        )?)])
    }
}

/// The shared cache as one table's scans see it: keyed by path, stored under the table's uid.
struct TableMetadataCache {
    table: TableReference,
    shared: Arc<Shared>,
}

impl TableMetadataCache {
    fn key(&self, path: &Path) -> TableScopedPath {
        TableScopedPath {
            table: Some(self.table.clone()),
            path: path.clone(),
        }
    }
}

impl Cache<Path, CachedFileMetadataEntry> for TableMetadataCache {
    fn get(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        self.shared.get(&self.key(key))
    }

    fn put(&self, key: &Path, value: CachedFileMetadataEntry) -> Option<CachedFileMetadataEntry> {
        self.shared.put(&self.key(key), value)
    }

    fn remove(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        self.shared.remove(&self.key(key))
    }

    fn contains_key(&self, key: &Path) -> bool {
        self.shared.contains_key(&self.key(key))
    }

    fn len(&self) -> usize {
        self.shared.len()
    }

    fn clear(&self) {
        // Only this table's entries: the others are not this view's to drop.
        let _ = self.shared.drop_table_entries(&self.table);
    }

    fn name(&self) -> String {
        self.shared.name()
    }

    fn cache_limit(&self) -> usize {
        self.shared.cache_limit()
    }

    fn update_cache_limit(&self, limit: usize) {
        self.shared.update_cache_limit(limit)
    }

    fn cache_ttl(&self) -> Option<Duration> {
        self.shared.cache_ttl()
    }

    fn update_cache_ttl(&self, ttl: Option<Duration>) {
        self.shared.update_cache_ttl(ttl)
    }

    fn drop_table_entries(&self, table_ref: &TableReference) -> datafusion::error::Result<()> {
        self.shared.drop_table_entries(table_ref)
    }

    fn list_entries(&self) -> HashMap<Path, CacheEntryInfo<CachedFileMetadataEntry>> {
        self.shared
            .list_entries()
            .into_iter()
            .filter(|(key, _)| key.table.as_ref() == Some(&self.table))
            .map(|(key, info)| (key.path, info))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::datasource::physical_plan::parquet::CachedParquetMetaData;
    use datafusion::parquet::file::metadata::{FileMetaData, ParquetMetaData};
    use object_store::ObjectMeta;

    fn entry(rows: i64) -> CachedFileMetadataEntry {
        let schema = datafusion::parquet::schema::types::Type::group_type_builder("schema")
            .build()
            .unwrap();
        let descr = Arc::new(datafusion::parquet::schema::types::SchemaDescriptor::new(
            Arc::new(schema),
        ));
        let file = FileMetaData::new(1, rows, None, None, descr, None);
        let metadata = Arc::new(ParquetMetaData::new(file, vec![]));
        CachedFileMetadataEntry::new(
            ObjectMeta {
                location: Path::from("app/t/batch-1-2.parquet"),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                size: 100,
                e_tag: None,
                version: None,
            },
            Arc::new(CachedParquetMetaData::new(metadata)),
        )
    }

    fn rows(e: &CachedFileMetadataEntry) -> i64 {
        e.file_metadata
            .as_any()
            .downcast_ref::<CachedParquetMetaData>()
            .unwrap()
            .parquet_metadata()
            .file_metadata()
            .num_rows()
    }

    /// A table dropped and created again writes the same paths: its scans must never see
    /// the old incarnation's footers.
    #[test]
    fn the_same_path_of_two_tables_is_two_entries() {
        let cache = MetadataCache::new(1 << 20);
        let view = |uid: &str| TableMetadataCache {
            table: TableReference::bare(uid),
            shared: cache.shared.clone(),
        };
        let (old, new) = (view("uid-old"), view("uid-new"));
        let path = Path::from("app/t/batch-1-2.parquet");
        old.put(&path, entry(7));
        assert!(new.get(&path).is_none());
        new.put(&path, entry(9));
        assert_eq!(rows(&old.get(&path).unwrap()), 7);
        assert_eq!(rows(&new.get(&path).unwrap()), 9);
        assert_eq!(old.list_entries().len(), 1);
        old.clear();
        assert!(old.get(&path).is_none());
        assert_eq!(rows(&new.get(&path).unwrap()), 9);
        assert_eq!(cache.shared.len(), 1);
    }
}
