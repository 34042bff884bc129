//! The payment history and the staff console with the real binary, the real
//! PostgreSQL (`MPN_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! each test creates its own database and drops it), a real browser (headless
//! Chromium through chromedriver, driven by Python Selenium) and schemathesis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::binary::{serve_command, sighup, temp_dir, write_config};
use crate::operations::call;
use crate::support::*;

use mpn_history::Dialect;
pub(crate) use mpn_history::testing::TestDb;

/// (rows, distinct notification ids) per institution in `db`'s history.
pub(crate) async fn counts(db: &TestDb) -> HashMap<String, (i64, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT institution, CAST(count(*) AS BIGINT) AS n, \
         CAST(count(DISTINCT notification_id) AS BIGINT) AS d FROM payments GROUP BY institution",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    use sqlx::Row as _;
    rows.iter()
        .map(|r| (r.get("institution"), (r.get("n"), r.get("d"))))
        .collect()
}

async fn postgres(tag: &str) -> TestDb {
    TestDb::create(Dialect::Postgres, tag).await
}

const STAFF: &str = "clerk";

/// `serve` with the history on `pg`, the console on a free port and one staff
/// credential per institution.
fn console_config(
    dir: &std::path::Path,
    h: &Harness,
    pg: &TestDb,
    institutions: &[&str],
) -> std::path::PathBuf {
    console_config_with(dir, h, pg, institutions, "")
}

/// [`console_config`] with more TOML after `[console]`'s `listen`: more keys of
/// `[console]`, then any other section.
fn console_config_with(
    dir: &std::path::Path,
    h: &Harness,
    pg: &TestDb,
    institutions: &[&str],
    extra: &str,
) -> std::path::PathBuf {
    let (keys, index) = pg.key_files();
    let mut creds = String::new();
    for code in institutions {
        let c = credential(code, STAFF, &[]);
        creds.push_str(&format!(
            "[[credentials]]\ninstitution = \"{}\"\nlogin_id = \"{STAFF}\"\nsecret_hash = \"{}\"\n",
            c.institution, c.secret_hash
        ));
    }
    write_config(
        dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [history]\ndatabase_url = \"{}\"\nencryption_keys_file = \"{}\"\nindex_key_file = \"{}\"\n\
             [console]\nlisten = \"127.0.0.1:0\"\n{extra}\n{creds}",
            h.config.kafka.bootstrap_servers,
            pg.url,
            keys.display(),
            index.display(),
        ),
    )
}

/// An engine's log as it is written (kept for failure messages).
type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `serve` and waits for its console address.
async fn start(config: &std::path::Path) -> (tokio::process::Child, String, Log) {
    let mut child = serve_command(config).spawn().unwrap();
    let (addr, mut lines) = crate::binary::logged(&mut child, "console_addr").await;
    let log = Log::default();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    (child, addr, log)
}

/// The last `n` lines of `log`.
fn tail(log: &Log, n: usize) -> String {
    let all = log.lock().unwrap();
    let skip = all.len().saturating_sub(n);
    all[skip..].join("\n")
}

async fn wait_rows(
    pg: &TestDb,
    want: HashMap<String, i64>,
    timeout: Duration,
) -> HashMap<String, (i64, i64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = counts(pg).await;
        if want
            .iter()
            .all(|(i, n)| c.get(i).is_some_and(|(_, d)| d >= n))
            || Instant::now() > deadline
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_has_exactly_one_row_per_notification_after_a_sigkill_mid_stream() {
    let (a, b) = (inst(70), inst(71));
    let h = std::sync::Arc::new(Harness::new(2, vec![]));
    let pg = postgres("crash").await;
    let dir = temp_dir("history-crash");
    let config = console_config(&dir, &h, &pg, &[&a, &b]);
    let (mut child, _, first_log) = start(&config).await;
    const N: u32 = 600;
    let records: Vec<Rec> = (1..=N)
        .flat_map(|n| [Rec::proto(&payment(&a, n)), Rec::json(&payment(&b, n))])
        .collect();
    // Publish while the history is being written, and kill the engine mid-stream.
    let publisher = {
        let h2 = h.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(50) {
                h2.publish_all(chunk).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total: i64 = counts(&pg).await.values().map(|(n, _)| n).sum();
        if total >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no history rows within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let at_kill: i64 = counts(&pg).await.values().map(|(n, _)| n).sum();
    let (mut child, _, second_log) = start(&config).await;
    publisher.await.unwrap();
    let want: HashMap<String, i64> = [(a.clone(), i64::from(N)), (b.clone(), i64::from(N))].into();
    let counts = wait_rows(&pg, want, Duration::from_secs(120)).await;
    eprintln!("history after SIGKILL at {at_kill} rows and restart: {counts:?}");
    for code in [&a, &b] {
        assert_eq!(
            counts.get(code.as_str()),
            Some(&(i64::from(N), i64::from(N))),
            "exactly one row per notification id, none missing, for {code} (rows at the kill: {at_kill})\n\
             first engine:\n{}\nsecond engine:\n{}",
            tail(&first_log, 30),
            tail(&second_log, 60)
        );
    }
    assert!(
        at_kill < 2 * i64::from(N),
        "the kill came mid-stream ({at_kill} rows)"
    );
    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
    std::fs::remove_dir_all(dir).unwrap();
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn cookie_of(headers: &[(String, String)], name: &str) -> Option<String> {
    header(headers, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

/// Logs in through the form (CSRF double submit); returns the session id.
async fn form_login(addr: &str, code: &str, extra_cookie: Option<&str>) -> String {
    let (status, headers, _) = call(addr, "GET", "/login", &[], "").await;
    assert_eq!(status, 200);
    let csrf = value(&cookie_of(&headers, "mpn_csrf").expect("a CSRF cookie on the login form"));
    let mut cookie = format!("mpn_csrf={csrf}");
    if let Some(extra) = extra_cookie {
        cookie.push_str(&format!("; {extra}"));
    }
    let form = format!("institution={code}&login_id={STAFF}&password={SECRET}&csrf={csrf}");
    let (status, headers, _) = call(
        addr,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        &form,
    )
    .await;
    assert_eq!(status, 303, "login redirects");
    assert_eq!(header(&headers, "location"), vec!["/"]);
    let session = cookie_of(&headers, "mpn_session").expect("a session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            session.contains(flag),
            "session cookie has {flag}: {session}"
        );
    }
    value(&session)
}

async fn json_of(addr: &str, path: &str, session: &str) -> (u16, serde_json::Value) {
    let (s, _, body) = call(
        addr,
        "GET",
        path,
        &[("Cookie", &format!("mpn_session={session}"))],
        "",
    )
    .await;
    (
        s,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_without_a_session_checks_csrf_and_keeps_institutions_apart() {
    let (a, b) = (inst(72), inst(73));
    let h = Harness::new(1, vec![]);
    let pg = postgres("security").await;
    let dir = temp_dir("console-security");
    // Every step below uses the session well within 3 s of the one before.
    let config = console_config_with(&dir, &h, &pg, &[&a, &b], "idle_timeout_ms = 3000");
    let (mut child, addr, _log) = start(&config).await;
    let mut b_payment = payment(&b, 1);
    b_payment.customer_number = "SHARED0001".into();
    let mut a_payment = payment(&a, 2);
    a_payment.customer_number = "SHARED0001".into();
    h.publish_all(&[Rec::proto(&b_payment), Rec::proto(&a_payment)])
        .await;
    wait_rows(
        &pg,
        [(a.clone(), 1), (b.clone(), 1)].into(),
        Duration::from_secs(60),
    )
    .await;
    let b_id = format!("{}:payment", b_payment.transaction_key);
    let a_id = format!("{}:payment", a_payment.transaction_key);

    // Nothing without a session: pages go to the login, the API says 401.
    for page in [
        "/",
        "/payments",
        "/payments.csv",
        "/payments.txt",
        "/totals",
        &format!("/payments/{a_id}"),
    ] {
        let (s, h, _) = call(&addr, "GET", page, &[], "").await;
        assert_eq!((s, header(&h, "location")), (303, vec!["/login"]), "{page}");
    }
    for api in [
        "/api/v1/payments",
        "/api/v1/totals",
        "/api/v1/live",
        "/api/v1/payments.csv",
        "/api/v1/payments.txt",
        &format!("/api/v1/payments/{a_id}"),
    ] {
        let (s, _, _) = call(&addr, "GET", api, &[("Cookie", "mpn_session=forged")], "").await;
        assert_eq!(s, 401, "{api}");
    }

    // The login form's CSRF check: missing or not matching its cookie is refused.
    let form = format!("institution={a}&login_id={STAFF}&password={SECRET}");
    let (s, h1, _) = call(
        &addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(s, 403);
    assert!(cookie_of(&h1, "mpn_session").is_none());
    let (s, _, _) = call(
        &addr,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", "mpn_csrf=one"),
        ],
        &format!("{form}&csrf=two"),
    )
    .await;
    assert_eq!(s, 403);

    // Fixation: a session id planted before the login is not the one after, and
    // is worth nothing.
    let session = form_login(&addr, &a, Some("mpn_session=planted-by-attacker")).await;
    assert_ne!(session, "planted-by-attacker");
    assert_eq!(
        json_of(&addr, "/api/v1/payments", "planted-by-attacker")
            .await
            .0,
        401
    );
    assert_ne!(
        form_login(&addr, &a, None).await,
        session,
        "every login gets a new id"
    );

    // Tenancy: A's staff see A's payment and never B's, by search, id, download or
    // an institution parameter.
    let (s, v) = json_of(&addr, "/api/v1/payments", &session).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["notification_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a_id.as_str()]);
    let (s, v) = json_of(
        &addr,
        "/api/v1/payments?customer_number=SHARED0001",
        &session,
    )
    .await;
    assert_eq!((s, v["payments"].as_array().unwrap().len()), (200, 1));
    assert_eq!(
        json_of(
            &addr,
            &format!("/api/v1/payments?institution={b}"),
            &session
        )
        .await
        .0,
        403
    );
    let (s, v) = json_of(&addr, &format!("/api/v1/payments/{b_id}"), &session).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("no such payment")));
    let (s, _, body) = call(
        &addr,
        "GET",
        &format!("/payments/{b_id}"),
        &[("Cookie", &format!("mpn_session={session}"))],
        "",
    )
    .await;
    assert_eq!(s, 404);
    assert!(!String::from_utf8_lossy(&body).contains(&b_payment.transaction_key));
    let (s, _, csv) = call(
        &addr,
        "GET",
        "/payments.csv",
        &[("Cookie", &format!("mpn_session={session}"))],
        "",
    )
    .await;
    assert_eq!(s, 200);
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains(&a_id) && !csv.contains(&b_id), "{csv}");
    let (s, v) = json_of(&addr, "/api/v1/payments?day_from=2026-13-01", &session).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("day_from:"), "{v}");

    // The live stream carries A's new payment and not B's published just before it.
    let mut live = tokio::net::TcpStream::connect(&addr).await.unwrap();
    live.write_all(
        format!("GET /api/v1/live HTTP/1.1\r\nHost: x\r\nCookie: mpn_session={session}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut reader = tokio::io::BufReader::new(live);
    let mut first = String::new();
    reader.read_line(&mut first).await.unwrap();
    assert!(first.contains(" 200 "), "{first}");
    let (b2, a2) = (payment(&b, 3), payment(&a, 4));
    h.publish_all(&[Rec::proto(&b2), Rec::proto(&a2)]).await;
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut line = String::new();
        while !seen.contains(&a2.transaction_key) {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            seen.push_str(&line);
        }
    })
    .await
    .expect("A's payment on the live stream within 30 s");
    assert!(
        !seen.contains(&b2.transaction_key) && !seen.contains(&b),
        "B leaked into A's live stream: {seen}"
    );

    // Logout needs the session's CSRF token; afterwards the session is gone.
    let cookie = format!("mpn_session={session}");
    let (s, _, _) = call(
        &addr,
        "POST",
        "/logout",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        "csrf=wrong",
    )
    .await;
    assert_eq!(s, 403);
    // The API's session: JSON only, wrong password 401, DELETE needs X-CSRF-Token.
    let body = format!(r#"{{"institution":"{a}","login_id":"{STAFF}","password":"{SECRET}"}}"#);
    let (s, _, _) = call(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "text/plain")],
        &body,
    )
    .await;
    assert_eq!(s, 415);
    let (s, _, _) = call(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &body.replace(SECRET, "wrong"),
    )
    .await;
    assert_eq!(s, 401);
    let (s, h2, body) = call(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(s, 200);
    let api_session = value(&cookie_of(&h2, "mpn_session").unwrap());
    let csrf = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let api_cookie = format!("mpn_session={api_session}");
    let (s, _, _) = call(
        &addr,
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &api_cookie)],
        "",
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = call(
        &addr,
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &api_cookie), ("X-CSRF-Token", &csrf)],
        "",
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        json_of(&addr, "/api/v1/payments", &api_session).await.0,
        401
    );

    // A session left unused past console.idle_timeout_ms is logged out.
    let idle = form_login(&addr, &a, None).await;
    assert_eq!(json_of(&addr, "/api/v1/payments", &idle).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(json_of(&addr, "/api/v1/payments", &idle).await.0, 401);
    let (s, h3, _) = call(
        &addr,
        "GET",
        "/payments",
        &[("Cookie", &format!("mpn_session={idle}"))],
        "",
    )
    .await;
    assert_eq!((s, header(&h3, "location")), (303, vec!["/login"]));

    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The Python scripts' interpreter (the suite's virtualenv).
fn python() -> String {
    std::env::var("MPN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_logs_in_sees_a_payment_live_searches_and_downloads_and_is_refused_another_institutions()
 {
    let (a, b) = (inst(74), inst(75));
    let h = Harness::new(1, vec![]);
    let pg = postgres("browser").await;
    let dir = temp_dir("console-browser");
    let config = console_config(&dir, &h, &pg, &[&a, &b]);
    let (mut child, addr, _log) = start(&config).await;
    let foreign = payment(&b, 1);
    let mut earlier: Vec<Rec> = (2..=6).map(|n| Rec::proto(&payment(&a, n))).collect();
    earlier.push(Rec::proto(&foreign));
    h.publish_all(&earlier).await;
    wait_rows(
        &pg,
        [(a.clone(), 5), (b.clone(), 1)].into(),
        Duration::from_secs(60),
    )
    .await;
    let shots = std::env::var("MPN_ARTEFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.clone())
        .join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new(python())
        .arg(python_script("console_browser.py"))
        .args(["--console", &format!("http://{addr}")])
        .args(["--bootstrap", &h.config.kafka.bootstrap_servers])
        .args(["--topic", &h.config.kafka.input_topic])
        .args([
            "--institution",
            &a,
            "--login-id",
            STAFF,
            "--password",
            SECRET,
        ])
        .args([
            "--foreign-id",
            &format!("{}:payment", foreign.transaction_key),
        ])
        .args(["--customer", "BROWSER0001"])
        .arg("--screenshots")
        .arg(&shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the browser test runs (MPN_PYTHON with selenium; chromium and chromedriver)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed: {stdout}");
    let timings: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        timings["live_delay_ms"].as_f64().unwrap() <= 2000.0,
        "{timings}"
    );
    for shot in ["live.png", "search.png", "detail.png", "totals.png"] {
        assert!(
            shots.join(shot).metadata().unwrap().len() > 1000,
            "{shot} saved"
        );
    }
    eprintln!("screenshots in {}", shots.display());
    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_in_the_console_api() {
    let (a, b) = (inst(76), inst(77));
    let h = Harness::new(1, vec![]);
    let pg = postgres("schemathesis").await;
    let dir = temp_dir("console-schemathesis");
    let config = console_config(&dir, &h, &pg, &[&a, &b]);
    let (mut child, addr, _log) = start(&config).await;
    h.publish_all(
        &(1..=5)
            .map(|n| Rec::proto(&payment(&a, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_rows(&pg, [(a.clone(), 5)].into(), Duration::from_secs(60)).await;
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console-api.yaml");
    let out = tokio::process::Command::new(python())
        .arg(python_script("console_schemathesis.py"))
        .arg(&spec)
        .arg(format!("http://{addr}"))
        .args([
            "--institution",
            &a,
            "--login-id",
            STAFF,
            "--password",
            SECRET,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs (MPN_PYTHON)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found a failure: {stdout}"
    );
    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_flow_while_the_history_database_is_missing_and_the_history_catches_up() {
    use mpn_sim::subscriber::Subscriber;
    let a = inst(78);
    let h = Harness::new(1, vec![]);
    // The database does not exist yet: the engine starts, delivers, and keeps
    // trying to open the history.
    let pg = TestDb::named(Dialect::Postgres, "late");
    let dir = temp_dir("history-late");
    let config = console_config(&dir, &h, &pg, &[&a]);
    let mut child = serve_command(&config).spawn().unwrap();
    // Both addresses, and whether the first failed attempt to open the history was
    // logged (it may come before either).
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (grpc, console) = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut grpc, mut console, mut waited) = (None, None, false);
        while grpc.is_none() || console.is_none() || !waited {
            let line = lines.next_line().await.unwrap().expect("the engine runs");
            let value = |key: &str| {
                line.split(&format!("{key}="))
                    .nth(1)
                    .map(|r| r.split_whitespace().next().unwrap().to_owned())
            };
            if grpc.is_none() {
                grpc = value("grpc_addr");
            }
            if console.is_none() {
                console = value("console_addr");
            }
            waited |= line.contains("history database not open");
        }
        (grpc.unwrap(), console.unwrap())
    })
    .await
    .expect("the engine starts and says the history waits, within 30 s");
    // The rest of the log is read so the engine never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut s = Subscriber::connect(&grpc, &login(&a, STAFF), &[], "erp")
        .await
        .expect("gRPC serves without the history database");
    h.publish_all(
        &(1..=20)
            .map(|n| Rec::proto(&payment(&a, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let (got, _) = receive_distinct(&mut s, 20, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        20,
        "delivered while the history database is missing"
    );
    // The console logs in (the credential table is the engine's) and says the
    // history is not there yet.
    let session = form_login(&console, &a, None).await;
    let (status, body) = json_of(&console, "/api/v1/payments", &session).await;
    assert_eq!(status, 503, "{body}");
    // Now the database appears: the history opens and catches up from Kafka.
    pg.create_now().await;
    let counts = wait_rows(&pg, [(a.clone(), 20)].into(), Duration::from_secs(90)).await;
    assert_eq!(counts.get(a.as_str()), Some(&(20, 20)), "{counts:?}");
    let (status, body) = json_of(&console, "/api/v1/payments", &session).await;
    assert_eq!(
        (status, body["payments"].as_array().map(Vec::len)),
        (200, Some(20))
    );
    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A credential whose secret is changed by a reload (SIGHUP) ends the console
/// sessions opened with the old secret at once, even busy ones; the new secret
/// logs in. Before the fix such a session went on until it idled out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_ends_the_console_sessions_opened_with_the_old_one() {
    let a = inst(79);
    let h = Harness::new(1, vec![]);
    let pg = postgres("rotate").await;
    let dir = temp_dir("console-rotate");
    let creds = dir.join("credentials.toml");
    let entry = |secret: &str| {
        let hash =
            mpn_engine::auth::hash_secret_with_cost(secret, mpn_engine::auth::Cost::Test).unwrap();
        format!(
            "[[credentials]]\ninstitution = \"{a}\"\nlogin_id = \"{STAFF}\"\nsecret_hash = \"{hash}\"\n"
        )
    };
    std::fs::write(&creds, entry(SECRET)).unwrap();
    let config = console_config_with(
        &dir,
        &h,
        &pg,
        &[],
        &format!("[auth]\ncredentials_file = \"{}\"", creds.display()),
    );
    let (mut child, addr, _log) = start(&config).await;
    let session = form_login(&addr, &a, None).await;
    eventually(
        "the session reads the history once it is open",
        Duration::from_secs(30),
        || {
            let (addr, session) = (addr.clone(), session.clone());
            async move { json_of(&addr, "/api/v1/payments", &session).await.0 == 200 }
        },
    )
    .await;
    std::fs::write(&creds, entry("a new secret")).unwrap();
    sighup(&child);
    // The session is used all along (it never idles): only the reload ends it.
    eventually(
        "the session opened with the old secret ends after the reload",
        Duration::from_secs(30),
        || {
            let (addr, session) = (addr.clone(), session.clone());
            async move { json_of(&addr, "/api/v1/payments", &session).await.0 == 401 }
        },
    )
    .await;
    let body = format!(r#"{{"institution":"{a}","login_id":"{STAFF}","password":"a new secret"}}"#);
    let (s, _, _) = call(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(s, 200, "the new secret logs in");
    crate::binary::sigterm(&child);
    assert!(crate::binary::exited(&mut child).await.success());
    std::fs::remove_dir_all(dir).unwrap();
}
