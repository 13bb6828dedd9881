//! Objects and scripts the flows share: the Ready cluster, its JWT Secret, database objects,
//! list and status answers, and the Context wired to the fake API server and a node.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kalam_operator::context::{Context, EndpointOverride};
use kalam_operator::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::mock::Exchange;
use crate::node::TEST_SECRET;

pub const NS: &str = "default";
pub const CLUSTER: &str = "kc";
pub const CLUSTER_PATH: &str = "/apis/kalamdb.io/v1alpha1/namespaces/default/kalamclusters/kc";
pub const SECRET_PATH: &str = "/api/v1/namespaces/default/secrets/kc-jwt";
pub const NAMESPACES_PATH: &str = "/apis/kalamdb.io/v1alpha1/namespaces/default/kalamnamespaces";
pub const LOCATIONS_PATH: &str = "/apis/kalamdb.io/v1alpha1/namespaces/default/storagelocations";

/// A Context whose client is `client` and whose SQL for `default/kc` goes to `url`.
pub fn context(client: kube::Client, url: &str) -> Arc<Context> {
    let overrides = vec![EndpointOverride {
        namespace: NS.into(),
        cluster: CLUSTER.into(),
        url: url.into(),
    }];
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    Context::new(
        client,
        metrics,
        overrides,
        Some("it".into()),
        kalam_operator::dbobject::RESYNC,
    )
}

pub fn parse<K: DeserializeOwned>(v: &Value) -> K {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

/// The KalamCluster `kc`, Ready or not.
pub fn cluster(ready: bool) -> Value {
    let status = if ready { "True" } else { "False" };
    let reason = if ready {
        "AllReplicasReady"
    } else {
        "ReplicasNotReady"
    };
    json!({
        "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
        "metadata": {"name": CLUSTER, "namespace": NS, "uid": "uid-kc", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": 1},
        "status": {"phase": if ready { "Ready" } else { "Progressing" },
                   "replicas": 1, "readyReplicas": if ready { 1 } else { 0 },
                   "jwtSecretName": "kc-jwt",
                   "conditions": [{"type": "Ready", "status": status, "reason": reason,
                                   "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

/// The generated JWT Secret of `kc`, holding the node's secret.
pub fn jwt_secret() -> Value {
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("kc-jwt".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "jwt_secret".to_string(),
            ByteString(TEST_SECRET.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    serde_json::to_value(secret).expect("JSON")
}

/// A database object of `kind` named `name`, created at `created`, with `finalizer` on it.
pub fn object(
    kind: &str,
    name: &str,
    created: &str,
    finalizer: Option<&str>,
    spec: Value,
) -> Value {
    let mut obj = json!({
        "apiVersion": "kalamdb.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "generation": 1, "resourceVersion": "1", "creationTimestamp": created},
        "spec": spec
    });
    if let Some(f) = finalizer {
        obj["metadata"]["finalizers"] = json!([f]);
    }
    obj
}

/// `obj` marked for deletion.
pub fn deleting(mut obj: Value) -> Value {
    obj["metadata"]["deletionTimestamp"] = json!("2026-06-01T00:00:00Z");
    obj
}

/// `obj` with its status set from a status apply body.
pub fn with_status(mut obj: Value, apply_body: &Value) -> Value {
    obj["status"] = apply_body["status"].clone();
    obj
}

/// `obj` with the generation bumped and `spec` replaced (a user edit).
pub fn edited(mut obj: Value, spec: Value) -> Value {
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    obj["metadata"]["generation"] = json!(generation);
    obj["spec"] = spec;
    obj
}

/// A list answer of `kind` objects.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "1"}, "items": items})
}

/// A status patch of `obj` at `path`, answered with `obj` carrying the new status.
pub fn status_patch(path: &str, obj: &Value) -> Exchange {
    let obj = obj.clone();
    Exchange::patch(format!("{path}/status")).reply_with(move |body| with_status(obj.clone(), body))
}

/// A finalizer patch of `obj` at `path`, answered with `after`.
pub fn finalizer_patch(path: &str, after: Value) -> Exchange {
    Exchange::patch(path).reply(200, after)
}

/// The reads every apply of a database object makes before its SQL: the cluster, the other
/// objects of the kind (for the conflict rule), the JWT Secret.
pub fn reads(list_path: &str, peers: Value) -> Vec<Exchange> {
    vec![
        Exchange::get(CLUSTER_PATH).reply(200, cluster(true)),
        Exchange::get(list_path).reply(200, peers),
        Exchange::get(SECRET_PATH).reply(200, jwt_secret()),
    ]
}

/// The condition `type_` of a status apply body.
pub fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"))
}

/// `(status, reason)` of the condition `type_`.
pub fn cond(body: &Value, type_: &str) -> (String, String) {
    let c = condition(body, type_);
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

pub fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}
