//! Protocols that must pass through: WebSocket upgrades, h2c, TLS with h2 by ALPN, and
//! streamed bodies.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::{client, start, start_echo, start_with};

const OPEN: &str = "[[public]]\npath = \"/\"\nmatch = \"prefix\"\n";

/// A WebSocket opened through Gatehouse reaches the upstream and echoes messages.
#[tokio::test]
async fn a_websocket_echo_works_through_the_proxy() {
    let h = start(OPEN).await;
    let url = format!("ws://{}/socket", h.proxy());
    let (mut socket, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    for text in ["hello", "second message"] {
        socket.send(Message::Text(text.into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap(), text);
    }
}

/// A WebSocket on a protected path without a session is refused before any upgrade.
#[tokio::test]
async fn a_websocket_to_a_protected_path_needs_a_session() {
    let h = start("").await;
    let error = tokio_tungstenite::connect_async(format!("ws://{}/socket", h.proxy()))
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("401"), "{error}");
}

/// HTTP/2 without TLS (prior knowledge) is served.
#[tokio::test]
async fn an_h2c_request_works() {
    let h = start(OPEN).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(h.url("/h2?x=1")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/h2");
    assert_eq!(echo["query"], "x=1");
}

/// On a TLS listener, h2 is negotiated by ALPN and the forwarded proto is https.
#[tokio::test]
async fn tls_listeners_negotiate_h2() {
    let upstream = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nurl = \"http://{upstream}\"\n{OPEN}",
        cert_path.display(),
        key_path.display()
    );
    let h = start_with(upstream, &config);
    let tls_addr = h.gatehouse.addresses.tls[0];
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", tls_addr)
        .build()
        .unwrap();
    let response = https
        .get(format!("https://localhost:{}/tls", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
}

/// A request body streamed in chunks arrives whole.
#[tokio::test]
async fn a_streamed_request_body_passes_through() {
    let h = start(OPEN).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64)
        .map(|i| Ok(vec![b'a' + (i % 26) as u8; 4096]))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = client()
        .post(h.url("/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["headers"]["transfer-encoding"][0], "chunked");
}
