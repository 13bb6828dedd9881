//! Why a reconcile failed. Every variant names the thing that failed in words an operator of
//! the cluster can act on, and maps to a short condition reason and a metrics label.

use kalam_client::ClientError;

/// A failed reconcile; the controller retries it with exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing a finalizer failed, or the apply/cleanup step inside it did.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A node answered a statement with an error, or could not be reached.
    #[error("SQL on {endpoint}: {}", .source.with_causes())]
    Sql {
        endpoint: String,
        #[source]
        source: ClientError,
    },
    /// A node took longer than the operator waits for one statement.
    #[error("SQL on {endpoint}: no answer within {seconds} s")]
    SqlTimeout { endpoint: String, seconds: u64 },
    /// The JWT Secret of the cluster is missing or lacks its key.
    #[error("JWT secret: {0}")]
    JwtSecret(String),
    /// The admin token could not be minted.
    #[error("minting the admin token: {0}")]
    Token(#[from] kalam_client::TokenError),
    /// A delete the node refused because the object is still in use; retried until it is not.
    #[error("{0}")]
    DeleteBlocked(String),
    /// The object lacks a field the API server always sets (name, namespace).
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// Rendering an object failed.
    #[error("rendering {what}: {message}")]
    Render { what: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error behind the finalizer wrapper, where the interesting part is.
    pub fn root(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.root(),
                _ => self,
            },
            other => other,
        }
    }

    /// A condition reason (UpperCamelCase) for this failure.
    pub fn reason(&self) -> &'static str {
        match self.root() {
            Error::Kube(_) | Error::Finalizer(_) => "KubernetesApiError",
            Error::Sql { source, .. } if source.is_connect() => "ClusterUnreachable",
            Error::Sql { source, .. } if source.api_error().is_none() => "ClusterUnreachable",
            Error::Sql { .. } => "SqlFailed",
            Error::SqlTimeout { .. } => "ClusterUnreachable",
            Error::JwtSecret(_) | Error::Token(_) => "JwtSecretUnavailable",
            Error::DeleteBlocked(_) => "DeleteBlocked",
            Error::MissingField(_) | Error::Render { .. } => "InternalError",
        }
    }

    /// Label of the error counter (snake case, few values).
    pub fn metric_label(&self) -> &'static str {
        match self.root() {
            Error::Kube(_) | Error::Finalizer(_) => "kube",
            Error::Sql { .. } | Error::SqlTimeout { .. } => "sql",
            Error::JwtSecret(_) | Error::Token(_) => "jwt_secret",
            Error::DeleteBlocked(_) => "delete_blocked",
            Error::MissingField(_) | Error::Render { .. } => "internal",
        }
    }
}

/// A spec the operator refuses: reported as a condition, not retried until the spec changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_look_through_the_finalizer() {
        let blocked = Error::DeleteBlocked("tables: a".into());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::CleanupFailed(
            blocked,
        )));
        assert_eq!(wrapped.reason(), "DeleteBlocked");
        assert_eq!(wrapped.metric_label(), "delete_blocked");
        assert_eq!(wrapped.to_string(), "failed to clean up object: tables: a");
        let timeout = Error::SqlTimeout {
            endpoint: "http://x".into(),
            seconds: 30,
        };
        assert_eq!(timeout.reason(), "ClusterUnreachable");
        assert_eq!(timeout.metric_label(), "sql");
    }
}
