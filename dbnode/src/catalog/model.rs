//! What the catalog holds: namespace and table definitions, column types, table options.
//! These are persisted as JSON, so every change here must stay readable from older files.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::ids::{ColumnName, NamespaceId, TableId, TableName};
use crate::storage::Value;

/// Name of the system column with the time of a row's last change.
pub const UPDATED_COLUMN: &str = "_updated";
/// Name of the soft-delete flag column.
pub const DELETED_COLUMN: &str = "_deleted";
/// Arrow field metadata key marking a `Utf8` field as a JSON column.
pub const JSON_METADATA_KEY: &str = "kalamdb.type";
/// Time zone of every TIMESTAMP column: values are instants, shown in UTC.
pub const TIMESTAMP_TZ: &str = "UTC";

/// The three kinds of tables of API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    User,
    Shared,
    Stream,
}

impl TableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::User => "user",
            TableKind::Shared => "shared",
            TableKind::Stream => "stream",
        }
    }

    /// USER and SHARED tables carry `_updated` and `_deleted`; STREAM tables do not.
    pub fn has_system_columns(self) -> bool {
        !matches!(self, TableKind::Stream)
    }
}

/// The SQL types of API.md, with their Arrow representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum KalamType {
    Boolean,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal { precision: u8, scale: i8 },
    Text,
    Bytes,
    Date,
    Timestamp,
    Json,
}

impl KalamType {
    pub fn arrow(self) -> DataType {
        match self {
            KalamType::Boolean => DataType::Boolean,
            KalamType::SmallInt => DataType::Int16,
            KalamType::Int => DataType::Int32,
            KalamType::BigInt => DataType::Int64,
            KalamType::Float => DataType::Float32,
            KalamType::Double => DataType::Float64,
            KalamType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            KalamType::Text | KalamType::Json => DataType::Utf8,
            KalamType::Bytes => DataType::Binary,
            KalamType::Date => DataType::Date32,
            KalamType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(TIMESTAMP_TZ.into()))
            }
        }
    }

    /// The SQL spelling, for DESCRIBE and information about a table.
    pub fn sql_name(self) -> String {
        match self {
            KalamType::Boolean => "BOOLEAN".into(),
            KalamType::SmallInt => "SMALLINT".into(),
            KalamType::Int => "INT".into(),
            KalamType::BigInt => "BIGINT".into(),
            KalamType::Float => "FLOAT".into(),
            KalamType::Double => "DOUBLE".into(),
            KalamType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            KalamType::Text => "TEXT".into(),
            KalamType::Bytes => "BYTES".into(),
            KalamType::Date => "DATE".into(),
            KalamType::Timestamp => "TIMESTAMP".into(),
            KalamType::Json => "JSON".into(),
        }
    }

    /// Types a primary key may have: they have an exact, order-preserving key encoding.
    pub fn can_be_primary_key(self) -> bool {
        matches!(
            self,
            KalamType::SmallInt | KalamType::Int | KalamType::BigInt | KalamType::Text
        )
    }

    /// Whether `MODIFY COLUMN` may change a column from `self` to `to`: every value of `self`
    /// is a value of `to` with the same stored representation (`Value::Int` for every integer
    /// width, `Value::Float` for both float widths, the same unscaled `i128` for a decimal of
    /// the same scale), so no hot row and no Parquet file is rewritten; readers cast.
    pub fn widens_to(self, to: KalamType) -> bool {
        use KalamType::*;
        match (self, to) {
            (SmallInt, Int | BigInt) | (Int, BigInt) | (Float, Double) => true,
            (
                Decimal { precision, scale },
                Decimal {
                    precision: wider,
                    scale: same,
                },
            ) => scale == same && wider > precision,
            _ => false,
        }
    }
}

/// One user column of a table schema version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Stable across schema versions, so a renamed or re-added column is never confused.
    pub id: u32,
    pub name: ColumnName,
    pub data_type: KalamType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text (`SNOWFLAKE_ID()`, `NOW()`, `'normal'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What rows written before this column existed read as: the DEFAULT of `ADD COLUMN`,
    /// evaluated once when the column was added (Iceberg's `initial-default`). `None` (every
    /// column of CREATE TABLE, and added columns without DEFAULT) reads as NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_default: Option<Value>,
}

/// When hot rows are flushed to Parquet (enforced by the cold tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            rows: Some(10_000),
            interval_secs: Some(300),
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.rows {
            parts.push(format!("ROWS {r}"));
        }
        if let Some(s) = self.interval_secs {
            parts.push(format!("INTERVAL '{}'", human_duration(s)));
        }
        f.write_str(&parts.join(" "))
    }
}

/// `300` -> `5 minutes`, `30` -> `30s`: the spelling people wrote.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s}s"),
    }
}

/// Where a table's Parquet files go (resolved and enforced by the cold tier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum LocationSpec {
    /// The node's default filesystem location under its data directory.
    #[default]
    Default,
    /// `LOCATION '<path or url>'`.
    Path(String),
    /// `LOCATION REFERENCE '<name>'`: a row of `system.storage_locations`.
    Reference(String),
}

impl std::fmt::Display for LocationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocationSpec::Default => f.write_str("default"),
            LocationSpec::Path(p) => f.write_str(p),
            LocationSpec::Reference(r) => write!(f, "reference:{r}"),
        }
    }
}

/// Options of a STREAM table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    pub retention_secs: u64,
    pub ephemeral: bool,
    pub max_buffer: u64,
}

impl Default for StreamOptions {
    /// What `CREATE STREAM TABLE` without `WITH (...)` gets (docs/adr/0009-live-queries.md).
    fn default() -> Self {
        Self {
            retention_secs: 600,
            ephemeral: false,
            max_buffer: 10_000,
        }
    }
}

/// One schema version of a table (`schema_v{N}.json`): its columns, when it was made and
/// what changed, in one line (`CREATE TABLE`, `ADD COLUMN priority TEXT DEFAULT 'normal'`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub change: String,
    pub columns: Vec<ColumnDef>,
}

/// A table as the catalog stores it (`manifest.json` + `schema_v{N}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub namespace: NamespaceId,
    pub name: TableName,
    pub kind: TableKind,
    /// Unique per creation: names the RocksDB column family, so a table dropped and created
    /// again never meets the old one's data.
    pub uid: String,
    pub created_at: DateTime<Utc>,
    pub schema_version: u32,
    pub columns: Vec<ColumnDef>,
    pub primary_key: ColumnName,
    #[serde(default)]
    pub location: LocationSpec,
    #[serde(default)]
    pub flush_policy: FlushPolicy,
    /// Seconds soft-deleted rows are kept before cleanup; `None` is `'off'`.
    #[serde(default)]
    pub deleted_retention_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamOptions>,
    /// Where the cold tier of this table lives, resolved from `location` when the table was
    /// created: a later change of a storage location row does not move existing tables.
    /// `None` (catalogs written before the cold tier) means the built-in `local` location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<TableStorage>,
    /// The largest column id ever given out, dropped columns included: an added column gets
    /// a new id, so a re-added name never reads a dropped column's values. `0` in manifests
    /// written before ALTER TABLE existed (ids were then never dropped).
    #[serde(default)]
    pub last_column_id: u32,
    /// Every schema version up to and including the current one, oldest first: rows and
    /// Parquet files written under any of them are read through it. Loaded from the
    /// `schema_v{N}.json` files, never written into the manifest.
    #[serde(skip)]
    pub history: Vec<SchemaVersion>,
}

/// The two kinds of storage location of API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationKind {
    Filesystem,
    S3,
}

impl LocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationKind::Filesystem => "filesystem",
            LocationKind::S3 => "s3",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "filesystem" => Some(LocationKind::Filesystem),
            "s3" => Some(LocationKind::S3),
            _ => None,
        }
    }
}

/// A row of `system.storage_locations` as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageLocationDef {
    pub name: String,
    pub kind: LocationKind,
    /// An absolute directory (`filesystem`) or `s3://bucket/prefix/`.
    pub path: String,
    /// A credential set in the node's credentials directory (never the secret itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A table's resolved cold-tier location: an object store root and the path template of
/// its partitions inside it (`${user_id}` is substituted, as one path segment, per user).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableStorage {
    /// The storage location row this came from (counts towards its `usage_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_name: Option<String>,
    pub kind: LocationKind,
    /// The store root: an absolute directory, or `s3://bucket`.
    pub root: String,
    /// Path of the table's directory inside the root, e.g. `app/messages/${user_id}`.
    pub template: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<String>,
}

/// A dropped table whose cold-tier files are still to be removed: one entry of the catalog's
/// `pending_purges.json`, written before DROP TABLE's commit point and removed once the purge
/// job deleted every file (docs/adr/0013-drop-table-purge.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPurge {
    pub namespace: NamespaceId,
    pub table: TableName,
    pub kind: TableKind,
    /// The dropped creation's uid: a live table with it means the DROP never committed.
    pub uid: String,
    /// The dropped table's column family: its segment manifests and flush journal entries
    /// in `meta` are keyed by it and name the files to remove.
    pub cf: String,
    /// Where the files are.
    pub storage: TableStorage,
    pub dropped_at: DateTime<Utc>,
}

impl PendingPurge {
    pub fn table_id(&self) -> TableId {
        TableId::new(self.namespace.clone(), self.table.clone())
    }
}

impl TableDef {
    pub fn id(&self) -> TableId {
        TableId::new(self.namespace.clone(), self.name.clone())
    }

    /// RocksDB column family holding this table's hot rows.
    pub fn cf_name(&self) -> String {
        format!("t_{}_{}_{}", self.namespace, self.name, self.uid)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name.as_str() == name)
    }

    /// The columns of schema version `version`, if this definition knows it (it knows its
    /// own and every older one).
    pub fn columns_of(&self, version: u32) -> Option<&[ColumnDef]> {
        if version == self.schema_version {
            return Some(&self.columns);
        }
        self.history
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.columns.as_slice())
    }

    /// The id the next added column gets: never one a column of any version had.
    pub fn next_column_id(&self) -> u32 {
        let used = self
            .history
            .iter()
            .flat_map(|v| v.columns.iter())
            .chain(&self.columns)
            .map(|c| c.id)
            .max()
            .unwrap_or(0);
        used.max(self.last_column_id) + 1
    }

    /// Version 1 as CREATE TABLE made it, for a definition without history yet.
    pub fn initial_version(&self) -> SchemaVersion {
        SchemaVersion {
            version: self.schema_version,
            created_at: self.created_at,
            change: "CREATE TABLE".into(),
            columns: self.columns.clone(),
        }
    }

    pub fn primary_key_index(&self) -> usize {
        self.columns
            .iter()
            .position(|c| c.name == self.primary_key)
            .unwrap_or_default()
    }

    /// The Arrow schema queries see: user columns, then `_updated` and `_deleted`.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| {
                let f = Field::new(c.name.as_str(), c.data_type.arrow(), c.nullable);
                if c.data_type == KalamType::Json {
                    f.with_metadata([(JSON_METADATA_KEY.to_string(), "json".to_string())].into())
                } else {
                    f
                }
            })
            .collect();
        if self.kind.has_system_columns() {
            fields.push(Field::new(
                UPDATED_COLUMN,
                KalamType::Timestamp.arrow(),
                false,
            ));
            fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
        }
        Arc::new(Schema::new(fields))
    }

    pub fn deleted_retention_text(&self) -> String {
        self.deleted_retention_secs
            .map(human_duration)
            .unwrap_or_else(|| "off".into())
    }
}

/// A namespace as the catalog stores it (`namespace.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceDef {
    pub name: NamespaceId,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
impl TableDef {
    /// `app.t (id BIGINT PRIMARY KEY, body TEXT)`, a SHARED table: the definition that unit
    /// tests of rows and stores build on.
    pub(crate) fn for_tests() -> Self {
        let column = |id, name: &str, data_type, nullable| ColumnDef {
            id,
            name: ColumnName::new(name).unwrap(),
            data_type,
            nullable,
            default: None,
            initial_default: None,
        };
        TableDef {
            namespace: NamespaceId::new("app").unwrap(),
            name: TableName::new("t").unwrap(),
            kind: TableKind::Shared,
            uid: "u".into(),
            created_at: chrono::Utc::now(),
            schema_version: 1,
            columns: vec![
                column(1, "id", KalamType::BigInt, false),
                column(2, "body", KalamType::Text, true),
            ],
            primary_key: ColumnName::new("id").unwrap(),
            location: LocationSpec::Default,
            flush_policy: FlushPolicy::default(),
            deleted_retention_secs: None,
            stream: None,
            storage: None,
            last_column_id: 2,
            history: Vec::new(),
        }
    }
}
