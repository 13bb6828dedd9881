//! `GET /ws`: the live-query socket of API.md section 5.
//!
//! A connection authenticates by header, by `?token=`, or by a first `auth` message within
//! 5 seconds. Two halves then run: this task reads client messages (subscribe, unsubscribe,
//! ping) and a writer task drains the connection's bounded queue into the socket, pings the
//! client every `ws_ping_interval_ms`, and closes the socket when the hub asks (queue
//! overflow: 4008, KILL of the last subscription does not close) or when the client has sent
//! nothing for `ws_idle_timeout_ms` (a dead peer). Either half ending ends both, and the
//! hub forgets the connection's subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use datafusion::sql::sqlparser::ast::Ident;
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use kalam_client::live_wire::{
    ClientMessage, ServerMessage, Subscription as SubscriptionRequest, CLOSE_INTERNAL,
    CLOSE_UNAUTHORIZED,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::RequestUser;
use crate::auth::Principal;
use crate::error::KalamError;
use crate::live::{query, CloseReason, Connection};
use crate::node::Node;
use crate::sql::executor::splice_select;
use crate::sql::provider::{partition_for, RequestContext};

/// How long a connection opened without a token has to send its `auth` message.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node tries to deliver its close frame to a client that is not reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most queued messages written to the socket in one flush; bounds the time a ping or a
/// close waits behind a backlog.
const MAX_BURST: usize = 256;
/// Longest `query_id`: it is part of the live id.
const MAX_QUERY_ID: usize = 128;

pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = if headers.contains_key(header::AUTHORIZATION) {
        match super::sql::bearer(&headers) {
            Ok(t) => Some(t.to_string()),
            Err(e) => return e.into_response(),
        }
    } else {
        params.get("token").cloned()
    };
    let principal = match token {
        Some(t) => match node.auth.verify(&t) {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let user = principal.as_ref().map(|p| p.user_id.to_string());
    // Taken before the upgrade and held until the connection ends; a refused client learns
    // why from an HTTP answer rather than a connection that closes.
    let Ok(slot) = node.ws_slots.clone().try_acquire_owned() else {
        return KalamError::TooManyConnections(node.config.ws_max_connections).into_response();
    };
    let mut response = upgrade
        .max_message_size(node.config.max_request_bytes)
        // tungstenite's 128 KiB defaults per direction dominate the memory of idle
        // connections; live messages are small and the queue does the buffering.
        .read_buffer_size(16 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "ws",
                user = tracing::field::Empty,
                conn = tracing::field::Empty
            );
            run(node, socket, principal)
                .map(move |()| drop(slot))
                .instrument(span)
        });
    if let Some(u) = user {
        response.extensions_mut().insert(RequestUser(u));
    }
    response
}

/// Milliseconds since the connection opened at which the client last sent a frame, and
/// whether one of its messages is being handled now.
struct LastSeen {
    opened: Instant,
    millis: AtomicU64,
    /// While the reader handles a message (a subscribe reading `initial_data` may take up to
    /// the statement timeout) it reads no pongs; the client is not idle then.
    busy: AtomicBool,
}

impl LastSeen {
    fn touch(&self) {
        self.millis
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let now = self.opened.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.millis.load(Ordering::Relaxed)))
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        if !busy {
            self.touch();
        }
    }
}

async fn run(node: Arc<Node>, socket: WebSocket, principal: Option<Principal>) {
    let (mut sink, mut stream) = socket.split();
    let principal = match principal {
        Some(p) => p,
        None => match first_message_auth(&node, &mut stream, &mut sink).await {
            Some(p) => p,
            None => return,
        },
    };
    let span = tracing::Span::current();
    span.record("user", principal.user_id.as_str());
    let hub = node.executor.engine().live.clone();
    let (connection, queue, close_rx) = hub.connect(principal);
    span.record("conn", connection.id.as_str());
    tracing::debug!("live connection opened");
    let last_seen = Arc::new(LastSeen {
        opened: Instant::now(),
        millis: AtomicU64::new(0),
        busy: AtomicBool::new(false),
    });
    let writer = tokio::spawn(
        write_loop(
            sink,
            queue,
            close_rx.clone(),
            connection.clone(),
            last_seen.clone(),
            Duration::from_millis(node.config.ws_ping_interval_ms),
            Duration::from_millis(node.config.ws_idle_timeout_ms),
        )
        .in_current_span(),
    );
    read_loop(&node, &connection, &mut stream, close_rx, &last_seen).await;
    // Normal end when nobody gave another reason.
    connection.close(1000, "closing");
    hub.disconnect(&connection);
    if let Err(e) = writer.await {
        tracing::warn!(error = %e, "live connection writer ended abnormally");
    }
    tracing::debug!("live connection closed");
}

async fn read_loop(
    node: &Arc<Node>,
    connection: &Arc<Connection>,
    stream: &mut SplitStream<WebSocket>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    last_seen: &LastSeen,
) {
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = close_rx.wait_for(Option::is_some) => return,
        };
        let message = match frame {
            None | Some(Err(_)) => return,
            Some(Ok(m)) => m,
        };
        last_seen.touch();
        match message {
            Message::Text(text) => {
                // A panic (a bug) while planning a subscription or its initial data must
                // not skip `disconnect` below and leave the connection's subscriptions
                // registered: the connection is closed and cleaned up like any other.
                last_seen.set_busy(true);
                let handled =
                    std::panic::AssertUnwindSafe(handle_text(node, connection, text.as_str()))
                        .catch_unwind()
                        .await;
                last_seen.set_busy(false);
                if handled.is_err() {
                    tracing::error!("a live-query message panicked; closing the connection");
                    connection.close(CLOSE_INTERNAL, "internal error; see the node's log");
                    return;
                }
            }
            Message::Binary(_) => send_error(
                connection,
                None,
                KalamError::InvalidQuery("messages are JSON text frames, not binary".into()),
            ),
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<String>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    connection: Arc<Connection>,
    last_seen: Arc<LastSeen>,
    ping_every: Duration,
    idle_timeout: Duration,
) {
    let mut ticker = tokio::time::interval(ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut idle_check = tokio::time::interval(idle_timeout / 5);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        let outgoing = tokio::select! {
            biased;
            reason = close_rx.wait_for(Option::is_some) => break reason.ok().and_then(|r| r.clone()),
            text = queue.recv() => match text {
                Some(text) => {
                    connection.dequeued(&text);
                    Message::Text(text.into())
                }
                None => break None,
            },
            _ = ticker.tick() => Message::Ping(Default::default()),
            // Checked more often than pings go out, so a dead peer goes within the timeout
            // plus a fifth of it.
            _ = idle_check.tick() => {
                if last_seen.idle() > idle_timeout {
                    connection.close(1001, "no message or pong within ws_idle_timeout_ms");
                }
                continue;
            }
        };
        // Everything already queued goes out with this message in one flush: a fan-out burst
        // of a hundred changes is one socket write, not a hundred. A client that stops
        // reading blocks the flush; the hub's close still gets through.
        let burst = async {
            sink.feed(outgoing).await?;
            for _ in 1..MAX_BURST {
                match queue.try_recv() {
                    Ok(text) => {
                        connection.dequeued(&text);
                        sink.feed(Message::Text(text.into())).await?
                    }
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        // A peer that stopped reading fails the flush once it has made no progress for
        // `http_read_timeout_ms` (the socket's write timeout); a slow one that reads on is
        // not idle.
        tokio::select! {
            sent = burst => if sent.is_err() { break None },
            reason = close_rx.wait_for(Option::is_some) => break reason.ok().and_then(|r| r.clone()),
        }
    };
    // However the writer ends, the reader must too (and the hub forget the connection): a
    // socket that cannot be written any more must not keep its subscriptions registered.
    connection.close(CLOSE_INTERNAL, "the connection's socket failed");
    if let Some(reason) = reason {
        tracing::debug!(code = reason.code, reason = %reason.reason, "closing live connection");
        let frame = CloseFrame {
            code: reason.code,
            reason: close_reason_text(reason.reason).into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// A close frame is a control frame: its code and reason fit in 125 bytes, or the peer
/// gets a protocol error instead of the code. Longer reasons are cut on a character
/// boundary.
fn close_reason_text(mut reason: String) -> String {
    const MAX_REASON: usize = 123;
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The first-message form of authentication: `{"type":"auth","token":"..."}` within 5 s,
/// else an `error` and close code 4401.
async fn first_message_auth(
    node: &Node,
    stream: &mut SplitStream<WebSocket>,
    sink: &mut SplitSink<WebSocket, Message>,
) -> Option<Principal> {
    let outcome = match tokio::time::timeout(AUTH_TIMEOUT, stream.next()).await {
        Err(_) => Err(KalamError::Unauthorized(
            "no token: send {\"type\":\"auth\",\"token\":\"...\"} within 5 seconds, or use an Authorization header or ?token=".into(),
        )),
        Ok(None | Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Auth { token }) => node.auth.verify(&token),
            _ => Err(KalamError::Unauthorized(
                "the first message must be {\"type\":\"auth\",\"token\":\"...\"}".into(),
            )),
        },
        Ok(Some(Ok(_))) => Err(KalamError::Unauthorized(
            "the first message must be {\"type\":\"auth\",\"token\":\"...\"}".into(),
        )),
    };
    match outcome {
        Ok(p) => Some(p),
        Err(e) => {
            let api = e.to_api(None);
            let message = ServerMessage::Error {
                query_id: None,
                code: api.code,
                message: api.message,
                details: api.details,
            };
            if let Ok(text) = serde_json::to_string(&message) {
                let _ = sink.send(Message::Text(text.into())).await;
            }
            let frame = CloseFrame {
                code: CLOSE_UNAUTHORIZED,
                reason: "unauthorized".into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
            None
        }
    }
}

fn send_error(connection: &Connection, query_id: Option<String>, error: KalamError) {
    let api = error.to_api(None);
    connection.send_message(&ServerMessage::Error {
        query_id,
        code: api.code,
        message: api.message,
        details: api.details,
    });
}

async fn handle_text(node: &Arc<Node>, connection: &Arc<Connection>, text: &str) {
    let message = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => m,
        Err(e) => {
            return send_error(
                connection,
                None,
                KalamError::InvalidQuery(format!(
                    "not a valid message: {}",
                    crate::error::clip(&e.to_string())
                )),
            )
        }
    };
    let hub = &node.executor.engine().live;
    match message {
        ClientMessage::Ping => {
            connection.send_message(&ServerMessage::Pong);
        }
        ClientMessage::Auth { .. } => send_error(
            connection,
            None,
            KalamError::InvalidQuery("this connection is already authenticated".into()),
        ),
        ClientMessage::Unsubscribe { query_id } => {
            if !hub.unsubscribe(connection, &query_id) {
                send_error(
                    connection,
                    Some(query_id.clone()),
                    KalamError::LiveQueryNotFound(query_id),
                );
            }
        }
        ClientMessage::Subscribe { subscriptions } => {
            for request in subscriptions {
                let query_id = request.query_id.clone();
                if let Err(e) = subscribe(node, connection, request).await {
                    send_error(connection, Some(query_id), e);
                }
            }
        }
    }
}

async fn subscribe(
    node: &Arc<Node>,
    connection: &Arc<Connection>,
    request: SubscriptionRequest,
) -> Result<(), KalamError> {
    let SubscriptionRequest {
        query_id,
        sql,
        options,
    } = request;
    let id_ok = !query_id.is_empty()
        && query_id.len() <= MAX_QUERY_ID
        && query_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !id_ok {
        return Err(KalamError::InvalidQuery(format!(
            "query_id must match ^[A-Za-z0-9_.:-]{{1,{MAX_QUERY_ID}}}$"
        )));
    }
    let last_rows = options.last_rows.unwrap_or(0);
    if last_rows > node.config.max_result_rows as u64 {
        return Err(KalamError::InvalidQuery(format!(
            "last_rows may be at most {} (max_result_rows)",
            node.config.max_result_rows
        )));
    }
    let executor = &node.executor;
    let engine = executor.engine();
    let ctx = Arc::new(RequestContext::new(
        connection.principal.clone(),
        connection.principal.user_id.clone(),
    ));
    let state = executor.state(&ctx);
    let compiled = query::compile(engine, &state, &sql)?;
    let def = compiled.runtime.def().clone();
    let partition = partition_for(&def, &ctx);
    let initial_sql = (last_rows > 0).then(|| initial_query(&compiled, &def, last_rows));
    let where_expr = compiled.where_expr.clone();
    // Tests hold a subscribe up between its planning and its registration here
    // (FAILPOINTS=live-before-register=return(<ms>)).
    stall_point!("live-before-register");
    let (subscription, seq) = engine.live.subscribe(
        connection,
        query_id.clone(),
        sql,
        options,
        compiled,
        partition,
    )?;
    tracing::debug!(live_id = %subscription.live_id, table = %subscription.table, "subscribed");
    // Tests make a subscribe panic here, once registered (FAILPOINTS=live-subscribe=panic).
    panic_point!("live-subscribe");
    if let Some(initial_sql) = initial_sql {
        // Tests make the initial read slow here (FAILPOINTS=live-initial-data=return(<ms>)).
        stall_point!("live-initial-data");
        let result = executor
            .query_statement(&ctx, |state| {
                splice_select(state, &initial_sql, None, where_expr.as_ref(), (0, &[]))
            })
            .await;
        match result {
            // Ended meanwhile (KILL LIVE QUERY, unsubscribe): its client was told already.
            Ok(_) if !subscription.is_active() => {}
            Ok(result) => {
                let mut rows = result.rows;
                if def.kind.has_system_columns() {
                    // Read newest first to take the newest N; sent oldest first.
                    rows.reverse();
                } else if rows.len() as u64 > last_rows {
                    rows.drain(..rows.len() - last_rows as usize);
                }
                connection.send_message(&ServerMessage::InitialData {
                    query_id: query_id.clone(),
                    live_id: subscription.live_id.clone(),
                    rows,
                    seq,
                });
            }
            Err(e) => {
                // Without its initial_data the subscription is not what the client asked
                // for: it ends, so that the client can subscribe again under the same id.
                engine.live.unsubscribe(connection, &query_id);
                send_error(connection, Some(query_id.clone()), e);
            }
        }
        subscription.release();
    }
    Ok(())
}

/// The query of `initial_data` without its filter (the subscription's WHERE, spliced in as
/// a syntax tree): the subscription's columns, newest `last_rows` by `_updated`, ties (rows
/// of one multi-row INSERT) broken by the primary key, which for the default
/// `SNOWFLAKE_ID()` keys is insertion order (STREAM tables: all matching events in time
/// order; the caller keeps the newest).
fn initial_query(
    compiled: &query::CompiledQuery,
    def: &crate::catalog::TableDef,
    last_rows: u64,
) -> String {
    let columns: Vec<String> = compiled
        .column_names
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    // The alias is the client's text: printed as a quoted identifier, with its quotes
    // doubled, so that it cannot end the identifier and add SQL of its own.
    let alias = Ident::with_quote('"', compiled.alias.as_str());
    let table = format!("{}.{} AS {alias}", def.namespace, def.name);
    if def.kind.has_system_columns() {
        format!(
            "SELECT {} FROM {table} ORDER BY \"_updated\" DESC, \"{}\" DESC LIMIT {last_rows}",
            columns.join(", "),
            def.primary_key
        )
    } else {
        format!("SELECT {} FROM {table}", columns.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::close_reason_text;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(close_reason_text("short".into()), "short");
        let long = "é".repeat(100);
        let cut = close_reason_text(long);
        assert!(cut.len() <= 123 && cut.len() >= 122, "{}", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
