//! A stand-in kubelet for one pod of a KalamCluster's StatefulSet: no kubelet runs here, so
//! the tests run the pod's container as a local `kalamdb` process, built only from what the
//! operator stored in the API server:
//!
//! - every volume mount becomes a directory under a private root: ConfigMap and Secret
//!   volumes (whole, `items` or `subPath`) and projected Secret volumes are written there,
//!   `emptyDir` and volume claims are empty directories;
//! - environment from `value`, `fieldRef` (`metadata.name`, `metadata.namespace`) and
//!   `secretKeyRef`;
//! - the container's `args`, with the workspace's `kalamdb` as the image's entrypoint.
//!
//! What a kubelet gets from the container runtime is done by rewriting: mount paths in the
//! args and in mounted ConfigMap text become the host directories (there is no mount
//! namespace), and `0.0.0.0:<containerPort>` becomes a loopback port (there is no pod
//! network). The readiness and liveness probes of the template are then called on that port,
//! so a probe path the node does not serve fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Probe, Secret, Volume};
use kalam_client::{KalamClient, Role};
use kube::{Api, Client};
use tokio::process::{Child, Command};

use crate::process::{die_with_parent_tokio, eventually, free_port, log_tail};

/// A running stand-in pod.
pub struct Pod {
    child: Child,
    /// `<statefulset>-<index>`.
    pub name: String,
    /// `http://127.0.0.1:<port>`: where the container port is reachable.
    pub url: String,
    /// The host directory of each mount path.
    pub mounts: BTreeMap<String, PathBuf>,
    env: BTreeMap<String, String>,
    log: PathBuf,
    namespace: String,
    statefulset: String,
    index: u32,
    port: u16,
    _root: tempfile::TempDir,
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.clone().unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    cm.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("a mount directory");
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Where the container port of the template is published on the host.
fn container_port(container: &Container) -> i32 {
    container
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.container_port)
        .expect("the node container declares its port")
}

/// Replaces every mount path in `text` by its host directory in one pass (so a host path
/// that itself contains a mount path, such as `/tmp/...`, is never rewritten again). A mount
/// path matches only as a whole path: after the start, a quote, `=` or whitespace, and
/// followed by the end, `/`, a quote or whitespace.
fn rewrite_paths(text: &str, mounts: &BTreeMap<String, PathBuf>) -> String {
    let mut by_length: Vec<(&String, &PathBuf)> = mounts.iter().collect();
    by_length.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while let Some(c) = rest.chars().next() {
        let at_path_start = out
            .chars()
            .last()
            .is_none_or(|p| !(p.is_alphanumeric() || matches!(p, '/' | '.' | '_' | '-')));
        for (mount, host) in by_length.iter().filter(|_| at_path_start) {
            if let Some(after) = rest.strip_prefix(mount.as_str()) {
                let whole = after
                    .chars()
                    .next()
                    .is_none_or(|n| matches!(n, '/' | '"' | '\'' | ',' | ']') || n.is_whitespace());
                if whole {
                    out.push_str(&host.display().to_string());
                    rest = after;
                    continue 'scan;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl Pod {
    /// Runs pod `index` of StatefulSet `name` in `namespace`.
    pub async fn start(client: &Client, namespace: &str, name: &str, index: u32) -> Pod {
        Self::start_on(client, namespace, name, index, free_port()).await
    }

    /// The same on a chosen loopback port (the operator's endpoint override must know it
    /// before the pod runs).
    pub async fn start_on(
        client: &Client,
        namespace: &str,
        name: &str,
        index: u32,
        port: u16,
    ) -> Pod {
        let root = tempfile::Builder::new()
            .prefix(&format!("kalam-e2e-pod-{name}-{index}-"))
            .tempdir()
            .expect("a pod root");
        Self::run(client, namespace, name, index, port, root).await
    }

    /// What the StatefulSet controller does after a template change: the pod is deleted and
    /// created again from the current template, on the same volume claims (their
    /// directories are kept; ConfigMap and Secret mounts are written anew).
    pub async fn restart(mut self, client: &Client) -> Pod {
        let _ = self.child.kill().await;
        let Pod {
            namespace,
            statefulset,
            index,
            port,
            _root: root,
            ..
        } = self;
        Self::run(client, &namespace, &statefulset, index, port, root).await
    }

    async fn run(
        client: &Client,
        namespace: &str,
        name: &str,
        index: u32,
        port: u16,
        root: tempfile::TempDir,
    ) -> Pod {
        let sts: StatefulSet = Api::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("StatefulSet {namespace}/{name}: {e}"));
        let pod_name = format!("{name}-{index}");
        let pod_spec = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("the StatefulSet has a pod template");
        let container = pod_spec.containers.first().expect("one container").clone();
        let volumes: BTreeMap<String, Volume> = pod_spec
            .volumes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let claim_names: Vec<String> = sts
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);

        let port_in_container = container_port(&container);
        let mut mounts = BTreeMap::new();
        let mut text_files = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let host = root.path().join(mount.mount_path.trim_start_matches('/'));
            mounts.insert(mount.mount_path.clone(), host.clone());
            if claim_names.contains(&mount.name) {
                std::fs::create_dir_all(&host).expect("a volume claim directory");
                continue;
            }
            // A restarted pod gets its ConfigMap, Secret and emptyDir mounts afresh.
            if host.is_dir() {
                std::fs::remove_dir_all(&host).expect("clearing a mount");
            } else if host.exists() {
                std::fs::remove_file(&host).expect("clearing a mount");
            }
            let volume = volumes
                .get(&mount.name)
                .unwrap_or_else(|| panic!("mount {} names no volume", mount.name));
            // (file name inside the volume, bytes) of everything the volume holds.
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(cm) = &volume.config_map {
                let data = config_map_data(
                    &config_maps
                        .get(&cm.name)
                        .await
                        .unwrap_or_else(|e| panic!("ConfigMap {}: {e}", cm.name)),
                );
                files.extend(data);
            } else if let Some(s) = &volume.secret {
                let secret_name = s.secret_name.clone().expect("a secret volume names it");
                let data = secret_data(
                    &secrets
                        .get(&secret_name)
                        .await
                        .unwrap_or_else(|e| panic!("Secret {secret_name}: {e}")),
                );
                files.extend(data);
            } else if let Some(projected) = &volume.projected {
                for source in projected.sources.clone().unwrap_or_default() {
                    let Some(sp) = source.secret else { continue };
                    let optional = sp.optional.unwrap_or(false);
                    let secret = match secrets.get_opt(&sp.name).await {
                        Ok(Some(s)) => s,
                        Ok(None) if optional => continue,
                        other => panic!("projected Secret {}: {other:?}", sp.name),
                    };
                    let data = secret_data(&secret);
                    for item in sp.items.unwrap_or_default() {
                        match data.get(&item.key) {
                            Some(bytes) => files.push((item.path, bytes.clone())),
                            None if optional => {}
                            None => panic!(
                                "Secret {} has no key {} (the kubelet would not start the pod)",
                                sp.name, item.key
                            ),
                        }
                    }
                }
            } else if volume.empty_dir.is_none() {
                panic!("the stand-in kubelet does not know volume {volume:?}");
            }
            match &mount.sub_path {
                Some(sub) => {
                    let (_, bytes) = files
                        .iter()
                        .find(|(k, _)| k == sub)
                        .unwrap_or_else(|| panic!("subPath {sub} is not in volume {}", mount.name));
                    write(&host, bytes);
                    if volume.config_map.is_some() {
                        text_files.push(host.clone());
                    }
                }
                None => {
                    std::fs::create_dir_all(&host).expect("a mount directory");
                    for (file, bytes) in &files {
                        write(&host.join(file), bytes);
                        if volume.config_map.is_some() {
                            text_files.push(host.join(file));
                        }
                    }
                }
            }
        }

        let listen = (
            format!("0.0.0.0:{port_in_container}"),
            format!("127.0.0.1:{port}"),
        );
        let rewrite = |text: &str| rewrite_paths(&text.replace(&listen.0, &listen.1), &mounts);
        for file in &text_files {
            let text = std::fs::read_to_string(file).expect("a mounted text file");
            std::fs::write(file, rewrite(&text)).expect("rewriting a mounted file");
        }

        let mut env = BTreeMap::new();
        for var in container.env.clone().unwrap_or_default() {
            let value = if let Some(v) = var.value {
                v
            } else if let Some(from) = var.value_from {
                if let Some(field) = from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => pod_name.clone(),
                        "metadata.namespace" => namespace.to_string(),
                        other => panic!("the stand-in kubelet does not know fieldRef {other}"),
                    }
                } else if let Some(key_ref) = from.secret_key_ref {
                    let secret = secrets
                        .get(&key_ref.name)
                        .await
                        .unwrap_or_else(|e| panic!("Secret {}: {e}", key_ref.name));
                    let bytes = secret_data(&secret)
                        .remove(&key_ref.key)
                        .unwrap_or_else(|| {
                            panic!("Secret {} has no {}", key_ref.name, key_ref.key)
                        });
                    String::from_utf8(bytes).expect("a UTF-8 secret value")
                } else {
                    panic!(
                        "the stand-in kubelet does not know env source of {}",
                        var.name
                    )
                }
            } else {
                String::new()
            };
            env.insert(var.name, value);
        }

        let log = root.path().join("container.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the container log");
        let err = out.try_clone().expect("the container log");
        let mut cmd = Command::new(crate::workspace_bin("kalamdb"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KALAMDB_") {
                cmd.env_remove(&key);
            }
        }
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|a| rewrite(a))
            .collect();
        cmd.args(&args)
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        die_with_parent_tokio(&mut cmd);
        let child = cmd.spawn().expect("spawning kalamdb");
        let pod = Pod {
            child,
            name: pod_name,
            url: format!("http://127.0.0.1:{port}"),
            mounts,
            env,
            log,
            namespace: namespace.to_string(),
            statefulset: name.to_string(),
            index,
            port,
            _root: root,
        };
        pod.wait_probe(
            "readiness",
            container.readiness_probe.as_ref(),
            port_in_container,
        )
        .await;
        pod.wait_probe(
            "liveness",
            container.liveness_probe.as_ref(),
            port_in_container,
        )
        .await;
        pod
    }

    /// Waits until the template's HTTP probe answers 2xx on the pod.
    async fn wait_probe(&self, kind: &str, probe: Option<&Probe>, port_in_container: i32) {
        let http = probe
            .and_then(|p| p.http_get.clone())
            .unwrap_or_else(|| panic!("the node container has no HTTP {kind} probe"));
        let port_matches = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => {
                *p == port_in_container
            }
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                name == "http"
            }
        };
        assert!(port_matches, "the {kind} probe targets {:?}", http.port);
        let url = format!("{}{}", self.url, http.path.as_deref().unwrap_or("/"));
        let client = reqwest::Client::new();
        let log = self.log.clone();
        eventually(
            &format!("the {kind} probe {url} of {}", self.name),
            Duration::from_secs(60),
            || async {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("{}; log:\n{}", r.status(), log_tail(&log, 20))),
                    Err(e) => Err(format!("{e}; log:\n{}", log_tail(&log, 20))),
                }
            },
        )
        .await;
    }

    /// The environment the container got.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// An admin client of the node, with a token signed by the JWT secret the pod got.
    pub fn admin(&self) -> KalamClient {
        let secret = self
            .env("KALAMDB_JWT_SECRET")
            .expect("the pod gets its JWT secret from the environment");
        let token = kalam_client::token::mint(
            secret.as_bytes(),
            "e2e-admin",
            Role::Admin,
            Duration::from_secs(600),
        )
        .expect("an admin token");
        KalamClient::new(self.url.clone())
            .expect("the pod's URL")
            .with_token(token)
    }

    /// The rows of the first result of admin SQL `sql`; panics when it fails.
    pub async fn rows(&self, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.admin()
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", e.with_causes()))
            .results
            .into_iter()
            .next()
            .map(|r| r.rows)
            .unwrap_or_default()
    }

    /// The container log so far (for failure messages).
    pub fn log(&self) -> String {
        log_tail(&self.log, 60)
    }

    /// Kills the container.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
