//! SQL functions KalamDB adds to DataFusion (`SNOWFLAKE_ID()` and `CURRENT_USER()`), and the
//! bound it puts on built-ins whose output size is set by an argument ([`bound_output_sizes`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
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

/// Built-ins whose output size is set by an argument rather than by their input: one call
/// could ask for more memory than the machine has (`range(1, 3000000000)` allocated 24 GB
/// and then panicked). DataFusion caps only some of them, at 2 GB per value.
const SIZED_BY_ARGUMENT: [&str; 7] = [
    "range",
    "generate_series",
    "array_repeat",
    "array_resize",
    "repeat",
    "lpad",
    "rpad",
];

/// Replaces the built-ins of [`SIZED_BY_ARGUMENT`] in `state` with wrappers that refuse a
/// call whose result would take more than `limit` bytes (`max_query_memory_bytes`), as
/// PostgreSQL refuses a value over 1 GB, with `RESOURCES_EXHAUSTED` instead of an
/// allocation that takes the node down.
pub fn bound_output_sizes(state: &mut SessionState, limit: usize) {
    for name in SIZED_BY_ARGUMENT {
        if let Some(inner) = state.scalar_functions().get(name).cloned() {
            let bounded = BoundedOutput {
                inner: (*inner).clone(),
                limit: limit as u64,
            };
            // Replacing a built-in in a fresh state cannot fail.
            let _ = state.register_udf(Arc::new(ScalarUDF::from(bounded)));
        }
    }
}

/// A built-in of [`SIZED_BY_ARGUMENT`], checked before it runs; everything else is the
/// built-in's own.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedOutput {
    inner: ScalarUDF,
    limit: u64,
}

impl ScalarUDFImpl for BoundedOutput {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let bytes = output_bytes(self.inner.name(), &args.args, args.number_rows)?;
        if bytes > self.limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would build about {} MB, more than max_query_memory_bytes ({} MB)",
                self.inner.name(),
                bytes / (1024 * 1024),
                self.limit / (1024 * 1024)
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// About how many bytes a call of `name` would build over all its rows: elements count
/// their width (8 bytes, or an array element's own size for `array_repeat`), characters 1.
/// An argument it cannot read (a null, a type it does not know) counts nothing: the
/// built-in itself answers those. A constant argument is read once, never copied per row.
fn output_bytes(name: &str, args: &[ColumnarValue], rows: usize) -> DfResult<u64> {
    let rows = rows.max(1);
    let arrays = args
        .iter()
        .map(|a| match a {
            ColumnarValue::Array(a) => Ok(a.clone()),
            ColumnarValue::Scalar(s) => s.to_array_of_size(1),
        })
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    let int = |i: usize| -> DfResult<Option<Int64Array>> {
        match arrays.get(i) {
            Some(a) if a.data_type().is_integer() => Ok(Some(
                cast(a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            )),
            _ => Ok(None),
        }
    };
    let total = |per_row: &dyn Fn(usize) -> u128| -> u64 {
        let sum: u128 = (0..rows).map(per_row).sum();
        u64::try_from(sum).unwrap_or(u64::MAX)
    };
    Ok(match name {
        "repeat" => {
            let (Some(text), Some(times)) = (arrays.first(), int(1)?) else {
                return Ok(0);
            };
            let text = cast(text, &DataType::LargeUtf8)?;
            let text = text.as_string::<i64>();
            total(&|row| {
                let at = row_of(text, row);
                let len = if text.is_valid(at) {
                    text.value(at).len()
                } else {
                    0
                };
                len as u128 * count_at(&times, row)
            })
        }
        "lpad" | "rpad" => match int(1)? {
            Some(length) => total(&|row| count_at(&length, row)),
            None => 0,
        },
        "array_repeat" => {
            let (Some(element), Some(times)) = (arrays.first(), int(1)?) else {
                return Ok(0);
            };
            let width = match element.data_type().primitive_width() {
                Some(width) => width,
                None => element.get_array_memory_size() / element.len().max(1),
            };
            let width = width.max(1) as u128;
            total(&|row| width * count_at(&times, row))
        }
        "array_resize" => match int(1)? {
            Some(length) => total(&|row| 8 * count_at(&length, row)),
            None => 0,
        },
        "range" | "generate_series" => range_elements(&arrays, rows)?.saturating_mul(8),
        _ => 0,
    })
}

/// The index of `row` in `array`: a constant argument is a one-row array.
fn row_of(array: &dyn Array, row: usize) -> usize {
    if array.len() == 1 {
        0
    } else {
        row
    }
}

/// A non-negative count from `counts` at `row` (0 for a null or a negative one).
fn count_at(counts: &Int64Array, row: usize) -> u128 {
    let at = row_of(counts, row);
    if counts.is_valid(at) {
        counts.value(at).max(0) as u128
    } else {
        0
    }
}

/// The elements `range`/`generate_series` would list over all rows: `(stop)`,
/// `(start, stop)` or `(start, stop, step)`, of integers, or of dates or timestamps with an
/// interval step (a month counted as 28 days, so never fewer than it lists).
fn range_elements(arrays: &[ArrayRef], rows: usize) -> DfResult<u64> {
    let (start, stop, step) = match arrays {
        [stop] => (None, stop, None),
        [start, stop] => (Some(start), stop, None),
        [start, stop, step] => (Some(start), stop, Some(step)),
        _ => return Ok(0),
    };
    // Start, stop and step in one unit: the integers themselves, days, or the timestamp's.
    let nanos_per_unit: i128 = match stop.data_type() {
        t if t.is_integer() => 0,
        DataType::Date32 => 86_400_000_000_000,
        DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1,
        _ => return Ok(0),
    };
    let as_i64 = |a: &ArrayRef| -> DfResult<Int64Array> {
        Ok(cast(a, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone())
    };
    let stop = as_i64(stop)?;
    let start = start.map(as_i64).transpose()?;
    let steps: Option<Vec<Option<i128>>> = match step {
        None => None,
        Some(s) if s.data_type().is_integer() => {
            let s = as_i64(s)?;
            Some(
                (0..rows)
                    .map(|r| {
                        let r = row_of(&s, r);
                        s.is_valid(r).then(|| s.value(r) as i128)
                    })
                    .collect(),
            )
        }
        Some(s)
            if matches!(
                s.data_type(),
                DataType::Interval(IntervalUnit::MonthDayNano)
            ) =>
        {
            let s = s.as_primitive::<IntervalMonthDayNanoType>();
            Some(
                (0..rows)
                    .map(|r| {
                        let r = row_of(s, r);
                        s.is_valid(r).then(|| {
                            let v = s.value(r);
                            let nanos = (v.months as i128 * 28 + v.days as i128)
                                * 86_400_000_000_000
                                + v.nanoseconds as i128;
                            // In the unit of start and stop; a step under one unit
                            // counts as one.
                            let unit = nanos_per_unit.max(1);
                            let whole = nanos / unit;
                            if whole == 0 && nanos != 0 {
                                nanos.signum()
                            } else {
                                whole
                            }
                        })
                    })
                    .collect(),
            )
        }
        Some(_) => return Ok(0),
    };
    let mut total: u128 = 0;
    for row in 0..rows {
        let at = row_of(&stop, row);
        if !stop.is_valid(at) {
            continue;
        }
        let to = stop.value(at) as i128;
        let from = match &start {
            Some(s) if s.is_valid(row_of(s, row)) => s.value(row_of(s, row)) as i128,
            Some(_) => continue,
            None => 0,
        };
        let step = match &steps {
            Some(steps) => match steps.get(row).copied().flatten() {
                Some(step) => step,
                None => continue,
            },
            None => 1,
        };
        if step == 0 || (to - from).signum() * step.signum() < 0 {
            continue;
        }
        total += ((to - from) / step) as u128 + 1;
    }
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(v)))
    }

    /// What a call would build is read from its arguments, constants once, columns per row;
    /// nulls and negative counts count nothing.
    #[test]
    fn output_sizes_are_read_from_the_arguments() {
        let text = |v: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(v.into())));
        assert_eq!(
            output_bytes("repeat", &[text("ab"), int(10)], 1).unwrap(),
            20
        );
        // A constant over 8,192 rows: counted per row, not copied per row.
        assert_eq!(
            output_bytes("repeat", &[text("ab"), int(10)], 8192).unwrap(),
            20 * 8192
        );
        let times = ColumnarValue::Array(Arc::new(Int64Array::from(vec![
            Some(3),
            None,
            Some(-5),
            Some(1),
        ])));
        assert_eq!(
            output_bytes("lpad", &[text("x"), times.clone()], 4).unwrap(),
            4
        );
        assert_eq!(
            output_bytes("array_repeat", &[int(7), times], 4).unwrap(),
            32
        );
        assert_eq!(output_bytes("range", &[int(10)], 1).unwrap(), 11 * 8);
        assert_eq!(
            output_bytes("range", &[int(1), int(3_000_000_000)], 1).unwrap(),
            3_000_000_000 * 8
        );
        assert_eq!(
            output_bytes("generate_series", &[int(10), int(1), int(-3)], 1).unwrap(),
            4 * 8
        );
        // Wrong-way or zero steps list nothing (the built-in answers those itself).
        assert_eq!(
            output_bytes("range", &[int(1), int(10), int(-1)], 1).unwrap(),
            0
        );
        assert_eq!(
            output_bytes("range", &[int(1), int(10), int(0)], 1).unwrap(),
            0
        );
        let ts = |micros: i64| {
            ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(micros * 1000), None))
        };
        let hour = ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            datafusion::arrow::datatypes::IntervalMonthDayNano::new(0, 0, 3_600_000_000_000),
        )));
        let two_days = 2 * 86_400_000_000;
        assert_eq!(
            output_bytes("range", &[ts(0), ts(two_days), hour], 1).unwrap(),
            49 * 8
        );
        let month = ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            datafusion::arrow::datatypes::IntervalMonthDayNano::new(1, 0, 0),
        )));
        let day = |d: i32| ColumnarValue::Scalar(ScalarValue::Date32(Some(d)));
        assert_eq!(
            output_bytes("range", &[day(0), day(280), month], 1).unwrap(),
            11 * 8
        );
    }

    #[test]
    fn snowflake_ids_are_unique_and_increasing() {
        let g = SnowflakeGenerator::new("node-1");
        let mut all = g.next_ids(10_000);
        all.extend(g.next_ids(5));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all[0] > 0);
    }
}
