"""Cgroups for the sandbox: where this process may make child cgroups, one per sandbox with its
limits, and, when it may not, why (in words that say what to change).

Two layouts exist. **cgroup v1** (and hybrid hosts, as this one): a hierarchy per controller under
``/sys/fs/cgroup/<controller>``; a child of our own cgroup there gets ``pids.max``,
``memory.limit_in_bytes``, ``cpu.cfs_quota_us``. **cgroup v2** (unified): one hierarchy; a child of
our cgroup gets ``pids.max``, ``memory.max`` (and ``memory.swap.max`` 0), ``cpu.max`` only when
the controllers are *delegated* to us: listed in our cgroup's ``cgroup.subtree_control`` and the
folder writable (systemd: ``Delegate=yes``; a container: a writable cgroup namespace). On a hybrid
host the v2 hierarchy holds no controller that a v1 hierarchy has taken.

:func:`detect` reports what is usable and a ``problem`` line for what is not; the sandbox falls back
to rlimits (``RLIMIT_NPROC``, ``RLIMIT_AS``) unless its policy says ``require_cgroups``, in which
case that line is the :class:`~openqwen.agent.isolation.SandboxUnavailable` message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["CONTROLLERS", "CgroupSupport", "detect", "kill_all", "make_cgroups"]

CONTROLLERS = ("pids", "memory", "cpu")
_V1_LIMIT = {"pids": "pids.max", "memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us"}
_V2_LIMIT = {"pids": "pids.max", "memory": "memory.max", "cpu": "cpu.max"}
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupSupport:
    bases: dict[str, Path]
    """controller -> the folder under which sandbox cgroups are made (v1: one per controller)."""
    version: int
    """1, 2, or 0 when none is usable."""
    problem: str = ""
    """Why a controller of :data:`CONTROLLERS` is not usable ('' when all are), and what to change."""


def probe_child(base: Path, limit_file: str) -> bool:
    """Can we make a child cgroup of ``base`` that has ``limit_file`` and accepts processes?"""
    probe = base / f"openqwen-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / limit_file).exists() and os.access(probe / "cgroup.procs", os.W_OK)
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def _read(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _v1_bound() -> set[str]:
    """Controllers the kernel has bound to a cgroup v1 hierarchy (``/proc/cgroups``: hierarchy != 0)."""
    try:
        rows = [ln.split() for ln in Path("/proc/cgroups").read_text().splitlines() if not ln.startswith("#")]
    except OSError:
        return set()
    return {r[0] for r in rows if len(r) >= 2 and r[1] != "0"}


def detect(proc_cgroup: str | None = None, fs_root: Path = Path("/sys/fs/cgroup"),
           probe: Callable[[Path, str], bool] = probe_child) -> CgroupSupport:
    """The cgroups this process may use. ``proc_cgroup``: the text of ``/proc/self/cgroup`` (read
    when None); ``fs_root``: where the hierarchies are mounted; ``probe``: the test of a base folder
    (tests pass their own, to walk the v2 path on a host that has none)."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return CgroupSupport({}, 0, "/proc/self/cgroup is not readable: no cgroup limits")
    lines = [ln for ln in proc_cgroup.splitlines() if ln.count(":") >= 2]
    found: dict[str, Path] = {}
    for line in lines:  # cgroup v1: "N:controller[,controller]:/path"
        _, ctrls, rel = line.split(":", 2)
        for ctrl in ctrls.split(","):
            if ctrl in CONTROLLERS:
                base = fs_root / ctrl / rel.lstrip("/")
                if probe(base, _V1_LIMIT[ctrl]):
                    found[ctrl] = base
    if found:
        missing = [c for c in CONTROLLERS if c not in found]
        return CgroupSupport(found, 1, f"cgroup v1: no writable {', '.join(missing)} hierarchy" if missing else "")
    v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
    if not v2 or not (fs_root / "cgroup.controllers").exists():
        return CgroupSupport({}, 0, f"no writable cgroup v1 {'/'.join(CONTROLLERS)} hierarchy and no cgroup v2 "
                                    f"hierarchy at {fs_root}: processes and memory are limited by rlimits only")
    base = fs_root / v2[0].lstrip("/")
    available, enabled = _read(base / "cgroup.controllers"), _read(base / "cgroup.subtree_control")
    in_v1 = {c for ln in lines if not ln.startswith("0:") for c in ln.split(":", 2)[1].split(",")} | _v1_bound()
    reasons = []
    for ctrl in CONTROLLERS:
        if ctrl not in available:
            reasons.append(f"{ctrl} is not in {base}/cgroup.controllers"
                           f"{' (a cgroup v1 hierarchy holds it on this host)' if ctrl in in_v1 else ''}")
        elif ctrl not in enabled:
            reasons.append(f"{ctrl} is not enabled in {base}/cgroup.subtree_control (not delegated)")
        elif not probe(base, _V2_LIMIT[ctrl]):
            reasons.append(f"cannot make a child cgroup with {_V2_LIMIT[ctrl]} in {base} (no write access)")
        else:
            found[ctrl] = base
    problem = ""
    if reasons:
        problem = ("cgroup v2: " + "; ".join(reasons) + ". Delegate the controllers to this process (systemd: "
                   "`systemd-run --scope -p Delegate=yes ...`; a container: a writable cgroup namespace with "
                   "`+pids +memory +cpu` in its cgroup.subtree_control) to have them enforced")
    return CgroupSupport(found, 2 if found else 0, problem)


def make_cgroups(support: CgroupSupport, name: str, max_processes: int, memory_mb: int,
                 cpu_cores: float) -> dict[str, Path]:
    """One child cgroup ``name`` per usable base, its limits written; controller -> folder. A
    controller whose folder cannot be made or written is left out (the rlimits still hold)."""
    v1 = support.version == 1
    made: dict[Path, bool] = {}
    out: dict[str, Path] = {}
    for ctrl, base in support.bases.items():
        cg = base / name
        try:
            if cg not in made:
                cg.mkdir()
                made[cg] = True
            if ctrl == "pids":
                (cg / "pids.max").write_text(str(max_processes))
            elif ctrl == "memory":
                limit = memory_mb << 20
                if v1:
                    (cg / "memory.limit_in_bytes").write_text(str(limit))
                    if (cg / "memory.memsw.limit_in_bytes").exists():
                        (cg / "memory.memsw.limit_in_bytes").write_text(str(limit))
                else:
                    (cg / "memory.max").write_text(str(limit))
                    if (cg / "memory.swap.max").exists():
                        (cg / "memory.swap.max").write_text("0")
            else:
                quota = max(1000, int(cpu_cores * CPU_PERIOD_US))
                if v1:
                    (cg / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (cg / "cpu.cfs_quota_us").write_text(str(quota))
                else:
                    (cg / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            out[ctrl] = cg
        except OSError:
            continue
    return out


def kill_all(cgroups: dict[str, Path]) -> bool:
    """SIGKILL every process of a v2 cgroup at once (``cgroup.kill``, Linux 5.14+); False when no
    folder has it (v1: the caller kills pid by pid)."""
    for cg in dict.fromkeys(cgroups.values()):
        if (cg / "cgroup.kill").exists():
            try:
                (cg / "cgroup.kill").write_text("1")
                return True
            except OSError:
                continue
    return False
