//! Parquet files of the cold tier: their schema (the table's columns, `_updated`, `_deleted`
//! and the hidden `_seq`), writer settings (zstd for the table's columns, none for the
//! version columns; bloom filter and page statistics on the key and `_updated`), streaming
//! writes of hot rows, the version lookup of keys that INSERT needs to refuse a key that is
//! live only in Parquet, the two reads of deleted-row retention: the versions of a file
//! ([`scan_versions`]) and a copy of a file without some of its rows ([`rewrite_segment`]),
//! and the whole read of a small file a query holds in memory ([`read_segment`]).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{
    DataType, Field, Int16Type, Int32Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType,
    UInt64Type,
};
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{Segment, SEQ_COLUMN};
use crate::catalog::{TableDef, DELETED_COLUMN, UPDATED_COLUMN};
use crate::error::{KalamError, Result};
use crate::sql::rows::RowBatchBuilder;
use crate::storage::{RowKey, StoredRowRef};

/// Rows per row group: small enough that statistics prune well, large enough to compress.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Rows per file: a large backlog becomes several files instead of one huge buffer.
pub const FILE_ROWS: usize = 1_000_000;

/// The schema of a file: the table's query schema plus `_seq`.
pub fn file_schema(def: &TableDef) -> SchemaRef {
    let table = def.arrow_schema();
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// Writer settings: zstd for the table's columns; the version columns are left without a
/// codec. Reading a zstd column chunk costs a compressor and a decompressor context
/// (parquet 59 creates both per chunk, about 15 µs here), and every query reads the version
/// columns of every file it opens, so a point query of a user's file paid six contexts
/// where it now pays three. Their encodings keep them small without one: `_updated` and
/// `_seq` are delta-packed integers (a flush holds a window of commits, mostly in key order
/// for snowflake keys), `_deleted` is bit-packed.
fn properties(def: &TableDef) -> WriterProperties {
    let pk = ColumnPath::from(def.primary_key.as_str());
    let updated = ColumnPath::from(UPDATED_COLUMN);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(pk.clone(), EnabledStatistics::Page)
        .set_column_statistics_enabled(updated.clone(), EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(pk, true)
        .set_column_bloom_filter_enabled(updated, true)
        .set_column_compression(ColumnPath::from(DELETED_COLUMN), Compression::UNCOMPRESSED);
    for column in [UPDATED_COLUMN, SEQ_COLUMN] {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// The Parquet encoder of one file: a task of the flush's runtime that encodes, compresses
/// and uploads the batches it is sent, so that on a multi-threaded runtime this work runs on
/// another core than the RocksDB scan and row decoding that produce the batches.
struct Encoder {
    batches: tokio::sync::mpsc::Sender<RecordBatch>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Batches in flight to the encoder: enough to keep both sides busy, few enough to bound
/// memory (each is at most [`BATCH_ROWS`] rows).
const ENCODER_QUEUE: usize = 2;
/// Rows converted to one Arrow batch.
const BATCH_ROWS: usize = 8192;

/// Writes one file from rows given in key order; tracks what its manifest entry needs.
pub struct SegmentWriter {
    /// Until the first batch: then it moves into the encoder task.
    writer: Option<AsyncArrowWriter<BufWriter>>,
    encoder: Option<Encoder>,
    /// What the encoder buffers (last reported), for the job's memory figure.
    buffered: Arc<std::sync::atomic::AtomicUsize>,
    /// Size of the last batch sent, to estimate the queued ones.
    last_batch_bytes: usize,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// Rows not yet sent to the encoder.
    pending: RowBatchBuilder,
    segment: Segment,
    /// Keys written, for deleting them from the hot tier at commit.
    pub keys: Vec<Vec<u8>>,
}

impl SegmentWriter {
    pub fn new(store: Arc<dyn ObjectStore>, path: ObjectPath, def: Arc<TableDef>) -> Result<Self> {
        let schema = file_schema(&def);
        let writer = AsyncArrowWriter::try_new(
            BufWriter::new(store.clone(), path.clone()),
            schema.clone(),
            Some(properties(&def)),
        )
        .map_err(KalamError::storage)?;
        let pending = RowBatchBuilder::new(&def, schema.clone(), BATCH_ROWS)?;
        Ok(Self {
            writer: Some(writer),
            encoder: None,
            buffered: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            last_batch_bytes: 0,
            store,
            segment: Segment {
                path: path.to_string(),
                seq_from: u64::MAX,
                seq_to: 0,
                rows: 0,
                bytes: 0,
                min_updated: i64::MAX,
                max_updated: i64::MIN,
                min_key: Vec::new(),
                max_key: Vec::new(),
                schema_version: def.schema_version,
                min_deleted_updated: None,
            },
            path,
            pending,
            keys: Vec::new(),
        })
    }

    pub fn rows(&self) -> u64 {
        self.segment.rows + self.pending.len() as u64
    }

    /// Bytes buffered in memory by the writer and the batches queued for it (for the job's
    /// memory figure).
    pub fn memory_size(&self) -> usize {
        let queued = self.encoder.as_ref().map_or(0, |e| {
            ENCODER_QUEUE.saturating_sub(e.batches.capacity()) * self.last_batch_bytes
        });
        let writer = self.writer.as_ref().map_or(0, |w| w.memory_size());
        writer + queued + self.buffered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds one row (hot key, stored version read in place); rows must come in key order.
    pub async fn push(
        &mut self,
        hot_key: &[u8],
        row_key: RowKey,
        row: &StoredRowRef<'_>,
    ) -> Result<()> {
        let s = &mut self.segment;
        if s.rows == 0 && self.pending.is_empty() {
            s.min_key = row_key.0.clone();
        }
        s.max_key = row_key.0;
        s.seq_from = s.seq_from.min(row.seq);
        s.seq_to = s.seq_to.max(row.seq);
        s.min_updated = s.min_updated.min(row.updated_micros);
        s.max_updated = s.max_updated.max(row.updated_micros);
        if row.deleted {
            s.min_deleted_updated = Some(
                s.min_deleted_updated
                    .map_or(row.updated_micros, |m| m.min(row.updated_micros)),
            );
        }
        self.keys.push(hot_key.to_vec());
        self.pending.push(row)?;
        if self.pending.is_full(BATCH_ROWS) {
            self.write_pending().await?;
        }
        Ok(())
    }

    async fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.segment.rows += self.pending.len() as u64;
        let batch = self.pending.finish()?;
        let encoder = match self.encoder.as_ref() {
            Some(e) => e,
            None => {
                let Some(writer) = self.writer.take() else {
                    return Err(KalamError::internal("the Parquet writer is gone"));
                };
                self.encoder.insert(self.spawn_encoder(writer))
            }
        };
        self.last_batch_bytes = batch.get_array_memory_size();
        if encoder.batches.send(batch).await.is_err() {
            // The encoder stops early only on an error: report it.
            return match self.stop_encoder().await {
                Err(e) => Err(e),
                Ok(_) => Err(KalamError::internal("the Parquet encoder stopped early")),
            };
        }
        Ok(())
    }

    fn spawn_encoder(&self, mut writer: AsyncArrowWriter<BufWriter>) -> Encoder {
        let (batches, mut received) = tokio::sync::mpsc::channel::<RecordBatch>(ENCODER_QUEUE);
        let buffered = self.buffered.clone();
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            while let Some(batch) = received.recv().await {
                writer.write(&batch).await.map_err(KalamError::storage)?;
                buffered.store(writer.memory_size(), std::sync::atomic::Ordering::Relaxed);
            }
            writer
                .close()
                .await
                .map_err(|e| KalamError::LocationUnreachable(format!("writing {path}: {e}")))?;
            Ok(())
        });
        Encoder { batches, task }
    }

    /// Closes the encoder's queue and waits for it: the file is complete when this is `Ok`.
    async fn stop_encoder(&mut self) -> Result<bool> {
        let Some(Encoder { batches, task }) = self.encoder.take() else {
            return Ok(false);
        };
        drop(batches);
        match task.await {
            Ok(result) => result.map(|()| true),
            Err(e) => Err(KalamError::internal(format!(
                "the Parquet encoder failed: {e}"
            ))),
        }
    }

    /// Finishes the file (the object appears in the store only now) and returns its entry.
    pub async fn finish(mut self) -> Result<(Segment, Vec<Vec<u8>>)> {
        self.write_pending().await?;
        if !self.stop_encoder().await? {
            // No batch was written: close the (empty) file here.
            if let Some(writer) = self.writer.take() {
                writer.close().await.map_err(|e| {
                    KalamError::LocationUnreachable(format!("writing {}: {e}", self.path))
                })?;
            }
        }
        let Self {
            store,
            path,
            mut segment,
            keys,
            ..
        } = self;
        segment.bytes = store
            .head(&path)
            .await
            .map_err(|e| KalamError::LocationUnreachable(format!("reading back {path}: {e}")))?
            .size;
        Ok((segment, keys))
    }
}

/// The newest cold version of keys of one partition: key -> (seq, `_updated`, deleted).
pub async fn lookup_versions(
    store: &Arc<dyn ObjectStore>,
    def: &TableDef,
    segments: &[Segment],
    keys: &[RowKey],
) -> Result<HashMap<Vec<u8>, (u64, i64, bool)>> {
    let mut found: HashMap<Vec<u8>, (u64, i64, bool)> = HashMap::new();
    let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(|k| k.0.as_slice()).collect();
    for seg in segments {
        let candidate = keys.iter().any(|k| {
            k.0.as_slice() >= seg.min_key.as_slice() && k.0.as_slice() <= seg.max_key.as_slice()
        });
        if !candidate {
            continue;
        }
        scan_versions(store, def, seg, |key, seq, updated, deleted| {
            if !wanted.contains(key.as_slice()) {
                return;
            }
            let version = (seq, updated, deleted);
            let entry = found.entry(key).or_insert(version);
            if version.0 > entry.0 {
                *entry = version;
            }
        })
        .await?;
    }
    Ok(found)
}

/// Rows per batch when cleanup or a small query reads a file.
const SCAN_BATCH_ROWS: usize = 8192;

/// The order-preserving key encoding ([`RowKey`]) of every row of a primary-key column
/// (`None` for NULL). The column's own type decides, so a file keeps reading whatever type
/// it was written with.
pub fn column_keys(pk: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>> {
    let bad = || {
        KalamError::Storage(format!(
            "a Parquet key column of type {} that does not decode",
            pk.data_type()
        ))
    };
    let n = pk.len();
    let mut out = Vec::with_capacity(n);
    match pk.data_type() {
        DataType::Int16 => {
            let a = pk.as_primitive_opt::<Int16Type>().ok_or_else(bad)?;
            out.extend(
                (0..n).map(|i| a.is_valid(i).then(|| RowKey::from_int(a.value(i) as i64).0)),
            );
        }
        DataType::Int32 => {
            let a = pk.as_primitive_opt::<Int32Type>().ok_or_else(bad)?;
            out.extend(
                (0..n).map(|i| a.is_valid(i).then(|| RowKey::from_int(a.value(i) as i64).0)),
            );
        }
        DataType::Int64 => {
            let a = pk.as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
            out.extend((0..n).map(|i| a.is_valid(i).then(|| RowKey::from_int(a.value(i)).0)));
        }
        DataType::Utf8 => {
            let a = pk.as_string_opt::<i32>().ok_or_else(bad)?;
            out.extend((0..n).map(|i| a.is_valid(i).then(|| RowKey::from_text(a.value(i)).0)));
        }
        DataType::LargeUtf8 => {
            let a = pk.as_string_opt::<i64>().ok_or_else(bad)?;
            out.extend((0..n).map(|i| a.is_valid(i).then(|| RowKey::from_text(a.value(i)).0)));
        }
        DataType::Utf8View => {
            let a = pk.as_string_view_opt().ok_or_else(bad)?;
            out.extend((0..n).map(|i| a.is_valid(i).then(|| RowKey::from_text(a.value(i)).0)));
        }
        _ => return Err(bad()),
    }
    Ok(out)
}

/// The version columns of one batch of a file: key, `_seq`, `_updated`, `_deleted`.
struct Versions {
    keys: Vec<Option<Vec<u8>>>,
    seqs: Vec<u64>,
    updated: Vec<i64>,
    deleted: Vec<bool>,
}

fn versions_of(batch: &RecordBatch, pk: &str) -> Result<Versions> {
    let col = |n: &str| {
        batch
            .column_by_name(n)
            .cloned()
            .ok_or_else(|| KalamError::Storage(format!("parquet file lacks column {n}")))
    };
    let bad = |n: &str| KalamError::Storage(format!("parquet column {n} has an unexpected type"));
    let keys = column_keys(&col(pk)?)?;
    let seq = col(SEQ_COLUMN)?;
    let seqs = seq
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| bad(SEQ_COLUMN))?
        .values()
        .to_vec();
    let updated = col(UPDATED_COLUMN)?;
    let updated = updated
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| bad(UPDATED_COLUMN))?
        .values()
        .to_vec();
    let deleted = col(DELETED_COLUMN)?;
    let deleted = deleted
        .as_boolean_opt()
        .ok_or_else(|| bad(DELETED_COLUMN))?;
    let deleted = (0..deleted.len())
        .map(|i| deleted.is_valid(i) && deleted.value(i))
        .collect();
    Ok(Versions {
        keys,
        seqs,
        updated,
        deleted,
    })
}

/// Calls `f(key, seq, updated, deleted)` for every row of a file that has a key, reading
/// only the key, `_updated`, `_deleted` and `_seq` columns.
pub async fn scan_versions(
    store: &Arc<dyn ObjectStore>,
    def: &TableDef,
    segment: &Segment,
    mut f: impl FnMut(Vec<u8>, u64, i64, bool),
) -> Result<()> {
    #[allow(deprecated)] // its replacement (a hand-written AsyncFileReader) is more code
    let reader = ParquetObjectReader::new(store.clone(), super::recorded_path(&segment.path));
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(KalamError::storage)?;
    let names = [
        def.primary_key.as_str(),
        UPDATED_COLUMN,
        DELETED_COLUMN,
        SEQ_COLUMN,
    ];
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(SCAN_BATCH_ROWS)
        .build()
        .map_err(KalamError::storage)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(KalamError::storage)?;
        let v = versions_of(&batch, def.primary_key.as_str())?;
        let rows = v.keys.into_iter().zip(v.seqs).zip(v.updated).zip(v.deleted);
        for (((key, seq), updated), deleted) in rows {
            if let Some(key) = key {
                f(key, seq, updated, deleted);
            }
        }
    }
    Ok(())
}

/// Every row of one small file, in `schema` (the file schema of the version it was written
/// under), in file order. One read of the whole file (one GET on S3), decoded in place: for
/// a file of a few kilobytes the footer, page and decoder steps of a file scan each cost
/// more than the decoding. A query reads larger files through DataFusion's scan.
pub async fn read_segment(
    store: &Arc<dyn ObjectStore>,
    segment: &Segment,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let path = super::recorded_path(&segment.path);
    let unreachable =
        |e: object_store::Error| KalamError::LocationUnreachable(format!("reading {path}: {e}"));
    // A range read is one blocking call on a filesystem (a plain GET is two: open, then read).
    let bytes = store
        .get_range(&path, 0..segment.bytes)
        .await
        .map_err(unreachable)?;
    let options = ArrowReaderOptions::new().with_schema(schema.clone());
    ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
        .map_err(KalamError::storage)?
        .with_batch_size(SCAN_BATCH_ROWS)
        .build()
        .map_err(KalamError::storage)?
        .map(|batch| batch.map_err(KalamError::storage))
        .collect()
}

/// Writes a copy of the file `source` to `target` without the rows for which `remove(key,
/// seq)` is true: the same columns (its schema version), writer settings and row order, so
/// the copy is a file flush could have written. Returns the copy's manifest entry and how
/// many rows were left out. `note_memory` hears the bytes the writer buffers.
pub async fn rewrite_segment(
    store: &Arc<dyn ObjectStore>,
    def: &TableDef,
    source: &Segment,
    target: ObjectPath,
    remove: impl Fn(&[u8], u64) -> bool,
    note_memory: impl Fn(usize),
) -> Result<(Segment, u64)> {
    #[allow(deprecated)] // as in `scan_versions`
    let reader = ParquetObjectReader::new(store.clone(), super::recorded_path(&source.path));
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(KalamError::storage)?;
    let schema = builder.schema().clone();
    let mut stream = builder
        .with_batch_size(SCAN_BATCH_ROWS)
        .build()
        .map_err(KalamError::storage)?;
    let mut writer = AsyncArrowWriter::try_new(
        BufWriter::new(store.clone(), target.clone()),
        schema,
        Some(properties(def)),
    )
    .map_err(KalamError::storage)?;
    let mut segment = Segment {
        path: target.to_string(),
        seq_from: u64::MAX,
        seq_to: 0,
        rows: 0,
        bytes: 0,
        min_updated: i64::MAX,
        max_updated: i64::MIN,
        min_key: Vec::new(),
        max_key: Vec::new(),
        schema_version: source.schema_version,
        min_deleted_updated: None,
    };
    let (mut min_key, mut max_key): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut removed = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(KalamError::storage)?;
        let v = versions_of(&batch, def.primary_key.as_str())?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let rows = v.keys.into_iter().zip(v.seqs).zip(v.updated).zip(v.deleted);
        for (((key, seq), updated), deleted) in rows {
            if key.as_deref().is_some_and(|k| remove(k, seq)) {
                removed += 1;
                keep.push(false);
                continue;
            }
            keep.push(true);
            segment.rows += 1;
            segment.seq_from = segment.seq_from.min(seq);
            segment.seq_to = segment.seq_to.max(seq);
            segment.min_updated = segment.min_updated.min(updated);
            segment.max_updated = segment.max_updated.max(updated);
            if deleted {
                segment.min_deleted_updated = Some(
                    segment
                        .min_deleted_updated
                        .map_or(updated, |m| m.min(updated)),
                );
            }
            if let Some(key) = key {
                if min_key.as_ref().is_none_or(|m| key < *m) {
                    min_key = Some(key.clone());
                }
                if max_key.as_ref().is_none_or(|m| key > *m) {
                    max_key = Some(key);
                }
            }
        }
        let kept =
            filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(KalamError::internal)?;
        if kept.num_rows() > 0 {
            writer.write(&kept).await.map_err(KalamError::storage)?;
            note_memory(writer.memory_size());
        }
    }
    segment.min_key = min_key.unwrap_or_default();
    segment.max_key = max_key.unwrap_or_default();
    writer
        .close()
        .await
        .map_err(|e| KalamError::LocationUnreachable(format!("writing {target}: {e}")))?;
    segment.bytes = store
        .head(&target)
        .await
        .map_err(|e| KalamError::LocationUnreachable(format!("reading back {target}: {e}")))?
        .size;
    Ok((segment, removed))
}
