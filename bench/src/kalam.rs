//! The KalamDB side: the node the tool starts (a `kalamdb` binary on a free loopback port
//! with a throw-away data directory, killed on drop), its HTTP scenarios (issue "dbnode
//! foundation"), the live-query scenarios of [`crate::live`], and `flush` (the cold tier;
//! KalamDB only).
//!
//! - `insert-seq`: sequential single-row INSERTs; client p50/p99 and server `execution_time_ms`.
//! - `insert-concurrent`: 16 writers, single-row INSERTs; rows/s.
//! - `insert-batch`: multi-row INSERTs of 1,000 rows; rows/s.
//! - `select-user`: filtered SELECT of 100 rows from one user's partition of a table holding
//!   1,000,000 rows over 1,000 users; p50/p99.
//! - `flush`: one `FLUSH TABLE` of 200,000 rows of ~1 KiB; rows/s and MB/s of Parquet by the
//!   job's own duration in `system.jobs` (as `bench/cold_tier.py` measures it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::try_join_all;
use kalam_client::wire::SqlRequest;
use kalam_client::KalamClient;
use serde_json::{json, Value};

use crate::live;
use crate::measure::{
    check_conversation_ids, check_count, concurrent, hist, progress, sequential, values,
    RandomText, TempDir, Ticker,
};
use crate::report::Outcome;
use crate::{Args, Sizes};

/// A node started for the run; killed when dropped.
pub struct NodeProcess {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "kalam-bench-secret-0123456789";

/// Checks, before any scenario runs, that `binary` is a `kalamdb` the tool can start: a
/// wrong `--kalamdb` should not show only after PostgreSQL's whole side has run. Returns
/// its `--version` line (which names a debug build), for the report.
pub fn check_binary(binary: &std::path::Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "--kalamdb {}: cannot run it (build it with `cargo build --release -p \
                 kalam-dbnode`, or point --kalamdb at the binary)",
                binary.display()
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with("kalamdb ") {
        bail!(
            "--kalamdb {}: not a kalamdb binary (`--version` printed {:?})",
            binary.display(),
            version.lines().next().unwrap_or_default().trim()
        );
    }
    Ok(version.lines().next().unwrap_or_default().trim().to_owned())
}

fn start_node(args: &Args) -> Result<NodeProcess> {
    let dir = std::env::temp_dir().join(format!("kalam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    let mut child = Command::new(&args.kalamdb)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir.0)
        .env("KALAMDB_JWT_SECRET", SECRET)
        .env("KALAMDB_SYNC_WRITES", args.sync_writes.to_string())
        .env("KALAMDB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.kalamdb.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("kalamdb listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from the node: {line:?}"))?
        .to_string();
    Ok(NodeProcess {
        child,
        url,
        _dir: dir,
    })
}

pub(crate) fn token(args: &Args, user: &str, admin: bool) -> Result<String> {
    let mut cmd = Command::new(&args.kalamdb);
    cmd.args(["token", "--user", user, "--ttl", "2h"])
        .env("KALAMDB_JWT_SECRET", SECRET);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "kalamdb token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub(crate) async fn count(client: &KalamClient, sql: &str) -> Result<u64> {
    let r = client.sql(sql).await?;
    r.results
        .first()
        .and_then(|r| r.rows.first())
        .and_then(|row| row.values().next())
        .and_then(|v| v.as_u64())
        .ok_or_else(|| anyhow!("no count in the answer to {sql}"))
}

/// Starts the node, runs every KalamDB scenario, and stops the node again (so that it
/// does not compete with PostgreSQL for the CPUs afterwards).
pub async fn run(args: &Args, sizes: &Sizes) -> Result<Vec<Outcome>> {
    progress(&format!(
        "kalamdb: starting {} (sync_writes = {})",
        args.kalamdb.display(),
        args.sync_writes
    ));
    let node = start_node(args)?;
    let admin = KalamClient::new(&node.url)?.with_token(token(args, "bench_admin", true)?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin.ready().await.unwrap_or(false) {
        if Instant::now() > deadline {
            bail!("the node did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .sql(
            "CREATE NAMESPACE bench; \
             CREATE USER TABLE bench.seq (content TEXT); \
             CREATE USER TABLE bench.conc (content TEXT); \
             CREATE USER TABLE bench.batch (content TEXT); \
             CREATE USER TABLE bench.msgs (id BIGINT PRIMARY KEY, conversation_id TEXT NOT NULL, content TEXT)",
        )
        .await?;
    let alice = token(args, "alice", false)?;
    let mut outcomes = Vec::new();
    if args.wants("insert-seq") {
        outcomes.push(insert_seq(&node.url, &alice, sizes.seq_inserts).await?);
    }
    if args.wants("insert-concurrent") {
        outcomes.push(
            insert_concurrent(
                &node.url,
                args,
                sizes.concurrent_writers,
                sizes.concurrent_inserts_each,
            )
            .await?,
        );
    }
    if args.wants("insert-batch") {
        outcomes.push(insert_batch(&node.url, &alice, sizes.batches, sizes.batch_rows).await?);
    }
    if args.wants("select-user") {
        outcomes.push(select_user(&admin, sizes).await?);
    }
    outcomes.extend(live::run(args, &admin, node.child.id(), &sizes.live).await?);
    if args.wants("flush") {
        outcomes.push(flush(&admin, sizes.flush_rows).await?);
    }
    progress("kalamdb: stopping the node");
    drop(node);
    Ok(outcomes)
}

async fn insert_seq(url: &str, user_token: &str, n: usize) -> Result<Outcome> {
    progress(&format!("insert-seq: {n} sequential single-row inserts"));
    let c = KalamClient::new(url)?.with_token(user_token);
    let client = &c;
    let timed = sequential("insert-seq", n, true, move |i| async move {
        let r = client
            .sql_params(
                "INSERT INTO bench.seq (content) VALUES ($1)",
                vec![json!(format!("message {i}"))],
            )
            .await?;
        anyhow::Ok(Some(r.results[0].execution_time_ms))
    })
    .await?;
    check_count(
        "insert-seq: rows stored",
        count(&c, "SELECT COUNT(*) FROM bench.seq").await?,
        n,
    )?;
    Ok(Outcome::new(
        "insert-seq",
        n,
        n,
        timed.seconds,
        &timed.client,
        Some(&timed.server),
    ))
}

async fn insert_concurrent(url: &str, args: &Args, writers: usize, each: usize) -> Result<Outcome> {
    progress(&format!(
        "insert-concurrent: {writers} writers x {each} single-row inserts"
    ));
    // Clients (and their tokens) first, so that the clock runs for the INSERTs only.
    let mut clients = Vec::with_capacity(writers);
    for w in 0..writers {
        clients.push(KalamClient::new(url)?.with_token(token(args, &format!("writer{w}"), false)?));
    }
    // Each task owns its client (no borrows inside a spawned future); an INSERT clones it
    // (a few small allocations).
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(move |(w, c)| async move {
            let timed = sequential("insert-concurrent", each, false, move |i| {
                let client = c.clone();
                async move {
                    client
                        .sql_params(
                            "INSERT INTO bench.conc (content) VALUES ($1)",
                            vec![json!(format!("w{w} m{i}"))],
                        )
                        .await?;
                    anyhow::Ok(None::<f64>)
                }
            })
            .await?;
            anyhow::Ok(timed.client)
        })
        .collect();
    let (all, seconds) = concurrent(tasks).await?;
    for (w, c) in clients.iter().enumerate() {
        check_count(
            &format!("insert-concurrent: rows writer{w} sees"),
            count(c, "SELECT COUNT(*) FROM bench.conc").await?,
            each,
        )?;
    }
    let n = writers * each;
    Ok(Outcome::new("insert-concurrent", n, n, seconds, &all, None))
}

async fn insert_batch(url: &str, user_token: &str, batches: usize, rows: usize) -> Result<Outcome> {
    progress(&format!("insert-batch: {batches} INSERTs of {rows} rows"));
    let c = KalamClient::new(url)?.with_token(user_token);
    // The statements are built before the clock starts, as on PostgreSQL.
    let statements: Vec<String> = (0..batches)
        .map(|b| {
            format!(
                "INSERT INTO bench.batch (content) VALUES {}",
                values(None, b * rows, rows, true)
            )
        })
        .collect();
    let (client, statements) = (&c, &statements);
    let timed = sequential("insert-batch", batches, true, move |b| async move {
        let r = client.sql(&statements[b]).await?;
        if r.results[0].affected_rows != Some(rows as u64) {
            bail!(
                "affected_rows {:?}, expected {rows}",
                r.results[0].affected_rows
            );
        }
        anyhow::Ok(None::<f64>)
    })
    .await?;
    check_count(
        "insert-batch: rows stored",
        count(&c, "SELECT COUNT(*) FROM bench.batch").await?,
        batches * rows,
    )?;
    Ok(Outcome::new(
        "insert-batch",
        batches,
        batches * rows,
        timed.seconds,
        &timed.client,
        None,
    ))
}

async fn select_user(admin: &KalamClient, sizes: &Sizes) -> Result<Outcome> {
    let total = sizes.users * sizes.rows_per_user;
    progress(&format!(
        "select-user: loading {total} rows over {} users",
        sizes.users
    ));
    let chunk = 1000.min(sizes.rows_per_user);
    let mut ticker = Ticker::new("select-user: users loaded", sizes.users);
    let mut loads = Vec::new();
    for u in 0..sizes.users {
        let admin = admin.clone();
        loads.push(async move {
            let user = format!("user{u}");
            for start in (0..sizes.rows_per_user).step_by(chunk) {
                let sql = format!(
                    "INSERT INTO bench.msgs (id, conversation_id, content) VALUES {}",
                    values(None, start, chunk.min(sizes.rows_per_user - start), false)
                );
                admin.sql_as(&sql, Some(&user)).await?;
            }
            anyhow::Ok(())
        });
        if loads.len() == 4 {
            try_join_all(loads.drain(..)).await?;
            ticker.tick(u + 1);
        }
    }
    try_join_all(loads).await?;
    // Measured in steady state, as PostgreSQL's side after `VACUUM ANALYZE`: the load flushed
    // to Parquet, no flush running.
    progress("select-user: flushing the loaded rows");
    flush_all(admin, "bench.msgs", total).await?;
    let rows_per_user = sizes.rows_per_user;
    let users = sizes.users;
    let timed = sequential("select-user", sizes.selects, true, move |i| async move {
        let user = format!("user{}", (i * 7919) % users);
        let r = admin
            .execute(
                &SqlRequest::new("SELECT id, content FROM bench.msgs WHERE conversation_id = $1")
                    .with_params(vec![json!("conversation 3")])
                    .with_as_user(&user),
            )
            .await?;
        let ids = r.results[0]
            .rows
            .iter()
            .map(|row| {
                row.get("id")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| anyhow!("a row without an integer id: {row:?}"))
            })
            .collect::<Result<Vec<i64>>>()?;
        check_conversation_ids(&format!("rows of {user}"), ids, rows_per_user)?;
        anyhow::Ok(None::<f64>)
    })
    .await?;
    let rows = sizes.selects * (rows_per_user / 10);
    Ok(Outcome::new(
        "select-user",
        sizes.selects,
        rows,
        timed.seconds,
        &timed.client,
        None,
    ))
}

/// `FLUSH TABLE table`: the id of the job it started (or of the flush already running).
async fn start_flush(admin: &KalamClient, table: &str) -> Result<String> {
    let r = admin.sql(&format!("FLUSH TABLE {table}")).await?;
    r.results
        .first()
        .and_then(|r| r.rows.first())
        .and_then(|row| row.get("job_id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("FLUSH TABLE {table} returned no job_id"))
}

/// The `system.jobs` row of `job` once it completed; an error if it failed or ran for more
/// than 600 s.
async fn wait_job(admin: &KalamClient, job: &str) -> Result<serde_json::Map<String, Value>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = admin
            .sql(&format!(
                "SELECT status, result, duration_ms, error_message FROM system.jobs WHERE job_id = '{job}'"
            ))
            .await?;
        let row = r
            .results
            .first()
            .and_then(|r| r.rows.first())
            .cloned()
            .ok_or_else(|| anyhow!("job {job} is not in system.jobs"))?;
        let status = row.get("status").and_then(Value::as_str).map(str::to_owned);
        match status.as_deref() {
            Some("completed") => return Ok(row),
            Some("running") => {}
            other => bail!(
                "job {job} ended as {other:?}: {:?}",
                row.get("error_message")
            ),
        }
        if Instant::now() > deadline {
            bail!("job {job} still running after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Flushes `table` until it has no hot rows left and every one of its `rows` rows is in
/// Parquet: a `FLUSH TABLE` while a policy's flush runs returns that flush, which may have
/// started before the last rows were written, so it may take two.
async fn flush_all(admin: &KalamClient, table: &str, rows: usize) -> Result<()> {
    for _ in 0..3 {
        let job = start_flush(admin, table).await?;
        wait_job(admin, &job).await?;
        let r = admin.sql(&format!("SHOW TABLE STATS {table}")).await?;
        let stats = r
            .results
            .first()
            .and_then(|r| r.rows.first())
            .ok_or_else(|| anyhow!("SHOW TABLE STATS {table} returned no row"))?;
        let number = |key: &str| {
            stats
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("no {key} in the stats of {table}: {stats:?}"))
        };
        if number("hot_rows")? == 0 {
            return check_count(
                &format!("{table}: rows in Parquet"),
                number("cold_rows")?,
                rows,
            );
        }
    }
    bail!("{table} still has hot rows after three flushes")
}

/// `flush`: `rows` rows of ~1 KiB of incompressible text into a SHARED table whose flush
/// policy never fires, then one `FLUSH TABLE`, followed in `system.jobs` until it
/// completes. Rows/s and MB/s are by the job's own `duration_ms`; the flushed rows must all
/// be in the job's result and readable afterwards.
async fn flush(admin: &KalamClient, rows: usize) -> Result<Outcome> {
    progress(&format!("flush: loading {rows} rows of ~1 KiB"));
    admin
        .sql("CREATE SHARED TABLE bench.flush (id BIGINT PRIMARY KEY, body TEXT) FLUSH POLICY ROWS 100000000")
        .await?;
    let mut text = RandomText::new(0x5eed_f1a5);
    let mut ticker = Ticker::new("flush: rows loaded", rows);
    let chunk = 500;
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let tuples = (start..start + n)
            .map(|i| format!("({i}, '{}')", text.text(1024)))
            .collect::<Vec<_>>()
            .join(", ");
        let r = admin
            .sql(&format!(
                "INSERT INTO bench.flush (id, body) VALUES {tuples}"
            ))
            .await?;
        if r.results[0].affected_rows != Some(n as u64) {
            bail!(
                "flush: affected_rows {:?}, expected {n}",
                r.results[0].affected_rows
            );
        }
        ticker.tick(start + n);
    }

    progress("flush: FLUSH TABLE bench.flush");
    let job = start_flush(admin, "bench.flush").await?;
    let job_row = wait_job(admin, &job).await?;
    // `result` is a JSON column: an object, or its text.
    let result = match job_row.get("result") {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .with_context(|| format!("flush: job result {text:?}"))?,
        Some(value) => value.clone(),
        None => bail!("flush: job {job} has no result"),
    };
    let number = |key: &str| {
        result
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("flush: no {key} in the job result {result}"))
    };
    check_count("flush: rows in the job result", number("rows")?, rows)?;
    let bytes = number("bytes")?;
    let files = number("files")?;
    let duration_ms = job_row
        .get("duration_ms")
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("flush: job {job} has no duration_ms"))?;
    check_count(
        "flush: rows readable after the flush",
        count(admin, "SELECT COUNT(*) FROM bench.flush").await?,
        rows,
    )?;
    let seconds = duration_ms / 1000.0;
    let mb = bytes as f64 / 1e6;
    Ok(Outcome::new("flush", 1, rows, seconds, &hist(), None)
        .with("parquet_mb", mb)
        .with("parquet_files", files)
        .with("mb_per_s", if seconds > 0.0 { mb / seconds } else { 0.0 })
        .with("job_ms", duration_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_kalamdb_binary_is_refused_before_the_run() {
        let err = check_binary(std::path::Path::new("/nonexistent/kalamdb"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot run it"), "{err}");
        // Runs, but is not the node.
        let err = check_binary(std::path::Path::new("/bin/true"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a kalamdb binary"), "{err}");
    }
}
