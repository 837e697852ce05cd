//! Just-In-Time provisioning, the identity headers, the signed identity header and access
//! rules, against the real test OP (`tests/idp`) and a real redb store in a temp dir. The
//! store is looked at through the admin API, as `gatehouse users` does while a server runs.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::collections::BTreeMap;

use common::client;
use idp::Browser;
use login_env::{echo_json, login_env, login_env_with, sign_in, LoginEnv};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn admin_section() -> String {
    format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")
}

/// Runs a users operation through the admin API; returns the status and the JSON answer.
async fn admin(env: &LoginEnv, op: Value) -> (u16, Value) {
    let response = client()
        .post(env.gh.admin_url("/api/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&op)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every account in the store.
async fn users(env: &LoginEnv) -> Vec<Value> {
    let (status, answer) = admin(env, json!({"op": "list"})).await;
    assert_eq!(status, 200, "{answer}");
    answer["value"].as_array().cloned().unwrap_or_default()
}

/// The headers the echo app received for `path`, as one value per name.
async fn seen(browser: &Browser, env: &LoginEnv, path: &str) -> BTreeMap<String, String> {
    let response = browser.get(&env.url(path)).await;
    assert_eq!(response.status(), 200, "{path}");
    let echo = echo_json(&response.text().await.unwrap());
    echo["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v[0].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The first login creates the account; the app sees its local id with the identity; a
/// second login finds the same account unchanged.
#[tokio::test]
async fn a_first_login_creates_the_account_and_the_app_sees_its_local_id() {
    let env = login_env(json!({}), &admin_section()).await;
    let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
    let headers = seen(&browser, &env, "/app").await;
    let accounts = users(&env).await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let id = accounts[0]["id"].as_str().unwrap();
    assert_eq!(headers["x-gatehouse-user-id"], id);
    assert_eq!(headers["x-auth-request-user"], "alice");
    assert_eq!(headers["x-auth-request-email"], "alice@example.com");
    assert_eq!(headers["x-auth-request-groups"], "admins,staff");
    assert_eq!(accounts[0]["links"][0]["subject"], "alice");
    assert!(accounts[0]["last_login_at"].as_u64().is_some());

    let (again, _) = sign_in(&env, "alice", "alice-pw").await;
    assert_eq!(seen(&again, &env, "/app").await["x-gatehouse-user-id"], id);
    assert_eq!(users(&env).await.len(), 1);
    let created = "gatehouse_jit_provisions_total{action=\"created\",connection=\"test\"}";
    let unchanged = "gatehouse_jit_provisions_total{action=\"unchanged\",connection=\"test\"}";
    assert_eq!(env.gh.metric(created).await, 1.0);
    assert_eq!(env.gh.metric(unchanged).await, 1.0);
    assert_eq!(env.gh.metric("gatehouse_users").await, 1.0);
    let (_, log) = admin(&env, json!({"op": "audit", "user": id})).await;
    let log = log["value"].as_array().unwrap();
    assert_eq!(log.len(), 1, "an unchanged login adds no audit entry");
    assert_eq!(log[0]["action"], "created");
    assert!(
        !log[0].to_string().contains("alice@example.com"),
        "audit entries name fields, never values: {}",
        log[0]
    );
}

/// A second login after the IdP changed the user: `override` takes the IdP's attributes and
/// drops local ones, `preserve_local` keeps local ones, `none` changes nothing.
#[tokio::test]
async fn a_second_login_follows_the_idp_by_each_attribute_sync_mode() {
    for (mode, department, desk) in [
        ("override", "Sales", None),
        ("preserve_local", "Sales", Some("4F")),
        ("none", "R&D", Some("4F")),
    ] {
        let extra = format!(
            "attribute_sync = \"{mode}\"\nclaims = {{ attributes = [\"department\"] }}\n\
             [headers.attributes]\ndepartment = \"X-Auth-Request-Department\"\ndesk = \"X-Auth-Request-Desk\"\n{}",
            admin_section()
        );
        let env = login_env(json!({}), &extra).await;
        env.idp
            .set_claims("alice", json!({"department": "R&D"}))
            .await;
        let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
        assert_eq!(
            seen(&browser, &env, "/").await["x-auth-request-department"],
            "R&D"
        );
        let id = users(&env).await[0]["id"].as_str().unwrap().to_string();
        let (status, _) = admin(
            &env,
            json!({"op": "attr_set", "user": id, "name": "desk", "value": "4F"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            seen(&browser, &env, "/").await["x-auth-request-desk"],
            "4F",
            "a live session gets a local change at once"
        );

        env.idp
            .set_claims("alice", json!({"department": "Sales", "name": "Alice B."}))
            .await;
        let (again, _) = sign_in(&env, "alice", "alice-pw").await;
        let headers = seen(&again, &env, "/").await;
        assert_eq!(headers["x-auth-request-department"], department, "{mode}");
        assert_eq!(
            headers.get("x-auth-request-desk").map(String::as_str),
            desk,
            "{mode}"
        );
        let (_, log) = admin(&env, json!({"op": "audit", "user": id})).await;
        let actions: Vec<&str> = log["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if mode == "none" {
            &["created", "attribute_set"]
        } else {
            &["created", "attribute_set", "updated"]
        };
        assert_eq!(actions, expected, "{mode}");
    }
}

/// With `link_by_email`, a login whose verified email matches a local account is linked to
/// it (its local roles reach the app); an unverified email is refused with a 403 and
/// audited, unless the connection trusts its emails.
#[tokio::test]
async fn a_verified_email_links_to_the_local_account_and_an_unverified_one_is_refused() {
    let env = login_env(
        json!({}),
        &format!("link_by_email = true\n{}", admin_section()),
    )
    .await;
    let (_, local) = admin(
        &env,
        json!({"op": "add", "username": "alice.local", "email": "alice@example.com"}),
    )
    .await;
    let local_id = local["value"]["id"].as_str().unwrap().to_string();
    admin(
        &env,
        json!({"op": "role_add", "user": local_id, "role": "editor"}),
    )
    .await;
    let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
    let headers = seen(&browser, &env, "/").await;
    assert_eq!(headers["x-gatehouse-user-id"], local_id);
    assert_eq!(headers["x-gatehouse-roles"], "editor");
    assert_eq!(users(&env).await.len(), 1, "linked, not created");

    let (_, bob_local) = admin(
        &env,
        json!({"op": "add", "username": "bob.local", "email": "bob@example.com"}),
    )
    .await;
    let bob_id = bob_local["value"]["id"].as_str().unwrap().to_string();
    let journey = Browser::new()
        .follow(&env.url("/"), Some(("bob", "bob-pw")))
        .await;
    assert_eq!(journey.status, 403, "{:?}", journey.hops);
    assert!(journey.body.contains("not verified"), "{}", journey.body);
    let refused = "gatehouse_logins_total{connection=\"test\",result=\"account_refused\"}";
    assert_eq!(env.gh.metric(refused).await, 1.0);
    let (_, log) = admin(&env, json!({"op": "audit", "user": bob_id})).await;
    let last = log["value"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "refused");
    assert_eq!(last["reason"], "email_not_verified");
    assert_eq!(
        users(&env).await.len(),
        2,
        "no account was made for bob's login"
    );

    let trusting = login_env(
        json!({}),
        &format!(
            "link_by_email = true\ntrust_email = true\n{}",
            admin_section()
        ),
    )
    .await;
    let (_, bob_local) = admin(
        &trusting,
        json!({"op": "add", "username": "bob.local", "email": "bob@example.com"}),
    )
    .await;
    let (browser, _) = sign_in(&trusting, "bob", "bob-pw").await;
    assert_eq!(
        seen(&browser, &trusting, "/").await["x-gatehouse-user-id"],
        bob_local["value"]["id"].as_str().unwrap()
    );
}

/// A JIT-off connection writes no account, link or audit entry; the app sees the IdP's
/// claims as headers, and no local id.
#[tokio::test]
async fn a_jit_off_connection_stores_nothing_and_the_app_sees_the_claims() {
    let extra = format!(
        "jit = false\nclaims = {{ attributes = [\"department\"] }}\n\
         [headers.attributes]\ndepartment = \"X-Auth-Request-Department\"\n{}",
        admin_section()
    );
    let env = login_env(json!({}), &extra).await;
    env.idp
        .set_claims("alice", json!({"department": "R&D"}))
        .await;
    let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
    let headers = seen(&browser, &env, "/").await;
    assert_eq!(headers["x-auth-request-email"], "alice@example.com");
    assert_eq!(headers["x-auth-request-groups"], "admins,staff");
    assert_eq!(headers["x-auth-request-department"], "R&D");
    assert!(!headers.contains_key("x-gatehouse-user-id"));
    assert!(users(&env).await.is_empty());
    let (_, log) = admin(&env, json!({"op": "audit"})).await;
    assert_eq!(log["value"], json!([]));
    for action in ["created", "linked", "updated", "unchanged", "refused"] {
        let sample =
            format!("gatehouse_jit_provisions_total{{action=\"{action}\",connection=\"test\"}}");
        assert_eq!(env.gh.metric(&sample).await, 0.0, "{action}");
    }
    let logins = "gatehouse_logins_total{connection=\"test\",result=\"success\"}";
    assert_eq!(env.gh.metric(logins).await, 1.0, "only counters");
}

/// Disabling an account ends its live session at once, and its next login gets a 403 page.
#[tokio::test]
async fn a_disabled_user_is_refused_and_their_live_session_dies() {
    let env = login_env(json!({}), &admin_section()).await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    assert_eq!(env.api_status(cookie.clone()).await, 200);
    let (status, answer) = admin(&env, json!({"op": "disable", "user": "alice@example.com"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["value"]["disabled"], true);
    assert_eq!(
        env.api_status(cookie).await,
        401,
        "the live session is gone"
    );
    let journey = Browser::new()
        .follow(&env.url("/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 403);
    assert!(journey.body.contains("disabled"), "{}", journey.body);
    let refused = "gatehouse_jit_provisions_total{action=\"refused\",connection=\"test\"}";
    assert_eq!(env.gh.metric(refused).await, 1.0);

    let (status, _) = admin(&env, json!({"op": "enable", "user": "alice@example.com"})).await;
    assert_eq!(status, 200);
    sign_in(&env, "alice", "alice-pw").await;
}

/// The admin API refuses a wrong token and unknown users cleanly.
#[tokio::test]
async fn the_admin_api_needs_its_token_and_answers_unknown_users_with_404() {
    let env = login_env(json!({}), &admin_section()).await;
    let wrong = client()
        .post(env.gh.admin_url("/api/users"))
        .bearer_auth("not-the-token-at-all")
        .json(&json!({"op": "list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let none = client()
        .post(env.gh.admin_url("/api/users"))
        .json(&json!({"op": "list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let (status, answer) = admin(&env, json!({"op": "show", "user": "nobody"})).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    let (status, _) = admin(&env, json!({"op": "explode"})).await;
    assert_eq!(status, 400);
}

/// The signed identity header verifies against the JWKS Gatehouse serves, with the
/// upstream as audience; a token signed by any other key, or tampered, does not; a spoofed
/// incoming copy never reaches the app.
#[tokio::test]
async fn the_signed_identity_header_verifies_against_the_served_jwks_and_fails_with_any_other_key()
{
    use jsonwebtoken::{decode, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let env = login_env(json!({}), &admin_section()).await;
    let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
    let response = browser
        .client()
        .get(env.url("/app"))
        .header("X-Gatehouse-Identity", "forged")
        .header("x_gatehouse_identity", "forged")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    let values = echo["headers"]["x-gatehouse-identity"].as_array().unwrap();
    assert_eq!(values.len(), 1, "{values:?}");
    let token = values[0].as_str().unwrap().to_string();
    assert_ne!(token, "forged");
    assert!(echo["headers"].get("x_gatehouse_identity").is_none());

    let jwks: JwkSet = client()
        .get(env.url("/.well-known/gatehouse/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["echo"]);
    validation.set_issuer(&["gatehouse"]);
    let claims = decode::<Value>(&token, &key, &validation).unwrap().claims;
    let id = users(&env).await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["connection"], "test");
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());

    let mut wrong_aud = Validation::new(Algorithm::ES256);
    wrong_aud.set_audience(&["another-app"]);
    assert!(decode::<Value>(&token, &key, &wrong_aud).is_err());
    let other = gatehouse::identity::assertion::AssertionSigner::generate(
        gatehouse::identity::assertion::SigningAlg::Es256,
    )
    .unwrap();
    let forged = other.sign(&claims).unwrap();
    assert!(decode::<Value>(&forged, &key, &validation).is_err());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert!(decode::<Value>(&parts.join("."), &key, &validation).is_err());
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        token.split('.').nth(1).unwrap()
    );
    assert!(decode::<Value>(&none, &key, &validation).is_err());
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Access rules: an email domain on the upstream (verified, parsed strictly, so a multi-`@`
/// email does not pass) and a group on `/admin`. A refusal is a 403 that offers the sign-in,
/// and is counted by rule.
#[tokio::test]
async fn access_rules_refuse_the_wrong_domain_a_multi_at_email_and_a_missing_group() {
    let user = |email: &str, groups: Value| json!({"password": "pw", "claims": {"email": email, "email_verified": true, "groups": groups}});
    let idp = json!({"users": {
        "alice": user("alice@example.com", json!(["admins"])),
        "dave": user("dave@example.com", json!(["staff"])),
        "carol": user("carol@example.org", json!(["admins"])),
        "mallory": user("mallory@evil.com@example.com", json!(["admins"])),
        "eve": {"password": "pw", "claims": {"email": "eve@example.com", "email_verified": false, "groups": ["admins"]}},
    }});
    let env = login_env_with(
        idp,
        "allowed_email_domains = [\"example.com\"]",
        "[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"admins\"]\n",
    )
    .await;
    let visit = |login: &'static str, path: &'static str| {
        let url = env.url(path);
        async move { Browser::new().follow(&url, Some((login, "pw"))).await }
    };
    assert_eq!(visit("alice", "/admin/x").await.status, 200);
    assert_eq!(visit("dave", "/").await.status, 200);
    let dave = visit("dave", "/admin/x").await;
    assert_eq!(dave.status, 403);
    assert!(dave.body.contains("Sign in with Test IdP"), "{}", dave.body);
    assert!(
        !dave.body.contains("admins"),
        "the page does not say why in detail"
    );
    for login in ["carol", "mallory", "eve"] {
        assert_eq!(visit(login, "/").await.status, 403, "{login}");
    }
    let rule = |r: &str| format!("gatehouse_access_denied_total{{rule=\"{r}\"}}");
    assert_eq!(env.gh.metric(&rule("email_domain")).await, 3.0);
    assert_eq!(env.gh.metric(&rule("group")).await, 1.0);
    // Path tricks do not dodge the /admin rule.
    let (browser, _) = sign_in_at(&env, "dave", "/").await;
    for path in [
        "/admin",
        "/x/../admin/y",
        "/ADMIN/../admin",
        "//admin",
        "/%61dmin",
    ] {
        let status = browser.get(&env.url(path)).await.status();
        assert_eq!(status, 403, "{path}");
    }
}

async fn sign_in_at(env: &LoginEnv, login: &str, path: &str) -> (Browser, u16) {
    let browser = Browser::new();
    let journey = browser.follow(&env.url(path), Some((login, "pw"))).await;
    (browser, journey.status)
}

/// Fifty first logins of the same new user, their callbacks fired at the same moment,
/// give exactly one account.
#[tokio::test]
async fn fifty_parallel_first_logins_of_one_user_give_one_account() {
    // 50 logins from one address at once: the per-client login rate is not under test here.
    let limits = "\n[limits]\nlogin_per_minute = 0\n";
    let env = login_env(json!({}), &format!("{}{limits}", admin_section())).await;
    let browsers: Vec<Browser> = (0..50).map(|_| Browser::new()).collect();
    let root = env.url("/");
    let callbacks = futures_util::future::join_all(browsers.iter().map(|b| {
        b.follow_until(&root, Some(("alice", "alice-pw")), |u| {
            u.path() == "/oauth2/callback"
        })
    }))
    .await;
    let results = futures_util::future::join_all(
        browsers
            .iter()
            .zip(&callbacks)
            .map(|(b, journey)| b.get(&journey.url)),
    )
    .await;
    for r in &results {
        assert_eq!(r.status(), 302);
        assert!(r.headers().get("set-cookie").is_some());
    }
    let accounts = users(&env).await;
    assert_eq!(accounts.len(), 1, "{accounts:#?}");
    let sample =
        |a: &str| format!("gatehouse_jit_provisions_total{{action=\"{a}\",connection=\"test\"}}");
    assert_eq!(env.gh.metric(&sample("created")).await, 1.0);
    assert_eq!(env.gh.metric(&sample("unchanged")).await, 49.0);
}

/// Pre-account-takeover: bob's IdP lets him state an email he does not own (carol's,
/// unverified) and he signs in first through a `link_by_email` connection. That account does
/// not hold the address: carol's later verified sign-in gets an account of her own (and the
/// address), never bob's; bob's next sign-in, now claiming it verified, does not take it.
#[tokio::test]
async fn an_unverified_email_cannot_pre_empt_the_owner_s_account() {
    let env = login_env(
        json!({}),
        &format!("link_by_email = true\n{}", admin_section()),
    )
    .await;
    env.idp
        .set_claims(
            "bob",
            json!({"email": "Carol@Example.org", "email_verified": false}),
        )
        .await;
    let (bob, _) = sign_in(&env, "bob", "bob-pw").await;
    let bob_id = seen(&bob, &env, "/").await["x-gatehouse-user-id"].clone();

    let (carol, _) = sign_in(&env, "carol", "carol-pw").await;
    let carol_headers = seen(&carol, &env, "/").await;
    assert_ne!(
        carol_headers["x-gatehouse-user-id"], bob_id,
        "not bob's account"
    );
    assert_eq!(carol_headers["x-auth-request-user"], "carol");
    let (status, holder) = admin(&env, json!({"op": "show", "user": "carol@example.org"})).await;
    assert_eq!(status, 200, "{holder}");
    assert_eq!(holder["value"]["id"], carol_headers["x-gatehouse-user-id"]);

    env.idp
        .set_claims("bob", json!({"email_verified": true}))
        .await;
    let (bob_again, _) = sign_in(&env, "bob", "bob-pw").await;
    assert_eq!(
        seen(&bob_again, &env, "/").await["x-gatehouse-user-id"],
        bob_id
    );
    let (_, holder) = admin(&env, json!({"op": "show", "user": "carol@example.org"})).await;
    assert_eq!(holder["value"]["id"], carol_headers["x-gatehouse-user-id"]);
    let (carol_again, _) = sign_in(&env, "carol", "carol-pw").await;
    assert_eq!(
        seen(&carol_again, &env, "/").await["x-gatehouse-user-id"],
        carol_headers["x-gatehouse-user-id"]
    );
}
