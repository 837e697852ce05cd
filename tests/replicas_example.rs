//! The shipped `examples/replicas/` set-up, run for real: two `gatehouse serve` child
//! processes of the real binary on `examples/replicas/gatehouse.toml` (the second one given
//! its own ports and data directory by the environment variables the example's README names),
//! one fresh PostgreSQL database (tests/common/postgres.rs), Debian's nginx on
//! `examples/replicas/nginx.conf` in front of both, the echo app behind them and the real test
//! IdP. Only addresses, paths, the database URL and the IdP are replaced in the shipped files.
//!
//! And a replica killed with SIGKILL while first logins are in flight: every login that was
//! acknowledged (its 302 with a session cookie) has its account and session in the database,
//! and a new replica serves those sessions.
//!
//! Without PostgreSQL or the `nginx` binary a test says so and passes, unless `CI=true`, where
//! either missing fails it.

mod common;
#[path = "common/front.rs"]
mod front;
#[path = "common/idp.rs"]
mod idp;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::postgres as pg;
use common::{client, get_status, start_echo, Served};
use front::{nginx, repo, reserve_port, run_nginx, substitute, wait_listening, Proc};
use idp::{client_config, Browser, TestIdp};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The environment variables the example's README gives replica B (its own ports and data
/// directory on a machine that runs both).
const REPLICA_B_VARS: [&str; 3] = [
    "GATEHOUSE__SERVER__LISTEN",
    "GATEHOUSE__SERVER__ADMIN_LISTEN",
    "GATEHOUSE__STORE__DATA_DIR",
];

/// The example's `gatehouse.toml` with ports the kernel picks (read back from the child's
/// log), the database at `url`, the data directory `data`, the echo app, the test IdP, and
/// plain-http cookies (the test has no TLS).
fn replica_config(url: &str, data: &Path, upstream: SocketAddr, issuer: &str) -> String {
    let text = std::fs::read_to_string(repo("examples/replicas/gatehouse.toml")).unwrap();
    substitute(
        &text,
        &[
            (
                "listen = [\"127.0.0.1:4180\"]",
                "listen = [\"127.0.0.1:0\"]".into(),
            ),
            (
                "admin_listen = \"127.0.0.1:9090\"",
                "admin_listen = \"127.0.0.1:0\"".into(),
            ),
            (
                "url = \"postgres://gatehouse@127.0.0.1:5432/gatehouse\"",
                format!("url = \"{url}\""),
            ),
            (
                "data_dir = \"/var/lib/gatehouse\"",
                format!("data_dir = \"{}\"", data.display()),
            ),
            ("cookie_secure = true", "cookie_secure = false".into()),
            ("http://127.0.0.1:8080", format!("http://{upstream}")),
            ("https://idp.example.com", issuer.to_string()),
            (
                "client_secret = \"change-me\"",
                "client_secret = \"gatehouse-secret\"".into(),
            ),
        ],
    )
}

/// Waits (up to 20 s) until the child's `/ready` answers 200 and its IdP is discovered.
async fn wait_ready(served: &Served) {
    let ready = served.admin_url("/ready");
    for _ in 0..800 {
        if get_status(&ready).await == Some(200) && idp_up(served).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gatehouse serve never became ready");
}

async fn metrics(served: &Served) -> String {
    match client().get(served.admin_url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn idp_up(served: &Served) -> bool {
    let text = metrics(served).await;
    text.lines()
        .any(|l| l.starts_with("gatehouse_idp_up{") && l.ends_with(" 1"))
}

/// Requests a replica has answered on its proxy listener (`gatehouse_http_requests_total`,
/// every label set summed).
async fn requests_served(served: &Served) -> f64 {
    metrics(served)
        .await
        .lines()
        .filter(|l| l.starts_with("gatehouse_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to 5 s) until the replica has answered more than `than` requests (metrics are
/// recorded after the response went out, so the client can be faster); the last count.
async fn requests_above(served: &Served, than: f64) -> f64 {
    let mut count = requests_served(served).await;
    for _ in 0..100 {
        if count > than {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        count = requests_served(served).await;
    }
    count
}

/// Waits (up to 30 s) for a child to exit; its exit code.
async fn exited(child: &mut Child) -> Option<i32> {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the child did not exit");
}

/// nginx with the example's `nginx.conf` in its own prefix `dir`, listening on `front` (held
/// by a reservation), balancing over `replicas`; returns once it accepts connections.
async fn start_nginx(bin: &Path, dir: &Path, front: SocketAddr, replicas: [SocketAddr; 2]) -> Proc {
    let text = std::fs::read_to_string(repo("examples/replicas/nginx.conf")).unwrap();
    let conf = substitute(
        &text,
        &[
            (
                "listen 127.0.0.1:8000;",
                format!("listen {front} reuseport;"),
            ),
            ("server 127.0.0.1:4180 ", format!("server {} ", replicas[0])),
            ("server 127.0.0.1:4181 ", format!("server {} ", replicas[1])),
        ],
    );
    let nginx = run_nginx(bin, dir, &conf);
    wait_listening(front, "nginx", &dir.join("logs/error.log")).await;
    nginx
}

/// The echo app's view of one request through nginx: status, and the JSON the app echoed.
async fn whoami(browser: &Browser, url: &str) -> (u16, Value) {
    let response = browser.get(url).await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The shipped set-up works as its README says: a browser signs in through nginx (the login
/// hops are spread over both replicas by round robin, so the login state made at one is
/// consumed at the other), its requests land on both replicas, and when replica A is stopped
/// with SIGTERM the same browser keeps working through nginx, on B, without signing in again.
#[tokio::test]
async fn the_replicas_example_serves_one_signed_in_browser_from_either_replica() {
    let url = or_skip!(pg::fresh_database());
    let Some(nginx_bin) = nginx() else { return };
    let readme = std::fs::read_to_string(repo("examples/replicas/README.md")).unwrap();
    for var in REPLICA_B_VARS {
        assert!(
            readme.contains(var),
            "the example's README no longer names {var}"
        );
    }

    let (reservation, front) = reserve_port();
    let base = format!("http://{front}");
    let idp = TestIdp::start(json!({
        "clients": [client_config(
            "gatehouse",
            "gatehouse-secret",
            vec![format!("{base}/oauth2/callback")],
            vec![format!("{base}/")],
            None,
        )],
    }))
    .await;
    let upstream = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        replica_config(&url, &dir.path().join("a"), upstream.addr, &idp.issuer),
    )
    .unwrap();
    let mut a = Served::start(Path::new(BIN), &[], &config);
    wait_ready(&a).await;
    // Replica B: the same file, its own ports and data directory from the environment
    // (`env` is the wrapper that sets them; the binary is its last argument).
    let data_b = format!(
        "GATEHOUSE__STORE__DATA_DIR={}",
        dir.path().join("b").display()
    );
    let b = Served::start(
        Path::new("env"),
        &[
            "GATEHOUSE__SERVER__LISTEN=[\"127.0.0.1:0\"]",
            "GATEHOUSE__SERVER__ADMIN_LISTEN=127.0.0.1:0",
            &data_b,
            BIN,
        ],
        &config,
    );
    wait_ready(&b).await;
    assert!(
        dir.path().join("b").is_dir(),
        "replica B uses the data directory its environment names"
    );
    let _nginx = start_nginx(
        &nginx_bin,
        &dir.path().join("nginx"),
        front,
        [a.proxy, b.proxy],
    )
    .await;
    drop(reservation);

    let browser = Browser::new();
    let journey = browser
        .follow(&format!("{base}/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    assert!(
        journey
            .hops
            .iter()
            .all(|(_, hop)| !hop.contains(&a.proxy.to_string())
                && !hop.contains(&b.proxy.to_string())),
        "the browser only ever saw nginx: {:?}",
        journey.hops
    );

    // The login's own hops (the app, /oauth2/start, the callback, the app again) took turns:
    // the login state made at one replica was consumed at the other.
    let (before_a, before_b) = (requests_above(&a, 0.0).await, requests_above(&b, 0.0).await);
    assert!(
        before_a > 0.0 && before_b > 0.0,
        "the login went through both replicas: A {before_a}, B {before_b}"
    );

    // Round robin: a run of requests lands on both replicas, each answering for the session.
    for _ in 0..6 {
        let (status, echo) = whoami(&browser, &format!("{base}/whoami")).await;
        assert_eq!(status, 200, "{echo}");
        assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice", "{echo}");
        assert_eq!(
            echo["headers"]["x-forwarded-host"][0],
            front.to_string(),
            "the host the browser used reaches the app: {echo}"
        );
    }
    let after_a = requests_above(&a, before_a).await;
    let after_b = requests_above(&b, before_b).await;
    eprintln!("six requests through nginx: A {before_a} -> {after_a}, B {before_b} -> {after_b}");
    assert!(
        after_a > before_a && after_b > before_b,
        "requests landed on both replicas: A {before_a} -> {after_a}, B {before_b} -> {after_b}"
    );

    // Replica A stops (SIGTERM: it drains and exits 0); nginx sends everything to B, where the
    // browser is still signed in.
    let rc = unsafe { libc::kill(a.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert_eq!(exited(&mut a.child).await, Some(0), "a clean shutdown");
    let before_b = requests_served(&b).await;
    for _ in 0..6 {
        let (status, echo) = whoami(&browser, &format!("{base}/whoami")).await;
        assert_eq!(status, 200, "still signed in, served by B: {echo}");
        assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice", "{echo}");
    }
    let after_b = requests_above(&b, before_b + 5.0).await;
    assert!(
        after_b >= before_b + 6.0,
        "B answered every request: {before_b} -> {after_b}"
    );
}

/// A replica killed with SIGKILL mid-login loses nothing it acknowledged: first logins of
/// different users run in four streams against a real `gatehouse serve` child on PostgreSQL
/// (the example's config); it is killed while they are in flight. Every login that got its
/// 302 with a session cookie has its account, its link and its session in the database
/// (counted with psql), and a new replica (a fresh data directory: its keys come from the
/// database) starts on the same database and serves each of those sessions.
#[tokio::test]
async fn a_replica_killed_mid_login_loses_no_acknowledged_login() {
    const USERS: usize = 60;
    const KILL_AFTER: usize = 15;
    let url = or_skip!(pg::fresh_database());
    let server = pg::server().expect("the server behind the fresh database");
    let users: serde_json::Map<String, Value> = (0..USERS)
        .map(|i| {
            (
                format!("u{i}"),
                json!({"password": "pw", "claims": {"email": format!("u{i}@example.com"), "email_verified": true}}),
            )
        })
        .collect();
    // The client is registered once the child has said where it listens.
    let idp = TestIdp::start(json!({ "clients": [], "users": users })).await;
    let upstream = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("first.toml");
    std::fs::write(
        &config,
        replica_config(&url, &dir.path().join("first"), upstream.addr, &idp.issuer),
    )
    .unwrap();
    let mut child = Served::start(Path::new(BIN), &[], &config);
    let base = child.url("");
    idp.register_client(client_config(
        "gatehouse",
        "gatehouse-secret",
        vec![format!("{base}/oauth2/callback")],
        vec![],
        None,
    ))
    .await;
    wait_ready(&child).await;

    // Four streams of first logins; each acknowledged one is reported with its cookie.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut streams = Vec::new();
    for stream in 0..4 {
        let tx = done_tx.clone();
        let base = base.clone();
        streams.push(tokio::spawn(async move {
            for i in (stream..USERS).step_by(4) {
                let login = format!("u{i}");
                let browser = Browser::new();
                let Ok(journey) = tokio::time::timeout(
                    Duration::from_secs(10),
                    browser.follow_until(&format!("{base}/"), Some((&login, "pw")), |u| {
                        u.path() == "/oauth2/callback"
                    }),
                )
                .await
                else {
                    return;
                };
                match browser.client().get(&journey.url).send().await {
                    Ok(r) if r.status() == 302 && r.headers().contains_key("set-cookie") => {
                        let cookie = browser.cookie_header(&base).expect("the session cookie");
                        let _ = tx.send((login, cookie));
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(done_tx);
    let mut acknowledged = Vec::new();
    while let Some(done) = done_rx.recv().await {
        acknowledged.push(done);
        if acknowledged.len() == KILL_AFTER {
            child.child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let _ = child.child.wait();
    // A stream whose request met the kill panics inside its task (the scripted browser
    // panics on a transport error); that ends the stream, nothing more.
    for s in streams {
        let _ = s.await;
    }
    while let Ok(done) = done_rx.try_recv() {
        acknowledged.push(done);
    }
    eprintln!(
        "SIGKILL mid-run: {} of {USERS} first logins acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= KILL_AFTER && acknowledged.len() < USERS,
        "the kill landed mid-run: {} of {USERS} logins acknowledged",
        acknowledged.len()
    );

    // Counted in the database: every acknowledged login has its link, its account and a
    // session.
    let subjects = acknowledged
        .iter()
        .map(|(login, _)| format!("'{login}'"))
        .collect::<Vec<_>>()
        .join(",");
    let count = |sql: String| -> usize {
        server
            .psql(&url, &sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM user_links l JOIN users u ON u.id = l.user_id \
             WHERE l.connection = 'corp' AND l.subject IN ({subjects})"
        )),
        acknowledged.len(),
        "an account and link for each acknowledged login"
    );
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT subject) FROM sessions \
             WHERE connection = 'corp' AND subject IN ({subjects})"
        )),
        acknowledged.len(),
        "a session for each acknowledged login"
    );

    // The database opens again for a new replica, which serves every acknowledged session.
    let config = dir.path().join("second.toml");
    std::fs::write(
        &config,
        replica_config(&url, &dir.path().join("second"), upstream.addr, &idp.issuer),
    )
    .unwrap();
    let second = Served::start(Path::new(BIN), &[], &config);
    wait_ready(&second).await;
    for (login, cookie) in &acknowledged {
        let response = client()
            .get(second.url("/whoami"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{login}'s session after the kill");
        let echo: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(
            echo["headers"]["x-auth-request-email"][0],
            format!("{login}@example.com"),
            "{echo}"
        );
    }
}
