#!/usr/bin/env bash
# Issue 14's benchmark: what Dynamo's buffered writes (§6.1) buy. 3 nodes on loopback, N=3 R=2
# W=2, every node with sync = "periodic" (writes nobody asked to flush reach the disk every
# sync_interval_ms; SYNC=none: when the OS decides, its writeback started every 100 ms), all on this machine's one disk. Per workload (A, and write-only):
#   1. the closed-loop maximum with durable_writes = "all" (THREADS connections);
#   2. ROUNDS rounds of open-loop runs at LOAD_FRACTION (0.6) of that maximum, one run per mode
#      in each round, the modes alternating: all (every acknowledging replica flushed), one
#      (only the coordinator flushed, before it sent the write on), none (no flush waited for).
# Prints per workload and mode the median put p50, p99, p99.9 and achieved throughput, each as
# a ratio to "all". The paper's figure to compare: p99.9 lower by 5x with buffering.
# A failed run is reported (FAILED ...), left out of the medians, and the table still printed;
# the script then exits non-zero.
# Usage: benches/durable_writes.sh [rounds] [seconds] [threads]
# Environment: LOAD_FRACTION (0.6), KEYS (10000), VALUE_BYTES (100), SYNC (periodic: every
# node's own flush schedule; none leaves unrequested flushes to the OS).
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}; threads=${3:-32}
fraction=${LOAD_FRACTION:-0.6}; keys=${KEYS:-10000}; value_bytes=${VALUE_BYTES:-100}
sync=${SYNC:-periodic}
case "$sync" in periodic|none|always) ;; *) echo "durable_writes: SYNC must be periodic, none or always" >&2; exit 1 ;; esac
source benches/lib.sh
trap 'echo "durable_writes: stopped at line $LINENO (exit $?)" >&2' ERR

seeds=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
for i in 1 2 3; do
  # The example configs' 5 s anti-entropy interval (a demo's) would run exchanges all through
  # the measurement: the default (60 s) is what a cluster runs.
  sed -e "s/^sync = \"always\"/sync = \"$sync\"/" -e '/^exchange_interval_ms/d' \
    "config/cluster-n$i.toml" > "$work/n$i.toml"
  grep -q "^sync = \"$sync\"" "$work/n$i.toml" || fail "config/cluster-n$i.toml has no sync line to change"
  "$bin/shoal" node --config "$work/n$i.toml" --data "$work/n$i" > "$work/n$i.out" 2> "$work/n$i.log" &
  pid[n$i]=$!
done
for i in 1 2 3; do
  for _ in $(seq 100); do grep -q listening "$work/n$i.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$work/n$i.out" || fail "node n$i did not start: $(tail -3 "$work/n$i.log")"
done

failed=0
results="$work/results"; touch "$results"
run() { # workload mode label [rate] → appends "workload mode ops p50 p99 p999" of its puts
  local workload=$1 mode=$2 label=$3 rate=${4:-} args=()
  [ -n "$rate" ] && args=(--rate "$rate")
  if ! "$bin/shoal-load" --target "$seeds" --replicas 3 --workload "$workload" --threads "$threads" \
    --duration-secs "$secs" --keys "$keys" --value-bytes "$value_bytes" --durable "$mode" \
    "${args[@]}" > "$work/load.out" 2> "$work/load.err"; then
    echo "FAILED: $label: $(grep -h -i error "$work/load.err" "$work/load.out" | tail -1)" >&2
    failed=$((failed + 1))
    return 0
  fi
  # ops/s of every operation together; latencies of the puts (the writes that flush).
  awk -v w="$workload" -v m="$mode" '
    $1=="get"||$1=="put"||$1=="rmw"||$1=="insert" {ops += $3}
    $1=="put"||$1=="insert" {p50=$5; p99=$7; p999=$8}
    END { if (p50 != "") print w, m, ops, p50, p99, p999 }' "$work/load.out" >> "$results"
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR ? v[int((NR+1)/2)] : "")}'; }
declare -A rate
for workload in a write-only; do
  echo "closed-loop maximum of workload $workload with durable_writes = all" >&2
  run "$workload" all "maximum of $workload" ""
  max=$(awk -v w="$workload" '$1==w {print $3}' "$results" | tail -1)
  [ -n "$max" ] || fail "no maximum measured for workload $workload"
  rate[$workload]=$(awk -v m="$max" -v f="$fraction" 'BEGIN {printf "%.0f", m * f}')
  echo "workload $workload: maximum $max ops/s, open loop at ${rate[$workload]} ops/s" >&2
done
: > "$results"
for round in $(seq "$rounds"); do
  for workload in a write-only; do
    for mode in all one none; do
      echo "round $round: workload $workload, durable $mode" >&2
      run "$workload" "$mode" "round $round $workload $mode" "${rate[$workload]}"
    done
  done
done

trap - ERR
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
value() { awk -v w="$1" -v m="$2" -v c="$3" '$1==w && $2==m {print $c}' "$results" | median; }
echo "3 nodes N=3 R=2 W=2, sync=$sync, $threads connections, ${secs}s open loop at $fraction of the"
echo "\"all\" maximum, median of $rounds rounds; put latencies in us (ratio = mode / all)"
printf "%-10s %-5s %9s %6s %8s %6s %8s %6s %8s %6s\n" workload mode "ops/s" ratio p50us ratio p99us ratio p999us ratio
for workload in a write-only; do
  a_ops=$(value "$workload" all 3); a50=$(value "$workload" all 4); a99=$(value "$workload" all 5); a999=$(value "$workload" all 6)
  for mode in all one none; do
    ops=$(value "$workload" "$mode" 3); p50=$(value "$workload" "$mode" 4); p99=$(value "$workload" "$mode" 5); p999=$(value "$workload" "$mode" 6)
    [ -n "$ops" ] || continue
    printf "%-10s %-5s %9s %6s %8s %6s %8s %6s %8s %6s\n" "$workload" "$mode" "$ops" "$(ratio "$ops" "${a_ops:-0}")" \
      "$p50" "$(ratio "$p50" "${a50:-0}")" "$p99" "$(ratio "$p99" "${a99:-0}")" "$p999" "$(ratio "$p999" "${a999:-0}")"
  done
done
if [ "$failed" -gt 0 ]; then
  echo "$failed load run(s) failed (see FAILED lines above); their rows are missing from the medians" >&2
  exit 1
fi
