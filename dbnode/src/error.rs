//! The node's error type and its one mapping to API error codes.
//!
//! Modules raise `KalamError` (or their own error, converted into it at the boundary); the
//! API layer turns it into the wire `ApiError` through [`KalamError::to_api`] and nowhere else.
//! Internal details (paths, RocksDB messages) are logged, never sent to the client.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use kalam_client::wire::{ApiError, ErrorCode};

pub type Result<T, E = KalamError> = std::result::Result<T, E>;

/// Cuts user-provided text to a length that is safe to echo back in an error.
pub fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KalamError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    SqlParse(String),
    #[error("{0}")]
    SqlPlan(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidIdentifier(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("column '{0}' is a system column set by the server; it cannot be written or altered")]
    SystemColumnReadonly(String),
    #[error("{0}")]
    InvalidTableDefinition(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("user id must match ^[A-Za-z0-9_.@-]{{1,128}}$")]
    InvalidUserId,
    #[error("{0}")]
    Forbidden(String),
    #[error("namespace '{0}' does not exist")]
    NamespaceNotFound(String),
    #[error("table '{0}' does not exist")]
    TableNotFound(String),
    #[error("column '{column}' does not exist in {table}")]
    ColumnNotFound { table: String, column: String },
    #[error("column '{column}' already exists in {table}")]
    ColumnAlreadyExists { table: String, column: String },
    #[error("storage location '{0}' does not exist")]
    StorageLocationNotFound(String),
    /// A table created without `LOCATION` on a node whose `default_location` names no row.
    #[error("the default storage location '{0}' (default_location in the node's configuration) does not exist; add it to system.storage_locations, name a LOCATION, or change default_location")]
    DefaultStorageLocationNotFound(String),
    #[error("storage location '{0}' already exists")]
    StorageLocationAlreadyExists(String),
    #[error("storage location '{name}' is used by {} table(s)", tables.len())]
    StorageLocationInUse { name: String, tables: Vec<String> },
    /// The reason is built by the cold tier from the store's error without secrets.
    #[error("the storage location cannot be reached")]
    LocationUnreachable(String),
    #[error("namespace '{0}' already exists")]
    NamespaceAlreadyExists(String),
    #[error("table '{0}' already exists")]
    TableAlreadyExists(String),
    #[error("namespace '{namespace}' still has tables")]
    NamespaceNotEmpty {
        namespace: String,
        tables: Vec<String>,
    },
    #[error("a row with primary key {key} already exists in {table}")]
    PrimaryKeyViolation { table: String, key: String },
    #[error("rows of {0} kept changing under this statement; try again")]
    WriteConflict(String),
    #[error("the request body stopped arriving: nothing for {0} ms (http_read_timeout_ms)")]
    RequestTimeout(u64),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "the result has more than {0} rows (max_result_rows); add a LIMIT or a narrower WHERE"
    )]
    ResultTooLarge(usize),
    #[error("the query needs more memory than max_query_memory_bytes allows: {0}")]
    ResourcesExhausted(String),
    #[error("the statement ran longer than {0} ms (statement_timeout_ms) and was stopped; nothing it would have written was written")]
    StatementTimeout(u64),
    /// Integer arithmetic whose result does not fit its type (`bigint out of range`).
    #[error("{0}")]
    NumericOutOfRange(String),
    #[error("division by zero")]
    DivisionByZero,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("catalog I/O error: {0}")]
    CatalogIo(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the node is not ready")]
    NotReady,
    #[error("{0}")]
    InvalidQuery(String),
    #[error("query_id '{0}' is already used by a subscription of this connection")]
    DuplicateQueryId(String),
    #[error("the node already holds {0} WebSocket connections (ws_max_connections); try again later or close one")]
    TooManyConnections(usize),
    #[error("this connection already has {limit} subscriptions (ws_max_subscriptions); unsubscribe one, or open another connection")]
    TooManySubscriptions { limit: usize },
    #[error("changes after seq {from_seq} are no longer retained (oldest resumable seq is {oldest}); refetch with last_rows")]
    ResumeGap { from_seq: u64, oldest: u64 },
    #[error("live query '{0}' does not exist")]
    LiveQueryNotFound(String),
    #[error("{what} is used by {} live quer{}", live_ids.len(), if live_ids.len() == 1 { "y" } else { "ies" })]
    TableInUse { what: String, live_ids: Vec<String> },
    /// A backup file whose size or sha256 differs from the backup's manifest, that is
    /// missing, or that does not parse; `file` is its path inside the backup.
    #[error("backup file '{file}' is corrupt: {reason}")]
    BackupCorrupt { file: String, reason: String },
    #[error("there is no backup at '{0}' (no manifest.json)")]
    BackupNotFound(String),
    #[error("'{0}' already holds a backup; back up to a new URL")]
    BackupAlreadyExists(String),
}

impl KalamError {
    pub fn code(&self) -> ErrorCode {
        use KalamError::*;
        match self {
            InvalidRequest(_) => ErrorCode::InvalidRequest,
            SqlParse(_) => ErrorCode::SqlParseError,
            SqlPlan(_) => ErrorCode::SqlPlanError,
            Unsupported(_) => ErrorCode::UnsupportedStatement,
            InvalidIdentifier(_) => ErrorCode::InvalidIdentifier,
            InvalidValue(_) => ErrorCode::InvalidValue,
            SystemColumnReadonly(_) => ErrorCode::SystemColumnReadonly,
            InvalidTableDefinition(_) => ErrorCode::InvalidTableDefinition,
            InvalidOption(_) => ErrorCode::InvalidOption,
            Unauthorized(_) | InvalidUserId => ErrorCode::Unauthorized,
            Forbidden(_) => ErrorCode::Forbidden,
            NamespaceNotFound(_) => ErrorCode::NamespaceNotFound,
            TableNotFound(_) => ErrorCode::TableNotFound,
            ColumnNotFound { .. } => ErrorCode::ColumnNotFound,
            ColumnAlreadyExists { .. } => ErrorCode::ColumnAlreadyExists,
            NamespaceAlreadyExists(_) => ErrorCode::NamespaceAlreadyExists,
            StorageLocationNotFound(_) | DefaultStorageLocationNotFound(_) => {
                ErrorCode::StorageLocationNotFound
            }
            StorageLocationAlreadyExists(_) => ErrorCode::StorageLocationAlreadyExists,
            StorageLocationInUse { .. } => ErrorCode::StorageLocationInUse,
            LocationUnreachable(_) => ErrorCode::LocationUnreachable,
            TableAlreadyExists(_) => ErrorCode::TableAlreadyExists,
            NamespaceNotEmpty { .. } => ErrorCode::NamespaceNotEmpty,
            PrimaryKeyViolation { .. } => ErrorCode::PrimaryKeyViolation,
            WriteConflict(_) => ErrorCode::WriteConflict,
            RequestTimeout(_) => ErrorCode::RequestTimeout,
            PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ResultTooLarge(_) => ErrorCode::ResultTooLarge,
            ResourcesExhausted(_) => ErrorCode::ResourcesExhausted,
            StatementTimeout(_) => ErrorCode::StatementTimeout,
            TooManyConnections(_) => ErrorCode::TooManyConnections,
            NumericOutOfRange(_) => ErrorCode::NumericOutOfRange,
            DivisionByZero => ErrorCode::DivisionByZero,
            Storage(_) | CatalogIo(_) | Internal(_) => ErrorCode::InternalError,
            NotReady => ErrorCode::NotReady,
            InvalidQuery(_) => ErrorCode::InvalidQuery,
            DuplicateQueryId(_) => ErrorCode::DuplicateQueryId,
            TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            ResumeGap { .. } => ErrorCode::ResumeGap,
            LiveQueryNotFound(_) => ErrorCode::LiveQueryNotFound,
            TableInUse { .. } => ErrorCode::TableInUse,
            BackupCorrupt { .. } => ErrorCode::BackupCorrupt,
            BackupNotFound(_) => ErrorCode::BackupNotFound,
            BackupAlreadyExists(_) => ErrorCode::BackupAlreadyExists,
        }
    }

    /// The error as the client sees it. Internal errors are logged in full here and answered
    /// with a generic message, so no path, secret or backtrace reaches the wire.
    pub fn to_api(&self, statement_index: Option<usize>) -> ApiError {
        let code = self.code();
        let (message, details) = match self {
            KalamError::Storage(_) | KalamError::CatalogIo(_) | KalamError::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                ("internal error; see the node's log".to_string(), None)
            }
            KalamError::NamespaceNotEmpty { tables, .. }
            | KalamError::StorageLocationInUse { tables, .. } => (
                self.to_string(),
                Some(format!("tables: {}", tables.join(", "))),
            ),
            KalamError::LocationUnreachable(reason) => (self.to_string(), Some(reason.clone())),
            KalamError::BackupCorrupt { file, .. } => {
                (self.to_string(), Some(format!("file: {file}")))
            }
            KalamError::TableInUse { live_ids, .. } => (
                self.to_string(),
                Some(format!("live queries: {}", live_ids.join(", "))),
            ),
            other => (other.to_string(), None),
        };
        ApiError {
            code,
            message,
            details,
            statement_index,
        }
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        KalamError::Storage(e.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        KalamError::Internal(e.to_string())
    }

    /// Wraps this error so it can travel through DataFusion (a `DataSink`, a UDF) and come
    /// back out typed in [`From<DataFusionError>`].
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

impl From<KalamError> for DataFusionError {
    fn from(e: KalamError) -> Self {
        e.into_datafusion()
    }
}

impl From<rocksdb::Error> for KalamError {
    fn from(e: rocksdb::Error) -> Self {
        KalamError::Storage(e.into_string())
    }
}

impl From<DataFusionError> for KalamError {
    /// DataFusion errors are the planner's verdict on the client's SQL, except for the ones
    /// that wrap our own errors (from sinks) and resource/IO failures.
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<KalamError>() {
                Ok(k) => *k,
                Err(other) => KalamError::Internal(other.to_string()),
            },
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
                KalamError::from(*inner)
            }
            DataFusionError::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
                Ok(e) => KalamError::from(e),
                Err(shared) => from_shared(&shared),
            },
            // Several errors at once: the first decides, as it would alone.
            DataFusionError::Collection(mut errors) if !errors.is_empty() => {
                KalamError::from(errors.swap_remove(0))
            }
            DataFusionError::SQL(e, _) => KalamError::SqlParse(clean_df_message(&e.to_string())),
            DataFusionError::IoError(e) => KalamError::Internal(e.to_string()),
            DataFusionError::ObjectStore(e) => KalamError::Internal(e.to_string()),
            DataFusionError::ParquetError(e) => KalamError::Internal(e.to_string()),
            DataFusionError::ResourcesExhausted(m) => KalamError::ResourcesExhausted(clip(&m)),
            DataFusionError::Internal(m) => KalamError::Internal(m),
            DataFusionError::ExecutionJoin(e) => KalamError::Internal(e.to_string()),
            DataFusionError::ArrowError(e, backtrace) => match from_arrow(&e) {
                Some(ours) => ours,
                None if e.to_string().contains("non-nullable") => {
                    KalamError::InvalidValue(format!(
                        "NULL in a NOT NULL column: {}",
                        clean_df_message(&e.to_string())
                    ))
                }
                None => KalamError::SqlPlan(clean_df_message(
                    &DataFusionError::ArrowError(e, backtrace).to_string(),
                )),
            },
            DataFusionError::Execution(m) if m.contains("non-nullable") => {
                KalamError::InvalidValue(format!(
                    "NULL in a NOT NULL column: {}",
                    clean_df_message(&m)
                ))
            }
            other => KalamError::SqlPlan(clean_df_message(&other.to_string())),
        }
    }
}

/// An error still shared (one error reported by several partitions, e.g. a hash join's build
/// side): its root decides, with the codes the owned error would get, so that a join over the
/// memory limit is 413 as a sort is, and a storage failure stays internal (its text, with
/// object paths, never reaches the client).
fn from_shared(shared: &DataFusionError) -> KalamError {
    let plan = || KalamError::SqlPlan(clean_df_message(&shared.to_string()));
    match shared.find_root() {
        DataFusionError::External(inner) => match inner.downcast_ref::<KalamError>() {
            Some(ours) => ours.clone(),
            None => KalamError::Internal(inner.to_string()),
        },
        DataFusionError::ArrowError(e, _) => from_arrow(e).unwrap_or_else(plan),
        DataFusionError::ResourcesExhausted(m) => KalamError::ResourcesExhausted(clip(m)),
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_) => KalamError::Internal(shared.to_string()),
        _ => plan(),
    }
}

/// The Arrow errors that are the client's value's fault, with their own codes.
fn from_arrow(e: &ArrowError) -> Option<KalamError> {
    match e {
        ArrowError::CastError(_) | ArrowError::ParseError(_) => {
            Some(KalamError::InvalidValue(clean_df_message(&e.to_string())))
        }
        ArrowError::DivideByZero => Some(KalamError::DivisionByZero),
        // Division's own overflow (`i64::MIN / -1`), a decimal result over its precision;
        // integer `+ - *` raise `NumericOutOfRange` themselves (sql/arithmetic.rs).
        ArrowError::ArithmeticOverflow(m) => Some(KalamError::NumericOutOfRange(format!(
            "value out of range: {}",
            clip(m.strip_prefix("Overflow happened on: ").unwrap_or(m))
        ))),
        _ => None,
    }
}

/// DataFusion messages name our internal catalog (`kalam.`); users never wrote that prefix.
fn clean_df_message(m: &str) -> String {
    m.replace("kalam.", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e = KalamError::Storage("IO error: /secret/path/000012.sst".into());
        let api = e.to_api(Some(2));
        assert_eq!(api.code, ErrorCode::InternalError);
        assert!(!api.message.contains("/secret"));
        assert_eq!(api.statement_index, Some(2));
    }

    #[test]
    fn our_errors_survive_a_trip_through_datafusion() {
        let df = KalamError::Forbidden("no".into()).into_datafusion();
        let back = KalamError::from(DataFusionError::Context("sink".into(), Box::new(df)));
        assert_eq!(back.code(), ErrorCode::Forbidden);
    }

    /// One error reported by several partitions (still shared when it reaches us, as a hash
    /// join's build side reports it) gets the code the error would get alone.
    #[test]
    fn shared_errors_get_the_codes_of_their_root() {
        let shared = |e: DataFusionError| {
            let e = std::sync::Arc::new(e);
            let keep = e.clone();
            (KalamError::from(DataFusionError::Shared(e)), keep)
        };
        let (memory, _keep) = shared(DataFusionError::ResourcesExhausted("join".into()));
        assert_eq!(memory.code(), ErrorCode::ResourcesExhausted);
        let io = std::io::Error::other("/data/storage/app/t/part-1.parquet: gone");
        let (storage, _keep) = shared(DataFusionError::IoError(io));
        let api = storage.to_api(None);
        assert_eq!(api.code, ErrorCode::InternalError);
        assert!(!api.message.contains("/data"), "{}", api.message);
        let (ours, _keep) = shared(KalamError::DivisionByZero.into_datafusion());
        assert_eq!(ours.code(), ErrorCode::DivisionByZero);
        let (plan, _keep) = shared(DataFusionError::Plan("no such column".into()));
        assert_eq!(plan.code(), ErrorCode::SqlPlanError);
        let collected = KalamError::from(DataFusionError::Collection(vec![
            DataFusionError::ResourcesExhausted("first".into()),
            DataFusionError::Plan("second".into()),
        ]));
        assert_eq!(collected.code(), ErrorCode::ResourcesExhausted);
    }
}
