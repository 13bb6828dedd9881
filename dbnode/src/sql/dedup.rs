//! `DedupExec`: keeps the first row of every run of equal keys in a stream sorted by key.
//! Below it, the tiers are merged on (key, `_seq` DESC), so the first row of a run is the
//! newest version of that key. It streams: only the last key of the previous batch is kept.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, CardinalityEffect, EmissionType};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

#[derive(Debug)]
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    key: usize,
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
}

impl DedupExec {
    /// `input` is sorted by `ordering`: column `key`, then newest first. The plan
    /// declares both as requirements, so the optimizer keeps them.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        key: usize,
        ordering: LexOrdering,
    ) -> Result<Self> {
        let eq: EquivalenceProperties = input.equivalence_properties().clone();
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            key,
            ordering,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DedupExec: newest version per key (column {})", self.key)
    }
}

/// Marks rows whose key differs from the row before (the first of the batch against the
/// last key of the previous batch).
fn first_of_runs(keys: &ArrayRef, previous: Option<&ArrayRef>) -> Result<BooleanArray> {
    let n = keys.len();
    let mut keep = Vec::with_capacity(n);
    if n == 0 {
        return Ok(BooleanArray::from(keep));
    }
    keep.push(match previous {
        Some(prev) => distinct(&keys.slice(0, 1), prev)?.value(0),
        None => true,
    });
    if n > 1 {
        let changed = distinct(&keys.slice(1, n - 1), &keys.slice(0, n - 1))?;
        keep.extend((0..n - 1).map(|i| changed.value(i)));
    }
    Ok(BooleanArray::from(keep))
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("DedupExec without input".into()))?;
        Ok(Arc::new(DedupExec::try_new(
            input,
            self.key,
            self.ordering.clone(),
        )?))
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn child_stats_requests(&self, _partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(None)]
    }

    /// At most the input's rows: with that bound DataFusion keeps a small merged read on
    /// one thread instead of handing its batches to another (ADR 0021).
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let rows = input_stats
            .first()
            .map_or(Precision::Absent, |s| s.num_rows.to_inexact());
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema()).with_num_rows(rows),
        ))
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::LowerEqual
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let key = self.key;
        let stream = input.scan(None::<ArrayRef>, move |previous, batch| {
            let out = batch.and_then(|batch: RecordBatch| {
                let keys = batch.column(key).clone();
                let keep = first_of_runs(&keys, previous.as_ref())?;
                if batch.num_rows() > 0 {
                    *previous = Some(keys.slice(keys.len() - 1, 1));
                }
                Ok(filter_record_batch(&batch, &keep)?)
            });
            futures::future::ready(Some(out))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn keeps_the_first_row_of_each_run_across_batches() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 2, 3, 3]));
        let keep = first_of_runs(&a, None).unwrap();
        assert_eq!(
            keep,
            BooleanArray::from(vec![true, false, true, true, false])
        );
        let prev: ArrayRef = Arc::new(Int64Array::from(vec![3]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![3, 4]));
        let keep = first_of_runs(&b, Some(&prev)).unwrap();
        assert_eq!(keep, BooleanArray::from(vec![false, true]));
        let _ = a.as_primitive::<Int64Type>();
    }
}
