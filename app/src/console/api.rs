//! The console's JSON API (`/api/v1`, `docs/console-api.yaml`): the same sessions,
//! tenancy and parameters as the pages, for institutions that script downloads.
//! Errors are `{"error": "..."}` naming what is wrong.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::pages::TotalsParams;
use super::{ConsoleState, LoginRefused, Refusal, SESSION_COOKIE, SearchParams, Staff, equal};

/// How often the live stream looks for new rows.
const LIVE_POLL: Duration = Duration::from_millis(250);
/// How far back in writing time each poll looks (a row whose transaction committed
/// after a later-numbered one is still sent, once).
const LIVE_LOOKBACK: Duration = Duration::from_secs(30);

pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn unauthenticated() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "no valid session: log in with POST /api/v1/session",
    )
}

pub(crate) fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Bad(m) => error(StatusCode::BAD_REQUEST, m),
        Refusal::Forbidden(m) => error(StatusCode::FORBIDDEN, m),
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console API: history read failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the history cannot be read now; try again shortly",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    institution: String,
    login_id: String,
    password: String,
}

pub(super) async fn open_session(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let login: LoginBody = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match state
        .login(
            &login.institution,
            &login.login_id,
            &login.password,
            state.client(&headers, peer),
        )
        .await
    {
        Ok((id, staff)) => {
            let mut res = Json(json!({
                "institutions": staff.institutions,
                "csrf": staff.csrf,
            }))
            .into_response();
            res.headers_mut()
                .append(header::SET_COOKIE, state.cookie(SESSION_COOKIE, id, None));
            res
        }
        Err(LoginRefused::Wrong) => error(
            StatusCode::UNAUTHORIZED,
            "institution, login_id or password is wrong",
        ),
        Err(LoginRefused::LockedOut(m)) => error(StatusCode::TOO_MANY_REQUESTS, m),
        Err(LoginRefused::Unavailable) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "login is unavailable now")
        }
    }
}

pub(super) async fn close_session(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return unauthenticated();
    };
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !equal(given, &staff.csrf) {
        return error(
            StatusCode::FORBIDDEN,
            "X-CSRF-Token: missing or not this session's token",
        );
    }
    state.logout(&headers);
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, state.expired(SESSION_COOKIE));
    res
}

fn staff_or_401(state: &ConsoleState, headers: &HeaderMap) -> Result<Staff, Box<Response>> {
    state
        .staff(headers)
        .ok_or_else(|| Box::new(unauthenticated()))
}

pub(super) async fn payments(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    let staff = match staff_or_401(&state, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (query, page, limit) = match params.limit().and_then(|limit| {
        let mut q = params.query(&staff, limit + 1)?;
        let page = params.page()?;
        q.offset = (page - 1) * limit;
        Ok((q, page, limit))
    }) {
        Ok(v) => v,
        Err(r) => return refused(r),
    };
    match state.history.search(&query).await {
        Ok(mut rows) => {
            let more = rows.len() as u64 > limit;
            rows.truncate(limit as usize);
            Json(json!({ "payments": rows, "page": page, "more": more })).into_response()
        }
        Err(e) => unavailable(e),
    }
}

pub(super) async fn payment(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let staff = match staff_or_401(&state, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.history.payment(&staff.institutions, &id).await {
        Ok(Some((payment, lifecycle))) => {
            Json(json!({ "payment": payment, "lifecycle": lifecycle })).into_response()
        }
        // The same answer for an unknown id and another institution's.
        Ok(None) => error(StatusCode::NOT_FOUND, "no such payment"),
        Err(e) => unavailable(e),
    }
}

pub(super) async fn totals(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<TotalsParams>,
) -> Response {
    let staff = match staff_or_401(&state, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (from, to) = match params.range() {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    match state.history.daily(&staff.institutions, from, to).await {
        Ok(days) => {
            let days: Vec<_> = days
                .iter()
                .map(|d| {
                    let mut v = serde_json::to_value(d).unwrap_or_default();
                    v["mismatch"] = json!(d.mismatch());
                    v
                })
                .collect();
            Json(json!({ "days": days })).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// Open live streams per session, and in all on this replica.
const MAX_STREAMS_PER_SESSION: usize = 4;
const MAX_STREAMS: usize = 256;

/// Counts a live stream while it is open.
struct StreamSlot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    session: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.session);
            }
        }
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Server-Sent Events: `event: payment`, `id: <row_no>`, `data: <payment JSON>`, for
/// every row of the session's institutions written in the last [`LIVE_LOOKBACK`]
/// and from then on, each once per stream (a page that already shows a row drops
/// it by its id). Looking back by time, not by row number, sends a row whose
/// transaction committed after a later-numbered one. The session is checked at
/// every poll: a logout, the idle time-out or a credential reload ends or narrows
/// the stream at once. At most [`MAX_STREAMS_PER_SESSION`] per session and
/// [`MAX_STREAMS`] per replica.
pub(super) async fn live(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let staff = match staff_or_401(&state, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let session = ConsoleState::session_id(&headers).unwrap_or_default();
    let slot = {
        let mut open = state.streams.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(&session).copied().unwrap_or(0);
        if mine >= MAX_STREAMS_PER_SESSION || total >= MAX_STREAMS {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many live streams (at most {MAX_STREAMS_PER_SESSION} per session, {MAX_STREAMS} per server); close one"
                ),
            );
        }
        *open.entry(session.clone()).or_default() += 1;
        StreamSlot {
            streams: state.streams.clone(),
            session,
        }
    };
    drop(staff);
    struct Tail {
        state: ConsoleState,
        headers: HeaderMap,
        /// Row numbers sent, with when they were written (forgotten past the look-back).
        sent: std::collections::HashMap<i64, i64>,
        pending: std::collections::VecDeque<Event>,
        _slot: StreamSlot,
    }
    let tail = Tail {
        state,
        headers,
        sent: Default::default(),
        pending: Default::default(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(tail, move |mut t| async move {
        let mut first = true;
        loop {
            if let Some(e) = t.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(e), t));
            }
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(LIVE_POLL) => {}
                    _ = t.state.stop.cancelled() => return None,
                }
            }
            first = false;
            let staff = t.state.still_valid(&t.headers)?;
            let from = now_us() - LIVE_LOOKBACK.as_micros() as i64;
            let Ok(rows) = t
                .state
                .history
                .written_since(&staff.institutions, from, 500)
                .await
            else {
                continue;
            };
            for p in rows {
                if t.sent.insert(p.row_no, p.written_at_us).is_some() {
                    continue;
                }
                if let Ok(e) = Event::default()
                    .event("payment")
                    .id(p.row_no.to_string())
                    .json_data(&p)
                {
                    t.pending.push_back(e);
                }
            }
            // Bounded: only what the look-back can still see is remembered.
            t.sent.retain(|_, written| *written >= from);
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
