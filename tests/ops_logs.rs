//! What operators read in the logs: the likely fix for a wrong client secret (with the
//! request id the page shows), and the W3C trace id on the access line. The logs are
//! captured by one text subscriber for the whole test binary; each test finds its own lines
//! by a value only it uses (a request id, a trace id).

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{start_echo, start_with};
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

/// The log of this test binary so far (the subscriber is set up on first use).
fn logs() -> String {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "info,pingora=warn,pingora_core=warn,pingora_proxy=warn",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .try_init()
            .expect("the only subscriber in this test binary");
        buffer
    });
    String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned()
}

/// A Gatehouse on `port` with one connection (`corp`) to `issuer` using `secret`.
fn gatehouse_config(
    port: u16,
    upstream: std::net::SocketAddr,
    issuer: &str,
    secret: &str,
    data: &std::path::Path,
) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_listen = \"127.0.0.1:0\"\n[log]\naccess_log = true\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n[[upstreams]]\nurl = \"http://{upstream}\"\n[[connections]]\nid = \"corp\"\nissuer = \"{issuer}\"\nclient_id = \"gatehouse\"\nclient_secret = \"{secret}\"\n",
        data.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client secret the IdP does not accept: the token endpoint answers `invalid_client`, the
/// log says which connection's client_id / client_secret to check, and the error page shows
/// the request id that the log line carries.
#[tokio::test]
async fn a_wrong_client_secret_logs_the_fix_and_the_page_shows_the_request_id() {
    logs();
    let upstream = start_echo().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = TestIdp::start(serde_json::json!({"clients": [client_config(
        "gatehouse",
        "the-right-secret",
        vec![format!("{base}/oauth2/callback")],
        vec![],
        None,
    )]}))
    .await;
    let data = tempfile::tempdir().unwrap();
    let gh = start_with(
        upstream,
        &gatehouse_config(port, upstream, &idp.issuer, "a-wrong-secret", data.path()),
    );
    gh.wait_ready().await;
    let journey = Browser::new()
        .follow(&gh.url("/reports"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 502, "{:?}\n{}", journey.hops, journey.body);
    let request_id = journey
        .body
        .split("Request id: ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no request id on the page:\n{}", journey.body))
        .to_string();
    let log = logs();
    let line = log
        .lines()
        .find(|l| l.contains("login refused") && l.contains(&request_id))
        .unwrap_or_else(|| panic!("no `login refused` line with {request_id}:\n{log}"));
    for hint in [
        "invalid_client",
        "check client_id and client_secret",
        "connection `corp`",
    ] {
        assert!(line.contains(hint), "`{hint}` missing from {line}");
    }
}
