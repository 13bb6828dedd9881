//! One table's hot tier: its column family, its commit sequence, and the write rules every
//! statement goes through (key checks, `_updated`/`_deleted`, one atomic batch per write).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalog::TableDef;
use crate::error::{KalamError, Result};
use crate::storage::{Partition, RowKey, Storage, StoredRow, Value};

/// Extra checks a table puts on the values written to it (`system.users` checks roles).
pub type RowValidator = fn(&TableDef, &[Value]) -> Result<()>;

/// What a write does to keys that already hold a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// INSERT: a key holding a live (not soft-deleted) row is a PRIMARY_KEY_VIOLATION.
    Insert,
    /// UPDATE: replace the given rows' values.
    Update,
    /// DELETE: write the given rows' last values with `_deleted = true`.
    SoftDelete,
}

#[derive(Debug)]
pub struct TableStore {
    def: Arc<TableDef>,
    cf: String,
    storage: Arc<Storage>,
    /// Last committed sequence; only written under `write_lock`.
    seq: AtomicU64,
    /// Serialises writers of this table: sequence numbers follow commit order, and the
    /// primary-key check and the write are one step.
    write_lock: Mutex<()>,
    validator: Option<RowValidator>,
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
            write_lock: Mutex::new(()),
            validator,
        })
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

    /// Writes rows (user-column values in schema order) to one partition as one atomic
    /// batch with one new sequence number. Returns the number of rows written.
    pub fn write(
        &self,
        partition: &Partition,
        rows: Vec<Vec<Value>>,
        mode: WriteMode,
    ) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            if mode != WriteMode::SoftDelete {
                self.check_values(&values)?;
            }
            let key = partition.key(&self.key_of(&values)?);
            keyed.push((key, values));
        }
        let _guard = self.write_lock.lock();
        if mode == WriteMode::Insert {
            self.check_new_keys(&keyed)?;
        }
        let seq = self.seq.load(Ordering::Acquire) + 1;
        let updated_micros = now_micros();
        let count = keyed.len() as u64;
        let batch: Vec<(Vec<u8>, StoredRow)> = keyed
            .into_iter()
            .map(|(key, values)| {
                let row = StoredRow {
                    schema_version: self.def.schema_version,
                    seq,
                    updated_micros,
                    deleted: mode == WriteMode::SoftDelete,
                    values,
                };
                (key, row)
            })
            .collect();
        self.storage.write_rows(&self.cf, &batch, seq)?;
        self.seq.store(seq, Ordering::Release);
        Ok(count)
    }

    /// Refuses keys that repeat within the batch or hold a live row already.
    fn check_new_keys(&self, keyed: &[(Vec<u8>, Vec<Value>)]) -> Result<()> {
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
        for (key, values) in keyed {
            if !seen.insert(key.as_slice()) {
                return Err(violation(values));
            }
        }
        let keys: Vec<Vec<u8>> = keyed.iter().map(|(k, _)| k.clone()).collect();
        for (existing, (_, values)) in self.storage.multi_get(&self.cf, &keys)?.iter().zip(keyed) {
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
