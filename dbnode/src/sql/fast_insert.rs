//! The fast path for the commonest write of a realtime app: `INSERT INTO ns.t [(cols)]
//! VALUES (...)` with literal values only. Such a statement has nothing to plan, so its rows
//! are built here and written directly, with the same casts, defaults and checks as the
//! DataFusion path (which handles everything else: expressions, INSERT ... SELECT).

use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Insert, SetExpr, UnaryOperator, Value as SqlValue,
};

use crate::catalog::{KalamType, TableDef};
use crate::error::{KalamError, Result};
use crate::sql::functions::SnowflakeGenerator;
use crate::sql::literals::exact_number;
use crate::sql::parser::parse_expr_text;
use crate::sql::rows::{cast_to_column, value_at};
use crate::storage::Value;

/// A DEFAULT the fast path can compute without a planner.
#[derive(Debug, Clone, PartialEq)]
pub enum FastDefault {
    SnowflakeId,
    Now,
    Constant(Value),
}

/// A literal as the planner types it: integers Int64, numbers with a decimal point exact
/// decimals ([`exact_number`]), other numbers Float64. Integers beyond Int64 that DataFusion
/// would make UInt64 are left to the planner.
fn literal(expr: &SqlExpr) -> Option<ScalarValue> {
    match expr {
        SqlExpr::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n
                .parse::<i64>()
                .map(|i| ScalarValue::Int64(Some(i)))
                .ok()
                .or_else(|| exact_number(n).map(|e| e.scalar()))
                .or_else(|| {
                    n.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && n.parse::<u64>().is_err())
                        .map(|f| ScalarValue::Float64(Some(f)))
                }),
            SqlValue::SingleQuotedString(s) => Some(ScalarValue::Utf8(Some(s.clone()))),
            SqlValue::Boolean(b) => Some(ScalarValue::Boolean(Some(*b))),
            SqlValue::Null => Some(ScalarValue::Null),
            _ => None,
        },
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            ScalarValue::Int64(Some(i)) => i.checked_neg().map(|n| ScalarValue::Int64(Some(n))),
            ScalarValue::Float64(Some(f)) => Some(ScalarValue::Float64(Some(-f))),
            ScalarValue::Decimal128(Some(d), p, s) => Some(ScalarValue::Decimal128(Some(-d), p, s)),
            _ => None,
        },
        SqlExpr::Nested(inner) => literal(inner),
        _ => None,
    }
}

/// Converts a literal to the stored value of a column, with the planner's cast rules.
fn to_value(scalar: &ScalarValue, t: KalamType, column: &str) -> Result<Value> {
    if scalar.is_null() {
        return Ok(Value::Null);
    }
    // A literal already of the column's type needs no cast (the commonest INSERT); the
    // Arrow round trip below would give the same value.
    match (scalar, t) {
        (ScalarValue::Utf8(Some(s)), KalamType::Text) => return Ok(Value::Text(s.clone())),
        (ScalarValue::Int64(Some(i)), KalamType::BigInt) => return Ok(Value::Int(*i)),
        (ScalarValue::Float64(Some(f)), KalamType::Double) => return Ok(Value::Float(*f)),
        (ScalarValue::Boolean(Some(b)), KalamType::Boolean) => return Ok(Value::Bool(*b)),
        _ => {}
    }
    let array = scalar.to_array_of_size(1).map_err(KalamError::from)?;
    let cast = cast_to_column(&array, t, column)?;
    value_at(&cast, 0, t, column)
}

/// Classifies a column's DEFAULT; `None` means only the planner can evaluate it.
pub fn fast_default(text: &str, t: KalamType, column: &str) -> Option<FastDefault> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    match compact.as_str() {
        "SNOWFLAKE_ID()" => return Some(FastDefault::SnowflakeId),
        "NOW()" | "CURRENT_TIMESTAMP" | "CURRENT_TIMESTAMP()" => return Some(FastDefault::Now),
        _ => {}
    }
    let expr = parse_expr_text(text)?;
    let value = to_value(&literal(&expr)?, t, column).ok()?;
    Some(FastDefault::Constant(value))
}

/// Rows of user-column values for a literal-only INSERT, or `None` when the statement needs
/// the planner. `defaults` holds the fast default of each column (by position), `None` for
/// columns whose DEFAULT needs the planner.
pub fn literal_rows(
    def: &TableDef,
    defaults: &[Option<FastDefault>],
    columns: &[String],
    insert: &Insert,
    snowflake: &SnowflakeGenerator,
) -> Result<Option<Vec<Vec<Value>>>> {
    let Some(query) = insert.source.as_deref() else {
        return Ok(None);
    };
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return Ok(None);
    }
    let SetExpr::Values(values) = query.body.as_ref() else {
        return Ok(None);
    };
    // Position in the table of each listed column.
    let mut targets = Vec::with_capacity(columns.len());
    for name in columns {
        match def.columns.iter().position(|c| c.name.as_str() == name) {
            Some(i) if !targets.contains(&i) => targets.push(i),
            _ => return Ok(None), // unknown or repeated: the planner says what is wrong
        }
    }
    let omitted: Vec<usize> = (0..def.columns.len())
        .filter(|i| !targets.contains(i))
        .collect();
    if omitted
        .iter()
        .any(|i| def.columns[*i].default.is_some() && defaults[*i].is_none())
    {
        return Ok(None);
    }
    let mut literals = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        if row.content.len() != targets.len() {
            return Ok(None);
        }
        let mut scalars = Vec::with_capacity(row.content.len());
        for expr in &row.content {
            match literal(expr) {
                Some(s) => scalars.push(s),
                None => return Ok(None),
            }
        }
        literals.push(scalars);
    }
    let ids_needed = omitted
        .iter()
        .filter(|i| defaults[**i] == Some(FastDefault::SnowflakeId))
        .count();
    let mut ids = snowflake.next_ids(ids_needed * literals.len()).into_iter();
    let now = Value::Timestamp(chrono::Utc::now().timestamp_micros());
    let mut rows = Vec::with_capacity(literals.len());
    for scalars in literals {
        let mut out = vec![Value::Null; def.columns.len()];
        for (scalar, &i) in scalars.iter().zip(&targets) {
            let col = &def.columns[i];
            out[i] = to_value(scalar, col.data_type, col.name.as_str())?;
        }
        for &i in &omitted {
            out[i] = match &defaults[i] {
                Some(FastDefault::SnowflakeId) => ids.next().map(Value::Int).unwrap_or(Value::Null),
                Some(FastDefault::Now) => now.clone(),
                Some(FastDefault::Constant(v)) => v.clone(),
                None => Value::Null,
            };
        }
        rows.push(out);
    }
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_classified() {
        assert_eq!(
            fast_default("SNOWFLAKE_ID()", KalamType::BigInt, "id"),
            Some(FastDefault::SnowflakeId)
        );
        assert_eq!(
            fast_default("now ( )", KalamType::Timestamp, "t"),
            Some(FastDefault::Now)
        );
        assert_eq!(
            fast_default("'normal'", KalamType::Text, "p"),
            Some(FastDefault::Constant(Value::Text("normal".into())))
        );
        assert_eq!(
            fast_default("-5", KalamType::Int, "n"),
            Some(FastDefault::Constant(Value::Int(-5)))
        );
        assert_eq!(fast_default("1 + 1", KalamType::Int, "n"), None);
        assert_eq!(
            fast_default("'x'", KalamType::Int, "n"),
            None,
            "a DEFAULT that cannot convert is the planner's to report"
        );
    }

    #[test]
    fn decimal_literals_keep_every_digit() {
        let wallet = KalamType::Decimal {
            precision: 38,
            scale: 18,
        };
        assert_eq!(
            fast_default("-1.123456789012345678", wallet, "amount"),
            Some(FastDefault::Constant(Value::Decimal(
                -1_123_456_789_012_345_678
            )))
        );
        assert_eq!(
            fast_default("0.1", KalamType::Double, "ratio"),
            Some(FastDefault::Constant(Value::Float(0.1)))
        );
        assert_eq!(
            fast_default("1e-3", wallet, "amount"),
            Some(FastDefault::Constant(Value::Decimal(1_000_000_000_000_000))),
            "a literal with an exponent is a DOUBLE, cast as the planner casts it"
        );
    }

    #[test]
    fn literals_of_the_column_type_keep_their_value() {
        let cases = [
            (
                ScalarValue::Utf8(Some("héllo".into())),
                KalamType::Text,
                Value::Text("héllo".into()),
            ),
            (
                ScalarValue::Int64(Some(i64::MIN)),
                KalamType::BigInt,
                Value::Int(i64::MIN),
            ),
            (
                ScalarValue::Float64(Some(-0.5)),
                KalamType::Double,
                Value::Float(-0.5),
            ),
            (
                ScalarValue::Boolean(Some(true)),
                KalamType::Boolean,
                Value::Bool(true),
            ),
            (ScalarValue::Utf8(None), KalamType::Text, Value::Null),
        ];
        for (scalar, t, expected) in cases {
            assert_eq!(
                to_value(&scalar, t, "c").unwrap(),
                expected,
                "{scalar:?} as {t:?}"
            );
        }
        assert!(matches!(
            to_value(&ScalarValue::Utf8(Some("{}".into())), KalamType::Json, "j"),
            Ok(Value::Text(_))
        ));
    }

    #[test]
    fn literals_cast_like_the_planner() {
        let ts = to_value(
            &ScalarValue::Utf8(Some("2026-11-27T10:00:00.000123+02:00".into())),
            KalamType::Timestamp,
            "t",
        )
        .unwrap();
        assert_eq!(ts, Value::Timestamp(1_795_766_400_000_123));
        assert_eq!(
            to_value(&ScalarValue::Int64(Some(7)), KalamType::Double, "d").unwrap(),
            Value::Float(7.0)
        );
        assert!(matches!(
            to_value(&ScalarValue::Utf8(Some("abc".into())), KalamType::Int, "i"),
            Err(KalamError::InvalidValue(_))
        ));
        assert!(matches!(
            to_value(
                &ScalarValue::Utf8(Some("{bad".into())),
                KalamType::Json,
                "j"
            ),
            Err(KalamError::InvalidValue(_))
        ));
    }
}
