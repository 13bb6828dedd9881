//! Conversions between stored rows and Arrow: hot-tier rows become `RecordBatch`es for
//! DataFusion, and the batches an INSERT or UPDATE produces become stored values.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimestampMicrosecondType,
};

use datafusion::common::ScalarValue;

use crate::catalog::{KalamType, TableDef, DELETED_COLUMN, TIMESTAMP_TZ, UPDATED_COLUMN};
use crate::cold::SEQ_COLUMN;
use crate::error::{KalamError, Result};
use crate::storage::{StoredRow, StoredRowRef, Value, ValueRef};

/// Builds one batch of `schema` (the table's full schema, a projection of it, or a file
/// schema with `_seq`) from stored rows.
pub fn rows_to_batch(
    def: &TableDef,
    schema: &SchemaRef,
    rows: &[StoredRow],
) -> Result<RecordBatch> {
    let mut builder = RowBatchBuilder::new(def, schema.clone(), rows.len())?;
    for row in rows {
        builder.push_owned(row)?;
    }
    builder.finish()
}

/// A stored value as a DataFusion scalar of the column's Arrow type (a fill value of a
/// column that a Parquet file's schema version lacks).
pub fn value_to_scalar(t: KalamType, v: &Value) -> Result<ScalarValue> {
    let mut b = ColumnBuilder::new(t, 1)?;
    b.append(v.into())?;
    ScalarValue::try_from_array(&b.finish(), 0).map_err(KalamError::internal)
}

/// Where a field of the output schema takes its cells from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A user column, by position in the definition's columns.
    Column(usize),
    Updated,
    Deleted,
    Seq,
}

/// The text and bytes a batch of [`RowBatchBuilder`] holds before
/// [`is_full`](RowBatchBuilder::is_full) says to finish it.
pub const BATCH_VALUE_BYTES: usize = 256 << 20;

/// Builds Arrow batches of one table's rows cell by cell, from rows read in place from the
/// hot tier ([`StoredRowRef`]) or owned ones: no intermediate row of owned values. Each
/// field of the output schema is matched by name to a user column or a system column.
pub struct RowBatchBuilder {
    schema: SchemaRef,
    sources: Vec<Source>,
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl RowBatchBuilder {
    pub fn new(def: &TableDef, schema: SchemaRef, capacity: usize) -> Result<Self> {
        let mut sources = Vec::with_capacity(schema.fields().len());
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let (source, t) = match name {
                UPDATED_COLUMN => (Source::Updated, KalamType::Timestamp),
                DELETED_COLUMN => (Source::Deleted, KalamType::Boolean),
                SEQ_COLUMN => {
                    sources.push(Source::Seq);
                    columns.push(ColumnBuilder::Seq(UInt64Builder::with_capacity(capacity)));
                    continue;
                }
                _ => {
                    let i = def
                        .columns
                        .iter()
                        .position(|c| c.name.as_str() == name)
                        .ok_or_else(|| {
                            KalamError::internal(format!("{} has no column {name}", def.id()))
                        })?;
                    (Source::Column(i), def.columns[i].data_type)
                }
            };
            sources.push(source);
            columns.push(ColumnBuilder::new(t, capacity)?);
        }
        Ok(Self {
            schema,
            sources,
            columns,
            rows: 0,
        })
    }

    /// Rows pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the batch should be finished before the next row: it holds `max_rows` rows,
    /// or its text and bytes columns hold [`BATCH_VALUE_BYTES`] (Arrow's string and binary
    /// arrays address their values with 32-bit offsets, so a batch of large values is cut
    /// by bytes long before 2 GiB).
    pub fn is_full(&self, max_rows: usize) -> bool {
        self.is_full_at(max_rows, BATCH_VALUE_BYTES)
    }

    fn is_full_at(&self, max_rows: usize, max_value_bytes: usize) -> bool {
        self.rows >= max_rows
            || self
                .columns
                .iter()
                .map(ColumnBuilder::value_bytes)
                .sum::<usize>()
                >= max_value_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends a row read in place; its values are in the definition's schema version.
    pub fn push(&mut self, row: &StoredRowRef<'_>) -> Result<()> {
        self.push_with(row.seq, row.updated_micros, row.deleted, |i| {
            row.values.get(i).copied().unwrap_or(ValueRef::Null)
        })
    }

    /// Appends an owned row; its values are in the definition's schema version.
    pub fn push_owned(&mut self, row: &StoredRow) -> Result<()> {
        self.push_with(row.seq, row.updated_micros, row.deleted, |i| {
            row.values.get(i).map_or(ValueRef::Null, ValueRef::from)
        })
    }

    fn push_with<'a>(
        &mut self,
        seq: u64,
        updated: i64,
        deleted: bool,
        value: impl Fn(usize) -> ValueRef<'a>,
    ) -> Result<()> {
        for (source, b) in self.sources.iter().zip(self.columns.iter_mut()) {
            match *source {
                Source::Column(i) => b.append(value(i))?,
                Source::Updated => b.append(ValueRef::Timestamp(updated))?,
                Source::Deleted => b.append(ValueRef::Bool(deleted))?,
                Source::Seq => b.append_seq(seq),
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows pushed so far as one batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(KalamError::internal)
    }
}

/// A stored integer in a narrower column's type.
fn narrow<T: TryFrom<i64>>(i: i64, column_type: &str) -> Result<T> {
    T::try_from(i).map_err(|_| {
        KalamError::Storage(format!(
            "stored value {i} does not fit column type {column_type}"
        ))
    })
}

/// The Arrow builder of one column, with the column's type (for the mismatch error).
enum ColumnBuilder {
    Boolean(BooleanBuilder),
    SmallInt(Int16Builder),
    Int(Int32Builder),
    BigInt(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Decimal(Decimal128Builder, KalamType),
    Text(StringBuilder, KalamType),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Seq(UInt64Builder),
}

impl ColumnBuilder {
    fn new(t: KalamType, n: usize) -> Result<Self> {
        Ok(match t {
            KalamType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(n)),
            KalamType::SmallInt => Self::SmallInt(Int16Builder::with_capacity(n)),
            KalamType::Int => Self::Int(Int32Builder::with_capacity(n)),
            KalamType::BigInt => Self::BigInt(Int64Builder::with_capacity(n)),
            KalamType::Float => Self::Float(Float32Builder::with_capacity(n)),
            KalamType::Double => Self::Double(Float64Builder::with_capacity(n)),
            KalamType::Decimal { precision, scale } => Self::Decimal(
                Decimal128Builder::with_capacity(n)
                    .with_precision_and_scale(precision, scale)
                    .map_err(KalamError::internal)?,
                t,
            ),
            KalamType::Text | KalamType::Json => {
                Self::Text(StringBuilder::with_capacity(n, n * 16), t)
            }
            KalamType::Bytes => Self::Bytes(BinaryBuilder::with_capacity(n, n * 16)),
            KalamType::Date => Self::Date(Date32Builder::with_capacity(n)),
            KalamType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone(TIMESTAMP_TZ),
            ),
        })
    }

    fn kalam_type(&self) -> KalamType {
        match self {
            Self::Boolean(_) => KalamType::Boolean,
            Self::SmallInt(_) => KalamType::SmallInt,
            Self::Int(_) => KalamType::Int,
            Self::BigInt(_) | Self::Seq(_) => KalamType::BigInt,
            Self::Float(_) => KalamType::Float,
            Self::Double(_) => KalamType::Double,
            Self::Decimal(_, t) | Self::Text(_, t) => *t,
            Self::Bytes(_) => KalamType::Bytes,
            Self::Date(_) => KalamType::Date,
            Self::Timestamp(_) => KalamType::Timestamp,
        }
    }

    /// Bytes of text or binary values appended since the last finish (0 for other types).
    fn value_bytes(&self) -> usize {
        match self {
            Self::Text(b, _) => b.values_slice().len(),
            Self::Bytes(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    fn append(&mut self, v: ValueRef<'_>) -> Result<()> {
        // Arrow's builders panic past 2 GiB of values in one array (32-bit offsets): a
        // caller that cuts batches with `is_full` stays far below, any other gets an error.
        let adding = match v {
            ValueRef::Text(s) => s.len(),
            ValueRef::Bytes(b) => b.len(),
            _ => 0,
        };
        if adding > 0 && self.value_bytes() + adding > i32::MAX as usize {
            return Err(KalamError::ResourcesExhausted(format!(
                "one batch of rows would hold more than 2 GiB of {} values",
                self.kalam_type().sql_name()
            )));
        }
        // Integers of every width are stored as `Int`, floats of both widths as `Float`;
        // the column's type says which Arrow type they become.
        match (self, v) {
            (Self::Boolean(b), ValueRef::Null) => b.append_null(),
            (Self::Boolean(b), ValueRef::Bool(x)) => b.append_value(x),
            (Self::SmallInt(b), ValueRef::Null) => b.append_null(),
            // Written values always fit (they were cast to the column); a restored or damaged
            // one that does not is an error, not a different number.
            (Self::SmallInt(b), ValueRef::Int(i)) => b.append_value(narrow(i, "SMALLINT")?),
            (Self::Int(b), ValueRef::Null) => b.append_null(),
            (Self::Int(b), ValueRef::Int(i)) => b.append_value(narrow(i, "INT")?),
            (Self::BigInt(b), ValueRef::Null) => b.append_null(),
            (Self::BigInt(b), ValueRef::Int(i)) => b.append_value(i),
            (Self::Float(b), ValueRef::Null) => b.append_null(),
            (Self::Float(b), ValueRef::Float(f)) => b.append_value(f as f32),
            (Self::Double(b), ValueRef::Null) => b.append_null(),
            (Self::Double(b), ValueRef::Float(f)) => b.append_value(f),
            (Self::Decimal(b, _), ValueRef::Null) => b.append_null(),
            (Self::Decimal(b, _), ValueRef::Decimal(d)) => b.append_value(d),
            (Self::Text(b, _), ValueRef::Null) => b.append_null(),
            (Self::Text(b, _), ValueRef::Text(s)) => b.append_value(s),
            (Self::Bytes(b), ValueRef::Null) => b.append_null(),
            (Self::Bytes(b), ValueRef::Bytes(x)) => b.append_value(x),
            (Self::Date(b), ValueRef::Null) => b.append_null(),
            (Self::Date(b), ValueRef::Date(d)) => b.append_value(d),
            (Self::Timestamp(b), ValueRef::Null) => b.append_null(),
            (Self::Timestamp(b), ValueRef::Timestamp(t)) => b.append_value(t),
            (this, other) => {
                return Err(KalamError::Storage(format!(
                    "stored value {other:?} does not fit column type {}",
                    this.kalam_type().sql_name()
                )))
            }
        }
        Ok(())
    }

    fn append_seq(&mut self, seq: u64) {
        if let Self::Seq(b) = self {
            b.append_value(seq);
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::SmallInt(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::BigInt(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::Decimal(b, _) => Arc::new(b.finish()),
            Self::Text(b, _) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Seq(b) => Arc::new(b.finish()),
        }
    }
}

/// Casts `array` to the column's Arrow type; a value that does not convert is the client's
/// error (INVALID_VALUE), not a silent NULL.
pub fn cast_to_column(array: &ArrayRef, t: KalamType, column: &str) -> Result<ArrayRef> {
    let target = t.arrow();
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    let opts = datafusion::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    datafusion::arrow::compute::cast_with_options(array, &target, &opts)
        .map_err(|e| KalamError::InvalidValue(format!("column '{column}' ({}): {e}", t.sql_name())))
}

/// Reads row `i` of `array` (already of the column's Arrow type) as a stored value.
pub fn value_at(array: &ArrayRef, i: usize, t: KalamType, column: &str) -> Result<Value> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match t {
        KalamType::Boolean => Value::Bool(array.as_boolean().value(i)),
        KalamType::SmallInt => Value::Int(array.as_primitive::<Int16Type>().value(i) as i64),
        KalamType::Int => Value::Int(array.as_primitive::<Int32Type>().value(i) as i64),
        KalamType::BigInt => Value::Int(array.as_primitive::<Int64Type>().value(i)),
        KalamType::Float => Value::Float(array.as_primitive::<Float32Type>().value(i) as f64),
        KalamType::Double => Value::Float(array.as_primitive::<Float64Type>().value(i)),
        KalamType::Decimal { .. } => {
            Value::Decimal(array.as_primitive::<Decimal128Type>().value(i))
        }
        KalamType::Text => Value::Text(array.as_string::<i32>().value(i).to_string()),
        KalamType::Json => {
            let text = array.as_string::<i32>().value(i);
            let parsed: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                KalamError::InvalidValue(format!("column '{column}' (JSON): not valid JSON: {e}"))
            })?;
            Value::Text(parsed.to_string())
        }
        KalamType::Bytes => Value::Bytes(array.as_binary::<i32>().value(i).to_vec()),
        // Arrow holds days and microseconds far past any calendar date; such a value would
        // read back as nothing a client could parse, so it is refused as PostgreSQL does.
        KalamType::Date => {
            let days = array.as_primitive::<Date32Type>().value(i);
            if chrono::NaiveDate::from_epoch_days(days).is_none() {
                return Err(KalamError::InvalidValue(format!(
                    "column '{column}' (DATE): date out of range ({days} days from 1970-01-01)"
                )));
            }
            Value::Date(days)
        }
        KalamType::Timestamp => {
            let micros = array.as_primitive::<TimestampMicrosecondType>().value(i);
            if chrono::DateTime::from_timestamp_micros(micros).is_none() {
                return Err(KalamError::InvalidValue(format!(
                    "column '{column}' (TIMESTAMP): timestamp out of range ({micros} \
                     microseconds from 1970-01-01)"
                )));
            }
            Value::Timestamp(micros)
        }
    })
}

/// The user-column values of every row of `batch`, taking columns by name. Columns of the
/// table missing from the batch are NULL (the sink's input always carries all of them).
pub fn batch_to_values(def: &TableDef, batch: &RecordBatch) -> Result<Vec<Vec<Value>>> {
    let mut columns = Vec::with_capacity(def.columns.len());
    for col in &def.columns {
        let array = match batch.column_by_name(col.name.as_str()) {
            Some(a) => Some(cast_to_column(a, col.data_type, col.name.as_str())?),
            None => None,
        };
        columns.push(array);
    }
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut values = Vec::with_capacity(def.columns.len());
        for (col, array) in def.columns.iter().zip(&columns) {
            values.push(match array {
                Some(a) => value_at(a, i, col.data_type, col.name.as_str())?,
                None => Value::Null,
            });
        }
        rows.push(values);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cold::parquet::file_schema;
    use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray, UInt64Array};
    use datafusion::arrow::datatypes::Schema;

    fn row(id: i64, body: Option<&str>, seq: u64, deleted: bool) -> StoredRow {
        StoredRow {
            schema_version: 1,
            seq,
            updated_micros: 1_000 + seq as i64,
            deleted,
            values: vec![
                Value::Int(id),
                body.map_or(Value::Null, |b| Value::Text(b.into())),
            ],
        }
    }

    /// A batch is cut by rows or by the bytes of its text values, whichever comes first,
    /// and the count starts over after `finish`.
    #[test]
    fn batches_are_cut_by_rows_or_by_value_bytes() {
        let def = TableDef::for_tests();
        let mut b = RowBatchBuilder::new(&def, def.arrow_schema(), 4).unwrap();
        b.push_owned(&row(1, Some("0123456789"), 1, false)).unwrap();
        assert!(!b.is_full_at(4, 25), "1 row, 10 bytes");
        b.push_owned(&row(2, None, 2, false)).unwrap();
        b.push_owned(&row(3, Some("0123456789"), 3, false)).unwrap();
        assert!(!b.is_full_at(4, 25), "3 rows, 20 bytes");
        assert!(b.is_full_at(3, 25), "by rows");
        b.push_owned(&row(4, Some("01234"), 4, false)).unwrap();
        assert!(b.is_full_at(10, 25), "by bytes: 25");
        assert_eq!(b.finish().unwrap().num_rows(), 4);
        assert!(!b.is_full_at(1, 1), "empty again");
    }

    /// Rows read in place and owned rows build the same batch, in the file schema (with
    /// `_seq`), and the builder starts over after `finish`.
    #[test]
    fn builds_batches_from_rows_read_in_place() {
        let def = TableDef::for_tests();
        let schema = file_schema(&def);
        let rows = [row(1, Some("a"), 7, false), row(2, None, 8, true)];
        let encoded: Vec<Vec<u8>> = rows.iter().map(|r| r.encode().unwrap()).collect();
        let mut b = RowBatchBuilder::new(&def, schema.clone(), 2).unwrap();
        for bytes in &encoded {
            b.push(&StoredRowRef::decode(bytes).unwrap()).unwrap();
        }
        assert_eq!(b.len(), 2);
        let in_place = b.finish().unwrap();
        assert!(b.is_empty());
        assert_eq!(rows_to_batch(&def, &schema, &rows).unwrap(), in_place);
        let ids = in_place
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids, &Int64Array::from(vec![1, 2]));
        let bodies = in_place
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(bodies, &StringArray::from(vec![Some("a"), None]));
        let deleted = in_place.column_by_name(DELETED_COLUMN).unwrap();
        assert_eq!(
            deleted.as_any().downcast_ref::<BooleanArray>().unwrap(),
            &BooleanArray::from(vec![false, true])
        );
        let seqs = in_place.column_by_name(SEQ_COLUMN).unwrap();
        assert_eq!(
            seqs.as_any().downcast_ref::<UInt64Array>().unwrap(),
            &UInt64Array::from(vec![7, 8])
        );
        b.push_owned(&rows[0]).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
    }

    /// A projection builds only its columns; an empty one (`count(*)`) still counts rows.
    #[test]
    fn builds_projections_and_row_counts() {
        let def = TableDef::for_tests();
        let table = def.arrow_schema();
        let rows = [row(1, Some("a"), 1, false), row(2, Some("b"), 2, false)];
        let body = Arc::new(table.project(&[1]).unwrap());
        let batch = rows_to_batch(&def, &body, &rows).unwrap();
        assert_eq!(batch.num_columns(), 1);
        assert_eq!(batch.schema().field(0).name(), "body");
        let none = Arc::new(Schema::empty());
        let batch = rows_to_batch(&def, &none, &rows).unwrap();
        assert_eq!((batch.num_columns(), batch.num_rows()), (0, 2));
    }

    /// A stored value of the wrong kind for its column is a storage error naming the type,
    /// not a panic or a silent NULL.
    #[test]
    fn refuses_values_of_another_type() {
        let def = TableDef::for_tests();
        let mut bad = row(1, None, 1, false);
        bad.values[1] = Value::Int(5);
        let err = rows_to_batch(&def, &def.arrow_schema(), &[bad]).unwrap_err();
        assert!(
            matches!(&err, KalamError::Storage(m) if m.contains("TEXT")),
            "{err:?}"
        );
    }
}
