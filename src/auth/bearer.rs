//! Bearer tokens: JWT access tokens sent in `Authorization: Bearer`, accepted for the
//! connections that say `allow_bearer = true`.
//!
//! A token is tied to its connection by its (not yet verified) `iss` (and, when connections
//! share an issuer, its `aud`), then checked against that IdP's published keys: the
//! connection's one key cache (see [`Provider::newer_keys`]), shared with ID and logout
//! tokens, refetched only for an unknown `kid` and at most every 30 s per connection. Only
//! asymmetric signatures are accepted: never `none`, never an HMAC keyed with something
//! public. The claims must carry `exp`, the discovered issuer and one of the connection's
//! `bearer_audiences`.
//!
//! Tokens are used only for what they are: an ID token (it carries `nonce`) or a logout
//! token (`events`) is no access token, and the `typ` header must be absent, `JWT` or
//! `at+jwt` (only `at+jwt` with `require_at_jwt = true`, RFC 9068). A back-channel logout of
//! a subject refuses its bearer tokens issued before the logout.
//!
//! [`check`] is the pure part (token plus key set in, claims out); [`BearerVerifier`] adds
//! picking the connection, fetching keys and mapping the claims to an [`Identity`].

use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::expiring::Expiring;
use super::oidc::{jwt_payload, Provider};
use crate::clock::Clock;
use crate::identity::claims::identity_from_claims;
use crate::identity::Identity;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;
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
    pub fn label(&self) -> crate::metrics::BearerResult {
        match self {
            BearerError::NotAllowed => crate::metrics::BearerResult::NotAllowed,
            _ => crate::metrics::BearerResult::Invalid,
        }
    }
}

/// A JWKS document's usable signature keys. Keys that do not parse, symmetric keys and keys
/// meant for encryption are left out, so one odd key does not hide the others.
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
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

/// Verifies a token against a connection's cached keys, fetching newer ones (at most every
/// 30 s per connection, see [`Provider::newer_keys`]) only when the token names a key the
/// cache does not hold. Shared by bearer and logout tokens; `now` in unix seconds.
pub async fn verify_with_provider(
    provider: &Provider,
    token: &str,
    audiences: &[String],
    kind: Kind,
    now: u64,
) -> Result<Map<String, Value>, BearerError> {
    let discovered = provider.current().ok_or(BearerError::Unavailable)?;
    match check(
        token,
        &discovered.keys,
        &discovered.issuer,
        audiences,
        kind,
        now,
    ) {
        Err(BearerError::UnknownKey) => {
            let newer = provider
                .newer_keys(&discovered)
                .await
                .ok_or(BearerError::UnknownKey)?;
            check(token, &newer.keys, &newer.issuer, audiences, kind, now)
        }
        other => other,
    }
}

/// Whether a bearer token shows a second factor: an `amr` value from [`SECOND_FACTOR_AMR`],
/// or an `acr` the connection lists in `bearer_mfa_acr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factors {
    One,
    Two,
}

/// `amr` values (RFC 8176 and common practice) that show a second factor was used.
pub const SECOND_FACTOR_AMR: &[&str] = &["mfa", "mca", "otp", "totp", "hwk", "sc", "sms", "tel"];

/// What the token's `acr`/`amr` say about the factors used.
pub fn factors(claims: &Map<String, Value>, mfa_acr: &[String]) -> Factors {
    let amr = claims
        .get("amr")
        .and_then(Value::as_array)
        .is_some_and(|methods| {
            methods
                .iter()
                .filter_map(Value::as_str)
                .any(|m| SECOND_FACTOR_AMR.iter().any(|f| f.eq_ignore_ascii_case(m)))
        });
    let acr = claims
        .get("acr")
        .and_then(Value::as_str)
        .is_some_and(|acr| mfa_acr.iter().any(|a| a == acr));
    if amr || acr {
        Factors::Two
    } else {
        Factors::One
    }
}

/// A verified bearer token: who, and how strongly they signed in.
#[derive(Debug)]
pub struct Bearer {
    pub identity: Identity,
    pub factors: Factors,
}

/// How long a back-channel logout keeps refusing its subject's older bearer tokens; bearer
/// tokens valid for longer than this (`exp` - `iat`) are refused outright, so none outlives
/// the record.
pub const LOGOUT_MEMORY_SECS: u64 = 24 * 3600;
/// At most this many (connection, subject) logout records are kept; the oldest goes first.
pub const LOGOUT_RECORDS: usize = 100_000;

/// Checks bearer tokens for every connection with `allow_bearer = true`.
pub struct BearerVerifier {
    providers: Vec<Arc<Provider>>,
    /// (connection, subject) -> when a back-channel logout ended that subject's sessions.
    logged_out: Mutex<Expiring<(String, String)>>,
    /// `exp`, `nbf` and the logout record are read on it.
    clock: Clock,
}

impl BearerVerifier {
    /// Keeps the providers whose connection allows bearer tokens; the others are ignored.
    pub fn new(providers: &[Arc<Provider>], clock: Clock) -> Self {
        let providers = providers
            .iter()
            .filter(|p| p.connection.allow_bearer)
            .cloned()
            .collect();
        Self {
            providers,
            logged_out: Mutex::new(Expiring::new(LOGOUT_MEMORY_SECS, LOGOUT_RECORDS)),
            clock,
        }
    }

    /// Whether any connection accepts bearer tokens.
    pub fn is_enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    /// A verifier that holds no connection of its own: the login machinery passes each
    /// request's connections (which a config reload may change) to [`Self::verify_among`].
    pub fn for_live_connections(clock: Clock) -> Self {
        Self::new(&[], clock)
    }

    /// Whether any of `providers` accepts bearer tokens.
    pub fn any_enabled(providers: &[Arc<Provider>]) -> bool {
        providers.iter().any(|p| p.connection.allow_bearer)
    }

    /// [`Self::verify`] against `providers` (those with `allow_bearer`) instead of the
    /// verifier's own; the back-channel logout record is the verifier's.
    pub async fn verify_among(
        &self,
        providers: &[Arc<Provider>],
        token: &str,
    ) -> Result<Bearer, BearerError> {
        let header = read_header(token)?;
        allowed_algorithm(header.alg)?;
        let allowed: Vec<&Arc<Provider>> = providers
            .iter()
            .filter(|p| p.connection.allow_bearer)
            .collect();
        let provider = provider_for(&allowed, token)?;
        self.verify_with(provider, token).await
    }

    /// A back-channel logout ended `subject`'s sessions at `at` (unix seconds): from now on
    /// its bearer tokens issued at or before `at` are refused, for [`LOGOUT_MEMORY_SECS`].
    pub fn logged_out(&self, connection: &str, subject: &str, at: u64) {
        if let Ok(mut record) = self.logged_out.lock() {
            record.record((connection.to_string(), subject.to_string()), at);
        }
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) and returns who it is for.
    pub async fn verify(&self, token: &str) -> Result<Bearer, BearerError> {
        let header = read_header(token)?;
        allowed_algorithm(header.alg)?;
        let providers: Vec<&Arc<Provider>> = self.providers.iter().collect();
        let provider = provider_for(&providers, token)?;
        self.verify_with(provider, token).await
    }

    /// Verifies a bearer token of `provider`'s connection.
    async fn verify_with(&self, provider: &Provider, token: &str) -> Result<Bearer, BearerError> {
        let connection = &provider.connection;
        let kind = Kind::Access {
            require_at_jwt: connection.require_at_jwt,
        };
        let now = self.clock.now();
        let claims =
            verify_with_provider(provider, token, &connection.bearer_audiences, kind, now).await?;
        let identity = identity_from_claims(&connection.id, &connection.claims, &claims)
            .ok_or_else(|| BearerError::Invalid("no sub claim".into()))?;
        self.not_logged_out(&connection.id, &identity.subject, &claims, now)?;
        Ok(Bearer {
            identity,
            factors: factors(&claims, &connection.bearer_mfa_acr),
        })
    }

    /// Refuses a token issued (`iat`) at or before a back-channel logout of its subject, or
    /// without `iat` when such a logout is on record.
    fn not_logged_out(
        &self,
        connection: &str,
        subject: &str,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(), BearerError> {
        let key = (connection.to_string(), subject.to_string());
        let logout = self
            .logged_out
            .lock()
            .map_err(|_| BearerError::Unavailable)?
            .get(&key, now);
        match (logout, claims.get("iat").and_then(Value::as_u64)) {
            (None, _) => Ok(()),
            (Some(at), Some(iat)) if iat > at => Ok(()),
            (Some(_), _) => Err(BearerError::Invalid(
                "issued before a back-channel logout of its subject".into(),
            )),
        }
    }
}

/// The connection named by the token's (unverified) `iss`; of several connections with
/// that issuer, the one whose `bearer_audiences` the token's `aud` names.
fn provider_for<'a>(
    providers: &[&'a Arc<Provider>],
    token: &str,
) -> Result<&'a Arc<Provider>, BearerError> {
    let claims = jwt_payload(token).ok_or(BearerError::Malformed)?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(BearerError::NotAllowed)?;
    let mut same_issuer = providers
        .iter()
        .copied()
        .filter(|p| issuer_is(&p.connection.issuer, iss))
        .peekable();
    let first = *same_issuer.peek().ok_or(BearerError::NotAllowed)?;
    Ok(same_issuer
        .find(|p| audience_names_any(&claims, &p.connection.bearer_audiences))
        .unwrap_or(first))
}

/// Whether a configured issuer and a token's `iss` are the same (trailing `/` ignored).
pub fn issuer_is(configured: &str, iss: &str) -> bool {
    configured.trim_end_matches('/') == iss.trim_end_matches('/')
}

/// Whether the (unverified) `aud` of `claims` names one of `audiences`.
pub fn audience_names_any(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

/// What a JWT from the IdP is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bearer access token: `typ` absent, `JWT` or `at+jwt` (only `at+jwt` when
    /// `require_at_jwt`); no `nonce` (an ID token), no `events` (a logout token); `exp`,
    /// `iss`, `aud`, `sub` required, valid for at most [`LOGOUT_MEMORY_SECS`].
    Access { require_at_jwt: bool },
    /// A back-channel logout token (OIDC Back-Channel Logout 1.0 section 2.4): `typ`
    /// absent or `logout+jwt`; `iss`, `aud`, `iat` required, `exp` checked when present;
    /// the logout event, `jti`, no `nonce`, `sid` or `sub` (checked by the logout module).
    Logout,
}

/// A media type as JWT `typ` values carry it: lower case, without `application/`.
fn media_type(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    lower
        .strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(lower)
}

/// The header's `typ` must fit the kind of token.
fn check_typ(typ: Option<&str>, kind: Kind) -> Result<(), BearerError> {
    let typ = typ.map(media_type);
    let fits = match (kind, typ.as_deref()) {
        (Kind::Access { require_at_jwt }, None) => !require_at_jwt,
        (Kind::Access { .. }, Some("at+jwt")) => true,
        (Kind::Access { require_at_jwt }, Some("jwt")) => !require_at_jwt,
        (Kind::Access { .. }, Some(_)) => false,
        (Kind::Logout, None | Some("logout+jwt")) => true,
        (Kind::Logout, Some(_)) => false,
    };
    if fits {
        Ok(())
    } else {
        let what = match kind {
            Kind::Access { .. } => "an access token",
            Kind::Logout => "a logout token",
        };
        Err(BearerError::Invalid(format!(
            "typ {typ:?} is not {what}",
            typ = typ.unwrap_or_default()
        )))
    }
}

/// Claims that mark a token as another kind than the one expected.
fn check_kind_claims(claims: &Map<String, Value>, kind: Kind, now: u64) -> Result<(), BearerError> {
    if claims.contains_key("nonce") {
        return Err(BearerError::Invalid(
            "a token with a nonce is an ID token".into(),
        ));
    }
    if let Kind::Access { .. } = kind {
        if claims.contains_key("events") {
            return Err(BearerError::Invalid(
                "a token with events is a logout token".into(),
            ));
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let start = claims.get("iat").and_then(Value::as_u64).unwrap_or(now);
        if exp.saturating_sub(start) > LOGOUT_MEMORY_SECS {
            return Err(BearerError::Invalid(
                "the token is valid for longer than 24 hours".into(),
            ));
        }
    }
    Ok(())
}

/// Verifies `token` against `jwks`: algorithm, key, signature, `exp`/`nbf` at `now` (unix
/// seconds, from the [`Clock`]), `iss`, `aud` and `azp`. Returns the claims; the caller maps
/// them to an identity.
pub fn check(
    token: &str,
    jwks: &JwkSet,
    expected_issuer: &str,
    audiences: &[String],
    kind: Kind,
    now: u64,
) -> Result<Map<String, Value>, BearerError> {
    let header = read_header(token)?;
    let alg = allowed_algorithm(header.alg)?;
    check_typ(header.typ.as_deref(), kind)?;
    let jwk = find_key(jwks, header.kid.as_deref(), alg)?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| BearerError::Invalid(format!("unusable key: {e}")))?;
    let validation = validation(alg, expected_issuer, audiences, kind);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| BearerError::Invalid(e.to_string()))?
        .claims;
    check_times(&claims, now)?;
    check_kind_claims(&claims, kind, now)?;
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

/// `exp` and `nbf`, when present, at `now` with [`LEEWAY_SECS`] either way; a value that is not
/// a number is refused. (jsonwebtoken would read the system time, so its own time checks are
/// off and these read the [`Clock`]; the error texts are jsonwebtoken's.)
fn check_times(claims: &Map<String, Value>, now: u64) -> Result<(), BearerError> {
    use jsonwebtoken::errors::{Error, ErrorKind};
    let refuse = |kind: ErrorKind| BearerError::Invalid(Error::from(kind).to_string());
    let numeric = |name: &str| match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => numeric_date(v)
            .map(Some)
            .ok_or_else(|| refuse(ErrorKind::InvalidClaimFormat(name.to_string()))),
    };
    if numeric("exp")?.is_some_and(|exp| exp < now.saturating_sub(LEEWAY_SECS)) {
        return Err(refuse(ErrorKind::ExpiredSignature));
    }
    if numeric("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(refuse(ErrorKind::ImmatureSignature));
    }
    Ok(())
}

/// A JWT NumericDate as whole unix seconds: a non-negative integer, or a finite non-negative
/// number with a fraction (dropped).
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// `exp` required (for access tokens); `iss` exact; `aud` one of ours. `exp` and `nbf` are
/// checked against the clock by [`check_times`], not here.
fn validation(
    alg: Algorithm,
    expected_issuer: &str,
    audiences: &[String],
    kind: Kind,
) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = true;
    match kind {
        Kind::Access { .. } => validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]),
        Kind::Logout => validation.set_required_spec_claims(&["iss", "aud"]),
    }
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

    /// The tests' clock reading: far from the system time, so a check that read the system
    /// time instead would fail them.
    const NOW: u64 = 1_900_000_000;

    fn now() -> i64 {
        NOW as i64
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

    const ACCESS: Kind = Kind::Access {
        require_at_jwt: false,
    };

    fn run(token: &str) -> Result<Map<String, Value>, BearerError> {
        check(
            token,
            &published(),
            ISSUER,
            &[AUDIENCE.to_string()],
            ACCESS,
            NOW,
        )
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

    /// `exp` and `nbf` are judged on the clock given, with the leeway either way: accepted up
    /// to the last second, refused one second past it (the token never changes, only `now`).
    #[test]
    fn exp_and_nbf_are_judged_on_the_clock_with_the_leeway() {
        let at = |claims: &Value, now: u64| {
            let token = sign(claims);
            check(
                &token,
                &published(),
                ISSUER,
                &[AUDIENCE.to_string()],
                ACCESS,
                now,
            )
            .map_err(|e| e.to_string())
        };
        let mut expiring = good_claims();
        expiring["exp"] = json!(NOW);
        assert!(at(&expiring, NOW + LEEWAY_SECS).is_ok());
        assert!(at(&expiring, NOW + LEEWAY_SECS + 1)
            .unwrap_err()
            .contains("ExpiredSignature"));
        let mut later = good_claims();
        later["nbf"] = json!(NOW);
        assert!(at(&later, NOW - LEEWAY_SECS).is_ok());
        assert!(at(&later, NOW - LEEWAY_SECS - 1)
            .unwrap_err()
            .contains("ImmatureSignature"));
    }

    /// An `exp` or `nbf` that is no number (a string, a negative, a boolean, an object) is
    /// refused, never skipped.
    #[test]
    fn a_time_claim_that_is_not_a_number_is_refused() {
        for bad in [
            json!("soon"),
            json!(-5),
            json!(true),
            json!({"t": 1}),
            json!([1]),
        ] {
            let mut claims = good_claims();
            claims["nbf"] = bad.clone();
            assert!(run(&sign(&claims)).is_err(), "nbf {bad}");
            let mut claims = good_claims();
            claims["exp"] = bad.clone();
            assert!(run(&sign(&claims)).is_err(), "exp {bad}");
        }
        let mut claims = good_claims();
        claims["exp"] = json!(NOW as f64 + 0.5);
        assert!(run(&sign(&claims)).is_ok(), "a fractional exp is a number");
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
        let result = check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()], ACCESS, NOW);
        assert!(matches!(result, Err(BearerError::UnknownKey)));
    }

    #[test]
    fn an_es256_token_verifies_with_an_ec_key() {
        let key = EncodingKey::from_ec_der(&der(P256));
        let jwks = JwkSet {
            keys: vec![public_jwk(&key, Algorithm::ES256, "ec-1")],
        };
        let token = sign_with(&good_claims(), &key, Algorithm::ES256, Some("ec-1"));
        assert!(check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()], ACCESS, NOW).is_ok());
    }

    #[test]
    fn a_key_of_the_wrong_type_for_the_algorithm_is_refused() {
        let ec = EncodingKey::from_ec_der(&der(P256));
        let mut ec_jwk = public_jwk(&ec, Algorithm::ES256, KID);
        ec_jwk.common.key_algorithm = None;
        let jwks = JwkSet { keys: vec![ec_jwk] };
        let token = sign(&good_claims());
        let result = check(&token, &jwks, ISSUER, &[AUDIENCE.to_string()], ACCESS, NOW);
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
            ACCESS,
            NOW,
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
    fn only_not_allowed_has_its_own_metrics_label() {
        assert_eq!(BearerError::NotAllowed.label().as_str(), "not_allowed");
        for e in [
            BearerError::Malformed,
            BearerError::UnknownKey,
            BearerError::Invalid("x".into()),
            BearerError::Unavailable,
        ] {
            assert_eq!(e.label().as_str(), "invalid");
        }
    }

    fn sign_typ(claims: &Value, typ: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KID.to_string());
        header.typ = typ.map(str::to_string);
        encode(&header, claims, &ed_key(ED25519_A)).unwrap()
    }

    fn run_as(token: &str, kind: Kind) -> Result<Map<String, Value>, BearerError> {
        check(
            token,
            &published(),
            ISSUER,
            &[AUDIENCE.to_string()],
            kind,
            NOW,
        )
    }

    const AT_JWT_ONLY: Kind = Kind::Access {
        require_at_jwt: true,
    };

    /// An ID token (it carries `nonce`) is never an access token, whatever else it holds.
    #[test]
    fn a_token_with_a_nonce_is_refused_as_an_id_token() {
        for nonce in [json!("n-1"), json!(""), json!(null), json!(0), json!({})] {
            let mut claims = good_claims();
            claims["nonce"] = nonce.clone();
            let why = refused_as_invalid(&sign(&claims));
            assert!(why.contains("ID token"), "{nonce}: {why}");
        }
    }

    /// A logout token (`events`) is no access token either.
    #[test]
    fn a_token_with_events_is_refused_as_a_logout_token() {
        let mut claims = good_claims();
        claims["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
        assert!(refused_as_invalid(&sign(&claims)).contains("logout token"));
    }

    /// Access tokens valid for more than a day are refused: none outlives the logout record.
    #[test]
    fn a_token_valid_for_more_than_a_day_is_refused() {
        let mut claims = good_claims();
        claims["exp"] = json!(now() + LOGOUT_MEMORY_SECS as i64 + 60);
        assert!(refused_as_invalid(&sign(&claims)).contains("24 hours"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Every spelling of `typ`: only JWT and at+jwt (any case, with or without
        /// `application/`) pass as access tokens, only at+jwt with `require_at_jwt`, and
        /// only logout+jwt as logout tokens.
        #[test]
        fn only_access_token_types_pass_as_access_tokens(
            prefix in "(?i:(application/)?)",
            base in "(?i:(at\\+jwt|jwt|logout\\+jwt|id_token\\+jwt|jose|secevent\\+jwt|at\\+jwt2|at jwt|atjwt|)) ?",
        ) {
            let typ = format!("{prefix}{base}");
            let token = sign_typ(&good_claims(), Some(&typ));
            let normal = typ.trim().to_ascii_lowercase();
            let normal = normal.strip_prefix("application/").unwrap_or(&normal);
            let access_ok = matches!(normal, "at+jwt" | "jwt");
            proptest::prop_assert_eq!(run_as(&token, ACCESS).is_ok(), access_ok, "{:?}", typ);
            proptest::prop_assert_eq!(run_as(&token, AT_JWT_ONLY).is_ok(), normal == "at+jwt", "{:?}", typ);
            let logout = check_typ(Some(&typ), Kind::Logout).is_ok();
            proptest::prop_assert_eq!(logout, normal == "logout+jwt", "{:?}", typ);
        }

        /// Any claims with a `nonce` key are refused, whatever the other claims are.
        #[test]
        fn any_token_with_a_nonce_is_refused(
            nonce in proptest::prelude::any::<String>(),
            typ in proptest::option::of("(at\\+jwt|JWT|application/at\\+jwt)"),
        ) {
            let mut claims = good_claims();
            claims["nonce"] = json!(nonce);
            let token = sign_typ(&claims, typ.as_deref());
            proptest::prop_assert!(run_as(&token, ACCESS).is_err());
        }
    }

    #[test]
    fn without_typ_a_token_passes_unless_at_jwt_is_required() {
        let token = sign_typ(&good_claims(), None);
        assert!(run_as(&token, ACCESS).is_ok());
        assert!(run_as(&token, AT_JWT_ONLY).is_err());
    }

    #[test]
    fn a_second_factor_shows_in_amr_or_a_listed_acr() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let acr = ["urn:mfa".to_string()];
        assert_eq!(factors(&claims(json!({})), &acr), Factors::One);
        assert_eq!(
            factors(&claims(json!({"amr": ["pwd"]})), &acr),
            Factors::One
        );
        assert_eq!(factors(&claims(json!({"amr": "mfa"})), &acr), Factors::One);
        assert_eq!(
            factors(&claims(json!({"acr": "urn:other"})), &acr),
            Factors::One
        );
        for method in SECOND_FACTOR_AMR {
            let c = claims(json!({"amr": ["pwd", method.to_uppercase()]}));
            assert_eq!(factors(&c, &[]), Factors::Two, "{method}");
        }
        assert_eq!(
            factors(&claims(json!({"acr": "urn:mfa"})), &acr),
            Factors::Two
        );
        assert_eq!(
            factors(&claims(json!({"acr": "urn:mfa"})), &[]),
            Factors::One
        );
    }

    /// After a back-channel logout of a subject, its tokens issued at or before the logout
    /// (or without `iat`) are refused; later ones, and other subjects', pass.
    #[test]
    fn a_logout_refuses_the_subjects_older_tokens_only() {
        let verifier = BearerVerifier::new(&[], Clock::manual(NOW));
        let at = NOW;
        verifier.logged_out("c", "alice", at);
        let claims = |iat: Option<u64>| {
            let mut c = Map::new();
            if let Some(iat) = iat {
                c.insert("iat".into(), json!(iat));
            }
            c
        };
        for iat in [None, Some(0), Some(at - 3600), Some(at)] {
            assert!(
                verifier
                    .not_logged_out("c", "alice", &claims(iat), NOW)
                    .is_err(),
                "{iat:?}"
            );
        }
        assert!(verifier
            .not_logged_out("c", "alice", &claims(Some(at + 1)), NOW)
            .is_ok());
        assert!(verifier
            .not_logged_out("c", "bob", &claims(Some(0)), NOW)
            .is_ok());
        assert!(verifier
            .not_logged_out("other", "alice", &claims(Some(0)), NOW)
            .is_ok());
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
        Arc::new(Provider::new(config.connections[0].clone(), Clock::manual(NOW)).unwrap())
    }

    #[test]
    fn the_verifier_keeps_only_connections_that_allow_bearer_tokens() {
        let both = BearerVerifier::new(
            &[provider("a", true), provider("b", false)],
            Clock::manual(NOW),
        );
        assert!(both.is_enabled());
        assert_eq!(both.providers.len(), 1);
        assert_eq!(both.providers[0].connection.id, "a");
        assert!(!BearerVerifier::new(&[provider("b", false)], Clock::manual(NOW)).is_enabled());
        assert!(!BearerVerifier::new(&[], Clock::manual(NOW)).is_enabled());
    }

    #[tokio::test]
    async fn a_token_from_a_connection_without_bearer_access_is_not_allowed() {
        let verifier = BearerVerifier::new(&[provider("b", false)], Clock::manual(NOW));
        let result = verifier.verify(&sign(&good_claims())).await;
        assert!(matches!(result, Err(BearerError::NotAllowed)));
    }

    #[tokio::test]
    async fn a_token_from_an_unknown_issuer_is_not_allowed() {
        let verifier = BearerVerifier::new(&[provider("a", true)], Clock::manual(NOW));
        let mut claims = good_claims();
        claims["iss"] = json!("https://elsewhere.example");
        let result = verifier.verify(&sign(&claims)).await;
        assert!(matches!(result, Err(BearerError::NotAllowed)));
    }

    #[tokio::test]
    async fn an_undiscovered_issuer_makes_verification_unavailable() {
        let verifier = BearerVerifier::new(&[provider("a", true)], Clock::manual(NOW));
        let result = verifier.verify(&sign(&good_claims())).await;
        assert!(matches!(result, Err(BearerError::Unavailable)));
    }

    #[tokio::test]
    async fn the_verifier_refuses_alg_none_and_hmac_before_looking_at_the_issuer() {
        let verifier = BearerVerifier::new(&[], Clock::manual(NOW));
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
