#!/usr/bin/env bash
# Store-and-forward throughput, end to end: Postfix's smtp-source drives the moat node, which
# queues every message (fsynced before its 250) and relays it to Postfix's smtp-sink; in the
# same run the same load goes through a private Postfix relay (its own fsynced queue) into a
# second smtp-sink. The two targets alternate ROUNDS times.
#
# usage: benches/relay-vs-postfix.sh [MESSAGES=10000] [SESSIONS=20] [SIZE=4096] [ROUNDS=3]
# env:   PEERS_DIR  the peers folder with postfix/start.sh and postfix/stop.sh
#                   (default: ../shared/peers relative to the repository root)
#        MOAT_BIN   use this binary instead of building target/release/moat
#        REUSE=1    send each session's messages over one connection (smtp-source -d)
#        WARMUP=200 messages sent through each relay before the timed rounds (not counted:
#                   Postfix starts its smtpd, cleanup and smtp processes on first use)
#
# End to end = from the first connection until the relay's queue is empty and the sink has
# counted every message (smtp-sink -c). Also printed: the acceptance rate (until smtp-source
# got its last 250). Prints one line per round and a RESULT line with the medians and the
# ratio moat/postfix.
#
# Loopback only. Postfix runs from its own directory under a fresh temporary folder on free
# ports; everything started here is stopped by its pid (Postfix through its master's pid).
# Starting Postfix needs root. Exit status 2: a prerequisite is missing.
set -euo pipefail
N="${1:-10000}"; C="${2:-20}"; SIZE="${3:-4096}"; ROUNDS="${4:-3}"
cd "$(dirname "$0")/.."
PEERS_DIR="${PEERS_DIR:-../shared/peers}"
missing() { echo "relay-vs-postfix: $*" >&2; exit 2; }
[[ -x "$PEERS_DIR/postfix/start.sh" && -x "$PEERS_DIR/postfix/stop.sh" ]] ||
  missing "the Postfix peer scripts are absent: $PEERS_DIR/postfix/{start,stop}.sh (set PEERS_DIR)"
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && command -v postfix >/dev/null ||
  missing "smtp-source, smtp-sink and postfix are needed (Debian package postfix)"
[[ "$(id -u)" == 0 ]] || missing "starting the private Postfix needs root"
command -v python3 >/dev/null || missing "python3 is needed"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"

if [[ -z "${MOAT_BIN:-}" ]]; then
  cargo build --release -p moat >&2
  MOAT_BIN=target/release/moat
fi
WORK="$(mktemp -d /tmp/moat-vs-postfix.XXXXXX)"
chmod 755 "$WORK"   # Postfix's daemons (user postfix) must reach their queue below it
PIDS=()
POSTFIX_STARTED=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOAT_PORT=$(free_port); ADMIN_PORT=$(free_port); MOAT_SINK=$(free_port)
PF_PORT=$(free_port); PF_SINK=$(free_port)
export POSTFIX_RUN="$WORK/postfix" POSTFIX_PORT="$PF_PORT" POSTFIX_NEXTHOP_PORT="$PF_SINK" NO_SINK=1

cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && wait "$p" 2>/dev/null || true; done
  [[ "$POSTFIX_STARTED" == 1 ]] && "$PEERS_DIR/postfix/stop.sh" >&2 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
U=(); [[ "$(id -u)" == 0 ]] && U=(-u nobody)
# Two sinks of the same kind, one per relay; -c prints "sess=.. quit=.. mesg=N" after every message.
for port in "$MOAT_SINK" "$PF_SINK"; do
  smtp-sink "${U[@]}" -c -m 512 "127.0.0.1:$port" 256 >"$WORK/sink-$port.out" 2>&1 &
  PIDS+=($!)
done
sink_count() { # port -> messages that sink received so far
  local n
  n=$(tail -c 200 "$WORK/sink-$1.out" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
  echo "${n:-0}"
}

cat >"$WORK/moat.toml" <<CONF
hostname = "mx.bench.test"
accepted_domains = ["sink.example"]
[queue]
dir = "$WORK/moat-queue"
[relay]
mode = "failover"
maildir = "$WORK/moat-maildir"
[[relay.hop]]
name = "sink"
host = "127.0.0.1"
port = $MOAT_SINK
tls = "off"
max_connections = 20
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$WORK/admin.token"
[log]
level = "warn"
[shutdown]
grace = "1s"
[[connector]]
name = "mx"
listen = "127.0.0.1:$MOAT_PORT"
role = "mx"
max_connections_per_ip = 1000
CONF
"$MOAT_BIN" run --config "$WORK/moat.toml" 2>"$WORK/moat.log" &
PIDS+=($!)
"$PEERS_DIR/postfix/start.sh" >&2
POSTFIX_STARTED=1
for p in "$MOAT_SINK" "$PF_SINK" "$MOAT_PORT" "$ADMIN_PORT" "$PF_PORT"; do
  wait_port "$p" || { echo "nothing listens on 127.0.0.1:$p" >&2; cat "$WORK/moat.log" >&2; exit 1; }
done

moat_queued() { # messages in moat's queue
  "$MOAT_BIN" queue --json --config "$WORK/moat.toml" stats |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])'
}
PFQ="$POSTFIX_RUN/queue"
postfix_queued() { find "$PFQ/maildrop" "$PFQ/incoming" "$PFQ/active" "$PFQ/deferred" -type f 2>/dev/null | wc -l; }

run() { # name smtp-port sink-port [messages] -> "accepted/s end-to-end/s seconds received"
  local name="$1" port="$2" sink="$3" N="${4:-$N}" before t0 t1 t2 q
  local OPTS=(-s "$C" -m "$N" -l "$SIZE" -f "bench@source.example" -t "rcpt@sink.example" -M source.example)
  [[ "${REUSE:-0}" == 1 ]] && OPTS+=(-d)
  before=$(sink_count "$sink")
  t0=$(date +%s.%N)
  smtp-source "${OPTS[@]}" "127.0.0.1:$port" 2>"$WORK/err.log" ||
    { echo "smtp-source failed against $name:" >&2; head -5 "$WORK/err.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  [[ -s "$WORK/err.log" ]] && { echo "smtp-source reported errors against $name:" >&2; head -5 "$WORK/err.log" >&2; exit 1; }
  for _ in $(seq 1 6000); do   # at most 5 minutes
    if [[ $(( $(sink_count "$sink") - before )) -ge "$N" ]]; then
      if [[ "$name" == moat ]]; then q=$(moat_queued); else q=$(postfix_queued); fi
      [[ "$q" == 0 ]] && break
    fi
    sleep 0.05
  done
  t2=$(date +%s.%N)
  local got=$(( $(sink_count "$sink") - before ))
  [[ "$got" -ge "$N" ]] || { echo "$name: the sink received $got of $N messages in 5 minutes" >&2; exit 1; }
  python3 -c "print(f'{$N/($t1-$t0):.0f} {$N/($t2-$t0):.0f} {$t2-$t0:.2f} $got')"
}
WARMUP="${WARMUP:-200}"
if [[ "$WARMUP" -gt 0 ]]; then
  run moat "$MOAT_PORT" "$MOAT_SINK" "$WARMUP" >/dev/null
  run postfix "$PF_PORT" "$PF_SINK" "$WARMUP" >/dev/null
fi
MOAT_E2E=(); PF_E2E=(); MOAT_ACC=(); PF_ACC=()
for r in $(seq 1 "$ROUNDS"); do
  read -r ma me ms mg < <(run moat "$MOAT_PORT" "$MOAT_SINK")
  read -r pa pe ps pg < <(run postfix "$PF_PORT" "$PF_SINK")
  MOAT_ACC+=("$ma"); MOAT_E2E+=("$me"); PF_ACC+=("$pa"); PF_E2E+=("$pe")
  echo "round $r: moat accepted $ma/s, end to end $me/s ($ms s, sink got $mg);" \
    "postfix accepted $pa/s, end to end $pe/s ($ps s, sink got $pg)"
done
# How many group commits (fsyncs of the queue's log, for new messages and delivery results
# alike) moat made: concurrent sessions share them.
echo "sinks received in all: moat's $(sink_count "$MOAT_SINK"), postfix's $(sink_count "$PF_SINK")"
python3 - "$ADMIN_PORT" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
def val(name, label=""):
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith(name) and label in l)
acc = val("moat_smtp_transactions_total", 'result="accepted"')
commits = val("moat_queue_commits_total")
print(f"moat: {acc:.0f} messages accepted (each fsynced before its 250); {commits:.0f} group "
      f"commits of the queue log in all, for messages and delivery results alike "
      f"({acc / commits if commits else float('nan'):.1f} accepted messages per commit); "
      f"retries={val('moat_queue_retries_total'):.0f} bounces={val('moat_queue_bounces_total'):.0f} "
      f"dsns={val('moat_queue_dsn_total'):.0f}")
PY
python3 - "${MOAT_E2E[*]}" "${PF_E2E[*]}" "${MOAT_ACC[*]}" "${PF_ACC[*]}" "$N" "$C" "$SIZE" "${REUSE:-0}" <<'PY'
import statistics, sys
med = lambda s: statistics.median(float(x) for x in s.split())
me, pe, ma, pa = (med(sys.argv[i]) for i in range(1, 5))
print(f"RESULT msgs={sys.argv[5]} sessions={sys.argv[6]} size={sys.argv[7]} reuse={sys.argv[8]} "
      f"end-to-end median: moat={me:.0f} msgs/s postfix={pe:.0f} msgs/s moat/postfix={me/pe:.2f}; "
      f"accepted median: moat={ma:.0f} msgs/s postfix={pa:.0f} msgs/s")
PY
