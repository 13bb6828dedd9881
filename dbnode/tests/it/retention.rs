//! Deleted-row retention (API.md §4 `WITH (deleted_retention = ...)`,
//! `docs/adr/0014-deleted-row-retention.md`): the scheduled `cleanup` job removes exactly the
//! soft-deleted rows whose `_updated` is older than now - retention, from the hot tier and
//! from every Parquet file (read back with pyarrow), in USER tables (per-user partitions) and
//! SHARED tables, while every other answer stays the same; `'off'` keeps them; `system.jobs`
//! reports rows removed and bytes freed; a crash between the compaction steps loses nothing
//! and brings nothing back.
//!
//! The job runs on the node's schedule (`cleanup_interval`, first pass at start-up). Tests
//! that need one pass at a known moment use an interval of an hour and restart the node; the
//! others use a short interval. `cleanup_file_grace = 0s` makes a job delete the files it
//! replaced at once, so pyarrow sees exactly the files the manifests name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::*;

/// The retention of the tables of the cutoff test: longer than a restart of the node.
const RETENTION: Duration = Duration::from_secs(12);
/// How long a cleanup job may take to appear and finish.
const JOB_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A node whose cleanup passes run every `interval` and delete replaced files at once.
fn cleanup_opts(interval: &str) -> NodeOptions {
    NodeOptions::default()
        .env("KALAMDB_CLEANUP_INTERVAL", interval)
        .env("KALAMDB_CLEANUP_FILE_GRACE", "0s")
}

fn table_ddl(kind: &str, table: &str, with: &str) -> String {
    format!(
        "CREATE {kind} TABLE app.{table} (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, body TEXT) \
         FLUSH POLICY ROWS 1000000 {with}"
    )
}

fn insert_sql(table: &str, owner: &str, ids: std::ops::RangeInclusive<i64>, tag: &str) -> String {
    let values: Vec<String> = ids
        .map(|i| format!("({i}, {}, {})", lit(owner), lit(&format!("{tag} {i}"))))
        .collect();
    format!(
        "INSERT INTO {table} (id, owner, body) VALUES {}",
        values.join(", ")
    )
}

fn storage_dir(node: &TestNode) -> PathBuf {
    node.data_dir().join("storage")
}

/// pyarrow's description of every Parquet file under `dir`.
fn parquet_files(dir: &Path) -> Vec<Value> {
    let doc = parquet_check(&["local", dir.to_str().expect("a UTF-8 path")]);
    doc["files"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("parquet_check printed no files array: {}", pretty(&doc)))
}

/// Every row of every file: `(id, _deleted)`.
fn file_rows(files: &[Value]) -> Vec<(i64, bool)> {
    files
        .iter()
        .flat_map(|f| f["data"].as_array().cloned().unwrap_or_default())
        .map(|row| {
            let id = row["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("a Parquet row without an integer id: {row}"));
            let deleted = row["_deleted"]
                .as_bool()
                .unwrap_or_else(|| panic!("a Parquet row without a boolean _deleted: {row}"));
            (id, deleted)
        })
        .collect()
}

fn total_size(files: &[Value]) -> i64 {
    files
        .iter()
        .map(|f| f["size"].as_i64().expect("size"))
        .sum()
}

/// A JSON cell of `system.jobs`: nested JSON, or JSON text.
fn json_cell(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

/// `result.<key>` of a job as an integer.
fn result_int(job: &Value, key: &str) -> i64 {
    let result = json_cell(&job["result"]);
    result[key].as_i64().unwrap_or_else(|| {
        panic!(
            "system.jobs.result.{key} is an integer: {}",
            pretty(&result)
        )
    })
}

/// The cleanup jobs of `app.<table>`, oldest first.
async fn cleanup_jobs(node: &TestNode, table: &str) -> Vec<Value> {
    node.query(
        &admin_token(),
        &format!(
            "SELECT * FROM system.jobs WHERE job_type = 'cleanup' AND namespace = 'app' \
             AND table_name = {} ORDER BY job_id",
            lit(table)
        ),
    )
    .await
}

/// Waits until `app.<table>` has more than `seen` cleanup jobs and none is running; returns
/// the new ones.
async fn wait_new_cleanups(node: &TestNode, table: &str, seen: usize) -> Vec<Value> {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let jobs = cleanup_jobs(node, table).await;
        if jobs.len() > seen && jobs.iter().all(|j| j["status"] != "running") {
            return jobs[seen..].to_vec();
        }
        if Instant::now() >= deadline {
            panic!(
                "no finished cleanup job of app.{table} within {JOB_WAIT:?}: {}\n--- node stderr ---\n{}",
                pretty(&json!(jobs)),
                tail(&node.stderr(), 8000)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exactly one new cleanup job of `app.<table>`, completed.
async fn one_completed_cleanup(node: &TestNode, table: &str, seen: usize) -> Value {
    let new = wait_new_cleanups(node, table, seen).await;
    assert_eq!(
        new.len(),
        1,
        "one pass, one cleanup job of app.{table}: {}",
        pretty(&json!(new))
    );
    let job = new[0].clone();
    assert_eq!(
        job["status"],
        "completed",
        "the cleanup job of app.{table} completes: {}",
        pretty(&job)
    );
    job
}

/// `hot_rows`, `cold_rows`, `parquet_files`, `parquet_bytes` of `SHOW TABLE STATS`.
async fn stats(node: &TestNode, table: &str) -> [i64; 4] {
    let rows = node
        .query(&admin_token(), &format!("SHOW TABLE STATS {table}"))
        .await;
    let row = &rows[0];
    let get = |k: &str| {
        row[k]
            .as_i64()
            .unwrap_or_else(|| panic!("SHOW TABLE STATS {table}: {k} in {row}"))
    };
    [
        get("hot_rows"),
        get("cold_rows"),
        get("parquet_files"),
        get("parquet_bytes"),
    ]
}

/// The table's Parquet files as pyarrow sees them are exactly those the node counts: no
/// orphan of an interrupted job, no replaced file left behind.
async fn assert_no_stray_files(node: &TestNode, table: &str, dir: &Path, context: &str) {
    let files = parquet_files(dir);
    let [_, cold_rows, parquet_files_n, parquet_bytes] = stats(node, table).await;
    assert_eq!(
        (
            files.len() as i64,
            total_size(&files),
            file_rows(&files).len() as i64
        ),
        (parquet_files_n, parquet_bytes, cold_rows),
        "{context}: the Parquet files of {table} are exactly those SHOW TABLE STATS counts: {:?}",
        files.iter().map(|f| f["path"].clone()).collect::<Vec<_>>()
    );
}

fn updated_of(row: &Value, context: &str) -> DateTime<Utc> {
    parse_utc(&row["_updated"], context)
}

fn cutoff_of(job: &Value) -> DateTime<Utc> {
    let micros = result_int(job, "cutoff_micros");
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_else(|| panic!("result.cutoff_micros {micros} is a time"))
}

fn ids_of(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .map(|r| r["id"].as_i64().expect("an integer id"))
        .collect()
}

fn range(ids: std::ops::RangeInclusive<i64>) -> BTreeSet<i64> {
    ids.collect()
}

/// One writer of the cutoff test: a user's partition of the USER table, or a user of the
/// SHARED one.
struct Target {
    table: &'static str,
    user: &'static str,
    per_user: bool,
}

impl Target {
    fn token(&self) -> String {
        token(self.user, false)
    }

    fn label(&self) -> String {
        format!("{} as {}", self.table, self.user)
    }

    /// The directory of this writer's Parquet files.
    fn dir(&self, node: &TestNode) -> PathBuf {
        let name = self.table.trim_start_matches("app.");
        let table = storage_dir(node).join("app").join(name);
        if self.per_user {
            table.join(self.user)
        } else {
            table
        }
    }
}

const TARGETS: [Target; 3] = [
    Target {
        table: "app.notes",
        user: "alice",
        per_user: true,
    },
    Target {
        table: "app.notes",
        user: "bob",
        per_user: true,
    },
    Target {
        table: "app.board",
        user: "dave",
        per_user: false,
    },
];

/// What a writer's queries answer; a cleanup must not change any of it.
async fn answers(node: &TestNode, t: &Target) -> Vec<Value> {
    let table = t.table;
    let mut out = Vec::new();
    for sql in [
        format!("SELECT * FROM {table} ORDER BY id"),
        format!("SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d, SUM(id) AS s FROM {table}"),
        format!("SELECT id, body FROM {table} WHERE id IN (11, 12, 31, 44) ORDER BY id"),
        format!("SELECT * FROM {table} WHERE id = 12"),
        format!("SELECT owner, COUNT(*) AS n FROM {table} GROUP BY owner ORDER BY owner"),
    ] {
        out.push(json!(node.query(&t.token(), &sql).await));
    }
    out
}

async fn deleted_rows(node: &TestNode, t: &Target) -> Vec<Value> {
    node.query(
        &t.token(),
        &format!(
            "SELECT * FROM {} WHERE _deleted = true ORDER BY id",
            t.table
        ),
    )
    .await
}

/// The rows of `before` that a cleanup with `cutoff` keeps (deleted at or after it), after
/// checking that the test's timing put `due` before the cutoff and `kept` after it.
fn expected_deleted(
    before: &[Value],
    cutoff: DateTime<Utc>,
    due: &BTreeSet<i64>,
    kept: &BTreeSet<i64>,
    context: &str,
) -> Vec<Value> {
    for row in before {
        let id = row["id"].as_i64().expect("id");
        let updated = updated_of(row, context);
        if due.contains(&id) {
            assert!(
                updated < cutoff,
                "{context}: id {id} was deleted at {updated}, before the job's cutoff {cutoff}"
            );
        }
        if kept.contains(&id) {
            assert!(
                updated >= cutoff,
                "{context}: id {id} was deleted at {updated}, but the job's cutoff is {cutoff}: \
                 the node took longer than the retention to restart, so the test cannot tell"
            );
        }
    }
    before
        .iter()
        .filter(|r| updated_of(r, context) >= cutoff)
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Exactly the rows past the cutoff, in both tiers, USER and SHARED
// ---------------------------------------------------------------------------------------------

/// Two cleanups of a USER table (alice's and bob's partitions; carol's partition has no
/// deletes) and a SHARED table, each at a known moment (a restart: the first pass runs at
/// start-up; the interval is an hour).
///
/// Job 1 has, per writer: tombstones flushed to Parquet (1-5, and 12, which was inserted again
/// since), tombstones still hot over flushed rows (6-10), hot tombstones of rows never flushed
/// (41-43), all past the cutoff; hot tombstones not past it (21-25); updated rows (31-33).
/// Job 2: a file holding tombstones past the cutoff (21-25) and tombstones not past it (26-28).
#[tokio::test]
async fn retention_removes_exactly_the_rows_past_the_cutoff() {
    let secs = RETENTION.as_secs();
    let with = format!("WITH (deleted_retention = '{secs}s')");
    let dir = NodeDir::new();
    let node = TestNode::start_with(&dir, cleanup_opts("1h")).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&table_ddl("USER", "notes", &with)).await;
    node.admin(&table_ddl("SHARED", "board", &with)).await;
    let carol = token("carol", false);

    // Cold rows, then cold tombstones.
    for t in &TARGETS {
        node.exec(&t.token(), &insert_sql(t.table, t.user, 1..=40, "first"))
            .await;
    }
    node.exec(&carol, &insert_sql("app.notes", "carol", 1..=10, "carol"))
        .await;
    flush(&node, "app.notes").await;
    flush(&node, "app.board").await;
    for t in &TARGETS {
        let n = node
            .affected(
                &t.token(),
                &format!("DELETE FROM {} WHERE id <= 5 OR id = 12", t.table),
            )
            .await;
        assert_eq!(n, 6, "{}", t.label());
    }
    flush(&node, "app.notes").await;
    flush(&node, "app.board").await;
    // Hot tombstones over cold rows, of hot rows, a key inserted again, updates.
    for t in &TARGETS {
        let tok = t.token();
        node.exec(&tok, &insert_sql(t.table, t.user, 12..=12, "again"))
            .await;
        node.exec(
            &tok,
            &format!("DELETE FROM {} WHERE id BETWEEN 6 AND 10", t.table),
        )
        .await;
        node.exec(&tok, &insert_sql(t.table, t.user, 41..=45, "hot"))
            .await;
        node.exec(
            &tok,
            &format!("DELETE FROM {} WHERE id BETWEEN 41 AND 43", t.table),
        )
        .await;
        node.exec(
            &tok,
            &format!(
                "UPDATE {} SET body = 'edited' WHERE id BETWEEN 31 AND 33",
                t.table
            ),
        )
        .await;
    }
    let a_done = Instant::now();
    tokio::time::sleep_until(a_done + RETENTION + Duration::from_secs(1)).await;
    // Deleted now: not past the cutoff of the next pass.
    for t in &TARGETS {
        node.exec(
            &t.token(),
            &format!("DELETE FROM {} WHERE id BETWEEN 21 AND 25", t.table),
        )
        .await;
    }
    let b_done = Instant::now();

    let mut before_answers = Vec::new();
    let mut before_deleted = Vec::new();
    for t in &TARGETS {
        before_answers.push(answers(&node, t).await);
        before_deleted.push(deleted_rows(&node, t).await);
    }
    let carol_dir = TARGETS[0].dir(&node).with_file_name("carol");
    let carol_files = parquet_files(&carol_dir);
    assert_eq!(carol_files.len(), 1, "carol's one flushed file");
    assert_eq!(stats(&node, "app.notes").await[..3], [38, 102, 5]);
    assert_eq!(stats(&node, "app.board").await[..3], [19, 46, 2]);
    assert!(
        cleanup_jobs(&node, "notes").await.is_empty()
            && cleanup_jobs(&node, "board").await.is_empty(),
        "no cleanup job while nothing was past the retention"
    );

    // 1. Restart: the pass at start-up.
    let dir = node.stop().await;
    let node = TestNode::start_with(&dir, cleanup_opts("1h")).await;
    let notes_job = one_completed_cleanup(&node, "notes", 0).await;
    let board_job = one_completed_cleanup(&node, "board", 0).await;
    let due1: BTreeSet<i64> = range(1..=10).into_iter().chain(range(41..=43)).collect();
    let kept1 = range(21..=25);
    for (i, t) in TARGETS.iter().enumerate() {
        let job = if t.per_user { &notes_job } else { &board_job };
        let context = format!("{}, first cleanup", t.label());
        let cutoff = cutoff_of(job);
        let expected = expected_deleted(&before_deleted[i], cutoff, &due1, &kept1, &context);
        assert_eq!(
            ids_of(&expected),
            range(21..=25).into_iter().collect::<Vec<_>>(),
            "{context}"
        );
        assert_eq!(
            deleted_rows(&node, t).await,
            expected,
            "{context}: exactly the rows deleted before the cutoff are gone"
        );
        assert_eq!(
            answers(&node, t).await,
            before_answers[i],
            "{context}: every other answer is the same"
        );
        let rows = file_rows(&parquet_files(&t.dir(&node)));
        let mut ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let expected_ids: Vec<i64> = std::iter::once(11).chain(13..=40).collect();
        assert_eq!(
            ids, expected_ids,
            "{context}: the Parquet files hold no version of a removed row (nor the old versions of 12)"
        );
        assert!(
            rows.iter().all(|(_, deleted)| !deleted),
            "{context}: no tombstone is left in Parquet"
        );
    }
    for (job, removed, hot, cold, rewritten, dropped) in [
        (&notes_job, 26, 16, 34, 2, 2),
        (&board_job, 13, 8, 17, 1, 1),
    ] {
        let context = format!("first cleanup job {}", pretty(job));
        assert_eq!(result_int(job, "rows_removed"), removed, "{context}");
        assert_eq!(result_int(job, "hot_rows_removed"), hot, "{context}");
        assert_eq!(result_int(job, "cold_rows_removed"), cold, "{context}");
        assert_eq!(result_int(job, "files_rewritten"), rewritten, "{context}");
        assert_eq!(result_int(job, "files_dropped"), dropped, "{context}");
        assert_eq!(
            result_int(job, "files_deleted"),
            rewritten + dropped,
            "{context}"
        );
        assert!(result_int(job, "bytes_freed") > 0, "{context}");
    }
    assert_eq!(stats(&node, "app.notes").await[..3], [22, 68, 3]);
    assert_eq!(stats(&node, "app.board").await[..3], [11, 29, 1]);
    assert_no_stray_files(
        &node,
        "app.notes",
        &storage_dir(&node).join("app/notes"),
        "first cleanup",
    )
    .await;
    assert_no_stray_files(
        &node,
        "app.board",
        &storage_dir(&node).join("app/board"),
        "first cleanup",
    )
    .await;
    assert_eq!(
        parquet_files(&carol_dir),
        carol_files,
        "carol deleted nothing: her file is untouched"
    );

    // 2. A file with tombstones on both sides of the cutoff.
    tokio::time::sleep_until(b_done + RETENTION - Duration::from_secs(2)).await;
    for t in &TARGETS {
        node.exec(
            &t.token(),
            &format!("DELETE FROM {} WHERE id BETWEEN 26 AND 28", t.table),
        )
        .await;
    }
    flush(&node, "app.notes").await;
    flush(&node, "app.board").await;
    tokio::time::sleep_until(b_done + RETENTION + Duration::from_secs(1)).await;
    let mut before_answers = Vec::new();
    let mut before_deleted = Vec::new();
    for t in &TARGETS {
        before_answers.push(answers(&node, t).await);
        before_deleted.push(deleted_rows(&node, t).await);
    }
    assert_eq!(stats(&node, "app.notes").await[..3], [0, 96, 5]);
    assert_eq!(stats(&node, "app.board").await[..3], [0, 43, 2]);
    let dir = node.stop().await;
    let node = TestNode::start_with(&dir, cleanup_opts("1h")).await;
    let notes_job = one_completed_cleanup(&node, "notes", 1).await;
    let board_job = one_completed_cleanup(&node, "board", 1).await;
    for (i, t) in TARGETS.iter().enumerate() {
        let job = if t.per_user { &notes_job } else { &board_job };
        let context = format!("{}, second cleanup", t.label());
        let expected = expected_deleted(
            &before_deleted[i],
            cutoff_of(job),
            &range(21..=25),
            &range(26..=28),
            &context,
        );
        assert_eq!(
            ids_of(&expected),
            vec![26, 27, 28],
            "{context}: {}",
            pretty(&json!(expected))
        );
        assert_eq!(deleted_rows(&node, t).await, expected, "{context}");
        assert_eq!(answers(&node, t).await, before_answers[i], "{context}");
        let rows = file_rows(&parquet_files(&t.dir(&node)));
        let removed = [range(1..=10), range(21..=25), range(41..=43)];
        assert!(
            rows.iter()
                .all(|(id, _)| removed.iter().all(|r| !r.contains(id))),
            "{context}: no version of a removed row is in Parquet: {rows:?}"
        );
        let tombstones: Vec<i64> = rows.iter().filter(|(_, d)| *d).map(|(id, _)| *id).collect();
        assert_eq!(
            tombstones,
            vec![26, 27, 28],
            "{context}: the tombstones not past the cutoff stay in the rewritten file"
        );
        assert_eq!(
            rows.iter().filter(|(id, _)| *id == 12).count(),
            1,
            "{context}: 12 once, its live version"
        );
    }
    for (job, removed, cold, rewritten) in [(&notes_job, 10, 20, 4), (&board_job, 5, 10, 2)] {
        let context = format!("second cleanup job {}", pretty(job));
        assert_eq!(result_int(job, "rows_removed"), removed, "{context}");
        assert_eq!(result_int(job, "hot_rows_removed"), 0, "{context}");
        assert_eq!(result_int(job, "cold_rows_removed"), cold, "{context}");
        assert_eq!(result_int(job, "files_rewritten"), rewritten, "{context}");
        assert_eq!(result_int(job, "files_dropped"), 0, "{context}");
    }
    assert_eq!(stats(&node, "app.notes").await[..3], [0, 76, 5]);
    assert_eq!(stats(&node, "app.board").await[..3], [0, 33, 2]);
    assert_no_stray_files(
        &node,
        "app.notes",
        &storage_dir(&node).join("app/notes"),
        "second cleanup",
    )
    .await;
    assert_eq!(parquet_files(&carol_dir), carol_files, "carol's file");

    // A removed key is free again, and nothing of it comes back.
    for t in &TARGETS {
        let tok = t.token();
        node.exec(&tok, &insert_sql(t.table, t.user, 1..=1, "reborn"))
            .await;
        let rows = node
            .query(
                &tok,
                &format!(
                    "SELECT id, body, _deleted FROM {} WHERE id IN (1, 2) OR _deleted = true \
                     ORDER BY id",
                    t.table
                ),
            )
            .await;
        assert_eq!(
            ids_of(&rows),
            vec![1, 26, 27, 28],
            "{}: {}",
            t.label(),
            pretty(&json!(rows))
        );
        assert_eq!(rows[0]["body"], "reborn 1");
    }
}

// ---------------------------------------------------------------------------------------------
// 'off' keeps deleted rows
// ---------------------------------------------------------------------------------------------

/// Deletes in both tiers of an `'off'` USER table, a SHARED table with the default, and a
/// control table with `'1s'`. Once the control table's cleanup has removed its rows (so
/// passes ran after the deletes were past any retention), the other two still hold every
/// deleted row, in the same files, and have no cleanup job.
#[tokio::test]
async fn off_keeps_deleted_rows_forever() {
    let node = TestNode::start_with_options(cleanup_opts("300ms")).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&table_ddl(
        "USER",
        "kept_off",
        "WITH (deleted_retention = 'off')",
    ))
    .await;
    node.admin(&table_ddl("SHARED", "kept_default", "")).await;
    node.admin(&table_ddl(
        "SHARED",
        "purged",
        "WITH (deleted_retention = '1s')",
    ))
    .await;
    let alice = token("alice", false);
    let tables = ["app.kept_off", "app.kept_default", "app.purged"];
    for table in tables {
        node.exec(&alice, &insert_sql(table, "alice", 1..=20, "row"))
            .await;
        flush(&node, table).await;
        node.exec(&alice, &format!("DELETE FROM {table} WHERE id <= 5"))
            .await;
        flush(&node, table).await;
        node.exec(
            &alice,
            &format!("DELETE FROM {table} WHERE id BETWEEN 6 AND 10"),
        )
        .await;
    }
    let deleted_sql = |t: &str| format!("SELECT * FROM {t} WHERE _deleted = true ORDER BY id");
    let kept_deleted = [
        node.query(&alice, &deleted_sql(tables[0])).await,
        node.query(&alice, &deleted_sql(tables[1])).await,
    ];
    let dirs = [
        storage_dir(&node).join("app/kept_off"),
        storage_dir(&node).join("app/kept_default"),
    ];
    let kept_files = [parquet_files(&dirs[0]), parquet_files(&dirs[1])];
    for deleted in &kept_deleted {
        assert_eq!(ids_of(deleted), (1..=10).collect::<Vec<_>>());
    }

    // The control table is cleaned up (in one or two jobs: its deletes were at two times).
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let jobs = cleanup_jobs(&node, "purged").await;
        let removed: i64 = jobs
            .iter()
            .filter(|j| j["status"] == "completed")
            .map(|j| result_int(j, "rows_removed"))
            .sum();
        if removed == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app.purged was not cleaned up: {}",
            pretty(&json!(jobs))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node
        .query(&alice, &deleted_sql("app.purged"))
        .await
        .is_empty());

    for (i, &table) in tables[..2].iter().enumerate() {
        assert_eq!(
            node.query(&alice, &deleted_sql(table)).await,
            kept_deleted[i],
            "{table}: every deleted row is kept"
        );
        assert_eq!(
            parquet_files(&dirs[i]),
            kept_files[i],
            "{table}: the files are untouched"
        );
        let name = table.trim_start_matches("app.");
        assert!(
            cleanup_jobs(&node, name).await.is_empty(),
            "{table}: no cleanup job"
        );
        let [hot, cold, ..] = stats(&node, table).await;
        assert_eq!(
            (hot, cold),
            (5, 25),
            "{table}: 5 hot tombstones; 20 rows and 5 tombstones in Parquet"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// system.jobs
// ---------------------------------------------------------------------------------------------

/// Scheduled cleanup jobs of a SHARED table with deletes flushed and hot: their rows in
/// `system.jobs` (type, table, status, times, parameters, trace), the rows removed and the
/// bytes freed (which add up to what `SHOW TABLE STATS` lost), and no further job once
/// nothing is left to do.
#[tokio::test]
async fn cleanup_jobs_report_rows_removed_and_bytes_freed() {
    let node = TestNode::start_with_options(cleanup_opts("300ms")).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&table_ddl(
        "SHARED",
        "events",
        "WITH (deleted_retention = '2s')",
    ))
    .await;
    let user = token("alice", false);
    node.exec(&user, &insert_sql("app.events", "alice", 1..=200, "event"))
        .await;
    flush(&node, "app.events").await;
    node.exec(&user, "DELETE FROM app.events WHERE id <= 50")
        .await;
    flush(&node, "app.events").await;
    node.exec(&user, "DELETE FROM app.events WHERE id BETWEEN 51 AND 100")
        .await;
    let started = Utc::now() - chrono::TimeDelta::seconds(5);
    let [hot, cold, files, bytes_before] = stats(&node, "app.events").await;
    assert_eq!((hot, cold, files), (50, 250, 2));
    let live_before = node
        .query(&user, "SELECT * FROM app.events ORDER BY id")
        .await;

    let deadline = Instant::now() + JOB_WAIT;
    let jobs = loop {
        let jobs = cleanup_jobs(&node, "events").await;
        let removed: i64 = jobs
            .iter()
            .filter(|j| j["status"] == "completed")
            .map(|j| result_int(j, "rows_removed"))
            .sum();
        if removed == 100 && jobs.iter().all(|j| j["status"] != "running") {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "the cleanup of app.events did not finish: {}",
            pretty(&json!(jobs))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        (1..=2).contains(&jobs.len()),
        "one job per pass with rows past the retention (the deletes were at two times): {}",
        pretty(&json!(jobs))
    );
    let finished = Utc::now() + chrono::TimeDelta::seconds(5);
    let sum = |key: &str| jobs.iter().map(|j| result_int(j, key)).sum::<i64>();
    for job in &jobs {
        let context = pretty(job);
        assert_eq!(job["job_type"], "cleanup", "{context}");
        assert_eq!(job["namespace"], "app", "{context}");
        assert_eq!(job["table_name"], "events", "{context}");
        assert_eq!(job["status"], "completed", "{context}");
        assert!(job["user_id"].is_null(), "a scheduled job: {context}");
        assert!(job["error_message"].is_null(), "{context}");
        assert!(
            job["job_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cleanup-")),
            "{context}"
        );
        let start = parse_utc(&job["start_time"], "start_time");
        let end = parse_utc(&job["end_time"], "end_time");
        assert!(
            started <= start && start <= end && end <= finished,
            "{start} .. {end}"
        );
        assert!(
            job["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{context}"
        );
        let parameters = json_cell(&job["parameters"]);
        let parameters: Vec<&str> = parameters
            .as_array()
            .unwrap_or_else(|| panic!("parameters is a JSON array: {context}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            parameters.contains(&"trigger=schedule")
                && parameters.contains(&"deleted_retention=2s")
                && parameters.iter().any(|p| p.starts_with("cutoff=")),
            "{context}"
        );
        assert!(
            job["trace"].as_str().is_some_and(|t| t.contains("removed")),
            "{context}"
        );
        let result = json_cell(&job["result"]);
        for key in [
            "rows_removed",
            "versions_removed",
            "hot_rows_removed",
            "cold_rows_removed",
            "bytes_freed",
            "files_rewritten",
            "files_dropped",
            "files_deleted",
            "elapsed_ms",
        ] {
            assert!(result[key].is_i64(), "result.{key}: {context}");
        }
        assert!(result["cutoff"].is_string(), "result.cutoff: {context}");
    }
    assert_eq!(sum("rows_removed"), 100);
    assert_eq!(sum("hot_rows_removed"), 50);
    // The first file loses rows 1-100, the file of the flushed tombstones goes entirely.
    assert_eq!(sum("cold_rows_removed"), 150);
    assert_eq!(
        sum("versions_removed"),
        sum("hot_rows_removed") + sum("cold_rows_removed")
    );
    assert_eq!(sum("files_dropped"), 1);
    assert_eq!(
        sum("files_deleted"),
        sum("files_rewritten") + sum("files_dropped")
    );
    assert!(sum("bytes_freed") > 0);
    let [hot, cold, files, bytes_after] = stats(&node, "app.events").await;
    assert_eq!((hot, cold, files), (0, 100, 1));
    assert_eq!(
        sum("cold_bytes_freed"),
        bytes_before - bytes_after,
        "the bytes the jobs freed in Parquet are what the table's files lost"
    );
    assert_no_stray_files(
        &node,
        "app.events",
        &storage_dir(&node).join("app/events"),
        "after cleanup",
    )
    .await;
    assert_eq!(
        node.query(&user, "SELECT * FROM app.events ORDER BY id")
            .await,
        live_before
    );

    // Nothing left to do: passes go on, but start no job.
    let n = cleanup_jobs(&node, "events").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cleanup_jobs(&node, "events").await.len(), n);
    // Users do not see scheduled jobs.
    assert!(node
        .query(
            &user,
            "SELECT job_id FROM system.jobs WHERE job_type = 'cleanup'"
        )
        .await
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Crashes between the compaction steps
// ---------------------------------------------------------------------------------------------

/// A USER table of two users with deletes flushed and hot, and updated rows; the cleanup job
/// aborts the node at `failpoint`. After a restart the cleanup runs again: every live row is
/// there exactly once with its values, no deleted row comes back (in queries or in Parquet),
/// no file of the interrupted job is left over, and the interrupted job is failed.
async fn crash_during_cleanup(failpoint: &str) {
    let users = ["alice", "bob"];
    let table = "app.items";
    let opts = cleanup_opts("300ms").env("FAILPOINTS", &format!("{failpoint}=return"));
    let node = TestNode::start_with(&NodeDir::new(), opts).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&table_ddl(
        "USER",
        "items",
        "WITH (deleted_retention = '6s')",
    ))
    .await;
    for user in users {
        node.exec(
            &token(user, false),
            &insert_sql(table, user, 1..=30, "first"),
        )
        .await;
    }
    flush(&node, table).await;
    for user in users {
        node.exec(&token(user, false), "DELETE FROM app.items WHERE id <= 5")
            .await;
    }
    flush(&node, table).await;
    for user in users {
        let t = token(user, false);
        node.exec(&t, "DELETE FROM app.items WHERE id BETWEEN 6 AND 10")
            .await;
        node.exec(&t, "UPDATE app.items SET body = 'edited' WHERE id = 20")
            .await;
        node.exec(&t, &insert_sql(table, user, 31..=32, "hot"))
            .await;
    }
    let mut before = Vec::new();
    for user in users {
        before.push(
            node.query(&token(user, false), "SELECT * FROM app.items ORDER BY id")
                .await,
        );
    }
    // The next pass after the deletes are 6 s old aborts the node.
    let dir = node.wait_exit(JOB_WAIT).await;

    let node = TestNode::start_with(&dir, cleanup_opts("300ms")).await;
    let when = format!("after a crash at {failpoint}");
    let files_dir = storage_dir(&node).join("app/items");
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let jobs = cleanup_jobs(&node, "items").await;
        let done = jobs.iter().any(|j| j["status"] == "completed")
            && jobs.iter().all(|j| j["status"] != "running");
        if done {
            let files = parquet_files(&files_dir);
            let stale = file_rows(&files).iter().any(|(id, _)| *id <= 10);
            let [hot, ..] = stats(&node, table).await;
            if !stale && hot == 6 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{when}: the cleanup did not finish: {}",
            pretty(&json!(jobs))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = cleanup_jobs(&node, "items").await;
    assert!(
        jobs.iter().any(|j| j["status"] == "failed"
            && j["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped"))),
        "{when}: the interrupted job is failed: {}",
        pretty(&json!(jobs))
    );
    for (i, user) in users.iter().enumerate() {
        let t = token(user, false);
        assert_eq!(
            node.query(&t, "SELECT * FROM app.items ORDER BY id").await,
            before[i],
            "{when}: {user}'s live rows are all there, once, unchanged"
        );
        assert!(
            node.query(&t, "SELECT * FROM app.items WHERE _deleted = true")
                .await
                .is_empty(),
            "{when}: {user}'s deleted rows are gone and stay gone"
        );
        let files = parquet_files(&files_dir.join(user));
        let rows = file_rows(&files);
        assert!(
            rows.iter().all(|(id, deleted)| *id > 10 && !deleted),
            "{when}: {user}'s files hold no removed row: {rows:?}"
        );
        let mut ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (11..=30).collect::<Vec<_>>(),
            "{when}: each flushed live row once"
        );
    }
    // 6 hot rows: the update of 20 and the inserts 31, 32 of each user.
    assert_eq!(stats(&node, table).await[..3], [6, 40, 2]);
    assert_no_stray_files(&node, table, &files_dir, &when).await;

    // Still so after another restart; removed keys are free again.
    let dir = node.stop().await;
    let node = TestNode::start_with(&dir, cleanup_opts("300ms")).await;
    for (i, user) in users.iter().enumerate() {
        let t = token(user, false);
        assert_eq!(
            node.query(&t, "SELECT * FROM app.items ORDER BY id").await,
            before[i],
            "{when}, restarted"
        );
        node.exec(&t, &insert_sql(table, user, 1..=1, "reborn"))
            .await;
        assert_eq!(
            node.count(
                &t,
                "SELECT COUNT(*) FROM app.items WHERE id <= 10 OR _deleted = true"
            )
            .await,
            1,
            "{when}: only the new row 1"
        );
    }
}

#[tokio::test]
async fn crash_after_cleanup_file() {
    crash_during_cleanup("cleanup-after-file").await;
}

#[tokio::test]
async fn crash_after_cleanup_commit() {
    crash_during_cleanup("cleanup-after-commit").await;
}
