#!/usr/bin/env python3
"""Renders target/bench/summary.json (from `mesh-bench run`) as the Markdown tables of
docs/benchmarks.md: one row per configuration and workload (medians of the interleaved runs), the
idle connections' memory and the instructions per request when measured, then the ratios against
their goals. Usage: bench/markdown.py [target/bench/summary.json]"""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "target/bench/summary.json"
s = json.load(open(path))
run, machine = s["run"], s["machine"]
print(f"Mode `{run['mode']}`: {run['rounds']} interleaved rounds, {run['warmup_s']} s warm-up + "
      f"{run['duration_s']} s per workload, {run['wall_s'] / 60:.1f} min in all; "
      f"machine {machine['nproc']} vCPU ({machine['cpu_model']}); load average before "
      f"`{machine['loadavg_before']}`, after `{machine['loadavg_after']}`.")
print()
print("| config | workload | req/s median (min-max) | per busiest-core CPU s | p50 µs | p90 µs | p99 µs "
      "| CPU s / 10k req: total (client + server + proxies) | server+proxies peak RSS MiB "
      "| per request, client / server [/ proxies]: CPU µs | syscalls | context switches |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def sides(figure, decimals):
    if not figure:
        return "-"
    num = lambda v: "-" if v is None else f"{v:.{decimals}f}"
    text = f"{num(figure.get('client'))} / {num(figure.get('server'))}"
    return text + (f" / {num(figure['proxies'])}" if "proxies" in figure else "")


idle = []
for config, workloads in s["results"].items():
    for workload, r in workloads.items():
        if "kib_per_connection" in r:
            idle.append((config, workload, r))
            continue
        cpu = r["cpu_s_per_10k"]
        rss = r["peak_rss_kib"]
        busiest = r.get("rps_per_busiest_core")
        busiest = f"{busiest:.0f}" if busiest and not workload.startswith("rate") else "-"
        print(f"| {config} | {workload} | {r['rps']:.0f} ({r['rps_min']:.0f}-{r['rps_max']:.0f}) | {busiest} "
              f"| {r['p50_us']:.0f} | {r['p90_us']:.0f} | {r['p99_us']:.0f} "
              f"| {cpu['total']:.3f} ({cpu['client']:.3f} + {cpu['server']:.3f} + {cpu['proxies']:.3f}) "
              f"| {(rss['server'] + rss['proxies']) / 1024:.1f} "
              f"| {sides(r.get('per_request', {}).get('cpu_us'), 1)} "
              f"| {sides(r.get('per_request', {}).get('syscalls'), 2)} "
              f"| {sides(r.get('per_request', {}).get('context_switches'), 3)} |")
print()
print(f"Syscalls and context switches: {s.get('counters', {}).get('status', 'not in this summary')}.")
if idle:
    print()
    print("| config | workload | connections opened | client KiB per connection | server KiB per connection |")
    print("|---|---|---|---|---|")
    for config, workload, r in idle:
        kib = r["kib_per_connection"]
        num = lambda v, d: "-" if v is None else f"{v:.{d}f}"
        print(f"| {config} | {workload} | {num(r['idle_connections'], 0)} | {num(kib['client'], 1)} "
              f"| {num(kib['server'], 1)} |")
instructions = s.get("instructions", {})
print()
print(f"Instructions per request: {instructions.get('status', 'not in this summary')}"
      + (f" ({instructions['method']})." if instructions.get("method") else "."))
figures = instructions.get("per_request") or {}
if figures:
    print()
    print("| config | workload | client instructions | server instructions |")
    print("|---|---|---|---|")
    for config, workloads in figures.items():
        for workload, sides in workloads.items():
            count = lambda side: sides.get(side, {}).get("instructions")
            text = lambda v: "-" if v is None else f"{v / 1000:.1f} k"
            print(f"| {config} | {workload} | {text(count('client'))} | {text(count('server'))} |")
print()
print("| ratio | median of wall-clock req/s | per busiest-core CPU-second | goal | met |")
print("|---|---|---|---|---|")
goals = s.get("goals", {})
for name, value in sorted(s["ratios"].items()):
    cpu = s.get("ratios_cpu_normalized", {}).get(name)
    goal = goals.get(name)
    goal_text, met = "", ""
    if isinstance(goal, dict):
        goal_text = goal.get("target", "")
        met = {True: "yes", False: "no"}.get(goal.get("met"), "")
    value = "" if value is None else f"{value:.3f}"
    cpu = "" if cpu is None else f"{cpu:.3f}"
    print(f"| `{name}` | {value} | {cpu} | {goal_text} | {met} |")
