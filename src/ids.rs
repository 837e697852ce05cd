//! Random identifiers: session ids, pending-login ids, generated usernames.

use base64::Engine;

/// A random 256-bit id, URL-safe base64 without padding (43 characters).
pub fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_url_safe_and_do_not_repeat() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }
}
