//! Yield points in every query plan: where a running query hands its worker back to the
//! node's other requests, where it can be cancelled, and where it checks its statement's
//! deadline (`statement_timeout_ms`, ADR 0039).
//!
//! DataFusion yields at its data sources only (apache/datafusion#19358): a join that makes
//! millions of rows out of two small inputs polls them rarely, so
//! `SELECT count(*) FROM t a, t b, t c, t d` on one user's 1,000 rows held both workers for
//! minutes without yielding. It was not stopped when its client went away (a task is
//! cancelled where it yields), and `/healthz` took 3 s to answer meanwhile. The rule below
//! wraps every data source and every operator with two or more inputs (the joins, which may
//! emit the product of their inputs) in [`YieldPointExec`]: per batch it spends a unit of
//! the task's Tokio budget, as DataFusion's own `CooperativeExec` does, and fails with
//! `STATEMENT_TIMEOUT` once the statement's deadline has passed. Every other operator
//! consumes its input's batches, so it passes one of these points at least as often.
//!
//! A statement fails at a yield point before anything is written: INSERT ... SELECT
//! collects its rows before it writes them, UPDATE and DELETE read theirs before they change
//! them, so a statement that ran out of time changed nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::Statistics;
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use crate::error::KalamError;

/// When the running statement must have finished: set in the session config of each
/// statement's planning state, absent for the node's own queries.
#[derive(Debug, Clone, Copy)]
pub struct StatementDeadline {
    pub at: Instant,
    /// The configured limit, for the error's message.
    pub limit: Duration,
}

impl StatementDeadline {
    pub fn after(limit: Duration) -> Self {
        Self {
            at: Instant::now() + limit,
            limit,
        }
    }

    fn check(&self) -> Result<(), KalamError> {
        if Instant::now() >= self.at {
            Err(KalamError::StatementTimeout(self.limit.as_millis() as u64))
        } else {
            Ok(())
        }
    }
}

/// The physical optimizer rule, run after DataFusion's own.
#[derive(Debug, Default)]
pub struct YieldPoints;

impl PhysicalOptimizerRule for YieldPoints {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let inputs = node.children().len();
            if inputs == 1 || node.is::<YieldPointExec>() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(YieldPointExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "kalamdb_yield_points"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on unchanged, yielding when the task's budget is spent and
/// failing once the statement's deadline has passed.
#[derive(Debug)]
pub struct YieldPointExec {
    input: Arc<dyn ExecutionPlan>,
}

impl YieldPointExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for YieldPointExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "YieldPointExec")
    }
}

impl ExecutionPlan for YieldPointExec {
    fn name(&self) -> &str {
        "YieldPointExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(input_stats
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.schema()))))
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.len() {
            1 => Ok(Arc::new(Self::new(children.swap_remove(0)))),
            n => Err(datafusion::error::DataFusionError::Internal(format!(
                "YieldPointExec takes one input, got {n}"
            ))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let deadline = context
            .session_config()
            .get_extension::<StatementDeadline>()
            .map(|d| *d);
        let input = make_cooperative(self.input.execute(partition, context)?);
        Ok(match deadline {
            None => input,
            Some(deadline) => Box::pin(DeadlineStream { input, deadline }),
        })
    }
}

struct DeadlineStream {
    input: SendableRecordBatchStream,
    deadline: StatementDeadline,
}

impl Stream for DeadlineStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Err(e) = self.deadline.check() {
            return Poll::Ready(Some(Err(e.into_datafusion())));
        }
        self.input.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}
