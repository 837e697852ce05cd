//! Spoofed identity headers never reach the app, whatever their spelling; a client cannot
//! make Gatehouse's own headers disappear through `Connection`; other proxies' identity
//! headers are stripped by default. Over HTTP/1.1 and h2c, on public and protected routes.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{raw_json, raw_request, raw_status, start};
use login_env::{login_env, sign_in};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Headers Gatehouse sets or owns, canonical (lower-case, `-`), as a client would name them.
const OWNED: &[&str] = &[
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-department",
    "x-gatehouse-user-id",
    "x-gatehouse-roles",
    "x-gatehouse-name",
    "x-gatehouse-connection",
    "x-gatehouse-identity",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

/// Other proxies' identity headers (a sample of each listed name and prefix).
const FOREIGN: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-remote-user",
    "x-authenticated-user",
    "x-webauth-user",
    "x-authentik-username",
    "x-pomerium-jwt-assertion",
    "x-vouch-user",
    "x-amzn-oidc-identity",
    "oidc-claim-email",
    "oidc-access-token",
    "x-ms-client-principal-name",
    "cf-access-authenticated-user-email",
];

/// A spelling of a canonical name: any letter in either case, any `-` as `_`.
fn spelling(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<bool>(), any::<bool>()), name.len()).prop_map(move |flips| {
        name.bytes()
            .zip(flips)
            .map(|(b, (up, us))| match b {
                b'-' if us => '_',
                b if up => b.to_ascii_uppercase() as char,
                b => b as char,
            })
            .collect()
    })
}

/// `n` generated values of `strategy` (deterministic per run of the strategy's RNG).
fn samples<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = proptest::test_runner::TestRunner::default();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// A hostile `Connection` value: owned and foreign names in random spellings (a few, as in
/// the reported attack, or all of them), one twice, with random spaces, plus tokens that must
/// stay (`keep-alive`, `X-App-Hop`).
fn hostile_connection() -> impl Strategy<Value = String> {
    let all: Vec<&'static str> = OWNED.iter().chain(FOREIGN).copied().collect();
    let count = all.len();
    proptest::sample::subsequence(all, 1..=count)
        .prop_flat_map(|names| {
            let spelled: Vec<BoxedStrategy<String>> =
                names.into_iter().map(|n| spelling(n).boxed()).collect();
            (
                spelled,
                proptest::collection::vec(0usize..3, 64),
                any::<u64>(),
            )
        })
        .prop_map(|(mut tokens, spaces, seed)| {
            let dup = tokens[(seed as usize) % tokens.len()].clone();
            tokens.push(dup);
            tokens.push("keep-alive".into());
            tokens.push("X-App-Hop".into());
            let shift = (seed as usize >> 8) % tokens.len();
            tokens.rotate_left(shift);
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    format!(
                        "{}{t}{}",
                        " ".repeat(spaces[i % 64]),
                        " ".repeat(spaces[(i + 7) % 64])
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
}

/// The echo app's view of the headers: name -> values.
fn echoed(response: &str) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(raw_json(response)["headers"].clone()).expect("headers")
}

/// Sends `GET path` over HTTP/1.1 with these extra header lines; returns the app's view.
async fn h1_get(addr: SocketAddr, path: &str, lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n");
    for line in lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("X-App-Hop: dropped-by-its-own-nomination\r\n\r\n");
    // `Connection: close` is not sent: a hostile Connection header is the only one.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    // keep-alive may hold the connection open: read until the JSON body is complete.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    let response = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(raw_status(&response), 200, "{response}");
    echoed(&response)
}

/// Every header the baseline request got from Gatehouse is still there, with the same value
/// (the request id differs per request), and the app's own nominated hop is gone.
fn assert_all_gatehouse_headers_kept(
    baseline: &BTreeMap<String, Vec<String>>,
    attacked: &BTreeMap<String, Vec<String>>,
    connection: &str,
) {
    for (name, values) in baseline {
        let set_by_gatehouse = OWNED.contains(&name.as_str());
        if !set_by_gatehouse {
            continue;
        }
        let got = attacked
            .get(name)
            .unwrap_or_else(|| panic!("{name} removed by Connection: {connection}"));
        if name != "x-request-id" {
            assert_eq!(got, values, "{name} changed by Connection: {connection}");
        }
    }
    assert!(
        !attacked.contains_key("x-app-hop"),
        "the app's own Connection token was lost: {connection}"
    );
    for name in attacked.keys() {
        let canonical = name.replace('_', "-");
        assert!(
            !FOREIGN.contains(&canonical.as_str()),
            "{name} reached the app"
        );
    }
}

/// On a public route, naming any of Gatehouse's headers in `Connection` (any case, `_`,
/// spaces, duplicates) does not remove it: the app still gets every forwarding header and
/// the request id, and the client's other tokens still work.
#[tokio::test]
async fn connection_cannot_remove_gatehouse_headers_on_a_public_route() {
    let h = start("[[public]]\npath = \"/open\"\n").await;
    let baseline = h1_get(h.proxy(), "/open", &[]).await;
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-request-id",
    ] {
        assert!(
            baseline.contains_key(name),
            "baseline lacks {name}: {baseline:?}"
        );
    }
    for connection in samples(hostile_connection(), 48) {
        let attacked = h1_get(h.proxy(), "/open", &[format!("Connection: {connection}")]).await;
        assert_all_gatehouse_headers_kept(&baseline, &attacked, &connection);
    }
}

/// On a protected route with a signed-in user, the identity headers (user, email, groups,
/// preferred username, attribute, name, connection) survive any hostile `Connection`, with
/// foreign identity headers sent alongside.
#[tokio::test]
async fn connection_cannot_remove_identity_headers_on_a_protected_route() {
    let extra = "jit = false\nclaims = { attributes = [\"department\"] }\n\
                 [headers.attributes]\ndepartment = \"X-Auth-Request-Department\"\n";
    let env = login_env(serde_json::json!({}), extra).await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let addr = env.gh.proxy();
    let cookie_line = format!("Cookie: {cookie}");
    let baseline = h1_get(addr, "/private", std::slice::from_ref(&cookie_line)).await;
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-department",
        "x-gatehouse-connection",
        "x-real-ip",
    ] {
        assert!(
            baseline.contains_key(name),
            "baseline lacks {name}: {baseline:?}"
        );
    }
    let foreign: Vec<String> = samples(
        proptest::sample::select(FOREIGN.to_vec()).prop_flat_map(spelling),
        FOREIGN.len() * 2,
    )
    .into_iter()
    .map(|n| format!("{n}: mallory"))
    .collect();
    for connection in samples(hostile_connection(), 32) {
        let mut lines = vec![cookie_line.clone(), format!("Connection: {connection}")];
        lines.extend(foreign.iter().cloned());
        let attacked = h1_get(addr, "/private", &lines).await;
        assert_all_gatehouse_headers_kept(&baseline, &attacked, &connection);
    }
}

/// Other proxies' identity headers in every generated spelling are stripped on public and
/// protected routes (HTTP/1.1), while the forwarding headers keep working.
#[tokio::test]
async fn foreign_identity_headers_are_stripped_by_default() {
    let h =
        start("[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[public]]\npath = \"/open\"\n")
            .await;
    let spellings = samples(
        proptest::sample::select(FOREIGN.to_vec()).prop_flat_map(spelling),
        200,
    );
    for chunk in spellings.chunks(20) {
        let mut lines: Vec<String> = chunk.iter().map(|n| format!("{n}: mallory")).collect();
        lines.extend(chunk.iter().map(|n| format!("{n}: mallory-again")));
        lines.push("X-Forwarded-For: 203.0.113.9".into());
        let seen = h1_get(h.proxy(), "/open", &lines).await;
        for name in seen.keys() {
            assert!(
                !FOREIGN.contains(&name.replace('_', "-").as_str()),
                "{name} reached the app"
            );
        }
        assert_eq!(seen["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
        assert_eq!(seen["x-real-ip"][0], "203.0.113.9");
    }
    // Every removed name is counted, as a sign of someone trying.
    let counted = h
        .metric("gatehouse_spoofed_headers_total{kind=\"header\"}")
        .await;
    assert!(counted >= spellings.len() as f64 / 2.0, "counted {counted}");
    // protected: without a session nothing is proxied; with one, see the protected test.
}

/// `strip_foreign_identity = false` lets other proxies' headers through (for a chain where a
/// trusted proxy in front sets them); Gatehouse's own names are still stripped.
#[tokio::test]
async fn strip_foreign_identity_false_keeps_them() {
    let h =
        start("[headers]\nstrip_foreign_identity = false\n[[public]]\npath = \"/open\"\n").await;
    let seen = h1_get(
        h.proxy(),
        "/open",
        &[
            "Remote-User: front".into(),
            "X-Forwarded-User: front".into(),
            "X-Auth-Request-User: mallory".into(),
        ],
    )
    .await;
    assert_eq!(seen["remote-user"][0], "front");
    assert_eq!(seen["x-forwarded-user"][0], "front");
    assert!(!seen.contains_key("x-auth-request-user"));
}

// ---------------------------------------------------------------- h2c, raw frames --

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// One header as an HPACK literal without indexing, new name, no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What a raw h2c GET came back with.
#[derive(Debug)]
enum H2Outcome {
    /// `:status 200` and the app's JSON.
    Ok(BTreeMap<String, Vec<String>>),
    /// The stream or connection was refused (RST_STREAM, GOAWAY, closed).
    Refused,
    /// Another status (first HPACK byte of the response).
    Status(u8),
}

/// Sends one h2c (prior knowledge) GET with these headers (names lower-case, as h2 wants),
/// written by hand so that headers a well-behaved client refuses to send (`connection`) go
/// out as they are.
async fn h2c_get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> H2Outcome {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "app.test"),
    ] {
        hpack_literal(&mut block, n, v);
    }
    for (n, v) in headers {
        hpack_literal(&mut block, n, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x5, 1, &block));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&out).await.unwrap();
    let mut status = None;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else {
            return H2Outcome::Refused;
        };
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        match kind {
            4 if flags & 1 == 0 => stream.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
            1 if id == 1 => {
                status = payload.first().copied();
                if flags & 1 != 0 {
                    break;
                }
            }
            0 if id == 1 => {
                body.extend_from_slice(&payload);
                if flags & 1 != 0 {
                    break;
                }
            }
            3 if id == 1 => return H2Outcome::Refused,
            7 => return H2Outcome::Refused,
            _ => {}
        }
    }
    match status {
        Some(0x88) => {
            let json: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
            H2Outcome::Ok(serde_json::from_value(json["headers"].clone()).unwrap())
        }
        Some(other) => H2Outcome::Status(other),
        None => H2Outcome::Refused,
    }
}

/// Over h2c, `connection` is a malformed request (RFC 9113 8.2.2) and is refused; whatever
/// the spelling, no request reaches the app without Gatehouse's headers. Foreign identity
/// headers in `_` spellings are stripped on a public and a protected route.
#[tokio::test]
async fn h2c_cannot_remove_gatehouse_headers_and_foreign_ones_are_stripped() {
    let extra = "jit = false\n";
    let env = login_env(serde_json::json!({}), extra).await;
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let addr = env.gh.proxy();
    let session = ("cookie".to_string(), cookie.clone());
    let H2Outcome::Ok(baseline) = h2c_get(addr, "/private", std::slice::from_ref(&session)).await
    else {
        panic!("a plain h2c request through Gatehouse failed")
    };
    assert_eq!(baseline["x-auth-request-user"][0], "alice");
    for connection in samples(hostile_connection(), 12) {
        let headers = vec![
            session.clone(),
            ("connection".into(), connection.to_ascii_lowercase()),
        ];
        match h2c_get(addr, "/private", &headers).await {
            H2Outcome::Ok(seen) => assert_all_gatehouse_headers_kept(&baseline, &seen, &connection),
            H2Outcome::Refused => {}
            H2Outcome::Status(s) => panic!("unexpected status byte {s:#x}"),
        }
    }
    let foreign: Vec<(String, String)> = samples(
        proptest::sample::select(FOREIGN.to_vec()).prop_flat_map(spelling),
        40,
    )
    .into_iter()
    .map(|n| (n.to_ascii_lowercase(), "mallory".to_string()))
    .collect();
    for path in ["/private", "/public/x"] {
        let mut headers = foreign.clone();
        headers.push(session.clone());
        headers.push(("x_auth_request_user".into(), "mallory".into()));
        headers.push(("x_real_ip".into(), "6.6.6.6".into()));
        let H2Outcome::Ok(seen) = h2c_get(addr, path, &headers).await else {
            panic!("h2c request to {path} failed")
        };
        for name in seen.keys() {
            assert!(
                !FOREIGN.contains(&name.replace('_', "-").as_str()),
                "{name} reached the app on {path}"
            );
            assert!(!name.contains('_'), "{name} reached the app on {path}");
        }
        assert_eq!(seen["x-real-ip"][0], "127.0.0.1");
        if path == "/private" {
            assert_eq!(seen["x-auth-request-user"][0], "alice");
        }
    }
}
