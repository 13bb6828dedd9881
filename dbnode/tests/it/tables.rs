//! Tables (API.md §4): CREATE USER/SHARED TABLE with keys, defaults, LOCATION, FLUSH POLICY
//! and WITH options; the implicit `id` key; invalid definitions and their error codes; the
//! system columns `_updated`/`_deleted`; DESCRIBE TABLE, SHOW TABLES, `system.tables` and
//! `information_schema`; the value encoding of every column type; DROP TABLE.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::harness::*;

const SHOW_TABLES_COLUMNS: [&str; 6] = [
    "table_name",
    "namespace",
    "table_type",
    "location",
    "flush_policy",
    "options",
];
const DESCRIBE_COLUMNS: [&str; 6] = [
    "column_name",
    "data_type",
    "is_nullable",
    "is_primary_key",
    "column_default",
    "is_system_column",
];
const DEFAULT_FLUSH_POLICY: &str = "ROWS 10000 INTERVAL '5 minutes'";

fn upper(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_uppercase()
}

#[tokio::test]
async fn create_user_table_and_describe_it() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    let body = node.admin(MESSAGES_DDL).await;
    assert_ddl(&body, MESSAGES_DDL);

    let described = node.admin("DESCRIBE TABLE app.messages").await;
    assert_eq!(
        column_names(&described, 0),
        DESCRIBE_COLUMNS,
        "DESCRIBE columns: {}",
        pretty(&described)
    );
    let rows = rows_of(&described, 0);
    assert_eq!(
        strings(&rows, "column_name"),
        MESSAGES_COLUMNS,
        "declared columns first, system columns last"
    );
    let col = |name: &str| find_row(&rows, "column_name", name).clone();
    let is = |row: &serde_json::Value, key: &str| {
        flag(&row[key], &format!("{}.{key}", row["column_name"]))
    };

    let id = col("id");
    assert!(
        is(&id, "is_primary_key") && !is(&id, "is_nullable") && !is(&id, "is_system_column"),
        "id: {id}"
    );
    assert!(
        upper(&id["column_default"]).contains("SNOWFLAKE_ID"),
        "id default: {id}"
    );
    assert!(
        upper(&id["data_type"]).contains("BIGINT") || upper(&id["data_type"]).contains("INT64"),
        "id type: {id}"
    );

    let conversation = col("conversation_id");
    assert!(
        !is(&conversation, "is_nullable") && !is(&conversation, "is_primary_key"),
        "conversation_id: {conversation}"
    );
    let content = col("content");
    assert!(
        is(&content, "is_nullable") && !is(&content, "is_primary_key"),
        "content: {content}"
    );
    let meta = col("meta");
    assert!(
        upper(&meta["data_type"]).contains("JSON"),
        "meta is a JSON column: {meta}"
    );
    let created = col("created_at");
    assert!(
        upper(&created["data_type"]).contains("TIMESTAMP"),
        "created_at type: {created}"
    );
    assert!(
        upper(&created["column_default"]).contains("NOW"),
        "created_at default: {created}"
    );
    for name in ["conversation_id", "content", "meta", "created_at"] {
        assert!(
            !is(&col(name), "is_system_column"),
            "{name} is not a system column"
        );
    }

    let updated = col("_updated");
    assert!(
        is(&updated, "is_system_column") && !is(&updated, "is_primary_key"),
        "_updated: {updated}"
    );
    assert!(
        upper(&updated["data_type"]).contains("TIMESTAMP"),
        "_updated type: {updated}"
    );
    let deleted = col("_deleted");
    assert!(
        is(&deleted, "is_system_column") && !is(&deleted, "is_primary_key"),
        "_deleted: {deleted}"
    );
    assert!(
        upper(&deleted["data_type"]).contains("BOOL"),
        "_deleted type: {deleted}"
    );

    node.expect_error(
        &admin_token(),
        "DESCRIBE TABLE app.nosuch",
        "TABLE_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn table_without_primary_key_gets_a_snowflake_id() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.notes (body TEXT)")
        .await;

    let described = node.query(&admin_token(), "DESCRIBE TABLE app.notes").await;
    let id = find_row(&described, "column_name", "id");
    assert!(
        flag(&id["is_primary_key"], "id.is_primary_key"),
        "the implicit id is the key: {id}"
    );
    assert!(
        upper(&id["data_type"]).contains("BIGINT") || upper(&id["data_type"]).contains("INT64"),
        "id type: {id}"
    );
    assert!(
        upper(&id["column_default"]).contains("SNOWFLAKE_ID"),
        "id default: {id}"
    );

    let alice = token("alice", false);
    assert_eq!(
        node.affected(
            &alice,
            "INSERT INTO app.notes (body) VALUES ('a'), ('b'), ('c')"
        )
        .await,
        3
    );
    let rows = node
        .query(&alice, "SELECT id, body FROM app.notes ORDER BY id")
        .await;
    let got = ids(&rows);
    assert_eq!(
        strings(&rows, "body"),
        ["a", "b", "c"],
        "ids increase in insertion order: {}",
        pretty(&json!(rows))
    );
    assert!(got.iter().all(|&i| i > 0), "ids are positive: {got:?}");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "ids are distinct and increasing: {got:?}"
    );

    node.exec(&alice, "INSERT INTO app.notes (body) VALUES ('d')")
        .await;
    let later = node
        .count(&alice, "SELECT id FROM app.notes WHERE body = 'd'")
        .await;
    assert!(
        later > got[2],
        "a later insert gets a larger id: {later} <= {}",
        got[2]
    );
}

#[tokio::test]
async fn show_tables_and_system_tables() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE NAMESPACE other").await;
    node.admin(MESSAGES_DDL).await;
    node.admin(
        "CREATE SHARED TABLE app.conversations (id TEXT PRIMARY KEY, title TEXT) \
         FLUSH POLICY ROWS 100 INTERVAL '30s'",
    )
    .await;
    node.admin(
        "CREATE SHARED TABLE other.events (id BIGINT PRIMARY KEY, kind TEXT) FLUSH POLICY ROWS 500",
    )
    .await;
    node.admin(
        "CREATE USER TABLE other.drafts (id BIGINT PRIMARY KEY, body TEXT) \
         FLUSH POLICY INTERVAL '30s' WITH (deleted_retention = '7d')",
    )
    .await;

    let show = node.admin("SHOW TABLES IN app").await;
    assert_eq!(
        column_names(&show, 0),
        SHOW_TABLES_COLUMNS,
        "SHOW TABLES columns: {}",
        pretty(&show)
    );
    let rows = rows_of(&show, 0);
    assert_eq!(
        rows.len(),
        2,
        "SHOW TABLES IN app lists only app's tables: {}",
        pretty(&show)
    );
    let messages = find_row(&rows, "table_name", "messages");
    assert_eq!(messages["namespace"], "app");
    assert_eq!(messages["table_type"], "user");
    assert_eq!(
        messages["flush_policy"], DEFAULT_FLUSH_POLICY,
        "the default flush policy: {messages}"
    );
    let conversations = find_row(&rows, "table_name", "conversations");
    assert_eq!(conversations["namespace"], "app");
    assert_eq!(conversations["table_type"], "shared");
    assert_eq!(
        conversations["flush_policy"], "ROWS 100 INTERVAL '30s'",
        "{conversations}"
    );

    let all = node.query(&admin, "SHOW TABLES").await;
    let find = |ns: &str, table: &str| {
        all.iter()
            .find(|r| r["namespace"] == ns && r["table_name"] == table)
            .unwrap_or_else(|| panic!("SHOW TABLES lacks {ns}.{table}: {}", pretty(&json!(all))))
            .clone()
    };
    find("app", "messages");
    find("app", "conversations");
    let events = find("other", "events");
    assert_eq!(events["table_type"], "shared");
    assert!(
        events["flush_policy"]
            .as_str()
            .unwrap_or_default()
            .contains("ROWS 500"),
        "{events}"
    );
    let drafts = find("other", "drafts");
    assert_eq!(drafts["table_type"], "user");
    assert_eq!(
        drafts["options"],
        json!({"deleted_retention": "7d"}),
        "SHOW TABLES options of a USER table: {drafts}"
    );
    assert_eq!(
        find("app", "messages")["options"],
        json!({"deleted_retention": "off"})
    );
    assert!(
        drafts["flush_policy"]
            .as_str()
            .unwrap_or_default()
            .contains("30s"),
        "{drafts}"
    );

    // system.tables: what SHOW TABLES prints, plus schema_version and created_at.
    let sys = node
        .admin("SELECT * FROM system.tables WHERE namespace = 'app' ORDER BY table_name")
        .await;
    let names = column_names(&sys, 0);
    for expected in SHOW_TABLES_COLUMNS
        .iter()
        .chain(["schema_version", "created_at"].iter())
    {
        assert!(
            names.iter().any(|n| n == expected),
            "system.tables lacks column {expected}: {names:?}"
        );
    }
    let sys_rows = rows_of(&sys, 0);
    assert_eq!(
        strings(&sys_rows, "table_name"),
        ["conversations", "messages"]
    );
    for row in &sys_rows {
        let shown = find_row(&rows, "table_name", row["table_name"].as_str().unwrap());
        for key in SHOW_TABLES_COLUMNS {
            assert_eq!(
                row[key], shown[key],
                "system.tables.{key} differs from SHOW TABLES"
            );
        }
        assert!(
            row["schema_version"].as_i64().is_some_and(|v| v >= 1),
            "schema_version: {row}"
        );
        parse_utc(&row["created_at"], "system.tables created_at");
    }
}

#[tokio::test]
async fn table_location_is_recorded() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    let base = node.dir().base().display().to_string();
    let user_location = format!("file://{base}/cold/users/${{user_id}}/messages/");
    let shared_location = format!("file://{base}/cold/shared/conversations/");

    node.admin(&format!("{MESSAGES_DDL} LOCATION {}", lit(&user_location)))
        .await;
    node.admin(&format!(
        "{CONVERSATIONS_DDL} LOCATION {}",
        lit(&shared_location)
    ))
    .await;
    let rows = node.query(&admin_token(), "SHOW TABLES IN app").await;
    assert_eq!(
        find_row(&rows, "table_name", "messages")["location"],
        json!(user_location)
    );
    assert_eq!(
        find_row(&rows, "table_name", "conversations")["location"],
        json!(shared_location)
    );

    // The tables work.
    let alice = token("alice", false);
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
}

#[tokio::test]
async fn invalid_table_definitions_are_rejected() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    node.admin(MESSAGES_DDL).await;
    let base = node.dir().base().display().to_string();
    let per_user_shared = format!(
        "CREATE SHARED TABLE app.t5 (id BIGINT PRIMARY KEY) LOCATION 'file://{base}/cold/${{user_id}}/t5/'"
    );

    let cases: Vec<(String, &str)> = vec![
        (
            "CREATE USER TABLE app.messages (id BIGINT PRIMARY KEY, body TEXT)".into(),
            "TABLE_ALREADY_EXISTS",
        ),
        (
            "CREATE SHARED TABLE app.messages (id BIGINT PRIMARY KEY)".into(),
            "TABLE_ALREADY_EXISTS",
        ),
        (
            "CREATE USER TABLE nope.t (id BIGINT PRIMARY KEY)".into(),
            "NAMESPACE_NOT_FOUND",
        ),
        (
            "CREATE USER TABLE app.t1 (id DOUBLE PRIMARY KEY, body TEXT)".into(),
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE USER TABLE app.t2 (a BIGINT PRIMARY KEY, b BIGINT PRIMARY KEY)".into(),
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE SHARED TABLE app.t3 (id BIGINT PRIMARY KEY, _updated TIMESTAMP)".into(),
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE USER TABLE app.t4 (id BIGINT PRIMARY KEY, _deleted BOOLEAN)".into(),
            "INVALID_TABLE_DEFINITION",
        ),
        (per_user_shared, "INVALID_TABLE_DEFINITION"),
        (
            "CREATE SHARED TABLE app.t6 (id BIGINT PRIMARY KEY) WITH (no_such_option = 'x')".into(),
            "INVALID_OPTION",
        ),
        (
            "CREATE SHARED TABLE app.t7 (id BIGINT PRIMARY KEY) WITH (deleted_retention = 'soon')"
                .into(),
            "INVALID_OPTION",
        ),
        (
            "CREATE USER TABLE app.Bad (id BIGINT PRIMARY KEY)".into(),
            "INVALID_IDENTIFIER",
        ),
    ];
    for (sql, code) in &cases {
        node.expect_error(&admin, sql, code).await;
    }

    // IF NOT EXISTS on an existing table succeeds and changes nothing.
    let body = node
        .admin("CREATE USER TABLE IF NOT EXISTS app.messages (id BIGINT PRIMARY KEY, body TEXT)")
        .await;
    assert_ddl(&body, "CREATE USER TABLE IF NOT EXISTS");
    let described = node.query(&admin, "DESCRIBE TABLE app.messages").await;
    assert_eq!(
        strings(&described, "column_name"),
        MESSAGES_COLUMNS,
        "IF NOT EXISTS must not redefine the table"
    );

    // Valid retention options.
    node.admin(
        "CREATE SHARED TABLE app.kept (id BIGINT PRIMARY KEY) WITH (deleted_retention = '7d')",
    )
    .await;
    node.admin(
        "CREATE USER TABLE app.unkept (id BIGINT PRIMARY KEY) WITH (deleted_retention = 'off')",
    )
    .await;

    let mut tables = strings(
        &node.query(&admin, "SHOW TABLES IN app").await,
        "table_name",
    );
    tables.sort();
    assert_eq!(
        tables,
        ["kept", "messages", "unkept"],
        "no rejected table may exist"
    );
}

#[tokio::test]
async fn every_column_type_round_trips() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.types (id BIGINT PRIMARY KEY, b BOOLEAN, s SMALLINT, i INT, \
         big BIGINT, f FLOAT, d DOUBLE, amount DECIMAL(10,2), t TEXT, st STRING, vc VARCHAR, \
         payload BYTES, birthday DATE, ts TIMESTAMP, j JSON)",
    )
    .await;
    let alice = token("alice", false);
    let inserted = node
        .affected(
            &alice,
            "INSERT INTO app.types (id, b, s, i, big, f, d, amount, t, st, vc, payload, birthday, ts, j) VALUES \
             (1, true, -12, 123456, 1234567890123, 1.5, 2.25, 12.34, 'hello', 'world', 'v', X'0001FF6869', \
              '2026-11-27', '2026-11-27T10:00:00.000123Z', '{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}'), \
             (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
             (3, false, 32767, -2147483648, 9007199254740993, -0.25, 1e300, -0.05, '', 's', 'w', X'', \
              '1970-01-01', '2026-11-27T12:00:00+02:00', '[1,\"two\",3.5,true]')",
        )
        .await;
    assert_eq!(inserted, 3);

    let before = Utc::now() - TimeDelta::seconds(60);
    let body = node
        .exec(&alice, "SELECT * FROM app.types ORDER BY id")
        .await;
    assert_eq!(
        column_names(&body, 0),
        [
            "id", "b", "s", "i", "big", "f", "d", "amount", "t", "st", "vc", "payload", "birthday",
            "ts", "j", "_updated", "_deleted"
        ],
        "SELECT * lists the declared columns, then the system columns"
    );
    let rows = rows_of(&body, 0);
    assert_eq!(rows.len(), 3, "{}", pretty(&body));

    let r = &rows[0];
    assert_eq!(r["b"], json!(true));
    assert_eq!(r["s"], json!(-12));
    assert_eq!(r["i"], json!(123456));
    assert_eq!(r["big"], json!(1234567890123i64));
    assert_eq!(r["f"], json!(1.5));
    assert_eq!(r["d"], json!(2.25));
    assert!(
        r["amount"] == json!(12.34) || r["amount"] == json!("12.34"),
        "DECIMAL(10,2): {}",
        r["amount"]
    );
    assert_eq!(r["t"], "hello");
    assert_eq!(r["st"], "world");
    assert_eq!(r["vc"], "v");
    assert_eq!(r["payload"], "AAH/aGk=", "BYTES are base64");
    assert_eq!(r["birthday"], "2026-11-27");
    assert_eq!(
        r["ts"], "2026-11-27T10:00:00.000123Z",
        "TIMESTAMP keeps microseconds, in UTC"
    );
    assert_eq!(
        r["j"],
        json!({"a": [1, 2, {"b": null}], "c": "x"}),
        "JSON columns are nested JSON"
    );
    assert_eq!(r["_deleted"], json!(false));
    let updated = ts_micros(&r["_updated"], "_updated");
    assert!(
        updated >= before && updated <= Utc::now() + TimeDelta::seconds(60),
        "_updated {updated} is now-ish"
    );

    let r = &rows[1];
    for name in [
        "b", "s", "i", "big", "f", "d", "amount", "t", "st", "vc", "payload", "birthday", "ts", "j",
    ] {
        assert!(r[name].is_null(), "NULL {name} is null: {r}");
    }
    assert_eq!(r["_deleted"], json!(false));

    let r = &rows[2];
    assert_eq!(r["b"], json!(false));
    assert_eq!(r["s"], json!(32767));
    assert_eq!(r["i"], json!(-2147483648i64));
    assert_eq!(
        r["big"],
        json!(9007199254740993i64),
        "BIGINT beyond 2^53 is exact"
    );
    assert_eq!(r["f"], json!(-0.25));
    assert_eq!(r["d"], json!(1e300));
    assert!(
        r["amount"] == json!(-0.05) || r["amount"] == json!("-0.05"),
        "DECIMAL(10,2): {}",
        r["amount"]
    );
    assert_eq!(r["t"], "", "an empty string is not NULL");
    assert_eq!(r["payload"], "", "empty BYTES");
    assert_eq!(r["birthday"], "1970-01-01");
    assert_eq!(
        r["ts"], "2026-11-27T10:00:00.000000Z",
        "an offset is converted to UTC"
    );
    assert_eq!(r["j"], json!([1, "two", 3.5, true]));

    // Typed columns filter as expected.
    let got = ids(&node
        .query(
            &alice,
            "SELECT id FROM app.types WHERE b = true OR s > 100 ORDER BY id",
        )
        .await);
    assert_eq!(got, [1, 3]);
    let got = ids(&node
        .query(
            &alice,
            "SELECT id FROM app.types WHERE ts > '2026-11-27T09:59:59Z' ORDER BY id",
        )
        .await);
    assert_eq!(got, [1, 3]);
}

#[tokio::test]
async fn drop_table_removes_it_and_its_rows() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.create_chat_schema().await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'one'), ('c1', 'two')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'General')",
    )
    .await;

    let body = node.admin("DROP USER TABLE app.messages").await;
    assert_ddl(&body, "DROP USER TABLE");
    let tables = strings(
        &node.query(&admin, "SHOW TABLES IN app").await,
        "table_name",
    );
    assert_eq!(tables, ["conversations"], "after DROP TABLE");
    node.expect_error(&alice, "SELECT * FROM app.messages", "TABLE_NOT_FOUND")
        .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.messages (conversation_id) VALUES ('c1')",
        "TABLE_NOT_FOUND",
    )
    .await;
    node.expect_error(&admin, "DESCRIBE TABLE app.messages", "TABLE_NOT_FOUND")
        .await;
    node.expect_error(&admin, "DROP TABLE app.messages", "TABLE_NOT_FOUND")
        .await;
    let body = node.admin("DROP TABLE IF EXISTS app.messages").await;
    assert_ddl(&body, "DROP TABLE IF EXISTS");
    node.admin("DROP SHARED TABLE app.conversations").await;
    assert!(node.query(&admin, "SHOW TABLES IN app").await.is_empty());
    assert!(node
        .query(
            &admin,
            "SELECT * FROM system.tables WHERE namespace = 'app'"
        )
        .await
        .is_empty());

    // Re-created tables start empty: old rows never come back.
    node.admin(MESSAGES_DDL).await;
    node.admin(CONVERSATIONS_DDL).await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0
    );
    assert!(node
        .query(&alice, "SELECT * FROM app.messages WHERE _deleted = true")
        .await
        .is_empty());
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.conversations")
            .await,
        0
    );
    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'again')",
    )
    .await;
}

#[tokio::test]
async fn information_schema_lists_tables_and_columns() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'private-text')",
    )
    .await;

    let body = node
        .exec(&alice, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = 'app' ORDER BY table_name")
        .await;
    assert_eq!(
        strings(&rows_of(&body, 0), "table_name"),
        ["conversations", "messages"],
        "{}",
        pretty(&body)
    );

    let body = node
        .exec(
            &alice,
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = 'app' AND table_name = 'messages' ORDER BY ordinal_position",
        )
        .await;
    let columns = strings(&rows_of(&body, 0), "column_name");
    assert_eq!(
        &columns[..5.min(columns.len())],
        &MESSAGES_COLUMNS[..5],
        "declared columns in order: {columns:?}"
    );
    for system in ["_updated", "_deleted"] {
        assert!(
            columns.iter().any(|c| c == system),
            "{system} is listed: {columns:?}"
        );
    }
    assert!(
        !body.to_string().contains("private-text"),
        "information_schema never returns rows"
    );
}
