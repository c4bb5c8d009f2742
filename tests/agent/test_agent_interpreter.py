"""The code interpreter: a real ipykernel in the sandbox, state kept between calls, figures as PNG,
output cut with a note, a timeout that kills the kernel (the next call gets a fresh one); and the
hostile programs of the isolation tests, run through the kernel."""

from __future__ import annotations

import base64
import os
import socket
import time

import pytest

from openqwen.agent.interpreter import CodeInterpreter, interpreter_policy
from openqwen.agent.isolation import sandbox_support

pytestmark = pytest.mark.skipif(bool(sandbox_support().problem), reason=sandbox_support().problem or "")


@pytest.fixture(scope="module")
def ci():
    with CodeInterpreter(interpreter_policy(memory_mb=512, disk_mb=16, max_file_mb=8),
                         max_output_chars=2000) as interp:
        yield interp


def test_state_stdout_stderr_value_and_errors(ci):
    r = ci.run("import sys\nx = 6 * 7\nprint('out')\nprint('err', file=sys.stderr)\nx")
    assert (r.ok, r.stdout, r.stderr, r.result) == (True, "out\n", "err\n", "42")
    r = ci.run("x + 1")
    assert r.result == "43" and r.stdout == ""
    r = ci.run("def f():\n    return 1 / 0\nf()")
    assert not r.ok and r.error.endswith("ZeroDivisionError: division by zero") and "----> 3 f()" in r.error
    assert "ZeroDivisionError" in r.observation()


@pytest.mark.slow  # importing matplotlib in a fresh kernel takes 5-10 s here
def test_matplotlib_figures_come_back_as_png(ci):
    r = ci.run("import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()", timeout_s=120)
    assert r.ok, r.error
    assert len(r.figures) == 1
    fig = r.figures[0]
    assert fig.png[:8] == b"\x89PNG\r\n\x1a\n" and fig.path.read_bytes() == fig.png
    assert base64.b64decode(fig.to_dict()["data"]) == fig.png
    assert "1 figure(s)" in r.observation()


def test_output_is_cut_with_a_note(ci):
    r = ci.run("print('y' * 50_000)")
    assert r.ok and r.truncated
    assert r.stdout.startswith("y" * 2000) and "48001 more characters of output cut" in r.stdout


def test_input_fails_at_once(ci):
    t0 = time.monotonic()
    r = ci.run("input('name? ')", timeout_s=20)
    assert "StdinNotImplementedError" in r.error and time.monotonic() - t0 < 10


def test_the_kernel_sees_no_host_files_network_or_processes(ci, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    code = (f"import os, socket\nres = []\n"
            f"for act in (lambda: open({str(secret)!r}).read(), lambda: open('/usr/x', 'w'),\n"
            f"            lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2)):\n"
            "    try:\n        act(); res.append('OK')\n    except OSError as e:\n        res.append(type(e).__name__)\n"
            "res.append(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[0])\n"
            "res.append(os.getuid())\nres")
    try:
        r = ci.run(code)
    finally:
        srv.close()
    assert r.result == "['FileNotFoundError', 'OSError', 'ConnectionRefusedError', 1, 65534]", r.error
    assert ci.enforced["network"].startswith("none")


def test_timeout_kills_the_kernel_at_the_deadline(ci):
    ci.run("y = 'kept?'\nopen('note.txt', 'w').write('files survive')")
    t0 = time.monotonic()
    r = ci.run("while True:\n    pass", timeout_s=1.5)
    assert r.timed_out and r.restarted and "TimeoutError" in r.error
    assert time.monotonic() - t0 < 4  # returns at its deadline, the restart happens at the next call
    assert ci.sandbox.pids() == []  # nothing of the kernel is left


@pytest.mark.slow
def test_after_a_timeout_the_next_call_gets_a_fresh_kernel_and_the_files(ci):
    ci.run("y = 'kept?'\nopen('note.txt', 'w').write('files survive')", timeout_s=120)
    assert ci.run("while True:\n    pass", timeout_s=1.5).timed_out
    r = ci.run("open('note.txt').read(), 'y' in dir()", timeout_s=120)
    assert r.result == "('files survive', False)"
    assert (ci.workdir / "note.txt").read_text() == "files survive"


# ------------------------------------------------------------------ hostile programs (kernel restarts)
@pytest.mark.slow
def test_a_loop_that_ignores_signals_is_killed(ci):
    code = ("import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    t0 = time.monotonic()
    r = ci.run(code, timeout_s=1.5)
    assert r.timed_out and time.monotonic() - t0 < 4
    assert ci.run("1 + 1", timeout_s=120).result == "2"


@pytest.mark.slow
def test_killing_the_host_the_parent_and_itself_kills_only_its_own_kernel(ci):
    me = os.getpid()
    r = ci.run(f"import os, signal\ntry:\n    os.kill({me}, 9)\nexcept ProcessLookupError:\n    print('no host pid')\n"
               "os.kill(os.getppid(), signal.SIGKILL)\nprint('init survived')\nimport time\ntime.sleep(0.5)\n"
               "os.kill(os.getpid(), signal.SIGKILL)",
               timeout_s=30)
    assert r.stdout == "no host pid\ninit survived\n" and "KernelDied" in r.error and r.restarted
    assert os.getpid() == me and ci.run("2 + 2", timeout_s=120).result == "4"


@pytest.mark.slow
def test_fork_bombs_are_capped(ci):
    r = ci.run("import os\nos.system(':(){ :|:& };:')\nimport time\ntime.sleep(60)", timeout_s=3)
    assert r.timed_out
    assert len(ci.sandbox.pids()) == 0  # all killed with the kernel
    r = ci.run("import os\nn = 0\ntry:\n    while n < 500:\n        os.fork() or os._exit(0)\n        n += 1\n"
               "except OSError as e:\n    print(type(e).__name__)\nn", timeout_s=120)
    assert r.ok or "BlockingIOError" in (r.error or "")


@pytest.mark.slow
def test_memory_bombs(ci):
    r = ci.run("x = bytearray(4 << 30)", timeout_s=120)  # past RLIMIT_AS: MemoryError, the kernel lives on
    assert "MemoryError" in r.error and not r.restarted
    r = ci.run("chunks = []\nwhile True:\n    chunks.append(b'x' * (50 << 20))", timeout_s=60)  # the cgroup's OOM killer
    assert r.restarted and ("KernelDied" in r.error or "MemoryError" in r.error)
    assert ci.run("3 + 3", timeout_s=120).result == "6"


@pytest.mark.slow
def test_a_200_mb_print_returns_in_time_and_cut(ci):
    t0 = time.monotonic()
    r = ci.run("for _ in range(200):\n    print('x' * 1_000_000)", timeout_s=60)
    assert time.monotonic() - t0 < 60 and len(r.stdout) < 3000
    # the kernel buffers output in its own memory: either the host cuts what arrives, or the kernel
    # dies at its memory limit first (seen as SIGSEGV/SIGKILL); either way the call returns in time
    assert "more characters of output cut" in r.stdout or "KernelDied" in r.error
    assert ci.run("5 + 5", timeout_s=120).result == "10"


@pytest.mark.slow
def test_filling_the_disk_stops_at_the_work_folder_size(ci):
    r = ci.run("n = 0\ntry:\n    while True:\n        open(f'fill{n}', 'wb').write(b'x' * 1_000_000)\n        n += 1\n"
               "except OSError as e:\n    print(e.errno)\nimport os\nfor f in os.listdir('.'):\n"
               "    f.startswith('fill') and os.remove(f)", timeout_s=60)
    assert r.stdout.strip() == "28", (r.stdout, r.error)  # ENOSPC at the 16 MB tmpfs
    assert ci.enforced["disk"] == "tmpfs 16 MB"


@pytest.mark.slow
def test_a_spawned_shell_stays_inside(ci):
    r = ci.run("import subprocess\nsubprocess.run('id -u; ls /root /home 2>&1; cat /etc/shadow 2>&1', shell=True,"
               " capture_output=True, text=True).stdout")
    assert r.result[1:8] == "65534\\n" and "cannot access '/home'" in r.result and "/root:\\ncat" in r.result
    assert "cat: /etc/shadow: No such file" in r.result
