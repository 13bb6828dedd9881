//! ALTER TABLE (API.md §4, docs/sql.md "ALTER TABLE", docs/adr/0011-schema-versions.md):
//! ADD COLUMN with and without DEFAULT over hot and flushed rows, MODIFY COLUMN widening,
//! DROP COLUMN and a re-added name that never sees the dropped values, a table altered five
//! times with a flush after every step (Parquet files of six schema versions) read, updated
//! and deleted exactly, DESCRIBE and its HISTORY, every refused ALTER with its code, STREAM
//! tables, live queries across ALTER (and DROP COLUMN refused while one uses the column), and
//! concurrent ALTERs racing INSERTs.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::harness::*;

/// `message` of a DDL result.
fn message_of(body: &Value) -> String {
    result(body, 0)["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a DDL result has a message: {}", pretty(body)))
        .to_string()
}

/// `schema_version` of a table in `system.tables`.
async fn schema_version(node: &TestNode, ns: &str, table: &str) -> i64 {
    node.count(
        &admin_token(),
        &format!(
            "SELECT schema_version FROM system.tables WHERE namespace = {} AND table_name = {}",
            lit(ns),
            lit(table)
        ),
    )
    .await
}

/// The `change` column of `DESCRIBE TABLE <table> HISTORY`, oldest first, after checking
/// that versions count 1, 2, ... and `created_at` never goes back.
async fn history(node: &TestNode, table: &str) -> Vec<String> {
    let sql = format!("DESCRIBE TABLE {table} HISTORY");
    let body = node.admin(&sql).await;
    assert_eq!(
        column_names(&body, 0),
        ["schema_version", "created_at", "change", "columns"],
        "{sql}: {}",
        pretty(&body)
    );
    let rows = rows_of(&body, 0);
    let versions: Vec<i64> = column(&rows, "schema_version")
        .iter()
        .map(|v| v.as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        versions,
        (1..=rows.len() as i64).collect::<Vec<_>>(),
        "{sql}: versions in order: {}",
        pretty(&body)
    );
    let times: Vec<_> = column(&rows, "created_at")
        .iter()
        .map(|v| parse_utc(v, "created_at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{sql}: created_at never goes back: {}",
        pretty(&body)
    );
    strings(&rows, "change")
}

/// Receives `n` messages of one connection and returns them by query id (messages of one
/// commit for different subscriptions may come in any order).
async fn recv_by_query(ws: &mut WsClient, n: usize) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let msg = ws.recv().await;
        let query_id = msg["query_id"].as_str().unwrap_or_default().to_string();
        assert!(
            out.insert(query_id.clone(), msg).is_none(),
            "two messages for {query_id} where one was expected"
        );
    }
    out
}

fn keys(row: &Value) -> Vec<String> {
    let mut k: Vec<String> = row
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// ADD COLUMN and MODIFY COLUMN over hot and cold rows
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn added_columns_read_their_default_or_null_in_both_tiers() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.items (id BIGINT PRIMARY KEY, name TEXT, ratio FLOAT)")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.items (id, name, ratio) VALUES (1, 'one', 1.5), (2, 'two', 2.25)",
    )
    .await;
    flush(&node, "app.items").await;
    // Row 3 stays in the hot tier, encoded under schema version 1.
    node.exec(
        &alice,
        "INSERT INTO app.items (id, name, ratio) VALUES (3, 'three', -0.5)",
    )
    .await;

    let body = node
        .admin("ALTER TABLE app.items ADD COLUMN note TEXT")
        .await;
    assert_ddl(&body, "ADD COLUMN without DEFAULT");
    assert!(
        message_of(&body).contains("schema version 2"),
        "the message names the new version: {}",
        pretty(&body)
    );
    node.admin("ALTER TABLE app.items ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'")
        .await;
    node.admin("ALTER TABLE app.items ADD COLUMN score INT DEFAULT 40 + 2")
        .await;
    node.admin("ALTER TABLE app.items MODIFY COLUMN ratio DOUBLE")
        .await;
    assert_eq!(schema_version(&node, "app", "items").await, 5);

    let expected_old = json!([
        {"id": 1, "name": "one", "ratio": 1.5, "note": null, "priority": "normal", "score": 42},
        {"id": 2, "name": "two", "ratio": 2.25, "note": null, "priority": "normal", "score": 42},
        {"id": 3, "name": "three", "ratio": -0.5, "note": null, "priority": "normal", "score": 42},
    ]);
    let all = "SELECT id, name, ratio, note, priority, score FROM app.items ORDER BY id";
    assert_eq!(
        json!(node.query(&alice, all).await),
        expected_old,
        "rows written before the columns existed (two flushed, one hot)"
    );
    let star = node
        .exec(&alice, "SELECT * FROM app.items ORDER BY id")
        .await;
    assert_eq!(
        column_names(&star, 0),
        ["id", "name", "ratio", "note", "priority", "score", "_updated", "_deleted"],
        "added columns come after the declared ones, system columns last"
    );
    let types: BTreeMap<String, String> = result(&star, 0)["columns"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(types["ratio"], "Float64", "ratio was widened: {types:?}");
    assert_eq!(types["score"], "Int32", "{types:?}");

    // Filters on added columns see the fill values, in both tiers.
    assert_eq!(
        ids(&node
            .query(
                &alice,
                "SELECT id FROM app.items WHERE priority = 'normal' AND score = 42 ORDER BY id"
            )
            .await),
        [1, 2, 3]
    );
    assert!(node
        .query(&alice, "SELECT id FROM app.items WHERE note IS NOT NULL")
        .await
        .is_empty());

    // New rows take the DEFAULT (or the value given); NOT NULL holds for the new column.
    node.exec(
        &alice,
        "INSERT INTO app.items (id, name, ratio, priority) VALUES (4, 'four', 4.5, 'high')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.items (id, name, note, score) VALUES (5, 'five', 'n5', 5)",
    )
    .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.items (id, priority) VALUES (6, NULL)",
        "INVALID_VALUE",
    )
    .await;
    let expected = json!([
        {"id": 1, "name": "one", "ratio": 1.5, "note": null, "priority": "normal", "score": 42},
        {"id": 2, "name": "two", "ratio": 2.25, "note": null, "priority": "normal", "score": 42},
        {"id": 3, "name": "three", "ratio": -0.5, "note": null, "priority": "normal", "score": 42},
        {"id": 4, "name": "four", "ratio": 4.5, "note": null, "priority": "high", "score": 42},
        {"id": 5, "name": "five", "ratio": null, "note": "n5", "priority": "normal", "score": 5},
    ]);
    assert_eq!(json!(node.query(&alice, all).await), expected);

    // A flush writes the old-version hot row and the new rows in the current version.
    flush(&node, "app.items").await;
    assert_eq!(
        json!(node.query(&alice, all).await),
        expected,
        "after a flush of rows of several versions"
    );
    // Point reads by key in each tier.
    assert_eq!(
        json!(
            node.query(&alice, "SELECT priority, score FROM app.items WHERE id = 1")
                .await
        ),
        json!([{"priority": "normal", "score": 42}])
    );

    // The versions survive a restart.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_eq!(
        json!(node.query(&alice, all).await),
        expected,
        "after a restart"
    );
    assert_eq!(schema_version(&node, "app", "items").await, 5);
    assert_eq!(
        history(&node, "app.items").await,
        [
            "CREATE TABLE",
            "ADD COLUMN note TEXT",
            "ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'",
            "ADD COLUMN score INT DEFAULT 40 + 2",
            "MODIFY COLUMN ratio FLOAT -> DOUBLE",
        ]
    );
    let files: Vec<String> = std::fs::read_dir(node.data_dir().join("catalog/app/items"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for v in 1..=5 {
        assert!(
            files.contains(&format!("schema_v{v}.json")),
            "catalog keeps schema_v{v}.json: {files:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Five ALTERs, a flush after each: files of six versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_table_altered_five_times_reads_files_of_every_version() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, n INT, label TEXT)")
        .await;

    // v1
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label) VALUES (1, 10, 'one')",
    )
    .await;
    flush(&node, "app.t").await;
    // v2: a TEXT column `a`, which will be dropped.
    node.admin("ALTER TABLE app.t ADD COLUMN a TEXT").await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label, a) VALUES (2, 20, 'two', 'old a2')",
    )
    .await;
    flush(&node, "app.t").await;
    // v3
    node.admin("ALTER TABLE app.t ADD COLUMN b TEXT DEFAULT 'bee'")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label, a, b) VALUES (3, 30, 'three', 'old a3', 'b3')",
    )
    .await;
    flush(&node, "app.t").await;
    // v4
    node.admin("ALTER TABLE app.t MODIFY COLUMN n BIGINT").await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label, a, b) VALUES (4, 5000000000, 'four', 'old a4', 'b4')",
    )
    .await;
    flush(&node, "app.t").await;
    // v5
    node.admin("ALTER TABLE app.t DROP COLUMN a").await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label, b) VALUES (5, 50, 'five', 'b5')",
    )
    .await;
    flush(&node, "app.t").await;
    // v6: `a` again, another column with another type: none of the old values may show.
    node.admin("ALTER TABLE app.t ADD COLUMN a INT DEFAULT 7")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, label, b, a) VALUES (6, 60, 'six', 'b6', 66)",
    )
    .await;
    flush(&node, "app.t").await;

    let stats = node.query(&admin_token(), "SHOW TABLE STATS app.t").await;
    assert_eq!(
        stats.len(),
        1,
        "SHOW TABLE STATS: {}",
        pretty(&json!(stats))
    );
    let files = stats[0]["parquet_files"].as_i64().unwrap_or(0);
    assert!(
        files >= 6,
        "one file per version at least: {}",
        pretty(&json!(stats))
    );

    let all = "SELECT id, n, label, b, a FROM app.t ORDER BY id";
    let expected = json!([
        {"id": 1, "n": 10, "label": "one", "b": "bee", "a": 7},
        {"id": 2, "n": 20, "label": "two", "b": "bee", "a": 7},
        {"id": 3, "n": 30, "label": "three", "b": "b3", "a": 7},
        {"id": 4, "n": 5000000000i64, "label": "four", "b": "b4", "a": 7},
        {"id": 5, "n": 50, "label": "five", "b": "b5", "a": 7},
        {"id": 6, "n": 60, "label": "six", "b": "b6", "a": 66},
    ]);
    assert_eq!(json!(node.query(&alice, all).await), expected);
    let star = node.exec(&alice, "SELECT * FROM app.t ORDER BY id").await;
    assert_eq!(
        column_names(&star, 0),
        ["id", "n", "label", "b", "a", "_updated", "_deleted"]
    );
    assert!(
        node.query(&bob, all).await.is_empty(),
        "bob's partition stays empty"
    );
    // Filters and aggregates over the adapted columns.
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.t WHERE a = 7")
            .await,
        5
    );
    assert_eq!(
        node.count(&alice, "SELECT SUM(n) FROM app.t").await,
        5_000_000_170
    );

    let body = node.admin("DESCRIBE TABLE app.t").await;
    assert_eq!(
        strings(&rows_of(&body, 0), "column_name"),
        ["id", "n", "label", "b", "a", "_updated", "_deleted"]
    );
    assert!(
        message_of(&body).contains("schema version 6"),
        "DESCRIBE names the version: {}",
        pretty(&body)
    );
    let n = find_row(&rows_of(&body, 0), "column_name", "n").clone();
    assert_eq!(n["data_type"], "BIGINT", "{n}");
    let a = find_row(&rows_of(&body, 0), "column_name", "a").clone();
    assert_eq!(
        (a["data_type"].clone(), a["column_default"].clone()),
        (json!("INT"), json!("7")),
        "{a}"
    );
    assert_eq!(
        history(&node, "app.t").await,
        [
            "CREATE TABLE",
            "ADD COLUMN a TEXT",
            "ADD COLUMN b TEXT DEFAULT 'bee'",
            "MODIFY COLUMN n INT -> BIGINT",
            "DROP COLUMN a",
            "ADD COLUMN a INT DEFAULT 7",
        ]
    );

    // UPDATE and DELETE of rows that live in files of old versions.
    assert_eq!(
        node.affected(&alice, "UPDATE app.t SET label = 'uno', a = 1 WHERE id = 1")
            .await,
        1
    );
    assert_eq!(
        node.affected(&alice, "UPDATE app.t SET n = n * 1000000000 WHERE id = 2")
            .await,
        1
    );
    // Rows 1 and 2 read b's DEFAULT (row 1 was written back with it by the first UPDATE).
    assert_eq!(
        node.affected(&alice, "UPDATE app.t SET b = 'bb' WHERE b = 'bee'")
            .await,
        2
    );
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.t WHERE id IN (3, 5)")
            .await,
        2
    );
    let current = json!([
        {"id": 1, "n": 10, "label": "uno", "b": "bb", "a": 1},
        {"id": 2, "n": 20000000000i64, "label": "two", "b": "bb", "a": 7},
        {"id": 4, "n": 5000000000i64, "label": "four", "b": "b4", "a": 7},
        {"id": 6, "n": 60, "label": "six", "b": "b6", "a": 66},
    ]);
    assert_eq!(json!(node.query(&alice, all).await), current);
    assert_eq!(
        ids(&node
            .query(
                &alice,
                "SELECT id FROM app.t WHERE _deleted = true ORDER BY id"
            )
            .await),
        [3, 5]
    );

    // The new versions are hot (v6); a flush and a restart change nothing.
    flush(&node, "app.t").await;
    assert_eq!(
        json!(node.query(&alice, all).await),
        current,
        "after a flush"
    );
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_eq!(
        json!(node.query(&alice, all).await),
        current,
        "after a restart"
    );
    assert_eq!(
        ids(&node
            .query(
                &alice,
                "SELECT id FROM app.t WHERE _deleted = true ORDER BY id"
            )
            .await),
        [3, 5]
    );
}

// ---------------------------------------------------------------------------------------------
// Refused ALTERs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn refused_alters_have_stable_codes_and_change_nothing() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY, n BIGINT, i INT, s TEXT)")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.t (id, n, i, s) VALUES (1, 1, 1, 'x')",
    )
    .await;
    node.admin("CREATE STREAM TABLE app.typing (user_name TEXT)")
        .await;

    let cases: &[(&str, &str)] = &[
        ("ALTER TABLE app.nope ADD COLUMN x INT", "TABLE_NOT_FOUND"),
        ("ALTER TABLE nope.t ADD COLUMN x INT", "NAMESPACE_NOT_FOUND"),
        (
            "ALTER TABLE app.t ADD COLUMN s TEXT",
            "COLUMN_ALREADY_EXISTS",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN _updated TEXT",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN _deleted BOOLEAN",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN _seq BIGINT",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN _mine TEXT",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN Big TEXT",
            "INVALID_IDENTIFIER",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT NOT NULL",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT NOT NULL DEFAULT NULL",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT DEFAULT 'abc'",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT DEFAULT n + 1",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT PRIMARY KEY",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x INT UNIQUE",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t ADD COLUMN x GEOMETRY",
            "INVALID_TABLE_DEFINITION",
        ),
        ("ALTER TABLE app.t DROP COLUMN nope", "COLUMN_NOT_FOUND"),
        (
            "ALTER TABLE app.t DROP COLUMN id",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t DROP COLUMN _updated",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t DROP COLUMN _deleted",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN nope BIGINT",
            "COLUMN_NOT_FOUND",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN id INT",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN _updated TEXT",
            "SYSTEM_COLUMN_READONLY",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN n INT",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN i SMALLINT",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN i TEXT",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN i DOUBLE",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN s JSON",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "ALTER TABLE app.t MODIFY COLUMN i GEOMETRY",
            "INVALID_TABLE_DEFINITION",
        ),
        ("ALTER TABLE app.t RENAME TO u", "SQL_PARSE_ERROR"),
        (
            "ALTER TABLE app.t ADD COLUMN x INT, ADD COLUMN y INT",
            "SQL_PARSE_ERROR",
        ),
        ("ALTER TABLE app.t DROP COLUMN", "SQL_PARSE_ERROR"),
        ("ALTER TABLE t ADD COLUMN x INT", "INVALID_IDENTIFIER"),
        (
            "ALTER TABLE system.users ADD COLUMN x INT",
            "UNSUPPORTED_STATEMENT",
        ),
        (
            "ALTER TABLE app.typing ADD COLUMN x INT",
            "UNSUPPORTED_STATEMENT",
        ),
        (
            "ALTER TABLE app.typing DROP COLUMN user_name",
            "UNSUPPORTED_STATEMENT",
        ),
        (
            "ALTER TABLE app.typing MODIFY COLUMN user_name TEXT",
            "UNSUPPORTED_STATEMENT",
        ),
    ];
    for (sql, code) in cases {
        node.expect_error(&admin, sql, code).await;
    }
    for sql in [
        "ALTER TABLE app.t ADD COLUMN x INT",
        "ALTER TABLE app.t DROP COLUMN s",
        "ALTER TABLE app.t MODIFY COLUMN i BIGINT",
    ] {
        node.expect_error(&alice, sql, "FORBIDDEN").await;
    }
    // A statement after a failed ALTER does not run; the error names the ALTER.
    let resp = node
        .sql(
            &admin,
            "ALTER TABLE app.t ADD COLUMN s TEXT; ALTER TABLE app.t ADD COLUMN y INT",
        )
        .await;
    let err = node.assert_error(&resp, "COLUMN_ALREADY_EXISTS", "two statements");
    assert_eq!(err["statement_index"], 0);

    // Nothing changed.
    assert_eq!(schema_version(&node, "app", "t").await, 1);
    assert_eq!(schema_version(&node, "app", "typing").await, 1);
    let described = node.query(&admin, "DESCRIBE TABLE app.t").await;
    assert_eq!(
        strings(&described, "column_name"),
        ["id", "n", "i", "s", "_updated", "_deleted"]
    );
    assert_eq!(history(&node, "app.t").await, ["CREATE TABLE"]);

    // No-ops succeed without a new version.
    for sql in [
        "ALTER TABLE app.t ADD COLUMN IF NOT EXISTS s TEXT",
        "ALTER TABLE app.t DROP COLUMN IF EXISTS nope",
        "ALTER TABLE app.t MODIFY COLUMN n BIGINT",
    ] {
        let body = node.admin(sql).await;
        assert!(
            message_of(&body).contains("unchanged"),
            "{sql}: {}",
            pretty(&body)
        );
    }
    assert_eq!(schema_version(&node, "app", "t").await, 1);
    // The PostgreSQL spelling of MODIFY COLUMN.
    node.admin("ALTER TABLE app.t ALTER COLUMN i TYPE BIGINT")
        .await;
    assert_eq!(schema_version(&node, "app", "t").await, 2);
    assert_eq!(
        json!(node.query(&alice, "SELECT id, n, i, s FROM app.t").await),
        json!([{"id": 1, "n": 1, "i": 1, "s": "x"}])
    );
}

#[tokio::test]
async fn dropping_every_column_but_the_key_is_allowed() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE USER TABLE app.k (id BIGINT PRIMARY KEY, a TEXT, b INT)")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.k (id, a, b) VALUES (1, 'x', 1), (2, 'y', 2)",
    )
    .await;
    flush(&node, "app.k").await;
    node.exec(&alice, "INSERT INTO app.k (id, a, b) VALUES (3, 'z', 3)")
        .await;
    node.admin("ALTER TABLE app.k DROP COLUMN a").await;
    node.admin("ALTER TABLE app.k DROP COLUMN b").await;
    let star = node.exec(&alice, "SELECT * FROM app.k ORDER BY id").await;
    assert_eq!(column_names(&star, 0), ["id", "_updated", "_deleted"]);
    assert_eq!(ids(&rows_of(&star, 0)), [1, 2, 3]);
    node.exec(&alice, "INSERT INTO app.k (id) VALUES (4)").await;
    node.exec(&alice, "INSERT INTO app.k VALUES (5)").await;
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.k WHERE id = 1")
            .await,
        1
    );
    flush(&node, "app.k").await;
    assert_eq!(
        ids(&node.query(&alice, "SELECT id FROM app.k ORDER BY id").await),
        [2, 3, 4, 5]
    );
    // Adding `a` back gives a new, empty column.
    node.admin("ALTER TABLE app.k ADD COLUMN a TEXT").await;
    assert!(node
        .query(&alice, "SELECT id FROM app.k WHERE a IS NOT NULL")
        .await
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Live queries across ALTER
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn live_subscriptions_keep_receiving_across_add_column() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let mut ws = node.ws(&alice).await;
    ws.subscribe_many(vec![
        subscription("star", "SELECT * FROM app.messages", Value::Null),
        subscription(
            "c1",
            "SELECT id, content FROM app.messages WHERE conversation_id = 'c1'",
            Value::Null,
        ),
    ])
    .await;
    let mut subscribed = recv_by_query(&mut ws, 2).await;
    for q in ["star", "c1"] {
        assert_eq!(
            subscribed.remove(q).map(|m| m["type"].clone()),
            Some(json!("subscribed"))
        );
    }
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'before')",
    )
    .await;
    let first = recv_by_query(&mut ws, 2).await;
    let first_seq = first["star"]["seq"].as_u64().unwrap_or(0);
    assert_eq!(first["c1"]["rows"], json!([{"id": 1, "content": "before"}]));

    node.admin("ALTER TABLE app.messages ADD COLUMN priority TEXT DEFAULT 'normal'")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content, priority) VALUES (2, 'c1', 'after', 'high')",
    )
    .await;
    let second = recv_by_query(&mut ws, 2).await;
    for q in ["star", "c1"] {
        assert_eq!(
            second[q]["change_type"],
            "INSERT",
            "{q}: {}",
            pretty(&second[q])
        );
    }
    // `SELECT *` keeps the columns it had when it subscribed.
    let row = &second["star"]["rows"][0];
    assert_eq!(keys(row), sorted(&MESSAGES_COLUMNS), "{}", pretty(row));
    assert_eq!(
        (row["id"].clone(), row["content"].clone()),
        (json!(2), json!("after"))
    );
    assert_eq!(second["c1"]["rows"], json!([{"id": 2, "content": "after"}]));

    // An UPDATE of the row written before the ALTER: old and new image in the old shape.
    node.exec(
        &alice,
        "UPDATE app.messages SET content = 'edited' WHERE id = 1",
    )
    .await;
    let third = recv_by_query(&mut ws, 2).await;
    assert_eq!(third["c1"]["change_type"], "UPDATE");
    assert_eq!(third["c1"]["rows"], json!([{"id": 1, "content": "edited"}]));
    assert_eq!(
        third["c1"]["old_values"],
        json!([{"id": 1, "content": "before"}])
    );
    assert_eq!(
        keys(&third["star"]["old_values"][0]),
        sorted(&MESSAGES_COLUMNS)
    );

    // A subscription made after the ALTER sees the new column, also for old rows, and a
    // resume from before the ALTER replays the old commits in the new shape.
    let mut late = node.ws(&alice).await;
    late.subscribe(
        "pri",
        "SELECT id, priority FROM app.messages",
        json!({"from_seq": first_seq - 1}),
    )
    .await;
    late.expect_subscribed("pri").await;
    let replayed = late.expect_change("pri", "INSERT").await;
    assert_eq!(
        replayed["rows"],
        json!([{"id": 1, "priority": "normal"}]),
        "replay of a pre-ALTER insert"
    );
    let replayed = late.expect_change("pri", "INSERT").await;
    assert_eq!(replayed["rows"], json!([{"id": 2, "priority": "high"}]));
    let replayed = late.expect_change("pri", "UPDATE").await;
    assert_eq!(replayed["rows"], json!([{"id": 1, "priority": "normal"}]));
    assert_eq!(
        replayed["old_values"],
        json!([{"id": 1, "priority": "normal"}])
    );

    node.exec(&alice, "DELETE FROM app.messages WHERE id = 2")
        .await;
    let deleted = recv_by_query(&mut ws, 2).await;
    assert_eq!(deleted["c1"]["change_type"], "DELETE");
    assert_eq!(
        deleted["c1"]["rows"],
        json!([{"id": 2, "content": "after"}])
    );
    let gone = late.expect_change("pri", "DELETE").await;
    assert_eq!(gone["rows"], json!([{"id": 2, "priority": "high"}]));

    // A widened column reaches a subscription compiled before the MODIFY with its new type.
    node.admin("CREATE SHARED TABLE app.counters (id TEXT PRIMARY KEY, n INT)")
        .await;
    let mut counters = node.ws(&alice).await;
    counters
        .subscribe("n", "SELECT id, n FROM app.counters", Value::Null)
        .await;
    counters.expect_subscribed("n").await;
    node.admin("ALTER TABLE app.counters MODIFY COLUMN n BIGINT")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.counters (id, n) VALUES ('big', 9000000000)",
    )
    .await;
    let change = counters.expect_change("n", "INSERT").await;
    assert_eq!(change["rows"], json!([{"id": "big", "n": 9000000000i64}]));
    assert!(
        ws.sync().await.is_empty(),
        "nothing else for the first connection"
    );
}

#[tokio::test]
async fn drop_column_is_refused_while_a_live_query_uses_it() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.rooms (id TEXT PRIMARY KEY, title TEXT, topic TEXT, \
         archived BOOLEAN, size INT, spare TEXT)",
    )
    .await;
    let admin = admin_token();
    let alice = token("alice", false);
    let mut ws = node.ws(&alice).await;
    ws.subscribe(
        "open",
        "SELECT id, title FROM app.rooms WHERE archived = false",
        Value::Null,
    )
    .await;
    let open_id = ws.expect_subscribed("open").await;
    ws.subscribe(
        "big",
        "SELECT id FROM app.rooms WHERE size > 3",
        Value::Null,
    )
    .await;
    let big_id = ws.expect_subscribed("big").await;

    for (sql, live_id) in [
        ("ALTER TABLE app.rooms DROP COLUMN title", &open_id),
        ("ALTER TABLE app.rooms DROP COLUMN archived", &open_id),
        ("ALTER TABLE app.rooms DROP COLUMN size", &big_id),
        ("ALTER TABLE app.rooms MODIFY COLUMN size BIGINT", &big_id),
    ] {
        let err = node.expect_error(&admin, sql, "TABLE_IN_USE").await;
        assert!(
            err["details"]
                .as_str()
                .is_some_and(|d| d.contains(live_id.as_str())),
            "{sql}: TABLE_IN_USE lists {live_id}: {}",
            pretty(&err)
        );
    }
    assert_eq!(schema_version(&node, "app", "rooms").await, 1);
    // A column nobody uses goes; the subscriptions keep working.
    node.admin("ALTER TABLE app.rooms DROP COLUMN topic").await;
    node.exec(
        &alice,
        "INSERT INTO app.rooms (id, title, archived, size) VALUES ('r1', 'Lobby', false, 5)",
    )
    .await;
    let mut got = recv_by_query(&mut ws, 2).await;
    assert_eq!(
        got.remove("open").map(|m| m["rows"].clone()),
        Some(json!([{"id": "r1", "title": "Lobby"}]))
    );
    assert_eq!(
        got.remove("big").map(|m| m["rows"].clone()),
        Some(json!([{"id": "r1"}]))
    );

    // `SELECT *` uses every column it selected.
    let mut star = node.ws(&alice).await;
    star.subscribe("star", "SELECT * FROM app.rooms", Value::Null)
        .await;
    let star_id = star.expect_subscribed("star").await;
    let err = node
        .expect_error(
            &admin,
            "ALTER TABLE app.rooms DROP COLUMN spare",
            "TABLE_IN_USE",
        )
        .await;
    assert!(
        err["details"]
            .as_str()
            .is_some_and(|d| d.contains(&star_id)),
        "{}",
        pretty(&err)
    );
    // ... but not a column added after it subscribed.
    node.admin("ALTER TABLE app.rooms ADD COLUMN extra TEXT")
        .await;
    node.admin("ALTER TABLE app.rooms DROP COLUMN extra").await;
    star.unsubscribe("star").await;
    assert!(star.sync().await.is_empty());
    node.admin("ALTER TABLE app.rooms DROP COLUMN spare").await;

    // After unsubscribing, the columns may go.
    ws.unsubscribe("big").await;
    assert!(ws.sync().await.is_empty());
    node.admin("ALTER TABLE app.rooms MODIFY COLUMN size BIGINT")
        .await;
    node.admin("ALTER TABLE app.rooms DROP COLUMN size").await;
    node.expect_error(
        &admin,
        "ALTER TABLE app.rooms DROP COLUMN title",
        "TABLE_IN_USE",
    )
    .await;
    ws.unsubscribe("open").await;
    assert!(ws.sync().await.is_empty());
    node.admin("ALTER TABLE app.rooms DROP COLUMN title").await;
    node.admin("ALTER TABLE app.rooms DROP COLUMN archived")
        .await;
    let star = node.exec(&alice, "SELECT * FROM app.rooms").await;
    assert_eq!(column_names(&star, 0), ["id", "_updated", "_deleted"]);
    assert_eq!(ids_text(&rows_of(&star, 0)), ["r1"]);
}

fn ids_text(rows: &[Value]) -> Vec<String> {
    strings(rows, "id")
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_alters_and_inserts_all_commit() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.c (id BIGINT PRIMARY KEY, v TEXT)")
        .await;
    node.exec(&alice, "INSERT INTO app.c (id, v) VALUES (0, 'before')")
        .await;
    flush(&node, "app.c").await;

    let alters: Vec<String> = (1..=10)
        .map(|i| format!("ALTER TABLE app.c ADD COLUMN c{i} INT DEFAULT {i}"))
        .collect();
    let inserts: Vec<String> = (1..=10)
        .map(|i| format!("INSERT INTO app.c (id, v) VALUES ({i}, 'during')"))
        .collect();
    let alter_runs = futures::future::join_all(alters.iter().map(|sql| node.sql(&admin, sql)));
    let insert_runs = futures::future::join_all(inserts.iter().map(|sql| node.sql(&alice, sql)));
    let (alter_resps, insert_resps) = tokio::join!(alter_runs, insert_runs);
    for (resp, sql) in alter_resps.iter().zip(&alters) {
        node.assert_success(resp, sql);
    }
    for (resp, sql) in insert_resps.iter().zip(&inserts) {
        node.assert_success(resp, sql);
    }

    assert_eq!(schema_version(&node, "app", "c").await, 11);
    let changes = history(&node, "app.c").await;
    assert_eq!(changes.len(), 11);
    let mut added: Vec<String> = changes[1..].to_vec();
    added.sort();
    let mut wanted: Vec<String> = (1..=10)
        .map(|i| format!("ADD COLUMN c{i} INT DEFAULT {i}"))
        .collect();
    wanted.sort();
    assert_eq!(added, wanted, "every ALTER made one version");

    let names: Vec<String> = (1..=10).map(|i| format!("c{i}")).collect();
    let sql = format!("SELECT id, v, {} FROM app.c ORDER BY id", names.join(", "));
    let check = |rows: &[Value]| {
        assert_eq!(
            ids(rows),
            (0..=10).collect::<Vec<i64>>(),
            "every insert is readable"
        );
        for row in rows {
            for (i, name) in names.iter().enumerate() {
                // Rows written before c{i} existed read its DEFAULT; later ones took it.
                assert_eq!(row[name], json!(i as i64 + 1), "{name} of {row}");
            }
        }
    };
    check(node.query(&alice, &sql).await.as_slice());
    flush(&node, "app.c").await;
    check(node.query(&alice, &sql).await.as_slice());
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    check(node.query(&alice, &sql).await.as_slice());
}
