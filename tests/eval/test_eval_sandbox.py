"""The sandbox: HumanEval's canonical solutions pass 164/164, and wrong or hostile programs fail
(without harming the test process): wrong answers, infinite loops, unbounded allocation, a
(bounded) fork bomb, network access, huge output."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from openqwen.eval.sandbox import SandboxLimits, run_code, run_many
from openqwen.eval.tasks.code import build_program, load_humaneval


def test_runs_code_and_captures_output():
    r = run_code("import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)")
    assert r.passed and r.returncode == 0
    assert r.stdout == "42\n" and r.stderr == "warn\n"
    assert r.enforced["memory"] == "RLIMIT_AS"


def test_failing_assertion_fails():
    r = run_code("assert 1 + 1 == 3, 'arithmetic'")
    assert r.status == "failed" and "AssertionError: arithmetic" in r.reason


def test_infinite_loop_times_out():
    t0 = time.perf_counter()
    r = run_code("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and r.reason == "timed out"
    assert time.perf_counter() - t0 < 5


def test_unbounded_allocation_hits_the_memory_limit():
    r = run_code("x = []\nwhile True:\n    x.append(bytearray(50_000_000))\n", timeout_s=10, memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.reason


def test_fork_bomb_is_bounded_and_cleaned_up():
    # Bounded on purpose: at most 64 forks, each child sleeping, so a broken sandbox cannot hurt the host.
    code = (
        "import os, time\n"
        "kids = 0\n"
        "for _ in range(64):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    kids += 1\n"
        "print(kids)\n"
    )
    r = run_code(code, timeout_s=5, limits=SandboxLimits(max_processes=8))
    if r.enforced.get("processes", "none").startswith("none"):
        pytest.skip(f"no process limit available here: {r.enforced['processes']}")
    assert r.status == "failed" and "BlockingIOError" in r.reason  # fork refused past the limit
    # nothing the run forked is left sleeping
    time.sleep(0.2)
    leftovers = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"openqwen-sandbox" in cmd or (b"time.sleep(60)" in cmd):
                leftovers.append(d.name)
    assert not leftovers


def test_network_is_refused_even_from_a_child_process():
    """A local server sees no connection from the sandbox, even from a subprocess that bypasses the
    audit hook (only the network namespace stops that one)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    got = []
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn)
                return
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    direct = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    assert direct.status == "failed" and "network access is disabled" in direct.reason
    via_child = run_code(
        "import subprocess, sys\n"
        f"rc = subprocess.run([sys.executable, '-c', \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\"]).returncode\n"
        "assert rc == 0, 'child could not connect'\n"
    )
    done.set()
    t.join()
    srv.close()
    if "netns" not in via_child.enforced.get("network", ""):
        pytest.skip("no network namespace here; only the audit hook (checked above) applies")
    assert via_child.status == "failed"
    assert not got, "the sandboxed code reached the host's network"


def test_output_and_file_size_are_capped(tmp_path):
    r = run_code("import sys\nsys.stdout.write('x' * 50_000_000)\n",
                 limits=SandboxLimits(max_file_mb=1, max_output_chars=1000))
    assert r.status == "failed"  # SIGXFSZ / File too large at 1 MB of output
    assert len(r.stdout) < 1100


def test_runs_in_a_fresh_directory_that_is_removed():
    r = run_code("import os\nprint(os.getcwd())\nopen('f.txt', 'w').write('hi')\n")
    cwd = r.stdout.strip()
    assert r.passed and "openqwen-sandbox" in cwd and cwd != os.getcwd()
    assert not Path(cwd).exists()


def test_humaneval_canonical_solutions_all_pass(artifact):
    problems = load_humaneval(artifact("humaneval"))
    assert len(problems) == 164
    programs = [build_program(p, p.canonical_solution, "base") for p in problems]
    results = run_many(programs, timeout_s=20, workers=4)
    failed = [(p.task_id, r.reason) for p, r in zip(problems, results) if not r.passed]
    assert not failed, failed


def test_humaneval_wrong_solutions_fail(artifact):
    problems = load_humaneval(artifact("humaneval"))[:24]
    wrong = ["    return None\n", "    while True:\n        pass\n", "    raise ValueError('no')\n"]
    programs = [build_program(p, wrong[i % 3], "base") for i, p in enumerate(problems)]
    results = run_many(programs, timeout_s=1, workers=4)
    assert not any(r.passed for r in results)
    assert {r.status for r in results[1::3]} == {"timeout"}
