//! The signed identity header, `X-Gatehouse-Identity`: a short-lived JWT by Gatehouse's own
//! key ([`super::assertion`]) that tells the app who is calling, with `aud` = the upstream, so
//! an app can verify it against `/.well-known/gatehouse/jwks.json` instead of trusting the
//! network. A session's assertion is signed once per upstream and reused until half its
//! lifetime has passed, so the hot path does not sign per request.

use std::sync::Arc;

use http::HeaderValue;
use serde::Serialize;

use super::assertion::{AssertionError, AssertionSigner};
use super::Identity;
use crate::auth::session::now;
use crate::auth::Authenticated;
use crate::config::model::{Signing, Upstream};

/// Where the public keys are served on the proxy listener.
pub const JWKS_PATH: &str = "/.well-known/gatehouse/jwks.json";

/// A signed assertion cached on a session: (upstream index, re-sign after, value).
pub type CachedAssertion = (usize, u64, HeaderValue);

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

    /// The header value for this request: from the session's cache while it is fresh, else
    /// signed now (and cached for a session).
    pub fn value(&self, upstream: usize, who: &Authenticated) -> Option<HeaderValue> {
        let now = now();
        let signed = |identity: &Identity| match self.sign(upstream, identity, now) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "identity assertion not signed: header left out");
                None
            }
        };
        match who {
            Authenticated::Bearer(identity, _) => signed(identity),
            Authenticated::Session(live) => {
                // Parallel requests of one session share the read lock on the fresh path.
                let fresh = live.signed.read().ok().and_then(|cache| {
                    cache
                        .iter()
                        .find(|(u, until, _)| *u == upstream && now < *until)
                        .map(|(_, _, value)| value.clone())
                });
                if fresh.is_some() {
                    return fresh;
                }
                let value = signed(&live.identity)?;
                let mut cache = live.signed.write().ok()?;
                cache.retain(|(u, _, _)| *u != upstream);
                cache.push((upstream, now + self.ttl / 2, value.clone()));
                Some(value)
            }
        }
    }
}
