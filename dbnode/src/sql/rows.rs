//! Conversions between stored rows and Arrow: hot-tier rows become `RecordBatch`es for
//! DataFusion, and the batches an INSERT or UPDATE produces become stored values.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimestampMicrosecondType,
};

use datafusion::common::ScalarValue;

use crate::catalog::{KalamType, TableDef, TIMESTAMP_TZ};
use crate::error::{KalamError, Result};
use crate::storage::{StoredRow, Value};

/// Builds one batch of the table's full schema (user columns, then system columns).
pub fn rows_to_batch(
    def: &TableDef,
    schema: &SchemaRef,
    rows: &[StoredRow],
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, col) in def.columns.iter().enumerate() {
        columns.push(build_column(
            col.data_type,
            n,
            rows.iter().map(|r| r.values.get(i).unwrap_or(&Value::Null)),
        )?);
    }
    if def.kind.has_system_columns() {
        let mut updated = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(TIMESTAMP_TZ);
        let mut deleted = BooleanBuilder::with_capacity(n);
        for r in rows {
            updated.append_value(r.updated_micros);
            deleted.append_value(r.deleted);
        }
        columns.push(Arc::new(updated.finish()));
        columns.push(Arc::new(deleted.finish()));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(KalamError::internal)
}

/// A stored value as a DataFusion scalar of the column's Arrow type (a fill value of a
/// column that a Parquet file's schema version lacks).
pub fn value_to_scalar(t: KalamType, v: &Value) -> Result<ScalarValue> {
    let array = build_column(t, 1, std::iter::once(v))?;
    ScalarValue::try_from_array(&array, 0).map_err(KalamError::internal)
}

fn mismatch(t: KalamType, v: &Value) -> KalamError {
    KalamError::Storage(format!(
        "stored value {v:?} does not fit column type {}",
        t.sql_name()
    ))
}

fn build_column<'a>(
    t: KalamType,
    n: usize,
    values: impl Iterator<Item = &'a Value>,
) -> Result<ArrayRef> {
    macro_rules! build {
        ($builder:expr, $($pat:pat => $val:expr),+) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    $($pat => b.append_value($val),)+
                    other => return Err(mismatch(t, other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match t {
        KalamType::Boolean => build!(BooleanBuilder::with_capacity(n), Value::Bool(b) => *b),
        KalamType::SmallInt => build!(Int16Builder::with_capacity(n), Value::Int(i) => *i as i16),
        KalamType::Int => build!(Int32Builder::with_capacity(n), Value::Int(i) => *i as i32),
        KalamType::BigInt => build!(Int64Builder::with_capacity(n), Value::Int(i) => *i),
        KalamType::Float => build!(Float32Builder::with_capacity(n), Value::Float(f) => *f as f32),
        KalamType::Double => build!(Float64Builder::with_capacity(n), Value::Float(f) => *f),
        KalamType::Decimal { precision, scale } => build!(
            Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(precision, scale)
                .map_err(KalamError::internal)?,
            Value::Decimal(d) => *d
        ),
        KalamType::Text | KalamType::Json => {
            build!(StringBuilder::with_capacity(n, n * 16), Value::Text(s) => s)
        }
        KalamType::Bytes => build!(BinaryBuilder::with_capacity(n, n * 16), Value::Bytes(b) => b),
        KalamType::Date => build!(Date32Builder::with_capacity(n), Value::Date(d) => *d),
        KalamType::Timestamp => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone(TIMESTAMP_TZ),
            Value::Timestamp(t) => *t
        ),
    })
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
        KalamType::Date => Value::Date(array.as_primitive::<Date32Type>().value(i)),
        KalamType::Timestamp => {
            Value::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(i))
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
