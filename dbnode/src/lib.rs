//! `kalam-dbnode`: the KalamDB database node.
//!
//! Rooms (see `DESIGN.md`): [`config`] settings, [`catalog`] namespaces and table definitions,
//! [`storage`] the RocksDB hot tier, [`engine`] catalog + storage kept consistent, [`sql`]
//! parsing, planning and execution, [`auth`] tokens, [`api`] HTTP, [`metrics`] Prometheus,
//! [`jobs`] the record of background jobs (`system.jobs`), [`cold`] object-store locations,
//! Parquet files and segment manifests, [`flush`] moving hot rows into the cold tier, [`live`]
//! live-query subscriptions and change fan-out, [`backup`] BACKUP / RESTORE NAMESPACE and
//! SHOW BACKUP.

pub mod api;
pub mod auth;
pub mod backup;
pub mod catalog;
pub mod cold;
pub mod config;
pub mod engine;
pub mod error;
pub mod flush;
pub mod ids;
pub mod jobs;
pub mod live;
pub mod metrics;
pub mod node;
pub mod sql;
pub mod storage;
