//! The operator's whole job against the real API server: the binary runs as the chart's
//! ServiceAccount (so the chart's RBAC is what it gets), `examples/` are applied, a stand-in
//! pod runs `kalamdb` from what the operator stored, and the database follows the resources.
//!
//! The S3 location is real too: a `moto_server` (installed by `.ci/run`) on loopback, reached
//! with the credentials the operator projected into the pod from the example's Secret.

use std::process::Stdio;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kalam_e2e::control_plane::ControlPlane;
use kalam_e2e::kube_api::{
    apply, apply_all, condition, get_json, mark_statefulset_ready, service_account_token, wait_for,
    wait_gone, yaml_file,
};
use kalam_e2e::operator::{Operator, OperatorArgs};
use kalam_e2e::pod::Pod;
use kalam_e2e::process::{die_with_parent_tokio, eventually, free_port};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

use crate::chart::render;
use crate::common::{kalam_path, setup, SETTLE};

const S3_SECRET_KEY: &str = "e2e-secret-access-key-7f3a";
const BUCKET: &str = "kalam-e2e";

/// An in-memory S3 (`moto_server`) on loopback with one bucket.
struct Moto {
    _child: tokio::process::Child,
    url: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = free_port();
        let mut cmd = tokio::process::Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        die_with_parent_tokio(&mut cmd);
        let child = cmd
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; .ci/run does it)");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let bucket = format!("{url}/{BUCKET}");
        eventually("moto_server to create a bucket", SETTLE, || async {
            match http.put(&bucket).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        Moto { _child: child, url }
    }

    /// Keys of the objects in the bucket.
    async fn keys(&self) -> Vec<String> {
        let body = reqwest::get(format!("{}/{BUCKET}?list-type=2", self.url))
            .await
            .expect("listing the bucket")
            .text()
            .await
            .expect("the listing");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

/// A JSON merge patch of `name`, as `kubectl patch --type merge`; panics with `what`.
async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value, what: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn has_condition(obj: &Value, type_: &str, status: &str) -> Result<(), String> {
    match condition(obj, type_) {
        Some((s, _)) if s == status => Ok(()),
        other => Err(format!("{type_} is {other:?}, want {status}")),
    }
}

fn observed_current(obj: &Value) -> Result<(), String> {
    if obj["status"]["observedGeneration"] == obj["metadata"]["generation"] {
        Ok(())
    } else {
        Err("observedGeneration lags".into())
    }
}

fn namespace_row<'a>(
    rows: &'a [serde_json::Map<String, Value>],
    name: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    rows.iter().find(|r| r["name"] == name)
}

/// The full flow of a KalamCluster, two KalamNamespaces and an S3 StorageLocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_namespaces_and_location_reconcile_into_the_node() {
    let (admin, ns) = setup("e2e-flow").await;
    let plane = ControlPlane::shared();
    let examples = kalam_e2e::repo_root().join("examples");

    // The chart's ServiceAccount and RBAC, for real; the operator gets nothing more.
    let rbac: Vec<Value> = render(&ns, &ns, &[])
        .into_iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect();
    apply_all(&admin, &ns, &rbac, false).await;
    let sa = rbac
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's ServiceAccount")
        .to_string();
    let token = service_account_token(&admin, &ns, &sa).await;
    let kubeconfig = plane.kubeconfig(&format!("{ns}-operator"), &token);

    let node_port = free_port();
    let operator = Operator::start(OperatorArgs {
        kubeconfig: &kubeconfig,
        namespace: &ns,
        identity: "operator-0",
        overrides: vec![format!("{ns}/chat=http://127.0.0.1:{node_port}")],
        resync_seconds: 2,
    })
    .await;
    let moto = Moto::start().await;

    // examples/ as a user applies them; the S3 placeholders point at moto.
    let mut docs = Vec::new();
    for file in ["cluster.yaml", "namespace.yaml", "storage-s3.yaml"] {
        docs.extend(yaml_file(&examples.join(file)));
    }
    for doc in &mut docs {
        if doc["kind"] == "Secret" {
            doc["stringData"]["access_key_id"] = json!("e2e-access-key");
            doc["stringData"]["secret_access_key"] = json!(S3_SECRET_KEY);
            doc["stringData"]["endpoint"] = json!(moto.url);
        }
        if doc["kind"] == "StorageLocation" {
            doc["spec"]["path"] = json!(format!("s3://{BUCKET}/kalamdb"));
        }
    }
    apply_all(&admin, &ns, &docs, false).await;

    // The cluster's objects, as the operator applied them.
    let cluster_path = kalam_path(&ns, "kalamclusters", "chat");
    let sts_path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/chat");
    let sts = wait_for(&admin, &sts_path, "StatefulSet chat", SETTLE, |s| {
        let volumes = s["spec"]["template"]["spec"]["volumes"].to_string();
        if volumes.contains("s3-creds") {
            Ok(())
        } else {
            Err("the credentials of the location are not projected yet".into())
        }
    })
    .await;
    let owner = &sts["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("KalamCluster"), Some("chat"))
    );
    assert_eq!(owner["controller"], true);
    assert!(
        sts["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|m| m
                .iter()
                .any(|f| f["manager"] == "kalam-operator" && f["operation"] == "Apply")),
        "not server-side applied by kalam-operator: {}",
        sts["metadata"]["managedFields"]
    );
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["resources"]["requests"]["memory"], "512Mi");
    assert!(
        sts["spec"]["template"]["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| a.keys().any(|k| k.starts_with("kalamdb.io/"))),
        "no config hash annotation on the pod template: {}",
        sts["spec"]["template"]["metadata"]
    );
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let headless = services
        .get("chat-headless")
        .await
        .expect("Service chat-headless");
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    services.get("chat").await.expect("Service chat");
    let config: ConfigMap = Api::namespaced(admin.clone(), &ns)
        .get("chat-config")
        .await
        .expect("ConfigMap chat-config");
    let toml_text = &config.data.expect("data")["server.toml"];
    let parsed: toml::Table = toml::from_str(toml_text).expect("server.toml is TOML");
    assert_eq!(parsed["sync_writes"].as_bool(), Some(true), "{toml_text}");
    let jwt: Secret = Api::namespaced(admin.clone(), &ns)
        .get("chat-jwt")
        .await
        .expect("the generated Secret chat-jwt");
    let jwt_value = jwt.data.expect("data")["jwt_secret"].0.clone();
    assert!(
        jwt_value.len() >= 32,
        "a {}-byte JWT secret",
        jwt_value.len()
    );
    // The example turns the PDB off (one replica).
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), &ns);
    assert!(pdbs.get_opt("chat").await.expect("GET pdb").is_none());

    // No pod is ready yet: the cluster progresses, the namespace waits for it.
    wait_for(&admin, &cluster_path, "cluster Progressing", SETTLE, |c| {
        has_condition(c, "Ready", "False")?;
        has_condition(c, "Progressing", "True")?;
        observed_current(c)
    })
    .await;
    let app_path = kalam_path(&ns, "kalamnamespaces", "app");
    wait_for(
        &admin,
        &app_path,
        "namespace waiting for the cluster",
        SETTLE,
        |n| match condition(n, "Ready") {
            Some((s, r)) if s == "False" && r == "ClusterNotReady" => Ok(()),
            other => Err(format!("Ready is {other:?}")),
        },
    )
    .await;

    // The StatefulSet reports its pod ready, but nothing listens yet: Degraded, retried.
    mark_statefulset_ready(&admin, &ns, "chat").await;
    let cluster = wait_for(&admin, &cluster_path, "cluster Ready", SETTLE, |c| {
        has_condition(c, "Ready", "True")?;
        observed_current(c)
    })
    .await;
    assert_eq!(
        cluster["status"]["endpoint"],
        format!("http://chat.{ns}.svc:8080")
    );
    assert_eq!(cluster["status"]["readyReplicas"], 1);
    wait_for(
        &admin,
        &app_path,
        "namespace Degraded while the node is down",
        SETTLE,
        |n| {
            has_condition(n, "Degraded", "True")?;
            has_condition(n, "Ready", "False")
        },
    )
    .await;
    // The failed reconcile is counted once it returns (just after its status write).
    eventually("the failed reconciles to be counted", SETTLE, || async {
        let errors = operator
            .metric_sum(
                "kalam_operator_reconcile_errors_total",
                &[("controller", "namespace")],
            )
            .await;
        if errors >= 1.0 {
            Ok(())
        } else {
            Err(format!("{errors} errors counted"))
        }
    })
    .await;

    // The stand-in pod starts from the StatefulSet, ConfigMap and Secrets in the server.
    let pod = Pod::start_on(&admin, &ns, "chat", 0, node_port).await;
    assert_eq!(pod.env("KALAMDB_NODE_ID"), Some("chat-0"));
    let creds = pod
        .mounts
        .get("/etc/kalamdb/credentials")
        .expect("the credentials mount")
        .clone();
    assert_eq!(
        std::fs::read_to_string(creds.join("archive/secret_access_key")).expect("projected key"),
        S3_SECRET_KEY
    );

    let app = wait_for(&admin, &app_path, "namespace Ready", SETTLE, |n| {
        has_condition(n, "Ready", "True")?;
        observed_current(n)
    })
    .await;
    assert_eq!(app["status"]["databaseName"], "app");
    assert!(
        app["metadata"]["finalizers"]
            .to_string()
            .contains("kalamdb.io"),
        "{}",
        app["metadata"]
    );
    let rows = pod.rows("SHOW NAMESPACES").await;
    assert_eq!(
        namespace_row(&rows, "app").expect("namespace app")["options"],
        json!({"retention_days": 90})
    );

    let archive_path = kalam_path(&ns, "storagelocations", "archive");
    wait_for(&admin, &archive_path, "location Ready", SETTLE, |l| {
        has_condition(l, "Ready", "True")
    })
    .await;
    let row = pod
        .rows("SELECT * FROM system.storage_locations WHERE location_name = 'archive'")
        .await;
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0]["location_type"], "s3");
    assert_eq!(row[0]["credentials_ref"], "archive");
    let row_text = serde_json::to_string(&row).expect("JSON");
    assert!(
        !row_text.contains(S3_SECRET_KEY),
        "a secret in SQL: {row_text}"
    );

    // Options follow the resource; hand edits and a hand drop are corrected by the resync.
    let namespaces: Api<kalam_operator::crd::KalamNamespace> = Api::namespaced(admin.clone(), &ns);
    merge_patch(
        &namespaces,
        "app",
        json!({"spec": {"options": {"retention_days": 30}}}),
        "patching the options",
    )
    .await;
    eventually("options to follow the resource", SETTLE, || async {
        let rows = pod.rows("SHOW NAMESPACES").await;
        let options = namespace_row(&rows, "app").map(|r| r["options"].clone());
        if options == Some(json!({"retention_days": 30})) {
            Ok(())
        } else {
            Err(format!("{options:?}"))
        }
    })
    .await;
    pod.rows("ALTER NAMESPACE app SET OPTIONS (retention_days = 1, by_hand = 'x')")
        .await;
    pod.rows("DROP NAMESPACE app").await;
    eventually(
        "the resync to restore the dropped namespace",
        SETTLE,
        || async {
            let rows = pod.rows("SHOW NAMESPACES").await;
            let options = namespace_row(&rows, "app").map(|r| r["options"].clone());
            if options == Some(json!({"retention_days": 30})) {
                Ok(())
            } else {
                Err(format!("{options:?}"))
            }
        },
    )
    .await;

    // A table on the location: the status counts it, and its data lands in S3 with the
    // projected credentials.
    pod.rows(
        "CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY, body TEXT) LOCATION REFERENCE 'archive'",
    )
    .await;
    pod.rows("INSERT INTO app.t (id, body) VALUES (1, 'one'), (2, 'two')")
        .await;
    pod.rows("FLUSH TABLE app.t").await;
    eventually("a Parquet file in the bucket", SETTLE, || async {
        let keys = moto.keys().await;
        if keys.iter().any(|k| k.ends_with(".parquet")) {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    })
    .await;
    wait_for(&admin, &archive_path, "location usage 1", SETTLE, |l| {
        if l["status"]["usageCount"] == 1 && l["status"]["tables"] == json!(["app.t"]) {
            Ok(())
        } else {
            Err("usage not reported".into())
        }
    })
    .await;

    // Deletes with policy Delete wait while tables use the namespace and the location.
    let locations: Api<kalam_operator::crd::StorageLocation> = Api::namespaced(admin.clone(), &ns);
    merge_patch(
        &locations,
        "archive",
        json!({"spec": {"deletionPolicy": "Delete"}}),
        "deletionPolicy Delete",
    )
    .await;
    merge_patch(
        &namespaces,
        "app",
        json!({"spec": {"deletionPolicy": "Delete"}}),
        "deletionPolicy Delete",
    )
    .await;
    // Let both controllers see the new policy before the delete.
    wait_for(
        &admin,
        &archive_path,
        "location policy observed",
        SETTLE,
        observed_current,
    )
    .await;
    wait_for(
        &admin,
        &app_path,
        "namespace policy observed",
        SETTLE,
        observed_current,
    )
    .await;
    locations
        .delete("archive", &DeleteParams::default())
        .await
        .expect("DELETE archive");
    namespaces
        .delete("app", &DeleteParams::default())
        .await
        .expect("DELETE app");
    wait_for(
        &admin,
        &archive_path,
        "location delete blocked",
        SETTLE,
        |l| {
            has_condition(l, "Degraded", "True")?;
            match condition(l, "Ready") {
                Some((_, r)) if r == "DeleteBlocked" => Ok(()),
                other => Err(format!("Ready is {other:?}")),
            }
        },
    )
    .await;
    let blocked =
        wait_for(
            &admin,
            &app_path,
            "namespace delete blocked",
            SETTLE,
            |n| match condition(n, "Ready") {
                Some((_, r)) if r == "DeleteBlocked" => Ok(()),
                other => Err(format!("Ready is {other:?}")),
            },
        )
        .await;
    assert_eq!(blocked["status"]["tables"], json!(["t"]));
    assert!(blocked["metadata"]["deletionTimestamp"].is_string());
    assert!(pod
        .rows("SHOW NAMESPACES")
        .await
        .iter()
        .any(|r| r["name"] == "app"));

    // Once the table is dropped both deletes finish and take the database objects along.
    pod.rows("DROP TABLE app.t").await;
    wait_gone(
        &admin,
        &archive_path,
        "StorageLocation archive gone",
        SETTLE,
    )
    .await;
    wait_gone(&admin, &app_path, "KalamNamespace app gone", SETTLE).await;
    assert!(pod
        .rows("SELECT * FROM system.storage_locations WHERE location_name = 'archive'")
        .await
        .is_empty());
    assert!(!pod
        .rows("SHOW NAMESPACES")
        .await
        .iter()
        .any(|r| r["name"] == "app"));

    // The credentials left the pod template with the location: a new config hash, so the
    // StatefulSet rolls its pod, which comes back on its volume without the projection.
    pod.rows("CREATE NAMESPACE survives_the_roll").await;
    let rolled = wait_for(
        &admin,
        &sts_path,
        "the projection to leave the template",
        SETTLE,
        |s| {
            if s["spec"]["template"]["spec"]["volumes"]
                .to_string()
                .contains("s3-creds")
            {
                Err("still projected".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_ne!(
        rolled["spec"]["template"]["metadata"]["annotations"],
        sts["spec"]["template"]["metadata"]["annotations"],
        "the config hash did not change"
    );
    wait_for(
        &admin,
        &cluster_path,
        "cluster Progressing during the roll",
        SETTLE,
        |c| has_condition(c, "Ready", "False"),
    )
    .await;
    let pod = pod.restart(&admin).await;
    assert!(
        !creds.join("archive").exists(),
        "the projection is still mounted"
    );
    mark_statefulset_ready(&admin, &ns, "chat").await;
    wait_for(
        &admin,
        &cluster_path,
        "cluster Ready after the roll",
        SETTLE,
        |c| {
            has_condition(c, "Ready", "True")?;
            observed_current(c)
        },
    )
    .await;
    let rows = pod.rows("SHOW NAMESPACES").await;
    assert!(
        namespace_row(&rows, "survives_the_roll").is_some(),
        "the pod lost its volume over the roll: {rows:?}"
    );

    // Retain (the default) leaves the database namespace when the resource goes.
    let keep = json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamNamespace",
                      "metadata": {"name": "keep"}, "spec": {"clusterRef": {"name": "chat"}}});
    apply(&admin, &ns, &keep, false)
        .await
        .expect("KalamNamespace keep");
    let keep_path = kalam_path(&ns, "kalamnamespaces", "keep");
    wait_for(&admin, &keep_path, "keep Ready", SETTLE, |n| {
        has_condition(n, "Ready", "True")
    })
    .await;
    namespaces
        .delete("keep", &DeleteParams::default())
        .await
        .expect("DELETE keep");
    wait_gone(&admin, &keep_path, "KalamNamespace keep gone", SETTLE).await;
    assert!(pod
        .rows("SHOW NAMESPACES")
        .await
        .iter()
        .any(|r| r["name"] == "keep"));

    // Two resources for one database namespace: the older one owns it, the newer is told.
    let claim = |name: &str| {
        json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamNamespace",
               "metadata": {"name": name}, "spec": {"clusterRef": {"name": "chat"}, "name": "shared"}})
    };
    apply(&admin, &ns, &claim("first"), false)
        .await
        .expect("first");
    wait_for(
        &admin,
        &kalam_path(&ns, "kalamnamespaces", "first"),
        "first Ready",
        SETTLE,
        |n| has_condition(n, "Ready", "True"),
    )
    .await;
    apply(&admin, &ns, &claim("second"), false)
        .await
        .expect("second");
    wait_for(
        &admin,
        &kalam_path(&ns, "kalamnamespaces", "second"),
        "second in conflict",
        SETTLE,
        |n| {
            has_condition(n, "ResourceConflict", "True")?;
            has_condition(n, "Ready", "False")
        },
    )
    .await;

    // The PDB switch: on creates it, off removes it.
    let clusters: Api<kalam_operator::crd::KalamCluster> = Api::namespaced(admin.clone(), &ns);
    merge_patch(
        &clusters,
        "chat",
        json!({"spec": {"podDisruptionBudget": {"enabled": true}}}),
        "enabling the PDB",
    )
    .await;
    let pdb = eventually("the PDB to appear", SETTLE, || async {
        match pdbs.get_opt("chat").await {
            Ok(Some(p)) => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let pdb_spec = pdb.spec.expect("the PDB has a spec");
    assert_eq!(
        pdb_spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // It selects exactly the StatefulSet's pods.
    assert_eq!(
        serde_json::to_value(&pdb_spec.selector).expect("JSON"),
        sts["spec"]["selector"]
    );
    assert_eq!(
        pdb.metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.as_str()),
        Some("chat")
    );
    merge_patch(
        &clusters,
        "chat",
        json!({"spec": {"podDisruptionBudget": {"enabled": false}}}),
        "disabling the PDB",
    )
    .await;
    eventually("the PDB to go", SETTLE, || async {
        match pdbs.get_opt("chat").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // What an operator user graphs and what `kubectl describe` lists.
    for controller in ["cluster", "namespace", "storage_location"] {
        let n = operator
            .metric_sum(
                "kalam_operator_reconciles_total",
                &[("controller", controller)],
            )
            .await;
        assert!(n >= 1.0, "no {controller} reconciles counted");
    }
    let events = get_json(
        &admin,
        &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
    )
    .await
    .expect("listing Events");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reportingController"] == "kalam-operator")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        !reasons.is_empty(),
        "no Events from kalam-operator: {events}"
    );
    drop(pod);
    drop(operator);
}
