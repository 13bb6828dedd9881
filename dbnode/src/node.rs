//! A running node: configuration, the engine behind an executor, authentication and metrics,
//! assembled once at start-up and shared by every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;

use crate::auth::{self, Authenticator, SecretSource};
use crate::catalog::TableKind;
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{KalamError, Result};
use crate::flush::cleanup::Cleaner;
use crate::flush::Flusher;
use crate::metrics::Metrics;
use crate::purge::Purger;
use crate::sql::executor::{planner_state, Executor};
use crate::sql::functions::SnowflakeGenerator;
use crate::sql::prepared::PreparedStatements;
use crate::sql::schema::KalamCatalogList;

#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub executor: Executor,
    pub flusher: Arc<Flusher>,
    /// Removes dropped tables' files in the background.
    pub purger: Arc<Purger>,
    /// Deleted-row retention: the scheduled `cleanup` jobs.
    pub cleaner: Arc<Cleaner>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    /// Parse trees of parameterized requests' texts.
    pub prepared: PreparedStatements,
    /// One permit per WebSocket connection the node may still take (`ws_max_connections`).
    pub ws_slots: Arc<tokio::sync::Semaphore>,
    ready: AtomicBool,
}

impl Node {
    /// Opens storage and catalog (repairing what a crash left), loads or creates the JWT
    /// secret, and builds the query engine.
    pub fn open(config: Config) -> Result<Arc<Self>> {
        let (secret, source) = auth::load_or_create_secret(
            config.jwt_secret.as_ref().map(|s| s.expose()),
            &config.data_dir,
            true,
        )?;
        if source == SecretSource::GeneratedNow {
            tracing::info!(
                path = %config.data_dir.join("jwt_secret").display(),
                "generated a JWT secret for this data directory; mint a token with: kalamdb token --user <id> [--admin] --data-dir {}",
                config.data_dir.display()
            );
        }
        let snowflake = Arc::new(SnowflakeGenerator::new(&config.node_id));
        // One memory budget for all queries: a huge sort or join fails with
        // RESOURCES_EXHAUSTED (or spills) instead of taking the node down.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.max_query_memory_bytes, 1.0)
            .build_arc()
            .map_err(KalamError::internal)?;
        let planner = planner_state(snowflake.clone(), None, runtime.clone());
        let engine = Arc::new(Engine::open(&config, &planner)?);
        let base = planner_state(
            snowflake.clone(),
            Some(Arc::new(KalamCatalogList::new(engine.clone()))),
            runtime,
        );
        let metrics = Metrics::new().map_err(KalamError::internal)?;
        metrics
            .register(engine.live.metrics.collectors())
            .map_err(KalamError::internal)?;
        metrics
            .register(engine.storage.collectors())
            .map_err(KalamError::internal)?;
        metrics
            .register(engine.hot_cache.collectors())
            .map_err(KalamError::internal)?;
        metrics
            .register(
                engine
                    .cold
                    .metadata
                    .collectors()
                    .map_err(KalamError::internal)?,
            )
            .map_err(KalamError::internal)?;
        metrics
            .register(
                engine
                    .cold
                    .decoded
                    .collectors()
                    .map_err(KalamError::internal)?,
            )
            .map_err(KalamError::internal)?;
        let prepared = PreparedStatements::new().map_err(KalamError::internal)?;
        metrics
            .register(prepared.collectors())
            .map_err(KalamError::internal)?;
        let flusher = Flusher::new(
            engine.clone(),
            metrics.clone(),
            std::time::Duration::from_millis(config.flush_retry_base_ms),
        );
        // Purge retries back off like flush retries.
        let purger = Purger::new(
            engine.clone(),
            std::time::Duration::from_millis(config.flush_retry_base_ms),
        );
        let cleaner = Cleaner::new(engine.clone(), config.cleanup_file_grace());
        let executor = Executor::new(
            engine,
            flusher.clone(),
            purger.clone(),
            snowflake,
            base,
            config.max_result_rows,
            config.statement_timeout(),
        );
        let ws_slots = Arc::new(tokio::sync::Semaphore::new(
            config
                .ws_max_connections
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(Arc::new(Self {
            config,
            executor,
            flusher,
            purger,
            cleaner,
            auth: Authenticator::new(&secret),
            metrics,
            prepared,
            ws_slots,
            ready: AtomicBool::new(true),
        }))
    }

    /// Starts the background work: the purges of dropped tables a previous process left
    /// unfinished, the flush-policy scheduler and the purge retries (every
    /// `flush_check_interval_ms`), the hourly job-history retention, the STREAM eviction
    /// scheduler (every `stream_eviction_interval_ms`) and deleted-row retention (every
    /// `cleanup_interval`).
    pub fn start_background(self: &Arc<Self>) {
        self.purger.resume();
        let node = self.clone();
        tokio::spawn(async move {
            let every = std::time::Duration::from_millis(node.config.flush_check_interval_ms);
            let mut tick = tokio::time::interval(every);
            let mut last_retention: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                node.flusher.check_policies();
                node.purger.check_retries();
                if last_retention
                    .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600))
                {
                    last_retention = Some(std::time::Instant::now());
                    let jobs = node.executor.engine().jobs.clone();
                    let retention = node.config.job_retention();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = jobs.run_retention(retention) {
                            tracing::warn!(error = %e, "job history retention failed");
                        }
                    });
                }
            }
        });
        self.start_stream_eviction();
        self.start_cleanup();
    }

    /// Deleted-row retention (docs/adr/0014-deleted-row-retention.md): a pass at start-up and
    /// then every `cleanup_interval`, each starting a `cleanup` job for every table with
    /// soft-deleted rows past its `deleted_retention`. Passes run on a thread of their own,
    /// one after the other (a pass that takes longer than the interval delays the next), and
    /// each job runs on that thread, so its CPU figure is its own.
    fn start_cleanup(self: &Arc<Self>) {
        let cleaner = self.cleaner.clone();
        let every = self.config.cleanup_interval();
        let spawned = std::thread::Builder::new()
            .name("cleanup".into())
            .spawn(move || loop {
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cleaner.run_pass();
                }));
                if pass.is_err() {
                    tracing::error!("a cleanup pass panicked; the next one runs on schedule");
                }
                std::thread::sleep(every);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the cleanup scheduler");
        }
    }

    /// Every `stream_eviction_interval_ms`, deletes the events of every STREAM table that
    /// are older than the table's `retention`, and counts them in
    /// `kalamdb_stream_events_evicted_total{reason="retention"}`.
    ///
    /// The deletes take the table's write lock and touch RocksDB, so each pass runs on the
    /// blocking pool, never on the async runtime's threads; a pass that is still running
    /// when the next tick comes delays it instead of piling up.
    ///
    /// Eviction is not a job and writes no row to `system.jobs`: it runs every second, and
    /// one row per pass (most of them evicting nothing) would flood the job history and push
    /// the flush and cleanup jobs people look for out of it. It is visible in the metric and
    /// in debug logs instead.
    fn start_stream_eviction(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            let every = std::time::Duration::from_millis(node.config.stream_eviction_interval_ms);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let engine = node.executor.engine().clone();
                let pass = tokio::task::spawn_blocking(move || {
                    let now = chrono::Utc::now().timestamp_micros();
                    let mut total = 0u64;
                    for rt in engine.runtimes() {
                        if rt.def().kind != TableKind::Stream {
                            continue;
                        }
                        match rt.store.evict_expired(now) {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::debug!(
                                    table = %rt.def().id(),
                                    evicted = n,
                                    held = rt.store.stream_len(),
                                    "stream events past retention evicted"
                                );
                                total += n;
                            }
                            Err(e) => tracing::warn!(
                                table = %rt.def().id(),
                                error = %e,
                                "stream eviction failed"
                            ),
                        }
                    }
                    total
                })
                .await;
                match pass {
                    Ok(evicted) => node.metrics.record_stream_eviction("retention", evicted),
                    Err(e) => tracing::warn!(error = %e, "stream eviction pass did not finish"),
                }
            }
        });
    }

    /// Storage open, catalog loaded, and the store answering.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.executor.engine().storage.probe().is_ok()
    }

    /// Marks the node as draining: `/readyz` fails so load balancers stop sending traffic.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Release);
    }
}
