//! `KalamCluster`: a StatefulSet of independent KalamDB nodes and everything around it.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{scalar_map_schema, ScalarMap, IDENTIFIER_PATTERN};

/// Image used when the spec names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/kalamdb/kalamdb:0.1.0";
/// Size of each node's data volume when the spec names none.
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
/// Key of the JWT secret in the referenced (or generated) Secret.
pub const DEFAULT_JWT_KEY: &str = "jwt_secret";
/// A Kubernetes quantity as the storage size is written (`10Gi`, `500M`, `1.5Ti`).
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// A set of KalamDB nodes. Each pod is an independent node (no replication yet): namespaces
/// and storage locations are applied to every pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kalamdb.io",
    version = "v1alpha1",
    kind = "KalamCluster",
    plural = "kalamclusters",
    shortname = "kc",
    namespaced,
    status = "KalamClusterStatus",
    derive = "PartialEq",
    doc = "A set of KalamDB nodes run as a StatefulSet",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KalamClusterSpec {
    /// Container image of the nodes.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// Number of nodes (pods); each is an independent database.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// The data volume of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Compute resources of the node container.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    /// Extra keys of the node's `server.toml` (e.g. `sync_writes: true`). The keys the
    /// operator owns (listen, data_dir, credentials_dir, jwt_secret, node_id,
    /// default_location) are refused.
    #[serde(default, skip_serializing_if = "ScalarMap::is_empty")]
    #[schemars(schema_with = "scalar_map_schema")]
    pub config: ScalarMap,
    /// Secret holding the JWT signing secret; when absent the operator creates
    /// `<cluster>-jwt` once and never rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// The PodDisruptionBudget of the nodes.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// Storage location of the tables created without `LOCATION` (the nodes'
    /// `default_location`): the database name of a StorageLocation of this cluster. When
    /// absent, the built-in `local` location under each node's data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IDENTIFIER_PATTERN), length(min = 1, max = 63))]
    pub default_storage_location: Option<String>,
}

/// When the kubelet pulls the image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ImagePullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The data volume of each node (a volume claim template).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's volume. It can grow (when the StorageClass allows volume
    /// expansion) but never shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub size: String,
    /// StorageClass of the volumes (the cluster default when absent); fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// A key of a Secret in the same Kubernetes namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_jwt_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The PodDisruptionBudget of the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget (an existing one is deleted when false).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods a voluntary disruption may take down at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 0, max = 16))]
    pub max_unavailable: i32,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Observed state of a KalamCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KalamClusterStatus {
    /// Summary of the conditions.
    #[serde(default)]
    pub phase: ClusterPhase,
    /// Pods the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Pods whose node answers `/readyz`.
    #[serde(default)]
    pub ready_replicas: i32,
    /// URL of the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret holding the JWT signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_name: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Summary of a cluster's conditions, for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClusterPhase {
    #[default]
    Pending,
    Progressing,
    Ready,
    Degraded,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_replicas() -> i32 {
    1
}

fn default_storage_size() -> String {
    DEFAULT_STORAGE_SIZE.to_string()
}

fn default_jwt_key() -> String {
    DEFAULT_JWT_KEY.to_string()
}

fn default_true() -> bool {
    true
}

fn default_max_unavailable() -> i32 {
    1
}

/// Requests cpu 250m and memory 512Mi: enough for a small node, no limit.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("250m".into())),
                ("memory".to_string(), Quantity("512Mi".into())),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

impl KalamCluster {
    /// The Secret and key holding the JWT secret: the referenced one, else `<cluster>-jwt`.
    pub fn jwt_secret(&self) -> (String, String) {
        match &self.spec.jwt_secret_ref {
            Some(r) => (r.name.clone(), r.key.clone()),
            None => (
                format!("{}-jwt", self.metadata.name.as_deref().unwrap_or_default()),
                DEFAULT_JWT_KEY.to_string(),
            ),
        }
    }

    /// True when the operator creates the JWT Secret itself.
    pub fn generates_jwt_secret(&self) -> bool {
        self.spec.jwt_secret_ref.is_none()
    }

    /// True when the cluster's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == crate::conditions::READY && c.status == "True")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_spec_takes_every_default() {
        let c: KalamCluster = serde_json::from_value(json!({
            "apiVersion": "kalamdb.io/v1alpha1", "kind": "KalamCluster",
            "metadata": {"name": "kc", "namespace": "default"},
            "spec": {}
        }))
        .unwrap();
        assert_eq!(c.spec.image, DEFAULT_IMAGE);
        assert_eq!(c.spec.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert_eq!(c.spec.replicas, 1);
        assert_eq!(c.spec.storage, StorageSpec::default());
        assert_eq!(c.spec.storage.size, "10Gi");
        assert_eq!(c.spec.resources, default_resources());
        assert!(c.spec.config.is_empty());
        assert_eq!(
            c.spec.pod_disruption_budget,
            PodDisruptionBudgetSpec::default()
        );
        assert_eq!(
            c.jwt_secret(),
            ("kc-jwt".to_string(), "jwt_secret".to_string())
        );
        assert!(c.generates_jwt_secret());
        assert!(!c.is_ready());
        assert_eq!(c.spec.default_storage_location, None);
    }

    #[test]
    fn the_default_storage_location_is_camel_case() {
        let spec: KalamClusterSpec =
            serde_json::from_value(json!({"defaultStorageLocation": "archive"})).unwrap();
        assert_eq!(spec.default_storage_location.as_deref(), Some("archive"));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["defaultStorageLocation"], "archive");
    }

    #[test]
    fn a_referenced_secret_defaults_its_key() {
        let spec: KalamClusterSpec =
            serde_json::from_value(json!({"jwtSecretRef": {"name": "mine"}})).unwrap();
        let c = KalamCluster::new("kc", spec);
        assert_eq!(
            c.jwt_secret(),
            ("mine".to_string(), "jwt_secret".to_string())
        );
        assert!(!c.generates_jwt_secret());
    }

    #[test]
    fn config_values_of_any_json_shape_still_parse() {
        // The controller refuses them with a condition; the object must stay readable.
        let spec: KalamClusterSpec = serde_json::from_value(
            json!({"config": {"sync_writes": true, "max_result_rows": 100000, "bad": {"x": 1}}}),
        )
        .unwrap();
        assert_eq!(spec.config["sync_writes"], json!(true));
        assert_eq!(spec.config["bad"], json!({"x": 1}));
    }
}
