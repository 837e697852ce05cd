//! End to end in a real browser: Debian's chromium, driven by `tests/browser/first_login.mjs`
//! (playwright-core), signs in through Gatehouse and the test IdP and enrols TOTP, with
//! everything on 127.0.0.1. Needs `/usr/bin/chromium` (`apt-get install chromium`) and
//! `npm ci --prefix tests/browser`; `.ci/run` installs both. Screenshots of every page go to
//! `target/e2e-screenshots/`. The server is branded (`[pages]`), and the script checks the
//! branding and runs accessibility checks (lang, labels, contrast in light and dark mode,
//! focus outline and Tab order) on every Gatehouse page.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;
#[path = "common/smtp.rs"]
mod smtp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bind_gatehouse, start_echo, start_on};
use idp::{client_config, TestIdp};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the browser script may take before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
const SESSION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const MFA_KEY: &str = "bWZhLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc=";
const SCREENSHOTS: [&str; 8] = [
    "01-chooser-dark.png",
    "01-chooser.png",
    "02-idp-login.png",
    "03-enrol-dark.png",
    "03-enrol.png",
    "04-recovery-codes-dark.png",
    "04-recovery-codes.png",
    "05-app.png",
];
/// The branding the server is configured with, as the script expects it.
const BRAND_TITLE: &str = "Acme Intranet";
const BRAND_LOGO: &str = "/brand/logo.svg";
/// A dark green: readable on white (used in light mode), not on the dark background (dark
/// mode keeps the built-in accent).
const BRAND_ACCENT: &str = "#1f6f43";

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when the browser or the driver is not installed.
fn require_browser_tools() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's chromium with \
         `apt-get update && apt-get install -y chromium` (.ci/run does this)"
    );
    let driver = crate_root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        driver.is_file(),
        "playwright-core is not installed in tests/browser: run \
         `npm ci --prefix tests/browser` (.ci/run does this; never `npx playwright install`)"
    );
}

/// What the browser script did: exit status (None when killed after the timeout), stdout and
/// stderr.
struct ScriptRun {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `node tests/browser/first_login.mjs <start_url> <shots> <brand>`, killing it after
/// [`SCRIPT_TIMEOUT`]. Blocking: call it from `spawn_blocking`.
fn run_browser_script(start_url: &str, shots: &Path, brand: &str) -> ScriptRun {
    run_node(
        "tests/browser/first_login.mjs",
        &[start_url, &shots.display().to_string(), brand],
    )
}

/// Runs `node <script> <args...>` from the crate root, killing it after [`SCRIPT_TIMEOUT`].
/// Blocking.
fn run_node(script: &str, args: &[&str]) -> ScriptRun {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(crate_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `node {script}` (is Node.js installed?): {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the browser script") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ScriptRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A first login in a real browser, end to end: a protected page sends chromium to the
/// chooser of two connections, the test IdP signs alice in, Gatehouse makes her set up TOTP
/// (the script computes the code itself from the secret the page shows, with its own RFC 6238
/// implementation), shows ten recovery codes once, and then lets her through to the page she
/// asked for, where the app sees her identity headers. Every page is screenshotted. Every
/// Gatehouse page shows the configured title, logo and accent colour, and passes the
/// accessibility checks in light and dark mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_login_in_a_real_browser_enrols_totp_and_reaches_the_app() {
    require_browser_tools();

    let listeners = bind_gatehouse();
    let proxy = listeners.addresses().proxy[0];
    let base = format!("http://{proxy}");
    let client = client_config(
        "gatehouse",
        "gatehouse-secret",
        vec![format!("{base}/oauth2/callback")],
        vec![format!("{base}/")],
        None,
    );
    let test_idp = TestIdp::start(serde_json::json!({ "clients": [client.clone()] })).await;
    let other_idp = TestIdp::start(serde_json::json!({ "clients": [client] })).await;
    let upstream = start_echo().await;
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = ["{proxy}"]
admin_listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "1s"
[log]
access_log = false
[store]
data_dir = "{data}"
[session]
cookie_secure = false
keys = ["{SESSION_KEY}"]
[mfa]
totp = "required"
when_no_local_account = "deny"
issuer = "Gatehouse"
keys = ["{MFA_KEY}"]
[[upstreams]]
id = "echo"
url = "http://{upstream}"
[[public]]
path = "{BRAND_LOGO}"
[pages]
title = "{BRAND_TITLE}"
logo_url = "{BRAND_LOGO}"
accent_color = "{BRAND_ACCENT}"
[[connections]]
id = "test"
display_name = "Test IdP"
issuer = "{test_issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
scopes = ["openid", "email", "profile", "groups"]
[[connections]]
id = "other"
display_name = "Other IdP"
issuer = "{other_issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
scopes = ["openid", "email", "profile"]
"#,
        data = data.path().display(),
        test_issuer = test_idp.issuer,
        other_issuer = other_idp.issuer,
    );
    let gh = start_on(upstream, &config, listeners);
    gh.wait_ready().await;

    let shots: PathBuf = crate_root().join("target/e2e-screenshots");
    std::fs::create_dir_all(&shots).expect("create target/e2e-screenshots");
    let start_url = gh.url("/private/page");
    let brand = serde_json::json!({
        "title": BRAND_TITLE,
        "logo": BRAND_LOGO,
        "accent": BRAND_ACCENT,
    })
    .to_string();
    let run = {
        let (url, dir) = (start_url.clone(), shots.clone());
        tokio::task::spawn_blocking(move || run_browser_script(&url, &dir, &brand))
            .await
            .expect("browser script task")
    };
    // (On a panic the IdPs print their own logs when dropped.)
    let context = || {
        format!(
            "--- script stdout ---\n{}\n--- script stderr ---\n{}",
            run.stdout, run.stderr
        )
    };
    let status = run.status.unwrap_or_else(|| {
        panic!(
            "the browser script did not finish within {SCRIPT_TIMEOUT:?}\n{}",
            context()
        )
    });
    assert!(
        status.success(),
        "the browser script failed ({status})\n{}",
        context()
    );

    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from the script\n{}", context()));
    let result: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad JSON line ({e}): {line}\n{}", context()));
    assert_eq!(result["ok"], true, "{line}");
    let user = &result["headers"]["x-auth-request-user"];
    assert!(
        user == "alice" || user[0] == "alice",
        "the app saw x-auth-request-user {user}: {line}"
    );
    assert!(
        !result["headers"]["x-gatehouse-user-id"].is_null(),
        "the app saw no x-gatehouse-user-id: {line}"
    );
    let reported = result["screenshots"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(reported, SCREENSHOTS.len(), "{line}");
    for name in SCREENSHOTS {
        let file = shots.join(name);
        let bytes = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("screenshot {} missing: {e}", file.display()));
        assert!(
            bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "screenshot {} is not a PNG of a page ({} bytes)",
            file.display(),
            bytes.len()
        );
    }
    eprintln!(
        "browser first login ok; screenshots in {}\n{line}",
        shots.display()
    );
}

/// Email OTP in a real browser: chromium signs alice in at the test IdP, presses "Email me a
/// code" on Gatehouse's page, the script reads the code from the real SMTP server's mailbox and
/// types it, and the app is reached with alice's identity headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_otp_login_in_a_real_browser_reaches_the_app() {
    require_browser_tools();
    let Some(mail) = smtp::SmtpServer::start(smtp::SmtpOptions::default()) else {
        return;
    };
    let extra = format!(
        "[mfa]\ntotp = \"off\"\nemail_otp = \"required\"\n[smtp]\nhost = \"127.0.0.1\"\n\
         port = {}\nsecurity = \"none\"\nfrom = \"no-reply@example.com\"\n",
        mail.port
    );
    let env = login_env::login_env(serde_json::json!({}), &extra).await;
    let start_url = env.url("/private/page");
    let mailbox = mail.mailbox.path().display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        run_node("tests/browser/email_otp.mjs", &[&start_url, &mailbox])
    })
    .await
    .expect("browser script task");
    let context = format!(
        "--- script stdout ---\n{}\n--- script stderr ---\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "the Email OTP browser walk failed\n{context}"
    );
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(result["ok"], true, "{context}");
    assert_eq!(result["path"], "/private/page", "{line}");
    let user = &result["headers"]["x-auth-request-user"];
    assert!(user == "alice" || user[0] == "alice", "{line}");
    assert_eq!(mail.messages().len(), 1, "one mail");
}
