//! An upstream that is down or slow gets a clear 502 / 504 from Gatehouse, in HTML or JSON by
//! `Accept`, never the upstream's internals, and a metric.

mod common;

use common::{client, config_text, dead_port, start, start_with};

const OPEN: &str = "[[public]]\npath = \"/\"\nmatch = \"prefix\"\n";

/// Connection refused: 502, JSON for an API client, and the reason counted.
#[tokio::test]
async fn a_down_upstream_gives_502_and_counts_the_error() {
    let dead = dead_port();
    let h = start_with(dead, &config_text(dead, OPEN));
    let before = h
        .metric("gatehouse_upstream_errors_total{reason=\"connect_refused\"}")
        .await;
    let response = client()
        .get(h.url("/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 502);
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let after = h
        .metric("gatehouse_upstream_errors_total{reason=\"connect_refused\"}")
        .await;
    assert_eq!(after, before + 1.0);
}

/// Browsers get an HTML page for the same failure.
#[tokio::test]
async fn a_browser_gets_an_html_error_page() {
    let dead = dead_port();
    let h = start_with(dead, &config_text(dead, OPEN));
    let response = client()
        .get(h.url("/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("502") && page.contains("not reachable"),
        "{page}"
    );
    assert!(
        !page.contains("127.0.0.1"),
        "the page leaks the upstream address: {page}"
    );
}

/// An upstream slower than `read_timeout` (2s in the test config): 504 and a read timeout.
#[tokio::test]
async fn a_slow_upstream_gives_504() {
    let h = start(OPEN).await;
    let response = client()
        .get(h.url("/slow?delay_ms=4000"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(
        h.metric("gatehouse_upstream_errors_total{reason=\"read_timeout\"}")
            .await,
        1.0
    );
}

/// Failures are counted as requests too, by kind and code.
#[tokio::test]
async fn failed_requests_are_counted_by_kind_and_code() {
    let dead = dead_port();
    let h = start_with(dead, &config_text(dead, OPEN));
    client().get(h.url("/x")).send().await.unwrap();
    let sample = "gatehouse_http_requests_total{code=\"502\",kind=\"public\"}";
    assert_eq!(h.metric_reaching(sample, 1.0).await, 1.0);
}
