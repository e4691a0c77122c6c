#!/usr/bin/env python3
"""Per-request instructions by group and by function, from two callgrind outputs of the same
process and workload (a short and a long run), so start-up, handshakes and shutdown cancel:

    per request = (cost in LONG - cost in SHORT) / (requests in LONG - requests in SHORT)

Usage: bench/functions.py SHORT.out LONG.out REQUESTS_SHORT REQUESTS_LONG [--top N] [--json OUT]
       bench/functions.py --table NAME=FILE.json [NAME=FILE.json ...]
           (the groups of several such JSON outputs side by side, as a Markdown table of
           instructions per request executed in each group's own functions, then the whole
           process and mesh's crate entered from outside it)

Groups: mesh's own modules (`mesh_tower::client::retry`, `mesh_tower::telemetry`, ...), hyper,
hyper-util, h2, rustls, tokio, tonic, tower, the allocator (malloc/free and friends), memcpy and
memmove, and the rest by crate. A function belongs to the first crate its (demangled) name
mentions, so `<mesh_tower::..::Router as tower_service::Service<..>>::call` is mesh's and
`core::ptr::drop_in_place<h2::..>` is h2's.

Two figures per group:
- `self`: instructions executed in the group's own functions (the groups add up to the whole
  process);
- `inclusive`: instructions executed while the group was entered from outside it (the cost of
  every call edge from a function of another group into this one): what the group and everything
  it called cost. A group entered again below itself (mesh -> hyper -> mesh) is counted again
  there, so inclusive figures of nested groups overlap and do not add up.

Functions: the top N by inclusive cost per request (self + every call it made, recursion into
itself excluded), with their self cost, for mesh's functions and for the whole process."""
import json
import re
import sys
from collections import defaultdict

ALLOCATOR = re.compile(r"^(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|_int_realloc|malloc_consolidate|"
                       r"tcache_|__libc_malloc|__libc_free|__libc_realloc|__libc_calloc|__rust_alloc|__rust_dealloc|"
                       r"__rust_realloc|__rdl_|unlink_chunk|alloc_perturb|__GI___libc_|_int_free_merge|"
                       r"_int_free_create_chunk|_int_free_maybe_consolidate)")
MEMCPY = re.compile(r"^(__)?(memcpy|memmove|memset|memcmp|bcmp)|^__mem(cpy|move|set|cmp)")
# Crates worth naming alone; anything else is grouped by its first path segment.
NAMED = ["mesh_tower", "mesh_core", "mesh_tonic", "mesh_bench", "hyper_util", "hyper", "h2", "rustls",
         "tokio_rustls", "tokio", "tonic", "tower", "http_body_util", "http", "opentelemetry_sdk",
         "opentelemetry", "tracing_opentelemetry", "tracing_subscriber", "tracing_core", "tracing",
         "metrics_exporter_prometheus", "metrics_util", "metrics", "ring", "prost", "bytes", "hashbrown",
         "arc_swap", "foldhash", "futures_util", "futures_channel", "pin_project_lite"]
CRATE = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(NAMED, key=len, reverse=True)) + r")::")
PATH = re.compile(r"(?<![A-Za-z0-9_])([a-z_][a-z0-9_]*)::")
STD = {"core", "alloc", "std"}
# The TLS handshake's future (tokio-rustls drives every handshake, client and server, through it).
# A run that opened more connections than its pair (a client re-dialling after a timeout) pays a
# few million instructions of handshake each, which per request is noise: it is reported apart.
HANDSHAKE = re.compile(r"^<tokio_rustls::common::handshake::MidHandshake<.*as core::future::future::Future>::poll$")


def group_of(name):
    if ALLOCATOR.match(name):
        return "allocator"
    if MEMCPY.match(name):
        return "memcpy/memmove"
    match = CRATE.search(name)
    if match:
        crate = match.group(1)
        if crate in ("mesh_tower", "mesh_tonic"):
            # mesh's modules: mesh_tower::client::retry, mesh_tower::telemetry, ...
            rest = name[match.end():]
            parts = re.match(r"([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?", rest)
            if parts:
                module = parts.group(1)
                if module == "client" and parts.group(2):
                    module += "::" + parts.group(2)
                return f"{crate}::{module}"
        return crate
    if "__rust_alloc" in name or "__rust_dealloc" in name or "__rust_realloc" in name:
        return "allocator"
    match = PATH.search(name)
    if match:
        return "std/core/alloc" if match.group(1) in STD or match.group(1) == "__rustc" else match.group(1)
    return "other (libc, ld.so, unnamed)"


def parse(path):
    """Self cost per function and call edges (caller, callee) -> inclusive cost, first event (Ir)."""
    names = {"fn": {}, "file": {}}
    self_cost = defaultdict(int)
    edges = defaultdict(int)
    current = None
    callee = None
    pending_call = False

    def name_of(kind, value):
        value = value.strip()
        match = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not match:
            return value
        if match.group(2) is not None:
            names[kind][match.group(1)] = match.group(2)
            return match.group(2)
        return names[kind].get(match.group(1), value)

    with open(path, errors="replace") as f:
        for line in f:
            if not line or line[0] == "#" or line == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                fields = line.split()
                cost = int(fields[1]) if len(fields) > 1 else 0
                if pending_call:
                    if callee != current:
                        edges[(current, callee)] += cost
                    pending_call = False
                else:
                    self_cost[current] += cost
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                current = name_of("fn", value)
            elif key == "cfn":
                callee = name_of("fn", value)
            elif key == "calls":
                pending_call = True
            elif key in ("fl", "fi", "fe", "cfi", "cfl"):
                name_of("file", value)
            elif key in ("ob", "cob"):
                name_of("file", value)
    return self_cost, edges


def figures(path):
    self_cost, edges = parse(path)
    groups_self = defaultdict(int)
    groups_incl = defaultdict(int)
    fn_incl = defaultdict(int)
    group = {}

    def g(fn):
        if fn not in group:
            group[fn] = group_of(fn or "")
        return group[fn]

    for fn, cost in self_cost.items():
        groups_self[g(fn)] += cost
        fn_incl[fn] += cost
    crate_of = lambda grp: grp.split("::")[0]
    for (caller, callee), cost in edges.items():
        fn_incl[caller] += cost
        if g(caller) != g(callee):
            groups_incl[g(callee)] += cost
        # mesh's modules together: what the whole crate costs, entered from outside it.
        callee_crate = crate_of(g(callee))
        if callee_crate in ("mesh_tower", "mesh_tonic") and crate_of(g(caller)) != callee_crate:
            groups_incl[callee_crate + " (all modules)"] += cost
    total = sum(self_cost.values())
    # Who copies and who allocates: the callers of memcpy/memmove and of the allocator.
    callers = defaultdict(int)
    for (caller, callee), cost in edges.items():
        if g(callee) in ("memcpy/memmove", "allocator") and g(caller) not in ("memcpy/memmove", "allocator"):
            callers[(g(callee), caller)] += cost
    return {"total": total, "self": groups_self, "inclusive": groups_incl, "fn_self": self_cost, "fn_incl": fn_incl,
            "group": group, "callers": callers}


def table(specs):
    """Markdown: each group's self instructions per request, one column per NAME=FILE.json."""
    columns = []
    for spec in specs:
        name, _, path = spec.partition("=")
        with open(path) as f:
            columns.append((name, json.load(f)))
    rows = {}
    for _, data in columns:
        for row in data["groups"]:
            rows.setdefault(row["group"], 0)
            rows[row["group"]] = max(rows[row["group"]], abs(row["self"]))
    print("| per request (self) | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    fmt = lambda v: "" if v is None or abs(v) < 50 else f"{v / 1000:.1f} k"
    for group in sorted(rows, key=lambda g: -rows[g]):
        if rows[group] < 150 or group.endswith("(all modules)"):
            continue
        cells = [fmt(next((r["self"] for r in data["groups"] if r["group"] == group), None)) for _, data in columns]
        print(f"| {group} | " + " | ".join(cells) + " |")
    whole = lambda data: next((r["inclusive"] for r in data["groups"] if r["group"].endswith("(all modules)")), None)
    print("| **mesh's crate entered from outside it (inclusive)** | " +
          " | ".join(fmt(whole(data)) for _, data in columns) + " |")
    print("| **whole process** | " + " | ".join(f"{data['per_request'] / 1000:.1f} k" for _, data in columns) + " |")
    print("| of which TLS handshakes of connections opened in one run of the pair only | " +
          " | ".join(fmt(data.get("handshakes")) for _, data in columns) + " |")
    print("| **whole process without them** | " + " | ".join(
        f"{data.get('per_request_without_handshakes', data['per_request']) / 1000:.1f} k" for _, data in columns) + " |")


def main(argv):
    args = argv[1:]
    if args and args[0] == "--table":
        table(args[1:])
        return
    top = 25
    json_out = None
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    if "--json" in args:
        i = args.index("--json")
        json_out = args[i + 1]
        del args[i:i + 2]
    short, long_, r_short, r_long = args[0], args[1], int(args[2]), int(args[3])
    if r_long <= r_short:
        sys.exit("functions.py: the long run completed no more requests than the short one")
    a, b = figures(short), figures(long_)
    n = r_long - r_short
    per = lambda x, y: (y - x) / n
    groups = sorted(set(a["self"]) | set(b["self"]) | set(a["inclusive"]) | set(b["inclusive"]))
    rows = []
    for grp in groups:
        rows.append({"group": grp, "self": per(a["self"].get(grp, 0), b["self"].get(grp, 0)),
                     "inclusive": per(a["inclusive"].get(grp, 0), b["inclusive"].get(grp, 0))})
    rows.sort(key=lambda r: -r["self"])
    fns = set(b["fn_incl"])
    fn_rows = []
    for fn in fns:
        incl = per(a["fn_incl"].get(fn, 0), b["fn_incl"].get(fn, 0))
        own = per(a["fn_self"].get(fn, 0), b["fn_self"].get(fn, 0))
        fn_rows.append({"function": fn, "group": b["group"].get(fn) or group_of(fn or ""), "inclusive": incl,
                        "self": own})
    total = per(a["total"], b["total"])
    handshake = lambda f: max((v for fn, v in f["fn_incl"].items() if fn and HANDSHAKE.match(fn)), default=0)
    handshakes = per(handshake(a), handshake(b))
    mesh_fns = sorted((r for r in fn_rows if r["group"].startswith("mesh_tower") or r["group"].startswith("mesh_tonic")),
                      key=lambda r: -r["inclusive"])[:top]
    all_fns = sorted(fn_rows, key=lambda r: -r["self"])[:top]
    print(f"instructions per request: {total:.0f} (requests {r_short} -> {r_long})")
    print(f"of which TLS handshakes (connections opened in one run and not the other): {handshakes:.0f}; "
          f"without them: {total - handshakes:.0f}")
    print(f"{'group':<34} {'self':>9} {'inclusive':>10}")
    for r in rows:
        if abs(r["self"]) < 5 and abs(r["inclusive"]) < 5:
            continue
        print(f"{r['group']:<34} {r['self']:>9.0f} {r['inclusive']:>10.0f}")
    print(f"\nmesh's functions, top {top} by inclusive instructions per request (self in brackets):")
    for r in mesh_fns:
        print(f"  {r['inclusive']:>8.0f} ({r['self']:>6.0f})  {r['function'][:160]}")
    print(f"\nwhole process, top {top} functions by self instructions per request:")
    for r in all_fns:
        print(f"  {r['self']:>8.0f}  [{r['group']}] {r['function'][:150]}")
    copy_rows = []
    for key in set(b["callers"]):
        copy_rows.append({"group": key[0], "caller": key[1], "group_of_caller": b["group"].get(key[1]) or group_of(key[1]),
                          "inclusive": per(a["callers"].get(key, 0), b["callers"][key])})
    for kind in ("memcpy/memmove", "allocator"):
        rows_of = sorted((r for r in copy_rows if r["group"] == kind), key=lambda r: -r["inclusive"])[:12]
        print(f"\ntop callers of {kind}, instructions per request spent in it from each:")
        for r in rows_of:
            print(f"  {r['inclusive']:>8.0f}  [{r['group_of_caller']}] {r['caller'][:150]}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"per_request": total, "handshakes": handshakes,
                       "per_request_without_handshakes": total - handshakes, "requests": [r_short, r_long], "groups": rows,
                       "mesh_functions": mesh_fns, "top_self": all_fns}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv)
