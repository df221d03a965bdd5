#!/usr/bin/env bash
# Reproduces docs/BENCHMARKS.md: builds release binaries, then runs every scenario, the server
# pinned to CPU 0 and the generator to CPU 1, three runs each:
#   sweep against Parley (SQLite, one node), again with chats started and ended beside the
#   messages (churn), against the bare relay, and against ejabberd (XMPP over WebSocket, archive
#   on SQLite; installed from Debian's packages if missing);
#   saturation, fan-out, idle, reconnect storm and crash against Parley.
# Results (JSON) go to bench/results/; a summary with medians is printed at the end and the
# sweep chart is redrawn. Loopback only; 13-17 minutes.
#
#   bench/run-all.sh                       # everything
#   SCENARIOS="sweep idle" bench/run-all.sh # some of it
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin parley --bin parley-load
bin=${CARGO_TARGET_DIR:-target}/release
out=bench/results
mkdir -p "$out"
rates=${RATES:-1000,2000,4000,6000,8000,10000,12000}
pairs=${PAIRS:-800}
step=${STEP_SECS:-4}
runs=${RUNS:-3}
scenarios=${SCENARIOS:-sweep churn relay ejabberd saturation fanout idle storm crash}
want() { [[ " $scenarios " == *" $1 "* ]]; }
pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
load() { pin 1 "$bin/parley-load" "$@"; }
parley=(--parley "$bin/parley" --server-cpu 0)

peer_pid=""
peer_dir=""
cleanup() {
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null
  [ -n "$peer_dir" ] && pkill -f "bench[0-9]*@localhost" 2>/dev/null
  true
}
trap cleanup EXIT

if want ejabberd && ! command -v ejabberdctl >/dev/null; then
  echo "== installing ejabberd (Debian package; its service is not started)"
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    ejabberd erlang-p1-sqlite3 sqlite3 >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

for run in $(seq 1 "$runs"); do
  if want sweep; then
    echo "== run $run: sweep, Parley (SQLite, one node)"
    load sweep "${parley[@]}" --pairs "$pairs" --visitors-per-agent 20 --rates "$rates" \
      --step-secs "$step" --json >"$out/sweep-parley-sqlite-$run.json"
  fi
  if want churn; then
    echo "== run $run: sweep, Parley, with ${CHURN:-20} chats a second started and ended"
    load sweep "${parley[@]}" --pairs "$pairs" --visitors-per-agent 20 \
      --rates "${CHURN_RATES:-1000,2000,4000,6000,8000}" --churn "${CHURN:-20}" --step-secs "$step" \
      --json >"$out/sweep-parley-churn-$run.json"
  fi
  if want relay; then
    echo "== run $run: sweep, relay (no storage, auth or encryption)"
    port=$(free_port)
    # Started directly (not through a shell function) so that $! is the relay itself.
    if command -v taskset >/dev/null; then
      taskset -c 0 "$bin/parley-load" relay --listen "127.0.0.1:$port" 2>/dev/null &
    else
      "$bin/parley-load" relay --listen "127.0.0.1:$port" 2>/dev/null &
    fi
    peer_pid=$!
    sleep 0.3
    load sweep --relay "ws://127.0.0.1:$port/ws" --pairs "$pairs" \
      --rates "${RELAY_RATES:-$rates,15000,20000,25000,30000,40000}" --step-secs "$step" --json >"$out/sweep-relay-$run.json"
    kill "$peer_pid"; peer_pid=""
  fi
  if want ejabberd; then
    echo "== run $run: sweep, ejabberd (XMPP over WebSocket, stream-management acks, MAM on SQLite)"
    port=$(free_port)
    peer_dir=$(mktemp -d)
    pin 0 bench/peers/ejabberd/start.sh "$peer_dir" "$port"
    peer_pid=$(cat "$peer_dir/pid")
    load sweep --xmpp "ws://127.0.0.1:$port/xmpp-websocket" --xmpp-api "http://127.0.0.1:$port/api" \
      --pairs "$pairs" --rates "${EJABBERD_RATES:-300,1000,2000,3000}" --step-secs "$step" \
      --json >"$out/sweep-ejabberd-$run.json"
    kill "$peer_pid"; peer_pid=""
    pkill -f "bench$port@localhost" || true
    rm -rf "$peer_dir"; peer_dir=""
  fi
  if want saturation; then
    echo "== run $run: saturation"
    load saturation "${parley[@]}" --pairs "$pairs" --visitors-per-agent 20 --secs 6 --json \
      >"$out/saturation-$run.json"
  fi
  if want fanout; then
    echo "== run $run: fan-out"
    load fanout "${parley[@]}" --pairs 200 --rate 500 --step-secs "$step" --json >"$out/fanout-$run.json"
  fi
  if want idle; then
    echo "== run $run: idle"
    load idle "${parley[@]}" --connections "${IDLE_CONNECTIONS:-10000}" --hold-secs 5 --json \
      >"$out/idle-$run.json"
  fi
  if want storm; then
    echo "== run $run: reconnect storm"
    load storm "${parley[@]}" --clients "${STORM_CLIENTS:-10000}" --jitter-ms 1000 --json >"$out/storm-$run.json"
  fi
  if want crash; then
    echo "== run $run: crash"
    load crash "${parley[@]}" --clients 200 --rate 1000 --secs 6 --json >"$out/crash-$run.json"
  fi
done
python3 bench/summary.py "$out"
python3 bench/chart.py "$out" docs/benchmarks-sweep.svg
