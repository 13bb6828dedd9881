//! The objects a KalamCluster is made of, built from its spec and what the reconciler fetched.
//! Pure functions: no API calls, no clock, no randomness (the JWT secret value is passed in).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    Secret, SecretKeySelector, SecretProjection, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::validate::{
    StorageTemplate, DATA_VOLUME, DEFAULT_LOCATION_KEY, STORAGE_SIZE_ANNOTATION,
};
use crate::context::{MANAGER, NODE_PORT};
use crate::crd::{KalamCluster, DEFAULT_JWT_KEY};
use crate::error::Invalid;

/// Where the node keeps RocksDB, the catalog and the local Parquet files.
pub const DATA_DIR: &str = "/var/lib/kalamdb";
/// Where the node reads `server.toml`.
pub const CONFIG_FILE: &str = "/etc/kalamdb/server.toml";
/// Where the credential sets of storage locations are projected.
pub const CREDENTIALS_DIR: &str = "/etc/kalamdb/credentials";
/// Pod template annotation holding the hash of everything the pods read at start.
pub const CONFIG_HASH_ANNOTATION: &str = "kalamdb.io/config-hash";
/// Key of the ConfigMap.
pub const SERVER_TOML: &str = "server.toml";
/// The node container.
pub const CONTAINER: &str = "kalamdb";
/// User and group of the node process (the image's non-root user).
pub const NODE_UID: i64 = 10001;

/// The credential set of one storage location, projected from its Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Credentials {
    /// `location_name` (and `credentials_ref`): the directory under the credentials dir.
    pub location: String,
    /// The Secret with `access_key_id`, `secret_access_key`, `region`, `endpoint`.
    pub secret: String,
}

/// Everything the builders need besides the spec.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub cluster: &'a KalamCluster,
    pub name: String,
    pub namespace: String,
    /// Controller owner reference to the KalamCluster.
    pub owner: OwnerReference,
    /// Secret and key of the JWT secret.
    pub jwt: (String, String),
    /// Sorted by location.
    pub credentials: Vec<Credentials>,
    /// The claim template (the existing one once the StatefulSet exists).
    pub storage: StorageTemplate,
    /// sha256 (hex) of the JWT secret's value, empty while unknown: in the config hash, never
    /// the value itself.
    pub jwt_digest: String,
    /// The volume size recorded as applied on the StatefulSet.
    pub applied_size: String,
}

/// The objects applied on every reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub headless: Service,
    pub client: Service,
    pub stateful_set: StatefulSet,
    /// `None` when disabled (an existing one is deleted).
    pub pdb: Option<PodDisruptionBudget>,
}

/// Builds every applied object.
pub fn desired(inputs: &Inputs) -> Result<Desired, Invalid> {
    let toml = server_toml(inputs.cluster)?;
    let credentials = credentials_volume(&inputs.credentials);
    let hash = config_hash(&toml, &credentials, &inputs.jwt_digest);
    Ok(Desired {
        config_map: config_map(inputs, toml),
        headless: headless_service(inputs),
        client: client_service(inputs),
        stateful_set: stateful_set(inputs, credentials, hash),
        pdb: pdb(inputs),
    })
}

/// `app.kubernetes.io/name`, `instance` and `managed-by`.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// The labels selecting a cluster's pods.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kalamdb".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
    ])
}

/// Label selector (text) of a cluster's PVCs and pods.
pub fn selector_text(cluster: &str) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(inputs: &Inputs, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(inputs.namespace.clone()),
        labels: Some(labels(&inputs.name)),
        owner_references: Some(vec![inputs.owner.clone()]),
        ..Default::default()
    }
}

fn selector(inputs: &Inputs) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(&inputs.name)),
        ..Default::default()
    }
}

/// The node's `server.toml`: the keys the operator owns, then `spec.config`, then
/// `default_location` from `spec.defaultStorageLocation` (validation refuses it in
/// `spec.config`, and the field wins regardless).
pub fn server_toml(cluster: &KalamCluster) -> Result<String, Invalid> {
    let mut table = toml::Table::new();
    let owned = [
        ("listen", format!("0.0.0.0:{NODE_PORT}")),
        ("data_dir", DATA_DIR.to_string()),
        ("credentials_dir", CREDENTIALS_DIR.to_string()),
        ("log_format", "json".to_string()),
    ];
    for (key, value) in owned {
        table.insert(key.to_string(), toml::Value::String(value));
    }
    for (key, value) in &cluster.spec.config {
        table.insert(key.clone(), toml_value(key, value)?);
    }
    if let Some(location) = &cluster.spec.default_storage_location {
        table.insert(
            DEFAULT_LOCATION_KEY.to_string(),
            toml::Value::String(location.clone()),
        );
    }
    toml::to_string(&table).map_err(|e| {
        Invalid::new(
            "InvalidSpec",
            format!("config cannot be written as TOML: {e}"),
        )
    })
}

fn toml_value(key: &str, value: &Value) -> Result<toml::Value, Invalid> {
    let refused = || {
        Invalid::new(
            "InvalidSpec",
            format!("config.{key} must be a string, a number or a boolean"),
        )
    };
    Ok(match value {
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !n.is_f64() => toml::Value::Integer(i),
            (_, Some(f)) if n.is_f64() => toml::Value::Float(f),
            _ => return Err(refused()),
        },
        _ => return Err(refused()),
    })
}

/// The `credentials` volume: for each location with a Secret, the required keys and the
/// optional ones (`region`, `endpoint`) as two projections, so that a missing optional key
/// does not keep the pod from starting. An emptyDir when no location has credentials.
pub fn credentials_volume(credentials: &[Credentials]) -> Volume {
    if credentials.is_empty() {
        return Volume {
            name: "credentials".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
    }
    let project = |c: &Credentials, keys: &[&str], optional: bool| VolumeProjection {
        secret: Some(SecretProjection {
            name: c.secret.clone(),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).to_string(),
                        path: format!("{}/{k}", c.location),
                        mode: None,
                    })
                    .collect(),
            ),
            optional: Some(optional),
        }),
        ..Default::default()
    };
    let sources = credentials
        .iter()
        .flat_map(|c| {
            [
                project(c, &REQUIRED_CREDENTIAL_KEYS, false),
                project(c, &["region", "endpoint"], true),
            ]
        })
        .collect();
    Volume {
        name: "credentials".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: None,
        }),
        ..Default::default()
    }
}

/// The keys of a credentials Secret the projection requires (`region` and `endpoint` are
/// optional).
pub const REQUIRED_CREDENTIAL_KEYS: [&str; 2] = ["access_key_id", "secret_access_key"];

/// sha256 of what the pods read at start (server.toml and the credential projection): a
/// change rolls the pods.
pub fn config_hash(toml: &str, credentials: &Volume, jwt_digest: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(toml.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(credentials).unwrap_or_default());
    hasher.update(b"\n");
    hasher.update(jwt_digest.as_bytes());
    format!("{:x}", hasher.finalize())
}

/// sha256 of `bytes` as hex.
pub fn digest(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn config_map(inputs: &Inputs, toml: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(inputs, format!("{}-config", inputs.name)),
        data: Some(BTreeMap::from([(SERVER_TOML.to_string(), toml)])),
        ..Default::default()
    }
}

fn http_port() -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port: i32::from(NODE_PORT),
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// `<c>-headless`: stable per-pod DNS names, ready or not (the operator talks to each pod).
pub fn headless_service(inputs: &Inputs) -> Service {
    Service {
        metadata: meta(inputs, format!("{}-headless", inputs.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&inputs.name)),
            ports: Some(vec![http_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<c>`: the client endpoint, ready pods only.
pub fn client_service(inputs: &Inputs) -> Service {
    Service {
        metadata: meta(inputs, inputs.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&inputs.name)),
            ports: Some(vec![http_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn env_from_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn container(inputs: &Inputs) -> Container {
    let spec = &inputs.cluster.spec;
    let (jwt_secret, jwt_key) = inputs.jwt.clone();
    Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(vec!["serve".into(), "--config".into(), CONFIG_FILE.into()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(NODE_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(vec![
            // Each pod is its own node: its name is the node id.
            env_from_field("KALAMDB_NODE_ID", "metadata.name"),
            EnvVar {
                name: "KALAMDB_JWT_SECRET".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: jwt_secret,
                        key: jwt_key,
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 2, 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 10, 6)),
        resources: Some(spec.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(DATA_VOLUME, DATA_DIR, false),
            // One file (subPath), so that the credentials directory can be mounted beside it.
            VolumeMount {
                sub_path: Some(SERVER_TOML.into()),
                ..mount("config", CONFIG_FILE, true)
            },
            mount("credentials", CREDENTIALS_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    }
}

fn pod_spec(inputs: &Inputs, credentials: Volume) -> PodSpec {
    PodSpec {
        containers: vec![container(inputs)],
        security_context: Some(PodSecurityContext {
            fs_group: Some(NODE_UID),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        // Spread the nodes over machines when the scheduler can.
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".into(),
                            label_selector: Some(selector(inputs)),
                            ..Default::default()
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // Service links would put `<SERVICE>_PORT` variables into the node's environment.
        enable_service_links: Some(false),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: format!("{}-config", inputs.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            credentials,
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

fn claim_template(inputs: &Inputs) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(&inputs.name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(inputs.storage.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: inputs.storage.class.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn stateful_set(inputs: &Inputs, credentials: Volume, config_hash: String) -> StatefulSet {
    let mut metadata = meta(inputs, inputs.name.clone());
    metadata.annotations = Some(BTreeMap::from([(
        STORAGE_SIZE_ANNOTATION.to_string(),
        inputs.applied_size.clone(),
    )]));
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(inputs.cluster.spec.replicas),
            service_name: Some(format!("{}-headless", inputs.name)),
            pod_management_policy: Some("Parallel".into()),
            selector: selector(inputs),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&inputs.name)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash,
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod_spec(inputs, credentials)),
            },
            volume_claim_templates: Some(vec![claim_template(inputs)]),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn pdb(inputs: &Inputs) -> Option<PodDisruptionBudget> {
    let spec = &inputs.cluster.spec.pod_disruption_budget;
    spec.enabled.then(|| PodDisruptionBudget {
        metadata: meta(inputs, inputs.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spec.max_unavailable)),
            selector: Some(selector(inputs)),
            ..Default::default()
        }),
        status: None,
    })
}

/// The generated `<c>-jwt` Secret holding `value` (created once, never rotated).
pub fn jwt_secret(inputs: &Inputs, value: String) -> Secret {
    Secret {
        metadata: meta(inputs, inputs.jwt.0.clone()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DEFAULT_JWT_KEY.to_string(),
            ByteString(value.into_bytes()),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::validate::storage_plan;
    use kube::Resource;
    use serde_json::json;

    fn cluster(spec: Value) -> KalamCluster {
        serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
            "metadata": {"name": "kc", "namespace": "db", "uid": "u-1", "generation": 1},
            "spec": spec
        }))
        .unwrap()
    }

    fn inputs(c: &KalamCluster, credentials: Vec<Credentials>) -> Inputs<'_> {
        let plan = storage_plan(&c.spec.storage, None).unwrap();
        Inputs {
            cluster: c,
            name: "kc".into(),
            namespace: "db".into(),
            owner: c.controller_owner_ref(&()).unwrap(),
            jwt: c.jwt_secret(),
            credentials,
            storage: plan.template,
            applied_size: plan.applied,
            jwt_digest: String::new(),
        }
    }

    fn v<T: serde::Serialize>(obj: &T) -> Value {
        serde_json::to_value(obj).unwrap()
    }

    fn assert_owned(meta: &Value, name: &str) {
        assert_eq!(meta["name"], name);
        assert_eq!(meta["namespace"], "db");
        assert_eq!(
            meta["labels"],
            json!({"app.kubernetes.io/name": "kalamdb", "app.kubernetes.io/instance": "kc",
                   "app.kubernetes.io/managed-by": "kalam-operator"})
        );
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster", "name": "kc",
                    "uid": "u-1", "controller": true}])
        );
    }

    #[test]
    fn config_map_holds_server_toml_with_owned_keys_and_extras() {
        let c = cluster(
            json!({"config": {"sync_writes": true, "max_result_rows": 100000,
                                          "job_retention": "3d", "log_format": "text", "ratio": 0.5}}),
        );
        let d = desired(&inputs(&c, vec![])).unwrap();
        let cm = v(&d.config_map);
        assert_owned(&cm["metadata"], "kc-config");
        let text = cm["data"]["server.toml"].as_str().unwrap();
        let parsed: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(parsed["listen"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(parsed["data_dir"].as_str(), Some("/var/lib/kalamdb"));
        assert_eq!(
            parsed["credentials_dir"].as_str(),
            Some("/etc/kalamdb/credentials")
        );
        assert_eq!(parsed["sync_writes"].as_bool(), Some(true));
        assert_eq!(parsed["max_result_rows"].as_integer(), Some(100000));
        assert_eq!(parsed["job_retention"].as_str(), Some("3d"));
        assert_eq!(parsed["ratio"].as_float(), Some(0.5));
        // Not owned: the spec may change the log format.
        assert_eq!(parsed["log_format"].as_str(), Some("text"));
        assert!(parsed.get("node_id").is_none() && parsed.get("jwt_secret").is_none());
        let plain = desired(&inputs(&cluster(json!({})), vec![])).unwrap();
        let parsed: toml::Table =
            toml::from_str(plain.config_map.data.as_ref().unwrap()["server.toml"].as_str())
                .unwrap();
        assert_eq!(parsed["log_format"].as_str(), Some("json"));
        assert_eq!(parsed.len(), 4);
    }

    #[test]
    fn the_default_storage_location_is_rendered_as_default_location() {
        let c = cluster(json!({"defaultStorageLocation": "archive",
                               "config": {"sync_writes": true}}));
        let text = server_toml(&c).unwrap();
        assert!(text.contains("default_location = \"archive\""), "{text}");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["default_location"].as_str(), Some("archive"));
        assert_eq!(parsed["sync_writes"].as_bool(), Some(true));
        assert_eq!(parsed.len(), 6);
        let plain = cluster(json!({"config": {"sync_writes": true}}));
        let plain_text = server_toml(&plain).unwrap();
        assert!(!plain_text.contains("default_location"), "{plain_text}");
        // The pods read server.toml at start: a new default rolls them.
        let hash = |c: &KalamCluster| {
            v(&desired(&inputs(c, vec![])).unwrap().stateful_set)["spec"]["template"]["metadata"]
                ["annotations"][CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert!(hash(&c).is_string());
        assert_ne!(hash(&c), hash(&plain));
    }

    #[test]
    fn services_headless_and_client() {
        let c = cluster(json!({}));
        let d = desired(&inputs(&c, vec![])).unwrap();
        let headless = v(&d.headless);
        assert_owned(&headless["metadata"], "kc-headless");
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
        let port = json!([{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]);
        assert_eq!(headless["spec"]["ports"], port);
        let selector =
            json!({"app.kubernetes.io/name": "kalamdb", "app.kubernetes.io/instance": "kc"});
        assert_eq!(headless["spec"]["selector"], selector);
        let client = v(&d.client);
        assert_owned(&client["metadata"], "kc");
        assert_eq!(client["spec"]["type"], "ClusterIP");
        assert_eq!(client["spec"]["ports"], port);
        assert_eq!(client["spec"]["selector"], selector);
        assert!(client["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn stateful_set_runs_hardened_independent_nodes() {
        let c = cluster(
            json!({"replicas": 3, "image": "example/kalamdb:1", "imagePullPolicy": "Always",
                               "storage": {"size": "20Gi", "storageClassName": "fast"}}),
        );
        let d = desired(&inputs(&c, vec![])).unwrap();
        let sts = v(&d.stateful_set);
        assert_owned(&sts["metadata"], "kc");
        assert_eq!(
            sts["metadata"]["annotations"]["kalamdb.io/storage-size"],
            "20Gi"
        );
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["serviceName"], "kc-headless");
        assert_eq!(spec["podManagementPolicy"], "Parallel");
        let selector =
            json!({"app.kubernetes.io/name": "kalamdb", "app.kubernetes.io/instance": "kc"});
        assert_eq!(spec["selector"]["matchLabels"], selector);
        let template = &spec["template"];
        assert_eq!(
            template["metadata"]["labels"]["app.kubernetes.io/instance"],
            "kc"
        );
        let hash = template["metadata"]["annotations"]["kalamdb.io/config-hash"]
            .as_str()
            .unwrap();
        assert_eq!(hash.len(), 64);

        let pod = &template["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({"fsGroup": 10001, "runAsNonRoot": true})
        );
        assert_eq!(pod["enableServiceLinks"], false);
        let anti = &pod["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            anti["podAffinityTerm"]["topologyKey"],
            "kubernetes.io/hostname"
        );
        assert_eq!(
            anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
            selector
        );

        let container = &pod["containers"][0];
        assert_eq!(container["name"], "kalamdb");
        assert_eq!(container["image"], "example/kalamdb:1");
        assert_eq!(container["imagePullPolicy"], "Always");
        assert_eq!(
            container["args"],
            json!(["serve", "--config", "/etc/kalamdb/server.toml"])
        );
        assert_eq!(
            container["ports"],
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"],
            json!({"path": "/readyz", "port": "http"})
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": "http"})
        );
        assert_eq!(
            container["resources"],
            json!({"requests": {"cpu": "250m", "memory": "512Mi"}})
        );
        let sc = &container["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], 10001);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
        assert_eq!(
            container["env"],
            json!([
                {"name": "KALAMDB_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "KALAMDB_JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "kc-jwt", "key": "jwt_secret"}}}
            ])
        );
        assert_eq!(
            container["volumeMounts"],
            json!([
                {"name": "data", "mountPath": "/var/lib/kalamdb"},
                {"name": "config", "mountPath": "/etc/kalamdb/server.toml", "subPath": "server.toml", "readOnly": true},
                {"name": "credentials", "mountPath": "/etc/kalamdb/credentials", "readOnly": true},
                {"name": "tmp", "mountPath": "/tmp"}
            ])
        );
        assert_eq!(
            pod["volumes"],
            json!([
                {"name": "config", "configMap": {"name": "kc-config"}},
                {"name": "credentials", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}}
            ])
        );
        assert_eq!(
            spec["volumeClaimTemplates"],
            json!([{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "labels": selector},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "20Gi"}}}}])
        );
    }

    #[test]
    fn location_secrets_are_projected_per_location() {
        let c = cluster(json!({}));
        let creds = vec![Credentials {
            location: "cold".into(),
            secret: "s3-creds".into(),
        }];
        let d = desired(&inputs(&c, creds)).unwrap();
        let volumes = v(&d.stateful_set)["spec"]["template"]["spec"]["volumes"].clone();
        assert_eq!(
            volumes[1],
            json!({"name": "credentials", "projected": {"sources": [
                {"secret": {"name": "s3-creds", "optional": false, "items": [
                    {"key": "access_key_id", "path": "cold/access_key_id"},
                    {"key": "secret_access_key", "path": "cold/secret_access_key"}]}},
                {"secret": {"name": "s3-creds", "optional": true, "items": [
                    {"key": "region", "path": "cold/region"},
                    {"key": "endpoint", "path": "cold/endpoint"}]}}
            ]}})
        );
    }

    #[test]
    fn the_config_hash_changes_with_config_credentials_and_the_jwt_secret_only() {
        let hash = |c: &KalamCluster, creds: Vec<Credentials>| {
            let d = desired(&inputs(c, creds)).unwrap();
            v(&d.stateful_set)["spec"]["template"]["metadata"]["annotations"]
                ["kalamdb.io/config-hash"]
                .clone()
        };
        let base = cluster(json!({}));
        let h = hash(&base, vec![]);
        assert_eq!(h, hash(&base, vec![]), "deterministic");
        assert_eq!(
            h,
            hash(&cluster(json!({"replicas": 5})), vec![]),
            "scaling does not roll"
        );
        assert_ne!(
            h,
            hash(&cluster(json!({"config": {"sync_writes": true}})), vec![])
        );
        let creds = vec![Credentials {
            location: "cold".into(),
            secret: "s".into(),
        }];
        assert_ne!(h, hash(&base, creds));
        // A rotated JWT secret rolls the pods, which read it when they start.
        let mut rotated = inputs(&base, vec![]);
        rotated.jwt_digest = digest(b"new secret");
        let d = desired(&rotated).unwrap();
        assert_ne!(
            h,
            v(&d.stateful_set)["spec"]["template"]["metadata"]["annotations"]
                ["kalamdb.io/config-hash"]
        );
    }

    #[test]
    fn pdb_follows_its_switch() {
        let d = desired(&inputs(&cluster(json!({})), vec![])).unwrap();
        let pdb = v(d.pdb.as_ref().unwrap());
        assert_owned(&pdb["metadata"], "kc");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "kc"
        );
        let two = desired(&inputs(
            &cluster(json!({"podDisruptionBudget": {"maxUnavailable": 2}})),
            vec![],
        ))
        .unwrap();
        assert_eq!(v(two.pdb.as_ref().unwrap())["spec"]["maxUnavailable"], 2);
        let off = desired(&inputs(
            &cluster(json!({"podDisruptionBudget": {"enabled": false}})),
            vec![],
        ))
        .unwrap();
        assert!(off.pdb.is_none());
    }

    #[test]
    fn referenced_jwt_secrets_are_used_and_generated_ones_hold_the_value() {
        let c = cluster(json!({"jwtSecretRef": {"name": "mine", "key": "token_key"}}));
        let d = desired(&inputs(&c, vec![])).unwrap();
        let env = &v(&d.stateful_set)["spec"]["template"]["spec"]["containers"][0]["env"][1];
        assert_eq!(
            env["valueFrom"]["secretKeyRef"],
            json!({"name": "mine", "key": "token_key"})
        );

        let c = cluster(json!({}));
        let secret = v(&jwt_secret(&inputs(&c, vec![]), "ab".repeat(32)));
        assert_owned(&secret["metadata"], "kc-jwt");
        assert_eq!(secret["type"], "Opaque");
        // base64 of 64 hex characters.
        let data = secret["data"]["jwt_secret"].as_str().unwrap();
        assert_eq!(data.len(), 88);
    }

    #[test]
    fn an_existing_claim_template_is_kept() {
        let c = cluster(json!({"storage": {"size": "50Gi"}}));
        let mut i = inputs(&c, vec![]);
        i.storage = StorageTemplate {
            size: "10Gi".into(),
            class: None,
        };
        i.applied_size = "50Gi".into();
        let sts = v(&desired(&i).unwrap().stateful_set);
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "10Gi"
        );
        assert_eq!(
            sts["metadata"]["annotations"]["kalamdb.io/storage-size"],
            "50Gi"
        );
    }

    #[test]
    fn selector_text_lists_the_selector_labels() {
        assert_eq!(
            selector_text("kc"),
            "app.kubernetes.io/instance=kc,app.kubernetes.io/name=kalamdb"
        );
    }
}
