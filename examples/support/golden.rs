//! The golden signals per subset as the examples' `--json` lines write them (shared by `canary`
//! and `greeter-canary`, so both keep the same shape).

use std::{collections::BTreeMap, time::Duration};

use mesh::tower::telemetry::SubsetSignals;

/// `{"v2":{"requests":N,"success_rate":F,"p50_us":N,"p90_us":N,"p99_us":N},...}`.
pub(crate) fn golden_json(golden: &[SubsetSignals]) -> BTreeMap<String, serde_json::Value> {
    golden
        .iter()
        .map(|g| {
            let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
            let name = g.subset.as_ref().map_or("none".to_owned(), |s| s.to_string());
            let figures = serde_json::json!({
                "requests": g.requests,
                "success_rate": g.success_rate(),
                "p50_us": us(g.p50),
                "p90_us": us(g.p90),
                "p99_us": us(g.p99),
            });
            (name, figures)
        })
        .collect()
}
