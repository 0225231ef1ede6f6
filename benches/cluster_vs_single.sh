#!/usr/bin/env bash
# Issue 3's measurement: throughput and p50/p99/p99.9 of a 3-node N=3 R=2 W=2 cluster against a
# single node on the same machine, same client load, in one session (runs alternate, so drift
# hits both). Usage: benches/cluster_vs_single.sh [runs] [seconds] [threads]
# Prints every run, then the median per setup and the cluster/single ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; secs=${2:-10}; threads=${3:-4}
cargo build --release -q
bin=./target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # config data → sets $addr (not in a subshell: the pid must stay in $pids)
  "$bin/shoal" node --config "$1" --data "$2" > "$2.out" 2> "$2.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$2.out" 2>/dev/null && break; sleep 0.05; done
  addr=$(awk '/listening/ {print $NF}' "$2.out")
  [ -n "$addr" ] || { echo "node did not start: $(cat "$2.log")" >&2; exit 1; }
}
stop_all() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

failed=0
load() { # label seeds replicas; a failed run is reported and counted, never fatal
  if ! "$bin/shoal-load" --node "$2" --replicas "$3" --threads "$threads" --duration-secs "$secs" \
    --workload a --distribution uniform --keys 10000 --value-bytes 100 > "$work/load.out" 2> "$work/load.err"; then
    echo "FAILED: $1 run $run: $(grep error: "$work/load.err" | tail -1)" >&2
    failed=$((failed + 1))
  fi
  awk -v label="$1" '$1=="get"||$1=="put" {print label, $1, $3, $5, $7, $8}' "$work/load.out"
}

results="$work/results"
for run in $(seq "$runs"); do
  start config/single.toml "$work/single-$run"
  load single "$addr" 1 | tee -a "$results"
  stop_all
  seeds=""
  for i in 1 2 3; do start "config/cluster-n$i.toml" "$work/c$run-n$i"; seeds+="$addr,"; done
  load cluster "${seeds%,}" 3 | tee -a "$results"
  stop_all
done

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo
printf "%-8s %-4s %10s %8s %8s %8s\n" setup op "ops/s" p50us p99us p999us
for setup in single cluster; do
  for op in get put; do
    rows=$(awk -v s=$setup -v o=$op '$1==s && $2==o' "$results")
    printf "%-8s %-4s %10s %8s %8s %8s\n" "$setup" "$op" \
      "$(echo "$rows" | awk '{print $3}' | median)" "$(echo "$rows" | awk '{print $4}' | median)" \
      "$(echo "$rows" | awk '{print $5}' | median)" "$(echo "$rows" | awk '{print $6}' | median)"
  done
done
if [ "$failed" -gt 0 ]; then
  echo "$failed load run(s) failed (see FAILED lines above); their rows are missing from the medians" >&2
  exit 1
fi
