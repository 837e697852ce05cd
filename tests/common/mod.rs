//! Shared test harness: a real upstream (the echo app from `examples/`) and Gatehouse, both
//! on 127.0.0.1 with ports the kernel picks (port 0, the bound address read back; no port is
//! ever bound, released and bound again), Gatehouse in-process. Both stop when dropped.
//!
//! When another party must know Gatehouse's address before Gatehouse starts (an IdP's
//! redirect URIs), bind Gatehouse's listeners first ([`bind_gatehouse`]), tell the other
//! party, then start Gatehouse on them ([`start_on`]). A `gatehouse serve` child process
//! listens on port 0 and says where in its log ([`Served`]).

#![allow(dead_code)] // each test binary uses a part of this

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse::server::{Listeners, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../examples/echo_upstream.rs"]
mod echo;

/// A real PostgreSQL: one server per test process, a fresh database per test.
pub mod postgres;

/// The examples' binaries.
pub mod examples;

/// The echo upstream, served on the test's runtime; it stops when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    server: tokio::task::AbortHandle,
}

impl std::fmt::Display for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts the echo upstream on a port the kernel picks.
pub async fn start_echo() -> Echo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let server = tokio::spawn(echo::serve(listener)).abort_handle();
    Echo { addr, server }
}

/// A port nothing listens on (bound, then released): only where a dead port is the point.
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// What a [`Harness`] proxies to: the echo app it owns (stopped with it), or an address.
pub enum Upstream {
    Echo(Echo),
    At(SocketAddr),
}

impl Upstream {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Upstream::Echo(echo) => echo.addr,
            Upstream::At(addr) => *addr,
        }
    }
}

impl From<Echo> for Upstream {
    fn from(echo: Echo) -> Self {
        Upstream::Echo(echo)
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Upstream::At(addr)
    }
}

/// A Gatehouse and the upstream behind it. Dropping it stops Gatehouse (its listeners are
/// closed when the drop returns), then the echo app it owns.
pub struct Harness {
    pub gatehouse: Running,
    pub upstream: SocketAddr,
    _echo: Option<Echo>,
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

/// Config for a Gatehouse on ports the kernel picks, in front of `upstream`, plus `extra`.
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
    let config = config_text(upstream.addr, extra);
    start_with(upstream, &config)
}

/// Starts Gatehouse with this config text (its listeners as the config says, port 0 read
/// back); `upstream` is only remembered (an [`Echo`] is kept running until the harness drops).
pub fn start_with(upstream: impl Into<Upstream>, config: &str) -> Harness {
    let config = gatehouse::config::parse(config).unwrap_or_else(|e| panic!("test config: {e}"));
    let listeners = Listeners::bind(&config.server).expect("gatehouse binds its listeners");
    harness(
        upstream.into(),
        &config,
        listeners,
        gatehouse::clock::Clock::system(),
    )
}

/// Gatehouse's listeners, bound now on 127.0.0.1 with ports the kernel picks: a proxy
/// listener and the admin listener. Their addresses (`.addresses()`) can go into another
/// party's config (an IdP's redirect URIs) before Gatehouse starts on them with [`start_on`].
pub fn bind_gatehouse() -> Listeners {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Listeners::bind_addrs(&[any], &[], any).expect("bind gatehouse listeners")
}

/// Starts Gatehouse with this config text on `listeners` (bound with [`bind_gatehouse`]);
/// they replace the config's `listen` and `admin_listen`.
pub fn start_on(upstream: impl Into<Upstream>, config: &str, listeners: Listeners) -> Harness {
    start_on_with_clock(
        upstream,
        config,
        listeners,
        gatehouse::clock::Clock::system(),
    )
}

/// [`start_on`] on `clock`: a test that passes a `Clock::manual` advances it (through
/// [`Harness::clock`]) instead of sleeping.
pub fn start_on_with_clock(
    upstream: impl Into<Upstream>,
    config: &str,
    listeners: Listeners,
    clock: gatehouse::clock::Clock,
) -> Harness {
    let config = gatehouse::config::parse(config).unwrap_or_else(|e| panic!("test config: {e}"));
    harness(upstream.into(), &config, listeners, clock)
}

fn harness(
    upstream: Upstream,
    config: &gatehouse::config::Config,
    listeners: Listeners,
    clock: gatehouse::clock::Clock,
) -> Harness {
    let gatehouse =
        gatehouse::server::spawn_on_with_clock(config, listeners, clock).expect("gatehouse starts");
    let addr = upstream.addr();
    Harness {
        gatehouse,
        upstream: addr,
        _echo: match upstream {
            Upstream::Echo(echo) => Some(echo),
            Upstream::At(_) => None,
        },
    }
}

/// A `gatehouse serve` child process (killed when dropped) and where it listens: its config
/// says port 0, and the addresses are read back from its log.
pub struct Served {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Served {
    /// Runs `program args... serve --config <config>` (`program` is the gatehouse binary, or
    /// a wrapper such as `prlimit` whose last argument is the binary) and waits, up to 20 s,
    /// until its log names the proxy and admin addresses. Keeps draining the log after.
    pub fn start(program: &Path, args: &[&str], config: &Path) -> Served {
        let mut child = Command::new(program)
            .args(args)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut proxy, mut admin) = (None, None);
            let mut log = String::new();
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                proxy = proxy.or_else(|| address_after(&line, "proxy listening on http://"));
                admin = admin.or_else(|| address_after(&line, "admin listening on http://"));
                log.push_str(&line);
                log.push('\n');
                if let (Some(proxy), Some(admin)) = (proxy, admin) {
                    let _ = tx.send(Ok((proxy, admin)));
                    // keep draining, so the child never blocks on a full pipe
                    for _ in lines {}
                    return;
                }
            }
            let _ = tx.send(Err(log));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok((proxy, admin))) => Served {
                child,
                proxy,
                admin,
            },
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gatehouse serve never said where it listens: {outcome:?}");
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address written after `marker` in a log line (text or JSON).
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A GET to `url` by [`client`]; panics when there is no answer.
async fn get(url: &str) -> reqwest::Response {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The body of a GET to `url`, as text.
pub async fn get_text(url: &str) -> String {
    get(url)
        .await
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"))
}

/// The body of a GET to `url`, as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    get(url)
        .await
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
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
