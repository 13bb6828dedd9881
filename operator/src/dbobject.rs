//! What the KalamNamespace and StorageLocation reconcilers share: finding the referenced
//! cluster and waiting for it, listing the other claimants of a database object, and turning
//! the outcome of a reconcile into conditions and a requeue.
//!
//! Both reconcilers are the same pipeline: fetch (cluster, peers) -> validate (pure) ->
//! conflict check (pure) -> SQL on every node -> status from the [`Outcome`] (pure) -> patch
//! when changed.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conditions::{Desired, DEGRADED, PROGRESSING, READY, RESOURCE_CONFLICT};
use crate::context::{object_key, Context};
use crate::crd::KalamCluster;
use crate::error::{Error, Invalid, Result};

/// A Kubernetes object that stands for a database object and guards it with a finalizer.
pub trait DbObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Label of the controller in metrics and logs.
    const CONTROLLER: &'static str;
    /// The finalizer that applies the deletion policy.
    const FINALIZER: &'static str;
    /// Makes the database side match the spec (the object is not being deleted).
    fn apply<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>>;
    /// Applies the deletion policy; `Ok` lets the finalizer go.
    fn cleanup<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>>;
}

/// The reconcile of every database object: the finalizer first, then apply or cleanup,
/// measured and traced.
pub async fn reconcile<K: DbObject>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let key = object_key(obj.as_ref());
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let shared: &Context = &ctx;
    shared
        .measured(K::CONTROLLER, key, async move {
            finalizer(&api, K::FINALIZER, obj, |event| async move {
                match event {
                    FinalizerEvent::Apply(o) => o.apply(shared).await,
                    FinalizerEvent::Cleanup(o) => o.cleanup(shared).await,
                }
            })
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
        })
        .await
}

/// The `error_policy` of every database object: exponential backoff per object.
pub fn error_policy<K: DbObject>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after(&object_key(obj.as_ref()), error)
}

/// Drift correction: every database object is checked again this often (unless the
/// operator runs with `--resync-seconds`).
pub const RESYNC: Duration = Duration::from_secs(60);
/// How often an object waiting for its cluster looks again.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(10);

/// What one reconcile of a database object found or did: the input of its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `kalamdb.io/managed: "false"`.
    Unmanaged,
    /// The spec is refused.
    Invalid(Invalid),
    /// The cluster is missing or not Ready (the message says which).
    ClusterNotReady(String),
    /// An older object claims the same database object.
    Conflict { owner: String },
    /// The database object matches the spec on every node.
    Applied(String),
    /// A `Delete` was refused by the nodes (still in use).
    DeleteBlocked(String),
    /// SQL or the JWT Secret failed; the reconcile is retried.
    Failed {
        reason: &'static str,
        message: String,
    },
}

impl Outcome {
    pub fn failed(e: &Error) -> Self {
        Outcome::Failed {
            reason: e.reason(),
            message: e.to_string(),
        }
    }

    /// Ready, Progressing, Degraded and ResourceConflict for this outcome. `kind` is the
    /// Kubernetes kind, `what` names the database object ("namespace app").
    pub fn conditions(&self, kind: &str, what: &str) -> Vec<Desired> {
        let ok = |type_| Desired::new(type_, false, "AsExpected", "");
        let no_conflict = Desired::new(RESOURCE_CONFLICT, false, "NoConflict", "");
        match self {
            Outcome::Unmanaged => {
                let m = "kalamdb.io/managed is \"false\": the operator does not touch the database for this object";
                vec![
                    Desired::new(READY, false, "Unmanaged", m),
                    Desired::new(PROGRESSING, false, "Unmanaged", ""),
                    ok(DEGRADED),
                    no_conflict,
                ]
            }
            Outcome::Invalid(i) => vec![
                Desired::new(READY, false, i.reason, i.message.clone()),
                Desired::new(PROGRESSING, false, i.reason, ""),
                Desired::new(DEGRADED, true, i.reason, i.message.clone()),
                no_conflict,
            ],
            Outcome::ClusterNotReady(m) => vec![
                Desired::new(READY, false, "ClusterNotReady", m.clone()),
                Desired::new(PROGRESSING, true, "ClusterNotReady", m.clone()),
                ok(DEGRADED),
                no_conflict,
            ],
            Outcome::Conflict { owner } => {
                let m = format!(
                    "{what} is already managed by {kind} {owner} (the oldest claim wins); this object is not applied"
                );
                vec![
                    Desired::new(READY, false, "ResourceConflict", m.clone()),
                    Desired::new(PROGRESSING, false, "ResourceConflict", ""),
                    ok(DEGRADED),
                    Desired::new(RESOURCE_CONFLICT, true, "ResourceConflict", m),
                ]
            }
            Outcome::Applied(m) => vec![
                Desired::new(READY, true, "Applied", m.clone()),
                Desired::new(PROGRESSING, false, "Applied", ""),
                ok(DEGRADED),
                no_conflict,
            ],
            Outcome::DeleteBlocked(m) => vec![
                Desired::new(READY, false, "DeleteBlocked", m.clone()),
                Desired::new(PROGRESSING, false, "DeleteBlocked", ""),
                Desired::new(DEGRADED, true, "DeleteBlocked", m.clone()),
                no_conflict,
            ],
            Outcome::Failed { reason, message } => vec![
                Desired::new(READY, false, *reason, message.clone()),
                Desired::new(PROGRESSING, false, *reason, ""),
                Desired::new(DEGRADED, true, *reason, message.clone()),
                no_conflict,
            ],
        }
    }

    /// When to look again if nothing changes meanwhile; `resync` is the drift-correction
    /// period.
    pub fn requeue(&self, resync: Duration) -> Action {
        match self {
            Outcome::Unmanaged | Outcome::Invalid(_) => Action::await_change(),
            Outcome::ClusterNotReady(_) => Action::requeue(CLUSTER_WAIT),
            Outcome::Conflict { .. }
            | Outcome::Applied(_)
            | Outcome::DeleteBlocked(_)
            | Outcome::Failed { .. } => Action::requeue(resync),
        }
    }
}

/// The KalamCluster `name` in `namespace`, if it exists.
pub async fn fetch_cluster(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<KalamCluster>> {
    let api: Api<KalamCluster> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.get_opt(name).await?)
}

/// The cluster when it is Ready, else why not.
pub fn ready_cluster(name: &str, cluster: Option<KalamCluster>) -> Result<KalamCluster, String> {
    match cluster {
        None => Err(format!("KalamCluster {name} does not exist")),
        Some(c) if !c.is_ready() => Err(format!("waiting for KalamCluster {name} to be Ready")),
        Some(c) => Ok(c),
    }
}

/// Every object of kind `K` in `namespace` (the candidates of the conflict rule).
pub async fn list<K>(ctx: &Context, namespace: &str) -> Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(d: &[Desired]) -> Vec<(&str, bool, &str)> {
        d.iter()
            .map(|c| (c.type_, c.status, c.reason.as_str()))
            .collect()
    }

    #[test]
    fn every_outcome_sets_the_four_conditions() {
        let cases = [
            Outcome::Unmanaged,
            Outcome::Invalid(Invalid::new("InvalidName", "bad")),
            Outcome::ClusterNotReady("waiting".into()),
            Outcome::Conflict {
                owner: "first".into(),
            },
            Outcome::Applied("ok".into()),
            Outcome::DeleteBlocked("tables: a".into()),
            Outcome::Failed {
                reason: "ClusterUnreachable",
                message: "refused".into(),
            },
        ];
        for o in &cases {
            let d = o.conditions("KalamNamespace", "namespace app");
            let names: Vec<&str> = d.iter().map(|c| c.type_).collect();
            assert_eq!(
                names,
                [READY, PROGRESSING, DEGRADED, RESOURCE_CONFLICT],
                "{o:?}"
            );
        }
        assert_eq!(
            types(&Outcome::Applied("ok".into()).conditions("K", "x")),
            [
                (READY, true, "Applied"),
                (PROGRESSING, false, "Applied"),
                (DEGRADED, false, "AsExpected"),
                (RESOURCE_CONFLICT, false, "NoConflict")
            ]
        );
        let conflict = Outcome::Conflict {
            owner: "first".into(),
        }
        .conditions("KalamNamespace", "namespace app");
        assert_eq!(conflict[3].reason, "ResourceConflict");
        assert!(conflict[3].status);
        assert!(
            conflict[3].message.contains("KalamNamespace first"),
            "{}",
            conflict[3].message
        );
        let unmanaged = Outcome::Unmanaged.conditions("K", "x");
        assert_eq!(
            (unmanaged[0].status, unmanaged[0].reason.as_str()),
            (false, "Unmanaged")
        );
    }

    #[test]
    fn requeues() {
        assert_eq!(
            Outcome::Applied(String::new()).requeue(RESYNC),
            Action::requeue(RESYNC)
        );
        assert_eq!(
            Outcome::ClusterNotReady(String::new()).requeue(RESYNC),
            Action::requeue(CLUSTER_WAIT)
        );
        assert_eq!(Outcome::Unmanaged.requeue(RESYNC), Action::await_change());
    }

    #[test]
    fn a_missing_or_unready_cluster_is_waited_for() {
        assert!(ready_cluster("kc", None)
            .unwrap_err()
            .contains("does not exist"));
        let c = KalamCluster::new("kc", serde_json::from_value(serde_json::json!({})).unwrap());
        assert!(ready_cluster("kc", Some(c))
            .unwrap_err()
            .contains("waiting"));
    }
}
