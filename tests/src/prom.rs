//! Reading what an operator's tools read: a node's `/metrics` page as Prometheus sees it (its
//! metric families with their types and help), and the metric names deploy/'s alert rules and
//! Grafana dashboard use, so the tests can hold the two together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// One metric family of a `/metrics` page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Its `# HELP` text (empty when missing).
    pub help: String,
}

/// The families of a Prometheus text page, by name, from its `# TYPE` and `# HELP` lines.
pub fn families(page: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                out.entry(name.to_string()).or_default().kind = kind.trim().to_string();
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                out.entry(name.to_string()).or_default().help = help.trim().to_string();
            }
        }
    }
    out
}

/// Whether `name`, as an expression writes it, is a series of `families`: a family itself, or
/// the `_bucket`, `_count` or `_sum` series of a histogram or summary.
pub fn is_exported(name: &str, families: &BTreeMap<String, Family>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_count", "_sum"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| {
            families
                .get(base)
                .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
        })
    })
}

/// The repository's root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The node's metric names in a PromQL expression (or any text): every identifier starting
/// with `aggregator_` or `process_`. Label names, functions and Prometheus' own `up` have
/// neither prefix.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        if (current.starts_with("aggregator_") || current.starts_with("process_"))
            && !current.ends_with('_')
        {
            names.insert(current.clone());
        }
        current.clear();
    }
    names
}

/// One alerting rule of deploy/prometheus/alerts.yml, the fields the tests check.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct AlertRule {
    /// Its name.
    pub alert: String,
    /// The PromQL condition.
    pub expr: String,
    /// `severity` and any other labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<AlertRule>,
}

/// Every rule of deploy/prometheus/alerts.yml (panics when the file is not valid rules YAML).
pub fn alert_rules() -> Vec<AlertRule> {
    let path = repo_root().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file: RuleFile = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not Prometheus rules YAML: {e}", path.display()));
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Every query expression of deploy/grafana/dashboards/aggregator.json, with its panel title.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/grafana/dashboards/aggregator.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// Every node metric named by deploy/'s alert rules and dashboard, with where it is named.
pub fn deploy_metric_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for rule in alert_rules() {
        for n in metric_names(&rule.expr) {
            names.insert(n, format!("alert {}", rule.alert));
        }
    }
    for (title, expr) in dashboard_queries() {
        for n in metric_names(&expr) {
            names.insert(n, format!("dashboard panel {title:?}"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_expressions() {
        let names = metric_names(
            "histogram_quantile(0.99, sum by (instance, le) (rate(aggregator_raft_log_sync_seconds_bucket[5m]))) > 0.05 and up{job=\"aggregator\"} == 0 or process_open_fds",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec![
                "aggregator_raft_log_sync_seconds_bucket",
                "process_open_fds"
            ]
        );
    }

    #[test]
    fn histogram_series_count_as_their_family() {
        let page = "# HELP a_seconds x\n# TYPE a_seconds histogram\na_seconds_count 1\n# HELP b_total y\n# TYPE b_total counter\nb_total 2\n";
        let f = families(page);
        assert_eq!(f["a_seconds"].kind, "histogram");
        assert_eq!(f["b_total"].help, "y");
        assert!(is_exported("a_seconds_bucket", &f));
        assert!(is_exported("b_total", &f));
        assert!(!is_exported("b_total_count", &f));
        assert!(!is_exported("c", &f));
    }
}
