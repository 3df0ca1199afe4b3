#!/usr/bin/env bash
# End-to-end SMTP load harness: Postfix's smtp-source drives the moat node and, in the same
# run, Postfix's smtp-sink (the "accept and discard" ceiling), alternating ROUNDS times.
# Prints msgs/s per round and the medians, and moat's rate as a share of smtp-sink's.
#
# usage: benches/smtp-load.sh [MESSAGES=10000] [SESSIONS=20] [SIZE=4096] [ROUNDS=3]
# env:   REUSE=1 sends each session's messages over one connection (smtp-source -d).
#        MOAT_BIN=path uses that binary instead of building target/release/moat.
#
# Every message moat accepts is in its queue, fsynced, before its 250 reply; moat relays it
# on to the same smtp-sink (its hub) while the load runs.
# Loopback only; both servers are stopped by their pid.
set -euo pipefail
N="${1:-10000}"; C="${2:-20}"; SIZE="${3:-4096}"; ROUNDS="${4:-3}"
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null || {
  echo "smtp-source and smtp-sink are needed (Debian package postfix)" >&2; exit 2; }
if [[ -z "${MOAT_BIN:-}" ]]; then
  cargo build --release -p moat >&2
  MOAT_BIN=target/release/moat
fi
WORK="$(mktemp -d /tmp/moat-load.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

SINK_PORT=$(free_port); MOAT_PORT=$(free_port); ADMIN_PORT=$(free_port); SUB_PORT=$(free_port)
U=(); [[ "$(id -u)" == 0 ]] && U=(-u nobody)
smtp-sink "${U[@]}" -m 512 "127.0.0.1:$SINK_PORT" 256 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/moat.toml" <<CONF
hostname = "mx.bench.test"
accepted_domains = ["sink.example"]
[queue]
dir = "$WORK/queue"
[relay]
[[relay.hop]]
name = "sink"
host = "127.0.0.1"
port = $SINK_PORT
tls = "off"
max_connections = 20
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$WORK/admin.token"
[log]
level = "warn"
[[connector]]
name = "mx"
listen = "127.0.0.1:$MOAT_PORT"
role = "mx"
max_connections_per_ip = 1000
[[connector]]
name = "submission"
listen = "127.0.0.1:$SUB_PORT"
role = "submission"
CONF
"$MOAT_BIN" run --config "$WORK/moat.toml" 2>"$WORK/moat.log" &
PIDS+=($!)
wait_port "$SINK_PORT" && wait_port "$MOAT_PORT" || { echo "servers did not start" >&2; cat "$WORK"/*.log >&2; exit 1; }

OPTS=(-s "$C" -m "$N" -l "$SIZE" -f "bench@source.example" -t "rcpt@sink.example" -M source.example)
[[ "${REUSE:-0}" == 1 ]] && OPTS+=(-d)
run() { # port -> msgs/s
  local t0 t1
  t0=$(date +%s.%N)
  smtp-source "${OPTS[@]}" "127.0.0.1:$1" 2>"$WORK/err.log" || { echo "smtp-source failed:" >&2; head -5 "$WORK/err.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  [[ -s "$WORK/err.log" ]] && { echo "smtp-source reported errors:" >&2; head -5 "$WORK/err.log" >&2; exit 1; }
  python3 -c "print(f'{$N/($t1-$t0):.0f}')"
}
SINK=(); MOAT=()
for r in $(seq 1 "$ROUNDS"); do
  s=$(run "$SINK_PORT"); m=$(run "$MOAT_PORT")
  SINK+=("$s"); MOAT+=("$m")
  echo "round $r: smtp-sink $s msgs/s, moat $m msgs/s"
  # Let moat's relay drain its queue into the sink before the next round.
  for _ in $(seq 1 600); do
    left=$("$MOAT_BIN" queue --config "$WORK/moat.toml" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
    [[ "$left" == 0 ]] && break
    sleep 0.1
  done
done
python3 - "${SINK[*]}" "${MOAT[*]}" "$N" "$C" "$SIZE" "${REUSE:-0}" <<'PY'
import statistics, sys
sink = [float(x) for x in sys.argv[1].split()]
moat = [float(x) for x in sys.argv[2].split()]
s, m = statistics.median(sink), statistics.median(moat)
print(f"RESULT msgs={sys.argv[3]} sessions={sys.argv[4]} size={sys.argv[5]} reuse={sys.argv[6]} "
      f"smtp-sink median={s:.0f} msgs/s  moat median={m:.0f} msgs/s  moat/sink={m/s:.2f}")
PY
