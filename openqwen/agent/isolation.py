"""Run untrusted code (model output) in a sandbox enforced by the kernel, outside the process.

One :class:`Sandbox` is one confined place: a work folder, a set of cgroups and the limits of an
:class:`IsolationPolicy`. :meth:`Sandbox.command` turns a command line into the launcher chain that
runs it inside; the code interpreter (a Jupyter kernel that lives for a session) and the evaluation
sandbox (one program per HumanEval completion) both start their processes through it.

The chain, for a caller running as root (the usual container case)::

    unshare --mount          a private mount namespace for the launcher only, where the Python
      sh -c ...              install is bind-mounted to a staging folder nobody may traverse to
                             (e.g. /root/.pyenv), and the launcher joins the sandbox's cgroups
      prlimit ...            RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_CORE=0
      setpriv ...            the uid drop: uid/gid 65534 (nobody), no groups, no capabilities in any
                             set, no_new_privs; from here on nothing runs as root
      bwrap ...              new user, PID, network, IPC, UTS, cgroup and mount namespaces; a root
                             file system holding /usr read-only, the Python install read-only, the
                             work folder read-write at /sandbox, a fresh /proc and a minimal /dev;
                             nested user namespaces refused; the environment cleared
        COMMAND

A caller that is not root skips the staging, the cgroup join (unless cgroup v2 is delegated to it)
and the uid drop: the sandbox then runs as the caller's own uid, inside the same namespaces.

What the kernel enforces (``Sandbox.enforced`` says, per run, which of these were in force):

==============  ===================================================================================
limit           mechanism
==============  ===================================================================================
files           only /usr, the Python install, a generated /etc/passwd and the work folder exist;
                all read-only but the work folder (``/tmp`` is a link into it)
uid             65534 outside and inside the user namespace: a sandboxed "root" is nobody outside
processes       cgroup ``pids.max`` (threads count too); RLIMIT_NPROC only without a cgroup
memory          cgroup memory limit for the whole sandbox (the OOM killer acts inside it) and
                RLIMIT_AS per process (``MemoryError`` before that)
CPU             cgroup CPU quota (``cpu_cores``) and RLIMIT_CPU per process (SIGXCPU, then SIGKILL)
file size       RLIMIT_FSIZE per file (stdout/stderr files too)
disk            the work folder is a tmpfs of ``disk_mb`` (a host tmpfs mount when root, else a
                private tmpfs; a plain folder only for a persistent sandbox without root)
network         an empty network namespace: its own loopback, no route out, host sockets invisible
other processes a new PID namespace with its own /proc: the host's processes, their command lines
                and environments do not exist; killing "the parent" reaches only the sandbox's init
time            the caller's wall-clock timeout kills every process of the cgroup / PID namespace
==============  ===================================================================================

Not guaranteed: protection against kernel exploits (the kernel is shared; there is no seccomp
filter), covert channels and timing, or denial of service through the shared page cache and disk
I/O bandwidth. See docs/tools.md.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .cgroups import CgroupSupport, kill_all, make_cgroups
from .cgroups import detect as detect_cgroups

__all__ = ["IsolationPolicy", "Sandbox", "SandboxUnavailable", "sandbox_support"]

SANDBOX_WORKDIR = "/sandbox"
"""Where the work folder appears inside the sandbox (cwd, HOME; /tmp links to its .tmp)."""
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """The kernel or the installed tools cannot build the sandbox here (the message says what to install)."""


@dataclass
class IsolationPolicy:
    """The limits of one sandbox. Every limit is enforced by the kernel, none inside the process."""

    memory_mb: int = 1024
    """Memory of the whole sandbox (cgroup) and the address-space limit of each process (RLIMIT_AS)."""
    address_space_mb: int | None = None
    """Per-process RLIMIT_AS when it should differ from ``memory_mb`` (a Jupyter kernel maps far more
    address space than it touches); None: ``memory_mb``."""
    max_processes: int = 32
    """Tasks (processes and threads) alive at once in the sandbox, its launcher and init included."""
    cpu_seconds: int = 60
    """CPU seconds per process (RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later)."""
    cpu_cores: float = 1.0
    """CPU share of the whole sandbox (cgroup quota), in cores."""
    max_file_mb: int = 16
    """Largest file any process may write (RLIMIT_FSIZE)."""
    disk_mb: int = 64
    """Size of the work folder (a tmpfs): everything the sandbox writes, together."""
    max_open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    wall_timeout_s: float = 30.0
    """Wall-clock seconds a run (or one interpreter call) may take before everything is killed; the
    caller that waits enforces it (:meth:`Sandbox.run`, the interpreter, the eval sandbox)."""
    network: bool = False
    """False: an empty network namespace (no network at all). True: the host's network."""
    uid: int = NOBODY
    """The uid (and gid) the sandbox runs as when the caller is root."""
    require_cgroups: bool = False
    """True: refuse to build the sandbox (:class:`SandboxUnavailable`, saying why and what to change)
    unless pids, memory and cpu cgroups are all usable, instead of falling back to rlimits."""

    def validate(self) -> "IsolationPolicy":
        for name in ("memory_mb", "max_processes", "cpu_seconds", "max_file_mb", "disk_mb", "max_open_files"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IsolationPolicy.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.address_space_mb is not None and self.address_space_mb < 1:
            raise ValueError(f"IsolationPolicy.address_space_mb must be positive or None, got {self.address_space_mb}")
        if self.cpu_cores <= 0 or self.wall_timeout_s <= 0:
            raise ValueError("IsolationPolicy.cpu_cores and wall_timeout_s must be > 0, got "
                             f"{self.cpu_cores} and {self.wall_timeout_s}")
        if self.max_processes < 3:
            raise ValueError(f"IsolationPolicy.max_processes must be >= 3 (the launcher, the namespace's init "
                             f"and the program itself count), got {self.max_processes}")
        return self


def _mount_point(path: str | Path) -> str:
    """Where a bind of ``path`` goes inside the sandbox. /tmp there is a symlink to the work folder's
    .tmp, so a Python install below the host's /tmp (a venv in a CI clone under /tmp, say) is mounted
    at the symlink's target: the path still resolves inside, and bwrap does not have to make /tmp a
    folder first (which left it unable to make the symlink: "Can't make symlink at /tmp")."""
    path = str(path)
    if path == "/tmp" or path.startswith("/tmp/"):
        return SANDBOX_WORKDIR + "/.tmp" + path[len("/tmp"):]
    return path


# ------------------------------------------------------------------------------ what the host offers
@dataclass(frozen=True)
class _Support:
    tools: dict[str, str]
    root: bool
    cgroups: dict[str, Path]
    """controller -> the folder under which sandbox cgroups are made (v1: per controller)."""
    cgroup_version: int  # 1, 2, or 0 (none usable)
    problem: str  # '' when a sandbox can be built
    cgroup_problem: str = ""
    """Why pids/memory/cpu cgroups are (partly) unusable here, and what to change ('' when all are)."""


_support_lock = threading.Lock()
_support: _Support | None = None
_counter = itertools.count()


def sandbox_support() -> _Support:
    """Probe once what this host offers (tools, root, cgroups); cached for the process."""
    global _support
    with _support_lock:
        if _support is None:
            names = ["bwrap", "prlimit", "setpriv", "unshare", "mount", "sh"]
            tools = {n: shutil.which(n, path="/usr/bin:/bin:/usr/sbin:/sbin") or "" for n in names}
            root = os.geteuid() == 0
            needed = ["bwrap", "prlimit", "sh"] + (["setpriv", "unshare", "mount"] if root else [])
            missing = [n for n in needed if not tools[n]]
            problem = ""
            if missing:
                problem = (f"the sandbox needs {', '.join(missing)} (bubblewrap and util-linux): install them, e.g. "
                           "`apt-get install bubblewrap util-linux`")
            cg = detect_cgroups()
            _support = _Support(tools, root, cg.bases, cg.version, problem, cg.problem)
        return _support


def _traversable_by_others(path: Path) -> bool:
    """True when a process of another, unprivileged uid can reach ``path`` (every folder above has o+x)."""
    p = path.resolve()
    for part in [p, *p.parents]:
        try:
            if not os.stat(part).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def python_mounts() -> list[Path]:
    """The folders the running Python needs (its install and the virtual environment), outside /usr."""
    paths = []
    for p in {Path(sys.base_prefix).resolve(), Path(sys.prefix), Path(sys.executable).resolve().parent.parent}:
        if not str(p).startswith("/usr/") and p != Path("/usr"):
            paths.append(p)
    paths.sort(key=lambda q: len(str(q)))
    out: list[Path] = []
    for p in paths:  # drop folders inside another one already mounted
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


# ------------------------------------------------------------------------------ one sandbox
class Sandbox:
    """A confined place to run processes: a work folder, cgroups, limits. Use as a context manager.

    persistent: the work folder outlives the processes (a session of the code interpreter: files
    survive a kernel restart, and the host can read them at :attr:`host_workdir`). Otherwise every
    :meth:`command` gets a fresh private tmpfs of ``disk_mb`` that vanishes with the process, and
    ``files`` are copied into it (the evaluation sandbox's programs).
    """

    def __init__(self, policy: IsolationPolicy | None = None, persistent: bool = False,
                 ro_binds: Sequence[str | Path] = ()) -> None:
        self.policy = (policy or IsolationPolicy()).validate()
        sup = sandbox_support()
        if sup.problem:
            raise SandboxUnavailable(sup.problem)
        if self.policy.require_cgroups and sup.cgroup_problem:
            raise SandboxUnavailable(f"the policy requires cgroup limits, and {sup.cgroup_problem}")
        self.support = sup
        self.persistent = persistent
        self.ro_binds = [Path(p).resolve() for p in (*python_mounts(), *ro_binds)]
        self.root = Path(tempfile.mkdtemp(prefix="openqwen-sandbox-"))
        os.chmod(self.root, 0o755)  # the dropped uid must traverse it to reach work/
        self.uid = self.policy.uid if sup.root else os.getuid()
        self.gid = self.policy.uid if sup.root else os.getgid()
        self.host_workdir = self.root / "work"
        self.host_workdir.mkdir()
        self.enforced: dict[str, str] = {}
        self._fds: list[int] = []
        self._tmpfs_mounted = False
        self._closed = False
        self._cgroups: dict[str, Path] = {}
        try:
            if persistent:
                self._make_workdir()
            self._make_cgroups()
        except BaseException:
            self.close()
            raise
        self._describe()

    # -------------------------------------------------------------------------------- set-up
    def _make_workdir(self) -> None:
        mb = self.policy.disk_mb
        if self.support.root:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0700,uid={self.uid},gid={self.gid},"
                                "nosuid,nodev", "tmpfs", str(self.host_workdir)], capture_output=True, text=True)
            self._tmpfs_mounted = r.returncode == 0
        if not self._tmpfs_mounted:
            os.chmod(self.host_workdir, 0o700)
        (self.host_workdir / ".tmp").mkdir(exist_ok=True)
        if self.support.root:
            for p in (self.host_workdir, self.host_workdir / ".tmp"):
                os.chown(p, self.uid, self.gid)

    def _make_cgroups(self) -> None:
        pol, sup = self.policy, self.support
        self._cgroups = make_cgroups(CgroupSupport(sup.cgroups, sup.cgroup_version), f"openqwen-sandbox-{os.getpid()}-"
                                     f"{next(_counter)}", pol.max_processes, pol.memory_mb, pol.cpu_cores)
        if pol.require_cgroups and set(self._cgroups) != {"pids", "memory", "cpu"}:
            missing = ", ".join(c for c in ("pids", "memory", "cpu") if c not in self._cgroups)
            raise SandboxUnavailable(f"the policy requires cgroup limits, and the {missing} cgroup could not be "
                                     f"made or written under {', '.join(map(str, sup.cgroups.values()))}")

    def _describe(self) -> None:
        pol, cg, v = self.policy, self._cgroups, self.support.cgroup_version
        tag = f"cgroup v{v}"
        self.enforced = {
            "namespaces": "user+pid+net+mount+ipc+uts+cgroup (bubblewrap)",
            "uid": f"{self.uid} (nobody) outside the sandbox" if self.support.root else
                   f"{self.uid} (the caller's own uid; not root)",
            "files": "read-only /usr and Python install; writable only the work folder",
            "network": "host network" if pol.network else "none (empty network namespace)",
            "processes": f"{tag} pids.max={pol.max_processes}" if "pids" in cg else
                         (f"RLIMIT_NPROC={pol.max_processes} (per uid, shared by concurrent sandboxes)"),
            "memory": "RLIMIT_AS",
            "memory_cgroup": f"{tag} {pol.memory_mb} MB" if "memory" in cg else "none (no writable memory cgroup)",
            "cpu": (f"{tag} quota {pol.cpu_cores:g} cores + " if "cpu" in cg else "") +
                   f"RLIMIT_CPU={pol.cpu_seconds}s",
            "file_size": "RLIMIT_FSIZE",
            "disk": (f"tmpfs {pol.disk_mb} MB" if (self._tmpfs_mounted or not self.persistent) else
                     "none (a plain folder: only RLIMIT_FSIZE per file)"),
            "time": "wall-clock kill of every sandboxed process",
        }
        if self.support.cgroup_problem:  # what fell back to rlimits, and why
            self.enforced["cgroup_problem"] = self.support.cgroup_problem

    # -------------------------------------------------------------------------------- commands
    def command(self, argv: Sequence[str], env: dict[str, str] | None = None,
                files: dict[str, int] | None = None, extra_binds: Sequence[tuple[Path, str]] = (),
                ) -> tuple[list[str], dict[str, str]]:
        """The launcher chain that runs ``argv`` inside the sandbox, and the environment to start it with.

        ``env``: variables set inside (on top of a minimal PATH/HOME/LANG set). ``files``: name ->
        an open file descriptor (passed with ``pass_fds``) copied into a fresh work folder (non-persistent
        sandboxes only). ``extra_binds``: (host folder, path inside) mounted read-write (the
        interpreter's connection folder). Start it with ``subprocess.Popen(cmd, env=launch_env,
        pass_fds=...)``; :meth:`kill` ends everything it started.
        """
        pol, sup = self.policy, self.support
        as_bytes = (pol.address_space_mb or pol.memory_mb) << 20
        inside = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": SANDBOX_WORKDIR, "USER": "sandbox",
                  "LOGNAME": "sandbox", "TMPDIR": SANDBOX_WORKDIR + "/.tmp", "LANG": "C.UTF-8",
                  "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "MALLOC_ARENA_MAX": "2",
                  "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  **(env or {})}
        bw = [sup.tools["bwrap"], "--unshare-user", "--uid", str(self.uid), "--gid", str(self.gid),
              "--disable-userns", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv"]
        if not pol.network:
            bw.append("--unshare-net")
        for k, v in inside.items():
            bw += ["--setenv", k, v]
        bw += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            p = Path("/") / top
            if p.is_symlink():
                bw += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                bw += ["--ro-bind", str(p), str(p)]
        for etc in ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime", "/etc/fonts"):
            if os.path.exists(etc):
                bw += ["--ro-bind", etc, etc]
        bw += ["--file", str(self._etc_fd("passwd")), "/etc/passwd", "--file", str(self._etc_fd("group")), "/etc/group"]
        # the work folder first, so that a Python install below /sandbox would still show read-only
        stage: list[tuple[Path, Path]] = []
        if self.persistent:
            src = self._maybe_stage(self.host_workdir, stage)
            bw += ["--bind", str(src), SANDBOX_WORKDIR]
        else:
            bw += ["--size", str(pol.disk_mb << 20), "--perms", "0700", "--tmpfs", SANDBOX_WORKDIR,
                   "--dir", SANDBOX_WORKDIR + "/.tmp"]
            for name, fd in (files or {}).items():
                if "/" in name or name.startswith("."):
                    raise ValueError(f"sandbox file names are plain names, got {name!r}")
                bw += ["--file", str(fd), f"{SANDBOX_WORKDIR}/{name}"]
        for host, dest in extra_binds:
            bw += ["--bind", str(self._maybe_stage(Path(host), stage)), _mount_point(dest)]
        for p in self.ro_binds:
            bw += ["--ro-bind", str(self._maybe_stage(p, stage)), _mount_point(p)]
        bw += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--symlink", SANDBOX_WORKDIR + "/.tmp",
               "/tmp", "--chdir", SANDBOX_WORKDIR, "--remount-ro", "/", "--", *argv]

        limits = [sup.tools["prlimit"], f"--as={as_bytes}", f"--fsize={pol.max_file_mb << 20}", "--core=0",
                  f"--cpu={pol.cpu_seconds}:{pol.cpu_seconds + 1}", f"--nofile={pol.max_open_files}"]
        if "pids" not in self._cgroups:
            limits.append(f"--nproc={pol.max_processes}")
        chain = limits + ["--"]
        if sup.root:
            chain += [sup.tools["setpriv"], f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                      "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        chain += bw
        script = ['set -e', 'for f in $OQ_CGROUPS; do echo $$ > "$f"; done', 'unset OQ_CGROUPS']
        script += [f'mount --bind "{src}" "{dst}"' for src, dst in stage]
        script.append('exec "$@"')
        cmd = [sup.tools["sh"], "-c", "\n".join(script), "sh", *chain]
        if stage:
            cmd = [sup.tools["unshare"], "--mount", "--propagation", "private", "--", *cmd]
        launch_env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                      "OQ_CGROUPS": " ".join(str(cg / "cgroup.procs") for cg in dict.fromkeys(self._cgroups.values()))}
        return cmd, launch_env

    def _maybe_stage(self, host: Path, stage: list[tuple[Path, Path]]) -> Path:
        """``host`` itself when the dropped uid can reach it, else a staging mount point for it."""
        if not self.support.root or _traversable_by_others(host) or host == self.host_workdir:
            return host
        dst = self.root / "stage" / str(len(stage))
        dst.mkdir(parents=True, exist_ok=True)
        stage.append((host, dst))
        return dst

    def _etc_fd(self, which: str) -> int:
        """An fd holding a minimal /etc/passwd or /etc/group (closed by :meth:`close_fds`)."""
        if which == "passwd":
            text = f"sandbox:x:{self.uid}:{self.gid}:sandbox:{SANDBOX_WORKDIR}:/usr/sbin/nologin\n"
        else:
            text = f"sandbox:x:{self.gid}:\n"
        if self.uid != 0:
            text = ("root:x:0:0:root:/root:/usr/sbin/nologin\n" if which == "passwd" else "root:x:0:\n") + text
        path = self.root / f".{which}"
        path.write_text(text)
        fd = os.open(path, os.O_RDONLY)
        self._fds.append(fd)
        return fd

    def pass_fds(self) -> tuple[int, ...]:
        """The descriptors :meth:`command` opened, to hand to ``Popen(pass_fds=...)``."""
        return tuple(self._fds)

    def close_fds(self) -> None:
        """Close the descriptors :meth:`command` opened (after the process started)."""
        while self._fds:
            try:
                os.close(self._fds.pop())
            except OSError:
                pass

    def popen(self, argv: Sequence[str], env: dict[str, str] | None = None, files: dict[str, int] | None = None,
              extra_binds: Sequence[tuple[Path, str]] = (), **kwargs) -> subprocess.Popen:
        """Start ``argv`` in the sandbox (``Popen`` keyword arguments pass through: stdout, stderr, stdin)."""
        cmd, launch_env = self.command(argv, env, files, extra_binds)
        fds = tuple(sorted(set(self.pass_fds()) | set((files or {}).values()) | set(kwargs.pop("pass_fds", ()))))
        try:
            return subprocess.Popen(cmd, env=launch_env, pass_fds=fds, start_new_session=True, cwd=self.root,
                                    **kwargs)
        finally:
            self.close_fds()

    def run(self, argv: Sequence[str], timeout_s: float | None = None, **kwargs) -> int | None:
        """Run ``argv`` to the end, or kill everything at ``timeout_s`` (default: the policy's wall
        timeout); its exit status, or None when it was killed for time."""
        proc = self.popen(argv, **kwargs)
        try:
            rc: int | None = proc.wait(timeout=self.policy.wall_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill(proc)
        return rc

    # -------------------------------------------------------------------------------- ending
    def pids(self) -> list[int]:
        """Every process of the sandbox's cgroup (empty without one)."""
        for cg in self._cgroups.values():
            try:
                return [int(p) for p in (cg / "cgroup.procs").read_text().split()]
            except OSError:
                continue
        return []

    def kill(self, proc: subprocess.Popen | None = None) -> None:
        """SIGKILL ``proc`` (its PID namespace dies with it) and whatever else is in the sandbox's cgroup."""
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        kill_all(self._cgroups)  # v2: the whole cgroup at once; v1 (or what is left): pid by pid
        for _ in range(400):  # processes may still fork while we kill; pids.max bounds them
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Kill what is left, remove the cgroups, unmount and delete the work folder."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        self.close_fds()
        for cg in dict.fromkeys(self._cgroups.values()):
            for _ in range(200):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the last killed process is gone
                    time.sleep(0.01)
        if self._tmpfs_mounted:
            subprocess.run(["umount", "-l", str(self.host_workdir)], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten sandbox still releases its mount and cgroups
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
