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
use crate::clock::Clock;
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
    /// `iat`/`exp` and the cache's re-sign time are read on it.
    clock: Clock,
}

impl SignedHeader {
    pub fn new(
        signer: Arc<AssertionSigner>,
        signing: &Signing,
        upstreams: &[Upstream],
        clock: Clock,
    ) -> Self {
        Self {
            signer,
            issuer: signing.issuer.clone(),
            ttl: signing.ttl.as_secs(),
            audiences: upstreams.iter().map(|u| u.audience.clone()).collect(),
            clock,
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
        let now = self.clock.now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::SigningAlg;
    use base64::Engine;
    use std::time::Duration;

    /// The manual clock of these tests starts here (unix seconds), far from the system time.
    const START: u64 = 1_800_000_000;

    fn header(clock: &Clock, ttl: u64) -> SignedHeader {
        let signing = Signing {
            alg: SigningAlg::EdDsa,
            key_file: None,
            ttl: Duration::from_secs(ttl),
            issuer: "https://gatehouse.test".into(),
        };
        let signer = Arc::new(AssertionSigner::generate(SigningAlg::EdDsa).unwrap());
        SignedHeader::new(signer, &signing, &[], clock.clone())
    }

    fn identity() -> Identity {
        Identity {
            connection: "corp".into(),
            subject: "alice".into(),
            username: None,
            email: None,
            email_verified: false,
            name: None,
            groups: vec![],
            user_id: None,
            roles: vec![],
            attributes: Default::default(),
        }
    }

    /// `iat` and `exp` of a header value (its payload, unverified).
    fn times(value: &HeaderValue) -> (u64, u64) {
        let payload = value.to_str().unwrap().split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        )
    }

    /// The assertion is dated by the clock (`iat` now, `exp` now + ttl), reused from the
    /// session's cache until half its lifetime has passed on the clock, and signed again,
    /// with the new time, from that second on.
    #[test]
    fn the_signed_header_is_dated_and_refreshed_on_the_clock() {
        let clock = Clock::manual(START);
        let signed = header(&clock, 60);
        let cache = AssertionCache::default();
        let first = signed.value(0, &identity(), Some(&cache)).unwrap();
        assert_eq!(times(&first), (START, START + 60));
        clock.advance(Duration::from_secs(29));
        let reused = signed.value(0, &identity(), Some(&cache)).unwrap();
        assert_eq!(reused, first, "one second before half its lifetime: reused");
        clock.advance(Duration::from_secs(1));
        let renewed = signed.value(0, &identity(), Some(&cache)).unwrap();
        assert_eq!(times(&renewed), (START + 30, START + 90));
    }

    /// Without a cache (a bearer request) every value is signed at the clock's time.
    #[test]
    fn an_uncached_assertion_is_signed_at_the_clock_time() {
        let clock = Clock::manual(START);
        let signed = header(&clock, 300);
        clock.advance(Duration::from_secs(7));
        let value = signed.value(0, &identity(), None).unwrap();
        assert_eq!(times(&value), (START + 7, START + 307));
    }
}
