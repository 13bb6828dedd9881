//! Request parameters: `$1`, `$2`, ... in a request's SQL bound to the values of its
//! `params` list, and the cache that parses a parameterized text once (ADR 0032).
//!
//! A parameter is bound as the literal it holds, into the parsed tree, never into the text:
//! `'x''); DROP TABLE t; --'` is one string value wherever it goes. So a parameter behaves
//! exactly as the same literal written in its place (the same casts to the column's type),
//! and a client never has to quote or escape a value itself.
//!
//! The text of a parameterized request is a template its client sends again and again (the
//! same INSERT with other values), so its parse tree, with the placeholders still in it, is
//! kept, LRU, and the next request with the same text starts from a copy. Requests without
//! `params` are not cached: their values are usually in their text, and each text is seen once.

use std::ops::ControlFlow;

use datafusion::execution::cache::lru_queue::LruQueue;
use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr as SqlExpr, UnaryOperator, Value as SqlValue,
};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};
use serde_json::Value as Json;

use crate::error::{clip, KalamError, Result};
use crate::sql::parser::{parse_statements, KalamStatement};

/// Parse trees kept: a node serves a handful of templates per application, not thousands.
const CACHE_ENTRIES: usize = 256;
/// Longer texts are parsed every time, so that the cache stays small (at most about
/// `CACHE_ENTRIES` x 4 KiB of text and its tree).
const CACHE_MAX_SQL_BYTES: usize = 4096;
/// The most parameters one request may carry (PostgreSQL's wire protocol allows 65,535).
pub const MAX_PARAMS: usize = 65_535;

/// Parsed statements of parameterized requests, keyed by their text.
pub struct PreparedStatements {
    cache: Mutex<LruQueue<String, Vec<KalamStatement>>>,
    lookups: IntCounterVec,
}

impl std::fmt::Debug for PreparedStatements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedStatements({} texts)", self.cache.lock().len())
    }
}

impl PreparedStatements {
    pub fn new() -> std::result::Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "kalamdb_prepared_statement_lookups_total",
                "Parameterized requests, by whether their text's parse was cached (hit, miss)",
            ),
            &["result"],
        )?;
        for result in ["hit", "miss"] {
            let _ = lookups.with_label_values(&[result]);
        }
        Ok(Self {
            cache: Mutex::new(LruQueue::new()),
            lookups,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.lookups.clone())]
    }

    /// The statements of `sql` and, as [`parse_statements`], the error of the first that does
    /// not parse. Texts that parse whole are kept for the next request.
    pub fn parse(&self, sql: &str) -> (Vec<KalamStatement>, Option<KalamError>) {
        if sql.len() > CACHE_MAX_SQL_BYTES {
            return parse_statements(sql);
        }
        // `LruQueue::get` takes the key by reference to its own type.
        let key = sql.to_owned();
        if let Some(statements) = self.cache.lock().get(&key) {
            self.lookups.with_label_values(&["hit"]).inc();
            return (statements.clone(), None);
        }
        self.lookups.with_label_values(&["miss"]).inc();
        let (statements, error) = parse_statements(sql);
        if error.is_none() {
            let mut cache = self.cache.lock();
            cache.put(key, statements.clone());
            while cache.len() > CACHE_ENTRIES {
                cache.pop();
            }
        }
        (statements, error)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache.lock().len()
    }
}

/// Whether the parse of `sql` can hold a placeholder: sqlparser makes them only of `$`, `?`,
/// `:` and `@` tokens. A request without params whose text has none skips [`bind`]'s walk
/// of every expression (a few microseconds of a single-row INSERT).
pub fn may_hold_placeholders(sql: &str) -> bool {
    sql.bytes().any(|b| matches!(b, b'$' | b'?' | b':' | b'@'))
}

/// Binds `params` to the placeholders of `statements`, all before any of them runs: an error
/// names the statement it is in, or none when the list as a whole does not fit. `complete`
/// is false when a later statement did not parse; then parameters only it would use are not
/// reported as unused (the parse error is, after the statements before it ran).
pub fn bind(
    statements: &mut [KalamStatement],
    params: &[Json],
    complete: bool,
) -> std::result::Result<(), (KalamError, Option<usize>)> {
    if params.len() > MAX_PARAMS {
        return Err((
            KalamError::InvalidRequest(format!(
                "a request holds at most {MAX_PARAMS} params, this one {}",
                params.len()
            )),
            None,
        ));
    }
    let mut used = vec![false; params.len()];
    for (index, statement) in statements.iter_mut().enumerate() {
        let KalamStatement::Sql(sql) = statement else {
            // KalamDB's own statements (DDL, FLUSH, ...) take no parameters; a `$1` in one
            // is reported by its own validation.
            continue;
        };
        let bound = visit_expressions_mut(sql.as_mut(), |expr| {
            let SqlExpr::Value(v) = expr else {
                return ControlFlow::Continue(());
            };
            let SqlValue::Placeholder(name) = &v.value else {
                return ControlFlow::Continue(());
            };
            match position(name, params.len()) {
                Ok(i) => {
                    used[i] = true;
                    *expr = literal(&params[i]);
                    ControlFlow::Continue(())
                }
                Err(e) => ControlFlow::Break(e),
            }
        });
        if let ControlFlow::Break(e) = bound {
            return Err((e, Some(index)));
        }
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        if complete {
            return Err((
                KalamError::InvalidRequest(format!(
                    "params has {} value{} but the SQL does not use ${}: params must hold one \
                     value per $n of the request's SELECT, INSERT, UPDATE and DELETE \
                     statements (KalamDB's own statements, such as DDL, take none)",
                    params.len(),
                    if params.len() == 1 { "" } else { "s" },
                    unused + 1
                )),
                None,
            ));
        }
    }
    Ok(())
}

/// The 0-based index in params of the placeholder `name` (`$1` is 0).
fn position(name: &str, count: usize) -> Result<usize> {
    let number = name
        .strip_prefix('$')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            KalamError::InvalidRequest(format!(
                "'{}' is not a parameter KalamDB knows: write $1, $2, ... and send the values \
                 in the request's params",
                clip(name)
            ))
        })?;
    match number.parse::<usize>() {
        Ok(n) if (1..=count).contains(&n) => Ok(n - 1),
        _ if count == 0 => Err(KalamError::InvalidRequest(format!(
            "the SQL uses {} but the request has no params",
            clip(name)
        ))),
        _ => Err(KalamError::InvalidRequest(format!(
            "the SQL uses {} but params has {} value{} ($1 to ${})",
            clip(name),
            count,
            if count == 1 { "" } else { "s" },
            count
        ))),
    }
}

/// A JSON value as the SQL literal it stands for. Arrays and objects become their JSON text,
/// which a JSON column stores as the value and a TEXT column as the text.
fn literal(value: &Json) -> SqlExpr {
    let value = match value {
        Json::Null => SqlValue::Null,
        Json::Bool(b) => SqlValue::Boolean(*b),
        Json::Number(n) => {
            let text = n.to_string();
            // SQL has no negative literals: `-5` is minus applied to 5, as the parser makes it.
            return match text.strip_prefix('-') {
                Some(magnitude) => SqlExpr::UnaryOp {
                    op: UnaryOperator::Minus,
                    expr: Box::new(SqlExpr::value(SqlValue::Number(magnitude.into(), false))),
                },
                None => SqlExpr::value(SqlValue::Number(text, false)),
            };
        }
        Json::String(s) => SqlValue::SingleQuotedString(s.clone()),
        Json::Array(_) | Json::Object(_) => SqlValue::SingleQuotedString(value.to_string()),
    };
    SqlExpr::value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bound(sql: &str, params: &[Json]) -> std::result::Result<Vec<String>, String> {
        let (mut statements, error) = parse_statements(sql);
        assert!(error.is_none(), "{sql}: {error:?}");
        bind(&mut statements, params, true).map_err(|(e, i)| format!("{i:?}: {e}"))?;
        Ok(statements
            .iter()
            .map(|s| match s {
                KalamStatement::Sql(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .collect())
    }

    #[test]
    fn values_are_bound_as_literals_never_as_text() {
        let got = bound(
            "INSERT INTO a.t (s, n, f, b, z, j, neg) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                json!("x'); DROP TABLE a.t; --"),
                json!(42),
                json!(1.5),
                json!(true),
                json!(null),
                json!({"k": [1, 2]}),
                json!(-7),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "INSERT INTO a.t (s, n, f, b, z, j, neg) VALUES ('x''); DROP TABLE a.t; --', 42, \
              1.5, true, NULL, '{\"k\":[1,2]}', -7)"
            ]
        );
        // The same parameter may appear more than once, in any statement of the request.
        let got = bound(
            "SELECT * FROM a.t WHERE s = $1 OR n = $2 LIMIT $2; DELETE FROM a.t WHERE s = $1",
            &[json!("a"), json!(3)],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "SELECT * FROM a.t WHERE s = 'a' OR n = 3 LIMIT 3",
                "DELETE FROM a.t WHERE s = 'a'"
            ]
        );
    }

    #[test]
    fn params_that_do_not_fit_the_sql_are_refused_naming_the_statement() {
        let cases: &[(&str, Vec<Json>, &str)] = &[
            (
                "SELECT $1",
                vec![],
                "Some(0): the SQL uses $1 but the request has no params",
            ),
            (
                "SELECT 1; SELECT $3",
                vec![json!(1), json!(2)],
                "Some(1): the SQL uses $3 but params has 2 values ($1 to $2)",
            ),
            (
                "SELECT $1",
                vec![json!(1), json!(2)],
                "None: params has 2 values but the SQL does not use $2",
            ),
            (
                "SELECT $2",
                vec![json!(1), json!(2)],
                "None: params has 2 values but the SQL does not use $1",
            ),
            (
                "SELECT ?",
                vec![json!(1)],
                "Some(0): '?' is not a parameter KalamDB knows",
            ),
            (
                "SELECT $0",
                vec![json!(1)],
                "Some(0): the SQL uses $0 but params has 1 value ($1 to $1)",
            ),
        ];
        for (sql, params, expected) in cases {
            let err = bound(sql, params).unwrap_err();
            assert!(err.starts_with(expected), "{sql} with {params:?}: {err}");
        }
        let too_many = vec![json!(0); MAX_PARAMS + 1];
        assert!(bound("SELECT 1", &too_many)
            .unwrap_err()
            .contains("at most 65535 params"));
    }

    #[test]
    fn ddl_takes_no_parameters() {
        let err = bound("CREATE NAMESPACE app; SELECT 1", &[json!("x")]).unwrap_err();
        assert!(
            err.starts_with("None: params has 1 value but the SQL does not use $1")
                && err.contains("DDL, take none"),
            "{err}"
        );
    }

    #[test]
    fn texts_without_placeholder_characters_need_no_walk() {
        assert!(!may_hold_placeholders(
            "INSERT INTO a.t (s, n) VALUES ('message 1', -2.5)"
        ));
        for sql in ["SELECT $1", "SELECT ?"] {
            assert!(may_hold_placeholders(sql), "{sql}");
            let (mut statements, _) = parse_statements(sql);
            assert!(bind(&mut statements, &[], true).is_err(), "{sql}");
        }
        assert!(may_hold_placeholders("SELECT :name"));
        assert!(may_hold_placeholders("SELECT @name"));
    }

    #[test]
    fn a_template_is_parsed_once_and_the_cache_stays_bounded() {
        let prepared = PreparedStatements::new().unwrap();
        let sql = "INSERT INTO a.t (s) VALUES ($1)";
        let (first, _) = prepared.parse(sql);
        let (mut second, _) = prepared.parse(sql);
        assert_eq!(first, second);
        let hits = prepared.lookups.with_label_values(&["hit"]).get();
        assert_eq!(hits, 1, "the second parse of the text is a hit");
        // Binding the copy leaves the cached tree with its placeholders.
        bind(&mut second, &[json!("v")], true).unwrap();
        let (third, _) = prepared.parse(sql);
        assert_eq!(third, first);
        assert_ne!(third, second);

        // Texts that do not parse are not kept; the error is the parser's.
        let (_, error) = prepared.parse("SELEC $1");
        assert!(error.is_some());
        assert_eq!(prepared.len(), 1);

        for i in 0..CACHE_ENTRIES + 50 {
            prepared.parse(&format!("SELECT $1 + {i}"));
        }
        assert_eq!(prepared.len(), CACHE_ENTRIES);
        let long = format!("SELECT $1 -- {}", "x".repeat(CACHE_MAX_SQL_BYTES));
        prepared.parse(&long);
        assert_eq!(prepared.len(), CACHE_ENTRIES, "long texts are not kept");
    }
}
