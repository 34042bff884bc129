//! `mpn-notify serve`: the metrics/admin listener comes up first (so `/healthz`
//! answers and `/readyz` says "not ready" from the first second), then the engine,
//! whose start is retried with back-off while Kafka cannot be reached; SIGHUP reloads
//! what can change without a restart; SIGTERM (or Ctrl-C) drains and exits.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use mpn_engine::health::Readiness;
use mpn_engine::{Config, Engine, IngestStart, telemetry};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};

/// Back-off between start attempts while Kafka cannot be reached: doubling from the
/// first, capped at the second.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Runs the engine until `stop` completes (or it cannot go on); `reload` yields once
/// per reload request (SIGHUP).
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()>,
    mut reload: impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<ExitCode> {
    let readiness = Readiness::new();
    let metrics = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(telemetry::install_metrics()?)
    };
    let state = AdminState::new(metrics, readiness.clone());
    // `mpn_ready` exists from the first scrape (0 while the start is retried) and is
    // set again before the exporter's idle time-out could drop it.
    let gauge_stop = CancellationToken::new();
    {
        let (readiness, stop) = (readiness.clone(), gauge_stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => readiness.report(),
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
    let _stop_gauge = gauge_stop.drop_guard();
    state.set_token(admin::read_token(&config.admin.token_file)?);
    let listener_stop = CancellationToken::new();
    let listener = match config.metrics.listen_addr() {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen: cannot bind {addr}: {e}"))?;
            let bound = l.local_addr()?;
            tracing::info!(admin_addr = %bound, "metrics/admin listener up: /metrics /healthz /readyz /admin/v1");
            let (state, stop) = (state.clone(), listener_stop.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = admin::serve(l, state, stop).await {
                    tracing::error!(error = %e, "metrics/admin listener failed");
                }
            }))
        }
        None => None,
    };
    let mut stop = std::pin::pin!(stop);

    let mut backoff = RETRY.0;
    let engine = loop {
        let attempt = Engine::builder(config.clone())
            .readiness(readiness.clone())
            .ingest(IngestStart::Automatic)
            .start();
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut stop => {
                tracing::info!("signal received while starting; exiting");
                listener_stop.cancel();
                return Ok(ExitCode::SUCCESS);
            }
        };
        match result {
            Ok(engine) => break engine,
            Err(e) if e.is_transient() => {
                readiness.kafka_unreachable();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot start yet (Kafka unreachable or refusing); not ready, retrying"
                );
            }
            Err(e) => {
                listener_stop.cancel();
                return Err(e.into());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => {
                tracing::info!("signal received while starting; exiting");
                listener_stop.cancel();
                return Ok(ExitCode::SUCCESS);
            }
        }
        backoff = (backoff * 2).min(RETRY.1);
    };
    state.set_engine(Some(engine.admin()));
    let console_stop = CancellationToken::new();
    let console = match crate::console::start(&config.console, &engine, console_stop.clone()).await
    {
        Ok(c) => c,
        Err(e) => {
            engine.shutdown().await;
            listener_stop.cancel();
            return Err(e);
        }
    };

    let failure = loop {
        tokio::select! {
            _ = &mut stop => break None,
            e = engine.failed() => break Some(e),
            _ = reload() => {
                tracing::info!("SIGHUP: reloading credentials, TLS files and the admin token");
                // Bounded, and never in the way of a stop (a hung file system).
                tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(30), engine.reload()) => {
                        if r.is_err() {
                            tracing::error!("reload took over 30 s; abandoned, the files in force stay");
                        }
                    }
                    _ = &mut stop => break None,
                }
                let path = config.admin.token_file.clone();
                let token = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::task::spawn_blocking(move || admin::read_token(&path)),
                )
                .await
                .map_err(|_| anyhow::anyhow!("reading admin.token_file took over 10 s"))
                .and_then(|r| r.map_err(anyhow::Error::from))
                .and_then(|r| r);
                match token {
                    Ok(token) => {
                        state.set_token(token);
                        tracing::info!("reloaded: admin token");
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the admin token in use"),
                }
            }
        }
    };
    match &failure {
        None => tracing::info!("signal received; draining"),
        Some(e) => tracing::error!(error = %e, "cannot go on; draining"),
    }
    state.set_engine(None);
    console_stop.cancel();
    if let Some((_, task)) = console {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    engine.shutdown().await;
    listener_stop.cancel();
    if let Some(l) = listener {
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    failure.map_or(Ok(ExitCode::SUCCESS), |e| Err(e.into()))
}
