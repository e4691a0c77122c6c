#!/usr/bin/env bash
# The dns-client example against real pods and a real DNS server, as docs/discovery.md runs it:
# three greeter-server pods; v1's two are published by SRV records (ports, weights), v2's one by
# an A record at a port given in the file; the 90/10 split and the identity come from the file.
# Needs dnsmasq and the examples built (cargo build --features dns --examples).
set -euo pipefail
cd "$(dirname "$0")/.."
ex=target/debug/examples
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Waits until FILE has a line matching PATTERN (a started server says so), or fails.
wait_line() {
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1:"; cat "$1" "${1%.out}.err" 2>/dev/null || true; exit 1
}

$ex/gen-certs --out "$work" --trust-domain example.org --dns localhost server client
declare -A port
for pod in a b c; do
  version=v1; [ "$pod" = c ] && version=v2
  $ex/greeter-server --listen 127.0.0.1:0 --ca "$work/ca.pem" --cert "$work/server.pem" --key "$work/server-key.pem" \
    --version "$version" --allow spiffe://example.org/client > "$work/$pod.out" 2> "$work/$pod.err" &
  pids+=($!)
  wait_line "$work/$pod.out" '^listening on '
  port[$pod]=$(sed -n 's/^listening on .*://p' "$work/$pod.out")
done

dns_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "127.0.0.1 pod-a.mesh.test pod-b.mesh.test greeter-v2.mesh.test" > "$work/hosts"
dnsmasq --no-daemon --conf-file=/dev/null --port="$dns_port" --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --local=/mesh.test/ --addn-hosts="$work/hosts" --local-ttl=5 \
  --srv-host="_grpc._tcp.greeter-v1.mesh.test,pod-a.mesh.test,${port[a]},0,1" \
  --srv-host="_grpc._tcp.greeter-v1.mesh.test,pod-b.mesh.test,${port[b]},0,1" > /dev/null 2> "$work/dnsmasq.out" &
pids+=($!)
wait_line "$work/dnsmasq.out" 'started, version'

cat > "$work/services.yaml" <<YAML
services:
  greeter:
    identity: spiffe://example.org/server
    subsets:
      - { name: v1, dns: _grpc._tcp.greeter-v1.mesh.test }
      - { name: v2, dns: greeter-v2.mesh.test, port: ${port[c]} }
    routes:
      - name: canary
        targets: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
YAML

line=$($ex/dns-client --nameserver "127.0.0.1:$dns_port" --config "$work/services.yaml" --requests 2000 --json \
  --ca "$work/ca.pem" --cert "$work/client.pem" --key "$work/client-key.pem" | tail -n 1)
echo "$line"
python3 - "$line" "${port[a]}" "${port[b]}" "${port[c]}" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
a, b, c = (f"127.0.0.1:{p}" for p in sys.argv[2:5])
assert r["requests"] == 2000 and r["errors"] == 0, r
v1, v2 = r["subsets"]["v1"], r["subsets"]["v2"]
assert v1 + v2 == 2000 and abs(v2 - 200) <= 70, r   # 10% of 2000; 5 standard deviations
e = r["endpoints"]
assert set(e) == {a, b, c}, r                        # v1's pods from SRV, v2's from the A record
assert e[a] + e[b] == v1 and e[c] == v2 and min(e[a], e[b]) > 0, r
PY
echo "dns-client ok"
