#!/usr/bin/env bash
# The side-by-side benchmark (issue 5): in one run on one machine, the same workload with the
# same concurrency against Redis (persistence off, loopback only), a single shoal node with
# sync = "always" (fsync before every acknowledgement, the default), the same with sync =
# "none" (no persistence wait, closer to the Redis setting), and a 3-node shoal cluster
# (N=3, R=2, W=2, sync = "always"); rounds alternate the targets so drift hits all of them.
# Prints the median over the rounds of throughput and p50/p99/p99.9, with ratios to Redis.
# Usage: benches/side_by_side.sh [rounds] [seconds] [threads] [workload]
# Installs redis-server from Debian's packages if it is missing (needs root, as on CI).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-8}; threads=${3:-4}; workload=${4:-a}
if ! command -v redis-server > /dev/null; then
  echo "installing redis-server from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server > /dev/null
fi
cargo build --release -q
bin=./target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis_port=6391
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --protected-mode yes > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping > /dev/null 2>&1 && break; sleep 0.05; done

start() { # config listen data → node in the background
  "$bin/shoal" node --config "$1" --listen "$2" --data "$3" > "$3.out" 2> "$3.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$3.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$3.out" || { echo "node did not start: $(cat "$3.log")" >&2; exit 1; }
}
start config/single.toml 127.0.0.1:7411 "$work/single"
sed 's/^sync = "always"/sync = "none"/' config/single.toml > "$work/single-nosync.toml"
start "$work/single-nosync.toml" 127.0.0.1:7412 "$work/nosync"
for i in 1 2 3; do start "config/cluster-n$i.toml" "127.0.0.1:740$i" "$work/cluster-n$i"; done

failed=0
load() { # label target replicas; a failed run is reported and counted, never fatal
  if ! "$bin/shoal-load" --target "$2" --replicas "$3" --workload "$workload" --threads "$threads" \
    --duration-secs "$secs" --keys 10000 --value-bytes 100 > "$work/load.out" 2> "$work/load.err"; then
    echo "FAILED: $1 run of round $round: $(grep error: "$work/load.err" | tail -1)" >&2
    failed=$((failed + 1))
  fi
  awk -v label="$1" '$1=="get"||$1=="put"||$1=="rmw"||$1=="insert" {print label, $1, $3, $5, $7, $8}' "$work/load.out"
}
results="$work/results"
for round in $(seq "$rounds"); do
  echo "round $round" >&2
  load redis "redis://127.0.0.1:$redis_port" 1 >> "$results"
  load single 127.0.0.1:7411 1 >> "$results"
  load nosync 127.0.0.1:7412 1 >> "$results"
  load cluster 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 3 >> "$results"
done

touch "$results"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > 0 ? a / b : 0) }'; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
value() { awk -v s="$1" -v o="$2" -v c="$3" '$1==s && $2==o {print $c}' "$results" | median; }
echo "workload $workload, $threads threads, ${secs}s, median of $rounds rounds (ratio = shoal / redis)"
echo "single: one node, sync=always; nosync: one node, sync=none; cluster: 3 nodes N=3 R=2 W=2, sync=always"
printf "%-8s %-4s %9s %7s %8s %6s %8s %6s %8s %6s\n" target op "ops/s" ratio p50us ratio p99us ratio p999us ratio
for op in $(awk '{print $2}' "$results" | sort -u); do
  r_ops=$(value redis "$op" 3); r50=$(value redis "$op" 4); r99=$(value redis "$op" 5); r999=$(value redis "$op" 6)
  for target in redis single nosync cluster; do
    ops=$(value "$target" "$op" 3); p50=$(value "$target" "$op" 4); p99=$(value "$target" "$op" 5); p999=$(value "$target" "$op" 6)
    [ -n "$ops" ] || continue
    printf "%-8s %-4s %9s %7.2f %8s %6.1f %8s %6.1f %8s %6.1f\n" "$target" "$op" "$ops" "$(ratio "$ops" "$r_ops")" \
      "$p50" "$(ratio "$p50" "$r50")" "$p99" "$(ratio "$p99" "$r99")" "$p999" "$(ratio "$p999" "$r999")"
  done
done
if [ "$failed" -gt 0 ]; then
  echo "$failed load run(s) failed (see FAILED lines above); their rows are missing from the medians" >&2
  exit 1
fi
