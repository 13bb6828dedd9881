//! Black-box integration tests of the KalamDB database node (`kalamdb serve`).
//!
//! Every test starts its own node process on a temporary data directory and talks to it over
//! HTTP only, checking the contract of `shared/API.md` §1-4: the wire shapes of
//! `POST /api/sql`, authentication and roles, namespaces, tables, DML, per-user isolation of
//! USER tables, system tables, robustness against bad input, durability across restarts and
//! `kill -9`, the operational endpoints, the Parquet cold tier (flushes, storage locations,
//! S3 through a moto server, crash safety at flush failpoints), STREAM tables (options,
//! eviction, append-only), live queries over `GET /ws` (§5, raw WebSocket frames),
//! ALTER TABLE schema versions across both tiers and live queries, DROP TABLE / DROP
//! NAMESPACE removing a table's files from its location (filesystem and S3), also across a
//! failing location and a crash, deleted-row retention (the scheduled `cleanup` job, crash
//! safety at its failpoints), and BACKUP / RESTORE NAMESPACE with SHOW BACKUP (local
//! directories and S3), and request parameters (`$1`, `$2`, ... bound to the body's `params`).

#[allow(dead_code)]
mod harness;

mod alter;
mod auth;
mod backup;
mod cli;
mod cold;
mod dml;
mod drop;
mod durability;
mod http;
mod isolation;
mod live;
mod namespaces;
mod params;
mod retention;
mod robustness;
mod stream;
mod system_tables;
mod tables;
