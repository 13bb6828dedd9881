//! The floor of `live-latency` on this machine: what a server that does nothing but relay
//! bytes would measure with the scenario's hops, clients and noise.
//!
//! A relay process (this binary with `serve`, Tokio's multi-threaded runtime as the node
//! runs) takes 64-byte requests from writer connections, answers each with an 8-byte
//! acknowledgement and hands the "hot" ones to a subscriber connection's writer task, as
//! the node hands a change to a WebSocket connection's task. The load side (Tokio's
//! multi-threaded runtime, mimalloc, as `kalam-bench`) writes hot requests one at a time
//! while a second writer sends noise at `--noise` per second, and times each hot request
//! from just before it is written until the subscriber's reader task has the relayed
//! bytes: `live-latency`'s timing with no SQL, no HTTP, no JSON, no WebSocket framing and
//! no storage. It also prints the acknowledgement's round trip, `insert-seq`'s timing.
//!
//! Modes: `ack-first` writes the acknowledgement and then queues the frame (the node's
//! order), `frame-first` queues the frame and then acknowledges, `dispatcher` acknowledges
//! and hands the frame through one more task first (the node's dispatcher task).
//! `--block-on` runs the load in `main`'s `block_on` instead of a task of the runtime
//! (`kalam-bench` before it spawned its run), to show what that costs a round trip.
//!
//! ```sh
//! cargo run --release -p kalam-bench --example relay_floor -- --mode ack-first [--inserts 2000] [--noise 1000] [--block-on]
//! ```

use std::env;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[path = "floor/relay.rs"]
mod relay;
use relay::Relay;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MSG: usize = 64;
const ACK: usize = 8;

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("serve") {
        let mode = args.get(1).cloned().unwrap_or_default();
        return rt.block_on(serve(&mode));
    }
    let value = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let mode = value("--mode", "ack-first");
    if !["ack-first", "frame-first", "dispatcher"].contains(&mode.as_str()) {
        bail!("--mode is ack-first, frame-first or dispatcher, not {mode}");
    }
    let n: usize = value("--inserts", "2000").parse()?;
    let noise: u64 = value("--noise", "1000").parse()?;
    if args.iter().any(|a| a == "--block-on") {
        return rt.block_on(load(mode, n, noise));
    }
    rt.block_on(async move { tokio::spawn(load(mode, n, noise)).await? })
}

/// The relay: one subscriber connection (role byte `S`), any number of writers (`W`).
async fn serve(mode: &str) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let frame_first = mode == "frame-first";
    let subscriber: Arc<Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>> = Arc::default();
    // `dispatcher`: hot requests go through one more task before the subscriber's, as
    // the node's commits go through its dispatcher task.
    let dispatcher = (mode == "dispatcher").then(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let subscriber = subscriber.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Some(tx) = subscriber.lock().expect("poisoned").as_ref() {
                    let _ = tx.send(msg);
                }
            }
        });
        tx
    });
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let subscriber = subscriber.clone();
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            let mut role = [0u8; 1];
            socket.read_exact(&mut role).await?;
            if role[0] == b'S' {
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
                *subscriber.lock().expect("poisoned") = Some(tx);
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
                let hot = msg[0] == b'H';
                let relay = |msg: &[u8]| {
                    if let Some(d) = &dispatcher {
                        let _ = d.send(msg.to_vec());
                    } else if let Some(tx) = subscriber.lock().expect("poisoned").as_ref() {
                        let _ = tx.send(msg.to_vec());
                    }
                };
                if hot && frame_first {
                    relay(&msg);
                }
                socket.write_all(&[b'A'; ACK]).await?;
                if hot && !frame_first {
                    relay(&msg);
                }
            }
        });
    }
}

async fn load(mode: String, n: usize, noise_per_sec: u64) -> Result<()> {
    let relay = Relay::start(&["serve", mode.as_str()])?;

    let mut sub = relay.connect(b'S').await?;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<(u64, Instant)>();
    tokio::spawn(async move {
        let mut msg = [0u8; MSG];
        while sub.read_exact(&mut msg).await.is_ok() {
            let at = Instant::now();
            let id = u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes"));
            if arrived_tx.send((id, at)).is_err() {
                break;
            }
        }
    });
    // Let the relay register the subscriber before the first hot request.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut noise = relay.connect(b'W').await?;
    let noise_task = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_micros(1_000_000 / noise_per_sec.max(1)));
        let (mut msg, mut ack) = ([b'N'; MSG], [0u8; ACK]);
        let mut sent = 0u64;
        loop {
            tick.tick().await;
            msg[1..9].copy_from_slice(&sent.to_le_bytes());
            if noise.write_all(&msg).await.is_err() || noise.read_exact(&mut ack).await.is_err() {
                return sent;
            }
            sent += 1;
        }
    });

    let mut writer = relay.connect(b'W').await?;
    let (mut h, mut acked) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    let (mut msg, mut ack) = ([b'H'; MSG], [0u8; ACK]);
    for i in 0..n as u64 {
        msg[1..9].copy_from_slice(&i.to_le_bytes());
        let sent = Instant::now();
        writer.write_all(&msg).await?;
        writer.read_exact(&mut ack).await?;
        acked.saturating_record(sent.elapsed().as_micros() as u64);
        let (id, at) = tokio::time::timeout(Duration::from_secs(5), arrived.recv())
            .await
            .context("no relayed message within 5 s")?
            .context("the subscriber's reader ended")?;
        if id != i {
            bail!("relayed message {id} where {i} was expected");
        }
        h.saturating_record(at.duration_since(sent).as_micros() as u64);
    }
    noise_task.abort();
    let line = |h: &Histogram<u64>| {
        format!(
            "p50 {} us, p90 {} us, p99 {} us, max {} us",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        )
    };
    println!("relay-floor {mode}: {n} hot requests, noise {noise_per_sec}/s");
    println!("  relayed (live-latency's timing): {}", line(&h));
    println!("  acknowledged (insert-seq's timing): {}", line(&acked));
    Ok(())
}
