//! The hot tier: RocksDB, one column family per table, plus a `meta` column family with each
//! table's last commit sequence (written in the same `WriteBatch` as the rows it numbers).
//!
//! Keys: USER `{user_id}:{row_key}`, SHARED `{row_key}`, STREAM `{timestamp_micros}:{row_key}`.
//! Values: [`codec::StoredRow`]. The WAL is always on; `sync_writes` adds an fsync per write.

pub mod codec;
pub mod table;

use std::path::Path;
use std::sync::Arc;

use prometheus::IntCounter;
use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, IteratorMode, MultiThreaded, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions,
};

use crate::error::{KalamError, Result};
pub use codec::{Partition, RowKey, StoredRow, StoredRowRef, Value, ValueRef};

const META_CF: &str = "meta";
const SEQ_PREFIX: &str = "seq/";
/// Column families of tables start with this; everything else is the node's own.
pub const TABLE_CF_PREFIX: &str = "t_";

type Db = DBWithThreadMode<MultiThreaded>;

/// One raw key and value of a column family, as RocksDB returns them.
pub type RawRow = (Box<[u8]>, Box<[u8]>);

pub struct Storage {
    db: Db,
    write_opts: WriteOptions,
    sync_writes: bool,
    /// INSERT commits of all tables, and the RocksDB writes made for them: fewer writes
    /// than commits when group commits shared them (ADR 0024).
    pub insert_commits: IntCounter,
    pub insert_writes: IntCounter,
    cf_opts: Options,
    // Kept alive for as long as the DB uses it.
    _write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage { .. }")
    }
}

/// Settings of the hot tier taken from the node's configuration.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub sync_writes: bool,
    pub write_buffer_bytes: usize,
    pub max_open_files: i32,
}

impl Storage {
    pub fn open(dir: &Path, options: &StorageOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(KalamError::storage)?;
        // Memtables of all tables share one budget: thousands of column families must not
        // each claim their own default 64 MiB.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager(options.write_buffer_bytes, false);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(options.max_open_files);
        db_opts.set_write_buffer_manager(&write_buffers);
        db_opts.increase_parallelism(2);
        let mut cf_opts = Options::default();
        // Hot rows are young: most leave for Parquet (zstd there) within minutes. Compressing
        // them in L0 and the base level cost a core during heavy ingest and again on every
        // flush's scan, for data about to be deleted. Rows that stay long enough to sink
        // below the base level are compressed with zstd.
        cf_opts.set_compression_type(DBCompressionType::Zstd);
        cf_opts.set_compression_per_level(&[
            DBCompressionType::None,
            DBCompressionType::None,
            DBCompressionType::Zstd,
            DBCompressionType::Zstd,
            DBCompressionType::Zstd,
            DBCompressionType::Zstd,
            DBCompressionType::Zstd,
        ]);
        // Large memtables (the shared budget above still bounds their sum): a burst of ingest
        // stays in a few L0 files instead of a dozen that RocksDB compacts, rewriting rows the
        // next flush moves to Parquet anyway, on the cores that flush needs.
        cf_opts.set_write_buffer_size(64 * 1024 * 1024);
        // Every INSERT looks its keys up (duplicate check) and most are new: a bloom filter
        // answers "not here" without reading a block of each SST file.
        let mut tables = BlockBasedOptions::default();
        tables.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&tables);

        let mut names = Db::list_cf(&db_opts, dir).unwrap_or_default();
        for required in ["default", META_CF] {
            if !names.iter().any(|n| n == required) {
                names.push(required.to_string());
            }
        }
        let descriptors = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let db = Db::open_cf_descriptors(&db_opts, dir, descriptors)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(options.sync_writes);
        write_opts.disable_wal(false);
        Ok(Self {
            db,
            write_opts,
            sync_writes: options.sync_writes,
            insert_commits: IntCounter::new(
                "kalamdb_insert_commits_total",
                "INSERT statements committed to the hot tier",
            )
            .map_err(KalamError::internal)?,
            insert_writes: IntCounter::new(
                "kalamdb_insert_writes_total",
                "RocksDB writes (with sync_writes, fsyncs) made for INSERT commits; fewer than \
                 the commits when waiting INSERTs were committed together",
            )
            .map_err(KalamError::internal)?,
            cf_opts,
            _write_buffers: write_buffers,
        })
    }

    /// Column families holding table data (name starts with [`TABLE_CF_PREFIX`]).
    pub fn table_cfs(&self, dir: &Path) -> Result<Vec<String>> {
        Ok(Db::list_cf(&Options::default(), dir)?
            .into_iter()
            .filter(|n| n.starts_with(TABLE_CF_PREFIX))
            .collect())
    }

    pub fn create_cf(&self, name: &str) -> Result<()> {
        if self.db.cf_handle(name).is_none() {
            self.db.create_cf(name, &self.cf_opts)?;
        }
        Ok(())
    }

    /// Drops a table's column family and its sequence counter. Its cold-tier manifests and
    /// flush journal stay in `meta`: they name the Parquet files the purge of the dropped
    /// table removes, and go with [`Storage::drop_cold_meta`] once those are gone.
    pub fn drop_cf(&self, name: &str) -> Result<()> {
        if self.db.cf_handle(name).is_some() {
            self.db.drop_cf(name)?;
        }
        let meta = self.cf(META_CF)?;
        self.db.delete_cf(&meta, seq_key(name))?;
        Ok(())
    }

    /// Deletes a dropped table's cold-tier manifests, flush journal entries and obsolete-file
    /// records from `meta` (after its purge deleted the files they name).
    pub fn drop_cold_meta(&self, name: &str) -> Result<()> {
        let meta = self.cf(META_CF)?;
        for prefix in [
            crate::cold::table_manifest_prefix(name),
            format!("flushpending/{name}/").into_bytes(),
            crate::cold::table_obsolete_prefix(name),
        ] {
            for (key, _) in self.meta_scan_prefix(&prefix)? {
                self.db.delete_cf(&meta, key)?;
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| KalamError::Storage(format!("column family {name} is missing")))
    }

    /// The last sequence committed to a table and the `_updated` it gave out (0 for a new
    /// table). Persisting `_updated` keeps it increasing across restarts, even if the clock
    /// steps back, so that it orders the versions of a key in both tiers.
    pub fn last_seq(&self, cf_name: &str) -> Result<(u64, i64)> {
        let meta = self.cf(META_CF)?;
        match self.db.get_pinned_cf(&meta, seq_key(cf_name))? {
            Some(v) => {
                let corrupt = || KalamError::Storage("corrupt sequence value".into());
                let seq: [u8; 8] = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                // Values written before `_updated` was persisted hold the sequence only.
                let updated = match v.get(8..16) {
                    Some(b) => i64::from_be_bytes(b.try_into().map_err(|_| corrupt())?),
                    None => 0,
                };
                Ok((u64::from_be_bytes(seq), updated))
            }
            None => Ok((0, 0)),
        }
    }

    pub fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<StoredRow>> {
        let cf = self.cf(cf_name)?;
        match self.db.get_pinned_cf(&cf, key)? {
            Some(v) => Ok(Some(StoredRow::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Current versions of several keys, in the order asked.
    pub fn multi_get(&self, cf_name: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<StoredRow>>> {
        let cf = self.cf(cf_name)?;
        self.db
            .batched_multi_get_cf(&cf, keys.iter(), false)
            .into_iter()
            .map(|r| match r? {
                Some(v) => StoredRow::decode(&v).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Calls `f` with every row of a partition in key order; `f` returns false to stop.
    pub fn scan_partition(
        &self,
        cf_name: &str,
        partition: &Partition,
        mut f: impl FnMut(&[u8], StoredRow) -> Result<bool>,
    ) -> Result<()> {
        self.scan_partition_raw(cf_name, partition, |k, v| f(k, StoredRow::decode(v)?))
    }

    /// Every key and encoded value of a partition in key order, borrowed from the iterator
    /// (no copy per row), until `f` returns false.
    pub fn scan_partition_raw(
        &self,
        cf_name: &str,
        partition: &Partition,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let prefix = partition.prefix();
        let mut read_opts = ReadOptions::default();
        if let Some(upper) = partition.upper_bound() {
            read_opts.set_iterate_upper_bound(upper);
        }
        let mut it = self.db.raw_iterator_cf_opt(&cf, read_opts);
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Calls `f` with every key of a column family from `first` to `last` (both included),
    /// in key order, without decoding values.
    pub fn keys_between(
        &self,
        cf_name: &str,
        first: &[u8],
        last: &[u8],
        mut f: impl FnMut(&[u8]),
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let mut upper = last.to_vec();
        upper.push(0);
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(&cf, read_opts);
        it.seek(first);
        while let Some(k) = it.key() {
            f(k);
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// `kalamdb_insert_commits_total` and `kalamdb_insert_writes_total`.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.insert_commits.clone()),
            Box::new(self.insert_writes.clone()),
        ]
    }

    /// Whether every write waits for an fsync of the WAL (`sync_writes`).
    pub fn syncs_writes(&self) -> bool {
        self.sync_writes
    }

    /// Writes row versions and the table's new last sequence in one atomic batch (with
    /// `sync_writes`, one fsync): the rows of one commit, or of a group of them.
    pub fn write_rows<'a>(
        &self,
        cf_name: &str,
        rows: impl IntoIterator<Item = &'a (Vec<u8>, StoredRow)>,
        seq: u64,
        updated: i64,
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let meta = self.cf(META_CF)?;
        let mut batch = WriteBatch::default();
        for (key, row) in rows {
            batch.put_cf(&cf, key, row.encode()?);
        }
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(&updated.to_be_bytes());
        batch.put_cf(&meta, seq_key(cf_name), value);
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    /// One atomic batch of a flush commit: deletes of flushed hot keys (single keys, and
    /// ranges `[from, to)` that hold nothing else) plus `meta` writes (the partition's
    /// manifest; `None` deletes a key).
    pub fn write_flush_commit<K: AsRef<[u8]>>(
        &self,
        cf_name: &str,
        deletes: &[K],
        ranges: &[(Vec<u8>, Vec<u8>)],
        meta_ops: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let meta = self.cf(META_CF)?;
        let mut batch = WriteBatch::default();
        for key in deletes {
            batch.delete_cf(&cf, key);
        }
        for (from, to) in ranges {
            batch.delete_range_cf(&cf, from, to);
        }
        for (key, value) in meta_ops {
            match value {
                Some(v) => batch.put_cf(&meta, key, v),
                None => batch.delete_cf(&meta, key),
            }
        }
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    /// Takes a consistent snapshot of a table, calls `taken` once it exists (the caller
    /// releases its write lock there), then calls `f` with every key and encoded row of the
    /// snapshot in key order (borrowed from the iterator) until `f` returns false.
    pub fn scan_snapshot(
        &self,
        cf_name: &str,
        taken: impl FnOnce(),
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let snapshot = self.db.snapshot();
        taken();
        let mut it = snapshot.raw_iterator_cf(&cf);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Takes a consistent snapshot of a table, calls `taken` once it exists (the caller
    /// reads what must belong to the same moment and releases its write lock there), then
    /// hands `f` that value and a pull iterator over the snapshot's raw keys and values, in
    /// key order (a backup: docs/adr/0015-backup-restore.md). The snapshot is released
    /// when `f` returns.
    pub fn with_snapshot<C, T>(
        &self,
        cf_name: &str,
        taken: impl FnOnce() -> C,
        f: impl FnOnce(C, &mut dyn Iterator<Item = Result<RawRow>>) -> Result<T>,
    ) -> Result<T> {
        let cf = self.cf(cf_name)?;
        let snapshot = self.db.snapshot();
        let context = taken();
        let mut read_opts = ReadOptions::default();
        // A backup reads every row once: it must not push the working set out of the cache.
        read_opts.fill_cache(false);
        let mut rows = snapshot
            .iterator_cf_opt(&cf, read_opts, IteratorMode::Start)
            .map(|item| item.map_err(KalamError::from));
        f(context, &mut rows)
    }

    /// Writes raw row values (a restore; each a [`StoredRow`] encoding) and the table's last
    /// sequence and `_updated` in one atomic batch.
    pub fn restore_rows(
        &self,
        cf_name: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        seq: u64,
        updated: i64,
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        let meta = self.cf(META_CF)?;
        let mut batch = WriteBatch::default();
        for (key, value) in rows {
            batch.put_cf(&cf, key, value);
        }
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(&updated.to_be_bytes());
        batch.put_cf(&meta, seq_key(cf_name), value);
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    /// Deletes the first `n` keys of a column family (the oldest events of a STREAM table).
    /// Returns how many were deleted.
    pub fn delete_first(&self, cf_name: &str, n: u64) -> Result<u64> {
        let cf = self.cf(cf_name)?;
        let mut batch = WriteBatch::default();
        let mut deleted = 0;
        for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
            if deleted >= n {
                break;
            }
            let (k, _) = item?;
            batch.delete_cf(&cf, k);
            deleted += 1;
        }
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(deleted)
    }

    /// Deletes every key below `bound` (events older than a STREAM table's retention).
    /// Returns how many were deleted.
    pub fn delete_before(&self, cf_name: &str, bound: &[u8]) -> Result<u64> {
        let cf = self.cf(cf_name)?;
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(bound.to_vec());
        let mut batch = WriteBatch::default();
        let mut deleted = 0;
        for item in self.db.iterator_cf_opt(&cf, read_opts, IteratorMode::Start) {
            let (k, _) = item?;
            batch.delete_cf(&cf, k);
            deleted += 1;
        }
        if deleted > 0 {
            self.db.write_opt(batch, &self.write_opts)?;
        }
        Ok(deleted)
    }

    /// Counts the keys of a partition without decoding their values.
    pub fn count_partition(&self, cf_name: &str, partition: &Partition) -> Result<u64> {
        let cf = self.cf(cf_name)?;
        let prefix = partition.prefix();
        let mut read_opts = ReadOptions::default();
        if let Some(upper) = partition.upper_bound() {
            read_opts.set_iterate_upper_bound(upper);
        }
        let mut n = 0;
        let mode = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf_opt(&cf, read_opts, mode) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// A table's hot key count and the partition prefixes holding keys (`{user_id}:` of a
    /// USER table; none for a SHARED one), read without decoding values.
    pub fn key_stats(
        &self,
        cf_name: &str,
        user_partitions: bool,
    ) -> Result<(u64, std::collections::BTreeSet<Vec<u8>>)> {
        let cf = self.cf(cf_name)?;
        let mut n = 0;
        let mut prefixes = std::collections::BTreeSet::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
            let (k, _) = item?;
            n += 1;
            if let Some(colon) = k
                .iter()
                .position(|b| *b == b':')
                .filter(|_| user_partitions)
            {
                if !prefixes
                    .iter()
                    .next_back()
                    .is_some_and(|p: &Vec<u8>| p.as_slice() == &k[..=colon])
                {
                    prefixes.insert(k[..=colon].to_vec());
                }
            }
        }
        Ok((n, prefixes))
    }

    /// RocksDB's estimate of a table's key count (cheap; for flush policies at start-up).
    pub fn estimate_keys(&self, cf_name: &str) -> u64 {
        self.cf(cf_name)
            .ok()
            .and_then(|cf| {
                self.db
                    .property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// Writes one key of the node's own `meta` column family (jobs, manifests, journals).
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let meta = self.cf(META_CF)?;
        self.db.put_cf_opt(&meta, key, value, &self.write_opts)?;
        Ok(())
    }

    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let meta = self.cf(META_CF)?;
        Ok(self.db.get_cf(&meta, key)?)
    }

    pub fn meta_delete(&self, key: &[u8]) -> Result<()> {
        let meta = self.cf(META_CF)?;
        self.db.delete_cf_opt(&meta, key, &self.write_opts)?;
        Ok(())
    }

    /// Every `meta` key starting with `prefix`, in key order, with its value.
    pub fn meta_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let meta = self.cf(META_CF)?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(&meta, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// A cheap liveness probe of the store for `/readyz`.
    pub fn probe(&self) -> Result<()> {
        let meta = self.cf(META_CF)?;
        self.db.get_pinned_cf(&meta, b"probe")?;
        Ok(())
    }
}

fn seq_key(cf_name: &str) -> Vec<u8> {
    format!("{SEQ_PREFIX}{cf_name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn opts() -> StorageOptions {
        StorageOptions {
            sync_writes: false,
            write_buffer_bytes: 8 << 20,
            max_open_files: 64,
        }
    }

    fn row(seq: u64, text: &str) -> StoredRow {
        StoredRow {
            schema_version: 1,
            seq,
            updated_micros: 0,
            deleted: false,
            values: vec![Value::Text(text.into())],
        }
    }

    #[test]
    fn partitions_scan_only_their_rows_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let alice = Partition::User(UserId::new("alice").unwrap());
        let alice2 = Partition::User(UserId::new("alice2").unwrap());
        {
            let s = Storage::open(dir.path(), &opts()).unwrap();
            s.create_cf("t_app_m_1").unwrap();
            s.write_rows(
                "t_app_m_1",
                &[
                    (alice.key(&RowKey::from_int(1)), row(1, "a1")),
                    (alice2.key(&RowKey::from_int(1)), row(1, "b1")),
                    (alice.key(&RowKey::from_int(2)), row(1, "a2")),
                ],
                1,
                7,
            )
            .unwrap();
        }
        let s = Storage::open(dir.path(), &opts()).unwrap();
        assert_eq!(
            s.table_cfs(dir.path()).unwrap(),
            vec!["t_app_m_1".to_string()]
        );
        assert_eq!(s.last_seq("t_app_m_1").unwrap(), (1, 7));
        let mut seen = Vec::new();
        s.scan_partition("t_app_m_1", &alice, |_, r| {
            seen.push(r.values[0].clone());
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![Value::Text("a1".into()), Value::Text("a2".into())]
        );
        s.drop_cf("t_app_m_1").unwrap();
        s.drop_cold_meta("t_app_m_1").unwrap();
        assert!(s.table_cfs(dir.path()).unwrap().is_empty());
    }
}
