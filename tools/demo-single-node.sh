#!/usr/bin/env bash
# README's main job for now: start one node on fresh fjall storage, write siblings, reconcile
# them, drive a short closed-loop load, print the per-stage table, stop the node cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release
[ -x "$bin/shoal" ] && [ -x "$bin/shoal-load" ] || cargo build --release
data=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
"$bin/shoal" node --config config/single.toml --listen 127.0.0.1:0 --data "$data/n1" > "$data/out" 2> "$data/log" &
pid=$!
for _ in $(seq 100); do grep -q listening "$data/out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '/listening/ {print $NF}' "$data/out")
[ -n "$addr" ] || { echo "node did not start:"; cat "$data/log"; exit 1; }
echo "== node listening on $addr (data in $data)"
echo "== two blind puts of one key become siblings"
"$bin/shoal" put --node "$addr" cart apple > /dev/null
"$bin/shoal" put --node "$addr" cart pear > /dev/null
"$bin/shoal" get --node "$addr" cart --json
context=$("$bin/shoal" get --node "$addr" cart --json | sed 's/.*"context":"\([^"]*\)".*/\1/')
echo "== a put with the get's context reconciles them"
"$bin/shoal" put --node "$addr" cart "apple,pear" --context "$context" > /dev/null
"$bin/shoal" get --node "$addr" cart --json
echo "== 5 s of closed-loop load, 4 threads, 50% reads"
"$bin/shoal-load" --node "$addr" --threads 4 --duration-secs 5 --read-fraction 0.5 --keys 2000
echo "== per-stage statistics"
"$bin/shoal" admin stats --node "$addr"
kill -INT "$pid"; wait "$pid" || true
echo "== node stopped cleanly"
