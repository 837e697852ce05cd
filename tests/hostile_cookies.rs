//! One odd cookie must not log anybody out: Cookie headers are read per pair as bytes, a
//! raw non-ASCII pair (`app=café`, as browsers send it) is skipped alone, Gatehouse's own
//! cookies never reach the app, and sign-out clears a bounded number of chunk names.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use common::{raw_request, raw_status};
use idp::Browser;
use login_env::{echo_json, login_env, sign_in};

/// The session cookie's name, from a signed-in Cookie header.
fn session_name(cookie: &str) -> String {
    cookie
        .split(';')
        .map(str::trim)
        .find(|p| p.starts_with("_gatehouse") || p.starts_with("__Host-"))
        .and_then(|p| p.split_once('='))
        .map(|(k, _)| k.to_string())
        .unwrap_or_else(|| panic!("no session cookie in {cookie}"))
}

/// The Cookie header the app received (lossy), from a raw response.
fn app_cookie(response: &str) -> String {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let echo = echo_json(body);
    echo["headers"]["cookie"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// `app=café` in raw bytes beside a valid session, before or after it, with other odd
/// pairs: the user stays signed in on a protected route, and neither a protected nor a
/// public route passes Gatehouse's cookie to the app (the app keeps its own).
#[tokio::test]
async fn a_raw_non_ascii_cookie_keeps_the_user_signed_in_and_ours_stays_hidden() {
    let env = login_env(serde_json::json!({}), "").await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let name = session_name(&cookie);
    for odd in [
        format!("app=café; {cookie}"),
        format!("{cookie}; app=café"),
        format!("app=café; {cookie}; x=ÿ\t; =; ;; weird"),
        format!("app=\"quoted café\"; {cookie}"),
    ] {
        for path in ["/private", "/public/page"] {
            let response = raw_request(
                env.gh.proxy(),
                &format!(
                    "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: application/json\r\nCookie: {odd}\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(
                raw_status(&response),
                200,
                "{path} with {odd:?}: {response}"
            );
            let seen = app_cookie(&response);
            assert!(
                !seen.contains(&name),
                "{path}: the app saw our cookie: {seen}"
            );
            assert!(
                seen.contains("app="),
                "{path}: the app lost its cookie: {seen}"
            );
        }
    }
}

/// A browser holding `app=café` signs in through the real IdP: the callback finds its login
/// cookie, the app is reached, and the app never sees Gatehouse's cookies.
#[tokio::test]
async fn login_works_with_a_raw_non_ascii_cookie_present() {
    let env = login_env(serde_json::json!({}), "").await;
    let browser = Browser::new();
    browser.add_cookie("app=café; Path=/", &env.url("/"));
    assert!(
        browser
            .cookie_header(&env.url("/"))
            .is_none_or(|c| c.contains("app=")),
        "the jar holds the odd cookie"
    );
    let journey = browser
        .follow(&env.url("/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}\n{}", journey.hops, journey.body);
    let echo = echo_json(&journey.body);
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice");
    let seen = echo["headers"]["cookie"].to_string();
    assert!(
        !seen.contains("_gatehouse"),
        "the app saw our cookie: {seen}"
    );
}

/// Sign-out with 20,000 junk chunk names (and look-alikes) answers with at most the
/// session cookie and its 10 chunks cleared.
#[tokio::test]
async fn sign_out_clears_a_bounded_number_of_chunks() {
    let env = login_env(serde_json::json!({}), "").await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let name = session_name(&cookie);
    let mut pairs: Vec<String> = (0..20_000).map(|i| format!("{name}_{i}=x")).collect();
    pairs.extend(["_01", "_+1", "_-0", "_1 "].map(|s| format!("{name}{s}=x")));
    let junk = pairs.join("; ");
    let response = common::client()
        .get(env.url("/oauth2/sign_out"))
        .header("cookie", &junk)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_redirection(),
        "sign-out answered {}",
        response.status()
    );
    let cleared: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
    assert!(
        !cleared.is_empty() && cleared.len() <= 11,
        "{} Set-Cookie headers",
        cleared.len()
    );
}
