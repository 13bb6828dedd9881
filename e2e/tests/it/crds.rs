//! The generated CRDs in a real API server: what `kubectl apply` and `kubectl get` see.

use kalam_e2e::kube_api::{api_code, apply, table, yaml_file};
use serde_json::{json, Value};

use crate::common::setup;

fn namespace_obj(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamNamespace",
           "metadata": {"name": name}, "spec": spec})
}

/// The examples are accepted as they are, the server fills in the schema's defaults, and
/// objects that break the schema are refused with 422 naming the field.
#[tokio::test]
async fn the_server_validates_defaults_and_accepts_the_examples() {
    let (client, ns) = setup("e2e-crds").await;
    let examples = kalam_e2e::repo_root().join("examples");
    for file in ["cluster.yaml", "namespace.yaml", "storage-s3.yaml"] {
        for doc in yaml_file(&examples.join(file)) {
            apply(&client, &ns, &doc, true)
                .await
                .unwrap_or_else(|e| panic!("examples/{file}: {} refused: {e}", doc["kind"]));
        }
    }

    let minimal = namespace_obj("minimal", json!({"clusterRef": {"name": "chat"}}));
    let stored = apply(&client, &ns, &minimal, true)
        .await
        .expect("a minimal namespace");
    assert_eq!(
        stored.data["spec"]["deletionPolicy"], "Retain",
        "{:?}",
        stored.data
    );
    let cluster = json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
                         "metadata": {"name": "defaults"}, "spec": {"image": "kalamdb:test"}});
    let stored = apply(&client, &ns, &cluster, true)
        .await
        .expect("a minimal cluster");
    assert_eq!(stored.data["spec"]["replicas"], 1, "{:?}", stored.data);

    let refused = [
        (
            namespace_obj(
                "bad-name",
                json!({"clusterRef": {"name": "chat"}, "name": "Bad-Name"}),
            ),
            "spec.name",
        ),
        (
            namespace_obj(
                "bad-policy",
                json!({"clusterRef": {"name": "chat"}, "deletionPolicy": "Sometimes"}),
            ),
            "spec.deletionPolicy",
        ),
        (namespace_obj("no-cluster", json!({})), "spec.clusterRef"),
        (
            json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
                   "metadata": {"name": "too-many"},
                   "spec": {"image": "kalamdb:test", "replicas": 17}}),
            "spec.replicas",
        ),
        (
            json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "StorageLocation",
                   "metadata": {"name": "ftp"},
                   "spec": {"clusterRef": {"name": "chat"}, "type": "ftp", "path": "ftp://x"}}),
            "spec.type",
        ),
    ];
    for (obj, field) in refused {
        let err = apply(&client, &ns, &obj, false)
            .await
            .expect_err(&format!("{} was accepted", obj["metadata"]["name"]));
        assert_eq!(api_code(&err), 422, "{}: {err}", obj["metadata"]["name"]);
        assert!(
            err.to_string().contains(field),
            "{field} not named in: {err}"
        );
    }
}

/// Which database object and cluster a KalamNamespace or StorageLocation stands for never
/// changes (the operator would leave the old one behind): the API server refuses a changed
/// `spec.name` or `spec.clusterRef`, and takes every other change.
#[tokio::test]
async fn the_server_refuses_a_changed_name_or_cluster() {
    let (client, ns) = setup("e2e-immutable").await;
    let location = |spec: Value| {
        json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "StorageLocation",
               "metadata": {"name": "archive"}, "spec": spec})
    };
    let base = json!({"clusterRef": {"name": "chat"}, "name": "archive", "type": "s3",
                      "path": "s3://bucket/a"});
    for (kind, obj) in [
        (
            "KalamNamespace",
            namespace_obj(
                "app",
                json!({"clusterRef": {"name": "chat"}, "name": "app"}),
            ),
        ),
        ("StorageLocation", location(base.clone())),
    ] {
        apply(&client, &ns, &obj, false)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        for (field, value) in [
            ("name", json!("other")),
            ("clusterRef", json!({"name": "other"})),
        ] {
            let mut changed = obj.clone();
            changed["spec"][field] = value;
            let err = apply(&client, &ns, &changed, true)
                .await
                .expect_err(&format!("{kind}: a changed {field} was accepted"));
            assert_eq!(api_code(&err), 422, "{kind} {field}: {err}");
            assert!(
                err.to_string().contains("cannot change"),
                "{kind} {field}: {err}"
            );
        }
    }
    let mut moved = location(base);
    moved["spec"]["path"] = json!("s3://bucket/b");
    apply(&client, &ns, &moved, true)
        .await
        .expect("other fields still change");
}

/// `kubectl get kalamnamespaces` and `kubectl get kalamclusters` show the printer columns.
#[tokio::test]
async fn printer_columns_render() {
    let (client, ns) = setup("e2e-columns").await;
    let obj = namespace_obj(
        "columns",
        json!({"clusterRef": {"name": "chat"}, "name": "app"}),
    );
    apply(&client, &ns, &obj, false)
        .await
        .expect("a KalamNamespace");
    let cluster = json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
                         "metadata": {"name": "chat"}, "spec": {"image": "kalamdb:test"}});
    apply(&client, &ns, &cluster, false)
        .await
        .expect("a KalamCluster");

    let (columns, rows) = table(
        &client,
        &format!("/apis/kalamdb.io/v1alpha1/namespaces/{ns}/kalamnamespaces"),
    )
    .await;
    assert_eq!(columns, ["Name", "Database", "Tables", "Ready", "Age"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "columns");

    let (columns, _) = table(
        &client,
        &format!("/apis/kalamdb.io/v1alpha1/namespaces/{ns}/kalamclusters"),
    )
    .await;
    for wanted in ["Name", "Phase", "Ready", "Replicas", "Age"] {
        assert!(
            columns.iter().any(|c| c == wanted),
            "{wanted} not in {columns:?}"
        );
    }
    let (columns, _) = table(
        &client,
        &format!("/apis/kalamdb.io/v1alpha1/namespaces/{ns}/storagelocations"),
    )
    .await;
    assert!(columns.iter().any(|c| c == "Name"), "{columns:?}");
}
