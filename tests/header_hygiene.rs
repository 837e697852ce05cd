//! Spoofed identity headers never reach the app, whatever their spelling.

mod common;

use common::{raw_json, raw_request, raw_status, start};

const SPOOFS: &[&str] = &[
    "X-Auth-Request-User: mallory",
    "x-auth-request-user: mallory",
    "X-AUTH-REQUEST-EMAIL: mallory@evil.example",
    "X_Auth_Request_User: mallory",
    "x_auth_request_email: mallory@evil.example",
    "X-Auth-Request_Groups: admins",
    "X-Auth-Request-Preferred-Username: root",
    "X-Gatehouse-User-Id: 1",
    "X-Gatehouse-Anything: 1",
    "x_gatehouse_connection: evil",
    "X-Custom-Trust: yes",
];

/// Every spelling, case and duplicate of an owned header is removed before the request is
/// proxied, while ordinary headers pass.
#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let h = start("[headers]\nstrip = [\"X-Custom-Trust\"]\n[[public]]\npath = \"/open\"\n").await;
    let mut request = String::from(
        "GET /open HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Ordinary: kept\r\n",
    );
    for spoof in SPOOFS {
        request.push_str(spoof);
        request.push_str("\r\n");
        // and a duplicate of each
        request.push_str(spoof);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let response = raw_request(h.proxy(), &request).await;
    assert_eq!(raw_status(&response), 200, "{response}");
    let echo = raw_json(&response);
    let headers = echo["headers"].as_object().expect("headers");
    for name in headers.keys() {
        let canonical = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !canonical.starts_with("x-auth-request")
                && !canonical.starts_with("x-gatehouse")
                && canonical != "x-custom-trust",
            "{name} reached the upstream"
        );
    }
    assert_eq!(headers["x-ordinary"][0], "kept");
}

/// Forwarding headers from an untrusted client are replaced with what Gatehouse saw.
#[tokio::test]
async fn untrusted_clients_cannot_forge_forwarding_headers() {
    let h = start("[[public]]\npath = \"/open\"\n").await;
    let response = raw_request(
        h.proxy(),
        "GET /open HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    let headers = &raw_json(&response)["headers"];
    assert_eq!(headers["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(headers["x-real-ip"][0], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-forwarded-host"][0], "app.test");
}

/// A trusted proxy's chain is kept and extended.
#[tokio::test]
async fn a_trusted_proxy_chain_is_extended() {
    let h =
        start("[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[public]]\npath = \"/open\"\n")
            .await;
    let response = raw_request(
        h.proxy(),
        "GET /open HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    )
    .await;
    let headers = &raw_json(&response)["headers"];
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-real-ip"][0], "203.0.113.9");
}
