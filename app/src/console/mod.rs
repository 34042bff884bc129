//! The staff console (`docs/console.md`): institution staff log in with their
//! institution code, login id and password, watch payments arrive, search them,
//! open one with its lifecycle, compare daily totals with MPN's counters and download
//! results. Server-rendered pages ([`pages`]) and a JSON API under `/api/v1`
//! ([`api`], documented in `docs/console-api.yaml`) share one session store and one
//! tenancy rule: a session sees the institutions its credential grants *now* (read
//! from the credential table on every request, so a reload that narrows or removes
//! a credential applies at once).
//!
//! Logins go through the engine's authenticator: the same Argon2 check, lockout and
//! audit records as gRPC logins. Sessions live in this replica's memory (random
//! 256-bit ids, a new one at every login, `HttpOnly; Secure; SameSite=Strict`
//! cookie, idle time-out); every form carries a CSRF token.

mod api;
mod export;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use mpn_engine::config::ConsoleConfig;
use mpn_engine::delivery::{Backend as _, BackendError, Caller, Credentials};
use mpn_engine::subscriptions::Hub;
use mpn_history::{HistoryHandle, Query};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// The session cookie.
pub const SESSION_COOKIE: &str = "mpn_session";
/// The login form's double-submit CSRF cookie (before a session exists).
pub const LOGIN_CSRF_COOKIE: &str = "mpn_csrf";
/// Rows in a page of search results, and the most an API call may ask for.
const PAGE_ROWS: u64 = 50;
const MAX_LIMIT: u64 = 500;

#[derive(Debug, Clone)]
struct Session {
    institution: String,
    login_id: String,
    csrf: String,
    last_seen: Instant,
    started: Instant,
    /// The credential's secret when the session opened (see `secret_fingerprint`).
    secret: Option<u64>,
}

/// A session ends this long after its login however busy it is (a live view left
/// open must log in again once a working day).
const MAX_SESSION_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions one credential may hold at once; its oldest ends past it (so one
/// credential cannot push other institutions' staff out of `max_sessions`).
const MAX_SESSIONS_PER_CREDENTIAL: usize = 20;

/// A logged-in staff member, as a request sees them.
#[derive(Debug, Clone)]
pub(crate) struct Staff {
    pub institution: String,
    pub login_id: String,
    /// What the credential grants now (never empty).
    pub institutions: Vec<String>,
    pub csrf: String,
}

/// What the console serves from; cheap to clone.
#[derive(Clone)]
pub struct ConsoleState {
    history: HistoryHandle,
    hub: Arc<Hub>,
    config: ConsoleConfig,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    stop: CancellationToken,
    /// Downloads being built (bounded: each holds its rows in memory).
    exports: Arc<tokio::sync::Semaphore>,
    /// Live streams open, in all and per session id.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState").finish_non_exhaustive()
    }
}

/// A random token: 32 bytes, URL-safe base64.
fn token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a login was refused, in words fit for the person at the screen.
#[derive(Debug)]
pub(crate) enum LoginRefused {
    Wrong,
    LockedOut(String),
    Unavailable,
}

impl ConsoleState {
    pub fn new(
        history: HistoryHandle,
        hub: Arc<Hub>,
        config: ConsoleConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            history,
            hub,
            config,
            sessions: Arc::default(),
            stop,
            exports: Arc::new(tokio::sync::Semaphore::new(export::MAX_CONCURRENT)),
            streams: Arc::default(),
        }
    }

    fn cookie(&self, name: &'static str, value: String, max_age: Option<Duration>) -> HeaderValue {
        let mut c = cookie::Cookie::build((name, value))
            .http_only(true)
            .secure(self.config.secure_cookies)
            .same_site(cookie::SameSite::Strict)
            .path("/");
        if let Some(age) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
        }
        HeaderValue::from_str(&c.build().to_string()).expect("cookie is ASCII")
    }

    /// A `Set-Cookie` that removes `name`.
    fn expired(&self, name: &'static str) -> HeaderValue {
        self.cookie(name, String::new(), Some(Duration::ZERO))
    }

    /// The client's address: the socket's peer, or the last `X-Forwarded-For`
    /// entry with `console.trust_forwarded_for`.
    pub(crate) fn client(&self, headers: &HeaderMap, peer: SocketAddr) -> SocketAddr {
        if !self.config.trust_forwarded_for {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
            .map_or(peer, |ip| SocketAddr::new(ip, 0))
    }

    /// Checks the password (on a blocking thread: Argon2 is slow on purpose) and
    /// opens a new session; returns its id and the staff member.
    async fn login(
        &self,
        institution: &str,
        login_id: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<(String, Staff), LoginRefused> {
        let caller = Caller::login(
            Credentials {
                institution: institution.trim().into(),
                login_id: login_id.trim().into(),
                secret: password.into(),
            },
            Some(peer.ip()),
        );
        let hub = self.hub.clone();
        let principal = tokio::task::spawn_blocking(move || hub.authenticate(&caller))
            .await
            .map_err(|_| LoginRefused::Unavailable)?
            .map_err(|e| match e {
                BackendError::LockedOut { message, .. } => LoginRefused::LockedOut(message),
                BackendError::Unavailable(_) => LoginRefused::Unavailable,
                _ => LoginRefused::Wrong,
            })?;
        // Fixation: whatever session the browser had, the login gets a new id.
        let id = token();
        let session = Session {
            institution: principal.institution.clone(),
            login_id: principal.login_id.clone(),
            csrf: token(),
            last_seen: Instant::now(),
            started: Instant::now(),
            secret: self
                .hub
                .authenticator()
                .secret_fingerprint(&principal.institution, &principal.login_id),
        };
        let staff = Staff {
            institution: session.institution.clone(),
            login_id: session.login_id.clone(),
            institutions: principal.granted.clone(),
            csrf: session.csrf.clone(),
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.config.idle_timeout;
        sessions
            .retain(|_, s| s.last_seen.elapsed() < idle && s.started.elapsed() < MAX_SESSION_AGE);
        let same =
            |s: &Session| s.institution == session.institution && s.login_id == session.login_id;
        loop {
            let mine = sessions.values().filter(|s| same(s)).count();
            let full = sessions.len() >= self.config.max_sessions;
            if mine < MAX_SESSIONS_PER_CREDENTIAL && !full {
                break;
            }
            // The least recently used: of this credential when it holds too many.
            let Some(oldest) = sessions
                .iter()
                .filter(|(_, s)| full || same(s))
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        tracing::info!(institution = %staff.institution, login_id = %staff.login_id, "console login");
        Ok((id, staff))
    }

    pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
        cookie_value(headers, SESSION_COOKIE)
    }

    /// The staff member of the request's session, if it is valid: known, not idle
    /// past the time-out, and its credential still exists and grants something.
    pub(crate) fn staff(&self, headers: &HeaderMap) -> Option<Staff> {
        let id = Self::session_id(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get_mut(&id)?;
        if s.last_seen.elapsed() >= self.config.idle_timeout
            || s.started.elapsed() >= MAX_SESSION_AGE
        {
            sessions.remove(&id);
            return None;
        }
        let auth = self.hub.authenticator();
        if auth.secret_fingerprint(&s.institution, &s.login_id) != s.secret {
            // The secret was changed (or the credential removed) by a reload.
            sessions.remove(&id);
            return None;
        }
        let granted = auth
            .granted(&s.institution, &s.login_id)
            .map(<[String]>::to_vec);
        let Some(institutions) = granted.filter(|g| !g.is_empty()) else {
            // The credential was removed by a reload: so is its session.
            sessions.remove(&id);
            return None;
        };
        s.last_seen = Instant::now();
        Some(Staff {
            institution: s.institution.clone(),
            login_id: s.login_id.clone(),
            institutions,
            csrf: s.csrf.clone(),
        })
    }

    /// Ends the request's session.
    fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = Self::session_id(headers) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    /// Whether the session `staff` came from still holds (the live stream checks it
    /// between polls).
    fn still_valid(&self, headers: &HeaderMap) -> Option<Staff> {
        self.staff(headers)
    }
}

/// The value of cookie `name` in the request.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// Search parameters as they arrive (pages and API share them); empty values are
/// absent. [`SearchParams::query`] checks them and names what is wrong.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub(crate) struct SearchParams {
    pub customer_number: Option<String>,
    pub day_from: Option<String>,
    pub day_to: Option<String>,
    pub amount_min: Option<String>,
    pub amount_max: Option<String>,
    pub kind: Option<String>,
    pub channel: Option<String>,
    pub status: Option<String>,
    pub institution: Option<String>,
    pub page: Option<String>,
    pub limit: Option<String>,
    pub encoding: Option<String>,
}

/// A bad request parameter, or an institution the caller may not see.
#[derive(Debug)]
pub(crate) enum Refusal {
    Bad(String),
    Forbidden(String),
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `YYYY-MM-DD` (or `YYYYMMDD`) as YYYYMMDD.
fn parse_day(key: &str, v: &str) -> Result<i32, Refusal> {
    let d = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(v, "%Y%m%d"))
        .map_err(|_| Refusal::Bad(format!("{key}: must be a date YYYY-MM-DD (got {v:?})")))?;
    Ok(d.format("%Y%m%d").to_string().parse().unwrap_or(0))
}

fn parse_amount(key: &str, v: &str) -> Result<i64, Refusal> {
    v.replace([',', '¥'], "")
        .parse::<i64>()
        .ok()
        .filter(|a| (1..=99_999_999_999).contains(a))
        .ok_or_else(|| {
            Refusal::Bad(format!(
                "{key}: must be a whole number of yen from 1 to 99,999,999,999 (got {v:?})"
            ))
        })
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<String, Refusal> {
    if allowed.contains(&v) {
        Ok(v.to_owned())
    } else {
        Err(Refusal::Bad(format!(
            "{key}: must be one of {} (got {v:?})",
            allowed.join(", ")
        )))
    }
}

impl SearchParams {
    /// The page number (from 1).
    pub(crate) fn page(&self) -> Result<u64, Refusal> {
        match present(&self.page) {
            None => Ok(1),
            Some(p) => p
                .parse::<u64>()
                .ok()
                .filter(|p| (1..=100_000).contains(p))
                .ok_or_else(|| {
                    Refusal::Bad(format!(
                        "page: must be a number from 1 to 100000 (got {p:?})"
                    ))
                }),
        }
    }

    pub(crate) fn limit(&self) -> Result<u64, Refusal> {
        match present(&self.limit) {
            None => Ok(PAGE_ROWS),
            Some(l) => l
                .parse::<u64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    Refusal::Bad(format!(
                        "limit: must be a number from 1 to {MAX_LIMIT} (got {l:?})"
                    ))
                }),
        }
    }

    /// The store query for `staff`, one page of `limit` rows.
    pub(crate) fn query(&self, staff: &Staff, limit: u64) -> Result<Query, Refusal> {
        let institutions = match present(&self.institution) {
            None => staff.institutions.clone(),
            Some(raw) => {
                let code = mpn_engine::domain::InstitutionCode::parse(raw)
                    .map_err(|m| Refusal::Bad(format!("institution: {m}")))?
                    .to_string();
                if !staff.institutions.contains(&code) {
                    return Err(Refusal::Forbidden(format!(
                        "institution {code} is not granted to login {}",
                        staff.login_id
                    )));
                }
                vec![code]
            }
        };
        let customer_number = match present(&self.customer_number) {
            None => None,
            Some(c) if c.len() <= 20 && c.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Some(c.to_owned())
            }
            Some(c) => {
                return Err(Refusal::Bad(format!(
                    "customer_number: must be 1-20 ASCII letters or digits (got {c:?})"
                )));
            }
        };
        let day = |k: &str, v: &Option<String>| present(v).map(|d| parse_day(k, d)).transpose();
        let amount =
            |k: &str, v: &Option<String>| present(v).map(|a| parse_amount(k, a)).transpose();
        let q = Query {
            institutions,
            customer_number,
            day_from: day("day_from", &self.day_from)?,
            day_to: day("day_to", &self.day_to)?,
            amount_min: amount("amount_min", &self.amount_min)?,
            amount_max: amount("amount_max", &self.amount_max)?,
            kinds: present(&self.kind)
                .map(|k| one_of("kind", k, &mpn_history::record::KINDS[..5]))
                .transpose()?
                .into_iter()
                .collect(),
            channel: present(&self.channel)
                .map(|c| one_of("channel", c, &mpn_history::record::CHANNELS))
                .transpose()?,
            status: present(&self.status)
                .map(|s| one_of("status", s, &mpn_history::record::STATUSES))
                .transpose()?,
            offset: (self.page()? - 1) * limit,
            limit,
            before: None,
            max_row_no: None,
        };
        if let (Some(a), Some(b)) = (q.day_from, q.day_to)
            && a > b
        {
            return Err(Refusal::Bad("day_from: must not be after day_to".into()));
        }
        if let (Some(a), Some(b)) = (q.amount_min, q.amount_max)
            && a > b
        {
            return Err(Refusal::Bad(
                "amount_min: must not be more than amount_max".into(),
            ));
        }
        Ok(q)
    }

    /// `shift_jis` or UTF-8 (the default).
    pub(crate) fn shift_jis(&self) -> Result<bool, Refusal> {
        match present(&self.encoding) {
            None | Some("utf-8") => Ok(false),
            Some("shift_jis") => Ok(true),
            Some(e) => Err(Refusal::Bad(format!(
                "encoding: must be utf-8 or shift_jis (got {e:?})"
            ))),
        }
    }

    /// The query string of these parameters (links keep the search).
    pub(crate) fn to_query_string(&self, page: Option<u64>, encoding: Option<&str>) -> String {
        let mut p = self.clone();
        p.page = page.map(|n| n.to_string());
        p.encoding = encoding.map(str::to_owned);
        p.limit = None;
        serde_urlencoded_pairs(&p)
    }
}

fn serde_urlencoded_pairs(p: &SearchParams) -> String {
    let pairs: Vec<(&str, &Option<String>)> = vec![
        ("customer_number", &p.customer_number),
        ("day_from", &p.day_from),
        ("day_to", &p.day_to),
        ("amount_min", &p.amount_min),
        ("amount_max", &p.amount_max),
        ("kind", &p.kind),
        ("channel", &p.channel),
        ("status", &p.status),
        ("institution", &p.institution),
        ("page", &p.page),
        ("encoding", &p.encoding),
    ];
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = present(v) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(k);
            out.push('=');
            out.extend(url_escape(v));
        }
    }
    out
}

fn url_escape(v: &str) -> impl Iterator<Item = String> + '_ {
    v.bytes().map(|b| {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        }
    })
}

/// Headers every console response carries: no caching of personal data, no
/// framing, scripts only from the console itself.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/", get(pages::live))
        .route("/payments", get(pages::search))
        .route("/payments.csv", get(export::csv))
        .route("/payments.txt", get(export::fixed))
        .route("/payments/{id}", get(pages::detail))
        .route("/totals", get(pages::totals))
        .route("/static/console.css", get(pages::css))
        .route("/static/console.js", get(pages::js))
        .route(
            "/api/v1/session",
            post(api::open_session).delete(api::close_session),
        )
        .route("/api/v1/payments", get(api::payments))
        .route("/api/v1/payments.csv", get(export::csv_api))
        .route("/api/v1/payments.txt", get(export::fixed_api))
        .route("/api/v1/payments/{id}", get(api::payment))
        .route("/api/v1/totals", get(api::totals))
        .route("/api/v1/live", get(api::live))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Starts the console of `engine` on `console.listen` when the history is on and
/// the console enabled; returns its address and task (stopped by `stop`).
pub async fn start(
    config: &ConsoleConfig,
    engine: &mpn_engine::Engine,
    stop: CancellationToken,
) -> anyhow::Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(history) = engine.history() else {
        return Ok(None);
    };
    if !config.enabled {
        return Ok(None);
    }
    let addr = config
        .listen_addr()
        .ok_or_else(|| anyhow::anyhow!("console.listen: not host:port ({})", config.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("console.listen: cannot bind {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() && !config.secure_cookies {
        tracing::warn!(addr = %bound, "console.secure_cookies is off on a non-loopback address: session cookies may travel in clear");
    }
    let state = ConsoleState::new(
        history.clone(),
        engine.hub().clone(),
        config.clone(),
        stop.clone(),
    );
    tracing::info!(console_addr = %bound, "console listening");
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, state, stop).await {
            tracing::error!(error = %e, "console listener failed");
        }
    });
    Ok(Some((bound, task)))
}

/// Serves the console on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ConsoleState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    crate::admin::serve_router(listener, router(state), stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staff() -> Staff {
        Staff {
            institution: "00200000".into(),
            login_id: "clerk".into(),
            institutions: vec!["00200000".into()],
            csrf: "t".into(),
        }
    }

    #[test]
    fn search_parameters_are_checked_and_named() {
        let bad = |p: SearchParams| match p.query(&staff(), 50) {
            Err(Refusal::Bad(m)) => m,
            other => panic!("{other:?}"),
        };
        let p = |f: fn(&mut SearchParams)| {
            let mut p = SearchParams::default();
            f(&mut p);
            p
        };
        assert!(bad(p(|p| p.day_from = Some("2026-13-01".into()))).starts_with("day_from:"));
        assert!(bad(p(|p| p.amount_min = Some("0".into()))).starts_with("amount_min:"));
        assert!(bad(p(|p| p.kind = Some("refund".into()))).starts_with("kind:"));
        assert!(
            bad(p(|p| p.customer_number = Some("<script>".into()))).starts_with("customer_number:")
        );
        assert!(bad(p(|p| p.page = Some("0".into()))).starts_with("page:"));
        assert!(
            bad(p(|p| {
                p.day_from = Some("2026-12-02".into());
                p.day_to = Some("2026-12-01".into());
            }))
            .starts_with("day_from:")
        );
        assert!(matches!(
            p(|p| p.institution = Some("00300".into())).query(&staff(), 50),
            Err(Refusal::Forbidden(_))
        ));
        let q = p(|p| {
            p.day_from = Some("2026-12-01".into());
            p.amount_min = Some("1,000".into());
            p.page = Some("3".into());
            p.institution = Some("00200".into());
        })
        .query(&staff(), 50)
        .unwrap();
        assert_eq!(
            (q.day_from, q.amount_min, q.offset),
            (Some(20261201), Some(1000), 100)
        );
        assert_eq!(q.institutions, vec!["00200000".to_string()]);
    }

    #[test]
    fn links_keep_the_search_escaped() {
        let p = SearchParams {
            customer_number: Some("A B&C".into()),
            kind: Some("payment".into()),
            ..SearchParams::default()
        };
        assert_eq!(
            p.to_query_string(Some(2), Some("shift_jis")),
            "customer_number=A%20B%26C&kind=payment&page=2&encoding=shift_jis"
        );
    }
}
