#!/usr/bin/env bash
# The side-by-side benchmark (issues 5 and 12): in one run on one machine, the same workload with
# the same concurrency against Redis (persistence off, loopback only), a single shoal node with
# sync = "always" (fsync before every acknowledgement, the default), the same with sync =
# "none" (no persistence wait, closer to the Redis setting), and a 3-node shoal cluster
# (N=3, R=2, W=2) three times: with sync = "always" (config/cluster-n*.toml as they are), with
# sync = "none" (like for like with Redis's persistence off, as the single-node pair), and with
# Dynamo's buffered writes (clbuffered: sync = "periodic" and durable_writes = "one", so each
# put waits for one flush, its coordinator's, instead of one on each of W replicas, and an
# acknowledged put still survives every node losing power at once);
# rounds alternate the targets so drift hits all of them. For the "always" rows' like for like,
# Redis also runs with its append-only file fsynced before every reply (redis_fsync:
# appendfsync always); every ratio is still to Redis with persistence off, the issue's baseline.
# Prints the median over the rounds of throughput and p50/p99/p99.9 with ratios to Redis, the
# server CPU seconds per 1,000 operations of each target (utime + stime of its server
# processes only, from /proc, over the run) and every server process's RSS at the end.
# A failed load run is reported (FAILED ...), its row left out of the medians, and the table is
# still printed; the script then exits non-zero. It never stops without saying why.
# Usage: benches/side_by_side.sh [rounds] [seconds] [connections] [workload] [durable]
# durable (all | one | none) is passed to every shoal run as `shoal-load --durable`; absent,
# each node's config decides (durable_writes = "none": only sync matters).
# Installs redis-server from Debian's packages if it is missing (needs root, as on CI).
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-8}; threads=${3:-32}; workload=${4:-a}; durable=${5:-}
case "$durable" in ""|all|one|none) ;; *) echo "side_by_side: durable must be all, one or none" >&2; exit 1 ;; esac
die() { echo "side_by_side: $*" >&2; exit 1; }
trap 'echo "side_by_side: stopped at line $LINENO (exit $?)" >&2' ERR
if ! command -v redis-server > /dev/null; then
  echo "installing redis-server from Debian's packages" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server > /dev/null; } \
    || die "cannot install redis-server"
fi
cargo build --release -q || die "the release build failed"
bin=./target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
hz=$(getconf CLK_TCK)

declare -A target_pids # label → its server processes
redis_port=6391
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --protected-mode yes > "$work/redis.log" 2>&1 &
pids+=($!); target_pids[redis]=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping > /dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping > /dev/null 2>&1 || die "redis did not start: $(cat "$work/redis.log")"
redis_fsync_port=6392
mkdir -p "$work/redis-fsync"
redis-server --port "$redis_fsync_port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
  --dir "$work/redis-fsync" --protected-mode yes > "$work/redis-fsync.log" 2>&1 &
pids+=($!); target_pids[redis_fsync]=$!
for _ in $(seq 100); do redis-cli -p "$redis_fsync_port" ping > /dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_fsync_port" ping > /dev/null 2>&1 || die "redis (fsync) did not start: $(cat "$work/redis-fsync.log")"

start() { # label config listen data → node in the background
  "$bin/shoal" node --config "$2" --listen "$3" --data "$4" > "$4.out" 2> "$4.log" &
  local pid=$!
  pids+=("$pid"); target_pids[$1]="${target_pids[$1]:-} $pid"
  for _ in $(seq 100); do grep -q listening "$4.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$4.out" || die "node $3 did not start: $(tail -3 "$4.log")"
}
start single config/single.toml 127.0.0.1:7411 "$work/single"
sed 's/^sync = "always"/sync = "none"/' config/single.toml > "$work/single-nosync.toml"
start nosync "$work/single-nosync.toml" 127.0.0.1:7412 "$work/nosync"
for i in 1 2 3; do start cluster "config/cluster-n$i.toml" "127.0.0.1:740$i" "$work/cluster-n$i"; done
# The same three configs on other ports (their member lists too), with sync = "none".
for i in 1 2 3; do
  sed -e 's/^sync = "always"/sync = "none"/' -e 's/127\.0\.0\.1:740\([1-3]\)/127.0.0.1:742\1/' \
    "config/cluster-n$i.toml" > "$work/clnosync-n$i.toml"
  start clnosync "$work/clnosync-n$i.toml" "127.0.0.1:742$i" "$work/clnosync-n$i"
done
# And with Dynamo's buffered writes (sync = "periodic", durable_writes = "one").
for i in 1 2 3; do
  sed -e 's/^sync = "always"/sync = "periodic"/' -e 's/^\[cluster\]$/[cluster]\ndurable_writes = "one"/' \
    -e 's/127\.0\.0\.1:740\([1-3]\)/127.0.0.1:743\1/' "config/cluster-n$i.toml" > "$work/clbuffered-n$i.toml"
  grep -q '^durable_writes = "one"' "$work/clbuffered-n$i.toml" || die "clbuffered-n$i.toml: no durable_writes line"
  start clbuffered "$work/clbuffered-n$i.toml" "127.0.0.1:743$i" "$work/clbuffered-n$i"
done

cpu_ticks() { # pids... → utime + stime of them all, in clock ticks
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

failed=0
results="$work/results"; cpu="$work/cpu"
touch "$results" "$cpu"
load() { # label target replicas; a failed run is reported and counted, never fatal
  local label=$1 before after durable_args=()
  [ -n "$durable" ] && [[ "$label" != redis* ]] && durable_args=(--durable "$durable")
  # shellcheck disable=SC2086 # the list of pids splits on purpose
  before=$(cpu_ticks ${target_pids[$label]})
  if ! "$bin/shoal-load" --target "$2" --replicas "$3" --workload "$workload" --threads "$threads" \
    --duration-secs "$secs" --keys 10000 --value-bytes 100 "${durable_args[@]}" > "$work/load.out" 2> "$work/load.err"; then
    echo "FAILED: $label run of round $round: $(grep -h error "$work/load.err" "$work/load.out" | tail -1)" >&2
    failed=$((failed + 1))
    return 0
  fi
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${target_pids[$label]})
  awk -v label="$label" '$1=="get"||$1=="put"||$1=="rmw"||$1=="insert" {print label, $1, $3, $5, $7, $8}' "$work/load.out" >> "$results"
  awk -v label="$label" -v ticks=$((after - before)) -v hz="$hz" '
    $1=="get"||$1=="put"||$1=="rmw"||$1=="insert" {ops += $2}
    END { if (ops > 0) printf "%s %.4f\n", label, (ticks / hz) / (ops / 1000) }' "$work/load.out" >> "$cpu"
}
for round in $(seq "$rounds"); do
  echo "round $round" >&2
  load redis "redis://127.0.0.1:$redis_port" 1
  load redis_fsync "redis://127.0.0.1:$redis_fsync_port" 1
  load single 127.0.0.1:7411 1
  load nosync 127.0.0.1:7412 1
  load cluster 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 3
  load clnosync 127.0.0.1:7421,127.0.0.1:7422,127.0.0.1:7423 3
  load clbuffered 127.0.0.1:7431,127.0.0.1:7432,127.0.0.1:7433 3
done

trap - ERR
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > 0 ? a / b : 0) }'; }
median() { sort -n | awk '{v[NR]=$1} END {print (NR ? v[int((NR+1)/2)] : "")}'; }
value() { awk -v s="$1" -v o="$2" -v c="$3" '$1==s && $2==o {print $c}' "$results" | median; }
echo "workload $workload, $threads connections, ${secs}s, median of $rounds rounds (ratio = shoal / redis)${durable:+, durable_writes $durable}"
echo "redis_fsync: redis, appendfsync always; single: one node, sync=always; nosync: one node, sync=none; cluster: 3 nodes N=3 R=2 W=2, sync=always; clnosync: the same, sync=none; clbuffered: the same, sync=periodic, durable_writes=one"
printf "%-11s %-4s %9s %7s %8s %6s %8s %6s %8s %6s\n" target op "ops/s" ratio p50us ratio p99us ratio p999us ratio
for op in $(awk '{print $2}' "$results" | sort -u); do
  r_ops=$(value redis "$op" 3); r50=$(value redis "$op" 4); r99=$(value redis "$op" 5); r999=$(value redis "$op" 6)
  for target in redis redis_fsync single nosync cluster clnosync clbuffered; do
    ops=$(value "$target" "$op" 3); p50=$(value "$target" "$op" 4); p99=$(value "$target" "$op" 5); p999=$(value "$target" "$op" 6)
    [ -n "$ops" ] || continue
    printf "%-11s %-4s %9s %7.2f %8s %6.1f %8s %6.1f %8s %6.1f\n" "$target" "$op" "$ops" "$(ratio "$ops" "${r_ops:-0}")" \
      "$p50" "$(ratio "$p50" "${r50:-0}")" "$p99" "$(ratio "$p99" "${r99:-0}")" "$p999" "$(ratio "$p999" "${r999:-0}")"
  done
done
echo
echo "server CPU seconds per 1,000 operations (median of rounds; server processes only) and RSS at the end"
printf "%-11s %14s  %s\n" target "cpu_s/1k_ops" "rss_mib per process"
for target in redis redis_fsync single nosync cluster clnosync clbuffered; do
  c=$(awk -v s="$target" '$1==s {print $2}' "$cpu" | median)
  rss=""
  for p in ${target_pids[$target]}; do
    r=$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$p/status" 2>/dev/null)
    rss="$rss ${r:-gone}"
  done
  printf "%-11s %14s %s\n" "$target" "${c:-n/a}" "$rss"
done
if [ "$failed" -gt 0 ]; then
  echo "$failed load run(s) failed (see FAILED lines above); their rows are missing from the medians" >&2
  exit 1
fi
