//! The size of one of the node's cold-tier caches as Prometheus gauges, read from the cache
//! at every scrape rather than kept up to date on every lookup.

use std::sync::Arc;

use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheKey, CacheValue};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

/// `<prefix>_files` and `<prefix>_bytes` of `shared`.
pub struct CacheUsage<K: CacheKey, V: CacheValue> {
    shared: Arc<DefaultCache<K, V>>,
    files: IntGauge,
    bytes: IntGauge,
}

impl<K: CacheKey, V: CacheValue> CacheUsage<K, V> {
    pub fn new(
        shared: Arc<DefaultCache<K, V>>,
        prefix: &str,
        files_help: &str,
        bytes_help: &str,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            shared,
            files: IntGauge::new(format!("{prefix}_files"), files_help)?,
            bytes: IntGauge::new(format!("{prefix}_bytes"), bytes_help)?,
        })
    }
}

impl<K: CacheKey + 'static, V: CacheValue + 'static> Collector for CacheUsage<K, V> {
    fn desc(&self) -> Vec<&Desc> {
        self.files
            .desc()
            .into_iter()
            .chain(self.bytes.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.files.set(self.shared.len() as i64);
        self.bytes.set(self.shared.memory_used() as i64);
        let mut out = self.files.collect();
        out.extend(self.bytes.collect());
        out
    }
}
