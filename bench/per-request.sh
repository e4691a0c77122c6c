#!/usr/bin/env bash
# Per-request instructions (callgrind) and heap allocations (DHAT) of the client and of the server
# process, for bare-mtls and mesh (HTTP/1.1 and HTTP/2) and grpc-tonic and grpc-mesh (unary gRPC)
# -- the method of docs/benchmarks.md
# ("Where mesh's time goes"): every figure is
#
#     (count in a LONG run - count in a SHORT run) / (requests in LONG - requests in SHORT)
#
# so start-up, certificate loading, handshakes and shutdown cancel; the published figure is the
# median of REPEAT such pairs. Requests are the client's `requests` (its JSON line). Only one
# process runs under valgrind at a time: the client is measured against a native server, the
# server against a native client. Every run gets a fresh server; a server under valgrind is
# stopped with SIGTERM (it has no handler: valgrind reports the signal and writes its output).
#
#   bench/per-request.sh [BINARY [OUT.json]]
#       BINARY  default target/release/mesh-bench (build it first: cargo build --release -p mesh-bench)
#       OUT     default target/bench/per-request.json:
#               {"CONFIG":{"h1":{"client":{"instructions":N,"allocations":N},"server":{..}},"h2":{..}}}
#               The table goes to stdout; every valgrind run (requests, count) to OUT's name with
#               .runs.tsv instead of .json.
#
# Environment (defaults in brackets):
#   SHORT, LONG   the client's --duration in the two runs of a pair, seconds [2, 12]; under load
#                 2 and 6 (the docs' choice) spread mesh's figures by +-5%, 2 and 12 by ~1-2%
#   REPEAT        pairs per figure; the figure is their median [3]
#   CONFIGS       [bare-mtls mesh grpc-tonic grpc-mesh]
#   WORKLOADS     KEY=WORKLOAD pairs [h1=h1:32 h2=h2:8x16 grpc=grpc:8x16]: the throughput
#                 workloads. A grpc: workload runs on the grpc-* configurations only, the others
#                 on the rest. (mesh's client opens one connection per endpoint, 4 endpoints x
#                 2 clients, so h2:8x16 is 8 connections for every configuration; h2:2x8 would
#                 not be)
#   SIDES         [client server]     TOOLS  [callgrind dhat]
#   NICE          niceness of every process started [15]
#   KEEP=1        keep the temporary directory (valgrind outputs, logs) and print its path
#   FUNCTIONS=1   (callgrind) also the per-function table of each figure, from its last pair
#                 (bench/functions.py: instructions per request by group -- mesh's modules, hyper,
#                 h2, rustls, tokio, the allocator -- and the top functions), written beside OUT
#                 as OUT's name with .functions/CONFIG-KEY-SIDE.{txt,json} instead of .json
#
# Needs valgrind (installed from Debian when missing, as root or through sudo) and jq.
set -euo pipefail

orig_pwd=$PWD
cd "$(dirname "$0")/.."
root=$PWD

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$2/$1" ;; esac; }
if [ $# -ge 1 ]; then bin=$(abspath "$1" "$orig_pwd"); else bin=$root/target/release/mesh-bench; fi
if [ $# -ge 2 ]; then out=$(abspath "$2" "$orig_pwd"); else out=$root/target/bench/per-request.json; fi
runs_file="${out%.json}.runs.tsv"
functions_dir="${out%.json}.functions"

SHORT=${SHORT:-2}
LONG=${LONG:-12}
REPEAT=${REPEAT:-3}
CONFIGS=${CONFIGS:-bare-mtls mesh grpc-tonic grpc-mesh}
WORKLOADS=${WORKLOADS:-h1=h1:32 h2=h2:8x16 grpc=grpc:8x16}
FUNCTIONS=${FUNCTIONS:-0}
SIDES=${SIDES:-client server}
TOOLS=${TOOLS:-callgrind dhat}
NICE=${NICE:-15}
READY_TIMEOUT=${READY_TIMEOUT:-300}

die() { echo "per-request.sh: $*" >&2; exit 1; }
log() { echo "per-request.sh: $*" >&2; }

[ -x "$bin" ] || die "$bin is not an executable (build it: cargo build --release -p mesh-bench)"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be 1 or more"
command -v jq >/dev/null 2>&1 || die "jq is required"
if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    die "valgrind is missing and neither root nor sudo is available"
  fi
  log "installing valgrind from Debian"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq valgrind >/dev/null
fi
if pgrep -x rustc >/dev/null 2>&1; then
  log "note: rustc is running; counts depend on load far less than timings, but a loaded machine changes batching (compare medians)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/per-request.XXXXXX")
server_pid=""
server_fd=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin" certs --out "$work/certs" >/dev/null

# valgrind_prefix TOOL OUTFILE LOGFILE: sets the array `vg` (the command prefix)
valgrind_prefix() {
  case "$1" in
    none) vg=() ;;
    callgrind) vg=(valgrind --tool=callgrind "--callgrind-out-file=$2" "--log-file=$3") ;;
    dhat) vg=(valgrind --tool=dhat "--dhat-out-file=$2" "--log-file=$3") ;;
    *) die "unknown tool $1" ;;
  esac
}

# count TOOL OUTFILE: sets n to the whole process's instructions (Ir, all threads) or heap blocks
# allocated (DHAT's tbk summed over program points = its "Total: .. in N blocks")
count() {
  n=""
  case "$1" in
    callgrind) n=$(awk '/^totals:/ { t = $2 } /^summary:/ { s = $2 } END { print (t != "" ? t : s) }' "$2") ;;
    dhat) n=$(jq '[.pps[].tbk] | add // 0' "$2") ;;
  esac
  [[ "$n" =~ ^[0-9]+$ ]] || die "no total in $2"
}

# start_server CONFIG TOOL OUTFILE LOGFILE: sets server_pid and ports (waits for LISTENING)
start_server() {
  local config=$1 fifo="$work/server.fifo" line=""
  valgrind_prefix "$2" "$3" "$4.valgrind"
  rm -f "$fifo"
  mkfifo "$fifo"
  nice -n "$NICE" "${vg[@]}" "$bin" server --config "$config" --certs "$work/certs" >"$fifo" 2>"$4" </dev/null &
  server_pid=$!
  exec {server_fd}<"$fifo"
  if ! read -r -t "$READY_TIMEOUT" -u "$server_fd" line || [[ "$line" != "LISTENING "* ]]; then
    die "server $config did not print LISTENING (got '$line'; see $4, run with KEEP=1)"
  fi
  ports=${line#LISTENING }
}

# stop_server: SIGTERM, then wait for it (valgrind writes its output file on the way out)
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  exec {server_fd}<&-
}

# run_client CONFIG WORKLOAD SECS TOOL OUTFILE LOGFILE: sets requests and errors
run_client() {
  local config=$1 workload=$2 secs=$3 json
  valgrind_prefix "$4" "$5" "$6.valgrind"
  nice -n "$NICE" "${vg[@]}" "$bin" client --config "$config" --certs "$work/certs" --ports "$ports" \
    --workload "$workload" --warmup 0 --duration "$secs" >"$6.stdout" 2>"$6" </dev/null ||
    die "client $config $workload failed (see $6, run with KEEP=1)"
  json=$(grep '^{' "$6.stdout" | tail -n1) || true
  [ -n "$json" ] || die "client $config $workload printed no JSON line"
  requests=$(jq -r .requests <<<"$json")
  errors=$(jq -r .errors <<<"$json")
  if [ "$errors" != 0 ]; then
    log "warning: $config $workload: $errors errors ($(jq -r .first_error <<<"$json")): figure suspect"
  fi
}

# measure CONFIG WORKLOAD SIDE TOOL SECS TAG: one run; sets requests, errors and n (the count)
measure() {
  local config=$1 workload=$2 side=$3 tool=$4 secs=$5 tag=$6
  if [ "$side" = client ]; then
    start_server "$config" none /dev/null "$tag.server.log"
    run_client "$config" "$workload" "$secs" "$tool" "$tag.out" "$tag.client.log"
  else
    start_server "$config" "$tool" "$tag.out" "$tag.server.log"
    run_client "$config" "$workload" "$secs" none /dev/null "$tag.client.log"
  fi
  stop_server
  [ -s "$tag.out" ] || die "valgrind wrote no $tag.out (see $tag.*.valgrind)"
  count "$tool" "$tag.out"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$workload" "$side" "$tool" "$secs" "$requests" "$n" "$errors" \
    >>"$work/runs.tsv"
}

# median of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

results="$work/results.tsv"
: >"$results"
: >"$work/runs.tsv"
[ "$FUNCTIONS" = 0 ] || { rm -rf "$functions_dir" && mkdir -p "$functions_dir"; }
for config in $CONFIGS; do
  for pair in $WORKLOADS; do
    key=${pair%%=*}
    workload=${pair#*=}
    # gRPC workloads on the gRPC configurations, HTTP workloads on the others.
    case "$config:$workload" in grpc-*:grpc:* | grpc-*:grpc-rate:*) ;; grpc-*:* | *:grpc:* | *:grpc-rate:*) continue ;; esac
    for side in $SIDES; do
      for tool in $TOOLS; do
        pers=()
        for rep in $(seq "$REPEAT"); do
          tag="$work/$config-${workload//:/_}-$side-$tool-$rep"
          measure "$config" "$workload" "$side" "$tool" "$SHORT" "$tag-short"
          r1=$requests c1=$n
          measure "$config" "$workload" "$side" "$tool" "$LONG" "$tag-long"
          r2=$requests c2=$n
          [ "$r2" -gt "$r1" ] ||
            die "$config $workload $side $tool: the long run completed no more requests ($r2) than the short one ($r1)"
          per=$(awk -v c1="$c1" -v c2="$c2" -v r1="$r1" -v r2="$r2" 'BEGIN { printf "%.3f", (c2 - c1) / (r2 - r1) }')
          log "$config $workload $side $tool #$rep: requests $r1 -> $r2, count $c1 -> $c2: $per per request"
          pers+=("$per")
          if [ "$FUNCTIONS" != 0 ] && [ "$tool" = callgrind ] && [ "$rep" = "$REPEAT" ]; then
            name="$functions_dir/$config-$key-$side"
            python3 "$root/bench/functions.py" "$tag-short.out" "$tag-long.out" "$r1" "$r2" --json "$name.json" >"$name.txt" ||
              log "warning: bench/functions.py failed on $config $key $side"
          fi
          # The big outputs are not needed once counted (and tabled).
          [ "${KEEP:-0}" = 1 ] || rm -f "$tag"-*.out
        done
        med=$(printf '%s\n' "${pers[@]}" | median)
        min=$(printf '%s\n' "${pers[@]}" | sort -g | head -n1)
        max=$(printf '%s\n' "${pers[@]}" | sort -g | tail -n1)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$key" "$side" "$tool" "$med" "$min" "$max" >>"$results"
      done
    done
  done
done

mkdir -p "$(dirname "$out")"
{ printf 'config\tworkload\tside\ttool\tseconds\trequests\tcount\terrors\n'; cat "$work/runs.tsv"; } >"$runs_file"

# Instructions rounded to whole numbers, allocations to one decimal.
jq -R -s '
  split("\n") | map(select(length > 0) | split("\t")) |
  reduce .[] as [$config, $key, $side, $tool, $med] ({};
    .[$config][$key][$side][if $tool == "callgrind" then "instructions" else "allocations" end] =
      (($med | tonumber) as $x | if $tool == "callgrind" then ($x | round) else (($x * 10 | round) / 10) end))
' "$results" >"$out"

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "per request: (count at ${LONG}s - count at ${SHORT}s) / (requests at ${LONG}s - requests at ${SHORT}s),"
echo "median of $REPEAT pairs (min-max); commit $commit"
printf '%-10s %-3s %-7s %26s %20s\n' config wl side "instructions" "allocations"
awk -F'\t' '
  { k = $1 "\t" $2 "\t" $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    if ($4 == "callgrind") ir[k] = sprintf("%.0f (%.0f-%.0f)", $5, $6, $7); else al[k] = sprintf("%.1f (%.1f-%.1f)", $5, $6, $7) }
  END { for (i = 1; i <= n; i++) { split(order[i], f, "\t")
    printf "%-10s %-3s %-7s %26s %20s\n", f[1], f[2], f[3], (order[i] in ir ? ir[order[i]] : "-"), (order[i] in al ? al[order[i]] : "-") } }
' "$results"
for pair in "mesh bare-mtls" "grpc-mesh grpc-tonic"; do
  set -- $pair
  if jq -e --arg m "$1" --arg b "$2" 'has($m) and has($b)' "$out" >/dev/null; then
    echo "$1 / $2 (medians):"
    jq -r --arg m "$1" --arg b "$2" '.[$b] as $base | .[$m] | to_entries[] | .key as $w | .value | to_entries[] | .key as $s |
      def ratio($x; $y): if ($x != null) and (($y // 0) > 0) then ($x / $y * 100 | round / 100 | tostring) + "x" else "-" end;
      [$w, $s, ratio(.value.instructions; $base[$w][$s].instructions), ratio(.value.allocations; $base[$w][$s].allocations)] | @tsv' "$out" |
      while IFS=$'\t' read -r w s i a; do printf '%-10s %-4s %-7s %26s %20s\n' "" "$w" "$s" "$i" "$a"; done
  fi
done
[ "$FUNCTIONS" = 0 ] || echo "per-function tables in $functions_dir"

echo "wrote $out and $runs_file"
