//! A running node: configuration, the engine behind an executor, authentication and metrics,
//! assembled once at start-up and shared by every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;

use crate::auth::{self, Authenticator, SecretSource};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{KalamError, Result};
use crate::metrics::Metrics;
use crate::sql::executor::{planner_state, Executor};
use crate::sql::functions::SnowflakeGenerator;
use crate::sql::schema::KalamCatalogList;

#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub executor: Executor,
    pub auth: Authenticator,
    pub metrics: Metrics,
    ready: AtomicBool,
}

impl Node {
    /// Opens storage and catalog (repairing what a crash left), loads or creates the JWT
    /// secret, and builds the query engine.
    pub fn open(config: Config) -> Result<Arc<Self>> {
        let (secret, source) =
            auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir, true)?;
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
        let executor = Executor::new(engine, snowflake, base, config.max_result_rows);
        let metrics = Metrics::new().map_err(KalamError::internal)?;
        Ok(Arc::new(Self {
            config,
            executor,
            auth: Authenticator::new(&secret),
            metrics,
            ready: AtomicBool::new(true),
        }))
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
