"""Run untrusted code (model completions) in a separate, limited process.

Never ``exec`` model output in the harness process: a completion can loop forever, allocate without
bound, fork, write files, or open sockets. :func:`run_code` writes the program to a fresh temporary
directory and runs it with a fresh Python interpreter that, before any of the program runs, applies:

=================  ===========================================================================
limit              how it is enforced
=================  ===========================================================================
wall time          the parent kills the whole process group (and cgroup) after ``timeout_s``;
                   ``RLIMIT_CPU`` backs it up inside the child
memory             ``RLIMIT_AS`` (address space) of ``memory_mb`` per process
processes          a cgroup ``pids.max`` when the cgroup pids controller is writable (root in a
                   container or VM); else ``RLIMIT_NPROC`` (which the kernel does not apply to
                   root, so then only the time limit and the process-group kill bound a fork bomb)
file size          ``RLIMIT_FSIZE`` (also caps the captured stdout/stderr, which go to files)
network            a new, empty network namespace (``unshare(CLONE_NEWNET)``, as root or through
                   an unprivileged user namespace) when the kernel allows it; in every case an
                   audit hook refuses socket creation/connection from Python code
files              the working directory is a fresh temp dir, deleted afterwards; the process
                   keeps the caller's user, so it can still *read* what the caller can read
=================  ===========================================================================

Each :class:`RunResult` says in ``enforced`` which of these mechanisms were actually in force, so a
report can be honest about the isolation it had. This is a guard against accidents and careless
model output, not a security boundary against a determined attacker (the audit hook is bypassable
through ``ctypes``; only the network namespace and the kernel limits are hard).

The module is reused by the agent's code interpreter (``openqwen.agent``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["SandboxLimits", "RunResult", "run_code", "run_many"]


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run; every default is sized for a HumanEval-style unit test."""

    timeout_s: float = 10.0
    """Wall-clock seconds before the whole run is killed (status ``timeout``)."""
    memory_mb: int = 1024
    """Address-space limit per process (``RLIMIT_AS``); ``MemoryError`` past it."""
    max_processes: int = 8
    """Processes/threads the run may have at once, itself included (cgroup ``pids.max`` or
    ``RLIMIT_NPROC``)."""
    max_file_mb: int = 16
    """Largest file the run may write (``RLIMIT_FSIZE``); also caps captured output."""
    max_output_chars: int = 20_000
    """Characters of stdout/stderr kept in the result (the rest is cut, and says so)."""
    network: bool = False
    """Allow the network (default: no network namespace interfaces, sockets refused)."""


@dataclass
class RunResult:
    """What one sandboxed run did."""

    status: str
    """``passed`` (exit 0), ``failed`` (non-zero exit or killed by a signal) or ``timeout``."""
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    enforced: dict[str, str] = field(default_factory=dict)
    """Mechanism in force per limit, e.g. ``{"network": "netns+audit-hook", "processes": "cgroup"}``."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def reason(self) -> str:
        """One line on why the run did not pass ('' when it passed)."""
        if self.passed:
            return ""
        if self.status == "timeout":
            return "timed out"
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {signal.Signals(-self.returncode).name}"
        return f"exit status {self.returncode}"


# The child's first steps, run by a fresh `python -I` before the program. It reports on the fd
# given in argv what it managed to enforce, then executes the program file as __main__.
_BOOTSTRAP = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
report = {}
if cfg["cgroup"]:
    try:
        with open(cfg["cgroup"] + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        report["processes"] = "cgroup pids.max"
    except OSError as e:
        report["processes"] = "none (cgroup join failed: %s)" % e
if not cfg["network"]:
    net = "audit-hook"
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
        if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            net = "netns+audit-hook"
    except Exception:
        pass
    report["network"] = net
def limit(name, value):
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
        return True
    except (ValueError, OSError):
        return False
mem = cfg["memory_mb"] << 20
report["memory"] = "RLIMIT_AS" if limit("RLIMIT_AS", mem) else "none"
report["file_size"] = "RLIMIT_FSIZE" if limit("RLIMIT_FSIZE", cfg["max_file_mb"] << 20) else "none"
limit("RLIMIT_CORE", 0)
limit("RLIMIT_CPU", int(cfg["timeout_s"]) + 2)
if "processes" not in report:
    if os.geteuid() == 0:
        report["processes"] = "none (root is exempt from RLIMIT_NPROC; time limit + group kill only)"
    else:
        ok = limit("RLIMIT_NPROC", cfg["nproc_base"] + cfg["max_processes"])
        report["processes"] = "RLIMIT_NPROC" if ok else "none"
report["time"] = "wall-clock kill + RLIMIT_CPU"
with os.fdopen(cfg["report_fd"], "w") as f:
    json.dump(report, f)
if not cfg["network"]:
    _blocked = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                "socket.gethostbyname", "socket.sendto", "socket.socketpair"}
    def _no_network(event, args, _blocked=_blocked):
        if event in _blocked:
            raise PermissionError("network access is disabled in the openqwen sandbox")
    sys.addaudithook(_no_network)
del json, resource, cfg, report, limit, mem
path = os.path.abspath("main.py")
sys.argv = [path]
sys.path.insert(0, os.path.dirname(path))
code = compile(open(path, encoding="utf-8").read(), path, "exec")
exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
"""

_counter = itertools.count()
_cgroup_lock = threading.Lock()
_cgroup_root: Path | None | bool = False  # False: not probed yet; None: unavailable


def _pids_cgroup_root() -> Path | None:
    """A cgroup folder under which this process may create children with ``pids.max`` (or None)."""
    global _cgroup_root
    with _cgroup_lock:
        if _cgroup_root is not False:
            return _cgroup_root  # type: ignore[return-value]
        candidates = [Path("/sys/fs/cgroup/pids")]  # cgroup v1
        try:  # cgroup v2: our own cgroup, if the pids controller is delegated to it
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    candidates.append(Path("/sys/fs/cgroup") / line[3:].lstrip("/"))
        except OSError:
            pass
        _cgroup_root = None
        for base in candidates:
            probe = base / f"openqwen-probe-{os.getpid()}"
            try:
                probe.mkdir()
                try:
                    (probe / "pids.max").write_text("4")
                    _cgroup_root = base
                finally:
                    probe.rmdir()
                break
            except OSError:
                continue
        return _cgroup_root


def _user_process_count() -> int:
    """Processes of this user (RLIMIT_NPROC counts all of them, not just the sandbox's)."""
    uid = os.getuid()
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                n += d.stat().st_uid == uid
            except OSError:
                pass
    return n


def _kill_group(proc: subprocess.Popen, cgroup: Path | None) -> None:
    """Kill the run's process group and everything left in its cgroup (forked children too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is None:
        return
    for _ in range(200):  # processes may still be forking while we kill; pids.max bounds them
        try:
            pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _read_capped(path: Path, max_chars: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(max_chars * 4 + 1)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(text) > max_chars:
        text = text[:max_chars] + "\n[... output cut by the sandbox]"
    return text


def run_code(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    limits: SandboxLimits | None = None,
    python: str | None = None,
) -> RunResult:
    """Run the Python program ``code`` in a sandboxed subprocess; return its :class:`RunResult`.

    ``timeout_s`` and ``memory_mb`` override the fields of ``limits`` (defaults:
    :class:`SandboxLimits`). ``python`` is the interpreter (default: the current one).

    >>> run_code("print(6 * 7)").stdout
    '42\\n'
    """
    lim = SandboxLimits() if limits is None else SandboxLimits(**vars(limits))
    lim.timeout_s, lim.memory_mb = timeout_s, memory_mb
    if lim.timeout_s <= 0 or lim.memory_mb <= 0 or lim.max_processes < 1:
        raise ValueError(f"sandbox limits must be positive, got {lim}")
    workdir = Path(tempfile.mkdtemp(prefix="openqwen-sandbox-"))
    cgroup: Path | None = None
    root = _pids_cgroup_root()
    if root is not None:
        cgroup = root / f"openqwen-sandbox-{os.getpid()}-{next(_counter)}"
        try:
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(lim.max_processes))
        except OSError:
            cgroup = None
    read_fd, write_fd = os.pipe()
    t0 = time.perf_counter()
    try:
        (workdir / "main.py").write_text(code, encoding="utf-8")
        cfg = {
            "cgroup": str(cgroup) if cgroup else "",
            "network": lim.network,
            "memory_mb": lim.memory_mb,
            "max_file_mb": lim.max_file_mb,
            "timeout_s": lim.timeout_s,
            "max_processes": lim.max_processes,
            "nproc_base": 0 if cgroup or os.geteuid() == 0 else _user_process_count(),
            "report_fd": write_fd,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(workdir / ".stdout", "wb") as out, open(workdir / ".stderr", "wb") as err:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                pass_fds=(write_fd,), start_new_session=True,  # own process group, killed as one
            )
        os.close(write_fd)
        write_fd = -1
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=lim.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
        _kill_group(proc, cgroup)  # also reaps children that outlived a finished parent
        if timed_out:
            proc.wait()
        wall = time.perf_counter() - t0
        with os.fdopen(read_fd, "r") as f:
            read_fd = -1
            try:
                enforced = json.loads(f.read() or "{}")
            except json.JSONDecodeError:
                enforced = {}
        status = "timeout" if timed_out else ("passed" if rc == 0 else "failed")
        return RunResult(
            status=status, returncode=rc,
            stdout=_read_capped(workdir / ".stdout", lim.max_output_chars),
            stderr=_read_capped(workdir / ".stderr", lim.max_output_chars),
            wall_s=wall, enforced=enforced,
        )
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if cgroup is not None:
            for _ in range(100):
                try:
                    cgroup.rmdir()
                    break
                except OSError:  # busy until the last killed process is gone
                    time.sleep(0.01)
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(
    programs: Sequence[str] | Iterable[str],
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "sandbox",
) -> list[RunResult]:
    """Run many programs, each in its own sandbox, ``workers`` at a time; results in input order.

    Threads suffice here: each one only waits on its child process.
    """
    programs = list(programs)
    workers = workers or min(8, max(2, (os.cpu_count() or 2) * 2))
    results: list[RunResult | None] = [None] * len(programs)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(programs), desc=desc, unit="prog")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_code, p, timeout_s, memory_mb, limits=limits): i for i, p in enumerate(programs)}
        for fut in futures:
            results[futures[fut]] = fut.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]
