//! The wire types of `API.md`: what `POST /api/sql` takes and returns.
//!
//! The node serialises its responses with these very types and the client parses them, so
//! the two sides cannot drift apart.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Body of `POST /api/sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One or more statements separated by `;`.
    pub sql: String,
    /// Admin only: run the request on behalf of this user (USER tables resolve to their partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_user: Option<String>,
    /// The values of `$1`, `$2`, ... in `sql`, bound as literals (never spliced into the text),
    /// so that values need no quoting; the node parses a text it has seen with params once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<serde_json::Value>>,
}

impl SqlRequest {
    /// A request of `sql` run as the token's user, without params.
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            as_user: None,
            params: None,
        }
    }

    /// The values of `$1`, `$2`, ... in the SQL.
    pub fn with_params(mut self, params: Vec<serde_json::Value>) -> Self {
        self.params = Some(params);
        self
    }

    /// Admin only: run on behalf of `user`.
    pub fn with_as_user(mut self, user: impl Into<String>) -> Self {
        self.as_user = Some(user.into());
        self
    }
}

/// A column of a result set: its name and its Arrow type as text (`Int64`, `Utf8`, `Json`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// One row: column name to JSON value, in column order.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// The result of one statement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QueryResult {
    #[serde(default)]
    pub columns: Vec<ColumnInfo>,
    #[serde(default)]
    pub rows: Vec<Row>,
    #[serde(default)]
    pub row_count: usize,
    /// Rows inserted, updated or deleted by a DML statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_rows: Option<u64>,
    /// What a DDL statement did, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Server-side time spent on this statement.
    #[serde(default)]
    pub execution_time_ms: f64,
}

/// A successful `POST /api/sql` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlSuccess {
    pub results: Vec<QueryResult>,
    pub took_ms: f64,
}

/// The error object of every failed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// Index of the statement that failed, for errors that belong to one statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_index: Option<usize>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(d) = &self.details {
            write!(f, " ({d})")?;
        }
        if let Some(i) = self.statement_index {
            write!(f, " [statement {i}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// Every response of `POST /api/sql`: `{"status": "success", ...}` or `{"status": "error", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SqlResponse {
    Success(SqlSuccess),
    Error { error: ApiError },
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal, $status:literal;)*) => {
        /// Stable, UPPER_SNAKE error codes clients can match on. A code this client does not
        /// know yet (a newer server) parses as [`ErrorCode::Other`].
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code unknown to this version of the client.
            Other(String),
        }

        impl ErrorCode {
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Other(s) => s,
                }
            }

            /// The HTTP status the node answers with for this code.
            pub fn http_status(&self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Other(_) => 500,
                }
            }

            fn parse(s: &str) -> Self {
                match s {
                    $($text => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.to_string()),
                }
            }

            /// Every code this version knows, for documentation and tests.
            pub const ALL: &'static [&'static str] = &[$($text,)*];
        }
    };
}

error_codes! {
    /// The request body is not valid JSON or lacks a field.
    InvalidRequest => "INVALID_REQUEST", 400;
    /// SQL that does not parse.
    SqlParseError => "SQL_PARSE_ERROR", 400;
    /// SQL that parses but cannot be planned or executed (unknown column, type mismatch, ...).
    SqlPlanError => "SQL_PLAN_ERROR", 400;
    /// A statement KalamDB does not support.
    UnsupportedStatement => "UNSUPPORTED_STATEMENT", 400;
    /// An identifier that is not `^[a-z][a-z0-9_]*$`, or a reserved name.
    InvalidIdentifier => "INVALID_IDENTIFIER", 400;
    /// A value that does not fit its column (NOT NULL, JSON, type).
    InvalidValue => "INVALID_VALUE", 400;
    /// A client tried to set `_updated` / `_deleted` or alter a system column.
    SystemColumnReadonly => "SYSTEM_COLUMN_READONLY", 400;
    /// A table definition that is not valid (primary key type, option value, ...).
    InvalidTableDefinition => "INVALID_TABLE_DEFINITION", 400;
    /// An option KalamDB does not know, or a bad option value.
    InvalidOption => "INVALID_OPTION", 400;
    /// Missing, malformed, expired or wrongly signed token, or a bad user id.
    Unauthorized => "UNAUTHORIZED", 401;
    /// The caller's role may not do this.
    Forbidden => "FORBIDDEN", 403;
    NamespaceNotFound => "NAMESPACE_NOT_FOUND", 404;
    TableNotFound => "TABLE_NOT_FOUND", 404;
    /// ALTER TABLE DROP COLUMN or MODIFY COLUMN of a column the table does not have.
    ColumnNotFound => "COLUMN_NOT_FOUND", 404;
    /// A `LOCATION REFERENCE`, or a storage location row, that does not exist.
    StorageLocationNotFound => "STORAGE_LOCATION_NOT_FOUND", 404;
    /// A storage location whose probe write and delete failed; `details` says why.
    LocationUnreachable => "LOCATION_UNREACHABLE", 400;
    /// A storage location name that is taken.
    StorageLocationAlreadyExists => "STORAGE_LOCATION_ALREADY_EXISTS", 409;
    /// Deleting a storage location that tables still use; `details` lists them.
    StorageLocationInUse => "STORAGE_LOCATION_IN_USE", 409;
    NamespaceAlreadyExists => "NAMESPACE_ALREADY_EXISTS", 409;
    TableAlreadyExists => "TABLE_ALREADY_EXISTS", 409;
    /// ALTER TABLE ADD COLUMN of a name the table has.
    ColumnAlreadyExists => "COLUMN_ALREADY_EXISTS", 409;
    NamespaceNotEmpty => "NAMESPACE_NOT_EMPTY", 409;
    /// An INSERT of a key that already holds a live row.
    PrimaryKeyViolation => "PRIMARY_KEY_VIOLATION", 409;
    /// An UPDATE or DELETE whose rows other writers kept changing; safe to retry.
    WriteConflict => "WRITE_CONFLICT", 409;
    /// The request body stopped arriving: no part of it for the node's `http_read_timeout_ms`.
    RequestTimeout => "REQUEST_TIMEOUT", 408;
    /// The request body is over the configured limit.
    PayloadTooLarge => "PAYLOAD_TOO_LARGE", 413;
    /// A result set over the configured `max_result_rows`: refused, never truncated.
    ResultTooLarge => "RESULT_TOO_LARGE", 413;
    /// A query that needs more memory than the node's `max_query_memory_bytes`.
    ResourcesExhausted => "RESOURCES_EXHAUSTED", 413;
    /// A statement that ran longer than the node's `statement_timeout_ms`; it was stopped
    /// before it wrote anything.
    StatementTimeout => "STATEMENT_TIMEOUT", 504;
    /// Integer arithmetic whose result does not fit its type (`BIGINT out of range`);
    /// nothing was written.
    NumericOutOfRange => "NUMERIC_OUT_OF_RANGE", 400;
    /// Integer division or remainder by zero.
    DivisionByZero => "DIVISION_BY_ZERO", 400;
    /// A bug or an unexpected storage failure; details stay in the server log.
    InternalError => "INTERNAL_ERROR", 500;
    /// The node is starting up or its storage is unavailable.
    NotReady => "NOT_READY", 503;
    /// A live query that is not one `SELECT <columns> FROM <table> [WHERE ...]`, names an
    /// unknown column, or a WebSocket message that is not valid.
    InvalidQuery => "INVALID_QUERY", 400;
    /// A `query_id` already used by another subscription of the connection.
    DuplicateQueryId => "DUPLICATE_QUERY_ID", 409;
    /// A subscription past the connection's `ws_max_subscriptions`; the others stay.
    TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS", 429;
    /// A WebSocket upgrade while the node holds `ws_max_connections` connections; retry later.
    TooManyConnections => "TOO_MANY_CONNECTIONS", 503;
    /// `from_seq` is older than the change log retains (or newer than the table has):
    /// refetch with `last_rows`.
    ResumeGap => "RESUME_GAP", 410;
    /// A `KILL LIVE QUERY` of a live id that does not exist (or belongs to someone else).
    LiveQueryNotFound => "LIVE_QUERY_NOT_FOUND", 404;
    /// The subscription was ended by `KILL LIVE QUERY`.
    LiveQueryKilled => "LIVE_QUERY_KILLED", 410;
    /// DROP TABLE while live queries use the table, ALTER TABLE DROP COLUMN while one
    /// selects or filters on the column, MODIFY COLUMN while one filters on it; `details`
    /// lists their live ids.
    TableInUse => "TABLE_IN_USE", 409;
    /// The table was dropped while subscribed to.
    TableDropped => "TABLE_DROPPED", 410;
    /// RESTORE NAMESPACE or SHOW BACKUP of a backup with a file whose size or sha256
    /// differs from its manifest, a missing file, or one that does not parse; `details`
    /// names the file.
    BackupCorrupt => "BACKUP_CORRUPT", 400;
    /// RESTORE NAMESPACE or SHOW BACKUP of a URL that holds no backup.
    BackupNotFound => "BACKUP_NOT_FOUND", 404;
    /// BACKUP NAMESPACE to a URL that already holds a backup.
    BackupAlreadyExists => "BACKUP_ALREADY_EXISTS", 409;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_round_trips_with_api_md_shape() {
        let text = r#"{"status":"success","results":[{"columns":[{"name":"id","type":"Int64"}],
            "rows":[{"id":1}],"row_count":1,"execution_time_ms":0.42},
            {"affected_rows":3,"row_count":0,"rows":[],"columns":[],"execution_time_ms":0.31}],
            "took_ms":0.9}"#;
        let parsed: SqlResponse = serde_json::from_str(text).unwrap();
        let SqlResponse::Success(ok) = &parsed else {
            panic!("not success: {parsed:?}")
        };
        assert_eq!(ok.results[0].columns[0].data_type, "Int64");
        assert_eq!(ok.results[1].affected_rows, Some(3));
        let again: SqlResponse =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn error_shape_and_unknown_codes() {
        let text = r#"{"status":"error","error":{"code":"NAMESPACE_NOT_EMPTY",
            "message":"m","details":"tables: a","statement_index":0}}"#;
        let SqlResponse::Error { error } = serde_json::from_str(text).unwrap() else {
            panic!("not an error")
        };
        assert_eq!(error.code, ErrorCode::NamespaceNotEmpty);
        assert_eq!(error.code.http_status(), 409);
        let future: ApiError =
            serde_json::from_str(r#"{"code":"SOMETHING_NEW","message":"x"}"#).unwrap();
        assert_eq!(future.code, ErrorCode::Other("SOMETHING_NEW".into()));
        assert_eq!(serde_json::to_value(&future.code).unwrap(), "SOMETHING_NEW");
    }
}
