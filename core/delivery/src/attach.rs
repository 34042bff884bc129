//! Who subscribes, what they ask for, and what the engine answers.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::SubscriberQueue;

/// What a subscriber presents on every call. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Credentials {
    pub institution: String,
    pub login_id: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("institution", &self.institution)
            .field("login_id", &self.login_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Everything a transport knows about who is calling: a secret login (gRPC
/// metadata), the names of a client certificate it verified, and the peer address.
/// The engine applies the same rules to every transport: lockouts per login and per
/// peer, the certificate-to-credential mapping, the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// A secret login, if one was presented.
    pub credentials: Option<Credentials>,
    /// Names (SAN DNS and URI names, subject CN) of the client certificate the
    /// transport verified against its CA; `None` without a verified certificate.
    pub certificate_names: Option<Vec<String>>,
    /// The peer's address, when the transport knows it.
    pub peer: Option<IpAddr>,
}

impl Caller {
    /// A secret login from `peer`.
    pub fn login(credentials: Credentials, peer: Option<IpAddr>) -> Self {
        Self {
            credentials: Some(credentials),
            certificate_names: None,
            peer,
        }
    }
}

/// An authenticated caller and what it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub institution: String,
    pub login_id: String,
    /// Canonical institution codes this credential may subscribe to.
    pub granted: Vec<String>,
    /// Where the caller connected from (for the audit trail).
    pub peer: Option<IpAddr>,
    /// The names of the verified client certificate this login was made with;
    /// `None` for a secret login. A credentials reload after which these names no
    /// longer identify this credential ends the login's subscriptions.
    pub certificate_names: Option<Vec<String>>,
}

/// Where a durable subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// From the stored cursor; a subscriber never seen before starts at "now" (an
    /// internal one at the consumer group's committed position).
    Cursor,
    /// From the end of the input topic.
    Now,
    /// From the earliest record the topic still holds.
    Earliest,
    /// From the first record published at or after this Unix time in milliseconds.
    Time(i64),
    /// A value the transport received but does not know; the engine refuses it with
    /// `InvalidArgument` where it checks the start (after the tenancy checks).
    Unknown(i32),
}

/// What a subscriber asks for, in transport-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Institution codes as sent; empty means every granted institution.
    pub institutions: Vec<String>,
    /// A display name for logs and metrics; empty means the login id.
    pub subscriber_name: String,
    /// The durable subscriber id; empty for an ephemeral (live-only) subscription.
    pub subscriber_id: String,
    pub start_from: StartFrom,
    /// Where the subscriber connects from (`ip:port`), for the operator's views.
    pub remote_addr: Option<String>,
}

/// The longest subscriber name kept, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A client-chosen name as the engine keeps and logs it: at most [`MAX_NAME_CHARS`]
/// characters (then `…`), control characters escaped (`\n` stays visible and cannot
/// start a log line of its own).
pub fn display_name(raw: &str) -> String {
    let mut out = String::new();
    for (n, c) in raw.chars().enumerate() {
        if n == MAX_NAME_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why the engine refused a call; each transport maps these to its own wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many failed logins for this login or from this peer: refused without
    /// checking, even with the right secret, for `retry_after`. Says nothing about
    /// whether the login exists (unknown logins are locked out the same way).
    #[error("{message}")]
    LockedOut {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    /// The request contradicts what is stored (a durable subscriber's institution set).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A per-credential limit is reached (streams, durable ids).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A stored cursor is older than the topic's retention; `earliest` holds, per
    /// partition, the earliest offset still available.
    #[error("{message}")]
    OutOfRange {
        message: String,
        earliest: Vec<(i32, i64)>,
    },
}

/// Keeps a subscriber attached to the engine; dropping it detaches.
pub struct Attachment {
    /// Canonical codes of the institutions actually subscribed.
    pub institutions: Vec<String>,
    pub guard: Box<dyn Send>,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("institutions", &self.institutions)
            .finish_non_exhaustive()
    }
}

/// What a transport serving outside callers needs from the engine.
pub trait Backend: Send + Sync + 'static {
    /// Checks a caller (may be slow: called on a blocking thread).
    fn authenticate(&self, caller: &Caller) -> Result<Principal, BackendError>;

    /// Attaches `queue` for the subscription `request` asks for (institutions: all
    /// granted ones when empty). Fails with `PermissionDenied` naming the first
    /// institution not granted, `InvalidArgument` for a malformed request and
    /// `OutOfRange` for an expired cursor. May block (it can ask Kafka for positions).
    fn attach(
        &self,
        principal: &Principal,
        request: &AttachRequest,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError>;
}

/// What the engine's own subscribers (a CAFIS-style link, a history writer) need: a
/// durable subscription of one institution, with no credential and none of the
/// per-credential limits. `service` names the subscriber kind (`cafis`), which keeps
/// its cursors apart from every login's.
/// [`InternalBackend::attach_internal`] on a blocking thread (attaching may ask Kafka
/// for start positions); the error as text, a failed thread included.
pub async fn attach_internal_blocking<B: InternalBackend + ?Sized>(
    backend: std::sync::Arc<B>,
    service: &'static str,
    institution: String,
    subscriber_id: &'static str,
    queue: SubscriberQueue,
) -> Result<Attachment, String> {
    tokio::task::spawn_blocking(move || {
        backend.attach_internal(service, &institution, subscriber_id, queue)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

pub trait InternalBackend: Send + Sync + 'static {
    /// Attaches `queue` as `service`'s durable subscriber `subscriber_id` of
    /// `institution`, from its cursor. May block.
    fn attach_internal(
        &self,
        service: &str,
        institution: &str,
        subscriber_id: &str,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_is_bounded_and_has_no_control_characters() {
        assert_eq!(display_name("billing 請求"), "billing 請求");
        assert_eq!(display_name("a\nb\tc\u{1b}[2J"), "a\\nb\\tc\\u{1b}[2J");
        let long = display_name(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_NAME_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(display_name(""), "");
    }
}
