#!/usr/bin/env python3
"""Draws docs/benchmarks-sweep.svg from bench/results: p99 ack latency against offered rate,
Parley (alone, and with chats started and ended beside the messages), the relay and ejabberd
(medians of the runs), log scales. No plotting library needed."""
import glob, json, math, statistics, sys

out_dir = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
target = sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks-sweep.svg"
series = {}
for name in ["parley-sqlite", "parley-churn", "relay", "ejabberd"]:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out_dir}/sweep-{name}-*.json"))]
    if not runs:
        continue
    points = []
    for i, step in enumerate(runs[0]["steps"]):
        p99 = statistics.median(r["steps"][i]["ack"]["p99_ms"] for r in runs)
        points.append((step["offered_per_sec"], max(p99, 0.05)))
    series[name] = points

W, H, L, R, T, B = 720, 520, 70, 20, 40, 160
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
# Labelled ticks at 1-2-5 steps (the measured rates crowd each other on a log axis); the
# measured points are the dots.
ticks = [m * 10 ** e for e in range(1, 7) for m in (1, 2, 5)]
for x in [t for t in ticks if x0 <= math.log10(t) <= x1]:
    label = f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"
    svg.append(f'<line x1="{px(x)}" x2="{px(x)}" y1="{T}" y2="{H-B}" stroke="#f0f2f5"/><text x="{px(x)}" y="{H-B+18}" text-anchor="middle">{label}</text>')
svg.append(f'<text x="{W/2}" y="{H-B+40}" text-anchor="middle">offered messages per second</text>')
# The legend goes under the plot (the curves leave no corner free).
legend = lambda i: (L + 14, H - B + 66 + i * 19)
y20 = py(20)
svg.append(f'<line x1="{L}" x2="{W-R}" y1="{y20}" y2="{y20}" stroke="#b42318" stroke-dasharray="6 4"/>')
colors = {"parley-sqlite": "#2857d6", "parley-churn": "#7c9ef0", "relay": "#127a3e", "ejabberd": "#b26a00"}
labels = {"parley-sqlite": "Parley (SQLite, durable ack)",
          "parley-churn": "Parley, with 20 chats a second started and ended",
          "relay": "bare relay (no storage)",
          "ejabberd": "ejabberd (XMPP, stream-management ack, MAM on SQLite)"}
for i, (name, pts) in enumerate(series.items()):
    path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
    dash = ' stroke-dasharray="7 4"' if name == "parley-churn" else ""
    svg.append(f'<path d="{path}" fill="none" stroke="{colors[name]}" stroke-width="2.5"{dash}/>')
    for x, y in pts:
        svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colors[name]}"/>')
    lx, ly = legend(i)
    swatch = (f'<line x1="{lx}" x2="{lx+14}" y1="{ly-4}" y2="{ly-4}" stroke="{colors[name]}" stroke-width="3" stroke-dasharray="5 2"/>'
              if dash else f'<rect x="{lx}" y="{ly-6}" width="14" height="4" fill="{colors[name]}"/>')
    svg.append(f'{swatch}<text x="{lx+20}" y="{ly}">{labels[name]}</text>')
lx, ly = legend(len(series))
svg.append(f'<line x1="{lx}" x2="{lx+14}" y1="{ly-4}" y2="{ly-4}" stroke="#b42318" stroke-dasharray="4 3" stroke-width="2"/><text x="{lx+20}" y="{ly}" fill="#b42318">20 ms: the knee limit (p99 ack)</text>')
svg.append("</svg>")
open(target, "w").write("\n".join(svg) + "\n")
print(f"wrote {target}")
