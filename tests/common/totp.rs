//! An independent TOTP (RFC 6238 over RFC 4226 HOTP, HMAC-SHA1, 30 s, 6 digits) for the
//! tests, written from the RFCs on the `hmac` and `sha1` crates, so Gatehouse's own code
//! (totp-rs) is never asked for the codes it is tested with. Checked against the RFC 6238
//! test vectors by `the_test_totp_matches_the_rfc_6238_vectors`. Include with
//! `#[path = "common/totp.rs"] mod totp;`.

#![allow(dead_code)]

use hmac::{Hmac, KeyInit, Mac};

/// RFC 4226: the truncated HMAC-SHA1 of the counter, `digits` long.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(digits),
        width = digits as usize
    )
}

/// RFC 6238 at unix time `t`.
pub fn totp(key: &[u8], t: u64, digits: u32) -> String {
    hotp(key, t / 30, digits)
}

/// RFC 4648 base32 (no padding needed), as authenticator apps read a typed key.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let value = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("not base32: {c}")) as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// The 6-digit code for a base32 key at `t`.
pub fn code(base32_key: &str, t: u64) -> String {
    totp(&base32_decode(base32_key), t, 6)
}
