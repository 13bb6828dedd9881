//! Row codec of the hot tier: how one row version is stored as a RocksDB value, and how
//! row keys are encoded so that byte order is key order. See docs/adr/0002-row-encoding.md.
//!
//! Values are positional in the schema version the row names. A row of an older (or, for a
//! reader that planned before an ALTER, newer) version is brought into the reader's version
//! by column id ([`Reshape`], [`Shaper`]; docs/adr/0011-schema-versions.md): a column the
//! row's version lacks reads as its `initial_default` or NULL, a column the reader's version
//! lacks is left out. Widened columns need no conversion: every widening ALTER allows keeps
//! the stored representation (`KalamType::widens_to`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{ColumnDef, TableDef};
use crate::error::{KalamError, Result};

/// One cell. Integers of every width are `Int`, floats of both widths `Float`; the column's
/// type in the schema version says which Arrow type to rebuild.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(i128),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since the Unix epoch.
    Date(i32),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

/// One version of one row, as stored in the hot tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRow {
    /// The table schema version the values are positioned by.
    pub schema_version: u32,
    /// Commit sequence of the write that produced this version.
    pub seq: u64,
    /// `_updated`, microseconds since the epoch.
    pub updated_micros: i64,
    /// `_deleted`.
    pub deleted: bool,
    /// User columns, in the order of that schema version.
    pub values: Vec<Value>,
}

impl StoredRow {
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(KalamError::internal)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes)
            .map_err(|e| KalamError::Storage(format!("undecodable row value: {e}")))
    }
}

/// One cell borrowed from an encoded row: the same variants in the same order as
/// [`Value`], so postcard reads a stored value into it without copying text or bytes (a scan
/// appends cells straight to Arrow builders).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum ValueRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(i128),
    Text(&'a str),
    Bytes(&'a [u8]),
    Date(i32),
    Timestamp(i64),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Decimal(d) => ValueRef::Decimal(*d),
            Value::Text(s) => ValueRef::Text(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
            Value::Date(d) => ValueRef::Date(*d),
            Value::Timestamp(t) => ValueRef::Timestamp(*t),
        }
    }
}

/// A [`StoredRow`] read in place from its encoding (the fields in the same order).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredRowRef<'a> {
    pub schema_version: u32,
    pub seq: u64,
    pub updated_micros: i64,
    pub deleted: bool,
    #[serde(borrow)]
    pub values: Vec<ValueRef<'a>>,
}

impl<'a> StoredRowRef<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        postcard::from_bytes(bytes)
            .map_err(|e| KalamError::Storage(format!("undecodable row value: {e}")))
    }
}

impl StoredRow {
    /// A borrowed view of this row, for code that takes rows read in place.
    pub fn borrowed(&self) -> StoredRowRef<'_> {
        StoredRowRef {
            schema_version: self.schema_version,
            seq: self.seq,
            updated_micros: self.updated_micros,
            deleted: self.deleted,
            values: self.values.iter().map(ValueRef::from).collect(),
        }
    }
}

/// Where each column of a target version takes its value from, for rows of one source
/// version: a position in the source row, or a fill value (the column did not exist yet).
#[derive(Debug, Clone)]
pub struct Reshape {
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Slot {
    From(usize),
    Fill(Value),
}

impl Reshape {
    /// Maps the columns `from` (the row's version) onto `to`, matching by column id only: a
    /// name dropped and added again is a different column.
    pub fn new(from: &[ColumnDef], to: &[ColumnDef]) -> Self {
        let slots = to
            .iter()
            .map(|c| match from.iter().position(|f| f.id == c.id) {
                Some(i) => Slot::From(i),
                None => Slot::Fill(c.initial_default.clone().unwrap_or(Value::Null)),
            })
            .collect();
        Self { slots }
    }

    /// The values of one row in the target version.
    pub fn apply(&self, values: Vec<Value>) -> Vec<Value> {
        let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
        self.slots
            .iter()
            .map(|slot| match slot {
                // Ids are unique within a version, so each position is taken at most once.
                Slot::From(i) => values
                    .get_mut(*i)
                    .and_then(Option::take)
                    .unwrap_or(Value::Null),
                Slot::Fill(v) => v.clone(),
            })
            .collect()
    }
}

/// Brings stored rows of any schema version into the columns of `target`, looking the row's
/// version up in `history` (a definition that knows every version written so far: the
/// table's newest) and reusing one [`Reshape`] per source version.
#[derive(Debug)]
pub struct Shaper<'a> {
    history: &'a TableDef,
    target: &'a TableDef,
    plans: HashMap<u32, Reshape>,
}

impl<'a> Shaper<'a> {
    pub fn new(history: &'a TableDef, target: &'a TableDef) -> Self {
        Self {
            history,
            target,
            plans: HashMap::new(),
        }
    }

    pub fn shape(&mut self, row: &mut StoredRow) -> Result<()> {
        let version = row.schema_version;
        if version == self.target.schema_version {
            return Ok(());
        }
        let plan = match self.plans.entry(version) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let from = self
                    .history
                    .columns_of(version)
                    .or_else(|| self.target.columns_of(version))
                    .ok_or_else(|| {
                        KalamError::Storage(format!(
                            "a row of {} is encoded under schema version {version}, which the catalog does not hold",
                            self.target.id()
                        ))
                    })?;
                e.insert(Reshape::new(from, &self.target.columns))
            }
        };
        row.values = plan.apply(std::mem::take(&mut row.values));
        row.schema_version = self.target.schema_version;
        Ok(())
    }
}

/// The value of a primary key, encoded so that byte order equals key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey(pub Vec<u8>);

impl RowKey {
    /// Signed integers: big-endian with the sign bit flipped, so negatives sort first.
    pub fn from_int(v: i64) -> Self {
        RowKey(((v as u64) ^ (1 << 63)).to_be_bytes().to_vec())
    }

    pub fn from_text(s: &str) -> Self {
        RowKey(s.as_bytes().to_vec())
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(Self::from_int(*i)),
            Value::Text(s) => Ok(Self::from_text(s)),
            Value::Null => Err(KalamError::InvalidValue(
                "the primary key must not be NULL".into(),
            )),
            other => Err(KalamError::Internal(format!(
                "unsupported key value {other:?}"
            ))),
        }
    }
}

/// The rows of one partition: a user's rows of a USER table, or all rows of a SHARED table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Partition {
    User(crate::ids::UserId),
    Shared,
}

impl Partition {
    /// `{user_id}:` for USER tables; user ids cannot contain `:`, so prefixes never overlap.
    pub fn prefix(&self) -> Vec<u8> {
        match self {
            Partition::User(u) => {
                let mut p = Vec::with_capacity(u.as_str().len() + 1);
                p.extend_from_slice(u.as_str().as_bytes());
                p.push(b':');
                p
            }
            Partition::Shared => Vec::new(),
        }
    }

    /// The full RocksDB key of `row_key` in this partition.
    pub fn key(&self, row_key: &RowKey) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&row_key.0);
        k
    }

    /// Exclusive upper bound of this partition's keys (`None`: the whole column family).
    pub fn upper_bound(&self) -> Option<Vec<u8>> {
        match self {
            Partition::User(u) => {
                let mut p = u.as_str().as_bytes().to_vec();
                p.push(b':' + 1);
                Some(p)
            }
            Partition::Shared => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{KalamType, SchemaVersion};
    use crate::ids::UserId;

    #[test]
    fn rows_round_trip_compactly() {
        let row = StoredRow {
            schema_version: 1,
            seq: 42,
            updated_micros: 1_764_000_000_000_000,
            deleted: false,
            values: vec![
                Value::Int(7),
                Value::Text("héllo \u{0} 👋".into()),
                Value::Null,
                Value::Decimal(-12345),
                Value::Bytes(vec![0, 255]),
                Value::Float(1.5),
                Value::Bool(true),
                Value::Date(20000),
                Value::Timestamp(-1),
            ],
        };
        let bytes = row.encode().unwrap();
        assert!(bytes.len() < 64, "encoded size {}", bytes.len());
        assert_eq!(StoredRow::decode(&bytes).unwrap(), row);
        assert!(StoredRow::decode(&[0xff, 0xff, 0xff]).is_err());
        // The borrowed reading of the same bytes sees the same row.
        assert_eq!(StoredRowRef::decode(&bytes).unwrap(), row.borrowed());
        assert!(StoredRowRef::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(StoredRowRef::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    fn column(id: u32, name: &str, t: KalamType, initial: Option<Value>) -> ColumnDef {
        ColumnDef {
            id,
            name: crate::ids::ColumnName::new(name).unwrap(),
            data_type: t,
            nullable: true,
            default: None,
            initial_default: initial,
        }
    }

    /// Five versions of one table: v2 adds `a` (no default), v3 adds `b` DEFAULT 'x', v4
    /// widens `n` to BIGINT, v5 drops `a`, v6 adds `a` again (a new id) DEFAULT 7.
    fn versions() -> TableDef {
        let id = column(1, "id", KalamType::BigInt, None);
        let n = column(2, "n", KalamType::Int, None);
        let a = column(3, "a", KalamType::Text, None);
        let b = column(4, "b", KalamType::Text, Some(Value::Text("x".into())));
        let wide_n = ColumnDef {
            data_type: KalamType::BigInt,
            ..n.clone()
        };
        let a2 = column(5, "a", KalamType::Int, Some(Value::Int(7)));
        let all = [
            vec![id.clone(), n.clone()],
            vec![id.clone(), n.clone(), a.clone()],
            vec![id.clone(), n.clone(), a.clone(), b.clone()],
            vec![id.clone(), wide_n.clone(), a.clone(), b.clone()],
            vec![id.clone(), wide_n.clone(), b.clone()],
            vec![id.clone(), wide_n.clone(), b.clone(), a2.clone()],
        ];
        let history: Vec<SchemaVersion> = all
            .iter()
            .enumerate()
            .map(|(i, columns)| SchemaVersion {
                version: i as u32 + 1,
                created_at: chrono::Utc::now(),
                change: format!("v{}", i + 1),
                columns: columns.clone(),
            })
            .collect();
        TableDef {
            namespace: crate::ids::NamespaceId::new("app").unwrap(),
            name: crate::ids::TableName::new("t").unwrap(),
            kind: crate::catalog::TableKind::Shared,
            uid: "u".into(),
            created_at: chrono::Utc::now(),
            schema_version: 6,
            columns: all[5].clone(),
            primary_key: crate::ids::ColumnName::new("id").unwrap(),
            location: Default::default(),
            flush_policy: Default::default(),
            deleted_retention_secs: None,
            stream: None,
            storage: None,
            last_column_id: 5,
            history,
        }
    }

    fn stored(version: u32, values: Vec<Value>) -> StoredRow {
        StoredRow {
            schema_version: version,
            seq: 1,
            updated_micros: 0,
            deleted: false,
            values,
        }
    }

    #[test]
    fn rows_of_every_version_read_in_the_newest() {
        let def = versions();
        let mut shaper = Shaper::new(&def, &def);
        let cases = [
            (
                stored(1, vec![Value::Int(1), Value::Int(10)]),
                vec![
                    Value::Int(1),
                    Value::Int(10),
                    Value::Text("x".into()),
                    Value::Int(7),
                ],
            ),
            (
                stored(
                    2,
                    vec![Value::Int(2), Value::Int(20), Value::Text("old a".into())],
                ),
                // The dropped `a` is gone; the new `a` reads its DEFAULT, never "old a".
                vec![
                    Value::Int(2),
                    Value::Int(20),
                    Value::Text("x".into()),
                    Value::Int(7),
                ],
            ),
            (
                stored(
                    3,
                    vec![
                        Value::Int(3),
                        Value::Int(30),
                        Value::Null,
                        Value::Text("y".into()),
                    ],
                ),
                vec![
                    Value::Int(3),
                    Value::Int(30),
                    Value::Text("y".into()),
                    Value::Int(7),
                ],
            ),
            (
                stored(
                    4,
                    vec![
                        Value::Int(4),
                        Value::Int(1 << 40),
                        Value::Text("a4".into()),
                        Value::Null,
                    ],
                ),
                vec![
                    Value::Int(4),
                    Value::Int(1 << 40),
                    Value::Null,
                    Value::Int(7),
                ],
            ),
            (
                stored(
                    6,
                    vec![
                        Value::Int(6),
                        Value::Int(60),
                        Value::Text("z".into()),
                        Value::Int(8),
                    ],
                ),
                vec![
                    Value::Int(6),
                    Value::Int(60),
                    Value::Text("z".into()),
                    Value::Int(8),
                ],
            ),
        ];
        for (mut row, expected) in cases {
            let from = row.schema_version;
            shaper.shape(&mut row).unwrap();
            assert_eq!(row.values, expected, "a row of version {from}");
            assert_eq!(row.schema_version, 6);
        }
        // A version nobody knows is an error, not a guess.
        assert!(shaper.shape(&mut stored(9, vec![])).is_err());
    }

    #[test]
    fn a_reader_of_an_older_version_reads_newer_rows() {
        // A query planned at version 2, reading a row written at version 6.
        let newest = versions();
        let mut v2 = newest.clone();
        v2.schema_version = 2;
        v2.columns = newest.history[1].columns.clone();
        v2.history.truncate(2);
        let mut shaper = Shaper::new(&newest, &v2);
        let mut row = stored(
            6,
            vec![
                Value::Int(6),
                Value::Int(60),
                Value::Text("z".into()),
                Value::Int(8),
            ],
        );
        shaper.shape(&mut row).unwrap();
        // `a` of version 2 (id 3) was dropped in version 5: NULL, not the new `a`'s 8.
        assert_eq!(row.values, vec![Value::Int(6), Value::Int(60), Value::Null]);
    }

    #[test]
    fn initial_defaults_round_trip_through_json() {
        for v in [
            Value::Int(-5),
            Value::Decimal(-123_456_789_012_345_678_901_234_567),
            Value::Text("x".into()),
            Value::Timestamp(1_764_000_000_000_000),
            Value::Bytes(vec![0, 255]),
            Value::Null,
        ] {
            let c = column(1, "c", KalamType::Text, Some(v));
            let back: ColumnDef =
                serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn integer_keys_sort_numerically() {
        let mut keys: Vec<i64> = vec![5, -3, 0, i64::MAX, i64::MIN, 1000, -1000];
        let mut encoded: Vec<RowKey> = keys.iter().map(|k| RowKey::from_int(*k)).collect();
        keys.sort();
        encoded.sort();
        assert_eq!(
            encoded,
            keys.iter()
                .map(|k| RowKey::from_int(*k))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn user_partitions_do_not_overlap() {
        let a = Partition::User(UserId::new("alice").unwrap());
        let a2 = Partition::User(UserId::new("alice2").unwrap());
        let key_of_a2 = a2.key(&RowKey::from_int(1));
        assert!(!key_of_a2.starts_with(&a.prefix()));
        let upper = a.upper_bound().unwrap();
        assert!(a.key(&RowKey::from_text("zzzz")) < upper);
        assert!(key_of_a2 > upper || !key_of_a2.starts_with(&a.prefix()));
    }
}
