//! Local multi-factor authentication: a TOTP or Email OTP second factor for users of local
//! accounts, asked for after the first factor. Pure logic only (no HTTP, no storage); the caller loads the user
//! record, calls in here with the current time, and saves the record again.
//!
//! - [`record`]: [`MfaRecord`], the part of the stored user record about the second factor
//!   (sealed TOTP secret, replay guard, recovery-code hashes, failure counter), and the two kinds
//!   of login attempt against it: [`MfaRecord::verify_totp`] and
//!   [`MfaRecord::use_recovery_code`].
//! - [`totp`]: RFC 6238 codes through `totp-rs` (SHA-1, 6 digits, 30 s, one step of skew), the
//!   `otpauth://` URI, and [`totp::verify`] with its replay check.
//! - [`recovery`]: ten one-time recovery codes, stored as salted hashes.
//! - [`lockout`]: five failures in a row lock the user out for five minutes ([`LockoutPolicy`]).
//! - [`qr`]: the `otpauth://` URI as a self-contained inline SVG QR code.
//! - [`email`]: Email OTP: codes held (hashed) with the pending login, and the SMTP [`email::Mailer`].
//! - [`enrol`]: [`Enrolment::start`] and [`Enrolment::confirm`]; the secret is saved only once
//!   the user has typed a valid code.

pub mod email;
pub mod enrol;
pub mod gate;
pub mod lockout;
pub mod policy;
pub mod qr;
pub mod record;
pub mod recovery;
pub mod totp;

pub use enrol::{Confirmed, EnrolError, Enrolment, EnrolmentStart};
pub use lockout::{is_locked, FailureOutcome, LockoutPolicy};
pub use record::{MfaRecord, MfaRefusal, WrongCode, TOTP_SECRET_PURPOSE};
pub use recovery::NewRecoveryCodes;
pub use totp::{TotpRefusal, TotpSecret, TotpSetupError, DEFAULT_ISSUER};
