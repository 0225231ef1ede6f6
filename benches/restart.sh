#!/usr/bin/env bash
# How long a node is away when it restarts: one node (config/single.toml, sync "none" so the
# fill is quick) is filled with KEYS keys of VALUE_BYTES and given SECS of workload A, then
# stopped, either cleanly (SIGTERM) or by kill -9, and started again. Reports, per round and
# as medians: how long the stop took (SIGTERM to exit), the journal files the start found
# (each about 61 MB, all replayed), the start's time to listening and its storage open
# ("took_ms" in its log). After each start a load phase over the same keys must find every
# key already there, or the script fails.
#
# Usage: benches/restart.sh
# Environment: KEYS (300000), VALUE_BYTES (1024), SECS (5), ROUNDS (3), BIN_DIR (lib.sh:
# another build's binaries, for an A/B).
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${KEYS:-300000}; value_bytes=${VALUE_BYTES:-1024}; secs=${SECS:-5}; rounds=${ROUNDS:-3}
source benches/lib.sh
keep_failed_logs=${TMPDIR:-/tmp}/restart-failed-logs # the nodes' logs of a failed run
addr=127.0.0.1:7481
sed 's/^sync = "always"/sync = "none"/' config/single.toml > "$work/node.toml"
grep -q '^sync = "none"' "$work/node.toml" || fail "config/single.toml has no sync line to set"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
start() { # log; sets listen_ms (not in a subshell: pid must reach lib.sh's cleanup)
  local t0; t0=$(now_ms)
  "$bin/shoal" node --config "$work/node.toml" --listen "$addr" --data "$work/data" > "$work/node.out" 2>> "$work/$1.log" &
  pid[node]=$!
  for _ in $(seq 1500); do grep -q listening "$work/node.out" 2>/dev/null && break; sleep 0.01; done
  grep -q listening "$work/node.out" || fail "the node did not start: $(tail -3 "$work/$1.log")"
  listen_ms=$(( $(now_ms) - t0 ))
}
stop() { # signal; sets stop_ms. A clean stop must exit 0; kill -9's status is 137.
  local t0 status=0 expected=0; t0=$(now_ms)
  [ "$1" = KILL ] && expected=137
  kill "-$1" "${pid[node]}"; wait "${pid[node]}" 2>/dev/null || status=$?
  stop_ms=$(( $(now_ms) - t0 )); unset "pid[node]"
  [ "$status" -eq "$expected" ] || fail "the node's exit status after SIG$1 was $status"
}
load() { # workload secs -> the load phase's line
  "$bin/shoal-load" --target "$addr" --keys "$keys" --value-bytes "$value_bytes" --threads 16 \
    --workload "$1" --distribution uniform --duration-secs "$2" > "$work/load.out" 2>&1 \
    || fail "the load failed: $(tail -3 "$work/load.out")"
  grep "load phase" "$work/load.out" || fail "the load printed no load phase: $(tail -3 "$work/load.out")"
}
opened_ms() { # log: the start's "storage open ... took_ms" (the log is written asynchronously)
  local line=""
  for _ in $(seq 200); do
    line=$(grep "storage open" "$work/$1.log" | tail -1 | grep -o 'took_ms: [0-9]*') && break
    sleep 0.01
  done
  [ -n "$line" ] || fail "no 'storage open ... took_ms' line in the node's log (text format, info level?)"
  echo "${line#took_ms: }"
}
journals() { find "$work/data" -maxdepth 1 -name '*.jnl' | wc -l; }

echo "restart: $keys keys of $value_bytes B, then ${secs}s of workload A, $rounds rounds; binaries: $bin"
printf "%-6s %-6s %8s %9s %12s %10s\n" round stop stop_ms journals listening_ms open_ms
declare -a clean_listen clean_open kill_listen kill_open clean_stop
for round in $(seq "$rounds"); do
  for how in clean kill; do
    rm -rf "$work/data"
    log="r$round-$how"
    start "$log"
    load a "$secs" > /dev/null
    if [ "$how" = clean ]; then stop TERM; else stop KILL; fi
    first_stop_ms=$stop_ms; files=$(journals)
    start "$log-again"
    open_ms=$(opened_ms "$log-again")
    # Workload A's blind updates leave siblings (the load tool remembers 100k contexts), which
    # this load phase writes over: only a key it found absent was lost, and a key it could not
    # read or write is not checked at all.
    phase=$(load c 1)
    echo "$phase" | grep -q "(0 of them absent before), [0-9]* already loaded, 0 failed" \
      || fail "round $round ($how): keys lost or not checked: $phase"
    stop TERM
    printf "%-6s %-6s %8s %9s %12s %10s\n" "$round" "$how" "$first_stop_ms" "$files" "$listen_ms" "$open_ms"
    if [ "$how" = clean ]; then
      clean_stop+=("$first_stop_ms"); clean_listen+=("$listen_ms"); clean_open+=("$open_ms")
    else
      kill_listen+=("$listen_ms"); kill_open+=("$open_ms")
    fi
  done
done
median() { printf "%s\n" "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "median, clean stop: stop $(median "${clean_stop[@]}") ms, start $(median "${clean_listen[@]}") ms to listening, open $(median "${clean_open[@]}") ms"
echo "median, kill -9:    start $(median "${kill_listen[@]}") ms to listening, open $(median "${kill_open[@]}") ms"
