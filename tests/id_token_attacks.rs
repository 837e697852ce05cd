//! Hostile ID tokens at `/oauth2/callback`.
//!
//! The real test OP (oidc-provider) only ever mints good tokens, so this file runs its own
//! *malicious* OpenID provider: a small axum app on loopback whose token endpoint answers with
//! whatever kind of ID token the test asks for (forged, expired, for someone else, unsigned,
//! ...). Gatehouse sits in front of the echo app with one connection, `evil`, to it. Every bad
//! token must end in a 4xx page (never a 500, never a session), counted in
//! `gatehouse_logins_total{connection="evil",result=...}`.

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use common::{config_text, start_echo, start_with, Harness};
use idp::Browser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

// ------------------------------------------------------------------- keys --
// Two P-256 key pairs made once with
//   openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt
// x and y are the two 32-byte halves of the uncompressed public point, base64url.
// They protect nothing but these tests.

/// The provider's real signing key, published in its JWKS under kid `good`.
const GOOD_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTyPKB9dt2db6iARj
+1WT15p/qLqWQLqyyIj6F1Jo2+GhRANCAAQLNYCQQHnw/rh8AFox1mtNMnBU+WOi
ffo7XZ65oqpZ5yNA5lKfQ1tWGmej9wDfxoBPe4kJRZTJICRFHTjFHszM
-----END PRIVATE KEY-----
";
/// The public half of [`GOOD_KEY_PEM`] (SubjectPublicKeyInfo), the classic HMAC-confusion
/// "secret".
const GOOD_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAECzWAkEB58P64fABaMdZrTTJwVPlj
on36O12euaKqWecjQOZSn0NbVhpno/cA38aAT3uJCUWUySAkRR04xR7MzA==
-----END PUBLIC KEY-----
";
const GOOD_X: &str = "CzWAkEB58P64fABaMdZrTTJwVPljon36O12euaKqWec";
const GOOD_Y: &str = "I0DmUp9DW1YaZ6P3AN_GgE97iQlFlMkgJEUdOMUezMw";

/// A key the provider never publishes: what an attacker holding their own key signs with.
const OTHER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9WBYwcsO+uSQTgGb
+ybu22tg1q9da6wUZjeDsZszFSOhRANCAAQ/hxoQE6ZxnEcTZd49IwGZ+7RlIBrY
w6FPdCNzmjE6+oE32TvgnoRMPIzHLHc1syinT9VUizLkZys4dJ9+pjzu
-----END PRIVATE KEY-----
";

const CLIENT_ID: &str = "gatehouse";
const CLIENT_SECRET: &str = "x";
/// A valid session key for Gatehouse (32 bytes, base64).
const SESSION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The DER bytes inside a PEM block (the `use_pem` feature of jsonwebtoken is not enabled).
fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An ES256 JWT signed with `key_pem` and carrying `kid` in its header.
fn sign_es256(key_pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let key = EncodingKey::from_ec_der(&pem_to_der(key_pem));
    jsonwebtoken::encode(&header, claims, &key).expect("sign ES256")
}

/// An HS256 JWT whose HMAC secret is `secret`.
fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    let key = EncodingKey::from_secret(secret).expect("HMAC key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign HS256")
}

/// An unsecured JWT: header `{"alg":"none"}` and an empty signature.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

// ----------------------------------------------------- the malicious OP --

/// What the provider will do at the next token request, and what it saw.
#[derive(Default)]
struct OpState {
    /// The kind of ID token to hand out (see [`id_token_for`]).
    mode: String,
    /// The `nonce` of the latest authorization request.
    nonce: String,
    /// How many token requests arrived (proves Gatehouse got as far as the exchange).
    token_requests: usize,
    /// The kind of ID token a refresh hands out.
    refresh_mode: String,
    /// How many refresh requests arrived.
    refreshes: usize,
}

#[derive(Clone)]
struct EvilOp {
    issuer: String,
    state: Arc<Mutex<OpState>>,
}

impl EvilOp {
    /// Binds 127.0.0.1:0 and serves discovery, JWKS, authorize and token.
    async fn start() -> EvilOp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind evil op");
        let addr = listener.local_addr().expect("evil op addr");
        let op = EvilOp {
            issuer: format!("http://{addr}"),
            state: Arc::new(Mutex::new(OpState {
                mode: "good".into(),
                ..OpState::default()
            })),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(op.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve evil op") });
        op
    }

    fn set_mode(&self, mode: &str) {
        self.state.lock().unwrap().mode = mode.to_string();
    }

    fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    fn set_refresh_mode(&self, mode: &str) {
        self.state.lock().unwrap().refresh_mode = mode.to_string();
    }

    fn refreshes(&self) -> usize {
        self.state.lock().unwrap().refreshes
    }
}

/// Every field openidconnect 4.1's `ProviderMetadata` requires (issuer,
/// authorization_endpoint, jwks_uri, response_types_supported, subject_types_supported,
/// id_token_signing_alg_values_supported), plus the token endpoint the code flow needs.
async fn discovery(State(op): State<EvilOp>) -> Json<Value> {
    let iss = &op.issuer;
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": ["openid", "email", "profile"],
        "grant_types_supported": ["authorization_code"],
    }))
}

/// The one published key: the good one.
async fn jwks() -> Json<Value> {
    Json(json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": GOOD_X,
            "y": GOOD_Y,
            "kid": "good",
            "use": "sig",
            "alg": "ES256",
        }]
    }))
}

/// No login page: straight back to the relying party with `code=<mode>` and the state.
async fn authorize(
    State(op): State<EvilOp>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(redirect_uri) = query.get("redirect_uri") else {
        return (StatusCode::BAD_REQUEST, "no redirect_uri").into_response();
    };
    let Ok(mut back) = reqwest::Url::parse(redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    let mode = {
        let mut state = op.state.lock().unwrap();
        state.nonce = query.get("nonce").cloned().unwrap_or_default();
        state.mode.clone()
    };
    back.query_pairs_mut()
        .append_pair("code", &mode)
        .append_pair("state", query.get("state").map_or("", String::as_str));
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

/// Answers any code with tokens; the ID token is shaped by the code (the mode).
async fn token(State(op): State<EvilOp>, Form(form): Form<HashMap<String, String>>) -> Response {
    let (nonce, refresh_mode) = {
        let mut state = op.state.lock().unwrap();
        state.token_requests += 1;
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            state.refreshes += 1;
        }
        (state.nonce.clone(), state.refresh_mode.clone())
    };
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        // Every refresh: an access token that is already due, and the refresh mode's ID token.
        let mut body = json!({
            "access_token": "at-refreshed",
            "token_type": "Bearer",
            "expires_in": 0,
            "refresh_token": "rt-2",
        });
        if let Some(id_token) = id_token_for(&refresh_mode, &op.issuer, &nonce) {
            body["id_token"] = id_token.into();
        }
        return Json(body).into_response();
    }
    let mode = form.get("code").cloned().unwrap_or_default();
    if mode == "good_short" {
        // A good login whose access token is due at once, with a refresh token: the next
        // request refreshes.
        let mut body = json!({
            "access_token": "at-short",
            "token_type": "Bearer",
            "expires_in": 0,
            "refresh_token": "rt-1",
        });
        body["id_token"] = id_token_for("good", &op.issuer, &nonce).into();
        return Json(body).into_response();
    }
    match mode.as_str() {
        "token_error" => {
            let error = json!({"error": "invalid_grant", "error_description": "no such code"});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        "id_token_not_a_jwt" | "id_token_payload_not_json" => {
            let id_token = if mode == "id_token_not_a_jwt" {
                "this-is-not-a-jwt".to_string()
            } else {
                format!(
                    "{}.{}.{}",
                    b64url(br#"{"alg":"ES256","kid":"good"}"#),
                    b64url(b"not json at all"),
                    b64url(b"sig")
                )
            };
            return Json(json!({
                "access_token": "at",
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }))
            .into_response();
        }
        _ => {}
    }
    let mut body = json!({
        "access_token": format!("at-{mode}"),
        "token_type": "Bearer",
        "expires_in": 300,
    });
    if let Some(id_token) = id_token_for(&mode, &op.issuer, &nonce) {
        body["id_token"] = id_token.into();
    }
    Json(body).into_response()
}

/// The claims of a token that should be accepted.
fn good_claims(issuer: &str, nonce: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": issuer,
        "aud": CLIENT_ID,
        "sub": "eve-1",
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        "email": "eve@evil.example",
        "email_verified": true,
        "preferred_username": "eve",
    })
}

/// The ID token the provider hands out in `mode`; `None` for no ID token at all.
fn id_token_for(mode: &str, issuer: &str, nonce: &str) -> Option<String> {
    let now = unix_now();
    let mut claims = good_claims(issuer, nonce);
    let good_signed = |claims: &Value| sign_es256(GOOD_KEY_PEM, "good", claims);
    let token = match mode {
        "good" => good_signed(&claims),
        "wrong_nonce" => {
            claims["nonce"] = "not-the-nonce-gatehouse-sent".into();
            good_signed(&claims)
        }
        "no_nonce" => {
            claims.as_object_mut().unwrap().remove("nonce");
            good_signed(&claims)
        }
        "wrong_aud" => {
            claims["aud"] = "someone-else".into();
            good_signed(&claims)
        }
        "expired" => {
            claims["iat"] = (now - 1200).into();
            claims["exp"] = (now - 600).into();
            good_signed(&claims)
        }
        "alg_none" => unsigned(&claims),
        "hs256_public_key" => sign_hs256(GOOD_PUBLIC_PEM.as_bytes(), Some("good"), &claims),
        "hs256_client_secret" => sign_hs256(CLIENT_SECRET.as_bytes(), None, &claims),
        "unknown_kid" => sign_es256(OTHER_KEY_PEM, "other", &claims),
        "wrong_key" => sign_es256(OTHER_KEY_PEM, "good", &claims),
        "wrong_issuer" => {
            claims["iss"] = "https://idp.evil.example".into();
            good_signed(&claims)
        }
        "future_iat" => {
            claims["iat"] = (now + 3600).into();
            claims["exp"] = (now + 3900).into();
            good_signed(&claims)
        }
        "foreign_azp" => {
            claims["aud"] = json!([CLIENT_ID, "someone-else"]);
            claims["azp"] = "someone-else".into();
            good_signed(&claims)
        }
        "azp_single_aud" => {
            claims["azp"] = "someone-else".into();
            good_signed(&claims)
        }
        "tampered_payload" => {
            // A good signature over the real claims, then the payload swapped for one that
            // says somebody else.
            let token = good_signed(&claims);
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            claims["sub"] = "admin".into();
            claims["preferred_username"] = "admin".into();
            parts[1] = b64url(claims.to_string().as_bytes());
            parts.join(".")
        }
        "other_sub" => {
            claims["sub"] = "mallory-2".into();
            good_signed(&claims)
        }
        "no_id_token" => return None,
        other => panic!("the evil OP has no mode {other:?}"),
    };
    Some(token)
}

// ------------------------------------------------------- the environment --

struct Env {
    op: EvilOp,
    gh: Harness,
    _data: tempfile::TempDir,
}

/// The malicious OP plus a Gatehouse (echo app upstream) with one connection `evil` to it,
/// once Gatehouse has discovered the OP.
async fn env() -> Env {
    let op = EvilOp::start().await;
    let upstream = start_echo().await;
    let data = tempfile::tempdir().expect("data dir");
    let extra = format!(
        r#"
[store]
data_dir = "{data}"

[session]
cookie_secure = false
keys = ["{SESSION_KEY}"]

[[connections]]
id = "evil"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
"#,
        data = data.path().display(),
        issuer = op.issuer,
    );
    let text = config_text(upstream.addr, &extra);
    let gh = start_with(upstream, &text);
    gh.wait_ready().await;
    Env {
        op,
        gh,
        _data: data,
    }
}

fn login_metric(result: &str) -> String {
    format!("gatehouse_logins_total{{connection=\"evil\",result=\"{result}\"}}")
}

/// Whether a cookie name is Gatehouse's session cookie (or one of its chunks), as opposed to
/// a `_gatehouse_login_*` cookie.
fn is_session_cookie_name(name: &str) -> bool {
    name == "_gatehouse"
        || name
            .strip_prefix("_gatehouse_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Session cookies among `Set-Cookie` values that set something (not those clearing one).
fn session_cookies_set(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| {
            let (name, rest) = c.split_once('=').unwrap_or((c, ""));
            let value = rest.split(';').next().unwrap_or("");
            is_session_cookie_name(name.trim()) && !value.is_empty()
        })
        .map(str::to_string)
        .collect()
}

/// Whether the browser holds a session cookie for Gatehouse.
fn browser_has_session(browser: &Browser, gh: &Harness) -> bool {
    browser
        .cookie_header(&gh.url("/"))
        .unwrap_or_default()
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, _)| is_session_cookie_name(name))
}

/// The status of `/private` for an API client using this browser's cookies.
async fn private_status(browser: &Browser, gh: &Harness) -> u16 {
    browser
        .client()
        .get(gh.url("/private"))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .expect("GET /private")
        .status()
        .as_u16()
}

// ------------------------------------------------------------------ tests --

/// The malicious OP is a working OP when it behaves: its well-formed, correctly signed token
/// logs the user in and the app sees who they are. So every refusal below is caused by the
/// one defect that row introduces, not by a broken test provider.
#[tokio::test]
async fn a_good_token_from_the_test_provider_logs_the_user_in() {
    let env = env().await;
    env.op.set_mode("good");
    let browser = Browser::new();
    let journey = browser
        .follow(&env.gh.url("/oauth2/start?rd=/x"), None)
        .await;
    assert_eq!(journey.status, 200, "{:?}\n{}", journey.hops, journey.body);
    assert!(
        journey
            .hops
            .iter()
            .any(|(_, u)| u.starts_with(&format!("{}/authorize", env.op.issuer))),
        "never went to the provider: {:?}",
        journey.hops
    );
    let echo: Value = serde_json::from_str(&journey.body)
        .unwrap_or_else(|e| panic!("not the echo app ({e}): {}", journey.body));
    assert_eq!(echo["path"], "/x");
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "eve");
    assert_eq!(
        echo["headers"]["x-auth-request-email"][0],
        "eve@evil.example"
    );
    assert_eq!(echo["headers"]["x-gatehouse-connection"][0], "evil");
    assert!(browser_has_session(&browser, &env.gh));
    assert_eq!(private_status(&browser, &env.gh).await, 200);
    assert_eq!(env.op.token_requests(), 1);
    assert_eq!(
        env.gh.metric_reaching(&login_metric("success"), 1.0).await,
        1.0
    );
    assert_eq!(env.gh.metric(&login_metric("token_invalid")).await, 0.0);
}

/// One kind of hostile answer from the token endpoint.
struct Attack {
    mode: &'static str,
    /// What Gatehouse must not be fooled by.
    what: &'static str,
}

const ATTACKS: &[Attack] = &[
    Attack {
        mode: "wrong_nonce",
        what: "a token minted for another login (nonce mismatch: replay/injection)",
    },
    Attack {
        mode: "no_nonce",
        what: "a token without the nonce Gatehouse asked for",
    },
    Attack {
        mode: "wrong_aud",
        what: "a token issued to another client",
    },
    Attack {
        mode: "expired",
        what: "a token that expired ten minutes ago",
    },
    Attack {
        mode: "alg_none",
        what: "an unsigned token (alg none, empty signature)",
    },
    Attack {
        mode: "hs256_public_key",
        what: "HS256 keyed with the provider's public key (algorithm confusion)",
    },
    Attack {
        mode: "hs256_client_secret",
        what: "HS256 keyed with the client secret (HMAC algorithms are not allowed)",
    },
    Attack {
        mode: "unknown_kid",
        what: "a token signed with a key the provider never published",
    },
    Attack {
        mode: "wrong_key",
        what: "a token signed with another key but claiming the published kid",
    },
    Attack {
        mode: "tampered_payload",
        what: "a good signature over a payload that was swapped afterwards",
    },
    Attack {
        mode: "wrong_issuer",
        what: "a token from another issuer",
    },
    Attack {
        mode: "future_iat",
        what: "a token issued an hour in the future",
    },
    Attack {
        mode: "foreign_azp",
        what: "a token whose authorized party is another client",
    },
    Attack {
        mode: "azp_single_aud",
        what: "a token for this client whose authorized party is another client",
    },
    Attack {
        mode: "no_id_token",
        what: "a token response without an ID token",
    },
];

/// Every hostile ID token (forged signature, wrong algorithm, unknown key, wrong nonce,
/// audience, issuer or authorized party, expired, issued in the future, or missing) is refused
/// at the callback with 401 and a page, never a 500: no session cookie is set, the browser is
/// still anonymous afterwards, and each refusal is counted as `token_invalid` for `evil`.
/// The same Gatehouse still accepts a good token at the end.
#[tokio::test]
async fn every_hostile_id_token_is_refused_with_401_and_no_session() {
    let env = env().await;
    let callback_prefix = env.gh.url("/oauth2/callback");
    let mut problems: Vec<String> = Vec::new();

    for attack in ATTACKS {
        env.op.set_mode(attack.mode);
        let requests_before = env.op.token_requests();
        let counted_before = env.gh.metric(&login_metric("token_invalid")).await;
        let browser = Browser::new();
        let journey = browser
            .follow(&env.gh.url("/oauth2/start?rd=/x"), None)
            .await;
        let mut problem = |text: String| {
            problems.push(format!("{} ({}): {text}", attack.mode, attack.what));
        };

        if env.op.token_requests() != requests_before + 1 {
            problem(format!(
                "Gatehouse did not call the token endpoint exactly once: {:?}",
                journey.hops
            ));
        }
        let last_url = journey.hops.last().map(|(_, u)| u.as_str()).unwrap_or("");
        // Above all not 200 (accepted) and not 500 (crashed): exactly the 401 refusal.
        if journey.status != 401 {
            problem(format!(
                "the journey ended with {} at {last_url} (want 401 at the callback); hops {:?}; body {}",
                journey.status, journey.hops, journey.body
            ));
        } else if !last_url.starts_with(&callback_prefix) {
            problem(format!(
                "the 401 did not come from the callback but from {last_url}: {:?}",
                journey.hops
            ));
        }
        if !journey.body.contains("Sign in again") {
            problem(format!(
                "the refusal is not Gatehouse's sign-in-failed page: {}",
                journey.body
            ));
        }
        let set = session_cookies_set(&journey.headers);
        if !set.is_empty() {
            problem(format!("a session cookie was set: {set:?}"));
        }
        if browser_has_session(&browser, &env.gh) {
            problem(format!(
                "the browser holds a session cookie: {:?}",
                browser.cookie_header(&env.gh.url("/"))
            ));
        }
        let private = private_status(&browser, &env.gh).await;
        if private != 401 {
            problem(format!("/private answered {private} afterwards (want 401)"));
        }
        // Metrics may show up a moment after the response: wait for the count.
        let counted = env
            .gh
            .metric_reaching(&login_metric("token_invalid"), counted_before + 1.0)
            .await;
        if counted != counted_before + 1.0 {
            problem(format!(
                "token_invalid went from {counted_before} to {counted} (want +1)"
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "Gatehouse mishandled hostile ID tokens:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(
        env.gh.metric(&login_metric("token_invalid")).await,
        ATTACKS.len() as f64
    );
    for result in ["success", "exchange_failed", "state_invalid", "store_error"] {
        assert_eq!(
            env.gh.metric(&login_metric(result)).await,
            0.0,
            "{result} counted during the attacks"
        );
    }

    // Control: the same Gatehouse and provider still complete a good login.
    env.op.set_mode("good");
    let browser = Browser::new();
    let journey = browser
        .follow(&env.gh.url("/oauth2/start?rd=/x"), None)
        .await;
    assert_eq!(journey.status, 200, "{:?}\n{}", journey.hops, journey.body);
    assert!(browser_has_session(&browser, &env.gh));
    assert_eq!(
        env.gh.metric_reaching(&login_metric("success"), 1.0).await,
        1.0
    );
}

/// A token endpoint whose answer cannot be used at all (an OAuth error, an ID token that is
/// not a JWT, a JWT whose payload is not JSON) ends the login as an exchange failure or an
/// invalid token: a 4xx/502 page, never a 500 and never a session, and counted.
#[tokio::test]
async fn an_unusable_token_response_fails_the_login_without_a_500() {
    let env = env().await;
    // (mode, status, counted result)
    let cases = [
        ("token_error", 502, "exchange_failed"),
        ("id_token_not_a_jwt", 502, "exchange_failed"),
        ("id_token_payload_not_json", 502, "exchange_failed"),
    ];
    let mut problems: Vec<String> = Vec::new();
    for (mode, want_status, want_result) in cases {
        env.op.set_mode(mode);
        let before = env.gh.metric(&login_metric(want_result)).await;
        let browser = Browser::new();
        let journey = browser
            .follow(&env.gh.url("/oauth2/start?rd=/x"), None)
            .await;
        let last_url = journey
            .hops
            .last()
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        if journey.status != want_status || !last_url.starts_with(&env.gh.url("/oauth2/callback")) {
            problems.push(format!(
                "{mode}: ended with {} at {last_url} (want {want_status} at the callback); hops {:?}",
                journey.status, journey.hops
            ));
        }
        let set = session_cookies_set(&journey.headers);
        if !set.is_empty() || browser_has_session(&browser, &env.gh) {
            problems.push(format!("{mode}: a session cookie was set: {set:?}"));
        }
        let private = private_status(&browser, &env.gh).await;
        if private != 401 {
            problems.push(format!("{mode}: /private answered {private} afterwards"));
        }
        let counted = env
            .gh
            .metric_reaching(&login_metric(want_result), before + 1.0)
            .await;
        if counted != before + 1.0 {
            problems.push(format!(
                "{mode}: {want_result} went from {before} to {counted}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(env.gh.metric(&login_metric("success")).await, 0.0);
}

/// A refresh that returns an ID token is verified like the login's: every hostile refreshed
/// ID token (forged or unknown key, alg none or HMAC, wrong audience or issuer, expired,
/// issued in the future, foreign azp, tampered, or for another subject) ends the session;
/// a good one, or none, keeps it.
#[tokio::test]
async fn every_hostile_refreshed_id_token_ends_the_session() {
    let env = env().await;
    let modes = [
        ("good", 200),
        ("no_id_token", 200),
        ("other_sub", 401),
        ("wrong_aud", 401),
        ("expired", 401),
        ("alg_none", 401),
        ("hs256_public_key", 401),
        ("hs256_client_secret", 401),
        ("unknown_kid", 401),
        ("wrong_key", 401),
        ("tampered_payload", 401),
        ("wrong_issuer", 401),
        ("future_iat", 401),
        ("foreign_azp", 401),
    ];
    let mut problems = Vec::new();
    for (mode, expected) in modes {
        env.op.set_mode("good_short");
        env.op.set_refresh_mode(mode);
        let browser = Browser::new();
        let journey = browser
            .follow_until(&env.gh.url("/oauth2/start?rd=/x"), None, |u| {
                u.path() == "/x"
            })
            .await;
        let before = env.op.refreshes();
        let status = private_status(&browser, &env.gh).await;
        if env.op.refreshes() == before {
            problems.push(format!("{mode}: no refresh happened ({:?})", journey.hops));
        }
        if status != expected {
            problems.push(format!(
                "{mode}: /private answered {status}, expected {expected}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
