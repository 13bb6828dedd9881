//! Live-query scenarios (`GET /ws`, API.md section 5): the node's memory per subscription,
//! notification latency while many other subscriptions sit idle and another client writes
//! rows no subscription matches, fan-out of one change to 1,000 subscribers on 1,000
//! connections and to 10,000 on 100, and delivery throughput of a STREAM table. The
//! PostgreSQL side of `live-latency` and the fan-outs is [`crate::pg_scenarios`]; it shares
//! the sizes and the names defined here.
//!
//! Each scenario first checks that every expected change arrived exactly once and that
//! nothing else arrived (a row no subscription matches is written at the end, and the
//! connections must then stay quiet); only then do its numbers count. The WebSocket side is
//! `kalam_client::live`, so a run exercises the client crate as well as the node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use kalam_client::wire::Row;
use kalam_client::{
    ChangeType, KalamClient, LiveConnection, ServerMessage, Subscription, SubscriptionOptions,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::kalam::{count, token};
use crate::measure::{
    check_fields, hist, micros, paced, progress, Round, Ticker, EVENT_TIMEOUT, QUIET,
};
use crate::report::Outcome;
use crate::Args;

/// How long the node may take to confirm the subscriptions of one connection.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for the node's allocations to settle before its RSS is read again.
const SETTLE: Duration = Duration::from_secs(1);

const HOT_SQL: &str = "SELECT * FROM bench.live_msgs WHERE conversation_id = 'hot'";
const FANOUT_SQL: &str = "SELECT * FROM bench.fanout WHERE room = 'r1'";
const STREAM_SQL: &str = "SELECT * FROM bench.events";
const MEMORY_USER: &str = "live_mem";

/// The user whose rows `live-latency` times (on PostgreSQL: the `user_id` column).
pub(crate) const HOT_USER: &str = "live_hot";
/// Ids of the noise rows of `live-latency` start here (the timed rows are `0..n`).
pub(crate) const NOISE_ID_BASE: i64 = 1_000_000_000;
/// The room the fan-out subscriptions filter on.
pub(crate) const FANOUT_ROOM: &str = "r1";

/// Idle subscription `i` of connection `c` of `live-latency`: its user and the
/// conversation its filter names. Even connections belong to other users and name the
/// subscriber's conversation (so they sit on other partitions); odd ones belong to the
/// writer and name conversations no row has.
pub(crate) fn idle_subscription(c: usize, i: usize) -> (String, String) {
    if c % 2 == 0 {
        (format!("live_idle{c}"), "hot".to_owned())
    } else {
        (HOT_USER.to_owned(), format!("idle-{c}-{i}"))
    }
}

/// The id of the row of round `round` of fan-out case `case`.
pub(crate) fn fanout_id(case: usize, round: usize) -> i64 {
    (case as i64 + 1) * 1_000_000 + round as i64
}

/// The id of the row of another room that fan-out case `case` writes, which no subscriber
/// may get.
pub(crate) fn fanout_other_id(case: usize) -> i64 {
    -(case as i64 + 1)
}

/// One fan-out case: `subscribers` subscriptions of one filter over `connections`
/// connections (an equal share each).
pub struct FanoutSize {
    pub name: &'static str,
    pub subscribers: usize,
    pub connections: usize,
}

/// Sizes of the live scenarios; `--quick` keeps each to a few seconds. The PostgreSQL
/// side ([`crate::pg_scenarios`]) runs the same sizes.
pub struct LiveSizes {
    pub(crate) idle_subs: usize,
    pub(crate) idle_conns: usize,
    pub(crate) latency_inserts: usize,
    /// Non-matching rows per second written by another client during `live-latency`.
    pub(crate) noise_per_sec: u32,
    pub(crate) fanouts: Vec<FanoutSize>,
    pub(crate) fanout_rounds: usize,
    stream_writers: usize,
    stream_batch_rows: usize,
    stream_duration: Duration,
    memory_subs: usize,
    memory_conns: usize,
}

impl LiveSizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                idle_subs: 100,
                idle_conns: 10,
                latency_inserts: 50,
                noise_per_sec: 200,
                fanouts: vec![
                    FanoutSize {
                        name: "live-fanout-1k",
                        subscribers: 100,
                        connections: 100,
                    },
                    FanoutSize {
                        name: "live-fanout-10k",
                        subscribers: 200,
                        connections: 10,
                    },
                ],
                fanout_rounds: 3,
                stream_writers: 4,
                stream_batch_rows: 100,
                stream_duration: Duration::from_secs(1),
                memory_subs: 1_000,
                memory_conns: 100,
            }
        } else {
            Self {
                idle_subs: 1_000,
                idle_conns: 10,
                latency_inserts: 2_000,
                noise_per_sec: 1_000,
                fanouts: vec![
                    FanoutSize {
                        name: "live-fanout-1k",
                        subscribers: 1_000,
                        connections: 1_000,
                    },
                    FanoutSize {
                        name: "live-fanout-10k",
                        subscribers: 10_000,
                        connections: 100,
                    },
                ],
                fanout_rounds: 200,
                stream_writers: 4,
                stream_batch_rows: 100,
                stream_duration: Duration::from_secs(5),
                memory_subs: 10_000,
                memory_conns: 100,
            }
        }
    }

    /// The most connections one fan-out case opens.
    pub fn max_fanout_connections(&self) -> usize {
        self.fanouts
            .iter()
            .map(|f| f.connections)
            .max()
            .unwrap_or(0)
    }
}

/// Creates the tables of the live scenarios (namespace `bench` exists) and runs them all.
/// `node_pid` is the node process the tool started, whose RSS the memory scenario reads.
pub async fn run(
    args: &Args,
    admin: &KalamClient,
    node_pid: u32,
    sizes: &LiveSizes,
) -> Result<Vec<Outcome>> {
    admin
        .sql(
            "CREATE USER TABLE bench.live_msgs (id BIGINT PRIMARY KEY, conversation_id TEXT NOT NULL, content TEXT); \
             CREATE SHARED TABLE bench.fanout (id BIGINT PRIMARY KEY, room TEXT NOT NULL, body TEXT); \
             CREATE STREAM TABLE bench.events (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), kind TEXT, payload TEXT) \
               WITH (retention = '60s', ephemeral = false, max_buffer = 1000000)",
        )
        .await
        .context("creating the tables of the live scenarios")?;
    let url = admin.base_url();
    // Memory first: the other scenarios' freed allocations would blur its RSS difference.
    let mut outcomes = Vec::new();
    if args.wants("live-memory") {
        outcomes.push(memory(args, admin, node_pid, sizes).await?);
    }
    if args.wants("live-latency") {
        outcomes.push(latency(args, url, sizes).await?);
    }
    for (index, case) in sizes.fanouts.iter().enumerate() {
        if args.wants(case.name) {
            outcomes.push(fanout(args, admin, sizes, case, index).await?);
        }
    }
    if args.wants("live-stream") {
        outcomes.push(stream_throughput(args, url, sizes).await?);
    }
    Ok(outcomes)
}

/// a. Latency of one subscriber's notifications while `idle_subs` other subscriptions are
/// registered (see [`idle_subscription`]) and another client of the same user writes
/// non-matching rows at `noise_per_sec`. Timed from just before the INSERT request is sent
/// to the arrival of its `change` message.
async fn latency(args: &Args, url: &str, sizes: &LiveSizes) -> Result<Outcome> {
    let n = sizes.latency_inserts;
    progress(&format!(
        "live-latency: {} idle subscriptions on {} connections, {n} sequential inserts, noise at {}/s",
        sizes.idle_subs, sizes.idle_conns, sizes.noise_per_sec
    ));
    let hot_token = token(args, HOT_USER, false)?;
    let hot = KalamClient::new(url)?.with_token(hot_token.clone());
    let per_conn = sizes.idle_subs / sizes.idle_conns;
    let mut plan = Vec::with_capacity(sizes.idle_conns);
    for c in 0..sizes.idle_conns {
        let (user, _) = idle_subscription(c, 0);
        let client = if user == HOT_USER {
            hot.clone()
        } else {
            KalamClient::new(url)?.with_token(token(args, &user, false)?)
        };
        let subs: Vec<Subscription> = (0..per_conn)
            .map(|i| {
                let (_, conversation) = idle_subscription(c, i);
                subscription(
                    format!("idle{i}"),
                    format!(
                        "SELECT * FROM bench.live_msgs WHERE conversation_id = '{conversation}'"
                    ),
                )
            })
            .collect();
        plan.push((client, subs));
    }
    let mut idle = Readers::open(plan).await.context("live-latency: idle")?;
    let mut subscriber = Readers::open(vec![(hot.clone(), vec![subscription("hot", HOT_SQL)])])
        .await
        .context("live-latency: subscriber")?;

    // Noise: rows of the same user (the same partition) that no subscription matches, from
    // a client of its own.
    let noise_client = KalamClient::new(url)?.with_token(hot_token);
    let (stop_noise, noise_stopped) = watch::channel(false);
    let rate = sizes.noise_per_sec;
    let noise = tokio::spawn(paced(rate, noise_stopped, move |k| {
        let client = noise_client.clone();
        async move {
            client
                .sql_params(
                    "INSERT INTO bench.live_msgs (id, conversation_id, content) VALUES ($1, 'noise', $2)",
                    vec![json!(NOISE_ID_BASE + k as i64), json!(format!("noise {k}"))],
                )
                .await?;
            anyhow::Ok(())
        }
    }));

    let mut h = hist();
    let mut ticker = Ticker::new("live-latency", n);
    let mut last_seq = 0;
    let started = Instant::now();
    for i in 0..n {
        let sent = Instant::now();
        hot.sql_params(
            "INSERT INTO bench.live_msgs (id, conversation_id, content) VALUES ($1, 'hot', $2)",
            vec![json!(i), json!(format!("message {i}"))],
        )
        .await?;
        let received = subscriber
            .recv(EVENT_TIMEOUT)
            .await
            .with_context(|| format!("live-latency: waiting for insert {i}"))?;
        let change = expect_insert(received)?;
        let expected = [
            ("id", json!(i)),
            ("conversation_id", json!("hot")),
            ("content", json!(format!("message {i}"))),
        ];
        match change.change.rows.as_slice() {
            [row] => check_fields("live-latency", row, &expected)?,
            rows => bail!("live-latency: insert {i} delivered as {} rows", rows.len()),
        }
        let seq = change.change.seq;
        if seq <= last_seq {
            bail!("live-latency: seq {seq} after {last_seq}: it must grow");
        }
        last_seq = seq;
        h.saturating_record(micros(change.at.duration_since(sent)));
        ticker.tick(i + 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_noise.send(true);
    let noise_rows = noise.await.context("the noise writer panicked")??;

    hot.sql("INSERT INTO bench.live_msgs (id, conversation_id, content) VALUES (-1, 'cold', 'matches no subscription')")
        .await?;
    subscriber
        .expect_quiet(QUIET)
        .await
        .context("live-latency: subscriber")?;
    idle.expect_quiet(QUIET)
        .await
        .context("live-latency: idle subscriptions")?;
    subscriber.close().await?;
    idle.close().await?;
    Ok(Outcome::new("live-latency", n, n, seconds, &h, None)
        .with("idle_subscriptions", per_conn * sizes.idle_conns)
        .with("noise_rows", noise_rows)
        .with("noise_rows_per_sec", noise_rows as f64 / seconds))
}

/// b. One INSERT into a SHARED table matched by `case.subscribers` subscriptions over
/// `case.connections` connections: time from the start of the request until the last
/// subscription has received it, once per round.
async fn fanout(
    args: &Args,
    admin: &KalamClient,
    sizes: &LiveSizes,
    case: &FanoutSize,
    index: usize,
) -> Result<Outcome> {
    let name = case.name;
    let conns = case.connections;
    let per_conn = case.subscribers / conns;
    let expected = per_conn * conns;
    let rounds = sizes.fanout_rounds;
    progress(&format!(
        "{name}: {expected} subscriptions on {conns} connections, {rounds} inserts"
    ));
    let client = KalamClient::new(admin.base_url())?.with_token(token(args, "live_fan", false)?);
    let plan: Vec<_> = (0..conns)
        .map(|_| {
            let subs: Vec<Subscription> = (0..per_conn)
                .map(|i| subscription(format!("room{i}"), FANOUT_SQL))
                .collect();
            (client.clone(), subs)
        })
        .collect();
    // Like the PostgreSQL side: one reader per connection, a task per subscriber when a
    // connection serves several.
    let delivery = if per_conn > 1 {
        Delivery::SubscriberTasks
    } else {
        Delivery::Reader
    };
    let mut readers = Readers::open_with(plan, delivery).await.context(name)?;

    // A row of another room, written before the rounds: every connection gets its changes
    // in order, so a wrong delivery of it would reach a round's check ahead of that round's
    // change and fail it, however late the node sent it (the quiet period at the end only
    // sees what arrives within it).
    admin
        .sql(&format!(
            "INSERT INTO bench.fanout (id, room, body) VALUES ({}, 'r2', 'another room')",
            fanout_other_id(index)
        ))
        .await?;
    let mut h = hist();
    let started = Instant::now();
    for round in 0..rounds {
        let id = fanout_id(index, round);
        let body = format!("round {round}");
        let expect = [
            ("id", json!(id)),
            ("room", json!(FANOUT_ROOM)),
            ("body", json!(body)),
        ];
        let mut seq = None;
        let sent = Instant::now();
        admin
            .sql_params(
                "INSERT INTO bench.fanout (id, room, body) VALUES ($1, $2, $3)",
                vec![json!(id), json!(FANOUT_ROOM), json!(body)],
            )
            .await?;
        let mut check = Round::new(format!("{name}: round {round}"), expected, sent);
        while !check.complete() {
            let received = readers.recv(EVENT_TIMEOUT).await.with_context(|| {
                format!(
                    "{name}: round {round}, {} of {expected} delivered",
                    check.delivered()
                )
            })?;
            let change = expect_insert(received)?;
            // API.md: every subscriber of one change sees the same seq.
            if *seq.get_or_insert(change.change.seq) != change.change.seq {
                bail!("{name}: round {round} arrived with different seq values");
            }
            check.deliver(
                (change.conn, change.query_id),
                change.at,
                &change.change.rows,
                &expect,
            )?;
        }
        h.saturating_record(micros(check.latency()));
    }
    let seconds = started.elapsed().as_secs_f64();
    readers.expect_quiet(QUIET).await.context(name)?;
    readers.close().await?;
    Ok(
        Outcome::new(name, rounds, rounds * expected, seconds, &h, None)
            .with("subscribers", expected)
            .with("connections", conns)
            .method(fanout_method(conns, per_conn)),
    )
}

/// How the KalamDB side of a fan-out case delivers, for the notes of the report.
fn fanout_method(conns: usize, per_conn: usize) -> String {
    if per_conn == 1 {
        format!(
            "{conns} WebSocket connections, one subscription each; timed from the start of \
             the INSERT until the last connection has parsed its change"
        )
    } else {
        format!(
            "{conns} WebSocket connections with {per_conn} subscriptions each, all with option \
             group: per change each connection gets one change_group frame, which the client \
             splits into one change per subscription, handed to that subscription's task over \
             an in-process channel; timed from the start of the INSERT until the last \
             subscriber task has it"
        )
    }
}

/// c. Events per second delivered to one subscriber of a STREAM table while
/// `stream_writers` clients insert multi-row batches for `stream_duration`. Every inserted
/// event must arrive exactly once; the time runs from the first INSERT to the last delivery.
async fn stream_throughput(args: &Args, url: &str, sizes: &LiveSizes) -> Result<Outcome> {
    progress(&format!(
        "live-stream: {} writers x {}-row INSERTs for {:?}, one subscriber",
        sizes.stream_writers, sizes.stream_batch_rows, sizes.stream_duration
    ));
    let reader = KalamClient::new(url)?.with_token(token(args, "live_stream", false)?);
    let mut subscriber = Readers::open(vec![(reader, vec![subscription("events", STREAM_SQL)])])
        .await
        .context("live-stream")?;
    let writer_token = token(args, "live_stream_writer", false)?;

    let started = Instant::now();
    let mut writers = Vec::with_capacity(sizes.stream_writers);
    for w in 0..sizes.stream_writers {
        let client = KalamClient::new(url)?.with_token(writer_token.clone());
        let (rows, duration) = (sizes.stream_batch_rows, sizes.stream_duration);
        writers.push(tokio::spawn(async move {
            let (mut inserted, mut statements) = (0u64, 0usize);
            while started.elapsed() < duration {
                let values = (0..rows)
                    .map(|i| format!("('w{w}', 'batch {statements} event {i}')"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let r = client
                    .sql(&format!(
                        "INSERT INTO bench.events (kind, payload) VALUES {values}"
                    ))
                    .await?;
                let affected = r.results.first().and_then(|r| r.affected_rows);
                if affected != Some(rows as u64) {
                    bail!("live-stream: affected_rows {affected:?}, expected {rows}");
                }
                inserted += rows as u64;
                statements += 1;
            }
            anyhow::Ok((inserted, statements))
        }));
    }
    let (mut inserted, mut statements) = (0u64, 0usize);
    // Every event written, as (kind, payload): each delivery must take one of them away.
    let mut pending = HashSet::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let (rows, sent) = writer.await.context("a stream writer panicked")??;
        inserted += rows;
        statements += sent;
        for s in 0..sent {
            for i in 0..sizes.stream_batch_rows {
                pending.insert((format!("w{w}"), format!("batch {s} event {i}")));
            }
        }
    }

    let mut delivered = HashSet::with_capacity(inserted as usize);
    let mut last = started;
    while !pending.is_empty() {
        let received = subscriber.recv(EVENT_TIMEOUT).await.with_context(|| {
            format!(
                "live-stream: {} of {inserted} events delivered",
                delivered.len()
            )
        })?;
        let change = expect_insert(received)?;
        for (id, row) in row_ids(&change.change.rows)?
            .into_iter()
            .zip(&change.change.rows)
        {
            if !delivered.insert(id) {
                bail!("live-stream: event {id} delivered twice");
            }
            let text = |column: &str| {
                row.get(column)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("live-stream: event {id} has no text {column}"))
            };
            let event = (text("kind")?, text("payload")?);
            if !pending.remove(&event) {
                bail!("live-stream: event {id} {event:?} was not written, or arrived twice");
            }
        }
        last = last.max(change.at);
    }
    subscriber
        .expect_quiet(QUIET)
        .await
        .context("live-stream: more events than inserted")?;
    subscriber.close().await?;
    let seconds = last.duration_since(started).as_secs_f64();
    let rows = delivered.len();
    Ok(
        Outcome::new("live-stream", statements, rows, seconds, &hist(), None)
            .with("writers", sizes.stream_writers)
            .with("batch_rows", sizes.stream_batch_rows),
    )
}

/// d. The node's RSS before and after opening `memory_subs` idle subscriptions (distinct
/// filters) over `memory_conns` connections, scaled to MB per 10,000 subscriptions. An
/// approximation: the allocator may reuse memory freed earlier, or keep pages it freed.
async fn memory(
    args: &Args,
    admin: &KalamClient,
    node_pid: u32,
    sizes: &LiveSizes,
) -> Result<Outcome> {
    let conns = sizes.memory_conns;
    let per_conn = sizes.memory_subs / conns;
    let subs = per_conn * conns;
    progress(&format!(
        "live-memory: {subs} idle subscriptions on {conns} connections"
    ));
    let client = KalamClient::new(admin.base_url())?.with_token(token(args, MEMORY_USER, false)?);
    let listed_sql =
        format!("SELECT COUNT(*) FROM system.live_queries WHERE user_id = '{MEMORY_USER}'");

    let before = rss_kib(node_pid)?;
    let started = Instant::now();
    let plan: Vec<_> = (0..conns)
        .map(|c| {
            let subs: Vec<Subscription> = (0..per_conn)
                .map(|i| {
                    subscription(
                        format!("m{i}"),
                        format!(
                            "SELECT * FROM bench.live_msgs WHERE conversation_id = 'mem-{c}-{i}'"
                        ),
                    )
                })
                .collect();
            (client.clone(), subs)
        })
        .collect();
    let mut readers = Readers::open(plan).await.context("live-memory")?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(node_pid)?;

    let listed = count(admin, &listed_sql).await?;
    if listed != subs as u64 {
        bail!("live-memory: system.live_queries lists {listed} subscriptions, {subs} are open");
    }
    readers.expect_quiet(QUIET).await.context("live-memory")?;
    readers.close().await?;
    // API.md: closing a connection removes its rows from system.live_queries at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = count(admin, &listed_sql).await?;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "live-memory: {left} subscriptions still listed 5 s after their connections closed"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (before_mb, after_mb) = (before as f64 / 1024.0, after as f64 / 1024.0);
    Ok(
        Outcome::new("live-memory", subs, subs, seconds, &hist(), None)
            .with("rss_before_mb", before_mb)
            .with("rss_after_mb", after_mb)
            .with(
                "mb_per_10k_subscriptions",
                (after_mb - before_mb) / subs as f64 * 10_000.0,
            ),
    )
}

/// A subscription as the scenarios open them: with option `group`, so that a change
/// reaching many subscriptions of one connection is one frame, split again by the client.
fn subscription(query_id: impl Into<String>, sql: impl Into<String>) -> Subscription {
    Subscription {
        query_id: query_id.into(),
        sql: sql.into(),
        options: SubscriptionOptions {
            group: Some(true),
            ..Default::default()
        },
    }
}

fn row_ids(rows: &[Row]) -> Result<Vec<i64>> {
    rows.iter()
        .map(|row| {
            row.get("id")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| anyhow!("a delivered row has no integer id: {row:?}"))
        })
        .collect()
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status` (Linux only).
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (the live-memory scenario needs Linux)"))?;
    parse_vm_rss(&status).ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Opens a connection and waits until the node has confirmed every one of `subs`: only
/// writes completed after `subscribed` are guaranteed to be delivered.
async fn open_subscribed(client: &KalamClient, subs: Vec<Subscription>) -> Result<LiveConnection> {
    let mut live = client.live().await?;
    let mut waiting: HashSet<String> = subs.iter().map(|s| s.query_id.clone()).collect();
    live.subscribe(subs).await?;
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    while !waiting.is_empty() {
        let next = tokio::time::timeout_at(deadline, live.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} subscriptions not confirmed within {SUBSCRIBE_TIMEOUT:?}",
                    waiting.len()
                )
            })?;
        match next {
            None => bail!("the node ended the connection before confirming every subscription"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ServerMessage::Subscribed { query_id, .. })) => {
                if !waiting.remove(&query_id) {
                    bail!("'subscribed' for {query_id}, which was not asked for or came twice");
                }
            }
            Some(Ok(ServerMessage::Error {
                query_id,
                code,
                message,
                ..
            })) => bail!("subscription {query_id:?} refused: {code}: {message}"),
            Some(Ok(other)) => bail!("unexpected message while subscribing: {other:?}"),
        }
    }
    Ok(live)
}

/// One message read by a [`Readers`] task, stamped when it arrived.
struct Received {
    conn: usize,
    at: Instant,
    message: std::result::Result<Got, String>,
}

/// What a subscriber got: a message, or its share of a `change_group`. Small (the message
/// boxed, a group's change shared behind an `Arc`, as the PostgreSQL side shares its row):
/// a fan-out moves one through two channels per subscriber and change.
#[derive(Debug)]
enum Got {
    Message(Box<ServerMessage>),
    Shared {
        query_id: Arc<str>,
        change: Arc<SharedChange>,
    },
}

/// One change of a `change_group`, or of a `change` message, as its subscribers share it.
#[derive(Debug)]
struct SharedChange {
    change_type: ChangeType,
    rows: Vec<Row>,
    seq: u64,
}

/// An INSERT change as a scenario checks it.
struct Insert {
    conn: usize,
    at: Instant,
    query_id: Arc<str>,
    change: Arc<SharedChange>,
}

fn expect_insert(received: Received) -> Result<Insert> {
    let conn = received.conn;
    let (query_id, change) = match received.message {
        Ok(Got::Message(message)) => match *message {
            ServerMessage::Change {
                query_id,
                change_type,
                rows,
                seq,
                ..
            } => (
                Arc::from(query_id),
                Arc::new(SharedChange {
                    change_type,
                    rows,
                    seq,
                }),
            ),
            other => bail!("connection {conn}: expected an INSERT change, got {other:?}"),
        },
        Ok(Got::Shared { query_id, change }) => (query_id, change),
        Err(e) => bail!("connection {conn} failed: {e}"),
    };
    if change.change_type != ChangeType::Insert {
        bail!("connection {conn}: expected an INSERT change, got {change:?}");
    }
    Ok(Insert {
        conn,
        at: received.at,
        query_id,
        change,
    })
}

/// Connections with their subscriptions confirmed, each read by its own task from the
/// moment it is confirmed: the node pings every connection and closes one that does not
/// answer within `ws_idle_timeout_ms`, so even idle ones must be read. Everything read
/// goes to one channel, stamped on arrival, so a scenario sees exactly what was delivered.
struct Readers {
    rx: mpsc::UnboundedReceiver<Received>,
    /// Tells the tasks to stop; dropping it (a scenario failed) stops them too.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Option<LiveConnection>>>,
}

impl Readers {
    /// Opens one connection per `(client, subscriptions)`, concurrently, and returns once
    /// every subscription is confirmed. Messages are stamped by the connection's reader.
    async fn open(plan: Vec<(KalamClient, Vec<Subscription>)>) -> Result<Self> {
        Self::open_with(plan, Delivery::Reader).await
    }

    async fn open_with(
        plan: Vec<(KalamClient, Vec<Subscription>)>,
        delivery: Delivery,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let mut confirmations = Vec::with_capacity(plan.len());
        let mut tasks = Vec::with_capacity(plan.len());
        for (conn, (client, subs)) in plan.into_iter().enumerate() {
            let (confirmed, confirmation) = oneshot::channel::<Result<()>>();
            let (tx, stopped) = (tx.clone(), stopped.clone());
            let route = match delivery {
                Delivery::Reader => Route::Reader(tx),
                Delivery::SubscriberTasks => Route::tasks(conn, &subs, tx),
            };
            tasks.push(tokio::spawn(async move {
                match open_subscribed(&client, subs).await {
                    Ok(live) => {
                        let _ = confirmed.send(Ok(()));
                        Some(read_until_stopped(conn, live, route, stopped).await)
                    }
                    Err(e) => {
                        let _ = confirmed.send(Err(e));
                        None
                    }
                }
            }));
            confirmations.push(confirmation);
        }
        // Built before waiting, so that an error drops it and stops the connections opened.
        let readers = Readers { rx, stop, tasks };
        for (conn, confirmation) in confirmations.into_iter().enumerate() {
            confirmation
                .await
                .map_err(|_| anyhow!("the task of live connection {conn} panicked"))?
                .with_context(|| format!("opening live connection {conn}"))?;
        }
        Ok(readers)
    }

    /// The next message of any connection.
    async fn recv(&mut self, within: Duration) -> Result<Received> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(received)) => Ok(received),
            Ok(None) => bail!("every live connection has ended"),
            Err(_) => bail!("no live message within {within:?}"),
        }
    }

    /// Fails when any message arrives within `within`: nothing more is expected.
    async fn expect_quiet(&mut self, within: Duration) -> Result<()> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Err(_) => Ok(()),
            Ok(None) => bail!("every live connection has ended"),
            Ok(Some(r)) => bail!(
                "unexpected message on live connection {}: {:?}",
                r.conn,
                r.message
            ),
        }
    }

    /// Stops the readers and closes the connections; the node drops their subscriptions.
    async fn close(self) -> Result<()> {
        // Fails only when every task has ended already, which is fine here.
        let _ = self.stop.send(true);
        let mut connections = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Some(live) = task.await.context("a live reader task panicked")? {
                connections.push(live);
            }
        }
        // A failed close changes no result: the connection is gone either way.
        let _ = join_all(connections.into_iter().map(LiveConnection::close)).await;
        Ok(())
    }
}

/// Where a connection's reader puts what it reads.
#[derive(Clone, Copy)]
enum Delivery {
    /// Straight to the scenario, stamped by the reader.
    Reader,
    /// Each change to a task of its subscription, which stamps it when it has it: the way
    /// an application hands changes to the many users one connection serves, and the way
    /// the PostgreSQL side of the fan-outs dispatches (`pg_scenarios`).
    SubscriberTasks,
}

enum Route {
    Reader(mpsc::UnboundedSender<Received>),
    Tasks {
        out: mpsc::UnboundedSender<Received>,
        /// The connection's subscriptions in registration order, each with its task.
        tasks: Vec<Task>,
        /// query_id -> index into `tasks`.
        by_query_id: HashMap<String, usize>,
    },
}

/// A subscription's task, as its connection's reader hands changes to it.
struct Task {
    query_id: Arc<str>,
    inbox: mpsc::UnboundedSender<Got>,
}

/// Where the subscriptions a `change_group` names are among `tasks`. The node names them
/// in registration order (docs/live-queries.md), so each is looked for first right after
/// the one before, then by hash: a relay's routing, reading its table in order instead of
/// hashing every name.
fn in_order<'a>(
    tasks: &'a [Task],
    by_query_id: &'a HashMap<String, usize>,
    query_ids: &'a [String],
) -> impl Iterator<Item = (&'a str, Option<&'a Task>)> + 'a {
    let mut next = 0;
    query_ids.iter().map(move |query_id| {
        let at = match tasks.get(next) {
            Some(task) if *task.query_id == **query_id => Some(next),
            _ => by_query_id.get(query_id).copied(),
        };
        next = at.map_or(next, |at| at + 1);
        (query_id.as_str(), at.map(|at| &tasks[at]))
    })
}

impl Route {
    /// Starts one task per subscription of connection `conn`.
    fn tasks(conn: usize, subs: &[Subscription], out: mpsc::UnboundedSender<Received>) -> Self {
        let mut tasks = Vec::with_capacity(subs.len());
        let mut by_query_id = HashMap::with_capacity(subs.len());
        for sub in subs {
            let (to_task, mut inbox) = mpsc::unbounded_channel::<Got>();
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(got) = inbox.recv().await {
                    let at = Instant::now();
                    let _ = out.send(Received {
                        conn,
                        at,
                        message: Ok(got),
                    });
                }
            });
            by_query_id.insert(sub.query_id.clone(), tasks.len());
            tasks.push(Task {
                query_id: Arc::from(sub.query_id.as_str()),
                inbox: to_task,
            });
        }
        Route::Tasks {
            out,
            tasks,
            by_query_id,
        }
    }

    /// The next message of `live` as this route wants it: whole `change_group` frames
    /// when it dispatches them itself.
    async fn next(
        &self,
        live: &mut LiveConnection,
    ) -> Option<std::result::Result<ServerMessage, kalam_client::ClientError>> {
        match self {
            Route::Reader(_) => live.next().await,
            Route::Tasks { .. } => live.next_frame().await,
        }
    }

    fn deliver(&self, conn: usize, message: std::result::Result<ServerMessage, String>) {
        let (out, tasks, by_query_id) = match self {
            Route::Reader(out) => {
                let message = message.map(|m| Got::Message(Box::new(m)));
                let _ = out.send(Received {
                    conn,
                    at: Instant::now(),
                    message,
                });
                return;
            }
            Route::Tasks {
                out,
                tasks,
                by_query_id,
            } => (out, tasks, by_query_id),
        };
        let to_scenario = |message| {
            let _ = out.send(Received {
                conn,
                at: Instant::now(),
                message,
            });
        };
        match message {
            Ok(ServerMessage::ChangeGroup {
                query_ids,
                change_type,
                rows,
                seq,
                ..
            }) => {
                let change = Arc::new(SharedChange {
                    change_type,
                    rows,
                    seq,
                });
                for (query_id, task) in in_order(tasks, by_query_id, &query_ids) {
                    match task {
                        Some(task) => {
                            let _ = task.inbox.send(Got::Shared {
                                query_id: task.query_id.clone(),
                                change: change.clone(),
                            });
                        }
                        None => to_scenario(Err(format!(
                            "a change for query_id {query_id:?}, not subscribed on this connection"
                        ))),
                    }
                }
            }
            Ok(message) => {
                let task = match &message {
                    ServerMessage::Change { query_id, .. } => by_query_id.get(query_id),
                    _ => None,
                };
                let got = Got::Message(Box::new(message));
                match task {
                    Some(&at) => {
                        let _ = tasks[at].inbox.send(got);
                    }
                    None => to_scenario(Ok(got)),
                }
            }
            Err(e) => to_scenario(Err(e)),
        }
    }
}

async fn read_until_stopped(
    conn: usize,
    mut live: LiveConnection,
    route: Route,
    mut stop: watch::Receiver<bool>,
) -> LiveConnection {
    loop {
        tokio::select! {
            // A stop, or the scenario dropped its `Readers`.
            _ = stop.changed() => break,
            next = route.next(&mut live) => {
                let Some(result) = next else { break };
                let failed = result.is_err();
                route.deliver(conn, result.map_err(|e| e.with_causes()));
                if failed {
                    break;
                }
            }
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_members_are_found_in_order_and_out_of_it() {
        let (inbox, _rx) = mpsc::unbounded_channel();
        let tasks: Vec<Task> = ["a", "b", "c"]
            .map(|q| Task {
                query_id: Arc::from(q),
                inbox: inbox.clone(),
            })
            .into();
        let by_query_id: HashMap<String, usize> = [("a", 0), ("b", 1), ("c", 2)]
            .map(|(q, i)| (q.to_string(), i))
            .into();
        let found = |names: &[&str]| -> Vec<Option<String>> {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            in_order(&tasks, &by_query_id, &names)
                .map(|(name, task)| {
                    task.map(|t| {
                        assert_eq!(&*t.query_id, name);
                        name.to_string()
                    })
                })
                .collect()
        };
        let some = |n: &str| Some(n.to_string());
        assert_eq!(found(&["a", "b", "c"]), [some("a"), some("b"), some("c")]);
        assert_eq!(found(&["b", "c"]), [some("b"), some("c")]);
        assert_eq!(found(&["c", "a"]), [some("c"), some("a")]);
        assert_eq!(found(&["a", "x", "b"]), [some("a"), None, some("b")]);
    }

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tkalamdb\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(51_234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
