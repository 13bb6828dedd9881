//! The cold tier: object stores (a filesystem directory or any S3-compatible bucket), the
//! Parquet files flushed into them, and the segment manifest of every partition.
//!
//! A table's location is resolved once, at CREATE time, into a [`TableStorage`] (store root
//! plus path template). Each partition (a user of a USER table, or the one shared partition)
//! has a manifest listing its files with their sequence range, `_updated` range and key range;
//! manifests live in the node's `meta` column family and are committed in the same RocksDB
//! batch that deletes the flushed hot rows (see `docs/adr/0008-cold-tier.md`), so a file is
//! visible to queries exactly when its rows leave the hot tier. Deleted-row retention
//! replaces files the same way (`docs/adr/0014-deleted-row-retention.md`): the files it
//! replaced are listed under `coldobsolete/` in the same batch, and deleted later.

mod cache_usage;
pub mod decoded_cache;
pub mod location;
pub mod metadata_cache;
pub mod parquet;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::catalog::TableStorage;
use crate::error::{KalamError, Result};
use crate::storage::{Partition, Storage};

use decoded_cache::DecodedCache;
pub use location::LOCAL_LOCATION;
use metadata_cache::MetadataCache;

/// Hidden column of every Parquet file: the commit sequence of the row version, which orders
/// versions of one key across files and the hot tier.
pub const SEQ_COLUMN: &str = "_seq";
const MANIFEST_PREFIX: &str = "cold/";
/// Files a cleanup replaced that may still be in the store: `coldobsolete/{cf}/{path}` ->
/// when they were replaced (unix micros) and their size, both big-endian `u64`/`i64`.
pub const OBSOLETE_PREFIX: &str = "coldobsolete/";

/// One Parquet file of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Object path inside the table's store.
    pub path: String,
    pub seq_from: u64,
    pub seq_to: u64,
    pub rows: u64,
    pub bytes: u64,
    pub min_updated: i64,
    pub max_updated: i64,
    /// Order-preserving encodings (`RowKey`) of the smallest and largest key in the file.
    pub min_key: Vec<u8>,
    pub max_key: Vec<u8>,
    pub schema_version: u32,
    /// The smallest `_updated` of the file's soft-deleted rows, `None` when it holds none:
    /// cleanup reads only files whose tombstones may be past the retention. Manifests
    /// written before this field existed read as `Some(i64::MIN)` (unknown: any file may
    /// hold tombstones of any age); the first cleanup that reads such a file records it.
    #[serde(default = "unknown_min_deleted")]
    pub min_deleted_updated: Option<i64>,
}

/// What a manifest entry without `min_deleted_updated` means: the file may hold tombstones.
pub const UNKNOWN_MIN_DELETED: i64 = i64::MIN;

fn unknown_min_deleted() -> Option<i64> {
    Some(UNKNOWN_MIN_DELETED)
}

/// The files of one partition, oldest first.
pub type Segments = Arc<Vec<Segment>>;

/// The meta key of a partition's manifest: `cold/{cf}/{partition prefix}`.
pub fn manifest_key(cf: &str, partition: &Partition) -> Vec<u8> {
    let mut k = format!("{MANIFEST_PREFIX}{cf}/").into_bytes();
    k.extend_from_slice(&partition.prefix());
    k
}

/// Every manifest key of a table starts with this.
pub fn table_manifest_prefix(cf: &str) -> Vec<u8> {
    format!("{MANIFEST_PREFIX}{cf}/").into_bytes()
}

pub fn encode_manifest(segments: &[Segment]) -> Result<Vec<u8>> {
    serde_json::to_vec(segments).map_err(KalamError::internal)
}

/// A table's manifests as the `meta` column family holds them (a dropped table's stay there
/// until its files are purged): each partition's meta key with its files.
pub fn stored_manifests(storage: &Storage, cf: &str) -> Result<Vec<(Vec<u8>, Vec<Segment>)>> {
    storage
        .meta_scan_prefix(&table_manifest_prefix(cf))?
        .into_iter()
        .map(|(key, value)| {
            let segments: Vec<Segment> = serde_json::from_slice(&value)
                .map_err(|e| KalamError::Storage(format!("undecodable manifest of {cf}: {e}")))?;
            Ok((key, segments))
        })
        .collect()
}

/// What deleting files of a dropped table did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub files: u64,
    /// The recorded sizes of the deleted files (files of an interrupted flush have none).
    pub bytes: u64,
    /// Files that were gone already (an earlier attempt or DROP NAMESPACE removed them).
    pub missing: u64,
}

/// The object path of a file the node recorded (a segment's `path`, a journal entry: the
/// `Path` it wrote, as text), parsed back as it is. `Path::from` would encode it again, and
/// under a location prefix holding `~`, `%`, `#`, ... it would name another object than the
/// one written: the flushed rows would be unreadable.
pub fn recorded_path(text: &str) -> ObjectPath {
    ObjectPath::parse(text).unwrap_or_else(|_| ObjectPath::from(text))
}

/// Deletes files of a table's store, given as (object path, recorded size). S3 deletes them
/// in bulk requests of up to 1,000 keys. A file that is already gone counts as `missing`;
/// any other failure is returned after every file was tried, with what was deleted.
pub async fn delete_files(
    store: &Arc<dyn ObjectStore>,
    files: &[(String, Option<u64>)],
) -> (Deleted, Result<()>) {
    let mut sizes: HashMap<String, u64> = HashMap::with_capacity(files.len());
    let mut paths: Vec<object_store::Result<ObjectPath>> = Vec::with_capacity(files.len());
    for (path, size) in files {
        let path = recorded_path(path);
        sizes.insert(path.to_string(), size.unwrap_or(0));
        paths.push(Ok(path));
    }
    let mut deleted = Deleted::default();
    let mut failure: Option<object_store::Error> = None;
    let mut results = store.delete_stream(futures::stream::iter(paths).boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(path) => {
                deleted.files += 1;
                deleted.bytes += sizes.get(&path.to_string()).copied().unwrap_or(0);
            }
            Err(object_store::Error::NotFound { .. }) => deleted.missing += 1,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let outcome = match failure {
        None => Ok(()),
        // The store's message names the operation and the endpoint; it holds no secret.
        Some(e) => Err(KalamError::LocationUnreachable(e.to_string())),
    };
    (deleted, outcome)
}

/// Every obsolete-file key of a table starts with this.
pub fn table_obsolete_prefix(cf: &str) -> Vec<u8> {
    format!("{OBSOLETE_PREFIX}{cf}/").into_bytes()
}

/// The meta key recording that `path`, replaced by a cleanup, still has to be deleted.
pub fn obsolete_key(cf: &str, path: &str) -> Vec<u8> {
    format!("{OBSOLETE_PREFIX}{cf}/{path}").into_bytes()
}

/// The value of an obsolete-file key: when the file was replaced, and its size.
pub fn encode_obsolete(replaced_micros: i64, bytes: u64) -> Vec<u8> {
    let mut v = replaced_micros.to_be_bytes().to_vec();
    v.extend_from_slice(&bytes.to_be_bytes());
    v
}

/// `(replaced_micros, bytes)` of an obsolete-file value; `None` when it is malformed.
pub fn decode_obsolete(value: &[u8]) -> Option<(i64, u64)> {
    let at: [u8; 8] = value.get(..8)?.try_into().ok()?;
    let bytes: [u8; 8] = value.get(8..16)?.try_into().ok()?;
    Some((i64::from_be_bytes(at), u64::from_be_bytes(bytes)))
}

#[derive(Debug)]
pub struct ColdStorage {
    storage_dir: PathBuf,
    credentials_dir: PathBuf,
    runtime: Arc<RuntimeEnv>,
    stores: Mutex<HashMap<(String, Option<String>), (ObjectStoreUrl, Arc<dyn ObjectStore>)>>,
    /// cf -> partition prefix -> files. Only a flush commit changes an entry.
    manifests: RwLock<HashMap<String, BTreeMap<Vec<u8>, Segments>>>,
    /// Footers and page indexes of the files queries open.
    pub metadata: MetadataCache,
    /// Decoded rows of the small files queries read whole.
    pub decoded: DecodedCache,
    /// Bytes of a partition's files a scan may read whole into memory (`cold_read_in_memory_bytes`).
    pub read_in_memory_bytes: u64,
}

impl ColdStorage {
    /// Loads every partition manifest from the `meta` column family; Parquet footers are
    /// cached within `metadata_cache_bytes`, and scans read files of a partition whole up to
    /// `read_in_memory_bytes`, keeping them decoded within `decoded_cache_bytes`.
    pub fn open(
        storage: &Storage,
        storage_dir: PathBuf,
        credentials_dir: PathBuf,
        runtime: Arc<RuntimeEnv>,
        metadata_cache_bytes: usize,
        read_in_memory_bytes: u64,
        decoded_cache_bytes: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(&storage_dir).map_err(KalamError::storage)?;
        let storage_dir = storage_dir.canonicalize().map_err(KalamError::storage)?;
        let mut manifests: HashMap<String, BTreeMap<Vec<u8>, Segments>> = HashMap::new();
        for (key, value) in storage.meta_scan_prefix(MANIFEST_PREFIX.as_bytes())? {
            let rest = &key[MANIFEST_PREFIX.len()..];
            let Some(slash) = rest.iter().position(|b| *b == b'/') else {
                continue;
            };
            let cf = String::from_utf8_lossy(&rest[..slash]).into_owned();
            let segments: Vec<Segment> = serde_json::from_slice(&value)
                .map_err(|e| KalamError::Storage(format!("undecodable manifest of {cf}: {e}")))?;
            manifests
                .entry(cf)
                .or_default()
                .insert(rest[slash + 1..].to_vec(), Arc::new(segments));
        }
        Ok(Self {
            storage_dir,
            credentials_dir,
            runtime,
            stores: Mutex::new(HashMap::new()),
            manifests: RwLock::new(manifests),
            metadata: MetadataCache::new(metadata_cache_bytes),
            decoded: DecodedCache::new(decoded_cache_bytes).map_err(KalamError::internal)?,
            read_in_memory_bytes,
        })
    }

    /// Root directory of the built-in `local` location.
    pub fn storage_dir(&self) -> &std::path::Path {
        &self.storage_dir
    }

    pub fn credentials_dir(&self) -> &std::path::Path {
        &self.credentials_dir
    }

    /// The files of one partition (empty when it never flushed).
    pub fn segments(&self, cf: &str, partition: &Partition) -> Segments {
        self.manifests
            .read()
            .get(cf)
            .and_then(|m| m.get(&partition.prefix()).cloned())
            .unwrap_or_default()
    }

    /// Every partition of a table with its files.
    pub fn table_segments(&self, cf: &str) -> Vec<(Vec<u8>, Segments)> {
        self.manifests
            .read()
            .get(cf)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Makes a committed manifest visible to queries (called under the table's write lock,
    /// right after the RocksDB batch that holds it).
    pub fn publish(&self, cf: &str, partition: &Partition, segments: Vec<Segment>) {
        self.manifests
            .write()
            .entry(cf.to_string())
            .or_default()
            .insert(partition.prefix(), Arc::new(segments));
    }

    /// Forgets a dropped table's manifests (their meta keys go with its column family).
    pub fn forget_table(&self, cf: &str) {
        self.manifests.write().remove(cf);
    }

    /// The object store of a table's location, registered with DataFusion under a URL of
    /// its own so that Parquet scans can reach it.
    pub fn store(&self, ts: &TableStorage) -> Result<(ObjectStoreUrl, Arc<dyn ObjectStore>)> {
        let key = (
            format!("{}|{}", ts.kind.as_str(), ts.root),
            ts.credentials_ref.clone(),
        );
        if let Some(found) = self.stores.lock().get(&key) {
            return Ok(found.clone());
        }
        let store = location::build_store(
            ts.kind,
            &ts.root,
            ts.credentials_ref.as_deref(),
            &self.credentials_dir,
        )?;
        let n = self.stores.lock().len();
        let url =
            ObjectStoreUrl::parse(format!("kalam{n}://store")).map_err(KalamError::internal)?;
        self.runtime
            .register_object_store(url.as_ref(), store.clone());
        let entry = (url, store);
        self.stores.lock().insert(key, entry.clone());
        Ok(entry)
    }

    /// Removes, on a filesystem location, the directories a dropped table's purge left empty:
    /// its table directory (the template up to its first placeholder) with everything below
    /// that holds no file, then the parents up to the root that are empty now (the namespace
    /// directory of the built-in location, once its last table is gone). Never a file.
    pub fn remove_empty_table_dirs(ts: &TableStorage) -> std::io::Result<()> {
        if ts.kind != crate::catalog::LocationKind::Filesystem {
            return Ok(());
        }
        let prefix = location::static_prefix(&ts.template);
        if prefix.is_empty() {
            // Partitions directly under the root: other tables may live beside them.
            return Ok(());
        }
        let root = std::path::Path::new(&ts.root);
        let dir = root.join(&prefix);
        location::remove_dir_leftovers(root, &dir, &[])?;
        location::remove_empty_parents(root, &dir);
        Ok(())
    }

    /// After DROP NAMESPACE: removes the namespace's directory in the built-in location when
    /// it holds nothing but empty directories and files of dropped tables whose purge is
    /// still pending (`leftovers`: their table directories relative to the storage directory).
    /// Any other file is kept, and with it the directories holding it. Returns whether the
    /// directory existed and is gone now.
    pub fn remove_namespace_dir(&self, ns: &str, leftovers: &[String]) -> std::io::Result<bool> {
        let dir = self.storage_dir.join(ns);
        if !dir.try_exists()? {
            return Ok(false);
        }
        location::remove_dir_leftovers(&self.storage_dir, &dir, leftovers)
    }

    /// The directory of a partition's files inside the table's store. A user id becomes one
    /// path segment (`.` and `..` are escaped), so it never leaves the table's directory.
    pub fn partition_dir(ts: &TableStorage, partition: &Partition) -> ObjectPath {
        let user = match partition {
            Partition::User(u) => Some(u.as_str()),
            Partition::Shared => None,
        };
        location::expand_template(&ts.template, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::{ObjectStoreExt, PutPayload};

    #[test]
    fn delete_files_counts_removed_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = ObjectPath::from("app/t/alice/batch-1-2.parquet");
        tokio
            .block_on(store.put(&path, PutPayload::from_static(b"12345")))
            .unwrap();
        let files: Vec<(String, Option<u64>)> = vec![
            (path.to_string(), Some(5)),
            ("app/t/bob/batch-1-2.parquet".to_string(), Some(7)),
        ];
        let (deleted, outcome) = tokio.block_on(delete_files(&store, &files));
        outcome.unwrap();
        assert_eq!(
            deleted,
            Deleted {
                files: 1,
                bytes: 5,
                missing: 1
            }
        );
        assert!(!dir.path().join("app/t/alice/batch-1-2.parquet").exists());
        // Again: everything is gone already.
        let (deleted, outcome) = tokio.block_on(delete_files(&store, &files));
        outcome.unwrap();
        assert_eq!(deleted.missing, 2);
        assert_eq!(deleted.files, 0);
    }

    #[test]
    fn manifests_without_tombstone_statistics_read_as_unknown() {
        let old = r#"[{"path":"a/batch-1-2.parquet","seq_from":1,"seq_to":2,"rows":2,"bytes":10,
            "min_updated":1,"max_updated":2,"min_key":[1],"max_key":[2],"schema_version":1}]"#;
        let segments: Vec<Segment> = serde_json::from_str(old).unwrap();
        assert_eq!(segments[0].min_deleted_updated, Some(UNKNOWN_MIN_DELETED));
        let mut none = segments[0].clone();
        none.min_deleted_updated = None;
        let back: Vec<Segment> =
            serde_json::from_slice(&encode_manifest(&[none.clone()]).unwrap()).unwrap();
        assert_eq!(back, vec![none]);
    }

    #[test]
    fn obsolete_values_round_trip() {
        let v = encode_obsolete(-5, 1234);
        assert_eq!(decode_obsolete(&v), Some((-5, 1234)));
        assert_eq!(decode_obsolete(&v[..10]), None);
        assert!(
            obsolete_key("t_a_b_1", "a/b/x.parquet").starts_with(&table_obsolete_prefix("t_a_b_1"))
        );
    }
}
