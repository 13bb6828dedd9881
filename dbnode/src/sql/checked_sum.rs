//! `SUM` of integers that fails on overflow instead of wrapping around (ADR 0034).
//!
//! DataFusion's `sum` adds integers (SMALLINT, INT and BIGINT all sum into a BIGINT) with
//! wrapping arithmetic: two rows of 2^62 sum to -2^63, a wrong number and no error.
//! PostgreSQL sums BIGINTs into NUMERIC; KalamDB keeps the BIGINT result (a JSON number, as
//! before) and, as for the operators of ADR 0028, fails the statement with
//! `NUMERIC_OUT_OF_RANGE` when a sum's result leaves its range (one accumulator and a window
//! frame keep 128 bits, so only the result counts; GROUP BY's fold checks each addition).
//! [`CheckedSum`] replaces the built-in
//! `sum` under its own name, so every `SUM(...)` of a plan gets it, `SUM(DISTINCT ...)`
//! included; other input types (floats, decimals, unsigned integers, intervals) go to the
//! built-in implementation unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::sum_checked;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::functions_aggregate::sum::Sum;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature,
};
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;
use datafusion_functions_aggregate_common::utils::GenericDistinctBuffer;

use crate::sql::arithmetic;

/// The built-in `sum`, with checked addition for integer inputs.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct CheckedSum {
    builtin: Sum,
}

impl CheckedSum {
    /// The function to register in place of the built-in `sum`.
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self::default())
    }
}

/// Whether this call sums integers (the signature coerces every signed integer to BIGINT),
/// the case the built-in gets wrong.
fn checked(args: &AccumulatorArgs) -> bool {
    args.return_field.data_type() == &DataType::Int64
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        if checked(&args) && args.is_distinct {
            Ok(Box::new(DistinctSumAccumulator(
                GenericDistinctBuffer::new(DataType::Int64),
            )))
        } else if checked(&args) {
            Ok(Box::<SumAccumulator>::default())
        } else {
            self.builtin.accumulator(args)
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        self.builtin.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.builtin.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        // Never DISTINCT: the built-in's `groups_accumulator_supported` says no to it.
        if checked(&args) {
            Ok(Box::new(groups_sum()))
        } else {
            self.builtin.create_groups_accumulator(args)
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        if checked(&args) && args.is_distinct {
            Ok(Box::<SlidingDistinctSumAccumulator>::default())
        } else if checked(&args) {
            Ok(Box::<SlidingSumAccumulator>::default())
        } else {
            self.builtin.create_sliding_accumulator(args)
        }
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.builtin.reverse_expr()
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.builtin.order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.builtin.set_monotonicity(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }
}

/// `BIGINT out of range: sum`, in the checked operators' words.
fn out_of_range() -> DataFusionError {
    arithmetic::out_of_range(&DataType::Int64, "sum").into_datafusion()
}

/// The sum of the non-null values of `array` (a BIGINT column), if any, in 128 bits: Arrow's
/// checked sum, and on its overflow the values again in 128 bits, so that a batch whose
/// running sum leaves the BIGINT range does not fail a total that fits.
fn array_sum(array: &ArrayRef) -> DfResult<Option<i128>> {
    let ints = array.as_primitive::<Int64Type>();
    match sum_checked(ints) {
        Ok(sum) => Ok(sum.map(i128::from)),
        Err(ArrowError::ArithmeticOverflow(_)) => {
            Ok(Some(ints.iter().flatten().map(i128::from).sum()))
        }
        Err(other) => Err(DataFusionError::ArrowError(Box::new(other), None)),
    }
}

/// The result of a sum kept in 128 bits, which its values cannot leave (2^64 BIGINTs would
/// be needed), so only a result outside the BIGINT range is an error.
fn in_range(sum: i128) -> DfResult<i64> {
    i64::try_from(sum).map_err(|_| out_of_range())
}

/// One group's sum (no GROUP BY, or a group the planner does not batch).
#[derive(Debug, Default)]
struct SumAccumulator {
    sum: Option<i128>,
}

impl Accumulator for SumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&values[0])? {
            self.sum = Some(self.sum.unwrap_or(0) + x);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Int64(self.sum.map(in_range).transpose()?))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// A window frame's sum, which rows enter and leave.
#[derive(Debug, Default)]
struct SlidingSumAccumulator {
    sum: i128,
    count: u64,
}

impl Accumulator for SlidingSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.count += (values[0].len() - values[0].null_count()) as u64;
        if let Some(x) = array_sum(&values[0])? {
            self.sum += x;
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&values[0])? {
            self.sum -= x;
        }
        self.count -= (values[0].len() - values[0].null_count()) as u64;
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&states[0])? {
            self.sum += x;
        }
        if let Some(counts) = states.get(1) {
            self.count += counts
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .sum::<u64>();
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![
            self.evaluate()?,
            ScalarValue::UInt64(Some(self.count)),
        ])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let sum = (self.count != 0).then(|| in_range(self.sum)).transpose()?;
        Ok(ScalarValue::Int64(sum))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// `SUM(DISTINCT ...)` of one group: DataFusion's set of distinct values (and its state,
/// a list of them, as the built-in's `state_fields` declare), summed when evaluated.
#[derive(Debug)]
struct DistinctSumAccumulator(GenericDistinctBuffer<Int64Type>);

impl Accumulator for DistinctSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.0.update_batch(values)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.0.merge_batch(states)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.0.state()
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        if self.0.values.is_empty() {
            return Ok(ScalarValue::Int64(None));
        }
        let sum = self.0.values.iter().map(|v| i128::from(v.0)).sum();
        Ok(ScalarValue::Int64(Some(in_range(sum)?)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.0.size()
    }
}

/// `SUM(DISTINCT ...)` over a window frame: how often each value is in the frame, and the
/// sum of the values present, in 128 bits so that rows entering before others leave
/// cannot fail a frame whose sum fits.
#[derive(Debug, Default)]
struct SlidingDistinctSumAccumulator {
    counts: HashMap<i64, usize>,
    sum: i128,
}

impl SlidingDistinctSumAccumulator {
    fn each_value(values: &ArrayRef, mut f: impl FnMut(i64)) {
        values
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .for_each(&mut f);
    }

    fn enter(&mut self, value: i64) {
        let count = self.counts.entry(value).or_insert(0);
        if *count == 0 {
            self.sum += i128::from(value);
        }
        *count += 1;
    }
}

impl Accumulator for SlidingDistinctSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        Self::each_value(&values[0], |v| self.enter(v));
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        Self::each_value(&values[0], |v| {
            if let Some(count) = self.counts.get_mut(&v) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&v);
                    self.sum -= i128::from(v);
                }
            }
        });
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    /// Partitions' states are lists of their distinct values, as [`DistinctSumAccumulator`]'s.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        for list in states[0].as_list::<i32>().iter().flatten() {
            Self::each_value(&list, |v| self.enter(v));
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self
            .counts
            .keys()
            .map(|v| ScalarValue::Int64(Some(*v)))
            .collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &DataType::Int64,
        ))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        if self.counts.is_empty() {
            return Ok(ScalarValue::Int64(None));
        }
        Ok(ScalarValue::Int64(Some(in_range(self.sum)?)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.counts.capacity() * size_of::<(i64, usize)>()
    }
}

/// The sums of many groups at once (GROUP BY): DataFusion's own accumulator for primitive
/// folds, whose fold cannot fail, so an overflow is noted in a flag and reported after the
/// batch that caused it.
struct GroupsSum<F: Fn(&mut i64, i64) + Send + Sync + 'static> {
    sums: PrimitiveGroupsAccumulator<Int64Type, F>,
    overflowed: Arc<AtomicBool>,
}

/// A [`GroupsSum`] whose fold the compiler can inline, as the built-in's is.
fn groups_sum() -> GroupsSum<impl Fn(&mut i64, i64) + Send + Sync + 'static> {
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let add = move |sum: &mut i64, x: i64| match sum.checked_add(x) {
        Some(v) => *sum = v,
        None => flag.store(true, Ordering::Relaxed),
    };
    GroupsSum {
        sums: PrimitiveGroupsAccumulator::new(&DataType::Int64, add),
        overflowed,
    }
}

impl<F: Fn(&mut i64, i64) + Send + Sync + 'static> GroupsSum<F> {
    fn check(&self) -> DfResult<()> {
        if self.overflowed.load(Ordering::Relaxed) {
            Err(out_of_range())
        } else {
            Ok(())
        }
    }
}

impl<F: Fn(&mut i64, i64) + Send + Sync + 'static> GroupsAccumulator for GroupsSum<F> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.sums
            .update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check()
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.sums
            .merge_batch(values, group_indices, total_num_groups)?;
        self.check()
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        self.check()?;
        self.sums.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        self.check()?;
        self.sums.state(emit_to)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        self.sums.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.sums.size()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;

    use crate::error::KalamError;
    use crate::sql::arithmetic::tests::run;

    /// Rows past the BIGINT range, in each way DataFusion plans a SUM: one group, GROUP BY
    /// (many groups at once), a window frame, INT inputs summed into a BIGINT, and DISTINCT
    /// in one group and in a window frame.
    #[tokio::test]
    async fn a_sum_past_the_bigint_range_is_an_error_not_a_wrapped_value() {
        let big = "(VALUES (1, 4611686018427387904), (1, 4611686018427387904), (2, 1)) AS t(g, x)";
        for sql in [
            format!("SELECT sum(x) FROM {big}"),
            format!("SELECT g, sum(x) FROM {big} GROUP BY g"),
            format!("SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM {big}"),
            "SELECT sum(x) FROM (VALUES (-9223372036854775807), (-2)) AS t(x)".to_string(),
            // Not rewritten into a GROUP BY (the count), so DISTINCT's own accumulator.
            "SELECT sum(DISTINCT x), count(*) FROM (VALUES (4611686018427387904), (4611686018427387905)) AS t(x)".to_string(),
            "SELECT sum(DISTINCT x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (1), (4611686018427387904), (4611686018427387905)) AS t(x)"
                .to_string(),
        ] {
            match run(&sql).await {
                Err(KalamError::NumericOutOfRange(m)) => {
                    assert_eq!(m, "BIGINT out of range: sum", "{sql}")
                }
                other => panic!("{sql}: expected NumericOutOfRange, got {other:?}"),
            }
        }
    }

    fn ints(batches: &[RecordBatch], column: usize) -> Vec<Option<i64>> {
        batches
            .iter()
            .flat_map(|b| b.column(column).as_primitive::<Int64Type>().iter())
            .collect()
    }

    /// In range, the sums, their names and their NULLs are the built-in's: the largest
    /// BIGINT itself, INTs summed past the INT range into a BIGINT, groups, a sliding
    /// window, DISTINCT, no rows, and a type the built-in keeps (DOUBLE).
    #[tokio::test]
    async fn sums_in_range_keep_their_values_names_and_nulls() {
        let batches = run("SELECT sum(x) FROM (VALUES (9223372036854775806), (1), (NULL)) AS t(x)")
            .await
            .unwrap();
        assert_eq!(batches[0].schema().field(0).name(), "sum(t.x)");
        assert_eq!(ints(&batches, 0), vec![Some(i64::MAX)]);

        let batches =
            run("SELECT sum(CAST(x AS INT)) FROM (VALUES (2147483647), (2147483647)) AS t(x)")
                .await
                .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(4294967294)]);

        let batches = run(
            "SELECT g, sum(x) FROM (VALUES (1, 5), (1, -7), (2, NULL)) AS t(g, x) \
             GROUP BY g ORDER BY g",
        )
        .await
        .unwrap();
        assert_eq!(ints(&batches, 1), vec![Some(-2), None]);

        let batches = run(
            "SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (1), (2), (4)) AS t(x) ORDER BY x",
        )
        .await
        .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(1), Some(3), Some(6)]);

        // Totals that fit although a running sum leaves the range (the values' order in one
        // batch, a frame that takes a row in before it lets one go), with and without
        // DISTINCT (which DataFusion plans as a GROUP BY when it is the only kind of
        // aggregate, and with its own accumulator next to a count).
        let max_first = "(VALUES (9223372036854775807), (1), (-1), (1), (-1), (NULL)) AS t(x)";
        let batches = run(&format!(
            "SELECT sum(x), sum(DISTINCT x), count(x) FROM {max_first}"
        ))
        .await
        .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(i64::MAX)]);
        assert_eq!(ints(&batches, 1), vec![Some(i64::MAX)]);
        let batches = run(&format!("SELECT sum(DISTINCT x) FROM {max_first}"))
            .await
            .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(i64::MAX)]);
        let batches = run(
            "SELECT sum(x) OVER (ORDER BY k ROWS BETWEEN CURRENT ROW AND CURRENT ROW) \
             FROM (VALUES (1, 1), (2, 9223372036854775807)) AS t(k, x) ORDER BY k",
        )
        .await
        .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(1), Some(i64::MAX)]);

        // A DISTINCT frame lets a repeated value go only with its last copy.
        let batches = run(
            "SELECT sum(DISTINCT x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (1), (1), (2), (4)) AS t(x) ORDER BY x",
        )
        .await
        .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(1), Some(1), Some(3), Some(6)]);
        let batches = run("SELECT sum(DISTINCT x) FROM (VALUES (1)) AS t(x) WHERE x > 1")
            .await
            .unwrap();
        assert_eq!(ints(&batches, 0), vec![None]);

        let batches = run("SELECT sum(x) FROM (VALUES (1)) AS t(x) WHERE x > 1")
            .await
            .unwrap();
        assert_eq!(ints(&batches, 0), vec![None]);

        let batches = run("SELECT sum(DISTINCT x), sum(CAST(x AS DOUBLE)) \
             FROM (VALUES (3), (3), (4)) AS t(x)")
        .await
        .unwrap();
        assert_eq!(ints(&batches, 0), vec![Some(7)]);
        assert_eq!(
            batches[0]
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0),
            10.0
        );
    }
}
