//! Number literals read as PostgreSQL reads them: a literal with a decimal point (`12.34`) is
//! an exact `DECIMAL` of the precision and scale it is written with, not a `DOUBLE` as
//! DataFusion would make it. A `DOUBLE` keeps about 15 significant digits, and even fewer
//! survive its scaling into a `DECIMAL(38,18)` column, so `amount + 0.000000000000000001` or
//! `VALUES (1.123456789012345678)` would silently change the digits a user wrote.
//!
//! The rule, applied to the statement's syntax tree before DataFusion plans it (and by the
//! literal INSERT fast path to its values):
//! - digits with a decimal point, at most 38 of them: `DECIMAL(p,s)`, `1.50` is `DECIMAL(3,2)`;
//! - an integer too large for `BIGINT UNSIGNED`, at most 38 digits: `DECIMAL(p,0)`;
//! - everything else as DataFusion types it: integers `BIGINT` (or `BIGINT UNSIGNED`), a
//!   literal with an exponent (`1e300`) or of more than 38 digits `DOUBLE`.
//!
//! See ADR 0029.

use std::ops::ControlFlow;

use datafusion::common::ScalarValue;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    CastKind, DataType as SqlDataType, ExactNumberInfo, Expr as SqlExpr, Value as SqlValue,
    VisitMut, VisitorMut,
};

use crate::sql::parser::parse_expr_text;

/// The widest `DECIMAL` (`Decimal128`).
const MAX_PRECISION: usize = 38;

/// An exact number literal: `value` / 10^`scale`, in `precision` digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactNumber {
    pub value: i128,
    pub precision: u8,
    pub scale: i8,
}

impl ExactNumber {
    pub fn scalar(self) -> ScalarValue {
        ScalarValue::Decimal128(Some(self.value), self.precision, self.scale)
    }

    fn sql_type(self) -> SqlDataType {
        SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(
            u64::from(self.precision),
            i64::from(self.scale),
        ))
    }
}

/// The `DECIMAL` a number literal's text stands for, or `None` when it keeps DataFusion's
/// type (see the module docs). `text` is what the SQL tokenizer read: unsigned, digits with
/// at most one `.` and possibly an exponent.
pub fn exact_number(text: &str) -> Option<ExactNumber> {
    let (int_part, fraction) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let fraction_digits = fraction.unwrap_or("");
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !fraction_digits.bytes().all(|b| b.is_ascii_digit())
        || (int_part.is_empty() && fraction_digits.is_empty())
    {
        // An exponent, or something the tokenizer should not have produced.
        return None;
    }
    if fraction.is_none() && text.parse::<u64>().is_ok() {
        return None;
    }
    let int_digits = int_part.trim_start_matches('0');
    let precision = (int_digits.len() + fraction_digits.len()).max(1);
    if precision > MAX_PRECISION {
        return None;
    }
    let digits = format!("{int_digits}{fraction_digits}");
    let value = if digits.is_empty() {
        0
    } else {
        digits.parse::<i128>().ok()?
    };
    Some(ExactNumber {
        value,
        // Both at most 38, so they fit.
        precision: precision as u8,
        scale: fraction_digits.len() as i8,
    })
}

/// Rewrites one expression node: an exact number literal becomes `CAST('<text>' AS
/// DECIMAL(p,s))`, which DataFusion parses digit by digit and folds into a constant.
fn rewrite(expr: &mut SqlExpr) {
    let SqlExpr::Value(v) = expr else { return };
    let SqlValue::Number(text, _) = &v.value else {
        return;
    };
    let Some(exact) = exact_number(text) else {
        return;
    };
    *expr = SqlExpr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(SqlExpr::Value(
            SqlValue::SingleQuotedString(text.clone()).into(),
        )),
        data_type: exact.sql_type(),
        array: false,
        format: None,
    };
}

/// Rewrites every exact number literal except an `INTERVAL`'s value (`INTERVAL 1.5 HOUR`),
/// which DataFusion reads as text.
#[derive(Default)]
struct ExactLiterals {
    in_interval: usize,
}

impl VisitorMut for ExactLiterals {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if matches!(expr, SqlExpr::Interval(_)) {
            self.in_interval += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if matches!(expr, SqlExpr::Interval(_)) {
            self.in_interval -= 1;
        } else if self.in_interval == 0 {
            rewrite(expr);
        }
        ControlFlow::Continue(())
    }
}

/// Applies the rule to every expression of a syntax tree (a statement, an expression).
pub fn exact_literals<V: VisitMut>(node: &mut V) {
    let _ = node.visit(&mut ExactLiterals::default());
}

/// Applies the rule to a statement DataFusion is about to plan.
pub fn exact_statement_literals(stmt: &mut DfStatement) {
    match stmt {
        DfStatement::Statement(s) => exact_literals(s.as_mut()),
        DfStatement::Explain(explain) => exact_statement_literals(&mut explain.statement),
        _ => {}
    }
}

/// Applies the rule to an expression's SQL text (a stored DEFAULT); text that does not parse
/// is returned as it is, for the planner to report.
pub fn exact_expr_text(text: &str) -> String {
    match parse_expr_text(text) {
        Some(mut expr) => {
            exact_literals(&mut expr);
            expr.to_string()
        }
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn exact(value: i128, precision: u8, scale: i8) -> Option<ExactNumber> {
        Some(ExactNumber {
            value,
            precision,
            scale,
        })
    }

    #[test]
    fn fractions_are_decimals_of_the_digits_written() {
        assert_eq!(exact_number("12.34"), exact(1234, 4, 2));
        assert_eq!(exact_number("1.50"), exact(150, 3, 2));
        assert_eq!(exact_number("0.000000000000000001"), exact(1, 18, 18));
        assert_eq!(exact_number("007.5"), exact(75, 2, 1));
        assert_eq!(exact_number(".5"), exact(5, 1, 1));
        assert_eq!(exact_number("5."), exact(5, 1, 0));
        assert_eq!(exact_number("0.0"), exact(0, 1, 1));
        assert_eq!(
            exact_number("123456789012345678.99"),
            exact(12_345_678_901_234_567_899, 20, 2)
        );
        assert_eq!(
            exact_number("9999999999999999999999999999.9999999999"),
            exact(99_999_999_999_999_999_999_999_999_999_999_999_999, 38, 10)
        );
    }

    #[test]
    fn integers_too_large_for_bigint_unsigned_are_decimals() {
        assert_eq!(exact_number("42"), None);
        assert_eq!(exact_number("18446744073709551615"), None);
        assert_eq!(
            exact_number("18446744073709551616"),
            exact(18_446_744_073_709_551_616, 20, 0)
        );
    }

    #[test]
    fn exponents_and_overlong_literals_stay_double() {
        assert_eq!(exact_number("1e300"), None);
        assert_eq!(exact_number("1.5E-3"), None);
        assert_eq!(exact_number(&format!("0.{}", "1".repeat(39))), None);
        assert_eq!(exact_number(&"9".repeat(39)), None);
        assert_eq!(exact_number("."), None);
    }

    #[test]
    fn statements_get_casts_of_the_literal_text() {
        let mut stmt = Parser::new(&GenericDialect {})
            .try_with_sql(
                "SELECT amount + 0.000000000000000001 FROM app.w \
                 WHERE id = 2 AND price > -1.5 AND ratio < 1e3 \
                 AND t > now() - INTERVAL 1.5 HOUR LIMIT 10",
            )
            .unwrap()
            .parse_statement()
            .unwrap();
        exact_literals(&mut stmt);
        assert_eq!(
            stmt.to_string(),
            "SELECT amount + CAST('0.000000000000000001' AS DECIMAL(18,18)) FROM app.w \
             WHERE id = 2 AND price > -CAST('1.5' AS DECIMAL(2,1)) AND ratio < 1e3 \
             AND t > now() - INTERVAL 1.5 HOUR LIMIT 10"
        );
        assert_eq!(
            exact_expr_text("0.25 * 2"),
            "CAST('0.25' AS DECIMAL(2,2)) * 2"
        );
        assert_eq!(
            exact_expr_text("1 +"),
            "1 +",
            "text that does not parse is kept"
        );
    }
}
