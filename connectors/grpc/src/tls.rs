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
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.remote)
        .or_else(|| request.remote_addr())
        .map(|a| a.ip())
}
