//! The shipped Prometheus alerting rules (`examples/prometheus/alerts.yml`) are valid, and
//! their unit tests (`alerts_test.yml`: every alert firing and not firing) pass, by Debian's
//! `promtool`. Without promtool the test is skipped with a reason, except under `CI=true`,
//! where a missing promtool fails it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn promtool() -> Option<PathBuf> {
    let candidates = [PathBuf::from("/usr/bin/promtool")];
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .collect::<Vec<_>>()
    });
    candidates.into_iter().chain(on_path).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

/// Runs promtool with these arguments in `examples/prometheus` and fails with its output
/// unless it exits 0.
fn run(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(examples())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// `promtool check rules` accepts alerts.yml and `promtool test rules` passes every unit test
/// in alerts_test.yml.
#[test]
fn the_alerting_rules_check_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else {
        assert!(
            !in_ci(),
            "promtool is missing under CI=true: install Debian's prometheus package"
        );
        eprintln!("skipped: promtool not found (install Debian's prometheus package)");
        return;
    };
    let checked = run(&promtool, &["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(&promtool, &["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert in alerts.yml has a unit test in alerts_test.yml that expects it to fire and
/// one that expects it silent, so a rule cannot be added without being tested both ways.
#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let rules = std::fs::read_to_string(examples().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(examples().join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    // Each `alertname:` line is followed by `exp_alerts: []` (silent) or `exp_alerts:` and a
    // list (firing).
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for alert in alerts {
        let (mut firing, mut silent) = (false, false);
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) == Some(alert) {
                match lines.get(i + 1).copied() {
                    Some("exp_alerts: []") => silent = true,
                    Some("exp_alerts:") => firing = true,
                    other => panic!("{alert}: unexpected {other:?} after alertname"),
                }
            }
        }
        assert!(firing, "{alert} has no test where it fires");
        assert!(silent, "{alert} has no test where it stays silent");
    }
}
