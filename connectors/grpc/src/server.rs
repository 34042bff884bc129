//! The `mpn.notify.v1.Notify` service: authentication, the `subscribe` handshake and
//! attaching to the engine; each subscription then runs as a `pump` task.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt as _;
use mpn_proto::frame::Frame;
use mpn_proto::frames::notify_server::{Notify, NotifyServer};
use mpn_proto::mpn::notify::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use mpn_delivery::{Backend, Caller, Credentials, Principal, SubscriberQueue};

use crate::{Config, metadata, status};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves the Notify, health and reflection services on `listener` until `shutdown`
/// is cancelled; every subscription task is spawned on `tasks`. The health service
/// answers SERVING for "" while `ready` says the process is ready, and for the
/// Notify service while it says subscriptions can be served. Open subscriptions are then closed with UNAVAILABLE and their
/// undelivered notifications handed back ([`Release::Shutdown`]).
///
/// With `tls` the handshake is done per connection (see [`crate::tls`]) and the
/// files are watched for changes; without it the service is plaintext, which is
/// logged loudly unless the address is loopback.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    config: Config,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    mut ready: tokio::sync::watch::Receiver<crate::Serving>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().ok();
    match &tls {
        Some(tls) => {
            tasks.spawn(tls.clone().watch(shutdown.clone()));
        }
        None if local.is_some_and(|a| !a.ip().is_loopback()) => {
            tracing::warn!(
                addr = ?local,
                "PLAINTEXT gRPC on a non-loopback address: credentials and notifications \
                 cross the network in clear; set [grpc.tls] cert_file and key_file"
            );
        }
        None => {}
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    {
        let (health, stop) = (health.clone(), shutdown.clone());
        tasks.spawn(async move {
            use tonic_health::ServingStatus::{NotServing, Serving};
            let notify = <NotifyServer<NotifyService<B>> as tonic::server::NamedService>::NAME;
            let status = |on: bool| if on { Serving } else { NotServing };
            loop {
                let now = *ready.borrow_and_update();
                health.set_service_status("", status(now.ready)).await;
                health
                    .set_service_status(notify, status(now.subscriptions))
                    .await;
                tokio::select! {
                    changed = ready.changed() => if changed.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
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
        tasks: tasks.clone(),
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
        .serve_with_incoming_shutdown(
            crate::tls::incoming(listener, keepalive, tls, stop.clone(), tasks),
            async move {
                stop.cancelled().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<NotifyServer<NotifyService<B>>>()
                    .await;
            },
        )
        .await?;
    Ok(())
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

/// Who calls: the metadata login (required unless a verified client certificate
/// identifies the caller), the certificate's names and the peer address.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let md = request.metadata();
    let certificate_names = crate::tls::certificate_names(request);
    let sent = [metadata::INSTITUTION, metadata::LOGIN_ID, metadata::SECRET]
        .iter()
        .any(|k| md.get(*k).is_some());
    let credentials = if sent || certificate_names.is_none() {
        Some(credentials(md)?)
    } else {
        None
    };
    Ok(Caller {
        credentials,
        certificate_names,
        peer: crate::tls::peer(request),
    })
}

impl<B: Backend> NotifyService<B> {
    async fn authenticate_call<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let caller = caller(request)?;
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
        let c = caller.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _verifying = verifying;
            backend.authenticate(&c)
        })
        .await
        .map_err(|_| Status::internal("authentication task failed"))?;
        result.map_err(|e| {
            // The engine counts and audits the failure; the caller's names are
            // client-chosen, so bounded and escaped.
            let (institution, login_id) = caller.credentials.as_ref().map_or_else(
                || (String::new(), String::new()),
                |c| {
                    (
                        mpn_delivery::display_name(&c.institution),
                        mpn_delivery::display_name(&c.login_id),
                    )
                },
            );
            tracing::warn!(
                %institution,
                %login_id,
                peer = ?caller.peer,
                certificate = caller.certificate_names.is_some(),
                reason = %e,
                "authentication failed"
            );
            status::refused(e)
        })
    }
}

/// The response stream: the subscription task's frames. Its closing status is boxed
/// in the channel, so that a slot holds a small frame, not a `Status`.
type ServerStream = futures::stream::Map<
    ReceiverStream<Result<Frame, Box<Status>>>,
    fn(Result<Frame, Box<Status>>) -> Result<Frame, Status>,
>;

fn unbox(item: Result<Frame, Box<Status>>) -> Result<Frame, Status> {
    item.map_err(|s| *s)
}

#[tonic::async_trait]
impl<B: Backend> Notify for NotifyService<B> {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let p = self.authenticate_call(&request).await?;
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
        let principal = self.authenticate_call(&request).await?;
        let remote_addr = crate::tls::remote_addr(&request);
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
        let request = status::attach_request(&req, remote_addr);
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
            subscriber = %mpn_delivery::display_name(&req.subscriber_name),
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
            .send(Ok(Frame::Message(Box::new(pb::ServerMessage {
                message: Some(pb::server_message::Message::Subscribed(subscribed)),
            }))))
            .await;
        let task = crate::pump::Subscription {
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
        let unbox: fn(_) -> _ = unbox;
        Ok(Response::new(ReceiverStream::new(out_rx).map(unbox)))
    }
}
