//! The real `mpn-notify` binary: `serve` with a config file against a broker over TCP,
//! graceful exit on SIGTERM, health and reflection services, config errors that name
//! the key, and `hash-secret`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mpn-notify");

/// `mpn-notify serve --config <config>`, logging at info to a piped stderr, as a child
/// that dies with the test process. nextest ends a timed-out test with a signal that
/// runs no destructor, so `kill_on_drop` alone would leave the engine running and
/// loading the machine for every later test.
pub(crate) fn serve_command(config: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: see `die_with_parent`.
    #[allow(unsafe_code)]
    unsafe {
        c.pre_exec(die_with_parent);
    }
    c
}

/// For `pre_exec`: the child gets SIGKILL when the thread that spawned it dies (the
/// test's thread or a runtime worker, alive as long as the test). Only calls
/// prctl(2), which is async-signal-safe, as code between fork and exec must.
pub(crate) fn die_with_parent() -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes plain integers.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("mpn-notify.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    path
}

pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mpn-bin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits until a spawned `serve` logs `<key>=<value>` (e.g. `grpc_addr`); returns
/// the value and the rest of its log, line by line.
pub(crate) async fn logged(
    child: &mut tokio::process::Child,
    key: &str,
) -> (
    String,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let marker = format!("{key}=");
    let value = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split(marker.as_str()).nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the engine exited before logging {key}");
    })
    .await
    .unwrap_or_else(|_| panic!("the engine logs {key} within 30 s"));
    (value, lines)
}

/// Waits until a spawned `serve` logs its gRPC address; returns it and a task that
/// collects the rest of its log (complete once the engine exits).
pub(crate) async fn listening(
    child: &mut tokio::process::Child,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let (addr, mut lines) = logged(child, "grpc_addr").await;
    let log = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    (addr, log)
}

/// A configuration for `serve` on the harness's broker, with one credential, the gRPC
/// server on a port the OS picks and no metrics exporter.
fn serve_config(
    dir: &std::path::Path,
    h: &Harness,
    cred: &mpn_engine::config::CredentialConfig,
) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            h.config.kafka.bootstrap_servers, cred.institution, cred.secret_hash
        ),
    )
}

/// Sends `signal` (`TERM`, `HUP`, ...) to the binary.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Sends SIGTERM to the binary.
pub(crate) fn sigterm(child: &tokio::process::Child) {
    signal(child, "TERM");
}

/// Sends SIGHUP to the binary (reload).
pub(crate) fn sighup(child: &tokio::process::Child) {
    signal(child, "HUP");
}

/// The binary's exit status, within 30 s.
pub(crate) async fn exited(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_answers_health_and_exits_cleanly_on_sigterm() {
    let code = inst(51);
    let h = Harness::new(2, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("serve");
    let config = serve_config(&dir, &h, &cred);
    let mut child = serve_command(&config).spawn().unwrap();
    let (addr, log) = listening(&mut child).await;

    // The health service follows readiness: SERVING once the group is joined.
    let health = HealthClient::new(channel(&addr).await);
    eventually(
        "the health service answers SERVING",
        Duration::from_secs(30),
        || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: "mpn.notify.v1.Notify".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    == ServingStatus::Serving as i32
            }
        },
    )
    .await;

    let mut s = mpn_sim::subscriber::Subscriber::connect(&addr, &login(&code, "billing"), &[], "t")
        .await
        .unwrap();
    h.publish_all(
        &(0..10)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let got = receive(&mut s, 10, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );

    sigterm(&child);
    let status = closing_status(&mut s).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let exit = exited(&mut child).await;
    assert!(exit.success(), "exit status {exit:?}");
    let log = log.await.unwrap().join("\n");
    assert!(log.contains("engine stopped"), "{log}");
    assert!(!log.contains(SECRET), "the secret never appears in logs");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn configuration_errors_name_the_key_and_the_file() {
    let dir = temp_dir("badconfig");
    let config = write_config(&dir, "[grpc]\nack_window = 0\n");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grpc.ack_window"), "{err}");

    let config = write_config(&dir, "[kafka]\nbootstrap_server = \"x:1\"\n");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bootstrap_server") && err.contains("mpn-notify.toml"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `check-config` shows the configuration as the engine sees it, but never a Kafka
/// password or key: SASL and TLS secrets passed through `kafka.properties` are masked.
#[tokio::test]
async fn check_config_masks_kafka_secrets() {
    let dir = temp_dir("maskedconfig");
    let config = write_config(
        &dir,
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"centre\"\n\
         \"sasl.password\" = \"hunter2-sasl\"\n\"ssl.key.password\" = \"hunter2-key\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("hunter2"), "a secret is printed: {shown}");
    assert!(shown.contains("\"sasl.password\" = \"***\""), "{shown}");
    assert!(shown.contains("\"ssl.key.password\" = \"***\""), "{shown}");
    assert!(
        shown.contains("SCRAM-SHA-512") && shown.contains("\"centre\""),
        "{shown}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn hash_secret_prints_a_hash_that_verifies() {
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret\n")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    mpn_engine::auth::check_hash(&hash).unwrap();
    let auth = mpn_engine::auth::Authenticator::new(&[mpn_engine::config::CredentialConfig {
        institution: "00200".into(),
        login_id: "x".into(),
        secret_hash: hash,
        grants: vec![],
        certificate_names: vec![],
    }])
    .unwrap();
    let creds = |s: &str| mpn_delivery::Credentials {
        institution: "00200".into(),
        login_id: "x".into(),
        secret: s.into(),
    };
    assert!(auth.authenticate(&creds("s3cret")).is_ok());
    assert!(auth.authenticate(&creds("s3cret\n")).is_err());
}

/// Secrets never reach the log, at DEBUG level too (every crate's debug output, the
/// HTTP/2 and Kafka clients' included), on the success path and on the failure paths
/// (a wrong secret, an unknown login, a malformed subscribe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_logged_even_at_debug_level() {
    use mpn_sim::subscriber::{Login, Subscriber, authenticate};
    const WRONG: &str = "wrong-secret-7f3a9c";
    let code = inst(52);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("debug-log");
    let config = serve_config(&dir, &h, &cred);
    let mut command = serve_command(&config);
    command.env("RUST_LOG", "debug");
    let mut child = command.spawn().unwrap();
    let (addr, log) = listening(&mut child).await;

    let good = login(&code, "billing");
    let s = Subscriber::durable(
        &addr,
        &good,
        &[],
        "erp",
        mpn_proto::mpn::notify::v1::StartFrom::Cursor,
    )
    .await
    .unwrap();
    drop(s);
    let wrong = Login {
        secret: WRONG.into(),
        ..good.clone()
    };
    assert!(authenticate(&addr, &wrong).await.is_err());
    assert!(Subscriber::connect(&addr, &wrong, &[], "x").await.is_err());
    // On to a lockout (auth.max_failures = 5): its log lines carry no secret either.
    for _ in 0..4 {
        assert!(authenticate(&addr, &wrong).await.is_err());
    }
    assert_eq!(
        authenticate(&addr, &good).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    let unknown = Login {
        login_id: "nobody".into(),
        ..good.clone()
    };
    assert!(authenticate(&addr, &unknown).await.is_err());
    // Malformed: an institution that is not granted, with the right secret.
    assert!(
        Subscriber::connect(&addr, &good, &[inst(53)], "x")
            .await
            .is_err()
    );

    sigterm(&child);
    let exit = exited(&mut child).await;
    assert!(exit.success(), "exit status {exit:?}");
    let log = log.await.unwrap().join("\n");
    assert!(
        log.contains("authentication failed"),
        "the failures are logged (at debug level the log is long: {} lines)",
        log.lines().count()
    );
    assert!(log.contains("DEBUG"), "the log is at debug level");
    assert!(log.contains("lockout started"), "the lockout is logged");
    assert!(
        !log.contains(SECRET),
        "the right secret never appears in logs"
    );
    assert!(!log.contains(WRONG), "a wrong secret never appears in logs");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A client-chosen `subscriber_name` reaches the log bounded and escaped: a newline
/// in it cannot forge a log line, and a long one cannot flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_name_cannot_forge_or_flood_log_lines() {
    use mpn_sim::subscriber::Subscriber;
    let code = inst(54);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("name-log");
    let config = serve_config(&dir, &h, &cred);
    let mut child = serve_command(&config).spawn().unwrap();
    let (addr, log) = listening(&mut child).await;
    let forged = "FORGED-LINE payment booked";
    let name = format!("erp\n{forged}\n{}", "x".repeat(500));
    let s = Subscriber::connect(&addr, &login(&code, "billing"), &[], &name)
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&child);
    let exit = exited(&mut child).await;
    assert!(exit.success(), "exit status {exit:?}");
    let log = log.await.unwrap();
    assert!(
        log.iter().any(|l| l.contains("subscriber attached")),
        "the subscription is logged"
    );
    assert!(
        !log.iter().any(|l| l.starts_with(forged)),
        "a newline in the name forged a log line"
    );
    assert!(
        !log.iter().any(|l| l.contains(&"x".repeat(100))),
        "the name is not bounded in the log"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A dead-lettered record's warning names the field and the rule, never the value:
/// customer numbers and names stay out of the log (the dead-letter header keeps the
/// whole message for the operator who fixes the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_warnings_name_the_field_and_rule_not_the_value() {
    let code = inst(55);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("dlq-log");
    let config = serve_config(&dir, &h, &cred);
    let mut child = serve_command(&config).spawn().unwrap();
    let (_addr, log) = listening(&mut child).await;
    let mut bad_class = payment(&code, 1);
    bad_class.payment_class = "PRIVATE-CLASS-77".into();
    let mut bad_confirmation = payment(&code, 2);
    bad_confirmation.confirmation_number = "SECRET9".into();
    h.publish_all(&[Rec::proto(&bad_class), Rec::proto(&bad_confirmation)])
        .await;
    let letters = h.dead_letters(2).await;
    assert!(
        letters
            .iter()
            .any(|l| l.header("mpn-error-message").contains("PRIVATE-CLASS-77")),
        "the dead letter keeps the whole message: {letters:?}"
    );
    sigterm(&child);
    let exit = exited(&mut child).await;
    assert!(exit.success(), "exit status {exit:?}");
    let log = log.await.unwrap();
    let warned: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("record dead-lettered"))
        .collect();
    assert_eq!(warned.len(), 2, "{log:#?}");
    assert!(
        warned.iter().any(|l| l.contains("payment_class")),
        "the field is named: {warned:?}"
    );
    for value in ["PRIVATE-CLASS-77", "SECRET9"] {
        assert!(
            !log.iter().any(|l| l.contains(value)),
            "{value} was logged: {log:#?}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `logging.format = "json"`: every line the binary writes is one JSON object with
/// the level, the message and each field as its own key (the gRPC address among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_fields_as_keys() {
    let code = inst(56);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("json-logs");
    let config = serve_config(&dir, &h, &cred);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[logging]\nformat = \"json\"\n")).unwrap();
    let mut child = serve_command(&config).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            seen.push(v.clone());
            if let Some(a) = v["grpc_addr"].as_str() {
                return a.to_owned();
            }
        }
        panic!("the engine exited before listening");
    })
    .await
    .expect("the gRPC address is logged as a field");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    sigterm(&child);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")),
            );
        }
    })
    .await
    .expect("the binary stops within 30 s of SIGTERM");
    assert!(exited(&mut child).await.success());
    for v in &seen {
        assert!(v["level"].is_string() && v["message"].is_string(), "{v}");
    }
    assert!(
        seen.iter().any(|v| v["message"] == "engine stopped"),
        "the whole run is logged: {seen:#?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// SIGHUP to the real binary reloads `auth.credentials_file` without a restart: a
/// credential added to the file can log in, and the live stream of one removed from
/// it ends with UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_credentials_file_without_a_restart() {
    use mpn_sim::subscriber::Subscriber;
    let (old, new) = (inst(57), inst(58));
    let h = Harness::new(1, vec![]);
    let dir = temp_dir("sighup");
    let creds = dir.join("credentials.toml");
    let entry = |code: &str| {
        let c = credential(code, "billing", &[]);
        format!(
            "[[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            c.institution, c.secret_hash
        )
    };
    std::fs::write(&creds, entry(&old)).unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [auth]\ncredentials_file = \"{}\"\n",
            h.config.kafka.bootstrap_servers,
            creds.display()
        ),
    );
    let mut child = serve_command(&config).spawn().unwrap();
    let (addr, log) = listening(&mut child).await;
    let mut s = Subscriber::connect(&addr, &login(&old, "billing"), &[], "erp")
        .await
        .expect("the file's credential logs in");
    assert!(
        Subscriber::connect(&addr, &login(&new, "billing"), &[], "erp")
            .await
            .is_err(),
        "not in the file yet"
    );
    std::fs::write(&creds, entry(&new)).unwrap();
    sighup(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), closing_status(&mut s))
        .await
        .expect("the removed credential's stream ends within 30 s of SIGHUP");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    Subscriber::connect(&addr, &login(&new, "billing"), &[], "erp")
        .await
        .expect("the new credential logs in after SIGHUP, without a restart");
    sigterm(&child);
    assert!(exited(&mut child).await.success());
    let log = log.await.unwrap().join("\n");
    assert!(log.contains("SIGHUP"), "the reload is logged: {log}");
    std::fs::remove_dir_all(dir).unwrap();
}
