//! The HTTP surface of API.md: `POST /api/sql`, `GET /ws`, `/healthz`, `/readyz`, `/metrics`, with CORS,
//! the body-size limit, request logs (method, path, status, latency: never headers, query
//! strings or bodies, which may carry tokens) and per-route metrics.

mod serve;
mod sql;
mod write_timeout;
mod ws;

pub use serve::{serve, Timeouts};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kalam_client::wire::{ApiError, SqlResponse};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::KalamError;
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/sql", post(sql::handle))
        .route("/ws", get(ws::handle))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // `/api/sql` enforces `max_request_bytes` itself, with the JSON error shape.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(node.clone(), observe))
        .layer(cors(&node.config.cors_allowed_origins))
        .with_state(node)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

/// Who made a request, attached to its response by the handler so the request log names the
/// user (never the token).
#[derive(Debug, Clone)]
pub struct RequestUser(pub String);

/// Requests at least this slow are logged at `info`.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// Logs and measures every request by its route (never its query string or headers).
async fn observe(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let user = response
        .extensions()
        .get::<RequestUser>()
        .map(|u| u.0.as_str())
        .unwrap_or("-");
    node.metrics
        .http_requests
        .with_label_values(&[&route, status.as_str()])
        .inc();
    node.metrics
        .http_seconds
        .with_label_values(&[&route])
        .observe(elapsed.as_secs_f64());
    if route != "/healthz" && route != "/readyz" && route != "/metrics" {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let status = status.as_u16();
        // Every request at `debug`, as PostgreSQL logs no statement by default: at `info` a
        // log line per request was a write to stderr ahead of every answer (8% of an INSERT's
        // round trip), and rates and latencies are in /metrics.
        if (500..600).contains(&status) {
            tracing::warn!(%method, route, user, status, latency_ms, "request failed");
        } else if elapsed >= SLOW_REQUEST {
            tracing::info!(%method, route, user, status, latency_ms, "slow request");
        } else {
            tracing::debug!(%method, route, user, status, latency_ms, "request");
        }
    }
    response
}

/// The JSON error response of API.md, with the HTTP status of its code.
pub fn error_response(error: ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(SqlResponse::Error { error })).into_response()
}

impl IntoResponse for KalamError {
    fn into_response(self) -> Response {
        error_response(self.to_api(None))
    }
}
