//! System tables (API.md §4): an admin inserts, updates and deletes `system.users` rows
//! (with a server-set `created_at` and a validated `role`); user tokens cannot write them
//! (403); every system table answers a SELECT with at least its documented columns.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::harness::*;

const USER_COLUMNS: &str = "user_id, username, email, role, created_at";

#[tokio::test]
async fn admin_inserts_updates_and_deletes_system_users() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let before = Utc::now() - TimeDelta::seconds(5);

    let n = node
        .affected(
            &admin,
            "INSERT INTO system.users (user_id, username, email, role) VALUES \
             ('carol', 'Carol', 'carol@example.com', 'user'), ('dave', 'Dave', 'dave@example.com', 'admin')",
        )
        .await;
    assert_eq!(n, 2);

    let rows = node
        .query(&admin, &format!("SELECT {USER_COLUMNS} FROM system.users WHERE user_id IN ('carol', 'dave') ORDER BY user_id"))
        .await;
    assert_eq!(rows.len(), 2, "{}", pretty(&json!(rows)));
    assert_eq!(rows[0]["username"], "Carol");
    assert_eq!(rows[0]["email"], "carol@example.com");
    assert_eq!(rows[0]["role"], "user");
    assert_eq!(rows[1]["user_id"], "dave");
    assert_eq!(rows[1]["role"], "admin");
    let after = Utc::now() + TimeDelta::seconds(5);
    for row in &rows {
        let created = parse_utc(&row["created_at"], "system.users created_at");
        assert!(
            created >= before && created <= after,
            "created_at {created} is set by the server at insert"
        );
    }

    let n = node
        .affected(
            &admin,
            "UPDATE system.users SET email = 'carol@new.example.com' WHERE user_id = 'carol'",
        )
        .await;
    assert_eq!(n, 1);
    let emails = node.query(&admin, "SELECT user_id, email FROM system.users WHERE user_id IN ('carol', 'dave') ORDER BY user_id").await;
    assert_eq!(
        emails,
        [
            json!({"user_id": "carol", "email": "carol@new.example.com"}),
            json!({"user_id": "dave", "email": "dave@example.com"})
        ]
    );

    assert_eq!(
        node.affected(&admin, "DELETE FROM system.users WHERE user_id = 'dave'")
            .await,
        1
    );
    assert!(node
        .query(
            &admin,
            "SELECT user_id FROM system.users WHERE user_id = 'dave'"
        )
        .await
        .is_empty());
    assert_eq!(
        node.count(
            &admin,
            "SELECT COUNT(*) FROM system.users WHERE user_id = 'carol'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn system_users_role_must_be_user_or_admin() {
    let node = TestNode::start().await;
    let admin = admin_token();

    node.expect_error(
        &admin,
        "INSERT INTO system.users (user_id, username, email, role) VALUES ('eve', 'Eve', 'eve@example.com', 'root')",
        "INVALID_VALUE",
    )
    .await;
    assert!(node
        .query(
            &admin,
            "SELECT user_id FROM system.users WHERE user_id = 'eve'"
        )
        .await
        .is_empty());

    node.admin("INSERT INTO system.users (user_id, username, email, role) VALUES ('eve', 'Eve', 'eve@example.com', 'user')").await;
    node.expect_error(
        &admin,
        "UPDATE system.users SET role = 'superuser' WHERE user_id = 'eve'",
        "INVALID_VALUE",
    )
    .await;
    assert_eq!(
        node.scalar(
            &admin,
            "SELECT role FROM system.users WHERE user_id = 'eve'"
        )
        .await,
        json!("user"),
        "a rejected UPDATE changes nothing"
    );
}

#[tokio::test]
async fn user_tokens_cannot_write_system_users() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.admin("INSERT INTO system.users (user_id, username, email, role) VALUES ('carol', 'Carol', 'carol@example.com', 'user')").await;

    for sql in [
        "INSERT INTO system.users (user_id, username, email, role) VALUES ('alice', 'Alice', 'a@example.com', 'admin')",
        "UPDATE system.users SET role = 'admin' WHERE user_id = 'carol'",
        "DELETE FROM system.users WHERE user_id = 'carol'",
    ] {
        node.expect_error(&alice, sql, "FORBIDDEN").await;
    }

    let rows = node.query(&admin, "SELECT user_id, role FROM system.users WHERE user_id IN ('alice', 'carol') ORDER BY user_id").await;
    assert_eq!(
        rows,
        [json!({"user_id": "carol", "role": "user"})],
        "forbidden writes changed nothing"
    );
}

/// The system tables that show the node's state take no writes: a user token gets 403 as
/// for any system table (API.md), an admin `UNSUPPORTED_STATEMENT` (not "does not exist",
/// which they answer SELECTs as).
#[tokio::test]
async fn system_tables_of_the_nodes_state_are_read_only() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    for table in ["jobs", "live_queries", "namespaces", "tables"] {
        for sql in [
            format!("DELETE FROM system.{table}"),
            format!("UPDATE system.{table} SET node = 'x'"),
            format!("INSERT INTO system.{table} (node) VALUES ('x')"),
        ] {
            node.expect_error(&alice, &sql, "FORBIDDEN").await;
            let error = node
                .expect_error(&admin, &sql, "UNSUPPORTED_STATEMENT")
                .await;
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("read-only"),
                "{sql}: {error}"
            );
        }
    }
    for token in [&alice, &admin] {
        node.expect_error(token, "DELETE FROM system.nope", "TABLE_NOT_FOUND")
            .await;
    }
}

#[tokio::test]
async fn system_tables_expose_their_documented_columns() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;

    let tables: [(&str, &[&str]); 3] = [
        (
            "system.users",
            &["user_id", "username", "email", "role", "created_at"],
        ),
        (
            "system.namespaces",
            &["name", "created_at", "table_count", "options"],
        ),
        (
            "system.tables",
            &[
                "table_name",
                "namespace",
                "table_type",
                "location",
                "storage_location",
                "flush_policy",
                "schema_version",
                "created_at",
            ],
        ),
    ];
    for (table, expected) in tables {
        let body = node.admin(&format!("SELECT * FROM {table}")).await;
        let names = column_names(&body, 0);
        for column in expected {
            assert!(
                names.iter().any(|n| n == column),
                "{table} lacks column {column}: {names:?}"
            );
        }
    }
}
