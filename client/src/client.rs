//! The async HTTP client of a KalamDB node: `POST /api/sql`, `GET /healthz`, `GET /readyz`.
//!
//! One [`KalamClient`] keeps a pool of keep-alive connections to its node ([`crate::http`]),
//! shared by every clone, so a load tool can clone it into each task without opening new
//! connections. Live queries (`GET /ws`) are in [`crate::live`]; they share [`ClientError`].

use std::fmt;
use std::sync::Arc;

use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use serde::Deserialize;

use crate::http::{Head, HttpError, Pool};
use crate::wire::{ApiError, ErrorCode, SqlRequest, SqlResponse, SqlSuccess};

/// How much of an unexpected body [`ClientError::Protocol`] keeps: enough to recognise an
/// HTML error page or a proxy message, not so much that it floods a terminal.
const SNIPPET_CHARS: usize = 200;

/// Everything that can go wrong when talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to [`KalamClient::new`] is not an `http(s)://host[:port][/path]` URL.
    #[error("invalid server URL {0}")]
    InvalidUrl(String),
    /// No connection to the node could be opened: refused, unreachable, a name that does
    /// not resolve, or no answer within the connect timeout.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed before the answer was complete: reset, closed early, or an
    /// answer that is not HTTP.
    #[error("HTTP exchange with the node failed: {0}")]
    Http(#[source] hyper::Error),
    /// The token has characters an HTTP header cannot carry.
    #[error("the token has characters an HTTP header cannot carry")]
    InvalidToken,
    /// The node answered with the error shape of `API.md`.
    #[error("HTTP {status}: {error}")]
    Api { status: u16, error: ApiError },
    /// Something answered, but not with the JSON shape of `API.md` (a proxy, another service,
    /// a wrong path prefix in the URL).
    #[error("unexpected response (HTTP {status}), not a KalamDB answer: {body_snippet}")]
    Protocol { status: u16, body_snippet: String },
    /// No WebSocket could be opened to `url`: connection refused, reset or timed out before
    /// the upgrade answer. (A refused upgrade, e.g. a bad token, is [`ClientError::Api`].)
    #[error("cannot open a WebSocket to {url}: {message}")]
    WebSocketConnect { url: String, message: String },
    /// An open live connection failed: a reset, a frame that breaks the WebSocket protocol,
    /// or a message that is not one of `API.md` section 5.
    #[error("live connection: {0}")]
    WebSocket(String),
    /// The node closed the live connection with a close frame: `code` is one of
    /// [`crate::live_wire`]'s close codes (4008 too slow, 4401 unauthorized, ...) or a
    /// standard one (1000 normal, 1001 going away; 1005 when the frame had no code).
    #[error("the node closed the live connection with code {code}{}", reason_suffix(.reason))]
    Closed { code: u16, reason: String },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl ClientError {
    /// The stable error code, for callers that branch on the kind of failure.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.api_error().map(|e| &e.code)
    }

    /// The node's error object, when the node answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// True when no connection to the node could be made (it is down, or the URL is wrong).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::WebSocketConnect { .. }
        )
    }

    /// True when the node refused the credentials: HTTP 401 (on `/api/sql` or on the `/ws`
    /// upgrade) or close code 4401 (first-message authentication of a live connection).
    pub fn is_unauthorized(&self) -> bool {
        match self {
            ClientError::Api { status, error } => {
                *status == 401 || error.code == ErrorCode::Unauthorized
            }
            ClientError::Protocol { status, .. } => *status == 401,
            ClientError::Closed { code, .. } => *code == crate::live_wire::CLOSE_UNAUTHORIZED,
            _ => false,
        }
    }

    /// The close code, when the node closed a live connection.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for a close that is not a failure: 1000 (normal), 1001 (going away: the node
    /// shuts down) or 1005 (a close frame without a code).
    pub fn is_normal_close(&self) -> bool {
        matches!(self.close_code(), Some(1000 | 1001 | 1005))
    }

    /// The message followed by its causes (`a: b: c`), because transport errors keep the
    /// useful part ("connection reset") in their source chain.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(inner) = cause {
            let part = inner.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            cause = std::error::Error::source(inner);
        }
        text
    }

    fn protocol(status: u16, body: &[u8]) -> Self {
        ClientError::Protocol {
            status,
            body_snippet: snippet(body),
        }
    }

    /// A non-success answer: the node's error object when the body holds the JSON error shape
    /// (a `/ws` upgrade refused with 401), else [`ClientError::Protocol`].
    pub(crate) fn from_error_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<SqlResponse>(body) {
            Ok(SqlResponse::Error { error }) => ClientError::Api { status, error },
            _ => ClientError::protocol(status, body),
        }
    }
}

/// The start of an unexpected body or message, lossily decoded, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(SNIPPET_CHARS)
        .collect()
}

/// A `POST /api/sql` answer kept as the JSON the node sent, for tools that print it verbatim
/// (`kalam --json`). It has been checked to have the shape of `API.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSqlResponse {
    /// HTTP status of the answer.
    pub status: u16,
    /// The body, exactly as parsed (field order preserved).
    pub body: serde_json::Value,
}

impl RawSqlResponse {
    /// True for `{"status": "error", ...}`.
    pub fn is_error(&self) -> bool {
        self.body.get("status").and_then(serde_json::Value::as_str) == Some("error")
    }
}

/// Async client of one KalamDB node. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct KalamClient {
    pool: Arc<Pool>,
    base_url: String,
    /// `https://`: accepted, refused when a request is sent (the crate has no TLS).
    tls: bool,
    // Built once: a load tool sends many requests and should not re-parse them each time.
    sql_uri: Uri,
    healthz_uri: Uri,
    readyz_uri: Uri,
    token: Option<String>,
    /// `Bearer <token>`, or `None` with a token no header can carry.
    authorization: Option<HeaderValue>,
}

impl KalamClient {
    /// A client of the node at `base_url` (`http://127.0.0.1:8080`, optionally with a path
    /// prefix when the node sits behind a proxy). A trailing `/` is ignored. Nothing is
    /// connected until the first request.
    ///
    /// This crate is built without TLS, so `https://` URLs are accepted here but fail when a
    /// request is sent; put a TLS-terminating proxy in front of the node or use plain HTTP.
    /// Redirects are not followed (the node never answers with one).
    pub fn new(base_url: impl Into<String>) -> Result<Self, ClientError> {
        let raw: String = base_url.into();
        let base_url = raw.trim().trim_end_matches('/').to_string();
        let invalid = |why: &dyn fmt::Display| ClientError::InvalidUrl(format!("'{raw}': {why}"));
        let parsed = url::Url::parse(&base_url).map_err(|e| invalid(&e))?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(invalid(&"the scheme must be http or https")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(invalid(&"no host")),
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(&"a base URL takes no query or fragment"));
        }
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid(&"no port"))?;
        let authority = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(invalid(&"no host")),
        };
        let authority = HeaderValue::from_str(&authority).map_err(|e| invalid(&e))?;
        let prefix = parsed.path().trim_end_matches('/').to_owned();
        let endpoint =
            |path: &str| Uri::try_from(format!("{prefix}{path}")).map_err(|e| invalid(&e));
        Ok(KalamClient {
            pool: Arc::new(Pool::new(host, port, authority)),
            base_url,
            tls,
            sql_uri: endpoint("/api/sql")?,
            healthz_uri: endpoint("/healthz")?,
            readyz_uri: endpoint("/readyz")?,
            token: None,
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every SQL request (a JWT from
    /// `kalamdb token --user <id>` or from the application's own issuer).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.authorization =
            HeaderValue::from_str(&format!("Bearer {token}"))
                .ok()
                .map(|mut value| {
                    // Keeps the token out of any debug output of a request.
                    value.set_sensitive(true);
                    value
                });
        self.token = Some(token);
        self
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Runs one or more `;`-separated statements as the token's user.
    pub async fn sql(&self, sql: &str) -> Result<SqlSuccess, ClientError> {
        self.sql_as(sql, None).await
    }

    /// Runs statements on behalf of `as_user` (admin tokens only; `None` = the token's user).
    pub async fn sql_as(
        &self,
        sql: &str,
        as_user: Option<&str>,
    ) -> Result<SqlSuccess, ClientError> {
        self.execute(&build_request(sql, as_user)).await
    }

    /// Runs statements whose values are `$1`, `$2`, ... bound to `params` (JSON values; an
    /// array or object is its JSON text). Values are never spliced into the SQL, so they need
    /// no quoting, and the node parses a text it has seen before only once.
    pub async fn sql_params(
        &self,
        sql: &str,
        params: Vec<serde_json::Value>,
    ) -> Result<SqlSuccess, ClientError> {
        self.execute(&SqlRequest::new(sql).with_params(params))
            .await
    }

    /// Sends a prepared request; see [`KalamClient::sql`].
    pub async fn execute(&self, request: &SqlRequest) -> Result<SqlSuccess, ClientError> {
        let (status, body) = self.post_sql(request).await?;
        parse_sql_body(status, &body)
    }

    /// Like [`KalamClient::sql_as`], but keeps the JSON body as sent, success or error.
    /// An error answer of the node is `Ok` here (see [`RawSqlResponse::is_error`]); only
    /// transport failures and bodies that are not the `API.md` shape are `Err`.
    pub async fn sql_raw(
        &self,
        sql: &str,
        as_user: Option<&str>,
    ) -> Result<RawSqlResponse, ClientError> {
        let (status, body) = self.post_sql(&build_request(sql, as_user)).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| ClientError::protocol(status, &body))?;
        // Validate the shape so that a proxy's JSON error page is not mistaken for an answer.
        if SqlResponse::deserialize(&value).is_err() {
            return Err(ClientError::protocol(status, &body));
        }
        Ok(RawSqlResponse {
            status,
            body: value,
        })
    }

    /// `GET /healthz`: true when the process is up and answers 2xx.
    pub async fn health(&self) -> Result<bool, ClientError> {
        let (status, _) = self
            .send(Method::GET, &self.healthz_uri, None, None)
            .await?;
        Ok((200..300).contains(&status))
    }

    /// `GET /readyz`: true when the node has opened its storage and can take traffic.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let (status, _) = self.send(Method::GET, &self.readyz_uri, None, None).await?;
        Ok((200..300).contains(&status))
    }

    async fn post_sql(&self, request: &SqlRequest) -> Result<(u16, Bytes), ClientError> {
        // Serialising a struct of strings cannot fail.
        let body = serde_json::to_vec(request).unwrap_or_default();
        let authorization = match (&self.token, &self.authorization) {
            (Some(_), None) => return Err(ClientError::InvalidToken),
            (_, value) => value.as_ref(),
        };
        self.send(
            Method::POST,
            &self.sql_uri,
            authorization,
            Some(body.into()),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), ClientError> {
        if self.tls {
            return Err(ClientError::InvalidUrl(format!(
                "'{}': https needs TLS, and this client is built without it; use http:// \
                 (e.g. behind a TLS-terminating proxy)",
                self.base_url
            )));
        }
        let head = Head {
            method,
            uri,
            authorization,
        };
        self.pool.exchange(&head, body).await.map_err(|e| match e {
            HttpError::Connect(source) => ClientError::Connect {
                url: self.base_url.clone(),
                source,
            },
            HttpError::Exchange(e) => ClientError::Http(e),
        })
    }
}

// Hand-written so that the bearer token never ends up in a log line.
impl fmt::Debug for KalamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KalamClient")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn build_request(sql: &str, as_user: Option<&str>) -> SqlRequest {
    let request = SqlRequest::new(sql);
    match as_user {
        Some(user) => request.with_as_user(user),
        None => request,
    }
}

/// Reads a `/api/sql` body whatever the HTTP status: the node always answers with the JSON
/// shape, so the body, not the status, says whether the request succeeded.
fn parse_sql_body(status: u16, body: &[u8]) -> Result<SqlSuccess, ClientError> {
    match serde_json::from_slice::<SqlResponse>(body) {
        Ok(SqlResponse::Success(ok)) => Ok(ok),
        Ok(SqlResponse::Error { error }) => Err(ClientError::Api { status, error }),
        Err(_) => Err(ClientError::protocol(status, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_validates_and_trims_the_url() {
        let c = KalamClient::new(" http://127.0.0.1:8080/ ").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        assert_eq!(c.sql_uri, "/api/sql");
        let c = KalamClient::new("http://proxy/kalam/").unwrap();
        assert_eq!(c.readyz_uri, "/kalam/readyz");
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "not a url",
            "http://h/?x=1",
            "",
        ] {
            assert!(
                matches!(KalamClient::new(bad), Err(ClientError::InvalidUrl(_))),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn body_decides_success_or_error_whatever_the_status() {
        let ok =
            parse_sql_body(200, br#"{"status":"success","results":[],"took_ms":1.5}"#).unwrap();
        assert_eq!(ok.took_ms, 1.5);

        let err = parse_sql_body(
            409,
            br#"{"status":"error","error":{"code":"NAMESPACE_NOT_EMPTY","message":"m"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::NamespaceNotEmpty));
        assert!(matches!(err, ClientError::Api { status: 409, .. }));

        let html = format!("<html>{}</html>", "x".repeat(500));
        let err = parse_sql_body(502, html.as_bytes()).unwrap_err();
        let ClientError::Protocol {
            status,
            body_snippet,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 502);
        assert_eq!(body_snippet.chars().count(), SNIPPET_CHARS);
        assert!(body_snippet.starts_with("<html>"));
        assert_eq!(err.code(), None);
    }

    #[test]
    fn error_bodies_keep_the_node_error_when_there_is_one() {
        let err = ClientError::from_error_body(
            401,
            br#"{"status":"error","error":{"code":"UNAUTHORIZED","message":"m"}}"#,
        );
        assert!(matches!(err, ClientError::Api { status: 401, .. }));
        assert!(err.is_unauthorized());
        let err = ClientError::from_error_body(401, b"");
        assert!(matches!(err, ClientError::Protocol { status: 401, .. }));
        assert!(err.is_unauthorized());
        assert!(!ClientError::from_error_body(404, b"not found").is_unauthorized());
    }

    #[test]
    fn raw_response_reports_errors() {
        let raw = RawSqlResponse {
            status: 401,
            body: serde_json::json!({"status": "error", "error": {"code": "UNAUTHORIZED", "message": "m"}}),
        };
        assert!(raw.is_error());
    }
}
