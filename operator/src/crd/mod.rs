//! The custom resources of `kalamdb.io/v1alpha1` (see `notes/crd-spec.md` of the project):
//! their Rust types, the OpenAPI schemas derived from them, and small rules shared by all three
//! kinds (identifier names, the `kalamdb.io/managed` annotation, cluster references).
//!
//! Field names, defaults and validation live on the types, so the schema the API server
//! enforces and the values the controllers read cannot disagree.

mod cluster;
mod location;
mod namespace;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use cluster::*;
pub use location::*;
pub use namespace::*;

/// API group of every KalamDB resource.
pub const GROUP: &str = "kalamdb.io";
/// `kalamdb.io/managed: "false"` detaches a resource: the operator stops touching the database
/// for it.
pub const MANAGED_ANNOTATION: &str = "kalamdb.io/managed";
/// The identifier rule of the database (`API.md` §4), as the schemas state it.
pub const IDENTIFIER_PATTERN: &str = "^[a-z][a-z0-9_]*$";
/// Longest database name the operator accepts (a Kubernetes label value fits it too).
pub const MAX_NAME_LEN: usize = 63;

/// Extra scalar settings (`server.toml` keys, namespace options): string, number or bool.
///
/// Values are kept as JSON so that one odd value cannot make the whole object unreadable for
/// the controller; the reconcilers refuse anything that is not a scalar.
pub type ScalarMap = BTreeMap<String, serde_json::Value>;

/// A KalamCluster in the same Kubernetes namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// Name of the KalamCluster.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A Secret in the same Kubernetes namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What deleting the Kubernetes object does to the database object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    // Leave the database object in place (the default: data is never dropped by accident).
    #[default]
    Retain,
    // Drop it; refused by the node while tables still use it.
    Delete,
}

/// `^[a-z][a-z0-9_]*$`, at most [`MAX_NAME_LEN`] bytes.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= MAX_NAME_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// True for the values a [`ScalarMap`] may hold: string, number or bool.
pub fn is_scalar(v: &serde_json::Value) -> bool {
    matches!(
        v,
        serde_json::Value::String(_) | serde_json::Value::Number(_) | serde_json::Value::Bool(_)
    )
}

/// False when the object carries `kalamdb.io/managed: "false"`.
pub fn is_managed<K: ResourceExt>(obj: &K) -> bool {
    obj.annotations()
        .get(MANAGED_ANNOTATION)
        .is_none_or(|v| v.trim() != "false")
}

/// Schema of a [`ScalarMap`]: an object whose values the API server keeps as given.
///
/// A structural schema cannot say "string, number or bool" for one value, so the values are
/// marked `x-kubernetes-preserve-unknown-fields` and the controllers validate them.
pub(crate) fn scalar_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// The three CRDs, in the order `kalam-operator crd` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        KalamCluster::crd(),
        KalamNamespace::crd(),
        StorageLocation::crd(),
    ]
}

/// Header of every generated CRD file.
const GENERATED_HEADER: &str = "# Generated from the kalam-operator types: do not edit.\n\
# Regenerate with: KALAM_UPDATE_CRDS=1 cargo test -p kalam-operator --test it crds_up_to_date\n";

/// One CRD as YAML, as stored in `crds/<plural>.<group>.yaml`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!("{GENERATED_HEADER}{}\n", body.trim_end()))
}

/// Every CRD as one multi-document YAML stream (`kalam-operator crd`).
pub fn all_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}

/// `(file name, contents)` of each CRD file under `crds/`.
pub fn files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    all()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), to_yaml(crd)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let v = serde_json::to_value(crd).unwrap();
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Every node must say its type (or opt out of pruning): the API server refuses CRDs
    /// whose schema is not structural.
    fn assert_structural(node: &Value, path: &str) {
        let Some(obj) = node.as_object() else {
            panic!("{path}: a schema must be an object, got {node}")
        };
        for forbidden in ["anyOf", "oneOf", "allOf", "$ref", "const"] {
            assert!(
                !obj.contains_key(forbidden),
                "{path} uses {forbidden}: {node}"
            );
        }
        let opted_out = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
            || obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
        assert!(
            obj.contains_key("type") || opted_out,
            "{path} has no type: {node}"
        );
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                assert_structural(v, &format!("{path}.{k}"));
            }
        }
        if let Some(items) = obj.get("items") {
            assert_structural(items, &format!("{path}[]"));
        }
        if let Some(extra) = obj.get("additionalProperties") {
            if extra.is_object() {
                assert_structural(extra, &format!("{path}.*"));
            }
        }
    }

    #[test]
    fn schemas_are_structural() {
        for crd in all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            assert_structural(&schema_of(&crd), &name);
        }
    }

    #[test]
    fn names_scope_and_subresources() {
        let expected = [
            ("kalamclusters.kalamdb.io", "KalamCluster", "kc"),
            ("kalamnamespaces.kalamdb.io", "KalamNamespace", "kns"),
            ("storagelocations.kalamdb.io", "StorageLocation", "ksl"),
        ];
        for (crd, (name, kind, short)) in all().iter().zip(expected) {
            let v = serde_json::to_value(crd).unwrap();
            assert_eq!(v["metadata"]["name"], name);
            assert_eq!(v["spec"]["group"], GROUP);
            assert_eq!(v["spec"]["scope"], "Namespaced");
            assert_eq!(v["spec"]["names"]["kind"], kind);
            assert_eq!(v["spec"]["names"]["shortNames"], json!([short]));
            let version = &v["spec"]["versions"][0];
            assert_eq!(version["name"], "v1alpha1");
            assert_eq!(version["subresources"]["status"], json!({}));
        }
    }

    #[test]
    fn printer_columns() {
        let columns = |crd: &CustomResourceDefinition| -> Vec<(String, String)> {
            let v = serde_json::to_value(crd).unwrap();
            v["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_string(),
                        c["jsonPath"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let ready = ".status.conditions[?(@.type==\"Ready\")].status";
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            columns(&KalamCluster::crd()),
            vec![
                s("Phase", ".status.phase"),
                s("Ready", ".status.readyReplicas"),
                s("Replicas", ".spec.replicas"),
                s("Endpoint", ".status.endpoint"),
                s("Age", ".metadata.creationTimestamp"),
            ]
        );
        assert_eq!(
            columns(&KalamNamespace::crd()),
            vec![
                s("Database", ".status.databaseName"),
                s("Tables", ".status.tableCount"),
                s("Ready", ready),
                s("Age", ".metadata.creationTimestamp"),
            ]
        );
        assert_eq!(
            columns(&StorageLocation::crd()),
            vec![
                s("Location", ".status.locationName"),
                s("Type", ".spec.type"),
                s("Usage", ".status.usageCount"),
                s("Ready", ready),
                s("Age", ".metadata.creationTimestamp"),
            ]
        );
    }

    #[test]
    fn cluster_schema_has_defaults_ranges_and_enums() {
        let spec = &schema_of(&KalamCluster::crd())["properties"]["spec"];
        let p = &spec["properties"];
        assert_eq!(p["image"]["default"], DEFAULT_IMAGE);
        assert_eq!(p["imagePullPolicy"]["default"], "IfNotPresent");
        assert_eq!(
            p["imagePullPolicy"]["enum"],
            json!(["IfNotPresent", "Always", "Never"])
        );
        assert_eq!(p["replicas"]["default"], 1);
        // schemars writes range bounds as JSON floats (`1.0`); the API server takes either.
        assert_eq!(p["replicas"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(p["replicas"]["maximum"].as_f64(), Some(16.0));
        assert_eq!(p["storage"]["default"], json!({"size": "10Gi"}));
        assert_eq!(p["storage"]["properties"]["size"]["default"], "10Gi");
        assert!(p["storage"]["properties"]["size"]["pattern"].is_string());
        assert_eq!(
            p["resources"]["default"],
            json!({"requests": {"cpu": "250m", "memory": "512Mi"}})
        );
        assert_eq!(
            p["podDisruptionBudget"]["default"],
            json!({"enabled": true, "maxUnavailable": 1})
        );
        assert_eq!(
            p["jwtSecretRef"]["properties"]["key"]["default"],
            "jwt_secret"
        );
        assert_eq!(p["config"]["type"], "object");
        let status = &schema_of(&KalamCluster::crd())["properties"]["status"]["properties"];
        assert_eq!(
            status["phase"]["enum"],
            json!(["Pending", "Progressing", "Ready", "Degraded"])
        );
    }

    #[test]
    fn namespace_and_location_schemas_validate_names() {
        for crd in [KalamNamespace::crd(), StorageLocation::crd()] {
            let p = &schema_of(&crd)["properties"]["spec"]["properties"];
            assert_eq!(p["name"]["pattern"], IDENTIFIER_PATTERN);
            assert_eq!(p["name"]["maxLength"], 63);
            assert_eq!(p["deletionPolicy"]["default"], "Retain");
            assert_eq!(p["deletionPolicy"]["enum"], json!(["Retain", "Delete"]));
            assert_eq!(p["clusterRef"]["properties"]["name"]["minLength"], 1);
        }
        let p = &schema_of(&StorageLocation::crd())["properties"]["spec"]["properties"];
        assert_eq!(p["type"]["enum"], json!(["filesystem", "s3"]));
        assert_eq!(p["path"]["minLength"], 1);
        let spec = &schema_of(&StorageLocation::crd())["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            required.contains(&"clusterRef")
                && required.contains(&"type")
                && required.contains(&"path")
        );
    }

    #[test]
    fn identifiers_and_the_managed_annotation() {
        for ok in ["app", "a1_b", "x"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "App", "1a", "_x", "a-b", "a.b", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
        let mut ns = KalamNamespace::new(
            "app",
            KalamNamespaceSpec {
                cluster_ref: ClusterRef { name: "kc".into() },
                name: None,
                options: ScalarMap::new(),
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        assert!(is_managed(&ns));
        ns.annotations_mut()
            .insert(MANAGED_ANNOTATION.into(), "false".into());
        assert!(!is_managed(&ns));
        ns.annotations_mut()
            .insert(MANAGED_ANNOTATION.into(), "true".into());
        assert!(is_managed(&ns));
    }

    #[test]
    fn every_crd_renders_as_yaml() {
        let all = all_yaml().unwrap();
        assert_eq!(all.matches("kind: CustomResourceDefinition").count(), 3);
        assert_eq!(all.matches("\n---\n").count(), 2);
        let files = files().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "kalamclusters.kalamdb.io.yaml",
                "kalamnamespaces.kalamdb.io.yaml",
                "storagelocations.kalamdb.io.yaml"
            ]
        );
    }
}
