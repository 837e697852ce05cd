//! Login machinery: identity-provider connections, the login dance, sessions and their
//! cookies, redirect-target checks.

pub mod bearer;
pub mod discovery;
pub mod expiring;
pub mod forward;
pub mod login;
pub mod logout;
pub mod oidc;
pub mod redirect;
pub mod second_factor;
pub mod session;
pub mod throttle;

/// Sealing moved to [`crate::seal`]; kept here for the login endpoints' paths.
pub use crate::seal;

use std::sync::{Arc, Mutex};

use crate::config::model::{Config, Headers, Login};
use crate::metrics::{AuthMetrics, BearerResult, LogoutKind, RefreshResult};
use crate::seal::{load_or_create_keys, Sealer};
use crate::store::{Store, StoreError};
use oidc::Provider;
use redirect::RedirectPolicy;
use session::Sessions;

/// What a config reload may change in the login machinery, built from one config:
/// `[[connections]]`, `[login]`, `[mfa]` and `[smtp]`. A request takes one snapshot (with the
/// proxy's routing, see [`AuthView`]), so it sees the old settings or the new ones, never a
/// mix.
pub struct Settings {
    /// One provider per connection, in the config's order.
    pub providers: Vec<Arc<Provider>>,
    pub login: Login,
    pub redirects: RedirectPolicy,
    /// `[mfa]` and `[smtp]`: the policy, the keys that seal TOTP secrets, the mail transport.
    pub mfa: crate::mfa::gate::MfaPolicy,
}

impl Settings {
    /// The settings of `config`. Providers of `previous` whose connection is unchanged are
    /// kept as they are (discovered or not); a changed connection gets a new provider that
    /// keeps the discovered document when the issuer stayed the same.
    pub fn build(
        config: &Config,
        previous: Option<&Settings>,
        clock: &crate::clock::Clock,
    ) -> Result<Self, AuthSetupError> {
        let providers = config
            .connections
            .iter()
            .map(|c| {
                let old = previous.and_then(|p| p.provider(&c.id));
                match old {
                    Some(old) if old.connection == *c => Ok(old.clone()),
                    Some(old) => Provider::succeeding(c.clone(), old).map(Arc::new),
                    None => Provider::new(c.clone(), clock.clone()).map(Arc::new),
                }
                .map_err(|e| AuthSetupError::Connection(c.id.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mfa = crate::mfa::gate::MfaPolicy::new(config.mfa.clone(), &config.data_dir)
            .map_err(AuthSetupError::Keys)?;
        Ok(Self {
            providers,
            login: config.login.clone(),
            redirects: RedirectPolicy::new(config.login.allowed_redirect_domains.clone()),
            mfa,
        })
    }

    /// The provider of connection `id`.
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.connection.id == id)
    }
}

/// Everything the login endpoints and the session check need, built once at startup; the
/// parts a config reload changes are in [`Settings`].
pub struct Auth {
    /// The settings now in force; a request uses the snapshot it started with.
    settings: arc_swap::ArcSwap<Settings>,
    /// Where a config reload hands the connections it adds to background discovery.
    discovery: std::sync::Mutex<Option<discovery::DiscoveryQueue>>,
    pub bearer: bearer::BearerVerifier,
    pub sessions: Sessions,
    pub login_timeout: std::time::Duration,
    pub headers: Headers,
    pub metrics: AuthMetrics,
    pub store: Arc<Store>,
    /// The login transactions (JIT provisioning and the new session), group-committed.
    pub logins: crate::store::writer::GroupCommit,
    /// The `[[access]]` rules, for forward-auth answers (which have no upstream).
    path_rules: arc_swap::ArcSwap<crate::identity::access::AccessPolicy>,
    /// The second factor: pending logins, Email OTP codes, the forms' CSRF tokens.
    pub mfa: crate::mfa::gate::MfaGate,
    /// States already used at the callback (until their login cookie would expire),
    /// bounded by `[limits] used_states`.
    used_states: Mutex<crate::bounded::ExpiringMap<String, ()>>,
    /// Per-client rates on the login endpoints.
    pub throttle: throttle::Throttle,
    /// The headers a front proxy's forward-auth subrequest names its request with.
    pub forward_auth: crate::config::model::ForwardAuth,
    /// Back-channel logout tokens: checks and the `jti` replay record.
    pub logout: logout::LogoutVerifier,
    /// Every expiry the login machinery decides is read on it.
    pub clock: crate::clock::Clock,
}

/// The login machinery as one request sees it: the shared parts, and the one [`Settings`]
/// snapshot the request started with. Derefs to the [`Auth`] (through its `Arc`).
#[derive(Clone)]
pub struct AuthView {
    pub auth: Arc<Auth>,
    pub settings: Arc<Settings>,
}

impl std::ops::Deref for AuthView {
    type Target = Arc<Auth>;
    fn deref(&self) -> &Arc<Auth> {
        &self.auth
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("session keys: {0}")]
    Keys(String),
    #[error("connection {0}: {1}")]
    Connection(String, String),
}

/// The session keys: from config, or from `session.keys` in the data directory (created with
/// one random key on first start, readable by the owner only).
fn session_keys(config: &Config) -> Result<Vec<[u8; 32]>, AuthSetupError> {
    if let Some(keys) = &config.session.keys.0 {
        return Ok(keys.clone());
    }
    let path = config.data_dir.join("session.keys");
    load_or_create_keys(&path).map_err(AuthSetupError::Keys)
}

impl Auth {
    /// The `[[access]]` rules for forward-auth answers (which have no upstream), as now.
    pub fn path_rules(&self) -> Arc<crate::identity::access::AccessPolicy> {
        self.path_rules.load_full()
    }

    /// Takes the `[[access]]` rules of a reloaded config.
    pub fn set_path_rules(&self, config: &Config) {
        self.path_rules
            .store(Arc::new(crate::identity::access::AccessPolicy::new(
                &[],
                config.access.clone(),
            )));
    }

    /// Builds the login machinery; `None` when no connection is configured.
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        metrics: AuthMetrics,
        clock: crate::clock::Clock,
    ) -> Result<Option<Self>, AuthSetupError> {
        if config.connections.is_empty() {
            return Ok(None);
        }
        for c in &config.connections {
            metrics.register_connection(&c.id);
        }
        let settings = Settings::build(config, None, &clock)?;
        let sealer =
            Sealer::new(session_keys(config)?).map_err(|e| AuthSetupError::Keys(e.to_string()))?;
        let mfa = crate::mfa::gate::MfaGate::new(
            sealer.clone(),
            clock.clone(),
            config.limits.pending_mfa,
            metrics.evictions(crate::metrics::BoundedMap::PendingMfa),
            store.is_shared().then(|| store.clone()),
        );
        let sessions = Sessions::new(config.session.clone(), sealer, store.clone(), clock.clone())?
            .with_forwarding(session::TokenForwarding {
                access_token: config.headers.access_token.clone(),
                id_token: config.headers.id_token.clone(),
            });
        metrics.sessions_active.set(sessions.active() as i64);
        metrics.users.set(store.read(|tx| tx.user_count())? as i64);
        Ok(Some(Self {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            discovery: std::sync::Mutex::new(None),
            bearer: bearer::BearerVerifier::for_live_connections(clock.clone()),
            sessions,
            login_timeout: config.session.login_timeout,
            headers: config.headers.clone(),
            metrics,
            logins: crate::store::writer::GroupCommit::start(store.clone(), "gatehouse-logins")
                .map_err(|e| {
                    crate::store::StoreError::Db(format!("cannot start the login writer: {e}"))
                })?,
            store,
            mfa,
            path_rules: arc_swap::ArcSwap::from_pointee(
                crate::identity::access::AccessPolicy::new(&[], config.access.clone()),
            ),
            used_states: Mutex::new(crate::bounded::ExpiringMap::new(config.limits.used_states)),
            throttle: throttle::Throttle::new(&config.limits),
            forward_auth: config.forward_auth.clone(),
            logout: logout::LogoutVerifier::new(),
            clock,
        }))
    }

    /// The settings now in force (a request uses the snapshot it started with instead).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// This machinery with the settings now in force: for work outside a request (and the
    /// admin API) or a request that has no routing snapshot.
    pub fn view(self: &Arc<Self>) -> AuthView {
        self.with_settings(self.settings())
    }

    /// This machinery with a request's settings snapshot.
    pub fn with_settings(self: &Arc<Self>, settings: Arc<Settings>) -> AuthView {
        AuthView {
            auth: Arc::clone(self),
            settings,
        }
    }

    /// Puts the settings of a reloaded config in force for the requests that start from now on.
    pub fn set_settings(&self, settings: Arc<Settings>) {
        self.settings.store(settings);
    }

    /// Ends every session of these connections (a config reload removed them or gave them
    /// another issuer): in memory at once, and in the store. Returns how many ended.
    pub fn end_sessions_of(&self, connections: &[String]) -> usize {
        if connections.is_empty() {
            return 0;
        }
        let ended = self
            .sessions
            .revoke_where(|s| connections.contains(&s.identity.connection));
        if ended > 0 {
            self.metrics.logouts(LogoutKind::Admin, ended);
            self.update_sessions_gauge();
        }
        ended
    }

    /// Where a config reload hands the connections it adds to background discovery.
    pub fn set_discovery_queue(&self, queue: discovery::DiscoveryQueue) {
        if let Ok(mut slot) = self.discovery.lock() {
            *slot = Some(queue);
        }
    }

    /// The queue of [`Self::set_discovery_queue`], once the server has started discovery.
    pub fn discovery_queue(&self) -> Option<discovery::DiscoveryQueue> {
        self.discovery.lock().ok().and_then(|q| q.clone())
    }

    /// The IdP's access token and ID token of a session, as headers, when the config passes
    /// them to the app (kept in memory while the session is in use, else read from the
    /// store on the blocking pool). `Ok(None)`: nothing to pass (a bearer token, or the
    /// config passes no token). A session the store no longer has is ended here.
    pub async fn token_headers(
        &self,
        who: &Authenticated,
    ) -> Result<Option<Arc<session::ForwardedTokens>>, session::TokensUnavailable> {
        let Authenticated::Session(live) = who else {
            return Ok(None);
        };
        let outcome = self.sessions.forwarded_tokens(live).await;
        match &outcome {
            Err(session::TokensUnavailable::Store(e)) => {
                self.metrics.store_error(crate::metrics::StoreOp::Read);
                tracing::warn!(error = %crate::text::Escaped(e), "cannot read the session's tokens to pass them on");
            }
            Err(session::TokensUnavailable::Ended) => {
                self.metrics
                    .session_rejected(session::Rejection::Revoked.label());
                self.update_sessions_gauge();
            }
            Ok(_) => {}
        }
        outcome
    }

    pub fn update_sessions_gauge(&self) {
        self.metrics
            .sessions_active
            .set(self.sessions.active() as i64);
    }

    /// Whether sessions must be refused: a shared store that has not answered for longer
    /// than `offline_grace` (fail closed). Never with the embedded store.
    pub fn store_offline(&self) -> bool {
        self.store.offline_past_grace()
    }

    /// Whether a shared store does not answer right now (logins need it at once).
    pub fn store_down(&self) -> bool {
        !self.store.is_up()
    }

    /// With a shared store (PostgreSQL): follows what other replicas do to sessions this
    /// one holds (ended, changed), and keeps `gatehouse_store_up` current. Nothing to do
    /// with the embedded store.
    pub fn follow_store(self: &Arc<Self>, readiness: Arc<crate::health::Readiness>) {
        let Some(pg) = self.store.postgres() else {
            return;
        };
        let me = Arc::downgrade(self);
        pg.follow_sessions(Arc::new(move |news| {
            if let Some(auth) = me.upgrade() {
                auth.sessions.apply_news(news);
                auth.update_sessions_gauge();
            }
        }));
        let (me, store) = (Arc::downgrade(self), self.store.clone());
        pg.handle().spawn(async move {
            while let Some(auth) = me.upgrade() {
                auth.metrics.store_up.set(i64::from(store.is_up()));
                readiness.set_store_down(!store.is_up());
                drop(auth);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Marks a state used; false when it already was (a replayed callback), here or, with a
    /// shared store, at another replica (then the store is asked too, on the blocking pool;
    /// an unreachable store is an error: fail closed).
    pub async fn use_state(&self, state: &str, until: u64) -> Result<bool, StoreError> {
        if !self.use_state_here(state, until) {
            return Ok(false);
        }
        if !self.store.is_shared() {
            return Ok(true);
        }
        let (store, state) = (self.store.clone(), state.to_string());
        tokio::task::spawn_blocking(move || store.use_login_state(&state, until))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
    }

    fn use_state_here(&self, state: &str, until: u64) -> bool {
        let Ok(mut used) = self.used_states.lock() else {
            return false;
        };
        let outcome = used.insert(state.to_string(), (), until, self.clock.now());
        drop(used);
        if outcome.evicted > 0 {
            self.metrics
                .evictions(crate::metrics::BoundedMap::UsedStates)
                .inc_by(outcome.evicted as u64);
        }
        outcome.new
    }
}

impl AuthView {
    /// The provider of connection `id` in this request's settings.
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.settings.provider(id)
    }

    /// The second-factor level a route asks of a user of `connection` when no upstream or
    /// `[[access]]` rule names one: the connection's own, else the default.
    pub fn default_mfa_level(&self, connection: &str) -> crate::config::model::MfaLevel {
        match self.provider(connection) {
            Some(p) => crate::mfa::policy::login_level(&self.settings.mfa.config, &p.connection),
            None => self.settings.mfa.config.level(),
        }
    }

    /// The second-factor rule for a request at `level`: a session passes once it did the
    /// factor; a bearer token (which cannot step up) only when its `acr`/`amr` show one. A
    /// token of a JIT connection counts as having a local account.
    pub fn mfa_decision(
        &self,
        who: &Authenticated,
        level: crate::config::model::MfaLevel,
    ) -> crate::mfa::policy::MfaDecision {
        let standing = match who {
            Authenticated::Session(live) => crate::mfa::policy::Standing {
                local_account: live.identity.user_id.is_some(),
                enrolled: false,
                done: live.mfa_done_at().is_some(),
            },
            Authenticated::Bearer(identity, factors) => crate::mfa::policy::Standing {
                local_account: identity.user_id.is_some()
                    || self
                        .provider(&identity.connection)
                        .is_some_and(|p| p.connection.jit),
                enrolled: false,
                done: *factors == bearer::Factors::Two,
            },
        };
        crate::mfa::policy::decide(
            level,
            self.settings.mfa.config.when_no_local_account,
            standing,
        )
    }

    /// Refreshes the session's IdP tokens when the access token has expired and a refresh
    /// token exists; one refresh per session at a time, the others wait for its outcome.
    /// Memory only knows when a refresh is due (one load per request): the refresh token is
    /// read from the store then, on the blocking pool, and the new tokens written back.
    pub async fn ensure_fresh(&self, live: &Arc<session::LiveSession>) -> Freshness {
        if !live.refresh_due(self.clock.now()) {
            return Freshness::Fresh;
        }
        let _turn = self.sessions.refresh_turn(&live.sid).await;
        if !live.refresh_due(self.clock.now()) {
            return Freshness::Fresh; // another request refreshed it while we waited
        }
        if !self.sessions.is_live(&live.sid) {
            return Freshness::Ended;
        }
        let stored = match self.sessions.tokens(&live.sid).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                // Ended meanwhile (here or at another replica).
                self.sessions.forget(std::slice::from_ref(&live.sid));
                self.update_sessions_gauge();
                return Freshness::Ended;
            }
            Err(e) => {
                self.metrics.store_error(crate::metrics::StoreOp::Read);
                tracing::warn!(error = %crate::text::Escaped(&e), "cannot read the session's tokens to refresh them; refusing the request");
                return Freshness::StoreUnavailable;
            }
        };
        // Another replica may have refreshed them already.
        self.sessions.adopt_tokens(live, &stored);
        let Some(refresh_token) = stored
            .refresh_token
            .clone()
            .filter(|_| live.refresh_due(self.clock.now()))
        else {
            return Freshness::Fresh;
        };
        let Some(provider) = self.provider(&live.identity.connection).cloned() else {
            return Freshness::Ended;
        };
        match provider
            .refresh(&refresh_token, &live.identity.subject)
            .await
        {
            Ok(fresh) => {
                let tokens = crate::store::sessions::Tokens {
                    id_token: fresh.id_token.or(stored.id_token),
                    ..fresh
                };
                if let Err(e) = self.sessions.store_tokens(live, tokens).await {
                    tracing::warn!(error = %crate::text::Escaped(&e), "refreshed tokens could not be stored");
                }
                self.metrics.refresh(RefreshResult::Success);
                Freshness::Fresh
            }
            Err(e) => {
                tracing::info!(connection = %live.identity.connection, error = %crate::text::Escaped(&e), "token refresh failed: session ended");
                self.metrics.refresh(RefreshResult::Failure);
                self.metrics.logouts(LogoutKind::RefreshFailed, 1);
                self.sessions.revoke(std::slice::from_ref(&live.sid));
                self.update_sessions_gauge();
                Freshness::Ended
            }
        }
    }

    /// The identity of a request: its session, else a valid bearer token. `Err` carries the
    /// answer to give when a bearer token was presented and refused.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Authenticated>, AuthError> {
        let mut found = self.sessions.lookup(headers);
        if let session::Lookup::Unknown(sid) = &found {
            // A shared store may hold it (made at another replica): one read, then cached.
            found = if self.sessions.load(sid).await {
                self.sessions.lookup(headers)
            } else {
                session::Lookup::Rejected(session::Rejection::Revoked)
            };
        }
        match found {
            session::Lookup::Live(live) if self.provider(&live.identity.connection).is_none() => {
                // Its connection was removed by a config reload (which ended its sessions;
                // this one finished a second factor since, or the reload is in progress).
                self.sessions.revoke(std::slice::from_ref(&live.sid));
                self.update_sessions_gauge();
                self.metrics
                    .session_rejected(session::Rejection::Revoked.label());
                tracing::info!(connection = %live.identity.connection, "session refused: its connection is no longer configured");
            }
            session::Lookup::Live(live) => match self.ensure_fresh(&live).await {
                Freshness::Fresh => return Ok(Some(Authenticated::Session(live))),
                Freshness::StoreUnavailable => return Err(AuthError::StoreUnavailable),
                Freshness::Ended => {}
            },
            session::Lookup::Rejected(reason) => {
                self.metrics.session_rejected(reason.label());
                tracing::info!(reason = reason.label().as_str(), "session cookie refused");
            }
            _ => {}
        }
        let Some(token) = bearer_token(headers) else {
            return Ok(None);
        };
        if !bearer::BearerVerifier::any_enabled(&self.settings.providers) {
            self.metrics.bearer(BearerResult::NotAllowed);
            return Err(bearer::BearerError::NotAllowed.into());
        }
        let verified = match self
            .bearer
            .verify_among(&self.settings.providers, token)
            .await
        {
            Ok(b) => {
                let factors = b.factors;
                self.with_local_account(b.identity)
                    .await
                    .map(|id| (id, factors))
            }
            Err(e) => Err(e),
        };
        match verified {
            Ok((identity, factors)) => {
                self.metrics.bearer(BearerResult::Valid);
                Ok(Some(Authenticated::Bearer(Box::new(identity), factors)))
            }
            Err(e) => {
                self.metrics.bearer(e.label());
                tracing::info!(error = %crate::text::Escaped(&e), "bearer token refused");
                Err(e.into())
            }
        }
    }

    /// A bearer identity from a JIT connection, with its local account's profile when the
    /// user has signed in before (a read transaction, no write); a disabled account is
    /// refused.
    async fn with_local_account(
        &self,
        identity: crate::identity::Identity,
    ) -> Result<crate::identity::Identity, bearer::BearerError> {
        let jit = self
            .provider(&identity.connection)
            .is_some_and(|p| p.connection.jit);
        if !jit {
            return Ok(identity);
        }
        // On the blocking pool: a shared store is a network call.
        let store = self.store.clone();
        let (connection, subject) = (identity.connection.clone(), identity.subject.clone());
        let user = tokio::task::spawn_blocking(move || {
            store.read(|tx| tx.user_by_link(&connection, &subject))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))));
        match user {
            Ok(Some(user)) if user.disabled => Err(bearer::BearerError::AccountDisabled),
            Ok(Some(user)) => Ok(crate::identity::jit::profile_identity(&user, &identity)),
            Ok(None) => Ok(identity),
            Err(e) => {
                self.metrics.store_error(crate::metrics::StoreOp::Read);
                tracing::warn!(error = %crate::text::Escaped(&e), "cannot read the bearer token's local account");
                // Fail closed: the account might be disabled.
                Err(bearer::BearerError::Unavailable)
            }
        }
    }

    /// Whether the connection treats its emails as verified.
    pub fn trusts_email(&self, connection: &str) -> bool {
        self.provider(connection)
            .is_some_and(|p| p.connection.trust_email)
    }

    /// The identity headers for an authenticated request: cached per session, built per
    /// request for a bearer token.
    pub fn wire_headers(&self, who: &Authenticated) -> crate::identity::headers::WireHeaders {
        use crate::identity::headers::wire_headers;
        match who {
            Authenticated::Session(live) => live
                .in_use()
                .header_cache
                .get_or_init(|| {
                    let trusted = self.trusts_email(&live.identity.connection);
                    wire_headers(&self.headers, &live.identity, trusted)
                })
                .clone(),
            Authenticated::Bearer(identity, _) => {
                let trusted = self.trusts_email(&identity.connection);
                wire_headers(&self.headers, identity, trusted)
            }
        }
    }

    /// The identity headers for `identity` (forward-auth answers), by name.
    pub fn identity_headers(
        &self,
        identity: &crate::identity::Identity,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let trusted = self.trusts_email(&identity.connection);
        crate::identity::headers::identity_headers(&self.headers, identity, trusted)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether a session's tokens are fresh enough for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing to refresh, or refreshed now.
    Fresh,
    /// The session ended (the refresh failed, or it was revoked meanwhile).
    Ended,
    /// The stored tokens could not be read: the request is refused (503), the session kept.
    StoreUnavailable,
}

/// Why a request's credentials were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A bearer token was presented and refused (401 `invalid_token`).
    #[error(transparent)]
    Bearer(#[from] bearer::BearerError),
    /// A session's tokens were due for a refresh and the store did not answer (503).
    #[error("the session store does not answer")]
    StoreUnavailable,
}

/// Who a request is from.
#[derive(Debug)]
pub enum Authenticated {
    Session(Arc<session::LiveSession>),
    /// A bearer token, and whether its `acr`/`amr` show a second factor.
    Bearer(Box<crate::identity::Identity>, bearer::Factors),
}

impl Authenticated {
    pub fn identity(&self) -> &crate::identity::Identity {
        match self {
            Authenticated::Session(live) => &live.identity,
            Authenticated::Bearer(identity, _) => identity,
        }
    }

    /// Where the signed identity header is cached: a session's, none for a bearer token.
    pub fn assertion_cache(&self) -> Option<&crate::identity::signed_header::AssertionCache> {
        match self {
            Authenticated::Session(live) => Some(&live.in_use().signed),
            Authenticated::Bearer(..) => None,
        }
    }
}
