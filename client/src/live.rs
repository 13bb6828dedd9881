//! The live-query client: one WebSocket to a node's `GET /ws` (API.md section 5) carrying
//! any number of subscriptions, with the messages typed by [`crate::live_wire`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), kalam_client::ClientError> {
//! use kalam_client::{KalamClient, ServerMessage, SubscriptionOptions};
//!
//! let client = KalamClient::new("http://127.0.0.1:8080")?.with_token("<jwt>");
//! let mut live = client
//!     .subscribe(
//!         "SELECT * FROM app.messages WHERE conversation_id = 'c1'",
//!         SubscriptionOptions::default(),
//!     )
//!     .await?;
//! while let Some(message) = live.next().await {
//!     match message? {
//!         ServerMessage::Change { change_type, rows, seq, .. } => {
//!             println!("{} seq={seq}: {} rows", change_type.as_str(), rows.len())
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The node pings every connection and closes one that stops answering, so keep calling
//! [`LiveConnection::next`]: reading is what answers the pings (tungstenite queues the pong
//! and sends it on the next read).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::{snippet, ClientError, KalamClient};
use crate::live_wire::{ClientMessage, ServerMessage, Subscription, SubscriptionOptions};

/// The `query_id` of the one subscription [`KalamClient::subscribe`] opens.
pub const DEFAULT_QUERY_ID: &str = "q1";

/// Bounds the TCP connect plus the upgrade, like the HTTP client's connect timeout: a node
/// that does not answer within it is treated as unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`LiveConnection::close`] waits for the node's close reply; it only makes the
/// close clean on the node's side, so it is short.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// RFC 6455 "no status received": reported for a close frame that carries no code.
const CLOSE_NO_STATUS: u16 = 1005;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server message together with the text frame it arrived in, for tools that print what
/// the node sent verbatim (`kalam subscribe --json`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawServerMessage {
    /// The frame's text, as sent.
    pub text: String,
    /// The same, parsed.
    pub message: ServerMessage,
}

/// The `ws://` URL of `GET /ws` for a node at `base_url` (as accepted by
/// [`KalamClient::new`]): the scheme `http` becomes `ws`, a path prefix is kept.
///
/// `https` is refused: this crate is built without TLS (see [`KalamClient::new`]), so a
/// `wss://` connection could never succeed, and saying so up front beats a handshake error.
pub fn ws_url(base_url: &str) -> Result<String, ClientError> {
    let invalid = |why: &str| ClientError::InvalidUrl(format!("'{base_url}': {why}"));
    let mut url = url::Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                "live queries over https need wss://, and this client is built without TLS; \
                 use http:// (e.g. behind a TLS-terminating proxy)",
            ))
        }
        _ => return Err(invalid("the scheme must be http")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL takes no query or fragment"));
    }
    url.set_scheme("ws")
        .map_err(|()| invalid("cannot be turned into a ws:// URL"))?;
    let path = format!("{}/ws", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url.into())
}

impl KalamClient {
    /// Opens a live connection (`GET /ws`) with this client's token; see [`LiveConnection`].
    pub async fn live(&self) -> Result<LiveConnection, ClientError> {
        LiveConnection::connect(self).await
    }

    /// Opens a live connection and subscribes to one query, named [`DEFAULT_QUERY_ID`]: the
    /// common case of one subscription per connection. The node answers `subscribed` (or
    /// `error`) as the first message of [`LiveConnection::next`]; only writes completed after
    /// `subscribed` are guaranteed to be delivered.
    pub async fn subscribe(
        &self,
        sql: impl Into<String>,
        options: SubscriptionOptions,
    ) -> Result<LiveConnection, ClientError> {
        let mut live = self.live().await?;
        live.subscribe(vec![Subscription {
            query_id: DEFAULT_QUERY_ID.to_owned(),
            sql: sql.into(),
            options,
        }])
        .await?;
        Ok(live)
    }
}

/// One open WebSocket to a node. Send with [`subscribe`](Self::subscribe),
/// [`unsubscribe`](Self::unsubscribe) and [`ping`](Self::ping); read with
/// [`next`](Self::next) until it returns `None`.
pub struct LiveConnection {
    socket: Socket,
    /// A close frame or a fatal error was seen: the socket is not read again.
    ended: bool,
    /// The close error whose reporting was interrupted (the future of `next` was dropped
    /// while the close reply was being flushed); returned by the next call.
    pending: Option<ClientError>,
    /// The rest of a `change_group` frame, one `change` per subscription, with the frame.
    split: VecDeque<(ServerMessage, Utf8Bytes)>,
    /// `query_id` -> `live_id` of this connection's subscriptions, from their `subscribed`:
    /// a `change_group` names its subscriptions by `query_id` only.
    live_ids: LiveIds,
}

/// How many unsubscribed `query_id`s a connection still resolves: the node has no answer to
/// `unsubscribe`, so changes it queued before it took one may come after it.
const RETIRED_QUERY_IDS: usize = 1024;

/// The `live_id` of each `query_id` of a connection: its subscriptions, and the last
/// [`RETIRED_QUERY_IDS`] it unsubscribed. Bounded, so that a relay that subscribes with a
/// fresh `query_id` each time does not grow the map for as long as the connection lives.
#[derive(Debug, Default)]
struct LiveIds {
    /// `query_id` -> its `live_id` and the number of the `subscribed` that gave it.
    ids: HashMap<String, (String, u64)>,
    /// Unsubscribed `query_id`s with the number of their `subscribed`, oldest first.
    retired: VecDeque<(String, u64)>,
    subscribes: u64,
}

impl LiveIds {
    /// A `subscribed`: a new subscription, or a new one under a retired `query_id` (whose
    /// `live_id` is the same again on the same table: the node derives it from the ids).
    fn subscribed(&mut self, query_id: &str, live_id: &str) {
        self.subscribes += 1;
        self.ids
            .insert(query_id.to_owned(), (live_id.to_owned(), self.subscribes));
    }

    /// An `unsubscribe` sent: the id stays until [`RETIRED_QUERY_IDS`] later ones push it out
    /// (unless a new `subscribed` took the `query_id` meanwhile, which keeps it).
    fn unsubscribed(&mut self, query_id: &str) {
        let Some((_, number)) = self.ids.get(query_id) else {
            return;
        };
        self.retired.push_back((query_id.to_owned(), *number));
        while self.retired.len() > RETIRED_QUERY_IDS {
            let Some((old_query, old_number)) = self.retired.pop_front() else {
                break;
            };
            if self
                .ids
                .get(&old_query)
                .is_some_and(|(_, n)| *n == old_number)
            {
                self.ids.remove(&old_query);
            }
        }
    }

    fn get(&self, query_id: &str) -> Option<&str> {
        self.ids.get(query_id).map(|(live_id, _)| live_id.as_str())
    }
}

impl LiveConnection {
    /// Connects to `GET /ws` of the client's node, sending its token as
    /// `Authorization: Bearer` on the upgrade. A refused upgrade comes back as
    /// [`ClientError::Api`] (HTTP 401 for a bad token: [`ClientError::is_unauthorized`]); a
    /// node that cannot be reached as [`ClientError::WebSocketConnect`]. Without a token the
    /// node waits for an `auth` message, which this type does not send.
    pub async fn connect(client: &KalamClient) -> Result<Self, ClientError> {
        let url = ws_url(client.base_url())?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::InvalidUrl(format!("'{url}': {e}")))?;
        let headers = request.headers_mut();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("kalam-client/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(token) = client.token() {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::WebSocket(
                    "the token has characters an HTTP header cannot carry".into(),
                )
            })?;
            // Keeps the token out of any debug output of the request.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // tungstenite zero-fills its whole read buffer (128 KiB by default) before every
        // read of the socket: most of a reader's CPU when frames are small and frequent.
        // 16 KiB, as the node uses, still takes a large initial_data in few reads.
        // No frame or message size limit (tungstenite's are 16 and 64 MiB): the node sends
        // an `initial_data` of up to `max_result_rows` rows, or one commit's change, as one
        // frame, and a limit here would end the connection on it every time it resumed.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_frame_size(None)
            .max_message_size(None);
        // Nagle off: live messages are small and latency is the point.
        let handshake = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok((socket, _response))) => socket,
            Ok(Err(tungstenite::Error::Io(e))) => {
                return Err(ClientError::WebSocketConnect {
                    url,
                    message: e.to_string(),
                })
            }
            Ok(Err(e)) => return Err(from_ws_error(e)),
            Err(_) => {
                return Err(ClientError::WebSocketConnect {
                    url,
                    message: format!("no answer within {}s", HANDSHAKE_TIMEOUT.as_secs()),
                })
            }
        };
        Ok(LiveConnection {
            socket,
            ended: false,
            pending: None,
            split: VecDeque::new(),
            live_ids: LiveIds::default(),
        })
    }

    /// Sends one `subscribe` message. Each subscription is answered by `subscribed` or
    /// `error` (e.g. `INVALID_QUERY`, `DUPLICATE_QUERY_ID`) through [`next`](Self::next).
    pub async fn subscribe(&mut self, subscriptions: Vec<Subscription>) -> Result<(), ClientError> {
        self.send(&ClientMessage::Subscribe { subscriptions }).await
    }

    /// Ends one subscription of this connection.
    pub async fn unsubscribe(&mut self, query_id: impl Into<String>) -> Result<(), ClientError> {
        let query_id = query_id.into();
        self.live_ids.unsubscribed(&query_id);
        self.send(&ClientMessage::Unsubscribe { query_id }).await
    }

    /// The `live_id` of a subscription of this connection, once its `subscribed` has been
    /// read (a `change_group` from [`next_frame`](Self::next_frame) names only `query_id`s).
    pub fn live_id(&self, query_id: &str) -> Option<&str> {
        self.live_ids.get(query_id)
    }

    /// Sends a protocol-level `ping`; the node answers [`ServerMessage::Pong`]. (WebSocket
    /// ping frames of the node are answered automatically and never surface.)
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&ClientMessage::Ping).await
    }

    /// The next message of the node, `None` once the connection has ended.
    ///
    /// A close frame of the node ends the stream with [`ClientError::Closed`] (code and
    /// reason; see [`ClientError::is_normal_close`]); a message that does not parse is a
    /// [`ClientError::WebSocket`] item after which reading may go on. A `change_group` frame
    /// (subscriptions with option `group`) comes out as one [`ServerMessage::Change`] per
    /// subscription it names, in its order. Cancel-safe: a message is never lost when the
    /// future is dropped (e.g. in `tokio::select!`).
    pub async fn next(&mut self) -> Option<Result<ServerMessage, ClientError>> {
        let next = self.next_split().await?;
        Some(next.map(|(message, _)| message))
    }

    /// Like [`next`](Self::next), but also hands back the text of the frame (for the
    /// changes of one `change_group` frame, that frame).
    pub async fn next_raw(&mut self) -> Option<Result<RawServerMessage, ClientError>> {
        let next = self.next_split().await?;
        Some(next.map(|(message, text)| RawServerMessage {
            text: text.as_str().to_owned(),
            message,
        }))
    }

    /// Like [`next`](Self::next), but a `change_group` comes as it is, as one
    /// [`ServerMessage::ChangeGroup`]: for an application that hands one change to the many
    /// users a connection serves and shares its rows among them instead of a copy each.
    pub async fn next_frame(&mut self) -> Option<Result<ServerMessage, ClientError>> {
        if let Some((message, _)) = self.split.pop_front() {
            return Some(Ok(message));
        }
        let next = self.next_parsed().await?;
        Some(next.map(|(message, _)| message))
    }

    /// The next message with its frame, a `change_group` split into its changes.
    async fn next_split(&mut self) -> Option<Result<(ServerMessage, Utf8Bytes), ClientError>> {
        if let Some(next) = self.split.pop_front() {
            return Some(Ok(next));
        }
        let (message, text) = match self.next_parsed().await? {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        let ServerMessage::ChangeGroup { .. } = message else {
            return Some(Ok((message, text)));
        };
        match ungroup(message, &self.live_ids) {
            Ok(changes) => self
                .split
                .extend(changes.into_iter().map(|change| (change, text.clone()))),
            Err(e) => return Some(Err(e)),
        }
        self.split.pop_front().map(Ok)
    }

    /// The next frame of the node, parsed, with its text; notes the ids of `subscribed`.
    async fn next_parsed(&mut self) -> Option<Result<(ServerMessage, Utf8Bytes), ClientError>> {
        let text = self.next_text().await?;
        let parsed = text.and_then(|text| Ok((parse_server_message(text.as_str())?, text)));
        if let Ok((ServerMessage::Subscribed { query_id, live_id }, _)) = &parsed {
            self.live_ids.subscribed(query_id, live_id);
        }
        Some(parsed)
    }

    /// The next text frame of the node (see [`next`](Self::next) for the rest).
    async fn next_text(&mut self) -> Option<Result<Utf8Bytes, ClientError>> {
        if let Some(error) = self.pending.take() {
            return Some(Err(error));
        }
        if self.ended {
            return None;
        }
        loop {
            let frame = match self.socket.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(from_ws_error(e)));
                }
                None => {
                    self.ended = true;
                    return None;
                }
            };
            match frame {
                Message::Text(text) => return Some(Ok(text)),
                Message::Binary(_) => {
                    return Some(Err(ClientError::WebSocket(
                        "the node sent a binary frame; the protocol has text frames only".into(),
                    )))
                }
                // tungstenite answers pings by itself on the next read: keep reading.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    self.ended = true;
                    let (code, reason) = match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                        None => (CLOSE_NO_STATUS, String::new()),
                    };
                    self.pending = Some(ClientError::Closed { code, reason });
                    // tungstenite has queued the close reply; flushing sends it, so the node
                    // sees a completed closing handshake. A failure changes nothing here.
                    let _ = self.socket.flush().await;
                    return self.pending.take().map(Err);
                }
            }
        }
    }

    /// Closes the connection (code 1000): the node removes its subscriptions at once.
    /// Dropping a `LiveConnection` also ends them, only less politely (the node sees a reset).
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.ended {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match self.socket.close(Some(frame)).await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Err(from_ws_error(e)),
        }
        // The node answers with its own close frame; reading it completes the handshake.
        let drain = async { while let Some(Ok(_)) = self.socket.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        Ok(())
    }

    async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        if self.ended {
            return Err(ClientError::WebSocket("the connection has ended".into()));
        }
        let text = serde_json::to_string(message)
            .map_err(|e| ClientError::WebSocket(format!("encoding a message: {e}")))?;
        self.socket
            .send(Message::text(text))
            .await
            .map_err(from_ws_error)
    }
}

// Hand-written: the socket's own Debug output is noise.
impl fmt::Debug for LiveConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConnection")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The changes a `change_group` stands for, one per subscription it names, each with the
/// `live_id` its `subscribed` gave (anything else as it is). A `query_id` this connection
/// has no `subscribed` for is a protocol error.
fn ungroup(message: ServerMessage, live_ids: &LiveIds) -> Result<Vec<ServerMessage>, ClientError> {
    let ServerMessage::ChangeGroup {
        query_ids,
        change_type,
        rows,
        old_values,
        seq,
    } = message
    else {
        return Ok(vec![message]);
    };
    query_ids
        .into_iter()
        .map(|query_id| {
            let live_id = live_ids.get(&query_id).map(str::to_owned).ok_or_else(|| {
                ClientError::WebSocket(format!(
                    "a change_group names query_id {query_id:?}, which has no subscribed on \
                     this connection"
                ))
            })?;
            Ok(ServerMessage::Change {
                query_id,
                live_id,
                change_type,
                rows: rows.clone(),
                old_values: old_values.clone(),
                seq,
            })
        })
        .collect()
}

/// Parses one frame; a `change_group` must name at least one subscription.
fn parse_server_message(text: &str) -> Result<ServerMessage, ClientError> {
    let invalid = |e: &dyn fmt::Display| {
        ClientError::WebSocket(format!(
            "not a message of the live-query protocol ({e}): {}",
            snippet(text.as_bytes())
        ))
    };
    let message = ServerMessage::from_json(text).map_err(|e| invalid(&e))?;
    if let ServerMessage::ChangeGroup { query_ids, .. } = &message {
        if query_ids.is_empty() {
            return Err(invalid(&"a change_group with no query_ids"));
        }
    }
    Ok(message)
}

/// A refused upgrade keeps the node's JSON error (same shape as `/api/sql`); everything else
/// becomes text, since tungstenite's error type is not part of this crate's API.
fn from_ws_error(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body: &[u8] = response.body().as_deref().unwrap_or_default();
            ClientError::from_error_body(status, body)
        }
        tungstenite::Error::Url(e) => ClientError::InvalidUrl(e.to_string()),
        other => ClientError::WebSocket(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live_wire::ChangeType;

    #[test]
    fn ws_url_swaps_the_scheme_and_keeps_the_prefix() {
        for (base, expected) in [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"),
            ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws"),
            ("http://localhost", "ws://localhost/ws"),
            ("http://proxy/kalam", "ws://proxy/kalam/ws"),
            ("http://proxy/kalam/", "ws://proxy/kalam/ws"),
            ("http://[::1]:9000", "ws://[::1]:9000/ws"),
            ("HTTP://Node:8080", "ws://node:8080/ws"),
        ] {
            assert_eq!(ws_url(base).unwrap(), expected, "{base}");
        }
    }

    #[test]
    fn ws_url_refuses_tls_and_other_schemes() {
        let err = ws_url("https://db.example.com").unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidUrl(m) if m.contains("TLS")),
            "{err}"
        );
        for bad in ["ftp://host", "ws://host", "not a url", "http://h/?x=1", ""] {
            assert!(
                matches!(ws_url(bad), Err(ClientError::InvalidUrl(_))),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn refused_upgrade_keeps_the_node_error() {
        let body = br#"{"status":"error","error":{"code":"UNAUTHORIZED","message":"bad token"}}"#;
        let response = tungstenite::http::Response::builder()
            .status(401)
            .body(Some(body.to_vec()))
            .expect("static response");
        let err = from_ws_error(tungstenite::Error::Http(Box::new(response)));
        assert!(
            matches!(err, ClientError::Api { status: 401, .. }),
            "{err:?}"
        );
        assert!(err.is_unauthorized());

        let closed = ClientError::Closed {
            code: crate::live_wire::CLOSE_TOO_SLOW,
            reason: "client too slow".into(),
        };
        assert!(!closed.is_normal_close());
        assert_eq!(
            closed.to_string(),
            "the node closed the live connection with code 4008: client too slow"
        );
    }

    #[test]
    fn unparsable_messages_are_errors() {
        let ok = parse_server_message(r#"{"type":"pong"}"#).unwrap();
        assert_eq!(ok, ServerMessage::Pong);
        assert!(matches!(
            parse_server_message(r#"{"type":"bogus"}"#),
            Err(ClientError::WebSocket(_))
        ));
        let empty =
            r#"{"type":"change_group","query_ids":[],"change_type":"INSERT","rows":[],"seq":1}"#;
        let error = parse_server_message(empty).unwrap_err();
        assert!(error.to_string().contains("change_group"), "{error}");
    }

    #[test]
    fn a_change_group_splits_into_one_change_per_subscription() {
        let group = parse_server_message(
            r#"{"type":"change_group","query_ids":["a","b"],"change_type":"UPDATE","rows":[{"id":1}],"old_values":[{"id":0}],"seq":8}"#,
        )
        .unwrap();
        let mut live_ids = LiveIds::default();
        live_ids.subscribed("a", "la");
        let error = ungroup(group.clone(), &live_ids).unwrap_err();
        assert!(error.to_string().contains(r#"query_id "b""#), "{error}");
        live_ids.subscribed("b", "lb");
        let changes = ungroup(group, &live_ids).unwrap();
        let names: Vec<_> = changes
            .iter()
            .map(|c| match c {
                ServerMessage::Change {
                    query_id,
                    live_id,
                    change_type,
                    rows,
                    old_values,
                    seq,
                } => {
                    assert_eq!((*change_type, *seq), (ChangeType::Update, 8));
                    assert_eq!(rows[0]["id"], 1);
                    assert_eq!(old_values.as_ref().unwrap()[0]["id"], 0);
                    (query_id.as_str(), live_id.as_str())
                }
                other => panic!("not a change: {other:?}"),
            })
            .collect();
        assert_eq!(names, [("a", "la"), ("b", "lb")]);
        assert_eq!(
            ungroup(ServerMessage::Pong, &live_ids).unwrap(),
            [ServerMessage::Pong]
        );
    }

    #[test]
    fn unsubscribed_query_ids_resolve_for_a_while_and_then_are_forgotten() {
        let mut ids = LiveIds::default();
        ids.subscribed("kept", "l-kept");
        ids.subscribed("gone", "l-gone");
        ids.unsubscribed("gone");
        assert_eq!(
            ids.get("gone"),
            Some("l-gone"),
            "late changes still resolve"
        );
        // Subscribed again under the same query_id before it is pushed out, with the same
        // live_id (the node derives it from user, connection, table and query_id): the new
        // subscription keeps its entry when the old one's turn comes.
        ids.subscribed("again", "l-again");
        ids.unsubscribed("again");
        ids.subscribed("again", "l-again");
        for i in 0..RETIRED_QUERY_IDS {
            let q = format!("q{i}");
            ids.subscribed(&q, &format!("l{i}"));
            ids.unsubscribed(&q);
        }
        assert_eq!(ids.get("gone"), None);
        assert_eq!(ids.get("again"), Some("l-again"));
        assert_eq!(ids.get("kept"), Some("l-kept"));
        assert_eq!(
            ids.get(&format!("q{}", RETIRED_QUERY_IDS - 1)),
            Some("l1023")
        );
        assert_eq!(
            ids.ids.len(),
            RETIRED_QUERY_IDS + 2,
            "live ones plus the retired ones"
        );
        ids.unsubscribed("never subscribed");
        assert_eq!(ids.retired.len(), RETIRED_QUERY_IDS);
    }
}
