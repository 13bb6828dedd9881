//! The StorageLocation reconciler: one row of `system.storage_locations` on every node of
//! the referenced cluster, its `usage_count` read back on each resync, and the finalizer that
//! applies the deletion policy. Credentials never travel through SQL: the row names a
//! credential set (`credentials_ref` = the location name) that the cluster reconciler
//! projects into the pods from the referenced Secret.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use crate::conditions;
use crate::conflict;
use crate::context::Context;
use crate::crd::{
    is_identifier, is_managed, DeletionPolicy, KalamCluster, LocationType, StorageLocation,
    StorageLocationStatus,
};
use crate::dbobject::{self, DbObject, Outcome};
use crate::error::{Error, Invalid, Result};
use crate::sql::{AdminSql, DesiredLocation, DropOutcome};
use crate::status;

/// Label of this controller in metrics and logs.
pub const CONTROLLER: &str = "storage_location";
/// Finalizer that applies the deletion policy.
pub const FINALIZER: &str = "kalamdb.io/storage-location";
/// The node's built-in location, which cannot be changed or deleted.
const BUILT_IN: &str = "local";

/// Checks the name and the path (pure) and returns the row to write.
pub fn validate(obj: &StorageLocation) -> Result<DesiredLocation, Invalid> {
    let name = obj.location_name();
    if !is_identifier(&name) {
        return Err(Invalid::new(
            "InvalidName",
            format!(
                "location name '{name}' must match ^[a-z][a-z0-9_]*$ and have at most 63 \
                 characters; set spec.name"
            ),
        ));
    }
    if name == BUILT_IN {
        return Err(Invalid::new(
            "InvalidName",
            "'local' is the node's built-in location",
        ));
    }
    let path = obj.spec.path.trim();
    if path.split('/').any(|part| part == "..") {
        return Err(Invalid::new("InvalidSpec", "path must not contain '..'"));
    }
    match obj.spec.location_type {
        LocationType::S3 => {
            let bucket = path
                .strip_prefix("s3://")
                .and_then(|rest| rest.split('/').next());
            if bucket.is_none_or(str::is_empty) {
                return Err(Invalid::new(
                    "InvalidSpec",
                    format!("an s3 location path is s3://bucket[/prefix], not '{path}'"),
                ));
            }
        }
        LocationType::Filesystem => {
            if !path.starts_with('/') {
                return Err(Invalid::new(
                    "InvalidSpec",
                    format!("a filesystem location path must be absolute, not '{path}'"),
                ));
            }
        }
    }
    Ok(DesiredLocation {
        credentials_ref: obj
            .spec
            .credentials_secret_ref
            .as_ref()
            .map(|_| name.clone()),
        name,
        location_type: obj.spec.location_type,
        path: path.to_string(),
    })
}

/// The object that owns the same location name, when it is not `obj` (pure).
pub fn owner_among(obj: &StorageLocation, name: &str, peers: &[StorageLocation]) -> Option<String> {
    let claimants: Vec<&StorageLocation> = peers
        .iter()
        .filter(|p| {
            p.spec.cluster_ref == obj.spec.cluster_ref
                && is_managed(*p)
                && validate(p).is_ok_and(|d| d.name == name)
        })
        .collect();
    conflict::other_owner(obj, &claimants)
}

/// What the nodes told beyond the outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Tables using the location, when it was looked at.
    pub usage_count: Option<i64>,
    /// Tables using the location (`<namespace>.<table>`), when they were looked at: the
    /// dependents a user must drop before a `Delete` can finish.
    pub tables: Vec<String>,
}

/// The status for `outcome` (pure); see the namespace reconciler for the rules.
pub fn desired_status(
    obj: &StorageLocation,
    location: Option<&str>,
    outcome: &Outcome,
    observed: &Observed,
    now: &Time,
) -> StorageLocationStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let what = format!("storage location {}", location.unwrap_or("?"));
    let generation = obj.metadata.generation;
    StorageLocationStatus {
        location_name: location.map(str::to_string),
        usage_count: observed.usage_count.unwrap_or(previous.usage_count),
        tables: observed.tables.clone(),
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &outcome.conditions("StorageLocation", &what),
            generation,
            now,
        ),
    }
}

/// Reconciles one StorageLocation (the controller's entry point).
pub async fn reconcile(obj: Arc<StorageLocation>, ctx: Arc<Context>) -> Result<Action> {
    dbobject::reconcile(obj, ctx).await
}

/// The controller's `error_policy`: exponential backoff per object.
pub fn error_policy(obj: Arc<StorageLocation>, error: &Error, ctx: Arc<Context>) -> Action {
    dbobject::error_policy(obj, error, ctx)
}

impl DbObject for StorageLocation {
    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: &'static str = FINALIZER;

    fn apply<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>> {
        apply(self, ctx).boxed()
    }

    fn cleanup<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>> {
        cleanup(self, ctx).boxed()
    }
}

async fn finish(
    ctx: &Context,
    obj: &StorageLocation,
    location: Option<&str>,
    outcome: Outcome,
    observed: Observed,
) -> Result<Action> {
    let status = desired_status(obj, location, &outcome, &observed, &conditions::now());
    status::update(ctx, obj, &status).await?;
    Ok(outcome.requeue(ctx.resync))
}

async fn apply(obj: &StorageLocation, ctx: &Context) -> Result<Action> {
    if !is_managed(obj) {
        return finish(ctx, obj, None, Outcome::Unmanaged, Observed::default()).await;
    }
    let desired = match validate(obj) {
        Ok(d) => d,
        Err(invalid) => {
            return finish(
                ctx,
                obj,
                None,
                Outcome::Invalid(invalid),
                Observed::default(),
            )
            .await
        }
    };
    let location = Some(desired.name.as_str());
    let namespace = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let cluster_name = &obj.spec.cluster_ref.name;
    let cluster = dbobject::fetch_cluster(ctx, &namespace, cluster_name).await?;
    let cluster = match dbobject::ready_cluster(cluster_name, cluster) {
        Ok(c) => c,
        Err(why) => {
            let outcome = Outcome::ClusterNotReady(why);
            return finish(ctx, obj, location, outcome, Observed::default()).await;
        }
    };
    let peers: Vec<StorageLocation> = dbobject::list(ctx, &namespace).await?;
    if let Some(owner) = owner_among(obj, &desired.name, &peers) {
        let outcome = Outcome::Conflict { owner };
        return finish(ctx, obj, location, outcome, Observed::default()).await;
    }
    match ensure(ctx, &cluster, &desired).await {
        Ok((usage, tables, nodes)) => {
            let message = format!(
                "storage location {} matches the spec on {nodes} node(s) of KalamCluster {cluster_name}",
                desired.name
            );
            let observed = Observed {
                usage_count: Some(usage),
                tables,
            };
            finish(ctx, obj, location, Outcome::Applied(message), observed).await
        }
        Err(e) => {
            finish(ctx, obj, location, Outcome::failed(&e), Observed::default()).await?;
            Err(e)
        }
    }
}

/// Inserts or aligns the row on every node: (largest usage count, the tables using it,
/// node count).
async fn ensure(
    ctx: &Context,
    cluster: &KalamCluster,
    desired: &DesiredLocation,
) -> Result<(i64, Vec<String>, usize)> {
    let sql = AdminSql::connect(ctx, cluster).await?;
    let usage = sql.ensure_location(desired).await?;
    let tables = if usage > 0 {
        sql.tables_using_location(&desired.name).await?
    } else {
        Vec::new()
    };
    Ok((usage, tables, sql.node_count()))
}

async fn cleanup(obj: &StorageLocation, ctx: &Context) -> Result<Action> {
    if !is_managed(obj) || obj.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let Ok(desired) = validate(obj) else {
        return Ok(Action::await_change());
    };
    let namespace = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let cluster_name = &obj.spec.cluster_ref.name;
    let Some(cluster) = dbobject::fetch_cluster(ctx, &namespace, cluster_name).await? else {
        tracing::info!(cluster = %cluster_name, "the cluster is gone; nothing left to delete");
        return Ok(Action::await_change());
    };
    let peers: Vec<StorageLocation> = dbobject::list(ctx, &namespace).await?;
    if owner_among(obj, &desired.name, &peers).is_some() {
        return Ok(Action::await_change());
    }
    let location = Some(desired.name.as_str());
    match delete_everywhere(ctx, &cluster, &desired.name).await {
        Ok(DropOutcome::Dropped) => {
            tracing::info!(location = %desired.name, "storage location deleted");
            Ok(Action::await_change())
        }
        Ok(DropOutcome::Blocked(tables)) => {
            let message = format!(
                "storage location {} is still used by tables: {}; drop them first, or set \
                 deletionPolicy: Retain",
                desired.name,
                tables.join(", ")
            );
            let observed = Observed {
                usage_count: Some(tables.len() as i64),
                tables: tables,
            };
            let outcome = Outcome::DeleteBlocked(message.clone());
            finish(ctx, obj, location, outcome, observed).await?;
            Err(Error::DeleteBlocked(message))
        }
        Err(e) => {
            finish(ctx, obj, location, Outcome::failed(&e), Observed::default()).await?;
            Err(e)
        }
    }
}

async fn delete_everywhere(
    ctx: &Context,
    cluster: &KalamCluster,
    name: &str,
) -> Result<DropOutcome> {
    AdminSql::connect(ctx, cluster)
        .await?
        .delete_location(name)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loc(name: &str, spec: serde_json::Value) -> StorageLocation {
        serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "StorageLocation",
            "metadata": {"name": name, "namespace": "default", "generation": 1,
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn rows_follow_the_spec_and_name_credentials_by_location() {
        let d = validate(&loc(
            "cold",
            json!({"clusterRef": {"name": "kc"}, "type": "s3",
            "path": "s3://bucket/prefix", "credentialsSecretRef": {"name": "s3-creds"}}),
        ))
        .unwrap();
        assert_eq!(
            d,
            DesiredLocation {
                name: "cold".into(),
                location_type: LocationType::S3,
                path: "s3://bucket/prefix".into(),
                credentials_ref: Some("cold".into()),
            }
        );
        let d = validate(&loc(
            "my-fs",
            json!({"clusterRef": {"name": "kc"}, "name": "fs1",
            "type": "filesystem", "path": "/var/lib/kalamdb/extra"}),
        ))
        .unwrap();
        assert_eq!((d.name.as_str(), d.credentials_ref), ("fs1", None));
    }

    #[test]
    fn bad_names_and_paths_are_refused() {
        let cases = [
            (
                "my-fs",
                json!({"type": "filesystem", "path": "/x"}),
                "InvalidName",
            ),
            (
                "local",
                json!({"type": "filesystem", "path": "/x"}),
                "InvalidName",
            ),
            (
                "fs",
                json!({"type": "filesystem", "path": "relative/x"}),
                "InvalidSpec",
            ),
            (
                "fs",
                json!({"type": "filesystem", "path": "/a/../b"}),
                "InvalidSpec",
            ),
            (
                "s3",
                json!({"type": "s3", "path": "bucket/prefix"}),
                "InvalidSpec",
            ),
            ("s3", json!({"type": "s3", "path": "s3://"}), "InvalidSpec"),
        ];
        for (name, mut spec, reason) in cases {
            spec["clusterRef"] = json!({"name": "kc"});
            let e = validate(&loc(name, spec.clone())).unwrap_err();
            assert_eq!(e.reason, reason, "{name} {spec}");
        }
    }

    #[test]
    fn status_carries_usage_and_tables() {
        let obj = loc(
            "fs1",
            json!({"clusterRef": {"name": "kc"}, "type": "filesystem", "path": "/x"}),
        );
        let now = conditions::now();
        let s = desired_status(
            &obj,
            Some("fs1"),
            &Outcome::DeleteBlocked("in use".into()),
            &Observed {
                usage_count: Some(1),
                tables: vec!["app.t".into()],
            },
            &now,
        );
        assert_eq!(s.location_name.as_deref(), Some("fs1"));
        assert_eq!(
            (s.usage_count, s.tables.clone()),
            (1, vec!["app.t".to_string()])
        );
        assert_eq!(s.observed_generation, Some(1));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "DeleteBlocked")
        );
    }

    #[test]
    fn the_oldest_claim_on_a_location_name_wins() {
        let a = loc(
            "a",
            json!({"clusterRef": {"name": "kc"}, "name": "fs1", "type": "filesystem", "path": "/a"}),
        );
        let mut b = loc(
            "b",
            json!({"clusterRef": {"name": "kc"}, "name": "fs1", "type": "filesystem", "path": "/b"}),
        );
        b.metadata.creation_timestamp = a.metadata.creation_timestamp.clone();
        // Same creation time: the name decides.
        assert_eq!(
            owner_among(&b, "fs1", &[a.clone(), b.clone()]),
            Some("a".to_string())
        );
        assert_eq!(owner_among(&a, "fs1", &[a.clone(), b]), None);
    }
}
