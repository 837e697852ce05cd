//! The admin listener's `/metrics` is valid Prometheus text with every metric Gatehouse
//! promises, with bounded labels.

mod common;

use common::{client, get_status, start};

/// Every promised metric family is present and the text parses.
#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_hold_every_metric() {
    let h = start("[[public]]\npath = \"/open\"\n").await;
    client().get(h.url("/open")).send().await.unwrap();
    h.metric_reaching(
        "gatehouse_http_requests_total{code=\"200\",kind=\"public\"}",
        1.0,
    )
    .await;
    let response = client().get(h.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    for family in [
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds",
        "gatehouse_http_requests_in_flight",
        "gatehouse_upstream_errors_total",
        "gatehouse_upstream_pooled_connections_lost_total",
        "gatehouse_build_info",
        // (gatehouse_jit_provisions_total has series per connection: see tests/jit.rs.)
        "gatehouse_jit_duration_seconds",
        "gatehouse_store_errors_total",
        "gatehouse_users",
        "gatehouse_access_denied_total",
        "gatehouse_connections_open",
        "gatehouse_connections_rejected_total",
        "gatehouse_client_timeouts_total",
        "gatehouse_client_errors_total",
        "gatehouse_rate_limited_total",
        "gatehouse_memory_evictions_total",
        "gatehouse_spoofed_headers_total",
        "gatehouse_mfa_challenges_total",
        "gatehouse_mfa_email_send_total",
        "gatehouse_mfa_email_send_duration_seconds",
    ] {
        // prometheus-parse names histogram samples by family; counters lose `_total` in docs only.
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == family || s.metric.starts_with(&format!("{family}_")))
                || text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    // Connection ids come from config; results, actions, rules and store operations are
    // fixed names: all bounded.
    let allowed = [
        "kind",
        "code",
        "reason",
        "version",
        "le",
        "quantile",
        "result",
        "connection",
        "action",
        "rule",
        "op",
        // Fixed names: proxy, admin.
        "listener",
        // Fixed names: login, mfa, backchannel.
        "endpoint",
        // Fixed names: used_states, pending_mfa.
        "map",
        // Fixed names: totp, email_otp, recovery_code.
        "factor",
    ];
    for sample in &scrape.samples {
        for (label, _) in sample.labels.iter() {
            assert!(
                allowed.contains(&label.as_str()),
                "unbounded label {label} on {}",
                sample.metric
            );
        }
    }
    assert!(text.contains(&format!(
        "gatehouse_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

/// The admin listener also answers liveness and readiness, and nothing else.
#[tokio::test]
async fn the_admin_listener_answers_ping_and_ready() {
    let h = start("").await;
    assert_eq!(
        get_status(&h.admin_url("/ping")).await.expect("a response"),
        200
    );
    assert_eq!(
        get_status(&h.admin_url("/ready"))
            .await
            .expect("a response"),
        200
    );
    assert_eq!(
        get_status(&h.admin_url("/other"))
            .await
            .expect("a response"),
        404
    );
}

/// Once shutdown begins, readiness fails (503 on a kept-alive connection, or the listener is
/// closed) so load balancers stop sending traffic.
#[tokio::test]
async fn readiness_fails_once_shutdown_begins() {
    let h = start("").await;
    let admin = client();
    assert_eq!(
        admin
            .get(h.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    h.gatehouse.stop();
    let mut ready = true;
    for _ in 0..100 {
        match admin.get(h.admin_url("/ready")).send().await {
            Ok(r) if r.status() == 200 => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            _ => {
                ready = false;
                break;
            }
        }
    }
    assert!(!ready, "still ready after shutdown began");
}
