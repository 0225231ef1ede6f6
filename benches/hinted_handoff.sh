#!/usr/bin/env bash
# Issue 4's measurement, in one run on one machine: put latency of a 5-node N=3 W=2 cluster
# with all nodes up and then with one node down (sloppy quorum: its replicas become hints),
# then how long those hints take to drain once the node returns.
# Usage: benches/hinted_handoff.sh [seconds] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}; threads=${2:-4}
source benches/lib.sh

start() { # i
  "$bin/shoal" node --config "config/cluster5-n$1.toml" --data "$work/n$1" > "$work/n$1.out" 2>> "$work/n$1.log" &
  pid[$1]=$!
  for _ in $(seq 100); do grep -q listening "$work/n$1.out" 2>/dev/null && break; sleep 0.05; done
}
hints() { # total hints held by the running nodes
  local total=0 n
  for i in 1 2 3 4 5; do
    [ "$i" = "$1" ] && continue
    n=$("$bin/shoal" admin members --node "127.0.0.1:750$i" --json | grep -o '"hints_pending":[0-9]*' | awk -F: '{s+=$2} END {print s+0}')
    total=$((total + n))
  done
  echo "$total"
}
load() { # label seeds
  "$bin/shoal-load" --node "$2" --replicas 3 --threads "$threads" --duration-secs "$secs" --workload write-only --distribution uniform --keys 20000 \
  | awk -v label="$1" '$1=="put" {printf "%-16s puts/s %6s  errors %s  p50 %5sus  p99 %6sus  p99.9 %6sus\n", label, $3, $4, $5, $7, $8}'
}

for i in 1 2 3 4 5; do start "$i"; done
seeds=127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7504
load "all up" "$seeds"
kill -INT "${pid[3]}"; wait "${pid[3]}" 2>/dev/null || true; unset 'pid[3]'
load "n3 down" "$seeds"
held=$(hints 3)
start 3
t0=$(date +%s%N)
while [ "$(hints 3)" -gt 0 ]; do sleep 0.1; done
t1=$(date +%s%N)
echo "hints for n3: $held, drained in $(( (t1 - t0) / 1000000 )) ms after it returned (handoff rate limit 1000/s)"
