# Sourced, not run, by the benchmark scripts that start local nodes: what each of them starts
# with. After `source benches/lib.sh` (from the project root) a script has the release binaries
# built, `bin` (where they are), `work` (a temporary directory removed on exit), `pid` (name →
# process, every one killed on exit), `fail MESSAGE` (says which script failed, exits 1) and
# `needs_python`. BIN_DIR=path runs the binaries found there instead (an A/B of two builds:
# copy one build's `shoal` and `shoal-load` aside, then run the same script on each).
bench_name=${0##*/}
fail() { echo "$bench_name: $*" >&2; exit 1; }
needs_python() { command -v python3 > /dev/null || fail "python3 is needed"; }
# The controller's target from a baseline's node signal: signal x factor, in whole ms rounded
# up, at least 1 (controller.sh and anti_entropy.sh both derive theirs this way).
target_from_signal() { # signal-ms factor
  awk -v b="$1" -v f="$2" 'BEGIN {t = b * f; t = (t == int(t) ? t : int(t) + 1); printf "%d", (t < 1 ? 1 : t)}'
}
cargo build --release -q || fail "the release build failed"
bin=${BIN_DIR:-./target/release}
[ -x "$bin/shoal" ] && [ -x "$bin/shoal-load" ] || fail "no shoal and shoal-load in $bin"
work=$(mktemp -d)
declare -A pid
# A script that sets keep_logs=DIR has every *.log of its work directory (the nodes' logs:
# slow loop turns and journal flushes are warned there) copied to DIR on exit; one that sets
# keep_failed_logs=DIR, only when it exits with an error (a run that worked leaves no
# directory named for a failure).
cleanup() {
  local status=$?
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  local keep=${keep_logs:-}
  [ "$status" -ne 0 ] && [ -n "${keep_failed_logs:-}" ] && keep=$keep_failed_logs
  if [ -n "$keep" ]; then
    mkdir -p "$keep"; cp "$work"/*.log "$keep"/ 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
