#!/usr/bin/env bash
# Content filtering, same run, one core each: `moat scan` beside spamc -> spamd (SpamAssassin)
# and rspamc -> rspamd, over the same sample of the public SpamAssassin corpus.
#
# usage: benches/scan-vs-peers.sh [MESSAGES=300] [SA_MESSAGES=40]
# env:   PEERS_DIR    the peers folder (spamassassin/ and rspamd/ start.sh, stop.sh)
#                     (default: ../shared/peers relative to the repository root)
#        CORPORA_DIR  the corpora folder (default: ../shared/corpora)
#        MOAT_BIN     use this binary instead of building target/release/moat
#        SERVER_CORE  the core moat, spamd and rspamd are pinned to (default 0)
#        CLIENT_CORE  the core spamc and rspamc run on (default 1)
#        SPAMC_CONC=2 SPAMD_CHILDREN=2 RSPAMC_CONC=8
#
# Sample: MESSAGES files spread evenly over spam and ham of
# spamassassin-public-corpus/public; spamd, at a few messages per second, gets an evenly
# spread subset of SA_MESSAGES of them. Moat scans the sample twice, once with the
# repository's rules/ and once with SpamAssassin's rules imported by
# `moat rules import-spamassassin` (into the temporary folder; never committed).
# `moat scan` compiles its rules before scanning, so its time over one message is measured
# too and subtracted: "scan" rates exclude start-up and compiling, "total" rates do not.
# The peers get two untimed warm-up messages each; their rates are client wall time.
#
# Loopback only: spamd and rspamd listen on free 127.0.0.1 ports with run folders under a
# fresh temporary folder; the peer scripts run them without network tests (see
# PEERS_DIR/README.md) and everything started here is stopped through its pidfile.
# Exit status 2: a prerequisite is missing.
set -euo pipefail
N="${1:-300}"; SA_N="${2:-40}"
cd "$(dirname "$0")/.."
PEERS_DIR="${PEERS_DIR:-../shared/peers}"
CORPORA_DIR="${CORPORA_DIR:-../shared/corpora}"
SERVER_CORE="${SERVER_CORE:-0}"; CLIENT_CORE="${CLIENT_CORE:-1}"
SPAMC_CONC="${SPAMC_CONC:-2}"; SPAMD_CHILDREN="${SPAMD_CHILDREN:-2}"; RSPAMC_CONC="${RSPAMC_CONC:-8}"
missing() { echo "scan-vs-peers: $*" >&2; exit 2; }
for s in spamassassin/start.sh spamassassin/stop.sh rspamd/start.sh rspamd/stop.sh; do
  [[ -x "$PEERS_DIR/$s" ]] || missing "the peer script $PEERS_DIR/$s is absent (set PEERS_DIR)"
done
[[ -d "$CORPORA_DIR/spamassassin-public-corpus/public" && -d "$CORPORA_DIR/spamassassin-rules" ]] ||
  missing "the corpora are absent: $CORPORA_DIR/spamassassin-public-corpus and spamassassin-rules (set CORPORA_DIR)"
for c in spamd spamc rspamd rspamc taskset curl python3; do
  command -v "$c" >/dev/null || missing "$c is needed (Debian packages spamd spamc spamassassin rspamd util-linux curl python3)"
done
[[ "$(id -u)" == 0 ]] || missing "the peer scripts start spamd as root (it drops to debian-spamd)"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"; CORPORA_DIR="$(cd "$CORPORA_DIR" && pwd)"

if [[ -z "${MOAT_BIN:-}" ]]; then
  cargo build --release -p moat >&2
  MOAT_BIN=target/release/moat
fi
WORK="$(mktemp -d /tmp/moat-scan-vs-peers.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export SPAMD_RUN="$WORK/spamd" SPAMD_PORT="$(free_port)" SPAMD_CHILDREN
export RSPAMD_RUN="$WORK/rspamd" RSPAMD_PORT="$(free_port)" RSPAMD_CTRL_PORT="$(free_port)" RSPAMD_WORKERS=1
cleanup() {
  "$PEERS_DIR/spamassassin/stop.sh" >&2 || true
  "$PEERS_DIR/rspamd/stop.sh" >&2 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The sample: N files spread evenly over spam and ham, copied as NNNN.eml; the spamd subset.
python3 - "$CORPORA_DIR/spamassassin-public-corpus/public" "$WORK" "$N" "$SA_N" <<'PY'
import os, shutil, sys
root, work, n, sa_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = []
for sub in ("spam", "ham"):
    files += sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, sub)) for f in fs)
n = min(n, len(files)); sa_n = min(sa_n, n)
pick = [files[i * len(files) // n] for i in range(n)]
for d in ("corpus", "sa-corpus", "one"):
    os.makedirs(os.path.join(work, d))
for i, f in enumerate(pick):
    shutil.copy(f, os.path.join(work, "corpus", "%04d.eml" % i))
for j in range(sa_n):
    i = j * n // sa_n
    shutil.copy(pick[i], os.path.join(work, "sa-corpus", "%04d.eml" % i))
shutil.copy(pick[0], os.path.join(work, "one", "0000.eml"))
PY
# The corpus may hold fewer messages than asked for: rates count the files copied.
N=$(find "$WORK/corpus" -name '*.eml' | wc -l); SA_N=$(find "$WORK/sa-corpus" -name '*.eml' | wc -l)
BYTES=$(cat "$WORK"/corpus/*.eml | wc -c)
echo "sample: $N messages ($BYTES bytes); spamd subset: $SA_N" >&2

mkdir -p "$WORK/sa-rules"
find "$CORPORA_DIR/spamassassin-rules" -name '*.cf' -print0 | sort -z |
  xargs -0 "$MOAT_BIN" rules import-spamassassin -o "$WORK/sa-rules/spamassassin.toml" 2> "$WORK/import.log"
tail -n 1 "$WORK/import.log" >&2

now() { date +%s.%N; }
rate() { python3 -c "import sys; n, s = float(sys.argv[1]), float(sys.argv[2]); print(f'{n / s:.1f}' if s > 0 else 'inf')" "$@"; }
sub() { python3 -c "import sys; print(max(float(sys.argv[1]) - float(sys.argv[2]), 1e-9))" "$@"; }

# moat: best of three for the sample and for one message, per rules folder.
moat_time() { # RULES DIR -> seconds (best of 3)
  local best=""
  for _ in 1 2 3; do
    local t0 t1; t0=$(now)
    taskset -c "$SERVER_CORE" "$MOAT_BIN" scan --rules "$1" "$2" > "$WORK/moat.out"
    t1=$(now)
    best=$(python3 -c "import sys; a=float(sys.argv[1]); b=sys.argv[2]; print(min(a, float(b)) if b else a)" "$(sub "$t1" "$t0")" "$best")
  done
  echo "$best"
}
declare -A MOAT_SCAN MOAT_TOTAL
for name in default spamassassin; do
  rules=rules; [[ $name == spamassassin ]] && rules="$WORK/sa-rules"
  all=$(moat_time "$rules" "$WORK/corpus"); one=$(moat_time "$rules" "$WORK/one")
  MOAT_TOTAL[$name]=$(rate "$N" "$all")
  MOAT_SCAN[$name]=$(rate "$((N - 1))" "$(sub "$all" "$one")")
  echo "moat scan --rules $name: ${N} msgs in ${all}s (one message: ${one}s): scan ${MOAT_SCAN[$name]} msgs/s, total ${MOAT_TOTAL[$name]} msgs/s" >&2
done

# spamd, pinned; spamc from the other core.
taskset -c "$SERVER_CORE" "$PEERS_DIR/spamassassin/start.sh" >&2
spamc_run() { # DIR -> seconds
  local t0 t1; t0=$(now)
  find "$1" -name '*.eml' -print0 | sort -z |
    taskset -c "$CLIENT_CORE" xargs -0 -P "$SPAMC_CONC" -I{} sh -c \
      'spamc -d 127.0.0.1 -p "$0" -s 2000000 -c < "$1" > /dev/null; [ $? -le 1 ]' "$SPAMD_PORT" {}
  t1=$(now); sub "$t1" "$t0"
}
for _ in 1 2; do spamc -d 127.0.0.1 -p "$SPAMD_PORT" -c < "$WORK/one/0000.eml" > /dev/null || true; done
SA_SECS=$(spamc_run "$WORK/sa-corpus")
SA_RATE=$(rate "$SA_N" "$SA_SECS")
echo "spamc -> spamd: $SA_N msgs in ${SA_SECS}s: $SA_RATE msgs/s" >&2
"$PEERS_DIR/spamassassin/stop.sh" >&2

# rspamd, pinned (one normal worker); rspamc from the other core.
taskset -c "$SERVER_CORE" "$PEERS_DIR/rspamd/start.sh" >&2
rspamc -h "127.0.0.1:$RSPAMD_PORT" -t 60 "$WORK/one/0000.eml" "$WORK/one/0000.eml" > /dev/null
mapfile -t FILES < <(find "$WORK/corpus" -name '*.eml' | sort)
t0=$(now)
taskset -c "$CLIENT_CORE" rspamc -h "127.0.0.1:$RSPAMD_PORT" -n "$RSPAMC_CONC" -t 60 "${FILES[@]}" > "$WORK/rspamc.out"
t1=$(now)
RS_SECS=$(sub "$t1" "$t0"); RS_RATE=$(rate "$N" "$RS_SECS")
RS_DONE=$(grep -c '^Action:' "$WORK/rspamc.out" || true)
echo "rspamc -> rspamd: $N msgs in ${RS_SECS}s ($RS_DONE answered): $RS_RATE msgs/s" >&2
"$PEERS_DIR/rspamd/stop.sh" >&2

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.0f}')" "$@"; }
for name in default spamassassin; do
  echo "RESULT rules=$name msgs=$N moat_scan_msgs_per_s=${MOAT_SCAN[$name]} moat_total_msgs_per_s=${MOAT_TOTAL[$name]}" \
    "rspamd_msgs_per_s=$RS_RATE spamd_msgs_per_s=$SA_RATE" \
    "moat/rspamd=$(ratio "${MOAT_SCAN[$name]}" "$RS_RATE")x moat/spamd=$(ratio "${MOAT_SCAN[$name]}" "$SA_RATE")x"
done
