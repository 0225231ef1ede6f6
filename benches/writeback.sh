#!/usr/bin/env bash
# sync = "none" under a steady stream of writes: what fjall's journal rotation costs the
# writes. fjall rotates its journal every 64 MiB and syncs the old file under the lock every
# write waits on; with nothing else writing the journal out, that sync writes the whole 64 MiB
# (storage turns of 100-160 ms on the intake loop, issue 10's benchmark). Since stop 32 a
# "none" node starts the journal's writeback every sync_interval_ms without waiting for it
# (Store::write_back), so the rotation's sync finds little left.
#
# One node, sync = "none", takes a write-only open loop (RATE puts/s of VALUE_BYTES over
# THREADS connections, KEYS distinct keys) for SECS seconds. Prints the puts' p99, p99.9,
# p99.99 and largest latency, the intake loop turns of at least 20 ms the node warned of, and
# about how many 64 MB journals the run filled (values only: a lower bound). Median of RUNS.
# A/B: copy a build's shoal and shoal-load aside and run with BIN_DIR=that-dir (benches/lib.sh).
#
# Usage: benches/writeback.sh [runs] [secs]    (defaults 3 60)
# Environment: RATE (8000), VALUE_BYTES (1024), THREADS (32), KEYS (200000),
# OUT_DIR (target/bench-writeback: the table, per-run JSON and the node's log).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; secs=${2:-60}
rate=${RATE:-8000}; value_bytes=${VALUE_BYTES:-1024}; threads=${THREADS:-32}; keys=${KEYS:-200000}
out=${OUT_DIR:-target/bench-writeback}
source benches/lib.sh
needs_python
mkdir -p "$out"
port=7451
: > "$out/runs.txt"

for run in $(seq "$runs"); do
  sed 's/^sync = "always"/sync = "none"/' config/single.toml > "$work/node.toml"
  grep -q '^sync = "none"' "$work/node.toml" || fail "config/single.toml has no sync = \"always\" line to change"
  rm -rf "$work/data"
  "$bin/shoal" node --config "$work/node.toml" --listen "127.0.0.1:$port" --data "$work/data" \
    > "$work/node.out" 2> "$work/node.log" &
  pid[node]=$!
  for _ in $(seq 200); do grep -q listening "$work/node.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$work/node.out" || fail "the node did not start: $(tail -3 "$work/node.log")"
  "$bin/shoal-load" --target "127.0.0.1:$port" --workload write-only --keys "$keys" \
    --value-bytes "$value_bytes" --threads "$threads" --rate "$rate" --duration-secs "$secs" \
    --json "$out/run$run.json" > "$work/load.out" 2> "$work/load.err" \
    || fail "run $run: the load failed: $(tail -3 "$work/load.err")"
  kill -0 "${pid[node]}" 2>/dev/null || fail "run $run: the node died: $(tail -3 "$work/node.log")"
  kill -INT "${pid[node]}" 2>/dev/null || true; wait "${pid[node]}" 2>/dev/null || true; unset "pid[node]"
  cp "$work/node.log" "$out/node-run$run.log"
  python3 - "$out/run$run.json" "$work/node.log" "$value_bytes" "$run" >> "$out/runs.txt" <<'EOF'
import json, re, sys
report, log, value_bytes, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = json.load(open(report))
put = next(o for o in r["operations"] if o["op"] == "put")
turns = sum(int(m) for m in re.findall(r"slow intake loop turn.*?turns: (\d+)", open(log).read()))
journals = put["count"] * value_bytes / 64e6
print(run, put["count"], put["errors"], put["p99_us"], put["p999_us"], put["p9999_us"],
      put["max_us"], turns, f"{journals:.1f}")
EOF
  echo "run $run: $(tail -1 "$out/runs.txt")"
done

python3 - "$out/runs.txt" "$runs" "$rate" "$secs" "$bin" > "$out/writeback.txt" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()][-int(sys.argv[2]):]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"sync = none, write-only open loop at {sys.argv[3]} puts/s for {sys.argv[4]} s, "
      f"binaries {sys.argv[5]}: medians of {len(rows)} runs")
print(f"{'puts':>8} {'errors':>6} {'p99 ms':>7} {'p99.9 ms':>8} {'p99.99 ms':>9} {'max ms':>7} "
      f"{'slow turns':>10} {'journals~':>9}")
print(f"{med(1):8.0f} {med(2):6.0f} {med(3)/1000:7.2f} {med(4)/1000:8.2f} {med(5)/1000:9.2f} "
      f"{med(6)/1000:7.1f} {med(7):10.0f} {med(8):9.1f}")
EOF
cat "$out/writeback.txt"
