//! The `TableProvider` of USER and SHARED tables: one implementation, parametrised by the
//! partition it reads and writes (the request's user for USER tables, the single shared
//! partition for SHARED ones). The partition comes from the request's [`RequestContext`],
//! so no statement can name another user's rows. STREAM tables use it too: their scan is
//! the hot tier alone, in key (= event time) order, with no merge, no `_deleted` and no
//! point reads.
//!
//! A scan merges the tiers: the partition's hot rows and those of its Parquet files that can
//! match are each sorted by key; a sort-preserving merge on (key, `_seq` DESC) followed by
//! [`DedupExec`] keeps the newest version of every key, and only then are soft-deleted rows
//! dropped. Files are pruned only by predicates that cannot expose an older version: the key,
//! and lower bounds on `_updated` (the newest version of a key has the largest `_updated`).
//! When no key can be in two inputs and the files are small, there is nothing to merge: the
//! files are read whole while planning and the scan is one in-memory source in key order,
//! which spares a point query the planning of a file scan.
//!
//! Everything is read in the schema version the provider's runtime has (the one the query
//! planned with): hot rows are re-shaped by the store, and files written under another
//! version are scanned with that version's schema and projected by column id (an added
//! column as its `initial_default` or NULL, a widened one cast, a dropped one left out;
//! docs/adr/0011-schema-versions.md).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::expressions::{col, not, CastExpr, Literal};
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::auth::Principal;
use crate::catalog::{KalamType, TableDef, TableKind, DELETED_COLUMN, UPDATED_COLUMN};
use crate::cold::parquet::file_schema;
use crate::cold::{Segment, SEQ_COLUMN};
use crate::engine::{Engine, TableRuntime};
use crate::error::KalamError;
use crate::ids::{UserId, SYSTEM_NAMESPACE};
use crate::sql::dedup::DedupExec;
use crate::sql::hot_cache::{CacheKey, HotRows, Lookup};
use crate::sql::rows::{batch_to_values, value_to_scalar, RowBatchBuilder};
use crate::storage::{Partition, RowKey, Value};

/// Who a request runs as; stored in the DataFusion session config of every request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub principal: Principal,
    /// The user whose partitions USER tables resolve to (`as_user`, or the caller).
    pub user: UserId,
    /// What the request's results hold, until the request ends.
    pub results: ResultMemory,
}

impl RequestContext {
    pub fn new(principal: Principal, user: UserId) -> Self {
        Self {
            principal,
            user,
            results: ResultMemory::default(),
        }
    }
}

/// The memory of a request's collected results, reserved in DataFusion's pool
/// (`max_query_memory_bytes`, shared with every query's sorts, joins and aggregations) from
/// the first batch until the request ends: without it one request of many large SELECTs, or
/// one SELECT of large values, held what it built until the node ran out of memory.
#[derive(Debug, Clone, Default)]
pub struct ResultMemory(Arc<parking_lot::Mutex<Option<MemoryReservation>>>);

impl ResultMemory {
    /// Reserves `bytes` more, or fails with `ResourcesExhausted` when the pool has no room.
    pub fn grow(&self, pool: &Arc<dyn MemoryPool>, bytes: usize) -> DfResult<()> {
        let mut reservation = self.0.lock();
        reservation
            .get_or_insert_with(|| MemoryConsumer::new("query results").register(pool))
            .try_grow(bytes)
    }
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
pub struct KalamTableProvider {
    engine: Arc<Engine>,
    rt: Arc<TableRuntime>,
}

impl KalamTableProvider {
    pub fn new(engine: Arc<Engine>, rt: Arc<TableRuntime>) -> Self {
        Self { engine, rt }
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
        // STREAM keys start with the event's timestamp: no point reads by key.
        if def.kind == TableKind::Stream {
            return None;
        }
        let pk = def.primary_key.as_str();
        filters.iter().find_map(|f| {
            let (col, op, value) = column_op_literal(f)?;
            if col.name != pk || op != Operator::Eq {
                return None;
            }
            key_of_literal(def, value)
        })
    }

    /// Filters that may prune Parquet files and row groups before the merge: those on the
    /// key alone, and lower bounds on `_updated`.
    fn pruning_filters(&self, filters: &[Expr]) -> Vec<Expr> {
        let pk = self.rt.def().primary_key.as_str();
        filters
            .iter()
            .filter(|f| {
                let cols = f.column_refs();
                if !cols.is_empty() && cols.iter().all(|c| c.name == pk) {
                    return true;
                }
                matches!(column_op_literal(f), Some((c, Operator::Gt | Operator::GtEq, _)) if c.name == UPDATED_COLUMN)
            })
            .cloned()
            .collect()
    }

    /// Whether a file may hold rows the filters can match (by its manifest entry).
    fn file_may_match(&self, seg: &Segment, filters: &[Expr]) -> bool {
        let def = self.rt.def();
        filters.iter().all(|f| match column_op_literal(f) {
            Some((c, op, v)) if c.name == UPDATED_COLUMN => {
                let bound = match v {
                    ScalarValue::TimestampMicrosecond(Some(t), _) => *t,
                    ScalarValue::TimestampMillisecond(Some(t), _) => t.saturating_mul(1000),
                    ScalarValue::TimestampSecond(Some(t), _) => t.saturating_mul(1_000_000),
                    ScalarValue::TimestampNanosecond(Some(t), _) => t / 1000,
                    _ => return true,
                };
                match op {
                    Operator::Gt => seg.max_updated > bound,
                    Operator::GtEq => seg.max_updated >= bound,
                    _ => true,
                }
            }
            Some((c, Operator::Eq, v)) if c.name == def.primary_key.as_str() => {
                match key_of_literal(def, v) {
                    Some(k) => k.0 >= seg.min_key && k.0 <= seg.max_key,
                    None => true,
                }
            }
            _ => true,
        })
    }
}

impl KalamTableProvider {
    /// The partition's current hot rows in key order (soft-deleted ones only when asked), as
    /// batches of `schema` (the table schema, a projection of it, or the file schema), built
    /// straight from the stored bytes. A `pk = literal` filter makes it one point read.
    fn hot_rows(
        &self,
        partition: &Partition,
        schema: SchemaRef,
        filters: &[Expr],
        limit: Option<usize>,
        include_deleted: bool,
    ) -> DfResult<HotRows> {
        let store = &self.rt.store;
        let def = self.rt.def();
        let mut builder = RowBatchBuilder::new(def, schema, BATCH_ROWS)?;
        let mut out = HotRows::default();
        if let Some(key) = self.point_key(filters) {
            let row = store
                .get(def, partition, &key)?
                .filter(|r| include_deleted || !r.deleted);
            if let Some(row) = row {
                builder.push_owned(&row)?;
                out.batches.push(builder.finish()?);
                out.rows = 1;
                out.range = Some((key.0.clone(), key.0));
            }
            return Ok(out);
        }
        let mut last = Vec::new();
        store.scan_in_place(def, partition, include_deleted, |key, row| {
            if out.range.is_none() {
                out.range = Some((key.to_vec(), Vec::new()));
            }
            last.clear();
            last.extend_from_slice(key);
            builder.push(row)?;
            out.rows += 1;
            out.deleted += usize::from(row.deleted);
            if builder.is_full(BATCH_ROWS) {
                out.batches.push(builder.finish()?);
            }
            Ok(limit.is_none_or(|l| out.rows < l))
        })?;
        if !builder.is_empty() {
            out.batches.push(builder.finish()?);
        }
        if let Some((_, end)) = out.range.as_mut() {
            *end = last;
        }
        Ok(out)
    }

    /// The partition's decoded hot rows (every version, in the file schema) from the hot
    /// cache, or decoded now when the cache admits the partition; `None` when the scan
    /// should read RocksDB as usual (first scan at this version, a point read, a STREAM
    /// table, or `may_admit` false: a scan that stops early must not fill the cache).
    fn cached_hot(
        &self,
        partition: &Partition,
        filters: &[Expr],
        may_admit: bool,
    ) -> DfResult<Option<Arc<HotRows>>> {
        let def = self.rt.def();
        if def.kind == TableKind::Stream || self.point_key(filters).is_some() {
            return Ok(None);
        }
        let store = &self.rt.store;
        let key = CacheKey {
            store: store.id(),
            schema_version: def.schema_version,
            partition: partition.prefix(),
        };
        // Read before the rows: a change after this read moves the version past it.
        let version = store.hot_version(partition);
        match self.engine.hot_cache.lookup(&key, version) {
            Lookup::Hit(rows) => Ok(Some(rows)),
            Lookup::Admit if may_admit => {
                let rows = Arc::new(self.hot_rows(partition, file_schema(def), &[], None, true)?);
                self.engine.hot_cache.insert(key, version, rows.clone());
                Ok(Some(rows))
            }
            Lookup::Admit | Lookup::Miss => Ok(None),
        }
    }

    /// Only hot rows can match: each key appears once, no merge needed.
    fn hot_scan(
        &self,
        partition: &Partition,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        include_deleted: bool,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let indices = self.indices(projection);
        let schema = Arc::new(self.rt.schema.project(&indices)?);
        let limit = if filters.is_empty() { limit } else { None };
        let batches = match self.cached_hot(partition, filters, limit.is_none())? {
            Some(hot) => visible_rows(
                hot.batches.iter().cloned(),
                include_deleted || hot.deleted == 0,
                &indices,
            )?,
            None => {
                self.hot_rows(partition, schema.clone(), filters, limit, include_deleted)?
                    .batches
            }
        };
        // One partition: a table that is all hot (and every STREAM table) returns rows in key
        // order.
        MemorySourceConfig::try_new_exec(&[batches], schema, None)
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }

    /// The table columns a scan returns: its projection, or all of them.
    fn indices(&self, projection: Option<&Vec<usize>>) -> Vec<usize> {
        match projection {
            Some(p) => p.clone(),
            None => (0..self.rt.schema.fields().len()).collect(),
        }
    }

    /// Whether the files are read whole into memory and joined to the hot rows there,
    /// instead of planned as a DataFusion file scan: when they are few bytes
    /// (`cold_read_in_memory_bytes` together; a user's
    /// flushed history, usually), written in the schema version the query plans with, and no
    /// key can be in two inputs. Planning a file scan and the merge costs a query about a
    /// millisecond on its own, several times the read of a small file.
    fn fits_in_memory(&self, hot: &HotRows, files: &[&Segment]) -> bool {
        let version = self.rt.def().schema_version;
        let budget = self.engine.cold.read_in_memory_bytes;
        budget > 0
            && files.iter().map(|f| f.bytes).sum::<u64>() <= budget
            && files.iter().map(|f| f.rows).sum::<u64>() <= IN_MEMORY_MAX_ROWS
            && files.iter().all(|f| f.schema_version == version)
            && tiers_disjoint(hot, files)
    }

    /// The hot rows and every row of `files` (see [`Self::fits_in_memory`]) as one
    /// in-memory source: each input holds one version per key and no key is in two, so
    /// the inputs in the order of their first key are the partition in key order, as a
    /// scan of the hot tier alone returns it.
    async fn in_memory_scan(
        &self,
        hot: &HotRows,
        files: &[&Segment],
        projection: Option<&Vec<usize>>,
        include_deleted: bool,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let def = self.rt.def();
        let schema = file_schema(def);
        let (_, store) = self.engine.cold.store(&self.rt.location)?;
        let mut inputs: Vec<(&[u8], Vec<RecordBatch>)> = Vec::with_capacity(files.len() + 1);
        if let Some((first, _)) = &hot.range {
            inputs.push((first, hot.batches.clone()));
        }
        for f in files {
            let batches = self
                .engine
                .cold
                .decoded
                .read(&def.uid, &store, f, &schema)
                .await
                .map_err(KalamError::into_datafusion)?;
            inputs.push((&f.min_key, batches));
        }
        inputs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let indices = self.indices(projection);
        let batches = visible_rows(
            inputs.into_iter().flat_map(|(_, batches)| batches),
            include_deleted,
            &indices,
        )?;
        let schema = Arc::new(self.rt.schema.project(&indices)?);
        MemorySourceConfig::try_new_exec(&[batches], schema, None)
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }

    /// Hot rows and Parquet files together. When no key can be in two of them (the usual
    /// case: new rows have keys above the flushed ones) the inputs are simply concatenated;
    /// otherwise they are merged by key, newest version first, and deduplicated.
    fn merged_scan(
        &self,
        state: &dyn Session,
        hot: &HotRows,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        files: &[&Segment],
        include_deleted: bool,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let def = self.rt.def();
        let schema = file_schema(def);
        let ordering = merge_ordering(def, &schema)?;
        let indices = self.indices(projection);
        let cold = self.cold_inputs(state, def, files, filters)?;
        let disjoint = tiers_disjoint(hot, files);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if hot.rows > 0 {
            // Contiguous runs of the key order: each partition stays sorted.
            let parts = spread(hot.batches.clone(), state.config().target_partitions());
            let source = MemorySourceConfig::try_new(&parts, schema.clone(), None)?
                .try_with_sort_information(vec![ordering.clone()])?;
            inputs.push(DataSourceExec::from_data_source(source));
        }
        inputs.extend(cold);
        let union = UnionExec::try_new(inputs)?;
        let mut plan: Arc<dyn ExecutionPlan> = if disjoint {
            // One version per key across all inputs: nothing to merge or deduplicate.
            union
        } else {
            let merged = Arc::new(SortPreservingMergeExec::new(ordering.clone(), union));
            Arc::new(DedupExec::try_new(
                merged,
                def.primary_key_index(),
                ordering,
            )?)
        };
        if !include_deleted {
            let visible = not(col(DELETED_COLUMN, &schema)?)?;
            plan = Arc::new(FilterExec::try_new(visible, plan)?);
        }
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = indices
            .iter()
            .map(|i| {
                let name = self.rt.schema.field(*i).name().clone();
                Ok((col(&name, &schema)?, name))
            })
            .collect::<DfResult<_>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    /// One scan per schema version the files were written under (the manifest says), each
    /// in the file schema of the version the query planned with.
    fn cold_inputs(
        &self,
        state: &dyn Session,
        def: &TableDef,
        files: &[&Segment],
        filters: &[Expr],
    ) -> DfResult<Vec<Arc<dyn ExecutionPlan>>> {
        let (url, store) = self.engine.cold.store(&self.rt.location)?;
        let readers = self.engine.cold.metadata.reader_factory(&def.uid, store);
        let predicate = self
            .pruning_filters(filters)
            .into_iter()
            .reduce(|a, b| a.and(b));
        let mut by_version: std::collections::BTreeMap<u32, Vec<&Segment>> = Default::default();
        for f in files.iter().copied() {
            by_version.entry(f.schema_version).or_default().push(f);
        }
        let newest = self.rt.store.def();
        let mut inputs = Vec::new();
        for (version, files) in by_version {
            let scan = if version == def.schema_version {
                self.file_scan(state, &url, &readers, def, &files, predicate.as_ref())?
            } else {
                // The newest definition knows every version a file can have been written in.
                let columns = newest
                    .columns_of(version)
                    .or_else(|| def.columns_of(version))
                    .ok_or_else(|| {
                        KalamError::Storage(format!(
                            "a Parquet file of {} has schema version {version}, which the catalog does not hold",
                            def.id()
                        ))
                    })?;
                let mut written = def.clone();
                written.schema_version = version;
                written.columns = columns.to_vec();
                let scan =
                    self.file_scan(state, &url, &readers, &written, &files, predicate.as_ref())?;
                adapt_to_version(scan, &written, def)?
            };
            inputs.push(scan);
        }
        Ok(inputs)
    }
}

/// The rows of `batch` (which has `_deleted`) that are not soft-deleted.
fn without_deleted(batch: &RecordBatch) -> DfResult<RecordBatch> {
    let deleted = batch
        .column_by_name(DELETED_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| {
            KalamError::internal("cached hot rows without _deleted").into_datafusion()
        })?;
    let live = datafusion::arrow::compute::not(deleted)?;
    Ok(filter_record_batch(batch, &live)?)
}

/// Batches in the file schema as a scan returns them: without soft-deleted rows unless
/// `keep_deleted`, projected onto the table columns `indices` (the file schema is the table
/// schema and `_seq`: the same column indices).
fn visible_rows(
    batches: impl Iterator<Item = RecordBatch>,
    keep_deleted: bool,
    indices: &[usize],
) -> DfResult<Vec<RecordBatch>> {
    batches
        .map(|b| {
            let visible = if keep_deleted {
                b
            } else {
                without_deleted(&b)?
            };
            Ok(visible.project(indices)?)
        })
        .collect()
}

/// `batches` cut into at most `n` contiguous runs of about equal size, so that DataFusion
/// reads them on `n` threads; the order within each run is kept.
fn spread(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let per = batches.len().div_ceil(n.max(1)).max(1);
    let mut parts: Vec<Vec<RecordBatch>> = Vec::new();
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() {
        parts.push(batches.by_ref().take(per).collect());
    }
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    parts
}

/// What a scan read of a partition at one moment: a plan of the hot tier alone, or the hot
/// rows and the files that may match, to be planned together.
enum Tiers {
    HotOnly(Arc<dyn ExecutionPlan>),
    Both {
        hot: Arc<HotRows>,
        files: Vec<Segment>,
    },
}

/// Rows of files a scan reads whole at most, whatever their compressed bytes: highly
/// compressible values can make a small file large once decoded.
const IN_MEMORY_MAX_ROWS: u64 = 65_536;

/// Whether no key can be in two of the hot rows and the files (by their key ranges).
fn tiers_disjoint(hot: &HotRows, files: &[&Segment]) -> bool {
    key_ranges_disjoint(
        hot.range
            .iter()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
            .chain(
                files
                    .iter()
                    .map(|f| (f.min_key.as_slice(), f.max_key.as_slice())),
            ),
    )
}

/// Whether no two of the key ranges (first, last; inclusive) overlap.
fn key_ranges_disjoint<'a>(ranges: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> bool {
    let mut ranges: Vec<_> = ranges.collect();
    ranges.sort_unstable();
    ranges.windows(2).all(|w| w[0].1 < w[1].0)
}

impl KalamTableProvider {
    /// A scan of files written under `written` (one file group each, every group sorted by
    /// key then `_seq` descending), in that version's file schema, opened by `readers` (which
    /// keep each file's footer once read).
    fn file_scan(
        &self,
        state: &dyn Session,
        url: &datafusion::execution::object_store::ObjectStoreUrl,
        readers: &Arc<dyn ParquetFileReaderFactory>,
        written: &TableDef,
        files: &[&Segment],
        predicate: Option<&Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = file_schema(written);
        let ordering = merge_ordering(written, &schema)?;
        let mut source = ParquetSource::new(schema.clone())
            .with_bloom_filter_on_read(true)
            .with_parquet_file_reader_factory(readers.clone());
        if let Some(predicate) = predicate {
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            // Applied to rows too, not only to prune: the planner takes the predicate as true
            // of the scan's output (an `id = 1` makes `id` constant in the merge order).
            source = source
                .with_predicate(state.create_physical_expr(predicate.clone(), &df_schema)?)
                .with_pushdown_filters(true);
        }
        let groups = files
            .iter()
            .map(|f| {
                // Not `PartitionedFile::new`, which would encode the recorded path again.
                let file = PartitionedFile::from(object_store::ObjectMeta {
                    location: crate::cold::recorded_path(&f.path),
                    last_modified: chrono::DateTime::UNIX_EPOCH,
                    size: f.bytes,
                    e_tag: None,
                    version: None,
                });
                FileGroup::new(vec![file])
            })
            .collect();
        // An upper bound of the rows the scan returns, from the manifest: DataFusion then
        // reads a few thousand rows on one thread instead of handing them to another.
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let statistics = Statistics::new_unknown(&schema).with_num_rows(Precision::Inexact(
            usize::try_from(rows).unwrap_or(usize::MAX),
        ));
        let config = FileScanConfigBuilder::new(url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_output_ordering(vec![ordering])
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The merge order of every input of a scan: key ascending, then `_seq` descending (newest
/// version of a key first).
fn merge_ordering(def: &TableDef, schema: &SchemaRef) -> DfResult<LexOrdering> {
    LexOrdering::new(vec![
        PhysicalSortExpr::new(
            col(def.primary_key.as_str(), schema)?,
            SortOptions::new(false, false),
        ),
        PhysicalSortExpr::new(col(SEQ_COLUMN, schema)?, SortOptions::new(true, false)),
    ])
    .ok_or_else(|| KalamError::internal("empty merge ordering").into_datafusion())
}

/// Projects a scan of files written under `written` onto the file schema of `target`, by
/// column id: a column both have is read (and cast when it was widened since), a column
/// `written` lacks is its `initial_default` (NULL without one), a column `target` lacks is
/// not read. The key and `_seq` pass through as they are, so the merge order holds.
fn adapt_to_version(
    scan: Arc<dyn ExecutionPlan>,
    written: &TableDef,
    target: &TableDef,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let input = scan.schema();
    let output = target.arrow_schema();
    let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
    for (i, c) in target.columns.iter().enumerate() {
        let source: Arc<dyn PhysicalExpr> = match written.columns.iter().find(|w| w.id == c.id) {
            Some(w) if w.data_type == c.data_type => {
                exprs.push((col(w.name.as_str(), &input)?, c.name.to_string()));
                continue;
            }
            Some(w) => col(w.name.as_str(), &input)?,
            None => {
                let fill = c.initial_default.clone().unwrap_or(Value::Null);
                Arc::new(Literal::new(
                    value_to_scalar(c.data_type, &fill).map_err(KalamError::into_datafusion)?,
                ))
            }
        };
        // Cast to the target field itself, so the output carries its type, nullability and
        // metadata (a JSON column stays JSON).
        let field = Arc::new(output.field(i).clone());
        exprs.push((
            Arc::new(CastExpr::new_with_target_field(source, field, None)),
            c.name.to_string(),
        ));
    }
    for system in [UPDATED_COLUMN, DELETED_COLUMN, SEQ_COLUMN] {
        exprs.push((col(system, &input)?, system.to_string()));
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
}

/// `column <op> literal` (either way round; the operator is as seen from the column).
fn column_op_literal(f: &Expr) -> Option<(&Column, Operator, &ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else {
        return None;
    };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c, *op, v)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c, op.swap()?, v)),
        _ => None,
    }
}

/// The key encoding of a literal compared with the primary key, when its type fits.
fn key_of_literal(def: &TableDef, value: &ScalarValue) -> Option<RowKey> {
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
impl TableProvider for KalamTableProvider {
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
        let def = self.rt.def();
        if def.kind == TableKind::Stream {
            // Events are never flushed, so the hot tier is all there is; they have no
            // `_deleted` to hide by, and their keys start with the event time, so the scan
            // returns them oldest first. No point read: the key is not `pk = literal`.
            return self.hot_scan(&partition, projection, filters, limit, true);
        }
        let include_deleted = !def.kind.has_system_columns() || mentions_deleted(filters);
        // The hot rows and the manifest must be of one moment: a flush committing between
        // the two reads would otherwise hide its rows from both. Files stay in the store a
        // while after a cleanup replaced them, so reading them afterwards is safe.
        let tiers = self.rt.store.read_consistent(|| {
            let segments = self
                .engine
                .cold
                .segments(self.rt.store.cf_name(), &partition);
            let files: Vec<Segment> = segments
                .iter()
                .filter(|s| self.file_may_match(s, filters))
                .cloned()
                .collect();
            if files.is_empty() {
                let plan = self.hot_scan(&partition, projection, filters, limit, include_deleted);
                return plan.map(Tiers::HotOnly);
            }
            // Every hot version takes part, deleted ones too: a hot tombstone hides older
            // cold versions of its key.
            let hot = match self.cached_hot(&partition, filters, true)? {
                Some(hot) => hot,
                None => {
                    Arc::new(self.hot_rows(&partition, file_schema(def), filters, None, true)?)
                }
            };
            Ok(Tiers::Both { hot, files })
        });
        let plan = match tiers {
            Ok(Tiers::HotOnly(plan)) => Ok(plan),
            Ok(Tiers::Both { hot, files }) => {
                let files: Vec<&Segment> = files.iter().collect();
                if self.fits_in_memory(&hot, &files) {
                    self.in_memory_scan(&hot, &files, projection, include_deleted)
                        .await
                } else {
                    self.merged_scan(state, &hot, projection, filters, &files, include_deleted)
                }
            }
            Err(e) => Err(e),
        };
        plan.map_err(|e| match e {
            DataFusionError::External(_) => e,
            other => KalamError::from(other).into_datafusion(),
        })
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
            engine: self.engine.clone(),
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
    engine: Arc<Engine>,
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
        ctx: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let def = self.rt.def();
        // The rows are written as one batch, so all of them are held first: in the query
        // memory pool, so that `INSERT ... SELECT` of more than it allows fails with
        // RESOURCES_EXHAUSTED (writing nothing) instead of taking the node's memory.
        let reservation = MemoryConsumer::new("KalamInsert").register(ctx.memory_pool());
        let mut rows: Vec<Vec<Value>> = Vec::new();
        while let Some(batch) = data.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            rows.extend(batch_to_values(def, &batch).map_err(KalamError::into_datafusion)?);
        }
        self.engine
            .insert_rows(&self.rt, &self.partition, rows)
            .await
            .map_err(KalamError::into_datafusion)
    }
}

#[cfg(test)]
mod tests {
    use super::key_ranges_disjoint;

    fn disjoint(ranges: &[(&[u8], &[u8])]) -> bool {
        key_ranges_disjoint(ranges.iter().copied())
    }

    /// The merge is skipped only when no key can be in two inputs: ranges that share even
    /// their end points overlap, in whatever order the inputs come.
    #[test]
    fn key_ranges_overlap_at_shared_end_points() {
        assert!(disjoint(&[]));
        assert!(disjoint(&[(b"a", b"z")]));
        assert!(disjoint(&[(b"m", b"p"), (b"a", b"c"), (b"d", b"l")]));
        assert!(!disjoint(&[(b"a", b"c"), (b"c", b"d")]));
        assert!(!disjoint(&[(b"d", b"f"), (b"a", b"z")]));
        assert!(!disjoint(&[(b"k", b"k"), (b"a", b"c"), (b"j", b"l")]));
    }
}
