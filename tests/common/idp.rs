//! Test harness for the OpenID Provider in `tests/idp/` plus a tiny scripted "browser".
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "common/idp.rs"]
//! mod idp;
//! ```
//!
//! [`TestIdp::start`] runs `node tests/idp/server.mjs <config>` on an ephemeral loopback port
//! (installing the npm dependencies first when `tests/idp/node_modules` lacks them). Users
//! known to the IdP unless the config replaces `users` (see `tests/idp/README.md`):
//!
//! | login | password   | email             | email_verified | groups        |
//! |-------|------------|-------------------|----------------|---------------|
//! | alice | `alice-pw` | alice@example.com | true           | admins, staff |
//! | bob   | `bob-pw`   | bob@example.com   | false          | staff         |
//! | carol | `carol-pw` | carol@example.org | true           | (none)        |
//!
//! The default client (when the config has no `clients`) is `gatehouse` / `gatehouse-secret`
//! with redirect URI `http://127.0.0.1:8080/oauth2/callback`; tests normally register their
//! own with [`client_config`]. PKCE (S256) is required unless the config says
//! `"pkce_required": false`.
//!
//! [`Browser`] is a reqwest client with a cookie jar that does not follow redirects by itself;
//! [`Browser::follow`] walks a redirect chain and fills in the IdP's login form on the way.

#![allow(dead_code)] // each test binary uses a part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::cookie::{CookieStore, Jar};
use reqwest::Url;

/// How long [`TestIdp::start`] waits for the ready line: a bound for a hung start, not a
/// measure of speed (node loading oidc-provider once took over 20 s on the 2-core machine
/// while the suite and a build ran beside it).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects (and form posts) [`Browser::follow`] makes before it gives up.
const MAX_HOPS: usize = 30;

// ------------------------------------------------------------------ the IdP --

/// A running test OpenID Provider; killed when dropped.
pub struct TestIdp {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub issuer: String,
    pub port: u16,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    _config: tempfile::NamedTempFile,
}

impl TestIdp {
    /// Starts the IdP with `config` (the JSON schema of `tests/idp/README.md`; `{}` for all
    /// defaults). `port` is forced to 0 and `exit_on_stdin_eof` to true, so the server also
    /// goes away when the test process dies without running `Drop`.
    ///
    /// Panics, with the server's stderr, when the server exits before its ready line, or
    /// when its start stalls twice ([`START_TIMEOUT`] each; see [`TestIdp::start_on_port`]).
    pub async fn start(config: serde_json::Value) -> TestIdp {
        Self::start_on_port(config, 0).await
    }

    /// [`TestIdp::start`] on a given port (0: the kernel picks), for a test that configures
    /// Gatehouse with the issuer before the IdP runs.
    ///
    /// A start that stalls (no ready line in time, the process still alive) is tried once
    /// more, after saying so on stderr with what the stalled process was doing; a server
    /// that exits (a bad config, a taken port) fails at once.
    pub async fn start_on_port(config: serde_json::Value, port: u16) -> TestIdp {
        let mut config = config;
        let obj = config
            .as_object_mut()
            .expect("TestIdp::start: the config must be a JSON object");
        obj.insert("port".into(), port.into());
        obj.insert("exit_on_stdin_eof".into(), true.into());

        tokio::task::spawn_blocking(ensure_npm_dependencies)
            .await
            .expect("npm install task");

        let mut file = tempfile::Builder::new()
            .prefix("gatehouse-idp-")
            .suffix(".json")
            .tempfile()
            .expect("create idp config file");
        serde_json::to_writer_pretty(&mut file, &config).expect("write idp config");
        file.flush().expect("flush idp config");

        let failed = |report: String, earlier: &str| -> ! {
            panic!("test IdP failed to start: {report}\nconfig: {config}{earlier}")
        };
        let first = match Self::launch(file.path()).await {
            Ok(up) => return up.with_config(file),
            Err(Failed::Exited(report)) => failed(report, ""),
            Err(Failed::Stalled(report)) => report,
        };
        eprintln!("test IdP start stalled; starting it again. {first}");
        match Self::launch(file.path()).await {
            Ok(up) => up.with_config(file),
            Err(Failed::Stalled(report) | Failed::Exited(report)) => failed(
                report,
                &format!("\n--- the first attempt stalled ---\n{first}"),
            ),
        }
    }

    /// One start of the server with the config file at `path`.
    async fn launch(path: &Path) -> Result<Launched, Failed> {
        let mut child = Command::new("node")
            .arg("tests/idp/server.mjs")
            .arg(path)
            .current_dir(crate_root())
            // Kept open for the lifetime of `child`: EOF tells the server to exit.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `node tests/idp/server.mjs` (is Node.js installed?)");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let mut pipe = child.stderr.take().expect("child stderr");
            let buf = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
            })
        };

        // The ready line arrives on a thread (blocking pipe), then stdout keeps being
        // drained so the server can never block on it.
        let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<String>>();
        {
            let pipe = child.stdout.take().expect("child stdout");
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                let first = reader.read_line(&mut line).map(|_| line);
                let _ = tx.send(first);
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
        }

        let outcome = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Err(_) => Err(Failed::Stalled(format!(
                "no ready line within {START_TIMEOUT:?}; the process then: {}",
                process_state(child.id())
            ))),
            Ok(Err(_)) => Err(Failed::Exited("stdout reader thread vanished".to_string())),
            Ok(Ok(Err(e))) => Err(Failed::Exited(format!("reading stdout failed: {e}"))),
            Ok(Ok(Ok(line))) if line.trim().is_empty() => Err(Failed::Exited(
                "stdout closed before the ready line".to_string(),
            )),
            Ok(Ok(Ok(line))) => parse_ready_line(&line).map_err(Failed::Exited),
        };

        match outcome {
            Ok((issuer, port)) => Ok(Launched {
                child,
                stderr,
                issuer,
                port,
            }),
            Err(failed) => {
                let _ = child.kill();
                let status = child.wait();
                // The pipe closes with the process, so this returns promptly.
                let _ = stderr_thread.join();
                let log = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
                let tell =
                    |why: String| format!("{why} (exit: {status:?})\n--- idp stderr ---\n{log}");
                Err(match failed {
                    Failed::Stalled(why) => Failed::Stalled(tell(why)),
                    Failed::Exited(why) => Failed::Exited(tell(why)),
                })
            }
        }
    }

    /// `issuer` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// Changes a user's claims for every token issued from now on (`null` removes one).
    pub async fn set_claims(&self, login: &str, claims: serde_json::Value) {
        let status = reqwest::Client::new()
            .put(self.url(&format!("/__test/users/{login}")))
            .body(claims.to_string())
            .send()
            .await
            .expect("test IdP control request")
            .status();
        assert_eq!(status, 204, "set_claims({login})");
    }

    /// Registers one client (`client_config(...)`) after start: for a relying party whose
    /// port is known only once it runs (start the IdP with `"clients": []`). Panics when the
    /// IdP refuses the metadata.
    pub async fn register_client(&self, client: serde_json::Value) {
        let response = reqwest::Client::new()
            .put(self.url("/__test/clients"))
            .body(client.to_string())
            .send()
            .await
            .expect("test IdP control request");
        let status = response.status();
        let why = response.text().await.unwrap_or_default();
        assert_eq!(status, 204, "register_client: {why}");
    }

    /// How many times the IdP's JWKS has been fetched so far.
    pub async fn jwks_fetches(&self) -> u64 {
        let body: serde_json::Value = reqwest::Client::new()
            .get(self.url("/__test/jwks-fetches"))
            .send()
            .await
            .expect("test IdP control request")
            .json()
            .await
            .expect("JSON count");
        body["count"].as_u64().expect("count")
    }

    /// A compact JWT with these header fields (over `alg: RS256, kid: rs256-1`) and claims,
    /// signed with the IdP's own RSA key: a token the IdP never issued but Gatehouse trusts
    /// the signature of.
    pub async fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let body = serde_json::json!({ "header": header, "claims": claims });
        let response = reqwest::Client::new()
            .post(self.url("/__test/sign"))
            .body(body.to_string())
            .send()
            .await
            .expect("test IdP control request");
        assert_eq!(response.status(), 200, "sign");
        response.text().await.expect("token")
    }

    /// Everything the server wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- test IdP {} stderr ---\n{}", self.issuer, self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process that printed its ready line.
struct Launched {
    child: Child,
    /// Its stderr so far (a thread keeps collecting it).
    stderr: Arc<Mutex<Vec<u8>>>,
    issuer: String,
    port: u16,
}

impl Launched {
    /// The running IdP, which keeps its config file as long as it runs.
    fn with_config(self, config: tempfile::NamedTempFile) -> TestIdp {
        TestIdp {
            issuer: self.issuer,
            port: self.port,
            child: self.child,
            stderr: self.stderr,
            _config: config,
        }
    }
}

/// Why a start of the test IdP failed.
enum Failed {
    /// No ready line in time while the process was still there.
    Stalled(String),
    /// The server exited, or said something that is not a ready line.
    Exited(String),
}

/// What process `pid` is doing, from `/proc`: its state, the CPU time it used and the
/// kernel function it waits in (to tell a busy start from a blocked one).
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which ends with the last ')'): state is the 1st,
    // utime and stime the 12th and 13th, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!(
        "state {}, user {} and system {} ticks of CPU, waiting in {:?}",
        fields.first().unwrap_or(&"?"),
        fields.get(11).unwrap_or(&"?"),
        fields.get(12).unwrap_or(&"?"),
        wchan
    )
}

fn parse_ready_line(line: &str) -> Result<(String, u16), String> {
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad ready line {line:?}: {e}"))?;
    let issuer = v["issuer"]
        .as_str()
        .ok_or_else(|| format!("ready line without issuer: {line:?}"))?;
    let port = v["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("ready line without port: {line:?}"))?;
    Ok((issuer.trim_end_matches('/').to_string(), port))
}

/// One confidential client for the `clients` array of the IdP config: grants
/// `authorization_code`, `refresh_token` and `client_credentials`, response type `code`,
/// `client_secret_basic` at the token endpoint.
pub fn client_config(
    client_id: &str,
    client_secret: &str,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    backchannel_logout_uri: Option<String>,
) -> serde_json::Value {
    let mut client = serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": post_logout_redirect_uris,
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    });
    if let Some(uri) = backchannel_logout_uri {
        client["backchannel_logout_uri"] = uri.into();
        // ID tokens then carry `sid`, and logout tokens name it.
        client["backchannel_logout_session_required"] = true.into();
    }
    client
}

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `npm ci --prefix tests/idp` once when `oidc-provider` is not installed.
///
/// Threads of one test binary serialise on a `OnceLock`; separate test binaries (cargo runs
/// them one after another, but two `cargo test` invocations may overlap) serialise on a lock
/// file created with `create_new`. A lock file older than 10 minutes is taken to be left over
/// from a killed run and removed.
fn ensure_npm_dependencies() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let idp_dir = crate_root().join("tests/idp");
        let lock_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gatehouse-idp-npm.lock");
        let installed = || {
            idp_dir
                .join("node_modules/oidc-provider/package.json")
                .is_file()
        };
        // Checked in this order, an install in progress elsewhere (lock present) never
        // counts as finished.
        if installed() && !lock_path.exists() {
            return;
        }
        let _lock = FileLock::acquire(&lock_path);
        if installed() {
            return;
        }
        let out = Command::new("npm")
            .arg("ci")
            .arg("--prefix")
            .arg(&idp_dir)
            .arg("--no-audit")
            .arg("--no-fund")
            .current_dir(crate_root())
            .stdin(Stdio::null())
            .output()
            .expect("run `npm ci` for tests/idp (is npm installed?)");
        assert!(
            out.status.success() && installed(),
            "`npm ci --prefix tests/idp` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    });
}

/// An exclusive lock held by the existence of a file; removed on drop (also when panicking).
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        const STALE: Duration = Duration::from_secs(600);
        const GIVE_UP: Duration = Duration::from_secs(900);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let started = std::time::Instant::now();
        loop {
            match std::fs::File::create_new(path) {
                Ok(mut file) => {
                    let _ = write!(file, "{}", std::process::id());
                    return FileLock(path.to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_is_stale(path, STALE) {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    assert!(
                        started.elapsed() < GIVE_UP,
                        "waited {GIVE_UP:?} for {} (remove it if no npm install is running)",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("create lock file {}: {e}", path.display()),
            }
        }
    }
}

/// A lock is stale when it is older than `max_age` or, where `/proc` tells, the process
/// whose id it holds is gone (a run interrupted with Ctrl-C never removes its lock).
fn lock_is_stale(path: &Path, max_age: Duration) -> bool {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_some_and(|a| a > max_age) {
        return true;
    }
    let owner = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match owner {
        Some(pid) if Path::new("/proc/self").exists() => {
            !Path::new("/proc").join(pid.to_string()).exists()
        }
        _ => false,
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// -------------------------------------------------------------- the browser --

/// Where [`Browser::follow`] ended up.
#[derive(Debug)]
pub struct Journey {
    /// Status and URL of every request made, in order (form posts included).
    pub hops: Vec<(u16, String)>,
    /// Status, URL, headers and body of the last response.
    pub status: u16,
    pub url: String,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Journey {
    /// The first value of query parameter `name` in the final URL.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let url = Url::parse(&self.url).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether the journey stopped on the IdP's login form.
    pub fn on_login_form(&self) -> bool {
        find_form(&self.body, "login-form").is_some()
    }
}

/// A scripted browser: cookie jar, no automatic redirects, 10 s timeout, no proxy.
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("build browser client");
        Browser { client, jar }
    }

    /// The underlying client (shares the cookie jar), for requests the helpers don't cover.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET with `Accept: text/html`, like a browser navigation. Panics on transport errors.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .header(http::header::ACCEPT, "text/html")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// POST `fields` form-urlencoded with `Accept: text/html`. Panics on transport errors.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(url)
            .header(http::header::ACCEPT, "text/html")
            .form(fields)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// Puts a cookie in the jar as if `url` had set it (`Set-Cookie` syntax).
    pub fn add_cookie(&self, set_cookie: &str, url: &str) {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("bad url {url:?}: {e}"));
        self.jar.add_cookie_str(set_cookie, &url);
    }

    /// The `Cookie` header the jar would send to `url`, if any.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("bad url {url:?}: {e}"));
        self.jar
            .cookies(&url)
            .and_then(|v| v.to_str().ok().map(str::to_owned))
    }

    /// GETs `url` and follows `Location` headers (relative ones resolved against the current
    /// URL). A 200 page holding `<form id="login-form">` is answered by posting
    /// `login`/`password` from `creds` to the form's action, after which redirects are
    /// followed again; with `creds == None` the journey stops on that form. The journey ends
    /// at the first non-redirect response that is not a login form to fill in (a failed
    /// login answers 401 with the form, which ends it too, as does a 200 form that was
    /// already posted to once). Panics after 30 requests.
    pub async fn follow(&self, url: &str, creds: Option<(&str, &str)>) -> Journey {
        self.follow_until(url, creds, |_| false).await
    }

    /// Like [`Browser::follow`], but stops *before* requesting a redirect target for which
    /// `stop` is true: the journey's `url` is then that target, not yet visited (status 0).
    /// For tests that want to fire the callback themselves.
    pub async fn follow_until(
        &self,
        url: &str,
        creds: Option<(&str, &str)>,
        stop: impl Fn(&Url) -> bool,
    ) -> Journey {
        let mut current = Url::parse(url).unwrap_or_else(|e| panic!("bad url {url:?}: {e}"));
        let mut hops: Vec<(u16, String)> = Vec::new();
        let mut posted_to: Vec<String> = Vec::new();
        let mut resp = self.get(current.as_str()).await;
        loop {
            let status = resp.status();
            hops.push((status.as_u16(), current.to_string()));
            assert!(
                hops.len() <= MAX_HOPS,
                "more than {MAX_HOPS} requests following {url}: {hops:#?}"
            );

            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let (true, Some(location)) = (status.is_redirection(), location) {
                current = current
                    .join(&location)
                    .unwrap_or_else(|e| panic!("bad Location {location:?} from {current}: {e}"));
                if stop(&current) {
                    return Journey {
                        hops,
                        status: 0,
                        url: current.to_string(),
                        headers: http::HeaderMap::new(),
                        body: String::new(),
                    };
                }
                resp = self.get(current.as_str()).await;
                continue;
            }

            let headers = resp.headers().clone();
            let body = resp
                .text()
                .await
                .unwrap_or_else(|e| panic!("reading body of {current}: {e}"));
            let login_action = if status == http::StatusCode::OK {
                find_form(&body, "login-form").map(|(action, _)| action)
            } else {
                None
            };
            let target = match (login_action, creds) {
                (Some(action), Some(_)) => {
                    let target = current
                        .join(&action)
                        .unwrap_or_else(|e| panic!("bad form action {action:?}: {e}"));
                    (!posted_to.contains(&target.to_string())).then_some(target)
                }
                _ => None,
            };
            let (Some(target), Some((user, password))) = (target, creds) else {
                return Journey {
                    hops,
                    status: status.as_u16(),
                    url: current.to_string(),
                    headers,
                    body,
                };
            };
            posted_to.push(target.to_string());
            current = target;
            resp = self
                .post_form(current.as_str(), &[("login", user), ("password", password)])
                .await;
        }
    }
}

// ------------------------------------------------------------- HTML helpers --

/// The action and hidden inputs (name, value) of `<form id="{form_id}">` in `html`, entities
/// decoded; the action is returned as written (resolve it against the page URL). Panics
/// when there is no such form. For the IdP's logout confirmation use
/// `form_fields(body, "op.logoutForm")` and post the fields plus `("logout", "yes")`.
pub fn form_fields(html: &str, form_id: &str) -> (String, Vec<(String, String)>) {
    find_form(html, form_id).unwrap_or_else(|| {
        let snippet: String = html.chars().take(2000).collect();
        panic!("no <form id={form_id:?}> in page:\n{snippet}")
    })
}

/// Like [`form_fields`], `None` when the page has no such form.
pub fn find_form(html: &str, form_id: &str) -> Option<(String, Vec<(String, String)>)> {
    let lower = html.to_ascii_lowercase(); // same byte offsets as `html`
    let mut from = 0;
    while let Some(rel) = lower[from..].find("<form") {
        let start = from + rel;
        let (attrs, after) = parse_tag(html, start)?;
        from = after;
        if attr(&attrs, "id") != Some(form_id) {
            continue;
        }
        let action = attr(&attrs, "action").unwrap_or_default().to_string();
        let end = lower[after..]
            .find("</form")
            .map_or(html.len(), |i| after + i);

        let mut hidden = Vec::new();
        let mut pos = after;
        while let Some(rel) = lower.get(pos..end).and_then(|s| s.find("<input")) {
            let Some((input, next)) = parse_tag(html, pos + rel) else {
                break;
            };
            pos = next;
            let is_hidden = attr(&input, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden"));
            if let (true, Some(name)) = (is_hidden, attr(&input, "name")) {
                let value = attr(&input, "value").unwrap_or_default();
                hidden.push((name.to_string(), value.to_string()));
            }
        }
        return Some((action, hidden));
    }
    None
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parses the tag whose `<` is at `start`: its attributes (names lower-cased, values
/// entity-decoded) and the offset just past its `>`. `None` when the tag is not closed.
fn parse_tag(html: &str, start: usize) -> Option<(Vec<(String, String)>, usize)> {
    let bytes = html.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' && bytes[i] != b'/'
    {
        i += 1; // the tag name
    }
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'>' {
            return Some((attrs, i + 1));
        }
        let name_start = i;
        while i < bytes.len()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
            && !bytes[i].is_ascii_whitespace()
        {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            attrs.push((name, String::new()));
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = match bytes.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                let close = html[i + 1..].find(q as char)? + i + 1;
                let v = &html[i + 1..close];
                i = close + 1;
                v
            }
            Some(_) => {
                let s = i;
                while i < bytes.len() && bytes[i] != b'>' && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                &html[s..i]
            }
            None => return None,
        };
        attrs.push((name, unescape_html(value)));
    }
}

/// Decodes `&amp; &lt; &gt; &quot; &apos; &#NN; &#xHH;`; anything else is kept as is.
pub fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
