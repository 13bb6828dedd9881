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
            let row = covering_s3_location(catalog.locations(), path).ok_or_else(|| {
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

/// Makes a file written on a filesystem location durable (the file, then its directory's
/// entry for it): object_store's `LocalFileSystem` writes and renames without an fsync, and
/// a flush deletes the hot rows the file holds right after (with an fsynced commit under
/// `sync_writes`). Nothing to do on S3, whose PUT is durable when it answers.
pub fn sync_written(storage: &TableStorage, recorded: &str) -> Result<()> {
    if storage.kind != LocationKind::Filesystem {
        return Ok(());
    }
    let failed = |e: std::io::Error| {
        KalamError::LocationUnreachable(format!("cannot sync a flushed file: {}", e.kind()))
    };
    let fs = LocalFileSystem::new_with_prefix(&storage.root)
        .map_err(|e| KalamError::LocationUnreachable(e.to_string()))?;
    let path = fs
        .path_to_filesystem(&super::recorded_path(recorded))
        .map_err(KalamError::storage)?;
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(failed)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// The registered S3 location whose path covers `url` (the same, or a parent of it at a `/`;
/// the longest when several do): it supplies the credentials of an `s3://` LOCATION or
/// backup URL. `s3://b/a` does not cover `s3://b/ab/...`.
pub fn covering_s3_location(
    locations: Vec<StorageLocationDef>,
    url: &str,
) -> Option<StorageLocationDef> {
    locations
        .into_iter()
        .filter(|l| {
            let path = l.path.trim_end_matches('/');
            l.kind == LocationKind::S3 && (url == path || url.starts_with(&format!("{path}/")))
        })
        .max_by_key(|l| l.path.len())
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

/// The directories of a template before its first placeholder segment, e.g. `app/messages`
/// of `app/messages/${user_id}`: every partition of the table lives under it (empty when the
/// template starts with the placeholder).
pub fn static_prefix(template: &str) -> String {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .take_while(|s| !s.contains("${"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a file of one table could have the same path as a file of the other: same kind of
/// store, and the fixed directory of one (root plus [`static_prefix`]) is the other's or
/// inside it. Conservative: a template that starts with `${user_id}` overlaps everything in
/// its root.
pub fn may_share_files(a: &TableStorage, b: &TableStorage) -> bool {
    if a.kind != b.kind {
        return false;
    }
    let dir = |t: &TableStorage| -> Vec<String> {
        let prefix = static_prefix(&t.template);
        t.root
            .split('/')
            .chain(prefix.split('/'))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (dir(a), dir(b));
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Removes, bottom-up, every directory under `dir` (and `dir`) that ends up empty, deleting on
/// the way only files inside one of `leftovers` (directories relative to `root`, written
/// with `/`). Every other file stays, and so do the directories that hold it. Returns whether
/// `dir` is gone.
pub fn remove_dir_leftovers(
    root: &Path,
    dir: &Path,
    leftovers: &[String],
) -> std::io::Result<bool> {
    sweep(root, dir, leftovers)?;
    Ok(!dir.try_exists()?)
}

fn sweep(root: &Path, dir: &Path, leftovers: &[String]) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // Not followed: a symbolic link is removed (when it is a leftover) or kept, never
        // entered.
        if entry.file_type()?.is_dir() {
            sweep(root, &path, leftovers)?;
        } else if is_leftover(root, &path, leftovers) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    // Fails when a kept file (or one written meanwhile) is inside: the directory stays.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn is_leftover(root: &Path, path: &Path, leftovers: &[String]) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let rel: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let rel = rel.join("/");
    leftovers
        .iter()
        .filter(|l| !l.is_empty())
        .any(|l| rel.starts_with(&format!("{l}/")))
}

/// Removes the empty parents of `dir` up to (not including) `root`, stopping at the first
/// that is not empty.
pub fn remove_empty_parents(root: &Path, dir: &Path) {
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p == root || !p.starts_with(root) || std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A location covers its own path and what is below it at a `/`, never a sibling that
    /// shares a prefix (which would get another location's credentials and usage count).
    #[test]
    fn s3_locations_cover_their_path_and_below_only() {
        let location = |name: &str, path: &str| StorageLocationDef {
            name: name.into(),
            kind: LocationKind::S3,
            path: path.into(),
            credentials_ref: Some(name.into()),
            created_at: chrono::Utc::now(),
        };
        let all = || {
            vec![
                location("a", "s3://b/a"),
                location("deep", "s3://b/a/deep/"),
            ]
        };
        let name = |url: &str| covering_s3_location(all(), url).map(|l| l.name);
        assert_eq!(name("s3://b/a"), Some("a".into()));
        assert_eq!(name("s3://b/a/t/${user_id}/"), Some("a".into()));
        assert_eq!(name("s3://b/a/deep/t/"), Some("deep".into()), "the longest");
        assert_eq!(name("s3://b/ab/t/"), None, "a sibling with the same prefix");
        assert_eq!(name("s3://b/"), None);
    }

    fn storage(kind: LocationKind, root: &str, template: &str) -> TableStorage {
        TableStorage {
            location_name: None,
            kind,
            root: root.into(),
            template: template.into(),
            credentials_ref: None,
        }
    }

    #[test]
    fn static_prefixes_stop_at_the_first_placeholder() {
        assert_eq!(static_prefix("app/messages/${user_id}"), "app/messages");
        assert_eq!(static_prefix("/app//messages/"), "app/messages");
        assert_eq!(static_prefix("u-${user_id}/messages"), "");
        assert_eq!(static_prefix("${user_id}"), "");
    }

    #[test]
    fn tables_share_files_only_where_their_directories_overlap() {
        use LocationKind::{Filesystem, S3};
        let notes = storage(Filesystem, "/data/storage", "app/notes/${user_id}");
        assert!(may_share_files(&notes, &notes));
        assert!(!may_share_files(
            &notes,
            &storage(Filesystem, "/data/storage", "app/notes2/${user_id}")
        ));
        assert!(!may_share_files(
            &notes,
            &storage(S3, "/data/storage", "app/notes/${user_id}")
        ));
        // The same directory reached through another root.
        assert!(may_share_files(
            &notes,
            &storage(Filesystem, "/data", "storage/app/notes")
        ));
        // A template that starts with the placeholder overlaps its whole root.
        assert!(may_share_files(
            &storage(Filesystem, "/data/storage", "${user_id}/x"),
            &notes
        ));
        let s3 = storage(S3, "s3://bucket", "kalam/app/notes/${user_id}");
        assert!(may_share_files(&s3, &s3));
        assert!(!may_share_files(
            &s3,
            &storage(S3, "s3://other", "kalam/app/notes/${user_id}")
        ));
    }

    #[test]
    fn leftover_sweeps_never_delete_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let ns = root.join("app");
        std::fs::create_dir_all(ns.join("gone/alice")).unwrap();
        std::fs::write(ns.join("gone/alice/batch-1-2.parquet"), b"x").unwrap();
        std::fs::create_dir_all(ns.join("empty/deeper")).unwrap();
        std::fs::create_dir_all(ns.join("kept")).unwrap();
        std::fs::write(ns.join("kept/mine.txt"), b"keep").unwrap();

        let leftovers = vec!["app/gone".to_string()];
        assert!(!remove_dir_leftovers(root, &ns, &leftovers).unwrap());
        assert!(!ns.join("gone").exists());
        assert!(!ns.join("empty").exists());
        assert_eq!(std::fs::read(ns.join("kept/mine.txt")).unwrap(), b"keep");

        std::fs::remove_file(ns.join("kept/mine.txt")).unwrap();
        assert!(remove_dir_leftovers(root, &ns, &[]).unwrap());
        assert!(root.exists());

        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        remove_empty_parents(root, &root.join("a/b/c/d"));
        assert!(!root.join("a").exists());
        assert!(root.exists());
    }
}
