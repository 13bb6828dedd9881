//! Deleted-row retention: the scheduled `cleanup` job that physically removes soft-deleted
//! rows whose `_updated` is older than their table's `deleted_retention`, from both tiers
//! (`docs/adr/0014-deleted-row-retention.md`).
//!
//! The rule, per key of a partition: take the newest tombstone of the key whose `_updated`
//! is before the cutoff (now - retention), in either tier; every version of the key up to
//! and including it goes. `_updated` and `_seq` grow together within a table, so what is left
//! is only newer than the tombstone: a key whose newest version is that tombstone disappears,
//! a key written again since keeps its newer versions, and no query answer changes except
//! that the purged rows no longer show under `WHERE _deleted = true`.
//!
//! Protocol, per partition, holding the table's maintenance lock (no flush runs meanwhile):
//! 1. find the tombstones past the cutoff: hot ones from a scan of the column family, cold
//!    ones from the files whose manifest entry says they may hold any (`min_deleted_updated`);
//! 2. find the files holding versions to remove (key and `_seq` columns only) and write a
//!    copy of each without those rows (`compact-*.parquet`), each named in the flush journal
//!    before it is written, so an interrupted cleanup's files are deleted by the next flush or
//!    cleanup;
//! 3. commit: one RocksDB batch writes the partition's new manifest, removes the journal
//!    entries, lists the replaced files under `coldobsolete/` and deletes every hot tombstone
//!    that still is the version found (the same atomic step as a flush commit);
//! 4. delete the replaced files once `cleanup_file_grace` has passed (a query planned before
//!    the commit may still be reading them), by this job or a later one.
//!
//! A crash before 3 leaves the old state plus orphan files no manifest names; after 3 the new
//! one plus replaced files still listed for deletion. The hot tombstone and the cold versions
//! it hides leave in one batch, so a crash can never bring a deleted row back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

use crate::catalog::TableDef;
use crate::cold::parquet::{rewrite_segment, scan_versions};
use crate::cold::{
    decode_obsolete, encode_manifest, encode_obsolete, manifest_key, obsolete_key,
    table_obsolete_prefix, ColdStorage, Segment, UNKNOWN_MIN_DELETED,
};
use crate::engine::{Engine, TableRuntime};
use crate::error::{KalamError, Result};
use crate::flush::{journal_key, remove_uncommitted, split_key};
use crate::ids::{UserId, SYSTEM_NAMESPACE};
use crate::jobs::{JobHandle, JobRecord, JobType};
use crate::storage::table::HotAtCommit;
use crate::storage::{Partition, RowKey, Storage, StoredRowRef};

/// Aborts the process at a named step when `FAILPOINTS` asks for it (debug builds only; see
/// `main`): the crash tests' stand-in for `kill -9` at that step.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            tracing::error!(failpoint = $name, "failpoint reached: aborting");
            std::process::abort()
        })
    };
}

/// Runs the cleanup passes of the node's tables.
#[derive(Debug)]
pub struct Cleaner {
    engine: Arc<Engine>,
    /// How long a replaced file stays in the store after the commit that replaced it.
    file_grace: Duration,
}

/// A hot tombstone past the cutoff: its RocksDB key and `_seq`.
#[derive(Debug)]
struct HotTombstone {
    key: Vec<u8>,
    seq: u64,
}

/// A partition with tombstones past the cutoff in either tier (or possibly, by its manifest).
#[derive(Debug)]
struct PartitionWork {
    partition: Partition,
    hot: Vec<HotTombstone>,
}

/// What a table has to do, found before any job starts (so tables with nothing to do get no
/// row in `system.jobs`).
#[derive(Debug, Default)]
struct Survey {
    partitions: BTreeMap<Vec<u8>, PartitionWork>,
    obsolete_due: usize,
}

/// What a cleanup did so far (the job's result, also when it fails part-way).
#[derive(Debug, Default)]
struct Progress {
    cutoff: Option<i64>,
    partitions: u64,
    /// Deleted rows that are gone from both tiers (keys).
    rows_removed: u64,
    /// Row versions removed: hot tombstones, and rows left out of rewritten files.
    hot_rows_removed: u64,
    cold_rows_removed: u64,
    hot_bytes_freed: u64,
    /// Bytes of the replaced files minus bytes of their copies.
    cold_bytes_freed: i64,
    files_rewritten: u64,
    files_dropped: u64,
    files_written: u64,
    files_deleted: u64,
    files_pending_delete: u64,
    bytes_deleted: u64,
    /// The scan that found the work, before the job started.
    survey_ms: u64,
    elapsed_ms: u64,
}

fn rfc3339(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl Progress {
    fn json(&self) -> serde_json::Value {
        json!({
            "rows_removed": self.rows_removed,
            "versions_removed": self.hot_rows_removed + self.cold_rows_removed,
            "hot_rows_removed": self.hot_rows_removed,
            "cold_rows_removed": self.cold_rows_removed,
            "bytes_freed": (self.hot_bytes_freed as i64).saturating_add(self.cold_bytes_freed),
            "hot_bytes_freed": self.hot_bytes_freed,
            "cold_bytes_freed": self.cold_bytes_freed,
            "files_rewritten": self.files_rewritten,
            "files_dropped": self.files_dropped,
            "files_written": self.files_written,
            "files_deleted": self.files_deleted,
            "files_pending_delete": self.files_pending_delete,
            "bytes_deleted": self.bytes_deleted,
            "partitions": self.partitions,
            "cutoff": self.cutoff.and_then(rfc3339),
            "cutoff_micros": self.cutoff,
            "survey_ms": self.survey_ms,
            "elapsed_ms": self.elapsed_ms,
        })
    }
}

/// Keeps the larger `_seq` per key.
fn bump(map: &mut HashMap<Vec<u8>, u64>, key: Vec<u8>, seq: u64) {
    let entry = map.entry(key).or_insert(seq);
    if seq > *entry {
        *entry = seq;
    }
}

/// The partition of a manifest key's partition prefix (`{user_id}:`, or empty).
fn partition_of_prefix(prefix: &[u8]) -> Result<Partition> {
    if prefix.is_empty() {
        return Ok(Partition::Shared);
    }
    let bad = || KalamError::Storage("a cold-tier manifest of a malformed partition".into());
    let user = prefix.strip_suffix(b":").ok_or_else(bad)?;
    let user = std::str::from_utf8(user).map_err(|_| bad())?;
    UserId::new(user).map(Partition::User).map_err(|_| bad())
}

/// The manifest entry with what the cleanup learned about its tombstones.
fn with_learned(seg: &Segment, learned: &HashMap<String, Option<i64>>) -> Segment {
    let mut s = seg.clone();
    if let Some(min) = learned.get(&seg.path) {
        s.min_deleted_updated = *min;
    }
    s
}

impl Cleaner {
    pub fn new(engine: Arc<Engine>, file_grace: Duration) -> Arc<Self> {
        Arc::new(Self { engine, file_grace })
    }

    /// One pass of the scheduler: a `cleanup` job for every USER or SHARED table that has
    /// soft-deleted rows past its `deleted_retention` (tables with `'off'` have none), or
    /// replaced files whose grace has passed. Tables with nothing to do get no job. Runs the
    /// jobs one after the other on the calling thread (outside any async runtime); returns
    /// the records of the jobs it ran.
    pub fn run_pass(&self) -> Vec<JobRecord> {
        let mut done = Vec::new();
        for rt in self.engine.runtimes() {
            let def = rt.def();
            if def.namespace.as_str() == SYSTEM_NAMESPACE || !def.kind.has_system_columns() {
                continue;
            }
            match self.clean_table(&rt, "schedule") {
                Ok(Some(record)) => done.push(record),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(table = %def.id(), error = %e, "cleanup could not run")
                }
            }
        }
        done
    }

    fn grace_micros(&self) -> i64 {
        i64::try_from(self.file_grace.as_micros()).unwrap_or(i64::MAX)
    }

    /// Whether a replaced file, listed with `value`, may be deleted at `now`.
    fn obsolete_is_due(&self, value: &[u8], now: i64) -> bool {
        match decode_obsolete(value) {
            Some((replaced, _)) => now.saturating_sub(replaced) >= self.grace_micros(),
            // Unreadable: nothing names the file any more, so it goes.
            None => true,
        }
    }

    /// The partitions with tombstones past `cutoff` (hot ones from a scan of the column
    /// family, cold ones by the manifests), and the replaced files due for deletion.
    fn survey(&self, rt: &TableRuntime, cutoff: Option<i64>) -> Result<Survey> {
        let cf = rt.store.cf_name();
        let storage = rt.store.storage();
        let mut survey = Survey::default();
        if let Some(cutoff) = cutoff {
            let partitions = &mut survey.partitions;
            storage.scan_snapshot(
                cf,
                || {},
                |key, bytes| {
                    let row = StoredRowRef::decode(bytes)?;
                    if row.deleted && row.updated_micros < cutoff {
                        let (partition, _) = split_key(rt, key)?;
                        partitions
                            .entry(partition.prefix())
                            .or_insert_with(|| PartitionWork {
                                partition,
                                hot: Vec::new(),
                            })
                            .hot
                            .push(HotTombstone {
                                key: key.to_vec(),
                                seq: row.seq,
                            });
                    }
                    Ok(true)
                },
            )?;
            for (prefix, segments) in self.engine.cold.table_segments(cf) {
                let may_hold = segments
                    .iter()
                    .any(|s| s.min_deleted_updated.is_some_and(|t| t < cutoff));
                if may_hold && !survey.partitions.contains_key(&prefix) {
                    let partition = partition_of_prefix(&prefix)?;
                    survey.partitions.insert(
                        prefix,
                        PartitionWork {
                            partition,
                            hot: Vec::new(),
                        },
                    );
                }
            }
        }
        let now = Utc::now().timestamp_micros();
        survey.obsolete_due = storage
            .meta_scan_prefix(&table_obsolete_prefix(cf))?
            .iter()
            .filter(|(_, v)| self.obsolete_is_due(v, now))
            .count();
        Ok(survey)
    }

    /// Runs a cleanup job of one table when it has something to do. `Ok(None)`: nothing to
    /// do, no job. A job that fails is recorded as failed and returned.
    pub fn clean_table(&self, rt: &Arc<TableRuntime>, trigger: &str) -> Result<Option<JobRecord>> {
        let def = rt.store.def();
        let now = Utc::now().timestamp_micros();
        let cutoff = def.deleted_retention_secs.map(|secs| {
            let retention = i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            now.saturating_sub(retention)
        });
        let surveyed = Instant::now();
        let survey = self.survey(rt, cutoff)?;
        let survey_ms = surveyed.elapsed().as_millis() as u64;
        if survey.partitions.is_empty() && survey.obsolete_due == 0 {
            return Ok(None);
        }
        let mut parameters = vec![
            format!("trigger={trigger}"),
            format!("deleted_retention={}", def.deleted_retention_text()),
        ];
        if let Some(c) = cutoff.and_then(rfc3339) {
            parameters.push(format!("cutoff={c}"));
        }
        let job = self.engine.jobs.start(
            JobType::Cleanup,
            Some(&def.namespace),
            Some(&def.name),
            None,
            parameters,
        )?;
        let span = tracing::info_span!("cleanup", table = %def.id(), job = job.id());
        let _enter = span.enter();
        let started = Instant::now();
        let mut progress = Progress {
            cutoff,
            survey_ms,
            ..Default::default()
        };
        let outcome = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(tokio) => self.clean_steps(rt, &def, survey, cutoff, &job, &tokio, &mut progress),
            Err(e) => Err(KalamError::internal(e)),
        };
        progress.elapsed_ms = started.elapsed().as_millis() as u64;
        let result = progress.json();
        match outcome {
            Ok(()) => {
                tracing::info!(%result, "cleanup completed");
                job.complete(result).map(Some)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cleanup failed; what it did not commit stays as it was");
                job.trace(format!("failed: {e}"));
                job.fail(&e.to_string(), result).map(Some)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn clean_steps(
        &self,
        rt: &Arc<TableRuntime>,
        def: &Arc<TableDef>,
        survey: Survey,
        cutoff: Option<i64>,
        job: &JobHandle,
        tokio: &tokio::runtime::Runtime,
        progress: &mut Progress,
    ) -> Result<()> {
        // No flush of this table runs meanwhile: the manifests and the journal are ours.
        let _maintenance = rt.store.maintenance_lock();
        let cf = rt.store.cf_name().to_string();
        let storage = rt.store.storage().clone();
        let (_, store) = self.engine.cold.store(&rt.location)?;
        remove_uncommitted(&storage, &store, &cf, job, tokio)?;
        if let Some(cutoff) = cutoff {
            job.trace(format!(
                "removing soft-deleted rows whose _updated is before {} from {} partition(s)",
                rfc3339(cutoff).unwrap_or_default(),
                survey.partitions.len()
            ));
            // Unique per job: names of rewritten files never meet an existing file.
            let tag = job.id().rsplit('-').next().unwrap_or("0").to_string();
            for (_, work) in survey.partitions {
                let ctx = PartitionCtx {
                    rt,
                    def,
                    cf: &cf,
                    storage: &storage,
                    store: &store,
                    cutoff,
                    tag: &tag,
                    job,
                    tokio,
                };
                self.clean_partition(&ctx, work, progress)?;
                job.progress(progress.json());
            }
        }
        self.remove_obsolete(&storage, &store, &cf, job, tokio, progress)?;
        job.trace(format!(
            "removed {} deleted row(s): {} hot and {} cold row version(s); {} file(s) rewritten, {} dropped; {} replaced file(s) deleted",
            progress.rows_removed,
            progress.hot_rows_removed,
            progress.cold_rows_removed,
            progress.files_rewritten,
            progress.files_dropped,
            progress.files_deleted
        ));
        Ok(())
    }

    /// Steps 1 to 3 of the protocol for one partition.
    fn clean_partition(
        &self,
        ctx: &PartitionCtx<'_>,
        work: PartitionWork,
        progress: &mut Progress,
    ) -> Result<()> {
        let cold = &self.engine.cold;
        let PartitionWork { partition, hot } = work;
        let prefix_len = partition.prefix().len();
        let segments = cold.segments(ctx.cf, &partition);

        // 1. Per key, the newest tombstone past the cutoff (its `_seq`).
        let mut due: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut hot_due: HashMap<Vec<u8>, u64> = HashMap::new();
        for t in &hot {
            let row_key = t.key.get(prefix_len..).unwrap_or_default().to_vec();
            bump(&mut due, row_key.clone(), t.seq);
            hot_due.insert(row_key, t.seq);
        }
        // Exact tombstone statistics of files whose manifest entry did not have them.
        let mut learned: HashMap<String, Option<i64>> = HashMap::new();
        let cutoff = ctx.cutoff;
        for seg in segments
            .iter()
            .filter(|s| s.min_deleted_updated.is_some_and(|t| t < cutoff))
        {
            let mut min_deleted: Option<i64> = None;
            ctx.tokio.block_on(scan_versions(
                ctx.store,
                ctx.def,
                seg,
                |key, seq, updated, deleted| {
                    if deleted {
                        min_deleted = Some(min_deleted.map_or(updated, |m| m.min(updated)));
                        if updated < cutoff {
                            bump(&mut due, key, seq);
                        }
                    }
                },
            ))?;
            if seg.min_deleted_updated == Some(UNKNOWN_MIN_DELETED) {
                learned.insert(seg.path.clone(), min_deleted);
            }
        }

        // 2. The files holding versions to remove, and the newest cold version of each key.
        let mut removals: HashMap<String, u64> = HashMap::new();
        let mut newest_cold: HashMap<Vec<u8>, u64> = HashMap::new();
        let low = due.keys().min().cloned();
        let high = due.keys().max().cloned();
        if let (Some(low), Some(high)) = (low, high) {
            for seg in segments
                .iter()
                .filter(|s| s.min_key <= high && s.max_key >= low)
            {
                let mut n = 0u64;
                ctx.tokio
                    .block_on(scan_versions(ctx.store, ctx.def, seg, |key, seq, _, _| {
                        if let Some(limit) = due.get(&key).copied() {
                            if seq <= limit {
                                n += 1;
                            }
                            bump(&mut newest_cold, key, seq);
                        }
                    }))?;
                if n > 0 {
                    removals.insert(seg.path.clone(), n);
                }
            }
        }
        if due.is_empty() && learned.is_empty() {
            return Ok(());
        }

        // Copies of those files without the removed versions.
        let dir = ColdStorage::partition_dir(&ctx.rt.location, &partition);
        let mut replaced: HashMap<String, Option<Segment>> = HashMap::new();
        let mut written: Vec<String> = Vec::new();
        let (mut cold_rows, mut cold_bytes, mut rewritten, mut dropped) = (0u64, 0i64, 0u64, 0u64);
        for seg in segments.iter() {
            let Some(&n) = removals.get(&seg.path) else {
                continue;
            };
            cold_rows += n;
            cold_bytes = cold_bytes.saturating_add(seg.bytes as i64);
            if n >= seg.rows {
                ctx.job.trace(format!(
                    "{} holds only removed rows ({n}): dropped",
                    seg.path
                ));
                replaced.insert(seg.path.clone(), None);
                dropped += 1;
                continue;
            }
            let name = format!(
                "compact-{}-{}-{}-{}.parquet",
                seg.seq_from,
                seg.seq_to,
                ctx.tag,
                written.len() + 1
            );
            let path = dir.clone().join(name.as_str());
            ctx.storage
                .meta_put(&journal_key(ctx.cf, path.as_ref()), b"")?;
            written.push(path.to_string());
            let (copy, left_out) = ctx.tokio.block_on(rewrite_segment(
                ctx.store,
                ctx.def,
                seg,
                path,
                |key, seq| due.get(key).is_some_and(|limit| seq <= *limit),
                |bytes| ctx.job.note_memory(bytes as u64),
            ))?;
            if left_out != n || copy.rows + left_out != seg.rows {
                return Err(KalamError::Storage(format!(
                    "{}: {left_out} of {} rows left out of its copy, {n} expected",
                    seg.path, seg.rows
                )));
            }
            // Durable before the commit replaces the original with it.
            crate::cold::location::sync_written(&ctx.rt.location, &copy.path)?;
            cold_bytes = cold_bytes.saturating_sub(copy.bytes as i64);
            ctx.job.trace(format!(
                "rewrote {} without {n} row(s) as {} ({} rows)",
                seg.path, copy.path, copy.rows
            ));
            rewritten += 1;
            replaced.insert(seg.path.clone(), Some(copy));
        }
        crash_point!("cleanup-after-file");

        // 3. One batch: manifest, journal, replaced files, hot tombstones.
        let manifest_changed = !replaced.is_empty() || !learned.is_empty();
        let new_segments: Vec<Segment> = segments
            .iter()
            .filter_map(|s| match replaced.get(&s.path) {
                Some(copy) => copy.clone(),
                None => Some(with_learned(s, &learned)),
            })
            .collect();
        let now = Utc::now().timestamp_micros();
        let mut meta_ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if manifest_changed {
            let value = if new_segments.is_empty() {
                None
            } else {
                Some(encode_manifest(&new_segments)?)
            };
            meta_ops.push((manifest_key(ctx.cf, &partition), value));
        }
        for path in &written {
            meta_ops.push((journal_key(ctx.cf, path), None));
        }
        for seg in segments.iter().filter(|s| replaced.contains_key(&s.path)) {
            meta_ops.push((
                obsolete_key(ctx.cf, &seg.path),
                Some(encode_obsolete(now, seg.bytes)),
            ));
        }
        let order: Vec<(&Vec<u8>, u64)> = due.iter().map(|(k, v)| (k, *v)).collect();
        let keys: Vec<(Vec<u8>, Option<u64>)> = order
            .iter()
            .map(|(k, _)| {
                (
                    partition.key(&RowKey((*k).clone())),
                    hot_due.get(*k).copied(),
                )
            })
            .collect();
        let publish = manifest_changed.then_some(new_segments);
        let at_commit = ctx.rt.store.commit_cleanup(&keys, &meta_ops, || {
            if let Some(segments) = publish {
                cold.publish(ctx.cf, &partition, segments);
            }
        })?;
        let (mut removed_keys, mut hot_rows, mut hot_bytes) = (0u64, 0u64, 0u64);
        for ((row_key, limit), hot) in order.iter().zip(at_commit) {
            match hot {
                HotAtCommit::Deleted { bytes } => {
                    removed_keys += 1;
                    hot_rows += 1;
                    hot_bytes += bytes;
                }
                HotAtCommit::Absent => {
                    if newest_cold.get(*row_key).is_none_or(|n| n <= limit) {
                        removed_keys += 1;
                    }
                }
                HotAtCommit::Kept => {}
            }
        }
        progress.partitions += 1;
        progress.rows_removed += removed_keys;
        progress.hot_rows_removed += hot_rows;
        progress.hot_bytes_freed += hot_bytes;
        progress.cold_rows_removed += cold_rows;
        progress.cold_bytes_freed = progress.cold_bytes_freed.saturating_add(cold_bytes);
        progress.files_rewritten += rewritten;
        progress.files_dropped += dropped;
        progress.files_written += written.len() as u64;
        ctx.job.trace(format!(
            "committed partition {}: {removed_keys} deleted row(s) removed, {hot_rows} hot and {cold_rows} cold version(s)",
            match &partition {
                Partition::User(u) => u.as_str(),
                Partition::Shared => "(shared)",
            }
        ));
        crash_point!("cleanup-after-commit");
        Ok(())
    }

    /// Step 4: deletes the replaced files whose grace has passed (also those an interrupted
    /// job listed), then their entries.
    fn remove_obsolete(
        &self,
        storage: &Storage,
        store: &Arc<dyn ObjectStore>,
        cf: &str,
        job: &JobHandle,
        tokio: &tokio::runtime::Runtime,
        progress: &mut Progress,
    ) -> Result<()> {
        let prefix = table_obsolete_prefix(cf);
        let now = Utc::now().timestamp_micros();
        for (key, value) in storage.meta_scan_prefix(&prefix)? {
            if !self.obsolete_is_due(&value, now) {
                progress.files_pending_delete += 1;
                continue;
            }
            let path =
                String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
            match tokio.block_on(store.delete(&crate::cold::recorded_path(&path))) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(KalamError::LocationUnreachable(e.to_string())),
            }
            storage.meta_delete(&key)?;
            progress.files_deleted += 1;
            progress.bytes_deleted += decode_obsolete(&value).map_or(0, |(_, b)| b);
            job.trace(format!("deleted the replaced file {path}"));
        }
        if progress.files_pending_delete > 0 {
            job.trace(format!(
                "{} replaced file(s) stay for cleanup_file_grace ({} ms) and go in a later pass",
                progress.files_pending_delete,
                self.file_grace.as_millis()
            ));
        }
        Ok(())
    }
}

/// What every step of one partition's cleanup needs.
struct PartitionCtx<'a> {
    rt: &'a Arc<TableRuntime>,
    def: &'a Arc<TableDef>,
    cf: &'a str,
    storage: &'a Arc<Storage>,
    store: &'a Arc<dyn ObjectStore>,
    cutoff: i64,
    tag: &'a str,
    job: &'a JobHandle,
    tokio: &'a tokio::runtime::Runtime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_back_from_manifest_prefixes() {
        assert_eq!(partition_of_prefix(b"").unwrap(), Partition::Shared);
        let alice = Partition::User(UserId::new("alice").unwrap());
        assert_eq!(partition_of_prefix(&alice.prefix()).unwrap(), alice);
        assert!(partition_of_prefix(b"alice").is_err());
        assert!(partition_of_prefix(b"../x:").is_err());
    }

    #[test]
    fn the_newest_tombstone_of_a_key_wins() {
        let mut due = HashMap::new();
        bump(&mut due, b"k".to_vec(), 7);
        bump(&mut due, b"k".to_vec(), 3);
        bump(&mut due, b"j".to_vec(), 1);
        assert_eq!(due.get(b"k".as_slice()), Some(&7));
        assert_eq!(due.get(b"j".as_slice()), Some(&1));
    }

    #[test]
    fn the_result_names_rows_removed_and_bytes_freed() {
        let p = Progress {
            cutoff: Some(1_764_000_000_000_000),
            rows_removed: 3,
            hot_rows_removed: 2,
            cold_rows_removed: 4,
            hot_bytes_freed: 100,
            cold_bytes_freed: -10,
            ..Default::default()
        };
        let v = p.json();
        assert_eq!(v["rows_removed"], 3);
        assert_eq!(v["versions_removed"], 6);
        assert_eq!(v["bytes_freed"], 90);
        assert_eq!(v["cutoff"], "2025-11-24T16:00:00.000000Z");
        assert_eq!(v["cutoff_micros"], 1_764_000_000_000_000i64);
    }
}
