#!/usr/bin/env python3
"""Who a thread waited for: from a system-wide scheduler trace, every off-CPU stretch of one
thread that began in a futex (a lock) and lasted over MIN_MS, with the user frames it waited
in, the thread whose wake-up ended it (the lock's holder, releasing it), and where that
thread had been switched out just before (its kernel stack: what the holder itself waited on).

Record first (root; the tracepoints need tracefs mounted once:
`mount -t tracefs nodev /sys/kernel/tracing`), while the stall happens:

    perf record -a -e sched:sched_switch -e sched:sched_wakeup -g -o perf.data -- sleep 30
    perf script -i perf.data -F comm,tid,time,event,trace,ip,sym > trace.txt

Usage: benches/wait_holders.py trace.txt TID [MIN_MS]   (TID: e.g. a node's intake-0 thread,
from /proc/PID/task/*/comm). How issue 10's rebuild stall was traced to fjall's flush worker
(benches/results/stall-diagnosis-2026-12-04-rebuild.txt).
"""
import re
import sys

EVENT = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s+(sched:\S+):\s+(.*)$")


def parse(path):
    """Events as [comm, tid, time, event, trace, kernel-and-user frames]."""
    events, current = [], None
    with open(path) as f:
        for line in f:
            m = EVENT.match(line)
            if m:
                current = [m.group(1), m.group(2), float(m.group(3)), m.group(4), m.group(5), []]
                events.append(current)
            elif current is not None and line.strip():
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[1] != "[unknown]":
                    current[5].append(parts[1])
    return events


def main():
    path, tid = sys.argv[1], sys.argv[2]
    min_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    events = parse(path)
    switched_out, stretches, last_wakeup = None, [], None
    for comm, etid, t, event, trace, frames in events:
        if event == "sched:sched_switch":
            if f"prev_pid={tid} " in trace:
                switched_out = (t, frames)
            if re.search(rf"next_pid={tid}(\s|$)", trace) and switched_out is not None:
                stretches.append((switched_out[0], t, switched_out[1], last_wakeup))
                switched_out = None
        elif event == "sched:sched_wakeup" and re.search(rf"\spid={tid}\s", f" {trace} "):
            last_wakeup = (t, comm, etid)
    waits = [s for s in stretches
             if (s[1] - s[0]) * 1000 > min_ms and any("futex" in f for f in s[2])]
    print(f"thread {tid}: {len(stretches)} off-CPU stretches, {len(waits)} futex waits over {min_ms} ms")
    for start, end, frames, waker in sorted(waits, key=lambda s: s[0] - s[1]):
        user = " < ".join([f for f in frames if "::" in f][:3])
        print(f"  at {start:.3f}: {(end - start) * 1000:.1f} ms in {user[:160]}")
        if waker is None:
            continue
        at, comm, wtid = waker
        print(f"    ended by {comm} (tid {wtid}) at {at:.3f}; it had been switched out:")
        before = [e for e in events
                  if e[1] == wtid and e[3] == "sched:sched_switch" and f"prev_pid={wtid} " in e[4]
                  and start - 0.2 < e[2] < at]
        for e in before[-3:]:
            state = e[4].split("prev_state=")[1].split()[0]
            print(f"      {e[2]:.3f} ({state}) {' < '.join(e[5][:14])[:300]}")


if __name__ == "__main__":
    main()
