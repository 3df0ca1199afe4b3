#!/usr/bin/env bash
# Messages per second through the node with clamd on (cache on and off) beside the node
# without antivirus, in the same run: N messages that share one attachment, C sessions.
#
# usage: benches/av-load.sh [MESSAGES=1000] [SESSIONS=8] [ATTACHMENT_KB=100]
#        WHOLE=false scans parts only (the cached path); default true scans the raw message too.
# env:   PEERS_DIR (default ../shared/peers from the repo root): its clamd/start.sh runs clamd
#        on 127.0.0.1:3310 with the EICAR test signatures; MOAT_BIN as in smtp-load.sh.
# Loopback only; everything this script starts is stopped by its pid.
set -euo pipefail
N="${1:-1000}"; C="${2:-8}"; KB="${3:-100}"
cd "$(dirname "$0")/.."
PEERS_DIR="${PEERS_DIR:-../shared/peers}"
[[ -x "$PEERS_DIR/clamd/start.sh" ]] || { echo "no $PEERS_DIR/clamd/start.sh (set PEERS_DIR)" >&2; exit 2; }
command -v smtp-sink >/dev/null || { echo "smtp-sink is needed (Debian package postfix)" >&2; exit 2; }
if [[ -z "${MOAT_BIN:-}" ]]; then cargo build --release -p moat >&2; MOAT_BIN=target/release/moat; fi
WORK="$(mktemp -d /tmp/moat-av-load.XXXXXX)"; PIDS=()
started_clamd=0
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  [[ "$started_clamd" == 1 ]] && "$PEERS_DIR/clamd/stop.sh" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

if ! (exec 3<>/dev/tcp/127.0.0.1/3310) 2>/dev/null; then
  "$PEERS_DIR/clamd/start.sh" >&2; started_clamd=1
fi
wait_port 3310 || { echo "clamd did not start" >&2; exit 1; }
SINK=$(free_port)
U=(); [[ "$(id -u)" == 0 ]] && U=(-u nobody)
smtp-sink "${U[@]}" -m 512 "127.0.0.1:$SINK" 256 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
wait_port "$SINK"

run() { # name antivirus-section -> msgs/s
  local name="$1" av="$2" port admin sub pid
  port=$(free_port); admin=$(free_port); sub=$(free_port)
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/moat.toml" <<CONF
hostname = "mx.bench.test"
accepted_domains = ["sink.example"]
[queue]
dir = "$WORK/$name/queue"
[relay]
[[relay.hop]]
name = "sink"
host = "127.0.0.1"
port = $SINK
tls = "off"
[admin]
listen = "127.0.0.1:$admin"
token_file = "$WORK/$name/admin.token"
[filter]
enabled = false
[log]
level = "warn"
$av
[[connector]]
name = "mx"
listen = "127.0.0.1:$port"
role = "mx"
max_connections_per_ip = 1000
[[connector]]
name = "submission"
listen = "127.0.0.1:$sub"
role = "submission"
CONF
  "$MOAT_BIN" run --config "$WORK/$name/moat.toml" 2>"$WORK/$name/moat.log" &
  pid=$!; PIDS+=($pid)
  wait_port "$port"
  read -r rate failed < <(python3 benches/av-send.py "$port" "$N" "$C" "$KB")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [[ "$failed" == 0 ]] || { echo "$name: $failed failed transactions" >&2; exit 1; }
  echo "$rate"
}
SCAN="scan_whole_message = ${WHOLE:-true}"
ENGINE="$SCAN"$'\n'$'[[antivirus.engine]]\nname = "clamd"\ntype = "clamd"\naddress = "127.0.0.1:3310"'
off=$(run off "")
# Warm clamd up first (its own caches), so neither timed run pays for a cold start.
run warmup "[antivirus]"$'\n'"enabled = true"$'\n'"cache_entries = 0"$'\n'"$ENGINE" >/dev/null
uncached=$(run uncached "[antivirus]"$'\n'"enabled = true"$'\n'"cache_entries = 0"$'\n'"$ENGINE")
cached=$(run cached "[antivirus]"$'\n'"enabled = true"$'\n'"cache_entries = 10000"$'\n'"$ENGINE")
echo "RESULT whole_message=${WHOLE:-true} msgs=$N sessions=$C attachment_kb=$KB no-antivirus=$off msgs/s clamd+cache=$cached msgs/s clamd-no-cache=$uncached msgs/s cache-gain=$(python3 -c "print(f'{$cached/$uncached:.2f}')")x"
