//! A Gatehouse with one connection (`test`) to a fresh test IdP, in front of the echo app,
//! with its store in a temp dir; and the sign-in helpers the login tests share. Include with
//! `#[path = "common/login_env.rs"] mod login_env;` next to `mod common;` and the `idp` module.

#![allow(dead_code)] // each test binary uses a part of this

use crate::common::{bind_gatehouse, client, start_echo, start_on_with_clock, Harness};
use crate::idp::{client_config, Browser, TestIdp};
use gatehouse::clock::Clock;

/// A Gatehouse with one connection to a fresh test IdP, its upstream, and a data dir.
pub struct LoginEnv {
    pub idp: TestIdp,
    pub gh: Harness,
    pub data: tempfile::TempDir,
    /// The config Gatehouse runs with (its `listen` and `admin_listen` are the bound ones).
    pub config: String,
}

impl LoginEnv {
    pub fn url(&self, path: &str) -> String {
        self.gh.url(path)
    }

    /// The status an API client gets for `/api` with this Cookie header.
    pub async fn api_status(&self, cookie: String) -> u16 {
        client()
            .get(self.url("/api"))
            .header("accept", "application/json")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Binds Gatehouse's listeners, starts the IdP (with `idp_extra` merged into its config) with
/// Gatehouse's URLs as redirect URIs, then Gatehouse (with `extra` TOML) on those listeners,
/// and waits until Gatehouse has discovered the IdP.
pub async fn login_env(idp_extra: serde_json::Value, extra: &str) -> LoginEnv {
    login_env_with(idp_extra, "", extra).await
}

/// [`login_env`] with `upstream_keys` added to the echo upstream's `[[upstreams]]` entry.
pub async fn login_env_with(
    idp_extra: serde_json::Value,
    upstream_keys: &str,
    extra: &str,
) -> LoginEnv {
    login_env_on(idp_extra, upstream_keys, extra, Clock::system()).await
}

/// [`login_env`] with Gatehouse on a manual clock standing at the present time: the test
/// moves it with `env.gh.clock().advance(..)` instead of sleeping. (The IdP keeps the real
/// time, so sign in before moving the clock far.)
pub async fn manual_login_env(idp_extra: serde_json::Value, extra: &str) -> LoginEnv {
    login_env_on(idp_extra, "", extra, Clock::manual_from_now()).await
}

async fn login_env_on(
    idp_extra: serde_json::Value,
    upstream_keys: &str,
    extra: &str,
    clock: Clock,
) -> LoginEnv {
    let upstream = start_echo().await;
    let listeners = bind_gatehouse();
    let bound = listeners.addresses();
    let (proxy, admin) = (bound.proxy[0], bound.admin);
    let base = format!("http://{proxy}");
    let mut idp_config = serde_json::json!({
        "clients": [client_config(
            "gatehouse",
            "gatehouse-secret",
            vec![format!("{base}/oauth2/callback")],
            vec![format!("{base}/"), format!("{base}/signed-out")],
            Some(format!("{base}/oauth2/backchannel-logout")),
        )],
    });
    if let (Some(target), Some(more)) = (idp_config.as_object_mut(), idp_extra.as_object()) {
        for (k, v) in more {
            target.insert(k.clone(), v.clone());
        }
    }
    let idp = TestIdp::start(idp_config).await;
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = ["{proxy}"]
admin_listen = "{admin}"
worker_threads = 2
shutdown_grace = "1s"
[log]
access_log = false
[store]
data_dir = "{data}"
[session]
cookie_secure = false
keys = ["{key}"]
[[upstreams]]
id = "echo"
url = "http://{upstream}"
{upstream_keys}
[[public]]
path = "/public"
match = "prefix"
[[connections]]
id = "test"
display_name = "Test IdP"
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
scopes = ["openid", "email", "profile", "groups"]
{extra}
"#,
        data = data.path().display(),
        key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        issuer = idp.issuer,
    );
    let gh = start_on_with_clock(upstream, &config, listeners, clock);
    gh.wait_ready().await;
    LoginEnv {
        idp,
        gh,
        data,
        config,
    }
}

/// Signs in through the IdP's form in a fresh browser; returns it and its Cookie header.
pub async fn sign_in(env: &LoginEnv, user: &str, password: &str) -> (Browser, String) {
    let browser = Browser::new();
    let journey = browser.follow(&env.url("/"), Some((user, password))).await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    let cookie = browser
        .cookie_header(&env.url("/"))
        .expect("a session cookie");
    (browser, cookie)
}

/// The csrf token of the sign-out confirmation form this browser is shown.
pub async fn sign_out_token(browser: &Browser, url: &str) -> String {
    let page = browser.get(url).await.text().await.unwrap();
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a sign-out form")
        .to_string()
}

pub fn echo_json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the echo app's JSON ({e}): {body}"))
}
