#!/usr/bin/env bash
# Reproduces docs/BENCHMARKS.md: builds release binaries, then runs the sweep against Parley
# (SQLite, one node) and against the bare relay, the server pinned to CPU 0 and the generator to
# CPU 1, three runs each. Results (JSON) go to bench/results/. Loopback only; about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin parley --bin parley-load
bin=${CARGO_TARGET_DIR:-target}/release
out=bench/results
mkdir -p "$out"
rates=${RATES:-300,1000,1500,2000,3000}
pairs=${PAIRS:-400}
step=${STEP_SECS:-5}
pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
relay=""
trap '[ -n "$relay" ] && kill "$relay" 2>/dev/null; true' EXIT

for run in 1 2 3; do
  echo "== run $run: Parley (SQLite, one node)"
  pin 1 "$bin/parley-load" sweep --parley "$bin/parley" --server-cpu 0 --pairs "$pairs" --visitors-per-agent 20 \
    --rates "$rates" --step-secs "$step" --json >"$out/sweep-parley-sqlite-$run.json"
  echo "== run $run: relay (no storage, auth or encryption)"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Started directly (not through a shell function) so that $! is the relay itself.
  if command -v taskset >/dev/null; then
    taskset -c 0 "$bin/parley-load" relay --listen "127.0.0.1:$port" 2>/dev/null &
  else
    "$bin/parley-load" relay --listen "127.0.0.1:$port" 2>/dev/null &
  fi
  relay=$!
  sleep 0.3
  pin 1 "$bin/parley-load" sweep --relay "ws://127.0.0.1:$port/ws" --pairs "$pairs" \
    --rates "${RELAY_RATES:-$rates,10000,20000}" --step-secs "$step" --json >"$out/sweep-relay-$run.json"
  kill "$relay"; relay=""
done
python3 - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
for target in ["parley-sqlite", "relay"]:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/sweep-{target}-*.json"))]
    knees = [r["knee_per_sec"] or 0 for r in runs]
    print(f"{target}: knee (median of {len(runs)}) = {statistics.median(knees):.0f}/s  runs: {knees}")
    for i, step in enumerate(runs[0]["steps"]):
        p99 = statistics.median(r["steps"][i]["ack"]["p99_ms"] for r in runs)
        achieved = statistics.median(r["steps"][i]["achieved_per_sec"] for r in runs)
        print(f"  offered {step['offered_per_sec']:>6}/s  achieved {achieved:>8.0f}/s  ack p99 {p99:>8.2f} ms")
PY
python3 bench/chart.py "$out" docs/benchmarks-sweep.svg
