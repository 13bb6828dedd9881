//! Encodes Arrow results as the JSON values of API.md: numbers, booleans, strings, `null`,
//! RFC 3339 UTC timestamps with microseconds, JSON columns as nested values, binary as
//! base64, decimals as exact strings.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, Float16Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use kalam_client::wire::{ColumnInfo, QueryResult, Row};
use serde_json::{Number, Value as Json};

use crate::catalog::JSON_METADATA_KEY;
use crate::error::{KalamError, Result};

fn is_json(field: &Field) -> bool {
    field
        .metadata()
        .get(JSON_METADATA_KEY)
        .is_some_and(|v| v == "json")
}

/// The type name shown in `columns`: Arrow's, except JSON columns, which say `Json`.
pub fn type_name(field: &Field) -> String {
    if is_json(field) {
        "Json".to_string()
    } else {
        field.data_type().to_string()
    }
}

/// Column names as they appear in rows. Rows are JSON objects, so a name the result repeats
/// (`SELECT * FROM a JOIN b` with `id` on both sides) gets a suffix (`id_2`) instead of
/// silently overwriting the first value.
fn unique_names(schema: &SchemaRef) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let mut name = f.name().clone();
        let mut n = 2;
        while seen.contains(&name) {
            name = format!("{}_{n}", f.name());
            n += 1;
        }
        seen.insert(name.clone());
        out.push(name);
    }
    out
}

/// A result set: columns from `schema`, rows from `batches`.
pub fn query_result(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<QueryResult> {
    let names = unique_names(schema);
    let mut rows = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for batch in batches {
        let encoders: Vec<Encoder> = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(a, f)| Encoder::new(a, f))
            .collect::<Result<_>>()?;
        for i in 0..batch.num_rows() {
            let mut row = Row::with_capacity(encoders.len());
            for (enc, name) in encoders.iter().zip(&names) {
                row.insert(name.clone(), enc.value(i)?);
            }
            rows.push(row);
        }
    }
    Ok(QueryResult {
        columns: names
            .into_iter()
            .zip(schema.fields())
            .map(|(name, f)| ColumnInfo {
                name,
                data_type: type_name(f),
            })
            .collect(),
        row_count: rows.len(),
        rows,
        affected_rows: None,
        message: None,
        execution_time_ms: 0.0,
    })
}

struct Encoder<'a> {
    array: &'a ArrayRef,
    json: bool,
    fallback: Option<ArrayFormatter<'a>>,
}

fn float(f: f64) -> Json {
    Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(f.to_string()))
}

/// A time beyond what RFC 3339 text can show (chrono's years -262143 to 262142): an error,
/// never a `null` that would read as a missing value.
fn out_of_range(what: &str) -> KalamError {
    KalamError::NumericOutOfRange(format!(
        "a {what} in the result is outside the range results can show (years -262143 to 262142)"
    ))
}

/// Microseconds since the epoch as RFC 3339 text (`None`: converting to them overflowed).
fn timestamp(micros: Option<i64>) -> Result<Json> {
    micros
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| Json::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)))
        .ok_or_else(|| out_of_range("timestamp"))
}

impl<'a> Encoder<'a> {
    fn new(array: &'a ArrayRef, field: &Field) -> Result<Self> {
        let native = matches!(
            array.data_type(),
            DataType::Null
                | DataType::Boolean
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
        );
        let fallback = if native {
            None
        } else {
            Some(
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                    .map_err(KalamError::internal)?,
            )
        };
        Ok(Self {
            array,
            json: is_json(field),
            fallback,
        })
    }

    fn value(&self, i: usize) -> Result<Json> {
        let a = self.array;
        if a.is_null(i) {
            return Ok(Json::Null);
        }
        if let Some(f) = &self.fallback {
            return Ok(Json::String(f.value(i).to_string()));
        }
        let text = |s: &str| -> Json {
            if self.json {
                serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.to_string()))
            } else {
                Json::String(s.to_string())
            }
        };
        let b64 = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
        Ok(match a.data_type() {
            DataType::Boolean => Json::Bool(a.as_boolean().value(i)),
            DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
            DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
            DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
            DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
            DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
            DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
            DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
            DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
            DataType::Float16 => float(a.as_primitive::<Float16Type>().value(i).to_f64()),
            DataType::Float32 => float(a.as_primitive::<Float32Type>().value(i) as f64),
            DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
            DataType::Utf8 => text(a.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => text(a.as_string::<i64>().value(i)),
            DataType::Utf8View => text(a.as_string_view().value(i)),
            DataType::Binary => b64(a.as_binary::<i32>().value(i)),
            DataType::LargeBinary => b64(a.as_binary::<i64>().value(i)),
            DataType::BinaryView => b64(a.as_binary_view().value(i)),
            DataType::Date32 => {
                let days = a.as_primitive::<Date32Type>().value(i);
                NaiveDate::from_epoch_days(days)
                    .map(|d| Json::String(d.to_string()))
                    .ok_or_else(|| out_of_range("date"))?
            }
            DataType::Date64 => {
                timestamp(a.as_primitive::<Date64Type>().value(i).checked_mul(1000))?
            }
            DataType::Timestamp(unit, _) => timestamp(match unit {
                TimeUnit::Second => a
                    .as_primitive::<TimestampSecondType>()
                    .value(i)
                    .checked_mul(1_000_000),
                TimeUnit::Millisecond => a
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i)
                    .checked_mul(1000),
                TimeUnit::Microsecond => {
                    Some(a.as_primitive::<TimestampMicrosecondType>().value(i))
                }
                TimeUnit::Nanosecond => Some(
                    a.as_primitive::<TimestampNanosecondType>()
                        .value(i)
                        .div_euclid(1000),
                ),
            })?,
            _ => Json::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BinaryArray, Decimal128Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::Schema;

    #[test]
    fn values_follow_the_contract() {
        let json_field = Field::new("meta", DataType::Utf8, true)
            .with_metadata([(JSON_METADATA_KEY.to_string(), "json".to_string())].into());
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            json_field,
            Field::new("b", DataType::Binary, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_795_773_600_000_123), None])
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec![Some(r#"{"a":[1,2]}"#), None])),
                Arc::new(BinaryArray::from(vec![Some(&b"hi"[..]), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1234), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let r = query_result(&schema, &[batch]).unwrap();
        assert_eq!(r.row_count, 2);
        assert_eq!(r.columns[1].data_type, "Json");
        let row = serde_json::to_value(&r.rows[0]).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"ts": "2026-11-27T10:00:00.000123Z", "meta": {"a": [1, 2]}, "b": "aGk=", "d": "12.34"})
        );
        assert!(r.rows[1].values().all(|v| v.is_null()));
    }

    #[test]
    fn repeated_column_names_keep_every_value() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("id_2", DataType::Int64, false),
        ]));
        let col =
            |v: i64| Arc::new(datafusion::arrow::array::Int64Array::from(vec![v])) as ArrayRef;
        let batch = RecordBatch::try_new(schema.clone(), vec![col(1), col(2), col(3)]).unwrap();
        let r = query_result(&schema, &[batch]).unwrap();
        let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "id_2", "id_2_2"]);
        assert_eq!(
            serde_json::to_value(&r.rows[0]).unwrap(),
            serde_json::json!({"id": 1, "id_2": 2, "id_2_2": 3})
        );
    }
}
