//! The harness of the black-box suite: it starts real `kalamdb serve` processes on a free port
//! with a temporary data directory, mints JWTs with the test secret, sends raw HTTP requests
//! (so that tests see the exact JSON of API.md), and checks the success and error shapes every
//! response must have. On a failing test the node's stderr is printed. For `GET /ws` it opens
//! raw WebSocket connections ([`WsClient`]) whose frames are parsed to JSON and checked
//! against the message shapes of API.md §5.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The JWT secret every node of the suite gets through `KALAMDB_JWT_SECRET`.
pub const TEST_SECRET: &str = "kalamdb-it-secret-3b9f1c7e2a6d4e8f9a0b1c2d3e4f5061";
/// The user id of the admin tokens minted by [`admin_token`].
pub const ADMIN_USER: &str = "root";
/// What the node prints on stdout once it has bound its socket.
pub const LISTEN_PREFIX: &str = "kalamdb listening on ";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The USER table of API.md §4, used by most tests.
pub const MESSAGES_DDL: &str = "CREATE USER TABLE app.messages (\
    id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), \
    conversation_id TEXT NOT NULL, \
    content TEXT, \
    meta JSON, \
    created_at TIMESTAMP DEFAULT NOW())";
/// The columns `SELECT * FROM app.messages` returns, system columns last.
pub const MESSAGES_COLUMNS: [&str; 7] = [
    "id",
    "conversation_id",
    "content",
    "meta",
    "created_at",
    "_updated",
    "_deleted",
];
/// A SHARED table that goes with `app.messages`.
pub const CONVERSATIONS_DDL: &str =
    "CREATE SHARED TABLE app.conversations (id TEXT PRIMARY KEY, title TEXT, archived BOOLEAN)";

/// A response of `POST /api/sql`: HTTP status and the body (a JSON string value holding
/// `<not JSON> ...` when the body was not JSON, so that assertions show it).
pub type Resp = (u16, Value);

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

pub fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a test JWT")
}

/// A token for `user`, valid for an hour, signed with [`TEST_SECRET`].
pub fn token(user: &str, admin: bool) -> String {
    let role = if admin { "admin" } else { "user" };
    sign(
        &json!({"sub": user, "role": role, "exp": now_secs() + 3600}),
        TEST_SECRET,
    )
}

/// An admin token for [`ADMIN_USER`].
pub fn admin_token() -> String {
    token(ADMIN_USER, true)
}

/// Verifies `token` with `secret` (HS256) and returns its claims.
pub fn decode_claims(token: &str, secret: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    // `exp` is checked when present; whether a token must carry one is the node's business.
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("token {token:?} does not verify with the expected secret: {e}"))
    .claims
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A temporary directory holding a node's data directory (`<base>/data`) and the stderr logs of
/// every node started on it. Clones share the directory; it is deleted when the last goes.
#[derive(Clone)]
pub struct NodeDir {
    base: Arc<tempfile::TempDir>,
}

impl NodeDir {
    pub fn new() -> Self {
        let base = tempfile::Builder::new()
            .prefix("kalamdb-it-")
            .tempdir()
            .expect("creating a temporary directory");
        std::fs::create_dir_all(base.path().join("data")).expect("creating the data directory");
        NodeDir {
            base: Arc::new(base),
        }
    }

    /// The temporary directory (parent of the data directory).
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// The `--data-dir` of the node.
    pub fn data_dir(&self) -> PathBuf {
        self.base.path().join("data")
    }
}

impl Default for NodeDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Extra settings of a started node.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    env: Vec<(String, String)>,
    args: Vec<String>,
    without_secret: bool,
}

impl NodeOptions {
    /// Sets an environment variable of the node (e.g. `KALAMDB_MAX_RESULT_ROWS`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Appends an argument to `kalamdb serve --data-dir <dir> --listen 127.0.0.1:0`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the node without `KALAMDB_JWT_SECRET`, so that it generates its own secret.
    pub fn without_secret(mut self) -> Self {
        self.without_secret = true;
        self
    }
}

/// `kalamdb` with every inherited `KALAMDB_*` variable removed, so that the environment of
/// the test run cannot change what a test sees.
fn kalamdb_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kalamdb"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KALAMDB_") {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

static STARTS: AtomicUsize = AtomicUsize::new(0);

/// A running `kalamdb serve` process. Dropping it kills the process.
pub struct TestNode {
    dir: NodeDir,
    opts: NodeOptions,
    child: Option<Child>,
    url: String,
    stderr_path: PathBuf,
    stdout: Arc<Mutex<String>>,
    stdout_task: Option<JoinHandle<()>>,
    http: reqwest::Client,
}

impl TestNode {
    /// A node on a fresh data directory.
    pub async fn start() -> TestNode {
        Self::start_with(&NodeDir::new(), NodeOptions::default()).await
    }

    /// A node on an existing data directory (restart tests).
    pub async fn start_in(dir: &NodeDir) -> TestNode {
        Self::start_with(dir, NodeOptions::default()).await
    }

    /// A node on a fresh data directory with extra settings.
    pub async fn start_with_options(opts: NodeOptions) -> TestNode {
        Self::start_with(&NodeDir::new(), opts).await
    }

    /// Spawns `kalamdb serve --data-dir <dir> --listen 127.0.0.1:0`, waits for its listening
    /// line on stdout and then for `GET /readyz` to answer 200.
    pub async fn start_with(dir: &NodeDir, opts: NodeOptions) -> TestNode {
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let stderr_path = dir.base().join(format!("node-{n}.stderr.log"));
        let stderr_file =
            std::fs::File::create(&stderr_path).expect("creating the node's stderr log");

        let mut cmd = kalamdb_command();
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.data_dir())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&opts.args);
        if !opts.without_secret {
            cmd.env("KALAMDB_JWT_SECRET", TEST_SECRET);
        }
        for (key, value) in &opts.env {
            cmd.env(key, value);
        }
        cmd.env("RUST_BACKTRACE", "1");
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(stderr_file));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", env!("CARGO_BIN_EXE_kalamdb")));

        // 1. The listening line.
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        let url = loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let found = line
                        .strip_prefix(LISTEN_PREFIX)
                        .map(|rest| rest.trim().to_string());
                    seen.push(line);
                    if let Some(url) = found {
                        break url;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                    panic!(
                        "kalamdb exited before printing `{LISTEN_PREFIX}...` (exit: {status:?})\n\
                         --- stdout ---\n{}\n--- stderr ---\n{}",
                        seen.join("\n"),
                        tail(&read_lossy(&stderr_path), 16_000)
                    );
                }
                Err(_) => {
                    let _ = child.start_kill();
                    panic!(
                        "kalamdb did not print `{LISTEN_PREFIX}...` within {STARTUP_TIMEOUT:?}\n\
                         --- stdout ---\n{}\n--- stderr ---\n{}",
                        seen.join("\n"),
                        tail(&read_lossy(&stderr_path), 16_000)
                    );
                }
            }
        };
        let port = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok());
        assert!(
            matches!(port, Some(p) if p != 0),
            "the listening line must be `{LISTEN_PREFIX}http://127.0.0.1:PORT`, got {url:?}"
        );

        // Keep draining stdout: the node must not block or die on a full or closed pipe.
        let stdout_buf = Arc::new(Mutex::new(
            seen.iter().map(|l| format!("{l}\n")).collect::<String>(),
        ));
        let sink = Arc::clone(&stdout_buf);
        let stdout_task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut buf = sink.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });

        // 2. Readiness.
        let mut client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        // A node that closes idle connections soon must not be sent a request on one it is
        // closing: the client drops them well before the node's read timeout.
        if let Some(ms) = opts
            .env
            .iter()
            .find(|(k, _)| k == "KALAMDB_HTTP_READ_TIMEOUT_MS")
            .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            client = client.pool_idle_timeout(Duration::from_millis(ms / 4));
        }
        let http = client.build().expect("building the HTTP client");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ready = http
                .get(format!("{url}/readyz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if matches!(&ready, Ok(r) if r.status().as_u16() == 200) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "kalamdb exited ({status}) before /readyz answered 200\n--- stderr ---\n{}",
                    tail(&read_lossy(&stderr_path), 16_000)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                panic!(
                    "/readyz did not answer 200 within {STARTUP_TIMEOUT:?} (last: {ready:?})\n\
                     --- stderr ---\n{}",
                    tail(&read_lossy(&stderr_path), 16_000)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        TestNode {
            dir: dir.clone(),
            opts,
            child: Some(child),
            url,
            stderr_path,
            stdout: stdout_buf,
            stdout_task: Some(stdout_task),
            http,
        }
    }

    /// `http://127.0.0.1:PORT`, as printed by the node.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dir(&self) -> NodeDir {
        self.dir.clone()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.data_dir()
    }

    pub fn options(&self) -> NodeOptions {
        self.opts.clone()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The CPU time the node's process has used so far, user and system, in clock ticks
    /// (`/proc/<pid>/stat`): how a test sees whether work in the node has stopped.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the node is running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Everything the node wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The buffer stdout is collected into; complete once [`stop`](Self::stop) returned.
    pub fn stdout_handle(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.stdout)
    }

    /// Graceful stop: SIGTERM, then wait (at most 30 s) for the process to exit.
    pub async fn stop(mut self) -> NodeDir {
        let mut child = self.child.take().expect("the node is running");
        if let Some(pid) = child.id() {
            // `sh`'s builtin `kill`: no extra crate and no dependency on procps.
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {pid}"))
                .status();
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for kalamdb to exit: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                panic!("kalamdb did not exit within {STOP_TIMEOUT:?} after SIGTERM");
            }
        }
        self.finish_stdout().await;
        self.dir.clone()
    }

    /// `kill -9`: no chance to flush anything.
    pub async fn kill9(mut self) -> NodeDir {
        let mut child = self.child.take().expect("the node is running");
        child.kill().await.expect("SIGKILL to kalamdb");
        self.finish_stdout().await;
        self.dir.clone()
    }

    async fn finish_stdout(&mut self) {
        if let Some(task) = self.stdout_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // HTTP
    // -----------------------------------------------------------------------------------------

    /// `POST /api/sql` with a raw `Authorization` header value, content type and body.
    pub async fn post(
        &self,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self.http.post(format!("{}/api/sql", self.url)).body(body);
        if let Some(auth) = authorization {
            req = req.header("authorization", auth);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /api/sql: no HTTP answer: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("POST /api/sql: reading the body: {e}"));
        (status, parse_body(&bytes))
    }

    /// `POST /api/sql` with a JSON body and an optional bearer token.
    pub async fn post_json(&self, token: Option<&str>, body: &Value) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let bytes = serde_json::to_vec(body).expect("serialising a request");
        self.post(auth.as_deref(), Some("application/json"), bytes)
            .await
    }

    /// `{"sql": sql}` with `token`.
    pub async fn sql(&self, token: &str, sql: &str) -> Resp {
        self.post_json(Some(token), &json!({ "sql": sql })).await
    }

    /// `{"sql": sql, "as_user": as_user}` with `token`.
    pub async fn sql_as(&self, token: &str, as_user: &str, sql: &str) -> Resp {
        self.post_json(Some(token), &json!({ "sql": sql, "as_user": as_user }))
            .await
    }

    /// `GET path` without authentication: status, headers, body text.
    /// The value of one series of `/metrics`, named with its labels as the exposition
    /// prints it (`kalamdb_hot_cache_lookups_total{result="hit"}`).
    pub async fn metric(&self, series: &str) -> i64 {
        let (status, _, metrics) = self.get("/metrics").await;
        assert_eq!(status, 200);
        let prefix = format!("{series} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics lacks {series:?}:\n{metrics}"))
    }

    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no HTTP answer: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
        (status, headers, text)
    }

    /// `POST path` over a plain TCP connection that reads the answer while the body is still
    /// being written: a server may answer (413) before it has read a large body, and a client
    /// that only reads after writing would see a reset instead of the answer.
    pub async fn raw_post(&self, path: &str, token: &str, body: Vec<u8>) -> Resp {
        let addr = self
            .url
            .strip_prefix("http://")
            .expect("http:// url")
            .to_string();
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let (mut rd, mut wr) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let writer = tokio::spawn(async move {
            wr.write_all(head.as_bytes()).await?;
            for chunk in body.chunks(256 * 1024) {
                wr.write_all(chunk).await?;
            }
            wr.flush().await?;
            // Hand the write half back so that it stays open until the answer is read.
            Ok::<_, std::io::Error>(wr)
        });
        let reader = async move {
            let mut buf = Vec::new();
            // A reset after the answer is fine: whatever was read stays in `buf`.
            let _ = rd.read_to_end(&mut buf).await;
            buf
        };
        let raw = tokio::time::timeout(REQUEST_TIMEOUT, reader)
            .await
            .unwrap_or_else(|_| {
                panic!("POST {path}: no complete answer within {REQUEST_TIMEOUT:?}")
            });
        writer.abort();
        parse_http_response(&raw)
    }

    // -----------------------------------------------------------------------------------------
    // Assertions
    // -----------------------------------------------------------------------------------------

    /// HTTP 200 and the success shape of API.md §3.
    pub fn assert_success(&self, resp: &Resp, context: &str) {
        let (status, body) = resp;
        assert_eq!(
            *status,
            200,
            "{}\nexpected HTTP 200, got {status}: {}",
            short(context),
            pretty(body)
        );
        if let Err(problem) = check_success_shape(body) {
            panic!(
                "{}\nthe success body does not match API.md ({problem}): {}",
                short(context),
                pretty(body)
            );
        }
    }

    /// The error shape of API.md §3 with `code` and the HTTP status of that code; the body
    /// leaks neither the data directory nor the secret. Returns the `error` object.
    pub fn assert_error(&self, resp: &Resp, code: &str, context: &str) -> Value {
        let (status, body) = resp;
        let expected = http_status_of(code);
        let ctx = short(context);
        assert_eq!(
            body["status"],
            "error",
            "{ctx}\nexpected an error with code {code} (HTTP {expected}), got HTTP {status}: {}",
            pretty(body)
        );
        assert_eq!(
            body["error"]["code"],
            code,
            "{ctx}\nexpected error code {code} (HTTP {expected}), got HTTP {status}: {}",
            pretty(body)
        );
        assert_eq!(
            *status,
            expected,
            "{ctx}\nerror code {code} must come with HTTP {expected}: {}",
            pretty(body)
        );
        if let Err(problem) = check_error_shape(body) {
            panic!(
                "{ctx}\nthe error body does not match API.md ({problem}): {}",
                pretty(body)
            );
        }
        self.assert_no_leak(body, context);
        body["error"].clone()
    }

    /// A body never contains the data directory, the JWT secret or a Rust panic/backtrace.
    pub fn assert_no_leak(&self, body: &Value, context: &str) {
        let text = body.to_string();
        let data_dir = self.data_dir().display().to_string();
        let ctx = short(context);
        assert!(
            !text.contains(&data_dir),
            "{ctx}\nthe response leaks the data directory {data_dir}: {}",
            pretty(body)
        );
        assert!(
            !text.contains(TEST_SECRET),
            "{ctx}\nthe response leaks the JWT secret: {}",
            pretty(body)
        );
        for marker in ["panicked at", "stack backtrace", "RUST_BACKTRACE"] {
            assert!(
                !text.contains(marker),
                "{ctx}\nthe response leaks a panic or backtrace: {}",
                pretty(body)
            );
        }
    }

    /// A request that must succeed; returns the body.
    pub async fn exec(&self, token: &str, sql: &str) -> Value {
        let resp = self.sql(token, sql).await;
        self.assert_success(&resp, sql);
        resp.1
    }

    /// A request with `as_user` that must succeed; returns the body.
    pub async fn exec_as(&self, token: &str, as_user: &str, sql: &str) -> Value {
        let resp = self.sql_as(token, as_user, sql).await;
        self.assert_success(&resp, &format!("[as_user {as_user}] {sql}"));
        resp.1
    }

    /// [`exec`](Self::exec) with an admin token.
    pub async fn admin(&self, sql: &str) -> Value {
        self.exec(&admin_token(), sql).await
    }

    /// The rows of the last result of a request that must succeed.
    pub async fn query(&self, token: &str, sql: &str) -> Vec<Value> {
        last_rows(&self.exec(token, sql).await)
    }

    /// The rows of the last result of an `as_user` request that must succeed.
    pub async fn query_as(&self, token: &str, as_user: &str, sql: &str) -> Vec<Value> {
        last_rows(&self.exec_as(token, as_user, sql).await)
    }

    /// The single value of a one-row, one-column result.
    pub async fn scalar(&self, token: &str, sql: &str) -> Value {
        single(&self.query(token, sql).await, sql)
    }

    /// The integer of a one-row, one-column result (e.g. `COUNT(*)`).
    pub async fn count(&self, token: &str, sql: &str) -> i64 {
        let v = self.scalar(token, sql).await;
        v.as_i64()
            .unwrap_or_else(|| panic!("{}\nexpected an integer, got {v}", short(sql)))
    }

    /// `affected_rows` of the last result of a DML request that must succeed.
    pub async fn affected(&self, token: &str, sql: &str) -> u64 {
        affected_of(&self.exec(token, sql).await, sql)
    }

    /// `affected_rows` of an `as_user` DML request that must succeed.
    pub async fn affected_as(&self, token: &str, as_user: &str, sql: &str) -> u64 {
        affected_of(&self.exec_as(token, as_user, sql).await, sql)
    }

    /// A request that must fail with `code`; returns the `error` object.
    pub async fn expect_error(&self, token: &str, sql: &str, code: &str) -> Value {
        let resp = self.sql(token, sql).await;
        self.assert_error(&resp, code, sql)
    }

    /// An `as_user` request that must fail with `code`; returns the `error` object.
    pub async fn expect_error_as(
        &self,
        token: &str,
        as_user: &str,
        sql: &str,
        code: &str,
    ) -> Value {
        let resp = self.sql_as(token, as_user, sql).await;
        self.assert_error(&resp, code, &format!("[as_user {as_user}] {sql}"))
    }

    /// Either a success, or a 4xx error with the JSON error shape (never a 5xx, never a dead
    /// node). Returns whether it was a success.
    pub fn assert_answer_or_client_error(&self, resp: &Resp, context: &str) -> bool {
        let (status, body) = resp;
        if *status == 200 {
            self.assert_success(resp, context);
            return true;
        }
        let ctx = short(context);
        assert!(
            (400..500).contains(status),
            "{ctx}\nexpected a result or a 4xx error, got HTTP {status}: {}",
            pretty(body)
        );
        if let Err(problem) = check_error_shape(body) {
            panic!(
                "{ctx}\nthe error body does not match API.md ({problem}): {}",
                pretty(body)
            );
        }
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert_eq!(
            http_status_of(code),
            *status,
            "{ctx}\ncode {code} came with HTTP {status}"
        );
        self.assert_no_leak(body, context);
        false
    }

    /// `/healthz` answers 200 and a SELECT still works.
    pub async fn assert_still_serving(&self) {
        let (status, _, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "/healthz after bad input: {body}");
        let v = self.scalar(&admin_token(), "SELECT 40 + 2 AS answer").await;
        assert_eq!(v, json!(42), "a SELECT after bad input");
    }

    /// Namespace `app` with the USER table `app.messages` and the SHARED `app.conversations`.
    pub async fn create_chat_schema(&self) {
        self.admin("CREATE NAMESPACE app").await;
        self.admin(MESSAGES_DDL).await;
        self.admin(CONVERSATIONS_DDL).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- kalamdb stderr ({}) ---\n{}\n--- end of kalamdb stderr ---",
                self.stderr_path.display(),
                tail(&self.stderr(), 16_000)
            );
        }
    }
}

/// Runs `kalamdb token <args> --data-dir <dir>` (with `KALAMDB_JWT_SECRET` = `secret` when
/// given) and returns the one line it prints.
pub async fn cli_token(dir: &NodeDir, args: &[&str], secret: Option<&str>) -> String {
    let mut cmd = kalamdb_command();
    cmd.arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(dir.data_dir());
    if let Some(secret) = secret {
        cmd.env("KALAMDB_JWT_SECRET", secret);
    }
    let out = tokio::time::timeout(STARTUP_TIMEOUT, cmd.output())
        .await
        .expect("`kalamdb token` did not finish within 60 s")
        .expect("running `kalamdb token`");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "`kalamdb token {}` failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        args.join(" "),
        out.status
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "`kalamdb token` must print exactly one line, got {stdout:?}"
    );
    let token = lines[0].trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a compact JWT: {token:?}");
    token
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

/// The HTTP status of each error code (client/src/wire.rs).
pub fn http_status_of(code: &str) -> u16 {
    match code {
        "INVALID_REQUEST"
        | "SQL_PARSE_ERROR"
        | "SQL_PLAN_ERROR"
        | "UNSUPPORTED_STATEMENT"
        | "INVALID_IDENTIFIER"
        | "INVALID_VALUE"
        | "SYSTEM_COLUMN_READONLY"
        | "INVALID_TABLE_DEFINITION"
        | "INVALID_OPTION"
        | "LOCATION_UNREACHABLE"
        | "INVALID_QUERY"
        | "NUMERIC_OUT_OF_RANGE"
        | "DIVISION_BY_ZERO"
        | "BACKUP_CORRUPT" => 400,
        "UNAUTHORIZED" => 401,
        "FORBIDDEN" => 403,
        "NAMESPACE_NOT_FOUND"
        | "TABLE_NOT_FOUND"
        | "COLUMN_NOT_FOUND"
        | "STORAGE_LOCATION_NOT_FOUND"
        | "LIVE_QUERY_NOT_FOUND"
        | "BACKUP_NOT_FOUND" => 404,
        "NAMESPACE_ALREADY_EXISTS"
        | "TABLE_ALREADY_EXISTS"
        | "COLUMN_ALREADY_EXISTS"
        | "NAMESPACE_NOT_EMPTY"
        | "PRIMARY_KEY_VIOLATION"
        | "WRITE_CONFLICT"
        | "STORAGE_LOCATION_ALREADY_EXISTS"
        | "STORAGE_LOCATION_IN_USE"
        | "DUPLICATE_QUERY_ID"
        | "TABLE_IN_USE"
        | "BACKUP_ALREADY_EXISTS" => 409,
        "REQUEST_TIMEOUT" => 408,
        "STATEMENT_TIMEOUT" => 504,
        "TOO_MANY_SUBSCRIPTIONS" => 429,
        "RESUME_GAP" | "LIVE_QUERY_KILLED" | "TABLE_DROPPED" => 410,
        "PAYLOAD_TOO_LARGE" | "RESULT_TOO_LARGE" | "RESOURCES_EXHAUSTED" => 413,
        "INTERNAL_ERROR" => 500,
        "NOT_READY" | "TOO_MANY_CONNECTIONS" => 503,
        other => panic!("unknown error code {other:?} (not in client/src/wire.rs)"),
    }
}

fn non_negative_number(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0))
}

/// `{"status":"success","results":[...],"took_ms":f}`, each result with `columns` of
/// `{name,type}`, `rows` as objects whose keys are the column names in column order,
/// `row_count` = number of rows and `execution_time_ms`.
pub fn check_success_shape(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("the body is not a JSON object")?;
    if obj.get("status") != Some(&json!("success")) {
        return Err("`status` is not \"success\"".into());
    }
    if !non_negative_number(obj.get("took_ms")) {
        return Err("`took_ms` is not a non-negative number".into());
    }
    let results = obj
        .get("results")
        .and_then(Value::as_array)
        .ok_or("`results` is not an array")?;
    for (i, result) in results.iter().enumerate() {
        let result = result
            .as_object()
            .ok_or(format!("results[{i}] is not an object"))?;
        let columns = result
            .get("columns")
            .and_then(Value::as_array)
            .ok_or(format!("results[{i}].columns is not an array"))?;
        let mut names: Vec<&str> = Vec::new();
        for (c, column) in columns.iter().enumerate() {
            let name = column
                .get("name")
                .and_then(Value::as_str)
                .ok_or(format!("results[{i}].columns[{c}].name is not a string"))?;
            column
                .get("type")
                .and_then(Value::as_str)
                .ok_or(format!("results[{i}].columns[{c}].type is not a string"))?;
            names.push(name);
        }
        let rows = result
            .get("rows")
            .and_then(Value::as_array)
            .ok_or(format!("results[{i}].rows is not an array"))?;
        for (r, row) in rows.iter().enumerate() {
            let row = row
                .as_object()
                .ok_or(format!("results[{i}].rows[{r}] is not an object"))?;
            let keys: Vec<&str> = row.keys().map(String::as_str).collect();
            if keys != names {
                return Err(format!(
                    "results[{i}].rows[{r}] has keys {keys:?}, the columns are {names:?} (order matters)"
                ));
            }
        }
        match result.get("row_count").and_then(Value::as_u64) {
            Some(n) if n as usize == rows.len() => {}
            other => {
                return Err(format!(
                    "results[{i}].row_count is {other:?} but there are {} rows",
                    rows.len()
                ))
            }
        }
        if !non_negative_number(result.get("execution_time_ms")) {
            return Err(format!(
                "results[{i}].execution_time_ms is not a non-negative number"
            ));
        }
        if let Some(a) = result.get("affected_rows") {
            if !a.is_u64() {
                return Err(format!(
                    "results[{i}].affected_rows is not an unsigned integer"
                ));
            }
        }
        if let Some(m) = result.get("message") {
            if !m.is_string() {
                return Err(format!("results[{i}].message is not a string"));
            }
        }
    }
    Ok(())
}

/// `{"status":"error","error":{"code","message","details"?,"statement_index"?}}`.
pub fn check_error_shape(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("the body is not a JSON object")?;
    if obj.get("status") != Some(&json!("error")) {
        return Err("`status` is not \"error\"".into());
    }
    if let Some(k) = obj.keys().find(|k| *k != "status" && *k != "error") {
        return Err(format!("unexpected top-level field {k:?}"));
    }
    let err = obj
        .get("error")
        .and_then(Value::as_object)
        .ok_or("`error` is not an object")?;
    if let Some(k) = err
        .keys()
        .find(|k| !["code", "message", "details", "statement_index"].contains(&k.as_str()))
    {
        return Err(format!("unexpected field error.{k}"));
    }
    let code = err
        .get("code")
        .and_then(Value::as_str)
        .ok_or("error.code is not a string")?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(format!("error.code {code:?} is not UPPER_SNAKE"));
    }
    match err.get("message").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => {}
        _ => return Err("error.message is not a non-empty string".into()),
    }
    match err.get("details") {
        None | Some(Value::String(_)) => {}
        Some(other) => return Err(format!("error.details is not a string: {other}")),
    }
    match err.get("statement_index") {
        None => {}
        Some(v) if v.is_u64() => {}
        Some(other) => return Err(format!("error.statement_index is not an index: {other}")),
    }
    Ok(())
}

/// Every result of a DDL request: `rows: []` and a non-empty `message`.
pub fn assert_ddl(body: &Value, context: &str) {
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert!(
        !results.is_empty(),
        "{}\nno results: {}",
        short(context),
        pretty(body)
    );
    for result in &results {
        assert_eq!(
            result["rows"],
            json!([]),
            "{}\nDDL returns no rows: {}",
            short(context),
            pretty(body)
        );
        assert!(
            result["message"]
                .as_str()
                .is_some_and(|m| !m.trim().is_empty()),
            "{}\nDDL returns a `message`: {}",
            short(context),
            pretty(body)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------------------------

/// Result `i` of a success body.
pub fn result(body: &Value, i: usize) -> &Value {
    &body["results"][i]
}

/// The rows of result `i` (JSON objects).
pub fn rows_of(body: &Value, i: usize) -> Vec<Value> {
    result(body, i)["rows"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("results[{i}].rows missing: {}", pretty(body)))
}

/// The rows of the last result.
pub fn last_rows(body: &Value) -> Vec<Value> {
    let n = body["results"].as_array().map(Vec::len).unwrap_or(0);
    assert!(n > 0, "no results: {}", pretty(body));
    rows_of(body, n - 1)
}

/// The column names of result `i`.
pub fn column_names(body: &Value, i: usize) -> Vec<String> {
    result(body, i)["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("results[{i}].columns missing: {}", pretty(body)))
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `affected_rows` of the last result.
pub fn affected_of(body: &Value, context: &str) -> u64 {
    let n = body["results"].as_array().map(Vec::len).unwrap_or(0);
    assert!(n > 0, "{}\nno results: {}", short(context), pretty(body));
    result(body, n - 1)["affected_rows"]
        .as_u64()
        .unwrap_or_else(|| {
            panic!(
                "{}\nDML results carry `affected_rows`: {}",
                short(context),
                pretty(body)
            )
        })
}

/// The value of a one-row, one-column result.
pub fn single(rows: &[Value], context: &str) -> Value {
    assert_eq!(
        rows.len(),
        1,
        "{}\nexpected one row: {}",
        short(context),
        pretty(&json!(rows))
    );
    let obj = rows[0].as_object().expect("rows are objects");
    assert_eq!(
        obj.len(),
        1,
        "{}\nexpected one column: {}",
        short(context),
        pretty(&json!(rows))
    );
    obj.values().next().cloned().unwrap()
}

/// The values of column `name`.
pub fn column(rows: &[Value], name: &str) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            r.get(name)
                .cloned()
                .unwrap_or_else(|| panic!("row without column {name:?}: {r}"))
        })
        .collect()
}

/// The string values of column `name`.
pub fn strings(rows: &[Value], name: &str) -> Vec<String> {
    column(rows, name)
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{name} = {v} is not a string"))
                .to_string()
        })
        .collect()
}

/// The integer values of column `id`.
pub fn ids(rows: &[Value]) -> Vec<i64> {
    column(rows, "id")
        .iter()
        .map(|v| {
            v.as_i64()
                .unwrap_or_else(|| panic!("id {v} is not an integer"))
        })
        .collect()
}

/// The row whose `key` column holds the string `value`.
pub fn find_row<'a>(rows: &'a [Value], key: &str, value: &str) -> &'a Value {
    rows.iter()
        .find(|r| r[key].as_str() == Some(value))
        .unwrap_or_else(|| panic!("no row with {key} = {value:?} in {}", pretty(&json!(rows))))
}

/// A boolean cell; `YES`/`NO` text is accepted too (information_schema style).
pub fn flag(v: &Value, context: &str) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) if s.eq_ignore_ascii_case("yes") || s.eq_ignore_ascii_case("true") => true,
        Value::String(s) if s.eq_ignore_ascii_case("no") || s.eq_ignore_ascii_case("false") => {
            false
        }
        other => panic!("{context}: expected a boolean, got {other}"),
    }
}

/// An RFC 3339 UTC timestamp ending in `Z`.
pub fn parse_utc(v: &Value, context: &str) -> DateTime<Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{context}: expected an RFC 3339 string, got {v}"));
    assert!(
        s.contains('T') && s.ends_with('Z'),
        "{context}: {s:?} is not an RFC 3339 UTC timestamp ending in Z"
    );
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{context}: {s:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// An RFC 3339 UTC timestamp with exactly six fractional digits (`...T10:00:00.000123Z`).
pub fn ts_micros(v: &Value, context: &str) -> DateTime<Utc> {
    let t = parse_utc(v, context);
    let s = v.as_str().unwrap_or_default();
    let frac = s.rsplit_once('.').map(|(_, f)| f).unwrap_or("");
    assert!(
        frac.len() == 7 && frac[..6].bytes().all(|b| b.is_ascii_digit()),
        "{context}: {s:?} must carry microseconds (six fractional digits) and end in Z"
    );
    t
}

/// A SQL string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The first `max` bytes of `s` (on a char boundary).
pub fn head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` shortened for assertion messages.
pub fn short(s: &str) -> String {
    if s.len() <= 400 {
        s.to_string()
    } else {
        format!("{}... ({} bytes)", head(s, 400), s.len())
    }
}

/// Pretty JSON, shortened for assertion messages.
pub fn pretty(v: &Value) -> String {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    if s.len() <= 6000 {
        s
    } else {
        format!("{}... ({} bytes)", head(&s, 6000), s.len())
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        Value::String(format!(
            "<not JSON> {}",
            head(&String::from_utf8_lossy(bytes), 2000)
        ))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_http_response(raw: &[u8]) -> Resp {
    let end = find(raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete HTTP response head: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(2000)])
        )
    });
    let head_text = String::from_utf8_lossy(&raw[..end]).to_string();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head_text:?}"));
    let mut body = raw[end + 4..].to_vec();
    let headers: Vec<String> = head_text
        .lines()
        .skip(1)
        .map(|l| l.to_ascii_lowercase())
        .collect();
    let chunked = headers
        .iter()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let length = headers.iter().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = length {
        body.truncate(len);
    }
    (status, parse_body(&body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..eol]).to_string();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 {
            break;
        }
        if data.len() < size {
            out.extend_from_slice(data);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
    out
}

// =============================================================================================
// Cold tier: an S3 server (moto), credential files, Parquet checks with pyarrow, flush jobs
// =============================================================================================

/// The access key id [`write_credentials`] writes (moto accepts any).
pub const S3_ACCESS_KEY_ID: &str = "testing-key-id";
/// The secret key [`write_credentials`] writes: it must never show up in a response or a log.
pub const S3_SECRET_ACCESS_KEY: &str = "testing-secret-key-do-not-log";
/// The region [`write_credentials`] writes.
pub const S3_REGION: &str = "us-east-1";

/// What to do when the Python tools of the cold-tier tests are missing.
pub const COLD_TOOLS_HINT: &str = "the cold-tier tests need moto_server, pyarrow and boto3: \
     run `python3 -m pip install 'moto[server]' pyarrow boto3` (.ci/run does this)";

const MOTO_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
const JOB_POLL: Duration = Duration::from_millis(50);

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A `moto_server` process: an in-memory S3 on `127.0.0.1:<port>`. Its state (buckets,
/// objects) lives only in the process, so [`restart`](Self::restart) loses it. Dropping it
/// kills the process.
pub struct S3Server {
    port: u16,
    child: Option<Child>,
    logs: tempfile::TempDir,
    starts: usize,
    http: reqwest::Client,
}

impl S3Server {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it answers HTTP.
    /// Panics (never skips) when moto is not installed.
    pub async fn start() -> S3Server {
        let logs = tempfile::Builder::new()
            .prefix("kalamdb-it-moto-")
            .tempdir()
            .expect("creating a temporary directory for moto's log");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("building the HTTP client");
        let mut server = S3Server {
            port: 0,
            child: None,
            logs,
            starts: 0,
            http,
        };
        // Another process may take the port between the probe and moto's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn().await {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start on any of 5 ports: {last}\n{COLD_TOOLS_HINT}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything moto logged so far (all of its runs).
    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|n| read_lossy(&self.logs.path().join(format!("moto-{n}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let n = self.starts;
        self.starts += 1;
        let log_path = self.logs.path().join(format!("moto-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("creating moto's log");
        let log_err = log.try_clone().expect("cloning moto's log handle");
        let mut cmd = Command::new("moto_server");
        cmd.arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`moto_server` is not on PATH. {COLD_TOOLS_HINT}")
            }
            Err(e) => panic!("spawning moto_server: {e}. {COLD_TOOLS_HINT}"),
        };
        let deadline = Instant::now() + MOTO_STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = read_lossy(&log_path);
                // A pyenv shim left over from another Python, or a broken install.
                if status.code() == Some(127)
                    || log.contains("command not found")
                    || log.contains("No module named")
                {
                    panic!(
                        "moto_server cannot run ({status}):\n{}\n{COLD_TOOLS_HINT}",
                        tail(&log, 4000)
                    );
                }
                return Err(format!(
                    "moto_server exited ({status}) on port {}:\n{}",
                    self.port,
                    tail(&log, 4000)
                ));
            }
            // GET / is ListBuckets: only moto (not whatever else took the port) answers that.
            if let Ok(resp) = self
                .http
                .get(self.endpoint())
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                let body = resp.text().await.unwrap_or_default();
                if body.contains("ListAllMyBucketsResult") {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(format!(
                    "moto_server did not answer on port {} within {MOTO_STARTUP_TIMEOUT:?}:\n{}",
                    self.port,
                    tail(&read_lossy(&log_path), 4000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a bucket (moto takes an unsigned `PUT /<bucket>`).
    pub async fn create_bucket(&self, name: &str) {
        let url = format!("{}/{name}", self.endpoint());
        let resp = self
            .http
            .put(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "creating bucket {name} on moto: {body}");
    }

    /// Kills moto (the S3 endpoint goes down; its state is lost).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops moto if it runs and starts it again on the same port, empty: create the buckets
    /// again.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last = String::new();
        // The old socket may linger for a moment.
        for _ in 0..20 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("moto_server did not restart on port {}: {last}", self.port);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- moto_server log (port {}) ---\n{}\n--- end of moto_server log ---",
                self.port,
                tail(&self.log(), 8000)
            );
        }
    }
}

impl S3Server {
    /// Every object under `prefix` of `bucket` as (key, size), whatever its name: an
    /// unsigned `ListObjectsV2` straight to moto (which takes unsigned requests). Panics when
    /// the listing is truncated (more than 1,000 objects: the tests write far fewer).
    pub async fn list_objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let url = format!(
            "{}/{bucket}?list-type=2&max-keys=1000&prefix={}",
            self.endpoint(),
            query_escape(prefix)
        );
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "listing {bucket}/{prefix} on moto: {body}");
        assert!(
            !body.contains("<IsTruncated>true</IsTruncated>"),
            "listing {bucket}/{prefix}: more than 1000 objects"
        );
        body.split("<Contents>")
            .skip(1)
            .map(|item| {
                let key = xml_text(item, "Key")
                    .unwrap_or_else(|| panic!("an S3 listing entry without a Key: {item}"));
                let size = xml_text(item, "Size")
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("an S3 listing entry without a Size: {item}"));
                (key, size)
            })
            .collect()
    }
}

/// The text of the first `<tag>...</tag>` in `xml`, with the five XML entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A TCP forwarder on `127.0.0.1:<port>` to another local port, that can be cut (the port
/// refuses connections and every forwarded connection is closed) and resumed on the same
/// port: an S3 endpoint that goes away and comes back with its state, which stopping moto
/// cannot give (moto keeps its objects only in memory).
pub struct TcpProxy {
    port: u16,
    target: u16,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding a free port to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> TcpProxy {
        let mut proxy = TcpProxy {
            port: free_port(),
            target,
            task: None,
        };
        proxy.resume().await;
        proxy
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listening socket and every forwarded connection.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (waiting for the old socket to go, if need be).
    pub async fn resume(&mut self) {
        if self.task.is_some() {
            return;
        }
        let mut last = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => {
                    self.task = Some(tokio::spawn(forward(listener, self.target)));
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the TCP proxy could not listen on port {} again: {last:?}",
            self.port
        );
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections and forwards each to `127.0.0.1:<target>`; aborting the task drops the
/// listener and (with the `JoinSet`) every connection.
async fn forward(listener: tokio::net::TcpListener, target: u16) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((mut inbound, _)) => {
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Writes the credential set `<dir>/<name>/{access_key_id, secret_access_key, region,
/// endpoint}` with the test keys of this module.
pub fn write_credentials(dir: &Path, name: &str, endpoint: &str) {
    let set = dir.join(name);
    std::fs::create_dir_all(&set).unwrap_or_else(|e| panic!("creating {}: {e}", set.display()));
    for (file, value) in [
        ("access_key_id", S3_ACCESS_KEY_ID),
        ("secret_access_key", S3_SECRET_ACCESS_KEY),
        ("region", S3_REGION),
        ("endpoint", endpoint),
    ] {
        std::fs::write(set.join(file), value)
            .unwrap_or_else(|e| panic!("writing {}/{file}: {e}", set.display()));
    }
}

/// Runs `python3 tests/it/tools/parquet_check.py <args>` (pyarrow reads the files) and returns
/// its JSON: `{"files": [{"path", "size", "rows", "columns", "types", "codecs", "data"}]}`.
pub fn parquet_check(args: &[&str]) -> Value {
    // Where cargo runs the tests (a binary in a shared CARGO_TARGET_DIR may have been
    // compiled in another checkout).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let script = manifest_dir.join("tests/it/tools/parquet_check.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
        .env("AWS_DEFAULT_REGION", S3_REGION)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running python3 {}: {e}. {COLD_TOOLS_HINT}",
                script.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        let hint = if stderr.contains("No module named") {
            COLD_TOOLS_HINT
        } else {
            ""
        };
        panic!(
            "parquet_check.py {} failed ({}):\n{}\n{hint}",
            args.join(" "),
            out.status,
            tail(&stderr, 8000)
        );
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "parquet_check.py {} printed no JSON ({e}): {}\nstderr: {}",
            args.join(" "),
            head(&stdout, 2000),
            tail(&stderr, 4000)
        )
    })
}

/// The row of `job_id` in `system.jobs` (admin token) once its status is no longer
/// `running`; polls every 50 ms for at most 60 s.
pub async fn wait_job(node: &TestNode, job_id: &str) -> Value {
    wait_job_within(node, job_id, JOB_TIMEOUT).await
}

/// [`wait_job`] for at most `timeout`.
pub async fn wait_job_within(node: &TestNode, job_id: &str, timeout: Duration) -> Value {
    let admin = admin_token();
    let sql = format!("SELECT * FROM system.jobs WHERE job_id = {}", lit(job_id));
    let deadline = Instant::now() + timeout;
    loop {
        let rows = node.query(&admin, &sql).await;
        assert!(
            rows.len() <= 1,
            "job ids are unique in system.jobs: {}",
            pretty(&json!(rows))
        );
        if let Some(row) = rows.first() {
            if row["status"] != "running" {
                return row.clone();
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "job {job_id} still not finished after {timeout:?}; its row: {}",
                pretty(&json!(rows))
            );
        }
        tokio::time::sleep(JOB_POLL).await;
    }
}

/// `FLUSH TABLE <table>` with an admin token: one result with one row whose `job_id` starts
/// with `flush-`. Returns the job id without waiting for the job.
pub async fn start_flush(node: &TestNode, table: &str) -> String {
    let sql = format!("FLUSH TABLE {table}");
    let body = node.admin(&sql).await;
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        results.len(),
        1,
        "{sql} returns one result: {}",
        pretty(&body)
    );
    let rows = rows_of(&body, 0);
    assert_eq!(rows.len(), 1, "{sql} returns one row: {}", pretty(&body));
    let job_id = rows[0]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sql}: no string job_id: {}", pretty(&body)))
        .to_string();
    assert!(
        job_id.starts_with("flush-"),
        "{sql}: the job id {job_id:?} starts with `flush-`"
    );
    job_id
}

/// `FLUSH TABLE <table>`, then [`wait_job`]; the job must complete. Returns its row.
pub async fn flush(node: &TestNode, table: &str) -> Value {
    let job_id = start_flush(node, table).await;
    let row = wait_job(node, &job_id).await;
    assert_eq!(
        row["status"],
        "completed",
        "FLUSH TABLE {table}: job {job_id} did not complete: {}",
        pretty(&row)
    );
    row
}

impl TestNode {
    /// Waits for the process to exit by itself (e.g. a failpoint aborted it); panics, after
    /// killing it, when it is still running after `timeout`.
    pub async fn wait_exit(mut self, timeout: Duration) -> NodeDir {
        let mut child = self.child.take().expect("the node is running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(_status)) => {}
            Ok(Err(e)) => panic!("waiting for kalamdb to exit: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "kalamdb did not exit by itself within {timeout:?}\n--- stderr ---\n{}",
                    tail(&self.stderr(), 16_000)
                );
            }
        }
        self.finish_stdout().await;
        self.dir.clone()
    }

    /// `POST /api/sql` that may get no answer (the node may die meanwhile): `None` on a
    /// transport error or after `timeout`.
    pub async fn try_sql(&self, token: &str, sql: &str, timeout: Duration) -> Option<Resp> {
        tokio::time::timeout(timeout, self.try_sql_once(token, sql))
            .await
            .ok()
            .flatten()
    }

    async fn try_sql_once(&self, token: &str, sql: &str) -> Option<Resp> {
        let resp = self
            .http
            .post(format!("{}/api/sql", self.url))
            .bearer_auth(token)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.ok()?;
        Some((status, parse_body(&bytes)))
    }
}

// =============================================================================================
// WebSocket live queries (API.md §5): raw tokio-tungstenite, frames parsed to `serde_json::Value`
// =============================================================================================

/// How long the WebSocket helpers wait for one expected message (or the upgrade).
pub const WS_TIMEOUT: Duration = Duration::from_secs(15);

/// A client WebSocket over a plain TCP socket.
pub type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// How a `/ws` connection authenticates (API.md §2).
#[derive(Debug, Clone)]
pub enum WsAuth {
    /// `Authorization: Bearer <token>` on the upgrade request.
    Header(String),
    /// `GET /ws?token=<token>` (a JWT is URL-safe as it is).
    Query(String),
    /// Nothing on the upgrade; the first text message is `{"type":"auth","token":...}`.
    FirstMessage(String),
    /// No credentials at all: the node waits 5 s for an `auth` message.
    Nothing,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct WsClose {
    /// The code of the node's close frame; `None` when the connection ended without one.
    pub code: Option<u16>,
    /// The reason of the close frame (empty without one).
    pub reason: String,
    /// What ended the connection when there was no close frame (EOF, reset, ...).
    pub error: Option<String>,
}

#[derive(Debug)]
enum WsEvent {
    /// A text frame (parsed JSON; a `"<not JSON> ..."` string otherwise) and when it was read.
    Message(Instant, Value),
    Closed(WsClose),
}

static WS_CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// `{"query_id", "sql", "options"?}` for a `subscribe` message; `options` is left out when
/// it is `null`.
pub fn subscription(query_id: &str, sql: &str, options: Value) -> Value {
    let mut sub = json!({"query_id": query_id, "sql": sql});
    if !options.is_null() {
        sub["options"] = options;
    }
    sub
}

/// The shape of a server message of API.md §5 (`client/src/live_wire.rs`).
pub fn check_ws_shape(v: &Value) -> Result<(), String> {
    fn string(v: &Value, key: &str) -> Result<(), String> {
        match v.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            other => Err(format!("`{key}` is not a non-empty string: {other:?}")),
        }
    }
    fn rows(v: &Value, key: &str) -> Result<usize, String> {
        let rows = v
            .get(key)
            .and_then(Value::as_array)
            .ok_or(format!("`{key}` is not an array"))?;
        if let Some(r) = rows.iter().find(|r| !r.is_object()) {
            return Err(format!("`{key}` holds a non-object row: {r}"));
        }
        Ok(rows.len())
    }
    fn seq(v: &Value) -> Result<(), String> {
        match v.get("seq") {
            Some(s) if s.is_u64() => Ok(()),
            other => Err(format!("`seq` is not an unsigned integer: {other:?}")),
        }
    }
    let obj = v.as_object().ok_or("the message is not a JSON object")?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("`type` is not a string")?;
    match ty {
        "subscribed" => {
            string(v, "query_id")?;
            string(v, "live_id")
        }
        "initial_data" => {
            string(v, "query_id")?;
            string(v, "live_id")?;
            rows(v, "rows")?;
            seq(v)
        }
        "change" | "change_group" => {
            if ty == "change" {
                string(v, "query_id")?;
                string(v, "live_id")?;
            } else {
                // docs/live-queries.md: the subscriptions of option `group`, by query_id.
                let list = v
                    .get("query_ids")
                    .and_then(Value::as_array)
                    .ok_or("`query_ids` is not an array")?;
                if list.is_empty() || list.iter().any(|s| s.as_str().is_none_or(str::is_empty)) {
                    return Err("`query_ids` is not a list of non-empty strings".into());
                }
            }
            seq(v)?;
            let n = rows(v, "rows")?;
            if n == 0 {
                return Err("a change carries at least one row".into());
            }
            match v["change_type"].as_str() {
                Some("UPDATE") => {
                    let old = rows(v, "old_values")?;
                    if old != n {
                        return Err(format!("{n} rows but {old} old_values"));
                    }
                    Ok(())
                }
                Some("INSERT") | Some("DELETE") => match obj.get("old_values") {
                    None | Some(Value::Null) => Ok(()),
                    Some(_) => Err("old_values on a change that is not an UPDATE".into()),
                },
                other => Err(format!(
                    "change_type {other:?} is not INSERT, UPDATE or DELETE"
                )),
            }
        }
        "pong" => Ok(()),
        "error" => {
            let code = obj
                .get("code")
                .and_then(Value::as_str)
                .ok_or("error.code is not a string")?;
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(format!("error code {code:?} is not UPPER_SNAKE"));
            }
            string(v, "message")?;
            match obj.get("query_id") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(other) => return Err(format!("query_id is not a string: {other}")),
            }
            match obj.get("details") {
                None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
                Some(other) => Err(format!("details is not a string: {other}")),
            }
        }
        other => Err(format!("unknown message type {other:?}")),
    }
}

/// A client connection to `GET /ws`. A background task reads the socket all the time (so
/// that tungstenite answers the node's pings) and queues every text frame, parsed, for the
/// `recv`/`expect_*` methods; [`pause_reading`](Self::pause_reading) stops it touching the
/// socket (a slow or dead peer). Dropping the client drops the TCP connection without a
/// close frame.
pub struct WsClient {
    name: String,
    sink: futures::stream::SplitSink<WsStream, tokio_tungstenite::tungstenite::Message>,
    events: tokio::sync::mpsc::UnboundedReceiver<WsEvent>,
    reading: tokio::sync::watch::Sender<bool>,
    reader: JoinHandle<()>,
    closed: Option<WsClose>,
}

impl TestNode {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").expect("http:// url")
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    /// Opens `/ws`; `Err` when the upgrade is refused (`tungstenite::Error::Http` carries the
    /// HTTP response) or the connection fails.
    pub async fn ws_try_connect(
        &self,
        auth: WsAuth,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        self.ws_try_connect_with(auth, None).await
    }

    /// [`ws_try_connect`](Self::ws_try_connect) with the client socket's `SO_RCVBUF` set to
    /// `recv_buffer` bytes before connecting (a small one makes a client that stops reading
    /// fill the node's queue quickly).
    pub async fn ws_try_connect_with(
        &self,
        auth: WsAuth,
        recv_buffer: Option<u32>,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;

        let url = match &auth {
            WsAuth::Query(t) => format!("{}?token={t}", self.ws_url()),
            _ => self.ws_url(),
        };
        let mut request = url.as_str().into_client_request()?;
        if let WsAuth::Header(t) = &auth {
            let value = HeaderValue::from_str(&format!("Bearer {t}"))
                .unwrap_or_else(|e| panic!("{t:?} does not fit in a header: {e}"));
            request.headers_mut().insert("authorization", value);
        }
        let addr: std::net::SocketAddr = self.addr().parse().expect("127.0.0.1:PORT");
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream =
            match tokio::time::timeout(WS_TIMEOUT, tokio_tungstenite::client_async(request, tcp))
                .await
            {
                Ok(result) => result?.0,
                Err(_) => {
                    panic!("the WebSocket upgrade of {url} got no answer within {WS_TIMEOUT:?}")
                }
            };
        let n = WS_CLIENTS.fetch_add(1, Ordering::SeqCst);
        let who = match &auth {
            WsAuth::Header(_) => "header",
            WsAuth::Query(_) => "query",
            WsAuth::FirstMessage(_) => "first-message",
            WsAuth::Nothing => "no-auth",
        };
        let mut client = WsClient::start(stream, format!("ws#{n} ({who} auth)"));
        if let WsAuth::FirstMessage(t) = &auth {
            client.send_json(&json!({"type": "auth", "token": t})).await;
        }
        Ok(client)
    }

    /// Opens `/ws` with `auth`; panics when that fails.
    pub async fn ws_connect(&self, auth: WsAuth) -> WsClient {
        let what = format!("{auth:?}");
        match self.ws_try_connect(auth).await {
            Ok(client) => client,
            Err(e) => panic!("opening {} with {}: {e}", self.ws_url(), short(&what)),
        }
    }

    /// Opens `/ws` with `Authorization: Bearer <token>`; panics when that fails.
    pub async fn ws(&self, token: &str) -> WsClient {
        self.ws_connect(WsAuth::Header(token.to_string())).await
    }

    /// The rows of `system.live_queries` that `token` sees, ordered by `live_id`.
    pub async fn live_queries(&self, token: &str) -> Vec<Value> {
        self.query(token, "SELECT * FROM system.live_queries ORDER BY live_id")
            .await
    }

    /// Polls [`live_queries`](Self::live_queries) every 50 ms until `done(rows)` holds and
    /// returns those rows; panics with `what` and the last rows after `timeout`.
    pub async fn wait_live_queries(
        &self,
        token: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.live_queries(token).await;
            if done(&rows) {
                return rows;
            }
            if Instant::now() >= deadline {
                panic!(
                    "system.live_queries: {what} within {timeout:?}; it holds {}",
                    pretty(&json!(rows))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads `source` until it ends, forwarding text frames and the close to `tx`; while
/// `reading` is false it does not touch the socket at all.
async fn ws_read_frames(
    mut source: futures::stream::SplitStream<WsStream>,
    tx: tokio::sync::mpsc::UnboundedSender<WsEvent>,
    mut reading: tokio::sync::watch::Receiver<bool>,
) {
    use tokio_tungstenite::tungstenite::Message;
    let mut close_sent = false;
    loop {
        let on = *reading.borrow_and_update();
        if !on {
            if reading.changed().await.is_err() {
                return;
            }
            continue;
        }
        let next = tokio::select! {
            next = source.next() => next,
            changed = reading.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let value = serde_json::from_str::<Value>(text.as_str()).unwrap_or_else(|_| {
                    Value::String(format!("<not JSON> {}", head(text.as_str(), 2000)))
                });
                let _ = tx.send(WsEvent::Message(Instant::now(), value));
            }
            Some(Ok(Message::Binary(data))) => {
                let value = Value::String(format!("<binary frame of {} bytes>", data.len()));
                let _ = tx.send(WsEvent::Message(Instant::now(), value));
            }
            Some(Ok(Message::Close(frame))) => {
                // Reported at once; reading on lets tungstenite answer the close.
                if !close_sent {
                    close_sent = true;
                    let _ = tx.send(WsEvent::Closed(WsClose {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame
                            .as_ref()
                            .map(|f| f.reason.as_str().to_string())
                            .unwrap_or_default(),
                        error: None,
                    }));
                }
            }
            // Pings are answered by tungstenite on the next read or write.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !close_sent {
                    let _ = tx.send(WsEvent::Closed(WsClose {
                        code: None,
                        reason: String::new(),
                        error: Some(e.to_string()),
                    }));
                }
                return;
            }
            None => {
                if !close_sent {
                    let _ = tx.send(WsEvent::Closed(WsClose {
                        code: None,
                        reason: String::new(),
                        error: Some("the connection ended without a close frame".into()),
                    }));
                }
                return;
            }
        }
    }
}

impl WsClient {
    fn start(stream: WsStream, name: String) -> WsClient {
        let (sink, source) = stream.split();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (reading, reading_rx) = tokio::sync::watch::channel(true);
        let reader = tokio::spawn(ws_read_frames(source, tx, reading_rx));
        WsClient {
            name,
            sink,
            events,
            reading,
            reader,
            closed: None,
        }
    }

    /// A name for assertion messages (`ws#3 (header auth)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one text frame.
    pub async fn try_send_text(
        &mut self,
        text: &str,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.sink
            .send(tokio_tungstenite::tungstenite::Message::text(
                text.to_string(),
            ))
            .await
    }

    /// Sends one text frame; panics when that fails.
    pub async fn send_text(&mut self, text: &str) {
        if let Err(e) = self.try_send_text(text).await {
            panic!("{}: sending {}: {e}", self.name, short(text));
        }
    }

    /// Sends one binary frame; panics when that fails.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        if let Err(e) = self
            .sink
            .send(tokio_tungstenite::tungstenite::Message::binary(data))
            .await
        {
            panic!("{}: sending a binary frame: {e}", self.name);
        }
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await
    }

    /// `{"type":"subscribe","subscriptions":[{query_id, sql, options}]}` (`options` left out
    /// when `null`).
    pub async fn subscribe(&mut self, query_id: &str, sql: &str, options: Value) {
        self.subscribe_many(vec![subscription(query_id, sql, options)])
            .await
    }

    /// One `subscribe` message with several [`subscription`]s.
    pub async fn subscribe_many(&mut self, subscriptions: Vec<Value>) {
        self.send_json(&json!({"type": "subscribe", "subscriptions": subscriptions}))
            .await
    }

    pub async fn unsubscribe(&mut self, query_id: &str) {
        self.send_json(&json!({"type": "unsubscribe", "query_id": query_id}))
            .await
    }

    /// Sends `{"type":"ping"}` and returns every message that arrived before the `pong`: once
    /// it returns, the node has handled everything sent before.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send_json(&json!({"type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let msg = self.recv().await;
            if msg["type"] == "pong" {
                return before;
            }
            before.push(msg);
        }
    }

    /// Stops reading the socket: no frame is read and no ping answered until
    /// [`resume_reading`](Self::resume_reading).
    pub fn pause_reading(&self) {
        let _ = self.reading.send(false);
    }

    pub fn resume_reading(&self) {
        let _ = self.reading.send(true);
    }

    async fn next_event(&mut self, timeout: Duration) -> Option<WsEvent> {
        if let Some(close) = &self.closed {
            return Some(WsEvent::Closed(close.clone()));
        }
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Err(_) => None,
            Ok(None) => {
                let close = WsClose {
                    code: None,
                    reason: String::new(),
                    error: Some("the reader task ended".into()),
                };
                self.closed = Some(close.clone());
                Some(WsEvent::Closed(close))
            }
            Ok(Some(WsEvent::Closed(close))) => {
                self.closed = Some(close.clone());
                Some(WsEvent::Closed(close))
            }
            Ok(Some(WsEvent::Message(at, v))) => {
                if let Err(problem) = check_ws_shape(&v) {
                    panic!(
                        "{}: the message does not match API.md §5 ({problem}): {}",
                        self.name,
                        pretty(&v)
                    );
                }
                Some(WsEvent::Message(at, v))
            }
        }
    }

    /// The next message and when it was read, or `None` when none comes within `timeout`.
    /// Panics when the connection is closed.
    pub async fn recv_timed_within(&mut self, timeout: Duration) -> Option<(Instant, Value)> {
        match self.next_event(timeout).await {
            None => None,
            Some(WsEvent::Message(at, v)) => Some((at, v)),
            Some(WsEvent::Closed(close)) => {
                panic!(
                    "{}: expected a message, the connection closed: {close:?}",
                    self.name
                )
            }
        }
    }

    /// The next message, or `None` when none comes within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        self.recv_timed_within(timeout).await.map(|(_, v)| v)
    }

    /// The next message; panics when none comes within [`WS_TIMEOUT`].
    pub async fn recv(&mut self) -> Value {
        match self.recv_within(WS_TIMEOUT).await {
            Some(v) => v,
            None => panic!("{}: no message within {WS_TIMEOUT:?}", self.name),
        }
    }

    /// The next message, which must have `type` = `ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let msg = self.recv().await;
        assert_eq!(
            msg["type"],
            ty,
            "{}: expected a `{ty}` message, got {}",
            self.name,
            pretty(&msg)
        );
        msg
    }

    /// The next message must be `subscribed` for `query_id`; returns its `live_id`.
    pub async fn expect_subscribed(&mut self, query_id: &str) -> String {
        let msg = self.recv().await;
        assert!(
            msg["type"] == "subscribed" && msg["query_id"] == query_id,
            "{}: expected `subscribed` for {query_id:?}, got {}",
            self.name,
            pretty(&msg)
        );
        msg["live_id"].as_str().unwrap_or_default().to_string()
    }

    /// The next message must be `initial_data` for `query_id`.
    pub async fn expect_initial_data(&mut self, query_id: &str) -> Value {
        let msg = self.recv().await;
        assert!(
            msg["type"] == "initial_data" && msg["query_id"] == query_id,
            "{}: expected `initial_data` for {query_id:?}, got {}",
            self.name,
            pretty(&msg)
        );
        msg
    }

    /// The next message must be a `change` of `change_type` for `query_id`.
    pub async fn expect_change(&mut self, query_id: &str, change_type: &str) -> Value {
        let msg = self.recv().await;
        assert!(
            msg["type"] == "change"
                && msg["query_id"] == query_id
                && msg["change_type"] == change_type,
            "{}: expected a {change_type} change for {query_id:?}, got {}",
            self.name,
            pretty(&msg)
        );
        msg
    }

    /// The next message must be an `error` with `code`, for `query_id` (`None`: one without
    /// a query id). Returns it.
    pub async fn expect_error(&mut self, query_id: Option<&str>, code: &str) -> Value {
        let msg = self.recv().await;
        assert!(
            msg["type"] == "error" && msg["code"] == code,
            "{}: expected an error {code} (query_id {query_id:?}), got {}",
            self.name,
            pretty(&msg)
        );
        match query_id {
            Some(q) => assert_eq!(
                msg["query_id"],
                q,
                "{}: the {code} error names its query_id: {}",
                self.name,
                pretty(&msg)
            ),
            None => assert!(
                msg.get("query_id").is_none_or(Value::is_null),
                "{}: the {code} error belongs to no subscription: {}",
                self.name,
                pretty(&msg)
            ),
        }
        msg
    }

    /// Reads until the connection ends (at most `timeout`); returns the messages read before
    /// and how it ended.
    pub async fn expect_close(&mut self, timeout: Duration) -> (Vec<Value>, WsClose) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(WsEvent::Message(_, v)) => before.push(v),
                Some(WsEvent::Closed(close)) => return (before, close),
                None => {
                    let newest: Vec<&Value> = before.iter().rev().take(5).collect();
                    panic!(
                        "{}: the connection is still open after {timeout:?}; {} messages read \
                         meanwhile, the newest: {}",
                        self.name,
                        before.len(),
                        pretty(&json!(newest))
                    )
                }
            }
        }
    }

    /// Whether the connection has ended (as far as already-read frames tell).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// A clean close: a close frame (1000), then the node's answer (at most 5 s).
    pub async fn close(mut self) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::Message;
        if self.closed.is_some() {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        if self.sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(WsEvent::Message(..))) => continue,
                Ok(Some(WsEvent::Closed(_))) | Ok(None) | Err(_) => return,
            }
        }
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Every entry under `dir` that is not a directory (files, links), recursively, sorted;
/// none when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("reading {}: {e}", d.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
            let is_dir = entry
                .file_type()
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()))
                .is_dir();
            if is_dir {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}
