//! What every e2e test starts with: the shared control plane, an admin client, the CRDs
//! installed, and a namespace of its own.

use std::time::Duration;

use kalam_e2e::control_plane::ControlPlane;
use kalam_e2e::kube_api;

/// Generous bound for anything the operator does after a change (its reconciles take
/// milliseconds; the bound absorbs a loaded 2-core machine).
pub const SETTLE: Duration = Duration::from_secs(60);

/// An admin client and a fresh namespace `<prefix>-<random>` with the CRDs installed.
pub async fn setup(prefix: &str) -> (kube::Client, String) {
    let plane = ControlPlane::shared();
    let client = plane.admin_client().await;
    kube_api::install_crds(&client).await;
    let ns = kube_api::namespace(&client, prefix).await;
    (client, ns)
}

/// `/apis/kalamdb.io/v1alpha1/namespaces/<ns>/<plural>/<name>`.
pub fn kalam_path(ns: &str, plural: &str, name: &str) -> String {
    format!("/apis/kalamdb.io/v1alpha1/namespaces/{ns}/{plural}/{name}")
}
