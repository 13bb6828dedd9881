//! Row codec of the hot tier: how one row version is stored as a RocksDB value, and how
//! row keys are encoded so that byte order is key order. See docs/adr/0002-row-encoding.md.

use serde::{Deserialize, Serialize};

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
