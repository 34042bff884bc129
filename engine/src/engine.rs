//! Wiring: [`Engine::start`] brings up the session threads, the dead-letter writer,
//! the gRPC server, the consumer and the committer; [`Engine::shutdown`] takes them
//! down in the order that keeps every unfinished notification uncommitted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::cursors::CursorStore;
use crate::error::Error;
pub use crate::error::PartitionsChanged;
use crate::health::Check;
use crate::ingest::{self, EngineConsumer, IngestContext};
use crate::offsets::OffsetTracker;
use crate::runtime::Shutdown;
use crate::session::Router;
use crate::subscriptions::{DurableSupport, Hub};

/// How ingest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngestStart {
    /// After `ingest.startup_grace_ms`.
    #[default]
    Automatic,
    /// Only when [`Engine::open_ingest`] is called (tests, and the demo, attach
    /// their subscribers first).
    Manual,
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    admin: crate::admin::Admin,
    readiness: crate::health::Readiness,
    grpc_addr: SocketAddr,
    /// Every task's stop signal and tracker; [`Engine::shutdown`] triggers it last.
    shutdown: Shutdown,
    /// Ingest's signal, a child of `shutdown`: triggered first.
    stop_ingest: Shutdown,
    /// Dropping the engine without [`Engine::shutdown`] still stops its tasks.
    _stop_on_drop: tokio_util::sync::DropGuard,
    drain_timeout: Duration,
    open: watch::Sender<bool>,
    hub: Arc<Hub>,
    tracker: OffsetTracker,
    /// None with a memory source (nothing is consumed or committed).
    ingest: Option<JoinHandle<()>>,
    committer: Option<JoinHandle<()>>,
    memory: Option<MemorySource>,
    grpc: JoinHandle<()>,
    dlq: JoinHandle<()>,
    flusher: JoinHandle<()>,
    links: Arc<crate::cafis::Links>,
    history: Option<mpn_history::HistoryHandle>,
    writers: Option<Arc<mpn_history::Writers>>,
    actors: Actors,
    /// The first partition ingest met past `partitions` (see [`Engine::failed`]).
    grown: watch::Receiver<Option<i32>>,
    kafka: mpn_kafka::Config,
    partitions: usize,
    /// Credentials file and TLS files, re-read by [`Engine::reload`].
    security: Arc<crate::security::Security>,
}

/// Feeds validated events to the sessions the way ingest does (a delivery hold per
/// event, flow control at `ingest.max_in_flight`), for measuring the pipeline
/// without a broker on the measured path ([`EngineBuilder::memory_source`]).
/// Offsets are the caller's and nothing is committed; durable subscribers are not
/// served (their hand-over to live runs in the ingest loop, which does not run).
#[derive(Debug)]
pub struct MemorySource {
    router: Router,
    tracker: OffsetTracker,
    max_in_flight: usize,
}

impl MemorySource {
    /// Routes `event` as the record at (`partition`, `offset`) to its session,
    /// waiting while `ingest.max_in_flight` notifications are unfinished.
    pub async fn send(&mut self, event: crate::domain::Event, partition: i32, offset: i64) {
        if self.tracker.in_flight() >= self.max_in_flight {
            self.tracker.wait_below(self.max_in_flight).await;
        }
        let hold = self.tracker.register(partition, offset);
        self.router.route(crate::session::Ingested {
            event,
            partition,
            offset,
            hold,
            reinjected: false,
        });
    }
}

/// How [`Engine::shutdown`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Every in-flight notification was finished within `ingest.drain_timeout_ms`.
    pub drained: bool,
    /// Tasks still running at the deadline (0 unless one is stuck).
    pub tasks_left: usize,
}

/// How an [`Engine`] is started: [`Engine::builder`], the options, then
/// [`EngineBuilder::start`]. [`Engine::start`] is the short form.
#[derive(Debug)]
pub struct EngineBuilder {
    config: Config,
    start: IngestStart,
    memory: bool,
    readiness: Option<crate::health::Readiness>,
}

impl EngineBuilder {
    /// When ingest starts consuming (default: after `ingest.startup_grace_ms`).
    pub fn ingest(mut self, start: IngestStart) -> Self {
        self.start = start;
        self
    }

    /// The sessions are fed from memory ([`Engine::take_memory_source`]) instead of
    /// the input topic: no consumer group is joined and no offset is committed.
    pub fn memory_source(mut self) -> Self {
        self.memory = true;
        self
    }

    /// The readiness the engine sets as its parts come up (see [`crate::health`]);
    /// without it the engine keeps one of its own ([`Engine::readiness`]).
    pub fn readiness(mut self, readiness: crate::health::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Starts everything. The gRPC server is listening when this returns.
    pub async fn start(self) -> crate::error::Result<Engine> {
        Engine::start_with(self).await
    }
}

impl Engine {
    /// An engine to start with `config`.
    pub fn builder(config: Config) -> EngineBuilder {
        EngineBuilder {
            config,
            start: IngestStart::default(),
            memory: false,
            readiness: None,
        }
    }

    /// Starts everything, consuming the input topic. The gRPC server is listening
    /// when this returns.
    pub async fn start(config: Config, start: IngestStart) -> crate::error::Result<Engine> {
        Engine::builder(config).ingest(start).start().await
    }

    async fn start_with(builder: EngineBuilder) -> crate::error::Result<Engine> {
        let shutdown = Shutdown::new();
        // A failed start stops what it had started (the cursor reader, the writers).
        let guard = shutdown.token().drop_guard();
        let engine = Self::assemble(builder, shutdown).await?;
        drop(guard.disarm());
        Ok(engine)
    }

    async fn assemble(builder: EngineBuilder, shutdown: Shutdown) -> crate::error::Result<Engine> {
        let EngineBuilder {
            config,
            start,
            memory,
            readiness,
        } = builder;
        config.validate()?;
        let readiness = readiness.unwrap_or_default();
        mpn_delivery::labels::set_tenant_labels(config.metrics.tenant_labels);
        let started = std::time::Instant::now();
        let Prepared {
            partitions,
            cursors,
            link_start,
        } = prepare(&config, &shutdown).await?;
        // Prepared means the broker answered and the cursors are read.
        readiness.set(Check::Kafka, true);
        readiness.set(Check::CursorsLoaded, true);
        let (go_live_tx, go_live_rx) = mpsc::channel(256);
        let tracker = OffsetTracker::new();
        let support = DurableSupport {
            kafka: config.kafka.clone(),
            partitions,
            cursors: cursors.clone(),
            go_live: go_live_tx,
            tracker: tracker.clone(),
            runtime: tokio::runtime::Handle::current(),
            shutdown: shutdown.clone(),
            limits: crate::subscriptions::Limits {
                streams_per_credential: config.grpc.max_streams_per_credential,
                ids_per_credential: config.cursors.max_ids_per_credential,
            },
            link_start,
        };
        // Login protection and the audit trail (issue 12): see `crate::security`.
        let (hub, security) = crate::security::assemble(&config, support, shutdown.clone())?;
        let (open, open_rx) = watch::channel(false);
        let (grown_tx, grown) = watch::channel(None);
        let stop_ingest = shutdown.child();

        let producer: FutureProducer = config
            .kafka
            .producer()
            .create()
            .map_err(Error::kafka("creating the dead-letter producer"))?;
        let (dead_letters, dlq) = crate::dlq::start(
            producer.clone(),
            config.kafka.input_topic.clone(),
            config.kafka.dlq_topic(),
            shutdown.clone(),
        );

        let actors = Actors::start(config.sessions.thread_count())?;
        let sessions = crate::session::SessionDirectory::default();
        let router = Router::new(
            actors.arbiters.clone(),
            hub.clone(),
            dead_letters.clone(),
            config.sessions.clone(),
            sessions.clone(),
        );

        let links = Arc::new(crate::cafis::Links::new(
            config.cafis.clone(),
            partitions,
            Arc::new(crate::links::LinkSupport {
                hub: hub.clone(),
                dead_letters: dead_letters.clone(),
            }),
            tokio::runtime::Handle::current(),
            shutdown.token(),
            shutdown.tasks(),
        )?);
        // The payment history (issue 13): a writer per institution some credential
        // grants, owned like the links.
        let (history, writers) = if config.history.enabled() {
            // Keys are configuration: a bad file stops the start. The database is
            // opened in the background: one that is down delays the history, never
            // the notifications.
            let keys = mpn_history::History::load_keys(&config.history).map_err(Error::history)?;
            let (opened, history) = mpn_history::HistoryHandle::new();
            spawn_history_opener(&shutdown, config.history.clone(), keys, opened);
            let writers = Arc::new(mpn_history::Writers::new(
                history.clone(),
                hub.clone(),
                partitions,
                config.history.queue_capacity,
                config.history.batch_max,
                tokio::runtime::Handle::current(),
                shutdown.token(),
                shutdown.tasks(),
            ));
            let institutions = hub.authenticator().institutions();
            let kept = institutions.len();
            writers.set_institutions(institutions);
            spawn_history_sweeper(&shutdown, history.clone(), &config.history);
            tracing::info!(
                database = %mpn_history::config::mask_url(&config.history.database_url),
                institutions = kept,
                "payment history on"
            );
            (Some(history), Some(writers))
        } else {
            (None, None)
        };
        let context = IngestContext {
            tracker: tracker.clone(),
            topic: config.kafka.input_topic.clone(),
            hub: hub.clone(),
            revoked: Arc::default(),
            links: links.clone(),
            history: writers.clone(),
            first_fetch: Arc::default(),
            first_fetch_armed: Arc::default(),
            partitions,
            grown: Arc::new(grown_tx),
            readiness: readiness.clone(),
        };
        let high_watermarks: Arc<std::sync::Mutex<std::collections::HashMap<i32, i64>>> =
            Arc::default();
        let consumer: EngineConsumer = config
            .kafka
            .consumer()
            // A rebalance revokes only the partitions that move: the others keep
            // being consumed, and their durable subscriptions stay live.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(context)
            .map_err(Error::kafka("creating the Kafka consumer"))?;
        let consumer = Arc::new(consumer);

        let listener = tokio::net::TcpListener::bind(config.grpc.listen)
            .await
            .map_err(|error| Error::Bind {
                addr: config.grpc.listen,
                error,
            })?;
        let grpc_addr = listener.local_addr().map_err(|error| Error::Bind {
            addr: config.grpc.listen,
            error,
        })?;
        let grpc = {
            let (hub, cfg, tls) = (hub.clone(), config.grpc.clone(), security.tls());
            let (token, tasks) = (shutdown.token(), shutdown.tasks());
            let (ready, serving) = (readiness.watch(), readiness.clone());
            shutdown.spawn(async move {
                if let Err(e) = mpn_grpc::serve(listener, hub, cfg, tls, token, tasks, ready).await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
                serving.set(Check::GrpcServing, false);
            })
        };
        readiness.set(Check::GrpcServing, true);
        tracing::info!(%grpc_addr, elapsed_ms = started.elapsed().as_millis() as u64, "gRPC subscription service listening");

        let memory_engine = memory;
        let (ingest, memory) = if memory {
            // No group to join: the memory source is the whole input.
            readiness.set(Check::GroupJoined, true);
            let source = MemorySource {
                router,
                tracker: tracker.clone(),
                max_in_flight: config.ingest.max_in_flight,
            };
            (None, Some(source))
        } else {
            let (consumer, tracker, stop) =
                (consumer.clone(), tracker.clone(), stop_ingest.clone());
            let topic = config.kafka.input_topic.clone();
            let max = config.ingest.max_in_flight;
            let check_partitions = config.kafka.check_key_partition;
            let mut open_rx = open_rx;
            let task = stop_ingest.spawn(async move {
                tokio::select! {
                    _ = open_rx.wait_for(|o| *o) => {}
                    _ = stop.triggered() => return,
                }
                if let Err(e) = consumer.subscribe(&[&topic]) {
                    tracing::error!(error = %e, %topic, "cannot subscribe to the input topic");
                    return;
                }
                tracing::info!(%topic, "consuming");
                ingest::run(
                    consumer,
                    router,
                    dead_letters,
                    tracker,
                    ingest::Shape {
                        max_in_flight: max,
                        partitions,
                        check_partitions,
                    },
                    go_live_rx,
                    stop,
                )
                .await;
            });
            (Some(task), None)
        };
        spawn_ticker(
            &shutdown,
            Ticked {
                hub: hub.clone(),
                tracker: tracker.clone(),
                links: links.clone(),
                writers: writers.clone(),
                high_watermarks: high_watermarks.clone(),
            },
        );
        if !memory_engine {
            spawn_kafka_probe(
                &shutdown,
                &config,
                producer.clone(),
                tracker.clone(),
                high_watermarks,
                readiness.clone(),
            );
        }
        let flusher = shutdown.spawn(
            cursors.clone().run_flusher(
                config.kafka.clone(),
                config.cursors.flush_interval,
                config.cursors.snapshot_interval,
                (config.cursors.expire_after_hours > 0)
                    .then(|| Duration::from_secs(config.cursors.expire_after_hours * 3600)),
                shutdown.clone(),
            ),
        );
        let committer = ingest.is_some().then(|| {
            shutdown.spawn(ingest::run_committer(
                consumer,
                config.kafka.input_topic.clone(),
                tracker.clone(),
                config.ingest.commit_interval,
                shutdown.clone(),
            ))
        });

        let drain_timeout = config.ingest.drain_timeout;
        let admin = crate::admin::Admin {
            sessions,
            hub: hub.clone(),
            tracker: tracker.clone(),
            links: links.clone(),
            kafka: config.kafka.clone(),
            partitions,
            producer,
        };
        let engine = Engine {
            admin,
            readiness,
            grpc_addr,
            _stop_on_drop: shutdown.token().drop_guard(),
            shutdown: shutdown.clone(),
            stop_ingest,
            drain_timeout,
            open,
            hub,
            tracker,
            ingest,
            committer,
            memory,
            grpc,
            dlq,
            flusher,
            links,
            history,
            writers,
            actors,
            grown,
            kafka: config.kafka.clone(),
            partitions,
            security: Arc::new(security),
        };
        if start == IngestStart::Automatic {
            if !config.ingest.startup_grace.is_zero() {
                // The grace is for subscribers to reconnect before consumption starts:
                // they must be able to reach this replica meanwhile, so it counts as
                // ready (see `health`).
                engine.readiness.set(Check::GroupJoined, true);
            }
            let open = engine.open.clone();
            let grace = config.ingest.startup_grace;
            let stop = shutdown.clone();
            shutdown.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {
                        let _ = open.send(true);
                    }
                    _ = stop.triggered() => {}
                }
            });
        }
        Ok(engine)
    }

    /// Completes when the engine cannot go on and must be stopped: the input topic
    /// grew past the partition count it runs on ([`PartitionsChanged`]). Ingest has
    /// stopped consuming the new partitions, so their records wait in the topic.
    pub async fn failed(&self) -> PartitionsChanged {
        let mut grown = self.grown.clone();
        let partition = match grown.wait_for(Option::is_some).await {
            Ok(p) => p.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        };
        let kafka = self.kafka.clone();
        let now = tokio::task::spawn_blocking(move || {
            mpn_kafka::admin::partition_count(&kafka, &kafka.input_topic, Duration::from_secs(10))
        })
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .unwrap_or(partition as usize + 1);
        PartitionsChanged::new(&self.kafka, self.partitions, now)
    }

    /// The memory source of an engine built with [`EngineBuilder::memory_source`]
    /// (once).
    pub fn take_memory_source(&mut self) -> Option<MemorySource> {
        self.memory.take()
    }

    /// Re-reads the credentials file (`auth.credentials_file`) and the gRPC TLS
    /// files (the binary calls it on SIGHUP). What cannot be loaded is refused and
    /// logged; what was in force stays.
    ///
    /// The work (Argon2 for the new table's decoy hash, parsing the TLS files) runs
    /// on tokio's blocking pool, never on an async worker; reloads run one at a time.
    pub async fn reload(&self) -> crate::security::Reloaded {
        let security = self.security.clone();
        let reloaded = tokio::task::spawn_blocking(move || security.reload())
            .await
            .unwrap_or_else(|e| {
                let error = Some(format!("the reload task failed: {e}"));
                crate::security::Reloaded {
                    credentials_error: error.clone(),
                    subscriptions_ended: 0,
                    tls_error: error,
                    tls_changed: false,
                }
            });
        // Institutions granted by new credentials get their history from now on.
        if let Some(w) = &self.writers {
            w.set_institutions(self.hub.authenticator().institutions());
        }
        reloaded
    }

    /// The payment history, when `history.database_url` is set (the console reads
    /// it); [`HistoryHandle::get`](mpn_history::HistoryHandle::get) says whether its
    /// database is open yet.
    pub fn history(&self) -> Option<&mpn_history::HistoryHandle> {
        self.history.as_ref()
    }

    /// The history writers of this replica.
    pub fn history_writers(&self) -> Option<&Arc<mpn_history::Writers>> {
        self.writers.as_ref()
    }

    /// Starts consuming (for [`IngestStart::Manual`]).
    pub fn open_ingest(&self) {
        let _ = self.open.send(true);
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The operator's views and actions (the admin API).
    pub fn admin(&self) -> crate::admin::Admin {
        self.admin.clone()
    }

    /// What `/readyz` and the gRPC health service report.
    pub fn readiness(&self) -> &crate::health::Readiness {
        &self.readiness
    }

    pub fn tracker(&self) -> &OffsetTracker {
        &self.tracker
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The CAFIS links this replica owns right now.
    pub fn cafis_links(&self) -> &Arc<crate::cafis::Links> {
        &self.links
    }

    /// Graceful stop (drain): stop consuming; give connected subscribers up to
    /// `ingest.drain_timeout_ms` to acknowledge what is in flight; commit what is
    /// finalised; then close the subscriptions, handing back what is still
    /// unacknowledged (it stays uncommitted and is delivered again after a restart);
    /// last, wait (bounded) for every task the engine spawned.
    pub async fn shutdown(self) -> Stopped {
        // Not ready from the first moment: load balancers stop sending new streams.
        self.readiness.stopping();
        self.stop_ingest.trigger();
        if let Some(ingest) = self.ingest {
            let _ = ingest.await;
        }
        let drained = tokio::time::timeout(self.drain_timeout, self.tracker.wait_below(1))
            .await
            .is_ok();
        tracing::info!(
            drained,
            in_flight = self.tracker.in_flight(),
            "consumption stopped"
        );
        // Links hand back what their hosts have not answered (it stays below their
        // cursors and is resent after the restart).
        self.links.shutdown().await;
        // So do the history writers: what they have not committed is read again.
        if let Some(w) = &self.writers {
            w.shutdown().await;
        }
        // Every cursor is saved while ingest's positions are still known (the
        // consumer's close revokes them): live cursors move with what was offered.
        for s in self.hub.all() {
            s.save_cursors();
        }
        // What is unfinished now is handed back, even if a session finishes it while
        // the streams close: it was not delivered to the detached subscribers.
        self.tracker.seal();
        self.shutdown.trigger();
        if let Some(committer) = self.committer {
            let _ = committer.await;
        }
        let _ = self.dlq.await;
        // Every stream task ends at once on shutdown; the server then waits for the
        // connections to close, which a client that stopped reading never does:
        // bounded, then the connections are dropped.
        let mut grpc = self.grpc;
        let grace = self.drain_timeout.max(Duration::from_secs(1));
        if tokio::time::timeout(grace, &mut grpc).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "gRPC connections still open after shutdown; closing them"
            );
            grpc.abort();
            let _ = grpc.await;
        }
        let _ = self.flusher.await;
        // Every task the engine spawned (stream tasks, catch-up readers, dead-letter
        // writes, links, tickers) ends on the signal: waited for, bounded.
        let left = self.shutdown.wait(grace).await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                grace_ms = grace.as_millis() as u64,
                "tasks still running after shutdown"
            );
        }
        // Every stream has ended: the cursors now hold every acknowledgement.
        if let Err(e) = self.hub.flush_cursors().await {
            tracing::error!(error = %e, "final cursor flush failed; subscribers will see redeliveries");
        }
        self.actors.stop();
        tracing::info!("engine stopped");
        Stopped {
            drained,
            tasks_left: left,
        }
    }
}

/// What start-up reads before anything runs: the partition count (pinned in the
/// cursor topic at the first start, refused when it changed), the cursors, and where
/// new CAFIS links start (the group's committed offsets, before ingest consumes).
struct Prepared {
    partitions: usize,
    cursors: Arc<CursorStore>,
    link_start: Vec<i64>,
}

async fn prepare(config: &Config, shutdown: &Shutdown) -> crate::error::Result<Prepared> {
    let started = std::time::Instant::now();
    let timeout = Duration::from_secs(10);
    mpn_kafka::admin::ensure_topics(&config.kafka, timeout).await?;
    crate::security::ensure_audit_topic(config, timeout).await?;
    let partitions = {
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || {
            mpn_kafka::admin::partition_count(&kafka, &kafka.input_topic, timeout)
        })
        .await??
        .ok_or_else(|| {
            Error::Runtime(format!(
                "input topic {} has no partitions",
                config.kafka.input_topic
            ))
        })?
    };
    let cursors = CursorStore::load(&config.kafka, shutdown).await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cursors loaded"
    );
    let topic = &config.kafka.input_topic;
    match cursors.pinned_partitions(topic) {
        None => cursors.pin_partitions(topic, partitions).await?,
        Some(pinned) if pinned == partitions => {}
        Some(pinned) => {
            return Err(PartitionsChanged::new(&config.kafka, pinned, partitions).into());
        }
    }
    // New internal subscribers (CAFIS links, history writers) start where the group
    // stood before this replica consumed: read at attach time it may already be past
    // records they never saw.
    let link_start = if config.cafis.links.is_empty() && !config.history.enabled() {
        Vec::new()
    } else {
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || {
            crate::subscriptions::group_start(&kafka, partitions, timeout)
        })
        .await?
        .map_err(Error::kafka(
            "reading the group's committed offsets for the CAFIS links and history writers",
        ))?
    };
    Ok(Prepared {
        partitions,
        cursors,
        link_start,
    })
}

/// What the ticker reads.
struct Ticked {
    hub: Arc<Hub>,
    tracker: OffsetTracker,
    links: Arc<crate::cafis::Links>,
    writers: Option<Arc<mpn_history::Writers>>,
    /// The broker's high watermark per partition, as the probe last read it.
    high_watermarks: Arc<std::sync::Mutex<std::collections::HashMap<i32, i64>>>,
}

/// Every second: cursors saved again (see `SubState::save_cursors`), and every gauge
/// set again for the operator's dashboards (per-subscriber lag among them).
fn spawn_ticker(shutdown: &Shutdown, t: Ticked) {
    use crate::telemetry::metric;
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.triggered() => break,
                _ = tick.tick() => {
                    for s in t.hub.all() {
                        s.save_cursors();
                        let subscriber = mpn_delivery::labels::subscriber_label(s.id, &s.name);
                        metrics::gauge!(metric::SUBSCRIBER_QUEUE_DEPTH, "subscriber" => subscriber)
                            .set(s.queue.depth() as f64);
                    }
                    // Every gauge is set again each second: the exporter drops
                    // series not set for `telemetry::SERIES_IDLE`, which is how
                    // a departed subscriber's lag series goes away.
                    for (s, lag) in crate::subscriptions::lag_by_subscriber(&t.hub, |p| t.tracker.consumed_next(p)) {
                        let subscriber = mpn_delivery::labels::subscriber_label(s.id, &s.name);
                        metrics::gauge!(metric::SUBSCRIBER_LAG, "subscriber" => subscriber).set(lag as f64);
                    }
                    metrics::gauge!(metric::INGEST_IN_FLIGHT).set(t.tracker.in_flight() as f64);
                    for (p, o) in t.tracker.committed_positions() {
                        metrics::gauge!(metric::OFFSETS_COMMITTED, "partition" => p.to_string()).set(o as f64);
                    }
                    for (p, lag) in consumer_lag(&t.tracker, &t.high_watermarks) {
                        metrics::gauge!(metric::INGEST_CONSUMER_LAG, "partition" => p.to_string()).set(lag as f64);
                    }
                    metrics::gauge!(metric::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                    t.links.report_gauges();
                    if let Some(w) = &t.writers {
                        w.report_gauges();
                    }
                    mpn_grpc::report_gauges();
                }
            }
        }
    });
}

/// Per partition this replica consumes: the broker's high watermark (as the probe
/// last read it) minus the next offset ingest will consume, never below 0. On a
/// broker that reports a wrong high watermark (Tansu 0.6: the last batch's base
/// offset + 1) this reads low.
fn consumer_lag(
    tracker: &OffsetTracker,
    high_watermarks: &std::sync::Mutex<std::collections::HashMap<i32, i64>>,
) -> Vec<(i32, i64)> {
    let hw = high_watermarks.lock().unwrap_or_else(|p| p.into_inner());
    tracker
        .consumption_positions()
        .into_iter()
        .filter_map(|(p, next)| Some((p, (hw.get(&p)? - next).max(0))))
        .collect()
}

/// Every [`crate::health::PROBE_INTERVAL`], through the dead-letter producer's client
/// (it has a broker connection already and nothing it asks touches ingest's consumer):
/// asks the broker for the input topic's metadata — the answer, or its absence within the interval, is the `kafka`
/// readiness check — and then for the high watermark of each partition ingest
/// consumes (the consumer-lag gauge; read here, not from ingest's own fetches, so it
/// keeps moving while ingest waits at `ingest.max_in_flight`).
fn spawn_kafka_probe(
    shutdown: &Shutdown,
    config: &Config,
    producer: FutureProducer,
    tracker: OffsetTracker,
    high_watermarks: Arc<std::sync::Mutex<std::collections::HashMap<i32, i64>>>,
    readiness: crate::health::Readiness,
) {
    use rdkafka::producer::Producer as _;
    let stop = shutdown.clone();
    let topic = config.kafka.input_topic.clone();
    shutdown.spawn(async move {
        let interval = crate::health::PROBE_INTERVAL;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.triggered() => break,
                _ = tick.tick() => {
                    let (dlq, t, hw) = (producer.clone(), topic.clone(), high_watermarks.clone());
                    let partitions: Vec<i32> =
                        tracker.consumption_positions().into_iter().map(|(p, _)| p).collect();
                    let probe = tokio::task::spawn_blocking(move || {
                        let started = std::time::Instant::now();
                        let c = dlq.client();
                        let ok = c.fetch_metadata(Some(&t), interval).is_ok_and(|md| {
                            md.topics()
                                .iter()
                                .any(|x| x.error().is_none() && !x.partitions().is_empty())
                        });
                        if ok {
                            let mut read = std::collections::HashMap::new();
                            for &p in &partitions {
                                // Within the interval, all partitions together.
                                let left = interval.saturating_sub(started.elapsed());
                                if left.is_zero() {
                                    break;
                                }
                                if let Ok((_, high)) = c.fetch_watermarks(&t, p, left) {
                                    read.insert(p, high);
                                }
                            }
                            // A partition not read this time (a slow leader) keeps
                            // its last value rather than losing its series; one no
                            // longer consumed here goes.
                            let mut hw = hw.lock().unwrap_or_else(|p| p.into_inner());
                            hw.retain(|p, _| partitions.contains(p));
                            hw.extend(read);
                        }
                        ok
                    });
                    let ok = tokio::select! {
                        r = probe => r.unwrap_or(false),
                        _ = stop.triggered() => break,
                    };
                    readiness.set(Check::Kafka, ok);
                }
            }
        }
    });
}

/// The actix system thread and its session arbiters.
#[derive(Debug)]
struct Actors {
    system: actix::System,
    arbiters: Vec<ArbiterHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Actors {
    fn start(threads: usize) -> crate::error::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mpn-actors".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                let arbiters: Vec<actix::Arbiter> =
                    (0..threads).map(|_| actix::Arbiter::new()).collect();
                let handles = arbiters.iter().map(|a| a.handle()).collect::<Vec<_>>();
                let _ = tx.send((actix::System::current(), handles));
                let _ = system.run();
                for a in arbiters {
                    a.stop();
                    let _ = a.join();
                }
            })
            .map_err(|e| Error::Runtime(format!("cannot start the actor thread: {e}")))?;
        let (system, arbiters) = rx
            .recv()
            .map_err(|_| Error::Runtime("the actor system did not start".into()))?;
        Ok(Self {
            system,
            arbiters,
            thread: Some(thread),
        })
    }

    fn stop(self) {
        drop(self);
    }
}

/// The actor thread ends with its owner: after a shutdown, and after a start that
/// failed once the actors were running.
impl Drop for Actors {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops the history's expired months every `history.sweep_interval_ms` (each
/// replica: a month dropped twice is dropped once, the other attempt logs it).
fn spawn_history_sweeper(
    shutdown: &Shutdown,
    history: mpn_history::HistoryHandle,
    config: &mpn_history::Config,
) {
    let (every, days, stop) = (
        config.sweep_interval,
        config.retention_days,
        shutdown.clone(),
    );
    shutdown.spawn(async move {
        let history = tokio::select! {
            h = history.opened() => match h {
                Some(h) => h,
                None => return,
            },
            _ = stop.triggered() => return,
        };
        loop {
            match history.expire(days).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, retention_days = days, "history: expired rows removed"),
                Err(e) => tracing::warn!(error = %e, "history: retention sweep failed; trying again later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.triggered() => return,
            }
        }
    });
}

/// Opens the history's database (connect, migrate), retrying with back-off (1 s
/// doubling to 30 s) until it answers or the engine stops; every failure is logged,
/// transient or not (a wrong password is fixed in its Secret while notifications go
/// on).
fn spawn_history_opener(
    shutdown: &Shutdown,
    config: mpn_history::Config,
    keys: mpn_history::Keyring,
    opened: tokio::sync::watch::Sender<Option<Arc<mpn_history::History>>>,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let attempt = mpn_history::History::open_with(&config, keys.clone());
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.triggered() => return,
            };
            match result {
                Ok(history) => {
                    tracing::info!(
                        database = %mpn_history::config::mask_url(&config.database_url),
                        "history database open"
                    );
                    opened.send_replace(Some(Arc::new(history)));
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        transient = e.is_unreachable(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "history database not open; notifications go on, the history waits"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.triggered() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    });
}
