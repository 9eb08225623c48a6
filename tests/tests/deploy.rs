//! deploy/ without a cluster: the alert rules parse as Prometheus rules with what an on-call
//! person needs (severity, summary), their expressions and the dashboard's queries use only
//! metrics docs/operations.md lists as exported (tests/tests/metrics.rs checks the same names
//! against a live node's /metrics), and the compose `monitoring` profile mounts files that exist.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeSet;

use tests::prom::{alert_rules, dashboard_queries, deploy_metric_names, metric_names, repo_root};

/// The metric names docs/operations.md's metrics table lists (first column, with the
/// `aggregator_` prefix the table leaves out where it does).
fn documented_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or("");
        for quoted in first.split('`').skip(1).step_by(2) {
            let name = quoted.split('{').next().unwrap_or("").trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if name.starts_with("process_") || name.starts_with("aggregator_") {
                names.insert(name.to_string());
            } else {
                names.insert(format!("aggregator_{name}"));
            }
        }
    }
    names
}

#[test]
fn alert_rules_are_complete() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "two rules share a name");
    // What the issue asks to alert on, at least.
    for wanted in [
        "AggregatorNoLeader",
        "AggregatorReplicationLagGrowing",
        "AggregatorLogSyncSlow",
        "AggregatorDiskFilling",
        "AggregatorOverloaded",
        "AggregatorNodeDown",
    ] {
        assert!(names.contains(wanted), "no rule {wanted}: {names:?}");
    }
    for r in &rules {
        assert!(!r.expr.trim().is_empty(), "{}: empty expr", r.alert);
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{}: severity {severity:?}",
            r.alert
        );
        assert!(
            r.annotations.get("summary").is_some_and(|s| !s.is_empty()),
            "{}: no summary",
            r.alert
        );
        // Every rule but the scrape-target one watches the node's own metrics.
        if r.alert != "AggregatorNodeDown" {
            assert!(
                !metric_names(&r.expr).is_empty(),
                "{}: names no metric",
                r.alert
            );
        }
    }
}

#[test]
fn alerts_and_dashboard_use_only_documented_metrics() {
    let documented = documented_metrics();
    assert!(
        documented.len() > 20,
        "metrics table not found: {documented:?}"
    );
    assert!(!dashboard_queries().is_empty());
    let mut missing = Vec::new();
    for (name, user) in deploy_metric_names() {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        if !documented.contains(&name) && !documented.contains(base) {
            missing.push(format!("{user} uses {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/operations.md's metrics table:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_monitoring_profile_mounts_files_that_exist() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("cluster-compose.yml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let services = &compose["services"];
    let mut mounted = 0;
    for service in ["prometheus", "grafana"] {
        let s = &services[service];
        assert_eq!(
            s["profiles"][0].as_str(),
            Some("monitoring"),
            "{service} is not optional"
        );
        assert_eq!(
            s["pull_policy"].as_str(),
            Some("never"),
            "{service} may pull"
        );
        for volume in s["volumes"].as_sequence().unwrap() {
            let spec = volume.as_str().unwrap();
            if let Some(path) = spec.strip_prefix("./") {
                let host = path.split(':').next().unwrap();
                assert!(
                    root.join(host).exists(),
                    "{service} mounts missing ./{host}"
                );
                mounted += 1;
            }
        }
    }
    assert!(
        mounted >= 4,
        "expected the deploy/ files mounted, found {mounted}"
    );
    let prometheus =
        std::fs::read_to_string(root.join("deploy/prometheus/prometheus.yml")).unwrap();
    let prometheus: serde_norway::Value = serde_norway::from_str(&prometheus).unwrap();
    assert_eq!(
        prometheus["rule_files"][0].as_str(),
        Some("/etc/prometheus/alerts.yml"),
        "prometheus.yml must load the rules where compose mounts them"
    );
}
