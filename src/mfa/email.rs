//! Email OTP: a short numeric code mailed to the account's verified address after the first
//! factor. Codes live with the pending login (or the stepping-up session) they were sent for
//! ([`super::gate::MfaGate`]: in memory, or sealed in a shared store so every replica can
//! check them), and only as a salted SHA-256 hash: the code, a
//! fresh 16-byte salt and the id of that login go into the hash, so a code from another login
//! never matches. A code is single use, expires after `email_otp_ttl`, and a resend replaces
//! it; resends wait `email_otp_resend_after` and stop after `email_otp_max_sends`.
//!
//! [`Mailer`] sends through `[smtp]` with lettre's async transport, built once from config,
//! under a timeout, on the caller's tokio runtime (never blocking a thread).

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::model::{EmailOtp, Smtp, SmtpSecurity};

/// One code in force for one login (or step-up), and the send count of that login.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EmailChallenge {
    /// The account the code went to.
    pub user_id: String,
    /// `None` once the code was used (the send count stays).
    code: Option<StoredCode>,
    /// When the last code was sent (unix seconds).
    pub last_sent_at: u64,
    /// Codes sent so far for this login.
    pub sends: u32,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct StoredCode {
    salt: [u8; 16],
    hash: [u8; 32],
    expires_at: u64,
}

impl std::fmt::Debug for StoredCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCode")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn hash(salt: &[u8; 16], context: &str, code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"gatehouse-email-otp\0");
    h.update(salt);
    h.update(context.as_bytes());
    h.update([0]);
    h.update(code.as_bytes());
    h.finalize().into()
}

/// A fresh code of `length` digits (uniform, from the OS generator).
pub fn new_code(length: u32) -> String {
    let length = length.clamp(6, 8);
    let n = rand::rngs::OsRng.gen_range(0..10u64.pow(length));
    format!("{n:0width$}", width = length as usize)
}

/// Why a new code may not be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// The last code went out less than `resend_after` ago: wait this many seconds.
    TooSoon { wait: u64 },
    /// `max_sends` codes went out for this login already.
    TooMany,
}

/// What a typed code was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailCheck {
    /// Right, and now used up.
    Accepted,
    /// Not the code (counts toward the lock-out).
    Wrong,
    /// The code's time ran out: send a new one.
    Expired,
    /// No code in force (never sent, or already used).
    NoCode,
}

impl EmailChallenge {
    /// Whether another code may be sent at `now` under `policy`.
    pub fn may_send(this: Option<&Self>, policy: &EmailOtp, now: u64) -> Result<(), SendRefusal> {
        let Some(c) = this else { return Ok(()) };
        if c.sends >= policy.max_sends {
            return Err(SendRefusal::TooMany);
        }
        let ready = c.last_sent_at.saturating_add(policy.resend_after.as_secs());
        if now < ready {
            return Err(SendRefusal::TooSoon { wait: ready - now });
        }
        Ok(())
    }

    /// The state after a code was sent for `context` at `now`: it replaces any earlier code.
    pub fn sent(
        previous: Option<&Self>,
        user_id: &str,
        context: &str,
        code: &str,
        policy: &EmailOtp,
        now: u64,
    ) -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill(&mut salt);
        EmailChallenge {
            user_id: user_id.to_string(),
            code: Some(StoredCode {
                salt,
                hash: hash(&salt, context, code),
                expires_at: now.saturating_add(policy.ttl.as_secs()),
            }),
            last_sent_at: now,
            sends: previous.map_or(0, |p| p.sends).saturating_add(1),
        }
    }

    /// Checks `code` for `context` at `now`; an accepted code is used up.
    pub fn check(&mut self, context: &str, code: &str, now: u64) -> EmailCheck {
        let Some(stored) = &self.code else {
            return EmailCheck::NoCode;
        };
        if now >= stored.expires_at {
            return EmailCheck::Expired;
        }
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let ok: bool = hash(&stored.salt, context, &code)
            .ct_eq(&stored.hash)
            .into();
        if ok {
            self.code = None;
            EmailCheck::Accepted
        } else {
            EmailCheck::Wrong
        }
    }

    /// Drops the code in force (the send count stays).
    pub fn void(&mut self) {
        self.code = None;
    }

    /// Whether a code is in force at `now` (the page then shows the code form).
    pub fn has_code(&self, now: u64) -> bool {
        self.code.as_ref().is_some_and(|c| now < c.expires_at)
    }

    /// When the code in force expires.
    pub fn expires_at(&self) -> Option<u64> {
        self.code.as_ref().map(|c| c.expires_at)
    }
}

/// A rendered mail: subject, plain-text and HTML parts.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the address `{0}` cannot be mailed")]
    Address(String),
    #[error("the mail could not be built: {0}")]
    Build(String),
    /// The server answered with a refusal: lettre's text with the SMTP reply.
    #[error("SMTP refused: {0}")]
    Refused(String),
    /// No conversation: connection, TLS or protocol failure.
    #[error("SMTP: {0}")]
    Connection(String),
    #[error("SMTP: no answer within {0:?}")]
    Timeout(Duration),
}

/// The SMTP transport, built once from `[smtp]`.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(smtp: &Smtp) -> Result<Self, String> {
        let from: Mailbox = smtp.from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let tls = || -> Result<TlsParameters, String> {
            let mut b = TlsParameters::builder(smtp.host.clone());
            if let Some(pem) = &smtp.ca_pem {
                let cert = Certificate::from_pem(pem).map_err(|e| format!("smtp.ca_file: {e}"))?;
                b = b
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert);
            }
            b.build_rustls().map_err(|e| format!("smtp TLS: {e}"))
        };
        let tls = match smtp.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::StartTls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(smtp.timeout));
        if let Some((user, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            timeout: smtp.timeout,
        })
    }

    /// Sends `mail` to `to`, giving up after the configured timeout.
    pub async fn send(&self, to: &str, mail: Mail) -> Result<(), SendError> {
        let to: Mailbox = to.parse().map_err(|_| SendError::Address(to.to_string()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(mail.text),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(mail.html),
                    ),
            )
            .map_err(|e| SendError::Build(e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_timeout() => Err(SendError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_transient() || e.is_permanent() => {
                Err(SendError::Refused(e.to_string()))
            }
            Ok(Err(e)) => Err(SendError::Connection(e.to_string())),
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_800_000_000;

    fn policy() -> EmailOtp {
        EmailOtp::default()
    }

    /// A sent code is accepted once for its own login, and then never again (single use).
    #[test]
    fn a_code_works_once_for_its_own_login() {
        let mut c = EmailChallenge::sent(None, "u1", "login-a", "123456", &policy(), T0);
        assert_eq!(c.check("login-a", "123 456", T0 + 1), EmailCheck::Accepted);
        assert_eq!(c.check("login-a", "123456", T0 + 2), EmailCheck::NoCode);
    }

    /// The code expires at `ttl` on the clock passed in, not a second later.
    #[test]
    fn a_code_expires_after_its_ttl() {
        let mut c = EmailChallenge::sent(None, "u1", "a", "123456", &policy(), T0);
        assert!(c.has_code(T0 + 299));
        assert_eq!(c.check("a", "000000", T0 + 299), EmailCheck::Wrong);
        assert_eq!(c.check("a", "123456", T0 + 300), EmailCheck::Expired);
    }

    /// A resend replaces the code: the earlier one no longer works; the count goes up.
    #[test]
    fn a_resend_replaces_the_previous_code() {
        let first = EmailChallenge::sent(None, "u1", "a", "111111", &policy(), T0);
        let mut second =
            EmailChallenge::sent(Some(&first), "u1", "a", "222222", &policy(), T0 + 30);
        assert_eq!(second.sends, 2);
        assert_eq!(second.check("a", "111111", T0 + 31), EmailCheck::Wrong);
        assert_eq!(second.check("a", "222222", T0 + 31), EmailCheck::Accepted);
    }

    /// Resends wait `resend_after` and stop at `max_sends`.
    #[test]
    fn resends_are_limited_in_time_and_number() {
        let p = policy();
        let mut c = EmailChallenge::sent(None, "u1", "a", "111111", &p, T0);
        assert_eq!(
            EmailChallenge::may_send(Some(&c), &p, T0 + 10),
            Err(SendRefusal::TooSoon { wait: 20 })
        );
        for n in 1..p.max_sends {
            let at = T0 + 30 * u64::from(n);
            assert_eq!(EmailChallenge::may_send(Some(&c), &p, at), Ok(()));
            c = EmailChallenge::sent(Some(&c), "u1", "a", "111111", &p, at);
        }
        assert_eq!(
            EmailChallenge::may_send(Some(&c), &p, T0 + 100_000),
            Err(SendRefusal::TooMany)
        );
    }

    /// Codes have the configured length, digits only, leading zeros kept.
    #[test]
    fn codes_have_the_configured_length() {
        for len in 6..=8 {
            for _ in 0..50 {
                let code = new_code(len);
                assert_eq!(code.len(), len as usize);
                assert!(code.bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    proptest! {
        /// Whatever is typed, only the sent code for the same login is accepted: any other
        /// string, and the right code bound to any other login, is refused.
        #[test]
        fn only_the_sent_code_for_the_same_login_is_accepted(
            typed in "[0-9 ]{0,10}|.{0,12}",
            other in "[A-Za-z0-9_-]{1,24}",
        ) {
            let sent = "482913";
            prop_assume!(other != "login-a");
            let mut c = EmailChallenge::sent(None, "u1", "login-a", sent, &policy(), T0);
            let normalised: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
            if normalised != sent {
                prop_assert_eq!(c.check("login-a", &typed, T0 + 1), EmailCheck::Wrong);
            }
            let mut c = EmailChallenge::sent(None, "u1", "login-a", sent, &policy(), T0);
            prop_assert_eq!(c.check(&other, sent, T0 + 1), EmailCheck::Wrong);
        }
    }
}
