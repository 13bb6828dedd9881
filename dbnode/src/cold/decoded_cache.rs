//! The node's cache of small cold files, decoded: the rows of a Parquet file that a query
//! read whole (ADR 0031), kept as Arrow batches so that the next read of the same user's
//! history neither reads nor decodes the file again (ADR 0033).
//!
//! Cold files never change once a flush or a cleanup has written them (a cleanup writes its
//! copy under a new name), so an entry never goes stale and needs no version. As in the
//! footer cache, a table dropped and created again can write the same path with other rows:
//! entries are keyed by the table's creation uid, the path, the file's size and its schema
//! version. Least recently used entries go first when the byte budget is full; entries of
//! dropped tables and replaced files are never asked for again and age out the same way.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheKey, CacheValue};
use object_store::ObjectStore;
use prometheus::core::Collector;
use prometheus::{IntCounterVec, Opts};

use super::cache_usage::CacheUsage;
use super::parquet::read_segment;
use super::Segment;
use crate::error::Result;

/// One file of one table incarnation, decoded in the file schema of its version (a caller
/// never reads a file in another, but the key does not rely on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    table: TableReference,
    path: String,
    bytes: u64,
    schema_version: u32,
}

impl CacheKey for FileKey {
    fn size(&self) -> usize {
        self.table.table().len() + self.path.len() + std::mem::size_of::<Self>()
    }

    fn table_ref(&self) -> Option<&TableReference> {
        Some(&self.table)
    }
}

/// Every row of a file, in the file schema of the version it was written under.
#[derive(Debug, Clone)]
pub struct DecodedFile {
    batches: Vec<RecordBatch>,
    /// Arrow memory of `batches`, counted once (the cache asks on every put and eviction).
    bytes: usize,
}

impl CacheValue for DecodedFile {
    fn size(&self) -> usize {
        self.bytes
    }
}

type Shared = DefaultCache<FileKey, DecodedFile>;

/// Decoded rows of the small files of every table, within `limit_bytes`.
pub struct DecodedCache {
    shared: Arc<Shared>,
    lookups: IntCounterVec,
}

impl std::fmt::Debug for DecodedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DecodedCache({} files, {} bytes)",
            self.shared.len(),
            self.shared.memory_used()
        )
    }
}

impl DecodedCache {
    /// A cache of at most `limit_bytes`; 0 turns it off.
    pub fn new(limit_bytes: usize) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "kalamdb_cold_decoded_cache_lookups_total",
                "Small Parquet files a query read whole, by result (hit: decoded rows reused; \
                 miss: read and decoded)",
            ),
            &["result"],
        )?;
        for result in ["hit", "miss"] {
            let _ = lookups.with_label_values(&[result]);
        }
        Ok(Self {
            shared: Arc::new(Shared::new(limit_bytes).with_name("kalamdb_cold_decoded")),
            lookups,
        })
    }

    /// Every row of `segment` of the table created as `table_uid`, in `schema` (the file
    /// schema of the segment's version): the cached batches, or the file read from `store`
    /// and decoded, then kept.
    pub async fn read(
        &self,
        table_uid: &str,
        store: &Arc<dyn ObjectStore>,
        segment: &Segment,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        if self.shared.cache_limit() == 0 {
            return read_segment(store, segment, schema).await;
        }
        let key = FileKey {
            table: TableReference::bare(table_uid),
            path: segment.path.clone(),
            bytes: segment.bytes,
            schema_version: segment.schema_version,
        };
        if let Some(found) = self.shared.get(&key) {
            self.lookups.with_label_values(&["hit"]).inc();
            return Ok(found.batches);
        }
        self.lookups.with_label_values(&["miss"]).inc();
        let batches = read_segment(store, segment, schema).await?;
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        // A file bigger than the whole budget is not kept (the cache refuses it).
        self.shared.put(
            &key,
            DecodedFile {
                batches: batches.clone(),
                bytes,
            },
        );
        Ok(batches)
    }

    /// `kalamdb_cold_decoded_cache_files`, `_bytes` and `_lookups_total`.
    pub fn collectors(&self) -> Result<Vec<Box<dyn Collector>>, prometheus::Error> {
        Ok(vec![
            Box::new(CacheUsage::new(
                self.shared.clone(),
                "kalamdb_cold_decoded_cache",
                "Small Parquet files kept decoded",
                "Memory held by the decoded rows of small Parquet files",
            )?),
            Box::new(self.lookups.clone()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    /// A Parquet file of `ids` (one Int64 column) at `path` of `store`, as its manifest entry.
    async fn write_file(store: &Arc<dyn ObjectStore>, path: &str, ids: &[i64]) -> Segment {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(ids.to_vec()))],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let bytes = buf.len() as u64;
        store
            .put(&Path::from(path), PutPayload::from(buf))
            .await
            .unwrap();
        Segment {
            path: path.to_string(),
            seq_from: 1,
            seq_to: 2,
            rows: ids.len() as u64,
            bytes,
            min_updated: 0,
            max_updated: 0,
            min_key: Vec::new(),
            max_key: Vec::new(),
            schema_version: 1,
            min_deleted_updated: None,
        }
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn lookups(cache: &DecodedCache, result: &str) -> u64 {
        cache.lookups.with_label_values(&[result]).get()
    }

    fn id_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    /// The second read of a file is served decoded, without the store: the file deleted
    /// in between is still read from the cache.
    #[tokio::test]
    async fn a_file_read_again_comes_from_the_cache() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let seg = write_file(&store, "app/t/alice/batch-1-2.parquet", &[1, 2, 3]).await;
        let cache = DecodedCache::new(1 << 20).unwrap();
        let first = cache
            .read("uid-1", &store, &seg, &id_schema())
            .await
            .unwrap();
        assert_eq!(ids(&first), vec![1, 2, 3]);
        store.delete(&Path::from(seg.path.as_str())).await.unwrap();
        let again = cache
            .read("uid-1", &store, &seg, &id_schema())
            .await
            .unwrap();
        assert_eq!(ids(&again), vec![1, 2, 3]);
        assert_eq!((lookups(&cache, "miss"), lookups(&cache, "hit")), (1, 1));
        assert!(cache.shared.memory_used() > 0);
    }

    /// A table dropped and created again writes the same path (and, here, the same size):
    /// the new incarnation must read its own rows, never the old one's.
    #[tokio::test]
    async fn the_same_path_of_two_tables_is_two_entries() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = "app/t/alice/batch-1-2.parquet";
        let old = write_file(&store, path, &[1, 2, 3]).await;
        let cache = DecodedCache::new(1 << 20).unwrap();
        assert_eq!(
            ids(&cache
                .read("uid-old", &store, &old, &id_schema())
                .await
                .unwrap()),
            vec![1, 2, 3]
        );
        let new = write_file(&store, path, &[7, 8, 9]).await;
        assert_eq!(old.bytes, new.bytes);
        assert_eq!(
            ids(&cache
                .read("uid-new", &store, &new, &id_schema())
                .await
                .unwrap()),
            vec![7, 8, 9]
        );
        assert_eq!(lookups(&cache, "miss"), 2);
    }

    /// Within the budget, the least recently read file goes first; with 0 nothing is kept
    /// and every read goes to the store.
    #[tokio::test]
    async fn the_budget_evicts_least_recently_read_and_zero_is_off() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = write_file(&store, "a.parquet", &[1]).await;
        let b = write_file(&store, "b.parquet", &[2]).await;
        let probe = DecodedCache::new(1 << 20).unwrap();
        probe.read("u", &store, &a, &id_schema()).await.unwrap();
        let one = probe.shared.memory_used();
        // Room for one file and a half.
        let cache = DecodedCache::new(one + one / 2).unwrap();
        cache.read("u", &store, &a, &id_schema()).await.unwrap();
        cache.read("u", &store, &b, &id_schema()).await.unwrap();
        assert_eq!(cache.shared.len(), 1);
        cache.read("u", &store, &b, &id_schema()).await.unwrap();
        assert_eq!((lookups(&cache, "miss"), lookups(&cache, "hit")), (2, 1));

        let off = DecodedCache::new(0).unwrap();
        off.read("u", &store, &a, &id_schema()).await.unwrap();
        off.read("u", &store, &a, &id_schema()).await.unwrap();
        assert_eq!(off.shared.len(), 0);
        assert_eq!(lookups(&off, "hit"), 0);
    }
}
