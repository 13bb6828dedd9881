//! `KalamNamespace`: one database namespace, created on every node of a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{scalar_map_schema, ClusterRef, DeletionPolicy, ScalarMap, IDENTIFIER_PATTERN};

/// A database namespace (`CREATE NAMESPACE`) on every node of a KalamCluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kalamdb.io",
    version = "v1alpha1",
    kind = "KalamNamespace",
    plural = "kalamnamespaces",
    shortname = "kns",
    namespaced,
    status = "KalamNamespaceStatus",
    derive = "PartialEq",
    doc = "A KalamDB namespace on every node of a KalamCluster",
    printcolumn(
        name = "Database",
        type_ = "string",
        json_path = ".status.databaseName"
    ),
    printcolumn(name = "Tables", type_ = "integer", json_path = ".status.tableCount"),
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
// old one, and would leave it behind (for a location, with its tables' credentials).
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.clusterRef == oldSelf.clusterRef",
     "message": "clusterRef cannot change: create another object (the old one would be left behind)"},
    {"rule": "has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",
     "message": "name cannot change: create another object (the old one would be left behind)"}
]))]
pub struct KalamNamespaceSpec {
    /// The KalamCluster (same Kubernetes namespace) that holds the database namespace.
    pub cluster_ref: ClusterRef,
    /// Database namespace name; defaults to `metadata.name`, which must then follow the same
    /// rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IDENTIFIER_PATTERN), length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Namespace options (e.g. `retention_days: 90`); hand-made changes are reset on resync.
    #[serde(default, skip_serializing_if = "ScalarMap::is_empty")]
    #[schemars(schema_with = "scalar_map_schema")]
    pub options: ScalarMap,
    /// `Delete` drops the namespace with the object (refused while it has tables).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Observed state of a KalamNamespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KalamNamespaceStatus {
    /// The database namespace this object manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// Tables in the namespace (the largest count among the nodes).
    #[serde(default)]
    pub table_count: i32,
    /// The tables that block a `Delete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and ResourceConflict.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl KalamNamespace {
    /// The database namespace name: `spec.name`, else `metadata.name` (not yet validated).
    pub fn database_name(&self) -> String {
        self.spec
            .name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
