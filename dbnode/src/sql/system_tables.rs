//! Read-only system tables built at query time: `system.namespaces` and `system.tables` from
//! the catalog, `system.jobs` from the job table, `system.live_queries` from the live-query
//! registry. (`system.users` is a real SHARED table; see
//! `engine`.)

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use crate::catalog::{
    human_duration, Catalog, KalamType, TableDef, TableKind, JSON_METADATA_KEY, TIMESTAMP_TZ,
};
use crate::error::{KalamError, Result};
use crate::ids::UserId;
use crate::jobs::{JobRecord, Jobs};
use crate::live::LiveHub;

pub const NAMESPACES: &str = "namespaces";
pub const TABLES: &str = "tables";
pub const USERS: &str = "users";
pub const JOBS: &str = "jobs";
pub const STORAGE_LOCATIONS: &str = "storage_locations";
pub const LIVE_QUERIES: &str = "live_queries";
/// Every table of the `system` namespace.
pub const ALL: &[&str] = &[
    NAMESPACES,
    TABLES,
    USERS,
    JOBS,
    STORAGE_LOCATIONS,
    LIVE_QUERIES,
];

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn json(name: &str) -> Field {
    text(name).with_metadata([(JSON_METADATA_KEY.to_string(), "json".to_string())].into())
}

fn timestamp(name: &str) -> Field {
    Field::new(name, KalamType::Timestamp.arrow(), false)
}

fn nullable_timestamp(name: &str) -> Field {
    Field::new(name, KalamType::Timestamp.arrow(), true)
}

fn float(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
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

fn optional_times(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v.collect::<Vec<_>>()).with_timezone(TIMESTAMP_TZ))
}

fn floats(v: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from(v.collect::<Vec<_>>()))
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

/// The table's options as JSON: a STREAM table's `retention`, `ephemeral` and `max_buffer`,
/// or the `deleted_retention` of a USER or SHARED table. Durations are spelled as they can be
/// written in `WITH (...)`.
pub fn table_options(t: &TableDef) -> serde_json::Value {
    match (&t.stream, t.kind) {
        (Some(s), TableKind::Stream) => serde_json::json!({
            "retention": human_duration(s.retention_secs),
            "ephemeral": s.ephemeral,
            "max_buffer": s.max_buffer,
        }),
        _ => serde_json::json!({ "deleted_retention": t.deleted_retention_text() }),
    }
}

/// `system.tables`: one row per table with its kind, location, policies and schema version.
/// A STREAM table has no location, flush policy or deleted_retention (`NULL`); its stream
/// options are in `options`. `storage_location` names the `system.storage_locations` row the
/// location was resolved from (what that row's `usage_count` counts).
pub fn tables(catalog: &Catalog) -> Result<Arc<dyn TableProvider>> {
    let rows = catalog.tables(None);
    fn cold(t: &TableDef) -> bool {
        t.kind != TableKind::Stream
    }
    snapshot(
        vec![
            text("table_name"),
            text("namespace"),
            text("table_type"),
            text("location"),
            text("storage_location"),
            text("flush_policy"),
            text("deleted_retention"),
            text("primary_key"),
            Field::new("schema_version", DataType::Int64, false),
            timestamp("created_at"),
            json("options"),
        ],
        vec![
            strings(rows.iter().map(|t| Some(t.name.to_string()))),
            strings(rows.iter().map(|t| Some(t.namespace.to_string()))),
            strings(rows.iter().map(|t| Some(t.kind.as_str().to_string()))),
            strings(rows.iter().map(|t| cold(t).then(|| t.location.to_string()))),
            strings(
                rows.iter()
                    .map(|t| t.storage.as_ref().and_then(|s| s.location_name.clone())),
            ),
            strings(
                rows.iter()
                    .map(|t| cold(t).then(|| t.flush_policy.to_string())),
            ),
            strings(
                rows.iter()
                    .map(|t| cold(t).then(|| t.deleted_retention_text())),
            ),
            strings(rows.iter().map(|t| Some(t.primary_key.to_string()))),
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|t| t.schema_version as i64)
                    .collect::<Vec<_>>(),
            )),
            times(rows.iter().map(|t| t.created_at.timestamp_micros())),
            strings(rows.iter().map(|t| Some(table_options(t).to_string()))),
        ],
    )
}

/// `system.jobs`: every job of this node, or only the viewer's own when `viewer` is a user
/// (admins pass `None`).
/// `system.live_queries`: the subscriptions registered now, the viewer's own unless admin.
pub fn live_queries(hub: &LiveHub, viewer: Option<&UserId>) -> Result<Arc<dyn TableProvider>> {
    let rows: Vec<_> = hub
        .list()
        .into_iter()
        .filter(|s| viewer.is_none_or(|u| &s.connection.principal.user_id == u))
        .collect();
    snapshot(
        vec![
            text("live_id"),
            text("connection_id"),
            text("namespace"),
            text("table_name"),
            text("query_id"),
            text("user_id"),
            text("query"),
            json("options"),
            timestamp("created_at"),
            timestamp("updated_at"),
            Field::new("changes", DataType::Int64, false),
            text("node"),
        ],
        vec![
            strings(rows.iter().map(|s| Some(s.live_id.clone()))),
            strings(rows.iter().map(|s| Some(s.connection.id.clone()))),
            strings(rows.iter().map(|s| Some(s.table.namespace.to_string()))),
            strings(rows.iter().map(|s| Some(s.table.table.to_string()))),
            strings(rows.iter().map(|s| Some(s.query_id.clone()))),
            strings(
                rows.iter()
                    .map(|s| Some(s.connection.principal.user_id.to_string())),
            ),
            strings(rows.iter().map(|s| Some(s.sql.clone()))),
            strings(rows.iter().map(|s| serde_json::to_string(&s.options).ok())),
            times(rows.iter().map(|s| s.created_at.timestamp_micros())),
            times(rows.iter().map(|s| s.updated_at().timestamp_micros())),
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|s| s.changes().min(i64::MAX as u64) as i64)
                    .collect::<Vec<_>>(),
            )),
            strings(rows.iter().map(|_| Some(hub.node_id().to_string()))),
        ],
    )
}

pub fn jobs(jobs: &Jobs, viewer: Option<&UserId>) -> Result<Arc<dyn TableProvider>> {
    let rows: Vec<JobRecord> = jobs
        .list()
        .into_iter()
        .filter(|r| viewer.is_none_or(|u| r.user_id.as_deref() == Some(u.as_str())))
        .collect();
    let now = chrono::Utc::now();
    // Running jobs show how long they have run so far.
    let duration_ms = |r: &JobRecord| {
        let micros = (r.end_time.unwrap_or(now) - r.start_time)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        micros.max(0) as f64 / 1000.0
    };
    snapshot(
        vec![
            text("job_id"),
            text("job_type"),
            text("namespace"),
            text("table_name"),
            text("user_id"),
            text("status"),
            timestamp("start_time"),
            nullable_timestamp("end_time"),
            float("duration_ms"),
            json("parameters"),
            json("result"),
            text("trace"),
            float("memory_used_mb"),
            float("cpu_used_percent"),
            text("node_id"),
            text("error_message"),
        ],
        vec![
            strings(rows.iter().map(|r| Some(r.job_id.clone()))),
            strings(rows.iter().map(|r| Some(r.job_type.as_str().to_string()))),
            strings(rows.iter().map(|r| r.namespace.clone())),
            strings(rows.iter().map(|r| r.table_name.clone())),
            strings(rows.iter().map(|r| r.user_id.clone())),
            strings(rows.iter().map(|r| Some(r.status.as_str().to_string()))),
            times(rows.iter().map(|r| r.start_time.timestamp_micros())),
            optional_times(
                rows.iter()
                    .map(|r| r.end_time.map(|t| t.timestamp_micros())),
            ),
            floats(rows.iter().map(duration_ms)),
            strings(
                rows.iter()
                    .map(|r| Some(serde_json::Value::from(r.parameters.clone()).to_string())),
            ),
            strings(rows.iter().map(|r| Some(r.result.to_string()))),
            strings(rows.iter().map(|r| Some(r.trace.join("\n")))),
            floats(rows.iter().map(|r| r.memory_used_mb)),
            floats(rows.iter().map(|r| r.cpu_used_percent)),
            strings(rows.iter().map(|r| Some(r.node_id.clone()))),
            strings(rows.iter().map(|r| r.error_message.clone())),
        ],
    )
}

/// `system.storage_locations`: the built-in `local` row, then the admins' rows, each with
/// the number of tables using it. Credentials are a reference, never the secret.
pub fn storage_locations(
    catalog: &Catalog,
    storage_dir: &std::path::Path,
) -> Result<Arc<dyn TableProvider>> {
    let mut rows = vec![crate::catalog::StorageLocationDef {
        name: crate::cold::LOCAL_LOCATION.to_string(),
        kind: crate::catalog::LocationKind::Filesystem,
        path: storage_dir.display().to_string(),
        credentials_ref: None,
        created_at: chrono::DateTime::UNIX_EPOCH,
    }];
    rows.extend(catalog.locations());
    let usage: Vec<i64> = rows
        .iter()
        .map(|r| catalog.location_users(&r.name).len() as i64)
        .collect();
    snapshot(
        vec![
            text("location_name"),
            text("location_type"),
            text("path"),
            text("credentials_ref"),
            timestamp("created_at"),
            Field::new("usage_count", DataType::Int64, false),
        ],
        vec![
            strings(rows.iter().map(|r| Some(r.name.clone()))),
            strings(rows.iter().map(|r| Some(r.kind.as_str().to_string()))),
            strings(rows.iter().map(|r| Some(r.path.clone()))),
            strings(rows.iter().map(|r| r.credentials_ref.clone())),
            times(rows.iter().map(|r| r.created_at.timestamp_micros())),
            Arc::new(Int64Array::from(usage)),
        ],
    )
}

/// A system table whose rows depend on who asks: built again for each scan from the
/// request's context (users see their own jobs; storage locations are for admins).
pub struct PerRequest {
    schema: datafusion::arrow::datatypes::SchemaRef,
    build: Box<
        dyn Fn(&crate::sql::provider::RequestContext) -> Result<Arc<dyn TableProvider>>
            + Send
            + Sync,
    >,
}

impl std::fmt::Debug for PerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerRequest")
    }
}

impl PerRequest {
    /// `admin_view` gives the schema; `build` the rows for one request.
    pub fn new(
        admin_view: Arc<dyn TableProvider>,
        build: impl Fn(&crate::sql::provider::RequestContext) -> Result<Arc<dyn TableProvider>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            schema: admin_view.schema(),
            build: Box::new(build),
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for PerRequest {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        datafusion::logical_expr::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let ctx = crate::sql::provider::request_context(state)?;
        let inner = (self.build)(&ctx).map_err(KalamError::into_datafusion)?;
        inner.scan(state, projection, filters, limit).await
    }
}
