//! One table's hot tier: its column family, its commit sequence, and the write rules every
//! statement goes through (key checks, `_updated`/`_deleted`, one atomic batch per write).
//!
//! The store holds the table's newest definition. ALTER TABLE replaces it under the write
//! lock ([`TableStore::alter`]), so each commit encodes its rows in the schema version
//! current at that moment, and every row in RocksDB names a version the catalog holds.
//! Callers pass the definition their values are shaped by (the one they planned with):
//! an INSERT planned before an ALTER is brought into the new version at commit, an UPDATE
//! or DELETE is made to read again (its read values would miss the new columns).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::catalog::{TableDef, TableKind};
use crate::error::{KalamError, Result};
use crate::storage::codec::{Reshape, Shaper};
use crate::storage::{Partition, RawRow, RowKey, Storage, StoredRow, StoredRowRef, Value};

/// Extra checks a table puts on the values written to it (`system.users` checks roles).
pub type RowValidator = fn(&TableDef, &[Value]) -> Result<()>;

/// A new version of a row that an UPDATE or DELETE read: written only if the row still is
/// the version that was read (its `_updated`), so concurrent statements never lose each
/// other's changes or bring a deleted row back.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub values: Vec<Value>,
    /// The user-column values of the version the statement read (the old image that live
    /// queries compare against).
    pub old: Vec<Value>,
    /// `_deleted` of the version the statement read.
    pub old_deleted: bool,
    /// `_updated` of the version the statement read.
    pub read_updated: i64,
    /// `_deleted` of the new version (UPDATE keeps the row's flag, DELETE sets it).
    pub deleted: bool,
}

/// The version of a row an UPDATE or DELETE replaced, as the statement read it.
#[derive(Debug, Clone)]
pub struct OldImage {
    pub values: Vec<Value>,
    pub deleted: bool,
    pub updated_micros: i64,
}

/// One row version a commit wrote, with the version it replaced when the writer read it.
#[derive(Debug, Clone)]
pub struct ChangedRow {
    /// The replaced version (UPDATE, DELETE); `None` for an INSERT (a row that did not
    /// exist, or was soft-deleted).
    pub old: Option<OldImage>,
    pub new: Vec<Value>,
    pub deleted: bool,
}

/// Everything one commit wrote: one sequence number, one `_updated`, one partition.
#[derive(Debug, Clone)]
pub struct CommittedBatch {
    pub partition: Partition,
    pub seq: u64,
    pub updated_micros: i64,
    pub rows: Vec<ChangedRow>,
}

/// Receives every commit of a table, in commit order, while the table's write lock is held
/// (live queries). It must not block: it queues work and returns.
pub trait ChangeSink: Send + Sync + std::fmt::Debug {
    fn committed(&self, table: &Arc<TableDef>, batch: CommittedBatch);
    /// Whether anyone listens to this table now (ephemeral STREAM tables drop events
    /// nobody would receive).
    fn has_listeners(&self, table: &Arc<TableDef>) -> bool;
}

/// The RocksDB key of a STREAM table event: `{timestamp_micros}:{row_key}`, the timestamp
/// big-endian so keys sort by time and eviction deletes a key prefix range.
pub fn stream_key(timestamp_micros: i64, row_key: &RowKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + row_key.0.len());
    k.extend_from_slice(&(timestamp_micros.max(0) as u64).to_be_bytes());
    k.push(b':');
    k.extend_from_slice(&row_key.0);
    k
}

#[derive(Debug)]
pub struct TableStore {
    /// The newest definition, with every schema version in its history; replaced only by
    /// [`TableStore::alter`], under `write_lock`.
    def: RwLock<Arc<TableDef>>,
    cf: String,
    storage: Arc<Storage>,
    /// Last committed sequence; only written under `write_lock`.
    seq: AtomicU64,
    /// Serialises writers of this table: sequence numbers follow commit order, and the
    /// primary-key or version check and the write are one step. Holds the last `_updated`
    /// given out, which strictly increases so that it identifies a row version.
    write_lock: Mutex<i64>,
    /// INSERTs waiting for `write_lock`. Whoever takes the lock next commits all of them
    /// with one RocksDB write (group commit, ADR 0024): with `sync_writes` they share one
    /// fsync, as PostgreSQL's waiting transactions share one WAL flush.
    inserts: Mutex<Vec<Arc<QueuedInsert>>>,
    validator: Option<RowValidator>,
    /// One lock per partition held by an UPDATE or DELETE from its read to its write, so
    /// those statements queue instead of retrying against each other.
    dml_locks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped by every flush commit (under `write_lock`): a writer that looked up versions
    /// in the cold tier knows its answer is still current when the generation is unchanged.
    cold_generation: AtomicU64,
    /// Bumped by every flush or cleanup commit (under `write_lock`) before its batch, as
    /// `cold_generation` is after its publish: a reader whose window saw neither move read
    /// the hot tier and the manifests of one moment ([`TableStore::read_consistent`]).
    cold_begun: AtomicU64,
    /// Rows written since the last flush snapshot, and when the oldest of them was written:
    /// flush policies are checked from these, without scanning.
    pending_rows: AtomicU64,
    oldest_pending: Mutex<Option<Instant>>,
    /// Set while a flush of this table runs: one flush per table at a time. The purge of a
    /// dropped table waits for it to clear before it lists the table's files.
    pub flushing: AtomicBool,
    /// Set (under `write_lock`) once DROP TABLE committed: no flush snapshot or flush commit
    /// of this store happens afterwards, so no file is added behind the purge's back.
    dropped: AtomicBool,
    /// Held by a flush or a cleanup of this table from its first step to its last: both
    /// rewrite the table's manifests and its journal of uncommitted files, so they never
    /// run at the same time.
    maintenance: Mutex<()>,
    /// While a flush commit checks the versions of its keys outside the write lock
    /// ([`TableStore::commit_flush`]): the keys every commit wrote since the check began.
    /// `None` otherwise. Written under `write_lock`.
    late_keys: Mutex<Option<Vec<Vec<u8>>>>,
    /// Where commits are published (live queries); `None` for system tables.
    sink: Option<Arc<dyn ChangeSink>>,
    /// STREAM tables: events held now (for `max_buffer`), kept under `write_lock`.
    stream_rows: AtomicU64,
    /// Unique among the stores this process opened (cache keys outlive a DROP TABLE).
    id: u64,
    /// Moved after every flush or cleanup commit and every ALTER: hot rows of any partition
    /// may have changed. With `hot_stripes`, makes up [`TableStore::hot_version`].
    hot_epoch: AtomicU64,
    /// Moved after every commit, in the stripe its partition hashes to: a bounded stand-in
    /// for one counter per partition (two partitions sharing a stripe only cost each other
    /// cache hits).
    hot_stripes: Box<[AtomicU64]>,
}

/// How many counters [`TableStore::hot_version`] spreads partitions over.
const HOT_STRIPES: usize = 256;

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// What the hot tier held for a key when a cleanup committed ([`TableStore::commit_cleanup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotAtCommit {
    /// The tombstone the cleanup named, now deleted (its key and value bytes).
    Deleted { bytes: u64 },
    /// No hot version.
    Absent,
    /// Another (newer) version, which stays.
    Kept,
}

/// What [`TableStore::backup_snapshot`] read under the table's write lock.
#[derive(Debug)]
pub struct BackupPoint<C> {
    /// The newest definition, with every schema version.
    pub def: Arc<TableDef>,
    /// The last committed sequence: every row of the snapshot has at most this one.
    pub seq: u64,
    /// The last `_updated` given out.
    pub last_updated: i64,
    pub taken: C,
}

/// The outcome of [`TableStore::insert`].
#[derive(Debug)]
pub enum Inserted {
    Rows(u64),
    /// A flush committed since the cold lookup: look again with these rows.
    ColdChanged(Vec<Vec<Value>>),
}

/// What the cold tier holds for the keys of a write, looked up before the write takes the
/// table's lock: row key -> (seq, `_updated`, deleted) of the newest cold version.
#[derive(Debug, Default)]
pub struct ColdVersions {
    pub generation: u64,
    pub versions: HashMap<Vec<u8>, (u64, i64, bool)>,
}

/// A row version about to be committed: key, values, the replaced version (for the change
/// sink), `_deleted`.
type PendingRow = (Vec<u8>, Vec<Value>, Option<OldImage>, bool);

/// One INSERT queued for a group commit ([`TableStore::insert`]): what it writes, then what
/// came of it. Its thread blocks on the table's write lock and finds `outcome` set by the
/// thread that committed its group, or commits the group itself.
#[derive(Debug)]
struct QueuedInsert {
    /// The definition the rows are shaped by.
    def: Arc<TableDef>,
    partition: Partition,
    /// Taken by the thread committing the group.
    work: Mutex<Option<(Vec<PendingRow>, ColdVersions)>>,
    outcome: Mutex<Option<Result<Inserted>>>,
}

/// The same failure for every member of a group whose write failed.
fn group_error(e: &KalamError) -> KalamError {
    match e {
        KalamError::Storage(m) => KalamError::Storage(m.clone()),
        other => KalamError::internal(other.to_string()),
    }
}

/// Runs of at least this many flushed keys with no other key among them are removed with one
/// range tombstone: one entry in the commit's batch instead of one per key. A flush commit
/// of 50,000 keys held the table's write lock (and RocksDB's write queue, which all tables
/// share) for about 30 ms writing point tombstones.
const RANGE_DELETE_MIN: usize = 64;

/// The hot keys a flush commit removes ([`TableStore::commit_flush`]), planned before the
/// write lock is taken: the flushed keys whose version is still the flushed one, and where
/// other keys lie among them. A range tombstone may only cover flushed keys, so every other
/// key, seen while planning or written meanwhile, splits the runs.
struct FlushDeletes<'k> {
    /// In strictly increasing order.
    keys: Vec<&'k [u8]>,
    /// `split[i]`: no range may cover both `keys[i - 1]` and `keys[i]`.
    split: Vec<bool>,
    /// `keep[i]`: `keys[i]` was written again after the plan; it stays.
    keep: Vec<bool>,
    /// While planning: the first key of `keys` not yet met by [`Self::present`].
    next: usize,
}

impl<'k> FlushDeletes<'k> {
    /// `keys` in any order (a flush file lists them in key order already).
    fn new(mut keys: Vec<&'k [u8]>) -> Self {
        if !keys.windows(2).all(|w| w[0] < w[1]) {
            keys.sort_unstable();
            keys.dedup();
        }
        let n = keys.len();
        Self {
            keys,
            split: vec![false; n],
            keep: vec![false; n],
            next: 0,
        }
    }

    /// A key present in the column family, met in key order between the first and the last
    /// of `keys`: either the next of `keys`, or another key that splits the run it lies in.
    fn present(&mut self, key: &[u8]) {
        let n = self.keys.len();
        // A flushed key that is not met vanished; not expected, and splitting is always safe.
        while self.next < n && self.keys[self.next] < key {
            self.next += 1;
            if self.next < n {
                self.split[self.next] = true;
            }
        }
        if self.next < n && self.keys[self.next] == key {
            self.next += 1;
        } else if self.next < n {
            self.split[self.next] = true;
        }
    }

    /// A key a commit wrote after the plan began: kept if it is one of `keys`, and in any
    /// case never covered by a range.
    fn written_meanwhile(&mut self, key: &[u8]) {
        let n = self.keys.len();
        match self.keys.binary_search(&key) {
            Ok(i) => {
                self.keep[i] = true;
                self.split[i] = true;
                if i + 1 < n {
                    self.split[i + 1] = true;
                }
            }
            Err(i) if i > 0 && i < n => self.split[i] = true,
            Err(_) => {}
        }
    }

    /// How many keys the commit removes.
    fn removed(&self) -> usize {
        self.keep.iter().filter(|k| !**k).count()
    }

    /// The commit's tombstones: single keys, and ranges `[first, last + 0x00)` of runs of at
    /// least [`RANGE_DELETE_MIN`] keys (the end is the smallest key after `last`).
    #[allow(clippy::type_complexity)]
    fn batch(&self) -> (Vec<&'k [u8]>, Vec<(Vec<u8>, Vec<u8>)>) {
        let mut points = Vec::new();
        let mut ranges = Vec::new();
        let mut flush_run = |run: &[&'k [u8]]| {
            if run.len() >= RANGE_DELETE_MIN {
                let mut end = run[run.len() - 1].to_vec();
                end.push(0);
                ranges.push((run[0].to_vec(), end));
            } else {
                points.extend_from_slice(run);
            }
        };
        let mut start = 0;
        for i in 0..=self.keys.len() {
            let boundary = i == self.keys.len() || self.keep[i] || self.split[i];
            if boundary {
                flush_run(&self.keys[start..i]);
                start = if i < self.keys.len() && self.keep[i] {
                    i + 1
                } else {
                    i
                };
            }
        }
        (points, ranges)
    }
}

/// The log of keys written during a flush commit's plan ([`TableStore::commit_flush`]);
/// switched off when dropped, so a plan that fails or panics does not leave every later
/// commit copying its keys into a log nobody reads.
struct LateKeysLog<'a>(&'a Mutex<Option<Vec<Vec<u8>>>>);

impl LateKeysLog<'_> {
    /// Switches the log off and returns what it holds (call under the write lock).
    fn take(&self) -> Vec<Vec<u8>> {
        self.0.lock().take().unwrap_or_default()
    }
}

impl Drop for LateKeysLog<'_> {
    fn drop(&mut self) {
        self.0.lock().take();
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl TableStore {
    pub fn open(
        storage: Arc<Storage>,
        def: Arc<TableDef>,
        validator: Option<RowValidator>,
        sink: Option<Arc<dyn ChangeSink>>,
    ) -> Result<Self> {
        let cf = def.cf_name();
        storage.create_cf(&cf)?;
        let (seq, last_updated) = storage.last_seq(&cf)?;
        let stream_rows = if def.kind == TableKind::Stream {
            storage.count_partition(&cf, &Partition::Shared)?
        } else {
            0
        };
        // STREAM events are never flushed: nothing is pending for the flush policies.
        let pending = if def.kind == TableKind::Stream {
            0
        } else {
            storage.estimate_keys(&cf)
        };
        Ok(Self {
            def: RwLock::new(def),
            seq: AtomicU64::new(seq),
            write_lock: Mutex::new(last_updated),
            inserts: Mutex::new(Vec::new()),
            dml_locks: Mutex::new(HashMap::new()),
            validator,
            cold_generation: AtomicU64::new(0),
            cold_begun: AtomicU64::new(0),
            pending_rows: AtomicU64::new(pending),
            oldest_pending: Mutex::new((pending > 0).then(Instant::now)),
            flushing: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            late_keys: Mutex::new(None),
            sink,
            stream_rows: AtomicU64::new(stream_rows),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            hot_epoch: AtomicU64::new(0),
            hot_stripes: (0..HOT_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            cf,
            storage,
        })
    }

    /// This open store's identity (see `id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A number that has moved whenever hot rows of `partition` changed since it was last
    /// read: every change moves it after its write, so rows read after reading the version
    /// are at least as new as that version (docs/adr/0017-hot-partition-cache.md).
    pub fn hot_version(&self, partition: &Partition) -> u64 {
        // Both counters only grow, so their sum moves whenever either does.
        self.hot_epoch.load(Ordering::SeqCst)
            + self.hot_stripes[hot_stripe(partition)].load(Ordering::SeqCst)
    }

    pub fn cold_generation(&self) -> u64 {
        self.cold_generation.load(Ordering::Acquire)
    }

    /// Runs `read` (a read of hot rows and of published manifests) until no flush or cleanup
    /// commit overlapped it. A commit deletes hot rows and publishes their file in two steps;
    /// a reader between them would see the rows in neither tier. Commits are short, so a
    /// retry almost always succeeds. The counters are the table's, so while a flush of many
    /// partitions commits every few milliseconds a read may overlap several commits in a row;
    /// after 16 attempts the read runs under the write lock, which every commit holds: it
    /// waits for the current holder (a commit, a group commit of INSERTs, an ALTER) and holds
    /// the table's writers back for its own duration. (It used to wait for the flush's
    /// maintenance lock after 4 attempts: about one read in a hundred during a flush of a
    /// thousand partitions waited out the whole flush, over a second.) `read` must not take
    /// the write lock.
    pub fn read_consistent<T, E>(
        &self,
        mut read: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let done = self.cold_generation.load(Ordering::SeqCst);
            let out = read()?;
            if self.cold_begun.load(Ordering::SeqCst) == done {
                return Ok(out);
            }
        }
        let _lock = self.write_lock.lock();
        read()
    }

    /// Rows waiting for a flush, and since when.
    pub fn pending(&self) -> (u64, Option<Instant>) {
        (
            self.pending_rows.load(Ordering::Acquire),
            *self.oldest_pending.lock(),
        )
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Marks the store of a dropped table (after DROP TABLE's commit point): a flush that
    /// has not taken its snapshot yet, or has not committed a file yet, stops with
    /// `TABLE_NOT_FOUND`. Waits for a commit in progress (the write lock).
    pub fn mark_dropped(&self) {
        let _lock = self.write_lock.lock();
        self.dropped.store(true, Ordering::SeqCst);
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Whether a flush of this store runs now.
    pub fn is_flushing(&self) -> bool {
        self.flushing.load(Ordering::SeqCst)
    }

    fn refuse_if_dropped(&self) -> Result<()> {
        if self.is_dropped() {
            return Err(KalamError::TableNotFound(self.def().id().to_string()));
        }
        Ok(())
    }

    /// Takes a flush snapshot: returns its sequence; `f` gets that sequence, the definition
    /// current at the snapshot, and every row version of the snapshot in key order, in that
    /// definition's schema version (no row of the snapshot is newer), read in place. Rows
    /// written after the snapshot count as pending for the next flush.
    pub fn snapshot_scan(
        &self,
        mut f: impl FnMut(u64, &Arc<TableDef>, &[u8], &StoredRowRef<'_>) -> Result<bool>,
    ) -> Result<u64> {
        let guard = self.write_lock.lock();
        self.refuse_if_dropped()?;
        let seq = self.last_seq();
        let def = self.def();
        self.pending_rows.store(0, Ordering::Release);
        *self.oldest_pending.lock() = None;
        let mut shaper = Shaper::new(&def, &def);
        self.storage.scan_snapshot(
            &self.cf,
            move || drop(guard),
            |k, bytes| {
                in_version(&mut shaper, def.schema_version, bytes, |row| {
                    f(seq, &def, k, row)
                })
            },
        )?;
        Ok(seq)
    }

    /// A backup's view of the table at one point in time (docs/adr/0015-backup-restore.md):
    /// under the write lock, so that no commit, flush commit or ALTER lands in between, it
    /// takes the definition, the last sequence and `_updated`, a RocksDB snapshot and
    /// whatever `taken` reads (the cold-tier manifests); the lock is released before `f`
    /// reads the snapshot's raw rows in key order. Unlike a flush snapshot it leaves the
    /// pending counters alone.
    pub fn backup_snapshot<C, T>(
        &self,
        taken: impl FnOnce() -> C,
        f: impl FnOnce(BackupPoint<C>, &mut dyn Iterator<Item = Result<RawRow>>) -> Result<T>,
    ) -> Result<T> {
        let guard = self.write_lock.lock();
        let last_updated = *guard;
        let seq = self.last_seq();
        let def = self.def();
        self.storage.with_snapshot(
            &self.cf,
            move || {
                let taken = taken();
                drop(guard);
                BackupPoint {
                    def,
                    seq,
                    last_updated,
                    taken,
                }
            },
            f,
        )
    }

    /// Gives back the pending count of a snapshot whose flush failed, so policies fire again.
    pub fn restore_pending(&self, rows: u64) {
        if rows > 0 {
            self.pending_rows.fetch_add(rows, Ordering::AcqRel);
            self.oldest_pending.lock().get_or_insert_with(Instant::now);
        }
    }

    /// Commits flushed rows of one partition: deletes each hot key whose current version is
    /// at most `snapshot_seq` (a newer write stays) and writes `meta_ops` (the manifest) in
    /// the same batch, then calls `publish` and bumps the cold generation, all under the
    /// write lock. Returns how many hot keys were removed.
    ///
    /// The current versions are read before the write lock is taken: a file holds up to a
    /// million keys, and reading their versions under the lock held every writer of the table
    /// for tens of milliseconds. Commits that land while they are read log their keys
    /// (`late_keys`), and those keys are kept. Callers hold the maintenance lock, so one
    /// such check runs per table at a time.
    pub fn commit_flush(
        &self,
        keys: &[Vec<u8>],
        snapshot_seq: u64,
        meta_ops: &[(Vec<u8>, Option<Vec<u8>>)],
        publish: impl FnOnce(),
    ) -> Result<usize> {
        debug_assert!(
            self.maintenance.is_locked(),
            "flush commit without the maintenance lock"
        );
        let log = {
            // From here every commit logs its keys; earlier ones are visible to the reads.
            let _lock = self.write_lock.lock();
            let mut late = self.late_keys.lock();
            if late.is_some() {
                // One log per table: a second planner would take the first one's keys away.
                return Err(KalamError::internal(
                    "two flush commits of one table at once",
                ));
            }
            *late = Some(Vec::new());
            LateKeysLog(&self.late_keys)
        };
        let planned = self.plan_flush_deletes(keys, snapshot_seq);
        // Tests write here, between the plan and the lock.
        fail::fail_point!("flush-commit-checked");
        let _lock = self.write_lock.lock();
        let locked = Instant::now();
        let late = log.take();
        let mut plan = planned?;
        self.refuse_if_dropped()?;
        for key in &late {
            plan.written_meanwhile(key);
        }
        let (points, ranges) = plan.batch();
        let removed = plan.removed();
        self.commit_cold(&points, &ranges, meta_ops, publish)?;
        tracing::debug!(
            keys = keys.len(),
            removed,
            ranges = ranges.len(),
            written_meanwhile = late.len(),
            locked_ms = locked.elapsed().as_secs_f64() * 1000.0,
            "flush commit"
        );
        Ok(removed)
    }

    /// Which of the flushed `keys` still hold a version at most `seq`, and which other keys
    /// lie between them (see [`FlushDeletes`]).
    fn plan_flush_deletes<'k>(&self, keys: &'k [Vec<u8>], seq: u64) -> Result<FlushDeletes<'k>> {
        let mut flushed = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(4096) {
            let current = self.storage.multi_get(&self.cf, chunk)?;
            for (key, row) in chunk.iter().zip(current) {
                if row.is_some_and(|r| r.seq <= seq) {
                    flushed.push(key.as_slice());
                }
            }
        }
        let mut plan = FlushDeletes::new(flushed);
        let n = plan.keys.len();
        if n >= RANGE_DELETE_MIN {
            let (first, last) = (plan.keys[0], plan.keys[n - 1]);
            self.storage
                .keys_between(&self.cf, first, last, |key| plan.present(key))?;
        }
        Ok(plan)
    }

    /// The common end of a flush or cleanup commit (under the write lock): deletes `deletes`
    /// and writes `meta_ops` in one batch, publishes on success, and moves both cold counters
    /// ([`TableStore::read_consistent`]).
    fn commit_cold<K: AsRef<[u8]>>(
        &self,
        deletes: &[K],
        ranges: &[(Vec<u8>, Vec<u8>)],
        meta_ops: &[(Vec<u8>, Option<Vec<u8>>)],
        publish: impl FnOnce(),
    ) -> Result<()> {
        self.cold_begun.fetch_add(1, Ordering::SeqCst);
        let written = self
            .storage
            .write_flush_commit(&self.cf, deletes, ranges, meta_ops);
        if written.is_ok() {
            publish();
        }
        // Before the cold generation: a reader that saw this commit complete sees the move.
        self.hot_epoch.fetch_add(1, Ordering::SeqCst);
        // Even after a failed batch, so the two counters agree again.
        self.cold_generation.fetch_add(1, Ordering::SeqCst);
        written
    }

    /// The lock a flush or a cleanup of this table holds for its whole run.
    pub fn maintenance_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.maintenance.lock()
    }

    /// Commits the cleanup of one partition (docs/adr/0014-deleted-row-retention.md), under
    /// the write lock: every key of `keys` whose hot version still is the tombstone named
    /// with it (same `_seq`, deleted) is deleted, in the same RocksDB batch as `meta_ops`
    /// (the partition's new manifest and journal changes); then `publish` runs and the cold
    /// generation moves on, so writers that looked at the cold tier look again. Returns, per
    /// key in order, what the hot tier held.
    pub fn commit_cleanup(
        &self,
        keys: &[(Vec<u8>, Option<u64>)],
        meta_ops: &[(Vec<u8>, Option<Vec<u8>>)],
        publish: impl FnOnce(),
    ) -> Result<Vec<HotAtCommit>> {
        let _lock = self.write_lock.lock();
        let mut deletes = Vec::new();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(4096) {
            let full: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let current = self.storage.multi_get(&self.cf, &full)?;
            for ((key, tombstone), row) in chunk.iter().zip(current) {
                out.push(match row {
                    None => HotAtCommit::Absent,
                    Some(r) if r.deleted && Some(r.seq) == *tombstone => {
                        let bytes = (key.len() + r.encode()?.len()) as u64;
                        deletes.push(key.clone());
                        HotAtCommit::Deleted { bytes }
                    }
                    Some(_) => HotAtCommit::Kept,
                });
            }
        }
        self.commit_cold(&deletes, &[], meta_ops, publish)?;
        // The removed tombstones no longer wait for a flush.
        let removed = deletes.len() as u64;
        let _ = self
            .pending_rows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(removed))
            });
        Ok(out)
    }

    /// The lock an UPDATE or DELETE of `partition` holds across its read and its write.
    pub fn dml_lock(&self, partition: &Partition) -> Arc<tokio::sync::Mutex<()>> {
        self.dml_locks
            .lock()
            .entry(partition.prefix())
            .or_default()
            .clone()
    }

    /// The newest definition (a reader keeps the one it planned with).
    pub fn def(&self) -> Arc<TableDef> {
        self.def.read().clone()
    }

    /// Runs an ALTER TABLE of this table under the write lock: `change` gets the current
    /// definition and a function that makes the next one current (to call right after the
    /// catalog commit). Concurrent ALTERs of the table queue here, and a concurrent writer
    /// commits either wholly before (rows in the old version) or wholly after (rows in the
    /// new one). `change` must not write to this table.
    pub fn alter<T>(
        &self,
        change: impl FnOnce(&Arc<TableDef>, &dyn Fn(Arc<TableDef>)) -> Result<T>,
    ) -> Result<T> {
        let _lock = self.write_lock.lock();
        let current = self.def();
        let make_current = |next: Arc<TableDef>| {
            *self.def.write() = next;
            self.hot_epoch.fetch_add(1, Ordering::SeqCst);
        };
        change(&current, &make_current)
    }

    pub fn cf_name(&self) -> &str {
        &self.cf
    }

    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn key_of(def: &TableDef, values: &[Value]) -> Result<RowKey> {
        let v = values
            .get(def.primary_key_index())
            .ok_or_else(|| KalamError::internal("row without primary key position"))?;
        RowKey::from_value(v)
    }

    fn check_values(&self, def: &TableDef, values: &[Value]) -> Result<()> {
        if values.len() != def.columns.len() {
            return Err(KalamError::internal(
                "row width differs from the table schema",
            ));
        }
        for (col, v) in def.columns.iter().zip(values) {
            if !col.nullable && matches!(v, Value::Null) {
                return Err(KalamError::InvalidValue(format!(
                    "column '{}' of {} is NOT NULL",
                    col.name,
                    def.id()
                )));
            }
        }
        if let Some(validate) = self.validator {
            validate(def, values)?;
        }
        Ok(())
    }

    /// Brings rows shaped by `def` (an INSERT planned before an ALTER) into `current`, the
    /// definition under the write lock. The key column never changes, so keys stay valid; a
    /// NOT NULL column added since has a non-NULL `initial_default`, so checks stay valid.
    fn reshape_pending(def: &TableDef, current: &TableDef, rows: &mut [PendingRow]) {
        if def.schema_version == current.schema_version {
            return;
        }
        let plan = Reshape::new(&def.columns, &current.columns);
        for (_, values, _, _) in rows.iter_mut() {
            *values = plan.apply(std::mem::take(values));
        }
    }

    /// Inserts rows (user-column values in the order of `def`, the definition they were
    /// built with) into one partition as one atomic batch with one new sequence number. A
    /// key holding a live row, or repeated within the batch, fails the whole batch. Returns
    /// the number of rows written.
    ///
    /// `cold` holds what the cold tier has for these keys; when a flush committed since it
    /// was looked up, nothing is written and `Inserted::ColdChanged` gives the rows back (in
    /// the order of `def`) to look again.
    ///
    /// INSERTs that wait for the write lock at the same time are committed together: each
    /// keeps its own checks, sequence number and outcome, and their rows go to RocksDB in
    /// one write (ADR 0024). This blocks the calling thread for the write and, with
    /// `sync_writes`, its fsync: callers on an async runtime run it where blocking is
    /// allowed.
    pub fn insert(
        &self,
        def: &Arc<TableDef>,
        partition: &Partition,
        rows: Vec<Vec<Value>>,
        cold: ColdVersions,
    ) -> Result<Inserted> {
        if def.kind == TableKind::Stream {
            return self.insert_events(def, rows).map(Inserted::Rows);
        }
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            self.check_values(def, &values)?;
            keyed.push((
                partition.key(&Self::key_of(def, &values)?),
                values,
                None,
                false,
            ));
        }
        let queued = Arc::new(QueuedInsert {
            def: def.clone(),
            partition: partition.clone(),
            work: Mutex::new(Some((keyed, cold))),
            outcome: Mutex::new(None),
        });
        self.inserts.lock().push(queued.clone());
        let mut last_updated = self.write_lock.lock();
        // Committed by the thread that held the lock before.
        if let Some(outcome) = queued.outcome.lock().take() {
            return outcome;
        }
        // Not done, so still queued (the queue is emptied only under the lock, and every
        // member of a group is done before the lock is released): this group includes it.
        let group = std::mem::take(&mut *self.inserts.lock());
        self.commit_inserts(&mut last_updated, &group);
        let outcome = queued.outcome.lock().take();
        outcome.unwrap_or_else(|| {
            Err(KalamError::internal(
                "an INSERT was left out of its group commit",
            ))
        })
    }

    /// Checks each queued INSERT as if committed alone, one after the other (a key an
    /// earlier one of the group writes is taken), then commits those that passed with one
    /// write. Every member is done when this returns.
    fn commit_inserts(&self, last_updated: &mut i64, group: &[Arc<QueuedInsert>]) {
        let current = self.def();
        let cold_generation = self.cold_generation();
        let mut passed: Vec<(&QueuedInsert, Vec<PendingRow>)> = Vec::with_capacity(group.len());
        // Keys written by earlier members; only a group of several needs it.
        let mut taken: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        for queued in group {
            let Some((mut keyed, cold)) = queued.work.lock().take() else {
                continue;
            };
            if cold_generation != cold.generation {
                *queued.outcome.lock() = Some(Ok(Inserted::ColdChanged(
                    keyed.into_iter().map(|(_, v, _, _)| v).collect(),
                )));
                continue;
            }
            Self::reshape_pending(&queued.def, &current, &mut keyed);
            if let Err(e) = self.check_new_keys(&current, &queued.partition, &keyed, &cold, &taken)
            {
                *queued.outcome.lock() = Some(Err(e));
                continue;
            }
            if group.len() > 1 {
                taken.extend(keyed.iter().map(|(k, _, _, _)| k.clone()));
            }
            passed.push((queued, keyed));
        }
        if passed.is_empty() {
            return;
        }
        let (members, commits): (Vec<&QueuedInsert>, Vec<_>) = passed
            .into_iter()
            .map(|(queued, keyed)| (queued, (queued.partition.clone(), keyed)))
            .unzip();
        match self.commit_many(&current, last_updated, None, commits) {
            Ok(counts) => {
                self.storage.insert_writes.inc();
                self.storage.insert_commits.inc_by(members.len() as u64);
                for (queued, n) in members.into_iter().zip(counts) {
                    *queued.outcome.lock() = Some(Ok(Inserted::Rows(n)));
                }
            }
            Err(e) => {
                for queued in members {
                    *queued.outcome.lock() = Some(Err(group_error(&e)));
                }
            }
        }
    }

    /// Whether a commit holds the write lock now: a hint that an INSERT would wait.
    pub fn is_committing(&self) -> bool {
        self.write_lock.is_locked()
    }

    /// STREAM tables: events keyed `{timestamp}:{row_key}`, one timestamp per batch; with
    /// `ephemeral` and nobody listening they are dropped (and still counted as accepted);
    /// past `max_buffer` the oldest are evicted.
    /// STREAM tables refuse ALTER, so `def` is the current definition.
    fn insert_events(&self, def: &TableDef, rows: Vec<Vec<Value>>) -> Result<u64> {
        let count = rows.len() as u64;
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            self.check_values(def, &values)?;
            let key = Self::key_of(def, &values)?;
            keyed.push((key, values));
        }
        let options = def.stream.clone().unwrap_or_default();
        let mut last_updated = self.write_lock.lock();
        let current = self.def();
        if options.ephemeral
            && !self
                .sink
                .as_ref()
                .is_some_and(|s| s.has_listeners(&current))
        {
            return Ok(count);
        }
        let timestamp = now_micros().max(last_updated.saturating_add(1));
        let mut seen = std::collections::HashSet::with_capacity(keyed.len());
        let mut rows = Vec::with_capacity(keyed.len());
        for (key, values) in keyed {
            if !seen.insert(key.0.clone()) {
                return Err(KalamError::PrimaryKeyViolation {
                    table: def.id().to_string(),
                    key: format!("{:?}", values.get(def.primary_key_index())),
                });
            }
            rows.push((stream_key(timestamp, &key), values, None, false));
        }
        Self::reshape_pending(def, &current, &mut rows);
        let n = self.commit(
            &current,
            &mut last_updated,
            &Partition::Shared,
            Some(timestamp),
            rows,
        )?;
        let held = self.stream_rows.fetch_add(n, Ordering::AcqRel) + n;
        if options.max_buffer > 0 && held > options.max_buffer {
            let evicted = self
                .storage
                .delete_first(&self.cf, held - options.max_buffer)?;
            self.hot_epoch.fetch_add(1, Ordering::SeqCst);
            self.stream_rows
                .fetch_sub(evicted.min(held), Ordering::AcqRel);
        }
        Ok(count)
    }

    /// STREAM tables: deletes the events older than the retention. Returns how many.
    pub fn evict_expired(&self, now_micros: i64) -> Result<u64> {
        let def = self.def();
        let Some(options) = &def.stream else {
            return Ok(0);
        };
        // A retention longer than `i64` microseconds (a definition from before DDL refused
        // it) keeps everything instead of wrapping to a negative age.
        let retention = i64::try_from(options.retention_secs).unwrap_or(i64::MAX);
        let cutoff = now_micros.saturating_sub(retention.saturating_mul(1_000_000));
        let bound = (cutoff.max(0) as u64).to_be_bytes();
        // Under the write lock so the count stays exact; the delete touches old keys only.
        let _lock = self.write_lock.lock();
        let evicted = self.storage.delete_before(&self.cf, &bound)?;
        if evicted > 0 {
            self.hot_epoch.fetch_add(1, Ordering::SeqCst);
        }
        let held = self.stream_rows.load(Ordering::Acquire);
        self.stream_rows
            .store(held.saturating_sub(evicted), Ordering::Release);
        Ok(evicted)
    }

    /// STREAM tables: events held now.
    pub fn stream_len(&self) -> u64 {
        self.stream_rows.load(Ordering::Acquire)
    }

    /// The row keys (without partition prefix) of rows to insert (in the order of `def`),
    /// for the cold lookup.
    pub fn row_keys(def: &TableDef, rows: &[Vec<Value>]) -> Result<Vec<RowKey>> {
        rows.iter().map(|v| Self::key_of(def, v)).collect()
    }

    /// Writes new versions of rows an UPDATE or DELETE read, if each is still the version
    /// read; otherwise nothing is written and the error is `WriteConflict` (the statement
    /// re-reads and tries again).
    ///
    /// A row missing from the hot tier was read from the cold tier; that read is current
    /// when no flush committed since `read_generation`. `def` is the definition the
    /// statement read with: when an ALTER committed since, the read misses columns of the
    /// current version, so this is a `WriteConflict` too.
    pub fn apply_changes(
        &self,
        def: &TableDef,
        partition: &Partition,
        changes: Vec<RowChange>,
        read_generation: u64,
    ) -> Result<u64> {
        let mut keyed = Vec::with_capacity(changes.len());
        let mut read = Vec::with_capacity(changes.len());
        for change in changes {
            if !change.deleted {
                self.check_values(def, &change.values)?;
            }
            keyed.push((
                partition.key(&Self::key_of(def, &change.values)?),
                change.values,
                Some(OldImage {
                    values: change.old,
                    deleted: change.old_deleted,
                    updated_micros: change.read_updated,
                }),
                change.deleted,
            ));
            read.push(change.read_updated);
        }
        let mut last_updated = self.write_lock.lock();
        let current_def = self.def();
        if current_def.schema_version != def.schema_version {
            return Err(KalamError::WriteConflict(def.id().to_string()));
        }
        let keys: Vec<Vec<u8>> = keyed.iter().map(|(k, _, _, _)| k.clone()).collect();
        let cold_unchanged = self.cold_generation() == read_generation;
        for (current, read_updated) in self.storage.multi_get(&self.cf, &keys)?.iter().zip(&read) {
            let current_ok = match current {
                Some(r) => r.updated_micros == *read_updated,
                None => cold_unchanged,
            };
            if !current_ok {
                return Err(KalamError::WriteConflict(def.id().to_string()));
            }
        }
        self.commit(&current_def, &mut last_updated, partition, None, keyed)
    }

    /// One batch, one sequence number, one `_updated` (strictly after the previous one,
    /// or `updated` when the caller chose it under the same lock), then published to the
    /// change sink before the lock is released, so subscribers see commit order. The rows
    /// are shaped by `def`, the definition current under the lock.
    fn commit(
        &self,
        def: &Arc<TableDef>,
        last_updated: &mut i64,
        partition: &Partition,
        updated: Option<i64>,
        rows: Vec<PendingRow>,
    ) -> Result<u64> {
        let counts =
            self.commit_many(def, last_updated, updated, vec![(partition.clone(), rows)])?;
        Ok(counts.into_iter().sum())
    }

    /// Commits that follow one another, each as [`TableStore::commit`] makes one (its own
    /// sequence number and `_updated`, published in order), written to RocksDB in one
    /// batch: all or none. Returns each one's row count.
    fn commit_many(
        &self,
        def: &Arc<TableDef>,
        last_updated: &mut i64,
        updated: Option<i64>,
        commits: Vec<(Partition, Vec<PendingRow>)>,
    ) -> Result<Vec<u64>> {
        let mut seq = self.seq.load(Ordering::Acquire);
        let mut updated_micros = *last_updated;
        let mut staged = Vec::with_capacity(commits.len());
        for (partition, rows) in commits {
            if rows.is_empty() {
                staged.push((partition, 0, 0, Vec::new(), Vec::new()));
                continue;
            }
            seq += 1;
            updated_micros = match updated {
                Some(chosen) => chosen,
                None => now_micros().max(updated_micros.saturating_add(1)),
            };
            let mut olds = Vec::with_capacity(if self.sink.is_some() { rows.len() } else { 0 });
            let batch: Vec<(Vec<u8>, StoredRow)> = rows
                .into_iter()
                .map(|(key, values, old, deleted)| {
                    if self.sink.is_some() {
                        olds.push(old);
                    }
                    let row = StoredRow {
                        schema_version: def.schema_version,
                        seq,
                        updated_micros,
                        deleted,
                        values,
                    };
                    (key, row)
                })
                .collect();
            staged.push((partition, seq, updated_micros, batch, olds));
        }
        let counts = staged
            .iter()
            .map(|(_, _, _, batch, _)| batch.len() as u64)
            .collect::<Vec<_>>();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Ok(counts);
        }
        if let Some(late) = self.late_keys.lock().as_mut() {
            for (_, _, _, batch, _) in &staged {
                late.extend(batch.iter().map(|(key, _)| key.clone()));
            }
        }
        let written = self.storage.write_rows(
            &self.cf,
            staged.iter().flat_map(|(_, _, _, batch, _)| batch),
            seq,
            updated_micros,
        );
        // Even after an error: RocksDB may have applied the batch it reports as failed.
        for (partition, _, _, batch, _) in &staged {
            if !batch.is_empty() {
                self.hot_stripes[hot_stripe(partition)].fetch_add(1, Ordering::SeqCst);
            }
        }
        written?;
        self.seq.store(seq, Ordering::Release);
        *last_updated = updated_micros;
        if def.kind != TableKind::Stream {
            self.pending_rows.fetch_add(total, Ordering::AcqRel);
            self.oldest_pending.lock().get_or_insert_with(Instant::now);
        }
        if let Some(sink) = &self.sink {
            for (partition, seq, updated_micros, batch, olds) in staged {
                if batch.is_empty() {
                    continue;
                }
                let rows = batch
                    .into_iter()
                    .zip(olds)
                    .map(|((_, row), old)| ChangedRow {
                        old,
                        new: row.values,
                        deleted: row.deleted,
                    })
                    .collect();
                sink.committed(
                    def,
                    CommittedBatch {
                        partition,
                        seq,
                        updated_micros,
                        rows,
                    },
                );
            }
        }
        Ok(counts)
    }

    /// Refuses keys that repeat within the batch, hold a live row already, or are `taken`
    /// (written by an INSERT committed before this one in the same group).
    fn check_new_keys(
        &self,
        def: &TableDef,
        partition: &Partition,
        keyed: &[PendingRow],
        cold: &ColdVersions,
        taken: &std::collections::HashSet<Vec<u8>>,
    ) -> Result<()> {
        let pk = def.primary_key_index();
        let violation = |values: &Vec<Value>| KalamError::PrimaryKeyViolation {
            table: def.id().to_string(),
            key: match values.get(pk) {
                Some(Value::Int(i)) => i.to_string(),
                Some(Value::Text(s)) => format!("'{}'", crate::error::clip(s)),
                other => format!("{other:?}"),
            },
        };
        let mut seen = std::collections::HashSet::with_capacity(keyed.len());
        for (key, values, _, _) in keyed {
            if !seen.insert(key.as_slice()) || taken.contains(key) {
                return Err(violation(values));
            }
        }
        let keys: Vec<Vec<u8>> = keyed.iter().map(|(k, _, _, _)| k.clone()).collect();
        let prefix_len = partition.prefix().len();
        for (existing, (key, values, _, _)) in
            self.storage.multi_get(&self.cf, &keys)?.iter().zip(keyed)
        {
            let live = match existing {
                Some(row) => !row.deleted,
                // Not hot: live if its newest cold version is.
                None => cold
                    .versions
                    .get(&key[prefix_len..])
                    .is_some_and(|(_, _, deleted)| !deleted),
            };
            if live {
                return Err(violation(values));
            }
        }
        Ok(())
    }

    /// Every current row version of a partition in key order, soft-deleted ones only when
    /// asked, in the schema version of `target` (the definition the reader planned with):
    /// `f` gets each row read in place, with its key within the partition, until it returns
    /// false. Rows of `target`'s version are not copied; others are decoded and reshaped.
    pub fn scan_in_place(
        &self,
        target: &TableDef,
        partition: &Partition,
        include_deleted: bool,
        mut f: impl FnMut(&[u8], &StoredRowRef<'_>) -> Result<bool>,
    ) -> Result<()> {
        let history = self.def();
        let mut shaper = Shaper::new(&history, target);
        let prefix = partition.prefix().len();
        self.storage
            .scan_partition_raw(&self.cf, partition, |key, bytes| {
                let row_key = key.get(prefix..).unwrap_or_default();
                in_version(&mut shaper, target.schema_version, bytes, |row| {
                    if !include_deleted && row.deleted {
                        return Ok(true);
                    }
                    f(row_key, row)
                })
            })
    }

    /// The current version of one key, soft-deleted or not, in the schema version of
    /// `target`.
    pub fn get(
        &self,
        target: &TableDef,
        partition: &Partition,
        key: &RowKey,
    ) -> Result<Option<StoredRow>> {
        let Some(mut row) = self.storage.get(&self.cf, &partition.key(key))? else {
            return Ok(None);
        };
        let history = self.def();
        Shaper::new(&history, target).shape(&mut row)?;
        Ok(Some(row))
    }
}

/// The stripe of `partition`'s hot version counter.
fn hot_stripe(partition: &Partition) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    partition.hash(&mut h);
    (h.finish() % HOT_STRIPES as u64) as usize
}

/// Hands `f` the encoded row `bytes` in schema version `version`: read in place when it was
/// written in that version, otherwise decoded and reshaped by `shaper` (ADR 0011).
fn in_version<R>(
    shaper: &mut Shaper<'_>,
    version: u32,
    bytes: &[u8],
    f: impl FnOnce(&StoredRowRef<'_>) -> Result<R>,
) -> Result<R> {
    let row = StoredRowRef::decode(bytes)?;
    if row.schema_version == version {
        return f(&row);
    }
    let mut owned = StoredRow::decode(bytes)?;
    shaper.shape(&mut owned)?;
    f(&owned.borrowed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn key(id: i64) -> Vec<u8> {
        Partition::Shared.key(&RowKey::from_value(&Value::Int(id)).unwrap())
    }

    fn open_store(dir: &std::path::Path) -> (Arc<Storage>, Arc<TableStore>) {
        open_store_with(dir, false, None)
    }

    fn open_store_with(
        dir: &std::path::Path,
        sync_writes: bool,
        sink: Option<Arc<dyn ChangeSink>>,
    ) -> (Arc<Storage>, Arc<TableStore>) {
        let options = StorageOptions {
            sync_writes,
            write_buffer_bytes: 8 << 20,
            max_open_files: 64,
        };
        let storage = Arc::new(Storage::open(dir, &options).unwrap());
        let store =
            TableStore::open(storage.clone(), Arc::new(TableDef::for_tests()), None, sink).unwrap();
        (storage, Arc::new(store))
    }

    /// A read that keeps overlapping commits (simulated by moving the counter a commit
    /// moves first) while a flush holds the maintenance lock finishes without waiting for
    /// the flush, and its last attempt runs with commits held off.
    #[test]
    fn a_read_overlapping_commits_does_not_wait_for_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (_storage, store) = open_store(dir.path());
        let flush = store.maintenance_lock();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let reader = store.clone();
            scope.spawn(move || {
                let mut attempts = 0;
                let out = reader.read_consistent(|| {
                    attempts += 1;
                    let commits_held = reader.write_lock.try_lock().is_none();
                    // Each attempt overlaps a commit, except under the write lock.
                    if !commits_held {
                        reader.cold_begun.fetch_add(1, Ordering::SeqCst);
                        reader.cold_generation.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, ()>(commits_held)
                });
                done.send((out, attempts)).unwrap();
            });
            let answer = finished.recv_timeout(std::time::Duration::from_secs(10));
            drop(flush);
            assert_eq!(answer, Ok((Ok(true), 17)));
        });
    }

    fn insert(store: &TableStore, ids: impl IntoIterator<Item = i64>) {
        let def = store.def();
        let rows = ids
            .into_iter()
            .map(|id| vec![Value::Int(id), Value::Text(format!("v1 of {id}"))])
            .collect();
        let inserted = store
            .insert(&def, &Partition::Shared, rows, ColdVersions::default())
            .unwrap();
        assert!(matches!(inserted, Inserted::Rows(_)));
    }

    /// Writes a new version of row `id` (an UPDATE of `body`).
    fn update(store: &TableStore, storage: &Storage, id: i64) {
        let read = storage.get(store.cf_name(), &key(id)).unwrap().unwrap();
        let change = RowChange {
            values: vec![Value::Int(id), Value::Text(format!("v2 of {id}"))],
            old: read.values.clone(),
            old_deleted: false,
            read_updated: read.updated_micros,
            deleted: false,
        };
        let def = store.def();
        store
            .apply_changes(
                &def,
                &Partition::Shared,
                vec![change],
                store.cold_generation(),
            )
            .unwrap();
    }

    /// Rows written after the flush snapshot, before the commit planned its deletes or
    /// between that plan and the write lock, all survive the commit, whether they are new
    /// keys among the flushed ones or new versions of flushed keys; every other flushed key
    /// is gone (with range tombstones for the long runs).
    #[test]
    fn a_flush_commit_removes_exactly_the_flushed_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = open_store(dir.path());
        // Flushed: the odd ids 1..=399 (200 keys), in key order as a flush file has them.
        insert(&store, (1..400).step_by(2));
        let snapshot = store.last_seq();
        let mut keys: Vec<Vec<u8>> = (1..400).step_by(2).map(key).collect();
        keys.sort();
        // After the snapshot, before the commit: a new key among the flushed ones and a new
        // version of a flushed one.
        insert(&store, [100]);
        update(&store, &storage, 7);

        // Between the plan and the lock: another of each. The failpoint registry is
        // global, so the callback acts only on this test's thread, once.
        let writer = store.clone();
        let writer_storage = storage.clone();
        let test_thread = std::thread::current().id();
        let ran = Arc::new(AtomicBool::new(false));
        let ran_in_callback = ran.clone();
        fail::cfg_callback("flush-commit-checked", move || {
            if std::thread::current().id() == test_thread
                && !ran_in_callback.swap(true, Ordering::SeqCst)
            {
                insert(&writer, [250]);
                update(&writer, &writer_storage, 151);
            }
        })
        .unwrap();
        let removed = {
            let _maintenance = store.maintenance_lock();
            store.commit_flush(&keys, snapshot, &[], || {})
        };
        fail::remove("flush-commit-checked");
        assert!(ran.load(Ordering::SeqCst), "the failpoint never ran");
        assert_eq!(removed.unwrap(), 198);

        let cf = store.cf_name();
        let mut left = Vec::new();
        storage
            .scan_partition(cf, &Partition::Shared, |_, row| {
                left.push((row.values[0].clone(), row.values[1].clone()));
                Ok(true)
            })
            .unwrap();
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            left,
            vec![
                (Value::Int(7), text("v2 of 7")),
                (Value::Int(100), text("v1 of 100")),
                (Value::Int(151), text("v2 of 151")),
                (Value::Int(250), text("v1 of 250")),
            ]
        );

        // A commit that panics while planning leaves no log behind (commits stop copying
        // their keys), and the next flush commit of the table can run. The failpoint is
        // configured only while this thread passes it.
        let keys = vec![key(100)];
        let snapshot = store.last_seq();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _maintenance = store.maintenance_lock();
            fail::cfg("flush-commit-checked", "panic").unwrap();
            let _ = store.commit_flush(&keys, snapshot, &[], || {});
        }));
        fail::remove("flush-commit-checked");
        assert!(panicked.is_err());
        assert!(store.late_keys.lock().is_none());
        let _maintenance = store.maintenance_lock();
        assert_eq!(store.commit_flush(&keys, snapshot, &[], || {}).unwrap(), 1);
    }

    /// The plan's tombstones: long runs become ranges that end right after their last key,
    /// short runs single keys, and no range spans a key that stays or a key in between.
    #[test]
    fn flush_deletes_cover_only_flushed_keys() {
        let owned: Vec<Vec<u8>> = (0u16..300)
            .map(|i| (i * 2).to_be_bytes().to_vec())
            .collect();
        let mut plan = FlushDeletes::new(owned.iter().map(Vec::as_slice).collect());
        for k in &owned {
            plan.present(k);
            // A key between flushed keys 99 and 100, seen while planning.
            if k.as_slice() == 198u16.to_be_bytes() {
                plan.present(&199u16.to_be_bytes());
            }
        }
        plan.written_meanwhile(&(150u16 * 2).to_be_bytes()); // flushed key 150, rewritten
        plan.written_meanwhile(&401u16.to_be_bytes()); // new, between flushed keys 200 and 201
        plan.written_meanwhile(&9999u16.to_be_bytes()); // new, after the last one
        let (points, ranges) = plan.batch();
        assert_eq!(plan.removed(), 299);
        let end = |i: u16| {
            let mut e = (i * 2).to_be_bytes().to_vec();
            e.push(0);
            e
        };
        let start = |i: u16| (i * 2).to_be_bytes().to_vec();
        assert_eq!(ranges, vec![(start(0), end(99)), (start(201), end(299))]);
        // 100..=149 and 151..=200: runs of 50, below the range minimum.
        let expected: Vec<Vec<u8>> = (100..150).chain(151..=200).map(start).collect();
        assert_eq!(
            points,
            expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );

        // Keys out of order or repeated are put in order once; a rewritten one stays.
        let shuffled = [b"c".as_slice(), b"a", b"b", b"a"];
        let mut plan = FlushDeletes::new(shuffled.to_vec());
        plan.written_meanwhile(b"a");
        assert_eq!(plan.batch(), (vec![b"b".as_slice(), b"c"], vec![]));
        assert_eq!(plan.removed(), 2);
    }

    /// Records the commits published to it, in the order they arrive.
    #[derive(Debug, Default)]
    struct RecordingSink(Mutex<Vec<(u64, i64, usize)>>);

    impl ChangeSink for RecordingSink {
        fn committed(&self, _: &Arc<TableDef>, batch: CommittedBatch) {
            self.0
                .lock()
                .push((batch.seq, batch.updated_micros, batch.rows.len()));
        }
        fn has_listeners(&self, _: &Arc<TableDef>) -> bool {
            true
        }
    }

    /// Starts one thread per INSERT (each a list of ids) while the test holds the table's
    /// write lock, waits until all of them are queued behind it, then lets them go: the
    /// INSERTs commit as one group. Returns each one's outcome, in the order given.
    fn insert_as_one_group(
        store: &Arc<TableStore>,
        inserts: Vec<Vec<i64>>,
    ) -> Vec<Result<Inserted>> {
        let lock = store.write_lock.lock();
        let threads: Vec<_> = inserts
            .into_iter()
            .map(|ids| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let def = store.def();
                    let rows = ids
                        .into_iter()
                        .map(|id| vec![Value::Int(id), Value::Text(format!("v1 of {id}"))])
                        .collect();
                    store.insert(&def, &Partition::Shared, rows, ColdVersions::default())
                })
            })
            .collect();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while store.inserts.lock().len() < threads.len() {
            assert!(Instant::now() < deadline, "the INSERTs never queued up");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(lock);
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn open_syncing_store(
        dir: &std::path::Path,
        sink: Arc<RecordingSink>,
    ) -> (Arc<Storage>, Arc<TableStore>) {
        open_store_with(dir, true, Some(sink))
    }

    /// INSERTs that wait for the write lock together are one RocksDB write (one fsync with
    /// `sync_writes`), and still each its own commit: its own sequence number and
    /// `_updated`, published in that order, every row readable, and the sequence survives
    /// a reopen.
    #[test]
    fn inserts_waiting_together_share_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let (storage, store) = open_syncing_store(dir.path(), sink.clone());
        insert(&store, [1000]);
        assert_eq!(storage.insert_writes.get(), 1);

        let outcomes = insert_as_one_group(&store, (1..=8).map(|id| vec![id, id + 100]).collect());
        for outcome in outcomes {
            assert!(matches!(outcome, Ok(Inserted::Rows(2))), "{outcome:?}");
        }
        assert_eq!(storage.insert_writes.get(), 2, "eight INSERTs, one write");
        assert_eq!(storage.insert_commits.get(), 9);
        assert_eq!(store.last_seq(), 9);

        let published = sink.0.lock().clone();
        assert_eq!(
            published.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(),
            (1..=9).collect::<Vec<_>>()
        );
        assert!(
            published.windows(2).all(|w| w[0].1 < w[1].1),
            "_updated strictly increases"
        );
        assert!(published[1..].iter().all(|(_, _, rows)| *rows == 2));
        for id in 1..=8 {
            let a = storage.get(store.cf_name(), &key(id)).unwrap().unwrap();
            let b = storage
                .get(store.cf_name(), &key(id + 100))
                .unwrap()
                .unwrap();
            assert_eq!(a.values[1], Value::Text(format!("v1 of {id}")));
            assert_eq!(
                (a.seq, a.updated_micros),
                (b.seq, b.updated_micros),
                "one commit"
            );
            assert!(published.contains(&(a.seq, a.updated_micros, 2)));
        }
        drop(store);
        drop(storage);
        let (_, reopened) = open_syncing_store(dir.path(), Arc::new(RecordingSink::default()));
        assert_eq!(reopened.last_seq(), 9);
    }

    /// Within a group each INSERT is checked as if committed alone after the ones before
    /// it: of two INSERTs of one key exactly one succeeds, an INSERT repeating a key in
    /// itself fails alone, and nothing of a failed one is written or published.
    #[test]
    fn a_group_checks_each_insert_against_the_ones_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let (storage, store) = open_syncing_store(dir.path(), sink.clone());
        insert(&store, [1]);
        let outcomes = insert_as_one_group(
            &store,
            vec![vec![5], vec![5, 6], vec![7, 7], vec![1], vec![8]],
        );
        let violation =
            |o: &Result<Inserted>| matches!(o, Err(KalamError::PrimaryKeyViolation { .. }));
        // [5] and [5, 6] queued in some order: exactly one of them wrote 5.
        let five = outcomes[..2]
            .iter()
            .filter(|o| matches!(o, Ok(Inserted::Rows(_))))
            .count();
        assert_eq!(five, 1, "{outcomes:?}");
        assert_eq!(outcomes[..2].iter().filter(|o| violation(o)).count(), 1);
        assert!(violation(&outcomes[2]), "{:?}", outcomes[2]);
        assert!(violation(&outcomes[3]), "{:?}", outcomes[3]);
        assert!(matches!(outcomes[4], Ok(Inserted::Rows(1))));

        let six = storage.get(store.cf_name(), &key(6)).unwrap();
        assert_eq!(six.is_some(), matches!(outcomes[1], Ok(_)));
        assert!(storage.get(store.cf_name(), &key(7)).unwrap().is_none());
        assert!(storage.get(store.cf_name(), &key(8)).unwrap().is_some());
        assert_eq!(
            store.last_seq(),
            3,
            "the first INSERT, then two commits in the group"
        );
        assert_eq!(sink.0.lock().len(), 3);
        assert_eq!(storage.insert_writes.get(), 2);
    }
}
