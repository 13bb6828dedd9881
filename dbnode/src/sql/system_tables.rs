//! Read-only system tables built from the catalog at query time: `system.namespaces` and
//! `system.tables`. (`system.users` is a real SHARED table; see `engine`.)

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use crate::catalog::{Catalog, KalamType, JSON_METADATA_KEY, TIMESTAMP_TZ};
use crate::error::{KalamError, Result};

pub const NAMESPACES: &str = "namespaces";
pub const TABLES: &str = "tables";
pub const USERS: &str = "users";
/// Every table of the `system` namespace.
pub const ALL: &[&str] = &[NAMESPACES, TABLES, USERS];

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn json(name: &str) -> Field {
    text(name).with_metadata([(JSON_METADATA_KEY.to_string(), "json".to_string())].into())
}

fn timestamp(name: &str) -> Field {
    Field::new(name, KalamType::Timestamp.arrow(), false)
}

fn snapshot(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(KalamError::internal)?;
    Ok(Arc::new(
        MemTable::try_new(schema, vec![vec![batch]]).map_err(KalamError::internal)?,
    ))
}

fn strings<'a>(v: impl Iterator<Item = Option<String>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn times(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v.collect::<Vec<_>>()).with_timezone(TIMESTAMP_TZ))
}

/// `system.namespaces`: name, created_at, table_count, options (JSON).
pub fn namespaces(catalog: &Catalog) -> Result<Arc<dyn TableProvider>> {
    let rows = catalog.namespaces();
    snapshot(
        vec![
            text("name"),
            timestamp("created_at"),
            Field::new("table_count", DataType::Int64, false),
            json("options"),
        ],
        vec![
            strings(rows.iter().map(|(d, _)| Some(d.name.to_string()))),
            times(rows.iter().map(|(d, _)| d.created_at.timestamp_micros())),
            Arc::new(Int64Array::from(
                rows.iter().map(|(_, n)| *n as i64).collect::<Vec<_>>(),
            )),
            strings(
                rows.iter()
                    .map(|(d, _)| Some(serde_json::Value::Object(d.options.clone()).to_string())),
            ),
        ],
    )
}

/// `system.tables`: one row per table with its kind, location, policies and schema version.
pub fn tables(catalog: &Catalog) -> Result<Arc<dyn TableProvider>> {
    let rows = catalog.tables(None);
    snapshot(
        vec![
            text("table_name"),
            text("namespace"),
            text("table_type"),
            text("location"),
            text("flush_policy"),
            text("deleted_retention"),
            text("primary_key"),
            Field::new("schema_version", DataType::Int64, false),
            timestamp("created_at"),
        ],
        vec![
            strings(rows.iter().map(|t| Some(t.name.to_string()))),
            strings(rows.iter().map(|t| Some(t.namespace.to_string()))),
            strings(rows.iter().map(|t| Some(t.kind.as_str().to_string()))),
            strings(rows.iter().map(|t| Some(t.location.to_string()))),
            strings(rows.iter().map(|t| Some(t.flush_policy.to_string()))),
            strings(rows.iter().map(|t| Some(t.deleted_retention_text()))),
            strings(rows.iter().map(|t| Some(t.primary_key.to_string()))),
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|t| t.schema_version as i64)
                    .collect::<Vec<_>>(),
            )),
            times(rows.iter().map(|t| t.created_at.timestamp_micros())),
        ],
    )
}
