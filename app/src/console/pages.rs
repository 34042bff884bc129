//! The console's pages: server-rendered HTML (maud escapes every value), Japanese
//! labels with English beside them, amounts in yen with separators, times in JST.
//! The only script is `/static/console.js` (the live view's Server-Sent Events).

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use mpn_history::{DayTotals, Payment};
use serde::Deserialize;

use super::{
    ConsoleState, LOGIN_CSRF_COOKIE, LoginRefused, PAGE_ROWS, Refusal, SESSION_COOKIE,
    SearchParams, Staff, cookie_value, equal, token,
};

/// `¥1,234,567`.
pub(crate) fn yen(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut out = String::new();
    for (n, c) in digits.chars().enumerate() {
        if n > 0 && (digits.len() - n).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{}¥{out}", if amount < 0 { "-" } else { "" })
}

/// Microseconds since the epoch as JST `2026-12-06 10:15:00`.
pub(crate) fn jst(us: i64) -> String {
    if us == 0 {
        return String::new();
    }
    let jst = chrono::FixedOffset::east_opt(9 * 3600).expect("JST");
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| {
            t.with_timezone(&jst)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// YYYYMMDD as `2026-12-06`.
pub(crate) fn day(d: i32) -> String {
    let s = d.to_string();
    if s.len() == 8 {
        format!("{}-{}-{}", &s[..4], &s[4..6], &s[6..])
    } else {
        s
    }
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "payment" => "消込 payment",
        "cancellation" => "取消 cancellation",
        "preliminary" => "速報 preliminary",
        "confirmed" => "確報 confirmed",
        "preliminary_cancel" => "速報取消 preliminary cancel",
        "daily_counters" => "カウンタ daily counters",
        _ => "—",
    }
}

fn status_label(status: &str) -> &'static str {
    match status {
        "paid" => "収納済 paid",
        "cancelled" => "取消済 cancelled",
        "open" => "未確定 open",
        "closed" => "確定済 closed",
        "recorded" => "記録 recorded",
        _ => "—",
    }
}

fn channel_label(channel: &str) -> &'static str {
    match channel {
        "counter" => "窓口 counter",
        "atm" => "ATM",
        "internet_banking" => "インターネットバンキング internet banking",
        "telephone_banking" => "テレフォンバンキング telephone banking",
        _ => "—",
    }
}

fn layout(title: &str, staff: Option<&Staff>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="ja" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — mpn-notify 収納照会 payment console" }
                    link rel="stylesheet" href="/static/console.css";
                }
                body {
                    header {
                        strong { "収納照会 Payment console" }
                        @if let Some(s) = staff {
                            nav {
                                a #nav-live href="/" { "速報 Live" }
                                a #nav-search href="/payments" { "検索 Search" }
                                a #nav-totals href="/totals" { "日計 Daily totals" }
                            }
                            span.who {
                                "収納機関 Institution " (s.institutions.join(", "))
                                " · " (s.login_id)
                            }
                            form #logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button #logout-submit type="submit" { "ログアウト Log out" }
                            }
                        }
                    }
                    main { h1 { (title) } (body) }
                    footer { "時刻は日本時間 Times are JST (UTC+9)." }
                }
            }
        }
        .into_string(),
    )
}

fn payment_rows(rows: &[Payment]) -> Markup {
    html! {
        @for p in rows {
            tr.payment data-id=(p.notification_id) {
                td.paid-at { (jst(p.paid_at_us)) }
                td.institution { (p.institution) }
                td.kind { (kind_label(&p.kind)) }
                td.status { (status_label(&p.status)) }
                td.customer_number { (p.customer_number) }
                td.amount { (yen(p.amount)) }
                td.channel { (channel_label(&p.channel)) }
                td { a.detail href={ "/payments/" (p.notification_id) } { "詳細 Detail" } }
            }
        }
    }
}

fn payment_head() -> Markup {
    html! {
        thead { tr {
            th { "支払日時 Paid at" } th { "収納機関 Institution" } th { "種別 Kind" }
            th { "状態 Status" } th { "お客様番号 Customer no." } th { "金額 Amount" }
            th { "チャネル Channel" } th {}
        } }
    }
}

/// Redirect to the login page (for a page asked for without a valid session).
fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn refused(staff: &Staff, r: Refusal) -> Response {
    let (code, message) = match r {
        Refusal::Bad(m) => (StatusCode::BAD_REQUEST, m),
        Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
    };
    let body = html! { p #error.error { (message) } p { a href="/payments" { "検索に戻る Back to search" } } };
    (code, layout("入力エラー Bad request", Some(staff), body)).into_response()
}

fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console: history read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            "一時的に利用できません Temporarily unavailable",
            None,
            html! { p { "履歴を読めません。しばらくして再度お試しください。 The history cannot be read now; try again shortly." } },
        ),
    )
        .into_response()
}

pub(super) async fn login_form(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    login_page(&state, &headers, StatusCode::OK, None)
}

/// The login form. Its CSRF token is the browser's `mpn_csrf` cookie when it has a
/// well-formed one (a second tab, or a redirect in between, must not invalidate the
/// first form), else a new one.
fn login_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    code: StatusCode,
    error: Option<&str>,
) -> Response {
    let csrf = cookie_value(headers, LOGIN_CSRF_COOKIE)
        .filter(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(token);
    let body = html! {
        @if let Some(e) = error { p #error.error { (e) } }
        form #login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            label { "収納機関番号 Institution code" input name="institution" required autocomplete="organization" inputmode="numeric"; }
            label { "ログインID Login ID" input name="login_id" required autocomplete="username"; }
            label { "パスワード Password" input name="password" type="password" required autocomplete="current-password"; }
            button #login-submit type="submit" { "ログイン Log in" }
        }
    };
    let mut res = (code, layout("ログイン Log in", None, body)).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        state.cookie(LOGIN_CSRF_COOKIE, csrf, None),
    );
    res
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    institution: String,
    #[serde(default)]
    login_id: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn login(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let cookie = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || !equal(&form.csrf, &cookie) {
        return login_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            Some(
                "フォームの有効期限が切れました。もう一度ログインしてください。 The form expired (CSRF check failed); log in again.",
            ),
        );
    }
    match state
        .login(
            &form.institution,
            &form.login_id,
            &form.password,
            state.client(&headers, peer),
        )
        .await
    {
        Ok((id, _)) => {
            let mut res = Redirect::to("/").into_response();
            let h = res.headers_mut();
            h.append(header::SET_COOKIE, state.cookie(SESSION_COOKIE, id, None));
            h.append(header::SET_COOKIE, state.expired(LOGIN_CSRF_COOKIE));
            res
        }
        Err(LoginRefused::Wrong) => login_page(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some(
                "収納機関番号、ログインIDまたはパスワードが違います。 Institution code, login ID or password is wrong.",
            ),
        ),
        Err(LoginRefused::LockedOut(m)) => login_page(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "ログインが一時的に停止されています。 Login is locked for now: {m}"
            )),
        ),
        Err(LoginRefused::Unavailable) => login_page(
            &state,
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("一時的にログインできません。 Login is unavailable for now."),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return to_login();
    };
    if !equal(&form.csrf, &staff.csrf) {
        return (
            StatusCode::FORBIDDEN,
            layout(
                "CSRF",
                Some(&staff),
                html! { p #error.error { "CSRF token missing or wrong. CSRFトークンが違います。" } },
            ),
        )
            .into_response();
    }
    state.logout(&headers);
    tracing::info!(institution = %staff.institution, login_id = %staff.login_id, "console logout");
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, state.expired(SESSION_COOKIE));
    res
}

pub(super) async fn live(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return to_login();
    };
    let rows = match state.history.latest(&staff.institutions, 50).await {
        Ok(r) => r,
        Err(e) => return server_error(e),
    };
    let newest_first: Vec<Payment> = rows.into_iter().rev().collect();
    let body = html! {
        p { "新しい収納がここに表示されます。 New payments appear here as they arrive." }
        table #live {
            (payment_head())
            tbody { (payment_rows(&newest_first)) }
        }
        script src="/static/console.js" {}
    };
    layout("速報 Live payments", Some(&staff), body).into_response()
}

fn search_form(p: &SearchParams) -> Markup {
    let v = |x: &Option<String>| x.clone().unwrap_or_default();
    let sel = |name: &str, current: &Option<String>, options: &[(&str, &str)]| {
        html! {
            select name=(name) {
                option value="" { "すべて All" }
                @for (value, label) in options {
                    option value=(value) selected[current.as_deref() == Some(*value)] { (label) }
                }
            }
        }
    };
    html! {
        form #search method="get" action="/payments" {
            label { "お客様番号 Customer no." input name="customer_number" value=(v(&p.customer_number)); }
            label { "処理日 From" input name="day_from" type="date" value=(v(&p.day_from)); }
            label { "処理日 To" input name="day_to" type="date" value=(v(&p.day_to)); }
            label { "金額 Min ¥" input name="amount_min" inputmode="numeric" value=(v(&p.amount_min)); }
            label { "金額 Max ¥" input name="amount_max" inputmode="numeric" value=(v(&p.amount_max)); }
            label { "種別 Kind" (sel("kind", &p.kind, &[("payment", "消込 payment"), ("cancellation", "取消 cancellation"), ("preliminary", "速報 preliminary"), ("confirmed", "確報 confirmed"), ("preliminary_cancel", "速報取消 preliminary cancel")])) }
            label { "チャネル Channel" (sel("channel", &p.channel, &[("counter", "窓口 counter"), ("atm", "ATM"), ("internet_banking", "インターネットバンキング internet banking"), ("telephone_banking", "テレフォンバンキング telephone banking")])) }
            label { "状態 Status" (sel("status", &p.status, &[("paid", "収納済 paid"), ("cancelled", "取消済 cancelled"), ("open", "未確定 open"), ("closed", "確定済 closed"), ("recorded", "記録 recorded")])) }
            label { "収納機関 Institution" input name="institution" inputmode="numeric" value=(v(&p.institution)); }
            button #search-submit type="submit" { "検索 Search" }
        }
    }
}

pub(super) async fn search(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return to_login();
    };
    let (query, page) = match params.query(&staff, PAGE_ROWS + 1).and_then(|mut q| {
        // One row more than shown tells whether a next page exists.
        let page = params.page()?;
        q.offset = (page - 1) * PAGE_ROWS;
        Ok((q, page))
    }) {
        Ok(v) => v,
        Err(r) => return refused(&staff, r),
    };
    let mut rows = match state.history.search(&query).await {
        Ok(r) => r,
        Err(e) => return server_error(e),
    };
    let more = rows.len() as u64 > PAGE_ROWS;
    rows.truncate(PAGE_ROWS as usize);
    let qs = |page, enc| params.to_query_string(page, enc);
    let body = html! {
        (search_form(&params))
        p.downloads {
            "ダウンロード Download: "
            a #csv-utf8 href={ "/payments.csv?" (qs(None, Some("utf-8"))) } { "CSV (UTF-8)" } " · "
            a #csv-sjis href={ "/payments.csv?" (qs(None, Some("shift_jis"))) } { "CSV (Shift_JIS)" } " · "
            a #fixed href={ "/payments.txt?" (qs(None, None)) } { "固定長 Fixed-length" }
        }
        @if rows.is_empty() {
            p #no-results { "該当する収納はありません。 No payments match." }
        }
        table #results {
            (payment_head())
            tbody { (payment_rows(&rows)) }
        }
        p.paging {
            @if page > 1 { a #prev href={ "/payments?" (qs(Some(page - 1), None)) } { "← 前へ Previous" } " " }
            "ページ Page " (page)
            @if more { " " a #next href={ "/payments?" (qs(Some(page + 1), None)) } { "次へ Next →" } }
        }
    };
    layout("検索 Search payments", Some(&staff), body).into_response()
}

/// The same page for an unknown id and another institution's: nothing leaks.
pub(super) async fn not_found(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let staff = state.staff(&headers);
    (
        StatusCode::NOT_FOUND,
        layout(
            "見つかりません Not found",
            staff.as_ref(),
            html! { p #not-found { "お探しのページまたは収納はありません。 No such page or payment." } },
        ),
    )
        .into_response()
}

pub(super) async fn detail(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return to_login();
    };
    let found = match state.history.payment(&staff.institutions, &id).await {
        Ok(f) => f,
        Err(e) => return server_error(e),
    };
    let Some((p, lifecycle)) = found else {
        return not_found(State(state), headers).await;
    };
    let field = |id: &str, label: &str, value: String| {
        html! { dt { (label) } dd id={ "f-" (id) } { (value) } }
    };
    let body = html! {
        dl #payment {
            (field("notification_id", "通知ID Notification id", p.notification_id.clone()))
            (field("institution", "収納機関番号 Institution", p.institution.clone()))
            (field("kind", "種別 Kind", kind_label(&p.kind).into()))
            (field("status", "状態 Status", status_label(&p.status).into()))
            (field("transaction_key", "取引キー Transaction key", p.transaction_key.clone()))
            (field("day", "処理日 Processing date", day(p.day)))
            (field("paid_at", "支払日時 Paid at (JST)", jst(p.paid_at_us)))
            (field("customer_number", "お客様番号 Customer no.", p.customer_number.clone()))
            (field("confirmation_number", "確認番号 Confirmation no.", p.confirmation_number.clone()))
            (field("payer_kana", "支払者 Payer (kana)", p.payer_kana.clone()))
            (field("amount", "収納金額 Amount", yen(p.amount)))
            (field("channel", "チャネル Channel", channel_label(&p.channel).into()))
            (field("collection_method", "収納方式 Collection method", p.collection_method.clone()))
            (field("bank", "金融機関 Bank / branch", format!("{} / {}", p.bank_code, p.branch_code)))
            (field("payment_class", "納付区分 Payment class", p.payment_class.clone()))
            (field("fee_name", "料金名 Fee", p.fee_name.clone()))
            (field("original_transaction_key", "元取引キー Original transaction", p.original_transaction_key.clone()))
            (field("recorded_at", "記録日時 Recorded at (JST)", jst(p.written_at_us)))
        }
        h2 { "経過 Lifecycle" }
        @if lifecycle.is_empty() {
            p #no-lifecycle { "関連する通知はありません。 No related notifications." }
        }
        table #lifecycle {
            (payment_head())
            tbody { (payment_rows(&lifecycle)) }
        }
    };
    layout("収納詳細 Payment detail", Some(&staff), body).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct TotalsParams {
    pub day_from: Option<String>,
    pub day_to: Option<String>,
}

impl TotalsParams {
    /// The range asked for; the last 31 days by default, at most 366 days.
    pub(super) fn range(&self) -> Result<(i32, i32), Refusal> {
        let d = |k: &str, v: &Option<String>, dflt: i32| match v.as_deref().map(str::trim) {
            None | Some("") => Ok(dflt),
            Some(v) => super::parse_day(k, v),
        };
        let to = d("day_to", &self.day_to, mpn_history::jst_day(0))?;
        let from = d("day_from", &self.day_from, mpn_history::jst_day(30))?;
        let parse = |x: i32| chrono::NaiveDate::parse_from_str(&x.to_string(), "%Y%m%d").ok();
        match (parse(from), parse(to)) {
            (Some(a), Some(b)) if a > b => {
                Err(Refusal::Bad("day_from: must not be after day_to".into()))
            }
            (Some(a), Some(b)) if (b - a).num_days() > 366 => Err(Refusal::Bad(
                "day_from: the range may cover at most 366 days".into(),
            )),
            _ => Ok((from, to)),
        }
    }
}

pub(super) async fn totals(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<TotalsParams>,
) -> Response {
    let Some(staff) = state.staff(&headers) else {
        return to_login();
    };
    let (from, to) = match params.range() {
        Ok(r) => r,
        Err(r) => return refused(&staff, r),
    };
    let days: Vec<DayTotals> = match state.history.daily(&staff.institutions, from, to).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let counter = |v: Option<i64>, f: fn(i64) -> String| v.map(f).unwrap_or_else(|| "—".into());
    let body = html! {
        form #totals-range method="get" action="/totals" {
            label { "From" input name="day_from" type="date" value=(day(from)); }
            label { "To" input name="day_to" type="date" value=(day(to)); }
            button #totals-submit type="submit" { "表示 Show" }
        }
        p { "処理日ごとの履歴の集計と、MPNのカウンタ。不一致の行は強調表示されます。 History totals per processing date beside MPN's daily counters; rows that disagree are highlighted." }
        table #totals {
            thead { tr {
                th { "処理日 Date" } th { "収納機関 Institution" }
                th { "収納件数 Payments" } th { "収納金額 Amount" }
                th { "取消件数 Cancellations" } th { "取消金額 Amount" }
                th { "MPN 収納件数 Count" } th { "MPN 収納金額 Amount" }
                th { "MPN 取消件数 Count" } th { "MPN 取消金額 Amount" }
                th { "照合 Check" }
            } }
            tbody {
                @for t in &days {
                    tr class=(if t.mismatch() { "mismatch" } else { "match" }) {
                        td { (day(t.day)) } td { (t.institution) }
                        td { (t.payment_count) } td { (yen(t.payment_amount)) }
                        td { (t.cancel_count) } td { (yen(t.cancel_amount)) }
                        td { (counter(t.counters.map(|c| c.clearing_count), |v| v.to_string())) }
                        td { (counter(t.counters.map(|c| c.clearing_amount), yen)) }
                        td { (counter(t.counters.map(|c| c.cancel_count), |v| v.to_string())) }
                        td { (counter(t.counters.map(|c| c.cancel_amount), yen)) }
                        td { @if t.counters.is_none() { "カウンタ未着 no counters yet" } @else if t.mismatch() { "不一致 MISMATCH" } @else { "一致 OK" } }
                    }
                }
            }
        }
    };
    layout("日計 Daily totals", Some(&staff), body).into_response()
}

pub(super) async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

pub(super) async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yen_and_jst_are_formatted_for_japanese_readers() {
        assert_eq!(yen(0), "¥0");
        assert_eq!(yen(999), "¥999");
        assert_eq!(yen(1_000), "¥1,000");
        assert_eq!(yen(99_999_999_999), "¥99,999,999,999");
        // 2026-12-06T01:15:00Z is 10:15 in Tokyo.
        assert_eq!(jst(1_796_519_700_000_000), "2026-12-06 10:15:00");
        assert_eq!(day(20261206), "2026-12-06");
    }
}
