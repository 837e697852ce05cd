//! Config reload: `POST /api/reload` (admin token) and SIGHUP read the file again. A good file
//! is applied at once to the next request; a bad one is refused with every problem and the
//! old config keeps serving; keys that need a restart are named and left as they were; a
//! reload under load fails no request; SIGHUP never ends the process. With a real IdP:
//! connections added by reload are offered and sign in, removed ones end their sessions and
//! start no login, and a second factor required by reload steps up the next request.

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{client, config_text, raw_request, raw_status, start_echo, Echo};
use gatehouse::server::{Listeners, Running};

const TOKEN: &str = "reload-test-token-0123456789abcdef";

/// A Gatehouse serving a config file, and that file.
struct Served {
    _echo: Echo,
    gatehouse: Running,
    file: PathBuf,
    _dir: tempfile::TempDir,
    upstream: std::net::SocketAddr,
}

fn admin_section() -> String {
    format!("[admin]\ntoken = \"{TOKEN}\"\n")
}

async fn serve(extra: &str) -> Served {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let text = config_text(echo.addr, &format!("{}{extra}", admin_section()));
    std::fs::write(&file, &text).unwrap();
    let config = gatehouse::config::load(&file).unwrap();
    let listeners = Listeners::bind(&config.server).unwrap();
    let gatehouse = gatehouse::server::spawn_reloadable(&config, listeners, &file).unwrap();
    Served {
        upstream: echo.addr,
        _echo: echo,
        gatehouse,
        file,
        _dir: dir,
    }
}

impl Served {
    fn rewrite(&self, extra: &str) {
        let text = config_text(self.upstream, &format!("{}{extra}", admin_section()));
        std::fs::write(&self.file, text).unwrap();
    }

    async fn reload(&self, token: &str) -> (u16, serde_json::Value) {
        let response = client()
            .post(format!(
                "http://{}/api/reload",
                self.gatehouse.addresses.admin
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn status_of(&self, path: &str) -> u16 {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
        );
        raw_status(&raw_request(self.gatehouse.addresses.proxy[0], &request).await)
    }

    async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.gatehouse.addresses.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

const PUBLIC_DOCS: &str = "[[public]]\npath = \"/docs\"\nmatch = \"prefix\"\n";

/// A `[[public]]` rule added to the file opens its route at the next request after a reload;
/// the answer names what was applied, and the live config's hash changes.
#[tokio::test]
async fn a_public_rule_added_by_reload_opens_its_route() {
    let s = serve("").await;
    assert_eq!(s.status_of("/docs/a").await, 401);
    let before = s.metrics().await;
    s.rewrite(PUBLIC_DOCS);
    let (status, body) = s.reload(TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], serde_json::json!(["public"]), "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");
    assert_eq!(s.status_of("/docs/a").await, 200);
    assert_eq!(s.status_of("/other").await, 401);
    let after = s.metrics().await;
    assert!(
        after.contains("gatehouse_config_reloads_total{result=\"success\"} 1"),
        "{after}"
    );
    let hash = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("gatehouse_config_hash_info{"))
            .map(str::to_string)
    };
    assert!(hash(&before).is_some());
    assert_ne!(hash(&before), hash(&after));
}

/// A file with problems is refused with every problem and its key path (422); the old config
/// keeps serving, and the failure is counted. A file that cannot be read is refused too.
#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_config_keeps_serving() {
    let s = serve(PUBLIC_DOCS).await;
    assert_eq!(s.status_of("/docs/a").await, 200);
    s.rewrite(
        "[[public]]\npath = \"docs\"\nmatch = \"sideways\"\n[pages]\naccent_color = \"red\"\n",
    );
    let (status, body) = s.reload(TOKEN).await;
    assert_eq!(status, 422, "{body}");
    let problems = body["problems"].as_array().cloned().unwrap_or_default();
    assert!(problems.len() >= 2, "{body}");
    for key in ["public", "pages.accent_color"] {
        assert!(
            problems
                .iter()
                .any(|p| p.as_str().unwrap_or("").contains(key)),
            "{key}: {body}"
        );
    }
    assert_eq!(s.status_of("/docs/a").await, 200, "the old config serves");

    std::fs::write(&s.file, [0xff, 0xfe, 0x00]).unwrap();
    let (status, _) = s.reload(TOKEN).await;
    assert_eq!(status, 422);
    assert_eq!(s.status_of("/docs/a").await, 200);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
}

/// Keys that need a restart are named and left as they were; the rest of the file applies.
#[tokio::test]
async fn keys_that_need_a_restart_are_named_and_the_rest_applies() {
    let s = serve("").await;
    s.rewrite(&format!(
        "{PUBLIC_DOCS}[session]\nlifetime = \"2h\"\n[pages]\ntitle = \"Reloaded\"\n"
    ));
    let (status, body) = s.reload(TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], serde_json::json!(["pages", "public"]));
    assert_eq!(body["needs_restart"], serde_json::json!(["session"]));
    assert_eq!(s.status_of("/docs/x").await, 200);
}

/// Without the admin token (or with a wrong one) nothing is reloaded.
#[tokio::test]
async fn a_reload_needs_the_admin_token() {
    let s = serve("").await;
    s.rewrite(PUBLIC_DOCS);
    for token in ["", "wrong", &TOKEN[..TOKEN.len() - 1]] {
        let (status, _) = s.reload(token).await;
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(s.status_of("/docs/a").await, 401);
}

/// Requests keep flowing while the config is reloaded back and forth: every request is
/// answered by one config or the other (200 with the rule, 401 without), never an error.
#[tokio::test]
async fn requests_in_a_reload_storm_are_answered_by_one_config_or_the_other() {
    let s = std::sync::Arc::new(serve(PUBLIC_DOCS).await);
    let proxy = s.gatehouse.addresses.proxy[0];
    let load = tokio::spawn(async move {
        let http = client();
        let mut seen = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..400 {
            let status = http
                .get(format!("http://{proxy}/docs/a"))
                .header("accept", "application/json")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            *seen.entry(status).or_default() += 1;
        }
        seen
    });
    for round in 0..20 {
        s.rewrite(if round % 2 == 0 { "" } else { PUBLIC_DOCS });
        let (status, body) = s.reload(TOKEN).await;
        assert_eq!(status, 200, "{body}");
    }
    let seen = load.await.unwrap();
    assert!(
        seen.keys().all(|status| *status == 200 || *status == 401),
        "{seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 400);
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gatehouse"))
}

/// `gatehouse serve` reloads on SIGHUP (what `systemctl reload` and logrotate send) and keeps
/// running; a bad file on SIGHUP is refused and the process still runs.
#[tokio::test]
async fn sighup_reloads_the_file_and_never_ends_the_process() {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    // Without a connection, `serve` wants protected routes refused on purpose.
    let text = |extra: &str| {
        config_text(echo.addr, extra).replace("[server]\n", "[server]\ndeny_all = true\n")
    };
    std::fs::write(&file, text("")).unwrap();
    let mut served = common::Served::start(binary(), &[], &file);
    let status_of = |path: &'static str| {
        let proxy = served.proxy;
        async move {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
            );
            raw_status(&raw_request(proxy, &request).await)
        }
    };
    assert_ne!(status_of("/docs/a").await, 200);
    std::fs::write(&file, text(PUBLIC_DOCS)).unwrap();
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(hup(served.child.id()).success());
    let metrics_url = format!("http://{}/metrics", served.admin);
    let reloaded = |want: &'static str| {
        let url = metrics_url.clone();
        async move {
            for _ in 0..100 {
                let text = client()
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                if text.contains(want) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(reloaded("gatehouse_config_reloads_total{result=\"success\"} 1").await);
    assert_eq!(status_of("/docs/a").await, 200);

    std::fs::write(&file, "[server]\nlisten = 12\n").unwrap();
    assert!(hup(served.child.id()).success());
    assert!(reloaded("gatehouse_config_reloads_total{result=\"error\"} 1").await);
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the process ended on SIGHUP"
    );
    assert_eq!(status_of("/docs/a").await, 200);
    let _ = served.child.kill();
}

// ------------------------------------------------- connections, [login] and [mfa] --

/// A Gatehouse with connections to a real test IdP, serving a config file it reloads.
struct WithIdp {
    idp: idp::TestIdp,
    gatehouse: Running,
    file: PathBuf,
    /// The config before its connections (listeners, store, upstream, admin token).
    base: String,
    _data: tempfile::TempDir,
    _echo: Echo,
}

/// One `[[connections]]` entry for the test IdP's client `id` (its secret is `<id>-secret`);
/// it takes bearer tokens for the audience `api-<id>`.
fn connection(id: &str, issuer: &str) -> String {
    format!(
        "[[connections]]\nid = \"{id}\"\ndisplay_name = \"Sign in with {id}\"\nissuer = \"{issuer}\"\n\
         client_id = \"{id}\"\nclient_secret = \"{id}-secret\"\nscopes = [\"openid\", \"email\", \"profile\"]\n\
         allow_bearer = true\nbearer_audiences = [\"api-{id}\"]\n"
    )
}

/// Starts the IdP (clients `one` and `two`, both sending users back to Gatehouse) and a
/// Gatehouse with `connections` (and more TOML) from a config file.
async fn serve_with_idp(connections: &[&str], extra: &str) -> WithIdp {
    let echo = start_echo().await;
    let listeners = common::bind_gatehouse();
    let bound = listeners.addresses();
    let (proxy, admin) = (bound.proxy[0], bound.admin);
    let back = format!("http://{proxy}");
    let client = |id: &str| {
        idp::client_config(
            id,
            &format!("{id}-secret"),
            vec![format!("{back}/oauth2/callback")],
            vec![format!("{back}/")],
            None,
        )
    };
    let idp =
        idp::TestIdp::start(serde_json::json!({ "clients": [client("one"), client("two")] })).await;
    let data = tempfile::tempdir().unwrap();
    let base = format!(
        "[server]\nlisten = [\"{proxy}\"]\nadmin_listen = \"{admin}\"\nworker_threads = 2\n\
         shutdown_grace = \"1s\"\n[log]\naccess_log = false\n[store]\ndata_dir = \"{data}\"\n\
         [session]\ncookie_secure = false\nkeys = [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n\
         [[upstreams]]\nid = \"echo\"\nurl = \"http://{upstream}\"\n{admin_section}",
        data = data.path().join("store").display(),
        upstream = echo.addr,
        admin_section = admin_section(),
    );
    let file = data.path().join("gatehouse.toml");
    let text = config_with(&base, &idp.issuer, connections, extra);
    std::fs::write(&file, text).unwrap();
    let config = gatehouse::config::load(&file).unwrap();
    let gatehouse = gatehouse::server::spawn_reloadable(&config, listeners, &file).unwrap();
    let served = WithIdp {
        idp,
        gatehouse,
        file,
        base,
        _data: data,
        _echo: echo,
    };
    for id in connections {
        served.wait_discovered(id).await;
    }
    served
}

fn config_with(base: &str, issuer: &str, connections: &[&str], extra: &str) -> String {
    let listed: String = connections
        .iter()
        .map(|id| connection(id, issuer))
        .collect();
    format!("{base}{extra}\n{listed}")
}

impl WithIdp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gatehouse.addresses.proxy[0])
    }

    /// Writes the file with these connections (and more TOML), and reloads it.
    async fn reload_with(&self, connections: &[&str], extra: &str) -> serde_json::Value {
        self.reload_text(&config_with(
            &self.base,
            &self.idp.issuer,
            connections,
            extra,
        ))
        .await
    }

    /// Writes `text` to the file and reloads it; the reload must succeed.
    async fn reload_text(&self, text: &str) -> serde_json::Value {
        std::fs::write(&self.file, text).unwrap();
        let response = client()
            .post(format!(
                "http://{}/api/reload",
                self.gatehouse.addresses.admin
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.gatehouse.addresses.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (a bounded number of polls) until connection `id` is discovered.
    async fn wait_discovered(&self, id: &str) {
        let up = format!("gatehouse_idp_up{{connection=\"{id}\"}} 1");
        for _ in 0..200 {
            if self.metrics().await.contains(&up) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("connection {id} was never discovered");
    }

    /// Signs `user` in through connection `id` in a fresh browser; returns its Cookie header.
    async fn sign_in(&self, id: &str, user: &str) -> String {
        let browser = idp::Browser::new();
        let start = self.url(&format!("/oauth2/start?connection={id}&rd=/landing"));
        let journey = browser
            .follow(&start, Some((user, &format!("{user}-pw"))))
            .await;
        assert_eq!(journey.status, 200, "{:?}", journey.hops);
        let echo: serde_json::Value = serde_json::from_str(&journey.body).unwrap();
        assert_eq!(echo["headers"]["x-gatehouse-connection"][0], id, "{echo}");
        browser
            .cookie_header(&self.url("/"))
            .expect("a session cookie")
    }

    /// The status of `GET /api` with this Cookie header (an API client: no redirect).
    async fn api_status(&self, cookie: &str) -> u16 {
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

    /// An access token for `audience` signed with the IdP's key, valid for five minutes.
    async fn bearer_token(&self, audience: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.idp.issuer, "aud": audience, "sub": "service",
            "iat": now, "exp": now + 300,
        });
        self.idp.sign(serde_json::json!({}), claims).await
    }

    /// The status of `GET /api` with this bearer token.
    async fn bearer_status(&self, token: &str) -> u16 {
        client()
            .get(self.url("/api"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The stored sessions' connections, once the store agrees with `expected` (the store
    /// write is queued behind the in-memory revocation; bounded polls).
    async fn stored_connections(&self, expected: &[&str]) -> Vec<String> {
        let store = self.gatehouse.store.clone().expect("a store");
        let mut seen = Vec::new();
        for _ in 0..200 {
            let sessions = store.sessions().unwrap();
            seen = sessions
                .iter()
                .map(|s| s.identity.connection.clone())
                .collect::<Vec<_>>();
            seen.sort();
            if seen == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seen
    }
}

/// A connection added to the file is applied by a reload: it is discovered in the
/// background, the chooser offers it next to the old one, and a login through it works.
#[tokio::test]
async fn a_connection_added_by_reload_is_offered_and_signs_in() {
    let s = serve_with_idp(&["one"], "").await;
    // One connection: /oauth2/start goes straight to it.
    let before = client().get(s.url("/oauth2/start")).send().await.unwrap();
    assert_eq!(before.status(), 302);
    let body = s.reload_with(&["one", "two"], "").await;
    assert_eq!(
        body["applied"],
        serde_json::json!(["connections"]),
        "{body}"
    );
    assert_eq!(
        body["connections"]["added"],
        serde_json::json!(["two"]),
        "{body}"
    );
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");
    s.wait_discovered("two").await;
    let chooser = client().get(s.url("/oauth2/start")).send().await.unwrap();
    assert_eq!(chooser.status(), 200);
    let page = chooser.text().await.unwrap();
    for id in ["one", "two"] {
        assert!(
            page.contains(&format!("id=\"connection-{id}\"")),
            "{id}: {page}"
        );
    }
    let cookie = s.sign_in("two", "alice").await;
    assert_eq!(s.api_status(&cookie).await, 200);
}

/// A connection removed from the file stops at once: its live session gets 401 on the next
/// request (and is gone from the store), a login through it is refused at the start, a login
/// already at the IdP fails cleanly at the callback; the other connection's session goes on.
#[tokio::test]
async fn a_connection_removed_by_reload_ends_its_sessions_and_starts_no_login() {
    let s = serve_with_idp(&["one", "two"], "").await;
    let stays = s.sign_in("one", "alice").await;
    let goes = s.sign_in("two", "carol").await;
    assert_eq!(s.api_status(&goes).await, 200);
    let token = s.bearer_token("api-two").await;
    assert_eq!(
        s.bearer_status(&token).await,
        200,
        "a bearer token of `two`"
    );
    // A login through `two` that has passed the IdP but not reached the callback yet.
    let in_flight = idp::Browser::new();
    let journey = in_flight
        .follow_until(
            &s.url("/oauth2/start?connection=two&rd=/"),
            Some(("bob", "bob-pw")),
            |url| url.path() == "/oauth2/callback",
        )
        .await;
    assert_eq!(journey.status, 0, "{:?}", journey.hops);

    let body = s.reload_with(&["one"], "").await;
    assert_eq!(
        body["connections"]["removed"],
        serde_json::json!(["two"]),
        "{body}"
    );
    assert_eq!(body["connections"]["sessions_ended"], 1, "{body}");

    assert_eq!(
        s.api_status(&goes).await,
        401,
        "the removed connection's session"
    );
    let browser = client()
        .get(s.url("/page"))
        .header("accept", "text/html")
        .header("cookie", &goes)
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 302, "a browser is sent to sign in again");
    assert_eq!(
        s.api_status(&stays).await,
        200,
        "the other connection's session"
    );
    assert_eq!(
        s.bearer_status(&token).await,
        401,
        "the removed connection's bearer token"
    );
    let other = s.bearer_token("api-one").await;
    assert_eq!(
        s.bearer_status(&other).await,
        200,
        "the other connection's bearer token"
    );
    assert_eq!(s.stored_connections(&["one"]).await, ["one"]);
    let metrics = s.metrics().await;
    assert!(
        !metrics.contains("gatehouse_idp_up{connection=\"two\"}"),
        "a removed connection has no up state to alert on: {metrics}"
    );

    let start = client()
        .get(s.url("/oauth2/start?connection=two"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 404);
    let page = start.text().await.unwrap();
    assert!(page.contains("not offered"), "{page}");
    assert!(!page.contains("connection-two"), "{page}");

    let callback = in_flight.get(&journey.url).await;
    assert_eq!(callback.status(), 400);
    let page = callback.text().await.unwrap();
    assert!(page.contains("no longer offered"), "{page}");
    assert!(in_flight
        .cookie_header(&s.url("/"))
        .is_none_or(|c| !c.contains("_gatehouse=")));
}

/// `[mfa] totp = "required"` applied by a reload holds for the next request of a session
/// that signed in without a second factor: a browser is stepped up to the TOTP page, an API
/// client gets 401.
#[tokio::test]
async fn a_second_factor_required_by_reload_steps_up_the_next_request() {
    let s = serve_with_idp(&["one"], "").await;
    let cookie = s.sign_in("one", "alice").await;
    assert_eq!(s.api_status(&cookie).await, 200);
    let body = s
        .reload_with(&["one"], "[mfa]\ntotp = \"required\"\n")
        .await;
    assert_eq!(body["applied"], serde_json::json!(["mfa"]), "{body}");
    assert_eq!(s.api_status(&cookie).await, 401);
    let page = client()
        .get(s.url("/page?x=1"))
        .header("accept", "text/html")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 302);
    let location = page.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/oauth2/mfa?rd="), "{location}");
}

/// A changed connection applies to the next login and leaves its sessions alone: with a
/// client secret the IdP does not know, a new login fails at the token exchange while the
/// session made before the reload goes on; the right secret again makes logins work.
#[tokio::test]
async fn a_changed_connection_applies_to_new_logins_and_keeps_its_sessions() {
    let s = serve_with_idp(&["one"], "").await;
    let before = s.sign_in("one", "alice").await;
    let text = config_with(&s.base, &s.idp.issuer, &["one"], "");
    let wrong = text.replace(
        "client_secret = \"one-secret\"",
        "client_secret = \"not-it\"",
    );
    assert_ne!(wrong, text);
    let body = s.reload_text(&wrong).await;
    assert_eq!(
        body["connections"]["changed"],
        serde_json::json!(["one"]),
        "{body}"
    );
    assert_eq!(
        body["connections"]["removed"],
        serde_json::json!([]),
        "{body}"
    );
    assert_eq!(body["connections"]["sessions_ended"], 0, "{body}");
    assert_eq!(
        s.api_status(&before).await,
        200,
        "a session made before the change"
    );
    let browser = idp::Browser::new();
    let journey = browser
        .follow(
            &s.url("/oauth2/start?connection=one&rd=/"),
            Some(("carol", "carol-pw")),
        )
        .await;
    assert_ne!(journey.status, 200, "{:?}", journey.hops);
    assert!(
        !journey.body.contains("x-gatehouse-connection"),
        "{}",
        journey.body
    );

    s.reload_text(&text).await;
    let after = s.sign_in("one", "carol").await;
    assert_eq!(s.api_status(&after).await, 200);
}

/// A reload that also changes a listener applies the connection change and names the
/// listener key as needing a restart.
#[tokio::test]
async fn a_reload_that_changes_listeners_still_applies_connection_changes() {
    let s = serve_with_idp(&["one"], "").await;
    // Another proxy address: restart-only.
    let proxy = s.gatehouse.addresses.proxy[0];
    let text = config_with(&s.base, &s.idp.issuer, &["one", "two"], "").replace(
        &format!("listen = [\"{proxy}\"]"),
        "listen = [\"127.0.0.1:1\"]",
    );
    std::fs::write(&s.file, text).unwrap();
    let response = client()
        .post(format!("http://{}/api/reload", s.gatehouse.addresses.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["applied"],
        serde_json::json!(["connections"]),
        "{body}"
    );
    assert_eq!(
        body["needs_restart"],
        serde_json::json!(["server.listen"]),
        "{body}"
    );
    assert_eq!(
        body["connections"]["added"],
        serde_json::json!(["two"]),
        "{body}"
    );
    s.wait_discovered("two").await;
    let cookie = s.sign_in("two", "alice").await;
    assert_eq!(s.api_status(&cookie).await, 200);
}
