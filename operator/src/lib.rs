//! `kalam-operator`: the Kubernetes operator of KalamDB.
//!
//! - [`crd`]: the `kalamdb.io/v1alpha1` resources (KalamCluster, KalamNamespace,
//!   StorageLocation) and their schemas.
//! - [`cluster`]: KalamCluster -> ConfigMap, Services, StatefulSet, PodDisruptionBudget, JWT
//!   Secret, volume growth, status.
//! - [`namespace`], [`location`]: database objects applied over SQL to every node of a
//!   cluster, with finalizers; [`dbobject`] holds what the two share.
//! - [`sql`]: admin tokens and the statements sent to the nodes.
//! - [`conditions`], [`status`], [`conflict`]: condition bookkeeping, status writes and
//!   events, the oldest-wins rule.
//! - [`context`], [`error`], [`metrics`], [`leader`], [`controllers`]: the running process.
//!
//! Every reconciler is a pipeline whose middle is pure: fetch what the spec refers to,
//! validate, build the desired objects (or statements), apply, compute the status, and write
//! it only when it changed.

pub mod cluster;
pub mod conditions;
pub mod conflict;
pub mod context;
pub mod controllers;
pub mod crd;
pub mod dbobject;
pub mod error;
pub mod leader;
pub mod location;
pub mod metrics;
pub mod namespace;
pub mod sql;
pub mod status;

pub use context::{Context, EndpointOverride};
pub use error::{Error, Result};
