//! Types that say what they hold: validated identifiers used across the node.
//!
//! Validation happens once, at the edge (parser, token verification); everything inside the
//! node can then trust that a `UserId` is safe to put in a storage key or path.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::KalamError;

/// `^[a-z][a-z0-9_]*$`, at most 64 bytes: the rule for namespace, table and column names.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

macro_rules! identifier_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, KalamError> {
                let s = s.into();
                if is_identifier(&s) {
                    Ok(Self(s))
                } else {
                    Err(KalamError::InvalidIdentifier(format!(
                        "{} '{}' must match ^[a-z][a-z0-9_]*$ (at most 64 characters)",
                        $what,
                        crate::error::clip(&s)
                    )))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = KalamError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier_type!(
    /// A namespace name (`app`). `system` is reserved for the node's own tables.
    NamespaceId,
    "namespace name"
);
identifier_type!(
    /// A table name inside a namespace (`messages`).
    TableName,
    "table name"
);
identifier_type!(
    /// A user column name. Names starting with `_` are system columns and never match.
    ColumnName,
    "column name"
);

/// The namespace that holds the node's own tables.
pub const SYSTEM_NAMESPACE: &str = "system";

/// A user id from a token's `sub` claim or an admin's `as_user`: `^[A-Za-z0-9_.@-]{1,128}$`.
///
/// It is substituted into storage keys and (later) object-store paths, so `..`, `/` and `:`
/// can never appear in it: `.` alone is allowed by the pattern but `.` and `..` as whole ids
/// are refused too, since they are path components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn new(s: impl Into<String>) -> Result<Self, KalamError> {
        let s = s.into();
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
            && s != "."
            && s != "..";
        if ok {
            Ok(Self(s))
        } else {
            Err(KalamError::InvalidUserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = KalamError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<UserId> for String {
    fn from(v: UserId) -> String {
        v.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `namespace.table`: how a table is named in SQL, logs and errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub namespace: NamespaceId,
    pub table: TableName,
}

impl TableId {
    pub fn new(namespace: NamespaceId, table: TableName) -> Self {
        Self { namespace, table }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.table)
    }
}

/// Caller's role, from the token's `role` claim (shared with `kalam-client`'s token claims).
pub use kalam_client::token::Role;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_contract() {
        for ok in ["app", "a1_b", "x"] {
            assert!(NamespaceId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "App", "1a", "_x", "a-b", "a.b", "é", &"a".repeat(65)] {
            assert!(NamespaceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_cannot_escape_a_path_or_key() {
        for ok in ["alice", "a.b@c-d_e", "U1"] {
            assert!(UserId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "a:b",
            "a b",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(UserId::new(bad).is_err(), "{bad}");
        }
    }
}
