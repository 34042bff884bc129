//! The engine's security set-up (issue 12): the credential table (the main
//! configuration's `[[credentials]]` plus `auth.credentials_file`), login protection
//! and the audit trail, and [`Security::reload`], which re-reads the credentials
//! file (SIGHUP in the binary).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use serde::Deserialize;

use crate::auth::{AuthConfig, Authenticator, CredentialConfig, LoginGuard};
use crate::config::Config;
use crate::error::Error;
use crate::runtime::Shutdown;
use crate::subscriptions::{DurableSupport, Hub};
use mpn_config::ConfigError;

/// What [`Security::reload`] re-reads.
#[derive(Debug)]
pub(crate) struct Security {
    auth: AuthConfig,
    /// The main configuration's credentials (not reloaded: the file is).
    base: Vec<CredentialConfig>,
    hub: Arc<Hub>,
    /// The gRPC listener's TLS set-up; `None` = plaintext.
    tls: Option<Arc<mpn_grpc::tls::Tls>>,
    /// Held for a whole reload: two SIGHUPs in a row do not interleave, so the last
    /// file read is the table in force. (The TLS files have a lock of their own,
    /// shared with the TLS watcher: see `mpn_grpc::tls::Tls::reload`.)
    reloading: std::sync::Mutex<()>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    credentials: Vec<CredentialConfig>,
}

/// The entries of a credentials file, validated; errors name the file and entry
/// (`auth.credentials_file: creds.toml: credentials[2].login_id: ...`).
pub fn read_credentials_file(path: &Path) -> Result<Vec<CredentialConfig>, ConfigError> {
    let key = |inner: &str| format!("auth.credentials_file: {}{inner}", path.display());
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(key(""), e.to_string()))?;
    let file: CredentialsFile =
        toml::from_str(&text).map_err(|e| ConfigError::new(key(""), e.to_string()))?;
    crate::auth::validate_credentials(&file.credentials)
        .map_err(|e| ConfigError::new(key(&format!(": {}", e.key)), e.message))?;
    Ok(file.credentials)
}

/// The whole credential table: `base` and the file's entries, one credential per
/// (institution, login id) and one credential per certificate name over both.
fn table(auth: &AuthConfig, base: &[CredentialConfig]) -> Result<Authenticator, ConfigError> {
    let mut all = base.to_vec();
    if !auth.credentials_file.is_empty() {
        all.extend(read_credentials_file(Path::new(&auth.credentials_file))?);
    }
    crate::auth::validate_credentials(&all).map_err(|e| {
        let n: usize = e
            .key
            .strip_prefix("credentials[")
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n >= base.len() {
            let field = e.key.split_once('.').map_or("", |(_, f)| f);
            ConfigError::new(
                format!(
                    "auth.credentials_file: {}: credentials[{}].{field}",
                    auth.credentials_file,
                    n - base.len()
                ),
                e.message,
            )
        } else {
            e
        }
    })?;
    Authenticator::new(&all).map_err(|m| ConfigError::new("credentials", m))
}

/// The hub with its credential table, login protection and audit writer.
pub(crate) fn assemble(
    config: &Config,
    support: DurableSupport,
    shutdown: Shutdown,
) -> crate::error::Result<(Arc<Hub>, Security)> {
    let auth = table(&config.auth, &config.credentials)?;
    let tls = mpn_grpc::tls::Tls::load(&config.grpc.tls)
        .map_err(|e| ConfigError::new(format!("grpc.tls.{}", e.key), e.message))?;
    let producer: FutureProducer = config
        .kafka
        .producer()
        .create()
        .map_err(Error::kafka("creating the audit producer"))?;
    let (audit, _writer) = crate::audit::start(
        producer,
        config.auth.audit_topic(&config.kafka.input_topic),
        shutdown,
    );
    let hub = Arc::new(
        Hub::new(auth, support).with_login_protection(LoginGuard::new(&config.auth), audit),
    );
    let security = Security {
        auth: config.auth.clone(),
        base: config.credentials.clone(),
        hub: hub.clone(),
        tls,
        reloading: std::sync::Mutex::new(()),
    };
    Ok((hub, security))
}

/// Creates the audit topic when missing (like the dead-letter topic).
pub(crate) async fn ensure_audit_topic(
    config: &Config,
    timeout: Duration,
) -> crate::error::Result<()> {
    let topic = config.auth.audit_topic(&config.kafka.input_topic);
    mpn_kafka::admin::ensure_topic(&config.kafka, &topic, 1, false, timeout).await?;
    Ok(())
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The credentials file's error, if it was refused (the old table stays).
    pub credentials_error: Option<String>,
    /// Subscriptions ended because their credential was removed or narrowed.
    pub subscriptions_ended: usize,
    /// The TLS files' error, if they were refused (the old set-up stays).
    pub tls_error: Option<String>,
    /// New TLS files were put in force.
    pub tls_changed: bool,
}

impl Security {
    /// The gRPC listener's TLS set-up.
    pub(crate) fn tls(&self) -> Option<Arc<mpn_grpc::tls::Tls>> {
        self.tls.clone()
    }

    /// Re-reads the TLS files and the credentials file; what cannot be used is
    /// refused (logged) and what was in force stays.
    pub(crate) fn reload(&self) -> Reloaded {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let (tls_changed, tls_error) = match self.tls.as_ref().map(|t| t.reload()) {
            None => (false, None),
            Some(Ok(changed)) => (changed, None),
            Some(Err(e)) => (false, Some(e.to_string())),
        };
        let (credentials_error, subscriptions_ended) = self.reload_credentials();
        Reloaded {
            credentials_error,
            subscriptions_ended,
            tls_error,
            tls_changed,
        }
    }

    fn reload_credentials(&self) -> (Option<String>, usize) {
        if self.auth.credentials_file.is_empty() {
            return (None, 0);
        }
        match table(&self.auth, &self.base) {
            Ok(auth) => {
                let ended = self.hub.replace_authenticator(auth);
                tracing::info!(
                    file = %self.auth.credentials_file,
                    subscriptions_ended = ended,
                    "credentials reloaded"
                );
                (None, ended)
            }
            Err(e) => {
                tracing::error!(error = %e, "credentials reload refused; the previous credentials stay in force");
                (Some(e.to_string()), 0)
            }
        }
    }
}
