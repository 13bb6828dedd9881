//! The `jobs` room: a durable record of every background job (flush, cleanup, backup,
//! restore) with its progress, step trace and resource use, read back as `system.jobs`.
//!
//! Records live as JSON under `meta` key `job/{job_id}` and in an in-memory cache that is
//! written together with them, so `system.jobs` never touches RocksDB. A record still
//! `running` when the node opens belonged to a node that died mid-job and is marked failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use crate::error::{KalamError, Result};
use crate::ids::{NamespaceId, TableName, UserId};
use crate::storage::Storage;

const KEY_PREFIX: &str = "job/";
/// Enough steps to follow a job; a runaway loop must not grow its record without bound.
const MAX_TRACE_LINES: usize = 200;
const MAX_ERROR_CHARS: usize = 1000;
const NODE_STOPPED: &str = "the node stopped while the job was running";
const STOPPED_UNEXPECTEDLY: &str = "the job stopped unexpectedly";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    Flush,
    /// Removal of what is no longer needed, named by its `target=` parameter:
    /// `job_history` (finished jobs past `job_retention`) or `dropped_table` (the Parquet
    /// files and segment manifests of a dropped table; see `purge`).
    Cleanup,
    Backup,
    Restore,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Flush => "flush",
            JobType::Cleanup => "cleanup",
            JobType::Backup => "backup",
            JobType::Restore => "restore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
}

/// One row of `system.jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub job_type: JobType,
    pub namespace: Option<String>,
    pub table_name: Option<String>,
    /// Who asked (an admin's `FLUSH TABLE`); `None` for scheduled jobs.
    pub user_id: Option<String>,
    pub status: JobStatus,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    /// `key=value` strings, e.g. `trigger=rows`, `attempt=2`.
    pub parameters: Vec<String>,
    /// A JSON object: the outcome when finished, progress so far while running.
    pub result: JsonValue,
    /// `HH:MM:SS.mmm step` lines, at most 200 (the first counts the dropped oldest ones).
    pub trace: Vec<String>,
    pub memory_used_mb: f64,
    pub cpu_used_percent: f64,
    pub node_id: String,
    pub error_message: Option<String>,
}

fn key(job_id: &str) -> Vec<u8> {
    format!("{KEY_PREFIX}{job_id}").into_bytes()
}

/// The job table of this node.
#[derive(Debug)]
pub struct Jobs {
    storage: Arc<Storage>,
    node_id: String,
    /// Unix micros of the last id handed out: ids stay unique and ordered even when two jobs
    /// start in the same microsecond or the clock steps back.
    last_id_micros: AtomicU64,
    records: RwLock<BTreeMap<String, JobRecord>>,
}

impl Jobs {
    /// Loads every record; ones left `running` by a previous process become `failed`.
    pub fn open(storage: Arc<Storage>, node_id: impl Into<String>) -> Result<Self> {
        let mut records = BTreeMap::new();
        let mut last_id_micros = 0u64;
        for (k, v) in storage.meta_scan_prefix(KEY_PREFIX.as_bytes())? {
            let mut record: JobRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    let key = String::from_utf8_lossy(&k);
                    tracing::warn!(%key, error = %e, "skipping an unreadable job record");
                    continue;
                }
            };
            if let Some(micros) = id_micros(&record.job_id) {
                last_id_micros = last_id_micros.max(micros);
            }
            if record.status == JobStatus::Running {
                record.status = JobStatus::Failed;
                record.end_time = Some(Utc::now());
                record.error_message = Some(NODE_STOPPED.to_string());
                persist(&storage, &record)?;
            }
            records.insert(record.job_id.clone(), record);
        }
        Ok(Self {
            storage,
            node_id: node_id.into(),
            last_id_micros: AtomicU64::new(last_id_micros),
            records: RwLock::new(records),
        })
    }

    /// `{type}-{16 hex digits of unix micros}`: sorts by start time among jobs of one type.
    fn new_id(&self, job_type: JobType, now: DateTime<Utc>) -> String {
        let now = now.timestamp_micros().max(0) as u64;
        let next = |last: u64| now.max(last.saturating_add(1));
        let bump = |last: u64| Some(next(last));
        let prev = match self
            .last_id_micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, bump)
        {
            Ok(p) | Err(p) => p,
        };
        format!("{}-{:016x}", job_type.as_str(), next(prev))
    }

    /// Records a running job. Run it on one thread until it finishes through the handle: its
    /// CPU use is that thread's CPU time.
    pub fn start(
        self: &Arc<Self>,
        job_type: JobType,
        namespace: Option<&NamespaceId>,
        table: Option<&TableName>,
        user: Option<&UserId>,
        parameters: Vec<String>,
    ) -> Result<JobHandle> {
        let now = Utc::now();
        let record = JobRecord {
            job_id: self.new_id(job_type, now),
            job_type,
            namespace: namespace.map(|n| n.to_string()),
            table_name: table.map(|t| t.to_string()),
            user_id: user.map(|u| u.to_string()),
            status: JobStatus::Running,
            start_time: now,
            end_time: None,
            parameters,
            result: json!({}),
            trace: Vec::new(),
            memory_used_mb: 0.0,
            cpu_used_percent: 0.0,
            node_id: self.node_id.clone(),
            error_message: None,
        };
        let mut records = self.records.write();
        persist(&self.storage, &record)?;
        let id = record.job_id.clone();
        records.insert(id.clone(), record);
        drop(records);
        Ok(JobHandle {
            jobs: Arc::clone(self),
            id,
            started: Instant::now(),
            meter: CpuMeter::start(),
            peak_memory_bytes: AtomicU64::new(0),
            finished: false,
        })
    }

    pub fn get(&self, id: &str) -> Option<JobRecord> {
        self.records.read().get(id).cloned()
    }

    /// Every record, ordered by job id.
    pub fn list(&self) -> Vec<JobRecord> {
        self.records.read().values().cloned().collect()
    }

    /// Deletes finished jobs that ended before `cutoff`; running jobs are never removed.
    pub fn remove_finished_before(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let mut records = self.records.write();
        let old: Vec<String> = records
            .values()
            .filter(|r| r.status != JobStatus::Running && r.end_time.is_some_and(|t| t < cutoff))
            .map(|r| r.job_id.clone())
            .collect();
        for id in &old {
            self.storage.meta_delete(&key(id))?;
            records.remove(id);
        }
        Ok(old.len())
    }

    /// Job-history retention, recorded as a `cleanup` job of its own.
    pub fn run_retention(self: &Arc<Self>, retention: Duration) -> Result<JobRecord> {
        let handle = self.start(
            JobType::Cleanup,
            None,
            None,
            None,
            vec![
                "target=job_history".to_string(),
                format!("retention_secs={}", retention.as_secs()),
            ],
        )?;
        let now = Utc::now();
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        handle.trace(format!(
            "removing finished jobs that ended before {}",
            cutoff.to_rfc3339()
        ));
        // The cleanup job itself is running, so it is never among the removed.
        match self.remove_finished_before(cutoff) {
            Ok(n) => {
                handle.trace(format!("removed {n} job record(s)"));
                handle.complete(json!({ "jobs_removed": n }))
            }
            Err(e) => {
                handle.fail(&e.to_string(), json!({}))?;
                Err(e)
            }
        }
    }

    /// Changes one record in meta and cache together; the cache changes only once the write
    /// is durable.
    fn update(&self, id: &str, change: impl FnOnce(&mut JobRecord)) -> Result<JobRecord> {
        let mut records = self.records.write();
        let mut record = records
            .get(id)
            .cloned()
            .ok_or_else(|| KalamError::internal(format!("job {id} has no record")))?;
        change(&mut record);
        persist(&self.storage, &record)?;
        records.insert(id.to_string(), record.clone());
        Ok(record)
    }
}

fn persist(storage: &Storage, record: &JobRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(KalamError::internal)?;
    storage.meta_put(&key(&record.job_id), &bytes)
}

fn id_micros(job_id: &str) -> Option<u64> {
    u64::from_str_radix(job_id.rsplit('-').next()?, 16).ok()
}

/// Appends a line, keeping at most [`MAX_TRACE_LINES`]: the oldest lines give way to a first
/// line that counts them.
fn push_trace(trace: &mut Vec<String>, line: String) {
    fn dropped(line: &str) -> Option<u64> {
        line.strip_prefix('[')?
            .strip_suffix(" earlier lines dropped]")?
            .parse()
            .ok()
    }
    trace.push(line);
    if trace.len() <= MAX_TRACE_LINES {
        return;
    }
    let n = match trace.first().map(String::as_str).and_then(dropped) {
        Some(n) => {
            trace.remove(1);
            n + 1
        }
        None => {
            trace.drain(..2);
            trace.insert(0, String::new());
            2
        }
    };
    trace[0] = format!("[{n} earlier lines dropped]");
}

/// CPU time of the job's thread. Jobs run on one dedicated thread from `start()` to
/// `complete()`, so that thread's CPU time is the job's CPU time, plus what helper threads
/// of the job report ([`JobHandle::note_cpu`], e.g. a flush's Parquet encoder).
#[derive(Debug)]
struct CpuMeter {
    cpu_at_start: Duration,
    helpers_nanos: AtomicU64,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            cpu_at_start: thread_cpu_time(),
            helpers_nanos: AtomicU64::new(0),
        }
    }

    /// `100 * CPU / wall time` since start, as `top` counts it (a job that keeps two cores
    /// busy shows 200); 0 where the platform has no thread clock.
    fn percent(&self, wall: Duration) -> f64 {
        let cpu = thread_cpu_time().saturating_sub(self.cpu_at_start)
            + Duration::from_nanos(self.helpers_nanos.load(Ordering::Relaxed));
        let wall = wall.as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let p = 100.0 * cpu.as_secs_f64() / wall;
        if p.is_finite() {
            p.clamp(0.0, 100.0 * cores)
        } else {
            0.0
        }
    }
}

/// User + system CPU time of the calling thread.
#[cfg(target_os = "linux")]
pub fn thread_cpu_time() -> Duration {
    // SAFETY: `rusage` is plain data for which all-zero bytes are valid, and getrusage only
    // writes into the struct we lend it for the duration of the call.
    let (rc, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        (rc, usage)
    };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_time() -> Duration {
    Duration::ZERO
}

/// A running job. Finish it with [`JobHandle::complete`] or [`JobHandle::fail`]; dropping it
/// unfinished (a panic) records it as failed.
#[derive(Debug)]
pub struct JobHandle {
    jobs: Arc<Jobs>,
    id: String,
    started: Instant,
    meter: CpuMeter,
    peak_memory_bytes: AtomicU64,
    finished: bool,
}

impl JobHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends a timestamped step line. A trace that cannot be saved must not stop the job.
    pub fn trace(&self, line: impl Into<String>) {
        let line = format!("{} {}", Utc::now().format("%H:%M:%S%.3f"), line.into());
        if let Err(e) = self
            .jobs
            .update(&self.id, |r| push_trace(&mut r.trace, line))
        {
            tracing::warn!(job_id = %self.id, error = %e, "could not save a job trace line");
        }
    }

    /// Replaces the result with progress so far (and refreshes the metrics).
    pub fn progress(&self, result: JsonValue) {
        let (memory, cpu) = self.metrics();
        let saved = self.jobs.update(&self.id, |r| {
            r.result = result;
            r.memory_used_mb = memory;
            r.cpu_used_percent = cpu;
        });
        if let Err(e) = saved {
            tracing::warn!(job_id = %self.id, error = %e, "could not save job progress");
        }
    }

    /// Keeps the peak of the memory the job says it holds.
    /// Adds CPU time spent for this job on another thread.
    pub fn note_cpu(&self, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.meter.helpers_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn note_memory(&self, bytes: u64) {
        self.peak_memory_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    pub fn complete(mut self, result: JsonValue) -> Result<JobRecord> {
        self.finish(JobStatus::Completed, None, Some(result))
    }

    /// Records the failure with what the job got done before it.
    pub fn fail(mut self, error: &str, partial: JsonValue) -> Result<JobRecord> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        self.finish(JobStatus::Failed, Some(error), Some(partial))
    }

    fn metrics(&self) -> (f64, f64) {
        let memory = self.peak_memory_bytes.load(Ordering::Relaxed) as f64 / 1_048_576.0;
        (memory, self.meter.percent(self.started.elapsed()))
    }

    fn finish(
        &mut self,
        status: JobStatus,
        error: Option<String>,
        result: Option<JsonValue>,
    ) -> Result<JobRecord> {
        let (memory, cpu) = self.metrics();
        let record = self.jobs.update(&self.id, |r| {
            r.status = status;
            r.end_time = Some(Utc::now());
            if let Some(result) = result {
                r.result = result;
            }
            r.memory_used_mb = memory;
            r.cpu_used_percent = cpu;
            r.error_message = error;
        })?;
        // Only once saved: if saving failed, Drop tries again to leave a finished record.
        self.finished = true;
        Ok(record)
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = self.finish(JobStatus::Failed, Some(STOPPED_UNEXPECTEDLY.into()), None) {
            tracing::warn!(job_id = %self.id, error = %e, "could not mark a stopped job failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn storage(dir: &std::path::Path) -> Arc<Storage> {
        let opts = StorageOptions {
            sync_writes: false,
            write_buffer_bytes: 8 << 20,
            max_open_files: 64,
        };
        Arc::new(Storage::open(dir, &opts).unwrap())
    }

    fn open(storage: &Arc<Storage>) -> Arc<Jobs> {
        Arc::new(Jobs::open(storage.clone(), "node-1").unwrap())
    }

    fn scheduled(jobs: &Arc<Jobs>, job_type: JobType) -> JobHandle {
        jobs.start(job_type, None, None, None, vec![]).unwrap()
    }

    #[test]
    fn a_job_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (id, done) = {
            let jobs = open(&storage(dir.path()));
            let ns = NamespaceId::new("app").unwrap();
            let table = TableName::new("messages").unwrap();
            let user = UserId::new("admin").unwrap();
            let h = jobs
                .start(
                    JobType::Flush,
                    Some(&ns),
                    Some(&table),
                    Some(&user),
                    vec!["trigger=rows".into()],
                )
                .unwrap();
            assert!(h.id().starts_with("flush-"));
            h.progress(json!({"rows": 5}));
            h.note_memory(3 << 20);
            h.note_memory(1 << 20);
            let running = jobs.get(h.id()).unwrap();
            assert_eq!(running.status, JobStatus::Running);
            assert_eq!(running.result, json!({"rows": 5}));
            h.trace("writing parquet");
            let id = h.id().to_string();
            let done = h
                .complete(json!({"rows": 10, "files": 2, "bytes": 1234}))
                .unwrap();
            assert_eq!(done.status, JobStatus::Completed);
            assert_eq!(done.memory_used_mb, 3.0);
            // Counted as `top` does (up to 100 per core). A job this short is mostly clock
            // granularity, so only the bounds are checked.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            assert!(
                (0.0..=100.0 * cores).contains(&done.cpu_used_percent),
                "{}",
                done.cpu_used_percent
            );
            assert_eq!(done.namespace.as_deref(), Some("app"));
            assert_eq!(done.user_id.as_deref(), Some("admin"));
            (id, done)
        };
        let jobs = open(&storage(dir.path()));
        let back = jobs.get(&id).unwrap();
        assert_eq!(back.status, JobStatus::Completed);
        assert_eq!(back.end_time, done.end_time);
        assert_eq!(back.result, done.result);
        assert_eq!(back.parameters, vec!["trigger=rows".to_string()]);
        assert_eq!(back.trace, done.trace);
        assert!(back.trace[0].ends_with(" writing parquet"));
        assert_eq!(back.node_id, "node-1");
        assert_eq!(jobs.list().len(), 1);
    }

    #[test]
    fn a_job_running_at_open_becomes_failed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let jobs = open(&storage);
        let h = scheduled(&jobs, JobType::Backup);
        let running = jobs.get(h.id()).unwrap();
        drop(h);
        assert_eq!(
            jobs.get(&running.job_id).unwrap().error_message.as_deref(),
            Some(STOPPED_UNEXPECTEDLY)
        );
        // As if the node died while it ran.
        persist(&storage, &running).unwrap();
        let reopened = open(&storage);
        let failed = reopened.get(&running.job_id).unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error_message.as_deref(), Some(NODE_STOPPED));
        assert!(failed.end_time.is_some());
        assert_eq!(
            open(&storage).get(&running.job_id).unwrap().status,
            JobStatus::Failed
        );
    }

    #[test]
    fn ids_are_unique_and_sorted_by_start() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = open(&storage(dir.path()));
        let handles: Vec<_> = (0..50).map(|_| scheduled(&jobs, JobType::Flush)).collect();
        let ids: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
        let listed = jobs.list();
        assert!(listed
            .windows(2)
            .all(|w| w[0].start_time <= w[1].start_time));
        for h in handles {
            h.complete(json!({})).unwrap();
        }
        // A reopened table goes on after the ids it already holds.
        let last = ids.last().unwrap().clone();
        let again = open(&jobs.storage);
        let h = scheduled(&again, JobType::Flush);
        assert!(h.id() > last.as_str());
    }

    #[test]
    fn retention_removes_only_finished_jobs_older_than_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = open(&storage(dir.path()));
        let start = || scheduled(&jobs, JobType::Flush);
        let old_done = start().complete(json!({})).unwrap();
        let old_failed = start().fail("boom", json!({})).unwrap();
        let running = start();
        std::thread::sleep(Duration::from_millis(5));
        let cutoff = Utc::now();
        std::thread::sleep(Duration::from_millis(5));
        let recent = start().complete(json!({})).unwrap();
        assert_eq!(jobs.remove_finished_before(cutoff).unwrap(), 2);
        assert!(jobs.get(&old_done.job_id).is_none());
        assert!(jobs.get(&old_failed.job_id).is_none());
        assert!(jobs.get(running.id()).is_some());
        assert!(jobs.get(&recent.job_id).is_some());

        let kept = jobs.run_retention(Duration::from_secs(3600)).unwrap();
        assert_eq!(kept.job_type, JobType::Cleanup);
        assert_eq!(kept.result, json!({"jobs_removed": 0}));
        assert_eq!(
            kept.parameters,
            vec!["target=job_history", "retention_secs=3600"]
        );
        std::thread::sleep(Duration::from_millis(5));
        let swept = jobs.run_retention(Duration::ZERO).unwrap();
        // `recent` and the first cleanup; never the running job nor this cleanup itself.
        assert_eq!(swept.result, json!({"jobs_removed": 2}));
        let left: Vec<String> = jobs.list().into_iter().map(|r| r.job_id).collect();
        assert_eq!(left, vec![swept.job_id.clone(), running.id().to_string()]);
    }

    #[test]
    fn fail_keeps_the_partial_result_and_a_clipped_error() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = open(&storage(dir.path()));
        let h = scheduled(&jobs, JobType::Restore);
        h.progress(json!({"rows": 3}));
        h.note_memory(1 << 20);
        let failed = h.fail(&"x".repeat(5000), json!({"rows": 3})).unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.result, json!({"rows": 3}));
        assert_eq!(
            failed.error_message.as_ref().map(|e| e.len()),
            Some(MAX_ERROR_CHARS)
        );
        assert_eq!(failed.memory_used_mb, 1.0);
        assert!(failed.end_time.is_some());
    }

    #[test]
    fn the_trace_keeps_at_most_200_lines() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = open(&storage(dir.path()));
        let h = scheduled(&jobs, JobType::Cleanup);
        for i in 0..250 {
            h.trace(format!("step {i}"));
        }
        let trace = jobs.get(h.id()).unwrap().trace;
        assert_eq!(trace.len(), MAX_TRACE_LINES);
        assert_eq!(trace[0], "[51 earlier lines dropped]");
        assert!(trace[1].ends_with(" step 51"));
        assert!(trace[199].ends_with(" step 249"));
        h.complete(json!({})).unwrap();
    }
}
