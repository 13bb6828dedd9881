//! Decoded hot partitions: a partition's hot rows kept as Arrow batches between scans, so a
//! partition read again before anything wrote to it is not decoded from RocksDB again
//! (docs/adr/0017-hot-partition-cache.md).
//!
//! An entry is valid for one *hot version* of its partition ([`TableStore::hot_version`]),
//! which every commit touching the partition, every flush or cleanup commit and every ALTER
//! moves after its write; a lookup compares the entry's version with the current one, so a
//! stale entry is never returned. A partition is decoded into the cache only on its second
//! scan at the same version (write-hot partitions never pay for it), entries are bounded by
//! a byte budget and evicted least recently used first.
//!
//! [`TableStore::hot_version`]: crate::storage::table::TableStore::hot_version

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

/// A partition's hot rows in key order, every version the hot tier holds (soft-deleted ones
/// too), as batches of one schema.
#[derive(Debug, Default)]
pub struct HotRows {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// How many of `rows` are soft-deleted.
    pub deleted: usize,
    /// First and last row key (within the partition), when there are rows.
    pub range: Option<(Vec<u8>, Vec<u8>)>,
}

impl HotRows {
    fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + self.range.as_ref().map_or(0, |(a, b)| a.len() + b.len())
    }
}

/// Which partition of which open table store, read in which schema version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// [`TableStore::id`](crate::storage::table::TableStore::id): unique per open store, so a
    /// table dropped and created again never finds the old one's rows.
    pub store: u64,
    pub schema_version: u32,
    /// [`Partition::prefix`](crate::storage::Partition::prefix).
    pub partition: Vec<u8>,
}

/// What a scan should do after a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// The partition's rows at the current version.
    Hit(Arc<HotRows>),
    /// Scanned before at this version: decode the whole partition and [`HotCache::insert`] it.
    Admit,
    /// First scan at this version (now remembered), or the cache is off: read as usual.
    Miss,
}

/// What a remembered scan without rows costs the budget (the key, the slot, the map).
const SEEN_BYTES: usize = 128;

#[derive(Debug)]
enum Slot {
    Seen {
        version: u64,
        tick: u64,
        /// Decoded once at this version and found bigger than the cache keeps: further
        /// scans at the version read RocksDB as usual instead of decoding it again.
        too_big: bool,
    },
    Held {
        version: u64,
        tick: u64,
        rows: Arc<HotRows>,
        bytes: usize,
    },
}

impl Slot {
    fn tick(&self) -> u64 {
        match self {
            Slot::Seen { tick, .. } | Slot::Held { tick, .. } => *tick,
        }
    }

    fn bytes(&self, key: &CacheKey) -> usize {
        key.partition.len()
            + match self {
                Slot::Seen { .. } => SEEN_BYTES,
                Slot::Held { bytes, .. } => SEEN_BYTES + bytes,
            }
    }
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<CacheKey, Slot>,
    /// Least recently used first.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    used: usize,
}

impl Inner {
    fn remove(&mut self, key: &CacheKey) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.order.remove(&slot.tick());
        self.used -= slot.bytes(key);
        Some(slot)
    }

    /// Puts `slot` in as the most recently used one, evicting others until it fits.
    fn put(&mut self, key: CacheKey, make: impl FnOnce(u64) -> Slot, budget: usize) -> u64 {
        self.remove(&key);
        self.tick += 1;
        let slot = make(self.tick);
        let bytes = slot.bytes(&key);
        let mut evicted = 0;
        while self.used + bytes > budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.slots.remove(&oldest) {
                self.used -= old.bytes(&oldest);
                evicted += 1;
            }
        }
        self.used += bytes;
        self.order.insert(self.tick, key.clone());
        self.slots.insert(key, slot);
        evicted
    }

    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let now = self.tick;
        if let Some(slot) = self.slots.get_mut(key) {
            let (Slot::Seen { tick, .. } | Slot::Held { tick, .. }) = slot;
            self.order.remove(tick);
            *tick = now;
            self.order.insert(now, key.clone());
        }
    }
}

#[derive(Debug)]
pub struct HotCache {
    budget: usize,
    inner: Mutex<Inner>,
    lookups: IntCounterVec,
    evictions: IntCounter,
    bytes: IntGauge,
}

impl HotCache {
    /// A cache of at most `budget` bytes; 0 turns it off.
    pub fn new(budget: usize) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "kalamdb_hot_cache_lookups_total",
                "Scans of hot partitions, by result (hit, admit, miss)",
            ),
            &["result"],
        )?;
        for result in ["hit", "admit", "miss"] {
            let _ = lookups.with_label_values(&[result]);
        }
        Ok(Self {
            budget,
            inner: Mutex::new(Inner::default()),
            lookups,
            evictions: IntCounter::new(
                "kalamdb_hot_cache_evictions_total",
                "Decoded hot partitions evicted to stay within hot_cache_bytes",
            )?,
            bytes: IntGauge::new(
                "kalamdb_hot_cache_bytes",
                "Memory held by decoded hot partitions",
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.lookups.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.bytes.clone()),
        ]
    }

    /// Looks `key` up at `version` (the partition's current hot version).
    pub fn lookup(&self, key: &CacheKey, version: u64) -> Lookup {
        if self.budget == 0 {
            return Lookup::Miss;
        }
        let mut inner = self.inner.lock();
        // `remember`: a first scan at this version, noted so that the next one admits.
        let (found, remember) = match inner.slots.get(key) {
            Some(Slot::Held {
                version: v, rows, ..
            }) if *v == version => (Lookup::Hit(rows.clone()), false),
            // Too big to keep: read as usual at this version instead of decoding it again.
            Some(Slot::Seen {
                version: v,
                too_big,
                ..
            }) if *v == version => (
                if *too_big {
                    Lookup::Miss
                } else {
                    Lookup::Admit
                },
                false,
            ),
            _ => (Lookup::Miss, true),
        };
        if remember {
            let evicted = inner.put(
                key.clone(),
                |tick| Slot::Seen {
                    version,
                    tick,
                    too_big: false,
                },
                self.budget,
            );
            self.evictions.inc_by(evicted);
        } else {
            inner.touch(key);
        }
        self.bytes.set(inner.used as i64);
        drop(inner);
        let result = match found {
            Lookup::Hit(_) => "hit",
            Lookup::Admit => "admit",
            Lookup::Miss => "miss",
        };
        self.lookups.with_label_values(&[result]).inc();
        found
    }

    /// Keeps `rows`, read at `version`, unless they would take more than half of the budget
    /// (one huge partition must not push out every other).
    pub fn insert(&self, key: CacheKey, version: u64, rows: Arc<HotRows>) {
        if self.budget == 0 {
            return;
        }
        let bytes = rows.bytes();
        let mut inner = self.inner.lock();
        if bytes > self.budget / 2 {
            if let Some(Slot::Seen {
                version: v,
                too_big,
                ..
            }) = inner.slots.get_mut(&key)
            {
                *too_big = *v == version;
            }
            return;
        }
        let evicted = inner.put(
            key,
            |tick| Slot::Held {
                version,
                tick,
                rows,
                bytes,
            },
            self.budget,
        );
        self.evictions.inc_by(evicted);
        self.bytes.set(inner.used as i64);
    }

    /// Drops every entry of a store (its table was dropped).
    pub fn forget_store(&self, store: u64) {
        let mut inner = self.inner.lock();
        let keys: Vec<CacheKey> = inner
            .slots
            .keys()
            .filter(|k| k.store == store)
            .cloned()
            .collect();
        for key in keys {
            inner.remove(&key);
        }
        self.bytes.set(inner.used as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array};

    fn rows(n: i64) -> Arc<HotRows> {
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n));
        let batch = RecordBatch::try_from_iter([("id", column)]).unwrap();
        Arc::new(HotRows {
            rows: n as usize,
            batches: vec![batch],
            deleted: 0,
            range: None,
        })
    }

    fn key(partition: &str) -> CacheKey {
        CacheKey {
            store: 1,
            schema_version: 1,
            partition: partition.as_bytes().to_vec(),
        }
    }

    /// A partition is decoded into the cache on its second scan at one version, served from
    /// it while the version holds, and never once the version moved.
    #[test]
    fn admits_on_the_second_scan_and_serves_only_its_version() {
        let cache = HotCache::new(1 << 20).unwrap();
        assert!(matches!(cache.lookup(&key("a"), 7), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("a"), 7), Lookup::Admit));
        cache.insert(key("a"), 7, rows(10));
        match cache.lookup(&key("a"), 7) {
            Lookup::Hit(r) => assert_eq!(r.rows, 10),
            other => panic!("expected a hit, got {other:?}"),
        }
        // A write moved the version: the rows are stale and a new admission starts.
        assert!(matches!(cache.lookup(&key("a"), 8), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("a"), 8), Lookup::Admit));
        assert!(matches!(cache.lookup(&key("b"), 8), Lookup::Miss));
    }

    /// The budget holds: the least recently used entry goes first, a partition bigger than
    /// half of the budget is not kept, and a dropped store's entries are released.
    #[test]
    fn stays_within_its_budget() {
        let one = rows(1000).bytes();
        let cache = HotCache::new(4 * (one + SEEN_BYTES + 1)).unwrap();
        for p in ["a", "b", "c", "d"] {
            cache.insert(key(p), 1, rows(1000));
        }
        assert!(matches!(cache.lookup(&key("a"), 1), Lookup::Hit(_)));
        // "b" is now the least recently used.
        cache.insert(key("e"), 1, rows(1000));
        assert!(matches!(cache.lookup(&key("b"), 1), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("a"), 1), Lookup::Hit(_)));
        assert!(cache.inner.lock().used <= cache.budget);
        assert!(cache.evictions.get() >= 1);

        // Too big: decoded once, then read as usual at that version (no decode per scan).
        assert!(matches!(cache.lookup(&key("big"), 1), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("big"), 1), Lookup::Admit));
        cache.insert(key("big"), 1, rows(5000));
        assert!(matches!(cache.lookup(&key("big"), 1), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("big"), 1), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("big"), 2), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("big"), 2), Lookup::Admit));

        cache.forget_store(1);
        assert_eq!(cache.inner.lock().used, 0);
        assert_eq!(cache.bytes.get(), 0);

        let off = HotCache::new(0).unwrap();
        off.insert(key("a"), 1, rows(1));
        assert!(matches!(off.lookup(&key("a"), 1), Lookup::Miss));
        assert!(matches!(off.lookup(&key("a"), 1), Lookup::Miss));
    }
}
