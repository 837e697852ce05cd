//! `gatehouse users ...` on the store file and through a running server's admin API; store
//! files that are locked or corrupt at startup; and a store that survives SIGKILL mid-run.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{get_status, start_echo, Served};
use idp::{client_config, Browser, TestIdp};
use login_env::{login_env, sign_in};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const ADMIN_TOKEN: &str = "cli-admin-token-0123456789";

/// Runs `gatehouse users --config <config> <args>`: (exit code, stdout, stderr).
fn users(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("users")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run gatehouse users");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = users(config, args);
    assert_eq!(code, 0, "users {args:?}: {stderr}");
    stdout
}

fn offline_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[store]\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// With no server running, every command works on the store file (naming an account by id,
/// email or username), prints a table for people and JSON or CSV for scripts (JSON without
/// internal fields unless `--raw`), and audits each change.
#[test]
fn the_cli_round_trips_on_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path());
    let added = ok(&config, &["add", "alice", "--email", "Alice@Example.com"]);
    assert!(added.contains("alice@example.com"), "{added}");
    let listed: Value = serde_json::from_str(&ok(&config, &["list", "--json"])).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    ok(&config, &["roles", "add", &id, "editor"]);
    ok(&config, &["attrs", "set", &id, "desk", "4F"]);
    let shown = ok(&config, &["show", "alice@example.com"]);
    // By username too (any case), and `--json` leaves out the internal fields, `--raw` not.
    let by_name: Value = serde_json::from_str(&ok(&config, &["show", "ALICE", "--json"])).unwrap();
    assert_eq!(by_name["id"], id.as_str());
    for internal in ["version", "sealed_secret", "recovery_hashes", "failures"] {
        assert!(
            by_name.get(internal).is_none() && by_name["mfa"].get(internal).is_none(),
            "{internal}: {by_name}"
        );
    }
    let raw: Value =
        serde_json::from_str(&ok(&config, &["show", "alice", "--json", "--raw"])).unwrap();
    assert!(
        raw.get("version").is_some() && raw["mfa"].get("failures").is_some(),
        "{raw}"
    );
    assert!(
        shown.contains("editor") && shown.contains("desk=4F"),
        "{shown}"
    );
    let table = ok(&config, &["list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains("alice"));
    ok(&config, &["disable", &id]);
    let csv = ok(&config, &["export", "--format", "csv"]);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,username,email"));
    let row = lines.next().unwrap();
    assert!(row.contains("disabled") && row.contains("editor"), "{row}");
    let exported: Value = serde_json::from_str(&ok(&config, &["export"])).unwrap();
    assert_eq!(exported[0]["disabled"], true);
    let audit: Value = serde_json::from_str(&ok(&config, &["audit", &id, "--json"])).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "role_added", "attribute_set", "disabled"]
    );
    let pruned = ok(&config, &["prune", "--inactive", "90d", "--dry-run"]);
    assert!(pruned.starts_with("would delete 0"), "{pruned}");
    ok(&config, &["delete", &id]);
    let (code, _, stderr) = users(&config, &["show", &id]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no user"), "{stderr}");
    let (code, _, stderr) = users(&config, &["prune", "--inactive", "soon"]);
    assert_eq!(code, 2, "{stderr}");
}

/// While a server holds the store, the same commands go through its admin API: the change
/// reaches the live session at once (a disabled user's session dies).
#[tokio::test]
async fn the_cli_goes_through_the_admin_api_while_the_server_holds_the_store() {
    let env = login_env(json!({}), &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")).await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let file = env.data.path().join("cli.toml");
    std::fs::write(&file, &env.config).unwrap();
    let config = file.clone();
    let run = move |args: Vec<&'static str>| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || users(&config, &args))
                .await
                .unwrap()
        }
    };
    let (code, stdout, stderr) = run(vec!["list", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["username"], "alice");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let (code, stdout, _) = run(vec!["show", "alice@example.com"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("test:alice"), "{stdout}");
    assert_eq!(env.api_status(cookie.clone()).await, 200);
    let disable = {
        let file = file.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || users(&file, &["disable", &id]))
    };
    let (code, _, stderr) = disable.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.api_status(cookie).await, 401);
    let (code, stdout, _) = run(vec!["export", "--format", "csv"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.lines().nth(1).unwrap().contains(",disabled,"),
        "{stdout}"
    );
    let audit = {
        let file = file.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || users(&file, &["audit", &id]))
            .await
            .unwrap()
    };
    assert!(
        audit.1.contains("created") && audit.1.contains("disabled"),
        "{}",
        audit.1
    );

    let wrong = env.data.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        env.config.replace(ADMIN_TOKEN, "some-other-token-0000"),
    )
    .unwrap();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || users(&wrong, &["list"]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("admin token"), "{stderr}");
}

/// Config for the binary with one connection, its store in `data`.
fn served_config(data: &Path, issuer: &str, listen: &str, admin: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
admin_listen = "{admin}"
# The test logs in as soon as /ready answers 200: wait for the IdP too.
ready_requires_idp = true
worker_threads = 2
[log]
access_log = false
[store]
data_dir = "{data}"
[session]
cookie_secure = false
[[upstreams]]
url = "http://{upstream}"
[[connections]]
id = "test"
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
"#,
        data = data.display()
    )
}

fn serve(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse serve")
}

/// A store locked by another process, or a file that is not a store, stops the start with
/// exit 1 and a message naming the file; the file is left as it was.
#[test]
fn a_locked_or_corrupt_store_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        served_config(
            &data,
            "http://127.0.0.1:1",
            "127.0.0.1:0",
            "127.0.0.1:0",
            "127.0.0.1:1",
        ),
    )
    .unwrap();
    let held = gatehouse::store::Store::open(&data).unwrap();
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another process") && stderr.contains("gatehouse.redb"),
        "{stderr}"
    );
    drop(held);

    let file = data.join("gatehouse.redb");
    std::fs::write(&file, b"certainly not a redb file").unwrap();
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gatehouse.redb"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"certainly not a redb file");
}

/// Logins run against a real `gatehouse serve` process, which is killed with SIGKILL while
/// they go on; the store opens again and holds every user whose login had completed.
#[tokio::test]
async fn a_store_reopened_after_sigkill_holds_every_committed_user() {
    let users_json: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("u{i}"), json!({"password": "pw", "claims": {"email": format!("u{i}@example.com"), "email_verified": true}})))
        .collect();
    // The client is registered once the child has said where it listens.
    let idp = TestIdp::start(json!({ "clients": [], "users": users_json })).await;
    let upstream = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        served_config(
            &data,
            &idp.issuer,
            "127.0.0.1:0",
            "127.0.0.1:0",
            &upstream.to_string(),
        ),
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
    let ready = child.admin_url("/ready");
    for _ in 0..200 {
        if get_status(&ready).await == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        get_status(&ready).await,
        Some(200),
        "gatehouse never became ready"
    );

    // Two streams of logins; the kill lands while both are running.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut streams = Vec::new();
    for stream in 0..2 {
        let tx = done_tx.clone();
        let root = format!("{base}/");
        streams.push(tokio::spawn(async move {
            for i in (stream..40).step_by(2) {
                let login = format!("u{i}");
                let browser = Browser::new();
                let Ok(journey) = tokio::time::timeout(
                    Duration::from_secs(5),
                    browser.follow_until(&root, Some((&login, "pw")), |u| {
                        u.path() == "/oauth2/callback"
                    }),
                )
                .await
                else {
                    return;
                };
                match browser.client().get(&journey.url).send().await {
                    Ok(r) if r.status() == 302 && r.headers().contains_key("set-cookie") => {
                        let _ = tx.send(login);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(done_tx);
    let mut committed = Vec::new();
    while let Some(login) = done_rx.recv().await {
        committed.push(login);
        if committed.len() == 12 {
            child.child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let _ = child.child.wait();
    for s in streams {
        let _ = s.await;
    }
    while let Ok(login) = done_rx.try_recv() {
        committed.push(login);
    }
    assert!(committed.len() >= 12, "{committed:?}");

    let store = gatehouse::store::Store::open(&data).expect("the store opens after SIGKILL");
    store
        .read(|tx| {
            for login in &committed {
                assert!(
                    tx.user_by_link("test", login)?.is_some(),
                    "{login} completed its login but is not in the store"
                );
            }
            Ok(())
        })
        .unwrap();
    let sessions = store.sessions().unwrap();
    assert!(
        sessions.len() >= committed.len(),
        "{} sessions",
        sessions.len()
    );
}
