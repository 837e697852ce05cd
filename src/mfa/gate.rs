//! What the second-factor step keeps between requests: the logins that passed the IdP and
//! wait for their TOTP code (in memory, a few minutes at most) and the clock ([`MfaGate`],
//! built once); the policy, the keys that seal TOTP secrets in the store and the mail
//! transport ([`MfaPolicy`], built again by a config reload). The browser holds only a
//! sealed, short-lived cookie naming its pending login, never anything in a query string.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::model::Mfa;
use crate::ids::random_id;
use crate::seal::Sealer;
use crate::store::sessions::PendingSession;

use super::email::{EmailChallenge, EmailCheck, Mailer};

/// How long a login may wait for its second factor.
pub const PENDING_TTL: u64 = 10 * 60;
/// The sealing purpose of the pending-MFA cookie and of the forms' CSRF tokens.
const COOKIE_PURPOSE: &str = "mfa-pending";
const CSRF_PURPOSE: &str = "mfa-form";

/// A login that passed the IdP and waits for its second factor; its session is issued only
/// once a code is accepted.
#[derive(Debug)]
pub struct PendingLogin {
    pub session: PendingSession,
    /// The connection the first factor came through (the Email OTP mail names it).
    pub connection: String,
    pub user_id: String,
    pub username: String,
    pub rd: String,
    pub exp: u64,
}

/// A pending login as the MFA pages see it (its session stays in the gate).
#[derive(Debug, Clone)]
pub struct Waiting {
    pub id: String,
    pub connection: String,
    pub exp: u64,
    pub user_id: String,
    pub username: String,
    pub rd: String,
}

/// What the pending-MFA cookie carries.
#[derive(Debug, Serialize, Deserialize)]
struct CookieBody {
    id: String,
    uid: String,
    exp: u64,
}

/// The second-factor settings a config reload may replace: `[mfa]` (the policy and the keys
/// that seal TOTP secrets) and `[smtp]` (the Email OTP transport), built from one config.
pub struct MfaPolicy {
    pub config: Mfa,
    /// Seals TOTP secrets in the store: the first key seals, every listed key opens.
    pub sealer: Sealer,
    /// The SMTP transport, when `[smtp]` is configured.
    pub mailer: Option<Mailer>,
    /// The keys of `sealer`, in order (a reload checks that no dropped key still seals a
    /// stored secret).
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for MfaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaPolicy")
            .field("totp", &self.config.totp)
            .finish()
    }
}

impl MfaPolicy {
    /// TOTP secrets are sealed with `config.keys`, else with `data_dir/store.keys` (created
    /// once).
    pub fn new(config: Mfa, data_dir: &Path) -> Result<Self, String> {
        let keys = match &config.keys.0 {
            Some(keys) => keys.clone(),
            None => crate::seal::load_or_create_keys(&data_dir.join("store.keys"))?,
        };
        let sealer = Sealer::new(keys.clone()).map_err(|e| e.to_string())?;
        let mailer = config.smtp.as_ref().map(Mailer::new).transpose()?;
        Ok(Self {
            config,
            sealer,
            mailer,
            keys,
        })
    }

    /// The keys that open stored TOTP secrets; the first one seals.
    pub fn keys(&self) -> &[[u8; 32]] {
        &self.keys
    }
}

/// What the second-factor step keeps across requests and config reloads.
pub struct MfaGate {
    /// Pending logins, TOTP steps and lock-outs are read on it.
    pub clock: Clock,
    /// Bounded by `[limits] pending_mfa`; a full map drops the login closest to expiry.
    pending: Mutex<crate::bounded::ExpiringMap<String, PendingLogin>>,
    evictions: prometheus::IntCounter,
    /// Seals the pending cookie and the CSRF tokens (the session keys).
    cookie_sealer: Sealer,
    /// Email OTP codes in force, by the pending login id or stepping-up session id they were
    /// sent for (same bound as the pending logins). Never written to the store.
    email_codes: Mutex<crate::bounded::ExpiringMap<String, EmailChallenge>>,
}

impl std::fmt::Debug for MfaGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaGate").finish_non_exhaustive()
    }
}

impl MfaGate {
    /// The cookie and CSRF tokens are sealed with `cookie_sealer` (the session keys).
    pub fn new(
        cookie_sealer: Sealer,
        clock: Clock,
        capacity: usize,
        evictions: prometheus::IntCounter,
    ) -> Self {
        Self {
            email_codes: Mutex::new(crate::bounded::ExpiringMap::new(capacity)),
            clock,
            pending: Mutex::new(crate::bounded::ExpiringMap::new(capacity)),
            evictions,
            cookie_sealer,
        }
    }

    /// Now on the gate's clock (unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Keeps a login until its code is accepted; returns the sealed cookie value naming it.
    pub fn hold(&self, login: PendingLogin) -> String {
        let id = random_id();
        let body = CookieBody {
            id: id.clone(),
            uid: login.user_id.clone(),
            exp: login.exp,
        };
        let now = self.now();
        let exp = login.exp;
        if let Ok(mut map) = self.pending.lock() {
            let outcome = map.insert(id, login, exp, now);
            self.evictions.inc_by(outcome.evicted as u64);
        }
        self.cookie_sealer.seal(
            COOKIE_PURPOSE,
            &serde_json::to_vec(&body).unwrap_or_default(),
        )
    }

    /// The pending login a cookie value names, if it is still waiting.
    pub fn peek(&self, cookie: &str) -> Option<Waiting> {
        let plain = self.cookie_sealer.open(COOKIE_PURPOSE, cookie).ok()?;
        let body: CookieBody = serde_json::from_slice(&plain).ok()?;
        if body.exp <= self.now() {
            return None;
        }
        let map = self.pending.lock().ok()?;
        let login = map
            .get(&body.id, self.now())
            .filter(|p| p.user_id == body.uid)?;
        Some(Waiting {
            id: body.id,
            connection: login.connection.clone(),
            exp: login.exp,
            user_id: login.user_id.clone(),
            username: login.username.clone(),
            rd: login.rd.clone(),
        })
    }

    /// Takes a pending login out (once: a second take finds nothing), with its email code.
    pub fn take(&self, id: &str) -> Option<PendingLogin> {
        let now = self.now();
        if let Ok(mut codes) = self.email_codes.lock() {
            codes.remove(&id.to_string(), now);
        }
        self.pending.lock().ok()?.remove(&id.to_string(), now)
    }

    /// The Email OTP state of a login or step-up (`context`), if a code was sent for it.
    pub fn email_challenge(&self, context: &str) -> Option<EmailChallenge> {
        let now = self.now();
        let map = self.email_codes.lock().ok()?;
        map.get(&context.to_string(), now).cloned()
    }

    /// Keeps the state after a send for `context`, until `exp` (the pending login's expiry,
    /// so the send count outlives each code).
    pub fn keep_email_challenge(&self, context: &str, state: EmailChallenge, exp: u64) {
        let now = self.now();
        if let Ok(mut map) = self.email_codes.lock() {
            let outcome = map.insert(context.to_string(), state, exp, now);
            self.evictions.inc_by(outcome.evicted as u64);
        }
    }

    /// Checks a typed code for `context` and `user_id` on the gate's clock (an accepted code
    /// is used up). A code sent before `void_before` (the account's last change by an
    /// administrator, e.g. `users mfa reset`) is dropped unread.
    pub fn check_email_code(
        &self,
        context: &str,
        user_id: &str,
        code: &str,
        void_before: u64,
    ) -> EmailCheck {
        let now = self.now();
        let Ok(mut map) = self.email_codes.lock() else {
            return EmailCheck::NoCode;
        };
        let key = context.to_string();
        let Some(mut state) = map.remove(&key, now) else {
            return EmailCheck::NoCode;
        };
        if state.last_sent_at < void_before {
            state.void();
        }
        let result = if state.user_id == user_id {
            state.check(context, code, now)
        } else {
            EmailCheck::NoCode
        };
        let exp = now.saturating_add(PENDING_TTL);
        map.insert(key, state, exp, now);
        result
    }

    /// Forgets the email codes of a context (after a step-up is done).
    pub fn forget_email(&self, context: &str) {
        let now = self.now();
        if let Ok(mut map) = self.email_codes.lock() {
            map.remove(&context.to_string(), now);
        }
    }

    /// A CSRF token for the MFA form, bound to `context` (the pending id or the session id).
    pub fn csrf(&self, context: &str) -> String {
        self.cookie_sealer.seal(CSRF_PURPOSE, context.as_bytes())
    }

    pub fn csrf_ok(&self, token: &str, context: &str) -> bool {
        self.cookie_sealer
            .open(CSRF_PURPOSE, token)
            .is_ok_and(|c| c == context.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sessions::{Identity, SessionRecord, Tokens, SESSION_RECORD_VERSION};
    use std::time::Duration;

    /// The manual clock of these tests starts here (unix seconds), far from the system time.
    const START: u64 = 1_800_000_000;

    fn gate(_dir: &Path, clock: Clock) -> MfaGate {
        let cookies = Sealer::new(vec![[9; 32]]).unwrap();
        let evictions = prometheus::IntCounter::new("evictions", "test").unwrap();
        MfaGate::new(cookies, clock, 16, evictions)
    }

    fn pending(exp: u64) -> PendingLogin {
        let identity = Identity {
            connection: "corp".into(),
            subject: "alice".into(),
            username: None,
            email: None,
            email_verified: false,
            name: None,
            groups: vec![],
            user_id: Some("u1".into()),
            roles: vec![],
            attributes: Default::default(),
        };
        PendingLogin {
            session: PendingSession::new(SessionRecord {
                version: SESSION_RECORD_VERSION,
                sid: "s1".into(),
                identity,
                idp_sid: None,
                created_at: START,
                expires_at: START + 3600,
                tokens: Tokens::default(),
                mfa_at: None,
                last_seen: None,
            }),
            connection: "corp".into(),
            user_id: "u1".into(),
            username: "alice".into(),
            rd: "/".into(),
            exp,
        }
    }

    /// A login waiting for its second factor is found until the last second before its
    /// expiry on the gate's clock, and not from its expiry on.
    #[test]
    fn a_pending_login_expires_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START);
        let gate = gate(dir.path(), clock.clone());
        let cookie = gate.hold(pending(START + PENDING_TTL));
        assert!(gate.peek(&cookie).is_some());
        clock.advance(Duration::from_secs(PENDING_TTL - 1));
        let waiting = gate.peek(&cookie).expect("one second before expiry");
        assert_eq!(waiting.username, "alice");
        clock.advance(Duration::from_secs(1));
        assert!(gate.peek(&cookie).is_none(), "at its expiry");
    }
}
