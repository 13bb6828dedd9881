//! The KalamCluster reconciler: the ConfigMap, the two Services, the StatefulSet, the
//! PodDisruptionBudget and (when none is referenced) the JWT Secret of a cluster, applied
//! server-side, plus the growth of existing volumes and the status.
//!
//! Pipeline: fetch (StatefulSet, JWT Secret, StorageLocations) -> validate and plan the
//! storage ([`validate`], pure) -> build ([`build`], pure) -> apply -> status (pure) ->
//! patch when changed.

pub mod build;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conditions::{self, Desired, DEGRADED, PROGRESSING, READY};
use crate::context::{object_key, service_endpoint, Context, MANAGER};
use crate::crd::{is_managed, ClusterPhase, KalamCluster, KalamClusterStatus, StorageLocation};
use crate::dbobject;
use crate::error::{Error, Invalid, Result};
use crate::sql::secret_value;
use crate::status;
use build::{Credentials, Inputs};
use validate::{parse_quantity, DATA_VOLUME};

/// Label of this controller in metrics and logs.
pub const CONTROLLER: &str = "cluster";
/// The shortest JWT secret a node accepts (`jwt_secret`, docs/configuration.md).
const MIN_JWT_SECRET_BYTES: usize = 16;
/// Look again soon while pods start, roll or something is wrong.
const SETTLING: Duration = Duration::from_secs(15);

/// The credential sets to project: one per managed, valid StorageLocation of `cluster` that
/// references a Secret (the oldest claim of a name wins, as for the rows).
pub fn credentials_of(cluster: &str, locations: &[StorageLocation]) -> Vec<Credentials> {
    let mut out: Vec<Credentials> = locations
        .iter()
        .filter(|l| l.spec.cluster_ref.name == cluster && is_managed(*l))
        .filter_map(|l| {
            let secret = l.spec.credentials_secret_ref.as_ref()?;
            let desired = crate::location::validate(l).ok()?;
            crate::location::owner_among(l, &desired.name, locations)
                .is_none()
                .then(|| Credentials {
                    location: desired.name,
                    secret: secret.name.clone(),
                })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.location == b.location);
    out
}

/// The status (pure): replica counts from the StatefulSet, Ready when every replica of the
/// current spec is ready, Degraded when `problem` is set. `applied` says whether this
/// reconcile applied the workload (a refused spec does not).
pub fn desired_status(
    cluster: &KalamCluster,
    sts: Option<&StatefulSet>,
    problem: Option<&Invalid>,
    applied: bool,
    now: &Time,
) -> KalamClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let want = cluster.spec.replicas;
    let observed = sts.and_then(|s| s.status.as_ref());
    let replicas = observed.map(|s| s.replicas).unwrap_or(0);
    let ready = observed.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = observed.and_then(|s| s.updated_replicas).unwrap_or(0);
    let current = sts.is_some_and(|s| {
        let seen = s
            .status
            .as_ref()
            .and_then(|st| st.observed_generation)
            .unwrap_or(0);
        seen >= s.metadata.generation.unwrap_or(0)
    });
    let all_ready = current && replicas == want && updated >= want && ready >= want;
    let counts = format!("{ready}/{want} replicas ready");

    let ready_condition = if all_ready {
        Desired::new(READY, true, "AllReplicasReady", counts.clone())
    } else {
        Desired::new(READY, false, "ReplicasNotReady", counts.clone())
    };
    let progressing = if applied && !all_ready {
        Desired::new(PROGRESSING, true, "RollingOut", counts)
    } else if all_ready {
        Desired::new(PROGRESSING, false, "RolloutComplete", "")
    } else {
        let reason = problem.map(|p| p.reason).unwrap_or("Waiting");
        Desired::new(PROGRESSING, false, reason, "")
    };
    let degraded = match problem {
        Some(p) => Desired::new(DEGRADED, true, p.reason, p.message.clone()),
        None => Desired::new(DEGRADED, false, "AsExpected", ""),
    };
    let phase = if problem.is_some() {
        ClusterPhase::Degraded
    } else if all_ready {
        ClusterPhase::Ready
    } else if replicas == 0 && ready == 0 {
        ClusterPhase::Pending
    } else {
        ClusterPhase::Progressing
    };
    let generation = cluster.metadata.generation;
    KalamClusterStatus {
        phase,
        replicas,
        ready_replicas: ready,
        endpoint: Some(service_endpoint(&name, &namespace)),
        jwt_secret_name: Some(cluster.jwt_secret().0),
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &[ready_condition, progressing, degraded],
            generation,
            now,
        ),
    }
}

/// Reconciles one KalamCluster (the controller's entry point).
pub async fn reconcile(cluster: Arc<KalamCluster>, ctx: Arc<Context>) -> Result<Action> {
    let key = object_key(cluster.as_ref());
    ctx.measured(CONTROLLER, key, apply(&cluster, &ctx)).await
}

/// The controller's `error_policy`: exponential backoff per object.
pub fn error_policy(cluster: Arc<KalamCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after(&object_key(cluster.as_ref()), error)
}

async fn finish(
    ctx: &Context,
    cluster: &KalamCluster,
    sts: Option<&StatefulSet>,
    problem: Option<Invalid>,
    applied: bool,
) -> Result<Action> {
    let status = desired_status(cluster, sts, problem.as_ref(), applied, &conditions::now());
    let ready = status.phase == ClusterPhase::Ready;
    status::update(ctx, cluster, &status).await?;
    Ok(Action::requeue(if ready { ctx.resync } else { SETTLING }))
}

async fn apply(cluster: &KalamCluster, ctx: &Context) -> Result<Action> {
    let name = cluster
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let client = ctx.client.clone();

    // Fetch what the plan depends on.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let existing = statefulsets.get_opt(&name).await?;
    let plan = validate::name(&name)
        .and_then(|()| validate::validate(&cluster.spec))
        .and_then(|()| validate::storage_plan(&cluster.spec.storage, existing.as_ref()));
    let plan = match plan {
        Ok(p) => p,
        Err(problem) => return finish(ctx, cluster, existing.as_ref(), Some(problem), false).await,
    };
    let (jwt_name, jwt_key) = cluster.jwt_secret();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get_opt(&jwt_name).await?;
    let locations: Vec<StorageLocation> = dbobject::list(ctx, &namespace).await?;

    let mut inputs = Inputs {
        cluster,
        credentials: credentials_of(&name, &locations),
        name,
        namespace: namespace.clone(),
        owner,
        jwt: (jwt_name.clone(), jwt_key.clone()),
        storage: plan.template.clone(),
        applied_size: plan.applied.clone(),
        jwt_digest: String::new(),
    };

    // The JWT Secret: referenced and present, or generated once. Its digest is part of the
    // pods' config hash: the pods read the secret when they start, so a rotated Secret rolls
    // them (at the next reconcile; the operator's own tokens use the new value at once).
    let jwt_value = secret.as_ref().and_then(|s| secret_value(s, &jwt_key));
    match (&secret, jwt_value) {
        // The node refuses a secret shorter than this, and would not start.
        (_, Some(v)) if v.len() < MIN_JWT_SECRET_BYTES => {
            let problem = Invalid::new(
                "JwtSecretMissing",
                format!(
                    "Secret {jwt_name} key {jwt_key} holds fewer than {MIN_JWT_SECRET_BYTES} \
                     bytes, which the nodes refuse"
                ),
            );
            return finish(ctx, cluster, existing.as_ref(), Some(problem), false).await;
        }
        (_, Some(v)) => inputs.jwt_digest = build::digest(&v),
        (None, None) if cluster.generates_jwt_secret() => {
            if let Some(value) = create_jwt_secret(ctx, &secrets, &inputs).await? {
                inputs.jwt_digest = build::digest(value.as_bytes());
            }
        }
        (found, None) => {
            let why = match found {
                Some(_) => format!("Secret {jwt_name} has no non-empty key {jwt_key}"),
                None => format!("Secret {jwt_name} (spec.jwtSecretRef) does not exist"),
            };
            let problem = Invalid::new("JwtSecretMissing", why);
            return finish(ctx, cluster, existing.as_ref(), Some(problem), false).await;
        }
    }

    // A credential set is projected only when its Secret holds the keys the projection
    // requires: one that does not would keep every pod from starting (the projection is not
    // optional, or the node would start without credentials it needs), so it is left out and
    // the cluster says which, and the StorageLocation can still be fixed or deleted.
    let mut problem = None;
    let mut missing = Vec::new();
    let mut projected = Vec::with_capacity(inputs.credentials.len());
    for c in std::mem::take(&mut inputs.credentials) {
        let found = secrets.get_opt(&c.secret).await?;
        let complete = found.is_some_and(|s| {
            build::REQUIRED_CREDENTIAL_KEYS
                .iter()
                .all(|k| secret_value(&s, k).is_some())
        });
        if complete {
            projected.push(c);
        } else {
            missing.push(format!("{} (Secret {})", c.location, c.secret));
        }
    }
    inputs.credentials = projected;
    if !missing.is_empty() {
        problem = Some(Invalid::new(
            "CredentialsSecretMissing",
            format!(
                "not projected, their Secret is missing or lacks {}: {}",
                build::REQUIRED_CREDENTIAL_KEYS.join(" or "),
                missing.join(", ")
            ),
        ));
    }

    // Grow the volumes before recording the new size.
    if plan.grow_volumes {
        match grow_volumes(&client, &inputs, &plan.target).await? {
            None => inputs.applied_size = plan.target.clone(),
            Some(failure) => {
                problem = problem.or(Some(Invalid::new("VolumeExpansionFailed", failure)))
            }
        }
    } else {
        inputs.applied_size = plan.target.clone();
    }

    let desired = match build::desired(&inputs) {
        Ok(d) => d,
        Err(p) => return finish(ctx, cluster, existing.as_ref(), Some(p), false).await,
    };
    apply_object(&client, &namespace, &desired.config_map).await?;
    apply_object(&client, &namespace, &desired.headless).await?;
    apply_object(&client, &namespace, &desired.client).await?;
    let sts = apply_object(&client, &namespace, &desired.stateful_set).await?;
    match &desired.pdb {
        Some(pdb) => {
            apply_object(&client, &namespace, pdb).await?;
        }
        None => delete_pdb(&client, &namespace, &inputs.name).await?,
    }
    finish(ctx, cluster, Some(&sts), problem, true).await
}

/// Server-side apply of `obj`, owned by the operator's field manager.
async fn apply_object<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

async fn delete_pdb(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// 32 random bytes, hex: the value of a generated JWT secret.
fn random_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the generated JWT Secret; returns its value, or `None` when another operator
/// created it meanwhile (read at the next reconcile).
async fn create_jwt_secret(
    ctx: &Context,
    secrets: &Api<Secret>,
    inputs: &Inputs<'_>,
) -> Result<Option<String>> {
    let value = random_secret();
    let secret = build::jwt_secret(inputs, value.clone());
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %inputs.jwt.0, "created the JWT Secret");
            let event = Event {
                type_: EventType::Normal,
                reason: "JwtSecretCreated".into(),
                note: Some(format!(
                    "created Secret {} with a random JWT secret",
                    inputs.jwt.0
                )),
                action: "Reconcile".into(),
                secondary: None,
            };
            ctx.publish(event, &inputs.cluster.object_ref(&())).await;
            Ok(Some(value))
        }
        // Created meanwhile (by the previous leader): it is never replaced.
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Asks for every PVC of the cluster smaller than `target` to grow; returns what failed.
async fn grow_volumes(
    client: &Client,
    inputs: &Inputs<'_>,
    target: &str,
) -> Result<Option<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &inputs.namespace);
    let selector = build::selector_text(&inputs.name);
    let claims = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let prefix = format!("{DATA_VOLUME}-{}-", inputs.name);
    let want = parse_quantity(target).unwrap_or(0);
    let mut failures = Vec::new();
    for claim in claims {
        let name = claim.name_any();
        let have = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0);
        if !name.starts_with(&prefix) || have >= want {
            continue;
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": target}}}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(pvc = %name, size = %target, "volume expansion requested"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Ok((!failures.is_empty()).then(|| {
        format!(
            "cannot grow the volumes to {target} (does the StorageClass allow volume expansion?): {}",
            failures.join("; ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::find;
    use serde_json::json;

    fn cluster(spec: serde_json::Value) -> KalamCluster {
        serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
            "metadata": {"name": "kc", "namespace": "db", "uid": "u-1", "generation": 2},
            "spec": spec
        }))
        .unwrap()
    }

    fn sts(status: serde_json::Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "kc", "generation": 5},
            "spec": {"selector": {}, "template": {}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn ready_when_every_replica_of_the_current_spec_is_ready() {
        let c = cluster(json!({"replicas": 3}));
        let now = conditions::now();
        let rolling = sts(
            json!({"replicas": 3, "readyReplicas": 1, "updatedReplicas": 3, "observedGeneration": 5}),
        );
        let s = desired_status(&c, Some(&rolling), None, true, &now);
        assert_eq!(s.phase, ClusterPhase::Progressing);
        assert_eq!((s.replicas, s.ready_replicas), (3, 1));
        assert_eq!(s.endpoint.as_deref(), Some("http://kc.db.svc:8080"));
        assert_eq!(s.jwt_secret_name.as_deref(), Some("kc-jwt"));
        assert_eq!(s.observed_generation, Some(2));
        let progressing = find(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RollingOut")
        );

        let done = sts(
            json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "observedGeneration": 5}),
        );
        let s = desired_status(&c, Some(&done), None, true, &now);
        assert_eq!(s.phase, ClusterPhase::Ready);
        let ready = find(&s.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllReplicasReady")
        );
        assert_eq!(ready.message, "3/3 replicas ready");

        // The StatefulSet controller has not seen the new spec yet.
        let stale = sts(
            json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "observedGeneration": 4}),
        );
        assert_eq!(
            desired_status(&c, Some(&stale), None, true, &now).phase,
            ClusterPhase::Progressing
        );

        let fresh = sts(json!({"replicas": 0}));
        assert_eq!(
            desired_status(&c, Some(&fresh), None, true, &now).phase,
            ClusterPhase::Pending
        );
    }

    #[test]
    fn a_problem_is_degraded_with_its_reason() {
        let c = cluster(json!({}));
        let problem = Invalid::new("StorageShrinkRefused", "nothing was changed");
        let s = desired_status(&c, None, Some(&problem), false, &conditions::now());
        assert_eq!(s.phase, ClusterPhase::Degraded);
        let degraded = find(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "StorageShrinkRefused")
        );
        let progressing = find(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "StorageShrinkRefused")
        );
    }

    #[test]
    fn an_unchanged_cluster_computes_an_identical_status() {
        let mut c = cluster(json!({}));
        let done = sts(
            json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 5}),
        );
        let first = desired_status(&c, Some(&done), None, true, &conditions::now());
        c.status = Some(first.clone());
        let second = desired_status(&c, Some(&done), None, true, &conditions::now());
        assert_eq!(first, second);
    }

    fn location(name: &str, cluster: &str, secret: Option<&str>, created: &str) -> StorageLocation {
        let mut spec = json!({"clusterRef": {"name": cluster}, "type": "s3", "path": "s3://b/p"});
        if let Some(s) = secret {
            spec["credentialsSecretRef"] = json!({"name": s});
        }
        serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "StorageLocation",
            "metadata": {"name": name, "namespace": "db", "creationTimestamp": created},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn credentials_come_from_this_clusters_locations_with_a_secret() {
        let mut unmanaged = location("off", "kc", Some("s-off"), "2026-01-01T00:00:00Z");
        unmanaged
            .annotations_mut()
            .insert(crate::crd::MANAGED_ANNOTATION.into(), "false".into());
        let locations = vec![
            location("zeta", "kc", Some("s-zeta"), "2026-01-01T00:00:00Z"),
            location("alpha", "kc", Some("s-alpha"), "2026-01-01T00:00:00Z"),
            location("plain", "kc", None, "2026-01-01T00:00:00Z"),
            location("elsewhere", "other", Some("s-x"), "2026-01-01T00:00:00Z"),
            location("bad-name", "kc", Some("s-bad"), "2026-01-01T00:00:00Z"),
            unmanaged,
        ];
        assert_eq!(
            credentials_of("kc", &locations),
            vec![
                Credentials {
                    location: "alpha".into(),
                    secret: "s-alpha".into()
                },
                Credentials {
                    location: "zeta".into(),
                    secret: "s-zeta".into()
                },
            ]
        );
    }
}
