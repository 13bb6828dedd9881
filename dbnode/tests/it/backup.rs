//! BACKUP NAMESPACE, RESTORE NAMESPACE and SHOW BACKUP (API.md §4 "Backup",
//! docs/adr/0015-backup-restore.md) against the real node: a namespace with a USER table of
//! several users and four schema versions (rows of each version in both tiers, updates and
//! soft deletes over flushed rows), a SHARED table and a STREAM table is backed up, dropped and
//! restored, and every query answers as before (per-user isolation, `_updated`/`_deleted`,
//! DESCRIBE and its HISTORY, SHOW TABLE STATS), also after a restart. RESTORE onto an existing
//! namespace is 409, SHOW BACKUP lists tables, rows and schema versions, a backup taken while
//! inserts and flushes go on restores to a per-table prefix of the inserts, a corrupted,
//! truncated or missing file makes RESTORE fail naming the file with nothing restored, user
//! tokens get 403, and backups go to and come from S3 (a moto server).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::*;

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The tables of the fixture; `NS` is replaced by the namespace.
const NOTES_DDL: &str = "CREATE USER TABLE NS.notes (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, \
     body TEXT, n INT) FLUSH POLICY ROWS 1000000";
const ROOMS_DDL: &str = "CREATE SHARED TABLE NS.rooms (id TEXT PRIMARY KEY, title TEXT, \
     archived BOOLEAN, meta JSON) FLUSH POLICY ROWS 1000000";
const TYPING_DDL: &str =
    "CREATE STREAM TABLE NS.typing (room TEXT, user_name TEXT) WITH (retention = '1h')";

fn ns_sql(template: &str, ns: &str) -> String {
    template.replace("NS.", &format!("{ns}."))
}

fn backups_dir(node: &TestNode) -> PathBuf {
    node.dir().base().join("backups")
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn values_of(rows: impl Iterator<Item = String>) -> String {
    rows.collect::<Vec<_>>().join(", ")
}

/// Namespace `app`: `notes` (USER; schema versions 1-4, rows of each; flushed rows updated and
/// soft-deleted; hot rows of versions 3 and 4), `rooms` (SHARED; flushed and hot rows, an
/// update and a soft delete of flushed rows, JSON) and `typing` (STREAM). `notes_clause` is
/// put after the notes DDL (a LOCATION).
async fn create_fixture(node: &TestNode, notes_clause: &str) {
    node.admin("CREATE NAMESPACE app WITH OPTIONS (tier = 'gold', retention_days = 30)")
        .await;
    node.admin(&format!("{} {notes_clause}", ns_sql(NOTES_DDL, "app")))
        .await;
    node.admin(&ns_sql(ROOMS_DDL, "app")).await;
    node.admin(&ns_sql(TYPING_DDL, "app")).await;

    // Version 1: a different number of rows per user, then flushed.
    for (u, user) in USERS.iter().enumerate() {
        let n = 4 + 2 * u as i64;
        let values = values_of((1..=n).map(|i| {
            format!(
                "({i}, {}, {}, {i})",
                lit(user),
                lit(&format!("v1 {user} {i}"))
            )
        }));
        node.exec(
            &token(user, false),
            &format!("INSERT INTO app.notes (id, owner, body, n) VALUES {values}"),
        )
        .await;
    }
    node.admin(
        "INSERT INTO app.rooms (id, title, archived, meta) VALUES \
         ('r1', 'one', false, '{\"a\":1}'), ('r2', 'two', false, NULL), \
         ('r3', 'three', true, '[1,2]'), ('r4', 'four', NULL, '{}')",
    )
    .await;
    flush(node, "app.notes").await;
    flush(node, "app.rooms").await;

    // Version 2: a column with a DEFAULT; rows of version 2; an update and a soft delete of
    // flushed rows; flushed again.
    node.admin("ALTER TABLE app.notes ADD COLUMN priority TEXT DEFAULT 'normal'")
        .await;
    for (u, user) in USERS.iter().enumerate() {
        let t = token(user, false);
        let base = 10 + 10 * u as i64;
        let owner = lit(user);
        let values = format!(
            "({base}, {owner}, 'v2 a', 1, 'high'), ({}, {owner}, 'v2 b', 2, 'low')",
            base + 1
        );
        node.exec(
            &t,
            &format!("INSERT INTO app.notes (id, owner, body, n, priority) VALUES {values}"),
        )
        .await;
        node.exec(&t, "UPDATE app.notes SET body = 'edited' WHERE id = 2")
            .await;
        node.exec(&t, "DELETE FROM app.notes WHERE id = 3").await;
    }
    flush(node, "app.notes").await;

    // Version 3: rows of version 3 stay hot; a flushed row updated and one soft-deleted
    // (hot versions over cold ones).
    node.admin("ALTER TABLE app.notes ADD COLUMN score BIGINT")
        .await;
    for (u, user) in USERS.iter().enumerate() {
        let t = token(user, false);
        let base = 10 + 10 * u as i64;
        node.exec(
            &t,
            &format!(
                "INSERT INTO app.notes (id, owner, body, n, priority, score) VALUES \
                 (100, {}, 'v3', 3, 'high', {})",
                lit(user),
                7 * (u as i64 + 1)
            ),
        )
        .await;
        node.exec(&t, "UPDATE app.notes SET score = 42 WHERE id = 1")
            .await;
        node.exec(&t, &format!("DELETE FROM app.notes WHERE id = {base}"))
            .await;
    }

    // Version 4: a column dropped; rows of version 4 (hot rows of versions 3 and 4 now).
    node.admin("ALTER TABLE app.notes DROP COLUMN n").await;
    for user in USERS {
        node.exec(
            &token(user, false),
            &format!(
                "INSERT INTO app.notes (id, owner, body, priority, score) VALUES \
                 (200, {}, 'v4', 'low', 1)",
                lit(user)
            ),
        )
        .await;
    }

    node.admin("UPDATE app.rooms SET title = 'TWO' WHERE id = 'r2'")
        .await;
    node.admin("DELETE FROM app.rooms WHERE id = 'r3'").await;
    node.admin("INSERT INTO app.rooms (id, title, archived, meta) VALUES ('r5', 'five', true, '{\"b\":[true,null]}')")
        .await;
    node.exec(
        &token("alice", false),
        "INSERT INTO app.typing (room, user_name) VALUES ('r1', 'alice'), ('r2', 'alice')",
    )
    .await;
    node.exec(
        &token("bob", false),
        "INSERT INTO app.typing (room, user_name) VALUES ('r1', 'bob')",
    )
    .await;
}

async fn drop_fixture(node: &TestNode, ns: &str) {
    for table in ["notes", "rooms", "typing"] {
        node.admin(&format!("DROP TABLE {ns}.{table}")).await;
    }
    node.admin(&format!("DROP NAMESPACE {ns}")).await;
}

/// Data answers, labelled by query (without the namespace, so that a namespace restored
/// under another name compares): every user's rows, soft-deleted rows and counts, the SHARED
/// table as admin and as a user, the STREAM table.
async fn data_answers(node: &TestNode, ns: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for user in USERS {
        let t = token(user, false);
        for template in [
            "SELECT * FROM NS.notes ORDER BY id",
            "SELECT * FROM NS.notes WHERE _deleted = true ORDER BY id",
            "SELECT COUNT(*) AS n, SUM(id) AS s, MAX(_updated) AS newest FROM NS.notes",
            "SELECT id, priority, score FROM NS.notes WHERE score IS NOT NULL ORDER BY id",
            "SELECT * FROM NS.rooms ORDER BY id",
        ] {
            out.push((
                format!("{user}: {template}"),
                json!(node.query(&t, &ns_sql(template, ns)).await),
            ));
        }
    }
    let admin = admin_token();
    for template in [
        "SELECT * FROM NS.rooms WHERE _deleted = true ORDER BY id",
        "SELECT * FROM NS.rooms WHERE _deleted = false OR _deleted = true ORDER BY id",
        "SELECT * FROM NS.typing",
        "SELECT * FROM NS.notes ORDER BY id",
    ] {
        out.push((
            format!("admin: {template}"),
            json!(node.query(&admin, &ns_sql(template, ns)).await),
        ));
    }
    out
}

/// Columns, rows and message of the first result of an admin statement.
async fn described(node: &TestNode, sql: &str) -> Value {
    let body = node.admin(sql).await;
    let r = result(&body, 0);
    json!({"columns": r["columns"], "rows": r["rows"], "message": r["message"]})
}

/// What the catalog and the stats say about namespace `app`.
async fn catalog_answers(node: &TestNode) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for sql in [
        "DESCRIBE TABLE app.notes",
        "DESCRIBE TABLE app.notes HISTORY",
        "DESCRIBE TABLE app.rooms",
        "DESCRIBE TABLE app.rooms HISTORY",
        "DESCRIBE TABLE app.typing",
        "SHOW TABLES IN app",
        "SHOW TABLE STATS app.notes",
        "SHOW TABLE STATS app.rooms",
        "SHOW TABLE STATS app.typing",
    ] {
        out.push((sql.to_string(), described(node, sql).await));
    }
    let namespaces = node.query(&admin_token(), "SHOW NAMESPACES").await;
    out.push((
        "SHOW NAMESPACES (app)".into(),
        find_row(&namespaces, "name", "app").clone(),
    ));
    out
}

fn assert_same(before: &[(String, Value)], after: &[(String, Value)], when: &str) {
    assert_eq!(before.len(), after.len(), "{when}: as many answers");
    for ((label, b), (label_after, a)) in before.iter().zip(after) {
        assert_eq!(label, label_after);
        assert_eq!(
            a,
            b,
            "{when}: `{label}` changed\nbefore: {}\nafter: {}",
            pretty(b),
            pretty(a)
        );
    }
}

fn int(v: &Value, context: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{context}: expected an integer, got {v}"))
}

/// A JSON cell: nested JSON, or JSON text.
fn json_cell(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

/// Runs BACKUP or RESTORE (admin) and checks its one-row answer; returns that row.
async fn run_backup_statement(node: &TestNode, sql: &str, job_prefix: &str) -> Value {
    let body = node.admin(sql).await;
    let rows = rows_of(&body, 0);
    assert_eq!(rows.len(), 1, "{sql} answers one row: {}", pretty(&body));
    let row = rows[0].clone();
    let job_id = row["job_id"].as_str().unwrap_or_default();
    assert!(
        job_id.starts_with(job_prefix),
        "{sql}: job id {job_id:?} starts with {job_prefix}: {}",
        pretty(&body)
    );
    assert_eq!(row["status"], "completed", "{sql}: {}", pretty(&body));
    row
}

/// The job's row in `system.jobs`, which must be `completed` with bytes and a duration.
async fn completed_job(node: &TestNode, row: &Value, job_type: &str) -> Value {
    let job_id = row["job_id"].as_str().unwrap_or_default();
    let job = wait_job(node, job_id).await;
    assert_eq!(job["job_type"], job_type, "{}", pretty(&job));
    assert_eq!(job["status"], "completed", "{}", pretty(&job));
    assert_eq!(job["user_id"], ADMIN_USER, "{}", pretty(&job));
    let result = json_cell(&job["result"]);
    for key in ["rows", "files", "bytes", "tables"] {
        assert!(
            result[key].is_u64(),
            "system.jobs.result.{key} is a count: {}",
            pretty(&job)
        );
    }
    assert!(int(&result["bytes"], "bytes") > 0, "{}", pretty(&job));
    assert!(result["mb_per_s"].is_number(), "{}", pretty(&job));
    assert_eq!(
        result["bytes"], row["bytes"],
        "the statement answers the job's result"
    );
    assert_eq!(result["rows"], row["rows"]);
    job
}

/// Live and soft-deleted rows of the fixture's tables, counted through queries.
async fn fixture_counts(node: &TestNode) -> (i64, i64, i64, i64, i64) {
    let (mut notes, mut notes_deleted) = (0, 0);
    for user in USERS {
        let t = token(user, false);
        notes += node.count(&t, "SELECT COUNT(*) FROM app.notes").await;
        notes_deleted += node
            .count(&t, "SELECT COUNT(*) FROM app.notes WHERE _deleted = true")
            .await;
    }
    let admin = admin_token();
    let rooms = node.count(&admin, "SELECT COUNT(*) FROM app.rooms").await;
    let rooms_deleted = node
        .count(
            &admin,
            "SELECT COUNT(*) FROM app.rooms WHERE _deleted = true",
        )
        .await;
    let typing = node.count(&admin, "SELECT COUNT(*) FROM app.typing").await;
    (notes, notes_deleted, rooms, rooms_deleted, typing)
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        let rel = file.strip_prefix(from).expect("a file under the directory");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("creating a directory");
        std::fs::copy(&file, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
    }
}

/// Flips every bit of the byte in the middle of a file (its size stays).
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("reading a backup file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).expect("writing a backup file");
}

/// Replaces the backup file `rel` with `bytes` and updates its size and sha256 in
/// `manifest.json` and the manifest's own checksum, so that only its content is wrong.
fn rewrite_checked(dir: &Path, rel: &str, bytes: &[u8]) {
    std::fs::write(dir.join(rel), bytes).expect("writing a backup file");
    let manifest_path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest.json"))
            .expect("manifest.json is JSON");
    let entry = manifest["files"]
        .as_array_mut()
        .and_then(|files| files.iter_mut().find(|f| f["path"] == rel))
        .unwrap_or_else(|| panic!("{rel} is listed in manifest.json"));
    entry["bytes"] = json!(bytes.len());
    entry["sha256"] = json!(format!("{:x}", Sha256::digest(bytes)));
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .expect("writing manifest.json");
    std::fs::write(
        dir.join("manifest.json.sha256"),
        sha256_file(&manifest_path),
    )
    .expect("writing manifest.json.sha256");
}

fn rel_path(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .expect("a file of the backup")
        .to_string_lossy()
        .replace('\\', "/")
}

/// The SHOW BACKUP row of `table`.
fn backup_row<'a>(rows: &'a [Value], table: &str) -> &'a Value {
    find_row(rows, "table_name", table)
}

/// Files the node's built-in location holds whose name says a restore wrote them.
fn restored_files(node: &TestNode) -> Vec<PathBuf> {
    files_under(&node.data_dir().join("storage"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("restored-"))
        })
        .collect()
}

#[tokio::test]
async fn backup_drop_restore_answers_every_query_as_before() {
    let node = TestNode::start().await;
    create_fixture(&node, "").await;
    let data_before = data_answers(&node, "app").await;
    let catalog_before = catalog_answers(&node).await;
    let (notes, notes_deleted, rooms, rooms_deleted, typing) = fixture_counts(&node).await;
    assert!(notes > 0 && notes_deleted > 0 && rooms_deleted > 0 && typing == 3);
    // The fixture holds what it says: both tiers, several schema versions.
    let stats = described(&node, "SHOW TABLE STATS app.notes").await;
    let s = &stats["rows"][0];
    assert!(
        int(&s["hot_rows"], "hot_rows") > 0 && int(&s["cold_rows"], "cold_rows") > 0,
        "{}",
        pretty(&stats)
    );

    let dir = backups_dir(&node).join("app-1");
    let url = file_url(&dir);
    let row = run_backup_statement(
        &node,
        &format!("BACKUP NAMESPACE app TO {}", lit(&url)),
        "backup-",
    )
    .await;
    assert_eq!(row["namespace"], "app");
    assert_eq!(row["tables"], 3, "{}", pretty(&row));
    assert_eq!(
        int(&row["rows"], "rows"),
        notes + rooms + typing,
        "the backup counts every live row: {}",
        pretty(&row)
    );
    let job = completed_job(&node, &row, "backup").await;
    assert_eq!(job["namespace"], "app");

    // The manifest lists every file with its size and sha256, and they are right.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).expect("manifest.json is written"),
    )
    .expect("manifest.json is JSON");
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["namespace"], "app");
    assert!(manifest["node_id"].is_string() && manifest["started_at"].is_string());
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.json.sha256"))
            .expect("manifest.json.sha256")
            .trim(),
        sha256_file(&dir.join("manifest.json"))
    );
    let listed = manifest["files"].as_array().cloned().unwrap_or_default();
    let mut on_disk: Vec<String> = files_under(&dir)
        .iter()
        .map(|f| rel_path(&dir, f))
        .filter(|p| p != "manifest.json" && p != "manifest.json.sha256")
        .collect();
    on_disk.sort();
    let mut listed_paths: Vec<String> = listed
        .iter()
        .map(|f| f["path"].as_str().unwrap_or_default().to_string())
        .collect();
    listed_paths.sort();
    assert_eq!(
        listed_paths, on_disk,
        "manifest.json lists exactly the files"
    );
    for f in &listed {
        let path = dir.join(f["path"].as_str().unwrap_or_default());
        assert_eq!(
            f["sha256"].as_str().unwrap_or_default(),
            sha256_file(&path),
            "sha256 of {f}"
        );
        assert_eq!(
            f["bytes"].as_u64(),
            std::fs::metadata(&path).ok().map(|m| m.len()),
            "size of {f}"
        );
    }
    for v in 1..=4 {
        assert!(
            dir.join(format!("catalog/notes/schema_v{v}.json"))
                .is_file(),
            "schema version {v} of notes is in the backup"
        );
    }
    assert!(dir.join("data/notes/hot.rows").is_file());
    assert!(files_under(&dir.join("data/notes"))
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "parquet")));

    // SHOW BACKUP lists tables, rows and schema versions without restoring.
    let shown = node
        .query(&admin_token(), &format!("SHOW BACKUP {}", lit(&url)))
        .await;
    assert_eq!(shown.len(), 3, "{}", pretty(&json!(shown)));
    let n = backup_row(&shown, "notes");
    assert_eq!(n["namespace"], "app");
    assert_eq!(n["table_type"], "user");
    assert_eq!(n["schema_version"], 4);
    assert_eq!(n["schema_versions"], json!([1, 2, 3, 4]));
    assert_eq!(int(&n["rows"], "rows"), notes, "{n}");
    assert_eq!(
        int(&n["deleted_rows"], "deleted_rows"),
        notes_deleted,
        "{n}"
    );
    assert_eq!(n["users"], 3);
    assert_eq!(n["hot_rows"], s["hot_rows"], "{n} vs {}", pretty(&stats));
    assert_eq!(n["cold_rows"], s["cold_rows"], "{n} vs {}", pretty(&stats));
    assert_eq!(n["parquet_files"], s["parquet_files"], "{n}");
    let r = backup_row(&shown, "rooms");
    assert_eq!(r["table_type"], "shared");
    assert_eq!(r["schema_versions"], json!([1]));
    assert_eq!(int(&r["rows"], "rows"), rooms);
    assert_eq!(int(&r["deleted_rows"], "deleted_rows"), rooms_deleted);
    assert!(r["users"].is_null(), "{r}");
    let t = backup_row(&shown, "typing");
    assert_eq!(t["table_type"], "stream");
    assert_eq!(int(&t["rows"], "rows"), typing);
    // SHOW BACKUP restores nothing.
    assert_eq!(
        node.count(&admin_token(), "SELECT COUNT(*) FROM system.namespaces")
            .await,
        1
    );

    drop_fixture(&node, "app").await;
    node.expect_error(
        &admin_token(),
        "SELECT * FROM app.rooms",
        "NAMESPACE_NOT_FOUND",
    )
    .await;

    let row = run_backup_statement(
        &node,
        &format!("RESTORE NAMESPACE app FROM {}", lit(&url)),
        "restore-",
    )
    .await;
    assert_eq!(row["namespace"], "app");
    assert_eq!(row["tables"], 3);
    assert_eq!(int(&row["rows"], "rows"), notes + rooms + typing);
    completed_job(&node, &row, "restore").await;

    assert_same(
        &data_before,
        &data_answers(&node, "app").await,
        "after RESTORE",
    );
    assert_same(
        &catalog_before,
        &catalog_answers(&node).await,
        "after RESTORE",
    );

    // The restored tables take writes: new rows number after the restored ones, a key live
    // only in a restored Parquet file (alice's id 4) is still taken, and flushes work.
    let alice = token("alice", false);
    node.expect_error(
        &alice,
        "INSERT INTO app.notes (id, owner, body) VALUES (4, 'alice', 'again')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    let last_before = node
        .scalar(&alice, "SELECT MAX(_updated) AS t FROM app.notes")
        .await;
    node.exec(
        &alice,
        "INSERT INTO app.notes (id, owner, body) VALUES (300, 'alice', 'after restore')",
    )
    .await;
    let fresh = node
        .query(&alice, "SELECT _updated FROM app.notes WHERE id = 300")
        .await;
    assert!(
        parse_utc(&fresh[0]["_updated"], "_updated") > parse_utc(&last_before, "last _updated"),
        "a write after the restore is newer than every restored version"
    );
    assert_eq!(
        node.count(
            &token("bob", false),
            "SELECT COUNT(*) FROM app.notes WHERE id = 300"
        )
        .await,
        0,
        "per-user isolation holds for new rows"
    );
    node.exec(&alice, "DELETE FROM app.notes WHERE id = 300")
        .await;
    flush(&node, "app.notes").await;
    flush(&node, "app.rooms").await;
    let data_after_flush = data_answers(&node, "app").await;
    let changed: Vec<&String> = data_before
        .iter()
        .zip(&data_after_flush)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((l, _), _)| l)
        .collect();
    // Only alice's answers that show soft-deleted rows or the newest `_updated` may differ.
    assert!(
        changed
            .iter()
            .all(|l| l.starts_with("alice:") || l.starts_with("admin: SELECT * FROM NS.notes")),
        "a flush after the restore changed {changed:?}"
    );

    // A restart keeps the restored namespace.
    let dir_node = node.stop().await;
    let node = TestNode::start_in(&dir_node).await;
    assert_same(
        &data_after_flush,
        &data_answers(&node, "app").await,
        "after a restart",
    );
}

#[tokio::test]
async fn restore_conflicts_and_missing_backups_have_stable_codes() {
    let node = TestNode::start().await;
    create_fixture(&node, "").await;
    let admin = admin_token();
    let dir = backups_dir(&node).join("app");
    let url = file_url(&dir);
    run_backup_statement(
        &node,
        &format!("BACKUP NAMESPACE app TO {}", lit(&url)),
        "backup-",
    )
    .await;

    // The namespace exists: 409, and nothing about it changes.
    let before = data_answers(&node, "app").await;
    let err = node
        .expect_error(
            &admin,
            &format!("RESTORE NAMESPACE app FROM {}", lit(&url)),
            "NAMESPACE_ALREADY_EXISTS",
        )
        .await;
    assert!(err["message"].as_str().unwrap_or_default().contains("app"));
    assert_same(
        &before,
        &data_answers(&node, "app").await,
        "after a refused RESTORE",
    );

    // The same backup restored under another name, side by side.
    run_backup_statement(
        &node,
        &format!("RESTORE NAMESPACE app2 FROM {}", lit(&url)),
        "restore-",
    )
    .await;
    assert_same(
        &before,
        &data_answers(&node, "app2").await,
        "app2 restored from app",
    );
    // Writes to one do not reach the other.
    node.exec(
        &token("alice", false),
        "INSERT INTO app2.notes (id, owner, body) VALUES (400, 'alice', 'only in app2')",
    )
    .await;
    assert_eq!(
        node.count(
            &token("alice", false),
            "SELECT COUNT(*) FROM app.notes WHERE id = 400"
        )
        .await,
        0
    );

    // A second backup to the same URL, a URL without a backup, a missing namespace.
    node.expect_error(
        &admin,
        &format!("BACKUP NAMESPACE app TO {}", lit(&url)),
        "BACKUP_ALREADY_EXISTS",
    )
    .await;
    let missing = file_url(&backups_dir(&node).join("nothing-here"));
    node.expect_error(
        &admin,
        &format!("RESTORE NAMESPACE app3 FROM {}", lit(&missing)),
        "BACKUP_NOT_FOUND",
    )
    .await;
    node.expect_error(
        &admin,
        &format!("SHOW BACKUP {}", lit(&missing)),
        "BACKUP_NOT_FOUND",
    )
    .await;
    assert!(
        !backups_dir(&node).join("nothing-here").exists(),
        "reading a missing backup creates nothing"
    );
    node.expect_error(
        &admin,
        &format!(
            "BACKUP NAMESPACE ghost TO {}",
            lit(&file_url(&backups_dir(&node).join("ghost")))
        ),
        "NAMESPACE_NOT_FOUND",
    )
    .await;
    for (sql, code) in [
        ("BACKUP NAMESPACE app TO 'relative/dir'", "INVALID_VALUE"),
        ("BACKUP NAMESPACE app TO 'file://relative'", "INVALID_VALUE"),
        (
            "BACKUP NAMESPACE app TO 'file:///tmp/../etc/x'",
            "INVALID_VALUE",
        ),
        (
            "BACKUP NAMESPACE app TO 'http://example.com/x'",
            "INVALID_VALUE",
        ),
        (
            "BACKUP NAMESPACE app TO 'file:///tmp/x' WITH (compression = 'none')",
            "INVALID_OPTION",
        ),
        (
            "BACKUP NAMESPACE app TO 's3://kalam-nowhere/x'",
            "STORAGE_LOCATION_NOT_FOUND",
        ),
        (
            "RESTORE NAMESPACE system FROM 'file:///tmp/x'",
            "INVALID_IDENTIFIER",
        ),
        ("BACKUP NAMESPACE app", "SQL_PARSE_ERROR"),
        (
            "RESTORE NAMESPACE app TO 'file:///tmp/x'",
            "SQL_PARSE_ERROR",
        ),
    ] {
        node.expect_error(&admin, sql, code).await;
    }
    // Refused backups recorded no job; the two restores and the backup did.
    let jobs = node
        .query(
            &admin,
            "SELECT job_type, status FROM system.jobs WHERE job_type IN ('backup', 'restore') ORDER BY start_time",
        )
        .await;
    assert_eq!(
        jobs,
        vec![
            json!({"job_type": "backup", "status": "completed"}),
            json!({"job_type": "restore", "status": "completed"}),
        ],
        "{}",
        pretty(&json!(jobs))
    );
}

#[tokio::test]
async fn users_cannot_back_up_restore_or_read_backups() {
    let node = TestNode::start().await;
    create_fixture(&node, "").await;
    let dir = backups_dir(&node).join("by-admin");
    let url = file_url(&dir);
    run_backup_statement(
        &node,
        &format!("BACKUP NAMESPACE app TO {}", lit(&url)),
        "backup-",
    )
    .await;
    let user = token("alice", false);
    let theirs = file_url(&backups_dir(&node).join("by-user"));
    for sql in [
        format!("BACKUP NAMESPACE app TO {}", lit(&theirs)),
        format!("RESTORE NAMESPACE app9 FROM {}", lit(&url)),
        format!("SHOW BACKUP {}", lit(&url)),
    ] {
        node.expect_error(&user, &sql, "FORBIDDEN").await;
    }
    assert!(
        !backups_dir(&node).join("by-user").exists(),
        "nothing written"
    );
    node.expect_error(
        &admin_token(),
        "SELECT * FROM app9.notes",
        "NAMESPACE_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn a_corrupted_backup_restores_nothing_and_names_the_file() {
    let node = TestNode::start().await;
    create_fixture(&node, "").await;
    let admin = admin_token();
    let before = data_answers(&node, "app").await;
    let base = backups_dir(&node);
    let pristine = base.join("pristine");
    run_backup_statement(
        &node,
        &format!("BACKUP NAMESPACE app TO {}", lit(&file_url(&pristine))),
        "backup-",
    )
    .await;
    drop_fixture(&node, "app").await;

    // Tables are restored in name order (notes, rooms, typing): a bad file of a later table
    // fails the restore after earlier tables were staged, and those must go too.
    let flipped_parquet = base.join("flipped-parquet");
    copy_dir(&pristine, &flipped_parquet);
    let victim = files_under(&flipped_parquet.join("data/rooms"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("rooms has a Parquet file in the backup");
    flip_middle_byte(&victim);

    let flipped_hot = base.join("flipped-hot");
    copy_dir(&pristine, &flipped_hot);
    flip_middle_byte(&flipped_hot.join("data/typing/hot.rows"));

    let missing_file = base.join("missing-file");
    copy_dir(&pristine, &missing_file);
    let removed = files_under(&missing_file.join("data/rooms"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a Parquet file");
    std::fs::remove_file(&removed).expect("removing a backup file");

    // Checksums that match a definition the catalog would not load: its primary key names
    // no column.
    let bad_key = base.join("bad-key");
    copy_dir(&pristine, &bad_key);
    let definition = "catalog/rooms/table.json";
    let mut table: Value = serde_json::from_slice(
        &std::fs::read(bad_key.join(definition)).expect("the rooms definition"),
    )
    .expect("table.json is JSON");
    table["primary_key"] = json!("nosuch");
    rewrite_checked(&bad_key, definition, &serde_json::to_vec(&table).unwrap());

    let truncated = base.join("truncated");
    copy_dir(&pristine, &truncated);
    let hot = truncated.join("data/notes/hot.rows");
    let bytes = std::fs::read(&hot).expect("reading hot.rows");
    std::fs::write(&hot, &bytes[..bytes.len() - 3]).expect("truncating hot.rows");

    for (dir, file) in [
        (&flipped_parquet, rel_path(&flipped_parquet, &victim)),
        (&flipped_hot, "data/typing/hot.rows".to_string()),
        (&missing_file, rel_path(&missing_file, &removed)),
        (&truncated, "data/notes/hot.rows".to_string()),
        (&bad_key, definition.to_string()),
    ] {
        let sql = format!("RESTORE NAMESPACE app FROM {}", lit(&file_url(dir)));
        let err = node.expect_error(&admin, &sql, "BACKUP_CORRUPT").await;
        assert!(
            err["message"].as_str().unwrap_or_default().contains(&file),
            "{sql}: the message names {file}: {err}"
        );
        assert_eq!(err["details"], format!("file: {file}"), "{sql}: {err}");
        // Nothing of the namespace is visible, and nothing it staged is left.
        let namespaces = node.query(&admin, "SHOW NAMESPACES").await;
        assert!(
            namespaces.iter().all(|n| n["name"] != "app"),
            "{sql}: no namespace app after a failed restore: {}",
            pretty(&json!(namespaces))
        );
        node.expect_error(&admin, "SELECT * FROM app.notes", "NAMESPACE_NOT_FOUND")
            .await;
        assert!(
            restored_files(&node).is_empty(),
            "{sql}: the files a failed restore copied are removed: {:?}",
            restored_files(&node)
        );
    }
    let failed = node
        .query(
            &admin,
            "SELECT status, error_message FROM system.jobs WHERE job_type = 'restore' ORDER BY start_time",
        )
        .await;
    assert_eq!(failed.len(), 5, "{}", pretty(&json!(failed)));
    for job in &failed {
        assert_eq!(job["status"], "failed", "{}", pretty(job));
        assert!(
            job["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("backup file")),
            "{}",
            pretty(job)
        );
    }

    // A corrupt manifest is caught by its checksum file.
    let bad_manifest = base.join("bad-manifest");
    copy_dir(&pristine, &bad_manifest);
    flip_middle_byte(&bad_manifest.join("manifest.json"));
    let err = node
        .expect_error(
            &admin,
            &format!("SHOW BACKUP {}", lit(&file_url(&bad_manifest))),
            "BACKUP_CORRUPT",
        )
        .await;
    assert_eq!(err["details"], "file: manifest.json", "{err}");

    // After a restart nothing reappears, and the intact backup restores in full.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    node.expect_error(&admin, "SELECT * FROM app.notes", "NAMESPACE_NOT_FOUND")
        .await;
    run_backup_statement(
        &node,
        &format!("RESTORE NAMESPACE app FROM {}", lit(&file_url(&pristine))),
        "restore-",
    )
    .await;
    assert_same(
        &before,
        &data_answers(&node, "app").await,
        "restored from the intact backup",
    );
}

/// Rows of `sql` (`COUNT(*) AS n, MIN(id) AS lo, MAX(id) AS hi, COUNT(DISTINCT id) AS d`).
async fn prefix_shape(node: &TestNode, token: &str, table: &str) -> (i64, i64, i64, i64) {
    let rows = node
        .query(
            token,
            &format!(
                "SELECT COUNT(*) AS n, COALESCE(MIN(id), 0) AS lo, COALESCE(MAX(id), 0) AS hi, \
                 COUNT(DISTINCT id) AS d FROM {table}"
            ),
        )
        .await;
    let r = &rows[0];
    (
        int(&r["n"], "n"),
        int(&r["lo"], "lo"),
        int(&r["hi"], "hi"),
        int(&r["d"], "d"),
    )
}

#[tokio::test]
async fn a_backup_during_inserts_and_flushes_restores_a_prefix_per_table() {
    const BATCH: i64 = 10;
    let node = TestNode::start_with_options(
        NodeOptions::default().env("KALAMDB_FLUSH_CHECK_INTERVAL_MS", "100"),
    )
    .await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.load (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY ROWS 150",
    )
    .await;
    node.admin("CREATE USER TABLE app.uload (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY ROWS 150")
        .await;
    let dir = backups_dir(&node).join("under-load");
    let url = file_url(&dir);
    let done = AtomicBool::new(false);
    let acked = AtomicI64::new(0);

    // One writer: batch k inserts ids 10k+1..10k+10 into app.load, then the same ids into
    // alice's app.uload; each INSERT is one commit.
    let writer = async {
        let admin = admin_token();
        let alice = token("alice", false);
        let mut batches = 0i64;
        while (!done.load(Ordering::SeqCst) || batches < 80) && batches < 20_000 {
            let from = batches * BATCH + 1;
            let values = values_of((from..from + BATCH).map(|i| format!("({i}, 'v{i}')")));
            node.exec(
                &admin,
                &format!("INSERT INTO app.load (id, v) VALUES {values}"),
            )
            .await;
            node.exec(
                &alice,
                &format!("INSERT INTO app.uload (id, v) VALUES {values}"),
            )
            .await;
            batches += 1;
            acked.store(batches * BATCH, Ordering::SeqCst);
        }
        batches
    };
    let backup = async {
        while acked.load(Ordering::SeqCst) < 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A flush races the backup too.
        let flush_job = start_flush(&node, "app.load").await;
        let before = acked.load(Ordering::SeqCst);
        let row = run_backup_statement(
            &node,
            &format!("BACKUP NAMESPACE app TO {}", lit(&url)),
            "backup-",
        )
        .await;
        let after = acked.load(Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        (before, after, row, flush_job)
    };
    let (batches, (before, after, _row, flush_job)) = tokio::join!(writer, backup);
    assert!(
        batches * BATCH >= after,
        "the writer went on during the backup"
    );
    wait_job(&node, &flush_job).await;

    let shown = node
        .query(&admin_token(), &format!("SHOW BACKUP {}", lit(&url)))
        .await;
    let in_backup = |table: &str| int(&backup_row(&shown, table)["rows"], table);
    let (load, uload) = (in_backup("load"), in_backup("uload"));
    for (table, rows, low) in [("load", load, before), ("uload", uload, before - BATCH)] {
        assert_eq!(rows % BATCH, 0, "{table}: whole commits only ({rows} rows)");
        assert!(
            rows >= low && rows <= after + BATCH,
            "{table}: {rows} rows, between what was acknowledged before ({low}) and after ({after}) the backup"
        );
    }

    run_backup_statement(
        &node,
        &format!("RESTORE NAMESPACE copy FROM {}", lit(&url)),
        "restore-",
    )
    .await;
    let admin = admin_token();
    let alice = token("alice", false);
    assert_eq!(
        prefix_shape(&node, &admin, "copy.load").await,
        (load, i64::from(load > 0), load, load),
        "copy.load holds exactly ids 1..={load}"
    );
    assert_eq!(
        prefix_shape(&node, &alice, "copy.uload").await,
        (uload, i64::from(uload > 0), uload, uload),
        "alice's copy.uload holds exactly ids 1..={uload}"
    );
    assert_eq!(
        node.count(
            &admin,
            "SELECT COUNT(*) FROM copy.load WHERE v = CONCAT('v', CAST(id AS TEXT))"
        )
        .await,
        load,
        "every restored row holds its value"
    );
    assert_eq!(
        node.count(&token("bob", false), "SELECT COUNT(*) FROM copy.uload")
            .await,
        0
    );
    // The original tables kept every acknowledged row.
    let total = batches * BATCH;
    assert_eq!(
        prefix_shape(&node, &admin, "app.load").await,
        (total, 1, total, total)
    );
}

/// A moto server with buckets, and a node whose credential set `moto` points at it.
async fn node_with_s3(buckets: &[&str]) -> (TestNode, S3Server) {
    let s3 = S3Server::start().await;
    for bucket in buckets {
        s3.create_bucket(bucket).await;
    }
    let dir = NodeDir::new();
    write_credentials(&dir.data_dir().join("credentials"), "moto", &s3.endpoint());
    let node = TestNode::start_in(&dir).await;
    (node, s3)
}

fn s3_location_sql(name: &str, path: &str) -> String {
    format!(
        "INSERT INTO system.storage_locations (location_name, location_type, path, credentials_ref) \
         VALUES ({}, 's3', {}, 'moto')",
        lit(name),
        lit(path)
    )
}

#[tokio::test]
async fn backups_go_to_and_come_from_s3() {
    let (node, _s3) = node_with_s3(&["kalam-bk", "kalam-other"]).await;
    let admin = admin_token();
    node.admin(&s3_location_sql("s3data", "s3://kalam-bk/data/"))
        .await;
    node.admin(&s3_location_sql("s3bk", "s3://kalam-bk/backups/"))
        .await;
    // notes' Parquet files live on S3 too: the restore copies them S3 to S3.
    create_fixture(&node, "LOCATION REFERENCE 's3data'").await;
    let before = data_answers(&node, "app").await;
    let catalog_before = catalog_answers(&node).await;
    let (notes, ..) = fixture_counts(&node).await;

    // Covered by the registered location `s3bk`: its credentials are used.
    let url = "s3://kalam-bk/backups/app-1";
    run_backup_statement(
        &node,
        &format!("BACKUP NAMESPACE app TO {}", lit(url)),
        "backup-",
    )
    .await;
    let shown = node
        .query(&admin, &format!("SHOW BACKUP {}", lit(url)))
        .await;
    assert_eq!(shown.len(), 3);
    assert_eq!(int(&backup_row(&shown, "notes")["rows"], "rows"), notes);
    assert_eq!(
        backup_row(&shown, "notes")["schema_versions"],
        json!([1, 2, 3, 4])
    );
    node.expect_error(
        &admin,
        &format!("BACKUP NAMESPACE app TO {}", lit(url)),
        "BACKUP_ALREADY_EXISTS",
    )
    .await;

    // Not covered by any location: it needs a credential set named in the statement.
    let other = "s3://kalam-other/b1";
    node.expect_error(
        &admin,
        &format!("BACKUP NAMESPACE app TO {}", lit(other)),
        "STORAGE_LOCATION_NOT_FOUND",
    )
    .await;
    run_backup_statement(
        &node,
        &format!(
            "BACKUP NAMESPACE app TO {} WITH (credentials_ref = 'moto')",
            lit(other)
        ),
        "backup-",
    )
    .await;

    drop_fixture(&node, "app").await;
    run_backup_statement(
        &node,
        &format!("RESTORE NAMESPACE app FROM {}", lit(url)),
        "restore-",
    )
    .await;
    assert_same(
        &before,
        &data_answers(&node, "app").await,
        "restored from S3",
    );
    assert_same(
        &catalog_before,
        &catalog_answers(&node).await,
        "restored from S3",
    );
    run_backup_statement(
        &node,
        &format!(
            "RESTORE NAMESPACE app2 FROM {} WITH (credentials_ref = 'moto')",
            lit(other)
        ),
        "restore-",
    )
    .await;
    assert_same(
        &before,
        &data_answers(&node, "app2").await,
        "app2 restored from S3",
    );
    assert!(
        !node.stderr().contains(S3_SECRET_ACCESS_KEY),
        "the node's log holds no secret"
    );
}
