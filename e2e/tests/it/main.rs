//! End-to-end tests of the operator against a real kube-apiserver and etcd (see the
//! `kalam_e2e` library for what runs and what stands in for the absent kubelet).
//!
//! - [`crds`]: the CRDs under `crds/` installed into the server: schemas validate (invalid
//!   objects are refused by the server), defaults apply, printer columns render, the
//!   `examples/` are accepted.
//! - [`chart`]: `helm template` of `charts/kalamdb` applied with server-side dry-run.
//! - [`flow`]: the operator binary under the chart's RBAC reconciling a KalamCluster,
//!   KalamNamespaces and a StorageLocation into stand-in pods running `kalamdb`.
//! - [`leader`]: two operator processes, one lease, a hand-over when the leader dies.

mod chart;
mod common;
mod crds;
mod flow;
mod leader;
