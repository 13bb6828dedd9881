//! Integration tests of the operator's reconcilers.
//!
//! The Kubernetes API is a scripted fake ([`mock`]: no API server runs here); the database
//! side is a real `kalamdb serve` process on a loopback port ([`node`]), reached through the
//! test-only endpoint override. Each flow calls the reconcile functions the controllers call,
//! scripts the API exchanges they must make, and checks the status bodies they write and the
//! state of the node.
//!
//! - [`namespace`]: KalamNamespace create, options, drift correction, deletion policies,
//!   blocked deletes, conflicts, unmanaged objects, waiting for the cluster, an unreachable
//!   node.
//! - [`location`]: StorageLocation rows, usage counts, updates, blocked and finished deletes.
//! - [`cluster`]: KalamCluster children, the generated Secret, readiness, storage growth
//!   and shrink, the PodDisruptionBudget switch (API side only: no pods run here).
//! - [`crds`]: the CRD files under `crds/` match the types.

mod cluster;
mod crds;
#[allow(dead_code)]
mod fixtures;
mod location;
#[allow(dead_code)]
mod mock;
mod namespace;
#[allow(dead_code)]
mod node;
