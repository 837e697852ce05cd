//! Config reload: `POST /api/reload` (admin token) and SIGHUP read the file again. A good file
//! is applied at once to the next request; a bad one is refused with every problem and the
//! old config keeps serving; keys that need a restart are named and left as they were; a
//! reload under load fails no request; SIGHUP never ends the process.

mod common;

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
