"""What the benchmarks that talk to a server process share: a free loopback port, and waiting until
the server answers (or saying why it never will)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, path: str, timeout_s: float, poll_s: float,
                  what: str) -> None:
    """Poll ``url + path`` until it answers 200. A server that exits first, or that does not answer
    within ``timeout_s`` (it is then killed), raises RuntimeError with ``what`` in the message."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    proc.kill()
    raise RuntimeError(f"{what} did not answer {path} in {timeout_s:.0f} s")
