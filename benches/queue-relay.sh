#!/bin/sh
# Queue + relay throughput: concurrent writers store messages in the moat-queue spool (each
# fsynced before it counts) while moat-relay delivers them to Postfix's smtp-sink on loopback.
#
#   benches/queue-relay.sh [MESSAGES=10000] [SESSIONS=20] [SIZE=4096]
#
# Prints one RESULT line with accepted/s and end-to-end (delivered) messages/s. Starts and
# stops only its own smtp-sink, by pid.
set -eu
N=${1:-10000}
C=${2:-20}
SIZE=${3:-4096}
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$SINK" ] || { echo "smtp-sink (Postfix) is not installed" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
USER_OPT=""
[ "$(id -u)" = 0 ] && USER_OPT="-u nobody"
cd "$(dirname "$0")/.."
cargo build --release -q -p moat-relay --example relay_throughput
# shellcheck disable=SC2086
"$SINK" $USER_OPT 127.0.0.1:"$PORT" 256 &
SINK_PID=$!
trap 'kill "$SINK_PID" 2>/dev/null || true' EXIT INT TERM
sleep 0.3
./target/release/examples/relay_throughput 127.0.0.1 "$PORT" "$N" "$C" "$SIZE"
