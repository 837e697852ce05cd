//! The login dance against a real OpenID provider (`tests/idp`, oidc-provider on loopback),
//! driven by an HTTP client with a cookie jar through the IdP's login form.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::Duration;

use common::{bind_gatehouse, client, get_status, start_echo, start_on, start_with};
use idp::{client_config, Browser, TestIdp};
use login_env::{echo_json, login_env, manual_login_env, sign_in, LoginEnv};

/// A browser that asks for a protected page is sent through the IdP's login form and lands
/// on the page it asked for; the app sees who it is, and spoofed headers are gone.
#[tokio::test]
async fn a_login_brings_the_user_back_and_the_app_sees_the_identity() {
    let env = login_env(serde_json::json!({}), "").await;
    let browser = Browser::new();
    let journey = browser
        .follow(&env.url("/private/page?x=1"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(
        journey.status,
        200,
        "{:?}\n{}",
        journey.hops,
        env.idp.stderr()
    );
    assert!(
        journey
            .hops
            .iter()
            .any(|(_, u)| u.starts_with(&env.idp.issuer)),
        "never went to the IdP"
    );
    let echo = echo_json(&journey.body);
    assert_eq!(echo["path"], "/private/page");
    assert_eq!(echo["query"], "x=1");
    let headers = &echo["headers"];
    assert_eq!(headers["x-auth-request-user"][0], "alice");
    assert_eq!(headers["x-auth-request-email"][0], "alice@example.com");
    assert_eq!(headers["x-auth-request-groups"][0], "admins,staff");
    assert_eq!(headers["x-auth-request-preferred-username"][0], "alice");
    assert_eq!(headers["x-gatehouse-connection"][0], "test");
    let cookies = headers
        .get("cookie")
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert!(
        !cookies.contains("_gatehouse"),
        "the app received Gatehouse's cookie: {cookies}"
    );

    // With the session, a spoofed identity header is still replaced by the real one.
    let cookie = browser
        .cookie_header(&env.url("/"))
        .expect("session cookie");
    let spoofed = client()
        .get(env.url("/again"))
        .header("cookie", cookie)
        .header("X-Auth-Request-User", "mallory")
        .header("X_Auth_Request_Email", "mallory@evil.example")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = spoofed.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-auth-request-user"],
        serde_json::json!(["alice"])
    );
    assert!(echo["headers"].get("x_auth_request_email").is_none());
    let sample = "gatehouse_logins_total{connection=\"test\",result=\"success\"}";
    assert_eq!(env.gh.metric_reaching(sample, 1.0).await, 1.0);
}

/// Two tabs start logging in at once; both finish, in either order (one login cookie per
/// state, not a single CSRF cookie).
#[tokio::test]
async fn two_tabs_logging_in_at_once_both_succeed() {
    let env = login_env(serde_json::json!({}), "").await;
    let browser = Browser::new();
    let mut authorize = Vec::new();
    for path in ["/tab-a", "/tab-b"] {
        let start = browser
            .get(&env.url(&format!("/oauth2/start?rd={path}")))
            .await;
        assert_eq!(start.status(), 302);
        authorize.push(start.headers()["location"].to_str().unwrap().to_string());
    }
    let b = browser
        .follow(&authorize[1], Some(("alice", "alice-pw")))
        .await;
    assert_eq!(b.status, 200, "{:?}", b.hops);
    assert_eq!(echo_json(&b.body)["path"], "/tab-b");
    let a = browser
        .follow(&authorize[0], Some(("alice", "alice-pw")))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.hops);
    assert_eq!(echo_json(&a.body)["path"], "/tab-a");
}

/// A callback is good once: replaying it (even with a copy of its login cookie), or changing
/// its state, is refused with 400 and counted, and never gives a session.
#[tokio::test]
async fn a_replayed_or_tampered_callback_is_refused() {
    let env = login_env(serde_json::json!({}), "").await;
    let browser = Browser::new();
    let start = browser.get(&env.url("/oauth2/start?rd=/x")).await;
    assert_eq!(start.status(), 302);
    let login_cookie = start.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let authorize = start.headers()["location"].to_str().unwrap().to_string();
    let journey = browser.follow(&authorize, Some(("bob", "bob-pw"))).await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    let callback = journey
        .hops
        .iter()
        .map(|(_, u)| u.clone())
        .find(|u| u.contains("/oauth2/callback?"))
        .expect("a callback hop");
    // An attacker who copied the callback URL and the login cookie: the state was used.
    let replay = client()
        .get(&callback)
        .header("cookie", login_cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let used = "gatehouse_logins_total{connection=\"test\",result=\"state_invalid\"}";
    assert_eq!(env.gh.metric_reaching(used, 1.0).await, 1.0);
    // Without the login cookie, or with a changed state, nothing matches.
    assert_eq!(Browser::new().get(&callback).await.status(), 400);
    let tampered = callback.replace("state=", "state=x");
    let forged = client()
        .get(&tampered)
        .header("cookie", login_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(
        Browser::new()
            .get(&env.url("/oauth2/callback?code=abc"))
            .await
            .status(),
        400
    );
    let unknown = "gatehouse_logins_total{connection=\"-\",result=\"state_invalid\"}";
    assert_eq!(env.gh.metric_reaching(unknown, 3.0).await, 3.0);
}

/// The IdP's `error` answer gives a clear 403 page, never a 500.
#[tokio::test]
async fn an_idp_error_answer_gives_a_clear_page() {
    let env = login_env(serde_json::json!({}), "").await;
    let browser = Browser::new();
    let start = browser.get(&env.url("/oauth2/start")).await;
    let authorize = start.headers()["location"].to_str().unwrap().to_string();
    let state = reqwest::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let denied = browser
        .get(&env.url(&format!(
            "/oauth2/callback?error=access_denied&state={state}"
        )))
        .await;
    assert_eq!(denied.status(), 403);
    assert!(denied
        .text()
        .await
        .unwrap()
        .contains("cancelled or refused"));
}

/// Forged, truncated and swapped cookies are refused: API clients get 401.
#[tokio::test]
async fn forged_truncated_or_swapped_cookies_are_refused() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let session = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("_gatehouse="))
        .expect("session cookie")
        .to_string();
    assert_eq!(env.api_status(format!("_gatehouse={session}")).await, 200);
    assert_eq!(
        env.api_status(format!("_gatehouse={}", &session[..session.len() / 2]))
            .await,
        401
    );
    let mut flipped = session.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        env.api_status(format!(
            "_gatehouse={}",
            String::from_utf8(flipped).unwrap()
        ))
        .await,
        401
    );
    assert_eq!(
        env.api_status("_gatehouse=forged-by-hand".to_string())
            .await,
        401
    );
    // A login-state cookie (sealed with the same keys, for another purpose) is no session.
    let start = browser.get(&env.url("/oauth2/start")).await;
    let login_cookie = start.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let login_value = login_cookie.split_once('=').unwrap().1;
    assert_eq!(
        env.api_status(format!("_gatehouse={login_value}")).await,
        401
    );
}

/// Sign-out revokes the session server-side (a copied cookie dies too), clears the cookie and
/// goes to the IdP's end-session endpoint.
#[tokio::test]
async fn sign_out_revokes_the_session_even_for_a_copied_cookie() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, copied) = sign_in(&env, "alice", "alice-pw").await;
    let confirm = browser.get(&env.url("/oauth2/sign_out")).await;
    assert_eq!(confirm.status(), 200);
    let page = confirm.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    // Without the form's token the POST is refused.
    let refused = browser
        .post_form(&env.url("/oauth2/sign_out"), &[("csrf", "nope")])
        .await;
    assert_eq!(refused.status(), 403);
    let done = browser
        .post_form(
            &env.url("/oauth2/sign_out"),
            &[("csrf", &csrf), ("rd", "/signed-out")],
        )
        .await;
    assert_eq!(done.status(), 302);
    let location = done.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&env.idp.issuer), "{location}");
    assert!(location.contains("id_token_hint="));
    let after = client()
        .get(env.url("/private"))
        .header("accept", "application/json")
        .header("cookie", copied)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

/// Makes the test client (on loopback) a trusted front proxy.
const TRUST_LOOPBACK: &str = "[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

/// A forward-auth call as a front proxy makes it, about `GET /private`.
fn forward_auth(env: &LoginEnv) -> reqwest::RequestBuilder {
    client()
        .get(env.url("/oauth2/auth"))
        .header("x-forwarded-uri", "/private")
        .header("x-forwarded-method", "GET")
}

/// Forward-auth (from a trusted proxy, naming the request) answers 202 with the identity
/// headers for a session and 401 without; userinfo returns the identity as JSON.
#[tokio::test]
async fn forward_auth_and_userinfo_answer_for_the_session() {
    let env = login_env(serde_json::json!({}), TRUST_LOOPBACK).await;
    let (_, cookie) = sign_in(&env, "carol", "carol-pw").await;
    let ok = forward_auth(&env)
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.headers()["x-auth-request-email"], "carol@example.org");
    let nobody = forward_auth(&env).send().await.unwrap();
    assert_eq!(nobody.status(), 401);
    let info: serde_json::Value = client()
        .get(env.url("/oauth2/userinfo"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["user"], "carol");
    assert_eq!(info["connection"], "test");
}

/// Open-redirect payloads in `rd` fall back to `/` after login.
#[tokio::test]
async fn open_redirects_in_rd_land_on_the_root() {
    let env = login_env(serde_json::json!({}), "").await;
    for payload in [
        "//evil.example/x",
        "/\\evil.example",
        "/%09/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "https://127.0.0.1.evil.example/",
    ] {
        let browser = Browser::new();
        let encoded: String = payload.bytes().map(|b| format!("%{b:02X}")).collect();
        let journey = browser
            .follow(
                &env.url(&format!("/oauth2/start?rd={encoded}")),
                Some(("alice", "alice-pw")),
            )
            .await;
        assert_eq!(journey.status, 200, "{payload}: {:?}", journey.hops);
        assert!(
            journey.url.starts_with(&env.url("/")),
            "{payload} led to {}",
            journey.url
        );
        assert_eq!(echo_json(&journey.body)["path"], "/", "{payload}");
    }
}

/// When the access token expires on Gatehouse's clock, the next request refreshes it once
/// (parallel requests share the refresh) and goes through; one second before its expiry,
/// nothing is refreshed. The clock is advanced, never slept on.
#[tokio::test]
async fn an_expired_access_token_is_refreshed_on_the_next_request() {
    let env = manual_login_env(serde_json::json!({"ttl": {"AccessToken": 60}}), "").await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let clock = env.gh.clock();
    let expires_at = access_expires_at(&env);
    clock.advance(Duration::from_secs(expires_at - 1 - clock.now()));
    let success = "gatehouse_session_refresh_total{result=\"success\"}";
    assert_eq!(env.api_status(cookie.clone()).await, 200);
    assert_eq!(env.gh.metric(success).await, 0.0, "not expired yet");

    clock.advance(Duration::from_secs(1));
    let requests = (0..4).map(|_| {
        let (url, cookie) = (env.url("/after"), cookie.clone());
        tokio::spawn(async move {
            client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(
        env.gh.metric(success).await,
        1.0,
        "parallel requests share one refresh"
    );
    assert!(
        access_expires_at(&env) > expires_at,
        "the new token is kept"
    );
}

/// Memory keeps no IdP tokens for a session: sign-out takes the `id_token_hint` from the
/// store's record, and a refresh its refresh token. So a session whose stored record lost its
/// ID token signs out without a hint, and one whose stored refresh token was swapped for junk
/// fails its refresh and ends. Had memory kept the login's tokens, the first would still send
/// the hint and the second refresh fine.
#[tokio::test]
async fn an_idle_sessions_tokens_are_read_from_the_store_at_sign_out_and_refresh() {
    let env = manual_login_env(serde_json::json!({"ttl": {"AccessToken": 60}}), "").await;
    let store = env.gh.gatehouse.store.clone().expect("a store");
    let amend_the_one_session = |amend: &dyn Fn(&mut gatehouse::store::sessions::SessionRecord)| {
        let sessions = store.sessions().expect("stored sessions");
        assert_eq!(sessions.len(), 1);
        let sid = sessions[0].sid.clone();
        assert!(store.write(|tx| tx.amend_session(&sid, amend)).unwrap());
    };

    let (browser, _) = sign_in(&env, "alice", "alice-pw").await;
    amend_the_one_session(&|r| r.tokens.id_token = None);
    let csrf = login_env::sign_out_token(&browser, &env.url("/oauth2/sign_out")).await;
    let done = browser
        .post_form(&env.url("/oauth2/sign_out"), &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status(), 302);
    let location = done.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&env.idp.issuer), "{location}");
    assert!(
        !location.contains("id_token_hint="),
        "the hint came from memory: {location}"
    );

    let (_, cookie) = sign_in(&env, "bob", "bob-pw").await;
    amend_the_one_session(&|r| r.tokens.refresh_token = Some("not-a-refresh-token".into()));
    let clock = env.gh.clock();
    clock.advance(Duration::from_secs(access_expires_at(&env) - clock.now()));
    assert_eq!(
        env.api_status(cookie.clone()).await,
        401,
        "the refresh used a refresh token from memory"
    );
    let failure = "gatehouse_session_refresh_total{result=\"failure\"}";
    assert_eq!(env.gh.metric(failure).await, 1.0);
}

/// The access token's expiry (unix seconds on Gatehouse's clock) of the one stored session.
fn access_expires_at(env: &LoginEnv) -> u64 {
    let store = env.gh.gatehouse.store.as_ref().expect("a store");
    let sessions = store.sessions().expect("stored sessions");
    assert_eq!(sessions.len(), 1);
    sessions[0]
        .tokens
        .access_expires_at
        .expect("the IdP said when the access token expires")
}

/// IdP tokens that outlive every clock jump of the expiry tests below, so no refresh (with
/// the IdP's real-time ID token) mixes in.
fn long_tokens() -> serde_json::Value {
    serde_json::json!({"ttl": {"AccessToken": 86400, "IdToken": 86400}})
}

/// A session used within its idle timeout (1 h by default) lives exactly its lifetime (12 h
/// by default) on Gatehouse's clock: accepted one second before, refused (401) at it.
#[tokio::test]
async fn a_session_ends_at_its_lifetime_on_gatehouses_clock() {
    let env = manual_login_env(long_tokens(), "").await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let clock = env.gh.clock();
    let lifetime = 12 * 3600;
    let started = clock.now();
    while clock.now() + 3000 < started + lifetime {
        clock.advance(Duration::from_secs(3000));
        assert_eq!(env.api_status(cookie.clone()).await, 200, "in use, alive");
    }
    clock.advance(Duration::from_secs(started + lifetime - 1 - clock.now()));
    assert_eq!(
        env.api_status(cookie.clone()).await,
        200,
        "one second before"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(env.api_status(cookie).await, 401, "at its lifetime");
}

/// A session left unused for exactly the idle timeout (1 h by default) on Gatehouse's clock
/// is still accepted; one second more and it is refused (401).
#[tokio::test]
async fn an_idle_session_ends_one_second_past_the_idle_timeout() {
    let env = manual_login_env(long_tokens(), "").await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let clock = env.gh.clock();
    clock.advance(Duration::from_secs(3600));
    assert_eq!(env.api_status(cookie.clone()).await, 200, "at the limit");
    clock.advance(Duration::from_secs(3601));
    assert_eq!(env.api_status(cookie).await, 401, "one second past it");
}

/// The login state (state, nonce, PKCE verifier in the sealed login cookie) lives for
/// `login_timeout` (10 min by default) on Gatehouse's clock: a callback one second before
/// signs in, a callback at the timeout is refused (400).
#[tokio::test]
async fn a_login_state_expires_at_the_login_timeout_on_gatehouses_clock() {
    let env = manual_login_env(long_tokens(), "").await;
    let clock = env.gh.clock();
    for (wait, expected) in [(599, 302), (600, 400)] {
        let browser = Browser::new();
        let journey = browser
            .follow_until(&env.url("/private"), Some(("alice", "alice-pw")), |u| {
                u.path() == "/oauth2/callback"
            })
            .await;
        clock.advance(Duration::from_secs(wait));
        let response = browser.get(&journey.url).await;
        assert_eq!(
            response.status(),
            expected,
            "callback {wait} s after the start"
        );
    }
}

/// The signed identity header is dated by Gatehouse's clock (`iat` now, `exp` after the
/// assertion TTL) and reused until half its TTL has passed on that clock: the same value one
/// second before, a new one dated at the half from then on.
#[tokio::test]
async fn the_signed_identity_header_is_renewed_at_half_its_ttl_on_gatehouses_clock() {
    let extra =
        "[identity]\nsigned_header = true\nsigning_alg = \"EdDSA\"\nassertion_ttl = \"5m\"\n";
    let env = manual_login_env(long_tokens(), extra).await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let clock = env.gh.clock();
    let assertion = || async {
        let body = client()
            .get(env.url("/app"))
            .header("cookie", cookie.clone())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        echo_json(&body)["headers"]["x-gatehouse-identity"][0]
            .as_str()
            .expect("the signed identity header")
            .to_string()
    };
    let first = assertion().await;
    let (iat, exp) = jwt_times(&first);
    assert_eq!(exp, iat + 300);
    clock.advance(Duration::from_secs(iat + 149 - clock.now()));
    assert_eq!(assertion().await, first, "one second before half its TTL");
    clock.advance(Duration::from_secs(1));
    let renewed = assertion().await;
    assert_eq!(jwt_times(&renewed), (iat + 150, iat + 450));
}

/// `iat` and `exp` of a JWT (its payload, unverified).
fn jwt_times(jwt: &str) -> (u64, u64) {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    )
}

/// An IdP that is down at startup: public routes are served, `/ready` stays true (readiness
/// waits for IdPs only with `ready_requires_idp`, see tests/probes.rs), and a login attempt
/// gets a clear 502 page.
#[tokio::test]
async fn an_idp_down_at_startup_leaves_public_routes_working() {
    let upstream = start_echo().await;
    let dead = common::dead_port();
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n[[upstreams]]\nurl = \"http://{upstream}\"\n[[public]]\npath = \"/public\"\nmatch = \"prefix\"\n[[connections]]\nid = \"down\"\nissuer = \"http://{dead}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
        data.path().display()
    );
    let gh = start_with(upstream, &config);
    assert_eq!(
        get_status(&gh.url("/public/a")).await.expect("a response"),
        200
    );
    assert_eq!(
        get_status(&gh.admin_url("/ready"))
            .await
            .expect("a response"),
        200
    );
    let start = client()
        .get(gh.url("/oauth2/start"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 502);
    assert!(start.text().await.unwrap().contains("not reachable"));
    // Without configured keys, one is made and kept in the data dir (readable by the owner).
    assert!(data.path().join("session.keys").exists());
}

/// An IdP that comes up after Gatehouse: once the background retry has backed off (its next
/// attempt 16 s away), the first login attempt after the IdP starts runs discovery itself and
/// the sign-in completes, and the background loop records the IdP as up.
#[tokio::test]
async fn a_login_attempt_discovers_an_idp_that_came_up_late_without_waiting_for_the_backoff() {
    let upstream = start_echo().await;
    let listeners = common::bind_gatehouse();
    let port = listeners.addresses().proxy[0].port();
    // Nothing listens there until the IdP starts on it below.
    let idp_port = common::dead_port().port();
    let base = format!("http://127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_listen = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n[[upstreams]]\nurl = \"http://{upstream}\"\n[[connections]]\nid = \"late\"\nissuer = \"http://127.0.0.1:{idp_port}\"\nclient_id = \"gatehouse\"\nclient_secret = \"gatehouse-secret\"\n",
        data.path().display()
    );
    let gh = common::start_on(upstream, &config, listeners);
    // Six failed attempts (0.25 + 0.5 + 1 + 2 + 4 s apart): the next one is 16 s away.
    let failures = "gatehouse_jwks_refresh_total{connection=\"late\",result=\"failure\"}";
    for _ in 0..300 {
        if gh.metric(failures).await >= 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gh.metric(failures).await >= 6.0,
        "discovery never backed off"
    );
    let idp = TestIdp::start_on_port(
        serde_json::json!({"clients": [client_config(
            "gatehouse",
            "gatehouse-secret",
            vec![format!("{base}/oauth2/callback")],
            vec![],
            None,
        )]}),
        idp_port,
    )
    .await;
    let journey = Browser::new()
        .follow(&gh.url("/reports"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}\n{}", journey.hops, idp.stderr());
    assert_eq!(echo_json(&journey.body)["path"], "/reports");
    let up = "gatehouse_idp_up{connection=\"late\"}";
    assert_eq!(gh.metric_reaching(up, 1.0).await, 1.0);
}

/// A JWT access token from the IdP (client credentials with a resource indicator) is
/// accepted as a bearer token with no cookie; a broken one gets 401 `invalid_token`.
#[tokio::test]
async fn a_bearer_jwt_is_accepted_and_a_broken_one_refused() {
    let env = login_env(
        serde_json::json!({}),
        &format!("allow_bearer = true\nbearer_audiences = [\"urn:gatehouse:test-api\"]\n{TRUST_LOOPBACK}"),
    )
    .await;
    let discovery: serde_json::Value = client()
        .get(format!(
            "{}/.well-known/openid-configuration",
            env.idp.issuer
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens: serde_json::Value = client()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth("gatehouse", Some("gatehouse-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "urn:gatehouse:test-api"),
            ("scope", "api"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"]
        .as_str()
        .expect("a JWT access token")
        .to_string();
    let ok = client()
        .get(env.url("/api/items"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let echo: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "gatehouse");
    let forward = forward_auth(&env).bearer_auth(&token).send().await.unwrap();
    assert_eq!(forward.status(), 202);

    let mut broken = token.clone();
    broken.pop();
    broken.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [
        broken.as_str(),
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ] {
        let refused = client()
            .get(env.url("/api/items"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{bad}");
        assert_eq!(
            refused.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
    assert_eq!(
        env.gh
            .metric("gatehouse_bearer_total{result=\"valid\"}")
            .await,
        2.0
    );
}

/// When the user signs out at the IdP, the IdP's back-channel logout ends the Gatehouse
/// session too; a forged logout token is refused with 400.
#[tokio::test]
async fn a_back_channel_logout_from_the_idp_ends_the_session() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    assert_eq!(env.api_status(cookie.clone()).await, 200);

    let forged = client()
        .post(env.url("/oauth2/backchannel-logout"))
        .form(&[("logout_token", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(env.api_status(cookie.clone()).await, 200);

    // Sign out at the IdP itself: its confirmation form, then its back-channel call to us.
    let end = format!("{}/session/end", env.idp.issuer);
    let page = browser.get(&end).await.text().await.unwrap();
    let (action, hidden) = idp::form_fields(&page, "op.logoutForm");
    let mut fields: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    fields.push(("logout", "yes"));
    let action = reqwest::Url::parse(&end).unwrap().join(&action).unwrap();
    let done = browser.post_form(action.as_str(), &fields).await;
    assert!(
        done.status().is_redirection() || done.status() == 200,
        "{}",
        done.status()
    );
    assert_eq!(
        env.api_status(cookie).await,
        401,
        "the session outlived the IdP logout\n{}",
        env.idp.stderr()
    );
    let sample = "gatehouse_logouts_total{kind=\"backchannel\"}";
    assert_eq!(env.gh.metric(sample).await, 1.0);
}

/// With two connections, `/oauth2/start` shows a chooser with a button per connection, and
/// the chosen IdP signs the user in.
#[tokio::test]
async fn two_connections_get_a_chooser_and_the_chosen_idp_signs_in() {
    let listeners = bind_gatehouse();
    let proxy = listeners.addresses().proxy[0];
    let base = format!("http://{proxy}");
    let client_entry = client_config(
        "gatehouse",
        "gatehouse-secret",
        vec![format!("{base}/oauth2/callback")],
        vec![],
        None,
    );
    let first = TestIdp::start(serde_json::json!({"clients": [client_entry.clone()]})).await;
    let second = TestIdp::start(serde_json::json!({"clients": [client_entry]})).await;
    let upstream = start_echo().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[server]\nlisten = [\"{proxy}\"]\nadmin_listen = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n[[upstreams]]\nurl = \"http://{upstream}\"\n",
        data.path().display()
    );
    for (id, idp) in [("first", &first), ("second", &second)] {
        config.push_str(&format!(
            "[[connections]]\nid = \"{id}\"\ndisplay_name = \"The {id} IdP\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\nclient_secret = \"gatehouse-secret\"\n",
            idp.issuer
        ));
    }
    let gh = start_on(upstream, &config, listeners);
    gh.wait_ready().await;
    let browser = Browser::new();
    let chooser = browser.follow(&gh.url("/reports"), None).await;
    assert_eq!(chooser.status, 200);
    assert!(
        chooser.body.contains("The first IdP") && chooser.body.contains("The second IdP"),
        "{}",
        chooser.body
    );
    let link = chooser
        .body
        .split("href=\"")
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.contains("connection=second"))
        .expect("a button for the second IdP")
        .replace("&amp;", "&");
    let journey = browser
        .follow(&gh.url(&link), Some(("carol", "carol-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    assert!(journey
        .hops
        .iter()
        .any(|(_, u)| u.starts_with(&second.issuer)));
    let echo = echo_json(&journey.body);
    assert_eq!(echo["path"], "/reports");
    assert_eq!(echo["headers"]["x-gatehouse-connection"][0], "second");
}

/// Key rotation: a cookie sealed with the old key still opens while the old key is listed
/// after the new one, and is refused once the old key is dropped.
#[tokio::test]
async fn a_cookie_sealed_with_a_retired_key_works_until_the_key_is_dropped() {
    const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const NEW: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let env = login_env(serde_json::json!({}), "").await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let issuer = env.idp.issuer.clone();
    let upstream = env.gh.upstream;
    for (keys, expected) in [
        (format!("\"{NEW}\", \"{OLD}\""), 200),
        (format!("\"{NEW}\""), 401),
    ] {
        // The running Gatehouse holds the store's lock: the next ones start on a copy of it.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            env.data.path().join("gatehouse.redb"),
            copy.path().join("gatehouse.redb"),
        )
        .unwrap();
        let data_dir = copy.path();
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\nkeys = [{keys}]\n[[upstreams]]\nurl = \"http://{upstream}\"\n[[connections]]\nid = \"test\"\nissuer = \"{issuer}\"\nclient_id = \"gatehouse\"\nclient_secret = \"gatehouse-secret\"\n",
            data_dir.display()
        );
        let gh = start_with(upstream, &config);
        let status = client()
            .get(gh.url("/api"))
            .header("accept", "application/json")
            .header("cookie", cookie.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "keys [{keys}]");
    }
}

// ------------------------------------------------------------------------------------------
// Tokens are used only for what they are (issue 9 items 5, 6, 10; issue 15 item 5).

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const API: &str = "urn:gatehouse:test-api";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs a logout token; returns the status.
async fn post_logout(env: &login_env::LoginEnv, token: &str) -> u16 {
    client()
        .post(env.url("/oauth2/backchannel-logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Logout-token claims for the test IdP and client `gatehouse`, plus `extra`.
fn logout_claims(env: &login_env::LoginEnv, extra: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": env.idp.issuer, "aud": "gatehouse", "iat": unix_now(),
        "jti": format!("jti-{}", rand_suffix()), "events": { BACKCHANNEL_EVENT: {} },
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The status of a bearer request to `path`, and its `WWW-Authenticate`.
async fn bearer_status(env: &login_env::LoginEnv, path: &str, token: &str) -> (u16, String) {
    let response = client()
        .get(env.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), challenge)
}

/// Access-token claims for `sub` from the test IdP, for the test API, plus `extra`.
fn access_claims(
    env: &login_env::LoginEnv,
    sub: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": env.idp.issuer, "aud": API, "sub": sub, "iat": unix_now(),
        "exp": unix_now() + 300, "client_id": "gatehouse",
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// Forty junk logout posts whose `iss` matches (bad signatures, unknown keys, `alg: none`,
/// foreign audiences, garbage) make Gatehouse fetch the IdP's keys at most once: the key
/// cache is refetched only for an unknown `kid`, at most every 30 s per connection.
#[tokio::test]
async fn junk_logout_posts_make_at_most_one_key_fetch() {
    let env = login_env(serde_json::json!({}), "").await;
    let before = env.idp.jwks_fetches().await;
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    for i in 0..40 {
        let claims = logout_claims(&env, serde_json::json!({"sid": format!("s{i}")}));
        let token = match i % 4 {
            0 => format!(
                "{}.{}.c2lnbmF0dXJl",
                b64(serde_json::json!({"alg": "RS256", "kid": format!("unknown-{i}")})),
                b64(claims)
            ),
            1 => format!(
                "{}.{}.c2lnbmF0dXJl",
                b64(serde_json::json!({"alg": "RS256", "kid": "rs256-1"})),
                b64(claims)
            ),
            2 => format!(
                "{}.{}.",
                b64(serde_json::json!({"alg": "none"})),
                b64(claims)
            ),
            _ => format!(
                "{}.{}.c2ln",
                b64(serde_json::json!({"alg": "ES256"})),
                b64(claims)
            ),
        };
        assert_eq!(post_logout(&env, &token).await, 400, "junk {i}");
    }
    let fetched = env.idp.jwks_fetches().await - before;
    assert!(
        fetched <= 1,
        "40 junk logout posts made {fetched} JWKS fetches"
    );
}

/// A logout token with only `sid` (no `sub`), as OIDC Back-Channel Logout 1.0 section 2.4
/// allows, ends that session and the subject's older bearer tokens; the same token again
/// (same `jti`) is refused, and so are sid-only tokens that break a rule (nonce, wrong typ,
/// foreign aud, no jti, no event, old, expired).
#[tokio::test]
async fn a_sid_only_logout_token_ends_the_session_once() {
    let env = login_env(
        serde_json::json!({}),
        &format!("allow_bearer = true\nbearer_audiences = [\"{API}\"]\n[headers]\npass_id_token = true\n"),
    )
    .await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let alice_bearer = env
        .idp
        .sign(
            serde_json::json!({}),
            access_claims(&env, "alice", serde_json::json!({"iat": unix_now() - 5})),
        )
        .await;
    assert_eq!(bearer_status(&env, "/api", &alice_bearer).await.0, 200);
    let echo = client()
        .get(env.url("/api"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id_token = echo_json(&echo)["headers"]["x-gatehouse-id-token"][0]
        .as_str()
        .expect("the ID token header")
        .to_string();
    let claims = gatehouse::auth::oidc::jwt_payload(&id_token).unwrap();
    let sid = claims
        .get("sid")
        .and_then(|s| s.as_str())
        .unwrap_or_else(|| panic!("no sid in the ID token: {claims:?}"))
        .to_string();
    let logout_header = serde_json::json!({"typ": "logout+jwt"});
    let bad = [
        (
            "nonce",
            serde_json::json!({"sid": sid, "nonce": "n"}),
            logout_header.clone(),
        ),
        (
            "typ",
            serde_json::json!({"sid": sid}),
            serde_json::json!({"typ": "JWT"}),
        ),
        (
            "aud",
            serde_json::json!({"sid": sid, "aud": "someone-else"}),
            logout_header.clone(),
        ),
        (
            "jti",
            serde_json::json!({"sid": sid, "jti": null}),
            logout_header.clone(),
        ),
        (
            "events",
            serde_json::json!({"sid": sid, "events": null}),
            logout_header.clone(),
        ),
        (
            "old",
            serde_json::json!({"sid": sid, "iat": unix_now() - 3600}),
            logout_header.clone(),
        ),
        (
            "expired",
            serde_json::json!({"sid": sid, "exp": unix_now() - 600}),
            logout_header.clone(),
        ),
        ("no sid", serde_json::json!({}), logout_header.clone()),
    ];
    for (name, extra, header) in bad {
        let token = env.idp.sign(header, logout_claims(&env, extra)).await;
        assert_eq!(post_logout(&env, &token).await, 400, "{name}");
        assert_eq!(
            env.api_status(cookie.clone()).await,
            200,
            "{name} ended the session"
        );
    }
    let token = env
        .idp
        .sign(
            logout_header,
            logout_claims(&env, serde_json::json!({"sid": sid})),
        )
        .await;
    assert_eq!(post_logout(&env, &token).await, 200);
    assert_eq!(
        env.api_status(cookie).await,
        401,
        "the session outlived its sid logout"
    );
    assert_eq!(
        bearer_status(&env, "/api", &alice_bearer).await.0,
        401,
        "the sid logout left the subject's older bearer token working"
    );
    assert_eq!(
        post_logout(&env, &token).await,
        400,
        "a replayed jti was accepted"
    );
}

/// The ID token Gatehouse got at login (which the sign-out redirect hands out as
/// `id_token_hint`) is no bearer token, even where its audience is accepted; nor is any
/// IdP-signed token with a `nonce`, `events` or an odd `typ`. Real access-token shapes pass.
#[tokio::test]
async fn an_id_token_is_never_accepted_as_a_bearer_token() {
    let env = login_env(
        serde_json::json!({}),
        &format!(
            "allow_bearer = true\nbearer_audiences = [\"{API}\", \"gatehouse\"]\n[headers]\npass_id_token = true\n"
        ),
    )
    .await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let echo = client()
        .get(env.url("/api"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id_token = echo_json(&echo)["headers"]["x-gatehouse-id-token"][0]
        .as_str()
        .expect("the ID token header")
        .to_string();
    let (status, challenge) = bearer_status(&env, "/api", &id_token).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer error=\"invalid_token\"")
    );

    let typs = [
        "",
        "JWT",
        "jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+JWT",
    ];
    for typ in typs {
        let header = if typ.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "typ": typ })
        };
        let ok = env
            .idp
            .sign(
                header.clone(),
                access_claims(&env, "alice", serde_json::json!({})),
            )
            .await;
        assert_eq!(bearer_status(&env, "/api", &ok).await.0, 200, "typ {typ:?}");
        for (name, extra) in [
            ("nonce", serde_json::json!({"nonce": "n"})),
            (
                "events",
                serde_json::json!({"events": {BACKCHANNEL_EVENT: {}}}),
            ),
        ] {
            let bad = env
                .idp
                .sign(header.clone(), access_claims(&env, "alice", extra))
                .await;
            assert_eq!(
                bearer_status(&env, "/api", &bad).await.0,
                401,
                "{name} typ {typ:?}"
            );
        }
    }
    for typ in [
        "logout+jwt",
        "id_token+jwt",
        "JOSE",
        "at+jwt2",
        "application/jwt+at",
        "secevent+jwt",
    ] {
        let bad = env
            .idp
            .sign(
                serde_json::json!({ "typ": typ }),
                access_claims(&env, "alice", serde_json::json!({})),
            )
            .await;
        assert_eq!(
            bearer_status(&env, "/api", &bad).await.0,
            401,
            "typ {typ:?}"
        );
    }
}

/// With `require_at_jwt = true` only RFC 9068 `at+jwt` tokens pass.
#[tokio::test]
async fn require_at_jwt_accepts_only_at_jwt() {
    let env = login_env(
        serde_json::json!({}),
        &format!("allow_bearer = true\nbearer_audiences = [\"{API}\"]\nrequire_at_jwt = true\n"),
    )
    .await;
    for (typ, expected) in [
        (Some("at+jwt"), 200),
        (Some("application/AT+JWT"), 200),
        (Some("JWT"), 401),
        (None, 401),
    ] {
        let header = typ.map_or(serde_json::json!({}), |t| serde_json::json!({ "typ": t }));
        let token = env
            .idp
            .sign(header, access_claims(&env, "svc", serde_json::json!({})))
            .await;
        assert_eq!(
            bearer_status(&env, "/api", &token).await.0,
            expected,
            "{typ:?}"
        );
    }
}

/// A back-channel logout of a subject (by `sub`, or by `sid` of one of its sessions) makes
/// Gatehouse refuse that subject's bearer tokens issued before it; tokens issued later,
/// and other subjects' tokens, still pass.
#[tokio::test]
async fn bearer_tokens_issued_before_a_back_channel_logout_are_refused() {
    let env = login_env(
        serde_json::json!({}),
        &format!("allow_bearer = true\nbearer_audiences = [\"{API}\"]\n"),
    )
    .await;
    let issued = unix_now() - 10;
    let alice_old = env
        .idp
        .sign(
            serde_json::json!({}),
            access_claims(&env, "alice", serde_json::json!({"iat": issued})),
        )
        .await;
    let bob_old = env
        .idp
        .sign(
            serde_json::json!({}),
            access_claims(&env, "bob", serde_json::json!({"iat": issued})),
        )
        .await;
    assert_eq!(bearer_status(&env, "/api", &alice_old).await.0, 200);
    let logout = env
        .idp
        .sign(
            serde_json::json!({}),
            logout_claims(&env, serde_json::json!({"sub": "alice"})),
        )
        .await;
    assert_eq!(post_logout(&env, &logout).await, 200);
    let (status, challenge) = bearer_status(&env, "/api", &alice_old).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer error=\"invalid_token\"")
    );
    assert_eq!(bearer_status(&env, "/api", &bob_old).await.0, 200);
    let alice_new = env
        .idp
        .sign(
            serde_json::json!({}),
            access_claims(&env, "alice", serde_json::json!({"iat": unix_now() + 2})),
        )
        .await;
    assert_eq!(bearer_status(&env, "/api", &alice_new).await.0, 200);
}

/// On a route that requires TOTP, a bearer token passes only when its `amr` or a listed
/// `acr` shows a second factor; otherwise 401 `insufficient_user_authentication` (RFC 9470).
/// Other routes do not ask. Forward-auth answers the same (202 or that 401) for the route.
#[tokio::test]
async fn a_bearer_token_needs_a_second_factor_on_an_mfa_route() {
    let env = login_env(
        serde_json::json!({}),
        &format!(
            "allow_bearer = true\nbearer_audiences = [\"{API}\"]\nbearer_mfa_acr = [\"urn:test:mfa\"]\n\
             [[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nmfa = \"required\"\n\
             [headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
        ),
    )
    .await;
    // The same token asked about through forward-auth (as nginx would): 202 or the same 401.
    let forward_auth = |token: String| {
        let url = env.url("/oauth2/auth");
        async move {
            let response = client()
                .get(url)
                .bearer_auth(token)
                .header("x-forwarded-uri", "/admin/x")
                .header("x-forwarded-method", "GET")
                .send()
                .await
                .unwrap();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (response.status().as_u16(), challenge)
        }
    };
    let cases = [
        (serde_json::json!({}), 401),
        (serde_json::json!({"amr": ["pwd"]}), 401),
        (serde_json::json!({"amr": "otp"}), 401),
        (serde_json::json!({"acr": "urn:test:other"}), 401),
        (serde_json::json!({"amr": ["pwd", "otp"]}), 200),
        (serde_json::json!({"amr": ["hwk"]}), 200),
        (serde_json::json!({"amr": ["MFA"]}), 200),
        (serde_json::json!({"acr": "urn:test:mfa"}), 200),
    ];
    for (extra, expected) in cases {
        let token = env
            .idp
            .sign(
                serde_json::json!({}),
                access_claims(&env, "svc", extra.clone()),
            )
            .await;
        let (status, challenge) = bearer_status(&env, "/admin/x", &token).await;
        assert_eq!(status, expected, "{extra}");
        if expected == 401 {
            assert!(
                challenge.starts_with("Bearer error=\"insufficient_user_authentication\""),
                "{extra}: {challenge}"
            );
        }
        assert_eq!(bearer_status(&env, "/api", &token).await.0, 200, "{extra}");
        let (status, challenge) = forward_auth(token.clone()).await;
        assert_eq!(
            status,
            if expected == 200 { 202 } else { 401 },
            "forward-auth {extra}"
        );
        if expected == 401 {
            assert!(
                challenge.starts_with("Bearer error=\"insufficient_user_authentication\""),
                "forward-auth {extra}: {challenge}"
            );
        }
    }
}

/// Every malformed `state` at the callback (the reported ones and generated ones: empty,
/// NUL, cookie-attribute injections, overlong, wrong alphabet, padding, one character off)
/// is answered 400 with no Set-Cookie, never a 500, and counted.
#[tokio::test]
async fn a_malformed_callback_state_gets_400_and_no_cookie() {
    use proptest::strategy::{Strategy, ValueTree};
    // Some 160 callbacks from one address: the per-client login rate is not under test here.
    let env = login_env(serde_json::json!({}), "[limits]\nlogin_per_minute = 0\n").await;
    let mut states: Vec<String> = [
        "",
        "\0",
        "x=1; Domain=evil.co",
        "AAAAAAAAAAAAAAAAAAAAAA==",
        "AAAAAAAAAAAAAAAAAAAAAB",
        "AAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAA+/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    states.push("A".repeat(5000));
    let strategy = proptest::prop_oneof![
        proptest::string::string_regex(".{0,40}").unwrap(),
        proptest::string::string_regex("[A-Za-z0-9_=;%+/ \\x00-\\x1f-]{0,30}").unwrap(),
        proptest::string::string_regex("[A-Za-z0-9_-]{21}[^A-Za-z0-9_-]").unwrap(),
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..150 {
        states.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let mut sent = 0.0;
    for state in &states {
        let url = format!(
            "{}?code=abc&state={}",
            env.url("/oauth2/callback"),
            percent_encoding::utf8_percent_encode(state, percent_encoding::NON_ALPHANUMERIC)
        );
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 400, "{state:?}");
        assert!(response.headers().get("set-cookie").is_none(), "{state:?}");
        sent += 1.0;
    }
    // The reported example, exactly as the probe sent it.
    let raw = client()
        .get(env.url("/oauth2/callback?state=x%3D1%3B%20Domain%3Devil.co&code=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.headers().get("set-cookie").is_none());
    let counted = "gatehouse_logins_total{connection=\"-\",result=\"state_invalid\"}";
    assert_eq!(
        env.gh.metric_reaching(counted, sent + 1.0).await,
        sent + 1.0
    );
}

/// The test IdP's metadata says it sends RFC 9207 `iss`: a callback without it, or with
/// another issuer, is refused (400) and gives no session; the untouched one signs in.
#[tokio::test]
async fn a_callback_without_the_promised_iss_or_with_another_is_refused() {
    let env = login_env(serde_json::json!({}), "").await;
    for change in ["drop", "other", "keep"] {
        let browser = Browser::new();
        let journey = browser
            .follow_until(&env.url("/private"), Some(("alice", "alice-pw")), |u| {
                u.path() == "/oauth2/callback"
            })
            .await;
        let callback = journey.url.clone();
        let mut url = reqwest::Url::parse(&callback).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(
            pairs.iter().any(|(k, _)| k == "iss"),
            "the IdP sent no iss: {callback}"
        );
        let kept = pairs
            .into_iter()
            .filter_map(|(k, v)| match (change, k.as_str()) {
                ("drop", "iss") => None,
                ("other", "iss") => Some((k, "http://127.0.0.1:1".to_string())),
                _ => Some((k, v)),
            });
        url.query_pairs_mut().clear().extend_pairs(kept);
        let response = browser.get(url.as_str()).await;
        let expected = if change == "keep" { 302 } else { 400 };
        assert_eq!(response.status(), expected, "{change}");
    }
}

/// A request that came over https (here: `X-Forwarded-Proto: https` from a trusted proxy)
/// is never redirected to an `http://` target, however the scheme is spelled; without
/// https, or when an untrusted peer claims it, the same-host http target is kept.
#[tokio::test]
async fn over_https_a_redirect_never_goes_to_http() {
    let env = login_env(serde_json::json!({}), "").await;
    let trusted = login_env(
        serde_json::json!({}),
        "[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let location = |env: &login_env::LoginEnv, target: String, proto: Option<&'static str>| {
        let url = format!(
            "{}?rd={}",
            env.url("/oauth2/sign_out"),
            percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC)
        );
        async move {
            let mut request = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .get(url);
            if let Some(proto) = proto {
                request = request.header("x-forwarded-proto", proto);
            }
            let response = request.send().await.unwrap();
            response.headers()["location"].to_str().unwrap().to_string()
        }
    };
    for scheme in ["http", "HTTP", "Http"] {
        let target = format!("{scheme}://{}/x", trusted.gh.proxy());
        assert_eq!(
            location(&trusted, target.clone(), Some("https")).await,
            "/",
            "{target}"
        );
        assert_eq!(
            location(&trusted, target.clone(), Some("HTTPS, http")).await,
            "/",
            "{target}"
        );
        assert_eq!(location(&trusted, target.clone(), None).await, target);
        let untrusted = format!("{scheme}://{}/x", env.gh.proxy());
        assert_eq!(
            location(&env, untrusted.clone(), Some("https")).await,
            untrusted
        );
    }
    assert_eq!(location(&trusted, "/x".into(), Some("https")).await, "/x");
}

/// A bearer token's `exp` and `nbf` are judged on Gatehouse's clock with the 30 s leeway:
/// the same token passes up to `exp` + 30 s and is refused (401) one second later; a token
/// not valid before a later time is refused until `nbf` - 30 s and passes from then on.
#[tokio::test]
async fn bearer_token_exp_and_nbf_are_judged_on_gatehouses_clock() {
    let env = manual_login_env(
        serde_json::json!({}),
        &format!("allow_bearer = true\nbearer_audiences = [\"{API}\"]\n"),
    )
    .await;
    let clock = env.gh.clock();
    let start = clock.now();
    let claims = |extra: serde_json::Value| {
        let mut claims = access_claims(&env, "alice", extra);
        claims["iat"] = serde_json::json!(start);
        claims
    };
    let expiring = env
        .idp
        .sign(
            serde_json::json!({}),
            claims(serde_json::json!({"exp": start + 300})),
        )
        .await;
    let later = env
        .idp
        .sign(
            serde_json::json!({}),
            claims(serde_json::json!({"exp": start + 3000, "nbf": start + 600})),
        )
        .await;
    assert_eq!(bearer_status(&env, "/api", &expiring).await.0, 200);
    assert_eq!(
        bearer_status(&env, "/api", &later).await.0,
        401,
        "before nbf"
    );
    clock.advance(Duration::from_secs(569));
    assert_eq!(
        bearer_status(&env, "/api", &later).await.0,
        401,
        "nbf - 31 s"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        bearer_status(&env, "/api", &later).await.0,
        200,
        "nbf - 30 s"
    );

    let expiring = env
        .idp
        .sign(
            serde_json::json!({}),
            claims(serde_json::json!({"exp": start + 600})),
        )
        .await;
    assert_eq!(bearer_status(&env, "/api", &expiring).await.0, 200);
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        bearer_status(&env, "/api", &expiring).await.0,
        200,
        "exp + 30 s"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        bearer_status(&env, "/api", &expiring).await.0,
        401,
        "exp + 31 s"
    );
}
