//! Per-user isolation of USER tables (API.md §2 and §4, DESIGN.md invariant 3): alice and bob
//! see and change only their own rows through SELECT, COUNT, subqueries, joins with a SHARED
//! table, UPDATE, DELETE and INSERT ... SELECT; an admin with `as_user` acts in that user's
//! partition; `as_user` is admin-only and validated; SHARED tables are visible to every user.

use serde_json::json;

use crate::harness::*;

/// The chat schema with alice's rows 101-103 and bob's rows 201-202 in `app.messages`.
async fn node_with_two_users() -> (TestNode, String, String) {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES \
         (101, 'c1', 'alice-1'), (102, 'c1', 'alice-2'), (103, 'c2', 'alice-3')",
    )
    .await;
    node.exec(
        &bob,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (201, 'c1', 'bob-1'), (202, 'c1', 'bob-2')",
    )
    .await;
    (node, alice, bob)
}

const ALL: &str = "SELECT id, content FROM app.messages ORDER BY id";

#[tokio::test]
async fn users_read_only_their_own_rows() {
    let (node, alice, bob) = node_with_two_users().await;

    assert_eq!(ids(&node.query(&alice, ALL).await), [101, 102, 103]);
    assert_eq!(ids(&node.query(&bob, ALL).await), [201, 202]);
    assert_eq!(
        ids(&node
            .query(&alice, "SELECT * FROM app.messages ORDER BY id")
            .await),
        [101, 102, 103]
    );
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        3
    );
    assert_eq!(
        node.count(&bob, "SELECT COUNT(*) FROM app.messages").await,
        2
    );

    assert!(node
        .query(&alice, "SELECT id FROM app.messages WHERE id = 201")
        .await
        .is_empty());
    assert!(node
        .query(
            &alice,
            "SELECT id FROM app.messages WHERE content LIKE 'bob%'"
        )
        .await
        .is_empty());
    assert_eq!(
        ids(&node
            .query(
                &alice,
                "SELECT id FROM app.messages WHERE _deleted = false ORDER BY id"
            )
            .await),
        [101, 102, 103]
    );
    assert_eq!(
        node.count(
            &alice,
            "SELECT COUNT(*) FROM app.messages WHERE id IN (SELECT id FROM app.messages)"
        )
        .await,
        3
    );
    let groups = node
        .query(&alice, "SELECT conversation_id, COUNT(*) AS n FROM app.messages GROUP BY conversation_id ORDER BY conversation_id")
        .await;
    assert_eq!(
        groups,
        [
            json!({"conversation_id": "c1", "n": 2}),
            json!({"conversation_id": "c2", "n": 1})
        ]
    );

    // A user without rows, and an admin without as_user (its own partition), see nothing.
    let carol = token("carol", false);
    assert!(node.query(&carol, ALL).await.is_empty());
    assert_eq!(
        node.count(&carol, "SELECT COUNT(*) FROM app.messages")
            .await,
        0
    );
    assert!(
        node.query(&admin_token(), ALL).await.is_empty(),
        "an admin's own partition is empty"
    );
}

#[tokio::test]
async fn users_cannot_change_other_users_rows() {
    let (node, alice, bob) = node_with_two_users().await;
    let alice_rows = node
        .query(&alice, "SELECT * FROM app.messages ORDER BY id")
        .await;

    assert_eq!(
        node.affected(
            &bob,
            "UPDATE app.messages SET content = 'pwned' WHERE id = 101"
        )
        .await,
        0
    );
    assert_eq!(
        node.affected(&bob, "DELETE FROM app.messages WHERE id = 101")
            .await,
        0
    );
    assert_eq!(
        node.affected(&bob, "UPDATE app.messages SET content = 'bob-all'")
            .await,
        2
    );
    assert_eq!(node.affected(&bob, "DELETE FROM app.messages").await, 2);
    // Keys are per user: bob may use the id of one of alice's rows.
    node.exec(
        &bob,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (101, 'c9', 'bob-101')",
    )
    .await;

    assert_eq!(
        node.query(&alice, "SELECT * FROM app.messages ORDER BY id")
            .await,
        alice_rows,
        "alice's rows are untouched"
    );
    assert!(
        node.query(&alice, "SELECT id FROM app.messages WHERE _deleted = true")
            .await
            .is_empty(),
        "bob's deletes are not alice's"
    );
    assert_eq!(
        node.query(&bob, ALL).await,
        [json!({"id": 101, "content": "bob-101"})]
    );
    assert_eq!(
        ids(&node
            .query(
                &bob,
                "SELECT id FROM app.messages WHERE _deleted = true ORDER BY id"
            )
            .await),
        [201, 202]
    );

    // And the other way round.
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.messages WHERE content = 'bob-101'")
            .await,
        0
    );
    assert_eq!(
        node.count(&bob, "SELECT COUNT(*) FROM app.messages").await,
        1
    );
}

#[tokio::test]
async fn joins_and_insert_select_stay_in_the_callers_partition() {
    let (node, alice, bob) = node_with_two_users().await;
    node.admin(
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'General'), ('c2', 'Random')",
    )
    .await;
    node.admin("CREATE SHARED TABLE app.archive (id BIGINT PRIMARY KEY, owner TEXT, content TEXT)")
        .await;

    let join = "SELECT c.title, COUNT(*) AS n FROM app.messages m JOIN app.conversations c \
                ON m.conversation_id = c.id GROUP BY c.title ORDER BY c.title";
    assert_eq!(
        node.query(&alice, join).await,
        [
            json!({"title": "General", "n": 2}),
            json!({"title": "Random", "n": 1})
        ]
    );
    assert_eq!(
        node.query(&bob, join).await,
        [json!({"title": "General", "n": 2})]
    );

    let copied = node
        .affected(&bob, "INSERT INTO app.archive (id, owner, content) SELECT id, 'bob', content FROM app.messages")
        .await;
    assert_eq!(copied, 2, "INSERT ... SELECT reads only bob's rows");
    assert_eq!(
        ids(&node
            .query(&alice, "SELECT id FROM app.archive ORDER BY id")
            .await),
        [201, 202]
    );

    let copied = node
        .affected(
            &alice,
            "INSERT INTO app.messages (id, conversation_id, content) \
             SELECT id + 1000, conversation_id, content FROM app.messages",
        )
        .await;
    assert_eq!(copied, 3);
    assert_eq!(
        ids(&node.query(&alice, ALL).await),
        [101, 102, 103, 1101, 1102, 1103]
    );
    assert_eq!(
        ids(&node.query(&bob, ALL).await),
        [201, 202],
        "alice's copy lands in alice's partition"
    );
}

#[tokio::test]
async fn admin_as_user_acts_in_that_users_partition() {
    let (node, alice, bob) = node_with_two_users().await;
    let admin = admin_token();

    assert_eq!(
        ids(&node.query_as(&admin, "alice", ALL).await),
        [101, 102, 103]
    );
    let who = single(
        &node
            .query_as(&admin, "alice", "SELECT CURRENT_USER()")
            .await,
        "CURRENT_USER()",
    );
    assert_eq!(who, json!("alice"), "CURRENT_USER() under as_user");

    let n = node
        .affected_as(&admin, "alice", "INSERT INTO app.messages (id, conversation_id, content) VALUES (104, 'c1', 'by-admin')")
        .await;
    assert_eq!(n, 1);
    assert_eq!(
        ids(&node.query(&alice, ALL).await),
        [101, 102, 103, 104],
        "the row lands in alice's partition"
    );
    assert_eq!(ids(&node.query(&bob, ALL).await), [201, 202]);

    assert_eq!(
        node.affected_as(&admin, "bob", "DELETE FROM app.messages WHERE id = 201")
            .await,
        1
    );
    assert_eq!(ids(&node.query(&bob, ALL).await), [202]);
    assert_eq!(ids(&node.query(&alice, ALL).await), [101, 102, 103, 104]);

    assert!(node.query_as(&admin, "carol", ALL).await.is_empty());
}

#[tokio::test]
async fn as_user_is_admin_only_and_validated() {
    let (node, alice, bob) = node_with_two_users().await;
    let admin = admin_token();

    node.expect_error_as(&bob, "alice", ALL, "FORBIDDEN").await;
    node.expect_error_as(&bob, "alice", "DELETE FROM app.messages", "FORBIDDEN")
        .await;
    node.expect_error_as(&bob, "bob", ALL, "FORBIDDEN").await;
    assert_eq!(
        node.count(&alice, "SELECT COUNT(*) FROM app.messages")
            .await,
        3,
        "a refused request ran nothing"
    );
    assert_eq!(
        node.count(&bob, "SELECT COUNT(*) FROM app.messages").await,
        2,
        "a refused request ran nothing"
    );

    let too_long = "a".repeat(129);
    for bad in ["../x", "", "a/b", "alice bob", too_long.as_str()] {
        node.expect_error_as(&admin, bad, ALL, "INVALID_REQUEST")
            .await;
    }
}

#[tokio::test]
async fn shared_tables_are_visible_to_every_user() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    let carol = token("carol", false);

    node.exec(
        &alice,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'from alice')",
    )
    .await;
    node.exec(
        &bob,
        "INSERT INTO app.conversations (id, title) VALUES ('c2', 'from bob')",
    )
    .await;
    let expected = [
        json!({"id": "c1", "title": "from alice"}),
        json!({"id": "c2", "title": "from bob"}),
    ];
    for (who, t) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        let rows = node
            .query(t, "SELECT id, title FROM app.conversations ORDER BY id")
            .await;
        assert_eq!(rows, expected, "{who} sees every row of a SHARED table");
    }
    let rows = node
        .query(
            &admin_token(),
            "SELECT id, title FROM app.conversations ORDER BY id",
        )
        .await;
    assert_eq!(rows, expected, "the admin too");

    // One key space for everybody.
    node.expect_error(
        &bob,
        "INSERT INTO app.conversations (id, title) VALUES ('c1', 'mine')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
}
