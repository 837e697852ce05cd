//! The path attacks an outside review reported, sent over the wire: path parameters
//! (`..;`, `/admin;x`), double encoding (`%252e`) and overlong UTF-8 (`%c0%ae`). Each is
//! refused with 400, or stays protected; none reaches a protected path as public or dodges an
//! `[[access]]` rule.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use common::{raw_json, raw_request, raw_status, start, Harness};
use idp::Browser;
use login_env::login_env;
use serde_json::json;

const RULES: &str = r#"
[[public]]
path = "/public"
match = "prefix"
"#;

async fn get(h: &Harness, target: &str) -> (u16, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    let response = raw_request(h.proxy(), &request).await;
    (raw_status(&response), response)
}

/// Every spelling of the reported tricks is refused (400) or treated as protected (401).
#[tokio::test]
async fn reported_path_tricks_are_refused_or_stay_protected() {
    let h = start(RULES).await;
    for (target, expected) in [
        ("/public/..;/private/x", 400),
        ("/public/..;x/private/x", 400),
        ("/public/.;x/private", 400),
        ("/public/%2e%2e;/private/x", 400),
        ("/public/%2E.;x/private/x", 400),
        ("/public/%252e%252e/private/x", 400),
        ("/public/%252E%252E/private/x", 400),
        ("/public/%25%32%65%25%32%65/private/x", 400),
        ("/public%252fprivate", 400),
        ("/public%255cprivate", 400),
        ("/public/%2525252e", 400),
        ("/public/%c0%ae%c0%ae/private/x", 400),
        ("/public/%C0%AE%C0%AE/private/x", 400),
        ("/public/%e0%80%ae%e0%80%ae/private/x", 400),
        ("/public/%c0%af/private", 400),
        ("/public/%ed%a0%80", 400),
        ("/public/%80", 400),
        ("/public%3b/private", 400),
        ("/public;x/private", 401),
        ("/public;/private", 401),
        ("/PUBLIC;x/private", 401),
    ] {
        let (status, response) = get(&h, target).await;
        assert_eq!(status, expected, "{target}: {response}");
    }
}

/// Path parameters on a public path are forwarded as sent; valid UTF-8 escapes pass.
#[tokio::test]
async fn parameters_and_valid_utf8_escapes_are_forwarded_unchanged() {
    let h = start(RULES).await;
    for (target, seen) in [
        ("/public/a;jsessionid=1", "/public/a;jsessionid=1"),
        ("/public/caf%c3%a9", "/public/caf%C3%A9"),
        ("/public/50%25off", "/public/50%25off"),
    ] {
        let (status, response) = get(&h, target).await;
        assert_eq!(status, 200, "{target}: {response}");
        assert_eq!(raw_json(&response)["path"], seen, "{target}");
    }
}

/// `[server] reject_double_encoding = false` lets a double-encoded path through, still
/// encoded; overlong UTF-8 and `..;` stay refused.
#[tokio::test]
async fn double_encoding_passes_only_when_turned_off() {
    let upstream = common::start_echo().await;
    let config = common::config_text(upstream.addr, RULES)
        .replace("[server]\n", "[server]\nreject_double_encoding = false\n");
    let h = common::start_with(upstream, &config);
    let (status, response) = get(&h, "/public/%252e%252e/x").await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(raw_json(&response)["path"], "/public/%252e%252e/x");
    assert_eq!(get(&h, "/public/%c0%ae%c0%ae/x").await.0, 400);
    assert_eq!(get(&h, "/public/..;/x").await.0, 400);
}

/// A signed-in user outside `admins` cannot dodge the `/admin` rule with path parameters in
/// any spelling; an admin reaches the same paths, parameters intact.
#[tokio::test]
async fn path_parameters_do_not_dodge_an_access_rule() {
    let user = |groups: serde_json::Value| json!({"password": "pw", "claims": {"email": "u@example.com", "email_verified": true, "groups": groups}});
    let env = login_env(
        json!({"users": {"dave": user(json!(["staff"])), "alice": user(json!(["admins"]))}}),
        "[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"admins\"]\n",
    )
    .await;
    let signed_in = |login: &'static str| {
        let url = env.url("/");
        async move {
            let browser = Browser::new();
            let journey = browser.follow(&url, Some((login, "pw"))).await;
            assert_eq!(journey.status, 200, "{login}: {:?}", journey.hops);
            browser
        }
    };
    let dave = signed_in("dave").await;
    let alice = signed_in("alice").await;
    for path in [
        "/admin;x/users",
        "/admin;/users",
        "/admin;x",
        "/ADMIN/..;x/admin",
        "/x;y/../admin;z/users",
        "/admin/;x/users",
    ] {
        let status = dave.get(&env.url(path)).await.status().as_u16();
        let expected = if path.contains("..;") { 400 } else { 403 };
        assert_eq!(status, expected, "dave {path}");
    }
    let response = alice.get(&env.url("/admin;x/users")).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["path"], "/admin;x/users");
}
