//! Nothing a client or an IdP sends reaches a log line raw: CR, LF, ESC, NUL and long values
//! sent through every parameter Gatehouse logs come out escaped, in text and in JSON logs,
//! and no forged line appears. The logs are captured by a subscriber set up like
//! `logging::init` (text and JSON layers, writing to buffers).

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{bind_gatehouse, client, start_echo, start_on};
use idp::{client_config, Browser, TestIdp};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A value that would forge a whole access line if written raw, with ESC, NUL and length.
fn hostile() -> String {
    format!(
        "x\r\n2026-01-01T00:00:00.000000Z  INFO gatehouse::access: path=\"/admin/secret\" status=200 user=\"alice\"\u{1b}[2J\u{0}\u{202e}{}",
        "A".repeat(1500)
    )
}

fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The `state` of the IdP redirect `/oauth2/start` answered (the login cookie is in the jar).
async fn start_login(browser: &Browser, base: &str) -> String {
    let response = browser.get(&format!("{base}/oauth2/start?rd=/")).await;
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let url = reqwest::Url::parse(&location).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state in the IdP redirect")
}

/// Every logged parameter gets CR/LF/ESC/NUL and 1,500 more bytes: the callback's `error`,
/// `error_description`, `iss`, `code` and `state`, the start's `rd` and `connection`, the
/// path, `X-Request-Id`, a logout token, and the IdP's username claim (JIT and access line).
/// The text log has no raw CR, ESC or NUL and every line is a real event; every JSON line
/// parses; and the hostile values did reach the log, escaped.
#[tokio::test]
async fn hostile_values_are_logged_escaped_and_forge_no_line() {
    let text = Buffer::default();
    let json = Buffer::default();
    let (t, j) = (text.clone(), json.clone());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "debug,pingora=warn,pingora_core=warn,pingora_proxy=warn,h2=info,hyper=info,hyper_util=info,reqwest=info,rustls=info,redb=info,tokio=info,mio=info",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || t.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(move || j.clone()),
        )
        .try_init()
        .expect("the only subscriber in this test binary");

    let upstream = start_echo().await;
    let listeners = bind_gatehouse();
    let proxy = listeners.addresses().proxy[0];
    let base = format!("http://{proxy}");
    let idp = TestIdp::start(serde_json::json!({
        "clients": [client_config(
            "gatehouse",
            "gatehouse-secret",
            vec![format!("{base}/oauth2/callback")],
            vec![format!("{base}/")],
            Some(format!("{base}/oauth2/backchannel-logout")),
        )],
    }))
    .await;
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = ["{proxy}"]
admin_listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "1s"
[log]
access_log = true
[store]
data_dir = "{data}"
[session]
cookie_secure = false
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[[upstreams]]
id = "echo"
url = "http://{upstream}"
[[connections]]
id = "test"
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
scopes = ["openid", "email", "profile", "groups"]
"#,
        data = data.path().display(),
        issuer = idp.issuer,
    );
    let gh = start_on(upstream, &config, listeners);
    gh.wait_ready().await;
    let h = hostile();
    let e = enc(&h);

    // The callback: error, error_description, iss with a valid state.
    let browser = Browser::new();
    let state = start_login(&browser, &base).await;
    browser
        .get(&format!(
            "{base}/oauth2/callback?state={state}&error={e}&error_description={e}&iss={e}"
        ))
        .await;
    // The callback: a hostile code goes to the IdP, whose refusal is logged.
    let state = start_login(&browser, &base).await;
    browser
        .get(&format!("{base}/oauth2/callback?state={state}&code={e}"))
        .await;
    // A hostile state, start parameters, path, request id, logout token.
    client()
        .get(format!("{base}/oauth2/callback?state={e}&code=x&error={e}"))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{base}/oauth2/start?rd={e}&connection={e}"))
        .send()
        .await
        .unwrap();
    for path in [
        format!("/private/{e}"),
        format!("/{e}/x"),
        "/a%0d%0ab%1b%00".to_string(),
    ] {
        client()
            .get(format!("{base}{path}"))
            .header("accept", "application/json")
            .header("x-request-id", "A".repeat(5000))
            .send()
            .await
            .unwrap();
    }
    client()
        .post(format!("{base}/oauth2/backchannel-logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("logout_token={e}"))
        .send()
        .await
        .unwrap();
    // The IdP's username claim: JIT does not use it, the app and the access line show it
    // escaped.
    idp.set_claims(
        "alice",
        serde_json::json!({"preferred_username": h.clone(), "name": h.clone()}),
    )
    .await;
    let journey = Browser::new()
        .follow(&format!("{base}/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}\n{}", journey.hops, journey.body);
    // The access line of the last request is written after its response: wait for it (the
    // JIT account took the email's local part, the hostile username was not used).
    let echo: serde_json::Value = serde_json::from_str(&journey.body).unwrap();
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice");
    assert!(
        echo["headers"]["x-gatehouse-name"][0]
            .as_str()
            .unwrap()
            .starts_with("x%0D%0A2026"),
        "the name header is the escaped claim: {echo}"
    );
    for _ in 0..100 {
        if text.text().contains("path=\"/\" status=200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let text = text.text();
    assert!(text.contains("IdP username not used"), "{text}");
    assert!(
        text.contains("path=\"/\" status=200"),
        "no access line for the sign-in"
    );
    for (byte, what) in [
        ('\r', "CR"),
        ('\u{1b}', "ESC"),
        ('\0', "NUL"),
        ('\u{202e}', "RLO"),
    ] {
        assert!(!text.contains(byte), "raw {what} in the text log");
    }
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        assert!(
            line.len() > 20
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && line.as_bytes()[4] == b'-',
            "a line that is not an event: {line:.200}"
        );
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "forged line: {line:.200}"
        );
        assert!(
            line.len() < 8 * 1024,
            "a line of {} bytes: {line:.300}",
            line.len()
        );
    }
    assert!(lines > 10, "too few log lines: {text}");
    for expected in ["login refused", "logout token refused", "gatehouse::access"] {
        assert!(text.contains(expected), "no {expected:?} line: {text}");
    }
    assert!(
        text.contains(r"x\r\n2026-01-01T00:00:00"),
        "the hostile value never reached the log escaped: {text}"
    );
    let json = json.text();
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:.200}"));
        assert!(v.get("timestamp").is_some(), "{line:.200}");
    }
    assert!(!json.contains('\r') && !json.contains('\u{1b}') && !json.contains('\0'));
    assert!(json.lines().count() >= lines / 2);
}
