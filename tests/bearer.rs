//! Bearer-token verification against the real test IdP (`tests/idp`), without the proxy: a
//! client-credentials JWT access token from the IdP is checked by [`BearerVerifier`] built on
//! a discovered [`Provider`], and forgeries of it are refused.

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::get_json;
use gatehouse::auth::bearer::{BearerError, BearerVerifier};
use gatehouse::auth::oidc::{jwt_payload, Provider};
use gatehouse::clock::Clock;
use idp::{client_config, TestIdp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

const CLIENT_ID: &str = "gatehouse";
const CLIENT_SECRET: &str = "gatehouse-secret";
const API: &str = "urn:gatehouse:test-api";

/// A 2048-bit RSA private key, PKCS#1 DER in base64 (`openssl genrsa 2048 | openssl rsa
/// -traditional -outform DER | base64`), made for this test only: the IdP never saw it.
const FOREIGN_RSA_KEY: &str = concat!(
    "MIIEogIBAAKCAQEAlaGYtNvQkSwB89u75cF25G7BTOen+ga2uVdXWElRgaX+jz3TraQONJlLgIvL3BprbD0n5A8qSg",
    "zUTqaiU+3lF8zAM1/AsKDqENrLsyyvtDQ4CUh+a8LqrWNFIiVJLnhCx4nVhpQQOlKeYxbIl0E36K9ccBgT4oXK0VIG",
    "rQXFeb8A1Djh+h8V4i+hdIJehVKcAUBRvmiM4mJPYpsFhS0aeBTxcqqIvNex2yC5o+Ndc8yWe6E2qySgF63GUwQ/uO",
    "nTTlrv6HeFr0J9NlgOdKXX72tGRsPV/FsVLdMYJUWWnpIPrGNtDP5AiGTWenGuZm4lV26rQLzu6OlSgwvepks6XwID",
    "AQABAoIBAAtMVt/9Iwv7IzCbHF52U7he5oici1H1NNHc1vMLIjTkaEq/k96uHwZ4trs/kwaNFiRnn734KSzLODKyIV",
    "quAVjhNHgMmFud4t6f7raaPrAgK0UELMuNPbQW5U71Osff+8beUPmm72y/9UatHztQiNywdQ3fu4ykppJUm71vzJ/r",
    "Hw+tu7NRzR6Y7iDBNcmzAJ8MajmIgXZe3vIwIxUfV1lEcrRnCHqnB1ter+WE6F/8dBNYvL0R5v08dYRDXbkiMWXP4F",
    "YOWb0AnY/No+TwzX9KJ0GuQaEW/k4qlF6IU6hgOxuiWC9m6XfoggbO26QF3HqqK2ZU7tBYmalOgIikYhUCgYEA0ciu",
    "YW7TG5rL22mwAi4TONtQKUc5KLTTVbk4erYHIF7Sj8ABhYmxTp/ldR2AFRIqzBk381M0x59PmnF3Ct81QGmzCGx+0R",
    "kFzRu+lLkLuvPJ99U7nuWnVrQlUXCiRUgMEMoy6wLU8Cc07aZJeCw3l139RcvqVZfHhfEl09qQZ4MCgYEAtphyMaYY",
    "JP1U44U64n0gfHgCqg8c0cfIYd/a9lks778Zdl92I62txaHrP8E+evSqZqDCSnd8lO0AktgDUDD1CAQfAu6aEiChR3",
    "PaphBN6fg1O+6Emo2T7wtQD2+q/X6SBjyRuSyVpja3OFoFlE9LTKJrrS8RzxQrV+rLBR+lDvUCgYBJ0XjzFgE5BHZZ",
    "Zc4mZjojVqDVdZd6aG65Cm0CWQ0W6ebj6Gdgqvv2M7OVS2UnhPYETZdvisbWu4tSSDzgWXyuhsMV4r+ZKlntO6cLRD",
    "YJegGGsMTC/AKvMsKy7pRbFqgQPGZAZgWx38nzGgFeRQjmvY8CwWda6QavbhSmgJExqwKBgEgUj+e3iIp5ktwqCN/F",
    "w2A/Q9X8F0Vc12aDpv1eoJWX26ZV8t4Mvq9oxuQpFdAV63qN9YTN/FkR4gsVyOEMIn5imhdfN2T2ipQZUPQDNa6p8+",
    "HPu3sDbqWL0rP1QgvFvkFGAcSWrBCsQtG0/8TXNINxDo6UKTSU4rNXFYPVRSRNAoGAd0OD7bT7jz/1f2r49JkUWp9S",
    "FisJdn6WgANXf0+37iMZlFtpJUGVMsFvB6Gnz9n6fd9njyawzpuwJKvv6F1U2SrQSWPLBBW858hxF4BmU62WpmuR2V",
    "nfn9DoWa1ydud06BiRH0UPK8jYfm+cf3PMVBRRaCRAa6NOUND+Gga0cFA=",
);

/// A running IdP and a JWT access token it issued to `gatehouse` for the test API.
struct Env {
    idp: TestIdp,
    token: String,
}

async fn start() -> Env {
    let idp = TestIdp::start(serde_json::json!({
        "clients": [client_config(
            CLIENT_ID,
            CLIENT_SECRET,
            vec!["http://127.0.0.1:8080/oauth2/callback".to_string()],
            vec![],
            None,
        )],
    }))
    .await;
    let token = access_token(&idp).await;
    Env { idp, token }
}

/// The client-credentials grant at the token endpoint from the discovery document.
async fn access_token(idp: &TestIdp) -> String {
    let discovery = get_json(&idp.discovery_url()).await;
    let endpoint = discovery["token_endpoint"]
        .as_str()
        .expect("token_endpoint");
    let response = common::client()
        .post(endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", API),
            ("scope", "api"),
        ])
        .send()
        .await
        .expect("token request");
    let status = response.status();
    let body: Value = response.json().await.expect("token response JSON");
    assert_eq!(status, 200, "token endpoint said {body}\n{}", idp.stderr());
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    token.to_string()
}

/// The IdP's published keys.
async fn jwks(idp: &TestIdp) -> Value {
    let discovery = get_json(&idp.discovery_url()).await;
    get_json(discovery["jwks_uri"].as_str().expect("jwks_uri")).await
}

/// A discovered provider for one connection to `idp`, and the verifier built on it.
async fn verifier(idp: &TestIdp, allow_bearer: bool, audiences: &[&str]) -> BearerVerifier {
    let audiences: Vec<String> = audiences.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        r#"
[session]
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[[upstreams]]
url = "http://127.0.0.1:9"
[[connections]]
id = "test"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
allow_bearer = {allow_bearer}
bearer_audiences = [{audiences}]
"#,
        issuer = idp.issuer,
        audiences = audiences.join(", "),
    );
    let config = gatehouse::config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}"));
    let provider = Provider::new(config.connections[0].clone(), Clock::system()).expect("provider");
    provider.discover().await.expect("discovery");
    BearerVerifier::new(&[Arc::new(provider)], Clock::system())
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().expect("header part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn claims_of(token: &str) -> Value {
    Value::Object(jwt_payload(token).expect("payload"))
}

/// The real token's claims, signed again with `alg` and `key` under the real token's `kid`.
fn resigned(token: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = header_of(token)["kid"].as_str().map(str::to_string);
    jsonwebtoken::encode(&header, &claims_of(token), key).expect("sign")
}

fn expect_invalid<T: std::fmt::Debug>(result: Result<T, BearerError>) -> String {
    match result {
        Err(BearerError::Invalid(why)) => why,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The IdP's client-credentials JWT verifies, and the identity is the client: `sub` is the
/// client id and the connection is the one configured.
#[tokio::test]
async fn a_real_access_token_from_the_idp_verifies_as_the_client() {
    let env = start().await;
    assert_eq!(header_of(&env.token)["alg"], "RS256");
    let verifier = verifier(&env.idp, true, &[API]).await;
    assert!(verifier.is_enabled());
    let identity = verifier
        .verify(&env.token)
        .await
        .unwrap_or_else(|e| panic!("{e}\nclaims: {}", claims_of(&env.token)))
        .identity;
    assert_eq!(identity.subject, CLIENT_ID);
    assert_eq!(identity.connection, "test");
}

/// One flipped bit in the signature makes the real token worthless.
#[tokio::test]
async fn the_real_token_with_a_flipped_signature_byte_is_refused() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &[API]).await;
    let (signed, signature) = env.token.rsplit_once('.').expect("three parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    bytes[0] ^= 0x01;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(
        expect_invalid(verifier.verify(&forged).await),
        "InvalidSignature"
    );
}

/// The real claims re-signed RS256 with a key of our own, under the IdP's `kid`, are refused.
#[tokio::test]
async fn the_real_claims_signed_with_another_rsa_key_are_refused() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &[API]).await;
    let der = base64::engine::general_purpose::STANDARD
        .decode(FOREIGN_RSA_KEY)
        .expect("base64");
    let key = EncodingKey::from_rsa_der(&der);
    let forged = resigned(&env.token, Algorithm::RS256, &key);
    assert_eq!(
        expect_invalid(verifier.verify(&forged).await),
        "InvalidSignature"
    );
}

/// A `kid` the IdP does not publish is an unknown key: the JWKS fetched on first use lacks
/// it, and no second fetch is made within 30 s.
#[tokio::test]
async fn a_token_naming_a_kid_the_idp_does_not_publish_is_an_unknown_key() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &[API]).await;
    let der = base64::engine::general_purpose::STANDARD
        .decode(FOREIGN_RSA_KEY)
        .expect("base64");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("not-published".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims_of(&env.token),
        &EncodingKey::from_rsa_der(&der),
    )
    .expect("sign");
    let result = verifier.verify(&forged).await;
    assert!(matches!(result, Err(BearerError::UnknownKey)), "{result:?}");
}

/// The real claims under a hand-built `{"alg":"none"}` header with no signature are refused
/// as malformed.
#[tokio::test]
async fn the_real_claims_with_alg_none_are_refused() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &[API]).await;
    let payload = env.token.split('.').nth(1).expect("payload part");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let result = verifier.verify(&format!("{header}.{payload}.")).await;
    assert!(matches!(result, Err(BearerError::Malformed)), "{result:?}");
}

/// The classic key-confusion forgery: HS256 keyed with the published RSA modulus bytes.
#[tokio::test]
async fn an_hs256_token_keyed_with_the_published_rsa_modulus_is_refused() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &[API]).await;
    let keys = jwks(&env.idp).await;
    let modulus = keys["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == "RSA"))
        .and_then(|k| k["n"].as_str())
        .expect("an RSA key in the JWKS");
    let secret = URL_SAFE_NO_PAD.decode(modulus).expect("base64url");
    let key = EncodingKey::from_secret(&secret).expect("hmac key");
    let forged = resigned(&env.token, Algorithm::HS256, &key);
    assert_eq!(
        expect_invalid(verifier.verify(&forged).await),
        "symmetric algorithm refused"
    );
}

/// A connection with `allow_bearer = false` does not take the IdP's tokens.
#[tokio::test]
async fn a_connection_without_allow_bearer_refuses_the_real_token() {
    let env = start().await;
    let verifier = verifier(&env.idp, false, &[API]).await;
    assert!(!verifier.is_enabled());
    let result = verifier.verify(&env.token).await;
    assert!(matches!(result, Err(BearerError::NotAllowed)), "{result:?}");
    assert_eq!(
        result.err().map(|e| e.label().as_str()),
        Some("not_allowed")
    );
}

/// The real token's audience is not in this connection's `bearer_audiences`.
#[tokio::test]
async fn the_real_token_is_refused_where_its_audience_is_not_accepted() {
    let env = start().await;
    let verifier = verifier(&env.idp, true, &["urn:gatehouse:other-api", CLIENT_ID]).await;
    assert_eq!(
        expect_invalid(verifier.verify(&env.token).await),
        "InvalidAudience"
    );
}

/// Two connections sharing the IdP (same issuer) are told apart by `aud`: a bearer token is
/// taken by the connection whose `bearer_audiences` it names, and a logout token by the
/// connection whose client id it names; a logout token for neither is refused before any
/// key is looked at.
#[tokio::test]
async fn connections_sharing_an_issuer_are_told_apart_by_aud() {
    let env = start().await;
    let text = format!(
        r#"
[session]
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[[upstreams]]
url = "http://127.0.0.1:9"
[[connections]]
id = "first"
issuer = "{issuer}"
client_id = "first-client"
client_secret = "s"
allow_bearer = true
bearer_audiences = ["urn:other-api"]
[[connections]]
id = "second"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "s"
allow_bearer = true
bearer_audiences = ["{API}"]
"#,
        issuer = env.idp.issuer,
    );
    let config = gatehouse::config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}"));
    let mut providers = Vec::new();
    for connection in &config.connections {
        let provider = Provider::new(connection.clone(), Clock::system()).expect("provider");
        provider.discover().await.expect("discovery");
        providers.push(Arc::new(provider));
    }
    let verifier = BearerVerifier::new(&providers, Clock::system());
    let bearer = verifier.verify(&env.token).await.expect("the real token");
    assert_eq!(bearer.identity.connection, "second");

    let logout = gatehouse::auth::logout::LogoutVerifier::new();
    let now = Clock::system().now();
    for (aud, expected) in [
        ("first-client", Some("first")),
        (CLIENT_ID, Some("second")),
        ("third", None),
    ] {
        let claims = serde_json::json!({
            "iss": env.idp.issuer, "aud": aud, "iat": now, "jti": format!("j-{aud}"),
            "sub": "alice",
            "events": { gatehouse::auth::logout::BACKCHANNEL_EVENT: {} },
        });
        let token = env.idp.sign(serde_json::json!({}), claims).await;
        let order = logout.verify(&providers, &token, now).await;
        assert_eq!(
            order.as_ref().ok().map(|o| o.connection.as_str()),
            expected,
            "{aud}: {order:?}"
        );
    }
}
