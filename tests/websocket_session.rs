//! Long-lived connections follow their session: a WebSocket opened with a session stops when
//! the session ends (sign-out here): at once when it is quiet, and never echoes again.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use login_env::{login_env, sign_in, sign_out_token};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Signs the browser out through the confirmation form.
async fn sign_out(browser: &idp::Browser, url: &str) {
    let csrf = sign_out_token(browser, url).await;
    let done = browser.post_form(url, &[("csrf", &csrf)]).await;
    assert_eq!(done.status(), 302);
}

/// Opens a WebSocket to the echo app with this Cookie header.
async fn open_socket(
    env: &login_env::LoginEnv,
    cookie: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{}/live", env.gh.proxy())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// A quiet WebSocket (neither side sends anything after the first echo) is closed by
/// Gatehouse within a few seconds of its session's sign-out, with no frame needed.
#[tokio::test]
async fn a_quiet_websocket_closes_when_its_session_is_signed_out() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let mut socket = open_socket(&env, &cookie).await;
    socket.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hello"));
    // Still open while the session lives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), socket.next())
            .await
            .is_err(),
        "the socket ended while the session was live"
    );

    sign_out(&browser, &env.url("/oauth2/sign_out")).await;

    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => panic!("a message after sign-out: {t}"),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the quiet socket was still open 5 s after sign-out"
    );
}

/// A signed-in user's WebSocket echoes while the session lives; after sign-out the next
/// message gets no echo and the connection is closed within a few seconds.
#[tokio::test]
async fn a_websocket_closes_when_its_session_is_signed_out() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let mut socket = open_socket(&env, &cookie).await;
    socket.send(Message::text("before")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("before"));

    sign_out(&browser, &env.url("/oauth2/sign_out")).await;

    // The write may still succeed (the bytes reach Gatehouse); what must not come back is an
    // echo, and the socket must end.
    let _ = socket.send(Message::text("after")).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => return Err(format!("echo after sign-out: {t}")),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(()),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket was still open 5 s after sign-out");
    outcome.unwrap();
}

/// Every upgrade gets a working tunnel, however fast the app answers the handshake: a hundred
/// WebSockets opened one after another (each on a reused upstream connection, where the `101`
/// can be read before the request's own empty body ends) each echo a message.
#[tokio::test]
async fn every_one_of_a_hundred_websocket_upgrades_in_a_row_echoes() {
    let env = login_env(serde_json::json!({}), "").await;
    let (browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    for round in 0..100 {
        // A plain request first leaves a warm upstream connection for the upgrade to reuse.
        assert_eq!(browser.get(&env.url("/")).await.status(), 200);
        let mut socket = open_socket(&env, &cookie).await;
        let text = format!("round {round}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an echo");
        match echoed {
            Some(Ok(message)) => assert_eq!(message, Message::text(text)),
            other => panic!("round {round}: the tunnel ended before the echo: {other:?}"),
        }
        let _ = socket.close(None).await;
    }
}
