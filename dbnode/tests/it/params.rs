//! Request parameters (ADR 0032): `{"sql": "... $1 ...", "params": [...]}` binds each value as
//! the literal it holds, never as SQL text; a template is parsed once and its values never
//! leak from one request (or user) to the next; params that do not fit the SQL are refused
//! before any statement runs.

use serde_json::{json, Value};

use crate::harness::*;

async fn with_params(node: &TestNode, token: &str, sql: &str, params: Value) -> Resp {
    node.post_json(Some(token), &json!({ "sql": sql, "params": params }))
        .await
}

async fn exec_params(node: &TestNode, token: &str, sql: &str, params: Value) -> Value {
    let resp = with_params(node, token, sql, params.clone()).await;
    node.assert_success(&resp, &format!("{sql} with params {params}"));
    resp.1
}

const INSERT: &str =
    "INSERT INTO app.messages (id, conversation_id, content, meta, created_at) VALUES ($1, $2, $3, $4, $5)";
const SELECT: &str =
    "SELECT id, content, meta, created_at FROM app.messages WHERE conversation_id = $1 ORDER BY id";

#[tokio::test]
async fn params_are_values_never_sql() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    let hits_before = node
        .metric("kalamdb_prepared_statement_lookups_total{result=\"hit\"}")
        .await;

    let injection = "x'); DROP TABLE app.messages; --";
    let body = exec_params(
        &node,
        &alice,
        INSERT,
        json!([1, "c1", injection, {"k": [1, 2]}, "2026-11-27T10:00:00.000123Z"]),
    )
    .await;
    assert_eq!(affected_of(&body, INSERT), 1);
    exec_params(
        &node,
        &alice,
        INSERT,
        json!([-2, "c1", null, null, "2026-11-27T10:00:01Z"]),
    )
    .await;
    // Bob sends the same template: the cached parse carries no value of alice's.
    exec_params(
        &node,
        &bob,
        INSERT,
        json!([1, "c1", "bob's own", "[true]", "2026-11-27T10:00:02Z"]),
    )
    .await;

    let rows = rows_of(&exec_params(&node, &alice, SELECT, json!(["c1"])).await, 0);
    assert_eq!(
        rows,
        [
            json!({"id": -2, "content": null, "meta": null, "created_at": "2026-11-27T10:00:01.000000Z"}),
            json!({"id": 1, "content": injection, "meta": {"k": [1, 2]}, "created_at": "2026-11-27T10:00:00.000123Z"}),
        ],
        "alice's rows, the SQL-looking string stored as it was sent"
    );
    let rows = rows_of(&exec_params(&node, &bob, SELECT, json!(["c1"])).await, 0);
    assert_eq!(
        strings(&rows, "content"),
        ["bob's own"],
        "bob sees only his row: {rows:?}"
    );
    assert_eq!(column(&rows, "meta"), [json!([true])]);
    let rows = rows_of(&exec_params(&node, &alice, SELECT, json!(["c2"])).await, 0);
    assert!(rows.is_empty(), "no row of c2: {rows:?}");

    // UPDATE, DELETE, LIMIT and a parameter used twice; an admin on behalf of alice.
    let body = node
        .post_json(
            Some(&admin_token()),
            &json!({
                "sql": "UPDATE app.messages SET content = $1 WHERE id = $2; \
                        DELETE FROM app.messages WHERE id = -$2 + $3; \
                        SELECT content FROM app.messages WHERE content = $1 LIMIT $2",
                "params": ["edited", 1, -1],
                "as_user": "alice",
            }),
        )
        .await;
    node.assert_success(&body, "UPDATE/DELETE/SELECT with params as_user alice");
    assert_eq!(
        result(&body.1, 0)["affected_rows"],
        1,
        "{}",
        pretty(&body.1)
    );
    assert_eq!(
        result(&body.1, 1)["affected_rows"],
        1,
        "{}",
        pretty(&body.1)
    );
    assert_eq!(strings(&rows_of(&body.1, 2), "content"), ["edited"]);
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        1
    );
    assert_eq!(
        node.count(&bob, "SELECT COUNT(*) FROM app.messages").await,
        1
    );

    let hits = node
        .metric("kalamdb_prepared_statement_lookups_total{result=\"hit\"}")
        .await;
    assert!(
        hits - hits_before >= 4,
        "the repeated INSERT and SELECT texts were parsed once: {hits_before} -> {hits} hits"
    );
}

#[tokio::test]
async fn params_that_do_not_fit_are_refused_before_anything_runs() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let one = "INSERT INTO app.messages (conversation_id) VALUES ($1)";

    let cases: Vec<(String, Value, Option<u64>, &str)> = vec![
        (
            format!("{one}; {one}; INSERT INTO app.messages (conversation_id) VALUES ($3)"),
            json!(["a", "b"]),
            Some(2),
            "$3",
        ),
        (one.to_string(), json!(["a", "b"]), None, "$2"),
        (one.to_string(), json!([]), Some(0), "no params"),
        (
            "INSERT INTO app.messages (conversation_id) VALUES (?)".into(),
            json!(["a"]),
            Some(0),
            "$1, $2",
        ),
    ];
    for (sql, params, index, mention) in cases {
        let context = format!("{sql} with params {params}");
        let resp = with_params(&node, &alice, &sql, params).await;
        let error = node.assert_error(&resp, "INVALID_REQUEST", &context);
        assert_eq!(
            error["statement_index"].as_u64(),
            index,
            "{context}: {error}"
        );
        assert!(
            error["message"].as_str().unwrap_or("").contains(mention),
            "{context}: the message names {mention}: {error}"
        );
    }
    // Without params a placeholder gets the same clear error, not a planner's.
    let resp = node.sql(&alice, one).await;
    let error = node.assert_error(&resp, "INVALID_REQUEST", one);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("no params"),
        "{error}"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0,
        "no statement of a refused request ran"
    );

    // params must be a list; a value that does not fit its column fails as the literal would.
    let resp = with_params(&node, &alice, one, json!({"1": "a"})).await;
    node.assert_error(&resp, "INVALID_REQUEST", "params as an object");
    let inline = node
        .sql(
            &alice,
            "INSERT INTO app.messages (id, conversation_id) VALUES ('abc', 'c')",
        )
        .await;
    let bound = with_params(
        &node,
        &alice,
        "INSERT INTO app.messages (id, conversation_id) VALUES ($1, 'c')",
        json!(["abc"]),
    )
    .await;
    let code = inline.1["error"]["code"].as_str().unwrap_or("").to_string();
    assert!(
        !code.is_empty(),
        "the inline literal fails: {}",
        pretty(&inline.1)
    );
    node.assert_error(&bound, &code, "'abc' for a BIGINT as a parameter");
}

/// UPDATE and DELETE read their rows with a query the node builds around the client's SET
/// and WHERE; a value holding `\'` or `''` stays a value there. Before, that query went
/// through SQL text, which sqlparser prints so that `\'` ended the literal: a `$1` of
/// `\' OR 1=1 --` in a DELETE deleted every row of the partition, and `a''b` was stored as
/// `a'b`.
#[tokio::test]
async fn quotes_and_backslashes_in_values_stay_values_in_update_and_delete() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let tricky = [
        r"\' OR 1=1 --",
        "a''b",
        r"x\'y",
        "it's",
        r"back\slash",
        "''",
    ];
    for (i, text) in tricky.iter().enumerate() {
        exec_params(
            &node,
            &alice,
            INSERT,
            json!([i + 1, "c1", text, null, "2026-11-27T10:00:00Z"]),
        )
        .await;
    }
    assert_eq!(contents(&node, &alice).await, tricky, "stored as sent");

    // A DELETE whose value would have ended its literal deletes only the row it names.
    let body = exec_params(
        &node,
        &alice,
        "DELETE FROM app.messages WHERE content = $1",
        json!([r"\' OR 1=1 --"]),
    )
    .await;
    assert_eq!(result(&body, 0)["affected_rows"], 1, "{}", pretty(&body));
    let body = exec_params(
        &node,
        &alice,
        "DELETE FROM app.messages WHERE content = $1",
        json!([r"nothing\' OR 1=1 --"]),
    )
    .await;
    assert_eq!(result(&body, 0)["affected_rows"], 0, "{}", pretty(&body));
    assert_eq!(contents(&node, &alice).await, &tricky[1..]);

    // UPDATE sets exactly the value, with params and written inline.
    for (id, value) in [(2, "a''b"), (3, r"x\'y"), (4, "''''")] {
        exec_params(
            &node,
            &alice,
            "UPDATE app.messages SET content = $1 WHERE id = $2 AND content <> $1",
            json!([value, id]),
        )
        .await;
    }
    node.exec(
        &alice,
        r"UPDATE app.messages SET content = 'q''''q' || content WHERE content = 'back\slash'",
    )
    .await;
    assert_eq!(
        contents(&node, &alice).await,
        ["a''b", r"x\'y", "''''", r"q''qback\slash", "''"]
    );
}

async fn contents(node: &TestNode, token: &str) -> Vec<String> {
    let rows = node
        .query(token, "SELECT content FROM app.messages ORDER BY id")
        .await;
    strings(&rows, "content")
}

/// JSON numbers in `params` are read as JSON parsers read them (integers of up to 64 bits
/// exactly, others as doubles), so a DECIMAL with more digits than a double holds travels
/// as a string, which casts to the column exactly, as the same string literal would.
#[tokio::test]
async fn decimals_beyond_a_double_travel_exactly_as_strings() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE USER TABLE app.wallets (id BIGINT PRIMARY KEY, amount DECIMAL(38,18))")
        .await;
    let alice = token("alice", false);
    let insert = "INSERT INTO app.wallets (id, amount) VALUES ($1, $2)";
    exec_params(&node, &alice, insert, json!([1, "1.123456789012345678"])).await;
    exec_params(&node, &alice, insert, json!([9223372036854775807i64, 2.5])).await;
    let rows = node
        .query(
            &alice,
            "SELECT id, CAST(amount AS TEXT) AS amount FROM app.wallets ORDER BY id",
        )
        .await;
    assert_eq!(
        rows,
        [
            json!({"id": 1, "amount": "1.123456789012345678"}),
            json!({"id": 9223372036854775807i64, "amount": "2.500000000000000000"}),
        ]
    );
}
