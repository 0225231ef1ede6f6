#!/usr/bin/env bash
# A rolling restart under load, the operation an upgrade is: README's 3-node cluster
# (config/cluster-n*.toml: N=3 R=2 W=2, sync "always") takes RATE ops/s of workload A from
# THREADS load threads, while each node in turn gets SIGTERM, stays down DOWN_SECS, is started
# again and given UP_SECS before the next. Reports what the clients saw (failed operations by
# kind, p99 and p99.9 of the whole run, the worst second's p99, reads that saw siblings), how
# long each stop took (SIGTERM to exit: the drain) and each start (to listening: the journal's
# replay, if any), and what the nodes logged about it: WARN
# lines in all ("peer link lost" among them) and the drains' own lines.
#
# Usage: benches/rolling_restart.sh
# Environment: RATE (3000), THREADS (16), DOWN_SECS (3), UP_SECS (3), KEYS (5000),
# BIN_DIR (lib.sh: another build's binaries, for an A/B).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-3000}; threads=${THREADS:-16}; down_secs=${DOWN_SECS:-3}; up_secs=${UP_SECS:-3}
keys=${KEYS:-5000}
source benches/lib.sh

start() { # i
  "$bin/shoal" node --config "config/cluster-n$1.toml" --data "$work/d$1" > "$work/n$1.out" 2>> "$work/n$1.log" &
  pid[$1]=$!
  for _ in $(seq 1000); do grep -q listening "$work/n$1.out" 2>/dev/null && return; sleep 0.01; done
  fail "n$1 did not start (see its log)"
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

for i in 1 2 3; do start "$i"; done
# The load phase writes every key first (about a second); the restarts begin after it.
secs=$(( 4 + 3 * (down_secs + up_secs + 1) + 2 ))
"$bin/shoal-load" --target 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --workload a \
  --threads "$threads" --rate "$rate" --duration-secs "$secs" --keys "$keys" --value-bytes 100 \
  > "$work/load.out" 2>&1 &
load_pid=$!
sleep 4
for i in 1 2 3; do
  t0=$(now_ms)
  kill -TERM "${pid[$i]}"
  wait "${pid[$i]}" 2>/dev/null || true
  echo "n$i stopped in $(( $(now_ms) - t0 )) ms"
  unset "pid[$i]"
  sleep "$down_secs"
  : > "$work/n$i.out"
  t0=$(now_ms)
  start "$i"
  echo "n$i listening again in $(( $(now_ms) - t0 )) ms"
  sleep "$up_secs"
done
wait "$load_pid" || fail "the load run failed: $(tail -3 "$work/load.out")"

awk '$1=="get"||$1=="put" {printf "%-4s ops %7s  errors %4s  p99 %6s us  p99.9 %6s us  max %6s us\n", $1, $2, $4, $7, $8, $10}' "$work/load.out"
grep -E "^rate:|^reads that saw siblings|^ +error " "$work/load.out" || true
awk '/^\[ *[0-9]+s\]/ {for (i = 1; i <= NF; i++) if ($i == "p99") {v = $(i + 1); sub("us", "", v); if (v + 0 > worst) worst = v + 0}}
     END {printf "worst one-second p99: %d us\n", worst}' "$work/load.out"
warns=$(cat "$work"/n?.log | grep -c " WARN " || true)
lost=$(cat "$work"/n?.log | grep -c "peer link lost" || true)
echo "node log lines: $warns WARN, of them $lost 'peer link lost'"
# The nodes' warnings and lines about the stops, counted by what they say (names and numbers
# dropped).
grep -hE " WARN |stopping: |peer marked down|peer is stopping|stopped peer" "$work"/n?.log \
  | sed -E 's/^[A-Z][a-z]{2} [0-9]{2} [0-9:.]+ //; s/, (owed|peers|conn|peer|node|stage): [a-z0-9_]+//g' \
  | sort | uniq -c | sort -rn
