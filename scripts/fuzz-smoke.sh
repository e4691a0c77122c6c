#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a while (60 s each by default) from its checked-in seeds,
# then prints executions and coverage per target. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use the nightly flags it needs.
#
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
#
# A crash stops that target, keeps the input under fuzz/artifacts/<target>/ and makes the script
# exit 1; turn it into a regression test (docs/reliability.md says how) before fixing it.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(spiffe_id discovery_yaml discovery_json xds_resource xds_translate trace_context timeouts)
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null || { echo "cargo fuzz build failed"; exit 1; }
logs=$(mktemp -d)
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 > "$logs/$target.log" 2>&1
  status=$?
  [ $status -eq 0 ] || failed=1
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -n 1)
  line=$(grep -E '^#[0-9]+' "$logs/$target.log" | grep -E 'cov: ' | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$line")
  printf '%-16s status %-3s executions %-10s coverage (edges) %-6s features %-6s corpus %s\n' \
    "$target" "$status" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [ $status -ne 0 ]; then tail -n 30 "$logs/$target.log"; fi
done
rm -rf "$logs"
exit $failed
