//! `charts/kalamdb` rendered by the real `helm` and admitted by the real API server.

use std::path::PathBuf;
use std::process::Command;

use kalam_e2e::kube_api::{apply, yaml_docs};

use crate::common::setup;

/// `helm` on PATH, else in `$(go env GOPATH)/bin` where `.ci/run` installs it.
fn helm() -> PathBuf {
    if let Ok(out) = Command::new("sh").args(["-c", "command -v helm"]).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let bin = PathBuf::from(gopath).join("bin/helm");
    assert!(
        bin.exists(),
        "helm is not installed: go install helm.sh/helm/v4/cmd/helm@v4.3.2 (.ci/run does it)"
    );
    bin
}

/// `helm template <release> charts/kalamdb --namespace <ns> --include-crds <extra...>`.
pub fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = kalam_e2e::repo_root().join("charts/kalamdb");
    let out = Command::new(helm())
        .arg("template")
        .arg(release)
        .arg(&chart)
        .args(["--namespace", namespace, "--include-crds"])
        .args(extra)
        .output()
        .expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
}

/// Every object the chart renders, with the optional KalamCluster turned on, passes the
/// server's validation and admission (server-side apply, dry-run: nothing is stored).
#[tokio::test]
async fn the_chart_renders_and_the_server_admits_every_object() {
    let (client, ns) = setup("e2e-chart").await;
    let docs = render("kalam", &ns, &["--set", "cluster.create=true"]);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for wanted in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "KalamCluster",
    ] {
        assert!(
            kinds.contains(&wanted),
            "the chart renders no {wanted}: {kinds:?}"
        );
    }
    for doc in &docs {
        let admitted = apply(&client, &ns, doc, true).await;
        if let Err(e) = admitted {
            panic!(
                "the server refused {} {}: {e}",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }
}
