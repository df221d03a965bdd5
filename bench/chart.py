#!/usr/bin/env python3
"""Draws docs/benchmarks-sweep.svg from bench/results: p99 ack latency against offered rate,
Parley, the relay and ejabberd (medians of the runs), log scales. No plotting library needed."""
import glob, json, math, statistics, sys

out_dir = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
target = sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks-sweep.svg"
series = {}
for name in ["parley-sqlite", "relay", "ejabberd"]:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out_dir}/sweep-{name}-*.json"))]
    if not runs:
        continue
    points = []
    for i, step in enumerate(runs[0]["steps"]):
        p99 = statistics.median(r["steps"][i]["ack"]["p99_ms"] for r in runs)
        points.append((step["offered_per_sec"], max(p99, 0.05)))
    series[name] = points

W, H, L, R, T, B = 720, 420, 70, 20, 40, 60
xs = [x for pts in series.values() for x, _ in pts]
x0, x1 = math.log10(min(xs) / 1.3), math.log10(max(xs) * 1.3)
y0, y1 = math.log10(0.05), math.log10(10000)
px = lambda x: L + (math.log10(x) - x0) / (x1 - x0) * (W - L - R)
py = lambda y: H - B - (math.log10(y) - y0) / (y1 - y0) * (H - T - B)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">Ack latency p99 against offered rate (sweep, one node, server on one core)</text>']
for ms in [0.1, 1, 10, 100, 1000, 10000]:
    y = py(ms)
    svg.append(f'<line x1="{L}" x2="{W-R}" y1="{y}" y2="{y}" stroke="#e3e6eb"/><text x="{L-8}" y="{y+4}" text-anchor="end">{ms:g} ms</text>')
for x in sorted(set(xs)):
    svg.append(f'<line x1="{px(x)}" x2="{px(x)}" y1="{T}" y2="{H-B}" stroke="#f0f2f5"/><text x="{px(x)}" y="{H-B+18}" text-anchor="middle">{x:,}</text>')
svg.append(f'<text x="{W/2}" y="{H-15}" text-anchor="middle">offered messages per second</text>')
y20 = py(20)
svg.append(f'<line x1="{L}" x2="{W-R}" y1="{y20}" y2="{y20}" stroke="#b42318" stroke-dasharray="6 4"/><text x="{W-R-4}" y="{y20-6}" text-anchor="end" fill="#b42318">20 ms: the knee limit</text>')
colors = {"parley-sqlite": "#2857d6", "relay": "#127a3e", "ejabberd": "#b26a00"}
labels = {"parley-sqlite": "Parley (SQLite, durable ack)", "relay": "bare relay (no storage)",
          "ejabberd": "ejabberd (XMPP, stream-management ack, MAM on SQLite)"}
for i, (name, pts) in enumerate(series.items()):
    path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
    svg.append(f'<path d="{path}" fill="none" stroke="{colors[name]}" stroke-width="2.5"/>')
    for x, y in pts:
        svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colors[name]}"/>')
    svg.append(f'<rect x="{L+14}" y="{T+10+i*20}" width="14" height="4" fill="{colors[name]}"/><text x="{L+34}" y="{T+16+i*20}">{labels[name]}</text>')
svg.append("</svg>")
open(target, "w").write("\n".join(svg) + "\n")
print(f"wrote {target}")
