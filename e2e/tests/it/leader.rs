//! Two operator replicas and one `coordination.k8s.io` Lease in the real API server: only
//! the holder reconciles, and when it dies (SIGKILL, no release) the other takes over once
//! the lease expires.

use std::time::Duration;

use kalam_e2e::control_plane::ControlPlane;
use kalam_e2e::kube_api::{apply, wait_for};
use kalam_e2e::operator::{Operator, OperatorArgs};
use kalam_e2e::process::eventually;
use serde_json::{json, Value};

use crate::common::{setup, SETTLE};

fn cluster(name: &str) -> Value {
    json!({"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
           "metadata": {"name": name}, "spec": {"image": "kalamdb:e2e"}})
}

fn held_by(identity: &'static str) -> impl Fn(&Value) -> Result<(), String> {
    move |lease| {
        if lease["spec"]["holderIdentity"] == identity {
            Ok(())
        } else {
            Err(format!("held by {}", lease["spec"]["holderIdentity"]))
        }
    }
}

/// Waits until `op` counted a KalamCluster reconcile (it counts one when it returns, just
/// after the writes the test saw).
async fn counted(op: &Operator, metric: &str) {
    eventually("a counted cluster reconcile", SETTLE, || async {
        let n = op.metric_sum(metric, &[("controller", "cluster")]).await;
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n} counted"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_operators_leads_and_the_other_takes_over() {
    let (admin, ns) = setup("e2e-leader").await;
    let kubeconfig = ControlPlane::shared().admin_kubeconfig();
    let args = |identity| OperatorArgs {
        kubeconfig: &kubeconfig,
        namespace: &ns,
        identity,
        overrides: Vec::new(),
        resync_seconds: 60,
    };
    let lease = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/kalam-operator");

    let a = Operator::start(args("operator-a")).await;
    wait_for(
        &admin,
        &lease,
        "operator-a to hold the lease",
        SETTLE,
        held_by("operator-a"),
    )
    .await;
    let b = Operator::start(args("operator-b")).await;

    apply(&admin, &ns, &cluster("one"), false)
        .await
        .expect("KalamCluster one");
    let sts = |name: &str| format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}");
    wait_for(
        &admin,
        &sts("one"),
        "the leader to create StatefulSet one",
        SETTLE,
        |_| Ok(()),
    )
    .await;
    let reconciles = "kalam_operator_reconciles_total";
    counted(&a, reconciles).await;
    assert_eq!(
        b.metric_sum(reconciles, &[]).await,
        0.0,
        "the follower reconciled; its log:\n{}",
        b.log()
    );

    a.kill().await;
    // The lease lasts 15 s without renewal; allow for the follower's retry period.
    wait_for(
        &admin,
        &lease,
        "operator-b to take the lease over",
        Duration::from_secs(90),
        held_by("operator-b"),
    )
    .await;
    apply(&admin, &ns, &cluster("two"), false)
        .await
        .expect("KalamCluster two");
    wait_for(
        &admin,
        &sts("two"),
        "the new leader to create StatefulSet two",
        SETTLE,
        |_| Ok(()),
    )
    .await;
    counted(&b, reconciles).await;
}
