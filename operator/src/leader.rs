//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager), so that two
//! replicas of the operator can run: only the holder of the lease runs the controllers.
//! Losing the lease ends the process; Kubernetes restarts it as a follower.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds a lease stays valid without renewal; a new leader takes over at most this long
/// after the old one died.
const LEASE_SECONDS: u64 = 15;
/// The holder renews this long before expiry.
const GRACE_SECONDS: u64 = 5;

/// The lease held by this process.
pub struct Leadership {
    state: watch::Receiver<bool>,
    _manager: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Waits until this process (`identity`) holds the lease `name` in `namespace`.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %name, namespace, identity, "waiting for the lease");
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            // The manager stopped before granting the lease; its task says why.
            return match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(LeaseManagerError::InconsistentState(
                    "the lease manager stopped".into(),
                )),
            };
        }
    }
    tracing::info!(lease = %name, identity, "acquired the lease");
    Ok(Leadership {
        state,
        _manager: task,
    })
}

impl Leadership {
    /// Resolves when the lease is lost (or can no longer be renewed).
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                return;
            }
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }
}
