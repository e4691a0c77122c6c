//! Medians, ratios, goals: `summary.json` and the table on stdout.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{configs::Config, measurement::Measurement, perfstat::Counters, procstat::Usage};

/// Syscalls and context switches of each process group on the path over one window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathCounters {
    pub(crate) client: Counters,
    pub(crate) server: Counters,
    /// Both proxies of a sidecar pair.
    pub(crate) proxies: Option<Counters>,
}

/// One client process's run of one workload against one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) config: Config,
    pub(crate) workload: String,
    pub(crate) round: usize,
    pub(crate) client: Measurement,
    /// The server process over the measured window (CPU delta; peak RSS at its end).
    pub(crate) server: Usage,
    /// Idle workload: the server's current RSS with the connections open minus before, KiB.
    pub(crate) server_idle_rss_delta_kib: Option<i64>,
    /// Both proxies of a sidecar pair, the same way.
    pub(crate) proxies: Option<Usage>,
    /// Syscalls and context switches over the window (`None`: not counted).
    pub(crate) counters: Option<PathCounters>,
}

/// How the run was made.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) mode: &'static str,
    pub(crate) rounds: usize,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) pinned: bool,
    pub(crate) wall_s: f64,
    pub(crate) loadavg_before: Option<String>,
    pub(crate) loadavg_after: Option<String>,
    /// Whether syscalls and context switches were counted, and how (or why not).
    pub(crate) counters: String,
}

/// `/proc/loadavg`, to show how quiet the machine was.
pub(crate) fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_owned())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
}

/// The median (mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] })
}

fn per_10k(cpu_s: f64, requests: u64) -> f64 {
    if requests == 0 { f64::NAN } else { cpu_s / requests as f64 * 10_000.0 }
}

/// `count / requests`; NaN (null in JSON) without requests.
fn per_request(count: f64, requests: u64) -> f64 {
    if requests == 0 { f64::NAN } else { count / requests as f64 }
}

/// One process group's counters of a window, if it had any.
type Side = fn(&PathCounters) -> Option<Counters>;

/// Per request, for each process group: CPU µs, syscalls, context switches (the last two null
/// where not counted).
fn per_request_medians(runs: &[&Record]) -> Value {
    let m = |f: &dyn Fn(&Record) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let n = |r: &Record| r.client.requests;
    let counted = |r: &Record, side: Side, field: fn(&Counters) -> f64| {
        r.counters.as_ref().and_then(side).map_or(f64::NAN, |c| per_request(field(&c), n(r)))
    };
    let sides: [(&str, Side); 3] =
        [("client", |c| Some(c.client)), ("server", |c| Some(c.server)), ("proxies", |c| c.proxies)];
    let mut cpu = json!({
        "client": m(&|r| per_request(r.client.cpu_s * 1e6, n(r))),
        "server": m(&|r| per_request(r.server.cpu_s * 1e6, n(r))),
    });
    if runs.iter().any(|r| r.proxies.is_some()) {
        cpu["proxies"] = json!(m(&|r| per_request(r.proxies.map_or(f64::NAN, |p| p.cpu_s) * 1e6, n(r))));
    }
    let (mut syscalls, mut switches) = (json!({}), json!({}));
    for (name, side) in sides {
        if name == "proxies" && !runs.iter().any(|r| r.proxies.is_some()) {
            continue;
        }
        syscalls[name] = json!(m(&|r| counted(r, side, |c| c.syscalls)));
        switches[name] = json!(m(&|r| counted(r, side, |c| c.context_switches)));
    }
    json!({ "cpu_us": cpu, "syscalls": syscalls, "context_switches": switches })
}

/// KiB per idle connection: an RSS delta over the connections the client opened.
fn per_connection(delta_kib: Option<i64>, connections: Option<u64>) -> f64 {
    match (delta_kib, connections) {
        (Some(delta), Some(n)) if n > 0 => delta as f64 / n as f64,
        _ => f64::NAN,
    }
}

/// The medians of one configuration's runs of the idle workload: KiB per connection.
fn idle_medians(runs: &[&Record]) -> Value {
    let m = |f: &dyn Fn(&Record) -> f64| median(runs.iter().map(|r| f(r)).collect());
    json!({
        "idle_connections": m(&|r| r.client.idle_connections.map_or(f64::NAN, |n| n as f64)),
        "kib_per_connection": {
            "client": m(&|r| per_connection(r.client.idle_rss_delta_kib, r.client.idle_connections)),
            "server": m(&|r| per_connection(r.server_idle_rss_delta_kib, r.client.idle_connections)),
        },
        "errors": runs.iter().map(|r| r.client.errors).sum::<u64>(),
        "peak_rss_kib": {
            "client": m(&|r| r.client.peak_rss_kib as f64),
            "server": m(&|r| r.server.peak_rss_kib as f64),
        },
    })
}

/// The medians of one configuration's runs of one workload.
fn medians(runs: &[&Record]) -> Value {
    let m = |f: &dyn Fn(&Record) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let proxies_cpu = |r: &Record| r.proxies.map_or(0.0, |p| p.cpu_s);
    let rps: Vec<f64> = runs.iter().map(|r| r.client.rps).collect();
    // Throughput per second of the busiest core's CPU time: the client's core, or the server's
    // (server and proxies share it). On a machine where other work steals CPU this estimates
    // what a quiet machine would do, as long as the busiest core is the bottleneck.
    let busiest = |r: &Record| (r.client.cpu_s.max(r.server.cpu_s + proxies_cpu(r))).max(f64::MIN_POSITIVE);
    if runs.iter().any(|r| r.client.idle_connections.is_some()) {
        return idle_medians(runs);
    }
    json!({
        "rps": m(&|r| r.client.rps),
        "rps_per_busiest_core": m(&|r| r.client.requests as f64 / busiest(r)),
        "rps_min": rps.iter().copied().reduce(f64::min),
        "rps_max": rps.iter().copied().reduce(f64::max),
        "p50_us": m(&|r| r.client.p50_us as f64),
        "p90_us": m(&|r| r.client.p90_us as f64),
        "p99_us": m(&|r| r.client.p99_us as f64),
        "p999_us": m(&|r| r.client.p999_us as f64),
        "errors": runs.iter().map(|r| r.client.errors).sum::<u64>(),
        "dropped": runs.iter().map(|r| r.client.dropped).sum::<u64>(),
        "cpu_s_per_10k": {
            "client": m(&|r| per_10k(r.client.cpu_s, r.client.requests)),
            "server": m(&|r| per_10k(r.server.cpu_s, r.client.requests)),
            "proxies": m(&|r| per_10k(proxies_cpu(r), r.client.requests)),
            "total": m(&|r| per_10k(r.client.cpu_s + r.server.cpu_s + proxies_cpu(r), r.client.requests)),
        },
        "peak_rss_kib": {
            "client": m(&|r| r.client.peak_rss_kib as f64),
            "server": m(&|r| r.server.peak_rss_kib as f64),
            "proxies": m(&|r| r.proxies.map_or(0.0, |p| p.peak_rss_kib as f64)),
        },
        "per_request": per_request_medians(runs),
    })
}

fn get(results: &Value, config: Config, workload: &str, field: &str) -> Option<f64> {
    let mut value = &results[config.name()][workload];
    for part in field.split('.') {
        value = &value[part];
    }
    value.as_f64()
}

/// Builds `summary.json` from every run.
pub(crate) fn summarize(records: &[Record], meta: Meta) -> Value {
    let mut grouped: BTreeMap<(Config, String), Vec<&Record>> = BTreeMap::new();
    for record in records {
        grouped.entry((record.config, record.workload.clone())).or_default().push(record);
    }
    let mut results = json!({});
    for ((config, workload), runs) in &grouped {
        let mut entry = medians(runs);
        entry["runs"] = runs
            .iter()
            .map(|r| {
                json!({
                    "round": r.round,
                    "client": r.client,
                    "server": {
                        "cpu_s": r.server.cpu_s,
                        "peak_rss_kib": r.server.peak_rss_kib,
                        "idle_rss_delta_kib": r.server_idle_rss_delta_kib,
                    },
                    "proxies": r.proxies.map(|p| json!({ "cpu_s": p.cpu_s, "peak_rss_kib": p.peak_rss_kib })),
                    "counters": r.counters.map(|c| {
                        let side = |c: Counters| json!({ "syscalls": c.syscalls, "context_switches": c.context_switches });
                        json!({ "client": side(c.client), "server": side(c.server), "proxies": c.proxies.map(side) })
                    }),
                })
            })
            .collect();
        results[config.name()][workload] = entry;
    }
    let (h1, h2, rate, hs) = ("h1_c32", "h2_c8x16", "rate2000_h1_c32", "handshake_c16");
    let ratio_of = |config: Config, workload: &str, field: &str| {
        let mesh = get(&results, Config::Mesh, workload, field)?;
        Some(mesh / get(&results, config, workload, field)?)
    };
    let ratio = |config: Config, workload: &str| ratio_of(config, workload, "rps");
    let per_core = |config: Config, workload: &str| ratio_of(config, workload, "rps_per_busiest_core");
    let p99_added = get(&results, Config::Mesh, rate, "p99_us")
        .zip(get(&results, Config::BareMtls, rate, "p99_us"))
        .map(|(mesh, mtls)| mesh - mtls);
    let cpu_ratio = |config: Config| {
        let mesh = get(&results, Config::Mesh, rate, "cpu_s_per_10k.total")?;
        Some(mesh / get(&results, config, rate, "cpu_s_per_10k.total")?)
    };
    let (grpc, grpc_rate, idle) = ("grpc_c8x16", "rate2000_grpc_c8x4", "idle_c1000");
    let grpc_of = |workload: &str, field: &str| {
        Some((get(&results, Config::GrpcMesh, workload, field)?, get(&results, Config::GrpcTonic, workload, field)?))
    };
    let idle_minus = |side: &str| {
        let field = format!("kib_per_connection.{side}");
        Some(get(&results, Config::Mesh, idle, &field)? - get(&results, Config::BareMtls, idle, &field)?)
    };
    let mut ratios = json!({
        "mesh_over_bare_h1": ratio(Config::Bare, h1),
        "mesh_over_bare_mtls_h1": ratio(Config::BareMtls, h1),
        "mesh_over_sidecar_nginx_h1": ratio(Config::SidecarNginx, h1),
        "mesh_over_sidecar_haproxy_h1": ratio(Config::SidecarHaproxy, h1),
        "mesh_over_sidecar_envoy_h1": ratio(Config::SidecarEnvoy, h1),
        "mesh_over_bare_h2": ratio(Config::Bare, h2),
        "mesh_over_bare_mtls_h2": ratio(Config::BareMtls, h2),
        "mesh_over_sidecar_nginx_h2": ratio(Config::SidecarNginx, h2),
        "mesh_over_sidecar_haproxy_h2": ratio(Config::SidecarHaproxy, h2),
        "mesh_over_sidecar_envoy_h2": ratio(Config::SidecarEnvoy, h2),
        "handshakes_mesh_over_rustls": ratio(Config::BareMtls, hs),
        "p99_added_us_fixed_rate": p99_added,
        "cpu_per_request_mesh_over_bare_mtls_fixed_rate": cpu_ratio(Config::BareMtls),
        "cpu_per_request_mesh_over_sidecar_envoy_fixed_rate": cpu_ratio(Config::SidecarEnvoy),
        "grpc_mesh_over_tonic": grpc_of(grpc, "rps").map(|(mesh, tonic)| mesh / tonic),
        "grpc_p99_added_us_fixed_rate": grpc_of(grpc_rate, "p99_us").map(|(mesh, tonic)| mesh - tonic),
        "grpc_cpu_per_request_mesh_over_tonic_fixed_rate":
            grpc_of(grpc_rate, "cpu_s_per_10k.total").map(|(mesh, tonic)| mesh / tonic),
        "idle_conn_kib_mesh_minus_bare_mtls": idle_minus("server"),
        "idle_conn_kib_mesh_minus_bare_mtls_client": idle_minus("client"),
    });
    crate::instructions::set_ratios(&mut ratios, None);
    // The same throughput ratios from requests per CPU-second of the busiest core (see `medians`).
    let cpu_normalized = json!({
        "mesh_over_bare_h1": per_core(Config::Bare, h1),
        "mesh_over_bare_mtls_h1": per_core(Config::BareMtls, h1),
        "mesh_over_sidecar_nginx_h1": per_core(Config::SidecarNginx, h1),
        "mesh_over_sidecar_haproxy_h1": per_core(Config::SidecarHaproxy, h1),
        "mesh_over_sidecar_envoy_h1": per_core(Config::SidecarEnvoy, h1),
        "mesh_over_bare_h2": per_core(Config::Bare, h2),
        "mesh_over_bare_mtls_h2": per_core(Config::BareMtls, h2),
        "mesh_over_sidecar_nginx_h2": per_core(Config::SidecarNginx, h2),
        "mesh_over_sidecar_haproxy_h2": per_core(Config::SidecarHaproxy, h2),
        "mesh_over_sidecar_envoy_h2": per_core(Config::SidecarEnvoy, h2),
        "handshakes_mesh_over_rustls": per_core(Config::BareMtls, hs),
        "grpc_mesh_over_tonic": grpc_of(grpc, "rps_per_busiest_core").map(|(mesh, tonic)| mesh / tonic),
    });
    let goals = crate::goals::goals(&ratios);
    json!({
        "machine": {
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "cpu_model": cpu_model(),
            "loadavg_before": meta.loadavg_before,
            "loadavg_after": meta.loadavg_after,
        },
        "run": {
            "mode": meta.mode,
            "rounds": meta.rounds,
            "interleaved": true,
            "warmup_s": meta.warmup_s,
            "duration_s": meta.duration_s,
            "pinned_client_core0_servers_core1": meta.pinned,
            "wall_s": meta.wall_s,
        },
        "counters": { "status": meta.counters },
        "ratios": ratios,
        "ratios_cpu_normalized": cpu_normalized,
        "goals": goals,
        "instructions": crate::instructions::not_merged(),
        "results": results,
    })
}

fn cell(value: &Value, decimals: usize) -> String {
    value.as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `client/server[/proxies]` of one per-request figure.
fn sides(figure: &Value, decimals: usize) -> String {
    let mut text = format!("{}/{}", cell(&figure["client"], decimals), cell(&figure["server"], decimals));
    if figure.get("proxies").is_some() {
        text = format!("{text}/{}", cell(&figure["proxies"], decimals));
    }
    text
}

/// The per-request columns of a row: CPU µs, syscalls, context switches.
fn per_request_cells(per_request: &Value) -> String {
    format!(
        "{} | {} | {}",
        sides(&per_request["cpu_us"], 1),
        sides(&per_request["syscalls"], 2),
        sides(&per_request["context_switches"], 3)
    )
}

/// The table on stdout: one row per configuration and workload, then the ratios and goals.
pub(crate) fn print_table(summary: &Value) {
    let out = crate::plumbing::println_out;
    out(&format!(
        "{:<16} {:<18} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}   {}",
        "config",
        "workload",
        "req/s",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9µs",
        "cpu/10k",
        "srv+prx",
        "rss KiB",
        "errors",
        "per request, client/server[/proxies]: CPU µs | syscalls | context switches"
    ));
    for config in Config::ALL {
        let Some(workloads) = summary["results"][config.name()].as_object() else { continue };
        for (workload, m) in workloads {
            if m.get("kib_per_connection").is_some() {
                continue; // idle connections: their own lines below
            }
            let server_rss = m["peak_rss_kib"]["server"].as_f64().unwrap_or(0.0);
            let proxy_rss = m["peak_rss_kib"]["proxies"].as_f64().unwrap_or(0.0);
            let server_cpu = m["cpu_s_per_10k"]["server"].as_f64().unwrap_or(0.0);
            let proxy_cpu = m["cpu_s_per_10k"]["proxies"].as_f64().unwrap_or(0.0);
            out(&format!(
                "{:<16} {:<18} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9.0} {:>7}   {}",
                config.name(),
                workload,
                cell(&m["rps"], 0),
                cell(&m["p50_us"], 0),
                cell(&m["p90_us"], 0),
                cell(&m["p99_us"], 0),
                cell(&m["p999_us"], 0),
                cell(&m["cpu_s_per_10k"]["total"], 3),
                format!("{:.3}", server_cpu + proxy_cpu),
                server_rss + proxy_rss,
                m["errors"],
                per_request_cells(&m["per_request"]),
            ));
        }
    }
    let idle: Vec<(&str, &Value)> = Config::ALL
        .iter()
        .filter_map(|c| summary["results"][c.name()].as_object().map(|w| (c.name(), w)))
        .flat_map(|(name, workloads)| {
            workloads.iter().filter(|(_, m)| m.get("kib_per_connection").is_some()).map(move |(_, m)| (name, m))
        })
        .collect();
    if !idle.is_empty() {
        out("\nidle mTLS connections (RSS per connection, KiB, medians):");
        for (name, m) in idle {
            out(&format!(
                "  {name:<16} client {:>7} server {:>7} ({} connections)",
                cell(&m["kib_per_connection"]["client"], 1),
                cell(&m["kib_per_connection"]["server"], 1),
                cell(&m["idle_connections"], 0),
            ));
        }
    }
    out(&format!("\nsyscalls and context switches: {}", summary["counters"]["status"].as_str().unwrap_or("?")));
    out("\nratios (medians):");
    if let Some(ratios) = summary["ratios"].as_object() {
        for (key, value) in ratios {
            out(&format!("  {key:<50} {}", cell(value, 3)));
        }
    }
    out("\nratios per CPU-second of the busiest core (robust to CPU taken by other work):");
    if let Some(ratios) = summary["ratios_cpu_normalized"].as_object() {
        for (key, value) in ratios {
            out(&format!("  {key:<50} {}", cell(value, 3)));
        }
    }
    out("\ngoals:");
    if let Some(goals) = summary["goals"].as_object() {
        for (key, goal) in goals {
            let met = match goal["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            out(&format!(
                "  {key:<50} {:>9} {:<8} {met}",
                cell(&goal["value"], 3),
                goal["target"].as_str().unwrap_or("")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }
}
