//! No durable store write runs on a proxy worker thread: with every commit made 2 s slow,
//! sign-outs (which wait for their deletion to be durable) take that long, while other
//! sessions' requests on the same two worker threads are not held up.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::{Duration, Instant};

use login_env::{login_env, sign_in, sign_out_token};

const COMMIT_DELAY: Duration = Duration::from_secs(2);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Eight sign-outs against a store whose every commit takes 2 s run while another session
/// makes requests: the sign-outs wait for the store (each at least 2 s), the other session's
/// requests made meanwhile never wait anywhere near one commit (a worker blocked by a commit
/// would hold them for 2 s), and the ended sessions stay ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_store_does_not_delay_other_sessions_requests() {
    let env = login_env(serde_json::json!({}), "").await;
    let (_, steady) = sign_in(&env, "alice", "alice-pw").await;
    let mut leaving = Vec::new();
    for _ in 0..8 {
        let (browser, cookie) = sign_in(&env, "bob", "bob-pw").await;
        let token = sign_out_token(&browser, &env.url("/oauth2/sign_out")).await;
        leaving.push((browser, cookie, token));
    }
    let store = env.gh.gatehouse.store.clone().expect("a store");
    store.inject_commit_delay(COMMIT_DELAY);

    let url = env.url("/oauth2/sign_out");
    let sign_outs: Vec<_> = leaving
        .iter()
        .map(|(browser, _, token)| {
            let (client, url, token) = (browser.client().clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .form(&[("csrf", token.as_str())])
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), started.elapsed())
            })
        })
        .collect();

    let mut latencies = Vec::new();
    while !sign_outs.iter().all(|s| s.is_finished()) {
        let started = Instant::now();
        let status = env.api_status(steady.clone()).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200);
    }
    assert!(latencies.len() >= 20, "only {} requests", latencies.len());
    for handle in sign_outs {
        let (status, took) = handle.await.unwrap();
        assert_eq!(status, 302);
        assert!(
            took >= COMMIT_DELAY,
            "a sign-out answered in {took:?}, before its deletion could be durable"
        );
    }
    store.inject_commit_delay(Duration::ZERO);
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    eprintln!(
        "other session during slow commits: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        p99,
        latencies[latencies.len() - 1]
    );
    let slowest = latencies[latencies.len() - 1];
    assert!(
        slowest < COMMIT_DELAY / 2,
        "a request took {slowest:?} (p99 {p99:?}): it waited for a store commit"
    );
    for (_, cookie, _) in &leaving {
        assert_eq!(env.api_status(cookie.clone()).await, 401);
    }
    let stored = store.sessions().unwrap();
    assert_eq!(
        stored.len(),
        1,
        "only the steady session is left in the store"
    );
}
