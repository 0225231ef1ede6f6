#!/usr/bin/env bash
# Memory of one node holding many keys (issue 12): starts one node (sync = "none", so the fill
# is quick; memory does not depend on when the journal is flushed), writes KEYS distinct keys of
# VALUE_BYTES each with shoal-load's load phase, lets compaction settle, and prints the node's
# RSS, its peak RSS (VmHWM) and the data directory's size on disk. Target: RSS <= 256 MiB for
# 1M keys of 1 KiB. First it measures the node's CPU while idle for 10 s (target < 1 % of a
# core: no worker spins when there is nothing to do).
# Usage: benches/memory.sh [keys] [value_bytes]
set -uo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}; value_bytes=${2:-1024}
die() { echo "memory: $*" >&2; exit 1; }
trap 'echo "memory: stopped at line $LINENO (exit $?)" >&2' ERR
cargo build --release -q || die "the release build failed"
bin=./target/release
work=$(mktemp -d)
node_pid=""
cleanup() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
sed 's/^sync = "always"/sync = "none"/' config/single.toml > "$work/node.toml"
"$bin/shoal" node --config "$work/node.toml" --listen 127.0.0.1:7431 --data "$work/data" > "$work/node.out" 2> "$work/node.log" &
node_pid=$!
for _ in $(seq 100); do grep -q listening "$work/node.out" 2>/dev/null && break; sleep 0.05; done
grep -q listening "$work/node.out" || die "the node did not start: $(tail -3 "$work/node.log")"
rss_mib() { awk -v k="$1" '$1==k":" {printf "%.1f", $2 / 1024}' "/proc/$node_pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$node_pid/stat"; }
sleep 2 # past start-up
before=$(cpu_ticks); sleep 10; after=$(cpu_ticks)
idle_cpu=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", 100 * t / hz / 10 }')
echo "idle node: ${idle_cpu}% of a core over 10 s (target < 1 %), RSS $(rss_mib VmRSS) MiB"
start=$(date +%s)
# The load phase writes every key once; one second of reads then touches them.
"$bin/shoal-load" --target 127.0.0.1:7431 --keys "$keys" --value-bytes "$value_bytes" \
  --threads 16 --workload c --distribution uniform --duration-secs 1 > "$work/load.out" 2> "$work/load.err" \
  || die "the load failed: $(grep -h error "$work/load.err" "$work/load.out" | tail -1)"
filled=$(( $(date +%s) - start ))
grep -q "load phase: $keys keys written" "$work/load.out" \
  || die "the load phase did not write every key: $(grep 'load phase' "$work/load.out")"
sleep 5 # background compactions and tree upkeep settle
kill -0 "$node_pid" 2>/dev/null || die "the node died: $(tail -3 "$work/node.log")"
echo "keys $keys of $value_bytes B written in ${filled}s"
echo "node RSS $(rss_mib VmRSS) MiB, peak RSS $(rss_mib VmHWM) MiB (target <= 256 MiB for 1M x 1 KiB)"
echo "data directory $(du -sm "$work/data" | cut -f1) MiB on disk"
