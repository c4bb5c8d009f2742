"""The sandbox of openqwen.agent.isolation, one program at a time: every hostile program is contained
(the host is unaffected and the run ends in time with an error). Limits are small so that a broken
sandbox could not hurt the shared machine; the bounded versions run first (test order), the
unbounded bombs after them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openqwen.agent.isolation import IsolationPolicy, Sandbox, sandbox_support

pytestmark = pytest.mark.skipif(bool(sandbox_support().problem), reason=sandbox_support().problem or "")

SMALL = dict(memory_mb=256, max_processes=16, cpu_seconds=20, max_file_mb=4, disk_mb=8)


def run(code: str, tmp_path: Path, timeout: float = 10.0, **policy) -> tuple[int | None, str, str, float, dict]:
    """Run ``python -c code`` in a fresh sandbox; (returncode or None on timeout, stdout, stderr, wall s)."""
    pol = IsolationPolicy(**{**SMALL, **policy})
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    t0 = time.monotonic()
    with Sandbox(pol) as sb, open(out_path, "wb") as out, open(err_path, "wb") as err:
        rc = sb.run([sys.executable, "-I", "-c", code], timeout_s=timeout, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=err)
        left = sb.pids()
        enforced = dict(sb.enforced)
    assert left == [], f"processes outlived the kill: {left}"
    wall = time.monotonic() - t0
    return rc, out_path.read_text(errors="replace")[:100_000], err_path.read_text(errors="replace")[-5000:], wall, enforced


def test_runs_as_nobody_in_its_own_namespaces(tmp_path):
    code = ("import os, socket\n"
            "print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), os.getpid(), socket.gethostname())\n"
            "print(sorted(os.environ))\n")
    rc, out, err, _, enforced = run(code, tmp_path)
    assert rc == 0, err
    first, second = out.splitlines()[:2]
    assert first == "65534 65534 [] /sandbox 2 sandbox"  # pid 2: the namespace's init is pid 1
    assert "OPENQWEN" not in second and "PYTEST" not in second
    assert enforced["uid"].startswith("65534")


def test_a_read_only_folder_below_the_hosts_tmp_is_mounted_at_its_own_path(tmp_path):
    """A Python install or tool folder under the host's /tmp (a venv in a CI clone there) keeps its path
    inside, where /tmp is the private work folder's; before, bwrap failed ("Can't make symlink at /tmp")."""
    assert str(tmp_path).startswith("/tmp/")
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "greeting.py").write_text("print('hello from', __file__)\n")
    os.chmod(tmp_path, 0o755)  # the dropped uid must traverse the folders above it
    os.chmod(tool, 0o755)
    out = tmp_path / "out"
    with Sandbox(IsolationPolicy(**SMALL), ro_binds=[tool]) as sb, open(out, "wb") as f:
        rc = sb.run([sys.executable, "-I", str(tool / "greeting.py")], timeout_s=10, stdin=subprocess.DEVNULL,
                    stdout=f, stderr=subprocess.STDOUT)
    assert rc == 0 and out.read_text() == f"hello from {tool / 'greeting.py'}\n", out.read_text()


def test_the_host_sees_the_sandboxed_process_as_nobody(tmp_path):
    pol = IsolationPolicy(**SMALL)
    with Sandbox(pol) as sb:
        proc = sb.popen([sys.executable, "-I", "-c", "import time; time.sleep(30)"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(sb.pids()) < 3:
                time.sleep(0.05)
            seen = {}
            for pid in sb.pids():  # the launcher (bwrap), the namespace's init, python
                status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
                seen[pid] = (status["Uid"].split(), status["CapEff"].strip())
            assert len(seen) == 3
            assert all(uids == ["65534"] * 4 for uids, _ in seen.values())  # real, effective, saved, fs
            assert {caps for _, caps in seen.values()} == {"0000000000000000"}  # no capability, in any namespace
        finally:
            sb.kill(proc)


def test_host_secrets_and_environment_are_invisible(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    monkeypatch.setenv("OPENQWEN_TEST_SECRET", "hunter2")
    code = (f"import os\n"
            f"for p in [{str(secret)!r}, '/etc/shadow', '/root/.bash_history', {str(Path.cwd() / 'pyproject.toml')!r}]:\n"
            "    try:\n        open(p).read(); print('READ', p)\n    except OSError as e:\n        print(type(e).__name__)\n"
            "print('hunter2' in repr(dict(os.environ)))\n")
    rc, out, err, _, _ = run(code, tmp_path)
    assert rc == 0, err
    assert out.split() == ["FileNotFoundError"] * 4 + ["False"]


def test_writes_outside_the_work_folder_fail(tmp_path):
    target = tmp_path / "dropped.txt"
    code = (f"import os\nfor p in ['/x', '/usr/x', '/etc/x', '/dev/x', '/dev/shm/x', '/proc/x', {str(target)!r}]:\n"
            "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n    except OSError as e:\n        print(e.errno)\n"
            "open('/sandbox/ok.txt', 'w').write('fine'); open('/tmp/ok.txt', 'w').write('fine'); print('work ok')\n")
    rc, out, err, _, _ = run(code, tmp_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert "WROTE" not in out and lines[-1] == "work ok" and len(lines) == 8
    assert not target.exists()


def test_no_network_neither_loopback_nor_outside(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port, got, done = srv.getsockname()[1], [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                got.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    code = ("import socket\n"
            f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('10.0.0.1', 80)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=2); print('CONNECTED', addr)\n"
            "    except OSError as e:\n        print(type(e).__name__, e.errno)\n"
            "try:\n    socket.getaddrinfo('example.com', 80); print('RESOLVED')\nexcept OSError as e:\n    print('gaierror')\n")
    try:
        rc, out, err, _, enforced = run(code, tmp_path)
    finally:
        done.set()
        t.join()
        srv.close()
    assert rc == 0, err
    assert out.splitlines() == ["ConnectionRefusedError 111", "OSError 101", "OSError 101", "gaierror"]
    assert not got and enforced["network"].startswith("none")


def test_other_processes_cmdlines_and_environments_are_invisible(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENQWEN_TEST_SECRET", "hunter2")
    code = ("import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nprint(pids)\n"
            "blob = b''\nfor p in pids:\n    for f in ('cmdline', 'environ'):\n"
            "        try:\n            blob += open(f'/proc/{p}/{f}', 'rb').read()\n        except OSError:\n            pass\n"
            "print(b'hunter' + b'2' in blob, b'py' + b'test' in blob)\n")  # not spelt out in this very cmdline
    rc, out, err, _, _ = run(code, tmp_path)
    assert rc == 0, err
    assert out.splitlines() == ["[1, 2]", "False False"]  # the namespace's init and the program itself


def test_killing_the_parent_reaches_only_the_sandbox(tmp_path):
    me = os.getpid()
    code = ("import os, signal\n"
            f"for pid in ({me}, os.getppid(), 1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL); print('sent', pid)\n"
            "    except OSError as e:\n        print(type(e).__name__)\n"
            "print('still', os.getppid())\n")
    rc, out, err, _, _ = run(code, tmp_path)
    assert rc == 0, err
    # the host pid does not exist in there; the init ignores SIGKILL from inside its own namespace
    assert out.splitlines()[0] in ("ProcessLookupError", "sent %d" % me) and out.splitlines()[-1] == "still 1"
    assert out.splitlines()[0] == "ProcessLookupError" or me not in range(1, 3)


def test_process_limit_with_a_bounded_number_of_forks(tmp_path):
    # harmless first: 30 sleeping children at most, the limit (16 tasks, 3 of them the launcher,
    # the init and the program) refuses the 14th
    code = ("import os, time\nkids = 0\ntry:\n    for _ in range(30):\n        if os.fork() == 0:\n"
            "            time.sleep(20)\n            os._exit(0)\n        kids += 1\nexcept BlockingIOError:\n    pass\n"
            "print(kids)\n")
    rc, out, err, wall, enforced = run(code, tmp_path)
    if not enforced["processes"].startswith("cgroup"):
        pytest.skip(f"no pids cgroup here: {enforced['processes']}")
    assert rc == 0, err
    assert out.strip() == "13" and wall < 10  # the sleepers died with the program's namespace


def test_fork_bomb_is_capped_and_killed_in_time(tmp_path):
    t0 = time.monotonic()
    rc, out, err, wall, enforced = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                                       tmp_path, timeout=2.0)
    if not enforced["processes"].startswith("cgroup"):
        pytest.skip(f"no pids cgroup here: {enforced['processes']}")
    assert rc is None and wall < 10
    assert os.fork is not None and time.monotonic() - t0 < 12  # and the host can still start processes:
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.slow
def test_shell_fork_bomb_is_capped(tmp_path):
    rc, out, err, wall, enforced = run("import os\nos.system(':(){ :|:& };:')\nimport time\ntime.sleep(30)\n",
                                       tmp_path, timeout=2.0)
    assert rc is None and wall < 10


def test_memory_bomb_hits_the_address_space_limit(tmp_path):
    rc, out, err, _, _ = run("x = []\nwhile True:\n    x.append(bytearray(20_000_000))\n", tmp_path)
    assert rc == 1 and "MemoryError" in err


def test_memory_bomb_below_the_address_space_limit_hits_the_cgroup(tmp_path):
    # 200 MB touched for real with a 1 GB address space but a 64 MB memory cgroup: the OOM killer
    rc, out, err, _, enforced = run("x = b'x' * (200 << 20)\nprint('survived')\n", tmp_path, memory_mb=64,
                                    address_space_mb=1024)
    if enforced["memory_cgroup"].startswith("none"):
        pytest.skip(enforced["memory_cgroup"])
    assert rc == 128 + signal.SIGKILL and "survived" not in out


def test_infinite_loop_is_killed_at_the_wall_clock_timeout(tmp_path):
    rc, out, err, wall, _ = run("while True:\n    pass\n", tmp_path, timeout=1.0)
    assert rc is None and wall < 6


def test_a_loop_that_ignores_signals_is_killed_anyway(tmp_path):
    code = ("import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGXCPU, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n")
    rc, _, _, wall, _ = run(code, tmp_path, timeout=1.0)
    assert rc is None and wall < 6


@pytest.mark.slow
def test_a_loop_that_ignores_sigxcpu_dies_at_the_hard_cpu_limit(tmp_path):
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    rc, _, _, wall, _ = run(code, tmp_path, timeout=60, cpu_seconds=1)  # no wall clock: RLIMIT_CPU's SIGKILL
    assert rc == 128 + signal.SIGKILL


def test_a_200_mb_print_is_cut_at_the_file_size_limit(tmp_path):
    rc, out, err, wall, _ = run("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 1_000_000)\n",
                                tmp_path, timeout=20)
    assert rc not in (0, None)  # SIGXFSZ at 4 MB
    assert (tmp_path / "out").stat().st_size == 4 << 20


def test_filling_the_disk_stops_at_the_work_folder_size(tmp_path):
    code = ("import os\nn = 0\ntry:\n    while True:\n        with open(f'f{n}', 'wb') as f:\n"
            "            f.write(b'x' * 1_000_000)\n        n += 1\nexcept OSError as e:\n    print(e.errno, n)\n")
    rc, out, err, _, enforced = run(code, tmp_path)
    assert rc == 0, err
    errno, files = out.split()
    assert errno == "28" and int(files) <= 8 and enforced["disk"] == "tmpfs 8 MB"  # ENOSPC at 8 MB


def test_a_spawned_shell_is_inside_the_sandbox_too(tmp_path):
    code = "import subprocess\nprint(subprocess.run(['sh', '-c', 'id -u; ls /; cat /etc/shadow'], capture_output=True, text=True))\n"
    rc, out, err, _, _ = run(code, tmp_path)
    assert rc == 0, err
    assert "stdout='65534\\n" in out and "No such file" in out and "home" not in out


def test_input_gets_end_of_file_at_once(tmp_path):
    rc, out, err, wall, _ = run("input('your name? ')\n", tmp_path, timeout=5)
    assert rc == 1 and "EOFError" in err and wall < 5


def test_policy_is_validated():
    with pytest.raises(ValueError, match="memory_mb"):
        IsolationPolicy(memory_mb=0).validate()
    with pytest.raises(ValueError, match="max_processes"):
        IsolationPolicy(max_processes=2).validate()
