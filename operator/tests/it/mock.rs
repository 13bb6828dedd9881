//! A scripted fake of the Kubernetes API server.
//!
//! No Kubernetes API server runs where these tests run (issue 7 adds a real one to the e2e
//! suite), so the reconcilers get a `kube::Client` over a `tower_test` mock service. A test
//! lists the exchanges it expects, in order (method, path, answer); [`ApiServer::run`] serves
//! them while the reconcile runs and fails the test when the requests differ from the script,
//! in order, number or kind. It returns what was sent, so that tests can assert on the bodies
//! (status patches above all).
//!
//! Events (`events.k8s.io`) are answered on the side and collected: when an Event is
//! published is incidental to the flows, what it says is checked through
//! [`Transcript::event_reasons`].

use std::collections::VecDeque;
use std::future::Future;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::oneshot;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests go to the returned fake server.
pub fn api_server() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        kube::Client::new(service, "default"),
        ApiServer {
            handle: Some(handle),
        },
    )
}

/// The server side of [`api_server`]'s client.
pub struct ApiServer {
    handle: Option<Handle>,
}

type Reply = Box<dyn Fn(&Value) -> Value + Send>;

/// One expected request and its answer.
pub struct Exchange {
    method: Method,
    path: String,
    status: u16,
    reply: Reply,
}

impl Exchange {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Exchange {
            method,
            path: path.into(),
            status: 200,
            reply: Box::new(|_| Value::Null),
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// Answers with `status` and `body`.
    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.status = status;
        self.reply = Box::new(move |_| body.clone());
        self
    }

    /// Answers 200 with what `f` makes of the request body.
    pub fn reply_with(mut self, f: impl Fn(&Value) -> Value + Send + 'static) -> Self {
        self.status = 200;
        self.reply = Box::new(f);
        self
    }

    /// Answers 200 with the request body itself (what an apply of a new object returns).
    pub fn echo(self) -> Self {
        self.reply_with(|body| body.clone())
    }

    /// Answers 404 NotFound.
    pub fn not_found(self) -> Self {
        let body = status_body(404, "NotFound", "not found");
        self.reply(404, body)
    }
}

/// A `metav1.Status` failure body.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A request the fake server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// Everything the fake server saw during one [`ApiServer::run`].
#[derive(Debug, Default)]
pub struct Transcript {
    pub requests: Vec<Seen>,
    pub events: Vec<Value>,
}

impl Transcript {
    /// The request `method path`; panics when there was none.
    pub fn request(&self, method: &Method, path: &str) -> &Seen {
        self.requests
            .iter()
            .find(|s| &s.method == method && s.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} among {:?}", self.lines()))
    }

    /// The body of the request `method path`.
    pub fn body(&self, method: &Method, path: &str) -> &Value {
        &self.request(method, path).body
    }

    /// The bodies of the status patches, in order.
    pub fn status_patches(&self) -> Vec<&Value> {
        self.requests
            .iter()
            .filter(|s| s.method == Method::PATCH && s.path.ends_with("/status"))
            .map(|s| &s.body)
            .collect()
    }

    /// The only status patch; panics unless there was exactly one.
    pub fn status_patch(&self) -> &Value {
        let patches = self.status_patches();
        assert_eq!(patches.len(), 1, "status patches: {patches:?}");
        patches[0]
    }

    /// The reasons of the Events published.
    pub fn event_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    fn lines(&self) -> Vec<String> {
        self.requests
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

impl ApiServer {
    /// Runs `work` while serving `script`; panics when the requests differ from it.
    pub async fn run<T>(
        &mut self,
        script: Vec<Exchange>,
        work: impl Future<Output = T>,
    ) -> (T, Transcript) {
        let handle = self
            .handle
            .take()
            .expect("the fake API server is already running");
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(handle, script.into(), stopped));
        let out = work.await;
        let _ = stop.send(());
        let (handle, transcript, problems) = server.await.expect("the fake API server task");
        self.handle = Some(handle);
        assert!(
            problems.is_empty(),
            "the API exchanges differ from the script:\n  {}\nrequests seen:\n  {}",
            problems.join("\n  "),
            transcript.lines().join("\n  ")
        );
        (out, transcript)
    }
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

async fn serve(
    mut handle: Handle,
    mut script: VecDeque<Exchange>,
    mut stopped: oneshot::Receiver<()>,
) -> (Handle, Transcript, Vec<String>) {
    let mut transcript = Transcript::default();
    let mut problems = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            next = handle.next_request() => next,
            _ = &mut stopped => break,
        };
        let Some((request, send)) = next else { break };
        let (parts, body) = request.into_parts();
        let bytes = match body.collect_bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                problems.push(format!("reading a request body: {e}"));
                Vec::new()
            }
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body,
        };
        if seen.path.starts_with("/apis/events.k8s.io/") {
            send.send_response(respond(201, &seen.body));
            transcript.events.push(seen.body);
            continue;
        }
        match script.pop_front() {
            Some(expected) if expected.method == seen.method && expected.path == seen.path => {
                let reply = (expected.reply)(&seen.body);
                send.send_response(respond(expected.status, &reply));
            }
            Some(expected) => {
                problems.push(format!(
                    "expected {} {}, got {} {}",
                    expected.method, expected.path, seen.method, seen.path
                ));
                send.send_response(respond(
                    500,
                    &status_body(500, "InternalError", "unexpected request"),
                ));
            }
            None => {
                problems.push(format!("unexpected {} {}", seen.method, seen.path));
                send.send_response(respond(
                    500,
                    &status_body(500, "InternalError", "unexpected request"),
                ));
            }
        }
        transcript.requests.push(seen);
    }
    for missing in script {
        problems.push(format!(
            "never requested: {} {}",
            missing.method, missing.path
        ));
    }
    (handle, transcript, problems)
}
