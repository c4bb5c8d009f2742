"""Run every benchmark module (benchmarks/bench_*.py) in turn, each in its own process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    only = set(sys.argv[1:])
    failed = []
    for name in names:
        if only and name not in only and name.removeprefix("bench_") not in only:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=here.parent)
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
