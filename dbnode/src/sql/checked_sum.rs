//! `SUM` of integers that fails on overflow instead of wrapping around (ADR 0034).
//!
//! DataFusion's `sum` adds integers (SMALLINT, INT and BIGINT all sum into a BIGINT) with
//! wrapping arithmetic: two rows of 2^62 sum to -2^63, a wrong number and no error.
//! PostgreSQL sums BIGINTs into NUMERIC; KalamDB keeps the BIGINT result (a JSON number, as
//! before) and, as for the operators of ADR 0028, fails the statement with
//! `NUMERIC_OUT_OF_RANGE` when a sum leaves its range. [`CheckedSum`] replaces the built-in
//! `sum` under its own name, so every `SUM(...)` of a plan gets it; other input types
//! (floats, decimals, unsigned integers, intervals) and `SUM(DISTINCT ...)` go to the
//! built-in implementation unchanged.

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

/// Whether this call sums integers (the signature coerces every signed integer to BIGINT)
/// without DISTINCT, the case the built-in gets wrong.
fn checked(args: &AccumulatorArgs) -> bool {
    !args.is_distinct && args.return_field.data_type() == &DataType::Int64
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
        if checked(&args) {
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
        if checked(&args) {
            Ok(Box::new(groups_sum()))
        } else {
            self.builtin.create_groups_accumulator(args)
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        if checked(&args) {
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

fn add(a: i64, b: i64) -> DfResult<i64> {
    a.checked_add(b).ok_or_else(out_of_range)
}

/// The sum of the non-null values of `array` (a BIGINT column), if any.
fn array_sum(array: &ArrayRef) -> DfResult<Option<i64>> {
    sum_checked(array.as_primitive::<Int64Type>()).map_err(|e| match e {
        ArrowError::ArithmeticOverflow(_) => out_of_range(),
        other => DataFusionError::ArrowError(Box::new(other), None),
    })
}

/// One group's sum (no GROUP BY, or a group the planner does not batch).
#[derive(Debug, Default)]
struct SumAccumulator {
    sum: Option<i64>,
}

impl Accumulator for SumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&values[0])? {
            self.sum = Some(add(self.sum.unwrap_or(0), x)?);
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
        Ok(ScalarValue::Int64(self.sum))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// A window frame's sum, which rows enter and leave.
#[derive(Debug, Default)]
struct SlidingSumAccumulator {
    sum: i64,
    count: u64,
}

impl Accumulator for SlidingSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.count += (values[0].len() - values[0].null_count()) as u64;
        if let Some(x) = array_sum(&values[0])? {
            self.sum = add(self.sum, x)?;
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&values[0])? {
            self.sum = self.sum.checked_sub(x).ok_or_else(out_of_range)?;
        }
        self.count -= (values[0].len() - values[0].null_count()) as u64;
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        if let Some(x) = array_sum(&states[0])? {
            self.sum = add(self.sum, x)?;
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
        Ok(ScalarValue::Int64((self.count != 0).then_some(self.sum)))
    }

    fn size(&self) -> usize {
        size_of_val(self)
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
    /// (many groups at once), a window frame, and INT inputs summed into a BIGINT.
    #[tokio::test]
    async fn a_sum_past_the_bigint_range_is_an_error_not_a_wrapped_value() {
        let big = "(VALUES (1, 4611686018427387904), (1, 4611686018427387904), (2, 1)) AS t(g, x)";
        for sql in [
            format!("SELECT sum(x) FROM {big}"),
            format!("SELECT g, sum(x) FROM {big} GROUP BY g"),
            format!("SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM {big}"),
            "SELECT sum(x) FROM (VALUES (-9223372036854775807), (-2)) AS t(x)".to_string(),
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
    /// window, no rows, and the types the built-in keeps (DISTINCT, DOUBLE).
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
