//! No durable store write runs on a proxy worker thread: with every commit made slow (2 s, and
//! the 200 ms), sign-outs (which wait for their deletion to be durable) take that
//! long, while other sessions' requests on the same two worker threads are not held up.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::{Duration, Instant};

use login_env::{login_env, sign_in, sign_out_token};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// How the sign-outs are sent while the commits are slow.
#[derive(Clone, Copy, Debug)]
enum SignOuts {
    /// All eight at once: group commit may put them in one or a few commits.
    AtOnce,
    /// Two at a time, four rounds: at least four commit delays in a row, each with two
    /// sign-outs waiting (as many as there are proxy worker threads; with work stealing, a
    /// single thread that blocked would not hold up the other requests).
    InPairs,
}

/// What the other session saw while the sign-outs waited for their commits.
struct Run {
    /// The other session's request latencies, sorted.
    latencies: Vec<Duration>,
}

impl Run {
    fn p99(&self) -> Duration {
        percentile(&self.latencies, 0.99)
    }

    fn slowest(&self) -> Duration {
        self.latencies[self.latencies.len() - 1]
    }
}

/// Signs in a steady user and eight leaving ones, makes every commit take `commit_delay`,
/// then signs the eight out (`sign_outs`) while the steady session keeps making requests,
/// each on a new connection. Checks the facts that hold whatever the timing: each sign-out
/// answered 302 and took at least one commit delay (its deletion was durable first), every
/// steady request passed, the ended sessions are refused and only the steady one is stored.
/// Prints and returns the steady session's latencies.
async fn sign_outs_during_slow_commits(commit_delay: Duration, sign_outs: SignOuts) -> Run {
    let env = login_env(serde_json::json!({}), "").await;
    let (_, steady) = sign_in(&env, "alice", "alice-pw").await;
    let mut leaving = Vec::new();
    for _ in 0..8 {
        let (browser, cookie) = sign_in(&env, "bob", "bob-pw").await;
        let token = sign_out_token(&browser, &env.url("/oauth2/sign_out")).await;
        leaving.push((browser, cookie, token));
    }
    let store = env.gh.gatehouse.store.clone().expect("a store");
    store.inject_commit_delay(commit_delay);

    let url = env.url("/oauth2/sign_out");
    let requests: Vec<_> = leaving
        .iter()
        .map(|(browser, _, token)| (browser.client().clone(), url.clone(), token.clone()))
        .collect();
    let sign_out = |(client, url, token): (reqwest::Client, String, String)| async move {
        let started = Instant::now();
        let response = client
            .post(&url)
            .form(&[("csrf", token.as_str())])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), started.elapsed())
    };
    let tasks: Vec<_> = match sign_outs {
        SignOuts::AtOnce => requests
            .into_iter()
            .map(|r| tokio::spawn(async move { vec![sign_out(r).await] }))
            .collect(),
        SignOuts::InPairs => vec![tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut requests = requests.into_iter();
            while let (Some(a), b) = (requests.next(), requests.next()) {
                let (a, b) = tokio::join!(sign_out(a), async {
                    match b {
                        Some(b) => Some(sign_out(b).await),
                        None => None,
                    }
                });
                outcomes.push(a);
                outcomes.extend(b);
            }
            outcomes
        })],
    };

    // The steady session: one client (no client set-up in the figures), a new connection for
    // each request, so that the requests meet every proxy worker thread (one kept-alive
    // connection could stay on a thread that never serves a sign-out).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let api = env.url("/api");
    let mut latencies = Vec::new();
    while !tasks.iter().all(|t| t.is_finished()) {
        let started = Instant::now();
        let status = http
            .get(&api)
            .header("accept", "application/json")
            .header("cookie", &steady)
            .send()
            .await
            .unwrap()
            .status();
        latencies.push(started.elapsed());
        assert_eq!(status, 200);
    }
    for task in tasks {
        for (status, took) in task.await.unwrap() {
            assert_eq!(status, 302);
            assert!(
                took >= commit_delay,
                "a sign-out answered in {took:?}, before its deletion could be durable"
            );
        }
    }
    store.inject_commit_delay(Duration::ZERO);
    assert!(latencies.len() >= 20, "only {} requests", latencies.len());
    latencies.sort();
    let run = Run { latencies };
    eprintln!(
        "other session during {commit_delay:?} commits ({sign_outs:?} sign-outs): p50 {:?}, \
         p99 {:?}, max {:?} ({} requests)",
        percentile(&run.latencies, 0.5),
        run.p99(),
        run.slowest(),
        run.latencies.len()
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
    run
}

/// Eight sign-outs at once against a store whose every commit takes 2 s: the sign-outs wait
/// for the store (each at least 2 s), the other session's requests made meanwhile never wait
/// anywhere near one commit (a worker blocked by a commit would hold them for 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_store_does_not_delay_other_sessions_requests() {
    let commit = Duration::from_secs(2);
    let run = sign_outs_during_slow_commits(commit, SignOuts::AtOnce).await;
    assert!(
        run.slowest() < commit / 2,
        "a request took {:?} (p99 {:?}): it waited for a store commit",
        run.slowest(),
        run.p99()
    );
}

/// The case: every commit takes 200 ms, and eight sign-outs go two at a time (at
/// least 0.8 s of slow commits). The other session's p50 and p99 are printed (the issue's
/// figure: p99 under 10 ms); the assertion is only that its p99 stays under half a commit:
/// worker threads that waited for commits would hold many of these requests for up to a
/// whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_200_ms_commits_other_sessions_requests_do_not_wait_for_a_commit() {
    let commit = Duration::from_millis(200);
    let run = sign_outs_during_slow_commits(commit, SignOuts::InPairs).await;
    assert!(
        run.p99() < commit / 2,
        "p99 {:?} (max {:?}): requests waited for store commits",
        run.p99(),
        run.slowest()
    );
}
