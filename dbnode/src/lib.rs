//! `kalam-dbnode`: the KalamDB database node.
//!
//! Rooms (see `DESIGN.md`): [`config`] settings, [`catalog`] namespaces and table definitions,
//! [`storage`] the RocksDB hot tier, [`engine`] catalog + storage kept consistent, [`sql`]
//! parsing, planning and execution, [`auth`] tokens, [`api`] HTTP, [`metrics`] Prometheus,
//! [`jobs`] the record of background jobs (`system.jobs`), [`cold`] object-store locations,
//! Parquet files and segment manifests, [`flush`] moving hot rows into the cold tier, [`live`]
//! live-query subscriptions and change fan-out, [`purge`] removing a dropped table's files,
//! [`flush::cleanup`] deleted-row retention, [`backup`] BACKUP / RESTORE NAMESPACE and SHOW
//! BACKUP.

/// Aborts the process at a named step when `FAILPOINTS` asks for it (debug builds only; see
/// `main`): the crash tests' stand-in for `kill -9` at that step. Defined before the modules
/// so that every one of them can use it.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            tracing::error!(failpoint = $name, "failpoint reached: aborting");
            std::process::abort()
        })
    };
}

/// Panics at a named step when `FAILPOINTS` asks for it: the tests' stand-in for a bug
/// there. Compiled into debug builds only, so that the release build pays nothing on the
/// hot paths it marks (a live change's rendering, once per shape).
macro_rules! panic_point {
    ($name:literal) => {
        #[cfg(debug_assertions)]
        fail::fail_point!($name);
    };
}

/// Waits at a named step for `<ms>` when `FAILPOINTS` says `<name>=return(<ms>)`, without
/// blocking the thread it runs on (a blocked runtime worker can stall everyone's I/O): the
/// tests' stand-in for slow work there. Compiled into debug builds only.
macro_rules! stall_point {
    ($name:literal) => {
        #[cfg(debug_assertions)]
        if let Some(ms) =
            fail::eval($name, |arg| arg.and_then(|ms| ms.parse::<u64>().ok())).flatten()
        {
            let stall = std::time::Duration::from_millis(ms);
            match tokio::runtime::Handle::try_current() {
                Ok(_) => tokio::time::sleep(stall).await,
                Err(_) => std::thread::sleep(stall),
            }
        }
    };
}

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
pub mod purge;
pub mod sql;
pub mod storage;
