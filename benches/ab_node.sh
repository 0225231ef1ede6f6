#!/usr/bin/env bash
# An A/B of two builds of one node, or of a 3-node cluster (issue 12), interleaved so that the
# box's drift (its speed here changes by 15 % within minutes) hits both alike: for each round,
# fresh nodes of each build (`sync` from SYNC, default "none") under the same shoal-load run
# (workload A, 32 connections, 10k keys of 100 B, SECS seconds, default 8), then the ratio of
# each pair. The build that runs first alternates by round: a cluster's runs slow down as its
# data grows within a round, which would otherwise count against the second. Prints per run
# the ops/s and the nodes' CPU microseconds per operation (utime + stime from /proc), then the
# median over the rounds of B/A for both. The load tool is this checkout's release build for
# both. A failed node start or load run is reported (FAILED ...), its round left out, and the
# script exits non-zero after printing what it has.
# Usage: benches/ab_node.sh A_SHOAL_BINARY B_SHOAL_BINARY [rounds]   (rounds default 5)
#   NODES=3: the 3-node cluster of config/cluster-n*.toml (N=3 R=2 W=2) instead of one node.
# e.g.  cp target/release/shoal /tmp/shoal-before   (then change, build, and)
#       benches/ab_node.sh /tmp/shoal-before target/release/shoal
set -uo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
[ $# -ge 2 ] || fail "usage: benches/ab_node.sh A_SHOAL_BINARY B_SHOAL_BINARY [rounds]"
a=$1; b=$2; rounds=${3:-5}; secs=${SECS:-8}; sync=${SYNC:-none}; nodes=${NODES:-1}
[ -x "$a" ] && [ -x "$b" ] || fail "both builds must be executable files: $a, $b"
case "$sync" in none|periodic|always) ;; *) fail "SYNC must be none, periodic or always" ;; esac
case "$nodes" in 1|3) ;; *) fail "NODES must be 1 or 3" ;; esac
hz=$(getconf CLK_TCK)
# Node i listens on 127.0.0.1:745i (the cluster's member lists moved there too).
for i in $(seq "$nodes"); do
  if [ "$nodes" = 1 ]; then config=config/single.toml; else config=config/cluster-n$i.toml; fi
  sed -e "s/^sync = \"always\"/sync = \"$sync\"/" -e 's/127\.0\.0\.1:740\([1-3]\)/127.0.0.1:745\1/' \
    "$config" > "$work/node$i.toml"
done
targets=$(seq -s, -f "127.0.0.1:745%g" "$nodes")
failed=0

stop_nodes() { for i in $(seq "$nodes"); do kill "${pid[node$i]}" 2>/dev/null; wait "${pid[node$i]}" 2>/dev/null; done; }
ticks() { local total=0 i; for i in $(seq "$nodes"); do total=$((total + $(awk '{print $14 + $15}' "/proc/${pid[node$i]}/stat"))); done; echo "$total"; }

run() { # label binary → "ops_per_s cpu_us_per_op" in $work/$label.result; non-zero if the run failed
  # (not in a $(...) subshell: the nodes must be in `pid`, which the exit trap kills)
  local label=$1 shoal=$2 dir="$work/$1-$round" before after i
  for i in $(seq "$nodes"); do
    "$shoal" node --config "$work/node$i.toml" --listen "127.0.0.1:745$i" --data "$dir-$i" > "$dir-$i.out" 2> "$dir-$i.log" &
    pid[node$i]=$!
  done
  for i in $(seq "$nodes"); do
    for _ in $(seq 100); do grep -q listening "$dir-$i.out" 2>/dev/null && break; sleep 0.05; done
    if ! grep -q listening "$dir-$i.out"; then
      echo "FAILED: $label's node $i did not start in round $round: $(tail -2 "$dir-$i.log")" >&2
      stop_nodes; return 1
    fi
  done
  before=$(ticks)
  if ! "$bin/shoal-load" --target "$targets" --replicas "$nodes" --workload a --threads 32 \
    --duration-secs "$secs" --keys 10000 --value-bytes 100 > "$dir.load" 2> "$dir.err"; then
    echo "FAILED: $label's load run in round $round: $(tail -1 "$dir.err")" >&2
    stop_nodes; return 1
  fi
  after=$(ticks)
  stop_nodes
  awk -v ticks=$((after - before)) -v hz="$hz" '$1=="get"||$1=="put" {ops += $2; rate += $3}
    END {if (ops > 0) printf "%.0f %.2f\n", rate, ticks / hz * 1e6 / ops}' "$dir.load" > "$work/$label.result"
  [ -s "$work/$label.result" ] || { echo "FAILED: $label's load run in round $round printed no operations" >&2; return 1; }
}

echo "A: $a"
echo "B: $b"
what=$([ "$nodes" = 1 ] && echo "one node" || echo "3 nodes N=3 R=2 W=2")
echo "$what, sync = \"$sync\", workload a, 32 connections, ${secs}s per run, $rounds rounds (odd rounds A first)"
printf "%-6s %10s %10s %10s %10s %8s %8s\n" round A_ops/s B_ops/s A_us/op B_us/op ops_B/A us_B/A
pairs="$work/pairs"; : > "$pairs"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    run A "$a" && run B "$b" || { failed=$((failed + 1)); continue; }
  else
    run B "$b" && run A "$a" || { failed=$((failed + 1)); continue; }
  fi
  read -r oa ua < "$work/A.result"; read -r ob ub < "$work/B.result"
  awk -v r="$round" -v oa="$oa" -v ob="$ob" -v ua="$ua" -v ub="$ub" \
    'BEGIN {printf "%-6s %10d %10d %10.2f %10.2f %8.3f %8.3f\n", r, oa, ob, ua, ub, ob / oa, ub / ua}' | tee -a "$pairs"
done
median() { sort -n | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
if [ -s "$pairs" ]; then
  echo "median over $(wc -l < "$pairs") rounds: ops/s B/A $(awk '{print $6}' "$pairs" | median), CPU us per op B/A $(awk '{print $7}' "$pairs" | median)"
fi
[ "$failed" -eq 0 ] || fail "$failed of $rounds rounds failed"
