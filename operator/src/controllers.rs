//! The three controllers, sharing one client and one [`Context`]: KalamCluster (owning its
//! children and watching the StorageLocations whose Secrets it projects), KalamNamespace and
//! StorageLocation.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};

use crate::context::{Context, MANAGER};
use crate::crd::{KalamCluster, KalamNamespace, StorageLocation};
use crate::{cluster, location, namespace};

/// Runs every controller until one of them stops (they only stop on shutdown). With
/// `namespace`, only that Kubernetes namespace is watched (and the RBAC may be a Role there).
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Only the objects the operator made: no need to watch every Secret of the cluster.
    let owned =
        || watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));

    let clusters = Controller::new(
        api::<KalamCluster>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, namespace), owned())
    .owns(api::<Service>(&client, namespace), owned())
    .owns(api::<ConfigMap>(&client, namespace), owned())
    .owns(api::<Secret>(&client, namespace), owned())
    .owns(api::<PodDisruptionBudget>(&client, namespace), owned())
    // A location's credentials Secret is projected into the pods of its cluster.
    .watches(
        api::<StorageLocation>(&client, namespace),
        watcher::Config::default(),
        |l: StorageLocation| {
            l.namespace()
                .map(|ns| ObjectRef::<KalamCluster>::new(&l.spec.cluster_ref.name).within(&ns))
        },
    )
    .shutdown_on_signal()
    .run(cluster::reconcile, cluster::error_policy, ctx.clone())
    .for_each(|_| futures::future::ready(()));

    let namespaces = Controller::new(
        api::<KalamNamespace>(&client, namespace),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(namespace::reconcile, namespace::error_policy, ctx.clone())
    .for_each(|_| futures::future::ready(()));

    let locations = Controller::new(
        api::<StorageLocation>(&client, namespace),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(location::reconcile, location::error_policy, ctx)
    .for_each(|_| futures::future::ready(()));

    tokio::select! {
        () = clusters => tracing::info!("the KalamCluster controller stopped"),
        () = namespaces => tracing::info!("the KalamNamespace controller stopped"),
        () = locations => tracing::info!("the StorageLocation controller stopped"),
    }
}
