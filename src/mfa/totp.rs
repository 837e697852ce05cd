//! RFC 6238 time-based one-time passwords, through the `totp-rs` crate: SHA-1, 6 digits, 30-second
//! steps, one step of clock skew either way. These are the parameters every authenticator app
//! understands.
//!
//! RFC 6238 section 5.2 asks that a code be accepted once only; `totp-rs` leaves that to the
//! caller, and so [`verify`] takes the last step that was accepted for the user and refuses any
//! code at or before it.

use std::fmt;

use rand::rngs::OsRng;
use rand::RngCore;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

/// The issuer shown in authenticator apps when none is configured.
pub const DEFAULT_ISSUER: &str = "Gatehouse";
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Seconds in a time step.
pub const STEP_SECONDS: u64 = 30;
/// Secret length: 160 bits, as RFC 4226 section 4 recommends.
pub const SECRET_BYTES: usize = 20;
/// Steps accepted on either side of the current one.
const SKEW_STEPS: u64 = 1;

/// A TOTP shared secret in the clear. Wiped from memory when dropped; never printed.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    /// A new random 160-bit secret from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// Wraps secret bytes, for instance just opened from the sealed record.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        TotpSecret(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret in unpadded base32, for typing into an app that cannot scan the QR code.
    pub fn to_base32(&self) -> String {
        Secret::from(self.as_bytes()).to_base32()
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// Why a code was not accepted. The caller counts [`TotpRefusal::Wrong`] and
/// [`TotpRefusal::Replay`] as failed attempts (see `lockout`); the distinction is for logs and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpRefusal {
    /// Not six digits (after spaces are removed).
    #[error("the code is not {DIGITS} digits")]
    Malformed,
    /// Six digits, but not the code of any step in the accepted window.
    #[error("the code is wrong")]
    Wrong,
    /// The code of a step that was already used (or an earlier one).
    #[error("the code was already used")]
    Replay,
    /// The stored secret is too short to be one Gatehouse made: a damaged record.
    #[error("the stored TOTP secret is unusable")]
    UnusableSecret,
}

/// Why an otpauth URI could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpSetupError {
    #[error("the TOTP issuer must not be empty or contain ':'")]
    BadIssuer,
    #[error("the account name for the TOTP URI is empty")]
    EmptyAccount,
    #[error("cannot build the TOTP parameters: {0}")]
    Totp(String),
}

/// The time step that holds `unix_seconds`.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

fn totp_for(secret: &[u8], skew: u16) -> Result<Totp, totp_rs::TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_step_duration(STEP_SECONDS)
        .with_skew(skew)
        .with_secret(secret)
        .build()
}

/// The `otpauth://totp/...` URI that authenticator apps read from the QR code.
///
/// The label is `issuer:username`. A `:` in the username would split the label, so it is shown
/// as `_` (the label is only what the app displays; the secret is what counts).
pub fn otpauth_uri(
    secret: &TotpSecret,
    issuer: &str,
    username: &str,
) -> Result<String, TotpSetupError> {
    if issuer.is_empty() || issuer.contains(':') {
        return Err(TotpSetupError::BadIssuer);
    }
    let account = username.replace(':', "_");
    if account.trim().is_empty() {
        return Err(TotpSetupError::EmptyAccount);
    }
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret.as_bytes())
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| TotpSetupError::Totp(format!("{e:?}")))?;
    let uri = totp
        .to_url()
        .map_err(|e| TotpSetupError::Totp(format!("{e:?}")))?;
    // totp-rs leaves out parameters that equal the Key URI defaults; spell them out so that no
    // app has to guess.
    Ok(format!(
        "{uri}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"
    ))
}

/// Checks `code` against `secret` at `now_unix`, accepting the current step and one step either
/// side. Returns the step that matched, which the caller stores as the new `last_used_step`.
///
/// Spaces in the code are ignored ("123 456"); anything else that is not a digit is refused.
/// A code whose step is at or before `last_used_step` is a [`TotpRefusal::Replay`].
pub fn verify(
    secret: &[u8],
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpRefusal> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpRefusal::Malformed);
    }
    // Skew 0 so that each check is for exactly one step; the window is walked here, newest
    // first, so that a code matching both a used and an unused step is taken as the unused one.
    let totp = totp_for(secret, 0).map_err(|_| TotpRefusal::UnusableSecret)?;
    let now_step = step_at(now_unix);
    let newest = now_step.saturating_add(SKEW_STEPS);
    let oldest = now_step.saturating_sub(SKEW_STEPS);
    let mut replayed = false;
    for step in (oldest..=newest).rev() {
        let Some(at) = step.checked_mul(STEP_SECONDS) else {
            continue;
        };
        if totp.check(&code, at).is_some() {
            if last_used_step.is_some_and(|used| step <= used) {
                replayed = true;
            } else {
                return Ok(step);
            }
        }
    }
    Err(if replayed {
        TotpRefusal::Replay
    } else {
        TotpRefusal::Wrong
    })
}

#[cfg(test)]
pub(crate) mod reference {
    //! An independent RFC 4226 / RFC 6238 implementation for the tests, so that the module is
    //! checked against the RFC and not against itself.

    use hmac::{Hmac, KeyInit, Mac};
    use sha1::Sha1;

    /// HOTP(K, C) truncated to `digits` digits (RFC 4226 section 5.3).
    pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(&counter.to_be_bytes());
        let hash = mac.finalize().into_bytes();
        let offset = (hash[hash.len() - 1] & 0x0f) as usize;
        let binary = (u32::from(hash[offset] & 0x7f) << 24)
            | (u32::from(hash[offset + 1]) << 16)
            | (u32::from(hash[offset + 2]) << 8)
            | u32::from(hash[offset + 3]);
        binary % 10u32.pow(digits)
    }

    /// TOTP at unix time `t` with 30-second steps and T0 = 0 (RFC 6238 section 4).
    pub fn totp(key: &[u8], t: u64, digits: u32) -> String {
        format!(
            "{:0width$}",
            hotp(key, t / 30, digits),
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::reference::totp as reference_totp;
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn the_reference_implementation_matches_the_rfc_6238_sha1_vectors() {
        let vectors = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (t, expected) in vectors {
            assert_eq!(reference_totp(RFC_SECRET, t, 8), expected, "T = {t}");
        }
    }

    #[test]
    fn the_reference_implementation_matches_the_rfc_4226_hotp_vectors() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(super::reference::hotp(RFC_SECRET, counter as u64, 6), *code);
        }
    }

    const NOW: u64 = 1_700_000_015;

    fn code_at_step(secret: &[u8], step: u64) -> String {
        reference_totp(secret, step * STEP_SECONDS, 6)
    }

    #[test]
    fn the_current_code_is_accepted_and_its_step_returned() {
        let step = step_at(NOW);
        let code = code_at_step(RFC_SECRET, step);
        assert_eq!(verify(RFC_SECRET, &code, NOW, None), Ok(step));
    }

    #[test]
    fn the_codes_one_step_early_and_one_step_late_are_accepted() {
        let step = step_at(NOW);
        for s in [step - 1, step + 1] {
            let code = code_at_step(RFC_SECRET, s);
            assert_eq!(verify(RFC_SECRET, &code, NOW, None), Ok(s));
        }
    }

    #[test]
    fn codes_two_steps_away_are_wrong() {
        let step = step_at(NOW);
        for s in [step - 2, step + 2] {
            let code = code_at_step(RFC_SECRET, s);
            assert_eq!(
                verify(RFC_SECRET, &code, NOW, None),
                Err(TotpRefusal::Wrong),
                "step {s}"
            );
        }
    }

    #[test]
    fn a_code_whose_step_was_already_used_is_a_replay() {
        let step = step_at(NOW);
        let code = code_at_step(RFC_SECRET, step);
        let used = verify(RFC_SECRET, &code, NOW, None).unwrap();
        assert_eq!(
            verify(RFC_SECRET, &code, NOW, Some(used)),
            Err(TotpRefusal::Replay)
        );
        // So is a code from before the used step, still inside the window.
        let earlier = code_at_step(RFC_SECRET, step - 1);
        assert_eq!(
            verify(RFC_SECRET, &earlier, NOW, Some(used)),
            Err(TotpRefusal::Replay)
        );
        // The next step's code is fine.
        let next = code_at_step(RFC_SECRET, step + 1);
        assert_eq!(verify(RFC_SECRET, &next, NOW, Some(used)), Ok(step + 1));
    }

    #[test]
    fn a_wrong_code_is_wrong() {
        let step = step_at(NOW);
        let right = code_at_step(RFC_SECRET, step);
        let wrong: String = right
            .chars()
            .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
            .collect();
        assert_eq!(
            verify(RFC_SECRET, &wrong, NOW, None),
            Err(TotpRefusal::Wrong)
        );
    }

    #[test]
    fn spaces_in_the_code_are_ignored() {
        let step = step_at(NOW);
        let code = code_at_step(RFC_SECRET, step);
        let spaced = format!(" {} {} ", &code[..3], &code[3..]);
        assert_eq!(verify(RFC_SECRET, &spaced, NOW, None), Ok(step));
    }

    #[test]
    fn codes_that_are_not_six_digits_are_malformed() {
        for code in [
            "",
            "12345",
            "1234567",
            "12345a",
            "+12345",
            "-12345",
            "１２３４５６",
        ] {
            assert_eq!(
                verify(RFC_SECRET, code, NOW, None),
                Err(TotpRefusal::Malformed),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_secret_shorter_than_128_bits_is_unusable() {
        assert_eq!(
            verify(b"short", "123456", NOW, None),
            Err(TotpRefusal::UnusableSecret)
        );
    }

    #[test]
    fn a_new_secret_is_160_random_bits() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.as_bytes().len(), 20);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(format!("{a:?}"), "TotpSecret(<redacted>)");
    }

    #[test]
    fn the_otpauth_uri_names_issuer_account_and_parameters() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let uri = otpauth_uri(&secret, DEFAULT_ISSUER, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/Gatehouse:alice?"), "{uri}");
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.contains("issuer=Gatehouse"));
        assert!(uri.contains("algorithm=SHA1"));
        assert!(uri.contains("digits=6"));
        assert!(uri.contains("period=30"));
        assert_eq!(secret.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn the_otpauth_uri_encodes_odd_usernames_and_refuses_a_bad_issuer() {
        let secret = TotpSecret::generate();
        let uri = otpauth_uri(&secret, "Acme Corp", "bob smith@example.com").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Acme%20Corp:bob%20smith%40example.com?"),
            "{uri}"
        );
        let uri = otpauth_uri(&secret, DEFAULT_ISSUER, "a:b").unwrap();
        assert!(uri.starts_with("otpauth://totp/Gatehouse:a_b?"), "{uri}");
        assert_eq!(
            otpauth_uri(&secret, "Bad:Issuer", "alice"),
            Err(TotpSetupError::BadIssuer)
        );
        assert_eq!(
            otpauth_uri(&secret, "", "alice"),
            Err(TotpSetupError::BadIssuer)
        );
        assert_eq!(
            otpauth_uri(&secret, DEFAULT_ISSUER, " "),
            Err(TotpSetupError::EmptyAccount)
        );
    }
}
