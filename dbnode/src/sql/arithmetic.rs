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

use std::fmt::Write as _;
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

/// The checked call `expr` is, if it is one: its operators and operands.
fn checked_call(expr: &Expr) -> Option<(&[Op], &[Expr])> {
    match expr {
        Expr::ScalarFunction(ScalarFunction { func, args }) => func
            .inner()
            .downcast_ref::<CheckedArithmetic>()
            .map(|checked| (checked.ops.as_slice(), args.as_slice())),
        _ => None,
    }
}

/// Writes the name of `ops` applied to `args` into `out`: `(- a)`, or `a + b - c` for a
/// chain, an operand that is a checked call too written in place. DataFusion names every
/// subexpression each time it resolves a type, and had each call formatted its operands'
/// names into strings of their own, nested calls would copy their names over and over.
fn write_name(ops: &[Op], args: &[Expr], out: &mut String) -> DfResult<()> {
    match (ops, args) {
        ([Op::Neg], [operand]) => {
            out.push_str("(- ");
            write_operand_name(operand, out)?;
            out.push(')');
        }
        (ops, [first, rest @ ..]) if ops.len() == rest.len() && !ops.contains(&Op::Neg) => {
            write_operand_name(first, out)?;
            for (op, operand) in ops.iter().zip(rest) {
                write!(out, " {} ", op.operator()).map_err(name_error)?;
                write_operand_name(operand, out)?;
            }
        }
        _ => return Err(arity_error(ops, args.len())),
    }
    Ok(())
}

fn write_operand_name(operand: &Expr, out: &mut String) -> DfResult<()> {
    match checked_call(operand) {
        Some((ops, args)) => write_name(ops, args, out),
        None => write!(out, "{}", operand.schema_name()).map_err(name_error),
    }
}

fn name_error(e: std::fmt::Error) -> DataFusionError {
    DataFusionError::Plan(format!("naming an arithmetic expression: {e}"))
}

fn arity_error(ops: &[Op], args: usize) -> DataFusionError {
    DataFusionError::Plan(format!(
        "checked arithmetic of {} operators called with {args} arguments",
        ops.len()
    ))
}

/// Integer arithmetic through Arrow's checked kernels: a unary `-` (`ops` is `[Neg]`), or a
/// left-deep chain `a + b - c * ...` of `+`, `-` and `*` (`ops[i]` between operands `i` and
/// `i + 1`), evaluated left to right exactly as the nested operators would be, each step in
/// the type the operator would have coerced its two sides to. A chain is one call, not one
/// call per operator: DataFusion resolves a function's type through its arguments' fields,
/// names included, so nested calls cost the cube of a chain's length to plan (400 `+` took
/// 8 s) where one call costs its length.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedArithmetic {
    ops: Vec<Op>,
    signature: Signature,
}

impl CheckedArithmetic {
    fn udf(ops: Vec<Op>) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(CheckedArithmetic {
            ops,
            signature: Signature::user_defined(Volatility::Immutable),
        }))
    }

    /// For each operator of a chain: the types its two sides are coerced to, of which the
    /// left is also its result's (both are for signed integers).
    fn step_types(&self, arg_types: &[DataType]) -> DfResult<Vec<(DataType, DataType)>> {
        let [first, rest @ ..] = arg_types else {
            return Err(arity_error(&self.ops, 0));
        };
        if self.ops.len() != rest.len() || self.ops.contains(&Op::Neg) {
            return Err(arity_error(&self.ops, arg_types.len()));
        }
        let mut so_far = first.clone();
        let mut steps = Vec::with_capacity(rest.len());
        for (op, operand) in self.ops.iter().zip(rest) {
            let operator = op.operator();
            let coercer = BinaryTypeCoercer::new(&so_far, &operator, operand);
            let (lhs, rhs) = coercer.get_input_types()?;
            let result = coercer.get_result_type()?;
            so_far = result;
            steps.push((lhs, rhs));
        }
        Ok(steps)
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        match self.ops.as_slice() {
            [Op::Add] => "checked_add",
            [Op::Sub] => "checked_sub",
            [Op::Mul] => "checked_mul",
            [Op::Neg] => "checked_neg",
            _ => "checked_arithmetic",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The operators' own name (`t.a + Int64(1)`, `(- t.a)`), so that no output column,
    /// grouping set or reference to one changes its name.
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        let mut name = String::new();
        write_name(&self.ops, args, &mut name)?;
        Ok(name)
    }

    /// The operands keep their types: each step of a chain casts its two sides to what the
    /// operator would have coerced them to (`INT + INT` stays INT, `... + BIGINT` is BIGINT
    /// from there on), as the nested operators did.
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match (self.ops.as_slice(), arg_types) {
            ([Op::Neg], [operand]) => Ok(vec![operand.clone()]),
            _ => {
                self.step_types(arg_types)?;
                Ok(arg_types.to_vec())
            }
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match (self.ops.as_slice(), arg_types) {
            ([Op::Neg], [operand]) => Ok(operand.clone()),
            _ => {
                let steps = self.step_types(arg_types)?;
                let (last, _) = steps.last().ok_or_else(|| arity_error(&self.ops, 1))?;
                Ok(last.clone())
            }
        }
    }

    /// Nullable exactly when the operators' result would be, so a NOT NULL column's
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
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        if let ([Op::Neg], [operand]) = (self.ops.as_slice(), args.args.as_slice()) {
            let data_type = operand.data_type();
            return negate(operand).map_err(|e| overflow_error(e, &data_type));
        }
        let steps = self.step_types(&types)?;
        let mut operands = args.args.into_iter();
        let mut so_far = operands.next().ok_or_else(|| arity_error(&self.ops, 0))?;
        for ((op, (lhs_type, rhs_type)), operand) in self.ops.iter().zip(&steps).zip(operands) {
            let lhs = so_far.cast_to(lhs_type, None)?;
            let rhs = operand.cast_to(rhs_type, None)?;
            let kernel = match op {
                Op::Add => numeric::add,
                Op::Sub => numeric::sub,
                Op::Mul => numeric::mul,
                Op::Neg => return Err(arity_error(&self.ops, types.len())),
            };
            so_far = datum::apply(&lhs, &rhs, kernel).map_err(|e| overflow_error(e, lhs_type))?;
        }
        Ok(so_far)
    }
}

/// An overflow of a step computed in `data_type` as PostgreSQL words it; other errors as
/// they are.
fn overflow_error(e: DataFusionError, data_type: &DataType) -> DataFusionError {
    match e {
        DataFusionError::ArrowError(inner, backtrace) => match *inner {
            ArrowError::ArithmeticOverflow(detail) => {
                out_of_range(data_type, &detail).into_datafusion()
            }
            other => DataFusionError::ArrowError(Box::new(other), backtrace),
        },
        other => other,
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

/// The operators and operands of a chain to extend: `expr`'s own if it is a checked chain,
/// else `expr` as the chain's first operand.
fn into_chain(expr: Expr) -> (Vec<Op>, Vec<Expr>) {
    match expr {
        Expr::ScalarFunction(ScalarFunction { func, args }) => {
            match func.inner().downcast_ref::<CheckedArithmetic>() {
                Some(checked) if !checked.ops.contains(&Op::Neg) => (checked.ops.clone(), args),
                _ => (
                    vec![],
                    vec![Expr::ScalarFunction(ScalarFunction { func, args })],
                ),
            }
        }
        other => (vec![], vec![other]),
    }
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
        // An operand that is already a checked call is one (they are only made of signed
        // integers); resolving its type would name its whole subtree again.
        let is_integer = |e: &Expr| {
            checked_call(e).is_some() || e.get_type(schema).is_ok_and(|t| t.is_signed_integer())
        };
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match Op::binary(op) {
                Some(checked) if is_integer(&left) && is_integer(&right) => {
                    // The rewrite runs bottom-up, so a left operand that is a chain already
                    // (`a + b` of `a + b + c`) is extended: one call per chain.
                    let (mut ops, mut args) = into_chain(*left);
                    ops.push(checked);
                    args.push(*right);
                    Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(CheckedArithmetic::udf(ops), args),
                    )))
                }
                _ => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                    left,
                    op,
                    right,
                }))),
            },
            Expr::Negative(operand) if is_integer(&operand) => {
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(CheckedArithmetic::udf(vec![Op::Neg]), vec![*operand]),
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

    fn column_names(batch: &RecordBatch) -> Vec<String> {
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
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
        let names = column_names(batch);
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

    /// A chain is evaluated left to right, each step in the type its operator would have
    /// used (an INT step overflows as INT even when a later operand is a BIGINT), and a
    /// parenthesised right operand is its own operand.
    #[tokio::test]
    async fn a_chain_steps_as_the_nested_operators_would() {
        let message =
            refused("SELECT CAST(2147483647 AS INT) + CAST(1 AS INT) + CAST(1 AS BIGINT)").await;
        assert!(message.starts_with("INT out of range"), "{message}");
        let message = refused("SELECT CAST(1 AS BIGINT) * 2 - 9223372036854775807 - 9").await;
        assert!(message.starts_with("BIGINT out of range"), "{message}");

        let batches = run(
            "SELECT CAST(1 AS BIGINT) + CAST(2147483647 AS INT) + CAST(1 AS INT), \
             10 - (3 - 1), 2 + 3 * 4 - -5, x - 1 - 1 \
             FROM (VALUES (CAST(7 AS SMALLINT))) AS t(x)",
        )
        .await
        .unwrap();
        let batch = &batches[0];
        let names = column_names(batch);
        assert_eq!(
            names[1..],
            [
                "Int64(10) - Int64(3) - Int64(1)",
                "Int64(2) + Int64(3) * Int64(4) - Int64(-5)",
                "t.x - Int64(1) - Int64(1)"
            ]
        );
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().value(0),
            2_147_483_649
        );
        assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 8);
        assert_eq!(batch.column(2).as_primitive::<Int64Type>().value(0), 19);
        assert_eq!(batch.column(3).as_primitive::<Int64Type>().value(0), 5);
    }

    /// A chain of 1,000 additions plans as one call with 1,001 operands (not 1,000 nested
    /// calls, whose planning grew with the cube of the length), and sums right.
    #[tokio::test]
    async fn a_long_chain_is_one_call() {
        let sql = format!("SELECT x{} FROM (VALUES (1)) AS t(x)", " + x".repeat(1000));
        let plan = context()
            .sql(&sql)
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let mut calls = Vec::new();
        use datafusion::common::tree_node::TreeNode;
        plan.apply_expressions(|e| {
            e.apply(|e| {
                if let Some((ops, args)) = super::checked_call(e) {
                    calls.push((ops.len(), args.len()));
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        })
        .unwrap();
        assert_eq!(calls, [(1000, 1001)]);
        let batches = run(&sql).await.unwrap();
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            1001
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
