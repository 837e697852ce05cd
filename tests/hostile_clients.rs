//! Hostile and careless clients: every connection has a deadline (slowloris in its
//! variants), the connection limits hold while the admin listener stays reachable, a stalled
//! HTTP/2 stream gives its upstream connection back, and client mistakes answer 4xx.
//!
//! Deadlines in these configs are short (1 s) and every wait is bounded by "deadline + 3 s":
//! generous upper bounds, no tight timing.

mod common;
#[path = "common/logs.rs"]
mod logs;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{dead_port, start_echo, start_with, Harness};
use logs::logs;

/// The bound for "closed or answered within the deadline": the 1 s deadline + 3 s.
const BOUND: Duration = Duration::from_secs(4);

/// A config with 1 s client deadlines, an open (public) app, and `extra` `[server]` keys and
/// tables.
fn config(upstream: SocketAddr, server_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "1s"
client_header_timeout = "1s"
client_body_timeout = "1s"
client_idle_timeout = "1s"
client_write_timeout = "1s"
{server_extra}

[log]
access_log = false

[[upstreams]]
id = "app"
url = "http://{upstream}"
read_timeout = "10s"
connect_timeout = "1s"

[[public]]
path = "/"
match = "prefix"

{extra}
"#
    )
}

async fn start(server_extra: &str) -> Harness {
    let upstream = start_echo().await;
    let text = config(upstream.addr, server_extra, "");
    start_with(upstream, &text)
}

/// A Gatehouse with a login connection (to an IdP that is not there: the endpoints under test
/// never reach it) and its store in `data`.
async fn start_with_login(data: &tempfile::TempDir) -> Harness {
    let upstream = start_echo().await;
    let extra = format!(
        r#"
[store]
data_dir = "{data}"
[session]
cookie_secure = false
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[[connections]]
id = "test"
issuer = "http://{idp}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
"#,
        data = data.path().display(),
        idp = dead_port(),
    );
    let text = config(upstream.addr, "", &extra);
    start_with(upstream, &text)
}

/// Reads until the peer closes (EOF or error) or `within` passes. Returns what was read and
/// whether the connection was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads until a whole response head is in (or `within` passes), without waiting for a close.
async fn read_head(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A silent socket, a trickled head, a partial h2 preface: each is closed within the head
/// deadline, without an answer, and counted as a header timeout.
#[tokio::test]
async fn slow_or_silent_request_heads_are_closed_within_the_header_deadline() {
    let h = start("").await;
    let variants: [(&str, &[u8], bool); 4] = [
        ("silent", b"", false),
        ("trickled head", b"GET / HTTP/1.1\r\nHost: a\r\n", true),
        ("partial h2 preface", b"PRI * HTTP/2.0\r\n", false),
        ("one byte", b"G", true),
    ];
    for (name, first, trickle) in variants {
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream.write_all(first).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let trickler = tokio::spawn(async move {
            // One header byte every 200 ms, for at most 10 s: never a whole head. The write
            // half stays open either way (dropping it would send a FIN).
            for _ in 0..50 {
                if trickle && writer.write_all(b"X").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            drop(writer);
        });
        let mut out = Vec::new();
        let closed = tokio::time::timeout(BOUND, reader.read_to_end(&mut out))
            .await
            .is_ok();
        trickler.abort();
        assert!(closed, "{name}: still open after {BOUND:?}");
        assert!(
            !String::from_utf8_lossy(&out).contains("200 OK"),
            "{name}: answered"
        );
    }
    let timeouts = h
        .metric_reaching("gatehouse_client_timeouts_total{kind=\"header\"}", 4.0)
        .await;
    assert_eq!(timeouts, 4.0);
}

/// Requests shorter than the 24-byte h2 preface (HAProxy's `OPTIONS / HTTP/1.0` check and
/// friends) are answered at once, not held until the preface could be complete.
#[tokio::test]
async fn requests_shorter_than_the_h2_preface_are_answered() {
    let h = start("").await;
    for request in [
        "OPTIONS / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
        "HEAD / HTTP/1.0\r\n\r\n",
        "GET /x HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:a\r\n\r\n",
    ] {
        assert!(request.len() < 24 || request.starts_with("GET / HTTP/1.1"));
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // The client keeps its side open and waits: the answer must come anyway.
        let head = read_head(&mut stream, Duration::from_millis(900)).await;
        assert!(
            status_of(&head).is_some(),
            "{request:?}: no answer within the head deadline: {head:?}"
        );
    }
}

/// A keep-alive connection left idle after a response is closed within the idle deadline,
/// and counted.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = start("").await;
    let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream, BOUND).await;
    assert_eq!(status_of(&head), Some(200), "{head}");
    let (_, closed) = read_until_closed(&mut stream, BOUND).await;
    assert!(closed, "idle connection still open after {BOUND:?}");
    assert_eq!(
        h.metric_reaching("gatehouse_client_timeouts_total{kind=\"idle\"}", 1.0)
            .await,
        1.0
    );
}

/// A connection that keeps sending requests is not idle: it outlives the idle deadline.
#[tokio::test]
async fn a_busy_keep_alive_connection_stays_open_past_the_idle_deadline() {
    let h = start("").await;
    let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
    for i in 0..6 {
        stream
            .write_all(format!("GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut stream, BOUND).await;
        assert_eq!(status_of(&head), Some(200), "request {i}: {head}");
        // Drain the body (small JSON), then pause well inside the idle deadline.
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf).await;
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// A request body that stalls is answered 408 within the body deadline, on a proxied route
/// and on Gatehouse's own form endpoints (never 500), and counted with its own reason.
#[tokio::test]
async fn a_stalled_request_body_is_answered_408() {
    let data = tempfile::tempdir().unwrap();
    let h = start_with_login(&data).await;
    // (A proxied route: a_stalled_proxied_request_body_is_answered_408_and_releases_the_upstream.)
    for path in ["/oauth2/mfa", "/oauth2/backchannel-logout"] {
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nlogout_token=abc"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (response, _) = read_until_closed(&mut stream, BOUND).await;
        assert_eq!(status_of(&response), Some(408), "{path}: {response:?}");
    }
    assert_eq!(
        h.metric_reaching(
            "gatehouse_client_errors_total{reason=\"body_timeout\"}",
            2.0
        )
        .await,
        2.0
    );
}

/// A request body that ends early (the client closes its side) is a 400 on Gatehouse's own
/// form endpoints, not a 500.
#[tokio::test]
async fn an_aborted_request_body_is_answered_400() {
    let data = tempfile::tempdir().unwrap();
    let h = start_with_login(&data).await;
    for path in ["/oauth2/mfa", "/oauth2/backchannel-logout"] {
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nshort")
                    .as_bytes(),
            )
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let (response, _) = read_until_closed(&mut stream, BOUND).await;
        assert_eq!(status_of(&response), Some(400), "{path}: {response:?}");
    }
    assert_eq!(
        h.metric_reaching(
            "gatehouse_client_errors_total{reason=\"body_aborted\"}",
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        h.metric("gatehouse_http_requests_total{code=\"500\",kind=\"auth\"}")
            .await,
        0.0
    );
}

/// `Expect: 100-continue` on Gatehouse's own form endpoints gets its `100 Continue` before
/// the body is sent (curl posting a form does not wait a second).
#[tokio::test]
async fn expect_100_continue_is_answered_on_the_own_endpoints() {
    let data = tempfile::tempdir().unwrap();
    let h = start_with_login(&data).await;
    for path in ["/oauth2/mfa", "/oauth2/backchannel-logout"] {
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // Well before the body deadline: the interim answer, without any body sent.
        let head = read_head(&mut stream, Duration::from_millis(800)).await;
        assert!(head.starts_with("HTTP/1.1 100"), "{path}: {head:?}");
        stream.write_all(b"a=b").await.unwrap();
        let rest = read_head(&mut stream, BOUND).await;
        let status = status_of(&rest).unwrap_or(0);
        assert!((300..500).contains(&status), "{path}: {rest:?}");
    }
}

/// A malformed Host is a 400 on every route, `/oauth2/start` included (not "sign-in
/// unavailable", not counted as an unreachable IdP); HTTP/1.1 without Host is a 400.
#[tokio::test]
async fn a_malformed_or_missing_host_is_a_400_everywhere() {
    let data = tempfile::tempdir().unwrap();
    let h = start_with_login(&data).await;
    let hosts = [
        "a b",
        "[zz]",
        "127.0.0.1:99999",
        "a.999",
        "x:",
        "[::1",
        "host:80:80",
    ];
    let paths = [
        "/oauth2/start",
        "/app",
        "/ping",
        "/oauth2/callback?state=x&code=y",
    ];
    for path in paths {
        for host in hosts {
            let response = common::raw_request(
                h.proxy(),
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(
                status_of(&response),
                Some(400),
                "{path} Host {host:?}: {response:?}"
            );
        }
        let response = common::raw_request(
            h.proxy(),
            &format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            status_of(&response),
            Some(400),
            "{path} without Host: {response:?}"
        );
        let response = common::raw_request(
            h.proxy(),
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            status_of(&response),
            Some(400),
            "{path} with two Hosts: {response:?}"
        );
    }
    assert_eq!(
        h.metric("gatehouse_logins_total{connection=\"test\",result=\"idp_unavailable\"}")
            .await,
        0.0
    );
    assert!(
        h.metric("gatehouse_client_errors_total{reason=\"bad_host\"}")
            .await
            >= (hosts.len() * paths.len()) as f64
    );
}

/// The per-address limit closes a connection beyond it at once and counts it; connections
/// within it are served.
#[tokio::test]
async fn the_per_address_limit_refuses_extra_connections_fast() {
    let upstream = start_echo().await;
    let text = config(upstream.addr, "max_connections_per_ip = 3", "").replace(
        "client_header_timeout = \"1s\"",
        "client_header_timeout = \"30s\"",
    );
    let h = start_with(upstream, &text);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(h.proxy()).await.unwrap());
    }
    assert_eq!(
        h.metric_reaching("gatehouse_connections_open{listener=\"proxy\"}", 3.0)
            .await,
        3.0
    );
    let mut extra = TcpStream::connect(h.proxy()).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (response, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(closed && response.is_empty(), "{response:?}");
    assert_eq!(
        h.metric("gatehouse_connections_rejected_total{listener=\"proxy\",reason=\"max_connections_per_ip\"}")
            .await,
        1.0
    );
    drop(held);
    assert_eq!(
        h.metric_reaching("gatehouse_connections_open{listener=\"proxy\"}", 0.0)
            .await,
        0.0
    );
}

/// An upstream that counts its open connections and answers every request with a large body
/// (1 MiB: more than any buffer between it and a client that takes nothing).
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let open = counter.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let body = vec![b'x'; 1 << 20];
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                'conn: loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                        body.len()
                    );
                    if socket.write_all(head.as_bytes()).await.is_err()
                        || socket.write_all(&body).await.is_err()
                    {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Waits (bounded) until `open` reaches `expected`; returns the last value.
async fn wait_for(open: &AtomicUsize, expected: usize, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = open.load(Ordering::SeqCst);
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An h2 client that advertises a zero stream window and never grants any: each stream is
/// reset after the write deadline and its upstream connection released, so upstream
/// connections return to zero; the server also announces the stream limit.
#[tokio::test]
async fn stalled_h2_streams_are_reset_and_release_their_upstream_connections() {
    let (upstream, open) = counting_upstream().await;
    let h = start_with(
        upstream,
        &config(upstream, "h2_max_concurrent_streams = 8", ""),
    );
    let tcp = TcpStream::connect(h.proxy()).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    for i in 0..8 {
        let request = http::Request::get(format!("http://{}/big/{i}", h.proxy()))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).expect("send");
        responses.push(response);
        client = client.ready().await.unwrap();
    }
    assert_eq!(
        wait_for(&open, 8, BOUND).await,
        8,
        "every stream holds an upstream connection"
    );
    // Headers are not flow-controlled; the body never moves. After the write deadline each
    // stream ends in a reset, and the upstream side lets go.
    for response in responses {
        let outcome = tokio::time::timeout(BOUND, async move {
            let mut body = response.await?.into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                got += chunk?.len();
            }
            Ok::<usize, h2::Error>(got)
        })
        .await
        .expect("stream still pending after the write deadline");
        assert!(outcome.is_err(), "a stream completed: {outcome:?}");
    }
    assert_eq!(
        wait_for(&open, 0, BOUND).await,
        0,
        "upstream connections held"
    );
    assert!(
        h.metric("gatehouse_client_timeouts_total{kind=\"write\"}")
            .await
            >= 8.0,
        "write timeouts not counted"
    );
    driver.abort();
}

/// The server announces `h2_max_concurrent_streams` in its SETTINGS.
#[tokio::test]
async fn the_h2_stream_limit_is_announced() {
    let h = start("h2_max_concurrent_streams = 7").await;
    let tcp = TcpStream::connect(h.proxy()).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS are in.
    let limit = tokio::time::timeout(BOUND, async {
        let mut client = client;
        let request = http::Request::get(format!("http://{}/", h.proxy()))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        tokio::select! {
            _ = &mut connection => {}
            _ = response => {}
        }
        connection.max_concurrent_send_streams()
    })
    .await
    .unwrap();
    assert_eq!(limit, 7);
}

/// Under a lowered open-files limit (256), silent sockets fill the proxy up to its derived
/// default `max_connections` ((256 - 64) / 2 = 96) and no further: later connections are
/// closed at once and counted, while the admin listener still answers `/metrics`.
#[tokio::test]
async fn silent_sockets_under_a_low_open_files_limit_leave_the_admin_listener_reachable() {
    let upstream = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(upstream.addr, "", "").replace(
        "client_header_timeout = \"1s\"",
        "client_header_timeout = \"60s\"",
    );
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(&file, text).unwrap();
    // Listens on port 0; the addresses are read back from its log.
    let served = common::Served::start(
        Path::new("prlimit"),
        &["--nofile=256:256", env!("CARGO_BIN_EXE_gatehouse")],
        &file,
    );
    let metrics_url = served.admin_url("/metrics");
    let metric = |text: &str, sample: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(-1.0)
    };
    let mut up = false;
    for _ in 0..100 {
        if common::get_status(&metrics_url).await == Some(200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "gatehouse did not come up");

    let proxy = served.proxy;
    let mut silent = Vec::new();
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect(proxy).await {
            silent.push(s);
        }
    }
    let open_sample = "gatehouse_connections_open{listener=\"proxy\"}";
    let mut text = String::new();
    for _ in 0..100 {
        text = common::client()
            .get(&metrics_url)
            .send()
            .await
            .expect("the admin listener answers while the proxy is full")
            .text()
            .await
            .unwrap();
        // Every connection past the limit is counted once the accept loop has caught up
        // (later than the open count on a loaded machine).
        let rejected = metric(
            &text,
            "gatehouse_connections_rejected_total{listener=\"proxy\",reason=\"max_connections\"}",
        );
        if metric(&text, open_sample) == 96.0 && rejected + 96.0 >= silent.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, open_sample), 96.0, "{text}");
    let rejected = metric(
        &text,
        "gatehouse_connections_rejected_total{listener=\"proxy\",reason=\"max_connections\"}",
    );
    assert!(rejected >= 50.0, "rejected {rejected}");

    // A new proxy connection is closed at once, not left hanging.
    let mut late = TcpStream::connect(proxy).await.unwrap();
    let _ = late.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (response, closed) = read_until_closed(&mut late, Duration::from_secs(2)).await;
    assert!(closed && response.is_empty(), "{response:?}");

    // Freed slots are served again.
    drop(silent);
    let mut served = false;
    for _ in 0..50 {
        let response = common::raw_request(
            proxy,
            "GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if response.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the proxy did not recover");
}

/// An h2c connection with no open stream is closed after the idle deadline.
#[tokio::test]
async fn an_idle_h2_connection_is_closed() {
    let h = start("").await;
    let tcp = TcpStream::connect(h.proxy()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut client = client.ready().await.unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/one", h.proxy()))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(BOUND, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    // Nothing more is asked: the server ends the connection.
    let ended = tokio::time::timeout(BOUND, driver).await;
    assert!(
        ended.is_ok(),
        "idle h2 connection still open after {BOUND:?}"
    );
}

/// An upstream that reads each request's whole body before it answers `200` (unlike the echo
/// app, which answers at once), and counts its open connections, the request heads it got and
/// the bodies it got whole. Bodies come with `Content-Length` or chunked.
struct BodyReader {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
    whole_bodies: Arc<AtomicUsize>,
}

/// Reads one request (head and body) from `socket`, `buf` holding what came before, counting
/// its head in `heads`; `None` when the connection ends first.
async fn read_request(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    heads: &AtomicUsize,
) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    heads.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    // Whole when `Content-Length` bytes are in, or (chunked) the last chunk is.
    let whole = |buf: &[u8]| match length {
        Some(n) => buf.len() >= head_end + n,
        None if chunked => buf[head_end..].windows(5).any(|w| w == b"0\r\n\r\n"),
        None => true,
    };
    while !whole(buf) {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.clear();
    Some(())
}

async fn body_reading_upstream() -> BodyReader {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(AtomicUsize::new(0));
    let whole_bodies = Arc::new(AtomicUsize::new(0));
    let (conns, heads_in, wholes) = (open.clone(), heads.clone(), whole_bodies.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (open, heads, whole) = (conns.clone(), heads_in.clone(), wholes.clone());
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut socket, &mut buf, &heads).await.is_some() {
                    whole.fetch_add(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    BodyReader {
        addr,
        open,
        heads,
        whole_bodies,
    }
}

/// The `gatehouse_http_requests_total` samples with a 5xx code.
async fn server_error_samples(h: &Harness) -> Vec<String> {
    common::client()
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("gatehouse_http_requests_total{") && l.contains("code=\"5"))
        .map(str::to_string)
        .collect()
}

/// A proxied HTTP/1 request body that stalls, to an app that reads the whole body before it
/// answers, is answered 408 after the body deadline (not 500/502/504), counted as a body
/// timeout, and its upstream connection is let go. A whole body to the same app is a 200.
#[tokio::test]
async fn a_stalled_proxied_request_body_is_answered_408_and_releases_the_upstream() {
    let app = body_reading_upstream().await;
    let h = start_with(app.addr, &config(app.addr, "", ""));
    let response = common::raw_request(
        h.proxy(),
        "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&response), Some(200), "{response:?}");
    assert_eq!(app.whole_bodies.load(Ordering::SeqCst), 1);

    // (The upstream connection of that request may wait in pingora's pool; the stalled
    // request may take it. Either way it cannot be reused after half a body.)
    let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npart of it")
        .await
        .unwrap();
    assert_eq!(
        wait_for(&app.heads, 2, BOUND).await,
        2,
        "the request reached the app"
    );
    let (response, _) = read_until_closed(&mut stream, BOUND).await;
    assert_eq!(status_of(&response), Some(408), "{response:?}");
    assert_eq!(
        wait_for(&app.open, 0, BOUND).await,
        0,
        "upstream connection held"
    );
    assert_eq!(app.whole_bodies.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.metric_reaching("gatehouse_client_timeouts_total{kind=\"body\"}", 1.0)
            .await,
        1.0
    );
    assert_eq!(
        h.metric("gatehouse_client_errors_total{reason=\"body_timeout\"}")
            .await,
        1.0
    );
    assert_eq!(server_error_samples(&h).await, Vec::<String>::new());
}

/// A proxied HTTP/1 request body that the client cuts short (it closes its sending side
/// mid-body, or before any body byte) is a client error: a 400 on its access line and in the
/// request metrics (never a 5xx), counted as an aborted body, with no ERROR line; the upstream
/// connection is let go.
#[tokio::test]
async fn an_aborted_proxied_request_body_is_a_client_error_not_a_5xx() {
    logs();
    let app = body_reading_upstream().await;
    let text = config(app.addr, "", "").replace("access_log = false", "access_log = true");
    let h = start_with(app.addr, &text);
    for (i, cut) in ["", "part of it"].into_iter().enumerate() {
        // A path only this request uses, to find its access line.
        let path = format!("/upload/aborted-{}-{i}", app.addr.port());
        let mut stream = TcpStream::connect(h.proxy()).await.unwrap();
        stream
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{cut}")
                    .as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            wait_for(&app.heads, i + 1, BOUND).await,
            i + 1,
            "{cut:?}: the request reached the app"
        );
        stream.shutdown().await.unwrap();
        let (response, closed) = read_until_closed(&mut stream, BOUND).await;
        assert!(closed, "{cut:?}: connection left open");
        // The client closed only its sending side: it still reads the answer.
        assert_eq!(status_of(&response), Some(400), "{cut:?}: {response:?}");
        assert_eq!(
            wait_for(&app.open, 0, BOUND).await,
            0,
            "{cut:?}: upstream connection held"
        );
        assert_eq!(
            h.metric_reaching(
                "gatehouse_client_errors_total{reason=\"body_aborted\"}",
                (i + 1) as f64
            )
            .await,
            (i + 1) as f64,
            "{cut:?}"
        );
        // Its access line says 400, and no ERROR line names its request id.
        let log = logs();
        let line = log
            .lines()
            .find(|l| l.contains("gatehouse::access") && l.contains(&format!("path=\"{path}\"")))
            .unwrap_or_else(|| panic!("{cut:?}: no access line for {path}"));
        assert!(line.contains(" status=400 "), "{cut:?}: {line}");
        let request_id = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("request_id="))
            .expect("a request id on the access line")
            .trim_matches('"');
        assert!(
            !log.lines()
                .any(|l| l.contains("ERROR") && l.contains(request_id)),
            "{cut:?}: an ERROR line for {request_id}"
        );
    }
    assert_eq!(app.whole_bodies.load(Ordering::SeqCst), 0);
    assert_eq!(server_error_samples(&h).await, Vec::<String>::new());
}

/// A proxied HTTP/2 request whose body stalls after its headers (and after a first chunk) is
/// answered 408 within the body deadline and its upstream connection is let go; the h2
/// connection itself stays usable for the next stream.
#[tokio::test]
async fn a_stalled_proxied_h2_request_body_is_ended_and_releases_the_upstream() {
    let app = body_reading_upstream().await;
    let h = start_with(app.addr, &config(app.addr, "", ""));
    let tcp = TcpStream::connect(h.proxy()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut kept = Vec::new();
    for (i, first) in ["", "part of it"].into_iter().enumerate() {
        let request = http::Request::post(format!("http://{}/upload/{i}", h.proxy()))
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).expect("send");
        if !first.is_empty() {
            body.send_data(bytes::Bytes::from(first), false).unwrap();
        }
        // The body stream is kept (not dropped: that would reset the stream).
        kept.push(body);
        assert_eq!(
            wait_for(&app.heads, i + 1, BOUND).await,
            i + 1,
            "{first:?}: the request reached the app"
        );
        let outcome = tokio::time::timeout(BOUND, response)
            .await
            .unwrap_or_else(|_| panic!("{first:?}: no answer after {BOUND:?}"));
        let response = outcome.unwrap_or_else(|e| panic!("{first:?}: no answer: {e}"));
        assert_eq!(response.status(), 408, "{first:?}");
        client = client.ready().await.unwrap();
    }
    assert_eq!(
        wait_for(&app.open, 0, BOUND).await,
        0,
        "upstream connections held"
    );
    assert_eq!(
        h.metric_reaching("gatehouse_client_timeouts_total{kind=\"body\"}", 2.0)
            .await,
        2.0
    );
    // The connection serves the next stream, whole body and all.
    let request = http::Request::post(format!("http://{}/upload/whole", h.proxy()))
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"hello"), true)
        .unwrap();
    let response = tokio::time::timeout(BOUND, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.whole_bodies.load(Ordering::SeqCst), 1);
    assert_eq!(server_error_samples(&h).await, Vec::<String>::new());
    driver.abort();
}
