//! Who is on the other end of a connection: its address and, over TLS, the names of
//! the client certificate the handshake verified.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tonic::Request;

/// What the listener learnt about a connection; tonic hands it to every request of
/// the connection as an extension.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// Names of the verified client certificate (SAN DNS and URI names, subject
    /// CN); `None` without TLS or without a client certificate.
    pub certificate_names: Option<Arc<[String]>>,
}

/// The verified client certificate's names, if the connection presented one.
pub(crate) fn certificate_names<T>(request: &Request<T>) -> Option<Vec<String>> {
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.certificate_names.as_ref())
        .map(|n| n.to_vec())
}

/// The peer's address.
pub(crate) fn peer<T>(request: &Request<T>) -> Option<IpAddr> {
    remote_addr(request).map(|a| a.ip())
}

/// The peer's address and port.
pub(crate) fn remote_addr<T>(request: &Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.remote)
        .or_else(|| request.remote_addr())
}

/// A connection as the server sees it: plain TCP or TLS over TCP, with what the
/// listener learnt about it.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    info: ConnInfo,
}

#[derive(Debug)]
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server's TLS set-up, read from the `[grpc.tls]` files and read again when
/// they change ([`Tls::reload`]): new connections get the current one.
#[derive(Debug)]
pub struct Tls {
    config: crate::TlsConfig,
    current: std::sync::RwLock<(u64, Arc<rustls::ServerConfig>)>,
    /// The fingerprint of the files last looked at (in force or refused): the
    /// watcher parses and logs only when it changes. Held by the watcher and by
    /// [`Tls::reload`] alike from reading the files to putting them in force, so a
    /// check that read older files cannot put them in force over newer ones a
    /// reload read meanwhile.
    seen: std::sync::Mutex<u64>,
}

/// A `[grpc.tls]` file that cannot be used; `key` names the setting.
#[derive(Debug, thiserror::Error)]
#[error("grpc.tls.{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key,
        message: format!("cannot read {path}: {e}"),
    })
}

/// The `[grpc.tls]` files' contents.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

fn read_files(config: &crate::TlsConfig) -> Result<Files, TlsError> {
    Ok(Files {
        cert: read("cert_file", &config.cert_file)?,
        key: read("key_file", &config.key_file)?,
        ca: if config.client_auth == crate::ClientAuth::None {
            Vec::new()
        } else {
            read("client_ca_file", &config.client_ca_file)?
        },
    })
}

/// What the files hold (or why they could not be read): equal fingerprints, same
/// outcome, so nothing is parsed or logged again.
fn fingerprint(files: &Result<Files, TlsError>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match files {
        Ok(f) => {
            0u8.hash(&mut h);
            for p in [&f.cert, &f.key, &f.ca] {
                p.hash(&mut h);
            }
        }
        Err(e) => {
            1u8.hash(&mut h);
            e.to_string().hash(&mut h);
        }
    }
    h.finish()
}

fn build(config: &crate::TlsConfig, files: &Files) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_pem, key_pem, ca_pem) = (&files.cert, &files.key, &files.ca);
    let bad = |key, message: String| TlsError { key, message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert_file", format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad("cert_file", "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| bad("key_file", format!("not a PEM private key: {e}")))?;
    // ring, as chosen for the workspace (no aws-lc build); rustls marks it
    // deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert_file", e.to_string()))?;
    let builder = if config.client_auth == crate::ClientAuth::None {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| bad("client_ca_file", format!("not a PEM CA bundle: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| bad("client_ca_file", e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("client_ca_file", "holds no certificate".into()));
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if config.client_auth == crate::ClientAuth::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier
            .build()
            .map_err(|e| bad("client_ca_file", e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("key_file", format!("does not match cert_file: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

impl Tls {
    /// Reads the files of `config` (TLS on), or `None` (plaintext).
    pub fn load(config: &crate::TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let files = read_files(config);
        let print = fingerprint(&files);
        let current = (print, build(config, &files?)?);
        tracing::info!(
            cert_file = %config.cert_file,
            client_auth = ?config.client_auth,
            "gRPC TLS configured"
        );
        Ok(Some(Arc::new(Self {
            config: config.clone(),
            current: std::sync::RwLock::new(current),
            seen: std::sync::Mutex::new(print),
        })))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(current.1.clone())
    }

    /// Reads the files again; when they changed and are valid, new connections use
    /// them (logged). Files that cannot be used are refused (logged) and the set-up
    /// in force stays. Returns whether the set-up changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let files = read_files(&self.config);
        let print = fingerprint(&files);
        *seen = print;
        self.put_in_force(print, files)
    }

    /// What the watcher does every `reload_interval_ms`: reads the files and, only
    /// when they differ from those last looked at, parses them and puts them in force
    /// (or refuses them, logged once per change). `None`: unchanged, nothing parsed
    /// or logged.
    pub fn check_for_change(&self) -> Option<Result<bool, TlsError>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let files = read_files(&self.config);
        #[cfg(test)]
        tests::after_read();
        let print = fingerprint(&files);
        if *seen == print {
            return None;
        }
        *seen = print;
        Some(self.put_in_force(print, files))
    }

    /// Compares, builds and swaps; called with `seen` held (see its doc).
    fn put_in_force(&self, print: u64, files: Result<Files, TlsError>) -> Result<bool, TlsError> {
        let built = if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == print {
            return Ok(false);
        } else {
            files.and_then(|f| build(&self.config, &f))
        };
        match built {
            Ok(config) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                *current = (print, config);
                tracing::info!(cert_file = %self.config.cert_file, "gRPC TLS files reloaded; new connections use them");
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "gRPC TLS reload refused; the previous certificate stays in force");
                Err(e)
            }
        }
    }

    /// Checks the files every `reload_interval_ms` until `stop`
    /// ([`Tls::check_for_change`]).
    pub(crate) async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.check_for_change()).await;
                }
            }
        }
    }
}

/// The names a verified client certificate answers to: its SAN DNS names and URIs
/// or, only when it has none, the subject's common name (as RFC 6125 has it: a
/// certificate with SAN names is not identified by its CN).
pub fn names_of(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::URI(u) => names.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_owned());
            }
        }
    }
    names
}

/// Why a handshake failed, as `mpn_tls_handshake_failures_total`'s `reason`.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "certificate_required",
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => "unknown_ca",
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "certificate_expired",
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        _ => "protocol",
    }
}

/// A handshake that failed: counted by reason.
fn handshake_failed(reason: &'static str) {
    metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason)
        .increment(1);
}

/// Whether a refusal may be logged now: at most once a second.
fn may_log(last: &mut Option<tokio::time::Instant>) -> bool {
    let now = tokio::time::Instant::now();
    if last.is_none_or(|w| now.duration_since(w) >= std::time::Duration::from_secs(1)) {
        *last = Some(now);
        true
    } else {
        false
    }
}

/// The address a peer's pending handshakes are counted under: an IPv4 address (an
/// IPv4-mapped IPv6 one too) as it is, an IPv6 address by its /64, which one host
/// is commonly given whole.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

type PendingByPeer = Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>;

/// One of a peer's places for a handshake in progress; given back when dropped.
struct PeerSlot {
    pending: PendingByPeer,
    peer: IpAddr,
}

impl PeerSlot {
    /// A place for `peer`, or `None` when it has `cap` handshakes in progress.
    fn take(pending: &PendingByPeer, peer: IpAddr, cap: usize) -> Option<Self> {
        let mut map = pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Self {
            pending: pending.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// How a handshake ended.
enum Handshake {
    Done(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    Refused(std::io::Error),
    TimedOut(&'static str),
}

/// Waits up to `hello_timeout` for the client's first byte, then for the handshake,
/// all within [`HANDSHAKE_TIMEOUT`].
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    hello_timeout: std::time::Duration,
) -> Handshake {
    let started = tokio::time::Instant::now();
    let mut first = [0u8; 1];
    if tokio::time::timeout(hello_timeout, tcp.peek(&mut first))
        .await
        .is_err()
    {
        return Handshake::TimedOut("no ClientHello within grpc.tls.client_hello_timeout_ms");
    }
    match tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Handshake::Done(Box::new(s)),
        Ok(Err(e)) => Handshake::Refused(e),
        Err(_) => Handshake::TimedOut("TLS handshake timed out"),
    }
}

/// Accepted connections: TCP keepalive on, Nagle off, and with TLS the handshake
/// done on a task of its own (on `tasks`, ended by `stop`), so a slow or silent
/// client never holds up the accept loop. A client must send its first byte within
/// `grpc.tls.client_hello_timeout_ms` and finish within [`HANDSHAKE_TIMEOUT`]. At
/// most `grpc.tls.max_pending_handshakes` handshakes run at a time, and at most
/// `grpc.tls.max_pending_handshakes_per_peer` from one address ([`peer_key`]); a
/// connection past either is closed at once, counted and logged (once a second at
/// most).
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
    keepalive: std::time::Duration,
    tls: Option<Arc<Tls>>,
    stop: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let keepalive = socket2::TcpKeepalive::new().with_time(keepalive);
    let pending = Arc::new(tokio::sync::Semaphore::new(
        tls.as_ref()
            .map_or(1, |t| t.config.max_pending_handshakes.max(1)),
    ));
    let by_peer = PendingByPeer::default();
    let (mut warned, mut warned_peer) = (None, None);
    let accept_tasks = tasks.clone();
    accept_tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some(tls) = &tls else {
                let _ = tcp.set_nodelay(true);
                if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                    tracing::debug!(error = %e, "cannot set TCP keepalive");
                }
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info: ConnInfo {
                        remote: Some(remote),
                        certificate_names: None,
                    },
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let cap = tls.config.max_pending_handshakes_per_peer.max(1);
            let Some(peer_slot) = PeerSlot::take(&by_peer, peer_key(remote.ip()), cap) else {
                // Counted before the close, so whoever sees the close sees the count.
                handshake_failed("too_many_pending_from_peer");
                drop(tcp);
                if may_log(&mut warned_peer) {
                    tracing::warn!(
                        %remote,
                        limit = cap,
                        "TLS handshakes in progress from this address at grpc.tls.max_pending_handshakes_per_peer: connection closed"
                    );
                }
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                handshake_failed("too_many_pending");
                drop(tcp);
                if may_log(&mut warned) {
                    tracing::warn!(
                        %remote,
                        limit = tls.config.max_pending_handshakes,
                        "TLS handshakes in progress at grpc.tls.max_pending_handshakes: connection closed"
                    );
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
            let (acceptor, tx, stop) = (tls.acceptor(), tx.clone(), stop.clone());
            let hello_timeout = tls.config.client_hello_timeout;
            tasks.spawn(async move {
                let places = (permit, peer_slot);
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    done = handshake(acceptor, tcp, hello_timeout) => match done {
                        Handshake::Done(s) => s,
                        Handshake::Refused(e) => {
                            let reason = failure_reason(&e);
                            handshake_failed(reason);
                            tracing::warn!(%remote, error = %e, reason, "TLS handshake refused");
                            return;
                        }
                        Handshake::TimedOut(what) => {
                            handshake_failed("timeout");
                            tracing::warn!(%remote, "{what}");
                            return;
                        }
                    },
                };
                drop(places);
                let certificate_names = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::from(names_of(c.as_ref())));
                let conn = Conn {
                    io: Io::Tls(stream),
                    info: ConnInfo {
                        remote: Some(remote),
                        certificate_names,
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Step = Box<dyn FnOnce() + Send>;
    static AFTER_READ: std::sync::Mutex<Option<Step>> = std::sync::Mutex::new(None);

    /// Runs the step set by the test once, in the watcher's check, after it read the
    /// files and before it compares and puts them in force.
    pub(super) fn after_read() {
        let step = AFTER_READ.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(step) = step {
            step();
        }
    }

    #[test]
    fn a_peer_is_its_ipv4_address_or_its_ipv6_slash_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_key(ip("2001:db8:1:2:a:b:c:d")), ip("2001:db8:1:2::"));
        assert_ne!(
            peer_key(ip("2001:db8:1:2::1")),
            peer_key(ip("2001:db8:1:3::1"))
        );
    }

    fn write_server_files(dir: &std::path::Path) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("server.key"), c.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("server.pem"), c.cert.pem()).unwrap();
    }

    /// The watcher read files Y1; a SIGHUP reload then read Y2 and put it in force
    /// before the watcher got on: the files on disk (Y2) must be what is in force
    /// at the end, and the watcher's next look must find nothing to do. Before the
    /// fix the watcher put its stale Y1 in force over Y2 and, `seen` being Y2,
    /// never looked again: in force Y1, on disk Y2, log "reloaded".
    #[test]
    fn a_reload_during_a_watcher_check_leaves_the_newest_files_in_force() {
        let dir = std::env::temp_dir().join(format!("mpn-tls-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_server_files(&dir);
        let config = crate::TlsConfig {
            cert_file: dir.join("server.pem").display().to_string(),
            key_file: dir.join("server.key").display().to_string(),
            ..Default::default()
        };
        let tls = Tls::load(&config).unwrap().unwrap();
        write_server_files(&dir); // Y1: what the watcher reads
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let reloader = std::sync::Arc::new(std::sync::Mutex::new(None));
        {
            let (tls, dir, reloader) = (tls.clone(), dir.clone(), reloader.clone());
            *AFTER_READ.lock().unwrap() = Some(Box::new(move || {
                write_server_files(&dir); // Y2: what the reload reads
                let handle = std::thread::spawn(move || {
                    let r = tls.reload();
                    let _ = done_tx.send(());
                    r
                });
                *reloader.lock().unwrap() = Some(handle);
                // Let the reload finish first if it can (it could before the fix;
                // now it waits for the watcher's check).
                let _ = done_rx.recv_timeout(std::time::Duration::from_millis(500));
            }));
        }
        assert!(matches!(tls.check_for_change(), Some(Ok(true))));
        let handle = reloader.lock().unwrap().take().unwrap();
        assert!(handle.join().unwrap().is_ok());
        let on_disk = fingerprint(&read_files(&config));
        let in_force = tls.current.read().unwrap().0;
        assert_eq!(in_force, on_disk, "the newest files are in force");
        assert!(tls.check_for_change().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
