"""The evaluation sandbox's cost: HumanEval canonical solutions through today's sandbox (bubblewrap
namespaces + cgroups + uid drop, openqwen.agent.isolation), through the previous one (rlimits, a
network namespace and an audit hook in the caller's user; its source read from git at 40b30e9), and
through a bare ``subprocess.run``, interleaved in rounds so that the shared machine's load hits
all three alike.

    python benchmarks/bench_sandbox.py --programs 40 --workers 4 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openqwen.artifacts import artifact_path
from openqwen.eval import sandbox
from openqwen.eval.tasks import code

OLD_COMMIT = "40b30e9"  # the last commit with the previous sandbox


def old_sandbox():
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:openqwen/eval/sandbox.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "old_sandbox.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bare(prog: str) -> bool:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "main.py"
        f.write_text(prog)
        return subprocess.run([sys.executable, str(f)], cwd=d, capture_output=True, timeout=20).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    problems = code.load_humaneval(artifact_path("humaneval"))[: args.programs]
    programs = [code.build_program(p, p.canonical_solution, "base") for p in problems]
    old = old_sandbox()
    runners = {
        "isolation sandbox (bwrap, cgroups, uid nobody)": lambda: [r.passed for r in sandbox.run_many(programs, 20, workers=args.workers)],
        "previous sandbox (rlimits, netns, audit hook)": lambda: [r.passed for r in old.run_many(programs, 20, workers=args.workers)],
        "bare subprocess.run": lambda: list(ThreadPoolExecutor(args.workers).map(bare, programs)),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            ok = fn()
            times[name].append(time.perf_counter() - t0)
            assert all(ok), name
    base = statistics.median(times["bare subprocess.run"])
    prev = statistics.median(times["previous sandbox (rlimits, netns, audit hook)"])
    print(f"{len(programs)} HumanEval canonical solutions, {args.workers} at a time, median of {args.rounds} rounds\n")
    print("| runner | time | programs/s | vs bare | vs previous |\n|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.2f} s | {len(programs) / t:.1f} | {t / base:.2f}x | {t / prev:.2f}x |")


if __name__ == "__main__":
    main()
