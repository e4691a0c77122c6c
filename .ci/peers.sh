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

if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: the Go peers cannot be built"; return 1 2>/dev/null || exit 1
fi
go version

peer_build grpc-go grpc-go-interop-client google.golang.org/grpc/interop/client
peer_build grpc-go grpc-go-interop-server google.golang.org/grpc/interop/server
peer_build istiod pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery
# SPIRE's datastore is sqlite through cgo.
peer_build spire spire-server github.com/spiffe/spire/cmd/spire-server 1
peer_build spire spire-agent github.com/spiffe/spire/cmd/spire-agent 1

export MESH_GRPC_GO_INTEROP_CLIENT="$_peers_out/grpc-go-interop-client"
export MESH_GRPC_GO_INTEROP_SERVER="$_peers_out/grpc-go-interop-server"
export MESH_ISTIOD="$_peers_out/pilot-discovery"
export MESH_SPIRE_SERVER="$_peers_out/spire-server"
export MESH_SPIRE_AGENT="$_peers_out/spire-agent"
