//! KalamDB's SQL dialect: its own statements (namespaces, USER/SHARED/STREAM tables, ALTER
//! TABLE, SHOW, DESCRIBE) parsed on top of `sqlparser`, and everything else handed to
//! `sqlparser` as is.
//!
//! A request's text is parsed one statement at a time, so that when statement k does not
//! parse, statements before it still run and the error names k (API.md section 3).

use datafusion::sql::sqlparser::ast::{
    ColumnDef as SqlColumnDef, DataType as SqlDataType, Expr as SqlExpr, ObjectName,
    Statement as SqlStatement, TableConstraint, Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::auth::parse_duration;
use crate::catalog::{FlushPolicy, LocationSpec, TableKind};
use crate::error::{clip, KalamError, Result};
use crate::ids::{NamespaceId, TableId, TableName};

/// Options as written in `WITH OPTIONS (...)` / `WITH (...)`, values as JSON.
pub type OptionList = serde_json::Map<String, serde_json::Value>;

/// How deep an expression may nest before the parser refuses it (instead of overflowing
/// the stack).
const RECURSION_LIMIT: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum KalamStatement {
    CreateNamespace {
        name: NamespaceId,
        if_not_exists: bool,
        options: OptionList,
    },
    AlterNamespace {
        name: NamespaceId,
        options: OptionList,
    },
    DropNamespace {
        name: NamespaceId,
        if_exists: bool,
    },
    ShowNamespaces,
    CreateTable(Box<CreateTable>),
    /// `ALTER TABLE ns.t <change>`: one change per statement.
    AlterTable {
        table: TableId,
        change: AlterChange,
    },
    DropTable {
        table: TableId,
        kind: Option<TableKind>,
        if_exists: bool,
    },
    ShowTables {
        namespace: Option<NamespaceId>,
    },
    /// `DESCRIBE [TABLE] t`, or with `HISTORY` its schema versions.
    DescribeTable {
        table: TableId,
        history: bool,
    },
    FlushTable {
        table: TableId,
    },
    ShowTableStats {
        table: TableId,
    },
    /// `KILL LIVE QUERY '<live_id>'`.
    KillLiveQuery {
        live_id: String,
    },
    /// `BACKUP NAMESPACE ns TO '<url>' [WITH (credentials_ref = '<name>')]`.
    BackupNamespace {
        name: NamespaceId,
        url: String,
        options: OptionList,
    },
    /// `RESTORE NAMESPACE ns FROM '<url>' [WITH (credentials_ref = '<name>')]`.
    RestoreNamespace {
        name: NamespaceId,
        url: String,
        options: OptionList,
    },
    /// `SHOW BACKUP '<url>' [WITH (credentials_ref = '<name>')]`.
    ShowBackup {
        url: String,
        options: OptionList,
    },
    /// Anything else: SELECT, INSERT, UPDATE, DELETE, EXPLAIN, ...
    Sql(Box<SqlStatement>),
}

impl KalamStatement {
    /// A low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            KalamStatement::CreateNamespace { .. } => "create_namespace",
            KalamStatement::AlterNamespace { .. } => "alter_namespace",
            KalamStatement::DropNamespace { .. } => "drop_namespace",
            KalamStatement::ShowNamespaces => "show_namespaces",
            KalamStatement::CreateTable(_) => "create_table",
            KalamStatement::AlterTable { .. } => "alter_table",
            KalamStatement::DropTable { .. } => "drop_table",
            KalamStatement::ShowTables { .. } => "show_tables",
            KalamStatement::DescribeTable { .. } => "describe_table",
            KalamStatement::FlushTable { .. } => "flush_table",
            KalamStatement::ShowTableStats { .. } => "show_table_stats",
            KalamStatement::KillLiveQuery { .. } => "kill_live_query",
            KalamStatement::BackupNamespace { .. } => "backup_namespace",
            KalamStatement::RestoreNamespace { .. } => "restore_namespace",
            KalamStatement::ShowBackup { .. } => "show_backup",
            KalamStatement::Sql(s) => match s.as_ref() {
                SqlStatement::Query(_) => "select",
                SqlStatement::Insert(_) => "insert",
                SqlStatement::Update(_) => "update",
                SqlStatement::Delete(_) => "delete",
                SqlStatement::Explain { .. } => "explain",
                _ => "other",
            },
        }
    }
}

/// `CREATE USER|SHARED|STREAM TABLE`, as written; validated into a `TableDef` by `sql::ddl`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub table: TableId,
    pub kind: TableKind,
    pub if_not_exists: bool,
    pub columns: Vec<SqlColumnDef>,
    pub constraints: Vec<TableConstraint>,
    pub location: LocationSpec,
    pub flush_policy: Option<FlushPolicy>,
    pub with: OptionList,
}

/// The change of an `ALTER TABLE`, as written; validated by `sql::ddl`.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterChange {
    /// `ADD [COLUMN] [IF NOT EXISTS] c TYPE [NOT NULL] [DEFAULT expr]`.
    AddColumn {
        column: SqlColumnDef,
        if_not_exists: bool,
    },
    /// `DROP [COLUMN] [IF EXISTS] c`.
    DropColumn { name: String, if_exists: bool },
    /// `MODIFY [COLUMN] c TYPE`, or PostgreSQL's `ALTER [COLUMN] c [SET DATA] TYPE t`.
    ModifyColumn {
        name: String,
        data_type: SqlDataType,
    },
}

/// A parser over `sql` with the node's rules: `CURRENT_USER()` accepted, the operator count
/// and the nesting depth bounded. Every SQL text a client sends goes through it.
fn node_parser(sql: &str) -> Result<Parser<'static>> {
    static DIALECT: GenericDialect = GenericDialect {};
    let tokens = Tokenizer::new(&DIALECT, sql)
        .tokenize_with_location()
        .map(accept_empty_parens_after_session_functions)
        .map_err(|e| KalamError::SqlParse(e.to_string()))?;
    check_operator_count(&tokens)?;
    check_operator_chains(&tokens)?;
    check_query_blocks(&tokens)?;
    check_list_clauses(&tokens)?;
    Ok(Parser::new(&DIALECT)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens))
}

/// Plain SQL statements (no KalamDB extensions), parsed under the same rules as
/// [`parse_statements`]: the live-query compiler uses it.
pub fn parse_sql_statements(sql: &str) -> Result<Vec<SqlStatement>> {
    node_parser(sql)?
        .parse_statements()
        .map_err(|e| KalamError::SqlParse(e.to_string()))
}

/// One expression's SQL text as stored in the catalog (a column's DEFAULT), or `None` when
/// it does not parse: the planner, which reads the same text, reports why.
pub fn parse_expr_text(text: &str) -> Option<SqlExpr> {
    static DIALECT: GenericDialect = GenericDialect {};
    Parser::new(&DIALECT)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// Parses statements until the end or the first error. The statements parsed before the
/// error run; the error is reported with the index that follows them.
pub fn parse_statements(sql: &str) -> (Vec<KalamStatement>, Option<KalamError>) {
    let mut parser = match node_parser(sql) {
        Ok(p) => p,
        Err(e) => return (statements_before_bad_token(sql), Some(e)),
    };
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        match parse_one(&mut parser) {
            Ok(stmt) => out.push(stmt),
            Err(e) => return (out, Some(e)),
        }
        let next = parser.peek_token().token;
        if next != Token::SemiColon && next != Token::EOF {
            // What was parsed is only the start of a malformed statement: it must not run.
            out.pop();
            return (
                out,
                Some(KalamError::SqlParse(format!(
                    "expected ';' or the end of the statement, found '{}'",
                    clip(&next.to_string())
                ))),
            );
        }
    }
    if out.is_empty() {
        return (
            out,
            Some(KalamError::InvalidRequest(
                "the request contains no SQL statement".into(),
            )),
        );
    }
    (out, None)
}

/// The statements a request holds before the one its tokenizer error is in (a string left
/// open, say), parsed alone: they run, and the error names the statement after them, as a
/// parse error does. None when the text does not tokenize up to there either.
fn statements_before_bad_token(sql: &str) -> Vec<KalamStatement> {
    static DIALECT: GenericDialect = GenericDialect {};
    let Err(error) = Tokenizer::new(&DIALECT, sql).tokenize_with_location() else {
        return Vec::new();
    };
    let Some(at) = byte_offset(sql, error.location) else {
        return Vec::new();
    };
    let Ok(before) = Tokenizer::new(&DIALECT, &sql[..at]).tokenize_with_location() else {
        return Vec::new();
    };
    let Some(end) = before
        .iter()
        .rev()
        .find(|t| t.token == Token::SemiColon)
        .and_then(|t| byte_offset(sql, t.span.end))
    else {
        return Vec::new();
    };
    match parse_statements(&sql[..end]) {
        (statements, None) => statements,
        (_, Some(_)) => Vec::new(),
    }
}

/// The byte offset of a tokenizer location (1-based line and column, columns in chars).
fn byte_offset(sql: &str, at: Location) -> Option<usize> {
    let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let start: usize = sql.split_inclusive('\n').take(line).map(str::len).sum();
    let rest = sql.get(start..)?;
    match rest.char_indices().nth(column) {
        Some((i, _)) => Some(start + i),
        None if rest.chars().count() == column => Some(sql.len()),
        None => None,
    }
}

/// Most operators one request may hold. `a OR b OR ...` parses in a loop, not by recursion,
/// so the parser's recursion limit does not bound it, but everything after the parser
/// (planning, printing, dropping the tree) recurses once per operator.
const MAX_OPERATORS: usize = 50_000;

fn check_operator_count(tokens: &[TokenWithSpan]) -> Result<()> {
    let operators = tokens
        .iter()
        .filter(|t| match &t.token {
            Token::Word(w) => {
                w.quote_style.is_none()
                    && ["AND", "OR", "NOT"]
                        .iter()
                        .any(|k| w.value.eq_ignore_ascii_case(k))
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::StringConcat
            | Token::Caret
            | Token::Ampersand
            | Token::Pipe => true,
            _ => false,
        })
        .count();
    if operators > MAX_OPERATORS {
        return Err(KalamError::SqlParse(format!(
            "the request holds {operators} operators; at most {MAX_OPERATORS} are allowed"
        )));
    }
    Ok(())
}

/// Most operators one expression may chain, summed over the brackets it sits in. The
/// parser builds `a + b + c ...`, `x::T::T ...` or `x IS NULL IS NULL ...` in a loop, one
/// tree level per operator, so its recursion limit does not bound their depth; planning,
/// printing and dropping the tree recurse once per level (a chain of 100,000 casts
/// overflowed the node's 64 MiB stacks and aborted it).
const MAX_CHAIN_DEPTH: usize = 2_000;

/// Most work the chains of one request may cost, as the sum of their lengths squared:
/// DataFusion's analyzer and simplifier visit a chain's subtree again at every level of it,
/// so a chain costs the square of its length (1,000 `+` took 0.96 s, 2,000 took 4 s). One
/// chain of 1,000 operators, or four of 500, fit; `id IN (...)` is a list, not a chain.
const MAX_CHAIN_WORK: usize = MAX_CHAIN_LENGTH * MAX_CHAIN_LENGTH;
const MAX_CHAIN_LENGTH: usize = 1_000;

/// Bounds operator chains from the tokens, before anything is parsed: a chain is what
/// follows one `,` (or bracket) up to the next at the same bracket level, and every
/// operator in it (symbols, `.`, `::`, subscripts and the operator keywords) is a link.
/// Identifiers and literals are not, so the count does not depend on names.
fn check_operator_chains(tokens: &[TokenWithSpan]) -> Result<()> {
    const OPERATOR_WORDS: [&str; 20] = [
        "AND",
        "OR",
        "NOT",
        "XOR",
        "IS",
        "IN",
        "LIKE",
        "ILIKE",
        "RLIKE",
        "REGEXP",
        "SIMILAR",
        "BETWEEN",
        "COLLATE",
        "AT",
        "OVERLAPS",
        "DIV",
        "ESCAPE",
        "UNION",
        "EXCEPT",
        "INTERSECT",
    ];
    // The chain open at each bracket level; `depth` is their sum.
    let mut open: Vec<usize> = vec![0];
    let (mut depth, mut work) = (0usize, 0usize);
    fn close(chain: &mut usize, depth: &mut usize, work: &mut usize) -> Result<()> {
        *work = work.saturating_add(chain.saturating_mul(*chain));
        *depth = depth.saturating_sub(*chain);
        *chain = 0;
        if *work > MAX_CHAIN_WORK {
            return Err(KalamError::SqlParse(format!(
                "the request chains too many operators to plan in time (at most one chain of \
                 {MAX_CHAIN_LENGTH} operators, or several shorter ones); write a long OR of \
                 equalities as IN (...)"
            )));
        }
        Ok(())
    }
    for t in tokens {
        let link = match &t.token {
            Token::Whitespace(_)
            | Token::EOF
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::Char(_) => false,
            Token::Word(w) => {
                w.quote_style.is_none()
                    && OPERATOR_WORDS
                        .iter()
                        .any(|k| w.value.eq_ignore_ascii_case(k))
            }
            Token::Comma | Token::SemiColon => {
                if let Some(chain) = open.last_mut() {
                    close(chain, &mut depth, &mut work)?;
                }
                false
            }
            Token::LParen | Token::LBrace => {
                open.push(0);
                false
            }
            Token::LBracket => {
                open.push(0);
                // A subscript is a level of the tree it follows.
                if let Some(outer) = open.iter_mut().rev().nth(1) {
                    *outer += 1;
                    depth += 1;
                }
                false
            }
            Token::RParen | Token::RBrace | Token::RBracket => {
                if open.len() > 1 {
                    if let Some(mut chain) = open.pop() {
                        close(&mut chain, &mut depth, &mut work)?;
                    }
                }
                false
            }
            // Every other token is an operator symbol, `.` or `::`, or a string literal.
            other => !is_string_literal(other),
        };
        if link {
            if let Some(chain) = open.last_mut() {
                *chain += 1;
                depth += 1;
            }
        }
        if depth > MAX_CHAIN_DEPTH {
            return Err(KalamError::SqlParse(format!(
                "an expression chains more than {MAX_CHAIN_DEPTH} operators; at most \
                 {MAX_CHAIN_DEPTH} are allowed"
            )));
        }
    }
    while let Some(mut chain) = open.pop() {
        close(&mut chain, &mut depth, &mut work)?;
    }
    Ok(())
}

/// Most SELECTs one statement may hold (subqueries, CTEs and the parts of a UNION
/// included): DataFusion plans a chain of CTEs, each reading the one before, in time that
/// grows faster than its length (1,000 took 0.87 s, 2,000 took 5.7 s).
const MAX_SELECTS: usize = 1_000;

/// Most window functions (`OVER`) one statement may hold: DataFusion plans n windows of
/// different orderings in time that grows with about n^3 (100 took 0.14 s, 200 0.65 s,
/// 300 1.9 s).
const MAX_WINDOWS: usize = 200;

/// Most tables one FROM clause may join, as in MySQL: planning a join of n tables grows
/// with about n cubed here (61 took 0.1 s, 100 took 0.56 s, 200 took 4.9 s).
const MAX_JOINED_TABLES: usize = 61;

/// Bounds the query blocks of each statement from the tokens, before anything is parsed:
/// its SELECTs, and the tables of each FROM clause (its items, `,`-separated, and JOINs).
fn check_query_blocks(tokens: &[TokenWithSpan]) -> Result<()> {
    // Per bracket level: the tables of the FROM clause open at it, if one is.
    let mut from: Vec<Option<usize>> = vec![None];
    let (mut selects, mut windows) = (0usize, 0usize);
    // The keyword before this token, if it was one (`IS [NOT] DISTINCT FROM` is no FROM
    // clause).
    let mut after_distinct = false;
    for t in tokens {
        if matches!(t.token, Token::Whitespace(_)) {
            continue;
        }
        let was_after_distinct = std::mem::replace(
            &mut after_distinct,
            matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::DISTINCT),
        );
        let joined = match &t.token {
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::SELECT => {
                    selects += 1;
                    if selects > MAX_SELECTS {
                        return Err(KalamError::SqlParse(format!(
                            "a statement holds more than {MAX_SELECTS} SELECTs (subqueries, \
                             CTEs and UNION parts included); at most {MAX_SELECTS} are allowed"
                        )));
                    }
                    false
                }
                Keyword::OVER => {
                    windows += 1;
                    if windows > MAX_WINDOWS {
                        return Err(KalamError::SqlParse(format!(
                            "a statement holds more than {MAX_WINDOWS} window functions (OVER); \
                             at most {MAX_WINDOWS} are allowed"
                        )));
                    }
                    false
                }
                Keyword::FROM if !was_after_distinct => {
                    if let Some(level) = from.last_mut() {
                        *level = Some(1);
                    }
                    false
                }
                Keyword::JOIN => true,
                Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH
                | Keyword::WINDOW
                | Keyword::QUALIFY
                | Keyword::UNION
                | Keyword::EXCEPT
                | Keyword::INTERSECT
                | Keyword::SET
                | Keyword::RETURNING => {
                    if let Some(level) = from.last_mut() {
                        *level = None;
                    }
                    false
                }
                _ => false,
            },
            Token::Comma => true,
            Token::LParen | Token::LBracket | Token::LBrace => {
                from.push(None);
                false
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if from.len() > 1 {
                    from.pop();
                }
                false
            }
            Token::SemiColon => {
                (selects, windows) = (0, 0);
                from.truncate(1);
                if let Some(level) = from.last_mut() {
                    *level = None;
                }
                false
            }
            _ => false,
        };
        if joined {
            if let Some(Some(tables)) = from.last_mut() {
                *tables += 1;
                if *tables > MAX_JOINED_TABLES {
                    return Err(KalamError::SqlParse(format!(
                        "a FROM clause joins more than {MAX_JOINED_TABLES} tables; at most \
                         {MAX_JOINED_TABLES} are allowed"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Most items one SELECT list may hold, PostgreSQL's own limit ("target lists can have at
/// most 1664 entries"): DataFusion plans a list in time that grows with its square (10,000
/// expressions took 11 s, 1,664 0.5 s). The lists of one request (the parts of a UNION
/// among them) share the square of it as a budget of their squared lengths.
const MAX_SELECT_ITEMS: usize = 1_664;

/// Most work the ORDER BY and GROUP BY lists of one request may cost, as the sum of their
/// lengths squared: planning a list of n expressions grows with about n^2 here (ORDER BY
/// 1,000 expressions took 0.89 s and 3,000 took 7.9 s; GROUP BY 0.36 s and 3.2 s).
const MAX_KEY_LIST_WORK: usize = 1_000 * 1_000;

/// Most work the PARTITION BY lists of one request may cost, as the sum of their lengths
/// cubed: DataFusion's window planning compares every key with every other for each
/// ordering it considers (60 keys took 0.16 s, 100 took 0.56 s, 300 took 12 s).
const MAX_PARTITION_WORK: usize = 100 * 100 * 100;

/// A clause whose items [`check_list_clauses`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListClause {
    Select,
    /// ORDER BY, GROUP BY (with the keys of its ROLLUP, CUBE and GROUPING SETS), or
    /// `DISTINCT ON (...)`.
    Keys,
    PartitionBy,
}

/// What [`check_list_clauses`] counts at one bracket level.
#[derive(Debug, Clone, Copy)]
enum ListLevel {
    /// Nothing: an argument list, a VALUES row, an IN list, a subquery before its SELECT.
    Outside,
    /// The list open at this level and its items so far.
    List(ListClause, usize),
    /// The brackets of `ROLLUP(...)`, `CUBE(...)` and `GROUPING SETS (...)`: their items
    /// are items of the list the brackets sit in.
    Within,
}

/// The request's budgets of [`check_list_clauses`].
#[derive(Debug, Default)]
struct ListWork {
    select: usize,
    keys: usize,
    partition: usize,
}

impl ListWork {
    fn close(&mut self, level: ListLevel) -> Result<()> {
        let ListLevel::List(clause, n) = level else {
            return Ok(());
        };
        let square = n.saturating_mul(n);
        let (work, bound, what) = match clause {
            ListClause::Select => (
                &mut self.select,
                MAX_SELECT_ITEMS * MAX_SELECT_ITEMS,
                "SELECT lists are too long to plan in time (at most one of 1,664 items, or \
                 several shorter ones)",
            ),
            ListClause::Keys => (
                &mut self.keys,
                MAX_KEY_LIST_WORK,
                "ORDER BY and GROUP BY lists are too long to plan in time (at most one of \
                 1,000 keys, or several shorter ones)",
            ),
            ListClause::PartitionBy => (
                &mut self.partition,
                MAX_PARTITION_WORK,
                "PARTITION BY lists are too long to plan in time (at most one of 100 keys, \
                 or several shorter ones)",
            ),
        };
        let cost = if clause == ListClause::PartitionBy {
            square.saturating_mul(n)
        } else {
            square
        };
        *work = work.saturating_add(cost);
        if *work > bound {
            return Err(KalamError::SqlParse(format!("the request's {what}")));
        }
        Ok(())
    }
}

/// Bounds the lists of a request from its tokens, before anything is parsed: the items of
/// its SELECT lists, and the keys of its ORDER BY, GROUP BY and PARTITION BY lists (a
/// window's too), counted by their `,` at the clause's bracket level. A list runs until the
/// next one starts at its level, its bracket closes or the statement ends, so a SELECT list
/// also counts the FROM items after it: no word inside a list (an alias, `IS DISTINCT FROM`)
/// can end it early.
fn check_list_clauses(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut open = vec![ListLevel::Outside];
    let mut work = ListWork::default();
    let significant = |t: &&TokenWithSpan| !matches!(t.token, Token::Whitespace(_));
    let keyword = |t: Option<&TokenWithSpan>| match t.map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    };
    let (mut prev, mut before_prev): (Option<&TokenWithSpan>, Option<&TokenWithSpan>) =
        (None, None);
    for (i, t) in tokens.iter().enumerate() {
        if !significant(&t) {
            continue;
        }
        let next_is_by = || keyword(tokens[i + 1..].iter().find(significant)) == Some(Keyword::BY);
        match &t.token {
            Token::Word(w) if w.quote_style.is_none() => {
                let starts = match w.keyword {
                    Keyword::SELECT => Some(ListClause::Select),
                    Keyword::ORDER | Keyword::GROUP if next_is_by() => Some(ListClause::Keys),
                    Keyword::PARTITION if next_is_by() => Some(ListClause::PartitionBy),
                    _ => None,
                };
                if let (Some(clause), Some(level)) = (starts, open.last_mut()) {
                    work.close(*level)?;
                    *level = ListLevel::List(clause, 1);
                }
            }
            Token::Comma => {
                // The list this comma separates items of: the nearest below any brackets
                // of ROLLUP, CUBE or GROUPING SETS.
                let counted = open
                    .iter_mut()
                    .rev()
                    .find(|level| !matches!(level, ListLevel::Within));
                if let Some(ListLevel::List(clause, items)) = counted {
                    *items += 1;
                    if *clause == ListClause::Select && *items > MAX_SELECT_ITEMS {
                        return Err(KalamError::SqlParse(format!(
                            "a SELECT list holds more than {MAX_SELECT_ITEMS} items; at most \
                             {MAX_SELECT_ITEMS} are allowed"
                        )));
                    }
                }
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                let level = match (keyword(before_prev), keyword(prev)) {
                    (_, Some(Keyword::ROLLUP | Keyword::CUBE | Keyword::SETS)) => ListLevel::Within,
                    (Some(Keyword::DISTINCT), Some(Keyword::ON)) => {
                        ListLevel::List(ListClause::Keys, 1)
                    }
                    _ if matches!(open.last(), Some(ListLevel::Within)) => ListLevel::Within,
                    _ => ListLevel::Outside,
                };
                open.push(level);
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if open.len() > 1 {
                    if let Some(level) = open.pop() {
                        work.close(level)?;
                    }
                }
            }
            Token::SemiColon => {
                while let Some(level) = open.pop() {
                    work.close(level)?;
                }
                open.push(ListLevel::Outside);
            }
            _ => {}
        }
        (before_prev, prev) = (prev, Some(t));
    }
    while let Some(level) = open.pop() {
        work.close(level)?;
    }
    Ok(())
}

fn is_string_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// `sqlparser` reads `CURRENT_USER` as a function without parentheses (SQL standard), so
/// `CURRENT_USER()` of API.md would not parse; empty parentheses after it are dropped.
fn accept_empty_parens_after_session_functions(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_session_fn = |t: &Token| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("current_user"));
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    // The tokens of `CURRENT_USER` `(` `)` to drop (whitespace included), found first so
    // that a text without the function keeps its tokens as they are.
    let mut drop = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !is_session_fn(&t.token) {
            continue;
        }
        let next = |from: usize| (from..tokens.len()).find(|&j| significant(&tokens[j].token));
        if let Some(open) = next(i + 1).filter(|&j| tokens[j].token == Token::LParen) {
            if let Some(close) = next(open + 1).filter(|&k| tokens[k].token == Token::RParen) {
                drop.push((i + 1)..=close);
            }
        }
    }
    if drop.is_empty() {
        return tokens;
    }
    tokens
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.iter().any(|r| r.contains(i)))
        .map(|(_, t)| t)
        .collect()
}

fn parse_error(e: ParserError) -> KalamError {
    match e {
        ParserError::RecursionLimitExceeded => {
            KalamError::SqlParse("the statement nests too deeply".into())
        }
        other => KalamError::SqlParse(other.to_string().replace("sql parser error: ", "")),
    }
}

/// Whether the `n`th token ahead is the unquoted keyword `upper`, in any case. Borrows the
/// token: every request's first words go through here.
fn word_at(p: &Parser, n: usize, upper: &str) -> bool {
    matches!(&p.peek_nth_token_ref(n).token,
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(upper))
}

fn words_are(p: &Parser, words: &[&str]) -> bool {
    words.iter().enumerate().all(|(i, w)| word_at(p, i, w))
}

/// The first words of KalamDB's own statements. A statement starting with any other word
/// (`INSERT`, `SELECT`, `UPDATE`, `DELETE`, ...) goes to `sqlparser` without the checks of
/// [`parse_one`], so a new statement there needs its first word here.
const EXTENSION_LEADS: [&str; 10] = [
    "CREATE", "ALTER", "DROP", "SHOW", "DESCRIBE", "DESC", "FLUSH", "KILL", "BACKUP", "RESTORE",
];

/// Consumes `words` if they come next.
fn eat(p: &mut Parser, words: &[&str]) -> bool {
    if words_are(p, words) {
        for _ in words {
            p.next_token();
        }
        true
    } else {
        false
    }
}

fn expect(p: &mut Parser, words: &[&str]) -> Result<()> {
    if eat(p, words) {
        Ok(())
    } else {
        Err(KalamError::SqlParse(format!(
            "expected {}, found '{}'",
            words.join(" "),
            clip(&p.peek_token().token.to_string())
        )))
    }
}

fn parse_one(p: &mut Parser) -> Result<KalamStatement> {
    if !EXTENSION_LEADS.iter().any(|w| word_at(p, 0, w)) {
        let stmt = p.parse_statement().map_err(parse_error)?;
        return Ok(KalamStatement::Sql(Box::new(stmt)));
    }
    let kind_word = |p: &Parser, n: usize| {
        [
            ("USER", TableKind::User),
            ("SHARED", TableKind::Shared),
            ("STREAM", TableKind::Stream),
        ]
        .into_iter()
        .find(|(w, _)| word_at(p, n, w))
        .map(|(_, kind)| kind)
    };
    if words_are(p, &["CREATE", "NAMESPACE"]) {
        p.next_token();
        p.next_token();
        let if_not_exists = eat(p, &["IF", "NOT", "EXISTS"]);
        let name = namespace_name(p)?;
        let options = if eat(p, &["WITH", "OPTIONS"]) {
            option_list(p)?
        } else {
            OptionList::new()
        };
        return Ok(KalamStatement::CreateNamespace {
            name,
            if_not_exists,
            options,
        });
    }
    if words_are(p, &["ALTER", "NAMESPACE"]) {
        p.next_token();
        p.next_token();
        let name = namespace_name(p)?;
        expect(p, &["SET", "OPTIONS"])?;
        return Ok(KalamStatement::AlterNamespace {
            name,
            options: option_list(p)?,
        });
    }
    if words_are(p, &["DROP", "NAMESPACE"]) {
        p.next_token();
        p.next_token();
        let if_exists = eat(p, &["IF", "EXISTS"]);
        return Ok(KalamStatement::DropNamespace {
            name: namespace_name(p)?,
            if_exists,
        });
    }
    if words_are(p, &["SHOW", "NAMESPACES"]) {
        p.next_token();
        p.next_token();
        return Ok(KalamStatement::ShowNamespaces);
    }
    if word_at(p, 0, "CREATE") && word_at(p, 2, "TABLE") {
        if let Some(kind) = kind_word(p, 1) {
            p.next_token();
            p.next_token();
            p.next_token();
            return create_table(p, kind).map(|c| KalamStatement::CreateTable(Box::new(c)));
        }
    }
    if words_are(p, &["CREATE", "TABLE"]) {
        return Err(KalamError::Unsupported(
            "say which kind of table: CREATE USER TABLE, CREATE SHARED TABLE or CREATE STREAM TABLE".into(),
        ));
    }
    if word_at(p, 0, "DROP") {
        let kind = kind_word(p, 1);
        let table_at = if kind.is_some() { 2 } else { 1 };
        if word_at(p, table_at, "TABLE") {
            for _ in 0..=table_at {
                p.next_token();
            }
            let if_exists = eat(p, &["IF", "EXISTS"]);
            return Ok(KalamStatement::DropTable {
                table: table_id(p)?,
                kind,
                if_exists,
            });
        }
    }
    if words_are(p, &["SHOW", "TABLES"]) {
        p.next_token();
        p.next_token();
        let namespace = if eat(p, &["IN"]) || eat(p, &["FROM"]) {
            Some(namespace_name(p)?)
        } else {
            None
        };
        return Ok(KalamStatement::ShowTables { namespace });
    }
    if word_at(p, 0, "DESCRIBE") || word_at(p, 0, "DESC") {
        p.next_token();
        eat(p, &["TABLE"]);
        let table = table_id(p)?;
        let history = eat(p, &["HISTORY"]);
        return Ok(KalamStatement::DescribeTable { table, history });
    }
    if words_are(p, &["ALTER", "TABLE"]) {
        p.next_token();
        p.next_token();
        let table = table_id(p)?;
        let change = alter_change(p)?;
        return Ok(KalamStatement::AlterTable { table, change });
    }
    if words_are(p, &["SHOW", "TABLE", "STATS"]) {
        for _ in 0..3 {
            p.next_token();
        }
        return Ok(KalamStatement::ShowTableStats {
            table: table_id(p)?,
        });
    }
    if words_are(p, &["FLUSH", "TABLE"]) {
        p.next_token();
        p.next_token();
        return Ok(KalamStatement::FlushTable {
            table: table_id(p)?,
        });
    }
    if words_are(p, &["KILL", "LIVE", "QUERY"]) {
        for _ in 0..3 {
            p.next_token();
        }
        let live_id = p.parse_literal_string().map_err(parse_error)?;
        return Ok(KalamStatement::KillLiveQuery { live_id });
    }
    if eat(p, &["BACKUP", "NAMESPACE"]) {
        let name = namespace_name(p)?;
        expect(p, &["TO"])?;
        let url = p.parse_literal_string().map_err(parse_error)?;
        return Ok(KalamStatement::BackupNamespace {
            name,
            url,
            options: backup_options(p)?,
        });
    }
    if eat(p, &["RESTORE", "NAMESPACE"]) {
        let name = namespace_name(p)?;
        expect(p, &["FROM"])?;
        let url = p.parse_literal_string().map_err(parse_error)?;
        return Ok(KalamStatement::RestoreNamespace {
            name,
            url,
            options: backup_options(p)?,
        });
    }
    if eat(p, &["SHOW", "BACKUP"]) {
        let url = p.parse_literal_string().map_err(parse_error)?;
        return Ok(KalamStatement::ShowBackup {
            url,
            options: backup_options(p)?,
        });
    }
    if word_at(p, 0, "BACKUP") || word_at(p, 0, "RESTORE") {
        return Err(KalamError::SqlParse(
            "expected BACKUP NAMESPACE ns TO '<url>' or RESTORE NAMESPACE ns FROM '<url>'".into(),
        ));
    }
    let stmt = p.parse_statement().map_err(parse_error)?;
    Ok(KalamStatement::Sql(Box::new(stmt)))
}

/// `[WITH [OPTIONS] (key = value, ...)]` after a backup statement (checked by `backup`).
fn backup_options(p: &mut Parser) -> Result<OptionList> {
    if eat(p, &["WITH"]) {
        eat(p, &["OPTIONS"]);
        option_list(p)
    } else {
        Ok(OptionList::new())
    }
}

/// A column name as written (checked against the table later).
fn column_ident(p: &mut Parser) -> Result<String> {
    Ok(p.parse_identifier().map_err(parse_error)?.value)
}

/// The change of an `ALTER TABLE` (after the table name).
fn alter_change(p: &mut Parser) -> Result<AlterChange> {
    if eat(p, &["ADD"]) {
        eat(p, &["COLUMN"]);
        let if_not_exists = eat(p, &["IF", "NOT", "EXISTS"]);
        let column = p.parse_column_def().map_err(parse_error)?;
        return Ok(AlterChange::AddColumn {
            column,
            if_not_exists,
        });
    }
    if eat(p, &["DROP"]) {
        eat(p, &["COLUMN"]);
        let if_exists = eat(p, &["IF", "EXISTS"]);
        return Ok(AlterChange::DropColumn {
            name: column_ident(p)?,
            if_exists,
        });
    }
    if eat(p, &["MODIFY"]) {
        eat(p, &["COLUMN"]);
        let name = column_ident(p)?;
        let data_type = p.parse_data_type().map_err(parse_error)?;
        return Ok(AlterChange::ModifyColumn { name, data_type });
    }
    if eat(p, &["ALTER"]) {
        eat(p, &["COLUMN"]);
        let name = column_ident(p)?;
        eat(p, &["SET", "DATA"]);
        expect(p, &["TYPE"])?;
        let data_type = p.parse_data_type().map_err(parse_error)?;
        return Ok(AlterChange::ModifyColumn { name, data_type });
    }
    Err(KalamError::SqlParse(format!(
        "ALTER TABLE takes ADD COLUMN, DROP COLUMN or MODIFY COLUMN; found '{}'",
        clip(&p.peek_token().token.to_string())
    )))
}

fn namespace_name(p: &mut Parser) -> Result<NamespaceId> {
    let ident = p.parse_identifier().map_err(parse_error)?;
    NamespaceId::new(ident.value)
}

/// `namespace.table`, both parts following the identifier rule.
pub fn table_id_from_object_name(name: &ObjectName) -> Result<TableId> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| {
            part.as_ident()
                .map(|i| i.value.clone())
                .unwrap_or_else(|| part.to_string())
        })
        .collect();
    match parts.as_slice() {
        [ns, table] => Ok(TableId::new(
            NamespaceId::new(ns.clone())?,
            TableName::new(table.clone())?,
        )),
        _ => Err(KalamError::InvalidIdentifier(format!(
            "table '{}' must be named as namespace.table",
            clip(&name.to_string())
        ))),
    }
}

fn table_id(p: &mut Parser) -> Result<TableId> {
    let name = p.parse_object_name(false).map_err(parse_error)?;
    table_id_from_object_name(&name)
}

fn option_list(p: &mut Parser) -> Result<OptionList> {
    p.expect_token(&Token::LParen).map_err(parse_error)?;
    let mut out = OptionList::new();
    loop {
        let key = p
            .parse_identifier()
            .map_err(parse_error)?
            .value
            .to_ascii_lowercase();
        p.expect_token(&Token::Eq).map_err(parse_error)?;
        let value = match p.parse_value().map_err(parse_error)?.value {
            SqlValue::Number(n, _) => serde_json::from_str::<serde_json::Value>(&n)
                .ok()
                .filter(|v| v.is_number())
                .ok_or_else(|| {
                    KalamError::InvalidOption(format!("option {key}: '{n}' is not a number"))
                })?,
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => {
                serde_json::Value::String(s)
            }
            SqlValue::Boolean(b) => serde_json::Value::Bool(b),
            SqlValue::Null => serde_json::Value::Null,
            other => {
                return Err(KalamError::InvalidOption(format!(
                    "option {key}: unsupported value {}",
                    clip(&other.to_string())
                )))
            }
        };
        if out.insert(key.clone(), value).is_some() {
            return Err(KalamError::InvalidOption(format!(
                "option {key} is given twice"
            )));
        }
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen).map_err(parse_error)?;
    Ok(out)
}

fn duration_literal(p: &mut Parser, what: &str) -> Result<u64> {
    let text = p.parse_literal_string().map_err(parse_error)?;
    match parse_duration(&text) {
        Some(d) if d.as_secs() > 0 => Ok(d.as_secs()),
        _ => Err(KalamError::InvalidOption(format!(
            "{what}: '{}' is not a duration such as '30s', '5 minutes', '1h' or '7d'",
            clip(&text)
        ))),
    }
}

fn create_table(p: &mut Parser, kind: TableKind) -> Result<CreateTable> {
    let if_not_exists = eat(p, &["IF", "NOT", "EXISTS"]);
    let table = table_id(p)?;
    let (columns, constraints) = p.parse_columns().map_err(parse_error)?;
    let mut out = CreateTable {
        table,
        kind,
        if_not_exists,
        columns,
        constraints,
        location: LocationSpec::Default,
        flush_policy: None,
        with: OptionList::new(),
    };
    let mut seen_location = false;
    let mut seen_with = false;
    loop {
        if eat(p, &["LOCATION"]) {
            if std::mem::replace(&mut seen_location, true) {
                return Err(KalamError::SqlParse("LOCATION is given twice".into()));
            }
            out.location = if eat(p, &["REFERENCE"]) {
                LocationSpec::Reference(p.parse_literal_string().map_err(parse_error)?)
            } else {
                LocationSpec::Path(p.parse_literal_string().map_err(parse_error)?)
            };
        } else if eat(p, &["FLUSH", "POLICY"]) {
            if out.flush_policy.is_some() {
                return Err(KalamError::SqlParse("FLUSH POLICY is given twice".into()));
            }
            let mut policy = FlushPolicy {
                rows: None,
                interval_secs: None,
            };
            loop {
                if policy.rows.is_none() && eat(p, &["ROWS"]) {
                    let n = p.parse_literal_uint().map_err(parse_error)?;
                    if n == 0 {
                        return Err(KalamError::InvalidOption(
                            "FLUSH POLICY ROWS must be at least 1".into(),
                        ));
                    }
                    policy.rows = Some(n);
                } else if policy.interval_secs.is_none() && eat(p, &["INTERVAL"]) {
                    policy.interval_secs = Some(duration_literal(p, "FLUSH POLICY INTERVAL")?);
                } else {
                    break;
                }
            }
            if policy.rows.is_none() && policy.interval_secs.is_none() {
                return Err(KalamError::SqlParse(
                    "FLUSH POLICY needs ROWS n, INTERVAL 'd' or both".into(),
                ));
            }
            out.flush_policy = Some(policy);
        } else if words_are(p, &["WITH"]) {
            p.next_token();
            if std::mem::replace(&mut seen_with, true) {
                return Err(KalamError::SqlParse("WITH is given twice".into()));
            }
            out.with = option_list(p)?;
        } else {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::comma_list;

    fn one(sql: &str) -> KalamStatement {
        let (mut v, err) = parse_statements(sql);
        assert!(err.is_none(), "{sql}: {err:?}");
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn namespace_statements() {
        assert!(matches!(
            one("CREATE NAMESPACE IF NOT EXISTS app WITH OPTIONS (retention_days = 90, tier = 'gold')"),
            KalamStatement::CreateNamespace { if_not_exists: true, ref options, .. }
                if options["retention_days"] == 90 && options["tier"] == "gold"
        ));
        assert!(matches!(
            one("drop namespace if exists app"),
            KalamStatement::DropNamespace {
                if_exists: true,
                ..
            }
        ));
        assert_eq!(one("SHOW NAMESPACES"), KalamStatement::ShowNamespaces);
        let (_, err) = parse_statements("CREATE NAMESPACE App");
        assert!(matches!(err, Some(KalamError::InvalidIdentifier(_))));
    }

    #[test]
    fn create_table_with_every_clause() {
        let s = one(
            "CREATE USER TABLE IF NOT EXISTS app.messages (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), \
             content TEXT NOT NULL) LOCATION 's3://b/users/${user_id}/m/' \
             FLUSH POLICY ROWS 100 INTERVAL '30s' WITH (deleted_retention = '7d')",
        );
        let KalamStatement::CreateTable(c) = s else {
            panic!("{s:?}")
        };
        assert_eq!(c.kind, TableKind::User);
        assert!(c.if_not_exists);
        assert_eq!(c.columns.len(), 2);
        assert_eq!(
            c.location,
            LocationSpec::Path("s3://b/users/${user_id}/m/".into())
        );
        assert_eq!(
            c.flush_policy,
            Some(FlushPolicy {
                rows: Some(100),
                interval_secs: Some(30)
            })
        );
        assert_eq!(c.with["deleted_retention"], "7d");
        let s = one("CREATE SHARED TABLE app.c (id INT PRIMARY KEY) LOCATION REFERENCE 's3_prod' FLUSH POLICY INTERVAL '5 minutes'");
        let KalamStatement::CreateTable(c) = s else {
            panic!()
        };
        assert_eq!(c.location, LocationSpec::Reference("s3_prod".into()));
        assert_eq!(
            c.flush_policy,
            Some(FlushPolicy {
                rows: None,
                interval_secs: Some(300)
            })
        );
    }

    #[test]
    fn create_stream_table_with_options() {
        let s = one(
            "CREATE STREAM TABLE IF NOT EXISTS app.typing (user_name TEXT) \
             WITH (retention = '10s', ephemeral = true, max_buffer = 1000)",
        );
        let KalamStatement::CreateTable(c) = s else {
            panic!("{s:?}")
        };
        assert_eq!(c.kind, TableKind::Stream);
        assert!(c.if_not_exists);
        assert_eq!(c.with["retention"], "10s");
        assert_eq!(c.with["ephemeral"], true);
        assert_eq!(c.with["max_buffer"], 1000);
        assert!(matches!(
            one("DROP STREAM TABLE app.typing"),
            KalamStatement::DropTable {
                kind: Some(TableKind::Stream),
                ..
            }
        ));
    }

    #[test]
    fn alter_table_statements() {
        let KalamStatement::AlterTable { table, change } =
            one("ALTER TABLE app.m ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'")
        else {
            panic!()
        };
        assert_eq!(table.to_string(), "app.m");
        let AlterChange::AddColumn {
            column,
            if_not_exists: false,
        } = change
        else {
            panic!("not an ADD COLUMN")
        };
        assert_eq!(column.name.value, "priority");
        assert_eq!(column.options.len(), 2);
        assert!(matches!(
            one("ALTER TABLE app.m ADD IF NOT EXISTS n INT"),
            KalamStatement::AlterTable {
                change: AlterChange::AddColumn {
                    if_not_exists: true,
                    ..
                },
                ..
            }
        ));
        assert_eq!(
            one("ALTER TABLE app.m DROP COLUMN IF EXISTS priority"),
            KalamStatement::AlterTable {
                table: table.clone(),
                change: AlterChange::DropColumn {
                    name: "priority".into(),
                    if_exists: true
                }
            }
        );
        for sql in [
            "ALTER TABLE app.m MODIFY COLUMN n BIGINT",
            "ALTER TABLE app.m MODIFY n BIGINT",
            "ALTER TABLE app.m ALTER COLUMN n TYPE BIGINT",
            "ALTER TABLE app.m ALTER COLUMN n SET DATA TYPE BIGINT",
        ] {
            let KalamStatement::AlterTable {
                change: AlterChange::ModifyColumn { name, data_type },
                ..
            } = one(sql)
            else {
                panic!("{sql}")
            };
            assert_eq!(
                (name.as_str(), data_type.to_string().as_str()),
                ("n", "BIGINT"),
                "{sql}"
            );
        }
        for sql in [
            "ALTER TABLE app.m RENAME TO x",
            "ALTER TABLE app.m ADD COLUMN a INT, ADD COLUMN b INT",
            "ALTER TABLE app.m DROP COLUMN",
            "ALTER TABLE app.m MODIFY COLUMN n",
        ] {
            let (_, err) = parse_statements(sql);
            assert!(
                matches!(err, Some(KalamError::SqlParse(_))),
                "{sql}: {err:?}"
            );
        }
        assert!(matches!(
            one("DESCRIBE TABLE app.m HISTORY"),
            KalamStatement::DescribeTable { history: true, .. }
        ));
    }

    /// Asserts that `sql` is refused with `SQL_PARSE_ERROR`, its message saying `says`.
    fn refused(sql: String, what: &str, says: &str) {
        let (ok, err) = parse_statements(&sql);
        assert!(ok.is_empty(), "{what} parsed");
        assert!(
            matches!(err, Some(KalamError::SqlParse(ref m)) if m.contains(says)),
            "{what}: {err:?}"
        );
    }

    /// Asserts that `sql` parses whole.
    fn accepted(sql: String, what: &str) {
        let (ok, err) = parse_statements(&sql);
        assert!(err.is_none(), "{what}: {err:?}");
        assert!(!ok.is_empty(), "{what}");
    }

    /// Lists are bounded before parsing where planning them grows faster than their length:
    /// a SELECT list at PostgreSQL's 1,664 items, ORDER BY and GROUP BY keys by the sum of
    /// their squares (10,000 ORDER BY expressions took 104 s to plan), PARTITION BY keys by
    /// the sum of their cubes (1,000 took over two minutes), and window functions at 200 a
    /// statement (300 took 1.9 s). A word inside a list does not end it, and the keys of
    /// ROLLUP, CUBE, GROUPING SETS and DISTINCT ON count. Other lists are not bounded.
    #[test]
    fn long_select_and_key_lists_are_refused() {
        let keys = |n: usize| comma_list(n, |i| format!("x + {i}"));
        refused(
            format!("SELECT {} FROM t", keys(1_665)),
            "a SELECT list of 1,665",
            "at most 1664",
        );
        refused(
            format!("SELECT x FROM t ORDER BY {}", keys(1_001)),
            "ORDER BY 1,001",
            "ORDER BY and GROUP BY",
        );
        refused(
            format!("SELECT count(*) FROM t GROUP BY {}", keys(1_001)),
            "GROUP BY 1,001",
            "ORDER BY and GROUP BY",
        );
        refused(
            format!(
                "SELECT x FROM t GROUP BY {k} UNION ALL SELECT x FROM t ORDER BY {k}",
                k = keys(800)
            ),
            "two lists of 800",
            "ORDER BY and GROUP BY",
        );
        refused(
            format!(
                "SELECT row_number() OVER (PARTITION BY {} ORDER BY x) FROM t",
                keys(101)
            ),
            "PARTITION BY 101",
            "PARTITION BY",
        );

        // No word inside a list ends it early, and keys in brackets count.
        refused(
            format!(
                "SELECT row_number() OVER (PARTITION BY x IS DISTINCT FROM 0, {}) FROM t",
                keys(100)
            ),
            "PARTITION BY with IS DISTINCT FROM",
            "PARTITION BY",
        );
        refused(
            format!("SELECT 1 AS rows, {} FROM t", keys(1_664)),
            "a SELECT list with an alias `rows`",
            "at most 1664",
        );
        for (sql, what) in [
            (
                format!("SELECT count(*) FROM t GROUP BY ROLLUP({})", keys(1_001)),
                "ROLLUP of 1,001",
            ),
            (
                format!(
                    "SELECT count(*) FROM t GROUP BY GROUPING SETS (({}), (x))",
                    keys(1_000)
                ),
                "GROUPING SETS of 1,001",
            ),
            (
                format!("SELECT DISTINCT ON ({}) x FROM t", keys(1_001)),
                "DISTINCT ON 1,001",
            ),
        ] {
            refused(sql, what, "ORDER BY and GROUP BY");
        }
        refused(
            format!(
                "SELECT {k} FROM t UNION ALL SELECT {k} FROM t",
                k = keys(1_200)
            ),
            "two SELECT lists of 1,200",
            "SELECT lists are too long",
        );

        // `IS DISTINCT FROM` is no FROM clause: the items after it are not joined tables.
        accepted(
            format!("SELECT a IS DISTINCT FROM b, {} FROM t", keys(100)),
            "IS DISTINCT FROM before 100 items",
        );
        let windows = |n: usize| comma_list(n, |i| format!("row_number() OVER (ORDER BY x + {i})"));
        refused(
            format!("SELECT {} FROM t", windows(201)),
            "201 windows",
            "at most 200",
        );
        accepted(format!("SELECT {} FROM t", windows(200)), "200 windows");
        accepted(
            format!("SELECT {} FROM t", keys(1_664)),
            "a SELECT list of 1,664",
        );
        accepted(
            format!("SELECT x FROM t ORDER BY {}", keys(1_000)),
            "ORDER BY 1,000",
        );
        accepted(
            format!(
                "SELECT row_number() OVER (PARTITION BY {} ORDER BY {}) FROM t GROUP BY {}",
                keys(100),
                keys(700),
                keys(700)
            ),
            "PARTITION BY 100 beside two key lists of 700",
        );
        // Lists that are not SELECT lists or keys: VALUES rows, function arguments, IN.
        let rows = comma_list(5_000, |i| format!("({i}, 'r{i}')"));
        accepted(format!("INSERT INTO t (id, s) VALUES {rows}"), "5,000 rows");
        accepted(
            format!("SELECT coalesce({}) FROM t", keys(3_000)),
            "3,000 arguments",
        );
    }

    /// Chains the parser builds in a loop are bounded before parsing: by their depth (a
    /// chain of 100,000 casts aborted the node with a stack overflow) and by the square of
    /// their length (planning a chain of 2,000 `+` took 4 s). Lists and long statements of
    /// short expressions are not.
    #[test]
    fn long_operator_chains_are_refused_and_lists_are_not() {
        // Bracketed parts add up to the depth of the whole: 55 levels of 40.
        let level = format!("(1{} + ", " + 1".repeat(39));
        let nested = format!("SELECT {}1{}", level.repeat(55), ")".repeat(55));
        for (sql, what) in [
            (
                format!("SELECT 1{} AS x", "::BIGINT".repeat(100_000)),
                "casts",
            ),
            (
                format!("SELECT 1{}", " IS NOT NULL".repeat(2_000)),
                "IS NOT NULL",
            ),
            (
                format!("SELECT a{} FROM t", "[1]".repeat(2_500)),
                "subscripts",
            ),
            (
                format!("SELECT a{} FROM t", ".b".repeat(2_500)),
                "field access",
            ),
            (
                format!("SELECT 1{}", " + 1".repeat(1_001)),
                "1,001 additions",
            ),
            (nested, "nested chains"),
        ] {
            refused(sql, what, "chain");
        }
        // Several chains of 500 pass up to their budget together.
        let four = comma_list(4, |_| format!("1{}", " + 1".repeat(500)));
        refused(
            format!("SELECT {four}, {four}"),
            "eight chains of 500",
            "chain",
        );

        accepted(
            format!("SELECT 1{} AS x", " + 1".repeat(999)),
            "999 additions",
        );
        accepted(format!("SELECT {four}"), "four chains of 500");
        let ors = (0..400)
            .map(|i| format!("id = {i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        accepted(format!("SELECT id FROM app.t WHERE {ors}"), "400 ORs");
        let list = comma_list(20_000, |i| i.to_string());
        accepted(
            format!("SELECT id FROM app.t WHERE id IN ({list})"),
            "an IN list of 20,000",
        );
        let rows = comma_list(5_000, |i| {
            format!("({i}, -{i}, 'text {i}', NOT TRUE, {i}::BIGINT + 1)")
        });
        accepted(
            format!("INSERT INTO app.t (a, b, c, d, e) VALUES {rows}"),
            "5,000 rows",
        );
    }

    /// Statements whose planning grows faster than their size are bounded by their shape:
    /// SELECTs per statement and tables per FROM clause. Ordinary ones are not touched.
    #[test]
    fn query_blocks_are_bounded_per_statement() {
        let joins = |n: usize| {
            (1..n)
                .map(|i| format!(" JOIN app.t t{i} ON t{i}.id = t{}.id", i - 1))
                .collect::<String>()
        };
        let listed = |n: usize| comma_list(n, |i| format!("app.t t{i}"));
        let ctes = |n: usize| {
            let chain = (1..n)
                .map(|i| format!(", a{i} AS (SELECT x FROM a{})", i - 1))
                .collect::<String>();
            format!("WITH a0 AS (SELECT 1 AS x){chain} SELECT x FROM a{}", n - 1)
        };
        refused(
            format!("SELECT t0.id FROM app.t t0{}", joins(62)),
            "62 joined",
            "tables",
        );
        refused(
            format!("SELECT 1 FROM {}", listed(62)),
            "62 listed",
            "tables",
        );
        refused(ctes(1_000), "1,000 CTEs", "SELECTs");
        let unions = vec!["SELECT 1 AS x"; 1_001].join(" UNION ALL ");
        refused(unions, "1,001 SELECTs in a UNION", "SELECT");

        accepted(
            format!("SELECT t0.id FROM app.t t0{}", joins(61)),
            "61 joined",
        );
        accepted(format!("SELECT 1 FROM {}", listed(61)), "61 listed");
        accepted(ctes(999), "999 CTEs");
        // Commas elsewhere are not tables: select lists, function arguments, VALUES, SET,
        // and a FROM clause ends at WHERE.
        let columns = comma_list(500, |i| format!("c{i}"));
        accepted(
            format!(
                "SELECT {columns}, EXTRACT(YEAR FROM ts), substr(a, 1, 2) FROM app.t \
                 WHERE x IN ({columns}) ORDER BY {columns}"
            ),
            "500 columns",
        );
        // An upsert's SET ends the FROM clause of its SELECT.
        accepted(
            format!(
                "INSERT INTO app.t SELECT * FROM app.u ON CONFLICT (id) DO UPDATE SET {}",
                vec!["a = 1"; 100].join(", ")
            ),
            "an upsert of 100 assignments",
        );
        accepted(
            format!(
                "UPDATE app.t SET {} WHERE id = 1",
                vec!["a = 1"; 500].join(", ")
            ),
            "500 assignments",
        );
        // A statement's count starts again after `;`.
        accepted(
            vec![format!("SELECT 1 FROM {}", listed(61)); 3].join("; "),
            "three statements",
        );
    }

    #[test]
    fn statement_errors_name_their_position() {
        let (ok, err) = parse_statements("SELECT 1; SELEC 2; SELECT 3");
        assert_eq!(ok.len(), 1);
        assert!(matches!(err, Some(KalamError::SqlParse(_))));
        let (_, err) = parse_statements(" ;; ");
        assert!(matches!(err, Some(KalamError::InvalidRequest(_))));
        let flat = format!("SELECT 1{}", " + 1".repeat(MAX_OPERATORS + 1));
        let (_, err) = parse_statements(&flat);
        assert!(
            matches!(err, Some(KalamError::SqlParse(ref m)) if m.contains("operators")),
            "{err:?}"
        );
        let deep = format!("SELECT {}1{}", "(".repeat(2000), ")".repeat(2000));
        let (_, err) = parse_statements(&deep);
        assert!(matches!(err, Some(KalamError::SqlParse(_))));
    }

    #[test]
    fn other_statements_and_later_features() {
        assert_eq!(
            one("SHOW TABLES IN app"),
            KalamStatement::ShowTables {
                namespace: Some(NamespaceId::new("app").unwrap())
            }
        );
        assert!(matches!(
            one("DESCRIBE TABLE app.m"),
            KalamStatement::DescribeTable { .. }
        ));
        assert!(matches!(
            one("DROP USER TABLE IF EXISTS app.m"),
            KalamStatement::DropTable {
                kind: Some(TableKind::User),
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            one("FLUSH TABLE app.m"),
            KalamStatement::FlushTable { .. }
        ));
        assert!(matches!(
            one("SHOW TABLE STATS app.m"),
            KalamStatement::ShowTableStats { .. }
        ));
        assert_eq!(
            one("KILL LIVE QUERY 'alice-0a1b-messages-q1'"),
            KalamStatement::KillLiveQuery {
                live_id: "alice-0a1b-messages-q1".into()
            }
        );
        assert_eq!(
            one("BACKUP NAMESPACE app TO 'file:///backups/app-1'"),
            KalamStatement::BackupNamespace {
                name: NamespaceId::new("app").unwrap(),
                url: "file:///backups/app-1".into(),
                options: OptionList::new(),
            }
        );
        assert!(matches!(
            one("restore namespace app2 from 's3://b/backups/app' WITH (credentials_ref = 'moto')"),
            KalamStatement::RestoreNamespace { ref name, ref url, ref options }
                if name.as_str() == "app2" && url == "s3://b/backups/app" && options["credentials_ref"] == "moto"
        ));
        assert!(matches!(
            one("SHOW BACKUP 'file:///backups/app-1'"),
            KalamStatement::ShowBackup { ref url, .. } if url == "file:///backups/app-1"
        ));
        for sql in [
            "BACKUP NAMESPACE app 'file:///x'",
            "BACKUP DATABASE app TO 'file:///x'",
            "RESTORE NAMESPACE app TO 'file:///x'",
            "SHOW BACKUP",
        ] {
            let (_, err) = parse_statements(sql);
            assert!(
                matches!(err, Some(KalamError::SqlParse(_))),
                "{sql}: {err:?}"
            );
        }
        assert_eq!(one("select * from app.m where id = 1").kind(), "select");
        let KalamStatement::Sql(s) = one("SELECT CURRENT_USER(), current_user ( ) AS me") else {
            panic!()
        };
        assert_eq!(s.to_string(), "SELECT CURRENT_USER, current_user AS me");
    }
}
