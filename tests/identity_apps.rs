//! The example apps in `examples/apps/` (Python with PyJWT, Node with jose) run behind
//! Gatehouse after a real login and greet the signed-in user from `X-Gatehouse-Identity`,
//! verified against the JWKS Gatehouse serves; sent straight to the app, a forged, expired,
//! wrongly addressed, unsigned or missing assertion is refused with 401, while one correctly
//! signed with Gatehouse's own key is accepted (so the refusals are the checks at work).
//!
//! Their dependencies come from PyPI (into target/) and npm on first use. Where python3, pip,
//! node or npm is missing, or the registry cannot be reached, the test is skipped with a
//! reason, except under `CI=true`, where it fails.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::client;
use login_env::{login_env, sign_in, LoginEnv};

const ISSUER: &str = "https://gatehouse.test";
const AUDIENCE: &str = "app";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns `None`, with the reason printed) or, under `CI=true`, fails.
fn unavailable<T>(reason: String) -> Option<T> {
    assert!(!in_ci(), "under CI=true: {reason}");
    eprintln!("skipped: {reason}");
    None
}

fn succeeds(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// The app's command, with its dependencies installed.
enum App {
    Python,
    Node,
}

impl App {
    fn command(&self) -> Option<Command> {
        match self {
            App::Python => {
                let deps = root().join("target/pyapp-deps");
                let dir = root().join("examples/apps/python");
                let importable = || {
                    succeeds(
                        Command::new("python3")
                            .args(["-c", "import jwt, cryptography"])
                            .env("PYTHONPATH", &deps),
                    )
                };
                if importable().is_err() {
                    let installed = succeeds(
                        Command::new("python3")
                            .args(["-m", "pip", "install", "--quiet", "--target"])
                            .arg(&deps)
                            .arg("-r")
                            .arg(dir.join("requirements.txt")),
                    )
                    .and_then(|()| importable());
                    if let Err(e) = installed {
                        return unavailable(format!("PyJWT cannot be installed: {e}"));
                    }
                }
                let mut cmd = Command::new("python3");
                cmd.arg(dir.join("app.py")).env("PYTHONPATH", deps);
                Some(cmd)
            }
            App::Node => {
                let dir = root().join("examples/apps/node");
                if !dir.join("node_modules/jose/package.json").is_file() {
                    if let Err(e) = succeeds(
                        Command::new("npm")
                            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                            .arg(&dir),
                    ) {
                        return unavailable(format!("jose cannot be installed: {e}"));
                    }
                }
                let mut cmd = Command::new("node");
                cmd.arg(dir.join("app.mjs"));
                Some(cmd)
            }
        }
    }
}

/// A running app, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the app on `port`, trusting the JWKS of this Gatehouse, and waits for its
/// `listening` line.
fn start_app(app: &App, env: &LoginEnv, port: u16) -> Option<Running> {
    let mut cmd = app.command()?;
    let mut child = cmd
        .env(
            "GATEHOUSE_JWKS_URL",
            env.url("/.well-known/gatehouse/jwks.json"),
        )
        .env("GATEHOUSE_ISSUER", ISSUER)
        .env("GATEHOUSE_AUDIENCE", AUDIENCE)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the app starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening"), "the app said {line:?}");
    Some(Running(child))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An assertion signed with Gatehouse's own key (read from its data dir) under its `kid`.
fn sign_as_gatehouse(env: &LoginEnv, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read_to_string(env.data.path().join("identity-signing-es256.pem"))
        .expect("Gatehouse's generated signing key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&der)).expect("sign")
}

fn claims(aud: &str, iat: u64, exp: u64, name: &str) -> Value {
    json!({"iss": ISSUER, "aud": aud, "sub": "u-1", "iat": iat, "exp": exp,
           "preferred_username": name})
}

/// The status and JSON body the app gives for these identity headers, sent straight to it.
async fn ask_app(port: u16, assertions: &[&str]) -> (u16, Value) {
    let mut request = client().get(format!("http://127.0.0.1:{port}/direct"));
    for a in assertions {
        request = request.header("x-gatehouse-identity", *a);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn greets_the_signed_in_user_and_refuses_every_bad_assertion(app: App) {
    let port = free_port();
    let extra = format!(
        "[identity]\nissuer = \"{ISSUER}\"\n\
         [[upstreams]]\nid = \"{AUDIENCE}\"\npath_prefix = \"/app\"\nurl = \"http://127.0.0.1:{port}\"\n"
    );
    let env = login_env(json!({}), &extra).await;
    let Some(_app) = start_app(&app, &env, port) else {
        return;
    };

    // Through Gatehouse after a real login: the app greets alice.
    let (_browser, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let response = client()
        .get(env.url("/app/hello"))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello, alice!", "{body}");

    // Straight to the app: what a caller who bypasses Gatehouse could send.
    let jwks: Value = client()
        .get(env.url("/.well-known/gatehouse/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().expect("a kid").to_string();
    let t = now();
    let good = sign_as_gatehouse(&env, &kid, &claims(AUDIENCE, t, t + 300, "mallory"));
    // The control: Gatehouse's key, right issuer, audience and times, is accepted.
    let (status, body) = ask_app(port, &[&good]).await;
    assert_eq!(
        (status, &body["greeting"]),
        (200, &json!("Hello, mallory!"))
    );

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload =
        b64.encode(serde_json::to_vec(&claims(AUDIENCE, t, t + 300, "admin")).unwrap());
    let unsigned_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let bad: Vec<(&str, String)> = vec![
        (
            "claims changed under a valid signature",
            format!("{}.{}.{}", parts[0], tampered_payload, parts[2]),
        ),
        ("alg none", format!("{unsigned_header}.{}.", parts[1])),
        (
            "expired",
            sign_as_gatehouse(&env, &kid, &claims(AUDIENCE, t - 900, t - 600, "mallory")),
        ),
        (
            "another app's audience",
            sign_as_gatehouse(&env, &kid, &claims("other-app", t, t + 300, "mallory")),
        ),
        (
            "a kid Gatehouse does not serve",
            sign_as_gatehouse(
                &env,
                "not-a-served-kid",
                &claims(AUDIENCE, t, t + 300, "mallory"),
            ),
        ),
        ("not a JWT", "hello".to_string()),
    ];
    for (what, assertion) in &bad {
        let (status, body) = ask_app(port, &[assertion]).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, _) = ask_app(port, &[]).await;
    assert_eq!(status, 401, "no assertion");
    let (status, _) = ask_app(port, &[&good, &good]).await;
    assert_eq!(status, 401, "two assertions");
}

/// The Python app (PyJWT) greets the user Gatehouse signed in and refuses forged, expired,
/// misaddressed, unsigned and missing assertions.
#[tokio::test]
async fn the_python_app_verifies_the_identity_header() {
    greets_the_signed_in_user_and_refuses_every_bad_assertion(App::Python).await;
}

/// The Node app (jose) greets the user Gatehouse signed in and refuses forged, expired,
/// misaddressed, unsigned and missing assertions.
#[tokio::test]
async fn the_node_app_verifies_the_identity_header() {
    greets_the_signed_in_user_and_refuses_every_bad_assertion(App::Node).await;
}

/// A port for the app's child process, which takes its port on the command line and is
/// started after Gatehouse (it needs Gatehouse's JWKS address), while Gatehouse's config needs
/// the app's address first. The port is released before the child binds it; a collision shows
/// as the app failing to start, not as a wrong answer.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
