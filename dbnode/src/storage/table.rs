//! One table's hot tier: its column family, its commit sequence, and the write rules every
//! statement goes through (key checks, `_updated`/`_deleted`, one atomic batch per write).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        let seq = storage.last_seq(&cf)?;
        Ok(Self {
            def,
            cf,
            storage,
            seq: AtomicU64::new(seq),
            write_lock: Mutex::new(0),
            dml_locks: Mutex::new(HashMap::new()),
            validator,
        })
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
    pub fn insert(&self, partition: &Partition, rows: Vec<Vec<Value>>) -> Result<u64> {
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            self.check_values(&values)?;
            keyed.push((partition.key(&self.key_of(&values)?), values, false));
        }
        let mut last_updated = self.write_lock.lock();
        self.check_new_keys(&keyed)?;
        self.commit(&mut last_updated, keyed)
    }

    /// Writes new versions of rows an UPDATE or DELETE read, if each is still the version
    /// read; otherwise nothing is written and the error is `WriteConflict` (the statement
    /// re-reads and tries again).
    pub fn apply_changes(&self, partition: &Partition, changes: Vec<RowChange>) -> Result<u64> {
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
        for (current, read_updated) in self.storage.multi_get(&self.cf, &keys)?.iter().zip(&read) {
            if current.as_ref().map(|r| r.updated_micros) != Some(*read_updated) {
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
        self.storage.write_rows(&self.cf, &batch, seq)?;
        self.seq.store(seq, Ordering::Release);
        *last_updated = updated_micros;
        Ok(count)
    }

    /// Refuses keys that repeat within the batch or hold a live row already.
    fn check_new_keys(&self, keyed: &[(Vec<u8>, Vec<Value>, bool)]) -> Result<()> {
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
        for (existing, (_, values, _)) in self.storage.multi_get(&self.cf, &keys)?.iter().zip(keyed)
        {
            if matches!(existing, Some(row) if !row.deleted) {
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
