"""A stand-in for curl's progress output, for the HISE download example (no network needed).

Prints lines shaped like curl's progress meter (percent, total, percent, received)
every ``--interval`` seconds for ``--seconds`` seconds, then exits 0.
"""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=3.0)
parser.add_argument("--interval", type=float, default=0.05)
args = parser.parse_args()
steps = max(1, int(args.seconds / args.interval))
for i in range(steps + 1):
    pct = int(100 * i / steps)
    print(f"{pct:3d}  100M  {pct:3d} {pct}.0M    0     0  10.0M      0  0:00:10  0:00:01  0:00:09 10.0M", flush=True)
    if i < steps:
        time.sleep(args.interval)
sys.exit(0)
