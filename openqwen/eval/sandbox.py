"""Run untrusted code (model completions) in the sandbox of :mod:`openqwen.agent.isolation`.

Never ``exec`` model output in the harness process: a completion can loop forever, allocate without
bound, fork, read or overwrite the caller's files, open sockets, or kill the process that runs it.
:func:`run_code` runs each program with a fresh Python in a fresh :class:`~openqwen.agent.isolation.Sandbox`
(the same isolation as the agent's code interpreter):

=================  ===========================================================================
limit              how it is enforced
=================  ===========================================================================
files              own mount namespace: only /usr and the Python install (read-only) and a
                   private tmpfs work folder (``/sandbox``, also ``/tmp``) exist; the caller's
                   files, /tmp and home are not there to read or overwrite
user               uid 65534 (nobody) outside its own user namespace; no capabilities
processes          a cgroup ``pids.max`` (launcher and the namespace's init included) when the
                   cgroup is writable (root); else ``RLIMIT_NPROC``
other processes    own PID namespace: the evaluation process is invisible and cannot be signalled
memory             ``RLIMIT_AS`` per process and a memory cgroup for the whole run
file size          ``RLIMIT_FSIZE`` (also caps the captured stdout/stderr, which go to files)
network            an empty network namespace (``network=True`` keeps the host's)
wall time          the parent kills every process of the run after ``timeout_s``; ``RLIMIT_CPU``
                   backs it up
=================  ===========================================================================

Each :class:`RunResult` says in ``enforced`` which mechanisms were in force. Not a defence against
kernel exploits (no seccomp filter): see docs/tools.md for what the sandbox guarantees and what not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..agent.isolation import IsolationPolicy, Sandbox

__all__ = ["SandboxLimits", "RunResult", "run_code", "run_many"]


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run; every default is sized for a HumanEval-style unit test."""

    timeout_s: float = 10.0
    """Wall-clock seconds before the whole run is killed (status ``timeout``)."""
    memory_mb: int = 1024
    """Address-space limit per process (``RLIMIT_AS``); ``MemoryError`` past it."""
    max_processes: int = 8
    """Processes/threads the program may have at once, itself included (cgroup ``pids.max``, which
    also counts the sandbox's launcher and init, or ``RLIMIT_NPROC``)."""
    max_file_mb: int = 16
    """Largest file the run may write (``RLIMIT_FSIZE``); also caps captured output."""
    max_output_chars: int = 20_000
    """Characters of stdout/stderr kept in the result (the rest is cut, and says so)."""
    network: bool = False
    """Allow the host's network (default: an empty network namespace, no network at all)."""


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
    """Mechanism in force per limit, e.g. ``{"network": "none (empty network namespace)", "processes":
    "cgroup v1 pids.max=10"}`` (see :attr:`openqwen.agent.isolation.Sandbox.enforced`)."""

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


# The launcher (the outer bubblewrap) and the PID namespace's init are tasks of the run's cgroup too.
_LAUNCHER_TASKS = 2


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


def _policy(lim: SandboxLimits) -> IsolationPolicy:
    return IsolationPolicy(
        memory_mb=lim.memory_mb, max_processes=lim.max_processes + _LAUNCHER_TASKS,
        cpu_seconds=int(lim.timeout_s) + 2, max_file_mb=lim.max_file_mb,
        disk_mb=max(16, 2 * lim.max_file_mb), wall_timeout_s=lim.timeout_s, network=lim.network)


def run_code(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    limits: SandboxLimits | None = None,
    python: str | None = None,
) -> RunResult:
    """Run the Python program ``code`` in a fresh sandbox; return its :class:`RunResult`.

    ``timeout_s`` and ``memory_mb`` override the fields of ``limits`` (defaults:
    :class:`SandboxLimits`). ``python`` is the interpreter (default: the current one; it must live in
    /usr or in the current Python's install, the only software the sandbox can see).

    >>> run_code("print(6 * 7)").stdout
    '42\\n'
    """
    lim = SandboxLimits() if limits is None else SandboxLimits(**vars(limits))
    lim.timeout_s, lim.memory_mb = timeout_s, memory_mb
    if lim.timeout_s <= 0 or lim.memory_mb <= 0 or lim.max_processes < 1:
        raise ValueError(f"sandbox limits must be positive, got {lim}")
    t0 = time.perf_counter()
    with Sandbox(_policy(lim)) as sb:
        program = sb.root / "main.py"
        program.write_text(code, encoding="utf-8")
        fd = os.open(program, os.O_RDONLY)
        try:
            with open(sb.root / ".stdout", "wb") as out, open(sb.root / ".stderr", "wb") as err:
                # normalised: started as ../../.venv/bin/python from a subfolder, sys.executable holds
                # '..' parts through folders the sandbox does not mount, and bwrap cannot exec it
                proc = sb.popen([os.path.abspath(python or sys.executable), "-I", "main.py"], files={"main.py": fd},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        finally:
            os.close(fd)
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=lim.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
        sb.kill(proc)  # also ends children that outlived a finished program
        if rc is not None and rc > 128 and rc - 128 in signal.valid_signals():
            rc = -(rc - 128)  # bubblewrap reports a program killed by signal N as 128 + N
        status = "timeout" if timed_out else ("passed" if rc == 0 else "failed")
        return RunResult(
            status=status, returncode=rc,
            stdout=_read_capped(sb.root / ".stdout", lim.max_output_chars),
            stderr=_read_capped(sb.root / ".stderr", lim.max_output_chars),
            wall_s=time.perf_counter() - t0, enforced=dict(sb.enforced),
        )


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
