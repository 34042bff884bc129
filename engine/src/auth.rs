//! Subscriber credentials: institution code + login id + secret, checked against an
//! Argon2 hash from the configuration. Secrets are never stored or logged in clear.

use std::collections::HashMap;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use mpn_delivery::{BackendError, Credentials, Principal};
use serde::{Deserialize, Serialize};

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

#[derive(Debug)]
struct Entry {
    hash: String,
    granted: Vec<String>,
}

/// The credential table, built once from the configuration.
#[derive(Debug)]
pub struct Authenticator {
    entries: HashMap<(InstitutionCode, String), Entry>,
    /// Verified against when the login is unknown, so both failures cost the same.
    decoy: String,
}

impl Authenticator {
    pub fn new(credentials: &[CredentialConfig]) -> Result<Self, String> {
        let mut entries = HashMap::new();
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
            entries.insert(
                (inst, c.login_id.clone()),
                Entry {
                    hash: c.secret_hash.clone(),
                    granted,
                },
            );
        }
        let decoy = credentials
            .first()
            .map(|c| c.secret_hash.clone())
            .unwrap_or_else(|| hash_secret_with_cost("decoy", Cost::Test).unwrap_or_default());
        Ok(Self { entries, decoy })
    }

    /// Checks a credential. Unknown login and wrong secret give the same answer to the
    /// caller; the log line (written by the connector) says which credential failed.
    pub fn authenticate(&self, c: &Credentials) -> Result<Principal, BackendError> {
        let denied = || BackendError::Unauthenticated("invalid credentials".into());
        let inst = InstitutionCode::parse(&c.institution).map_err(|_| denied())?;
        let entry = self.entries.get(&(inst, c.login_id.clone()));
        let hash = entry.map_or(self.decoy.as_str(), |e| e.hash.as_str());
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(c.secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        match entry {
            Some(e) if ok => Ok(Principal {
                institution: inst.to_string(),
                login_id: c.login_id.clone(),
                granted: e.granted.clone(),
            }),
            _ => Err(denied()),
        }
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
            },
            CredentialConfig {
                institution: "11111111".into(),
                login_id: "vendor".into(),
                secret_hash: hash_secret_with_cost("v", Cost::Test).unwrap(),
                grants: vec!["22222".into(), "33333333".into()],
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
            assert!(
                matches!(t.authenticate(&c), Err(BackendError::Unauthenticated(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn hashes_are_checked_at_load() {
        assert!(check_hash("secret").is_err());
        assert!(check_hash(&hash_secret_with_cost("x", Cost::Test).unwrap()).is_ok());
    }
}
