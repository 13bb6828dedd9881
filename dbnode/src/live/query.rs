//! Validation and compilation of a live query: exactly `SELECT <columns> FROM <table>
//! [WHERE <predicate>]` over one USER, SHARED or STREAM table. The predicate is compiled
//! once, to a DataFusion physical expression over the table's full schema (user columns and
//! system columns), and evaluated on every change batch afterwards.
//!
//! A subscription keeps the schema version it was compiled against: after ADD COLUMN a
//! `SELECT *` subscription goes on with the columns it had. Which columns it selects and
//! filters on is kept by column id, so ALTER TABLE can refuse to drop (or retype) them.

use std::sync::Arc;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, ExprWithAlias, GroupByExpr, SelectItem, SetExpr, Statement, TableFactor,
    WildcardAdditionalOptions,
};

use crate::catalog::TableDef;
use crate::engine::{Engine, TableRuntime};
use crate::error::{clip, KalamError, Result};
use crate::ids::SYSTEM_NAMESPACE;
use crate::sql::literals::exact_literals;
use crate::sql::parser::{parse_sql_statements, table_id_from_object_name};

/// A subscription's query, ready to evaluate on change batches.
#[derive(Debug)]
pub struct CompiledQuery {
    pub runtime: Arc<TableRuntime>,
    /// Indexes into the table's full schema of the columns each row carries, in order.
    pub projection: Vec<usize>,
    /// Names of those columns, as rows show them.
    pub column_names: Vec<String>,
    /// `None`: every row matches.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// The compiled predicate as text, with the values of `NOW()` and the like fixed at
    /// subscribe time: equal texts (of one user, version and column list) evaluate alike, so
    /// the dispatcher renders a commit once for all of them.
    pub predicate_text: String,
    /// Ids of the user columns the subscription selects ...
    pub selected: Vec<u32>,
    /// ... and of those its WHERE reads.
    pub filtered: Vec<u32>,
    /// The WHERE clause as the client wrote it, for the `initial_data` query ...
    pub where_expr: Option<SqlExpr>,
    /// ... which names the table by this alias (the table name when none was given).
    pub alias: String,
    /// A `column = literal` the predicate requires (a conjunct of its top-level AND): a
    /// commit in which no row has that value, before or after, cannot match, so the
    /// dispatcher skips the predicate (a chat's 1,000 conversations filtered by id cost one
    /// lookup per commit, not 1,000 evaluations).
    pub guard: Option<Guard>,
}

/// A value a predicate requires of a column, comparable without evaluating the predicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuardValue {
    Text(String),
    Int(i64),
}

/// `column = value`, required by a subscription's predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub column: String,
    pub value: GuardValue,
}

/// The first `column = literal` conjunct of `expr` whose types need no cast (text to text,
/// integer to integer), since only those compare exactly as the stored values do.
fn equality_guard(expr: &Arc<dyn PhysicalExpr>) -> Option<Guard> {
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    match binary.op() {
        Operator::And => equality_guard(binary.left()).or_else(|| equality_guard(binary.right())),
        Operator::Eq => column_literal(binary.left(), binary.right())
            .or_else(|| column_literal(binary.right(), binary.left())),
        _ => None,
    }
}

fn column_literal(
    column: &Arc<dyn PhysicalExpr>,
    literal: &Arc<dyn PhysicalExpr>,
) -> Option<Guard> {
    let column = column.downcast_ref::<Column>()?;
    let literal = literal.downcast_ref::<Literal>()?;
    let value = match literal.value() {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => GuardValue::Text(s.clone()),
        ScalarValue::Int64(Some(i)) => GuardValue::Int(*i),
        ScalarValue::Int32(Some(i)) => GuardValue::Int(i64::from(*i)),
        ScalarValue::Int16(Some(i)) => GuardValue::Int(i64::from(*i)),
        _ => return None,
    };
    Some(Guard {
        column: column.name().to_string(),
        value,
    })
}

fn invalid(msg: impl Into<String>) -> KalamError {
    KalamError::InvalidQuery(msg.into())
}

/// What ALTER TABLE asks of a column's use by live queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnUse {
    /// Selected or filtered on (DROP COLUMN).
    Any,
    /// Filtered on (MODIFY COLUMN: the compiled predicate expects the old type).
    Filter,
}

impl CompiledQuery {
    pub fn uses(&self, column_id: u32, usage: ColumnUse) -> bool {
        self.filtered.contains(&column_id)
            || (usage == ColumnUse::Any && self.selected.contains(&column_id))
    }

    /// Whether the query still works on `current`, a definition newer than the one it was
    /// compiled against (an ALTER committed while it was being registered): every column it
    /// uses is still there, and the ones its WHERE reads still have their type.
    pub fn check_against(&self, current: &TableDef) -> Result<()> {
        let compiled = self.runtime.def();
        for id in self.selected.iter().chain(&self.filtered) {
            let Some(was) = compiled.columns.iter().find(|c| c.id == *id) else {
                continue;
            };
            match current.columns.iter().find(|c| c.id == *id) {
                None => {
                    return Err(invalid(format!(
                        "column '{}' was dropped from {} while subscribing",
                        was.name,
                        current.id()
                    )))
                }
                Some(now) if self.filtered.contains(id) && now.data_type != was.data_type => {
                    return Err(invalid(format!(
                        "column '{}' of {} changed type while subscribing; subscribe again",
                        was.name,
                        current.id()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The ids of the user columns among indexes into a table's full schema (user columns come
/// first, in order; system columns have no id).
fn column_ids(def: &TableDef, indexes: impl Iterator<Item = usize>) -> Vec<u32> {
    let mut ids: Vec<u32> = indexes
        .filter_map(|i| def.columns.get(i).map(|c| c.id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Parses and checks `sql`, resolves its table, and compiles its predicate with `state`'s
/// functions (`NOW()`, `CURRENT_USER()` are the subscriber's, fixed at subscribe time).
pub fn compile(engine: &Engine, state: &SessionState, sql: &str) -> Result<CompiledQuery> {
    const SHAPE: &str =
        "a live query is SELECT <columns> FROM <namespace.table> [WHERE <predicate>]";
    let mut statements = parse_sql_statements(sql).map_err(|e| match e {
        KalamError::SqlParse(m) => invalid(format!("{SHAPE}: {}", clip(&m))),
        other => other,
    })?;
    if statements.len() != 1 {
        return Err(invalid(format!(
            "{SHAPE}; got {} statements",
            statements.len()
        )));
    }
    let Some(Statement::Query(query)) = statements.pop() else {
        return Err(invalid(SHAPE));
    };
    if query.with.is_some() {
        return Err(invalid("a live query cannot use WITH"));
    }
    if query.order_by.is_some() {
        return Err(invalid(
            "a live query cannot use ORDER BY (changes arrive in commit order)",
        ));
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(invalid(
            "a live query cannot use LIMIT; use options.last_rows for initial rows",
        ));
    }
    let SetExpr::Select(select) = *query.body else {
        return Err(invalid(format!(
            "{SHAPE}; UNION, VALUES and nested queries are not supported"
        )));
    };
    if select.distinct.is_some() {
        return Err(invalid("a live query cannot use DISTINCT"));
    }
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(e, _) => !e.is_empty(),
    };
    if grouped || select.having.is_some() {
        return Err(invalid("a live query cannot aggregate (GROUP BY, HAVING)"));
    }
    if !select.named_window.is_empty() || select.qualify.is_some() || select.into.is_some() {
        return Err(invalid(SHAPE));
    }
    let [from] = select.from.as_slice() else {
        return Err(invalid("a live query reads exactly one table (no joins)"));
    };
    if !from.joins.is_empty() {
        return Err(invalid("a live query reads exactly one table (no joins)"));
    }
    let TableFactor::Table {
        name,
        args: None,
        alias,
        ..
    } = &from.relation
    else {
        return Err(invalid("a live query reads one plain table"));
    };
    let id = table_id_from_object_name(name)?;
    if id.namespace.as_str() == SYSTEM_NAMESPACE {
        return Err(invalid("system tables cannot be subscribed to"));
    }
    if engine.catalog.namespace(&id.namespace).is_none() {
        return Err(KalamError::NamespaceNotFound(id.namespace.to_string()));
    }
    let runtime = engine
        .table(&id)
        .ok_or_else(|| KalamError::TableNotFound(id.to_string()))?;
    let schema = runtime.schema.clone();
    let qualifier = alias
        .as_ref()
        .map(|a| a.name.value.clone())
        .unwrap_or_else(|| id.table.to_string());
    let df_schema = DFSchema::try_from_qualified_schema(qualifier.as_str(), &schema)?;

    let mut projection = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(WildcardAdditionalOptions {
                opt_ilike: None,
                opt_exclude: None,
                opt_except: None,
                opt_replace: None,
                opt_rename: None,
                ..
            }) => projection.extend(0..schema.fields().len()),
            SelectItem::UnnamedExpr(expr) => {
                let name = match expr {
                    datafusion::sql::sqlparser::ast::Expr::Identifier(i) => i.value.clone(),
                    datafusion::sql::sqlparser::ast::Expr::CompoundIdentifier(parts)
                        if parts.len() == 2 && parts[0].value == qualifier =>
                    {
                        parts[1].value.clone()
                    }
                    other => {
                        return Err(invalid(format!(
                            "a live query selects plain columns or *; '{}' is not one",
                            clip(&other.to_string())
                        )))
                    }
                };
                let idx = schema.index_of(&name).map_err(|_| {
                    invalid(format!("column '{}' does not exist in {id}", clip(&name)))
                })?;
                projection.push(idx);
            }
            other => {
                return Err(invalid(format!(
                    "a live query selects plain columns or *; '{}' is not one",
                    clip(&other.to_string())
                )))
            }
        }
    }
    if projection.is_empty() {
        return Err(invalid("a live query selects at least one column"));
    }
    let column_names = projection
        .iter()
        .map(|i| schema.field(*i).name().clone())
        .collect();

    let (predicate, where_expr) = match &select.selection {
        None => (None, None),
        Some(expr) => {
            let mut exact = expr.clone();
            exact_literals(&mut exact);
            // From the tree, not its text: sqlparser prints some string literals in a form
            // that parses back as another value.
            let exact = ExprWithAlias {
                expr: exact,
                alias: None,
            };
            let logical = state
                .create_logical_expr_from_sql_expr(exact, &df_schema)
                .map_err(|e| invalid(format!("WHERE: {}", KalamError::from(e))))?;
            let physical = state
                .create_physical_expr(logical, &df_schema)
                .map_err(|e| invalid(format!("WHERE: {}", KalamError::from(e))))?;
            let data_type = physical.data_type(&schema)?;
            if data_type != datafusion::arrow::datatypes::DataType::Boolean {
                return Err(invalid(format!(
                    "WHERE must be a boolean condition, not {data_type}"
                )));
            }
            (Some(physical), Some(expr.clone()))
        }
    };
    let def = runtime.def();
    let selected = column_ids(def, projection.iter().copied());
    let filtered = match &predicate {
        Some(p) => column_ids(
            def,
            datafusion::physical_expr::utils::collect_columns(p)
                .iter()
                .map(|c| c.index()),
        ),
        None => Vec::new(),
    };
    let predicate_text = predicate
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let guard = predicate.as_ref().and_then(equality_guard);
    Ok(CompiledQuery {
        guard,
        selected,
        filtered,
        runtime,
        projection,
        column_names,
        predicate,
        predicate_text,
        where_expr,
        alias: qualifier,
    })
}
