//! The end of a login, once the IdP's answer has checked out: the identity step (JIT
//! provisioning into the store, or the claims as they are) and the new session, written in one
//! store transaction, group-committed with the logins that arrive while a commit is in flight
//! ([`crate::store::writer::GroupCommit`]; on PostgreSQL committed on its own connection beside
//! them). It waits for that commit, so the callback runs it on tokio's blocking pool, never on a
//! proxy thread.

use std::time::Instant;

use super::oidc::LoginResult;
use super::AuthView;
use crate::identity::jit::{self, JitAction, JitRefusal, Provisioned};
use crate::metrics::JitOutcome;
use crate::mfa::gate::{PendingLogin, PENDING_TTL};
use crate::mfa::policy::{decide, login_level, MfaDecision, Standing};
use crate::store::sessions::{PendingSession, SessionRecord, SESSION_RECORD_VERSION};
use crate::store::StoreError;

/// Why a checked login still got no session.
#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the local account refused the login: {}", .0.reason())]
    Refused(JitRefusal),
    /// A second factor (TOTP or Email OTP) is required, the connection keeps no local
    /// account, and the config says deny.
    #[error("a second factor is required but the connection has no local accounts")]
    MfaConflict,
}

/// A login that checked out.
#[derive(Debug)]
pub enum Completed {
    /// The session is issued: its `Set-Cookie` values.
    Session(Vec<String>),
    /// The second factor comes first: the pending-MFA cookie's sealed value.
    NeedsMfa(String),
}

/// What the store transaction decided.
enum Step {
    Session(crate::auth::session::PendingSession),
    Mfa(crate::identity::Identity),
}

impl AuthView {
    /// Provisions (for a JIT connection) and creates the session, in one transaction; ends
    /// the session the browser came with (`old_sid`) in the same one. When the login needs
    /// its second factor first, no session is written: the login waits in the MFA gate. `rd`
    /// is where the browser goes afterwards. Blocking.
    pub fn complete_login(
        &self,
        connection_id: &str,
        result: LoginResult,
        old_sid: Option<String>,
        request_id: &str,
        rd: &str,
    ) -> Result<Completed, LoginFailure> {
        let connection = self
            .provider(connection_id)
            .map(|p| p.connection.clone())
            .ok_or_else(|| StoreError::Db(format!("unknown connection {connection_id}")))?;
        let started = Instant::now();
        let old: Vec<String> = old_sid.into_iter().collect();
        let level = login_level(&self.settings.mfa.config, &connection);
        let when = self.settings.mfa.config.when_no_local_account;
        let jit = connection.jit;
        let clock = self.clock.clone();
        let lifetime = self.sessions.config().lifetime.as_secs();
        let request_id = request_id.to_string();
        let (claims, idp_sid, tokens) = (
            result.identity.clone(),
            result.idp_sid.clone(),
            result.tokens.clone(),
        );
        let old_in_tx = old.clone();
        let mfa_config = self.settings.mfa.config.clone();
        // The login's transaction, group-committed with logins arriving meanwhile; it owns
        // what it reads, since it runs on the commit thread (and runs again alone if its
        // batch fails, or again after a lost race on PostgreSQL).
        let written = self.logins.write(move |tx| {
            if !old_in_tx.is_empty() {
                tx.delete_sessions(&old_in_tx)?;
            }
            let (identity, action) = if jit {
                match jit::provision(tx, &connection, &claims, clock.now(), &request_id)? {
                    Provisioned::Allowed { identity, action } => (identity, Some(action)),
                    Provisioned::Refused(refusal) => {
                        return Ok(Err(LoginFailure::Refused(refusal)))
                    }
                }
            } else {
                (claims.clone(), None)
            };
            // An account "has" a second factor for `optional` levels when TOTP is enrolled or
            // Email OTP can reach a verified address.
            let enrolled = match &identity.user_id {
                Some(id) => tx.user(id)?.is_some_and(|u| {
                    crate::mfa::policy::factors(
                        &mfa_config,
                        u.mfa.is_enrolled(),
                        u.email.as_deref(),
                        u.email_verified,
                    )
                    .any_set_up()
                }),
                None => false,
            };
            match decide(
                level,
                when,
                Standing {
                    local_account: identity.user_id.is_some(),
                    enrolled,
                    done: false,
                },
            ) {
                MfaDecision::Pass => {}
                MfaDecision::Challenge => return Ok(Ok((Step::Mfa(identity), action))),
                MfaDecision::Conflict => return Ok(Err(LoginFailure::MfaConflict)),
            }
            let created_at = clock.now();
            let pending = PendingSession::new(SessionRecord {
                version: SESSION_RECORD_VERSION,
                sid: crate::ids::random_id(),
                identity,
                idp_sid: idp_sid.clone(),
                created_at,
                expires_at: created_at + lifetime,
                tokens: tokens.clone(),
                mfa_at: None,
                last_seen: None,
            });
            tx.put_session(pending.record())?;
            Ok(Ok((Step::Session(pending), action)))
        });
        if jit {
            self.metrics
                .jit_duration
                .observe(started.elapsed().as_secs_f64());
        }
        if !old.is_empty() {
            self.sessions.forget(&old);
        }
        let (step, action) = match written {
            Ok(Ok(done)) => done,
            Ok(Err(LoginFailure::Refused(refusal))) => {
                self.metrics.jit(connection_id, JitOutcome::Refused);
                if let JitRefusal::Disabled { user_id } = &refusal {
                    self.sessions.revoke_user(user_id);
                    self.update_sessions_gauge();
                }
                return Err(LoginFailure::Refused(refusal));
            }
            Ok(Err(other)) => {
                if matches!(other, LoginFailure::MfaConflict) {
                    self.metrics.mfa_conflict(connection_id);
                }
                return Err(other);
            }
            Err(e) => {
                self.metrics.store_error(crate::metrics::StoreOp::Login);
                return Err(e.into());
            }
        };
        if let Some(action) = action {
            self.metrics.jit(connection_id, action.label());
            if action == JitAction::Created {
                self.metrics.users.inc();
            }
        }
        Ok(match step {
            Step::Session(pending) => Completed::Session(self.sessions.activate(pending)),
            Step::Mfa(identity) => {
                let user_id = identity.user_id.clone().unwrap_or_default();
                let username = identity.username.clone().unwrap_or_else(|| user_id.clone());
                let session = self
                    .sessions
                    .prepare(identity, result.idp_sid, result.tokens);
                Completed::NeedsMfa(self.mfa.hold(PendingLogin {
                    session,
                    connection: connection_id.to_string(),
                    user_id,
                    username,
                    rd: rd.to_string(),
                    exp: self.clock.now() + PENDING_TTL,
                })?)
            }
        })
    }
}

/// [`AuthView::complete_login`] on tokio's blocking pool.
pub async fn complete_login_off_thread(
    auth: &AuthView,
    connection_id: String,
    result: LoginResult,
    old_sid: Option<String>,
    request_id: String,
    rd: String,
) -> Result<Completed, LoginFailure> {
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || {
        auth.complete_login(&connection_id, result, old_sid, &request_id, &rd)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoginFailure::Store(StoreError::Db(format!(
            "the login task failed: {e}"
        ))))
    })
}
