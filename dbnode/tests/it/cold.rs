//! The Parquet cold tier (API.md §4): `FLUSH TABLE` and its job in `system.jobs`, flush
//! policies, reading and changing flushed rows (one newest version per key), `SHOW TABLE
//! STATS`, the file layout on the built-in `local` location and on explicit locations,
//! `system.storage_locations` with S3 (a moto server), secrets that never leak, user ids that
//! cannot leave their directory, an S3 outage with automatic retry, and crashes at each
//! failpoint of a flush. The Parquet files are read with pyarrow (`tools/parquet_check.py`),
//! an implementation independent of the node's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::*;

/// How long a flush policy or a retry may take to produce a completed flush.
const POLICY_TIMEOUT: Duration = Duration::from_secs(60);
/// A flush against a dead S3 endpoint may go through the S3 client's own retries first.
const FAILED_FLUSH_TIMEOUT: Duration = Duration::from_secs(150);
/// A failpoint aborts the node "shortly" after FLUSH TABLE.
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);

const USERS: [&str; 3] = ["alice", "bob", "carol"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A SHARED table with a column of every type.
const KINDS_DDL: &str = "CREATE SHARED TABLE app.kinds (\
    id BIGINT PRIMARY KEY, c_bool BOOLEAN, c_small SMALLINT, c_int INT, c_big BIGINT, \
    c_float FLOAT, c_double DOUBLE, c_dec DECIMAL(10,2), c_text TEXT, c_bytes BYTES, \
    c_date DATE, c_ts TIMESTAMP, c_json JSON) FLUSH POLICY ROWS 1000000";
const KINDS_COLUMNS: [&str; 13] = [
    "id", "c_bool", "c_small", "c_int", "c_big", "c_float", "c_double", "c_dec", "c_text",
    "c_bytes", "c_date", "c_ts", "c_json",
];
const KINDS_ROWS: i64 = 200;

/// A USER table whose `owner` column holds the user id that wrote the row.
fn notes_ddl(table: &str, clause: &str) -> String {
    format!(
        "CREATE USER TABLE app.{table} (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, body TEXT, \
         n INT) {clause}"
    )
}

/// `app.kinds` with rows of every type, NULLs, extremes, unicode and JSON, plus filler rows.
async fn create_kinds(node: &TestNode) {
    node.admin("CREATE NAMESPACE app").await;
    node.admin(KINDS_DDL).await;
    let cols = KINDS_COLUMNS.join(", ");
    node.admin(&format!(
        "INSERT INTO app.kinds ({cols}) VALUES \
         (1, true, 32767, -2147483648, 9007199254740993, 2.5, 3.141592653589793, 12.34, 'hello', \
          X'0001FF', '2026-11-27', '2026-11-27T10:00:00.000123Z', '{{\"a\":[1,2,{{\"b\":null}}],\"s\":\"x\"}}'), \
         (2, false, -32768, 2147483647, -9223372036854775807, -0.25, 1e300, -0.01, \
          'ünïcödé ✓ ''quoted''', X'', '1970-01-01', '1999-12-31T23:59:59.999999Z', '[1,\"two\",3.5,true]'), \
         (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
         (4, NULL, 0, 0, 0, 0, 0, 0, '', NULL, '2000-02-29', '2026-11-27T12:00:00+02:00', '{{}}')"
    ))
    .await;
    let filler: Vec<String> = (5..=KINDS_ROWS)
        .map(|i| {
            format!(
                "({i}, {}, {}, {i}, {}, {}.5, {i}.25, {i}.01, 'row {i}', X'{:02X}', '2026-01-{:02}', \
                 '2026-01-01T00:00:{:02}.{:06}Z', '{{\"i\":{i},\"tags\":[\"t{i}\"]}}')",
                i % 2 == 0,
                i % 100,
                i * 1_000_000_007,
                i % 7,
                i % 256,
                i % 28 + 1,
                i % 60,
                i
            )
        })
        .collect();
    node.admin(&format!(
        "INSERT INTO app.kinds ({cols}) VALUES {}",
        filler.join(", ")
    ))
    .await;
}

/// Queries over `app.kinds` whose answers a flush must not change.
const KINDS_QUERIES: [&str; 8] = [
    "SELECT * FROM app.kinds ORDER BY id",
    "SELECT * FROM app.kinds WHERE id = 2",
    "SELECT * FROM app.kinds WHERE id = 3",
    "SELECT COUNT(*) AS n, SUM(c_int) AS s, MIN(c_ts) AS first_ts, MAX(c_date) AS last_date FROM app.kinds",
    "SELECT id FROM app.kinds WHERE c_text LIKE 'row 1%' ORDER BY id",
    "SELECT id, c_json FROM app.kinds WHERE c_bool IS NULL ORDER BY id",
    "SELECT id FROM app.kinds WHERE c_ts > '2000-01-01T00:00:00Z' ORDER BY id LIMIT 7",
    "SELECT id, c_dec, c_bytes FROM app.kinds ORDER BY id LIMIT 5",
];

async fn answers(node: &TestNode, token: &str, queries: &[&str]) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for sql in queries {
        out.push(node.query(token, sql).await);
    }
    out
}

fn assert_same_answers(before: &[Vec<Value>], after: &[Vec<Value>], queries: &[&str], when: &str) {
    for ((b, a), sql) in before.iter().zip(after).zip(queries) {
        assert_eq!(
            a,
            b,
            "{when}: `{sql}` changed\nbefore: {}\nafter: {}",
            pretty(&json!(b)),
            pretty(&json!(a))
        );
    }
}

/// The root of the built-in `local` location when `KALAMDB_STORAGE_DIR` is not set.
fn default_storage(node: &TestNode) -> PathBuf {
    node.data_dir().join("storage")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// pyarrow's description of every Parquet file under `dir` (none when it does not exist).
fn local_files(dir: &Path) -> Vec<Value> {
    files_of(&parquet_check(&["local", path_str(dir)]))
}

/// pyarrow's description of every Parquet object under `prefix` of `bucket`.
fn s3_files(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<Value> {
    let endpoint = s3.endpoint();
    files_of(&parquet_check(&["s3", endpoint.as_str(), bucket, prefix]))
}

fn files_of(doc: &Value) -> Vec<Value> {
    doc["files"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("parquet_check printed no files array: {}", pretty(doc)))
}

fn path_of(file: &Value) -> String {
    file["path"].as_str().expect("a file path").to_string()
}

fn paths(files: &[Value]) -> Vec<String> {
    files.iter().map(path_of).collect()
}

fn total_size(files: &[Value]) -> i64 {
    files
        .iter()
        .map(|f| f["size"].as_i64().expect("size"))
        .sum()
}

fn data_of(file: &Value) -> Vec<Value> {
    file["data"].as_array().cloned().expect("file data")
}

/// Every row of every file.
fn all_data(files: &[Value]) -> Vec<Value> {
    files.iter().flat_map(data_of).collect()
}

/// `batch-<from>-<to>.parquet` (the last path component).
fn batch_range(path: &str) -> (u64, u64) {
    let name = path.rsplit('/').next().unwrap_or(path);
    let range = name
        .strip_prefix("batch-")
        .and_then(|r| r.strip_suffix(".parquet"))
        .unwrap_or_else(|| panic!("{path}: file name is not batch-<from>-<to>.parquet"));
    let (from, to) = range
        .split_once('-')
        .unwrap_or_else(|| panic!("{path}: file name is not batch-<from>-<to>.parquet"));
    let parse = |s: &str| {
        s.parse::<u64>()
            .unwrap_or_else(|_| panic!("{path}: {s:?} is not a sequence number"))
    };
    let (from, to) = (parse(from), parse(to));
    assert!(from <= to, "{path}: from > to");
    (from, to)
}

/// A file written by a flush: the user columns (zstd), `_updated`, `_deleted` and a UInt64
/// `_seq` within the range of its name (without a codec), and `rows` rows.
fn check_file_format(file: &Value, user_columns: &[&str]) {
    let path = path_of(file);
    let columns: Vec<String> = file["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect();
    for expected in user_columns
        .iter()
        .chain(["_updated", "_deleted", "_seq"].iter())
    {
        assert!(
            columns.iter().any(|c| c == expected),
            "{path}: column {expected} missing from the Parquet file: {columns:?}"
        );
    }
    assert_eq!(
        file["types"]["_seq"], "uint64",
        "{path}: _seq is a UInt64 column: {}",
        file["types"]
    );
    assert_eq!(
        file["types"]["_deleted"], "bool",
        "{path}: _deleted is a boolean column: {}",
        file["types"]
    );
    assert!(
        file["types"]["_updated"]
            .as_str()
            .is_some_and(|t| t.starts_with("timestamp[us")),
        "{path}: _updated is a microsecond timestamp: {}",
        file["types"]
    );
    for column in user_columns {
        assert_eq!(
            file["codecs"][column], "ZSTD",
            "{path}: the table's columns are zstd-compressed: {}",
            file["codecs"]
        );
    }
    for column in ["_updated", "_deleted", "_seq"] {
        assert_eq!(
            file["codecs"][column], "UNCOMPRESSED",
            "{path}: the version columns have no codec (read by every query): {}",
            file["codecs"]
        );
    }
    let data = data_of(file);
    assert_eq!(
        file["rows"].as_u64(),
        Some(data.len() as u64),
        "{path}: row count"
    );
    assert!(!data.is_empty(), "{path}: a flush writes no empty file");
    let (from, to) = batch_range(&path);
    for row in &data {
        let seq = row["_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{path}: _seq {} is not an unsigned integer", row["_seq"]));
        assert!(
            (from..=to).contains(&seq),
            "{path}: _seq {seq} outside the file's range {from}-{to}"
        );
    }
}

/// Numbers compare by value (an integer-valued float equals the integer), arrays and objects
/// element by element.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON cell: nested JSON as the API encodes it, or JSON text (as Parquet stores it).
fn json_cell(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

/// Each node row has exactly one Parquet row with the same `key`, holding the same value in
/// every column the node returned (`json_cols` hold JSON text in Parquet, `decimal_cols`
/// compare numerically), and Parquet holds no other row.
fn assert_rows_match_parquet(
    node_rows: &[Value],
    parquet_rows: &[Value],
    key: &str,
    json_cols: &[&str],
    decimal_cols: &[&str],
    context: &str,
) {
    assert_eq!(
        parquet_rows.len(),
        node_rows.len(),
        "{context}: the Parquet files hold exactly the flushed rows\nparquet: {}\nnode: {}",
        pretty(&json!(parquet_rows)),
        pretty(&json!(node_rows))
    );
    for row in node_rows {
        let matching: Vec<&Value> = parquet_rows
            .iter()
            .filter(|p| same_value(&p[key], &row[key]))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{context}: {key} = {} is in the Parquet files exactly once: {}",
            row[key],
            pretty(&json!(matching))
        );
        let prow = matching[0];
        for (col, value) in row.as_object().expect("rows are objects") {
            let pv = prow
                .get(col)
                .unwrap_or_else(|| panic!("{context}: the Parquet row lacks column {col}: {prow}"));
            let same = if json_cols.contains(&col.as_str()) {
                same_value(&json_cell(pv), value)
            } else if decimal_cols.contains(&col.as_str()) && pv.is_string() && value.is_string() {
                let num = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
                num(pv).is_some() && num(pv) == num(value)
            } else {
                same_value(pv, value)
            };
            assert!(
                same,
                "{context}: {key} = {}: column {col} is {value} in the node but {pv} in Parquet",
                row[key]
            );
        }
    }
}

fn int(v: &Value, context: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{context}: expected an integer, got {v}"))
}

/// `result` of a job row, as a JSON object with integer `rows`, `files` and `bytes`.
fn job_result(job: &Value) -> Value {
    let result = json_cell(&job["result"]);
    assert!(
        result.is_object(),
        "system.jobs.result is a JSON object: {}",
        pretty(job)
    );
    for key in ["rows", "files", "bytes"] {
        assert!(
            result[key].is_u64(),
            "system.jobs.result.{key} is a non-negative integer: {}",
            pretty(job)
        );
    }
    result
}

fn result_rows(job: &Value) -> i64 {
    int(&job_result(job)["rows"], "result.rows")
}

/// The flush jobs of `ns.table`, oldest first (admin view).
async fn flush_jobs(node: &TestNode, ns: &str, table: &str) -> Vec<Value> {
    node.query(
        &admin_token(),
        &format!(
            "SELECT * FROM system.jobs WHERE job_type = 'flush' AND namespace = {} AND \
             table_name = {} ORDER BY start_time, job_id",
            lit(ns),
            lit(table)
        ),
    )
    .await
}

/// Waits for a completed flush job of `ns.table` whose id is not in `seen`; returns it.
async fn wait_completed_flush(
    node: &TestNode,
    ns: &str,
    table: &str,
    seen: &[String],
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = flush_jobs(node, ns, table).await;
        if let Some(job) = jobs.iter().find(|j| {
            j["status"] == "completed"
                && !seen
                    .iter()
                    .any(|s| j["job_id"].as_str() == Some(s.as_str()))
        }) {
            return job.clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "no new completed flush job of {ns}.{table} within {timeout:?}; jobs: {}",
                pretty(&json!(jobs))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one row of `SHOW TABLE STATS <table>`.
async fn stats(node: &TestNode, table: &str) -> Value {
    let rows = node
        .query(&admin_token(), &format!("SHOW TABLE STATS {table}"))
        .await;
    assert_eq!(
        rows.len(),
        1,
        "SHOW TABLE STATS {table} returns one row: {}",
        pretty(&json!(rows))
    );
    rows[0].clone()
}

/// hot_rows, cold_rows, parquet_files, parquet_bytes, users of `SHOW TABLE STATS`.
async fn stat_numbers(node: &TestNode, table: &str) -> [i64; 5] {
    let row = stats(node, table).await;
    let get = |k: &str| int(&row[k], &format!("SHOW TABLE STATS {table}: {k} in {row}"));
    [
        get("hot_rows"),
        get("cold_rows"),
        get("parquet_files"),
        get("parquet_bytes"),
        // SHARED tables have no per-user partitions: their `users` is NULL.
        if row["users"].is_null() {
            0
        } else {
            get("users")
        },
    ]
}

/// Polls `SHOW TABLE STATS` until `(hot_rows, cold_rows)` is `(hot, cold)`.
async fn wait_stats(
    node: &TestNode,
    ns: &str,
    table: &str,
    hot: i64,
    cold: i64,
    timeout: Duration,
) {
    let name = format!("{ns}.{table}");
    let deadline = Instant::now() + timeout;
    loop {
        let [h, c, ..] = stat_numbers(node, &name).await;
        if (h, c) == (hot, cold) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name}: hot_rows/cold_rows still {h}/{c}, not {hot}/{cold}, after {timeout:?}; jobs: {}",
                pretty(&json!(flush_jobs(node, ns, table).await))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of `result.rows` over the completed flush jobs of `ns.table`.
async fn flushed_rows(node: &TestNode, ns: &str, table: &str) -> i64 {
    flush_jobs(node, ns, table)
        .await
        .iter()
        .filter(|j| j["status"] == "completed")
        .map(result_rows)
        .sum()
}

/// [`flushed_rows`] once it is `expected`, or what it is after `timeout`: a flush's rows are
/// in the table's statistics a moment before its job is marked completed.
async fn settled_flushed_rows(
    node: &TestNode,
    ns: &str,
    table: &str,
    expected: i64,
    timeout: Duration,
) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = flushed_rows(node, ns, table).await;
        if rows == expected || Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count(*)` and `count(DISTINCT id)` of the live rows `token` sees both equal `n`.
async fn assert_once(node: &TestNode, token: &str, table: &str, n: i64, context: &str) {
    let rows = node
        .query(
            token,
            &format!(
                "SELECT COUNT(*) AS total_rows, COUNT(DISTINCT id) AS distinct_ids FROM {table}"
            ),
        )
        .await;
    assert_eq!(
        rows,
        [json!({"total_rows": n, "distinct_ids": n})],
        "{context}: every row of {table} exactly once"
    );
}

/// `INSERT INTO app.<table> (id, owner, body, n)` of `ids` by `user`.
fn insert_notes(table: &str, user: &str, ids: std::ops::RangeInclusive<i64>, tag: &str) -> String {
    let values: Vec<String> = ids
        .map(|i| {
            format!(
                "({i}, {}, {}, {i})",
                lit(user),
                lit(&format!("{tag} {user} {i}"))
            )
        })
        .collect();
    format!(
        "INSERT INTO app.{table} (id, owner, body, n) VALUES {}",
        values.join(", ")
    )
}

/// Per user: all live rows, and the soft-deleted rows.
async fn user_snapshot(node: &TestNode, table: &str, users: &[&str]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for user in users {
        let t = token(user, false);
        out.push((
            format!("{user}: live rows"),
            json!(
                node.query(&t, &format!("SELECT * FROM {table} ORDER BY id"))
                    .await
            ),
        ));
        out.push((
            format!("{user}: deleted rows"),
            json!(
                node.query(
                    &t,
                    &format!("SELECT * FROM {table} WHERE _deleted = true ORDER BY id")
                )
                .await
            ),
        ));
    }
    out
}

fn assert_same_snapshot(before: &[(String, Value)], after: &[(String, Value)], when: &str) {
    assert_eq!(before.len(), after.len());
    for ((label, b), (_, a)) in before.iter().zip(after) {
        assert_eq!(
            a,
            b,
            "{when}: {label} changed\nbefore: {}\nafter: {}",
            pretty(b),
            pretty(a)
        );
    }
}

/// The Parquet files under `table_dir` grouped by the first path component (the user
/// directory); each path must be exactly `<user dir>/batch-*.parquet`.
fn files_by_user_dir(files: &[Value], context: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for file in files {
        let path = path_of(file);
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(
            parts.len(),
            2,
            "{context}: a USER table's file is <table dir>/<user>/batch-*.parquet, got {path}"
        );
        assert!(
            parts[1].starts_with("batch-"),
            "{context}: {path} is not a batch file"
        );
        out.entry(parts[0].to_string())
            .or_default()
            .push(file.clone());
    }
    out
}

/// Checks of a USER table flushed for `users` (each wrote `owner` = its id): one directory per
/// user, named after the user, whose files hold only that user's rows.
fn assert_per_user_files(files: &[Value], users: &[(&str, i64)], context: &str) {
    let by_dir = files_by_user_dir(files, context);
    let dirs: BTreeSet<&str> = by_dir.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = users.iter().map(|(u, _)| *u).collect();
    assert_eq!(
        dirs, expected,
        "{context}: one directory per user with rows"
    );
    for (user, n) in users {
        let files = &by_dir[*user];
        for file in files {
            check_file_format(file, &["id", "owner", "body", "n"]);
        }
        let data = all_data(files);
        assert_eq!(
            data.len() as i64,
            *n,
            "{context}: {user}'s files hold {user}'s {n} rows"
        );
        for row in &data {
            assert_eq!(
                row["owner"], *user,
                "{context}: a file under {user}/ holds another user's row: {row}"
            );
        }
    }
}

fn no_secret(text: &str, context: &str) {
    assert!(
        !text.contains(S3_SECRET_ACCESS_KEY),
        "{context} contains the S3 secret access key:\n{}",
        tail(text, 4000)
    );
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

/// `INSERT INTO system.storage_locations` of a filesystem location.
fn fs_location_sql(name: &str, path: &Path) -> String {
    format!(
        "INSERT INTO system.storage_locations (location_name, location_type, path, credentials_ref) \
         VALUES ({}, 'filesystem', {}, NULL)",
        lit(name),
        lit(path_str(path))
    )
}

async fn location_row(node: &TestNode, name: &str) -> Option<Value> {
    let rows = node
        .query(
            &admin_token(),
            &format!(
                "SELECT * FROM system.storage_locations WHERE location_name = {}",
                lit(name)
            ),
        )
        .await;
    assert!(rows.len() <= 1, "location names are unique: {rows:?}");
    rows.first().cloned()
}

async fn usage_count(node: &TestNode, name: &str) -> i64 {
    let row = location_row(node, name)
        .await
        .unwrap_or_else(|| panic!("no storage location {name}"));
    int(&row["usage_count"], &format!("usage_count of {name}"))
}

// ---------------------------------------------------------------------------------------------
// Flush on the filesystem
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn flush_keeps_every_value_of_every_type() {
    let node = TestNode::start().await;
    create_kinds(&node).await;
    let admin = admin_token();
    let alice = token("alice", false);
    let before = answers(&node, &alice, &KINDS_QUERIES).await;
    assert_eq!(before[0].len() as i64, KINDS_ROWS, "test setup");
    assert_eq!(
        stat_numbers(&node, "app.kinds").await[..3],
        [KINDS_ROWS, 0, 0],
        "before a flush every row is hot"
    );

    let job = flush(&node, "app.kinds").await;
    assert_eq!(
        result_rows(&job),
        KINDS_ROWS,
        "the flush wrote every row: {}",
        pretty(&job)
    );
    assert!(
        int(&job_result(&job)["files"], "files") >= 1,
        "{}",
        pretty(&job)
    );
    let [hot, cold, files, bytes, _] = stat_numbers(&node, "app.kinds").await;
    assert_eq!(
        (hot, cold),
        (0, KINDS_ROWS),
        "after a completed flush the rows are cold only"
    );
    assert!(
        files >= 1 && bytes > 0,
        "parquet_files {files}, parquet_bytes {bytes}"
    );
    let on_disk = local_files(&default_storage(&node).join("app/kinds"));
    assert!(
        !on_disk.is_empty(),
        "the files are under <data_dir>/storage/app/kinds/"
    );
    for path in paths(&on_disk) {
        assert!(
            !path.contains('/') && path.starts_with("batch-") && path.ends_with(".parquet"),
            "a SHARED table's file is <storage>/app/kinds/batch-<from>-<to>.parquet: {path}"
        );
        batch_range(&path);
    }

    let after = answers(&node, &alice, &KINDS_QUERIES).await;
    assert_same_answers(&before, &after, &KINDS_QUERIES, "after FLUSH TABLE");
    // The admin token reads the same SHARED rows.
    assert_eq!(
        node.query(&admin, KINDS_QUERIES[0]).await,
        before[0],
        "admin's view of the flushed SHARED table"
    );

    // Nothing new: the flush completes with 0 rows and changes nothing.
    let job = flush(&node, "app.kinds").await;
    assert_eq!(result_rows(&job), 0, "an empty flush: {}", pretty(&job));
    assert_eq!(
        local_files(&default_storage(&node).join("app/kinds")).len(),
        on_disk.len(),
        "an empty flush writes no file"
    );
    let again = answers(&node, &alice, &KINDS_QUERIES).await;
    assert_same_answers(&before, &again, &KINDS_QUERIES, "after an empty flush");
}

#[tokio::test]
async fn parquet_files_hold_exactly_the_flushed_rows() {
    let dir = NodeDir::new();
    let store = dir.base().join("cold-store");
    let node = TestNode::start_with(
        &dir,
        NodeOptions::default().env("KALAMDB_STORAGE_DIR", path_str(&store)),
    )
    .await;
    create_kinds(&node).await;
    let rows = node
        .query(&admin_token(), "SELECT * FROM app.kinds ORDER BY id")
        .await;
    let job = flush(&node, "app.kinds").await;
    let result = job_result(&job);

    // Everything the node wrote is under KALAMDB_STORAGE_DIR/app/kinds, nothing elsewhere.
    let everywhere = local_files(dir.base());
    let files = local_files(&store.join("app/kinds"));
    assert!(
        !files.is_empty(),
        "files under KALAMDB_STORAGE_DIR/app/kinds"
    );
    assert_eq!(
        everywhere.len(),
        files.len(),
        "no Parquet file outside KALAMDB_STORAGE_DIR/app/kinds: {:?}",
        paths(&everywhere)
    );
    assert!(
        local_files(&default_storage(&node)).is_empty(),
        "nothing under the default storage dir when KALAMDB_STORAGE_DIR is set"
    );
    for file in &files {
        check_file_format(file, &KINDS_COLUMNS);
    }
    assert_eq!(
        int(&result["files"], "result.files"),
        files.len() as i64,
        "result.files counts the files written: {}",
        pretty(&job)
    );
    assert_eq!(
        int(&result["bytes"], "result.bytes"),
        total_size(&files),
        "result.bytes is the size of the files written: {}",
        pretty(&job)
    );
    assert_eq!(int(&result["rows"], "result.rows"), KINDS_ROWS);

    let data = all_data(&files);
    assert_rows_match_parquet(
        &rows,
        &data,
        "id",
        &["c_json"],
        &["c_dec"],
        "flushed app.kinds",
    );
    assert!(
        data.iter().all(|r| r["_deleted"] == false),
        "only live rows were flushed"
    );
    // Sequence numbers are commit sequences: one INSERT statement, one sequence.
    let seq_of = |id: i64| {
        data.iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["_seq"].as_u64())
            .expect("_seq")
    };
    assert_eq!(seq_of(1), seq_of(4), "rows of one statement share a _seq");
    assert!(seq_of(5) > seq_of(1), "a later statement has a larger _seq");
    let [_, cold, pfiles, pbytes, _] = stat_numbers(&node, "app.kinds").await;
    assert_eq!(cold, KINDS_ROWS);
    assert_eq!(pfiles, files.len() as i64, "SHOW TABLE STATS parquet_files");
    assert_eq!(pbytes, total_size(&files), "SHOW TABLE STATS parquet_bytes");
}

#[tokio::test]
async fn user_table_files_are_per_user() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", "FLUSH POLICY ROWS 1000000"))
        .await;
    // The same keys in every partition: the owner column tells whose row it is.
    let counts = [("alice", 3), ("bob", 5), ("carol", 7)];
    for (user, n) in counts {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=n, "note"),
        )
        .await;
    }
    let before = user_snapshot(&node, "app.notes", &USERS).await;
    let job = flush(&node, "app.notes").await;
    assert_eq!(result_rows(&job), 15, "{}", pretty(&job));

    let table_dir = default_storage(&node).join("app/notes");
    let files = local_files(&table_dir);
    assert_per_user_files(&files, &counts, "app.notes on local");
    assert_eq!(
        local_files(&node.data_dir()).len(),
        files.len(),
        "no Parquet file outside <storage>/app/notes/<user>/"
    );
    assert_eq!(int(&job_result(&job)["files"], "files"), files.len() as i64);

    // Isolation holds over the cold tier: each user sees exactly their own rows.
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &USERS).await,
        "after flush",
    );
    for (user, n) in counts {
        let t = token(user, false);
        assert_once(&node, &t, "app.notes", n, user).await;
        assert_eq!(
            node.count(
                &t,
                &format!(
                    "SELECT COUNT(*) FROM app.notes WHERE owner <> {}",
                    lit(user)
                )
            )
            .await,
            0,
            "{user} sees no other user's flushed rows"
        );
    }
    assert_eq!(
        node.count(&admin_token(), "SELECT COUNT(*) FROM app.notes")
            .await,
        0,
        "the admin's own partition is empty"
    );
    assert_eq!(
        node.count(&token("dave", false), "SELECT COUNT(*) FROM app.notes")
            .await,
        0,
        "a user without rows sees none"
    );
    assert_eq!(
        node.query_as(
            &admin_token(),
            "bob",
            "SELECT id FROM app.notes ORDER BY id"
        )
        .await
        .len(),
        5,
        "as_user reads bob's flushed partition"
    );
}

/// A location whose path holds characters object paths encode (`~`, `%`, `#`, a space)
/// keeps its flushed rows readable: the node opens, rewrites and deletes the files it wrote,
/// not a name encoded once more. Before, the rows were gone from the hot tier after the flush
/// and every query of the table failed with "not found".
#[tokio::test]
async fn locations_with_characters_that_paths_encode_keep_their_rows_readable() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    let base = node.dir().base().to_path_buf();
    let loc = format!("{}/kalam~prod%25 #1/${{user_id}}/", path_str(&base));
    node.admin(&notes_ddl(
        "notes",
        &format!("LOCATION {} FLUSH POLICY ROWS 1000000", lit(&loc)),
    ))
    .await;
    let alice = token("alice", false);
    node.exec(&alice, &insert_notes("notes", "alice", 1..=3, "kept"))
        .await;
    let before = user_snapshot(&node, "app.notes", &["alice"]).await;
    flush(&node, "app.notes").await;
    assert!(
        !local_files(&base.join("kalam~prod%25 #1").join("alice")).is_empty(),
        "the files are where LOCATION says"
    );
    assert_eq!(user_snapshot(&node, "app.notes", &["alice"]).await, before);
    // A second flush merges nothing away; an UPDATE of a flushed row and a DELETE still work.
    node.exec(&alice, "UPDATE app.notes SET body = 'changed' WHERE id = 1")
        .await;
    node.exec(&alice, "DELETE FROM app.notes WHERE id = 2")
        .await;
    flush(&node, "app.notes").await;
    let rows = node
        .query(&alice, "SELECT id, body FROM app.notes ORDER BY id")
        .await;
    assert_eq!(
        rows.iter()
            .map(|r| r["id"].as_i64().unwrap_or(0))
            .collect::<Vec<_>>(),
        [1, 3],
        "{rows:?}"
    );
    assert_eq!(rows[0]["body"], "changed");
}

/// Two tables whose files would share a directory (an explicit LOCATION without the table's
/// name in it) are refused: each names its files from its own sequence
/// (`batch-1-...parquet` first), so they would overwrite and read each other's files.
#[tokio::test]
async fn a_location_where_another_tables_files_are_is_refused() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    let base = node.dir().base().to_path_buf();
    let shared = format!("{}/cold/${{user_id}}/", path_str(&base));
    node.admin(&notes_ddl("notes", &format!("LOCATION {}", lit(&shared))))
        .await;
    let error = node
        .expect_error(
            &admin_token(),
            &notes_ddl("drafts", &format!("LOCATION {}", lit(&shared))),
            "INVALID_TABLE_DEFINITION",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("app.notes"),
        "{error}"
    );
    node.admin(&notes_ddl(
        "drafts",
        &format!(
            "LOCATION {}",
            lit(&format!("{}/drafts/${{user_id}}/", path_str(&base)))
        ),
    ))
    .await;
}

#[tokio::test]
async fn explicit_locations_place_files() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    let base = node.dir().base().to_path_buf();
    let user_loc = format!("{}/cold/${{user_id}}/notes/", path_str(&base));
    let shared_loc = base.join("shared-cold/conv");
    node.admin(&notes_ddl(
        "notes",
        &format!("LOCATION {} FLUSH POLICY ROWS 1000000", lit(&user_loc)),
    ))
    .await;
    node.admin(&format!(
        "CREATE SHARED TABLE app.conv (id TEXT PRIMARY KEY, title TEXT) LOCATION {} \
         FLUSH POLICY ROWS 1000000",
        lit(&format!("{}/", path_str(&shared_loc)))
    ))
    .await;
    node.expect_error(
        &admin_token(),
        &format!(
            "CREATE SHARED TABLE app.bad (id BIGINT PRIMARY KEY) LOCATION {}",
            lit(&format!("{}/bad/${{user_id}}/", path_str(&base)))
        ),
        "INVALID_TABLE_DEFINITION",
    )
    .await;

    for (user, n) in [("alice", 2), ("bob", 3)] {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=n, "placed"),
        )
        .await;
    }
    node.exec(
        &token("alice", false),
        "INSERT INTO app.conv (id, title) VALUES ('c1', 'General'), ('c2', 'Random')",
    )
    .await;
    let before = user_snapshot(&node, "app.notes", &["alice", "bob"]).await;
    let conv = node
        .query(&admin_token(), "SELECT * FROM app.conv ORDER BY id")
        .await;
    flush(&node, "app.notes").await;
    flush(&node, "app.conv").await;

    for (user, n) in [("alice", 2), ("bob", 3)] {
        let files = local_files(&base.join("cold").join(user).join("notes"));
        assert!(
            !files.is_empty(),
            "{user}'s files are under LOCATION with ${{user_id}} = {user}"
        );
        for file in &files {
            assert!(
                !path_of(file).contains('/'),
                "directly in the location: {}",
                path_of(file)
            );
            check_file_format(file, &["id", "owner", "body", "n"]);
        }
        let data = all_data(&files);
        assert_eq!(data.len() as i64, n);
        assert!(
            data.iter().all(|r| r["owner"] == user),
            "{user}'s rows only"
        );
    }
    let shared = local_files(&shared_loc);
    assert!(
        !shared.is_empty(),
        "the SHARED table's files are in its LOCATION"
    );
    for file in &shared {
        assert!(!path_of(file).contains('/'), "directly in the location");
        check_file_format(file, &["id", "title"]);
    }
    assert_rows_match_parquet(&conv, &all_data(&shared), "id", &[], &[], "app.conv");
    assert!(
        local_files(&default_storage(&node)).is_empty(),
        "nothing on the default location for tables with a LOCATION"
    );
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &["alice", "bob"]).await,
        "after flush to LOCATION",
    );
    assert_eq!(
        node.query(&admin_token(), "SELECT * FROM app.conv ORDER BY id")
            .await,
        conv
    );
}

// ---------------------------------------------------------------------------------------------
// Changing flushed rows
// ---------------------------------------------------------------------------------------------

/// The expected state of `app.docs`: live rows and soft-deleted rows, `id -> (title, n)`.
#[derive(Default)]
struct Docs {
    live: BTreeMap<i64, (String, i64)>,
    deleted: BTreeMap<i64, (String, i64)>,
}

impl Docs {
    fn rows(map: &BTreeMap<i64, (String, i64)>) -> Vec<Value> {
        map.iter()
            .map(|(id, (title, n))| json!({"id": id, "title": title, "n": n}))
            .collect()
    }

    async fn check(&self, node: &TestNode, when: &str) {
        let t = token("alice", false);
        assert_eq!(
            node.query(&t, "SELECT id, title, n FROM app.docs ORDER BY id")
                .await,
            Self::rows(&self.live),
            "{when}: the newest version of each live key"
        );
        assert_once(&node, &t, "app.docs", self.live.len() as i64, when).await;
        assert_eq!(
            node.query(
                &t,
                "SELECT id, title, n FROM app.docs WHERE _deleted = true ORDER BY id"
            )
            .await,
            Self::rows(&self.deleted),
            "{when}: each deleted key once, with its last values"
        );
        let all = node
            .count(&t, "SELECT COUNT(*) FROM app.docs WHERE _deleted = true")
            .await
            + node
                .count(&t, "SELECT COUNT(*) FROM app.docs WHERE _deleted = false")
                .await;
        assert_eq!(
            all,
            (self.live.len() + self.deleted.len()) as i64,
            "{when}: one version per key, deleted or not"
        );
        let sum: i64 = self.live.values().map(|(_, n)| n).sum();
        assert_eq!(
            node.count(&t, "SELECT SUM(n) FROM app.docs").await,
            sum,
            "{when}: aggregates see one version per key"
        );
        for (id, (title, _)) in self.live.iter().take(4) {
            assert_eq!(
                node.scalar(&t, &format!("SELECT title FROM app.docs WHERE id = {id}"))
                    .await,
                json!(title),
                "{when}: point read of id {id}"
            );
        }
        for id in self.deleted.keys() {
            assert!(
                node.query(&t, &format!("SELECT id FROM app.docs WHERE id = {id}"))
                    .await
                    .is_empty(),
                "{when}: deleted id {id} is hidden from a point read"
            );
        }
    }

    fn update(&mut self, ids: &[i64], f: impl Fn(&mut (String, i64))) {
        for id in ids {
            f(self.live.get_mut(id).expect("live id"));
        }
    }

    fn delete(&mut self, id: i64) {
        let row = self.live.remove(&id).expect("live id");
        self.deleted.insert(id, row);
    }
}

#[tokio::test]
async fn update_and_delete_of_flushed_rows() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.docs (id BIGINT PRIMARY KEY, title TEXT, n INT) \
         FLUSH POLICY ROWS 1000000",
    )
    .await;
    let values: Vec<String> = (1..=10).map(|i| format!("({i}, 't{i}', {i})")).collect();
    node.exec(
        &alice,
        &format!(
            "INSERT INTO app.docs (id, title, n) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let mut docs = Docs::default();
    for i in 1..=10 {
        docs.live.insert(i, (format!("t{i}"), i));
    }
    flush(&node, "app.docs").await;
    docs.check(&node, "after the first flush").await;

    // Changes of rows that are only in Parquet.
    assert_eq!(
        node.affected(
            &alice,
            "UPDATE app.docs SET title = 'edited', n = n + 100 WHERE id IN (1, 2, 3)"
        )
        .await,
        3
    );
    docs.update(&[1, 2, 3], |r| {
        r.0 = "edited".into();
        r.1 += 100;
    });
    assert_eq!(
        node.affected(&alice, "UPDATE app.docs SET n = n + 1 WHERE n >= 8")
            .await,
        6,
        "a scan over flushed and updated rows matches 8, 9, 10 and 101, 102, 103"
    );
    docs.update(&[1, 2, 3, 8, 9, 10], |r| r.1 += 1);
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.docs WHERE id = 4")
            .await,
        1
    );
    docs.delete(4);
    docs.check(&node, "after UPDATE/DELETE of flushed rows")
        .await;
    assert_eq!(
        node.affected(&alice, "DELETE FROM app.docs WHERE id = 4")
            .await,
        0,
        "a deleted flushed row is not matched again"
    );

    let job = flush(&node, "app.docs").await;
    assert!(result_rows(&job) >= 1, "{}", pretty(&job));
    docs.check(&node, "after the second flush").await;

    // Newest version in the second file, older ones in the first.
    node.exec(
        &alice,
        "UPDATE app.docs SET title = 'edited twice' WHERE id = 1",
    )
    .await;
    docs.update(&[1], |r| r.0 = "edited twice".into());
    node.exec(&alice, "DELETE FROM app.docs WHERE id = 5").await;
    docs.delete(5);
    node.exec(&alice, "UPDATE app.docs SET title = 'late' WHERE id = 10")
        .await;
    docs.update(&[10], |r| r.0 = "late".into());
    docs.check(&node, "hot changes over two files").await;
    flush(&node, "app.docs").await;
    docs.check(&node, "after the third flush").await;

    let deleted = node
        .query(
            &alice,
            "SELECT id, _deleted FROM app.docs WHERE _deleted = true ORDER BY id",
        )
        .await;
    assert_eq!(
        deleted,
        [
            json!({"id": 4, "_deleted": true}),
            json!({"id": 5, "_deleted": true})
        ]
    );
    let [hot, _, _, _, _] = stat_numbers(&node, "app.docs").await;
    assert_eq!(hot, 0, "everything flushed");
}

#[tokio::test]
async fn primary_keys_are_checked_against_flushed_rows() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE USER TABLE app.keys (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY ROWS 1000000",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.keys (id, v) VALUES (1, 'a1'), (2, 'a2'), (3, 'a3'), (4, 'a4'), (5, 'a5')",
    )
    .await;
    flush(&node, "app.keys").await;

    node.expect_error(
        &alice,
        "INSERT INTO app.keys (id, v) VALUES (3, 'dup')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.keys (id, v) VALUES (6, 'new'), (1, 'dup')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    assert!(
        node.query(&alice, "SELECT id FROM app.keys WHERE id = 6")
            .await
            .is_empty(),
        "a failed INSERT writes none of its rows"
    );
    // Another partition: the same key is free.
    node.exec(&bob, "INSERT INTO app.keys (id, v) VALUES (3, 'b3')")
        .await;

    // Deleted in the hot tier over a cold row, then inserted again.
    node.exec(&alice, "DELETE FROM app.keys WHERE id = 2").await;
    node.exec(&alice, "INSERT INTO app.keys (id, v) VALUES (2, 'again')")
        .await;
    // Deleted and flushed, then inserted again.
    node.exec(&alice, "DELETE FROM app.keys WHERE id = 3").await;
    flush(&node, "app.keys").await;
    node.exec(&alice, "INSERT INTO app.keys (id, v) VALUES (3, 'back')")
        .await;
    node.expect_error(
        &alice,
        "INSERT INTO app.keys (id, v) VALUES (3, 'dup')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    flush(&node, "app.keys").await;
    node.expect_error(
        &alice,
        "INSERT INTO app.keys (id, v) VALUES (2, 'dup')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;

    let expected = [
        json!({"id": 1, "v": "a1"}),
        json!({"id": 2, "v": "again"}),
        json!({"id": 3, "v": "back"}),
        json!({"id": 4, "v": "a4"}),
        json!({"id": 5, "v": "a5"}),
    ];
    assert_eq!(
        node.query(&alice, "SELECT id, v FROM app.keys ORDER BY id")
            .await,
        expected
    );
    assert_once(&node, &alice, "app.keys", 5, "alice after re-inserts").await;
    assert!(
        node.query(&alice, "SELECT id FROM app.keys WHERE _deleted = true")
            .await
            .is_empty(),
        "a re-inserted key replaces its deleted row"
    );
    assert_eq!(
        node.query(&bob, "SELECT id, v FROM app.keys").await,
        [json!({"id": 3, "v": "b3"})]
    );
}

// ---------------------------------------------------------------------------------------------
// Repeated scans (the hot partition cache)
// ---------------------------------------------------------------------------------------------

/// `kalamdb_hot_cache_lookups_total{result="hit"}` from `/metrics`.
async fn cache_hits(node: &TestNode) -> i64 {
    node.metric("kalamdb_hot_cache_lookups_total{result=\"hit\"}")
        .await
}

/// A user's rows of a notes table, `id` to `body`, as the table holds them now.
type Notes = BTreeMap<i64, String>;

/// Scans `table` as `user` three times (the third one is served from the hot cache when
/// nothing changed) and checks each answer against `expected`.
async fn scan_thrice(node: &TestNode, user: &str, table: &str, expected: &Notes, when: &str) {
    let token = token(user, false);
    for round in 1..=3 {
        let rows = node
            .query(
                &token,
                &format!("SELECT id, owner, body FROM {table} ORDER BY id"),
            )
            .await;
        let got: Notes = rows
            .iter()
            .map(|r| {
                assert_eq!(r["owner"], user, "{user} {when}: another user's row: {r}");
                (
                    int(&r["id"], when),
                    r["body"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(&got, expected, "{user} {when} (scan {round})");
        assert_eq!(got.len(), rows.len(), "{user} {when}: one row per id");
    }
}

fn notes_of(user: &str, ids: std::ops::RangeInclusive<i64>, tag: &str) -> Notes {
    ids.map(|i| (i, format!("{tag} {user} {i}"))).collect()
}

/// A partition scanned again and again is served from the hot cache (ADR 0017), and no
/// query ever sees rows older than the last acknowledged change: INSERT, UPDATE, DELETE,
/// FLUSH TABLE and ALTER TABLE each show in the very next query, on hot-only and on
/// merged (hot + Parquet) partitions; users never see each other's cached rows; a table
/// dropped and created again under its name starts empty.
#[tokio::test]
async fn repeated_scans_are_cached_and_never_stale() {
    let node = TestNode::start().await;
    let (alice, bob) = (token("alice", false), token("bob", false));
    let table = "app.cached";
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("cached", "FLUSH POLICY ROWS 1000000"))
        .await;
    node.exec(&alice, &insert_notes("cached", "alice", 1..=20, "a"))
        .await;
    node.exec(&bob, &insert_notes("cached", "bob", 1..=5, "b"))
        .await;
    let mut mine = notes_of("alice", 1..=20, "a");
    let theirs = notes_of("bob", 1..=5, "b");

    let hits = cache_hits(&node).await;
    scan_thrice(&node, "alice", table, &mine, "hot only").await;
    scan_thrice(&node, "bob", table, &theirs, "hot only").await;
    let after = cache_hits(&node).await;
    assert!(
        after >= hits + 2,
        "each user's third scan is a cache hit: {hits} -> {after}"
    );

    // Hot-only changes.
    node.exec(&alice, "UPDATE app.cached SET body = 'edited' WHERE id = 3")
        .await;
    mine.insert(3, "edited".into());
    scan_thrice(&node, "alice", table, &mine, "after UPDATE").await;
    node.exec(&alice, "DELETE FROM app.cached WHERE id = 4")
        .await;
    mine.remove(&4);
    scan_thrice(&node, "alice", table, &mine, "after DELETE").await;
    node.exec(&alice, &insert_notes("cached", "alice", 21..=21, "a"))
        .await;
    mine.extend(notes_of("alice", 21..=21, "a"));
    scan_thrice(&node, "alice", table, &mine, "after INSERT").await;
    // Another user's writes change nothing for alice.
    node.exec(&bob, "DELETE FROM app.cached WHERE id = 1").await;
    scan_thrice(&node, "alice", table, &mine, "after bob's DELETE").await;
    let mut theirs = theirs;
    theirs.remove(&1);
    scan_thrice(&node, "bob", table, &theirs, "after bob's DELETE").await;

    // Flushed: the hot tier is empty, then holds changes over the Parquet rows.
    flush(&node, table).await;
    scan_thrice(&node, "alice", table, &mine, "after FLUSH TABLE").await;
    node.exec(
        &alice,
        "UPDATE app.cached SET body = 'over cold' WHERE id = 5",
    )
    .await;
    mine.insert(5, "over cold".into());
    scan_thrice(&node, "alice", table, &mine, "hot change over cold").await;
    node.exec(&alice, "UPDATE app.cached SET body = 'again' WHERE id = 5")
        .await;
    mine.insert(5, "again".into());
    node.exec(&alice, "DELETE FROM app.cached WHERE id = 6")
        .await;
    mine.remove(&6);
    scan_thrice(&node, "alice", table, &mine, "second hot change over cold").await;
    flush(&node, table).await;
    scan_thrice(&node, "alice", table, &mine, "after the second FLUSH TABLE").await;
    scan_thrice(&node, "bob", table, &theirs, "after the second FLUSH TABLE").await;

    // A new schema version: cached rows of the old one are not served in its shape.
    node.exec(
        &alice,
        "UPDATE app.cached SET body = 'pre-alter' WHERE id = 7",
    )
    .await;
    mine.insert(7, "pre-alter".into());
    scan_thrice(&node, "alice", table, &mine, "before ALTER").await;
    node.admin("ALTER TABLE app.cached ADD COLUMN extra TEXT DEFAULT 'x'")
        .await;
    let extra = node
        .query(
            &alice,
            "SELECT id, extra FROM app.cached WHERE extra = 'x' ORDER BY id",
        )
        .await;
    assert_eq!(
        extra.len(),
        mine.len(),
        "every row reads the new column's default after ALTER: {extra:?}"
    );
    scan_thrice(&node, "alice", table, &mine, "after ALTER").await;

    // Dropped and created again: the cached rows of the old table are gone with it.
    let body = node.admin("DROP TABLE app.cached").await;
    wait_job(
        &node,
        &crate::drop::purge_job(&body, "DROP TABLE app.cached"),
    )
    .await;
    node.admin(&notes_ddl("cached", "FLUSH POLICY ROWS 1000000"))
        .await;
    scan_thrice(&node, "alice", table, &Notes::new(), "re-created").await;
    node.exec(&alice, &insert_notes("cached", "alice", 1..=1, "new"))
        .await;
    scan_thrice(
        &node,
        "alice",
        table,
        &notes_of("alice", 1..=1, "new"),
        "re-created, one row",
    )
    .await;
    assert!(
        cache_hits(&node).await > after,
        "later scans were served from the cache too"
    );
}

// ---------------------------------------------------------------------------------------------
// Flush policies
// ---------------------------------------------------------------------------------------------

fn fast_checks() -> NodeOptions {
    NodeOptions::default().env("KALAMDB_FLUSH_CHECK_INTERVAL_MS", "100")
}

#[tokio::test]
async fn rows_policy_flushes_automatically() {
    let node = TestNode::start_with_options(fast_checks()).await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.auto (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY ROWS 50")
        .await;
    node.admin("CREATE SHARED TABLE app.canary (id BIGINT PRIMARY KEY) FLUSH POLICY ROWS 1")
        .await;
    let values: Vec<String> = (1..=49).map(|i| format!("({i}, 'v{i}')")).collect();
    node.exec(
        &alice,
        &format!("INSERT INTO app.auto (id, v) VALUES {}", values.join(", ")),
    )
    .await;

    // The canary table (ROWS 1) proves that the policy checker has run, twice, since the 49
    // rows were written: no sleep decides this.
    let mut seen: Vec<String> = Vec::new();
    for i in 1..=2 {
        node.exec(&alice, &format!("INSERT INTO app.canary (id) VALUES ({i})"))
            .await;
        let job = wait_completed_flush(&node, "app", "canary", &seen, POLICY_TIMEOUT).await;
        seen.push(job["job_id"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        flush_jobs(&node, "app", "auto").await.is_empty(),
        "49 rows under ROWS 50 are not flushed"
    );
    assert_eq!(stat_numbers(&node, "app.auto").await[0], 49);

    node.exec(&alice, "INSERT INTO app.auto (id, v) VALUES (50, 'v50')")
        .await;
    let job = wait_completed_flush(&node, "app", "auto", &[], POLICY_TIMEOUT).await;
    assert_eq!(result_rows(&job), 50, "{}", pretty(&job));
    let [hot, cold, files, _, _] = stat_numbers(&node, "app.auto").await;
    assert_eq!((hot, cold), (0, 50));
    assert_eq!(
        files as usize,
        local_files(&default_storage(&node).join("app/auto")).len()
    );
    assert_once(&node, &alice, "app.auto", 50, "after the automatic flush").await;
    assert_eq!(
        node.scalar(&alice, "SELECT v FROM app.auto WHERE id = 50")
            .await,
        json!("v50")
    );
}

/// A query while flushes commit: every row acknowledged before the query started is counted,
/// once. (A flush commit deletes hot rows and publishes their file in two steps; a read
/// between them must not miss the rows.)
#[tokio::test]
async fn queries_during_flushes_see_every_row_once() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    const ROWS: i64 = 400;
    let node = TestNode::start_with_options(fast_checks()).await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.busy (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY ROWS 10")
        .await;
    let acked = AtomicI64::new(0);
    let writing = AtomicBool::new(true);
    let writer = async {
        for i in 1..=ROWS {
            node.exec(
                &alice,
                &format!("INSERT INTO app.busy (id, v) VALUES ({i}, 'v{i}')"),
            )
            .await;
            acked.store(i, Ordering::SeqCst);
            if i % 25 == 0 {
                node.admin("FLUSH TABLE app.busy").await;
            }
        }
        writing.store(false, Ordering::SeqCst);
    };
    let reader = async {
        let mut queries = 0;
        while writing.load(Ordering::SeqCst) {
            let before = acked.load(Ordering::SeqCst);
            let rows = node
                .query(
                    &alice,
                    "SELECT COUNT(*) AS total_rows, COUNT(DISTINCT id) AS distinct_ids, \
                     MAX(id) AS max_id FROM app.busy",
                )
                .await;
            let total = int(&rows[0]["total_rows"], "total_rows");
            let distinct = int(&rows[0]["distinct_ids"], "distinct_ids");
            assert_eq!(total, distinct, "a row counted twice: {rows:?}");
            assert!(
                total >= before,
                "{before} rows were acknowledged before the query, it counted {total}"
            );
            queries += 1;
        }
        queries
    };
    let ((), queries) = tokio::join!(writer, reader);
    assert!(
        queries > 10,
        "the reader ran alongside the writer ({queries} queries)"
    );
    assert_once(&node, &alice, "app.busy", ROWS, "after the writes").await;
    assert!(
        flushed_rows(&node, "app", "busy").await > 0,
        "flushes ran while the reader read"
    );
}

#[tokio::test]
async fn interval_policy_flushes_waiting_rows() {
    let node = TestNode::start_with_options(fast_checks()).await;
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.timed (id BIGINT PRIMARY KEY, v TEXT) FLUSH POLICY INTERVAL '1s'",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.timed (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    // Whether the policy also records empty runs is not part of the contract: count rows.
    wait_stats(&node, "app", "timed", 0, 3, POLICY_TIMEOUT).await;
    assert_eq!(
        settled_flushed_rows(&node, "app", "timed", 3, POLICY_TIMEOUT).await,
        3
    );

    // Rows written later are flushed by a later run of the policy.
    node.exec(
        &alice,
        "INSERT INTO app.timed (id, v) VALUES (4, 'd'), (5, 'e')",
    )
    .await;
    wait_stats(&node, "app", "timed", 0, 5, POLICY_TIMEOUT).await;
    assert_eq!(
        settled_flushed_rows(&node, "app", "timed", 5, POLICY_TIMEOUT).await,
        5
    );
    assert!(
        flush_jobs(&node, "app", "timed")
            .await
            .iter()
            .filter(|j| j["status"] == "completed" && result_rows(j) > 0)
            .count()
            >= 2,
        "two runs of the policy flushed rows"
    );
    assert_eq!(
        node.query(&alice, "SELECT id, v FROM app.timed ORDER BY id")
            .await,
        [
            json!({"id": 1, "v": "a"}),
            json!({"id": 2, "v": "b"}),
            json!({"id": 3, "v": "c"}),
            json!({"id": 4, "v": "d"}),
            json!({"id": 5, "v": "e"}),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// SHOW TABLE STATS and system.jobs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn show_table_stats_before_and_after_flush() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", "FLUSH POLICY ROWS 1000000"))
        .await;
    for (user, n) in [("alice", 3), ("bob", 5), ("carol", 7)] {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=n, "s"),
        )
        .await;
    }
    let body = node.admin("SHOW TABLE STATS app.notes").await;
    assert_eq!(
        column_names(&body, 0),
        [
            "table_name",
            "namespace",
            "hot_rows",
            "cold_rows",
            "parquet_files",
            "parquet_bytes",
            "users"
        ],
        "SHOW TABLE STATS columns: {}",
        pretty(&body)
    );
    let row = stats(&node, "app.notes").await;
    assert_eq!(row["table_name"], "notes");
    assert_eq!(row["namespace"], "app");
    assert_eq!(
        stat_numbers(&node, "app.notes").await,
        [15, 0, 0, 0, 3],
        "before a flush: 15 hot rows of 3 users"
    );

    flush(&node, "app.notes").await;
    let files = local_files(&default_storage(&node).join("app/notes"));
    assert_eq!(
        stat_numbers(&node, "app.notes").await,
        [0, 15, files.len() as i64, total_size(&files), 3],
        "after a flush: all cold, files and bytes as on disk"
    );

    node.exec(
        &token("alice", false),
        &insert_notes("notes", "alice", 10..=11, "later"),
    )
    .await;
    node.exec(
        &token("dave", false),
        &insert_notes("notes", "dave", 1..=1, "new user"),
    )
    .await;
    let [hot, cold, pfiles, _, users] = stat_numbers(&node, "app.notes").await;
    assert_eq!((hot, cold, pfiles, users), (3, 15, files.len() as i64, 4));

    node.expect_error(&admin, "SHOW TABLE STATS app.nosuch", "TABLE_NOT_FOUND")
        .await;
}

const JOB_COLUMNS: [&str; 16] = [
    "job_id",
    "job_type",
    "namespace",
    "table_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "duration_ms",
    "parameters",
    "result",
    "trace",
    "memory_used_mb",
    "cpu_used_percent",
    "node_id",
    "error_message",
];

#[tokio::test]
async fn flush_jobs_are_recorded_in_system_jobs() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let alice = token("alice", false);
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", "FLUSH POLICY ROWS 1000000"))
        .await;
    node.exec(&alice, &insert_notes("notes", "alice", 1..=4, "job"))
        .await;
    node.exec(
        &token("bob", false),
        &insert_notes("notes", "bob", 1..=2, "job"),
    )
    .await;

    let started = Utc::now() - TimeDelta::seconds(5);
    let job = flush(&node, "app.notes").await;
    let finished = Utc::now() + TimeDelta::seconds(5);

    // Operators graph flushes from /metrics.
    let (status, _, metrics) = node.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "kalamdb_flush_jobs_total{status=\"completed\"} 1",
        "kalamdb_flush_rows_total 6",
        "kalamdb_flush_duration_seconds_count 1",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }

    let body = node.admin("SELECT * FROM system.jobs").await;
    let names = column_names(&body, 0);
    for expected in JOB_COLUMNS {
        assert!(
            names.iter().any(|n| n == expected),
            "system.jobs lacks column {expected}: {names:?}"
        );
    }
    assert_eq!(job["job_type"], "flush", "{}", pretty(&job));
    assert_eq!(job["namespace"], "app");
    assert_eq!(job["table_name"], "notes");
    assert_eq!(job["status"], "completed");
    assert!(
        job["node_id"].as_str().is_some_and(|s| !s.is_empty()),
        "node_id: {}",
        pretty(&job)
    );
    assert!(
        job["error_message"].is_null(),
        "a completed job has no error_message: {}",
        pretty(&job)
    );
    let start = parse_utc(&job["start_time"], "system.jobs start_time");
    let end = parse_utc(&job["end_time"], "system.jobs end_time");
    assert!(start >= started && end <= finished, "{start} .. {end}");
    assert!(start <= end, "start_time {start} <= end_time {end}");
    let duration = job["duration_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("duration_ms is a number: {}", pretty(&job)));
    assert!(duration >= 0.0, "duration_ms {duration}");
    let span = (end - start).num_milliseconds() as f64;
    assert!(
        (duration - span).abs() <= 1000.0,
        "duration_ms {duration} matches end_time - start_time ({span} ms)"
    );
    assert!(
        json_cell(&job["parameters"]).is_array(),
        "parameters is a JSON array: {}",
        pretty(&job)
    );
    let result = job_result(&job);
    assert_eq!(result["rows"], 6);
    let files = local_files(&default_storage(&node).join("app/notes"));
    assert_eq!(int(&result["files"], "files"), files.len() as i64);
    assert_eq!(int(&result["bytes"], "bytes"), total_size(&files));
    assert!(
        job["trace"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "trace is non-empty text: {}",
        pretty(&job)
    );

    // Users see only their own jobs, and may not flush.
    let job_id = job["job_id"].as_str().unwrap().to_string();
    let mine = node.query(&alice, "SELECT * FROM system.jobs").await;
    for row in &mine {
        assert_eq!(
            row["user_id"],
            "alice",
            "a user sees only rows with their user_id: {}",
            pretty(row)
        );
    }
    assert!(
        node.query(
            &alice,
            &format!(
                "SELECT job_id FROM system.jobs WHERE job_id = {}",
                lit(&job_id)
            )
        )
        .await
        .is_empty(),
        "alice does not see the admin's flush job"
    );
    node.expect_error(&alice, "FLUSH TABLE app.notes", "FORBIDDEN")
        .await;
    node.expect_error(&admin, "FLUSH TABLE app.nosuch", "TABLE_NOT_FOUND")
        .await;
    assert_eq!(
        flush_jobs(&node, "app", "notes").await.len(),
        1,
        "refused FLUSH statements start no job"
    );
    assert_eq!(
        node.count(
            &admin,
            &format!(
                "SELECT COUNT(*) FROM system.jobs WHERE job_id = {}",
                lit(&job_id)
            )
        )
        .await,
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn flushed_data_survives_restarts() {
    let node = TestNode::start().await;
    create_kinds(&node).await;
    node.admin(&notes_ddl("notes", "FLUSH POLICY ROWS 1000000"))
        .await;
    for user in USERS {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=10, "r"),
        )
        .await;
    }
    let first = flush(&node, "app.kinds").await;
    flush(&node, "app.notes").await;
    // Hot changes on top of cold rows.
    node.exec(
        &token("alice", false),
        "UPDATE app.notes SET body = 'hot' WHERE id = 1",
    )
    .await;
    node.exec(&token("bob", false), "DELETE FROM app.notes WHERE id = 2")
        .await;
    let alice = token("alice", false);
    let kinds = answers(&node, &alice, &KINDS_QUERIES).await;
    let notes = user_snapshot(&node, "app.notes", &USERS).await;
    let kinds_stats = stat_numbers(&node, "app.kinds").await;

    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_same_answers(
        &kinds,
        &answers(&node, &alice, &KINDS_QUERIES).await,
        &KINDS_QUERIES,
        "after a restart",
    );
    assert_same_snapshot(
        &notes,
        &user_snapshot(&node, "app.notes", &USERS).await,
        "after a restart",
    );
    assert_eq!(stat_numbers(&node, "app.kinds").await, kinds_stats);
    let kept = wait_job(&node, first["job_id"].as_str().unwrap()).await;
    assert_eq!(
        kept["status"], "completed",
        "job history survives a restart"
    );

    // Flush the hot changes, then kill -9.
    flush(&node, "app.notes").await;
    assert_eq!(stat_numbers(&node, "app.notes").await[0], 0);
    let dir = node.kill9().await;
    let node = TestNode::start_in(&dir).await;
    assert_same_snapshot(
        &notes,
        &user_snapshot(&node, "app.notes", &USERS).await,
        "after kill -9",
    );
    assert_same_answers(
        &kinds,
        &answers(&node, &alice, &KINDS_QUERIES).await,
        &KINDS_QUERIES,
        "after kill -9",
    );
    for user in USERS {
        let n = if user == "bob" { 9 } else { 10 };
        assert_once(&node, &token(user, false), "app.notes", n, user).await;
    }
    // Writes and flushes go on.
    node.exec(&alice, &insert_notes("notes", "alice", 11..=12, "after"))
        .await;
    flush(&node, "app.notes").await;
    assert_once(&node, &alice, "app.notes", 12, "alice after restarts").await;
}

// ---------------------------------------------------------------------------------------------
// Storage locations
// ---------------------------------------------------------------------------------------------

const LOCATION_COLUMNS: [&str; 6] = [
    "location_name",
    "location_type",
    "path",
    "credentials_ref",
    "created_at",
    "usage_count",
];

#[tokio::test]
async fn local_location_is_built_in_and_admin_only() {
    let dir = NodeDir::new();
    let store = dir.base().join("store");
    let node = TestNode::start_with(
        &dir,
        NodeOptions::default().env("KALAMDB_STORAGE_DIR", path_str(&store)),
    )
    .await;
    let alice = token("alice", false);
    let body = node.admin("SELECT * FROM system.storage_locations").await;
    let names = column_names(&body, 0);
    for expected in LOCATION_COLUMNS {
        assert!(
            names.iter().any(|n| n == expected),
            "system.storage_locations lacks {expected}: {names:?}"
        );
    }
    let local = location_row(&node, "local")
        .await
        .expect("the built-in location `local`");
    assert_eq!(local["location_type"], "filesystem");
    assert!(
        local["path"]
            .as_str()
            .is_some_and(|p| p.trim_end_matches('/').ends_with(path_str(&store))),
        "local's path is KALAMDB_STORAGE_DIR: {local}"
    );
    assert!(local["credentials_ref"].is_null(), "{local}");
    parse_utc(&local["created_at"], "local created_at");

    node.expect_error(
        &alice,
        "SELECT * FROM system.storage_locations",
        "FORBIDDEN",
    )
    .await;
    node.expect_error(
        &alice,
        &fs_location_sql("mine", &dir.base().join("mine")),
        "FORBIDDEN",
    )
    .await;
    node.expect_error(
        &alice,
        "DELETE FROM system.storage_locations WHERE location_name = 'local'",
        "FORBIDDEN",
    )
    .await;
    assert!(location_row(&node, "mine").await.is_none());

    // LOCATION REFERENCE 'local' lays files out as the default does, and counts as a use.
    let used = usage_count(&node, "local").await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl(
        "byref",
        "LOCATION REFERENCE 'local' FLUSH POLICY ROWS 1000000",
    ))
    .await;
    assert_eq!(usage_count(&node, "local").await, used + 1);
    node.exec(&alice, &insert_notes("byref", "alice", 1..=3, "l"))
        .await;
    flush(&node, "app.byref").await;
    assert_per_user_files(
        &local_files(&store.join("app/byref")),
        &[("alice", 3)],
        "LOCATION REFERENCE 'local'",
    );
}

/// A moto server with `bucket` and a node whose credential set `moto` points at it (written
/// to the default `<data_dir>/credentials`).
async fn node_with_s3(bucket: &str, opts: NodeOptions) -> (TestNode, S3Server) {
    let s3 = S3Server::start().await;
    s3.create_bucket(bucket).await;
    let dir = NodeDir::new();
    write_credentials(&dir.data_dir().join("credentials"), "moto", &s3.endpoint());
    let node = TestNode::start_with(&dir, opts).await;
    (node, s3)
}

#[tokio::test]
async fn s3_location_round_trip() {
    let (node, s3) = node_with_s3("kalam-it", NodeOptions::default()).await;
    let admin = admin_token();
    let before_insert = Utc::now() - TimeDelta::seconds(5);
    assert_eq!(
        node.affected(
            &admin,
            &s3_location_sql("s3loc", "s3://kalam-it/prefix/", "moto")
        )
        .await,
        1
    );
    let row = location_row(&node, "s3loc")
        .await
        .expect("the new location");
    assert_eq!(row["location_type"], "s3");
    assert_eq!(row["path"], "s3://kalam-it/prefix/");
    assert_eq!(row["credentials_ref"], "moto");
    assert!(parse_utc(&row["created_at"], "created_at") >= before_insert);
    assert_eq!(int(&row["usage_count"], "usage_count"), 0);

    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl(
        "notes",
        "LOCATION REFERENCE 's3loc' FLUSH POLICY ROWS 1000000",
    ))
    .await;
    assert_eq!(usage_count(&node, "s3loc").await, 1);
    let counts = [("alice", 4), ("bob", 6)];
    for (user, n) in counts {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=n, "s3"),
        )
        .await;
    }
    let users = ["alice", "bob"];
    let before = user_snapshot(&node, "app.notes", &users).await;
    let job = flush(&node, "app.notes").await;
    assert_eq!(result_rows(&job), 10, "{}", pretty(&job));
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &users).await,
        "after a flush to S3",
    );

    let objects = s3_files(&s3, "kalam-it", "prefix/");
    let in_table: Vec<Value> = objects
        .iter()
        .filter_map(|f| {
            let rest = path_of(f).strip_prefix("app/notes/")?.to_string();
            let mut f = f.clone();
            f["path"] = json!(rest);
            Some(f)
        })
        .collect();
    assert_eq!(
        in_table.len(),
        objects.len(),
        "every object is under <prefix>/app/notes/: {:?}",
        paths(&objects)
    );
    assert_per_user_files(&in_table, &counts, "app.notes on S3");
    assert_eq!(
        int(&job_result(&job)["files"], "files"),
        objects.len() as i64
    );
    assert!(
        local_files(node.dir().base()).is_empty(),
        "nothing written to the local file system for an S3 table"
    );
    let [hot, cold, files, bytes, users_n] = stat_numbers(&node, "app.notes").await;
    assert_eq!(
        (hot, cold, files, users_n),
        (0, 10, objects.len() as i64, 2)
    );
    assert_eq!(bytes, total_size(&objects));

    // The location, the table and its S3 data survive a restart.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &users).await,
        "after a restart",
    );
    assert_eq!(usage_count(&node, "s3loc").await, 1);
    no_secret(&node.stderr(), "the node's stderr");
}

#[tokio::test]
async fn unreachable_location_is_refused() {
    let (node, _s3) = node_with_s3("present", NodeOptions::default()).await;
    // Started after the live server, so that it cannot get the same port.
    let mut dead = S3Server::start().await;
    let dead_endpoint = dead.endpoint();
    dead.stop().await;
    write_credentials(&node.data_dir().join("credentials"), "dead", &dead_endpoint);
    let admin = admin_token();

    for (name, sql) in [
        ("down", s3_location_sql("down", "s3://present/p/", "dead")),
        (
            "nobucket",
            s3_location_sql("nobucket", "s3://missing-bucket/p/", "moto"),
        ),
    ] {
        let resp = node.sql(&admin, &sql).await;
        let err = node.assert_error(&resp, "LOCATION_UNREACHABLE", &sql);
        assert!(
            err["details"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "{name}: error.details says why: {}",
            pretty(&resp.1)
        );
        no_secret(&resp.1.to_string(), "a LOCATION_UNREACHABLE error");
        assert!(
            location_row(&node, name).await.is_none(),
            "{name}: an unreachable location is not added"
        );
    }
    // The same name is free once the location is reachable.
    node.admin(&s3_location_sql("down", "s3://present/p/", "moto"))
        .await;
    assert!(location_row(&node, "down").await.is_some());
    no_secret(&node.stderr(), "the node's stderr");
}

#[tokio::test]
async fn duplicate_location_name_is_409() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let base = node.dir().base().to_path_buf();
    node.admin(&fs_location_sql("fs1", &base.join("fs1"))).await;
    let error = node
        .expect_error(
            &admin,
            &fs_location_sql("fs1", &base.join("other")),
            "STORAGE_LOCATION_ALREADY_EXISTS",
        )
        .await;
    node.assert_no_leak(&error, "duplicate location");
    node.expect_error(
        &admin,
        &fs_location_sql("local", &base.join("other")),
        "STORAGE_LOCATION_ALREADY_EXISTS",
    )
    .await;
    let row = location_row(&node, "fs1").await.expect("fs1");
    assert!(
        row["path"].as_str().is_some_and(|p| p.contains("fs1")),
        "a refused duplicate changes nothing: {row}"
    );
    assert_eq!(
        node.count(
            &admin,
            "SELECT COUNT(*) FROM system.storage_locations WHERE location_name IN ('fs1', 'local')"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn deleting_a_location_in_use_is_409() {
    let node = TestNode::start().await;
    let admin = admin_token();
    let base = node.dir().base().to_path_buf();
    node.admin(&fs_location_sql("fs1", &base.join("fs1"))).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin("CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'fs1'")
        .await;
    let delete = "DELETE FROM system.storage_locations WHERE location_name = 'fs1'";
    let error = node
        .expect_error(&admin, delete, "STORAGE_LOCATION_IN_USE")
        .await;
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("app.t")),
        "details name the table: {error}"
    );
    node.admin("CREATE USER TABLE app.u (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'fs1'")
        .await;
    assert_eq!(usage_count(&node, "fs1").await, 2);
    let error = node
        .expect_error(&admin, delete, "STORAGE_LOCATION_IN_USE")
        .await;
    let details = error["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("app.t") && details.contains("app.u"),
        "details name every table: {error}"
    );
    assert!(location_row(&node, "fs1").await.is_some());

    node.admin("DROP TABLE app.t").await;
    node.admin("DROP TABLE app.u").await;
    assert_eq!(usage_count(&node, "fs1").await, 0);
    assert_eq!(node.affected(&admin, delete).await, 1);
    assert!(location_row(&node, "fs1").await.is_none());
    node.expect_error(
        &admin,
        "CREATE SHARED TABLE app.v (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'fs1'",
        "STORAGE_LOCATION_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn updating_a_location_path_affects_only_new_tables() {
    let node = TestNode::start().await;
    let alice = token("alice", false);
    let base = node.dir().base().to_path_buf();
    let (old_root, new_root) = (base.join("old-root"), base.join("new-root"));
    node.admin(&fs_location_sql("fs1", &old_root)).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.t1 (id BIGINT PRIMARY KEY, v TEXT) LOCATION REFERENCE 'fs1' \
         FLUSH POLICY ROWS 1000000",
    )
    .await;
    node.exec(&alice, "INSERT INTO app.t1 (id, v) VALUES (1, 'one')")
        .await;
    flush(&node, "app.t1").await;
    let t1_files = local_files(&old_root.join("app/t1")).len();
    assert!(t1_files >= 1, "app.t1 writes to the location's path");

    assert_eq!(
        node.affected(
            &admin_token(),
            &format!(
                "UPDATE system.storage_locations SET path = {} WHERE location_name = 'fs1'",
                lit(path_str(&new_root))
            )
        )
        .await,
        1
    );
    let row = location_row(&node, "fs1").await.expect("fs1");
    assert!(
        row["path"].as_str().is_some_and(|p| p.contains("new-root")),
        "{row}"
    );
    node.admin(
        "CREATE SHARED TABLE app.t2 (id BIGINT PRIMARY KEY, v TEXT) LOCATION REFERENCE 'fs1' \
         FLUSH POLICY ROWS 1000000",
    )
    .await;
    assert_eq!(usage_count(&node, "fs1").await, 2);
    node.exec(&alice, "INSERT INTO app.t1 (id, v) VALUES (2, 'two')")
        .await;
    node.exec(&alice, "INSERT INTO app.t2 (id, v) VALUES (1, 'uno')")
        .await;
    flush(&node, "app.t1").await;
    flush(&node, "app.t2").await;

    assert!(
        local_files(&old_root.join("app/t1")).len() > t1_files,
        "the older table keeps writing to the old path"
    );
    assert!(local_files(&new_root.join("app/t1")).is_empty());
    assert_eq!(
        all_data(&local_files(&new_root.join("app/t2")))
            .iter()
            .map(|r| r["v"].clone())
            .collect::<Vec<_>>(),
        [json!("uno")],
        "the new table writes to the new path"
    );
    assert!(local_files(&old_root.join("app/t2")).is_empty());
    assert_eq!(
        node.query(&alice, "SELECT id, v FROM app.t1 ORDER BY id")
            .await,
        [json!({"id": 1, "v": "one"}), json!({"id": 2, "v": "two"})]
    );
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_eq!(
        node.query(&alice, "SELECT id, v FROM app.t1 ORDER BY id")
            .await,
        [json!({"id": 1, "v": "one"}), json!({"id": 2, "v": "two"})],
        "the old table still reads its old path after a restart"
    );
    assert_eq!(
        node.query(&alice, "SELECT id, v FROM app.t2").await,
        [json!({"id": 1, "v": "uno"})]
    );
}

#[tokio::test]
async fn unknown_location_reference_is_404() {
    let node = TestNode::start().await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    node.expect_error(
        &admin,
        "CREATE USER TABLE app.t (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'nope'",
        "STORAGE_LOCATION_NOT_FOUND",
    )
    .await;
    node.expect_error(
        &admin,
        "CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'nope'",
        "STORAGE_LOCATION_NOT_FOUND",
    )
    .await;
    assert!(
        node.query(&admin, "SHOW TABLES IN app").await.is_empty(),
        "no table is created"
    );
}

/// `system.tables`' `location` and `storage_location` of `app.<table>`.
async fn table_location(node: &TestNode, table: &str) -> (Value, Value) {
    let rows = node
        .query(
            &admin_token(),
            &format!(
                "SELECT location, storage_location FROM system.tables \
                 WHERE namespace = 'app' AND table_name = {}",
                lit(table)
            ),
        )
        .await;
    assert_eq!(rows.len(), 1, "one row of app.{table}: {rows:?}");
    (
        rows[0]["location"].clone(),
        rows[0]["storage_location"].clone(),
    )
}

#[tokio::test]
async fn default_location_setting_places_tables_without_location() {
    let dir = NodeDir::new();
    let archive = dir.base().join("archive");
    let config = dir.base().join("server.toml");
    std::fs::write(&config, "default_location = \"archive\"\n").expect("writing server.toml");
    let node = TestNode::start_with(
        &dir,
        NodeOptions::default()
            .arg("--config")
            .arg(path_str(&config)),
    )
    .await;
    let admin = admin_token();
    node.admin(&fs_location_sql("archive", &archive)).await;
    assert_eq!(usage_count(&node, "archive").await, 0);
    let local_uses = usage_count(&node, "local").await;

    // Without LOCATION: resolved at CREATE time to the configured row, as LOCATION REFERENCE.
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE SHARED TABLE app.conv (id BIGINT PRIMARY KEY, title TEXT) FLUSH POLICY ROWS 1000000",
    )
    .await;
    assert_eq!(usage_count(&node, "archive").await, 1);
    assert_eq!(usage_count(&node, "local").await, local_uses);
    assert_eq!(
        table_location(&node, "conv").await,
        (json!("reference:archive"), json!("archive")),
        "system.tables shows the configured default as a reference"
    );
    let shown = node.query(&admin, "SHOW TABLES IN app").await;
    assert_eq!(
        find_row(&shown, "table_name", "conv")["location"],
        "reference:archive"
    );
    let described = node.admin("DESCRIBE TABLE app.conv").await;
    assert!(
        result(&described, 0)["message"]
            .as_str()
            .is_some_and(|m| m.contains("location reference:archive")),
        "DESCRIBE names the location: {}",
        pretty(&described)
    );
    // STREAM tables have no location, whatever the default.
    node.admin("CREATE STREAM TABLE app.events (kind TEXT)")
        .await;
    assert_eq!(
        table_location(&node, "events").await,
        (Value::Null, Value::Null)
    );
    assert_eq!(usage_count(&node, "archive").await, 1);

    node.admin("INSERT INTO app.conv (id, title) VALUES (1, 'General'), (2, 'Random'), (3, 'Ops')")
        .await;
    let conv = node
        .query(&admin, "SELECT * FROM app.conv ORDER BY id")
        .await;
    flush(&node, "app.conv").await;
    let files = local_files(&archive.join("app/conv"));
    assert!(
        !files.is_empty(),
        "the Parquet files are under the default location's path"
    );
    for file in &files {
        assert!(
            path_of(file).ends_with(".parquet") && !path_of(file).contains('/'),
            "directly in <path>/app/conv: {}",
            path_of(file)
        );
        check_file_format(file, &["id", "title"]);
    }
    assert_rows_match_parquet(&conv, &all_data(&files), "id", &[], &[], "app.conv");
    assert!(
        local_files(&default_storage(&node)).is_empty(),
        "nothing on the built-in local location"
    );

    // A later config change affects only tables created afterwards.
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    node.admin(
        "CREATE SHARED TABLE app.later (id BIGINT PRIMARY KEY, title TEXT) FLUSH POLICY ROWS 1000000",
    )
    .await;
    assert_eq!(
        table_location(&node, "later").await,
        (json!("default"), json!("local"))
    );
    assert_eq!(
        table_location(&node, "conv").await,
        (json!("reference:archive"), json!("archive"))
    );
    assert_eq!(usage_count(&node, "archive").await, 1);
    node.admin("INSERT INTO app.conv (id, title) VALUES (4, 'Later')")
        .await;
    flush(&node, "app.conv").await;
    assert!(
        local_files(&archive.join("app/conv")).len() > files.len(),
        "app.conv keeps writing to the location it was created with"
    );
    assert!(local_files(&default_storage(&node).join("app/conv")).is_empty());
    assert_eq!(node.count(&admin, "SELECT COUNT(*) FROM app.conv").await, 4);
}

#[tokio::test]
async fn missing_default_location_refuses_create_table() {
    let node = TestNode::start_with_options(
        NodeOptions::default().env("KALAMDB_DEFAULT_LOCATION", "nowhere"),
    )
    .await;
    let admin = admin_token();
    node.admin("CREATE NAMESPACE app").await;
    for sql in [
        "CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY)",
        "CREATE USER TABLE app.u (id BIGINT PRIMARY KEY)",
    ] {
        let error = node
            .expect_error(&admin, sql, "STORAGE_LOCATION_NOT_FOUND")
            .await;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("'nowhere'")
                && message.contains("default_location")
                && message.contains("configuration"),
            "the message names the default location of the config: {error}"
        );
    }
    assert!(
        node.query(&admin, "SHOW TABLES IN app").await.is_empty(),
        "no table is created, not even on the built-in location"
    );
    // An explicit location and STREAM tables do not need the default.
    node.admin(
        "CREATE SHARED TABLE app.on_local (id BIGINT PRIMARY KEY) LOCATION REFERENCE 'local'",
    )
    .await;
    node.admin("CREATE STREAM TABLE app.events (kind TEXT)")
        .await;
    // Once the row exists, tables without LOCATION use it.
    node.admin(&fs_location_sql(
        "nowhere",
        &node.dir().base().join("nowhere"),
    ))
    .await;
    node.admin("CREATE USER TABLE app.u (id BIGINT PRIMARY KEY)")
        .await;
    assert_eq!(
        table_location(&node, "u").await,
        (json!("reference:nowhere"), json!("nowhere"))
    );
    assert_eq!(usage_count(&node, "nowhere").await, 1);
}

#[tokio::test]
async fn secrets_never_leak() {
    let mut s3 = S3Server::start().await;
    s3.create_bucket("secret-test").await;
    let dir = NodeDir::new();
    let creds = dir.base().join("creds");
    write_credentials(&creds, "moto", &s3.endpoint());
    let node = TestNode::start_with(
        &dir,
        NodeOptions::default()
            .env("KALAMDB_CREDENTIALS_DIR", path_str(&creds))
            .env("KALAMDB_LOG", "debug"),
    )
    .await;
    let admin = admin_token();
    let mut seen = String::new();

    node.admin(&s3_location_sql("s3loc", "s3://secret-test/x/", "moto"))
        .await;
    for sql in ["SELECT * FROM system.storage_locations", "SHOW TABLES"] {
        seen.push_str(&node.admin(sql).await.to_string());
    }
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl(
        "notes",
        "LOCATION REFERENCE 's3loc' FLUSH POLICY ROWS 1000000",
    ))
    .await;
    seen.push_str(&node.admin("DESCRIBE TABLE app.notes").await.to_string());
    node.exec(
        &token("alice", false),
        &insert_notes("notes", "alice", 1..=3, "x"),
    )
    .await;
    flush(&node, "app.notes").await;

    // Failures: a dead endpoint during a flush, and for a new location.
    s3.stop().await;
    node.exec(
        &token("alice", false),
        &insert_notes("notes", "alice", 4..=5, "x"),
    )
    .await;
    let job_id = start_flush(&node, "app.notes").await;
    let failed = wait_job_within(&node, &job_id, FAILED_FLUSH_TIMEOUT).await;
    assert_eq!(failed["status"], "failed", "{}", pretty(&failed));
    let resp = node
        .sql(
            &admin,
            &s3_location_sql("again", "s3://secret-test/y/", "moto"),
        )
        .await;
    node.assert_error(
        &resp,
        "LOCATION_UNREACHABLE",
        "a location on a dead endpoint",
    );
    seen.push_str(&resp.1.to_string());
    seen.push_str(&node.admin("SELECT * FROM system.jobs").await.to_string());
    seen.push_str(
        &node
            .admin("SELECT * FROM system.storage_locations")
            .await
            .to_string(),
    );

    no_secret(&seen, "SQL results and error bodies");
    no_secret(&node.stderr(), "the node's stderr (debug log level)");
    no_secret(&node.stdout(), "the node's stdout");
    let dir = node.stop().await;
    // Nor anything the node wrote into its data directory in plain text next to the data,
    // other than the credentials directory itself (which is outside it here).
    for file in files_under(&dir.data_dir()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(S3_SECRET_ACCESS_KEY.len())
                .any(|w| w == S3_SECRET_ACCESS_KEY.as_bytes()),
            "{} holds the S3 secret",
            file.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// User ids in paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn user_ids_cannot_escape_their_directory() {
    let node = TestNode::start().await;
    let base = node.dir().base().to_path_buf();
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("notes", "FLUSH POLICY ROWS 1000000"))
        .await;
    let placed = format!("{}/loc/${{user_id}}/x/", path_str(&base));
    node.admin(&notes_ddl(
        "placed",
        &format!("LOCATION {} FLUSH POLICY ROWS 1000000", lit(&placed)),
    ))
    .await;
    // `.` and `..` are refused as user ids at authentication (they would be path segments).
    for bad in ["..", "."] {
        let (status, _) = node.sql(&token(bad, false), "SELECT 1").await;
        assert_eq!(status, 401, "user id {bad:?} must be refused");
    }
    let users = ["a.b", "x..y", "-", "alice"];
    for (i, user) in users.iter().enumerate() {
        let t = token(user, false);
        let n = i as i64 + 1;
        node.exec(&t, &insert_notes("notes", user, 1..=n, "esc"))
            .await;
        node.exec(&t, &insert_notes("placed", user, 1..=n, "esc"))
            .await;
    }
    let before = user_snapshot(&node, "app.notes", &users).await;
    flush(&node, "app.notes").await;
    flush(&node, "app.placed").await;

    // Every Parquet file under the temporary directory, wherever the node put it.
    let everything = local_files(&base);
    let notes_prefix = "data/storage/app/notes/";
    let mut dirs_of_notes: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs_of_placed: BTreeMap<String, String> = BTreeMap::new();
    for file in &everything {
        let path = path_of(file);
        let data = data_of(file);
        let owners: BTreeSet<String> = data
            .iter()
            .map(|r| r["owner"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(owners.len(), 1, "{path} holds one user's rows: {owners:?}");
        let owner = owners.into_iter().next().unwrap();
        let (placed, rest) = if let Some(rest) = path.strip_prefix(notes_prefix) {
            (false, rest.to_string())
        } else if let Some(rest) = path.strip_prefix("loc/") {
            (true, rest.to_string())
        } else {
            panic!("{path} (rows of user {owner:?}) is outside its table's directory");
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let user_dir = parts[0].to_string();
        let well_formed = if placed {
            parts.len() == 3 && parts[1] == "x"
        } else {
            parts.len() == 2
        };
        assert!(
            well_formed && !user_dir.is_empty() && user_dir != "." && user_dir != "..",
            "{path}: user {owner:?} must get one directory of its own inside the table's"
        );
        let dirs = if placed {
            &mut dirs_of_placed
        } else {
            &mut dirs_of_notes
        };
        if let Some(other) = dirs.insert(user_dir, owner.clone()) {
            assert_eq!(
                other, owner,
                "{path}: users {other:?} and {owner:?} share a directory"
            );
        }
    }
    for (name, dirs) in [
        ("app.notes", &dirs_of_notes),
        ("app.placed", &dirs_of_placed),
    ] {
        let owners: BTreeSet<&str> = dirs.values().map(String::as_str).collect();
        assert_eq!(
            owners,
            users.iter().copied().collect::<BTreeSet<&str>>(),
            "{name}: one directory per user: {dirs:?}"
        );
    }
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &users).await,
        "after flush",
    );
    for (i, user) in users.iter().enumerate() {
        let t = token(user, false);
        assert_once(&node, &t, "app.placed", i as i64 + 1, user).await;
        assert_eq!(
            node.count(
                &t,
                &format!(
                    "SELECT COUNT(*) FROM app.placed WHERE owner <> {}",
                    lit(user)
                )
            )
            .await,
            0
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s3_outage_fails_the_flush_and_a_retry_recovers() {
    let opts = NodeOptions::default()
        .env("KALAMDB_FLUSH_RETRY_BASE_MS", "200")
        .env("KALAMDB_FLUSH_CHECK_INTERVAL_MS", "100");
    let (node, mut s3) = node_with_s3("outage", opts).await;
    node.admin(&s3_location_sql("s3out", "s3://outage/kalam/", "moto"))
        .await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl(
        "notes",
        "LOCATION REFERENCE 's3out' FLUSH POLICY ROWS 1000000",
    ))
    .await;
    let users = ["alice", "bob"];
    for user in users {
        node.exec(
            &token(user, false),
            &insert_notes("notes", user, 1..=100, "outage"),
        )
        .await;
    }
    let before = user_snapshot(&node, "app.notes", &users).await;

    s3.stop().await;
    let job_id = start_flush(&node, "app.notes").await;
    let failed = wait_job_within(&node, &job_id, FAILED_FLUSH_TIMEOUT).await;
    assert_eq!(failed["status"], "failed", "{}", pretty(&failed));
    assert!(
        failed["error_message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "a failed job says why: {}",
        pretty(&failed)
    );
    no_secret(&failed.to_string(), "the failed job");
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &users).await,
        "S3 down",
    );
    for user in users {
        assert_once(&node, &token(user, false), "app.notes", 100, "S3 down").await;
    }

    s3.restart().await;
    s3.create_bucket("outage").await;
    // No FLUSH TABLE from here on: the node retries by itself.
    wait_stats(&node, "app", "notes", 0, 200, Duration::from_secs(180)).await;
    let done = wait_completed_flush(&node, "app", "notes", &[], POLICY_TIMEOUT).await;
    assert!(result_rows(&done) > 0, "{}", pretty(&done));
    assert_eq!(
        settled_flushed_rows(&node, "app", "notes", 200, POLICY_TIMEOUT).await,
        200,
        "the retries write every waiting row once"
    );
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, "app.notes", &users).await,
        "after the retry",
    );
    for user in users {
        assert_once(
            &node,
            &token(user, false),
            "app.notes",
            100,
            "after the retry",
        )
        .await;
    }
    assert_eq!(stat_numbers(&node, "app.notes").await[..2], [0, 200]);
    let objects = s3_files(&s3, "outage", "kalam/");
    let data = all_data(&objects);
    assert_eq!(data.len(), 200, "200 rows in S3, none twice");
    let keys: BTreeSet<(String, i64)> = data
        .iter()
        .map(|r| {
            (
                r["owner"].as_str().unwrap_or_default().to_string(),
                r["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(keys.len(), 200, "each (user, id) once in S3");
    for file in &objects {
        let path = path_of(file);
        let owner = if path.starts_with("app/notes/alice/") {
            "alice"
        } else if path.starts_with("app/notes/bob/") {
            "bob"
        } else {
            panic!("unexpected object {path}");
        };
        assert!(data_of(file).iter().all(|r| r["owner"] == owner), "{path}");
    }
    no_secret(&node.stderr(), "the node's stderr");
}

/// A USER table with cold rows from a normal flush, hot inserts, updates and deletes of 3
/// users; FLUSH TABLE with the failpoint `failpoint` aborts the node; after a restart without
/// failpoints every acknowledged row is there exactly once, the interrupted job is failed, and
/// a new flush completes without changing any row.
async fn crash_during_flush(failpoint: &str) {
    let dir = NodeDir::new();
    let table = "app.items";

    // 1. Cold data, and hot changes of it.
    let node = TestNode::start_in(&dir).await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(&notes_ddl("items", "FLUSH POLICY ROWS 1000000"))
        .await;
    for user in USERS {
        node.exec(
            &token(user, false),
            &insert_notes("items", user, 1..=10, "first"),
        )
        .await;
    }
    let first = flush(&node, table).await;
    let first_id = first["job_id"].as_str().unwrap().to_string();
    for user in USERS {
        let t = token(user, false);
        node.exec(
            &t,
            "UPDATE app.items SET body = 'updated cold', n = n + 1000 WHERE id = 1",
        )
        .await;
        node.exec(&t, "DELETE FROM app.items WHERE id = 2").await;
    }
    let dir = node.stop().await;

    // 2. The failpoint: more hot rows, then FLUSH TABLE aborts the node.
    let opts = NodeOptions::default().env("FAILPOINTS", &format!("{failpoint}=return"));
    let node = TestNode::start_with(&dir, opts).await;
    for user in USERS {
        let t = token(user, false);
        node.exec(&t, &insert_notes("items", user, 11..=20, "second"))
            .await;
        node.exec(
            &t,
            "UPDATE app.items SET body = 'updated again' WHERE id IN (3, 11)",
        )
        .await;
        node.exec(&t, "DELETE FROM app.items WHERE id = 12").await;
    }
    let before = user_snapshot(&node, table, &USERS).await;
    // The answer may come before the abort, or never.
    let resp = node
        .try_sql(
            &admin_token(),
            "FLUSH TABLE app.items",
            Duration::from_secs(30),
        )
        .await;
    let crashed_id = resp.as_ref().and_then(|(status, body)| {
        if *status == 200 {
            body["results"][0]["rows"][0]["job_id"]
                .as_str()
                .map(str::to_string)
        } else {
            None
        }
    });
    let dir = node.wait_exit(CRASH_TIMEOUT).await;

    // 3. Restart without failpoints.
    let node = TestNode::start_in(&dir).await;
    let when = format!("after a crash at {failpoint}");
    assert_same_snapshot(&before, &user_snapshot(&node, table, &USERS).await, &when);
    for user in USERS {
        // ids 1..=20 without the deleted 2 and 12.
        assert_once(&node, &token(user, false), table, 18, &when).await;
    }
    let jobs = flush_jobs(&node, "app", "items").await;
    assert!(
        jobs.iter().all(|j| j["status"] != "running"),
        "{when}: no job is left running: {}",
        pretty(&json!(jobs))
    );
    let first_row = jobs
        .iter()
        .find(|j| j["job_id"] == first_id.as_str())
        .unwrap_or_else(|| panic!("{when}: the first job is kept: {}", pretty(&json!(jobs))));
    assert_eq!(first_row["status"], "completed");
    match &crashed_id {
        Some(id) => {
            let row = jobs
                .iter()
                .find(|j| j["job_id"] == id.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "{when}: the interrupted job {id} is listed: {}",
                        pretty(&json!(jobs))
                    )
                });
            assert_eq!(row["status"], "failed", "{when}: {}", pretty(row));
        }
        None => assert!(
            jobs.iter()
                .any(|j| j["job_id"] != first_id.as_str() && j["status"] == "failed"),
            "{when}: the interrupted job is listed as failed: {}",
            pretty(&json!(jobs))
        ),
    }

    // A new flush completes and changes nothing; so does another restart.
    flush(&node, table).await;
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, table, &USERS).await,
        &format!("{when}, flushed again"),
    );
    assert_eq!(
        stat_numbers(&node, table).await[0],
        0,
        "{when}: nothing left hot"
    );
    let dir = node.stop().await;
    let node = TestNode::start_in(&dir).await;
    assert_same_snapshot(
        &before,
        &user_snapshot(&node, table, &USERS).await,
        &format!("{when}, flushed, restarted"),
    );
    for user in USERS {
        assert_once(&node, &token(user, false), table, 18, &when).await;
    }
    // The table takes writes, and primary keys still see every tier.
    let alice = token("alice", false);
    node.expect_error(
        &alice,
        "INSERT INTO app.items (id, owner) VALUES (15, 'alice')",
        "PRIMARY_KEY_VIOLATION",
    )
    .await;
    node.exec(&alice, &insert_notes("items", "alice", 21..=21, "third"))
        .await;
    assert_once(&node, &alice, table, 19, &when).await;
}

#[tokio::test]
async fn crash_before_write() {
    crash_during_flush("flush-before-write").await;
}

#[tokio::test]
async fn crash_after_file() {
    crash_during_flush("flush-after-file").await;
}

#[tokio::test]
async fn crash_after_partition() {
    crash_during_flush("flush-after-partition").await;
}

#[tokio::test]
async fn crash_before_complete() {
    crash_during_flush("flush-before-complete").await;
}

fn plan_of(rows: Vec<Value>) -> String {
    rows.iter().filter_map(|row| row["plan"].as_str()).collect()
}

/// Small cold reads, both ways. Files of a few rows whose keys no other input has are read
/// whole while planning and joined to the hot rows in memory: no file scan in the plan, one
/// partition, rows in key order, flushed and hot tombstones hidden (and shown when asked),
/// point reads, and another user's files (with the same keys) never mixed in. Once a file is
/// of an older schema version (an ALTER TABLE), or a key is in two inputs (an UPDATE of a
/// flushed row), the files are scanned and merged, and the small scan stays on one thread:
/// it tells DataFusion its row count (from the manifest), so no `RepartitionExec` hands its
/// batch to another task (ADR 0021, ADR 0031).
#[tokio::test]
async fn small_cold_reads_run_in_memory_or_on_one_thread() {
    let node = TestNode::start().await;
    node.admin("CREATE NAMESPACE app").await;
    node.admin(
        "CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, body TEXT) FLUSH POLICY ROWS 1000000",
    )
    .await;
    let (alice, bob) = (token("alice", false), token("bob", false));
    node.exec(
        &alice,
        "INSERT INTO app.m (id, body) VALUES (3, 'c'), (1, 'a'), (2, 'b')",
    )
    .await;
    node.exec(
        &bob,
        "INSERT INTO app.m (id, body) VALUES (1, 'bob'), (9, 'bob')",
    )
    .await;
    flush(&node, "app.m").await;
    node.exec(
        &alice,
        "INSERT INTO app.m (id, body) VALUES (5, 'e'), (4, 'd')",
    )
    .await;
    node.exec(&alice, "DELETE FROM app.m WHERE id = 5").await;
    flush(&node, "app.m").await;
    node.exec(
        &alice,
        "INSERT INTO app.m (id, body) VALUES (6, 'f'), (7, 'g')",
    )
    .await;
    node.exec(&alice, "DELETE FROM app.m WHERE id = 7").await;

    let explain = |token: &str, query: &str| {
        let (node, token, query) = (&node, token.to_owned(), format!("EXPLAIN {query}"));
        async move { plan_of(node.query(&token, &query).await) }
    };
    let in_memory = |plan: &str| {
        assert!(!plan.contains("file_type=parquet"), "{plan}");
        assert!(plan.contains("partitions=1"), "{plan}");
        assert!(!plan.contains("RepartitionExec"), "{plan}");
    };
    let query = "SELECT id FROM app.m WHERE body <> 'b'";
    in_memory(&explain(&alice, query).await);
    assert_eq!(
        node.query(&alice, query).await,
        vec![
            json!({"id": 1}),
            json!({"id": 3}),
            json!({"id": 4}),
            json!({"id": 6})
        ],
        "both files and the hot rows, in key order, without the deleted rows"
    );
    assert_eq!(
        node.query(&alice, "SELECT id FROM app.m WHERE _deleted = true")
            .await,
        vec![json!({"id": 5}), json!({"id": 7})],
        "the flushed tombstone and the hot one"
    );
    let point = "SELECT body FROM app.m WHERE id = 3";
    in_memory(&explain(&alice, point).await);
    assert_eq!(node.query(&alice, point).await, vec![json!({"body": "c"})]);
    let all = "SELECT id, body FROM app.m";
    in_memory(&explain(&bob, all).await);
    assert_eq!(
        node.query(&bob, all).await,
        vec![
            json!({"id": 1, "body": "bob"}),
            json!({"id": 9, "body": "bob"})
        ],
        "bob's own file only, though alice's holds the same key"
    );

    // Files of the version before an ALTER are scanned (and adapted), not read whole.
    node.admin("ALTER TABLE app.m ADD COLUMN extra TEXT").await;
    let plan = explain(&alice, query).await;
    assert!(plan.contains("file_type=parquet"), "{plan}");
    assert_eq!(
        node.query(&alice, query).await.len(),
        4,
        "the same rows after the ALTER"
    );

    node.exec(&alice, "UPDATE app.m SET body = 'bb' WHERE id = 2")
        .await;
    let query = "SELECT id, body FROM app.m WHERE id < 4";
    let plan = explain(&alice, query).await;
    assert!(plan.contains("file_type=parquet"), "{plan}");
    assert!(!plan.contains("RepartitionExec"), "{plan}");
    let mut rows = node.query(&alice, query).await;
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "body": "a"}),
            json!({"id": 2, "body": "bb"}),
            json!({"id": 3, "body": "c"}),
        ],
        "the hot version of the flushed key, once"
    );
}

/// A flush that panics (a bug; made one here with a failpoint) is a failed job like any
/// other: the table is not left "flushing" with its job forever, the next `FLUSH TABLE`
/// starts a new job that writes every row, and no row was lost in between.
#[tokio::test]
async fn a_flush_that_panics_fails_its_job_and_the_next_one_flushes() {
    let node = TestNode::start_with_options(
        NodeOptions::default()
            .env("FAILPOINTS", "flush-table=1*panic")
            // No scheduled retry between the failure and the FLUSH TABLE below.
            .env("KALAMDB_FLUSH_RETRY_BASE_MS", "3600000"),
    )
    .await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'a'), (2, 'c1', 'b')",
    )
    .await;
    let first = start_flush(&node, "app.messages").await;
    let failed = wait_job_within(&node, &first, FAILED_FLUSH_TIMEOUT).await;
    assert_eq!(failed["status"], "failed", "{}", pretty(&failed));
    assert!(
        failed["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("internal error")),
        "{}",
        pretty(&failed)
    );
    assert_eq!(
        node.count(&alice, "SELECT count(*) FROM app.messages")
            .await,
        2,
        "the rows stay in the hot tier"
    );

    let second = flush(&node, "app.messages").await;
    assert_ne!(second["job_id"], failed["job_id"], "a new job ran");
    assert_eq!(result_rows(&second), 2, "{}", pretty(&second));
    assert_eq!(
        node.count(&alice, "SELECT count(*) FROM app.messages")
            .await,
        2
    );
}
