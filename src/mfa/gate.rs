//! What the second-factor step keeps between requests: the logins that passed the IdP and
//! wait for their code, and the Email OTP codes sent (in memory, a few minutes at most; with
//! a shared store in its `pending_logins` table, sealed, so any replica can finish them) and
//! the clock ([`MfaGate`],
//! built once); the policy, the keys that seal TOTP secrets in the store and the mail
//! transport ([`MfaPolicy`], built again by a config reload). The browser holds only a
//! sealed, short-lived cookie naming its pending login, never anything in a query string.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::model::Mfa;
use crate::ids::random_id;
use crate::seal::Sealer;
use crate::store::sessions::{PendingSession, SessionRecord};
use crate::store::{Store, StoreError};

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
    /// Unused with a shared store.
    pending: Mutex<crate::bounded::ExpiringMap<String, PendingLogin>>,
    evictions: prometheus::IntCounter,
    /// Seals the pending cookie and the CSRF tokens (the session keys), and the records kept
    /// in a shared store.
    cookie_sealer: Sealer,
    /// Email OTP codes in force, by the pending login id or stepping-up session id they were
    /// sent for (same bound as the pending logins). Unused with a shared store.
    email_codes: Mutex<crate::bounded::ExpiringMap<String, EmailChallenge>>,
    /// A store every replica shares (PostgreSQL): pending logins and email codes live there
    /// (sealed), so the code page and the POST may reach different replicas. `None`: one
    /// process, and they live in the maps above.
    shared: Option<Arc<Store>>,
    /// When this replica last pruned expired pending records (gate clock, unix seconds).
    pruned_at: AtomicU64,
}

impl std::fmt::Debug for MfaGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaGate").finish_non_exhaustive()
    }
}

/// The sealing purposes of the records a shared store keeps.
const LOGIN_RECORD_PURPOSE: &str = "mfa-pending-login";
const EMAIL_RECORD_PURPOSE: &str = "mfa-email-code";
/// How often (seconds) holding a login also prunes expired pending records.
const PRUNE_EVERY: u64 = 60;

/// A pending login as a shared store keeps it (sealed; `id` binds it to its row).
#[derive(Serialize, Deserialize)]
struct StoredLogin {
    id: String,
    session: SessionRecord,
    connection: String,
    user_id: String,
    username: String,
    rd: String,
    exp: u64,
}

/// Email OTP state as a shared store keeps it (sealed; `context` binds it to its row).
#[derive(Serialize, Deserialize)]
struct StoredEmail {
    context: String,
    challenge: EmailChallenge,
}

fn login_key(id: &str) -> String {
    format!("login:{id}")
}

fn email_key(context: &str) -> String {
    format!("email:{context}")
}

/// Runs a store call on tokio's blocking pool (a PostgreSQL call blocks its thread on the
/// network; never on a proxy thread).
async fn off_thread<T: Send + 'static>(
    store: &Arc<Store>,
    call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .map_err(|e| StoreError::Db(format!("a store task failed: {e}")))?
}

impl MfaGate {
    /// The cookie and CSRF tokens are sealed with `cookie_sealer` (the session keys).
    /// `shared`: the store, when every replica shares it (pending logins and email codes are
    /// kept there instead of in memory).
    pub fn new(
        cookie_sealer: Sealer,
        clock: Clock,
        capacity: usize,
        evictions: prometheus::IntCounter,
        shared: Option<Arc<Store>>,
    ) -> Self {
        Self {
            email_codes: Mutex::new(crate::bounded::ExpiringMap::new(capacity)),
            clock,
            pending: Mutex::new(crate::bounded::ExpiringMap::new(capacity)),
            evictions,
            cookie_sealer,
            shared,
            pruned_at: AtomicU64::new(0),
        }
    }

    /// Now on the gate's clock (unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    fn seal_record<T: Serialize>(&self, purpose: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(value).map_err(|e| StoreError::Decode(e.to_string()))?;
        Ok(self.cookie_sealer.seal(purpose, &plain).into_bytes())
    }

    /// A sealed record from the shared store; `None` (logged) when it does not open, e.g.
    /// sealed with a session key since dropped.
    fn open_record<T: serde::de::DeserializeOwned>(
        &self,
        purpose: &str,
        bytes: &[u8],
    ) -> Option<T> {
        let opened = std::str::from_utf8(bytes)
            .ok()
            .and_then(|sealed| self.cookie_sealer.open(purpose, sealed).ok())
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        if opened.is_none() {
            tracing::warn!(
                purpose,
                "a pending MFA record in the store does not open; ignored"
            );
        }
        opened
    }

    /// Keeps a login until its code is accepted; returns the sealed cookie value naming it.
    /// With a shared store this writes to it (and, once a minute, prunes expired records):
    /// call it off the async runtime.
    pub fn hold(&self, login: PendingLogin) -> Result<String, StoreError> {
        let id = random_id();
        let body = CookieBody {
            id: id.clone(),
            uid: login.user_id.clone(),
            exp: login.exp,
        };
        let now = self.now();
        let exp = login.exp;
        if let Some(store) = &self.shared {
            let stored = StoredLogin {
                id: id.clone(),
                session: login.session.into_record(),
                connection: login.connection,
                user_id: login.user_id,
                username: login.username,
                rd: login.rd,
                exp,
            };
            let record = self.seal_record(LOGIN_RECORD_PURPOSE, &stored)?;
            store.put_pending(&login_key(&id), &record, exp)?;
            let last = self.pruned_at.load(Ordering::Relaxed);
            if now >= last.saturating_add(PRUNE_EVERY)
                && self
                    .pruned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                if let Err(e) = store.prune_pending(now) {
                    tracing::warn!(error = %e, "pruning expired pending MFA logins failed");
                }
            }
        } else if let Ok(mut map) = self.pending.lock() {
            let outcome = map.insert(id, login, exp, now);
            self.evictions.inc_by(outcome.evicted as u64);
        }
        Ok(self.cookie_sealer.seal(
            COOKIE_PURPOSE,
            &serde_json::to_vec(&body).unwrap_or_default(),
        ))
    }

    /// The pending login a cookie value names, if it is still waiting (read from a shared
    /// store on the blocking pool). A store that does not answer is an `Err`, not "nothing
    /// waiting": the login is still there when the store is back.
    pub async fn peek(&self, cookie: &str) -> Result<Option<Waiting>, StoreError> {
        let Some(body) = self
            .cookie_sealer
            .open(COOKIE_PURPOSE, cookie)
            .ok()
            .and_then(|plain| serde_json::from_slice::<CookieBody>(&plain).ok())
        else {
            return Ok(None);
        };
        let now = self.now();
        if body.exp <= now {
            return Ok(None);
        }
        if let Some(store) = &self.shared {
            let key = login_key(&body.id);
            let Some(bytes) = off_thread(store, move |s| s.pending(&key, now)).await? else {
                return Ok(None);
            };
            let login = self
                .open_record::<StoredLogin>(LOGIN_RECORD_PURPOSE, &bytes)
                .filter(|login| login.id == body.id && login.user_id == body.uid);
            return Ok(login.map(|login| Waiting {
                id: body.id,
                connection: login.connection,
                exp: login.exp,
                user_id: login.user_id,
                username: login.username,
                rd: login.rd,
            }));
        }
        let Ok(map) = self.pending.lock() else {
            return Ok(None);
        };
        Ok(map
            .get(&body.id, now)
            .filter(|p| p.user_id == body.uid)
            .map(|login| Waiting {
                id: body.id,
                connection: login.connection.clone(),
                exp: login.exp,
                user_id: login.user_id.clone(),
                username: login.username.clone(),
                rd: login.rd.clone(),
            }))
    }

    /// Takes a pending login out (once, across replicas too: a second take finds nothing),
    /// with its email code.
    pub async fn take(&self, id: &str) -> Result<Option<PendingLogin>, StoreError> {
        let now = self.now();
        if let Some(store) = &self.shared {
            let (key, codes) = (login_key(id), email_key(id));
            let taken = off_thread(store, move |s| {
                let taken = s.take_pending(&key, now)?;
                s.take_pending(&codes, now)?;
                Ok(taken)
            })
            .await?;
            let Some(bytes) = taken else { return Ok(None) };
            let Some(login) = self.open_record::<StoredLogin>(LOGIN_RECORD_PURPOSE, &bytes) else {
                return Ok(None);
            };
            if login.id != id {
                return Ok(None);
            }
            return Ok(Some(PendingLogin {
                session: PendingSession::new(login.session),
                connection: login.connection,
                user_id: login.user_id,
                username: login.username,
                rd: login.rd,
                exp: login.exp,
            }));
        }
        if let Ok(mut codes) = self.email_codes.lock() {
            codes.remove(&id.to_string(), now);
        }
        Ok(self
            .pending
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&id.to_string(), now)))
    }

    /// The Email OTP state of a login or step-up (`context`), if a code was sent for it.
    pub async fn email_challenge(
        &self,
        context: &str,
    ) -> Result<Option<EmailChallenge>, StoreError> {
        let now = self.now();
        if let Some(store) = &self.shared {
            let key = email_key(context);
            let bytes = off_thread(store, move |s| s.pending(&key, now)).await?;
            return Ok(bytes
                .and_then(|b| self.open_record::<StoredEmail>(EMAIL_RECORD_PURPOSE, &b))
                .filter(|stored| stored.context == context)
                .map(|stored| stored.challenge));
        }
        let Ok(map) = self.email_codes.lock() else {
            return Ok(None);
        };
        Ok(map.get(&context.to_string(), now).cloned())
    }

    /// Keeps the state after a send for `context`, until `exp` (the pending login's expiry,
    /// so the send count outlives each code).
    pub async fn keep_email_challenge(
        &self,
        context: &str,
        state: EmailChallenge,
        exp: u64,
    ) -> Result<(), StoreError> {
        let now = self.now();
        if let Some(store) = &self.shared {
            let stored = StoredEmail {
                context: context.to_string(),
                challenge: state,
            };
            let record = self.seal_record(EMAIL_RECORD_PURPOSE, &stored)?;
            let key = email_key(context);
            return off_thread(store, move |s| s.put_pending(&key, &record, exp)).await;
        }
        if let Ok(mut map) = self.email_codes.lock() {
            let outcome = map.insert(context.to_string(), state, exp, now);
            self.evictions.inc_by(outcome.evicted as u64);
        }
        Ok(())
    }

    /// Checks a typed code for `context` and `user_id` on the gate's clock (an accepted code
    /// is used up; with a shared store in one transaction, so two replicas cannot both accept
    /// it). A code sent before `void_before` (the account's last change by an administrator,
    /// e.g. `users mfa reset`) is dropped unread.
    pub async fn check_email_code(
        &self,
        context: &str,
        user_id: &str,
        code: &str,
        void_before: u64,
    ) -> Result<EmailCheck, StoreError> {
        let now = self.now();
        let exp = now.saturating_add(PENDING_TTL);
        if let Some(store) = &self.shared {
            let key = email_key(context);
            let (context, user_id, code) =
                (context.to_string(), user_id.to_string(), code.to_string());
            let sealer = self.cookie_sealer.clone();
            return off_thread(store, move |s| {
                s.update_pending(&key, now, |bytes| {
                    let opened = bytes
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|sealed| sealer.open(EMAIL_RECORD_PURPOSE, &sealed).ok())
                        .and_then(|plain| serde_json::from_slice::<StoredEmail>(&plain).ok())
                        .filter(|stored| stored.context == context);
                    let Some(mut stored) = opened else {
                        return (None, EmailCheck::NoCode);
                    };
                    let result = check_challenge(
                        &mut stored.challenge,
                        &context,
                        &user_id,
                        &code,
                        void_before,
                        now,
                    );
                    let keep = serde_json::to_vec(&stored)
                        .ok()
                        .map(|plain| (sealer.seal(EMAIL_RECORD_PURPOSE, &plain).into_bytes(), exp));
                    (keep, result)
                })
            })
            .await;
        }
        let Ok(mut map) = self.email_codes.lock() else {
            return Ok(EmailCheck::NoCode);
        };
        let key = context.to_string();
        let Some(mut state) = map.remove(&key, now) else {
            return Ok(EmailCheck::NoCode);
        };
        let result = check_challenge(&mut state, context, user_id, code, void_before, now);
        map.insert(key, state, exp, now);
        Ok(result)
    }

    /// Forgets the email codes of a context (after a step-up is done).
    pub async fn forget_email(&self, context: &str) {
        let now = self.now();
        if let Some(store) = &self.shared {
            let key = email_key(context);
            if let Err(e) = off_thread(store, move |s| s.take_pending(&key, now)).await {
                tracing::warn!(error = %e, "cannot forget an Email OTP code in the store");
            }
            return;
        }
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

/// One check of a typed code against the state kept for `context`.
fn check_challenge(
    state: &mut EmailChallenge,
    context: &str,
    user_id: &str,
    code: &str,
    void_before: u64,
    now: u64,
) -> EmailCheck {
    if state.last_sent_at < void_before {
        state.void();
    }
    if state.user_id == user_id {
        state.check(context, code, now)
    } else {
        EmailCheck::NoCode
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
        MfaGate::new(cookies, clock, 16, evictions, None)
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
    #[tokio::test]
    async fn a_pending_login_expires_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START);
        let gate = gate(dir.path(), clock.clone());
        let cookie = gate.hold(pending(START + PENDING_TTL)).unwrap();
        assert!(gate.peek(&cookie).await.unwrap().is_some());
        clock.advance(Duration::from_secs(PENDING_TTL - 1));
        let waiting = gate
            .peek(&cookie)
            .await
            .unwrap()
            .expect("one second before expiry");
        assert_eq!(waiting.username, "alice");
        clock.advance(Duration::from_secs(1));
        assert!(gate.peek(&cookie).await.unwrap().is_none(), "at its expiry");
    }
}
