//! Runs one parsed statement for one request: KalamDB DDL against the catalog, queries and
//! INSERT through DataFusion, and UPDATE / DELETE as a DataFusion query for the affected rows
//! followed by one write of their new versions.
//!
//! UPDATE and DELETE do not use DataFusion's `TableProvider::update/delete_from` hooks: those
//! receive the WHERE clause as pushed-down filters, and releases before apache/datafusion
//! #24654 passed an `IN (subquery)` or always-false WHERE as "no filter". Selecting the rows
//! with a full query evaluates any WHERE exactly as a SELECT would.

use std::sync::Arc;

use datafusion::arrow::array::{
    AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimestampMicrosecondType, UInt64Type,
};
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::FunctionRegistry;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr as SqlExpr, FromTable, Ident, Insert, ObjectName,
    ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    Update,
};
use futures::StreamExt;
use kalam_client::wire::{ColumnInfo, QueryResult, Row};
use serde_json::json;

use crate::backup;
use crate::catalog::{
    human_duration, ColumnDef, KalamType, LocationKind, LocationSpec, NamespaceDef,
    StorageLocationDef, TableDef, TableKind, DELETED_COLUMN, TIMESTAMP_TZ, UPDATED_COLUMN,
};
use crate::cold::location;
use crate::engine::{compile_default, Engine, TableRuntime};
use crate::error::{clip, KalamError, Result};
use crate::flush::Flusher;
use crate::ids::{TableId, SYSTEM_NAMESPACE};
use crate::purge::Purger;
use crate::sql::ddl::Alteration;
use crate::sql::functions::{self, SnowflakeGenerator};
use crate::sql::parser::{table_id_from_object_name, AlterChange, KalamStatement};
use crate::sql::provider::{partition_for, request_context, RequestContext};
use crate::sql::rows::{batch_to_values, cast_to_column, value_at};
use crate::sql::schema::{KalamCatalogList, CATALOG};
use crate::sql::yield_points::{self, StatementDeadline};
use crate::sql::{arithmetic, checked_sum};
use crate::sql::{ddl, fast_insert, literals, output, system_tables};
use crate::storage::table::RowChange;
use crate::storage::Value;

/// The DataFusion state every request starts from: configuration and KalamDB's functions.
/// Without `catalogs` it can compile expressions (DEFAULTs) but resolve no table.
pub fn planner_state(
    snowflake: Arc<SnowflakeGenerator>,
    catalogs: Option<Arc<KalamCatalogList>>,
    runtime: Arc<RuntimeEnv>,
) -> SessionState {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, "public")
        .with_create_default_catalog_and_schema(false)
        .with_target_partitions(2);
    // Scans report row estimates (hot rows exactly, Parquet files from the manifest): a scan
    // of fewer rows than a batch is not split across threads, which for the usual read of
    // one user's few thousand rows costs more than it saves.
    config
        .options_mut()
        .execution
        .use_row_number_estimates_to_optimize_partitioning = true;
    // No single function result may be larger than all queries together may hold.
    let max_value_bytes = match runtime.memory_pool.memory_limit() {
        MemoryLimit::Finite(bytes) => bytes,
        MemoryLimit::Infinite | MemoryLimit::Unknown => 1 << 30,
    };
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(yield_points::YieldPoints));
    if let Some(c) = catalogs {
        builder = builder.with_catalog_list(c);
    }
    let mut state = builder.build();
    // Registering a function into a fresh state cannot clash with anything.
    let _ = state.register_udf(Arc::new(functions::snowflake_id(snowflake)));
    functions::bound_output_sizes(&mut state, max_value_bytes);
    // Adding a rewrite to a fresh state cannot fail either.
    let _ = state.register_function_rewrite(Arc::new(arithmetic::CheckedIntegerArithmetic));
    // In place of the built-in `sum`, under its name.
    let _ = state.register_udaf(Arc::new(checked_sum::CheckedSum::udaf()));
    state
}

#[derive(Debug)]
pub struct Executor {
    engine: Arc<Engine>,
    flusher: Arc<Flusher>,
    purger: Arc<Purger>,
    snowflake: Arc<SnowflakeGenerator>,
    base: SessionState,
    max_result_rows: usize,
    /// Each statement's limit (`statement_timeout_ms`); `None` for no limit.
    statement_timeout: Option<std::time::Duration>,
}

fn admin_only(ctx: &RequestContext, what: &str) -> Result<()> {
    if ctx.principal.is_admin() {
        Ok(())
    } else {
        Err(KalamError::Forbidden(format!(
            "{what} requires an admin token"
        )))
    }
}

fn message(text: impl Into<String>) -> QueryResult {
    QueryResult {
        message: Some(text.into()),
        ..Default::default()
    }
}

fn affected(n: u64) -> QueryResult {
    QueryResult {
        affected_rows: Some(n),
        ..Default::default()
    }
}

/// A column as SQL names it: unquoted identifiers fold to lower case, as DataFusion folds them.
fn column_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(part) => match part.as_ident() {
            Some(id) if id.quote_style.is_none() => id.value.to_ascii_lowercase(),
            Some(id) => id.value.clone(),
            None => part.to_string(),
        },
        None => String::new(),
    }
}

/// How often an UPDATE or DELETE re-reads its rows after a concurrent writer changed them.
const WRITE_ATTEMPTS: usize = 8;

/// `_updated` and `_deleted` of each row of a DML read (its last two columns).
/// A `SELECT` the node wrote (`template`: its own keywords and identifiers, no client text)
/// with a client's expressions put in as syntax trees: `from` as its FROM, `selection` as
/// its WHERE, and each of `extra` as `(<expr>) AS "<alias>"` from select item `extra.0` on.
/// Never through text: sqlparser prints a string literal holding `''` or `\'` in a form
/// that parses back as another value (or lets a `$1` value end its literal and add SQL).
pub(crate) fn splice_select(
    state: &SessionState,
    template: &str,
    from: Option<&TableWithJoins>,
    selection: Option<&SqlExpr>,
    extra: (usize, &[(&SqlExpr, String)]),
) -> Result<DfStatement> {
    let mut stmt = state.sql_to_statement(template, &datafusion::config::Dialect::Generic)?;
    let DfStatement::Statement(parsed) = &mut stmt else {
        return Err(KalamError::internal("a node query is not a statement"));
    };
    let Statement::Query(query) = parsed.as_mut() else {
        return Err(KalamError::internal("a node query is not a query"));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(KalamError::internal("a node query is not a SELECT"));
    };
    let (at, items) = extra;
    if at > select.projection.len() {
        return Err(KalamError::internal("extra select items past the end"));
    }
    for (n, (expr, alias)) in items.iter().enumerate() {
        select.projection.insert(
            at + n,
            SelectItem::ExprWithAlias {
                expr: SqlExpr::Nested(Box::new((*expr).clone())),
                alias: Ident::with_quote('"', alias),
            },
        );
    }
    if let Some(from) = from {
        select.from = vec![from.clone()];
    }
    select.selection = selection.cloned();
    Ok(stmt)
}

fn read_versions(batch: &RecordBatch) -> Result<Vec<(i64, bool)>> {
    let n = batch.num_columns();
    let (Some(updated), Some(deleted)) = (
        n.checked_sub(2).map(|i| batch.column(i)),
        n.checked_sub(1).map(|i| batch.column(i)),
    ) else {
        return Err(KalamError::internal("DML read without version columns"));
    };
    let updated = updated
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| KalamError::internal("_updated is not a timestamp"))?;
    let deleted = deleted
        .as_boolean_opt()
        .ok_or_else(|| KalamError::internal("_deleted is not a boolean"))?;
    Ok((0..batch.num_rows())
        .map(|i| (updated.value(i), deleted.value(i)))
        .collect())
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

impl Executor {
    pub fn new(
        engine: Arc<Engine>,
        flusher: Arc<Flusher>,
        purger: Arc<Purger>,
        snowflake: Arc<SnowflakeGenerator>,
        base: SessionState,
        max_result_rows: usize,
        statement_timeout: Option<std::time::Duration>,
    ) -> Self {
        Self {
            engine,
            flusher,
            purger,
            snowflake,
            base,
            max_result_rows,
            statement_timeout,
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The session a request's statement plans in: its user, its `CURRENT_USER()`, and
    /// from now its deadline (`statement_timeout_ms`, checked at the plan's yield points).
    pub fn state(&self, ctx: &Arc<RequestContext>) -> SessionState {
        let mut state = self.base.clone();
        state.config_mut().set_extension(ctx.clone());
        if let Some(limit) = self.statement_timeout {
            state
                .config_mut()
                .set_extension(Arc::new(StatementDeadline::after(limit)));
        }
        // NOW() and friends are folded to this instant by the optimizer.
        state.mark_start_execution();
        let _ = state.register_udf(Arc::new(functions::current_user(ctx.user.as_str())));
        state
    }

    pub async fn execute(
        &self,
        ctx: &Arc<RequestContext>,
        stmt: KalamStatement,
    ) -> Result<QueryResult> {
        let catalog = &self.engine.catalog;
        match stmt {
            KalamStatement::CreateNamespace { name, if_not_exists, options } => {
                admin_only(ctx, "CREATE NAMESPACE")?;
                let def = NamespaceDef { name: name.clone(), created_at: chrono::Utc::now(), options };
                Ok(if catalog.create_namespace(def, if_not_exists)? {
                    message(format!("namespace {name} created"))
                } else {
                    message(format!("namespace {name} already exists"))
                })
            }
            KalamStatement::AlterNamespace { name, options } => {
                admin_only(ctx, "ALTER NAMESPACE")?;
                catalog.alter_namespace_options(&name, options)?;
                Ok(message(format!("namespace {name} altered")))
            }
            KalamStatement::DropNamespace { name, if_exists } => {
                admin_only(ctx, "DROP NAMESPACE")?;
                Ok(if self.engine.drop_namespace(&name, if_exists)? {
                    message(format!("namespace {name} dropped"))
                } else {
                    message(format!("namespace {name} does not exist"))
                })
            }
            KalamStatement::ShowNamespaces => {
                self.query_text(ctx, "SELECT name, created_at, table_count, options FROM system.namespaces ORDER BY name")
                    .await
            }
            KalamStatement::CreateTable(c) => {
                admin_only(ctx, "CREATE TABLE")?;
                if catalog.namespace(&c.table.namespace).is_none() {
                    return Err(KalamError::NamespaceNotFound(c.table.namespace.to_string()));
                }
                let mut def = ddl::table_def(&c, |text, t| compile_default(&self.base, text, t).map(|_| ()))?;
                // Without LOCATION, a node configured with `default_location` records that
                // row as if the statement said `LOCATION REFERENCE '<name>'`: the table keeps
                // it when the config changes later. A missing row is an error, never `local`.
                let configured_default = self.engine.default_location.clone().filter(|_| {
                    def.kind != TableKind::Stream && matches!(def.location, LocationSpec::Default)
                });
                if let Some(name) = &configured_default {
                    def.location = LocationSpec::Reference(name.clone());
                }
                // A STREAM table has no cold tier: it resolves no location and counts towards
                // no location's `usage_count`.
                def.storage = match def.kind {
                    TableKind::Stream => None,
                    TableKind::User | TableKind::Shared => Some(
                        location::resolve(
                            catalog,
                            self.engine.cold.storage_dir(),
                            &def.id(),
                            def.kind,
                            &def.location,
                        )
                        .map_err(|e| match (e, &configured_default) {
                            (KalamError::StorageLocationNotFound(_), Some(name)) => {
                                KalamError::DefaultStorageLocationNotFound(clip(name))
                            }
                            (e, _) => e,
                        })?,
                    ),
                };
                // A dropped table's files that are still being removed where this table's
                // would go are removed first: the purge deletes by path.
                if let Some(storage) = &def.storage {
                    if catalog.table(&def.id()).is_none() {
                        self.purger.clear_way(storage).await?;
                    }
                }
                let id = def.id();
                Ok(if self.engine.create_table(def, c.if_not_exists, &self.base)? {
                    message(format!("{} table {id} created", c.kind.as_str()))
                } else {
                    message(format!("table {id} already exists"))
                })
            }
            KalamStatement::DropTable { table, kind, if_exists } => {
                admin_only(ctx, "DROP TABLE")?;
                match catalog.table(&table) {
                    None if if_exists => Ok(message(format!("table {table} does not exist"))),
                    None => Err(KalamError::TableNotFound(table.to_string())),
                    Some(def) if kind.is_some_and(|k| k != def.kind) => Err(KalamError::SqlPlan(format!(
                        "{table} is a {} table, not a {} table",
                        def.kind.as_str().to_uppercase(),
                        kind.map(|k| k.as_str().to_uppercase()).unwrap_or_default()
                    ))),
                    Some(_) => {
                        let dropped = self.engine.drop_table(&table)?;
                        let Some(purge) = dropped.purge else {
                            return Ok(message(format!("table {table} dropped")));
                        };
                        // The table is gone; its files go in the background, and a job that
                        // cannot start now is retried by the scheduler.
                        match self.purger.start(purge, dropped.store, "drop", Some(&ctx.principal.user_id)) {
                            Ok(job) => Ok(message(format!(
                                "table {table} dropped; its files are removed by job {job}"
                            ))),
                            Err(e) => {
                                tracing::warn!(%table, error = %e, "could not start the purge of a dropped table; it is retried");
                                Ok(message(format!(
                                    "table {table} dropped; removing its files is retried in the background"
                                )))
                            }
                        }
                    }
                }
            }
            KalamStatement::ShowTables { namespace } => {
                let filter = match &namespace {
                    Some(ns) if catalog.namespace(ns).is_none() => {
                        return Err(KalamError::NamespaceNotFound(ns.to_string()))
                    }
                    Some(ns) => format!("WHERE namespace = '{ns}'"),
                    None => String::new(),
                };
                self.query_text(
                    ctx,
                    &format!(
                        "SELECT table_name, namespace, table_type, location, flush_policy, options FROM system.tables {filter} \
                         ORDER BY namespace, table_name"
                    ),
                )
                .await
            }
            KalamStatement::DescribeTable { table, history: false } => self.describe(&table),
            KalamStatement::DescribeTable { table, history: true } => self.describe_history(&table),
            KalamStatement::AlterTable { table, change } => self.alter_table(ctx, &table, change).await,
            KalamStatement::FlushTable { table } => {
                admin_only(ctx, "FLUSH TABLE")?;
                let rt = self.user_table(&table)?;
                if rt.def().kind == TableKind::Stream {
                    return Err(KalamError::Unsupported(format!(
                        "{table} is a STREAM table: its events stay in the hot tier until their retention \
                         or max_buffer evicts them, and are never flushed to Parquet"
                    )));
                }
                let job = self.flusher.start(rt, "manual", Some(&ctx.principal.user_id))?;
                let mut row = Row::new();
                row.insert("job_id".into(), json!(job));
                Ok(QueryResult {
                    columns: vec![ColumnInfo { name: "job_id".into(), data_type: "Utf8".into() }],
                    rows: vec![row],
                    row_count: 1,
                    affected_rows: None,
                    message: Some(format!("flush of {table} started as job {job}")),
                    execution_time_ms: 0.0,
                })
            }
            KalamStatement::ShowTableStats { table } => {
                admin_only(ctx, "SHOW TABLE STATS")?;
                let rt = self.user_table(&table)?;
                self.table_stats(&rt)
            }
            KalamStatement::KillLiveQuery { live_id } => {
                self.engine.live.kill(&live_id, &ctx.principal)?;
                Ok(message(format!("live query {live_id} killed")))
            }
            // Backups (docs/adr/0015-backup-restore.md): BACKUP and RESTORE run as jobs in
            // system.jobs and the statement waits for the job, answering with its outcome.
            KalamStatement::BackupNamespace { name, url, options } => {
                admin_only(ctx, "BACKUP NAMESPACE")?;
                let job = backup::backup(self.engine.clone(), name, url, &options, ctx.principal.user_id.clone()).await?;
                Ok(backup::job_result(&job))
            }
            KalamStatement::RestoreNamespace { name, url, options } => {
                admin_only(ctx, "RESTORE NAMESPACE")?;
                // The dropped tables of a namespace of this name may still be being removed
                // where the restored ones' files go: that removal finishes first, as for
                // CREATE TABLE (the catalog refuses the restore while one is in the way).
                let in_the_way: Vec<_> = catalog
                    .pending_purges()
                    .into_iter()
                    .filter(|p| p.namespace == name)
                    .collect();
                for purge in in_the_way {
                    self.purger.clear_way(&purge.storage).await?;
                }
                let job = backup::restore(
                    self.engine.clone(),
                    self.base.clone(),
                    name,
                    url,
                    &options,
                    ctx.principal.user_id.clone(),
                )
                .await?;
                Ok(backup::job_result(&job))
            }
            KalamStatement::ShowBackup { url, options } => {
                admin_only(ctx, "SHOW BACKUP")?;
                backup::show(&self.engine, &url, &options).await
            }
            KalamStatement::Sql(stmt) => self.sql(ctx, *stmt).await,
        }
    }

    async fn sql(&self, ctx: &Arc<RequestContext>, stmt: Statement) -> Result<QueryResult> {
        if let Some(result) = self.storage_location_dml(ctx, &stmt).await {
            return result;
        }
        if let Statement::Insert(insert) = stmt {
            return self.insert(ctx, insert).await;
        }
        let state = self.state(ctx);
        let df_stmt = DfStatement::Statement(Box::new(stmt.clone()));
        self.check_references(&state, &df_stmt)?;
        match stmt {
            // EXPLAIN [ANALYZE] runs its statement: only what could run on its own.
            Statement::Explain { statement, .. }
                if !matches!(
                    statement.as_ref(),
                    Statement::Query(_) | Statement::Insert(_)
                ) =>
            {
                Err(KalamError::Unsupported(
                    "EXPLAIN supports SELECT and INSERT".into(),
                ))
            }
            Statement::Query(_) | Statement::Explain { .. } => {
                let (schema, batches) = self.run(&state, df_stmt, self.max_result_rows).await?;
                output::query_result(&schema, &batches)
            }
            Statement::Update(update) => self.update(ctx, &state, update).await,
            Statement::Delete(delete) => self.delete(ctx, &state, delete).await,
            other => {
                let text = other.to_string();
                let head: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(KalamError::Unsupported(format!(
                    "statement '{}' is not supported",
                    clip(&head)
                )))
            }
        }
    }

    /// Every table a statement names must exist; the error says which is missing. Users
    /// may read the `system` tables the provider allows them, and write none.
    fn check_references(&self, state: &SessionState, stmt: &DfStatement) -> Result<()> {
        for reference in state.resolve_table_references(stmt)? {
            let table = reference.table();
            match reference.schema() {
                Some("information_schema") => {}
                Some(SYSTEM_NAMESPACE) => {
                    if !system_tables::ALL.contains(&table) {
                        return Err(KalamError::TableNotFound(format!(
                            "{SYSTEM_NAMESPACE}.{}",
                            clip(table)
                        )));
                    }
                }
                Some(ns) => {
                    let id = TableId::new(
                        crate::ids::NamespaceId::new(ns)?,
                        crate::ids::TableName::new(table)?,
                    );
                    if self.engine.catalog.namespace(&id.namespace).is_none() {
                        return Err(KalamError::NamespaceNotFound(id.namespace.to_string()));
                    }
                    if self.engine.table(&id).is_none() {
                        return Err(KalamError::TableNotFound(id.to_string()));
                    }
                }
                None => {
                    return Err(KalamError::SqlPlan(format!(
                        "table '{}' must be named as namespace.table",
                        clip(table)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Plans, runs and collects a statement, refusing results over `max_rows`.
    async fn run(
        &self,
        state: &SessionState,
        mut stmt: DfStatement,
        max_rows: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        literals::exact_statement_literals(&mut stmt);
        let plan = state.statement_to_plan(stmt).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        let physical = state.create_physical_plan(&plan).await?;
        let schema = physical.schema();
        let task = state.task_ctx();
        let results = request_context(state)?.results.clone();
        let mut stream = execute_stream(physical, task.clone())?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            if rows > max_rows {
                return Err(KalamError::ResultTooLarge(max_rows));
            }
            results.grow(task.memory_pool(), batch.get_array_memory_size())?;
            batches.push(batch);
        }
        Ok((schema, batches))
    }

    /// Runs one query the node wrote itself, as the request's user, within the result limit.
    pub async fn query_text(&self, ctx: &Arc<RequestContext>, sql: &str) -> Result<QueryResult> {
        let state = self.state(ctx);
        let stmt = state.sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
        let (schema, batches) = self.run(&state, stmt, self.max_result_rows).await?;
        output::query_result(&schema, &batches)
    }

    fn runtime(&self, name: &ObjectName) -> Result<Arc<TableRuntime>> {
        let id = table_id_from_object_name(name)?;
        if id.namespace.as_str() != SYSTEM_NAMESPACE
            && self.engine.catalog.namespace(&id.namespace).is_none()
        {
            return Err(KalamError::NamespaceNotFound(id.namespace.to_string()));
        }
        self.engine
            .table(&id)
            .ok_or_else(|| KalamError::TableNotFound(id.to_string()))
    }

    /// UPDATE and DELETE: STREAM tables hold events, which are never changed.
    fn check_changeable(rt: &TableRuntime) -> Result<()> {
        if rt.def().kind == TableKind::Stream {
            return Err(KalamError::Unsupported(format!(
                "STREAM tables are append-only: {} takes INSERT and SELECT, not UPDATE or DELETE \
                 (events leave by retention or max_buffer)",
                rt.def().id()
            )));
        }
        Ok(())
    }

    /// The table an INSERT, UPDATE or DELETE writes. Writes to `system.*` are for admins
    /// (403 for anyone else, API.md), and only `system.users` (and `storage_locations`,
    /// handled before) takes them: the other system tables show the node's state.
    fn writable_runtime(
        &self,
        ctx: &RequestContext,
        name: &ObjectName,
    ) -> Result<Arc<TableRuntime>> {
        let id = table_id_from_object_name(name)?;
        if id.namespace.as_str() == SYSTEM_NAMESPACE {
            admin_only(ctx, "writing system tables")?;
            if self.engine.table(&id).is_none() && system_tables::ALL.contains(&id.table.as_str()) {
                return Err(KalamError::Unsupported(format!(
                    "{id} is read-only: it shows the node's state"
                )));
            }
        }
        self.runtime(name)
    }

    async fn insert(&self, ctx: &Arc<RequestContext>, mut insert: Insert) -> Result<QueryResult> {
        let plain = insert.source.is_some()
            && insert.returning.is_none()
            && insert.on.is_none()
            && insert.or.is_none()
            && !insert.ignore
            && !insert.overwrite
            && !insert.replace_into
            && insert.table_alias.is_none()
            && insert.partitioned.is_none()
            && insert.after_columns.is_empty()
            && insert.assignments.is_empty()
            && insert.priority.is_none()
            && insert.insert_alias.is_none()
            && insert.settings.is_none()
            && insert.format_clause.is_none();
        if !plain {
            return Err(KalamError::Unsupported(
                "INSERT supports INTO <table> [(columns)] VALUES ... | SELECT ..., without \
                 RETURNING, ON CONFLICT, OR/IGNORE/REPLACE/OVERWRITE or aliases"
                    .into(),
            ));
        }
        let TableObject::TableName(name) = &insert.table else {
            return Err(KalamError::Unsupported(
                "INSERT INTO a table function is not supported".into(),
            ));
        };
        let rt = self.writable_runtime(ctx, name)?;
        let def = rt.def();
        for col in &insert.columns {
            let name = column_name(col);
            if name == UPDATED_COLUMN || name == DELETED_COLUMN {
                return Err(KalamError::SystemColumnReadonly(name));
            }
        }
        if insert.columns.is_empty() {
            // Positional VALUES name the user columns; an automatic key may be left out.
            let width = match insert.source.as_deref().map(|q| q.body.as_ref()) {
                Some(SetExpr::Values(v)) => v.rows.first().map(|r| r.content.len()),
                _ => None,
            };
            let pk = def.primary_key_index();
            let skip_key =
                width == def.columns.len().checked_sub(1) && def.columns[pk].default.is_some();
            insert.columns = def
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !(skip_key && *i == pk))
                .map(|(_, c)| {
                    ObjectName(vec![ObjectNamePart::Identifier(Ident::with_quote(
                        '"',
                        c.name.as_str(),
                    ))])
                })
                .collect();
        }
        let names: Vec<String> = insert.columns.iter().map(column_name).collect();
        Self::check_null_literals(def, &names, &insert)?;
        if let Some(rows) =
            fast_insert::literal_rows(def, &rt.fast_defaults, &names, &insert, &self.snowflake)?
        {
            let n = self
                .engine
                .insert_rows(&rt, &partition_for(def, ctx), rows)
                .await?;
            return Ok(affected(n));
        }
        let state = self.state(ctx);
        let stmt = DfStatement::Statement(Box::new(Statement::Insert(insert)));
        self.check_references(&state, &stmt)?;
        let (_, batches) = self.run(&state, stmt, usize::MAX).await?;
        let count = batches
            .first()
            .filter(|b| b.num_rows() > 0 && b.num_columns() > 0)
            .and_then(|b| {
                b.column(0)
                    .as_primitive_opt::<UInt64Type>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        Ok(affected(count))
    }

    /// `NULL` written into a NOT NULL column of a VALUES list: refused with the column's
    /// name before planning (the planner's own message only knows `column1`).
    fn check_null_literals(def: &TableDef, names: &[String], insert: &Insert) -> Result<()> {
        let Some(SetExpr::Values(values)) = insert.source.as_deref().map(|q| q.body.as_ref())
        else {
            return Ok(());
        };
        for row in &values.rows {
            for (expr, name) in row.content.iter().zip(names) {
                let is_null = matches!(expr, SqlExpr::Value(v) if v.value == datafusion::sql::sqlparser::ast::Value::Null);
                if is_null && def.column(name).is_some_and(|c| !c.nullable) {
                    return Err(KalamError::InvalidValue(format!(
                        "column '{name}' of {} is NOT NULL",
                        def.id()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The single plain table a DML statement targets.
    fn dml_target(table: &TableWithJoins) -> Result<&ObjectName> {
        match &table.relation {
            TableFactor::Table {
                name, args: None, ..
            } if table.joins.is_empty() => Ok(name),
            _ => Err(KalamError::Unsupported(
                "UPDATE and DELETE target one table, without joins".into(),
            )),
        }
    }

    /// Runs `SELECT <user columns>[, extra] FROM <relation> [WHERE ...]` for a DML statement.
    async fn select_targets(
        &self,
        state: &SessionState,
        def: &TableDef,
        relation: &TableWithJoins,
        extra: &[&SqlExpr],
        selection: Option<&SqlExpr>,
    ) -> Result<Vec<RecordBatch>> {
        let mut select: Vec<String> = def
            .columns
            .iter()
            .map(|c| quoted(c.name.as_str()))
            .collect();
        // The version each row was read at, for `TableStore::apply_changes`; `extra` goes
        // before them.
        select.push(quoted(UPDATED_COLUMN));
        select.push(quoted(DELETED_COLUMN));
        let template = format!("SELECT {} FROM t", select.join(", "));
        let extra: Vec<(&SqlExpr, String)> = extra
            .iter()
            .enumerate()
            .map(|(n, e)| (*e, format!("__kalam_set_{n}")))
            .collect();
        let stmt = splice_select(
            state,
            &template,
            Some(relation),
            selection,
            (def.columns.len(), &extra),
        )?;
        Ok(self.run(state, stmt, usize::MAX).await?.1)
    }

    /// Runs `statement` as the request's user within the result limit: a query the node
    /// built (see [`splice_select`]).
    pub async fn query_statement(
        &self,
        ctx: &Arc<RequestContext>,
        statement: impl FnOnce(&SessionState) -> Result<DfStatement>,
    ) -> Result<QueryResult> {
        let state = self.state(ctx);
        let stmt = statement(&state)?;
        let (schema, batches) = self.run(&state, stmt, self.max_result_rows).await?;
        output::query_result(&schema, &batches)
    }

    /// Every batch of a query the node wrote itself (no result-size limit).
    async fn run_text(&self, state: &SessionState, sql: &str) -> Result<Vec<RecordBatch>> {
        let stmt = state.sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
        Ok(self.run(state, stmt, usize::MAX).await?.1)
    }

    async fn update(
        &self,
        ctx: &Arc<RequestContext>,
        state: &SessionState,
        update: Update,
    ) -> Result<QueryResult> {
        if update.from.is_some()
            || update.returning.is_some()
            || update.limit.is_some()
            || !update.order_by.is_empty()
            || update.or.is_some()
        {
            return Err(KalamError::Unsupported(
                "UPDATE supports SET and WHERE only".into(),
            ));
        }
        let target = Self::dml_target(&update.table)?;
        let rt = self.writable_runtime(ctx, target)?;
        Self::check_changeable(&rt)?;
        let partition = partition_for(rt.def(), ctx);
        let lock = rt.store.dml_lock(&partition);
        let _serialised = lock.lock().await;
        for attempt in 1..=WRITE_ATTEMPTS {
            // Each attempt reads with the table's current schema version: one that an ALTER
            // replaced would miss the new columns, and the write refuses it.
            let rt = self.runtime(target)?;
            let def = rt.def().clone();
            let targets = Self::update_targets(&def, &update.assignments)?;
            let extra: Vec<&SqlExpr> = targets.iter().map(|(_, e)| *e).collect();
            let generation = rt.store.cold_generation();
            let batches = self
                .select_targets(
                    state,
                    &def,
                    &update.table,
                    &extra,
                    update.selection.as_ref(),
                )
                .await?;
            let mut changes = Vec::new();
            for batch in &batches {
                let old = batch_to_values(&def, batch)?;
                let mut values = old.clone();
                for (n, (idx, _)) in targets.iter().enumerate() {
                    let col = &def.columns[*idx];
                    let array = cast_to_column(
                        batch.column(def.columns.len() + n),
                        col.data_type,
                        col.name.as_str(),
                    )?;
                    for (i, row) in values.iter_mut().enumerate() {
                        row[*idx] = value_at(&array, i, col.data_type, col.name.as_str())?;
                    }
                }
                for ((values, old), (read_updated, deleted)) in
                    values.into_iter().zip(old).zip(read_versions(batch)?)
                {
                    // An UPDATE changes values, never `_deleted`.
                    changes.push(RowChange {
                        values,
                        old,
                        old_deleted: deleted,
                        read_updated,
                        deleted,
                    });
                }
            }
            match rt
                .store
                .apply_changes(&def, &partition, changes, generation)
            {
                Err(KalamError::WriteConflict(_)) if attempt < WRITE_ATTEMPTS => continue,
                other => return other.map(affected),
            }
        }
        Err(KalamError::WriteConflict(rt.def().id().to_string()))
    }

    /// The columns an UPDATE assigns (their positions in `def`) with their SET expressions.
    fn update_targets<'a>(
        def: &TableDef,
        assignments: &'a [Assignment],
    ) -> Result<Vec<(usize, &'a SqlExpr)>> {
        let mut targets: Vec<(usize, &SqlExpr)> = Vec::new();
        for assignment in assignments {
            let AssignmentTarget::ColumnName(col) = &assignment.target else {
                return Err(KalamError::Unsupported(
                    "UPDATE of a column tuple is not supported".into(),
                ));
            };
            let name = column_name(col);
            if name == UPDATED_COLUMN || name == DELETED_COLUMN {
                return Err(KalamError::SystemColumnReadonly(name));
            }
            let idx = def
                .columns
                .iter()
                .position(|c| c.name.as_str() == name)
                .ok_or_else(|| {
                    KalamError::SqlPlan(format!(
                        "column '{}' does not exist in {}",
                        clip(&name),
                        def.id()
                    ))
                })?;
            if idx == def.primary_key_index() {
                return Err(KalamError::InvalidValue(format!(
                    "the primary key '{name}' cannot be updated"
                )));
            }
            if targets.iter().any(|(i, _)| *i == idx) {
                return Err(KalamError::SqlPlan(format!(
                    "column '{name}' is assigned twice"
                )));
            }
            targets.push((idx, &assignment.value));
        }
        Ok(targets)
    }

    async fn delete(
        &self,
        ctx: &Arc<RequestContext>,
        state: &SessionState,
        delete: Delete,
    ) -> Result<QueryResult> {
        if !delete.tables.is_empty()
            || delete.using.is_some()
            || delete.returning.is_some()
            || delete.limit.is_some()
            || !delete.order_by.is_empty()
        {
            return Err(KalamError::Unsupported(
                "DELETE supports FROM and WHERE only".into(),
            ));
        }
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
        let [relation] = from.as_slice() else {
            return Err(KalamError::Unsupported(
                "DELETE targets exactly one table".into(),
            ));
        };
        let target = Self::dml_target(relation)?;
        let rt = self.writable_runtime(ctx, target)?;
        Self::check_changeable(&rt)?;
        let partition = partition_for(rt.def(), ctx);
        let lock = rt.store.dml_lock(&partition);
        let _serialised = lock.lock().await;
        for attempt in 1..=WRITE_ATTEMPTS {
            // As in UPDATE: each attempt reads with the current schema version.
            let rt = self.runtime(target)?;
            let def = rt.def().clone();
            let generation = rt.store.cold_generation();
            let batches = self
                .select_targets(state, &def, relation, &[], delete.selection.as_ref())
                .await?;
            let mut changes = Vec::new();
            for batch in &batches {
                let values = batch_to_values(&def, batch)?;
                for (values, (read_updated, old_deleted)) in
                    values.into_iter().zip(read_versions(batch)?)
                {
                    changes.push(RowChange {
                        old: values.clone(),
                        values,
                        old_deleted,
                        read_updated,
                        deleted: true,
                    });
                }
            }
            match rt
                .store
                .apply_changes(&def, &partition, changes, generation)
            {
                Err(KalamError::WriteConflict(_)) if attempt < WRITE_ATTEMPTS => continue,
                other => return other.map(affected),
            }
        }
        Err(KalamError::WriteConflict(rt.def().id().to_string()))
    }

    /// `ALTER TABLE` (admins; docs/adr/0011-schema-versions.md). The change is checked on its
    /// own, the DEFAULT of an added column is evaluated once (what older rows read), and the
    /// engine checks it against the table and commits the next schema version.
    async fn alter_table(
        &self,
        ctx: &Arc<RequestContext>,
        table: &TableId,
        change: AlterChange,
    ) -> Result<QueryResult> {
        admin_only(ctx, "ALTER TABLE")?;
        if table.namespace.as_str() == SYSTEM_NAMESPACE {
            return Err(KalamError::Unsupported(format!(
                "{table} is a system table; its columns cannot be changed"
            )));
        }
        let rt = self.user_table(table)?;
        if rt.def().kind == TableKind::Stream {
            return Err(KalamError::Unsupported(format!(
                "{table} is a STREAM table: ALTER TABLE does not apply (its events are \
                 short-lived; drop and create the table to change its columns)"
            )));
        }
        let alteration = match change {
            AlterChange::AddColumn {
                column,
                if_not_exists,
            } => {
                let mut column = ddl::added_column(&column)?;
                if let Some(text) = column.default.clone() {
                    column.initial_default = Some(self.default_value(ctx, &text, &column).await?);
                }
                Alteration::AddColumn {
                    column,
                    if_not_exists,
                }
            }
            AlterChange::DropColumn { name, if_exists } => {
                Alteration::DropColumn { name, if_exists }
            }
            AlterChange::ModifyColumn { name, data_type } => Alteration::ModifyColumn {
                name,
                data_type: ddl::kalam_type(&data_type)?,
            },
        };
        Ok(
            match self.engine.alter_table(table, &alteration, &self.base)? {
                Some(def) => message(format!(
                    "table {table} altered: {} (schema version {})",
                    def.history
                        .last()
                        .map(|v| v.change.as_str())
                        .unwrap_or_default(),
                    def.schema_version
                )),
                None => message(format!(
                    "table {table} unchanged (schema version {}): {}",
                    rt.store.def().schema_version,
                    match &alteration {
                        Alteration::AddColumn { column, .. } =>
                            format!("column {} already exists", column.name),
                        Alteration::DropColumn { name, .. } =>
                            format!("column {name} does not exist"),
                        Alteration::ModifyColumn { name, data_type } =>
                            format!("column {name} already has type {}", data_type.sql_name()),
                    }
                )),
            },
        )
    }

    /// The value of an added column's DEFAULT, computed once now (as the request's user, so
    /// `NOW()` is the statement's time): what rows written before the column existed read.
    async fn default_value(
        &self,
        ctx: &Arc<RequestContext>,
        text: &str,
        column: &ColumnDef,
    ) -> Result<Value> {
        let name = column.name.as_str();
        let bad = |e: KalamError| {
            KalamError::InvalidTableDefinition(format!("DEFAULT of column '{name}': {e}"))
        };
        // Type and shape first, with CREATE TABLE's rules (no columns, castable).
        compile_default(&self.base, text, column.data_type).map_err(bad)?;
        let state = self.state(ctx);
        let batches = self
            .run_text(&state, &format!("SELECT ({text}) AS v"))
            .await
            .map_err(bad)?;
        let array = batches
            .iter()
            .find(|b| b.num_rows() > 0 && b.num_columns() > 0)
            .map(|b| b.column(0).clone())
            .ok_or_else(|| KalamError::internal("a DEFAULT evaluated to no row"))?;
        let array = cast_to_column(&array, column.data_type, name).map_err(bad)?;
        let value = value_at(&array, 0, column.data_type, name).map_err(bad)?;
        match value {
            Value::Null if !column.nullable => Err(bad(KalamError::InvalidValue(
                "it is NULL, and the column is NOT NULL".into(),
            ))),
            // The value is kept in the schema file (JSON), which has no NaN or infinity.
            Value::Float(f) if !f.is_finite() => Err(bad(KalamError::InvalidValue(
                "NaN and infinities cannot be the value of existing rows".into(),
            ))),
            v => Ok(v),
        }
    }

    /// A USER or SHARED table of a namespace (what FLUSH and SHOW TABLE STATS work on).
    fn user_table(&self, table: &TableId) -> Result<Arc<TableRuntime>> {
        if table.namespace.as_str() == SYSTEM_NAMESPACE {
            return Err(KalamError::Unsupported(
                "system tables have no cold tier".into(),
            ));
        }
        if self.engine.catalog.namespace(&table.namespace).is_none() {
            return Err(KalamError::NamespaceNotFound(table.namespace.to_string()));
        }
        self.engine
            .table(table)
            .ok_or_else(|| KalamError::TableNotFound(table.to_string()))
    }

    /// `SHOW TABLE STATS`: rows in each tier, files, bytes and users with data.
    /// A STREAM table: its buffered events are the hot rows, and it has no cold tier.
    fn table_stats(&self, rt: &TableRuntime) -> Result<QueryResult> {
        let def = rt.def();
        let is_stream = def.kind == TableKind::Stream;
        let (hot_rows, hot_partitions) = if is_stream {
            (rt.store.stream_len(), std::collections::BTreeSet::new())
        } else {
            self.engine
                .storage
                .key_stats(rt.store.cf_name(), def.kind == TableKind::User)?
        };
        let mut partitions: std::collections::BTreeSet<Vec<u8>> = hot_partitions;
        let (mut cold_rows, mut files, mut bytes) = (0u64, 0u64, 0u64);
        let cold = if is_stream {
            Vec::new()
        } else {
            self.engine.cold.table_segments(rt.store.cf_name())
        };
        for (prefix, segments) in cold {
            if !segments.is_empty() {
                partitions.insert(prefix);
            }
            for s in segments.iter() {
                cold_rows += s.rows;
                files += 1;
                bytes += s.bytes;
            }
        }
        let users = (def.kind == TableKind::User).then_some(partitions.len());
        let v = json!({
            "table_name": def.name.as_str(), "namespace": def.namespace.as_str(),
            "hot_rows": hot_rows, "cold_rows": cold_rows, "parquet_files": files,
            "parquet_bytes": bytes, "users": users,
        });
        let col = |name: &str, t: &str| ColumnInfo {
            name: name.into(),
            data_type: t.into(),
        };
        Ok(QueryResult {
            columns: vec![
                col("table_name", "Utf8"),
                col("namespace", "Utf8"),
                col("hot_rows", "Int64"),
                col("cold_rows", "Int64"),
                col("parquet_files", "Int64"),
                col("parquet_bytes", "Int64"),
                col("users", "Int64"),
            ],
            rows: vec![v.as_object().cloned().unwrap_or_default()],
            row_count: 1,
            affected_rows: None,
            message: None,
            execution_time_ms: 0.0,
        })
    }

    /// INSERT, UPDATE and DELETE of `system.storage_locations` (admins only): rows are
    /// computed with DataFusion, validated, probed, then stored in the catalog.
    async fn storage_location_dml(
        &self,
        ctx: &Arc<RequestContext>,
        stmt: &Statement,
    ) -> Option<Result<QueryResult>> {
        let is_target = |name: &ObjectName| {
            table_id_from_object_name(name).is_ok_and(|id| {
                id.namespace.as_str() == SYSTEM_NAMESPACE
                    && id.table.as_str() == system_tables::STORAGE_LOCATIONS
            })
        };
        let target = match stmt {
            Statement::Insert(i) => matches!(&i.table, TableObject::TableName(n) if is_target(n)),
            Statement::Update(u) => Self::dml_target(&u.table).is_ok_and(is_target),
            Statement::Delete(d) => {
                let (FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f)) = &d.from;
                f.first()
                    .and_then(|r| Self::dml_target(r).ok())
                    .is_some_and(is_target)
            }
            _ => false,
        };
        if !target {
            return None;
        }
        Some(self.run_location_dml(ctx, stmt).await)
    }

    async fn run_location_dml(
        &self,
        ctx: &Arc<RequestContext>,
        stmt: &Statement,
    ) -> Result<QueryResult> {
        admin_only(ctx, "writing system tables")?;
        let state = self.state(ctx);
        let catalog = &self.engine.catalog;
        let creds = self.engine.cold.credentials_dir().to_path_buf();
        let text_of = |batch: &RecordBatch, name: &str, i: usize| -> Result<Option<String>> {
            let Some(array) = batch.column_by_name(name) else {
                return Ok(None);
            };
            let array = cast_to_column(array, crate::catalog::KalamType::Text, name)?;
            Ok(
                match value_at(&array, i, crate::catalog::KalamType::Text, name)? {
                    crate::storage::Value::Text(s) => Some(s),
                    _ => None,
                },
            )
        };
        let build = |name: Option<String>,
                     kind: Option<String>,
                     path: Option<String>,
                     creds_ref: Option<String>,
                     created_at|
         -> Result<StorageLocationDef> {
            let name =
                name.ok_or_else(|| KalamError::InvalidValue("location_name is required".into()))?;
            let kind = kind
                .as_deref()
                .and_then(LocationKind::parse)
                .ok_or_else(|| {
                    KalamError::InvalidValue("location_type must be 'filesystem' or 's3'".into())
                })?;
            let path = path.ok_or_else(|| KalamError::InvalidValue("path is required".into()))?;
            let def = StorageLocationDef {
                name,
                kind,
                path,
                credentials_ref: creds_ref,
                created_at,
            };
            location::validate_location(&def)?;
            Ok(def)
        };
        match stmt {
            Statement::Insert(insert) => {
                let Some(source) = insert.source.clone() else {
                    return Err(KalamError::Unsupported(
                        "INSERT needs VALUES or SELECT".into(),
                    ));
                };
                let names: Vec<String> = insert.columns.iter().map(column_name).collect();
                if names.is_empty() {
                    return Err(KalamError::InvalidValue(
                        "name the columns: (location_name, location_type, path, credentials_ref)"
                            .into(),
                    ));
                }
                for n in &names {
                    if !["location_name", "location_type", "path", "credentials_ref"]
                        .contains(&n.as_str())
                    {
                        return Err(KalamError::InvalidValue(format!(
                            "column '{}' cannot be written",
                            clip(n)
                        )));
                    }
                }
                let (_, batches) = self
                    .run(
                        &state,
                        DfStatement::Statement(Box::new(Statement::Query(source))),
                        usize::MAX,
                    )
                    .await?;
                let mut n = 0;
                for batch in &batches {
                    // The VALUES columns are positional: name them as the INSERT did.
                    let renamed = RecordBatch::try_new(
                        Arc::new(datafusion::arrow::datatypes::Schema::new(
                            batch
                                .schema()
                                .fields()
                                .iter()
                                .zip(&names)
                                .map(|(f, n)| f.as_ref().clone().with_name(n))
                                .collect::<Vec<_>>(),
                        )),
                        batch.columns().iter().take(names.len()).cloned().collect(),
                    )
                    .map_err(|e| KalamError::InvalidValue(e.to_string()))?;
                    for i in 0..renamed.num_rows() {
                        let def = build(
                            text_of(&renamed, "location_name", i)?,
                            text_of(&renamed, "location_type", i)?,
                            text_of(&renamed, "path", i)?,
                            text_of(&renamed, "credentials_ref", i)?,
                            chrono::Utc::now(),
                        )?;
                        if def.name == crate::cold::LOCAL_LOCATION
                            || catalog.location(&def.name).is_some()
                        {
                            return Err(KalamError::StorageLocationAlreadyExists(def.name));
                        }
                        location::probe(&def, &creds).await?;
                        catalog.put_location(def, false)?;
                        n += 1;
                    }
                }
                Ok(affected(n))
            }
            Statement::Update(update) => {
                let mut sets: Vec<(String, &SqlExpr)> = Vec::new();
                for a in &update.assignments {
                    let AssignmentTarget::ColumnName(c) = &a.target else {
                        return Err(KalamError::Unsupported(
                            "UPDATE of a column tuple is not supported".into(),
                        ));
                    };
                    let name = column_name(c);
                    if !["location_type", "path", "credentials_ref"].contains(&name.as_str()) {
                        return Err(KalamError::InvalidValue(format!(
                            "column '{}' cannot be updated",
                            clip(&name)
                        )));
                    }
                    sets.push((name, &a.value));
                }
                let extra: Vec<(&SqlExpr, String)> = sets
                    .iter()
                    .enumerate()
                    .map(|(i, (_, e))| (*e, format!("__set_{i}")))
                    .collect();
                let stmt = splice_select(
                    &state,
                    "SELECT location_name, location_type, path, credentials_ref, created_at \
                     FROM system.storage_locations",
                    None,
                    update.selection.as_ref(),
                    (5, &extra),
                )?;
                let batches = self.run(&state, stmt, usize::MAX).await?.1;
                let mut n = 0;
                for batch in &batches {
                    for i in 0..batch.num_rows() {
                        let name = text_of(batch, "location_name", i)?;
                        let Some(old) = name.as_deref().and_then(|n| catalog.location(n)) else {
                            return Err(KalamError::InvalidValue(
                                "the 'local' location is built in and cannot be changed".into(),
                            ));
                        };
                        let (mut kind, mut path, mut cref) = (
                            Some(old.kind.as_str().to_string()),
                            Some(old.path.clone()),
                            old.credentials_ref.clone(),
                        );
                        for (j, (col, _)) in sets.iter().enumerate() {
                            let v = text_of(batch, &format!("__set_{j}"), i)?;
                            match col.as_str() {
                                "location_type" => kind = v,
                                "path" => path = v,
                                _ => cref = v,
                            }
                        }
                        let def = build(name, kind, path, cref, old.created_at)?;
                        location::probe(&def, &creds).await?;
                        catalog.put_location(def, true)?;
                        n += 1;
                    }
                }
                Ok(affected(n))
            }
            Statement::Delete(delete) => {
                let stmt = splice_select(
                    &state,
                    "SELECT location_name FROM system.storage_locations",
                    None,
                    delete.selection.as_ref(),
                    (1, &[]),
                )?;
                let batches = self.run(&state, stmt, usize::MAX).await?.1;
                let mut n = 0;
                for batch in &batches {
                    for i in 0..batch.num_rows() {
                        let Some(name) = text_of(batch, "location_name", i)? else {
                            continue;
                        };
                        if name == crate::cold::LOCAL_LOCATION {
                            return Err(KalamError::InvalidValue(
                                "the 'local' location is built in and cannot be deleted".into(),
                            ));
                        }
                        catalog.delete_location(&name)?;
                        n += 1;
                    }
                }
                Ok(affected(n))
            }
            _ => Err(KalamError::internal("not a storage location statement")),
        }
    }

    /// `DESCRIBE TABLE t HISTORY`: one row per schema version, oldest first, with when it
    /// was made, what changed and its columns.
    fn describe_history(&self, table: &TableId) -> Result<QueryResult> {
        let rt = self
            .engine
            .table(table)
            .ok_or_else(|| KalamError::TableNotFound(table.to_string()))?;
        let def = rt.store.def();
        let versions = if def.history.is_empty() {
            vec![def.initial_version()]
        } else {
            def.history.clone()
        };
        let columns_text = |columns: &[ColumnDef]| {
            columns
                .iter()
                .map(|c| format!("{} {}", c.name, c.data_type.sql_name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_version", DataType::Int64, false),
            Field::new("created_at", KalamType::Timestamp.arrow(), false),
            Field::new("change", DataType::Utf8, false),
            Field::new("columns", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    versions.iter().map(|v| i64::from(v.version)),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        versions.iter().map(|v| v.created_at.timestamp_micros()),
                    )
                    .with_timezone(TIMESTAMP_TZ),
                ),
                Arc::new(StringArray::from_iter_values(
                    versions.iter().map(|v| v.change.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    versions.iter().map(|v| columns_text(v.columns.as_slice())),
                )),
            ],
        )
        .map_err(KalamError::internal)?;
        let mut result = output::query_result(&schema, &[batch])?;
        result.message = Some(format!(
            "{} table {}: schema version {}, {} version(s)",
            def.kind.as_str().to_uppercase(),
            def.id(),
            def.schema_version,
            versions.len()
        ));
        Ok(result)
    }

    fn describe(&self, table: &TableId) -> Result<QueryResult> {
        let rt = self
            .engine
            .table(table)
            .ok_or_else(|| KalamError::TableNotFound(table.to_string()))?;
        let def = rt.def();
        let mut rows: Vec<Row> = def
            .columns
            .iter()
            .map(|c| {
                let v = json!({
                    "column_name": c.name.as_str(),
                    "data_type": c.data_type.sql_name(),
                    "is_nullable": c.nullable,
                    "is_primary_key": c.name == def.primary_key,
                    "column_default": c.default,
                    "is_system_column": false,
                });
                v.as_object().cloned().unwrap_or_default()
            })
            .collect();
        if def.kind.has_system_columns() {
            for (name, t) in [(UPDATED_COLUMN, "TIMESTAMP"), (DELETED_COLUMN, "BOOLEAN")] {
                let v = json!({
                    "column_name": name, "data_type": t, "is_nullable": false, "is_primary_key": false,
                    "column_default": null, "is_system_column": true,
                });
                rows.push(v.as_object().cloned().unwrap_or_default());
            }
        }
        let col = |name: &str, t: &str| ColumnInfo {
            name: name.into(),
            data_type: t.into(),
        };
        Ok(QueryResult {
            columns: vec![
                col("column_name", "Utf8"),
                col("data_type", "Utf8"),
                col("is_nullable", "Boolean"),
                col("is_primary_key", "Boolean"),
                col("column_default", "Utf8"),
                col("is_system_column", "Boolean"),
            ],
            row_count: rows.len(),
            rows,
            affected_rows: None,
            message: Some(match &def.stream {
                // A STREAM table has no location, flush policy or soft deletes: its options
                // are how long and how many events it keeps.
                Some(stream) if def.kind == TableKind::Stream => format!(
                    "STREAM table {}, primary key {}, schema version {}, retention {}, ephemeral {}, max_buffer {}",
                    def.id(),
                    def.primary_key,
                    def.schema_version,
                    human_duration(stream.retention_secs),
                    stream.ephemeral,
                    stream.max_buffer
                ),
                _ => format!(
                    "{} table {}, primary key {}, schema version {}, location {}, flush policy {}, deleted_retention {}",
                    def.kind.as_str().to_uppercase(),
                    def.id(),
                    def.primary_key,
                    def.schema_version,
                    def.location,
                    def.flush_policy,
                    def.deleted_retention_text()
                ),
            }),
            execution_time_ms: 0.0,
        })
    }
}
