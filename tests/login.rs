//! The login dance against a real OpenID provider (`tests/idp`, oidc-provider on loopback),
//! driven by an HTTP client with a cookie jar through the IdP's login form.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::Duration;

use common::{client, get_status, start_echo, start_with};
use idp::{client_config, Browser, TestIdp};
use login_env::{echo_json, free_port, login_env, sign_in, LoginEnv};

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

/// When the access token expires, the next request refreshes it once and goes through.
#[tokio::test]
async fn an_expired_access_token_is_refreshed_on_the_next_request() {
    let env = login_env(serde_json::json!({"ttl": {"AccessToken": 2}}), "").await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
    let success = env
        .gh
        .metric("gatehouse_session_refresh_total{result=\"success\"}")
        .await;
    assert_eq!(success, 1.0, "parallel requests share one refresh");
}

/// An IdP that is down at startup: public routes are served, `/ready` is false, and a login
/// attempt gets a clear 502 page.
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
        503
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
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
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
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_listen = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n[[upstreams]]\nurl = \"http://{upstream}\"\n",
        data.path().display()
    );
    for (id, idp) in [("first", &first), ("second", &second)] {
        config.push_str(&format!(
            "[[connections]]\nid = \"{id}\"\ndisplay_name = \"The {id} IdP\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\nclient_secret = \"gatehouse-secret\"\n",
            idp.issuer
        ));
    }
    let gh = start_with(upstream, &config);
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
