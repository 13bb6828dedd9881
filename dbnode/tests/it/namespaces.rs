//! Namespaces (API.md §4): CREATE (with options, IF NOT EXISTS, identifier rules, reserved
//! `system`), SHOW NAMESPACES and `system.namespaces` (columns, RFC 3339 `created_at`,
//! `table_count`, options as nested JSON), ALTER ... SET OPTIONS, and DROP (404 when missing,
//! 409 NAMESPACE_NOT_EMPTY listing the tables, IF EXISTS).

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::harness::*;

const SHOW_NAMESPACES_COLUMNS: [&str; 4] = ["name", "created_at", "table_count", "options"];

#[tokio::test]
async fn create_namespace_then_show_it() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let before = Utc::now() - TimeDelta::seconds(5);

    let body = node
        .admin("CREATE NAMESPACE app WITH OPTIONS (retention_days = 90)")
        .await;
    assert_ddl(&body, "CREATE NAMESPACE app");
    node.admin("CREATE NAMESPACE plain").await;

    let show = node.admin("SHOW NAMESPACES").await;
    assert_eq!(
        column_names(&show, 0),
        SHOW_NAMESPACES_COLUMNS,
        "SHOW NAMESPACES: {}",
        pretty(&show)
    );
    let rows = rows_of(&show, 0);
    let app = find_row(&rows, "name", "app").clone();
    let created = parse_utc(&app["created_at"], "SHOW NAMESPACES created_at");
    let after = Utc::now() + TimeDelta::seconds(5);
    assert!(
        created >= before && created <= after,
        "created_at {created} is not the time of creation"
    );
    assert_eq!(
        app["table_count"],
        json!(0),
        "table_count of an empty namespace: {app}"
    );
    assert_eq!(
        app["options"],
        json!({"retention_days": 90}),
        "options as a JSON object: {app}"
    );
    let plain = find_row(&rows, "name", "plain");
    assert!(
        plain["options"] == json!({}) || plain["options"].is_null(),
        "a namespace without options: {plain}"
    );

    // system.namespaces prints the same.
    let sys = node
        .query(&admin, "SELECT * FROM system.namespaces WHERE name = 'app'")
        .await;
    assert_eq!(sys.len(), 1, "system.namespaces: {}", pretty(&json!(sys)));
    for key in SHOW_NAMESPACES_COLUMNS {
        assert_eq!(
            sys[0][key], app[key],
            "system.namespaces.{key} differs from SHOW NAMESPACES"
        );
    }

    // table_count follows the tables.
    node.admin(MESSAGES_DDL).await;
    node.admin(CONVERSATIONS_DDL).await;
    let rows = node.query(&admin, "SHOW NAMESPACES").await;
    assert_eq!(
        find_row(&rows, "name", "app")["table_count"],
        json!(2),
        "table_count with two tables"
    );
    assert_eq!(find_row(&rows, "name", "plain")["table_count"], json!(0));
}

#[tokio::test]
async fn duplicate_namespace_conflicts_unless_if_not_exists() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app WITH OPTIONS (retention_days = 90)")
        .await;

    let err = node
        .expect_error(
            &admin_token(),
            "CREATE NAMESPACE app",
            "NAMESPACE_ALREADY_EXISTS",
        )
        .await;
    assert_eq!(
        err["statement_index"],
        json!(0),
        "error of a one-statement request: {err}"
    );
    let body = node
        .admin("CREATE NAMESPACE IF NOT EXISTS app WITH OPTIONS (retention_days = 5)")
        .await;
    assert_ddl(&body, "CREATE NAMESPACE IF NOT EXISTS app");

    let rows = node.query(&admin_token(), "SHOW NAMESPACES").await;
    let apps: Vec<_> = rows.iter().filter(|r| r["name"] == "app").collect();
    assert_eq!(apps.len(), 1, "one namespace app: {}", pretty(&json!(rows)));
    assert_eq!(
        apps[0]["options"],
        json!({"retention_days": 90}),
        "IF NOT EXISTS must not change an existing namespace"
    );
}

#[tokio::test]
async fn namespace_names_are_validated() {
    let node = TestNode::start().await;
    let admin = admin_token();

    for sql in [
        "CREATE NAMESPACE App",
        "CREATE NAMESPACE system",
        "CREATE NAMESPACE _app",
        "CREATE NAMESPACE app_Two",
    ] {
        node.expect_error(&admin, sql, "INVALID_IDENTIFIER").await;
    }
    node.admin("CREATE NAMESPACE a1_b2").await;

    let names = strings(&node.query(&admin, "SHOW NAMESPACES").await, "name");
    assert!(
        names.contains(&"a1_b2".to_string()),
        "a valid name is created: {names:?}"
    );
    for rejected in ["App", "app", "_app", "app_Two", "app_two"] {
        assert!(
            !names.contains(&rejected.to_string()),
            "{rejected:?} must not exist: {names:?}"
        );
    }
}

#[tokio::test]
async fn alter_namespace_options() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app WITH OPTIONS (retention_days = 90)")
        .await;
    let created =
        find_row(&node.query(&admin, "SHOW NAMESPACES").await, "name", "app")["created_at"].clone();

    let body = node
        .admin("ALTER NAMESPACE app SET OPTIONS (retention_days = 30)")
        .await;
    assert_ddl(&body, "ALTER NAMESPACE");
    let rows = node.query(&admin, "SHOW NAMESPACES").await;
    let app = find_row(&rows, "name", "app");
    assert_eq!(
        app["options"],
        json!({"retention_days": 30}),
        "options after ALTER: {app}"
    );
    assert_eq!(
        app["created_at"], created,
        "ALTER must not change created_at"
    );
    let sys = node
        .query(
            &admin,
            "SELECT options FROM system.namespaces WHERE name = 'app'",
        )
        .await;
    assert_eq!(
        single(&sys, "system.namespaces options"),
        json!({"retention_days": 30})
    );

    node.expect_error(
        &admin,
        "ALTER NAMESPACE nope SET OPTIONS (retention_days = 1)",
        "NAMESPACE_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn drop_namespace_rules() {
    let node = TestNode::start().await;
    let admin = admin_token();

    node.expect_error(&admin, "DROP NAMESPACE nope", "NAMESPACE_NOT_FOUND")
        .await;
    let body = node.admin("DROP NAMESPACE IF EXISTS nope").await;
    assert_ddl(&body, "DROP NAMESPACE IF EXISTS nope");

    node.create_chat_schema().await;
    for sql in ["DROP NAMESPACE app", "DROP NAMESPACE IF EXISTS app"] {
        let err = node.expect_error(&admin, sql, "NAMESPACE_NOT_EMPTY").await;
        let details = err["details"]
            .as_str()
            .unwrap_or_else(|| panic!("{sql}: details lists the tables: {err}"));
        assert!(
            details.starts_with("tables:")
                && details.contains("conversations")
                && details.contains("messages"),
            "{sql}: details must be like \"tables: conversations, messages\", got {details:?}"
        );
    }
    let mut tables = strings(
        &node.query(&admin, "SHOW TABLES IN app").await,
        "table_name",
    );
    tables.sort();
    assert_eq!(
        tables,
        ["conversations", "messages"],
        "a refused DROP NAMESPACE keeps the tables"
    );

    node.admin("DROP TABLE app.messages").await;
    node.admin("DROP TABLE app.conversations").await;
    let body = node.admin("DROP NAMESPACE app").await;
    assert_ddl(&body, "DROP NAMESPACE app");

    let names = strings(&node.query(&admin, "SHOW NAMESPACES").await, "name");
    assert!(
        !names.contains(&"app".to_string()),
        "app was dropped: {names:?}"
    );
    assert!(node
        .query(&admin, "SELECT * FROM system.namespaces WHERE name = 'app'")
        .await
        .is_empty());
    node.expect_error(&admin, MESSAGES_DDL, "NAMESPACE_NOT_FOUND")
        .await;

    // The name can be used again, and the new namespace is empty.
    node.admin("CREATE NAMESPACE app").await;
    let rows = node.query(&admin, "SHOW NAMESPACES").await;
    assert_eq!(find_row(&rows, "name", "app")["table_count"], json!(0));
    assert!(
        node.query(&admin, "SHOW TABLES IN app").await.is_empty(),
        "a re-created namespace has no tables"
    );
}
