//! StorageLocation flows against the fake API server and a real node.

use std::sync::Arc;
use std::time::Duration;

use kalam_operator::crd::StorageLocation;
use kalam_operator::location::{error_policy, reconcile, FINALIZER};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::fixtures::*;
use crate::mock::{api_server, ApiServer, Exchange, Transcript};
use crate::node::Node;

const FS1: &str = "/apis/kalamdb.io/v1alpha1/namespaces/default/storagelocations/fs1";

async fn reconcile_with(
    api: &mut ApiServer,
    ctx: &Arc<kalam_operator::Context>,
    obj: &Value,
    script: Vec<Exchange>,
) -> (kalam_operator::Result<Action>, Transcript) {
    let typed: StorageLocation = parse(obj);
    api.run(script, reconcile(Arc::new(typed), ctx.clone()))
        .await
}

fn apply_script(path: &str, obj: &Value) -> Vec<Exchange> {
    let mut script = reads(LOCATIONS_PATH, list("StorageLocation", vec![obj.clone()]));
    script.push(status_patch(path, obj));
    script
}

#[tokio::test]
async fn a_location_becomes_a_row_follows_its_spec_and_waits_for_its_tables() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());
    let root = node.scratch().join("fs1");
    let root_text = root.to_string_lossy().to_string();
    let obj = object(
        "StorageLocation",
        "fs1",
        "2026-01-01T00:00:00Z",
        Some(FINALIZER),
        json!({
        "clusterRef": {"name": "kc"}, "type": "filesystem", "path": root_text,
        "deletionPolicy": "Delete"}),
    );

    // The row is inserted.
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(FS1, &obj)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let row = node.location("fs1").await.expect("the row");
    assert_eq!(row["location_type"], "filesystem");
    assert_eq!(row["path"], json!(root_text));
    assert_eq!(row["credentials_ref"], Value::Null);
    let body = seen.status_patch();
    assert_eq!(body["kind"], "StorageLocation");
    assert_eq!(body["status"]["locationName"], "fs1");
    assert_eq!(body["status"]["usageCount"], 0);
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert_eq!(cond(body, "Ready"), pair("True", "Applied"));
    let obj = with_status(obj, body);

    // A table uses it: the resync reports the usage.
    node.sql("CREATE NAMESPACE app").await;
    node.sql("CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'fs1'")
        .await;
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(FS1, &obj)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let body = seen.status_patch();
    assert_eq!(body["status"]["usageCount"], 1);
    assert_eq!(
        condition(body, "Ready")["lastTransitionTime"],
        condition(&obj, "Ready")["lastTransitionTime"],
        "Ready stayed True"
    );
    let obj = with_status(obj, body);

    // Nothing changed: nothing is written.
    let script = reads(LOCATIONS_PATH, list("StorageLocation", vec![obj.clone()]));
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    action.unwrap();
    assert!(seen.status_patches().is_empty());

    // A new path is written to the row (it applies to new tables).
    let moved = node
        .scratch()
        .join("fs1-moved")
        .to_string_lossy()
        .to_string();
    let mut spec = obj["spec"].clone();
    spec["path"] = json!(moved);
    let obj = edited(obj, spec);
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(FS1, &obj)).await;
    action.unwrap();
    assert_eq!(
        node.location("fs1").await.expect("the row")["path"],
        json!(moved)
    );
    assert_eq!(seen.status_patch()["status"]["observedGeneration"], 2);
    let obj = with_status(obj, seen.status_patch());

    // Deleting it is refused while the table uses it; the status names the table.
    let obj = deleting(obj);
    let (result, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(FS1, &obj)).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "DeleteBlocked", "{error}");
    let body = seen.status_patch();
    assert_eq!(body["status"]["tables"], json!(["app.t"]));
    assert_eq!(cond(body, "Ready"), pair("False", "DeleteBlocked"));
    assert_eq!(cond(body, "Degraded"), pair("True", "DeleteBlocked"));
    assert!(node.location("fs1").await.is_some(), "the row stays");
    let typed = Arc::new(parse::<StorageLocation>(&obj));
    assert_eq!(
        error_policy(typed, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );

    // Without the table the row goes, then the finalizer.
    node.sql("DROP TABLE app.t").await;
    let obj = with_status(obj, body);
    let mut after = obj.clone();
    after["metadata"]["finalizers"] = json!([]);
    let mut script = reads(LOCATIONS_PATH, list("StorageLocation", vec![obj.clone()]));
    script.push(finalizer_patch(FS1, after));
    let (action, _) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(node.location("fs1").await.is_none(), "the row is deleted");
}

#[tokio::test]
async fn credentials_are_named_never_sent() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());
    let path = "/apis/kalamdb.io/v1alpha1/namespaces/default/storagelocations/archive";
    let root = node.scratch().join("archive").to_string_lossy().to_string();
    let obj = object(
        "StorageLocation",
        "archive",
        "2026-01-01T00:00:00Z",
        Some(FINALIZER),
        json!({
        "clusterRef": {"name": "kc"}, "type": "filesystem", "path": root,
        "credentialsSecretRef": {"name": "archive-creds"}}),
    );
    let (action, _) = reconcile_with(&mut api, &ctx, &obj, apply_script(path, &obj)).await;
    action.unwrap();
    let row = node.location("archive").await.expect("the row");
    assert_eq!(
        row["credentials_ref"], "archive",
        "the row names the projected credential set"
    );
}
