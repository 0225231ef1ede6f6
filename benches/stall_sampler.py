#!/usr/bin/env python3
"""Where a thread waits when it stalls: samples one named thread of each given process every
INTERVAL (2 ms) from /proc (root, for the kernel stacks) and reports, per process,

  - blocked time (asleep, not in epoll: state D, the kernel waits for a disk or one of its
    locks, or S in a futex, a user-space lock such as fjall's journal mutex) by the kernel
    stack it was blocked in, and every blocked stretch of STRETCH_MS or more with its stack;
  - run-queue delay (runnable but not running: the CPU was elsewhere) from schedstat, and
    every sample gap in which the thread waited STRETCH_MS or more for a CPU;
  - steal (the hypervisor ran someone else) over the whole run, from /proc/stat.

Usage: benches/stall_sampler.py SECONDS THREAD_NAME PID [PID...]   (e.g. intake-0)
Prints its report to standard output. Used by benches/anti_entropy.sh's STALLS=1 diagnosis.
"""
import os
import sys
import time
from collections import Counter

INTERVAL = 0.002
STRETCH_MS = 10


def thread_of(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() == name:
                    return tid
        except OSError:
            pass
    return None


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def steal_ticks():
    line = read("/proc/stat").splitlines()[0].split()
    return int(line[8]), sum(int(x) for x in line[1:])


def short_stack(text):
    frames = [l.split("] ", 1)[-1].split("+")[0] for l in text.strip().splitlines()]
    return " < ".join(frames[:8]) if frames else "(no stack)"


def main():
    seconds, name, pids = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    threads = {}
    for pid in pids:
        tid = thread_of(pid, name)
        if tid is None:
            print(f"pid {pid}: no thread named {name}", file=sys.stderr)
            continue
        threads[pid] = f"/proc/{pid}/task/{tid}"
    if not threads:
        sys.exit(1)
    blocked = {pid: Counter() for pid in threads}
    stretches = {pid: [] for pid in threads}
    open_stretch = {pid: None for pid in threads}
    waits = {pid: [] for pid in threads}
    last_wait = {}
    start = time.monotonic()
    steal0, total0 = steal_ticks()
    samples = 0
    while time.monotonic() - start < seconds:
        now = time.monotonic() - start
        samples += 1
        for pid, base in threads.items():
            stat = read(f"{base}/stat")
            sched = read(f"{base}/schedstat")
            if stat is None or sched is None:
                continue
            state = stat.rsplit(")", 1)[1].split()[0]
            waited_ns = int(sched.split()[1])
            if pid in last_wait:
                delta_ms = (waited_ns - last_wait[pid]) / 1e6
                if delta_ms >= STRETCH_MS:
                    waits[pid].append((now, delta_ms))
            last_wait[pid] = waited_ns
            stack = None
            if state in ("D", "S"):
                # The kernel stack needs root; wchan (the function it sleeps in) does not.
                stack = short_stack(read(f"{base}/stack") or "")
                if stack == "(no stack)":
                    stack = (read(f"{base}/wchan") or "").strip() or "(no stack)"
                if "ep_poll" in stack or "epoll" in stack:
                    stack = None  # waiting for work, not stalled
                else:
                    stack = f"{state}: {stack}"
            if stack is not None:
                blocked[pid][stack] += 1
                if open_stretch[pid] is None:
                    open_stretch[pid] = [now, now, stack]
                else:
                    open_stretch[pid][1] = now
            elif open_stretch[pid] is not None:
                begin, end, stack = open_stretch[pid]
                if (end - begin) * 1000 + INTERVAL * 1000 >= STRETCH_MS:
                    stretches[pid].append((begin, (end - begin) * 1000 + INTERVAL * 1000, stack))
                open_stretch[pid] = None
        time.sleep(INTERVAL)
    for pid, stretch in open_stretch.items():
        if stretch is not None and (stretch[1] - stretch[0]) * 1000 + INTERVAL * 1000 >= STRETCH_MS:
            stretches[pid].append((stretch[0], (stretch[1] - stretch[0]) * 1000 + INTERVAL * 1000, stretch[2]))
    steal1, total1 = steal_ticks()
    elapsed = time.monotonic() - start
    print(f"# {name} sampled every {INTERVAL * 1000:.0f} ms for {elapsed:.0f} s ({samples} rounds); "
          f"steal {100 * (steal1 - steal0) / max(1, total1 - total0):.2f} % of CPU time")
    for pid in threads:
        d = sum(blocked[pid].values())
        print(f"pid {pid}: blocked in {d} samples (~{d * INTERVAL * 1000:.0f} ms)")
        for stack, n in blocked[pid].most_common(6):
            print(f"  {n:6d}  {stack}")
        print(f"  blocked stretches >= {STRETCH_MS} ms: {len(stretches[pid])}")
        for begin, ms, stack in stretches[pid][:15]:
            print(f"    at {begin:7.2f} s  {ms:5.0f} ms  {stack}")
        print(f"  run-queue waits >= {STRETCH_MS} ms within one sample gap: {len(waits[pid])}")
        for at, ms in waits[pid][:15]:
            print(f"    at {at:7.2f} s  {ms:5.0f} ms")


if __name__ == "__main__":
    main()
