//! A billing-system client of the `mpn.notify.v1.Notify` service.

use mpn_proto::mpn::notify::v1 as pb;
use pb::notify_client::NotifyClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

/// A credential, as the subscriber presents it.
#[derive(Clone)]
pub struct Login {
    pub institution: String,
    pub login_id: String,
    pub secret: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("institution", &self.institution)
            .field("login_id", &self.login_id)
            .finish_non_exhaustive()
    }
}

impl Login {
    fn authorize<T>(&self, req: &mut Request<T>) -> Result<(), Status> {
        let md = req.metadata_mut();
        for (k, v) in [
            ("mpn-institution", &self.institution),
            ("mpn-login-id", &self.login_id),
            ("mpn-secret", &self.secret),
        ] {
            let v = v
                .parse()
                .map_err(|_| Status::invalid_argument(format!("{k} is not ASCII")))?;
            md.insert(k, v);
        }
        Ok(())
    }
}

async fn client(addr: &str) -> Result<NotifyClient<Channel>, Status> {
    Ok(NotifyClient::new(channel(addr).await?))
}

async fn channel(addr: &str) -> Result<Channel, Status> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(url)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect to {addr}: {e}")))?;
    Ok(channel)
}

/// Calls `Authenticate` on `channel` (without metadata when `login` is `None`);
/// returns the granted institutions.
pub async fn authenticate_on(
    channel: Channel,
    login: Option<&Login>,
) -> Result<Vec<String>, Status> {
    let mut c = NotifyClient::new(channel);
    let mut req = Request::new(pb::AuthenticateRequest {});
    if let Some(login) = login {
        login.authorize(&mut req)?;
    }
    Ok(c.authenticate(req).await?.into_inner().granted_institutions)
}

/// Calls `Authenticate`; returns the granted institutions.
pub async fn authenticate(addr: &str, login: &Login) -> Result<Vec<String>, Status> {
    let mut c = client(addr).await?;
    let mut req = Request::new(pb::AuthenticateRequest {});
    login.authorize(&mut req)?;
    Ok(c.authenticate(req).await?.into_inner().granted_institutions)
}

/// An open subscription.
#[derive(Debug)]
pub struct Subscriber {
    acks: mpsc::Sender<pb::ClientMessage>,
    inbound: Streaming<pb::ServerMessage>,
    pub subscribed: pb::Subscribed,
    pub heartbeats: u64,
}

impl Subscriber {
    /// An ephemeral subscription to `institutions` (empty = every granted one).
    pub async fn connect(
        addr: &str,
        login: &Login,
        institutions: &[String],
        name: &str,
    ) -> Result<Self, Status> {
        let request = pb::SubscribeRequest {
            institutions: institutions.to_vec(),
            subscriber_name: name.to_owned(),
            ..Default::default()
        };
        Self::open(addr, login, request).await
    }

    /// A durable subscription: `subscriber_id` keeps its cursor across connections.
    pub async fn durable(
        addr: &str,
        login: &Login,
        institutions: &[String],
        subscriber_id: &str,
        start_from: pb::StartFrom,
    ) -> Result<Self, Status> {
        let request = pb::SubscribeRequest {
            institutions: institutions.to_vec(),
            subscriber_name: subscriber_id.to_owned(),
            subscriber_id: subscriber_id.to_owned(),
            start_from: start_from as i32,
            start_time_ms: 0,
        };
        Self::open(addr, login, request).await
    }

    /// Opens a subscription with a request as the caller builds it.
    pub async fn open(
        addr: &str,
        login: &Login,
        request: pb::SubscribeRequest,
    ) -> Result<Self, Status> {
        Self::open_on(channel(addr).await?, Some(login), request).await
    }

    /// Opens a subscription on a channel the caller made (e.g. over TLS with a client
    /// certificate); without `login` no credential metadata is sent.
    pub async fn open_on(
        channel: Channel,
        login: Option<&Login>,
        request: pb::SubscribeRequest,
    ) -> Result<Self, Status> {
        let mut c = NotifyClient::new(channel);
        let (tx, rx) = mpsc::channel(1024);
        let subscribe = pb::ClientMessage {
            message: Some(pb::client_message::Message::Subscribe(request)),
        };
        tx.send(subscribe)
            .await
            .map_err(|_| Status::internal("request stream closed"))?;
        let mut req = Request::new(ReceiverStream::new(rx));
        if let Some(login) = login {
            login.authorize(&mut req)?;
        }
        let mut inbound = c.subscribe(req).await?.into_inner();
        let first = inbound.message().await?.and_then(|m| m.message);
        let Some(pb::server_message::Message::Subscribed(subscribed)) = first else {
            return Err(Status::internal(
                "the server did not confirm the subscription",
            ));
        };
        Ok(Self {
            acks: tx,
            inbound,
            subscribed,
            heartbeats: 0,
        })
    }

    /// The next notification (heart-beats are counted and skipped); `None` when the
    /// server ends the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<pb::Notification>, Status> {
        loop {
            match self.inbound.message().await?.and_then(|m| m.message) {
                None => return Ok(None),
                Some(pb::server_message::Message::Notification(n)) => return Ok(Some(n)),
                Some(pb::server_message::Message::Heartbeat(_)) => self.heartbeats += 1,
                Some(pb::server_message::Message::Subscribed(_)) => {
                    return Err(Status::internal("unexpected second `subscribed`"));
                }
            }
        }
    }

    /// Acknowledges every notification up to and including `seq`.
    pub async fn ack(&self, up_to_seq: u64) -> Result<(), Status> {
        let m = pb::ClientMessage {
            message: Some(pb::client_message::Message::Ack(pb::Ack {
                up_to_seq,
                seqs: vec![],
            })),
        };
        self.acks
            .send(m)
            .await
            .map_err(|_| Status::unavailable("subscription closed"))
    }
}
