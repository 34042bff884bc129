//! Encryption at rest of the personal fields, and the blind index that finds a
//! customer number without decrypting anything.
//!
//! - Each personal field is sealed with AES-256-GCM under the active key: a fresh
//!   96-bit nonce, then the ciphertext and tag. The associated data binds it to its row
//!   and field (`<notification id>/<field>`), so a value moved to another row or
//!   column does not open. The row stores the key id: rotating the active key needs
//!   no rewrite, earlier rows open with the key they name.
//! - The blind index is HMAC-SHA256 under a separate key of the institution and the
//!   customer number, cut to 16 bytes: equal numbers give equal index values, and the
//!   value says nothing about the number without the key.

use std::collections::HashMap;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE: usize = 12;
/// Bytes of the blind index kept (128 bits: collisions are not a practical concern).
pub const INDEX_BYTES: usize = 16;

/// The keys of one replica. Never printed: `Debug` shows the key ids only.
#[derive(Clone)]
pub struct Keyring {
    active: String,
    ciphers: HashMap<String, Aes256Gcm>,
    index: Hmac<Sha256>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.ciphers.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("no key with id {0:?} is configured (was it removed from the keys file?)")]
    UnknownKey(String),
    #[error("a sealed {0} did not open: wrong key, or the value was altered")]
    Tampered(&'static str),
}

fn decode_key(what: &str, text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{what}: not base64"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{what}: must be 32 bytes (got {})", b.len()))
}

impl Keyring {
    /// `keys`: (id, key), the first one active.
    pub fn new(keys: &[(String, [u8; 32])], index_key: &[u8; 32]) -> Result<Self, String> {
        let Some((active, _)) = keys.first() else {
            return Err("no encryption key".into());
        };
        let mut ciphers = HashMap::new();
        for (id, key) in keys {
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "key id {id:?}: must be 1-32 ASCII letters, digits, '-' or '_'"
                ));
            }
            if ciphers
                .insert(id.clone(), Aes256Gcm::new(key.into()))
                .is_some()
            {
                return Err(format!("key id {id:?} appears twice"));
            }
        }
        let index = <Hmac<Sha256> as Mac>::new_from_slice(index_key)
            .map_err(|e| format!("index key: {e}"))?;
        Ok(Self {
            active: active.clone(),
            ciphers,
            index,
        })
    }

    /// Reads the keys files (`history.encryption_keys_file`, `history.index_key_file`).
    /// Errors name the file and line, never a key.
    pub fn load(keys_file: &Path, index_file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(keys_file)
            .map_err(|e| format!("{}: {e}", keys_file.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let where_ = format!("{} line {}", keys_file.display(), n + 1);
            let (id, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{where_}: expected \"<key id> <base64 key>\""))?;
            keys.push((id.to_owned(), decode_key(&where_, key)?));
        }
        let index_text = std::fs::read_to_string(index_file)
            .map_err(|e| format!("{}: {e}", index_file.display()))?;
        let index = decode_key(&index_file.display().to_string(), &index_text)?;
        Self::new(&keys, &index).map_err(|e| format!("{}: {e}", keys_file.display()))
    }

    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// Seals `plain` for `field` of the row `row_id` under the active key.
    pub fn seal(&self, row_id: &str, field: &'static str, plain: &str) -> Vec<u8> {
        let cipher = &self.ciphers[&self.active];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = format!("{row_id}/{field}");
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any length we store");
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`seal`](Self::seal) wrote under `key_id`.
    pub fn open(
        &self,
        key_id: &str,
        row_id: &str,
        field: &'static str,
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        let cipher = self
            .ciphers
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if sealed.len() < NONCE {
            return Err(CryptoError::Tampered(field));
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let aad = format!("{row_id}/{field}");
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered(field))?;
        String::from_utf8(plain).map_err(|_| CryptoError::Tampered(field))
    }

    /// The blind index of `customer_number` at `institution`.
    pub fn blind(&self, institution: &str, customer_number: &str) -> Vec<u8> {
        let mut mac = self.index.clone();
        mac.update(institution.as_bytes());
        mac.update(&[0]);
        mac.update(customer_number.as_bytes());
        mac.finalize().into_bytes()[..INDEX_BYTES].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[(&str, u8)]) -> Keyring {
        let keys: Vec<_> = ids.iter().map(|(i, b)| (i.to_string(), [*b; 32])).collect();
        Keyring::new(&keys, &[9; 32]).unwrap()
    }

    #[test]
    fn sealed_fields_open_only_in_their_row_and_field() {
        let k = ring(&[("k1", 1)]);
        let s = k.seal("key:payment", "customer_number", "CUST0001");
        assert!(!s.windows(8).any(|w| w == b"CUST0001"), "no plaintext");
        assert_eq!(
            k.open("k1", "key:payment", "customer_number", &s).unwrap(),
            "CUST0001"
        );
        assert_eq!(
            k.open("k1", "other:payment", "customer_number", &s),
            Err(CryptoError::Tampered("customer_number"))
        );
        assert_eq!(
            k.open("k1", "key:payment", "payer_kana", &s),
            Err(CryptoError::Tampered("payer_kana"))
        );
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(
            k.open("k1", "key:payment", "customer_number", &bad)
                .is_err()
        );
        assert_eq!(
            k.open("k9", "key:payment", "customer_number", &s),
            Err(CryptoError::UnknownKey("k9".into()))
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(s, k.seal("key:payment", "customer_number", "CUST0001"));
    }

    #[test]
    fn the_blind_index_is_keyed_and_per_institution() {
        let a = ring(&[("k1", 1)]);
        assert_eq!(a.blind("00200000", "C1"), a.blind("00200000", "C1"));
        assert_ne!(a.blind("00200000", "C1"), a.blind("00300000", "C1"));
        assert_ne!(a.blind("00200000", "C1"), a.blind("00200000", "C2"));
        let other = Keyring::new(&[("k1".into(), [1; 32])], &[8; 32]).unwrap();
        assert_ne!(a.blind("00200000", "C1"), other.blind("00200000", "C1"));
        assert_eq!(a.blind("00200000", "C1").len(), INDEX_BYTES);
    }

    #[test]
    fn keys_files_are_read_and_bad_ones_named_without_the_key() {
        let dir = std::env::temp_dir().join(format!("mpn-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        let keys = dir.join("keys");
        let index = dir.join("index");
        std::fs::write(
            &keys,
            format!("# active first\nk2 {}\nk1 {}\n", b64(2), b64(1)),
        )
        .unwrap();
        std::fs::write(&index, b64(7)).unwrap();
        let ring = Keyring::load(&keys, &index).unwrap();
        assert_eq!(ring.active_key_id(), "k2");
        assert!(!format!("{ring:?}").contains(&b64(2)));
        std::fs::write(&keys, "k1 c2hvcnQ=\n").unwrap();
        let e = Keyring::load(&keys, &index).unwrap_err();
        assert!(e.contains("line 1") && e.contains("32 bytes"), "{e}");
        assert!(!e.contains("c2hvcnQ"), "{e}");
        std::fs::write(&keys, format!("k1 {}\nk1 {}\n", b64(1), b64(2))).unwrap();
        assert!(Keyring::load(&keys, &index).unwrap_err().contains("twice"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
