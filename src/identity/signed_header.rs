//! The signed identity header, `X-Gatehouse-Identity`: a short-lived JWT by Gatehouse's own
//! key ([`super::assertion`]) that tells the app who is calling, with `aud` = the upstream, so
//! an app can verify it against `/.well-known/gatehouse/jwks.json` instead of trusting the
//! network. A session's assertion is signed once per upstream and reused until half its
//! lifetime has passed, so the hot path does not sign per request.

use std::sync::{Arc, RwLock};

use http::HeaderValue;
use serde::Serialize;

use super::assertion::{AssertionError, AssertionSigner};
use super::Identity;
use crate::clock::unix_now as now;
use crate::config::model::{Signing, Upstream};

/// Where the public keys are served on the proxy listener.
pub const JWKS_PATH: &str = "/.well-known/gatehouse/jwks.json";

/// A signed assertion kept on a session while it is fresh.
#[derive(Debug, Clone)]
pub struct CachedAssertion {
    /// The upstream (router index) it names as `aud`.
    pub upstream: usize,
    /// Unix second from which it is signed again (half its lifetime).
    pub resign_after: u64,
    pub value: HeaderValue,
}

/// A session's signed assertions, at most one per upstream; parallel requests of one session
/// share the read lock on the fresh path.
#[derive(Debug, Default)]
pub struct AssertionCache(RwLock<Vec<CachedAssertion>>);

impl AssertionCache {
    fn fresh(&self, upstream: usize, now: u64) -> Option<HeaderValue> {
        let cache = self.0.read().ok()?;
        cache
            .iter()
            .find(|c| c.upstream == upstream && now < c.resign_after)
            .map(|c| c.value.clone())
    }

    fn keep(&self, entry: CachedAssertion) {
        if let Ok(mut cache) = self.0.write() {
            cache.retain(|c| c.upstream != entry.upstream);
            cache.push(entry);
        }
    }

    /// Forgets every assertion (the next request signs again).
    pub fn clear(&self) {
        if let Ok(mut cache) = self.0.write() {
            cache.clear();
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    /// The local user id with JIT, else the IdP's subject.
    sub: &'a str,
    iat: u64,
    exp: u64,
    connection: &'a str,
    idp_sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    email_verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    groups: &'a [String],
    roles: &'a [String],
}

/// Signs identity assertions; built once at startup.
pub struct SignedHeader {
    signer: Arc<AssertionSigner>,
    issuer: String,
    ttl: u64,
    /// By upstream index (the router's order).
    audiences: Vec<String>,
}

impl SignedHeader {
    pub fn new(signer: Arc<AssertionSigner>, signing: &Signing, upstreams: &[Upstream]) -> Self {
        Self {
            signer,
            issuer: signing.issuer.clone(),
            ttl: signing.ttl.as_secs(),
            audiences: upstreams.iter().map(|u| u.audience.clone()).collect(),
        }
    }

    pub fn jwks_json(&self) -> &str {
        self.signer.jwks_json()
    }

    /// A fresh assertion for `identity` towards upstream `upstream`.
    pub fn sign(
        &self,
        upstream: usize,
        identity: &Identity,
        iat: u64,
    ) -> Result<HeaderValue, AssertionError> {
        let aud = self.audiences.get(upstream).map_or("", String::as_str);
        let claims = Claims {
            iss: &self.issuer,
            aud,
            sub: identity.user_id.as_deref().unwrap_or(&identity.subject),
            iat,
            exp: iat + self.ttl,
            connection: &identity.connection,
            idp_sub: &identity.subject,
            user_id: identity.user_id.as_deref(),
            preferred_username: identity.username.as_deref(),
            email: identity.email.as_deref(),
            email_verified: identity.email_verified,
            name: identity.name.as_deref(),
            groups: &identity.groups,
            roles: &identity.roles,
        };
        let jwt = self.signer.sign(&claims)?;
        HeaderValue::from_str(&jwt).map_err(|e| AssertionError::Encode(e.to_string()))
    }

    /// The header value for this request: from the session's `cache` while it is fresh,
    /// else signed now (and kept in `cache` when there is one; bearer requests have none).
    pub fn value(
        &self,
        upstream: usize,
        identity: &Identity,
        cache: Option<&AssertionCache>,
    ) -> Option<HeaderValue> {
        let now = now();
        if let Some(value) = cache.and_then(|c| c.fresh(upstream, now)) {
            return Some(value);
        }
        let value = match self.sign(upstream, identity, now) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "identity assertion not signed: header left out");
                return None;
            }
        };
        if let Some(cache) = cache {
            cache.keep(CachedAssertion {
                upstream,
                resign_after: now + self.ttl / 2,
                value: value.clone(),
            });
        }
        Some(value)
    }
}
