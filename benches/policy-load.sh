#!/usr/bin/env bash
# Connections per second refused at connect by the IP block list and by the DNS block list
# (answered from the resolver's TTL cache), beside the same node with no policy, in one run.
#
# usage: benches/policy-load.sh [CONNECTIONS=50000] [CONCURRENCY=50] [ROUNDS=3]
# env:   MOAT_BIN=path uses that binary instead of building target/release/moat.
#
# One client (benches/conn-flood.py: connect from 127.0.0.3, read the first reply, QUIT, read
# until the node closes) drives three nodes, each on its own port:
#   baseline  no lists: 220, then 221 to the QUIT;
#   iplist    [policy.ip_lists.block] names 127.0.0.3: 554 at connect, then the node closes;
#   dnsbl     [policy.dnsbl] at connect, zone bl.test (a private dnsmasq) lists 127.0.0.3 with
#             the threshold's weight: 554 at connect. The answer's TTL is 300 s; the warm-up
#             fills the node's resolver cache and dnsmasq's query log must show no query
#             during the timed rounds, else the run fails.
# Each node gets an untimed warm-up of min(CONNECTIONS, 500) connections; then each round
# measures the three in turn (CONNECTIONS each), ROUNDS times. A RESULT line gives each
# median and its ratio to the baseline. Any first reply other than the expected code fails
# the run. Loopback only; everything started is stopped by its pid.
set -euo pipefail
shopt -s inherit_errexit
N="${1:-50000}"; C="${2:-50}"; ROUNDS="${3:-3}"
cd "$(dirname "$0")/.."
DNSMASQ="$(command -v dnsmasq || true)"
[[ -z "$DNSMASQ" && -x /usr/sbin/dnsmasq ]] && DNSMASQ=/usr/sbin/dnsmasq
[[ -n "$DNSMASQ" ]] || { echo "dnsmasq is needed (Debian package dnsmasq-base)" >&2; exit 2; }
if [[ -z "${MOAT_BIN:-}" ]]; then cargo build --release -p moat >&2; MOAT_BIN=target/release/moat; fi
WORK="$(mktemp -d /tmp/moat-policy-load.XXXXXX)"; PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
CLIENT=127.0.0.3
LISTED=3.0.0.127.bl.test

# The DNS list on 127.0.0.1 only: 127.0.0.2 for the client's name with a 300 s TTL, so the
# node's resolver caches it; NXDOMAIN for the rest of bl.test; no upstream, no hosts file.
DNS_PORT=$(free_port)
cat >"$WORK/dnsmasq.conf" <<CONF
port=$DNS_PORT
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
no-poll
local-ttl=300
neg-ttl=60
cache-size=0
log-queries
pid-file=$WORK/dnsmasq.pid
local=/bl.test/
host-record=$LISTED,127.0.0.2
CONF
# Started as root, dnsmasq would drop to nobody, who may not read $WORK.
"$DNSMASQ" --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" --log-facility="$WORK/dnsmasq.log" \
  --user="$(id -un)" </dev/null >/dev/null 2>"$WORK/dnsmasq.err" &
PIDS+=($!)
wait_port "$DNS_PORT" || { echo "dnsmasq did not start" >&2; cat "$WORK/dnsmasq.err" >&2; exit 1; }
dns_queries() { grep -ciF "] $LISTED from" "$WORK/dnsmasq.log" || true; }

POLICY_IPLIST="[policy.ip_lists.block]
inline = [\"$CLIENT\"]"
POLICY_DNSBL="[policy.dns]
servers = [\"127.0.0.1:$DNS_PORT\"]
[policy.dnsbl]
threshold = 2
action = \"connect\"
[[policy.dnsbl.zones]]
zone = \"bl.test\"
weight = 2"

flood() { # port expected-code count -> conn/s
  local out rate ok bad
  out=$(python3 benches/conn-flood.py "$1" "$3" "$C" "$2" "$CLIENT" 2>"$WORK/flood.err") ||
    { echo "client failed:" >&2; cat "$WORK/flood.err" >&2; exit 1; }
  read -r rate ok bad <<<"$out"
  if [[ "$bad" != 0 || "$ok" != "$3" ]]; then
    echo "FAIL: $ok of $3 connections got $2, $bad did not" >&2; cat "$WORK/flood.err" >&2; exit 1
  fi
  echo "$rate"
}

declare -A PORT CODE RATES
start() { # name expected-code policy-section; runs in this shell so PIDS stays whole
  local name="$1" port admin sub
  port=$(free_port); admin=$(free_port); sub=$(free_port)
  PORT[$name]=$port; CODE[$name]=$2
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/moat.toml" <<CONF
hostname = "mx.bench.test"
accepted_domains = ["bench.test"]
[queue]
dir = "$WORK/$name/queue"
[relay]
maildir = "$WORK/$name/maildir"
[admin]
listen = "127.0.0.1:$admin"
token_file = "$WORK/$name/admin.token"
[filter]
enabled = false
[log]
level = "warn"
$3
[[connector]]
name = "mx"
listen = "127.0.0.1:$port"
role = "mx"
max_connections_per_ip = 10000
max_connections_per_net = 10000
[[connector]]
name = "submission"
listen = "127.0.0.1:$sub"
role = "submission"
CONF
  "$MOAT_BIN" run --config "$WORK/$name/moat.toml" 2>"$WORK/$name/moat.log" &
  PIDS+=($!)
  wait_port "$port" || { echo "$name: moat did not start" >&2; cat "$WORK/$name/moat.log" >&2; exit 1; }
  # Untimed warm-up; for dnsbl it fills the resolver's cache.
  flood "$port" "$2" $(( N < 500 ? N : 500 )) >/dev/null
  echo "$name first reply: $(python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[2],0)); s.connect(("127.0.0.1",int(sys.argv[1]))); print(s.makefile("rb").readline().decode().strip())' "$port" "$CLIENT")"
}

MODES=(baseline iplist dnsbl)
start baseline 220 ""
start iplist 554 "$POLICY_IPLIST"
start dnsbl 554 "$POLICY_DNSBL"
before=$(dns_queries)
(( before > 0 )) || { echo "FAIL: the warm-up never asked dnsmasq for $LISTED" >&2; exit 1; }
# The nodes take turns within each round, so a burst of outside load hits all three alike.
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for m in "${MODES[@]}"; do
    rate=$(flood "${PORT[$m]}" "${CODE[$m]}" "$N")
    RATES[$m]+=" $rate"; line+=" $m $rate"
  done
  echo "$line conn/s"
done
after=$(dns_queries)
(( after == before )) || { echo "FAIL: $((after - before)) DNS queries in the timed rounds: not all cached" >&2; exit 1; }
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.0f}")' $1; }
base=$(median "${RATES[baseline]}"); ipl=$(median "${RATES[iplist]}"); bl=$(median "${RATES[dnsbl]}")
python3 - "$N" "$C" "$ROUNDS" "$base" "$ipl" "$bl" <<'PY2'
import sys
n, c, rounds, base, ipl, bl = sys.argv[1:]
b, i, d = float(base), float(ipl), float(bl)
print(f"RESULT connections={n} concurrency={c} rounds={rounds} median conn/s: "
      f"baseline(220+QUIT)={b:.0f} iplist(554)={i:.0f} dnsbl-cached(554)={d:.0f}  "
      f"iplist/baseline={i/b:.2f} dnsbl/baseline={d/b:.2f}")
PY2
