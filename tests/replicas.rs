//! Two Gatehouse replicas on one real PostgreSQL database (a fresh database per test; see
//! tests/common/postgres.rs), in front of one echo app, signing in at one real test IdP.
//! Browsers keep cookies per host, not per port, so one browser's cookies reach both
//! replicas, as behind a load balancer.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/replica_pair.rs"]
mod replica_pair;

use std::time::{Duration, Instant};

use common::postgres as pg;
use common::{client, Harness};
use idp::Browser;
use replica_pair::{start_pair, PairConfig, ReplicaPair, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Two replicas sharing a fresh database (back-channel logouts go to A), or `None` (skipped)
/// without PostgreSQL outside CI.
async fn replicas() -> Option<ReplicaPair> {
    Some(replicas_on(pg::fresh_database()?, "30s").await)
}

/// Two replicas sharing the database at `url`, with `[store] offline_grace = grace`.
async fn replicas_on(url: String, grace: &str) -> ReplicaPair {
    let pair = PairConfig {
        offline_grace: grace,
        backchannel: true,
        ..PairConfig::default()
    };
    start_pair(url, pair).await
}

/// Signs in at `at` through the IdP's form in a fresh browser.
async fn sign_in(at: &Harness, user: &str) -> Browser {
    let browser = Browser::new();
    let journey = browser
        .follow(&at.url("/"), Some((user, &format!("{user}-pw"))))
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    browser
}

/// The status a browser gets for `/` at a replica (200: signed in; 302: sent to sign in).
async fn status_at(browser: &Browser, at: &Harness) -> u16 {
    browser.get(&at.url("/")).await.status().as_u16()
}

/// Asks until `done` holds (at most `limit`); returns how long it took.
async fn until(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn admin(at: &Harness, op: Value) -> (u16, Value) {
    let response = client()
        .post(at.admin_url("/api/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&op)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A session made at replica A is served at replica B (a cache miss there: one read of the
/// shared store), with the same identity.
#[tokio::test]
async fn a_session_made_at_one_replica_works_at_the_other() {
    let r = or_skip!(replicas().await);
    let browser = sign_in(&r.a, "alice").await;
    let at_b = browser.get(&r.b.url("/whoami")).await;
    assert_eq!(at_b.status(), 200);
    let echo: Value = serde_json::from_str(&at_b.text().await.unwrap()).unwrap();
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice", "{echo}");
    assert!(
        echo["headers"]["x-gatehouse-user-id"][0].is_string(),
        "JIT account seen at B: {echo}"
    );
    assert_eq!(status_at(&browser, &r.a).await, 200);
}

/// Signing out at one replica ends the session at the other, which had it cached: the
/// other replica is told (LISTEN/NOTIFY) and refuses the cookie from then on.
#[tokio::test]
async fn signing_out_at_one_replica_ends_the_session_at_the_other() {
    let r = or_skip!(replicas().await);
    let browser = sign_in(&r.a, "alice").await;
    let kept = browser.cookie_header(&r.a.url("/")).unwrap();
    assert_eq!(status_at(&browser, &r.b).await, 200, "cached at B");
    let sign_out = r.a.url("/oauth2/sign_out");
    let page = browser.get(&sign_out).await.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a sign-out form")
        .to_string();
    let done = browser.post_form(&sign_out, &[("csrf", &csrf)]).await;
    assert_eq!(done.status(), 302);
    // The old cookie, replayed at B, stops working.
    let replay = || {
        let kept = kept.clone();
        let url = r.b.url("/api");
        async move {
            client()
                .get(url)
                .header("accept", "application/json")
                .header("cookie", kept)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let took = until(Duration::from_secs(10), async || replay().await == 401).await;
    let took = took.expect("B refuses the signed-out session");
    eprintln!("sign-out at A reached B after {took:?}");
    assert_eq!(replay().await, 401);
}

/// Disabling an account through the admin API of one replica ends its sessions at both,
/// also the one only the other replica made and holds.
#[tokio::test]
async fn disabling_an_account_at_one_replica_ends_its_sessions_at_both() {
    let r = or_skip!(replicas().await);
    let at_a = sign_in(&r.a, "alice").await;
    let at_b = sign_in(&r.b, "alice").await;
    assert_eq!(status_at(&at_a, &r.a).await, 200);
    assert_eq!(status_at(&at_b, &r.b).await, 200);
    let (status, answer) = admin(&r.a, json!({"op": "disable", "user": "alice"})).await;
    assert_eq!(status, 200, "{answer}");
    for (browser, name) in [(&at_a, "A's session"), (&at_b, "B's session")] {
        for replica in r.each() {
            let took = until(Duration::from_secs(10), async || {
                status_at(browser, replica).await != 200
            })
            .await;
            assert!(took.is_some(), "{name} still works at {}", replica.url("/"));
        }
    }
}

/// A role given at one replica reaches the headers of a session the other replica holds.
#[tokio::test]
async fn a_role_change_at_one_replica_reaches_the_other() {
    let r = or_skip!(replicas().await);
    let browser = sign_in(&r.b, "alice").await;
    assert_eq!(status_at(&browser, &r.b).await, 200);
    let (status, answer) = admin(
        &r.a,
        json!({"op": "role_add", "user": "alice", "role": "auditor"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let took = until(Duration::from_secs(10), async || {
        let body = browser.get(&r.b.url("/")).await.text().await.unwrap();
        body.contains("auditor")
    })
    .await;
    assert!(took.is_some(), "B's session never got the new role");
}

/// 50 first logins of one user at once, half through each replica, make one account: the
/// link is claimed in the database (a unique row), not read and then written.
#[tokio::test]
async fn fifty_parallel_first_logins_over_both_replicas_make_one_account() {
    let r = or_skip!(replicas().await);
    let browsers: Vec<Browser> = (0..50).map(|_| Browser::new()).collect();
    let callbacks = futures_util::future::join_all(browsers.iter().enumerate().map(|(i, b)| {
        let root = r.each()[i % 2].url("/");
        async move {
            b.follow_until(&root, Some(("alice", "alice-pw")), |u| {
                u.path() == "/oauth2/callback"
            })
            .await
        }
    }))
    .await;
    let results = futures_util::future::join_all(
        browsers
            .iter()
            .zip(&callbacks)
            .map(|(b, journey)| b.get(&journey.url)),
    )
    .await;
    for response in &results {
        assert_eq!(response.status(), 302);
    }
    let (status, answer) = admin(&r.b, json!({"op": "list"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["value"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let count = pg::psql(&r.url, "SELECT count(*) FROM users");
    assert_eq!(count, "1");
}

/// A login state is single-use across replicas: the IdP's answer, completed at A, replayed
/// with the same login cookie at B is refused (and makes no session).
#[tokio::test]
async fn a_login_answer_used_at_one_replica_is_refused_at_the_other() {
    let r = or_skip!(replicas().await);
    let browser = Browser::new();
    let journey = browser
        .follow_until(&r.a.url("/"), Some(("alice", "alice-pw")), |u| {
            u.path() == "/oauth2/callback"
        })
        .await;
    // The login cookie is scoped to the callback path.
    let login_cookie = browser.cookie_header(&journey.url).unwrap();
    let first = browser.get(&journey.url).await;
    assert_eq!(first.status(), 302);
    let replayed_url = journey.url.replace(&r.a.url(""), &r.b.url(""));
    let replay = client()
        .get(replayed_url)
        .header("cookie", login_cookie)
        .send()
        .await
        .unwrap();
    assert!(
        replay.status().is_client_error(),
        "replayed answer: {}",
        replay.status()
    );
    assert!(replay
        .headers()
        .get("set-cookie")
        .is_none_or(|c| { !c.to_str().unwrap_or("").starts_with("_gatehouse=") }));
    // Refused by the shared used-state record, not only later by the IdP (which refuses a
    // reused code anyway, so a status check alone could not fail).
    let page = replay.text().await.unwrap();
    assert!(page.contains("already used"), "{page}");
}

/// `gatehouse users ...` works on the database directly while the replicas run, and what it
/// does reaches them (here: a disabled account's live session ends).
#[tokio::test]
async fn the_users_cli_works_on_the_database_while_replicas_run() {
    let r = or_skip!(replicas().await);
    let browser = sign_in(&r.a, "alice").await;
    assert_eq!(status_at(&browser, &r.b).await, 200);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\ndata_dir = \"{}\"\n[[upstreams]]\nid = \"x\"\nurl = \"http://127.0.0.1:9\"\n[[connections]]\nid = \"test\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\nclient_secret = \"s\"\n",
            r.url,
            dir.path().display(),
            r.idp.issuer
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["users", "-c"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let listed = run(&["list", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("alice"));
    let disabled = run(&["disable", "alice"]);
    assert!(
        disabled.status.success(),
        "{}",
        String::from_utf8_lossy(&disabled.stderr)
    );
    for replica in r.each() {
        let took = until(Duration::from_secs(10), async || {
            status_at(&browser, replica).await != 200
        })
        .await;
        assert!(
            took.is_some(),
            "the session still works at {}",
            replica.url("/")
        );
    }
}

/// PostgreSQL stops under signed-in traffic and comes back. Meanwhile: sessions a replica
/// holds keep working for `offline_grace`, then it fails closed (503: a page for browsers,
/// JSON for APIs); logins get 503 at once; `/ready` is 503 and `gatehouse_store_up` 0. When
/// the database is back, the replica recovers by itself: the same session works again,
/// `/ready` is 200, and the account written before the outage is still there.
#[tokio::test]
async fn a_replica_rides_out_a_database_outage_then_fails_closed_and_recovers() {
    let server = or_skip!(pg::throwaway());
    let url = server.create_database();
    // A short grace, so the test sees both sides of it.
    let r = replicas_on(url.clone(), "3s").await;
    drop(r.b);
    let a = r.a;
    let browser = sign_in(&a, "alice").await;
    assert_eq!(status_at(&browser, &a).await, 200);
    let ready = |h: &Harness| {
        let url = h.admin_url("/ready");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&a).await, 200);

    server.stop();
    // At once: the session this replica holds still works (within the grace).
    assert_eq!(status_at(&browser, &a).await, 200, "within offline_grace");
    let noticed = until(Duration::from_secs(20), async || ready(&a).await == 503).await;
    eprintln!("/ready turned 503 after {noticed:?}");
    assert!(noticed.is_some(), "/ready stays 200 with the database down");
    assert_eq!(a.metric("gatehouse_store_up").await, 0.0);
    let start = Browser::new().get(&a.url("/oauth2/start")).await;
    assert_eq!(start.status(), 503, "a login needs the store at once");
    let failed_closed = until(Duration::from_secs(30), async || {
        status_at(&browser, &a).await == 503
    })
    .await;
    eprintln!("sessions refused after {failed_closed:?}");
    assert!(
        failed_closed.is_some(),
        "sessions keep working past the grace"
    );
    let api = client()
        .get(a.url("/api"))
        .header("accept", "application/json")
        .header("cookie", browser.cookie_header(&a.url("/")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 503);
    assert!(api.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("json"));

    server.start();
    let back = until(Duration::from_secs(30), async || {
        status_at(&browser, &a).await == 200
    })
    .await;
    eprintln!("the session works again {back:?} after the database returned");
    assert!(back.is_some(), "the replica does not recover");
    let ready_again = until(Duration::from_secs(10), async || ready(&a).await == 200).await;
    assert!(ready_again.is_some(), "/ready stays 503");
    assert_eq!(a.metric_reaching("gatehouse_store_up", 1.0).await, 1.0);
    assert_eq!(
        server.psql(&url, "SELECT count(*) FROM users").unwrap(),
        "1"
    );
}

/// A back-channel logout the IdP delivers to replica A ends a session only replica B made
/// and holds: A finds it in the store, deletes it, and B is told.
#[tokio::test]
async fn a_back_channel_logout_at_one_replica_ends_a_session_made_at_the_other() {
    let r = or_skip!(replicas().await);
    let browser = sign_in(&r.b, "alice").await;
    assert_eq!(status_at(&browser, &r.b).await, 200);
    // Sign out at the IdP itself: its confirmation form, then its back-channel call (to A).
    let end = format!("{}/session/end", r.idp.issuer);
    let page = browser.get(&end).await.text().await.unwrap();
    let (action, hidden) = idp::form_fields(&page, "op.logoutForm");
    let mut fields: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    fields.push(("logout", "yes"));
    let action = reqwest::Url::parse(&end).unwrap().join(&action).unwrap();
    let done = browser.post_form(action.as_str(), &fields).await;
    assert!(done.status().is_redirection() || done.status() == 200);
    let took = until(Duration::from_secs(10), async || {
        status_at(&browser, &r.b).await != 200
    })
    .await;
    eprintln!("the back-channel logout at A reached B after {took:?}");
    assert!(
        took.is_some(),
        "B's session outlived the IdP logout delivered to A"
    );
}
