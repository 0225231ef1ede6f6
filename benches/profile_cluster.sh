#!/usr/bin/env bash
# Where a 3-node N=3 R=2 W=2 cluster's CPU goes under side_by_side's cluster load (workload A,
# 32 connections, 10k keys of 100 B): perf record (cpu-clock, 999 Hz, no call graphs) of the
# three node processes for 8 s of a 20 s run; prints the run's table.
# Usage: benches/profile_cluster.sh; PERF_DATA (target/perf-cluster.data), then e.g.
#   perf report -i target/perf-cluster.data --no-children --sort comm,dso --stdio
# perf is Debian's linux-perf; a failed node start, perf record or load run is reported and the
# script exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q || { echo "the release build failed" >&2; exit 1; }
bin=./target/release
work=$(mktemp -d)
pids=()
lp=
# A failure stops the load run too (not profiled: perf records the nodes alone) rather than
# waiting out its 20 s.
cleanup() { for p in "${pids[@]}" $lp; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for i in 1 2 3; do
  "$bin/shoal" node --config "config/cluster-n$i.toml" --listen "127.0.0.1:740$i" --data "$work/n$i" > "$work/n$i.out" 2> "$work/n$i.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$work/n$i.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$work/n$i.out" || { echo "node $i did not start: $(tail -3 "$work/n$i.log")" >&2; exit 1; }
done
"$bin/shoal-load" --target 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --replicas 3 --workload a --threads 32 \
  --duration-secs 20 --keys 10000 --value-bytes 100 > "$work/load.out" 2> "$work/load.err" &
lp=$!
sleep 6
perf record -e cpu-clock -F 999 -p "$(IFS=,; echo "${pids[*]}")" -o "${PERF_DATA:-target/perf-cluster.data}" -- sleep 8 2> "$work/perf.err" || { echo "perf record failed: $(tail -2 "$work/perf.err")" >&2; exit 1; }
wait "$lp" || { echo "the load run failed: $(tail -3 "$work/load.err")" >&2; exit 1; }
cat "$work/load.out"
