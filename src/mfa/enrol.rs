//! Enrolment in two steps, with no I/O: [`Enrolment::start`] makes a secret and shows it (QR code,
//! URI, typed key); [`Enrolment::confirm`] saves it only once the user has typed a valid code from
//! the app, and hands out the recovery codes to show once.
//!
//! Between the two steps the secret travels as `pending`: sealed under a purpose that names the
//! user, with the time it was made, so the caller may keep it in a cookie or a form field. A
//! pending value opens only for the same user and for [`PENDING_TTL_SECONDS`].

use std::fmt;

use zeroize::Zeroizing;

use super::qr::{self, QrError};
use super::record::{MfaRecord, TOTP_SECRET_PURPOSE};
use super::recovery;
use super::totp::{self, TotpRefusal, TotpSecret, TotpSetupError};
use crate::seal::Sealer;

/// How long a started enrolment can be confirmed.
pub const PENDING_TTL_SECONDS: u64 = 10 * 60;
/// A pending value made this far in the future (clock steps between processes) still opens.
const PENDING_CLOCK_SLACK_SECONDS: u64 = 60;
const PENDING_PURPOSE_PREFIX: &str = "totp-pending:";
const ISSUED_AT_BYTES: usize = 8;

/// The two steps of enrolment.
pub struct Enrolment;

/// What the enrolment page shows, and what it must hand back to [`Enrolment::confirm`].
#[derive(Clone)]
pub struct EnrolmentStart {
    /// The sealed new secret, to come back with the user's first code.
    pub pending: String,
    /// `otpauth://totp/...`, for a link on a phone.
    pub otpauth_uri: String,
    /// The URI as an inline SVG QR code.
    pub qr_svg: String,
    /// The secret in base32, for typing in by hand.
    pub manual_key: String,
}

impl fmt::Debug for EnrolmentStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrolmentStart { <redacted> }")
    }
}

/// A confirmed enrolment: the record to save, and the recovery codes to show once.
#[derive(Clone)]
pub struct Confirmed {
    pub record: MfaRecord,
    pub recovery_codes: Vec<String>,
}

impl fmt::Debug for Confirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirmed")
            .field("record", &self.record)
            .field("recovery_codes", &self.recovery_codes.len())
            .finish()
    }
}

/// Why an enrolment step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Setup(#[from] TotpSetupError),
    #[error(transparent)]
    Qr(#[from] QrError),
    /// The pending value does not open: tampered, for another user, or from another key.
    #[error("the enrolment is not valid; start again")]
    PendingInvalid,
    #[error("the enrolment has expired; start again")]
    PendingExpired,
    /// The code typed does not match the new secret.
    #[error("the code does not match: {0}")]
    Code(TotpRefusal),
}

fn pending_purpose(username: &str) -> String {
    format!("{PENDING_PURPOSE_PREFIX}{username}")
}

/// Opens a pending enrolment for `username` that is still fresh at `now`: the issue time
/// (8 bytes) followed by the secret.
fn open_pending(
    sealer: &Sealer,
    username: &str,
    pending: &str,
    now: u64,
) -> Result<Zeroizing<Vec<u8>>, EnrolError> {
    let payload = Zeroizing::new(
        sealer
            .open(&pending_purpose(username), pending)
            .map_err(|_| EnrolError::PendingInvalid)?,
    );
    if payload.len() < ISSUED_AT_BYTES {
        return Err(EnrolError::PendingInvalid);
    }
    let mut issued = [0u8; ISSUED_AT_BYTES];
    issued.copy_from_slice(&payload[..ISSUED_AT_BYTES]);
    let issued_at = u64::from_be_bytes(issued);
    let fresh = now.saturating_add(PENDING_CLOCK_SLACK_SECONDS) >= issued_at
        && now < issued_at.saturating_add(PENDING_TTL_SECONDS);
    if !fresh {
        return Err(EnrolError::PendingExpired);
    }
    Ok(payload)
}

impl Enrolment {
    /// Makes a new secret for `username` at `now` (unix seconds) and everything to show it.
    /// `issuer` is the name the authenticator app displays (`totp::DEFAULT_ISSUER` unless
    /// configured).
    pub fn start(
        sealer: &Sealer,
        username: &str,
        issuer: &str,
        now: u64,
    ) -> Result<EnrolmentStart, EnrolError> {
        let secret = TotpSecret::generate();
        let otpauth_uri = totp::otpauth_uri(&secret, issuer, username)?;
        let qr_svg = qr::svg(&otpauth_uri)?;
        let mut payload = Zeroizing::new(Vec::with_capacity(ISSUED_AT_BYTES + totp::SECRET_BYTES));
        payload.extend_from_slice(&now.to_be_bytes());
        payload.extend_from_slice(secret.as_bytes());
        Ok(EnrolmentStart {
            pending: sealer.seal(&pending_purpose(username), &payload),
            otpauth_uri,
            qr_svg,
            manual_key: secret.to_base32(),
        })
    }

    /// The page of a started enrolment again (after a wrong first code): the same secret, so
    /// the app the user already scanned it into keeps working.
    pub fn resume(
        sealer: &Sealer,
        username: &str,
        issuer: &str,
        pending: &str,
        now: u64,
    ) -> Result<EnrolmentStart, EnrolError> {
        let payload = open_pending(sealer, username, pending, now)?;
        let secret = TotpSecret::from_bytes(payload[ISSUED_AT_BYTES..].to_vec());
        let otpauth_uri = totp::otpauth_uri(&secret, issuer, username)?;
        let qr_svg = qr::svg(&otpauth_uri)?;
        Ok(EnrolmentStart {
            pending: pending.to_string(),
            otpauth_uri,
            qr_svg,
            manual_key: secret.to_base32(),
        })
    }

    /// Checks the first `code` against the pending secret at `now`. On success the returned
    /// record holds the sealed secret, the enrolment time, the step just used and the hashes of
    /// ten new recovery codes; `recovery_codes` are the codes themselves, to show once.
    pub fn confirm(
        sealer: &Sealer,
        username: &str,
        pending: &str,
        code: &str,
        now: u64,
    ) -> Result<Confirmed, EnrolError> {
        let payload = open_pending(sealer, username, pending, now)?;
        let secret = &payload[ISSUED_AT_BYTES..];
        let step = totp::verify(secret, code, now, None).map_err(EnrolError::Code)?;
        let codes = recovery::generate();
        let record = MfaRecord {
            sealed_secret: Some(sealer.seal(TOTP_SECRET_PURPOSE, secret)),
            enrolled_at: Some(now),
            last_used_step: Some(step),
            recovery_hashes: codes.hashes,
            failures: 0,
            locked_until: None,
        };
        Ok(Confirmed {
            record,
            recovery_codes: codes.shown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mfa::lockout::LockoutPolicy;
    use crate::mfa::totp::reference::totp as reference_totp;
    use crate::mfa::totp::{DEFAULT_ISSUER, STEP_SECONDS};

    const NOW: u64 = 1_700_000_015;

    fn sealer() -> Sealer {
        Sealer::new(vec![[3u8; 32]]).unwrap()
    }

    /// The secret, read back from the otpauth URI the way an authenticator app would.
    fn secret_from_uri(uri: &str) -> Vec<u8> {
        let totp = totp_rs::Totp::from_url(uri).unwrap();
        totp.secret().as_bytes().to_vec()
    }

    #[test]
    fn start_shows_the_same_secret_in_the_uri_the_qr_code_and_the_manual_key() {
        let sealer = sealer();
        let start = Enrolment::start(&sealer, "alice", DEFAULT_ISSUER, NOW).unwrap();
        assert!(start
            .otpauth_uri
            .starts_with("otpauth://totp/Gatehouse:alice?"));
        assert!(start
            .otpauth_uri
            .contains(&format!("secret={}", start.manual_key)));
        assert!(start.qr_svg.starts_with("<svg"));
        assert_eq!(secret_from_uri(&start.otpauth_uri).len(), 20);
        assert!(!format!("{start:?}").contains(&start.manual_key));
    }

    #[test]
    fn confirm_with_a_code_from_the_app_saves_the_secret_and_gives_ten_recovery_codes() {
        let sealer = sealer();
        let start = Enrolment::start(&sealer, "alice", DEFAULT_ISSUER, NOW).unwrap();
        let secret = secret_from_uri(&start.otpauth_uri);
        let later = NOW + 45;
        let code = reference_totp(&secret, later, 6);
        let confirmed = Enrolment::confirm(&sealer, "alice", &start.pending, &code, later).unwrap();
        assert_eq!(confirmed.recovery_codes.len(), 10);
        let mut record = confirmed.record;
        assert!(record.is_enrolled());
        assert_eq!(record.enrolled_at, Some(later));
        assert_eq!(record.last_used_step, Some(later / STEP_SECONDS));
        assert_eq!(record.recovery_codes_left(), 10);
        assert_eq!(
            record.open_secret(&sealer).unwrap().unwrap().as_bytes(),
            &secret[..]
        );

        let policy = LockoutPolicy::default();
        // The code used to confirm cannot log in again...
        assert!(record.verify_totp(&sealer, &code, later, &policy).is_err());
        // ...but the next one can, and so can a recovery code.
        let next = later + STEP_SECONDS;
        let next_code = reference_totp(&secret, next, 6);
        assert_eq!(
            record.verify_totp(&sealer, &next_code, next, &policy),
            Ok(())
        );
        assert_eq!(
            record.use_recovery_code(&confirmed.recovery_codes[0], next, &policy),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_first_code_saves_nothing() {
        let sealer = sealer();
        let start = Enrolment::start(&sealer, "alice", DEFAULT_ISSUER, NOW).unwrap();
        let secret = secret_from_uri(&start.otpauth_uri);
        let stale = reference_totp(&secret, NOW - 3 * STEP_SECONDS, 6);
        let result = Enrolment::confirm(&sealer, "alice", &start.pending, &stale, NOW);
        // A stale code may, rarely, equal one in the window; then it is rightly accepted.
        let in_window = (NOW - STEP_SECONDS..=NOW + STEP_SECONDS)
            .step_by(STEP_SECONDS as usize)
            .any(|t| reference_totp(&secret, t, 6) == stale);
        if !in_window {
            assert_eq!(result.unwrap_err(), EnrolError::Code(TotpRefusal::Wrong));
        }
        assert_eq!(
            Enrolment::confirm(&sealer, "alice", &start.pending, "abc", NOW).unwrap_err(),
            EnrolError::Code(TotpRefusal::Malformed)
        );
    }

    #[test]
    fn a_pending_enrolment_opens_only_for_its_user_and_key() {
        let sealer = sealer();
        let start = Enrolment::start(&sealer, "alice", DEFAULT_ISSUER, NOW).unwrap();
        let code = reference_totp(&secret_from_uri(&start.otpauth_uri), NOW, 6);
        assert_eq!(
            Enrolment::confirm(&sealer, "mallory", &start.pending, &code, NOW).unwrap_err(),
            EnrolError::PendingInvalid
        );
        let other = Sealer::new(vec![[4u8; 32]]).unwrap();
        assert_eq!(
            Enrolment::confirm(&other, "alice", &start.pending, &code, NOW).unwrap_err(),
            EnrolError::PendingInvalid
        );
        assert_eq!(
            Enrolment::confirm(&sealer, "alice", "garbage", &code, NOW).unwrap_err(),
            EnrolError::PendingInvalid
        );
        // A stored secret is not a pending enrolment either.
        let stored = sealer.seal(TOTP_SECRET_PURPOSE, &[0u8; 28]);
        assert_eq!(
            Enrolment::confirm(&sealer, "alice", &stored, &code, NOW).unwrap_err(),
            EnrolError::PendingInvalid
        );
    }

    #[test]
    fn a_pending_enrolment_expires_after_ten_minutes() {
        let sealer = sealer();
        let start = Enrolment::start(&sealer, "alice", DEFAULT_ISSUER, NOW).unwrap();
        let secret = secret_from_uri(&start.otpauth_uri);
        let late = NOW + PENDING_TTL_SECONDS;
        let code = reference_totp(&secret, late, 6);
        assert_eq!(
            Enrolment::confirm(&sealer, "alice", &start.pending, &code, late).unwrap_err(),
            EnrolError::PendingExpired
        );
        let early = NOW - 10 * 60;
        let code = reference_totp(&secret, early, 6);
        assert_eq!(
            Enrolment::confirm(&sealer, "alice", &start.pending, &code, early).unwrap_err(),
            EnrolError::PendingExpired
        );
    }

    #[test]
    fn a_bad_issuer_is_refused_at_start() {
        assert_eq!(
            Enrolment::start(&sealer(), "alice", "a:b", NOW).unwrap_err(),
            EnrolError::Setup(TotpSetupError::BadIssuer)
        );
    }
}
