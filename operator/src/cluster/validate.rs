//! Which KalamCluster specs the operator accepts, and what a change of the storage size means
//! for the existing volumes. Pure functions: the reconciler feeds them what it fetched.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::Value;

use crate::crd::{
    is_identifier, is_scalar, KalamClusterSpec, StorageSpec, IDENTIFIER_PATTERN, MAX_NAME_LEN,
};
use crate::error::Invalid;

/// `server.toml` keys the operator sets itself; the spec may not override them.
pub const OWNED_KEYS: [&str; 6] = [
    "listen",
    "data_dir",
    "credentials_dir",
    "jwt_secret",
    "node_id",
    DEFAULT_LOCATION_KEY,
];
/// The `server.toml` key rendered from `spec.defaultStorageLocation`.
pub const DEFAULT_LOCATION_KEY: &str = "default_location";
/// Annotation of the StatefulSet recording the volume size last applied to every PVC (the
/// claim template itself is immutable and keeps the size the StatefulSet was created with).
pub const STORAGE_SIZE_ANNOTATION: &str = "kalamdb.io/storage-size";
/// Name of the volume claim template (PVCs are `data-<cluster>-<i>`).
pub const DATA_VOLUME: &str = "data";

/// Longest KalamCluster name: its StatefulSet's pods carry the label
/// `controller-revision-hash: <name>-<10 characters>`, which must fit a label value's 63.
pub const MAX_CLUSTER_NAME_LEN: usize = 52;

/// Checks a KalamCluster's name: it names a Service (`<name>-headless`) and a StatefulSet,
/// so it must be a DNS-1035 label, short enough for the names and labels made from it.
/// Refused here, it is a status the user can read instead of an apply the API server
/// refuses on every retry.
pub fn name(name: &str) -> Result<(), Invalid> {
    let label = name.len() <= MAX_CLUSTER_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if label {
        return Ok(());
    }
    Err(Invalid::new(
        "InvalidSpec",
        format!(
            "the KalamCluster name '{name}' must be lower-case letters, digits and '-', start \
             with a letter, end with a letter or digit, and be at most {MAX_CLUSTER_NAME_LEN} \
             characters (it names the StatefulSet and its Services)"
        ),
    ))
}

/// Checks what the schema cannot: owned and non-scalar config keys, the storage size.
pub fn validate(spec: &KalamClusterSpec) -> Result<(), Invalid> {
    let invalid = |m: String| Err(Invalid::new("InvalidSpec", m));
    if !(1..=16).contains(&spec.replicas) {
        return invalid(format!("replicas must be 1 to 16, not {}", spec.replicas));
    }
    if spec.image.trim().is_empty() {
        return invalid("image must not be empty".into());
    }
    if parse_quantity(&spec.storage.size).is_none_or(|b| b == 0) {
        return invalid(format!(
            "storage.size '{}' is not a size such as 10Gi",
            spec.storage.size
        ));
    }
    if spec.pod_disruption_budget.max_unavailable < 0 {
        return invalid("podDisruptionBudget.maxUnavailable must not be negative".into());
    }
    if let Some(name) = &spec.default_storage_location {
        if !is_identifier(name) {
            return invalid(format!(
                "defaultStorageLocation '{name}' must match {IDENTIFIER_PATTERN} (at most {MAX_NAME_LEN} characters)"
            ));
        }
    }
    for (key, value) in &spec.config {
        if key == DEFAULT_LOCATION_KEY {
            return invalid(format!(
                "config.{key} is set by the operator from spec.defaultStorageLocation; set that \
                 field instead"
            ));
        }
        if OWNED_KEYS.contains(&key.as_str()) {
            return invalid(format!(
                "config.{key} is set by the operator and cannot be overridden"
            ));
        }
        // The node refuses a key it does not know, and would not start.
        if !kalam_client::server_config::KEYS.contains(&key.as_str()) {
            return invalid(format!(
                "config.{key} is not a setting of the node (see its configuration reference)"
            ));
        }
        if !is_scalar(value) {
            return invalid(format!(
                "config.{key} must be a string, a number or a boolean"
            ));
        }
        if let Value::Number(n) = value {
            if n.is_u64() && n.as_i64().is_none() {
                return invalid(format!("config.{key} is too large for server.toml"));
            }
        }
    }
    Ok(())
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1024`), rounded up; `None` when
/// it is not one.
pub fn parse_quantity(s: &str) -> Option<u128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u128.pow(2),
        "G" => 1000u128.pow(3),
        "T" => 1000u128.pow(4),
        "P" => 1000u128.pow(5),
        "E" => 1000u128.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.len() > 9 || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let mut bytes = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        let scale = 10u128.pow(fraction.len() as u32);
        bytes = bytes.checked_add((digits * multiplier).div_ceil(scale))?;
    }
    Some(bytes)
}

/// The volume claim template of a StatefulSet: immutable once it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageTemplate {
    pub size: String,
    pub class: Option<String>,
}

/// What the reconcile does with the data volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePlan {
    /// The claim template to apply (the existing one when the StatefulSet exists).
    pub template: StorageTemplate,
    /// The size every volume must have.
    pub target: String,
    /// The size recorded as applied before this reconcile.
    pub applied: String,
    /// Some volumes may be smaller than `target` (a grown size, or pods added after a
    /// growth got the template's size): look at the PVCs and grow the small ones.
    pub grow_volumes: bool,
}

/// The existing claim template and the size last applied to the volumes, if the StatefulSet
/// exists and has a `data` template.
pub fn current_storage(existing: &StatefulSet) -> Option<(StorageTemplate, String)> {
    let template = existing
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))?;
    let spec = template.spec.as_ref()?;
    let size = spec
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .0
        .clone();
    let applied = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STORAGE_SIZE_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| size.clone());
    Some((
        StorageTemplate {
            size,
            class: spec.storage_class_name.clone(),
        },
        applied,
    ))
}

/// Decides what happens to the volumes; a shrink or a new StorageClass is refused.
pub fn storage_plan(
    spec: &StorageSpec,
    existing: Option<&StatefulSet>,
) -> Result<StoragePlan, Invalid> {
    let Some((template, applied)) = existing.and_then(current_storage) else {
        return Ok(StoragePlan {
            template: StorageTemplate {
                size: spec.size.clone(),
                class: spec.storage_class_name.clone(),
            },
            target: spec.size.clone(),
            applied: spec.size.clone(),
            grow_volumes: false,
        });
    };
    if spec.storage_class_name.is_some() && spec.storage_class_name != template.class {
        return Err(Invalid::new(
            "InvalidSpec",
            format!(
                "storage.storageClassName cannot change once the volumes exist (it is {})",
                template.class.as_deref().unwrap_or("the cluster default")
            ),
        ));
    }
    let desired = parse_quantity(&spec.size).unwrap_or(0);
    let before = parse_quantity(&applied).unwrap_or(0);
    if desired < before {
        return Err(Invalid::new(
            "StorageShrinkRefused",
            format!(
                "storage.size {} is smaller than the current {applied}: volumes cannot shrink, so \
                 nothing was changed",
                spec.size
            ),
        ));
    }
    let (target, grow_volumes) = if desired == before {
        // Same size, perhaps written differently (10Gi vs 10240Mi): keep the recorded text.
        (
            applied.clone(),
            before > parse_quantity(&template.size).unwrap_or(0),
        )
    } else {
        (spec.size.clone(), true)
    };
    Ok(StoragePlan {
        template,
        target,
        applied,
        grow_volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> KalamClusterSpec {
        serde_json::from_value(v).unwrap()
    }

    fn sts(template_size: &str, annotation: Option<&str>, class: Option<&str>) -> StatefulSet {
        let mut meta = json!({"name": "kc"});
        if let Some(a) = annotation {
            meta["annotations"] = json!({STORAGE_SIZE_ANNOTATION: a});
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {
                "selector": {}, "template": {}, "serviceName": "kc-headless",
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"storageClassName": class,
                             "resources": {"requests": {"storage": template_size}}}
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn config_keys_the_node_does_not_know_are_refused() {
        let e = validate(&spec(json!({"config": {"sync_write": true}}))).unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(e.message.contains("config.sync_write"), "{}", e.message);
        assert!(validate(&spec(json!({"config": {"statement_timeout_ms": 5000}}))).is_ok());
    }

    #[test]
    fn cluster_names_fit_the_objects_made_from_them() {
        for ok in ["kc", "chat-prod", "a1", &"a".repeat(MAX_CLUSTER_NAME_LEN)] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "my.cluster",
            "-kc",
            "kc-",
            "1kc",
            "Kc",
            "k_c",
            &"a".repeat(MAX_CLUSTER_NAME_LEN + 1),
        ] {
            assert_eq!(name(bad).unwrap_err().reason, "InvalidSpec", "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10Gi"), Some(10 << 30));
        assert_eq!(parse_quantity("10240Mi"), Some(10 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("0.1"), Some(1));
        assert_eq!(parse_quantity("1024"), Some(1024));
        for bad in ["", "Gi", "10GB", "1.", ".5Gi", "-1Gi", "1e3", "ten"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn owned_and_non_scalar_config_keys_are_refused() {
        assert!(validate(&spec(
            json!({"config": {"sync_writes": true, "max_result_rows": 100000}})
        ))
        .is_ok());
        for key in OWNED_KEYS {
            let e = validate(&spec(json!({"config": {key: "x"}}))).unwrap_err();
            assert_eq!(e.reason, "InvalidSpec");
            assert!(e.message.contains(key), "{}", e.message);
        }
        let e = validate(&spec(json!({"config": {"cors_allowed_origins": ["*"]}}))).unwrap_err();
        assert!(
            e.message.contains("string, a number or a boolean"),
            "{}",
            e.message
        );
        assert!(validate(&spec(json!({"config": {"huge": 18446744073709551615u64}}))).is_err());
    }

    #[test]
    fn the_default_location_comes_from_its_field_only() {
        assert!(validate(&spec(json!({"defaultStorageLocation": "archive"}))).is_ok());
        for config in [
            json!({"default_location": "archive"}),
            json!({"default_location": "other"}),
        ] {
            for s in [
                spec(json!({"config": config.clone()})),
                spec(json!({"defaultStorageLocation": "archive", "config": config.clone()})),
            ] {
                let e = validate(&s).unwrap_err();
                assert_eq!(e.reason, "InvalidSpec");
                assert!(
                    e.message.contains("config.default_location")
                        && e.message.contains("defaultStorageLocation"),
                    "{}",
                    e.message
                );
            }
        }
        for bad in ["Archive", "1st", "with-dash", ""] {
            let e = validate(&spec(json!({"defaultStorageLocation": bad}))).unwrap_err();
            assert_eq!(e.reason, "InvalidSpec", "{bad}");
            assert!(
                e.message.contains("defaultStorageLocation"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn sizes_and_replicas_are_checked() {
        assert!(validate(&spec(json!({"storage": {"size": "0"}}))).is_err());
        assert!(validate(&spec(json!({"storage": {"size": "lots"}}))).is_err());
        assert!(validate(&spec(json!({"replicas": 17}))).is_err());
        assert!(validate(&spec(json!({"replicas": 0}))).is_err());
        assert!(validate(&spec(
            json!({"podDisruptionBudget": {"maxUnavailable": -1}})
        ))
        .is_err());
        assert!(validate(&spec(json!({}))).is_ok());
    }

    #[test]
    fn a_new_cluster_gets_the_desired_template() {
        let s = spec(json!({"storage": {"size": "20Gi", "storageClassName": "fast"}}));
        let plan = storage_plan(&s.storage, None).unwrap();
        assert_eq!(
            plan.template,
            StorageTemplate {
                size: "20Gi".into(),
                class: Some("fast".into())
            }
        );
        assert_eq!((plan.target.as_str(), plan.grow_volumes), ("20Gi", false));
    }

    #[test]
    fn growth_expands_volumes_and_a_shrink_is_refused() {
        let existing = sts("10Gi", None, None);
        let same = storage_plan(
            &spec(json!({"storage": {"size": "10240Mi"}})).storage,
            Some(&existing),
        )
        .unwrap();
        assert_eq!((same.target.as_str(), same.grow_volumes), ("10Gi", false));

        let grow = storage_plan(
            &spec(json!({"storage": {"size": "20Gi"}})).storage,
            Some(&existing),
        )
        .unwrap();
        assert_eq!(
            grow.template.size, "10Gi",
            "the claim template is immutable"
        );
        assert_eq!(
            (
                grow.target.as_str(),
                grow.applied.as_str(),
                grow.grow_volumes
            ),
            ("20Gi", "10Gi", true)
        );

        // Grown before: the annotation holds the applied size; new pods may still be small.
        let grown = sts("10Gi", Some("20Gi"), None);
        let keep = storage_plan(
            &spec(json!({"storage": {"size": "20Gi"}})).storage,
            Some(&grown),
        )
        .unwrap();
        assert_eq!((keep.target.as_str(), keep.grow_volumes), ("20Gi", true));

        let shrink = storage_plan(
            &spec(json!({"storage": {"size": "15Gi"}})).storage,
            Some(&grown),
        )
        .unwrap_err();
        assert_eq!(shrink.reason, "StorageShrinkRefused");
        assert!(shrink.message.contains("20Gi"), "{}", shrink.message);
    }

    #[test]
    fn the_storage_class_is_fixed_at_creation() {
        let existing = sts("10Gi", None, Some("standard"));
        let e = storage_plan(
            &spec(json!({"storage": {"storageClassName": "fast"}})).storage,
            Some(&existing),
        )
        .unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        let plan = storage_plan(&spec(json!({})).storage, Some(&existing)).unwrap();
        assert_eq!(plan.template.class.as_deref(), Some("standard"));
    }
}
