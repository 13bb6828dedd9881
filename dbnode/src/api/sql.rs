//! `POST /api/sql`: authenticate, read the body within the limit, parse the statements, run
//! them in order, and answer with one result per statement or the first error (naming its
//! statement). A panic inside a statement becomes a 500 for that request, never a dead node.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{FutureExt, StreamExt};
use kalam_client::wire::{SqlRequest, SqlResponse, SqlSuccess};
use tracing::Instrument;

use super::{error_response, RequestUser};
use crate::auth::Principal;
use crate::error::KalamError;
use crate::ids::UserId;
use crate::node::Node;
use crate::sql::parser::parse_statements;
use crate::sql::prepared::{bind, may_hold_placeholders};
use crate::sql::provider::RequestContext;

pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, KalamError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        KalamError::Unauthorized("missing Authorization: Bearer <token> header".into())
    })?;
    let value = value
        .to_str()
        .map_err(|_| KalamError::Unauthorized("malformed Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(KalamError::Unauthorized(
            "Authorization must be 'Bearer <token>'".into(),
        )),
    }
}

pub async fn handle(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let mut user = None;
    let mut response = answer(&node, &headers, body, &mut user).await;
    if let Some(u) = user {
        response.extensions_mut().insert(RequestUser(u));
    }
    response
}

async fn answer(
    node: &Arc<Node>,
    headers: &HeaderMap,
    body: Body,
    user: &mut Option<String>,
) -> Response {
    let started = Instant::now();
    let principal = match bearer(headers).and_then(|t| node.auth.verify(t)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    *user = Some(principal.user_id.to_string());
    let limit = node.config.max_request_bytes;
    let bytes = match read_body(body, limit, node.config.http_read_timeout()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let request: SqlRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return KalamError::InvalidRequest(format!(
                "the body must be JSON {{\"sql\": \"...\"}}: {e}"
            ))
            .into_response()
        }
    };
    let ctx = match context(principal, request.as_user.as_deref()) {
        Ok(c) => Arc::new(c),
        Err(e) => return e.into_response(),
    };
    let span = tracing::info_span!("sql", user = %ctx.principal.user_id, as_user = request.as_user.as_deref());
    let run = run_statements(node, &ctx, &request.sql, request.params.as_deref()).instrument(span);
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(mut ok)) => {
            ok.took_ms = started.elapsed().as_secs_f64() * 1000.0;
            (StatusCode::OK, Json(SqlResponse::Success(ok))).into_response()
        }
        Ok(Err(api_error)) => error_response(api_error),
        Err(_) => {
            tracing::error!("a statement panicked; the request was answered with INTERNAL_ERROR");
            KalamError::Internal("statement panicked".into()).into_response()
        }
    }
}

/// The whole body, at most `limit` bytes, each chunk within `wait` of the one before: a
/// client that stops sending in the middle of its body gets `REQUEST_TIMEOUT` instead of
/// holding the request open (ADR 0025).
async fn read_body(body: Body, limit: usize, wait: Duration) -> Result<Bytes, KalamError> {
    let too_large = || KalamError::PayloadTooLarge(limit);
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut chunks = body.into_data_stream();
    // Most bodies come as one chunk, kept as it came; later chunks are copied after it.
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    loop {
        let chunk = match tokio::time::timeout(wait, chunks.next()).await {
            Err(_) => return Err(KalamError::RequestTimeout(wait.as_millis() as u64)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(KalamError::InvalidRequest(format!(
                    "the request body could not be read: {e}"
                )))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if joined.as_ref().map_or(first.len(), Vec::len) + chunk.len() > limit {
            return Err(too_large());
        }
        match &mut joined {
            Some(all) => all.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => joined = Some([first.as_ref(), chunk.as_ref()].concat()),
        }
    }
    Ok(joined.map_or(first, Bytes::from))
}

/// Resolves who the request runs as: the caller, or for an admin the `as_user` user.
fn context(principal: Principal, as_user: Option<&str>) -> Result<RequestContext, KalamError> {
    let user = match as_user {
        None => principal.user_id.clone(),
        Some(_) if !principal.is_admin() => {
            return Err(KalamError::Forbidden(
                "as_user requires an admin token".into(),
            ))
        }
        Some(u) => UserId::new(u).map_err(|_| {
            KalamError::InvalidRequest("as_user must match ^[A-Za-z0-9_.@-]{1,128}$".into())
        })?,
    };
    Ok(RequestContext::new(principal, user))
}

async fn run_statements(
    node: &Node,
    ctx: &Arc<RequestContext>,
    sql: &str,
    params: Option<&[serde_json::Value]>,
) -> Result<SqlSuccess, kalam_client::wire::ApiError> {
    let (mut statements, parse_error) = match params {
        Some(_) => node.prepared.parse(sql),
        None => parse_statements(sql),
    };
    // Bound before any statement runs, so that a request whose params do not fit changes
    // nothing. Without params a `$1` is refused here too, with a message that says why.
    if params.is_some() || may_hold_placeholders(sql) {
        let complete = parse_error.is_none();
        if let Err((e, index)) = bind(&mut statements, params.unwrap_or(&[]), complete) {
            node.metrics.statement("invalid", false, 0.0);
            return Err(e.to_api(index));
        }
    }
    let mut results = Vec::with_capacity(statements.len());
    for (index, stmt) in statements.into_iter().enumerate() {
        let kind = stmt.kind();
        let started = Instant::now();
        let outcome = node.executor.execute(ctx, stmt).await;
        let seconds = started.elapsed().as_secs_f64();
        node.metrics.statement(kind, outcome.is_ok(), seconds);
        match outcome {
            Ok(mut result) => {
                result.execution_time_ms = seconds * 1000.0;
                results.push(result);
            }
            Err(e) => {
                tracing::debug!(kind, index, code = %e.code(), "statement failed");
                return Err(e.to_api(Some(index)));
            }
        }
    }
    if let Some(e) = parse_error {
        node.metrics.statement("invalid", false, 0.0);
        return Err(e.to_api(Some(results.len())));
    }
    Ok(SqlSuccess {
        results,
        took_ms: 0.0,
    })
}
