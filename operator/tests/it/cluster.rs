//! KalamCluster flows against the fake API server (no pods run here: the StatefulSet's
//! status is scripted).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kalam_operator::cluster::reconcile;
use kalam_operator::crd::KalamCluster;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::fixtures::*;
use crate::mock::{api_server, ApiServer, Exchange, Transcript};

const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/kc";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const CONFIG_MAP: &str = "/api/v1/namespaces/default/configmaps/kc-config";
const HEADLESS: &str = "/api/v1/namespaces/default/services/kc-headless";
const SERVICE: &str = "/api/v1/namespaces/default/services/kc";
const PDB: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/kc";
const PVCS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";

fn new_cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
        "metadata": {"name": CLUSTER, "namespace": NS, "uid": "uid-kc", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec
    })
}

async fn reconcile_with(
    api: &mut ApiServer,
    ctx: &Arc<kalam_operator::Context>,
    obj: &Value,
    script: Vec<Exchange>,
) -> (kalam_operator::Result<Action>, Transcript) {
    let typed: KalamCluster = parse(obj);
    api.run(script, reconcile(Arc::new(typed), ctx.clone()))
        .await
}

/// A StatefulSet as the API server would hold it: `template_size` in its claim template,
/// `annotation` as the applied size, all `ready` of one replica ready when `ready`.
fn existing_sts(template_size: &str, annotation: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "kc", "namespace": NS, "generation": 1,
                     "annotations": {"kalamdb.io/storage-size": annotation}},
        "spec": {"selector": {}, "template": {}, "serviceName": "kc-headless",
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"resources": {"requests": {"storage": template_size}}}}]},
        "status": ready_status(ready)
    })
}

fn ready_status(ready: bool) -> Value {
    let n = if ready { 1 } else { 0 };
    json!({"replicas": 1, "readyReplicas": n, "updatedReplicas": 1, "observedGeneration": 1})
}

/// The StatefulSet apply, answered with the applied object and a ready status.
fn sts_apply(ready: bool) -> Exchange {
    Exchange::patch(STS).reply_with(move |body| {
        let mut sts = body.clone();
        sts["metadata"]["generation"] = json!(1);
        sts["status"] = ready_status(ready);
        sts
    })
}

/// The applies of the ConfigMap, the Services and then `sts` (the StatefulSet apply).
fn children(sts: Exchange) -> Vec<Exchange> {
    vec![
        Exchange::patch(CONFIG_MAP).echo(),
        Exchange::patch(HEADLESS).echo(),
        Exchange::patch(SERVICE).echo(),
        sts,
    ]
}

const S3_CREDS: &str = "/api/v1/namespaces/default/secrets/s3-creds";

/// The Secret `s3-creds` holding `keys` (each with a value).
fn s3_creds(keys: &[&str]) -> Value {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| (k.to_string(), json!("dmFsdWU=")))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "s3-creds", "namespace": NS}, "data": data})
}

fn no_locations() -> Exchange {
    Exchange::get(LOCATIONS_PATH).reply(200, list("StorageLocation", vec![]))
}

fn pvc(name: &str, size: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"app.kubernetes.io/name": "kalamdb", "app.kubernetes.io/instance": "kc"}},
           "spec": {"resources": {"requests": {"storage": size}}}})
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_generated_secret() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({"replicas": 2}));
    let location = object(
        "StorageLocation",
        "cold",
        "2026-01-01T00:00:00Z",
        None,
        json!({
        "clusterRef": {"name": "kc"}, "type": "s3", "path": "s3://bucket/cold",
        "credentialsSecretRef": {"name": "s3-creds"}}),
    );
    let mut script = vec![
        Exchange::get(STS).not_found(),
        Exchange::get(SECRET_PATH).not_found(),
        Exchange::get(LOCATIONS_PATH).reply(200, list("StorageLocation", vec![location])),
        Exchange::post(SECRETS).echo(),
        Exchange::get(S3_CREDS).reply(200, s3_creds(&["access_key_id", "secret_access_key"])),
    ];
    // Just created: the StatefulSet controller has not reported anything yet.
    script.extend(children(Exchange::patch(STS).echo()));
    script.push(Exchange::patch(PDB).echo());
    script.push(status_patch(CLUSTER_PATH, &cluster));
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(15)));

    // The generated Secret: 32 random bytes as hex, owned by the cluster.
    let secret: Secret = parse(seen.body(&Method::POST, SECRETS));
    assert_eq!(secret.metadata.name.as_deref(), Some("kc-jwt"));
    let value = &secret.data.as_ref().expect("data")["jwt_secret"].0;
    assert_eq!(value.len(), 64);
    assert!(value.iter().all(u8::is_ascii_hexdigit));
    assert_eq!(
        secret.metadata.owner_references.as_ref().expect("owner")[0].uid,
        "uid-kc"
    );

    // Every child is applied server-side by the operator's field manager, forced.
    for path in [CONFIG_MAP, HEADLESS, SERVICE, STS, PDB] {
        let query = &seen.request(&Method::PATCH, path).query;
        assert!(
            query.contains("fieldManager=kalam-operator") && query.contains("force=true"),
            "{path}: {query}"
        );
        assert_eq!(
            seen.body(&Method::PATCH, path)["metadata"]["ownerReferences"][0]["uid"],
            "uid-kc"
        );
    }
    let sts: StatefulSet = parse(seen.body(&Method::PATCH, STS));
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let volumes = serde_json::to_value(spec.template.spec.expect("pod").volumes).unwrap();
    assert_eq!(
        volumes[1]["projected"]["sources"][0]["secret"]["name"],
        "s3-creds"
    );
    assert_eq!(
        volumes[1]["projected"]["sources"][0]["secret"]["items"][0]["path"],
        "cold/access_key_id"
    );

    let body = seen.status_patch();
    assert_eq!(body["status"]["phase"], "Pending");
    assert_eq!(body["status"]["endpoint"], "http://kc.default.svc:8080");
    assert_eq!(body["status"]["jwtSecretName"], "kc-jwt");
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert_eq!(cond(body, "Ready"), pair("False", "ReplicasNotReady"));
    assert_eq!(cond(body, "Progressing"), pair("True", "RollingOut"));
    assert_eq!(cond(body, "Degraded"), pair("False", "AsExpected"));
    assert!(
        seen.event_reasons()
            .contains(&"JwtSecretCreated".to_string()),
        "{:?}",
        seen.events
    );
}

#[tokio::test]
async fn ready_replicas_make_a_ready_cluster_and_a_resync_writes_nothing() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({}));
    let script = |status: bool| {
        let mut s = vec![
            Exchange::get(STS).reply(200, existing_sts("10Gi", "10Gi", true)),
            Exchange::get(SECRET_PATH).reply(200, jwt_secret()),
            no_locations(),
        ];
        s.extend(children(sts_apply(true)));
        s.push(Exchange::patch(PDB).echo());
        if status {
            s.push(status_patch(CLUSTER_PATH, &cluster));
        }
        s
    };
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script(true)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let body = seen.status_patch();
    assert_eq!(body["status"]["phase"], "Ready");
    assert_eq!(
        (
            body["status"]["replicas"].clone(),
            body["status"]["readyReplicas"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(cond(body, "Ready"), pair("True", "AllReplicasReady"));
    assert_eq!(cond(body, "Progressing"), pair("False", "RolloutComplete"));
    assert!(seen
        .event_reasons()
        .contains(&"AllReplicasReady".to_string()));
    // The existing Secret is used as it is.
    assert!(seen.requests.iter().all(|s| s.method != Method::POST));

    let cluster = with_status(cluster.clone(), body);
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script(false)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert!(seen.status_patches().is_empty());
}

#[tokio::test]
async fn a_storage_shrink_is_refused_and_nothing_is_applied() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({"storage": {"size": "15Gi"}}));
    let script = vec![
        Exchange::get(STS).reply(200, existing_sts("10Gi", "20Gi", true)),
        status_patch(CLUSTER_PATH, &cluster),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(15)));
    let body = seen.status_patch();
    assert_eq!(body["status"]["phase"], "Degraded");
    assert_eq!(cond(body, "Degraded"), pair("True", "StorageShrinkRefused"));
    assert_eq!(
        cond(body, "Ready"),
        pair("True", "AllReplicasReady"),
        "the running pods still serve"
    );
    assert!(seen
        .event_reasons()
        .contains(&"StorageShrinkRefused".to_string()));
}

#[tokio::test]
async fn a_storage_growth_expands_the_volumes_before_recording_the_size() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({"storage": {"size": "20Gi"}}));
    let claims = list(
        "PersistentVolumeClaim",
        vec![
            pvc("data-kc-0", "10Gi"),
            pvc("data-kc-1", "10Gi"),
            pvc("scratch-kc-0", "1Gi"),
        ],
    );
    let prelude = |claims: &Value| {
        vec![
            Exchange::get(STS).reply(200, existing_sts("10Gi", "10Gi", true)),
            Exchange::get(SECRET_PATH).reply(200, jwt_secret()),
            no_locations(),
            Exchange::get(PVCS).reply(200, claims.clone()),
        ]
    };

    // One volume cannot grow: Degraded, and the recorded size stays.
    let mut script = prelude(&claims);
    script.push(Exchange::patch(format!("{PVCS}/data-kc-0")).reply(200, pvc("data-kc-0", "20Gi")));
    script.push(Exchange::patch(format!("{PVCS}/data-kc-1")).reply(
        422,
        crate::mock::status_body(
            422,
            "Invalid",
            "only dynamically provisioned pvc can be resized",
        ),
    ));
    script.extend(children(sts_apply(true)));
    script.push(Exchange::patch(PDB).echo());
    script.push(status_patch(CLUSTER_PATH, &cluster));
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    action.unwrap();
    assert!(seen
        .request(&Method::GET, PVCS)
        .query
        .contains("labelSelector="));
    assert_eq!(
        seen.body(&Method::PATCH, &format!("{PVCS}/data-kc-0")),
        &json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})
    );
    let sts = seen.body(&Method::PATCH, STS);
    assert_eq!(
        sts["metadata"]["annotations"]["kalamdb.io/storage-size"],
        "10Gi"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi",
        "the claim template is immutable"
    );
    let body = seen.status_patch();
    assert_eq!(
        cond(body, "Degraded"),
        pair("True", "VolumeExpansionFailed")
    );
    let message = condition(body, "Degraded")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("data-kc-1"), "{message}");

    // Both grow: the new size is recorded.
    let cluster = with_status(cluster, body);
    let mut script = prelude(&claims);
    script.push(Exchange::patch(format!("{PVCS}/data-kc-0")).reply(200, pvc("data-kc-0", "20Gi")));
    script.push(Exchange::patch(format!("{PVCS}/data-kc-1")).reply(200, pvc("data-kc-1", "20Gi")));
    script.extend(children(sts_apply(true)));
    script.push(Exchange::patch(PDB).echo());
    script.push(status_patch(CLUSTER_PATH, &cluster));
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert_eq!(
        seen.body(&Method::PATCH, STS)["metadata"]["annotations"]["kalamdb.io/storage-size"],
        "20Gi"
    );
    assert_eq!(
        cond(seen.status_patch(), "Degraded"),
        pair("False", "AsExpected")
    );
}

#[tokio::test]
async fn a_referenced_secret_is_used_and_a_disabled_pdb_is_deleted() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({"jwtSecretRef": {"name": "kc-jwt"},
                                     "podDisruptionBudget": {"enabled": false}}));
    let mut script = vec![
        Exchange::get(STS).not_found(),
        Exchange::get(SECRET_PATH).reply(200, jwt_secret()),
        no_locations(),
    ];
    script.extend(children(sts_apply(false)));
    script.push(Exchange::delete(PDB).not_found());
    script.push(status_patch(CLUSTER_PATH, &cluster));
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    action.unwrap();
    let env =
        &seen.body(&Method::PATCH, STS)["spec"]["template"]["spec"]["containers"][0]["env"][1];
    assert_eq!(
        env["valueFrom"]["secretKeyRef"],
        json!({"name": "kc-jwt", "key": "jwt_secret"})
    );
}

#[tokio::test]
async fn a_missing_referenced_secret_or_a_bad_config_is_degraded() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({"jwtSecretRef": {"name": "mine"}}));
    let script = vec![
        Exchange::get(STS).not_found(),
        Exchange::get("/api/v1/namespaces/default/secrets/mine").not_found(),
        no_locations(),
        status_patch(CLUSTER_PATH, &cluster),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(15)));
    assert_eq!(
        cond(seen.status_patch(), "Degraded"),
        pair("True", "JwtSecretMissing")
    );
    assert_eq!(seen.status_patch()["status"]["phase"], "Degraded");

    // A referenced secret shorter than the nodes accept.
    let cluster = new_cluster(json!({"jwtSecretRef": {"name": "mine"}}));
    let short = json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "mine", "namespace": NS},
                       "data": {"jwt_secret": "c2hvcnQ="}});
    let script = vec![
        Exchange::get(STS).not_found(),
        Exchange::get("/api/v1/namespaces/default/secrets/mine").reply(200, short),
        no_locations(),
        status_patch(CLUSTER_PATH, &cluster),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    action.unwrap();
    assert_eq!(
        cond(seen.status_patch(), "Degraded"),
        pair("True", "JwtSecretMissing")
    );
    let message = condition(seen.status_patch(), "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("16 bytes"), "{message}");

    let cluster = new_cluster(json!({"config": {"data_dir": "/elsewhere"}}));
    let script = vec![
        Exchange::get(STS).not_found(),
        status_patch(CLUSTER_PATH, &cluster),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
    action.unwrap();
    let body = seen.status_patch();
    assert_eq!(cond(body, "Degraded"), pair("True", "InvalidSpec"));
    let message = condition(body, "Degraded")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("config.data_dir"), "{message}");
}

/// A StorageLocation whose credentials Secret is missing, or lacks a key the projection
/// requires, is left out of the pods' credentials (a projection of it would keep every pod
/// from starting) and the cluster is Degraded naming it; the rest is applied as usual.
#[tokio::test]
async fn credentials_whose_secret_is_missing_are_not_projected_and_said_so() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let cluster = new_cluster(json!({}));
    let location = object(
        "StorageLocation",
        "cold",
        "2026-01-01T00:00:00Z",
        None,
        json!({
        "clusterRef": {"name": "kc"}, "type": "s3", "path": "s3://bucket/cold",
        "credentialsSecretRef": {"name": "s3-creds"}}),
    );
    for secret in [
        Exchange::get(S3_CREDS).not_found(),
        Exchange::get(S3_CREDS).reply(200, s3_creds(&["access_key_id"])),
    ] {
        let mut script = vec![
            Exchange::get(STS).not_found(),
            Exchange::get(SECRET_PATH).reply(200, jwt_secret()),
            Exchange::get(LOCATIONS_PATH)
                .reply(200, list("StorageLocation", vec![location.clone()])),
            secret,
        ];
        script.extend(children(Exchange::patch(STS).echo()));
        script.push(Exchange::patch(PDB).echo());
        script.push(status_patch(CLUSTER_PATH, &cluster));
        let (action, seen) = reconcile_with(&mut api, &ctx, &cluster, script).await;
        action.unwrap();
        let sts: StatefulSet = parse(seen.body(&Method::PATCH, STS));
        let volumes =
            serde_json::to_value(sts.spec.expect("spec").template.spec.expect("pod").volumes)
                .unwrap();
        assert!(
            !volumes.to_string().contains("s3-creds"),
            "not projected: {volumes}"
        );
        let body = seen.status_patch();
        assert_eq!(
            cond(body, "Degraded"),
            pair("True", "CredentialsSecretMissing")
        );
        let message = condition(body, "Degraded")["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("cold (Secret s3-creds)"), "{message}");
    }
}
