# Builds the Go peers the interop tests run (istiod, SPIRE, grpc-go's interop client and server)
# into target/peers/, from the wrapper modules under tests/peers/ (go.mod + go.sum pin each one).
# A build is reused while its module's go.mod and go.sum are unchanged. Sourced by .ci/run; also
# usable by hand: `source .ci/peers.sh` exports the binaries' paths.
#
# Exports MESH_ISTIOD, MESH_SPIRE_SERVER, MESH_SPIRE_AGENT, MESH_GRPC_GO_INTEROP_CLIENT and
# MESH_GRPC_GO_INTEROP_SERVER.

_peers_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_peers_out="$_peers_root/target/peers"
mkdir -p "$_peers_out"

# peer_build MODULE_DIR OUT_NAME PACKAGE [CGO]: builds PACKAGE of the wrapper module into
# target/peers/OUT_NAME unless the pin recorded beside it matches the module's go.mod and go.sum.
peer_build() {
  local dir="$_peers_root/tests/peers/$1" out="$_peers_out/$2" pkg="$3" cgo="${4:-0}"
  local pin
  pin=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1)
  if [ -x "$out" ] && [ "$(cat "$out.pin" 2>/dev/null)" = "$pin" ]; then
    echo "peer $2: reused (pin ${pin:0:12})"
    return 0
  fi
  echo "peer $2: building $pkg"
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED="$cgo" go build -trimpath -o "$out.tmp" "$pkg") || {
    echo "peer $2: build of $pkg failed"; return 1; }
  mv "$out.tmp" "$out"
  echo "$pin" > "$out.pin"
  echo "peer $2: built in $((SECONDS - start)) s"
}

# peer_build_patched MODULE_DIR OUT_NAME PACKAGE MODULE: as peer_build, but MODULE's source is
# copied from the module cache, patched with MODULE_DIR/patches/*.patch (fixes that let the peer run
# where we run it), and built through a `replace` in a copy of the wrapper module. The pin covers
# the patches.
peer_build_patched() {
  local dir="$_peers_root/tests/peers/$1" out="$_peers_out/$2" pkg="$3" module="$4"
  local pin
  pin=$(cat "$dir/go.mod" "$dir/go.sum" "$dir"/patches/*.patch | sha256sum | cut -d' ' -f1)
  if [ -x "$out" ] && [ "$(cat "$out.pin" 2>/dev/null)" = "$pin" ]; then
    echo "peer $2: reused (pin ${pin:0:12}, patched)"
    return 0
  fi
  echo "peer $2: building $pkg with $(ls "$dir"/patches/*.patch | wc -l) patch(es)"
  local start=$SECONDS moddir src="$_peers_out/src/$2" work="$_peers_out/src/$2-wrapper"
  moddir=$(cd "$dir" && go mod download -json "$module" >/dev/null && go list -m -f '{{.Dir}}' "$module") || {
    echo "peer $2: cannot find $module's source"; return 1; }
  rm -rf "$src" "$work" && mkdir -p "$work" && cp -r "$moddir" "$src" && chmod -R u+w "$src"
  local p
  for p in "$dir"/patches/*.patch; do
    patch --quiet -d "$src" -p1 < "$p" || { echo "peer $2: $p does not apply"; return 1; }
  done
  cp "$dir/go.mod" "$dir/go.sum" "$work/"
  (cd "$work" && go mod edit -replace "$module=$src" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" "$pkg") || {
    echo "peer $2: build of $pkg failed"; return 1; }
  mv "$out.tmp" "$out"
  echo "$pin" > "$out.pin"
  echo "peer $2: built in $((SECONDS - start)) s"
}

if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: the Go peers cannot be built"; return 1 2>/dev/null || exit 1
fi
go version

# grpc-go's interop binaries build in about a minute and the workspace tests need them: built first,
# in the foreground.
peer_build grpc-go grpc-go-interop-client google.golang.org/grpc/interop/client
peer_build grpc-go grpc-go-interop-server google.golang.org/grpc/interop/server

# istiod and SPIRE take 15-20 minutes each on a cold machine and only the feature tests need them.
_peers_slow() {
  # istiod as pinned dereferences a nil multicluster controller when there is no Kubernetes
  # (pilot/pkg/serviceregistry/serviceentry/controller.go, newController): patched, see
  # tests/peers/istiod/patches/.
  peer_build_patched istiod pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery istio.io/istio &&
    # SPIRE's datastore is sqlite through cgo.
    peer_build spire spire-server github.com/spiffe/spire/cmd/spire-server 1 &&
    peer_build spire spire-agent github.com/spiffe/spire/cmd/spire-agent 1
}
# With MESH_PEERS_BACKGROUND=1 (as .ci/run sets it) they build in the background while the Rust
# steps run, and `peers_wait` waits for them; otherwise they build here.
_peers_pid=
if [ "${MESH_PEERS_BACKGROUND:-0}" = 1 ]; then
  _peers_slow < /dev/null > "$_peers_out/build.log" 2>&1 &
  _peers_pid=$!
  echo "peers pilot-discovery, spire-server, spire-agent: checked or built in the background (target/peers/build.log)"
else
  _peers_slow
fi

# peers_wait: returns once the background builds have ended (at once if there were none), and fails
# if one of them failed.
peers_wait() {
  [ -n "$_peers_pid" ] || return 0
  local rc=0
  wait "$_peers_pid" || rc=$?
  _peers_pid=
  cat "$_peers_out/build.log"
  [ "$rc" = 0 ] || { echo "a Go peer did not build (exit $rc)"; return 1; }
}

export MESH_GRPC_GO_INTEROP_CLIENT="$_peers_out/grpc-go-interop-client"
export MESH_GRPC_GO_INTEROP_SERVER="$_peers_out/grpc-go-interop-server"
export MESH_ISTIOD="$_peers_out/pilot-discovery"
export MESH_SPIRE_SERVER="$_peers_out/spire-server"
export MESH_SPIRE_AGENT="$_peers_out/spire-agent"
