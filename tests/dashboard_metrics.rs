//! Every metric the Grafana dashboard (`examples/grafana/gatehouse.json`) and the alerting
//! rules (`examples/prometheus/alerts.yml`) query exists in a live `/metrics` scrape of a
//! Gatehouse with a connection, after a little traffic: a renamed or removed metric breaks
//! this test instead of leaving an empty panel or an alert that can never fire.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{client, dead_port, start_echo, start_with, Harness};

/// Metrics the alerts may use ahead of the work that exports them (none now).
const PENDING: &[&str] = &[];

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `gatehouse_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("gatehouse_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("examples/grafana/gatehouse.json")).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a target expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = var["query"]["query"].as_str() {
            exprs.push(query.to_string());
        }
    }
    exprs
}

/// Every alert expression of alerts.yml.
fn alert_exprs() -> Vec<String> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("examples/prometheus/alerts.yml")).expect("valid YAML");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("an expr").to_string());
        }
    }
    exprs
}

/// A Gatehouse with one connection (its IdP down: the per-connection series exist from the
/// start), a public route, and a TLS listener (for the certificate expiry).
async fn gatehouse() -> (Harness, tempfile::TempDir) {
    let upstream = start_echo().await;
    let dead = dead_port();
    let data = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (data.path().join("tls.crt"), data.path().join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         tls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n\
         [[upstreams]]\nurl = \"http://{upstream}\"\n\
         [[public]]\npath = \"/public\"\nmatch = \"prefix\"\n\
         [[connections]]\nid = \"corp\"\nissuer = \"http://{dead}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
        cert.display(),
        key.display(),
        data.path().display()
    );
    (start_with(upstream, &config), data)
}

/// The sample names (histograms as `_bucket`, `_sum`, `_count`) of a `/metrics` scrape taken
/// once a public request, a protected request with a forged session cookie and a readiness
/// check have been counted.
async fn live_sample_names() -> BTreeSet<String> {
    let (h, _data) = gatehouse().await;
    client().get(h.url("/public/a")).send().await.unwrap();
    client()
        .get(h.url("/private"))
        .header("cookie", "_gatehouse=forged")
        .send()
        .await
        .unwrap();
    client().get(h.url("/ready")).send().await.unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = client()
            .get(h.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("gatehouse_session_rejected_total{")
            && text.contains("kind=\"internal\"")
            && text.contains("kind=\"protected\"")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

fn missing(exprs: &[String], live: &BTreeSet<String>) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|n| !live.contains(n) && !PENDING.contains(&n.as_str()))
        .collect()
}

/// Every metric the dashboard queries is in a live scrape.
#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let live = live_sample_names().await;
    let missing = missing(&exprs, &live);
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for wanted in [
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds_bucket",
        "gatehouse_logins_total",
        "gatehouse_jit_provisions_total",
        "gatehouse_mfa_challenges_total",
        "gatehouse_idp_up",
        "gatehouse_upstream_errors_total",
        "gatehouse_sessions_active",
        "gatehouse_jit_duration_seconds_bucket",
        "gatehouse_connections_open",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard has no {wanted} panel"
        );
    }
}

/// Every metric the alerting rules use is in a live scrape, except the pending reload
/// metric; and that one really is still pending (once it is exported, take it off the list).
#[tokio::test]
async fn every_metric_the_alerts_use_is_exported_or_listed_as_pending() {
    let exprs = alert_exprs();
    assert!(exprs.len() >= 9);
    let live = live_sample_names().await;
    let missing = missing(&exprs, &live);
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
    for pending in PENDING {
        assert!(
            !live.contains(*pending),
            "{pending} is exported now: remove it from PENDING"
        );
        assert!(
            exprs.iter().any(|e| metric_names(e).contains(*pending)),
            "{pending} is listed as pending but no alert uses it"
        );
    }
}

/// The name scanner finds every metric of an expression, and nothing else.
#[test]
fn metric_names_are_read_out_of_promql() {
    let names =
        metric_names("sum(rate(gatehouse_a_total{x=\"gatehouse\"}[5m])) / gatehouse_b_bucket > 0");
    let expected: BTreeSet<String> = ["gatehouse_a_total", "gatehouse_b_bucket"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
}

/// Every dashboard expression is valid PromQL (checked by promtool as a recording rule, with
/// Grafana's variables filled in); skipped with a reason where promtool is missing.
#[test]
fn every_dashboard_expression_is_valid_promql() {
    let promtool = Path::new("/usr/bin/promtool");
    if !promtool.is_file() {
        eprintln!("skipped: promtool not found (install Debian's prometheus package)");
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        if expr.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
