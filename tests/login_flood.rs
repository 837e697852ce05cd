//! Floods of the login endpoints: per-client rates answer 429 with `Retry-After`, and a flood
//! spread over many client addresses (each one real login state, used once at the callback)
//! fills the used-state map only to its bound while signed-in traffic goes on.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;

use std::time::{Duration, Instant};

use login_env::{login_env, sign_in, LoginEnv};

const USED_STATES: usize = 1000;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One `/oauth2/start` from `client_ip` (a trusted proxy's `X-Forwarded-For`), then its callback
/// with an IdP error: the state is real, so the callback marks it used. Returns the statuses.
async fn start_and_fail(env: &LoginEnv, http: &reqwest::Client, client_ip: &str) -> (u16, u16) {
    let start = http
        .get(env.url("/oauth2/start?rd=/"))
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .unwrap();
    let start_status = start.status().as_u16();
    if start_status != 302 {
        return (start_status, 0);
    }
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let state = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .expect("a state in the IdP URL")
        .to_string();
    let cookie = start.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let callback = http
        .get(env.url(&format!(
            "/oauth2/callback?state={state}&error=access_denied"
        )))
        .header("x-forwarded-for", client_ip)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (start_status, callback.status().as_u16())
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * 0.99).round() as usize]
}

async fn signed_in_latencies(env: &LoginEnv, cookie: &str, count: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        assert_eq!(env.api_status(cookie.to_string()).await, 200);
        out.push(started.elapsed());
    }
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One client address gets its per-minute login budget, then 429 with a `Retry-After`, and
/// the refusals are counted; another address is not affected.
#[tokio::test]
async fn a_client_past_its_login_rate_gets_429_with_retry_after() {
    let env = login_env(
        serde_json::json!({}),
        "[limits]\nlogin_per_minute = 5\n[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let http = no_redirects();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = http
            .get(env.url("/oauth2/start?rd=/"))
            .header("x-forwarded-for", "198.51.100.7")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [302, 302, 302, 302, 302, 429, 429, 429]);
    let other = http
        .get(env.url("/oauth2/start?rd=/"))
        .header("x-forwarded-for", "198.51.100.8")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 302);
    assert_eq!(
        env.gh
            .metric_reaching("gatehouse_rate_limited_total{endpoint=\"login\"}", 3.0)
            .await,
        3.0
    );
}

/// What a flood sends: real login states (start, then callback), or the same number of
/// requests to `/ping`.
#[derive(Clone, Copy)]
enum Flood {
    LoginStates,
    Ping,
}

/// Four clients send `pairs` pairs of requests, each pair from its own forwarded address,
/// while the signed-in user keeps making requests. Returns how many logins did not start, and
/// the signed-in latencies meanwhile.
async fn flood_while_signed_in(
    env: &std::sync::Arc<LoginEnv>,
    cookie: &str,
    pairs: usize,
    kind: Flood,
) -> (usize, Vec<Duration>) {
    let flooders: Vec<_> = (0..4)
        .map(|worker| {
            let env = env.clone();
            tokio::spawn(async move {
                let http = no_redirects();
                let mut refused = 0;
                for i in (worker..pairs).step_by(4) {
                    let ip = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
                    match kind {
                        Flood::LoginStates => {
                            let (start, _) = start_and_fail(&env, &http, &ip).await;
                            refused += usize::from(start != 302);
                        }
                        Flood::Ping => {
                            for _ in 0..2 {
                                let r = http.get(env.url("/ping")).send().await.unwrap();
                                assert_eq!(r.status(), 200);
                            }
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let mut during = Vec::new();
    while !flooders.iter().all(|f| f.is_finished()) {
        during.extend(signed_in_latencies(env, cookie, 20).await);
    }
    let mut refused = 0;
    for f in flooders {
        refused += f.await.unwrap();
    }
    (refused, during)
}

/// A flood of real login states from 10,000 addresses (more with GATEHOUSE_FLOOD_PAIRS) keeps
/// exactly `[limits] used_states` of them: every one past the bound is an eviction, memory
/// grows by less than 64 MiB, and a signed-in user's requests all pass meanwhile. The
/// signed-in p99, quiet, during the flood and during a control flood of as many `/ping`
/// requests, is printed (a figure for the notes, not an assertion: the flood's own client
/// shares the two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_login_states_stays_within_its_bound_while_signed_in_traffic_goes_on() {
    let pairs: usize = std::env::var("GATEHOUSE_FLOOD_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let env = login_env(
        serde_json::json!({}),
        &format!("[limits]\nused_states = {USED_STATES}\n[headers]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"),
    )
    .await;
    let (_, cookie) = sign_in(&env, "alice", "alice-pw").await;
    let quiet = p99(signed_in_latencies(&env, &cookie, 300).await);
    let rss_before = rss_kib();

    let env = std::sync::Arc::new(env);
    let (refused, during) = flood_while_signed_in(&env, &cookie, pairs, Flood::LoginStates).await;
    assert_eq!(refused, 0, "every flood login started");
    let rss_growth_mib = rss_kib().saturating_sub(rss_before) / 1024;
    let evicted = env
        .gh
        .metric("gatehouse_memory_evictions_total{map=\"used_states\"}")
        .await;
    let flood = p99(during.clone());
    // The control: as many requests to `/ping` (answered by Gatehouse, no map, no cookie), so
    // the figure shows what the login endpoints add beyond sharing the two cores.
    let (_, control) = flood_while_signed_in(&env, &cookie, pairs, Flood::Ping).await;
    eprintln!(
        "flood of {pairs} login states: used_states evictions {evicted}, RSS +{rss_growth_mib} MiB, \
         signed-in p99 quiet {quiet:?}, during the flood {flood:?} ({} samples), during as \
         many /ping requests {:?} ({} samples)",
        during.len(),
        p99(control.clone()),
        control.len()
    );
    // The flood's states and the one of the signed-in user's own login.
    assert_eq!(evicted, (pairs + 1 - USED_STATES) as f64);
    assert!(rss_growth_mib < 64, "RSS grew by {rss_growth_mib} MiB");
}
