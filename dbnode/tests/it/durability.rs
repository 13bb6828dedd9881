//! Durability (DESIGN.md invariant 1): a clean restart on the same data directory keeps
//! namespaces (with options), tables (SHOW TABLES, DESCRIBE, system.tables), rows of USER and
//! SHARED tables (updates and soft deletes included) and system.users; dropped objects stay
//! dropped; acknowledged writes survive `kill -9`, also with `KALAMDB_SYNC_WRITES=true`.

use serde_json::{json, Value};

use crate::harness::*;

/// Everything a restart must keep, labelled.
async fn snapshot(node: &TestNode) -> Vec<(&'static str, Value)> {
    let admin = admin_token();
    let alice = token("alice", false);
    let bob = token("bob", false);
    let namespaces = node.query(&admin, "SHOW NAMESPACES").await;
    let mut tables = node.query(&admin, "SHOW TABLES IN app").await;
    tables.sort_by(|a, b| a["table_name"].as_str().cmp(&b["table_name"].as_str()));
    vec![
        ("SHOW NAMESPACES row of app", find_row(&namespaces, "name", "app").clone()),
        ("SHOW TABLES IN app", json!(tables)),
        ("DESCRIBE TABLE app.messages", json!(node.query(&admin, "DESCRIBE TABLE app.messages").await)),
        ("DESCRIBE TABLE app.conversations", json!(node.query(&admin, "DESCRIBE TABLE app.conversations").await)),
        (
            "system.tables",
            json!(node
                .query(
                    &admin,
                    "SELECT table_name, table_type, flush_policy, schema_version, created_at \
                     FROM system.tables WHERE namespace = 'app' ORDER BY table_name"
                )
                .await),
        ),
        ("alice's rows", json!(node.query(&alice, "SELECT * FROM app.messages ORDER BY id").await)),
        (
            "alice's deleted rows",
            json!(node.query(&alice, "SELECT * FROM app.messages WHERE _deleted = true ORDER BY id").await),
        ),
        ("bob's rows", json!(node.query(&bob, "SELECT * FROM app.messages ORDER BY id").await)),
        ("conversations", json!(node.query(&alice, "SELECT * FROM app.conversations ORDER BY id").await)),
        (
            "system.users row of carol",
            json!(node
                .query(&admin, "SELECT user_id, username, email, role, created_at FROM system.users WHERE user_id = 'carol'")
                .await),
        ),
    ]
}

fn len_of(snap: &[(&str, Value)], label: &str) -> usize {
    snap.iter()
        .find(|(l, _)| *l == label)
        .and_then(|(_, v)| v.as_array().map(Vec::len))
        .unwrap_or_else(|| panic!("no array {label} in the snapshot"))
}

#[tokio::test]
async fn clean_restart_keeps_namespaces_tables_and_rows() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    node.admin("CREATE NAMESPACE app WITH OPTIONS (retention_days = 90)")
        .await;
    node.admin("ALTER NAMESPACE app SET OPTIONS (retention_days = 30)")
        .await;
    node.admin(MESSAGES_DDL).await;
    node.admin(
        "CREATE SHARED TABLE app.conversations (id TEXT PRIMARY KEY, title TEXT, archived BOOLEAN) \
         FLUSH POLICY ROWS 100 INTERVAL '30s' WITH (deleted_retention = '7d')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content, meta) VALUES \
         (1, 'c1', 'one', '{\"n\":1}'), (2, 'c1', 'two', NULL), (3, 'c2', 'three', '[3]')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c2', 'auto id')",
    )
    .await;
    node.exec(
        &alice,
        "UPDATE app.messages SET content = 'two, edited' WHERE id = 2",
    )
    .await;
    node.exec(&alice, "DELETE FROM app.messages WHERE id = 3")
        .await;
    node.exec(&bob, "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'bob one'), (5, 'c1', 'bob five')").await;
    node.exec(&alice, "INSERT INTO app.conversations (id, title, archived) VALUES ('c1', 'General', false), ('c2', 'Random', true)").await;
    node.admin("INSERT INTO system.users (user_id, username, email, role) VALUES ('carol', 'Carol', 'carol@example.com', 'user')").await;
    let max_id = ids(&node
        .query(&alice, "SELECT id FROM app.messages ORDER BY id")
        .await)
    .into_iter()
    .max()
    .unwrap();

    let before = snapshot(&node).await;
    assert_eq!(len_of(&before, "alice's rows"), 3, "test setup: {before:?}");
    assert_eq!(len_of(&before, "alice's deleted rows"), 1, "test setup");
    assert_eq!(len_of(&before, "bob's rows"), 2, "test setup");
    assert_eq!(len_of(&before, "conversations"), 2, "test setup");
    assert_eq!(
        len_of(&before, "system.users row of carol"),
        1,
        "test setup"
    );

    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;

    let after = snapshot(&node).await;
    for ((label, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(
            a,
            b,
            "{label} changed across a restart:\nbefore: {}\nafter: {}",
            pretty(b),
            pretty(a)
        );
    }

    // The node takes writes again, and new default ids do not collide with old ones.
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'after restart')",
    )
    .await;
    let new_id = node
        .count(
            &alice,
            "SELECT id FROM app.messages WHERE content = 'after restart'",
        )
        .await;
    assert!(
        new_id > max_id,
        "a default id after the restart ({new_id}) is larger than the ids before ({max_id})"
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        4
    );
}

#[tokio::test]
async fn dropped_objects_stay_dropped_after_restart() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.create_chat_schema().await;
    node.admin("CREATE NAMESPACE other").await;
    node.admin("CREATE SHARED TABLE other.t (id BIGINT PRIMARY KEY)")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'gone')",
    )
    .await;
    node.admin("DROP TABLE app.messages").await;
    node.admin("DROP TABLE other.t").await;
    node.admin("DROP NAMESPACE other").await;

    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;

    let names = strings(&node.query(&admin, "SHOW NAMESPACES").await, "name");
    assert!(
        names.contains(&"app".to_string()) && !names.contains(&"other".to_string()),
        "namespaces: {names:?}"
    );
    assert_eq!(
        strings(
            &node.query(&admin, "SHOW TABLES IN app").await,
            "table_name"
        ),
        ["conversations"]
    );
    node.expect_error(&alice, "SELECT * FROM app.messages", "TABLE_NOT_FOUND")
        .await;

    node.admin(MESSAGES_DDL).await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0,
        "old rows must not come back"
    );
    assert!(node
        .query(&alice, "SELECT id FROM app.messages WHERE _deleted = true")
        .await
        .is_empty());
}

#[tokio::test]
async fn acknowledged_inserts_survive_kill_9() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    for i in 1..=1000i64 {
        let sql = format!(
            "INSERT INTO app.messages (id, conversation_id, content) VALUES ({i}, 'c{}', 'message {i}')",
            i % 7
        );
        let resp = node.sql(&alice, &sql).await;
        node.assert_success(&resp, &sql);
        assert_eq!(affected_of(&resp.1, &sql), 1, "{sql}");
    }
    let dir = node.kill9().await;
    let node = TestNode::start_in(&dir).await;

    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        1000,
        "every acknowledged row survives"
    );
    let got = ids(&node
        .query(&alice, "SELECT id FROM app.messages ORDER BY id")
        .await);
    assert_eq!(got, (1..=1000).collect::<Vec<i64>>(), "the id set survives");
    assert_eq!(
        node.scalar(&alice, "SELECT content FROM app.messages WHERE id = 1000")
            .await,
        json!("message 1000")
    );
    assert_eq!(
        node.count(
            &alice,
            "SELECT COUNT(*) FROM app.messages WHERE conversation_id = 'c0'"
        )
        .await,
        142
    );
    let tables = strings(
        &node.query(&admin_token(), "SHOW TABLES IN app").await,
        "table_name",
    );
    assert!(
        tables.contains(&"messages".to_string()),
        "the catalog survives kill -9: {tables:?}"
    );
}

#[tokio::test]
async fn sync_writes_keep_updates_and_deletes_across_kill_9() {
    let opts = NodeOptions::default().env("KALAMDB_SYNC_WRITES", "true");
    let dir = NodeDir::new();
    let node = TestNode::start_with(&dir, opts.clone()).await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    for i in 1..=20 {
        node.exec(
            &alice,
            &format!("INSERT INTO app.conversations (id, title) VALUES ('c{i}', 'title {i}')"),
        )
        .await;
    }
    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.conversations SET title = 'renamed' WHERE id = 'c1'"
        )
        .await,
        1
    );
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.conversations WHERE id = 'c2'")
            .await,
        1
    );
    let before = node
        .query(&alice, "SELECT * FROM app.conversations ORDER BY id")
        .await;

    let dir = node.kill9().await;
    let node = TestNode::start_with(&dir, opts).await;

    assert_eq!(
        node.query(&alice, "SELECT * FROM app.conversations ORDER BY id")
            .await,
        before
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.conversations")
            .await,
        19
    );
    assert_eq!(
        node.scalar(
            &alice,
            "SELECT title FROM app.conversations WHERE id = 'c1'"
        )
        .await,
        json!("renamed")
    );
    let deleted = node
        .query(
            &alice,
            "SELECT id FROM app.conversations WHERE _deleted = true",
        )
        .await;
    assert_eq!(deleted, [json!({"id": "c2"})]);
}

/// Column families listed in the newest RocksDB OPTIONS file of a stopped node.
fn column_families(data_dir: &std::path::Path) -> Vec<String> {
    let rocks = data_dir.join("rocksdb");
    let newest = std::fs::read_dir(&rocks)
        .expect("rocksdb dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("OPTIONS-"))
        })
        .max_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.trim_start_matches("OPTIONS-").parse::<u64>().ok())
                .unwrap_or(0)
        })
        .expect("an OPTIONS file");
    std::fs::read_to_string(newest)
        .expect("read OPTIONS")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("[CFOptions \"")
                .and_then(|r| r.strip_suffix("\"]"))
        })
        .map(str::to_string)
        .collect()
}

/// A crash between the catalog's commit point and the RocksDB change is repaired at start-up
/// in both directions: a DROP whose catalog entry is gone loses its column family, and a
/// CREATE whose column family is missing gets an empty one.
#[tokio::test]
async fn interrupted_table_ddl_is_repaired_at_start() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id) VALUES (1, 'c1'), (2, 'c1')",
    )
    .await;
    let dir = node.stop().await;
    assert!(
        column_families(&dir.data_dir())
            .iter()
            .any(|cf| cf.starts_with("t_app_messages_")),
        "the table's column family exists before the simulated crash"
    );

    // DROP TABLE committed (manifest removed) but the node died before dropping the data.
    let table_dir = dir.data_dir().join("catalog/app/messages");
    std::fs::remove_file(table_dir.join("manifest.json")).expect("remove manifest");
    let node = TestNode::start_in(&dir).await;
    let tables: Vec<String> = node
        .query(&admin_token(), "SHOW TABLES IN app")
        .await
        .iter()
        .map(|r| r["table_name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        tables,
        vec!["conversations".to_string()],
        "the half-dropped table is gone"
    );
    assert!(!table_dir.exists(), "its catalog leftovers are removed");
    node.admin(MESSAGES_DDL).await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0,
        "a new table starts empty"
    );
    let dir = node.stop().await;
    let cfs = column_families(&dir.data_dir());
    assert_eq!(
        cfs.iter()
            .filter(|cf| cf.starts_with("t_app_messages_"))
            .count(),
        1,
        "only the new table's column family is left: {cfs:?}"
    );

    // CREATE TABLE committed, but its column family was never created: emulate by pointing the
    // manifest at a fresh uid the store has never seen.
    let manifest_path = dir.data_dir().join("catalog/app/messages/manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("read")).expect("json");
    manifest["uid"] = json!("neverseen");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec(&manifest).expect("encode"),
    )
    .expect("write");
    let node = TestNode::start_in(&dir).await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        0
    );
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id) VALUES (3, 'c1')",
    )
    .await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        1
    );
    let dir = node.stop().await;
    let cfs = column_families(&dir.data_dir());
    assert!(
        cfs.iter().any(|cf| cf == "t_app_messages_neverseen"),
        "{cfs:?}"
    );
    assert_eq!(
        cfs.iter()
            .filter(|cf| cf.starts_with("t_app_messages_"))
            .count(),
        1,
        "{cfs:?}"
    );
}

/// A data directory whose catalog is gone (deleted, or mounted wrong) starts without tables
/// but keeps their data: start-up repair only drops data of namespaces it still knows.
#[tokio::test]
async fn a_lost_catalog_never_deletes_table_data() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    node.exec(
        &token("alice", false),
        "INSERT INTO app.messages (id, conversation_id) VALUES (1, 'c1')",
    )
    .await;
    let dir = node.stop().await;
    std::fs::remove_dir_all(dir.data_dir().join("catalog")).expect("remove catalog");
    let node = TestNode::start_in(&dir).await;
    assert!(node.query(&admin_token(), "SHOW TABLES").await.is_empty());
    let dir = node.stop().await;
    let cfs = column_families(&dir.data_dir());
    assert!(
        cfs.iter().any(|cf| cf.starts_with("t_app_messages_")),
        "data kept: {cfs:?}"
    );
}

/// A namespace lost from the catalog keeps its data even when its name extends a namespace
/// the catalog still has (`app_x` after `app`): its column family `t_app_x_notes_…` could
/// also be a table `x_notes` of `app`, and start-up repair does not drop data on a guess.
#[tokio::test]
async fn a_lost_namespace_keeps_its_data_next_to_a_namespace_with_a_shorter_name() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    node.admin("CREATE NAMESPACE app_x").await;
    node.admin("CREATE SHARED TABLE app_x.notes (id BIGINT PRIMARY KEY, body TEXT)")
        .await;
    node.admin("INSERT INTO app_x.notes (id, body) VALUES (1, 'kept')")
        .await;
    let dir = node.stop().await;
    std::fs::remove_dir_all(dir.data_dir().join("catalog/app_x")).expect("remove app_x");
    let node = TestNode::start_in(&dir).await;
    node.expect_error(
        &admin_token(),
        "SELECT * FROM app_x.notes",
        "NAMESPACE_NOT_FOUND",
    )
    .await;
    let dir = node.stop().await;
    let cfs = column_families(&dir.data_dir());
    assert!(
        cfs.iter().any(|cf| cf.starts_with("t_app_x_notes_")),
        "data kept: {cfs:?}"
    );
    assert!(
        cfs.iter().any(|cf| cf.starts_with("t_app_messages_")),
        "the known namespace's table is untouched: {cfs:?}"
    );
}

/// With `sync_writes`, INSERTs that arrive while another commit is writing wait for it off
/// the node's workers and share the next fsync (group commit, ADR 0024). Sixteen users
/// writing at once, and sixteen clients racing for one key: every acknowledged row
/// survives kill -9, exactly one racer wins and the others get PRIMARY_KEY_VIOLATION, and
/// `/metrics` shows fewer writes than INSERT commits.
#[tokio::test]
async fn concurrent_inserts_with_sync_writes_are_each_durable_and_checked() {
    let opts = NodeOptions::default().env("KALAMDB_SYNC_WRITES", "true");
    let dir = NodeDir::new();
    let node = TestNode::start_with(&dir, opts.clone()).await;
    node.create_chat_schema().await;
    let users: Vec<String> = (0..16).map(|i| format!("writer{i}")).collect();

    let writers = users.iter().map(|user| {
        let (node, token) = (&node, token(user, false));
        async move {
            for i in 0..25 {
                let sql = format!(
                    "INSERT INTO app.messages (conversation_id, content) VALUES ('c', '{user} {i}')"
                );
                node.exec(&token, &sql).await;
            }
        }
    });
    let racers = users.iter().map(|user| {
        let sql = format!(
            "INSERT INTO app.conversations (id, title) VALUES ('contested', 'won by {user}')"
        );
        let (node, token) = (&node, token(user, false));
        async move { (node.sql(&token, &sql).await, sql) }
    });
    let (_, raced) = tokio::join!(
        futures::future::join_all(writers),
        futures::future::join_all(racers)
    );
    let mut winners = Vec::new();
    for (user, (resp, sql)) in users.iter().zip(&raced) {
        if resp.0 == 200 {
            node.assert_success(resp, sql);
            winners.push(user.clone());
        } else {
            node.assert_error(resp, "PRIMARY_KEY_VIOLATION", sql);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one INSERT of the key wins: {winners:?}"
    );
    // 416 INSERTs from 32 clients at once, each write an fsync: waiting ones shared them.
    let commits = node.metric("kalamdb_insert_commits_total").await;
    let writes = node.metric("kalamdb_insert_writes_total").await;
    assert!(commits > 16 * 25, "{commits} INSERT commits");
    assert!(
        writes < commits,
        "{writes} writes for {commits} INSERT commits"
    );

    let dir = node.kill9().await;
    let node = TestNode::start_with(&dir, opts).await;
    for user in &users {
        let contents = node
            .query(
                &token(user, false),
                "SELECT content FROM app.messages ORDER BY content",
            )
            .await;
        let mut expected: Vec<Value> = (0..25)
            .map(|i| json!({"content": format!("{user} {i}")}))
            .collect();
        expected.sort_by_key(|v| v["content"].as_str().unwrap_or_default().to_string());
        assert_eq!(
            contents, expected,
            "{user}'s acknowledged rows after kill -9"
        );
    }
    assert_eq!(
        node.query(
            &token("writer0", false),
            "SELECT id, title FROM app.conversations"
        )
        .await,
        [json!({"id": "contested", "title": format!("won by {}", winners[0])})]
    );
}
