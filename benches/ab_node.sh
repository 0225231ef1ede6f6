#!/usr/bin/env bash
# An A/B of two builds of one node (issue 12), interleaved so that the box's drift (its speed
# here changes by 15 % within minutes) hits both alike: for each round, a fresh node of each
# build (`sync` from SYNC, default "none") under the same shoal-load run (workload A, 32
# connections, 10k keys of 100 B, SECS seconds, default 8), then the ratio of each pair. Prints
# per run the ops/s and the node's CPU microseconds per operation (utime + stime from /proc),
# then the median over the rounds of B/A for both. The load tool is this checkout's release
# build for both. A failed node start or load run is reported (FAILED ...), its round left
# out, and the script exits non-zero after printing what it has.
# Usage: benches/ab_node.sh A_SHOAL_BINARY B_SHOAL_BINARY [rounds]   (rounds default 5)
# e.g.  cp target/release/shoal /tmp/shoal-before   (then change, build, and)
#       benches/ab_node.sh /tmp/shoal-before target/release/shoal
set -uo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
[ $# -ge 2 ] || fail "usage: benches/ab_node.sh A_SHOAL_BINARY B_SHOAL_BINARY [rounds]"
a=$1; b=$2; rounds=${3:-5}; secs=${SECS:-8}; sync=${SYNC:-none}
[ -x "$a" ] && [ -x "$b" ] || fail "both builds must be executable files: $a, $b"
case "$sync" in none|periodic|always) ;; *) fail "SYNC must be none, periodic or always" ;; esac
hz=$(getconf CLK_TCK)
sed "s/^sync = \"always\"/sync = \"$sync\"/" config/single.toml > "$work/node.toml"
failed=0

run() { # label binary → "ops_per_s cpu_us_per_op" in $work/$label.result; non-zero if the run failed
  # (not in a $(...) subshell: the node must be in `pid`, which the exit trap kills)
  local label=$1 shoal=$2 dir="$work/$1-$round" before after
  "$shoal" node --config "$work/node.toml" --listen 127.0.0.1:7415 --data "$dir" > "$dir.out" 2> "$dir.log" &
  pid[node]=$!
  for _ in $(seq 100); do grep -q listening "$dir.out" 2>/dev/null && break; sleep 0.05; done
  if ! grep -q listening "$dir.out"; then
    echo "FAILED: $label's node did not start in round $round: $(tail -2 "$dir.log")" >&2
    kill "${pid[node]}" 2>/dev/null; wait "${pid[node]}" 2>/dev/null; return 1
  fi
  before=$(awk '{print $14 + $15}' "/proc/${pid[node]}/stat")
  if ! "$bin/shoal-load" --target 127.0.0.1:7415 --workload a --threads 32 --duration-secs "$secs" \
    --keys 10000 --value-bytes 100 > "$dir.load" 2> "$dir.err"; then
    echo "FAILED: $label's load run in round $round: $(tail -1 "$dir.err")" >&2
    kill "${pid[node]}" 2>/dev/null; wait "${pid[node]}" 2>/dev/null; return 1
  fi
  after=$(awk '{print $14 + $15}' "/proc/${pid[node]}/stat")
  kill "${pid[node]}" 2>/dev/null; wait "${pid[node]}" 2>/dev/null
  awk -v ticks=$((after - before)) -v hz="$hz" '$1=="get"||$1=="put" {ops += $2; rate += $3}
    END {if (ops > 0) printf "%.0f %.2f\n", rate, ticks / hz * 1e6 / ops}' "$dir.load" > "$work/$label.result"
  [ -s "$work/$label.result" ] || { echo "FAILED: $label's load run in round $round printed no operations" >&2; return 1; }
}

echo "A: $a"
echo "B: $b"
echo "one node, sync = \"$sync\", workload a, 32 connections, ${secs}s per run, $rounds rounds"
printf "%-6s %10s %10s %10s %10s %8s %8s\n" round A_ops/s B_ops/s A_us/op B_us/op ops_B/A us_B/A
pairs="$work/pairs"; : > "$pairs"
for round in $(seq "$rounds"); do
  run A "$a" && run B "$b" || { failed=$((failed + 1)); continue; }
  read -r oa ua < "$work/A.result"; read -r ob ub < "$work/B.result"
  awk -v r="$round" -v oa="$oa" -v ob="$ob" -v ua="$ua" -v ub="$ub" \
    'BEGIN {printf "%-6s %10d %10d %10.2f %10.2f %8.3f %8.3f\n", r, oa, ob, ua, ub, ob / oa, ub / ua}' | tee -a "$pairs"
done
median() { sort -n | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
if [ -s "$pairs" ]; then
  echo "median over $(wc -l < "$pairs") rounds: ops/s B/A $(awk '{print $6}' "$pairs" | median), CPU us per op B/A $(awk '{print $7}' "$pairs" | median)"
fi
[ "$failed" -eq 0 ] || fail "$failed of $rounds rounds failed"
