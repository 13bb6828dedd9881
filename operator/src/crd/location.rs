//! `StorageLocation`: a row of `system.storage_locations` on every node of a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClusterRef, DeletionPolicy, SecretRef, IDENTIFIER_PATTERN};

/// A storage location (`system.storage_locations`) on every node of a KalamCluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kalamdb.io",
    version = "v1alpha1",
    kind = "StorageLocation",
    plural = "storagelocations",
    shortname = "ksl",
    namespaced,
    status = "StorageLocationStatus",
    derive = "PartialEq",
    doc = "A KalamDB storage location on every node of a KalamCluster",
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".status.locationName"
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Usage", type_ = "integer", json_path = ".status.usageCount"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Which database object and cluster it is never changes: the operator would not drop the
// old one, and the projected credentials would move from under its tables.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.clusterRef == oldSelf.clusterRef",
     "message": "clusterRef cannot change: create another object (the old one would be left behind)"},
    {"rule": "has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",
     "message": "name cannot change: create another object (the old one would be left behind)"}
]))]
pub struct StorageLocationSpec {
    /// The KalamCluster (same Kubernetes namespace) whose nodes get the location.
    pub cluster_ref: ClusterRef,
    /// `location_name`; defaults to `metadata.name`, which must then follow the same rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IDENTIFIER_PATTERN), length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Where the files go.
    #[serde(rename = "type")]
    pub location_type: LocationType,
    /// `s3://bucket/prefix`, or an absolute directory inside the pods.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Secret with `access_key_id`, `secret_access_key` and optional `region`, `endpoint`.
    /// It never travels through SQL: it is projected into the pods' credentials directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// `Delete` removes the row with the object (refused while tables use it).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Kind of store behind a location (`location_type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LocationType {
    Filesystem,
    S3,
}

impl LocationType {
    /// The value of `location_type` in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            LocationType::Filesystem => "filesystem",
            LocationType::S3 => "s3",
        }
    }
}

/// Observed state of a StorageLocation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageLocationStatus {
    /// The `location_name` this object manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_name: Option<String>,
    /// Tables using the location (the largest count among the nodes).
    #[serde(default)]
    pub usage_count: i64,
    /// The tables that use the location (`<namespace>.<table>`); a `Delete` waits for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and ResourceConflict.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl StorageLocation {
    /// The `location_name`: `spec.name`, else `metadata.name` (not yet validated).
    pub fn location_name(&self) -> String {
        self.spec
            .name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
