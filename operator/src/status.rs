//! Writing status: only when it changed (a resync that finds nothing new writes nothing), by
//! server-side apply of the status subresource, and announcing condition transitions as
//! Kubernetes Events.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conditions::{transitions, DEGRADED, READY, RESOURCE_CONFLICT};
use crate::context::{Context, MANAGER};
use crate::crd::{KalamClusterStatus, KalamNamespaceStatus, StorageLocationStatus};
use crate::error::{Error, Result};

/// Longest Event note the API server takes is 1 kB; messages are cut below it.
const MAX_NOTE: usize = 1000;

/// A status with standard conditions.
pub trait WithConditions {
    fn conditions(&self) -> &[Condition];
}

impl WithConditions for KalamClusterStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl WithConditions for KalamNamespaceStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl WithConditions for StorageLocationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Applies `new` as the status of `obj` unless it equals the current one, then announces
/// the condition transitions. Returns whether anything was written.
pub async fn update<K>(ctx: &Context, obj: &K, new: &K::Status) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + HasStatus
        + Clone
        + DeserializeOwned
        + Debug,
    K::Status: Serialize + PartialEq + WithConditions,
{
    if obj.status() == Some(new) {
        return Ok(false);
    }
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let old: &[Condition] = obj.status().map(|s| s.conditions()).unwrap_or(&[]);
    announce(ctx, obj, old, new.conditions()).await;
    Ok(true)
}

/// One Event per changed condition: Ready (Normal) whichever way it went, Degraded and
/// ResourceConflict (Warning) when they become true.
pub async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    old: &[Condition],
    new: &[Condition],
) {
    let reference = obj.object_ref(&());
    for c in transitions(old, new, &[READY, DEGRADED, RESOURCE_CONFLICT]) {
        let problem = c.type_ != READY;
        if problem && c.status != "True" {
            continue;
        }
        let event = Event {
            type_: if problem {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(c.message.chars().take(MAX_NOTE).collect()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        ctx.publish(event, &reference).await;
    }
}
