//! Integer arithmetic that fails on overflow, as PostgreSQL's does.
//!
//! DataFusion evaluates `+`, `-`, `*` and unary `-` on integers with Arrow's wrapping
//! kernels: `SELECT 9223372036854775807 + 1` answers `-9223372036854775808`, and
//! `UPDATE counters SET n = n + 1` on a BIGINT at its maximum stores a negative number.
//! [`CheckedIntegerArithmetic`] is a function rewrite (DataFusion's hook for turning
//! operators into functions, applied to every plan and every standalone expression such
//! as a live query's WHERE) that replaces those operators on two signed integers with
//! [`CheckedArithmetic`], which runs Arrow's checked kernels: an overflow fails the
//! statement with `NUMERIC_OUT_OF_RANGE` and nothing is written. Output column names stay
//! what the SQL said (`a + b`), since the rewrite keeps the original name.
//!
//! Left alone: aggregates (`SUM` has its own checked form, [`super::checked_sum`]),
//! decimals and floats (which do not wrap), and division, whose kernels already refuse
//! `i64::MIN / -1` and division by zero.

use std::sync::Arc;

use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr_common::datum;

use crate::catalog::KalamType;
use crate::error::KalamError;

/// The operators [`CheckedArithmetic`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
    Neg,
}

impl Op {
    fn binary(op: Operator) -> Option<Self> {
        match op {
            Operator::Plus => Some(Op::Add),
            Operator::Minus => Some(Op::Sub),
            Operator::Multiply => Some(Op::Mul),
            _ => None,
        }
    }

    fn operator(self) -> Operator {
        match self {
            Op::Add => Operator::Plus,
            Op::Sub | Op::Neg => Operator::Minus,
            Op::Mul => Operator::Multiply,
        }
    }
}

/// `+`, `-`, `*` or unary `-` of integers through Arrow's checked kernels.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedArithmetic {
    op: Op,
    signature: Signature,
}

impl CheckedArithmetic {
    fn udf(op: Op) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(CheckedArithmetic {
            op,
            signature: Signature::user_defined(Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        match self.op {
            Op::Add => "checked_add",
            Op::Sub => "checked_sub",
            Op::Mul => "checked_mul",
            Op::Neg => "checked_neg",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The operator's own name (`t.a + Int64(1)`, `(- t.a)`), so that no output column,
    /// grouping set or reference to one changes its name.
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        match (self.op, args) {
            (Op::Neg, [operand]) => Ok(format!("(- {})", operand.schema_name())),
            (op, [l, r]) if op != Op::Neg => Ok(format!(
                "{} {} {}",
                l.schema_name(),
                op.operator(),
                r.schema_name()
            )),
            _ => Err(DataFusionError::Plan(format!(
                "{} called with {} arguments",
                self.name(),
                args.len()
            ))),
        }
    }

    /// The operands as the operator would have coerced them (`INT + BIGINT` is two BIGINTs):
    /// the rewrite runs before type coercion, which then coerces this call instead.
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [operand] if self.op == Op::Neg => Ok(vec![operand.clone()]),
            [lhs, rhs] if self.op != Op::Neg => {
                let (l, r) =
                    BinaryTypeCoercer::new(lhs, &self.op.operator(), rhs).get_input_types()?;
                Ok(vec![l, r])
            }
            _ => Err(DataFusionError::Plan(format!(
                "{} takes {} arguments, got {}",
                self.name(),
                if self.op == Op::Neg { 1 } else { 2 },
                arg_types.len()
            ))),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.coerce_types(arg_types)?.swap_remove(0))
    }

    /// Nullable exactly when the operator's result would be, so a NOT NULL column's
    /// arithmetic stays NOT NULL.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&types)?,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let data_type = args.return_field.data_type().clone();
        let result = match (self.op, args.args.as_slice()) {
            (Op::Neg, [operand]) => negate(operand),
            (Op::Add, [l, r]) => datum::apply(l, r, numeric::add),
            (Op::Sub, [l, r]) => datum::apply(l, r, numeric::sub),
            (Op::Mul, [l, r]) => datum::apply(l, r, numeric::mul),
            _ => Err(DataFusionError::Internal(format!(
                "{} called with {} arguments",
                self.name(),
                args.args.len()
            ))),
        };
        result.map_err(|e| match e {
            DataFusionError::ArrowError(inner, backtrace) => match *inner {
                ArrowError::ArithmeticOverflow(detail) => {
                    out_of_range(&data_type, &detail).into_datafusion()
                }
                other => DataFusionError::ArrowError(Box::new(other), backtrace),
            },
            other => other,
        })
    }
}

fn negate(operand: &ColumnarValue) -> DfResult<ColumnarValue> {
    match operand {
        ColumnarValue::Array(a) => Ok(ColumnarValue::Array(numeric::neg(a.as_ref())?)),
        ColumnarValue::Scalar(s) => {
            let negated = numeric::neg(s.to_array_of_size(1)?.as_ref())?;
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                negated.as_ref(),
                0,
            )?))
        }
    }
}

/// PostgreSQL's words for it: `bigint out of range`, with Arrow's account of the operation.
pub(super) fn out_of_range(data_type: &DataType, detail: &str) -> KalamError {
    let type_name = match data_type {
        DataType::Int16 => KalamType::SmallInt.sql_name(),
        DataType::Int32 => KalamType::Int.sql_name(),
        DataType::Int64 => KalamType::BigInt.sql_name(),
        other => other.to_string(),
    };
    let operation = detail
        .strip_prefix("Overflow happened on: ")
        .unwrap_or(detail);
    KalamError::NumericOutOfRange(format!("{type_name} out of range: {operation}"))
}

/// Replaces `+`, `-`, `*` and unary `-` whose operands are signed integers with
/// [`CheckedArithmetic`]. Register it with `FunctionRegistry::register_function_rewrite`.
#[derive(Debug, Default)]
pub struct CheckedIntegerArithmetic;

impl FunctionRewrite for CheckedIntegerArithmetic {
    fn name(&self) -> &str {
        "checked_integer_arithmetic"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> DfResult<Transformed<Expr>> {
        // An operand whose type cannot be resolved here is left to the planner, which
        // reports it; the operator stays as it was.
        // Signed integers only: an unsigned operand (`row_number() OVER () - 1`) is coerced
        // to a DECIMAL by DataFusion, which has no wrapping to fix.
        let is_integer = |e: &Expr| e.get_type(schema).is_ok_and(|t| t.is_signed_integer());
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match Op::binary(op) {
                Some(checked) if is_integer(&left) && is_integer(&right) => Ok(Transformed::yes(
                    Expr::ScalarFunction(ScalarFunction::new_udf(
                        CheckedArithmetic::udf(checked),
                        vec![*left, *right],
                    )),
                )),
                _ => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                    left,
                    op,
                    right,
                }))),
            },
            Expr::Negative(operand) if is_integer(&operand) => {
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(CheckedArithmetic::udf(Op::Neg), vec![*operand]),
                )))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::execution::runtime_env::RuntimeEnv;
    use datafusion::prelude::SessionContext;

    use crate::error::KalamError;
    use crate::sql::executor::planner_state;
    use crate::sql::functions::SnowflakeGenerator;

    fn context() -> SessionContext {
        let state = planner_state(
            Arc::new(SnowflakeGenerator::new("test")),
            None,
            Arc::new(RuntimeEnv::default()),
        );
        SessionContext::new_with_state(state)
    }

    /// `sql` planned and run with the node's functions, as a request would.
    pub(in crate::sql) async fn run(sql: &str) -> Result<Vec<RecordBatch>, KalamError> {
        let ctx = context();
        let df = ctx.sql(sql).await.map_err(KalamError::from)?;
        df.collect().await.map_err(KalamError::from)
    }

    async fn refused(sql: &str) -> String {
        match run(sql).await {
            Err(KalamError::NumericOutOfRange(m)) => m,
            other => panic!("{sql}: expected NumericOutOfRange, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn integer_overflow_is_an_error_not_a_wrapped_value() {
        for (sql, type_name) in [
            ("SELECT 9223372036854775807 + 1", "BIGINT"),
            ("SELECT -9223372036854775807 - 2", "BIGINT"),
            ("SELECT 10000000000 * 10000000000", "BIGINT"),
            ("SELECT CAST(2147483647 AS INT) + CAST(1 AS INT)", "INT"),
            (
                "SELECT CAST(32767 AS SMALLINT) * CAST(2 AS SMALLINT)",
                "SMALLINT",
            ),
            // Evaluated per row, not folded as a constant.
            (
                "SELECT x * 2 FROM (VALUES (1), (4611686018427387904)) AS t(x)",
                "BIGINT",
            ),
            (
                "SELECT -x FROM (VALUES (-9223372036854775807 - 1)) AS t(x)",
                "BIGINT",
            ),
            // Inside a subquery and an aggregate's argument.
            (
                "SELECT (SELECT max(x) + 1 FROM (VALUES (9223372036854775807)) AS t(x))",
                "BIGINT",
            ),
            (
                "SELECT sum(x + 1) FROM (VALUES (9223372036854775807)) AS t(x)",
                "BIGINT",
            ),
        ] {
            let message = refused(sql).await;
            assert!(
                message.starts_with(&format!("{type_name} out of range")),
                "{sql}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn arithmetic_in_range_keeps_its_values_and_names() {
        let batches = run("SELECT 9223372036854775806 + 1, x * 3 - 2, -x \
             FROM (VALUES (CAST(5 AS INT))) AS t(x)")
        .await
        .unwrap();
        let batch = &batches[0];
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "Int64(9223372036854775806) + Int64(1)",
                "t.x * Int64(3) - Int64(2)",
                "(- t.x)"
            ]
        );
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().value(0),
            i64::MAX
        );
        assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 13);
        assert_eq!(
            batch
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .value(0),
            -5
        );
    }

    #[tokio::test]
    async fn grouping_sets_and_unsigned_operands_plan_as_before() {
        for sql in [
            "SELECT a + 1, count(*) AS n FROM (VALUES (1), (2)) AS t(a) GROUP BY ROLLUP(a + 1)",
            "SELECT a * 2 AS d FROM (VALUES (1), (2)) AS t(a) GROUP BY a * 2 HAVING a * 2 > 2",
            // row_number() is a UInt64: DataFusion coerces `- 1` to a DECIMAL.
            "SELECT row_number() OVER (ORDER BY a) - 1 AS r FROM (VALUES (1), (2)) AS t(a)",
        ] {
            let batches = run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert!(rows >= 1, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_arithmetic_is_left_alone() {
        // Floats, decimals and dates keep DataFusion's own operators.
        let batches = run("SELECT 1.5e308 * 10, CAST(1.5 AS DECIMAL(10,2)) + 1, \
             DATE '2026-01-01' + INTERVAL '1 day'")
        .await
        .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        let plan = context()
            .sql("EXPLAIN SELECT x + 1 FROM (VALUES (1.5)) AS t(x)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(!text.contains("checked_"), "{text}");
    }
}
