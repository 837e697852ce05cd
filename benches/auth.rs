//! Per-request authentication costs: opening and checking a session cookie (sealed cookie +
//! in-memory session cache over a real redb file) and verifying a bearer JWT (EdDSA).
//! Run with `cargo bench --bench auth`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;

use gatehouse::auth::bearer::check;
use gatehouse::auth::session::{Lookup, Sessions};
use gatehouse::clock::Clock;
use gatehouse::config::model::{Session, SessionKeys};
use gatehouse::identity::Identity;
use gatehouse::seal::Sealer;
use gatehouse::store::sessions::Tokens;
use gatehouse::store::Store;

/// A throwaway Ed25519 key made for this bench (never used anywhere else).
const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEID6+i/YfaIQDNd9jIIdO0NfXRHViEmkv8KuNIUINNdBd\n-----END PRIVATE KEY-----\n";
const ED25519_X: &str = "CHAYhkkEBeICa7gZMYiyCFpi5AI14MLxMBXHDvDDM44";

fn session_cookie(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let config = Session {
        cookie_name: "_gatehouse".into(),
        host_prefix: false,
        cookie_domain: None,
        cookie_path: "/".into(),
        cookie_secure: true,
        keys: SessionKeys(None),
        lifetime: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
        login_timeout: Duration::from_secs(600),
    };
    let sessions = Sessions::new(
        config,
        Sealer::new(vec![[9; 32]]).expect("sealer"),
        store,
        Clock::system(),
    )
    .expect("sessions");
    let identity = Identity {
        connection: "corp".into(),
        subject: "248289761001".into(),
        username: Some("alice".into()),
        email: Some("alice@example.com".into()),
        email_verified: true,
        name: Some("Alice Liddell".into()),
        groups: vec!["admins".into(), "staff".into()],
        user_id: None,
        roles: vec![],
        attributes: Default::default(),
    };
    let set_cookie = sessions
        .create(identity, None, Tokens::default())
        .expect("session");
    let pair = set_cookie[0]
        .split(';')
        .next()
        .expect("cookie pair")
        .to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        format!("theme=dark; {pair}; lang=en")
            .parse()
            .expect("header"),
    );
    c.bench_function("session_cookie_open_and_check", |b| {
        b.iter(|| match sessions.lookup(black_box(&headers)) {
            Lookup::Live(live) => live,
            other => panic!("session not live: {other:?}"),
        })
    });
}

fn bearer_jwt(c: &mut Criterion) {
    // The system clock, read once per verification as a request does.
    let clock = Clock::system();
    let now = clock.now();
    let claims = serde_json::json!({
        "iss": "https://idp.example.com", "aud": "urn:api", "sub": "client-1",
        "iat": now, "exp": now + 3600, "scope": "api",
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(ED25519_PEM.as_bytes()).expect("key");
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({
        "keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED25519_X, "kid": "k1", "use": "sig", "alg": "EdDSA"}]
    }))
    .expect("jwks");
    let audiences = vec!["urn:api".to_string()];
    let kind = gatehouse::auth::bearer::Kind::Access {
        require_at_jwt: false,
    };
    check(
        &token,
        &jwks,
        "https://idp.example.com",
        &audiences,
        kind,
        now,
    )
    .expect("the bench token verifies");
    c.bench_function("bearer_jwt_verify_eddsa", |b| {
        b.iter(|| {
            check(
                black_box(&token),
                &jwks,
                "https://idp.example.com",
                &audiences,
                kind,
                clock.now(),
            )
        })
    });
}

criterion_group!(benches, session_cookie, bearer_jwt);
criterion_main!(benches);
