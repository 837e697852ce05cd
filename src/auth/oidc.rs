//! One identity provider connection: discovery (metadata and JWKS), the authorization URL, the
//! code exchange and ID-token verification, all through the `openidconnect` crate.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, LogoutProviderMetadata, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RefreshToken, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::model::Connection;
use crate::identity::claims::identity_from_claims;
use crate::identity::Identity;
use crate::store::sessions::Tokens;

/// The client type `from_provider_metadata` yields: authorization and token endpoints set,
/// userinfo maybe.
pub type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// ID tokens are accepted only with these algorithms: never `none`, never an HMAC.
pub const ALLOWED_ID_TOKEN_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// The longest an ID token's `iat` may lie in the future (clock skew).
const IAT_SKEW: u64 = 120;
/// A connection's keys (discovery document and JWKS) are fetched again, for a key the cache
/// does not hold, at most this often: whatever tokens anyone posts, Gatehouse asks its IdP
/// no more than once per this period per connection.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(30);
/// A login attempt while a connection is undiscovered runs discovery itself, at most this
/// often per connection, instead of waiting for the background retry (which backs off to 30 s).
pub const ON_DEMAND_DISCOVERY_EVERY: Duration = Duration::from_secs(2);

/// The discovery fields Gatehouse reads beyond the core ones: RFC 9207's flag saying the IdP
/// sends `iss` in its authorization responses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct IssParameterMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for IssParameterMetadata {}

/// The discovery document: core fields, RP-initiated logout, RFC 9207.
type Metadata = ProviderMetadata<
    LogoutProviderMetadata<IssParameterMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the callback address built from this request is not a URL: {0}")]
    BadRedirect(String),
    #[error("the identity provider is not reachable or not discovered yet: {0}")]
    Unavailable(String),
    #[error("the code exchange failed: {0}")]
    ExchangeFailed(String),
    #[error("the ID token is invalid: {0}")]
    TokenInvalid(String),
    #[error("the refresh failed: {0}")]
    RefreshFailed(String),
    /// The token endpoint refused Gatehouse's client credentials (`invalid_client`,
    /// `unauthorized_client`): almost always a wrong secret or client id in the config.
    #[error("the IdP refused this client at its token endpoint ({code}{description}): check client_id and client_secret (or client_secret_file / client_secret_env) of connection `{connection}` against the client registered at the IdP, and that the IdP client is confidential with client_secret_basic")]
    ClientRejected {
        connection: String,
        code: String,
        description: String,
    },
}

/// A token-endpoint error as an [`OidcError`]: a refusal of the client credentials becomes
/// [`OidcError::ClientRejected`] (with the likely fix), anything else `other`.
fn token_error<RE: std::error::Error + 'static>(
    connection: &str,
    e: openidconnect::RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
    other: fn(String) -> OidcError,
) -> OidcError {
    use openidconnect::core::CoreErrorResponseType as Code;
    if let openidconnect::RequestTokenError::ServerResponse(response) = &e {
        if matches!(
            response.error(),
            Code::InvalidClient | Code::UnauthorizedClient
        ) {
            return OidcError::ClientRejected {
                connection: connection.to_string(),
                code: response.error().to_string(),
                description: response
                    .error_description()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
            };
        }
    }
    other(error_chain(&e))
}

/// A step of [`Provider::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStep {
    /// The discovery document: fetched, JSON, naming the configured issuer.
    Discovery,
    /// The JWKS the document names: fetched, with at least one signature key.
    Jwks,
}

impl CheckStep {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStep::Discovery => "discovery document",
            CheckStep::Jwks => "JWKS",
        }
    }
}

/// What discovery found: the connection's one key cache. The ID-token verifier (inside
/// `client`) and `keys` (for bearer and logout tokens) hold the same JWKS, fetched together.
pub struct Discovered {
    pub client: OidcClient,
    pub issuer: String,
    pub end_session_endpoint: Option<String>,
    pub jwks_uri: String,
    /// The JWKS's asymmetric signature keys, for bearer and logout tokens.
    pub keys: Arc<JwkSet>,
    /// The IdP says it sends RFC 9207 `iss` with every authorization response: the callback
    /// then requires it.
    pub iss_parameter_required: bool,
    /// The document `client` was built from, so a reloaded connection with the same issuer
    /// gets its client (new credentials) without fetching it again.
    metadata: Metadata,
}

/// A successful login at the IdP.
#[derive(Debug)]
pub struct LoginResult {
    pub identity: Identity,
    pub idp_sid: Option<String>,
    pub tokens: Tokens,
}

/// A started authorization request: where to send the browser and what to remember.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

pub struct Provider {
    pub connection: Connection,
    http: openidconnect::reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// When keys were last fetched (discovery included); held across a fetch so that
    /// concurrent requests wait for it instead of fetching again.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When a login attempt last ran discovery ([`Provider::discover_on_demand`]).
    last_on_demand: std::sync::Mutex<Option<Instant>>,
    /// Signalled when a login attempt's discovery succeeded, so the background retry loop
    /// records it (metrics, readiness) at once instead of after its backoff.
    discovered_on_demand: tokio::sync::Notify,
    /// ID-token `exp`/`iat` and access-token expiry are read on it.
    clock: Clock,
    /// A config reload removed or replaced this connection: its discovery loop stops.
    retired: std::sync::atomic::AtomicBool,
}

/// The connection's HTTP client with a request's W3C `traceparent` added to every call.
struct Traced<'a> {
    http: &'a openidconnect::reqwest::Client,
    traceparent: Option<http::HeaderValue>,
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Traced<'_> {
    type Error = openidconnect::HttpClientError<openidconnect::reqwest::Error>;
    type Future = <openidconnect::reqwest::Client as openidconnect::AsyncHttpClient<'c>>::Future;

    fn call(&'c self, mut request: openidconnect::HttpRequest) -> Self::Future {
        if let Some(value) = &self.traceparent {
            request
                .headers_mut()
                .insert(crate::ids::TRACEPARENT, value.clone());
        }
        self.http.call(request)
    }
}

/// The claims of a JWT whose signature has already been checked.
pub fn jwt_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

impl Provider {
    pub fn new(connection: Connection, clock: Clock) -> Result<Self, String> {
        let mut builder = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        if let Some(ca) = &connection.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let cert = openidconnect::reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{} is not a PEM certificate: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            connection,
            http,
            discovered: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            last_on_demand: std::sync::Mutex::new(None),
            discovered_on_demand: tokio::sync::Notify::new(),
            clock,
            retired: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A provider for `connection`, which a config reload changed from `old`'s: when the
    /// issuer and CA file are the same and `old` is discovered, it starts discovered (its
    /// client built again from the same document, with the new credentials); else it needs
    /// discovery.
    pub fn succeeding(connection: Connection, old: &Provider) -> Result<Self, String> {
        let same_idp = connection.issuer == old.connection.issuer
            && connection.ca_file == old.connection.ca_file;
        let provider = Self::new(connection, old.clock.clone())?;
        if let (true, Some(d)) = (same_idp, old.current()) {
            let client = CoreClient::from_provider_metadata(
                d.metadata.clone(),
                ClientId::new(provider.connection.client_id.clone()),
                Some(ClientSecret::new(
                    provider.connection.client_secret.0.clone(),
                )),
            );
            let adopted = Arc::new(Discovered {
                client,
                issuer: d.issuer.clone(),
                end_session_endpoint: d.end_session_endpoint.clone(),
                jwks_uri: d.jwks_uri.clone(),
                keys: d.keys.clone(),
                iss_parameter_required: d.iss_parameter_required,
                metadata: d.metadata.clone(),
            });
            if let Ok(mut slot) = provider.discovered.write() {
                *slot = Some(adopted);
            }
        }
        Ok(provider)
    }

    /// A config reload removed or replaced this connection: its background discovery stops
    /// (requests that hold it finish with it).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        // Wakes the discovery loop if it waits (or lets its next wait end at once).
        self.discovered_on_demand.notify_one();
    }

    /// Whether a config reload removed or replaced this connection.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The HTTP client for one request's IdP calls: each carries `traceparent` when one is
    /// given (a valid one: the proxy checked or made it).
    fn traced(&self, traceparent: Option<&str>) -> Traced<'_> {
        Traced {
            http: &self.http,
            traceparent: traceparent.and_then(|t| http::HeaderValue::from_str(t).ok()),
        }
    }

    /// "Now" for openidconnect's ID-token checks (`exp`), read on the clock.
    fn time_fn(&self) -> impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static {
        let clock = self.clock.clone();
        move || {
            // Out of chrono's range: the latest time, so every token counts as expired.
            i64::try_from(clock.now())
                .ok()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        }
    }

    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.http
    }

    /// The discovered metadata, once discovery has succeeded.
    pub fn current(&self) -> Option<Arc<Discovered>> {
        self.discovered.read().ok().and_then(|d| d.clone())
    }

    /// Fetches the metadata and the JWKS, and replaces the current ones (startup discovery;
    /// counts as a key fetch for [`Provider::newer_keys`]).
    pub async fn discover(&self) -> Result<(), OidcError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_metadata().await
    }

    /// Discovery on behalf of a login attempt while the connection is undiscovered (the IdP
    /// was down at startup): runs at once, at most every [`ON_DEMAND_DISCOVERY_EVERY`], so a
    /// login works as soon as the IdP is back. Whether the connection is discovered afterwards.
    pub async fn discover_on_demand(&self) -> bool {
        if self.current().is_some() {
            return true;
        }
        let due = match self.last_on_demand.lock() {
            Ok(mut last) => {
                let now = Instant::now();
                let due = last
                    .is_none_or(|t| now.saturating_duration_since(t) >= ON_DEMAND_DISCOVERY_EVERY);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            return false;
        }
        let mut last = self.last_fetch.lock().await;
        if self.current().is_some() {
            // The background loop discovered it while this request waited for the lock.
            return true;
        }
        *last = Some(Instant::now());
        match self.fetch_metadata().await {
            Ok(()) => {
                tracing::info!(connection = %self.connection.id, "identity provider discovered on a login attempt");
                self.discovered_on_demand.notify_one();
                true
            }
            Err(e) => {
                tracing::warn!(connection = %self.connection.id, error = %crate::text::Escaped(&e), "discovery on a login attempt failed");
                false
            }
        }
    }

    /// Completes once a login attempt's discovery has succeeded (see
    /// [`Provider::discover_on_demand`]); the background retry loop waits on it with its backoff.
    pub async fn discovered_elsewhere(&self) {
        self.discovered_on_demand.notified().await;
    }

    async fn fetch_metadata(&self) -> Result<(), OidcError> {
        let issuer = IssuerUrl::new(self.connection.issuer.clone())
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        let extra = metadata.additional_metadata();
        let end_session_endpoint = extra.end_session_endpoint.as_ref().map(|u| u.to_string());
        let iss_parameter_required = extra
            .additional_metadata
            .authorization_response_iss_parameter_supported
            == Some(true);
        let jwks_uri = metadata.jwks_uri().to_string();
        let issuer = metadata.issuer().to_string();
        let keys = serde_json::to_vec(metadata.jwks())
            .map_err(|e| e.to_string())
            .and_then(|json| super::bearer::parse_jwks(&json))
            .map_err(OidcError::Unavailable)?;
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.connection.client_id.clone()),
            Some(ClientSecret::new(self.connection.client_secret.0.clone())),
        );
        let discovered = Arc::new(Discovered {
            client,
            issuer,
            end_session_endpoint,
            jwks_uri,
            keys: Arc::new(keys),
            iss_parameter_required,
            metadata,
        });
        if let Ok(mut slot) = self.discovered.write() {
            *slot = Some(discovered);
        }
        Ok(())
    }

    /// `gatehouse check-config --connect`: fetches the discovery document and the JWKS the way
    /// discovery does, step by step, so each step's result can be reported on its own: the
    /// document (and that it names the configured issuer exactly), then the JWKS and its
    /// signature keys. Stops at the first failing step.
    pub async fn check(&self) -> Vec<(CheckStep, Result<String, String>)> {
        let mut report = Vec::new();
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.connection.issuer.trim_end_matches('/')
        );
        let document = match self.get_json(&url).await {
            Ok(document) => document,
            Err(e) => {
                report.push((CheckStep::Discovery, Err(e)));
                return report;
            }
        };
        let named = document.get("issuer").and_then(Value::as_str);
        if named != Some(self.connection.issuer.as_str()) {
            let named = named.map_or_else(|| "no issuer".to_string(), |i| format!("`{i}`"));
            report.push((
                CheckStep::Discovery,
                Err(format!(
                    "{url} names {named}, not the configured issuer `{}`: set issuer to exactly what the IdP names",
                    self.connection.issuer
                )),
            ));
            return report;
        }
        let missing: Vec<&str> = ["authorization_endpoint", "token_endpoint", "jwks_uri"]
            .into_iter()
            .filter(|key| document.get(*key).and_then(Value::as_str).is_none())
            .collect();
        if !missing.is_empty() {
            report.push((
                CheckStep::Discovery,
                Err(format!("{url} lacks {}", missing.join(", "))),
            ));
            return report;
        }
        report.push((CheckStep::Discovery, Ok(format!("{url} names the issuer"))));
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let keys = match self.get_json(jwks_uri).await.and_then(|jwks| {
            serde_json::to_vec(&jwks)
                .map_err(|e| e.to_string())
                .and_then(|body| super::bearer::parse_jwks(&body))
        }) {
            Ok(keys) => keys,
            Err(e) => {
                report.push((CheckStep::Jwks, Err(e)));
                return report;
            }
        };
        report.push((
            CheckStep::Jwks,
            if keys.keys.is_empty() {
                Err(format!("{jwks_uri} holds no signature key"))
            } else {
                Ok(format!("{jwks_uri}: {} signature key(s)", keys.keys.len()))
            },
        ));
        report
    }

    /// A GET that must answer 200 with JSON; the error names the URL.
    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))
    }

    /// Keys newer than `seen` (which lacked the key a token names): ones another request
    /// fetched meanwhile, or a fresh fetch unless the last one was less than
    /// [`JWKS_REFETCH_EVERY`] ago. `None` when there are none.
    pub async fn newer_keys(&self, seen: &Arc<Discovered>) -> Option<Arc<Discovered>> {
        let mut last = self.last_fetch.lock().await;
        if let Some(current) = self.current() {
            if !Arc::ptr_eq(seen, &current) {
                return Some(current);
            }
        }
        if !may_fetch(*last, Instant::now()) {
            return None;
        }
        *last = Some(Instant::now());
        match self.fetch_metadata().await {
            Ok(()) => self.current(),
            Err(e) => {
                tracing::warn!(connection = %self.connection.id, error = %e, "key refetch failed");
                None
            }
        }
    }

    fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        self.current().ok_or_else(|| {
            OidcError::Unavailable(format!("{} is not discovered yet", self.connection.issuer))
        })
    }

    /// A fresh authorization request: state, nonce and PKCE (S256).
    pub fn authorize(&self, redirect_uri: &str) -> Result<Authorization, OidcError> {
        let d = self.discovered()?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::BadRedirect(e.to_string()))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect));
        for scope in self
            .connection
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
        {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        for (name, value) in &self.connection.extra_auth_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state, nonce) = request.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// The issuer discovery found (for the RFC 9207 `iss` check).
    pub fn issuer(&self) -> Option<String> {
        self.current().map(|d| d.issuer.clone())
    }

    /// Whether the IdP's metadata says it sends RFC 9207 `iss` in authorization responses.
    pub fn iss_parameter_required(&self) -> bool {
        self.current().is_some_and(|d| d.iss_parameter_required)
    }

    /// Exchanges the code and verifies the ID token.
    /// `traceparent` (the browser request's W3C trace context) goes with the token request.
    pub async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        redirect_uri: &str,
        traceparent: Option<&str>,
    ) -> Result<LoginResult, OidcError> {
        let d = self.discovered()?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::ExchangeFailed(e.to_string()))?;
        let response = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::ExchangeFailed(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.traced(traceparent))
            .await
            .map_err(|e| token_error(&self.connection.id, e, OidcError::ExchangeFailed))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::TokenInvalid("the token response has no id_token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let verify = |d: &Discovered| {
            let verifier = d
                .client
                .id_token_verifier()
                .set_allowed_algs(ALLOWED_ID_TOKEN_ALGS.to_vec())
                .set_time_fn(self.time_fn());
            id_token
                .claims(&verifier, &nonce)
                .map(|_| ())
                .map_err(|e| OidcError::TokenInvalid(e.to_string()))
        };
        if let Err(first) = verify(&d) {
            // An unknown key may mean the IdP rotated its keys: fetch them once and retry.
            let Some(newer) = self.newer_keys(&d).await else {
                return Err(first);
            };
            verify(&newer)?;
        }
        let raw = id_token.to_string();
        let mut claims = jwt_payload(&raw)
            .ok_or_else(|| OidcError::TokenInvalid("unreadable payload".into()))?;
        self.check_extra_claims(&claims)?;
        if self.connection.fetch_userinfo {
            if let Some(info) = self.userinfo(response.access_token().secret()).await {
                if info.get("sub") == claims.get("sub") {
                    for (k, v) in info {
                        claims.entry(k).or_insert(v);
                    }
                }
            }
        }
        let identity = identity_from_claims(&self.connection.id, &self.connection.claims, &claims)
            .ok_or_else(|| OidcError::TokenInvalid("no sub claim".into()))?;
        let idp_sid = claims
            .get("sid")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(LoginResult {
            identity,
            idp_sid,
            tokens: Tokens {
                id_token: Some(raw),
                access_token: Some(response.access_token().secret().clone()),
                refresh_token: response.refresh_token().map(|t| t.secret().clone()),
                access_expires_at: response
                    .expires_in()
                    .map(|d| self.clock.now() + d.as_secs()),
            },
        })
    }

    /// `azp` must be us when present, and `iat` must not lie in the future.
    fn check_extra_claims(&self, claims: &Map<String, Value>) -> Result<(), OidcError> {
        if let Some(azp) = claims.get("azp").and_then(Value::as_str) {
            if azp != self.connection.client_id {
                return Err(OidcError::TokenInvalid(format!(
                    "azp `{azp}` is not this client"
                )));
            }
        }
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat) if iat <= self.clock.now() + IAT_SKEW => Ok(()),
            Some(_) => Err(OidcError::TokenInvalid("iat is in the future".into())),
            None => Err(OidcError::TokenInvalid("no iat claim".into())),
        }
    }

    async fn userinfo(&self, access_token: &str) -> Option<Map<String, Value>> {
        let d = self.current()?;
        let endpoint = d.client.user_info_url()?.to_string();
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.bytes().await.ok()?;
        serde_json::from_slice::<Map<String, Value>>(&body).ok()
    }

    /// Uses a refresh token; returns the new tokens. A new ID token is verified like the
    /// first one (signature, `iss`, `aud`, `exp`, `azp`, `iat`; no nonce to match) and must
    /// name `subject`, the session's user: anything else fails the refresh.
    pub async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<Tokens, OidcError> {
        let d = self.discovered()?;
        let token = RefreshToken::new(refresh_token.to_string());
        let response = d
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::RefreshFailed(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&self.connection.id, e, OidcError::RefreshFailed))?;
        if let Some(id_token) = response.id_token() {
            let verify = |d: &Discovered| {
                let verifier = d
                    .client
                    .id_token_verifier()
                    .set_allowed_algs(ALLOWED_ID_TOKEN_ALGS.to_vec())
                    .set_time_fn(self.time_fn());
                id_token
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map(|_| ())
                    .map_err(|e| OidcError::RefreshFailed(format!("refreshed ID token: {e}")))
            };
            if let Err(first) = verify(&d) {
                let Some(newer) = self.newer_keys(&d).await else {
                    return Err(first);
                };
                verify(&newer)?;
            }
            let claims = jwt_payload(&id_token.to_string())
                .ok_or_else(|| OidcError::RefreshFailed("unreadable ID token".into()))?;
            self.check_extra_claims(&claims)
                .map_err(|e| OidcError::RefreshFailed(format!("refreshed ID token: {e}")))?;
            if claims.get("sub").and_then(Value::as_str) != Some(subject) {
                return Err(OidcError::RefreshFailed(
                    "the refreshed ID token is for another subject".into(),
                ));
            }
        }
        Ok(Tokens {
            id_token: response.id_token().map(|t| t.to_string()),
            access_token: Some(response.access_token().secret().clone()),
            refresh_token: Some(
                response
                    .refresh_token()
                    .map_or_else(|| refresh_token.to_string(), |t| t.secret().clone()),
            ),
            access_expires_at: response
                .expires_in()
                .map(|d| self.clock.now() + d.as_secs()),
        })
    }
}

/// Whether a key fetch is due, given when the last one started.
fn may_fetch(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= JWKS_REFETCH_EVERY)
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(clock: Clock) -> Provider {
        let text = "[session]\nkeys = [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n\
                    [[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n\
                    [[connections]]\nid = \"c\"\nissuer = \"https://idp.example\"\n\
                    client_id = \"g\"\nclient_secret = \"s\"\n";
        let config = crate::config::parse(text).unwrap();
        Provider::new(config.connections[0].clone(), clock).unwrap()
    }

    /// openidconnect's ID-token `exp` check reads the connection's clock, not the system
    /// time; a reading beyond chrono's range counts as the latest time (every token expired).
    #[test]
    fn the_id_token_verifier_reads_the_clock() {
        let clock = Clock::manual(1_900_000_000);
        let now = provider(clock.clone()).time_fn();
        assert_eq!(now().timestamp(), 1_900_000_000);
        clock.advance(Duration::from_secs(60));
        assert_eq!(now().timestamp(), 1_900_000_060);
        let beyond = provider(Clock::manual(u64::MAX)).time_fn();
        assert_eq!(beyond(), chrono::DateTime::<chrono::Utc>::MAX_UTC);
    }

    /// `iat` may lie at most `IAT_SKEW` in the future of the clock.
    #[test]
    fn an_id_token_iat_is_judged_on_the_clock() {
        let provider = provider(Clock::manual(1_900_000_000));
        let claims = |iat: u64| {
            let mut c = Map::new();
            c.insert("iat".into(), Value::from(iat));
            c
        };
        assert!(provider
            .check_extra_claims(&claims(1_900_000_000 + IAT_SKEW))
            .is_ok());
        assert!(provider
            .check_extra_claims(&claims(1_900_000_000 + IAT_SKEW + 1))
            .is_err());
    }

    #[test]
    fn the_keys_are_refetched_at_most_every_thirty_seconds() {
        let start = Instant::now();
        assert!(may_fetch(None, start));
        assert!(!may_fetch(Some(start), start + Duration::from_secs(29)));
        assert!(may_fetch(Some(start), start + Duration::from_secs(30)));
    }

    /// A login attempt's discovery asks the IdP at once, then at most every
    /// `ON_DEMAND_DISCOVERY_EVERY`: a burst of attempts against a broken IdP makes one request.
    #[tokio::test]
    async fn on_demand_discovery_is_rate_limited_per_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        let mut connection = provider(Clock::system()).connection;
        connection.issuer = format!("http://{addr}");
        let provider = Provider::new(connection, Clock::system()).unwrap();
        for _ in 0..5 {
            assert!(!provider.discover_on_demand().await);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        *provider.last_on_demand.lock().unwrap() = Some(Instant::now() - ON_DEMAND_DISCOVERY_EVERY);
        assert!(!provider.discover_on_demand().await);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// The HTTP client of a request's IdP calls sends its `traceparent`; without one it
    /// sends none.
    #[tokio::test]
    async fn idp_calls_carry_the_requests_traceparent() {
        use openidconnect::AsyncHttpClient;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                seen.push(String::from_utf8_lossy(&head).to_ascii_lowercase());
            }
            seen
        });
        let provider = provider(Clock::system());
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for traceparent in [Some(trace), None] {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/token"))
                .body(Vec::new())
                .unwrap();
            let response = provider.traced(traceparent).call(request).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        let seen = server.await.unwrap();
        assert!(
            seen[0].contains(&format!("traceparent: {trace}")),
            "{}",
            seen[0]
        );
        assert!(!seen[1].contains("traceparent"), "{}", seen[1]);
    }

    #[test]
    fn a_jwt_payload_is_read_and_garbage_is_not() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"a"}"#);
        let claims = jwt_payload(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["sub"], "a");
        assert!(jwt_payload("nonsense").is_none());
        assert!(jwt_payload("a.!!!.c").is_none());
    }
}
