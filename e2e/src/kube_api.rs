//! Talking to the real API server the way `kubectl` does: applying YAML documents with
//! server-side apply (optionally dry-run), namespaces per test, tokens of ServiceAccounts,
//! `kubectl get`'s table view, and the status writes of the controllers that do not run here.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::process::eventually;

/// Field manager of everything the tests apply.
pub const TEST_MANAGER: &str = "kalam-e2e";

/// The non-empty documents of a multi-document YAML stream.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("valid YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The documents of a YAML file.
pub fn yaml_file(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml_docs(&text)
}

/// Server-side applies `doc` (into `namespace` when the kind is namespaced and the document
/// names none). With `dry_run` the server validates, defaults and admits it but stores
/// nothing. Errors are the server's answer, e.g. a 422 for a schema violation.
pub async fn apply(
    client: &Client,
    namespace: &str,
    doc: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply(TEST_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(doc)).await
}

/// Applies every document, panicking with the object and the server's answer on failure.
pub async fn apply_all(client: &Client, namespace: &str, docs: &[Value], dry_run: bool) {
    for doc in docs {
        if let Err(e) = apply(client, namespace, doc, dry_run).await {
            panic!(
                "applying {} {}: {e}",
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
}

/// A fresh namespace `<prefix>-<random>` (namespaces are never deleted: without the
/// namespace controller they would stay Terminating).
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Installs the CRDs under `crds/` (idempotent) and waits until the server serves them.
pub async fn install_crds(client: &Client) {
    let dir = crate::repo_root().join("crds");
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        for doc in yaml_file(&path) {
            names.push(
                doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            apply(client, "", &doc, false)
                .await
                .unwrap_or_else(|e| panic!("installing {}: {e}", path.display()));
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        eventually(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not Established yet".into())
                }
            },
        )
        .await;
    }
}

/// A GET of `path` with an arbitrary body type.
pub async fn get_json(client: &Client, path: &str) -> Result<Value, kube::Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .expect("a GET request");
    client.request::<Value>(request).await
}

/// `kubectl get`'s view of a list: the column names and each row's cells, as the server
/// renders them from the CRD's printer columns.
pub async fn table(client: &Client, path: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let request = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())
        .expect("a GET request");
    let table: Value = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("GET {path} as a Table: {e}"));
    let columns = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let rows = table["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["cells"].as_array().cloned().unwrap_or_default())
        .collect();
    (columns, rows)
}

/// A token of ServiceAccount `name` (the TokenRequest API, as `kubectl create token`).
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    });
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).expect("JSON"))
    .expect("a POST request");
    let answer: Value = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{name}: {e}"));
    answer["status"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer}"))
        .to_string()
}

/// What the StatefulSet controller and the kubelets would report once every pod of `name`
/// runs and passes its readiness probe: the tests call it after starting the stand-in pods.
pub async fn mark_statefulset_ready(client: &Client, namespace: &str, name: &str) {
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), namespace);
    let sts = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("StatefulSet {namespace}/{name}: {e}"));
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = sts.metadata.generation.unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": replicas,
        "currentReplicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("patching the status of StatefulSet {name}: {e}"));
}

/// `(status, reason)` of the condition `type_` in an object's `status.conditions`.
pub fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Waits until the object at `path` satisfies `check` (which explains what it saw when it
/// does not) and returns it.
pub async fn wait_for(
    client: &Client,
    path: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Value {
    eventually(what, timeout, || async {
        let obj = get_json(client, path).await.map_err(|e| e.to_string())?;
        check(&obj)
            .map(|()| obj.clone())
            .map_err(|e| format!("{e}: {obj}"))
    })
    .await
}

/// Waits until GET `path` answers 404.
pub async fn wait_gone(client: &Client, path: &str, what: &str, timeout: Duration) {
    eventually(what, timeout, || async {
        match get_json(client, path).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(obj) => Err(format!("still there: {}", obj["metadata"])),
        }
    })
    .await
}

/// The error code of a failed API call (0 when it was not an API answer).
pub fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(status) => status.code,
        _ => 0,
    }
}
