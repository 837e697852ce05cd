//! Back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0, section 2.4).
//!
//! The connection is picked by the token's (unverified) `iss` and, among connections sharing
//! that issuer, by `aud` naming the connection's client id; a token for no connection is
//! refused before any key is looked at. The signature is checked with the connection's one
//! key cache (shared with login and bearer tokens): junk tokens never make Gatehouse fetch
//! keys, except one naming an unknown `kid`, and that at most once per 30 s per connection.
//!
//! Then: `typ` absent or `logout+jwt`; `iss`, `aud` (the client id), `iat` (not older than
//! [`MAX_AGE_SECS`], not in the future), `exp` when present; the back-channel logout event;
//! no `nonce`; a `jti` seen at most once (a bounded replay record, see [`Expiring`]); and a
//! `sid`, a `sub` or both.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::bearer::{audience_names_any, issuer_is, verify_with_provider, Kind};
use super::expiring::Expiring;
use super::oidc::{jwt_payload, Provider};

/// The event a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token is accepted for this long after its `iat`.
pub const MAX_AGE_SECS: u64 = 300;
/// `iat` may lie this far in the future (clock skew).
const SKEW_SECS: u64 = 60;
/// At most this many `jti`s are remembered; the oldest goes first.
pub const REPLAY_RECORDS: usize = 100_000;
/// Longer `jti` values are refused.
const MAX_JTI_LEN: usize = 256;

/// What a valid logout token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutOrder {
    pub connection: String,
    pub sid: Option<String>,
    pub sub: Option<String>,
}

/// Verifies logout tokens and remembers their `jti`s.
pub struct LogoutVerifier {
    /// (connection, jti) of accepted tokens, for as long as they could be accepted.
    seen: Mutex<Expiring<(String, String)>>,
}

impl Default for LogoutVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl LogoutVerifier {
    pub fn new() -> Self {
        Self {
            seen: Mutex::new(Expiring::new(MAX_AGE_SECS + 2 * SKEW_SECS, REPLAY_RECORDS)),
        }
    }

    /// Checks `token`; `now` in unix seconds. The error is the reason, for the log.
    pub async fn verify(
        &self,
        providers: &[Arc<Provider>],
        token: &str,
        now: u64,
    ) -> Result<LogoutOrder, String> {
        let provider = provider_for(providers, token)?;
        let audiences = std::slice::from_ref(&provider.connection.client_id);
        let claims = verify_with_provider(provider, token, audiences, Kind::Logout, now)
            .await
            .map_err(|e| e.to_string())?;
        let order = check_claims(&provider.connection.id, &claims, now)?;
        let jti = text(&claims, "jti").ok_or("no jti")?;
        let fresh = self
            .seen
            .lock()
            .map_err(|_| "replay record unavailable")?
            .record((order.connection.clone(), jti), now);
        if !fresh {
            return Err("replayed jti".into());
        }
        Ok(order)
    }
}

/// The connection the token is for: same issuer, and `aud` naming its client id.
fn provider_for<'a>(providers: &'a [Arc<Provider>], token: &str) -> Result<&'a Provider, String> {
    let unverified = jwt_payload(token).ok_or("not a JWT")?;
    let iss = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("no iss")?;
    let mut same_issuer = providers
        .iter()
        .filter(|p| issuer_is(&p.connection.issuer, iss))
        .peekable();
    if same_issuer.peek().is_none() {
        return Err("unknown issuer".into());
    }
    same_issuer
        .find(|p| audience_names_any(&unverified, std::slice::from_ref(&p.connection.client_id)))
        .map(|p| p.as_ref())
        .ok_or_else(|| "aud names no connection of this issuer".into())
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The claim checks of section 2.6 beyond signature, `iss`, `aud` and `exp`.
fn check_claims(
    connection: &str,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<LogoutOrder, String> {
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or("no iat")?;
    if iat > now + SKEW_SECS {
        return Err("iat is in the future".into());
    }
    if now.saturating_sub(iat) > MAX_AGE_SECS {
        return Err("the logout token is too old".into());
    }
    let has_event = claims
        .get("events")
        .and_then(|e| e.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err("no back-channel logout event".into());
    }
    if claims.contains_key("nonce") {
        return Err("a logout token must not carry a nonce".into());
    }
    match text(claims, "jti") {
        Some(jti) if jti.len() <= MAX_JTI_LEN => {}
        Some(_) => return Err("jti too long".into()),
        None => return Err("no jti".into()),
    }
    let (sid, sub) = (text(claims, "sid"), text(claims, "sub"));
    if sid.is_none() && sub.is_none() {
        return Err("neither sid nor sub".into());
    }
    Ok(LogoutOrder {
        connection: connection.to_string(),
        sid,
        sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn good() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "iss": "https://idp.example", "aud": "gatehouse", "iat": NOW, "jti": "j-1",
            "events": {BACKCHANNEL_EVENT: {}}, "sid": "s-1",
        }) else {
            unreachable!()
        };
        map
    }

    #[test]
    fn a_sid_only_token_is_an_order_for_that_sid() {
        let order = check_claims("c", &good(), NOW).unwrap();
        assert_eq!(order.sid.as_deref(), Some("s-1"));
        assert_eq!(order.sub, None);
    }

    #[test]
    fn every_missing_or_wrong_claim_is_refused() {
        // (what, claim, new value or None to remove it)
        let cases: Vec<(&str, &str, Option<Value>)> = vec![
            ("no iat", "iat", None),
            ("old", "iat", Some(json!(NOW - MAX_AGE_SECS - 1))),
            ("future", "iat", Some(json!(NOW + 3600))),
            ("iat not a number", "iat", Some(json!("now"))),
            ("no events", "events", None),
            ("other event", "events", Some(json!({"x": {}}))),
            (
                "event not object",
                "events",
                Some(json!({BACKCHANNEL_EVENT: "x"})),
            ),
            ("nonce", "nonce", Some(json!("n"))),
            ("no jti", "jti", None),
            ("empty jti", "jti", Some(json!(""))),
            ("long jti", "jti", Some(json!("j".repeat(300)))),
            ("no sid nor sub", "sid", None),
        ];
        for (name, claim, value) in cases {
            let mut claims = good();
            match value {
                Some(v) => claims.insert(claim.into(), v),
                None => claims.remove(claim),
            };
            assert!(check_claims("c", &claims, NOW).is_err(), "{name}");
        }
    }
}
