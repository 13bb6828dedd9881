//! SQL functions KalamDB adds to DataFusion: `SNOWFLAKE_ID()` and `CURRENT_USER()`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use parking_lot::Mutex;

/// 2026-01-01T00:00:00Z in Unix milliseconds: ids start small and last ~69 years.
const EPOCH_MS: u64 = 1_767_225_600_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;

/// 64-bit, time-ordered ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of node,
/// 12 bits of sequence. Ids from one node strictly increase, even when the clock steps back.
#[derive(Debug)]
pub struct SnowflakeGenerator {
    node: u64,
    /// (last millisecond used, sequence within it)
    state: Mutex<(u64, u64)>,
}

impl SnowflakeGenerator {
    pub fn new(node_id: &str) -> Self {
        // FNV-1a of the node name: stable across restarts, spread over the 10 node bits.
        let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Self {
            node: hash & ((1 << NODE_BITS) - 1),
            state: Mutex::new((0, 0)),
        }
    }

    pub fn next_ids(&self, n: usize) -> Vec<i64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let now = now.saturating_sub(EPOCH_MS);
        let mut state = self.state.lock();
        let (mut ms, mut seq) = *state;
        let mut out = Vec::with_capacity(n);
        if now > ms {
            ms = now;
            seq = 0;
        }
        for _ in 0..n {
            if seq >= (1 << SEQ_BITS) {
                // Sequence exhausted in this millisecond: borrow the next one. Time catches up.
                ms += 1;
                seq = 0;
            }
            out.push(((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq) as i64);
            seq += 1;
        }
        *state = (ms, seq);
        out
    }
}

#[derive(Debug)]
struct SnowflakeId {
    signature: Signature,
    generator: Arc<SnowflakeGenerator>,
}

impl PartialEq for SnowflakeId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.generator, &other.generator)
    }
}
impl Eq for SnowflakeId {}
impl std::hash::Hash for SnowflakeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "snowflake_id".hash(state)
    }
}

impl ScalarUDFImpl for SnowflakeId {
    fn name(&self) -> &str {
        "snowflake_id"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ids = self.generator.next_ids(args.number_rows);
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(ids))))
    }
}

pub fn snowflake_id(generator: Arc<SnowflakeGenerator>) -> ScalarUDF {
    ScalarUDF::from(SnowflakeId {
        signature: Signature::nullary(Volatility::Volatile),
        generator,
    })
}

/// `CURRENT_USER()`: the user id the request runs as (the `as_user` id under `as_user`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentUser {
    signature: Signature,
    user: String,
}

impl ScalarUDFImpl for CurrentUser {
    fn name(&self) -> &str {
        "current_user"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if args.number_rows <= 1 {
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                self.user.clone(),
            ))));
        }
        let values: StringArray =
            std::iter::repeat_n(Some(self.user.as_str()), args.number_rows).collect();
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

pub fn current_user(user: &str) -> ScalarUDF {
    ScalarUDF::from(CurrentUser {
        signature: Signature::nullary(Volatility::Stable),
        user: user.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflake_ids_are_unique_and_increasing() {
        let g = SnowflakeGenerator::new("node-1");
        let mut all = g.next_ids(10_000);
        all.extend(g.next_ids(5));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all[0] > 0);
    }
}
