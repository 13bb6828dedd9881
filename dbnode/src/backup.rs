//! `BACKUP NAMESPACE`, `RESTORE NAMESPACE` and `SHOW BACKUP` (docs/adr/0015-backup-restore.md).
//!
//! A backup is a directory (`file:///...`) or an S3 prefix (`s3://bucket/...`) holding:
//! ```text
//! manifest.json                      format version, node, times, tables, every file's size and sha256
//! manifest.json.sha256               sha256 of manifest.json (written last: the backup's commit point)
//! catalog/namespace.json             the namespace definition
//! catalog/{table}/table.json         the table definition
//! catalog/{table}/schema_v{N}.json   every schema version of the table
//! data/{table}/hot.rows              the hot rows: raw keys and row-codec values (every version field)
//! data/{table}/p{i}/{j}.parquet      the Parquet files of partition i, byte for byte
//! ```
//! Each table is read at one point in time: under the table's write lock a RocksDB snapshot is
//! taken and the segment manifests, the definition and the sequence are read, so the hot rows
//! and the files listed belong to the same moment while writes go on
//! ([`TableStore::backup_snapshot`](crate::storage::table::TableStore::backup_snapshot)).
//!
//! A restore reads the manifest, then stages every table (new column family, hot rows, files
//! copied into the table's location, segment manifests) while it checks each file's size and
//! sha256 as it streams by; only when every file of every table is verified does the catalog
//! commit the namespace with all its tables at once. A failure removes what was staged; a crash
//! leaves restore marks that the next start-up cleans. Both statements are jobs in
//! `system.jobs` (`backup`, `restore`) with progress, run on a thread of their own, and the
//! statement waits for the job.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::execution::context::SessionState;
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use futures::stream::{BoxStream, LocalBoxStream};
use futures::StreamExt;
use kalam_client::wire::{ColumnInfo, QueryResult, Row};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::catalog::{
    LocationKind, NamespaceDef, SchemaVersion, TableDef, TableKind, DELETED_COLUMN,
};
use crate::cold::{
    encode_manifest, location, manifest_key, ColdStorage, Segment, Segments, SEQ_COLUMN,
};
use crate::engine::{Engine, TableRuntime};
use crate::error::{clip, KalamError, Result};
use crate::ids::{NamespaceId, UserId, SYSTEM_NAMESPACE};
use crate::jobs::{JobHandle, JobRecord, JobType};
use crate::sql::ddl;
use crate::sql::parser::OptionList;
use crate::storage::{Partition, RawRow, Storage, StoredRow};

/// The layout and manifest version this node writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// `meta` keys `restorepending/{cf}` mark column families a restore staged and has not
/// committed; start-up drops those the catalog does not claim.
pub const RESTORE_PENDING_PREFIX: &str = "restorepending/";

const MANIFEST: &str = "manifest.json";
const MANIFEST_SUM: &str = "manifest.json.sha256";
const NAMESPACE_FILE: &str = "catalog/namespace.json";
/// First bytes of a hot-rows file; then records `u32 LE key length, u32 LE value length,
/// key, value` (the value is a `StoredRow` in the node's row codec, docs/adr/0002).
const HOT_MAGIC: &[u8; 8] = b"KLMHOT01";
const HOT_ROW_FORMAT: &str =
    "KLMHOT01: records of u32-LE key length, u32-LE value length, key, StoredRow (postcard)";
/// Size of the reads and writes that stream files.
const CHUNK: usize = 8 << 20;
/// Hot rows written to RocksDB per batch by a restore.
const RESTORE_BATCH_BYTES: usize = 4 << 20;
const MAX_KEY_BYTES: usize = 1 << 20;
const MAX_VALUE_BYTES: usize = 1 << 30;
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

pub fn restore_pending_key(cf: &str) -> Vec<u8> {
    format!("{RESTORE_PENDING_PREFIX}{cf}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------------------------

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format_version: u32,
    pub kalamdb_version: String,
    pub node_id: String,
    pub job_id: String,
    pub namespace: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub hot_row_format: String,
    pub tables: Vec<TableEntry>,
    /// Every file of the backup but the manifest itself, with its size and sha256.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the backup.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One table of a backup, as it was at its snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub kind: TableKind,
    pub schema_version: u32,
    pub schema_versions: Vec<u32>,
    /// `catalog/{table}/table.json`.
    pub definition: String,
    /// `catalog/{table}/schema_v{N}.json`, oldest first.
    pub schema_files: Vec<String>,
    /// The table's last commit sequence and `_updated` at the snapshot.
    pub snapshot_seq: u64,
    pub last_updated_micros: i64,
    /// Keys whose newest version is live (what `SELECT COUNT(*)` counts over all users).
    pub rows: u64,
    /// Keys whose newest version is soft-deleted.
    pub deleted_rows: u64,
    /// Row versions in the hot tier (tombstones included).
    pub hot_rows: u64,
    /// Row versions in Parquet files.
    pub cold_rows: u64,
    /// USER tables: users with rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// `data/{table}/hot.rows`.
    pub hot_file: String,
    pub partitions: Vec<PartitionEntry>,
}

/// The Parquet files of one partition: a user of a USER table, or the shared partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub segments: Vec<SegmentEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Path of the copy inside the backup.
    pub file: String,
    /// The manifest entry of the file on the node it was backed up from.
    pub segment: Segment,
}

fn corrupt(file: &str, reason: impl Into<String>) -> KalamError {
    KalamError::BackupCorrupt {
        file: file.to_string(),
        reason: reason.into(),
    }
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(KalamError::internal)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(file, clip(&e.to_string())))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A file read back matches its manifest entry.
fn verify(entry: &FileEntry, bytes: u64, sha256: &str) -> Result<()> {
    if bytes != entry.bytes {
        return Err(corrupt(
            &entry.path,
            format!("it has {bytes} bytes, manifest.json says {}", entry.bytes),
        ));
    }
    if sha256 != entry.sha256 {
        return Err(corrupt(
            &entry.path,
            "its sha256 checksum differs from the one in manifest.json",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Where a backup lives
// ---------------------------------------------------------------------------------------------

/// A backup URL opened: its store and the path prefix of the backup inside it.
struct Target {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

impl Target {
    fn path(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{rel}", self.prefix))
    }
}

fn credentials_option(options: &OptionList) -> Result<Option<String>> {
    let mut credentials_ref = None;
    for (key, value) in options {
        match (key.as_str(), value) {
            ("credentials_ref", JsonValue::String(name)) => {
                NamespaceId::new(name.clone()).map_err(|_| {
                    KalamError::InvalidOption("credentials_ref must match ^[a-z][a-z0-9_]*$".into())
                })?;
                credentials_ref = Some(name.clone());
            }
            _ => {
                return Err(KalamError::InvalidOption(format!(
                    "unknown or ill-typed backup option '{}' (known: credentials_ref = '<name>')",
                    clip(key)
                )))
            }
        }
    }
    Ok(credentials_ref)
}

/// Opens a backup URL: `file:///<absolute directory>` or `s3://bucket/prefix`. S3 credentials
/// come from `WITH (credentials_ref = '<name>')`, else from the registered storage location
/// whose path covers the URL (as for `LOCATION 's3://...'`). `create` is false for reads: a
/// missing directory is then "no backup", and nothing is created.
fn open_target(engine: &Engine, url: &str, options: &OptionList, create: bool) -> Result<Target> {
    let credentials_ref = credentials_option(options)?;
    if url.split('/').any(|segment| segment == "..") {
        return Err(KalamError::InvalidValue(
            "a backup URL must not contain '..'".into(),
        ));
    }
    if let Some(dir) = url.strip_prefix("file://") {
        if !std::path::Path::new(dir).is_absolute() {
            return Err(KalamError::InvalidValue(format!(
                "'{}' is not a file:// URL of an absolute directory (file:///backups/app)",
                clip(url)
            )));
        }
        if credentials_ref.is_some() {
            return Err(KalamError::InvalidOption(
                "credentials_ref applies to s3:// URLs only".into(),
            ));
        }
        if !create && !std::path::Path::new(dir).is_dir() {
            return Err(KalamError::BackupNotFound(clip(url)));
        }
        let store = location::build_store(
            LocationKind::Filesystem,
            dir,
            None,
            engine.cold.credentials_dir(),
        )?;
        return Ok(Target {
            store,
            prefix: String::new(),
            url: url.to_string(),
        });
    }
    if url.starts_with("s3://") {
        let (root, prefix) = location::split_s3(url)?;
        let credentials_ref = match credentials_ref {
            Some(name) => Some(name),
            None => {
                let covering =
                    crate::cold::location::covering_s3_location(engine.catalog.locations(), url)
                        .ok_or_else(|| {
                            KalamError::StorageLocationNotFound(format!(
                            "no storage location covers '{}'; add one to system.storage_locations \
                             or give WITH (credentials_ref = '<name>')",
                            clip(url)
                        ))
                        })?;
                covering.credentials_ref
            }
        };
        let store = location::build_store(
            LocationKind::S3,
            &root,
            credentials_ref.as_deref(),
            engine.cold.credentials_dir(),
        )?;
        return Ok(Target {
            store,
            prefix,
            url: url.to_string(),
        });
    }
    Err(KalamError::InvalidValue(format!(
        "'{}' is not a backup URL: use file:///<absolute directory> or s3://<bucket>/<prefix>",
        clip(url)
    )))
}

// ---------------------------------------------------------------------------------------------
// Streaming files
// ---------------------------------------------------------------------------------------------

/// Why a read failed: the object is not there, or anything else (with the store's message).
enum ReadFailure {
    Missing,
    Other(String),
}

impl ReadFailure {
    fn of(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => ReadFailure::Missing,
            other => ReadFailure::Other(other.to_string()),
        }
    }
}

fn write_error(file: &str, e: &dyn std::fmt::Display) -> KalamError {
    KalamError::LocationUnreachable(clip(&format!("writing {file}: {e}")))
}

/// An object read chunk by chunk: a local file in large reads (object_store's own stream of
/// a local file reads 8 KiB at a time), anything else as the store streams it.
enum Chunks {
    File(std::fs::File),
    Stream(BoxStream<'static, std::result::Result<Vec<u8>, String>>),
}

impl Chunks {
    fn of(got: GetResult) -> Self {
        match got.payload {
            GetResultPayload::File(file, _) => Chunks::File(file),
            GetResultPayload::Stream(stream) => Chunks::Stream(
                stream
                    .map(|chunk| chunk.map(|b| b.to_vec()).map_err(|e| e.to_string()))
                    .boxed(),
            ),
        }
    }

    async fn next(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        match self {
            Chunks::File(file) => {
                let mut buf = Vec::with_capacity(CHUNK);
                Read::take(&mut *file, CHUNK as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| e.to_string())?;
                Ok((!buf.is_empty()).then_some(buf))
            }
            Chunks::Stream(stream) => stream.next().await.transpose(),
        }
    }
}

/// Size and sha256 of what was streamed.
struct Digested {
    bytes: u64,
    sha256: String,
}

/// Copies one object into another store, hashing what passes.
async fn copy_object(
    from: &Arc<dyn ObjectStore>,
    from_path: &ObjectPath,
    to: &Arc<dyn ObjectStore>,
    to_path: &ObjectPath,
    read_error: &dyn Fn(ReadFailure) -> KalamError,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Digested> {
    let got = from
        .get(from_path)
        .await
        .map_err(|e| read_error(ReadFailure::of(e)))?;
    let mut chunks = Chunks::of(got);
    let mut writer = BufWriter::with_capacity(to.clone(), to_path.clone(), CHUNK);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let copied: Result<()> = async {
        while let Some(chunk) = chunks
            .next()
            .await
            .map_err(|m| read_error(ReadFailure::Other(m)))?
        {
            hasher.update(&chunk);
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| write_error(to_path.as_ref(), &e))?;
            bytes += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .shutdown()
        .await
        .map_err(|e| write_error(to_path.as_ref(), &e))?;
    Ok(Digested {
        bytes,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// The whole of a small object; `None` when it does not exist.
async fn get_bytes(t: &Target, rel: &str) -> Result<Option<Vec<u8>>> {
    let unreachable = |e: object_store::Error| {
        KalamError::LocationUnreachable(clip(&format!("reading {rel}: {e}")))
    };
    match t.store.get(&t.path(rel)).await {
        Ok(got) => Ok(Some(got.bytes().await.map_err(unreachable)?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(unreachable(e)),
    }
}

/// A small file of the backup, checked against its manifest entry.
async fn read_verified(
    t: &Target,
    files: &HashMap<&str, &FileEntry>,
    rel: &str,
    progress: &mut Progress,
) -> Result<Vec<u8>> {
    let entry = files
        .get(rel)
        .ok_or_else(|| corrupt(rel, "manifest.json does not list it"))?;
    let bytes = get_bytes(t, rel)
        .await?
        .ok_or_else(|| corrupt(rel, "it is missing"))?;
    verify(entry, bytes.len() as u64, &sha256_hex(&bytes))?;
    progress.bytes += bytes.len() as u64;
    Ok(bytes)
}

/// Reads and checks `manifest.json` against `manifest.json.sha256`.
async fn read_manifest(t: &Target) -> Result<BackupManifest> {
    let Some(bytes) = get_bytes(t, MANIFEST).await? else {
        return Err(KalamError::BackupNotFound(clip(&t.url)));
    };
    let sum = get_bytes(t, MANIFEST_SUM)
        .await?
        .ok_or_else(|| corrupt(MANIFEST_SUM, "it is missing (the backup did not finish)"))?;
    if String::from_utf8_lossy(&sum).trim() != sha256_hex(&bytes) {
        return Err(corrupt(
            MANIFEST,
            "its sha256 checksum differs from manifest.json.sha256",
        ));
    }
    let value: JsonValue = parse_json(&bytes, MANIFEST)?;
    let version = value.get("format_version").and_then(JsonValue::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(KalamError::Unsupported(format!(
            "the backup has format version {}; this node reads version {FORMAT_VERSION}",
            version.map_or_else(|| "?".to_string(), |v| v.to_string())
        )));
    }
    serde_json::from_value(value).map_err(|e| corrupt(MANIFEST, clip(&e.to_string())))
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// What a backup or restore did so far (the job's result while it runs).
#[derive(Debug, Default)]
struct Progress {
    tables: usize,
    tables_done: usize,
    rows: u64,
    files: u64,
    bytes: u64,
    last_report: Option<Instant>,
}

impl Progress {
    fn json(&self) -> JsonValue {
        json!({"tables": self.tables, "tables_done": self.tables_done, "rows": self.rows,
               "files": self.files, "bytes": self.bytes})
    }

    fn report(&mut self, job: &JobHandle) {
        self.last_report = Some(Instant::now());
        job.progress(self.json());
    }

    fn maybe_report(&mut self, job: &JobHandle) {
        if self
            .last_report
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
        {
            self.report(job);
        }
    }

    fn add_bytes(&mut self, n: u64, job: &JobHandle) {
        self.bytes += n;
        self.maybe_report(job);
    }

    /// The final result: progress plus duration and throughput.
    fn finished(&self, started: Instant, extra: JsonValue) -> JsonValue {
        let seconds = started.elapsed().as_secs_f64();
        let mb_per_s = if seconds > 0.0 {
            self.bytes as f64 / 1e6 / seconds
        } else {
            0.0
        };
        let mut out = json!({
            "tables": self.tables, "rows": self.rows, "files": self.files, "bytes": self.bytes,
            "duration_ms": seconds * 1000.0, "mb_per_s": mb_per_s,
        });
        if let (Some(out), JsonValue::Object(extra)) = (out.as_object_mut(), extra) {
            out.extend(extra);
        }
        out
    }
}

/// The message of a failed job: with the reason a `LOCATION_UNREACHABLE` keeps in `details`.
fn job_error(e: &KalamError) -> String {
    match e {
        KalamError::LocationUnreachable(reason) => format!("{e}: {reason}"),
        other => other.to_string(),
    }
}

/// Runs a job on a thread of its own (its CPU figure is that thread's) with a current-thread
/// tokio runtime, and waits for it. The job goes on when the waiting request goes away.
async fn run_job<F>(name: String, f: F) -> Result<JobRecord>
where
    F: FnOnce(&tokio::runtime::Runtime) -> Result<JobRecord> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => f(&runtime),
                Err(e) => Err(KalamError::internal(e)),
            };
            let _ = tx.send(outcome);
        })
        .map_err(KalamError::internal)?;
    rx.await
        .map_err(|_| KalamError::internal("the job's thread stopped before it answered"))?
}

/// The one-row answer of BACKUP and RESTORE: the job and what it did.
pub fn job_result(record: &JobRecord) -> QueryResult {
    let columns = [
        ("job_id", "Utf8"),
        ("status", "Utf8"),
        ("namespace", "Utf8"),
        ("tables", "Int64"),
        ("rows", "Int64"),
        ("files", "Int64"),
        ("bytes", "Int64"),
        ("duration_ms", "Float64"),
        ("mb_per_s", "Float64"),
    ];
    let result = &record.result;
    let field = |k: &str| result.get(k).cloned().unwrap_or(JsonValue::Null);
    let mut row = Row::new();
    row.insert("job_id".into(), json!(record.job_id));
    row.insert("status".into(), json!(record.status.as_str()));
    for (name, _) in &columns[2..] {
        row.insert((*name).to_string(), field(*name));
    }
    let what = match record.job_type {
        JobType::Restore => "restore",
        _ => "backup",
    };
    QueryResult {
        columns: columns
            .iter()
            .map(|(name, t)| ColumnInfo {
                name: (*name).to_string(),
                data_type: (*t).to_string(),
            })
            .collect(),
        rows: vec![row],
        row_count: 1,
        affected_rows: None,
        message: Some(format!(
            "{what} of namespace {} {} as job {}: {} table(s), {} row(s), {} file(s), {} bytes",
            field("namespace").as_str().unwrap_or_default(),
            record.status.as_str(),
            record.job_id,
            field("tables"),
            field("rows"),
            field("files"),
            field("bytes"),
        )),
        execution_time_ms: 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// BACKUP NAMESPACE
// ---------------------------------------------------------------------------------------------

/// `BACKUP NAMESPACE ns TO '<url>'`: checks what can be answered at once (the namespace, the
/// URL, no backup there yet), then runs the `backup` job and waits for it.
pub async fn backup(
    engine: Arc<Engine>,
    namespace: NamespaceId,
    url: String,
    options: &OptionList,
    user: UserId,
) -> Result<JobRecord> {
    if engine.catalog.namespace(&namespace).is_none() {
        return Err(KalamError::NamespaceNotFound(namespace.to_string()));
    }
    let target = open_target(&engine, &url, options, true)?;
    match target.store.head(&target.path(MANIFEST)).await {
        Ok(_) => return Err(KalamError::BackupAlreadyExists(clip(&url))),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => {
            return Err(KalamError::LocationUnreachable(clip(&format!(
                "reading {url}: {e}"
            ))))
        }
    }
    run_job(format!("backup-{namespace}"), move |tokio| {
        let job = engine.jobs.start(
            JobType::Backup,
            Some(&namespace),
            None,
            Some(&user),
            vec![format!("url={}", target.url)],
        )?;
        let span = tracing::info_span!("backup", namespace = %namespace, job = job.id());
        let _enter = span.enter();
        let started = Instant::now();
        let mut progress = Progress::default();
        let mut written: Vec<String> = Vec::new();
        let outcome = backup_steps(
            &engine,
            &target,
            &namespace,
            &job,
            tokio,
            &mut progress,
            &mut written,
        );
        match outcome {
            Ok(extra) => {
                let result = progress.finished(started, extra);
                tracing::info!(%result, "backup completed");
                job.complete(result)
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup failed; removing the files it wrote");
                for rel in &written {
                    match tokio.block_on(target.store.delete(&target.path(rel))) {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e2) => {
                            tracing::warn!(file = %rel, error = %e2, "could not remove a file of a failed backup")
                        }
                    }
                }
                job.trace(format!("failed: {}", job_error(&e)));
                if let Err(e2) = job.fail(&job_error(&e), progress.json()) {
                    tracing::warn!(error = %e2, "could not record the failed backup job");
                }
                Err(e)
            }
        }
    })
    .await
}

/// Writes a small file and returns its manifest entry.
fn put_file(
    tokio: &tokio::runtime::Runtime,
    target: &Target,
    rel: &str,
    bytes: Vec<u8>,
    written: &mut Vec<String>,
    progress: &mut Progress,
) -> Result<FileEntry> {
    let entry = FileEntry {
        path: rel.to_string(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    };
    written.push(rel.to_string());
    tokio
        .block_on(target.store.put(&target.path(rel), PutPayload::from(bytes)))
        .map_err(|e| write_error(rel, &e))?;
    progress.bytes += entry.bytes;
    progress.files += 1;
    Ok(entry)
}

fn backup_steps(
    engine: &Engine,
    target: &Target,
    namespace: &NamespaceId,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
    written: &mut Vec<String>,
) -> Result<JsonValue> {
    let started_at = Utc::now();
    let ns = engine
        .catalog
        .namespace(namespace)
        .ok_or_else(|| KalamError::NamespaceNotFound(namespace.to_string()))?;
    let defs = engine.catalog.tables(Some(namespace));
    progress.tables = defs.len();
    progress.report(job);
    let mut files = vec![put_file(
        tokio,
        target,
        NAMESPACE_FILE,
        to_json(&ns)?,
        written,
        progress,
    )?];
    let mut tables = Vec::with_capacity(defs.len());
    let (mut deleted_rows, mut hot_rows, mut cold_rows) = (0u64, 0u64, 0u64);
    for def in defs {
        let Some(rt) = engine.table(&def.id()) else {
            job.trace(format!(
                "{} was dropped during the backup; skipped",
                def.id()
            ));
            continue;
        };
        let table_started = Instant::now();
        let entry = backup_table(
            engine, target, &rt, job, tokio, progress, &mut files, written,
        )?;
        job.trace(format!(
            "{}: {} rows ({} soft-deleted), {} hot row versions, {} Parquet files, at seq {}, in {} ms",
            def.id(),
            entry.rows,
            entry.deleted_rows,
            entry.hot_rows,
            entry.partitions.iter().map(|p| p.segments.len()).sum::<usize>(),
            entry.snapshot_seq,
            table_started.elapsed().as_millis()
        ));
        deleted_rows += entry.deleted_rows;
        hot_rows += entry.hot_rows;
        cold_rows += entry.cold_rows;
        tables.push(entry);
        progress.tables_done += 1;
        progress.report(job);
    }
    progress.tables = tables.len();
    let manifest = BackupManifest {
        format_version: FORMAT_VERSION,
        kalamdb_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: engine
            .jobs
            .get(job.id())
            .map(|r| r.node_id)
            .unwrap_or_default(),
        job_id: job.id().to_string(),
        namespace: namespace.to_string(),
        started_at,
        finished_at: Utc::now(),
        hot_row_format: HOT_ROW_FORMAT.to_string(),
        tables,
        files,
    };
    let bytes = to_json(&manifest)?;
    let sum = format!("{}\n", sha256_hex(&bytes));
    put_file(tokio, target, MANIFEST, bytes, written, progress)?;
    // Last: a backup without its checksum file is unfinished and is not restored.
    put_file(
        tokio,
        target,
        MANIFEST_SUM,
        sum.into_bytes(),
        written,
        progress,
    )?;
    Ok(
        json!({"namespace": namespace.as_str(), "url": target.url, "deleted_rows": deleted_rows,
              "hot_rows": hot_rows, "cold_rows": cold_rows}),
    )
}

/// `{user_id}` of a partition prefix (`{user_id}:`); `None` for the shared partition.
fn user_of_prefix(prefix: &[u8]) -> Result<Option<String>> {
    let Some(user) = prefix.strip_suffix(b":") else {
        return Ok(None);
    };
    std::str::from_utf8(user)
        .map(|u| Some(u.to_string()))
        .map_err(|_| KalamError::Storage("a user prefix that is not UTF-8".into()))
}

/// The partition prefix of a hot key: `{user_id}:` of a USER table, empty otherwise.
fn partition_prefix(kind: TableKind, key: &[u8]) -> Result<Vec<u8>> {
    if kind != TableKind::User {
        return Ok(Vec::new());
    }
    let colon = key
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| KalamError::Storage("a USER table key without a user prefix".into()))?;
    Ok(key[..=colon].to_vec())
}

#[allow(clippy::too_many_arguments)]
fn backup_table(
    engine: &Engine,
    target: &Target,
    rt: &Arc<TableRuntime>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
    files: &mut Vec<FileEntry>,
    written: &mut Vec<String>,
) -> Result<TableEntry> {
    let name = rt.def().name.to_string();
    let id = rt.def().id();
    let kind = rt.def().kind;
    let pk = rt.def().primary_key.to_string();
    let cf = rt.store.cf_name().to_string();
    let cold_store = match kind {
        TableKind::Stream => None,
        TableKind::User | TableKind::Shared => Some(engine.cold.store(&rt.location)?.1),
    };
    let hot_rel = format!("data/{name}/hot.rows");
    written.push(hot_rel.clone());
    let (point, hot_entry, counts) = rt.store.backup_snapshot(
        || engine.cold.table_segments(&cf),
        |point, rows| {
            let scanned = tokio.block_on(scan_table(
                target,
                &hot_rel,
                kind,
                &pk,
                cold_store.as_ref(),
                &point.taken,
                rows,
                job,
                progress,
            ))?;
            Ok((point, scanned.0, scanned.1))
        },
    )?;
    files.push(hot_entry.clone());

    // The files the snapshot's manifests list never change or go away: flushes only add
    // files (docs/adr/0008-cold-tier.md), so they are copied after the snapshot is released.
    let mut partitions = Vec::with_capacity(point.taken.len());
    let mut cold_rows = 0u64;
    for (i, (prefix, segments)) in point.taken.iter().enumerate() {
        if segments.is_empty() {
            continue;
        }
        let Some(store) = cold_store.as_ref() else {
            return Err(KalamError::internal(format!(
                "STREAM table {id} has Parquet files"
            )));
        };
        let mut entries = Vec::with_capacity(segments.len());
        for (j, seg) in segments.iter().enumerate() {
            let rel = format!("data/{name}/p{i:05}/{j:05}.parquet");
            written.push(rel.clone());
            let source = seg.path.clone();
            let read_error = |failure: ReadFailure| match failure {
                ReadFailure::Missing => {
                    KalamError::Storage(format!("the Parquet file {source} of {id} is missing"))
                }
                ReadFailure::Other(m) => {
                    KalamError::LocationUnreachable(clip(&format!("reading {source}: {m}")))
                }
            };
            let digest = tokio.block_on(copy_object(
                store,
                &crate::cold::recorded_path(&seg.path),
                &target.store,
                &target.path(&rel),
                &read_error,
                &mut |n| progress.add_bytes(n, job),
            ))?;
            if digest.bytes != seg.bytes {
                return Err(KalamError::Storage(format!(
                    "the Parquet file {source} of {id} has {} bytes, its manifest says {}",
                    digest.bytes, seg.bytes
                )));
            }
            cold_rows += seg.rows;
            files.push(FileEntry {
                path: rel.clone(),
                bytes: digest.bytes,
                sha256: digest.sha256,
            });
            entries.push(SegmentEntry {
                file: rel,
                segment: seg.clone(),
            });
            progress.files += 1;
            progress.maybe_report(job);
        }
        partitions.push(PartitionEntry {
            user_id: user_of_prefix(prefix)?,
            segments: entries,
        });
    }

    // The catalog of the table: its definition and every schema version, as of the snapshot.
    let def = &point.def;
    let definition = format!("catalog/{name}/table.json");
    files.push(put_file(
        tokio,
        target,
        &definition,
        to_json(&**def)?,
        written,
        progress,
    )?);
    let versions: Vec<SchemaVersion> = if def.history.is_empty() {
        vec![def.initial_version()]
    } else {
        def.history.clone()
    };
    let mut schema_files = Vec::with_capacity(versions.len());
    for version in &versions {
        let rel = format!("catalog/{name}/schema_v{}.json", version.version);
        files.push(put_file(
            tokio,
            target,
            &rel,
            to_json(version)?,
            written,
            progress,
        )?);
        schema_files.push(rel);
    }
    progress.files += 1; // the hot-rows file
    Ok(TableEntry {
        name,
        kind,
        schema_version: def.schema_version,
        schema_versions: versions.iter().map(|v| v.version).collect(),
        definition,
        schema_files,
        snapshot_seq: point.seq,
        last_updated_micros: point.last_updated,
        rows: counts.live,
        deleted_rows: counts.deleted,
        hot_rows: counts.hot_rows,
        cold_rows,
        users: (kind == TableKind::User).then_some(counts.partitions),
        hot_file: hot_entry.path,
        partitions,
    })
}

/// Rows counted while a table's snapshot is read.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    live: u64,
    deleted: u64,
    hot_rows: u64,
    /// Partitions holding at least one key.
    partitions: u64,
}

/// The hot-rows file of a table being written: raw keys and values, hashed as they go.
struct HotFile {
    path: String,
    writer: BufWriter,
    hasher: Sha256,
    buf: Vec<u8>,
    bytes: u64,
    unreported: u64,
}

impl HotFile {
    fn new(target: &Target, rel: &str) -> Self {
        let mut buf = Vec::with_capacity(CHUNK + 64 * 1024);
        buf.extend_from_slice(HOT_MAGIC);
        Self {
            path: rel.to_string(),
            writer: BufWriter::with_capacity(target.store.clone(), target.path(rel), CHUNK),
            hasher: Sha256::new(),
            buf,
            bytes: 0,
            unreported: 0,
        }
    }

    async fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let too_long = || KalamError::Storage("a hot row over 4 GiB".into());
        let key_len = u32::try_from(key.len()).map_err(|_| too_long())?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long())?;
        self.buf.extend_from_slice(&key_len.to_le_bytes());
        self.buf.extend_from_slice(&value_len.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buf);
        self.writer
            .write_all(&self.buf)
            .await
            .map_err(|e| write_error(&self.path, &e))?;
        self.bytes += self.buf.len() as u64;
        self.unreported += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Bytes written since the last call (for the job's progress).
    fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    async fn finish(mut self) -> Result<FileEntry> {
        self.flush().await?;
        self.writer
            .shutdown()
            .await
            .map_err(|e| write_error(&self.path, &e))?;
        Ok(FileEntry {
            path: self.path,
            bytes: self.bytes,
            sha256: format!("{:x}", self.hasher.finalize()),
        })
    }

    async fn abort(mut self) {
        let _ = self.writer.abort().await;
    }
}

/// The keys of one Parquet file in file order (which is key order: a flush writes each
/// partition's rows in key order), with their `_seq` and `_deleted`, batch by batch.
struct FileKeys {
    stream: LocalBoxStream<'static, Result<RecordBatch>>,
    pk: String,
    rows: VecDeque<(Vec<u8>, u64, bool)>,
    done: bool,
}

impl FileKeys {
    async fn open(store: &Arc<dyn ObjectStore>, path: &str, pk: &str) -> Result<Self> {
        #[allow(deprecated)] // its replacement (a hand-written AsyncFileReader) is more code
        let reader = ParquetObjectReader::new(store.clone(), crate::cold::recorded_path(path));
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(KalamError::storage)?;
        let mask =
            ProjectionMask::columns(builder.parquet_schema(), [pk, SEQ_COLUMN, DELETED_COLUMN]);
        let stream = builder
            .with_projection(mask)
            .build()
            .map_err(KalamError::storage)?;
        Ok(Self {
            stream: stream
                .map(|batch| batch.map_err(KalamError::storage))
                .boxed_local(),
            pk: pk.to_string(),
            rows: VecDeque::new(),
            done: false,
        })
    }

    fn load(&mut self, batch: &RecordBatch) -> Result<()> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| KalamError::Storage(format!("a Parquet file lacks column {name}")))
        };
        let pk = column(self.pk.as_str())?;
        let seq = column(SEQ_COLUMN)?;
        let deleted = column(DELETED_COLUMN)?;
        let seq = seq
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| KalamError::Storage("_seq is not UInt64".into()))?;
        let deleted = deleted
            .as_boolean_opt()
            .ok_or_else(|| KalamError::Storage("_deleted is not Boolean".into()))?;
        let keys = crate::cold::parquet::column_keys(&pk)?;
        for (i, key) in keys.into_iter().enumerate() {
            if let Some(key) = key {
                self.rows.push_back((key, seq.value(i), deleted.value(i)));
            }
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<()> {
        while self.rows.is_empty() && !self.done {
            match self.stream.next().await {
                None => self.done = true,
                Some(batch) => {
                    let batch = batch?;
                    self.load(&batch)?;
                }
            }
        }
        Ok(())
    }

    async fn peek_key(&mut self) -> Result<Option<&[u8]>> {
        self.fill().await?;
        Ok(self.rows.front().map(|(k, _, _)| k.as_slice()))
    }

    /// `_seq` and `_deleted` of the next row when its key is `key`.
    async fn take_if_key(&mut self, key: &[u8]) -> Result<Option<(u64, bool)>> {
        self.fill().await?;
        if self
            .rows
            .front()
            .is_some_and(|(k, _, _)| k.as_slice() == key)
        {
            Ok(self
                .rows
                .pop_front()
                .map(|(_, seq, deleted)| (seq, deleted)))
        } else {
            Ok(None)
        }
    }
}

type HotRows<'a> = std::iter::Peekable<&'a mut dyn Iterator<Item = Result<RawRow>>>;

/// Writes every hot row of the snapshot to the hot-rows file and counts the table's keys:
/// partition by partition, the hot rows and the keys of the partition's Parquet files are
/// merged in key order, and each key counts as live or deleted by its newest version (a hot
/// version is always newer than any cold one; among files the larger `_seq` wins).
#[allow(clippy::too_many_arguments)]
async fn scan_table(
    target: &Target,
    hot_rel: &str,
    kind: TableKind,
    pk: &str,
    cold_store: Option<&Arc<dyn ObjectStore>>,
    cold: &[(Vec<u8>, Segments)],
    rows: &mut dyn Iterator<Item = Result<RawRow>>,
    job: &JobHandle,
    progress: &mut Progress,
) -> Result<(FileEntry, Counts)> {
    let mut hot_file = HotFile::new(target, hot_rel);
    let scanned = async {
        let mut counts = Counts::default();
        let mut hot: HotRows<'_> = rows.peekable();
        let mut parts = cold.iter().peekable();
        loop {
            let peeked: Option<Result<Vec<u8>>> = match hot.peek() {
                None => None,
                Some(Ok((key, _))) => Some(partition_prefix(kind, key)),
                Some(Err(_)) => Some(Err(KalamError::Storage(String::new()))),
            };
            let hot_prefix = match peeked {
                None => None,
                Some(Ok(prefix)) => Some(prefix),
                Some(Err(e)) => {
                    // The iterator's own error, not the placeholder, is the one to report.
                    return Err(match hot.next() {
                        Some(Err(inner)) => inner,
                        _ => e,
                    });
                }
            };
            let cold_prefix = parts.peek().map(|(prefix, _)| prefix.clone());
            let prefix = match (hot_prefix, cold_prefix) {
                (None, None) => break,
                (Some(h), None) => h,
                (None, Some(c)) => c,
                (Some(h), Some(c)) => h.min(c),
            };
            let segments: &[Segment] = if parts.peek().is_some_and(|(p, _)| *p == prefix) {
                parts.next().map(|(_, s)| s.as_slice()).unwrap_or(&[])
            } else {
                &[]
            };
            let c = merge_partition(
                kind,
                pk,
                &prefix,
                &mut hot,
                segments,
                cold_store,
                &mut hot_file,
            )
            .await?;
            counts.live += c.live;
            counts.deleted += c.deleted;
            counts.hot_rows += c.hot_rows;
            if c.live + c.deleted > 0 {
                counts.partitions += 1;
            }
            progress.rows += c.live;
            progress.bytes += hot_file.take_unreported();
            progress.maybe_report(job);
        }
        Ok::<Counts, KalamError>(counts)
    }
    .await;
    match scanned {
        Ok(counts) => {
            hot_file.flush().await?;
            progress.bytes += hot_file.take_unreported();
            let entry = hot_file.finish().await?;
            Ok((entry, counts))
        }
        Err(e) => {
            hot_file.abort().await;
            Err(e)
        }
    }
}

/// Merges one partition's hot rows (the next rows of `hot` with `prefix`) with the keys of
/// its Parquet files; writes the hot rows to `hot_file`.
async fn merge_partition(
    kind: TableKind,
    pk: &str,
    prefix: &[u8],
    hot: &mut HotRows<'_>,
    segments: &[Segment],
    cold_store: Option<&Arc<dyn ObjectStore>>,
    hot_file: &mut HotFile,
) -> Result<Counts> {
    let mut files = Vec::with_capacity(segments.len());
    if let Some(store) = cold_store {
        for seg in segments {
            files.push(FileKeys::open(store, &seg.path, pk).await?);
        }
    }
    let mut counts = Counts::default();
    // The partition's next hot row: raw key, raw value, `_deleted`.
    let mut current: Option<(Box<[u8]>, Box<[u8]>, bool)> = None;
    loop {
        if current.is_none() {
            let next = hot.next_if(|item| match item {
                Ok((key, _)) => key.starts_with(prefix),
                Err(_) => true,
            });
            if let Some(item) = next {
                let (key, value) = item?;
                let deleted = kind != TableKind::Stream && StoredRow::decode(&value)?.deleted;
                current = Some((key, value, deleted));
            }
        }
        let mut min: Option<Vec<u8>> = current
            .as_ref()
            .map(|(key, _, _)| key[prefix.len()..].to_vec());
        for f in files.iter_mut() {
            if let Some(key) = f.peek_key().await? {
                if min.as_deref().is_none_or(|m| key < m) {
                    min = Some(key.to_vec());
                }
            }
        }
        let Some(min) = min else {
            break;
        };
        let mut newest: Option<(u64, bool)> = None;
        if let Some((key, value, deleted)) =
            current.take_if(|(key, _, _)| key[prefix.len()..] == min[..])
        {
            hot_file.push(&key, &value).await?;
            counts.hot_rows += 1;
            newest = Some((u64::MAX, deleted));
        }
        for f in files.iter_mut() {
            while let Some((seq, deleted)) = f.take_if_key(&min).await? {
                if newest.is_none_or(|(s, _)| seq > s) {
                    newest = Some((seq, deleted));
                }
            }
        }
        match newest {
            Some((_, true)) => counts.deleted += 1,
            Some((_, false)) => counts.live += 1,
            None => {}
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// RESTORE NAMESPACE
// ---------------------------------------------------------------------------------------------

/// What a restore staged for one table, removed again when the restore fails.
struct Staged {
    cf: String,
    objects: Vec<(Arc<dyn ObjectStore>, ObjectPath)>,
}

/// `RESTORE NAMESPACE ns FROM '<url>'`: refuses an existing namespace (409) and a URL without
/// a backup (404) at once, then runs the `restore` job and waits for it.
pub async fn restore(
    engine: Arc<Engine>,
    planner: SessionState,
    namespace: NamespaceId,
    url: String,
    options: &OptionList,
    user: UserId,
) -> Result<JobRecord> {
    if namespace.as_str() == SYSTEM_NAMESPACE {
        return Err(KalamError::InvalidIdentifier(format!(
            "namespace '{SYSTEM_NAMESPACE}' is reserved for the node's own tables"
        )));
    }
    if engine.catalog.namespace(&namespace).is_some() {
        return Err(KalamError::NamespaceAlreadyExists(namespace.to_string()));
    }
    let target = open_target(&engine, &url, options, false)?;
    let manifest = read_manifest(&target).await?;
    run_job(format!("restore-{namespace}"), move |tokio| {
        let job = engine.jobs.start(
            JobType::Restore,
            Some(&namespace),
            None,
            Some(&user),
            vec![
                format!("url={}", target.url),
                format!("from_namespace={}", manifest.namespace),
                format!("backup_job={}", manifest.job_id),
            ],
        )?;
        let span = tracing::info_span!("restore", namespace = %namespace, job = job.id());
        let _enter = span.enter();
        let started = Instant::now();
        let mut progress = Progress::default();
        let mut staged: Vec<Staged> = Vec::new();
        let outcome = restore_steps(
            &engine,
            &planner,
            &target,
            &namespace,
            &manifest,
            &job,
            tokio,
            &mut progress,
            &mut staged,
        );
        match outcome {
            Ok(extra) => {
                let result = progress.finished(started, extra);
                tracing::info!(%result, "restore completed");
                job.complete(result)
            }
            Err(e) => {
                tracing::warn!(error = %e, "restore failed; removing what it staged");
                unstage(&engine, tokio, &staged);
                job.trace(format!("failed: {}", job_error(&e)));
                if let Err(e2) = job.fail(&job_error(&e), progress.json()) {
                    tracing::warn!(error = %e2, "could not record the failed restore job");
                }
                Err(e)
            }
        }
    })
    .await
}

/// Removes what a failed restore staged: copied files, column families (with their
/// sequences and manifests), published manifests and restore marks.
fn unstage(engine: &Engine, tokio: &tokio::runtime::Runtime, staged: &[Staged]) {
    for s in staged {
        for (store, path) in &s.objects {
            match tokio.block_on(store.delete(path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(file = %path, error = %e, "could not remove a file of a failed restore")
                }
            }
        }
        if let Err(e) = engine.storage.drop_cf(&s.cf) {
            tracing::warn!(column_family = %s.cf, error = %e, "could not drop the data of a failed restore; it is dropped at the next start");
            continue;
        }
        engine.cold.forget_table(&s.cf);
        if let Err(e) = engine.storage.meta_delete(&restore_pending_key(&s.cf)) {
            tracing::warn!(column_family = %s.cf, error = %e, "could not remove a restore mark");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_steps(
    engine: &Engine,
    planner: &SessionState,
    target: &Target,
    namespace: &NamespaceId,
    manifest: &BackupManifest,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
    staged: &mut Vec<Staged>,
) -> Result<JsonValue> {
    let files: HashMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    progress.tables = manifest.tables.len();
    progress.report(job);
    let bytes = tokio.block_on(read_verified(target, &files, NAMESPACE_FILE, progress))?;
    let mut ns: NamespaceDef = parse_json(&bytes, NAMESPACE_FILE)?;
    ns.name = namespace.clone();
    progress.files += 1;
    let mut defs = Vec::with_capacity(manifest.tables.len());
    for table in &manifest.tables {
        let table_started = Instant::now();
        let def = restore_table(
            engine, target, &files, table, namespace, job, tokio, progress, staged,
        )?;
        job.trace(format!(
            "{}: staged and verified {} rows, {} hot row versions, {} Parquet files in {} ms",
            def.id(),
            table.rows,
            table.hot_rows,
            table
                .partitions
                .iter()
                .map(|p| p.segments.len())
                .sum::<usize>(),
            table_started.elapsed().as_millis()
        ));
        progress.rows = progress.rows.saturating_add(table.rows);
        progress.tables_done += 1;
        progress.report(job);
        defs.push(Arc::new(def));
    }
    // Every file of every table is verified: only now does anything become visible.
    job.trace("every file verified; committing the catalog");
    engine.restore_namespace(ns, defs, planner)?;
    Ok(json!({"namespace": namespace.as_str(), "url": target.url,
              "from_namespace": manifest.namespace, "backup_job": manifest.job_id}))
}

#[allow(clippy::too_many_arguments)]
fn restore_table(
    engine: &Engine,
    target: &Target,
    files: &HashMap<&str, &FileEntry>,
    table: &TableEntry,
    namespace: &NamespaceId,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
    staged: &mut Vec<Staged>,
) -> Result<TableDef> {
    // The definition and every schema version.
    let bytes = tokio.block_on(read_verified(target, files, &table.definition, progress))?;
    let mut def: TableDef = parse_json(&bytes, &table.definition)?;
    let mut history: Vec<SchemaVersion> = Vec::with_capacity(table.schema_files.len());
    for rel in &table.schema_files {
        let bytes = tokio.block_on(read_verified(target, files, rel, progress))?;
        history.push(parse_json(&bytes, rel)?);
    }
    progress.files += 1 + table.schema_files.len() as u64;
    history.sort_by_key(|v| v.version);
    let contiguous = history
        .iter()
        .enumerate()
        .all(|(i, v)| v.version as usize == i + 1);
    if !contiguous
        || history.last().map(|v| v.version) != Some(def.schema_version)
        || def.name.as_str() != table.name
        || def.kind != table.kind
    {
        return Err(corrupt(
            &table.definition,
            "its name, kind or schema versions differ from manifest.json",
        ));
    }
    if let Some(last) = history.last() {
        def.columns = last.columns.clone();
    }
    // What the catalog checks when it loads a table at start-up: a definition it would
    // refuse must not get in, or the node would not start again.
    if def.column(def.primary_key.as_str()).is_none() {
        return Err(corrupt(
            &table.definition,
            "the primary key names no column of the schema",
        ));
    }
    def.history = history;
    def.namespace = namespace.clone();
    // A new column family: whatever this node holds under the old one is never met.
    def.uid = ddl::new_table_uid(Utc::now());
    // The location is resolved again on this node (API.md: at CREATE time).
    def.storage = match def.kind {
        TableKind::Stream => None,
        TableKind::User | TableKind::Shared => Some(location::resolve(
            &engine.catalog,
            engine.cold.storage_dir(),
            &def.id(),
            def.kind,
            &def.location,
        )?),
    };
    let cf = def.cf_name();
    engine.storage.meta_put(&restore_pending_key(&cf), b"")?;
    staged.push(Staged {
        cf: cf.clone(),
        objects: Vec::new(),
    });
    engine.storage.create_cf(&cf)?;

    // Hot rows, as they were, with the table's sequence and last `_updated`.
    let hot = files
        .get(table.hot_file.as_str())
        .ok_or_else(|| corrupt(&table.hot_file, "manifest.json does not list it"))?;
    let rows = tokio.block_on(restore_hot(
        target,
        hot,
        &engine.storage,
        &cf,
        table,
        def.schema_version,
        job,
        progress,
    ))?;
    if rows != table.hot_rows {
        return Err(corrupt(
            &table.hot_file,
            format!(
                "it holds {rows} rows, manifest.json says {}",
                table.hot_rows
            ),
        ));
    }
    progress.files += 1;

    // Parquet files, copied into the table's location under new names.
    let with_files: Vec<&PartitionEntry> = table
        .partitions
        .iter()
        .filter(|p| !p.segments.is_empty())
        .collect();
    if !with_files.is_empty() {
        let storage = def
            .storage
            .clone()
            .ok_or_else(|| corrupt(&table.definition, "a STREAM table with Parquet files"))?;
        let (_, store) = engine.cold.store(&storage)?;
        for part in with_files {
            let partition = match (&part.user_id, def.kind) {
                (Some(user), TableKind::User) => Partition::User(
                    UserId::new(user.clone())
                        .map_err(|_| corrupt(MANIFEST, "a partition of an invalid user id"))?,
                ),
                (None, TableKind::Shared) => Partition::Shared,
                _ => {
                    return Err(corrupt(
                        MANIFEST,
                        format!("a partition of {} does not fit its kind", table.name),
                    ))
                }
            };
            let dir = ColdStorage::partition_dir(&storage, &partition);
            let mut segments = Vec::with_capacity(part.segments.len());
            for seg in &part.segments {
                let entry = files
                    .get(seg.file.as_str())
                    .ok_or_else(|| corrupt(&seg.file, "manifest.json does not list it"))?;
                let name = crate::cold::recorded_path(&seg.segment.path)
                    .filename()
                    .unwrap_or("segment.parquet")
                    .to_string();
                let dest = dir.clone().join(format!("restored-{}-{name}", def.uid));
                if let Some(s) = staged.last_mut() {
                    s.objects.push((store.clone(), dest.clone()));
                }
                let file = seg.file.as_str();
                let read_error = |failure: ReadFailure| match failure {
                    ReadFailure::Missing => corrupt(file, "it is missing"),
                    ReadFailure::Other(m) => {
                        KalamError::LocationUnreachable(clip(&format!("reading {file}: {m}")))
                    }
                };
                let digest = tokio.block_on(copy_object(
                    &target.store,
                    &target.path(file),
                    &store,
                    &dest,
                    &read_error,
                    &mut |n| progress.add_bytes(n, job),
                ))?;
                verify(entry, digest.bytes, &digest.sha256)?;
                if digest.bytes != seg.segment.bytes {
                    return Err(corrupt(
                        file,
                        "its size differs from its segment entry in manifest.json",
                    ));
                }
                // Durable before the catalog commit makes the table read it.
                crate::cold::location::sync_written(&storage, &dest.to_string())?;
                segments.push(Segment {
                    path: dest.to_string(),
                    ..seg.segment.clone()
                });
                progress.files += 1;
                progress.maybe_report(job);
            }
            engine
                .storage
                .meta_put(&manifest_key(&cf, &partition), &encode_manifest(&segments)?)?;
            engine.cold.publish(&cf, &partition, segments);
        }
    }
    Ok(def)
}

/// Reads a hot-rows file into a staged column family, checking every row decodes and the
/// file's size and sha256. Returns the number of rows.
#[allow(clippy::too_many_arguments)]
async fn restore_hot(
    target: &Target,
    entry: &FileEntry,
    storage: &Storage,
    cf: &str,
    table: &TableEntry,
    schema_version: u32,
    job: &JobHandle,
    progress: &mut Progress,
) -> Result<u64> {
    let file = entry.path.as_str();
    let got = match target.store.get(&target.path(file)).await {
        Ok(got) => got,
        Err(e) => {
            return Err(match ReadFailure::of(e) {
                ReadFailure::Missing => corrupt(file, "it is missing"),
                ReadFailure::Other(m) => {
                    KalamError::LocationUnreachable(clip(&format!("reading {file}: {m}")))
                }
            })
        }
    };
    let mut chunks = Chunks::of(got);
    let mut hasher = Sha256::new();
    let mut parser = HotParser::default();
    let (mut bytes, mut rows) = (0u64, 0u64);
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some(chunk) = chunks
        .next()
        .await
        .map_err(|m| KalamError::LocationUnreachable(clip(&format!("reading {file}: {m}"))))?
    {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        progress.add_bytes(chunk.len() as u64, job);
        parser.push(&chunk);
        while let Some((key, value)) = parser.next(file)? {
            let row = StoredRow::decode(&value)
                .map_err(|_| corrupt(file, "it holds a row that does not decode"))?;
            if row.schema_version == 0
                || row.schema_version > schema_version
                || row.seq > table.snapshot_seq
            {
                return Err(corrupt(
                    file,
                    "it holds a row of a schema version or sequence the table never had",
                ));
            }
            batch_bytes += key.len() + value.len();
            batch.push((key, value));
            rows += 1;
            if batch_bytes >= RESTORE_BATCH_BYTES {
                storage.restore_rows(cf, &batch, table.snapshot_seq, table.last_updated_micros)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    verify(entry, bytes, &format!("{:x}", hasher.finalize()))?;
    parser.finish(file)?;
    // The last batch also writes the table's sequence, hot rows or not: new commits must
    // number after every version restored, in either tier.
    storage.restore_rows(cf, &batch, table.snapshot_seq, table.last_updated_micros)?;
    Ok(rows)
}

/// Splits a hot-rows file, fed chunk by chunk, into records.
#[derive(Debug, Default)]
struct HotParser {
    buf: Vec<u8>,
    pos: usize,
    header: bool,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

impl HotParser {
    fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete record, or `None` when more bytes are needed.
    fn next(&mut self, file: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.header {
            if self.buf.len() < HOT_MAGIC.len() {
                return Ok(None);
            }
            if self.buf[..HOT_MAGIC.len()] != HOT_MAGIC[..] {
                return Err(corrupt(file, "it does not start as a hot-rows file"));
            }
            self.pos = HOT_MAGIC.len();
            self.header = true;
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < 8 {
            return Ok(None);
        }
        let key_len = le_u32(&rest[..4]) as usize;
        let value_len = le_u32(&rest[4..8]) as usize;
        if key_len > MAX_KEY_BYTES || value_len > MAX_VALUE_BYTES {
            return Err(corrupt(file, "it holds a record of an impossible length"));
        }
        let end = 8 + key_len + value_len;
        if rest.len() < end {
            return Ok(None);
        }
        let key = rest[8..8 + key_len].to_vec();
        let value = rest[8 + key_len..end].to_vec();
        self.pos += end;
        Ok(Some((key, value)))
    }

    fn finish(&self, file: &str) -> Result<()> {
        if !self.header || self.pos != self.buf.len() {
            return Err(corrupt(file, "it ends in the middle of a record"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SHOW BACKUP
// ---------------------------------------------------------------------------------------------

/// `SHOW BACKUP '<url>'`: one row per table of the backup, from its (verified) manifest.
pub async fn show(engine: &Engine, url: &str, options: &OptionList) -> Result<QueryResult> {
    let target = open_target(engine, url, options, false)?;
    let m = read_manifest(&target).await?;
    let columns = [
        ("namespace", "Utf8"),
        ("table_name", "Utf8"),
        ("table_type", "Utf8"),
        ("schema_version", "Int64"),
        ("schema_versions", "Json"),
        ("rows", "Int64"),
        ("deleted_rows", "Int64"),
        ("hot_rows", "Int64"),
        ("cold_rows", "Int64"),
        ("parquet_files", "Int64"),
        ("bytes", "Int64"),
        ("users", "Int64"),
        ("snapshot_seq", "Int64"),
    ];
    let rows: Vec<Row> = m
        .tables
        .iter()
        .map(|t| {
            let catalog = format!("catalog/{}/", t.name);
            let data = format!("data/{}/", t.name);
            let bytes: u64 = m
                .files
                .iter()
                .filter(|f| f.path.starts_with(&catalog) || f.path.starts_with(&data))
                .fold(0u64, |sum, f| sum.saturating_add(f.bytes));
            let files: usize = t.partitions.iter().map(|p| p.segments.len()).sum();
            let v = json!({
                "namespace": m.namespace, "table_name": t.name, "table_type": t.kind.as_str(),
                "schema_version": t.schema_version, "schema_versions": t.schema_versions,
                "rows": t.rows, "deleted_rows": t.deleted_rows, "hot_rows": t.hot_rows,
                "cold_rows": t.cold_rows, "parquet_files": files, "bytes": bytes,
                "users": t.users, "snapshot_seq": t.snapshot_seq,
            });
            v.as_object().cloned().unwrap_or_default()
        })
        .collect();
    // Sizes come from the manifest, which may be damaged: saturate instead of overflowing.
    let total = m
        .files
        .iter()
        .fold(0u64, |sum, f| sum.saturating_add(f.bytes));
    Ok(QueryResult {
        columns: columns
            .iter()
            .map(|(name, t)| ColumnInfo {
                name: (*name).to_string(),
                data_type: (*t).to_string(),
            })
            .collect(),
        row_count: rows.len(),
        rows,
        affected_rows: None,
        message: Some(format!(
            "backup of namespace {} (format {}, KalamDB {}), taken by job {} on node {} from {} to {}: {} table(s), {} files, {total} bytes",
            m.namespace,
            m.format_version,
            m.kalamdb_version,
            m.job_id,
            m.node_id,
            m.started_at.to_rfc3339(),
            m.finished_at.to_rfc3339(),
            m.tables.len(),
            m.files.len() + 2,
        )),
        execution_time_ms: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_rows_parse_across_chunk_boundaries() {
        let mut file = HOT_MAGIC.to_vec();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..50u8)
            .map(|i| (vec![i; (i % 7) as usize + 1], vec![i; i as usize * 3]))
            .collect();
        for (k, v) in &records {
            file.extend_from_slice(&(k.len() as u32).to_le_bytes());
            file.extend_from_slice(&(v.len() as u32).to_le_bytes());
            file.extend_from_slice(k);
            file.extend_from_slice(v);
        }
        for chunk_size in [1, 3, 8, 13, 4096] {
            let mut parser = HotParser::default();
            let mut got = Vec::new();
            for chunk in file.chunks(chunk_size) {
                parser.push(chunk);
                while let Some(r) = parser.next("hot.rows").unwrap() {
                    got.push(r);
                }
            }
            parser.finish("hot.rows").unwrap();
            assert_eq!(got, records, "chunks of {chunk_size}");
        }
        let mut parser = HotParser::default();
        parser.push(&file[..file.len() - 1]);
        while parser.next("hot.rows").unwrap().is_some() {}
        assert!(matches!(
            parser.finish("hot.rows"),
            Err(KalamError::BackupCorrupt { .. })
        ));
        let mut parser = HotParser::default();
        parser.push(b"NOTHOT01");
        assert!(parser.next("hot.rows").is_err());
    }

    #[test]
    fn prefixes_and_options() {
        assert_eq!(user_of_prefix(b"alice:").unwrap().as_deref(), Some("alice"));
        assert_eq!(user_of_prefix(b"").unwrap(), None);
        assert_eq!(
            partition_prefix(TableKind::User, b"bob:\x00\x01").unwrap(),
            b"bob:".to_vec()
        );
        assert!(partition_prefix(TableKind::Shared, b"x:y")
            .unwrap()
            .is_empty());
        let mut options = OptionList::new();
        assert_eq!(credentials_option(&options).unwrap(), None);
        options.insert("credentials_ref".into(), json!("moto"));
        assert_eq!(
            credentials_option(&options).unwrap().as_deref(),
            Some("moto")
        );
        options.insert("other".into(), json!(1));
        assert!(matches!(
            credentials_option(&options),
            Err(KalamError::InvalidOption(_))
        ));
    }

    #[test]
    fn verify_names_the_file() {
        let entry = FileEntry {
            path: "data/t/p00000/00000.parquet".into(),
            bytes: 3,
            sha256: sha256_hex(b"abc"),
        };
        assert!(verify(&entry, 3, &sha256_hex(b"abc")).is_ok());
        let err = verify(&entry, 3, &sha256_hex(b"abd")).unwrap_err();
        assert!(
            err.to_string().contains("data/t/p00000/00000.parquet"),
            "{err}"
        );
        assert!(verify(&entry, 4, &sha256_hex(b"abc")).is_err());
    }
}
