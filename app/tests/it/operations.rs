//! What an operator runs the engine with: the metrics/admin listener's `/healthz` and
//! `/readyz` through the engine's life (group not joined, joined, broker down and
//! back, shutdown), the binary started before its broker, the admin API behind its
//! bearer token (every endpoint, re-injecting a dead letter that is then
//! delivered), and `/metrics` read by Python's prometheus_client.

use std::time::Duration;

use mpn_engine::health::Readiness;
use mpn_engine::{Engine, IngestStart};
use mpn_notify::admin::{self, AdminState};
use mpn_proto::mpn::notify::v1 as pb;
use mpn_sim::subscriber::Subscriber;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body as JSON
/// (`Value::Null` when the body is not JSON).
pub(crate) async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, raw) = call(addr, method, path, &headers, &body).await;
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// One HTTP/1.1 exchange: status, headers (lower-case names) and body.
pub(crate) async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    // Chunked bodies (axum streams some): de-chunk.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..p]).unwrap().trim(), 16)
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend(&rest[p + 2..p + 2 + n]);
            rest = &rest[p + 4 + n..];
        }
        body = out;
    }
    (status, headers, body)
}

const TOKEN: &str = "operator-token-0123456789abcdef";

/// The listener as `serve` runs it, on a port the OS picks; stopped on drop.
struct Listener {
    addr: String,
    state: AdminState,
    _stop: tokio_util::sync::DropGuard,
}

async fn listener(readiness: &Readiness, token: Option<&str>) -> Listener {
    listener_with(None, readiness, token).await
}

/// The same, serving `/metrics` from `metrics`.
async fn listener_with(
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    readiness: &Readiness,
    token: Option<&str>,
) -> Listener {
    let state = AdminState::new(metrics, readiness.clone());
    state.set_token(token.map(str::to_owned));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(admin::serve(l, state.clone(), stop.clone()));
    Listener {
        addr,
        state,
        _stop: stop.drop_guard(),
    }
}

/// The gRPC health service's answers: (overall `""`, `mpn.notify.v1.Notify`).
async fn grpc_health(addr: &str) -> (bool, bool) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let client = HealthClient::new(channel(addr).await);
    let serving = |service: &'static str| {
        let mut c = client.clone();
        async move {
            c.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
                == ServingStatus::Serving as i32
        }
    };
    let overall = serving("").await;
    let notify = serving("mpn.notify.v1.Notify").await;
    (overall, notify)
}

/// Polls the gRPC health service until it answers `want` (it follows readiness
/// through a watch: a moment behind `/readyz`).
async fn grpc_health_when(addr: &str, want: (bool, bool), what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = grpc_health(addr).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: gRPC health answers {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready_when(addr: &str, want: bool, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(addr, "GET", "/readyz", None, None).await;
        assert_eq!(
            status == 200,
            body["ready"] == true,
            "status and body agree: {body}"
        );
        if (status == 200) == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` is false before the group is joined, true after, false while the broker
/// is down, true again after, and false from the first moment of shutdown;
/// `/healthz` answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_group_the_broker_and_shutdown() {
    let code = inst(150);
    let h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    let readiness = Readiness::new();
    let l = listener(&readiness, None).await;
    let (status, body) = http(&l.addr, "GET", "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "alive"})));
    let body = ready_when(&l.addr, false, "not ready before the engine").await;
    assert_eq!(body["checks"]["kafka"], false);

    let engine = Engine::builder(h.config.clone())
        .readiness(readiness.clone())
        .ingest(IngestStart::Manual)
        .start()
        .await
        .unwrap();
    let body = ready_when(&l.addr, false, "not ready before the group is joined").await;
    assert_eq!(
        body["checks"],
        json!({"kafka": true, "group_joined": false, "grpc_serving": true, "cursors_loaded": true})
    );
    let grpc = engine.grpc_addr().to_string();
    grpc_health_when(
        &grpc,
        (false, true),
        "not ready overall, subscriptions served (from cursors) already",
    )
    .await;
    engine.open_ingest();
    ready_when(&l.addr, true, "ready once the group is joined").await;
    grpc_health_when(&grpc, (true, true), "ready: gRPC health agrees").await;

    h.broker().broker_down(1).unwrap();
    let body = ready_when(&l.addr, false, "not ready while the broker is down").await;
    assert_eq!(body["checks"]["kafka"], false, "{body}");
    grpc_health_when(&grpc, (false, false), "broker down: gRPC health agrees").await;
    let (status, _) = http(&l.addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "alive while the broker is down");
    h.broker().broker_up(1).unwrap();
    ready_when(&l.addr, true, "ready again once the broker is back").await;

    let stopping = tokio::spawn(engine.shutdown());
    ready_when(&l.addr, false, "not ready while stopping").await;
    stopping.await.unwrap();
}

/// The admin API: no token configured → 404; a missing or wrong token → 401; each
/// endpoint answers its documented JSON; a dead-lettered record re-injected with a
/// corrected event is delivered, and one that is not there, or a corrected event that
/// is still invalid, is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_the_engine_and_reinjects_a_fixed_dead_letter() {
    let code = inst(151);
    let h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let off = listener(engine.readiness(), None).await;
    off.state.set_engine(Some(engine.admin()));
    let (status, _) = http(&off.addr, "GET", "/admin/v1/sessions", Some(TOKEN), None).await;
    assert_eq!(status, 404, "no token configured: the admin API is off");

    let l = listener(engine.readiness(), Some(TOKEN)).await;
    let (status, body) = http(&l.addr, "GET", "/admin/v1/sessions", Some(TOKEN), None).await;
    assert_eq!(status, 503, "no engine yet: {body}");
    l.state.set_engine(Some(engine.admin()));
    for path in [
        "/admin/v1/sessions",
        "/admin/v1/subscribers",
        "/admin/v1/links",
        "/admin/v1/dead-letters",
    ] {
        for token in [None, Some("wrong-token-0123456789abcdef")] {
            let (status, body) = http(&l.addr, "GET", path, token, None).await;
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
            assert!(body["error"].as_str().unwrap().contains("bearer token"));
        }
    }

    let mut s = Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(&code, "billing"),
        &[],
        "erp-admin",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();
    let mut broken = payment(&code, 2);
    broken.payment_class = "NOT VALID!".into();
    h.publish_all(&[Rec::proto(&payment(&code, 1)), Rec::json(&broken)])
        .await;
    let got = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 1);
    h.dead_letters(1).await;
    // A record whose key names another institution: dead-lettered too.
    let mut miskeyed = Rec::json(&payment(&code, 3));
    miskeyed.key = inst(154);
    h.publish_all(&[miskeyed]).await;
    h.dead_letters(2).await;

    let (status, body) = http(&l.addr, "GET", "/admin/v1/sessions", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let session = &body["sessions"][0];
    assert_eq!(session["institution"], code.as_str());
    assert_eq!(session["state"], "running");
    assert!(session["events_routed"].as_u64().unwrap() >= 1, "{body}");

    let (status, body) = http(&l.addr, "GET", "/admin/v1/subscribers", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let sub = &body["subscribers"][0];
    assert_eq!(sub["name"], "erp-admin");
    assert_eq!(sub["institutions"], json!([code]));
    assert_eq!(
        sub["durable_id"].as_str().unwrap(),
        format!("{code}/billing/erp-admin")
    );
    assert!(
        sub["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{sub}"
    );
    assert_eq!(sub["cursors"].as_array().unwrap().len(), 2);

    let (status, body) = http(&l.addr, "GET", "/admin/v1/links", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["links"], json!([]));
    assert!(body["replica"].is_string());

    let (status, body) = http(
        &l.addr,
        "GET",
        "/admin/v1/dead-letters?limit=10",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{body}");
    let letter = letters
        .iter()
        .find(|l| l["field"] == "payment_class")
        .expect("the payment_class dead letter");
    let miskeyed = letters
        .iter()
        .find(|l| l["field"] != "payment_class")
        .expect("the miskeyed dead letter");
    assert_eq!(letter["kind"], "validation");
    assert_eq!(letter["field"], "payment_class");
    assert_eq!(letter["key"], code.as_str());
    let (status, _) = http(
        &l.addr,
        "GET",
        "/admin/v1/dead-letters?limit=0",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let (partition, offset) = (letter["partition"].clone(), letter["offset"].clone());
    let reinject = |event: Value| json!({"partition": partition, "offset": offset, "event": event});
    // Still invalid: refused, naming the field.
    let still_broken: Value = serde_json::from_slice(&Rec::json(&broken).payload).unwrap();
    let (status, body) = http(
        &l.addr,
        "POST",
        "/admin/v1/dead-letters/reinject",
        Some(TOKEN),
        Some(&reinject(still_broken)),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("payment_class"),
        "{body}"
    );
    // Nothing there.
    let (status, body) = http(
        &l.addr,
        "POST",
        "/admin/v1/dead-letters/reinject",
        Some(TOKEN),
        Some(&json!({"partition": partition, "offset": 999_999})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // Fixed: back in the input topic, and delivered.
    let mut fixed = broken.clone();
    fixed.payment_class = "A1".into();
    let fixed_event: Value = serde_json::from_slice(&Rec::json(&fixed).payload).unwrap();
    let (status, body) = http(
        &l.addr,
        "POST",
        "/admin/v1/dead-letters/reinject",
        Some(TOKEN),
        Some(&reinject(fixed_event.clone())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reinjected"]["topic"],
        h.config.kafka.input_topic.as_str()
    );
    let got = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 2);
    assert_eq!(got[0].payment_class, "A1");
    // Re-injected again (an operator's retry): delivered again, with the same id,
    // although the session has seen that id (a re-inject passes the dedupe window).
    let (status, body) = http(
        &l.addr,
        "POST",
        "/admin/v1/dead-letters/reinject",
        Some(TOKEN),
        Some(&reinject(fixed_event.clone())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let again = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(again[0].notification_id, got[0].notification_id);
    // A corrected event decides the key: the miskeyed record goes back under its
    // own institution's key and reaches that institution's subscriber.
    let same: Value = serde_json::from_slice(&Rec::json(&payment(&code, 3)).payload).unwrap();
    let (status, body) = http(
        &l.addr,
        "POST",
        "/admin/v1/dead-letters/reinject",
        Some(TOKEN),
        Some(&json!({"partition": miskeyed["partition"], "offset": miskeyed["offset"], "event": same})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 3);
    // Every re-inject is an audit record.
    let records = crate::security::audit_records(&h, |r| {
        r.iter()
            .filter(|r| r["event"] == "dead_letter_reinjected")
            .count()
            >= 2
    })
    .await;
    let reinjected: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "dead_letter_reinjected")
        .collect();
    assert!(
        reinjected
            .iter()
            .all(|r| r["peer"] == "127.0.0.1" && r["reason"].as_str().unwrap().contains(".dlq/")),
        "{reinjected:#?}"
    );
    drop(s);
    engine.shutdown().await;
}

/// The real binary started while its broker is down: alive at once, not ready, and
/// ready once the broker comes up (it retries its start with back-off instead of
/// exiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_with_the_broker_down_becomes_ready_when_it_comes_up() {
    let code = inst(152);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = crate::binary::temp_dir("broker-down");
    let config = crate::binary::write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            h.config.kafka.bootstrap_servers, cred.institution, cred.secret_hash
        ),
    );
    h.broker().broker_down(1).unwrap();
    let mut child = crate::binary::serve_command(&config).spawn().unwrap();
    let (admin, mut lines) = crate::binary::logged(&mut child, "admin_addr").await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                log.lock().unwrap().push(l);
            }
        })
    };
    let (status, _) = http(&admin, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let body = ready_when(&admin, false, "not ready while the broker is down").await;
    assert_eq!(body["checks"]["kafka"], false);
    // The first start gives up on the unreachable broker and is retried.
    eventually("a start retried", Duration::from_secs(60), || {
        let retried = log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("not ready, retrying"));
        async move { retried }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the binary keeps running while the broker is down"
    );
    let (status, body) = http(&admin, "GET", "/readyz", None, None).await;
    assert_eq!((status, &body["ready"]), (503, &json!(false)), "{body}");
    h.broker().broker_up(1).unwrap();
    ready_when(&admin, true, "ready once the broker is up").await;
    crate::binary::sigterm(&child);
    let exit = crate::binary::exited(&mut child).await;
    assert!(exit.success(), "exit status {exit:?}");
    reader.await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn python_metrics(url: &str) -> Value {
    let interpreter = std::env::var("MPN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_metrics.py");
    let out = std::process::Command::new(interpreter)
        .arg(script)
        .args(["--url", url])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "prometheus_client could not read /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The documented metrics (docs/metrics.md): name → (type, labels always present).
fn documented() -> Vec<(String, String, Vec<String>)> {
    let doc = include_str!("../../../docs/metrics.md");
    doc.lines()
        .filter(|l| l.starts_with("| `mpn_"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let labels = cells[3]
                .split(',')
                .map(str::trim)
                .filter(|l| l.starts_with('`'))
                .map(|l| l.trim_matches('`').to_owned())
                .collect();
            (
                cells[0].trim_matches('`').to_owned(),
                cells[1].to_owned(),
                labels,
            )
        })
        .collect()
}

/// A running engine's `/metrics`, read by Python's prometheus_client: every
/// documented metric is there with its type and labels (the engine has a CAFIS link
/// whose host refuses one notice, so the link's series are there too), no tenant is
/// named (tenant labels off), and a subscriber's series are gone after it
/// disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_client_reads_every_documented_metric_and_no_departed_subscriber() {
    let idle = Duration::from_secs(3);
    let handle = mpn_engine::telemetry::prometheus(idle)
        .install_recorder()
        .expect("the only recorder of this process");
    mpn_engine::telemetry::describe();
    let code = inst(153);
    let mut h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    h.config.metrics.tenant_labels = false;
    // A CAFIS link whose host refuses payment 5 for good (a `cafis_nack` dead letter).
    let host = crate::cafis::start_host(
        &code,
        mpn_sim::cafis_host::Behaviour {
            permanent_nack_keys: [payment(&code, 5).transaction_key].into_iter().collect(),
            ..Default::default()
        },
    )
    .await;
    h.config.cafis = crate::cafis::fast_links(&[(code.clone(), host.local_addr().to_string())]);
    // The payment history on PostgreSQL, so its series are exported too (its
    // writer is the institution's third subscriber).
    let pg = crate::console::TestDb::create(mpn_history::Dialect::Postgres, "metrics").await;
    let (keys, index) = pg.key_files();
    h.config.history.database_url = pg.url.clone();
    h.config.history.encryption_keys_file = Some(keys);
    h.config.history.index_key_file = Some(index);
    let engine = h.start().await;
    engine.open_ingest();
    let l = listener_with(Some(handle), engine.readiness(), None).await;
    let url = format!("http://{}/metrics", l.addr);

    let mut s = Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(&code, "billing"),
        &[],
        "erp-metrics",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();
    let mut broken = payment(&code, 9);
    broken.amount = 0;
    let mut records: Vec<Rec> = (1..=5).map(|n| Rec::proto(&payment(&code, n))).collect();
    records.push(Rec::proto(&broken));
    h.publish_all(&records).await;
    receive(&mut s, 5, Duration::from_secs(20)).await;
    h.dead_letters(2).await;

    let families = |v: &Value| v["families"].as_object().unwrap().clone();
    // The `subscriber` label values exported: the gRPC subscriber's, the CAFIS
    // link's and the history writer's (the engine's internal subscribers).
    let subscribers = |v: &Value| -> std::collections::BTreeSet<String> {
        families(v)
            .values()
            .flat_map(|f| f["samples"].as_array().unwrap().clone())
            .filter_map(|s| s["labels"]["subscriber"].as_str().map(str::to_owned))
            .collect()
    };
    // Gauges are set each second, the consumer lag and the link's state with the
    // probe and the ticker: wait for a scrape that has them all.
    let mut seen = Value::Null;
    eventually(
        "the subscriber's gauges and the consumer lag",
        Duration::from_secs(15),
        || {
            let v = python_metrics(&url);
            let f = families(&v);
            let ok = subscribers(&v).len() == 3
                && [
                    "mpn_ingest_consumer_lag",
                    "mpn_cafis_link_up",
                    "mpn_cafis_ack_seconds",
                    "mpn_cafis_nacks",
                    "mpn_history_write_seconds",
                    "mpn_history_writers_owned",
                ]
                .iter()
                .all(|n| f.contains_key(*n));
            seen = v;
            async move { ok }
        },
    )
    .await;
    assert!(
        seen["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{}",
        seen["content_type"]
    );
    let fams = families(&seen);
    for (name, kind, labels) in documented() {
        // prometheus_client names a counter family without its `_total`.
        let family = if kind == "counter" {
            name.trim_end_matches("_total").to_owned()
        } else {
            name.clone()
        };
        let f = fams
            .get(&family)
            .unwrap_or_else(|| panic!("{name} is not exported"));
        assert_eq!(f["type"], kind, "{name}'s type");
        assert!(!f["help"].as_str().unwrap().is_empty(), "{name} has HELP");
        for label in &labels {
            assert!(
                f["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["labels"].get(label).is_some()),
                "{name} has no series labelled {label}: {f}"
            );
        }
    }
    let text = seen.to_string();
    assert!(
        !text.contains(&code),
        "an institution code in a label with tenant labels off"
    );
    assert!(
        !text.contains("erp-metrics"),
        "a subscriber name in a label with tenant labels off"
    );
    let stages: Vec<String> = fams["mpn_delivery_latency_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["labels"]["stage"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stages.contains(&"send".into()) && stages.contains(&"ack".into()),
        "{stages:?}"
    );

    let before = subscribers(&seen);
    drop(s);
    eventually(
        "no series of the subscriber once it has left (the link's and the writer's stay)",
        Duration::from_secs(30),
        || {
            let now = subscribers(&python_metrics(&url));
            let gone = now.len() == 2 && now.is_subset(&before);
            async move { gone }
        },
    )
    .await;
    drop(l);
    engine.shutdown().await;
}

/// A durable subscriber that was away while a dead letter was re-injected twice (an
/// operator's retry) gets both from its catch-up reader, as a live one would: the
/// reader's own duplicate filter lets re-injected records through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_in_catch_up_gets_every_reinjected_record() {
    let code = inst(155);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let l = listener(engine.readiness(), Some(TOKEN)).await;
    l.state.set_engine(Some(engine.admin()));
    let grpc = engine.grpc_addr().to_string();
    let who = login(&code, "billing");
    let durable = || Subscriber::durable(&grpc, &who, &[], "erp-away", pb::StartFrom::Cursor);
    let mut s = durable().await.unwrap();
    let mut broken = payment(&code, 2);
    broken.payment_class = "NOT VALID!".into();
    h.publish_all(&[Rec::proto(&payment(&code, 1)), Rec::json(&broken)])
        .await;
    receive(&mut s, 1, Duration::from_secs(20)).await;
    // The only dead letter: partition 0, offset 0 of the one-partition dead-letter topic.
    h.dead_letters(1).await;
    drop(s);
    let mut fixed = broken.clone();
    fixed.payment_class = "A1".into();
    let body = json!({
        "partition": 0,
        "offset": 0,
        "event": serde_json::from_slice::<Value>(&Rec::json(&fixed).payload).unwrap(),
    });
    for _ in 0..2 {
        let (status, answer) = http(
            &l.addr,
            "POST",
            "/admin/v1/dead-letters/reinject",
            Some(TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut s = durable().await.unwrap();
    let got = receive(&mut s, 2, Duration::from_secs(20)).await;
    assert!(
        got.iter()
            .all(|n| serial(n) == 2 && n.payment_class == "A1"),
        "{got:?}"
    );
    assert_eq!(got[0].notification_id, got[1].notification_id);
    assert_ne!(
        got[0].source_offset, got[1].source_offset,
        "two records, not one redelivered"
    );
    drop(s);
    engine.shutdown().await;
}
