//! Bearer tokens: JWT access tokens sent in `Authorization: Bearer`, accepted for the
//! connections that say `allow_bearer = true`.
//!
//! A token is tied to its connection by its (not yet verified) `iss`, then checked against
//! that IdP's published keys (its JWKS, fetched on first use and again when a token names an
//! unknown key, at most every 30 s per connection). Only asymmetric signatures are accepted:
//! never `none`, never an HMAC keyed with something public. The claims must carry `exp`, the
//! discovered issuer and one of the connection's `bearer_audiences`.
//!
//! [`check`] is the pure part (token plus key set in, claims out); [`BearerVerifier`] adds
//! picking the connection, fetching keys and mapping the claims to an [`Identity`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::oidc::{jwt_payload, Provider};
use crate::identity::claims::identity_from_claims;
use crate::identity::Identity;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// A connection's JWKS is fetched at most this often.
const REFETCH_EVERY: Duration = Duration::from_secs(30);
/// Longer "tokens" are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum BearerError {
    #[error("the bearer token is not a well-formed signed JWT")]
    Malformed,
    #[error("the bearer token's issuer is not a connection that accepts bearer tokens")]
    NotAllowed,
    #[error("the bearer token is signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the bearer token is invalid: {0}")]
    Invalid(String),
    #[error("the issuer's keys are not available yet")]
    Unavailable,
    #[error("the token's local account is disabled")]
    AccountDisabled,
}

impl BearerError {
    /// The `result` label of `gatehouse_bearer_total` for this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            BearerError::NotAllowed => "not_allowed",
            _ => "invalid",
        }
    }
}

/// One connection that accepts bearer tokens, and its cached key set.
struct Source {
    provider: Arc<Provider>,
    keys: RwLock<Option<Arc<JwkSet>>>,
    /// When the JWKS was last fetched; held across a fetch so concurrent requests wait for
    /// it instead of fetching again.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Source {
    fn new(provider: Arc<Provider>) -> Self {
        Self {
            provider,
            keys: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    fn issuer_is(&self, iss: &str) -> bool {
        self.provider.connection.issuer.trim_end_matches('/') == iss.trim_end_matches('/')
    }

    fn cached(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// The key set, fetched on first use.
    async fn keys(&self, jwks_uri: &str) -> Result<Arc<JwkSet>, BearerError> {
        if let Some(keys) = self.cached() {
            return Ok(keys);
        }
        self.newer_keys(jwks_uri, None)
            .await
            .ok_or(BearerError::Unavailable)
    }

    /// A key set newer than `seen`: one another request fetched meanwhile, or a fresh fetch
    /// unless the last one was less than [`REFETCH_EVERY`] ago. `None` when there is none.
    async fn newer_keys(&self, jwks_uri: &str, seen: Option<&Arc<JwkSet>>) -> Option<Arc<JwkSet>> {
        let mut last_fetch = self.last_fetch.lock().await;
        if let Some(current) = self.cached() {
            if seen.is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                return Some(current);
            }
        }
        if !may_fetch(*last_fetch, Instant::now()) {
            return None;
        }
        *last_fetch = Some(Instant::now());
        let fetched = fetch_jwks(self.provider.http(), jwks_uri).await;
        let keys = match fetched {
            Ok(keys) => Arc::new(keys),
            Err(e) => {
                tracing::warn!(connection = %self.provider.connection.id, error = %crate::logging::Escaped(&e), "JWKS fetch for bearer tokens failed");
                return None;
            }
        };
        if let Ok(mut slot) = self.keys.write() {
            *slot = Some(Arc::clone(&keys));
        }
        Some(keys)
    }
}

/// Whether a fetch is due, given when the last one started.
fn may_fetch(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= REFETCH_EVERY)
}

/// GETs and parses a JWKS.
pub async fn fetch_jwks(
    http: &openidconnect::reqwest::Client,
    jwks_uri: &str,
) -> Result<JwkSet, String> {
    let response = http.get(jwks_uri).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{jwks_uri} answered {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    parse_jwks(&body)
}

/// A JWKS document's usable signature keys. Keys that do not parse, symmetric keys and keys
/// meant for encryption are left out, so one odd key does not hide the others.
fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no `keys` array")?;
    let keys = entries
        .iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
        .filter(is_signature_key)
        .collect();
    Ok(JwkSet { keys })
}

fn is_signature_key(jwk: &Jwk) -> bool {
    let asymmetric = matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_)
            | AlgorithmParameters::EllipticCurve(_)
            | AlgorithmParameters::OctetKeyPair(_)
    );
    let for_signing = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    asymmetric && for_signing
}

/// Checks bearer tokens for every connection with `allow_bearer = true`.
pub struct BearerVerifier {
    sources: Vec<Source>,
}

impl BearerVerifier {
    /// Keeps the providers whose connection allows bearer tokens; the others are ignored.
    pub fn new(providers: &[Arc<Provider>]) -> Self {
        let sources = providers
            .iter()
            .filter(|p| p.connection.allow_bearer)
            .map(|p| Source::new(Arc::clone(p)))
            .collect();
        Self { sources }
    }

    /// Whether any connection accepts bearer tokens.
    pub fn is_enabled(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) and returns who it is for.
    pub async fn verify(&self, token: &str) -> Result<Identity, BearerError> {
        let header = read_header(token)?;
        allowed_algorithm(header.alg)?;
        let source = self.source_for(token)?;
        let discovered = source.provider.current().ok_or(BearerError::Unavailable)?;
        let connection = &source.provider.connection;
        let audiences = &connection.bearer_audiences;
        let keys = source.keys(&discovered.jwks_uri).await?;
        let claims = match check(token, &keys, &discovered.issuer, audiences) {
            Err(BearerError::UnknownKey) => {
                let newer = source
                    .newer_keys(&discovered.jwks_uri, Some(&keys))
                    .await
                    .ok_or(BearerError::UnknownKey)?;
                check(token, &newer, &discovered.issuer, audiences)?
            }
            other => other?,
        };
        identity_from_claims(&connection.id, &connection.claims, &claims)
            .ok_or_else(|| BearerError::Invalid("no sub claim".into()))
    }

    /// The connection named by the token's (unverified) `iss`.
    fn source_for(&self, token: &str) -> Result<&Source, BearerError> {
        let claims = jwt_payload(token).ok_or(BearerError::Malformed)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(BearerError::NotAllowed)?;
        self.sources
            .iter()
            .find(|s| s.issuer_is(iss))
            .ok_or(BearerError::NotAllowed)
    }
}

/// Verifies `token` against `jwks`: algorithm, key, signature, `exp`/`nbf`, `iss`, `aud` and
/// `azp`. Returns the claims; the caller maps them to an identity.
pub fn check(
    token: &str,
    jwks: &JwkSet,
    expected_issuer: &str,
    audiences: &[String],
) -> Result<Map<String, Value>, BearerError> {
    let header = read_header(token)?;
    let alg = allowed_algorithm(header.alg)?;
    let jwk = find_key(jwks, header.kid.as_deref(), alg)?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| BearerError::Invalid(format!("unusable key: {e}")))?;
    let validation = validation(alg, expected_issuer, audiences);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| BearerError::Invalid(e.to_string()))?
        .claims;
    check_azp(&claims, audiences)?;
    Ok(claims)
}

/// The header of a compact JWS (three dot-separated parts); `alg: none` does not parse.
fn read_header(token: &str) -> Result<Header, BearerError> {
    if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(BearerError::Malformed);
    }
    jsonwebtoken::decode_header(token).map_err(|_| BearerError::Malformed)
}

/// Only signatures made with a private key count.
fn allowed_algorithm(alg: Algorithm) -> Result<Algorithm, BearerError> {
    match alg.family() {
        AlgorithmFamily::Hmac => Err(BearerError::Invalid("symmetric algorithm refused".into())),
        AlgorithmFamily::Rsa | AlgorithmFamily::Ec | AlgorithmFamily::Ed => Ok(alg),
    }
}

/// The key the token names by `kid`; without a `kid`, the only key of the set that fits.
fn find_key<'a>(
    jwks: &'a JwkSet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'a Jwk, BearerError> {
    match kid {
        Some(kid) => key_by_id(jwks, kid, alg),
        None => only_fitting_key(jwks, alg),
    }
}

fn key_by_id<'a>(jwks: &'a JwkSet, kid: &str, alg: Algorithm) -> Result<&'a Jwk, BearerError> {
    let mut refusal = None;
    for jwk in jwks
        .keys
        .iter()
        .filter(|k| k.common.key_id.as_deref() == Some(kid))
    {
        match key_fits(jwk, alg) {
            Ok(()) => return Ok(jwk),
            Err(why) => refusal = Some(why),
        }
    }
    Err(refusal.map_or(BearerError::UnknownKey, BearerError::Invalid))
}

fn only_fitting_key(jwks: &JwkSet, alg: Algorithm) -> Result<&Jwk, BearerError> {
    let mut fitting = jwks.keys.iter().filter(|k| key_fits(k, alg).is_ok());
    match (fitting.next(), fitting.next()) {
        (Some(jwk), None) => Ok(jwk),
        _ => Err(BearerError::UnknownKey),
    }
}

/// Whether `jwk` may verify an `alg` signature: a signature key of the algorithm's type (and
/// curve), declared for that algorithm if it declares one.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> Result<(), String> {
    if !is_signature_key(jwk) {
        return Err("the key is not an asymmetric signature key".into());
    }
    if let Some(declared) = jwk.common.key_algorithm {
        if declared != KeyAlgorithm::from(alg) {
            return Err(format!("the key is for {declared}, the token is {alg:?}"));
        }
    }
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), _) => alg.family() == AlgorithmFamily::Rsa,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("the key's type does not fit {alg:?}"))
    }
}

/// `exp` required, `nbf` honoured, both with [`LEEWAY_SECS`]; `iss` exact; `aud` one of ours.
fn validation(alg: Algorithm, expected_issuer: &str, audiences: &[String]) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[expected_issuer]);
    validation.set_audience(audiences);
    validation
}

/// With several audiences, the party the token was issued to (`azp`) must be one of ours.
fn check_azp(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), BearerError> {
    let several_audiences = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    match claims.get("azp") {
        None => Ok(()),
        Some(Value::String(azp)) if !several_audiences || audiences.contains(azp) => Ok(()),
        Some(Value::String(azp)) => Err(BearerError::Invalid(format!(
            "azp `{azp}` is not an accepted audience"
        ))),
        Some(_) => Err(BearerError::Invalid("azp is not a string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey};
    use serde_json::json;

    const ISSUER: &str = "https://idp.example";
    const AUDIENCE: &str = "urn:test-api";
    const KID: &str = "ed-1";
    /// Ed25519 private keys, PKCS#8 DER in base64 (`openssl genpkey -algorithm ed25519
    /// -outform DER | base64`), made for these tests only.
    const ED25519_A: &str = "MC4CAQAwBQYDK2VwBCIEIL/nahPCr9DPvzvAdwtlHsO2vjkpTQdA4Q7gjK43LbiK";
    const ED25519_B: &str = "MC4CAQAwBQYDK2VwBCIEIK0PaKENbmAHmKSoYLyQ56lLiCR19hHbDtXSj5lIfGRJ";
    /// A P-256 private key, PKCS#8 DER in base64, made for these tests only.
    const P256: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgl1UDC7+BWxnJl7WBmvcpBDS82gd2tfgpfz2wHrWV5pShRANCAARmCYupXAg5n2s7xsDeIP6WkL7gFtJNJAdE/L56mMdoVlQdj0M+t562qTfsKeYcmqygBb6IEmtAeV+DdZVkmwEw";

    fn der(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    fn ed_key(b64: &str) -> EncodingKey {
        EncodingKey::from_ed_der(&der(b64))
    }

    fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        jwk
    }

    /// The IdP publishes key A only.
    fn published() -> JwkSet {
        JwkSet {
            keys: vec![public_jwk(&ed_key(ED25519_A), Algorithm::EdDSA, KID)],
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn good_claims() -> Value {
        json!({
            "iss": ISSUER, "sub": "svc-1", "aud": AUDIENCE,
            "iat": now(), "exp": now() + 300, "client_id": "svc-1",
        })
    }

    fn sign_with(claims: &Value, key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(claims, &ed_key(ED25519_A), Algorithm::EdDSA, Some(KID))
    }

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn run(token: &str) -> Result<Map<String, Value>, BearerError> {
        check(token, &published(), ISSUER, &[AUDIENCE.to_string()])
    }

    fn refused_as_invalid(token: &str) -> String {
        match run(token) {
            Err(BearerError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_good_token_is_accepted_and_its_claims_returned() {
        let claims = run(&sign(&good_claims())).unwrap();
        assert_eq!(claims["sub"], "svc-1");
        assert_eq!(claims["client_id"], "svc-1");
    }

    #[test]
    fn a_token_with_alg_none_is_malformed() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(good_claims().to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        assert!(matches!(run(&token), Err(BearerError::Malformed)));
    }

    #[test]
    fn garbage_and_encrypted_tokens_are_malformed() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "a.b.c.d.e",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(run(token), Err(BearerError::Malformed)),
                "{token:.20}"
            );
        }
    }

    #[test]
    fn an_hs256_token_keyed_with_the_published_public_key_is_refused() {
        let AlgorithmParameters::OctetKeyPair(public) = &published().keys[0].algorithm else {
            panic!("not an OKP key");
        };
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&public.x)
            .unwrap();
        let key = EncodingKey::from_secret(&secret).unwrap();
        let token = sign_with(&good_claims(), &key, Algorithm::HS256, Some(KID));
        assert_eq!(refused_as_invalid(&token), "symmetric algorithm refused");
    }

    #[test]
    fn a_token_signed_by_another_key_under_the_published_kid_is_refused() {
        let token = sign_with(
            &good_claims(),
            &ed_key(ED25519_B),
            Algorithm::EdDSA,
            Some(KID),
        );
        assert_eq!(refused_as_invalid(&token), "InvalidSignature");
    }

    #[test]
    fn a_token_with_a_flipped_signature_byte_is_refused() {
        let token = sign(&good_claims());
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        bytes[10] ^= 0x01;
        let forged = format!("{signed}.{}", b64url(&bytes));
        assert_eq!(refused_as_invalid(&forged), "InvalidSignature");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut claims = good_claims();
        claims["exp"] = json!(now() - 120);
        assert_eq!(refused_as_invalid(&sign(&claims)), "ExpiredSignature");
    }

    #[test]
    fn a_token_expired_within_the_leeway_is_still_accepted() {
        let mut claims = good_claims();
        claims["exp"] = json!(now() - 10);
        assert!(run(&sign(&claims)).is_ok());
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            refused_as_invalid(&sign(&claims)),
            "Missing required claim: exp"
        );
    }

    #[test]
    fn a_token_not_valid_before_a_later_time_is_refused() {
        let mut claims = good_claims();
        claims["nbf"] = json!(now() + 600);
        assert_eq!(refused_as_invalid(&sign(&claims)), "ImmatureSignature");
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let mut claims = good_claims();
        claims["aud"] = json!("urn:other-api");
        assert_eq!(refused_as_invalid(&sign(&claims)), "InvalidAudience");
    }

    #[test]
    fn a_token_without_aud_is_refused() {
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            refused_as_invalid(&sign(&claims)),
            "Missing required claim: aud"
        );
    }

    #[test]
    fn a_token_whose_audiences_include_ours_is_accepted() {
        let mut claims = good_claims();
        claims["aud"] = json!(["urn:other-api", AUDIENCE]);
        claims["azp"] = json!(AUDIENCE);
        assert!(run(&sign(&claims)).is_ok());
    }

    #[test]
    fn a_foreign_azp_is_refused_when_aud_has_several_values() {
        let mut claims = good_claims();
        claims["aud"] = json!(["urn:other-api", AUDIENCE]);
        claims["azp"] = json!("someone-else");
        assert!(refused_as_invalid(&sign(&claims)).contains("azp"));
    }

    #[test]
    fn a_foreign_azp_is_fine_when_aud_is_ours_alone() {
        let mut claims = good_claims();
        claims["azp"] = json!("someone-else");
        assert!(run(&sign(&claims)).is_ok());
    }

    #[test]
    fn a_token_from_another_issuer_is_refused() {
        let mut claims = good_claims();
        claims["iss"] = json!("https://evil.example");
        assert_eq!(refused_as_invalid(&sign(&claims)), "InvalidIssuer");
    }

    #[test]
    fn a_token_without_sub_is_refused() {
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            refused_as_invalid(&sign(&claims)),
            "Missing required claim: sub"
        );
    }

    #[test]
    fn an_unknown_kid_is_reported_as_an_unknown_key() {
        let token = sign_with(
            &good_claims(),
            &ed_key(ED25519_A),
            Algorithm::EdDSA,
            Some("other"),
        );
        assert!(matches!(run(&token), Err(BearerError::UnknownKey)));
    }

    #[test]
    fn a_token_without_kid_uses_the_only_key_that_fits() {
        let token = sign_with(&good_claims(), &ed_key(ED25519_A), Algorithm::EdDSA, None);
        assert!(run(&token).is_ok());
    }

    #[test]
    fn a_token_without_kid_is_an_unknown_key_when_two_keys_fit() {
        let mut jwks = published();
        jwks.keys
            .push(public_jwk(&ed_key(ED25519_B), Algorithm::EdDSA, "ed-2"));
        let token = sign_with(&good_claims(), &ed_key(ED25519_A), Algorithm::EdDSA, None);
        let result = check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()]);
        assert!(matches!(result, Err(BearerError::UnknownKey)));
    }

    #[test]
    fn an_es256_token_verifies_with_an_ec_key() {
        let key = EncodingKey::from_ec_der(&der(P256));
        let jwks = JwkSet {
            keys: vec![public_jwk(&key, Algorithm::ES256, "ec-1")],
        };
        let token = sign_with(&good_claims(), &key, Algorithm::ES256, Some("ec-1"));
        assert!(check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()]).is_ok());
    }

    #[test]
    fn a_key_of_the_wrong_type_for_the_algorithm_is_refused() {
        let ec = EncodingKey::from_ec_der(&der(P256));
        let mut ec_jwk = public_jwk(&ec, Algorithm::ES256, KID);
        ec_jwk.common.key_algorithm = None;
        let jwks = JwkSet { keys: vec![ec_jwk] };
        let token = sign(&good_claims());
        let result = check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()]);
        assert!(matches!(result, Err(BearerError::Invalid(why)) if why.contains("type")));
    }

    #[test]
    fn a_key_declared_for_another_algorithm_is_refused() {
        let mut jwks = published();
        jwks.keys[0].common.key_algorithm = Some(KeyAlgorithm::ES256);
        let result = check(
            &sign(&good_claims()),
            &jwks,
            ISSUER,
            &[AUDIENCE.to_string()],
        );
        assert!(matches!(result, Err(BearerError::Invalid(why)) if why.contains("ES256")));
    }

    #[test]
    fn the_jwks_keeps_only_asymmetric_signature_keys() {
        let jwk = serde_json::to_value(&published().keys[0]).unwrap();
        let mut enc = jwk.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc-1");
        let body = json!({"keys": [
            jwk,
            enc,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "weird", "kid": "w"},
            "not a key",
        ]});
        let jwks = parse_jwks(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = jwks
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect();
        assert_eq!(kids, [KID]);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn the_jwks_is_refetched_at_most_every_thirty_seconds() {
        let start = Instant::now();
        assert!(may_fetch(None, start));
        assert!(!may_fetch(Some(start), start + Duration::from_secs(29)));
        assert!(may_fetch(Some(start), start + Duration::from_secs(30)));
    }

    #[test]
    fn only_not_allowed_has_its_own_metrics_label() {
        assert_eq!(BearerError::NotAllowed.label(), "not_allowed");
        for e in [
            BearerError::Malformed,
            BearerError::UnknownKey,
            BearerError::Invalid("x".into()),
            BearerError::Unavailable,
        ] {
            assert_eq!(e.label(), "invalid");
        }
    }

    fn provider(id: &str, allow_bearer: bool) -> Arc<Provider> {
        let text = format!(
            r#"
[session]
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[[upstreams]]
url = "http://127.0.0.1:8080"
[[connections]]
id = "{id}"
issuer = "{ISSUER}/"
client_id = "gatehouse"
client_secret = "secret"
allow_bearer = {allow_bearer}
bearer_audiences = ["{AUDIENCE}"]
"#
        );
        let config = crate::config::parse(&text).unwrap();
        Arc::new(Provider::new(config.connections[0].clone()).unwrap())
    }

    #[test]
    fn the_verifier_keeps_only_connections_that_allow_bearer_tokens() {
        let both = BearerVerifier::new(&[provider("a", true), provider("b", false)]);
        assert!(both.is_enabled());
        assert_eq!(both.sources.len(), 1);
        assert_eq!(both.sources[0].provider.connection.id, "a");
        assert!(!BearerVerifier::new(&[provider("b", false)]).is_enabled());
        assert!(!BearerVerifier::new(&[]).is_enabled());
    }

    #[tokio::test]
    async fn a_token_from_a_connection_without_bearer_access_is_not_allowed() {
        let verifier = BearerVerifier::new(&[provider("b", false)]);
        let result = verifier.verify(&sign(&good_claims())).await;
        assert!(matches!(result, Err(BearerError::NotAllowed)));
    }

    #[tokio::test]
    async fn a_token_from_an_unknown_issuer_is_not_allowed() {
        let verifier = BearerVerifier::new(&[provider("a", true)]);
        let mut claims = good_claims();
        claims["iss"] = json!("https://elsewhere.example");
        let result = verifier.verify(&sign(&claims)).await;
        assert!(matches!(result, Err(BearerError::NotAllowed)));
    }

    #[tokio::test]
    async fn an_undiscovered_issuer_makes_verification_unavailable() {
        let verifier = BearerVerifier::new(&[provider("a", true)]);
        let result = verifier.verify(&sign(&good_claims())).await;
        assert!(matches!(result, Err(BearerError::Unavailable)));
    }

    #[tokio::test]
    async fn the_verifier_refuses_alg_none_and_hmac_before_looking_at_the_issuer() {
        let verifier = BearerVerifier::new(&[]);
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(good_claims().to_string().as_bytes())
        );
        assert!(matches!(
            verifier.verify(&none).await,
            Err(BearerError::Malformed)
        ));
        let hmac = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let token = sign_with(&good_claims(), &hmac, Algorithm::HS256, None);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(BearerError::Invalid(_))
        ));
    }
}
