//! What operators read in the logs: the likely fix for a wrong client secret (with the
//! request id the page shows), and the W3C trace id on the access line. The logs are
//! captured by one text subscriber for the whole test binary; each test finds its own lines
//! by a value only it uses (a request id, a trace id).

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/logs.rs"]
mod logs;

use common::{bind_gatehouse, client, start_echo, start_on, start_with};
use idp::{client_config, Browser, TestIdp};
use logs::logs;

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

/// A client secret the IdP does not accept: the token endpoint answers `invalid_client`, the
/// log says which connection's client_id / client_secret to check, and the error page shows
/// the request id that the log line carries.
#[tokio::test]
async fn a_wrong_client_secret_logs_the_fix_and_the_page_shows_the_request_id() {
    logs();
    let upstream = start_echo().await;
    // Gatehouse's listeners first: the IdP must know the callback address.
    let listeners = bind_gatehouse();
    let port = listeners.addresses().proxy[0].port();
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
    let config = gatehouse_config(
        port,
        upstream.addr,
        &idp.issuer,
        "a-wrong-secret",
        data.path(),
    );
    let gh = start_on(upstream, &config, listeners);
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

/// What the app behind Gatehouse gets as `traceparent` (every value) for a request that
/// sends these, and the request id Gatehouse gave it.
async fn upstream_traceparents(
    gh: &common::Harness,
    sent: &[&str],
    tracestate: bool,
) -> (Vec<String>, Option<String>, String) {
    let mut request = client().get(gh.url("/traced"));
    for value in sent {
        request = request.header("traceparent", *value);
    }
    if tracestate {
        request = request.header("tracestate", "vendor=value");
    }
    let echo: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    let headers = &echo["headers"];
    let values = headers["traceparent"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let state = headers["tracestate"][0].as_str().map(str::to_string);
    let request_id = headers["x-request-id"][0].as_str().unwrap().to_string();
    (values, state, request_id)
}

/// W3C trace context: a valid incoming `traceparent` reaches the app unchanged (with its
/// `tracestate`); none, an invalid one or two of them give the app one new valid value (and
/// an invalid one's `tracestate` is dropped); and the access line names the trace id.
#[tokio::test]
async fn traceparent_is_kept_or_made_passed_upstream_and_logged() {
    logs();
    let upstream = start_echo().await;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n[log]\naccess_log = true\n[[upstreams]]\nurl = \"http://{upstream}\"\n[[public]]\npath = \"/\"\nmatch = \"prefix\"\n"
    );
    let gh = start_with(upstream, &config);
    gh.wait_ready().await;
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (values, state, request_id) = upstream_traceparents(&gh, &[valid], true).await;
    assert_eq!(values, [valid]);
    assert_eq!(state.as_deref(), Some("vendor=value"));
    let access = |request_id: &str| {
        let log = logs();
        log.lines()
            .find(|l| l.contains("gatehouse::access") && l.contains(request_id))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no access line for {request_id}:\n{log}"))
    };
    let trace_id = |value: &str| value.split('-').nth(1).unwrap().to_string();
    // The access line is written after the response: wait for it.
    for _ in 0..100 {
        if logs().contains(&request_id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        access(&request_id).contains(&format!("trace_id=\"{}\"", trace_id(valid))),
        "{}",
        access(&request_id)
    );
    let invalid = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    for (sent, with_state) in [
        (vec![], false),
        (vec![invalid], true),
        (vec!["garbage"], false),
        (vec![valid, valid], false),
    ] {
        let (values, state, request_id) = upstream_traceparents(&gh, &sent, with_state).await;
        assert_eq!(values.len(), 1, "{sent:?}: {values:?}");
        let made = &values[0];
        assert!(
            gatehouse::ids::TraceParent::parse(made).is_some() && made != valid && made != invalid,
            "{sent:?}: {made}"
        );
        assert_eq!(state, None, "{sent:?}");
        for _ in 0..100 {
            if logs().contains(&request_id) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let line = access(&request_id);
        assert!(
            line.contains(&format!("trace_id=\"{}\"", trace_id(made))),
            "{line}"
        );
    }
}
