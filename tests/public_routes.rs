//! Public rules cannot be widened by path tricks: they match the normalized path only, and
//! what was matched is what the upstream receives.

mod common;

use common::{raw_json, raw_request, raw_status, start, Harness};

const RULES: &str = r#"
[[public]]
path = "/public"
match = "prefix"
methods = ["GET"]

[[public]]
path = "/docs"
match = "prefix"
case_sensitive = false
"#;

async fn status_of(h: &Harness, target: &str, method: &str) -> (u16, String) {
    let request = format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: application/json\r\n\r\n");
    let response = raw_request(h.proxy(), &request).await;
    (raw_status(&response), response)
}

/// Each trick either reaches the upstream as the path it really is, or is refused, or is
/// treated as protected (401); none reaches a private path as public.
#[tokio::test]
async fn path_tricks_do_not_widen_a_public_rule() {
    let h = start(RULES).await;
    for (target, expected) in [
        ("/public/../private", 401),
        ("/public/%2e%2e/private", 401),
        ("/public%2f..%2fprivate", 400),
        ("/public%2F..%2Fprivate", 400),
        ("/public/..%5cprivate", 400),
        ("/public/..\\private", 400),
        ("/public/%00", 400),
        ("/../public", 400),
        ("/private?x=/public", 401),
        // The HTTP parser drops the fragment: what is left is /private, still protected.
        ("/private#/public", 401),
        ("/PUBLIC", 401),
        ("/publicity", 401),
    ] {
        let (status, response) = status_of(&h, target, "GET").await;
        assert_eq!(status, expected, "{target}: {response}");
    }
}

/// Equivalent spellings of a public path are let through, and the upstream sees the
/// normalized path, not the spelling that was checked.
#[tokio::test]
async fn equivalent_spellings_reach_the_upstream_normalized() {
    let h = start(RULES).await;
    for (target, seen) in [
        ("/%70ublic", "/public"),
        ("//public", "/public"),
        ("/public/./a//b", "/public/a/b"),
        ("/x/../public/a", "/public/a"),
        ("/DOCS/Guide", "/DOCS/Guide"),
    ] {
        let (status, response) = status_of(&h, target, "GET").await;
        assert_eq!(status, 200, "{target}: {response}");
        assert_eq!(raw_json(&response)["path"], seen, "{target}");
    }
}

/// The query is passed on untouched and never matched.
#[tokio::test]
async fn the_query_is_forwarded_but_never_matched() {
    let h = start(RULES).await;
    let (status, response) = status_of(&h, "/public/a?next=/private&x=%2f", "GET").await;
    assert_eq!(status, 200);
    assert_eq!(raw_json(&response)["query"], "next=/private&x=%2f");
}

/// Methods are compared exactly: a lower-case `get` is not `GET`.
#[tokio::test]
async fn lower_case_or_other_methods_do_not_match_a_get_rule() {
    let h = start(RULES).await;
    assert_eq!(status_of(&h, "/public", "POST").await.0, 401);
    assert_ne!(status_of(&h, "/public", "get").await.0, 200);
}

/// A protected request from a browser is sent to log in, with the original target in `rd`;
/// an API client gets 401 with a challenge.
#[tokio::test]
async fn protected_requests_get_a_login_redirect_or_a_401() {
    let h = start(RULES).await;
    let browser = raw_request(
        h.proxy(),
        "GET /private/x?a=1&b=2 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: text/html\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&browser), 302, "{browser}");
    assert!(
        browser
            .to_ascii_lowercase()
            .contains("location: /oauth2/start?rd=%2fprivate%2fx%3fa%3d1%26b%3d2"),
        "{browser}"
    );
    for request in [
        "GET /private HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: application/json\r\n\r\n",
        "GET /private HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: text/html\r\nX-Requested-With: XMLHttpRequest\r\n\r\n",
        "POST /private HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: text/html\r\nContent-Length: 0\r\n\r\n",
    ] {
        let response = raw_request(h.proxy(), request).await;
        assert_eq!(raw_status(&response), 401, "{response}");
        assert!(response.to_ascii_lowercase().contains("www-authenticate: bearer"), "{response}");
    }
}

/// Reserved paths are Gatehouse's: `/ping`, `/ready`, and `/oauth2/*` (404 until login lands).
#[tokio::test]
async fn reserved_paths_are_answered_by_gatehouse() {
    let h = start("").await;
    assert_eq!(status_of(&h, "/ping", "GET").await.0, 200);
    assert_eq!(status_of(&h, "/ready", "GET").await.0, 200);
    assert_eq!(status_of(&h, "/oauth2/userinfo", "GET").await.0, 404);
}

/// A request that no upstream covers gets 404 from Gatehouse.
#[tokio::test]
async fn a_request_no_upstream_covers_gets_404() {
    let upstream = common::start_echo().await;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nhost = \"app.test\"\nurl = \"http://{upstream}\"\n[[public]]\npath = \"/\"\nmatch = \"prefix\"\n"
    );
    let h = common::start_with(upstream, &config);
    let ok = raw_request(
        h.proxy(),
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&ok), 200);
    let other = raw_request(
        h.proxy(),
        "GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&other), 404);
}
