//! Instructions per request in `summary.json`: `mesh-bench merge-instructions` puts the figures
//! `bench/per-request.sh` measured (callgrind, client and server processes separately, the
//! difference of a short and a long run so start-up cancels) into the summary `mesh-bench run`
//! wrote, with their ratios and goals. Unlike throughput, these counts hardly move with the
//! machine's load.

use std::path::Path;

use serde_json::{Value, json};

use crate::{
    cli::MergeArgs,
    goals::{RATIO_KEYS, goals},
    plumbing::BoxError,
};

/// The `(mesh configuration, its baseline, workload key, side)` a ratio key names.
fn figures_of(key: &str) -> Option<(&'static str, &'static str, &str, &str)> {
    if let Some(side) = key.strip_prefix("instructions_grpc_mesh_over_tonic_") {
        return Some(("grpc-mesh", "grpc-tonic", "grpc", side));
    }
    let (side, protocol) = key.strip_prefix("instructions_mesh_over_bare_mtls_")?.split_once('_')?;
    Some(("mesh", "bare-mtls", protocol, side))
}

/// Sets the [`RATIO_KEYS`] in `ratios` from `per_request` (`per-request.json`); null where a
/// figure is missing.
pub(crate) fn set_ratios(ratios: &mut Value, per_request: Option<&Value>) {
    for key in RATIO_KEYS {
        let ratio = per_request.and_then(|figures| {
            let (mesh, baseline, protocol, side) = figures_of(key)?;
            let count = |config: &str| figures[config][protocol][side]["instructions"].as_f64().filter(|n| *n > 0.0);
            Some(count(mesh)? / count(baseline)?)
        });
        ratios[key] = json!(ratio);
    }
}

/// The `instructions` section of a summary nothing was merged into yet.
pub(crate) fn not_merged() -> Value {
    json!({
        "status": "not measured: `mesh-bench run` does not count instructions; bench/run.sh runs \
                   bench/per-request.sh and merges its figures (mesh-bench merge-instructions)",
    })
}

/// A summary or a per-request file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MergeError {
    /// Not the JSON expected.
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

fn read_json(path: &Path) -> Result<Value, BoxError> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|error| MergeError::Invalid { path: path.display().to_string(), what: error.to_string() }.into())
}

/// `mesh-bench merge-instructions`: rewrites the summary with the figures (or says why there are
/// none), the ratios and the goals, and prints them.
pub(crate) fn merge(args: MergeArgs) -> Result<(), BoxError> {
    let mut summary = read_json(&args.summary)?;
    if !summary["ratios"].is_object() {
        let what = "no `ratios` object: not a summary.json from `mesh-bench run`".to_owned();
        return Err(MergeError::Invalid { path: args.summary.display().to_string(), what }.into());
    }
    let per_request = match &args.per_request {
        Some(path) => {
            let figures = read_json(path)?;
            if !figures.is_object() {
                let what = "not an object of configurations".to_owned();
                return Err(MergeError::Invalid { path: path.display().to_string(), what }.into());
            }
            Some(figures)
        }
        None => None,
    };
    set_ratios(&mut summary["ratios"], per_request.as_ref());
    summary["instructions"] = match (&per_request, &args.skipped) {
        (Some(figures), _) => json!({
            "status": "measured",
            "method": args.method,
            "per_request": figures,
        }),
        (None, reason) => json!({ "status": format!("skipped: {}", reason.as_deref().unwrap_or("no figures")) }),
    };
    summary["goals"] = goals(&summary["ratios"]);
    std::fs::write(&args.summary, serde_json::to_string_pretty(&summary)?)?;
    let out = crate::plumbing::println_out;
    out(&format!("\ninstructions per request: {}", summary["instructions"]["status"].as_str().unwrap_or("?")));
    for key in RATIO_KEYS {
        let goal = &summary["goals"][key];
        let met = match goal["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let value = goal["value"].as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        out(&format!("  {key:<50} {value:>9} {:<8} {met}", goal["target"].as_str().unwrap_or("")));
    }
    out(&format!("merged into {}", args.summary.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_from_per_request_figures() {
        let figures = json!({
            "bare-mtls": { "h1": { "client": { "instructions": 100 }, "server": { "instructions": 200 } },
                           "h2": { "client": { "instructions": 50 } } },
            "mesh": { "h1": { "client": { "instructions": 120 }, "server": { "instructions": 300 } },
                      "h2": { "client": { "instructions": 60 }, "server": { "instructions": 70 } } },
        });
        let mut ratios = json!({ "handshakes_mesh_over_rustls": 1.0 });
        set_ratios(&mut ratios, Some(&figures));
        assert_eq!(ratios["instructions_mesh_over_bare_mtls_client_h1"], json!(1.2));
        assert_eq!(ratios["instructions_mesh_over_bare_mtls_server_h1"], json!(1.5));
        assert_eq!(ratios["instructions_mesh_over_bare_mtls_client_h2"], json!(1.2));
        assert!(ratios["instructions_mesh_over_bare_mtls_server_h2"].is_null(), "bare-mtls has no h2 server figure");
        assert!(ratios["instructions_grpc_mesh_over_tonic_client"].is_null(), "no gRPC figures");
        let grpc = json!({
            "grpc-tonic": { "grpc": { "client": { "instructions": 40 }, "server": { "instructions": 20 } } },
            "grpc-mesh": { "grpc": { "client": { "instructions": 50 }, "server": { "instructions": 30 } } },
        });
        set_ratios(&mut ratios, Some(&grpc));
        assert_eq!(ratios["instructions_grpc_mesh_over_tonic_client"], json!(1.25));
        assert_eq!(ratios["instructions_grpc_mesh_over_tonic_server"], json!(1.5));
        assert_eq!(ratios["handshakes_mesh_over_rustls"], json!(1.0), "other keys stay");
        set_ratios(&mut ratios, None);
        assert!(RATIO_KEYS.iter().all(|key| ratios[key].is_null()));
        let goals = goals(&ratios);
        assert!(RATIO_KEYS.iter().all(|key| goals[key]["met"].is_null() && goals[key]["target"] == "<= 1.25"));
    }
}
