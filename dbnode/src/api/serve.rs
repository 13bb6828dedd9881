//! The HTTP server loop: accept connections, serve each in a task of its own with
//! hyper-util's server (HTTP/1.1 with upgrades, for `GET /ws`, and HTTP/2 for clients that
//! start with its preface), and on shutdown stop accepting, let every connection finish the
//! request it is in, and wait for them, for at most a deadline: a client that stops sending
//! in the middle of a request must not keep the node from stopping.
//!
//! A client that stays silent does not hold a connection either (ADR 0025): one that sends
//! no complete request within the read timeout of connecting is closed here, and hyper
//! closes an HTTP/1.1 connection whose next request head does not arrive within it (which
//! also ends idle keep-alive connections). A connection that starts no request for a whole
//! timeout after its first (an idle HTTP/2 connection, which hyper's timer does not cover)
//! is shut down gracefully here. Bodies have the same timeout per chunk, where they are
//! read (`sql.rs`), and so has each write of an answer the client does not read
//! ([`WriteTimeout`]), after which the connection ends.
//!
//! This is what `axum::serve` with a graceful shutdown does, with one difference: each
//! connection's future runs under [`inline_self_wakes`]. hyper hands a request's body to
//! the handler, and the handler's answer back, through channels polled by the same task,
//! and Tokio treats a task woken by itself like one that yielded: to the back of the queue,
//! with the other worker thread woken to steal it. Every request paid those wakeups (and
//! often moved to the other CPU) for nothing; see docs/performance.md.

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::serve::Listener;
use axum::Router;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kalam_client::task::inline_self_wakes;
use tokio::sync::watch;
use tower::ServiceExt;

use super::write_timeout::WriteTimeout;

/// How long the server waits on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a connection's first request, and for each request head after it
    /// (`http_read_timeout_ms`).
    pub read: Duration,
    /// For the requests in flight once the shutdown began (`shutdown_timeout_ms`).
    pub shutdown: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves and then every connection has
/// ended, or `timeouts.shutdown` has passed since `shutdown` (the connections still open
/// are dropped when the runtime shuts down).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeouts: Timeouts,
) where
    L: Listener,
    L::Addr: Debug,
{
    // Dropping `stop_rx` (on the signal) closes `stop`: connections start their graceful
    // shutdown. Each connection holds a `done_rx`; `done` closes once all have ended.
    let (stop, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    let (done, done_rx) = watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.read);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.closed() => break,
        };
        tracing::trace!(?remote, "connection accepted");
        // Counts the connection's requests as they reach the router: until the first,
        // nothing else bounds the wait (hyper-util reads the first bytes to tell HTTP/1.1
        // from HTTP/2 without a timer), and after it, nothing bounds an idle HTTP/2
        // connection.
        let requests = Arc::new(AtomicU64::new(0));
        let service = TowerToHyperService::new(app.clone().map_request({
            let requests = requests.clone();
            move |request: Request<Incoming>| {
                requests.fetch_add(1, Ordering::Relaxed);
                request.map(Body::new)
            }
        }));
        let (stop, done_rx, builder) = (stop.clone(), done_rx.clone(), builder.clone());
        tokio::spawn(inline_self_wakes(async move {
            let mut connection = pin!(builder.serve_connection_with_upgrades(
                TokioIo::new(WriteTimeout::new(io, timeouts.read)),
                service
            ));
            let mut stopping = pin!(stop.closed().fuse());
            let mut idle_check = pin!(tokio::time::sleep(timeouts.read));
            let (mut seen, mut closing) = (0, false);
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = &mut stopping, if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = &mut idle_check, if !closing => {
                        let now = requests.load(Ordering::Relaxed);
                        if now == 0 {
                            tracing::debug!("closing a connection without a request (http_read_timeout_ms)");
                            break;
                        }
                        if now == seen {
                            // No request started for a whole timeout. Requests in flight
                            // still finish: HTTP/2 gets a GOAWAY, HTTP/1.1 closes after
                            // its answer.
                            tracing::debug!("closing an idle connection (http_read_timeout_ms)");
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                        seen = now;
                        idle_check.as_mut().reset(tokio::time::Instant::now() + timeouts.read);
                    }
                }
            }
            drop(done_rx);
        }));
    }
    drop(done_rx);
    drop(listener);
    if tokio::time::timeout(timeouts.shutdown, done.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = done.receiver_count(),
            grace_ms = timeouts.shutdown.as_millis() as u64,
            "stopping with requests still in flight (shutdown_timeout_ms)"
        );
    }
}
