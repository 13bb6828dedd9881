//! DROP TABLE and DROP NAMESPACE against the cold tier (API.md §4, docs/sql.md "DROP TABLE",
//! docs/adr/0013-drop-table-purge.md): a dropped USER or SHARED table is gone for SQL at
//! once, and a `cleanup` job in `system.jobs` removes every Parquet file of every partition
//! from its location (the built-in filesystem one, or S3 through a moto server), reporting
//! the files and bytes it removed; a purge that fails because S3 is unreachable is a failed
//! job, retried until it removes everything; a node killed between the commit point and the
//! end of the purge finishes it after a restart; the table name can be created again, empty;
//! DROP NAMESPACE removes the namespace's directories but never a file it does not own.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::*;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// A purge of a reachable location, or a resumed one, completes within this.
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);
/// A purge against a dead S3 endpoint may go through the S3 client's own retries first.
const FAILED_PURGE_TIMEOUT: Duration = Duration::from_secs(150);
/// The backoff of the retries may have grown while S3 was away.
const RETRY_TIMEOUT: Duration = Duration::from_secs(180);
/// A failpoint aborts the node "shortly" after DROP TABLE.
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A USER table whose `owner` column holds the user id that wrote the row.
fn notes_ddl(table: &str, clause: &str) -> String {
    format!(
        "CREATE USER TABLE app.{table} (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, body TEXT) \
         {clause}"
    )
}

fn board_ddl(table: &str, clause: &str) -> String {
    format!("CREATE SHARED TABLE app.{table} (id BIGINT PRIMARY KEY, title TEXT) {clause}")
}

/// Flushed only by FLUSH TABLE.
const MANUAL: &str = "FLUSH POLICY ROWS 1000000";

fn insert_notes(table: &str, user: &str, ids: RangeInclusive<i64>) -> String {
    let values: Vec<String> = ids
        .map(|i| {
            format!(
                "({i}, {}, {})",
                lit(user),
                lit(&format!("note {i} of {user}"))
            )
        })
        .collect();
    format!(
        "INSERT INTO app.{table} (id, owner, body) VALUES {}",
        values.join(", ")
    )
}

fn insert_board(table: &str, ids: RangeInclusive<i64>) -> String {
    let values: Vec<String> = ids
        .map(|i| format!("({i}, {})", lit(&format!("topic {i}"))))
        .collect();
    format!(
        "INSERT INTO app.{table} (id, title) VALUES {}",
        values.join(", ")
    )
}

/// `INSERT INTO system.storage_locations` of an S3 location.
fn s3_location_sql(name: &str, bucket_path: &str, credentials: &str) -> String {
    format!(
        "INSERT INTO system.storage_locations (location_name, location_type, path, credentials_ref) \
         VALUES ({}, 's3', {}, {})",
        lit(name),
        lit(bucket_path),
        lit(credentials)
    )
}

fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .len()
        })
        .sum()
}

fn object_bytes(objects: &[(String, u64)]) -> u64 {
    objects.iter().map(|(_, size)| size).sum()
}

/// A JSON cell: nested JSON as the API encodes it, or JSON text.
fn json_cell(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

/// The `key=value` parameters of a job row.
fn parameters(job: &Value) -> Vec<String> {
    json_cell(&job["parameters"])
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("parameters is a JSON list: {}", pretty(job)))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn attempt_of(job: &Value) -> u64 {
    parameters(job)
        .iter()
        .find_map(|p| p.strip_prefix("attempt=").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no attempt=N parameter: {}", pretty(job)))
}

/// The job id DROP TABLE names in its message (`... removed by job cleanup-...`).
pub(crate) fn purge_job(body: &Value, context: &str) -> String {
    assert_ddl(body, context);
    let message = body["results"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no message: {}", pretty(body)));
    let id = message.rsplit(' ').next().unwrap_or_default();
    assert!(
        id.starts_with("cleanup-"),
        "{context}: the message names the cleanup job that removes the files: {message:?}"
    );
    id.to_string()
}

/// The cleanup jobs of `ns.table`, oldest first (admin view).
async fn cleanup_jobs(node: &TestNode, ns: &str, table: &str) -> Vec<Value> {
    node.query(
        &admin_token(),
        &format!(
            "SELECT * FROM system.jobs WHERE job_type = 'cleanup' AND namespace = {} AND \
             table_name = {} ORDER BY start_time, job_id",
            lit(ns),
            lit(table)
        ),
    )
    .await
}

/// Waits for a cleanup job of `ns.table` with `status`; returns the first such.
async fn wait_cleanup(
    node: &TestNode,
    ns: &str,
    table: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = cleanup_jobs(node, ns, table).await;
        if let Some(job) = jobs.iter().find(|j| j["status"] == status) {
            return job.clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "no {status} cleanup job of {ns}.{table} within {timeout:?}; jobs: {}\n--- node stderr ---\n{}",
                pretty(&json!(jobs)),
                tail(&node.stderr(), 8000)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A completed purge of `ns.table` that removed `files` files of `bytes` bytes.
fn assert_purged(job: &Value, ns: &str, table: &str, files: u64, bytes: u64) {
    let context = format!("the purge of {ns}.{table}");
    assert_eq!(job["status"], "completed", "{context}: {}", pretty(job));
    assert_eq!(job["job_type"], "cleanup", "{context}: {}", pretty(job));
    assert_eq!(job["namespace"], ns, "{context}: {}", pretty(job));
    assert_eq!(job["table_name"], table, "{context}: {}", pretty(job));
    assert!(
        job["error_message"].is_null(),
        "{context}: a completed job has no error: {}",
        pretty(job)
    );
    assert!(
        parameters(job).iter().any(|p| p == "target=dropped_table"),
        "{context}: the parameters say what is cleaned up: {}",
        pretty(job)
    );
    assert!(
        job["end_time"].is_string(),
        "{context}: a finished job has an end_time: {}",
        pretty(job)
    );
    let result = json_cell(&job["result"]);
    assert_eq!(
        result["files"].as_u64(),
        Some(files),
        "{context}: result.files: {}",
        pretty(job)
    );
    assert_eq!(
        result["bytes"].as_u64(),
        Some(bytes),
        "{context}: result.bytes: {}",
        pretty(job)
    );
    assert!(
        job["trace"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "{context}: the job traces its steps: {}",
        pretty(job)
    );
}

async fn table_names(node: &TestNode, ns: &str) -> Vec<String> {
    strings(
        &node
            .query(&admin_token(), &format!("SHOW TABLES IN {ns}"))
            .await,
        "table_name",
    )
}

async fn count(node: &TestNode, user: &str, table: &str) -> i64 {
    node.count(
        &token(user, false),
        &format!("SELECT COUNT(*) FROM {table}"),
    )
    .await
}

/// `pending_purges.json` of the catalog holds no record.
fn assert_no_pending_purge(data_dir: &Path, context: &str) {
    let path = data_dir.join("catalog/pending_purges.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let records: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{context}: {} is not JSON: {e}", path.display()));
    assert_eq!(
        records,
        json!([]),
        "{context}: no purge is left pending in the catalog"
    );
}

// ---------------------------------------------------------------------------------------------
// The built-in filesystem location
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drop_table_removes_every_file_on_the_local_location() {
    let node = TestNode::start().await;
    let storage = node.data_dir().join("storage");
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", MANUAL)).await;
    node.admin(&board_ddl("board", MANUAL)).await;
    node.admin(&notes_ddl("keep", MANUAL)).await;
    node.admin(&board_ddl("idle", MANUAL)).await;

    // Two flushes of three users: two files in each user's directory.
    for ids in [1..=5i64, 6..=12] {
        for user in USERS {
            node.exec(
                &token(user, false),
                &insert_notes("notes", user, ids.clone()),
            )
            .await;
        }
        flush(&node, "app.notes").await;
    }
    node.admin(&insert_board("board", 1..=20)).await;
    flush(&node, "app.board").await;
    node.exec(
        &token("alice", false),
        &insert_notes("keep", "alice", 1..=4),
    )
    .await;
    flush(&node, "app.keep").await;

    let notes_dir = storage.join("app/notes");
    let notes_files = files_under(&notes_dir);
    assert_eq!(
        notes_files.len(),
        6,
        "two Parquet files per user: {notes_files:?}"
    );
    for user in USERS {
        assert_eq!(
            files_under(&notes_dir.join(user)).len(),
            2,
            "{user}'s directory: {notes_files:?}"
        );
    }
    assert!(
        notes_files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{notes_files:?}"
    );
    let notes_bytes = total_size(&notes_files);
    let board_files = files_under(&storage.join("app/board"));
    assert!(!board_files.is_empty(), "app.board was flushed");
    let board_bytes = total_size(&board_files);
    let keep_files = files_under(&storage.join("app/keep"));
    assert_eq!(keep_files.len(), 1, "{keep_files:?}");

    // A USER table: gone for SQL at once, then every file of every user is removed.
    let body = node.admin("DROP TABLE app.notes").await;
    let job_id = purge_job(&body, "DROP TABLE app.notes");
    node.expect_error(
        &token("alice", false),
        "SELECT * FROM app.notes",
        "TABLE_NOT_FOUND",
    )
    .await;
    assert!(!table_names(&node, "app").await.contains(&"notes".into()));
    let job = wait_job(&node, &job_id).await;
    assert_purged(&job, "app", "notes", 6, notes_bytes);
    assert_eq!(
        parameters(&job)
            .iter()
            .filter(|p| *p == "trigger=drop" || *p == "attempt=1")
            .count(),
        2,
        "{}",
        pretty(&job)
    );
    assert_eq!(
        job["user_id"], ADMIN_USER,
        "the job belongs to the admin who dropped the table"
    );
    assert!(
        !notes_dir.exists(),
        "nothing of app.notes is left, not even its directories: {:?}",
        files_under(&storage)
    );
    assert_eq!(
        files_under(&storage.join("app/keep")),
        keep_files,
        "another table's files stay"
    );
    assert_eq!(count(&node, "alice", "app.keep").await, 4);

    // A SHARED table.
    let body = node.admin("DROP SHARED TABLE app.board").await;
    let job = wait_job(&node, &purge_job(&body, "DROP SHARED TABLE app.board")).await;
    assert_purged(&job, "app", "board", board_files.len() as u64, board_bytes);
    assert!(!storage.join("app/board").exists());

    // A table that never flushed: the purge has nothing to remove.
    let body = node.admin("DROP TABLE app.idle").await;
    let job = wait_job(&node, &purge_job(&body, "DROP TABLE app.idle")).await;
    assert_purged(&job, "app", "idle", 0, 0);
    assert_no_pending_purge(&node.data_dir(), "after three purges");

    // The name can be used again: the new table is empty and writes files of its own.
    node.admin(&notes_ddl("notes", MANUAL)).await;
    for user in USERS {
        assert_eq!(
            count(&node, user, "app.notes").await,
            0,
            "{user}: a re-created table starts empty"
        );
    }
    node.exec(&token("bob", false), &insert_notes("notes", "bob", 1..=3))
        .await;
    flush(&node, "app.notes").await;
    assert_eq!(files_under(&notes_dir).len(), 1);
    assert_eq!(count(&node, "bob", "app.notes").await, 3);
    assert_eq!(count(&node, "alice", "app.notes").await, 0);

    // A restart purges nothing again, and the new table keeps its rows and file.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_eq!(count(&node, "bob", "app.notes").await, 3);
    assert_eq!(files_under(&notes_dir).len(), 1);
    let jobs = cleanup_jobs(&node, "app", "notes").await;
    assert_eq!(
        jobs.len(),
        1,
        "one purge of app.notes, none at the restart: {}",
        pretty(&json!(jobs))
    );
}

/// A table created again under a dropped table's name writes the same file path (its commit
/// sequences start again), here of the same size, after a query made the node cache the old
/// file's footer. Reads of the new table must use the new footer: with the old one, its key
/// statistics (ids 1-3) would prune the row group holding id 8. The files are scanned, not
/// read whole into memory (which needs no footer cache), as larger partitions are.
#[tokio::test]
async fn a_table_created_again_never_reads_the_cached_footer_of_the_dropped_one() {
    let metrics = read_a_table_created_again(
        NodeOptions::default().env("KALAMDB_COLD_READ_IN_MEMORY_BYTES", "0"),
    )
    .await;
    // Both footers were read through the cache, each under its own table.
    assert!(
        metrics
            .lines()
            .any(|l| l == "kalamdb_cold_metadata_cache_files 2"),
        "{metrics}"
    );
}

/// The same, with the small files read whole (the default): the node keeps the dropped
/// table's file decoded, and the new table, whose file has the same path and size, must
/// read its own rows. The second read of each file comes from the cache.
#[tokio::test]
async fn a_table_created_again_never_reads_the_cached_rows_of_the_dropped_one() {
    let metrics = read_a_table_created_again(NodeOptions::default()).await;
    for line in [
        "kalamdb_cold_decoded_cache_files 2",
        "kalamdb_cold_decoded_cache_lookups_total{result=\"miss\"} 2",
        "kalamdb_cold_decoded_cache_lookups_total{result=\"hit\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// Creates `app.notes`, writes ids 1-3 of alice, flushes and reads one of them twice; drops
/// the table, creates it again and does the same with ids 7-9, whose file has the first
/// one's path and size. Returns the node's `/metrics` after.
async fn read_a_table_created_again(options: NodeOptions) -> String {
    let node = TestNode::start_with_options(options).await;
    let dir = node.data_dir().join("storage/app/notes/alice");
    node.admin("CREATE NAMESPACE app").await;
    let alice = token("alice", false);
    let mut written = Vec::new();
    for (round, ids) in [1..=3i64, 7..=9].into_iter().enumerate() {
        node.admin(&notes_ddl("notes", MANUAL)).await;
        node.exec(&alice, &insert_notes("notes", "alice", ids.clone()))
            .await;
        flush(&node, "app.notes").await;
        let files = files_under(&dir);
        assert_eq!(files.len(), 1, "one file of alice: {files:?}");
        written.push((files[0].clone(), total_size(&files)));
        let id = ids.start() + 1;
        for _ in 0..2 {
            let rows = node
                .query(
                    &alice,
                    &format!("SELECT id, body FROM app.notes WHERE id = {id}"),
                )
                .await;
            assert_eq!(
                rows,
                vec![json!({"id": id, "body": format!("note {id} of alice")})],
                "round {round}: the point read of id {id}"
            );
        }
        if round == 0 {
            let body = node.admin("DROP TABLE app.notes").await;
            wait_job(&node, &purge_job(&body, "DROP TABLE app.notes")).await;
        }
    }
    assert_eq!(
        written[0], written[1],
        "the same path and size, which a cache keyed by path could not tell apart"
    );
    node.get("/metrics").await.2
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drop_table_removes_every_object_on_s3() {
    let s3 = S3Server::start().await;
    s3.create_bucket("dropit").await;
    let dir = NodeDir::new();
    write_credentials(&dir.data_dir().join("credentials"), "moto", &s3.endpoint());
    let node = TestNode::start_in(&dir).await;
    node.admin(&s3_location_sql("s3loc", "s3://dropit/kalam/", "moto"))
        .await;
    node.admin("CREATE NAMESPACE app").await;
    let on_s3 = format!("LOCATION REFERENCE 's3loc' {MANUAL}");
    node.admin(&notes_ddl("notes", &on_s3)).await;
    node.admin(&board_ddl("board", &on_s3)).await;
    node.admin(&notes_ddl("keep", &on_s3)).await;

    for ids in [1..=5i64, 6..=9] {
        for user in USERS {
            node.exec(
                &token(user, false),
                &insert_notes("notes", user, ids.clone()),
            )
            .await;
        }
        flush(&node, "app.notes").await;
    }
    node.admin(&insert_board("board", 1..=10)).await;
    flush(&node, "app.board").await;
    node.exec(&token("bob", false), &insert_notes("keep", "bob", 1..=2))
        .await;
    flush(&node, "app.keep").await;

    let notes = s3.list_objects("dropit", "kalam/app/notes/").await;
    assert_eq!(notes.len(), 6, "two objects per user: {notes:?}");
    for user in USERS {
        let prefix = format!("kalam/app/notes/{user}/");
        assert_eq!(
            notes.iter().filter(|(k, _)| k.starts_with(&prefix)).count(),
            2,
            "{user}: {notes:?}"
        );
    }
    let board = s3.list_objects("dropit", "kalam/app/board/").await;
    assert!(!board.is_empty());
    let keep = s3.list_objects("dropit", "kalam/app/keep/").await;
    assert_eq!(keep.len(), 1, "{keep:?}");

    let body = node.admin("DROP USER TABLE app.notes").await;
    let job = wait_job(&node, &purge_job(&body, "DROP USER TABLE app.notes")).await;
    assert_purged(&job, "app", "notes", 6, object_bytes(&notes));
    let left = s3.list_objects("dropit", "kalam/app/notes/").await;
    assert!(left.is_empty(), "no object of app.notes is left: {left:?}");
    assert_eq!(
        s3.list_objects("dropit", "kalam/app/keep/").await,
        keep,
        "another table's objects stay"
    );

    let body = node.admin("DROP TABLE app.board").await;
    let job = wait_job(&node, &purge_job(&body, "DROP TABLE app.board")).await;
    assert_purged(
        &job,
        "app",
        "board",
        board.len() as u64,
        object_bytes(&board),
    );
    let left = s3.list_objects("dropit", "kalam/app/board/").await;
    assert!(left.is_empty(), "no object of app.board is left: {left:?}");
    assert_no_pending_purge(&node.data_dir(), "after the S3 purges");

    // The location is no longer used by the dropped tables.
    let rows = node
        .query(
            &admin_token(),
            "SELECT usage_count FROM system.storage_locations WHERE location_name = 's3loc'",
        )
        .await;
    assert_eq!(single(&rows, "usage_count of s3loc"), json!(1));

    node.admin(&notes_ddl("notes", &on_s3)).await;
    for user in USERS {
        assert_eq!(
            count(&node, user, "app.notes").await,
            0,
            "{user}: a re-created table starts empty"
        );
    }
    node.exec(
        &token("carol", false),
        &insert_notes("notes", "carol", 1..=2),
    )
    .await;
    flush(&node, "app.notes").await;
    let again = s3.list_objects("dropit", "kalam/app/notes/").await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(
        again[0].0.starts_with("kalam/app/notes/carol/"),
        "{again:?}"
    );
    assert_eq!(count(&node, "carol", "app.notes").await, 2);
}

/// S3 goes away (a TCP proxy in front of moto is cut, so the objects survive) after the
/// files were flushed and before DROP TABLE: the table is gone for SQL at once, the purge
/// job fails with its error and removes nothing, a CREATE of the same name on the same
/// location is refused while the purge cannot finish; once S3 is back, a retry nobody asked
/// for removes every object and the name can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_fails_the_purge_and_a_retry_removes_everything() {
    let s3 = S3Server::start().await;
    s3.create_bucket("outage").await;
    let mut proxy = TcpProxy::start(s3.port()).await;
    let dir = NodeDir::new();
    write_credentials(
        &dir.data_dir().join("credentials"),
        "moto",
        &proxy.endpoint(),
    );
    let opts = NodeOptions::default()
        .env("KALAMDB_FLUSH_RETRY_BASE_MS", "200")
        .env("KALAMDB_FLUSH_CHECK_INTERVAL_MS", "100");
    let node = TestNode::start_with(&dir, opts).await;
    let admin = admin_token();
    node.admin(&s3_location_sql("s3out", "s3://outage/kalam/", "moto"))
        .await;
    node.admin("CREATE NAMESPACE app").await;
    let on_s3 = format!("LOCATION REFERENCE 's3out' {MANUAL}");
    node.admin(&notes_ddl("notes", &on_s3)).await;
    for user in USERS {
        node.exec(&token(user, false), &insert_notes("notes", user, 1..=20))
            .await;
    }
    flush(&node, "app.notes").await;
    let before = s3.list_objects("outage", "kalam/app/notes/").await;
    assert_eq!(before.len(), 3, "one object per user: {before:?}");

    proxy.cut().await;
    let body = node.admin("DROP TABLE app.notes").await;
    let first = purge_job(&body, "DROP TABLE app.notes with S3 down");
    node.expect_error(
        &token("alice", false),
        "SELECT * FROM app.notes",
        "TABLE_NOT_FOUND",
    )
    .await;
    assert!(table_names(&node, "app").await.is_empty());

    let failed = wait_job_within(&node, &first, FAILED_PURGE_TIMEOUT).await;
    assert_eq!(failed["status"], "failed", "{}", pretty(&failed));
    assert_eq!(failed["job_type"], "cleanup");
    assert!(
        failed["error_message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "a failed purge says why: {}",
        pretty(&failed)
    );
    assert_eq!(
        json_cell(&failed["result"])["files"],
        json!(0),
        "{}",
        pretty(&failed)
    );
    assert!(
        !failed.to_string().contains(S3_SECRET_ACCESS_KEY),
        "the failed job holds no secret"
    );
    assert_eq!(
        s3.list_objects("outage", "kalam/app/notes/").await,
        before,
        "nothing is removed while S3 is unreachable"
    );

    // The dropped table's files would share paths with a new one: it must wait.
    let error = node
        .expect_error(&admin, &notes_ddl("notes", &on_s3), "LOCATION_UNREACHABLE")
        .await;
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("app.notes")),
        "the error names the dropped table: {error}"
    );
    assert!(table_names(&node, "app").await.is_empty());

    proxy.resume().await;
    // No statement from here on: the node retries by itself.
    let done = wait_cleanup(&node, "app", "notes", "completed", RETRY_TIMEOUT).await;
    assert_purged(&done, "app", "notes", 3, object_bytes(&before));
    assert!(attempt_of(&done) >= 2, "a retry: {}", pretty(&done));
    let left = s3.list_objects("outage", "kalam/app/notes/").await;
    assert!(left.is_empty(), "the retry removes every object: {left:?}");
    let jobs = cleanup_jobs(&node, "app", "notes").await;
    assert!(
        jobs.iter().all(|j| j["status"] != "running"),
        "{}",
        pretty(&json!(jobs))
    );
    assert_eq!(
        jobs.iter().filter(|j| j["status"] == "completed").count(),
        1,
        "no attempt after the one that completed: {}",
        pretty(&json!(jobs))
    );
    assert_no_pending_purge(&node.data_dir(), "after the retry");

    node.admin(&notes_ddl("notes", &on_s3)).await;
    assert_eq!(count(&node, "alice", "app.notes").await, 0);
    assert!(
        !node.stderr().contains(S3_SECRET_ACCESS_KEY),
        "the node's log holds no secret"
    );
}

// ---------------------------------------------------------------------------------------------
// Crashes between the commit point and the end of the purge
// ---------------------------------------------------------------------------------------------

/// A USER table of three users flushed to the built-in location; DROP TABLE with the
/// failpoint `failpoint` aborts the node; after a restart without failpoints the table stays
/// dropped, the purge resumes by itself and removes every file (`resumed_files` of them are
/// left for the resumed job), and the name can be used again.
async fn crash_during_drop(failpoint: &str, resumed_files: u64) {
    let dir = NodeDir::new();
    let node = TestNode::start_in(&dir).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", MANUAL)).await;
    node.admin(&board_ddl("other", MANUAL)).await;
    for user in USERS {
        node.exec(&token(user, false), &insert_notes("notes", user, 1..=10))
            .await;
    }
    node.admin(&insert_board("other", 1..=3)).await;
    flush(&node, "app.notes").await;
    flush(&node, "app.other").await;
    let storage = node.data_dir().join("storage");
    let notes_dir = storage.join("app/notes");
    let files = files_under(&notes_dir);
    assert_eq!(files.len(), 3, "one file per user: {files:?}");
    let bytes = total_size(&files);
    let other_files = files_under(&storage.join("app/other"));
    let dir = node.stop().await;

    let opts = NodeOptions::default().env("FAILPOINTS", &format!("{failpoint}=return"));
    let node = TestNode::start_with(&dir, opts).await;
    // The answer may come before the abort, or never.
    let _ = node
        .try_sql(
            &admin_token(),
            "DROP TABLE app.notes",
            Duration::from_secs(30),
        )
        .await;
    let dir = node.wait_exit(CRASH_TIMEOUT).await;

    let node = TestNode::start_in(&dir).await;
    let when = format!("after a crash at {failpoint}");
    assert_eq!(
        table_names(&node, "app").await,
        ["other"],
        "{when}: the table stays dropped"
    );
    node.expect_error(
        &token("alice", false),
        "SELECT * FROM app.notes",
        "TABLE_NOT_FOUND",
    )
    .await;
    let done = wait_cleanup(&node, "app", "notes", "completed", PURGE_TIMEOUT).await;
    let resumed_bytes = if resumed_files == 0 { 0 } else { bytes };
    assert_purged(&done, "app", "notes", resumed_files, resumed_bytes);
    assert!(
        parameters(&done).iter().any(|p| p == "trigger=restart"),
        "{when}: the purge resumed at start-up: {}",
        pretty(&done)
    );
    assert!(
        !notes_dir.exists(),
        "{when}: no file of app.notes is left: {:?}",
        files_under(&notes_dir)
    );
    assert_eq!(
        files_under(&storage.join("app/other")),
        other_files,
        "{when}: another table's files stay"
    );
    let jobs = cleanup_jobs(&node, "app", "notes").await;
    assert!(
        jobs.iter().all(|j| j["status"] != "running"),
        "{when}: no job is left running: {}",
        pretty(&json!(jobs))
    );
    if failpoint != "drop-after-commit" {
        // The aborted attempt had started its job: the restart marks it failed.
        assert!(
            jobs.iter().any(|j| j["status"] == "failed"),
            "{when}: the interrupted job is failed: {}",
            pretty(&json!(jobs))
        );
    }
    assert_no_pending_purge(&node.data_dir(), &when);
    assert_eq!(count(&node, "alice", "app.other").await, 3);

    node.admin(&notes_ddl("notes", MANUAL)).await;
    for user in USERS {
        assert_eq!(
            count(&node, user, "app.notes").await,
            0,
            "{when}: {user}: a re-created table starts empty"
        );
    }
    // And another restart does not purge again.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    let jobs = cleanup_jobs(&node, "app", "notes").await;
    assert_eq!(
        jobs.iter().filter(|j| j["status"] == "completed").count(),
        1,
        "{when}: {}",
        pretty(&json!(jobs))
    );
}

/// After the catalog's commit point, before the column family is dropped and the job starts.
#[tokio::test]
async fn crash_after_the_drop_commit_point() {
    crash_during_drop("drop-after-commit", 3).await;
}

/// The purge job started and listed the files, none deleted yet.
#[tokio::test]
async fn crash_before_the_purge_deletes() {
    crash_during_drop("purge-before-delete", 3).await;
}

/// Every file and manifest is gone, but the catalog still records the purge.
#[tokio::test]
async fn crash_after_the_purge_deleted_the_files() {
    crash_during_drop("purge-after-batch", 0).await;
}

// ---------------------------------------------------------------------------------------------
// DROP NAMESPACE
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drop_namespace_removes_its_directories_but_no_foreign_file() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let storage = node.data_dir().join("storage");
    let catalog = node.data_dir().join("catalog");
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE NAMESPACE other").await;
    node.admin(&notes_ddl("notes", MANUAL)).await;
    node.admin(&format!(
        "CREATE SHARED TABLE other.t (id BIGINT PRIMARY KEY) {MANUAL}"
    ))
    .await;
    node.exec(
        &token("alice", false),
        &insert_notes("notes", "alice", 1..=3),
    )
    .await;
    node.admin("INSERT INTO other.t (id) VALUES (1), (2)").await;
    flush(&node, "app.notes").await;
    flush(&node, "other.t").await;
    assert_eq!(files_under(&storage.join("app/notes")).len(), 1);
    assert_eq!(files_under(&storage.join("other/t")).len(), 1);
    assert!(catalog.join("app").is_dir() && catalog.join("other").is_dir());

    // Empty directories nobody cleaned up (by hand, or left by a crash) hold no file.
    std::fs::create_dir_all(storage.join("app/stale/empty")).expect("creating a stale dir");
    // A file the node did not write: DROP NAMESPACE never deletes it.
    let foreign = storage.join("other/mine/notes.txt");
    std::fs::create_dir_all(storage.join("other/mine")).expect("creating a foreign dir");
    std::fs::write(&foreign, "not a KalamDB file").expect("writing a foreign file");

    let body = node.admin("DROP TABLE app.notes").await;
    wait_job(&node, &purge_job(&body, "DROP TABLE app.notes")).await;
    assert!(!storage.join("app/notes").exists());
    let body = node.admin("DROP NAMESPACE app").await;
    assert_ddl(&body, "DROP NAMESPACE app");
    assert!(
        !storage.join("app").exists(),
        "the namespace's storage directory is gone: {:?}",
        files_under(&storage)
    );
    assert!(!catalog.join("app").exists(), "its catalog directory too");

    let body = node.admin("DROP TABLE other.t").await;
    wait_job(&node, &purge_job(&body, "DROP TABLE other.t")).await;
    node.admin("DROP NAMESPACE other").await;
    assert!(!catalog.join("other").exists());
    assert!(!storage.join("other/t").exists());
    assert_eq!(
        std::fs::read_to_string(&foreign).expect("the foreign file is kept"),
        "not a KalamDB file"
    );
    assert_eq!(files_under(&storage), [foreign.clone()]);

    let names = strings(&node.query(&admin, "SHOW NAMESPACES").await, "name");
    assert!(
        !names.iter().any(|n| n == "app" || n == "other"),
        "{names:?}"
    );
    // Both names can be used again, empty.
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", MANUAL)).await;
    assert_eq!(count(&node, "alice", "app.notes").await, 0);
}
