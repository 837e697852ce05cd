//! A tiny upstream for trying Gatehouse: it answers every request with a JSON echo of its
//! method, path, query and headers, so you can see exactly which identity headers the app
//! received. `?delay_ms=N` makes it wait N milliseconds first (to try timeouts), and a
//! WebSocket upgrade on any path gets every message echoed back.
//!
//! Try it:
//! ```text
//! cargo run --example echo_upstream -- 127.0.0.1:8080
//! curl -s 'http://127.0.0.1:8080/hello?x=1'
//! ```
//! The black-box tests use the same app (`tests/common`), so what you try is what is tested.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if socket.send(message).await.is_err() {
            break;
        }
    }
}

fn delay_of(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

async fn echo(request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    if let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        return upgrade.on_upgrade(echo_socket).into_response();
    }
    if let Some(delay) = delay_of(parts.uri.query()) {
        tokio::time::sleep(delay).await;
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Json(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
    }))
    .into_response()
}

/// Serves the echo app on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, axum::Router::new().fallback(echo)).await
}

#[allow(dead_code)] // the tests include this file for `serve` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "echo upstream listening on http://{}",
        listener.local_addr()?
    );
    serve(listener).await
}
