//! An OpenTelemetry metrics exporter that keeps the last export in memory, read back as flat
//! data points (for tests) or as the Prometheus text format (for `examples/prometheus`), named as
//! OpenTelemetry's Prometheus exporters and the Collector name them (`grpc.client.attempt.duration`
//! in `s` is `grpc_client_attempt_duration_seconds`).
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        exporter::PushMetricExporter,
    },
};

/// One data point: a counter's value or a histogram's count, sum and buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub name: String,
    pub unit: String,
    pub attributes: BTreeMap<String, String>,
    /// A counter's value, or a histogram's count.
    pub count: u64,
    /// A histogram's sum (a counter's value again).
    pub sum: f64,
    /// A histogram's boundaries (empty for a counter).
    pub bounds: Vec<f64>,
    /// A histogram's count per bucket (one more than the boundaries).
    pub buckets: Vec<u64>,
}

/// Keeps the points of the last export.
#[derive(Clone, Debug, Default)]
pub struct MemoryExporter {
    points: Arc<Mutex<Vec<Point>>>,
}

impl MemoryExporter {
    /// A meter provider that exports into this exporter on [`SdkMeterProvider::force_flush`] (and
    /// every hour otherwise).
    pub fn provider(&self) -> SdkMeterProvider {
        let reader = PeriodicReader::builder(self.clone()).with_interval(Duration::from_secs(3600)).build();
        SdkMeterProvider::builder().with_reader(reader).build()
    }

    /// The points of the last export.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl PushMetricExporter for MemoryExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut points = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                collect(metric.name(), metric.unit(), metric.data(), &mut points);
            }
        }
        *self.points.lock().unwrap_or_else(|e| e.into_inner()) = points;
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

fn attributes<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> BTreeMap<String, String> {
    kvs.map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
}

fn collect(name: &str, unit: &str, data: &AggregatedMetrics, out: &mut Vec<Point>) {
    let point = |attributes, count, sum, bounds, buckets| Point {
        name: name.to_owned(),
        unit: unit.to_owned(),
        attributes,
        count,
        sum,
        bounds,
        buckets,
    };
    macro_rules! each {
        ($data:expr, $as_f64:expr) => {
            match $data {
                MetricData::Sum(sum) => {
                    for p in sum.data_points() {
                        let v = $as_f64(p.value());
                        out.push(point(attributes(p.attributes()), v as u64, v, vec![], vec![]));
                    }
                }
                MetricData::Histogram(h) => {
                    for p in h.data_points() {
                        out.push(point(
                            attributes(p.attributes()),
                            p.count(),
                            $as_f64(p.sum()),
                            p.bounds().collect(),
                            p.bucket_counts().collect(),
                        ));
                    }
                }
                MetricData::Gauge(g) => {
                    for p in g.data_points() {
                        let v = $as_f64(p.value());
                        out.push(point(attributes(p.attributes()), v as u64, v, vec![], vec![]));
                    }
                }
                MetricData::ExponentialHistogram(_) => {}
            }
        };
    }
    match data {
        AggregatedMetrics::F64(data) => each!(data, |v: f64| v),
        AggregatedMetrics::U64(data) => each!(data, |v: u64| v as f64),
        AggregatedMetrics::I64(data) => each!(data, |v: i64| v as f64),
    }
}

/// The Prometheus name of an OpenTelemetry instrument: dots become underscores, then the unit
/// (`s` seconds, `By` bytes; annotations such as `{call}` add nothing), and `_total` for a
/// counter.
pub fn prometheus_name(name: &str, unit: &str, counter: bool) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    match unit {
        "s" => out.push_str("_seconds"),
        "By" => out.push_str("_bytes"),
        _ => {}
    }
    if counter {
        out.push_str("_total");
    }
    out
}

/// `points` in the Prometheus text format.
pub fn prometheus_text(points: &[Point]) -> String {
    let mut out = String::new();
    let mut typed = std::collections::BTreeSet::new();
    for p in points {
        let counter = p.bounds.is_empty();
        let name = prometheus_name(&p.name, &p.unit, counter);
        if typed.insert(name.clone()) {
            let _ = writeln!(out, "# TYPE {name} {}", if counter { "counter" } else { "histogram" });
        }
        let labels = |extra: Option<(&str, String)>| {
            let mut all: Vec<String> = p
                .attributes
                .iter()
                .map(|(k, v)| {
                    format!("{}=\"{}\"", k.replace(['.', '-'], "_"), v.replace('\\', "\\\\").replace('"', "\\\""))
                })
                .collect();
            if let Some((k, v)) = extra {
                all.push(format!("{k}=\"{v}\""));
            }
            all.join(",")
        };
        if counter {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(None), p.sum);
            continue;
        }
        let mut cumulative = 0;
        for (i, count) in p.buckets.iter().enumerate() {
            cumulative += count;
            let le = p.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{}}} {cumulative}", labels(Some(("le", le))));
        }
        let _ = writeln!(out, "{name}_sum{{{}}} {}", labels(None), p.sum);
        let _ = writeln!(out, "{name}_count{{{}}} {}", labels(None), p.count);
    }
    out
}
