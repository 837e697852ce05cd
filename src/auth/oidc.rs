//! One identity provider connection: discovery (metadata and JWKS), the authorization URL, the
//! code exchange and ID-token verification, all through the `openidconnect` crate.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadataWithLogout, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use serde_json::{Map, Value};

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
/// JWKS is refetched for an unknown key at most this often.
const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(30);

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
}

/// What discovery found.
pub struct Discovered {
    pub client: OidcClient,
    pub issuer: String,
    pub end_session_endpoint: Option<String>,
    pub jwks_uri: String,
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
    last_discovery: Mutex<Option<Instant>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    pub fn new(connection: Connection) -> Result<Self, String> {
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
            last_discovery: Mutex::new(None),
        })
    }

    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.http
    }

    /// The discovered metadata, once discovery has succeeded.
    pub fn current(&self) -> Option<Arc<Discovered>> {
        self.discovered.read().ok().and_then(|d| d.clone())
    }

    /// Fetches the metadata and the JWKS, and replaces the current ones.
    pub async fn discover(&self) -> Result<(), OidcError> {
        if let Ok(mut last) = self.last_discovery.lock() {
            *last = Some(Instant::now());
        }
        let issuer = IssuerUrl::new(self.connection.issuer.clone())
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        let end_session_endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.to_string());
        let jwks_uri = metadata.jwks_uri().to_string();
        let issuer = metadata.issuer().to_string();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.connection.client_id.clone()),
            Some(ClientSecret::new(self.connection.client_secret.0.clone())),
        );
        let discovered = Arc::new(Discovered {
            client,
            issuer,
            end_session_endpoint,
            jwks_uri,
        });
        if let Ok(mut slot) = self.discovered.write() {
            *slot = Some(discovered);
        }
        Ok(())
    }

    /// Rediscovers (new JWKS) unless that was done in the last [`JWKS_REFETCH_EVERY`].
    /// Returns whether it did.
    pub async fn refetch_keys(&self) -> bool {
        let recent = self
            .last_discovery
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < JWKS_REFETCH_EVERY);
        if recent {
            return false;
        }
        self.discover().await.is_ok()
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

    /// Exchanges the code and verifies the ID token.
    pub async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        redirect_uri: &str,
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
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::ExchangeFailed(error_chain(&e)))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::TokenInvalid("the token response has no id_token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let verify = |d: &Discovered| {
            let verifier = d
                .client
                .id_token_verifier()
                .set_allowed_algs(ALLOWED_ID_TOKEN_ALGS.to_vec());
            id_token
                .claims(&verifier, &nonce)
                .map(|_| ())
                .map_err(|e| OidcError::TokenInvalid(e.to_string()))
        };
        if let Err(first) = verify(&d) {
            // An unknown key may mean the IdP rotated its keys: fetch them once and retry.
            if !self.refetch_keys().await {
                return Err(first);
            }
            verify(&*self.discovered()?)?;
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
                access_expires_at: response.expires_in().map(|d| now() + d.as_secs()),
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
            Some(iat) if iat <= now() + IAT_SKEW => Ok(()),
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

    /// Uses a refresh token; returns the new tokens (claims of a new ID token, if any, are
    /// verified like at login, without a nonce).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, OidcError> {
        let d = self.discovered()?;
        let token = RefreshToken::new(refresh_token.to_string());
        let response = d
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::RefreshFailed(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::RefreshFailed(error_chain(&e)))?;
        Ok(Tokens {
            id_token: response.id_token().map(|t| t.to_string()),
            access_token: Some(response.access_token().secret().clone()),
            refresh_token: Some(
                response
                    .refresh_token()
                    .map_or_else(|| refresh_token.to_string(), |t| t.secret().clone()),
            ),
            access_expires_at: response.expires_in().map(|d| now() + d.as_secs()),
        })
    }
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

    #[test]
    fn a_jwt_payload_is_read_and_garbage_is_not() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"a"}"#);
        let claims = jwt_payload(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["sub"], "a");
        assert!(jwt_payload("nonsense").is_none());
        assert!(jwt_payload("a.!!!.c").is_none());
    }
}
