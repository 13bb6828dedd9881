//! SQL against a cluster's nodes, as the operator: the admin token minted from the cluster's
//! JWT Secret, the statements that create, align and drop namespaces and storage locations on
//! every node, and the parsing of what the nodes answer.
//!
//! Statement text and answer parsing are pure functions (tested without a node); the
//! `AdminSql` methods only sequence them over the nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kalam_client::{ErrorCode, KalamClient, Role, SqlSuccess};
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::context::Context;
use crate::crd::{KalamCluster, LocationType, ScalarMap};
use crate::error::{Error, Result};

/// `sub` of the operator's tokens, as it appears in the nodes' logs.
pub const ADMIN_SUBJECT: &str = "kalam-operator";
/// Tokens are minted per reconcile and live just long enough for it.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Longest wait for one statement; DDL on a healthy node takes milliseconds.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The JWT secret of `cluster`, as the nodes get it in `KALAMDB_JWT_SECRET`.
pub async fn jwt_secret(client: &kube::Client, cluster: &KalamCluster) -> Result<Vec<u8>> {
    let (name, key) = cluster.jwt_secret();
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = api
        .get_opt(&name)
        .await?
        .ok_or_else(|| Error::JwtSecret(format!("Secret {namespace}/{name} does not exist")))?;
    secret_value(&secret, &key)
        .ok_or_else(|| Error::JwtSecret(format!("Secret {namespace}/{name} has no key {key}")))
}

/// The non-empty value of `key` in `secret`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .filter(|v| !v.is_empty())
}

/// Admin SQL sessions to every node of one cluster.
pub struct AdminSql {
    nodes: Vec<(String, KalamClient)>,
}

/// What a delete on every node came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropOutcome {
    /// Gone from every node (or never there).
    Dropped,
    /// Refused: these tables still use it (on at least one node).
    Blocked(Vec<String>),
}

/// A namespace as `SHOW NAMESPACES` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceRow {
    pub name: String,
    pub table_count: i64,
    pub options: serde_json::Map<String, Value>,
}

/// A row of `system.storage_locations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationRow {
    pub name: String,
    pub location_type: String,
    pub path: String,
    pub credentials_ref: Option<String>,
    pub usage_count: i64,
}

/// The row a StorageLocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLocation {
    pub name: String,
    pub location_type: LocationType,
    pub path: String,
    pub credentials_ref: Option<String>,
}

impl AdminSql {
    /// Sessions to every node of `cluster`, with a fresh admin token minted from its Secret.
    pub async fn connect(ctx: &Context, cluster: &KalamCluster) -> Result<Self> {
        let secret = jwt_secret(&ctx.client, cluster).await?;
        let token = kalam_client::token::mint(&secret, ADMIN_SUBJECT, Role::Admin, TOKEN_TTL)?;
        let nodes = ctx
            .endpoints(cluster)
            .into_iter()
            .map(|endpoint| {
                let client = ctx.sql_client(&endpoint, &token)?;
                Ok((endpoint, client))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdminSql { nodes })
    }

    /// Number of nodes the statements go to.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    async fn exec(endpoint: &str, client: &KalamClient, sql: &str) -> Result<SqlSuccess> {
        tracing::debug!(endpoint, sql, "SQL");
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.sql(sql)).await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(source)) => Err(Error::Sql {
                endpoint: endpoint.to_string(),
                source,
            }),
            Err(_) => Err(Error::SqlTimeout {
                endpoint: endpoint.to_string(),
                seconds: STATEMENT_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Creates `name` where it is missing and resets its options where they differ; returns
    /// the largest table count among the nodes.
    pub async fn ensure_namespace(&self, name: &str, options: &ScalarMap) -> Result<i64> {
        let mut tables = 0;
        for (endpoint, client) in &self.nodes {
            let shown = Self::exec(endpoint, client, "SHOW NAMESPACES").await?;
            match find_namespace(&shown, name) {
                None => {
                    Self::exec(endpoint, client, &create_namespace_sql(name, options)).await?;
                }
                Some(row) => {
                    let change = options_change(&row.options, options);
                    if let Some(sql) = alter_namespace_sql(name, &change) {
                        Self::exec(endpoint, client, &sql).await?;
                    }
                    tables = tables.max(row.table_count);
                }
            }
        }
        Ok(tables)
    }

    /// Drops `name` from every node, unless one of them still has tables in it: then nothing
    /// is dropped anywhere and the tables are returned.
    pub async fn drop_namespace(&self, name: &str) -> Result<DropOutcome> {
        let mut blocked = BTreeSet::new();
        let mut present = Vec::new();
        for (endpoint, client) in &self.nodes {
            let shown = Self::exec(endpoint, client, "SHOW NAMESPACES").await?;
            match find_namespace(&shown, name) {
                Some(row) if row.table_count > 0 => {
                    let listed =
                        Self::exec(endpoint, client, &format!("SHOW TABLES IN {name}")).await?;
                    blocked.extend(column_strings(&listed, "table_name"));
                }
                Some(_) => present.push((endpoint, client)),
                None => {}
            }
        }
        if !blocked.is_empty() {
            return Ok(DropOutcome::Blocked(blocked.into_iter().collect()));
        }
        for (endpoint, client) in present {
            match Self::exec(
                endpoint,
                client,
                &format!("DROP NAMESPACE IF EXISTS {name}"),
            )
            .await
            {
                Ok(_) => {}
                Err(e) => match blocking_tables(&e, &ErrorCode::NamespaceNotEmpty) {
                    // A table appeared since SHOW NAMESPACES.
                    Some(tables) => blocked.extend(tables),
                    None => return Err(e),
                },
            }
        }
        Ok(if blocked.is_empty() {
            DropOutcome::Dropped
        } else {
            DropOutcome::Blocked(blocked.into_iter().collect())
        })
    }

    /// Inserts the location where it is missing and updates it where it differs; returns the
    /// largest `usage_count` among the nodes.
    pub async fn ensure_location(&self, desired: &DesiredLocation) -> Result<i64> {
        let mut usage = 0;
        for (endpoint, client) in &self.nodes {
            let found = Self::exec(endpoint, client, &select_location_sql(&desired.name)).await?;
            match first_location(&found) {
                None => {
                    Self::exec(endpoint, client, &insert_location_sql(desired)).await?;
                }
                Some(row) => {
                    if location_differs(&row, desired) {
                        Self::exec(endpoint, client, &update_location_sql(desired)).await?;
                    }
                    usage = usage.max(row.usage_count);
                }
            }
        }
        Ok(usage)
    }

    /// The tables that use location `name` on any node, `<namespace>.<table>`, sorted.
    pub async fn tables_using_location(&self, name: &str) -> Result<Vec<String>> {
        let mut tables = std::collections::BTreeSet::new();
        for (endpoint, client) in &self.nodes {
            let found = Self::exec(endpoint, client, &tables_using_location_sql(name)).await?;
            for row in found.results.iter().flat_map(|r| r.rows.iter()) {
                if let (Some(ns), Some(table)) = (
                    row.get("namespace").and_then(Value::as_str),
                    row.get("table_name").and_then(Value::as_str),
                ) {
                    tables.insert(format!("{ns}.{table}"));
                }
            }
        }
        Ok(tables.into_iter().collect())
    }

    /// Deletes the location from every node, unless tables use it on one of them: then
    /// nothing is deleted anywhere and the tables are returned.
    pub async fn delete_location(&self, name: &str) -> Result<DropOutcome> {
        let mut in_use = Vec::new();
        for (endpoint, client) in &self.nodes {
            let found = Self::exec(endpoint, client, &select_location_sql(name)).await?;
            if first_location(&found).is_some_and(|row| row.usage_count > 0) {
                in_use.push((endpoint, client));
            }
        }
        let mut blocked = BTreeSet::new();
        if !in_use.is_empty() {
            // The node names the tables only in its refusal, so ask where it will refuse.
            for (endpoint, client) in in_use {
                match Self::exec(endpoint, client, &delete_location_sql(name)).await {
                    Ok(_) => {}
                    Err(e) => match blocking_tables(&e, &ErrorCode::StorageLocationInUse) {
                        Some(tables) => blocked.extend(tables),
                        None => return Err(e),
                    },
                }
            }
            if !blocked.is_empty() {
                return Ok(DropOutcome::Blocked(blocked.into_iter().collect()));
            }
        }
        for (endpoint, client) in &self.nodes {
            match Self::exec(endpoint, client, &delete_location_sql(name)).await {
                Ok(_) => {}
                Err(e) => match blocking_tables(&e, &ErrorCode::StorageLocationInUse) {
                    Some(tables) => blocked.extend(tables),
                    None => return Err(e),
                },
            }
        }
        Ok(if blocked.is_empty() {
            DropOutcome::Dropped
        } else {
            DropOutcome::Blocked(blocked.into_iter().collect())
        })
    }
}

/// The tables named by a refusal with `code` (`details: "tables: a, b"`), or `None` when `e`
/// is another failure.
fn blocking_tables(e: &Error, code: &ErrorCode) -> Option<Vec<String>> {
    let Error::Sql { source, .. } = e else {
        return None;
    };
    let api = source.api_error()?;
    (api.code == *code).then(|| tables_from_details(api.details.as_deref()))
}

/// `"tables: a, b"` -> `["a", "b"]`.
pub fn tables_from_details(details: Option<&str>) -> Vec<String> {
    let Some(d) = details else {
        return Vec::new();
    };
    d.trim()
        .strip_prefix("tables:")
        .unwrap_or(d)
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A JSON scalar as a SQL literal (`NULL` removes an option).
pub fn literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_string(),
        Value::Bool(true) => "TRUE".to_string(),
        Value::Bool(false) => "FALSE".to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        // Refused by validation before any SQL is written; kept total as a string.
        other => quote(&other.to_string()),
    }
}

/// `a = 1, b = 'x'` (keys are validated identifiers).
pub fn option_list(options: &ScalarMap) -> String {
    options
        .iter()
        .map(|(k, v)| format!("{k} = {}", literal(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn create_namespace_sql(name: &str, options: &ScalarMap) -> String {
    if options.is_empty() {
        format!("CREATE NAMESPACE IF NOT EXISTS {name}")
    } else {
        format!(
            "CREATE NAMESPACE IF NOT EXISTS {name} WITH OPTIONS ({})",
            option_list(options)
        )
    }
}

/// What `ALTER NAMESPACE ... SET OPTIONS` must say to turn `current` into `desired`: the node
/// merges options, so keys set by hand get `NULL` (removed) and changed values are restated.
pub fn options_change(current: &serde_json::Map<String, Value>, desired: &ScalarMap) -> ScalarMap {
    let mut change: ScalarMap = desired
        .iter()
        .filter(|(k, v)| current.get(k.as_str()) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for k in current.keys() {
        if !desired.contains_key(k) {
            change.insert(k.clone(), Value::Null);
        }
    }
    change
}

/// `ALTER NAMESPACE` for `change`, or `None` when there is nothing to change.
pub fn alter_namespace_sql(name: &str, change: &ScalarMap) -> Option<String> {
    (!change.is_empty()).then(|| {
        format!(
            "ALTER NAMESPACE {name} SET OPTIONS ({})",
            option_list(change)
        )
    })
}

/// The row of `name` in a `SHOW NAMESPACES` answer.
pub fn find_namespace(shown: &SqlSuccess, name: &str) -> Option<NamespaceRow> {
    rows(shown)
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .map(|r| NamespaceRow {
            name: name.to_string(),
            table_count: r.get("table_count").and_then(Value::as_i64).unwrap_or(0),
            options: match r.get("options") {
                Some(Value::Object(o)) => o.clone(),
                // Older nodes print the options as JSON text.
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
                _ => serde_json::Map::new(),
            },
        })
}

/// The tables whose location was resolved from the row `name` (what its `usage_count`
/// counts).
pub fn tables_using_location_sql(name: &str) -> String {
    format!(
        "SELECT namespace, table_name FROM system.tables WHERE storage_location = {}",
        quote(name)
    )
}

pub fn select_location_sql(name: &str) -> String {
    format!(
        "SELECT location_name, location_type, path, credentials_ref, usage_count \
         FROM system.storage_locations WHERE location_name = {}",
        quote(name)
    )
}

fn credentials_literal(r: &Option<String>) -> String {
    r.as_deref()
        .map(quote)
        .unwrap_or_else(|| "NULL".to_string())
}

pub fn insert_location_sql(d: &DesiredLocation) -> String {
    format!(
        "INSERT INTO system.storage_locations (location_name, location_type, path, credentials_ref) \
         VALUES ({}, {}, {}, {})",
        quote(&d.name),
        quote(d.location_type.as_str()),
        quote(&d.path),
        credentials_literal(&d.credentials_ref)
    )
}

pub fn update_location_sql(d: &DesiredLocation) -> String {
    format!(
        "UPDATE system.storage_locations SET location_type = {}, path = {}, credentials_ref = {} \
         WHERE location_name = {}",
        quote(d.location_type.as_str()),
        quote(&d.path),
        credentials_literal(&d.credentials_ref),
        quote(&d.name)
    )
}

pub fn delete_location_sql(name: &str) -> String {
    format!(
        "DELETE FROM system.storage_locations WHERE location_name = {}",
        quote(name)
    )
}

/// The first row of a `system.storage_locations` query.
pub fn first_location(found: &SqlSuccess) -> Option<LocationRow> {
    rows(found).next().and_then(|r| {
        Some(LocationRow {
            name: r.get("location_name")?.as_str()?.to_string(),
            location_type: r
                .get("location_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            path: r
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            credentials_ref: r
                .get("credentials_ref")
                .and_then(Value::as_str)
                .map(str::to_string),
            usage_count: r.get("usage_count").and_then(Value::as_i64).unwrap_or(0),
        })
    })
}

/// True when the row must be updated to match.
pub fn location_differs(row: &LocationRow, desired: &DesiredLocation) -> bool {
    row.location_type != desired.location_type.as_str()
        || row.path != desired.path
        || row.credentials_ref != desired.credentials_ref
}

fn rows(result: &SqlSuccess) -> impl Iterator<Item = &kalam_client::Row> {
    result.results.iter().flat_map(|r| r.rows.iter())
}

/// Every string value of `column`.
fn column_strings(result: &SqlSuccess, column: &str) -> Vec<String> {
    rows(result)
        .filter_map(|r| r.get(column).and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(rows: Value) -> SqlSuccess {
        serde_json::from_value(json!({"results": [{"rows": rows, "row_count": 0}], "took_ms": 0.1}))
            .unwrap()
    }

    fn map(v: Value) -> ScalarMap {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn literals_quote_and_escape() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(literal(&json!(90)), "90");
        assert_eq!(literal(&json!(1.5)), "1.5");
        assert_eq!(literal(&json!(true)), "TRUE");
        assert_eq!(literal(&json!(null)), "NULL");
        assert_eq!(literal(&json!("gold")), "'gold'");
    }

    #[test]
    fn namespace_statements() {
        assert_eq!(
            create_namespace_sql("app", &ScalarMap::new()),
            "CREATE NAMESPACE IF NOT EXISTS app"
        );
        assert_eq!(
            create_namespace_sql("app", &map(json!({"tier": "gold", "retention_days": 90}))),
            "CREATE NAMESPACE IF NOT EXISTS app WITH OPTIONS (retention_days = 90, tier = 'gold')"
        );
        assert_eq!(alter_namespace_sql("app", &ScalarMap::new()), None);
    }

    #[test]
    fn option_drift_is_reset_with_nulls_for_hand_added_keys() {
        let current = json!({"retention_days": 30, "tier": "gold", "by_hand": 1});
        let current = current.as_object().unwrap();
        let change = options_change(current, &map(json!({"retention_days": 90, "tier": "gold"})));
        assert_eq!(change, map(json!({"retention_days": 90, "by_hand": null})));
        assert_eq!(
            alter_namespace_sql("app", &change).unwrap(),
            "ALTER NAMESPACE app SET OPTIONS (by_hand = NULL, retention_days = 90)"
        );
        let same = options_change(
            current,
            &map(json!({"retention_days": 30, "tier": "gold", "by_hand": 1})),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn show_namespaces_rows_parse() {
        let shown = answer(json!([
            {"name": "app", "created_at": "x", "table_count": 2, "options": {"retention_days": 90}},
            {"name": "old", "created_at": "x", "table_count": 0, "options": "{\"a\":1}"},
            {"name": "plain", "created_at": "x", "table_count": 0, "options": null}
        ]));
        let app = find_namespace(&shown, "app").unwrap();
        assert_eq!(app.table_count, 2);
        assert_eq!(Value::Object(app.options), json!({"retention_days": 90}));
        assert_eq!(
            Value::Object(find_namespace(&shown, "old").unwrap().options),
            json!({"a": 1})
        );
        assert!(find_namespace(&shown, "plain").unwrap().options.is_empty());
        assert!(find_namespace(&shown, "nope").is_none());
    }

    #[test]
    fn location_statements_and_rows() {
        let d = DesiredLocation {
            name: "cold".into(),
            location_type: LocationType::S3,
            path: "s3://bucket/o'brien".into(),
            credentials_ref: Some("cold".into()),
        };
        assert_eq!(
            insert_location_sql(&d),
            "INSERT INTO system.storage_locations (location_name, location_type, path, credentials_ref) \
             VALUES ('cold', 's3', 's3://bucket/o''brien', 'cold')"
        );
        assert_eq!(
            update_location_sql(&DesiredLocation { credentials_ref: None, ..d.clone() }),
            "UPDATE system.storage_locations SET location_type = 's3', path = 's3://bucket/o''brien', \
             credentials_ref = NULL WHERE location_name = 'cold'"
        );
        let found = answer(json!([{"location_name": "cold", "location_type": "s3",
            "path": "s3://bucket/o'brien", "credentials_ref": "cold", "usage_count": 3}]));
        let row = first_location(&found).unwrap();
        assert_eq!(row.usage_count, 3);
        assert!(!location_differs(&row, &d));
        assert!(location_differs(
            &row,
            &DesiredLocation {
                path: "s3://other".into(),
                ..d.clone()
            }
        ));
        assert!(location_differs(
            &row,
            &DesiredLocation {
                credentials_ref: None,
                ..d
            }
        ));
        assert!(first_location(&answer(json!([]))).is_none());
    }

    #[test]
    fn refusal_details_name_the_tables() {
        assert_eq!(
            tables_from_details(Some("tables: messages, conversations")),
            vec!["messages", "conversations"]
        );
        assert_eq!(tables_from_details(Some("tables: app.t")), vec!["app.t"]);
        assert!(tables_from_details(None).is_empty());
        let refusal: kalam_client::ApiError = serde_json::from_value(json!({
            "code": "NAMESPACE_NOT_EMPTY", "message": "m", "details": "tables: a, b"}))
        .unwrap();
        let e = Error::Sql {
            endpoint: "http://n".into(),
            source: kalam_client::ClientError::Api {
                status: 409,
                error: refusal,
            },
        };
        assert_eq!(
            blocking_tables(&e, &ErrorCode::NamespaceNotEmpty),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(blocking_tables(&e, &ErrorCode::StorageLocationInUse), None);
    }

    #[test]
    fn secret_values_must_be_present_and_non_empty() {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "kc-jwt"},
            "data": {"jwt_secret": "c2VjcmV0", "empty": ""}
        }))
        .unwrap();
        assert_eq!(
            secret_value(&secret, "jwt_secret"),
            Some(b"secret".to_vec())
        );
        assert_eq!(secret_value(&secret, "empty"), None);
        assert_eq!(secret_value(&secret, "other"), None);
    }
}
