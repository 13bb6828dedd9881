//! Validates a parsed `CREATE ... TABLE` into the catalog's `TableDef`: column types and
//! options, the primary key (declared, or an automatic `id` with `SNOWFLAKE_ID()`), location
//! and flush policy, and the table's WITH options. And ALTER TABLE: the next schema version
//! of a table from its current one ([`apply_alter`], docs/adr/0011-schema-versions.md).

use chrono::{DateTime, Utc};
use datafusion::sql::sqlparser::ast::{
    ColumnDef as SqlColumnDef, ColumnOption, Expr as SqlExpr, TableConstraint,
};
use rand::RngCore;

use crate::auth::parse_duration;
use crate::catalog::{
    ColumnDef, KalamType, LocationSpec, SchemaVersion, StreamOptions, TableDef, TableKind,
    DELETED_COLUMN, UPDATED_COLUMN,
};
use crate::cold::SEQ_COLUMN;
use crate::error::{clip, KalamError, Result};
use crate::ids::ColumnName;
use crate::sql::parser::CreateTable;

/// The one placeholder a USER table's location may contain.
pub const USER_ID_PLACEHOLDER: &str = "${user_id}";

fn bad(msg: impl Into<String>) -> KalamError {
    KalamError::InvalidTableDefinition(msg.into())
}

/// Most columns a table may have (the key `id` a table is given counted), PostgreSQL's own
/// limit: DataFusion plans `SELECT *` of a table in time that grows with the square of its
/// columns (1,600 took 0.5 s, 10,000 took 14.5 s).
const MAX_COLUMNS: usize = 1_600;

fn too_many_columns() -> KalamError {
    bad(format!("a table has at most {MAX_COLUMNS} columns"))
}

/// Maps a SQL type as written to a KalamDB type. Matching on the printed form keeps this
/// independent of how `sqlparser` names its variants across releases.
pub fn kalam_type(data_type: &impl std::fmt::Display) -> Result<KalamType> {
    let printed = data_type.to_string().to_ascii_uppercase();
    let base = printed.split('(').next().unwrap_or_default().trim();
    let t = match base {
        "BOOLEAN" | "BOOL" => KalamType::Boolean,
        "SMALLINT" | "INT2" => KalamType::SmallInt,
        "INT" | "INTEGER" | "INT4" => KalamType::Int,
        "BIGINT" | "INT8" => KalamType::BigInt,
        "FLOAT" | "REAL" | "FLOAT4" => KalamType::Float,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => KalamType::Double,
        "TEXT" | "STRING" | "VARCHAR" | "CHARACTER VARYING" => KalamType::Text,
        "BYTES" | "BYTEA" | "BLOB" | "VARBINARY" => KalamType::Bytes,
        "DATE" => KalamType::Date,
        "TIMESTAMP"
        | "TIMESTAMPTZ"
        | "TIMESTAMP WITH TIME ZONE"
        | "TIMESTAMP WITHOUT TIME ZONE" => KalamType::Timestamp,
        "JSON" | "JSONB" => KalamType::Json,
        "DECIMAL" | "NUMERIC" => {
            let args: Vec<&str> = printed
                .split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .map(|a| a.split(',').map(str::trim).collect())
                .unwrap_or_default();
            let (precision, scale) = match args.as_slice() {
                [] => (38, 10),
                [p] => (p.parse().unwrap_or(0), 0),
                [p, s] => (p.parse().unwrap_or(0), s.parse().unwrap_or(-1)),
                _ => (0, 0),
            };
            if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                return Err(bad(format!(
                    "{printed}: DECIMAL needs 1 <= precision <= 38 and 0 <= scale <= precision"
                )));
            }
            KalamType::Decimal { precision, scale }
        }
        _ => {
            return Err(bad(format!(
                "type {} is not supported; use BOOLEAN, SMALLINT, INT, BIGINT, FLOAT, DOUBLE, \
                 DECIMAL(p,s), TEXT, BYTES, DATE, TIMESTAMP or JSON",
                clip(&printed)
            )))
        }
    };
    Ok(t)
}

fn column_name(raw: &str) -> Result<ColumnName> {
    if raw.starts_with('_') {
        return Err(bad(format!(
            "column '{}': names starting with '_' are reserved for system columns ({UPDATED_COLUMN}, {DELETED_COLUMN})",
            clip(raw)
        )));
    }
    ColumnName::new(raw)
}

/// Checks a `LOCATION '...'` path for the table's kind.
fn check_location(kind: TableKind, location: &LocationSpec) -> Result<()> {
    let LocationSpec::Path(path) = location else {
        return Ok(());
    };
    if path.trim().is_empty() {
        return Err(bad("LOCATION must not be empty"));
    }
    if path.split(['/', '\\']).any(|seg| seg == "..") {
        return Err(bad("LOCATION must not contain '..' segments"));
    }
    let without = path.replace(USER_ID_PLACEHOLDER, "");
    if without.contains("${") {
        return Err(bad(format!(
            "LOCATION: the only placeholder is {USER_ID_PLACEHOLDER}"
        )));
    }
    if kind != TableKind::User && path.contains(USER_ID_PLACEHOLDER) {
        return Err(bad(format!(
            "{USER_ID_PLACEHOLDER} is only allowed in the LOCATION of a USER table"
        )));
    }
    Ok(())
}

/// One declared column (its `id` is the caller's) and whether it says PRIMARY KEY.
fn declared_column(col: &SqlColumnDef, id: u32) -> Result<(ColumnDef, bool)> {
    let mut def = ColumnDef {
        id,
        name: column_name(&col.name.value)?,
        data_type: kalam_type(&col.data_type)?,
        nullable: true,
        default: None,
        initial_default: None,
    };
    let mut primary = false;
    for opt in &col.options {
        match &opt.option {
            ColumnOption::NotNull => def.nullable = false,
            ColumnOption::Null => def.nullable = true,
            ColumnOption::Default(expr) => def.default = Some(default_text(&def.name, expr)?),
            ColumnOption::PrimaryKey(_) => primary = true,
            other => {
                return Err(bad(format!(
                    "column '{}': option {} is not supported",
                    def.name,
                    clip(&other.to_string())
                )))
            }
        }
    }
    Ok((def, primary))
}

/// A table's `uid`: creation time in µs as hex plus 4 random bytes, unique per creation
/// (a restored table gets a new one too: it names the table's column family).
pub fn new_table_uid(now: DateTime<Utc>) -> String {
    let mut random = [0u8; 4];
    rand::rng().fill_bytes(&mut random);
    format!(
        "{:x}{}",
        now.timestamp_micros(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Builds the table definition; `check_default` compiles a DEFAULT expression for its type.
pub fn table_def(
    c: &CreateTable,
    check_default: impl Fn(&str, KalamType) -> Result<()>,
) -> Result<TableDef> {
    if c.kind == TableKind::Stream {
        // Events live in the hot tier only: there is no cold location to name and nothing
        // to flush.
        if !matches!(c.location, LocationSpec::Default) {
            return Err(bad(
                "a STREAM table is never written to Parquet: it takes no LOCATION",
            ));
        }
        if c.flush_policy.is_some() {
            return Err(bad(
                "a STREAM table is never flushed: it takes no FLUSH POLICY (events expire after their retention)",
            ));
        }
    }
    if c.columns.len() > MAX_COLUMNS {
        return Err(too_many_columns());
    }
    let mut columns: Vec<ColumnDef> = Vec::with_capacity(c.columns.len() + 1);
    let mut primary: Vec<String> = Vec::new();
    for (i, col) in c.columns.iter().enumerate() {
        let (def, is_key) = declared_column(col, i as u32 + 1)?;
        if columns.iter().any(|c| c.name == def.name) {
            return Err(bad(format!("column '{}' is declared twice", def.name)));
        }
        if is_key {
            primary.push(def.name.to_string());
        }
        columns.push(def);
    }
    for constraint in &c.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                for col in &pk.columns {
                    primary.push(col.column.expr.to_string());
                }
            }
            other => {
                return Err(bad(format!(
                    "constraint {} is not supported",
                    clip(&other.to_string())
                )))
            }
        }
    }
    let primary_key = match primary.as_slice() {
        [] => {
            if columns.iter().any(|c| c.name.as_str() == "id") {
                return Err(bad(
                    "a column named 'id' exists but is not the PRIMARY KEY: declare the key",
                ));
            }
            let id = ColumnDef {
                id: columns.iter().map(|c| c.id).max().unwrap_or(0) + 1,
                name: ColumnName::new("id")?,
                data_type: KalamType::BigInt,
                nullable: false,
                default: Some("SNOWFLAKE_ID()".into()),
                initial_default: None,
            };
            let name = id.name.clone();
            columns.insert(0, id);
            name
        }
        [one] => {
            let col = columns
                .iter_mut()
                .find(|c| c.name.as_str() == one)
                .ok_or_else(|| bad(format!("PRIMARY KEY names unknown column '{}'", clip(one))))?;
            if !col.data_type.can_be_primary_key() {
                return Err(bad(format!(
                    "PRIMARY KEY '{}' has type {}; a key must be SMALLINT, INT, BIGINT or TEXT",
                    col.name,
                    col.data_type.sql_name()
                )));
            }
            col.nullable = false;
            col.name.clone()
        }
        _ => return Err(bad("a table has exactly one PRIMARY KEY column")),
    };
    // The key `id` given to a table without one counts.
    if columns.len() > MAX_COLUMNS {
        return Err(too_many_columns());
    }
    for col in &columns {
        if let Some(d) = &col.default {
            check_default(d, col.data_type)
                .map_err(|e| bad(format!("DEFAULT of column '{}': {e}", col.name)))?;
        }
    }
    check_location(c.kind, &c.location)?;
    let mut deleted_retention_secs = None;
    let mut stream = (c.kind == TableKind::Stream).then(StreamOptions::default);
    for (key, value) in &c.with {
        if let Some(options) = stream.as_mut() {
            stream_option(options, key, value)?;
            continue;
        }
        match (key.as_str(), value) {
            (k, _) if STREAM_OPTIONS.contains(&k) => {
                return Err(bad(format!(
                    "{k} is an option of STREAM tables; a {} table takes deleted_retention = '7d' | 'off'",
                    c.kind.as_str().to_uppercase()
                )))
            }
            ("deleted_retention", serde_json::Value::String(s))
                if s.eq_ignore_ascii_case("off") =>
            {
                deleted_retention_secs = None
            }
            ("deleted_retention", serde_json::Value::String(s)) => {
                deleted_retention_secs = Some(
                    parse_duration(s)
                        .filter(|d| d.as_secs() > 0)
                        .ok_or_else(|| {
                            KalamError::InvalidOption(format!(
                                "deleted_retention: '{}' is not 'off' or a duration such as '7d'",
                                clip(s)
                            ))
                        })?
                        .as_secs(),
                )
            }
            (key, _) => {
                return Err(KalamError::InvalidOption(format!(
                "unknown or ill-typed table option '{}' (known: deleted_retention = '7d' | 'off')",
                clip(key)
            )))
            }
        }
    }
    let now = Utc::now();
    let last_column_id = columns.iter().map(|c| c.id).max().unwrap_or(0);
    Ok(TableDef {
        namespace: c.table.namespace.clone(),
        name: c.table.table.clone(),
        kind: c.kind,
        uid: new_table_uid(now),
        created_at: now,
        schema_version: 1,
        columns,
        primary_key,
        location: c.location.clone(),
        flush_policy: c.flush_policy.unwrap_or_default(),
        deleted_retention_secs,
        stream,
        storage: None,
        last_column_id,
        history: Vec::new(),
    })
}

/// One ALTER TABLE change, checked on its own ([`added_column`]); [`apply_alter`] checks
/// it against the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Alteration {
    /// `column.id` is assigned by [`apply_alter`]; `initial_default` is the DEFAULT's value,
    /// evaluated once by the caller, for the rows written before the column existed.
    AddColumn {
        column: ColumnDef,
        if_not_exists: bool,
    },
    DropColumn {
        name: String,
        if_exists: bool,
    },
    ModifyColumn {
        name: String,
        data_type: KalamType,
    },
}

/// Names of the server's own columns: `_updated`, `_deleted`, and `_seq` of Parquet files.
fn is_system_column(name: &str) -> bool {
    [UPDATED_COLUMN, DELETED_COLUMN, SEQ_COLUMN].contains(&name)
}

/// The column of `ADD COLUMN`, as declared: not a system column, not a key, and NOT NULL
/// only with a DEFAULT (rows written before the column existed read as the DEFAULT; without
/// one they would be NULL in a NOT NULL column).
pub fn added_column(col: &SqlColumnDef) -> Result<ColumnDef> {
    if is_system_column(&col.name.value) {
        return Err(KalamError::SystemColumnReadonly(col.name.value.clone()));
    }
    let (def, is_key) = declared_column(col, 0)?;
    if is_key {
        return Err(bad(format!(
            "ADD COLUMN {}: a table's PRIMARY KEY is chosen at CREATE TABLE and cannot be added",
            def.name
        )));
    }
    if !def.nullable && def.default.is_none() {
        return Err(bad(format!(
            "ADD COLUMN {} NOT NULL needs a DEFAULT: the rows written before the column existed read as it",
            def.name
        )));
    }
    Ok(def)
}

/// The column `name` of `current`, refusing system columns (which no ALTER touches) and
/// the primary key (its encoding orders the hot tier and keys every Parquet file).
fn altered_column<'a>(
    current: &'a TableDef,
    name: &str,
    what: &str,
) -> Result<Option<&'a ColumnDef>> {
    if is_system_column(name) {
        return Err(KalamError::SystemColumnReadonly(name.to_string()));
    }
    let Some(col) = current.column(name) else {
        return Ok(None);
    };
    if col.name == current.primary_key {
        return Err(bad(format!(
            "{what} {name}: '{name}' is the primary key of {}, which cannot be dropped or changed",
            current.id()
        )));
    }
    Ok(Some(col))
}

fn column_not_found(current: &TableDef, name: &str) -> KalamError {
    KalamError::ColumnNotFound {
        table: current.id().to_string(),
        column: clip(name),
    }
}

/// The next schema version of `current` after `change`, made at `at`; `None` when the
/// change does nothing (`ADD COLUMN IF NOT EXISTS` of an existing column, `DROP COLUMN IF
/// EXISTS` of a missing one, `MODIFY COLUMN` to the type the column has). Only metadata
/// changes: no row or file is rewritten, readers adapt by column id.
pub fn apply_alter(
    current: &TableDef,
    change: &Alteration,
    at: DateTime<Utc>,
) -> Result<Option<TableDef>> {
    if current.kind == TableKind::Stream {
        return Err(KalamError::Unsupported(format!(
            "{} is a STREAM table: its columns are fixed at CREATE (events are short-lived;              drop and create the table to change them)",
            current.id()
        )));
    }
    let mut next = current.clone();
    let summary = match change {
        Alteration::AddColumn {
            column,
            if_not_exists,
        } => {
            if current.column(column.name.as_str()).is_some() {
                if *if_not_exists {
                    return Ok(None);
                }
                return Err(KalamError::ColumnAlreadyExists {
                    table: current.id().to_string(),
                    column: column.name.to_string(),
                });
            }
            if current.columns.len() >= MAX_COLUMNS {
                return Err(too_many_columns());
            }
            let mut column = column.clone();
            column.id = current.next_column_id();
            next.last_column_id = column.id;
            let summary = format!(
                "ADD COLUMN {} {}{}{}",
                column.name,
                column.data_type.sql_name(),
                if column.nullable { "" } else { " NOT NULL" },
                column
                    .default
                    .as_ref()
                    .map(|d| format!(" DEFAULT {d}"))
                    .unwrap_or_default()
            );
            next.columns.push(column);
            summary
        }
        Alteration::DropColumn { name, if_exists } => {
            match altered_column(current, name, "DROP COLUMN")? {
                Some(_) => {}
                None if *if_exists => return Ok(None),
                None => return Err(column_not_found(current, name)),
            }
            next.columns.retain(|c| c.name.as_str() != name);
            format!("DROP COLUMN {name}")
        }
        Alteration::ModifyColumn { name, data_type } => {
            let col = altered_column(current, name, "MODIFY COLUMN")?
                .ok_or_else(|| column_not_found(current, name))?;
            let from = col.data_type;
            if from == *data_type {
                return Ok(None);
            }
            if !from.widens_to(*data_type) {
                return Err(bad(format!(
                    "MODIFY COLUMN {name}: {} -> {} is not a widening; allowed are SMALLINT -> INT -> BIGINT,                      FLOAT -> DOUBLE and DECIMAL(p,s) -> DECIMAL(q,s) with q > p",
                    from.sql_name(),
                    data_type.sql_name()
                )));
            }
            for c in next.columns.iter_mut().filter(|c| c.name.as_str() == name) {
                c.data_type = *data_type;
            }
            format!(
                "MODIFY COLUMN {name} {} -> {}",
                from.sql_name(),
                data_type.sql_name()
            )
        }
    };
    next.schema_version = current.schema_version + 1;
    if next.history.is_empty() {
        next.history.push(current.initial_version());
    }
    next.history.push(SchemaVersion {
        version: next.schema_version,
        created_at: at,
        change: summary,
        columns: next.columns.clone(),
    });
    Ok(Some(next))
}

/// The `WITH` options only STREAM tables take.
const STREAM_OPTIONS: &[&str] = &["retention", "ephemeral", "max_buffer"];

/// The longest STREAM retention: an event's age is compared in microseconds since 1970,
/// which an `i64` holds for about 292,000 years.
const MAX_STREAM_RETENTION_SECS: u64 = (i64::MAX / 1_000_000) as u64;

/// One `WITH` option of a STREAM table: `retention = '10s'` (whole seconds, at least one),
/// `ephemeral = true | false`, `max_buffer = n` (at least 1). A bad value or an unknown key is
/// `INVALID_OPTION`; `deleted_retention`, which only USER and SHARED tables have, is
/// `INVALID_TABLE_DEFINITION`.
fn stream_option(options: &mut StreamOptions, key: &str, value: &serde_json::Value) -> Result<()> {
    let invalid = |msg: String| KalamError::InvalidOption(format!("STREAM table option {msg}"));
    let shown = || clip(&value.to_string());
    match key {
        "retention" => {
            options.retention_secs = value
                .as_str()
                .and_then(parse_duration)
                .filter(|d| {
                    d.subsec_nanos() == 0
                        && (1..=MAX_STREAM_RETENTION_SECS).contains(&d.as_secs())
                })
                .map(|d| d.as_secs())
                .ok_or_else(|| {
                    invalid(format!(
                        "retention = {}: expected a duration of whole seconds, from '1s' to '{MAX_STREAM_RETENTION_SECS}s', such as '10s', '5 minutes' or '1h'",
                        shown()
                    ))
                })?;
        }
        "ephemeral" => {
            options.ephemeral = value.as_bool().ok_or_else(|| {
                invalid(format!("ephemeral = {}: expected true or false", shown()))
            })?;
        }
        "max_buffer" => {
            options.max_buffer = value.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                invalid(format!(
                    "max_buffer = {}: expected a whole number of at least 1",
                    shown()
                ))
            })?;
        }
        "deleted_retention" => {
            return Err(bad(
                "a STREAM table has no soft deletes, so deleted_retention does not apply \
                 (its events expire after `retention`)",
            ))
        }
        other => {
            return Err(invalid(format!(
                "'{}' is unknown (known: retention, ephemeral, max_buffer)",
                clip(other)
            )))
        }
    }
    Ok(())
}

/// A DEFAULT as stored: its text, parsed again for every INSERT. sqlparser prints a string
/// literal holding `''` or `\'` in a form that parses back as another value; such a DEFAULT
/// is refused rather than kept changed.
fn default_text(column: &ColumnName, expr: &SqlExpr) -> Result<String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let text = expr.to_string();
    let same = Parser::new(&GenericDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .is_ok_and(|again| &again == expr);
    if !same {
        return Err(KalamError::InvalidTableDefinition(format!(
            "DEFAULT of column '{column}' cannot be kept as written (a string literal with two \
             quotes or a backslash and a quote in a row); write it another way, e.g. with \
             CHR(39) for a quote"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::comma_list;
    use crate::sql::parser::{parse_statements, KalamStatement};

    fn def(sql: &str) -> Result<TableDef> {
        let (mut v, err) = parse_statements(sql);
        if let Some(e) = err {
            return Err(e);
        }
        let KalamStatement::CreateTable(c) = v.remove(0) else {
            panic!("not a CREATE TABLE")
        };
        table_def(&c, |_, _| Ok(()))
    }

    /// A DEFAULT is kept as text and parsed again on every INSERT: one whose text would
    /// parse back as another value is refused, the rest are kept as written.
    #[test]
    fn defaults_are_kept_only_when_their_text_means_the_same() {
        let t =
            def(r"CREATE USER TABLE app.m (a TEXT DEFAULT 'it''s', b TEXT DEFAULT 'x\y')").unwrap();
        assert_eq!(t.columns[1].default.as_deref(), Some("'it''s'"));
        assert_eq!(t.columns[2].default.as_deref(), Some(r"'x\y'"));
        for sql in [
            "CREATE USER TABLE app.m (a TEXT DEFAULT 'a''''b')",
            r"CREATE USER TABLE app.m (a TEXT DEFAULT 'x\''')",
        ] {
            match def(sql) {
                Err(KalamError::InvalidTableDefinition(m)) => {
                    assert!(m.contains("DEFAULT of column 'a'"), "{m}")
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn automatic_and_declared_keys() {
        let t = def("CREATE USER TABLE app.m (content TEXT)").unwrap();
        assert_eq!(t.primary_key.as_str(), "id");
        assert_eq!(t.columns[0].default.as_deref(), Some("SNOWFLAKE_ID()"));
        let t = def("CREATE SHARED TABLE app.c (name TEXT, PRIMARY KEY (name))").unwrap();
        assert_eq!(t.primary_key.as_str(), "name");
        assert!(!t.columns[0].nullable);
        assert_eq!(t.flush_policy, crate::catalog::FlushPolicy::default());
    }

    #[test]
    fn invalid_definitions_are_refused_with_their_code() {
        let code = |sql: &str| def(sql).unwrap_err().code().to_string();
        assert_eq!(
            code("CREATE USER TABLE app.m (x DOUBLE PRIMARY KEY)"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a INT PRIMARY KEY, b INT PRIMARY KEY)"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (_updated INT)"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a GEOMETRY)"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a INT, a TEXT)"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE SHARED TABLE app.m (a INT) LOCATION '/x/${user_id}/'"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a INT) LOCATION '/x/../y'"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a INT) WITH (colour = 'red')"),
            "INVALID_OPTION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a INT) WITH (deleted_retention = 'soon')"),
            "INVALID_OPTION"
        );
        assert_eq!(
            code("CREATE USER TABLE app.m (a DECIMAL(50,2))"),
            "INVALID_TABLE_DEFINITION"
        );
    }

    /// A table has at most 1,600 columns, as in PostgreSQL, the key it is given counted; an
    /// ADD COLUMN past them is refused too.
    #[test]
    fn a_table_has_at_most_1600_columns() {
        let columns = |n: usize| comma_list(n, |i| format!("c{i} INT"));
        let widest = def(&format!(
            "CREATE SHARED TABLE app.w (id BIGINT PRIMARY KEY, {})",
            columns(1_599)
        ))
        .unwrap();
        assert_eq!(widest.columns.len(), 1_600);
        for sql in [
            format!("CREATE SHARED TABLE app.w ({})", columns(1_600)),
            format!(
                "CREATE SHARED TABLE app.w (id BIGINT PRIMARY KEY, {})",
                columns(1_600)
            ),
        ] {
            let err = def(&sql).unwrap_err();
            assert_eq!(err.code().to_string(), "INVALID_TABLE_DEFINITION");
            assert!(err.to_string().contains("at most 1600 columns"), "{err}");
        }
        let err = alter(&widest, add("one_more INT")).unwrap_err();
        assert_eq!(err.code().to_string(), "INVALID_TABLE_DEFINITION");
    }

    #[test]
    fn stream_tables_take_their_options_and_nothing_else() {
        let t = def("CREATE STREAM TABLE app.typing (user_name TEXT)").unwrap();
        assert_eq!(t.kind, TableKind::Stream);
        assert_eq!(t.stream, Some(StreamOptions::default()));
        assert_eq!(t.primary_key.as_str(), "id");
        assert!(!t
            .arrow_schema()
            .fields()
            .iter()
            .any(|f| f.name().starts_with('_')));
        let t = def(
            "CREATE STREAM TABLE IF NOT EXISTS app.typing (user_name TEXT) \
             WITH (retention = '10s', ephemeral = true, max_buffer = 1000)",
        )
        .unwrap();
        assert_eq!(
            t.stream,
            Some(StreamOptions {
                retention_secs: 10,
                ephemeral: true,
                max_buffer: 1000
            })
        );
        let code = |sql: &str| def(sql).unwrap_err().code().to_string();
        for (with, expected) in [
            ("retention = '0s'", "INVALID_OPTION"),
            ("retention = '1500ms'", "INVALID_OPTION"),
            ("retention = 10", "INVALID_OPTION"),
            ("retention = 'soon'", "INVALID_OPTION"),
            ("max_buffer = 0", "INVALID_OPTION"),
            ("max_buffer = 2.5", "INVALID_OPTION"),
            ("max_buffer = '10'", "INVALID_OPTION"),
            ("ephemeral = 'yes'", "INVALID_OPTION"),
            ("colour = 'red'", "INVALID_OPTION"),
            ("deleted_retention = '7d'", "INVALID_TABLE_DEFINITION"),
        ] {
            assert_eq!(
                code(&format!("CREATE STREAM TABLE app.s (a INT) WITH ({with})")),
                expected,
                "{with}"
            );
        }
        assert_eq!(
            code("CREATE STREAM TABLE app.s (a INT) LOCATION '/tmp/s'"),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code("CREATE STREAM TABLE app.s (a INT) FLUSH POLICY ROWS 10"),
            "INVALID_TABLE_DEFINITION"
        );
        for with in ["retention = '10s'", "ephemeral = true", "max_buffer = 5"] {
            assert_eq!(
                code(&format!("CREATE USER TABLE app.u (a INT) WITH ({with})")),
                "INVALID_TABLE_DEFINITION",
                "{with}"
            );
        }
    }

    fn add(sql_column: &str) -> Result<Alteration> {
        let (mut v, err) = parse_statements(&format!("ALTER TABLE app.m ADD COLUMN {sql_column}"));
        if let Some(e) = err {
            return Err(e);
        }
        let KalamStatement::AlterTable {
            change:
                crate::sql::parser::AlterChange::AddColumn {
                    column,
                    if_not_exists,
                },
            ..
        } = v.remove(0)
        else {
            panic!("not an ADD COLUMN")
        };
        Ok(Alteration::AddColumn {
            column: added_column(&column)?,
            if_not_exists,
        })
    }

    fn alter(t: &TableDef, change: Result<Alteration>) -> Result<TableDef> {
        apply_alter(t, &change?, Utc::now()).map(|next| next.expect("a change"))
    }

    fn drop_col(name: &str) -> Result<Alteration> {
        Ok(Alteration::DropColumn {
            name: name.into(),
            if_exists: false,
        })
    }

    fn modify(name: &str, data_type: KalamType) -> Result<Alteration> {
        Ok(Alteration::ModifyColumn {
            name: name.into(),
            data_type,
        })
    }

    #[test]
    fn alter_builds_versions_with_fresh_column_ids() {
        let v1 = def("CREATE USER TABLE app.m (content TEXT, n INT)").unwrap();
        assert_eq!(v1.last_column_id, 3);
        let v2 = alter(&v1, add("priority TEXT NOT NULL DEFAULT 'normal'")).unwrap();
        assert_eq!(v2.schema_version, 2);
        let priority = v2.column("priority").unwrap();
        assert_eq!((priority.id, priority.nullable), (4, false));
        assert_eq!(v2.history.len(), 2);
        assert_eq!(
            v2.history[1].change,
            "ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'"
        );
        let v3 = alter(&v2, modify("n", KalamType::BigInt)).unwrap();
        assert_eq!(v3.column("n").unwrap().data_type, KalamType::BigInt);
        assert_eq!(v3.history[2].change, "MODIFY COLUMN n INT -> BIGINT");
        let v4 = alter(&v3, drop_col("priority")).unwrap();
        assert!(v4.column("priority").is_none());
        // Added again: a new id, never the dropped column's.
        let v5 = alter(&v4, add("priority INT")).unwrap();
        assert_eq!(v5.column("priority").unwrap().id, 5);
        assert_eq!(v5.columns_of(2).unwrap()[3].id, 4);
        assert_eq!(v5.history.len(), 5);
        // No-ops.
        let same = Alteration::AddColumn {
            column: v5.column("priority").unwrap().clone(),
            if_not_exists: true,
        };
        assert!(apply_alter(&v5, &same, Utc::now()).unwrap().is_none());
        assert!(
            apply_alter(&v5, &modify("n", KalamType::BigInt).unwrap(), Utc::now())
                .unwrap()
                .is_none()
        );
        let gone = Alteration::DropColumn {
            name: "nope".into(),
            if_exists: true,
        };
        assert!(apply_alter(&v5, &gone, Utc::now()).unwrap().is_none());
        // Dropping every column but the key is allowed.
        let v6 = alter(&v5, drop_col("content")).unwrap();
        let v7 = alter(&v6, drop_col("n")).unwrap();
        let v8 = alter(&v7, drop_col("priority")).unwrap();
        assert_eq!(v8.columns.len(), 1);
    }

    #[test]
    fn bad_alters_are_refused_with_their_code() {
        let t =
            def("CREATE USER TABLE app.m (content TEXT, n INT, f FLOAT, d DECIMAL(10,2))").unwrap();
        let code = |change: Result<Alteration>| alter(&t, change).unwrap_err().code().to_string();
        assert_eq!(code(add("content TEXT")), "COLUMN_ALREADY_EXISTS");
        assert_eq!(code(add("_updated TEXT")), "SYSTEM_COLUMN_READONLY");
        assert_eq!(code(add("_seq BIGINT")), "SYSTEM_COLUMN_READONLY");
        assert_eq!(code(add("_mine TEXT")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(add("x INT NOT NULL")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(add("x INT PRIMARY KEY")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(add("x GEOMETRY")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(add("x INT UNIQUE")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(drop_col("nope")), "COLUMN_NOT_FOUND");
        assert_eq!(code(drop_col("id")), "INVALID_TABLE_DEFINITION");
        assert_eq!(code(drop_col("_deleted")), "SYSTEM_COLUMN_READONLY");
        assert_eq!(code(modify("nope", KalamType::BigInt)), "COLUMN_NOT_FOUND");
        assert_eq!(
            code(modify("id", KalamType::Int)),
            "INVALID_TABLE_DEFINITION"
        );
        assert_eq!(
            code(modify("_updated", KalamType::Text)),
            "SYSTEM_COLUMN_READONLY"
        );
        for (column, to) in [
            ("n", KalamType::SmallInt),
            ("n", KalamType::Text),
            ("n", KalamType::Double),
            ("f", KalamType::Int),
            ("content", KalamType::Json),
            (
                "d",
                KalamType::Decimal {
                    precision: 8,
                    scale: 2,
                },
            ),
            (
                "d",
                KalamType::Decimal {
                    precision: 12,
                    scale: 3,
                },
            ),
        ] {
            assert_eq!(
                code(modify(column, to)),
                "INVALID_TABLE_DEFINITION",
                "{column} -> {to:?}"
            );
        }
        for (column, to) in [
            ("n", KalamType::BigInt),
            ("f", KalamType::Double),
            (
                "d",
                KalamType::Decimal {
                    precision: 20,
                    scale: 2,
                },
            ),
        ] {
            assert!(alter(&t, modify(column, to)).is_ok(), "{column} -> {to:?}");
        }
        let s = def("CREATE STREAM TABLE app.s (a INT)").unwrap();
        assert_eq!(
            apply_alter(&s, &add("b INT").unwrap(), Utc::now())
                .unwrap_err()
                .code()
                .to_string(),
            "UNSUPPORTED_STATEMENT"
        );
    }

    #[test]
    fn every_documented_type_maps() {
        let t = def("CREATE USER TABLE app.t (a BOOLEAN, b SMALLINT, c INT, d BIGINT, e FLOAT, f DOUBLE, \
                     g DECIMAL(10,2), h TEXT, i STRING, j VARCHAR, k BYTES, l DATE, m TIMESTAMP, n JSON)")
            .unwrap();
        let types: Vec<String> = t
            .columns
            .iter()
            .skip(1)
            .map(|c| c.data_type.sql_name())
            .collect();
        assert_eq!(
            types,
            [
                "BOOLEAN",
                "SMALLINT",
                "INT",
                "BIGINT",
                "FLOAT",
                "DOUBLE",
                "DECIMAL(10,2)",
                "TEXT",
                "TEXT",
                "TEXT",
                "BYTES",
                "DATE",
                "TIMESTAMP",
                "JSON"
            ]
        );
        let t = def("CREATE USER TABLE app.t (x INT) WITH (deleted_retention = '7d')").unwrap();
        assert_eq!(t.deleted_retention_secs, Some(7 * 86_400));
    }
}
