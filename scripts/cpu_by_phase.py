#!/usr/bin/env python3
"""CPU of a command, of Redis and of the whole machine, every half second while it runs.

    python3 scripts/cpu_by_phase.py target/release/deps/stores-<hash> --bench --only guards

Prints, per half second from the start: the command's process (its cores busy), the local
redis-server's, and the machine's busy cores (of all). The command's own output goes to
stdout first. Used for BENCHMARKS.md "What the guards' targets need of this machine": the
phases of a benchmark run show as stretches of the table.
"""
import math
import subprocess
import sys
import time

TICKS = 100  # clock ticks a second (/proc)


def ticks(pid):
    """User and system ticks of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def machine():
    """Total and idle ticks of all CPUs, and the CPU count."""
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    values = list(map(int, lines[0].split()[1:]))
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
    return sum(values), values[3] + values[4], cpus


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    redis = int(subprocess.check_output(["pgrep", "-x", "redis-server"]).split()[0])
    child = subprocess.Popen(sys.argv[1:], stderr=subprocess.DEVNULL)
    start = time.time()
    samples = []
    while child.poll() is None:
        total, idle, cpus = machine()
        samples.append((time.time() - start, ticks(child.pid), ticks(redis), total, idle, cpus))
        time.sleep(0.1)
    halves = {}
    for prev, cur in zip(samples, samples[1:]):
        dt = cur[0] - prev[0]
        if None in (prev[1], cur[1], prev[2], cur[2]) or dt <= 0 or cur[3] == prev[3]:
            continue
        busy = cur[5] * (1 - (cur[4] - prev[4]) / (cur[3] - prev[3]))
        row = ((cur[1] - prev[1]) / TICKS / dt, (cur[2] - prev[2]) / TICKS / dt, busy)
        halves.setdefault(math.floor(cur[0] * 2) / 2, []).append(row)
    print("| from s | command, cores | Redis, cores | machine busy, cores |")
    print("|---:|---:|---:|---:|")
    for at in sorted(halves):
        rows = halves[at]
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(3)]
        print(f"| {at:.1f} | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} |")


if __name__ == "__main__":
    main()
