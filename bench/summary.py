#!/usr/bin/env python3
"""Prints the medians of bench/results (as written by bench/run-all.sh) as Markdown tables, the
form docs/BENCHMARKS.md quotes them in."""
import glob, json, statistics, sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench/results"


def runs(pattern):
    found = []
    for f in sorted(glob.glob(f"{out}/{pattern}")):
        try:
            found.append(json.load(open(f)))
        except ValueError:
            print(f"(skipping {f}: not a finished result)", file=sys.stderr)
    return found


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


knees = {}
for target in ["parley-sqlite", "parley-churn", "relay", "ejabberd"]:
    rs = runs(f"sweep-{target}-*.json")
    if not rs:
        continue
    knees[target] = med([r["knee_per_sec"] or 0 for r in rs])
    print(f"\n### sweep: {target} ({len(rs)} runs; knee runs: {[r['knee_per_sec'] or 0 for r in rs]})\n")
    print("| offered/s | achieved/s | ack p50 | ack p99 | ack p99.9 | delivery p99 | server CPU ms/msg |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i, step in enumerate(rs[0]["steps"]):
        col = lambda f: med([f(r["steps"][i]) for r in rs if i < len(r["steps"])])
        cpu = col(lambda s: s.get("server_cpu_ms_per_msg"))
        print(f"| {step['offered_per_sec']:,} | {col(lambda s: s['achieved_per_sec']):,.0f} | {col(lambda s: s['ack']['p50_ms']):.2f} ms"
              f" | {col(lambda s: s['ack']['p99_ms']):.2f} ms | {col(lambda s: s['ack']['p999_ms']):.2f} ms"
              f" | {col(lambda s: s['delivery']['p99_ms']):.2f} ms | {'-' if cpu is None else f'{cpu:.3f}'} |")
if knees:
    relay = knees.get("relay") or 0
    print("\n| target | knee (median) | fraction of the relay's |\n|---|---:|---:|")
    for t, k in knees.items():
        print(f"| {t} | {k:,.0f}/s | {k / relay:.0%} |" if relay else f"| {t} | {k:,.0f}/s | - |")

rs = runs("saturation-*.json")
if rs:
    print(f"\nsaturation: {med([r['saturation_per_sec'] for r in rs]):,.0f}/s (runs {[round(r['saturation_per_sec']) for r in rs]};"
          f" generator-bound: {[r['generator_bound'] for r in rs]})")
rs = runs("fanout-*.json")
if rs:
    print("\n| visitors/agent | ack p99 | delivery p99 | transcript p50 | transcript p99 |\n|---:|---:|---:|---:|---:|")
    for i, s in enumerate(rs[0]["steps"]):
        col = lambda f: med([f(r["steps"][i]["step"]) for r in rs])
        print(f"| {s['visitors_per_agent']} | {col(lambda x: x['ack']['p99_ms']):.2f} ms | {col(lambda x: x['delivery']['p99_ms']):.2f} ms"
              f" | {col(lambda x: (x.get('transcript') or {}).get('p50_ms')):.2f} ms | {col(lambda x: (x.get('transcript') or {}).get('p99_ms')):.2f} ms |")
rs = runs("idle-*.json")
if rs:
    print(f"\nidle ({rs[0]['connections']:,} connections): {med([r['rss_per_connection_kib'] for r in rs]):.1f} KiB per connection,"
          f" {med([r['sessions_per_sec'] for r in rs]):,.0f} sessions/s, {med([r['cpu_ms_per_session'] for r in rs]):.3f} ms CPU per session,"
          f" idle CPU {med([r['idle_cpu_percent'] for r in rs]):.2f}%")
rs = runs("storm-*.json")
if rs:
    print(f"\nstorm ({rs[0]['clients']:,} clients): all resumed in {med([r['all_resumed_secs'] for r in rs]):.2f} s"
          f" (runs {[round(r['all_resumed_secs'], 2) for r in rs]}); history OK in {sum(r['ok'] for r in rs)}/{len(rs)} runs;"
          f" lost {sum(r['history']['lost'] for r in rs)}, duplicated {sum(r['history']['duplicated'] for r in rs)}")
rs = runs("crash-*.json")
if rs:
    print(f"\ncrash: history OK in {sum(r['ok'] for r in rs)}/{len(rs)} runs; acknowledged {[r['history']['acknowledged'] for r in rs]},"
          f" lost {sum(r['history']['lost'] for r in rs)}, duplicated {sum(r['history']['duplicated'] for r in rs)},"
          f" resends already stored {[r['resends_already_stored'] for r in rs]}")
