//! The store side of the second-factor step, as narrow services for the TOTP pages
//! (`web::mfa`): read the account, save a confirmed enrolment, check a code under the
//! lockout, and issue the session a login was holding back. Each change is one write
//! transaction on the blocking pool, with its audit entry; the pages only decide what to show.

use std::sync::Arc;

use super::{Auth, AuthView};
use crate::metrics::{EmailSend, MfaFactor, MfaResult};
use crate::mfa::email::{EmailChallenge, EmailCheck, Mail, SendError, SendRefusal};
use crate::mfa::policy::EmailOtpUnusable;
use crate::mfa::{FailureOutcome, MfaRecord, MfaRefusal};
use crate::store::audit::{AuditAction, AuditActor, AuditEntry};
use crate::store::sessions::PendingSession;
use crate::store::users::UserRecord;
use crate::store::StoreError;

fn audit(action: AuditAction, user_id: &str, request_id: &str, at: u64) -> AuditEntry {
    let mut entry = AuditEntry::new(AuditActor::Login, action, at);
    entry.user_id = Some(user_id.to_string());
    entry.request_id = Some(request_id.to_string()).filter(|r| !r.is_empty());
    entry
}

impl Auth {
    /// Runs a store write on the blocking pool.
    async fn write_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnMut(&mut crate::store::Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let auth = Arc::clone(self);
        tokio::task::spawn_blocking(move || auth.store.write(f))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
    }

    /// The account at the MFA step (read on the blocking pool: a shared store is a network
    /// call).
    pub async fn mfa_account(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let (store, id) = (self.store.clone(), user_id.to_string());
        tokio::task::spawn_blocking(move || store.read(|tx| tx.user(&id)))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
    }

    /// Saves a confirmed enrolment (audited `mfa_enrolled`, counted in
    /// `gatehouse_mfa_enrolments_total`). `false` when the account is gone, disabled, or
    /// already enrolled (another tab won): nothing is changed then.
    pub async fn save_enrolment(
        self: &Arc<Self>,
        user_id: &str,
        record: MfaRecord,
        request_id: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (uid, rid) = (user_id.to_string(), request_id.to_string());
        let saved = self
            .write_blocking(move |tx| {
                let Some(mut user) = tx.user(&uid)? else {
                    return Ok(false);
                };
                if user.mfa.is_enrolled() || user.disabled {
                    return Ok(false);
                }
                user.mfa = record.clone();
                user.updated_at = now;
                tx.put_user(&user)?;
                let mut entry = audit(AuditAction::MfaEnrolled, &uid, &rid, now);
                entry.changed = vec!["mfa".into()];
                tx.append_audit(&entry)?;
                Ok(true)
            })
            .await;
        if matches!(saved, Ok(true)) {
            self.metrics.mfa_enrolments.inc();
        }
        saved
    }
}

impl AuthView {
    /// Checks a code at the verify form: TOTP (digits and spaces) or a recovery code, under
    /// the lockout, saving the counter in the same transaction (audited when the account
    /// locks or a recovery code is used). Returns whether the code was read as TOTP, and the
    /// outcome.
    pub async fn check_second_factor(
        &self,
        user_id: &str,
        code: &str,
        request_id: &str,
        now: u64,
    ) -> (bool, Result<Result<(), MfaRefusal>, StoreError>) {
        let is_totp = !code.is_empty() && code.chars().all(|c| c.is_ascii_digit() || c == ' ');
        let (uid, rid, code) = (
            user_id.to_string(),
            request_id.to_string(),
            code.to_string(),
        );
        let policy = self.settings.mfa.config.lockout;
        let sealer = self.settings.mfa.sealer.clone();
        let outcome = self
            .write_blocking(move |tx| {
                let Some(mut user) = tx.user(&uid)? else {
                    return Ok(Err(MfaRefusal::NotEnrolled));
                };
                if user.disabled {
                    return Ok(Err(MfaRefusal::NotEnrolled));
                }
                let result = if is_totp {
                    user.mfa.verify_totp(&sealer, &code, now, &policy)
                } else {
                    user.mfa.use_recovery_code(&code, now, &policy)
                };
                tx.put_user(&user)?;
                match &result {
                    Err(MfaRefusal::Wrong {
                        outcome: FailureOutcome::LockedNow { .. },
                        ..
                    }) => {
                        let mut entry = audit(AuditAction::MfaLocked, &uid, &rid, now);
                        entry.reason = Some(format!("{} wrong codes", policy.max_failures));
                        tx.append_audit(&entry)?;
                    }
                    Ok(()) if !is_totp => {
                        tx.append_audit(&audit(AuditAction::MfaRecoveryUsed, &uid, &rid, now))?;
                    }
                    _ => {}
                }
                Ok(result)
            })
            .await;
        (is_totp, outcome)
    }

    /// Issues the session a login held back for its second factor, recording when the factor
    /// was done: stored first, then live. Returns its `Set-Cookie` values.
    pub async fn issue_after_second_factor(
        &self,
        session: PendingSession,
        now: u64,
    ) -> Result<Vec<String>, StoreError> {
        let pending = session.with_mfa(now);
        let record = pending.record().clone();
        self.write_blocking(move |tx| tx.put_session(&record))
            .await?;
        let cookies = self.sessions.activate(pending);
        self.update_sessions_gauge();
        Ok(cookies)
    }

    /// Counts one attempt at the second factor by its factor and result.
    pub fn count_second_factor(&self, factor: MfaFactor, result: MfaResult) {
        self.metrics.mfa_challenge(factor, result);
    }

    /// Sends a new Email OTP code for `context` (a pending login id or a session id) to the
    /// account's verified address, replacing any earlier code, within the resend limits.
    /// `render` makes the mail from the code and its expiry (unix seconds). The new code is
    /// kept (hashed) only once the SMTP server took the mail.
    pub async fn send_email_code(
        &self,
        context: &str,
        user_id: &str,
        keep_until: u64,
        request_id: &str,
        render: impl FnOnce(&str, u64) -> Mail,
    ) -> Result<u64, EmailSendFailure> {
        let user = match self.mfa_account(user_id).await {
            Ok(Some(user)) if !user.disabled => user,
            Ok(_) => return Err(EmailSendFailure::Unusable(EmailOtpUnusable::NoEmail)),
            Err(e) => return Err(EmailSendFailure::Store(e)),
        };
        let config = &self.settings.mfa.config;
        let to = crate::mfa::policy::email_otp_target(
            config,
            user.email.as_deref(),
            user.email_verified,
        )
        .map_err(EmailSendFailure::Unusable)?
        .to_string();
        let Some(mailer) = &self.settings.mfa.mailer else {
            return Err(EmailSendFailure::Unusable(EmailOtpUnusable::Off));
        };
        let now = self.clock.now();
        let previous = self
            .mfa
            .email_challenge(context)
            .await
            .map_err(EmailSendFailure::Store)?;
        EmailChallenge::may_send(previous.as_ref(), &config.email_otp, now)
            .map_err(EmailSendFailure::Limited)?;
        let code = crate::mfa::email::new_code(config.email_otp.length);
        let expires_at = now.saturating_add(config.email_otp.ttl.as_secs());
        let mail = render(&code, expires_at);
        let started = std::time::Instant::now();
        let sent = mailer.send(&to, mail).await;
        let seconds = started.elapsed().as_secs_f64();
        match sent {
            Ok(()) => {
                self.metrics.mfa_email_send(EmailSend::Sent, seconds);
                let state = EmailChallenge::sent(
                    previous.as_ref(),
                    user_id,
                    context,
                    &code,
                    &config.email_otp,
                    now,
                );
                self.mfa
                    .keep_email_challenge(context, state, keep_until)
                    .await
                    .map_err(EmailSendFailure::Store)?;
                tracing::info!(user_id, request_id, seconds, "Email OTP code sent");
                Ok(expires_at)
            }
            Err(e) => {
                let label = match &e {
                    SendError::Timeout(_) => EmailSend::Timeout,
                    SendError::Refused(_) => EmailSend::Refused,
                    SendError::Connection(_) | SendError::Address(_) | SendError::Build(_) => {
                        EmailSend::Error
                    }
                };
                self.metrics.mfa_email_send(label, seconds);
                tracing::warn!(user_id, request_id, error = %e, "Email OTP code not sent");
                Err(EmailSendFailure::Send(e))
            }
        }
    }

    /// Checks an emailed code for `context` under the same lock-out as TOTP: a wrong code is
    /// counted on the account (one write transaction, audited when it locks), a right one
    /// clears the count. The code itself never reaches the store.
    pub async fn check_email_code(
        &self,
        context: &str,
        user_id: &str,
        code: &str,
        request_id: &str,
    ) -> Result<Result<(), EmailRefusal>, StoreError> {
        let now = self.clock.now();
        let Some(user) = self.mfa_account(user_id).await? else {
            return Ok(Err(EmailRefusal::Gone));
        };
        if user.disabled {
            return Ok(Err(EmailRefusal::Gone));
        }
        if let Some(until) = crate::mfa::lockout::locked_until(&user.mfa, now) {
            return Ok(Err(EmailRefusal::Locked { until }));
        }
        // `users mfa reset` (and every other admin change) stamps `updated_at`: codes sent
        // before it no longer work.
        let checked = self
            .mfa
            .check_email_code(context, user_id, code, user.updated_at)
            .await?;
        let policy = self.settings.mfa.config.lockout;
        let (uid, rid) = (user_id.to_string(), request_id.to_string());
        match checked {
            EmailCheck::Accepted => {
                if user.mfa.failures > 0 {
                    self.write_blocking(move |tx| {
                        if let Some(mut user) = tx.user(&uid)? {
                            crate::mfa::lockout::record_success(&mut user.mfa);
                            tx.put_user(&user)?;
                        }
                        Ok(())
                    })
                    .await?;
                }
                Ok(Ok(()))
            }
            EmailCheck::Expired => Ok(Err(EmailRefusal::Expired)),
            EmailCheck::NoCode => Ok(Err(EmailRefusal::NoCode)),
            EmailCheck::Wrong => {
                let outcome = self
                    .write_blocking(move |tx| {
                        let Some(mut user) = tx.user(&uid)? else {
                            return Ok(FailureOutcome::Counted { tries_left: 0 });
                        };
                        let outcome =
                            crate::mfa::lockout::record_failure(&mut user.mfa, &policy, now);
                        tx.put_user(&user)?;
                        if let FailureOutcome::LockedNow { .. } = outcome {
                            let mut entry = audit(AuditAction::MfaLocked, &uid, &rid, now);
                            entry.reason =
                                Some(format!("{} wrong codes (Email OTP)", policy.max_failures));
                            tx.append_audit(&entry)?;
                        }
                        Ok(outcome)
                    })
                    .await?;
                Ok(Err(EmailRefusal::Wrong(outcome)))
            }
        }
    }
}

/// Why no Email OTP code went out.
#[derive(Debug, thiserror::Error)]
pub enum EmailSendFailure {
    #[error("Email OTP cannot be used: {}", .0.reason())]
    Unusable(EmailOtpUnusable),
    #[error("resend limit: {0:?}")]
    Limited(SendRefusal),
    #[error("{0}")]
    Send(SendError),
    #[error("{0}")]
    Store(StoreError),
}

/// Why an emailed code was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailRefusal {
    /// Wrong: counted toward the lock-out.
    Wrong(FailureOutcome),
    /// Locked by earlier wrong codes (TOTP or email) until this unix second.
    Locked { until: u64 },
    /// The code ran out: send a new one.
    Expired,
    /// No code in force for this login (never sent, used, or from another login).
    NoCode,
    /// The account is gone or disabled.
    Gone,
}
