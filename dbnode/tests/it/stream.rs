//! STREAM tables (API.md §4), everything but their live delivery (see `live.rs`): CREATE with
//! `WITH (retention, ephemeral, max_buffer)` and their defaults, shown by SHOW TABLES,
//! `system.tables`, DESCRIBE and SHOW TABLE STATS; events returned oldest first with only the
//! user columns; eviction by retention (the scheduler, counted in `/metrics`) and by
//! `max_buffer` (at INSERT); ephemeral tables dropping events nobody listens to; append-only
//! (UPDATE, DELETE and FLUSH refused); bad options and clauses refused with their codes; and
//! events of a non-ephemeral table surviving a restart.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// A stream with the default options and a declared key, so tests can name events.
const EVENTS_DDL: &str = "CREATE STREAM TABLE app.events (id BIGINT PRIMARY KEY, kind TEXT, n INT)";

async fn with_namespace(node: &TestNode) {
    node.admin("CREATE NAMESPACE app").await;
}

fn event(table: &str, id: i64, kind: &str) -> String {
    format!(
        "INSERT INTO {table} (id, kind) VALUES ({id}, {})",
        lit(kind)
    )
}

/// `SELECT *` of a table, in the order the node returns it (no ORDER BY: the scan order of a
/// STREAM table is the documented oldest-first order).
async fn scan_ids(node: &TestNode, table: &str) -> Vec<i64> {
    ids(&node
        .query(&token("alice", false), &format!("SELECT * FROM {table}"))
        .await)
}

/// The one row of `SHOW TABLE STATS`.
async fn stats(node: &TestNode, table: &str) -> Value {
    let rows = node
        .query(&admin_token(), &format!("SHOW TABLE STATS {table}"))
        .await;
    assert_eq!(
        rows.len(),
        1,
        "SHOW TABLE STATS {table}: {}",
        pretty(&json!(rows))
    );
    rows[0].clone()
}

/// The `message` of a DESCRIBE.
async fn describe_message(node: &TestNode, table: &str) -> String {
    let body = node.admin(&format!("DESCRIBE TABLE {table}")).await;
    result(&body, 0)["message"]
        .as_str()
        .unwrap_or_else(|| panic!("DESCRIBE {table} has a message: {}", pretty(&body)))
        .to_string()
}

/// `kalamdb_stream_events_evicted_total{reason="retention"}` from `GET /metrics`.
async fn evicted_by_retention(node: &TestNode) -> u64 {
    let (status, _, text) = node.get("/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    let prefix = "kalamdb_stream_events_evicted_total{reason=\"retention\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("/metrics lacks {prefix}<n>:\n{text}"))
}

/// Polls `sql` (a COUNT) until it returns `expected`, failing after `within`.
async fn wait_for_count(node: &TestNode, sql: &str, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = node.count(&admin_token(), sql).await;
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: still {n} after {within:?}, expected {expected}\n--- stderr ---\n{}",
            tail(&node.stderr(), 4000)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stream_tables_show_their_options_and_defaults() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    let body = node
        .admin(
            "CREATE STREAM TABLE app.typing (conversation_id TEXT, user_name TEXT) \
             WITH (retention = '10s', ephemeral = true, max_buffer = 1000)",
        )
        .await;
    assert_ddl(&body, "CREATE STREAM TABLE app.typing");
    node.admin("CREATE STREAM TABLE app.events (kind TEXT)")
        .await;
    node.admin("CREATE STREAM TABLE app.presence (user_name TEXT PRIMARY KEY, status TEXT)")
        .await;
    // IF NOT EXISTS keeps the table as it is; without it the name is taken.
    node.admin("CREATE STREAM TABLE IF NOT EXISTS app.typing (other TEXT) WITH (max_buffer = 1)")
        .await;
    node.expect_error(
        &admin_token(),
        "CREATE STREAM TABLE app.typing (other TEXT)",
        "TABLE_ALREADY_EXISTS",
    )
    .await;

    let typing_options = json!({"retention": "10s", "ephemeral": true, "max_buffer": 1000});
    let default_options =
        json!({"retention": "10 minutes", "ephemeral": false, "max_buffer": 10000});

    let show = node.admin("SHOW TABLES IN app").await;
    assert!(
        column_names(&show, 0).iter().any(|c| c == "options"),
        "SHOW TABLES has an options column: {}",
        pretty(&show)
    );
    let rows = rows_of(&show, 0);
    assert_eq!(
        strings(&rows, "table_name"),
        ["events", "presence", "typing"],
        "{}",
        pretty(&show)
    );
    let typing = find_row(&rows, "table_name", "typing");
    assert_eq!(typing["table_type"], "stream", "{typing}");
    assert_eq!(typing["options"], typing_options, "{typing}");
    assert_eq!(
        typing["location"],
        Value::Null,
        "a STREAM table has no cold location: {typing}"
    );
    assert_eq!(
        typing["flush_policy"],
        Value::Null,
        "a STREAM table is never flushed: {typing}"
    );
    let events = find_row(&rows, "table_name", "events");
    assert_eq!(events["table_type"], "stream");
    assert_eq!(events["options"], default_options, "the defaults: {events}");

    // system.tables says the same.
    let sys = node
        .query(
            &admin_token(),
            "SELECT table_name, table_type, options, location, flush_policy, deleted_retention \
             FROM system.tables WHERE namespace = 'app' ORDER BY table_name",
        )
        .await;
    let sys_typing = find_row(&sys, "table_name", "typing");
    assert_eq!(sys_typing["options"], typing_options, "{sys_typing}");
    assert_eq!(sys_typing["deleted_retention"], Value::Null, "{sys_typing}");
    assert_eq!(
        find_row(&sys, "table_name", "events")["options"],
        default_options
    );

    // DESCRIBE: the user columns only, an automatic key, and the options in the message.
    let described = node.admin("DESCRIBE TABLE app.typing").await;
    let columns = rows_of(&described, 0);
    assert_eq!(
        strings(&columns, "column_name"),
        ["id", "conversation_id", "user_name"],
        "no _updated/_deleted: {}",
        pretty(&described)
    );
    assert!(
        columns
            .iter()
            .all(|c| c["is_system_column"] == json!(false)),
        "{}",
        pretty(&described)
    );
    let id = find_row(&columns, "column_name", "id");
    assert_eq!(id["is_primary_key"], json!(true), "{id}");
    assert_eq!(id["data_type"], "BIGINT", "{id}");
    assert_eq!(id["column_default"], "SNOWFLAKE_ID()", "{id}");
    let message = describe_message(&node, "app.typing").await;
    for part in [
        "STREAM",
        "retention 10s",
        "ephemeral true",
        "max_buffer 1000",
    ] {
        assert!(
            message.contains(part),
            "DESCRIBE message lacks {part:?}: {message}"
        );
    }
    assert!(
        !message.contains("flush policy") && !message.contains("deleted_retention"),
        "a STREAM table has no flush policy or deleted_retention: {message}"
    );
    let message = describe_message(&node, "app.events").await;
    for part in [
        "retention 10 minutes",
        "ephemeral false",
        "max_buffer 10000",
    ] {
        assert!(
            message.contains(part),
            "DESCRIBE message lacks {part:?}: {message}"
        );
    }

    // A declared key replaces the automatic one.
    let presence = rows_of(&node.admin("DESCRIBE TABLE app.presence").await, 0);
    assert_eq!(strings(&presence, "column_name"), ["user_name", "status"]);
    let key = find_row(&presence, "column_name", "user_name");
    assert_eq!(key["is_primary_key"], json!(true), "{key}");
    assert_eq!(key["is_nullable"], json!(false), "{key}");

    // A STREAM table does not use the default storage location.
    let local = node
        .query(
            &admin_token(),
            "SELECT usage_count FROM system.storage_locations WHERE location_name = 'local'",
        )
        .await;
    assert_eq!(
        single(&local, "usage_count of local"),
        json!(0),
        "only STREAM tables exist: {}",
        pretty(&json!(local))
    );

    // DROP STREAM TABLE; a kind that does not match is refused.
    node.expect_error(
        &admin_token(),
        "DROP USER TABLE app.events",
        "SQL_PLAN_ERROR",
    )
    .await;
    node.admin("DROP STREAM TABLE app.events").await;
    let left = node.query(&admin_token(), "SHOW TABLES IN app").await;
    assert_eq!(strings(&left, "table_name"), ["presence", "typing"]);
}

#[tokio::test]
async fn events_are_returned_oldest_first_with_only_the_user_columns() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    node.admin(EVENTS_DDL).await;
    let alice = token("alice", false);

    // Keys out of order: events come back in the order they were written, not by key.
    for (id, kind) in [(30, "c"), (10, "a"), (20, "b")] {
        let sql = event("app.events", id, kind);
        assert_eq!(node.affected(&alice, &sql).await, 1, "{sql}");
    }
    let sql = "INSERT INTO app.events (id, kind, n) VALUES (40, 'd', 4), (50, 'e', 5)";
    assert_eq!(node.affected(&alice, sql).await, 2);

    let body = node.exec(&alice, "SELECT * FROM app.events").await;
    assert_eq!(
        column_names(&body, 0),
        ["id", "kind", "n"],
        "SELECT * of a STREAM table has no _updated/_deleted: {}",
        pretty(&body)
    );
    let rows = rows_of(&body, 0);
    assert_eq!(
        ids(&rows),
        [30, 10, 20, 40, 50],
        "oldest first: {}",
        pretty(&body)
    );
    assert_eq!(strings(&rows, "kind"), ["c", "a", "b", "d", "e"]);
    assert_eq!(rows[3]["n"], json!(4));
    assert_eq!(rows[0]["n"], Value::Null);
    node.expect_error(&alice, "SELECT _updated FROM app.events", "SQL_PLAN_ERROR")
        .await;
    node.expect_error(
        &alice,
        "SELECT id FROM app.events WHERE _deleted = false",
        "SQL_PLAN_ERROR",
    )
    .await;

    // WHERE on the key filters (the key is not a point read: events are keyed by time).
    let one = node
        .query(&alice, "SELECT kind FROM app.events WHERE id = 10")
        .await;
    assert_eq!(one, [json!({"kind": "a"})]);
    let mut above = ids(&node
        .query(&alice, "SELECT id FROM app.events WHERE id > 15")
        .await);
    above.sort_unstable();
    assert_eq!(above, [20, 30, 40, 50]);
    assert_eq!(
        node.count(
            &alice,
            "SELECT COUNT(*) FROM app.events WHERE kind IN ('a', 'e')"
        )
        .await,
        2
    );
    assert!(node
        .query(&alice, "SELECT * FROM app.events WHERE id = 99")
        .await
        .is_empty());

    // A key repeats within one INSERT: refused. Across INSERTs, events are simply appended.
    node.expect_error(
        &alice,
        "INSERT INTO app.events (id, kind) VALUES (60, 'x'), (60, 'y')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    assert_eq!(
        node.affected(&alice, &event("app.events", 10, "again"))
            .await,
        1
    );
    assert_eq!(
        scan_ids(&node, "app.events").await,
        [30, 10, 20, 40, 50, 10]
    );

    // INSERT ... SELECT goes through the same path.
    let sql = "INSERT INTO app.events (id, kind) SELECT id + 100, kind FROM app.events WHERE id IN (20, 30)";
    assert_eq!(node.affected(&alice, sql).await, 2, "{sql}");
    assert_eq!(
        scan_ids(&node, "app.events").await,
        [30, 10, 20, 40, 50, 10, 120, 130]
    );

    // The automatic key fills itself in.
    node.admin("CREATE STREAM TABLE app.auto (kind TEXT)").await;
    node.exec(&alice, "INSERT INTO app.auto (kind) VALUES ('x'), ('y')")
        .await;
    let rows = node.query(&alice, "SELECT * FROM app.auto").await;
    assert_eq!(rows.len(), 2, "{}", pretty(&json!(rows)));
    assert!(
        rows.iter().all(|r| r["id"].is_i64()),
        "{}",
        pretty(&json!(rows))
    );
    assert_eq!(
        rows[0]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["id".to_string(), "kind".to_string()])
    );

    let s = stats(&node, "app.events").await;
    assert_eq!(s["hot_rows"], json!(8), "{s}");
    assert_eq!(s["cold_rows"], json!(0), "{s}");
    assert_eq!(s["parquet_files"], json!(0), "{s}");
}

#[tokio::test]
async fn events_past_their_retention_are_evicted() {
    let node = TestNode::start_with_options(
        NodeOptions::default().env("KALAMDB_STREAM_EVICTION_INTERVAL_MS", "100"),
    )
    .await;
    with_namespace(&node).await;
    node.admin(
        "CREATE STREAM TABLE app.ticks (id BIGINT PRIMARY KEY, kind TEXT) WITH (retention = '2s')",
    )
    .await;
    // A table with a long retention beside it keeps its events.
    node.admin(EVENTS_DDL).await;
    let alice = token("alice", false);
    let evicted_before = evicted_by_retention(&node).await;

    let written = Instant::now();
    node.exec(
        &alice,
        "INSERT INTO app.ticks (id, kind) VALUES (1, 'a'), (2, 'b'); \
         INSERT INTO app.ticks (id, kind) VALUES (3, 'c')",
    )
    .await;
    node.exec(&alice, &event("app.events", 1, "kept")).await;
    let held = node.count(&alice, "SELECT COUNT(*) FROM app.ticks").await;
    if written.elapsed() < Duration::from_millis(1500) {
        assert_eq!(held, 3, "events younger than their retention are there");
    }

    wait_for_count(
        &node,
        "SELECT COUNT(*) FROM app.ticks",
        0,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        written.elapsed() >= Duration::from_millis(1900),
        "events were evicted before their retention of 2s ({:?})",
        written.elapsed()
    );
    assert!(
        node.query(&alice, "SELECT * FROM app.ticks")
            .await
            .is_empty(),
        "SELECT * after eviction"
    );
    assert_eq!(stats(&node, "app.ticks").await["hot_rows"], json!(0));
    assert_eq!(
        scan_ids(&node, "app.events").await,
        [1],
        "a 10-minute retention keeps its event"
    );
    // The pass that deleted the events counts them when it ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let evicted = evicted_by_retention(&node).await;
        if evicted >= evicted_before + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kalamdb_stream_events_evicted_total{{reason=\"retention\"}} went from {evicted_before} to {evicted}, expected +3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The table keeps working, and new events wait for their own retention.
    node.exec(&alice, &event("app.ticks", 4, "d")).await;
    assert_eq!(scan_ids(&node, "app.ticks").await, [4]);
    wait_for_count(
        &node,
        "SELECT COUNT(*) FROM app.ticks",
        0,
        Duration::from_secs(20),
    )
    .await;
    // Eviction is not a job: it leaves no rows in system.jobs.
    assert!(
        node.query(
            &admin_token(),
            "SELECT job_id FROM system.jobs WHERE table_name = 'ticks'"
        )
        .await
        .is_empty(),
        "eviction writes no system.jobs rows"
    );
}

#[tokio::test]
async fn max_buffer_keeps_the_newest_events() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    let alice = token("alice", false);

    // One event per INSERT: the oldest go first.
    node.admin(
        "CREATE STREAM TABLE app.recent (id BIGINT PRIMARY KEY, kind TEXT) WITH (max_buffer = 5)",
    )
    .await;
    for id in 1..=8 {
        let sql = event("app.recent", id, &format!("e{id}"));
        assert_eq!(node.affected(&alice, &sql).await, 1, "{sql}");
    }
    let rows = node.query(&alice, "SELECT * FROM app.recent").await;
    assert_eq!(ids(&rows), [4, 5, 6, 7, 8], "the 5 newest, oldest first");
    assert_eq!(strings(&rows, "kind"), ["e4", "e5", "e6", "e7", "e8"]);
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.recent").await,
        5
    );
    assert_eq!(stats(&node, "app.recent").await["hot_rows"], json!(5));

    // One INSERT of 8 events: all are accepted, the 5 last of the batch stay.
    node.admin(
        "CREATE STREAM TABLE app.burst (id BIGINT PRIMARY KEY, kind TEXT) WITH (max_buffer = 5)",
    )
    .await;
    let values: Vec<String> = (1..=8).map(|i| format!("({i}, 'b{i}')")).collect();
    let sql = format!(
        "INSERT INTO app.burst (id, kind) VALUES {}",
        values.join(", ")
    );
    assert_eq!(
        node.affected(&alice, &sql).await,
        8,
        "affected_rows counts every event"
    );
    assert_eq!(scan_ids(&node, "app.burst").await, [4, 5, 6, 7, 8]);
    node.exec(&alice, &event("app.burst", 9, "b9")).await;
    assert_eq!(scan_ids(&node, "app.burst").await, [5, 6, 7, 8, 9]);
    assert_eq!(stats(&node, "app.burst").await["hot_rows"], json!(5));

    // max_buffer = 1 keeps only the last event.
    node.admin("CREATE STREAM TABLE app.last (id BIGINT PRIMARY KEY) WITH (max_buffer = 1)")
        .await;
    for id in [3, 1, 2] {
        node.exec(&alice, &format!("INSERT INTO app.last (id) VALUES ({id})"))
            .await;
    }
    assert_eq!(scan_ids(&node, "app.last").await, [2]);
}

#[tokio::test]
async fn ephemeral_events_nobody_listens_to_are_accepted_and_dropped() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    node.admin(
        "CREATE STREAM TABLE app.typing (user_name TEXT, conversation_id TEXT) \
         WITH (ephemeral = true)",
    )
    .await;
    let alice = token("alice", false);
    let sql = "INSERT INTO app.typing (user_name, conversation_id) VALUES \
               ('alice', 'c1'), ('bob', 'c1'), ('carol', 'c2')";
    assert_eq!(
        node.affected(&alice, sql).await,
        3,
        "an ephemeral INSERT counts the events it accepted"
    );
    assert_eq!(
        node.affected(
            &alice,
            "INSERT INTO app.typing (user_name, conversation_id) VALUES ('dave', 'c3')"
        )
        .await,
        1
    );
    assert!(
        node.query(&alice, "SELECT * FROM app.typing")
            .await
            .is_empty(),
        "no subscriber: the events are dropped"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.typing").await,
        0
    );
    assert_eq!(stats(&node, "app.typing").await["hot_rows"], json!(0));
    // Validation still applies to events that would be dropped.
    node.expect_error(
        &alice,
        "INSERT INTO app.typing (id, user_name) VALUES (NULL, 'x')",
        "INVALID_VALUE",
    )
    .await;
}

#[tokio::test]
async fn stream_tables_are_append_only() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    node.admin(EVENTS_DDL).await;
    let alice = token("alice", false);
    node.exec(&alice, &event("app.events", 1, "a")).await;
    node.exec(&alice, &event("app.events", 2, "b")).await;

    for (who, sql) in [
        (&alice, "UPDATE app.events SET kind = 'z' WHERE id = 1"),
        (&alice, "UPDATE app.events SET kind = 'z'"),
        (&alice, "DELETE FROM app.events WHERE id = 1"),
        (&alice, "DELETE FROM app.events"),
    ] {
        let err = node.expect_error(who, sql, "UNSUPPORTED_STATEMENT").await;
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("STREAM") && message.contains("append-only"),
            "{sql}: the message says why: {err}"
        );
    }
    let err = node
        .expect_error(
            &admin_token(),
            "FLUSH TABLE app.events",
            "UNSUPPORTED_STATEMENT",
        )
        .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("STREAM"),
        "FLUSH of a STREAM table says why: {err}"
    );
    // A user may not FLUSH at all.
    node.expect_error(&alice, "FLUSH TABLE app.events", "FORBIDDEN")
        .await;

    // Nothing changed, and no flush job was started.
    let rows = node.query(&alice, "SELECT * FROM app.events").await;
    assert_eq!(ids(&rows), [1, 2]);
    assert_eq!(strings(&rows, "kind"), ["a", "b"]);
    assert!(node
        .query(
            &admin_token(),
            "SELECT job_id FROM system.jobs WHERE table_name = 'events'"
        )
        .await
        .is_empty());
}

#[tokio::test]
async fn bad_stream_definitions_are_refused_with_their_codes() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    let admin = admin_token();
    let cases = [
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (retention = '0s')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (retention = 'soon')",
            "INVALID_OPTION",
        ),
        // Past what microseconds since 1970 can hold (about 292,000 years): it used to wrap
        // to a negative age, and every eviction pass dropped all events.
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (retention = '10000000000000000000s')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (retention = 10)",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (retention = '1500ms')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (max_buffer = 0)",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (max_buffer = 2.5)",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (max_buffer = 'many')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (ephemeral = 'yes')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (colour = 'red')",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (max_buffer = 5, max_buffer = 6)",
            "INVALID_OPTION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) WITH (deleted_retention = '7d')",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) LOCATION '/tmp/kalamdb-stream'",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) LOCATION REFERENCE 'local'",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (a INT) FLUSH POLICY ROWS 10",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE USER TABLE app.s (a INT) WITH (retention = '10s')",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE SHARED TABLE app.s (a INT) WITH (max_buffer = 5)",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE USER TABLE app.s (a INT) WITH (ephemeral = true)",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (x DOUBLE PRIMARY KEY)",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (_updated INT)",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE app.s (id INT, a INT)",
            "INVALID_TABLE_DEFINITION",
        ),
        (
            "CREATE STREAM TABLE nosuch.s (a INT)",
            "NAMESPACE_NOT_FOUND",
        ),
    ];
    for (sql, code) in cases {
        node.expect_error(&admin, sql, code).await;
    }
    node.expect_error(
        &token("alice", false),
        "CREATE STREAM TABLE app.s (a INT)",
        "FORBIDDEN",
    )
    .await;
    assert!(
        node.query(&admin, "SHOW TABLES IN app").await.is_empty(),
        "no refused definition created a table"
    );
}

#[tokio::test]
async fn events_of_a_non_ephemeral_stream_survive_a_restart() {
    let node = TestNode::start().await;
    with_namespace(&node).await;
    node.admin(EVENTS_DDL).await;
    node.admin(
        "CREATE STREAM TABLE app.recent (id BIGINT PRIMARY KEY, kind TEXT) \
         WITH (retention = '1h', max_buffer = 3)",
    )
    .await;
    let alice = token("alice", false);
    for (id, kind) in [(30, "c"), (10, "a"), (20, "b")] {
        node.exec(&alice, &event("app.events", id, kind)).await;
        node.exec(&alice, &event("app.recent", id, kind)).await;
    }
    let message = describe_message(&node, "app.recent").await;

    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;

    let rows = node.query(&alice, "SELECT * FROM app.events").await;
    assert_eq!(
        ids(&rows),
        [30, 10, 20],
        "events and their order survive a restart"
    );
    assert_eq!(strings(&rows, "kind"), ["c", "a", "b"]);
    assert_eq!(stats(&node, "app.events").await["hot_rows"], json!(3));
    assert_eq!(
        describe_message(&node, "app.recent").await,
        message,
        "the options survive a restart"
    );
    let show = node.query(&admin_token(), "SHOW TABLES IN app").await;
    assert_eq!(
        find_row(&show, "table_name", "recent")["options"],
        json!({"retention": "1h", "ephemeral": false, "max_buffer": 3})
    );

    // New events come after the old ones, and max_buffer counts the events from before.
    node.exec(&alice, &event("app.events", 5, "new")).await;
    assert_eq!(scan_ids(&node, "app.events").await, [30, 10, 20, 5]);
    node.exec(&alice, &event("app.recent", 5, "new")).await;
    assert_eq!(scan_ids(&node, "app.recent").await, [10, 20, 5]);
    assert_eq!(stats(&node, "app.recent").await["hot_rows"], json!(3));
}
