//! Prometheus text as a map the tests can index: shared by tests/metrics.rs and the unit
//! tests of src/metrics.rs (which include this file by path).

use std::collections::BTreeMap;

/// Each sample's value by `name{label=value,…}` (labels sorted), as prometheus-parse reads
/// `text`; a histogram by its count. Panics on text that is not the exposition format.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |bucket| bucket.count)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", sample.metric, labels.join(",")), value)
        })
        .collect()
}
