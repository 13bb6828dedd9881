//! HTTP/1.1 exchanges with one node over keep-alive connections that the calling task drives
//! itself: hyper's connection API, with no background task per connection.
//!
//! Why not a client with a connection task (reqwest, hyper-util's pool): there every request
//! hops from the caller's task to the connection's task and back, which on a multi-threaded
//! runtime is a wake-up of another thread each way. On the 2-core machine of
//! docs/performance.md that was about 55 µs of a 210 µs single-row INSERT (p50) and 100 µs
//! at p99. Here a request takes an idle connection out of the pool (or opens one), writes the
//! request and reads the whole response in the caller's task, and puts the connection back
//! once the response has been read to its end. A request dropped half-way (a timeout, a
//! `select!`) drops its connection too: its state is unknown.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bounds only the TCP connect: statements themselves may legitimately run for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per client (and its clones); more concurrent requests than this
/// open connections that are closed after use.
const MAX_IDLE: usize = 64;
/// How long a connection may sit idle in the pool and still be used: less than the idle
/// timeout of the node (`http_read_timeout_ms`, 75 s by default) and of the proxies in front
/// of nodes (60 s is common). A close the server sends while the request is on its way is
/// not noticed before the request is written, and a request it crossed cannot be sent again
/// safely; a connection that old is closed and a new one opened instead.
const MAX_IDLE_AGE: Duration = Duration::from_secs(20);

const USER_AGENT_VALUE: &str = concat!("kalam-client/", env!("CARGO_PKG_VERSION"));

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No connection could be opened (refused, unreachable, name not resolved, timed out).
    Connect(io::Error),
    /// The connection failed during the exchange (reset, closed early, a malformed answer).
    Exchange(hyper::Error),
}

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One open connection: the handle requests are sent through and the state machine that
/// does the I/O, polled by whichever task is using the connection.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    io: Pin<Box<Connection>>,
    /// The I/O future has resolved (the connection is over): it must not be polled again.
    ended: bool,
    /// When it last went back into the pool (or was opened).
    idle_since: Instant,
}

/// Where the node is and the connections open to it.
pub(crate) struct Pool {
    host: String,
    port: u16,
    /// The `Host` header: `host[:port]` as the base URL spells it.
    authority: HeaderValue,
    idle: Mutex<Vec<Conn>>,
    /// [`MAX_IDLE_AGE`], shorter in tests.
    max_idle_age: Duration,
}

/// A request without its body; see [`Pool::exchange`].
pub(crate) struct Head<'a> {
    pub method: Method,
    pub uri: &'a Uri,
    pub authorization: Option<&'a HeaderValue>,
}

impl Pool {
    /// `host` as the URL names it (a name, an IPv4 address, or an IPv6 address without
    /// brackets), `authority` as it goes into the `Host` header.
    pub(crate) fn new(host: String, port: u16, authority: HeaderValue) -> Self {
        Self {
            host,
            port,
            authority,
            idle: Mutex::new(Vec::new()),
            max_idle_age: MAX_IDLE_AGE,
        }
    }

    /// Sends `head` with `body` (JSON, when given) and reads the whole response: its
    /// status and body.
    pub(crate) async fn exchange(
        &self,
        head: &Head<'_>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), HttpError> {
        // A connection the node closed while it sat idle is noticed here (its EOF), but the
        // close can also cross the request on the wire. hyper says "canceled" when the
        // request was never written; only then is it safe to send it again.
        if let Some(mut conn) = self.checkout() {
            match conn.exchange(self.request(head, body.clone())).await {
                Ok(answer) => {
                    self.checkin(conn);
                    return Ok(answer);
                }
                Err(e) if e.is_canceled() => {}
                Err(e) => return Err(HttpError::Exchange(e)),
            }
        }
        let mut conn = self.connect().await?;
        let answer = conn
            .exchange(self.request(head, body))
            .await
            .map_err(HttpError::Exchange)?;
        self.checkin(conn);
        Ok(answer)
    }

    fn request(&self, head: &Head<'_>, body: Option<Bytes>) -> Request<Full<Bytes>> {
        let json = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(value) = head.authorization {
            headers.insert(hyper::header::AUTHORIZATION, value.clone());
        }
        request
    }

    /// The most recently used idle connection that is still open and not too old; the
    /// others are dropped (closed).
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            // An idle connection's state machine resolves once the peer has closed it (or
            // sent something it should not have); either way it cannot be used.
            if !conn.ended
                && conn.idle_since.elapsed() < self.max_idle_age
                && !conn.send.is_closed()
                && conn.io.as_mut().now_or_never().is_none()
            {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        if conn.ended {
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(HttpError::Connect(e)),
            Err(_) => {
                return Err(HttpError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                )))
            }
        };
        // Small request/response pairs: Nagle's algorithm would add delay to every one.
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        let (send, io) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(HttpError::Exchange)?;
        Ok(Conn {
            send,
            io: Box::pin(io),
            ended: false,
            idle_since: Instant::now(),
        })
    }
}

impl Conn {
    /// Writes `request` and reads the response to its end, polling the connection's I/O
    /// in this task meanwhile.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), hyper::Error> {
        let Conn {
            send, io, ended, ..
        } = self;
        let exchange = async {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        };
        // The request handle and the connection wake each other (the request handed over,
        // the answer handed back); inline, those wakes do not send the task to another thread.
        crate::task::inline_self_wakes(async {
            tokio::pin!(exchange);
            tokio::select! {
                biased;
                answer = &mut exchange => answer,
                // The connection ended before the answer was complete. Its pending request is
                // failed as it ends, so the exchange now resolves with hyper's reason.
                _ = io.as_mut() => {
                    *ended = true;
                    exchange.await
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP/1.1 server (hyper's) on a loopback port, which counts the
    //! connections it accepts and can be told to close each one after its first answer.

    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use tokio::net::TcpListener;

    use super::*;

    struct Server {
        port: u16,
        accepted: Arc<AtomicUsize>,
    }

    /// Answers every request with `<method> <path> <body>`; `close_after_one` makes it
    /// close each connection after its first answer, without saying so (no `Connection:
    /// close`): the client has to notice the close by itself, as with a node that times idle
    /// connections out or restarts.
    async fn server(close_after_one: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if close_after_one {
                        answer_once_and_close(stream).await;
                        return;
                    }
                    let echo = service_fn(|request: Request<Incoming>| async move {
                        let head = format!("{} {} ", request.method(), request.uri().path());
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let mut answer = head.into_bytes();
                        answer.extend_from_slice(&body);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), echo)
                        .await;
                });
            }
        });
        Server { port, accepted }
    }

    /// The same answer as the hyper server's, written by hand so that the socket is closed
    /// right after it (hyper would announce the close, or keep the connection).
    async fn answer_once_and_close(mut stream: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its request was complete");
            request.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                break (end + 4, length);
            }
        };
        while request.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            request.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&request).into_owned();
        let mut first = text.split_whitespace();
        let (method, path) = (first.next().unwrap(), first.next().unwrap());
        let body = format!("{method} {path} {}", &text[head_end..]);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
    }

    fn pool(port: u16) -> Pool {
        Pool::new(
            "127.0.0.1".into(),
            port,
            HeaderValue::from_str(&format!("127.0.0.1:{port}")).unwrap(),
        )
    }

    async fn post(pool: &Pool, body: &str) -> Result<(u16, Bytes), HttpError> {
        let uri = Uri::from_static("/api/sql");
        let head = Head {
            method: Method::POST,
            uri: &uri,
            authorization: None,
        };
        pool.exchange(&head, Some(Bytes::from(body.to_owned())))
            .await
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let server = server(false).await;
        let pool = pool(server.port);
        for i in 0..5 {
            let (status, body) = post(&pool, &format!("request {i}")).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, format!("POST /api/sql request {i}"));
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    /// A connection idle for longer than the pool's limit is not used again: the server may
    /// be closing it just then.
    #[tokio::test]
    async fn connections_idle_for_too_long_are_replaced() {
        let server = server(false).await;
        let mut pool = pool(server.port);
        pool.max_idle_age = Duration::from_millis(200);
        post(&pool, "first").await.unwrap();
        post(&pool, "at once").await.unwrap();
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "reused while fresh"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, body) = post(&pool, "later").await.unwrap();
        assert_eq!(body, "POST /api/sql later");
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            2,
            "a new connection"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_replaced_without_an_error() {
        let server = server(true).await;
        let pool = pool(server.port);
        for i in 0..3 {
            let (_, body) = post(&pool, &format!("request {i}")).await.unwrap();
            assert_eq!(body, format!("POST /api/sql request {i}"));
            // Time for the close to arrive before the connection is taken out again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_answers_and_the_pool_keeps_them() {
        let server = server(false).await;
        let pool = Arc::new(pool(server.port));
        for _ in 0..2 {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let pool = pool.clone();
                    tokio::spawn(async move { (i, post(&pool, &format!("task {i}")).await) })
                })
                .collect();
            for task in tasks {
                let (i, answer) = task.await.unwrap();
                assert_eq!(answer.unwrap().1, format!("POST /api/sql task {i}"));
            }
        }
        // The second wave reused what the first opened.
        let opened = server.accepted.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&opened),
            "{opened} connections for 8 at a time"
        );
    }

    #[tokio::test]
    async fn a_request_dropped_half_way_leaves_the_pool_usable() {
        let server = server(false).await;
        let pool = pool(server.port);
        post(&pool, "warm").await.unwrap();
        // Dropped right after it started: its connection's state is unknown, so it goes.
        let dropped = post(&pool, "dropped");
        assert!(futures::poll!(Box::pin(dropped)).is_pending());
        let (_, body) = post(&pool, "after").await.unwrap();
        assert_eq!(body, "POST /api/sql after");
    }

    #[tokio::test]
    async fn a_node_that_is_not_listening_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        match post(&pool(port), "x").await {
            Err(HttpError::Connect(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
