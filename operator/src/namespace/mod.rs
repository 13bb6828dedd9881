//! The KalamNamespace reconciler: one database namespace, with its options, on every node of
//! the referenced cluster; drift (a namespace dropped or options changed by hand) is undone on
//! each resync, and the finalizer applies the deletion policy.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use crate::conditions;
use crate::conflict;
use crate::context::Context;
use crate::crd::{
    is_identifier, is_managed, is_scalar, DeletionPolicy, KalamCluster, KalamNamespace,
    KalamNamespaceStatus, ScalarMap,
};
use crate::dbobject::{self, DbObject, Outcome};
use crate::error::{Error, Invalid, Result};
use crate::sql::{AdminSql, DropOutcome};
use crate::status;

/// Label of this controller in metrics and logs.
pub const CONTROLLER: &str = "namespace";
/// Finalizer that applies the deletion policy.
pub const FINALIZER: &str = "kalamdb.io/namespace";
/// The namespace the node keeps for its own tables.
const RESERVED: &str = "system";

/// A spec the operator accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid {
    pub database: String,
    pub options: ScalarMap,
}

/// Checks the database name and the options (pure).
pub fn validate(obj: &KalamNamespace) -> Result<Valid, Invalid> {
    let database = obj.database_name();
    if !is_identifier(&database) {
        return Err(Invalid::new(
            "InvalidName",
            format!(
                "database namespace name '{database}' must match ^[a-z][a-z0-9_]*$ and have at \
                 most 63 characters; set spec.name"
            ),
        ));
    }
    if database == RESERVED {
        return Err(Invalid::new(
            "InvalidName",
            "'system' is reserved for the node's own tables",
        ));
    }
    for (key, value) in &obj.spec.options {
        if !is_identifier(key) {
            return Err(Invalid::new(
                "InvalidSpec",
                format!("option name '{key}' must match ^[a-z][a-z0-9_]*$"),
            ));
        }
        if !is_scalar(value) {
            return Err(Invalid::new(
                "InvalidSpec",
                format!("option {key} must be a string, a number or a boolean"),
            ));
        }
    }
    Ok(Valid {
        database,
        options: obj.spec.options.clone(),
    })
}

/// The object that owns the same database namespace, when it is not `obj` (pure).
pub fn owner_among(
    obj: &KalamNamespace,
    valid: &Valid,
    peers: &[KalamNamespace],
) -> Option<String> {
    let claimants: Vec<&KalamNamespace> = peers
        .iter()
        .filter(|p| {
            p.spec.cluster_ref == obj.spec.cluster_ref
                && is_managed(*p)
                && validate(p).is_ok_and(|v| v.database == valid.database)
        })
        .collect();
    conflict::other_owner(obj, &claimants)
}

/// What the nodes told beyond the outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Tables in the namespace, when it was looked at.
    pub table_count: Option<i64>,
    /// Tables that block a `Delete`.
    pub blocking_tables: Vec<String>,
}

/// The status for `outcome` (pure). Conditions keep their transition times when their status
/// did not change; a table count not looked at this time stays as it was.
pub fn desired_status(
    obj: &KalamNamespace,
    database: Option<&str>,
    outcome: &Outcome,
    observed: &Observed,
    now: &Time,
) -> KalamNamespaceStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let what = format!("namespace {}", database.unwrap_or("?"));
    let generation = obj.metadata.generation;
    KalamNamespaceStatus {
        database_name: database.map(str::to_string),
        table_count: observed
            .table_count
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .unwrap_or(previous.table_count),
        tables: observed.blocking_tables.clone(),
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &outcome.conditions("KalamNamespace", &what),
            generation,
            now,
        ),
    }
}

/// Reconciles one KalamNamespace (the controller's entry point).
pub async fn reconcile(obj: Arc<KalamNamespace>, ctx: Arc<Context>) -> Result<Action> {
    dbobject::reconcile(obj, ctx).await
}

/// The controller's `error_policy`: exponential backoff per object.
pub fn error_policy(obj: Arc<KalamNamespace>, error: &Error, ctx: Arc<Context>) -> Action {
    dbobject::error_policy(obj, error, ctx)
}

impl DbObject for KalamNamespace {
    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: &'static str = FINALIZER;

    fn apply<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>> {
        apply(self, ctx).boxed()
    }

    fn cleanup<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Action>> {
        cleanup(self, ctx).boxed()
    }
}

/// Writes the status for `outcome` (when it changed) and says when to look again.
async fn finish(
    ctx: &Context,
    obj: &KalamNamespace,
    database: Option<&str>,
    outcome: Outcome,
    observed: Observed,
) -> Result<Action> {
    let status = desired_status(obj, database, &outcome, &observed, &conditions::now());
    status::update(ctx, obj, &status).await?;
    Ok(outcome.requeue(ctx.resync))
}

/// The database side of `obj` must match its spec.
async fn apply(obj: &KalamNamespace, ctx: &Context) -> Result<Action> {
    if !is_managed(obj) {
        return finish(ctx, obj, None, Outcome::Unmanaged, Observed::default()).await;
    }
    let valid = match validate(obj) {
        Ok(v) => v,
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
    let database = Some(valid.database.as_str());
    let namespace = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let cluster_name = &obj.spec.cluster_ref.name;
    let cluster = dbobject::fetch_cluster(ctx, &namespace, cluster_name).await?;
    let cluster = match dbobject::ready_cluster(cluster_name, cluster) {
        Ok(c) => c,
        Err(why) => {
            let outcome = Outcome::ClusterNotReady(why);
            return finish(ctx, obj, database, outcome, Observed::default()).await;
        }
    };
    let peers: Vec<KalamNamespace> = dbobject::list(ctx, &namespace).await?;
    if let Some(owner) = owner_among(obj, &valid, &peers) {
        let outcome = Outcome::Conflict { owner };
        return finish(ctx, obj, database, outcome, Observed::default()).await;
    }
    match ensure(ctx, &cluster, &valid).await {
        Ok((tables, nodes)) => {
            let message = format!(
                "namespace {} matches the spec on {nodes} node(s) of KalamCluster {cluster_name}",
                valid.database
            );
            let observed = Observed {
                table_count: Some(tables),
                blocking_tables: Vec::new(),
            };
            finish(ctx, obj, database, Outcome::Applied(message), observed).await
        }
        Err(e) => {
            finish(ctx, obj, database, Outcome::failed(&e), Observed::default()).await?;
            Err(e)
        }
    }
}

/// Creates or aligns the namespace on every node: (largest table count, node count).
async fn ensure(ctx: &Context, cluster: &KalamCluster, valid: &Valid) -> Result<(i64, usize)> {
    let sql = AdminSql::connect(ctx, cluster).await?;
    let tables = sql
        .ensure_namespace(&valid.database, &valid.options)
        .await?;
    Ok((tables, sql.node_count()))
}

/// `obj` is being deleted: apply its deletion policy. An `Ok` lets the finalizer go.
async fn cleanup(obj: &KalamNamespace, ctx: &Context) -> Result<Action> {
    if !is_managed(obj) || obj.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    // An invalid spec was never applied: there is nothing to drop.
    let Ok(valid) = validate(obj) else {
        return Ok(Action::await_change());
    };
    let namespace = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let cluster_name = &obj.spec.cluster_ref.name;
    let Some(cluster) = dbobject::fetch_cluster(ctx, &namespace, cluster_name).await? else {
        tracing::info!(cluster = %cluster_name, "the cluster is gone; nothing left to drop");
        return Ok(Action::await_change());
    };
    let peers: Vec<KalamNamespace> = dbobject::list(ctx, &namespace).await?;
    if owner_among(obj, &valid, &peers).is_some() {
        // A losing claim never applied anything, so it never drops anything.
        return Ok(Action::await_change());
    }
    let database = Some(valid.database.as_str());
    match drop_everywhere(ctx, &cluster, &valid.database).await {
        Ok(DropOutcome::Dropped) => {
            tracing::info!(database = %valid.database, "namespace dropped");
            Ok(Action::await_change())
        }
        Ok(DropOutcome::Blocked(tables)) => {
            let message = format!(
                "namespace {} still has tables: {}; drop them first, or set deletionPolicy: Retain",
                valid.database,
                tables.join(", ")
            );
            let observed = Observed {
                table_count: Some(tables.len() as i64),
                blocking_tables: tables,
            };
            let outcome = Outcome::DeleteBlocked(message.clone());
            finish(ctx, obj, database, outcome, observed).await?;
            Err(Error::DeleteBlocked(message))
        }
        Err(e) => {
            finish(ctx, obj, database, Outcome::failed(&e), Observed::default()).await?;
            Err(e)
        }
    }
}

async fn drop_everywhere(
    ctx: &Context,
    cluster: &KalamCluster,
    database: &str,
) -> Result<DropOutcome> {
    AdminSql::connect(ctx, cluster)
        .await?
        .drop_namespace(database)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{DEGRADED, READY, RESOURCE_CONFLICT};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn ns(name: &str, spec: serde_json::Value) -> KalamNamespace {
        serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamNamespace",
            "metadata": {"name": name, "namespace": "default", "generation": 3,
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec
        }))
        .unwrap()
    }

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn names_default_to_the_object_name_and_must_be_identifiers() {
        let v = validate(&ns("app", json!({"clusterRef": {"name": "kc"}}))).unwrap();
        assert_eq!(v.database, "app");
        let v = validate(&ns(
            "my-app",
            json!({"clusterRef": {"name": "kc"}, "name": "my_app"}),
        ))
        .unwrap();
        assert_eq!(v.database, "my_app");
        let e = validate(&ns("my-app", json!({"clusterRef": {"name": "kc"}}))).unwrap_err();
        assert_eq!(e.reason, "InvalidName");
        assert!(e.message.contains("my-app"), "{}", e.message);
        let e = validate(&ns("system", json!({"clusterRef": {"name": "kc"}}))).unwrap_err();
        assert_eq!(e.reason, "InvalidName");
    }

    #[test]
    fn options_must_be_scalars_with_identifier_names() {
        let ok = ns(
            "app",
            json!({"clusterRef": {"name": "kc"}, "options": {"retention_days": 90, "tier": "gold", "x": true}}),
        );
        assert_eq!(validate(&ok).unwrap().options.len(), 3);
        for bad in [
            json!({"Bad-Key": 1}),
            json!({"nested": {"a": 1}}),
            json!({"list": [1]}),
            json!({"none": null}),
        ] {
            let e = validate(&ns(
                "app",
                json!({"clusterRef": {"name": "kc"}, "options": bad}),
            ))
            .unwrap_err();
            assert_eq!(e.reason, "InvalidSpec", "{bad}");
        }
    }

    #[test]
    fn the_oldest_claim_on_a_database_name_wins() {
        let mut first = ns(
            "first",
            json!({"clusterRef": {"name": "kc"}, "name": "app"}),
        );
        first.metadata.creation_timestamp = Some(at(100));
        let mut second = ns(
            "second",
            json!({"clusterRef": {"name": "kc"}, "name": "app"}),
        );
        second.metadata.creation_timestamp = Some(at(200));
        let other_cluster = {
            let mut o = ns(
                "other",
                json!({"clusterRef": {"name": "kc2"}, "name": "app"}),
            );
            o.metadata.creation_timestamp = Some(at(1));
            o
        };
        let peers = vec![first.clone(), second.clone(), other_cluster];
        let v2 = validate(&second).unwrap();
        assert_eq!(owner_among(&second, &v2, &peers), Some("first".to_string()));
        let v1 = validate(&first).unwrap();
        assert_eq!(owner_among(&first, &v1, &peers), None);
        // An unmanaged claim does not count.
        first
            .annotations_mut()
            .insert(crate::crd::MANAGED_ANNOTATION.into(), "false".into());
        assert_eq!(owner_among(&second, &v2, &[first, second.clone()]), None);
    }

    #[test]
    fn status_follows_the_outcome_and_keeps_what_was_not_looked_at() {
        let mut obj = ns("app", json!({"clusterRef": {"name": "kc"}}));
        let applied = desired_status(
            &obj,
            Some("app"),
            &Outcome::Applied("ok".into()),
            &Observed {
                table_count: Some(2),
                blocking_tables: vec![],
            },
            &at(10),
        );
        assert_eq!(applied.database_name.as_deref(), Some("app"));
        assert_eq!(applied.table_count, 2);
        assert_eq!(applied.observed_generation, Some(3));
        let ready = conditions::find(&applied.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Applied")
        );
        assert_eq!(ready.observed_generation, Some(3));

        obj.status = Some(applied.clone());
        // A resync with the same result computes the very same status: nothing to write.
        let again = desired_status(
            &obj,
            Some("app"),
            &Outcome::Applied("ok".into()),
            &Observed {
                table_count: Some(2),
                blocking_tables: vec![],
            },
            &at(99),
        );
        assert_eq!(again, applied);

        let blocked = desired_status(
            &obj,
            Some("app"),
            &Outcome::DeleteBlocked("tables: a, b".into()),
            &Observed {
                table_count: Some(2),
                blocking_tables: vec!["a".into(), "b".into()],
            },
            &at(20),
        );
        assert_eq!(blocked.tables, vec!["a", "b"]);
        let degraded = conditions::find(&blocked.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "DeleteBlocked")
        );
        assert_eq!(degraded.last_transition_time, at(20));

        let failed = desired_status(
            &obj,
            Some("app"),
            &Outcome::Failed {
                reason: "ClusterUnreachable",
                message: "refused".into(),
            },
            &Observed::default(),
            &at(30),
        );
        assert_eq!(failed.table_count, 2, "a count not looked at stays");
        assert!(failed.tables.is_empty());
        let conflict = conditions::find(&failed.conditions, RESOURCE_CONFLICT).unwrap();
        assert_eq!(conflict.status, "False");
    }
}
