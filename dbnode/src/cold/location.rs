//! Storage locations: how a table's `LOCATION` / `LOCATION REFERENCE` becomes a store root
//! and a path template, how a store is built (credentials come from the credentials
//! directory, never from SQL), and the reachability probe of a new location.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use crate::catalog::{
    Catalog, LocationKind, LocationSpec, StorageLocationDef, TableKind, TableStorage,
};
use crate::error::{clip, KalamError, Result};
use crate::ids::TableId;
use crate::sql::ddl::USER_ID_PLACEHOLDER;

/// The built-in filesystem location under the node's storage directory.
pub const LOCAL_LOCATION: &str = "local";

/// Splits `s3://bucket/rest` into (`s3://bucket`, `rest`).
pub fn split_s3(path: &str) -> Result<(String, String)> {
    let rest = path
        .strip_prefix("s3://")
        .ok_or_else(|| KalamError::InvalidValue(format!("'{}' is not an s3:// URL", clip(path))))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(KalamError::InvalidValue(format!(
            "'{}' names no bucket",
            clip(path)
        )));
    }
    Ok((
        format!("s3://{bucket}"),
        prefix.trim_matches('/').to_string(),
    ))
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks a storage location row before it is stored.
pub fn validate_location(def: &StorageLocationDef) -> Result<()> {
    crate::ids::NamespaceId::new(def.name.clone()).map_err(|_| {
        KalamError::InvalidValue("location_name must match ^[a-z][a-z0-9_]*$".into())
    })?;
    if def.path.contains("${") {
        return Err(KalamError::InvalidValue(
            "a storage location path takes no placeholders; USER tables add their user directory"
                .into(),
        ));
    }
    if def.path.split('/').any(|s| s == "..") {
        return Err(KalamError::InvalidValue(
            "path must not contain '..'".into(),
        ));
    }
    match def.kind {
        LocationKind::S3 => {
            split_s3(&def.path)?;
        }
        LocationKind::Filesystem => {
            if !Path::new(&def.path).is_absolute() {
                return Err(KalamError::InvalidValue(
                    "a filesystem location path must be absolute".into(),
                ));
            }
        }
    }
    if let Some(c) = &def.credentials_ref {
        crate::ids::NamespaceId::new(c.clone()).map_err(|_| {
            KalamError::InvalidValue("credentials_ref must match ^[a-z][a-z0-9_]*$".into())
        })?;
    }
    Ok(())
}

fn table_template(table: &TableId, kind: TableKind, prefix: &str) -> String {
    let template = join(&[prefix, table.namespace.as_str(), table.table.as_str()]);
    user_suffix(kind, template)
}

/// USER tables get one directory per user unless their template already names the user.
fn user_suffix(kind: TableKind, template: String) -> String {
    if kind == TableKind::User && !template.contains(USER_ID_PLACEHOLDER) {
        join(&[&template, USER_ID_PLACEHOLDER])
    } else {
        template
    }
}

/// The built-in `local` location of a table.
pub fn local_storage(storage_dir: &Path, table: &TableId, kind: TableKind) -> TableStorage {
    TableStorage {
        location_name: Some(LOCAL_LOCATION.into()),
        kind: LocationKind::Filesystem,
        root: storage_dir.display().to_string(),
        template: table_template(table, kind, ""),
        credentials_ref: None,
    }
}

/// Resolves a new table's location (API.md: resolved at CREATE time).
pub fn resolve(
    catalog: &Catalog,
    storage_dir: &Path,
    table: &TableId,
    kind: TableKind,
    spec: &LocationSpec,
) -> Result<TableStorage> {
    let from_row = |row: &StorageLocationDef| -> Result<TableStorage> {
        let (root, prefix) = match row.kind {
            LocationKind::S3 => split_s3(&row.path)?,
            LocationKind::Filesystem => (row.path.clone(), String::new()),
        };
        Ok(TableStorage {
            location_name: Some(row.name.clone()),
            kind: row.kind,
            root,
            template: table_template(table, kind, &prefix),
            credentials_ref: row.credentials_ref.clone(),
        })
    };
    match spec {
        LocationSpec::Default => Ok(local_storage(storage_dir, table, kind)),
        LocationSpec::Reference(name) if name == LOCAL_LOCATION => {
            Ok(local_storage(storage_dir, table, kind))
        }
        LocationSpec::Reference(name) => {
            let row = catalog
                .location(name)
                .ok_or_else(|| KalamError::StorageLocationNotFound(clip(name)))?;
            from_row(&row)
        }
        LocationSpec::Path(path) if path.starts_with("s3://") => {
            let (root, rest) = split_s3(path)?;
            // Credentials come from the registered location that covers this URL.
            let row = catalog
                .locations()
                .into_iter()
                .filter(|l| {
                    l.kind == LocationKind::S3 && path.starts_with(l.path.trim_end_matches('/'))
                })
                .max_by_key(|l| l.path.len())
                .ok_or_else(|| {
                    KalamError::StorageLocationNotFound(format!(
                        "no storage location covers '{}'; add one to system.storage_locations",
                        clip(path)
                    ))
                })?;
            Ok(TableStorage {
                location_name: Some(row.name),
                kind: LocationKind::S3,
                root,
                template: user_suffix(kind, rest),
                credentials_ref: row.credentials_ref,
            })
        }
        LocationSpec::Path(path) => {
            let path = path.strip_prefix("file://").unwrap_or(path);
            if !Path::new(path).is_absolute() {
                return Err(KalamError::InvalidTableDefinition(
                    "LOCATION must be an absolute directory, a file:// URL or an s3:// URL".into(),
                ));
            }
            // The root is the directory before the first placeholder; the rest is templated.
            let cut = path.find("${").unwrap_or(path.len());
            let root_end = path[..cut].rfind('/').unwrap_or(0);
            let root = if root_end == 0 {
                "/"
            } else {
                &path[..root_end]
            };
            Ok(TableStorage {
                location_name: None,
                kind: LocationKind::Filesystem,
                root: root.to_string(),
                template: user_suffix(kind, join(&[&path[root_end..]])),
                credentials_ref: None,
            })
        }
    }
}

/// A template such as `app/m/${user_id}` as an object path; the user id is one segment.
pub fn expand_template(template: &str, user: Option<&str>) -> ObjectPath {
    let parts = template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| match user {
            Some(u) if seg.contains(USER_ID_PLACEHOLDER) => {
                PathPart::from(seg.replace(USER_ID_PLACEHOLDER, u))
            }
            _ => PathPart::from(seg.to_string()),
        });
    ObjectPath::from_iter(parts)
}

fn read_credential(dir: &Path, name: &str, file: &str) -> Result<Option<String>> {
    match std::fs::read_to_string(dir.join(name).join(file)) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KalamError::LocationUnreachable(format!(
            "credential set '{name}': cannot read {file}: {}",
            e.kind()
        ))),
    }
}

/// Builds the store of a location root. Requests to an unreachable endpoint fail within
/// seconds (a flush job then fails and is retried) instead of retrying for minutes.
pub fn build_store(
    kind: LocationKind,
    root: &str,
    credentials_ref: Option<&str>,
    credentials_dir: &Path,
) -> Result<Arc<dyn ObjectStore>> {
    match kind {
        LocationKind::Filesystem => {
            std::fs::create_dir_all(root).map_err(|e| {
                KalamError::LocationUnreachable(format!(
                    "cannot create the directory: {}",
                    e.kind()
                ))
            })?;
            let fs = LocalFileSystem::new_with_prefix(root)
                .map_err(|e| KalamError::LocationUnreachable(e.to_string()))?;
            Ok(Arc::new(fs))
        }
        LocationKind::S3 => {
            let (bucket_url, _) = split_s3(root)?;
            let bucket = bucket_url.trim_start_matches("s3://");
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_retry(RetryConfig {
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(10),
                    ..Default::default()
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(3))
                        .with_timeout(Duration::from_secs(60)),
                );
            if let Some(name) = credentials_ref {
                let key = read_credential(credentials_dir, name, "access_key_id")?;
                let secret = read_credential(credentials_dir, name, "secret_access_key")?;
                let (Some(key), Some(secret)) = (key, secret) else {
                    return Err(KalamError::LocationUnreachable(format!(
                        "credential set '{name}' lacks access_key_id or secret_access_key"
                    )));
                };
                b = b.with_access_key_id(key).with_secret_access_key(secret);
                if let Some(region) = read_credential(credentials_dir, name, "region")? {
                    b = b.with_region(region);
                }
                if let Some(endpoint) = read_credential(credentials_dir, name, "endpoint")? {
                    // Self-hosted S3 (MinIO, moto, Ceph) expects path-style requests.
                    b = b
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false)
                        .with_endpoint(endpoint);
                }
            } else {
                b = b.with_skip_signature(true);
            }
            let s3 = b
                .build()
                .map_err(|e| KalamError::LocationUnreachable(clip(&e.to_string())))?;
            Ok(Arc::new(s3))
        }
    }
}

/// Writes and deletes a probe object under the location's path.
pub async fn probe(def: &StorageLocationDef, credentials_dir: &Path) -> Result<()> {
    let (root, prefix) = match def.kind {
        LocationKind::S3 => split_s3(&def.path)?,
        LocationKind::Filesystem => (def.path.clone(), String::new()),
    };
    let store = build_store(
        def.kind,
        &root,
        def.credentials_ref.as_deref(),
        credentials_dir,
    )?;
    let probe = expand_template(&join(&[&prefix, ".kalamdb-probe"]), None);
    let unreachable = |e: object_store::Error| {
        // The store's message names the operation and the endpoint; it holds no secret.
        KalamError::LocationUnreachable(clip(&e.to_string()))
    };
    store
        .put(
            &probe,
            object_store::PutPayload::from_static(b"kalamdb probe"),
        )
        .await
        .map_err(unreachable)?;
    store.delete(&probe).await.map_err(unreachable)?;
    Ok(())
}
