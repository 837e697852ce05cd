//! One-time recovery codes, for a user who has lost the authenticator app.
//!
//! Ten codes are made at enrolment and shown once. Each is 12 characters from Crockford's
//! base32 alphabet (no `i`, `l`, `o`, `u`), written `xxxx-xxxx-xxxx`: 60 random bits. On input,
//! case, dashes and spaces do not matter, and `o`, `i`, `l` are read as `0`, `1`, `1`.
//!
//! Only salted SHA-256 hashes are stored (`v1$<salt>$<digest>`, base64url): 60 bits of entropy
//! keep an offline search of a stolen database out of reach without a slow hash. A used code's
//! hash is removed, so each code works once.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How many codes a user gets.
pub const CODE_COUNT: usize = 10;
/// Characters in a code, not counting dashes.
pub const CODE_CHARS: usize = 12;
/// A dash after every this many characters, for readability.
const GROUP: usize = 4;
/// Crockford's base32 alphabet, lower case.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const SALT_BYTES: usize = 16;
const HASH_VERSION: &str = "v1";
/// Domain separation, so these digests are never equal to any other SHA-256 use.
const HASH_DOMAIN: &[u8] = b"gatehouse recovery code v1\0";

/// Freshly made codes: `shown` to the user once, `hashes` kept in the record.
#[derive(Clone)]
pub struct NewRecoveryCodes {
    pub shown: Vec<String>,
    pub hashes: Vec<String>,
}

impl fmt::Debug for NewRecoveryCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRecoveryCodes")
            .field("count", &self.shown.len())
            .finish_non_exhaustive()
    }
}

/// Makes [`CODE_COUNT`] new codes and their hashes.
pub fn generate() -> NewRecoveryCodes {
    let mut shown = Vec::with_capacity(CODE_COUNT);
    let mut hashes = Vec::with_capacity(CODE_COUNT);
    for _ in 0..CODE_COUNT {
        let code = random_code();
        hashes.push(hash(&code));
        shown.push(format_code(&code));
    }
    NewRecoveryCodes { shown, hashes }
}

/// If `code` matches one of `hashes`, removes that hash and returns true: each code works once.
pub fn consume(hashes: &mut Vec<String>, code: &str) -> bool {
    let Some(code) = normalize(code) else {
        return false;
    };
    // Every stored hash is checked, with a constant-time comparison, whatever matches.
    let mut found = None;
    for (index, stored) in hashes.iter().enumerate() {
        if matches(stored, &code) && found.is_none() {
            found = Some(index);
        }
    }
    match found {
        Some(index) => {
            hashes.remove(index);
            true
        }
        None => false,
    }
}

/// Whether `code` has the shape of a recovery code (12 characters of the alphabet, once case,
/// dashes, spaces and look-alikes are set aside), so a typo need not count as a guess.
pub fn is_well_formed(code: &str) -> bool {
    normalize(code).is_some()
}

/// The canonical form of a typed code: lower case, no dashes or spaces, look-alikes mapped.
/// `None` when it cannot be a code.
fn normalize(input: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_CHARS);
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            '-' | '_' => continue,
            c if c.is_whitespace() => continue,
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_CHARS).then_some(out)
}

fn random_code() -> String {
    // 12 symbols of 5 bits: 60 of the 64 random bits.
    let mut bits = OsRng.next_u64();
    let mut code = String::with_capacity(CODE_CHARS);
    for _ in 0..CODE_CHARS {
        code.push(char::from(ALPHABET[(bits & 0x1f) as usize]));
        bits >>= 5;
    }
    code
}

fn format_code(code: &str) -> String {
    let mut out = String::with_capacity(CODE_CHARS + CODE_CHARS / GROUP);
    for (i, c) in code.chars().enumerate() {
        if i > 0 && i % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

fn digest(salt: &[u8], code: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    hasher.update(salt);
    hasher.update(code.as_bytes());
    hasher.finalize().into()
}

/// The stored form of a normalized code, with a fresh salt.
fn hash(code: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    OsRng.fill_bytes(&mut salt);
    format!(
        "{HASH_VERSION}${}${}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(digest(&salt, code))
    )
}

fn matches(stored: &str, code: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(HASH_VERSION), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (
        URL_SAFE_NO_PAD.decode(salt),
        URL_SAFE_NO_PAD.decode(expected),
    ) else {
        return false;
    };
    digest(&salt, code).ct_eq(expected.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ten_distinct_codes_are_made_in_the_shown_format() {
        let codes = generate();
        assert_eq!(codes.shown.len(), 10);
        assert_eq!(codes.hashes.len(), 10);
        let distinct: HashSet<_> = codes.shown.iter().collect();
        assert_eq!(distinct.len(), 10);
        for code in &codes.shown {
            assert_eq!(code.len(), 14, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3);
            assert!(groups.iter().all(|g| g.len() == 4));
            assert!(code
                .chars()
                .all(|c| c == '-' || ALPHABET.contains(&(c as u8))));
        }
    }

    #[test]
    fn a_code_carries_at_least_forty_bits() {
        let bits = (CODE_CHARS as f64) * (ALPHABET.len() as f64).log2();
        assert!(bits >= 40.0, "{bits}");
    }

    #[test]
    fn each_recovery_code_works_once() {
        let codes = generate();
        let mut hashes = codes.hashes.clone();
        for (n, code) in codes.shown.iter().enumerate() {
            assert!(consume(&mut hashes, code), "code {n} works");
            assert_eq!(hashes.len(), 9 - n);
            assert!(!consume(&mut hashes, code), "code {n} works only once");
        }
        assert!(hashes.is_empty());
    }

    #[test]
    fn case_dashes_spaces_and_look_alikes_do_not_matter() {
        let code = "0a1b-c2d3-e4f5";
        let mut hashes = vec![hash(&normalize(code).unwrap())];
        assert!(!consume(&mut hashes, "0a1b-c2d3-e4f6"));
        assert!(consume(&mut hashes, " OA1B c2D3-e4F5 "));
        let mut hashes = vec![hash(&normalize(code).unwrap())];
        assert!(consume(&mut hashes, "oaib-c2d3-e4f5"));
        let mut hashes = vec![hash(&normalize(code).unwrap())];
        assert!(consume(&mut hashes, "0alb c2d3 e4f5"));
    }

    #[test]
    fn a_wrong_or_malformed_code_consumes_nothing() {
        let codes = generate();
        let mut hashes = codes.hashes.clone();
        for input in [
            "",
            "0000-0000-0000",
            "not a code",
            "0a1b-c2d3-e4f",
            "0a1b-c2d3-e4f5u",
        ] {
            assert!(!consume(&mut hashes, input), "{input:?}");
        }
        assert_eq!(hashes, codes.hashes);
    }

    #[test]
    fn stored_hashes_are_salted_and_do_not_contain_the_code() {
        let a = hash("0a1bc2d3e4f5");
        let b = hash("0a1bc2d3e4f5");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(!a.contains("0a1bc2d3e4f5"));
        assert!(a.starts_with("v1$"));
        // Damaged stored entries never match and do not stop the others from matching.
        let mut hashes = vec!["v1$$".to_owned(), "junk".to_owned(), a];
        assert!(consume(&mut hashes, "0a1b-c2d3-e4f5"));
        assert_eq!(hashes.len(), 2);
    }

    #[test]
    fn debug_output_shows_no_codes() {
        let codes = generate();
        let shown = format!("{codes:?}");
        assert!(!shown.contains(&codes.shown[0]));
        assert!(!shown.contains(&codes.hashes[0]));
    }
}
