//! The subscriber registry: which subscriber queues are attached to which
//! institution. Implements the gRPC connector's [`Backend`]: authentication and the
//! tenancy check (a subscriber is attached only to institutions its credential is
//! granted) both live here, so no connector can bypass them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use mpn_grpc::{Attachment, Backend, BackendError, Credentials, Principal, SubscriberQueue};

use crate::auth::Authenticator;
use crate::domain::InstitutionCode;

/// A queue attached to one institution.
#[derive(Debug, Clone)]
pub struct Attached {
    pub id: u64,
    pub name: String,
    pub queue: SubscriberQueue,
}

type Registry = DashMap<InstitutionCode, Arc<[Attached]>>;

#[derive(Debug)]
pub struct Hub {
    auth: Authenticator,
    registry: Arc<Registry>,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth,
            registry: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The queues attached to `code` right now (a cheap snapshot).
    pub fn subscribers(&self, code: &InstitutionCode) -> Option<Arc<[Attached]>> {
        self.registry.get(code).map(|e| e.value().clone())
    }

    /// Number of attached (institution, subscriber) pairs.
    pub fn attachments(&self) -> usize {
        self.registry.iter().map(|e| e.value().len()).sum()
    }
}

/// Detaches a subscriber from every institution when dropped.
struct Detach {
    registry: Arc<Registry>,
    id: u64,
    codes: Vec<InstitutionCode>,
}

impl Drop for Detach {
    fn drop(&mut self) {
        for code in &self.codes {
            let mut now_empty = false;
            if let Some(mut entry) = self.registry.get_mut(code) {
                let kept: Arc<[Attached]> =
                    entry.iter().filter(|a| a.id != self.id).cloned().collect();
                now_empty = kept.is_empty();
                *entry = kept;
            }
            if now_empty {
                self.registry.remove_if(code, |_, v| v.is_empty());
            }
        }
    }
}

impl Backend for Hub {
    fn authenticate(&self, creds: &Credentials) -> Result<Principal, BackendError> {
        self.auth.authenticate(creds)
    }

    fn attach(
        &self,
        principal: &Principal,
        institutions: &[String],
        subscriber_name: &str,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError> {
        let requested: &[String] = if institutions.is_empty() {
            &principal.granted
        } else {
            institutions
        };
        let mut codes = Vec::new();
        for raw in requested {
            let code = InstitutionCode::parse(raw)
                .map_err(|m| BackendError::InvalidArgument(format!("institution {raw:?}: {m}")))?;
            if !principal.granted.iter().any(|g| g == code.as_str()) {
                return Err(BackendError::PermissionDenied(format!(
                    "institution {code} is not granted to login {}",
                    principal.login_id
                )));
            }
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let attached = Attached {
            id,
            name: subscriber_name.to_owned(),
            queue,
        };
        for code in &codes {
            let mut entry = self
                .registry
                .entry(*code)
                .or_insert_with(|| Arc::from(Vec::new()));
            let mut list = entry.to_vec();
            list.push(attached.clone());
            *entry = Arc::from(list);
        }
        Ok(Attachment {
            institutions: codes.iter().map(ToString::to_string).collect(),
            guard: Box::new(Detach {
                registry: self.registry.clone(),
                id,
                codes,
            }),
        })
    }
}
