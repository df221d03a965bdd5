#!/usr/bin/env bash
# Start a private ejabberd for the benchmark: XMPP over WebSocket and its HTTP API on
# 127.0.0.1:PORT only, users and the message archive (MAM, every message) in SQLite (WAL) under
# DIR, stream management on, no traffic shaping. Prints nothing; ejabberd runs in the
# foreground of this script's child, so `kill` of the PID written to DIR/pid stops it.
#
#   bench/peers/ejabberd/start.sh DIR PORT      (run as root; needs Debian's ejabberd,
#                                                 erlang-p1-sqlite3 and sqlite3)
#
# It is started through setpriv as the ejabberd user, not su: su would drop the open-files
# limit to 1024.
set -euo pipefail
dir=${1:?usage: start.sh DIR PORT}
port=${2:?usage: start.sh DIR PORT}
mkdir -p "$dir/etc" "$dir/spool" "$dir/log"
cp /etc/ejabberd/inetrc "$dir/etc/inetrc"
: >"$dir/etc/ejabberdctl.cfg"
rm -f "$dir/spool/ejabberd.db"
sqlite3 "$dir/spool/ejabberd.db" </usr/share/ejabberd/sql/lite.sql
sqlite3 "$dir/spool/ejabberd.db" 'PRAGMA journal_mode = WAL;' >/dev/null
cat >"$dir/etc/ejabberd.yml" <<YML
hosts: ["localhost"]
loglevel: warning
listen:
  - port: $port
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /xmpp-websocket: ejabberd_http_ws
      /api: mod_http_api
acl:
  loopback:
    ip: ["127.0.0.0/8"]
access_rules:
  c2s:
    allow: all
shaper_rules:
  c2s_shaper: none
  max_user_sessions: 10
api_permissions:
  "register from loopback":
    from: [mod_http_api]
    who:
      ip: ["127.0.0.0/8"]
    what: ["register"]
auth_method: sql
default_db: sql
sql_type: sqlite
sql_database: "$dir/spool/ejabberd.db"
modules:
  mod_http_api: {}
  mod_stream_mgmt:
    ack_timeout: 600
  mod_mam:
    db_type: sql
    default: always
YML
chown -R ejabberd:ejabberd "$dir"
cd "$dir"
HOME="$dir" setpriv --reuid ejabberd --regid ejabberd --init-groups -- \
  /usr/sbin/ejabberdctl --config-dir "$dir/etc" --spool "$dir/spool" --logs "$dir/log" \
  --node "bench$port@localhost" foreground >"$dir/log/stdout.log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/api/status" -X POST -d '{}'; then exit 0; fi
  sleep 0.3
done
echo "ejabberd did not start; see $dir/log" >&2
exit 1
