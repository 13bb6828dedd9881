//! The `TableProvider` of USER and SHARED tables: one implementation, parametrised by the
//! partition it reads and writes (the request's user for USER tables, the single shared
//! partition for SHARED ones). The partition comes from the request's [`RequestContext`],
//! so no statement can name another user's rows.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::auth::Principal;
use crate::catalog::{KalamType, TableDef, TableKind, DELETED_COLUMN};
use crate::engine::TableRuntime;
use crate::error::KalamError;
use crate::ids::{UserId, SYSTEM_NAMESPACE};
use crate::sql::rows::{batch_to_values, rows_to_batch};
use crate::storage::{Partition, RowKey, StoredRow, Value};

/// Who a request runs as; stored in the DataFusion session config of every request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub principal: Principal,
    /// The user whose partitions USER tables resolve to (`as_user`, or the caller).
    pub user: UserId,
}

const BATCH_ROWS: usize = 8192;

pub fn request_context(state: &dyn Session) -> DfResult<Arc<RequestContext>> {
    state
        .config()
        .get_extension::<RequestContext>()
        .ok_or_else(|| KalamError::internal("query without a request context").into_datafusion())
}

/// The partition a request's statements touch in a table: the request's user for USER
/// tables, the one shared partition otherwise. Every read and write path asks this.
pub fn partition_for(def: &TableDef, ctx: &RequestContext) -> Partition {
    match def.kind {
        TableKind::User => Partition::User(ctx.user.clone()),
        TableKind::Shared | TableKind::Stream => Partition::Shared,
    }
}

#[derive(Debug)]
pub struct HotTableProvider {
    rt: Arc<TableRuntime>,
}

impl HotTableProvider {
    pub fn new(rt: Arc<TableRuntime>) -> Self {
        Self { rt }
    }

    fn partition(&self, state: &dyn Session) -> DfResult<Partition> {
        let ctx = request_context(state)?;
        let def = self.rt.def();
        if def.namespace.as_str() == SYSTEM_NAMESPACE && !ctx.principal.is_admin() {
            return Err(
                KalamError::Forbidden(format!("{} is readable by admins only", def.id()))
                    .into_datafusion(),
            );
        }
        Ok(partition_for(def, &ctx))
    }

    /// `pk = literal` among the filters: the scan becomes one point read.
    fn point_key(&self, filters: &[Expr]) -> Option<RowKey> {
        let def = self.rt.def();
        let pk = def.primary_key.as_str();
        filters.iter().find_map(|f| {
            let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = f
            else {
                return None;
            };
            let (col, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                    (c, v)
                }
                _ => return None,
            };
            if col.name != pk {
                return None;
            }
            let is_int = matches!(
                def.columns[def.primary_key_index()].data_type,
                KalamType::SmallInt | KalamType::Int | KalamType::BigInt
            );
            match value {
                ScalarValue::Int64(Some(i)) if is_int => Some(RowKey::from_int(*i)),
                ScalarValue::Int32(Some(i)) if is_int => Some(RowKey::from_int(*i as i64)),
                ScalarValue::Int16(Some(i)) if is_int => Some(RowKey::from_int(*i as i64)),
                ScalarValue::Utf8(Some(s)) if !is_int => Some(RowKey::from_text(s)),
                _ => None,
            }
        })
    }
}

/// A filter that names `_deleted` turns off the default hiding of soft-deleted rows.
fn mentions_deleted(filters: &[Expr]) -> bool {
    filters.iter().any(|f| {
        f.column_refs()
            .iter()
            .any(|c: &&Column| c.name == DELETED_COLUMN)
    })
}

#[async_trait]
impl TableProvider for HotTableProvider {
    fn schema(&self) -> SchemaRef {
        self.rt.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.rt.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters are used to pick rows (point reads, `_deleted`), and DataFusion applies
        // them again on what the scan returns.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partition = self.partition(state)?;
        let include_deleted = !self.rt.def().kind.has_system_columns() || mentions_deleted(filters);
        let store = &self.rt.store;
        let rows: Vec<StoredRow> = match self.point_key(filters) {
            Some(key) => store
                .get(&partition, &key)
                .map_err(KalamError::into_datafusion)?
                .filter(|r| include_deleted || !r.deleted)
                .into_iter()
                .collect(),
            None => {
                let limit = if filters.is_empty() { limit } else { None };
                store
                    .scan(&partition, include_deleted, limit)
                    .map_err(KalamError::into_datafusion)?
            }
        };
        let def = self.rt.def();
        let batches = rows
            .chunks(BATCH_ROWS)
            .map(|chunk| rows_to_batch(def, &self.rt.schema, chunk))
            .collect::<Result<Vec<_>, _>>()
            .map_err(KalamError::into_datafusion)?;
        let exec = MemorySourceConfig::try_new_exec(
            &[batches],
            self.rt.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(KalamError::Unsupported(format!(
                "{insert_op} is not supported; use INSERT INTO"
            ))
            .into_datafusion());
        }
        let partition = self.partition(state)?;
        let ctx = request_context(state)?;
        if self.rt.def().namespace.as_str() == SYSTEM_NAMESPACE && !ctx.principal.is_admin() {
            return Err(KalamError::Forbidden(
                "writing system tables requires an admin token".into(),
            )
            .into_datafusion());
        }
        // NOT NULL is checked by the store with the column's name in the message, so the
        // sink declares every field nullable and DataFusion's positional check stays out.
        let nullable = Schema::new(
            self.rt
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        let sink = InsertSink {
            rt: self.rt.clone(),
            partition,
            schema: Arc::new(nullable),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Receives the rows of an INSERT and writes them as one atomic batch.
#[derive(Debug)]
struct InsertSink {
    rt: Arc<TableRuntime>,
    partition: Partition,
    schema: SchemaRef,
}

impl DisplayAs for InsertSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "KalamInsert: {}", self.rt.def().id())
    }
}

#[async_trait]
impl DataSink for InsertSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _ctx: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let def = self.rt.def();
        let mut rows: Vec<Vec<Value>> = Vec::new();
        while let Some(batch) = data.next().await {
            rows.extend(batch_to_values(def, &batch?).map_err(KalamError::into_datafusion)?);
        }
        self.rt
            .store
            .insert(&self.partition, rows)
            .map_err(KalamError::into_datafusion)
    }
}
