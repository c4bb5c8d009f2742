"""The sandbox: HumanEval's canonical solutions pass 164/164, and wrong or hostile programs fail
(without harming the test process): wrong answers, infinite loops, unbounded allocation, a
(bounded) fork bomb, network access, huge output, and completions that go after the caller: read
or overwrite its files, write elsewhere in /tmp (also through os.system), SIGKILL the evaluation."""

from __future__ import annotations

import os
import signal
import socket
import sys
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


def test_runs_when_the_interpreter_path_climbs_through_an_unmounted_folder(tmp_path, monkeypatch):
    """Started as ``../../.venv/bin/python`` from a run folder, sys.executable holds '..' parts through
    that folder, which the sandbox does not mount: the interpreter path is normalised first."""
    import os
    import sys

    sub = tmp_path / "runs" / "spec"
    sub.mkdir(parents=True)
    climb = os.path.join(str(sub), os.path.relpath(sys.executable, str(sub)))
    assert ".." in climb and os.path.samefile(climb, sys.executable)
    monkeypatch.setattr(sys, "executable", climb)
    assert run_code("print(6 * 7)").stdout == "42\n"


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
    if not r.enforced["processes"].startswith("cgroup"):
        pytest.skip(f"no process cgroup here: {r.enforced['processes']}")
    assert r.status == "failed" and "BlockingIOError" in r.reason  # fork refused past the limit
    assert r.enforced["processes"].endswith("pids.max=10")  # 8 for the program, 2 for the launcher
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
    """A local server sees no connection from the sandbox, neither from the program nor from a
    subprocess: the sandbox's loopback is its own (an empty network namespace), not the host's."""
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
    via_child = run_code(
        "import subprocess, sys\n"
        f"rc = subprocess.run([sys.executable, '-c', \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\"]).returncode\n"
        "assert rc == 0, 'child could not connect'\n"
    )
    outside = run_code("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n")
    done.set()
    t.join()
    srv.close()
    assert direct.enforced["network"] == "none (empty network namespace)"
    assert direct.status == "failed" and "ConnectionRefusedError" in direct.reason
    assert via_child.status == "failed" and "child could not connect" in via_child.reason
    assert outside.status == "failed" and "Network is unreachable" in outside.reason
    assert not got, "the sandboxed code reached the host's network"


def test_output_and_file_size_are_capped(tmp_path):
    r = run_code("import sys\nsys.stdout.write('x' * 50_000_000)\n",
                 limits=SandboxLimits(max_file_mb=1, max_output_chars=1000))
    assert r.status == "failed"  # SIGXFSZ / File too large at 1 MB of output
    assert len(r.stdout) < 1100


def test_runs_in_a_private_work_folder_that_vanishes():
    first = run_code("import os\nprint(os.getcwd())\nopen('f.txt', 'w').write('hi')\nprint(sorted(os.listdir('.')))\n")
    assert first.passed and first.stdout.split("\n")[:2] == ["/sandbox", "['.tmp', 'f.txt', 'main.py']"]
    second = run_code("import os\nprint(sorted(os.listdir('.')))\n")
    assert second.passed and second.stdout.strip() == "['.tmp', 'main.py']"  # the first run's file is gone


def test_humaneval_canonical_solutions_pass(artifact):
    problems = load_humaneval(artifact("humaneval"))[:12]
    programs = [build_program(p, p.canonical_solution, "base") for p in problems]
    results = run_many(programs, timeout_s=20, workers=4)
    failed = [(p.task_id, r.reason) for p, r in zip(problems, results) if not r.passed]
    assert not failed, failed


@pytest.mark.slow
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


def test_a_completion_cannot_read_or_overwrite_the_callers_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the caller's secret")
    code = (f"import os\npath = {str(secret)!r}\n"
            "for what in ('read', 'write'):\n"
            "    try:\n"
            "        open(path).read() if what == 'read' else open(path, 'w').write('pwned')\n"
            "        print(what, 'ok')\n"
            "    except OSError as e:\n"
            "        print(what, type(e).__name__)\n"
            "print(os.listdir('/root'), os.path.exists('/etc/shadow'))\n")
    r = run_code(code)
    assert r.passed, r.stderr
    # /root holds only the mount point of the Python install (here under /root/.pyenv), if anything
    visible_root = [".pyenv"] if str(Path(sys.base_prefix).resolve()).startswith("/root/") else []
    assert r.stdout.split("\n")[:3] == ["read FileNotFoundError", "write FileNotFoundError",
                                        f"{visible_root} False"]
    assert secret.read_text() == "the caller's secret"


def test_a_completion_cannot_write_elsewhere_in_tmp_even_through_os_system(tmp_path):
    target = Path("/tmp") / f"openqwen-sandbox-test-{os.getpid()}"
    assert not target.exists()
    code = (f"import os\nopen({str(target)!r}, 'w').write('x')\n"  # /tmp inside is the private work folder
            f"os.system('echo y > {tmp_path}/via-shell.txt; echo z > /tmp/via-shell-{os.getpid()}.txt')\n"
            "print(sorted(os.listdir('/tmp')))\n")
    r = run_code(code)
    assert r.passed, r.stderr
    # a Python install below the host's /tmp (a CI clone there) is mounted at its own path, under /tmp inside
    mounts = {Path(p).parts[2] for p in (sys.prefix, sys.base_prefix) if Path(p).is_relative_to("/tmp")}
    assert r.stdout.strip() == str(sorted({target.name, f"via-shell-{os.getpid()}.txt", *mounts}))
    assert not target.exists() and not (Path("/tmp") / f"via-shell-{os.getpid()}.txt").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_completion_cannot_kill_the_evaluation_process():
    me = os.getpid()
    code = ("import os, signal\n"
            f"try:\n    os.kill({me}, signal.SIGKILL)\nexcept ProcessLookupError:\n    print('no such process')\n"
            "os.kill(os.getppid(), signal.SIGKILL)\n"  # the sandbox's init: immune from inside
            "print('parent', os.getppid(), 'survived')\n")
    r = run_code(code)
    assert r.passed, r.stderr
    assert r.stdout.split("\n")[:2] == ["no such process", "parent 1 survived"]
    assert os.getpid() == me  # (still here to assert)
