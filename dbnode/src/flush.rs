//! Flush: moves a table's hot rows into Parquet files of its location, crash-safely.
//!
//! Protocol (DESIGN.md "Flush"; `docs/adr/0008-cold-tier.md`):
//! 1. snapshot the table's column family at sequence S (under the write lock);
//! 2. per partition, in key order, stream the rows into `batch-{from}-{to}.parquet` (a
//!    journal entry names each file before it is written, so an interrupted flush's file is
//!    deleted by the next one);
//! 3. commit the file: one RocksDB batch writes the partition's manifest, removes the journal
//!    entry and deletes every flushed hot key whose version is still at most S.
//!
//! A crash before 3 leaves the old state (plus an orphan file no query reads); after 3 the
//! new one. Jobs run on a thread of their own, so their CPU figure is theirs.
//!
//! Files are written in the schema version current at the snapshot: hot rows encoded under
//! older versions are brought into it on the way, and the manifest entry records the
//! version, so readers adapt each file (docs/adr/0011-schema-versions.md).
//!
//! A flush and a [`cleanup`] (deleted-row retention, which rewrites files) of one table never
//! run at the same time: both hold the table's maintenance lock from start to end.

pub mod cleanup;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use parking_lot::Mutex;
use serde_json::json;

use crate::catalog::TableDef;
use crate::cold::parquet::{SegmentWriter, FILE_ROWS};
use crate::cold::{encode_manifest, manifest_key, ColdStorage, Segment};
use crate::engine::{Engine, TableRuntime};
use crate::error::{KalamError, Result};
use crate::ids::{TableId, UserId, SYSTEM_NAMESPACE};
use crate::jobs::{JobHandle, JobType};
use crate::metrics::Metrics;
use crate::storage::{Partition, RowKey, Storage};

/// Files being written by a flush or a cleanup, not yet committed: `flushpending/{cf}/{path}`.
pub(crate) const JOURNAL_PREFIX: &str = "flushpending/";
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub(crate) fn journal_key(cf: &str, path: &str) -> Vec<u8> {
    format!("{JOURNAL_PREFIX}{cf}/{path}").into_bytes()
}

/// The files a flush of the table journaled but never committed (an interrupted flush): each
/// journal entry's meta key with the object path it names.
pub fn journaled_files(storage: &Storage, cf: &str) -> Result<Vec<(Vec<u8>, String)>> {
    let prefix = format!("{JOURNAL_PREFIX}{cf}/");
    Ok(storage
        .meta_scan_prefix(prefix.as_bytes())?
        .into_iter()
        .map(|(key, _)| {
            let path = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            (key, path)
        })
        .collect())
}

/// Clears a store's `flushing` flag when the flush ends, however it ends.
struct Flushing<'a>(&'a AtomicBool);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Backoff after `failures` failed attempts: `base`, doubling, at most 5 minutes.
pub fn retry_backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Deletes every journaled file of a table: files of an interrupted flush or cleanup were
/// never committed, so no query reads them. Call it holding the table's maintenance lock.
pub(crate) fn remove_uncommitted(
    storage: &crate::storage::Storage,
    store: &Arc<dyn object_store::ObjectStore>,
    cf: &str,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
) -> Result<()> {
    let prefix = format!("{JOURNAL_PREFIX}{cf}/");
    for (key, _) in storage.meta_scan_prefix(prefix.as_bytes())? {
        let path =
            String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
        match tokio.block_on(store.delete(&crate::cold::recorded_path(&path))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(KalamError::LocationUnreachable(e.to_string())),
        }
        storage.meta_delete(&key)?;
        job.trace(format!(
            "removed the uncommitted file {path} of an interrupted flush or cleanup"
        ));
    }
    Ok(())
}

/// Per-table retry state after failed flushes.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next_attempt: Instant,
}

/// Starts flush jobs (by FLUSH TABLE or by policy) and remembers failures for retries.
#[derive(Debug)]
pub struct Flusher {
    engine: Arc<Engine>,
    metrics: Metrics,
    retry_base: Duration,
    running: Mutex<HashMap<TableId, String>>,
    backoff: Mutex<HashMap<TableId, Backoff>>,
}

impl Flusher {
    pub fn new(engine: Arc<Engine>, metrics: Metrics, retry_base: Duration) -> Arc<Self> {
        Arc::new(Self {
            engine,
            metrics,
            retry_base,
            running: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a flush of the table and returns its job id at once; when one is running
    /// already, returns that job's id.
    pub fn start(
        self: &Arc<Self>,
        rt: Arc<TableRuntime>,
        trigger: &str,
        user: Option<&UserId>,
    ) -> Result<String> {
        let id = rt.def().id();
        if rt.def().kind == crate::catalog::TableKind::Stream {
            return Err(KalamError::Unsupported(format!(
                "{id} is a STREAM table: its events are never flushed"
            )));
        }
        let mut running = self.running.lock();
        if let Some(job) = running.get(&id) {
            return Ok(job.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel::<Result<String>>();
        let this = self.clone();
        let trigger = trigger.to_string();
        let user = user.cloned();
        let table = id.clone();
        std::thread::Builder::new()
            .name(format!("flush-{}", id.table))
            .spawn(move || this.run(rt, &trigger, user.as_ref(), tx))
            .map_err(KalamError::internal)?;
        let job = rx.recv().map_err(|_| {
            KalamError::internal("the flush thread stopped before its job started")
        })??;
        running.insert(table, job.clone());
        Ok(job)
    }

    fn run(
        &self,
        rt: Arc<TableRuntime>,
        trigger: &str,
        user: Option<&UserId>,
        started: std::sync::mpsc::Sender<Result<String>>,
    ) {
        // Set before the snapshot: the purge of a dropped table waits for it to clear.
        rt.store.flushing.store(true, Ordering::SeqCst);
        let _flushing = Flushing(&rt.store.flushing);
        let def = rt.def().clone();
        let attempt = self
            .backoff
            .lock()
            .get(&def.id())
            .map_or(1, |b| b.failures + 1);
        let job = match self.engine.jobs.start(
            JobType::Flush,
            Some(&def.namespace),
            Some(&def.name),
            user,
            vec![format!("trigger={trigger}"), format!("attempt={attempt}")],
        ) {
            Ok(j) => j,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let _ = started.send(Ok(job.id().to_string()));
        let span = tracing::info_span!("flush", table = %def.id(), job = job.id());
        let _enter = span.enter();
        let started_at = Instant::now();
        // The scan runs on this thread; the runtime's worker encodes and writes Parquet (see
        // `SegmentWriter`), so a flush keeps two cores busy. Their CPU time counts for the job.
        let helper_cpu = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let outcome = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flush-encoder")
            .on_thread_stop({
                let helper_cpu = helper_cpu.clone();
                move || {
                    let nanos = crate::jobs::thread_cpu_time().as_nanos();
                    helper_cpu.fetch_add(
                        u64::try_from(nanos).unwrap_or(u64::MAX),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            })
            .enable_all()
            .build()
        {
            // Dropping the runtime at the end of this arm joins its threads. A panic (a bug,
            // or a damaged file the code did not expect) fails this attempt like any error:
            // the job is recorded as failed and retried, instead of the table staying
            // "running" and never flushed again until a restart.
            Ok(tokio) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                flush_table(&self.engine.cold, &rt, &job, &tokio)
            }))
            .unwrap_or_else(|_| {
                Err((
                    KalamError::internal("the flush stopped unexpectedly"),
                    json!({}),
                ))
            }),
            Err(e) => Err((KalamError::internal(e), json!({}))),
        };
        job.note_cpu(Duration::from_nanos(
            helper_cpu.load(std::sync::atomic::Ordering::Relaxed),
        ));
        // Let a FLUSH TABLE that arrives from now on start a new job.
        self.running.lock().remove(&def.id());
        let written = match &outcome {
            Ok(r) | Err((_, r)) => r,
        };
        let count = |k: &str| written.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        self.metrics.flush(
            outcome.is_ok(),
            count("rows"),
            count("bytes"),
            started_at.elapsed().as_secs_f64(),
        );
        match outcome {
            Ok(result) => {
                crash_point!("flush-before-complete");
                self.backoff.lock().remove(&def.id());
                tracing::info!(%result, "flush completed");
                if let Err(e) = job.complete(result) {
                    tracing::warn!(error = %e, "could not record the completed flush job");
                }
            }
            Err((e, partial)) if rt.store.is_dropped() => {
                // DROP TABLE stopped it: nothing to retry (a table created again under the
                // name must not inherit this backoff), and the purge removes its files.
                self.backoff.lock().remove(&def.id());
                tracing::info!(error = %e, "flush stopped: the table was dropped");
                job.trace("stopped: the table was dropped");
                if let Err(e2) = job.fail(&e.to_string(), partial) {
                    tracing::warn!(error = %e2, "could not record the failed flush job");
                }
            }
            Err((e, partial)) => {
                let failures = attempt;
                let wait = retry_backoff(self.retry_base, failures);
                self.backoff.lock().insert(
                    def.id(),
                    Backoff {
                        failures,
                        next_attempt: Instant::now() + wait,
                    },
                );
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "flush failed; rows stay in the hot tier");
                job.trace(format!("failed; retry in {} ms", wait.as_millis()));
                if let Err(e2) = job.fail(&e.to_string(), partial) {
                    tracing::warn!(error = %e2, "could not record the failed flush job");
                }
            }
        }
    }

    /// One pass of the scheduler: starts the flushes that policies or retries ask for.
    pub fn check_policies(self: &Arc<Self>) {
        let now = Instant::now();
        for rt in self.engine.runtimes() {
            let def = rt.def();
            // STREAM tables are never flushed: their events leave by retention or max_buffer.
            if def.namespace.as_str() == SYSTEM_NAMESPACE
                || def.kind == crate::catalog::TableKind::Stream
            {
                continue;
            }
            let retry = self.backoff.lock().get(&def.id()).copied();
            let trigger = match retry {
                Some(b) if now >= b.next_attempt => Some("retry"),
                Some(_) => None,
                None => {
                    let (pending, oldest) = rt.store.pending();
                    let policy = def.flush_policy;
                    if pending > 0 && policy.rows.is_some_and(|r| pending >= r) {
                        Some("rows")
                    } else if pending > 0
                        && policy.interval_secs.is_some_and(|s| {
                            oldest.is_some_and(|o| o.elapsed() >= Duration::from_secs(s))
                        })
                    {
                        Some("interval")
                    } else {
                        None
                    }
                }
            };
            if let Some(trigger) = trigger {
                if self.running.lock().contains_key(&def.id()) {
                    continue;
                }
                if let Err(e) = self.start(rt.clone(), trigger, None) {
                    tracing::warn!(table = %def.id(), error = %e, "could not start a flush");
                }
            }
        }
    }
}

/// What a flush did so far (the job's result, also when it fails part-way).
#[derive(Debug, Default)]
struct Progress {
    rows: u64,
    files: u64,
    bytes: u64,
    partitions: u64,
    hot_rows_removed: u64,
    snapshot_seq: u64,
}

impl Progress {
    fn json(&self) -> serde_json::Value {
        json!({"rows": self.rows, "files": self.files, "bytes": self.bytes,
               "partitions": self.partitions, "hot_rows_removed": self.hot_rows_removed,
               "snapshot_seq": self.snapshot_seq})
    }
}

/// The partition a hot key belongs to, and the row key inside it.
pub(crate) fn split_key(rt: &TableRuntime, key: &[u8]) -> Result<(Partition, RowKey)> {
    if !rt.def().kind.has_system_columns() || rt.def().kind == crate::catalog::TableKind::Shared {
        return Ok((Partition::Shared, RowKey(key.to_vec())));
    }
    let colon = key
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| KalamError::Storage("a USER table key without a user prefix".into()))?;
    let user = std::str::from_utf8(&key[..colon])
        .map_err(|_| KalamError::Storage("a user prefix that is not UTF-8".into()))
        .and_then(|u| {
            UserId::new(u).map_err(|_| KalamError::Storage("invalid user prefix".into()))
        })?;
    Ok((Partition::User(user), RowKey(key[colon + 1..].to_vec())))
}

/// The file being written for one partition.
struct Open {
    partition: Partition,
    writer: SegmentWriter,
}

fn flush_table(
    cold: &ColdStorage,
    rt: &Arc<TableRuntime>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
) -> std::result::Result<serde_json::Value, (KalamError, serde_json::Value)> {
    // Tests make a flush panic here (FAILPOINTS=flush-table=panic).
    panic_point!("flush-table");
    let mut progress = Progress::default();
    let result = flush_steps(cold, rt, job, tokio, &mut progress);
    match result {
        Ok(()) => Ok(progress.json()),
        Err(e) => Err((e, progress.json())),
    }
}

fn flush_steps(
    cold: &ColdStorage,
    rt: &Arc<TableRuntime>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
) -> Result<()> {
    // A cleanup of this table rewrites its manifests too: wait for it to finish.
    let _maintenance = rt.store.maintenance_lock();
    let cf = rt.store.cf_name().to_string();
    let storage = rt.store.storage().clone();
    let (_, store) = cold.store(&rt.location)?;

    // Files of an interrupted flush (or cleanup) were never committed: no query reads them.
    remove_uncommitted(&storage, &store, &cf, job, tokio)?;

    let from_seq = cold
        .table_segments(&cf)
        .iter()
        .flat_map(|(_, segs)| segs.iter().map(|s| s.seq_to))
        .max()
        .unwrap_or(0)
        + 1;
    let mut open: Option<Open> = None;
    let mut scanned: u64 = 0;
    let mut part_index: HashMap<Vec<u8>, u32> = HashMap::new();
    let started = Instant::now();

    // Finishes the open file and commits it; `last_of_partition` marks a partition change.
    let commit = |o: Open, snapshot_seq: u64, progress: &mut Progress| -> Result<()> {
        let (segment, keys) = tokio.block_on(o.writer.finish())?;
        crate::cold::location::sync_written(&rt.location, &segment.path)?;
        crash_point!("flush-after-file");
        let mut segments: Vec<Segment> = cold.segments(&cf, &o.partition).as_ref().clone();
        // Counted once committed: a failed job reports what it flushed, not what it wrote.
        let (rows, bytes) = (segment.rows, segment.bytes);
        let path = segment.path.clone();
        segments.push(segment);
        let meta_ops = vec![
            (
                manifest_key(&cf, &o.partition),
                Some(encode_manifest(&segments)?),
            ),
            (journal_key(&cf, &path), None),
        ];
        let publish_segments = segments.clone();
        let removed = rt.store.commit_flush(&keys, snapshot_seq, &meta_ops, || {
            cold.publish(&cf, &o.partition, publish_segments)
        })?;
        progress.rows += rows;
        progress.files += 1;
        progress.bytes += bytes;
        progress.hot_rows_removed += removed as u64;
        job.trace(format!("committed {path} ({} rows)", keys.len()));
        job.progress(progress.json());
        Ok(())
    };

    let mut failure: Option<KalamError> = None;
    let open_file = |partition: Partition,
                     snapshot_seq: u64,
                     def: &Arc<TableDef>,
                     part_index: &mut HashMap<Vec<u8>, u32>|
     -> Result<Open> {
        // DROP TABLE committed meanwhile: write no further file of the dropped table.
        if rt.store.is_dropped() {
            return Err(KalamError::TableNotFound(def.id().to_string()));
        }
        let n = part_index.entry(partition.prefix()).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            format!("batch-{from_seq}-{snapshot_seq}.parquet")
        } else {
            format!("batch-{from_seq}-{snapshot_seq}-{n}.parquet")
        };
        let dir = ColdStorage::partition_dir(&rt.location, &partition);
        let path = dir.clone().join(name.as_str());
        storage.meta_put(&journal_key(&cf, path.as_ref()), b"")?;
        Ok(Open {
            writer: SegmentWriter::new(store.clone(), path, def.clone())?,
            partition,
        })
    };

    let seq = rt.store.snapshot_scan(|snapshot_seq, def, key, row| {
        let step = (|| -> Result<()> {
            let (partition, row_key) = split_key(rt, key)?;
            let switch = match &open {
                Some(o) => o.partition != partition || o.writer.rows() as usize >= FILE_ROWS,
                None => true,
            };
            if switch {
                if let Some(o) = open.take() {
                    let changed = o.partition != partition;
                    commit(o, snapshot_seq, progress)?;
                    if changed {
                        progress.partitions += 1;
                        crash_point!("flush-after-partition");
                    }
                } else {
                    crash_point!("flush-before-write");
                }
                open = Some(open_file(partition, snapshot_seq, def, &mut part_index)?);
            }
            if let Some(o) = open.as_mut() {
                tokio.block_on(o.writer.push(key, row_key, row))?;
                job.note_memory(o.writer.memory_size() as u64 + o.writer.keys.len() as u64 * 24);
            }
            scanned += 1;
            Ok(())
        })();
        match step {
            Ok(()) => Ok(true),
            Err(e) => {
                failure = Some(e);
                Ok(false)
            }
        }
    });
    let seq = match seq {
        Ok(s) => s,
        Err(e) => {
            rt.store.restore_pending(scanned);
            return Err(e);
        }
    };
    progress.snapshot_seq = seq;
    let tail = match failure {
        Some(e) => Err(e),
        None => match open.take() {
            Some(o) => {
                progress.partitions += 1;
                commit(o, seq, progress)
            }
            None => Ok(()),
        },
    };
    if let Err(e) = tail {
        rt.store.restore_pending(scanned);
        return Err(e);
    }
    job.trace(format!(
        "flushed {} rows in {} files ({} bytes) up to seq {seq} in {} ms",
        progress.rows,
        progress.files,
        progress.bytes,
        started.elapsed().as_millis()
    ));
    Ok(())
}
