//! DML and queries (API.md §3-4): INSERT (multi-row VALUES, INSERT ... SELECT, defaults,
//! primary-key violations, NOT NULL and JSON validation, read-only system columns), UPDATE
//! (`affected_rows`, `_updated` advancing), soft DELETE (hidden unless `_deleted` is asked for,
//! keys reusable), UPDATE/DELETE whose WHERE holds a subquery or is always false (exactly the
//! matching rows change), multi-statement requests, joins/aggregates/window functions, and the
//! errors for missing tables and columns.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn insert_and_select_return_the_documented_shapes() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let before = Utc::now() - TimeDelta::seconds(60);

    let sql = "INSERT INTO app.messages (conversation_id, content, meta) VALUES \
               ('c1', 'hello', '{\"k\":1}'), ('c1', 'world', NULL), ('c2', 'third', '[1,2]')";
    let body = node.exec(&alice, sql).await;
    assert_eq!(
        affected_of(&body, sql),
        3,
        "affected_rows of a 3-row INSERT: {}",
        pretty(&body)
    );
    assert_eq!(
        result(&body, 0)["rows"],
        json!([]),
        "DML returns no rows: {}",
        pretty(&body)
    );

    let body = node
        .exec(&alice, "SELECT * FROM app.messages ORDER BY id")
        .await;
    assert_eq!(column_names(&body, 0), MESSAGES_COLUMNS, "SELECT * columns");
    let rows = rows_of(&body, 0);
    assert_eq!(
        strings(&rows, "content"),
        ["hello", "world", "third"],
        "{}",
        pretty(&body)
    );
    assert_eq!(
        column(&rows, "meta"),
        [json!({"k": 1}), json!(null), json!([1, 2])]
    );
    let got = ids(&rows);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "default ids are distinct and increasing: {got:?}"
    );
    let after = Utc::now() + TimeDelta::seconds(60);
    for row in &rows {
        let created = ts_micros(&row["created_at"], "created_at DEFAULT NOW()");
        let updated = ts_micros(&row["_updated"], "_updated");
        assert!(
            created >= before && created <= after,
            "created_at {created} is now-ish"
        );
        assert!(
            updated >= before && updated <= after,
            "_updated {updated} is now-ish"
        );
        assert_eq!(row["_deleted"], json!(false));
    }

    let rows = node
        .query(
            &alice,
            "SELECT content FROM app.messages WHERE conversation_id = 'c1' ORDER BY content",
        )
        .await;
    assert_eq!(
        rows,
        [json!({"content": "hello"}), json!({"content": "world"})]
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        3
    );
}

#[tokio::test]
async fn insert_select_copies_exactly_the_selected_rows() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.src (id BIGINT PRIMARY KEY, v INT, label TEXT)")
        .await;
    node.admin("CREATE SHARED TABLE app.dst (id BIGINT PRIMARY KEY, v INT, label TEXT)")
        .await;

    let values: Vec<String> = (1..=200)
        .map(|i| format!("({i}, {}, 'row-{i}')", i * 3))
        .collect();
    let sql = format!(
        "INSERT INTO app.src (id, v, label) VALUES {}",
        values.join(", ")
    );
    assert_eq!(node.affected(&alice, &sql).await, 200);

    let copied = node
        .affected(
            &alice,
            "INSERT INTO app.dst (id, v, label) SELECT id, v, label FROM app.src WHERE v % 2 = 0",
        )
        .await;
    assert_eq!(
        copied, 100,
        "affected_rows of INSERT ... SELECT = rows written"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.dst").await,
        100
    );
    assert_eq!(
        node.count(&alice, "SELECT SUM(v) FROM app.dst").await,
        30300
    );
    assert_eq!(
        node.scalar(&alice, "SELECT label FROM app.dst WHERE id = 42")
            .await,
        json!("row-42")
    );
    assert!(node
        .query(&alice, "SELECT id FROM app.dst WHERE id = 41")
        .await
        .is_empty());

    let none = node
        .affected(
            &alice,
            "INSERT INTO app.dst (id, v, label) SELECT id, v, label FROM app.src WHERE v < 0",
        )
        .await;
    assert_eq!(none, 0);
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.dst").await,
        100
    );
}

#[tokio::test]
async fn update_changes_matching_rows_and_advances_updated() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'a'), (2, 'c1', 'b'), (3, 'c2', 'c')",
    )
    .await;
    let select = "SELECT id, content, meta, _updated FROM app.messages ORDER BY id";
    let before = node.query(&alice, select).await;

    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.messages SET content = 'edited' WHERE id = 2"
        )
        .await,
        1
    );
    let after = node.query(&alice, select).await;
    assert_eq!(strings(&after, "content"), ["a", "edited", "c"]);
    let old = ts_micros(&before[1]["_updated"], "_updated before");
    let new = ts_micros(&after[1]["_updated"], "_updated after");
    assert!(new > old, "UPDATE advances _updated: {old} -> {new}");
    assert_eq!(
        after[0]["_updated"], before[0]["_updated"],
        "an untouched row keeps its _updated"
    );
    assert_eq!(
        after[2]["_updated"], before[2]["_updated"],
        "an untouched row keeps its _updated"
    );

    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.messages SET content = 'x' WHERE conversation_id = 'zzz'"
        )
        .await,
        0
    );
    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.messages SET meta = '{\"tag\":\"x\"}' WHERE conversation_id = 'c1'"
        )
        .await,
        2
    );
    let rows = node.query(&alice, select).await;
    assert_eq!(
        column(&rows, "meta"),
        [json!({"tag": "x"}), json!({"tag": "x"}), json!(null)]
    );

    assert_eq!(
        node.affected(&alice, "UPDATE app.messages SET content = 'all'")
            .await,
        3
    );
    let rows = node.query(&alice, select).await;
    assert_eq!(strings(&rows, "content"), ["all", "all", "all"]);
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        3,
        "UPDATE never adds rows"
    );

    node.expect_error(
        &alice,
        "UPDATE app.messages SET nosuch = 1 WHERE id = 1",
        "SQL_PLAN_ERROR",
    )
    .await;
}

#[tokio::test]
async fn delete_is_soft_and_keys_can_be_reinserted() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'a'), (2, 'c1', 'b'), (3, 'c2', 'c')",
    )
    .await;
    let old = node
        .query(&alice, "SELECT _updated FROM app.messages WHERE id = 2")
        .await;
    let old = ts_micros(&single(&old, "_updated of row 2"), "_updated");

    assert_eq!(
        node.affected(&alice, "DELETE FROM app.messages WHERE id = 2")
            .await,
        1
    );
    assert_eq!(
        ids(&node
            .query(&alice, "SELECT * FROM app.messages ORDER BY id")
            .await),
        [1, 3]
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        2
    );
    assert!(node
        .query(&alice, "SELECT id FROM app.messages WHERE id = 2")
        .await
        .is_empty());

    let deleted = node
        .query(
            &alice,
            "SELECT id, content, _deleted, _updated FROM app.messages WHERE _deleted = true",
        )
        .await;
    assert_eq!(
        deleted.len(),
        1,
        "the soft-deleted row: {}",
        pretty(&json!(deleted))
    );
    assert_eq!(deleted[0]["id"], json!(2));
    assert_eq!(deleted[0]["content"], "b");
    assert_eq!(deleted[0]["_deleted"], json!(true));
    let when = ts_micros(&deleted[0]["_updated"], "_updated of the deleted row");
    assert!(when > old, "DELETE advances _updated: {old} -> {when}");

    assert_eq!(
        node.affected(&alice, "DELETE FROM app.messages WHERE id = 2")
            .await,
        0,
        "a deleted row is not deleted twice"
    );
    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.messages SET content = 'zombie' WHERE id = 2"
        )
        .await,
        0
    );

    // The key of a soft-deleted row can be inserted again.
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (2, 'c1', 'b2')",
    )
    .await;
    let rows = node
        .query(
            &alice,
            "SELECT id, content, _deleted FROM app.messages ORDER BY id",
        )
        .await;
    assert_eq!(ids(&rows), [1, 2, 3]);
    assert_eq!(rows[1]["content"], "b2");
    assert_eq!(rows[1]["_deleted"], json!(false));
    assert!(node
        .query(&alice, "SELECT id FROM app.messages WHERE _deleted = true")
        .await
        .is_empty());
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages WHERE id = 2 AND (_deleted = true OR _deleted = false)").await,
        1,
        "one version per key"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        3
    );
}

#[tokio::test]
async fn duplicate_primary_keys_are_rejected() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'General')",
    )
    .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'Other')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    assert_eq!(
        node.scalar(
            &alice,
            "SELECT title FROM app.conversations WHERE id = 'c1'"
        )
        .await,
        json!("General")
    );

    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (7, 'c1', 'first')",
    )
    .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (7, 'c1', 'second')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    let rows = node
        .query(&alice, "SELECT id, content FROM app.messages")
        .await;
    assert_eq!(rows, [json!({"id": 7, "content": "first"})]);
}

#[tokio::test]
async fn values_are_validated() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    for sql in [
        "INSERT INTO app.messages (content) VALUES ('no conversation')",
        "INSERT INTO app.messages (conversation_id, content) VALUES (NULL, 'null conversation')",
        "INSERT INTO app.messages (conversation_id, meta) VALUES ('c1', '{not json')",
        "INSERT INTO app.messages (conversation_id, meta) VALUES ('c1', '')",
    ] {
        node.expect_error(&alice, sql, "INVALID_VALUE").await;
    }
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0,
        "rejected rows are not written"
    );

    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, meta) VALUES (1, 'c1', '{\"ok\":true}')",
    )
    .await;
    node.expect_error(
        &alice,
        "UPDATE app.messages SET conversation_id = NULL WHERE id = 1",
        "INVALID_VALUE",
    )
    .await;
    node.expect_error(
        &alice,
        "UPDATE app.messages SET meta = '{bad' WHERE id = 1",
        "INVALID_VALUE",
    )
    .await;
    let rows = node
        .query(&alice, "SELECT conversation_id, meta FROM app.messages")
        .await;
    assert_eq!(
        rows,
        [json!({"conversation_id": "c1", "meta": {"ok": true}})],
        "rejected updates change nothing"
    );
}

#[tokio::test]
async fn system_columns_are_read_only() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'a')",
    )
    .await;
    let before = node.query(&alice, "SELECT * FROM app.messages").await;

    for sql in [
        "INSERT INTO app.messages (id, conversation_id, _updated) VALUES (2, 'c1', NOW())",
        "INSERT INTO app.messages (id, conversation_id, _deleted) VALUES (3, 'c1', true)",
        "INSERT INTO app.conversations (id, _deleted) VALUES ('c1', false)",
        "UPDATE app.messages SET _deleted = true WHERE id = 1",
        "UPDATE app.messages SET _updated = NOW() WHERE id = 1",
        "UPDATE app.messages SET content = 'b', _deleted = true WHERE id = 1",
    ] {
        node.expect_error(&alice, sql, "SYSTEM_COLUMN_READONLY")
            .await;
    }

    assert_eq!(
        node.query(&alice, "SELECT * FROM app.messages").await,
        before,
        "nothing changed"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.conversations")
            .await,
        0
    );
}

#[tokio::test]
async fn subquery_and_always_false_where_change_exactly_the_matching_rows() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.items (id BIGINT PRIMARY KEY, name TEXT, price INT)")
        .await;
    node.admin("CREATE SHARED TABLE app.flags (id BIGINT PRIMARY KEY, flagged BOOLEAN)")
        .await;
    let values: Vec<String> = (1..=10)
        .map(|i| format!("({i}, 'item-{i}', {})", i * 10))
        .collect();
    node.exec(
        &alice,
        &format!(
            "INSERT INTO app.items (id, name, price) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.flags (id, flagged) VALUES (2, true), (4, true), (6, false), (8, true)",
    )
    .await;
    let state = "SELECT id, name, price FROM app.items ORDER BY id";

    let n = node
        .affected(&alice, "UPDATE app.items SET price = 0 WHERE id IN (SELECT id FROM app.flags WHERE flagged = true)")
        .await;
    assert_eq!(
        n, 3,
        "UPDATE ... WHERE id IN (subquery) changes exactly the 3 flagged rows"
    );
    let prices: Vec<i64> = column(&node.query(&alice, state).await, "price")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(prices, [10, 0, 30, 0, 50, 60, 70, 0, 90, 100]);

    let n = node
        .affected(
            &alice,
            "DELETE FROM app.items WHERE id IN (SELECT id FROM app.flags WHERE flagged = false)",
        )
        .await;
    assert_eq!(
        n, 1,
        "DELETE ... WHERE id IN (subquery) deletes exactly row 6"
    );
    assert_eq!(
        ids(&node.query(&alice, state).await),
        [1, 2, 3, 4, 5, 7, 8, 9, 10]
    );

    for sql in [
        "DELETE FROM app.items WHERE id IN (SELECT id FROM app.flags WHERE id > 100)",
        "UPDATE app.items SET name = 'x' WHERE id IN (SELECT id FROM app.flags WHERE id > 100)",
        "DELETE FROM app.items WHERE 1 = 0",
        "UPDATE app.items SET name = 'x' WHERE 1 = 0",
        "DELETE FROM app.items WHERE false",
        "DELETE FROM app.items WHERE id = 1 AND id = 2",
    ] {
        assert_eq!(node.affected(&alice, sql).await, 0, "{sql} matches nothing");
    }
    let rows = node.query(&alice, state).await;
    assert_eq!(
        ids(&rows),
        [1, 2, 3, 4, 5, 7, 8, 9, 10],
        "nothing was deleted"
    );
    assert!(
        strings(&rows, "name")
            .iter()
            .all(|n| n.starts_with("item-")),
        "nothing was renamed"
    );

    // A correlated EXISTS: either exactly the matching rows change, or a clear refusal.
    let sql = "DELETE FROM app.items WHERE EXISTS \
               (SELECT 1 FROM app.flags f WHERE f.id = app.items.id AND f.flagged = true)";
    let resp = node.sql(&alice, sql).await;
    if node.assert_answer_or_client_error(&resp, sql) {
        assert_eq!(affected_of(&resp.1, sql), 3, "EXISTS matches rows 2, 4, 8");
        assert_eq!(ids(&node.query(&alice, state).await), [1, 3, 5, 7, 9, 10]);
    } else {
        assert_eq!(
            ids(&node.query(&alice, state).await),
            [1, 2, 3, 4, 5, 7, 8, 9, 10],
            "a refused statement changes nothing"
        );
    }
}

#[tokio::test]
async fn multi_statement_requests_run_in_order_and_stop_at_the_first_error() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.items (id BIGINT PRIMARY KEY, name TEXT)")
        .await;
    let all_ids = "SELECT id FROM app.items ORDER BY id";

    let body = node
        .admin(
            "INSERT INTO app.items (id, name) VALUES (1, 'one'); \
             UPDATE app.items SET name = 'uno' WHERE id = 1; \
             SELECT name FROM app.items WHERE id = 1",
        )
        .await;
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        results.len(),
        3,
        "one result per statement: {}",
        pretty(&body)
    );
    assert_eq!(results[0]["affected_rows"], json!(1));
    assert_eq!(results[1]["affected_rows"], json!(1));
    assert_eq!(
        results[2]["rows"],
        json!([{"name": "uno"}]),
        "statements run in order"
    );

    let body = node.admin("SELECT 1 AS one;").await;
    assert_eq!(
        body["results"].as_array().map(Vec::len),
        Some(1),
        "a trailing `;` adds no statement"
    );

    let err = node
        .expect_error(
            &admin,
            "INSERT INTO app.items (id, name) VALUES (2, 'two'); \
             INSERT INTO app.nosuch (id) VALUES (1); \
             INSERT INTO app.items (id, name) VALUES (3, 'three')",
            "TABLE_NOT_FOUND",
        )
        .await;
    assert_eq!(
        err["statement_index"],
        json!(1),
        "the error names the failed statement: {err}"
    );
    assert_eq!(
        ids(&node.query(&admin, all_ids).await),
        [1, 2],
        "s0 stays applied, s2 does not run"
    );

    let err = node
        .expect_error(
            &admin,
            "INSERT INTO app.items (id, name) VALUES (4, 'four'); \
             INSERT INTO app.items (id, name) VALUES (5, 'five'); \
             INSERT INTO app.items (id, name) VALUES (1, 'dup'); \
             INSERT INTO app.items (id, name) VALUES (6, 'six')",
            "PRIMARY_KEY_VIOLATION",
        )
        .await;
    assert_eq!(err["statement_index"], json!(2), "{err}");
    assert_eq!(ids(&node.query(&admin, all_ids).await), [1, 2, 4, 5]);

    let err = node
        .expect_error(
            &admin,
            "SELECT * FROM app.nosuch; INSERT INTO app.items (id, name) VALUES (7, 'seven')",
            "TABLE_NOT_FOUND",
        )
        .await;
    assert_eq!(err["statement_index"], json!(0), "{err}");
    assert_eq!(ids(&node.query(&admin, all_ids).await), [1, 2, 4, 5]);

    // A statement that does not even tokenize (a string left open) is named like one that
    // does not parse: the statements before it run.
    let err = node
        .expect_error(
            &admin,
            "INSERT INTO app.items (id, name) VALUES (8, 'eight');\n\
             INSERT INTO app.items (id, name) VALUES (9, 'né;uf'); SELECT 'oops",
            "SQL_PARSE_ERROR",
        )
        .await;
    assert_eq!(err["statement_index"], json!(2), "{err}");
    assert_eq!(ids(&node.query(&admin, all_ids).await), [1, 2, 4, 5, 8, 9]);
}

#[tokio::test]
async fn selects_join_aggregate_and_window_across_tables() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.admin("INSERT INTO app.conversations (id, title) VALUES ('c1', 'General'), ('c2', 'Random'), ('c3', 'Empty')").await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES \
         (1, 'c1', 'a'), (2, 'c1', 'b'), (3, 'c1', 'c'), (4, 'c2', 'd')",
    )
    .await;

    let rows = node
        .query(
            &alice,
            "SELECT c.title, COUNT(*) AS n FROM app.messages m JOIN app.conversations c \
             ON m.conversation_id = c.id GROUP BY c.title ORDER BY c.title",
        )
        .await;
    assert_eq!(
        rows,
        [
            json!({"title": "General", "n": 3}),
            json!({"title": "Random", "n": 1})
        ]
    );

    let rows = node
        .query(
            &alice,
            "SELECT c.id, COUNT(m.id) AS n FROM app.conversations c LEFT JOIN app.messages m \
             ON m.conversation_id = c.id GROUP BY c.id ORDER BY c.id",
        )
        .await;
    assert_eq!(
        rows,
        [
            json!({"id": "c1", "n": 3}),
            json!({"id": "c2", "n": 1}),
            json!({"id": "c3", "n": 0})
        ]
    );

    let rows = node
        .query(
            &alice,
            "SELECT id, ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY id) AS rn \
             FROM app.messages ORDER BY id",
        )
        .await;
    let rn: Vec<i64> = column(&rows, "rn")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(rn, [1, 2, 3, 1]);

    let rows = node
        .query(&alice, "SELECT id FROM app.messages WHERE conversation_id IN (SELECT id FROM app.conversations WHERE title = 'Random')")
        .await;
    assert_eq!(ids(&rows), [4]);
}

#[tokio::test]
async fn missing_tables_and_columns_are_reported() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    for sql in [
        "SELECT * FROM app.nosuch",
        "INSERT INTO app.nosuch (id) VALUES (1)",
        "UPDATE app.nosuch SET x = 1",
        "DELETE FROM app.nosuch",
    ] {
        let err = node.expect_error(&alice, sql, "TABLE_NOT_FOUND").await;
        assert!(
            err["message"]
                .as_str()
                .unwrap_or_default()
                .contains("nosuch"),
            "the message names the table: {err}"
        );
    }
    for sql in [
        "SELECT nosuchcol FROM app.messages",
        "SELECT * FROM app.messages WHERE nosuchcol = 1",
        "INSERT INTO app.messages (conversation_id, nosuchcol) VALUES ('c1', 1)",
    ] {
        node.expect_error(&alice, sql, "SQL_PLAN_ERROR").await;
    }
}

/// Literal-only INSERTs take a fast path that skips the planner; the same values written
/// through the planner (INSERT ... SELECT from a VALUES subquery) must store exactly the same
/// thing, errors included.
#[tokio::test]
async fn literal_inserts_store_what_planned_inserts_store() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    for table in ["fast", "planned"] {
        node.admin(&format!(
            "CREATE SHARED TABLE app.{table} (id BIGINT PRIMARY KEY, b BOOLEAN, s SMALLINT, i INT, \
             f FLOAT, d DOUBLE, amount DECIMAL(10,2), t TEXT, birthday DATE, ts TIMESTAMP, j JSON, \
             kind TEXT DEFAULT 'note', at TIMESTAMP DEFAULT NOW())"
        ))
        .await;
    }
    let alice = token("alice", false);
    let rows = [
        "1, true, -12, 123456, 1.5, 2.25, 12.34, 'hello', '2026-11-27', '2026-11-27T10:00:00.000123Z', '{\"a\":[1,{\"b\":null}]}'",
        "2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
        "3, false, 32767, -2147483648, -0.25, 1e300, -0.05, '', '1970-01-01', '2026-11-27T12:00:00+02:00', '[1,\"two\"]'",
        "4, 'true', '7', '42', '3', -1, 5, 'x', '2000-02-29', '2026-01-01 00:00:00', 'null'",
    ];
    let cols = "(id, b, s, i, f, d, amount, t, birthday, ts, j)";
    for row in rows {
        node.exec(
            &alice,
            &format!("INSERT INTO app.fast {cols} VALUES ({row})"),
        )
        .await;
        node.exec(
            &alice,
            &format!("INSERT INTO app.planned {cols} SELECT * FROM (VALUES ({row}))"),
        )
        .await;
    }
    let read = |table: &str| {
        format!("SELECT id, b, s, i, f, d, amount, t, birthday, ts, j, kind FROM app.{table} ORDER BY id")
    };
    let fast = node.query(&alice, &read("fast")).await;
    let planned = node.query(&alice, &read("planned")).await;
    assert_eq!(fast.len(), 4);
    assert_eq!(
        fast, planned,
        "the fast path and the planner store the same values"
    );
    assert_eq!(fast[0]["kind"], json!("note"), "constant DEFAULT");
    let defaults_set = node
        .count(
            &alice,
            "SELECT COUNT(*) FROM app.fast WHERE at IS NOT NULL AND at <= NOW()",
        )
        .await;
    assert_eq!(defaults_set, 4, "NOW() DEFAULT on the fast path");

    for (value, code) in [("'abc'", "INVALID_VALUE"), ("'{bad json'", "INVALID_VALUE")] {
        let column = if value.contains('{') { "j" } else { "i" };
        for sql in [
            format!("INSERT INTO app.fast (id, {column}) VALUES (10, {value})"),
            format!("INSERT INTO app.planned (id, {column}) SELECT * FROM (VALUES (10, {value}))"),
        ] {
            let resp = node.sql(&alice, &sql).await;
            let code_seen = resp.1["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(code_seen, code, "{sql}: {}", resp.1);
        }
    }
    node.expect_error(
        &alice,
        "INSERT INTO app.fast (id) VALUES (1)",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.fast (id, nope) VALUES (11, 1)",
        "SQL_PLAN_ERROR",
    )
    .await;
}

/// Concurrent UPDATEs of one row never lose each other's increments, and an UPDATE racing a
/// DELETE never brings the row back (each statement re-reads rows another writer changed).
#[tokio::test]
async fn concurrent_updates_and_deletes_lose_nothing() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.counters (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .await;
    let alice = token("alice", false);
    node.exec(&alice, "INSERT INTO app.counters VALUES (1, 0), (2, 0)")
        .await;
    let writers = 8;
    let each = 25;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (client, url, t) = (node.http().clone(), node.url().to_string(), alice.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                let resp = client
                    .post(format!("{url}/api/sql"))
                    .bearer_auth(&t)
                    .json(&json!({"sql": "UPDATE app.counters SET n = n + 1 WHERE id = 1"}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(
                    resp.status().as_u16(),
                    200,
                    "{}",
                    resp.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let n = node
        .scalar(&alice, "SELECT n FROM app.counters WHERE id = 1")
        .await;
    assert_eq!(n, json!(writers * each), "every increment is kept");

    // A DELETE and many UPDATEs of row 2 race; once the DELETE is acknowledged the row stays
    // deleted, whatever order they committed in.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (client, url, t) = (node.http().clone(), node.url().to_string(), alice.clone());
        let sql = if i == 3 {
            "DELETE FROM app.counters WHERE id = 2"
        } else {
            "UPDATE app.counters SET n = n + 1 WHERE id = 2"
        };
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{url}/api/sql"))
                .bearer_auth(&t)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.counters WHERE id = 2")
            .await,
        0,
        "the deleted row stays deleted"
    );
    assert_eq!(
        node.count(
            &alice,
            "SELECT COUNT(*) FROM app.counters WHERE id = 2 AND _deleted = true"
        )
        .await,
        1
    );

    // An UPDATE of soft-deleted rows changes values but not `_deleted`.
    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.counters SET n = 99 WHERE _deleted = true"
        )
        .await,
        1
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.counters WHERE id = 2")
            .await,
        0,
        "still deleted"
    );
    assert_eq!(
        node.scalar(
            &alice,
            "SELECT n FROM app.counters WHERE id = 2 AND _deleted"
        )
        .await,
        json!(99)
    );
}

/// Forms of INSERT whose meaning KalamDB does not implement are refused, not half-done; and
/// column names fold to lower case like the rest of the SQL.
#[tokio::test]
async fn insert_variants_and_identifier_case() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id) VALUES (1, 'c1')",
    )
    .await;
    for sql in [
        "INSERT OVERWRITE app.messages (id, conversation_id) VALUES (1, 'c2')",
        "INSERT OR IGNORE INTO app.messages (id, conversation_id) VALUES (1, 'c2')",
        "INSERT OR REPLACE INTO app.messages (id, conversation_id) VALUES (1, 'c2')",
        "REPLACE INTO app.messages (id, conversation_id) VALUES (1, 'c2')",
        "INSERT INTO app.messages (id, conversation_id) VALUES (2, 'c2') RETURNING id",
    ] {
        let resp = node.sql(&alice, sql).await;
        assert!(
            !node.assert_answer_or_client_error(&resp, sql),
            "{sql} must be refused"
        );
    }
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        1
    );
    assert_eq!(
        node.scalar(&alice, "SELECT conversation_id FROM app.messages")
            .await,
        json!("c1")
    );

    node.expect_error(
        &alice,
        "INSERT INTO app.messages (ID, _DELETED) VALUES (5, true)",
        "SYSTEM_COLUMN_READONLY",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (ID, Conversation_Id) VALUES (5, 'c5')",
    )
    .await;
    assert_eq!(
        node.affected(&alice, "UPDATE app.messages SET Content = 'x' WHERE id = 5")
            .await,
        1
    );
    assert_eq!(
        node.scalar(&alice, "SELECT content FROM app.messages WHERE id = 5")
            .await,
        json!("x")
    );

    // Positional VALUES leaving out the automatic key: NULL goes to the column it names.
    node.admin("CREATE USER TABLE app.notes (title TEXT NOT NULL, body TEXT)")
        .await;
    assert_eq!(
        node.affected(&alice, "INSERT INTO app.notes VALUES ('t', NULL)")
            .await,
        1
    );
    node.expect_error(
        &alice,
        "INSERT INTO app.notes VALUES (NULL, 'b')",
        "INVALID_VALUE",
    )
    .await;
}

/// A join whose sides share column names keeps every value in the JSON rows.
#[tokio::test]
async fn joins_with_repeated_column_names_keep_every_value() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'first')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id) VALUES (7, 'c1')",
    )
    .await;
    let body = node
        .exec(&alice, "SELECT m.id, c.id, m._deleted, c._deleted FROM app.messages m JOIN app.conversations c ON m.conversation_id = c.id")
        .await;
    assert_eq!(
        column_names(&body, 0),
        ["id", "id_2", "_deleted", "_deleted_2"]
    );
    let rows = rows_of(&body, 0);
    assert_eq!(rows[0]["id"], json!(7));
    assert_eq!(rows[0]["id_2"], json!("c1"));
}

/// DECIMAL values are exact to the last digit whether written as number literals (read as
/// DECIMALs of the digits written, as PostgreSQL reads them; ADR 0029) or as strings: on the
/// literal fast path, through the planner, in UPDATE arithmetic, in DEFAULTs and in
/// comparisons. A DOUBLE would keep about 15 digits and add noise when scaled to 18 places.
#[tokio::test]
async fn decimal_literals_and_strings_are_exact() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE USER TABLE app.wallets (id BIGINT PRIMARY KEY, amount DECIMAL(38,18), \
         price DECIMAL(20,2), ratio DOUBLE, \
         fee DECIMAL(38,18) DEFAULT 0.000000000000000001)",
    )
    .await;
    let alice = token("alice", false);
    // The fast path (literals only), numbers and strings.
    node.exec(
        &alice,
        "INSERT INTO app.wallets (id, amount, price, ratio) VALUES \
         (1, 1.123456789012345678, 123456789012345678.99, 0.1), \
         (3, -0.000000000000000001, '-0.01', -2.5), \
         (4, '1.123456789012345678', 2.675, 1e300)",
    )
    .await;
    // The planner: INSERT ... SELECT, the DEFAULT computed by the planner.
    node.exec(
        &alice,
        "INSERT INTO app.wallets (id, amount, price, ratio) \
         SELECT * FROM (VALUES (2, 1.123456789012345679, 0.5, 0.25))",
    )
    .await;
    node.exec(
        &alice,
        "UPDATE app.wallets SET amount = amount + 0.000000000000000001, price = price * 1.5 \
         WHERE id = 2",
    )
    .await;
    assert_eq!(
        node.query(
            &alice,
            "SELECT id, amount, price, ratio, fee FROM app.wallets ORDER BY id"
        )
        .await,
        vec![
            json!({"id": 1, "amount": "1.123456789012345678", "price": "123456789012345678.99",
                   "ratio": 0.1, "fee": "0.000000000000000001"}),
            json!({"id": 2, "amount": "1.123456789012345680", "price": "0.75",
                   "ratio": 0.25, "fee": "0.000000000000000001"}),
            json!({"id": 3, "amount": "-0.000000000000000001", "price": "-0.01",
                   "ratio": -2.5, "fee": "0.000000000000000001"}),
            json!({"id": 4, "amount": "1.123456789012345678", "price": "2.68",
                   "ratio": 1e300, "fee": "0.000000000000000001"}),
        ]
    );
    for filter in [
        "amount = 1.123456789012345678",
        "amount = '1.123456789012345678'",
    ] {
        assert_eq!(
            node.query(
                &alice,
                &format!("SELECT id FROM app.wallets WHERE {filter} ORDER BY id")
            )
            .await,
            vec![json!({"id": 1}), json!({"id": 4})],
            "{filter}: the comparison is exact, the neighbouring value does not match"
        );
    }
    assert_eq!(
        node.query(
            &alice,
            "SELECT 0.1 + 0.2 AS d, 1e3 AS e, 18446744073709551616 AS big, 7 / 2 AS i"
        )
        .await,
        vec![json!({"d": "0.3", "e": 1000.0, "big": "18446744073709551616", "i": 3})],
        "a literal with a decimal point is a DECIMAL, one with an exponent a DOUBLE"
    );
    node.expect_error(
        &alice,
        "INSERT INTO app.wallets (id, price) VALUES (5, 1234567890123456789.5)",
        "INVALID_VALUE",
    )
    .await;
}
