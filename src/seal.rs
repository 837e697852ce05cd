//! Sealed cookies: authenticated encryption of cookie values (session, login state, ...).
//!
//! A sealed value is URL-safe base64 (no padding) of
//!
//! ```text
//! version (1 byte, = 1) || nonce (24 bytes, random) || XChaCha20-Poly1305 ciphertext + tag
//! ```
//!
//! The associated data is the version byte followed by the *purpose* (`"session"`,
//! `"login"`, ...), so a value sealed for one purpose never opens as another.
//!
//! Key rotation: a [`Sealer`] holds a list of keys. The first one seals; every one of them is
//! tried when opening, so values sealed before a rotation keep working until their key is
//! dropped from the list.

use std::fmt;
use std::path::Path;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;

/// The format version written as the first byte of every sealed value.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Smallest possible sealed value: version, nonce and the tag of an empty plaintext.
const MIN_SEALED_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// Why a key could not be used or a sealed value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("at least one sealing key is required")]
    NoKeys,
    #[error("sealing key is not valid base64")]
    KeyNotBase64,
    #[error("sealing key must be 32 bytes, got {0}")]
    KeyWrongLength(usize),
    /// Not something [`Sealer::seal`] could have produced: bad base64, too short, or an
    /// unknown version.
    #[error("sealed value is malformed")]
    Malformed,
    /// Well-formed, but no key opens it: tampered, sealed for another purpose, or sealed with
    /// a key that has been retired.
    #[error("sealed value does not authenticate")]
    Invalid,
}

/// Seals and opens cookie values with a rotating list of keys.
#[derive(Clone)]
pub struct Sealer {
    /// Never empty; `ciphers[0]` seals.
    ciphers: Vec<XChaCha20Poly1305>,
}

impl Sealer {
    /// Builds a sealer. The first key seals; all keys open. Fails on an empty list.
    pub fn new(keys: Vec<[u8; 32]>) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoKeys);
        }
        let ciphers = keys
            .iter()
            .map(|key| XChaCha20Poly1305::new(key.into()))
            .collect();
        Ok(Self { ciphers })
    }

    /// Encrypts and authenticates `plaintext` for `purpose` with the first key.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(purpose);
        let payload = Payload {
            msg: plaintext,
            aad: &aad,
        };
        // Encryption with a valid key and nonce only fails for plaintexts far beyond any
        // cookie size (about 256 GiB); an empty body would then simply never open.
        let body = self.ciphers[0]
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();

        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Decrypts a value made by [`Sealer::seal`] for the same `purpose` with any of the keys.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < MIN_SEALED_LEN || raw[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let (nonce, body) = raw[1..].split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        let aad = associated_data(purpose);
        self.ciphers
            .iter()
            .find_map(|cipher| {
                let payload = Payload {
                    msg: body,
                    aad: &aad,
                };
                cipher.decrypt(nonce, payload).ok()
            })
            .ok_or(SealError::Invalid)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.ciphers.len())
            .finish_non_exhaustive()
    }
}

/// The version byte, then the purpose: what the tag binds besides the plaintext.
fn associated_data(purpose: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + purpose.len());
    aad.push(VERSION);
    aad.extend_from_slice(purpose.as_bytes());
    aad
}

/// Reads a 32-byte key written in standard or URL-safe base64, padded or not. Whitespace
/// around the text (a trailing newline from a secrets file) is ignored.
pub fn key_from_base64(text: &str) -> Result<[u8; 32], SealError> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

    let text = text.trim();
    let bytes = STANDARD_ANY
        .decode(text)
        .or_else(|_| URL_SAFE_ANY.decode(text))
        .map_err(|_| SealError::KeyNotBase64)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| SealError::KeyWrongLength(len))
}

/// A fresh key from the operating system's random source.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// Reads a keys file (base64 keys, one per line), creating it with one random key first
/// when it does not exist (mode 0600).
pub fn load_or_create_keys(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    use base64::Engine;
    if !path.exists() {
        let key = base64::engine::general_purpose::STANDARD.encode(random_key());
        if let Ok(mut file) = crate::private_file::create_new().open(path) {
            use std::io::Write;
            file.write_all(format!("{key}\n").as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    crate::private_file::check(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let keys: Result<Vec<_>, _> = text.split_whitespace().map(key_from_base64).collect();
    match keys {
        Ok(keys) if !keys.is_empty() => Ok(keys),
        Ok(_) => Err(format!("{} holds no key", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer_with(keys: &[[u8; 32]]) -> Sealer {
        Sealer::new(keys.to_vec()).expect("non-empty key list")
    }

    #[test]
    fn a_sealed_value_opens_to_the_same_plaintext() {
        let sealer = sealer_with(&[random_key()]);
        let sealed = sealer.seal("session", b"user=alice");
        assert_eq!(sealer.open("session", &sealed), Ok(b"user=alice".to_vec()));
    }

    #[test]
    fn an_empty_plaintext_round_trips() {
        let sealer = sealer_with(&[random_key()]);
        let sealed = sealer.seal("login", b"");
        assert_eq!(sealer.open("login", &sealed), Ok(Vec::new()));
    }

    #[test]
    fn the_sealed_form_is_url_safe_base64_with_version_and_nonce() {
        let sealer = sealer_with(&[random_key()]);
        let sealed = sealer.seal("session", b"abc");
        assert!(sealed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let raw = URL_SAFE_NO_PAD.decode(&sealed).expect("base64");
        assert_eq!(raw[0], VERSION);
        assert_eq!(raw.len(), 1 + NONCE_LEN + 3 + TAG_LEN);
    }

    #[test]
    fn a_value_sealed_for_one_purpose_does_not_open_for_another() {
        let sealer = sealer_with(&[random_key()]);
        let sealed = sealer.seal("login", b"state");
        assert_eq!(sealer.open("session", &sealed), Err(SealError::Invalid));
        assert_eq!(sealer.open("", &sealed), Err(SealError::Invalid));
    }

    #[test]
    fn flipping_any_single_bit_makes_the_value_fail() {
        let sealer = sealer_with(&[random_key()]);
        let raw = URL_SAFE_NO_PAD
            .decode(sealer.seal("session", b"hello"))
            .expect("base64");
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[byte] ^= 1 << bit;
                let text = URL_SAFE_NO_PAD.encode(&tampered);
                assert!(
                    sealer.open("session", &text).is_err(),
                    "bit {bit} of byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_truncated_value_fails() {
        let sealer = sealer_with(&[random_key()]);
        let sealed = sealer.seal("session", b"hello world");
        for len in 0..sealed.len() {
            assert!(sealer.open("session", &sealed[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_input_is_refused_without_panicking() {
        let sealer = sealer_with(&[random_key()]);
        let short = URL_SAFE_NO_PAD.encode([VERSION; MIN_SEALED_LEN - 1]);
        let wrong_version = URL_SAFE_NO_PAD.encode([2u8; 64]);
        let zeros = URL_SAFE_NO_PAD.encode([0u8; 64]);
        let ones = URL_SAFE_NO_PAD.encode([VERSION; 64]);
        for input in [
            "",
            "=",
            "!!!!",
            "not base64 at all",
            "a",
            "ab==",
            "ééééé",
            "AAAA\0AAAA",
            short.as_str(),
            wrong_version.as_str(),
            zeros.as_str(),
        ] {
            assert_eq!(
                sealer.open("session", input),
                Err(SealError::Malformed),
                "{input:?}"
            );
        }
        assert_eq!(sealer.open("session", &ones), Err(SealError::Invalid));
    }

    #[test]
    fn a_cookie_sealed_with_a_retired_key_still_opens_after_rotation() {
        let old = random_key();
        let new = random_key();
        let sealed = sealer_with(&[old]).seal("session", b"before rotation");
        let rotated = sealer_with(&[new, old]);
        assert_eq!(
            rotated.open("session", &sealed),
            Ok(b"before rotation".to_vec())
        );
        // and new values are sealed with the new key only
        let fresh = rotated.seal("session", b"after");
        assert_eq!(
            sealer_with(&[old]).open("session", &fresh),
            Err(SealError::Invalid)
        );
        assert_eq!(
            sealer_with(&[new]).open("session", &fresh),
            Ok(b"after".to_vec())
        );
    }

    #[test]
    fn a_cookie_sealed_with_a_key_dropped_from_the_list_no_longer_opens() {
        let dropped = random_key();
        let sealed = sealer_with(&[dropped]).seal("session", b"x");
        let sealer = sealer_with(&[random_key(), random_key()]);
        assert_eq!(sealer.open("session", &sealed), Err(SealError::Invalid));
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let sealer = sealer_with(&[random_key()]);
        assert_ne!(
            sealer.seal("session", b"same"),
            sealer.seal("session", b"same")
        );
    }

    #[test]
    fn an_empty_key_list_is_refused() {
        assert_eq!(Sealer::new(Vec::new()).err(), Some(SealError::NoKeys));
    }

    #[test]
    fn debug_output_does_not_reveal_keys() {
        let key = [0xAB; 32];
        let text = format!("{:?}", sealer_with(&[key]));
        assert!(text.contains("Sealer"));
        assert!(!text.to_lowercase().contains("ab, ab"));
        assert!(!text.contains("171"));
    }

    #[test]
    fn keys_are_read_from_any_common_base64_form() {
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xFB);
        let standard = base64::engine::general_purpose::STANDARD.encode(key);
        let standard_bare = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
        let url = base64::engine::general_purpose::URL_SAFE.encode(key);
        let url_bare = URL_SAFE_NO_PAD.encode(key);
        assert_ne!(standard, url, "test key should use + or / somewhere");
        for text in [standard, standard_bare, url, url_bare] {
            assert_eq!(key_from_base64(&text), Ok(key), "{text}");
            assert_eq!(key_from_base64(&format!("{text}\n")), Ok(key), "{text}");
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_or_not_base64_is_refused() {
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert_eq!(key_from_base64(&short), Err(SealError::KeyWrongLength(16)));
        let long = base64::engine::general_purpose::STANDARD.encode([1u8; 33]);
        assert_eq!(key_from_base64(&long), Err(SealError::KeyWrongLength(33)));
        assert_eq!(key_from_base64(""), Err(SealError::KeyWrongLength(0)));
        assert_eq!(key_from_base64("*not*key*"), Err(SealError::KeyNotBase64));
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(random_key(), random_key());
    }
}
