//! `kalam-bench`: load scenarios against a real KalamDB node over HTTP, built on
//! `kalam-client`. It starts the node itself (a `kalamdb` binary, release build for numbers
//! worth quoting) on a free loopback port with a throw-away data directory, checks every
//! scenario's result for correctness, then prints latency percentiles and throughput.
//!
//! Scenarios (issue "dbnode foundation"):
//! - `insert-seq`: sequential single-row INSERTs; client p50/p99 and server `execution_time_ms`.
//! - `insert-concurrent`: 16 writers, single-row INSERTs; rows/s.
//! - `insert-batch`: multi-row INSERTs of 1,000 rows; rows/s.
//! - `select-user`: filtered SELECT of 100 rows from one user's partition of a table holding
//!   1,000,000 rows over 1,000 users; p50/p99.
//!
//! Live-query scenarios (issue "live queries", [`live`]): `live-memory`, `live-latency`,
//! `live-fanout`, `live-stream`.

mod live;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use kalam_client::KalamClient;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "kalam-bench", about = "Load scenarios against a KalamDB node")]
struct Args {
    /// The `kalamdb` binary to start.
    #[arg(long, default_value = "target/release/kalamdb")]
    kalamdb: PathBuf,
    /// Small sizes: a few seconds in all, for CI (checks correctness, not speed).
    #[arg(long)]
    quick: bool,
    /// Fsync every write (KalamDB `sync_writes`).
    #[arg(long)]
    sync_writes: bool,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Sizes {
    seq_inserts: usize,
    concurrent_writers: usize,
    concurrent_inserts_each: usize,
    batches: usize,
    batch_rows: usize,
    users: usize,
    rows_per_user: usize,
    selects: usize,
    live: live::LiveSizes,
}

/// A node started for the run; killed when dropped.
struct NodeProcess {
    child: Child,
    url: String,
    _dir: tempdir::TempDir,
}

mod tempdir {
    /// A directory removed on drop (kept tiny to avoid another dependency).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "kalam-bench-secret-0123456789";

fn start_node(args: &Args) -> Result<NodeProcess> {
    let dir = std::env::temp_dir().join(format!("kalam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = tempdir::TempDir(dir);
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

fn token(args: &Args, user: &str, admin: bool) -> Result<String> {
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

#[derive(serde::Serialize)]
struct Outcome {
    scenario: &'static str,
    operations: usize,
    rows: usize,
    seconds: f64,
    rows_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    server_p50_ms: Option<f64>,
    server_p99_ms: Option<f64>,
    /// Numbers of one scenario only (subscription counts, RSS, ...): JSON fields of their
    /// own, and a `key=value` note after the row of the table.
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    /// Percentiles from the client-side latencies and, when measured, the node's own timing.
    fn new(
        scenario: &'static str,
        operations: usize,
        rows: usize,
        seconds: f64,
        client: &Histogram<u64>,
        server: Option<&Histogram<u64>>,
    ) -> Self {
        Self {
            scenario,
            operations,
            rows,
            seconds,
            rows_per_sec: rows as f64 / seconds,
            p50_ms: ms(client, 0.5),
            p99_ms: ms(client, 0.99),
            max_ms: (!client.is_empty()).then(|| client.max() as f64 / 1000.0),
            server_p50_ms: server.and_then(|h| ms(h, 0.5)),
            server_p99_ms: server.and_then(|h| ms(h, 0.99)),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a scenario-specific number.
    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn progress(what: &str) {
    eprintln!("kalam-bench: {what}");
}

async fn count(client: &KalamClient, sql: &str) -> Result<u64> {
    let r = client.sql(sql).await?;
    r.results
        .first()
        .and_then(|r| r.rows.first())
        .and_then(|row| row.values().next())
        .and_then(|v| v.as_u64())
        .ok_or_else(|| anyhow!("no count in the answer to {sql}"))
}

async fn insert_seq(url: &str, user_token: &str, n: usize) -> Result<Outcome> {
    progress(&format!("insert-seq: {n} sequential single-row inserts"));
    let c = KalamClient::new(url)?.with_token(user_token);
    let (mut client_h, mut server_h) = (hist(), hist());
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let r = c
            .sql(&format!(
                "INSERT INTO bench.seq (content) VALUES ('message {i}')"
            ))
            .await?;
        client_h.record(t.elapsed().as_micros() as u64)?;
        server_h.record((r.results[0].execution_time_ms * 1000.0) as u64)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = count(&c, "SELECT COUNT(*) FROM bench.seq").await?;
    if stored != n as u64 {
        bail!("insert-seq: {stored} rows stored, {n} acknowledged");
    }
    Ok(Outcome::new(
        "insert-seq",
        n,
        n,
        seconds,
        &client_h,
        Some(&server_h),
    ))
}

async fn insert_concurrent(url: &str, args: &Args, writers: usize, each: usize) -> Result<Outcome> {
    progress(&format!(
        "insert-concurrent: {writers} writers x {each} single-row inserts"
    ));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for w in 0..writers {
        let c = KalamClient::new(url)?.with_token(token(args, &format!("writer{w}"), false)?);
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            for i in 0..each {
                let t = Instant::now();
                c.sql(&format!(
                    "INSERT INTO bench.conc (content) VALUES ('w{w} m{i}')"
                ))
                .await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((c, h))
        }));
    }
    let mut all = hist();
    let mut clients = Vec::new();
    for t in tasks {
        let (c, h) = t.await??;
        all.add(&h)?;
        clients.push(c);
    }
    let seconds = started.elapsed().as_secs_f64();
    for (w, c) in clients.iter().enumerate() {
        let stored = count(c, "SELECT COUNT(*) FROM bench.conc").await?;
        if stored != each as u64 {
            bail!("insert-concurrent: writer{w} sees {stored} rows, wrote {each}");
        }
    }
    let n = writers * each;
    Ok(Outcome::new("insert-concurrent", n, n, seconds, &all, None))
}

fn values(start: usize, rows: usize, user_col: bool) -> String {
    (start..start + rows)
        .map(|i| {
            if user_col {
                format!("({i}, 'conversation {}', 'message {i}')", i % 10)
            } else {
                format!("('message {i}')")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert_batch(url: &str, user_token: &str, batches: usize, rows: usize) -> Result<Outcome> {
    progress(&format!("insert-batch: {batches} INSERTs of {rows} rows"));
    let c = KalamClient::new(url)?.with_token(user_token);
    let mut h = hist();
    let started = Instant::now();
    for b in 0..batches {
        let sql = format!(
            "INSERT INTO bench.batch (content) VALUES {}",
            values(b * rows, rows, false)
        );
        let t = Instant::now();
        let r = c.sql(&sql).await?;
        h.record(t.elapsed().as_micros() as u64)?;
        if r.results[0].affected_rows != Some(rows as u64) {
            bail!(
                "insert-batch: affected_rows {:?}, expected {rows}",
                r.results[0].affected_rows
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = count(&c, "SELECT COUNT(*) FROM bench.batch").await?;
    if stored != (batches * rows) as u64 {
        bail!(
            "insert-batch: {stored} rows stored, {} acknowledged",
            batches * rows
        );
    }
    Ok(Outcome::new(
        "insert-batch",
        batches,
        batches * rows,
        seconds,
        &h,
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
    let mut loads = Vec::new();
    for u in 0..sizes.users {
        let admin = admin.clone();
        loads.push(async move {
            let user = format!("user{u}");
            for start in (0..sizes.rows_per_user).step_by(chunk) {
                let sql = format!(
                    "INSERT INTO bench.msgs (id, conversation_id, content) VALUES {}",
                    values(start, chunk.min(sizes.rows_per_user - start), true)
                );
                admin.sql_as(&sql, Some(&user)).await?;
            }
            anyhow::Ok(())
        });
        if loads.len() == 4 {
            try_join_all(loads.drain(..)).await?;
            if u % 100 == 99 {
                progress(&format!(
                    "select-user: loaded {} of {} users",
                    u + 1,
                    sizes.users
                ));
            }
        }
    }
    try_join_all(loads).await?;
    let c = admin.clone();
    let mut h = hist();
    let started = Instant::now();
    for i in 0..sizes.selects {
        let user = format!("user{}", (i * 7919) % sizes.users);
        let t = Instant::now();
        let r = c
            .sql_as(
                "SELECT id, content FROM bench.msgs WHERE conversation_id = 'conversation 3'",
                Some(&user),
            )
            .await?;
        h.record(t.elapsed().as_micros() as u64)?;
        let expected = sizes.rows_per_user / 10;
        if r.results[0].row_count != expected {
            bail!(
                "select-user: {} rows for {user}, expected {expected}",
                r.results[0].row_count
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows = sizes.selects * sizes.rows_per_user / 10;
    Ok(Outcome::new(
        "select-user",
        sizes.selects,
        rows,
        seconds,
        &h,
        None,
    ))
}

fn print_table(outcomes: &[Outcome]) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    println!(
        "{:<18} {:>9} {:>9} {:>12} {:>9} {:>9} {:>9} {:>11} {:>11}  notes",
        "scenario",
        "ops",
        "rows",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv p50 ms",
        "srv p99 ms"
    );
    for o in outcomes {
        let notes = o
            .extra
            .iter()
            .map(|(key, value)| match value.as_f64() {
                Some(x) if value.is_f64() => format!("{key}={x:.3}"),
                _ => format!("{key}={value}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<18} {:>9} {:>9} {:>12.0} {:>9} {:>9} {:>9} {:>11} {:>11}  {notes}",
            o.scenario,
            o.operations,
            o.rows,
            o.rows_per_sec,
            f(o.p50_ms),
            f(o.p99_ms),
            f(o.max_ms),
            f(o.server_p50_ms),
            f(o.server_p99_ms)
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes {
            seq_inserts: 200,
            concurrent_writers: 16,
            concurrent_inserts_each: 20,
            batches: 5,
            batch_rows: 1000,
            users: 20,
            rows_per_user: 100,
            selects: 50,
            live: live::LiveSizes::new(true),
        }
    } else {
        Sizes {
            seq_inserts: 5_000,
            concurrent_writers: 16,
            concurrent_inserts_each: 2_000,
            batches: 200,
            batch_rows: 1000,
            users: 1000,
            rows_per_user: 1000,
            selects: 2_000,
            live: live::LiveSizes::new(false),
        }
    };
    let node = start_node(&args)?;
    let admin = KalamClient::new(&node.url)?.with_token(token(&args, "bench_admin", true)?);
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
    let alice = token(&args, "alice", false)?;
    let mut outcomes = vec![
        insert_seq(&node.url, &alice, sizes.seq_inserts).await?,
        insert_concurrent(
            &node.url,
            &args,
            sizes.concurrent_writers,
            sizes.concurrent_inserts_each,
        )
        .await?,
        insert_batch(&node.url, &alice, sizes.batches, sizes.batch_rows).await?,
        select_user(&admin, &sizes).await?,
    ];
    outcomes.extend(live::run(&args, &admin, node.child.id(), &sizes.live).await?);
    println!("durability: sync_writes = {}", args.sync_writes);
    print_table(&outcomes);
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(
                &json!({ "sync_writes": args.sync_writes, "results": outcomes }),
            )?,
        )?;
    }
    println!("{} passed, 0 failed", outcomes.len());
    Ok(())
}
