//! One table's hot tier: its column family, its commit sequence, and the write rules every
//! statement goes through (key checks, `_updated`/`_deleted`, one atomic batch per write).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::catalog::TableDef;
use crate::error::{KalamError, Result};
use crate::storage::{Partition, RowKey, Storage, StoredRow, Value};

/// Extra checks a table puts on the values written to it (`system.users` checks roles).
pub type RowValidator = fn(&TableDef, &[Value]) -> Result<()>;

/// A new version of a row that an UPDATE or DELETE read: written only if the row still is
/// the version that was read (its `_updated`), so concurrent statements never lose each
/// other's changes or bring a deleted row back.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub values: Vec<Value>,
    /// `_updated` of the version the statement read.
    pub read_updated: i64,
    /// `_deleted` of the new version (UPDATE keeps the row's flag, DELETE sets it).
    pub deleted: bool,
}

#[derive(Debug)]
pub struct TableStore {
    def: Arc<TableDef>,
    cf: String,
    storage: Arc<Storage>,
    /// Last committed sequence; only written under `write_lock`.
    seq: AtomicU64,
    /// Serialises writers of this table: sequence numbers follow commit order, and the
    /// primary-key or version check and the write are one step. Holds the last `_updated`
    /// given out, which strictly increases so that it identifies a row version.
    write_lock: Mutex<i64>,
    validator: Option<RowValidator>,
    /// One lock per partition held by an UPDATE or DELETE from its read to its write, so
    /// those statements queue instead of retrying against each other.
    dml_locks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped by every flush commit (under `write_lock`): a writer that looked up versions
    /// in the cold tier knows its answer is still current when the generation is unchanged.
    cold_generation: AtomicU64,
    /// Rows written since the last flush snapshot, and when the oldest of them was written:
    /// flush policies are checked from these, without scanning.
    pending_rows: AtomicU64,
    oldest_pending: Mutex<Option<Instant>>,
    /// Set while a flush of this table runs: one flush per table at a time.
    pub flushing: AtomicBool,
}

/// The outcome of [`TableStore::insert`].
#[derive(Debug)]
pub enum Inserted {
    Rows(u64),
    /// A flush committed since the cold lookup: look again with these rows.
    ColdChanged(Vec<Vec<Value>>),
}

/// What the cold tier holds for the keys of a write, looked up before the write takes the
/// table's lock: row key -> (seq, `_updated`, deleted) of the newest cold version.
#[derive(Debug, Default)]
pub struct ColdVersions {
    pub generation: u64,
    pub versions: HashMap<Vec<u8>, (u64, i64, bool)>,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl TableStore {
    pub fn open(
        storage: Arc<Storage>,
        def: Arc<TableDef>,
        validator: Option<RowValidator>,
    ) -> Result<Self> {
        let cf = def.cf_name();
        storage.create_cf(&cf)?;
        let (seq, last_updated) = storage.last_seq(&cf)?;
        let pending = storage.estimate_keys(&cf);
        Ok(Self {
            def,
            seq: AtomicU64::new(seq),
            write_lock: Mutex::new(last_updated),
            dml_locks: Mutex::new(HashMap::new()),
            validator,
            cold_generation: AtomicU64::new(0),
            pending_rows: AtomicU64::new(pending),
            oldest_pending: Mutex::new((pending > 0).then(Instant::now)),
            flushing: AtomicBool::new(false),
            cf,
            storage,
        })
    }

    pub fn cold_generation(&self) -> u64 {
        self.cold_generation.load(Ordering::Acquire)
    }

    /// Rows waiting for a flush, and since when.
    pub fn pending(&self) -> (u64, Option<Instant>) {
        (
            self.pending_rows.load(Ordering::Acquire),
            *self.oldest_pending.lock(),
        )
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Takes a flush snapshot: returns its sequence; `f` gets that sequence and every row
    /// version of the snapshot, in key order. Rows written after the snapshot count as pending for the next flush.
    pub fn snapshot_scan(
        &self,
        mut f: impl FnMut(u64, &[u8], StoredRow) -> Result<bool>,
    ) -> Result<u64> {
        let guard = self.write_lock.lock();
        let seq = self.last_seq();
        self.pending_rows.store(0, Ordering::Release);
        *self.oldest_pending.lock() = None;
        self.storage
            .scan_snapshot(&self.cf, move || drop(guard), |k, r| f(seq, k, r))?;
        Ok(seq)
    }

    /// Gives back the pending count of a snapshot whose flush failed, so policies fire again.
    pub fn restore_pending(&self, rows: u64) {
        if rows > 0 {
            self.pending_rows.fetch_add(rows, Ordering::AcqRel);
            self.oldest_pending.lock().get_or_insert_with(Instant::now);
        }
    }

    /// Commits flushed rows of one partition: deletes each hot key whose current version is
    /// at most `snapshot_seq` (a newer write stays) and writes `meta_ops` (the manifest) in
    /// the same batch, then calls `publish` and bumps the cold generation, all under the
    /// write lock. Returns how many hot keys were removed.
    pub fn commit_flush(
        &self,
        keys: &[Vec<u8>],
        snapshot_seq: u64,
        meta_ops: &[(Vec<u8>, Option<Vec<u8>>)],
        publish: impl FnOnce(),
    ) -> Result<usize> {
        let _lock = self.write_lock.lock();
        let mut deletes = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(4096) {
            let current = self.storage.multi_get(&self.cf, chunk)?;
            for (key, row) in chunk.iter().zip(current) {
                if row.is_some_and(|r| r.seq <= snapshot_seq) {
                    deletes.push(key.clone());
                }
            }
        }
        self.storage
            .write_flush_commit(&self.cf, &deletes, meta_ops)?;
        publish();
        self.cold_generation.fetch_add(1, Ordering::AcqRel);
        Ok(deletes.len())
    }

    /// The lock an UPDATE or DELETE of `partition` holds across its read and its write.
    pub fn dml_lock(&self, partition: &Partition) -> Arc<tokio::sync::Mutex<()>> {
        self.dml_locks
            .lock()
            .entry(partition.prefix())
            .or_default()
            .clone()
    }

    pub fn def(&self) -> &Arc<TableDef> {
        &self.def
    }

    pub fn cf_name(&self) -> &str {
        &self.cf
    }

    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn key_of(&self, values: &[Value]) -> Result<RowKey> {
        let v = values
            .get(self.def.primary_key_index())
            .ok_or_else(|| KalamError::internal("row without primary key position"))?;
        RowKey::from_value(v)
    }

    fn check_values(&self, values: &[Value]) -> Result<()> {
        if values.len() != self.def.columns.len() {
            return Err(KalamError::internal(
                "row width differs from the table schema",
            ));
        }
        for (col, v) in self.def.columns.iter().zip(values) {
            if !col.nullable && matches!(v, Value::Null) {
                return Err(KalamError::InvalidValue(format!(
                    "column '{}' of {} is NOT NULL",
                    col.name,
                    self.def.id()
                )));
            }
        }
        if let Some(validate) = self.validator {
            validate(&self.def, values)?;
        }
        Ok(())
    }

    /// Inserts rows (user-column values in schema order) into one partition as one atomic
    /// batch with one new sequence number. A key holding a live row, or repeated within the
    /// batch, fails the whole batch. Returns the number of rows written.
    ///
    /// `cold` holds what the cold tier has for these keys; when a flush committed since it
    /// was looked up, nothing is written and `Ok(None)` asks the caller to look again.
    pub fn insert(
        &self,
        partition: &Partition,
        rows: Vec<Vec<Value>>,
        cold: &ColdVersions,
    ) -> Result<Inserted> {
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            self.check_values(&values)?;
            keyed.push((partition.key(&self.key_of(&values)?), values, false));
        }
        let mut last_updated = self.write_lock.lock();
        if self.cold_generation() != cold.generation {
            return Ok(Inserted::ColdChanged(
                keyed.into_iter().map(|(_, v, _)| v).collect(),
            ));
        }
        self.check_new_keys(partition, &keyed, cold)?;
        self.commit(&mut last_updated, keyed).map(Inserted::Rows)
    }

    /// The row keys (without partition prefix) of rows to insert, for the cold lookup.
    pub fn row_keys(&self, rows: &[Vec<Value>]) -> Result<Vec<RowKey>> {
        rows.iter().map(|v| self.key_of(v)).collect()
    }

    /// Writes new versions of rows an UPDATE or DELETE read, if each is still the version
    /// read; otherwise nothing is written and the error is `WriteConflict` (the statement
    /// re-reads and tries again).
    ///
    /// A row missing from the hot tier was read from the cold tier; that read is current
    /// when no flush committed since `read_generation`.
    pub fn apply_changes(
        &self,
        partition: &Partition,
        changes: Vec<RowChange>,
        read_generation: u64,
    ) -> Result<u64> {
        let mut keyed = Vec::with_capacity(changes.len());
        let mut read = Vec::with_capacity(changes.len());
        for change in changes {
            if !change.deleted {
                self.check_values(&change.values)?;
            }
            keyed.push((
                partition.key(&self.key_of(&change.values)?),
                change.values,
                change.deleted,
            ));
            read.push(change.read_updated);
        }
        let mut last_updated = self.write_lock.lock();
        let keys: Vec<Vec<u8>> = keyed.iter().map(|(k, _, _)| k.clone()).collect();
        let cold_unchanged = self.cold_generation() == read_generation;
        for (current, read_updated) in self.storage.multi_get(&self.cf, &keys)?.iter().zip(&read) {
            let current_ok = match current {
                Some(r) => r.updated_micros == *read_updated,
                None => cold_unchanged,
            };
            if !current_ok {
                return Err(KalamError::WriteConflict(self.def.id().to_string()));
            }
        }
        self.commit(&mut last_updated, keyed)
    }

    /// One batch, one sequence number, one `_updated` (strictly after the previous one).
    fn commit(
        &self,
        last_updated: &mut i64,
        rows: Vec<(Vec<u8>, Vec<Value>, bool)>,
    ) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let seq = self.seq.load(Ordering::Acquire) + 1;
        let updated_micros = now_micros().max(*last_updated + 1);
        let count = rows.len() as u64;
        let batch: Vec<(Vec<u8>, StoredRow)> = rows
            .into_iter()
            .map(|(key, values, deleted)| {
                let row = StoredRow {
                    schema_version: self.def.schema_version,
                    seq,
                    updated_micros,
                    deleted,
                    values,
                };
                (key, row)
            })
            .collect();
        self.storage
            .write_rows(&self.cf, &batch, seq, updated_micros)?;
        self.seq.store(seq, Ordering::Release);
        *last_updated = updated_micros;
        self.pending_rows.fetch_add(count, Ordering::AcqRel);
        self.oldest_pending.lock().get_or_insert_with(Instant::now);
        Ok(count)
    }

    /// Refuses keys that repeat within the batch or hold a live row already.
    fn check_new_keys(
        &self,
        partition: &Partition,
        keyed: &[(Vec<u8>, Vec<Value>, bool)],
        cold: &ColdVersions,
    ) -> Result<()> {
        let pk = self.def.primary_key_index();
        let violation = |values: &Vec<Value>| KalamError::PrimaryKeyViolation {
            table: self.def.id().to_string(),
            key: match values.get(pk) {
                Some(Value::Int(i)) => i.to_string(),
                Some(Value::Text(s)) => format!("'{}'", crate::error::clip(s)),
                other => format!("{other:?}"),
            },
        };
        let mut seen = std::collections::HashSet::with_capacity(keyed.len());
        for (key, values, _) in keyed {
            if !seen.insert(key.as_slice()) {
                return Err(violation(values));
            }
        }
        let keys: Vec<Vec<u8>> = keyed.iter().map(|(k, _, _)| k.clone()).collect();
        let prefix_len = partition.prefix().len();
        for (existing, (key, values, _)) in
            self.storage.multi_get(&self.cf, &keys)?.iter().zip(keyed)
        {
            let live = match existing {
                Some(row) => !row.deleted,
                // Not hot: live if its newest cold version is.
                None => cold
                    .versions
                    .get(&key[prefix_len..])
                    .is_some_and(|(_, _, deleted)| !deleted),
            };
            if live {
                return Err(violation(values));
            }
        }
        Ok(())
    }

    /// Every current row version of a partition, soft-deleted ones only when asked.
    pub fn scan(
        &self,
        partition: &Partition,
        include_deleted: bool,
        limit: Option<usize>,
    ) -> Result<Vec<StoredRow>> {
        let mut out = Vec::new();
        self.storage.scan_partition(&self.cf, partition, |_, row| {
            if include_deleted || !row.deleted {
                out.push(row);
            }
            Ok(limit.is_none_or(|l| out.len() < l))
        })?;
        Ok(out)
    }

    /// The current version of one key, soft-deleted or not.
    pub fn get(&self, partition: &Partition, key: &RowKey) -> Result<Option<StoredRow>> {
        self.storage.get(&self.cf, &partition.key(key))
    }
}
