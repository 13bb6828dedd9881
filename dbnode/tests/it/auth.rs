//! Authentication and roles (API.md §2): which JWTs `POST /api/sql` accepts (valid user ids,
//! default role) and rejects with 401 (missing, garbage, expired, wrongly signed, `alg: none`,
//! unsafe `sub`), what the `user` role may not do (namespace and table DDL: 403), the
//! `kalamdb token` command, and the secret a node generates when none is configured.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::*;

/// base64url of `{"alg":"none","typ":"JWT"}`.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

#[tokio::test]
async fn valid_tokens_identify_the_caller() {
    let node = TestNode::start().await;

    let longest = "u".repeat(128);
    for user in ["alice", "a.b-c_d@example.com", "Bob_42", longest.as_str()] {
        let who = node
            .scalar(&token(user, false), "SELECT CURRENT_USER()")
            .await;
        assert_eq!(who, json!(user), "CURRENT_USER() with a token for {user:?}");
    }
    let who = node.scalar(&admin_token(), "SELECT CURRENT_USER()").await;
    assert_eq!(who, json!(ADMIN_USER), "CURRENT_USER() with an admin token");

    // `role` is optional and defaults to "user".
    let no_role = sign(
        &json!({"sub": "carol", "exp": now_secs() + 3600}),
        TEST_SECRET,
    );
    assert_eq!(
        node.scalar(&no_role, "SELECT CURRENT_USER()").await,
        json!("carol")
    );
    node.expect_error(&no_role, "CREATE NAMESPACE app", "FORBIDDEN")
        .await;
}

#[tokio::test]
async fn invalid_tokens_are_rejected_with_401() {
    let node = TestNode::start().await;
    let now = now_secs();

    let good = sign(
        &json!({"sub": "alice", "role": "admin", "exp": now + 3600}),
        TEST_SECRET,
    );
    let parts: Vec<&str> = good.split('.').collect();
    let forged = sign(
        &json!({"sub": "mallory", "role": "admin", "exp": now + 3600}),
        "not-the-node-secret-0123456789abcdef",
    );
    let forged_payload = forged.split('.').nth(1).unwrap();
    let bearer = |claims: serde_json::Value| format!("Bearer {}", sign(&claims, TEST_SECRET));
    let with_sub = |sub: &str| bearer(json!({"sub": sub, "role": "user", "exp": now + 3600}));

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("garbage bearer token", Some("Bearer not-a-jwt".into())),
        ("bearer without a token", Some("Bearer".into())),
        ("three garbage segments", Some("Bearer aaa.bbb.ccc".into())),
        ("Basic scheme", Some(format!("Basic {good}"))),
        ("token without a scheme", Some(good.clone())),
        (
            "expired 10 minutes ago",
            Some(bearer(
                json!({"sub": "alice", "role": "admin", "exp": now - 600}),
            )),
        ),
        (
            "signed with another secret",
            Some(format!("Bearer {forged}")),
        ),
        (
            "payload swapped after signing",
            Some(format!(
                "Bearer {}.{}.{}",
                parts[0], forged_payload, parts[2]
            )),
        ),
        (
            "alg none",
            Some(format!("Bearer {ALG_NONE_HEADER}.{}.", parts[1])),
        ),
        ("sub ../x", Some(with_sub("../x"))),
        ("sub with a slash", Some(with_sub("alice/../bob"))),
        ("sub with a space", Some(with_sub("alice bob"))),
        ("empty sub", Some(with_sub(""))),
        (
            "sub of 129 characters",
            Some(with_sub("a".repeat(129).as_str())),
        ),
        (
            "sub missing",
            Some(bearer(json!({"role": "user", "exp": now + 3600}))),
        ),
        (
            "sub not a string",
            Some(bearer(
                json!({"sub": 42, "role": "user", "exp": now + 3600}),
            )),
        ),
    ];

    for sql in ["SELECT 1", "CREATE NAMESPACE sneaky"] {
        for (label, authorization) in &cases {
            let body = serde_json::to_vec(&json!({ "sql": sql })).unwrap();
            let resp = node
                .post(authorization.as_deref(), Some("application/json"), body)
                .await;
            node.assert_error(&resp, "UNAUTHORIZED", &format!("{label}: {sql}"));
        }
    }

    // Nothing ran, and a correct token is still accepted.
    let namespaces = node.query(&admin_token(), "SHOW NAMESPACES").await;
    assert!(
        !strings(&namespaces, "name").contains(&"sneaky".to_string()),
        "a rejected request created a namespace: {}",
        pretty(&json!(namespaces))
    );
    node.exec(&good, "SELECT 1").await;
}

#[tokio::test]
async fn user_role_cannot_run_namespace_or_table_ddl() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    for sql in [
        "CREATE NAMESPACE other",
        "CREATE NAMESPACE IF NOT EXISTS other",
        "ALTER NAMESPACE app SET OPTIONS (retention_days = 1)",
        "DROP NAMESPACE app",
        "DROP NAMESPACE IF EXISTS app",
        "CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)",
        "CREATE SHARED TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)",
        "ALTER TABLE app.messages ADD COLUMN priority TEXT DEFAULT 'normal'",
        "DROP TABLE app.messages",
        "DROP USER TABLE IF EXISTS app.messages",
        "DROP SHARED TABLE app.conversations",
    ] {
        node.expect_error(&alice, sql, "FORBIDDEN").await;
    }

    // Nothing changed.
    let namespaces = node.query(&admin_token(), "SHOW NAMESPACES").await;
    let names = strings(&namespaces, "name");
    assert!(
        names.contains(&"app".to_string()) && !names.contains(&"other".to_string()),
        "namespaces after forbidden DDL: {names:?}"
    );
    let app = find_row(&namespaces, "name", "app");
    assert_ne!(
        app["options"],
        json!({"retention_days": 1}),
        "a forbidden ALTER NAMESPACE applied"
    );
    let mut tables = strings(
        &node.query(&admin_token(), "SHOW TABLES IN app").await,
        "table_name",
    );
    tables.sort();
    assert_eq!(
        tables,
        ["conversations", "messages"],
        "tables after forbidden DDL"
    );
    let described = node
        .query(&admin_token(), "DESCRIBE TABLE app.messages")
        .await;
    assert_eq!(
        strings(&described, "column_name"),
        MESSAGES_COLUMNS,
        "a forbidden ALTER TABLE applied"
    );

    // Users read and write data; the admin may do what alice could not.
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'hi')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'General')",
    )
    .await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        1
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.conversations")
            .await,
        1
    );
    node.admin("CREATE NAMESPACE other").await;
}

#[tokio::test]
async fn kalamdb_token_command_mints_working_tokens() {
    let node = TestNode::start().await;
    let dir = node.dir();

    let alice = cli_token(&dir, &["--user", "alice"], Some(TEST_SECRET)).await;
    let ops = cli_token(
        &dir,
        &["--user", "ops", "--admin", "--ttl", "1h"],
        Some(TEST_SECRET),
    )
    .await;

    let claims = decode_claims(&alice, TEST_SECRET);
    assert_eq!(claims["sub"], "alice", "claims of the user token: {claims}");
    assert!(
        claims.get("role").is_none() || claims["role"] == "user",
        "a token minted without --admin is a user token: {claims}"
    );
    let claims = decode_claims(&ops, TEST_SECRET);
    assert_eq!(claims["sub"], "ops", "claims of the admin token: {claims}");
    assert_eq!(
        claims["role"], "admin",
        "claims of the admin token: {claims}"
    );
    let exp = claims["exp"]
        .as_i64()
        .unwrap_or_else(|| panic!("exp is a number: {claims}"));
    assert!(
        (exp - (now_secs() + 3600)).abs() <= 120,
        "--ttl 1h gives exp = now + 3600 s, got exp {exp} at {}",
        now_secs()
    );

    assert_eq!(
        node.scalar(&alice, "SELECT CURRENT_USER()").await,
        json!("alice")
    );
    node.expect_error(&alice, "CREATE NAMESPACE app", "FORBIDDEN")
        .await;
    assert_eq!(
        node.scalar(&ops, "SELECT CURRENT_USER()").await,
        json!("ops")
    );
    node.exec(&ops, "CREATE NAMESPACE app").await;
}

#[tokio::test]
async fn node_without_a_configured_secret_generates_one() {
    let dir = NodeDir::new();
    let opts = NodeOptions::default().without_secret();
    let node = TestNode::start_with(&dir, opts.clone()).await;

    let path = dir.data_dir().join("jwt_secret");
    let meta = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{} was not created: {e}", path.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} must have mode 0600, has {:o}",
        path.display(),
        meta.permissions().mode() & 0o777
    );
    let secret_bytes = std::fs::read(&path).expect("reading jwt_secret");
    assert!(
        secret_bytes.len() >= 32,
        "the generated secret has {} bytes, want at least 32",
        secret_bytes.len()
    );
    let secret = String::from_utf8_lossy(&secret_bytes).trim().to_string();

    // The test secret means nothing to this node; `kalamdb token` on its data dir does.
    let resp = node.sql(&token("alice", true), "SELECT 1").await;
    node.assert_error(&resp, "UNAUTHORIZED", "a token signed with another secret");
    let alice = cli_token(&dir, &["--user", "alice"], None).await;
    let ops = cli_token(&dir, &["--user", "ops", "--admin"], None).await;
    assert_eq!(
        node.scalar(&alice, "SELECT CURRENT_USER()").await,
        json!("alice")
    );
    node.exec(&ops, "CREATE NAMESPACE app").await;

    let leaks = |node: &TestNode, when: &str| {
        if secret.len() >= 16 {
            assert!(
                !node.stderr().contains(&secret),
                "the secret appears in stderr ({when})"
            );
            assert!(
                !node.stdout().contains(&secret),
                "the secret appears in stdout ({when})"
            );
        }
    };
    leaks(&node, "first start");

    // A restart keeps the secret: tokens minted before still work.
    let dir = node.stop().await;
    let node = TestNode::start_with(&dir, opts).await;
    assert_eq!(
        std::fs::read(&path).expect("reading jwt_secret"),
        secret_bytes,
        "the secret changed on restart"
    );
    assert_eq!(
        node.scalar(&alice, "SELECT CURRENT_USER()").await,
        json!("alice")
    );
    leaks(&node, "restart");
}
