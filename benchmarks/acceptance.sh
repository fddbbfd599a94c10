#!/bin/sh
# The benchmark runs that BENCHMARKS.rst reports, then BENCHMARKS.rst itself.
#
# Run from the repository's root, with the bench extra installed
# (pip install -e '.[bench]'), on an otherwise idle Linux machine whose
# open-file hard limit (ulimit -Hn) is at least 20000. It takes over an hour.
# A run that fails (exit code 2) or finds the chat server losing messages
# (exit code 1) is reported and the next one runs anyway.
#
# Usage: benchmarks/acceptance.sh [extra loadgen options, e.g. --no-progress]

set -u
cd "$(dirname "$0")/.." || exit 2
out=benchmarks/results
mkdir -p "$out"
failed=0

run() {
    name=$1
    shift
    echo "== $name: python -m benchmarks.loadgen $*" >&2
    python -m benchmarks.loadgen "$@" --json "$out/$name.json" || {
        echo "== $name exited with $?" >&2
        failed=1
    }
}

# (a) cost per message: 10 rooms against 1000, 1000 SSE streams, 100 msg/s
run rooms --scenario rooms --subscribers 1000 --rooms 10,1000 --rate 100 --duration 20 "$@"
# (b) fan-out: 1000 WebSocket streams in one room, 10 msg/s; the chat server
# anonymous and with every client signed in, side by side
run fanout --scenario fanout --subscribers 1000 --transport ws --rate 10 --duration 20 \
    --targets chat,chat-signed,bare,socketio "$@"
# (c) capacity at 1000 streams, WebSocket and SSE
run capacity-ws --scenario capacity --subscribers 1000 --transport ws "$@"
run capacity-sse --scenario capacity --subscribers 1000 --transport sse "$@"
# (d) memory per idle connection: 2000 WebSocket (deflate offered), 2000 SSE, 20000 mixed
run idle-ws --scenario idle --subscribers 2000 --transport ws "$@"
run idle-sse --scenario idle --subscribers 2000 --transport sse "$@"
run idle-mixed --scenario idle --subscribers 20000 --transport mixed "$@"
# (e) 2000 clients connecting at once, half SSE, half WebSocket, anonymous and signed in
run storm --scenario storm --subscribers 2000 --transport mixed \
    --targets chat,chat-signed,bare,socketio "$@"
# (f) publishing as fast as 50 and 400 connections can: browser POST and server API
run publish --scenario publish --connections 50,400 --duration 10 --rounds 3 \
    --targets chat,chat-api,bare,socketio "$@"
# (g) 100 msg/s to 100 WebSocket streams: webhooks on, and the server API
run fanout-variants --scenario fanout --subscribers 100 --transport ws --rate 100 \
    --duration 60 --rounds 4 --targets chat,chat-webhooks,chat-api "$@"
# (h) 1000 streams (half SSE, half WebSocket) in one room at 10 requests/s: a tenth
# of them edits and every stream typing once every 10 s, beside the plain fan-out
run fanout-features --scenario fanout --subscribers 1000 --transport mixed --rate 10 \
    --duration 30 --rounds 3 --targets chat,chat-features,bare,bare-typing "$@"
# (i) 100,000 streams (half SSE, half WebSocket) on 6 processes held for 2 minutes,
# then one message to all of them
run many --scenario many --targets chat,bare "$@"

# (j) a reload with 20,000 connected clients (bare: opening them from scratch)
run reload --scenario reload --clients 20000 --transport mixed --targets chat,bare "$@"

python -m benchmarks.report "$out" > BENCHMARKS.rst
exit $failed
