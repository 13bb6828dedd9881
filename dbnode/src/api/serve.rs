//! The HTTP server loop: accept connections, serve each in a task of its own with
//! hyper-util's server (HTTP/1.1 with upgrades, for `GET /ws`, and HTTP/2 for clients that
//! start with its preface), and on shutdown stop accepting, let every connection finish the
//! request it is in, and wait for them, for at most a deadline: a client that stops sending
//! in the middle of a request must not keep the node from stopping.
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
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::serve::Listener;
use axum::Router;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kalam_client::task::inline_self_wakes;
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` resolves and then every connection has
/// ended, or `grace` has passed since `shutdown` (the connections still open are dropped
/// when the runtime shuts down).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
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
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.closed() => break,
        };
        tracing::trace!(?remote, "connection accepted");
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        let (stop, done_rx, builder) = (stop.clone(), done_rx.clone(), builder.clone());
        tokio::spawn(inline_self_wakes(async move {
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut stopping = pin!(stop.closed().fuse());
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = &mut stopping => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(done_rx);
        }));
    }
    drop(done_rx);
    drop(listener);
    if tokio::time::timeout(grace, done.closed()).await.is_err() {
        tracing::warn!(
            connections = done.receiver_count(),
            grace_ms = grace.as_millis() as u64,
            "stopping with requests still in flight (shutdown_timeout_ms)"
        );
    }
}
