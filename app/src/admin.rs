//! The metrics/admin listener (`metrics.listen`): Prometheus `/metrics`, `/healthz`,
//! `/readyz` and the operator's admin API under `/admin/v1/` (bearer token, JSON;
//! documented in docs/admin-api.yaml). It starts before the engine, so a process
//! still waiting for Kafka answers "alive, not ready" instead of not answering; the
//! admin paths answer 503 until the engine is up.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use mpn_engine::admin::{Admin, ReinjectError};
use mpn_engine::health::Readiness;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// What the listener serves from; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
    engine: Arc<RwLock<Option<Admin>>>,
    /// The operator's token; `None` = the admin API is off.
    token: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

impl AdminState {
    pub fn new(metrics: Option<PrometheusHandle>, readiness: Readiness) -> Self {
        Self {
            metrics,
            readiness,
            engine: Arc::default(),
            token: Arc::default(),
        }
    }

    /// The running engine's views (from when it has started).
    pub fn set_engine(&self, admin: Option<Admin>) {
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = admin;
    }

    /// The operator token (`None` turns the admin API off).
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn engine(&self) -> Option<Admin> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads the operator token from `path` (trimmed); an empty path means no token.
pub fn read_token(path: &str) -> anyhow::Result<Option<String>> {
    if path.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("admin.token_file {path}: {e}"))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        anyhow::bail!("admin.token_file {path}: the token must be at least 16 characters");
    }
    Ok(Some(token))
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/v1/sessions", get(sessions))
        .route("/admin/v1/subscribers", get(subscribers))
        .route("/admin/v1/links", get(links))
        .route("/admin/v1/dead-letters", get(dead_letters))
        .route("/admin/v1/dead-letters/reinject", post(reinject))
        .with_state(state)
}

/// Serves on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(state), stop).await
}

/// Serves `router` on `listener` until `stop` (handlers see the peer's address):
/// the admin listener's and the staff console's.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no metrics recorder in this process"),
    }
}

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let checks = s.readiness.checks();
    let status = if checks.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": checks.ready(), "checks": checks })),
    )
        .into_response()
}

/// Why the admin API's gate refused a call.
#[derive(Debug)]
struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = error(self.0, self.1);
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        r
    }
}

/// The admin API's gate: the bearer token (compared in constant time), then the
/// engine (503 while it starts or stops).
fn authorized(s: &AdminState, headers: &HeaderMap) -> Result<Admin, Refused> {
    let token = s.token.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(token) = token else {
        return Err(Refused(
            StatusCode::NOT_FOUND,
            "the admin API is off (set admin.token_file)",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())));
    if !ok {
        return Err(Refused(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <admin token>)",
        ));
    }
    s.engine().ok_or(Refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine is not running (starting and waiting for Kafka, or stopping); retry shortly",
    ))
}

async fn sessions(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match authorized(&s, &headers) {
        Ok(a) => Json(json!({ "sessions": a.sessions() })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn subscribers(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match authorized(&s, &headers) {
        Ok(a) => Json(json!({ "subscribers": a.subscribers() })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn links(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match authorized(&s, &headers) {
        Ok(a) => Json(json!({
            "replica": replica(),
            "links": a.links(),
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

/// This replica's name: the pod's (`HOSTNAME`, as Kubernetes sets it), else the host's.
fn replica() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn dead_letters(
    State(s): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let a = match authorized(&s, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "limit must be 1 to 1000");
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be 1 to 1000");
    }
    match a.dead_letters(limit).await {
        Ok(letters) => Json(letters).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "admin: cannot read the dead-letter topic");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the dead-letter topic now; retry shortly",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReinjectBody {
    partition: i32,
    offset: i64,
    /// A corrected event (JSON `mpn.v1.PaymentEvent`) to publish instead of the
    /// dead letter's payload.
    #[serde(default)]
    event: Option<serde_json::Value>,
}

async fn reinject(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<ReinjectBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let a = match authorized(&s, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"partition\": P, \"offset\": O[, \"event\": {{...}}]}}: {e}"
                ),
            );
        }
    };
    let corrected = body.event.is_some();
    let operator = mpn_engine::admin::Operator {
        login: "operator",
        peer: Some(peer.ip()),
    };
    match a
        .reinject(body.partition, body.offset, body.event, operator)
        .await
    {
        Ok(done) => {
            tracing::info!(
                target: "audit",
                event = "dead_letter_reinjected",
                operator = %peer.ip(),
                dlq_partition = body.partition,
                dlq_offset = body.offset,
                corrected,
                partition = done.partition,
                offset = done.offset,
                "a dead letter was re-injected into the input topic"
            );
            Json(json!({ "reinjected": done })).into_response()
        }
        Err(e @ ReinjectError::NotFound { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ (ReinjectError::Invalid { .. } | ReinjectError::NeedsCorrection(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(ReinjectError::Kafka(detail)) => {
            tracing::warn!(error = %detail, "admin: re-inject failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Kafka could not be read or written; nothing was re-injected; retry shortly",
            )
        }
    }
}
