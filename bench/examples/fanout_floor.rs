//! The floor of `live-fanout-10k` on this machine: what a server that does nothing but relay
//! one frame to every connection would measure with the scenario's clients, hand-offs and
//! checks.
//!
//! A relay process (this binary with `serve`, Tokio's multi-threaded runtime as the node
//! runs) holds `--connections` subscriber connections. For each 64-byte request of the
//! writer connection it answers an 8-byte acknowledgement, encodes one `change_group`
//! frame (the node's JSON, naming the connection's `--per-conn` subscriptions, built once
//! per request as the node encodes a change once) and queues it to every connection's
//! writer task, as the node's dispatch does. The load side (Tokio's multi-threaded runtime,
//! mimalloc, as `kalam-bench`) does what `live-fanout-10k` does on both systems: each
//! connection's reader parses the frame into `kalam-client`'s `ServerMessage` and hands the
//! change to a task per subscription over an in-process channel; each task stamps it and
//! passes it to the scenario, which checks every delivery (`measure::Round`, the row's
//! values, each subscription exactly once) until all have it. A round is timed from just
//! before the request is written until the last task has the change. No SQL, HTTP,
//! WebSocket framing (frames are length-prefixed) or storage: the numbers are the
//! machine's and the client's, the context for either system's fan-out here.
//!
//! ```sh
//! cargo run --release -p kalam-bench --example fanout_floor -- [--connections 100] [--per-conn 100] [--rounds 200]
//! ```

use std::env;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kalam_client::wire::Row;
use kalam_client::{ChangeType, ServerMessage};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[allow(dead_code)]
#[path = "../src/measure.rs"]
mod measure;

#[path = "floor/relay.rs"]
mod relay;
use relay::Relay;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MSG: usize = 64;
const ACK: usize = 8;
const ROOM: &str = "r1";

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let value = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let per_conn: usize = value("--per-conn", "100").parse()?;
    if args.first().map(String::as_str) == Some("serve") {
        return rt.block_on(serve(per_conn));
    }
    let conns: usize = value("--connections", "100").parse()?;
    let rounds: usize = value("--rounds", "200").parse()?;
    if conns == 0 || per_conn == 0 || rounds == 0 {
        bail!("--connections, --per-conn and --rounds must be at least 1");
    }
    rt.block_on(async move { tokio::spawn(load(conns, per_conn, rounds)).await? })
}

/// The `change_group` frame of request `id`, as the node encodes it.
fn frame(id: u64, per_conn: usize) -> Result<Vec<u8>> {
    let row: Row = match json!({"id": id, "room": ROOM, "body": format!("round {id}")}) {
        serde_json::Value::Object(row) => row,
        _ => unreachable!("an object literal"),
    };
    let message = ServerMessage::ChangeGroup {
        query_ids: (0..per_conn).map(|i| format!("room{i}")).collect(),
        change_type: ChangeType::Insert,
        rows: vec![row],
        old_values: None,
        seq: id + 1,
    };
    let json = serde_json::to_vec(&message)?;
    let mut framed = Vec::with_capacity(4 + json.len());
    framed.extend_from_slice(&(json.len() as u32).to_le_bytes());
    framed.extend_from_slice(&json);
    Ok(framed)
}

/// The relay: subscriber connections (role byte `S`) and one writer (`W`).
async fn serve(per_conn: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<[u8]>>>>> = Arc::default();
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let subscribers = subscribers.clone();
        tokio::spawn(async move {
            let mut role = [0u8; 1];
            socket.read_exact(&mut role).await?;
            if role[0] == b'S' {
                let (tx, mut rx) = mpsc::unbounded_channel::<Arc<[u8]>>();
                subscribers.lock().expect("poisoned").push(tx);
                socket.write_all(b"R").await?;
                while let Some(frame) = rx.recv().await {
                    socket.write_all(&frame).await?;
                }
                return anyhow::Ok(());
            }
            let mut msg = [0u8; MSG];
            loop {
                if socket.read_exact(&mut msg).await.is_err() {
                    return Ok(());
                }
                socket.write_all(&[b'A'; ACK]).await?;
                let id = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
                let frame: Arc<[u8]> = frame(id, per_conn)?.into();
                for tx in subscribers.lock().expect("poisoned").iter() {
                    let _ = tx.send(frame.clone());
                }
            }
        });
    }
}

/// One change as the subscription tasks share it.
struct Shared {
    rows: Vec<Row>,
    seq: u64,
}

/// A delivery as the scenario sees it.
struct Delivered {
    conn: usize,
    query_id: Arc<str>,
    at: Instant,
    change: Arc<Shared>,
}

/// Reads `conn`'s frames, parses each into a `ServerMessage` and hands its change to the
/// task of every subscription it names, in the order the frame names them.
async fn read_connection(
    conn: usize,
    mut socket: TcpStream,
    per_conn: usize,
    out: mpsc::UnboundedSender<Delivered>,
) -> Result<()> {
    let tasks: Vec<(Arc<str>, mpsc::UnboundedSender<Arc<Shared>>)> = (0..per_conn)
        .map(|i| {
            let query_id: Arc<str> = Arc::from(format!("room{i}"));
            let (tx, mut inbox) = mpsc::unbounded_channel::<Arc<Shared>>();
            let (out, id) = (out.clone(), query_id.clone());
            tokio::spawn(async move {
                while let Some(change) = inbox.recv().await {
                    let at = Instant::now();
                    let delivered = Delivered {
                        conn,
                        query_id: id.clone(),
                        at,
                        change,
                    };
                    if out.send(delivered).is_err() {
                        break;
                    }
                }
            });
            (query_id, tx)
        })
        .collect();
    let mut len = [0u8; 4];
    let mut buf = Vec::new();
    loop {
        if socket.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        socket.read_exact(&mut buf).await?;
        let text = std::str::from_utf8(&buf)?;
        let ServerMessage::ChangeGroup {
            query_ids,
            rows,
            seq,
            ..
        } = ServerMessage::from_json(text)?
        else {
            bail!("connection {conn}: not a change_group");
        };
        let change = Arc::new(Shared { rows, seq });
        for (i, query_id) in query_ids.iter().enumerate() {
            match tasks.get(i) {
                Some((id, tx)) if **id == **query_id => {
                    let _ = tx.send(change.clone());
                }
                _ => bail!("connection {conn}: unexpected query_id {query_id}"),
            }
        }
    }
}

async fn load(conns: usize, per_conn: usize, rounds: usize) -> Result<()> {
    let relay = Relay::start(&["serve", "--per-conn", &per_conn.to_string()])?;

    let (out, mut delivered) = mpsc::unbounded_channel::<Delivered>();
    for conn in 0..conns {
        let mut socket = relay.connect(b'S').await?;
        // The relay's "registered", as the node's `subscribed`.
        let mut ready = [0u8; 1];
        socket.read_exact(&mut ready).await?;
        let out = out.clone();
        tokio::spawn(async move {
            if let Err(e) = read_connection(conn, socket, per_conn, out).await {
                eprintln!("fanout-floor: {e:#}");
            }
        });
    }
    drop(out);

    let expected = conns * per_conn;
    let mut writer = relay.connect(b'W').await?;
    let mut h = measure::hist();
    let (mut msg, mut ack) = ([0u8; MSG], [0u8; ACK]);
    let started = Instant::now();
    for round in 0..rounds as u64 {
        msg[..8].copy_from_slice(&round.to_le_bytes());
        let expect = [
            ("id", json!(round)),
            ("room", json!(ROOM)),
            ("body", json!(format!("round {round}"))),
        ];
        let sent = Instant::now();
        writer.write_all(&msg).await?;
        writer.read_exact(&mut ack).await?;
        let mut check = measure::Round::new(format!("round {round}"), expected, sent);
        while !check.complete() {
            let d = tokio::time::timeout(measure::EVENT_TIMEOUT, delivered.recv())
                .await
                .with_context(|| format!("round {round}: {} delivered", check.delivered()))?
                .context("every connection's reader ended")?;
            if d.change.seq != round + 1 {
                bail!("round {round}: seq {} delivered", d.change.seq);
            }
            check.deliver((d.conn, d.query_id), d.at, &d.change.rows, &expect)?;
        }
        h.saturating_record(measure::micros(check.latency()));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "fanout-floor: {conns} connections x {per_conn} subscriptions, {rounds} rounds in {seconds:.2} s"
    );
    println!(
        "  last subscriber has it: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    Ok(())
}
