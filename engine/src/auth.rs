//! Subscriber credentials: institution code + login id + secret, checked against an
//! Argon2 hash from the configuration. Secrets are never stored or logged in clear.

mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use mpn_config::{ConfigError, in_range, millis_in};
use mpn_delivery::{Credentials, Principal};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub use guard::{LockScope, Locked, LoginGuard, MAX_TRACKED};

use crate::domain::InstitutionCode;

/// One subscriber credential of the configuration (`[[credentials]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The credential's own institution code (5 or 8 digits).
    pub institution: String,
    pub login_id: String,
    /// Argon2 PHC hash of the secret (`mpn-notify hash-secret`); never the secret.
    pub secret_hash: String,
    /// Institutions this credential may subscribe to; empty = its own institution.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Names of client certificates (SAN DNS or URI name; the subject CN only when
    /// the certificate has no SAN DNS or URI name) that log in as this credential
    /// over mutual TLS. Names without a `:` (DNS names, a CN) compare ASCII
    /// case-insensitively, URIs exactly; one name may be listed by one credential only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_names: Vec<String>,
}

/// Hashing cost. `Default` is Argon2id's recommended parameters; `Test` is cheap, for
/// test fixtures and the in-process demo only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Default,
    Test,
}

pub fn hash_secret(secret: &str) -> Result<String, String> {
    hash_secret_with_cost(secret, Cost::Default)
}

pub fn hash_secret_with_cost(secret: &str, cost: Cost) -> Result<String, String> {
    let params = match cost {
        Cost::Default => Params::default(),
        Cost::Test => Params::new(1024, 1, 1, None).map_err(|e| e.to_string())?,
    };
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    argon
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The hash of the secret "change-me" that earlier example files shipped: a
/// credential with it is refused at load, so nobody runs with the published secret.
pub const EXAMPLE_SECRET_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$iVJqV3jzzuFZXqArOjL1kQ$LOvf4GIGEBK72eSYTRsHcVxQNsTW6ODCjv1tzusCL7k";

/// Checks that `hash` is an Argon2 PHC string (so a clear-text secret in the config
/// is refused at load), and not the example file's published one.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash == EXAMPLE_SECRET_HASH {
        return Err("is the example file's hash of the published secret \"change-me\"; create your own with `mpn-notify hash-secret`".into());
    }
    let parsed = PasswordHash::new(hash).map_err(|_| {
        "must be an Argon2 PHC hash such as $argon2id$v=19$...; create one with `mpn-notify hash-secret`".to_string()
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm {} is not supported; use argon2id",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// The `[auth]` section: where extra credentials come from, login protection and
/// the audit topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A TOML file of `[[credentials]]` entries, added to those of the main file and
    /// read again on reload (SIGHUP); empty = none.
    pub credentials_file: String,
    /// Failed logins per (institution, login id) within `failure_window_ms` before
    /// that login is locked out (unknown logins too).
    pub max_failures: u32,
    /// Failed logins from one peer address within the window before the address is
    /// locked out.
    pub max_failures_per_peer: u32,
    #[serde(rename = "failure_window_ms", with = "mpn_config::millis")]
    pub failure_window: Duration,
    /// How long a lockout lasts; every login it covers is refused, the right secret
    /// too (`lockout_ms`).
    #[serde(rename = "lockout_ms", with = "mpn_config::millis")]
    pub lockout: Duration,
    /// Kafka topic of the audit records; empty = `<input_topic>.audit`.
    pub audit_topic: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            credentials_file: String::new(),
            max_failures: 5,
            max_failures_per_peer: 20,
            failure_window: Duration::from_millis(300_000),
            lockout: Duration::from_millis(900_000),
            audit_topic: String::new(),
        }
    }
}

impl AuthConfig {
    /// Checks every value; the error names the key (relative to `[auth]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("max_failures", self.max_failures, 1..=1_000_000)?;
        in_range(
            "max_failures_per_peer",
            self.max_failures_per_peer,
            1..=1_000_000,
        )?;
        millis_in("failure_window_ms", self.failure_window, 1, 86_400_000)?;
        millis_in("lockout_ms", self.lockout, 1, 86_400_000)?;
        if !self.audit_topic.is_empty()
            && (self.audit_topic.len() > 249
                || !self
                    .audit_topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(ConfigError::new(
                "audit_topic",
                "must be 1-249 characters of [a-zA-Z0-9._-]",
            ));
        }
        Ok(())
    }

    /// The audit topic for an engine reading `input_topic`.
    pub fn audit_topic(&self, input_topic: &str) -> String {
        if self.audit_topic.is_empty() {
            format!("{input_topic}.audit")
        } else {
            self.audit_topic.clone()
        }
    }
}

/// Validates `credentials` as the entries of `file` ("" = the main configuration):
/// the error names the entry and the field, e.g. `credentials[2].login_id`.
pub fn validate_credentials(credentials: &[CredentialConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    let mut names = HashMap::new();
    for (n, c) in credentials.iter().enumerate() {
        let key = |f: &str| format!("credentials[{n}].{f}");
        let inst = InstitutionCode::parse(&c.institution)
            .map_err(|m| ConfigError::new(key("institution"), m))?;
        if c.login_id.is_empty()
            || c.login_id.len() > 64
            || !c
                .login_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        {
            return Err(ConfigError::new(
                key("login_id"),
                "must be 1-64 characters of [A-Za-z0-9._-@]",
            ));
        }
        check_hash(&c.secret_hash).map_err(|m| ConfigError::new(key("secret_hash"), m))?;
        for (g, code) in c.grants.iter().enumerate() {
            InstitutionCode::parse(code)
                .map_err(|m| ConfigError::new(format!("{}[{g}]", key("grants")), m))?;
        }
        if !seen.insert((inst, c.login_id.clone())) {
            return Err(ConfigError::new(
                key("login_id"),
                format!(
                    "duplicate credential for institution {inst} and login {}",
                    c.login_id
                ),
            ));
        }
        for (k, name) in c.certificate_names.iter().enumerate() {
            let field = format!("{}[{k}]", key("certificate_names"));
            if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    field,
                    "must be 1-255 characters without control characters",
                ));
            }
            if let Some(other) = names.insert(canonical_name(name), n) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{name:?} is already a name of credentials[{other}] (names compare \
                         case-insensitively); a certificate name may log in as one credential only"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// How a certificate name is compared: names without a `:` (DNS names, a subject
/// CN) ASCII case-insensitively, so `Billing.Example.JP` is `billing.example.jp`;
/// URIs exactly.
pub fn canonical_name(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    }
}

#[derive(Debug)]
struct Entry {
    institution: InstitutionCode,
    login_id: String,
    hash: String,
    granted: Vec<String>,
}

/// Why a credential was refused (the caller hears only "invalid credentials").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown login, wrong secret or a malformed institution.
    BadCredentials,
    /// A verified client certificate no credential lists, or metadata that names
    /// another credential than the certificate's.
    BadCertificate,
    /// A verified client certificate whose names are listed by more than one
    /// credential: which one it is cannot be told, so it is none.
    AmbiguousCertificate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad_credentials",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::AmbiguousCertificate => "ambiguous_certificate",
        }
    }
}

/// The credential table, built from the configuration (and rebuilt on reload).
#[derive(Debug)]
pub struct Authenticator {
    entries: HashMap<(InstitutionCode, String), Entry>,
    /// Certificate name ([`canonical_name`]) → the credential listing it.
    by_name: Vec<(String, (InstitutionCode, String))>,
    /// Verified against when the login is unknown, so both failures cost the same:
    /// a hash of a random secret made with the parameters a configured login has
    /// ([`decoy_params`]).
    decoy: String,
}

/// The Argon2 parameters an unknown login's would-be hash has: those most
/// credentials use (ties and an empty table: what `hash-secret` writes).
fn decoy_params(credentials: &[CredentialConfig]) -> Params {
    let mut counts: Vec<(Params, usize)> = Vec::new();
    for c in credentials {
        let Some(p) = PasswordHash::new(&c.secret_hash)
            .ok()
            .and_then(|h| Params::try_from(&h).ok())
        else {
            continue;
        };
        match counts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => counts.push((p, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let mut winners = counts.into_iter().filter(|(_, n)| *n == best);
    match (winners.next(), winners.next()) {
        (Some((p, _)), None) => p,
        _ => Params::default(),
    }
}

impl Authenticator {
    pub fn new(credentials: &[CredentialConfig]) -> Result<Self, String> {
        let mut entries = HashMap::new();
        let mut by_name = Vec::new();
        for c in credentials {
            let inst = InstitutionCode::parse(&c.institution)?;
            check_hash(&c.secret_hash)?;
            let mut granted = if c.grants.is_empty() {
                vec![inst.to_string()]
            } else {
                Vec::new()
            };
            for g in &c.grants {
                let code = InstitutionCode::parse(g)?.to_string();
                if !granted.contains(&code) {
                    granted.push(code);
                }
            }
            for name in &c.certificate_names {
                by_name.push((canonical_name(name), (inst, c.login_id.clone())));
            }
            entries.insert(
                (inst, c.login_id.clone()),
                Entry {
                    institution: inst,
                    login_id: c.login_id.clone(),
                    hash: c.secret_hash.clone(),
                    granted,
                },
            );
        }
        let params = decoy_params(credentials);
        let secret: [u8; 16] = rand::random();
        let salt = SaltString::generate(&mut OsRng);
        let decoy = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(&secret, &salt)
            .map_err(|e| e.to_string())?
            .to_string();
        Ok(Self {
            entries,
            by_name,
            decoy,
        })
    }

    /// The Argon2 parameters of the decoy hash.
    pub fn decoy_params(&self) -> Params {
        PasswordHash::new(&self.decoy)
            .ok()
            .and_then(|h| Params::try_from(&h).ok())
            .unwrap_or_default()
    }

    fn principal(e: &Entry, peer: Option<IpAddr>) -> Principal {
        Principal {
            institution: e.institution.to_string(),
            login_id: e.login_id.clone(),
            granted: e.granted.clone(),
            peer,
            certificate_names: None,
        }
    }

    /// Checks a secret login. Unknown login and wrong secret cost the same (the
    /// decoy) and give the same answer.
    pub fn authenticate(&self, c: &Credentials) -> Result<Principal, Refusal> {
        let inst = InstitutionCode::parse(&c.institution).ok();
        let entry = inst.and_then(|i| self.entries.get(&(i, c.login_id.clone())));
        let hash = entry.map_or(self.decoy.as_str(), |e| e.hash.as_str());
        // verify_password compares the computed output in constant time.
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(c.secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        match entry {
            Some(e) if ok => Ok(Self::principal(e, None)),
            _ => Err(Refusal::BadCredentials),
        }
    }

    /// The credential whose `certificate_names` lists one of `names` (a verified
    /// client certificate's). Every listed name is compared with every name, in
    /// constant time, so the time taken does not depend on which name matched or how
    /// far. Names listed by no credential: [`Refusal::BadCertificate`]; by more than
    /// one: [`Refusal::AmbiguousCertificate`].
    pub fn by_certificate(&self, names: &[String]) -> Result<Principal, Refusal> {
        let names: Vec<String> = names.iter().map(|n| canonical_name(n)).collect();
        let mut found: Vec<&(InstitutionCode, String)> = Vec::new();
        for (listed, credential) in &self.by_name {
            for n in &names {
                if bool::from(listed.as_bytes().ct_eq(n.as_bytes())) && !found.contains(&credential)
                {
                    found.push(credential);
                }
            }
        }
        match found.as_slice() {
            [] => Err(Refusal::BadCertificate),
            [one] => self
                .entries
                .get(one)
                .map(|e| Self::principal(e, None))
                .ok_or(Refusal::BadCertificate),
            _ => Err(Refusal::AmbiguousCertificate),
        }
    }

    /// Whether `(institution, login_id)` names the credential `principal` is
    /// (constant-time in the names).
    pub fn same_credential(principal: &Principal, institution: &str, login_id: &str) -> bool {
        let inst = InstitutionCode::parse(institution)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let a = principal.institution.as_bytes().ct_eq(inst.as_bytes());
        let b = principal.login_id.as_bytes().ct_eq(login_id.as_bytes());
        bool::from(a & b)
    }

    /// A fingerprint of the credential's secret hash: it changes when the secret is
    /// rotated (a console session opened with the old secret ends then).
    pub fn secret_fingerprint(&self, institution: &str, login_id: &str) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let inst = InstitutionCode::parse(institution).ok()?;
        let entry = self.entries.get(&(inst, login_id.to_owned()))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        entry.hash.hash(&mut h);
        Some(h.finish())
    }

    /// Every institution some credential grants (whose history is kept).
    pub fn institutions(&self) -> Vec<InstitutionCode> {
        let mut all: Vec<InstitutionCode> = self
            .entries
            .values()
            .flat_map(|e| e.granted.iter())
            .filter_map(|g| InstitutionCode::parse(g).ok())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The credential `(institution, login_id)` is, if it exists: what it grants now.
    pub fn granted(&self, institution: &str, login_id: &str) -> Option<&[String]> {
        let inst = InstitutionCode::parse(institution).ok()?;
        self.entries
            .get(&(inst, login_id.to_owned()))
            .map(|e| e.granted.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Authenticator {
        Authenticator::new(&[
            CredentialConfig {
                institution: "00200".into(),
                login_id: "a".into(),
                secret_hash: hash_secret_with_cost("right", Cost::Test).unwrap(),
                grants: vec![],
                certificate_names: vec!["billing-a.example.jp".into()],
            },
            CredentialConfig {
                institution: "11111111".into(),
                login_id: "vendor".into(),
                secret_hash: hash_secret_with_cost("v", Cost::Test).unwrap(),
                grants: vec!["22222".into(), "33333333".into()],
                certificate_names: vec![],
            },
        ])
        .unwrap()
    }

    fn creds(i: &str, l: &str, s: &str) -> Credentials {
        Credentials {
            institution: i.into(),
            login_id: l.into(),
            secret: s.into(),
        }
    }

    #[test]
    fn a_certificate_name_maps_to_its_credential_only() {
        let t = table();
        let p = t
            .by_certificate(&["other".into(), "billing-a.example.jp".into()])
            .unwrap();
        assert_eq!(p.granted, vec!["00200000"]);
        let p = t
            .by_certificate(&["Billing-A.Example.JP".into()])
            .expect("DNS names compare case-insensitively");
        assert_eq!(
            (p.institution.as_str(), p.login_id.as_str()),
            ("00200000", "a")
        );
        assert_eq!(p.granted, vec!["00200000"]);
        assert_eq!(
            t.by_certificate(&["billing-a.example".into()]),
            Err(Refusal::BadCertificate)
        );
        assert_eq!(t.by_certificate(&[]), Err(Refusal::BadCertificate));
        assert!(Authenticator::same_credential(&p, "00200", "a"));
        assert!(!Authenticator::same_credential(&p, "00200", "vendor"));
    }

    fn cert_credential(login: &str, names: &[&str]) -> CredentialConfig {
        CredentialConfig {
            institution: "00200".into(),
            login_id: login.into(),
            secret_hash: hash_secret_with_cost("s", Cost::Test).unwrap(),
            grants: vec![],
            certificate_names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// A certificate whose names are listed by two credentials logs in as neither.
    /// Before the fix the first listed credential won, so whoever held a certificate
    /// naming both got the first one's institutions.
    #[test]
    fn a_certificate_naming_two_credentials_is_refused() {
        let t = Authenticator::new(&[
            cert_credential("a", &["a.example.jp"]),
            cert_credential("b", &["b.example.jp", "urn:b"]),
        ])
        .unwrap();
        for names in [
            vec!["a.example.jp".to_string(), "b.example.jp".to_string()],
            vec!["urn:b".to_string(), "A.EXAMPLE.JP".to_string()],
        ] {
            assert_eq!(
                t.by_certificate(&names),
                Err(Refusal::AmbiguousCertificate),
                "{names:?}"
            );
        }
        // Two names of one credential are not ambiguous; URIs keep their case.
        let p = t
            .by_certificate(&["b.example.jp".into(), "urn:b".into()])
            .unwrap();
        assert_eq!(p.login_id, "b");
        assert_eq!(
            t.by_certificate(&["URN:B".into()]),
            Err(Refusal::BadCertificate)
        );
    }

    /// A certificate name listed by two credentials (in any case) is refused at load
    /// and reload, the error naming the second listing. Before the fix names that
    /// differed in case only were both accepted.
    #[test]
    fn a_certificate_name_listed_twice_is_refused_at_load() {
        let e = validate_credentials(&[
            cert_credential("a", &["billing.example.jp"]),
            cert_credential("b", &["other.example.jp", "Billing.Example.JP"]),
        ])
        .unwrap_err();
        assert_eq!(e.key, "credentials[1].certificate_names[1]", "{e}");
        assert!(e.message.contains("credentials[0]"), "{e}");
        validate_credentials(&[
            cert_credential("a", &["billing.example.jp"]),
            cert_credential("b", &["urn:billing"]),
        ])
        .unwrap();
    }

    #[test]
    fn right_secret_grants_own_institution_by_default() {
        let p = table()
            .authenticate(&creds("00200000", "a", "right"))
            .unwrap();
        assert_eq!(p.granted, vec!["00200000"]);
        let p = table()
            .authenticate(&creds("11111111", "vendor", "v"))
            .unwrap();
        assert_eq!(p.granted, vec!["22222000", "33333333"]);
    }

    #[test]
    fn wrong_secret_unknown_login_and_wrong_institution_are_refused() {
        let t = table();
        for c in [
            creds("00200", "a", "wrong"),
            creds("00200", "nobody", "right"),
            creds("99999", "a", "right"),
            creds("bad", "a", "right"),
        ] {
            assert_eq!(t.authenticate(&c), Err(Refusal::BadCredentials), "{c:?}");
        }
    }

    fn with_cost(login: &str, cost: Cost) -> CredentialConfig {
        CredentialConfig {
            institution: "00200".into(),
            login_id: login.into(),
            secret_hash: hash_secret_with_cost("s", cost).unwrap(),
            grants: vec![],
            certificate_names: vec![],
        }
    }

    /// An unknown login is verified against a decoy that costs what a configured
    /// login costs: the parameters most credentials use (those `hash-secret` writes
    /// when none are configured), never merely the first credential's. Before the
    /// fix the decoy was the first credential's hash, so with a cheap first
    /// credential every unknown login answered faster than a known one.
    #[test]
    fn the_decoy_has_the_configured_argon2_parameters() {
        let configured = Params::default();
        let t = Authenticator::new(&[
            with_cost("cheap", Cost::Test),
            with_cost("a", Cost::Default),
            with_cost("b", Cost::Default),
        ])
        .unwrap();
        let p = t.decoy_params();
        assert_eq!(
            (p.m_cost(), p.t_cost(), p.p_cost()),
            (
                configured.m_cost(),
                configured.t_cost(),
                configured.p_cost()
            )
        );
        let p = Authenticator::new(&[]).unwrap().decoy_params();
        assert_eq!(
            (p.m_cost(), p.t_cost(), p.p_cost()),
            (
                configured.m_cost(),
                configured.t_cost(),
                configured.p_cost()
            ),
            "no credential: the parameters hash-secret writes"
        );
        let t =
            Authenticator::new(&[with_cost("a", Cost::Test), with_cost("b", Cost::Test)]).unwrap();
        assert_eq!(
            t.decoy_params().m_cost(),
            1024,
            "every credential cheap: so is the decoy"
        );
    }

    #[test]
    fn hashes_are_checked_at_load() {
        assert!(check_hash("secret").is_err());
        assert!(check_hash(&hash_secret_with_cost("x", Cost::Test).unwrap()).is_ok());
    }
}
