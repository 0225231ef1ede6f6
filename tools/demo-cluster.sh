#!/usr/bin/env bash
# README's main job: a local 5-node cluster (N=3, R=2, W=2) on fresh fjall data directories,
# under load from the bundled load tool; one node is stopped midway (sloppy quorum keeps
# writes flowing, its replicas kept as hints by fallback nodes) and brought back (the hints
# drain to it); then every node's per-stage table, and an orderly shutdown. About 40 s.
# (With N=3 on only 3 nodes there is no fallback: a stopped node just misses writes until
# read repair catches it up. Five nodes show the whole of Dynamo §4.6.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release
[ -x "$bin/shoal" ] && [ -x "$bin/shoal-load" ] || cargo build --release
data=$(mktemp -d)
declare -A pid
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
start() { # i
  "$bin/shoal" node --config "config/cluster5-n$1.toml" --data "$data/n$1" > "$data/n$1.out" 2>> "$data/n$1.log" &
  pid[$1]=$!
  for _ in $(seq 100); do grep -q listening "$data/n$1.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$data/n$1.out" || { echo "n$1 did not start:"; cat "$data/n$1.log"; exit 1; }
}
hints() { "$bin/shoal" admin members --node "127.0.0.1:750$1" --json | grep -o '"hints_pending":[0-9]*' | awk -F: '{s+=$2} END {print s+0}'; }
seeds=127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7504

for i in 1 2 3 4 5; do start "$i"; done
echo "== 5 nodes up (data in $data)"
"$bin/shoal" admin ring --node 127.0.0.1:7501
echo "== blind puts through two coordinators become siblings; a put with the get's context reconciles"
"$bin/shoal" put --node 127.0.0.1:7501 cart apple > /dev/null
"$bin/shoal" put --node 127.0.0.1:7502 cart pear > /dev/null
"$bin/shoal" get --node 127.0.0.1:7503 cart --json
context=$("$bin/shoal" get --node 127.0.0.1:7503 cart --json | sed 's/.*"context":"\([^"]*\)".*/\1/')
"$bin/shoal" put --node 127.0.0.1:7503 cart "apple,pear" --context "$context" > /dev/null
"$bin/shoal" get --node 127.0.0.1:7501 cart --json
echo "== 8 s of load (4 threads, 50% reads, partition-aware); n3 is stopped after 3 s"
"$bin/shoal-load" --node "$seeds" --replicas 3 --threads 4 --duration-secs 8 --keys 5000 &
load=$!
sleep 3
kill -INT "${pid[3]}"; wait "${pid[3]}" 2>/dev/null || true; unset 'pid[3]'
echo "   n3 stopped"
wait "$load"
"$bin/shoal" admin members --node 127.0.0.1:7501
held() { echo $(( $(hints 1) + $(hints 2) + $(hints 4) + $(hints 5) )); }
echo "   hints kept for n3 by the other nodes: $(held)"
echo "== n3 returns; its hints drain"
start 3
for _ in $(seq 200); do [ "$(held)" -eq 0 ] && break; sleep 0.1; done
echo "   hints left: $(held)"
"$bin/shoal" admin members --node 127.0.0.1:7501
for i in 1 2 3 4 5; do echo "== per-stage statistics of n$i"; "$bin/shoal" admin stats --node "127.0.0.1:750$i"; done
for i in 1 2 3 4 5; do kill -INT "${pid[$i]}"; done
wait 2>/dev/null || true
pid=()
echo "== all nodes stopped cleanly"
