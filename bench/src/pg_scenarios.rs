//! The PostgreSQL side of the comparable scenarios: the same workloads, sizes, timing and
//! checks as the KalamDB side ([`crate::kalam`], [`crate::live`]), on tables shaped like
//! KalamDB's. KalamDB keeps a partition per user in a USER table; here the user is a
//! column, leading the primary key or an index. Single-row statements are prepared once
//! and executed with parameters (one round trip each, what an application does with
//! PostgreSQL); batches and the load are multi-row `INSERT ... VALUES` texts, as on KalamDB.
//! The insert tables have no trigger: PostgreSQL pays for notifications only on the tables
//! of the live scenarios.
//!
//! Live queries: LISTEN/NOTIFY has no server-side filter. The equivalent is what Supabase
//! Realtime does: an `AFTER INSERT ... FOR EACH ROW` trigger calls
//! `pg_notify(channel, row_to_json(NEW)::text)` for every row, on one channel, and the
//! listening client parses every notification and filters it itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::try_join_all;
use futures::stream::{self, StreamExt, TryStreamExt};
use kalam_client::wire::Row;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::live::{
    fanout_id, fanout_other_id, idle_subscription, FanoutSize, LiveSizes, FANOUT_ROOM, HOT_USER,
    NOISE_ID_BASE,
};
use crate::measure::{
    check_conversation_ids, check_count, check_fields, concurrent, hist, micros, paced, progress,
    sequential, values, Round, Ticker, EVENT_TIMEOUT, QUIET,
};
use crate::pg::{Listener, PgEvent, PgServer};
use crate::report::Outcome;
use crate::{Args, Sizes};

const SCHEMA: &str = "
CREATE TABLE seq (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, content TEXT);
CREATE TABLE conc (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, content TEXT);
CREATE TABLE batch (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, content TEXT);
CREATE TABLE msgs (user_id TEXT NOT NULL, id BIGINT NOT NULL, conversation_id TEXT NOT NULL,
                   content TEXT, PRIMARY KEY (user_id, id));
CREATE INDEX msgs_by_conversation ON msgs (user_id, conversation_id);
CREATE TABLE live_msgs (id BIGINT PRIMARY KEY, user_id TEXT NOT NULL,
                        conversation_id TEXT NOT NULL, content TEXT);
CREATE TABLE fanout (id BIGINT PRIMARY KEY, room TEXT NOT NULL, body TEXT);
CREATE FUNCTION notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], row_to_json(NEW)::text);
  RETURN NULL;
END $$;
CREATE TRIGGER live_msgs_notify AFTER INSERT ON live_msgs
  FOR EACH ROW EXECUTE FUNCTION notify_row('live_msgs');
CREATE TRIGGER fanout_notify AFTER INSERT ON fanout
  FOR EACH ROW EXECUTE FUNCTION notify_row('fanout');
";

const INSERT_LIVE: &str =
    "INSERT INTO live_msgs (id, user_id, conversation_id, content) VALUES ($1, $2, $3, $4)";
/// How many `LISTEN` connections are being opened at once.
const OPEN_CONCURRENCY: usize = 16;

/// Creates the tables and runs every comparable scenario, in the KalamDB side's order.
pub async fn run(args: &Args, server: &PgServer, sizes: &Sizes) -> Result<Vec<Outcome>> {
    let admin = server.connect().await?;
    admin
        .batch_execute(SCHEMA)
        .await
        .context("creating the PostgreSQL tables")?;
    let mut outcomes = Vec::new();
    if args.wants("insert-seq") {
        outcomes.push(insert_seq(server, sizes.seq_inserts).await?);
    }
    if args.wants("insert-concurrent") {
        outcomes.push(
            insert_concurrent(
                server,
                sizes.concurrent_writers,
                sizes.concurrent_inserts_each,
            )
            .await?,
        );
    }
    if args.wants("insert-batch") {
        outcomes.push(insert_batch(&admin, sizes.batches, sizes.batch_rows).await?);
    }
    if args.wants("select-user") {
        outcomes.push(select_user(server, &admin, sizes).await?);
    }
    if args.wants("live-latency") {
        outcomes.push(latency(server, &sizes.live).await?);
    }
    for (index, case) in sizes.live.fanouts.iter().enumerate() {
        if args.wants(case.name) {
            outcomes.push(fanout(server, &admin, &sizes.live, case, index).await?);
        }
    }
    Ok(outcomes)
}

async fn count(c: &Client, sql: &str) -> Result<u64> {
    let n: i64 = c.query_one(sql, &[]).await?.get(0);
    Ok(n as u64)
}

/// The row count of a simple-protocol statement's command tag.
fn command_rows(messages: &[SimpleQueryMessage]) -> Result<u64> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no command tag in the answer"))
}

async fn insert_seq(server: &PgServer, n: usize) -> Result<Outcome> {
    progress(&format!(
        "postgres insert-seq: {n} sequential single-row inserts"
    ));
    let c = server.connect().await?;
    let stmt = c
        .prepare("INSERT INTO seq (user_id, content) VALUES ($1, $2)")
        .await?;
    let (client, stmt) = (&c, &stmt);
    let timed = sequential("postgres insert-seq", n, true, move |i| async move {
        let content = format!("message {i}");
        let inserted = client.execute(stmt, &[&"alice", &content]).await?;
        check_count("rows inserted", inserted, 1)?;
        anyhow::Ok(None::<f64>)
    })
    .await?;
    check_count(
        "postgres insert-seq: rows stored",
        count(&c, "SELECT count(*) FROM seq").await?,
        n,
    )?;
    Ok(Outcome::new(
        "insert-seq",
        n,
        n,
        timed.seconds,
        &timed.client,
        None,
    ))
}

async fn insert_concurrent(server: &PgServer, writers: usize, each: usize) -> Result<Outcome> {
    progress(&format!(
        "postgres insert-concurrent: {writers} writers x {each} single-row inserts"
    ));
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let c = server.connect().await?;
        let stmt = c
            .prepare("INSERT INTO conc (user_id, content) VALUES ($1, $2)")
            .await?;
        // The task owns what it uses (no borrows inside a spawned future); each INSERT
        // clones two Arcs and the user name.
        let (client, user) = (Arc::new(c), format!("writer{w}"));
        tasks.push(async move {
            let timed = sequential("postgres insert-concurrent", each, false, move |i| {
                let (client, stmt, user) = (client.clone(), stmt.clone(), user.clone());
                async move {
                    let content = format!("w{w} m{i}");
                    let inserted = client.execute(&stmt, &[&user, &content]).await?;
                    check_count("rows inserted", inserted, 1)?;
                    anyhow::Ok(None::<f64>)
                }
            })
            .await?;
            anyhow::Ok(timed.client)
        });
    }
    let (h, seconds) = concurrent(tasks).await?;
    let c = server.connect().await?;
    let rows = c
        .query("SELECT user_id, count(*) FROM conc GROUP BY user_id", &[])
        .await?;
    check_count(
        "postgres insert-concurrent: writers with rows",
        rows.len() as u64,
        writers,
    )?;
    for row in &rows {
        let (user, stored): (String, i64) = (row.get(0), row.get(1));
        check_count(
            &format!("postgres insert-concurrent: rows of {user}"),
            stored as u64,
            each,
        )?;
    }
    let n = writers * each;
    Ok(Outcome::new("insert-concurrent", n, n, seconds, &h, None))
}

async fn insert_batch(admin: &Client, batches: usize, rows: usize) -> Result<Outcome> {
    progress(&format!(
        "postgres insert-batch: {batches} INSERTs of {rows} rows"
    ));
    let statements: Vec<String> = (0..batches)
        .map(|b| {
            format!(
                "INSERT INTO batch (user_id, content) VALUES {}",
                values(Some("alice"), b * rows, rows, true)
            )
        })
        .collect();
    let statements = &statements;
    let timed = sequential(
        "postgres insert-batch",
        batches,
        true,
        move |b| async move {
            let answer = admin.simple_query(&statements[b]).await?;
            check_count("rows inserted", command_rows(&answer)?, rows)?;
            anyhow::Ok(None::<f64>)
        },
    )
    .await?;
    check_count(
        "postgres insert-batch: rows stored",
        count(admin, "SELECT count(*) FROM batch").await?,
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

async fn select_user(server: &PgServer, admin: &Client, sizes: &Sizes) -> Result<Outcome> {
    let total = sizes.users * sizes.rows_per_user;
    progress(&format!(
        "postgres select-user: loading {total} rows over {} users",
        sizes.users
    ));
    // Loaded like the KalamDB side: 4 users at a time, 1,000-row INSERTs.
    let mut loaders = Vec::new();
    for _ in 0..4 {
        loaders.push(server.connect().await?);
    }
    let chunk = 1000.min(sizes.rows_per_user);
    let rows_per_user = sizes.rows_per_user;
    let mut ticker = Ticker::new("postgres select-user: users loaded", sizes.users);
    for first in (0..sizes.users).step_by(loaders.len()) {
        let users = first..sizes.users.min(first + loaders.len());
        let loads = loaders.iter().zip(users).map(move |(c, u)| async move {
            let user = format!("user{u}");
            for start in (0..rows_per_user).step_by(chunk) {
                let sql = format!(
                    "INSERT INTO msgs (user_id, id, conversation_id, content) VALUES {}",
                    values(
                        Some(user.as_str()),
                        start,
                        chunk.min(rows_per_user - start),
                        false
                    )
                );
                c.simple_query(&sql).await?;
            }
            anyhow::Ok(())
        });
        try_join_all(loads).await?;
        ticker.tick(first + loaders.len());
    }
    drop(loaders);
    check_count(
        "postgres select-user: rows loaded",
        count(admin, "SELECT count(*) FROM msgs").await?,
        total,
    )?;
    // Statistics and visibility map as a table in steady state has them.
    admin.batch_execute("VACUUM ANALYZE msgs").await?;

    let stmt = admin
        .prepare("SELECT id, content FROM msgs WHERE user_id = $1 AND conversation_id = $2")
        .await?;
    let (users, stmt) = (sizes.users, &stmt);
    let timed = sequential(
        "postgres select-user",
        sizes.selects,
        true,
        move |i| async move {
            let user = format!("user{}", (i * 7919) % users);
            let rows = admin.query(stmt, &[&user, &"conversation 3"]).await?;
            let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
            check_conversation_ids(&format!("rows of {user}"), ids, rows_per_user)?;
            anyhow::Ok(None::<f64>)
        },
    )
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

/// The subscriptions of the listening client of `live-latency`, by the
/// `(user_id, conversation_id)` their filter names: subscription 0 is the timed
/// subscriber, the others are the idle ones of the KalamDB side.
struct Dispatcher {
    subscriptions: HashMap<(String, String), Vec<usize>>,
    delivered: Vec<usize>,
    filtered: usize,
}

impl Dispatcher {
    fn new(sizes: &LiveSizes) -> Self {
        let mut subscriptions: HashMap<(String, String), Vec<usize>> = HashMap::new();
        subscriptions
            .entry((HOT_USER.to_owned(), "hot".to_owned()))
            .or_default()
            .push(0);
        let mut next = 1;
        let per_conn = sizes.idle_subs / sizes.idle_conns;
        for c in 0..sizes.idle_conns {
            for i in 0..per_conn {
                subscriptions
                    .entry(idle_subscription(c, i))
                    .or_default()
                    .push(next);
                next += 1;
            }
        }
        Self {
            subscriptions,
            delivered: vec![0; next],
            filtered: 0,
        }
    }

    /// Hands a notified row to the subscriptions whose filter it matches; true when the
    /// timed subscriber is one of them.
    fn route(&mut self, row: &Row) -> Result<bool> {
        let text = |column: &str| {
            row.get(column)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("a notified row without text column {column}: {row:?}"))
        };
        let key = (text("user_id")?, text("conversation_id")?);
        match self.subscriptions.get(&key) {
            None => {
                self.filtered += 1;
                Ok(false)
            }
            Some(subs) => {
                for s in subs {
                    self.delivered[*s] += 1;
                }
                Ok(subs.contains(&0))
            }
        }
    }
}

async fn next_event<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Result<T> {
    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("every LISTEN connection has ended"),
        Err(_) => bail!("nothing arrived within {EVENT_TIMEOUT:?}"),
    }
}

/// Fails when anything arrives within [`QUIET`]: nothing more is expected.
async fn expect_quiet<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> Result<()> {
    match tokio::time::timeout(QUIET, rx.recv()).await {
        Err(_) => Ok(()),
        Ok(None) => bail!("{what}: every LISTEN connection has ended"),
        Ok(Some(_)) => bail!("{what}: a notification after the last expected one"),
    }
}

/// `live-latency`: one `LISTEN` connection receives every row of `live_msgs`; the client
/// routes each to its subscriptions (the timed one, `user_id = 'live_hot' AND
/// conversation_id = 'hot'`, and the idle ones of the KalamDB side) and drops the rest,
/// while a second writer inserts non-matching rows of the same user at a steady rate.
async fn latency(server: &PgServer, sizes: &LiveSizes) -> Result<Outcome> {
    let n = sizes.latency_inserts;
    let mut dispatcher = Dispatcher::new(sizes);
    let subscriptions = dispatcher.delivered.len();
    progress(&format!(
        "postgres live-latency: one LISTEN connection, {subscriptions} client-side subscriptions, \
         {n} sequential inserts, noise at {}/s",
        sizes.noise_per_sec
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<PgEvent>();
    let listener = server
        .listen("live_msgs", 0, move |event| tx.send(event).is_ok())
        .await?;
    let writer = server.connect().await?;
    let insert = writer.prepare(INSERT_LIVE).await?;

    let noise_client = server.connect().await?;
    let noise_insert = noise_client.prepare(INSERT_LIVE).await?;
    let (stop_noise, noise_stopped) = watch::channel(false);
    let rate = sizes.noise_per_sec;
    let noise_client = Arc::new(noise_client);
    let noise = tokio::spawn(paced(rate, noise_stopped, move |k| {
        let (client, stmt) = (noise_client.clone(), noise_insert.clone());
        async move {
            let id = NOISE_ID_BASE + k as i64;
            let content = format!("noise {k}");
            let inserted = client
                .execute(&stmt, &[&id, &HOT_USER, &"noise", &content])
                .await?;
            check_count("noise rows inserted", inserted, 1)?;
            anyhow::Ok(())
        }
    }));

    let mut h = hist();
    let mut ticker = Ticker::new("postgres live-latency", n);
    let started = Instant::now();
    for i in 0..n {
        let id = i as i64;
        let content = format!("message {i}");
        let sent = Instant::now();
        let inserted = writer
            .execute(&insert, &[&id, &HOT_USER, &"hot", &content])
            .await?;
        check_count("rows inserted", inserted, 1)?;
        loop {
            let event = next_event(&mut rx)
                .await
                .with_context(|| format!("postgres live-latency: waiting for insert {i}"))?;
            let row = event.row.map_err(|e| anyhow!(e))?;
            if dispatcher.route(&row)? {
                let expected = [
                    ("id", json!(id)),
                    ("conversation_id", json!("hot")),
                    ("content", json!(content)),
                ];
                check_fields("postgres live-latency", &row, &expected)?;
                h.saturating_record(micros(event.at.duration_since(sent)));
                break;
            }
        }
        ticker.tick(i + 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_noise.send(true);
    let noise_rows = noise.await.context("the noise writer panicked")??;

    let inserted = writer
        .execute(
            &insert,
            &[&-1i64, &HOT_USER, &"cold", &"matches no subscription"],
        )
        .await?;
    check_count("rows inserted", inserted, 1)?;
    // Every noise row and the last one reach the client, which must drop them all.
    let expected_filtered = noise_rows as usize + 1;
    while dispatcher.filtered < expected_filtered {
        let event = next_event(&mut rx).await.with_context(|| {
            format!(
                "postgres live-latency: {} of {expected_filtered} non-matching rows notified",
                dispatcher.filtered
            )
        })?;
        let row = event.row.map_err(|e| anyhow!(e))?;
        if dispatcher.route(&row)? {
            bail!("postgres live-latency: the subscriber got a row twice or too many: {row:?}");
        }
    }
    expect_quiet(&mut rx, "postgres live-latency").await?;
    drop(listener);
    check_count(
        "postgres live-latency: rows delivered to the subscriber",
        dispatcher.delivered[0] as u64,
        n,
    )?;
    let idle_deliveries: usize = dispatcher.delivered[1..].iter().sum();
    check_count(
        "postgres live-latency: rows delivered to idle subscriptions",
        idle_deliveries as u64,
        0,
    )?;
    Ok(Outcome::new("live-latency", n, n, seconds, &h, None)
        .with("idle_subscriptions", subscriptions - 1)
        .with("noise_rows", noise_rows)
        .with("noise_rows_per_sec", noise_rows as f64 / seconds)
        .method(format!(
            "one LISTEN connection; the trigger notifies every inserted row of live_msgs as \
             JSON on one channel (the subscriber's, the noise and all others: LISTEN/NOTIFY \
             cannot filter), and the client parses each and routes it by (user_id, \
             conversation_id) to its {subscriptions} in-process subscriptions, dropping the \
             rest (what Supabase Realtime does); timed from the start of the INSERT until \
             the client has parsed the subscriber's row"
        )))
}

/// What the dispatch of a fan-out connection reports.
enum Fan {
    Delivered {
        conn: usize,
        sub: usize,
        at: Instant,
        row: Arc<Row>,
    },
    /// The connection's filter (`room = 'r1'`) dropped a notified row.
    Filtered {
        conn: usize,
    },
    Failed(String),
}

/// One `LISTEN fanout` connection and its dispatch, in the task that reads the connection
/// (as KalamDB's side splits a `change_group` frame in its reader): with `per_conn == 1`
/// that reader is the subscriber; otherwise it hands each matching row to `per_conn`
/// subscriber tasks of its own, each stamping the row when it gets it.
async fn open_fanout_connection(
    server: &PgServer,
    conn: usize,
    per_conn: usize,
    out: mpsc::UnboundedSender<Fan>,
) -> Result<Listener> {
    let mut subscribers = Vec::new();
    if per_conn > 1 {
        for sub in 0..per_conn {
            let (to_subscriber, mut inbox) = mpsc::unbounded_channel::<Arc<Row>>();
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(row) = inbox.recv().await {
                    let at = Instant::now();
                    let _ = out.send(Fan::Delivered { conn, sub, at, row });
                }
            });
            subscribers.push(to_subscriber);
        }
    }
    server
        .listen("fanout", conn, move |event| {
            let row = match event.row {
                Ok(row) => row,
                Err(e) => {
                    let _ = out.send(Fan::Failed(e));
                    return false;
                }
            };
            if row.get("room").and_then(Value::as_str) != Some(FANOUT_ROOM) {
                return out.send(Fan::Filtered { conn }).is_ok();
            }
            let row = Arc::new(row);
            if subscribers.is_empty() {
                let at = event.at;
                return out
                    .send(Fan::Delivered {
                        conn,
                        sub: 0,
                        at,
                        row,
                    })
                    .is_ok();
            }
            for subscriber in &subscribers {
                let _ = subscriber.send(row.clone());
            }
            true
        })
        .await
}

/// `live-fanout-*`: one INSERT into `fanout` per round, which the trigger notifies to
/// every `LISTEN` connection; timed from the start of the INSERT until the last
/// subscriber has it.
async fn fanout(
    server: &PgServer,
    admin: &Client,
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
        "postgres {name}: {expected} subscribers on {conns} LISTEN connections, {rounds} inserts"
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<Fan>();
    let listeners: Vec<Listener> = stream::iter(0..conns)
        .map(|c| open_fanout_connection(server, c, per_conn, tx.clone()))
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect::<Vec<Listener>>()
        .await
        .with_context(|| format!("postgres {name}: opening LISTEN connections"))?;
    drop(tx);

    let insert = admin
        .prepare("INSERT INTO fanout (id, room, body) VALUES ($1, $2, $3)")
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
        let sent = Instant::now();
        let inserted = admin.execute(&insert, &[&id, &FANOUT_ROOM, &body]).await?;
        check_count("rows inserted", inserted, 1)?;
        let mut check = Round::new(format!("postgres {name}: round {round}"), expected, sent);
        while !check.complete() {
            let message = next_event(&mut rx).await.with_context(|| {
                format!(
                    "postgres {name}: round {round}, {} of {expected} delivered",
                    check.delivered()
                )
            })?;
            match message {
                Fan::Delivered { conn, sub, at, row } => {
                    check.deliver((conn, sub), at, std::slice::from_ref(&*row), &expect)?
                }
                Fan::Filtered { conn } => {
                    bail!("postgres {name}: connection {conn} dropped the row of round {round}")
                }
                Fan::Failed(e) => bail!("postgres {name}: {e}"),
            }
        }
        h.saturating_record(micros(check.latency()));
    }
    let seconds = started.elapsed().as_secs_f64();

    // A row of another room reaches every connection, and each must drop it.
    let other = fanout_other_id(index);
    let inserted = admin
        .execute(&insert, &[&other, &"r2", &"another room"])
        .await?;
    check_count("rows inserted", inserted, 1)?;
    let mut dropped = vec![false; conns];
    let mut left = conns;
    while left > 0 {
        let message = next_event(&mut rx).await.with_context(|| {
            format!("postgres {name}: {left} connections did not see the other room's row")
        })?;
        match message {
            Fan::Filtered { conn } if !dropped[conn] => {
                dropped[conn] = true;
                left -= 1;
            }
            Fan::Filtered { conn } => {
                bail!("postgres {name}: connection {conn} got the other room's row twice")
            }
            Fan::Delivered { conn, sub, row, .. } => bail!(
                "postgres {name}: subscriber {sub} of connection {conn} got a row it did not expect: {row:?}"
            ),
            Fan::Failed(e) => bail!("postgres {name}: {e}"),
        }
    }
    expect_quiet(&mut rx, &format!("postgres {name}")).await?;
    drop(listeners);

    let method = if per_conn == 1 {
        format!(
            "{conns} LISTEN connections, one per subscriber; the trigger notifies the row as \
             JSON on one channel, and each connection's reader parses it and applies the \
             filter room = 'r1' itself; timed from the start of the INSERT until the last \
             connection has parsed it"
        )
    } else {
        format!(
            "{conns} LISTEN connections, each dispatching to {per_conn} in-process subscriber \
             tasks ({expected} subscribers), the way Supabase Realtime fans out from few \
             database connections: each connection's reader parses the row once, applies \
             the filter room = 'r1' and hands it to its subscribers over in-process channels; \
             timed from the start of the INSERT until the last subscriber task has it"
        )
    };
    Ok(
        Outcome::new(name, rounds, rounds * expected, seconds, &h, None)
            .with("subscribers", expected)
            .with("connections", conns)
            .method(method),
    )
}
