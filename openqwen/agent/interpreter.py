"""The code interpreter: a stateful Python (Jupyter) kernel per session, inside a :class:`Sandbox`.

The kernel is the real ipykernel, started through :class:`openqwen.agent.isolation.Sandbox` (its own
user, PID, network and mount namespaces; cgroup and rlimits; uid nobody) and spoken to with
jupyter_client over Unix sockets in a folder shared with the host (the sandbox has no network, so
the usual TCP transport would not reach it). The sandbox, not the kernel, is the boundary: nothing
here trusts code running in the kernel.

>>> with CodeInterpreter() as ci:                                   # doctest: +SKIP
...     ci.run("x = 6 * 7").ok, ci.run("x").result
(True, '42')

Per call (:meth:`CodeInterpreter.run`): stdout, stderr, the last expression's value, an error with
its traceback, and every matplotlib figure as PNG (bytes, and a file in ``figures_dir``). Output
past ``max_output_chars`` is cut with a note. A call that runs past its wall-clock timeout, or a
kernel that dies (out of memory, ``os._exit``, a kill), is answered with an error at once, and the
kernel is killed; the next call starts a fresh one: variables are lost, the work folder's files are kept.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .isolation import IsolationPolicy, Sandbox

__all__ = ["CodeInterpreter", "ExecutionResult", "Figure", "interpreter_policy"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONN_INSIDE = "/run/kernel"


def interpreter_policy(**overrides: Any) -> IsolationPolicy:
    """The interpreter's defaults: 1 GB of memory (the kernel maps 2 GB of address space it never
    touches), 64 tasks (the kernel alone runs ~10 threads), 10 CPU minutes per kernel, 128 MB of disk."""
    base = dict(memory_mb=1024, address_space_mb=None, max_processes=64, cpu_seconds=600, disk_mb=128,
                wall_timeout_s=30.0)
    base.update(overrides)
    if base["address_space_mb"] is None:
        base["address_space_mb"] = max(2 * base["memory_mb"], 2048)
    return IsolationPolicy(**base)


@dataclass
class Figure:
    """One matplotlib figure a call produced."""

    png: bytes
    path: Path | None = None

    def to_dict(self) -> dict[str, str]:
        return {"mime": "image/png", "data": base64.b64encode(self.png).decode("ascii"),
                "path": str(self.path) if self.path else ""}


@dataclass
class ExecutionResult:
    """What one call of the interpreter did."""

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    """The last expression's value (its text/plain repr), as in a notebook's Out[n]."""
    error: str | None = None
    """``ErrorName: message`` and the traceback, or the sandbox's reason (timeout, kernel died)."""
    figures: list[Figure] = field(default_factory=list)
    timed_out: bool = False
    restarted: bool = False
    """The kernel was killed and started again: variables from earlier calls are gone."""
    truncated: bool = False
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """The text a model sees as the tool's observation."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.result is not None:
            parts.append(self.result)
        if self.figures:
            parts.append(f"[{len(self.figures)} figure(s): "
                         + ", ".join(f.path.name if f.path else "in memory" for f in self.figures) + "]")
        if self.error:
            parts.append(self.error)
        return "\n".join(parts) if parts else "[no output]"

    def to_dict(self) -> dict[str, Any]:
        return {"stdout": self.stdout, "stderr": self.stderr, "result": self.result, "error": self.error,
                "figures": [f.to_dict() for f in self.figures], "timed_out": self.timed_out,
                "restarted": self.restarted, "truncated": self.truncated, "wall_s": round(self.wall_s, 3)}


class _Capped:
    """Text kept up to a budget shared by stdout and stderr; counts what was cut."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.cut = limit, 0, 0

    def take(self, text: str) -> str:
        room = max(0, self.limit - self.used)
        kept = text[:room]
        self.used += len(kept)
        self.cut += len(text) - len(kept)
        return kept


class CodeInterpreter:
    """A sandboxed, stateful Python kernel. Start with ``with`` (or :meth:`start`), then :meth:`run`.

    policy: the sandbox's limits (default :func:`interpreter_policy`); ``policy.wall_timeout_s`` is
    the default timeout per call. figures_dir: where PNG files go (default: a host-only folder of the
    session, deleted at :meth:`close`). max_output_chars: stdout+stderr kept per call.
    """

    def __init__(self, policy: IsolationPolicy | None = None, figures_dir: str | Path | None = None,
                 max_output_chars: int = 20_000, startup_timeout_s: float = 60.0) -> None:
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        self.policy = policy or interpreter_policy()
        self.max_output_chars = max_output_chars
        self.startup_timeout_s = startup_timeout_s
        self._figures_dir = Path(figures_dir) if figures_dir else None
        self.sandbox: Sandbox | None = None
        self._proc = None
        self._client = None
        self._fig_count = 0
        self.restarts = 0

    # ------------------------------------------------------------------------------ life cycle
    @property
    def workdir(self) -> Path:
        """The session's work folder on the host (``/sandbox`` inside)."""
        self._need_started()
        return self.sandbox.host_workdir  # type: ignore[union-attr]

    @property
    def figures_dir(self) -> Path:
        self._need_started()
        return self._figures_dir or self.sandbox.root / "figures"  # type: ignore[union-attr]

    @property
    def enforced(self) -> dict[str, str]:
        self._need_started()
        return dict(self.sandbox.enforced)  # type: ignore[union-attr]

    def start(self) -> "CodeInterpreter":
        if self.sandbox is None:
            self.sandbox = Sandbox(self.policy, persistent=True)
        self._start_kernel()
        return self

    def _need_started(self) -> None:
        if self.sandbox is None:
            raise RuntimeError("the interpreter is not started: use `with CodeInterpreter() as ci:` or call start()")

    def _start_kernel(self) -> None:
        from jupyter_client import BlockingKernelClient  # noqa: PLC0415

        sb = self.sandbox
        assert sb is not None
        conn = sb.root / "conn"
        if conn.exists():
            for p in conn.iterdir():
                if p.is_file() or p.is_socket():
                    p.unlink()
        conn.mkdir(exist_ok=True)
        os.chmod(conn, 0o700)
        if sb.support.root:
            os.chown(conn, sb.uid, sb.gid)
        key = secrets.token_hex(16)
        info = {"transport": "ipc", "signature_scheme": "hmac-sha256", "key": key, "kernel_name": "python3",
                "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
        (conn / "kernel.json").write_text(json.dumps({**info, "ip": f"{_CONN_INSIDE}/k"}))
        if sb.support.root:
            os.chown(conn / "kernel.json", sb.uid, sb.gid)
        env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "IPYTHONDIR": f"{_CONN_INSIDE}/ipython",
               "MPLCONFIGDIR": f"{_CONN_INSIDE}/mpl", "JUPYTER_RUNTIME_DIR": f"{_CONN_INSIDE}/rt",
               "JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", f"{_CONN_INSIDE}/kernel.json",
                "--HistoryManager.enabled=False", "--InteractiveShell.colors=NoColor"]
        log = open(sb.root / "kernel.log", "ab")
        try:
            self._proc = sb.popen(argv, env=env, extra_binds=[(conn, _CONN_INSIDE)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log)
        finally:
            log.close()
        client = BlockingKernelClient()
        client.load_connection_info({**info, "ip": str(conn / "k")})
        client.start_channels()
        self._client = client
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._proc.poll() is not None:
                self._stop_client()
                raise RuntimeError(f"the sandboxed kernel exited at start (status {self._proc.returncode}); its log:\n"
                                   + (sb.root / "kernel.log").read_text(errors="replace")[-2000:])
            try:
                client.wait_for_ready(timeout=1.0)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    self._kill_kernel()
                    raise RuntimeError(f"the sandboxed kernel did not answer within {self.startup_timeout_s:.0f} s")

    def _stop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.stop_channels()
            except Exception:  # noqa: BLE001 - the kernel may be gone
                pass
            self._client = None

    def _kill_kernel(self) -> None:
        self._stop_client()
        if self.sandbox is not None:
            self.sandbox.kill(self._proc)
        self._proc = None

    def restart(self) -> None:
        """Kill the kernel and start a fresh one (variables are lost; the work folder stays)."""
        self._need_started()
        self._kill_kernel()
        self.restarts += 1
        self._start_kernel()

    def close(self) -> None:
        self._kill_kernel()
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __enter__(self) -> "CodeInterpreter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ one call
    def run(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
        """Run ``code`` in the kernel; wait at most ``timeout_s`` (default: the policy's wall timeout)."""
        self._need_started()
        if self._client is None or self._proc is None or self._proc.poll() is not None:
            self._kill_kernel()
            self._start_kernel()
        timeout = float(timeout_s if timeout_s is not None else self.policy.wall_timeout_s)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        client = self._client
        t0 = time.monotonic()
        res = ExecutionResult()
        cap = _Capped(self.max_output_chars)
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        done = False
        while not done:
            left = t0 + timeout - time.monotonic()
            if left <= 0:
                res.timed_out = True
                res.error = (f"TimeoutError: the call ran past its {timeout:g} s limit; the kernel was killed and "
                             "the next call starts a fresh one (variables are lost, files in the work folder are kept)")
                break
            try:
                msg = client.get_iopub_msg(timeout=min(0.1, left))
            except Exception:  # queue.Empty: nothing yet
                if self._proc.poll() is not None:
                    res.error = self._death_reason()
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content.get("name", "stdout") if content.get("name") in out else "stdout"].append(
                    cap.take(content.get("text", "")))
            elif kind == "execute_result":
                res.result = cap.take(content.get("data", {}).get("text/plain", ""))
            elif kind == "display_data":
                data = content.get("data", {})
                if "image/png" in data:
                    res.figures.append(self._save_figure(base64.b64decode(data["image/png"])))
                elif "text/plain" in data:
                    out["stdout"].append(cap.take(data["text/plain"] + "\n"))
            elif kind == "error":
                tb = "\n".join(_ANSI.sub("", line) for line in content.get("traceback", []))
                res.error = cap.take(tb.strip() or f"{content.get('ename')}: {content.get('evalue')}")
                if not res.error.rstrip().endswith(str(content.get("evalue", ""))):
                    res.error += f"\n{content.get('ename')}: {content.get('evalue')}"
            elif kind == "status" and content.get("execution_state") == "idle":
                done = True
        res.stdout, res.stderr = "".join(out["stdout"]), "".join(out["stderr"])
        if cap.cut:
            res.truncated = True
            note = f"\n[... {cap.cut} more characters of output cut by the interpreter]\n"
            if res.stderr and not res.stdout:
                res.stderr += note
            else:
                res.stdout += note
        if res.timed_out or (res.error is not None and self._proc.poll() is not None):
            # killed now, started again lazily by the next call: this one returns at its deadline
            self._kill_kernel()
            self.restarts += 1
            res.restarted = True
        res.wall_s = time.monotonic() - t0
        return res

    def _death_reason(self) -> str:
        rc = self._proc.returncode if self._proc is not None else None
        why = f"exit status {rc}"
        if rc is not None and (rc < 0 or rc > 128):
            sig = -rc if rc < 0 else rc - 128
            try:
                why = f"killed by {signal.Signals(sig).name}"
            except ValueError:
                pass
            if sig == 9:
                why += " (the memory limit, or a kill from inside the sandbox)"
            elif sig == 24:
                why += " (the CPU-time limit)"
        return (f"KernelDied: the sandboxed kernel died ({why}); the next call starts a fresh one (variables are "
                "lost, files in the work folder are kept)")

    def _save_figure(self, png: bytes) -> Figure:
        folder = self.figures_dir
        folder.mkdir(parents=True, exist_ok=True)
        self._fig_count += 1
        path = folder / f"figure-{self._fig_count:03d}.png"
        path.write_bytes(png)
        return Figure(png=png, path=path)
