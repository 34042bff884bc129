//! The console's JSON API (`/api/v1`, `docs/console-api.yaml`): the same sessions,
//! tenancy and parameters as the pages, for institutions that script downloads.
//! Errors are `{"error": "..."}` naming what is wrong.

use std::collections::BTreeSet;
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
/// Row numbers behind the newest seen that the live stream looks at again: a row
/// whose transaction committed after a later-numbered one is still sent.
const LIVE_LOOKBACK: i64 = 256;

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
        .login(&login.institution, &login.login_id, &login.password, peer)
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct LiveParams {
    /// Send rows written after this row number (the page's newest); none = from now.
    after: Option<String>,
}

/// Server-Sent Events: `event: payment`, `id: <row_no>`, `data: <payment JSON>`, for
/// every row of the session's institutions written from now on (or after `after` /
/// `Last-Event-ID`). The session is checked at every poll: a logout, the idle
/// time-out or a credential reload ends or narrows the stream at once.
pub(super) async fn live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<LiveParams>,
) -> Response {
    let staff = match staff_or_401(&state, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.after)
        .filter(|s| !s.is_empty());
    let after = match resume {
        Some(a) => match a.parse::<i64>() {
            Ok(a) if a >= 0 => a,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("after: must be a row number, 0 or more (got {a:?})"),
                );
            }
        },
        None => match state.history.latest(&staff.institutions, 1).await {
            Ok(rows) => rows.last().map_or(0, |p| p.row_no),
            Err(e) => return unavailable(e),
        },
    };
    struct Tail {
        state: ConsoleState,
        headers: HeaderMap,
        newest: i64,
        sent: BTreeSet<i64>,
        pending: std::collections::VecDeque<Event>,
    }
    let tail = Tail {
        state,
        headers,
        newest: after,
        sent: BTreeSet::new(),
        pending: Default::default(),
    };
    let stream = futures::stream::unfold(tail, move |mut t| async move {
        loop {
            if let Some(e) = t.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(e), t));
            }
            tokio::select! {
                _ = tokio::time::sleep(LIVE_POLL) => {}
                _ = t.state.stop.cancelled() => return None,
            }
            let staff = t.state.still_valid(&t.headers)?;
            let from = (t.newest - LIVE_LOOKBACK).max(0);
            let Ok(rows) = t.state.history.since(&staff.institutions, from, 500).await else {
                continue;
            };
            for p in rows {
                // At or below `after` the client has it already.
                if p.row_no <= after || !t.sent.insert(p.row_no) {
                    continue;
                }
                t.newest = t.newest.max(p.row_no);
                if let Ok(e) = Event::default()
                    .event("payment")
                    .id(p.row_no.to_string())
                    .json_data(&p)
                {
                    t.pending.push_back(e);
                }
            }
            // Bounded: only what the look-back can still see is remembered.
            let floor = t.newest - LIVE_LOOKBACK;
            t.sent = t.sent.split_off(&floor);
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
