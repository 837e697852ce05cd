//! The store side of the second-factor step, as narrow services for the TOTP pages
//! (`web::mfa`): read the account, save a confirmed enrolment, check a code under the
//! lockout, and issue the session a login was holding back. Each change is one write
//! transaction on the blocking pool, with its audit entry; the pages only decide what to show.

use std::sync::Arc;

use super::Auth;
use crate::metrics::MfaResult;
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
        f: impl FnOnce(&mut crate::store::Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let auth = Arc::clone(self);
        tokio::task::spawn_blocking(move || auth.store.write(f))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
    }

    /// The account at the MFA step.
    pub fn mfa_account(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.read(|tx| tx.user(user_id))
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
                user.mfa = record;
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

    /// Checks a code at the verify form: TOTP (digits and spaces) or a recovery code, under
    /// the lockout, saving the counter in the same transaction (audited when the account
    /// locks or a recovery code is used). Returns whether the code was read as TOTP, and the
    /// outcome.
    pub async fn check_second_factor(
        self: &Arc<Self>,
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
        let policy = self.mfa.config.lockout;
        let sealer = self.mfa.sealer.clone();
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
        self: &Arc<Self>,
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

    /// Counts one attempt at the second factor by its result.
    pub fn count_second_factor(&self, result: MfaResult) {
        self.metrics.mfa_challenge(result);
    }
}
