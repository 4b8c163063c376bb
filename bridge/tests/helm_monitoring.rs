//! The Helm chart's alert rules (`helm/kiungo/files/alerts.yaml`) and
//! Grafana dashboard (`helm/kiungo/files/dashboard.json`) query metrics
//! that Kiungo exports: every `kiungo_*` name in them is one that
//! `/metrics` serves (bridge/src/metrics.rs), with its counter or
//! histogram suffix, and the rules have the shape Prometheus loads.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn chart_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/kiungo/files")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Series names `/metrics` can serve, from its `# TYPE` lines (after one
/// series of each labelled family, which is listed only once it has one).
fn exported() -> BTreeSet<String> {
    use kiungo::metrics::*;
    let m = metrics();
    let dest = DestinationLabels {
        destination: "fhir".into(),
    };
    m.consumed
        .get_or_create(&ConsumedLabels {
            source: "cht".into(),
            transport: "amqp".into(),
        })
        .inc();
    m.ingested
        .get_or_create(&IngestLabels {
            source: "cht".into(),
            mapping: String::new(),
            outcome: "stored".into(),
        })
        .inc();
    m.park("ingest", "cht", "not_json");
    m.delivery("fhir", "cht", "", "delivered");
    m.observe_latency("fhir", 0.1);
    m.observe_request("fhir", 0.1);
    m.circuit.get_or_create(&dest).set(0);
    m.backlog
        .get_or_create(&BacklogLabels {
            destination: "fhir".into(),
            state: "pending".into(),
        })
        .set(0);
    m.oldest_pending.get_or_create(&dest).set(0);
    m.queue_ready
        .get_or_create(&QueueLabels {
            queue: "kiungo.cht".into(),
        })
        .set(0);
    m.feedback
        .get_or_create(&ResultLabels {
            result: "published".into(),
        })
        .inc();
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `kiungo_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("kiungo_") {
        let before_ok = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn alert_rules_use_exported_metrics_and_cover_the_runbook() {
    let exported = exported();
    assert!(exported.contains("kiungo_deliveries_total"), "{exported:?}");
    let rules: serde_json::Value =
        serde_saphyr::from_str(&chart_file("alerts.yaml")).expect("alerts.yaml parses");
    let list = rules["groups"][0]["rules"].as_array().expect("rules");
    let mut alerts = Vec::new();
    for rule in list {
        let name = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(rule["for"].as_str().is_some(), "{name}: for");
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name}: severity"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{name}: summary"
        );
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name} queries no kiungo metric");
        for m in used {
            assert!(
                exported.contains(&m),
                "{name}: `{m}` is not exported ({exported:?})"
            );
        }
        alerts.push(name.to_owned());
    }
    assert_eq!(
        alerts,
        [
            "KiungoCircuitOpen",
            "KiungoBacklogGrowing",
            "KiungoDeadLettersRising",
            "KiungoSourceSilent"
        ]
    );
}

#[test]
fn dashboard_panels_use_exported_metrics() {
    let exported = exported();
    let dashboard: serde_json::Value =
        serde_json::from_str(&chart_file("dashboard.json")).expect("dashboard.json parses");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{}", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let used = metric_names(expr);
            assert!(!used.is_empty(), "{title} queries no kiungo metric");
            for m in used {
                assert!(exported.contains(&m), "{title}: `{m}` is not exported");
            }
        }
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("max by (x) (kiungo_backlog) + rate(kiungo_events_total[5m]) + my_kiungo_x"),
        ["kiungo_backlog", "kiungo_events_total"]
    );
}
