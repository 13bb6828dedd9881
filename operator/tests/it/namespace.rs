//! KalamNamespace flows against the fake API server and a real node.

use std::time::Duration;

use http::Method;
use kalam_operator::crd::KalamNamespace;
use kalam_operator::namespace::{error_policy, reconcile, FINALIZER};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::fixtures::*;
use crate::mock::{api_server, ApiServer, Exchange};
use crate::node::Node;

const APP: &str = "/apis/kalamdb.io/v1alpha1/namespaces/default/kalamnamespaces/app";
const CREATED: &str = "2026-01-01T00:00:00Z";

fn app(spec: Value) -> Value {
    object("KalamNamespace", "app", CREATED, Some(FINALIZER), spec)
}

fn peers(items: &[&Value]) -> Value {
    list(
        "KalamNamespace",
        items.iter().map(|v| (*v).clone()).collect(),
    )
}

/// One reconcile of `obj` with `script`; returns its result and what the API server saw.
async fn reconcile_with(
    api: &mut ApiServer,
    ctx: &std::sync::Arc<kalam_operator::Context>,
    obj: &Value,
    script: Vec<Exchange>,
) -> (kalam_operator::Result<Action>, crate::mock::Transcript) {
    let typed: KalamNamespace = parse(obj);
    api.run(script, reconcile(std::sync::Arc::new(typed), ctx.clone()))
        .await
}

/// The reads of an apply, then a status patch of `obj`.
fn apply_script(obj: &Value) -> Vec<Exchange> {
    let mut script = reads(NAMESPACES_PATH, peers(&[obj]));
    script.push(status_patch(APP, obj));
    script
}

#[tokio::test]
async fn create_follow_options_and_restore_drift() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());

    // 1. A new object first gets the finalizer, nothing else.
    let fresh = object(
        "KalamNamespace",
        "app",
        CREATED,
        None,
        json!({
        "clusterRef": {"name": "kc"}, "options": {"retention_days": 90}}),
    );
    let with_finalizer = app(fresh["spec"].clone());
    let script = vec![finalizer_patch(APP, with_finalizer.clone())];
    let (action, seen) = reconcile_with(&mut api, &ctx, &fresh, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(
        seen.body(&Method::PATCH, APP),
        &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    );
    assert!(
        node.namespace("app").await.is_none(),
        "no SQL before the finalizer is on"
    );

    // 2. The namespace is created with its options; the status says so.
    let obj = with_finalizer;
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(&obj)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let row = node
        .namespace("app")
        .await
        .expect("namespace app on the node");
    assert_eq!(row["options"], json!({"retention_days": 90}));
    let status_req = seen.request(&Method::PATCH, &format!("{APP}/status"));
    assert!(
        status_req.query.contains("fieldManager=kalam-operator")
            && status_req.query.contains("force=true"),
        "status is applied server-side: {}",
        status_req.query
    );
    let body = seen.status_patch();
    assert_eq!(body["apiVersion"], "kalamdb.io/v1alpha1");
    assert_eq!(body["kind"], "KalamNamespace");
    assert_eq!(body["status"]["databaseName"], "app");
    assert_eq!(body["status"]["tableCount"], 0);
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert_eq!(cond(body, "Ready"), pair("True", "Applied"));
    assert_eq!(cond(body, "Progressing"), pair("False", "Applied"));
    assert_eq!(cond(body, "Degraded"), pair("False", "AsExpected"));
    assert_eq!(cond(body, "ResourceConflict"), pair("False", "NoConflict"));
    assert_eq!(condition(body, "Ready")["observedGeneration"], 1);
    assert!(
        seen.event_reasons().contains(&"Applied".to_string()),
        "{:?}",
        seen.events
    );

    // 3. Options change: the node follows; Ready stays True and keeps its transition time.
    let mut obj = with_status(obj, body);
    obj["status"]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
    let obj = edited(
        obj,
        json!({"clusterRef": {"name": "kc"},
                                 "options": {"retention_days": 30, "tier": "gold"}}),
    );
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(&obj)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let row = node.namespace("app").await.expect("namespace app");
    assert_eq!(
        row["options"],
        json!({"retention_days": 30, "tier": "gold"})
    );
    let body = seen.status_patch();
    assert_eq!(body["status"]["observedGeneration"], 2);
    assert_eq!(
        condition(body, "Ready")["lastTransitionTime"],
        "2020-01-01T00:00:00Z"
    );
    assert_eq!(condition(body, "Ready")["observedGeneration"], 2);
    assert!(
        seen.events.is_empty(),
        "no transition, no Event: {:?}",
        seen.events
    );
    let obj = with_status(obj, body);

    // 4. Options edited by hand are reset (keys added by hand removed); the status is
    //    unchanged, so nothing is written.
    node.sql("ALTER NAMESPACE app SET OPTIONS (retention_days = 1, by_hand = 'x')")
        .await;
    let script = reads(NAMESPACES_PATH, peers(&[&obj]));
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert!(seen.status_patches().is_empty());
    let row = node.namespace("app").await.expect("namespace app");
    assert_eq!(
        row["options"],
        json!({"retention_days": 30, "tier": "gold"})
    );

    // 5. Dropped by hand: the resync creates it again.
    node.sql("DROP NAMESPACE app").await;
    let script = reads(NAMESPACES_PATH, peers(&[&obj]));
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert!(seen.status_patches().is_empty());
    let row = node.namespace("app").await.expect("namespace app restored");
    assert_eq!(
        row["options"],
        json!({"retention_days": 30, "tier": "gold"})
    );

    // 6. Deleted with deletionPolicy Delete: dropped, then the finalizer goes.
    let mut obj = obj;
    obj["spec"]["deletionPolicy"] = json!("Delete");
    let obj = deleting(obj);
    let mut after = obj.clone();
    after["metadata"]["finalizers"] = json!([]);
    let mut script = reads(NAMESPACES_PATH, peers(&[&obj]));
    script.push(finalizer_patch(APP, after));
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(
        node.namespace("app").await.is_none(),
        "namespace app dropped"
    );
    assert_eq!(
        seen.body(&Method::PATCH, APP),
        &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
}

#[tokio::test]
async fn a_delete_blocked_by_tables_keeps_the_finalizer_and_lists_them() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());
    let obj = app(json!({"clusterRef": {"name": "kc"}, "deletionPolicy": "Delete"}));
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(&obj)).await;
    action.unwrap();
    let obj = with_status(obj, seen.status_patch());
    node.sql("CREATE SHARED TABLE app.conversations (id TEXT PRIMARY KEY, title TEXT)")
        .await;
    node.sql("CREATE USER TABLE app.messages (id BIGINT PRIMARY KEY, body TEXT)")
        .await;

    // The delete is refused: status lists the tables, the finalizer stays (no patch of it).
    let obj = deleting(obj);
    let (result, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(&obj)).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "DeleteBlocked", "{error}");
    let body = seen.status_patch();
    assert_eq!(
        body["status"]["tables"],
        json!(["conversations", "messages"])
    );
    assert_eq!(body["status"]["tableCount"], 2);
    assert_eq!(cond(body, "Ready"), pair("False", "DeleteBlocked"));
    assert_eq!(cond(body, "Degraded"), pair("True", "DeleteBlocked"));
    let message = condition(body, "Ready")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("conversations, messages"), "{message}");
    assert!(node.namespace("app").await.is_some(), "nothing dropped");
    assert!(seen.event_reasons().contains(&"DeleteBlocked".to_string()));

    // Retried with backoff.
    let typed = std::sync::Arc::new(parse::<KalamNamespace>(&obj));
    assert_eq!(
        error_policy(typed.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(typed, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );

    // Once the tables are gone the delete goes through.
    node.sql("DROP TABLE app.conversations").await;
    node.sql("DROP TABLE app.messages").await;
    let obj = with_status(obj, body);
    let mut after = obj.clone();
    after["metadata"]["finalizers"] = json!([]);
    let mut script = reads(NAMESPACES_PATH, peers(&[&obj]));
    script.push(finalizer_patch(APP, after));
    let (action, _) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(node.namespace("app").await.is_none());
}

#[tokio::test]
async fn retain_and_unmanaged_objects_never_drop_anything() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());
    node.sql("CREATE NAMESPACE app").await;

    // Retain (the default): the finalizer goes without any read or SQL.
    let obj = deleting(app(json!({"clusterRef": {"name": "kc"}})));
    let script = vec![finalizer_patch(APP, obj.clone())];
    let (action, _) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(node.namespace("app").await.is_some());

    // Unmanaged: the status says so and the database is not touched ...
    let mut obj =
        app(json!({"clusterRef": {"name": "kc"}, "name": "detached", "deletionPolicy": "Delete"}));
    obj["metadata"]["annotations"] = json!({"kalamdb.io/managed": "false"});
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, vec![status_patch(APP, &obj)]).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(
        cond(seen.status_patch(), "Ready"),
        pair("False", "Unmanaged")
    );
    assert!(node.namespace("detached").await.is_none());

    // ... not even by a Delete.
    node.sql("CREATE NAMESPACE detached").await;
    let obj = deleting(with_status(obj, seen.status_patch()));
    let (action, _) = reconcile_with(
        &mut api,
        &ctx,
        &obj,
        vec![finalizer_patch(APP, obj.clone())],
    )
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(node.namespace("detached").await.is_some());
}

#[tokio::test]
async fn the_younger_of_two_claims_gets_a_conflict_and_never_drops() {
    let node = Node::start().await;
    let (client, mut api) = api_server();
    let ctx = context(client, node.url());
    let spec = json!({"clusterRef": {"name": "kc"}, "name": "shared", "deletionPolicy": "Delete"});
    let first = object(
        "KalamNamespace",
        "first",
        "2026-01-01T00:00:00Z",
        Some(FINALIZER),
        spec.clone(),
    );
    let second = object(
        "KalamNamespace",
        "second",
        "2026-02-01T00:00:00Z",
        Some(FINALIZER),
        spec,
    );
    let second_path = "/apis/kalamdb.io/v1alpha1/namespaces/default/kalamnamespaces/second";

    let script = vec![
        Exchange::get(CLUSTER_PATH).reply(200, cluster(true)),
        Exchange::get(NAMESPACES_PATH).reply(200, peers(&[&first, &second])),
        status_patch(second_path, &second),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &second, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let body = seen.status_patch();
    assert_eq!(
        cond(body, "ResourceConflict"),
        pair("True", "ResourceConflict")
    );
    assert_eq!(cond(body, "Ready"), pair("False", "ResourceConflict"));
    let message = condition(body, "ResourceConflict")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("KalamNamespace first"), "{message}");
    assert!(
        node.namespace("shared").await.is_none(),
        "the loser applies nothing"
    );

    // Deleting the loser drops nothing, even with deletionPolicy Delete.
    node.sql("CREATE NAMESPACE shared").await;
    let doomed = deleting(with_status(second, body));
    let script = vec![
        Exchange::get(CLUSTER_PATH).reply(200, cluster(true)),
        Exchange::get(NAMESPACES_PATH).reply(200, peers(&[&first, &doomed])),
        finalizer_patch(second_path, doomed.clone()),
    ];
    let (action, _) = reconcile_with(&mut api, &ctx, &doomed, script).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(node.namespace("shared").await.is_some());
}

#[tokio::test]
async fn a_cluster_that_is_missing_or_not_ready_is_waited_for() {
    let (client, mut api) = api_server();
    // No SQL is sent in this test: the endpoint is never used.
    let ctx = context(client, "http://127.0.0.1:9");
    let obj = app(json!({"clusterRef": {"name": "kc"}}));

    let script = vec![
        Exchange::get(CLUSTER_PATH).reply(200, cluster(false)),
        status_patch(APP, &obj),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
    let body = seen.status_patch();
    assert_eq!(cond(body, "Ready"), pair("False", "ClusterNotReady"));
    assert_eq!(cond(body, "Progressing"), pair("True", "ClusterNotReady"));
    assert_eq!(cond(body, "Degraded"), pair("False", "AsExpected"));

    let script = vec![
        Exchange::get(CLUSTER_PATH).not_found(),
        status_patch(APP, &obj),
    ];
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, script).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
    let message = condition(seen.status_patch(), "Ready")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test]
async fn an_unreachable_node_is_degraded_and_retried() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (client, mut api) = api_server();
    let ctx = context(client, &format!("http://127.0.0.1:{port}"));
    let obj = app(json!({"clusterRef": {"name": "kc"}}));
    let (result, seen) = reconcile_with(&mut api, &ctx, &obj, apply_script(&obj)).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "ClusterUnreachable", "{error}");
    let body = seen.status_patch();
    assert_eq!(cond(body, "Ready"), pair("False", "ClusterUnreachable"));
    assert_eq!(cond(body, "Degraded"), pair("True", "ClusterUnreachable"));
    let message = condition(body, "Degraded")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(&port.to_string()),
        "the message names the endpoint: {message}"
    );
    let typed = std::sync::Arc::new(parse::<KalamNamespace>(&obj));
    assert_eq!(
        error_policy(typed, &error, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn an_invalid_name_is_reported_without_sql() {
    let (client, mut api) = api_server();
    let ctx = context(client, "http://127.0.0.1:9");
    let path = "/apis/kalamdb.io/v1alpha1/namespaces/default/kalamnamespaces/my-app";
    let obj = object(
        "KalamNamespace",
        "my-app",
        CREATED,
        Some(FINALIZER),
        json!({"clusterRef": {"name": "kc"}}),
    );
    let (action, seen) = reconcile_with(&mut api, &ctx, &obj, vec![status_patch(path, &obj)]).await;
    assert_eq!(action.unwrap(), Action::await_change());
    let body = seen.status_patch();
    assert_eq!(cond(body, "Ready"), pair("False", "InvalidName"));
    assert_eq!(cond(body, "Degraded"), pair("True", "InvalidName"));
    assert!(body["status"].get("databaseName").is_none());
}
