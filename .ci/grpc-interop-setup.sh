# Sourced by .ci/run: makes Python's grpcio (gRPC C-core, a TLS stack that is not rustls) available
# to the interop tests (tests/interop_grpcio.rs), and exports MESH_PYTHON for them.
#
# Prefers a grpcio the system python already has; else installs pip's `grpcio` into a venv under
# target/ (kept between runs); else, as root on Debian, `python3-grpcio`. Only grpcio is needed:
# the test scripts encode the two small helloworld messages by hand, so no protobuf or grpcio-tools.
# shellcheck shell=bash
mesh_grpc_python() {
  local venv="${CARGO_TARGET_DIR:-target}/interop-venv"
  if python3 -c 'import grpc' 2>/dev/null; then
    MESH_PYTHON=$(command -v python3)
  elif [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import grpc' 2>/dev/null; then
    MESH_PYTHON="$venv/bin/python"
  elif python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'grpcio>=1.50'; then
    MESH_PYTHON="$venv/bin/python"
  elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-grpcio; then
    MESH_PYTHON=/usr/bin/python3
  else
    echo "could not install grpcio; the grpcio interop tests will fail" >&2
    return 0
  fi
  MESH_PYTHON=$(cd "$(dirname "$MESH_PYTHON")" && pwd)/$(basename "$MESH_PYTHON")
  export MESH_PYTHON
  "$MESH_PYTHON" -c 'import grpc; print("grpcio", grpc.__version__)'
}
mesh_grpc_python
