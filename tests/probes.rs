//! The admin listener's probes: `/live` answers 200 whenever the process serves, and `/ready`
//! does not depend on an identity provider unless `[server] ready_requires_idp = true`.

mod common;

use common::{client, dead_port, get_status, start_echo, start_with, Harness};

/// Gatehouse in front of an echo app, with one connection whose IdP is never reachable, and
/// `extra_server` added to `[server]`.
async fn with_idp_down(extra_server: &str) -> (Harness, tempfile::TempDir) {
    let upstream = start_echo().await;
    let dead = dead_port();
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{extra_server}\n\
         [store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n\
         [[upstreams]]\nurl = \"http://{upstream}\"\n\
         [[public]]\npath = \"/public\"\nmatch = \"prefix\"\n\
         [[connections]]\nid = \"down\"\nissuer = \"http://{dead}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
        data.path().display()
    );
    (start_with(upstream, &config), data)
}

async fn status(url: &str) -> u16 {
    get_status(url).await.expect("a response")
}

/// `/live` answers 200 on the admin listener, like `/ping`, and other paths stay 404.
#[tokio::test]
async fn live_answers_200_on_the_admin_listener() {
    let (h, _data) = with_idp_down("").await;
    assert_eq!(status(&h.admin_url("/live")).await, 200);
    assert_eq!(status(&h.admin_url("/ping")).await, 200);
    assert_eq!(status(&h.admin_url("/lively")).await, 404);
}

/// By default an IdP that is down leaves Gatehouse ready (on the admin and the proxy
/// listener) and live, while its public routes serve and `gatehouse_idp_up` says 0.
#[tokio::test]
async fn an_idp_that_is_down_does_not_make_gatehouse_unready_by_default() {
    let (h, _data) = with_idp_down("").await;
    assert_eq!(status(&h.url("/public/a")).await, 200);
    assert_eq!(status(&h.admin_url("/ready")).await, 200);
    assert_eq!(status(&h.url("/ready")).await, 200);
    assert_eq!(status(&h.admin_url("/live")).await, 200);
    assert_eq!(h.metric("gatehouse_idp_up{connection=\"down\"}").await, 0.0);
    assert_eq!(h.metric("gatehouse_ready").await, 1.0);
}

/// With `ready_requires_idp = true`, an IdP that is down makes `/ready` 503 (admin and proxy
/// listener) and `gatehouse_ready` 0, while `/live` stays 200: the process is not restarted,
/// only taken out of the load balancer.
#[tokio::test]
async fn an_idp_that_is_down_makes_gatehouse_unready_when_required() {
    let (h, _data) = with_idp_down("ready_requires_idp = true").await;
    assert_eq!(status(&h.url("/public/a")).await, 200, "it serves");
    assert_eq!(status(&h.admin_url("/ready")).await, 503);
    assert_eq!(status(&h.url("/ready")).await, 503);
    assert_eq!(status(&h.admin_url("/live")).await, 200);
    assert_eq!(h.metric("gatehouse_ready").await, 0.0);
}

/// Once shutdown begins, `/ready` fails while `/live` still answers on a kept-alive admin
/// connection (or the listener is already closed): a draining Gatehouse is taken out of the
/// load balancer, not reported dead.
#[tokio::test]
async fn draining_fails_readiness_but_not_liveness() {
    let (h, _data) = with_idp_down("shutdown_grace = \"2s\"").await;
    let admin = client();
    assert_eq!(
        admin
            .get(h.admin_url("/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    h.gatehouse.stop();
    let mut saw_not_ready = false;
    for _ in 0..100 {
        match admin.get(h.admin_url("/ready")).send().await {
            Ok(r) if r.status() == 200 => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Ok(r) => {
                assert_eq!(r.status(), 503);
                saw_not_ready = true;
                // The same listener, at the same moment, still says live (or is closed).
                if let Ok(live) = admin.get(h.admin_url("/live")).send().await {
                    assert_eq!(live.status(), 200);
                }
                break;
            }
            Err(_) => {
                saw_not_ready = true;
                break;
            }
        }
    }
    assert!(saw_not_ready, "readiness never failed after shutdown began");
}
