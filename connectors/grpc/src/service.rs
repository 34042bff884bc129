//! The `mpn.notify.v1.Notify` service and the per-subscription task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mpn_proto::mpn::notify::v1 as pb;
use pb::notify_server::{Notify, NotifyServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use mpn_delivery::{
    Attachment, Backend, Credentials, DeliveryToken, Outbound, Principal, Release, SubscriberQueue,
    queue::Ended,
};

use crate::{Config, metadata, status};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves the Notify, health and reflection services on `listener` until `shutdown`
/// is cancelled; every subscription task is spawned on `tasks`. Open subscriptions are then closed with UNAVAILABLE and their
/// undelivered notifications handed back ([`Release::Shutdown`]).
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    config: Config,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NotifyServer<NotifyService<B>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mpn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (keepalive, keepalive_timeout) = (config.keepalive_interval, config.keepalive_timeout);
    let service = NotifyService {
        logins: Arc::new(Logins::new(config.max_pending_logins)),
        backend,
        config,
        shutdown: shutdown.clone(),
        tasks,
    };
    let stop = shutdown;
    tonic::transport::Server::builder()
        // A peer that stopped reading or vanished is found by HTTP/2 pings (not
        // subject to flow control) and TCP keepalive, and its connection closed.
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(NotifyServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener, &keepalive), async move {
            stop.cancelled().await;
            health
                .set_not_serving::<NotifyServer<NotifyService<B>>>()
                .await;
        })
        .await?;
    Ok(())
}

/// Accepted connections with TCP keepalive on (tonic ignores its own TCP settings
/// for a listener it did not bind) and Nagle off.
fn incoming(
    listener: TcpListener,
    keepalive: &std::time::Duration,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    let keepalive = socket2::TcpKeepalive::new().with_time(*keepalive);
    TcpListenerStream::new(listener).map(move |conn| {
        let conn = conn?;
        let _ = conn.set_nodelay(true);
        if let Err(e) = socket2::SockRef::from(&conn).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
        Ok(conn)
    })
}

#[derive(Debug)]
pub struct NotifyService<B> {
    backend: Arc<B>,
    config: Config,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    logins: Arc<Logins>,
}

/// Bounds what unauthenticated callers can cost: at most `pending` logins are
/// admitted at a time (the rest are refused at once), and at most one Argon2
/// verification per core runs at a time, so a flood of logins can neither exhaust
/// memory (Argon2 takes its memory per verification) nor take every blocking thread
/// from the catch-up readers that share tokio's blocking pool.
#[derive(Debug)]
struct Logins {
    pending: Arc<tokio::sync::Semaphore>,
    verifying: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl Logins {
    fn new(pending: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            pending: Arc::new(tokio::sync::Semaphore::new(pending)),
            verifying: Arc::new(tokio::sync::Semaphore::new(cores)),
            limit: pending,
        }
    }
}

fn credentials(md: &MetadataMap) -> Result<Credentials, Status> {
    let get = |key: &str| -> Result<String, Status> {
        let v = md
            .get(key)
            .ok_or_else(|| Status::unauthenticated(format!("metadata `{key}` is required")))?;
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| Status::unauthenticated(format!("metadata `{key}` must be ASCII")))
    };
    Ok(Credentials {
        institution: get(metadata::INSTITUTION)?,
        login_id: get(metadata::LOGIN_ID)?,
        secret: get(metadata::SECRET)?,
    })
}

impl<B: Backend> NotifyService<B> {
    async fn authenticate_call(&self, md: &MetadataMap) -> Result<Principal, Status> {
        let creds = credentials(md)?;
        let Ok(_admitted) = self.logins.pending.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::GRPC_LOGINS_REFUSED_TOTAL).increment(1);
            return Err(Status::resource_exhausted(format!(
                "more than {} logins in progress (grpc.max_pending_logins); retry shortly",
                self.logins.limit
            )));
        };
        let verifying = self
            .logins
            .verifying
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::internal("authentication closed"))?;
        let backend = self.backend.clone();
        let c = creds.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _verifying = verifying;
            backend.authenticate(&c)
        })
        .await
        .map_err(|_| Status::internal("authentication task failed"))?;
        result.map_err(|e| {
            metrics::counter!(crate::metrics::GRPC_AUTH_FAILURES_TOTAL).increment(1);
            tracing::warn!(
                institution = %creds.institution,
                login_id = %creds.login_id,
                reason = %e,
                "authentication failed"
            );
            status::refused(e)
        })
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

type ServerStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

#[tonic::async_trait]
impl<B: Backend> Notify for NotifyService<B> {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let p = self.authenticate_call(request.metadata()).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            granted_institutions: p.granted,
            login_id: p.login_id,
        }))
    }

    type SubscribeStream = ServerStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<ServerStream>, Status> {
        let principal = self.authenticate_call(request.metadata()).await?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.config.subscribe_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no `subscribe` message received in time"))??;
        let Some(pb::ClientMessage {
            message: Some(pb::client_message::Message::Subscribe(req)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be `subscribe`",
            ));
        };
        let request = status::attach_request(&req);
        let (queue, queue_rx) = SubscriberQueue::channel(self.config.queue_capacity);
        let ended = queue.ended();
        // Attaching may ask Kafka for positions: keep it off the async workers.
        let (backend, p) = (self.backend.clone(), principal.clone());
        let attachment = tokio::task::spawn_blocking(move || backend.attach(&p, &request, queue))
            .await
            .map_err(|_| Status::internal("attach task failed"))?
            .inspect_err(|e| {
                tracing::warn!(
                    institution = %principal.institution,
                    login_id = %principal.login_id,
                    reason = %e,
                    "subscription refused"
                );
            })
            .map_err(status::refused)?;
        tracing::info!(
            login_id = %principal.login_id,
            subscriber = %req.subscriber_name,
            subscriber_id = %req.subscriber_id,
            institutions = ?attachment.institutions,
            "subscriber attached"
        );
        let (out, out_rx) = mpsc::channel(64);
        let subscribed = pb::Subscribed {
            institutions: attachment.institutions.clone(),
            ack_window: self.config.ack_window,
            heartbeat_interval_ms: u32::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
        };
        let _ = out
            .send(Ok(pb::ServerMessage {
                message: Some(pb::server_message::Message::Subscribed(subscribed)),
            }))
            .await;
        let task = Subscription {
            config: self.config.clone(),
            inbound,
            out,
            queue_rx,
            ended,
            shutdown: self.shutdown.clone(),
            in_flight: BTreeMap::new(),
            last_seq: 0,
            login_id: principal.login_id,
        };
        self.tasks.spawn(task.run(attachment));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// One open subscription: moves notifications from its queue to the stream within
/// the ack window and applies the client's acknowledgements.
struct Subscription {
    config: Config,
    inbound: Streaming<pb::ClientMessage>,
    out: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    queue_rx: mpsc::Receiver<Outbound>,
    ended: Ended,
    shutdown: CancellationToken,
    /// Sent, unacknowledged notifications by seq, with when they were sent.
    in_flight: BTreeMap<u64, (Instant, Box<dyn DeliveryToken>)>,
    last_seq: u64,
    login_id: String,
}

enum End {
    Status(Status),
    ClientGone,
}

/// Open subscriptions of this process (`mpn_grpc_subscribers`).
static OPEN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Sets `mpn_grpc_subscribers` again (gauges not set for a while are dropped by the
/// exporter, see the engine's `telemetry`).
pub fn report_gauges() {
    metrics::gauge!(crate::metrics::GRPC_SUBSCRIBERS)
        .set(OPEN.load(std::sync::atomic::Ordering::Relaxed) as f64);
}

impl Subscription {
    async fn run(mut self, attachment: Attachment) {
        OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        report_gauges();
        let end = self.pump().await;
        // Detach first so the engine stops offering, then settle everything we hold.
        drop(attachment);
        let shutting_down = self.shutdown.is_cancelled();
        let how = if shutting_down {
            Release::Shutdown
        } else {
            Release::SubscriberGone
        };
        for (_, (_, token)) in std::mem::take(&mut self.in_flight) {
            token.release(how);
        }
        self.queue_rx.close();
        while let Ok(item) = self.queue_rx.try_recv() {
            item.token.release(how);
        }
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        report_gauges();
        match end {
            End::Status(status) => {
                tracing::info!(login_id = %self.login_id, code = ?status.code(), message = status.message(), "subscription closed");
                // A client that stopped reading may never take it: bounded.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    self.out.send(Err(status)),
                )
                .await;
            }
            End::ClientGone => tracing::info!(login_id = %self.login_id, "subscriber disconnected"),
        }
    }

    /// Every await here is one branch of the `select!`: a client whose HTTP/2 window
    /// stays shut (it stopped reading) cannot keep the task from seeing a kick,
    /// shutdown or its ack deadline. The next message waits in `outgoing` until the
    /// stream has room; nothing more is taken from the queue meanwhile.
    async fn pump(&mut self) -> End {
        enum Step {
            Shutdown,
            Kicked(mpn_delivery::EndReason),
            Client(Result<Option<pb::ClientMessage>, Status>),
            Queued(Option<Outbound>),
            Sent,
            StreamGone,
            Idle,
            AckOverdue,
            StreamStalled,
        }
        let window = self.config.ack_window as usize;
        let heartbeat = self.config.heartbeat_interval;
        let mut idle_until = Instant::now() + heartbeat;
        let mut outgoing: Option<pb::ServerMessage> = None;
        // When the message in `outgoing` started waiting for room: a stream that
        // takes nothing (not even a heart-beat) for the ack timeout is cut off too,
        // even with nothing in flight (its queued notifications hold offsets).
        let mut waiting_since = Instant::now();
        loop {
            let can_take = outgoing.is_none() && self.in_flight.len() < window;
            // The oldest unacknowledged notification sets the ack deadline.
            let ack_deadline = self
                .in_flight
                .values()
                .next()
                .map(|(sent, _)| *sent + self.config.ack_timeout);
            let step = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => Step::Shutdown,
                reason = self.ended.wait() => Step::Kicked(reason),
                msg = self.inbound.message() => Step::Client(msg),
                _ = sleep_until(ack_deadline.unwrap_or(idle_until)), if ack_deadline.is_some() => Step::AckOverdue,
                _ = sleep_until(waiting_since + self.config.ack_timeout), if outgoing.is_some() => Step::StreamStalled,
                permit = self.out.reserve(), if outgoing.is_some() => match (permit, outgoing.take()) {
                    (Ok(permit), Some(m)) => {
                        permit.send(Ok(m));
                        Step::Sent
                    }
                    _ => Step::StreamGone,
                },
                item = self.queue_rx.recv(), if can_take => Step::Queued(item),
                _ = sleep_until(idle_until), if outgoing.is_none() => Step::Idle,
            };
            let message = match step {
                Step::Shutdown => {
                    return End::Status(Status::unavailable(
                        "server shutting down; reconnect to resume",
                    ));
                }
                Step::Kicked(reason) => return End::Status(status::ended(&reason)),
                Step::Client(Ok(Some(m))) => match self.on_client_message(m) {
                    Ok(()) => continue,
                    Err(status) => return End::Status(status),
                },
                Step::Client(Ok(None) | Err(_)) | Step::StreamGone => return End::ClientGone,
                Step::AckOverdue => {
                    metrics::counter!(crate::metrics::GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL)
                        .increment(1);
                    return End::Status(Status::deadline_exceeded(format!(
                        "no acknowledgement for {} ms; reconnect to resume",
                        self.config.ack_timeout.as_millis()
                    )));
                }
                Step::StreamStalled => {
                    metrics::counter!(crate::metrics::GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL)
                        .increment(1);
                    return End::Status(Status::deadline_exceeded(format!(
                        "the stream took nothing for {} ms (not reading); reconnect to resume",
                        self.config.ack_timeout.as_millis()
                    )));
                }
                Step::Sent => {
                    idle_until = Instant::now() + heartbeat;
                    continue;
                }
                Step::Queued(None) => {
                    return End::Status(Status::unavailable("engine detached this subscription"));
                }
                Step::Queued(Some(item)) => {
                    self.last_seq += 1;
                    // The last holder (an institution with one subscriber, once its
                    // session moved on) stamps the notification in place; otherwise copy.
                    let mut n = Arc::try_unwrap(item.notification)
                        .unwrap_or_else(|shared| (*shared).clone());
                    n.seq = self.last_seq;
                    self.in_flight
                        .insert(self.last_seq, (Instant::now(), item.token));
                    metrics::counter!(crate::metrics::GRPC_NOTIFICATIONS_SENT_TOTAL).increment(1);
                    pb::server_message::Message::Notification(n)
                }
                Step::Idle => pb::server_message::Message::Heartbeat(pb::Heartbeat {
                    server_time_us: now_us(),
                }),
            };
            outgoing = Some(pb::ServerMessage {
                message: Some(message),
            });
            waiting_since = Instant::now();
        }
    }

    fn on_client_message(&mut self, m: pb::ClientMessage) -> Result<(), Status> {
        match m.message {
            Some(pb::client_message::Message::Ack(ack)) => self.on_ack(ack),
            Some(pb::client_message::Message::Subscribe(_)) => Err(Status::invalid_argument(
                "`subscribe` may be sent only once, as the first message",
            )),
            None => Err(Status::invalid_argument("empty client message")),
        }
    }

    fn on_ack(&mut self, ack: pb::Ack) -> Result<(), Status> {
        let beyond = |s: u64| s > self.last_seq;
        if beyond(ack.up_to_seq) || ack.seqs.iter().any(|&s| s == 0 || beyond(s)) {
            return Err(Status::invalid_argument(format!(
                "ack refers to a seq that was never sent (sent 1..={})",
                self.last_seq
            )));
        }
        let mut acked = 0u64;
        if ack.up_to_seq > 0 {
            let rest = self.in_flight.split_off(&(ack.up_to_seq + 1));
            for (_, (_, token)) in std::mem::replace(&mut self.in_flight, rest) {
                token.release(Release::Acked);
                acked += 1;
            }
        }
        for s in ack.seqs {
            if let Some((_, token)) = self.in_flight.remove(&s) {
                token.release(Release::Acked);
                acked += 1;
            }
        }
        metrics::counter!(crate::metrics::GRPC_ACKS_TOTAL).increment(acked);
        Ok(())
    }
}
