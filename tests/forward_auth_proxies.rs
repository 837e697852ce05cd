//! Forward-auth behind a REAL nginx (`auth_request`) and a REAL Caddy (`forward_auth`), each
//! started by the test from the example configs shipped under `examples/` (addresses
//! replaced), with Gatehouse in-process (its config is the example's `gatehouse.toml`), the
//! echo app as the app, and the real test OP for the sessions: `alice` is in `admins`, `carol`
//! is not.
//!
//! Without the `nginx` or `caddy` binary a test says so and passes, unless `CI=true`, where a
//! missing binary fails it (`.ci/run` installs both).

mod common;
#[path = "common/front.rs"]
mod front;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bind_gatehouse, client, start_echo, start_on, Harness};
use front::{binary, nginx, repo, reserve_port, run_nginx, substitute, wait_listening, Proc};
use idp::{client_config, Browser, TestIdp};

/// Gatehouse from the example's `gatehouse.toml`, the test OP, the echo app, and the two
/// sessions.
struct Env {
    idp: TestIdp,
    gh: Harness,
    _data: tempfile::TempDir,
    /// Cookie headers: `alice` (in `admins`) and `carol` (not).
    admin: String,
    outsider: String,
}

impl Env {
    /// Registers Gatehouse's client at the OP with the redirect URIs of Gatehouse itself and,
    /// once it listens, of the front proxy (so a browser can sign in through it too).
    async fn register_client(&self, front: Option<SocketAddr>) {
        let mut bases = vec![format!("http://{}", self.gh.proxy())];
        bases.extend(front.map(|f| format!("http://{f}")));
        self.idp
            .register_client(client_config(
                "gatehouse",
                "gatehouse-secret",
                bases
                    .iter()
                    .map(|b| format!("{b}/oauth2/callback"))
                    .collect(),
                bases.iter().map(|b| format!("{b}/")).collect(),
                None,
            ))
            .await;
    }
}

async fn sign_in(gh: &Harness, user: &str, password: &str) -> String {
    let browser = Browser::new();
    let journey = browser.follow(&gh.url("/"), Some((user, password))).await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    browser
        .cookie_header(&gh.url("/"))
        .expect("a session cookie")
}

async fn env(example: &str) -> Env {
    let upstream = start_echo().await;
    let listeners = bind_gatehouse();
    let bound = listeners.addresses();
    // The client is registered below, and again once the front proxy listens.
    let idp = TestIdp::start(serde_json::json!({ "clients": [] })).await;
    let data = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(repo(&format!("examples/{example}/gatehouse.toml"))).unwrap();
    let config = substitute(
        &text,
        &[
            ("127.0.0.1:4180", bound.proxy[0].to_string()),
            ("127.0.0.1:9090", bound.admin.to_string()),
            ("/var/lib/gatehouse", data.path().display().to_string()),
            ("cookie_secure = true", "cookie_secure = false".into()),
            ("http://127.0.0.1:8080", format!("http://{upstream}")),
            ("https://idp.example.com", idp.issuer.clone()),
            (
                "client_secret = \"change-me\"",
                "client_secret = \"gatehouse-secret\"".into(),
            ),
        ],
    );
    let gh = start_on(upstream, &config, listeners);
    let mut env = Env {
        idp,
        gh,
        _data: data,
        admin: String::new(),
        outsider: String::new(),
    };
    env.register_client(None).await;
    env.gh.wait_ready().await;
    env.admin = sign_in(&env.gh, "alice", "alice-pw").await;
    env.outsider = sign_in(&env.gh, "carol", "carol-pw").await;
    env
}

/// nginx with the example's `nginx.conf`, in its own prefix, on a loopback port the test
/// holds: nginx cannot listen on port 0, so the test binds port 0 with `SO_REUSEPORT` (and
/// never listens on it, so it takes no connection), and nginx binds the same port with
/// `reuseport`. Drop the returned socket once nginx listens; the port is never free between.
fn start_nginx(bin: &Path, env: &Env, dir: &Path) -> (Proc, SocketAddr, tokio::net::TcpSocket) {
    let (reservation, front) = reserve_port();
    let text = std::fs::read_to_string(repo("examples/nginx/nginx.conf")).unwrap();
    let conf = substitute(
        &text,
        &[
            (
                "listen 127.0.0.1:8000;",
                format!("listen {front} reuseport;"),
            ),
            (
                "server 127.0.0.1:4180;",
                format!("server {};", env.gh.proxy()),
            ),
            (
                "server 127.0.0.1:8080;",
                format!("server {};", env.gh.upstream),
            ),
        ],
    );
    (run_nginx(bin, dir, &conf), front, reservation)
}

/// Caddy with the example's `Caddyfile` (addresses from its environment variables), admin
/// endpoint off, its home and data in `dir`, on port 0: the port it got is read back from
/// its log ("port 0 listener", `actual_address`).
fn start_caddy(bin: &Path, env: &Env, dir: &Path) -> (Proc, SocketAddr) {
    let log_path = dir.join("caddy.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(bin)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(repo("examples/caddy/Caddyfile"))
        .env("FRONT_ADDR", "127.0.0.1:0")
        .env("GATEHOUSE", env.gh.proxy().to_string())
        .env("APP", env.gh.upstream.to_string())
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("caddy starts");
    let child = Proc(child);
    for _ in 0..400 {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let actual = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["msg"] == "port 0 listener")
            .and_then(|l| l["actual_address"].as_str()?.parse().ok());
        if let Some(front) = actual {
            return (child, front);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "caddy never said where it listens: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// The paths an outsider tries to reach `/admin/x` by.
const ADMIN_SPELLINGS: &[&str] = &[
    "/admin",
    "/admin/x",
    "/admin/x?y=1",
    "/admin;x",
    "/admin;x/users",
    "/admin;jsessionid=1/x",
    "//admin/x",
    "///admin",
    "/%61dmin/x",
    "/%61%64%6d%69%6e/x",
    "/admin/./x",
    "/x/../admin/x",
    "/public/..;/admin/x",
    "/admin%2fx",
    "/./admin",
];

/// The headers an outsider adds to make the check look at `/` (or another method).
fn spoofs() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![],
        vec![("x-forwarded-uri", "/")],
        vec![("x-original-uri", "/")],
        vec![("x-forwarded-uri", "/"), ("x-original-uri", "/")],
        vec![("X-Forwarded-Method", "GET")],
        vec![("x-original-method", "GET")],
        vec![
            ("x-forwarded-uri", "/"),
            ("x-original-uri", "/"),
            ("x-forwarded-method", "GET"),
            ("x-original-method", "GET"),
        ],
        vec![("x-forwarded-uri", "/public"), ("x-forwarded-prefix", "/")],
    ]
}

/// Whether a response is the echo app's (the request reached the app).
fn reached_app(status: u16, body: &str) -> bool {
    status < 300 && body.contains("\"headers\"")
}

/// Raw HTTP/1.1 (so paths reach the proxy exactly as written).
async fn raw(
    front: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nConnection: close\r\n", front.port());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    let response = common::raw_request(front, &request).await;
    let status = if response.is_empty() {
        0
    } else {
        common::raw_status(&response)
    };
    (status, response)
}

/// The whole attack surface through one front proxy.
async fn check_front(name: &str, env: &Env, front: SocketAddr) {
    // No session: API clients get 401, browsers go to sign in (and come back to the page).
    for path in ["/", "/admin/x"] {
        let (status, _) = raw(front, "GET", path, &[]).await;
        assert_eq!(status, 401, "{name}: {path} without a session");
    }
    let browser = client()
        .get(format!("http://{front}/admin/x?a=1"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 302, "{name}: a browser without a session");
    let location = browser.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/oauth2/start?rd=%2Fadmin%2Fx%3Fa%3D1")
            || location.ends_with("/oauth2/start?rd=%2Fadmin%2Fx%3Fa%3D1"),
        "{name}: {location}"
    );

    // A browser signs in through the proxy (sign-in pages proxied to Gatehouse) and comes
    // back to the page it asked for.
    let browser = Browser::new();
    let journey = browser
        .follow(
            &format!("http://{front}/admin/x?a=1"),
            Some(("alice", "alice-pw")),
        )
        .await;
    assert_eq!(journey.status, 200, "{name}: {:?}", journey.hops);
    assert!(
        journey
            .hops
            .iter()
            .any(|(_, url)| url.starts_with(&format!("http://{front}/oauth2/callback"))),
        "{name}: the callback went through the proxy: {:?}",
        journey.hops
    );
    assert!(
        journey.url.ends_with("/admin/x?a=1") && journey.body.contains("alice"),
        "{name}: {} {}",
        journey.url,
        journey.body
    );

    // The outsider reaches the app outside /admin, with their identity.
    let cookie = ("cookie", env.outsider.as_str());
    let (status, body) = raw(front, "GET", "/reports", &[cookie]).await;
    assert!(
        reached_app(status, &body),
        "{name}: carol on /reports: {body}"
    );
    assert!(body.contains("carol"), "{name}: the app sees carol: {body}");

    // ... and never /admin, whatever the spelling and whatever the client adds.
    for path in ADMIN_SPELLINGS {
        for spoof in spoofs() {
            for method in ["GET", "POST"] {
                let mut headers = vec![cookie];
                headers.extend(spoof.iter().copied());
                let (status, body) = raw(front, method, path, &headers).await;
                assert!(
                    !reached_app(status, &body),
                    "{name}: carol reached {method} {path} with {spoof:?}: {status} {body}"
                );
            }
        }
    }

    // An absolute-form target (nginx forwards `$request_uri` as sent) is no way around.
    let absolute = format!("http://{front}/admin/x");
    let (status, body) = raw(front, "GET", &absolute, &[cookie, ("x-forwarded-uri", "/")]).await;
    assert!(
        !reached_app(status, &body),
        "{name}: carol reached {absolute}: {body}"
    );

    // The admin reaches /admin; the app sees the identity headers the proxy copied.
    for path in ["/admin", "/admin/x", "//admin/x", "/%61dmin/x"] {
        let (status, body) = raw(front, "GET", path, &[("cookie", env.admin.as_str())]).await;
        assert!(
            reached_app(status, &body),
            "{name}: alice on {path}: {status} {body}"
        );
        assert!(body.contains("alice"), "{name}: the app sees alice: {body}");
        assert!(body.contains("admins"), "{name}: and her groups: {body}");
    }
    // Alice with the spoofed headers of the other spelling is refused (they disagree).
    let (status, body) = raw(
        front,
        "GET",
        "/admin/x",
        &[
            ("cookie", env.admin.as_str()),
            ("x-original-uri", "/elsewhere"),
            ("x-forwarded-uri", "/elsewhere"),
        ],
    )
    .await;
    assert!(
        !reached_app(status, &body),
        "{name}: conflicting headers: {status} {body}"
    );
}

/// A signed-in user outside `admins` cannot reach `/admin` through nginx `auth_request` with
/// any spoofed `X-Forwarded-Uri` / `X-Original-URI` / method header or path spelling; a user
/// inside can; without a session an API client gets 401 and a browser is sent to sign in.
#[tokio::test]
async fn nginx_auth_request_checks_the_request_nginx_serves() {
    let Some(bin) = nginx() else {
        return;
    };
    let env = env("nginx").await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, front, reservation) = start_nginx(&bin, &env, dir.path());
    env.register_client(Some(front)).await;
    wait_listening(front, "nginx", &dir.path().join("logs/error.log")).await;
    drop(reservation);
    check_front("nginx", &env, front).await;
    // nginx keeps the forward-auth endpoint internal.
    let (status, _) = raw(
        front,
        "GET",
        "/oauth2/auth",
        &[("cookie", env.admin.as_str())],
    )
    .await;
    assert_eq!(status, 404);
}

/// The same attacks through Caddy `forward_auth`.
#[tokio::test]
async fn caddy_forward_auth_checks_the_request_caddy_serves() {
    let Some(bin) = binary("caddy", &["/usr/bin/caddy", "/usr/local/bin/caddy"]) else {
        return;
    };
    let env = env("caddy").await;
    let dir = tempfile::tempdir().unwrap();
    let (_caddy, front) = start_caddy(&bin, &env, dir.path());
    env.register_client(Some(front)).await;
    wait_listening(front, "caddy", &dir.path().join("caddy.log")).await;
    check_front("caddy", &env, front).await;
    let (status, _) = raw(
        front,
        "GET",
        "/oauth2/auth",
        &[("cookie", env.admin.as_str())],
    )
    .await;
    assert_eq!(status, 404);
}

/// A client that reaches Gatehouse itself (not from `trusted_proxies`) gets 403 from
/// forward-auth, whatever headers it sends, even with a valid session.
#[tokio::test]
async fn forward_auth_refuses_a_caller_that_is_not_a_trusted_proxy() {
    let env = env("nginx").await;
    let outside: IpAddr = "127.0.0.2".parse().unwrap();
    let direct = reqwest::Client::builder()
        .local_address(outside)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for spoof in spoofs() {
        let mut request = direct
            .get(env.gh.url("/oauth2/auth"))
            .header("cookie", env.admin.as_str())
            .header("x-original-uri", "/admin/x")
            .header("x-original-method", "GET");
        for (k, v) in &spoof {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{spoof:?}");
        assert!(response.headers().get("x-auth-request-user").is_none());
    }
    assert_eq!(
        env.gh
            .metric("gatehouse_forward_auth_refused_total{reason=\"untrusted_peer\"}")
            .await,
        spoofs().len() as f64
    );
}

/// The forwarded method and path are what the access rules and the MFA step-up see (never
/// the subrequest's own `GET`): a rule on `POST /reports` refuses a forwarded POST and lets
/// a forwarded GET through; a route requiring TOTP answers a session without it 401 with
/// `Location: /oauth2/mfa?rd=<the forwarded request>` for a browser (none for an API client).
#[tokio::test]
async fn the_forwarded_method_and_path_drive_access_rules_and_step_up() {
    let env = login_env::login_env(
        serde_json::json!({}),
        "[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [[access]]\npath = \"/reports\"\nmatch = \"prefix\"\nmethods = [\"POST\", \"DELETE\"]\n\
         allowed_groups = [\"admins\"]\n\
         [[access]]\npath = \"/vault\"\nmatch = \"prefix\"\nmfa = \"required\"\n",
    )
    .await;
    let (_, carol) = login_env::sign_in(&env, "carol", "carol-pw").await;
    let ask = |method: &'static str, uri: &'static str, accept: &'static str| {
        client()
            .get(env.url("/oauth2/auth"))
            .header("cookie", carol.as_str())
            .header("accept", accept)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-method", method)
            .send()
    };
    let json = "application/json";
    assert_eq!(ask("GET", "/reports/1", json).await.unwrap().status(), 202);
    assert_eq!(ask("POST", "/reports/1", json).await.unwrap().status(), 403);
    assert_eq!(ask("DELETE", "/reports", json).await.unwrap().status(), 403);
    assert_eq!(ask("PUT", "/reports", json).await.unwrap().status(), 202);

    let browser = ask("GET", "/vault/k?v=1", "text/html").await.unwrap();
    assert_eq!(browser.status(), 401);
    assert_eq!(
        browser.headers()["location"],
        "/oauth2/mfa?rd=%2Fvault%2Fk%3Fv%3D1"
    );
    let api = ask("GET", "/vault/k", json).await.unwrap();
    assert_eq!(api.status(), 401);
    assert!(api.headers().get("location").is_none());
    // A forwarded POST is no browser navigation: 401 without a Location either.
    let post = ask("POST", "/vault/k", "text/html").await.unwrap();
    assert_eq!(post.status(), 401);
    assert!(post.headers().get("location").is_none());
    assert_eq!(ask("GET", "/elsewhere", json).await.unwrap().status(), 202);
}
