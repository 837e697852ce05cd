//! Shared test harness: a real upstream (the echo app from `examples/`) and Gatehouse, both
//! on 127.0.0.1 with ports the kernel picks, Gatehouse in-process.

#![allow(dead_code)] // each test binary uses a part of this

use std::net::SocketAddr;
use std::time::Duration;

use gatehouse::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../examples/echo_upstream.rs"]
mod echo;

/// Starts the echo upstream on a free port.
pub async fn start_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(echo::serve(listener));
    addr
}

/// A port nothing listens on (bound, then released).
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A Gatehouse and the upstream behind it.
pub struct Harness {
    pub gatehouse: Running,
    pub upstream: SocketAddr,
}

impl Harness {
    /// The clock Gatehouse reads every expiry on (advance it when started with a manual one).
    pub fn clock(&self) -> &gatehouse::clock::Clock {
        self.gatehouse.clock()
    }

    pub fn proxy(&self) -> SocketAddr {
        self.gatehouse.addresses.proxy[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gatehouse.addresses.admin)
    }

    /// The value of one sample in the Prometheus text of `/metrics`, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Harness {
    /// Waits (up to 5 s) until a sample reaches `expected`, and returns its last value:
    /// metrics are recorded after the response has been sent, so a client can be faster.
    pub async fn metric_reaching(&self, sample: &str, expected: f64) -> f64 {
        let mut value = self.metric(sample).await;
        for _ in 0..100 {
            if value == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            value = self.metric(sample).await;
        }
        value
    }
}

impl Harness {
    /// Waits (up to 5 s) until the admin `/ready` answers 200 and every IdP is discovered
    /// (no `gatehouse_idp_up` sample at 0: `/ready` waits for IdPs only with
    /// `ready_requires_idp`).
    pub async fn wait_ready(&self) {
        let ready = self.admin_url("/ready");
        for _ in 0..200 {
            if get_status(&ready).await == Some(200) && self.idps_up().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gatehouse never became ready");
    }
}

impl Harness {
    /// Whether every connection's `gatehouse_idp_up` is 1 (true without connections).
    pub async fn idps_up(&self) -> bool {
        let Ok(response) = client().get(self.admin_url("/metrics")).send().await else {
            return false;
        };
        let text = response.text().await.unwrap_or_default();
        !text
            .lines()
            .any(|l| l.starts_with("gatehouse_idp_up{") && l.ends_with(" 0"))
    }
}

/// The status of a plain GET (no redirects followed); `None` when the request failed.
pub async fn get_status(url: &str) -> Option<u16> {
    client()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Config for a Gatehouse on free ports in front of `upstream`, plus `extra` TOML.
pub fn config_text(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "1s"

[log]
access_log = false

[[upstreams]]
id = "echo"
url = "http://{upstream}"
read_timeout = "2s"
connect_timeout = "1s"

{extra}
"#
    )
}

/// Starts an echo upstream and Gatehouse in front of it.
pub async fn start(extra: &str) -> Harness {
    let upstream = start_echo().await;
    start_with(upstream, &config_text(upstream, extra))
}

/// Starts Gatehouse with this config text; `upstream` is only remembered.
pub fn start_with(upstream: SocketAddr, config: &str) -> Harness {
    start_on(upstream, config, gatehouse::clock::Clock::system())
}

/// [`start_with`] on `clock`: a test that passes a `Clock::manual` advances it (through
/// [`Harness::clock`]) instead of sleeping.
pub fn start_on(upstream: SocketAddr, config: &str, clock: gatehouse::clock::Clock) -> Harness {
    let config = gatehouse::config::parse(config).unwrap_or_else(|e| panic!("test config: {e}"));
    let gatehouse = gatehouse::server::spawn_with_clock(&config, clock).expect("gatehouse starts");
    Harness {
        gatehouse,
        upstream,
    }
}

/// An HTTP client that never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends raw bytes as one HTTP/1.1 request (with `Connection: close`) and returns the whole
/// response as text: for requests a well-behaved client would never send.
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// The JSON body of a raw response.
pub fn raw_json(response: &str) -> serde_json::Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("no JSON body ({e}) in {response:?}"))
}
