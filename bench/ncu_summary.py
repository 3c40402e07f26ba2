#!/usr/bin/env python3
"""Sums an Nsight Compute raw CSV (`ncu --metrics gpu__time_duration.sum --csv --page raw ...`) by kernel name.

    python3 bench/ncu_summary.py profile.csv [steps] [top]

Prints the kernels that took the most GPU time: launches, mean time, time per step (the total over `steps`,
default 1) and share of the whole. The benchmark's random fills (FillUniform*: weights, KV) are left out. ncu writes
its own log lines before the table; the table starts at the header row ("ID", ...), and its first data row
holds the units.
"""
import collections
import csv
import re
import sys


def main():
    path = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 18
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        print("  no ncu table in " + path)
        return 1
    rows = list(csv.DictReader(lines[start:]))[1:]
    total_ns, launches = collections.defaultdict(float), collections.Counter()
    for r in rows:
        # "void uniattn::cuda::Foo<float, 128>(args)" -> "uniattn::cuda::Foo"
        name = r["Kernel Name"].replace("void ", "").replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
        name = re.sub(r"[(<].*", "", name)[:64]
        if "FillUniform" in name:
            continue
        total_ns[name] += float(r["gpu__time_duration.sum"].replace(",", ""))
        launches[name] += 1
    total = sum(total_ns.values())
    print("  %d launches, %.3f ms of GPU time per step (%d steps)" %
          (sum(launches.values()), total / 1e6 / steps, steps))
    for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[:top]:
        print("  %-64s %6d x %9.2f us = %8.3f ms/step %5.1f%%" %
              (name, launches[name], ns / launches[name] / 1e3, ns / 1e6 / steps, 100 * ns / total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
