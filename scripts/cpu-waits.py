#!/usr/bin/env python3
"""Who waits for a CPU, 100 ms at a time: for a load test on a shared
machine (BENCHMARKS.md, "where the tail waits").

For every thread of the processes whose command line contains one of the
--match strings, it samples /proc/<pid>/task/<tid>/schedstat (time run,
time waited runnable, in ns) every 50 ms and prints, per interval, each
(process, thread name) group's milliseconds run / waited. A probe process
at real-time priority (SCHED_FIFO, needs root) sleeps 1 ms in a loop and
reports any gap over 8 ms: if it sees none while the groups wait, the
machine did not stall; its threads queued for the CPUs.

  scripts/cpu-waits.py --match "agora master" --match scale- --seconds 30
"""

import argparse
import glob
import multiprocessing
import os
import time


def probe(gaps, stop):
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except PermissionError:
        gaps.put((time.time(), -1.0))
        return
    last = time.monotonic()
    while not stop.is_set():
        time.sleep(0.001)
        now = time.monotonic()
        if now - last > 0.008:
            gaps.put((time.time(), (now - last) * 1000))
        last = now


def matching(patterns):
    found = {}
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(proc + "/cmdline").read().replace("\0", " ")
        except OSError:
            continue
        for p in patterns:
            if p in cmd and "cpu-waits" not in cmd:
                found[proc] = p
    return found


def sample(procs):
    groups = {}
    for proc, label in procs.items():
        for task in glob.glob(proc + "/task/*"):
            try:
                name = open(task + "/comm").read().strip()
                run, wait, _ = open(task + "/schedstat").read().split()
            except (OSError, ValueError):
                continue
            acc = groups.setdefault(f"{label}:{name}", [0, 0])
            acc[0] += int(run)
            acc[1] += int(wait)
    return groups


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--match", action="append", required=True,
                      help="a string of the command line of a process to watch")
    args.add_argument("--seconds", type=float, default=30)
    args.add_argument("--every", type=float, default=0.1, help="interval printed, seconds")
    a = args.parse_args()
    gaps, stop = multiprocessing.Queue(), multiprocessing.Event()
    prober = multiprocessing.Process(target=probe, args=(gaps, stop), daemon=True)
    prober.start()
    procs, before, start = matching(a.match), None, time.time()
    seen_gaps = []
    names = []
    print("# ms run / ms waited for a CPU, per group and interval; gaps = the probe's")
    while time.time() - start < a.seconds:
        if not procs:
            procs = matching(a.match)
        now = sample(procs)
        stamp = time.time()
        while not gaps.empty():
            seen_gaps.append(gaps.get())
        if before is not None:
            for g in now:
                if g not in names:
                    names.append(g)
            cells = []
            for g in names:
                run = (now.get(g, [0, 0])[0] - before[1].get(g, [0, 0])[0]) / 1e6
                wait = (now.get(g, [0, 0])[1] - before[1].get(g, [0, 0])[1]) / 1e6
                if run or wait:
                    cells.append(f"{g}={run:.0f}/{wait:.0f}")
            gaps_here = [f"{ms:.0f}" for t, ms in seen_gaps if before[0] < t <= stamp]
            print(f"{stamp - start:7.2f} " + " ".join(cells)
                  + (f"  gaps: {','.join(gaps_here)} ms" if gaps_here else ""), flush=True)
        before = (stamp, now)
        time.sleep(max(0.0, a.every - (time.time() - stamp)))
    stop.set()
    if any(ms < 0 for _, ms in seen_gaps):
        print("# the probe could not run at real-time priority (not root?)")


if __name__ == "__main__":
    main()
