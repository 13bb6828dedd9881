//! Purges: the removal of a dropped table's cold-tier files, as a background `cleanup` job.
//!
//! DROP TABLE's commit point is the catalog (docs/adr/0004-catalog-commit-points.md): once
//! the table's `manifest.json` is gone, the table is gone for SQL. What it leaves in its
//! storage location (every Parquet file of every partition) and in the `meta` column family
//! (the segment manifests naming those files, the journal of an interrupted flush) is removed
//! afterwards (docs/adr/0013-drop-table-purge.md):
//!
//! 1. the catalog records the dropped table in `pending_purges.json` *before* the commit
//!    point, so a node that dies at any moment after it still knows what to remove;
//! 2. a job waits for a flush of the dropped table that may still run (none takes a snapshot
//!    or commits a file once the table is dropped), deletes the files the manifests name, a
//!    batch of partitions at a time, each batch's manifests right after its files, then the
//!    uncommitted files the flush journal names, then the directories a filesystem location
//!    is left with empty;
//! 3. last, the catalog forgets the record.
//!
//! A failure (the location unreachable) fails the job in `system.jobs` with its error and
//! what it removed so far; it is retried with the flush backoff (`flush_retry_base_ms`,
//! doubling, at most 5 minutes). Start-up resumes every recorded purge. A CREATE TABLE whose
//! files could land on a pending purge's paths lets that purge finish first
//! ([`Purger::clear_way`]): the purge deletes paths, and a new table's flush may reuse them.
//!
//! The catalog owns the record, `cold` the files and manifests, `flush` its journal, `jobs`
//! the job rows; this room only runs the steps in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::oneshot;

use crate::catalog::{LocationKind, PendingPurge, TableStorage};
use crate::cold::{self, ColdStorage, Deleted, Segment};
use crate::engine::Engine;
use crate::error::{KalamError, Result};
use crate::flush::{journaled_files, retry_backoff};
use crate::ids::UserId;
use crate::jobs::{JobHandle, JobType};
use crate::storage::table::TableStore;
use crate::storage::Storage;

/// Files deleted per step (S3 takes up to 1,000 keys in one delete request).
const BATCH_FILES: usize = 1000;
/// How long an attempt waits for a flush of the dropped table to stop before it fails.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// A CREATE TABLE waiting for a purge: `Err` carries the failed attempt's error.
type Waiter = oneshot::Sender<std::result::Result<(), String>>;

/// What this process knows of one pending purge besides its catalog record.
#[derive(Debug, Default)]
struct Slot {
    /// The dropped table's store, while this process has it (not after a restart): an
    /// attempt waits for a flush of it to stop.
    store: Option<Arc<TableStore>>,
    /// The job id of the attempt running now.
    running: Option<String>,
    /// Failed attempts so far, and when the next one is due.
    failures: u32,
    next_attempt: Option<Instant>,
    waiters: Vec<Waiter>,
}

/// Starts purge jobs (after DROP TABLE, at start-up, for a CREATE TABLE) and retries them.
#[derive(Debug)]
pub struct Purger {
    engine: Arc<Engine>,
    retry_base: Duration,
    /// By the dropped table's column family.
    slots: Mutex<HashMap<String, Slot>>,
}

impl Purger {
    pub fn new(engine: Arc<Engine>, retry_base: Duration) -> Arc<Self> {
        Arc::new(Self {
            engine,
            retry_base,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the purge of every dropped table the catalog still records: the ones a
    /// previous process did not finish.
    pub fn resume(self: &Arc<Self>) {
        for purge in self.engine.catalog.pending_purges() {
            let table = purge.table_id();
            match self.start(purge, None, "restart", None) {
                Ok(job) => {
                    tracing::info!(%table, %job, "resuming the purge of a dropped table")
                }
                Err(e) => {
                    tracing::warn!(%table, error = %e, "could not resume the purge of a dropped table; it is retried")
                }
            }
        }
    }

    /// Starts an attempt at a purge and returns its job id at once; when one is running
    /// already, returns that job's id. `store` is the dropped table's store (DROP TABLE).
    pub fn start(
        self: &Arc<Self>,
        purge: PendingPurge,
        store: Option<Arc<TableStore>>,
        trigger: &str,
        user: Option<&UserId>,
    ) -> Result<String> {
        let cf = purge.cf.clone();
        let table = purge.table.clone();
        let mut slots = self.slots.lock();
        let slot = slots.entry(cf).or_default();
        if store.is_some() {
            slot.store = store;
        }
        if let Some(job) = &slot.running {
            return Ok(job.clone());
        }
        let attempt = slot.failures + 1;
        let store = slot.store.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<String>>();
        let this = self.clone();
        let trigger = trigger.to_string();
        let user = user.cloned();
        // The job runs on a thread of its own (its CPU figure is that thread's); the thread
        // sends its job id before it takes `slots`, which this call holds until then.
        let spawned = std::thread::Builder::new()
            .name(format!("purge-{table}"))
            .spawn(move || this.run(purge, store, &trigger, user.as_ref(), attempt, tx));
        let started = match spawned {
            Ok(_) => rx.recv().unwrap_or_else(|_| {
                Err(KalamError::internal(
                    "the purge thread stopped before its job started",
                ))
            }),
            Err(e) => Err(KalamError::internal(e)),
        };
        match started {
            Ok(job) => {
                slot.running = Some(job.clone());
                Ok(job)
            }
            Err(e) => {
                slot.failures = attempt;
                slot.next_attempt = Some(Instant::now() + retry_backoff(self.retry_base, attempt));
                let message = e.to_string();
                for waiter in slot.waiters.drain(..) {
                    let _ = waiter.send(Err(message.clone()));
                }
                Err(e)
            }
        }
    }

    /// One pass of the scheduler: starts the retries that are due.
    pub fn check_retries(self: &Arc<Self>) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .lock()
            .iter()
            .filter(|(_, s)| s.running.is_none() && s.next_attempt.is_some_and(|t| now >= t))
            .map(|(cf, _)| cf.clone())
            .collect();
        for cf in due {
            let Some(purge) = self.engine.catalog.pending_purge(&cf) else {
                // Finished by another attempt meanwhile.
                if let Some(slot) = self.slots.lock().remove(&cf) {
                    for waiter in slot.waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
                continue;
            };
            let table = purge.table_id();
            if let Err(e) = self.start(purge, None, "retry", None) {
                tracing::warn!(%table, error = %e, "could not start a retry of the purge of a dropped table");
            }
        }
    }

    /// Before CREATE TABLE: lets every pending purge whose files could share paths with the
    /// new table's ([`cold::location::may_share_files`]) finish, starting an attempt now
    /// (whatever its backoff says) when none runs, and waiting for it. The new table's
    /// flushes restart at `batch-1-...`: a purge still to come could delete their files.
    /// Fails with `LOCATION_UNREACHABLE` and the attempt's error when a purge cannot finish.
    pub async fn clear_way(self: &Arc<Self>, storage: &TableStorage) -> Result<()> {
        let blocking: Vec<PendingPurge> = self
            .engine
            .catalog
            .pending_purges()
            .into_iter()
            .filter(|p| cold::location::may_share_files(&p.storage, storage))
            .collect();
        for purge in blocking {
            let table = purge.table_id();
            let (tx, rx) = oneshot::channel();
            let idle = {
                let mut slots = self.slots.lock();
                if self.engine.catalog.pending_purge(&purge.cf).is_none() {
                    // Finished meanwhile.
                    continue;
                }
                let slot = slots.entry(purge.cf.clone()).or_default();
                slot.waiters.push(tx);
                slot.running.is_none()
            };
            if idle {
                // A failure to start is sent to the waiter as well.
                let _ = self.start(purge, None, "create", None);
            }
            let outcome = rx
                .await
                .unwrap_or_else(|_| Err("the purge job stopped".to_string()));
            if let Err(reason) = outcome {
                return Err(KalamError::LocationUnreachable(format!(
                    "the files of the dropped table {table} are still being removed from this \
                     location ({reason}); try again once its cleanup job completed"
                )));
            }
        }
        Ok(())
    }

    fn run(
        &self,
        purge: PendingPurge,
        store: Option<Arc<TableStore>>,
        trigger: &str,
        user: Option<&UserId>,
        attempt: u32,
        started: std::sync::mpsc::Sender<Result<String>>,
    ) {
        let table = purge.table_id();
        let job = match self.engine.jobs.start(
            JobType::Cleanup,
            Some(&purge.namespace),
            Some(&purge.table),
            user,
            vec![
                "target=dropped_table".to_string(),
                format!("trigger={trigger}"),
                format!("attempt={attempt}"),
                format!("table_uid={}", purge.uid),
                format!(
                    "location={}",
                    purge
                        .storage
                        .location_name
                        .as_deref()
                        .unwrap_or(purge.storage.kind.as_str())
                ),
            ],
        ) {
            Ok(j) => j,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let _ = started.send(Ok(job.id().to_string()));
        let span = tracing::info_span!("purge", table = %table, job = job.id(), attempt);
        let _enter = span.enter();
        let outcome = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            // A panic (a bug) fails this attempt like any error, so the purge is retried
            // instead of being left "running" until the next start.
            Ok(tokio) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                purge_table(&self.engine, &purge, store.as_deref(), &job, &tokio)
            }))
            .unwrap_or_else(|_| {
                Err((
                    KalamError::internal("the purge stopped unexpectedly"),
                    Progress::default(),
                ))
            }),
            Err(e) => Err((KalamError::internal(e), Progress::default())),
        };
        // The record goes last: until it is gone, a restart resumes the purge.
        let outcome =
            outcome.and_then(
                |progress| match self.engine.catalog.finish_purge(&purge.cf) {
                    Ok(()) => Ok(progress),
                    Err(e) => Err((e, progress)),
                },
            );
        match outcome {
            Ok(progress) => {
                let waiters = self
                    .slots
                    .lock()
                    .remove(&purge.cf)
                    .map(|s| s.waiters)
                    .unwrap_or_default();
                tracing::info!(
                    files = progress.deleted.files,
                    bytes = progress.deleted.bytes,
                    "the files of a dropped table are removed"
                );
                if let Err(e) = job.complete(progress.json()) {
                    tracing::warn!(error = %e, "could not record the completed purge job");
                }
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
            }
            Err((e, partial)) => {
                let wait = retry_backoff(self.retry_base, attempt);
                let message = job_error(&e);
                let waiters = {
                    let mut slots = self.slots.lock();
                    let slot = slots.entry(purge.cf.clone()).or_default();
                    slot.running = None;
                    slot.failures = attempt;
                    slot.next_attempt = Some(Instant::now() + wait);
                    std::mem::take(&mut slot.waiters)
                };
                tracing::warn!(error = %message, retry_in_ms = wait.as_millis() as u64, "the purge of a dropped table failed; it is retried");
                job.trace(format!("failed; retry in {} ms", wait.as_millis()));
                if let Err(e2) = job.fail(&message, partial.json()) {
                    tracing::warn!(error = %e2, "could not record the failed purge job");
                }
                for waiter in waiters {
                    let _ = waiter.send(Err(message.clone()));
                }
            }
        }
    }
}

/// A job's error message: the reason of an unreachable location is its useful part.
fn job_error(e: &KalamError) -> String {
    match e {
        KalamError::LocationUnreachable(reason) => format!("{e}: {reason}"),
        other => other.to_string(),
    }
}

/// What an attempt removed so far (the job's result, also when it fails part-way).
#[derive(Debug, Default)]
struct Progress {
    deleted: Deleted,
    /// Partitions whose files and manifest this attempt removed.
    partitions: u64,
    /// Files the manifests and the flush journal named when the attempt started.
    files_total: u64,
    /// Of those, files of an interrupted flush (their size is not recorded).
    uncommitted: u64,
}

impl Progress {
    fn json(&self) -> serde_json::Value {
        json!({"files": self.deleted.files, "bytes": self.deleted.bytes,
               "files_missing": self.deleted.missing, "partitions": self.partitions,
               "files_total": self.files_total, "uncommitted_files": self.uncommitted})
    }

    fn add(&mut self, d: Deleted) {
        self.deleted.files += d.files;
        self.deleted.bytes += d.bytes;
        self.deleted.missing += d.missing;
    }
}

fn purge_table(
    engine: &Engine,
    purge: &PendingPurge,
    store: Option<&TableStore>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
) -> std::result::Result<Progress, (KalamError, Progress)> {
    let mut progress = Progress::default();
    match purge_steps(engine, purge, store, job, tokio, &mut progress) {
        Ok(()) => Ok(progress),
        Err(e) => Err((e, progress)),
    }
}

fn purge_steps(
    engine: &Engine,
    purge: &PendingPurge,
    store: Option<&TableStore>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
) -> Result<()> {
    if let Some(store) = store {
        wait_for_flush(store, job)?;
    }
    // A cleanup (deleted-row retention) of the table that began before the drop finishes
    // first: the manifests and file lists read below are final only then.
    let _maintenance = store.map(TableStore::maintenance_lock);
    let storage: &Storage = &engine.storage;
    let manifests = cold::stored_manifests(storage, &purge.cf)?;
    let journal = journaled_files(storage, &purge.cf)?;
    let committed: u64 = manifests.iter().map(|(_, s)| s.len() as u64).sum();
    progress.files_total = committed + journal.len() as u64;
    progress.uncommitted = journal.len() as u64;
    job.trace(format!(
        "{committed} file(s) in {} partition(s), and {} uncommitted file(s) of an interrupted \
         flush, to remove from location {}",
        manifests.len(),
        journal.len(),
        purge
            .storage
            .location_name
            .as_deref()
            .unwrap_or(purge.storage.kind.as_str())
    ));
    job.progress(progress.json());
    crash_point!("purge-before-delete");
    let (_, objects) = engine.cold.store(&purge.storage)?;

    // Committed files, a batch of partitions at a time. A batch's manifests go right after
    // its files: a retry does not look for those again.
    let mut batch: Vec<(Vec<u8>, Vec<Segment>)> = Vec::new();
    let mut batch_files = 0usize;
    let mut manifests = manifests.into_iter().peekable();
    while let Some((key, segments)) = manifests.next() {
        batch_files += segments.len();
        batch.push((key, segments));
        if batch_files >= BATCH_FILES || manifests.peek().is_none() {
            let done = std::mem::take(&mut batch);
            delete_partitions(storage, &objects, done, job, tokio, progress)?;
            batch_files = 0;
        }
    }

    // Files of an interrupted flush: no manifest names them, the journal does.
    for chunk in journal.chunks(BATCH_FILES) {
        let files: Vec<(String, Option<u64>)> =
            chunk.iter().map(|(_, path)| (path.clone(), None)).collect();
        let (deleted, outcome) = tokio.block_on(cold::delete_files(&objects, &files));
        progress.add(deleted);
        outcome?;
        for (key, _) in chunk {
            storage.meta_delete(key)?;
        }
        job.trace(format!(
            "removed {} uncommitted file(s) of an interrupted flush",
            chunk.len()
        ));
        job.progress(progress.json());
    }
    // Files a cleanup replaced and has not deleted yet (their grace period runs).
    let prefix = cold::table_obsolete_prefix(&purge.cf);
    let obsolete: Vec<(String, Option<u64>)> = storage
        .meta_scan_prefix(&prefix)?
        .into_iter()
        .map(|(key, value)| {
            let path = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default());
            (
                path.into_owned(),
                cold::decode_obsolete(&value).map(|(_, b)| b),
            )
        })
        .collect();
    for chunk in obsolete.chunks(BATCH_FILES) {
        let (deleted, outcome) = tokio.block_on(cold::delete_files(&objects, chunk));
        progress.add(deleted);
        outcome?;
        job.trace(format!(
            "removed {} file(s) replaced by a cleanup",
            chunk.len()
        ));
        job.progress(progress.json());
    }
    storage.drop_cold_meta(&purge.cf)?;

    if purge.storage.kind == LocationKind::Filesystem {
        // Directories are not files: the purge is done without them, and a warning says so.
        if let Err(e) = ColdStorage::remove_empty_table_dirs(&purge.storage) {
            tracing::warn!(error = %e, "could not remove the empty directories of a dropped table");
            job.trace(format!(
                "could not remove the table's empty directories: {}",
                e.kind()
            ));
        }
    }
    job.trace(format!(
        "removed {} file(s) ({} bytes); {} were gone already",
        progress.deleted.files, progress.deleted.bytes, progress.deleted.missing
    ));
    Ok(())
}

/// Deletes the files of a batch of partitions, then their manifests.
fn delete_partitions(
    storage: &Storage,
    objects: &Arc<dyn ObjectStore>,
    batch: Vec<(Vec<u8>, Vec<Segment>)>,
    job: &JobHandle,
    tokio: &tokio::runtime::Runtime,
    progress: &mut Progress,
) -> Result<()> {
    let files: Vec<(String, Option<u64>)> = batch
        .iter()
        .flat_map(|(_, segments)| segments.iter().map(|s| (s.path.clone(), Some(s.bytes))))
        .collect();
    let (deleted, outcome) = tokio.block_on(cold::delete_files(objects, &files));
    progress.add(deleted);
    outcome?;
    for (key, _) in &batch {
        storage.meta_delete(key)?;
        progress.partitions += 1;
    }
    job.trace(format!(
        "removed {} file(s) of {} partition(s)",
        files.len(),
        batch.len()
    ));
    job.progress(progress.json());
    crash_point!("purge-after-batch");
    Ok(())
}

/// Waits (at most [`FLUSH_WAIT`]) for a flush of the dropped table that started before the
/// drop: it may still write and journal a file. None starts a snapshot or commits after it.
fn wait_for_flush(store: &TableStore, job: &JobHandle) -> Result<()> {
    if !store.is_flushing() {
        return Ok(());
    }
    job.trace("waiting for a flush of the dropped table to stop");
    let deadline = Instant::now() + FLUSH_WAIT;
    while store.is_flushing() {
        if Instant::now() >= deadline {
            return Err(KalamError::internal(
                "a flush of the dropped table is still running",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
